"""clipsteer: steer a language model's sampling toward a target, from Python.

The same Rust core as the ``clipsteer`` command line: describe an image (GPT-2 proposes the next
tokens, CLIP scores each "text so far + candidate" against the image), paraphrase a text target
without blocked words, attack a language model toward any score, and generate images with
Stable Diffusion.

Options take the command line's flag names with underscores (``--max-tokens`` is
``max_tokens``) and its defaults. Models are local paths or Hugging Face hub ids
(``ID@REVISION`` for a branch, tag or commit), cached where ``huggingface_hub`` caches them
(``HF_HOME``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and ``HF_TOKEN`` are honoured).

Errors are exceptions carrying the command line's one-line message: ``ValueError`` for a bad
argument (an unknown option, a wrong value, an unreadable image), ``FileNotFoundError`` for a
missing file or hub repository, ``PermissionError`` for a gated hub model, ``ConnectionError``
offline when the cache lacks a model, ``RuntimeError`` for the rest. Long computations release the GIL, Ctrl-C interrupts
them, and nothing is printed.

>>> import clipsteer
>>> describer = clipsteer.Describer()                    # GPT-2 + CLIP ViT-B/32
>>> describer.describe("cat.jpg")["text"]
'An image of a cat ...'
"""

from __future__ import annotations

import functools
import io
import json
import os
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from . import _clipsteer

# What the command line's start-up does for CPU throughput (clipsteer::tune_runtime), short of its
# malloc thresholds, which belong to the host process: candle's elementwise pool spins briefly
# before it parks, and its thread count is computed once here instead of at every matmul (where,
# unset, it parses /proc/cpuinfo each time). A value the user set is kept.
os.environ.setdefault("CANDLE_BARRIER_POOL_SPIN_LIMIT", "200")
if "RAYON_NUM_THREADS" not in os.environ:
    os.environ["RAYON_NUM_THREADS"] = str(_clipsteer._default_thread_count())

__all__ = [
    "Describer",
    "Attacker",
    "generate",
    "DEFAULT_LM",
    "DEFAULT_CLIP",
    "DEFAULT_DIFFUSION_MODEL",
    "__version__",
]

__version__: str = _clipsteer.__version__
DEFAULT_LM: str = _clipsteer.DEFAULT_LM
"""The language model used when none is named (GPT-2 124M)."""
DEFAULT_CLIP: str = _clipsteer.DEFAULT_CLIP
"""The encoder used when none is named (OpenAI CLIP ViT-B/32)."""
DEFAULT_DIFFUSION_MODEL: str = _clipsteer.DEFAULT_DIFFUSION_MODEL
"""The Stable Diffusion model used when none is named."""

PathLike = Union[str, "os.PathLike[str]"]
ImageLike = Union[PathLike, "PIL.Image.Image", np.ndarray]  # noqa: F821 (PIL imported lazily)
"""A path to an image file, a ``PIL.Image.Image`` of any mode, or a ``numpy`` uint8 array of
shape (H, W), (H, W, 1), (H, W, 2), (H, W, 3) or (H, W, 4) (grey, grey + alpha, RGB, RGBA)."""

# Modes a PNG stores as they are: such an image reaches the core as the PNG file it would be on
# disk, so its pixels are read exactly as the command line reads that file (transparency
# composited onto white, palettes expanded, 16-bit samples scaled).
_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I;16"})


