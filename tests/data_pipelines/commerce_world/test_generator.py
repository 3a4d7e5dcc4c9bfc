"""The commerce world generator: deterministic by seed, held out by entity, dialogs that replay exactly."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from PIL import Image

from data_pipelines.commerce_world import WorldConfig, generate_world, load_catalogue, load_scenarios
from data_pipelines.commerce_world.images import answers
from data_pipelines.commerce_world.phrases import DECLINED, NOT_FOUND
from data_pipelines.commerce_world.scenarios import ORDER_KINDS
from data_pipelines.commerce_world.tools.schema_check import schema_errors
from data_pipelines.commerce_world.user_simulator import UserSimulator
from data_pipelines.commerce_world.vocabulary import CITIES, COLOURS, RULES_BY_KEY
from train.eval.commerce_env import CommerceEnv

ROOT = Path(__file__).resolve().parents[3]
SMALL = {"train_dialogs": 300, "validation_dialogs": 40, "test_scenarios": 60}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("worlds")
    return {name: generate_world(WorldConfig(out=str(base / name), seed=seed, **SMALL))
            for name, seed in (("a", 0), ("b", 0), ("c", 1))}


def test_same_seed_gives_identical_files_and_another_seed_differs(worlds):
    a, b, c = (_files(worlds[k]) for k in "abc")
    assert len(a) > 700 and a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    assert a["catalogue.json"] != c["catalogue.json"]
    assert a["dialogs/train.jsonl"] != c["dialogs/train.jsonl"]


def test_sizes_and_world_json(worlds):
    meta = json.loads((worlds["a"] / "world.json").read_text())
    assert meta["counts"]["dialogs_train"] == 300 and meta["counts"]["dialogs_test"] == 60
    for rel in meta["files"]:
        assert (worlds["a"] / rel).exists(), rel
    assert len(list((worlds["a"] / "images").glob("*.png"))) == meta["counts"]["items"]


def test_no_city_name_holds_another_and_training_has_many_cities(worlds):
    # "Hangzhou" inside "Changzhou" would put a held-out city's name into training text; a handful of training
    # cities lets fine-tuning learn the list instead of copying the user's city.
    for lang in (0, 1):
        names = [c[lang].lower() for c in CITIES]
        assert len(set(names)) == len(names)
        assert not [(a, b) for a in names for b in names if a != b and a in b]
    train = load_catalogue(worlds["a"]).in_split("train")
    assert len(train.cities) >= 80


def test_held_out_splits_share_no_entity_with_train(worlds):
    root = worlds["a"]
    cat = load_catalogue(root)
    by_split = {s: cat.in_split(s) for s in ("train", "validation", "test")}
    train = by_split["train"]
    for split in ("validation", "test"):
        held = by_split[split]
        assert held.cities and held.items
        assert not {c.city_id for c in held.cities} & {c.city_id for c in train.cities}
        assert not {s.en for s in held.shops} & {s.en for s in train.shops}
        assert not {s.zh for s in held.shops} & {s.zh for s in train.shops}
        assert not {i.item_id for i in held.items} & {i.item_id for i in train.items}
    test_items = {i.item_id for i in by_split["test"].items}
    for sc in load_scenarios(root, "test"):
        assert sc.city in {"", *(c.city_id for c in by_split["test"].cities)}
        assert set(sc.preferences) <= test_items
        assert {o["item_id"] for o in sc.initial_orders} <= test_items
    # no held-out shop reaches training text; a held-out city's name only as the city of a delivery address
    train_text = "\n".join(p.read_text(encoding="utf-8") for p in (root / "pretrain").glob("*_train.jsonl"))
    train_text += (root / "dialogs" / "train.jsonl").read_text(encoding="utf-8")
    for shop in by_split["test"].shops:
        assert shop.en not in train_text and shop.zh not in train_text
    dialogs_and_catalogue_text = (root / "dialogs" / "train.jsonl").read_text(encoding="utf-8") + "\n".join(
        r["text"] for r in _jsonl(root / "pretrain" / "text_train.jsonl") if not r["id"].startswith("record-"))
    records = [r["text"] for r in _jsonl(root / "pretrain" / "text_train.jsonl") if r["id"].startswith("record-")]
    for city in by_split["test"].cities:
        assert city.en not in dialogs_and_catalogue_text and city.zh not in dialogs_and_catalogue_text
        addresses = re.findall(rf"flat \d+, {re.escape(city.en)}\.|{city.zh}[^路]+路\d+号", "\n".join(records))
        assert len(addresses) > 50, (city.en, len(addresses))
    assert not {r["image"] for r in _jsonl(root / "pretrain" / "image_text_train.jsonl")} & {
        r["image"] for r in _jsonl(root / "image_qa" / "test.jsonl")}


def test_every_tool_call_validates_against_its_schema(worlds):
    root = worlds["a"]
    validators = {t["function"]["name"]: jsonschema.Draft202012Validator(t["function"]["parameters"])
                  for t in json.loads((root / "tools.json").read_text())}
    n = 0
    for split in ("train", "validation", "test"):
        for d in _jsonl(root / "dialogs" / f"{split}.jsonl"):
            assert d["tools"] == json.loads((root / "tools.json").read_text())
            for m in d["messages"]:
                for call in m.get("tool_calls", []):
                    fn = call["function"]
                    validators[fn["name"]].validate(fn["arguments"])
                    n += 1
    assert n > 1000


def test_schema_check_agrees_with_jsonschema_on_broken_arguments(worlds):
    root = worlds["a"]
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in json.loads((root / "tools.json").read_text())}
    calls = [c["function"] for d in _jsonl(root / "dialogs" / "train.jsonl")[:100] for m in d["messages"]
             for c in m.get("tool_calls", [])]
    verdicts = []
    for fn in calls:
        args = fn["arguments"]
        for key in args:
            for case in (args, {k: v for k, v in args.items() if k != key}, {**args, "extra": 1}, {**args, key: None},
                         {**args, key: "x"}, {**args, key: 0}, {**args, key: 2.0}, {**args, key: True}, "text"):
                ours = not schema_errors(case, schemas[fn["name"]])
                ref = jsonschema.Draft202012Validator(schemas[fn["name"]]).is_valid(case)
                assert ours == ref, (fn["name"], case)
                verdicts.append(ref)
    assert 0.1 < sum(verdicts) / len(verdicts) < 0.5  # both valid and invalid cases were checked


def test_replaying_dialogs_through_the_env_reproduces_tool_results_and_user_turns(worlds):
    root = worlds["a"]
    cat = load_catalogue(root)
    env = CommerceEnv(cat)
    for split in ("train", "test"):
        scenarios = {s.scenario_id: s for s in load_scenarios(root, split)}
        for d in _jsonl(root / "dialogs" / f"{split}.jsonl"):
            recorded = iter([m for m in d["messages"] if m["role"] == "assistant"])
            ep = env.run(lambda messages, tools, it=recorded: dict(next(it)), scenarios[d["id"]])
            said = [{k: v for k, v in m.items() if k != "weight"} for m in d["messages"]]  # a training mark only
            assert ep.messages == said, d["id"]
            assert ep.invalid_tool_calls == 0 and ep.unconfirmed_orders == 0


def test_dialogs_follow_the_protocol(worlds):
    dialogs = _jsonl(worlds["a"] / "dialogs" / "train.jsonl")
    assert {d["kind"] for d in dialogs} == {"order", "sold_out", "no_results", "decline", "change", "refund"}
    assert {d["lang"] for d in dialogs} == {"en", "zh"}
    item_id = re.compile(r"I\d{4}")
    terms = {t for r in RULES_BY_KEY.values() for t in (r.en, r.zh)}
    for d in dialogs:
        msgs = d["messages"]
        assert sum(len(m.get("content") or "") for m in msgs) < 2500
        for i, m in enumerate(msgs):
            lines = [ln for ln in (m.get("content") or "").splitlines() if m["role"] == "assistant"
                     and item_id.search(ln)]
            if len(lines) >= 2:  # option cards: 2-3, each with its terms before the item
                assert len(lines) <= 3
                for ln in lines:
                    head = ln[:item_id.search(ln).start()]
                    assert any(t in head for t in terms), ln
            for call in m.get("tool_calls", []):
                if call["function"]["name"] in ("place_order", "change_order", "request_refund"):
                    assert msgs[i - 1]["role"] in ("user", "tool"), d["id"]
                    assert any(p["role"] == "user" for p in msgs[i - 2:i]), d["id"]
        asks = [m for m in msgs if m["role"] == "assistant" and "?" in (m["content"] or "")
                and not item_id.search(m["content"])]
        if d["kind"] in ORDER_KINDS:
            assert len(asks) <= 2  # one question for the missing slots, one for a raised budget at most


def test_image_questions_are_answered_by_the_pixels(worlds):
    root = worlds["a"]
    rows = _jsonl(root / "image_qa" / "test.jsonl")
    assert {r["attribute"] for r in rows} == {"colour", "shape"}
    for r in rows:
        assert r["answer"] in r["choices"] and r["split"] == "test"
        img = Image.open(root / r["image"]).convert("RGB")
        assert img.size == (64, 64)
        if r["attribute"] == "colour":
            pixel = img.getpixel((int(64 * 0.45), int(64 * 0.45)))
            nearest = min(COLOURS, key=lambda c: sum((a - b) ** 2 for a, b in zip(COLOURS[c][1], pixel, strict=True)))
            assert r["answer"] == answers("colour", r["lang"])[answers("colour", "en").index(nearest)]
    colours = [r["answer"] for r in rows if r["attribute"] == "colour" and r["lang"] == "en"]
    assert max(colours.count(c) for c in set(colours)) / len(colours) < 0.4  # no colour dominates


def test_cli_writes_a_world_and_names_bad_arguments(tmp_path):
    out = tmp_path / "w"
    cmd = [sys.executable, "-m", "data_pipelines.commerce_world", f"out={out}", "seed=3", "train_dialogs=20",
           "validation_dialogs=5", "test_scenarios=5"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(_jsonl(out / "dialogs" / "train.jsonl")) == 20
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "up to date" in again.stderr
    other = subprocess.run(cmd[:-1] + ["test_scenarios=6"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert other.returncode != 0 and "overwrite=true" in other.stderr
    assert len(_jsonl(out / "scenarios" / "test.jsonl")) == 5  # the good world is still there
    meta = json.loads((out / "world.json").read_text())
    (out / "world.json").write_text(json.dumps({**meta, "format_version": 1}))  # written by an older generator
    older = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert older.returncode == 0 and "regenerating it as format_version" in older.stderr, older.stderr
    assert json.loads((out / "world.json").read_text()) == meta
    bad = subprocess.run(cmd + ["dialogs=3"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Key 'dialogs' not in 'WorldConfig'" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    helped = subprocess.run(cmd[:3] + ["--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "train_dialogs=<int>  (default 12000)" in helped.stdout
    assert "out=<str>  (required)" in helped.stdout
    missing = subprocess.run(cmd[:3] + ["seed=1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "Missing mandatory value: out" in missing.stderr


def test_order_records_repeat_each_order_id(worlds):
    """Order records (pretraining copy material) name each of their order ids twice."""
    records = [r for r in _jsonl(worlds["a"] / "pretrain" / "text_train.jsonl") if r["id"].startswith("record-")]
    assert len(records) == 6000
    for r in records[:200]:
        ids = re.findall(r"O\d{4}", r["text"])
        assert ids and all(ids.count(i) == 2 for i in ids), r


def test_training_dialogs_answer_the_simulators_reject_words_with_no_order(worlds):
    """After a wrong search the simulated user rejects the options; training must show that no order follows."""
    root = worlds["a"]
    catalogue = load_catalogue(root)
    dialogs = _jsonl(root / "dialogs" / "train.jsonl")
    for lang in ("en", "zh"):
        sc = next(s for s in load_scenarios(root, "train") if s.kind == "order" and s.lang == lang)
        reject = UserSimulator(sc, catalogue).respond("1. I0000 x\n2. I0001 y")
        assert reject.intent == "reject"
        after = [(d, i) for d in dialogs for i, m in enumerate(d["messages"][:-1])
                 if m["role"] == "user" and m["content"] == reject.text]
        assert after, (lang, reject.text)
        for d, i in after:
            assert d["messages"][i + 1] == {"role": "assistant", "content": DECLINED[lang]}, d["id"]
            assert not any(c["function"]["name"] == "place_order" for m in d["messages"]
                           for c in m.get("tool_calls", [])), d["id"]


def test_some_training_lookups_fail_first_and_recover_without_learning_the_mistake(worlds):
    """A misread order id (weight 0, not learnt) -> an error -> the assistant asks -> the user's id -> the lookup."""
    root = worlds["a"]
    misread = []
    for d in _jsonl(root / "dialogs" / "train.jsonl"):
        msgs = d["messages"]
        for i, m in enumerate(msgs):
            if "weight" not in m:
                continue
            assert m["weight"] == 0 and d["kind"] in ("change", "refund"), d["id"]
            wrong = m["tool_calls"][0]["function"]["arguments"]["order_id"]
            right = next(c["function"]["arguments"]["order_id"] for x in msgs[i + 1:] for c in x.get("tool_calls", []))
            assert wrong != right and right in msgs[1]["content"]
            assert json.loads(msgs[i + 1]["content"]) == {"error": f"unknown order_id: {wrong}"}
            assert msgs[i + 2]["content"] == NOT_FOUND[d["lang"]].format(order_id=wrong)
            assert msgs[i + 3]["role"] == "user" and right in msgs[i + 3]["content"]
            assert msgs[i + 4]["tool_calls"][0]["function"] == {"name": "get_order", "arguments": {"order_id": right}}
            misread.append(d["kind"])
    assert set(misread) == {"change", "refund"}
    for split in ("validation", "test"):
        assert not any("weight" in m for d in _jsonl(root / "dialogs" / f"{split}.jsonl") for m in d["messages"])
