import math

import pytest

from train.engine.lr_schedule import get_lr


def test_warmup_then_cosine_to_floor():
    lrs = [get_lr(s, lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1) for s in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10], strict=False))
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in zip(lrs[10:110], lrs[11:110], strict=False))
    assert lrs[110] == lrs[119] == pytest.approx(0.1)
