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


def test_wsd_holds_then_decays_linearly_over_the_last_fraction():
    lrs = [get_lr(s, lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1, schedule="wsd", decay_fraction=0.2)
           for s in range(120)]
    assert lrs[:10] == [get_lr(s, 1.0, 10, 110, 0.1) for s in range(10)]  # warmup shared with cosine
    assert lrs[10:90] == [1.0] * 80  # stable: 100 post-warmup steps, the last 20 decay
    assert lrs[90] == pytest.approx(1.0) and lrs[100] == pytest.approx(0.1 + 0.9 * 0.5)
    assert lrs[109] == pytest.approx(0.1 + 0.9 / 20)
    assert all(a > b for a, b in zip(lrs[90:111], lrs[91:111], strict=False))
    assert lrs[110] == lrs[119] == pytest.approx(0.1)


def test_an_unknown_schedule_is_refused_by_name():
    with pytest.raises(ValueError, match=r"optim.schedule='linear' is not one of \['cosine', 'wsd'\]"):
        get_lr(50, 1.0, 10, 110, 0.1, schedule="linear")
