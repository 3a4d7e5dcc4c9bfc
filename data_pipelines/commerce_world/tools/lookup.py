"""Name resolution shared by the tools: cities and kinds by English or Chinese name, items and orders by id."""

from __future__ import annotations

from data_pipelines.commerce_world.catalogue import City, Item
from data_pipelines.commerce_world.order_database import Order, OrderDatabase
from data_pipelines.commerce_world.vocabulary import KINDS, Kind


class ToolError(Exception):
    """A well-formed call the world refuses (unknown id, sold out); returned to the model as {"error": ...}."""


def find_city(db: OrderDatabase, name: str) -> City:
    key = name.strip().lower()
    for city in db.catalogue.cities:
        if key in (city.en.lower(), city.zh):
            return city
    raise ToolError(f"unknown city: {name}")


def find_kind(name: str) -> Kind:
    key = name.strip().lower()
    for kind in KINDS:
        if key in (kind.en, kind.zh):
            return kind
    raise ToolError(f"unknown item: {name}")


def find_item(db: OrderDatabase, item_id: str) -> Item:
    item = db.catalogue.item_by_id.get(item_id)
    if item is None:
        raise ToolError(f"unknown item_id: {item_id}")
    return item


def find_order(db: OrderDatabase, order_id: str) -> Order:
    order = db.orders.get(order_id)
    if order is None:
        raise ToolError(f"unknown order_id: {order_id}")
    return order
