"""Level 3's symbolic execution (optitrust_py/symexec.py) on the kernels of
c_sources/ and on small C snippets for the constructs they lack: the terms
the outputs hold, the choices a run meets, and the C it refuses to model."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Mapping

import pytest

from optitrust_py import ir, terms as T
from optitrust_py.canon import Normalizer
from optitrust_py.contract import Contract
from optitrust_py.errors import OtpError
from optitrust_py.frontend import parse_file, parse_text
from optitrust_py.level3 import Runs, choice_sets
from optitrust_py.runner import new_session, run_script
from optitrust_py.spec import parse_spec_file, parse_spec_text
from optitrust_py.symexec import Outcome, Unsupported, run
from optitrust_py.terms import Term

ROOT = Path(__file__).resolve().parent.parent

ONE_D_SPEC = """
    f(n, x, y):
      requires n >= 1
      reads    x ~> Matrix1(n)
      writes   y ~> Matrix1(n)
"""


def kernel(name: str) -> tuple[ir.Program, Contract]:
    return parse_file(ROOT / "c_sources" / f"{name}.c"), parse_spec_file(ROOT / "specs" / f"{name}.spec")[name]


def snippet(code: str, spec: str = ONE_D_SPEC) -> tuple[ir.Program, Contract]:
    """A program of one function `f` and its contract."""
    return parse_text(textwrap.dedent(code), "<snippet>"), parse_spec_text(textwrap.dedent(spec))["f"]


def run_f(code: str, sizes: Mapping[str, int], choices: Mapping[str, bool] = {}) -> Outcome:
    program, contract = snippet(code)
    return run(program, "f", contract, sizes, choices)


def unsupported(code: str, sizes: Mapping[str, int]) -> OtpError:
    """The error a run of `f` must stop with (symexec's Unsupported)."""
    program, contract = snippet(code)
    with pytest.raises(Unsupported) as info:
        run(program, "f", contract, sizes, {})
    assert isinstance(info.value, OtpError)
    return info.value


def cell(name: str, i: int) -> Term:
    return T.leaf("in", name, i)


def subterms(t: Any) -> list[Term]:
    """Every term reachable from `t` (itself included), each once."""
    seen: dict[int, Term] = {}
    stack = [t]
    while stack:
        u = stack.pop()
        if isinstance(u, Term) and u.number not in seen:
            seen[u.number] = u
            stack.extend(u.args)
    return list(seen.values())


# ---------------------------------------------------------------- what outputs hold

def test_matmul_cells_are_the_sums_of_products() -> None:
    """C[i*N+j] = sum_k A[i*K+k] * B[k*N+j]: the very term (the zero that
    starts the sum folds away, x + 0 being exact), and the polynomial over
    the reals built in another order and association."""
    program, contract = kernel("matmul")
    M, N, K = 2, 3, 2
    out = run(program, "matmul", contract, {"M": M, "N": N, "K": K}, {})
    assert set(out.cells) == {("C", c) for c in range(M * N)} and out.choices == {}
    norm = Normalizer()
    for i in range(M):
        for j in range(N):
            products = [T.binary("mul", cell("A", i * K + k), cell("B", k * N + j)) for k in range(K)]
            in_order = T.binary("add", products[0], products[1])
            assert out.cells[("C", i * N + j)] is in_order
            backwards = T.binary("add", T.binary("mul", cell("B", N + j), cell("A", i * K + 1)),
                                 T.binary("mul", cell("B", j), cell("A", i * K)))
            poly = norm.normal(out.cells[("C", i * N + j)])
            assert poly == norm.normal(backwards)
            assert len(poly) == K and all(coef == 1 and len(mono) == 2 for mono, coef in poly)
    assert norm.normal(out.cells[("C", 0)]) != norm.normal(out.cells[("C", 1)])


def test_data_dependent_if_merges_into_a_max() -> None:
    """softmax's running maximum (`if (x[j] > m) m = x[j]`) runs both
    branches and merges into `ite`s, which canon reads as a maximum: each
    output is exp(x[j] - max(x)) over the sum of the row's exponentials."""
    program, contract = kernel("softmax")
    out = run(program, "softmax", contract, {"R": 1, "C": 3}, {})
    xs = [cell("x", j) for j in range(3)]
    m = T.binary("max", xs[0], T.binary("max", xs[2], xs[1]))
    exps = [T.unary("exp", T.binary("sub", x, m)) for x in xs]
    total = T.binary("add", exps[2], T.binary("add", exps[0], exps[1]))
    norm = Normalizer()
    for j in range(3):
        y = out.cells[("y", j)]
        assert any(u.op == "ite" for u in subterms(y)) and not any(u.op == "max" for u in subterms(y))
        assert norm.normal(y) == norm.normal(T.binary("div", exps[j], total))
    assert norm.normal(out.cells[("y", 0)]) != norm.normal(T.binary("div", exps[1], total))


def test_cpu_supports_is_a_choice_and_both_ways_are_enumerated() -> None:
    code = """
        void f(int n, const float *x, float *y) {
          if (__builtin_cpu_supports("avx512f")) {
            y[0] = x[0];
          } else {
            y[0] = x[1];
          }
          for (int i = 1; i < n; i++) y[i] = x[i];
        }
    """
    program, contract = snippet(code)
    key = 'cpu_supports("avx512f")'
    default = run(program, "f", contract, {"n": 2}, {})
    assert default.choices == {key: True} and default.cells[("y", 0)] is cell("x", 0)
    assert run(program, "f", contract, {"n": 2}, {key: False}).cells[("y", 0)] is cell("x", 1)
    runs = Runs()
    sets = choice_sets(lambda c: runs.run(program, "f", contract, {"n": 2}, c).choices)
    assert sorted(s[key] for s in sets) == [False, True]
    matmul, matmul_contract = kernel("matmul")
    plain = choice_sets(lambda c: runs.run(matmul, "matmul", matmul_contract, {"M": 1, "N": 1, "K": 1}, c).choices)
    assert plain == [{}]


def test_vectorized_softmax_dispatch_runs_both_paths() -> None:
    """The real dispatch `vector.vectorize` emits: both choices, and the
    AVX-512 path (blocks of 64 lanes, then a tail) reassociates the sum,
    so its outputs are other terms with the same normal forms."""
    script = ROOT / "scripts" / "softmax.py"
    session = new_session(script)
    assert run_script(session, script) is None
    program = session.steps[-1].after
    contract = session.contracts["softmax"]
    sizes = {"R": 1, "C": 69}
    runs = Runs()
    sets = choice_sets(lambda c: runs.run(program, "softmax", contract, sizes, c).choices)
    assert sorted(sets, key=str) == [{'cpu_supports("avx512f")': False}, {'cpu_supports("avx512f")': True}]
    vec = run(program, "softmax", contract, sizes, {'cpu_supports("avx512f")': True})
    scalar = run(program, "softmax", contract, sizes, {'cpu_supports("avx512f")': False})
    assert vec.cells[("y", 0)] is not scalar.cells[("y", 0)]
    norm = Normalizer()
    assert all(norm.normal(vec.cells[c]) == norm.normal(scalar.cells[c]) for c in vec.cells)


# ---------------------------------------------------------------- what the model refuses

def test_read_outside_the_contract_extent_is_unsupported_with_a_location() -> None:
    e = unsupported("""
        void f(int n, const float *x, float *y) {
          for (int i = 0; i < n; i++) {
            y[i] = x[i + 1];
          }
        }
    """, {"n": 3})
    assert "read of x[3], outside its 3 cells" in e.message
    assert e.loc is not None and e.loc.line == 4


def test_goto_is_unsupported() -> None:
    e = unsupported("""
        void f(int n, const float *x, float *y) {
          y[0] = x[0];
          goto done;
          done:
          return;
        }
    """, {"n": 1})
    assert e.message == "goto" and e.loc is not None and e.loc.line == 4


def test_unknown_function_is_unsupported_by_name() -> None:
    e = unsupported("""
        float mystery(float v);
        void f(int n, const float *x, float *y) {
          y[0] = mystery(x[0]);
        }
    """, {"n": 1})
    assert "does not model the function 'mystery'" in e.message and e.loc is not None and e.loc.line == 4


def test_missing_size_is_unsupported() -> None:
    program, contract = kernel("matmul")
    with pytest.raises(Unsupported, match="no size given for the parameter 'K'"):
        run(program, "matmul", contract, {"M": 1, "N": 1}, {})


# ---------------------------------------------------------------- memory and integers

def test_malloc_read_before_written_is_undef() -> None:
    out = run_f("""
        #include <stdlib.h>
        void f(int n, const float *x, float *y) {
          float *t = malloc(n * sizeof(float));
          t[0] = x[0];
          for (int i = 0; i < n; i++) {
            y[i] = t[i];
          }
          free(t);
        }
    """, {"n": 2})
    assert out.cells[("y", 0)] is cell("x", 0)
    unwritten = out.cells[("y", 1)]
    assert unwritten.op == "undef" and unwritten.args[0].startswith("malloc#") and unwritten.args[1] == 1


def test_int8_arrays_give_integer_leaves() -> None:
    """matvec_q8 as scripts/quantize.py makes it: W's codes are int8 input
    leaves (one byte wide), their products integers; x's codes are
    narrowed to int8 from its rounding."""
    script = ROOT / "scripts" / "quantize.py"
    session = new_session(script)
    assert run_script(session, script) is None
    step = next(s for s in session.steps if s.call.startswith("quantize.integer_product"))
    out = run(step.after, "matvec_q8", session.contracts["matvec_q8"], {"N": 32, "D": 1}, {})
    leaves = {int(str(u.args[1])): u for u in subterms(out.cells[("y", 0)]) if u.op == "in_int"}
    assert sorted(leaves) == list(range(32)) and all(u.args == ("Wq", u.args[1], 1) and u.integer
                                                     for u in leaves.values())
    narrowed = [u for u in subterms(out.cells[("y", 0)]) if u.op == "narrow"]
    assert len(narrowed) == 32 and all(u.integer and u.args[1] == 1 for u in narrowed)
    floats = [u for u in subterms(out.cells[("y", 0)]) if u.op == "in"]
    assert floats and not any(u.integer for u in floats)


def test_pointer_casts_give_addresses_12_bytes_past_64() -> None:
    """Every object starts 12 bytes past a 64-byte boundary, so a peel
    that walks to an aligned address runs: here 13 floats, then the rest
    from y + 13 (52 + 12 = 64)."""
    out = run_f("""
        #include <stdint.h>
        void f(int n, const float *x, float *y) {
          int peel = 0;
          while (((uintptr_t)(y + peel)) % 64 != 0 && peel < n) {
            y[peel] = x[peel];
            peel++;
          }
          for (int i = peel; i < n; i++) {
            y[i] = (float)(((uintptr_t)&x[i]) % 64);
          }
        }
    """, {"n": 16})
    assert [out.cells[("y", i)] for i in range(13)] == [cell("x", i) for i in range(13)]
    assert [out.cells[("y", i)] for i in range(13, 16)] == [T.const((12 + 4 * i) % 64) for i in range(13, 16)]


# ---------------------------------------------------------------- bugs these tests found (the strict xfails are open)

def test_conditional_first_write_is_kept() -> None:
    program, contract = snippet("""
        void f(int n, const float *x, float *y) {
          if (x[0] > 0.0f) {
            y[0] = x[1];
          }
        }
    """)
    out = run(program, "f", contract, {"n": 2}, {})
    assert out.cells[("y", 0)] is T.ite(T.binary("lt", T.ZERO, cell("x", 0)), cell("x", 1), cell("y", 0))


def test_hex_constants_keep_their_digits() -> None:
    out = run_f("void f(int n, const float *x, float *y) { y[0] = x[0] * (float)(0x1F & n); }", {"n": 2})
    assert out.cells[("y", 0)] is T.binary("mul", cell("x", 0), T.const(2))


def test_pointer_walk_runs_or_is_unsupported() -> None:
    program, contract = snippet("""
        void f(int n, const float *x, float *y) {
          float *q = y;
          for (const float *p = x; p < x + n; p++) {
            *q = *p;
            q++;
          }
        }
    """)
    try:
        out = run(program, "f", contract, {"n": 2}, {})
    except OtpError as e:
        assert isinstance(e, Unsupported)
        return
    assert out.cells[("y", 1)] is cell("x", 1)


def test_array_of_vectors_under_a_data_condition() -> None:
    out = run_f("""
        #include <immintrin.h>
        void f(int n, const float *x, float *y) {
          if (x[0] > 0.0f) {
            __m512 v[1] = {_mm512_setzero_ps()};
            _mm512_storeu_ps(&y[0], v[0]);
          }
        }
    """, {"n": 16})
    assert out.cells[("y", 3)] is T.ite(T.binary("lt", T.ZERO, cell("x", 0)), T.ZERO, cell("y", 3))


def test_otp_helpers_run_as_what_they_stand_for() -> None:
    """A program that calls otp's bf16 helpers (include/otp.h: a conversion
    and gpu.mma's per-lane tile product) runs at level 3: the conversion
    is the value, each lane adds its products in k order, so the tile
    product gpu.mma writes is `=` to the loops it replaced."""
    from test_mma import NEST, SPEC, TILES
    from transformations import gpu

    from optitrust_py.level3 import Runs, check_step

    program = parse_text(textwrap.dedent(TILES).replace("ROW", "w * 16 + i"), "tiles.c")
    step = gpu.mma.apply(program, NEST)
    got = check_step(program, step.program, SPEC, [{"n": 2}], step.fp, 0.0, Runs())
    assert got.label == "=", got.problems


def test_typedef_names_and_narrow_floats_are_floats() -> None:
    """`typedef float real;` and the narrow float types hold floats, not
    integers (a float stored into an integer is truncated): before, a
    `real` local truncated its value and matrix.set_precision's _Float16
    buffer was refuted at level 3."""
    from transformations import matrix

    from optitrust_py.level3 import Runs, check_step
    from optitrust_py.spec import parse_spec_file, parse_spec_text
    from optitrust_py.symexec import run

    program = parse_text(textwrap.dedent("""
        typedef float real;
        void f(int n, const float *x, float *y) {
          for (int i = 0; i < n; i++) {
            real t = x[i] * 0.5f;
            y[i] = t;
          }
        }
    """), "t.c")
    spec = parse_spec_text("f(n, x, y):\n  requires n >= 1\n  reads x ~> Matrix1(n)\n  writes y ~> Matrix1(n)\n")["f"]
    cell = run(program, "f", spec, {"n": 1}, {}).cells[("y", 0)]
    assert cell.op == "mul" and "trunc" not in str(cell), cell
    root = Path(__file__).resolve().parent.parent
    attention = parse_file(root / "c_sources" / "attention.c")
    step = matrix.set_precision.apply(attention, "attention > def scores", "_Float16")
    got = check_step(attention, step.program, parse_spec_file(root / "specs" / "attention.spec"),
                     [{"H": 1, "S": 5, "D": 3}], step.fp, step.tolerance, Runs())
    assert got.label == "=", got.problems

