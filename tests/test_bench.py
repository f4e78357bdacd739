"""`otp bench`: the comparison measure, and the command end to end (through
the CLI's `main` in this process, which saves starting Python for each run;
the measuring process is a real subprocess), on small sizes with few timed
calls so the tests stay fast: its JSON and table, a final program that
computes something else (exit 1), a crash, and every refusal (exit 2, no
traceback)."""
from __future__ import annotations

import importlib.util
import io
import json
import math
import os
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from rich.console import Console

from optitrust_py.bench import TOLERANCE, BenchReport, Timing, print_report, relative_error
from optitrust_py.cli import main

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"matmul": "M=24,N=20,K=32", "softmax": "R=6,C=50", "rmsnorm": "R=6,C=50"}
MATMUL = f"""
from optitrust_py.script import bench, load
from transformations import loop

load({str(ROOT / "c_sources" / "matmul.c")!r})
bench("matmul", sizes={{"M": 24, "N": 20, "K": 32}}, flops="2*M*N*K",
      numpy="C = A.reshape(M, K) @ B.reshape(K, N)")
loop.fission("matmul > for j > after 'C[i * N + j] = 0.0f'")
loop.swap("matmul > for j#2")
loop.tile("matmul > for i", 16, mode="min")
"""


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def otp(capsys, monkeypatch):
    """`otp(*args)`: the `otp` command's exit status and output."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("COLUMNS", "200")
    for name in ("FORCE_COLOR", "NO_COLOR", "CLICOLOR_FORCE"):
        monkeypatch.delenv(name, raising=False)

    def run(*args: object) -> Result:
        monkeypatch.setattr(sys, "argv", ["otp", *map(str, args)])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out = capsys.readouterr()
        return Result(code, out.out, out.err)
    return run


def refused(r: Result, status: int = 2) -> str:
    """Exit `status` with a message on stderr and no traceback."""
    assert r.returncode == status, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.strip() and "Traceback" not in r.stderr + r.stdout and "internal error" not in r.stderr
    return r.stderr


# ---------------------------------------------------------------- the measure


def test_relative_error_is_relative_to_the_largest_magnitude():
    ref = np.array([100.0, -2.0, 0.5], np.float32)
    assert relative_error(ref, ref.copy()) == (0.0, 0)
    err, at = relative_error(ref, np.array([100.0, -2.0, 0.6], np.float32))
    assert at == 2 and err == pytest.approx(0.1 / 100, rel=1e-5)  # small elements are judged at the output's scale
    err, at = relative_error(ref, np.array([100.01, -2.0, 0.5], np.float32))
    assert at == 0 and err == pytest.approx(1e-4, rel=1e-2) and err > TOLERANCE


def test_relative_error_nan_and_zero():
    nan = np.nan
    assert relative_error(np.array([1.0, nan]), np.array([1.0, nan])) == (0.0, 0)
    assert relative_error(np.array([1.0, 2.0]), np.array([1.0, nan])) == (math.inf, 1)
    assert relative_error(np.array([1.0, nan]), np.array([1.0, 2.0])) == (math.inf, 1)
    assert relative_error(np.zeros(3), np.array([0.0, 1e-30, 0.0])) == (math.inf, 1)
    assert relative_error(np.array([-0.0]), np.array([0.0]))[0] == 0.0


def test_reassociated_sum_passes_a_wrong_element_does_not():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(-1, 1, (64, 1024)).astype(np.float32), rng.uniform(-1, 1, 1024).astype(np.float32)
    in_order = np.zeros(64, np.float32)
    for k in range(1024):  # the naive loop's order
        in_order += a[:, k] * b[k]
    blocked = (a.reshape(64, 16, 64) * b.reshape(16, 64)).sum(axis=2).sum(axis=1)  # another order
    assert 0 < relative_error(in_order, blocked)[0] <= TOLERANCE
    wrong = blocked.copy()
    wrong[5] += 1e-3 * np.abs(in_order).max()
    assert relative_error(in_order, wrong) == (pytest.approx(1e-3, rel=0.05), 5)


def test_table_flags_noisy_timings():
    steady, noisy = Timing((1.0, 1.1, 1.2), 10**9, "flops"), Timing((0.1, 0.9, 1.0), 10**9, "flops")
    report = BenchReport("f", {"N": 4}, 2, 10**9, "flops", None, TOLERANCE, {"original": 0.0, "optimized": 0.0},
                         {"original": steady, "optimized": noisy})
    out = io.StringIO()
    print_report(Console(file=out, width=200, no_color=True), report, ("-O3",))
    text = out.getvalue()
    assert "f  N=4  threads 2  gcc -O3" in text
    assert "│ optimized │ 900 ms │ 100 ms │   1 s │    1.11 │       1.22× │" in text
    assert "⚠ optimized: the median is more than 2× the fastest call" in text and "⚠ original" not in text


# ---------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def matmul(tmp_path_factory) -> Path:
    """A script on the real matmul kernel with three steps (fission, swap, tile)."""
    path = tmp_path_factory.mktemp("bench") / "matmul_bench.py"
    path.write_text(MATMUL)
    return path


def test_json_against_numpy(otp, matmul):
    r = otp("bench", matmul, "--repeats", "2", "--json", "--compare", "numpy")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["script"] == str(matmul) and data["target"] == "cpu" and data["ok"] is True
    assert data["function"] == "matmul" and data["sizes"] == {"M": 24, "N": 20, "K": 32}
    assert data["threads"] == os.cpu_count() and data["tolerance"] == TOLERANCE
    for variant in ("baseline", "optimized", "numpy"):
        t = data[variant]
        assert 0 < t["min_s"] <= t["median_s"] <= t["max_s"] and t["repeats"] == 2
        assert t["gflops"] == pytest.approx(2 * 24 * 20 * 32 / t["median_s"] / 1e9)
    assert data["speedup"] == pytest.approx(data["baseline"]["median_s"] / data["optimized"]["median_s"])
    assert data["ratio_vs_numpy"] == pytest.approx(data["numpy"]["median_s"] / data["optimized"]["median_s"])
    # the steps keep every float operation in order, but gcc -O3 contracts
    # a * b + c into FMAs where it sees fit, not always alike in both programs
    assert data["max_rel_err"] <= 1e-6
    assert 0 < data["numpy"]["max_rel_err"] <= TOLERANCE  # BLAS sums in another order


@pytest.mark.parametrize("name", sorted(SMALL))
def test_scripts_declare_a_benchmark_that_numpy_agrees_with(otp, name):
    r = otp("bench", f"scripts/{name}.py", "--size", SMALL[name], "--repeats", "1", "--json", "--compare", "numpy")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["ok"] is True and data["numpy"]["max_rel_err"] <= TOLERANCE
    assert ("gflops" if name == "matmul" else "gbps") in data["optimized"]


def test_table_threads_and_default_repeats(otp, matmul):
    r = otp("bench", matmul, "--size", "M=8,N=8,K=8", "--threads", "1", "--no-color")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "matmul  M=8 N=8 K=8  threads 1  gcc -O3 -march=native -fopenmp" in out
    assert re.search(r"outputs vs the original: max_rel_err optimized [0-9.e-]+ \(tolerance 1e-05\)", out)
    assert "GFLOP/s" in out and "vs original" in out and "numpy" not in out
    assert "│ original  │" in out and "│ optimized │" in out and "1.00×" in out
    assert "timed calls: original 10, optimized 10" in out  # fast kernels: DEFAULT_REPEATS


KERNEL = """
void scale(int N, const float *x, float *y) {
  for (int i = 0; i < N; i++) {
    y[i] = 2.0f * x[i];
  }
}
"""
SPEC = """
scale(N, x, y):
  requires N >= 2
  reads x ~> Matrix1(N)
  writes y ~> Matrix1(N)
