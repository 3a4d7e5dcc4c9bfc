"""The export entry config composes, and bad values fail naming the key before any work."""

from __future__ import annotations

import pytest

from tests.conftest import compose
from train.config import validate_export


def test_export_config_composes_with_defaults(tmp_path):
    cfg = compose([f"checkpoint={tmp_path}", "out=exports/x"], config_name="export")
    validate_export(cfg)
    assert cfg.export.dtype == "bfloat16" and cfg.verify is False


@pytest.mark.parametrize("override, message", [
    ("export.dtype=int8", "export.dtype='int8' is not one of"),
    ("export.max_shard_size_mb=0", "export.max_shard_size_mb=0 must be >= 1"),
])
def test_bad_export_values_name_the_key(tmp_path, override, message):
    cfg = compose([f"checkpoint={tmp_path}", "out=exports/x", override], config_name="export")
    with pytest.raises(ValueError, match=message):
        validate_export(cfg)


def test_missing_checkpoint_dir_is_named():
    cfg = compose(["checkpoint=/no/such/ckpt", "out=exports/x"], config_name="export")
    with pytest.raises(ValueError, match="checkpoint='/no/such/ckpt': no such directory"):
        validate_export(cfg)
