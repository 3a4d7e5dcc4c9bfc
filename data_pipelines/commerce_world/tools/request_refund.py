"""request_refund: refund a confirmed order under its terms (minus the fee) and release its stock."""

from __future__ import annotations

from data_pipelines.commerce_world.order_database import OrderDatabase
from data_pipelines.commerce_world.tools.lookup import ToolError, find_order


def request_refund(db: OrderDatabase, order_id: str) -> dict:
    order = find_order(db, order_id)
    if order.status != "confirmed":
        raise ToolError(f"{order_id} is {order.status}; only confirmed orders can be refunded")
    order.refunded = db.refund_amount(order)
    order.status = "refunded"
    db.stock[(order.item_id, order.time)] += order.count
    return {"order_id": order_id, "status": order.status, "refund_amount": order.refunded}
