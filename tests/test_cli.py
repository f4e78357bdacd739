"""End-to-end tests of the `otp` command, run as a subprocess
(`python -m optitrust_py ...`): exit statuses, what is printed on stdout and
stderr, and the files written under `--out` (always inside `tmp_path`, never
the repository's `out/`)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Optional

import pytest

from helpers import SHIFT_C, SHIFT_SPEC

ROOT = Path(__file__).resolve().parent.parent
MATMUL_C = ROOT / "c_sources" / "matmul.c"
ATTENTION_C = ROOT / "c_sources" / "attention.c"

SCRIPTS = {
    # script stem: (number of steps, step file names)
    "matmul": (16, ["01_loop_fission.c", "02_loop_fission.c", "03_parallel_parallel_for.c", "04_loop_split.c",
                    "05_loop_tile.c", "06_loop_split.c", "07_loop_fission.c", "08_loop_tile.c", "09_loop_tile.c",
                    "10_loop_fission.c", "11_loop_reorder.c", "12_loop_swap.c", "13_loop_swap.c",
                    "14_matrix_local_buffer.c", "15_parallel_parallel_for.c", "16_vector_vectorize.c"]),
    "attention": (45, ["01_variable_bind.c", "02_loop_move_out.c", "03_loop_move_out.c", "04_loop_move_out.c",
                       "05_flash_online_softmax.c", "06_flash_drop_buffer.c", "07_loop_tile.c", "08_loop_hoist.c",
                       "09_loop_hoist.c", "10_loop_fission.c", "11_loop_fission.c", "12_flash_swap_triangular.c",
                       "13_variable_local_accumulator.c", "14_flash_version.c", "15_flash_split_blocks.c",
                       "16_flash_full_blocks.c", "17_matrix_local_buffer.c", "18_matrix_local_buffer.c",
                       "19_loop_hoist.c", "20_loop_fission.c", "21_loop_fission.c", "22_loop_swap.c",
                       "23_matrix_local_buffer.c", "24_matrix_reorder_dims.c", "25_matrix_local_buffer.c",
                       "26_matrix_local_buffer.c", "27_flash_drop_guard.c", "28_flash_move_up.c",
                       "29_flash_split_tail.c", "30_loop_tile.c", "31_loop_hoist.c", "32_loop_hoist.c",
                       "33_loop_hoist.c", "34_loop_fission.c", "35_loop_fission.c", "36_loop_fission.c",
                       "37_loop_fission.c", "38_loop_swap.c", "39_loop_swap.c", "40_parallel_parallel_for.c",
                       "41_vector_vectorize.c", "42_vector_vectorize.c", "43_vector_vectorize.c",
                       "44_vector_vectorize.c", "45_vector_vectorize.c"]),
}
FIRST_CALL = {
    "matmul": "step 1/16 loop.fission(",
    "attention": "step 1/45 variable.bind(",
}
SMALL_SIZES = {"matmul": "M=5,N=4,K=3", "attention": "H=1,S=70,D=64"}


def otp(*args: str, cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR", "CLICOLOR_FORCE")}
    env["COLUMNS"] = "200"
    return subprocess.run([sys.executable, "-m", "optitrust_py", *map(str, args)], cwd=str(cwd or ROOT),
                          capture_output=True, text=True, env=env, timeout=120)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def script(path: Path, body: str, c_file: str | Path = MATMUL_C, load_args: str = "") -> Path:
    """A transformation script loading `c_file` (absolute or relative to the script)."""
    return write(path, f"from optitrust_py.script import load\nfrom transformations import loop\n"
                       f"load({str(c_file)!r}{load_args})\n" + textwrap.dedent(body).lstrip("\n"))


def all_obligations(step: dict) -> list:
    """A step's obligations and those of its sub-steps (composites)."""
    return step["obligations"] + [o for sub in step["substeps"] for o in all_obligations(sub)]


def trace(dest: Path) -> dict:
    return json.loads((dest / "trace.json").read_text())


def assert_clean_error(r: subprocess.CompletedProcess, status: int = 2) -> str:
    """Exit `status`, a message on stderr, and no traceback anywhere."""
    assert r.returncode == status, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.strip(), r.stdout
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    assert "internal error" not in r.stderr
    return r.stderr


