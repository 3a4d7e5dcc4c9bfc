"""Qwen3.5 images: open and check a file, its patch grid, pixel values, `<|image_pad|>` expansion, mRoPE positions.

The processor is transformers' `Qwen2VLImageProcessorPil` with the released Qwen3-VL/3.5 values (patch 16,
temporal patch 2, merge 2, mean = std = 0.5); `Qwen3VLProcessor` would need torchvision. An image becomes
`<|vision_start|>` + t*h*w/4 `<|image_pad|>` + `<|vision_end|>`; `mm_token_type_ids` is 1 on the pads.
`mrope_position_ids` reproduces transformers' `Qwen3_5MoeModel.get_rope_index` (tests check it on the same images).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
from PIL import Image

from data_pipelines.bad_input import BadRecord

PATCH_SIZE = 16
TEMPORAL_PATCH_SIZE = 2
MERGE_SIZE = 2
IMAGE_TYPE = 1  # mm_token_type_ids value of image tokens (text 0, video 2)
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class ImageSpec:
    min_pixels: int
    max_pixels: int
    max_source_pixels: int

    def processor(self):
        from transformers import Qwen2VLImageProcessorPil

        return Qwen2VLImageProcessorPil(
            patch_size=PATCH_SIZE, temporal_patch_size=TEMPORAL_PATCH_SIZE, merge_size=MERGE_SIZE,
            image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
            size={"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels})


def resolve_image_path(value: str, base_dir: str, origin: str, root: str | None = None) -> str:
    """`value` relative to `base_dir`. With a declared root (`image_root`) the file, `..` and symlinks resolved,
    must lie inside it: a record cannot make the loader read files elsewhere. A `file://` URL names a local
    file; other URLs are refused (nothing is downloaded at run time)."""
    if value.startswith("file://"):
        value = value[len("file://"):]
    elif value.startswith("data:"):
        raise BadRecord(origin, "unsupported image", f"{value[:40]!r}...: inline image data is not read; save the "
                        "image as a file and give its path")
    elif _URL.match(value):
        raise BadRecord(origin, "unsupported image", f"{value!r}: remote images are not downloaded; download the "
                        "file and give its local path")
    path = value if os.path.isabs(value) else os.path.join(base_dir, value)
    if root is not None:
        real, real_root = os.path.realpath(path), os.path.realpath(root)
        if os.path.commonpath([real, real_root]) != real_root:
            raise BadRecord(origin, "image path escapes image_root", f"{value!r} resolves to {real}, outside "
                            f"image_root={real_root}")
    return path


def image_size(path: str, spec: ImageSpec, origin: str) -> tuple[int, int]:
    """(height, width) from the header only; a missing, unreadable or oversized image is a BadRecord."""
    if not os.path.isfile(path):
        raise BadRecord(origin, "missing image", path)
    try:
        with Image.open(path) as im:
            width, height = im.size
            im.verify()
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, DecompressionBomb...)
        raise BadRecord(origin, "unreadable image", f"{path}: {e}") from None
    if width * height > spec.max_source_pixels:
        raise BadRecord(origin, "oversized image", f"{path} is {width}x{height}, more than "
                        f"data.image.max_source_pixels={spec.max_source_pixels}")
    return height, width


def grid_thw(height: int, width: int, spec: ImageSpec) -> tuple[int, int, int]:
    """The (t, h, w) patch grid the processor will produce for an image of this size."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    h, w = smart_resize(height, width, factor=PATCH_SIZE * MERGE_SIZE, min_pixels=spec.min_pixels,
                        max_pixels=spec.max_pixels)
    return 1, h // PATCH_SIZE, w // PATCH_SIZE


def num_image_tokens(grid: tuple[int, int, int] | list[int]) -> int:
    t, h, w = grid
    return t * h * w // (MERGE_SIZE * MERGE_SIZE)


def load_pixels(paths: list[str], processor, origins: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """pixel_values [sum(t*h*w), 3*2*16*16] and image_grid_thw [n, 3] for the images of a batch."""
    images = []
    for path, origin in zip(paths, origins, strict=True):
        try:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        except Exception as e:
            raise BadRecord(origin, "unreadable image", f"{path}: {e}") from None
    out = processor(images=images, return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"]


def mrope_position_ids(mm_token_type_ids: list[int], grids: list[list[int]] | list[tuple[int, int, int]]) -> torch.Tensor:
    """(3, L) temporal/height/width positions, as `get_rope_index` computes them for one unpadded row.

    Text runs advance all three rows together; an image of llm grid (t, h, w) = (t, H/2, W/2) takes positions
    start + (t, i, j) and moves the next text start by max(h, w).
    """
    n = len(mm_token_type_ids)
    pos = torch.zeros(3, n, dtype=torch.long)
    current = 0
    i = 0
    images = iter(grids)
    while i < n:
        kind = mm_token_type_ids[i]
        j = i
        while j < n and mm_token_type_ids[j] == kind:
            j += 1
        if kind == 0:
            pos[:, i:j] = torch.arange(current, current + j - i)
            current += j - i
        else:
            t, h, w = next(images)
            lh, lw = h // MERGE_SIZE, w // MERGE_SIZE
            tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(lh), torch.arange(lw), indexing="ij")
            block = torch.stack([tt, hh, ww]).reshape(3, -1) + current
            if block.shape[1] != j - i:
                raise ValueError(f"{j - i} image tokens but the grid {t}x{h}x{w} needs {block.shape[1]}")
            pos[:, i:j] = block
            current += max(lh, lw)
        i = j
    return pos
