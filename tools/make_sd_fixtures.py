#!/usr/bin/env python3
"""Writes tests/fixtures/sd-tiny/: a tiny random-init Stable Diffusion pipeline in the diffusers
layout, and the reference numbers of diffusers on it and on its DPM-Solver++ scheduler.

    .venv/bin/pip install torch transformers safetensors pillow numpy diffusers==0.42.1
    .venv/bin/python tools/make_sd_fixtures.py

Pinned: diffusers 0.42.1, transformers 5.24 (the repository's .venv). Everything under
tests/fixtures/sd-tiny/ is written by this script and only by it; it is deterministic (fixed torch
seeds, CPU, float32).

The pipeline mirrors stabilityai/stable-diffusion-2-base's layout and code paths at toy sizes:
a UNet with linear projections and per-block head counts (SD 2's `use_linear_projection`, list
`attention_head_dim`), a VAE with four blocks (the same 8x downscale as SD's), a CLIPTextModel with
exact-erf `gelu` (OpenCLIP ViT-H as SD 2 ships it), a CLIP BPE tokenizer that pads with "!" as
SD 2's does, and SD 2-base's scheduler_config.json (a PNDM config, which the original demo turned
into DPMSolverMultistepScheduler with `from_config`).
"""
import json
import shutil
from pathlib import Path

import diffusers
import numpy as np
import torch
import transformers
from clip_vocab import clip_vocab_and_merges
from diffusers import (
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "sd-tiny"

DIFFUSERS_VERSION = "0.42.1"
PROMPT = "a fat squirrel on a tree branch"
NEGATIVE = "blurry"
GUIDANCE = 7.5
SIZE = 64
PIPELINE_STEPS = 2
# The first CLIP merges: enough for common short words to become single tokens while the
# embedding table stays a few kB; words beyond them split into smaller known pieces.
TINY_MERGES = 1500

# stabilityai/stable-diffusion-2-base/scheduler/scheduler_config.json
SD2_BASE_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.8.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}


def tiny_tokenizer(directory: Path) -> CLIPTokenizer:
    vocab, merges = clip_vocab_and_merges()
    merges = merges[:TINY_MERGES]
    byte_tokens = [t for t, i in sorted(vocab.items(), key=lambda kv: kv[1]) if i < 512]
    tokens = byte_tokens + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    # The files SD 2's tokenizer/ folder holds besides the vocabulary, with its "!" padding.
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "!",
        "unk_token": "<|endoftext|>",
    }
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    config = {**special, "model_max_length": 77, "tokenizer_class": "CLIPTokenizer", "do_lower_case": True}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer = CLIPTokenizer.from_pretrained(directory)
    assert len(tokenizer.get_vocab()) == len(tokens) and tokenizer.pad_token_id == 0
    return tokenizer


def tiny_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    torch.manual_seed(1)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        projection_dim=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config).eval()


def tiny_unet() -> UNet2DConditionModel:
    torch.manual_seed(2)
    unet = UNet2DConditionModel(
        sample_size=SIZE // 8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        attention_head_dim=[2, 4],
        cross_attention_dim=32,
        # candle-transformers' UNet blocks build their resnets with 32 groups whatever the
        # config says; SD's UNets all use 32.
        norm_num_groups=32,
        use_linear_projection=True,
    )
    return unet.eval()


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(3)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=SIZE,
    )
    return vae.eval()


def perturb(model: torch.nn.Module, seed: int, scale: float) -> None:
    """Random init leaves some layers at zero or identity (norm weights, biases); perturbing every
    parameter makes each one matter, so a loader that dropped or swapped one would fail parity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            param.add_(torch.randn(param.shape, generator=generator) * scale)


def save_text_encoder(model: CLIPTextModel, directory: Path) -> None:
    """transformers 5 saves a CLIPTextModel without the `text_model.` prefix that the SD 2
    checkpoints (saved by transformers 4) carry; the fixture keeps the SD 2 names, so that it is the
    real checkpoints' layout that clipsteer is tested on."""
    model.save_pretrained(directory, safe_serialization=True)
    weights = directory / "model.safetensors"
    state = load_file(weights)
    save_file({f"text_model.{k}": v.contiguous() for k, v in state.items()}, weights, metadata={"format": "pt"})
    reloaded = CLIPTextModel.from_pretrained(directory).eval()
    for (name, a), (_, b) in zip(sorted(model.state_dict().items()), sorted(reloaded.state_dict().items())):
        assert torch.equal(a, b), f"text encoder weight {name} did not survive the reload"


