"""Pack tokenised documents into fixed-length rows without letting one document see another.

`packed`: documents share a row; position ids restart at every document, which transformers' full-attention
layers turn into a block-diagonal mask; the first token of each document gets no label, so nothing is learnt
across a boundary. `per_document`: one document (or a chunk of a long one) per row, padded; used where
attention cannot keep documents apart (Gated DeltaNet without varlen kernels). `varlen`: packed rows for
models with Gated DeltaNet when flash-linear-attention is importable (GPU): the loader flattens a micro-batch
into one sequence and passes `cu_seq_lens_*`, which transformers hands to fla's varlen GDN kernel and to
flash attention. The varlen plumbing is untested on CPU (fla needs a GPU). Samples with images always get a
row of their own: packing them would need per-segment vision positions, which nothing here proves safe.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
PACKING_MODES = ("packed", "per_document", "varlen")


def has_linear_attention(hf_config) -> bool:
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    return "linear_attention" in (getattr(text, "layer_types", None) or [])


def fla_available() -> bool:
    """flash-linear-attention's varlen chunked GDN kernel is importable (it needs CUDA + triton)."""
    try:
        import torch
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule  # noqa: F401
        return torch.cuda.is_available()
    except Exception:
        return False


def causal_conv1d_available() -> bool:
    """The causal-conv1d CUDA kernel, which takes the document boundaries of a packed row."""
    try:
        from causal_conv1d import causal_conv1d_fn  # noqa: F401
        return True
    except Exception:
        return False


def gdn_varlen_available() -> bool:
    """Both GDN kernels that respect document boundaries. fla alone is not enough: measured on an H200 (fla 0.6,
    transformers 5.24), the torch fallback of the short convolution in front of the delta rule leaks across
    documents (max |logit diff| 0.54 against per-document passes; tests/data_pipelines/test_varlen_gpu.py)."""
    return fla_available() and causal_conv1d_available()


def resolve_packing_mode(requested: str, hf_config, varlen_available: bool | None = None) -> str:
    """`auto` packs; with Gated DeltaNet layers only through varlen kernels (fla), else one document per row."""
    gdn = has_linear_attention(hf_config)
    if varlen_available is None:
        varlen_available = gdn and gdn_varlen_available()
    if requested == "packed" and gdn:
        raise ValueError("data.packing=packed with Gated DeltaNet layers would leak state across documents; "
                         "use data.packing=auto, varlen (needs flash-linear-attention on GPU) or per_document")
    if requested == "varlen" and gdn and not varlen_available:
        raise ValueError("data.packing=varlen needs flash-linear-attention and causal-conv1d on a CUDA device (not "
                         "importable here; without causal-conv1d the convolution leaks across documents); "
                         "use data.packing=auto or per_document")
    if requested != "auto":
        return "packed" if requested == "varlen" and not gdn else requested
    if not gdn:
        return "packed"
    return "varlen" if varlen_available else "per_document"


def describe_packing(mode: str) -> str:
    """The line the run log prints, so nobody has to guess whether documents share rows."""
    return {"packed": "packed rows, position ids restart per document (attention is block-diagonal)",
            "per_document": "one document per row, padded (no packing: Gated DeltaNet without varlen kernels)",
            "varlen": "packed rows through varlen kernels (fla Gated DeltaNet + cu_seq_lens), untested on CPU"}[mode]


def _chunks(ids: list[int], seq_len: int) -> list[list[int]]:
    return [ids[i:i + seq_len] for i in range(0, len(ids), seq_len)]


def pack_documents(docs: list[list[int]], seq_len: int, mode: str, pad_id: int) -> dict[str, list[list[int]]]:
    """Rows of `input_ids`, `position_ids` and `labels`, each exactly `seq_len` long (long documents are split)."""
    samples = [{"input_ids": c, "labels": [IGNORE_INDEX] + c[1:]} for doc in docs for c in _chunks(doc, seq_len)]
    rows = pack_samples(samples, seq_len, mode, pad_id)
    return {k: rows[k] for k in ("input_ids", "position_ids", "labels")}


def pack_samples(samples: list[dict], seq_len: int, mode: str, pad_id: int) -> dict[str, list]:
    """Pack labelled samples (each at most `seq_len`) into rows; a sample with images gets a row of its own.

    A sample has `input_ids` and `labels` and optionally `mm_token_type_ids`, `images`, `image_grid_thw`;
    rows carry the same keys (image lists concatenated in order) plus restarting `position_ids`.
    """
    if mode not in PACKING_MODES:
        raise ValueError(f"packing mode {mode!r} is not one of {PACKING_MODES}")
    multimodal = any("mm_token_type_ids" in s for s in samples)
    keys = ["input_ids", "position_ids", "labels"] + (["mm_token_type_ids", "images", "image_grid_thw"]
                                                      if multimodal else [])
    rows: dict[str, list] = {k: [] for k in keys}
    cur: dict[str, list] = {k: [] for k in keys}

    def flush() -> None:
        if not cur["input_ids"]:
            return
        pad = seq_len - len(cur["input_ids"])
        rows["input_ids"].append(cur["input_ids"] + [pad_id] * pad)
        rows["position_ids"].append(cur["position_ids"] + list(range(pad)))
        rows["labels"].append(cur["labels"] + [IGNORE_INDEX] * pad)
        if multimodal:
            rows["mm_token_type_ids"].append(cur["mm_token_type_ids"] + [0] * pad)
            rows["images"].append(list(cur["images"]))
            rows["image_grid_thw"].append(list(cur["image_grid_thw"]))
        for v in cur.values():
            v.clear()

    for s in samples:
        n = len(s["input_ids"])
        if n > seq_len:
            raise ValueError(f"a sample of {n} tokens does not fit data.seq_len={seq_len}")
        alone = mode == "per_document" or bool(s.get("images"))
        if alone or len(cur["input_ids"]) + n > seq_len:
            flush()
        cur["input_ids"].extend(s["input_ids"])
        cur["position_ids"].extend(range(n))
        cur["labels"].extend(s["labels"])
        if multimodal:
            cur["mm_token_type_ids"].extend(s.get("mm_token_type_ids") or [0] * n)
            cur["images"].extend(s.get("images") or [])
            cur["image_grid_thw"].extend(s.get("image_grid_thw") or [])
        if alone:
            flush()
    flush()
    return rows
