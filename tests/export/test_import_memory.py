"""Rank-local import: `build_model` with `model.init_from` never materialises the whole model on an EP rank.

References: transformers' own `from_pretrained` of the same folder (values and logits), the safetensors
headers (bytes on disk), and the process's own peak resident memory (/proc/self/status VmHWM) measured
in a fresh interpreter for EP=1 and for one rank of EP=2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from tests.conftest import compose
from tests.export.hf_folders import FAMILY_OVERRIDES, save_random_hf
from train.models.build import FAMILIES, build_hf_config, build_model
from train.models.hf_import import load_hf_weights, materialize_empty, shard_index

EXPERT_PARAMS = (".experts.gate_up_proj", ".experts.down_proj")
ROOT = Path(__file__).resolve().parents[2]


def _build(family: str, folder: Path, ep_rank: int = 0, ep_size: int = 1):
    cfg = compose([*FAMILY_OVERRIDES[family], f"model.init_from={folder}"])
    return build_model(cfg.model, build_hf_config(cfg.model), torch.float32, seed=1, ep_rank=ep_rank,
                       ep_size=ep_size)


@pytest.fixture(scope="module", params=["qwen3_moe", "qwen3_5_moe"])
def hf_folder(request, tmp_path_factory) -> tuple[str, Path]:
    family = request.param
    return family, save_random_hf(family, tmp_path_factory.mktemp("hf") / family)


def test_rank_local_build_equals_from_pretrained(hf_folder):
    family, folder = hf_folder
    reference = FAMILIES[family][1].from_pretrained(folder, dtype=torch.float32).eval()
    model = _build(family, folder).eval()
    assert not [n for n, p in model.named_parameters() if p.device.type != "cpu"]
    ref_state = reference.state_dict()
    assert model.state_dict().keys() == ref_state.keys()
    for name, value in model.state_dict().items():
        assert torch.equal(value, ref_state[name]), name
    # buffers that are not in the checkpoint (rotary frequencies) must be real too: same logits
    ids = torch.tensor([[1, 7, 42, 9, 100, 3, 11, 250]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=0, atol=1e-5)


def test_ep2_rank_holds_its_experts_and_every_dense_tensor(hf_folder):
    family, folder = hf_folder
    ref_state = FAMILIES[family][1].from_pretrained(folder, dtype=torch.float32).state_dict()
    model = _build(family, folder, ep_rank=1, ep_size=2)
    for name, value in model.state_dict().items():
        if name.endswith(EXPERT_PARAMS):
            half = value.shape[0] // 2
            assert torch.equal(value[half:], ref_state[name][half:]), name
        else:
            assert torch.equal(value, ref_state[name]), name


def _bytes_on_disk(folder: Path) -> tuple[int, int]:
    """(non-expert bytes, expert bytes) from the safetensors headers; mtp tensors are not imported."""
    dense = expert = 0
    for name, path in shard_index(folder).items():
        with safe_open(str(path), "pt") as f:
            sl = f.get_slice(name)
            n = torch.Size(sl.get_shape()).numel() * {"F32": 4, "BF16": 2, "F16": 2}[sl.get_dtype()]
        if name.startswith("mtp."):
            continue
        if ".mlp.experts." in name:
            expert += n
        else:
            dense += n
    return dense, expert


def test_ep2_rank_reads_half_the_expert_bytes(hf_folder):
    family, folder = hf_folder
    dense, expert = _bytes_on_disk(folder)
    assert expert > 0 and dense > 0
    counts = {}
    for ep_rank, ep_size in ((0, 1), (0, 2), (1, 2)):
        cls, config = FAMILIES[family][1], FAMILIES[family][0].from_pretrained(folder)
        from accelerate import init_empty_weights

        with init_empty_weights(include_buffers=False):
            model = cls._from_config(config, dtype=torch.float32)
        materialize_empty(model)
        counts[(ep_rank, ep_size)] = load_hf_weights(model, folder, ep_rank, ep_size)["bytes"]
    assert counts[(0, 1)] == dense + expert
    assert counts[(0, 2)] == counts[(1, 2)] == dense + expert // 2


_MEASURE = """
import json, sys, torch
import transformers.models.qwen3_moe.modeling_qwen3_moe  # imported before the peak is reset
from train.config import ModelConfig
from train.models.build import build_hf_config, build_model

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

folder, ep_rank, ep_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cfg = ModelConfig(family="qwen3_moe", init_from=folder)
hf_config = build_hf_config(cfg)
with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current resident set
    f.write("5")
base = status("VmRSS")
model = build_model(cfg, hf_config, torch.float32, seed=0, ep_rank=ep_rank, ep_size=ep_size)
print(json.dumps({"peak_growth": status("VmHWM") - base}))
"""


@pytest.fixture(scope="module")
def wide_experts(tmp_path_factory) -> tuple[Path, int]:
    """A Qwen3-MoE folder whose experts (32 MiB) dwarf everything else, with per-expert keys."""
    config = Qwen3MoeConfig(vocab_size=256, hidden_size=256, intermediate_size=256, moe_intermediate_size=256,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                            num_experts=16, num_experts_per_tok=2)
    folder = tmp_path_factory.mktemp("wide") / "q3"
    Qwen3MoeForCausalLM(config).save_pretrained(folder)
    return folder, _bytes_on_disk(folder)[1]


def _peak_growth(folder: Path, ep_rank: int, ep_size: int) -> int:
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(folder), str(ep_rank), str(ep_size)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_growth"]


@pytest.mark.slow
def test_ep2_rank_peak_memory_holds_half_the_experts(wide_experts):
    folder, expert_bytes = wide_experts
    whole = _peak_growth(folder, 0, 1)
    rank = _peak_growth(folder, 1, 2)
    print(f"experts on disk {expert_bytes / 2**20:.1f} MiB; peak RSS growth of build_model: "
          f"EP=1 {whole / 2**20:.1f} MiB, EP=2 rank 1 {rank / 2**20:.1f} MiB")
    assert whole >= expert_bytes  # the measurement sees the experts being materialised
    # Half the experts are neither allocated nor read (page cache mapped by safetensors counts too): the
    # rank saves about the experts' size. Allocating every expert and reading half saves only ~0.5 of it.
    assert whole - rank >= 0.8 * expert_bytes
