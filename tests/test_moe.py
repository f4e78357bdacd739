"""Mixture of experts: the value-range invariants that let level 2 check
moe.c (an expert number read from memory indexes the weights), the
regrouping of the per-token work per expert, and its script."""
from __future__ import annotations

from typing import Any

from optitrust_py.footprint import function_footprint
from optitrust_py.dependence import value_ranges
from optitrust_py.frontend import parse_file, parse_text
from optitrust_py.resources import check_resources
from optitrust_py.spec import load_contracts, parse_spec_text
from conftest import ROOT


def load_moe() -> tuple[Any, dict[str, Any]]:
    p = parse_file(ROOT / "c_sources" / "moe.c")
    return p, load_contracts(p, str(ROOT / "specs" / "moe.spec"))


def moe_variant(old: str, new: str) -> tuple[Any, dict[str, Any]]:
    """moe.c with one piece of text replaced, under moe.spec."""
    text = (ROOT / "c_sources" / "moe.c").read_text()
    assert old in text
    p = parse_text(text.replace(old, new), "moe_variant.c")
    return p, load_contracts(p, str(ROOT / "specs" / "moe.spec"))


def ranges_text(p: Any, contracts: dict[str, Any]) -> dict[str, str]:
    ranges = value_ranges(function_footprint(p, "moe", contracts))
    from optitrust_py.printer import expr
    return {cell: f"[{expr(lo)}, {expr(hi)})" for cell, (lo, hi) in ranges.items()}


def test_moe_fits_its_contract_with_the_expert_numbers_in_range() -> None:
    p, contracts = load_moe()
    assert ranges_text(p, contracts) == {"best": "[0, E)", "sel": "[0, E)"}
    assert check_resources(p, contracts) == ()


def test_a_store_out_of_range_breaks_the_invariant() -> None:
    p, contracts = moe_variant("sel[s] = best;", "sel[s] = best + 1;")
    assert ranges_text(p, contracts) == {"best": "[0, E)"}
    problems = check_resources(p, contracts)
    assert len(problems) == 3 and all("sel[s]" in x and "may be out of bounds" in x for x in problems)
    p, contracts = moe_variant("best = e;", "best = e + 1;")
    assert ranges_text(p, contracts) == {}
    assert any("'used[best]' may be out of bounds" in x for x in check_resources(p, contracts))


def test_an_update_or_an_escape_gives_no_range() -> None:
    p, contracts = moe_variant("used[best] = 1;", "used[best] = 1;\n      sel[s]++;")
    assert "sel" not in ranges_text(p, contracts)
    p, contracts = moe_variant("free(sel);", "sel[0] = *(sel + 1);\n  free(sel);")
    assert "sel" not in ranges_text(p, contracts)
    p, contracts = moe_variant("int best = 0;", "int best = 0;\n      int *alias = &best;\n      *alias = E;")
    assert "best" not in ranges_text(p, contracts)
