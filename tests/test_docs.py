"""Docs that stay true: the commands, links and repository paths in README.md and docs/**/*.md are checked
against the tree, so a renamed key, group, experiment, script or file fails here instead of leaving a stale page.

What a docs author writes, and what is checked:
- Commands live in fenced code blocks marked bash/sh/shell/console or not marked; blocks marked anything else
  (yaml, json, python, text) are not commands. A line is checked when its program, after `VAR=value` prefixes, is
  python/python3/.venv/bin/python, torchrun/.venv/bin/torchrun, srun, sbatch, bash/sh, or a repository script
  (a path ending in `.sh`); other lines (echo, mkdir, pip, ...) are left alone. `\\` continues a line, `#` starts a
  comment, and `&&`, `||`, `;`, `|` separate commands; `>`/`<` redirections are dropped.
- Placeholders: `<...>` (`<DIR>`, `<sft overrides>`) and `...`. An override `key=<...>` or `key=...` keeps its key
  (which must exist) and drops its value; a bare placeholder argument is dropped. `$VAR` stays a literal string.
- `python -m train.X` / `python -m data_pipelines.X` whose module has `@hydra.main`: the overrides are composed
  in-process with Hydra's compose API, as `python -m train.X --cfg job <overrides>` composes them (groups,
  experiments and keys must exist, values must have the schema's types; one spawned `--cfg job` checks that
  the two agree). A `-m`/`--multirun` sweep composes at each swept key's first value. Launcher prefixes are
  stripped: `torchrun [options] -m`, `python -m torch.distributed.run [options] -m`, `srun [options]`.
- `scripts/submit.sh [sbatch options] slurm/X.sbatch <overrides>` and `sbatch slurm/X.sbatch <overrides>`: the
  overrides compose against the entry the sbatch file runs (its `MOE_ENTRY=` line).
- A train.* or data_pipelines.* module without a Hydra config (argparse or `key=value` parsers: train.report,
  data_pipelines.commerce_world) runs `--help` once, and every `--flag` and `key=` the docs pass it must appear
  in that help text; a benchmarks.* script's `--flags` must be ones it declares to argparse.
- Scripts run as programs exist and are executable; sbatch files and pytest paths exist. `scripts/demo.sh`'s
  `PRETRAIN_ARGS`, `SFT_ARGS`, `EVAL_ARGS`, `WORLD_ARGS` prefixes are checked against the stage they go to
  (split on spaces as the script splits them, so they may hold no quotes).
- Relative links `[text](path#anchor)` resolve (an anchor against the target page's headings, GitHub style);
  inline code that names a repository path (`tests/x.py::test_y`, `configs/model/x.yaml`, a glob) exists;
  inline `group=option` and `experiment=X` name existing config files; every docs page is reachable from README;
  every file in benchmarks/results is named by a page.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import CONFIGS, ROOT, subprocess_env

PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
COMMAND_LANGS = {"", "bash", "sh", "shell", "console"}
PYTHONS = {"python", "python3", ".venv/bin/python", "$MOE_PYTHON"}
TORCHRUNS = {"torchrun", ".venv/bin/torchrun"}
CHECKED_PACKAGES = ("train.", "data_pipelines.", "benchmarks.")
REPO_DIRS = (".ci", "benchmarks", "configs", "data_pipelines", "docs", "scripts", "slurm", "tests", "train")
PLACEHOLDER = "__PLACEHOLDER__"
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    text: str
    tokens: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


# ---------------------------------------------------------------------------------------------- reading pages


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def code_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(language, first line number, lines) of every fenced block."""
    blocks, lang, start, lines = [], None, 0, []
    for n, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*```\s*([\w+-]*)", line)
        if fence and lang is None:
            lang, start, lines = fence.group(1).lower(), n + 1, []
        elif fence:
            blocks.append((lang, start, lines))
            lang = None
        elif lang is not None:
            lines.append(line)
    return blocks


def prose(text: str) -> str:
    """The page without its fenced blocks (links and inline code are read from here)."""
    out, inside = [], False
    for line in text.splitlines():
        if re.match(r"^\s*```", line):
            inside = not inside
            continue
        out.append("" if inside else line)
    return "\n".join(out)


def _split_commands(tokens: list[str]) -> list[list[str]]:
    parts, current, skip_next = [], [], False
    for tok in tokens:
        if skip_next:
            skip_next = False
        elif tok in ("&&", "||", ";", "|", "&"):
            parts.append(current)
            current = []
        elif tok in (">", ">>", "<", "2>", "&>", "2>>") or re.fullmatch(r"\d?>&\d", tok):
            skip_next = tok in (">", ">>", "<", "2>", "&>", "2>>")
        elif re.fullmatch(r"\d?>>?\S+", tok):
            continue
        else:
            current.append(tok)
    parts.append(current)
    return [p for p in parts if p]


