"""The Python package against the same fixtures and references as the Rust tests.

Run from the repository root after `pip install .`: `python -m pytest python/tests`. The
command-line comparison uses target/debug/clipsteer (built by `cargo test`) or $CLIPSTEER_BIN.
"""

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

import clipsteer

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
LM = str(FIXTURES / "gpt2-tiny")
CLIP = str(FIXTURES / "clip-tiny-gelu")
IMAGES = FIXTURES / "images"
MODES = FIXTURES / "image_modes"


def rel_err(actual, expected):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    return np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-12)


@pytest.fixture(scope="module")
def describer():
    return clipsteer.Describer(LM, CLIP)


@pytest.fixture(scope="module")
def reference():
    return load_file(str(FIXTURES / "reference" / "clip-gelu.safetensors"))


@pytest.fixture(scope="module")
def manifest():
    return json.loads((FIXTURES / "reference" / "manifest.json").read_text())


def cli_bin():
    path = Path(os.environ.get("CLIPSTEER_BIN", ROOT / "target" / "debug" / "clipsteer"))
    if not path.is_file():
        pytest.fail(f"no clipsteer binary at {path}: run `cargo build` first or set CLIPSTEER_BIN")
    return str(path)


# --- embeddings equal transformers -------------------------------------------------------------


def test_embed_text_equals_transformers(describer, reference, manifest):
    texts = manifest["clip_texts"]
    features = describer.embed_text(texts)
    assert features.dtype == np.float32
    assert features.shape == (len(texts), reference["text_0_features"].shape[0])
    for i in range(len(texts)):
        err = rel_err(features[i], reference[f"text_{i}_features"])
        assert err <= 1e-4, (texts[i], err)


def test_embed_text_of_one_string_is_one_row(describer):
    assert describer.embed_text("a photo of a cat").shape[0] == 1


def test_embed_image_equals_transformers(describer, reference, manifest):
    for name in manifest["images"]:
        stem = Path(name).stem
        features = describer.embed_image(IMAGES / name)
        assert features.shape == (1, reference[f"image_{stem}_features"].shape[0])
        expected = reference[f"image_{stem}_features"]
        if name.endswith(".jpg"):
            # docs/IMAGES.md's one exception: JPEG decodes within 4 levels of libjpeg's (zune-jpeg).
            cos = features[0] @ expected / np.linalg.norm(features[0]) / np.linalg.norm(expected)
            assert cos >= 0.999, (name, cos)
        else:
            err = rel_err(features[0], expected)
            assert err <= 1e-4, (name, err)


# --- images as Python users hold them ----------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    # Not a JPEG: Pillow's libjpeg pixels differ from the command line's decoder (docs/IMAGES.md).
    ["rgba_50x50.png", "palette_50x45.png", "grey_40x33.png", "odd_47x61.png", "wide_90x40.png"],
)
def test_a_pil_image_embeds_as_its_file(describer, name):
    path = IMAGES / name
    with Image.open(path) as image:
        image.load()
        from_pil = describer.embed_image(image)
    np.testing.assert_array_equal(from_pil, describer.embed_image(path))


def test_pil_images_of_every_mode_embed_as_their_files(describer):
    """Every fixture mode without an EXIF orientation (a PIL image carries its pixels as
    stored; the command line turns a file upright first)."""
    checked = []
    for path in sorted(MODES.glob("*.png")):
        with Image.open(path) as image:
            if image.getexif().get(0x0112, 1) != 1 or getattr(image, "is_animated", False):
                continue
            # A 16-bit colour PNG: Pillow keeps only the high bytes in memory, where the
            # command line rounds v/257 (docs/IMAGES.md's exception), so the pixels differ
            # before us.
            if path.read_bytes()[24] == 16 and image.mode != "I;16":
                continue
            image.load()
            from_pil = describer.embed_image(image)
        np.testing.assert_array_equal(from_pil, describer.embed_image(path), err_msg=path.name)
        checked.append(image.mode)
    assert {"RGBA", "P", "L", "LA", "1", "I;16"} <= set(checked), checked


