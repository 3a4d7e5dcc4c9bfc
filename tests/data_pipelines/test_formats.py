"""Golden tests per record format: the exact text each file's records render to and which tokens carry loss.

Files are written as LLaMA-Factory, ms-swift and OpenAI write them (tests/data_pipelines/format_files.py) and read
through the run's own path: reader, format detection, column mapping, encoder. Templates: qwen3_5_nothink (one
sample per dialog) unless named.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from data_pipelines.bad_input import BadInputPolicy
from data_pipelines.config import DataConfig, ImageConfig, SourceConfig
from data_pipelines.mixture import encode_source
from data_pipelines.packing import IGNORE_INDEX
from data_pipelines.tokenizer import train_bpe_tokenizer
from data_pipelines.training_data import detect_source_format, run_sources, source_specs
from tests.data_pipelines import format_files as ff
from tests.data_pipelines.loss_spans import loss_spans

IM_END = "<|im_end|>"
VISION = "<|vision_start|>{}<|vision_end|>"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return ff.write_all(tmp_path_factory.mktemp("formats"))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_bpe_tokenizer(ff.tokenizer_texts(), 600, tmp_path_factory.mktemp("tok") / "tok",
                               chat_template="qwen3_5_nothink")


def data_config(path, kind: str = "chat", **source) -> DataConfig:
    return DataConfig(kind="sft" if kind == "chat" else "mixture", source="files", seq_len=2048,
                      chat_template="qwen3_5_nothink", sources=[SourceConfig(kind=kind, path=str(path), **source)],
                      image=ImageConfig(min_pixels=1024, max_pixels=16384))


def encode(tok, path, kind: str = "chat", policy: BadInputPolicy | None = None, **source) -> list[dict]:
    cfg = data_config(path, kind, **source)
    spec = source_specs(cfg, run_sources(cfg, Path()))[0]
    return list(encode_source(spec, tok, policy or BadInputPolicy("raise"), 0))


def spans(tok, sample) -> list[str]:
    return loss_spans(tok, sample["input_ids"], sample["labels"])


def text(tok, sample) -> str:
    return tok.decode(sample["input_ids"])


def tools_header(tok, tools: list[dict]) -> str:
    """The system block Qwen3.5's template writes for `tools` (its fixed instructions, up to </IMPORTANT>)."""
    rendered = tok.apply_chat_template([{"role": "user", "content": "x"}], tools=tools, tokenize=False)
    return rendered[:rendered.index("</IMPORTANT>") + len("</IMPORTANT>")]


def xml_call(city: str, item: str) -> str:
    return (f"<tool_call>\n<function=search_items>\n<parameter=city>\n{city}\n</parameter>\n<parameter=item>\n"
            f"{item}\n</parameter>\n</function>\n</tool_call>")


def test_formats_are_detected_per_source(files):
    expected = {"alpaca": "alpaca", "sharegpt": "sharegpt", "role_tag": "messages", "llava": "messages",
                "swift_agent": "messages", "query_response": "query_response", "prompt_completion": "query_response",
                "openai": "messages"}
    for name, fmt in expected.items():
        cfg = data_config(files[name])
        assert detect_source_format(run_sources(cfg, Path())[0]).format == fmt, name


def test_alpaca_with_system_and_history(tok, files):
    first, second = encode(tok, files["alpaca"])
    assert text(tok, first) == ("<|im_start|>user\nName the cheapest milk tea.\nA: 18 yuan, B: 12 yuan<|im_end|>\n"
                                "<|im_start|>assistant\nB, at 12 yuan.<|im_end|>\n")
    assert spans(tok, first) == ["B, at 12 yuan.<|im_end|>"]
    assert text(tok, second) == (
        "<|im_start|>system\nYou translate.<|im_end|>\n"
        "<|im_start|>user\nTranslate: rice<|im_end|>\n<|im_start|>assistant\n米饭<|im_end|>\n"
        "<|im_start|>user\nTranslate: tea<|im_end|>\n<|im_start|>assistant\n茶<|im_end|>\n"
        "<|im_start|>user\nTranslate to Chinese.<|im_end|>\n<|im_start|>assistant\n奶茶<|im_end|>\n")
    assert spans(tok, second) == ["米饭<|im_end|>", "茶<|im_end|>", "奶茶<|im_end|>"]
    assert first["origin"].endswith("alpaca_en_demo.json:[0] (line 2)")


