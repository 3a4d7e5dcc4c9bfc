"""search_items: the cheapest (up to 3) items of a kind in a city offered at a time slot within a budget."""

from __future__ import annotations

from data_pipelines.commerce_world.order_database import OrderDatabase
from data_pipelines.commerce_world.tools.lookup import find_city, find_kind

MAX_OPTIONS = 3


def search_items(db: OrderDatabase, city: str, item: str, time: str, max_price: int) -> dict:
    city_id = find_city(db, city).city_id
    kind = find_kind(item)
    hits = sorted((i for i in db.catalogue.items_of(city_id, kind.key) if time in i.stock and i.price <= max_price),
                  key=lambda i: (i.price, i.item_id))
    return {"options": [{"terms": db.terms(i), "item_id": i.item_id, "name": db.name(i),
                         "shop": db.name(db.catalogue.shop_by_id[i.shop_id]), "time": time, "price": i.price}
                        for i in hits[:MAX_OPTIONS]]}
