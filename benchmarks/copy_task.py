"""How many steps a tiny model takes to learn verbatim copying: the capability the commerce tasks need first.

    .venv/bin/python -m benchmarks.copy_task --model qwen3_5_moe_tiny --steps 400
    .venv/bin/python -m benchmarks.copy_task --model qwen3_5_moe_tiny --name qwen3_5_moe_tiny_tied_full_linear_full \
        --set hf_config.tie_word_embeddings=true --set hf_config.text_config.tie_word_embeddings=true \
        --set "hf_config.text_config.layer_types=[full_attention,linear_attention,full_attention]"
    .venv/bin/python -m benchmarks.copy_task --model qwen3_moe_tiny --set "hf_config.mlp_only_layers=[0,1,2,3]"

Each sample is `half` random tokens followed by the same tokens again; the loss is next-token cross entropy over
the whole sequence (plain torch AdamW on transformers' own class, no pipeline), and the printed accuracy is on the
repeat, which only copying can predict (chance 1/vocab). A model that has formed an induction circuit gets the
repeat right; one that has not stays at ln(vocab). This isolates the architecture and optimiser settings from the
demo's data: a setting that forms the circuit here in few steps is worth carrying into the demo's configs.
What decides it here (benchmarks/results/copy_task_*.json): tied input and output embeddings (the copy needs the
unembedding of the token the head attends to; untied, that map must be learnt for all 1024 tokens first) and, in
Qwen3.5, a full-attention layer before the GDN layer (with GDN first and partial RoPE, still at chance at 1500).
In the demo those two did not carry over (README: fine-tuning got worse, pretraining still did not copy).
Writes benchmarks/results/copy_task_<model>.json (the curve).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def build(model_name: str, vocab: int, overrides: list[str]) -> torch.nn.Module:
    """The tiny model of configs/model/<model_name>.yaml (text stack only), with `key=value` overrides."""
    from omegaconf import OmegaConf

    from train.config import ModelConfig
    from train.models.build import build_hf_config

    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig),
                          OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "model" / f"{model_name}.yaml"),
                          OmegaConf.from_dotlist(overrides))
    hf_config = build_hf_config(cfg, vocab_size=vocab)
    text = hf_config.get_text_config()
    text.vocab_size = vocab
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen3_5_moe_tiny")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--half", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--set", action="append", default=[], help="model config override, e.g. hf_config.x=1")
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--name", default=None, help="results file suffix (default: the model)")
    ap.add_argument("--seed", type=int, default=0, help="model init and data seed (circuit onset varies by seed)")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    model = build(args.model, args.vocab, args.set)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    curve, t0 = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        half = torch.randint(0, args.vocab, (args.batch, args.half))
        ids = torch.cat([half, half], dim=1)
        logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, args.vocab), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.every == 0:
            acc = (logits[:, args.half:-1].argmax(-1) == ids[:, args.half + 1:]).float().mean().item()
            curve.append({"step": step, "loss": loss.item(), "repeat_acc": acc})
            print(f"step {step:5d}  loss {loss.item():.3f}  repeat accuracy {acc:.3f}  "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    out = Path(__file__).parent / "results" / f"copy_task_{args.name or args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "copy_task", "args": vars(args), "model_config": model.config.to_diff_dict(),
                               "curve": curve}, indent=2, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
