"""Each record format trains a few steps from files the test writes (tiny models, CPU), as a user runs it: one
`train.sft` / `train.pretrain` command per format (a Hydra multirun, so the jobs share one process)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import datasets
import pytest

from tests.conftest import ROOT, TINY_QWEN3_5, subprocess_env
from tests.data_pipelines import format_files as ff

pytestmark = pytest.mark.slow

CHAT_FORMATS = {"openai": "messages", "sharegpt": "sharegpt", "role_tag": "messages", "llava": "messages",
                "swift_agent": "messages", "alpaca": "alpaca", "query_response": "query_response",
                "prompt_completion": "query_response"}


def _multirun(module: str, overrides: list[str], sweep: str, tmp_path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", module, "-m", *overrides, sweep, "trainer.max_steps=2", "trainer.micro_batch_size=1",
           "trainer.checkpoint_every=100", "logger.wandb_mode=disabled", "logger.log_every=1", "logger.progress=false",
           f"paths.data_dir={tmp_path}/data", f"paths.cache_dir={tmp_path}/cache", f"hydra.sweep.dir={tmp_path}/sweep",
           "hydra.sweep.subdir=${hydra.job.num}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return proc


def _losses(run_dir) -> list[float]:
    records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [r["loss"] for r in records if "event" not in r]  # step records, not the ledger's start/summary events


def test_every_chat_format_trains_from_its_files(tmp_path):
    files = ff.write_all(tmp_path / "files")
    names = list(CHAT_FORMATS)
    sweep = "data.sources=" + ",".join(f"[{{kind: chat, path: {files[n]}}}]" for n in names)
    proc = _multirun("train.sft", [*TINY_QWEN3_5, "data.vocab_size=400", "data.seq_len=4096"], sweep, tmp_path)
    output = proc.stdout + proc.stderr
    for job, name in enumerate(names):
        assert f"data.sources[0] {files[name]}: {CHAT_FORMATS[name]} format" in output, name
        losses = _losses(tmp_path / "sweep" / str(job))
        assert len(losses) == 2 and all(math.isfinite(x) for x in losses), (name, losses)


def test_every_pretraining_text_form_trains(tmp_path):
    folder = tmp_path / "files"
    texts = [f"{t} Document {i}." for i in range(6) for t in ff.PRETRAIN_TEXTS]
    c4 = ff.write_jsonl(folder / "c4_demo.jsonl", [{"text": t} for t in texts])
    content = ff.write_jsonl(folder / "content.jsonl", [{"content": t} for t in texts])
    body = folder / "body.parquet"
    datasets.Dataset.from_list([{"body": t} for t in texts]).to_parquet(str(body))
    wiki = folder / "wiki_demo.txt"
    wiki.write_text("\n".join(texts) + "\n")
    docs = folder / "docs"
    docs.mkdir()
    for i, t in enumerate(texts):
        (docs / f"{i:02d}.txt").write_text(t + "\n")
    sources = [f"{{kind: text, path: {c4}}}", f"{{kind: text, path: {content}}}",
               f"{{kind: text, path: {body}, text_field: body}}", f"{{kind: text, path: {wiki}, sample_by: line}}",
               f"{{kind: text, path: {docs}}}"]
    sweep = "data.sources=" + ",".join(f"[{s}]" for s in sources)
    _multirun("train.pretrain", ["experiment=ci_tiny", "data.kind=mixture", "data.source=files", "data.vocab_size=300"],
              sweep, tmp_path)
    for job in range(len(sources)):
        losses = _losses(tmp_path / "sweep" / str(job))
        assert len(losses) == 2 and all(math.isfinite(x) for x in losses), (sources[job], losses)


def test_bad_records_are_skipped_and_counted_and_training_goes_on(tmp_path):
    folder = tmp_path / "files"
    ff.write_images(folder / "mllm_demo_data")
    good = ff.MLLM * 2
    bad = [dict(ff.MLLM[0], images=["mllm_demo_data/1.png"]),  # 2 placeholders, 1 image
           dict(ff.MLLM[1], images=["mllm_demo_data/1.png", "mllm_demo_data/gone.png"])]  # a missing image
    path = ff.write_array(folder / "mllm.json", good[:2] + bad + good[2:])
    proc = _multirun("train.sft", [*TINY_QWEN3_5, "data.vocab_size=400", "data.seq_len=1024", "data.on_error=skip"],
                     f"data.sources=[{{kind: chat, path: {path}}}]", tmp_path)
    output = proc.stdout + proc.stderr
    assert "bad input skipped (2): 1 image mismatch" in output and "1 missing image" in output
    assert len(_losses(tmp_path / "sweep" / "0")) == 2
