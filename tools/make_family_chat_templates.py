"""Reference renderings of the chat templates real model families ship, for
tests/chat_template_families.rs: each template rendered by transformers' own apply_chat_template
(jinja2) over the same conversations, to text, or to the exception the template raises.
Writes tests/fixtures/reference/chat-templates-families.json.

The templates are copied verbatim below (no network here). Where they come from:
- llama.cpp keeps real templates for its own tests: models/templates/*.jinja and, before that,
  tests/chat/templates/*.jinja, and test strings in tests/test-chat-template.cpp. The index they
  were copied from holds most under ggerganov/llama.cpp, ggml-org/llama.cpp's earlier name.
- Two families are not among llama.cpp's files: Llama 2 (mistral.rs's chat-template test quotes
  meta-llama/Llama-2-13b-chat-hf's template) and Gemma 3 (gorilla's BFCL Gemma handler quotes
  google/gemma-3's tokenizer_config).
- Files a fork stored with CRLF line ends (Qwen3) are kept with LF, as the models'
  tokenizer_config.json hold them.
The copies were checked against independent renderings where one exists, all equal:
llama.cpp's goldens (tests/chat/goldens: Llama 3.1-8B tool use, Llama 3.2 system, Mistral-7B-v0.2
system), the expected outputs in llama.cpp's test-chat-template.cpp (Mistral v3, Vicuna) and in
mistral.rs's test (Llama 2, Gemma). Llama 3.3's file stands for Llama 3.1: it reproduces
llama.cpp's Llama-3.1-8B golden to the character.

Each template is rendered through a PreTrainedTokenizerFast around the tiny BPE tokenizer with
the family's real bos/eos strings: apply_chat_template(messages, tokenize=False,
add_generation_prompt=...), which passes tokenizer.special_tokens_map, plus any case's `extra`
keyword arguments, to the template. Llama 3.2's template prints strftime_now("%d %b %Y") (today)
unless `date_string` is given: its cases pin date_string (recorded as `extra`).

Run: /work/venv/bin/python tools/make_family_chat_templates.py
"""
import json
from datetime import datetime
from pathlib import Path

import jinja2
import transformers
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "reference" / "chat-templates-families.json"
TOKENIZER = ROOT / "tests" / "fixtures" / "tokenizers" / "tiny-bpe-tokenizer.json"

LLAMA_CPP = "ggerganov/llama.cpp"
TEST_CHAT_TEMPLATE = {
    "repo": "ggml-org/llama.cpp",
    "path": "tests/test-chat-template.cpp",
    "commit": "03f94f19a2c4c9d039fa1a84838fe3e2110cc28d",
}
PINNED_DATE = "26 Jul 2024"

