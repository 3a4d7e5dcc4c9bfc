"""Is a served token sequence the model's own greedy continuation, up to the serving precision's rounding?

Two greedy decodes of one model in bf16 (vLLM with and without speculative decoding, or vLLM and transformers) can
part where two tokens are nearly tied: the speculative run verifies two tokens per forward, so its matmuls have
other shapes, round differently, and may flip a tie (vLLM's docs list batch shape and precision as the reasons
outputs with and without speculation may differ). A drafting or state-rollback bug shows differently: it emits
tokens the model does not pick at all. This check tells the two apart on the sequence itself.

Teacher-forced on prompt + generated tokens, the model in fp32 gives the reference logits of every generated
position, and in the serving dtype the same positions again. A generated token is
    greedy       the fp32 argmax;
    a near tie   not the argmax, but its fp32 logit is within `tolerance` of the argmax's, where the tolerance is
                 twice the largest |low - fp32| logit difference measured at that position (each of the two
                 tokens may move by that much, so their order can flip);
    a violation  otherwise: no rounding the measured size explains choosing it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class OffArgmax:
    """A generated token that is not the fp32 argmax at its position."""

    position: int  # index among the generated tokens
    token: int
    argmax: int
    gap: float  # fp32 logit of the argmax minus the token's
    tolerance: float  # 2 * max |low - fp32| over the vocabulary at this position
    near_tie: bool


def classify(reference: torch.Tensor, low: torch.Tensor, tokens: torch.Tensor) -> list[OffArgmax]:
    """Off-argmax tokens of a sequence. `reference` and `low`: [T, V] logits predicting each of the T `tokens`
    (fp32, and the serving dtype's cast to fp32)."""
    if reference.shape != low.shape or reference.shape[0] != tokens.shape[0]:
        raise ValueError(f"logits {tuple(reference.shape)} / {tuple(low.shape)} do not match {tokens.shape[0]} tokens")
    reference, low = reference.float(), low.float()
    argmax = reference.argmax(-1)
    tolerance = 2 * (low - reference).abs().amax(-1)
    out = []
    for j in torch.nonzero(argmax != tokens).flatten().tolist():
        gap = float(reference[j, argmax[j]] - reference[j, tokens[j]])
        out.append(OffArgmax(j, int(tokens[j]), int(argmax[j]), gap, float(tolerance[j]), gap <= float(tolerance[j])))
    return out


@torch.no_grad()
def generated_logits(model: torch.nn.Module, prompt_ids: list[int], tokens: list[int],
                     extra: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """[T, V] logits predicting each generated token, teacher-forced in one forward. `extra`: the prompt's image
    inputs (pixel_values, image_grid_thw, mm_token_type_ids over the prompt; the latter is extended by zeros)."""
    ids = torch.tensor([prompt_ids + tokens])
    kwargs = dict(extra or {})
    if "mm_token_type_ids" in kwargs:
        mm = kwargs["mm_token_type_ids"]
        kwargs["mm_token_type_ids"] = torch.cat([mm, mm.new_zeros(1, len(tokens))], dim=1)
    logits = model(input_ids=ids, use_cache=False, **kwargs).logits[0].float()
    return logits[len(prompt_ids) - 1: len(prompt_ids) + len(tokens) - 1]


def summarize(name: str, off: list[OffArgmax], n_tokens: int) -> dict:
    """JSON-ready figures of one sequence: how many tokens were greedy, near ties, violations."""
    return {"sequence": name, "tokens": n_tokens, "greedy": n_tokens - len(off),
            "near_ties": [asdict(o) for o in off if o.near_tie],
            "violations": [asdict(o) for o in off if not o.near_tie]}
