"""Data-pipeline throughput per CPU core (text and image-text), next to what a training step consumes.

    python benchmarks/data_pipeline.py [--docs 4000] [--images 600] [--out benchmarks/results/data_pipeline.json]

Measured on one thread: encode (tokenise, image headers, chat/vision markup) + pack, and the loader's collate
(which opens the images and runs the Qwen3.5 image processor), in tokens per second per core; then one
forward + backward of the tiny Qwen3.5-MoE (`model=qwen3_5_moe_tiny`, fp32, plain transformers, no DeepSpeed)
on batches from the same loader, in tokens per second. Data is never the bottleneck while the pipeline's
tokens/s/core times the loader cores exceeds the step's tokens/s.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_pipelines.bad_input import BadInputPolicy  # noqa: E402
from data_pipelines.collate import Collator  # noqa: E402
from data_pipelines.encode import Encoder, EncodeSpec  # noqa: E402
from data_pipelines.images import ImageSpec  # noqa: E402
from data_pipelines.loader import ResumableBatches  # noqa: E402
from data_pipelines.mixture import encode_records, pack_rows  # noqa: E402
from data_pipelines.shapes_corpus import generate_shapes_corpus  # noqa: E402
from data_pipelines.sources import read_records  # noqa: E402
from data_pipelines.text_corpus import generate_text_corpus  # noqa: E402
from data_pipelines.tokenizer import align_vision_token_ids, train_bpe_tokenizer  # noqa: E402

SEQ = 128
IMAGE = ImageSpec(min_pixels=1024, max_pixels=16384, max_source_pixels=40_000_000)


def _pipeline(path: str, kind: str, tok, mode: str, field: str) -> tuple[float, float, object]:
    enc = Encoder(tok, EncodeSpec(kind=kind, seq_len=SEQ, text_field=field, image=IMAGE))
    t0 = time.perf_counter()
    samples = encode_records(read_records(path), enc, BadInputPolicy("raise"))
    rows = pack_rows(samples, SEQ, mode, tok.pad_token_id, multimodal=kind != "text")
    encode_s = time.perf_counter() - t0
    tokens = sum(len(x) for x in samples["input_ids"])
    collate = Collator(mode, mrope=True, image=IMAGE if kind != "text" else None)
    batches = ResumableBatches(rows, 8, 1, 0, 1, 0, collate)
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches.steps_per_epoch):
        n += batches.next_step()[0]["labels"].numel()
    collate_s = time.perf_counter() - t0
    return tokens / encode_s, n / collate_s, rows


def _train_tokens_per_s(rows, tok, collate: Collator, steps: int = 4) -> float:
    from tests.conftest import compose
    from train.models.build import build_hf_config, build_model

    cfg = compose(["model=qwen3_5_moe_tiny"])
    hf = build_hf_config(cfg.model, vocab_size=(len(tok) + 63) // 64 * 64)
    align_vision_token_ids(hf, tok, from_scratch=True)
    model = build_model(cfg.model, hf, torch.float32, seed=0)
    batches = ResumableBatches(rows, 8, 1, 0, 1, 0, collate)
    from train.engine.losses import causal_lm_loss

    n, elapsed = 0, 0.0
    for i in range(steps + 1):
        mb = batches.next_step()[0]
        t0 = time.perf_counter()
        out = model(**mb["inputs"], use_cache=False)
        causal_lm_loss(out.logits, mb["labels"]).backward()
        if i:  # the first step warms up
            elapsed += time.perf_counter() - t0
            n += mb["labels"].numel()
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=4000)
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--out", default="benchmarks/results/data_pipeline.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        text = generate_text_corpus(Path(d) / "text", args.docs, 0)["train"]
        shapes = generate_shapes_corpus(Path(d) / "shapes", args.images, 0)["captions"]
        tok = train_bpe_tokenizer((json.loads(line)["text"] for line in open(text)), 2048, Path(d) / "tok")
        text_enc, text_col, _ = _pipeline(str(text), "text", tok, "per_document", "text")
        img_enc, img_col, img_rows = _pipeline(str(shapes), "image_text", tok, "per_document", "caption")
        train_tps = _train_tokens_per_s(img_rows, tok, Collator("per_document", mrope=True, image=IMAGE))
    result = {
        "threads": 1, "seq_len": SEQ, "micro_batch": 8,
        "text_encode_pack_tokens_per_s_per_core": round(text_enc),
        "text_collate_tokens_per_s_per_core": round(text_col),
        "image_text_encode_pack_tokens_per_s_per_core": round(img_enc),
        "image_text_collate_tokens_per_s_per_core": round(img_col),
        "train_step_tokens_per_s_qwen3_5_moe_tiny_1_thread": round(train_tps),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for k, v in result.items():
        print(f"{k:55s} {v}")


if __name__ == "__main__":
    main()
