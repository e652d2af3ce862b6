#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizers/llama2-style/: a tiny tokenizer in the layout of a Llama 2
repository (SentencePiece BPE as tokenizer.json: byte fallback, normalizer Prepend("▁") +
Replace(" ", "▁"), "<s> $A" post-processor; tokenizer_config.json with LlamaTokenizer and
legacy; config.json model_type llama) and cases.json: for each text, the ids of the raw
tokenizer.json (what clipsteer computes, as SentencePiece and llama.cpp do) and of transformers'
AutoTokenizer on the same directory.

transformers 5 rebuilds LlamaTokenizer from the vocabulary with its own Metaspace pre-tokenizer,
which drops SentencePiece's "▁" before a text that starts with a space or follows a special token
(tools/check_family_tokenizers.py measured this on the real Llama 2 vocabulary: 19-21 of 74 texts).
clipsteer keeps the repository's tokenizer.json; tests/tokenizers.rs pins the difference.

    /work/venv/bin/python tools/make_llama2_tokenizer_case.py   (transformers 5.25, tokenizers)
"""
import json
from pathlib import Path

import transformers
from tokenizers import Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE
from transformers import AutoTokenizer

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tokenizers" / "llama2-style"

specials = ["<unk>", "<s>", "</s>"]
vocab = {t: i for i, t in enumerate(specials)}
for b in range(256):
    vocab[f"<0x{b:02X}>"] = len(vocab)
pieces = ["▁", "H", "e", "l", "o", "w", "r", "d", "▁H", "▁w", "ll", "He", "Hell", "Hello", "▁Hello",
          "or", "wor", "worl", "world", "▁world", "▁▁"]
for p in pieces:
    vocab.setdefault(p, len(vocab))
merges = [("▁", "H"), ("▁", "w"), ("l", "l"), ("H", "e"), ("He", "ll"), ("Hell", "o"),
          ("▁", "Hello"), ("o", "r"), ("w", "or"), ("wor", "l"), ("worl", "d"), ("▁", "world"),
          ("▁", "▁")]
tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                 decoders.Strip(" ", 1, 0)])
tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
from tokenizers import AddedToken
tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])

OUT.mkdir(parents=True, exist_ok=True)
tok.save(str(OUT / "tokenizer.json"))
(OUT / "tokenizer_config.json").write_text(json.dumps({
    "tokenizer_class": "LlamaTokenizer", "legacy": False, "add_bos_token": True,
    "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
}, indent=2) + "\n")
(OUT / "config.json").write_text(json.dumps({"model_type": "llama"}, indent=2) + "\n")

raw = Tokenizer.from_file(str(OUT / "tokenizer.json"))
auto = AutoTokenizer.from_pretrained(str(OUT))
cases = []
for text in ["Hello world", " Hello", " ", "Hello  world", "<s> Hello</s>", "Hello <s> world"]:
    cases.append({
        "text": text,
        "tokenizer_json": raw.encode(text, add_special_tokens=True).ids,
        "transformers": auto(text, add_special_tokens=True)["input_ids"],
    })
(OUT / "cases.json").write_text(json.dumps({
    "transformers": transformers.__version__, "tokenizer_class": type(auto).__name__, "cases": cases,
}, indent=1, ensure_ascii=False) + "\n")
for c in cases:
    print(repr(c["text"]), c["tokenizer_json"], c["transformers"])