def test_cmyk_pil_image_is_converted_as_transformers_does(describer):
    with Image.open(IMAGES / "photo_80x53.jpg") as image:
        cmyk = image.convert("CMYK")
    rgb = cmyk.convert("RGB")
    np.testing.assert_array_equal(describer.embed_image(cmyk), describer.embed_image(rgb))


def test_numpy_arrays_embed_as_the_same_pixels(describer):
    with Image.open(IMAGES / "rgba_50x50.png") as image:
        rgba = image.convert("RGBA")
    expected = describer.embed_image(rgba)
    np.testing.assert_array_equal(describer.embed_image(np.asarray(rgba)), expected)
    rgb = rgba.convert("RGB")
    np.testing.assert_array_equal(describer.embed_image(np.asarray(rgb)), describer.embed_image(rgb))
    grey = rgb.convert("L")
    array = np.asarray(grey)
    np.testing.assert_array_equal(describer.embed_image(array), describer.embed_image(grey))
    np.testing.assert_array_equal(describer.embed_image(array[:, :, None]), describer.embed_image(grey))


def test_options_as_python_users_give_them(describer):
    image = IMAGES / "photo_80x53.jpg"
    as_list = describer.describe(image, max_tokens=4, block=["the", "in"])
    # A string is comma-separated, as --block is on the command line.
    assert describer.describe(image, max_tokens=4, block="the,in")["token_ids"] == as_list["token_ids"]
    with pytest.raises(ValueError, match="blocked word 'image'"):
        describer.describe(image, block="cat,image")
    # numpy scalars, as notebooks hold them.
    assert describer.describe(image, max_tokens=np.int64(4), block=["the", "in"])["token_ids"] == as_list["token_ids"]
    assert describer.embed_text([]).shape == (0, describer.embed_text("x").shape[1])
    assert "clip-tiny-gelu" in repr(describer)


def test_show_outside_jupyter_says_so(describer):
    with pytest.raises(RuntimeError, match="Jupyter"):
        describer.show(IMAGES / "photo_80x53.jpg", max_tokens=2)


def test_bad_numpy_arrays_are_value_errors(describer):
    with pytest.raises(ValueError, match="uint8"):
        describer.embed_image(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="HWC"):
        describer.embed_image(np.zeros((3, 8, 8), dtype=np.uint8))


# --- describe equals the command line ----------------------------------------------------------


