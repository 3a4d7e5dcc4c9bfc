"""The from-scratch BPE keeps a string's tokens the same wherever it appears, so names can be copied."""

from __future__ import annotations

import pytest

from data_pipelines.tokenizer import train_bpe_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = ["I want 2 milk tea in Hangzhou at 12:00.", "在杭州,我想要2杯奶茶。", '{"city":"Hangzhou","time":"12:00"}'] * 50
    return train_bpe_tokenizer(texts, 400, tmp_path_factory.mktemp("tok") / "tok")


@pytest.mark.parametrize("name", ["Xiamen", "Xi'an", "O7982", "西安", "Harbor Deli"])
def test_a_name_tokenises_the_same_in_a_sentence_a_json_value_and_a_tool_call(tok, name: str) -> None:
    alone = tok(name, add_special_tokens=False).input_ids
    for context in (f"I want tea in {name}, please.", f'{{"city":"{name}"}}', f"<parameter=city>\n{name}\n</parameter>",
                    f"在{name}买奶茶"):
        ids = tok(context, add_special_tokens=False).input_ids
        assert any(ids[i:i + len(alone)] == alone for i in range(len(ids))), (context, tok.convert_ids_to_tokens(ids))


def test_digits_and_spaces_are_single_tokens_and_text_round_trips(tok) -> None:
    text = "Order O1234 at 09:30,  2 x latte\n在西安 <|im_end|>"
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text
    pieces = tok.convert_ids_to_tokens(ids)
    assert all(len(p) == 1 for p in pieces if any(c.isdigit() for c in p))
    assert "<|im_end|>" in pieces


def test_a_qwen3_5_moe_export_tokenises_as_training_did(tok, tmp_path) -> None:
    """transformers loads a qwen3_5_moe folder with its own tokenizer class, which rebuilds the split from the
    vocabulary (so do vLLM and SGLang); the saved tokenizer must give the ids training used."""
    from transformers import AutoTokenizer, Qwen3_5MoeConfig

    tok.save_pretrained(tmp_path)
    Qwen3_5MoeConfig().save_pretrained(tmp_path)
    served = AutoTokenizer.from_pretrained(tmp_path)
    assert type(served).__name__ == "Qwen3_5Tokenizer"
    text = ('Order O7982 in Hangzhou: {"city":"Beihai","time":"12:00"}\n在北海买 2 杯奶茶。  I\'ll take Harbor Deli\'s tea.'
            "<|im_start|>assistant\n<tool_call>\n</tool_call><|im_end|>")
    assert served(text, add_special_tokens=False).input_ids == tok(text, add_special_tokens=False).input_ids


def test_a_capitalised_name_is_made_of_lower_case_pieces(tok) -> None:
    """No merge starts with a capital letter, so a held-out city is built from pieces the model has seen often."""
    pieces = tok.convert_ids_to_tokens(tok("Beihai", add_special_tokens=False).input_ids)
    assert pieces[0] == "B" and "".join(pieces) == "Beihai"
    assert tok.convert_ids_to_tokens(tok("tea", add_special_tokens=False).input_ids) == ["tea"]
