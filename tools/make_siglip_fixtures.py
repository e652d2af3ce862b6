#!/usr/bin/env python3
"""Writes two tiny random-init SigLIP checkpoints in the Hugging Face layout and transformers'
outputs on them, for the Rust SigLIP parity tests.

    /work/venv/bin/python tools/make_siglip_fixtures.py   # torch, transformers 5.25, tokenizers,
                                                          # sentencepiece, protobuf, safetensors, pillow

Outputs (deterministic; rerunning gives byte-identical files):
    tests/fixtures/siglip-tiny/     SigLIP 1 style: SiglipModel (model_type "siglip"), a SentencePiece
                                    unigram spiece.model (<pad>=0, </s>=1 eos and pad, <unk>=2, no bos)
                                    with SiglipTokenizer's tokenizer_config.json, a tokenizer.json made
                                    from spiece.model by transformers' T5Converter, preprocessor_config.json
    tests/fixtures/siglip2-tiny/    SigLIP 2 FixRes style: also SiglipModel / "siglip", with a Gemma-style
                                    byte-fallback BPE tokenizer.json (<pad>=0 <eos>=1 <bos>=2 <unk>=3 <mask>=4)
                                    and tokenizer_class GemmaTokenizer, add_bos_token false, add_eos_token true
    each with reference.safetensors  input_ids, attention_mask (when the processor returns one),
                                     text_features, pixel_values, image_features, logits_per_image, probs
    and reference.json               texts and images in order, token ids before padding, logit_scale and
                                     logit_bias, and what transformers' tokenizer/processor did (measured)

Both tokenizers are trained here on a small English corpus (the decoder fixtures' corpus plus a few
lines with digits and accents); nothing comes from the Hugging Face hub. Models are built from a
config in code, randomised (LayerNorms, biases, the attention-pooling probe, logit_scale and
logit_bias moved off their init so that an ignored term cannot pass), written by `save_pretrained`
(f32) and reloaded in float32 with eager attention before the reference is computed.
Most of siglip-tiny's ~0.9 MB is SentencePiece's nmt_nfkc charsmap, kept as the real SigLIP spiece.model
has it (in spiece.model and, base64, in tokenizer.json's Precompiled normalizer).
Made with transformers 5.25.0, torch 2.15, tokenizers 0.23.3, sentencepiece 0.2.3, Pillow 13.0.
"""
import io
import json
import math
import re
import shutil
import string
from pathlib import Path

import sentencepiece as spm
import torch
import transformers
from make_decoder_fixtures import CORPUS as DECODER_CORPUS
from PIL import Image, ImageOps
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoProcessor,
    AutoTokenizer,
    GemmaTokenizer,
    SiglipConfig,
    SiglipModel,
    SiglipProcessor,
    SiglipTokenizer,
)
from transformers.convert_slow_tokenizer import T5Converter
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
IMAGES = FIXTURES / "images"
SIGLIP1 = FIXTURES / "siglip-tiny"
SIGLIP2 = FIXTURES / "siglip2-tiny"

MAX_LENGTH = 64
IMAGE_SIZE = 32
SPM_VOCAB = 320
BPE_VOCAB = 400

EXTRA_CORPUS = """A café in Paris serves crêpes, croissants and a naïve little tart.
The old façade of the hôtel is painted in pale blue and cream.
Room 101 is on the 2nd floor; the lift is number 3.
In 1999 the team scored 4 goals, in 2024 they scored 7 and in 1865 only 0.
Call 555 0123 or 555 6789 before 8 o'clock on the 5th of June.
Digits like 0, 1, 2, 3, 4, 5, 6, 7, 8 and 9 appear on the clock.
A zoo with 12 lions, 36 monkeys and 48 parrots opened in 2010.
The quick brown fox jumps over the lazy dog near the old barn.
Jack quickly boxed five dozen jugs of liquor for the wizard.
My résumé says I like jazz, quiz shows, yoga and very exquisite food.
Photos of a cat, a dog, a bird and a fish hang on the kitchen wall.
A photograph of a dog catching a frisbee in a sunny park.
A painting of a boat on a lake with mountains in the distance.
Leading scientists are trailing the comet through a telescope.
Perhaps the punctuation in this sentence is unusual, perhaps not.
Yes or no? The answer is perhaps, said the young woman in the yellow hat."""
CORPUS_LINES = (DECODER_CORPUS + "\n" + EXTRA_CORPUS).splitlines()