def cli_done(*args):
    out = subprocess.run(
        [cli_bin(), "--device", "cpu", "describe", "--lm", LM, "--encoder", CLIP, "--json", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    events = [json.loads(line) for line in out.splitlines()]
    assert events[-1]["event"] == "done"
    return events


@pytest.mark.parametrize(
    "options,flags",
    [
        ({"max_tokens": 8}, ["--max-tokens", "8"]),
        (
            {"strategy": "beam", "max_tokens": 6, "beam_width": 3, "block": ["the", "a"]},
            ["--strategy", "beam", "--max-tokens", "6", "--beam-width", "3", "--block", "the,a"],
        ),
        (
            {"max_tokens": 5, "sample": True, "temperature": 0.5, "seed": 7},
            ["--max-tokens", "5", "--sample", "--temperature", "0.5", "--seed", "7"],
        ),
    ],
)
def test_describe_equals_the_cli_token_for_token(describer, options, flags):
    image = IMAGES / "photo_80x53.jpg"
    cli = cli_done(str(image), *flags)
    events = list(describer.stream(image, **options))
    done = events[-1]
    assert done["token_ids"] == cli[-1]["token_ids"]
    assert done["text"] == cli[-1]["text"]
    assert done["similarity"] == pytest.approx(cli[-1]["similarity"], abs=0)
    assert done["settings"] == cli[-1]["settings"]
    assert [e["token_id"] for e in events[:-1]] == [e["token_id"] for e in cli[:-1]]
    assert describer.describe(image, **options)["token_ids"] == done["token_ids"]


def test_describe_a_text_target_and_a_pil_image_like_the_cli(describer):
    cli = cli_done("--target-text", "a red bicycle", "--max-tokens", "6")
    assert describer.describe(target_text="a red bicycle", max_tokens=6)["token_ids"] == cli[-1]["token_ids"]
    path = IMAGES / "rgba_50x50.png"
    with Image.open(path) as image:
        image.load()
        assert describer.describe(image, max_tokens=6)["token_ids"] == cli_done(str(path), "--max-tokens", "6")[-1]["token_ids"]


def test_score_equals_the_cli(describer):
    image = IMAGES / "photo_80x53.jpg"
    out = subprocess.run(
        [cli_bin(), "--device", "cpu", "score", "--clip", CLIP, str(image), "a dog", "a cat", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cli = json.loads(out)["scores"]
    ours = describer.score(image, ["a dog", "a cat"])
    assert [s["clipscore"] for s in ours] == pytest.approx([s["clipscore"] for s in cli], rel=1e-6)


def test_score_with_siglip_is_its_probability_as_the_cli():
    siglip = str(FIXTURES / "siglip-tiny")
    image = IMAGES / "odd_47x61.png"
    out = subprocess.run(
        [cli_bin(), "--device", "cpu", "score", "--encoder", siglip, str(image), "a photo of a cat", "a", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cli = json.loads(out)["scores"]
    ours = clipsteer.Describer(lm=LM, encoder=siglip).score(image, ["a photo of a cat", "a"])
    # transformers' sigmoid(logits_per_image), tests/fixtures/siglip-tiny/reference.safetensors.
    want = load_file(str(FIXTURES / "siglip-tiny" / "reference.safetensors"))["probs"][0][[2, 1]]
    assert [s["probability"] for s in ours] == pytest.approx(list(want), rel=1e-5)
    assert [s["probability"] for s in ours] == pytest.approx([s["probability"] for s in cli], rel=1e-6)
    assert "clipscore" not in ours[0]


# --- errors ------------------------------------------------------------------------------------


def test_errors_are_the_python_exceptions_users_expect(describer, tmp_path):
    image = IMAGES / "photo_80x53.jpg"
    with pytest.raises(ValueError, match="unknown field `max_token`"):
        describer.describe(image, max_token=3)
    with pytest.raises(ValueError, match="strategy 'greedy' is not one of: seed, magic, beam"):
        describer.describe(image, strategy="greedy")
    with pytest.raises(ValueError, match="top_k must be between 1"):
        describer.describe(image, top_k=0)
    with pytest.raises(ValueError, match="option max_tokens: invalid type: string \"many\""):
        describer.describe(image, max_tokens="many")
    with pytest.raises(ValueError, match="option temperature: must be a finite number"):
        describer.describe(image, sample=True, temperature=float("nan"))
    # A switch is named as a caller turns it on.
    with pytest.raises(ValueError, match=r"drop them or add sample=True$"):
        describer.describe(image, temperature=0.5)
    with pytest.raises(ValueError, match="no target: give an image or target_text"):
        describer.describe(max_tokens=3)
    with pytest.raises(ValueError, match="is a directory"):
        describer.describe(IMAGES)
    with pytest.raises(ValueError, match="blocked word 'image'"):
        describer.describe(image, block="image")
    with pytest.raises(FileNotFoundError, match="no image at"):
        describer.describe(tmp_path / "missing.png")
    with pytest.raises(FileNotFoundError):
        describer.describe(image, blocklist=tmp_path / "missing.txt")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="not an image clipsteer can read"):
        describer.describe(bad)
    with pytest.raises(ValueError, match="image must be a path"):
        describer.describe(12)
    with pytest.raises(FileNotFoundError, match="no language model at"):
        clipsteer.Describer(str(tmp_path / "nope"), CLIP)
    with pytest.raises(ValueError, match="device 'gpu' is not one of"):
        clipsteer.Describer(LM, CLIP, device="gpu")
    with pytest.raises(RuntimeError, match="scorer command"):
        describer.describe(scorer_cmd="exit 3", max_tokens=3)
    with pytest.raises(ValueError, match="text only"):
        clipsteer.Describer(LM, str(FIXTURES / "minilm-tiny")).embed_image(image)


# --- threads, abandoned streams, Ctrl-C --------------------------------------------------------

# A scorer program that takes `delay` seconds per batch and appends a line to `log` for each.
SLOW_SCORER = textwrap.dedent(
    """
    import json, sys, time
    delay, log = float(sys.argv[1]), sys.argv[2]
    for line in sys.stdin:
        n = len(json.loads(line)["items"])
        with open(log, "a") as f:
            f.write("batch\\n")
        time.sleep(delay)
        print(json.dumps({"scores": [float(i % 7) for i in range(n)]}), flush=True)
    """
)


def slow_scorer(tmp_path, delay):
    script = tmp_path / "slow_scorer.py"
    script.write_text(SLOW_SCORER)
    log = tmp_path / "batches.log"
    return f"{sys.executable} {script} {delay} {log}", log


def batches(log):
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_an_abandoned_stream_stops_its_work(describer, tmp_path):
    command, log = slow_scorer(tmp_path, 0.1)
    stream = describer.stream(scorer_cmd=command, max_tokens=50, prompt="Once upon a time")
    assert next(stream)["event"] == "step"
    del stream
    gc.collect()
    time.sleep(0.5)
    settled = batches(log)
    time.sleep(1.0)
    assert batches(log) == settled, "the worker went on after its stream was dropped"
    assert settled < 20


def test_closing_a_stream_stops_its_work(describer, tmp_path):
    command, log = slow_scorer(tmp_path, 0.1)
    stream = describer.stream(scorer_cmd=command, max_tokens=50, prompt="Once upon a time")
    next(stream)
    stream.close()
    settled = batches(log)
    time.sleep(1.0)
    assert batches(log) == settled


def test_another_thread_runs_while_one_describes(describer, tmp_path):
    command, _ = slow_scorer(tmp_path, 0.1)
    ticks = []
    stop = threading.Event()

    def count():
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.01)

    worker = threading.Thread(target=count)
    started = time.monotonic()
    worker.start()
    describer.describe(scorer_cmd=command, max_tokens=10, prompt="Once upon a time")
    ended = time.monotonic()
    stop.set()
    worker.join()
    assert ended - started > 0.9
    during = [t for t in ticks if started < t < ended]
    # A thread held off by the GIL would get no turn until describe returned.
    assert len(during) > 0.5 * (ended - started) / 0.01, (len(during), ended - started)


def test_ctrl_c_interrupts_a_describe(tmp_path):
    command, log = slow_scorer(tmp_path, 0.2)
    script = tmp_path / "interrupted.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time, clipsteer
            describer = clipsteer.Describer({LM!r}, {CLIP!r})
            print("ready", flush=True)
            started = time.monotonic()
            try:
                describer.describe(scorer_cmd={command!r}, max_tokens=55, prompt="Once upon a time")
            except KeyboardInterrupt:
                print(f"interrupted after {{time.monotonic() - started:.1f}} s", flush=True)
                sys.exit(0)
            print("finished", flush=True)
            sys.exit(1)
            """
        )
    )
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    time.sleep(1.0)
    child.send_signal(signal.SIGINT)
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 0, out
    assert out.startswith("interrupted after"), out
    assert float(out.split()[2]) < 5, out  # the run itself would take 11 s
    settled = batches(log)
    time.sleep(0.5)
    assert batches(log) == settled


# --- attack with a Python objective ------------------------------------------------------------

LLAMA = str(FIXTURES / "llama-tiny.gguf")
# The tiny llama fixture carries no chat template; ChatML, as SmolLM2's.
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def attacker(tmp_path_factory):
    template = tmp_path_factory.mktemp("template") / "chatml.jinja"
    template.write_text(CHATML)
    return clipsteer.Attacker(LLAMA, chat_template=template)


def test_attack_with_a_python_callable(attacker):
    seen = []

    def objective(answers):
        seen.append(list(answers))
        return [float(len(a)) for a in answers]

    events = list(attacker.stream("Say something.", objective=objective, max_tokens=3, beam_width=2, candidates=3))
    done = events[-1]
    assert done["event"] == "done"
    assert done["prompt"].startswith("Say something.")
    assert seen and all(isinstance(a, str) for batch in seen for a in batch)
    assert [e["event"] for e in events[:-1]] == ["step"] * (len(events) - 1)


def test_an_objective_that_raises_raises_itself(attacker):

    class Judged(Exception):
        pass

    def objective(answers):
        raise Judged("no judge today")

    with pytest.raises(Judged, match="no judge today"):
        attacker.attack("Say something.", objective=objective, max_tokens=2)
    with pytest.raises(RuntimeError, match="returned 1 scores for"):
        attacker.attack("Say something.", objective=lambda answers: [1.0], max_tokens=2, candidates=3)
    with pytest.raises(RuntimeError, match="finite number"):
        attacker.attack("Say something.", objective=lambda a: [float("nan")] * len(a), max_tokens=2)
    with pytest.raises(ValueError, match="exactly one objective"):
        attacker.attack("Say something.")
    with pytest.raises(ValueError, match="blocked word"):
        attacker.attack("Say something.", target_response="Sure", block="something")
    # Bad options are the caller's error, raised before the attack starts.
    with pytest.raises(ValueError, match="beam_width must be at least 1"):
        attacker.attack("Say something.", target_response="Sure", beam_width=0)
    with pytest.raises(ValueError, match="top_p must be in"):
        attacker.attack("Say something.", target_response="Sure", top_p=1.5, seed=1)


def test_attack_toward_a_text_through_an_encoder(attacker):
    done = attacker.attack(
        "Say something.", target_text="Sure, here it is", encoder=str(FIXTURES / "minilm-tiny"), max_tokens=2
    )
    assert done["prompt"].startswith("Say something.") and done["target_nll"] > 0


def test_attack_toward_a_target_response_reports_nll(attacker):
    done = attacker.attack("Say something.", target_response="Sure, here", max_tokens=2)
    assert done["baseline_nll"] > 0 and done["target_nll"] > 0
    assert done["prompt"].startswith("Say something.")


# --- generate ------------------------------------------------------------------------------------


def test_generate_returns_the_cli_image(tmp_path):
    sd = str(FIXTURES / "sd-tiny")
    image = clipsteer.generate("a red bicycle", model=sd, steps=2, size=64, seed=3)
    assert image.mode == "RGB" and image.size == (64, 64)
    out = tmp_path / "cli.png"
    subprocess.run(
        [cli_bin(), "--device", "cpu", "generate", "a red bicycle", "--model", sd, "--steps", "2",
         "--size", "64", "--seed", "3", "-o", str(out)],
        check=True,
        capture_output=True,
    )
    with Image.open(out) as cli:
        np.testing.assert_array_equal(np.asarray(image), np.asarray(cli.convert("RGB")))
    with pytest.raises(ValueError, match="multiple of 8"):
        clipsteer.generate("x", model=sd, size=30)
    with pytest.raises(ValueError, match="over the limit of 1024"):
        clipsteer.generate("x", model=sd, size=10**6)
    with pytest.raises(ValueError, match="non-negative integer"):
        clipsteer.generate("x", model=sd, seed=-1)


def test_import_pins_the_thread_count_once_and_keeps_the_users():
    """As the command line does at start (clipsteer::tune_runtime): candle's thread count is
    computed once at import instead of at every matmul, and a value the user set stays."""
    script = (
        "import os, clipsteer; "
        "print(os.environ['RAYON_NUM_THREADS'], os.environ['CANDLE_BARRIER_POOL_SPIN_LIMIT'], "
        "clipsteer._clipsteer._default_thread_count())"
    )
    pinned = ("RAYON_NUM_THREADS", "CANDLE_BARRIER_POOL_SPIN_LIMIT")
    env = {k: v for k, v in os.environ.items() if k not in pinned}
    threads, spin, counted = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert int(threads) >= 1
    assert threads == counted
    assert spin == "200"
    env.update(RAYON_NUM_THREADS="3", CANDLE_BARRIER_POOL_SPIN_LIMIT="7")
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["3", "7", "3"]