# The templates, verbatim (see the sources in FAMILIES).
TEMPLATES = {
    'llama-2': (
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
        "{% set system_message = messages[0]['content'] %}{% else %}"
        '{% set loop_messages = messages %}{% set system_message = false %}{% endif %}'
        '{% for message in loop_messages %}'
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
        '{% endif %}{% if loop.index0 == 0 and system_message != false %}'
        "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
        "{% else %}{% set content = message['content'] %}{% endif %}"
        "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
        '{% endif %}{% endfor %}'
    ),
    'llama-3.3': (
        '{{- bos_token }}\n'
        '{%- if custom_tools is defined %}\n'
        '    {%- set tools = custom_tools %}\n'
        '{%- endif %}\n'
        '{%- if not tools_in_user_message is defined %}\n'
        '    {%- set tools_in_user_message = true %}\n'
        '{%- endif %}\n'
        '{%- if not date_string is defined %}\n'
        '    {%- set date_string = "26 Jul 2024" %}\n'
        '{%- endif %}\n'
        '{%- if not tools is defined %}\n'
        '    {%- set tools = none %}\n'
        '{%- endif %}\n'
        '\n'
        '{#- This block extracts the system message, so we can slot it into the right place. #}\n'
        "{%- if messages[0]['role'] == 'system' %}\n"
        "    {%- set system_message = messages[0]['content']|trim %}\n"
        '    {%- set messages = messages[1:] %}\n'
        '{%- else %}\n'
        '    {%- set system_message = "" %}\n'
        '{%- endif %}\n'
        '\n'
        '{#- System message + builtin tools #}\n'
        '{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}\n'
        '{%- if builtin_tools is defined or tools is not none %}\n'
        '    {{- "Environment: ipython\\n" }}\n'
        '{%- endif %}\n'
        '{%- if builtin_tools is defined %}\n'
        '    {{- "Tools: " + builtin_tools | reject(\'equalto\', \'code_interpreter\') | join(", ") + "\\n\\n"}}\n'
        '{%- endif %}\n'
        '{{- "Cutting Knowledge Date: December 2023\\n" }}\n'
        '{{- "Today Date: " + date_string + "\\n\\n" }}\n'
        '{%- if tools is not none and not tools_in_user_message %}\n'
        '    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}\n'
        '    {{- \'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.\' }}\n'
        '    {{- "Do not use variables.\\n\\n" }}\n'
        '    {%- for t in tools %}\n'
        '        {{- t | tojson(indent=4) }}\n'
        '        {{- "\\n\\n" }}\n'
        '    {%- endfor %}\n'
        '{%- endif %}\n'
        '{{- system_message }}\n'
        '{{- "<|eot_id|>" }}\n'
        '\n'
        '{#- Custom tools are passed in a user message with some extra guidance #}\n'
        '{%- if tools_in_user_message and not tools is none %}\n'
        '    {#- Extract the first user message so we can plug it in here #}\n'
        '    {%- if messages | length != 0 %}\n'
        "        {%- set first_user_message = messages[0]['content']|trim %}\n"
        '        {%- set messages = messages[1:] %}\n'
        '    {%- else %}\n'
        '        {{- raise_exception("Cannot put tools in the first user message when there\'s no first user message!") }}\n'
        '{%- endif %}\n'
        "    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}\n"
        '    {{- "Given the following functions, please respond with a JSON for a function call " }}\n'
        '    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}\n'
        '    {{- \'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.\' }}\n'
        '    {{- "Do not use variables.\\n\\n" }}\n'
        '    {%- for t in tools %}\n'
        '        {{- t | tojson(indent=4) }}\n'
        '        {{- "\\n\\n" }}\n'
        '    {%- endfor %}\n'
        '    {{- first_user_message + "<|eot_id|>"}}\n'
        '{%- endif %}\n'
        '\n'
        '{%- for message in messages %}\n'
        '    '
        "{%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}\n"
        "        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n"
        "    {%- elif 'tool_calls' in message %}\n"
        '        {%- if not message.tool_calls|length == 1 %}\n'
        '            {{- raise_exception("This model only supports single tool-calls at once!") }}\n'
        '        {%- endif %}\n'
        '        {%- set tool_call = message.tool_calls[0].function %}\n'
        '        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}\n'
        "            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n"
        '            {{- "<|python_tag|>" + tool_call.name + ".call(" }}\n'
        '            {%- for arg_name, arg_val in tool_call.arguments | items %}\n'
        '                {{- arg_name + \'="\' + arg_val + \'"\' }}\n'
        '                {%- if not loop.last %}\n'
        '                    {{- ", " }}\n'
        '                {%- endif %}\n'
        '                {%- endfor %}\n'
        '            {{- ")" }}\n'
        '        {%- else  %}\n'
        "            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n"
        '            {{- \'{"name": "\' + tool_call.name + \'", \' }}\n'
        '            {{- \'"parameters": \' }}\n'
        '            {{- tool_call.arguments | tojson }}\n'
        '            {{- "}" }}\n'
        '        {%- endif %}\n'
        '        {%- if builtin_tools is defined %}\n'
        "            {#- This means we're in ipython mode #}\n"
        '            {{- "<|eom_id|>" }}\n'
        '        {%- else %}\n'
        '            {{- "<|eot_id|>" }}\n'
        '        {%- endif %}\n'
        '    {%- elif message.role == "tool" or message.role == "ipython" %}\n'
        '        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}\n'
        '        {%- if message.content is mapping or message.content is iterable %}\n'
        '            {{- message.content | tojson }}\n'
        '        {%- else %}\n'
        '            {{- message.content }}\n'
        '        {%- endif %}\n'
        '        {{- "<|eot_id|>" }}\n'
        '    {%- endif %}\n'
        '{%- endfor %}\n'
        '{%- if add_generation_prompt %}\n'
        "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
        '{%- endif %}\n'
    ),
    'llama-3.2': (
        '{{- bos_token }}\n'
        '{%- if custom_tools is defined %}\n'
        '    {%- set tools = custom_tools %}\n'
        '{%- endif %}\n'
        '{%- if not tools_in_user_message is defined %}\n'
        '    {%- set tools_in_user_message = true %}\n'
        '{%- endif %}\n'
        '{%- if not date_string is defined %}\n'
        '    {%- if strftime_now is defined %}\n'
        '        {%- set date_string = strftime_now("%d %b %Y") %}\n'
        '    {%- else %}\n'
        '        {%- set date_string = "26 Jul 2024" %}\n'
        '    {%- endif %}\n'
        '{%- endif %}\n'
        '{%- if not tools is defined %}\n'
        '    {%- set tools = none %}\n'
        '{%- endif %}\n'
        '\n'
        '{#- This block extracts the system message, so we can slot it into the right place. #}\n'
        "{%- if messages[0]['role'] == 'system' %}\n"
        "    {%- set system_message = messages[0]['content']|trim %}\n"
        '    {%- set messages = messages[1:] %}\n'
        '{%- else %}\n'
        '    {%- set system_message = "" %}\n'
        '{%- endif %}\n'
        '\n'
        '{#- System message #}\n'
        '{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}\n'
        '{%- if tools is not none %}\n'
        '    {{- "Environment: ipython\\n" }}\n'
        '{%- endif %}\n'
        '{{- "Cutting Knowledge Date: December 2023\\n" }}\n'
        '{{- "Today Date: " + date_string + "\\n\\n" }}\n'
        '{%- if tools is not none and not tools_in_user_message %}\n'
        '    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}\n'
        '    {{- \'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.\' }}\n'
        '    {{- "Do not use variables.\\n\\n" }}\n'
        '    {%- for t in tools %}\n'
        '        {{- t | tojson(indent=4) }}\n'
        '        {{- "\\n\\n" }}\n'
        '    {%- endfor %}\n'
        '{%- endif %}\n'
        '{{- system_message }}\n'
        '{{- "<|eot_id|>" }}\n'
        '\n'
        '{#- Custom tools are passed in a user message with some extra guidance #}\n'
        '{%- if tools_in_user_message and not tools is none %}\n'
        '    {#- Extract the first user message so we can plug it in here #}\n'
        '    {%- if messages | length != 0 %}\n'
        "        {%- set first_user_message = messages[0]['content']|trim %}\n"
        '        {%- set messages = messages[1:] %}\n'
        '    {%- else %}\n'
        '        {{- raise_exception("Cannot put tools in the first user message when there\'s no first user message!") }}\n'
        '{%- endif %}\n'
        "    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}\n"
        '    {{- "Given the following functions, please respond with a JSON for a function call " }}\n'
        '    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}\n'
        '    {{- \'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.\' }}\n'
        '    {{- "Do not use variables.\\n\\n" }}\n'
        '    {%- for t in tools %}\n'
        '        {{- t | tojson(indent=4) }}\n'
        '        {{- "\\n\\n" }}\n'
        '    {%- endfor %}\n'
        '    {{- first_user_message + "<|eot_id|>"}}\n'
        '{%- endif %}\n'
        '\n'
        '{%- for message in messages %}\n'
        '    '
        "{%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}\n"
        "        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n"
        "    {%- elif 'tool_calls' in message %}\n"
        '        {%- if not message.tool_calls|length == 1 %}\n'
        '            {{- raise_exception("This model only supports single tool-calls at once!") }}\n'
        '        {%- endif %}\n'
        '        {%- set tool_call = message.tool_calls[0].function %}\n'
        "        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n"
        '        {{- \'{"name": "\' + tool_call.name + \'", \' }}\n'
        '        {{- \'"parameters": \' }}\n'
        '        {{- tool_call.arguments | tojson }}\n'
        '        {{- "}" }}\n'
        '        {{- "<|eot_id|>" }}\n'
        '    {%- elif message.role == "tool" or message.role == "ipython" %}\n'
        '        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}\n'
        '        {%- if message.content is mapping or message.content is iterable %}\n'
        '            {{- message.content | tojson }}\n'
        '        {%- else %}\n'
        '            {{- message.content }}\n'
        '        {%- endif %}\n'
        '        {{- "<|eot_id|>" }}\n'
        '    {%- endif %}\n'
        '{%- endfor %}\n'
        '{%- if add_generation_prompt %}\n'
        "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
        '{%- endif %}\n'
    ),
    'vicuna': (
        '{%- for message in messages %}'
        "{%- if message['role'] == 'system' -%}{{- '' + message['content'] + '\n"
        '\n'
        "' -}}{%- else -%}{%- if message['role'] == 'user' -%}{{-'USER: ' + message['content'] + '\n"
        "'-}}{%- else -%}{{-'ASSISTANT: ' + message['content'] + '</s>\n"
        "' -}}{%- endif -%}{%- endif -%}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{-'ASSISTANT:'-}}{%- endif -%}"
    ),
    'mixtral': (
        "{%- if messages[0]['role'] == 'system' %}\n"
        "    {%- set system_message = messages[0]['content'] %}\n"
        '    {%- set loop_messages = messages[1:] %}\n'
        '{%- else %}\n'
        '    {%- set loop_messages = messages %}\n'
        '{%- endif %}\n'
        '\n'
        '{{- bos_token }}\n'
        '{%- for message in loop_messages %}\n'
        "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
        "        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}\n"
        '    {%- endif %}\n'
        "    {%- if message['role'] == 'user' %}\n"
        '        {%- if loop.first and system_message is defined %}\n'
        "            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n"
        '        {%- else %}\n'
        "            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n"
        '        {%- endif %}\n'
        "    {%- elif message['role'] == 'assistant' %}\n"
        "        {{- ' ' + message['content'] + eos_token}}\n"
        '    {%- else %}\n'
        "        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}\n"
        '    {%- endif %}\n'
        '{%- endfor %}\n'
    ),
    'mistral-v3': (
        '{%- if messages[0]["role"] == "system" %}\n'
        '    {%- set system_message = messages[0]["content"] %}\n'
        '    {%- set loop_messages = messages[1:] %}\n'
        '{%- else %}\n'
        '    {%- set loop_messages = messages %}\n'
        '{%- endif %}\n'
        '{%- if not tools is defined %}\n'
        '    {%- set tools = none %}\n'
        '{%- endif %}\n'
        '{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}\n'
        '\n'
        '{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}\n'
        '{%- set ns = namespace() %}\n'
        '{%- set ns.index = 0 %}\n'
        '{%- for message in loop_messages %}\n'
        '    '
        '{%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}\n'
        '        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}\n'
        '            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}\n'
        '        {%- endif %}\n'
        '        {%- set ns.index = ns.index + 1 %}\n'
        '    {%- endif %}\n'
        '{%- endfor %}\n'
        '\n'
        '{{- bos_token }}\n'
        '{%- for message in loop_messages %}\n'
        '    {%- if message["role"] == "user" %}\n'
        '        {%- if tools is not none and (message == user_messages[-1]) %}\n'
        '            {{- "[AVAILABLE_TOOLS] [" }}\n'
        '            {%- for tool in tools %}\n'
        '                {%- set tool = tool.function %}\n'
        '                {{- \'{"type": "function", "function": {\' }}\n'
        '                {%- for key, val in tool.items() if key != "return" %}\n'
        '                    {%- if val is string %}\n'
        '                        {{- \'"\' + key + \'": "\' + val + \'"\' }}\n'
        '                    {%- else %}\n'
        '                        {{- \'"\' + key + \'": \' + val|tojson }}\n'
        '                    {%- endif %}\n'
        '                    {%- if not loop.last %}\n'
        '                        {{- ", " }}\n'
        '                    {%- endif %}\n'
        '                {%- endfor %}\n'
        '                {{- "}}" }}\n'
        '                {%- if not loop.last %}\n'
        '                    {{- ", " }}\n'
        '                {%- else %}\n'
        '                    {{- "]" }}\n'
        '                {%- endif %}\n'
        '            {%- endfor %}\n'
        '            {{- "[/AVAILABLE_TOOLS]" }}\n'
        '            {%- endif %}\n'
        '        {%- if loop.last and system_message is defined %}\n'
        '            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}\n'
        '        {%- else %}\n'
        '            {{- "[INST] " + message["content"] + "[/INST]" }}\n'
        '        {%- endif %}\n'
        '    {%- elif message.tool_calls is defined and message.tool_calls is not none %}\n'
        '        {{- "[TOOL_CALLS] [" }}\n'
        '        {%- for tool_call in message.tool_calls %}\n'
        '            {%- set out = tool_call.function|tojson %}\n'
        '            {{- out[:-1] }}\n'
        '            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}\n'
        '                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}\n'
        '            {%- endif %}\n'
        '            {{- \', "id": "\' + tool_call.id + \'"}\' }}\n'
        '            {%- if not loop.last %}\n'
        '                {{- ", " }}\n'
        '            {%- else %}\n'
        '                {{- "]" + eos_token }}\n'
        '            {%- endif %}\n'
        '        {%- endfor %}\n'
        '    {%- elif message["role"] == "assistant" %}\n'
        '        {{- " " + message["content"]|trim + eos_token}}\n'
        '    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}\n'
        '        {%- if message.content is defined and message.content.content is defined %}\n'
        '            {%- set content = message.content.content %}\n'
        '        {%- else %}\n'
        '            {%- set content = message.content %}\n'
        '        {%- endif %}\n'
        '        {{- \'[TOOL_RESULTS] {"content": \' + content|string + ", " }}\n'
        '        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}\n'
        '            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}\n'
        '        {%- endif %}\n'
        '        {{- \'"call_id": "\' + message.tool_call_id + \'"}[/TOOL_RESULTS]\' }}\n'
        '    {%- else %}\n'
        '        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}\n'
        '    {%- endif %}\n'
        '{%- endfor %}\n'
    ),
    'mistral-nemo': (
        '{%- if messages[0]["role"] == "system" %}\n'
        '    {%- set system_message = messages[0]["content"] %}\n'
        '    {%- set loop_messages = messages[1:] %}\n'
        '{%- else %}\n'
        '    {%- set loop_messages = messages %}\n'
        '{%- endif %}\n'
        '{%- if not tools is defined %}\n'
        '    {%- set tools = none %}\n'
        '{%- endif %}\n'
        '{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}\n'
        '\n'
        '{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}\n'
        '{%- set ns = namespace() %}\n'
        '{%- set ns.index = 0 %}\n'
        '{%- for message in loop_messages %}\n'
        '    '
        '{%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}\n'
        '        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}\n'
        '            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}\n'
        '        {%- endif %}\n'
        '        {%- set ns.index = ns.index + 1 %}\n'
        '    {%- endif %}\n'
        '{%- endfor %}\n'
        '\n'
        '{{- bos_token }}\n'
        '{%- for message in loop_messages %}\n'
        '    {%- if message["role"] == "user" %}\n'
        '        {%- if tools is not none and (message == user_messages[-1]) %}\n'
        '            {{- "[AVAILABLE_TOOLS][" }}\n'
        '            {%- for tool in tools %}\n'
        '                {%- set tool = tool.function %}\n'
        '                {{- \'{"type": "function", "function": {\' }}\n'
        '                {%- for key, val in tool.items() if key != "return" %}\n'
        '                    {%- if val is string %}\n'
        '                        {{- \'"\' + key + \'": "\' + val + \'"\' }}\n'
        '                    {%- else %}\n'
        '                        {{- \'"\' + key + \'": \' + val|tojson }}\n'
        '                    {%- endif %}\n'
        '                    {%- if not loop.last %}\n'
        '                        {{- ", " }}\n'
        '                    {%- endif %}\n'
        '                {%- endfor %}\n'
        '                {{- "}}" }}\n'
        '                {%- if not loop.last %}\n'
        '                    {{- ", " }}\n'
        '                {%- else %}\n'
        '                    {{- "]" }}\n'
        '                {%- endif %}\n'
        '            {%- endfor %}\n'
        '            {{- "[/AVAILABLE_TOOLS]" }}\n'
        '            {%- endif %}\n'
        '        {%- if loop.last and system_message is defined %}\n'
        '            {{- "[INST]" + system_message + "\\n\\n" + message["content"] + "[/INST]" }}\n'
        '        {%- else %}\n'
        '            {{- "[INST]" + message["content"] + "[/INST]" }}\n'
        '        {%- endif %}\n'
        '    {%- elif (message.tool_calls is defined and message.tool_calls is not none) %}\n'
        '        {{- "[TOOL_CALLS][" }}\n'
        '        {%- for tool_call in message.tool_calls %}\n'
        '            {%- set out = tool_call.function|tojson %}\n'
        '            {{- out[:-1] }}\n'
        '            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}\n'
        '                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}\n'
        '            {%- endif %}\n'
        '            {{- \', "id": "\' + tool_call.id + \'"}\' }}\n'
        '            {%- if not loop.last %}\n'
        '                {{- ", " }}\n'
        '            {%- else %}\n'
        '                {{- "]" + eos_token }}\n'
        '            {%- endif %}\n'
        '        {%- endfor %}\n'
        '    {%- elif message["role"] == "assistant" %}\n'
        '        {{- message["content"] + eos_token}}\n'
        '    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}\n'
        '        {%- if message.content is defined and message.content.content is defined %}\n'
        '            {%- set content = message.content.content %}\n'
        '        {%- else %}\n'
        '            {%- set content = message.content %}\n'
        '        {%- endif %}\n'
        '        {{- \'[TOOL_RESULTS]{"content": \' + content|string + ", " }}\n'
        '        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}\n'
        '            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}\n'
        '        {%- endif %}\n'
        '        {{- \'"call_id": "\' + message.tool_call_id + \'"}[/TOOL_RESULTS]\' }}\n'
        '    {%- else %}\n'
        '        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}\n'
        '    {%- endif %}\n'
        '{%- endfor %}\n'
    ),
    'qwen2.5': (
        '{%- if tools %}\n'
        "    {{- '<|im_start|>system\\n' }}\n"
        "    {%- if messages[0]['role'] == 'system' %}\n"
        "        {{- messages[0]['content'] }}\n"
        '    {%- else %}\n'
        "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
        '    {%- endif %}\n'
        '    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}\n'
        '    {%- for tool in tools %}\n'
        '        {{- "\\n" }}\n'
        '        {{- tool | tojson }}\n'
        '    {%- endfor %}\n'
        '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n'
        '{%- else %}\n'
        "    {%- if messages[0]['role'] == 'system' %}\n"
        "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
        '    {%- else %}\n'
        "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
        '    {%- endif %}\n'
        '{%- endif %}\n'
        '{%- for message in messages %}\n'
        '    '
        '{%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}\n'
        "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
        '    {%- elif message.role == "assistant" %}\n'
        "        {{- '<|im_start|>' + message.role }}\n"
        '        {%- if message.content %}\n'
        "            {{- '\\n' + message.content }}\n"
        '        {%- endif %}\n'
        '        {%- for tool_call in message.tool_calls %}\n'
        '            {%- if tool_call.function is defined %}\n'
        '                {%- set tool_call = tool_call.function %}\n'
        '            {%- endif %}\n'
        '            {{- \'\\n<tool_call>\\n{"name": "\' }}\n'
        '            {{- tool_call.name }}\n'
        '            {{- \'", "arguments": \' }}\n'
        '            {{- tool_call.arguments | tojson }}\n'
        "            {{- '}\\n</tool_call>' }}\n"
        '        {%- endfor %}\n'
        "        {{- '<|im_end|>\\n' }}\n"
        '    {%- elif message.role == "tool" %}\n'
        '        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}\n'
        "            {{- '<|im_start|>user' }}\n"
        '        {%- endif %}\n'
        "        {{- '\\n<tool_response>\\n' }}\n"
        '        {{- message.content }}\n'
        "        {{- '\\n</tool_response>' }}\n"
        '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n'
        "            {{- '<|im_end|>\\n' }}\n"
        '        {%- endif %}\n'
        '    {%- endif %}\n'
        '{%- endfor %}\n'
        '{%- if add_generation_prompt %}\n'
        "    {{- '<|im_start|>assistant\\n' }}\n"
        '{%- endif %}\n'
    ),
    'qwen3': (
        '{%- if tools %}\n'
        "    {{- '<|im_start|>system\\n' }}\n"
        "    {%- if messages[0].role == 'system' %}\n"
        "        {{- messages[0].content + '\\n\\n' }}\n"
        '    {%- endif %}\n'
        '    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}\n'
        '    {%- for tool in tools %}\n'
        '        {{- "\\n" }}\n'
        '        {{- tool | tojson }}\n'
        '    {%- endfor %}\n'
        '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n'
        '{%- else %}\n'
        "    {%- if messages[0].role == 'system' %}\n"
        "        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}\n"
        '    {%- endif %}\n'
        '{%- endif %}\n'
        '{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}\n'
        '{%- for message in messages[::-1] %}\n'
        '    {%- set index = (messages|length - 1) - loop.index0 %}\n'
        '    '
        '{%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith(\'<tool_response>\') and message.content.endswith(\'</tool_response>\')) %}\n'
        '        {%- set ns.multi_step_tool = false %}\n'
        '        {%- set ns.last_query_index = index %}\n'
        '    {%- endif %}\n'
        '{%- endfor %}\n'
        '{%- for message in messages %}\n'
        '    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}\n'
        "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
        '    {%- elif message.role == "assistant" %}\n'
        '        {%- set content = message.content %}\n'
        "        {%- set reasoning_content = '' %}\n"
        '        '
        '{%- if message.reasoning_content is defined and message.reasoning_content is not none %}\n'
        '            {%- set reasoning_content = message.reasoning_content %}\n'
        '        {%- else %}\n'
        "            {%- if '</think>' in message.content %}\n"
        "                {%- set content = message.content.split('</think>')[-1].lstrip('\\n') %}\n"
        '                '
        "{%- set reasoning_content = message.content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}\n"
        '            {%- endif %}\n'
        '        {%- endif %}\n'
        '        {%- if loop.index0 > ns.last_query_index %}\n'
        '            {%- if loop.last or (not loop.last and reasoning_content) %}\n'
        "                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}\n"
        '            {%- else %}\n'
        "                {{- '<|im_start|>' + message.role + '\\n' + content }}\n"
        '            {%- endif %}\n'
        '        {%- else %}\n'
        "            {{- '<|im_start|>' + message.role + '\\n' + content }}\n"
        '        {%- endif %}\n'
        '        {%- if message.tool_calls %}\n'
        '            {%- for tool_call in message.tool_calls %}\n'
        '                {%- if (loop.first and content) or (not loop.first) %}\n'
        "                    {{- '\\n' }}\n"
        '                {%- endif %}\n'
        '                {%- if tool_call.function %}\n'
        '                    {%- set tool_call = tool_call.function %}\n'
        '                {%- endif %}\n'
        '                {{- \'<tool_call>\\n{"name": "\' }}\n'
        '                {{- tool_call.name }}\n'
        '                {{- \'", "arguments": \' }}\n'
        '                {%- if tool_call.arguments is string %}\n'
        '                    {{- tool_call.arguments }}\n'
        '                {%- else %}\n'
        '                    {{- tool_call.arguments | tojson }}\n'
        '                {%- endif %}\n'
        "                {{- '}\\n</tool_call>' }}\n"
        '            {%- endfor %}\n'
        '        {%- endif %}\n'
        "        {{- '<|im_end|>\\n' }}\n"
        '    {%- elif message.role == "tool" %}\n'
        '        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}\n'
        "            {{- '<|im_start|>user' }}\n"
        '        {%- endif %}\n'
        "        {{- '\\n<tool_response>\\n' }}\n"
        '        {{- message.content }}\n'
        "        {{- '\\n</tool_response>' }}\n"
        '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n'
        "            {{- '<|im_end|>\\n' }}\n"
        '        {%- endif %}\n'
        '    {%- endif %}\n'
        '{%- endfor %}\n'
        '{%- if add_generation_prompt %}\n'
        "    {{- '<|im_start|>assistant\\n' }}\n"
        '    {%- if enable_thinking is defined and enable_thinking is false %}\n'
        "        {{- '<think>\\n\\n</think>\\n\\n' }}\n"
        '    {%- endif %}\n'
        '{%- endif %}'
    ),
    'gemma-2': (
        '{{ bos_token }}'
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        '{% endif %}{% for message in messages %}'
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}"
        "{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n"
        "' + message['content'] | trim + '<end_of_turn>\n"
        "' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n"
        "'}}{% endif %}"
    ),
    'gemma-3': (
        '{{ bos_token }}\n'
        "{%- if messages[0]['role'] == 'system' -%}\n"
        "    {%- if messages[0]['content'] is string -%}\n"
        "        {%- set first_user_prefix = messages[0]['content'] + '\n"
        '\n'
        "' -%}\n"
        '    {%- else -%}\n'
        "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n"
        '\n'
        "' -%}\n"
        '    {%- endif -%}\n'
        '    {%- set loop_messages = messages[1:] -%}\n'
        '{%- else -%}\n'
        '    {%- set first_user_prefix = "" -%}\n'
        '    {%- set loop_messages = messages -%}\n'
        '{%- endif -%}\n'
        '{%- for message in loop_messages -%}\n'
        "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
        '        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}\n'
        '    {%- endif -%}\n'
        "    {%- if (message['role'] == 'assistant') -%}\n"
        '        {%- set role = "model" -%}\n'
        '    {%- else -%}\n'
        "        {%- set role = message['role'] -%}\n"
        '    {%- endif -%}\n'
        "    {{ '<start_of_turn>' + role + '\n"
        '\' + (first_user_prefix if loop.first else "") }}\n'
        "    {%- if message['content'] is string -%}\n"
        "        {{ message['content'] | trim }}\n"
        "    {%- elif message['content'] is iterable -%}\n"
        "        {%- for item in message['content'] -%}\n"
        "            {%- if item['type'] == 'image' -%}\n"
        "                {{ '<start_of_image>' }}\n"
        "            {%- elif item['type'] == 'text' -%}\n"
        "                {{ item['text'] | trim }}\n"
        '            {%- endif -%}\n'
        '        {%- endfor -%}\n'
        '    {%- else -%}\n'
        '        {{ raise_exception("Invalid content type") }}\n'
        '    {%- endif -%}\n'
        "    {{ '<end_of_turn>\n"
        "' }}\n"
        '{%- endfor -%}\n'
        '{%- if add_generation_prompt -%}\n'
        "    {{'<start_of_turn>model\n"
        "'}}\n"
        '{%- endif -%}\n'
    ),
    'phi-3-mini': (
        "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n"
        "' + message['content'] + '<|end|>\n"
        "'}}{% elif message['role'] == 'user' %}{{'<|user|>\n"
        "' + message['content'] + '<|end|>\n"
        "'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n"
        "' + message['content'] + '<|end|>\n"
        "'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n"
        "' }}{% else %}{{ eos_token }}{% endif %}"
    ),
    'phi-3.5-mini': (
        '{% for message in messages %}'
        "{% if message['role'] == 'system' and message['content'] %}{{'<|system|>\n"
        "' + message['content'] + '<|end|>\n"
        "'}}{% elif message['role'] == 'user' %}{{'<|user|>\n"
        "' + message['content'] + '<|end|>\n"
        "'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n"
        "' + message['content'] + '<|end|>\n"
        "'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n"
        "' }}{% else %}{{ eos_token }}{% endif %}"
    ),
}

