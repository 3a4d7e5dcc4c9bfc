"""PNG figures of the report (matplotlib, Agg): training and validation loss per stage with resumes marked, expert load over time per
stage, throughput and MFU over steps, and the score table as an image."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from train.report.inputs import StageRun  # noqa: E402
from train.report.numbers import format_value  # noqa: E402

MAX_LAYER_PANELS = 8  # larger models: evenly spaced layers, first and last included
DEAD_COLOUR = "#d62728"


def _nan(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else math.nan


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _log_loss_axis(ax) -> None:
    """Log y axis labelled at 1, 2 and 5 of each decade in plain numbers (0.2, 0.5, 1, 2); the other minor ticks
    stay unlabelled, so labels a few pixels apart (0.7, 0.8, 0.9, 1) never print on top of each other."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=(3.0, 4.0, 6.0, 7.0, 8.0, 9.0)))
    ax.yaxis.set_minor_formatter(NullFormatter())


def plot_loss(stage: StageRun, path: Path) -> None:
    _save(loss_figure(stage), path)


def loss_figure(stage: StageRun):
    """Total loss and lm_loss against step, and the validation loss (total, and per held-out set when there are
    several) where the run evaluated it; each process start is its own line piece, resumes are marked. The y axis
    turns logarithmic once the loss spans more than a factor of 10."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for i, seg in enumerate(stage.segments):
        steps = [r["step"] for r in seg]
        ax.plot(steps, [_nan(r["loss"]) for r in seg], color="C0", marker="." if len(seg) < 40 else None,
                label="total loss" if i == 0 else None)
        ax.plot(steps, [_nan(r["lm_loss"]) for r in seg], color="C1", linestyle="--",
                label="lm_loss" if i == 0 else None)
    val = stage.latest_by_step()
    val = [r for r in val if "val/loss" in r]
    if val:
        steps = [r["step"] for r in val]
        ax.plot(steps, [_nan(r["val/loss"]) for r in val], color="C3", marker="o", label="validation loss")
        names = validation_set_names(val)
        for j, name in enumerate(names if len(names) > 1 else []):
            ax.plot(steps, [_nan(r.get(f"val/{name}/loss")) for r in val], color=f"C{4 + j % 6}", marker="x",
                    linestyle=":", linewidth=1, label=f"validation: {name}")
    for i, step in enumerate(stage.resume_steps):
        ax.axvline(step, color="0.4", linestyle=":", linewidth=1.2, label="resume" if i == 0 else None)
        ax.annotate(f"resume @ {step}", (step, 1.0), xycoords=("data", "axes fraction"), rotation=90,
                    va="top", ha="right", fontsize=8, color="0.3")
    losses = [v for r in stage.records for v in (_nan(r["loss"]), _nan(r["lm_loss"]), _nan(r.get("val/loss")))
              if v > 0]
    if losses and max(losses) / min(losses) > 10:
        _log_loss_axis(ax)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{stage.name}: training loss" + (" and validation loss" if val else ""))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def validation_set_names(records: list[dict[str, Any]]) -> list[str]:
    """The held-out sets with a `val/<name>/loss` in these records, in first-seen order."""
    names = [k[4:-5] for r in records for k in r if k.startswith("val/") and k.endswith("/loss") and k != "val/loss"]
    return list(dict.fromkeys(names))


def _layer_selection(num_layers: int) -> list[int]:
    if num_layers <= MAX_LAYER_PANELS:
        return list(range(num_layers))
    return sorted({round(i * (num_layers - 1) / (MAX_LAYER_PANELS - 1)) for i in range(MAX_LAYER_PANELS)})


def plot_expert_load(stage: StageRun, path: Path) -> bool:
    """One panel per layer: experts x step, colour = the expert's share of the layer's routed tokens in that
    logging window; experts that got no tokens are drawn in red. False when the run logged no loads."""
    records = [r for r in stage.latest_by_step() if isinstance(r.get("expert/per_layer"), dict)]
    if not records:
        return False
    load = np.array([r["expert/per_layer"]["load"] for r in records], dtype=np.float64)  # [T, L, E]
    share = load / np.clip(load.sum(axis=2, keepdims=True), 1e-12, None)
    steps = np.array([r["step"] for r in records], dtype=np.float64)
    edges = np.concatenate([[steps[0] - (steps[1] - steps[0] if len(steps) > 1 else 1)], steps])
    edges[0] = max(edges[0], 0.0)
    layers = _layer_selection(load.shape[1])
    num_experts = load.shape[2]
    cmap = ListedColormap(plt.get_cmap("viridis")(np.linspace(0, 1, 256)))
    cmap.set_bad(DEAD_COLOUR)
    vmax = float(share.max()) or 1.0
    height = min(2.6, 0.9 + 0.1 * num_experts)
    fig, axes = plt.subplots(len(layers), 1, figsize=(8, 0.8 + height * len(layers)), sharex=True, squeeze=False)
    mesh = None
    for ax, layer in zip(axes[:, 0], layers, strict=True):
        grid = np.ma.masked_where(load[:, layer, :].T == 0, share[:, layer, :].T)  # [E, T]
        mesh = ax.pcolormesh(edges, np.arange(num_experts + 1) - 0.5, grid, cmap=cmap, vmin=0.0, vmax=vmax,
                             shading="flat")
        dead_now = int((load[-1, layer] == 0).sum())
        ax.set_ylabel(f"layer {layer}\nexpert", fontsize=8)
        ax.set_yticks(range(0, num_experts, max(1, num_experts // 8)))
        ax.tick_params(labelsize=7)
        ax.set_title(f"layer {layer}: {dead_now} dead at the last step", fontsize=8, loc="left")
    axes[-1, 0].set_xlabel("step (each cell: one logging window)")
    fig.suptitle(f"{stage.name}: expert load (share of the layer's tokens; red = dead, 0 tokens; "
                 f"uniform = {1 / num_experts:.3f})", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.86, 0.97))
    cax = fig.add_axes((0.88, 0.1, 0.02, 0.8))
    fig.colorbar(mesh, cax=cax, label="share of tokens")
    _save(fig, path)
    return True


def plot_throughput(stages: list[StageRun], path: Path) -> None:
    """Tokens/s (all ranks) and MFU against step, one line per stage; MFU the run did not measure shows n/a."""
    fig, (ax_tok, ax_mfu) = plt.subplots(2, 1, figsize=(7.5, 5.5), sharex=False)
    any_mfu = False
    for i, stage in enumerate(stages):
        for j, seg in enumerate(stage.segments):
            steps = [r["step"] for r in seg]
            label = stage.name if j == 0 else None
            ax_tok.plot(steps, [_nan(r["tokens_per_s"]) for r in seg], color=f"C{i}", marker=".", label=label)
            mfu = [100 * _nan(r.get("mfu")) for r in seg]
            any_mfu |= any(math.isfinite(v) for v in mfu)
            ax_mfu.plot(steps, mfu, color=f"C{i}", marker=".", label=label)
        for step in stage.resume_steps:
            ax_tok.axvline(step, color=f"C{i}", linestyle=":", linewidth=1)
            ax_mfu.axvline(step, color=f"C{i}", linestyle=":", linewidth=1)
    ax_tok.set_ylabel("tokens/s (all ranks)")
    ax_tok.set_title("throughput (dotted: resume)")
    ax_mfu.set_ylabel("MFU (%)")
    ax_mfu.set_xlabel("step")
    if not any_mfu:
        ax_mfu.text(0.5, 0.5, "MFU n/a", transform=ax_mfu.transAxes, ha="center", va="center", color="0.4")
    for ax in (ax_tok, ax_mfu):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_score_table(rows: list[tuple[str, list[Any]]], names: list[str], path: Path) -> None:
    """The score table as an image: one row per metric, one column per evaluation."""
    cells = [[format_value(v) for v in values] for _, values in rows]
    fig, ax = plt.subplots(figsize=(2.6 + 1.6 * len(names), 0.6 + 0.28 * (len(rows) + 1)))
    ax.axis("off")
    table = ax.table(cellText=cells, rowLabels=[k for k, _ in rows], colLabels=names, loc="center",
                     cellLoc="right")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1.0, 1.25)
    for (r, c), cell in table.get_celld().items():
        if r == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#dde6f0")
        elif c >= 0 and cell.get_text().get_text() == "n/a":
            cell.set_text_props(color="0.55")
    ax.set_title("commerce evaluation: " + " vs ".join(names), fontsize=10)
    fig.tight_layout()
    _save(fig, path)
