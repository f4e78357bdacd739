"""Inferred loop contracts (optitrust_py/infer.py): what each loop of the
c_sources owns, that a contract that would be false is not produced, that
the printed comments parse back with the contract language's parser and the
annotated C compiles, and the CLI flags that show them. Also the guarantee
issue 6 asks for: no C source carries a loop contract."""
from __future__ import annotations

import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

from optitrust_py import ir
from optitrust_py.build import syntax_check
from optitrust_py.frontend import parse_file
from optitrust_py.infer import Inferred, annotate, clause_lines, comment, infer_function, infer_program, read_comment
from optitrust_py.spec import load_contracts, parse_spec_text
from optitrust_py.tree import get, walk

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("matmul", "softmax", "attention", "rmsnorm", "transformer", "moe")


@lru_cache(maxsize=None)
def source(name: str) -> tuple[ir.Program, dict[str, Any]]:
    program = parse_file(str(ROOT / "c_sources" / f"{name}.c"))
    return program, load_contracts(program, str(ROOT / "specs" / f"{name}.spec"))


@lru_cache(maxsize=None)
def inferred(name: str, function: str) -> tuple[Inferred, ...]:
    program, contracts = source(name)
    return infer_function(program, function, contracts)


def clauses(name: str, function: str, nth: int) -> dict[str, list[str]]:
    """The nth loop's (in source order) clauses, by mode, as printed."""
    inf = inferred(name, function)[nth]
    assert inf.contract is not None, inf.note
    out: dict[str, list[str]] = {}
    for mode, r in inf.contract.resources():
        out.setdefault(mode, []).append(str(r))
    return out


def loop_index(name: str, function: str, nth: int) -> str:
    program, _ = source(name)
    loop: ir.For = get(program, inferred(name, function)[nth].path)
    return loop.index


def parsed(c_text: str, spec_text: str) -> tuple[ir.Program, dict[str, Any]]:
    from optitrust_py.frontend import parse_text

    return parse_text(c_text, "<test>"), parse_spec_text(spec_text)


# ----------------------------------------------------------------- the contracts of the sources


def test_matmul_row_loop_owns_its_rows_and_shares_b() -> None:
    assert loop_index("matmul", "matmul", 0) == "i"
    assert clauses("matmul", "matmul", 0) == {
        "xreads": ["&A[i * K] ~> Matrix1(K)"],
        "xwrites": ["&C[i * N] ~> Matrix1(N)"],
        "sreads": ["B ~> Matrix2(K, N)"],
    }


def test_matmul_column_and_reduction_loops() -> None:
    assert clauses("matmul", "matmul", 1) == {
        "xreads": ["for k in 0..K -> &B[k * N + j] ~> Cell"],
        "xwrites": ["&C[i * N + j] ~> Cell"],
        "sreads": ["&A[i * K] ~> Matrix1(K)"],
    }
    # every iteration of the k loop updates the same C cell: shared, never exclusive
    assert clauses("matmul", "matmul", 2) == {
        "xreads": ["&A[i * K + k] ~> Cell", "&B[k * N + j] ~> Cell"],
        "smodifies": ["&C[i * N + j] ~> Cell"],
    }


def test_softmax_scalars_and_write_before_read() -> None:
    # the locals of the row loop (max_val, sum) are not part of its contract
    assert clauses("softmax", "softmax", 0) == {
        "xreads": ["&x[i * C] ~> Matrix1(C)"],
        "xwrites": ["&y[i * C] ~> Matrix1(C)"],
    }
    assert clauses("softmax", "softmax", 1) == {"xreads": ["&x[i * C + j] ~> Cell"],
                                                "smodifies": ["max_val ~> Cell"]}
    assert clauses("softmax", "softmax", 2) == {"xreads": ["&x[i * C + j] ~> Cell"],
                                                "xwrites": ["&y[i * C + j] ~> Cell"],
                                                "sreads": ["max_val ~> Cell"], "smodifies": ["sum ~> Cell"]}
    # y[...] = y[...] / sum reads the cell first: modifies, not writes
    assert clauses("softmax", "softmax", 3) == {"xmodifies": ["&y[i * C + j] ~> Cell"],
                                                "sreads": ["sum ~> Cell"]}


