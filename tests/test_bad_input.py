"""Bad input gets a one-paragraph message with its location and an exit
status (2 bad input, 1 a failed check), never a traceback, and never a
half-written `out/` folder (issue 8, "Bad input, clear errors").

Items of the issue's list already covered in tests/test_cli.py (not
repeated here): unparsable C in a script (`test_c_syntax_error`), a target
that matches nothing (`test_target_matching_nothing_keeps_earlier_steps`),
a script that raises (`test_script_raising`), tile size 0
(`test_tile_size_zero_refused`), a located spec syntax error
(`test_spec_error_is_located`). Each test below runs the real `otp`
command as a subprocess (`otp` of test_cli), except the one that makes a
write fail, which runs it in this process."""
from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from test_cli import MATMUL_C, ROOT, assert_clean_error, no_temporaries, otp, script, write

FILL_C = """
    void fill(int n, float *x) {
      for (int i = 0; i < n; i++) {
        x[i] = 2.0f * i;
      }
      int k = 0;
      while (k < n) {
        x[k] += 1.0f;
        k++;
      }
    }
"""
FILL_SPEC = """
    fill(n, x):
      requires n >= 1
      modifies x ~> Matrix1(n)
"""


def otp_env(env: dict[str, str], *args: Any) -> subprocess.CompletedProcess:
    """`otp ARGS` with `env` added to (or, for PATH, replacing part of) the environment."""
    full = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR", "CLICOLOR_FORCE")}
    full.update(env, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "optitrust_py", *map(str, args)], cwd=str(ROOT),
                          capture_output=True, text=True, env=full, timeout=120)


@pytest.fixture
def fill(tmp_path: Path) -> Path:
    """fill.c with its contract, in tmp_path; returns the C file."""
    write(tmp_path / "fill.spec", FILL_SPEC)
    return write(tmp_path / "fill.c", FILL_C)


# ====================================================================== C that does not parse


