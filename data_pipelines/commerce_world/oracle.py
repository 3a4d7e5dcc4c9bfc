"""The reference assistant: follows the protocol for one scenario; it writes the training dialogs.

Protocol: ask once for exactly the missing slots; search; show 2-3 option cards with the refund/change terms at
the top of each; place and pay for an order only after the user picked an option; on a sold-out option or an
empty search say so and offer a way on; on an unknown order id say so and ask for the number; for changes and
refunds look the order up, show its terms and the effect, and act only after a yes. It is an agent like any other
(`messages, tools -> message`), reading the user's choice and every id, price and time from the conversation; the
goal only stands in for what it understood from the user's words.
"""

from __future__ import annotations

import json
import re

from data_pipelines.commerce_world.catalogue import Catalogue
from data_pipelines.commerce_world.phrases import (
    ASK,
    CARD,
    CARDS_HEAD,
    CARDS_TAIL,
    CHANGE_DONE,
    CHANGE_PROMPT,
    DECLINED,
    NO_RESULTS,
    NOT_FOUND,
    NOTHING_DONE,
    ORDER_DONE,
    REFUND_DONE,
    REFUND_PROMPT,
    SOLD_OUT,
)
from data_pipelines.commerce_world.scenarios import ORDER_KINDS, Scenario
from data_pipelines.commerce_world.vocabulary import KINDS_BY_KEY

_DIGIT = re.compile(r"\d")
_YES = ("yes", "是的", "好的")


def text_message(content: str) -> dict:
    return {"role": "assistant", "content": content}


def call_message(name: str, arguments: dict) -> dict:
    return {"role": "assistant", "content": "",
            "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}]}


def _number(x: float) -> str:
    return json.dumps(x)


class OracleAgent:
    """Stateful per episode: create one per scenario. `misread_order_id`: a first lookup of that id instead, the
    mistake a training dialog recovers from (sent with weight 0, so it is not learnt)."""

    def __init__(self, scenario: Scenario, catalogue: Catalogue, misread_order_id: str = "") -> None:
        self.sc = scenario
        self.misread_order_id = misread_order_id
        self.lang = scenario.lang
        city = catalogue.city_by_id.get(scenario.city)
        kind = KINDS_BY_KEY.get(scenario.item)
        zh = self.lang == "zh"
        self.city = (city.zh if zh else city.en) if city else ""
        self.item = (kind.zh if zh else kind.en) if kind else ""
        self.phase = "start"
        self.options: list[dict] = []
        self.chosen: dict = {}
        self.budget = scenario.budget
        self.order: dict = {}

    def __call__(self, messages: list[dict], tools: list[dict]) -> dict:
        last = messages[-1]
        if last["role"] == "tool":
            return self._after_tool(json.loads(last["content"]))
        return self._after_user(last["content"])

    def _search(self) -> dict:
        self.phase = "searched"
        return call_message("search_items", {"city": self.city, "item": self.item, "time": self.sc.time,
                                             "max_price": self.budget})

    def _after_user(self, text: str) -> dict:
        sc, lang = self.sc, self.lang
        if self.phase == "start":
            if sc.kind not in ORDER_KINDS:
                if self.misread_order_id:
                    self.phase = "lookup_misread"
                    return {**call_message("get_order", {"order_id": self.misread_order_id}), "weight": 0}
                self.phase = "lookup"
                return call_message("get_order", {"order_id": sc.order_id})
            if sc.missing_slots:
                self.phase = "asked"
                sep = " " if lang == "en" else ""
                return text_message(sep.join(ASK[lang][s] for s in sc.missing_slots))
            return self._search()
        if self.phase == "asked":
            return self._search()
        if self.phase == "asked_order_id":
            self.phase = "lookup"
            return call_message("get_order", {"order_id": sc.order_id})
        if self.phase == "no_results":
            self.budget = sc.raised_budget
            return self._search()
        if self.phase == "cards":
            digit = _DIGIT.search(text)
            if digit is None:
                self.phase = "done"
                return text_message(DECLINED[lang])
            self.chosen = self.options[int(digit.group()) - 1]
            self.phase = "placing"
            return call_message("place_order", {"item_id": self.chosen["item_id"], "time": sc.time, "count": sc.count})
        if self.phase == "proceed":
            if not any(y in text.lower() for y in _YES):
                self.phase = "done"
                return text_message(NOTHING_DONE[lang])
            self.phase = "acting"
            if sc.kind == "change":
                return call_message("change_order", {"order_id": sc.order_id, "time": sc.new_time})
            return call_message("request_refund", {"order_id": sc.order_id})
        raise RuntimeError(f"oracle: no move for a user message in phase {self.phase!r}")

    def _after_tool(self, result: dict) -> dict:
        lang, sc = self.lang, self.sc
        if self.phase == "searched":
            self.options = result["options"]
            if not self.options:
                self.phase = "no_results"
                return text_message(NO_RESULTS[lang].format(budget=self.budget))
            self.phase = "cards"
            cards = [CARD[lang].format(n=n, **o) for n, o in enumerate(self.options, 1)]
            return text_message("\n".join([CARDS_HEAD[lang], *cards, CARDS_TAIL[lang]]))
        if self.phase == "placing":
            if "error" in result:
                self.phase = "cards"
                return text_message(SOLD_OUT[lang].format(item_id=self.chosen["item_id"]))
            self.order = result
            self.phase = "paying"
            return call_message("confirm_order", {"order_id": result["order_id"]})
        if self.phase == "paying":
            self.phase = "done"
            return text_message(ORDER_DONE[lang].format(order_id=result["order_id"], count=sc.count,
                                                        name=self.chosen["name"], time=sc.time, total=result["total"]))
        if self.phase == "lookup_misread":
            if "error" not in result:
                raise RuntimeError(f"oracle: misread order id {self.misread_order_id} exists")
            self.phase = "asked_order_id"
            return text_message(NOT_FOUND[lang].format(order_id=self.misread_order_id))
        if self.phase == "lookup":
            self.phase = "proceed"
            if sc.kind == "change":
                return text_message(CHANGE_PROMPT[lang].format(terms=result["terms"], order_id=sc.order_id,
                                                               old=result["time"], new=sc.new_time))
            return text_message(REFUND_PROMPT[lang].format(terms=result["terms"], order_id=sc.order_id,
                                                           amount=_number(result["refund_amount"])))
        if self.phase == "acting":
            self.phase = "done"
            if sc.kind == "change":
                return text_message(CHANGE_DONE[lang].format(order_id=sc.order_id, time=result["time"]))
            return text_message(REFUND_DONE[lang].format(order_id=sc.order_id,
                                                         amount=_number(result["refund_amount"])))
        raise RuntimeError(f"oracle: no move for a tool result in phase {self.phase!r}")