def _image_bytes(image: ImageLike) -> Union[str, bytes]:
    """A path as text, or the bytes of a PNG holding the image's pixels."""
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = _from_array(image)
    if not isinstance(image, Image.Image):
        raise ValueError(
            "image must be a path, a PIL.Image.Image, or a numpy uint8 array (H, W[, C]); "
            f"got {type(image).__name__}"
        )
    if image.mode not in _PNG_MODES:
        image = _convert_to_rgb(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _from_array(array: np.ndarray) -> "PIL.Image.Image":  # noqa: F821
    from PIL import Image

    if array.dtype != np.uint8:
        raise ValueError(
            f"a numpy image must be uint8 (0-255), got {array.dtype}; "
            "scale it and use array.astype(np.uint8)"
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    modes = {2: "L", 3: {2: "LA", 3: "RGB", 4: "RGBA"}}
    mode = modes.get(array.ndim)
    if isinstance(mode, dict):
        mode = mode.get(array.shape[2])
    if mode is None or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(
            "a numpy image must have shape (H, W) or (H, W, C) with C in 1, 2, 3, 4 (HWC, not "
            f"CHW); got {array.shape}"
        )
    return Image.fromarray(np.ascontiguousarray(array), mode=mode)


def _convert_to_rgb(image: "PIL.Image.Image") -> "PIL.Image.Image":  # noqa: F821
    """transformers' ``convert_to_rgb`` (what CLIPImageProcessor does to every image): onto
    opaque white through RGBA. Used for the modes a PNG cannot hold (CMYK, YCbCr, LAB, HSV, I,
    F, ...)."""
    from PIL import Image

    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


# Options that take several values; one value may be given alone. `block` is comma-separated as
# on the command line ("cat,dog" blocks both).
_DESCRIBE_LISTS = ("target_text", "avoid_text", "target_weight", "block")
_ATTACK_LISTS = ("block",)


def _plain(name: str, value: Any) -> Any:
    """A value as JSON takes it: numpy scalars and arrays as Python numbers and lists, paths as
    text; a non-finite float is an error that names the option."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float) and not np.isfinite(value):
        raise ValueError(f"option {name}: must be a finite number, got {value}")
    if isinstance(value, (list, tuple)):
        return [_plain(name, v) for v in value]
    return value


def _options_json(options: Dict[str, Any], lists: Sequence[str]) -> str:
    """Keyword arguments as the JSON object the core parses (unknown names are its errors)."""
    out: Dict[str, Any] = {}
    for name, value in options.items():
        if value is None:
            continue
        if name in lists and isinstance(value, (str, int, float, np.generic)):
            value = [value]
        out[name] = _plain(name, value)
    try:
        return json.dumps(out, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"bad option: {error}") from None


def _events(run: Any) -> Iterator[Dict[str, Any]]:
    try:
        for text in run:
            yield json.loads(text)
    finally:
        run.close()


class Describer:
    """A language model and an encoder, loaded once, that describe images and text targets.

    Args:
        lm: The language model: a directory in the Hugging Face layout or a hub id (GPT-2,
            llama, mistral, qwen2, qwen3, gemma2, gemma3, phi3), or a llama or Gemma 3
            ``.gguf`` file. Default: :data:`DEFAULT_LM`.
        encoder: The scorer: a CLIP or SigLIP model, or a sentence-transformers BERT for text targets
            only (a directory or a hub id). Default: the preset's, else :data:`DEFAULT_CLIP`.
        device: ``"cpu"``, ``"cuda"`` (a CUDA build with a GPU), or ``"auto"``.
        preset: ``"seed"``: the original demo (CLIP ViT-H/14 with top-k 2500).
        gguf_file: A ``.gguf`` file of the ``lm`` hub repository to load, as transformers'
            ``gguf_file=``.

    Raises:
        FileNotFoundError: a local model path does not exist, or the hub has no such repository,
            revision or file (as transformers, an ``OSError``).
        PermissionError: a gated model whose licence the token's account has not accepted, or a
            private one it cannot read.
        ConnectionError: offline (``HF_HUB_OFFLINE``, or the hub unreachable) and the model is
            not in the cache.
        ValueError: an unknown device or preset.
        RuntimeError: a model is there but cannot be loaded (a broken or unsupported checkpoint).
    """

    def __init__(
        self,
        lm: Optional[PathLike] = None,
        encoder: Optional[PathLike] = None,
        device: str = "cpu",
        *,
        preset: Optional[str] = None,
        gguf_file: Optional[str] = None,
    ) -> None:
        self.lm = os.fspath(lm) if lm is not None else DEFAULT_LM
        self._models = _clipsteer.Models(
            self.lm, os.fspath(encoder) if encoder is not None else None, device, preset,
            gguf_file,
        )
        self.encoder: str = self._models.encoder
        """The encoder loaded (the preset's or the default when none was named)."""
        self.device = device

    def stream(self, image: Optional[ImageLike] = None, **options: Any) -> Iterator[Dict[str, Any]]:
        """Describes ``image`` step by step: a generator of ``step`` dicts, then the ``done``
        dict (the JSON events of ``clipsteer describe --json``).

        ``image`` may be left out when ``target_text`` gives the target. ``options`` are
        describe's: ``prompt`` (an LM with a chat template: ``instruction`` rendered through it;
        else ``"An image of "``), ``instruction`` (``"Write one sentence describing a scene."``),
        ``strategy`` (``"seed"``, ``"magic"``,
        ``"beam"``), ``top_k``, ``max_tokens`` (25), ``target_text``, ``avoid_text``,
        ``target_weight``, ``block`` (words never to write), ``blocklist`` (a file),
        ``block_substrings``, ``beam_width``, ``beam_fluency``, ``beam_diversity``,
        ``beam_lookahead``, ``beam_close_within``, ``magic_alpha``,
        ``magic_beta``, ``magic_scale``, ``no_sentence_stop``, ``score_text``, ``sample``,
        ``temperature``, ``seed``, ``prefilter``, ``scorer_cmd``, ``scorer_timeout``.

        Arguments are checked before the generator is returned. Closing the generator, or
        dropping it, stops the work at its next step.

        A ``step`` dict: ``step``, ``token_id``, ``token``, ``text`` (prompt included),
        ``similarity`` (cosine, float), ``top`` (up to 5 ``{"token", "similarity"}``, best
        first). The ``done`` dict: ``text``, ``token_ids``, ``similarity``, ``nll`` (mean
        negative log-likelihood per generated token, nats), ``seconds``, ``models``,
        ``settings``, and ``stop_reason`` when every candidate of a step was blocked (a run that
        ends at a sentence's end, or at ``max_tokens``, has none).
        """
        image_arg = _image_bytes(image) if image is not None else None
        return _events(self._models.describe(image_arg, _options_json(options, _DESCRIBE_LISTS)))

    def describe(self, image: Optional[ImageLike] = None, **options: Any) -> Dict[str, Any]:
        """Describes ``image``: the ``done`` dict of :meth:`stream` (same options)."""
        done: Dict[str, Any] = {}
        for event in self.stream(image, **options):
            done = event
        return done

    def show(self, image: Optional[ImageLike] = None, **options: Any) -> Dict[str, Any]:
        """In Jupyter: shows the image and the description growing live, with each step's
        top candidates; returns the ``done`` dict. Same options as :meth:`stream`."""
        from ._notebook import show

        return show(self, image, options)

    def embed_text(self, texts: Union[str, Sequence[str]]) -> np.ndarray:
        """Text features: float32 array of shape (n, d), unnormalised, as transformers'
        ``CLIPModel.get_text_features`` (or the sentence encoder's pooled output)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("embed_text takes a string or a list of strings")
        if not texts:
            _, dim = self._models.embed_text([""])
            return np.zeros((0, dim), dtype=np.float32)
        data, dim = self._models.embed_text(texts)
        return np.frombuffer(data, dtype="<f4").reshape(len(texts), dim).astype(np.float32)

    def embed_image(self, images: Union[ImageLike, Sequence[ImageLike]]) -> np.ndarray:
        """Image features: float32 array of shape (n, d), unnormalised, as transformers'
        ``CLIPModel.get_image_features`` on ``CLIPImageProcessor``'s pixels. ``images``: one
        image or a list of them. Raises ``ValueError`` for a text-only encoder."""
        if isinstance(images, (list, tuple)):
            items = list(images)
        else:
            items = [images]
        rows = [
            np.frombuffer(self._models.embed_image(_image_bytes(i)), dtype="<f4") for i in items
        ]
        if not rows:
            raise ValueError("embed_image needs at least one image")
        return np.stack(rows).astype(np.float32)

    def score(
        self,
        image: ImageLike,
        captions: Union[str, Sequence[str]],
        *,
        prefix: Optional[str] = None,
        torchmetrics: bool = False,
    ) -> List[Dict[str, Any]]:
        """CLIPScore of each caption for ``image``, as ``clipsteer score``: a list of
        ``{"caption", "clipscore", "cosine"}``. Default: Hessel et al. (2021), 2.5 · max(cos, 0)
        with ``"A photo depicts "`` before each caption (``prefix=""`` for the bare caption);
        ``torchmetrics=True``: 100 · max(cos, 0) on the bare caption."""
        if isinstance(captions, str):
            captions = [captions]
        scores = self._models.score(_image_bytes(image), list(captions), prefix, torchmetrics)
        return json.loads(scores)

    def __repr__(self) -> str:
        return f"Describer(lm={self.lm!r}, encoder={self.encoder!r}, device={self.device!r})"


class Attacker:
    """An attacker LM and a victim LM, loaded once, for BEAST-style attacks: the attacker
    writes a suffix after an instruction, token by token, toward an objective on the victim's
    answer (``clipsteer attack``; docs/ATTACK.md).

    Args:
        lm: The attacker: a llama-family or Gemma 3 ``.gguf`` file, or a GPT-2 directory or
            hub id.
        victim: The victim; default: the attacker (as in BEAST).
        chat_template: A file overriding the victim's chat template (a tokenizer_config.json,
            a ``.gguf``, or a Jinja file).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
    """

    def __init__(
        self,
        lm: PathLike,
        victim: Optional[PathLike] = None,
        *,
        chat_template: Optional[PathLike] = None,
        device: str = "cpu",
    ) -> None:
        self.lm = os.fspath(lm)
        self.victim = os.fspath(victim) if victim is not None else self.lm
        self.device = device
        template = os.fspath(chat_template) if chat_template is not None else None
        self._models = _clipsteer.AttackerModels(
            self.lm, os.fspath(victim) if victim is not None else None, template, device
        )

    def stream(
        self,
        instruction: str,
        *,
        objective: Optional[Callable[[List[str]], Sequence[float]]] = None,
        **options: Any,
    ) -> Iterator[Dict[str, Any]]:
        """Attacks step by step: a generator of ``step`` dicts, then the ``done`` dict (the
        JSON events of ``clipsteer attack --json``).

        Give exactly one objective: ``target_response`` (the victim's mean log-probability of
        this answer), ``target_text`` with ``encoder`` (the cosine of the victim's greedy
        answer with it), ``scorer_cmd`` (a program), or ``objective``: a callable that takes
        the victim's greedy answers (``list[str]``, ``response_tokens`` tokens each) and
        returns one finite score per answer, higher is better. With a callable or a program,
        ``success_score`` ends the attack once reached. An exception from the callable ends
        the attack and is raised as itself.

        Other options: ``block``, ``blocklist``, ``block_substrings``, ``beam_width``,
        ``candidates``, ``max_tokens``, ``proposal`` (``"sample"`` or ``"top-k"``),
        ``top_p``, ``temperature``, ``seed``, ``readability``, ``response_tokens``,
        ``time_limit`` (seconds; 180 by default: the budget, as on the command line, with
        ``max_tokens``, 256, only an upper bound), ``scorer_timeout``.

        The ``done`` dict: ``prompt`` (the instruction verbatim, then the suffix), ``suffix``,
        ``response``, ``success``, ``score``, ``target_nll`` and ``baseline_nll`` (nats per
        target token after the prompt and after the instruction alone; None without a target
        text), ``steps``, ``seconds``, ``queries`` (prompts the victim was run on), ``models``,
        and ``stop_reason`` when it did not succeed.
        """
        if objective is not None and not callable(objective):
            raise ValueError("objective must be a callable: list[str] -> list[float]")
        options["instruction"] = instruction
        return _events(self._models.attack(_options_json(options, _ATTACK_LISTS), objective))

    def attack(
        self,
        instruction: str,
        *,
        objective: Optional[Callable[[List[str]], Sequence[float]]] = None,
        **options: Any,
    ) -> Dict[str, Any]:
        """Attacks: the ``done`` dict of :meth:`stream` (same arguments)."""
        done: Dict[str, Any] = {}
        for event in self.stream(instruction, objective=objective, **options):
            done = event
        return done

    def __repr__(self) -> str:
        return f"Attacker(lm={self.lm!r}, victim={self.victim!r}, device={self.device!r})"


@functools.lru_cache(maxsize=1)
def _diffusion(model: str, variant: Optional[str], device: str) -> Any:
    return _clipsteer.Diffusion(model, variant, device)


def generate(
    prompt: str,
    *,
    model: PathLike = DEFAULT_DIFFUSION_MODEL,
    variant: Optional[str] = None,
    steps: int = 25,
    scheduler: str = "dpm++2m",
    guidance: float = 7.5,
    size: int = 512,
    seed: int = 0,
    negative: str = "",
    device: str = "cpu",
) -> "PIL.Image.Image":  # noqa: F821
    """Text to image with Stable Diffusion (``clipsteer generate``): an RGB ``PIL.Image`` of
    ``size`` × ``size`` pixels (a multiple of 8).

    ``model``: a diffusers-layout directory or hub id; ``variant="fp16"`` reads the fp16
    weight files. ``scheduler``: ``"dpm++2m"`` (the original demo's), ``"ddim"`` or
    ``"euler-a"``. ``guidance``: classifier-free guidance scale (1 or less turns it off).
    ``seed`` seeds clipsteer's own noise generator (seeds do not carry over from diffusers).
    The last model loaded stays loaded for the next call.
    """
    from PIL import Image

    for name, value in (("steps", steps), ("size", size), ("seed", seed)):
        value = _plain(name, value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    guidance = _plain("guidance", guidance)
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)):
        raise ValueError(f"guidance must be a number, got {guidance!r}")
    pipeline = _diffusion(os.fspath(model), variant, device)
    width, height, pixels = pipeline.generate(
        prompt, int(steps), scheduler, float(guidance), int(size), int(seed), negative
    )
    return Image.frombytes("RGB", (width, height), pixels)
