"""The catalogue: cities, shops and items with prices, time slots, stock and refund rules, split by entity.

Cities are assigned to train/validation/test; shops and items belong to one city, so a held-out city brings
held-out shops and items with it. Shop names and item ids are unique across the whole world.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

from data_pipelines.commerce_world.vocabulary import (
    CATEGORY_SHAPES,
    CITIES,
    COLOURS,
    KINDS,
    KINDS_BY_KEY,
    REFUND_RULES,
    SHOP_ADJECTIVES,
    SHOP_NOUNS,
    Kind,
)

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class City:
    city_id: str
    en: str
    zh: str
    split: str


@dataclass(frozen=True)
class Shop:
    shop_id: str
    city_id: str
    category: str
    en: str
    zh: str
    split: str


@dataclass(frozen=True)
class Item:
    item_id: str
    shop_id: str
    city_id: str
    kind: str
    en: str
    zh: str
    price: int
    stock: dict[str, int]  # time slot -> units in stock
    rule: str
    colour: str
    shape: str
    split: str

    @property
    def times(self) -> list[str]:
        return list(self.stock)


@dataclass
class Catalogue:
    cities: list[City]
    shops: list[Shop]
    items: list[Item]
    city_by_id: dict[str, City] = field(init=False, repr=False)
    shop_by_id: dict[str, Shop] = field(init=False, repr=False)
    item_by_id: dict[str, Item] = field(init=False, repr=False)
    base_stock: dict[tuple[str, str], int] = field(init=False, repr=False)  # (item_id, time) -> units

    def __post_init__(self) -> None:
        self.city_by_id = {c.city_id: c for c in self.cities}
        self.shop_by_id = {s.shop_id: s for s in self.shops}
        self.item_by_id = {i.item_id: i for i in self.items}
        self.base_stock = {(i.item_id, t): n for i in self.items for t, n in i.stock.items()}

    def items_of(self, city_id: str, kind: str) -> list[Item]:
        return [i for i in self.items if i.city_id == city_id and i.kind == kind]

    def in_split(self, split: str) -> Catalogue:
        return Catalogue([c for c in self.cities if c.split == split], [s for s in self.shops if s.split == split],
                         [i for i in self.items if i.split == split])

    def to_json(self) -> dict:
        return {"cities": [asdict(c) for c in self.cities], "shops": [asdict(s) for s in self.shops],
                "items": [asdict(i) for i in self.items]}

    @classmethod
    def from_json(cls, data: dict) -> Catalogue:
        return cls([City(**c) for c in data["cities"]], [Shop(**s) for s in data["shops"]],
                   [Item(**i) for i in data["items"]])


def _split_sizes(n: int, validation: int, test: int) -> list[str]:
    if validation + test >= n:
        raise ValueError(f"validation_cities + test_cities = {validation + test} leaves no training city of {n}")
    return ["validation"] * validation + ["test"] * test + ["train"] * (n - validation - test)


def _draw_item(rng: random.Random, item_id: str, shop: Shop, kind: Kind) -> Item:
    en, zh = rng.choice(kind.names)
    times = sorted(rng.sample(kind.times, k=3))
    lo, hi = kind.price_range
    step = 5 if hi > 100 else 1
    return Item(item_id=item_id, shop_id=shop.shop_id, city_id=shop.city_id, kind=kind.key, en=en, zh=zh,
                price=rng.randrange(lo, hi + 1, step), stock={t: rng.randint(4, 20) for t in times},
                rule=rng.choice(REFUND_RULES).key, colour=rng.choice(sorted(COLOURS)),
                shape=CATEGORY_SHAPES[kind.category], split=shop.split)


def build_catalogue(seed: int, validation_cities: int = 4, test_cities: int = 6,
                    shops_per_category: int = 3) -> Catalogue:
    """Draw the whole catalogue from `seed`; every city gets `shops_per_category` shops of each category."""
    rng = random.Random(f"catalogue-{seed}")
    names = list(CITIES)
    rng.shuffle(names)
    cities = [City(city_id=en, en=en, zh=zh, split=split)
              for (en, zh), split in zip(names, _split_sizes(len(names), validation_cities, test_cities), strict=True)]
    categories = sorted(SHOP_NOUNS)
    shop_names = {cat: [(f"{a} {n}", f"{az}{nz}") for a, az in SHOP_ADJECTIVES for n, nz in SHOP_NOUNS[cat]]
                  for cat in categories}
    needed = len(cities) * shops_per_category
    for cat in categories:
        if needed > len(shop_names[cat]):
            raise ValueError(f"shops_per_category={shops_per_category}: only {len(shop_names[cat])} unique "
                             f"{cat} shop names for {len(cities)} cities")
        rng.shuffle(shop_names[cat])
    kinds_of = {cat: [k for k in KINDS if k.category == cat] for cat in categories}
    n_items = needed * len(KINDS)
    item_ids = [f"I{n:04d}" for n in rng.sample(range(1000, 10000), k=n_items)]
    shops: list[Shop] = []
    items: list[Item] = []
    for c_idx, city in enumerate(cities):
        for cat in categories:
            for s in range(shops_per_category):
                en, zh = shop_names[cat][c_idx * shops_per_category + s]
                shop = Shop(shop_id=f"S{len(shops) + 1:03d}", city_id=city.city_id, category=cat, en=en, zh=zh,
                            split=city.split)
                shops.append(shop)
                for kind in kinds_of[cat]:
                    items.append(_draw_item(rng, item_ids[len(items)], shop, kind))
    return Catalogue(cities, shops, items)


def kind_of(item: Item) -> Kind:
    return KINDS_BY_KEY[item.kind]
