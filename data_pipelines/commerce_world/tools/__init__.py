"""The commerce tools: one tool per file, its JSON schema (OpenAI function format) in the .json beside it.

`tool_schemas()` is the `tools` list dialogs and the evaluation give the model; `run_tool` validates a call
against its schema (raising `InvalidToolCall`) and returns the tool's JSON result, or {"error": ...} for a
well-formed call the world refuses.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

from data_pipelines.commerce_world.order_database import OrderDatabase
from data_pipelines.commerce_world.tools.cancel_order import cancel_order
from data_pipelines.commerce_world.tools.change_order import change_order
from data_pipelines.commerce_world.tools.check_availability import check_availability
from data_pipelines.commerce_world.tools.confirm_order import confirm_order
from data_pipelines.commerce_world.tools.get_item_details import get_item_details
from data_pipelines.commerce_world.tools.get_order import get_order
from data_pipelines.commerce_world.tools.lookup import ToolError
from data_pipelines.commerce_world.tools.place_order import place_order
from data_pipelines.commerce_world.tools.request_refund import request_refund
from data_pipelines.commerce_world.tools.schema_check import schema_errors
from data_pipelines.commerce_world.tools.search_items import search_items

TOOLS: dict[str, Callable[..., dict]] = {f.__name__: f for f in (
    search_items, get_item_details, check_availability, place_order, confirm_order, get_order, cancel_order,
    change_order, request_refund)}
_DIR = Path(__file__).parent


class InvalidToolCall(ValueError):
    """A call the model got wrong: unknown tool, arguments not a JSON object, or arguments off the schema."""


@functools.cache
def _schema(name: str) -> dict:
    path = _DIR / f"{name}.json"
    schema = json.loads(path.read_text(encoding="utf-8"))
    if schema.get("name") != name:
        raise ValueError(f"{path}: name {schema.get('name')!r} does not match the file")
    return schema


def tool_schemas() -> list[dict]:
    """The `tools` list in OpenAI format, in a fixed order."""
    return [{"type": "function", "function": _schema(name)} for name in TOOLS]


def validate_call(name: str, arguments: object) -> dict:
    """The arguments with integral floats made ints; raises InvalidToolCall naming what is wrong."""
    if name not in TOOLS:
        raise InvalidToolCall(f"unknown tool {name!r}")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as e:
            raise InvalidToolCall(f"{name}: arguments are not valid JSON ({e})") from None
    params = _schema(name)["parameters"]
    errors = schema_errors(arguments, params, "arguments")
    if errors:
        raise InvalidToolCall(f"{name}: " + "; ".join(errors))
    return {k: int(v) if params["properties"][k].get("type") == "integer" else v for k, v in arguments.items()}


def run_tool(db: OrderDatabase, name: str, arguments: object) -> dict:
    """Validate then run one call on `db`; a refusal by the world comes back as {"error": message}."""
    args = validate_call(name, arguments)
    try:
        return TOOLS[name](db, **args)
    except ToolError as e:
        return {"error": str(e)}
