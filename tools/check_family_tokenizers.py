"""Do the raw tokenizer.json route (clipsteer's Rust path) and transformers' AutoTokenizer give the
same ids for the LM families clipsteer claims (llama: Llama 2 SPM and Llama 3 BPE, mistral,
qwen2, qwen3, gemma2/gemma3, phi3)? Checked on real vocabularies: llama.cpp's vocab-only GGUF
files (models/ggml-vocab-*.gguf) with their test cases (.gguf.inp) and expected ids (.gguf.out).

Two routes per vocabulary, both ending in a Hugging Face directory that is then loaded twice:

  gguf  transformers builds the tokenizer from the GGUF (AutoTokenizer.from_pretrained(dir,
        gguf_file=...); for gemma-4, where AutoTokenizer fails while building the model config,
        TokenizersBackend.from_pretrained(dir, gguf_file=...)), saves it with save_pretrained into
        OUT/<family>/ (tokenizer.json + tokenizer_config.json), and the directory is reloaded.
  hub   the same vocabulary rewritten into the layout the family's hub repository has:
        config.json with the model_type, tokenizer_config.json with the tokenizer_class and flags
        the repo declares, and tokenizer.json whose normalizer / pre-tokenizer / post-processor /
        decoder are the ones transformers' own converters wrote for that family
        (convert_slow_tokenizer.py: LlamaConverter legacy shape, Qwen2Converter, GemmaConverter;
        the Llama 3 shape with ignore_merges). Written to OUT/hub-<name>/. The hub flags are
        written from memory of the repos and are listed in HUB below; variants that flip one flag
        (legacy, add_bos_token) show what that flag does.

For every .inp case plus hostile strings (leading spaces, blank lines, tabs, emoji, CJK, literal
special-token text, NFKC-sensitive text, combining marks, 2000-char strings) it compares
  (a)  AutoTokenizer.from_pretrained(DIR).encode(text, add_special_tokens=True)
  (b)  tokenizers.Tokenizer.from_file(DIR/tokenizer.json).encode(text, add_special_tokens=True)
       -- clipsteer's Rust path (same library; padding/truncation do not matter for one text),
  (c)  llama.cpp's expected ids (.out). They carry no BOS/EOS (test-tokenizer-0.cpp tokenizes with
       add_special=false, parse_special=false), so they are compared with (a) and (b) encoded
       with add_special_tokens=False (a0, b0).
  g=a  (gguf route) the GGUF-built tokenizer vs the reloaded one: drift across save/reload.
When (a) and (b) differ it prints which components of the loaded AutoTokenizer's backend differ
from DIR/tokenizer.json (normalizer, pre_tokenizer, post_processor, decoder, model fields,
added_tokens), i.e. what transformers rebuilt from its class definition or tokenizer_config.json.

.inp format (as test-tokenizer-0.cpp's read_tests): cases separated by "\\n__ggml_vocab_test__\\n",
the text after the last separator a case if non-empty; .out: one line of ids per case.

Run (no network; needs transformers>=5, tokenizers, gguf):
    /work/venv/bin/python tools/check_family_tokenizers.py \\
        [--models /tmp/tokfam/vocab] [--out /tmp/tokfam] [--show 3] [--extra] [--no-hub]
--models is a folder holding llama.cpp's models/ggml-vocab-* files (copied from a llama.cpp
checkout); --extra also runs every other ggml-vocab-*.gguf with .inp/.out (gguf route only).
Exit status 0; the printed table is the result.
"""
import argparse
import json
import sys
import traceback
from pathlib import Path

import tokenizers
import transformers
from tokenizers import Regex, decoders, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer, TokenizersBackend

SEP = "\n__ggml_vocab_test__\n"

