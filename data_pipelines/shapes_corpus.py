"""A generated image-caption set (PIL shapes with colour words), until the commerce world's images are wired in.

Each PNG shows one or two coloured shapes on a plain background; the caption names colours, shapes and
their placement, so a model that looks at the image can lower its caption loss. Written in the commerce
world's layout: PNG files under `images/` and `captions.jsonl` with relative paths (`image`, `caption`),
plus `interleaved.jsonl` (content parts: text, image, text, image). Deterministic by seed; atomic.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40),
           "purple": (140, 60, 180), "orange": (245, 140, 30), "black": (20, 20, 20), "pink": (240, 130, 180)}
SHAPES = ("circle", "square", "triangle", "diamond")
BACKGROUNDS = {"white": (250, 250, 250), "grey": (190, 190, 190), "cream": (245, 235, 210)}


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=colour)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, (y0 + y1) // 2), ((x0 + x1) // 2, y1), (x0, (y0 + y1) // 2)],
                     fill=colour)


def _example(rng: random.Random, path: Path) -> str:
    w, h = rng.choice([(64, 64), (96, 64), (64, 96), (128, 96), (96, 128), (128, 128)])
    bg = rng.choice(sorted(BACKGROUNDS))
    im = Image.new("RGB", (w, h), BACKGROUNDS[bg])
    draw = ImageDraw.Draw(im)
    n = rng.randint(1, 2)
    picks = [(rng.choice(sorted(COLOURS)), rng.choice(SHAPES)) for _ in range(n)]
    if n == 1:
        colour, shape = picks[0]
        m = min(w, h) // 6
        _draw(draw, shape, (m, m, w - m, h - m), COLOURS[colour])
        caption = f"A {colour} {shape} on a {bg} background."
    else:
        half = w // 2
        for i, (colour, shape) in enumerate(picks):
            m = min(half, h) // 6
            _draw(draw, shape, (i * half + m, m, (i + 1) * half - m, h - m), COLOURS[colour])
        (c1, s1), (c2, s2) = picks
        caption = f"A {c1} {s1} on the left and a {c2} {s2} on the right, on a {bg} background."
    im.save(path, format="PNG")
    return caption


def generate_shapes_corpus(out_dir: str | os.PathLike, num_images: int, seed: int = 0) -> dict[str, Path]:
    """Write images/, captions.jsonl and interleaved.jsonl (skipped when present)."""
    out = Path(out_dir)
    files = {"captions": out / "captions.jsonl", "interleaved": out / "interleaved.jsonl"}
    if all(p.exists() for p in files.values()):
        return files
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    (tmp / "images").mkdir()
    rng = random.Random(seed)
    captions = []
    for i in range(num_images):
        rel = f"images/{i:06d}.png"
        captions.append({"image": rel, "caption": _example(rng, tmp / rel)})
    with open(tmp / "captions.jsonl", "w", encoding="utf-8") as f:
        for c in captions:
            f.write(json.dumps(c, ensure_ascii=False) + "\n")
    with open(tmp / "interleaved.jsonl", "w", encoding="utf-8") as f:
        for i in range(0, num_images - 1, 2):
            a, b = captions[i], captions[i + 1]
            content = [{"type": "text", "text": "First picture:"}, {"type": "image", "image": a["image"]},
                       {"type": "text", "text": f"{a['caption']} Second picture:"},
                       {"type": "image", "image": b["image"]}, {"type": "text", "text": b["caption"]}]
            f.write(json.dumps({"content": content}, ensure_ascii=False) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return files