def test_attention_heads_own_their_matrices_queries_share_keys() -> None:
    assert loop_index("attention", "attention", 0) == "h"
    assert clauses("attention", "attention", 0) == {
        "xreads": ["&q[h * S * D] ~> Matrix2(S, D)", "&k[h * S * D] ~> Matrix2(S, D)",
                   "&v[h * S * D] ~> Matrix2(S, D)"],
        "xwrites": ["&out[h * S * D] ~> Matrix2(S, D)"],
        "smodifies": ["scores ~> Matrix1(S)"],
    }
    # query i reads keys 0..i: rows shared between queries, so the head's k and v are s*
    assert clauses("attention", "attention", 1) == {
        "xreads": ["&q[(h * S + i) * D] ~> Matrix1(D)"],
        "xwrites": ["&out[(h * S + i) * D] ~> Matrix1(D)"],
        "sreads": ["&k[h * S * D] ~> Matrix2(S, D)", "&v[h * S * D] ~> Matrix2(S, D)"],
        "smodifies": ["scores ~> Matrix1(S)"],
    }
    inner = [c for k in range(len(inferred("attention", "attention"))) for c in [clauses("attention", "attention", k)]]
    assert {"xreads": ["&v[(h * S + j) * D + d] ~> Cell"], "xmodifies": ["&out[(h * S + i) * D + d] ~> Cell"],
            "sreads": ["&scores[j] ~> Cell"]} in inner


def test_rmsnorm_weights_shared() -> None:
    assert clauses("rmsnorm", "rmsnorm", 0) == {
        "xreads": ["&x[i * C] ~> Matrix1(C)"],
        "xwrites": ["&y[i * C] ~> Matrix1(C)"],
        "sreads": ["w ~> Matrix1(C)"],
    }


def test_transformer_matvec_and_kv_cache_rows() -> None:
    assert clauses("transformer", "matvec", 0) == {
        "xreads": ["&W[i * n] ~> Matrix1(n)"],
        "xwrites": ["&y[i] ~> Cell"],
        "sreads": ["x ~> Matrix1(n)"],
    }
    token = {loop_index("transformer", "transformer_token", k): k
             for k in range(len(inferred("transformer", "transformer_token")))}
    # the layer loop: a layer's weights and cache rows are its own; the callee regions are split by dimension
    layer = clauses("transformer", "transformer_token", token["l"])
    assert "&wq[l * dim * dim] ~> Matrix2(dim, dim)" in layer["xreads"]
    assert "&k_cache[l * SMAX * (dim * KVH / H)] ~> Matrix2(SMAX, dim * KVH / H)" in layer["xmodifies"]
    assert "x ~> Matrix1(dim)" in layer["smodifies"]
    # rotary embedding: a step of 2 makes the pair q[i], q[i + 1] exclusive to an iteration
    rope = clauses("transformer", "transformer_token", 1)
    assert rope == {"xmodifies": ["&q[i] ~> Matrix1(2)"]}


def test_moe_selection_writes_through_a_loaded_index() -> None:
    found = [clauses("moe", "moe", k) for k in range(len(inferred("moe", "moe")))]
    # used[best] = 1 with best a mutable scalar: the whole array, shared
    assert {"xwrites": ["&sel[s] ~> Cell", "&wsel[s] ~> Cell"], "sreads": ["logits ~> Matrix1(E)"],
            "smodifies": ["used ~> Matrix1(E)"]} in found


# ----------------------------------------------------------------- contracts that would be false


SPEC_1D = "f(N, x, y):\n  requires N >= 2\n  reads x ~> Matrix1(N)\n  modifies y ~> Matrix1(N)\n"


