"""What the model will see, before a run starts: samples rendered, trained tokens marked, and a summary per source.

    python -m data_pipelines.inspect 'data.sources=[{kind: chat, path: /data/my_sft.json}]' data.tokenizer=/models/X n=3
    python -m data_pipelines.inspect experiment=sft_commerce_tiny model.init_from=exports/pretrain n=2
    python -m data_pipelines.inspect experiment=pretrain_commerce_tiny n=2

It takes the same data overrides as `train.pretrain` / `train.sft` (the `data` group defaults to `chat_files`, as
for SFT; `data=mixture_files` or an experiment for pretraining data) and reads the sources exactly as the run will:
the same reader, format detection, column mapping, chat template and encoder. For each source it prints the format
it found, the first `n` samples with the tokens that carry loss marked apart from the context (colour on a terminal,
`[[...]]` when piped; `color=always|never` to choose), the images each sample carries with their token counts, and
a summary of the whole source: samples, tokens, length percentiles, images, what was skipped and why, and warnings.
Bad records are counted, not fatal, so one pass shows them all; with `data.on_error=raise` (the default) any of
them means the run would stop, and the exit status is 1.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import datasets
import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from data_pipelines.bad_input import BadInputPolicy, stop_on_bad_input
from data_pipelines.config import DataConfig, check_choice, validate_data
from data_pipelines.packing import IGNORE_INDEX

log = logging.getLogger("data_pipelines.inspect")
IMAGE_PAD = "<|image_pad|>"
GREEN, DIM, RESET = "\033[32m", "\033[2m", "\033[0m"


@dataclass
class InspectConfig:
    """The run's config groups as `train.pretrain` composes them; only `data` and `paths` are read here."""
    n: int = 3
    color: str = "auto"  # auto: colour on a terminal, brackets when piped | always | never
    data: DataConfig = field(default_factory=DataConfig)
    paths: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=lambda: {"init_from": None})
    deepspeed: dict[str, Any] = field(default_factory=dict)
    parallel: dict[str, Any] = field(default_factory=dict)
    optim: dict[str, Any] = field(default_factory=dict)
    loss: dict[str, Any] = field(default_factory=dict)
    logger: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    run_name: str = "inspect"
    run_dir: str | None = None


ConfigStore.instance().store(name="inspect_schema", node=InspectConfig)


def _spans(tok, input_ids: list[int], labels: list[int]) -> list[tuple[str, bool]]:
    """(text, trained) pieces of a sample; a run of image pads is one piece `<|image_pad|> x N`."""
    pad = tok.convert_tokens_to_ids(IMAGE_PAD)
    pieces: list[tuple[str, bool]] = []
    group: list[int] = []
    trained = False

    def flush() -> None:
        if group:
            pieces.append((tok.decode(group, skip_special_tokens=False), trained))
            group.clear()

    i = 0
    while i < len(input_ids):
        t, lab = input_ids[i], labels[i] != IGNORE_INDEX
        if t == pad:
            flush()
            j = i
            while j < len(input_ids) and input_ids[j] == pad:
                j += 1
            pieces.append((f"{IMAGE_PAD} x {j - i}", False))
            i = j
            continue
        if lab != trained:
            flush()
            trained = lab
        group.append(t)
        i += 1
    flush()
    return pieces


def render_sample(tok, input_ids: list[int], labels: list[int], color: bool) -> str:
    """The sample's text with the trained tokens marked: green on a terminal, `[[...]]` otherwise."""
    out = []
    for text, trained in _spans(tok, input_ids, labels):
        if color:
            out.append(f"{GREEN}{text}{RESET}" if trained else f"{DIM}{text}{RESET}" if text.startswith(IMAGE_PAD)
                       else text)
        else:
            out.append(f"[[{text}]]" if trained else text)
    return "".join(out)


def _percentiles(values: list[int]) -> str:
    if not values:
        return "none"
    v = sorted(values)

    def p(q: float) -> int:
        return v[min(len(v) - 1, int(q * (len(v) - 1) + 0.5))]

    return f"min {v[0]}, p50 {p(0.5)}, p90 {p(0.9)}, p99 {p(0.99)}, max {v[-1]}"


def _image_lines(images: list[str], grids: list[list[int]]) -> list[str]:
    from PIL import Image

    from data_pipelines.images import num_image_tokens

    lines = []
    for k, (path, grid) in enumerate(zip(images, grids, strict=True)):
        try:
            with Image.open(path) as im:
                size = f"{im.size[0]}x{im.size[1]} px"
        except OSError:
            size = "unreadable"
        t, h, w = grid
        lines.append(f"  image {k + 1}: {path} ({size}) -> grid {t}x{h}x{w} -> {num_image_tokens(grid)} tokens")
    return lines


