"""gcc helpers: syntax check, cached builds, parallel builds."""
from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import pytest

from optitrust_py import build
from optitrust_py.build import BuildFailed, compile_exe, compile_many, compile_shared, find_gcc, syntax_check
from optitrust_py.errors import ToolError

ROOT = Path(__file__).resolve().parent.parent


def test_find_gcc():
    assert Path(find_gcc()).name.startswith(("gcc", "cc")) or "gcc" in find_gcc()


def test_find_gcc_missing(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("OTP_CC", raising=False)
    with pytest.raises(ToolError, match="gcc .*not found on PATH"):
        find_gcc()


@pytest.mark.parametrize("name", ["matmul.c", "attention.c", "transformer.c"])
def test_syntax_check_real_kernels(name):
    text = (ROOT / "c_sources" / name).read_text()
    assert syntax_check(text, name) == []


def test_syntax_check_reports_errors_under_the_given_name():
    text = "void f(int n, float *x) {\n  int unused;\n  for (int i = 0; i < n; i++) x[i] = 0;\n}\n"
    diags = syntax_check(text, "kernels/f.c")
    assert len(diags) == 1
    assert diags[0].startswith("kernels/f.c:2:7: error: unused variable 'unused'")
    assert "otp-input" not in "".join(diags)


def test_syntax_check_two_errors_are_two_entries():
    text = "void f(void) {\n  undefined_a();\n  undefined_b();\n}\n"
    diags = syntax_check(text, "f.c")
    assert [d.split(":")[1] for d in diags] == ["2", "3"]


def test_contract_clauses_compile_with_otp_h():
    text = ('#include <otp.h>\n'
            'void scale(int n, float *x) {\n'
            '  __requires("n >= 1");\n'
            '  __modifies("x ~> Matrix1(n)");\n'
            '  for (int i = 0; i < n; i++) {\n'
            '    __xmodifies("&x[i] ~> Cell");\n'
            '    x[i] *= 2.0f;\n'
            '  }\n'
            '}\n')
    assert syntax_check(text, "scale.c") == []


def test_openmp_pragmas_pass_under_werror():
    text = ("void add(int n, float *x) {\n"
            "#pragma omp parallel for\n"
            "  for (int i = 0; i < n; i++) x[i] += 1.0f;\n"
            "}\n")
    assert syntax_check(text, "add.c") == []


def test_compile_exe_runs_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("OTP_BUILD_CACHE", str(tmp_path))
    text = '#include <math.h>\n#include <stdio.h>\nint main(void) { printf("%.1f\\n", sqrt(16.0)); return 0; }\n'
    exe = compile_exe(text, "hello.c")
    assert exe.parent == tmp_path
    assert subprocess.run([str(exe)], capture_output=True, text=True).stdout == "4.0\n"
    real_run_gcc = build._run_gcc

    def no_gcc(*a, **k):
        raise AssertionError("gcc ran again for a cached build")

    monkeypatch.setattr(build, "_run_gcc", no_gcc)
    assert compile_exe(text, "hello.c") == exe
    monkeypatch.setattr(build, "_run_gcc", real_run_gcc)
    assert compile_exe(text, "hello.c", flags=("-O2",)) != exe


def test_compile_failure_names_the_source(tmp_path, monkeypatch):
    monkeypatch.setenv("OTP_BUILD_CACHE", str(tmp_path))
    with pytest.raises(BuildFailed) as e:
        compile_exe("int main(void) { return missing; }\n", "step 3")
    assert e.value.diagnostics[0].startswith("step 3:1:")
    assert "missing" in str(e.value)


def test_compile_shared_loads_with_ctypes(tmp_path, monkeypatch):
    monkeypatch.setenv("OTP_BUILD_CACHE", str(tmp_path))
    so = compile_shared("#include <math.h>\ndouble hyp(double a, double b) { return sqrt(a * a + b * b); }\n",
                        "hyp.c")
    lib = ctypes.CDLL(str(so))
    lib.hyp.restype = ctypes.c_double
    lib.hyp.argtypes = [ctypes.c_double, ctypes.c_double]
    assert lib.hyp(3.0, 4.0) == 5.0


def test_compile_many_in_parallel(tmp_path, monkeypatch):
    monkeypatch.setenv("OTP_BUILD_CACHE", str(tmp_path))
    sources = [(f"int main(void) {{ return {i}; }}\n", f"p{i}.c") for i in range(4)]
    sources.append(("int main(void) { return nope; }\n", "bad.c"))
    results = compile_many(sources, workers=3)
    for i in range(4):
        assert subprocess.run([str(results[i])]).returncode == i
    assert isinstance(results[4], BuildFailed) and results[4].diagnostics[0].startswith("bad.c:1:")


def test_sanitizers_available():
    build.check_sanitizers()
