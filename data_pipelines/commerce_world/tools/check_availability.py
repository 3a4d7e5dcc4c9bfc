"""check_availability: whether `count` units of an item are in stock at a time slot."""

from __future__ import annotations

from data_pipelines.commerce_world.order_database import OrderDatabase
from data_pipelines.commerce_world.tools.lookup import ToolError, find_item


def check_availability(db: OrderDatabase, item_id: str, time: str, count: int) -> dict:
    item = find_item(db, item_id)
    if time not in item.stock:
        raise ToolError(f"{item_id} is not offered at {time}")
    stock = db.stock[(item_id, time)]
    return {"item_id": item_id, "time": time, "stock": stock, "available": stock >= count}
