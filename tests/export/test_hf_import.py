"""`model.init_from` import: the EP rank reads only its experts; per-expert and fused keys; errors name file and tensor.

The reference is transformers' own `from_pretrained` of the same folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import Qwen3MoeForCausalLM

from tests.export.hf_folders import random_model, save_random_hf
from train.models.hf_import import load_hf_weights

EXPERT_PARAMS = (".experts.gate_up_proj", ".experts.down_proj")


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    """A Qwen3-MoE folder in several shards with an index (per-expert keys, as save_pretrained writes)."""
    return save_random_hf("qwen3_moe", tmp_path_factory.mktemp("hf") / "q3", max_shard_size="200KB")


def _fresh():
    return random_model("qwen3_moe", seed=123)


def test_folder_is_sharded(sharded):
    assert (sharded / "model.safetensors.index.json").exists()
    assert len(list(sharded.glob("model-*.safetensors"))) >= 3


def test_full_import_equals_transformers_from_pretrained(sharded):
    reference = Qwen3MoeForCausalLM.from_pretrained(sharded, dtype=torch.float32).state_dict()
    model = _fresh()
    load_hf_weights(model, sharded)
    ours = model.state_dict()
    assert ours.keys() == reference.keys()
    for name, ref in reference.items():
        assert torch.equal(ours[name], ref), name


def test_ep_rank_reads_only_its_experts(sharded):
    reference = Qwen3MoeForCausalLM.from_pretrained(sharded, dtype=torch.float32).state_dict()
    model = _fresh()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    counts = load_hf_weights(model, sharded, ep_rank=1, ep_size=2)
    n_experts = reference["model.layers.0.mlp.experts.down_proj"].shape[0]
    n_dense = sum(1 for k in reference if not k.endswith(EXPERT_PARAMS))
    # per-expert keys: 3 per expert, only the 4 owned experts of each of the 2 layers are read
    assert counts["read"] == n_dense + 2 * (n_experts // 2) * 3
    for name, value in model.state_dict().items():
        if name.endswith(EXPERT_PARAMS):
            assert torch.equal(value[4:], reference[name][4:]), name
            assert torch.equal(value[:4], before[name][:4]), name  # never read: random init kept
        else:
            assert torch.equal(value, reference[name]), name


def test_fused_keys_import(tmp_path, sharded):
    reference = Qwen3MoeForCausalLM.from_pretrained(sharded, dtype=torch.float32)
    folder = tmp_path / "fused"
    folder.mkdir()
    reference.config.save_pretrained(folder)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    model = _fresh()
    load_hf_weights(model, folder, ep_rank=0, ep_size=2)
    for name, value in model.state_dict().items():
        want = reference.state_dict()[name]
        assert torch.equal(value[:4] if name.endswith(EXPERT_PARAMS) else value,
                           want[:4] if name.endswith(EXPERT_PARAMS) else want), name


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _shard_of(folder: Path, tensor: str) -> str:
    return json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"][tensor]


def test_truncated_shard_names_file_and_tensor(tmp_path, sharded):
    folder = _copy(sharded, tmp_path / "trunc")
    shard = folder / _shard_of(folder, "lm_head.weight")
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as e:
        load_hf_weights(_fresh(), folder)
    msg = str(e.value)
    assert shard.name in msg and "truncated" in msg
    assert "model." in msg or "lm_head" in msg  # the tensor being read is named


def test_corrupt_header_names_file_and_tensor(tmp_path, sharded):
    folder = _copy(sharded, tmp_path / "corrupt")
    shard = folder / _shard_of(folder, "model.norm.weight")
    data = bytearray(shard.read_bytes())
    data[8:40] = b"\xff" * 32
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError) as e:
        load_hf_weights(_fresh(), folder)
    assert shard.name in str(e.value) and "corrupt" in str(e.value)


def test_missing_index_is_named(tmp_path, sharded):
    folder = _copy(sharded, tmp_path / "noindex")
    (folder / "model.safetensors.index.json").unlink()
    with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json: missing"):
        load_hf_weights(_fresh(), folder)


def test_missing_shard_names_file_and_tensor(tmp_path, sharded):
    folder = _copy(sharded, tmp_path / "noshard")
    shard = _shard_of(folder, "model.norm.weight")
    (folder / shard).unlink()
    with pytest.raises(ValueError) as e:
        load_hf_weights(_fresh(), folder)
    assert shard in str(e.value) and "missing" in str(e.value)


def test_shape_mismatch_names_file_and_tensor(tmp_path, sharded):
    folder = _copy(sharded, tmp_path / "shape")
    name = "model.layers.1.mlp.experts.5.up_proj.weight"
    shard = _shard_of(folder, name)
    from safetensors import safe_open

    with safe_open(str(folder / shard), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors[name] = torch.zeros(16, 64)
    save_file(tensors, str(folder / shard), metadata={"format": "pt"})
    with pytest.raises(ValueError) as e:
        load_hf_weights(_fresh(), folder)
    msg = str(e.value)
    assert shard in msg and name in msg and "[16, 64]" in msg and "[32, 64]" in msg


def test_missing_tensor_is_named(tmp_path, sharded):
    folder = _copy(sharded, tmp_path / "missing")
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    del index["weight_map"]["model.layers.0.input_layernorm.weight"]
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"model\.layers\.0\.input_layernorm\.weight"):
        load_hf_weights(_fresh(), folder)


def test_pickle_weights_are_refused_by_name(tmp_path):
    import pickle

    from train.models.hf_import import shard_index

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"only pickle-based weights \(pytorch_model.bin\).*refused"):
        shard_index(tmp_path)
    assert not (tmp_path / "pwned").exists()
