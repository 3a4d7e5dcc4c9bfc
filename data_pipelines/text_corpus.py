"""A generated English/Chinese commerce text corpus, so pretraining on a laptop learns from real token streams.

Each document describes one shop and a few of its items with facts that recur inside the document (names,
prices, refund terms), so a model that learns the structure lowers its loss measurably. Deterministic by seed.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

CITIES = ["Hangzhou", "Shanghai", "Beijing", "Shenzhen", "Chengdu", "Wuhan", "Nanjing", "Xi'an", "Suzhou", "Guangzhou"]
CITIES_ZH = {"Hangzhou": "杭州", "Shanghai": "上海", "Beijing": "北京", "Shenzhen": "深圳", "Chengdu": "成都",
             "Wuhan": "武汉", "Nanjing": "南京", "Xi'an": "西安", "Suzhou": "苏州", "Guangzhou": "广州"}
LINES = {
    "milk tea": (["jasmine milk tea", "brown sugar boba", "mango pomelo sago", "cheese foam oolong", "taro latte"],
                 (9, 32), "cup"),
    "groceries": (["organic eggs", "whole milk", "jasmine rice", "green tea leaves", "fresh tofu", "bok choy"],
                  (4, 80), "pack"),
    "cinema": (["evening screening", "IMAX screening", "matinee screening", "late-night screening"], (35, 120),
               "ticket"),
    "hotel": (["standard double room", "king room with view", "family suite", "business twin room"], (220, 1400),
              "night"),
}
ADJ = ["popular", "quiet", "busy", "new", "family-run", "well-reviewed", "small", "modern"]
REFUND = ["free cancellation up to 30 minutes before delivery", "no refund after preparation starts",
          "full refund up to 24 hours before check-in", "change once for free before the show",
          "refund minus a 10% fee before the start time"]


def _document(rng: random.Random, doc_id: int) -> str:
    line = rng.choice(sorted(LINES))
    items, (lo, hi), unit = LINES[line]
    city = rng.choice(CITIES)
    shop = f"{rng.choice(['Golden', 'Lotus', 'Jade', 'Panda', 'Harbor', 'Sunny', 'Cloud', 'River'])} " \
           f"{rng.choice(['House', 'Corner', 'Market', 'Hall', 'Inn', 'Garden'])}"
    refund = rng.choice(REFUND)
    picked = rng.sample(items, k=min(len(items), rng.randint(2, 4)))
    prices = {it: rng.randint(lo, hi) for it in picked}
    parts = [f"{shop} is a {rng.choice(ADJ)} {line} shop in {city} ({CITIES_ZH[city]})."]
    for it in picked:
        parts.append(f"The {it} costs {prices[it]} yuan per {unit}, and {rng.randint(1, 60)} are in stock.")
    cheapest = min(prices, key=prices.get)
    parts.append(f"The cheapest option at {shop} is the {cheapest} for {prices[cheapest]} yuan.")
    parts.append(f"Refund and change terms: {refund}.")
    count = rng.randint(1, 4)
    choice = rng.choice(picked)
    parts.append(f"An order of {count} {choice} costs {count * prices[choice]} yuan in total.")
    parts.append(f"用户可以在{CITIES_ZH[city]}下单,确认后才会支付。")
    return " ".join(parts)


def generate_text_corpus(out_dir: str | os.PathLike, num_documents: int, seed: int = 0,
                         validation_fraction: float = 0.02) -> dict[str, Path]:
    """Write train.jsonl and validation.jsonl with a `text` field; atomic per file, skipped when present."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"train": out / "train.jsonl", "validation": out / "validation.jsonl"}
    if all(p.exists() for p in files.values()):
        return files
    rng = random.Random(seed)
    docs = [_document(rng, i) for i in range(num_documents)]
    n_val = max(1, int(num_documents * validation_fraction))
    splits = {"validation": docs[:n_val], "train": docs[n_val:]}
    for split, rows in splits.items():
        tmp = files[split].with_suffix(".jsonl.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for i, text in enumerate(rows):
                f.write(json.dumps({"id": f"{split}-{i}", "text": text}, ensure_ascii=False) + "\n")
        os.replace(tmp, files[split])
    return files
