"""HF -> import -> DeepSpeed checkpoint -> export, and export after training, through the user-facing commands.

Matrix (the cheapest that covers every axis at least once):
  A  Qwen3-MoE    EP=2 (2 processes)  ZeRO-3  0 updates (lr=0)  `torchrun -m train.export ... verify=true`
  B  Qwen3.5-MoE  EP=1 (1 process)    ZeRO-2  0 updates (lr=0)  with `mtp.*` tensors; exporter in-process
  C  Qwen3.5-MoE  EP=2 (2 processes)  ZeRO-2  3 training steps   `torchrun -m train.export ... verify=true`
  D  Qwen3.5-MoE  EP=2 (2 processes)  ZeRO-2  3 LoRA steps from an HF folder, adapters merged at export, verify
A and B: the export equals the source folder tensor by tensor (fp32 export). A, C and D: the export's logits equal
the DeepSpeed engine loaded from the same checkpoint (text, and an image for Qwen3.5) within 1e-5 (D: 1e-4). D: exactly the
adapted weights (attention, Gated DeltaNet projections, every routed expert) differ from the source.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, run_pretrain
from tests.export.hf_folders import CI_TINY_RUN, QWEN3_5, read_all, save_random_hf
from train.checkpoint.manifest import verify_manifest

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

NO_UPDATE = ["optim.lr=0", "trainer.max_steps=1"]
STEP1 = "checkpoints/step_00000001"
QWEN3_5_RUN = [o for o in QWEN3_5 if "vocab_size" not in o] + CI_TINY_RUN


def _max_diff(output: str) -> float:
    m = re.search(r"verify: max \|logit difference\| export vs training model = (\S+)", output)
    assert m, output[-3000:]
    print(m.group(0))
    return float(m.group(1))


@pytest.fixture(scope="module")
def case_a(tmp_path_factory, shared_data):
    base = tmp_path_factory.mktemp("a")
    src = save_random_hf("qwen3_moe", base / "src")
    run_pretrain(base / "run", 2, ["experiment=ci_tiny", f"model.init_from={src}", "deepspeed=zero3",
                                   "parallel.ep_size=2", "logger=disabled", *NO_UPDATE], shared_data)
    export = run_pretrain(base / "hydra", 2, [f"checkpoint={base / 'run' / STEP1}", f"out={base / 'export'}",
                                              "export.dtype=float32", "verify=true", "export.verify_atol=1e-5"],
                          shared_data, module="train.export")
    return {"src": src, "out": base / "export", "output": export.output}


@pytest.fixture(scope="module")
def case_b(tmp_path_factory, shared_data):
    from train.checkpoint.hf_export import export_checkpoint

    base = tmp_path_factory.mktemp("b")
    src = save_random_hf("qwen3_5_moe", base / "src", with_mtp=True)
    run_pretrain(base / "run", 1, [*QWEN3_5_RUN, f"model.init_from={src}", "deepspeed=zero2",
                                   "parallel.ep_size=1", *NO_UPDATE], shared_data)
    ckpt = base / "run" / STEP1
    result = export_checkpoint(ckpt, base / "export", torch.float32, max_shard_bytes=300_000)
    return {"src": src, "out": base / "export", "ckpt": ckpt, "result": result, "run": base / "run"}


# case c trains with tied embeddings (the head is the embedding; the export leaves it out, as save_pretrained does)
TIED = ["+model.hf_config.tie_word_embeddings=true", "model.hf_config.text_config.tie_word_embeddings=true"]


@pytest.fixture(scope="module")
def case_c(tmp_path_factory, shared_data):
    base = tmp_path_factory.mktemp("c")
    run_pretrain(base / "run", 2, [*QWEN3_5_RUN, "deepspeed=zero2", "parallel.ep_size=2", "trainer.max_steps=3",
                                   *TIED], shared_data)
    export = run_pretrain(base / "hydra", 2, [f"checkpoint={base / 'run' / 'checkpoints/step_00000003'}",
                                              f"out={base / 'export'}", "export.dtype=float32", "verify=true",
                                              "export.verify_atol=1e-5"], shared_data, module="train.export")
    return {"out": base / "export", "output": export.output}


LORA = ["model.lora.enabled=true", "model.lora.rank=4", "model.lora.alpha=8", "optim.lr=1e-2"]


@pytest.fixture(scope="module")
def case_d(tmp_path_factory, shared_data):
    base = tmp_path_factory.mktemp("d")
    src = save_random_hf("qwen3_5_moe", base / "src")
    run_pretrain(base / "run", 2, [*QWEN3_5_RUN, f"model.init_from={src}", "deepspeed=zero2",
                                   "parallel.ep_size=2", "trainer.max_steps=3", *LORA], shared_data)
    export = run_pretrain(base / "hydra", 2, [f"checkpoint={base / 'run' / 'checkpoints/step_00000003'}",
                                              f"out={base / 'export'}", "export.dtype=float32", "verify=true",
                                              "export.verify_atol=1e-4"], shared_data, module="train.export")
    return {"src": src, "out": base / "export", "output": export.output}


def _assert_identical(src: Path, out: Path) -> None:
    want, got = read_all(src), read_all(out)
    assert sorted(got) == sorted(want)
    for name, tensor in want.items():
        assert got[name].dtype == torch.float32, name
        assert torch.equal(got[name], tensor), name


def test_a_qwen3_ep2_zero3_round_trip_is_identical(case_a):
    _assert_identical(case_a["src"], case_a["out"])
    assert any(".mlp.experts.7.down_proj.weight" in k for k in read_all(case_a["out"]))


def test_a_verify_reloads_the_engine_and_matches(case_a):
    assert _max_diff(case_a["output"]) <= 1e-5


def test_c_tied_export_leaves_the_head_out_and_loads_tied(case_c):
    from transformers import AutoModelForImageTextToText

    assert "lm_head.weight" not in read_all(case_c["out"])
    model = AutoModelForImageTextToText.from_pretrained(case_c["out"])
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight


def test_b_qwen3_5_ep1_zero2_round_trip_is_identical_with_mtp(case_b):
    _assert_identical(case_b["src"], case_b["out"])
    assert case_b["result"]["mtp_tensors"] == 2


def test_c_export_after_training_reproduces_training_logits_text_and_image(case_c):
    assert _max_diff(case_c["output"]) <= 1e-5
    assert re.search(r"AutoEP: 3 MoE layers .*, ep_size=2, ZeRO stage 2", case_c["output"])


def test_b_side_files_are_what_serving_stacks_read(case_b):
    out = case_b["out"]
    cfg = json.loads((out / "config.json").read_text())
    text = cfg["text_config"]
    assert cfg["architectures"] == ["Qwen3_5MoeForConditionalGeneration"]
    assert text["num_experts"] == 8 and cfg["dtype"] == "float32"
    rope = text["rope_parameters"]
    assert rope["mrope_section"] == [2, 3, 3] and rope["mrope_interleaved"] is True
    assert rope["partial_rotary_factor"] == 0.25 and rope["rope_theta"] == 1e7
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert cfg["image_token_id"] == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg["vision_start_token_id"] == tok.convert_tokens_to_ids("<|vision_start|>")
    gen = json.loads((out / "generation_config.json").read_text())
    assert tok.convert_tokens_to_ids("<|im_end|>") in gen["eos_token_id"]
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert (pre["patch_size"], pre["temporal_patch_size"], pre["merge_size"]) == (16, 2, 2)
    assert pre["image_mean"] == pre["image_std"] == [0.5, 0.5, 0.5]
    call = {"role": "assistant", "content": "",
            "tool_calls": [{"function": {"name": "search", "arguments": {"city": "Hangzhou"}}}]}
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}, call], tokenize=False)
    assert "<|im_start|>user\nhi<|im_end|>" in rendered
    assert "<function=search>\n<parameter=city>\nHangzhou\n</parameter>" in rendered


def test_b_index_shards_and_manifest(case_b):
    out = case_b["out"]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == case_b["result"]["shards"] > 1
    assert shards == sorted(p.name for p in out.glob("model-*-of-*.safetensors"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest) == {p.name for p in out.iterdir() if p.name != "manifest.json"}
    for name, entry in manifest.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == entry["sha256"], name
    assert verify_manifest(out, collective=False) == []  # the same format and check as a checkpoint's


KILL_AFTER_SECOND_SHARD = """
import os, signal, sys, torch
import train.checkpoint.hf_export as hx
real, calls = hx.save_file, []
def save_then_die(*a, **k):
    real(*a, **k)
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
hx.save_file = save_then_die
hx.export_checkpoint(sys.argv[1], sys.argv[2], torch.float32, max_shard_bytes=300_000)
"""


def test_b_killed_export_leaves_no_complete_looking_folder(case_b, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_SECOND_SHARD, str(case_b["ckpt"]), str(out)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not out.exists()
    leftovers = list(tmp_path.glob(".killed.tmp-*"))
    assert leftovers, "the export was killed before writing anything"
    for tmp in leftovers:
        names = {p.name for p in tmp.iterdir()}
        assert "model.safetensors.index.json" not in names and "manifest.json" not in names
        assert not any(n.endswith(".safetensors") for n in names)
    from train.checkpoint.hf_export import export_checkpoint

    export_checkpoint(case_b["ckpt"], out, torch.float32)  # a rerun still succeeds
    assert (out / "manifest.json").exists()


ADAPTED = re.compile(r"language_model\.layers\.\d+\.(self_attn\.[qkvo]_proj|linear_attn\.(in_proj_qkv|in_proj_z|out_proj)"
                     r"|mlp\.experts\.\d+\.(gate|up|down)_proj)\.weight$")


def test_d_lora_export_merges_adapters_and_reproduces_training_logits(case_d):
    # 1e-4, the float32 default: the export computes W + s B A once, training W x + s (x A^T) B^T (1.5e-5 seen)
    assert _max_diff(case_d["output"]) <= 1e-4
    want, got = read_all(case_d["src"]), read_all(case_d["out"])
    assert sorted(got) == sorted(want)  # no adapter tensor is written
    adapted = sorted(n for n in want if ADAPTED.search(n))
    assert len([n for n in adapted if ".experts." in n]) == 3 * 8 * 3  # layers x experts x projections
    assert any("in_proj_qkv" in n for n in adapted) and any("o_proj" in n for n in adapted)
    for name, tensor in want.items():
        if name in adapted:
            assert not torch.equal(got[name], tensor), f"{name}: the adapter was not merged"
        else:
            assert torch.equal(got[name], tensor), f"{name}: a frozen base weight changed"