# (family label, vocab file stem, what it stands for)
FAMILIES = [
    ("llama-spm", "ggml-vocab-llama-spm", "Llama 2 / Mistral v1 (SentencePiece BPE)"),
    ("llama-bpe", "ggml-vocab-llama-bpe", "Llama 3 (byte-level BPE)"),
    ("qwen2", "ggml-vocab-qwen2", "Qwen2 / Qwen2.5 / Qwen3 (byte-level BPE)"),
    ("qwen35", "ggml-vocab-qwen35", "Qwen3.5 split regex, Qwen2 vocab (not a claimed family)"),
    ("phi-3", "ggml-vocab-phi-3", "Phi-3 (SentencePiece, Llama 2 vocab + chat tokens)"),
    ("gpt-2", "ggml-vocab-gpt-2", "GPT-2 (byte-level BPE, reference)"),
    ("gemma-4", "ggml-vocab-gemma-4", "Gemma 4 vocab (SentencePiece-style BPE, 262k)"),
]

HOSTILE = [
    " leading space",
    "  two leading spaces",
    "\n\n",
    "a\n\nb",
    "\ttab\tseparated\t",
    "line\r\nbreak",
    "trailing space ",
    "emoji 🦙🚀😶‍🌫️ end",
    "中文测试，日本語のテスト、한국어",
    "<s>",
    "</s>",
    "<s> Hello</s>",
    "Hello <s> world",
    "<s>Hello",
    "Hi</s>there",
    "<|begin_of_text|>Hello<|eot_id|>",
    "<|endoftext|>",
    "<|im_start|>user\nhi<|im_end|>",
    "<bos><start_of_turn>user",
    "<|user|>\nhi<|end|>",
    "[INST] hi [/INST]",
    "ﬁnance ﬂow",
    "１２３ ＡＢＣ",
    "e\u0301 vs \u00e9",
    "nbsp\u00a0here\u3000ideographic",
    "zero\u200bwidth",
    "x" * 2000,
    ("The quick brown fox jumps over the lazy dog. " * 45)[:2000],
]

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN35_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def spm_legacy(tok, bos="<s>"):
    """Llama 2 / Mistral v1 / Phi-3 tokenizer.json: LlamaConverter with legacy=True."""
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = template(tok, bos)


def template(tok, bos):
    bid = tok.token_to_id(bos)
    return processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bid)]
    )


def byte_level(tok, split, nfc, bos=None):
    """Byte-level BPE tokenizer.json (Llama 3 when bos is set, Qwen2Converter otherwise)."""
    tok.normalizer = normalizers.NFC() if nfc else None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=bos is not None, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    bl = processors.ByteLevel(trim_offsets=False)
    tok.post_processor = processors.Sequence([bl, template(tok, bos)]) if bos else bl


def gemma(tok):
    """Gemma 2/3 tokenizer.json (GemmaConverter), BOS added by the post-processor."""
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.post_processor = template(tok, "<bos>")


LLAMA2_CFG = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "pad_token": None, "add_bos_token": True, "add_eos_token": False}
QWEN_CFG = {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>", "unk_token": None, "add_prefix_space": False,
            "errors": "replace"}
GEMMA_CFG = {"tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>",
             "unk_token": "<unk>", "pad_token": "<pad>", "add_bos_token": True, "add_eos_token": False}

