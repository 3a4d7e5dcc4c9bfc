"""`python -m data_pipelines.commerce_world out=DIR seed=0 [train_dialogs=12000 ...]` writes a commerce world."""

from __future__ import annotations

import json
import logging
import sys
import time

from data_pipelines.commerce_world.config import parse_args, usage
from data_pipelines.commerce_world.generate import generate_world


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if {"-h", "--help"} & set(argv):
        print(usage())
        return 0
    try:
        cfg = parse_args(argv)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    start = time.perf_counter()
    out = generate_world(cfg)
    counts = json.loads((out / "world.json").read_text(encoding="utf-8"))["counts"]
    print(f"commerce world at {out} ({time.perf_counter() - start:.1f}s): {json.dumps(counts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