def test_sharegpt_with_system_string_tools_and_parallel_calls(tok, files):
    (sample,) = encode(tok, files["sharegpt"])
    calls = xml_call("Hangzhou", "milk tea") + "\n" + xml_call("Suzhou", "milk tea")
    assert text(tok, sample) == (
        tools_header(tok, [ff.SEARCH_TOOL]) + "\n\nYou are a shop assistant.<|im_end|>\n"
        "<|im_start|>user\nMilk tea in Hangzhou and in Suzhou, please.<|im_end|>\n"
        f"<|im_start|>assistant\n{calls}<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n{\"options\": [\"A 18 yuan\"]}\n</tool_response>\n"
        "<tool_response>\n{\"options\": [\"B 12 yuan\"]}\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\nA costs 18 yuan in Hangzhou, B 12 yuan in Suzhou.<|im_end|>\n"
        "<|im_start|>user\nThanks.<|im_end|>\n<|im_start|>assistant\nYou are welcome.<|im_end|>\n")
    # the calls and answers are learnt; tool responses (and system, user) never are
    assert spans(tok, sample) == [calls + IM_END, "A costs 18 yuan in Hangzhou, B 12 yuan in Suzhou.<|im_end|>",
                                       "You are welcome.<|im_end|>"]


def test_sharegpt_equals_the_same_dialog_in_openai_messages(tok, files, tmp_path):
    g = ff.GLAIVE[0]
    calls = [{"type": "function", "function": json.loads(t["value"])} for t in g["conversations"][1:3]]
    openai = {"tools": [ff.SEARCH_TOOL], "messages": [
        {"role": "system", "content": g["system"]},
        {"role": "user", "content": g["conversations"][0]["value"]},
        {"role": "assistant", "content": "", "tool_calls": calls},
        *[{"role": "tool", "content": t["value"]} for t in g["conversations"][3:5]],
        *[{"role": {"gpt": "assistant", "human": "user"}[t["from"]], "content": t["value"]}
          for t in g["conversations"][5:]]]}
    (a,) = encode(tok, files["sharegpt"])
    (b,) = encode(tok, ff.write_jsonl(tmp_path / "openai.jsonl", [openai]))
    assert a["input_ids"] == b["input_ids"] and a["labels"] == b["labels"]


def test_role_tag_variant(tok, files):
    (sample,) = encode(tok, files["role_tag"])
    assert text(tok, sample) == ("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\nHi, what do you need?"
                                 "<|im_end|>\n")
    assert spans(tok, sample) == ["Hi, what do you need?<|im_end|>"]


def test_ms_swift_agent_roles(tok, files):
    (sample,) = encode(tok, files["swift_agent"])
    calls = xml_call("Hangzhou", "milk tea") + "\n" + xml_call("Suzhou", "milk tea")
    assert text(tok, sample) == (
        tools_header(tok, [ff.SEARCH_TOOL]) + "<|im_end|>\n"
        "<|im_start|>user\nMilk tea in Hangzhou and Suzhou?<|im_end|>\n"
        f"<|im_start|>assistant\nLet me search both cities.\n\n{calls}<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n{\"options\": [\"A 18 yuan\"]}\n</tool_response>\n"
        "<tool_response>\n{\"options\": [\"B 12 yuan\"]}\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\nA is 18 yuan, B is 12 yuan.<|im_end|>\n")
    assert spans(tok, sample) == [f"Let me search both cities.\n\n{calls}<|im_end|>",
                                       "A is 18 yuan, B is 12 yuan.<|im_end|>"]


def test_query_response_and_prompt_completion(tok, files):
    (qr,) = encode(tok, files["query_response"])
    assert text(tok, qr) == ("<|im_start|>system\nYou are a shop assistant.<|im_end|>\n"
                             "<|im_start|>user\nMilk tea price in Hangzhou?<|im_end|>\n<|im_start|>assistant\n18 yuan."
                             "<|im_end|>\n<|im_start|>user\nAnd in Suzhou?<|im_end|>\n<|im_start|>assistant\n12 yuan."
                             "<|im_end|>\n")
    assert spans(tok, qr) == ["18 yuan.<|im_end|>", "12 yuan.<|im_end|>"]
    (pc,) = encode(tok, files["prompt_completion"])
    assert text(tok, pc) == ("<|im_start|>user\nMilk tea price in Hangzhou?<|im_end|>\n<|im_start|>assistant\n"
                             "18 yuan.<|im_end|>\n")
    assert spans(tok, pc) == ["18 yuan.<|im_end|>"]


