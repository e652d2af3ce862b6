#!/usr/bin/env python3
"""Writes clipsteer's parity fixtures: tiny random-init checkpoints in the Hugging Face layout and
the reference outputs of transformers on them.

    python -m venv .venv && .venv/bin/pip install torch transformers safetensors pillow numpy
    scripts/fetch-small-models.sh
    .venv/bin/python tools/make_fixtures.py

Everything under tests/fixtures/ is written by this script and only by it; it is deterministic.
The tokenizers are the real GPT-2 and CLIP vocabularies vendored under assets/tokenizers/.
"""
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from clip_vocab import clip_vocab_and_merges
from PIL import Image, ImageOps
from safetensors.torch import save_file
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizerFast,
    CLIPConfig,
    CLIPModel,
    CLIPTokenizerFast,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2TokenizerFast,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets" / "tokenizers"
FIXTURES = ROOT / "tests" / "fixtures"

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]

# Strings that exercise both tokenizers: unicode, emoji, whitespace runs, case, punctuation,
# digits, contractions, special-token text, and a string far over CLIP's 77 positions.
LONG = " ".join(f"word{i} and more" for i in range(60))
TOKENIZER_STRINGS = [
    "",
    "a",
    "An image of ",
    "An image of a cat",
    "a photo of a dog on the beach",
    "A PHOTO OF A DOG",
    "MiXeD CaSe WoRdS",
    "  leading and trailing spaces  ",
    "runs   of\t\twhitespace\n\nand newlines",
    "punctuation!? yes... no; maybe: (perhaps) [brackets] {braces}",
    "digits 0123456789 and 3.14159 and 1,000,000",
    "it's they're we've I'm you'll he'd",
    "café naïve résumé façade",
    "Ünïcödé ßtraße",
    "日本語のテキスト",
    "中文字符测试",
    "Привет мир",
    "مرحبا بالعالم",
    "emoji 🐱🐶 and 👍🏽 and 🇫🇷",
    "a 🐈 on a 🛋️",
    "email@example.com and https://example.org/path?x=1",
    "hyphen-ated and under_scored and slash/ed",
    "quotes \"double\" and 'single'",
    "tabs\tand\rcarriage returns",
    "<|endoftext|> in the middle",
    "<|startoftext|>start",
    "x" * 50,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "#hashtag @mention $100 %50 ^caret &amp *star",
    "\u00a0non-breaking\u00a0space",
    "combining e\u0301 accent",
    "ﬁ ligature and Ａ fullwidth",
    LONG,
]

CLIP_TEXT_STRINGS = [
    "",
    "a photo of a cat",
    "A PHOTO OF A CAT",
    "a photo of a dog on the beach at sunset",
    "runs   of\t\twhitespace\n\nhere",
    "punctuation!? yes... no; (maybe)",
    "digits 0123456789 and 3.14159",
    "café naïve résumé",
    "日本語のテキスト",
    "emoji 🐱🐶 and 👍🏽",
    "it's they're we've",
    "An image of ",
    "a",
    "a squirrel fat chest pose Getty",
    "#hashtag @mention $100",
    LONG,
]




