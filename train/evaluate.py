"""Evaluate an exported model on held-out commerce scenarios (and image questions); print a score table.

    python -m train.evaluate model_path=exports/sft eval=commerce
    accelerate launch --num_processes 2 -m train.evaluate model_path=exports/sft    # scenarios split over processes

Scenarios x seeds are spread over processes with accelerate's `split_between_processes`; every process
loads the export with transformers' own class (`device_map=auto` for models larger than one device).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from train.config import EvaluateConfig, register_eval_configs

log = logging.getLogger("train.evaluate")
register_eval_configs()

# Teacher-forced scores (reference dialogs, order-record repeats, MTP draft acceptance): after the headline metrics.
COPYING_PREFIXES = ("reference_", "record_repeat", "mtp_")
TABLE_KEYS = ["task_success", "unconfirmed_orders", "unconfirmed_actions", "terms_shown_rate",
              "grounded_option_rate", "invalid_tool_call_rate", "repeated_questions", "needed_slots_asked",
              "slots_needed", "turns_per_task", "generated_tokens_per_task"]


def format_table(summary: dict[str, Any]) -> str:
    """A two-column text table of the headline metrics, then success per scenario kind and pass^k."""
    rows = [(k, summary.get(k)) for k in TABLE_KEYS if k in summary]
    rows += [(f"success[{kind}]", v) for kind, v in summary.get("success_by_kind", {}).items()]
    rows += [(k, v) for k, v in summary.items() if k.startswith("pass^")]
    rows += [(k, v) for k, v in summary.items() if k.startswith(("image_qa", *COPYING_PREFIXES))]
    width = max(len(k) for k, _ in rows)
    lines = [f"{'metric':<{width}}  value", "-" * (width + 10)]
    for k, v in rows:
        lines.append(f"{k:<{width}}  {v:.3f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    return "\n".join(lines)


def evaluate_model(cfg: EvaluateConfig | DictConfig) -> dict[str, Any]:
    """Run the commerce evaluation (and image QA) for `cfg.model_path`; returns the summary on every process."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import gather_object

    from data_pipelines.commerce_world.world_files import load_catalogue, load_scenarios
    from train.eval.commerce_env.env import CommerceEnv
    from train.eval.commerce_env.scoring import score_episode, score_rows, summarize
    from train.eval.model_agent import TOOL_CALL_STYLE, ModelAgent, load_export

    # cpu=True is what makes accelerate see a torchrun/srun world of CPU processes (else each one runs it all).
    state = PartialState(cpu=not torch.cuda.is_available())
    ev = cfg.eval
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[cfg.precision]
    model, tokenizer, family = load_export(cfg.model_path, cfg.device_map, dtype)
    if cfg.device_map is None:
        model.to(state.device)
    catalogue = load_catalogue(ev.world_dir)
    scenarios = load_scenarios(ev.world_dir, ev.split)[: ev.limit]
    agent = ModelAgent(model, tokenizer, TOOL_CALL_STYLE[family], ev.max_new_tokens, ev.render_tools)
    env = CommerceEnv(catalogue, max_assistant_turns=ev.max_assistant_turns)
    work = [(i, seed) for seed in ev.seeds for i in range(len(scenarios))]
    t0 = time.perf_counter()
    local = []
    with state.split_between_processes(work) as mine:
        for n, (i, seed) in enumerate(mine, 1):
            episode = env.run(agent, scenarios[i], seed)
            local.append((score_episode(episode, scenarios[i], catalogue), episode.messages))
            if state.is_main_process and (n % 10 == 0 or n == len(mine)):
                log.info("commerce eval: %d/%d episodes on this process (%.0fs)", n, len(mine),
                         time.perf_counter() - t0)
    results = gather_object(local) if state.num_processes > 1 else local
    scores = [s for s, _ in results]
    summary = summarize(scores)
    summary["wall_s"] = time.perf_counter() - t0
    summary["processes"] = state.num_processes
    if ev.reference_limit != 0:
        from train.eval.reference_dialogs import evaluate_reference_dialogs

        summary.update(evaluate_reference_dialogs(model, tokenizer, ev.world_dir, ev.split, ev.reference_limit,
                                                  family == "qwen3_5_moe", ev.render_tools, state))
    if ev.reference_limit != 0 and family == "qwen3_5_moe":
        from train.eval.mtp_acceptance import evaluate_mtp_acceptance
        from train.models.mtp import load_mtp

        if load_mtp(model, cfg.model_path):  # the export's draft head (mtp.*), which transformers does not load
            summary.update(evaluate_mtp_acceptance(model, tokenizer, ev.world_dir, ev.split, ev.reference_limit,
                                                   True, ev.render_tools, state))
    if ev.record_repeats_limit != 0:
        from train.eval.record_repeats import evaluate_record_repeats

        summary.update(evaluate_record_repeats(model, tokenizer, ev.world_dir, ev.record_repeats_limit,
                                               family == "qwen3_5_moe", state))
    if ev.image_qa and family == "qwen3_5_moe":
        from train.eval.image_qa import evaluate_image_qa

        summary.update(evaluate_image_qa(model, tokenizer, ev.world_dir, ev.split, ev.image_qa_limit, state))
    if state.is_main_process:
        out = Path(cfg.out) if cfg.out else Path(cfg.model_path) / f"eval_{ev.split}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        # Every episode's messages: a failure or a safety violation is read in its own transcript.
        transcripts = [{"scenario_id": s.scenario_id, "seed": s.seed, "messages": m} for s, m in results]
        out.write_text(json.dumps({"model_path": str(cfg.model_path), "summary": summary,
                                   "scores": score_rows(scores), "transcripts": transcripts},
                                  indent=2, ensure_ascii=False, default=str))
        print(format_table(summary), flush=True)
        print(f"results: {out}", flush=True)
    return summary


@hydra.main(config_path="../configs", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from train.engine.distributed import destroy_process_group_at_exit

    logging.getLogger().setLevel(logging.INFO)
    evaluate_model(cfg)
    destroy_process_group_at_exit()


if __name__ == "__main__":
    main()
