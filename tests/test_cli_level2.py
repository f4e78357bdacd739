"""`--level 2` on the command line, in process (click's CliRunner): the
obligations of every step proved or refused with the conflict, the input
checked against its contract, the JSON of `otp check`, `trace.json`, and
the refusal of a level that does not exist."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from optitrust_py.cli import cli
from optitrust_py.errors import OtpError
from helpers import SHIFT_C, SHIFT_SPEC

ROOT = Path(__file__).resolve().parent.parent

PREFIX_C = """
    void prefix(int R, int C, float *x) {
      for (int i = 1; i < R; i++) {
        for (int j = 0; j < C; j++) {
          x[i * C + j] += x[(i - 1) * C + j];
        }
      }
    }
"""
PREFIX_SPEC = """
    prefix(R, C, x):
      requires R >= 2, C >= 1
      modifies x ~> Matrix2(R, C)
"""


@pytest.fixture(autouse=True)
def in_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scripts are named relative to the repository, as a user types them."""
    monkeypatch.chdir(ROOT)


def otp(*args: str | Path) -> Result:
    return CliRunner(env={"COLUMNS": "200"}).invoke(cli, [str(a) for a in args])


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def kernel_script(tmp_path: Path, name: str, c_text: str, spec_text: str, body: str) -> Path:
    """A script in `tmp_path` loading `<name>.c` with `<name>.spec`, then `body`."""
    write(tmp_path / f"{name}.c", c_text)
    write(tmp_path / f"{name}.spec", spec_text)
    return write(tmp_path / f"{name}_script.py",
                 "from optitrust_py.script import load\nfrom transformations import loop, parallel\n"
                 f"load({name + '.c'!r}, spec={name + '.spec'!r})\n{body}\n")


@pytest.fixture
def racy_reduction(tmp_path: Path) -> Path:
    """matmul's k loop made parallel: every k adds into the same C[i][j].
    Level 1 accepts it."""
    return write(tmp_path / "racy.py", "from optitrust_py.script import load\nfrom transformations import parallel\n"
                                       f"load({str(ROOT / 'c_sources' / 'matmul.c')!r})\n"
                                       'parallel.parallel_for("matmul > for k")\n')


def all_obligations(step: dict) -> list[dict]:
    return step["obligations"] + [o for sub in step["substeps"] for o in all_obligations(sub)]


def test_softmax_all_obligations_proved() -> None:
    r = otp("check", "scripts/softmax.py", "--level", "2", "--no-color")
    assert r.exit_code == 0, r.output
    assert "scripts/softmax.py: 2 steps, level 2, 0 obligations not proved" in r.output
    assert "✓ parallel  " in r.output
    assert " 0 refuted, 0 unknown; 0 resource problems" in r.output
    assert "input  ✓ L2 fits its contracts" in r.output


