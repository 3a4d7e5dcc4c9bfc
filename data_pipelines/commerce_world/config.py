"""The generator's typed settings, read from `key=value` arguments (bad keys and types fail by name)."""

from __future__ import annotations

from dataclasses import MISSING as NO_DEFAULT
from dataclasses import asdict, dataclass, fields

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException


@dataclass
class WorldConfig:
    out: str = MISSING  # the world folder to write
    seed: int = 0
    # About what the demo's fine-tuning reads (1000 steps of 16 rows, 80% dialogs), so it sees each dialog about
    # once: with 3000 it saw each 4-5 times and could learn a dialog's ids by heart instead of copying them.
    train_dialogs: int = 12000
    validation_dialogs: int = 200
    test_scenarios: int = 100
    image_size: int = 64
    validation_cities: int = 4
    test_cities: int = 6
    shops_per_category: int = 3
    pretrain_records: int = 6000  # order records in pretrain/text_train.jsonl (a tenth in validation)
    overwrite: bool = False  # replace an existing world made with different settings

    def content_key(self) -> dict:
        """The settings that decide the files (not where they go or whether to overwrite)."""
        return {k: v for k, v in asdict(self).items() if k not in ("out", "overwrite")}


def usage() -> str:
    """`--help`: every setting with its type and default."""
    lines = ["usage: python -m data_pipelines.commerce_world out=DIR [key=value ...]", "", "settings:"]
    for f in fields(WorldConfig):
        default = "required" if f.default in (NO_DEFAULT, MISSING) else f"default {f.default}"
        lines.append(f"  {f.name}=<{f.type if isinstance(f.type, str) else f.type.__name__}>  ({default})")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> WorldConfig:
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(WorldConfig), OmegaConf.from_dotlist(argv))
        world = WorldConfig(**OmegaConf.to_container(cfg, throw_on_missing=True))
    except OmegaConfBaseException as e:
        raise ValueError(f"commerce_world arguments {argv}: {e}".replace("\n", " ")) from None
    for key in ("train_dialogs", "validation_dialogs", "test_scenarios"):
        if getattr(world, key) < 1:
            raise ValueError(f"{key}={getattr(world, key)}: must be at least 1")
    if not 32 <= world.image_size <= 512:
        raise ValueError(f"image_size={world.image_size}: expected 32..512 pixels")
    return world
