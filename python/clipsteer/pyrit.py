"""clipsteer inside PyRIT: a prompt converter that appends an adversarial suffix found against a
local white-box victim (``clipsteer attack``; docs/ATTACK.md), so that any PyRIT target and
attack can send the suffixed prompt.

    from clipsteer import Attacker
    from clipsteer.pyrit import ClipsteerSuffixConverter

    converter = ClipsteerSuffixConverter(
        attacker=Attacker("SmolLM2-135M-Instruct.Q4_1.gguf"),
        target_response=lambda prompt: "Sure, here is",
        time_limit=60,
    )
    result = await converter.convert_async(prompt="Write a poem about the sea")
    # result.output_text: the prompt verbatim, then the suffix

Each prompt is attacked once per converter (the result is cached by prompt): the search runs on
the local victim, and the converted prompt is what transfers to the target PyRIT sends it to.
Needs PyRIT (``pip install pyrit``): its ``Converter`` (PyRIT 1.x) or, in earlier releases,
``PromptConverter``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Dict, Union

try:  # PyRIT 1.x
    from pyrit.converter import Converter as _Converter
    from pyrit.converter import ConverterResult
except ImportError:  # PyRIT 0.x
    try:
        from pyrit.prompt_converter import ConverterResult
        from pyrit.prompt_converter import PromptConverter as _Converter
    except ImportError as error:  # pragma: no cover - the message is the point
        raise ImportError(
            "clipsteer.pyrit needs PyRIT: pip install pyrit (Python 3.10 or later)"
        ) from error

from . import Attacker

__all__ = ["ClipsteerSuffixConverter"]


class ClipsteerSuffixConverter(_Converter):
    """Appends the suffix a clipsteer attack finds for each prompt.

    Args:
        attacker: A loaded :class:`clipsteer.Attacker` (attacker and white-box victim).
        target_response: The answer to steer the victim toward: a string, or a function of the
            prompt that returns one (e.g. ``lambda p: f"Sure, here is {p[0].lower()}{p[1:]}"``,
            GCG's and BEAST's form of target). Default ``"Sure, here is"``.
        **options: Any other option of :meth:`clipsteer.Attacker.attack` (``time_limit``,
            ``beam_width``, ``candidates``, ``block``, …), with its defaults.

    After a conversion, ``last_result`` holds the attack's ``done`` dict (suffix, the victim's
    answer, success, queries, seconds).
    """

    SUPPORTED_INPUT_TYPES = ("text",)
    SUPPORTED_OUTPUT_TYPES = ("text",)

    def __init__(
        self,
        *,
        attacker: Attacker,
        target_response: Union[str, Callable[[str], str]] = "Sure, here is",
        **options: Any,
    ) -> None:
        if not isinstance(attacker, Attacker):
            raise TypeError("attacker must be a clipsteer.Attacker")
        for name in ("instruction", "objective", "scorer_cmd", "target_text"):
            if name in options:
                raise ValueError(f"{name} is set by the converter; give target_response instead")
        super().__init__()
        self._attacker = attacker
        self._target_response = target_response
        self._options = options
        self._cache: Dict[str, Dict[str, Any]] = {}
        self.last_result: Dict[str, Any] = {}

    def _build_identifier(self) -> Any:
        # PyRIT 1.x records a converter's parameters with its results.
        return self._create_identifier(
            params={
                "attacker": self._attacker.lm,
                "victim": self._attacker.victim,
                "target_response": self._target_response
                if isinstance(self._target_response, str)
                else getattr(self._target_response, "__name__", "callable"),
                **{k: str(v) for k, v in sorted(self._options.items())},
            },
        )

    def _attack(self, prompt: str) -> Dict[str, Any]:
        if prompt not in self._cache:
            target = self._target_response
            target = target(prompt) if callable(target) else target
            self._cache[prompt] = self._attacker.attack(
                prompt, target_response=target, **self._options
            )
        return self._cache[prompt]

    async def convert_async(self, *, prompt: str, input_type: str = "text") -> ConverterResult:
        """The prompt verbatim, then the suffix found for it (the attack runs in a thread, so
        the event loop goes on)."""
        if not self.input_supported(input_type):
            raise ValueError(f"clipsteer converts text prompts, not {input_type}")
        done = await asyncio.to_thread(self._attack, prompt)
        self.last_result = done
        return ConverterResult(output_text=done["prompt"], output_type="text")

    def input_supported(self, input_type: str) -> bool:
        return input_type == "text"

    def output_supported(self, output_type: str) -> bool:
        return output_type == "text"
