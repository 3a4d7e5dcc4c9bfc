"""Training dialogs: the oracle and the user simulator talk through the real tools, recorded as OpenAI
`messages` (system/user/assistant with `tool_calls`/tool) plus the `tools` list.

Tool-call arguments are JSON objects (what transformers chat templates expect); tool results are JSON text.

A third of the training change/refund dialogs open with the order id misread: the lookup fails, the assistant
says so and asks for the number, and looks it up again. The misread call has `"weight": 0` (kept as context, not
learnt). A model that had never seen a tool error looped through invalid calls after one and placed orders
nobody confirmed (12 in 50 held-out scenarios of a 300-step run).
"""

from __future__ import annotations

import json
import zlib

from data_pipelines.commerce_world.catalogue import Catalogue
from data_pipelines.commerce_world.oracle import OracleAgent
from data_pipelines.commerce_world.phrases import SYSTEM
from data_pipelines.commerce_world.scenarios import Scenario, expected_final_orders, new_database
from data_pipelines.commerce_world.tools import run_tool, tool_schemas
from data_pipelines.commerce_world.user_simulator import UserSimulator

MAX_ASSISTANT_MESSAGES = 16


def tool_result_text(result: dict) -> str:
    return json.dumps(result, ensure_ascii=False, separators=(",", ":"))


def misread_order_id(scenario: Scenario) -> str:
    """The order id the oracle misreads first ("" for none): its digits rotated, never an order of the user."""
    if scenario.split != "train" or scenario.kind not in ("change", "refund") or zlib.crc32(
            scenario.scenario_id.encode()) % 3:
        return ""
    taken = {o["order_id"] for o in scenario.initial_orders}
    digits = scenario.order_id[1:]
    number = int(digits[1:] + digits[0])
    while f"O{number}" in taken:
        number += 1
    return f"O{number}"


def write_dialog(scenario: Scenario, catalogue: Catalogue) -> dict:
    """One dialog record; raises if the oracle's episode does not end in the scenario's expected orders."""
    db = new_database(scenario, catalogue)
    user = UserSimulator(scenario, catalogue, seed=0)
    agent = OracleAgent(scenario, catalogue, misread_order_id(scenario))
    tools = tool_schemas()
    messages = [{"role": "system", "content": SYSTEM[scenario.lang]},
                {"role": "user", "content": user.first_message()}]
    for _ in range(MAX_ASSISTANT_MESSAGES):
        reply = agent(messages, tools)
        messages.append(reply)
        if reply.get("tool_calls"):
            for n, call in enumerate(reply["tool_calls"]):
                call["id"] = f"call_{sum(m['role'] == 'tool' for m in messages) + n}"
                fn = call["function"]
                result = run_tool(db, fn["name"], fn["arguments"])
                messages.append({"role": "tool", "tool_call_id": call["id"], "name": fn["name"],
                                 "content": tool_result_text(result)})
            continue
        turn = user.respond(reply["content"])
        if turn.text is None:
            break
        messages.append({"role": "user", "content": turn.text})
    else:
        raise RuntimeError(f"{scenario.scenario_id}: dialog did not end within {MAX_ASSISTANT_MESSAGES} messages")
    if db.final_orders() != expected_final_orders(scenario, catalogue):
        raise RuntimeError(f"{scenario.scenario_id}: oracle dialog ends in {db.final_orders()}, expected "
                           f"{expected_final_orders(scenario, catalogue)}")
    return {"id": scenario.scenario_id, "split": scenario.split, "kind": scenario.kind, "lang": scenario.lang,
            "messages": messages, "tools": tools}
