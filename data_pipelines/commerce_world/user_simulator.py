"""The scripted user: holds a scenario's hidden goal, answers what it is asked, confirms only matching options.

It reads any assistant text (the oracle's or a model's) through the markers in `phrases`, and keeps the
ledger the evaluation scores: which slots were asked (and asked again), which options it confirmed and
when. Its wording is seeded, so trials with different seeds hear different phrasings of the same goal.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from data_pipelines.commerce_world.catalogue import Catalogue
from data_pipelines.commerce_world.phrases import (
    NO_RESULTS_MARKERS,
    NOT_FOUND_MARKERS,
    PROCEED_MARKERS,
    SLOT_MARKERS,
    SLOTS,
    SOLD_OUT_MARKERS,
    first_order_message,
    user_says,
)
from data_pipelines.commerce_world.scenarios import ORDER_KINDS, Scenario
from data_pipelines.commerce_world.vocabulary import KINDS_BY_KEY

ITEM_ID = re.compile(r"\bI\d{4}\b")
ORDER_ID = re.compile(r"\bO\d+\b")
MAX_REJECTS = 2


@dataclass
class UserTurn:
    text: str | None  # None: the user has nothing more to say and the dialog ends
    intent: str  # open | answer | choose | decline | reject | raise_budget | yes | no | end
    target: str = ""  # choose: the item id confirmed; yes: the order id the action may touch


@dataclass
class UserLedger:
    slots_asked: list[str] = field(default_factory=list)
    repeated_slots: list[str] = field(default_factory=list)
    confirmations: list[UserTurn] = field(default_factory=list)


def _has(text: str, markers: tuple[str, ...]) -> bool:
    low = text.lower()
    return any(m in low for m in markers)


class UserSimulator:
    def __init__(self, scenario: Scenario, catalogue: Catalogue, seed: int = 0) -> None:
        self.sc = scenario
        self.rng = random.Random(f"user-{scenario.style}-{seed}")
        kind = KINDS_BY_KEY.get(scenario.item)
        city = catalogue.city_by_id.get(scenario.city)
        zh = scenario.lang == "zh"
        self.values: dict[str, object] = {
            "city": (city.zh if zh else city.en) if city else "", "time": scenario.time, "count": scenario.count,
            "budget": scenario.budget}
        self.kind_name = (kind.zh if zh else kind.en) if kind else ""
        self.known = set(scenario.revealed)
        self.ledger = UserLedger()
        self.shown: list[str] = []
        self.sold_out: set[str] = set()
        self.chosen = ""
        self.rejects = 0
        self.raised = False
        self.done = False

    def first_message(self) -> str:
        sc = self.sc
        if sc.kind in ORDER_KINDS:
            return first_order_message(sc.lang, self.rng, self.kind_name, self.values, sc.revealed)
        key = "change" if sc.kind == "change" else "refund"
        return user_says(sc.lang, key, self.rng, order_id=sc.order_id, time=sc.new_time)

    def _say(self, intent: str, key: str, target: str = "", **values: object) -> UserTurn:
        turn = UserTurn(user_says(self.sc.lang, key, self.rng, **values), intent, target)
        if intent in ("choose", "yes"):
            self.ledger.confirmations.append(turn)
        return turn

    def _end(self) -> UserTurn:
        self.done = True
        return UserTurn(None, "end")

    def respond(self, text: str) -> UserTurn:
        """The user's reply to one assistant text message (one without tool calls)."""
        if self.done:
            return self._end()
        ids = ITEM_ID.findall(text)
        if _has(text, SOLD_OUT_MARKERS) and self.chosen:
            self.sold_out.add(self.chosen)
            if len(ids) >= 2:
                self.shown = ids
            return self._pick(again=True)
        if _has(text, NO_RESULTS_MARKERS) and not ids:
            if self.sc.kind != "no_results" or self.raised:
                return self._end()
            self.raised = True
            self.values["budget"] = self.sc.raised_budget
            return self._say("raise_budget", "raise_budget", budget=self.sc.raised_budget)
        if _has(text, NOT_FOUND_MARKERS) and self.sc.kind in ("change", "refund"):
            return self._say("answer", "answer_order_id", order_id=self.sc.order_id)
        if _has(text, PROCEED_MARKERS):
            return self._proceed(text)
        if ids and not ORDER_ID.search(text):
            self.shown = ids
            return self._pick(again=False)
        asked = [s for s in SLOTS if _has(text, SLOT_MARKERS[s])] if self.sc.kind in ORDER_KINDS else []
        if not asked:
            return self._end()
        return self._answer(asked)

    def _answer(self, asked: list[str]) -> UserTurn:
        self.ledger.slots_asked += asked
        self.ledger.repeated_slots += [s for s in asked if s in self.known]
        self.known |= set(asked)
        parts = [user_says(self.sc.lang, f"answer_{s}", self.rng, **self.values) for s in asked]
        return UserTurn(" ".join(parts) if self.sc.lang == "en" else "".join(parts), "answer")

    def _pick(self, again: bool) -> UserTurn:
        if self.sc.kind == "decline":
            return self._say("decline", "decline")
        for pref in self.sc.preferences:
            if pref in self.shown and pref not in self.sold_out:
                self.chosen = pref
                return self._say("choose", "choose_again" if again else "choose", pref, k=self.shown.index(pref) + 1)
        self.rejects += 1
        return self._end() if self.rejects > MAX_REJECTS else self._say("reject", "reject")

    def _proceed(self, text: str) -> UserTurn:
        sc = self.sc
        matches = sc.kind in ("change", "refund") and sc.order_id in text and (
            sc.kind != "change" or sc.new_time in text)
        return self._say("yes", "yes", sc.order_id) if matches else self._say("no", "no")