@pytest.mark.parametrize("body, expected", [
    # iterations i and i + 1 both write y[i / 2]
    ("for (int i = 0; i < N; i++) { y[i / 2] = x[i]; }",
     {"xreads": ["&x[i] ~> Cell"], "smodifies": ["y ~> Matrix1(N)"]}),
    # a prefix sum: iteration i reads what iteration i - 1 wrote
    ("for (int i = 1; i < N; i++) { y[i] += y[i - 1]; }", {"smodifies": ["y ~> Matrix1(N)"]}),
    # overlapping pairs without the step of 2 that would separate them
    ("for (int i = 0; i < N - 1; i++) { y[i] = x[i]; y[i + 1] = x[i]; }",
     {"xreads": ["&x[i] ~> Cell"], "smodifies": ["y ~> Matrix1(N)"]}),
    # the same pairs with a step of 2: exclusive, each cell written first
    ("for (int i = 0; i < N - 1; i += 2) { y[i] = x[i]; y[i + 1] = x[i]; }",
     {"xreads": ["&x[i] ~> Cell"], "xwrites": ["&y[i] ~> Matrix1(2)"]}),
    # a write under a condition does not cover its cell: modifies, not writes
    ("for (int i = 0; i < N; i++) { if (x[i] > 0) { y[i] = x[i]; } }",
     {"xreads": ["&x[i] ~> Cell"], "xmodifies": ["&y[i] ~> Cell"]}),
])
def test_no_false_exclusive_or_writes(body: str, expected: dict[str, list[str]]) -> None:
    program, contracts = parsed(f"void f(int N, const float *x, float *y) {{ {body} }}\n", SPEC_1D)
    (inf,) = infer_function(program, "f", contracts)
    assert inf.contract is not None
    got: dict[str, list[str]] = {}
    for mode, r in inf.contract.resources():
        got.setdefault(mode, []).append(str(r))
    assert got == expected


def test_unrolled_vector_loop_is_one_contiguous_run() -> None:
    """A loop by steps of 4 touching j..j + 3 covers C / 4 * 4 cells from the
    row's start, disjoint from its scalar tail: both exclusive to a row."""
    program, contracts = parsed(
        "void f(int R, int C, const float *x, float *y) {\n"
        "  for (int i = 0; i < R; i++) {\n"
        "    for (int j = 0; j < C - 3; j += 4) {\n"
        "      y[i * C + j] = x[i * C + j]; y[i * C + (j + 1)] = x[i * C + (j + 1)];\n"
        "      y[i * C + (j + 2)] = x[i * C + (j + 2)]; y[i * C + (j + 3)] = x[i * C + (j + 3)];\n"
        "    }\n"
        "    for (int j = C / 4 * 4; j < C; j++) { y[i * C + j] = 2.0f * x[i * C + j]; }\n"
        "  }\n}\n",
        "f(R, C, x, y):\n  requires R >= 1, C >= 1\n  reads x ~> Matrix2(R, C)\n  writes y ~> Matrix2(R, C)\n")
    rows, vector, tail = infer_function(program, "f", contracts)
    assert rows.contract is not None and vector.contract is not None
    assert [str(r) for r in rows.contract.xreads] == ["&x[i * C] ~> Matrix1(C / 4 * 4)",
                                                      "for j in C / 4 * 4..C -> &x[i * C + j] ~> Cell"]
    assert [str(r) for r in rows.contract.xmodifies] == ["&y[i * C] ~> Matrix1(C / 4 * 4)"]
    assert [str(r) for r in rows.contract.xwrites] == ["for j in C / 4 * 4..C -> &y[i * C + j] ~> Cell"]
    # inside the vector loop, the four stores of an iteration are one run, each cell stored first
    assert [str(r) for r in vector.contract.xwrites] == ["&y[i * C + j] ~> Matrix1(4)"]


def test_unmodelled_call_gets_a_note_not_a_contract() -> None:
    program, contracts = parsed("void g(float *p);\n"
                                "void f(int N, const float *x, float *y) { for (int i = 0; i < N; i++) { g(y); } }\n",
                                SPEC_1D)
    (inf,) = infer_function(program, "f", contracts)
    assert inf.contract is None and "g(y)" in inf.note
    text = annotate(program, contracts)
    assert "/* no inferred contract: 'g(y)' touches memory level 2 does not model */" in text
    assert syntax_check(text, "note.c") == []


