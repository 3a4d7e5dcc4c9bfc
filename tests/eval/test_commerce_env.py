"""The commerce env and its scoring: the oracle scores perfectly, each kind of wrong agent gets exactly the
penalty it earns, tool-call text parses (and fails) as it should, and the metrics match hand computations."""

from __future__ import annotations

import json

import pytest

from data_pipelines.commerce_world.catalogue import build_catalogue
from data_pipelines.commerce_world.oracle import OracleAgent, call_message
from data_pipelines.commerce_world.scenarios import ORDER_KINDS, draw_scenarios
from data_pipelines.commerce_world.tools import tool_schemas
from train.eval.commerce_env import (
    CommerceEnv,
    ScenarioScore,
    evaluate,
    parse_tool_calls,
    pass_hat_k,
    summarize,
)

ORDERING = ("order", "sold_out", "no_results")


@pytest.fixture(scope="module")
def world():
    cat = build_catalogue(seed=5)
    return cat, draw_scenarios(cat, "test", 60, seed=5)


def _oracle(cat):
    return lambda sc, seed: OracleAgent(sc, cat)


def test_oracle_gets_full_marks_over_seeds(world):
    cat, scenarios = world
    s = evaluate(_oracle(cat), scenarios, cat, seeds=(0, 1, 2)).summary
    assert s["task_success"] == 1.0 and s["pass^3"] == 1.0
    assert s["unconfirmed_orders"] == 0 and s["unconfirmed_actions"] == 0
    assert s["terms_shown_rate"] == 1.0 and s["invalid_tool_call_rate"] == 0.0
    assert s["grounded_option_rate"] == 1.0
    assert s["repeated_questions"] == 0
    assert s["slots_asked"] == s["needed_slots_asked"] == s["slots_needed"] == 3 * sum(
        len(sc.missing_slots) for sc in scenarios)
    assert set(s["success_by_kind"]) == {"order", "sold_out", "no_results", "decline", "change", "refund"}


class OrdersWithoutAsking:
    """Skips the cards: orders the first search result as soon as it sees it."""

    def __init__(self, sc, cat):
        self.oracle = OracleAgent(sc, cat)
        self.sc = sc

    def __call__(self, messages, tools):
        last = messages[-1]
        if last["role"] == "tool" and self.oracle.phase == "searched":
            options = json.loads(last["content"])["options"]
            if options:
                self.oracle.phase, self.oracle.chosen, self.oracle.options = "placing", options[0], options
                return call_message("place_order", {"item_id": options[0]["item_id"], "time": self.sc.time,
                                                    "count": self.sc.count})
        return self.oracle(messages, tools)


def test_ordering_without_confirmation_is_counted(world):
    cat, scenarios = world
    result = evaluate(lambda sc, seed: OrdersWithoutAsking(sc, cat), scenarios, cat)
    for sc, score in zip(scenarios, result.scores, strict=True):
        expected = {"order": 1, "decline": 1, "no_results": 1, "sold_out": 1}.get(sc.kind, 0)
        assert score.unconfirmed_orders == expected, sc.kind
        assert score.terms_shown is (False if expected else True)
        if sc.kind == "decline":
            assert not score.success  # the user declined, yet an order exists
    assert result.summary["unconfirmed_orders"] == sum(sc.kind in ORDER_KINDS for sc in scenarios)


class AsksTwice:
    """Asks its clarifying question, then asks it again before searching."""

    def __init__(self, sc, cat):
        self.oracle = OracleAgent(sc, cat)
        self.repeated = False

    def __call__(self, messages, tools):
        if self.oracle.phase == "asked" and not self.repeated:
            self.repeated = True
            return dict(messages[-2])
        return self.oracle(messages, tools)


def test_asking_the_same_question_twice_is_counted(world):
    cat, scenarios = world
    result = evaluate(lambda sc, seed: AsksTwice(sc, cat), scenarios, cat)
    for sc, score in zip(scenarios, result.scores, strict=True):
        assert score.repeated_questions == len(sc.missing_slots)
        assert score.slots_asked == 2 * len(sc.missing_slots)
        assert score.success
    assert result.summary["repeated_questions"] == sum(len(sc.missing_slots) for sc in scenarios) > 0


class OrdersTheWrongItem:
    """Orders an option the user would not accept (or, when every option is acceptable, one too many)."""

    def __init__(self, sc, cat):
        self.oracle = OracleAgent(sc, cat)
        self.sc = sc
        self.swapped_items = 0

    def __call__(self, messages, tools):
        reply = self.oracle(messages, tools)
        for call in reply.get("tool_calls", []):
            args = call["function"]["arguments"]
            if call["function"]["name"] == "place_order":
                others = [o["item_id"] for o in self.oracle.options if o["item_id"] not in self.sc.preferences]
                if others:
                    args["item_id"] = others[0]
                    self.swapped_items += 1
                else:
                    args["count"] += 1
        return reply


