"""Chat dialogs -> token samples with loss masks, rendered by the model's own chat template.

Each assistant turn is learnt as *generation prompt + completion*: the prompt is the template's
`add_generation_prompt` rendering of everything before the turn, and must be an exact prefix of the
rendered dialog (checked, never assumed); the completion runs from there to the turn's `<|im_end|>`
inclusive (assistant text, `<think>` block, tool calls). System, user and tool-result text carries no loss, nor
does an assistant turn with `"weight": 0` (OpenAI's fine-tuning format: a mistake kept as context for the recovery
that follows it).
Prompt and completion pieces are tokenised separately, as at inference, where the prompt is encoded and
the completion generated.

The unit is one assistant turn rendered as the last turn of the dialog so far. Consecutive units merge into
one sample while each rendering extends the previous one; templates that rewrite history (Qwen3/3.5 drop
the `<think>` block of turns before the last user query, Qwen3 adds an empty one only to the last turn)
start a new sample there, with the rewritten history as its prompt. Samples longer than `seq_len` are split
at turn boundaries (`overlong=split`, counted) or are bad input; an assistant turn is never cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from transformers import PreTrainedTokenizerBase

from data_pipelines.bad_input import BadRecord
from data_pipelines.config import CHAT_TEMPLATES
from data_pipelines.packing import IGNORE_INDEX

IM_END = "<|im_end|>"
IMAGE_PAD = "<|image_pad|>"


def chat_template_text(name: str) -> str:
    if name not in CHAT_TEMPLATES:
        raise ValueError(f"data.chat_template={name!r} is not one of {list(CHAT_TEMPLATES)}")
    return resources.files("data_pipelines").joinpath("chat_templates", f"{name}.jinja").read_text()


@dataclass
class ChatSample:
    """One training sample of a dialog: token ids, labels (IGNORE_INDEX off the completions), its images."""
    input_ids: list[int]
    labels: list[int]
    images: list[str] = field(default_factory=list)
    overlong_split: bool = False


def _render(tok: PreTrainedTokenizerBase, messages: list[dict], tools: list | None, gen: bool, thinking: bool) -> str:
    return tok.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=gen,
                                   enable_thinking=thinking)


def _is_query(m: dict[str, Any]) -> bool:
    if m["role"] != "user":
        return False
    text = m["content"].strip() if isinstance(m["content"], str) else ""
    return not (text.startswith("<tool_response>") and text.endswith("</tool_response>"))


def _has_reasoning(m: dict[str, Any]) -> bool:
    return bool(m.get("reasoning_content")) or (isinstance(m["content"], str) and "</think>" in m["content"])


@dataclass
class _Rendered:
    text: str
    spans: list[tuple[int, int]]
    messages: list[dict]  # the messages rendered (the dialog, or a trimmed copy)


def _turn(tok, messages, j: int, tools, thinking: bool, origin: str) -> _Rendered:
    """Assistant turn j rendered as the last turn of messages[:j+1], with its completion span."""
    m = messages[j]
    try:
        text = _render(tok, messages[:j + 1], tools, False, thinking)
        prompt = _render(tok, messages[:j], tools, True, thinking or _has_reasoning(m))
    except Exception as e:  # jinja's raise_exception and type errors in odd content
        raise BadRecord(origin, "chat template error", str(e)) from None
    if not text.startswith(prompt):
        raise BadRecord(origin, "template prompt mismatch",
                        f"the generation prompt for messages[{j}] is not a prefix of its rendering")
    stop_at = text.find(IM_END, len(prompt))
    if stop_at < 0:
        raise BadRecord(origin, "template prompt mismatch", f"messages[{j}] has no {IM_END}")
    spans = [] if m.get("weight") == 0 else [(len(prompt), stop_at + len(IM_END))]
    return _Rendered(text, spans, messages[:j + 1])


def _trimmed(messages: list[dict], j: int) -> tuple[list[dict], int]:
    """The dialog cut at the turn boundary before the last user query preceding j (system message kept)."""
    q = max(i for i in range(j) if _is_query(messages[i]))
    head = [messages[0]] if messages[0]["role"] == "system" else []
    return head + messages[q:j + 1], len(head) + j - q


def _tokenize(tok: PreTrainedTokenizerBase, r: _Rendered, image_tokens: list[int], image_pad_id: int,
              origin: str) -> tuple[list[int], list[int]]:
    ids: list[int] = []
    labels: list[int] = []
    cursor = 0
    pieces = []
    for s, e in r.spans:
        pieces += [(r.text[cursor:s], False), (r.text[s:e], True)]
        cursor = e
    pieces.append((r.text[cursor:], False))
    images = iter(image_tokens)
    for text, loss in pieces:
        if not text:
            continue
        for t in tok(text, add_special_tokens=False)["input_ids"]:
            if t == image_pad_id:
                n = next(images, None)
                if n is None:
                    raise BadRecord(origin, "image mismatch", "more image placeholders than images")
                ids += [t] * n
                labels += [IGNORE_INDEX] * n
            else:
                ids.append(t)
                labels.append(t if loss else IGNORE_INDEX)
    return ids, labels


def render_dialog(tok: PreTrainedTokenizerBase, messages: list[dict], tools: list | None, seq_len: int,
                  enable_thinking: bool, overlong: str, origin: str,
                  images: dict[str, tuple[str, int]] | None = None) -> list[ChatSample]:
    """Samples of one normalised dialog (see the module docstring); `images[ref] = (path, n_pad_tokens)`."""
    from data_pipelines.chat_format import message_images

    images = images or {}
    image_pad_id = tok.convert_tokens_to_ids(IMAGE_PAD)
    if not any(_is_query(m) for m in messages):
        raise BadRecord(origin, "malformed chat", "no user query (only tool results)")

    def encode(r: _Rendered) -> ChatSample:
        refs = message_images(r.messages)
        ids, labels = _tokenize(tok, r, [images[x][1] for x in refs], image_pad_id, origin)
        return ChatSample(ids, labels, [images[x][0] for x in refs])

    chains: list[tuple[_Rendered, ChatSample, bool]] = []
    for j, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        if not any(_is_query(x) for x in messages[:j]):
            raise BadRecord(origin, "malformed chat", f"messages[{j}] is an assistant turn before any user query")
        unit = _turn(tok, messages, j, tools, enable_thinking, origin)
        sample = encode(unit)
        split = False
        if chains and unit.text.startswith(chains[-1][0].text):
            prev, _, prev_split = chains[-1]
            merged = _Rendered(unit.text, prev.spans + unit.spans, unit.messages)
            merged_sample = encode(merged)
            if overlong == "error" or len(merged_sample.input_ids) <= seq_len:
                chains[-1] = (merged, merged_sample, prev_split)
                continue
            split = True  # would have continued the previous sample, but the result is too long
        if overlong == "split" and len(sample.input_ids) > seq_len:
            cut, k = _trimmed(messages, j)
            if len(cut) < j + 1:
                unit = _turn(tok, cut, k, tools, enable_thinking, origin)
                sample = encode(unit)
                split = True
        chains.append((unit, sample, split))
    out = []
    for _, sample, split in chains:
        if len(sample.input_ids) > seq_len:
            raise BadRecord(origin, "sample longer than the context",
                            f"{len(sample.input_ids)} tokens > data.seq_len={seq_len}"
                            + (" after splitting at turn boundaries" if overlong == "split" else ""))
        sample.overlong_split = split
        out.append(sample)
    return out
