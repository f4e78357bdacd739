"""Targets: naming places in real code, and the errors when a name is wrong."""
from __future__ import annotations

from pathlib import Path

import pytest

from optitrust_py import ir
from optitrust_py.errors import TargetError
from optitrust_py.frontend import parse_file
from optitrust_py.target import Match, Point, Resolver, parse
from optitrust_py.tree import get

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def attention() -> Resolver:
    return Resolver(parse_file(ROOT / "c_sources" / "attention.c"))


def test_nested_loop_target(attention: Resolver) -> None:
    m = attention.one("attention > for h > for i", "loop", (ir.For,))
    assert isinstance(m.node, ir.For) and m.node.index == "i" and m.line == 7
    assert get(attention.program, m.path) is m.node


def test_occurrence_picks_the_nth_match(attention: Resolver) -> None:
    loops = attention.matches("attention > for i > for j")
    assert len(loops) == 5
    third = attention.one("attention > for j#3")
    assert isinstance(third, Match) and third.line == loops[2].line


def test_call_def_expr_and_instr_targets(attention: Resolver) -> None:
    assert attention.one("attention > call expf").node.name == "expf"
    assert attention.one("attention > def max_val").node.decl.name == "max_val"
    e = attention.one("attention > expr 'sqrtf(D)'").node
    assert isinstance(e, ir.Call)
    s = attention.one("attention > 'sum += scores[j]'").node
    assert isinstance(s, ir.ExprStmt)
    loop = attention.one("attention > instr 'for (int d'#1").node
    assert isinstance(loop, ir.For) and loop.index == "d"


def test_before_and_after_points(attention: Resolver) -> None:
    p = attention.point("attention > for i > after def max_val")
    q = attention.point("attention > for i > before def max_val")
    assert isinstance(p, Point) and p.index == q.index + 1 and p.block == q.block


def test_no_match_lists_candidates_with_lines(attention: Resolver) -> None:
    with pytest.raises(TargetError) as e:
        attention.matches("attention > for q")
    msg = str(e.value)
    assert "for q matches nothing in attention" in msg
    assert "line    6: for h" in msg and "line    7: for i" in msg


def test_too_many_matches_is_an_error(attention: Resolver) -> None:
    with pytest.raises(TargetError) as e:
        attention.one("attention > for j")
    assert "matches 5 places, expected one" in str(e.value) and "add #N" in str(e.value)


def test_occurrence_out_of_range(attention: Resolver) -> None:
    with pytest.raises(TargetError) as e:
        attention.one("attention > for i > for j#9")
    assert "only 5 matches" in str(e.value)


def test_unknown_function_lists_functions() -> None:
    r = Resolver(parse_file(ROOT / "c_sources" / "transformer.c"))
    with pytest.raises(TargetError) as e:
        r.one("transformer > for l")
    assert "no function 'transformer'" in str(e.value) and "transformer_token" in str(e.value)


def test_kind_mismatch_is_reported(attention: Resolver) -> None:
    with pytest.raises(TargetError) as e:
        attention.one("attention > call expf", "loop", (ir.For,))
    assert "must name a loop" in str(e.value)


def test_point_required(attention: Resolver) -> None:
    with pytest.raises(TargetError) as e:
        attention.point("attention > def sum")
    assert "must name a point" in str(e.value)


@pytest.mark.parametrize("bad, words", [
    ("", "non-empty"),
    ("for i", "starts with a function name"),
    ("attention > matmul", "only the first component names a function"),
    ("attention > before for i > for j", "may only start the last component"),
    ("attention > for j#0", "count from 1"),
    ("attention > expr sqrtf", "takes a quoted text"),
    ("attention > for 'i'", "takes a name"),
    ("attention > for i j", "cannot read target component"),
    ("attention > for h > param q", "a parameter is named right after its function, alone"),
    ("attention > param q > for h", "a parameter is named right after its function, alone"),
    ("attention > after param q", "a parameter is named right after its function, alone"),
    ("attention > param 'q'", "takes a name"),
])
def test_malformed_targets(bad: str, words: str) -> None:
    with pytest.raises(TargetError) as e:
        parse(bad)
    assert words in str(e.value)


def test_a_function_where_a_loop_is_expected_is_listed(attention: Resolver) -> None:
    with pytest.raises(TargetError) as info:
        attention.one("attention", "loop", (ir.For,))
    assert "'attention' must name a loop; candidates:" in info.value.message
    assert "function attention" in info.value.message


def test_param_names_a_parameter_declaration(attention: Resolver) -> None:
    m = attention.one("attention > param k", "parameter", (ir.Decl,))
    assert m.node.name == "k" and get(attention.program, m.path) is m.node
    assert m.path[-1] == ("params", 4) and m.line == attention.one("attention").line  # the header's line
    with pytest.raises(TargetError) as info:
        attention.one("attention > param scores")
    assert "param scores matches nothing in attention; candidates:" in info.value.message
    assert "param q" in info.value.message and "param out" in info.value.message
    assert "def scores" not in info.value.message  # a local is not a parameter
