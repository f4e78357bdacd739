"""Level 3 with no run where the code is the same once unfolded
(optitrust_py/unfold.py), under each answer of a CPU dispatch
(optitrust_py/dispatch.py), and at sizes chosen for each step's own code:
the shortcuts must take the steps that only name, move or copy code, and
never a step that changes a value."""
from __future__ import annotations

import textwrap
from pathlib import Path

from optitrust_py import dispatch, ir
from optitrust_py.checks import _all_steps
from optitrust_py.frontend import parse_text
from optitrust_py.level3 import Runs, check_step, choose_sizes
from optitrust_py.names import reached
from optitrust_py.runner import new_session, run_script
from optitrust_py.spec import parse_spec_text
from optitrust_py.unfold import Unfolding

ROOT = Path(__file__).resolve().parent.parent
SPEC = parse_spec_text(textwrap.dedent("""
    f(n, x, y):
      requires n >= 1
      reads    x ~> Matrix1(n)
      writes   y ~> Matrix1(n)
"""), "<spec>")


def program(code: str) -> ir.Program:
    return parse_text(textwrap.dedent(code), "<snippet>")


def same(before: str, after: str, sizes: dict[str, int] | None = None) -> bool:
    a, b = program(before), program(after)
    return Unfolding().same(a, reached(a, "f"), reached(b, "f"), sizes)


def check(before: str, after: str, sizes: dict[str, int]) -> list[tuple[str, str]]:
    r = check_step(program(before), program(after), SPEC, [sizes], "exact", 0.0, Runs())
    return [(c.status, c.detail) for c in r.functions]


NAMED = """
    void f(int n, const float *x, float *y) {
      int m = n - 1;
      float half = 0.5f;
      for (int i = 0; i < n; i++) {
        y[i] = x[m - i] * half;
      }
    }
"""
INLINED = """
    void f(int n, const float *x, float *y) {
      for (int i = 0; i < n; i++) {
        y[i] = x[n - 1 - i] * 0.5f;
      }
    }
"""


def test_naming_a_value_is_the_same_code_once_unfolded() -> None:
    assert same(NAMED, INLINED)
    assert check(NAMED, INLINED, {"n": 5}) == [
        ("=", "the same code once each local that keeps its definition is replaced by it (`unfold`): equal at "
              "every size, with no run")]


def test_a_variable_assigned_after_its_definition_stays() -> None:
    changed = NAMED.replace("for (int i", "half = 0.25f;\n      for (int i")
    assert not same(changed, INLINED)
    status, detail = check(changed, INLINED, {"n": 5})[0]
    assert status == "refuted" and "y[" in detail


def test_a_definition_that_reads_memory_stays() -> None:
    reads = NAMED.replace("int m = n - 1;", "float m0 = x[0];\n      int m = n - 1;").replace(
        "* half", "* half + m0")
    inlined = INLINED.replace("* 0.5f", "* 0.5f + x[0]")
    assert not same(reads, inlined)


def test_a_redeclared_name_stays() -> None:
    shadow = NAMED.replace("y[i] = x[m - i] * half;", "int m = 0;\n        y[i] = x[m - i] * half;")
    assert not same(shadow, INLINED)


def test_a_type_change_is_kept_as_a_cast() -> None:
    truncating = NAMED.replace("float half = 0.5f;", "int half = 0.5f;")
    assert not same(truncating, INLINED)
    assert same(truncating, INLINED.replace("* 0.5f", "* (int)0.5f"))


VERSIONED = """
    void f(int n, const float *x, float *y) {
      if (n == 4) {
        for (int i = 0; i < 4; i++) {
          y[i] = x[i] * 2.0f;
        }
      } else {
        for (int i = 0; i < n; i++) {
          y[i] = x[i] * 2.0f;
        }
      }
    }
"""
PLAIN = """
    void f(int n, const float *x, float *y) {
      for (int i = 0; i < n; i++) {
        y[i] = x[i] * 2.0f;
      }
    }
"""


def test_a_copy_for_one_size_is_the_code_it_copied_at_that_size_only() -> None:
    assert not same(PLAIN, VERSIONED)
    assert same(PLAIN, VERSIONED, {"n": 4}) and same(PLAIN, VERSIONED, {"n": 7})
    wrong = VERSIONED.replace("i < 4; i++) {\n          y[i] = x[i] * 2.0f;", "i < 4; i++) {\n          y[i] = x[i] * 3.0f;")
    assert wrong != VERSIONED
    assert same(PLAIN, wrong, {"n": 7}) and not same(PLAIN, wrong, {"n": 4})
    assert check(PLAIN, wrong, {"n": 4})[0][0] == "refuted"


DISPATCHING = """
    static void f_v(int n, const float *x, float *y) {
      for (int i = 0; i < n; i++) {
        y[i] = x[i] * 2.0f;
      }
    }
    void f(int n, const float *x, float *y) {
      if (__builtin_cpu_supports("avx512f")) {
        f_v(n, x, y);
        return;
      }
      for (int i = 0; i < n; i++) {
        y[i] = x[i] * 2.0f;
      }
    }
"""


def test_a_dispatching_function_is_its_variant_under_true_and_its_rest_under_false() -> None:
    p = program(DISPATCHING)
    f = p.function("f")
    assert f is not None and dispatch.choice(f) == ('cpu_supports("avx512f")', "f_v")
    on = dispatch.specialized(p, "f", {'cpu_supports("avx512f")': True}).function("f")
    off = dispatch.specialized(p, "f", {'cpu_supports("avx512f")': False}).function("f")
    assert on is not None and off is not None
    assert on.body == p.function("f_v").body  # type: ignore[union-attr]
    assert off.body.stmts == f.body.stmts[1:]
    assert [s for s, _ in check(PLAIN, DISPATCHING, {"n": 5})] == ["=", "="]
    got = check(PLAIN, DISPATCHING.replace("x[i] * 2.0f", "x[i] * 3.0f", 1), {"n": 5})
    assert [s for s, _ in got] == ["refuted", "="]
    assert "y[" in got[0][1] and got[0][1].endswith('(with cpu_supports("avx512f") true)')
    assert got[1][1].endswith('(with cpu_supports("avx512f") false)')


def test_attention_steps_are_checked_at_sizes_of_their_own_code() -> None:
    """The online softmax's key blocks of 64 run up to the query (`bj < i +
    1` under `i < S`), so S runs a full block and a tail; naming the scale
    needs no tile, and D is 64 only once the code has a copy for it."""
    script = ROOT / "scripts" / "attention.py"
    session = new_session(script, "cpu", None, {})
    assert run_script(session, script) is None
    steps = [s for s in _all_steps(session.steps) if not s.substeps]

    def sizes(call: str) -> list[dict[str, int]]:
        step = next(s for s in steps if s.call.startswith(call))
        return choose_sizes(session.contracts, session.sizes, None, [step.before, step.after])
    assert sizes("variable.bind") == [{"H": 2, "S": 5, "D": 5}]
    assert sizes("flash.online_softmax") == [{"H": 2, "S": 69, "D": 5}]
    assert sizes("flash.version") == [{"H": 2, "S": 69, "D": 64}, {"H": 2, "S": 69, "D": 5}]