"""


def kernel_script(tmp_path: Path, bench_args: str = 'sizes={"N": 1000}, bytes="8*N", numpy="y = 2 * x"',
                  final: Optional[str] = None) -> Path:
    """A script on the `scale` kernel; with `final`, the script swaps in that
    C text as the program to benchmark (as a wrong transformation would)."""
    (tmp_path / "k.c").write_text(KERNEL)
    (tmp_path / "k.spec").write_text(SPEC)
    lines = ["from optitrust_py.script import bench, load", 'load("k.c", spec="k.spec")',
             f'bench("scale", {bench_args})']
    if final is not None:
        (tmp_path / "final.c").write_text(textwrap.dedent(final))
        lines = ["from optitrust_py.frontend import parse_file", "from optitrust_py.session import current_session",
                 *lines, f"current_session().program = parse_file({str(tmp_path / 'final.c')!r})"]
    path = tmp_path / "bench_scale.py"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_final_program_that_computes_other_values_fails(otp, tmp_path):
    script = kernel_script(tmp_path, final=KERNEL.replace("  }\n}", "  }\n  y[N / 2] += 1e-3f;\n}"))
    err = refused(otp("bench", script, "--no-color"), 1)
    assert "the optimized program computes other values than the original program: output y has max_rel_err" in err
    assert "worst at y[500]" in err and "tolerance 1e-05" in err
    r = otp("bench", script, "--json")
    assert r.returncode == 1
    data = json.loads(r.stdout)
    assert data["ok"] is False and data["max_rel_err"] > TOLERANCE and "y[500]" in data["error"]
    assert "baseline" not in data  # nothing is timed once the check failed


def test_tolerance_can_be_raised(otp, tmp_path):
    script = kernel_script(tmp_path, 'sizes={"N": 1000}, bytes="8*N", tolerance=1e-2',
                           final=KERNEL.replace("  }\n}", "  }\n  y[N / 2] += 1e-3f;\n}"))
    r = otp("bench", script, "--json", "--repeats", "1")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["tolerance"] == 1e-2 and TOLERANCE < data["max_rel_err"] <= 1e-2


def test_a_crash_names_the_program(otp, tmp_path):
    script = kernel_script(tmp_path, final=KERNEL.replace("y[i]", "y[i * 1000000]"))
    err = refused(otp("bench", script), 1)
    assert "killed by SIGSEGV while running the optimized program" in err


def test_a_wrong_numpy_formulation(otp, tmp_path):
    err = refused(otp("bench", kernel_script(tmp_path, 'sizes={"N": 100}, bytes="8*N", numpy="y = 3 * x"'),
                      "--compare", "numpy"), 1)
    assert "the numpy formulation computes other values than the original program: output y" in err
    err = refused(otp("bench", kernel_script(tmp_path, 'sizes={"N": 100}, bytes="8*N", numpy="z = 2 * x"'),
                      "--compare", "numpy"))
    assert "must leave the output 'y' (100 elements) in a variable of that name; it left nothing" in err
    err = refused(otp("bench", kernel_script(tmp_path, 'sizes={"N": 100}, bytes="8*N", numpy="x *= 2; y = x"'),
                      "--compare", "numpy"))
    assert "numpy= formulation raised ValueError" in err and "read-only" in err


@pytest.mark.parametrize("bench_args, message", [
    ('sizes={"N": 10}', "give exactly one of flops="),
    ('sizes={"N": 10}, flops="2*N", bytes="8*N"', "give exactly one of flops="),
    ('sizes={"N": 10}, flops="2*N", numpy="y = "', "the numpy= statement is not valid Python"),
    ('sizes={"N": 10}, flops="2 * * N"', "bench_scale.py:3"),
    ('sizes={"N": 1}, flops="2*N"', "the sizes break the requirement 'N >= 2' of scale (N = 1)"),
    ('sizes={"N": 10, "Q": 3}, flops="2*N"', "bench(sizes=...): 'Q' is not a size of scale (its scalar parameters: N)"),
    ('sizes={}, flops="2*N"', "scale needs sizes for N"),
    ('sizes={"N": 10}, flops="2*N*D"', "unknown name 'D'"),
])
def test_bad_declarations(otp, tmp_path, bench_args, message):
    assert message in refused(otp("bench", kernel_script(tmp_path, bench_args)))


@pytest.mark.parametrize("args, message", [
    (["--size", "M=0"], "the sizes break the requirement 'M >= 1' of matmul (M = 0)"),
    (["--size", "m=8"], "--size: 'm' is not a size of matmul"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--repeats", "0"], "--repeats must be at least 1"),
])
def test_refusals(otp, matmul, args, message):
    assert message in refused(otp("bench", matmul, *args))


def test_a_script_without_bench(otp, tmp_path):
    script = tmp_path / "plain.py"
    script.write_text("\n".join(ln for ln in MATMUL.splitlines() if not ln.startswith(("bench(", "      numpy="))))
    assert f"{script} declares no benchmark: add bench(" in refused(otp("bench", script))


def test_compare_without_a_formulation(otp, tmp_path):
    script = kernel_script(tmp_path, 'sizes={"N": 10}, bytes="8*N"')
    assert "--compare numpy: the script's bench() gives no numpy= formulation" in \
        refused(otp("bench", script, "--compare", "numpy"))


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed")
def test_compare_torch_without_torch(otp, matmul):
    err = refused(otp("bench", matmul, "--compare", "torch"))
    assert "--compare torch needs torch, which is not installed in this Python" in err and "pip install torch" in err


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_compare_torch(otp, tmp_path):
    script = tmp_path / "torch_bench.py"
    script.write_text(MATMUL.replace("numpy=", "torch="))
    r = otp("bench", script, "--repeats", "2", "--json", "--compare", "torch")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["torch"]["repeats"] == 2 and 0 <= data["torch"]["max_rel_err"] <= TOLERANCE
    assert data["ratio_vs_torch"] == pytest.approx(data["torch"]["median_s"] / data["optimized"]["median_s"])


def test_a_script_error_is_reported_as_usual(otp, tmp_path):
    script = kernel_script(tmp_path, 'sizes={"N": 10}, bytes="8*N"')
    script.write_text(script.read_text() + "from transformations import loop\nloop.tile('scale > for j', 4)\n")
    err = refused(otp("bench", script))
    assert "bench_scale.py:5" in err and "loop.tile" in err


# ---------------------------------------------------------------- prepared inputs and variants

PREPARED = """
#include <otp.h>
void prep(int N, const float *x, float *t) {
  __requires("N >= 2");
  __reads("x ~> Matrix1(N)");
  __writes("t ~> Matrix1(N)");
  for (int i = 0; i < N; i++) {
    t[i] = 2.0f * x[i];
  }
}

