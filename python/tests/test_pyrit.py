"""clipsteer.pyrit against the real PyRIT (installed by .ci/run): the converter appends the
suffix a clipsteer attack finds, on its own and inside a PyRIT attack."""

import asyncio
import io
from pathlib import Path

import pytest

import clipsteer
from clipsteer.pyrit import ClipsteerSuffixConverter

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
LLAMA = str(FIXTURES / "llama-tiny.gguf")
# The tiny llama fixture carries no chat template; ChatML, as SmolLM2's.
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
OPTIONS = dict(max_tokens=2, beam_width=2, candidates=3, proposal="top-k")


@pytest.fixture(scope="module")
def attacker(tmp_path_factory):
    template = tmp_path_factory.mktemp("template") / "chatml.jinja"
    template.write_text(CHATML)
    return clipsteer.Attacker(LLAMA, chat_template=template)


def test_the_converter_appends_the_suffix_the_attack_finds(attacker):
    from pyrit.converter import Converter

    targets = []

    def target(prompt):
        targets.append(prompt)
        return "Sure, here"

    converter = ClipsteerSuffixConverter(attacker=attacker, target_response=target, **OPTIONS)
    assert isinstance(converter, Converter)
    result = asyncio.run(converter.convert_async(prompt="Say something."))
    direct = attacker.attack("Say something.", target_response="Sure, here", **OPTIONS)
    assert result.output_type == "text"
    assert result.output_text == direct["prompt"]
    assert result.output_text.startswith("Say something.") and direct["suffix"]
    assert converter.last_result["suffix"] == direct["suffix"]
    assert targets == ["Say something."]
    # The same prompt again is the cached result, not a second attack.
    again = asyncio.run(converter.convert_async(prompt="Say something."))
    assert again.output_text == result.output_text and targets == ["Say something."]
    with pytest.raises(ValueError, match="converts text prompts"):
        asyncio.run(converter.convert_async(prompt="a.png", input_type="image_path"))
    with pytest.raises(ValueError, match="set by the converter"):
        ClipsteerSuffixConverter(attacker=attacker, scorer_cmd="true")
    with pytest.raises(TypeError, match="clipsteer.Attacker"):
        ClipsteerSuffixConverter(attacker=LLAMA)


def test_the_converter_inside_a_pyrit_attack(attacker):
    from pyrit.executor.attack import AttackConverterConfig, PromptSendingAttack
    from pyrit.prompt_normalizer import ConverterConfiguration
    from pyrit.prompt_target import TextTarget
    from pyrit.setup import IN_MEMORY, initialize_pyrit_async

    converter = ClipsteerSuffixConverter(attacker=attacker, target_response="Sure, here", **OPTIONS)
    sent = io.StringIO()

    async def run():
        await initialize_pyrit_async(memory_db_type=IN_MEMORY, silent=True)
        attack = PromptSendingAttack(
            objective_target=TextTarget(text_stream=sent),
            attack_converter_config=AttackConverterConfig(
                request_converters=ConverterConfiguration.from_converters(converters=[converter])
            ),
        )
        return await attack.execute_async(objective="Say something.")

    asyncio.run(run())
    suffixed = converter.last_result["prompt"]
    assert suffixed.startswith("Say something.") and suffixed != "Say something."
    assert suffixed in sent.getvalue(), sent.getvalue()
