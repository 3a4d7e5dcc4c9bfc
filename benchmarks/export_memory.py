"""Export throughput and peak memory against model size (a measurement, not a test).

    python benchmarks/export_memory.py [--layers 2 4 8 16] [--out benchmarks/results/export_memory.json]

For each size a Qwen3-MoE with the same layer shape (hidden 256, 32 experts of width 256) and a growing
number of layers is built, wrapped in the DeepSpeed engine (ZeRO-2, EP=1, one process) and saved as a
checkpoint; then `train.export` converts it (bf16, 64 MB shards) in a fresh process whose memory is sampled.
Reported: peak anonymous memory (RssAnon, what the process itself allocated) and peak RSS (which also counts
the memory-mapped checkpoint pages the kernel may reclaim), against the checkpoint size and the largest layer.
Bounded memory means RssAnon stays flat while the model grows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MAKE_CHECKPOINT = r"""
import json, os, sys, torch
from omegaconf import OmegaConf
from train.config import PretrainConfig
from train.engine.distributed import configure_accelerator_env, init_distributed
configure_accelerator_env(sys.argv[3]); init_distributed("gloo")
from train.checkpoint.checkpointer import Checkpointer, Topology
from train.engine.deepspeed_setup import build_engine
from train.models.build import build_hf_config, build_model
run = sys.argv[1]; layers = int(sys.argv[2])
cfg = OmegaConf.structured(PretrainConfig)
cfg.model.family = "qwen3_moe"
cfg.model.hf_config = dict(hidden_size=256, intermediate_size=512, moe_intermediate_size=256, num_hidden_layers=layers,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=64, num_experts=32,
                           num_experts_per_tok=2, vocab_size=512)
cfg.deepspeed.zero_stage = 2
model = build_model(cfg.model, build_hf_config(cfg.model), torch.float32, 0)
engine = build_engine(cfg, model)
Checkpointer(os.path.join(run, "checkpoints"), 1, 0, 1).save(
    engine, 1, {"rng": {}}, {"topology": Topology(1, 1, 2).as_dict(), "family": "qwen3_moe", "data": {}})
open(os.path.join(run, "config.json"), "w").write(json.dumps(OmegaConf.to_container(cfg)))
"""

EXPORT_AND_SAMPLE = r"""
import resource, sys, threading, time, torch
peak = {"anon": 0}
def sample():
    while True:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                peak["anon"] = max(peak["anon"], int(line.split()[1]) * 1024)
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
from train.checkpoint.hf_export import export_checkpoint
time.sleep(0.05)
base = peak["anon"]
t0 = time.perf_counter()
r = export_checkpoint(sys.argv[1], sys.argv[2], torch.bfloat16, max_shard_bytes=64 << 20)
dt = time.perf_counter() - t0
time.sleep(0.05)
import json
print(json.dumps({"seconds": dt, "peak_anon_bytes": peak["anon"], "anon_after_imports_bytes": base,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, **r}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "export_memory.json"))
    args = parser.parse_args()
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "2", "PYTHONPATH": str(ROOT)}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for layers in args.layers:
            run = Path(tmp) / f"L{layers}"
            subprocess.run([sys.executable, "-c", MAKE_CHECKPOINT, str(run), str(layers), str(Path(tmp) / "cache")],
                           cwd=ROOT, env=env, check=True, capture_output=True)
            ckpt = run / "checkpoints" / "step_00000001"
            (run / "tokenizer").mkdir()
            _tiny_tokenizer(run / "tokenizer")
            ckpt_bytes = sum(p.stat().st_size for p in ckpt.iterdir() if "model_states" in p.name)
            proc = subprocess.run([sys.executable, "-c", EXPORT_AND_SAMPLE, str(ckpt), str(Path(tmp) / f"out{layers}")],
                                  cwd=ROOT, env=env, check=True, capture_output=True, text=True)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            layer_fp32 = 32 * 3 * 256 * 256 * 4 + 4 * (256 * 256) * 4
            row = {"layers": layers, "checkpoint_weight_bytes": ckpt_bytes, "largest_layer_fp32_bytes": layer_fp32,
                   "export_bytes": r["bytes"], "seconds": round(r["seconds"], 2),
                   "mb_per_s": round(r["bytes"] / r["seconds"] / 1e6, 1),
                   "peak_anon_mb": round(r["peak_anon_bytes"] / 2**20, 1),
                   "anon_after_imports_mb": round(r["anon_after_imports_bytes"] / 2**20, 1),
                   "peak_rss_mb": round(r["peak_rss_bytes"] / 2**20, 1),
                   "shard_buffer_peak_mb": round(r["peak_shard_buffer_bytes"] / 2**20, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": f"{os.cpu_count()} CPU cores", "rows": rows}, indent=2) + "\n")


def _tiny_tokenizer(folder: Path) -> None:
    from data_pipelines.tokenizer import train_bpe_tokenizer

    train_bpe_tokenizer(["a small corpus for a benchmark tokenizer"] * 50, 300, folder)


if __name__ == "__main__":
    main()
