"""One record -> labelled token samples for pretraining (text document, image-text pair, interleaved document)
or SFT (chat dialog, in any format `record_formats` reads). Errors are BadRecords naming the record's origin;
keys that look like media but are not used become the sample's `warn` marks (counted, never silent).

Images become `<|vision_start|>` + pads + `<|vision_end|>` with no loss on them; text carries loss on every token
but the first of a sample (nothing is learnt across a sample boundary). Long text documents are split into
`seq_len` chunks; an image sample or dialog longer than `seq_len` is bad input (it cannot be cut safely).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from data_pipelines.bad_input import BadRecord
from data_pipelines.chat_format import message_images, validate_messages
from data_pipelines.chat_render import render_dialog
from data_pipelines.images import (
    IMAGE_TYPE,
    ImageSpec,
    grid_thw,
    image_size,
    num_image_tokens,
    resolve_image_path,
)
from data_pipelines.packing import IGNORE_INDEX
from data_pipelines.record_formats import apply_columns, media_values, text_of, to_chat, unused_media
from data_pipelines.sources import parse_record


@dataclass(frozen=True)
class EncodeSpec:
    kind: str  # text | image_text | interleaved | chat
    seq_len: int
    text_field: str = "text"
    image_field: str = "image"
    image_root: str | None = None
    image: ImageSpec | None = None
    enable_thinking: bool = False
    overlong: str = "split"
    render_tools: bool = True
    # chat: the record format (auto: guessed per record); text: `text_field` is the field detection found.
    format: str = "auto"
    columns: tuple[tuple[str, str], ...] = ()


class Encoder:
    """Callable on one (record, origin); returns a list of samples (dicts of lists)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, spec: EncodeSpec) -> None:
        self.tok = tokenizer
        self.spec = spec
        self.eos = tokenizer.eos_token_id
        ids = tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"])
        self.vision_start, self.image_pad, self.vision_end = ids

    def __call__(self, record: str, origin: str, error: str = "") -> list[dict[str, Any]]:
        value = apply_columns(parse_record(record, origin, error), self.spec.columns, origin)
        kind = self.spec.kind
        if kind == "text":
            samples = self._text(text_of(value, self.spec.text_field, origin))
            return self._warn(samples, value, {self.spec.text_field}, set(), origin)
        if kind == "image_text":
            image = self._field(value, self.spec.image_field, origin)
            parts = [{"type": "image", "image": image},
                     {"type": "text", "text": self._field(value, self.spec.text_field, origin)}]
            return self._warn([self._interleaved(parts, origin)], value, {self.spec.image_field, self.spec.text_field},
                              set(media_values(image)), origin)
        if kind == "interleaved":
            parts = self._field(value, "content", origin)
            if not isinstance(parts, list):
                raise BadRecord(origin, "malformed record", "'content' is not a list of text/image parts")
            refs = {p.get("image") for p in parts if isinstance(p, dict) and isinstance(p.get("image"), str)}
            return self._warn([self._interleaved(parts, origin)], value, {"content"}, refs, origin)
        if kind == "chat":
            return self._chat(value, origin)
        raise ValueError(f"unknown source kind {kind!r}")

    @staticmethod
    def _warn(samples: list[dict[str, Any]], value: dict, used: set[str], refs: set, origin: str) -> list[dict]:
        keys = unused_media(value, used, refs, origin)
        if keys and samples:
            samples[0]["warn"] = "\n".join(f"unused media|{origin}: key {k!r} looks like media but is not read "
                                           "(rename it with the source's columns)" for k in keys)
        return samples

    @staticmethod
    def _field(value: dict, name: str, origin: str) -> Any:
        if name not in value:
            raise BadRecord(origin, "missing field", f"no {name!r} (keys: {sorted(value)})")
        return value[name]

    def _image_dir(self, origin: str) -> str:
        if self.spec.image_root is not None:
            return self.spec.image_root
        return os.path.dirname(origin.rsplit(":", 1)[0])

    def _image(self, ref: Any, origin: str) -> tuple[str, list[int]]:
        if self.spec.image is None:
            raise ValueError("image sources need an ImageSpec")
        if not isinstance(ref, str):
            raise BadRecord(origin, "missing image", f"image reference {ref!r} is not a path")
        path = resolve_image_path(ref, self._image_dir(origin), origin, self.spec.image_root)
        h, w = image_size(path, self.spec.image, origin)
        return path, list(grid_thw(h, w, self.spec.image))

    def _text(self, text: Any) -> list[dict[str, Any]]:
        ids = self.tok(str(text), add_special_tokens=False)["input_ids"] + [self.eos]
        n = self.spec.seq_len
        return [{"input_ids": c, "labels": [IGNORE_INDEX] + c[1:]} for c in (ids[i:i + n] for i in range(0, len(ids), n))]

    def _interleaved(self, parts: list, origin: str) -> dict[str, Any]:
        ids: list[int] = []
        labels: list[int] = []
        mm: list[int] = []
        images: list[str] = []
        grids: list[list[int]] = []
        for part in parts:
            if not isinstance(part, dict):
                raise BadRecord(origin, "malformed record", f"content part {part!r} is not an object")
            if part.get("type") == "image" or "image" in part:
                path, grid = self._image(part.get("image"), origin)
                n = num_image_tokens(grid)
                block = [self.vision_start] + [self.image_pad] * n + [self.vision_end]
                ids += block
                labels += [IGNORE_INDEX] * len(block)
                mm += [0] + [IMAGE_TYPE] * n + [0]
                images.append(path)
                grids.append(grid)
            elif "text" in part:
                t = self.tok(str(part["text"]), add_special_tokens=False)["input_ids"]
                ids += t
                labels += t
                mm += [0] * len(t)
            else:
                raise BadRecord(origin, "malformed record", f"content part with keys {sorted(part)}")
        ids.append(self.eos)
        labels.append(self.eos)
        mm.append(0)
        labels[0] = IGNORE_INDEX
        if len(ids) > self.spec.seq_len:
            raise BadRecord(origin, "sample longer than the context", f"{len(ids)} tokens (images included) > "
                            f"data.seq_len={self.spec.seq_len}")
        return {"input_ids": ids, "labels": labels, "mm_token_type_ids": mm, "images": images,
                "image_grid_thw": grids}

    def _chat(self, value: dict, origin: str) -> list[dict[str, Any]]:
        raw, tools, used = to_chat(value, self.spec.format, origin)
        messages = validate_messages(raw, origin)
        if not self.spec.render_tools:
            tools = None
        refs = message_images(messages)
        resolved = {r: self._image(r, origin) for r in refs}
        samples = render_dialog(self.tok, messages, tools, self.spec.seq_len, self.spec.enable_thinking,
                                self.spec.overlong, origin, {r: (p, num_image_tokens(g)) for r, (p, g) in resolved.items()})
        grids = {p: g for p, g in resolved.values()}
        out = []
        for s in samples:
            out.append({"input_ids": s.input_ids, "labels": s.labels,
                        "mm_token_type_ids": [IMAGE_TYPE if t == self.image_pad else 0 for t in s.input_ids],
                        "images": s.images, "image_grid_thw": [grids[p] for p in s.images],
                        "overlong_split": s.overlong_split})
        return self._warn(out, value, used, set(refs), origin)