def test_conversational_prompt_completion_learns_only_the_completion(tok, tmp_path):
    path = ff.write_jsonl(tmp_path / "pc.jsonl", [{
        "prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                   {"role": "user", "content": "Price?"}],
        "completion": [{"role": "assistant", "content": "18 yuan."}]}])
    (sample,) = encode(tok, path)
    assert spans(tok, sample) == ["18 yuan.<|im_end|>"]
    assert "Hello.<|im_end|>" in text(tok, sample)


def test_llava_placeholders_with_an_images_list(tok, files):
    first, second = encode(tok, files["llava"])
    red, blue = VISION.format("<|image_pad|>" * 4), VISION.format("<|image_pad|>" * 2)  # 64x64 and 64x32 images
    assert text(tok, first) == (f"<|im_start|>user\n{red}Who is this?<|im_end|>\n<|im_start|>assistant\n"
                                f"A red circle.<|im_end|>\n<|im_start|>user\nAnd this one?{blue}<|im_end|>\n"
                                "<|im_start|>assistant\nA blue square.<|im_end|>\n")
    assert spans(tok, first) == ["A red circle.<|im_end|>", "A blue square.<|im_end|>"]
    folder = files["llava"].parent / "mllm_demo_data"
    assert first["images"] == [str(folder / "1.png"), str(folder / "2.png")]
    assert first["image_grid_thw"] == [[1, 4, 4], [1, 2, 4]]
    assert sum(first["mm_token_type_ids"]) == 6
    assert text(tok, second).startswith(f"<|im_start|>user\n{red}{blue}What differs?<|im_end|>")
    assert "<image>" not in text(tok, first) + text(tok, second)


def test_llava_paths_relative_to_image_root(tok, files, tmp_path):
    record = dict(ff.MLLM[1], images=["1.png", "2.png"])
    path = ff.write_array(tmp_path / "elsewhere" / "data.json", [record])
    root = files["llava"].parent / "mllm_demo_data"
    (sample,) = encode(tok, path, image_root=str(root))
    assert sample["images"] == [str(root / "1.png"), str(root / "2.png")]


def test_openai_content_parts_file_url_and_tool_calls(tok, files):
    (sample,) = encode(tok, files["openai"])
    image = VISION.format("<|image_pad|>" * 4)
    call = xml_call("Hangzhou", "tea")
    assert text(tok, sample) == (
        tools_header(tok, [ff.SEARCH_TOOL]) + "\n\nYou are a shop assistant.<|im_end|>\n"
        f"<|im_start|>user\nWhat is this item? {image}<|im_end|>\n"
        f"<|im_start|>assistant\n{call}<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n{\"options\": [\"A 18 yuan\"]}\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\nIt is tea: A costs 18 yuan.<|im_end|>\n")
    assert spans(tok, sample) == [call + IM_END, "It is tea: A costs 18 yuan.<|im_end|>"]
    assert sample["images"] == [str(files["llava"].parent / "mllm_demo_data" / "1.png")]


def test_columns_rename_the_files_keys(tok, files, tmp_path):
    renamed = [{"dialog": r["conversations"], "functions": r["tools"], "prompt_system": r["system"]} for r in ff.GLAIVE]
    path = ff.write_array(tmp_path / "renamed.json", renamed)
    (a,) = encode(tok, path, columns={"messages": "dialog", "tools": "functions", "system": "prompt_system"})
    (b,) = encode(tok, files["sharegpt"])
    assert a["input_ids"] == b["input_ids"] and a["labels"] == b["labels"]
    pics = [{"messages": r["messages"], "pics": r["images"]} for r in ff.MLLM]
    path = ff.write_array(files["llava"].parent / "pics.json", pics)
    assert [s["input_ids"] for s in encode(tok, path, columns={"images": "pics"})] == [
        s["input_ids"] for s in encode(tok, files["llava"])]


def test_format_named_by_the_source(tok, files):
    (sample,) = encode(tok, files["role_tag"], format="messages")
    assert spans(tok, sample) == ["Hi, what do you need?<|im_end|>"]


# ---- pretraining text ----

