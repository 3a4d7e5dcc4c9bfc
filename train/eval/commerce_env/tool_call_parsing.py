"""Turn generated text into structured tool calls, flagging malformed ones instead of dropping them.

Styles: `qwen3_json` (`<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`) and `qwen3_5_xml`
(`<tool_call>\n<function=NAME>\n<parameter=K>\nV\n</parameter>\n</function>\n</tool_call>`). A flagged call
carries `"invalid": reason`; the env answers it with an error and counts it as an invalid tool call.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

STYLES = ("qwen3_5_xml", "qwen3_json")
_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL)
_FUNCTION = re.compile(r"^\s*<function=([^>\n]+)>(.*)</function>\s*$", re.DOTALL)
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>(.*?)</parameter>", re.DOTALL)


@dataclass
class ParsedReply:
    content: str
    tool_calls: list[dict] = field(default_factory=list)

    def message(self) -> dict:
        """The assistant message the env consumes."""
        msg: dict = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            msg["tool_calls"] = self.tool_calls
        return msg


def _call(name: str, arguments: object, invalid: str = "") -> dict:
    call: dict = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if invalid:
        call["invalid"] = invalid
    return call


def _param_types(tools: list[dict] | None, name: str) -> dict[str, str]:
    for tool in tools or []:
        fn = tool.get("function", tool)
        if fn.get("name") == name:
            return {k: v.get("type", "string") for k, v in fn["parameters"].get("properties", {}).items()}
    return {}


def _xml_value(raw: str, kind: str | None) -> object:
    text = raw[1:] if raw.startswith("\n") else raw
    text = text[:-1] if text.endswith("\n") else text
    if kind == "string":
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if kind is None:
            return text
        raise ValueError(f"value {text!r} is not a {kind}") from None


def _parse_xml(body: str, tools: list[dict] | None) -> dict:
    m = _FUNCTION.match(body)
    if m is None:
        return _call("", {}, f"no <function=...>...</function> in {body.strip()[:80]!r}")
    name = m.group(1).strip()
    inner = m.group(2)
    types = _param_types(tools, name)
    args: dict = {}
    for key, raw in _PARAMETER.findall(inner):
        key = key.strip()
        if key in args:
            return _call(name, args, f"parameter {key!r} given twice")
        try:
            args[key] = _xml_value(raw, types.get(key))
        except ValueError as e:
            return _call(name, args, f"parameter {key!r}: {e}")
    if _PARAMETER.sub("", inner).strip():
        return _call(name, args, f"text outside parameters: {_PARAMETER.sub('', inner).strip()[:80]!r}")
    return _call(name, args)


def _parse_json(body: str) -> dict:
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        return _call("", {}, f"not valid JSON ({e})")
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return _call("", {}, "expected {\"name\": ..., \"arguments\": {...}}")
    args = obj.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError as e:
            return _call(obj["name"], {}, f"arguments are not valid JSON ({e})")
    if not isinstance(args, dict):
        return _call(obj["name"], {}, "arguments are not a JSON object")
    return _call(obj["name"], args)


def parse_tool_calls(text: str, style: str = "qwen3_5_xml", tools: list[dict] | None = None) -> ParsedReply:
    """Split generated text into visible content and tool calls. `tools` (the schemas) types XML values."""
    if style not in STYLES:
        raise ValueError(f"style={style!r}: expected one of {STYLES}")
    text = _THINK.sub("", text)
    calls = []
    for m in _BLOCK.finditer(text):
        if not m.group(0).endswith("</tool_call>"):
            calls.append(_call("", {}, "unterminated <tool_call>"))
            continue
        calls.append(_parse_xml(m.group(1), tools) if style == "qwen3_5_xml" else _parse_json(m.group(1)))
    content = _BLOCK.sub("", text).replace("<|im_end|>", "").strip()
    return ParsedReply(content, calls)