LONG = " ".join(CORPUS_LINES[:8])  # far over 64 tokens with either tokenizer
TEXTS = [
    "",
    "a",
    "a photo of a cat",
    "A PHOTO OF A DOG!",
    "punctuation!? yes... no; (perhaps)",
    "  leading and   trailing  ",
    "café naïve",
    LONG,
    "digits 0123456789",
    "tabs\tand\nnewlines",
    "emoji 🐱 cat",
    "ﬁne ＦＵＬＬwidth cafe\u0301",  # NFKC territory: ligature, fullwidth, combining accent
    "non\u00a0breaking space",
]
IMAGE_NAMES = ["odd_47x61.png", "rgba_50x50.png", "photo_80x53.jpg", "wide_90x40.png", "grey_40x33.png"]

FIXTURE_SETTINGS = {
    "siglip-tiny": {"seed": 301, "vision_hidden": 32, "patch": 4,
                    "logit_scale": math.log(10) + 0.3, "logit_bias": -4.2},
    # Vision width 24: the text head projects 32 -> 24 (projection_size) to meet the image embedding.
    "siglip2-tiny": {"seed": 302, "vision_hidden": 24, "patch": 8,
                     "logit_scale": math.log(10) - 0.4, "logit_bias": -2.7},
}


# ---------------------------------------------------------------------------------------------
# Tokenizers


def train_spiece():
    """A SentencePiece unigram model of SPM_VOCAB pieces with T5's/SigLIP's special ids and the
    library's default normalisation (nmt_nfkc, dummy prefix, extra whitespace removal)."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([line.lower() for line in CORPUS_LINES]), model_writer=model,
        model_type="unigram", vocab_size=SPM_VOCAB, character_coverage=1.0, num_threads=1,
        pad_id=0, pad_piece="<pad>", eos_id=1, eos_piece="</s>", unk_id=2, unk_piece="<unk>", bos_id=-1,
        minloglevel=2,
    )
    return model.getvalue()


def write_siglip1_tokenizer(out):
    proto = train_spiece()
    assert train_spiece() == proto, "SentencePiece training is not deterministic"
    sp = spm.SentencePieceProcessor(model_proto=proto)
    assert sp.get_piece_size() == SPM_VOCAB
    assert [sp.id_to_piece(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]
    source = out / "spiece.source.model"
    source.write_bytes(proto)
    slow = SiglipTokenizer(vocab_file=str(source), model_max_length=MAX_LENGTH)
    slow.save_pretrained(out)
    source.unlink()
    assert (out / "spiece.model").read_bytes() == proto
    # As google/siglip-base-patch16-224 ships it: no attention_mask, a processor class.
    config = json.loads((out / "tokenizer_config.json").read_text())
    config["model_input_names"] = ["input_ids"]
    config["processor_class"] = "SiglipProcessor"
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    # tokenizer.json as users make one: transformers has no SiglipTokenizer converter, so T5's
    # (same vocabulary layout) with no <extra_id_*> tokens.
    slow = SiglipTokenizer(vocab_file=str(out / "spiece.model"), model_max_length=MAX_LENGTH)
    slow._extra_ids = 0
    fast = T5Converter(slow).converted()
    fast.save(str(out / "tokenizer.json"))
    return slow


def train_bpe():
    """Gemma-style BPE trained on the corpus as written (cased): words split before each "▁" as
    SentencePiece does, so no merge crosses a word start."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB - 256, special_tokens=GEMMA_SPECIALS, show_progress=False)
    tokenizer.train_from_iterator(CORPUS_LINES, trainer=trainer)
    return tokenizer


GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]


def write_siglip2_tokenizer(out):
    trained = train_bpe()
    assert train_bpe().to_str() == trained.to_str(), "BPE training is not deterministic"
    model = json.loads(trained.to_str())["model"]
    learned = sorted(model["vocab"].items(), key=lambda kv: kv[1])[len(GEMMA_SPECIALS):]
    # Gemma's layout: the special tokens, then the 256 byte-fallback tokens, then the pieces.
    tokens = GEMMA_SPECIALS + [f"<0x{b:02X}>" for b in range(256)] + [t for t, _ in learned]
    assert len(tokens) == BPE_VOCAB, len(tokens)
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    gemma = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=False, add_eos_token=True,
                           model_max_length=MAX_LENGTH)
    gemma.save_pretrained(out)
    # The tokenizer_config.json of the SigLIP 2 FixRes checkpoints (as the brief gives it).
    config = {"tokenizer_class": "GemmaTokenizer", "add_bos_token": False, "add_eos_token": True,
              "pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>",
              "model_max_length": MAX_LENGTH}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def canonicalize(text):
    """SiglipTokenizer.canonicalize_text with do_lower_case: lowercase, drop ASCII punctuation,
    collapse whitespace runs to one space, strip."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return re.sub(r"\s+", " ", text).strip()


def check_siglip1_tokenizer(out, slow):
    """canonicalize -> tokenizer.json (no special tokens) + [eos] against the slow tokenizer."""
    fast = Tokenizer.from_file(str(out / "tokenizer.json"))
    rows = []
    for text in TEXTS:
        assert canonicalize(text) == slow.canonicalize_text(text)
        reference = slow(text)["input_ids"]  # no truncation: all of it, eos last
        plain = fast.encode(canonicalize(text), add_special_tokens=False).ids + [slow.eos_token_id]
        templated = fast.encode(canonicalize(text)).ids
        rows.append({"text": text, "canonical": canonicalize(text), "ids": reference,
                     "tokenizer_json_matches": plain == reference,
                     "tokenizer_json_post_processor_matches": templated == reference})
        if plain != reference:
            print(f"siglip-tiny: tokenizer.json differs on {text!r}: {plain} vs {reference}")
    return rows


# ---------------------------------------------------------------------------------------------
# Models


def siglip_config(name, vocab_size, special_ids):
    s = FIXTURE_SETTINGS[name]
    text = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=MAX_LENGTH, hidden_act="gelu_pytorch_tanh",
                layer_norm_eps=1e-6, projection_size=s["vision_hidden"], **special_ids)
    vision = dict(hidden_size=s["vision_hidden"], intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  num_channels=3, image_size=IMAGE_SIZE, patch_size=s["patch"], hidden_act="gelu_pytorch_tanh",
                  layer_norm_eps=1e-6)
    return SiglipConfig(text_config=text, vision_config=vision)


def randomize(model, name):
    """LayerNorms, biases and the pooling probe off their init, from a generator of the fixture's own."""
    s = FIXTURE_SETTINGS[name]
    g = torch.Generator().manual_seed(s["seed"] + 5000)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            module = model.get_submodule(param_name.rsplit(".", 1)[0]) if "." in param_name else model
            if isinstance(module, torch.nn.LayerNorm) and param_name.endswith("weight"):
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=g))
            elif param_name.endswith("bias") and param_name != "logit_bias":
                param.copy_(0.2 * torch.randn(param.shape, generator=g))
            elif param_name.endswith("probe"):
                param.copy_(torch.randn(param.shape, generator=g))
        model.logit_scale.fill_(s["logit_scale"])
        model.logit_bias.fill_(s["logit_bias"])


def open_image(path):
    """As tools/make_fixtures.py opens them: upright by EXIF, transparency kept for convert_to_rgb."""
    return ImageOps.exif_transpose(Image.open(path))


