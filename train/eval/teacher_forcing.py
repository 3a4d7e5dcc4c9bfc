"""One encoded sample through the model with the true history: next-token logits and the labels they predict.

Samples come from the same `Encoder` that builds SFT data, so an evaluation scores exactly the tokens that
training puts loss on (assistant turns), rendered by the same chat template.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from data_pipelines.collate import Collator
from data_pipelines.packing import pack_samples


@torch.no_grad()
def teacher_forced(model: PreTrainedModel, collate: Collator, sample: dict, pad_id: int) -> tuple[torch.Tensor,
                                                                                                   torch.Tensor]:
    """(logits[t], labels[t + 1]) over the sample's positions; labels are IGNORE_INDEX where there is no loss."""
    rows = pack_samples([sample], len(sample["input_ids"]), "per_document", pad_id)
    batch = collate(rows)
    inputs = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in batch["inputs"].items()}
    logits = model(**inputs, use_cache=False).logits[0, :-1].float()
    return logits, batch["labels"][0, 1:].to(logits.device)
