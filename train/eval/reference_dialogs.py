"""Teacher-forced scores on the held-out reference dialogs: where an agent's failures come from.

Episodes say whether a model completes tasks; these say why not. On the oracle's dialogs for the held-out
scenarios, the model predicts every assistant token given the true history. Every digit an assistant writes
(item and order ids, prices, times, counts, budgets, refund amounts) is copied from the user's words or a tool
result, so the accuracy on digits measures copying from the context: a model that writes typical values
instead of the ones in front of it has high accuracy on the template tokens and low accuracy on digits.
Per tool-call argument (`reference_arg_acc[city]`, `[item_id]`, ...), a value counts only when all its tokens
are right: one wrong digit of an id is a failed order, which per-digit accuracy hides.

Each value is also split where copying can fail in two different ways. Its *start* is the first token after the
prefix that all values of the argument share (the digit after an item id's "I", a price's first digit, a city's
first letter): there the model must pick which of several candidates in the context to copy, by what the user or
the tool said around it. Its *continuation* is every later token given the true tokens before it: there copying
only has to carry on from where the source was found. `reference_arg_start_acc[...]` and
`reference_arg_continue_acc[...]` tell a model that cannot find a value from one that cannot copy it.
"""

from __future__ import annotations

import re
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


Argument = tuple[str, list[int], list[bool]]  # name, the value's token ids, whether each was predicted


def argument_tokens(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[tuple[str, list[int]]] | None:
    """(name, token positions) of each tool-call argument value in a rendered sample; None where the decoded text
    does not tokenize back to `ids` (offsets cannot be recovered)."""
    text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if enc["input_ids"] != list(ids):
        return None
    offsets = enc["offset_mapping"]
    out = []
    for name, a, b in argument_spans(text):
        tokens = [j for j, (s, e) in enumerate(offsets) if j > 0 and s < b and e > a]
        if tokens:
            out.append((name, tokens))
    return out


def _argument_results(tokenizer: PreTrainedTokenizerBase, ids: list[int], keep: torch.Tensor,
                      right: torch.Tensor) -> list[Argument] | None:
    """Each argument value the assistant wrote, with per-token results; None where offsets cannot be recovered."""
    found = argument_tokens(tokenizer, ids)
    if found is None:
        return None
    keep, right = keep.tolist(), right.tolist()
    return [(name, [ids[j] for j in tokens], [bool(right[j - 1]) for j in tokens]) for name, tokens in found
            if all(keep[j - 1] for j in tokens)]  # written by the assistant, not quoted back to it


def shared_prefix(values: list[list[int]]) -> int:
    """How many leading tokens every value has in common, leaving each at least one (none for a single value)."""
    if len({tuple(v) for v in values}) < 2:
        return 0
    n = min(len(v) for v in values) - 1
    return next((i for i in range(n) if any(v[i] != values[0][i] for v in values)), n)


def argument_scores(arguments: list[Argument]) -> dict[str, float]:
    """Whole-value accuracy per argument name, and its start / continuation split (see the module docstring)."""
    by_name: dict[str, list[Argument]] = {}
    for a in arguments:
        by_name.setdefault(a[0], []).append(a)
    out: dict[str, float] = {}
    if arguments:
        out["reference_arg_acc"] = sum(all(r) for _, _, r in arguments) / len(arguments)
    for name in sorted(by_name):
        group = by_name[name]
        out[f"reference_arg_acc[{name}]"] = sum(all(r) for _, _, r in group) / len(group)
        skip = shared_prefix([v for _, v, _ in group])
        later = [x for _, _, r in group for x in r[skip + 1:]]
        out[f"reference_arg_start_acc[{name}]"] = sum(r[skip] for _, _, r in group) / len(group)
        if later:
            out[f"reference_arg_continue_acc[{name}]"] = sum(later) / len(later)
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
            arguments: list[Argument] | None = []
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
    arguments = [a for _, found in results for a in found or []]
    out = {"reference_assistant_token_acc": right / max(1, total),
           "reference_digit_acc": digit_right / max(1, digit_total),
           "reference_dialogs": len(results), "reference_digits": digit_total,
           "reference_args": len(arguments),
           "reference_dialogs_without_offsets": sum(found is None for _, found in results)}
    return out | argument_scores(arguments)
