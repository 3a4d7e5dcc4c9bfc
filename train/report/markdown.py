"""report.md: the headline a user judges (task success, unconfirmed orders, image questions, wall time per stage),
the copy diagnostics, what ran, the plots and the score table, from report.json's numbers."""

from __future__ import annotations

from typing import Any

from train.report.numbers import format_value


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c if isinstance(c, str) else format_value(c) for c in row) + " |" for row in rows]
    return lines


def _seconds(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f} s ({v / 60:.1f} min)"


def _rate(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def _config_text(v: Any) -> str:
    return "none" if v is None else str(v)


def _percent(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _evaluated_model(numbers: dict[str, Any], name: str) -> str:
    """The evaluated export, and which training stage started from it (the pretrain-only model of the demo)."""
    path = numbers[name].get("model_path")
    if not path:
        return "n/a"
    starts = [stage for stage, s in numbers["stages"].items() if s["config"].get("model.init_from") == path]
    return f"`{path}`" + "".join(f" (what `{stage}` started from)" for stage in starts)


def _headline(numbers: dict[str, Any], eval_names: list[str]) -> list[str]:
    """What a user judges first: task success, unconfirmed orders and image questions per evaluated model, then
    wall time and throughput per stage."""
    out = ["## Headline", ""]
    if eval_names:
        def row(label: str, key: str, fmt=format_value) -> list[str]:
            return [label] + [fmt(numbers[n].get(key)) for n in eval_names]

        out += _table([""] + [f"`{n}`" for n in eval_names], [
            ["model"] + [_evaluated_model(numbers, n) for n in eval_names],
            ["task success on held-out scenarios"]
            + [f"{_percent(numbers[n].get('task_success'))} of {format_value(numbers[n].get('episodes'))} episodes"
               for n in eval_names],
            row("orders placed without the user's confirmation", "unconfirmed_orders"),
            row("image questions right, with the image", "image_qa_acc_with_image", _percent),
            row("image questions right, image blanked", "image_qa_acc_without_image", _percent),
            row("invalid tool calls", "invalid_tool_call_rate", _percent),
            row("tokens generated per task", "generated_tokens_per_task", _rate),
            row("evaluation wall time", "wall_s", _seconds),
        ])
        out.append("")
    stages = numbers["stages"]
    timed = list(numbers["timings"]) or list(stages)
    timed += [name for name in stages if name not in timed]
    rows = []
    for name in timed:
        s = stages.get(name)
        wall = numbers["timings"].get(name, s["wall_s"] if s else None)
        rows.append([f"`{name}`", _seconds(wall)] + (
            [s["steps"], _rate(s["tokens_per_s"]), _percent(s["mfu"]), s["final_loss"]] if s else ["", "", "", ""]))
    out += ["Wall time of each step of the pipeline, with the training stages' throughput:", ""]
    out += _table(["stage", "wall time", "steps", "tokens/s", "MFU", "final loss"], rows)
    out += ["", f"Total wall time: {_seconds(numbers['total_wall_s'])}.", ""]
    validated = [(name, s) for name, s in stages.items() if s.get("final_val_loss") is not None]
    for name, s in validated:
        by_set = ", ".join(f"{k} {format_value(v)}" for k, v in s["final_val_loss_by_set"].items())
        out.append(f"- `{name}`: validation loss {format_value(s['final_val_loss'])} ({by_set}; {s['evaluations']} "
                   f"evaluations of {s['val_seconds']:.1f} s)")
    if validated:
        out.append("")
    return out


def _copy_diagnostics(numbers: dict[str, Any], eval_names: list[str]) -> list[str]:
    """Teacher-forced copying from the context: what explains the task scores, for whoever tunes the model."""
    out = []
    for name in eval_names:
        e = numbers[name]
        if e.get("reference_digit_acc") is not None:
            out.append(f"- Copying from the context ({name}): {_percent(e['reference_digit_acc'])} of the digits "
                       f"(ids, prices, times) in held-out reference dialogs predicted, "
                       f"{_percent(e.get('reference_assistant_token_acc'))} of all assistant tokens")
        if e.get("record_repeat_later_digit_acc") is not None:
            out.append(f"- Copying in held-out order records ({name}): "
                       f"{_percent(e['record_repeat_later_digit_acc'])} of the later digits of repeated order "
                       f"ids predicted (chance 10%), {_percent(e.get('record_repeat_first_digit_acc'))} of "
                       f"their first digits, {_percent(e.get('record_repeat_id_acc'))} of whole ids")
        per_argument = {k[len("reference_arg_acc["):-1]: v for k, v in e.items() if k.startswith("reference_arg_acc[")}
        if per_argument:
            out.append(f"- Tool-call arguments written exactly ({name}): {_percent(e['reference_arg_acc'])}; "
                       + ", ".join(f"{k} {_percent(v)}" for k, v in sorted(per_argument.items())))
        starts = {k: e[f"reference_arg_start_acc[{k}]"] for k in per_argument if f"reference_arg_start_acc[{k}]" in e}
        if starts:
            out.append(f"- Where an argument's copy fails ({name}): its first distinguishing token (which value "
                       "to copy), then the rest given the true start: "
                       + ", ".join(f"{k} {_percent(v)} / {_percent(e.get(f'reference_arg_continue_acc[{k}]'))}"
                                   for k, v in sorted(starts.items())))
    if not out:
        return []
    return ["## Copy diagnostics", "", "Teacher-forced on held-out reference dialogs and order records "
            "(docs/evaluation.md says what each number means).", ""] + out + [""]


def render(numbers: dict[str, Any], eval_names: list[str], score_rows: list[tuple[str, list[Any]]],
           plots: dict[str, dict[str, str]], shared_plots: dict[str, str]) -> str:
    """`plots[stage]` names each stage's figures (`loss`, `expert_load` where logged); `shared_plots` holds
    `throughput` and `score_table` where drawn."""
    stages = numbers["stages"]
    out = ["# Run report", ""]
    out += _headline(numbers, eval_names)
    out += _copy_diagnostics(numbers, eval_names)

    out += ["## What ran", ""]
    out += _table(["stage", "run dir", "steps", "resumes", "wall time", "tokens/s", "MFU", "first loss",
                   "final loss", "final val loss", "dead experts (end)"],
                  [[f"`{n}`", f"`{s['run_dir']}`", s["steps"], s["resumes"], _seconds(s["wall_s"]),
                    _rate(s["tokens_per_s"]), _percent(s["mfu"]), s["first_loss"], s["final_loss"],
                    s.get("final_val_loss"), s["dead_experts_final"]] for n, s in stages.items()])
    out += ["", "tokens/s and MFU are means over the logged steps, without the first window of each process "
            "start (it includes start-up) and without the time spent on validation.", ""]
    config_keys = list(dict.fromkeys(k for s in stages.values() for k in s["config"]))
    if config_keys:
        out += ["Key configuration (from each run's `config.json`):", ""]
        out += _table(["key"] + [f"`{n}`" for n in stages],
                      [[f"`{k}`"] + [_config_text(s["config"][k]) if k in s["config"] else "n/a" for s in stages.values()]
                       for k in config_keys])
        out.append("")

    out += ["## Training curves", ""]
    for name, figs in plots.items():
        out += [f"### `{name}`", "", f"![{name} loss]({figs['loss']})", ""]
        if "expert_load" in figs:
            out += [f"![{name} expert load]({figs['expert_load']})", ""]
        else:
            out += ["Expert load: n/a (the run logged no per-layer loads).", ""]
    if "throughput" in shared_plots:
        out += ["### Throughput", "", f"![tokens/s and MFU]({shared_plots['throughput']})", ""]

    out += ["## Evaluation", ""]
    if eval_names:
        out += [f"- `{n}`: model `{numbers[n]['model_path'] or 'n/a'}`, {format_value(numbers[n]['episodes'])} "
                f"episodes, {_seconds(numbers[n]['wall_s'])}" for n in eval_names]
        out.append("")
        out += _table(["metric"] + eval_names, [[k] + values for k, values in score_rows])
        out += ["", f"![score table]({shared_plots['score_table']})", ""]
    else:
        out += ["No evaluation results were given.", ""]
    return "\n".join(out)
