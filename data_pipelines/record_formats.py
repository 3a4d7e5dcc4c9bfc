"""The record formats users bring, detected per source and converted to one shape: OpenAI chat messages or text.

Chat formats (each as LLaMA-Factory and ms-swift read them):
- `messages`: OpenAI `messages` (content strings or parts `text`/`image`/`image_url`, assistant `tool_calls`, `tool`
  results), ms-swift's agent roles (`tool_call` turns whose content is the JSON of one call or a list of calls,
  `tool_response`), and the role-tag variant (role/content turns under `conversations`).
- `sharegpt`: `conversations` of `{from, value}` with human/gpt/system/function_call/observation (several
  function_call turns in a row are parallel calls), or ms-swift's `[{human, assistant}]` pairs.
- `alpaca`: `instruction` + `input` (joined by a newline, as both projects do) -> `output`, optional `history` of
  [query, response] pairs.
- `query_response`: `query`/`response` (ms-swift) or `prompt`/`completion` (strings, or lists of messages:
  the prompt's assistant turns are context, only the completion is learnt).
All of them take a top-level `system`, `tools` (a list, or a JSON string of one; bare function schemas are wrapped
as `{"type": "function", "function": ...}`, the OpenAI form Qwen's templates render), and LLaVA-style images:
`<image>` placeholders in user or tool text matched in order with an `images` list (`image` when there is no
`images`). A source's `columns` renames the file's keys to these (ours -> the file's) before anything else.

Detection looks at a source's first records (`detect_format`); each record is then converted with that format
(`to_chat`) and anything that does not fit is a BadRecord naming the record, its keys and the formats tried.
Keys a format does not read are left alone unless they look like media (`unused_media`): those are a counted
warning, video and audio an error (they cannot be trained here).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from data_pipelines.bad_input import BadInput, BadRecord
from data_pipelines.config import CHAT_FORMATS

IMAGE_PLACEHOLDER = "<image>"
TURN_KEYS = ("messages", "conversations", "conversation")
ROLE_ALIASES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "bot": "assistant",
                "system": "system", "tool": "tool", "tool_response": "tool", "observation": "tool",
                "function_response": "tool", "tool_call": "tool_call", "function_call": "tool_call"}
FORMAT_KEYS = {
    "messages": ("system", "tools", "images"),
    "sharegpt": ("system", "tools", "images"),
    "alpaca": ("instruction", "input", "output", "system", "history", "tools", "images"),
    "query_response": ("query", "response", "prompt", "completion", "system", "history", "tools", "images"),
}
TRIED = ("messages ('messages' or 'conversations': a list of role/content turns), "
         "sharegpt ('conversations': a list of from/value turns), alpaca (instruction, input, output), "
         "query_response (query/response or prompt/completion)")
_MEDIA_WORDS = {"image", "images", "img", "imgs", "picture", "pictures", "pic", "pics", "photo", "photos", "video",
                "videos", "audio", "audios", "media", "frames", "thumbnail", "screenshot", "screenshots"}
_MEDIA_VALUE = re.compile(r"(\.(png|jpe?g|gif|bmp|webp|tiff?|mp4|avi|mov|mkv|webm|wav|mp3|flac|ogg|m4a)$)|"
                          r"^(data:(image|video|audio)/)", re.I)
UNSUPPORTED_MEDIA = ("videos", "video", "audios", "audio")


@dataclass(frozen=True)
class SourceFormat:
    """What `detect_format` found for a source: the format and, for text sources, the field the text is in."""
    format: str
    text_field: str = "text"
    reason: str = ""


def apply_columns(value: dict, columns: tuple[tuple[str, str], ...], origin: str) -> dict:
    """The record with the file's keys renamed to ours (`columns`: ours -> the file's)."""
    if not columns:
        return value
    out = dict(value)
    for ours, theirs in columns:
        if theirs not in value or ours == theirs:
            continue
        if ours in value:
            raise BadRecord(origin, "malformed record", f"columns.{ours}={theirs!r}, but the record also has "
                            f"{ours!r} (keys: {sorted(value)})")
        out[ours] = out.pop(theirs)
    return out


def _turn_key(value: dict) -> str | None:
    return next((k for k in TURN_KEYS if isinstance(value.get(k), (list, str))), None)


def guess_chat_format(value: dict) -> str | None:
    """The chat format one record is in, or None."""
    key = _turn_key(value)
    if key is not None:
        turns = _json_list(value[key])
        first = next((t for t in turns or [] if isinstance(t, dict)), None)
        if first is not None and ("from" in first or "value" in first or set(first) <= {"human", "assistant"}):
            return "sharegpt"
        return "messages"
    if "output" in value or "instruction" in value:
        return "alpaca"
    if ("query" in value and "response" in value) or ("prompt" in value and "completion" in value):
        return "query_response"
    return None


def detect_format(values: list[tuple[dict, str]], kind: str, requested: str, columns: tuple[tuple[str, str], ...],
                  text_field: str, where: str) -> SourceFormat:
    """A source's format from its first records (`values`: (record, origin) pairs, columns not applied yet).

    Raises BadInput when no record is recognised, when the first records mix formats, or when a `columns` entry
    names a key none of them has.
    """
    for ours, theirs in columns:
        if values and not any(theirs in v for v, _ in values):
            keys = sorted({k for v, _ in values for k in v})
            raise BadInput(f"{where}: columns.{ours}={theirs!r}, but no record among the first {len(values)} has "
                           f"the key {theirs!r} (keys: {keys})")
    renamed = [(apply_columns(v, columns, o), o) for v, o in values]
    if kind == "chat":
        return _detect_chat(renamed, requested, where)
    if kind == "text":
        return _detect_text(renamed, text_field, where)
    return SourceFormat(kind)


def _detect_chat(values: list[tuple[dict, str]], requested: str, where: str) -> SourceFormat:
    if requested != "auto":
        return SourceFormat(requested, reason="named by the source")
    first: dict[str, str] = {}
    counts: Counter[str] = Counter()
    for v, origin in values:
        fmt = guess_chat_format(v)
        if fmt is not None:
            counts[fmt] += 1
            first.setdefault(fmt, origin)
    if not counts:
        v, origin = values[0] if values else ({}, where)
        raise BadInput(f"{origin}: record format not recognised (keys: {sorted(v)}); tried {TRIED}. Rename keys with "
                       "the source's columns, or name the format with format:")
    if len(counts) > 1:
        found = ", ".join(f"{f} ({first[f]})" for f in counts)
        raise BadInput(f"{where}: the first records mix formats: {found}; give each format its own source")
    fmt = next(iter(counts))
    return SourceFormat(fmt, reason=f"detected from {counts[fmt]} of the first {len(values)} records")


def _detect_text(values: list[tuple[dict, str]], text_field: str, where: str) -> SourceFormat:
    candidates = [text_field] + (["content"] if text_field == "text" else [])
    for name in candidates:
        n = sum(1 for v, _ in values if isinstance(v.get(name), str))
        if n:
            return SourceFormat("text", name, f"field {name!r} in {n} of the first {len(values)} records")
    v, origin = values[0] if values else ({}, where)
    tried = " or ".join(repr(c) for c in candidates)
    raise BadInput(f"{origin}: no text field {tried} in the first records (keys: {sorted(v)}); set the source's "
                   "text_field")


def text_of(value: dict, field: str, origin: str) -> str:
    if field not in value:
        raise BadRecord(origin, "missing field", f"no {field!r} (keys: {sorted(value)})")
    if not isinstance(value[field], str):
        raise BadRecord(origin, "malformed record", f"{field!r} is a {type(value[field]).__name__}, not text")
    return value[field]


# ---- chat formats -> OpenAI messages ----

def _json_list(value: Any) -> list | None:
    """A list, or the list a JSON string holds (CSV and parquet files often store them as text)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    return value if isinstance(value, list) else None


