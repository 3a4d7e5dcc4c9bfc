"""`python -m data_pipelines.inspect`: samples rendered with trained tokens marked, images and their token counts,
a summary per source; the same data overrides as a training job."""

from __future__ import annotations

import io
import re
import subprocess
import sys

from data_pipelines.config import DataConfig, ImageConfig, SourceConfig
from data_pipelines.inspect import inspect_data, render_sample
from tests.conftest import ROOT, compose, subprocess_env
from tests.data_pipelines import format_files as ff
from tests.data_pipelines.test_formats import tok  # noqa: F401  (the module's tokenizer fixture)


def _inspect(tmp_path, sources: list[SourceConfig], kind: str = "sft", n: int = 2, **data) -> tuple[int, str]:
    cfg = DataConfig(kind=kind, source="files", seq_len=4096, vocab_size=400, chat_template="qwen3_5_nothink",
                     sources=sources, image=ImageConfig(min_pixels=1024, max_pixels=16384), **data)
    out = io.StringIO()
    code = inspect_data(cfg, tmp_path / "data", n, color=False, out=out)
    return code, out.getvalue()


def test_render_marks_trained_tokens_with_brackets_or_colour(tok):  # noqa: F811
    ids = tok("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n")["input_ids"]
    start = len(tok("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")["input_ids"])
    end = start + len(tok("Hello.<|im_end|>")["input_ids"])
    labels = [t if start <= i < end else -100 for i, t in enumerate(ids)]
    assert render_sample(tok, ids, labels, color=False) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n[[Hello.<|im_end|>]]\n")
    assert "\033[32mHello.<|im_end|>\033[0m" in render_sample(tok, ids, labels, color=True)


def test_inspect_shows_every_chat_format_with_images_and_a_summary(tmp_path):
    files = ff.write_all(tmp_path / "files")
    names = ["sharegpt", "llava", "alpaca", "swift_agent", "openai"]
    code, out = _inspect(tmp_path, [SourceConfig(kind="chat", path=str(files[n])) for n in names])
    assert code == 0, out
    for i, (name, fmt) in enumerate(zip(names, ["sharegpt", "messages", "alpaca", "messages", "messages"],
                                        strict=True)):
        assert f"=== data.sources[{i}] {files[name]}: {fmt} format (detected from" in out
        assert f"=== summary of data.sources[{i}]:" in out
    assert "[[B, at 12 yuan.<|im_end|>]]" in out  # alpaca's answer is trained
    assert "[[A costs 18 yuan in Hangzhou, B 12 yuan in Suzhou.<|im_end|>]]" in out
    assert "<tool_response>\n{\"options\": [\"A 18 yuan\"]}\n</tool_response>" in out  # context, not bracketed
    assert not re.search(r"\[\[[^\]]*<tool_response>", out)
    assert "<|vision_start|><|image_pad|> x 4<|vision_end|>Who is this?" in out
    folder = files["llava"].parent / "mllm_demo_data"
    assert f"  image 1: {folder / '1.png'} (64x64 px) -> grid 1x4x4 -> 4 tokens" in out
    assert f"  image 2: {folder / '2.png'} (64x32 px) -> grid 1x2x4 -> 2 tokens" in out
    assert re.search(r"=== summary of data.sources\[1\]: 2 samples from 2 records, 0 records skipped\n"
                     r"tokens: \d+ \(\d+ trained, [\d.]+%\)\nsample length \(tokens\): min \d+, p50 \d+, p90 \d+, "
                     r"p99 \d+, max \d+ \(data.seq_len 4096\)\nimages: 4 \(min 2, p50 \d, p90 4, p99 4, max 4 tokens "
                     r"each\)", out), out


def test_inspect_counts_what_a_run_would_stop_on(tmp_path):
    ff.write_images(tmp_path / "mllm_demo_data")
    path = ff.write_array(tmp_path / "mllm.json", [ff.MLLM[0], dict(ff.MLLM[1], images=["mllm_demo_data/1.png"]),
                                                   ["not a record"], dict(ff.MLLM[1], pics=["x.png"])])
    code, out = _inspect(tmp_path, [SourceConfig(kind="chat", path=str(path))])
    assert code == 1
    assert "2 samples from 2 records, 2 records skipped" in out
    assert f"skipped: 1 image mismatch (first: {path}:[1] (line " in out
    assert "skipped: 1 not an object" in out and "warnings: 1 unused media" in out
    assert "data.on_error=raise: a run stops at the first bad record" in out
    assert _inspect(tmp_path, [SourceConfig(kind="chat", path=str(path))], on_error="skip")[0] == 0


def test_inspect_text_sources(tmp_path):
    wiki = tmp_path / "wiki_demo.txt"
    wiki.write_text("\n".join(ff.PRETRAIN_TEXTS * 3) + "\n")
    code, out = _inspect(tmp_path, [SourceConfig(kind="text", path=str(wiki), sample_by="line")], kind="mixture")
    assert code == 0
    assert f"=== data.sources[0] {wiki}: text format (field 'text' in 6 of the first 6 records)" in out
    assert f"--- sample 1: {wiki}:1:" in out
    assert "6 samples from 6 records" in out


def test_cli_composes_the_run_overrides_and_prints_brackets_when_piped(tmp_path):
    files = ff.write_all(tmp_path / "files")
    sources = f"data.sources=[{{kind: chat, path: {files['sharegpt']}}}, {{kind: chat, path: {files['llava']}}}]"
    overrides = [sources, "data.vocab_size=400", "data.chat_template=qwen3_5_nothink", "data.image.min_pixels=1024",
                 "data.image.max_pixels=16384", f"paths.data_dir={tmp_path}/data"]
    run_cfg = compose(overrides, "sft")  # what `python -m train.sft` composes from the same overrides
    proc = subprocess.run([sys.executable, "-m", "data_pipelines.inspect", *overrides, "n=1"], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert out.startswith("trained tokens in [[double brackets]]; the rest is context (no loss). data.kind=sft")
    assert "\033[" not in out
    assert out.count("--- sample 1:") == 2 and "--- sample 2:" not in out
    assert f"=== data.sources[0] {files['sharegpt']}: sharegpt format" in out
    assert "[[You are welcome.<|im_end|>]]" in out and "image 2:" in out
    assert run_cfg.data.kind == "sft" and run_cfg.data.image.max_pixels == 16384