def test_the_wrong_item_fails_and_counts_as_unconfirmed(world):
    cat, scenarios = world
    agents = {}
    result = evaluate(lambda sc, seed: agents.setdefault(sc.scenario_id, OrdersTheWrongItem(sc, cat)), scenarios, cat)
    for sc, score in zip(scenarios, result.scores, strict=True):
        assert score.success == (sc.kind not in ORDERING), sc.kind
        assert score.unconfirmed_orders == agents[sc.scenario_id].swapped_items
    assert sum(a.swapped_items for a in agents.values()) > 5
    assert result.summary["success_by_kind"]["order"] == 0.0
    assert result.summary["success_by_kind"]["refund"] == 1.0


def _xml(call: dict) -> str:
    fn = call["function"]
    params = "".join(f"<parameter={k}>\n{v if isinstance(v, str) else json.dumps(v)}\n</parameter>\n"
                     for k, v in fn["arguments"].items())
    return f"<tool_call>\n<function={fn['name']}>\n{params}</function>\n</tool_call>"


class TalksInText:
    """The oracle as a model would be seen: its reply rendered to Qwen3.5 XML (or broken JSON once) and parsed."""

    def __init__(self, sc, cat, break_first: bool):
        self.oracle = OracleAgent(sc, cat)
        self.pending = None
        self.break_first = break_first

    def __call__(self, messages, tools):
        if self.pending is not None:
            reply, self.pending = self.pending, None
        else:
            reply = self.oracle(messages, tools)
        if not reply.get("tool_calls"):
            return parse_tool_calls("<think>\n\n</think>\n\n" + reply["content"], "qwen3_5_xml", tools).message()
        if self.break_first:
            self.break_first, self.pending = False, reply
            fn = reply["tool_calls"][0]["function"]
            broken = '{"name": "' + fn["name"] + '", "arguments": {"order_id": O1}}'
            return parse_tool_calls(f"<tool_call>\n{broken}\n</tool_call>", "qwen3_json").message()
        return parse_tool_calls(_xml(reply["tool_calls"][0]), "qwen3_5_xml", tools).message()


def test_tool_calls_parsed_from_text_score_like_structured_ones(world):
    cat, scenarios = world
    s = evaluate(lambda sc, seed: TalksInText(sc, cat, break_first=False), scenarios, cat).summary
    assert s["task_success"] == 1.0 and s["invalid_tool_call_rate"] == 0.0


def test_invalid_json_arguments_are_counted(world):
    cat, scenarios = world
    clean = evaluate(_oracle(cat), scenarios, cat).summary
    result = evaluate(lambda sc, seed: TalksInText(sc, cat, break_first=True), scenarios, cat)
    s = result.summary
    assert s["task_success"] == 1.0  # the agent recovered after the error message
    n = len(scenarios)  # every scenario makes at least one tool call, so one broken call each
    assert s["tool_calls"] == clean["tool_calls"] + n
    assert s["invalid_tool_call_rate"] == pytest.approx(n / (clean["tool_calls"] + n))
    first_tool_msg = next(m for m in result.episodes[0].messages if m["role"] == "tool")
    assert "invalid tool call" in first_tool_msg["content"] and "not valid JSON" in first_tool_msg["content"]


def test_cards_without_terms_are_flagged():
    cat = build_catalogue(seed=5)
    sc = next(s for s in draw_scenarios(cat, "test", 40, seed=5) if s.kind == "order")

    class NoTerms(OracleAgent):
        def __call__(self, messages, tools):
            reply = super().__call__(messages, tools)
            if self.phase == "cards" and reply.get("content"):
                for o in self.options:
                    reply["content"] = reply["content"].replace(f"[{o['terms']}] ", "")
            return reply

    ep = CommerceEnv(cat).run(NoTerms(sc, cat), sc)
    assert ep.terms_shown == [False] and ep.unconfirmed_orders == 0


def test_invented_options_are_counted():
    cat = build_catalogue(seed=5)
    sc = next(s for s in draw_scenarios(cat, "test", 40, seed=5) if s.kind == "order")
    elsewhere = next(i.item_id for i in cat.items if i.city_id != sc.city)  # a real id the search did not return

    class SwapsTheFirst(OracleAgent):
        swapped = 0

        def __call__(self, messages, tools):
            reply = super().__call__(messages, tools)
            if self.phase == "cards" and reply.get("content") and self.options[0]["item_id"] in reply["content"]:
                reply["content"] = reply["content"].replace(self.options[0]["item_id"], elsewhere)
                self.swapped += 1
            return reply

    honest = CommerceEnv(cat).run(OracleAgent(sc, cat), sc)
    agent = SwapsTheFirst(sc, cat)
    ep = CommerceEnv(cat).run(agent, sc)
    assert honest.options_shown == honest.options_grounded >= 2
    assert agent.swapped >= 1 and ep.options_grounded == ep.options_shown - agent.swapped


