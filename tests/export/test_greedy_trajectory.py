"""train/checkpoint/greedy_trajectory.py: teacher-forced logits line up with generation's, a greedy sequence passes,
a token the model would not pick is a violation, and a near tie is told from it by the measured rounding."""

from __future__ import annotations

import pytest
import torch

from tests.export.hf_folders import VOCAB, random_model
from train.checkpoint.greedy_trajectory import classify, generated_logits, summarize


def test_classify_greedy_near_tie_and_violation():
    reference = torch.tensor([[5.0, 1.0, 0.0], [2.00, 1.99, 0.0], [4.0, 1.0, 0.0]])
    low = reference.clone()
    low[1, 1] += 0.02  # rounding of 0.02 here: tolerance 0.04 > gap 0.01
    low[2, 0] -= 0.01  # tolerance 0.02 < gap 3.0
    off = classify(reference, low, torch.tensor([0, 1, 1]))
    assert [(o.position, o.token, o.argmax, o.near_tie) for o in off] == [(1, 1, 0, True), (2, 1, 0, False)]
    assert off[0].gap == pytest.approx(0.01, abs=1e-6) and off[0].tolerance == pytest.approx(0.04, abs=1e-6)
    assert off[1].gap == pytest.approx(3.0) and off[1].tolerance == pytest.approx(0.02, abs=1e-6)
    s = summarize("spec", off, 3)
    assert (s["greedy"], len(s["near_ties"]), len(s["violations"])) == (1, 1, 1)
    with pytest.raises(ValueError, match="do not match 2 tokens"):
        classify(reference, low, torch.tensor([0, 1]))


def _image_inputs():
    from data_pipelines.tokenizer import QWEN_SPECIAL_TOKENS
    from train.checkpoint.export_verify import fixed_inputs

    class Tok:  # the ids random_model gives the vision tokens
        def __len__(self):
            return VOCAB

        def convert_tokens_to_ids(self, token):
            return QWEN_SPECIAL_TOKENS.index(token)

    return fixed_inputs("qwen3_5_moe", Tok())[1]


@pytest.mark.parametrize("with_image", [False, True], ids=["text", "image"])
def test_a_generated_sequence_is_greedy_and_a_planted_token_is_not(with_image):
    model = random_model("qwen3_5_moe").eval()
    if with_image:
        batch = _image_inputs()
        prompt = batch.pop("input_ids")
    else:
        batch, prompt = {}, torch.randint(0, VOCAB, (1, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = model.generate(prompt, **batch, max_new_tokens=12, do_sample=False, eos_token_id=None,
                             output_logits=True, return_dict_in_generate=True)
    tokens = out.sequences[0, prompt.shape[1]:].tolist()
    stepwise = torch.stack([step[0].float() for step in out.logits])
    teacher_forced = generated_logits(model, prompt[0].tolist(), tokens, batch)
    assert torch.allclose(teacher_forced, stepwise, atol=1e-4), (teacher_forced - stepwise).abs().max()

    low = random_model("qwen3_5_moe").to(torch.bfloat16).eval()
    low_batch = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in batch.items()}
    off = classify(teacher_forced, generated_logits(low, prompt[0].tolist(), tokens, low_batch), torch.tensor(tokens))
    assert off == []  # fp32's own greedy sequence: every token is the fp32 argmax

    planted = list(tokens)
    planted[5] = int(teacher_forced[5].argmin())
    reference = generated_logits(model, prompt[0].tolist(), planted, batch)
    off = classify(reference, generated_logits(low, prompt[0].tolist(), planted, low_batch), torch.tensor(planted))
    violation = [o for o in off if o.position == 5]
    assert violation and not violation[0].near_tie and violation[0].gap > violation[0].tolerance
    assert all(o.position >= 5 for o in off)  # the tokens before it are untouched and still greedy