def no_temporaries(out: Path) -> None:
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert hidden == [], hidden


# ====================================================================== otp run


@pytest.fixture(scope="module", params=sorted(SCRIPTS))
def full_run(request, tmp_path_factory):
    name = request.param
    out = tmp_path_factory.mktemp(f"run_{name}")
    r = otp("run", f"scripts/{name}.py", "--out", out, "--no-color")
    return name, r, out / name


def test_run_exit_and_stdout(full_run):
    name, r, dest = full_run
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    n, _ = SCRIPTS[name]
    out = r.stdout
    assert FIRST_CALL[name] in out
    for k in range(1, n + 1):
        assert re.search(rf"^step {k}/{n} \w+\.\w+\(", out, re.M), k
    # diff lines (the ---/+++ file header is not printed)
    assert re.search(r"^\+ ", out, re.M) and re.search(r"^- ", out, re.M)
    assert re.search(r"^@@ -\d+,\d+ \+\d+,\d+ @@", out, re.M)
    assert "a/code.c" not in out
    assert "\x1b[" not in out  # --no-color
    # summary table
    for col in ("step", "transformation", "line", "checks", "time"):
        assert col in out
    assert "✓ L1" in out and "✗" not in out
    assert re.search(r"⚠ \d+ validity obligations? not proved", out)
    assert "add --exec" in out
    assert f"wrote {dest}/" in out


def test_run_files(full_run):
    name, r, dest = full_run
    n, files = SCRIPTS[name]
    assert r.returncode == 0
    assert sorted(p.name for p in dest.iterdir()) == sorted(["00_original.c", *files, "final.c", "trace.html", "trace.json"])
    no_temporaries(dest.parent)
    # final.c is the last step; 00_original.c is the source as otp prints it
    assert (dest / "final.c").read_text() == (dest / files[-1]).read_text()
    p = otp("print", f"c_sources/{name}.c")
    assert p.returncode == 0 and (dest / "00_original.c").read_text() == p.stdout
    # consecutive step files differ (every step of these scripts changes the code)
    texts = [(dest / f).read_text() for f in ["00_original.c", *files]]
    assert all(a != b for a, b in zip(texts, texts[1:]))


def test_run_trace_json(full_run):
    name, r, dest = full_run
    n, files = SCRIPTS[name]
    t = trace(dest)
    assert t["error"] is None
    assert t["script"] == f"scripts/{name}.py"
    assert Path(t["source"]).resolve() == (ROOT / "c_sources" / f"{name}.c").resolve()
    assert Path(t["spec"]).resolve() == (ROOT / "specs" / f"{name}.spec").resolve()
    assert t["original"] == (dest / "00_original.c").read_text()
    assert len(t["steps"]) == n
    unproved = 0
    for k, (s, f) in enumerate(zip(t["steps"], files), start=1):
        assert s["number"] == str(k)
        assert f == f"{k:02d}_{s['name'].replace('.', '_')}.c"
        assert isinstance(s["args"], list) and s["args"] and eval(s["args"][0]) == s["target"]  # repr of a str
        assert s["code"] == (dest / f).read_text()
        assert s["error"] is None
        assert s["diff"].startswith("--- a/code.c\n+++ b/code.c\n@@")
        assert s["checks"]["level1"]["ok"] is True and s["checks"]["level1"]["problems"] == []
        assert "exec" not in s["checks"]
        assert isinstance(s["obligations"], list)
        for o in all_obligations(s):
            assert o["kind"] and o["claim"] and o["status"].startswith("not proved")
        unproved += len(all_obligations(s))
    assert unproved >= 1
    assert re.search(rf"⚠ {unproved} validity obligation", r.stdout)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_run_quiet_step_and_exec(tmp_path, name):
    n, files = SCRIPTS[name]
    r = otp("run", f"scripts/{name}.py", "--out", tmp_path, "--no-color", "--quiet", "--step", "2", "--exec",
            "--size", SMALL_SIZES[name])
    assert r.returncode == 0, r.stderr
    # --quiet: no step header, no diff; the summary is still there
    assert "step 1/" not in r.stdout and not re.search(r"^[+-] ", r.stdout, re.M) and "@@" not in r.stdout
    assert "transformation" in r.stdout and "✓ exec" in r.stdout
    assert "add --exec" not in r.stdout
    dest = tmp_path / name
    assert sorted(p.name for p in dest.iterdir()) == sorted(["00_original.c", *files[:2], "final.c", "trace.html", "trace.json"])
    assert (dest / "final.c").read_text() == (dest / files[1]).read_text()
    t = trace(dest)
    assert len(t["steps"]) == 2 and t["error"] is None
    assert t["sizes"] == {k: int(v) for k, v in (kv.split("=") for kv in SMALL_SIZES[name].split(","))}
    for s in t["steps"]:
        ex = s["checks"]["exec"]
        assert ex["status"] == "pass" and ex["ok"] is True
        assert [f["function"] for f in ex["functions"]] == [name]
        assert ex["functions"][0]["status"] == "pass" and ex["functions"][0]["elements"] > 0
    assert t["steps"][0]["checks"]["exec"]["reference"] == "original"
    assert t["steps"][1]["checks"]["exec"]["reference"] == "step 1"


