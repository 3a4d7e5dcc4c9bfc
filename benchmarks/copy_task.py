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
`--vary` gives each row its own span length (half/2..half), so the repeat sits at no fixed offset and only content
matching predicts it (a fixed offset can be learnt from RoPE alone). What 56 runs established, and each run's
command: docs/findings/tiny_model.md, benchmarks/results/copy_task_summary.json.
Writes benchmarks/results/copy_task_<name>.json (the curve).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from train.engine.lr_schedule import get_lr


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


def _optimizer(model: torch.nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    if not args.pipeline_optim:
        embed = model.get_input_embeddings().weight
        rest = [p for p in model.parameters() if p is not embed]
        return torch.optim.AdamW([{"params": rest}, {"params": [embed], "lr_scale": args.embed_lr_scale}],
                                 lr=args.lr, weight_decay=0.0)
    from train.engine.deepspeed_setup import optimizer_param_groups

    return torch.optim.AdamW(optimizer_param_groups(model, 0.1, args.embed_lr_scale), lr=args.lr, betas=(0.9, 0.95))


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
    # The pipeline's settings, one at a time (configs/optim/adamw.yaml, configs/loss/default.yaml): what in it
    # delays the circuit that this loop forms by step 100?
    ap.add_argument("--pipeline_optim", action="store_true",
                    help="weight decay 0.1 on matrices, betas (0.9, 0.95), clipping at 1.0")
    ap.add_argument("--warmup", type=int, default=0, help="linear warm-up steps, then cosine to 0.1 x lr")
    ap.add_argument("--router_losses", action="store_true", help="+ 1e-2 load-balancing loss + 1e-3 router z-loss (pretrain_commerce_tiny)")
    ap.add_argument("--used", type=int, default=None, help="draw tokens from the first N ids only (a padded vocab)")
    ap.add_argument("--zipf", action="store_true", help="draw token i with probability proportional to 1 / (i + 1)")
    ap.add_argument("--cover", type=float, default=0.0,
                    help="this fraction of each batch draws over the whole vocabulary (every row a target); "
                         "accuracy is reported on the other rows")
    ap.add_argument("--vary", action="store_true",
                    help="each row repeats a span of its own length (half/2..half, then unlabelled filler): the repeat "
                         "sits at no fixed offset, so only content matching (an induction head) predicts it")
    ap.add_argument("--embed_lr_scale", type=float, default=1.0, help="the (tied) embedding's lr multiplier")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    model = build(args.model, args.vocab, args.set)
    text = model.config
    opt = _optimizer(model, args)
    used = args.used or args.vocab
    zipf = 1.0 / torch.arange(1, used + 1, dtype=torch.float)
    curve, t0 = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        if args.zipf:
            half = torch.multinomial(zipf, args.batch * args.half, replacement=True).view(args.batch, args.half)
        else:
            half = torch.randint(0, used, (args.batch, args.half))
        n_cover = round(args.cover * args.batch)
        if n_cover:
            half[:n_cover] = torch.randint(0, args.vocab, (n_cover, args.half))
        ids = torch.cat([half, half], dim=1)
        targets = ids[:, 1:].clone()
        repeat = torch.zeros_like(targets, dtype=torch.bool)
        repeat[:, args.half:] = True
        if args.vary:
            for r, n in enumerate(torch.randint(args.half // 2, args.half + 1, (args.batch,)).tolist()):
                ids[r, n:2 * n] = ids[r, :n]
                targets[r] = ids[r, 1:]
                targets[r, 2 * n - 1:] = -100
                repeat[r] = False
                repeat[r, n:2 * n - 1] = True
        out = model(input_ids=ids, output_router_logits=args.router_losses)
        logits = out.logits
        if args.router_losses:
            from train.engine.losses import moe_losses

            labels = torch.cat([ids[:, :1], targets], dim=1)
            loss = moe_losses(logits, labels, out.router_logits, text.num_experts, text.num_experts_per_tok,
                              aux_coef=1e-2, z_coef=1e-3).total
        else:
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, args.vocab), targets.reshape(-1))
        opt.zero_grad()
        loss.backward()
        if args.pipeline_optim:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in opt.param_groups:
            lr = get_lr(step - 1, args.lr, args.warmup, args.steps, 0.1) if args.warmup else args.lr
            group["lr"] = lr * group.get("lr_scale", 1.0)
        opt.step()
        if step % args.every == 0:
            right = (logits[:, :-1].argmax(-1) == targets) & repeat
            acc = right[n_cover:].sum().item() / max(1, repeat[n_cover:].sum().item())
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
