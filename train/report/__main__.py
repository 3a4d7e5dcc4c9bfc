"""Build the demo's report folder: report.md, report.json and PNG plots.

    python -m train.report --out runs/report \
        --stage pretrain=runs/pretrain_mm_tiny --stage sft=runs/sft_commerce_tiny \
        --eval baseline=exports/pretrain/eval_test.json --eval eval=exports/sft/eval_test.json \
        --timings runs/timings.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from train.report.build import build_report
from train.report.inputs import parse_named_paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.report", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="report folder (replaced if it exists)")
    parser.add_argument("--stage", action="append", default=[], metavar="NAME=RUN_DIR",
                        help="a training run directory (config.json + metrics.jsonl); repeat per stage")
    parser.add_argument("--eval", action="append", default=[], metavar="NAME=EVAL_JSON",
                        help="train/evaluate.py output; repeat (e.g. baseline=..., eval=...)")
    parser.add_argument("--timings", type=Path, default=None, help='JSON {"stage": seconds, ...}')
    args = parser.parse_args(argv)
    try:
        numbers = build_report(args.out, parse_named_paths(args.stage, "--stage"),
                               parse_named_paths(args.eval, "--eval"), args.timings)
    except ValueError as e:
        print(f"report: {e}", file=sys.stderr)
        return 2
    print(f"report: {args.out / 'report.md'} ({len(numbers['stages'])} stage(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
