"""docs/bad_input.md stays true: every row names a test that exists (or says pending), and README links it."""

from __future__ import annotations

import re

from tests.conftest import ROOT


def _rows() -> list[list[str]]:
    lines = (ROOT / "docs" / "bad_input.md").read_text().splitlines()
    return [[c.strip() for c in x.strip("|").split("|")] for x in lines if x.startswith("| ") and "---" not in x][1:]


def test_every_row_names_an_existing_test_or_is_pending():
    rows = _rows()
    assert len(rows) >= 25
    for input_, _, proof in rows:
        if proof == "pending":
            assert "pending" in _[:8], input_
            continue
        path, name = re.fullmatch(r"`(tests/[\w/]+\.py)::(test_\w+)`", proof).groups()
        assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M), f"{proof} ({input_})"


def test_readme_links_the_table():
    assert "docs/bad_input.md" in (ROOT / "README.md").read_text()
