"""Padding cost of a run's packed rows with and without `data.length_group_steps`.

    .venv/bin/python -m benchmarks.length_grouping --rows .cache/packed/mixture-<hash> --micro-batch 8 --dp 2

A micro-batch is cut to its longest labelled row (data_pipelines/collate.py), so the model computes
`micro_batch x width` positions for it. This replays one epoch of `ResumableBatches` for each span and prints
computed positions / labelled-width positions (1.0 = no padding), the figure step time follows when the
per-token work dominates (the tiny models here; attention's quadratic part makes long rows cost a little more).
Writes benchmarks/results/length_grouping_<name>.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import datasets
import torch

from data_pipelines.loader import ResumableBatches, labelled_widths


def padding_cost(rows: datasets.Dataset, micro_batch: int, dp_size: int, span: int, seed: int = 0) -> dict:
    batches = ResumableBatches(rows, micro_batch, 1, 0, dp_size, seed, length_group_steps=span)
    widths = batches.lengths if batches.lengths is not None else labelled_widths(rows)
    used = batches._perm[:batches.steps_per_epoch * batches.global_batch].view(-1, micro_batch)
    computed = int(widths[used].max(dim=1).values.sum()) * micro_batch
    labelled = int(widths[used].sum())
    return {"span": span, "computed_positions": computed, "labelled_width_positions": labelled,
            "ratio": computed / labelled}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", required=True, help="a packed-rows folder (save_to_disk) under .cache/packed/")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--dp", type=int, default=2)
    ap.add_argument("--spans", default="0,4,16,64")
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    rows = datasets.load_from_disk(args.rows)
    widths = labelled_widths(rows).float()
    q = torch.quantile(widths, torch.tensor([0.1, 0.5, 0.9])).tolist()
    print(f"{len(rows)} rows of {len(rows[0]['labels'])} columns; labelled width mean {widths.mean():.0f}, "
          f"p10/p50/p90 {q[0]:.0f}/{q[1]:.0f}/{q[2]:.0f}")
    results = [padding_cost(rows, args.micro_batch, args.dp, int(s)) for s in args.spans.split(",")]
    base = results[0]["computed_positions"]
    for r in results:
        print(f"length_group_steps={r['span']:<4} computed/labelled {r['ratio']:.3f}   "
              f"positions vs the first span {r['computed_positions'] / base:.3f}")
    out = Path(__file__).parent / "results" / f"length_grouping_{args.name or Path(args.rows).name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "length_grouping", "rows": args.rows, "micro_batch": args.micro_batch,
                               "dp": args.dp, "widths_p10_p50_p90": q, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