def _calls(content: Any, where: str, origin: str) -> list[dict]:
    """The tool calls of a function_call / tool_call turn: JSON of {"name", "arguments"} or a list of them."""
    if isinstance(content, str):
        try:
            content = json.loads(content)
        except json.JSONDecodeError as e:
            raise BadRecord(origin, "invalid tool call arguments", f"{where} function_call is not JSON: {e}") from None
    calls = content if isinstance(content, list) else [content]
    out = []
    for j, call in enumerate(calls):
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise BadRecord(origin, "malformed chat", f"{where} call {j} has no function name ({call!r:.80})")
        extra = set(call) - {"name", "arguments", "id", "type"}
        if extra:
            raise BadRecord(origin, "malformed chat", f"{where} call {j} has keys {sorted(extra)} besides name and "
                            "arguments")
        fn = {"name": call["name"], "arguments": call.get("arguments", {})}
        out.append({"type": "function", "function": fn, **({"id": call["id"]} if "id" in call else {})})
    return out


def _loss_weight(turn: dict, where: str, origin: str) -> int | None:
    """ms-swift's per-turn `loss` (true/false) and `loss_scale` (0 or 1 here) as OpenAI's `weight`."""
    if "loss" in turn and turn["loss"] is not None:
        if not isinstance(turn["loss"], bool):
            raise BadRecord(origin, "malformed chat", f"{where}.loss={turn['loss']!r} (expected true or false)")
        return int(turn["loss"])
    if "loss_scale" in turn and turn["loss_scale"] is not None:
        if turn["loss_scale"] not in (0, 1) or isinstance(turn["loss_scale"], bool):
            raise BadRecord(origin, "malformed chat", f"{where}.loss_scale={turn['loss_scale']!r}: only 0 or 1 is "
                            "supported")
        return int(turn["loss_scale"])
    return None


