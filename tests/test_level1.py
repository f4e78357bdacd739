"""Level 1 (optitrust_py/level1.py): the printed code must parse back to the
very same IR. Functions already known to round-trip (with the same
declarations around them) are not parsed again, so a step that changes
one function of a program is still caught in that function."""
from __future__ import annotations

import dataclasses
import textwrap

from optitrust_py import ir
from optitrust_py.frontend import parse_text
from optitrust_py.level1 import check_program

CODE = """
    typedef float real;
    void f(int n, real *x) {
      for (int i = 0; i < n; i++) {
        x[i] = 2.0f * x[i];
      }
    }
    void g(int n, real *y) {
      for (int i = 0; i < n; i++) {
        y[i] = y[i] + 1;
      }
    }
"""


def with_g_statement(program: ir.Program, stmt: ir.Stmt) -> ir.Program:
    g = program.function("g")
    assert g is not None
    new_g = dataclasses.replace(g, body=dataclasses.replace(g.body, stmts=(stmt,)))
    return dataclasses.replace(program, items=tuple(new_g if x is g else x for x in program.items))


def test_a_changed_function_that_does_not_round_trip_is_caught() -> None:
    program = parse_text(textwrap.dedent(CODE), "<snippet>")
    assert check_program(program, {}, run_gcc=False).ok
    float_one = ir.ExprStmt(ir.Assign("=", ir.Index(ir.Var("y"), ir.Const("0")), ir.Const("1", kind="float")))
    got = check_program(with_g_statement(program, float_one), {}, run_gcc=False)
    assert got.problems == ("the printed code parses back to a different IR: in g",), got.problems
    broken = ir.ExprStmt(ir.Var("1y"))
    got = check_program(with_g_statement(program, broken), {}, run_gcc=False)
    assert not got.ok and got.problems[0].startswith("the printed code does not parse: "), got.problems


def test_unchanged_functions_are_not_parsed_again(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from optitrust_py import level1

    program = parse_text(textwrap.dedent(CODE), "<snippet>")
    assert check_program(program, {}, run_gcc=False).ok
    parsed: list[str] = []
    real = level1.parse_text
    monkeypatch.setattr(level1, "parse_text", lambda text, file: parsed.append(text) or real(text, file))
    same = with_g_statement(program, ir.ExprStmt(ir.Assign("=", ir.Index(ir.Var("y"), ir.Const("0")),
                                                             ir.Const("1"))))
    assert check_program(same, {}, run_gcc=False).ok
    assert len(parsed) == 1 and "void g(" in parsed[0] and "void f(" not in parsed[0], parsed
    assert "typedef float real;" in parsed[0], "the declarations around it are parsed with it"