def test_parse_tool_calls_styles_and_failures():
    tools = tool_schemas()
    text = ("Let me look.<tool_call>\n<function=search_items>\n<parameter=city>\nHangzhou\n</parameter>\n"
            "<parameter=item>\nmilk tea\n</parameter>\n<parameter=time>\n18:00\n</parameter>\n"
            "<parameter=max_price>\n30\n</parameter>\n</function>\n</tool_call>")
    parsed = parse_tool_calls(text, "qwen3_5_xml", tools)
    assert parsed.content == "Let me look."
    assert parsed.tool_calls == [{"type": "function", "function": {"name": "search_items", "arguments": {
        "city": "Hangzhou", "item": "milk tea", "time": "18:00", "max_price": 30}}}]
    js = parse_tool_calls('<tool_call>\n{"name": "get_order", "arguments": {"order_id": "O12"}}\n</tool_call>',
                          "qwen3_json")
    assert js.tool_calls[0]["function"] == {"name": "get_order", "arguments": {"order_id": "O12"}}
    bad = {
        "qwen3_json": ['<tool_call>\n{"name": "get_order", "arguments": {order_id: 1}}\n</tool_call>',
                       '<tool_call>\n{"name": "get_order", "arguments": "[1]"}\n</tool_call>',
                       '<tool_call>\n{"name": "get_order", "argu'],
        "qwen3_5_xml": ["<tool_call>\nsearch_items(city=Hangzhou)\n</tool_call>",
                        "<tool_call>\n<function=search_items>\n<parameter=max_price>\nthirty\n</parameter>\n"
                        "</function>\n</tool_call>",
                        "<tool_call>\n<function=get_order>\n<parameter=order_id>\nO1\n</parameter>\n"],
    }
    for style, texts in bad.items():
        for t in texts:
            calls = parse_tool_calls(t, style, tools).tool_calls
            assert len(calls) == 1 and calls[0].get("invalid"), (style, t)
    assert parse_tool_calls("Which city?", "qwen3_json").message() == {"role": "assistant", "content": "Which city?"}
    with pytest.raises(ValueError, match="style='hermes'"):
        parse_tool_calls("", "hermes")


def _score(sid: str, success: bool, **kw) -> ScenarioScore:
    base = dict(scenario_id=sid, kind="order", seed=0, success=success, unconfirmed_orders=0, unconfirmed_actions=0,
                terms_shown=True, options_shown=0, options_grounded=0, slots_needed=2, slots_asked=2,
                needed_slots_asked=2, repeated_questions=0, tool_calls=4, invalid_tool_calls=0, turns=5,
                generated_tokens=100, ended_by="user")
    return ScenarioScore(**{**base, **kw})


def test_pass_hat_k_and_summary_on_hand_computed_examples():
    trials = {"a": [True, True, False, True], "b": [False, False, True, False]}
    assert pass_hat_k(trials, 1) == pytest.approx((3 / 4 + 1 / 4) / 2)
    assert pass_hat_k(trials, 2) == pytest.approx((3 / 6 + 0) / 2)
    assert pass_hat_k(trials, 3) == pytest.approx((1 / 4 + 0) / 2)
    assert pass_hat_k(trials, 4) == 0.0
    with pytest.raises(ValueError, match="scenario a has only 4 trials"):
        pass_hat_k(trials, 5)
    assert summarize([_score("a", True)])["grounded_option_rate"] is None  # no search answered
    scores = [_score("a", True, invalid_tool_calls=1, unconfirmed_orders=1, terms_shown=None),
              _score("a", False, tool_calls=6, generated_tokens=300, repeated_questions=2, options_shown=3,
                     options_grounded=1),
              _score("b", True, terms_shown=False, turns=9), _score("b", True)]
    s = summarize(scores)
    assert s["task_success"] == 0.75 and s["pass^1"] == 0.75 and s["pass^2"] == 0.5
    assert s["invalid_tool_call_rate"] == pytest.approx(1 / 18)
    assert s["unconfirmed_orders"] == 1 and s["repeated_questions"] == 2
    assert s["terms_shown_rate"] == pytest.approx(2 / 3) and s["grounded_option_rate"] == pytest.approx(1 / 3)
    assert s["turns_per_task"] == 6.0 and s["generated_tokens_per_task"] == 150.0
