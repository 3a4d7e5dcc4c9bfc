"""Scores: per scenario from an episode, overall across scenarios and seeds, and pass^k.

Task success is tau-bench's: the final order database equals the one the goal implies. pass^k is the chance
that all k of k i.i.d. trials of a scenario succeed, estimated per scenario from n >= k trials with c
successes as C(c, k) / C(n, k), then averaged over scenarios.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from math import comb

from data_pipelines.commerce_world.catalogue import Catalogue
from data_pipelines.commerce_world.scenarios import Scenario, expected_final_orders
from train.eval.commerce_env.env import Episode


@dataclass
class ScenarioScore:
    scenario_id: str
    kind: str
    seed: int
    success: bool
    unconfirmed_orders: int
    unconfirmed_actions: int
    terms_shown: bool | None  # None when the episode confirmed no action
    options_shown: int
    options_grounded: int
    slots_needed: int
    slots_asked: int
    needed_slots_asked: int
    repeated_questions: int
    tool_calls: int
    invalid_tool_calls: int
    turns: int
    generated_tokens: int
    ended_by: str


def score_episode(episode: Episode, scenario: Scenario, catalogue: Catalogue) -> ScenarioScore:
    needed = scenario.missing_slots
    return ScenarioScore(
        scenario_id=scenario.scenario_id, kind=scenario.kind, seed=episode.seed,
        success=episode.final_orders == expected_final_orders(scenario, catalogue),
        unconfirmed_orders=episode.unconfirmed_orders, unconfirmed_actions=episode.unconfirmed_actions,
        terms_shown=all(episode.terms_shown) if episode.terms_shown else None,
        options_shown=episode.options_shown, options_grounded=episode.options_grounded,
        slots_needed=len(needed), slots_asked=len(episode.slots_asked),
        needed_slots_asked=len(set(needed) & set(episode.slots_asked)),
        repeated_questions=len(episode.repeated_slots), tool_calls=episode.tool_calls,
        invalid_tool_calls=episode.invalid_tool_calls, turns=episode.assistant_turns,
        generated_tokens=episode.generated_tokens, ended_by=episode.ended_by)


def pass_hat_k(successes: dict[str, list[bool]], k: int) -> float:
    """Mean over scenarios of C(c, k) / C(n, k); every scenario needs n >= k trials."""
    if not successes:
        raise ValueError("pass^k of no scenarios")
    total = 0.0
    for sid, trials in successes.items():
        if len(trials) < k:
            raise ValueError(f"pass^{k}: scenario {sid} has only {len(trials)} trials")
        total += comb(sum(trials), k) / comb(len(trials), k)
    return total / len(successes)


def summarize(scores: list[ScenarioScore]) -> dict:
    """Overall metrics; pass^k for every k up to the number of seeds each scenario was run with."""
    if not scores:
        raise ValueError("no scores to summarise")
    n = len(scores)
    by_scenario: dict[str, list[bool]] = defaultdict(list)
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for s in scores:
        by_scenario[s.scenario_id].append(s.success)
        by_kind[s.kind].append(s.success)
    calls = sum(s.tool_calls for s in scores)
    terms = [s.terms_shown for s in scores if s.terms_shown is not None]
    trials = min(len(t) for t in by_scenario.values())
    shown = sum(s.options_shown for s in scores)
    return {
        "episodes": n, "scenarios": len(by_scenario),
        "task_success": sum(s.success for s in scores) / n,
        "unconfirmed_orders": sum(s.unconfirmed_orders for s in scores),
        "unconfirmed_actions": sum(s.unconfirmed_actions for s in scores),
        "terms_shown_rate": sum(terms) / len(terms) if terms else None,
        "grounded_option_rate": sum(s.options_grounded for s in scores) / shown if shown else None,
        "slots_needed": sum(s.slots_needed for s in scores),
        "slots_asked": sum(s.slots_asked for s in scores),
        "needed_slots_asked": sum(s.needed_slots_asked for s in scores),
        "repeated_questions": sum(s.repeated_questions for s in scores),
        "tool_calls": calls,
        "invalid_tool_call_rate": sum(s.invalid_tool_calls for s in scores) / calls if calls else 0.0,
        "turns_per_task": sum(s.turns for s in scores) / n,
        "generated_tokens_per_task": sum(s.generated_tokens for s in scores) / n,
        "success_by_kind": {k: sum(v) / len(v) for k, v in sorted(by_kind.items())},
        **{f"pass^{k}": pass_hat_k(by_scenario, k) for k in range(1, trials + 1)},
    }


def score_rows(scores: list[ScenarioScore]) -> list[dict]:
    return [asdict(s) for s in scores]