def _turns(items: list[tuple[str, Any, dict, str]], origin: str) -> list[dict]:
    """(role alias, content, the turn's other keys, where) -> messages; tool-call turns join the assistant turn
    before them (a text turn followed by calls, or several calls in a row: parallel calls)."""
    out: list[dict] = []
    for alias, content, extra, where in items:
        role = ROLE_ALIASES[alias]
        weight = _loss_weight(extra, where, origin)
        if role == "tool_call":
            calls = _calls(content, where, origin)
            if out and out[-1]["role"] == "assistant":
                prev = out[-1]
                if weight is not None and weight != prev.get("weight", 1):
                    raise BadRecord(origin, "malformed chat", f"{where}: a tool call with another loss setting than "
                                    "the assistant turn it belongs to")
                prev["tool_calls"] = list(prev.get("tool_calls") or []) + calls
                continue
            msg: dict[str, Any] = {"role": "assistant", "content": "", "tool_calls": calls}
        else:
            msg = {k: v for k, v in extra.items() if k not in ("loss", "loss_scale")}
            msg["role"] = role
            msg["content"] = content
        if weight is not None:
            msg["weight"] = weight
        out.append(msg)
    return out


OPENAI_ROLES = ("user", "assistant", "system", "tool")


def _from_messages(turns: list, key: str, origin: str) -> list[dict]:
    items = []
    for i, m in enumerate(turns):
        if not isinstance(m, dict):
            raise BadRecord(origin, "malformed chat", f"{key}[{i}] is a {type(m).__name__}, not an object")
        if m.get("role") not in ROLE_ALIASES:
            raise BadRecord(origin, "unknown role", f"{key}[{i}].role={m.get('role')!r} (expected one of "
                            f"{sorted(ROLE_ALIASES)})")
        items.append((m["role"], m.get("content"), {k: v for k, v in m.items() if k not in ("role", "content")},
                      f"{key}[{i}]"))
    if all(role in OPENAI_ROLES and not {"loss", "loss_scale"} & set(extra) for role, _, extra, _ in items):
        return [dict(m) for m in turns]  # already OpenAI messages: kept exactly as written
    return _turns(items, origin)


