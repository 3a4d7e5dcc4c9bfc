"""Product images drawn with PIL: a coloured shape (the colour is random, the shape tells the category), the
item's label text and a price tag; plus captions and closed-set questions whose answer is only in the pixels.

The colour is drawn independently of everything a text can say about the item, so a model answering the
colour question without the image is at chance (1/6) and any gain with the image is the vision path's.
"""

from __future__ import annotations

import io
import math
import random

from PIL import Image, ImageDraw, ImageFont

from data_pipelines.commerce_world.catalogue import Catalogue, Item
from data_pipelines.commerce_world.vocabulary import COLOURS, SHAPES_ZH

QUESTIONS = {
    "colour": {"en": "What colour is the item in the picture?", "zh": "图中商品是什么颜色?"},
    "shape": {"en": "What shape is drawn in the picture?", "zh": "图中画的是什么形状?"},
}


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    sides, phase = {"triangle": (3, -math.pi / 2), "diamond": (4, -math.pi / 2), "square": (4, -math.pi / 4),
                    "hexagon": (6, 0.0)}[shape]
    return [(cx + r * math.cos(phase + 2 * math.pi * k / sides), cy + r * math.sin(phase + 2 * math.pi * k / sides))
            for k in range(sides)]


def draw_item(item: Item, size: int) -> bytes:
    """PNG bytes of one product image, `size` x `size` pixels; deterministic for a given Pillow."""
    img = Image.new("RGB", (size, size), (245, 245, 240))
    draw = ImageDraw.Draw(img)
    rgb = COLOURS[item.colour][1]
    cx, cy, r = size * 0.45, size * 0.45, size * 0.3
    if item.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb, outline=(30, 30, 30))
    else:
        draw.polygon(_polygon(item.shape, cx, cy, r * (1.25 if item.shape == "square" else 1.1)), fill=rgb,
                     outline=(30, 30, 30))
    font = ImageFont.load_default(size=max(8, size // 8))
    tag = f"{item.price}Y"
    box = draw.textbbox((0, 0), tag, font=font)
    tw, th = box[2] - box[0], box[3] - box[1]
    draw.rectangle([size - tw - 4, 1, size - 1, th + 5], fill=(255, 255, 255), outline=(30, 30, 30))
    draw.text((size - tw - 2, 2 - box[1] + 1), tag, fill=(0, 0, 0), font=font)
    label = item.en if len(item.en) <= 12 else item.en[:11] + "."
    draw.text((2, size - th - 4 - box[1]), label, fill=(0, 0, 0), font=font)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def caption(item: Item, catalogue: Catalogue, lang: str) -> str:
    shop = catalogue.shop_by_id[item.shop_id]
    if lang == "zh":
        return f"{COLOURS[item.colour][0]}{SHAPES_ZH[item.shape]}:{shop.zh}的{item.zh},{item.price}元。"
    article = "An" if item.colour[0] in "aeiou" else "A"
    return f"{article} {item.colour} {item.shape}: {item.en} from {shop.en}, {item.price} yuan."


def answers(attribute: str, lang: str) -> list[str]:
    """The closed answer set of a question, in its language."""
    if attribute == "colour":
        return [COLOURS[c][0] for c in sorted(COLOURS)] if lang == "zh" else sorted(COLOURS)
    shapes = sorted(SHAPES_ZH)
    return [SHAPES_ZH[s] for s in shapes] if lang == "zh" else shapes


def image_questions(item: Item, image_path: str, rng: random.Random) -> list[dict]:
    """One colour and one shape question about an item's image, each in a randomly drawn language."""
    rows = []
    for attribute in ("colour", "shape"):
        lang = rng.choice(["en", "zh"])
        value = item.colour if attribute == "colour" else item.shape
        answer = answers(attribute, "en").index(value)
        question = QUESTIONS[attribute][lang]
        rows.append({
            "id": f"{item.item_id}-{attribute}", "split": item.split, "item_id": item.item_id, "image": image_path,
            "attribute": attribute, "lang": lang, "question": question, "answer": answers(attribute, lang)[answer],
            "choices": answers(attribute, lang),
            "messages": [{"role": "user", "content": [{"type": "image", "image": image_path},
                                                      {"type": "text", "text": question}]},
                         {"role": "assistant", "content": answers(attribute, lang)[answer]}],
        })
    return rows