def inspect_source(tok, spec, index: int, key: str, fmt_line: str, n: int, color: bool, seq_len: int,
                   out: TextIO) -> BadInputPolicy:
    """Print one source: its format, its first `n` samples and a summary of all of it. Returns its counts."""
    from data_pipelines.mixture import encode_source

    policy = BadInputPolicy("skip")
    samples = encode_source(spec, tok, policy, index)
    print(f"=== {key} {', '.join(spec.paths)}: {fmt_line}", file=out)
    shown = 0
    lengths, records, images, image_tokens = [], set(), 0, []
    n_tokens = n_trained = n_split = 0
    for batch in samples.iter(batch_size=1000):
        for j in range(len(batch["input_ids"])):
            if batch["skip"][j]:
                policy.count(batch["skip"][j])
                continue
            for mark in batch["warn"][j].split("\n") if batch["warn"][j] else []:
                policy.count(mark, warning=True)
            ids, labels = batch["input_ids"][j], batch["labels"][j]
            trained = sum(1 for x in labels if x != IGNORE_INDEX)
            lengths.append(len(ids))
            records.add(batch["origin"][j])
            n_tokens += len(ids)
            n_trained += trained
            n_split += bool(batch["overlong_split"][j])
            grids = batch["image_grid_thw"][j]
            images += len(grids)
            image_tokens += [t * h * w // 4 for t, h, w in grids]
            if shown < n:
                shown += 1
                print(f"--- sample {shown}: {batch['origin'][j]}: {len(ids)} tokens, {trained} trained", file=out)
                print(render_sample(tok, ids, labels, color), file=out)
                if grids:
                    print(f"images: {len(grids)}", file=out)
                    for line in _image_lines(batch["images"][j], grids):
                        print(line, file=out)
    skipped = sum(policy.skipped.values())
    print(f"=== summary of {key}: {len(lengths)} samples from {len(records)} records, {skipped} records skipped",
          file=out)
    print(f"tokens: {n_tokens} ({n_trained} trained, {100.0 * n_trained / max(1, n_tokens):.1f}%)", file=out)
    print(f"sample length (tokens): {_percentiles(lengths)} (data.seq_len {seq_len})", file=out)
    if images:
        print(f"images: {images} ({_percentiles(image_tokens)} tokens each)", file=out)
    if n_split:
        print(f"dialog samples split at user turns for length: {n_split}", file=out)
    for title, counts in (("skipped", policy.skipped), ("warnings", policy.warnings)):
        for reason, count in sorted(counts.items()):
            print(f"{title}: {count} {reason} (first: {policy.examples[reason]})", file=out)
    return policy


def inspect_data(cfg: DataConfig, data_dir: Path, n: int, color: bool, out: TextIO = sys.stdout) -> int:
    """Inspect every source of `cfg` (see the module docstring); 1 when the run would stop on bad input."""
    from data_pipelines.training_data import (
        detect_source_format,
        generate_sources,
        run_sources,
        source_specs,
        source_tokenizer,
    )

    validate_data(cfg)
    generate_sources(cfg, data_dir)
    sources = run_sources(cfg, data_dir)
    specs = source_specs(cfg, sources)
    tok = source_tokenizer(cfg, specs, data_dir)
    if cfg.kind == "sft" and not tok.chat_template:
        from data_pipelines.chat_render import chat_template_text

        tok.chat_template = chat_template_text(cfg.chat_template)
    legend = "trained tokens in green" if color else "trained tokens in [[double brackets]]"
    print(f"{legend}; the rest is context (no loss). data.kind={cfg.kind}, chat template {cfg.chat_template}",
          file=out)
    total = BadInputPolicy("skip")
    for i, (src, spec) in enumerate(zip(sources, specs, strict=True)):
        fmt = detect_source_format(src)
        fmt_line = f"{fmt.format} format" + (f" ({fmt.reason})" if fmt.reason else "")
        total.load_state(inspect_source(tok, spec, i, src.key, fmt_line, n, color, cfg.seq_len, out).state())
    if total.skipped and cfg.on_error == "raise":
        first = next(iter(sorted(total.skipped)))
        print(f"data.on_error=raise: a run stops at the first bad record ({total.examples[first]}); fix the records "
              "or set data.on_error=skip to train without them", file=out)
        return 1
    return 0


@hydra.main(config_path="../configs", config_name="inspect", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("datasets", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    datasets.disable_progress_bars()
    check_choice("color", cfg.color, ("auto", "always", "never"))
    color = cfg.color == "always" or (cfg.color == "auto" and sys.stdout.isatty())
    data = OmegaConf.to_object(cfg.data)
    with stop_on_bad_input():
        code = inspect_data(data, Path(cfg.paths.data_dir), cfg.n, color)
    sys.exit(code)


if __name__ == "__main__":
    main()
