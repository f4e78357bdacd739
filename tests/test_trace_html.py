"""The trace viewer (`out/<script>/trace.html`), the benchmark chart and the
progress bars: unit tests on the generated page, and a test in headless
Chromium driven through the DevTools protocol over a pipe (standard library
only), which presses keys to move between steps and keeps a screenshot."""
from __future__ import annotations

import base64
import fcntl
import json
import os
import pty
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pytest

from optitrust_py.bench_results import bench_svg, load_runs, record_run
from optitrust_py.highlight import highlight_lines
from optitrust_py.trace_html import blob, refresh_page, render_page

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = Path("/tmp/i7/trace.png")
"""Where the browser test also leaves its screenshot when that folder exists (to look at)."""


def otp(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "optitrust_py", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def page_blob(page: str) -> dict[str, Any]:
    """The JSON data inlined in a page."""
    m = re.search(r'<script type="application/json" id="trace-data">(.*?)</script>', page, re.S)
    assert m is not None
    data: dict[str, Any] = json.loads(m.group(1))
    return data


@pytest.fixture(scope="module")
def softmax_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """softmax.py at level 3 with --exec: the folder it wrote."""
    out = tmp_path_factory.mktemp("trace") / "out"
    r = otp("run", "scripts/softmax.py", "--level", "3", "--exec", "--out", str(out), "--quiet", "--html")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"trace viewer: {(out / 'softmax' / 'trace.html').resolve().as_uri()}" in r.stdout
    return out / "softmax"


@pytest.fixture(scope="module")
def refused_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run whose second step is refused (its target matches nothing)."""
    out = tmp_path_factory.mktemp("refused") / "out"
    r = otp("apply", "c_sources/matmul.c", "loop.tile('matmul > for i', 4)", "loop.swap('matmul > for zz')",
            "--out", str(out), "--quiet")
    assert r.returncode == 2, r.stdout + r.stderr
    return out / "matmul"


# ----------------------------------------------------------------- highlighting


def test_highlight_marks_c_tokens_and_escapes_html():
    lines = highlight_lines('#include <math.h>\nfor (int i = 0; i < n; i++) x[i] = 1.5e-3f; // a < b\n'
                            'char *s = "</script>"; /* open\n still */ return 0x1F;')
    assert lines[0] == '<span class="p">#include &lt;math.h&gt;</span>'
    assert '<span class="k">for</span> (<span class="t">int</span> i = <span class="n">0</span>; i &lt; n' in lines[1]
    assert '<span class="n">1.5e-3f</span>' in lines[1] and '<span class="c">// a &lt; b</span>' in lines[1]
    assert '<span class="s">"&lt;/script&gt;"</span>' in lines[2] and lines[2].endswith('<span class="c">/* open</span>')
    assert lines[3].startswith('<span class="c"> still */</span> <span class="k">return</span>')
    assert '<span class="n">0x1F</span>' in lines[3]
    assert "i_1" not in highlight_lines("int i_1 = x1;")[0].replace("i_1 =", "")  # names are not numbers
    assert '<span class="n">' not in highlight_lines("int i_1 = x1;")[0]


# ----------------------------------------------------------------- the page


def test_blob_cannot_close_its_script_element():
    data = {"code": 'char *s = "</script><!-- <script>alert(1)</script>";'}
    text = blob(data)
    assert "<" not in text and json.loads(text) == data


def test_page_is_self_contained_and_holds_the_run(softmax_run):
    page = (softmax_run / "trace.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<script") == 2
    for external in ("src=", "<link", "@import", "url(", "http://", "https://"):
        assert external not in page.replace('xmlns="http://www.w3.org/2000/svg"', ""), external
    data = page_blob(page)
    trace = json.loads((softmax_run / "trace.json").read_text())
    assert [s["number"] for s in data["steps"]] == ["1", "2"] == [s["number"] for s in trace["steps"]]
    assert data["original"][0] == '<span class="p">#include &lt;math.h&gt;</span>'
    first, second = data["steps"]
    assert first["status"] == second["status"] == "ok"
    # the diff rows: tag, line before, line after, highlighted text
    assert ["+", None, 4, '  <span class="p">#pragma omp parallel for</span>'] in first["diff"]
    assert first["diff"][0][0] == "@" and all(r[1] is not None for r in first["diff"] if r[0] == "-")
    # level 3 labels, obligations with their verdicts, --exec figures
    assert first["checks"]["level3"]["label"] == "=" and second["checks"]["level3"]["label"] == "≈fp"
    assert first["obligations"][0]["kind"] == "parallel" and first["obligations"][0]["status"] == "proved"
    assert second["checks"]["exec"]["functions"][0]["max_rel_error"] > 0
    # level 3 ran: the loop contracts were inferred, shown as a diff of annotated code
    assert any("xwrites" in r[3] for r in second["contracts_diff"])
    # and the original was checked against its model at the sizes the steps use
    assert [(m["ensures"], m["status"], m["sizes"]) for m in trace["models"]] == \
        [("y == softmax(x)", "≈fp", {"C": 5, "R": 5}), ("y == softmax(x)", "≈fp", {"C": 69, "R": 5})]


def test_a_refused_step_is_in_the_page_with_its_message(refused_run):
    data = page_blob((refused_run / "trace.html").read_text())
    tile, swap = data["steps"]
    assert tile["status"] == "ok" and swap["status"] == "refused"
    assert "matches nothing" in swap["error"] and "for zz" in swap["error"]
    assert swap["diff"] == [] and "step 2 loop.swap" in data["error"]


@pytest.fixture(scope="module")
def refuted_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A loop with a dependence made parallel: level 2 refutes the step."""
    out = tmp_path_factory.mktemp("refuted") / "out"
    r = otp("apply", "c_sources/matmul.c", "parallel.parallel_for('matmul > for k')", "--level", "2",
            "--out", str(out), "--quiet")
    assert r.returncode == 1, r.stdout + r.stderr
    return out / "matmul"


def test_a_failed_check_marks_its_step(refuted_run):
    step = page_blob((refuted_run / "trace.html").read_text())["steps"][0]
    assert step["status"] == "failed" and not step["checks"]["level2"]["ok"]
    assert step["obligations"][0]["status"] == "refuted" and step["obligations"][0]["reason"]


# ----------------------------------------------------------------- benchmarks


def _run(sizes: dict[str, int], threads: int, rate: float, ok: bool = True) -> dict[str, Any]:
    timing = {"median_s": 1.0 / rate, "min_s": 0.9 / rate, "max_s": 1.1 / rate, "gflops": rate, "repeats": 3}
    run: dict[str, Any] = {"script": "s.py", "target": "cpu", "function": "mm<x>", "sizes": sizes,
                           "threads": threads, "ok": ok, "unit": "GFLOP/s", "library": None, "max_rel_err": 0.0}
    if not ok:
        return {**run, "error": "the optimized program computes <other> values"}
    return {**run, "baseline": timing, "optimized": {**timing, "gflops": 4 * rate}, "speedup": 4.0,
            "variants": {"fp32": {**timing, "gflops": 2 * rate}}}


def test_bench_chart_draws_a_bar_per_program_and_size():
    svg = bench_svg([_run({"N": 64}, 1, 1.0), _run({"N": 128}, 1, 2.0), _run({"N": 256}, 1, 1.0, ok=False)])
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    bars = re.findall(r'<rect x="[\d.]+" y="[\d.]+" width="26" height="([\d.]+)"[^>]*><title>([^<]*)</title>', svg)
    assert len(bars) == 6  # original, optimized, fp32 at two sizes
    heights = {title.split(":")[0] + f" {i // 3}": float(h) for i, (h, title) in enumerate(bars)}
    assert heights["optimized 1"] == pytest.approx(2 * heights["fp32 1"]) == pytest.approx(8 * heights["original 0"])
    assert "N=64" in svg and "N=128" in svg and "mm&lt;x&gt;" in svg
    assert "N=256: the optimized program computes &lt;other&gt; values" in svg  # a failed run is named


def test_record_run_replaces_the_run_at_the_same_settings(tmp_path):
    record_run(tmp_path, _run({"N": 128}, 1, 1.0))
    record_run(tmp_path, _run({"N": 64}, 1, 1.0))
    record_run(tmp_path, _run({"N": 128}, 1, 3.0))
    runs = load_runs(tmp_path)
    assert [(r["sizes"]["N"], r["baseline"]["gflops"]) for r in runs] == [(64, 1.0), (128, 3.0)]
    assert all("measured_at" in r for r in runs)
    assert not [p for p in tmp_path.iterdir() if p.name != "bench.json"]


def test_bench_plot_and_page_chart(softmax_run, tmp_path):
    """`otp bench` records its run beside the trace, redraws the page with
    the chart, and --plot writes the chart alone; a second `otp run` keeps
    the recorded runs."""
    folder = tmp_path / "out" / "softmax"
    shutil.copytree(softmax_run, folder)
    plot = tmp_path / "chart.svg"
    r = otp("bench", "scripts/softmax.py", "--size", "R=16,C=256", "--repeats", "1", "--threads", "1",
            "--out", str(tmp_path / "out"), "--plot", str(plot))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "\x1b[" not in r.stdout  # no progress bar when piped
    assert plot.read_text().startswith("<svg") and "R=16 C=256" in plot.read_text()
    page = (folder / "trace.html").read_text()
    data = page_blob(page)
    assert [r["sizes"] for r in data["bench"]] == [{"R": 16, "C": 256}]
    assert '<template id="bench-chart"><svg' in page and "R=16 C=256" in page
    r = otp("run", "scripts/softmax.py", "--out", str(tmp_path / "out"), "--quiet")
    assert r.returncode == 0 and len(load_runs(folder)) == 1
    assert page_blob((folder / "trace.html").read_text())["bench"] == data["bench"]


def test_bench_plot_must_be_svg(tmp_path):
    r = otp("bench", "scripts/softmax.py", "--plot", str(tmp_path / "chart.png"))
    assert r.returncode == 2 and "ending in .svg" in r.stderr and "Traceback" not in r.stderr


def test_refresh_page_needs_a_trace(tmp_path):
    assert refresh_page(tmp_path) is None and not (tmp_path / "trace.html").exists()


def test_render_page_escapes_the_title():
    page = render_page({"script": "a</title><b>.py", "steps": [], "original": ""}, [])
    assert "<title>otp trace: a&lt;/title&gt;&lt;b&gt;.py</title>" in page


def test_refresh_page_reads_an_older_trace(tmp_path):
    """`otp bench` redraws a page from whatever trace.json is there: one
    written before some fields existed still makes a page."""
    step = {"number": "1", "name": "loop.tile", "args": ["'f > for i'", "4"], "code": "int g;\n", "substeps": []}
    (tmp_path / "trace.json").write_text(json.dumps({"script": "s.py", "original": "int f;\n", "steps": [step]}))
    data = page_blob(refresh_page(tmp_path).read_text())  # type: ignore[union-attr]
    shown = data["steps"][0]
    assert shown["status"] == "ok" and shown["tolerance"] is None and shown["checks"] == {}
    assert [r[0] for r in shown["diff"]] == ["@", "-", "+"]


# ----------------------------------------------------------------- progress bars


def _on_a_terminal(*args: str) -> str:
    """What `otp ARGS` writes when its stdout is a pseudo-terminal."""
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(ROOT)
        os.execv(sys.executable, [sys.executable, "-m", "optitrust_py", *args])
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode(errors="replace")


def test_progress_bars_only_on_a_terminal(tmp_path):
    args = ("run", "scripts/softmax.py", "--level", "2", "--exec", "--quiet", "--out", str(tmp_path))
    bar = re.compile(r"(level 1|level 2|--exec) +[━╺╸]+ +\d+/\d+")
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", _on_a_terminal(*args))
    assert {m.group(1) for m in bar.finditer(shown)} == {"level 1", "level 2", "--exec"}
    assert "wrote " in shown  # the run went on
    piped = otp(*args)
    assert piped.returncode == 0 and "wrote " in piped.stdout and not bar.search(piped.stdout + piped.stderr)
    checked = _on_a_terminal("check", "scripts/softmax.py", "--level", "2", "--json")  # JSON only, even here
    assert json.loads(checked)["scripts"][0]["ok"] is True


def test_benchmark_progress_bar_on_a_terminal(tmp_path):
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", _on_a_terminal(
        "bench", "scripts/softmax.py", "--size", "R=16,C=256", "--repeats", "1", "--threads", "1",
        "--out", str(tmp_path)))
    assert re.search(r"running the optimized program +[━╺╸]+ +1/2", shown), shown
    assert "vs original" in shown