LLAMA = {"bos_token": "<s>", "eos_token": "</s>"}
LLAMA3 = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
QWEN = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
GEMMA = {"bos_token": "<bos>", "eos_token": "<eos>"}
PHI3 = {"bos_token": "<s>", "eos_token": "<|endoftext|>"}

FAMILIES = [
    {
        "family": "llama-2-chat",
        "template": "llama-2",
        "source_file": {
            "repo": "EricLBuehler/mistral.rs",
            "path": "mistralrs-core/src/pipeline/macros.rs",
            "commit": None,
            "note": "test_chat_templates' literal for meta-llama/Llama-2-13b-chat-hf (an earlier "
            "version of the file; the index did not name its commit). Not among llama.cpp's files.",
        },
        "special_tokens": LLAMA,
    },
    {
        "family": "llama-3.1-instruct",
        "template": "llama-3.3",
        "source_file": {
            "repo": LLAMA_CPP,
            "path": "tests/chat/templates/meta-llama-Llama-3.3-70B-Instruct.jinja",
            "commit": "a4b2d1d0d415e6c15a4ce2010f045d92dbd97a0e",
            "note": "Llama 3.3's file, Llama 3.1's template: it renders llama.cpp's "
            "meta-llama-Meta-Llama-3.1-8B-Instruct-tool_use golden exactly. Reads date_string, "
            "with its own default (26 Jul 2024); never calls strftime_now.",
        },
        "special_tokens": LLAMA3,
    },
    {
        "family": "llama-3.2-instruct",
        "template": "llama-3.2",
        "source_file": {
            "repo": LLAMA_CPP,
            "path": "models/templates/meta-llama-Llama-3.2-3B-Instruct.jinja",
            "commit": "7b5e0803c84435e8005725d8f9ddceb5d1820443",
            "note": "Calls strftime_now(\"%d %b %Y\") when date_string is not given: every case "
            "pins date_string.",
        },
        "special_tokens": LLAMA3,
        "extra": {"date_string": PINNED_DATE},
    },
    {
        "family": "vicuna-v1.1",
        "template": "vicuna",
        "source_file": dict(
            TEST_CHAT_TEMPLATE,
            note="test case \"eachadea/vicuna-13b-1.1\": Vicuna ships no template (llama.cpp: "
            "'likely needs to be manually set'); this is the one llama.cpp tests with.",
        ),
        "special_tokens": LLAMA,
    },
    {
        "family": "mistral-v1-instruct",
        "template": "mixtral",
        "source_file": {
            "repo": LLAMA_CPP,
            "path": "tests/chat/templates/mistralai-Mixtral-8x7B-Instruct-v0.1.jinja",
            "commit": "eaca756ecca033e6fdd241dad091974a2c0354ff",
            "note": "Mixtral-8x7B-Instruct-v0.1's template; llama.cpp's golden for "
            "Mistral-7B-Instruct-v0.2 (system) renders the same.",
        },
        "special_tokens": LLAMA,
    },
    {
        "family": "mistral-v3-instruct",
        "template": "mistral-v3",
        "source_file": dict(
            TEST_CHAT_TEMPLATE,
            note="test case \"Mistral-Large-Instruct-2407 (mistralai 'v3' template)\": the v3 "
            "template of Mistral-7B-Instruct-v0.3's tokenizer (the system message goes into "
            "the last user turn). That v0.3 ships this exact text is not checked here.",
        ),
        "special_tokens": LLAMA,
    },
    {
        "family": "mistral-nemo-instruct-2407",
        "template": "mistral-nemo",
        "source_file": {
            "repo": LLAMA_CPP,
            "path": "models/templates/mistralai-Mistral-Nemo-Instruct-2407.jinja",
            "commit": "7b5e0803c84435e8005725d8f9ddceb5d1820443",
        },
        "special_tokens": LLAMA,
    },
    {
        "family": "qwen2.5-instruct",
        "template": "qwen2.5",
        "source_file": {
            "repo": LLAMA_CPP,
            "path": "tests/chat/templates/Qwen-Qwen2.5-7B-Instruct.jinja",
            "commit": "eaca756ecca033e6fdd241dad091974a2c0354ff",
        },
        "special_tokens": QWEN,
    },
    {
        "family": "qwen3",
        "template": "qwen3",
        "source_file": {
            "repo": "ye-NX/llama.cpp",
            "path": "models/templates/Qwen-Qwen3-0.6B.jinja",
            "commit": "b354d7c9ecb76c97c07098617cdebbdfffa2583e",
            "note": "a fork of llama.cpp (the index holds no upstream copy); the fork stores it "
            "with CRLF line ends, kept here with LF.",
        },
        "special_tokens": QWEN,
        "more_cases": [
            ([("user", "Hi"), ("assistant", "<think>\nThe user greets me.\n</think>\n\nHello!")], False),
            (
                [
                    ("user", "Hi"),
                    ("assistant", "<think>\nThe user greets me.\n</think>\n\nHello!"),
                    ("user", "Tell me a fact."),
                ],
                True,
            ),
        ],
    },
    {
        "family": "gemma-2-it",
        "template": "gemma-2",
        "source_file": {
            "repo": LLAMA_CPP,
            "path": "tests/chat/templates/google-gemma-7b-it.jinja",
            "commit": "2eb29bf8b8f5970b771ee8dc886c2f0b0d727eff",
            "note": "the same text as models/templates/google-gemma-2-2b-it.jinja (591 bytes, "
            "which the index holds only from forks: as a Git LFS pointer, or with CRLF ends).",
        },
        "special_tokens": GEMMA,
    },
    {
        "family": "gemma-3-it",
        "template": "gemma-3",
        "source_file": {
            "repo": "ShishirPatil/gorilla",
            "path": "berkeley-function-call-leaderboard/bfcl/model_handler/local_inference/gemma.py",
            "commit": "72055c51cf809ba0ee04b4332a3515d7ec8549a5",
            "note": "google/gemma-3's tokenizer_config chat_template, quoted in a docstring. Not "
            "among llama.cpp's files.",
        },
        "special_tokens": GEMMA,
    },
    {
        "family": "phi-3-mini-instruct",
        "template": "phi-3-mini",
        "source_file": {
            "repo": LLAMA_CPP,
            "path": "tests/chat/templates/microsoft-Phi-3-mini-4k-instruct.jinja",
            "commit": "8f46558aa01c878fc3e8c2e76c471b97a307c56c",
        },
        "special_tokens": PHI3,
    },
    {
        "family": "phi-3.5-mini-instruct",
        "template": "phi-3.5-mini",
        "source_file": {
            "repo": LLAMA_CPP,
            "path": "models/templates/microsoft-Phi-3.5-mini-instruct.jinja",
            "commit": "7b5e0803c84435e8005725d8f9ddceb5d1820443",
        },
        "special_tokens": PHI3,
    },
]

