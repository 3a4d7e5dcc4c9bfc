"""Packed rows equal per-document forward passes where attention keeps documents apart; GDN falls back."""

from __future__ import annotations

import pytest
import torch

from data_pipelines.packing import IGNORE_INDEX, pack_documents, resolve_packing_mode
from tests.conftest import compose
from train.models.build import build_hf_config, build_model


def test_pack_documents_layout():
    rows = pack_documents([[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]], seq_len=6, mode="packed", pad_id=0)
    assert rows["input_ids"] == [[1, 2, 3, 4, 5, 0], [6, 7, 8, 9, 10, 0]]
    assert rows["position_ids"] == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 0]]
    assert rows["labels"] == [[IGNORE_INDEX, 2, 3, IGNORE_INDEX, 5, IGNORE_INDEX],
                              [IGNORE_INDEX, 7, 8, 9, 10, IGNORE_INDEX]]
    per_doc = pack_documents([[1, 2, 3], [4, 5]], seq_len=4, mode="per_document", pad_id=0)
    assert per_doc["input_ids"] == [[1, 2, 3, 0], [4, 5, 0, 0]]


def test_long_documents_are_split_not_dropped():
    rows = pack_documents([list(range(1, 11))], seq_len=4, mode="packed", pad_id=0)
    kept = [t for row, lab in zip(rows["input_ids"], rows["labels"], strict=True) for t in row if t]
    assert kept == list(range(1, 11))


def test_packed_logits_equal_per_document_logits_qwen3_moe():
    cfg = compose(["experiment=ci_tiny"])
    config = build_hf_config(cfg.model, vocab_size=128)
    model = build_model(cfg.model, config, torch.float32, seed=0).eval()
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(1, 128, (n,), generator=g).tolist() for n in (7, 12, 9)]
    rows = pack_documents(docs, seq_len=32, mode="packed", pad_id=0)
    assert len(rows["input_ids"]) == 1
    with torch.no_grad():
        packed = model(input_ids=torch.tensor(rows["input_ids"]), position_ids=torch.tensor(rows["position_ids"]),
                       use_cache=False).logits[0]
        start = 0
        for doc in docs:
            alone = model(input_ids=torch.tensor([doc]), use_cache=False).logits[0]
            torch.testing.assert_close(packed[start:start + len(doc)], alone, atol=1e-5, rtol=1e-5)
            start += len(doc)


def test_auto_packing_never_packs_gated_deltanet():
    qwen3 = build_hf_config(compose(["experiment=ci_tiny"]).model)
    qwen3_5 = build_hf_config(compose(["model=qwen3_5_moe_tiny"]).model)
    assert resolve_packing_mode("auto", qwen3) == "packed"
    assert resolve_packing_mode("auto", qwen3_5) == "per_document"
    with pytest.raises(ValueError, match="would leak state across documents"):
        resolve_packing_mode("packed", qwen3_5)


def test_qwen3_5_per_document_rows_equal_per_document_logits_and_packing_would_leak():
    """Qwen3.5 on CPU runs through the fallback: one document per row (with 4-row mRoPE positions from the
    collator) gives exactly each document's own logits; packing the same documents would leak GDN state."""
    from data_pipelines.collate import Collator
    from data_pipelines.packing import pack_samples

    cfg = compose(["model=qwen3_5_moe_tiny"])
    config = build_hf_config(cfg.model, vocab_size=128)
    assert resolve_packing_mode("auto", config, varlen_available=False) == "per_document"
    assert resolve_packing_mode("auto", config, varlen_available=True) == "varlen"
    model = build_model(cfg.model, config, torch.float32, seed=0).eval()
    g = torch.Generator().manual_seed(2)
    docs = [torch.randint(1, 128, (n,), generator=g).tolist() for n in (7, 12, 9)]
    samples = [{"input_ids": d, "labels": [IGNORE_INDEX] + d[1:]} for d in docs]
    batch = Collator("per_document", mrope=True)(pack_samples(samples, 16, "per_document", pad_id=0))
    packed = Collator("packed", mrope=True)(pack_samples(samples, 32, "packed", pad_id=0))
    with torch.no_grad():
        rows = model(**batch["inputs"], use_cache=False).logits
        together = model(**packed["inputs"], use_cache=False).logits[0]
        start = 0
        for i, doc in enumerate(docs):
            alone = model(input_ids=torch.tensor([doc]), use_cache=False).logits[0]
            torch.testing.assert_close(rows[i, :len(doc)], alone, atol=1e-5, rtol=1e-5)
            if i > 0:
                assert (together[start:start + len(doc)] - alone).abs().max() > 1e-3
            start += len(doc)


def test_collator_cuts_padding_after_the_last_label_and_logits_are_unchanged():
    from data_pipelines.collate import Collator

    cfg = compose(["experiment=ci_tiny"])
    config = build_hf_config(cfg.model, vocab_size=128)
    model = build_model(cfg.model, config, torch.float32, seed=0).eval()
    rows = pack_documents([[5, 6, 7], [8, 9, 10, 11, 12]], seq_len=16, mode="per_document", pad_id=0)
    batch = Collator("per_document", mrope=False)(rows)
    assert batch["inputs"]["input_ids"].shape == (2, 5) and batch["labels"].shape == (2, 5)
    full = torch.tensor(rows["input_ids"])
    with torch.no_grad():
        cut = model(**batch["inputs"], use_cache=False).logits
        ref = model(input_ids=full, use_cache=False).logits[:, :5]
    torch.testing.assert_close(cut, ref, atol=1e-5, rtol=1e-5)
