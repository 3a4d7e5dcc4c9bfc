"""Golden samples for both chat templates: rendering, loss masks, generation-prompt prefixes, length handling."""

from __future__ import annotations

import json

import pytest

from data_pipelines.bad_input import BadRecord
from data_pipelines.chat_format import normalize_dialog
from data_pipelines.chat_render import chat_template_text, render_dialog
from data_pipelines.packing import IGNORE_INDEX
from data_pipelines.tokenizer import train_bpe_tokenizer
from tests.data_pipelines.loss_spans import loss_spans

TOOL = {"type": "function", "function": {"name": "search", "description": "Find shops",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
DIALOG = {
    "tools": [TOOL],
    "messages": [
        {"role": "system", "content": "You are a shop assistant."},
        {"role": "user", "content": "Two milk teas to Hangzhou."},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "search", "arguments": "{\"city\": \"Hangzhou\", \"count\": 2}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "{\"options\": [\"A\"]}"},
        {"role": "assistant", "content": "Option A costs 18 yuan. Confirm?"},
        {"role": "user", "content": "Yes."},
        {"role": "assistant", "content": "Ordered."},
    ],
}
XML_CALL = ("<tool_call>\n<function=search>\n<parameter=city>\nHangzhou\n</parameter>\n"
            "<parameter=count>\n2\n</parameter>\n</function>\n</tool_call>")
JSON_CALL = '<tool_call>\n{"name": "search", "arguments": {"city": "Hangzhou", "count": 2}}\n</tool_call>'
TOOL_RESULT = '<|im_start|>user\n<tool_response>\n{"options": ["A"]}\n</tool_response><|im_end|>\n'
EMPTY_THINK = "<think>\n\n</think>\n\n"


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    texts = [json.dumps(DIALOG)] * 20 + ["Option A costs 18 yuan. Confirm? Ordered. Hangzhou milk teas"] * 20
    out = {}
    for name in ("qwen3_5", "qwen3"):
        out[name] = train_bpe_tokenizer(texts, 400, tmp_path_factory.mktemp(name) / "tok", chat_template=name)
    return out


def _samples(tok, dialog=DIALOG, seq_len=4096, thinking=False, overlong="split"):
    messages, tools = normalize_dialog(json.loads(json.dumps(dialog)), "golden.jsonl:1")
    return render_dialog(tok, messages, tools, seq_len, thinking, overlong, "golden.jsonl:1")


def _loss_spans(tok, sample) -> list[str]:
    return loss_spans(tok, sample.input_ids, sample.labels)


def _system_qwen3_5() -> str:
    return ("<|im_start|>system\n# Tools\n\nYou have access to the following functions:\n\n<tools>\n"
            + json.dumps(TOOL, ensure_ascii=False))


def test_qwen3_5_golden_rendering_and_masks(tokenizers):
    tok = tokenizers["qwen3_5"]
    first, second = _samples(tok)
    text1 = tok.decode(first.input_ids)
    assert text1.startswith(_system_qwen3_5() + "\n</tools>\n\nIf you choose to call a function")
    assert text1.endswith(
        "</IMPORTANT>\n\nYou are a shop assistant.<|im_end|>\n"
        "<|im_start|>user\nTwo milk teas to Hangzhou.<|im_end|>\n"
        f"<|im_start|>assistant\n{EMPTY_THINK}{XML_CALL}<|im_end|>\n" + TOOL_RESULT
        + f"<|im_start|>assistant\n{EMPTY_THINK}Option A costs 18 yuan. Confirm?<|im_end|>\n")
    assert _loss_spans(tok, first) == [XML_CALL + "<|im_end|>", "Option A costs 18 yuan. Confirm?<|im_end|>"]
    # After the next user query the template drops the earlier (empty) think blocks: a new sample, history as prompt.
    text2 = tok.decode(second.input_ids)
    assert text2.endswith(
        f"<|im_start|>assistant\n{XML_CALL}<|im_end|>\n" + TOOL_RESULT
        + "<|im_start|>assistant\nOption A costs 18 yuan. Confirm?<|im_end|>\n"
        + f"<|im_start|>user\nYes.<|im_end|>\n<|im_start|>assistant\n{EMPTY_THINK}Ordered.<|im_end|>\n")
    assert _loss_spans(tok, second) == ["Ordered.<|im_end|>"]


def test_qwen3_golden_rendering_and_masks(tokenizers):
    tok = tokenizers["qwen3"]
    samples = _samples(tok)
    # Qwen3 gives only the last turn an (empty) think block, so every turn is its own sample.
    assert len(samples) == 3
    text = tok.decode(samples[0].input_ids)
    assert text.startswith("<|im_start|>system\nYou are a shop assistant.\n\n# Tools\n\nYou may call one or more "
                           "functions to assist with the user query.")
    assert ("<tools>\n" + json.dumps(TOOL, ensure_ascii=False) + "\n</tools>") in text
    assert text.endswith("<|im_start|>user\nTwo milk teas to Hangzhou.<|im_end|>\n"
                         f"<|im_start|>assistant\n{EMPTY_THINK}{JSON_CALL}<|im_end|>\n")
    assert _loss_spans(tok, samples[0]) == [JSON_CALL + "<|im_end|>"]
    text = tok.decode(samples[1].input_ids)
    assert text.endswith(f"<|im_start|>assistant\n{JSON_CALL}<|im_end|>\n" + TOOL_RESULT
                         + f"<|im_start|>assistant\n{EMPTY_THINK}Option A costs 18 yuan. Confirm?<|im_end|>\n")
    assert _loss_spans(tok, samples[1]) == ["Option A costs 18 yuan. Confirm?<|im_end|>"]
    assert _loss_spans(tok, samples[2]) == ["Ordered.<|im_end|>"]


@pytest.mark.parametrize("name", ["qwen3_5", "qwen3"])
def test_each_learnt_turn_is_generation_prompt_plus_completion(tokenizers, name):
    """Where a completion starts, the tokens so far decode to the template's add_generation_prompt output
    for the dialog before that turn, up to history the template itself rewrites (checked per sample)."""
    tok = tokenizers[name]
    messages, tools = normalize_dialog(json.loads(json.dumps(DIALOG)), "x")
    turns = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    learnt = []
    for sample in _samples(tok):
        ids, labels = sample.input_ids, sample.labels
        starts = [i for i in range(1, len(ids)) if labels[i] != IGNORE_INDEX and labels[i - 1] == IGNORE_INDEX]
        last = starts[-1]
        j = turns[len(learnt) + len(starts) - 1]
        expected = tok.apply_chat_template(messages[:j], tools=tools, tokenize=False, add_generation_prompt=True,
                                           enable_thinking=False)
        assert tok.decode(ids[:last]) == expected
        learnt += starts
    assert len(learnt) == len(turns)


def test_thinking_block_is_learnt_and_system_user_tool_are_not(tokenizers):
    tok = tokenizers["qwen3_5"]
    dialog = {"messages": [{"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": "Hello!", "reasoning_content": "greet back"}]}
    (sample,) = _samples(tok, dialog, thinking=True)
    assert tok.decode(sample.input_ids).endswith("<|im_start|>assistant\n<think>\ngreet back\n</think>\n\nHello!<|im_end|>\n")
    assert _loss_spans(tok, sample) == ["greet back\n</think>\n\nHello!<|im_end|>"]


def test_sharegpt_is_converted_on_read(tokenizers):
    tok = tokenizers["qwen3_5"]
    sharegpt = {"conversations": [
        {"from": "system", "value": "You are a shop assistant."},
        {"from": "human", "value": "Two milk teas to Hangzhou."},
        {"from": "function_call", "value": json.dumps({"name": "search", "arguments": {"city": "Hangzhou", "count": 2}})},
        {"from": "observation", "value": "{\"options\": [\"A\"]}"},
        {"from": "gpt", "value": "Option A costs 18 yuan. Confirm?"},
        {"from": "human", "value": "Yes."}, {"from": "gpt", "value": "Ordered."}], "tools": [TOOL]}
    got = [s.input_ids for s in _samples(tok, sharegpt)]
    assert got == [s.input_ids for s in _samples(tok)]


def test_overlong_dialogs_split_between_turns_never_inside(tokenizers):
    tok = tokenizers["qwen3_5"]
    dialog = {"messages": [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": "a"}, {"role": "assistant", "content": "one two three"},
                           {"role": "user", "content": "b"}, {"role": "assistant", "content": "four five six"}]}
    whole = _samples(tok, dialog)
    assert len(whole) == 2 and not any(s.overlong_split for s in whole)
    n = len(whole[1].input_ids)
    split = _samples(tok, dialog, seq_len=n - 1)
    assert len(split) == 2 and split[1].overlong_split and not split[0].overlong_split
    # The split sample restarts at the last user query (system kept); its assistant turn is whole.
    assert tok.decode(split[1].input_ids).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nb")
    assert [_loss_spans(tok, s) for s in split] == [["one two three<|im_end|>"], ["four five six<|im_end|>"]]
    with pytest.raises(BadRecord, match=r"golden.jsonl:1: sample longer than the context: \d+ tokens > data.seq_len=5"):
        _samples(tok, dialog, seq_len=5)
    with pytest.raises(BadRecord, match="sample longer than the context"):
        _samples(tok, dialog, seq_len=n - 1, overlong="error")


def test_template_saved_with_tokenizer(tokenizers, tmp_path):
    from transformers import AutoTokenizer

    tokenizers["qwen3"].save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).chat_template == chat_template_text("qwen3")


def test_a_weight_0_turn_stays_in_the_context_but_carries_no_loss(tokenizers):
    tok = tokenizers["qwen3_5"]
    dialog = json.loads(json.dumps(DIALOG))
    dialog["messages"][4]["weight"] = 0
    weighted, plain = _samples(tok, dialog), _samples(tok)
    assert [s.input_ids for s in weighted] == [s.input_ids for s in plain]
    spans = [x for s in plain for x in _loss_spans(tok, s)]
    assert spans[1] == "Option A costs 18 yuan. Confirm?<|im_end|>"
    assert [x for s in weighted for x in _loss_spans(tok, s)] == [spans[0], spans[2]]
    dialog["messages"][4]["weight"] = 0.5
    with pytest.raises(BadRecord, match=r"messages\[4\]\.weight=0\.5"):
        _samples(tok, dialog)
