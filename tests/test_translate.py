"""Instances of a changed statement that are translates of one another
share one verdict (optitrust_py/translate.py): what may move, what keeps
two instances apart, and that a step wrong only at a later head or past
an object's end is still caught."""
from __future__ import annotations

import textwrap

from optitrust_py import ir, locality, translate
from optitrust_py.frontend import parse_text
from optitrust_py.level3 import Runs, _compare_locally, check_step
from optitrust_py.names import reached
from optitrust_py.spec import parse_spec_text

SPEC = """
    f(H, n, x, y):
      requires H >= 1
      requires n >= 1
      reads    x ~> Matrix1(H * n)
      writes   y ~> Matrix1(H * n)
"""
BEFORE = """
    void f(int H, int n, const float *x, float *y) {
      for (int h = 0; h < H; h++) {
        for (int i = 0; i < n; i++) {
          y[h * n + i] = x[h * n + i] * 2.0f;
        }
      }
    }
"""


def program(code: str) -> ir.Program:
    return parse_text(textwrap.dedent(code), "<snippet>")


def check(after: str, sizes: dict[str, int]) -> tuple[str, list[str]]:
    old, new = program(BEFORE), program(after)
    got = check_step(old, new, parse_spec_text(textwrap.dedent(SPEC)), [sizes], "reassoc", 0.0, Runs())
    return got.label, [c.detail for c in got.functions]


def body_pattern(code: str) -> translate.Pattern:
    f = program(code).function("f")
    assert f is not None
    inner = f.body.stmts[0].body.stmts[0].body  # type: ignore[attr-defined]
    return translate.pattern(inner)


def test_an_integer_only_in_indices_moves_and_one_in_a_condition_does_not() -> None:
    assert body_pattern(BEFORE).movable == {"h", "i", "n"}
    guarded = BEFORE.replace("y[h * n + i] = x[h * n + i] * 2.0f;", "if (h > 0) y[h * n + i] = x[i];")
    assert body_pattern(guarded).movable == {"i", "n"}, "h decides a branch"
    looped = BEFORE.replace("y[h * n + i] = x[h * n + i] * 2.0f;",
                            "for (int d = 0; d < 2; d++) y[h * n + i] += x[h * d];")
    assert "h" not in body_pattern(looped).movable, "h times a variable of X moves each access differently"
    cast = BEFORE.replace("x[h * n + i] * 2.0f", "(float)(long)&x[h]")
    assert body_pattern(cast).exposes, "an address made an integer would differ"


def test_the_heads_of_a_correct_step_are_translates_of_the_first() -> None:
    label, details = check(BEFORE.replace("x[h * n + i] * 2.0f", "2.0f * x[h * n + i]"), {"H": 3, "n": 4})
    assert label == "="
    assert details == ["the statement the step changed (line 5: `y[h * n + i] = x[h * n + i] * 2.0f;`) compared "
                       "alone at its 12 runs, 11 of them as translates of others (`translate`)"]


def test_a_step_wrong_only_at_the_second_head_is_refuted() -> None:
    """At h = 0 both versions read x[i]; the accesses to x move apart from
    one head to the next, so no later head is taken for a translate."""
    label, details = check(BEFORE.replace("x[h * n + i] * 2.0f", "x[i] * 2.0f"), {"H": 2, "n": 3})
    assert label == "refuted" and "y[3]" in details[0], details


def test_a_read_past_the_end_at_the_last_head_is_not_hidden() -> None:
    """The read of x[h * n + n] lands inside x for every head but the last:
    the last one is no translate (its cell would fall outside) and runs on
    its own, which the symbolic run refuses."""
    after = BEFORE.replace("y[h * n + i] = x[h * n + i] * 2.0f;",
                           "y[h * n + i] = x[h * n + i] * 2.0f;\n          float t = x[h * n + n];")
    old, new = program(BEFORE), program(after)
    parts = locality.foci(old, new, reached(old, "f"), reached(new, "f"))
    assert [p.span for p in parts] == [(0, 1)], "the added declaration alone"
    label, details = check(after, {"H": 2, "n": 3})
    assert label == "not checkable" and "outside its 6 cells" in details[0], details


