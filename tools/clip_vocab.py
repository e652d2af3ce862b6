"""CLIP's BPE vocabulary, derived from the original bpe_simple_vocab_16e6.txt.gz. Shared by
tools/make_fixtures.py and bench/seed_loop.py; standard library only."""
import gzip
from pathlib import Path

BPE_FILE = Path(__file__).resolve().parent.parent / "assets" / "tokenizers" / "clip" / "bpe_simple_vocab_16e6.txt.gz"


def clip_vocab_and_merges():
    """CLIP's vocab.json/merges.txt as openai/clip-vit-base-patch32 ships them, derived from the
    original bpe_simple_vocab_16e6.txt.gz the same way CLIP's simple_tokenizer does."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_chars = [chr(c) for c in cs]
    lines = gzip.open(BPE_FILE).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(vocab)}, merges
