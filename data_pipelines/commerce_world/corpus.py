"""Pretraining material from the catalogue: shop descriptions and captions as text, and image-caption pairs.

Only the given catalogue's entities appear, so building it from the train split keeps held-out shops and items
out of pretraining (held-out city names reach it only as delivery addresses, see records.py).
"""

from __future__ import annotations

import random

from data_pipelines.commerce_world.catalogue import Catalogue
from data_pipelines.commerce_world.images import caption
from data_pipelines.commerce_world.vocabulary import KINDS_BY_KEY, RULES_BY_KEY, SERVICE_LINES


def shop_document(catalogue: Catalogue, shop_id: str, lang: str) -> str:
    shop = catalogue.shop_by_id[shop_id]
    city = catalogue.city_by_id[shop.city_id]
    items = [i for i in catalogue.items if i.shop_id == shop_id]
    if lang == "zh":
        parts = [f"{shop.zh}是{city.zh}的一家{SERVICE_LINES[shop.category][1]}商家。"]
        for i in items:
            kind = KINDS_BY_KEY[i.kind]
            parts.append(f"{i.zh}({kind.zh})每{kind.unit_zh}{i.price}元,时间:{'、'.join(i.times)};"
                         f"退改:{RULES_BY_KEY[i.rule].zh}。")
        return "".join(parts)
    parts = [f"{shop.en} is a {SERVICE_LINES[shop.category][0].replace('_', ' ')} shop in {city.en}."]
    for i in items:
        kind = KINDS_BY_KEY[i.kind]
        parts.append(f"The {i.en} ({kind.en}) costs {i.price} yuan per {kind.unit_en}, at {', '.join(i.times)}; "
                     f"terms: {RULES_BY_KEY[i.rule].en}.")
    return " ".join(parts)


def text_documents(catalogue: Catalogue, seed: int) -> list[dict]:
    """Shop descriptions in both languages and item captions, shuffled by seed."""
    docs = [{"id": f"{s.shop_id}-{lang}", "text": shop_document(catalogue, s.shop_id, lang)}
            for s in catalogue.shops for lang in ("en", "zh")]
    docs += [{"id": f"{i.item_id}-caption-{lang}", "text": caption(i, catalogue, lang)}
             for i in catalogue.items for lang in ("en", "zh")]
    random.Random(f"corpus-{seed}").shuffle(docs)
    return docs


def image_text_pairs(catalogue: Catalogue, image_path: dict[str, str]) -> list[dict]:
    """One pair per item and language: the image path (relative to the world folder) and its caption."""
    return [{"id": f"{i.item_id}-{lang}", "image": image_path[i.item_id], "text": caption(i, catalogue, lang)}
            for i in catalogue.items for lang in ("en", "zh")]