def test_separate_changes_are_compared_apart_and_a_declaration_with_its_uses() -> None:
    before = BEFORE.replace("y[h * n + i] = x[h * n + i] * 2.0f;",
                            "float t[2];\n          t[0] = x[h * n + i];\n          y[h * n + i] = t[0] * 2.0f;")
    after = before.replace("float t[2];", "float t[3];").replace("t[0] * 2.0f", "2.0f * t[0]")
    old, new = program(before), program(after)
    parts = locality.foci(old, new, reached(old, "f"), reached(new, "f"))
    assert [p.span for p in parts] == [(3, 3)], "t is used to the end of the body"
    two = BEFORE.replace("y[h * n + i] = x[h * n + i] * 2.0f;",
                         "y[h * n + i] = x[h * n + i] * 2.0f;\n          y[h * n + i] += x[h * n + i];")
    right = two.replace("x[h * n + i] * 2.0f", "2.0f * x[h * n + i]").replace("+= x[h * n + i]", "+= 1.0f * x[h * n + i]")
    old, new = program(two), program(right)
    parts = locality.foci(old, new, reached(old, "f"), reached(new, "f"))
    assert [(p.span, type(p.before).__name__) for p in parts] == [(None, "ExprStmt"), (None, "ExprStmt")]
    contracts = parse_spec_text(textwrap.dedent(SPEC))
    got = check_step(old, new, contracts, [{"H": 2, "n": 2}], "exact", 0.0, Runs())
    assert got.label == "=" and [c.detail[:52] for c in got.functions] == \
        ["the statement the step changed (line 5: `y[h * n + i", "the statement the step changed (line 6: `y[h * n + i"]
    wrong = program(right.replace("+= 1.0f * x", "-= 1.0f * x"))
    got = check_step(old, wrong, contracts, [{"H": 2, "n": 2}], "exact", 0.0, Runs())
    assert got.label == "refuted" and "output y[0]" in got.problems[0], got.problems


def test_statements_added_or_removed_mid_block_are_compared_where_they_stand() -> None:
    """A statement added before the last one runs at every instance of its
    place (H * n of them), and the same one taken away again is compared
    from the same places: a dead store into a local changes nothing; one
    into y changes the output, refuted."""
    two = BEFORE.replace("y[h * n + i] = x[h * n + i] * 2.0f;",
                         "float t = x[h * n + i];\n          y[h * n + i] = t * 2.0f;")
    dead = two.replace("float t = x[h * n + i];", "float t = x[h * n + i];\n          float u[1];\n          u[0] = t;")
    old, new = program(two), program(dead)
    parts = locality.foci(old, new, reached(old, "f"), reached(new, "f"))
    assert [(p.path[-1], p.span) for p in parts] == [(("stmts", 1), (0, 2))]
    contracts = parse_spec_text(textwrap.dedent(SPEC))
    added = check_step(old, new, contracts, [{"H": 2, "n": 3}], "exact", 0.0, Runs())
    assert added.label == "=" and "statements it added from `float u[1];`) compared alone at its 6 runs" \
        in added.functions[0].detail, added.functions[0].detail
    removed = check_step(new, old, contracts, [{"H": 2, "n": 3}], "exact", 0.0, Runs())
    assert removed.label == "=" and "block from `float u[1];`) compared alone at its 6 runs" \
        in removed.functions[0].detail, removed.functions[0].detail
    live = program(two.replace("float t = x[h * n + i];", "float t = x[h * n + i];\n          y[h * n + i] = t;"))
    wrong = check_step(old, live, contracts, [{"H": 2, "n": 3}], "exact", 0.0, Runs())
    assert wrong.label == "=", "y is written again right after: the store is dead in the function too"
    first = program(two.replace("float t = x[h * n + i];", "y[h * n + i] = 1.0f;\n          float t = x[h * n + i];")
                    .replace("y[h * n + i] = t * 2.0f;", "y[h * n + i] += t * 2.0f;"))
    base = program(two.replace("y[h * n + i] = t * 2.0f;", "y[h * n + i] += t * 2.0f;"))
    got = check_step(base, first, contracts, [{"H": 2, "n": 3}], "exact", 0.0, Runs())
    assert got.label == "refuted" and "output y[" in got.problems[0], got.problems


def test_attention_heads_and_key_positions_run_once() -> None:
    """scripts/attention.py's last vectorize steps at the sizes level 3
    chooses (H = 2, S = 69, D = 64): the dot product over d runs once for
    all (head, query, key) instances, the normalisation once for all
    queries; what depends on the query's causal bound runs per query."""
    from pathlib import Path

    from optitrust_py.checks import _all_steps
    from optitrust_py.level3 import choose_sizes
    from optitrust_py.runner import new_session, run_script

    path = Path(__file__).resolve().parent.parent / "scripts" / "attention.py"
    session = new_session(path)
    assert run_script(session, path) is None
    steps = {s.number: s for s in _all_steps(session.steps)}
    runs = Runs()
    for number, label in (("44", "≈fp"), ("45", "=")):
        s = steps[number]
        sizes = choose_sizes(session.contracts, session.sizes, session.check_sizes, [s.before, s.after])
        got = check_step(s.before, s.after, session.contracts, sizes, s.fp, s.tolerance, runs)
        assert got.label == label, got.problems
        details = [f.detail for f in got.functions if f.function == "attention_avx512" and f.cells]
        if number == "44":
            assert any("(line 15: `for (int d = 0; d < 64; d++)`) compared alone at its 4190 runs, 4189 of them as "
                       "translates" in d for d in details), details
            assert any("block from `float o_diag[64];`) compared alone at its 138 runs, 69 of them as translates"
                       in d for d in details), "one run per query: the key loop's bound is the query's"
        else:
            assert details == ["the statement the step changed (line 37: `for (int d = 0; d < 64; d++)`) compared "
                               "alone at its 138 runs, 136 of them as translates of others (`translate`)"]