def tokenizers():
    gpt2 = GPT2TokenizerFast(vocab=str(ASSETS / "gpt2" / "encoder.json"), merges=str(ASSETS / "gpt2" / "vocab.bpe"))
    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges = clip_vocab_and_merges()
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
        clip = CLIPTokenizerFast(vocab=str(Path(tmp) / "vocab.json"), merges=str(Path(tmp) / "merges.txt"))
        # Sanity: the derived vocabulary is the published one (ids of well-known tokens).
        assert clip("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407], clip("a photo of a cat")
    return gpt2, clip


def perturb_norms_and_biases(model, generator):
    """Random init leaves LayerNorms at (1, 0) and biases at 0; perturb them so that a mix-up of
    weight names or an ignored bias cannot go unnoticed."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            parts = name.split(".")
            is_norm = len(parts) > 1 and (parts[-2].startswith("ln") or "norm" in parts[-2] or "layrnorm" in parts[-2])
            if is_norm and name.endswith("weight"):
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=generator))
            elif name.endswith("bias"):
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))


def save_tensors(path, tensors):
    save_file({k: v.detach().contiguous().to(torch.float32) if v.is_floating_point() else v.contiguous() for k, v in tensors.items()}, str(path))


def link_tokenizer(model_dir, shared_name):
    link = model_dir / "tokenizer.json"
    if link.exists() or link.is_symlink():
        link.unlink()
    link.symlink_to(Path("..") / "tokenizers" / shared_name)


def make_gpt2(tokenizer, generator):
    out = FIXTURES / "gpt2-tiny"
    out.mkdir(parents=True, exist_ok=True)
    config = GPT2Config(
        vocab_size=50257, n_positions=64, n_embd=24, n_layer=2, n_head=4,
        initializer_range=0.2, bos_token_id=50256, eos_token_id=50256,
    )
    torch.manual_seed(1)
    model = GPT2LMHeadModel(config).eval()
    perturb_norms_and_biases(model, generator)
    model.save_pretrained(out, safe_serialization=True)
    link_tokenizer(out, "gpt2-tokenizer.json")

    # Logits are compared on a fixed random subset of the vocabulary (plus one full row): the
    # head is tied to wte, so a wrong hidden state shows in any large subset, and the fixtures
    # stay small.
    columns = torch.sort(torch.randperm(config.vocab_size, generator=generator)[:4096]).values
    ref = {"columns": columns.to(torch.int64)}
    single = tokenizer("An image of a cat sitting on")["input_ids"]
    batched = torch.randint(0, config.vocab_size, (3, 5), generator=generator)
    incremental = torch.randint(0, config.vocab_size, (1, 7), generator=generator)
    fork_prefix = torch.randint(0, config.vocab_size, (1, 4), generator=generator)
    fork_tails = torch.randint(0, config.vocab_size, (3, 2), generator=generator)
    with torch.no_grad():
        single_logits = model(torch.tensor([single])).logits
        ref["single_ids"] = torch.tensor([single])
        ref["single_logits"] = single_logits[..., columns]
        ref["single_last_full"] = single_logits[0, -1]
        ref["batched_ids"] = batched
        ref["batched_logits"] = model(batched).logits[..., columns]
        ref["incremental_ids"] = incremental
        ref["incremental_logits"] = model(incremental).logits[..., columns]
        fork_full = torch.cat([fork_prefix.expand(3, -1), fork_tails], dim=1)
        ref["fork_prefix_ids"] = fork_prefix
        ref["fork_tail_ids"] = fork_tails
        ref["fork_logits"] = model(fork_full).logits[:, -2:][..., columns]
        # The same through transformers' own cache, as a check on the reference itself.
        past = model(incremental[:, :4], use_cache=True).past_key_values
        step = model(incremental[:, 4:5], past_key_values=past, use_cache=True).logits
        assert torch.allclose(step[0, -1], model(incremental[:, :5]).logits[0, -1], atol=1e-5)
    save_tensors(FIXTURES / "reference" / "gpt2.safetensors", ref)


def clip_config(kind):
    if kind == "quickgelu":
        text = dict(vocab_size=49408, hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                    layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=2)
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      image_size=32, patch_size=8, hidden_act="quick_gelu", layer_norm_eps=1e-5)
        return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    text = dict(vocab_size=49408, hidden_size=16, intermediate_size=40, num_hidden_layers=3,
                num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu",
                layer_norm_eps=1e-6, bos_token_id=49406, eos_token_id=49407)
    vision = dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=3,
                  image_size=30, patch_size=6, hidden_act="gelu", layer_norm_eps=1e-6)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=12)


def open_image(path):
    """An image as clipsteer's reference sees it: Pillow's, upright by its EXIF orientation, with
    its transparency intact for the processor's convert_to_rgb to composite onto white.
    (transformers.image_utils.load_image would convert to RGB first and drop the alpha.)"""
    return ImageOps.exif_transpose(Image.open(path))


def preprocessor_config(kind):
    if kind == "quickgelu":
        # The older integer form of size/crop_size, as openai/clip-vit-base-patch32 ships it.
        return {"crop_size": 32, "do_center_crop": True, "do_normalize": True, "do_resize": True,
                "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": OPENAI_MEAN,
                "image_std": OPENAI_STD, "resample": 3, "size": 32}
    return {"crop_size": {"height": 30, "width": 30}, "do_center_crop": True, "do_convert_rgb": True,
            "do_normalize": True, "do_rescale": True, "do_resize": True,
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
            "image_processor_type": "CLIPImageProcessor", "resample": 3,
            "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 30}}


def make_images():
    """Synthetic images with structure at several scales (smooth gradients, edges, texture)."""
    out = FIXTURES / "images"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)

    def pattern(h, w, seed, noise=12.0):
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        r = 127 + 100 * np.sin(x / (3 + seed) + y / 11.0)
        g = 127 + 100 * np.cos(y / (5 + seed) - x / 17.0)
        b = np.where(((x // 7) + (y // 5)) % 2 == 0, 200.0, 40.0)
        img = np.stack([r, g, b], axis=-1) + rng.normal(0, noise, (h, w, 3))
        return np.clip(img, 0, 255).astype(np.uint8)

    images = {
        "crop32.png": Image.fromarray(pattern(32, 32, 0)),
        "crop30.png": Image.fromarray(pattern(30, 30, 1)),
        "odd_47x61.png": Image.fromarray(pattern(61, 47, 2)),
        "wide_90x40.png": Image.fromarray(pattern(40, 90, 3)),
        "grey_40x33.png": Image.fromarray(pattern(33, 40, 4)[..., 0], mode="L"),
        "large_1200x900.png": Image.fromarray(pattern(900, 1200, 5, noise=0.0)),
        "palette_50x45.png": Image.fromarray(pattern(45, 50, 6)).convert("P", palette=Image.ADAPTIVE, colors=64),
    }
    rgba = np.concatenate([pattern(50, 50, 8), np.linspace(0, 255, 2500).reshape(50, 50, 1).astype(np.uint8)], axis=-1)
    images["rgba_50x50.png"] = Image.fromarray(rgba, mode="RGBA")
    for name, image in images.items():
        image.save(out / name, optimize=True)
    Image.fromarray(pattern(53, 80, 9)).save(out / "photo_80x53.jpg", quality=90)
    return sorted(p.name for p in out.iterdir() if p.suffix in (".png", ".jpg"))


def make_clip(kind, tokenizer, image_names, generator):
    out = FIXTURES / f"clip-tiny-{kind}"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(2 if kind == "quickgelu" else 3)
    model = CLIPModel(clip_config(kind)).eval()
    perturb_norms_and_biases(model, generator)
    model.save_pretrained(out, safe_serialization=True)
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(kind), indent=2) + "\n")
    link_tokenizer(out, "clip-tokenizer.json")
    processor = CLIPImageProcessorPil.from_pretrained(out)

    ref = {}
    with torch.no_grad():
        for i, text in enumerate(CLIP_TEXT_STRINGS):
            ids = tokenizer(text, truncation=True, max_length=77, return_tensors="pt")["input_ids"]
            ref[f"text_{i}_ids"] = ids[0].to(torch.int64)
            ref[f"text_{i}_features"] = model.get_text_features(input_ids=ids).pooler_output[0]
        for name in image_names:
            pixels = processor(images=open_image(FIXTURES / "images" / name), return_tensors="pt")["pixel_values"]
            key = name.rsplit(".", 1)[0]
            ref[f"image_{key}_pixels"] = pixels[0]
            ref[f"image_{key}_features"] = model.get_image_features(pixel_values=pixels).pooler_output[0]
    save_tensors(FIXTURES / "reference" / f"clip-{kind}.safetensors", ref)
    return [{"index": i, "text": t} for i, t in enumerate(CLIP_TEXT_STRINGS)]


SENTENCE_STRINGS = [
    "a photo of a cat",
    "A Photo Of A CAT!",
    "the quick brown fox jumps over the lazy dog",
    "unknownwordhere and more",
    "café naïve 123",
    "",
    "  spaces   everywhere  ",
    "emoji 🐱 and punctuation?!",
]


def make_sentence_encoder():
    """A tiny random BERT in the sentence-transformers layout (mean pooling, then normalise),
    with a small WordPiece vocabulary written here."""
    out = FIXTURES / "minilm-tiny"
    out.mkdir(parents=True, exist_ok=True)
    words = ("the a an of and on in to is photo cat dog fox quick brown jumps over lazy more "
             "spaces everywhere emoji punctuation here unknown word caf naive 1 2 3").split()
    pieces = ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"] + ["##s", "##ing", "##ed", "##ly"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789!?.,'-")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + chars + pieces
    vocab = list(dict.fromkeys(vocab))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.txt").write_text("\n".join(vocab) + "\n")
        tokenizer = BertTokenizerFast(vocab=str(Path(tmp) / "vocab.txt"), do_lower_case=True)
        tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    config = BertConfig(vocab_size=len(vocab), hidden_size=24, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=64, hidden_act="gelu", layer_norm_eps=1e-12)
    torch.manual_seed(4)
    model = BertModel(config, add_pooling_layer=False).eval()
    generator = torch.Generator().manual_seed(5)
    perturb_norms_and_biases(model, generator)
    model.save_pretrained(out, safe_serialization=True)
    (out / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ], indent=2) + "\n")
    # The Pooling module's mode, in the format all-MiniLM-L6-v2 ships.
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": config.hidden_size,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }, indent=2) + "\n")
    ref = {}
    cases = []
    with torch.no_grad():
        for i, text in enumerate(SENTENCE_STRINGS):
            enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=64)
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            ref[f"sentence_{i}_embedding"] = torch.nn.functional.normalize(pooled, dim=-1)[0]
            cases.append({"text": text, "ids": enc["input_ids"][0].tolist()})
    save_tensors(FIXTURES / "reference" / "sentence.safetensors", ref)
    (FIXTURES / "reference" / "sentence.json").write_text(json.dumps(cases, ensure_ascii=False, indent=1) + "\n")


REAL_MINILM_STRINGS = [
    "A photo of a cat sitting on a mat.",
    "a picture of a kitten resting on a rug",
    "The stock market fell sharply on Monday.",
    "",
    "Émile's café serves 42 kinds of tea!",
]


def make_real_minilm_reference():
    """Embeddings of the real all-MiniLM-L6-v2 (fetched by scripts/fetch-small-models.sh) as
    sentence-transformers computes them: mean pooling over the mask, then normalise."""
    from transformers import AutoTokenizer

    model_dir = ROOT / ".cache" / "models" / "all-minilm-l6-v2"
    if not (model_dir / "model.safetensors").exists():
        raise SystemExit("run scripts/fetch-small-models.sh first: the real-model references need all-MiniLM-L6-v2")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = BertModel.from_pretrained(model_dir).eval()
    cases = []
    with torch.no_grad():
        for text in REAL_MINILM_STRINGS:
            enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=256)
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            embedding = torch.nn.functional.normalize(pooled, dim=-1)[0]
            cases.append({"text": text, "ids": enc["input_ids"][0].tolist(), "embedding": [round(float(x), 8) for x in embedding]})
    (FIXTURES / "reference" / "minilm-real.json").write_text(json.dumps(cases, ensure_ascii=False) + "\n")


SMOLLM2_STRINGS = [
    "An image of a cat",
    "The quick brown fox jumps over the lazy dog.",
    "Numbers 12345 and 3.14 and 2024-11-28",
    "  leading spaces and\ttabs\nnewlines",
    "Émile's café — naïve ünïcödé 日本語 🐱",
    "<|im_start|>user\nHello<|im_end|>",
    "CamelCaseWords and snake_case_words",
    "",
]


def make_smollm2_reference():
    """SmolLM2-135M-Instruct from its Q4_1 GGUF (fetched by scripts/fetch-small-models.sh), as
    transformers loads it: tokenizer ids, and logits of the dequantised model in float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = ROOT / ".cache" / "models" / "smollm2"
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not (gguf_dir / name).exists():
        raise SystemExit("run scripts/fetch-small-models.sh first: the SmolLM2 references need its GGUF")
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=name, torch_dtype=torch.float32).eval()
    cases = [{"text": t, "ids": tokenizer(t, add_special_tokens=False)["input_ids"]} for t in SMOLLM2_STRINGS]
    (FIXTURES / "reference" / "smollm2-tokenizer.json").write_text(json.dumps(cases, ensure_ascii=False, indent=1) + "\n")
    generator = torch.Generator().manual_seed(11)
    columns = torch.sort(torch.randperm(model.config.vocab_size, generator=generator)[:2048]).values
    ref = {"columns": columns.to(torch.int64)}
    with torch.no_grad():
        for i, text in enumerate(["An image of a cat sitting on", "The quick brown fox jumps over the lazy dog."]):
            ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
            logits = model(ids).logits
            ref[f"seq_{i}_ids"] = ids[0].to(torch.int64)
            ref[f"seq_{i}_logits"] = logits[0][:, columns]
            ref[f"seq_{i}_last_full"] = logits[0, -1]
    save_tensors(FIXTURES / "reference" / "smollm2.safetensors", ref)