def test_pretraining_text_from_text_content_a_field_and_txt(tok, tmp_path):
    eos = "<|endoftext|>"
    c4 = ff.write_jsonl(tmp_path / "c4_demo.jsonl", [{"text": t} for t in ff.PRETRAIN_TEXTS])
    content = ff.write_jsonl(tmp_path / "content.jsonl", [{"content": t, "id": i} for i, t in enumerate(ff.PRETRAIN_TEXTS)])
    body = tmp_path / "body.parquet"
    datasets.Dataset.from_list([{"body": t} for t in ff.PRETRAIN_TEXTS]).to_parquet(str(body))
    wiki = tmp_path / "wiki_demo.txt"
    wiki.write_text("\n".join(ff.PRETRAIN_TEXTS) + "\n\n")
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, t in enumerate(ff.PRETRAIN_TEXTS):
        (docs / f"doc{i}.txt").write_text(t + "\nSecond line.\n")
    (docs / "README.md").write_text("not a document")
    by_line = [t + eos for t in ff.PRETRAIN_TEXTS]
    for path, extra, expected in [(c4, {}, by_line), (content, {}, by_line), (body, {"text_field": "body"}, by_line),
                                  (wiki, {"sample_by": "line"}, by_line),
                                  (docs, {}, [t + "\nSecond line.\n" + eos for t in ff.PRETRAIN_TEXTS])]:
        samples = encode(tok, path, kind="text", **extra)
        assert [text(tok, s) for s in samples] == expected, path
        for s in samples:  # every token but the first carries loss (nothing is learnt across a sample start)
            assert s["labels"][0] == IGNORE_INDEX and s["labels"][1:] == s["input_ids"][1:]
    assert encode(tok, wiki, kind="text", sample_by="line")[1]["origin"] == f"{wiki}:2"


def test_text_source_detects_the_field_it_reads(files, tmp_path):
    content = ff.write_jsonl(tmp_path / "content.jsonl", [{"content": "x"}])
    fmt = detect_source_format(run_sources(data_config(content, kind="text"), Path())[0])
    assert (fmt.format, fmt.text_field) == ("text", "content")


def test_packed_rows_and_batches_of_a_llava_file_carry_its_images(tok, files, tmp_path):
    from data_pipelines.training_data import prepare_data
    from tests.conftest import compose
    from train.models.build import build_hf_config

    tok.save_pretrained(tmp_path / "tok")
    cfg = data_config(files["llava"])
    cfg.tokenizer = str(tmp_path / "tok")
    hf = build_hf_config(compose(["model=qwen3_5_moe_tiny"]).model)
    data = prepare_data(cfg, hf, tmp_path / "data", tmp_path / "cache", True, lambda: None)
    rows = data.train_rows
    folder = files["llava"].parent / "mllm_demo_data"
    assert rows["images"] == [[str(folder / "1.png"), str(folder / "2.png")]] * 2
    for ids in rows["input_ids"]:
        rendered = tok.decode(ids)
        assert "<image>" not in rendered and rendered.count("<|vision_start|>") == 2
    batch = data.collate(rows[:2])["inputs"]
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4], [1, 2, 4]] * 2
    assert batch["pixel_values"].shape == (2 * (16 + 8), 3 * 2 * 16 * 16)
    assert int(batch["mm_token_type_ids"].sum()) == 2 * (4 + 2)


def test_folders_globs_csv_and_saved_datasets_read_the_same_dialogs(tok, files, tmp_path):
    (expected,) = [s["input_ids"] for s in encode(tok, files["sharegpt"])]
    folder = tmp_path / "folder"
    ff.write_array(folder / "a.json", ff.GLAIVE)
    ff.write_jsonl(folder / "sub" / "b.jsonl", ff.GLAIVE)
    (folder / "README.md").write_text("# not data")
    (folder / "dataset_info.json").write_text("{}")
    samples = encode(tok, folder)
    assert [s["input_ids"] for s in samples] == [expected, expected]
    assert [s["origin"] for s in samples] == [f"{folder}/a.json:[0] (line 2)", f"{folder}/sub/b.jsonl:1"]
    as_text = [{"conversations": json.dumps(r["conversations"]), "system": r["system"], "tools": r["tools"]}
               for r in ff.GLAIVE]  # csv holds lists as JSON strings
    csv = tmp_path / "glaive.csv"
    datasets.Dataset.from_list(as_text).to_csv(str(csv), index=False)
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(ff.GLAIVE).save_to_disk(str(saved))
    for path in (csv, saved, f"{folder}/*.json"):
        assert [s["input_ids"] for s in encode(tok, path)] == [expected], path
