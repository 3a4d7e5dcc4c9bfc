"""Run by tests/engine/test_load_balance_ep.py under torchrun (2 ranks): the global-batch load-balancing loss
through the real DeepSpeed engine (ZeRO-1, AutoEP EP=2) against one process computing it on both ranks' tokens.

    python -m torch.distributed.run --nproc_per_node 2 -m tests.engine.load_balance_two_ranks OUT.json

Each rank gets its own micro-batches, packed and padded by the real collator (rows of different lengths, so the
ranks have different numbers of real tokens). Every rank also holds an untouched copy of the initial model and
runs both ranks' micro-batches through it: the reference loss of micro-batch m is the definition's (shares f
over the step's micro-batches 1..m of both ranks, mean probabilities P of micro-batch m of both ranks), and its
gradient is compared with the engine's averaged router gradients.
"""

from __future__ import annotations

import copy
import json
import sys

import torch
import torch.distributed as dist

from data_pipelines.collate import Collator
from data_pipelines.packing import pack_samples
from tests.conftest import TINY_QWEN3_5, compose
from tests.engine.test_load_balance import reference_losses
from train.engine.load_balance import LoadBalancingLoss
from train.engine.losses import causal_lm_loss

CASES = {
    "qwen3_moe": (["experiment=ci_tiny", "+model.hf_config.vocab_size=256"], "packed", False, 1),
    "qwen3_moe_grad_accum_2": (["experiment=ci_tiny", "+model.hf_config.vocab_size=256"], "packed", False, 2),
    "qwen3_5_moe": ([*TINY_QWEN3_5, "+model.hf_config.text_config.vocab_size=256"], "per_document", True, 1),
}


def micro_batches(rank: int, grad_accum: int, mode: str, mrope: bool, vocab: int) -> list[dict]:
    out = []
    for m in range(grad_accum):
        g = torch.Generator().manual_seed(100 * m + rank)
        lengths = [int(n) for n in torch.randint(5, 30, (3,), generator=g)]
        samples = []
        for n in lengths:
            ids = torch.randint(3, vocab, (n,), generator=g).tolist()
            samples.append({"input_ids": ids, "labels": [-100] + ids[1:]})
        rows = pack_samples(samples, 40, mode, pad_id=0)
        rows = {k: v[:2] for k, v in rows.items()}  # two rows per micro-batch
        out.append(Collator(mode=mode, mrope=mrope)(rows))
    return out


def run_case(overrides: list[str], mode: str, mrope: bool, grad_accum: int) -> dict:
    from deepspeed.utils import safe_get_full_grad

    from train.engine.deepspeed_setup import build_engine
    from train.models.build import build_hf_config, build_model

    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = compose([*overrides, "parallel.ep_size=2", f"trainer.grad_accum_steps={grad_accum}",
                   "trainer.micro_batch_size=2"])
    hf_config = build_hf_config(cfg.model)
    text = hf_config.get_text_config()
    model = build_model(cfg.model, hf_config, torch.float32, seed=0)
    reference = copy.deepcopy(model)
    engine = build_engine(cfg, model)
    engine.train()
    batches = [micro_batches(r, grad_accum, mode, mrope, text.vocab_size) for r in range(world)]

    balance = LoadBalancingLoss("global_batch", text.num_experts, text.num_experts_per_tok)
    micro_batch = LoadBalancingLoss("micro_batch", text.num_experts, text.num_experts_per_tok)
    balance.start_step()
    ours, micro, real_tokens = [], [], []
    for m, mb in enumerate(batches[rank]):
        out = engine(**mb["inputs"], output_router_logits=True, use_cache=False)
        aux, counts = balance(out.router_logits, mb["token_mask"])
        micro.append(float(micro_batch(out.router_logits, mb["token_mask"])[0].detach()))
        real_tokens.append(int(mb["token_mask"].sum()))
        engine.backward(aux + 0.0 * causal_lm_loss(out.logits, mb["labels"]))  # every parameter in the graph
        if m + 1 < grad_accum:
            engine.step()  # only advances DeepSpeed's micro-step count: no optimizer step inside the window
        ours.append(float(aux))
    losses = torch.tensor([ours, micro], dtype=torch.float64)
    dist.all_reduce(losses)
    ours_mean, micro_mean = (losses / world).tolist()
    tokens = torch.zeros(world, grad_accum, dtype=torch.float64)
    tokens[rank] = torch.tensor(real_tokens, dtype=torch.float64)
    dist.all_reduce(tokens)
    engine_grads = [safe_get_full_grad(p).detach().clone() for n, p in engine.module.named_parameters()
                    if n.endswith("mlp.router.gate.weight")]

    step = []
    for m in range(grad_accum):
        outs = [reference(**batches[r][m]["inputs"], output_router_logits=True, use_cache=False)
                for r in range(world)]
        logits = tuple(torch.cat([o.router_logits[layer] for o in outs]) for layer in range(len(outs[0].router_logits)))
        mask = torch.cat([batches[r][m]["token_mask"].reshape(-1) for r in range(world)])[None]
        step.append((logits, mask))
    per_micro = reference_losses(step, text.num_experts, text.num_experts_per_tok)
    reference_loss = torch.stack(per_micro).mean()
    reference_loss.backward()
    reference_grads = [p.grad for n, p in reference.named_parameters() if n.endswith("mlp.gate.weight")]
    assert len(engine_grads) == len(reference_grads) == text.num_hidden_layers
    diffs = [float((a - b).abs().max()) for a, b in zip(engine_grads, reference_grads, strict=True)]
    return {"engine_loss": ours_mean, "micro_batch_loss": micro_mean,
            "reference_loss": [float(x) for x in per_micro], "real_tokens": tokens.int().tolist(),
            "max_grad_diff": max(diffs), "max_grad": max(float(g.abs().max()) for g in reference_grads)}


def main(out_path: str) -> None:
    from train.engine.distributed import init_distributed

    init_distributed("gloo")
    results = {name: run_case(*case) for name, case in CASES.items()}
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(results, f, indent=2)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
