"""confirm_order: pay for a pending order, which makes it confirmed."""

from __future__ import annotations

from data_pipelines.commerce_world.order_database import OrderDatabase
from data_pipelines.commerce_world.tools.lookup import ToolError, find_order


def confirm_order(db: OrderDatabase, order_id: str) -> dict:
    order = find_order(db, order_id)
    if order.status != "pending":
        raise ToolError(f"{order_id} is {order.status}, not pending")
    order.status = "confirmed"
    return {"order_id": order_id, "status": order.status, "total": order.total}
