"""Image token counts, pixel values and mRoPE positions equal transformers' Qwen3VLProcessor and get_rope_index."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from data_pipelines.collate import Collator
from data_pipelines.encode import Encoder, EncodeSpec
from data_pipelines.images import ImageSpec, mrope_position_ids
from data_pipelines.packing import pack_samples
from data_pipelines.tokenizer import align_vision_token_ids, train_bpe_tokenizer
from tests.conftest import compose
from train.models.build import build_hf_config, build_model

SPEC = ImageSpec(min_pixels=32 * 32, max_pixels=128 * 128, max_source_pixels=10_000_000)
SIZES = [(64, 64), (100, 70), (37, 150), (300, 200)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("img")
    paths = []
    for i, (w, h) in enumerate(SIZES):
        p = base / f"{i}.png"
        Image.new("RGB", (w, h), (40 * i, 200 - 30 * i, 90)).save(p)
        paths.append(str(p))
    tok = train_bpe_tokenizer(["a red square on the left", "a picture of a blue circle"] * 30, 300, base / "tok")
    return base, paths, tok


def _reference_processor(tok, monkeypatch):
    """transformers' own Qwen3VLProcessor around the PIL image processor (its class check wants torchvision)."""
    import transformers.processing_utils as pu
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    monkeypatch.setattr(pu.ProcessorMixin, "check_argument_for_proper_class", lambda self, name, arg: None)
    return Qwen3VLProcessor(image_processor=SPEC.processor(), tokenizer=tok, video_processor=None)


def _interleaved_sample(tok, paths):
    enc = Encoder(tok, EncodeSpec(kind="interleaved", seq_len=2048, image=SPEC))
    content = [{"type": "text", "text": "a picture of"}]
    for p in paths:
        content += [{"type": "image", "image": p}, {"type": "text", "text": "a red square on the left"}]
    import json

    (sample,) = enc(json.dumps({"content": content}), "mem:1")
    text = "a picture of" + "".join("<|vision_start|><|image_pad|><|vision_end|>a red square on the left" for _ in paths)
    return sample, text


def test_tokens_pixels_and_types_equal_the_processor(setup, monkeypatch):
    _, paths, tok = setup
    sample, text = _interleaved_sample(tok, paths)
    ref = _reference_processor(tok, monkeypatch)(text=[text], images=[Image.open(p).convert("RGB") for p in paths],
                                                  return_tensors="pt")
    assert sample["input_ids"][:-1] == ref["input_ids"][0].tolist()  # ours ends with <|endoftext|>
    assert sample["mm_token_type_ids"][:-1] == ref["mm_token_type_ids"][0].tolist()
    assert sample["image_grid_thw"] == ref["image_grid_thw"].tolist()
    rows = pack_samples([sample], 2048, "per_document", tok.pad_token_id)
    batch = Collator("per_document", mrope=True, image=SPEC)(rows)
    torch.testing.assert_close(batch["inputs"]["pixel_values"], ref["pixel_values"])
    assert torch.equal(batch["inputs"]["image_grid_thw"], ref["image_grid_thw"])


def test_mrope_positions_equal_get_rope_index(setup):
    _, paths, tok = setup
    cfg = compose(["model=qwen3_5_moe_tiny"])
    hf = build_hf_config(cfg.model, vocab_size=320)
    align_vision_token_ids(hf, tok, from_scratch=True)
    model = build_model(cfg.model, hf, torch.float32, seed=0).model
    a, _ = _interleaved_sample(tok, paths[:2])
    b, _ = _interleaved_sample(tok, paths[2:])
    rows = pack_samples([a, b], 256, "per_document", tok.pad_token_id)
    batch = Collator("per_document", mrope=True, image=SPEC)(rows)
    ref, _ = model.get_rope_index(torch.tensor(rows["input_ids"]), torch.tensor(rows["mm_token_type_ids"]),
                                  image_grid_thw=batch["inputs"]["image_grid_thw"])
    ours = batch["inputs"]["position_ids"]
    for r, sample in enumerate((a, b)):
        n = len(sample["input_ids"])  # padding restarts our text positions; the model ignores it (no labels)
        assert torch.equal(ours[1:, r, :n], ref[:, r, :n])
        assert torch.equal(ours[0, r, :n], torch.arange(n))
    assert torch.equal(mrope_position_ids(a["mm_token_type_ids"], a["image_grid_thw"]), ref[:, 0, :len(a["input_ids"])])


def test_image_batch_runs_through_the_model(setup):
    _, paths, tok = setup
    cfg = compose(["model=qwen3_5_moe_tiny"])
    hf = build_hf_config(cfg.model, vocab_size=320)
    align_vision_token_ids(hf, tok, from_scratch=True)
    model = build_model(cfg.model, hf, torch.float32, seed=0).eval()
    a, _ = _interleaved_sample(tok, paths[:1])
    rows = pack_samples([a], 64, "per_document", tok.pad_token_id)
    batch = Collator("per_document", mrope=True, image=SPEC)(rows)
    with torch.no_grad():
        ours = model(**batch["inputs"], use_cache=False).logits
        # transformers computing positions itself from mm_token_type_ids (no position_ids) gives the same logits
        inputs = {k: v for k, v in batch["inputs"].items() if k != "position_ids"}
        theirs = model(**inputs, use_cache=False).logits
    n = len(a["input_ids"])
    torch.testing.assert_close(ours[:, :n], theirs[:, :n], atol=1e-5, rtol=1e-5)
