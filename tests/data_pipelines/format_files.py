"""Dataset files written the way other tools write them, for the format tests.

The shapes follow LLaMA-Factory's demo datasets (data/alpaca_en_demo.json, glaive_toolcall_en_demo.json,
mllm_demo.json: pretty-printed JSON arrays, `tools` and `function_call` values as JSON strings, `<image>`
placeholders with an `images` list relative to the dataset folder, c4_demo.jsonl, wiki_demo.txt), ms-swift's
custom-dataset docs (agent `tool_call` / `tool_response` roles with `tools` as a JSON string of OpenAI function
tools, query/response with history) and OpenAI's chat fine-tuning format (content parts, `tool_calls` with JSON
string arguments, `tool` results with `tool_call_id`).
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

SEARCH = {"name": "search_items", "description": "Find offers of an item in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "item": {"type": "string"}},
                         "required": ["city", "item"]}}
SEARCH_TOOL = {"type": "function", "function": SEARCH}

ALPACA = [
    {"instruction": "Name the cheapest milk tea.", "input": "A: 18 yuan, B: 12 yuan", "output": "B, at 12 yuan."},
    {"instruction": "Translate to Chinese.", "input": "", "output": "奶茶", "system": "You translate.",
     "history": [["Translate: rice", "米饭"], ["Translate: tea", "茶"]]},
]
GLAIVE = [
    {"conversations": [
        {"from": "human", "value": "Milk tea in Hangzhou and in Suzhou, please."},
        {"from": "function_call", "value": json.dumps({"name": "search_items",
                                                       "arguments": {"city": "Hangzhou", "item": "milk tea"}})},
        {"from": "function_call", "value": json.dumps({"name": "search_items",
                                                       "arguments": {"city": "Suzhou", "item": "milk tea"}})},
        {"from": "observation", "value": "{\"options\": [\"A 18 yuan\"]}"},
        {"from": "observation", "value": "{\"options\": [\"B 12 yuan\"]}"},
        {"from": "gpt", "value": "A costs 18 yuan in Hangzhou, B 12 yuan in Suzhou."},
        {"from": "human", "value": "Thanks."},
        {"from": "gpt", "value": "You are welcome."}],
     "system": "You are a shop assistant.",
     "tools": json.dumps([SEARCH])},
]
ROLE_TAG = [  # the sharegpt file of LLaMA-Factory's role-tag variant: role/content under `conversations`
    {"conversations": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi, what do you need?"}]},
]
MLLM = [  # LLaMA-Factory's mllm_demo.json shape
    {"messages": [{"content": "<image>Who is this?", "role": "user"},
                  {"content": "A red circle.", "role": "assistant"},
                  {"content": "And this one?<image>", "role": "user"},
                  {"content": "A blue square.", "role": "assistant"}],
     "images": ["mllm_demo_data/1.png", "mllm_demo_data/2.png"]},
    {"messages": [{"content": "<image><image>What differs?", "role": "user"},
                  {"content": "The colour and the shape.", "role": "assistant"}],
     "images": ["mllm_demo_data/1.png", "mllm_demo_data/2.png"]},
]
SWIFT_AGENT = [  # ms-swift's agent format
    {"tools": json.dumps([SEARCH_TOOL]),
     "messages": [{"role": "user", "content": "Milk tea in Hangzhou and Suzhou?"},
                  {"role": "assistant", "content": "Let me search both cities."},
                  {"role": "tool_call", "content": json.dumps({"name": "search_items",
                                                               "arguments": {"city": "Hangzhou", "item": "milk tea"}})},
                  {"role": "tool_call", "content": json.dumps({"name": "search_items",
                                                               "arguments": {"city": "Suzhou", "item": "milk tea"}})},
                  {"role": "tool_response", "content": "{\"options\": [\"A 18 yuan\"]}"},
                  {"role": "tool_response", "content": "{\"options\": [\"B 12 yuan\"]}"},
                  {"role": "assistant", "content": "A is 18 yuan, B is 12 yuan."}]},
]
SWIFT_QUERY = [
    {"system": "You are a shop assistant.", "query": "And in Suzhou?", "response": "12 yuan.",
     "history": [["Milk tea price in Hangzhou?", "18 yuan."]]},
]
PROMPT_COMPLETION = [{"prompt": "Milk tea price in Hangzhou?", "completion": "18 yuan."}]
PRETRAIN_TEXTS = ["Golden House sells jasmine milk tea for 18 yuan.", "Lotus Corner sells rice for 4 yuan."]


def openai_records(image: str) -> list[dict]:
    """OpenAI chat format: content parts with a `file://` image_url, tool calls with JSON-string arguments."""
    return [{
        "messages": [
            {"role": "system", "content": "You are a shop assistant."},
            {"role": "user", "content": [{"type": "text", "text": "What is this item? "},
                                         {"type": "image_url", "image_url": {"url": f"file://{image}"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "search_items", "arguments": "{\"city\": \"Hangzhou\", \"item\": \"tea\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"options\": [\"A 18 yuan\"]}"},
            {"role": "assistant", "content": "It is tea: A costs 18 yuan."}],
        "tools": [SEARCH_TOOL],
    }]


def write_array(path: Path, records: list) -> Path:
    """A pretty-printed JSON array, as LLaMA-Factory's demo files are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def write_images(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, colour, size in (("1.png", "red", (64, 64)), ("2.png", "blue", (64, 32))):
        Image.new("RGB", size, colour).save(folder / name)
        out[name] = folder / name
    return out


def write_all(root: Path) -> dict[str, Path]:
    """Every chat-format file (images beside the LLaVA file, in `mllm_demo_data/`)."""
    images = write_images(root / "mllm_demo_data")
    return {
        "alpaca": write_array(root / "alpaca_en_demo.json", ALPACA),
        "sharegpt": write_array(root / "glaive_toolcall_en_demo.json", GLAIVE),
        "role_tag": write_array(root / "role_tag.json", ROLE_TAG),
        "llava": write_array(root / "mllm_demo.json", MLLM),
        "swift_agent": write_jsonl(root / "swift_agent.jsonl", SWIFT_AGENT),
        "query_response": write_jsonl(root / "swift_query.jsonl", SWIFT_QUERY),
        "prompt_completion": write_jsonl(root / "prompt_completion.jsonl", PROMPT_COMPLETION),
        "openai": write_jsonl(root / "openai.jsonl", openai_records(str(images["1.png"]))),
    }


def tokenizer_texts() -> list[str]:
    """Texts a test BPE is trained on, so the tiny vocabulary covers these files compactly."""
    texts = [json.dumps(x, ensure_ascii=False) for x in (ALPACA, GLAIVE, ROLE_TAG, MLLM, SWIFT_AGENT, SWIFT_QUERY,
                                                         PROMPT_COMPLETION)]
    return texts * 5 + PRETRAIN_TEXTS * 5
