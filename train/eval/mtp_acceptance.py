"""Draft acceptance of an export's multi-token prediction head on the held-out reference dialogs.

Speculative decoding with one MTP draft token (vLLM `speculative_config={"method": "mtp", "num_speculative_tokens":
1}`) keeps the draft when, greedily, the head's token for position t+2 equals the token the trunk itself then picks.
Teacher-forced on the oracle's dialogs: at every position t whose token t+2 the assistant writes, and where the
trunk's own greedy token for t+1 is the reference one (so the draft reads what generation would have fed it), the
draft d_t = argmax MTP(h_t, x_{t+1}) is accepted when it equals g_{t+1} = argmax trunk(x_{<=t+1}).

    mtp_acceptance        accepted / drafted over those positions: the share of drafts vLLM would keep
    mtp_token_acc         d_t == x_{t+2} over all assistant positions (the head against the reference text)
    mtp_drafts            how many positions were drafted
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from data_pipelines.collate import Collator
from data_pipelines.encode import Encoder, EncodeSpec
from data_pipelines.packing import IGNORE_INDEX, pack_samples
from train.models.mtp import TrunkTap, mtp_logits


@torch.no_grad()
def sample_acceptance(model: PreTrainedModel, tap: TrunkTap, collate: Collator, sample: dict,
                      pad_id: int) -> torch.Tensor:
    """[accepted, drafted, right vs reference, assistant positions] for one encoded sample."""
    rows = pack_samples([sample], len(sample["input_ids"]), "per_document", pad_id)
    batch = collate(rows)
    inputs = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in batch["inputs"].items()}
    logits = model(**inputs, use_cache=False).logits[0]
    draft = mtp_logits(model, tap.pop())[0][0].argmax(-1)  # [T]: d_t predicts token t+2
    trunk = logits.argmax(-1)  # [T]: g_t predicts token t+1
    ids = batch["inputs"]["input_ids"][0].to(trunk.device)
    labels = batch["labels"][0].to(trunk.device)
    n = ids.shape[0]
    if n < 3:
        return torch.zeros(4, dtype=torch.long)
    t = torch.arange(n - 2, device=trunk.device)
    assistant = labels[t + 2] != IGNORE_INDEX
    drafted = assistant & (trunk[t] == ids[t + 1])
    accepted = drafted & (draft[t] == trunk[t + 1])
    right = assistant & (draft[t] == ids[t + 2])
    return torch.stack([accepted.sum(), drafted.sum(), right.sum(), assistant.sum()]).cpu()


@torch.no_grad()
def evaluate_mtp_acceptance(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, world_dir: str, split: str,
                            limit: int | None, mrope: bool, render_tools: bool, state) -> dict[str, float | int]:
    """The metrics above over the split's reference dialogs (spread over `state`); `model` must have `model.mtp`
    (train/models/mtp.py `load_mtp`)."""
    from accelerate.utils import gather_object

    path = Path(world_dir) / "dialogs" / f"{split}.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()[:limit]
    encoder = Encoder(tokenizer, EncodeSpec(kind="chat", seq_len=1 << 16, render_tools=render_tools))
    collate = Collator("per_document", mrope=mrope)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tap = TrunkTap(model)
    local = []
    try:
        with state.split_between_processes(list(enumerate(lines))) as mine:
            for n, line in mine:
                counts = torch.zeros(4, dtype=torch.long)
                for sample in encoder(line, f"{path}:{n + 1}"):
                    counts += sample_acceptance(model, tap, collate, sample, pad)
                local.append(counts.tolist())
    finally:
        tap.remove()
    results = gather_object(local) if state.num_processes > 1 else local
    accepted, drafted, right, positions = (sum(c[i] for c in results) for i in range(4))
    return {"mtp_acceptance": accepted / max(1, drafted), "mtp_token_acc": right / max(1, positions),
            "mtp_drafts": drafted}
