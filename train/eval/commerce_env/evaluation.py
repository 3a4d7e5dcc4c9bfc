"""Run an agent on held-out scenarios over several seeds and score it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from data_pipelines.commerce_world.catalogue import Catalogue
from data_pipelines.commerce_world.scenarios import Scenario
from train.eval.commerce_env.env import Agent, CommerceEnv, Episode
from train.eval.commerce_env.scoring import ScenarioScore, score_episode, summarize

AgentFactory = Callable[[Scenario, int], Agent]  # (scenario, seed) -> a fresh agent for that episode


@dataclass
class EvalResult:
    episodes: list[Episode]
    scores: list[ScenarioScore]
    summary: dict


def evaluate(make_agent: AgentFactory, scenarios: Sequence[Scenario], catalogue: Catalogue,
             seeds: Sequence[int] = (0,), env: CommerceEnv | None = None) -> EvalResult:
    """Every scenario once per seed; the user's wording (and a sampling agent) varies with the seed."""
    env = env or CommerceEnv(catalogue)
    episodes, scores = [], []
    for seed in seeds:
        for sc in scenarios:
            ep = env.run(make_agent(sc, seed), sc, seed)
            episodes.append(ep)
            scores.append(score_episode(ep, sc, catalogue))
    return EvalResult(episodes, scores, summarize(scores))