# The reference loop of the original demo, on the tiny fixtures: (image, CLIP, prompt, k, steps).
DESCRIBE_CASES = [
    ("crop32.png", "quickgelu", "An image of ", 20, 8),
    ("odd_47x61.png", "gelu", "A photo of", 50, 10),
    ("wide_90x40.png", "quickgelu", "An image of ", 200, 12),
    ("large_1200x900.png", "gelu", "Here is a picture of a", 7, 6),
]


def reference_loop(gpt2, gpt2_tok, clip, clip_tok, processor, image_path, prompt, k, steps):
    """The seed demo's loop: GPT-2's top-k, CLIP scores decode(ids + [candidate]), argmax wins."""
    pixels = processor(images=open_image(image_path), return_tensors="pt")["pixel_values"]
    image = clip.get_image_features(pixel_values=pixels).pooler_output
    image = image / image.norm(dim=-1, keepdim=True)
    ids = gpt2_tok(prompt)["input_ids"]
    prompt_len = len(ids)
    chosen_sims, margins = [], []
    for _ in range(steps):
        logits = gpt2(torch.tensor([ids])).logits[0, -1]
        candidates = torch.topk(logits, k).indices.tolist()
        phrases = [gpt2_tok.decode(ids + [c]) for c in candidates]
        inputs = clip_tok(phrases, padding=True, truncation=True, max_length=77, return_tensors="pt")
        text = clip.get_text_features(**inputs).pooler_output
        text = text / text.norm(dim=-1, keepdim=True)
        sims = (text @ image.T)[:, 0]
        best = int(torch.argmax(sims))
        top2 = torch.topk(sims, 2).values if k > 1 else torch.stack([sims[0], sims[0] - 1])
        chosen_sims.append(float(sims[best]))
        margins.append(float(top2[0] - top2[1]))
        ids.append(candidates[best])
    return {"generated_ids": ids[prompt_len:], "text": gpt2_tok.decode(ids),
            "similarities": chosen_sims, "top2_margins": margins}