def commands() -> list[Command]:
    found = []
    for page in PAGES:
        for lang, start, lines in code_blocks(page.read_text(encoding="utf-8")):
            if lang not in COMMAND_LANGS:
                continue
            joined: list[tuple[int, str]] = []
            pending, first = "", 0
            for i, line in enumerate(lines):
                if not pending:
                    first = start + i
                if line.rstrip().endswith("\\"):
                    pending += line.rstrip()[:-1] + " "
                    continue
                joined.append((first, pending + line))
                pending = ""
            for n, line in joined:
                text = re.sub(r"<[^<>\s][^<>]{0,60}>", PLACEHOLDER, line)
                lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|<>")
                lexer.whitespace_split = True
                lexer.commenters = "#"
                try:
                    tokens = list(lexer)
                except ValueError as e:
                    raise AssertionError(f"{_rel(page)}:{n}: cannot split {line.strip()!r}: {e}") from None
                for part in _split_commands(tokens):
                    env = []
                    while part and ENV_ASSIGNMENT.match(part[0]):
                        env.append(tuple(part[0].split("=", 1)))
                        part = part[1:]
                    if part and _is_checked_program(part[0]):
                        found.append(Command(_rel(page), n, line.strip(), tuple(part), tuple(env)))
    return found


def _is_checked_program(program: str) -> bool:
    return (program in PYTHONS | TORCHRUNS | {"srun", "sbatch", "bash", "sh"}
            or (program.endswith(".sh") and "/" in program))


# ----------------------------------------------------------------------------------------- what a command runs


@dataclass
class Invocation:
    """`python -m module args`, or a script with its arguments."""

    module: str | None
    args: list[str]
    script: str | None = None
    multirun: bool = False


def _skip_launcher_options(tokens: list[str]) -> list[str]:
    """Drop `--opt value` / `--opt=value` pairs of torchrun or srun up to the `-m MODULE` or the program."""
    i = 0
    while i < len(tokens) and tokens[i].startswith("-") and tokens[i] != "-m":
        i += 1 if ("=" in tokens[i] or i + 1 >= len(tokens) or tokens[i + 1].startswith("-")) else 2
    return tokens[i:]


def invocation(tokens: tuple[str, ...]) -> Invocation | None:
    toks = list(tokens)
    program = toks.pop(0)
    if program == "srun":
        toks = _skip_launcher_options(toks)
        return invocation(tuple(toks)) if toks else None
    if program in TORCHRUNS:
        toks = _skip_launcher_options(toks)
        if toks[:1] == ["-m"]:
            return Invocation(toks[1], toks[2:])
        return Invocation(None, toks[1:], script=toks[0]) if toks else None
    if program in PYTHONS:
        if toks[:1] != ["-m"]:
            return Invocation(None, toks[1:], script=toks[0]) if toks else None
        module, rest = toks[1], toks[2:]
        if module == "torch.distributed.run":
            return invocation(("torchrun", *rest))
        return Invocation(module, rest)
    if program in ("bash", "sh"):
        return Invocation(None, toks[1:], script=toks[0]) if toks else None
    return Invocation(None, toks, script=program)


# ----------------------------------------------------------------------------------------------- Hydra entries


def module_file(module: str) -> Path | None:
    base = ROOT / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__main__.py"):
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def hydra_entry(module: str) -> tuple[Path, str] | None:
    """(config dir, config name) of a module's `@hydra.main`, or None for a module without one."""
    path = module_file(module)
    source = path.read_text() if path else ""
    found = re.search(r"@hydra\.main\(\s*config_path=\"([^\"]+)\",\s*config_name=\"([^\"]+)\"", source)
    if not found:
        return None
    importlib.import_module(module)  # registers the entry's schemas in Hydra's ConfigStore
    return (path.parent / found.group(1)).resolve(), found.group(2)


def _key_exists(cfg, key: str) -> bool:
    node = cfg
    for part in key.lstrip("+~").split("."):
        if not OmegaConf.is_config(node) or part not in node.keys():  # `in` is False for a ??? value
            return False
        node = node._get_node(part)
    return True


def compose_overrides(module: str, overrides: list[str], multirun: bool = False):
    return _compose_cached(module, tuple(overrides), multirun)


