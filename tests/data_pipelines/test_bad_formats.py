"""Bad input in the formats users bring: each a one-line message naming the file, the record and what is wrong, or
with `data.on_error=skip` a counted skip; content that is not used but looks like media is never ignored silently."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc

import datasets
import pytest

from data_pipelines.bad_input import BadInput, BadInputPolicy, BadRecord
from data_pipelines.json_array import array_elements
from data_pipelines.mixture import count_and_drop_skipped
from data_pipelines.sources import read_records
from tests.conftest import ROOT, subprocess_env
from tests.data_pipelines import format_files as ff
from tests.data_pipelines.test_formats import encode, tok  # noqa: F401  (the module's tokenizer fixture)

GOOD = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}


def _array_text(records: list) -> str:
    return json.dumps(records, indent=2)


def test_json_array_syntax_error_names_the_file_record_and_character(tok, tmp_path):  # noqa: F811
    good = _array_text([GOOD, GOOD, GOOD])
    broken = good.replace('"value": "Hello."\n      }\n    ]\n  },\n  {', '"value": "Hello."\n      }\n    ]\n  }\n  {', 1)
    path = tmp_path / "sft.json"
    path.write_text(broken)
    offset = broken.index("{", broken.index("  }\n  {") + 3)
    line = broken[:offset].count("\n") + 1
    with pytest.raises(BadRecord, match=rf"^{path}:\[1\] \(line {line}\): malformed JSON: expected ',' or ']' at "
                                        rf"character {offset} \(line {line}\), found '{{'$"):
        encode(tok, path)
    path.write_text(good.replace('"from": "gpt"', '"from": "gpt",,', 1))
    with pytest.raises(BadRecord, match=rf"{path}:\[0\] \(line 2\): malformed JSON: Expecting property name enclosed "
                                        r"in double quotes at character \d+ \(line 9\)"):
        encode(tok, path)


def test_array_reading_resumes_after_a_bad_record(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n  {"a": 1},\n  {"a": 2,},\n  {"a": 3}\n]\n')
    got = [(e.index, e.line, e.text, bool(e.error)) for e in array_elements(str(path))]
    assert got == [(0, 2, '{"a": 1}', False), (1, 3, None, True), (2, 4, '{"a": 3}', False)]


def test_a_record_of_the_wrong_type_inside_an_array(tok, tmp_path):  # noqa: F811
    path = ff.write_array(tmp_path / "sft.json", [GOOD, ["not", "a", "record"]])
    with pytest.raises(BadRecord, match=rf"^{path}:\[1\] \(line 14\): not an object: a record is a JSON object, "
                                        r"this one is a list$"):
        encode(tok, path)


def test_unknown_sharegpt_from(tok, tmp_path):  # noqa: F811
    path = ff.write_array(tmp_path / "sft.json", [GOOD, {"conversations": [{"from": "human", "value": "Hi"},
                                                                             {"from": "robot", "value": "beep"}]}])
    with pytest.raises(BadRecord, match=rf"{path}:\[1\] \(line 14\): unknown role: conversations\[1\]\.from='robot' "
                                        r"\(ShareGPT roles: \['assistant', 'bot', 'function_call'"):
        encode(tok, path)


@pytest.mark.parametrize("tools,message", [
    ({"name": "search_items"}, "'tools' is a dict, not a list of function schemas or a JSON string of one"),
    ('{"name": "search_items"}', "'tools' is a JSON string of a dict, not of a list of function schemas"),
    ("[{name: search_items}]", "'tools' is a string that is not JSON: Expecting property name"),
    ([1], "tools\\[0\\] is not a function schema"),
])
def test_tools_that_are_neither_a_list_nor_a_json_string_of_one(tok, tmp_path, tools, message):  # noqa: F811
    path = ff.write_jsonl(tmp_path / "sft.jsonl", [dict(GOOD, tools=tools)])
    with pytest.raises(BadRecord, match=rf"{path}:1: malformed tools: {message}"):
        encode(tok, path)


@pytest.mark.parametrize("record,message", [
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "function_call", "value": "{name: f}"}]},
     r"conversations\[1\] function_call is not JSON: Expecting property name"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "tool_call", "content": "search(city=x)"}]},
     r"messages\[1\] function_call is not JSON: Expecting value"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{city: 1"}}]}]},
     r"messages\[1\]\.tool_calls\[0\]\.arguments is not valid JSON"),
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "function_call",
                                                            "value": json.dumps({"name": "f", "arguments": "[1]"})}]},
     r"messages\[1\]\.tool_calls\[0\]\.arguments is a list, not a JSON object"),
])
def test_tool_call_arguments_that_are_not_json(tok, tmp_path, record, message):  # noqa: F811
    path = ff.write_jsonl(tmp_path / "sft.jsonl", [record])
    with pytest.raises(BadRecord, match=rf"{path}:1: invalid tool call arguments: {message}"):
        encode(tok, path)


@pytest.mark.parametrize("messages,images,message", [
    ([{"role": "user", "content": "<image><image>Compare"}, {"role": "assistant", "content": "Same."}],
     ["mllm_demo_data/1.png"], "2 <image> placeholder\\(s\\) but 1 image\\(s\\) in 'images'"),
    ([{"role": "user", "content": "<image>What is it?"}, {"role": "assistant", "content": "A circle."}],
     None, "1 <image> placeholder\\(s\\) but 0 image\\(s\\) \\(no 'images' list\\)"),
    ([{"role": "user", "content": "What is it?"}, {"role": "assistant", "content": "A circle."}],
     ["mllm_demo_data/1.png"], "0 <image> placeholders but 1 image\\(s\\) in 'images'"),
    ([{"role": "user", "content": "Draw it"}, {"role": "assistant", "content": "<image>"}],
     ["mllm_demo_data/1.png"], "an <image> placeholder in a assistant turn"),
])
def test_image_placeholder_count_mismatch(tok, tmp_path, messages, images, message):  # noqa: F811
    ff.write_images(tmp_path / "mllm_demo_data")
    record = {"messages": messages, **({"images": images} if images is not None else {})}
    path = ff.write_array(tmp_path / "mllm.json", [record])
    with pytest.raises(BadRecord, match=rf"{path}:\[0\] \(line 2\): image mismatch: {message}"):
        encode(tok, path)


def test_a_missing_image(tok, tmp_path):  # noqa: F811
    path = ff.write_array(tmp_path / "mllm.json", [dict(ff.MLLM[0], images=["pics/1.png", "pics/nope.png"])])
    ff.write_images(tmp_path / "pics")
    with pytest.raises(BadRecord, match=rf"{path}:\[0\] \(line 2\): missing image: {tmp_path}/pics/nope.png$"):
        encode(tok, path)


@pytest.mark.parametrize("ref,message", [
    ("https://example.com/cat.png", "'https://example.com/cat.png': remote images are not downloaded"),
    ("data:image/png;base64,iVBORw0KGgo=", "inline image data is not read"),
])
def test_remote_and_inline_images_are_refused(tok, tmp_path, ref, message):  # noqa: F811
    record = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": ref}}]},
                           {"role": "assistant", "content": "A cat."}]}
    path = ff.write_jsonl(tmp_path / "sft.jsonl", [record])
    with pytest.raises(BadRecord, match=rf"{path}:1: unsupported image: .*{message}"):
        encode(tok, path)


def test_a_columns_entry_naming_a_key_no_record_has(tok, tmp_path):  # noqa: F811
    path = ff.write_array(tmp_path / "glaive.json", ff.GLAIVE)
    with pytest.raises(BadInput, match=r"data.sources\[0\] \(.*glaive.json\): columns.tools='functions', but no record "
                                       r"among the first 1 has the key 'functions' \(keys: \['conversations', 'system', "
                                       r"'tools'\]\)"):
        encode(tok, path, columns={"tools": "functions"})


def test_an_unrecognised_format_names_the_record_keys_and_formats_tried(tok, tmp_path):  # noqa: F811
    path = ff.write_array(tmp_path / "odd.json", [{"question": "Hi?", "answer": "Hello."}])
    with pytest.raises(BadInput, match=rf"{path}:\[0\] \(line 2\): record format not recognised \(keys: \['answer', "
                                       r"'question'\]\); tried messages .*sharegpt .*alpaca .*query_response"):
        encode(tok, path)
    mixed = ff.write_jsonl(tmp_path / "mixed.jsonl", [GOOD, {"question": "Hi?"}])  # detected as sharegpt; line 2 is not
    with pytest.raises(BadRecord, match=rf"{mixed}:2: record format not recognised: keys \['question'\]; tried"):
        encode(tok, mixed)


def test_media_looking_keys_are_counted_warnings_and_video_is_an_error(tok, tmp_path):  # noqa: F811
    ff.write_images(tmp_path / "mllm_demo_data")
    records = [dict(ff.MLLM[0], pics=["mllm_demo_data/3.png"]),  # unused: a warning
               dict(ff.MLLM[0], image="mllm_demo_data/1.png"),  # an image the sample carries, listed again: fine
               dict(ff.MLLM[1], thumbnail_url="x/cover.jpg")]  # unused: a warning
    path = ff.write_array(tmp_path / "mllm.json", records)
    policy = BadInputPolicy("raise")
    samples = encode(tok, path, policy=policy)
    assert len(samples) == 3 and [bool(s["warn"]) for s in samples] == [True, False, True]
    assert "key 'pics' looks like media but is not read" in samples[0]["warn"]
    video = ff.write_jsonl(tmp_path / "video.jsonl", [dict(GOOD, videos=["clip.mp4"])])
    with pytest.raises(BadRecord, match=rf"{video}:1: unsupported media: 'videos': video and audio inputs are not"):
        encode(tok, video)


def test_skip_counts_each_kind_of_bad_input(tok, tmp_path):  # noqa: F811
    ff.write_images(tmp_path / "mllm_demo_data")
    records = [GOOD,
               {"conversations": [{"from": "robot", "value": "x"}]},
               dict(GOOD, tools={"name": "f"}),
               {"conversations": [{"from": "human", "value": "Hi"}, {"from": "function_call", "value": "{x"}]},
               {"conversations": [{"from": "human", "value": "<image><image>?"}, {"from": "gpt", "value": "Two."}],
                "images": ["mllm_demo_data/1.png"]},
               {"conversations": [{"from": "human", "value": "<image>?"}, {"from": "gpt", "value": "One."}],
                "images": ["mllm_demo_data/none.png"]},
               ["a list"],
               dict(GOOD, pics=["p.png"]),
               GOOD]
    path = tmp_path / "sft.json"
    path.write_text(_array_text(records).replace('"value": "Hello."', '"value": "Hello.",', 1))  # record 0: bad JSON
    policy = BadInputPolicy("skip")
    samples = encode(tok, path, policy=policy)
    assert len(samples) == len(records)  # one row per record: the skipped ones marked, none lost silently
    good = count_and_drop_skipped(datasets.Dataset.from_list(samples), policy)
    origins = read_records(str(path))["origin"]
    assert good["origin"] == [origins[7], origins[8]]
    assert dict(policy.skipped) == {"malformed JSON": 1, "unknown role": 1, "malformed tools": 1,
                                    "invalid tool call arguments": 1, "image mismatch": 1, "missing image": 1,
                                    "not an object": 1}
    assert dict(policy.warnings) == {"unused media": 1}
    summary = policy.summary()
    assert "bad input skipped (7)" in summary and f"{path}:[1]" in summary and "warnings (1)" in summary


def test_a_large_json_array_is_read_in_bounded_memory(tmp_path):
    path = tmp_path / "big.json"
    record = dict(GOOD, note="x" * 200)
    n = 60_000
    with open(path, "w") as f:  # ~22 MB, pretty-printed like LLaMA-Factory's files
        f.write("[\n" + ",\n".join(json.dumps(record, indent=2) for _ in range(n)) + "\n]\n")
    size = path.stat().st_size
    tracemalloc.start()
    count = sum(1 for e in array_elements(str(path)) if e.text is not None)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == n
    assert peak < size / 4, (peak, size)  # a chunk and an element, not the file (json.load would hold > 2x the file)


def test_read_records_of_a_json_array_and_streamed(tmp_path):
    path = ff.write_array(tmp_path / "glaive.json", ff.GLAIVE * 3)
    rows = read_records(str(path))
    lines = [i + 1 for i, line in enumerate(path.read_text().splitlines()) if line == "  {"]
    assert rows["origin"] == [f"{path}:[{i}] (line {n})" for i, n in enumerate(lines)] and len(lines) == 3
    assert [json.loads(r) for r in rows["record"]] == ff.GLAIVE * 3
    assert [r["origin"] for r in read_records(str(path), streaming=True)] == rows["origin"]


def _sft_cmd(tmp_path, source: str, *extra: str) -> list[str]:
    from tests.conftest import TINY_QWEN3_5

    return [sys.executable, "-m", "train.sft", *TINY_QWEN3_5, f"data.sources=[{source}]", "data.vocab_size=300",
            "data.seq_len=256", "trainer.max_steps=1", "logger.wandb_mode=disabled", f"paths.data_dir={tmp_path}/data",
            f"paths.cache_dir={tmp_path}/cache", f"hydra.run.dir={tmp_path}/run", *extra]


def test_the_run_stops_with_the_one_line_message(tmp_path):
    path = tmp_path / "sft.json"
    path.write_text(_array_text([GOOD, GOOD]).replace('"value": "Hi"', '"value": "Hi",,', 1))
    proc = subprocess.run(_sft_cmd(tmp_path, f"{{kind: chat, path: {path}}}"), cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {path}:[0] (line 2): malformed JSON: Expecting property name"), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr
