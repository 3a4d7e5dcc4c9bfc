"""A deterministic fraction of a source's records held out for validation, chosen when the records are read.

A record is held out when a hash of its content (the record's JSON text; an unreadable record's origin) falls
below `fraction`: the choice does not depend on the seed, the order of the files, the other sources or the world
size, exact duplicates fall on the same side, and a held-out record never reaches the training rows.
"""

from __future__ import annotations

import hashlib

import datasets

SPLITS = ("train", "validation")


def held_out(record: str, origin: str, fraction: float) -> bool:
    """Whether this record belongs to the validation side."""
    key = (record or origin).encode("utf-8")
    value = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")
    return value < fraction * 2**64


def split_records(records: datasets.Dataset | datasets.IterableDataset, fraction: float, split: str):
    """The records of `split` ("train": all but the held-out ones; "validation": the held-out ones)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {list(SPLITS)}")
    if fraction <= 0.0:
        return records if split == "train" else records.filter(lambda b: [False] * len(b["record"]), batched=True)
    want = split == "validation"

    def keep(batch: dict) -> list[bool]:
        return [held_out(r, o, fraction) == want for r, o in zip(batch["record"], batch["origin"], strict=True)]

    return records.filter(keep, batched=True)
