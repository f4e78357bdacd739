"""The contract language: parsing spec files and in-source clauses, precise
error locations, evaluation of formulas, and checking against C functions."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from optitrust_py import ir
from optitrust_py.contract import (Binder, LoopContract, Resource, Shape, c_div, c_mod,
                                   evaluate)
from optitrust_py.errors import SpecError
from optitrust_py.frontend import parse_file, parse_text
from optitrust_py.ir import Binop, Call, Const, Index, Unop, Var
from optitrust_py.spec import (check_contract, contract_from_clauses, load_contracts, loop_contract,
                               parse_formula, parse_resource, parse_spec_file, parse_spec_text)

ROOT = Path(__file__).resolve().parent.parent


def spec(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def spec_error(text: str, filename: str = "specs/x.spec") -> str:
    with pytest.raises(SpecError) as info:
        parse_spec_text(spec(text), filename)
    return str(info.value)


def n(i: int) -> Const:
    return Const(str(i))


def v(name: str) -> Var:
    return Var(name)


def matrix(*dims: ir.Expr) -> Shape:
    return Shape("matrix", tuple(dims))


H, S, D = v("H"), v("S"), v("D")

ATTENTION_C = """\
#include <math.h>
void attention(int H, int S, int D, const float *q, const float *k,
               const float *v, float *out) {
  out[0] = q[0] + k[0] + v[0];
}
void scale(int N, float a, float *x) {
  for (int i = 0; i < N; i++) {
    x[i] = a * x[i];
  }
}
"""

MULTI = """
# attention, then a helper; blank lines and comments anywhere

attention(H, S, D, q, k, v, out):
  requires H >= 1, S >= 1, D >= 1,   # continued below
           S % 64 == 0
  reads    q ~> Matrix3(H, S, D), k ~> Matrix3(H, S, D),

           v ~> Matrix3(H, S, D)
  writes   out ~> Matrix3(H, S, D)
  ensures  out == causal_attention(q, k, v)
# a second block
scale(N, a, x):
  requires 1 <= N
  requires N % 8 == 0
  modifies for i in 0..N -> &x[i] ~> Cell
