"""Chat dialogs -> token samples with loss masks, rendered by the model's own chat template.

Each assistant turn is learnt as *generation prompt + completion*: the prompt is the template's
`add_generation_prompt` rendering of everything before the turn, and must be an exact prefix of the
rendered dialog (checked, never assumed); the completion runs from there to the turn's `<|im_end|>`
inclusive (assistant text, `<think>` block, tool calls). System, user and tool-result text carries no loss.
Prompt and completion pieces are tokenised separately, as at inference, where the prompt is encoded and
the completion generated.

Templates that rewrite history (Qwen3/3.5 drop the `<think>` block of turns before the last user query)
make one sample per user query (its full history as prompt, loss on its own assistant turns); templates
whose renderings extend each other merge into one sample. Samples longer than `seq_len` are split at
user-query boundaries (`overlong=split`, counted) or are bad input; a turn is never cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from transformers import PreTrainedTokenizerBase

from data_pipelines.bad_input import BadRecord
from data_pipelines.packing import IGNORE_INDEX

IM_END = "<|im_end|>"
IMAGE_PAD = "<|image_pad|>"
CHAT_TEMPLATES = ("qwen3_5", "qwen3")


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
    end: int  # messages[:end] are rendered


def _episodes(tok, messages, tools, thinking: bool, origin: str) -> list[_Rendered]:
    queries = [i for i, m in enumerate(messages) if _is_query(m)]
    bounds = queries[1:] + [len(messages)]
    out = []
    for start, stop in zip(queries, bounds, strict=True):
        turns = [j for j in range(start, stop) if messages[j]["role"] == "assistant"]
        if not turns:
            continue
        end = turns[-1] + 1
        try:
            text = _render(tok, messages[:end], tools, False, thinking)
            spans = []
            for j in turns:
                prompt = _render(tok, messages[:j], tools, True, thinking or _has_reasoning(messages[j]))
                if not text.startswith(prompt):
                    raise BadRecord(origin, "template prompt mismatch",
                                    f"the generation prompt for messages[{j}] is not a prefix of the rendered dialog")
                stop_at = text.find(IM_END, len(prompt))
                if stop_at < 0:
                    raise BadRecord(origin, "template prompt mismatch", f"messages[{j}] has no {IM_END}")
                spans.append((len(prompt), stop_at + len(IM_END)))
        except BadRecord:
            raise
        except Exception as e:  # jinja's raise_exception and type errors in odd content
            raise BadRecord(origin, "chat template error", str(e)) from None
        out.append(_Rendered(text, spans, end))
    return out


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
                  image_tokens: list[int] | None = None, images: list[str] | None = None) -> list[ChatSample]:
    """Samples of one normalised dialog (see the module docstring); `image_tokens[i]` pads for image i."""
    image_tokens = image_tokens or []
    images = images or []
    image_pad_id = tok.convert_tokens_to_ids(IMAGE_PAD)
    episodes = _episodes(tok, messages, tools, enable_thinking, origin)

    def n_images(r: _Rendered) -> int:
        return sum(1 for m in messages[:r.end] if isinstance(m["content"], list)
                   for p in m["content"] if isinstance(p, dict) and (p.get("type") == "image" or "image" in p))

    def encode(r: _Rendered) -> ChatSample:
        k = n_images(r)
        ids, labels = _tokenize(tok, r, image_tokens[:k], image_pad_id, origin)
        return ChatSample(ids, labels, images[:k])

    chains: list[tuple[_Rendered, ChatSample, bool]] = []
    for ep in episodes:
        sample = encode(ep)
        if chains and ep.text.startswith(chains[-1][0].text):
            prev, _, split = chains[-1]
            merged = _Rendered(ep.text, prev.spans + ep.spans, ep.end)
            merged_sample = encode(merged)
            if overlong == "error" or len(merged_sample.input_ids) <= seq_len:
                chains[-1] = (merged, merged_sample, split)
                continue
            chains.append((ep, sample, True))
            continue
        chains.append((ep, sample, False))
    out = []
    for _, sample, split in chains:
        if len(sample.input_ids) > seq_len:
            raise BadRecord(origin, "sample longer than the context",
                            f"{len(sample.input_ids)} tokens > data.seq_len={seq_len}"
                            + (" after splitting at user turns" if overlong == "split" else ""))
        sample.overlong_split = split
        out.append(sample)
    return out