def preprocessor_config(out):
    processor = SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, resample=3,
                                        do_resize=True, do_rescale=True, do_normalize=True,
                                        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    processor.save_pretrained(out)
    config = json.loads((out / "preprocessor_config.json").read_text())
    config["processor_class"] = "SiglipProcessor"
    (out / "preprocessor_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_processor(out):
    """AutoProcessor from the directory; without torchvision its image processor may not load, so
    fall back to SiglipProcessor(SiglipImageProcessorPil, AutoTokenizer). Text inputs only use the tokenizer."""
    try:
        return AutoProcessor.from_pretrained(out), "AutoProcessor"
    except Exception as error:  # noqa: BLE001 - recorded in reference.json
        processor = SiglipProcessor(image_processor=SiglipImageProcessorPil.from_pretrained(out),
                                    tokenizer=AutoTokenizer.from_pretrained(out))
        return processor, f"SiglipProcessor(SiglipImageProcessorPil, AutoTokenizer) (AutoProcessor failed: {type(error).__name__})"


def tokenizer_behaviour(tokenizer):
    """What the tokenizer transformers loads from the directory actually does."""
    plain = tokenizer("a photo of a cat")["input_ids"]
    upper = tokenizer("A PHOTO OF A CAT")["input_ids"]
    punct = tokenizer("a photo, of a cat!")["input_ids"]
    bare = tokenizer("a photo of a cat", add_special_tokens=False)["input_ids"]
    padded = tokenizer(["a", "a photo of a cat"], padding="max_length", max_length=12)
    ids = padded["input_ids"][0]
    return {
        "class": type(tokenizer).__name__,
        "backend_module": type(tokenizer).__module__,
        "adds_bos": tokenizer.bos_token_id is not None and plain[:1] == [tokenizer.bos_token_id]
                    and bare[:1] != [tokenizer.bos_token_id],
        "adds_eos": plain[-1:] == [tokenizer.eos_token_id] and bare[-1:] != [tokenizer.eos_token_id],
        "special_tokens_added": [t for t in plain if t not in bare],
        "lowercases": upper == plain,
        "drops_punctuation": punct == plain,
        "returns_attention_mask": "attention_mask" in padded,
        "model_input_names": list(tokenizer.model_input_names),
        "padding_side": tokenizer.padding_side,
        "pad_token": tokenizer.pad_token, "pad_token_id": tokenizer.pad_token_id,
        "eos_token": tokenizer.eos_token, "eos_token_id": tokenizer.eos_token_id,
        "bos_token": tokenizer.bos_token, "bos_token_id": tokenizer.bos_token_id,
        "unk_token_id": tokenizer.unk_token_id,
        "example_a_padded_to_12": ids,
        "example_a_padded_to_12_attention_mask": padded.get("attention_mask", [None])[0],
        "len": len(tokenizer),
    }


def make_fixture(name, out, text_rows_check):
    s = FIXTURE_SETTINGS[name]
    tokenizer = AutoTokenizer.from_pretrained(out)
    if name == "siglip-tiny":
        special_ids = dict(pad_token_id=1, eos_token_id=1, bos_token_id=None)
    else:
        special_ids = dict(pad_token_id=0, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(s["seed"])
    model = SiglipModel(siglip_config(name, len(tokenizer), special_ids)).eval()
    randomize(model, name)
    model.save_pretrained(out)
    preprocessor_config(out)

    model, info = SiglipModel.from_pretrained(out, dtype=torch.float32, attn_implementation="eager",
                                              output_loading_info=True)
    model.eval()
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    processor, processor_source = load_processor(out)
    image_processor = SiglipImageProcessorPil.from_pretrained(out)
    tokenizer = processor.tokenizer

    text_inputs = processor(text=TEXTS, padding="max_length", max_length=MAX_LENGTH, truncation=True,
                            return_tensors="pt")
    images = [open_image(IMAGES / n) for n in IMAGE_NAMES]
    pixel_values = image_processor(images=images, return_tensors="pt")["pixel_values"]
    ref = {"input_ids": text_inputs["input_ids"].to(torch.int64)}
    if "attention_mask" in text_inputs:
        ref["attention_mask"] = text_inputs["attention_mask"].to(torch.int64)
    with torch.no_grad():
        text_out = model.get_text_features(**text_inputs)
        ref["text_features"] = text_out.pooler_output
        image_out = model.get_image_features(pixel_values=pixel_values)
        ref["pixel_values"] = pixel_values
        ref["image_features"] = image_out.pooler_output
        full = model(input_ids=text_inputs["input_ids"], attention_mask=text_inputs.get("attention_mask"),
                     pixel_values=pixel_values)
        ref["logits_per_image"] = full.logits_per_image
        ref["probs"] = torch.sigmoid(full.logits_per_image)
        # The reference is self-consistent: the logits are the features' scaled cosine similarities.
        t = ref["text_features"] / ref["text_features"].norm(dim=-1, keepdim=True)
        i = ref["image_features"] / ref["image_features"].norm(dim=-1, keepdim=True)
        again = i @ t.T * model.logit_scale.exp() + model.logit_bias
        assert torch.allclose(again, ref["logits_per_image"], atol=1e-5)
        if "attention_mask" in text_inputs:
            unmasked = model.get_text_features(input_ids=text_inputs["input_ids"]).pooler_output
            mask_effect = (unmasked - ref["text_features"]).abs().max().item()
        else:
            mask_effect = None
    tensors = {k: v.detach().contiguous().to(torch.float32 if v.is_floating_point() else torch.int64)
               for k, v in ref.items()}
    save_file(tensors, str(out / "reference.safetensors"))

    # Non-trivial: different texts give different features, probabilities are not saturated.
    feats = ref["text_features"]
    spread = torch.cdist(feats, feats) + torch.eye(len(TEXTS)) * 1e9
    probs = ref["probs"]
    print(f"{name}: min text feature distance {spread.min().item():.4f}, probs in "
          f"[{probs.min().item():.4f}, {probs.max().item():.4f}]")
    assert spread.min().item() > 1e-3 and probs.min() > 1e-6 and probs.max() < 1 - 1e-6

    behaviour = tokenizer_behaviour(tokenizer)
    rows = []
    for k, text in enumerate(TEXTS):
        full_ids = tokenizer(text)["input_ids"]
        row = {"index": k, "text": text, "ids": full_ids, "num_tokens": len(full_ids),
               "truncated": len(full_ids) > MAX_LENGTH}
        if text_rows_check:
            row.update({key: text_rows_check[k][key] for key in
                        ("canonical", "tokenizer_json_matches", "tokenizer_json_post_processor_matches")})
            assert text_rows_check[k]["ids"] == full_ids
        else:
            # A Rust reader with the tokenizers crate and no preprocessing of its own.
            fast = Tokenizer.from_file(str(out / "tokenizer.json"))
            row["tokenizer_json_matches"] = fast.encode(text).ids == full_ids
            row["tokenizer_json_lowercased_matches"] = fast.encode(text.lower()).ids == full_ids
        rows.append(row)
    long_row = ref["input_ids"][TEXTS.index(LONG)].tolist()
    behaviour["truncation_of_long_text"] = (
        "first 63 ids then eos" if long_row == rows[TEXTS.index(LONG)]["ids"][:MAX_LENGTH - 1] + [tokenizer.eos_token_id]
        else "first 64 ids, no eos kept" if long_row == rows[TEXTS.index(LONG)]["ids"][:MAX_LENGTH]
        else "other: see input_ids")
    pad = tokenizer.pad_token_id
    short = ref["input_ids"][TEXTS.index("a")].tolist()
    behaviour["padding_observed"] = ("left" if short[0] == pad and short[-1] != pad
                                     else "right" if short[-1] == pad else "none")

    saved = json.loads((out / "config.json").read_text())
    manifest = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "seed": s["seed"],
        "model_type": saved["model_type"],
        "architectures": saved.get("architectures"),
        "texts": rows,
        "images": [{"index": k, "file": f"tests/fixtures/images/{n}",
                    "opened_as": "ImageOps.exif_transpose(Image.open(path))",
                    "mode": images[k].mode, "size": list(images[k].size)} for k, n in enumerate(IMAGE_NAMES)],
        "logit_scale": model.logit_scale.item(),
        "logit_scale_exp": model.logit_scale.exp().item(),
        "logit_bias": model.logit_bias.item(),
        "text_inputs": f"processor(text=texts, padding='max_length', max_length={MAX_LENGTH}, truncation=True, "
                       "return_tensors='pt')",
        "processor": processor_source,
        "processor_returned": sorted(text_inputs.keys()),
        "image_processor": "SiglipImageProcessorPil.from_pretrained(dir)(images=images, return_tensors='pt')",
        "text_features": "model.get_text_features(**text_inputs).pooler_output: final LayerNorm, last position "
                         "(index 63, whatever token is there), then text head (Linear); not normalised",
        "get_text_features_returns": type(text_out).__name__,
        "image_features": "model.get_image_features(pixel_values=pixel_values).pooler_output (attention-pooling head)",
        "logits_per_image": "model(input_ids, attention_mask, pixel_values).logits_per_image = "
                            "cos(image, text) * exp(logit_scale) + logit_bias, [images, texts]",
        "probs": "sigmoid(logits_per_image)",
        "attention_mask_effect_on_text_features_max_abs": mask_effect,
        "tokenizer": behaviour,
        "model": "float32, eval, attn_implementation='eager', reloaded from the saved files",
        "reference_tensors": {k: list(v.shape) for k, v in tensors.items()},
    }
    if name == "siglip-tiny":
        manifest["tokenizer_json_maker"] = ("transformers.convert_slow_tokenizer.T5Converter(SiglipTokenizer("
                                            "vocab_file='spiece.model') with _extra_ids = 0).converted()")
        manifest["tokenizer_json_check"] = ("canonicalize(text) (lowercase, remove string.punctuation, collapse "
                                            "\\s+ to ' ', strip) -> tokenizer.json encode(add_special_tokens=False) "
                                            "+ [1] compared with SiglipTokenizer(text)['input_ids'] (no truncation)")
        manifest["spiece"] = {"model_type": "unigram", "vocab_size": SPM_VOCAB, "normalization": "nmt_nfkc",
                              "pad": [0, "<pad>"], "eos": [1, "</s>"], "unk": [2, "<unk>"], "bos": None,
                              "trained_on": "the corpus lowercased"}
    else:
        manifest["tokenizer_json_maker"] = ("tokenizers BpeTrainer (byte_fallback, fuse_unk, Metaspace split before '▁' "
                                            "for training) on the cased corpus; vocab re-laid as Gemma's (5 specials, "
                                            "256 <0xXX>, pieces) and written by transformers' GemmaTokenizer"
                                            ".save_pretrained; tokenizer_config.json then replaced by the FixRes one")
        manifest["tokenizer_json_check"] = "tokenizers.Tokenizer.from_file(tokenizer.json).encode(text) (with special tokens) vs AutoTokenizer(text)['input_ids']"
    (out / "reference.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n")
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"{name}: {len(tokenizer)} tokens, {size} bytes, tokenizer {behaviour['class']}")
    return manifest


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    print("transformers", transformers.__version__, "torch", torch.__version__)
    for out in (SIGLIP1, SIGLIP2):
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
    slow = write_siglip1_tokenizer(SIGLIP1)
    rows = check_siglip1_tokenizer(SIGLIP1, slow)
    make_fixture("siglip-tiny", SIGLIP1, rows)
    write_siglip2_tokenizer(SIGLIP2)
    make_fixture("siglip2-tiny", SIGLIP2, None)


if __name__ == "__main__":
    main()
