"""optim.embedding_lr_scale reaches the embedding's own DeepSpeed param group, and only that group.

Scale 0 is the sharp check: the (untied) input embedding must stay bit-identical across steps while the output
embedding and every other weight move, and the saved optimizer state must carry the scaled lr for that group.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import run_pretrain

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


def test_embedding_lr_scale_zero_holds_the_input_embedding_while_the_rest_trains(tmp_path, shared_data):
    run_pretrain(tmp_path / "run", 1, ["experiment=ci_tiny", "trainer.max_steps=3", "trainer.checkpoint_every=1",
                                       "trainer.keep_last=3", "optim.embedding_lr_scale=0", "optim.warmup_steps=0",
                                       "logger=disabled"], shared_data, timeout=600)
    ckpt = tmp_path / "run" / "checkpoints"

    def module(step: int) -> dict[str, torch.Tensor]:
        return torch.load(ckpt / f"step_{step:08d}" / "mp_rank_00_model_states.pt", map_location="cpu",
                          weights_only=False)["module"]

    early, late = module(1), module(3)
    embed = [k for k in early if k.endswith("embed_tokens.weight")]
    assert len(embed) == 1 and torch.equal(early[embed[0]], late[embed[0]])
    for name in ("lm_head.weight", "model.layers.0.self_attn.q_proj.weight", "model.norm.weight"):
        assert not torch.equal(early[name], late[name]), name

    optim = torch.load(next((ckpt / "step_00000003").glob("*optim_states.pt")), map_location="cpu", weights_only=False)
    groups = optim["optimizer_state_dict"]["base_optimizer_state"]["param_groups"]
    by_name = {g["name"]: g for g in groups if "name" in g}
    assert by_name["embedding"]["lr"] == 0.0 and by_name["embedding"]["lr_scale"] == 0.0
    assert by_name["decay"]["lr"] > 0.0


def test_a_negative_embedding_lr_scale_is_refused_by_key():
    from tests.conftest import compose
    from train.config import validate

    cfg = compose(["experiment=ci_tiny", "optim.embedding_lr_scale=-1"])
    with pytest.raises(ValueError, match=r"optim.embedding_lr_scale=-1.0 must be >= 0"):
        validate(cfg)
