"""Front end and printer: real C in, the same C (in meaning) out, fixpoint."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from optitrust_py import ir
from optitrust_py.errors import ParseError
from optitrust_py.frontend import parse_file, parse_text
from optitrust_py.printer import to_c
from optitrust_py.tree import walk

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "c_sources").glob("*.c"))


def gcc(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["gcc", *args], cwd=cwd, capture_output=True, text=True)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_print_is_a_fixpoint_and_compiles(path: Path, tmp_path: Path) -> None:
    prog = parse_file(path)
    text = to_c(prog)
    again = parse_text(text, str(path))
    assert again == prog
    assert to_c(again) == text
    out = tmp_path / path.name
    out.write_text(text)
    r = gcc(["-std=c11", "-Wall", "-Werror", "-fopenmp", "-fsyntax-only", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr


def test_sources_have_only_canonical_loops() -> None:
    for path in SOURCES:
        prog = parse_file(path)
        generic = [n for _, n in walk(prog) if isinstance(n, ir.GenericFor)]
        assert not generic, f"{path.name} has a non-canonical loop"


def test_real_world_c_round_trips_with_the_same_behaviour(tmp_path: Path) -> None:
    src = ROOT / "tests" / "data" / "realworld.c"
    printed = tmp_path / "printed.c"
    printed.write_text(to_c(parse_file(src)))
    outputs = []
    for name, c in (("orig", src), ("printed", printed)):
        r = gcc(["-std=c11", "-fopenmp", "-Wall", "-Werror", "-O1", str(c), "-lm", "-o", str(tmp_path / name)],
                tmp_path)
        assert r.returncode == 0, r.stderr
        outputs.append(subprocess.run([str(tmp_path / name)], capture_output=True, text=True).stdout)
    assert outputs[0] == outputs[1] and outputs[0].strip()
    assert to_c(parse_text(printed.read_text(), str(printed))) == printed.read_text()


def test_real_world_constructs_are_modelled(tmp_path: Path) -> None:
    prog = parse_file(ROOT / "tests" / "data" / "realworld.c")
    kinds = {type(n).__name__ for _, n in walk(prog)}
    assert {"Member", "While", "DoWhile", "Switch", "Case", "Return", "GenericFor", "StructT", "EnumT",
            "Ternary", "Cast", "SizeofType", "InitList"} <= kinds
    assert not [n for _, n in walk(prog) if isinstance(n, (ir.Opaque, ir.OpaqueExpr))]
    simd = [n for _, n in walk(prog) if isinstance(n, ir.For) and n.pragmas]
    assert simd and simd[0].pragmas == ("omp simd",) and simd[0].mode == "simd"
    assert prog.includes[:2] == ("#include <math.h>", "#include <stdint.h>")


def test_standard_macros_survive_unexpanded() -> None:
    text = "#include <math.h>\n#include <stdlib.h>\n\nvoid f(float *x, float **p) {\n  x[0] = -INFINITY;\n  *p = NULL;\n}\n"
    assert to_c(parse_text(text)) == text


def test_unmodelled_constructs_travel_verbatim() -> None:
    text = "_Static_assert(sizeof(int) == 4, \"int\");\nint old(a)\nint a;\n{\n  return a;\n}\n"
    printed = to_c(parse_text(text))
    opaque = [i for i in parse_text(text).items if isinstance(i, ir.Opaque)]
    assert len(opaque) == 2
    assert "_Static_assert" in printed and "int a;" in printed
    assert to_c(parse_text(printed)) == printed


def test_contract_clauses_are_kept() -> None:
    text = ('#include <otp.h>\n\nvoid f(int n, float *x) {\n  __requires("n >= 1");\n  __writes("x ~> Matrix1(n)");\n'
            '  for (int i = 0; i < n; i++) {\n    __xwrites("&x[i] ~> Cell");\n    x[i] = 0.0f;\n  }\n}\n')
    prog = parse_text(text)
    f = prog.functions()[0]
    assert [c.kind for c in f.contract] == ["requires", "writes"]
    loop = f.body.stmts[0]
    assert isinstance(loop, ir.For) and loop.contract[0].text == "&x[i] ~> Cell"
    assert to_c(prog) == text


def test_inclusive_bounds_print_as_written() -> None:
    text = "void f(int n, float *x) {\n  for (int j = 0; j <= n; j++) {\n    x[j] = 0;\n  }\n}\n"
    prog = parse_text(text)
    loop = prog.functions()[0].body.stmts[0]
    assert isinstance(loop, ir.For) and loop.stop == ir.Binop("+", ir.Var("n"), ir.Const("1"))
    assert to_c(prog) == text


def test_loop_that_writes_its_index_is_not_canonical() -> None:
    prog = parse_text("void f(int n) {\n  for (int i = 0; i < n; i++) {\n    i += 2;\n  }\n}\n")
    assert isinstance(prog.functions()[0].body.stmts[0], ir.GenericFor)


def test_precedence_round_trips() -> None:
    text = ("int f(int a, int b, int c) {\n  int x = (a + b) * c - (a - (b - c)) + -(-a);\n"
            "  x = a << (b + c) | (a & b) == c;\n  x = a ? b : c ? a : b;\n  return (a, b);\n}\n")
    prog = parse_text(text)
    assert parse_text(to_c(prog)) == prog


@pytest.mark.parametrize("src, where, words", [
    ("void f(int n) { int x = ; }\n", ":1:25:", "Invalid expression"),
    ("void f() {\n  int a\n  a = 2;\n}\n", ":3:3:", "syntax error before 'a'"),
    ("#include <nothere.h>\nvoid f(void) {}\n", ":1:10:", "nothere.h"),
])
def test_syntax_errors_have_a_location(src: str, where: str, words: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.c"
    path.write_text(src)
    with pytest.raises(ParseError) as e:
        parse_file(path)
    msg = str(e.value)
    assert msg.startswith(str(path) + where) and words in msg


def test_cli_print_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.c"
    bad.write_text("void f(int n) { int x = ; }\n")
    r = subprocess.run([sys.executable, "-m", "optitrust_py", "print", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert f"{bad}:1:25: error:" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "optitrust_py", "print", str(tmp_path / "none.c")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "cannot read" in r.stderr


# Sizes that satisfy every contract's requires, per function.
_SIZES = {
    "matmul": {"M": 5, "N": 7, "K": 6}, "softmax": {"R": 3, "C": 9}, "rmsnorm": {"R": 3, "C": 9},
    "attention": {"H": 2, "S": 7, "D": 5}, "matvec": {"N": 9, "D": 4, "n": 9, "d": 4},
    "gqa_decode": {"H": 4, "KVH": 2, "D": 6, "SMAX": 8, "pos": 5},
    "rmsnorm_vec": {"n": 9}, "softmax_vec": {"n": 9},
    "transformer_token": {"L": 2, "dim": 8, "hidden": 12, "H": 4, "KVH": 2, "SMAX": 6, "pos": 3},
    "transformer_prefill": {"T": 3, "L": 2, "dim": 8, "hidden": 12, "H": 4, "KVH": 2, "SMAX": 6},
    "moe": {"T": 3, "dim": 8, "hidden": 12, "E": 4, "K": 2},
}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_printed_sources_compute_what_the_originals_compute(path: Path, ck) -> None:  # type: ignore[no-untyped-def]
    from optitrust_py.contract import evaluate
    from optitrust_py.spec import parse_spec_file

    contracts = parse_spec_file(ROOT / "specs" / f"{path.stem}.spec")
    printed = to_c(parse_file(path))
    for name, contract in contracts.items():
        sizes = _SIZES.get(name) or _SIZES[path.stem]
        args = []
        for p in contract.params:
            res = contract.resource_of(p)
            if res is None:
                args.append(sizes[p])
            else:
                n = 1
                for d in res.shape.dims:
                    n *= evaluate(d, sizes)
                args.append(ck.floats(n))
        want = ck.run_text(path.read_text(), path.name, name, args)
        got = ck.run_text(printed, path.name, name, args)
        assert want == got, f"{name}: printed code computes something else"
        assert any(w.strip(b"\0") for w in want), f"{name}: computed nothing"
