"""Global-batch load balancing on 2 ranks (EP=2, ZeRO-1, the real DeepSpeed/AutoEP engine) equals one process
computing it on both ranks' tokens together: loss and router gradients (<= 1e-6), with one micro-batch and with
two accumulated ones, for both model families. The ranks' rows are padded differently, so their real-token
counts differ; the run is tests/engine/load_balance_two_ranks.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, _free_port, subprocess_env

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("load_balance") / "results.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "tests.engine.load_balance_two_ranks", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", ["qwen3_moe", "qwen3_moe_grad_accum_2", "qwen3_5_moe"])
def test_two_ranks_equal_one_process_on_all_tokens(results, case):
    r = results[case]
    tokens = r["real_tokens"]
    assert tokens[0] != tokens[1], tokens  # the ranks' padding differs, so a per-rank mean would not do
    assert r["engine_loss"] == pytest.approx(r["reference_loss"], abs=1e-6)
    assert r["max_grad"] > 1e-3  # the aux loss alone moves the routers
    assert r["max_grad_diff"] <= 1e-6, r
    # balancing each rank's micro-batch on its own is another loss
    assert all(abs(a - b) > 1e-4 for a, b in zip(r["micro_batch_loss"], r["reference_loss"], strict=True)), r
