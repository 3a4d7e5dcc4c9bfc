"""get_item_details: everything the catalogue knows about one item, including stock per time slot."""

from __future__ import annotations

from data_pipelines.commerce_world.order_database import OrderDatabase
from data_pipelines.commerce_world.tools.lookup import find_item


def get_item_details(db: OrderDatabase, item_id: str) -> dict:
    item = find_item(db, item_id)
    return {"terms": db.terms(item), "item_id": item.item_id, "name": db.name(item),
            "shop": db.name(db.catalogue.shop_by_id[item.shop_id]),
            "city": db.name(db.catalogue.city_by_id[item.city_id]), "price": item.price, "unit": db.unit(item),
            "stock": {t: db.stock[(item.item_id, t)] for t in item.stock}}