@functools.cache
def _compose_cached(module: str, overrides: tuple[str, ...], multirun: bool):
    """Compose `overrides` for a Hydra entry as `python -m module --cfg job` would; placeholders' keys must
    exist. Raises Hydra's own exception on a bad group, experiment, key or type."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    config_dir, config_name = hydra_entry(module)
    kept, placeholder_keys = [], []
    for o in overrides:
        key, sep, value = o.partition("=")
        if not sep:
            if PLACEHOLDER in o or o == "...":
                continue
            raise AssertionError(f"{o!r} is not a Hydra override (key=value)")
        if PLACEHOLDER in value or value == "...":
            placeholder_keys.append(key)
            continue
        kept.append(o)
    parsed = OverridesParser.create().parse_overrides(kept)
    if multirun:
        kept = []
        for o in parsed:
            if o.is_sweep_override():
                prefix = o.input_line[:len(o.input_line) - len(o.input_line.lstrip("+~"))]
                kept.append(f"{prefix}{o.key_or_group}={next(iter(o.sweep_string_iterator()))}")
            else:
                kept.append(o.input_line)
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=kept, return_hydra_config=True)
    for key in placeholder_keys:
        assert _key_exists(cfg, key), f"no key {key!r} in {module}'s config (given a placeholder value)"
    return cfg


def split_hydra_flags(args: list[str]) -> tuple[list[str], bool]:
    """Overrides and whether this is a multirun, without Hydra's own flags."""
    overrides, multirun, skip = [], False, False
    for a in args:
        if skip:
            skip = False
        elif a in ("-m", "--multirun"):
            multirun = True
        elif a in ("--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-dir", "-cd"):
            skip = True
        elif a in ("--resolve", "--help", "-h", "--hydra-help", "--info"):
            continue
        else:
            overrides.append(a)
    return overrides, multirun


# ------------------------------------------------------------------------------------------------ --help checks


