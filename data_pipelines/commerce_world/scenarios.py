"""Scenarios: typed hidden goals for dialogs and evaluation, drawn from one split, and their expected orders.

A scenario's expected final orders are computed from the goal alone (not by running any agent), so scoring
an episode is comparing databases, as tau-bench does.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

from data_pipelines.commerce_world.catalogue import Catalogue
from data_pipelines.commerce_world.order_database import Order, OrderDatabase
from data_pipelines.commerce_world.phrases import SLOTS
from data_pipelines.commerce_world.vocabulary import KINDS, KINDS_BY_KEY, RULES_BY_KEY

ORDER_KINDS = ("order", "sold_out", "no_results", "decline")
SCENARIO_KINDS = ORDER_KINDS + ("change", "refund")
DEFAULT_MIX = {"order": 0.45, "sold_out": 0.1, "no_results": 0.1, "decline": 0.1, "change": 0.125, "refund": 0.125}


@dataclass
class Scenario:
    scenario_id: str
    split: str
    kind: str
    lang: str
    style: int  # seeds the user's wording
    next_order_number: int
    item: str = ""  # kind key, e.g. milk_tea
    city: str = ""  # city id
    time: str = ""
    count: int = 0
    budget: int = 0  # the budget the user states first
    raised_budget: int = 0  # no_results: the budget after the assistant reports no options
    revealed: list[str] = field(default_factory=list)  # slots the first message gives
    preferences: list[str] = field(default_factory=list)  # item ids the user accepts, in order
    order_id: str = ""  # change/refund: the existing order
    new_time: str = ""  # change: the time to move it to
    initial_orders: list[dict] = field(default_factory=list)
    stock_overrides: list[list] = field(default_factory=list)

    @property
    def missing_slots(self) -> list[str]:
        return [s for s in SLOTS if s not in self.revealed] if self.kind in ORDER_KINDS else []

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Scenario:
        return cls(**data)


def new_database(scenario: Scenario, catalogue: Catalogue) -> OrderDatabase:
    """The world as the scenario starts: catalogue stock, its overrides and the user's existing orders."""
    return OrderDatabase(catalogue, scenario.lang, scenario.initial_orders, scenario.stock_overrides,
                         scenario.next_order_number)


def expected_final_orders(scenario: Scenario, catalogue: Catalogue) -> list[dict]:
    """The order database a perfect episode ends with, from the goal alone."""
    db = new_database(scenario, catalogue)
    if scenario.kind in ("order", "sold_out", "no_results"):
        item_id = next(p for p in scenario.preferences if db.stock[(p, scenario.time)] >= scenario.count)
        price = catalogue.item_by_id[item_id].price
        db.orders["expected"] = Order("expected", item_id, scenario.time, scenario.count, "confirmed",
                                      price * scenario.count)
    elif scenario.kind == "change":
        db.orders[scenario.order_id].time = scenario.new_time
    elif scenario.kind == "refund":
        order = db.orders[scenario.order_id]
        order.refunded = db.refund_amount(order)
        order.status = "refunded"
    return db.final_orders()


def _round_up(price: int, step: int = 5) -> int:
    return -(-price // step) * step


def _draw_order_goal(rng: random.Random, cat: Catalogue, sc: Scenario) -> bool:
    kind = rng.choice(KINDS)
    city = rng.choice(cat.cities)
    time = rng.choice(kind.times)
    matches = sorted((i for i in cat.items_of(city.city_id, kind.key) if time in i.stock),
                     key=lambda i: (i.price, i.item_id))
    if len(matches) < 2:
        return False
    shown = matches[:3]
    sc.item, sc.city, sc.time = kind.key, city.city_id, time
    sc.count = rng.randint(1, kind.max_count)
    sc.budget = _round_up(shown[-1].price)
    sc.revealed = [s for s in SLOTS if rng.random() < 0.5]
    picks = rng.sample(shown, k=2)
    sc.preferences = [picks[0].item_id]
    if sc.kind == "sold_out":
        sc.preferences.append(picks[1].item_id)
        sc.stock_overrides = [[picks[0].item_id, time, 0]]
    elif sc.kind == "no_results":
        sc.raised_budget = sc.budget
        sc.budget = max(1, shown[0].price - rng.randint(1, 5))
    return True


def _draw_existing_order(rng: random.Random, cat: Catalogue, sc: Scenario) -> None:
    candidates = cat.items if sc.kind == "refund" else [i for i in cat.items if RULES_BY_KEY[i.rule].change_allowed]
    item = rng.choice(candidates)
    old, sc.new_time = rng.sample(item.times, k=2)
    count = rng.randint(1, KINDS_BY_KEY[item.kind].max_count)
    sc.order_id = f"O{rng.randint(1000, 9999)}"
    sc.initial_orders = [asdict(Order(sc.order_id, item.item_id, old, count, "confirmed", item.price * count))]
    if sc.kind == "refund":
        sc.new_time = ""


def draw_scenarios(catalogue: Catalogue, split: str, n: int, seed: int,
                   mix: dict[str, float] | None = None) -> list[Scenario]:
    """`n` scenarios over the entities of `split` only; deterministic in (seed, split)."""
    mix = mix or DEFAULT_MIX
    unknown = set(mix) - set(SCENARIO_KINDS)
    if unknown:
        raise ValueError(f"scenario mix: unknown kinds {sorted(unknown)}; expected {SCENARIO_KINDS}")
    cat = catalogue.in_split(split)
    if not cat.cities:
        raise ValueError(f"split {split!r} has no cities")
    rng = random.Random(f"scenarios-{seed}-{split}")
    kinds = sorted(mix)
    out: list[Scenario] = []
    while len(out) < n:
        kind = rng.choices(kinds, weights=[mix[k] for k in kinds])[0]
        sc = Scenario(scenario_id=f"{split}-{len(out):05d}", split=split, kind=kind, lang=rng.choice(["en", "zh"]),
                      style=rng.randrange(1 << 30), next_order_number=rng.randint(1000, 8999))
        if kind in ORDER_KINDS:
            if not _draw_order_goal(rng, cat, sc):
                continue
        else:
            _draw_existing_order(rng, cat, sc)
        out.append(sc)
    return out
