"""place_order: hold stock and create a pending order (called only after the user confirmed the option)."""

from __future__ import annotations

from data_pipelines.commerce_world.order_database import Order, OrderDatabase
from data_pipelines.commerce_world.tools.lookup import ToolError, find_item


def place_order(db: OrderDatabase, item_id: str, time: str, count: int) -> dict:
    item = find_item(db, item_id)
    if time not in item.stock:
        raise ToolError(f"{item_id} is not offered at {time}")
    if db.stock[(item_id, time)] < count:
        raise ToolError(f"sold out: {item_id} at {time}")
    db.stock[(item_id, time)] -= count
    order = Order(order_id=db.new_order_id(), item_id=item_id, time=time, count=count, status="pending",
                  total=item.price * count)
    db.orders[order.order_id] = order
    return {"order_id": order.order_id, "status": order.status, "total": order.total}