# (messages as (role, content), add_generation_prompt). The last two break the user/assistant
# alternation: templates that check it raise, the others render.
CASES = [
    ([("user", "What is the capital of France?")], True),
    ([("user", "What is the capital of France?")], False),
    ([("system", "You are terse."), ("user", "Name a colour.")], True),
    ([("user", "Hi"), ("assistant", "Hello! How can I help?"), ("user", "Tell me a fact.")], True),
    (
        [
            ("system", "You are terse."),
            ("user", "Hi"),
            ("assistant", "Hello!"),
            ("user", "Tell me a fact."),
        ],
        True,
    ),
    ([("user", "  Émile's café — naïve 日本語 🐱\u00a0\nsecond line\n\u3000")], True),
    ([("system", "\n  Answer in French.  "), ("user", "  Bonjour  ")], True),
    ([("user", "Hi"), ("assistant", "  Hello!  \n")], False),
    ([("user", "First."), ("user", "Second.")], True),
    ([("assistant", "I speak first."), ("user", "Hi")], True),
]


def tokenizer(special_tokens):
    return PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER), **special_tokens)


def render(tok, template, messages, add, extra):
    try:
        return {
            "text": tok.apply_chat_template(
                messages,
                chat_template=template,
                tokenize=False,
                add_generation_prompt=add,
                **extra,
            )
        }
    except jinja2.exceptions.TemplateError as e:  # raise_exception in the template
        return {"error": str(e)}


