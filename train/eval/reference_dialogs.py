"""Teacher-forced scores on the held-out reference dialogs: where an agent's failures come from.

Episodes say whether a model completes tasks; these say why not. On the oracle's dialogs for the held-out
scenarios, the model predicts every assistant token given the true history. Every digit an assistant writes
(item and order ids, prices, times, counts, budgets, refund amounts) is copied from the user's words or a tool
result, so the accuracy on digits measures copying from the context: a model that writes typical values
instead of the ones in front of it has high accuracy on the template tokens and low accuracy on digits.
Per tool-call argument (`reference_arg_acc[city]`, `[item_id]`, ...), a value counts only when all its tokens
are right: one wrong digit of an id is a failed order, which per-digit accuracy hides.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from data_pipelines.collate import Collator
from data_pipelines.encode import Encoder, EncodeSpec
from data_pipelines.packing import IGNORE_INDEX
from train.eval.teacher_forcing import teacher_forced


def digit_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of the tokens that decode to digits only (with the demo tokenizer: the ten single digits)."""
    return [i for t, i in tokenizer.get_vocab().items()
            if (text := tokenizer.convert_tokens_to_string([t]).strip()).isascii() and text.isdigit()]


# Argument values of rendered tool calls: Qwen3.5's XML parameters, and Qwen3's JSON "arguments" object.
_XML_ARGUMENT = re.compile(r"<parameter=(\w+)>\n(.*?)\n</parameter>", re.S)
_JSON_ARGUMENTS = re.compile(r'"arguments": (\{.*?\})\}\n</tool_call>', re.S)
_JSON_VALUE = re.compile(r'"(\w+)": ("(?:[^"\\]|\\.)*"|[^,}]+)')


def argument_spans(text: str) -> list[tuple[str, int, int]]:
    """(name, start, end) of each tool-call argument value in rendered chat text; JSON quotes excluded."""
    spans = [(m.group(1), m.start(2), m.end(2)) for m in _XML_ARGUMENT.finditer(text)]
    for block in _JSON_ARGUMENTS.finditer(text):
        for m in _JSON_VALUE.finditer(block.group(1)):
            quoted = int(m.group(2).startswith('"'))
            spans.append((m.group(1), block.start(1) + m.start(2) + quoted, block.start(1) + m.end(2) - quoted))
    return spans


def _argument_results(tokenizer: PreTrainedTokenizerBase, ids: list[int], keep: torch.Tensor,
                      right: torch.Tensor) -> list[tuple[str, bool]] | None:
    """(name, all tokens right) per argument value the assistant wrote; None where offsets cannot be recovered."""
    text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if enc["input_ids"] != list(ids):
        return None
    offsets = enc["offset_mapping"]
    keep, right = keep.tolist(), right.tolist()
    out = []
    for name, a, b in argument_spans(text):
        tokens = [j for j, (s, e) in enumerate(offsets) if j > 0 and s < b and e > a]
        if tokens and all(keep[j - 1] for j in tokens):  # written by the assistant, not quoted back to it
            out.append((name, all(right[j - 1] for j in tokens)))
    return out


@torch.no_grad()
def evaluate_reference_dialogs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, world_dir: str,
                               split: str, limit: int | None, mrope: bool, render_tools: bool,
                               state) -> dict[str, float | int]:
    """Greedy next-token accuracy on assistant tokens, on the digits among them and per tool-call argument value
    (spread over `state`)."""
    from accelerate.utils import gather_object

    path = Path(world_dir) / "dialogs" / f"{split}.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()[:limit]
    encoder = Encoder(tokenizer, EncodeSpec(kind="chat", seq_len=1 << 16, render_tools=render_tools))
    collate = Collator("per_document", mrope=mrope)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    digits = torch.tensor(digit_token_ids(tokenizer), device=model.device)
    local = []
    with state.split_between_processes(list(enumerate(lines))) as mine:
        for n, line in mine:
            counts = torch.zeros(4, dtype=torch.long)  # assistant tokens right, assistant tokens, digits right, digits
            arguments: list[tuple[str, bool]] | None = []
            for sample in encoder(line, f"{path}:{n + 1}"):
                logits, labels = teacher_forced(model, collate, sample, pad)
                keep = labels != IGNORE_INDEX
                right = logits.argmax(-1) == labels
                is_digit = keep & torch.isin(labels, digits)
                counts += torch.stack((right[keep].sum(), keep.sum(), right[is_digit].sum(), is_digit.sum())).cpu()
                found = _argument_results(tokenizer, sample["input_ids"], keep.cpu(), right.cpu())
                arguments = None if found is None or arguments is None else arguments + found
            local.append((counts.tolist(), arguments))
    results = gather_object(local) if state.num_processes > 1 else local
    right, total, digit_right, digit_total = (sum(c[i] for c, _ in results) for i in range(4))
    args_right, args_total = Counter(), Counter()
    for _, arguments in results:
        for name, ok in arguments or []:
            args_total[name] += 1
            args_right[name] += ok
    out = {"reference_assistant_token_acc": right / max(1, total),
           "reference_digit_acc": digit_right / max(1, digit_total),
           "reference_dialogs": len(results), "reference_digits": digit_total,
           "reference_args": sum(args_total.values()),
           "reference_dialogs_without_offsets": sum(arguments is None for _, arguments in results)}
    if args_total:
        out["reference_arg_acc"] = sum(args_right.values()) / sum(args_total.values())
        out.update({f"reference_arg_acc[{k}]": args_right[k] / args_total[k] for k in sorted(args_total)})
    return out
