"""get_order: an existing order with its terms and what a refund would return now."""

from __future__ import annotations

from data_pipelines.commerce_world.order_database import OrderDatabase
from data_pipelines.commerce_world.tools.lookup import find_order


def get_order(db: OrderDatabase, order_id: str) -> dict:
    order = find_order(db, order_id)
    item = db.catalogue.item_by_id[order.item_id]
    return {"terms": db.terms(item), "order_id": order_id, "status": order.status, "item_id": item.item_id,
            "name": db.name(item), "time": order.time, "count": order.count, "total": order.total,
            "refund_amount": db.refund_amount(order)}