"""


# ----------------------------------------------------------------- parsing


def test_realistic_multi_function_spec() -> None:
    contracts = parse_spec_text(spec(MULTI), "specs/attention.spec")
    assert list(contracts) == ["attention", "scale"]
    att = contracts["attention"]
    assert att.function == "attention"
    assert att.params == ("H", "S", "D", "q", "k", "v", "out")
    assert att.requires == (Binop(">=", H, n(1)), Binop(">=", S, n(1)), Binop(">=", D, n(1)),
                            Binop("==", Binop("%", S, n(64)), n(0)))
    m3 = matrix(H, S, D)
    assert att.reads == (Resource(v("q"), m3), Resource(v("k"), m3), Resource(v("v"), m3))
    assert att.writes == (Resource(v("out"), m3),)
    assert att.modifies == ()
    assert att.ensures == (Binop("==", v("out"), Call(v("causal_attention"), (v("q"), v("k"), v("v")))),)
    assert att.loc == ir.Loc("specs/attention.spec", 3, 1)
    assert att.reads[2].loc == ir.Loc("specs/attention.spec", 8, 12)

    sc = contracts["scale"]
    # the same keyword twice: items accumulate
    assert sc.requires == (Binop("<=", n(1), v("N")), Binop("==", Binop("%", v("N"), n(8)), n(0)))
    x_i = Unop("&", Index(v("x"), v("i")))
    assert sc.modifies == (Resource(x_i, Shape("cell"), (Binder("i", n(0), v("N")),)),)


def test_contract_queries() -> None:
    contracts = parse_spec_text(spec(MULTI), "specs/attention.spec")
    att, sc = contracts["attention"], contracts["scale"]
    assert att.resource_of("k") == Resource(v("k"), matrix(H, S, D))
    assert att.resource_of("H") is None
    assert [att.mode_of(p) for p in att.params] == [None] * 3 + ["reads"] * 3 + ["writes"]
    assert att.outputs() == ("out",)
    assert att.inputs() == ("q", "k", "v")
    assert sc.mode_of("x") == "modifies"
    assert sc.resource_of("x").base == "x"  # type: ignore[union-attr]
    assert sc.outputs() == ("x",) and sc.inputs() == ("x",)


def test_contract_prints_back_in_spec_syntax() -> None:
    contracts = parse_spec_text(spec(MULTI), "specs/attention.spec")
    text = "".join(str(c) for c in contracts.values())
    assert "  modifies for i in 0..N -> &x[i] ~> Cell\n" in text
    assert parse_spec_text(text, "again.spec") == contracts


def test_contracts_are_immutable() -> None:
    c = parse_spec_text("f(n):\n  requires n > 0\n", "f.spec")["f"]
    with pytest.raises(AttributeError):
        c.requires = ()  # type: ignore[misc]


def test_comparison_chain_is_a_conjunction() -> None:
    c = parse_spec_text("f(pos, SMAX):\n  requires 0 <= pos < SMAX, 1 <= pos <= SMAX - 1 < 99\n", "f.spec")["f"]
    pos, smax = v("pos"), v("SMAX")
    assert c.requires[0] == Binop("&&", Binop("<=", n(0), pos), Binop("<", pos, smax))
    assert c.requires[1] == Binop("&&", Binop("&&", Binop("<=", n(1), pos),
                                                  Binop("<=", pos, Binop("-", smax, n(1)))),
                                  Binop("<", Binop("-", smax, n(1)), n(99)))
    # locations point at each operator
    assert c.requires[0].left.loc == ir.Loc("f.spec", 2, 14)
    assert c.requires[0].right.loc == ir.Loc("f.spec", 2, 21)


def test_formula_precedence_follows_c() -> None:
    a, b, c_ = v("a"), v("b"), v("c")
    assert parse_formula("a + b * c") == Binop("+", a, Binop("*", b, c_))
    assert parse_formula("a - b - c") == Binop("-", Binop("-", a, b), c_)
    assert parse_formula("(a - b) % c") == Binop("%", Binop("-", a, b), c_)
    assert parse_formula("a || b && !c") == Binop("||", a, Binop("&&", b, Unop("!", c_)))
    assert parse_formula("a < b == (c > 0)") == Binop("==", Binop("<", a, b), Binop(">", c_, n(0)))
    assert parse_formula("-a * 2 != 0x10") == Binop("!=", Binop("*", Unop("-", a), n(2)), Const("0x10"))
    assert parse_formula("&A[i * n + j]") == Unop("&", Index(v("A"), Binop("+", Binop("*", v("i"), v("n")), v("j"))))
    assert parse_formula("A[i][j] + f() + g(a, b[0])") == Binop(
        "+", Binop("+", Index(Index(v("A"), v("i")), v("j")), Call(v("f"), ())),
        Call(v("g"), (a, Index(b, n(0)))))


def test_groups_nest_and_may_use_outer_indices() -> None:
    r = parse_resource("for i in 0..M -> for j in i..N + 1 -> &A[i][j] ~> Cell")
    assert r.group == (Binder("i", n(0), v("M")), Binder("j", v("i"), Binop("+", v("N"), n(1))))
    assert r.subject == Unop("&", Index(Index(v("A"), v("i")), v("j")))
    assert r.shape == Shape("cell") and r.base == "A"
    rows = parse_resource("for h in 0..H -> &q[h * S * D] ~> Matrix2(S, D)")
    assert rows.shape == matrix(S, D) and rows.group[0].index == "h"
    assert parse_resource("x ~> Matrix1(N)") == Resource(v("x"), matrix(v("N")))


def test_shape_size() -> None:
    assert matrix(H, S, D).size({"H": 2, "S": 3, "D": 4}) == 24
    assert Shape("cell").size({}) == 1


# ----------------------------------------------------------------- spec errors


def test_error_missing_comma() -> None:
    assert spec_error("""
        f(q, H):
          reads q ~> Matrix1(H) Matrix3
        """) == "specs/x.spec:2:25: error: expected ',' or end of clause, found 'Matrix3'"


def test_error_missing_comma_between_lines() -> None:
    assert spec_error("""
        f(q, k, N):
          reads q ~> Matrix1(N)
                k ~> Matrix1(N)
        """) == ("specs/x.spec:3:9: error: expected ',' or end of clause, found 'k' "
                 "(a clause continues on lines indented more than its keyword)")
    assert spec_error("""
        f(x, N):
          requires N >= 1
            reads x ~> Matrix1(N)
        """) == ("specs/x.spec:3:5: error: expected ',' or end of clause, found 'reads' "
                 "(a clause continues on lines indented more than its keyword)")


def test_error_unknown_clause() -> None:
    assert spec_error("""
        f(q, N):
          read q ~> Matrix1(N)
        """) == ("specs/x.spec:2:3: error: unknown clause 'read' "
                 "(expected requires, reads, writes, modifies, ensures)")


def test_error_matrix_arity() -> None:
    assert spec_error("""
        f(q, N, M):
          requires N >= 1
          writes   q ~> Matrix2(N, M, 4)
        """) == "specs/x.spec:3:17: error: Matrix2 takes 2 dimensions, got 3"
    assert spec_error("f(q, N):\n  reads q ~> Matrix3(N)\n") == \
        "specs/x.spec:2:14: error: Matrix3 takes 3 dimensions, got 1"


def test_error_shapes() -> None:
    assert spec_error("f(q):\n  reads q ~> Matrx2(1, 2)\n") == \
        "specs/x.spec:2:14: error: unknown shape 'Matrx2' (expected Cell or MatrixN(d1, ..., dN))"
    assert spec_error("f(q):\n  reads q ~> Matrix(4)\n") == \
        "specs/x.spec:2:14: error: 'Matrix' needs its number of dimensions N >= 1, as in Matrix2(N, M)"
    assert spec_error("f(q):\n  reads q ~> Cell(4)\n") == "specs/x.spec:2:18: error: Cell takes no dimensions"
    assert spec_error("f(q):\n  reads q ~> 3\n") == \
        "specs/x.spec:2:14: error: expected a shape (Cell or MatrixN(d1, ..., dN)), found '3'"
    assert spec_error("f(q, N):\n  reads q ~> Matrix2(N N)\n") == \
        "specs/x.spec:2:24: error: expected ',' or ')' in the dimensions of Matrix2, found 'N'"


def test_error_resource_syntax() -> None:
    assert spec_error("f(q, N):\n  reads q Matrix1(N)\n") == \
        "specs/x.spec:2:11: error: expected '~>' after 'q', found 'Matrix1'"
    assert spec_error("f(q, N):\n  reads q + 1 ~> Cell\n") == \
        "specs/x.spec:2:11: error: expected '~>' after 'q', found '+'"
    assert spec_error("f(q, N):\n  reads q[0] ~> Cell\n") == \
        "specs/x.spec:2:9: error: expected a name or an address like '&A[i]' before '~>', found 'q[0]'"
    assert spec_error("f(q, N):\n  reads for i in 0 .. N &q[i] ~> Cell\n") == \
        "specs/x.spec:2:25: error: expected '->' after 'for i in 0..N', found '&'"
    assert spec_error("f(q, N):\n  reads for i in 0, N -> &q[i] ~> Cell\n") == \
        "specs/x.spec:2:19: error: expected '..' in 'for i in a..b', found ','"
    assert spec_error("f(q, N):\n  reads for i of 0..N -> &q[i] ~> Cell\n") == \
        "specs/x.spec:2:15: error: expected 'in' after 'for i', found 'of'"
    assert spec_error("f(q, N):\n  reads for 1 in 0..N -> &q[i] ~> Cell\n") == \
        "specs/x.spec:2:13: error: expected a group index name after 'for', found '1'"
    assert spec_error("f(q, N):\n  reads for i in 0..N -> for i in 0..N -> &q[i] ~> Cell\n") == \
        "specs/x.spec:2:30: error: group index 'i' is already bound by an enclosing group"


def test_error_formula_syntax() -> None:
    assert spec_error("f(N):\n  requires (N + 1 >= 2\n") == \
        "specs/x.spec:2:23: error: expected ')' to close the '(' at 2:12, found end of clause"
    assert spec_error("f(N):\n  requires N >= \n") == \
        "specs/x.spec:2:16: error: expected an expression, found end of clause"
    assert spec_error("f(N):\n  requires N >= 1 @ 2\n") == "specs/x.spec:2:19: error: unexpected character '@'"
    assert spec_error("f(N):\n  requires N >= 64u\n") == \
        ("specs/x.spec:2:17: error: bad integer literal '64u' "
         "(integers are decimal or 0x hexadecimal, without suffix)")
    assert spec_error("f(N):\n  requires N >= 010\n") == \
        "specs/x.spec:2:17: error: bad integer literal '010' (octal is not supported)"
    assert spec_error("f(N):\n  requires g(N, 1\n") == \
        "specs/x.spec:2:18: error: expected ',' or ')' in the arguments of 'g', found end of clause"
    assert spec_error("f(N):\n  requires A[N > 0\n") == \
        "specs/x.spec:2:19: error: expected ']' to close the index, found end of clause"
    assert spec_error("f(N):\n  requires\n") == "specs/x.spec:2:11: error: expected a formula, found end of clause"


def test_error_continuation_not_indented_enough() -> None:
    assert spec_error("""
        f(N, M):
          requires N >= 1,
          M >= 1
        """) == ("specs/x.spec:2:19: error: expected a formula, found end of clause "
                 "(a clause continues on lines indented more than its keyword)")


def test_error_layout_and_header() -> None:
    assert spec_error("# no header yet\n  requires N >= 1\n") == \
        "specs/x.spec:2:3: error: expected a function header 'name(params):' at column 1, found indented 'requires'"
    assert spec_error("f(N)\n  requires N >= 1\n") == \
        "specs/x.spec:2:3: error: expected ':' after the parameter list, found 'requires'"
    assert spec_error("f(N, M\n") == \
        "specs/x.spec:1:7: error: expected ',' or ')' in the parameter list, found end of file"
    assert spec_error("f N:\n") == \
        "specs/x.spec:1:3: error: expected '(' after 'f' in the header 'name(params):', found 'N'"
    assert spec_error("f(N, 2):\n") == "specs/x.spec:1:6: error: expected a parameter name, found '2'"
    assert spec_error("f(N M):\n") == "specs/x.spec:1:5: error: expected ',' or ')' in the parameter list, found 'M'"
    assert spec_error("f(N, N):\n") == "specs/x.spec:1:6: error: parameter 'N' appears twice in the header of 'f'"
    assert spec_error("f(N): requires N >= 1\n") == \
        "specs/x.spec:1:7: error: expected a new line after the header of 'f', found 'requires'"
    assert spec_error("f(N):\n  requires N >= 1\n\n# again\nf(N):\n") == \
        "specs/x.spec:5:1: error: second contract for 'f' (the first is at line 1)"
    assert spec_error("f(N):\n  , N >= 1\n") == \
        ("specs/x.spec:2:3: error: expected a clause keyword, found ',' "
         "(expected requires, reads, writes, modifies, ensures)")


def test_header_may_span_lines_and_have_no_clause() -> None:
    c = parse_spec_text("f(a,\n  b, c):\ng():\n", "f.spec")
    assert c["f"].params == ("a", "b", "c") and c["g"].params == ()
    assert c["f"].param_locs[1] == ir.Loc("f.spec", 2, 3)


def test_spec_file_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope.spec"
    with pytest.raises(SpecError) as info:
        parse_spec_file(missing)
    assert str(info.value).startswith(f"error: cannot read spec file {missing}: ")
    good = tmp_path / "f.spec"
    good.write_text("f(N):\n  requires N >= 1\n")
    assert parse_spec_file(good)["f"].requires[0].loc == ir.Loc(str(good), 2, 14)


# ----------------------------------------------------------------- evaluate


def test_evaluate_c_semantics() -> None:
    env = {"a": -7, "b": 2, "z": 0}
    assert evaluate(parse_formula("a / b"), env) == -3       # truncation, not floor (-4)
    assert evaluate(parse_formula("a % b"), env) == -1       # sign of the dividend
    assert evaluate(parse_formula("7 / -2"), env) == -3
    assert evaluate(parse_formula("7 % -2"), env) == 1
    assert evaluate(parse_formula("-7 / -2"), env) == 3
    assert evaluate(parse_formula("-a * b + 1"), env) == 15
    assert evaluate(parse_formula("0 <= b < 3"), env) == 1
    assert evaluate(parse_formula("0 <= a < 3"), env) == 0
    assert evaluate(parse_formula("!z && (b == 2 || unknown)"), env) == 1   # short-circuit
    assert evaluate(parse_formula("z != 0 || b > 5"), env) == 0
    assert evaluate(parse_formula("0x10 + 1"), env) == 17
    for x in range(-9, 10):
        for y in (-4, -3, 3, 4):
            assert y * c_div(x, y) + c_mod(x, y) == x and abs(c_mod(x, y)) < abs(y)


def test_evaluate_requires_and_shapes_of_a_spec() -> None:
    att = parse_spec_text(spec(MULTI), "a.spec")["attention"]
    sizes = {"H": 2, "S": 128, "D": 16}
    assert all(evaluate(r, sizes) == 1 for r in att.requires)
    assert evaluate(att.requires[3], {**sizes, "S": 100}) == 0
    assert att.reads[0].shape.size(sizes) == 2 * 128 * 16


def test_evaluate_errors() -> None:
    with pytest.raises(SpecError) as info:
        evaluate(parse_spec_text("f(N):\n  requires N * M >= 1\n", "f.spec")["f"].requires[0], {"N": 3})
    assert str(info.value) == "f.spec:2:16: error: unknown name 'M' in formula (known: N)"
    with pytest.raises(SpecError) as info:
        evaluate(parse_spec_text("f(N):\n  requires N / (N - 3) >= 1\n", "f.spec")["f"].requires[0], {"N": 3})
    assert str(info.value) == "f.spec:2:14: error: division by zero in 'N / (N - 3)'"
    with pytest.raises(SpecError, match="cannot evaluate 'g\\(1\\)'"):
        evaluate(parse_formula("g(1) + 1"), {})


# ----------------------------------------------------------------- in-source clauses

IN_SOURCE_C = """\
#include <otp.h>
void scale(int N, float a, float *x) {
  __requires("N >= 1, N % 32 == 0"); __reads("x ~> Matrix1(N)");
  for (int i = 0; i < N; i++) {
    __xmodifies("&x[i] ~> Cell");
    __sreads("x ~> Matrix1(N)");
    x[i] = a * x[i];
  }
}
"""


def test_in_source_clauses() -> None:
    prog = parse_text(IN_SOURCE_C, "scale.c")
    f = prog.function("scale")
    assert f is not None
    c = contract_from_clauses(f)
    assert c is not None
    assert c.function == "scale" and c.params == ("N", "a", "x")
    assert c.requires == (Binop(">=", v("N"), n(1)), Binop("==", Binop("%", v("N"), n(32)), n(0)))
    assert c.reads == (Resource(v("x"), matrix(v("N"))),)
    # locations are columns in the C file, inside the string literal
    assert c.requires[1].left.left.loc == ir.Loc("scale.c", 3, 23)
    assert c.reads[0].loc == ir.Loc("scale.c", 3, 47)
    check_contract(c, f)
    loop = f.body.stmts[0]
    assert isinstance(loop, ir.For)
    lc = loop_contract(loop.contract)
    assert lc == LoopContract(xmodifies=(Resource(Unop("&", Index(v("x"), v("i"))), Shape("cell")),),
                              sreads=(Resource(v("x"), matrix(v("N"))),))
    assert loop_contract(()) == LoopContract() and LoopContract().is_empty()
    assert load_contracts(prog, None) == {"scale": c}


def test_in_source_without_clauses_is_none() -> None:
    f = parse_text(ATTENTION_C, "a.c").function("scale")
    assert f is not None and contract_from_clauses(f) is None


def test_in_source_error_points_into_the_c_line() -> None:
    src = IN_SOURCE_C.replace('__reads("x ~> Matrix1(N)")', '__reads("x ~> Matrix2(N)")')
    f = parse_text(src, "scale.c").function("scale")
    assert f is not None
    with pytest.raises(SpecError) as info:
        contract_from_clauses(f)
    assert str(info.value) == "scale.c:3:52: error: Matrix2 takes 2 dimensions, got 1"
    src = IN_SOURCE_C.replace('"N >= 1, N % 32 == 0"', '"N >= 1 N % 32 == 0"')
    f = parse_text(src, "scale.c").function("scale")
    assert f is not None
    with pytest.raises(SpecError) as info:
        contract_from_clauses(f)
    assert str(info.value) == "scale.c:3:22: error: expected ',' or end of clause, found 'N'"


def test_loop_clause_errors() -> None:
    src = IN_SOURCE_C.replace('__xmodifies("&x[i] ~> Cell")', '__xmodifies("x[i] ~> Cell")')
    loop = parse_text(src, "scale.c").functions()[0].body.stmts[0]
    assert isinstance(loop, ir.For)
    with pytest.raises(SpecError) as info:
        loop_contract(loop.contract)
    assert str(info.value) == \
        "scale.c:5:18: error: expected a name or an address like '&A[i]' before '~>', found 'x[i]'"
    with pytest.raises(SpecError, match="__reads is not a loop clause"):
        loop_contract((ir.ContractClause("reads", "x ~> Cell"),))


# ----------------------------------------------------------------- check_contract


def attention_fn() -> ir.FuncDef:
    f = parse_text(ATTENTION_C, "attention.c").function("attention")
    assert f is not None
    return f


def check_error(text: str) -> str:
    c = parse_spec_text(spec(text), "specs/x.spec")["attention"]
    with pytest.raises(SpecError) as info:
        check_contract(c, attention_fn())
    return str(info.value)


def test_check_accepts_the_attention_contract() -> None:
    check_contract(parse_spec_text(spec(MULTI), "a.spec")["attention"], attention_fn())


def test_check_header_arity() -> None:
    assert check_error("attention(H, S, D, q, k, v):\n") == (
        "specs/x.spec:1:1: error: 'attention' has 7 parameters in the C file but 6 in the spec header: "
        "spec (H, S, D, q, k, v), C (H, S, D, q, k, v, out)")


def test_check_header_name() -> None:
    assert check_error("attention(H, S, D, Q, k, v, out):\n") == (
        "specs/x.spec:1:20: error: parameter 4 of 'attention' is 'Q' in the spec header but 'q' in the C file: "
        "spec (H, S, D, Q, k, v, out), C (H, S, D, q, k, v, out)")


def test_check_unknown_parameter() -> None:
    assert check_error("""
        attention(H, S, D, q, k, v, out):
          requires H >= 1, Q >= 1
        """) == "specs/x.spec:2:20: error: unknown parameter 'Q' in requires (parameters: H, S, D, q, k, v, out)"
    assert check_error("""
        attention(H, S, D, q, k, v, out):
          reads q ~> Matrix3(H, S, N)
        """) == ("specs/x.spec:2:28: error: unknown parameter 'N' in the shape of 'q' in reads "
                 "(parameters: H, S, D, q, k, v, out)")
    assert check_error("""
        attention(H, S, D, q, k, v, out):
          writes for i in 0..H -> &out[j] ~> Cell
        """) == ("specs/x.spec:2:32: error: unknown parameter 'j' in writes "
                 "(parameters: H, S, D, q, k, v, out; group indices here: i)")
    assert check_error("""
        attention(H, S, D, q, k, v, out):
          reads Q ~> Cell
        """) == "specs/x.spec:2:9: error: unknown parameter 'Q' in reads (parameters: H, S, D, q, k, v, out)"
    assert check_error("""
        attention(H, S, D, q, k, v, out):
          ensures out == model(q, x)
        """) == "specs/x.spec:2:27: error: unknown parameter 'x' in ensures (parameters: H, S, D, q, k, v, out)"


def test_check_group_indices_are_in_scope() -> None:
    check_contract(parse_spec_text(spec("""
        attention(H, S, D, q, k, v, out):
          reads for h in 0..H -> for i in 0..S -> &q[(h * S + i) * D] ~> Matrix1(D)
          writes for h in 0..H -> &out[h * S * D] ~> Matrix2(S, D + h - h)
        """), "x.spec")["attention"], attention_fn())
    assert check_error("""
        attention(H, S, D, q, k, v, out):
          writes for H in 0..S -> &out[H] ~> Cell
        """) == "specs/x.spec:2:14: error: group index 'H' in writes shadows the parameter 'H'"


def test_check_formula_kinds() -> None:
    assert check_error("""
        attention(H, S, D, q, k, v, out):
          requires q >= 1
        """) == ("specs/x.spec:2:12: error: 'q' in requires is a parameter of type 'const float *'; "
                 "requires may only use integer parameters")
    assert check_error("""
        attention(H, S, D, q, k, v, out):
          requires is_pow2(S)
        """) == ("specs/x.spec:2:12: error: 'is_pow2(S)' is not allowed in requires: it must be an integer "
                 "formula over integer parameters")


def test_check_subject_must_be_a_pointer() -> None:
    assert check_error("""
        attention(H, S, D, q, k, v, out):
          reads q ~> Matrix3(H, S, D), H ~> Cell
        """) == "specs/x.spec:2:32: error: 'H' in reads is not a pointer or array parameter (it is declared 'int')"


def test_check_one_mode_per_parameter() -> None:
    assert check_error("""
        attention(H, S, D, q, k, v, out):
          reads  q ~> Matrix3(H, S, D), out ~> Matrix3(H, S, D)
          writes out ~> Matrix3(H, S, D)
        """) == ("specs/x.spec:3:10: error: 'out' is in both reads and writes; a parameter may be in only one of "
                 "reads, writes, modifies (use modifies to read and write it)")
    # the same mode twice (two disjoint parts) is fine
    check_contract(parse_spec_text(spec("""
        attention(H, S, D, q, k, v, out):
          writes &out[0] ~> Cell, for i in 1..H * S * D -> &out[i] ~> Cell
        """), "x.spec")["attention"], attention_fn())


def test_check_void_function() -> None:
    f = parse_text("int zero(void) { return 0; }\n", "z.c").function("zero")
    assert f is not None
    check_contract(parse_spec_text("zero():\n", "z.spec")["zero"], f)


# ----------------------------------------------------------------- load_contracts


def test_load_contracts_spec_plus_in_source(tmp_path: Path) -> None:
    spec_file = tmp_path / "attention.spec"
    spec_file.write_text(spec(MULTI).split("# a second block")[0])
    src = ATTENTION_C.replace('#include <math.h>', '#include <math.h>\n#include <otp.h>').replace(
        "float *x) {\n", 'float *x) {\n  __modifies("x ~> Matrix1(N)");\n')
    prog = parse_text(src, "attention.c")
    contracts = load_contracts(prog, str(spec_file))
    assert list(contracts) == ["attention", "scale"]
    assert contracts["scale"].modifies == (Resource(v("x"), matrix(v("N"))),)
    assert contracts["attention"] == parse_spec_file(spec_file)["attention"]


def test_load_contracts_unknown_function(tmp_path: Path) -> None:
    spec_file = tmp_path / "x.spec"
    spec_file.write_text("scale(N, a, x):\n  modifies x ~> Matrix1(N)\n\nmatmul(M, N, K, A, B, C):\n")
    with pytest.raises(SpecError) as info:
        load_contracts(parse_text(ATTENTION_C, "attention.c"), str(spec_file))
    assert str(info.value) == (f"{spec_file}:4:1: error: contract for 'matmul' but attention.c has no "
                               "function 'matmul' (its functions: attention, scale)")


def test_load_contracts_both_spec_and_in_source(tmp_path: Path) -> None:
    spec_file = tmp_path / "scale.spec"
    spec_file.write_text("scale(N, a, x):\n  modifies x ~> Matrix1(N)\n")
    with pytest.raises(SpecError) as info:
        load_contracts(parse_text(IN_SOURCE_C, "scale.c"), str(spec_file))
    assert str(info.value) == (f"scale.c:3:3: error: 'scale' has a contract both in its body and in "
                               f"{spec_file}:1:1; keep only one")


def test_load_contracts_checks_each_contract(tmp_path: Path) -> None:
    spec_file = tmp_path / "scale.spec"
    spec_file.write_text("scale(N, alpha, x):\n  modifies x ~> Matrix1(N)\n")
    with pytest.raises(SpecError, match=r"scale.spec:1:10: error: parameter 2 of 'scale' is 'alpha'"):
        load_contracts(parse_text(ATTENTION_C, "attention.c"), str(spec_file))


# ----------------------------------------------------------------- the shipped specs

SPEC_FILES = sorted((ROOT / "specs").glob("*.spec"))


def test_there_are_spec_files() -> None:
    assert SPEC_FILES, "specs/*.spec should exist alongside c_sources/*.c"


@pytest.mark.parametrize("spec_file", SPEC_FILES, ids=lambda p: p.name)
def test_every_spec_file_parses_and_fits_its_c_file(spec_file: Path) -> None:
    c_file = ROOT / "c_sources" / (spec_file.stem + ".c")
    assert c_file.is_file(), f"{spec_file.name} has no C file {c_file.name}"
    prog = parse_file(c_file)
    contracts = load_contracts(prog, str(spec_file))
    assert set(parse_spec_file(spec_file)) <= set(contracts)
    for c in contracts.values():
        assert c.reads or c.writes or c.modifies, f"{c.function} owns nothing"
        assert parse_spec_text(str(c), "again.spec")[c.function] == c