# (name, source family dir, config.json model_type, tokenizer_config.json, tokenizer.json shaper,
#  model fields to set, note)
HUB = [
    ("llama2", "llama-spm", "llama", {**LLAMA2_CFG, "legacy": False}, spm_legacy, {},
     "Llama-2-7b-hf: LlamaTokenizer, legacy=false, legacy-shaped tokenizer.json"),
    ("llama2-legacy", "llama-spm", "llama", {**LLAMA2_CFG, "legacy": True}, spm_legacy, {},
     "same, tokenizer_config legacy=true"),
    ("llama2-normtrue", "llama-spm", "llama", {**LLAMA2_CFG, "legacy": False}, spm_legacy, {},
     "llama2 with the added tokens <unk> <s> </s> marked normalized=true in tokenizer.json"),
    ("mistral-v1", "llama-spm", "mistral", {k: v for k, v in LLAMA2_CFG.items()}, spm_legacy, {},
     "Mistral-7B-v0.1: LlamaTokenizer, no legacy key, model_type mistral"),
    ("llama3", "llama-bpe", "llama",
     {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"},
     lambda t: byte_level(t, LLAMA3_SPLIT, nfc=False, bos="<|begin_of_text|>"), {"ignore_merges": True},
     "Llama-3.x: PreTrainedTokenizerFast, BOS from TemplateProcessing, ignore_merges"),
    ("qwen2", "qwen2", "qwen2", QWEN_CFG, lambda t: byte_level(t, QWEN2_SPLIT, nfc=True), {},
     "Qwen2/2.5: Qwen2Tokenizer, NFC, no BOS"),
    ("qwen3", "qwen2", "qwen3", QWEN_CFG, lambda t: byte_level(t, QWEN2_SPLIT, nfc=True), {},
     "Qwen3: same files, model_type qwen3"),
    ("qwen3_5", "qwen35", "qwen3_5", QWEN_CFG, lambda t: byte_level(t, QWEN35_SPLIT, nfc=False), {},
     "Qwen3.5 (guess: Qwen2Tokenizer class, no NFC as llama.cpp's .out implies)"),
    ("phi3", "phi-3", "phi3", {**LLAMA2_CFG, "legacy": False, "eos_token": "<|endoftext|>"}, spm_legacy, {},
     "Phi-3-mini: LlamaTokenizer, legacy=false, legacy-shaped tokenizer.json, add_bos_token=true"),
    ("phi3-nobos", "phi-3", "phi3",
     {**LLAMA2_CFG, "legacy": False, "eos_token": "<|endoftext|>", "add_bos_token": False}, spm_legacy, {},
     "same, add_bos_token=false while tokenizer.json's TemplateProcessing adds <s>"),
    ("gemma2", "gemma-4", "gemma2", GEMMA_CFG, gemma, {},
     "Gemma 2 pipeline on the Gemma 4 vocab: GemmaTokenizer, add_bos_token=true"),
    ("gemma3", "gemma-4", "gemma3_text", GEMMA_CFG, gemma, {},
     "Gemma 3 pipeline (model_type gemma3_text) on the Gemma 4 vocab"),
]


def read_cases(inp: Path, out: Path):
    """(text, expected ids) pairs, parsed like test-tokenizer-0.cpp's read_tests."""
    raw = inp.read_bytes().decode("utf-8")
    texts = []
    pos = 0
    while pos < len(raw):
        nxt = raw.find(SEP, pos)
        if nxt == -1:
            texts.append(raw[pos:])
            break
        texts.append(raw[pos:nxt])
        pos = nxt + len(SEP)
    outs = out.read_bytes().decode("utf-8").split("\n")
    if outs and outs[-1] == "":
        outs.pop()
    if len(texts) != len(outs):
        raise ValueError(f"{inp.name}: {len(texts)} inputs, {len(outs)} outputs")
    return [(t, [int(x) for x in o.split()]) for t, o in zip(texts, outs)]


def load_cases(models: Path, stem: str):
    gguf = models / f"{stem}.gguf"
    inp, out = gguf.with_suffix(".gguf.inp"), gguf.with_suffix(".gguf.out")
    cases = read_cases(inp, out) if inp.exists() and out.exists() else []
    return cases + [(t, None) for t in HOSTILE]


def short(ids, n=20):
    ids = list(ids)
    return str(ids) if len(ids) <= n else f"{str(ids[:n])[:-1]}, ...] (+{len(ids) - n})"


def component_diff(saved_json: dict, live_json: dict):
    """Top-level tokenizer.json components that differ between two serializations."""
    diffs = []
    for key in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        if saved_json.get(key) != live_json.get(key):
            diffs.append((key, saved_json.get(key), live_json.get(key)))
    sm, lm = saved_json.get("model", {}), live_json.get("model", {})
    for key in sorted(set(sm) | set(lm)):
        if sm.get(key) != lm.get(key):
            if key in ("vocab", "merges"):
                diffs.append((f"model.{key}", f"<{len(sm.get(key) or [])} entries>", f"<{len(lm.get(key) or [])} entries>"))
            else:
                diffs.append((f"model.{key}", sm.get(key), lm.get(key)))
    sa = {(t["id"], t["content"], t["special"], t["normalized"]) for t in saved_json.get("added_tokens", [])}
    la = {(t["id"], t["content"], t["special"], t["normalized"]) for t in live_json.get("added_tokens", [])}
    if sa != la:
        diffs.append(("added_tokens", f"only in file: {sorted(sa - la)[:4]}", f"only loaded: {sorted(la - sa)[:4]}"))
    return diffs


def brief(v, n=260):
    s = json.dumps(v, ensure_ascii=False)
    return s if len(s) <= n else s[:n] + "..."


def compare(res, fam_dir: Path, cases, show, tok_g=None):
    """Fill res with the (a)/(b)/(c) comparison of the HF directory fam_dir."""
    tok_a = AutoTokenizer.from_pretrained(str(fam_dir))
    tok_b = tokenizers.Tokenizer.from_file(str(fam_dir / "tokenizer.json"))
    cfg = json.loads((fam_dir / "tokenizer_config.json").read_text())
    res["classes"] = (f"{type(tok_g).__name__} -> " if tok_g is not None else "") + type(tok_a).__name__
    res["config"] = {k: cfg[k] for k in ("tokenizer_class", "add_bos_token", "add_eos_token", "legacy", "bos_token") if k in cfg}
    file_json = json.loads((fam_dir / "tokenizer.json").read_text())
    res["component_diff"] = component_diff(file_json, json.loads(tok_a.backend_tokenizer.to_str()))

    c = dict(cases=len(cases), inp=0, ab=0, a0b0=0, ac=0, bc=0, ga=0)
    mism = {"ab": [], "ac": [], "bc": [], "ga": []}
    for text, exp in cases:
        a = tok_a.encode(text, add_special_tokens=True)
        a0 = tok_a.encode(text, add_special_tokens=False)
        b = tok_b.encode(text, add_special_tokens=True).ids
        b0 = tok_b.encode(text, add_special_tokens=False).ids
        c["ab"] += a == b
        c["a0b0"] += a0 == b0
        if a != b:
            mism["ab"].append((text, a, b))
        if tok_g is not None:
            g = tok_g.encode(text, add_special_tokens=True)
            c["ga"] += g == a
            if g != a:
                mism["ga"].append((text, g, a))
        if exp is not None:
            c["inp"] += 1
            c["ac"] += a0 == exp
            c["bc"] += b0 == exp
            if a0 != exp:
                mism["ac"].append((text, a0, exp))
            if b0 != exp:
                mism["bc"].append((text, b0, exp))
    if tok_g is None:
        c["ga"] = None
    res["counts"] = c
    res["mism"] = {k: v[:show] for k, v in mism.items()}
    res["mism_total"] = {k: len(v) for k, v in mism.items()}
    res["hello"] = (tok_a.encode("Hello world"), tok_b.encode("Hello world").ids)
    return res


def gguf_route(label, stem, desc, models: Path, outdir: Path, show: int):
    res = {"route": "gguf", "family": label, "desc": desc}
    gguf = models / f"{stem}.gguf"
    if not gguf.exists():
        res["error"] = "vocab file missing"
        return res
    fam_dir = outdir / label
    fam_dir.mkdir(parents=True, exist_ok=True)
    try:
        tok_g = AutoTokenizer.from_pretrained(str(models), gguf_file=gguf.name)
    except Exception as e:  # noqa: BLE001
        res["auto_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        try:
            tok_g = TokenizersBackend.from_pretrained(str(models), gguf_file=gguf.name)
        except Exception as e2:  # noqa: BLE001
            res["error"] = f"GGUF load failed: {res['auto_error']}; TokenizersBackend: {type(e2).__name__}: {str(e2)[:200]}"
            return res
    tok_g.save_pretrained(str(fam_dir))
    try:
        return compare(res, fam_dir, load_cases(models, stem), show, tok_g)
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        res["error"] = f"reload failed: {type(e).__name__}: {str(e)[:300]}"
        return res


def hub_route(name, src, model_type, tok_cfg, shape, model_fields, note, models, outdir, show):
    res = {"route": "hub", "family": name, "desc": note}
    src_dir = outdir / src
    if not (src_dir / "tokenizer.json").exists():
        res["error"] = f"no {src_dir}/tokenizer.json (gguf route failed or skipped)"
        return res
    hub_dir = outdir / f"hub-{name}"
    hub_dir.mkdir(parents=True, exist_ok=True)
    tok = tokenizers.Tokenizer.from_file(str(src_dir / "tokenizer.json"))
    shape(tok)
    j = json.loads(tok.to_str())
    j["model"].update(model_fields)
    if name.endswith("-normtrue"):
        for t in j["added_tokens"]:
            t["normalized"] = True
    (hub_dir / "tokenizer.json").write_text(json.dumps(j, ensure_ascii=False))
    (hub_dir / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=1))
    (hub_dir / "config.json").write_text(json.dumps({"model_type": model_type}))
    stem = dict((f, s) for f, s, _ in FAMILIES)[src]
    try:
        return compare(res, hub_dir, load_cases(models, stem), show)
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        res["error"] = f"AutoTokenizer failed: {type(e).__name__}: {str(e)[:300]}"
        return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="/tmp/tokfam/vocab")
    ap.add_argument("--out", default="/tmp/tokfam")
    ap.add_argument("--extra", action="store_true", help="also every other ggml-vocab-*.gguf with .inp/.out")
    ap.add_argument("--no-hub", action="store_true", help="skip the hub-layout route")
    ap.add_argument("--show", type=int, default=3, help="mismatches shown per kind and row")
    args = ap.parse_args()
    models, outdir = Path(args.models), Path(args.out)
    transformers.logging.set_verbosity_error()

    fams = list(FAMILIES)
    if args.extra:
        known = {stem for _, stem, _ in fams}
        for p in sorted(models.glob("ggml-vocab-*.gguf")):
            if p.stem not in known and p.with_suffix(".gguf.inp").exists():
                fams.append((p.stem.removeprefix("ggml-vocab-"), p.stem, "extra"))

    print(f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, vocab dir {models}")
    results = [gguf_route(label, stem, desc, models, outdir, args.show) for label, stem, desc in fams]
    if not args.no_hub:
        results += [hub_route(*h, models, outdir, args.show) for h in HUB]

    print("\n== summary. (a) AutoTokenizer(DIR)  (b) tokenizers.Tokenizer.from_file(DIR/tokenizer.json)  "
          "(c) llama.cpp .out\n   a/b with add_special_tokens=True, a0/b0 without; g = tokenizer built from the GGUF")
    print(f"{'route':<5} {'family':<16}{'cases':>6}{'a==b':>6}{'a0==b0':>7}{'inp':>5}{'a0==c':>6}{'b0==c':>6}{'g==a':>6}  AutoTokenizer class")
    for r in results:
        if "error" in r:
            print(f"{r['route']:<5} {r['family']:<16}  ERROR: {r['error']}")
            continue
        c = r["counts"]
        ga = "-" if c["ga"] is None else c["ga"]
        print(f"{r['route']:<5} {r['family']:<16}{c['cases']:>6}{c['ab']:>6}{c['a0b0']:>7}{c['inp']:>5}"
              f"{c['ac']:>6}{c['bc']:>6}{ga:>6}  {r['classes']}")
    for r in results:
        if "auto_error" in r:
            print(f"note: {r['family']}: AutoTokenizer(gguf_file=) failed ({r['auto_error']}); "
                  "built with TokenizersBackend.from_pretrained(gguf_file=) instead")

    for r in results:
        if "error" in r:
            continue
        print(f"\n== {r['route']} {r['family']}: {r['desc']}")
        print(f"   tokenizer_config: {r['config']}")
        print(f"   'Hello world': (a) {r['hello'][0]}  (b) {r['hello'][1]}")
        if r["component_diff"]:
            print("   AutoTokenizer's backend differs from tokenizer.json in:")
            for key, s, l in r["component_diff"]:
                print(f"     {key}:\n       file:   {brief(s)}\n       loaded: {brief(l)}")
        for kind, (x, y) in (("ab", ("(a)", "(b)")), ("ac", ("(a0)", "(c)")), ("bc", ("(b0)", "(c)")),
                             ("ga", ("(g)", "(a)"))):
            total = r["mism_total"][kind]
            for text, u, v in r["mism"][kind]:
                t = text if len(text) <= 50 else text[:50] + "..."
                print(f"   {x} != {y} ({total} in all) on {t!r}\n     {x:<5} {short(u)}\n     {y:<5} {short(v)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
