"""Reference renderings of llama.cpp's real chat templates by Hugging Face transformers
(apply_chat_template, jinja2), so a Rust test can check our minijinja renderer against them.
Writes tests/fixtures/reference/chat-templates-llama-cpp.json.

The templates are tests/fixtures/chat-templates/llama.cpp/*.jinja, copied verbatim from
llama.cpp's models/templates (see SOURCE.md there). Each one is rendered through a
PreTrainedTokenizerFast around tests/fixtures/tokenizers/tiny-bpe-tokenizer.json with the special
tokens bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>" (the same for every
template, whatever its model uses): apply_chat_template(messages, chat_template=..., tokenize=False,
add_generation_prompt=...), nothing else (no tools, no extra keyword arguments), over:
  a. [user]                        add_generation_prompt=True
  b. [system, user]                add_generation_prompt=True
  c. [user, assistant, user]       add_generation_prompt=True
  d. case a                        add_generation_prompt=False
Each case records "text" (the rendering) or "error" (str() of the exception transformers raises:
raise_exception in the template, a jinja2 syntax error when the template does not compile, an
undefined value, ...).

Templates that print today's date: transformers' strftime_now (chat_template_utils) calls
datetime.now() through that module's global `datetime`, which is patched here. Every case is
rendered twice, with the clock at 2024-07-26 12:00:00 and at 2025-03-09 12:00:00: "text" is the
first; where the two differ, "text_other_date" is the second, and the Rust test compares only
outside the span where they differ.

Run: /work/venv/bin/python tools/make_llama_cpp_template_references.py
"""
import json
from datetime import datetime
from pathlib import Path

import jinja2
import transformers
import transformers.utils.chat_template_utils as chat_template_utils
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "tests" / "fixtures" / "chat-templates" / "llama.cpp"
OUT = ROOT / "tests" / "fixtures" / "reference" / "chat-templates-llama-cpp.json"
TOKENIZER = ROOT / "tests" / "fixtures" / "tokenizers" / "tiny-bpe-tokenizer.json"

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
DATES = (datetime(2024, 7, 26, 12, 0, 0), datetime(2025, 3, 9, 12, 0, 0))

# (messages as (role, content), add_generation_prompt)
CASES = [
    ([("user", "Write one sentence describing a scene.")], True),
    ([("system", "You are a careful describer."), ("user", "Describe the image.")], True),
    ([("user", "Hi"), ("assistant", "Hello! How can I help?"), ("user", "Describe a cat.")], True),
    ([("user", "Write one sentence describing a scene.")], False),
]


def fixed_clock(moment):
    """A datetime class whose now() is `moment` (strftime_now reads datetime.now())."""

    class FixedDatetime(datetime):
        @classmethod
        def now(cls, tz=None):
            return moment if tz is None else moment.replace(tzinfo=tz)

        @classmethod
        def today(cls):
            return moment

    return FixedDatetime


def render(tok, template, messages, add, moment):
    saved = chat_template_utils.datetime
    chat_template_utils.datetime = fixed_clock(moment)
    try:
        return {
            "text": tok.apply_chat_template(
                messages, chat_template=template, tokenize=False, add_generation_prompt=add
            )
        }
    except Exception as e:  # raise_exception, syntax errors, undefined values: all recorded
        return {"error": str(e)}
    finally:
        chat_template_utils.datetime = saved


def main():
    assert callable(getattr(chat_template_utils, "datetime", None)), "strftime_now moved"
    tok = PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER), **SPECIAL_TOKENS)
    files = sorted(TEMPLATES.glob("*.jinja"), key=lambda p: p.name)
    templates = []
    for path in files:
        template = path.read_text(encoding="utf-8")
        cases = []
        for turns, add in CASES:
            messages = [{"role": role, "content": content} for role, content in turns]
            first = render(tok, template, messages, add, DATES[0])
            other = render(tok, template, messages, add, DATES[1])
            case = {"messages": messages, "add_generation_prompt": add}
            case.update(first)
            if "text" in first and "text" in other:
                if other["text"] != first["text"]:
                    case["text_other_date"] = other["text"]
            elif first != other:
                raise SystemExit(f"{path.name}: one date renders, the other raises: {first} {other}")
            cases.append(case)
        templates.append({"file": path.name, "cases": cases})

    OUT.write_text(json.dumps({
        "generator": "tools/make_llama_cpp_template_references.py",
        "transformers": transformers.__version__,
        "jinja2": jinja2.__version__,
        "special_tokens": SPECIAL_TOKENS,
        "dates": [d.isoformat() for d in DATES],
        "templates": templates,
    }, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    n = sum(len(t["cases"]) for t in templates)
    errors = [(t["file"], c["error"]) for t in templates for c in t["cases"] if "error" in c]
    dated = [t["file"] for t in templates if any("text_other_date" in c for c in t["cases"])]
    print(f"wrote {OUT.relative_to(ROOT)}: {len(templates)} templates, {n} cases, "
          f"{len(errors)} errors, {len(dated)} dated")
    for name, message in errors:
        print(f"  error  {name}: {message[:160]!r}")
    for name in dated:
        print(f"  dated  {name}")


if __name__ == "__main__":
    main()