def test_every_script_is_proved_at_level_2() -> None:
    """The issue's bar: every script of scripts/ passes level 2 with no
    obligation refuted, unknown or skipped, and no resource problem."""
    scripts = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "scripts").glob("*.py"))
    r = otp("check", *scripts, "--level", "2", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert len(data["scripts"]) == len(scripts) >= 4
    for script in data["scripts"]:
        l2 = script["level2"]
        assert script["unproved_obligations"] == 0 and l2["obligations"] == l2["proved"] > 0, script["script"]
        assert l2["refuted"] == l2["unknown"] == l2["resource_problems"] == 0


def test_check_json_counts() -> None:
    r = otp("check", "scripts/softmax.py", "--level", "2", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    script = data["scripts"][0]
    l2 = script["level2"]
    assert data["level"] == 2 and script["ok"] is True and script["unproved_obligations"] == 0
    assert l2["input"]["ok"] is True and l2["input"]["obligations"] == []
    verdicts = [v for s in l2["steps"] for v in s["obligations"]]
    assert len(verdicts) == l2["obligations"] == l2["proved"] >= 2
    assert l2["refuted"] == l2["unknown"] == l2["resource_problems"] == 0
    assert {s["number"] for s in l2["steps"]} == {"1", "2"}
    for v in verdicts:
        assert v["status"] == "proved" and v["reason"] == "" and v["kind"] and v["claim"] and v["time_s"] >= 0
    assert 0 <= l2["median_obligation_s"] <= l2["max_obligation_s"] <= l2["time_s"]
    assert data["level2"]["obligations"] == l2["obligations"]


def test_composite_obligations_counted_once(tmp_path: Path) -> None:
    """matmul's loop.reorder is a composite: its obligations are its
    sub-steps', listed once in `otp check --json` as in `trace.json`."""
    r = otp("check", "scripts/matmul.py", "--level", "2", "--json")
    l2 = json.loads(r.stdout)["scripts"][0]["level2"]
    numbers = [s["number"] for s in l2["steps"]]
    assert "11.1" in numbers and "11" not in numbers
    run = otp("run", "scripts/matmul.py", "--level", "2", "--quiet", "--out", tmp_path)
    trace = json.loads((tmp_path / "matmul" / "trace.json").read_text())
    in_trace = [o for s in trace["steps"] for o in all_obligations(s)]
    assert len(in_trace) == l2["obligations"] and all(o["status"] in ("proved", "refuted", "unknown")
                                                      for o in in_trace)
    assert trace["input_check"]["ok"] is True
    assert run.exit_code == r.exit_code


def test_reduction_made_parallel_is_refuted(racy_reduction: Path) -> None:
    assert otp("check", racy_reduction, "--no-color").exit_code == 0
    r = otp("check", racy_reduction, "--level", "2", "--no-color")
    assert r.exit_code == 1, r.output
    out = r.output
    assert "racy.py: 1 steps, level 2, 1 obligations not proved" in out
    assert "✗ L2 1 refuted" in out and "✗ parallel refuted  distinct iterations of for k (line 5)" in out
    assert "'C[i * N + j]' (line 8) updates C" in out  # the conflict
    assert "k != k'" in out and "e.g. " in out and ": C[0][0])" in out  # Z3's counterexample
    assert "0 proved, 1 refuted, 0 unknown" in out


def test_refutation_in_json(racy_reduction: Path) -> None:
    r = otp("check", racy_reduction, "--level", "2", "--json")
    assert r.exit_code == 1
    script = json.loads(r.stdout)["scripts"][0]
    assert script["ok"] is False and script["error"] is None and script["unproved_obligations"] == 1
    assert len(script["failures"]) == 1 and "level2 failed: parallel refuted" in script["failures"][0]
    (step,) = script["level2"]["steps"]
    (v,) = step["obligations"]
    assert step["ok"] is False and step["refuted"] == 1 and step["number"] == "1"
    assert v["kind"] == "parallel" and v["status"] == "refuted" and "C[i * N + j]" in v["reason"]
    assert script["level2"]["refuted"] == 1 and script["level2"]["proved"] == 0


def test_parallel_prefix_sum_rows_refuted(tmp_path: Path) -> None:
    """Row i of an in-place prefix sum reads row i - 1, which another
    iteration of the parallel loop writes."""
    s = kernel_script(tmp_path, "prefix", PREFIX_C, PREFIX_SPEC, 'parallel.parallel_for("prefix > for i")')
    r = otp("check", s, "--level", "2", "--no-color")
    assert r.exit_code == 1, r.output
    assert "✗ parallel refuted" in r.output
    assert "'x[i * C + j]' (line 4)" in r.output and "'x[(i - 1) * C + j]' (line 4)" in r.output


def test_run_level2_fission_across_a_dependence(tmp_path: Path) -> None:
    """`otp run --level 2`: the step is written, shown refuted with the
    conflict under its diff, and the run exits 1; trace.json has the verdict."""
    s = kernel_script(tmp_path, "shift", SHIFT_C, SHIFT_SPEC, "loop.fission(\"shift > for i > after 'x[i] = 0.0f'\")")
    out = tmp_path / "out"
    r = otp("run", s, "--level", "2", "--no-color", "--out", out)
    assert r.exit_code == 1, r.output
    assert "✓ L1  ✗ L2 1 refuted  1 unproved" in r.output
    assert "✗ fission refuted: in for i (line 2)" in r.output
    assert "'x[i]' (line 3)" in r.output and "'x[n - 1 - i]' (line 4)" in r.output
    assert isinstance(r.exception, OtpError) and "level2 failed: fission refuted" in str(r.exception)
    trace = json.loads((out / "shift_script" / "trace.json").read_text())
    (o,) = trace["steps"][0]["obligations"]
    assert o["kind"] == "fission" and o["status"] == "refuted" and "x[n - 1 - i]" in o["reason"]
    assert trace["steps"][0]["checks"]["level2"]["refuted"] == 1
    assert (out / "shift_script" / "01_loop_fission.c").is_file()


def test_apply_level2(tmp_path: Path) -> None:
    r = otp("apply", "c_sources/matmul.c", "loop.swap('matmul > for i')", "--level", "2", "--no-color",
            "--out", tmp_path)
    assert r.exit_code == 0, r.output
    assert "✓ L1  ✓ L2 1 proved" in r.output and "1 proved, 0 refuted, 0 unknown" in r.output


def test_input_breaking_its_contract(tmp_path: Path) -> None:
    """The original writes C, which the contract says it only reads: the
    input is reported, not only the steps."""
    spec = (ROOT / "specs" / "matmul.spec").read_text().replace("writes   C", "reads    C") \
        .replace("  ensures  C == matmul(A, B)\n", "")
    s = kernel_script(tmp_path, "matmul", (ROOT / "c_sources" / "matmul.c").read_text(), spec,
                      'loop.swap("matmul > for i")')
    r = otp("check", s, "--level", "2", "--no-color")
    assert r.exit_code == 1, r.output
    assert "input  ✗ L2 does not fit its contracts" in r.output
    assert "input: does not fit its contracts: matmul, line 6: 'C[i * N + j]' writes 'C'" in r.output


@pytest.mark.parametrize("cmd", [["run", "scripts/matmul.py"], ["check", "scripts/matmul.py"],
                                 ["apply", "c_sources/matmul.c", "loop.swap('matmul > for i')"]])
def test_level_4_refused(tmp_path: Path, cmd: list[str]) -> None:
    extra = ["--out", str(tmp_path)] if cmd[0] != "check" else []
    r = otp(*cmd, "--level", "4", *extra)
    assert isinstance(r.exception, OtpError) and r.exception.exit_code == 2
    assert "--level 4 is not available" in r.exception.message and "no such level" in r.exception.message
    assert "--level 3" in r.exception.message
    assert list(tmp_path.iterdir()) == []