def _from_sharegpt(turns: list, key: str, origin: str) -> list[dict]:
    items = []
    for i, t in enumerate(turns):
        if isinstance(t, dict) and "from" not in t and set(t) <= {"human", "assistant"} and t:
            items += [("human", t.get("human", ""), {}, f"{key}[{i}].human"),
                      ("assistant", t.get("assistant", ""), {}, f"{key}[{i}].assistant")]
            continue
        if not isinstance(t, dict) or "from" not in t:
            raise BadRecord(origin, "malformed chat", f"{key}[{i}] has no 'from'")
        if t["from"] not in ROLE_ALIASES:
            raise BadRecord(origin, "unknown role", f"{key}[{i}].from={t['from']!r} (ShareGPT roles: "
                            f"{sorted(ROLE_ALIASES)})")
        extra = {k: v for k, v in t.items() if k not in ("from", "value")}
        items.append((t["from"], t.get("value", ""), extra, f"{key}[{i}]"))
    return _turns(items, origin)


def _text_field(value: dict, key: str, origin: str, required: bool = False) -> str:
    v = value.get(key)
    if v is None:
        if required:
            raise BadRecord(origin, "missing field", f"no {key!r} (keys: {sorted(value)})")
        return ""
    if not isinstance(v, str):
        raise BadRecord(origin, "malformed record", f"{key!r} is a {type(v).__name__}, not text")
    return v


def _history(value: dict, origin: str) -> list[dict]:
    if value.get("history") in (None, "", []):
        return []
    pairs = _json_list(value["history"])
    out = []
    for i, pair in enumerate(pairs if pairs is not None else [None]):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise BadRecord(origin, "malformed record", f"history[{i}] is not a [query, response] pair of strings")
        out += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return out


def _from_alpaca(value: dict, origin: str) -> list[dict]:
    query = "\n".join(x for x in (_text_field(value, "instruction", origin), _text_field(value, "input", origin)) if x)
    if not query:
        raise BadRecord(origin, "malformed record", f"empty 'instruction' and 'input' (keys: {sorted(value)})")
    output = _text_field(value, "output", origin, required=True)
    return _history(value, origin) + [{"role": "user", "content": query}, {"role": "assistant", "content": output}]


def _from_query_response(value: dict, origin: str) -> list[dict]:
    if "query" in value or "response" in value:
        query = _text_field(value, "query", origin, required=True)
        return _history(value, origin) + [{"role": "user", "content": query},
                                          {"role": "assistant", "content": _text_field(value, "response", origin,
                                                                                       required=True)}]
    prompt, completion = value.get("prompt"), value.get("completion")
    if isinstance(prompt, list) and isinstance(completion, list):  # conversational prompt-completion (TRL)
        context = [dict(m, weight=0) if isinstance(m, dict) and m.get("role") == "assistant" else m for m in prompt]
        return _from_messages(context, "prompt", origin) + _from_messages(completion, "completion", origin)
    query = _text_field(value, "prompt", origin, required=True)
    return _history(value, origin) + [{"role": "user", "content": query},
                                      {"role": "assistant", "content": _text_field(value, "completion", origin,
                                                                                   required=True)}]


def parse_tools(raw: Any, origin: str) -> list[dict] | None:
    """`tools` as a list of OpenAI function tools; a JSON string of a list is read, anything else is bad input."""
    if raw is None or raw == "" or raw == []:
        return None
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError as e:
            raise BadRecord(origin, "malformed tools", f"'tools' is a string that is not JSON: {e}") from None
        if not isinstance(parsed, list):
            raise BadRecord(origin, "malformed tools", f"'tools' is a JSON string of a {type(parsed).__name__}, "
                            "not of a list of function schemas")
        raw = parsed
    if not isinstance(raw, list):
        raise BadRecord(origin, "malformed tools", f"'tools' is a {type(raw).__name__}, not a list of function "
                        "schemas or a JSON string of one")
    out = []
    for j, tool in enumerate(raw):
        if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("function"), dict):
            out.append(tool)
        elif isinstance(tool, dict) and isinstance(tool.get("name"), str):
            out.append({"type": "function", "function": tool})
        else:
            raise BadRecord(origin, "malformed tools", f"tools[{j}] is not a function schema ({tool!r:.80})")
    return out or None


