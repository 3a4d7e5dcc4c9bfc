"""Held-out image questions, scored with the image and with it blanked, to show the vision path carries information.

Each question has a closed set of answers; the model's answer is the choice with the highest log-likelihood
as an assistant reply (choice tokens + `<|im_end|>`), rendered and encoded by the same code that builds the
SFT samples. The blanked image is a uniform grey picture of the same size, so the prompt keeps its length and
only the pixels change.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from PIL import Image
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from data_pipelines.collate import Collator
from data_pipelines.encode import Encoder, EncodeSpec
from data_pipelines.images import ImageSpec
from data_pipelines.packing import IGNORE_INDEX
from train.eval.teacher_forcing import teacher_forced


def _choice_logprob(model: PreTrainedModel, collate: Collator, encoder: Encoder, record: dict, pad_id: int,
                    origin: str) -> float:
    (sample,) = encoder(json.dumps(record), origin)
    logits, labels = teacher_forced(model, collate, sample, pad_id)
    keep = labels != IGNORE_INDEX
    logp = torch.log_softmax(logits[keep], dim=-1).gather(-1, labels[keep, None])
    return float(logp.sum())


def _blank_like(path: Path, out_dir: Path) -> str:
    with Image.open(path) as im:
        size = im.size
    blank = out_dir / f"blank_{size[0]}x{size[1]}.png"
    if not blank.exists():
        Image.new("RGB", size, (128, 128, 128)).save(blank)
    return str(blank)


@torch.no_grad()
def evaluate_image_qa(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, world_dir: str, split: str,
                      limit: int | None, state, image: ImageSpec | None = None) -> dict[str, float]:
    """Accuracy with and without the image over the split's questions (spread over `state`'s processes)."""
    from accelerate.utils import gather_object

    world = Path(world_dir)
    path = world / "image_qa" / f"{split}.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()][:limit]
    image = image or ImageSpec(min_pixels=1024, max_pixels=16384, max_source_pixels=40_000_000)
    encoder = Encoder(tokenizer, EncodeSpec(kind="chat", seq_len=1 << 16, image=image, render_tools=False))
    collate = Collator("per_document", mrope=True, image=image)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    local = []
    with tempfile.TemporaryDirectory() as tmp, state.split_between_processes(list(enumerate(rows))) as mine:
        for n, row in mine:
            user = row["messages"][0]
            blank = _blank_like(world / row["image"], Path(tmp))
            correct = {}
            for variant, img in (("with", str((world / row["image"]).resolve())), ("without", blank)):
                content = [dict(p, image=img) if p.get("type") == "image" else p for p in user["content"]]
                scores = [_choice_logprob(model, collate, encoder,
                                          {"messages": [{"role": "user", "content": content},
                                                        {"role": "assistant", "content": choice}]},
                                          pad, f"{path}:{n + 1}") for choice in row["choices"]]
                correct[variant] = row["choices"][max(range(len(scores)), key=scores.__getitem__)] == row["answer"]
            local.append(correct)
    results = gather_object(local) if state.num_processes > 1 else local
    n = max(1, len(results))
    return {"image_qa_acc_with_image": sum(r["with"] for r in results) / n,
            "image_qa_acc_without_image": sum(r["without"] for r in results) / n,
            "image_qa_questions": len(results),
            "image_qa_chance": sum(1 / len(r["choices"]) for r in rows) / max(1, len(rows))}
