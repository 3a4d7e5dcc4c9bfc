"""Teacher-forced scores on the held-out reference dialogs: where an agent's failures come from.

Episodes say whether a model completes tasks; these say why not. On the oracle's dialogs for the held-out
scenarios, the model predicts every assistant token given the true history. Every digit an assistant writes
(item and order ids, prices, times, counts, budgets, refund amounts) is copied from the user's words or a tool
result, so the accuracy on digits measures copying from the context: a model that writes typical values
instead of the ones in front of it has high accuracy on the template tokens and low accuracy on digits.
"""

from __future__ import annotations

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


@torch.no_grad()
def evaluate_reference_dialogs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, world_dir: str,
                               split: str, limit: int | None, mrope: bool, render_tools: bool,
                               state) -> dict[str, float | int]:
    """Greedy next-token accuracy on assistant tokens and on the digits among them (spread over `state`)."""
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
            for sample in encoder(line, f"{path}:{n + 1}"):
                logits, labels = teacher_forced(model, collate, sample, pad)
                keep = labels != IGNORE_INDEX
                right = logits.argmax(-1) == labels
                is_digit = keep & torch.isin(labels, digits)
                counts += torch.stack((right[keep].sum(), keep.sum(), right[is_digit].sum(), is_digit.sum())).cpu()
            local.append(counts.tolist())
    results = gather_object(local) if state.num_processes > 1 else local
    right, total, digit_right, digit_total = (sum(c[i] for c in results) for i in range(4))
    return {"reference_assistant_token_acc": right / max(1, total),
            "reference_digit_acc": digit_right / max(1, digit_total),
            "reference_dialogs": len(results), "reference_digits": digit_total}
