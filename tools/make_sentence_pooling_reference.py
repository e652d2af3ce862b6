#!/usr/bin/env python3
"""Writes tests/fixtures/reference/sentence-pooling.json: embeddings of the tiny sentence encoder
(tests/fixtures/minilm-tiny) as the real sentence-transformers library computes them under several
pooling set-ups (CLS or mean pooling, with or without the Normalize module).

For each variant the fixture directory is copied into a temporary directory, a 1_Pooling/config.json
(in the legacy format that sentence-transformers < 6 wrote and that published models carry:
word_embedding_dimension, pooling_mode_*, include_prompt) and a modules.json are written, the model is
loaded with sentence_transformers.SentenceTransformer(dir, device="cpu") and the texts of
tests/fixtures/reference/sentence.json are encoded with normalize_embeddings=False, so that any
normalisation comes only from the Normalize module.

    python -m venv .venv && .venv/bin/pip install torch transformers sentence-transformers
    .venv/bin/python tools/make_sentence_pooling_reference.py
"""
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import sentence_transformers
import transformers
from sentence_transformers import SentenceTransformer

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "minilm-tiny"
CASES = ROOT / "tests" / "fixtures" / "reference" / "sentence.json"
OUT = ROOT / "tests" / "fixtures" / "reference" / "sentence-pooling.json"

TRANSFORMER = {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}
POOLING = {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}
NORMALIZE = {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}

# name -> (pooling mode, normalize module present)
VARIANTS = {
    "mean-normalized": ("mean", True),
    "cls-normalized": ("cls", True),
    "cls": ("cls", False),
    "mean": ("mean", False),
}


def pooling_config(dim, mode):
    """The 1_Pooling/config.json that sentence-transformers' Pooling.save wrote before 6.0 (the
    format of published models), in its key order."""
    return {
        "word_embedding_dimension": dim,
        "pooling_mode_cls_token": mode == "cls",
        "pooling_mode_mean_tokens": mode == "mean",
        "pooling_mode_max_tokens": mode == "max",
        "pooling_mode_mean_sqrt_len_tokens": mode == "mean_sqrt_len_tokens",
        "pooling_mode_weightedmean_tokens": mode == "weightedmean",
        "pooling_mode_lasttoken": mode == "lasttoken",
        "include_prompt": True,
    }


def main():
    cases = json.loads(CASES.read_text())
    texts = [case["text"] for case in cases]
    fixture_modules = json.loads((FIXTURE / "modules.json").read_text())
    assert fixture_modules == [TRANSFORMER, POOLING, NORMALIZE], fixture_modules
    dim = json.loads((FIXTURE / "config.json").read_text())["hidden_size"]

    variants = {}
    tokenization_checked = False
    for name, (mode, normalize) in VARIANTS.items():
        config = pooling_config(dim, mode)
        modules = [TRANSFORMER, POOLING] + ([NORMALIZE] if normalize else [])
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp) / "model"
            shutil.copytree(FIXTURE, model_dir)
            (model_dir / "1_Pooling").mkdir(exist_ok=True)
            (model_dir / "1_Pooling" / "config.json").write_text(json.dumps(config, indent=4))
            (model_dir / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")

            model = SentenceTransformer(str(model_dir), device="cpu")
            model.eval()
            kinds = [type(m).__name__ for m in model]
            expected = ["Transformer", "Pooling"] + (["Normalize"] if normalize else [])
            assert kinds == expected, (name, kinds)
            pooling = model[1]
            assert pooling.pooling_mode == mode, (name, pooling.pooling_mode)

            if not tokenization_checked:
                for case in cases:
                    ids = model.tokenize([case["text"]])["input_ids"][0].tolist()
                    if ids != case["ids"]:
                        sys.exit(f"tokenization differs for {case['text']!r}: {ids} != {case['ids']}")
                tokenization_checked = True

            embeddings = model.encode(texts, convert_to_numpy=True, normalize_embeddings=False)
            assert embeddings.dtype == np.float32 and embeddings.shape == (len(texts), dim)
            # One sentence at a time must agree with the padded batch.
            for i, text in enumerate(texts):
                single = model.encode([text], convert_to_numpy=True, normalize_embeddings=False)[0]
                assert np.allclose(single, embeddings[i], atol=1e-6), (name, text)
            norms = np.linalg.norm(embeddings, axis=-1)
            if normalize:
                assert np.allclose(norms, 1.0, atol=1e-5), (name, norms)

            variants[name] = {
                "pooling_config": config,
                # What Pooling.save of the sentence-transformers used here writes for the same module.
                "pooling_config_as_saved_by_this_version": pooling.get_config_dict(),
                "modules": modules,
                "normalize": normalize,
                "embeddings": [[float(x) for x in row] for row in embeddings],
            }
            print(f"{name}: {kinds}, mode {pooling.pooling_mode!r}, norms {np.round(norms, 4).tolist()}")

    out = {
        "generator": "tools/make_sentence_pooling_reference.py",
        "sentence_transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
        "texts": texts,
        "variants": variants,
    }
    OUT.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