def test_run_exec_full_matmul_default_sizes(tmp_path):
    r = otp("run", "scripts/matmul.py", "--out", tmp_path, "--no-color", "--quiet", "--exec")
    assert r.returncode == 0, r.stderr
    t = trace(tmp_path / "matmul")
    assert t["sizes"] == {"M": 21, "N": 141, "K": 300}
    assert [s["checks"]["exec"]["status"] for s in t["steps"]] == ["pass"] * 16
    assert t["steps"][0]["checks"]["exec"]["functions"][0]["elements"] == 21 * 141


def test_run_from_another_folder(tmp_path):
    """Paths in load() are relative to the script, not to the working directory."""
    r = otp("run", ROOT / "scripts" / "matmul.py", "--out", "o", "--quiet", "--no-color", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / "matmul" / "06_loop_split.c").is_file()
    assert not (ROOT / "scripts" / "o").exists()


def test_rerun_replaces_the_folder(tmp_path):
    """A new run replaces the old folder: no stale step files from a longer run."""
    assert otp("run", "scripts/matmul.py", "--out", tmp_path, "--quiet").returncode == 0
    assert (tmp_path / "matmul" / "06_loop_split.c").exists()
    assert otp("run", "scripts/matmul.py", "--out", tmp_path, "--quiet", "--step", "1").returncode == 0
    assert sorted(p.name for p in (tmp_path / "matmul").iterdir()) == \
        ["00_original.c", "01_loop_fission.c", "final.c", "trace.html", "trace.json"]
    no_temporaries(tmp_path)


def test_step_option_errors(tmp_path):
    r = otp("run", "scripts/matmul.py", "--out", tmp_path, "--step", "0")
    assert "--step counts from 1" in assert_clean_error(r)
    r = otp("run", "scripts/matmul.py", "--out", tmp_path, "--quiet", "--step", "99")
    assert r.returncode == 0 and len(trace(tmp_path / "matmul")["steps"]) == 16


def test_out_folder_permissions_follow_umask(tmp_path):
    """The step folder should be created like any other folder (umask), like
    the `--out` folder that holds it; the files in it are."""
    out = tmp_path / "o"
    assert otp("run", "scripts/matmul.py", "--out", out, "--quiet").returncode == 0
    dest_mode = (out / "matmul").stat().st_mode & 0o777
    assert dest_mode == out.stat().st_mode & 0o777, oct(dest_mode)


# ====================================================================== otp check


def test_check_two_scripts_exec():
    r = otp("check", "scripts/matmul.py", "scripts/attention.py", "--exec", "--no-color")
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^✓ scripts/matmul\.py: 16 steps, level 1 \+ exec, \d+ obligations not proved", r.stdout, re.M)
    assert re.search(r"^✓ scripts/attention\.py: 45 steps, level 1 \+ exec", r.stdout, re.M)
    assert not (ROOT / "out" / ".matmul").exists()


