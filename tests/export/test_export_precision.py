"""A float32 export of a bf16 ZeRO-1/2 checkpoint says that it holds the widened bf16 module weights."""

from __future__ import annotations

import logging

import pytest
import torch

from train.checkpoint.hf_export import warn_if_upcast


@pytest.mark.parametrize("layout, weights, dtype, warns", [
    ("zero12", torch.bfloat16, torch.float32, True),  # module weights widened: masters' precision not read
    ("zero12", torch.bfloat16, torch.bfloat16, False),  # bf16 cast of the masters: exact
    ("zero12", torch.float32, torch.float32, False),  # fp32 run: module weights are the masters
    ("zero3", torch.float32, torch.float32, False),  # read from the fp32 flat groups
    ("universal", torch.float32, torch.float32, False),
])
def test_upcast_warning(caplog, layout, weights, dtype, warns):
    with caplog.at_level(logging.WARNING, logger="train.checkpoint.hf_export"):
        assert warn_if_upcast(layout, weights, dtype) is warns
    assert ("not the optimizer's fp32 master copies" in caplog.text) is warns
    if warns:
        assert "export.dtype=float32 from a bfloat16 ZeRO-1/2 checkpoint" in caplog.text