# ----------------------------------------------------------------- in a browser


def _on_fds_3_and_4(to_browser: int, from_browser: int) -> None:
    """In the child: the browser's ends of the pipes as fds 3 and 4 (moved
    out of the way first, in case one of them is already 3 or 4)."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser, from_browser)]
    for target, fd in zip((3, 4), high):
        os.dup2(fd, target)


class DevTools:
    """Headless Chromium driven through the DevTools protocol on a pipe
    (`--remote-debugging-pipe`: JSON messages ended by NUL on fds 3 and 4)."""

    def __init__(self, url: str, profile: Path) -> None:
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
               "--remote-debugging-pipe", f"--user-data-dir={profile}", "--window-size=1400,900", "about:blank"]
        self.proc = subprocess.Popen(cmd, pass_fds=(3, 4), preexec_fn=lambda: _on_fds_3_and_4(to_browser, from_browser),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self._ids = 0
        self._buffer = b""
        target = self.call("Target.createTarget", url=url)["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def call(self, method: str, session: Optional[str] = None, **params: Any) -> dict[str, Any]:
        self._ids += 1
        message: dict[str, Any] = {"id": self._ids, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._next()
            if reply.get("id") == self._ids:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply["result"]
                return result

    def _next(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        reply: dict[str, Any] = json.loads(message)
        return reply

    def eval(self, expression: str) -> Any:
        got = self.call("Runtime.evaluate", self.session, expression=expression, returnByValue=True)
        if "exceptionDetails" in got:
            raise RuntimeError(f"{expression}: {got['exceptionDetails']}")
        return got["result"].get("value")

    def press(self, key: str) -> None:
        codes = {"ArrowDown": 40, "ArrowUp": 38}
        down: dict[str, Any] = ({"type": "rawKeyDown", "windowsVirtualKeyCode": codes[key], "code": key}
                                if key in codes else {"type": "keyDown", "text": key})
        self.call("Input.dispatchKeyEvent", self.session, key=key, **down)
        self.call("Input.dispatchKeyEvent", self.session, type="keyUp", key=key)

    def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"the page never satisfied {expression}")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", self.session, format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except RuntimeError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._write)
        os.close(self._read)


SHOWN = """(() => ({selected: document.querySelector('nav li.sel').textContent,
  title: document.querySelector('#panel h2').textContent,
  badges: document.querySelector('#panel .badges') ? document.querySelector('#panel .badges').textContent : '',
  error: document.querySelector('#step-error') ? document.querySelector('#step-error').textContent : null,
  rows: document.querySelectorAll('#panel table.diff tr').length,
  split: document.querySelectorAll('#panel table.diff.split').length,
  l3: document.querySelector('#panel .l3label') ? document.querySelector('#panel .l3label').textContent : null,
  hash: location.hash}))()"""


@pytest.fixture
def browser(tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium): the trace viewer's browser test needs it")
    opened: list[DevTools] = []

    def open_page(page: Path) -> DevTools:
        tools = DevTools(page.resolve().as_uri(), tmp_path / "profile")
        opened.append(tools)
        tools.wait_for("document.readyState === 'complete' && !!document.querySelector('nav li.sel')")
        return tools
    yield open_page
    for tools in opened:
        tools.close()


def test_browser_keyboard_navigation(softmax_run, browser, tmp_path):
    page = browser(softmax_run / "trace.html")
    shown = page.eval(SHOWN)
    assert shown["title"].startswith("step 1 parallel.parallel_for('softmax > for i')")
    assert "✓ L3 =" in shown["badges"] and "exec pass" in shown["badges"] and shown["rows"] > 3
    page.press("j")
    shown = page.eval(SHOWN)
    assert shown["title"].startswith("step 2 vector.vectorize") and shown["l3"] == "≈fp"
    assert "vectorize" in shown["selected"] and shown["hash"] == "#step-2"
    page.press("v")  # side by side
    assert page.eval(SHOWN)["split"] == 1
    page.press("ArrowUp")
    page.press("k")
    shown = page.eval(SHOWN)
    assert shown["title"].startswith("input") and "input" in shown["selected"]
    assert page.eval("document.querySelectorAll('#panel table.models td.eq').length") == 2, "the model at two sizes"
    page.press("ArrowDown")
    page.press("ArrowDown")
    assert page.eval(SHOWN)["title"].startswith("step 2")
    page.press("k")  # step 1 side by side: its diff, obligations, level 3 and --exec figures fit the screen
    shown = page.eval(SHOWN)
    assert shown["title"].startswith("step 1") and shown["split"] == 1
    assert page.eval("document.querySelector('#panel table.obligations td.proved').textContent") == "proved"
    assert page.eval("document.querySelector('#panel table.exec td.pass').textContent") == "pass"
    shot = tmp_path / "trace.png"
    page.screenshot(shot)
    assert shot.read_bytes().startswith(b"\x89PNG")
    print(f"screenshot of the trace viewer: {shot}")
    if SCREENSHOT.parent.is_dir():
        shutil.copyfile(shot, SCREENSHOT)


def test_browser_shows_a_refused_step_in_place(refused_run, browser):
    page = browser(refused_run / "trace.html")
    shown = page.eval(SHOWN)  # the page opens on the step that failed
    assert shown["title"].startswith("step 2 loop.swap") and "matches nothing" in shown["error"]
    assert page.eval("document.getElementById('banner').hidden") is False
    page.press("k")
    assert page.eval(SHOWN)["title"].startswith("step 1 loop.tile")


def test_browser_shows_a_refuted_obligation_with_its_counterexample(refuted_run, browser):
    page = browser(refuted_run / "trace.html")
    shown = page.eval(SHOWN)
    assert shown["title"].startswith("step 1 parallel.parallel_for") and "✗ L2 1 refuted" in shown["badges"]
    assert page.eval("document.querySelector('#panel table.obligations td.refuted').textContent") == "refuted"
    reason = page.eval("document.querySelector('#panel table.obligations pre.reason').textContent")
    assert "e.g." in reason and "C[" in reason