def test_check_json_default_is_every_script():
    r = otp("check", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["level"] == 1 and data["exec"] is False
    want = sorted(f"scripts/{p.name}" for p in (ROOT / "scripts").glob("*.py"))
    assert sorted(s["script"] for s in data["scripts"]) == want
    for s in data["scripts"]:
        assert s["ok"] is True and s["error"] is None and s["failures"] == []
        assert s["steps"] >= 1 and s["unproved_obligations"] >= 0


def test_check_without_argument_text():
    r = otp("check", "--no-color")
    assert r.returncode == 0
    for p in sorted((ROOT / "scripts").glob("*.py")):
        assert f"✓ scripts/{p.name}:" in r.stdout


def test_check_without_scripts_folder(tmp_path):
    r = otp("check", cwd=tmp_path)
    assert "no scripts given and none found" in assert_clean_error(r)


def test_check_reports_a_failing_script_in_json(tmp_path):
    bad = script(tmp_path / "nomatch.py", 'loop.tile("matmul > for q", 32)\n')
    r = otp("check", bad, "scripts/matmul.py", "--json")
    assert r.returncode == 2, r.stderr
    data = json.loads(r.stdout)
    by = {s["script"]: s for s in data["scripts"]}
    assert by[str(bad)]["ok"] is False and "for q matches nothing" in by[str(bad)]["error"]
    assert by["scripts/matmul.py"]["ok"] is True


def test_check_prints_error_text_verbatim(tmp_path):
    """The message of a failing script is C text: `C[i * N + q]` must be shown
    as is (it is in `otp run`), not read as console markup."""
    bad = script(tmp_path / "badtarget.py", """
        loop.fission("matmul > for j > after 'C[i * N + q] = 0.0f'")
    """)
    run = otp("run", bad, "--out", tmp_path / "o", "--no-color")
    assert "C[i * N + q]" in assert_clean_error(run)
    r = otp("check", bad, "--no-color")
    assert r.returncode == 2
    assert "after instr 'C[i * N + q] = 0.0f' matches nothing" in r.stdout, r.stdout


def test_check_does_not_crash_on_brackets_in_messages(tmp_path):
    bad = script(tmp_path / "badtarget.py", """
        loop.fission("matmul > for j > after 'C[/i] = 0.0f'")
    """)
    r = otp("check", bad, "--no-color")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "C[/i] = 0.0f" in r.stdout and "internal error" not in r.stderr


def test_check_level_and_size_errors():
    assert "level 4" in assert_clean_error(otp("check", "scripts/matmul.py", "--level", "4"))
    assert "is not a number" in assert_clean_error(otp("check", "scripts/matmul.py", "--size", "M=x"))


@pytest.mark.parametrize("command", ["run", "check"])
def test_cuda_target_without_gpu_ending_is_refused_not_written_as_cpu_code(tmp_path, command):
    from optitrust_py.cuda_build import find_nvcc

    script = tmp_path / "cpu_only.py"
    script.write_text(f"from optitrust_py.script import load\nfrom transformations import parallel\n"
                      f"load({str(ROOT / 'c_sources' / 'softmax.c')!r})\nparallel.parallel_for('softmax > for i')\n")
    out = tmp_path / "out"
    extra = ["--out", str(out)] if command == "run" else []
    r = otp(command, str(script), "--target", "cuda", *extra)
    expected = "no loop mapped to the GPU" if find_nvcc() else "--target cuda needs nvcc"
    if command == "run" or not find_nvcc():
        assert expected in assert_clean_error(r)
    else:  # otp check reports each script's error in its report
        assert r.returncode == 2 and expected in r.stdout, (r.returncode, r.stdout, r.stderr)
    assert not (out / "cpu_only" / "final.cu").exists()


# ====================================================================== otp apply


def test_apply_writes_files(tmp_path):
    r = otp("apply", "c_sources/matmul.c", "loop.tile('matmul > for i', 16, mode='min')",
            "loop.swap('matmul > for i')", "--exec", "--size", "M=5,N=4,K=3", "--out", tmp_path, "--no-color")
    assert r.returncode == 0, r.stderr
    assert "step 1/2 loop.tile('matmul > for i', 16, mode='min')" in r.stdout
    assert "step 2/2 loop.swap('matmul > for i')" in r.stdout
    dest = tmp_path / "matmul"
    assert sorted(p.name for p in dest.iterdir()) == \
        ["00_original.c", "01_loop_tile.c", "02_loop_swap.c", "final.c", "trace.html", "trace.json"]
    t = trace(dest)
    assert t["script"] == "c_sources/matmul.c" and t["error"] is None
    assert [s["checks"]["exec"]["status"] for s in t["steps"]] == ["pass", "pass"]
    assert "for (int bi = 0; bi < M; bi += 16)" in (dest / "final.c").read_text()
    no_temporaries(tmp_path)


def test_apply_refuses_swap_of_an_imperfect_nest(tmp_path):
    """`for j` of matmul starts with `C[...] = 0.0f`: swapping it with `for k`
    is refused, after the tile (step 1) was applied and written."""
    r = otp("apply", "c_sources/matmul.c", "loop.tile('matmul > for i', 16, mode='min')",
            "loop.swap('matmul > for i > for j')", "--exec", "--size", "M=5,N=4,K=3", "--out", tmp_path)
    err = assert_clean_error(r)
    assert "step 2 loop.swap('matmul > for i > for j')" in err and "not a perfect loop nest" in err
    assert re.match(r"\S*matmul\.c:\d+:\d+: error: ", err)
    dest = tmp_path / "matmul"
    assert (dest / "01_loop_tile.c").is_file() and not (dest / "02_loop_swap.c").exists()
    assert "not a perfect loop nest" in trace(dest)["error"]


def test_apply_unknown_transformation(tmp_path):
    r = otp("apply", "c_sources/matmul.c", "loop.tilex('matmul > for i', 16)", "--out", tmp_path)
    err = assert_clean_error(r)
    assert "unknown transformation 'loop.tilex'" in err
    for known in ("loop.tile", "loop.swap", "loop.fission", "variable.bind", "function.inline"):
        assert known in err
    # the C file was loaded: the run is written, with the error and no step
    dest = tmp_path / "matmul"
    assert sorted(p.name for p in dest.iterdir()) == ["00_original.c", "final.c", "trace.html", "trace.json"]
    t = trace(dest)
    assert t["steps"] == [] and "unknown transformation" in t["error"]


@pytest.mark.parametrize("call", ["loop.tile('matmul > for i', 16", "tile('matmul > for i', 16)",
                                  "loop.tile('matmul > for i', N)", "loop.tile"])
def test_apply_malformed_call(tmp_path, call):
    r = otp("apply", "c_sources/matmul.c", call, "--out", tmp_path)
    err = assert_clean_error(r)
    assert "cannot read transformation" in err and "family.name(literal arguments)" in err


@pytest.mark.parametrize("call", ["loop.tile('matmul > for i')", "loop.tile('matmul > for i', 16, mod='min')"])
def test_apply_wrong_arguments_is_bad_input(tmp_path, call):
    """Wrong arguments on the command line are bad input (status 2, as the
    same call in a script is), not an internal error."""
    r = otp("apply", "c_sources/matmul.c", call, "--out", tmp_path)
    assert_clean_error(r)


def test_apply_missing_c_file(tmp_path):
    r = otp("apply", "c_sources/nope.c", "loop.tile('f > for i', 16)", "--out", tmp_path)
    assert "no such C file" in assert_clean_error(r)


# ====================================================================== bad input


def test_target_matching_nothing_keeps_earlier_steps(tmp_path):
    s = script(tmp_path / "s" / "nomatch.py", """
        loop.tile("matmul > for i", 16, mode="min")
        loop.tile("matmul > for q", 32)
    """)
    out = tmp_path / "o"
    r = otp("run", s, "--out", out, "--no-color")
    err = assert_clean_error(r)
    assert "step 2 loop.tile('matmul > for q', 32)" in err
    assert "for q matches nothing in matmul" in err and "candidates:" in err
    for loop in ("bi", "i", "j", "k"):
        assert re.search(rf"^  line +\d+: for {loop}$", err, re.M), loop
    assert "✗ refused" in r.stdout
    dest = out / "nomatch"
    assert sorted(p.name for p in dest.iterdir()) == ["00_original.c", "01_loop_tile.c", "final.c", "trace.html", "trace.json"]
    assert (dest / "final.c").read_text() == (dest / "01_loop_tile.c").read_text()
    t = trace(dest)
    assert "for q matches nothing" in t["error"]
    assert [s["error"] is None for s in t["steps"]] == [True, False]
    assert "for q matches nothing" in t["steps"][1]["error"]
    no_temporaries(out)


def test_failing_run_replaces_a_previous_run(tmp_path):
    """A failing script named like a previous one replaces its folder whole."""
    out = tmp_path / "o"
    assert otp("run", "scripts/matmul.py", "--out", out, "--quiet").returncode == 0
    s = script(tmp_path / "s" / "matmul.py", """
        loop.tile("matmul > for i", 16, mode="min")
        loop.tile("matmul > for q", 32)
    """)
    assert otp("run", s, "--out", out, "--quiet").returncode == 2
    assert sorted(p.name for p in (out / "matmul").iterdir()) == \
        ["00_original.c", "01_loop_tile.c", "final.c", "trace.html", "trace.json"]
    no_temporaries(out)


def test_tile_size_zero_refused(tmp_path):
    s = script(tmp_path / "zero.py", 'loop.tile("matmul > for i", 0)\n')
    err = assert_clean_error(otp("run", s, "--out", tmp_path / "o"))
    assert "step 1 loop.tile('matmul > for i', 0)" in err
    assert "tile size must be a positive integer, got 0" in err
    assert re.match(rf"{re.escape(str(MATMUL_C))}:\d+:\d+: error: ", err)
    no_temporaries(tmp_path / "o")


def test_triangular_swap_refused(tmp_path):
    s = script(tmp_path / "tri.py", """
        loop.fission("attention > for i > after for j#1")
        loop.swap("attention > for i#1")
    """, c_file=ATTENTION_C)
    err = assert_clean_error(otp("run", s, "--out", tmp_path / "o"))
    assert "step 2 loop.swap('attention > for i#1')" in err
    assert "depend on the index of for i" in err and "not rectangular" in err
    assert (tmp_path / "o" / "tri" / "01_loop_fission.c").is_file()


def test_script_raising(tmp_path):
    s = script(tmp_path / "raises.py", """
        table = {}
        loop.tile("matmul > for i", table["size"])
    """)
    err = assert_clean_error(otp("run", s, "--out", tmp_path / "o"))
    assert f"{s}:5:1: error: the script raised KeyError: 'size'" in err


def test_script_calling_a_transformation_wrongly(tmp_path):
    s = script(tmp_path / "arity.py", 'loop.tile("matmul > for i")\n')
    err = assert_clean_error(otp("run", s, "--out", tmp_path / "o"))
    assert f"{s}:4:1: error: loop.tile: missing a required argument: 'size'" in err
    assert "usage: loop.tile(target, size, outer=None, mode='divides')" in err


def test_script_syntax_error(tmp_path):
    s = write(tmp_path / "syn.py", """
        from optitrust_py.script import load
        load("x.c"
        y = = 1
    """)
    err = assert_clean_error(otp("run", s, "--out", tmp_path / "o"))
    assert re.match(rf"{re.escape(str(s))}:\d+:\d+: error: invalid Python", err)


def test_script_without_load(tmp_path):
    s = write(tmp_path / "noload.py", "x = 1\n")
    err = assert_clean_error(otp("run", s, "--out", tmp_path / "o"))
    assert "never called load()" in err


def test_script_transforming_before_load(tmp_path):
    s = write(tmp_path / "early.py", """
        from transformations import loop
        loop.tile("matmul > for i", 16)
    """)
    err = assert_clean_error(otp("run", s, "--out", tmp_path / "o"))
    assert "call load(" in err


def test_missing_script(tmp_path):
    err = assert_clean_error(otp("run", tmp_path / "missing.py", "--out", tmp_path / "o"))
    assert "no such script" in err and "missing.py" in err
    assert not (tmp_path / "o").exists()


def test_not_a_python_script(tmp_path):
    err = assert_clean_error(otp("run", "c_sources/matmul.c", "--out", tmp_path / "o"))
    assert "is a Python file" in err


def test_c_syntax_error(tmp_path):
    write(tmp_path / "bad.c", """
        void f(int n, float *x) {
          for (int i = 0; i < n; i++) {
            x[i] = 1.0f
          }
        }
    """)
    s = script(tmp_path / "badc.py", "", c_file="bad.c")
    err = assert_clean_error(otp("run", s, "--out", tmp_path / "o"))
    assert re.match(rf"{re.escape(str(tmp_path / 'bad.c'))}:\d+:\d+: error: syntax error", err), err


def test_spec_error_is_located(tmp_path):
    write(tmp_path / "fill.c", """
        void fill(int n, float *x) {
          for (int i = 0; i < n; i++) {
            x[i] = 2.0f * i;
          }
        }
    """)
    write(tmp_path / "fill.spec", """
        fill(n, x):
          requires n >= 1
          writes   x ~> Matrx1(n)
    """)
    s = script(tmp_path / "badspec.py", "", c_file="fill.c", load_args=", spec='fill.spec'")
    err = assert_clean_error(otp("run", s, "--out", tmp_path / "o"))
    assert err.startswith(f"{tmp_path / 'fill.spec'}:3:17: error: ") and "Matrx1" in err


def test_missing_spec_file(tmp_path):
    s = script(tmp_path / "nospec.py", "", load_args=", spec='nope.spec'")
    assert "no such spec file" in assert_clean_error(otp("run", s, "--out", tmp_path / "o"))


@pytest.mark.parametrize("size, words", [("N=abc", "N='abc' is not a number"), ("N", "cannot read 'N'"),
                                         ("1N=3", "cannot read")])
def test_bad_size(tmp_path, size, words):
    err = assert_clean_error(otp("run", "scripts/matmul.py", "--size", size, "--out", tmp_path))
    assert err.startswith("error: --size: ") and words in err
    assert not (tmp_path / "matmul").exists()


def test_sizes_breaking_a_requirement(tmp_path):
    err = assert_clean_error(otp("run", "scripts/matmul.py", "--exec", "--size", "M=0", "--quiet",
                                 "--out", tmp_path))
    assert "the sizes break the requirement 'M >= 1' of matmul (M = 0)" in err


def test_exec_without_sizes_still_writes_the_steps(tmp_path):
    """All steps applied and passed level 1; --exec then finds no sizes (bad
    input, status 2). The step files and trace.json should still be written,
    like they are when a step is refused."""
    r = otp("apply", "c_sources/matmul.c", "loop.tile('matmul > for i', 16, mode='min')", "--exec",
            "--out", tmp_path)
    err = assert_clean_error(r)
    assert "--exec needs sizes: matmul needs M, N, K" in err
    dest = tmp_path / "matmul"
    assert (dest / "01_loop_tile.c").is_file()
    assert "needs sizes" in (trace(dest)["error"] or "")


def test_check_json_survives_an_exec_error(tmp_path):
    """`otp check --json` prints one JSON object even when a script's --exec
    cannot run (no sizes): that script is reported, the others are checked."""
    s = script(tmp_path / "nosizes.py", 'loop.tile("matmul > for i", 16, mode="min")\n')
    r = otp("check", s, "scripts/matmul.py", "--exec", "--json")
    assert r.returncode == 2
    data = json.loads(r.stdout)
    by = {x["script"]: x for x in data["scripts"]}
    assert by[str(s)]["ok"] is False and "needs sizes" in by[str(s)]["error"]
    assert by["scripts/matmul.py"]["ok"] is True


def test_debug_shows_traceback(tmp_path):
    s = script(tmp_path / "nomatch.py", 'loop.tile("matmul > for q", 32)\n')
    plain = otp("run", s, "--out", tmp_path / "o")
    assert_clean_error(plain)
    for args in (["run", s, "--debug"], ["--debug", "run", s]):
        r = otp(*args, "--out", tmp_path / "o")
        assert r.returncode != 0
        assert "Traceback (most recent call last)" in r.stderr
        assert "for q matches nothing" in r.stderr
    r = otp("run", tmp_path / "nope.py", "--debug", "--out", tmp_path / "o")
    assert "Traceback" in r.stderr and "no such script" in r.stderr


def test_unknown_option_is_a_usage_error(tmp_path):
    r = otp("apply", "c_sources/matmul.c", "loop.tile('matmul > for i', 16)", "--step", "1")
    assert r.returncode == 2 and "No such option" in r.stderr and "Traceback" not in r.stderr


# ====================================================================== failing checks: status 1




@pytest.fixture
def wrong_script(tmp_path) -> Path:
    """Fission of a loop whose second half reads what the first half writes
    at a later iteration: accepted at level 1 (the obligation is not proved),
    wrong when run."""
    write(tmp_path / "shift.c", SHIFT_C)
    write(tmp_path / "shift.spec", SHIFT_SPEC)
    return script(tmp_path / "wrong.py", "loop.fission(\"shift > for i > after 'x[i] = 0.0f'\")\n",
                  c_file="shift.c", load_args=", spec='shift.spec', sizes={'n': 8}")


def test_wrong_step_passes_level1(tmp_path, wrong_script):
    r = otp("run", wrong_script, "--out", tmp_path / "o", "--no-color", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "✓ L1" in r.stdout and "1 unproved" in r.stdout


def test_failing_exec_check_exits_1(tmp_path, wrong_script):
    out = tmp_path / "o"
    r = otp("run", wrong_script, "--out", out, "--no-color", "--exec")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert "exec failed" in r.stderr and "FAIL at y[0]" in r.stderr
    assert "✗ exec fail" in r.stdout and "shift: FAIL at y[0]" in r.stdout
    dest = out / "wrong"
    t = trace(dest)
    ex = t["steps"][0]["checks"]["exec"]
    assert ex["status"] == "fail" and ex["ok"] is False
    f = ex["functions"][0]
    assert f["function"] == "shift" and f["status"] == "fail"
    assert f["first_mismatch"]["where"] == "y[0]"
    assert t["steps"][0]["checks"]["level1"]["ok"] is True
    # the wrong code is written anyway, for inspection
    assert (dest / "01_loop_fission.c").is_file()
    no_temporaries(out)


def test_check_exits_1_on_failing_exec(wrong_script):
    r = otp("check", wrong_script, "scripts/matmul.py", "--exec", "--json")
    assert r.returncode == 1, r.stderr
    data = json.loads(r.stdout)
    by = {s["script"]: s for s in data["scripts"]}
    bad = by[str(wrong_script)]
    assert bad["ok"] is False and bad["error"] is None
    assert len(bad["failures"]) == 1 and "exec failed" in bad["failures"][0] and "y[0]" in bad["failures"][0]
    assert by["scripts/matmul.py"]["ok"] is True
    # without --exec nothing fails
    assert otp("check", wrong_script).returncode == 0


def test_check_text_shows_failing_step_verbatim(wrong_script):
    r = otp("check", wrong_script, "--exec", "--no-color")
    assert r.returncode == 1
    assert f"✗ {wrong_script}: 1 steps" in r.stdout
    assert "loop.fission(\"shift > for i > after 'x[i] = 0.0f'\"): exec failed" in r.stdout, r.stdout


def test_run_checks_on_a_hand_made_session(tmp_path):
    """The same through the library: a Session whose one step is wrong."""
    from optitrust_py.checks import run_checks
    from optitrust_py.frontend import parse_file, parse_text
    from optitrust_py.printer import to_c
    from optitrust_py.report import failed_checks
    from optitrust_py.session import Session, Step
    from optitrust_py.spec import load_contracts

    original = parse_file(MATMUL_C)
    wrong = parse_text(to_c(original).replace("C[i * N + j] += ", "C[i * N + j] = "), "wrong.c")
    session = Session(tmp_path)
    session.program = session.original = original
    session.contracts = load_contracts(original, ROOT / "specs" / "matmul.spec")
    session.sizes = {"M": 3, "N": 2, "K": 4}
    session.steps.append(Step("1", "hand.made", ("'matmul'",), "matmul", 1, original, wrong))
    session.program = wrong
    run_checks(session, 1, True)
    step = session.steps[0]
    assert step.checks["level1"].ok
    assert step.checks["exec"].status == "fail"
    failures = failed_checks(session)
    assert len(failures) == 1
    assert failures[0].startswith("step 1 hand.made('matmul'): exec failed: matmul: FAIL at C[")


def test_a_precision_the_script_never_reads_is_refused(tmp_path):
    """matmul.py has no bfloat16 ending: --precision bf16 would silently
    change nothing, so it is an error that says so, and nothing is written."""
    r = otp("run", "scripts/matmul.py", "--precision", "bf16", "--out", tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and not list(tmp_path.iterdir())
    assert ("scripts/matmul.py did not read precision() for --target cpu, so --precision bf16 would change nothing"
            in r.stdout + r.stderr)
    r = otp("run", "scripts/matmul.py", "--precision", "fp16")
    assert r.returncode == 2 and "'fp16' is not one of 'fp32', 'bf16'" in r.stderr
