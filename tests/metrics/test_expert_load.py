import math

import torch

from train.metrics.expert_load import ExpertLoad, summarize


def test_counts_top_k_of_router_logits_and_resets():
    from train.engine.load_balance import routed_counts

    load = ExpertLoad(num_layers=2, num_experts=4, top_k=2)
    logits = torch.tensor([[5.0, 4.0, 0.0, 0.0], [5.0, 0.0, 4.0, 0.0], [0.0, 0.0, 5.0, 4.0]])
    load.update(routed_counts((logits, logits.flip(-1)), 2, 4, None))
    m = load.reduce_and_reset(torch.device("cpu"))
    assert m["expert/per_layer"]["load"][0] == [2, 1, 2, 1]
    assert m["expert/per_layer"]["load"][1] == [1, 2, 1, 2]
    assert m["expert/dead"] == 0
    assert m["expert/imbalance_max"] == 2 / 1.5
    assert load.reduce_and_reset(torch.device("cpu"))["expert/dead"] == 8  # the window was reset


def test_uniform_load_has_entropy_one_and_collapse_shows_dead_experts():
    uniform = summarize(torch.tensor([[10.0, 10.0, 10.0, 10.0]]))
    assert math.isclose(uniform["expert/entropy_min"], 1.0, rel_tol=1e-9)
    assert uniform["expert/imbalance_max"] == 1.0
    collapsed = summarize(torch.tensor([[40.0, 0.0, 0.0, 0.0]]))
    assert collapsed["expert/dead"] == 3 and collapsed["expert/imbalance_max"] == 4.0
    assert collapsed["expert/entropy_min"] == 0.0


def test_collapse_monitor_needs_a_streak_of_dead_windows_and_flags_imbalance():
    from train.metrics.expert_load import CollapseMonitor

    monitor = CollapseMonitor(dead_windows=2, max_imbalance=3.0)
    healthy = summarize(torch.tensor([[5.0, 5.0, 5.0, 5.0]]))
    one_dead = summarize(torch.tensor([[6.0, 7.0, 7.0, 0.0]]))
    skewed = summarize(torch.tensor([[17.0, 1.0, 1.0, 1.0]]))
    assert monitor.check(one_dead) == []
    assert monitor.check(one_dead) == ["layer 0: experts [3] received no tokens for 2+ logging windows"]
    assert monitor.check(healthy) == []
    assert monitor.check(one_dead) == []  # the streak restarted
    assert monitor.check(skewed) == ["layer 0: load imbalance 3.40 > 3.0"]