def _with_system(messages: list[dict], value: dict, origin: str) -> list[dict]:
    system = value.get("system")
    if system in (None, ""):
        return messages
    if not isinstance(system, str):
        raise BadRecord(origin, "malformed record", f"'system' is a {type(system).__name__}, not text")
    if messages and messages[0].get("role") == "system":
        if messages[0].get("content") != system:
            raise BadRecord(origin, "malformed chat", "both a system message and a different 'system' field")
        return messages
    return [{"role": "system", "content": system}] + messages


def _image_refs(value: dict, origin: str) -> tuple[list[str], str | None]:
    """The `images` list (or `image` where there is no `images`) and the key it came from."""
    key = "images" if "images" in value else ("image" if "image" in value else None)
    if key is None or value[key] in (None, "", []):
        return [], key
    raw = value[key]
    items = raw if isinstance(raw, list) else [raw]
    refs = []
    for j, item in enumerate(items):
        if isinstance(item, dict):
            if not item.get("path"):
                raise BadRecord(origin, "unsupported image", f"{key}[{j}] holds no path (embedded image bytes are not "
                                "read: save the images as files and list their paths)")
            item = item["path"]
        if not isinstance(item, str):
            raise BadRecord(origin, "malformed record", f"{key}[{j}] is a {type(item).__name__}, not an image path")
        refs.append(item)
    return refs, key


def _split_placeholders(text: str, refs: list[str]) -> list[dict]:
    pieces = text.split(IMAGE_PLACEHOLDER)
    parts: list[dict] = []
    for i, piece in enumerate(pieces):
        if i:
            parts.append({"type": "image", "image": refs.pop(0)})
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


def _count_placeholders(content: Any) -> int:
    if isinstance(content, str):
        return content.count(IMAGE_PLACEHOLDER)
    if isinstance(content, list):
        return sum(p.get("text", "").count(IMAGE_PLACEHOLDER) for p in content
                   if isinstance(p, dict) and isinstance(p.get("text"), str))
    return 0


def _part_image(part: Any) -> str | None:
    """The image reference of a content part (`image`, or OpenAI's `image_url` as a string or {"url": ...})."""
    if not isinstance(part, dict):
        return None
    if part.get("type") == "image" or "image" in part:
        return part.get("image")
    if part.get("type") == "image_url" or "image_url" in part:
        url = part.get("image_url")
        return url.get("url") if isinstance(url, dict) else url
    return None


def place_images(messages: list[dict], value: dict, origin: str) -> tuple[list[dict], str | None]:
    """`<image>` placeholders replaced, in order, by image parts of the record's `images`; `image_url` parts become
    image parts. Returns the messages and the key whose images they use (None: no such key)."""
    counts = [_count_placeholders(m.get("content")) for m in messages]
    n = sum(counts)
    part_refs = {_part_image(p) for m in messages if isinstance(m.get("content"), list) for p in m["content"]}
    refs, key = _image_refs(value, origin) if n or value.get("images") not in (None, "", []) else ([], None)
    if n == 0 and refs:
        if set(refs) <= part_refs:  # the images of the content parts, listed again
            return _normalise_parts(messages, counts, []), key
        raise BadRecord(origin, "image mismatch", f"0 {IMAGE_PLACEHOLDER} placeholders but {len(refs)} image(s) in "
                        f"{key!r}")
    for m, c in zip(messages, counts, strict=True):
        if c and m["role"] not in ("user", "tool"):
            raise BadRecord(origin, "image mismatch", f"an {IMAGE_PLACEHOLDER} placeholder in a {m['role']} turn "
                            "(images are inputs: user or tool turns)")
    if n != len(refs):
        raise BadRecord(origin, "image mismatch", f"{n} {IMAGE_PLACEHOLDER} placeholder(s) but {len(refs)} image(s)"
                        + (f" in {key!r}" if key else " (no 'images' list)"))
    return _normalise_parts(messages, counts, list(refs)), key


