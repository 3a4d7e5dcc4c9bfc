"""The simulated commerce environment: one episode = a scenario's user simulator, the tools over an order
database, and any agent `(messages, tools) -> assistant message`.

The agent returns an OpenAI-style assistant message: `content` and/or `tool_calls`
([{"type": "function", "function": {"name", "arguments"}}], arguments a JSON object or JSON text; a call
flagged `"invalid"` by `parse_tool_calls` counts as invalid). An optional `num_generated_tokens` key reports
its cost. The env keeps the ledger scoring needs: invalid calls, orders and changes made without the user's
confirmation, whether the terms were on screen before the user confirmed, and whether the options the
assistant shows after a search are the ones the search returned (not invented).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from data_pipelines.commerce_world.catalogue import Catalogue
from data_pipelines.commerce_world.order_database import OrderDatabase
from data_pipelines.commerce_world.phrases import SYSTEM
from data_pipelines.commerce_world.scenarios import Scenario, new_database
from data_pipelines.commerce_world.tools import InvalidToolCall, run_tool, tool_schemas, validate_call
from data_pipelines.commerce_world.user_simulator import ITEM_ID, UserSimulator, UserTurn

Agent = Callable[[list[dict], list[dict]], dict]
_WORD_OR_CJK = re.compile(r"[\u3000-\u9fff\uff00-\uffef]|[^\s\u3000-\u9fff\uff00-\uffef]+")
_ORDER_ACTIONS = ("change_order", "request_refund", "cancel_order")


def estimate_tokens(message: dict) -> int:
    """Fallback cost when the agent reports none: words plus CJK characters of content and calls."""
    text = (message.get("content") or "") + json.dumps(message.get("tool_calls") or [], ensure_ascii=False)
    return len(_WORD_OR_CJK.findall(text))


@dataclass
class Episode:
    scenario_id: str
    seed: int
    messages: list[dict]
    final_orders: list[dict]
    assistant_turns: int = 0
    generated_tokens: int = 0
    tool_calls: int = 0
    invalid_tool_calls: int = 0
    tool_errors: int = 0
    unconfirmed_orders: int = 0  # place_order without the user having picked that item
    unconfirmed_actions: int = 0  # change/refund/cancel without the user's yes for that order
    terms_shown: list[bool] = field(default_factory=list)  # per confirmed action: terms shown before the yes
    options_shown: int = 0  # item ids in assistant texts that answer a search result
    options_grounded: int = 0  # of those, ids the search result listed
    slots_asked: list[str] = field(default_factory=list)
    repeated_slots: list[str] = field(default_factory=list)
    ended_by: str = "user"  # user | max_turns
    invalid_reasons: list[str] = field(default_factory=list)


class CommerceEnv:
    def __init__(self, catalogue: Catalogue, max_assistant_turns: int = 16,
                 count_tokens: Callable[[dict], int] = estimate_tokens) -> None:
        self.catalogue = catalogue
        self.max_assistant_turns = max_assistant_turns
        self.count_tokens = count_tokens
        self.tools = tool_schemas()

    def run(self, agent: Agent, scenario: Scenario, seed: int = 0) -> Episode:
        db = new_database(scenario, self.catalogue)
        user = UserSimulator(scenario, self.catalogue, seed)
        messages = [{"role": "system", "content": SYSTEM[scenario.lang]},
                    {"role": "user", "content": user.first_message()}]
        ep = Episode(scenario.scenario_id, seed, messages, [])
        grant: tuple[UserTurn, int] | None = None  # the latest user turn if it confirmed something
        while True:
            if ep.assistant_turns >= self.max_assistant_turns:
                ep.ended_by = "max_turns"
                break
            reply = agent(messages, self.tools)
            ep.assistant_turns += 1
            ep.generated_tokens += int(reply.get("num_generated_tokens") or self.count_tokens(reply))
            calls = reply.get("tool_calls") or []
            stored = {"role": "assistant", "content": reply.get("content") or ""}
            if calls:
                stored["tool_calls"] = []
            messages.append(stored)
            for call in calls:
                result = self._call(db, call, ep, grant, messages)
                stored["tool_calls"].append(result[0])
                messages.append(result[1])
            if calls:
                continue
            self._count_options(messages, ep)
            turn = user.respond(stored["content"])
            if turn.text is None:
                break
            messages.append({"role": "user", "content": turn.text})
            grant = (turn, len(messages) - 1) if turn.intent in ("choose", "yes") else None
        ep.final_orders = db.final_orders()
        ep.slots_asked = list(user.ledger.slots_asked)
        ep.repeated_slots = list(user.ledger.repeated_slots)
        return ep

    @staticmethod
    def _count_options(messages: list[dict], ep: Episode) -> None:
        """Option cards answering a search must name the items it returned; an invented id is shown to a user
        who may pick it."""
        before = messages[-2]
        if before["role"] != "tool" or before.get("name") != "search_items":
            return
        listed = {o.get("item_id") for o in json.loads(before["content"]).get("options", [])}
        shown = ITEM_ID.findall(messages[-1]["content"])
        ep.options_shown += len(shown)
        ep.options_grounded += sum(i in listed for i in shown)

    def _terms_before(self, messages: list[dict], upto: int, terms: str) -> bool:
        return any(m["role"] == "assistant" and terms in (m.get("content") or "") for m in messages[:upto])

    def _call(self, db: OrderDatabase, call: dict, ep: Episode, grant: tuple[UserTurn, int] | None,
              messages: list[dict]) -> tuple[dict, dict]:
        ep.tool_calls += 1
        fn = call.get("function") or {}
        name = fn.get("name") or ""
        call_id = call.get("id") or f"call_{ep.tool_calls}"
        raw_args = fn.get("arguments", {})
        stored_call = {"id": call_id, "type": "function",
                       "function": {"name": name, "arguments": raw_args if isinstance(raw_args, dict) else {}}}
        try:
            if call.get("invalid"):
                raise InvalidToolCall(f"{name or 'tool call'}: {call['invalid']}")
            args = validate_call(name, raw_args)
        except InvalidToolCall as e:
            ep.invalid_tool_calls += 1
            ep.invalid_reasons.append(str(e))
            result = {"error": f"invalid tool call: {e}"}
        else:
            stored_call["function"]["arguments"] = args
            self._check_consent(db, name, args, ep, grant, messages)
            result = run_tool(db, name, args)
            ep.tool_errors += "error" in result
        tool_msg = {"role": "tool", "tool_call_id": call_id, "name": name,
                    "content": json.dumps(result, ensure_ascii=False, separators=(",", ":"))}
        return stored_call, tool_msg

    def _check_consent(self, db: OrderDatabase, name: str, args: dict, ep: Episode,
                       grant: tuple[UserTurn, int] | None, messages: list[dict]) -> None:
        if name == "place_order":
            ok = grant is not None and grant[0].intent == "choose" and grant[0].target == args["item_id"]
            item = db.catalogue.item_by_id.get(args["item_id"])
        elif name in _ORDER_ACTIONS:
            ok = grant is not None and grant[0].intent == "yes" and grant[0].target == args["order_id"]
            order = db.orders.get(args["order_id"])
            item = db.catalogue.item_by_id[order.item_id] if order else None
        else:
            return
        if not ok:
            if name == "place_order":
                ep.unconfirmed_orders += 1
            else:
                ep.unconfirmed_actions += 1
            ep.terms_shown.append(False)
        elif item is not None:
            ep.terms_shown.append(self._terms_before(messages, grant[1], db.terms(item)))