def scheduler_references() -> dict:
    """Timesteps, sigmas and step outputs of DPMSolverMultistepScheduler built from SD 2-base's
    config, for several spacings, step counts and prediction types."""
    base = PNDMScheduler.from_config(SD2_BASE_SCHEDULER)
    cases = []
    tensors = {}
    for spacing in ["linspace", "leading", "trailing"]:
        for steps in [1, 2, 3, 7, 10, 25, 50, 100]:
            scheduler = DPMSolverMultistepScheduler.from_config(base.config, timestep_spacing=spacing)
            scheduler.set_timesteps(steps)
            cases.append(
                {
                    "spacing": spacing,
                    "steps": steps,
                    "timesteps": scheduler.timesteps.tolist(),
                    "sigmas": scheduler.sigmas.tolist(),
                }
            )
    # Step outputs: a fixed start sample and fixed "model outputs" per step, run through the whole
    # schedule. 20 steps exercises the first-order start, the 2M steps, and the first-order end.
    runs = []
    for name, prediction_type, steps in [("eps20", "epsilon", 20), ("eps5", "epsilon", 5), ("v8", "v_prediction", 8)]:
        scheduler = DPMSolverMultistepScheduler.from_config(base.config, prediction_type=prediction_type)
        scheduler.set_timesteps(steps)
        generator = torch.Generator().manual_seed(100 + steps)
        sample = torch.randn((1, 4, 4, 4), generator=generator) * scheduler.init_noise_sigma
        tensors[f"{name}.sample0"] = sample.clone()
        for i, t in enumerate(scheduler.timesteps):
            model_output = torch.randn((1, 4, 4, 4), generator=generator)
            tensors[f"{name}.model_output.{i}"] = model_output
            sample = scheduler.step(model_output, t, sample).prev_sample
            tensors[f"{name}.sample.{i + 1}"] = sample.clone()
        runs.append({"name": name, "prediction_type": prediction_type, "steps": steps})
    return {"timesteps": cases, "runs": runs}, tensors


def main() -> None:
    assert diffusers.__version__ == DIFFUSERS_VERSION, f"diffusers {diffusers.__version__}, pinned {DIFFUSERS_VERSION}"
    torch.set_num_threads(1)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)

    tokenizer = tiny_tokenizer(OUT / "tokenizer")
    text_encoder = tiny_text_encoder(tokenizer)
    unet = tiny_unet()
    vae = tiny_vae()
    perturb(text_encoder, 11, 0.02)
    perturb(unet, 12, 0.05)
    perturb(vae, 13, 0.05)
    save_text_encoder(text_encoder, OUT / "text_encoder")
    unet.save_pretrained(OUT / "unet", safe_serialization=True)
    vae.save_pretrained(OUT / "vae", safe_serialization=True)
    (OUT / "scheduler").mkdir()
    (OUT / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD2_BASE_SCHEDULER, indent=2) + "\n")
    (OUT / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionPipeline",
                "_diffusers_version": DIFFUSERS_VERSION,
                "scheduler": ["diffusers", "PNDMScheduler"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "safety_checker": [None, None],
                "feature_extractor": [None, None],
                "requires_safety_checker": False,
            },
            indent=2,
        )
        + "\n"
    )

    # The pipeline as the original demo ran it, reloaded from disk so the reference covers what
    # was saved: SD 2-base's scheduler config turned into DPM-Solver++ (2M).
    pipe = StableDiffusionPipeline.from_pretrained(OUT, safety_checker=None, feature_extractor=None)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    noise = torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(42))

    ids = tokenizer(PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    negative_ids = tokenizer(NEGATIVE, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        prompt_embeds = pipe.text_encoder(ids)[0]
        latents = pipe(
            PROMPT,
            negative_prompt=NEGATIVE,
            height=SIZE,
            width=SIZE,
            num_inference_steps=PIPELINE_STEPS,
            guidance_scale=GUIDANCE,
            latents=noise.clone(),
            output_type="latent",
        ).images
        decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    image = (decoded / 2 + 0.5).clamp(0, 1)
    pixels = (image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    (OUT / "reference").mkdir()
    Image.fromarray(pixels).save(OUT / "reference" / "image.png")

    scheduler_meta, scheduler_tensors = scheduler_references()
    save_file(
        {
            "noise": noise.contiguous(),
            "input_ids": ids.to(torch.int64).contiguous(),
            "negative_input_ids": negative_ids.to(torch.int64).contiguous(),
            "prompt_embeds": prompt_embeds.contiguous(),
            "latents": latents.contiguous(),
            "decoded": decoded.contiguous(),
            "image": image.contiguous(),
            **{k: v.contiguous() for k, v in scheduler_tensors.items()},
        },
        OUT / "reference" / "reference.safetensors",
    )
    (OUT / "reference" / "reference.json").write_text(
        json.dumps(
            {
                "diffusers": diffusers.__version__,
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "prompt": PROMPT,
                "negative_prompt": NEGATIVE,
                "guidance_scale": GUIDANCE,
                "size": SIZE,
                "steps": PIPELINE_STEPS,
                "pipeline_timesteps": pipe.scheduler.timesteps.tolist(),
                "scheduler": scheduler_meta,
            },
            indent=1,
        )
        + "\n"
    )
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
