"""cancel_order: drop a pending (unpaid) order and release its stock; paid orders go through a refund."""

from __future__ import annotations

from data_pipelines.commerce_world.order_database import OrderDatabase
from data_pipelines.commerce_world.tools.lookup import ToolError, find_order


def cancel_order(db: OrderDatabase, order_id: str) -> dict:
    order = find_order(db, order_id)
    if order.status != "pending":
        raise ToolError(f"{order_id} is {order.status}; only pending orders can be cancelled")
    order.status = "cancelled"
    db.stock[(order.item_id, order.time)] += order.count
    return {"order_id": order_id, "status": order.status}