def test_print_unparsable_c(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.c", """
        void f(int n, float *x) {
          for (int i = 0; i < n; i++) {
            x[i] = 1.0f
          }
        }
    """)
    err = assert_clean_error(otp("print", bad))
    assert re.match(rf"{re.escape(str(bad))}:4:\d+: error: syntax error before '}}'", err), err
    assert err.count("\n") == 1


def test_preprocessor_error_is_located(tmp_path: Path) -> None:
    """A source that needs cpp (#define) and includes a header that does not exist."""
    bad = write(tmp_path / "pp.c", """
        #define N 4
        #include "missing.h"
        float f(void) { return N; }
    """)
    err = assert_clean_error(otp("print", bad))
    assert err.startswith(f"{bad}:2:10: error: missing.h: No such file or directory"), err


# ====================================================================== contracts that do not fit the C


def test_spec_names_a_missing_function(tmp_path: Path, fill: Path) -> None:
    spec = write(tmp_path / "typo.spec", FILL_SPEC.replace("fill(", "fil("))
    s = script(tmp_path / "typo.py", "", c_file=fill, load_args=", spec='typo.spec'")
    err = assert_clean_error(otp("run", s, "--out", tmp_path / "o"))
    assert err == f"{spec}:1:1: error: contract for 'fil' but {fill} has no function 'fil' (its functions: fill)\n"


def test_spec_with_wrong_arity(tmp_path: Path, fill: Path) -> None:
    spec = write(tmp_path / "arity.spec", """
        fill(n):
          requires n >= 1
    """)
    s = script(tmp_path / "arity.py", "", c_file=fill, load_args=", spec='arity.spec'")
    err = assert_clean_error(otp("run", s, "--out", tmp_path / "o"))
    assert err == (f"{spec}:1:1: error: 'fill' has 2 parameters in the C file but 1 in the spec header: "
                   f"spec (n), C (n, x)\n")


# ====================================================================== nonsense arguments


@pytest.mark.parametrize("call, words", [
    ("loop.unroll('matmul > for k', -2)", "the factor must be a positive integer (or None to unroll fully), got -2"),
    ("loop.unroll('matmul > for k', 0)", "the factor must be a positive integer (or None to unroll fully), got 0"),
    ("loop.tile('matmul > for i', 2.5)", "the tile size must be a positive integer, got 2.5"),
    ("loop.tile('matmul > for i', '16')", "the tile size must be a positive integer, got '16'"),
    ("loop.tile('matmul > for i', 16, mode='sometimes')", "mode must be one of"),
])
def test_nonsense_arguments_are_refused(tmp_path: Path, call: str, words: str) -> None:
    err = assert_clean_error(otp("apply", MATMUL_C, call, "--out", tmp_path))
    assert re.match(rf"{re.escape(str(MATMUL_C))}:\d+:\d+: error: step 1 {re.escape(call)} \(line \d+ of the code "
                    rf"before the step\) failed: loop\.\w+: ", err), err
    assert words in err
    assert not (tmp_path / "matmul" / "01_loop_unroll.c").exists()


def test_split_outside_the_range_is_refuted_at_level_2(tmp_path: Path) -> None:
    """A split point outside the loop's range is not a structural error: the
    step's in_range obligation is what makes it invalid, and level 2 refutes
    it (a failed check: status 1), with a counterexample."""
    err = assert_clean_error(otp("apply", MATMUL_C, "loop.split('matmul > for k', -3)", "--level", "2",
                                 "--out", tmp_path), status=1)
    assert "step 1 loop.split('matmul > for k', -3): level2 failed: in_range refuted: 0 <= -3 <= K" in err, err


# ====================================================================== constructs otp does not transform


@pytest.mark.parametrize("call, words", [
    ("loop.tile(\"fill > instr 'while'\", 2)", "\"fill > instr 'while'\" must name a loop; candidates:\n"
                                              "  line    6: 'while (k < n) {'"),
    ("loop.swap(\"fill > instr 'k++'\")", "\"fill > instr 'k++'\" must name a loop; candidates:\n"
                                         "  line    8: 'k++;'"),
])
def test_unsupported_construct_targeted(tmp_path: Path, fill: Path, call: str, words: str) -> None:
    err = assert_clean_error(otp("apply", fill, call, "--out", tmp_path))
    assert err.startswith(f"error: step 1 {call} (line ") and words in err, err


def test_opaque_code_cannot_be_targeted(tmp_path: Path) -> None:
    """`_Generic` is outside the IR: kept verbatim (printed back as is) and
    never a target: the candidates listed are the statements around it."""
    src = write(tmp_path / "gen.c", """
        void gen(float *x) {
          x[0] = _Generic(x[0], float: 1.0f, default: 2.0f);
        }
    """)
    printed = otp("print", src)
    assert printed.returncode == 0 and "_Generic(x[0], float: 1.0f, default: 2.0f)" in printed.stdout
    call = "variable.bind(\"gen > expr '_Generic(x[0], float: 1.0f, default: 2.0f)'\", 'v')"
    err = assert_clean_error(otp("apply", src, call, "--out", tmp_path / "o"))
    assert "expr '_Generic(x[0], float: 1.0f, default: 2.0f)' matches nothing in gen; candidates:" in err
    assert "line    2: 'x[0] = _Generic(x[0], float: 1.0f, default: 2.0f);'" in err


# ====================================================================== gcc missing or failing


@pytest.fixture
def no_gcc_path(tmp_path: Path) -> str:
    """A PATH with no gcc on it (the Python interpreter is run by its full path)."""
    empty = tmp_path / "bin"
    empty.mkdir()
    return str(empty)


@pytest.mark.parametrize("extra", [[], ["--exec"]])
def test_gcc_missing_for_checks(tmp_path: Path, no_gcc_path: str, extra: list[str]) -> None:
    r = otp_env({"PATH": no_gcc_path}, "run", "scripts/softmax.py", "--out", tmp_path, "--quiet", *extra)
    err = assert_clean_error(r)
    assert err == ("error: gcc is needed for this check and 'gcc' was not found on PATH "
                   "(install gcc, or set OTP_CC to a gcc-compatible compiler)\n")
    no_temporaries(tmp_path)


def test_gcc_missing_for_preprocessing(tmp_path: Path, no_gcc_path: str) -> None:
    src = write(tmp_path / "def.c", """
        #define N 4
        float f(void) { return N; }
    """)
    err = assert_clean_error(otp_env({"PATH": no_gcc_path}, "print", src))
    assert "gcc is needed to preprocess this file (it has #define/#if directives) and was not found on PATH" in err


@pytest.fixture
def crashing_gcc(tmp_path: Path) -> str:
    """A 'gcc' that crashes like an internal compiler error (exit status 4)."""
    gcc = tmp_path / "crashing-gcc"
    gcc.write_text("#!/bin/sh\necho 'gcc: internal compiler error: Segmentation fault' >&2\nexit 4\n")
    gcc.chmod(0o755)
    return str(gcc)


def test_gcc_failing_to_build_for_exec(tmp_path: Path, crashing_gcc: str) -> None:
    r = otp_env({"OTP_CC": crashing_gcc, "OTP_BUILD_CACHE": str(tmp_path / "cache")}, "check",
                "scripts/softmax.py", "--exec", "--no-color")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stdout + r.stderr
    assert "error: gcc could not check " in r.stdout and "it stopped with exit status 4\ngcc: internal compiler " \
        "error: Segmentation fault" in r.stdout, r.stdout


def test_gcc_crashing_in_level_1_is_a_tool_error(tmp_path: Path, crashing_gcc: str) -> None:
    r = otp_env({"OTP_CC": crashing_gcc}, "run", "scripts/softmax.py", "--out", tmp_path, "--quiet")
    err = assert_clean_error(r, status=2)
    assert "internal compiler error" in err and "level1 failed" not in err


# ====================================================================== Z3 out of work


def test_solver_limit_reached_is_unknown_not_proved(tmp_path: Path) -> None:
    """`--solver-limit 1` leaves Z3 no work: every query is unknown, named as
    such, and the check fails (status 1); the default limit proves it."""
    call = "parallel.parallel_for('matmul > for i')"
    err = assert_clean_error(otp("apply", MATMUL_C, call, "--level", "2", "--solver-limit", "1",
                                 "--out", tmp_path), status=1)
    assert (f"step 1 {call}: level2 failed: parallel unknown: distinct iterations of for i (line 2) touch "
            "disjoint cells: Z3 could not decide whether 'C[i * N + j]' (line 6) writes C and 'C[i * N + j]' "
            "(line 6) writes C touch the same cell (max. resource limit exceeded)") in err, err
    assert otp("apply", MATMUL_C, call, "--level", "2", "--out", tmp_path).returncode == 0


def test_solver_limit_must_be_positive() -> None:
    r = otp("check", "scripts/softmax.py", "--solver-limit", "0")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "Invalid value for '--solver-limit': must be a positive number of Z3 work units, got 0" in r.stderr


def test_a_bad_script_among_several_fails_before_any_is_checked(tmp_path: Path) -> None:
    """`otp check a.py --json out.json` names out.json as a second script:
    it is refused at once, not after a.py's level 3."""
    r = otp("check", "scripts/attention.py", "--level", "3", "--json", str(tmp_path / "out.json"))
    assert "no such script: " in assert_clean_error(r)
    assert r.stdout == ""


# ====================================================================== no half-written out/


def _main(monkeypatch: pytest.MonkeyPatch, *args: Any) -> int:
    """Run the `otp` entry point in this process; its exit status."""
    from optitrust_py import cli

    monkeypatch.setattr(sys, "argv", ["otp", *map(str, args)])
    try:
        cli.main()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_failure_while_writing_keeps_the_previous_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The disk fills up while the run's files are written (after the step
    files, at trace.json): the previous run's folder is left whole, no
    temporary is left behind, and the error is a message, not a traceback."""
    out = tmp_path / "o"
    s = script(tmp_path / "tiled.py", 'loop.tile("matmul > for i", 16, mode="min")\n')
    assert _main(monkeypatch, "run", s, "--out", out, "--quiet") == 0
    before = {p.name: p.read_text() for p in (out / "tiled").iterdir()}
    real = Path.write_text

    def disk_full(self: Path, text: str, *a: Any, **k: Any) -> int:
        if self.name == "trace.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, text, *a, **k)

    monkeypatch.setattr(Path, "write_text", disk_full)
    write(s, 'from optitrust_py.script import load\nfrom transformations import loop\n'
             f'load({str(MATMUL_C)!r})\nloop.tile("matmul > for j", 8, mode="min")\n')
    capsys.readouterr()
    status = _main(monkeypatch, "run", s, "--out", out, "--quiet")
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith(f"error: cannot write the run's files into {out / 'tiled'}: ") and "No space left" in err
    assert {p.name: p.read_text() for p in (out / "tiled").iterdir()} == before
    no_temporaries(out)