def make_describe_reference(gpt2_tok, clip_tok):
    gpt2 = GPT2LMHeadModel.from_pretrained(FIXTURES / "gpt2-tiny").eval()
    cases = []
    with torch.no_grad():
        for image, kind, prompt, k, steps in DESCRIBE_CASES:
            clip_dir = FIXTURES / f"clip-tiny-{kind}"
            clip = CLIPModel.from_pretrained(clip_dir).eval()
            processor = CLIPImageProcessorPil.from_pretrained(clip_dir)
            result = reference_loop(gpt2, gpt2_tok, clip, clip_tok, processor, FIXTURES / "images" / image, prompt, k, steps)
            cases.append({"image": image, "clip": f"clip-tiny-{kind}", "prompt": prompt, "top_k": k,
                          "max_tokens": steps, **result})
    (FIXTURES / "reference" / "describe.json").write_text(json.dumps(cases, ensure_ascii=False, indent=1) + "\n")


def main():
    torch.set_num_threads(2)
    (FIXTURES / "reference").mkdir(parents=True, exist_ok=True)
    (FIXTURES / "tokenizers").mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)

    gpt2_tok, clip_tok = tokenizers()
    gpt2_tok.backend_tokenizer.save(str(FIXTURES / "tokenizers" / "gpt2-tokenizer.json"))
    clip_tok.backend_tokenizer.save(str(FIXTURES / "tokenizers" / "clip-tokenizer.json"))
    token_ref = {
        "gpt2": [{"text": t, "ids": gpt2_tok(t)["input_ids"]} for t in TOKENIZER_STRINGS],
        "clip": [{"text": t, "ids": clip_tok(t, truncation=True, max_length=77)["input_ids"]} for t in TOKENIZER_STRINGS],
    }
    (FIXTURES / "reference" / "tokenizers.json").write_text(json.dumps(token_ref, ensure_ascii=False, indent=1) + "\n")

    make_gpt2(gpt2_tok, generator)
    images = make_images()
    texts = {}
    for kind in ("quickgelu", "gelu"):
        texts[kind] = make_clip(kind, clip_tok, images, generator)
    make_describe_reference(gpt2_tok, clip_tok)
    make_sentence_encoder()
    make_real_minilm_reference()
    make_smollm2_reference()
    manifest = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "images": images,
        "clip_texts": CLIP_TEXT_STRINGS,
    }
    (FIXTURES / "reference" / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n")
    print("fixtures written to", FIXTURES)


if __name__ == "__main__":
    main()
