"""ChatML chat templates per family, for tokenizers that were trained here and carry none.

Both follow the released Qwen conventions (CONTEXT.md §2): tools listed in the system turn inside
`<tools>...</tools>`; tool results come back in a user turn inside `<tool_response>...</tool_response>`;
Qwen3 writes tool calls as JSON, Qwen3.5 as XML (`<function=NAME><parameter=K>V</parameter></function>`);
`enable_thinking=false` renders an empty think block at the start of the assistant turn.
"""

from __future__ import annotations

_TOOLS_SYSTEM = (
    "{% if tools %}<|im_start|>system\n"
    "{% if messages and messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}"
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
    "{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools>\n\n{TOOL_CALL_HINT}<|im_end|>\n"
    "{% elif messages and messages[0].role == 'system' %}"
    "<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n{% endif %}"
)

_TURNS = (
    "{% for message in messages %}"
    "{% if message.role == 'system' and loop.first %}"
    "{% elif message.role == 'tool' %}"
    "{% if loop.first or messages[loop.index0 - 1].role != 'tool' %}<|im_start|>user{% endif %}"
    "\n<tool_response>\n{{ message.content }}\n</tool_response>"
    "{% if loop.last or messages[loop.index0 + 1].role != 'tool' %}<|im_end|>\n{% endif %}"
    "{% elif message.role == 'assistant' %}<|im_start|>assistant\n"
    "{% if message.reasoning_content is defined and message.reasoning_content %}"
    "<think>\n{{ message.reasoning_content }}\n</think>\n\n{% endif %}"
    "{{ message.content if message.content is string else '' }}"
    "{% for call in (message.tool_calls or []) %}{% set fn = call.function if call.function is defined else call %}"
    "{TOOL_CALL}{% endfor %}<|im_end|>\n"
    "{% else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)

_JSON_CALL = ("{% if loop.first and message.content %}\n{% endif %}"
              "<tool_call>\n{\"name\": \"{{ fn.name }}\", \"arguments\": {{ fn.arguments | tojson }}}\n</tool_call>")
_XML_CALL = ("{% if loop.first and message.content %}\n{% endif %}"
             "<tool_call>\n<function={{ fn.name }}>{% for k, v in fn.arguments.items() %}"
             "\n<parameter={{ k }}>\n{{ v if v is string else v | tojson }}\n</parameter>{% endfor %}"
             "\n</function>\n</tool_call>")
_JSON_HINT = ("For each function call, return a json object with function name and arguments within "
              "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
              "\"arguments\": <args-json-object>}\n</tool_call>")
_XML_HINT = ("For each function call, write it within <tool_call></tool_call> XML tags:\n<tool_call>\n"
             "<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n</parameter>\n"
             "</function>\n</tool_call>")


def _template(call: str, hint: str) -> str:
    text = _TOOLS_SYSTEM.replace("{TOOL_CALL_HINT}", hint) + _TURNS.replace("{TOOL_CALL}", call)
    # transformers renders with trim_blocks: a newline right after a block tag must be an expression.
    return text.replace("%}\n", "%}{{ '\\n' }}")


CHAT_TEMPLATES = {
    "qwen3_moe": _template(_JSON_CALL, _JSON_HINT),
    "qwen3_5_moe": _template(_XML_CALL, _XML_HINT),
}
