"""Micro-batch vs global-batch load balancing, side by side, on the tiny Qwen3.5-MoE pretrained like the demo.

    .venv/bin/python -m data_pipelines.commerce_world out=data/commerce_world seed=0
    .venv/bin/python -m benchmarks.load_balance --world data/commerce_world --steps 300

Two runs of `train.pretrain experiment=pretrain_commerce_tiny` (the commerce world's text and image-caption
pairs), identical but for `loss.balance`: same seed, data order and steps, one process, micro-batches of
`--micro-batch` rows accumulated `--grad-accum` times (the demo's 16 rows per step; balancing over 2 rows is the
regime the paper says stops experts specialising). Each run is exported and read back by transformers, which
runs the world's held-out pretraining files (validation shops, their captions, order records, images):
- validation loss: mean next-token cross entropy on the held-out text (and per domain, and on captions);
- expert specialisation per domain (the four service lines, order records, image tokens), per MoE layer: the
  share of a domain's top-k choices that go to its k most used experts (k/E when spread evenly, 1 when a
  domain keeps to k experts), and the mutual information in bits between the domain and the chosen expert
  (0 when every domain routes alike; at most the domains' entropy).
Writes benchmarks/results/load_balance.json (cited by docs/findings/load_balance.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MODES = ("micro_batch", "global_batch")
DOMAINS = ("food_delivery", "groceries", "cinema", "hotel_travel", "order_records", "image_tokens")


def _run(cmd: list[str], log_path: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_SILENT": "true"}
    env.setdefault("DS_ACCELERATOR", "cpu")
    # one thread per process unless told otherwise: on a loaded machine torch's default (one per core) ran the
    # tiny model's small matmuls ~20x slower, spinning threads that wait for each other
    env.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])}... failed ({proc.returncode}); see {log_path}")
    return time.perf_counter() - t0


def train_and_export(mode: str, args: argparse.Namespace, work: Path) -> dict:
    run_name = f"load_balance_{mode}"
    run_dir = work / "runs" / run_name
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run, not a resume of an older one
    overrides = ["experiment=pretrain_commerce_tiny", f"paths.world_dir={args.world}", f"paths.runs_dir={work / 'runs'}",
                 f"paths.data_dir={work / 'data'}", f"paths.cache_dir={work / 'cache'}", f"run_name={run_name}",
                 f"loss.balance={mode}", f"trainer.max_steps={args.steps}",
                 f"trainer.micro_batch_size={args.micro_batch}", f"trainer.grad_accum_steps={args.grad_accum}",
                 f"trainer.checkpoint_every={args.steps}", f"trainer.seed={args.seed}", "logger.wandb_mode=disabled"]
    print(f"[{mode}] training {args.steps} steps ...", flush=True)
    train_s = _run([sys.executable, "-m", "train.pretrain", *overrides], work / f"{run_name}.log")
    export_dir = work / "exports" / mode
    _run([sys.executable, "-m", "train.export", f"checkpoint={run_dir / 'checkpoints' / f'step_{args.steps:08d}'}",
          f"out={export_dir}", "export.dtype=float32", "export.overwrite=true", f"paths.cache_dir={work / 'cache'}"],
         work / f"{run_name}_export.log")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = metrics[-1]
    print(f"[{mode}] {train_s:.0f} s, final train loss {last['loss']:.4f}", flush=True)
    return {"overrides": overrides, "train_wall_s": round(train_s, 1), "export": str(export_dir),
            "final_train": {k: last[k] for k in ("loss", "lm_loss", "aux_loss", "tokens_per_s", "expert/imbalance_max",
                                                 "expert/entropy_min", "expert/dead")},
            "train_lm_loss_curve": [[m["step"], round(m["lm_loss"], 4)] for m in metrics]}


def _domain_of(doc_id: str, catalogue: dict) -> str:
    from data_pipelines.commerce_world.vocabulary import SERVICE_LINES

    if doc_id.startswith("record-"):
        return "order_records"
    head = doc_id.split("-")[0]
    shop_id = catalogue["items"].get(head, head)
    return SERVICE_LINES[catalogue["shops"][shop_id]][0]


def held_out_samples(world: Path, tokenizer, seq_len: int, image) -> dict[str, list[dict]]:
    """The held-out pretraining files encoded as in training; text samples carry their domain."""
    from data_pipelines.encode import Encoder, EncodeSpec

    raw = json.loads((world / "catalogue.json").read_text())
    catalogue = {"items": {i["item_id"]: i["shop_id"] for i in raw["items"]},
                 "shops": {s["shop_id"]: s["category"] for s in raw["shops"]}}
    text = Encoder(tokenizer, EncodeSpec(kind="text", seq_len=seq_len))
    pairs = Encoder(tokenizer, EncodeSpec(kind="image_text", seq_len=seq_len, image_root=str(world), image=image))
    out: dict[str, list[dict]] = {"text": [], "image_text": []}
    for kind, encoder, path in (("text", text, "text_validation.jsonl"), ("image_text", pairs,
                                                                          "image_text_validation.jsonl")):
        for n, line in enumerate((world / "pretrain" / path).read_text().splitlines()):
            record = json.loads(line)
            for s in encoder(line, f"{path}:{n + 1}"):
                s["domain"] = _domain_of(record["id"], catalogue)
                out[kind].append(s)
    return out


@torch.no_grad()
def evaluate(export_dir: str, samples: dict[str, list[dict]], image, batch_rows: int) -> dict:
    """Held-out cross entropy per domain and routed counts (domain, layer, expert) of real tokens."""
    from data_pipelines.collate import Collator
    from data_pipelines.packing import IGNORE_INDEX, pack_samples
    from train.engine.load_balance import routed_counts
    from train.eval.model_agent import load_export

    model, tokenizer, _ = load_export(export_dir)
    text = model.config.get_text_config()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    counts = torch.zeros(len(DOMAINS), text.num_hidden_layers, text.num_experts, dtype=torch.float64)
    ce: dict[str, list[float]] = {}
    collate = Collator(mode="per_document", mrope=True, image=image)
    for kind, items in samples.items():
        items = sorted(items, key=lambda s: len(s["input_ids"]))
        for start in range(0, len(items), batch_rows):
            chunk = items[start:start + batch_rows]
            keys = ("input_ids", "labels", "mm_token_type_ids", "images", "image_grid_thw")
            rows = pack_samples([{k: s[k] for k in keys if k in s} for s in chunk], max(len(s["input_ids"])
                                for s in chunk), "per_document", pad)
            batch = collate(rows)
            out = model(**batch["inputs"], output_router_logits=True, use_cache=False)
            labels = batch["labels"]
            losses = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(),
                                                       labels[:, 1:].flatten(), reduction="none",
                                                       ignore_index=IGNORE_INDEX).view(labels.shape[0], -1)
            labelled = labels[:, 1:] != IGNORE_INDEX
            image_tokens = batch["inputs"].get("mm_token_type_ids", torch.zeros_like(labels)).bool()
            domain_of_token = torch.full(labels.shape, -1)
            for row, s in enumerate(chunk):
                name = "image_captions" if kind == "image_text" else s["domain"]
                entry = ce.setdefault(name, [0.0, 0.0])
                entry[0] += float(losses[row][labelled[row]].sum())
                entry[1] += float(labelled[row].sum())
                if kind == "image_text":  # a pair's routing counts for its image tokens only
                    domain_of_token[row][image_tokens[row]] = DOMAINS.index("image_tokens")
                else:
                    domain_of_token[row] = DOMAINS.index(s["domain"])
            for d in domain_of_token.unique().tolist():
                if d >= 0:
                    mask = batch["token_mask"] & (domain_of_token == d)
                    counts[d] += routed_counts(out.router_logits, text.num_experts_per_tok, text.num_experts, mask)
    text_sum = sum(v[0] for k, v in ce.items() if k != "image_captions")
    text_n = sum(v[1] for k, v in ce.items() if k != "image_captions")
    return {"val_loss_text": text_sum / text_n, "val_tokens_text": int(text_n),
            "val_loss_per_domain": {k: v[0] / v[1] for k, v in sorted(ce.items())},
            "counts": counts, "top_k": text.num_experts_per_tok}


def specialisation(counts_DLE: torch.Tensor, top_k: int) -> dict:
    """Per layer: each domain's top-k share and the mutual information (bits) between domain and expert."""
    per_layer = []
    for layer in range(counts_DLE.shape[1]):
        c = counts_DLE[:, layer]
        share = {d: float(c[i].topk(top_k).values.sum() / c[i].sum().clamp_min(1)) for i, d in enumerate(DOMAINS)}
        joint = c / c.sum()
        pd, pe = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
        nz = joint > 0
        mi = float((joint[nz] * (joint[nz] / (pd * pe).expand_as(joint)[nz]).log2()).sum())
        h_domain = float(-(pd[pd > 0] * pd[pd > 0].log2()).sum())
        # the same with every domain weighted alike (order records are most of the held-out tokens)
        cond = c / c.sum(1, keepdim=True).clamp_min(1)
        marginal = cond.mean(0, keepdim=True)
        nz = cond > 0
        mi_equal = float((cond[nz] * (cond[nz] / marginal.expand_as(cond)[nz]).log2()).sum() / c.shape[0])
        load = c.sum(0) / c.sum()
        load_entropy = float(-(load[load > 0] * load[load > 0].log()).sum() / math.log(c.shape[1]))
        per_layer.append({"top_k_share": share, "mean_top_k_share": sum(share.values()) / len(share),
                          "mutual_information_bits": mi, "domain_entropy_bits": h_domain,
                          "mutual_information_bits_domains_equal": mi_equal,
                          "domains_equal_entropy_bits": math.log2(c.shape[0]),
                          "held_out_load_entropy": load_entropy})
    return {"per_layer": per_layer, "uniform_top_k_share": top_k / counts_DLE.shape[2]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", required=True, help="a commerce world folder (python -m data_pipelines.commerce_world)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--grad-accum", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--work", default=str(ROOT / "runs" / "benchmark_load_balance"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "load_balance.json"))
    args = ap.parse_args()
    args.world = str(Path(args.world).resolve())
    if not (Path(args.world) / "world.json").exists():
        raise SystemExit(f"--world {args.world}: no world.json; generate it with "
                         f"`python -m data_pipelines.commerce_world out={args.world} seed=0`")
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)

    from data_pipelines.images import ImageSpec
    from train.eval.model_agent import load_export

    runs = {mode: train_and_export(mode, args, work) for mode in MODES}
    image = ImageSpec(min_pixels=1024, max_pixels=16384, max_source_pixels=40_000_000)  # the experiment's values
    _, tokenizer, _ = load_export(runs[MODES[0]]["export"])
    samples = held_out_samples(Path(args.world), tokenizer, 256, image)
    results = {}
    for mode in MODES:
        t0 = time.perf_counter()
        ev = evaluate(runs[mode]["export"], samples, image, batch_rows=8)
        spec = specialisation(ev.pop("counts"), ev.pop("top_k"))
        results[mode] = {**runs[mode], **ev, "specialisation": spec, "eval_wall_s": round(time.perf_counter() - t0, 1)}
        layers = spec["per_layer"]
        print(f"[{mode}] held-out text loss {ev['val_loss_text']:.4f}; per layer top-k share "
              f"{[round(x['mean_top_k_share'], 3) for x in layers]}, MI bits "
              f"{[round(x['mutual_information_bits'], 3) for x in layers]}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "load_balance", "world": {"seed": 0, "path": args.world}, "steps": args.steps,
        "micro_batch_size": args.micro_batch, "grad_accum_steps": args.grad_accum, "seed": args.seed,
        "processes": 1, "cpu_count": os.cpu_count(), "domains": list(DOMAINS),
        "held_out": {"text_samples": len(samples["text"]), "image_text_samples": len(samples["image_text"])},
        "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
