"""change_order: move a confirmed order to another time slot, where its terms allow a change."""

from __future__ import annotations

from data_pipelines.commerce_world.order_database import OrderDatabase
from data_pipelines.commerce_world.tools.lookup import ToolError, find_order


def change_order(db: OrderDatabase, order_id: str, time: str) -> dict:
    order = find_order(db, order_id)
    item = db.catalogue.item_by_id[order.item_id]
    if order.status != "confirmed":
        raise ToolError(f"{order_id} is {order.status}; only confirmed orders can be changed")
    if not db.rule(item).change_allowed:
        raise ToolError(f"the terms of {order_id} allow no change")
    if time not in item.stock:
        raise ToolError(f"{item.item_id} is not offered at {time}")
    if db.stock[(item.item_id, time)] < order.count:
        raise ToolError(f"sold out: {item.item_id} at {time}")
    db.stock[(item.item_id, order.time)] += order.count
    db.stock[(item.item_id, time)] -= order.count
    order.time = time
    return {"order_id": order_id, "status": order.status, "time": time}