def _help_text(module: str) -> str:
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=subprocess_env(PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, f"python -m {module} --help failed:\n{done.stderr[-2000:]}"
    return done.stdout


def _declared_options(module: str) -> str:
    """The options a benchmark script declares to argparse, read from its source (no process: each would import
    torch for a --help)."""
    return " ".join(re.findall(r"add_argument\(\s*\"(--?[\w-]+)\"", module_file(module).read_text()))


@pytest.fixture(scope="module")
def help_texts() -> dict[str, str]:
    """`--help` of every train.* and data_pipelines.* module without a Hydra config that the docs run, spawned
    side by side (benchmarks.* are read with `_declared_options`)."""
    named = {inv.module for c in commands() if (inv := invocation(c.tokens)) and inv.module}
    named |= {module for module, _ in DEMO_ARGS.values()}
    modules = sorted(m for m in named if m.startswith(("train.", "data_pipelines.")) and module_file(m)
                     and hydra_entry(m) is None)
    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        return dict(zip(modules, pool.map(_help_text, modules), strict=True))


# ------------------------------------------------------------------------------------------------------- tests


def test_the_docs_hold_commands():
    found = commands()
    assert len(found) >= 30, [str(c) for c in found]
    assert {c.page for c in found} >= {"README.md", "docs/training.md", "docs/clusters.md"}


def _sbatch_entry(path: Path) -> str:
    found = re.search(r"^MOE_ENTRY=([\w.]+)$", path.read_text(), re.M)
    assert found, f"{path} sets no MOE_ENTRY="
    return found.group(1)


def _compose(module: str, overrides: list[str], where: Command, multirun: bool = False) -> None:
    try:
        compose_overrides(module, overrides, multirun)
    except AssertionError as e:
        raise AssertionError(f"{where}: {e}") from None
    except Exception as e:  # Hydra's own exception types; the message names the bad override
        raise AssertionError(f"{where}: {type(e).__name__}: {e}") from None


def _check_script(inv: Invocation, where: Command, help_texts: dict[str, str]) -> None:
    path = ROOT / inv.script
    if inv.script == "scripts/demo.sh":
        _check_demo_args(where, help_texts)
    assert path.is_file(), f"{where}: no script {inv.script}"
    if where.tokens[0] == inv.script:  # run as a program, not through bash or python
        assert os.access(path, os.X_OK), f"{where}: {inv.script} is not executable"
    sbatch = [a for a in inv.args if a.endswith(".sbatch")]
    if inv.script.endswith("submit.sh") and sbatch:
        _check_sbatch(sbatch[0], inv.args[inv.args.index(sbatch[0]) + 1:], where)


# scripts/demo.sh passes these variables, split on spaces (no quote handling), to its stages.
DEMO_ARGS = {"PRETRAIN_ARGS": ("train.pretrain", ["experiment=pretrain_commerce_tiny"]),
             "SFT_ARGS": ("train.sft", ["experiment=sft_commerce_tiny"]),
             "EVAL_ARGS": ("train.evaluate", ["model_path=exports/sft"]),
             "BASELINE_EVAL_ARGS": ("train.evaluate", ["model_path=exports/pretrain"]),
             "WORLD_ARGS": ("data_pipelines.commerce_world", [])}


def _check_demo_args(where: Command, help_texts: dict[str, str]) -> None:
    for name, value in where.env:
        if name not in DEMO_ARGS:
            continue
        module, base = DEMO_ARGS[name]
        words = value.split()
        assert not any(q in value for q in "'\""), f"{where}: {name} is split on spaces; quotes would reach Hydra"
        if hydra_entry(module):
            _compose(module, base + words, where)
        else:
            _check_module(Invocation(module, words), where, help_texts)


def _check_sbatch(sbatch: str, overrides: list[str], where: Command) -> None:
    path = ROOT / sbatch
    assert path.is_file(), f"{where}: no sbatch file {sbatch}"
    _compose(_sbatch_entry(path), [o for o in overrides if o != PLACEHOLDER], where)


# Hydra entries that take flags of their own beside Hydra's (flag -> whether a value follows it)
ENTRY_FLAGS = {"train.plan": {"--check": False, "--json": True}}


def _without_own_flags(module: str, args: list[str], where: Command) -> list[str]:
    flags = ENTRY_FLAGS.get(module, {})
    source = module_file(module).read_text(encoding="utf-8")
    out, skip = [], False
    for a in args:
        name = a.split("=", 1)[0]
        if skip:
            skip = False
        elif name in flags:
            assert f'"{name}' in source, f"{where}: {module} no longer takes {name}"
            skip = flags[name] and "=" not in a
        else:
            out.append(a)
    return out


def _check_module(inv: Invocation, where: Command, help_texts: dict[str, str]) -> None:
    module = inv.module
    if module == "pytest":
        for a in inv.args:
            if a.startswith("tests"):
                assert (ROOT / a.split("::")[0]).exists(), f"{where}: no test path {a}"
        return
    if not module.startswith(CHECKED_PACKAGES):
        return
    assert module_file(module), f"{where}: no module {module}"
    if hydra_entry(module):
        overrides, multirun = split_hydra_flags(_without_own_flags(module, list(inv.args), where))
        _compose(module, overrides, where, multirun)
        return
    text = help_texts[module] if module in help_texts else _declared_options(module)
    args = list(inv.args)
    for i, a in enumerate(args):
        name = a.split("=")[0]
        if a in ("-h", "--help") or (i and args[i - 1].startswith("--") and "=" not in args[i - 1]
                                     and not a.startswith("-")):
            continue  # --help itself, or the value of the option before it
        if a.startswith("--"):
            assert re.search(rf"(^|[\s\[,]){re.escape(name)}\b", text), f"{where}: {module} has no option {name}"
        elif "=" in a and not a.startswith(("-", PLACEHOLDER)):
            assert f"{name}=" in text, f"{where}: {module} takes no {name}= (its --help lists no such key)"


def test_every_command_in_the_docs_runs_as_written(help_texts):
    problems = []
    for c in commands():
        inv = invocation(c.tokens)
        if inv is None:
            continue
        try:
            if c.tokens[0] == "sbatch":
                _check_sbatch(c.tokens[1], list(c.tokens[2:]), c)
            elif inv.module:
                _check_module(inv, c, help_texts)
            elif inv.script:
                _check_script(inv, c, help_texts)
        except AssertionError as e:
            problems.append(str(e))
    assert not problems, "\n".join(problems)


def test_in_process_composition_equals_the_cli():
    """The compose API above gives what a user's `--cfg job` prints, interpolations left as written."""
    overrides = ["experiment=sft_commerce_tiny", "model.lora.enabled=true", "optim.lr=1e-4"]
    done = subprocess.run([sys.executable, "-m", "train.sft", "--cfg", "job", *overrides], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=subprocess_env(PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr[-2000:]
    composed = OmegaConf.to_container(compose_overrides("train.sft", overrides))
    composed.pop("hydra")
    assert OmegaConf.to_container(OmegaConf.create(done.stdout)) == composed


def test_a_stale_command_is_caught():
    """The checks fail on what a renamed key, experiment or script leaves behind."""
    stale = {"python -m train.pretrain trainer.max_stpes=3": "max_stpes",
             "torchrun --nproc_per_node 2 -m train.sft experiment=sft_nope": "sft_nope",
             "scripts/submit.sh --nodes=2 slurm/export.sbatch run_name=<run>": "run_name",
             "scripts/no_such.sh": "no script",
             "python -m train.evaluate model_path=<DIR> eval.splitt=train": "splitt"}
    for text, expected in stale.items():
        line = re.sub(r"<[^<>\s][^<>]{0,60}>", PLACEHOLDER, text)
        c = Command("test", 1, text, tuple(shlex.split(line)))
        inv = invocation(c.tokens)
        with pytest.raises(AssertionError, match=expected):
            if inv.module:
                _check_module(inv, c, {})
            else:
                _check_script(inv, c, {})


# ------------------------------------------------------------------------------------------ links and inline code


def _slug(heading: str) -> str:
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", prose(page.read_text()), re.M)}


def links(page: Path) -> list[str]:
    text = re.sub(r"`[^`\n]*`", "", prose(page.read_text(encoding="utf-8")))
    return re.findall(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)


def link_problems(page: Path) -> list[str]:
    problems = []
    for target in links(page):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            problems.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            problems.append(f"{target}: no heading #{anchor} in {dest.name}")
    return problems


def _inline_code(page: Path) -> list[str]:
    return re.findall(r"`([^`\n]+)`", prose(page.read_text(encoding="utf-8")))


def inline_problems(page: Path) -> list[str]:
    problems = []
    groups = {p.name for p in CONFIGS.iterdir() if p.is_dir()}
    for code in _inline_code(page):
        code = code.strip()
        if re.fullmatch(rf"({'|'.join(map(re.escape, REPO_DIRS))})/[\w./*-]*(::\w+)?", code):
            path, _, test = code.partition("::")
            if "*" in path:
                if not list(ROOT.glob(path)):
                    problems.append(f"`{code}` matches no file")
            elif not (ROOT / path).exists():
                problems.append(f"`{code}` does not exist")
            elif test and not re.search(rf"^def {test}\(", (ROOT / path).read_text(), re.M):
                problems.append(f"`{code}`: no {test} in {path}")
        for group, option in re.findall(r"(?:^|\s)([a-z_]+)=([\w.-]+)(?=\s|$)", code):
            if group in groups and not (CONFIGS / group / f"{option}.yaml").is_file() and option != "null":
                problems.append(f"`{code}`: no configs/{group}/{option}.yaml")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_relative_link_resolves(page):
    problems = link_problems(page)
    assert not problems, f"{_rel(page)}: " + "; ".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_inline_repository_paths_and_config_options_exist(page):
    problems = inline_problems(page)
    assert not problems, f"{_rel(page)}: " + "; ".join(problems)


def test_stale_links_paths_and_options_are_caught(tmp_path):
    (tmp_path / "other.md").write_text("# A heading\n")
    page = tmp_path / "page.md"
    page.write_text("[gone](missing.md) [anchor](other.md#no-such) [fine](other.md#a-heading)\n"
                    "`tests/test_configs.py::test_no_such_test` `configs/model/nope.yaml` `model=nope`\n"
                    "`benchmarks/results/nothing_*.json` `experiment=ci_tiny` `tests/test_configs.py`\n"
                    "```bash\n[in a block](not_a_link.md) `configs/not/checked.yaml`\n```\n")
    assert link_problems(page) == ["missing.md: no such file", "other.md#no-such: no heading #no-such in other.md"]
    assert inline_problems(page) == ["`tests/test_configs.py::test_no_such_test`: no test_no_such_test in "
                                     "tests/test_configs.py", "`configs/model/nope.yaml` does not exist",
                                     "`model=nope`: no configs/model/nope.yaml",
                                     "`benchmarks/results/nothing_*.json` matches no file"]


def test_every_docs_page_is_reachable_from_the_readme():
    seen, todo = set(), [ROOT / "README.md"]
    while todo:
        page = todo.pop()
        if page in seen:
            continue
        seen.add(page)
        for target in links(page):
            path = target.partition("#")[0]
            if path.endswith(".md") and not re.match(r"^[a-z]+:", path):
                dest = (page.parent / path).resolve()
                if dest.is_file():
                    todo.append(dest)
    unreachable = [_rel(p) for p in PAGES if p.resolve() not in {s.resolve() for s in seen}]
    assert not unreachable, f"docs pages no link leads to from README.md: {unreachable}"


def test_every_results_file_is_cited_by_a_page():
    """A results file is committed only when a page says what it shows."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in PAGES)
    uncited = [p.name for p in sorted((ROOT / "benchmarks" / "results").iterdir()) if p.name not in text]
    assert not uncited, f"benchmarks/results files no page cites: {uncited}"