def main():
    families = []
    for family in FAMILIES:
        template = TEMPLATES[family["template"]]
        tok = tokenizer(family["special_tokens"])
        extra = family.get("extra", {})
        cases = []
        for turns, add in CASES + family.get("more_cases", []):
            messages = [{"role": role, "content": content} for role, content in turns]
            case = {"messages": messages, "add_generation_prompt": add, "extra": extra}
            case.update(render(tok, template, messages, add, extra))
            cases.append(case)
        # What the pinned date stands for: without it Llama 3.2's template prints today's date
        # (strftime_now); Llama 3.1's prints its own default.
        unpinned = render(tok, template, [{"role": "user", "content": "Hi"}], True, {})["text"]
        if "strftime_now" in template:
            assert "date_string" in extra, family["family"]
            assert f"Today Date: {datetime.now().strftime('%d %b %Y')}\n" in unpinned
        elif "date_string" in template:
            assert f"Today Date: {PINNED_DATE}\n" in unpinned
        families.append({
            "family": family["family"],
            "source_file": family["source_file"],
            "template": template,
            "special_tokens": {
                k: v for k, v in tok.special_tokens_map.items() if isinstance(v, str)
            },
            "cases": cases,
        })
    OUT.write_text(json.dumps({
        "generator": "tools/make_family_chat_templates.py",
        "transformers": transformers.__version__,
        "jinja2": jinja2.__version__,
        "templates": families,
    }, ensure_ascii=False, indent=1) + "\n")
    n = sum(len(f["cases"]) for f in families)
    errors = sum("error" in c for f in families for c in f["cases"])
    print(f"wrote {OUT}: {len(families)} templates, {n} cases ({errors} raise)")


if __name__ == "__main__":
    main()