def _normalise_parts(messages: list[dict], counts: list[int], refs: list[str]) -> list[dict]:
    out = []
    for m, c in zip(messages, counts, strict=True):
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for p in content:
                ref = _part_image(p)
                if ref is not None and isinstance(p, dict) and "image" not in p:
                    parts.append({"type": "image", "image": ref})
                elif c and isinstance(p, dict) and isinstance(p.get("text"), str) and IMAGE_PLACEHOLDER in p["text"]:
                    parts += _split_placeholders(p["text"], refs)
                else:
                    parts.append(p)
            if parts != content:
                m = {**m, "content": parts}
        elif c:
            m = {**m, "content": _split_placeholders(content, refs)}
        out.append(m)
    return out


def to_chat(value: dict, fmt: str, origin: str) -> tuple[list[dict], list[dict] | None, set[str]]:
    """(messages, tools, the record keys it read) of one record in chat format `fmt` (`auto`: guessed per record)."""
    if fmt == "auto":
        fmt = guess_chat_format(value) or ""
    if fmt not in CHAT_FORMATS or (fmt in ("messages", "sharegpt") and _turn_key(value) is None):
        raise BadRecord(origin, "record format not recognised", f"keys {sorted(value)}; tried {TRIED}")
    used = set(FORMAT_KEYS[fmt])
    if fmt in ("messages", "sharegpt"):
        key = _turn_key(value)
        used.add(key)
        turns = _json_list(value[key])
        if turns is None:
            raise BadRecord(origin, "malformed chat", f"{key!r} is not a list of turns")
        messages = (_from_messages if fmt == "messages" else _from_sharegpt)(turns, key, origin)
    elif fmt == "alpaca":
        if "output" not in value and "instruction" not in value:
            raise BadRecord(origin, "record format not recognised", f"not an alpaca record: keys {sorted(value)}; "
                            f"tried {TRIED}")
        messages = _from_alpaca(value, origin)
    else:
        if not ({"query", "response"} & set(value) or {"prompt", "completion"} & set(value)):
            raise BadRecord(origin, "record format not recognised", f"not a query_response record: keys "
                            f"{sorted(value)}; tried {TRIED}")
        messages = _from_query_response(value, origin)
    messages = _with_system(messages, value, origin)
    messages, image_key = place_images(messages, value, origin)
    if image_key:
        used.add(image_key)
    return messages, parse_tools(value.get("tools"), origin), used


def media_values(value: Any) -> list[str]:
    """The strings a value holds (a string, a list of them, dicts with a path/url)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [x for k in ("path", "url") if isinstance(value.get(k), str) for x in [value[k]]]
    if isinstance(value, list):
        return [x for v in value for x in media_values(v)]
    return []


def _looks_like_media(key: str, value: Any) -> bool:
    words = {w.lower() for w in re.split(r"[^A-Za-z]+|(?<=[a-z])(?=[A-Z])", key) if w}
    return bool(words & _MEDIA_WORDS) or any(_MEDIA_VALUE.search(v.strip()) for v in media_values(value))


def unused_media(value: dict, used_keys: set[str], used_refs: set[str], origin: str) -> list[str]:
    """Keys not read that look like media: video/audio is a BadRecord; the rest are returned (counted warnings)
    unless every value they hold is an image the sample already carries."""
    out = []
    for key, v in value.items():
        if key in used_keys or v in (None, "", [], {}):
            continue
        if key in UNSUPPORTED_MEDIA:
            raise BadRecord(origin, "unsupported media", f"{key!r}: video and audio inputs are not supported")
        if _looks_like_media(key, v) and not set(media_values(v)) <= used_refs:
            out.append(key)
    return out