void scale_pre(int N, const float *t, float *y) {
  __requires("N >= 2");
  __reads("t ~> Matrix1(N)");
  __writes("y ~> Matrix1(N)");
  for (int i = 0; i < N; i++) {
    y[i] = t[i];
  }
}
""" + KERNEL


def prepared_script(tmp_path: Path, extra: str = 'setup="prep(N, x, t)", call="scale_pre(N, t, y)", '
                    'variants={"ending": ending, "ref": "ref.c"}', ref: str = PREPARED) -> Path:
    """A script whose final program times `scale_pre` on `t` that `prep`
    prepares from x, next to a script ending and a C file variant."""
    script = kernel_script(tmp_path, 'sizes={"N": 1000}, bytes="8*N", ' + extra, final=PREPARED)
    (tmp_path / "ref.c").write_text(ref)
    ending = "from transformations import loop\ndef ending():\n    loop.tile('scale > for i', 8, mode='min')\n"
    script.write_text(ending + script.read_text())
    return script


def test_a_kernel_on_prepared_inputs_next_to_variants(otp, tmp_path):
    """The final program is timed through call= after its setup (had prep
    not run, scale_pre would copy zeros and the check would fail), the
    script ending on the original's function, the C file through call=."""
    r = otp("bench", prepared_script(tmp_path), "--repeats", "2", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["ok"] is True and data["max_rel_err"] == 0
    assert sorted(data["variants"]) == ["ending", "ref"]
    for name, t in data["variants"].items():
        assert t["max_rel_err"] == 0 and t["repeats"] == 2 and 0 < t["min_s"] <= t["median_s"]
        assert data[f"ratio_vs_{name}"] == pytest.approx(t["median_s"] / data["optimized"]["median_s"])
    out = otp("bench", prepared_script(tmp_path), "--repeats", "1", "--no-color").stdout
    assert "vs ending" in out and "vs ref" in out and "│ ending " in out and "│ ref " in out
    assert "max_rel_err optimized 0, ending 0, ref 0" in out


def test_a_variant_that_computes_other_values_fails(otp, tmp_path):
    script = prepared_script(tmp_path, ref=PREPARED.replace("y[i] = t[i];", "y[i] = t[i] + 1e-3f;"))
    err = refused(otp("bench", script), 1)
    assert "the ref program computes other values than the original program: output y" in err


@pytest.mark.parametrize("extra, message", [
    ('setup="prep(N, x, t)"', "setup= prepares inputs for call=; give the call that uses them"),
    ('call="scale_pre(N, t + 1, y)"', "call= is a C call whose arguments are names"),
    ('setup="prep(N, x, t)", call="scale_pre(N, u, y)"',
     "scale_pre(N, u, y) passes 'u', which is neither a parameter of scale nor prepared by setup="),
    ('setup="prep(N, u, t)", call="scale_pre(N, t, y)"',
     "setup prep(N, u, t) reads 'u', which is neither a parameter of scale nor written by an earlier setup call"),
    ('setup="prep(N, x, t)", call="nothere(N, t, y)"', "the final program defines no function 'nothere'"),
    ('setup="prep(N, x, t)", call="scale_pre(N, t)"', "scale_pre(N, t) passes 2 arguments; scale_pre takes 3"),
    ('variants={"optimized": ending}', "a variant's name is an identifier other than original, optimized"),
    ('variants={"ref": "missing.c"}', "variant 'ref': no such C file"),
    ('variants={"ref": 3}', "variant 'ref' is a script ending (a function of the script) or the path of a C file"),
    ('variants=["ref.c"]', "variants= maps names to script endings or C files"),
    ('variants={"bad": lambda: 1 / 0}', "bench(): variant 'bad' raised ZeroDivisionError: division by zero"),
    ('variants={"bad": lambda: loop.tile("scale > for k", 2)}', "bench(): variant 'bad': step 1 loop.tile"),
])
def test_bad_prepared_inputs_and_variants(otp, tmp_path, extra, message):
    assert message in refused(otp("bench", prepared_script(tmp_path, extra)))


def test_a_variant_whose_kernel_takes_other_types(otp, tmp_path):
    ref = PREPARED.replace("const float *t, float *y", "const double *t, float *y")
    err = refused(otp("bench", prepared_script(tmp_path, ref=ref)))
    assert "the ref program defines scale_pre but no scale_pre taking the final program's parameter types" in err
