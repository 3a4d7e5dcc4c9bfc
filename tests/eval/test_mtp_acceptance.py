"""MTP draft acceptance against speculative decoding written out: prefix by prefix, what the trunk would generate
next and what the MTP head drafts from that prefix alone (so the metric cannot read the future)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY_QWEN3_5, compose
from tests.models.test_mtp import _randomise
from train.engine.losses import IGNORE_INDEX

VOCAB = 64


def _model(seed: int):
    from train.models.build import build_hf_config, build_model

    cfg = compose([*TINY_QWEN3_5, f"+model.hf_config.text_config.vocab_size={VOCAB}", "model.mtp_layers=1",
                   "loss.mtp_coef=0.3"])
    model = build_model(cfg.model, build_hf_config(cfg.model), torch.float32, seed=seed).eval()
    _randomise(model, seed)
    return model


def _sample(model, prompt: int, answer: int) -> dict:
    """A prompt of random tokens, then the trunk's own greedy continuation labelled as the assistant's answer."""
    ids = torch.randint(0, VOCAB, (1, prompt), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=answer, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    ids = out[0].tolist()
    ids[prompt + answer // 2] = (ids[prompt + answer // 2] + 1) % VOCAB  # one token the trunk would not have written
    return {"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]}


def _by_prefixes(model, sample: dict) -> list[int]:
    """[accepted, drafted, right, positions], each position from a forward over the prefix x_0..x_{t+1} alone."""
    from train.models.mtp import TrunkTap, mtp_logits

    ids, labels = sample["input_ids"], sample["labels"]
    tap = TrunkTap(model)
    counts = [0, 0, 0, 0]
    with torch.no_grad():
        for t in range(len(ids) - 2):
            if labels[t + 2] == IGNORE_INDEX:
                continue
            prefix = torch.tensor([ids[:t + 2]])
            logits = model(input_ids=prefix, use_cache=False).logits[0]
            draft = mtp_logits(model, tap.pop())[0][0, t].argmax()
            g_t, g_next = logits[t].argmax(), logits[t + 1].argmax()
            counts[3] += 1
            counts[2] += int(draft == ids[t + 2])
            if g_t == ids[t + 1]:
                counts[1] += 1
                counts[0] += int(draft == g_next)
    tap.remove()
    return counts


@pytest.mark.parametrize("boost", [False, True], ids=["random", "one_token_everywhere"])
def test_sample_acceptance_is_speculative_decoding_prefix_by_prefix(boost):
    from data_pipelines.collate import Collator
    from train.eval.mtp_acceptance import sample_acceptance
    from train.models.mtp import TrunkTap

    model = _model(4)
    if boost:  # a zero head: every logit ties, so the trunk and the MTP head both write token 0 and every draft is kept
        with torch.no_grad():
            model.lm_head.weight.zero_()
    sample = _sample(model, 12, 20)
    expected = _by_prefixes(model, sample)
    tap = TrunkTap(model)
    got = sample_acceptance(model, tap, Collator("per_document", mrope=True), sample, pad_id=0).tolist()
    tap.remove()
    assert got == expected
    accepted, drafted, _, positions = got
    assert positions == 20 and drafted > 10  # mostly the trunk's own continuation
    if boost:
        assert drafted == 18 and accepted == drafted  # not the last prompt token nor the altered one; all kept
