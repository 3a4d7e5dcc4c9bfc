"""The mutable side of the world: stock per time slot and the order database that tools read and write.

One `OrderDatabase` lives for one dialog or episode; its `locale` is the app language the tools answer in.
Scoring compares `final_orders()` with a scenario's expected orders, as tau-bench compares database state.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

from data_pipelines.commerce_world.catalogue import Catalogue, Item
from data_pipelines.commerce_world.vocabulary import KINDS_BY_KEY, RULES_BY_KEY, RefundRule

LOCALES = ("en", "zh")


@dataclass
class Order:
    order_id: str
    item_id: str
    time: str
    count: int
    status: str  # pending | confirmed | cancelled | refunded
    total: int
    refunded: float = 0.0


class OrderDatabase:
    def __init__(self, catalogue: Catalogue, locale: str, orders: list[dict] | None = None,
                 stock_overrides: list[list] | None = None, next_order_number: int = 1001) -> None:
        if locale not in LOCALES:
            raise ValueError(f"locale={locale!r}: expected one of {LOCALES}")
        self.catalogue = catalogue
        self.locale = locale
        self.stock = dict(catalogue.base_stock)
        for item_id, time, n in stock_overrides or []:
            self.stock[(item_id, time)] = n
        self.orders: dict[str, Order] = {o["order_id"]: Order(**o) for o in orders or []}
        self.initial_order_ids = frozenset(self.orders)
        self.next_order_number = next_order_number

    def clone(self) -> OrderDatabase:
        return copy.deepcopy(self)

    def new_order_id(self) -> str:
        while f"O{self.next_order_number}" in self.orders:
            self.next_order_number += 1
        order_id = f"O{self.next_order_number}"
        self.next_order_number += 1
        return order_id

    def name(self, entity) -> str:
        return entity.zh if self.locale == "zh" else entity.en

    def rule(self, item: Item) -> RefundRule:
        return RULES_BY_KEY[item.rule]

    def terms(self, item: Item) -> str:
        return self.name(self.rule(item))

    def unit(self, item: Item) -> str:
        kind = KINDS_BY_KEY[item.kind]
        return kind.unit_zh if self.locale == "zh" else kind.unit_en

    def refund_amount(self, order: Order) -> float:
        fee = self.rule(self.catalogue.item_by_id[order.item_id]).refund_fee_pct
        return round(order.total * (100 - fee) / 100, 1)

    def final_orders(self) -> list[dict]:
        """Orders as scored: orders created in the episode are compared without their (sequence) ids."""
        rows = []
        for o in self.orders.values():
            row = asdict(o)
            if o.order_id not in self.initial_order_ids:
                row["order_id"] = "new"
            rows.append(row)
        return sorted(rows, key=lambda r: (r["order_id"], r["item_id"], r["time"], r["count"], r["status"]))
