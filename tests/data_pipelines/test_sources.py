"""Reading local corpora, weighted mixtures, rank shards, exact stream resume, and bad input by message."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import datasets
import pytest
from PIL import Image

from data_pipelines.bad_input import BadInputPolicy, BadRecord
from data_pipelines.collate import Collator
from data_pipelines.encode import Encoder, EncodeSpec
from data_pipelines.images import ImageSpec
from data_pipelines.loader import StreamingBatches
from data_pipelines.mixture import count_and_drop_skipped, encode_records
from data_pipelines.sources import mix, read_records, shard_for_rank
from data_pipelines.tokenizer import train_bpe_tokenizer

SPEC = ImageSpec(min_pixels=32 * 32, max_pixels=64 * 64, max_source_pixels=200 * 200)


def _jsonl(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_bpe_tokenizer([f"document {i} about milk tea and rice" for i in range(200)], 300,
                               tmp_path_factory.mktemp("tok") / "tok")


def test_every_format_reads_the_same_records(tmp_path):
    rows = [{"text": f"doc {i}", "n": i} for i in range(5)]
    jl = _jsonl(tmp_path / "a.jsonl", rows)
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "a.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    for path in (jl, str(tmp_path / "a.parquet"), str(tmp_path / "saved")):
        got = read_records(path)
        assert [json.loads(r)["text"] for r in got["record"]] == [r["text"] for r in rows], path
    assert read_records(jl)["origin"][2] == f"{jl}:3"
    streamed = list(read_records(str(tmp_path / "a.parquet"), streaming=True))
    assert [json.loads(r["record"])["n"] for r in streamed] == list(range(5))


def test_mixture_proportions_within_tolerance(tmp_path, tok):
    a = _jsonl(tmp_path / "a.jsonl", [{"text": f"a {i}"} for i in range(4000)])
    b = _jsonl(tmp_path / "b.jsonl", [{"text": f"b {i}"} for i in range(4000)])
    enc = Encoder(tok, EncodeSpec(kind="text", seq_len=64))
    policy = BadInputPolicy("raise")
    parts = [encode_records(read_records(p), enc, policy, i) for i, p in enumerate((a, b))]
    mixed = mix(parts, [3.0, 1.0], seed=0)
    counts = Counter(mixed["source"][:2000])
    assert abs(counts[0] / 2000 - 0.75) < 0.03, counts
    assert mix(parts, [3.0, 1.0], seed=0)["source"][:200] == mixed["source"][:200]  # deterministic


def test_ranks_read_disjoint_shards(tmp_path):
    path = _jsonl(tmp_path / "a.jsonl", [{"text": f"a {i}"} for i in range(10)])
    stream = read_records(path, streaming=True)
    seen = [[r["origin"] for r in shard_for_rank(stream, r, 2)] for r in range(2)]
    assert not set(seen[0]) & set(seen[1]) and len(seen[0]) + len(seen[1]) == 10


def _stream_batches(path, tok, seed_state=None):
    enc = Encoder(tok, EncodeSpec(kind="text", seq_len=32))
    samples = encode_records(read_records(path, streaming=True), enc, BadInputPolicy("raise"))
    b = StreamingBatches(shard_for_rank(samples, 1, 2), 32, "packed", tok.pad_token_id, micro_batch=2,
                         grad_accum=2, collate=Collator("packed", mrope=False), multimodal=False)
    if seed_state is not None:
        b.load_state_dict(seed_state)
    return b


def test_restored_stream_continues_with_exactly_the_same_tokens(tmp_path, tok):
    path = _jsonl(tmp_path / "a.jsonl", [{"text": " ".join(f"document {i}" for _ in range(i % 7 + 1))}
                                         for i in range(60)])
    a = _stream_batches(path, tok)
    for _ in range(3):
        a.next_step()
    state = json.loads(json.dumps(a.state_dict()))  # survives a JSON round trip (checkpoint meta)
    expected = [[mb["inputs"]["input_ids"].tolist() for mb in a.next_step()] for _ in range(6)]  # wraps an epoch
    b = _stream_batches(path, tok, state)
    got = [[mb["inputs"]["input_ids"].tolist() for mb in b.next_step()] for _ in range(6)]
    assert got == expected
    assert a.epoch >= 1


def test_a_json_array_stream_resumes_exactly(tmp_path, tok):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"text": " ".join(f"document {i}" for _ in range(i % 7 + 1))} for i in range(60)],
                               indent=2))
    a = _stream_batches(str(path), tok)
    for _ in range(3):
        a.next_step()
    state = json.loads(json.dumps(a.state_dict()))
    expected = [[mb["inputs"]["input_ids"].tolist() for mb in a.next_step()] for _ in range(6)]
    b = _stream_batches(str(path), tok, state)
    assert [[mb["inputs"]["input_ids"].tolist() for mb in b.next_step()] for _ in range(6)] == expected


# ---- bad input: a clear error naming file and line, or a counted skip ----

def _encode_one(tok, kind, record, origin="data.jsonl:7", seq_len=256):
    return Encoder(tok, EncodeSpec(kind=kind, seq_len=seq_len, image=SPEC))(record, origin)


@pytest.mark.parametrize("kind,record,message", [
    ("text", '{"text": "unterminated', r"data.jsonl:7: malformed JSON"),
    ("chat", json.dumps({"messages": [{"role": "robot", "content": "x"}]}), r"data.jsonl:7: unknown role: .*'robot'"),
    ("chat", json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
        {"function": {"name": "f", "arguments": "{city: 1"}}]}]}),
     r"data.jsonl:7: invalid tool call arguments: messages\[1\].tool_calls\[0\].arguments is not valid JSON"),
    ("image_text", json.dumps({"image": "nope.png", "text": "x"}), r"data.jsonl:7: missing image: .*nope.png"),
    ("text", json.dumps({"body": "x"}), r"data.jsonl:7: missing field: no 'text'"),
])
def test_bad_records_name_file_and_line(tok, kind, record, message):
    with pytest.raises(BadRecord, match=message):
        _encode_one(tok, kind, record)


def test_bad_images_and_overlong_samples(tmp_path, tok):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    Image.new("RGB", (300, 300)).save(tmp_path / "huge.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "ok.png")
    origin = f"{tmp_path}/d.jsonl:2"
    with pytest.raises(BadRecord, match=r"d.jsonl:2: unreadable image: .*broken.png"):
        _encode_one(tok, "image_text", json.dumps({"image": "broken.png", "text": "x"}), origin)
    with pytest.raises(BadRecord, match=r"d.jsonl:2: oversized image: .*300x300, more than data.image.max_source_pixels"):
        _encode_one(tok, "image_text", json.dumps({"image": "huge.png", "text": "x"}), origin)
    with pytest.raises(BadRecord, match=r"d.jsonl:2: sample longer than the context: \d+ tokens \(images included\)"):
        _encode_one(tok, "image_text", json.dumps({"image": "ok.png", "text": "x"}), origin, seq_len=6)


def test_skip_counts_bad_lines_and_keeps_the_good_ones(tmp_path, tok):
    path = _jsonl(tmp_path / "a.jsonl", [{"text": "good one"}, "{oops", {"text": "good two"}, {"body": 1}])
    policy = BadInputPolicy("skip")
    enc = Encoder(tok, EncodeSpec(kind="text", seq_len=64))
    good = count_and_drop_skipped(encode_records(read_records(path), enc, policy), policy)
    assert len(good) == 2 and good["origin"] == [f"{path}:1", f"{path}:3"]
    assert policy.skipped == {"malformed JSON": 1, "missing field": 1}
    assert "bad input skipped (2)" in policy.summary() and f"{path}:2" in policy.summary()
    with pytest.raises(BadRecord, match=rf"{path}:2: malformed JSON"):
        encode_records(read_records(path), enc, BadInputPolicy("raise"))