# ----------------------------------------------------------------- printing


@pytest.mark.parametrize("name", SOURCES)
def test_comments_parse_back_and_annotated_c_compiles(name: str) -> None:
    program, contracts = source(name)
    found = infer_program(program, contracts)
    assert found and all(inf.contract is not None for inf in found), [inf.note for inf in found]
    for inf in found:
        assert inf.contract is not None
        lines = comment(inf)
        if inf.contract.is_empty():
            assert lines == []
            continue
        assert read_comment("\n".join(lines)) == inf.contract
    text = annotate(program, contracts)
    assert syntax_check(text, f"{name}.c") == []
    assert text.count("/* ") == sum(1 for inf in found if comment(inf))


def test_long_clauses_take_one_line_per_resource() -> None:
    program, contracts = source("attention")
    (head, *_) = infer_function(program, "attention", contracts)
    assert head.contract is not None
    lines = clause_lines(head.contract)
    assert lines[:3] == ["xreads    &q[h * S * D] ~> Matrix2(S, D)", "xreads    &k[h * S * D] ~> Matrix2(S, D)",
                         "xreads    &v[h * S * D] ~> Matrix2(S, D)"]
    assert all(len(ln) <= 100 for ln in lines)


def test_annotation_sits_above_the_loop_and_its_pragmas() -> None:
    program, contracts = parsed("void f(int N, const float *x, float *y) {\n"
                                "  #pragma omp parallel for\n  for (int i = 0; i < N; i++) { y[i] = x[i]; }\n}\n",
                                SPEC_1D)
    lines = annotate(program, contracts).splitlines()
    at = next(k for k, ln in enumerate(lines) if "#pragma omp" in ln)
    assert lines[at - 2:at] == ["  /* xreads    &x[i] ~> Cell", "     xwrites   &y[i] ~> Cell */"]


# ----------------------------------------------------------------- no loop contract in the sources


_LOOP_CLAUSE = re.compile(r"__(xreads|xwrites|xmodifies|sreads|smodifies)\s*\(")
_CLAUSE = re.compile(r"__(reads|writes|modifies)\s*\(")


@pytest.mark.parametrize("path", sorted((ROOT / "c_sources").glob("*.c")), ids=lambda p: p.name)
def test_no_loop_contract_in_c_sources(path: Path) -> None:
    text = path.read_text()
    assert not _LOOP_CLAUSE.search(text), f"{path.name} has a loop contract clause"
    program = parse_file(str(path))
    in_functions = sum(1 for f in program.functions() for c in f.contract if c.kind in ("reads", "writes", "modifies"))
    assert len(_CLAUSE.findall(text)) == in_functions, f"{path.name} has a resource clause outside a function contract"
    assert not [n for _, n in walk(program) if isinstance(n, ir.For) and n.contract]


# ----------------------------------------------------------------- the CLI


def otp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "optitrust_py", *args], cwd=str(ROOT), capture_output=True,
                          text=True, timeout=300)


def test_check_show_contracts() -> None:
    r = otp("check", "scripts/softmax.py", "--show-contracts", "--no-color")
    assert r.returncode == 0, r.stderr
    assert "inferred loop contracts of the final program" in r.stdout
    assert "/* xreads    &x[i * C] ~> Matrix1(C)" in r.stdout
    assert "#pragma omp parallel for" in r.stdout


def test_run_annotate(tmp_path: Path) -> None:
    r = otp("run", "scripts/softmax.py", "--annotate", "--no-color", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    # the diff of step 1 (parallel_for) shows the pragma added under the loop's contract comment
    assert "/* xreads    &x[i * C] ~> Matrix1(C)" in r.stdout
    final = (tmp_path / "softmax" / "final.annotated.c").read_text()
    assert "xmodifies &y[i * C] ~> Matrix1(C)" in final
    assert syntax_check(final, "final.annotated.c") == []
    assert "/* x" not in (tmp_path / "softmax" / "final.c").read_text()
