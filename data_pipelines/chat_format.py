"""Chat records -> the OpenAI `messages` (with `tools` and `tool_calls`) the chat template renders, validated.

Records of every chat format are converted by `record_formats.to_chat` first (ShareGPT, ms-swift agent roles,
Alpaca, query/response, `<image>` placeholders). `validate_messages` then raises BadRecord for an unknown role,
a tool call whose arguments are not a JSON object, or a dialog without a user or assistant turn. Tool-call
arguments (a JSON string in OpenAI's format) become dicts, which both templates render.
"""

from __future__ import annotations

import json
from typing import Any

from data_pipelines.bad_input import BadRecord

ROLES = ("system", "user", "assistant", "tool")


def _arguments(args: Any, where: str, origin: str) -> dict[str, Any]:
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise BadRecord(origin, "invalid tool call arguments", f"{where}.arguments is not valid JSON: {e}") from None
    if not isinstance(args, dict):
        raise BadRecord(origin, "invalid tool call arguments", f"{where}.arguments is a {type(args).__name__}, "
                        "not a JSON object")
    return args


def normalize_dialog(record: dict[str, Any], origin: str, fmt: str = "auto") -> tuple[list[dict[str, Any]],
                                                                                  list[dict] | None]:
    """(messages, tools) of a record in chat format `fmt` (`auto`: guessed from the record), validated."""
    from data_pipelines.record_formats import to_chat

    raw, tools, _ = to_chat(record, fmt, origin)
    return validate_messages(raw, origin), tools


def validate_messages(raw: Any, origin: str) -> list[dict[str, Any]]:
    """OpenAI messages ready for the chat template: roles, tool calls and turn order checked."""
    if not isinstance(raw, list) or not raw:
        raise BadRecord(origin, "malformed chat", "'messages' is not a non-empty list")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            role = m.get("role") if isinstance(m, dict) else m
            raise BadRecord(origin, "unknown role", f"messages[{i}].role={role!r} (expected one of {list(ROLES)})")
        msg = {"role": m["role"], "content": m.get("content") if m.get("content") is not None else ""}
        if m["role"] == "assistant":
            if m.get("reasoning_content") is not None:
                msg["reasoning_content"] = m["reasoning_content"]
            calls = []
            for j, call in enumerate(m.get("tool_calls") or []):
                fn = call.get("function", call) if isinstance(call, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise BadRecord(origin, "malformed chat", f"messages[{i}].tool_calls[{j}] has no function name")
                args = _arguments(fn.get("arguments", {}), f"messages[{i}].tool_calls[{j}]", origin)
                calls.append({"type": "function", "function": {"name": fn["name"], "arguments": args}})
            if calls:
                msg["tool_calls"] = calls
            if m.get("weight") is not None:  # OpenAI fine-tuning format: 0 keeps a turn in context, learns nothing
                if m["weight"] not in (0, 1) or isinstance(m["weight"], bool):
                    raise BadRecord(origin, "malformed chat", f"messages[{i}].weight={m['weight']!r} (expected 0 or 1)")
                msg["weight"] = m["weight"]
        if m["role"] == "system" and i != 0:
            raise BadRecord(origin, "malformed chat", f"messages[{i}] is a system message after the start")
        messages.append(msg)
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRecord(origin, "malformed chat", "no assistant turn to learn from")
    if not any(m["role"] == "user" for m in messages):
        raise BadRecord(origin, "malformed chat", "no user turn")
    return messages


def message_images(messages: list[dict[str, Any]]) -> list[str]:
    """Image references of content parts, in the order the template renders their `<|image_pad|>`."""
    out = []
    for m in messages:
        if isinstance(m.get("content"), list):
            for part in m["content"]:
                if isinstance(part, dict) and (part.get("type") == "image" or "image" in part):
                    ref = part.get("image") or part.get("image_url")
                    out.append(ref["url"] if isinstance(ref, dict) else ref)
    return out
