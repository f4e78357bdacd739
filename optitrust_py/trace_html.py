"""The trace viewer: `out/<script>/trace.html`, one self-contained page (no
network: its style, script and data are inlined) that shows a run the way
`otp run` prints it, step by step.

The page is made from `trace.json` (what `outputs.trace_json` records) and
the benchmark runs of `bench.json`, so `otp bench` can redraw it without
running the checks again. Each step carries its diff against the code
before it (rebuilt from the trace: a step starts from the step before it,
or its parent's start for a first sub-step), highlighted here in Python;
the page's script only lays the rows out, unified or side by side.
The data goes in as one JSON blob in which every `<` is written `\\u003c`,
so no text of the trace (`</script>` in a C string) can end the blob."""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Iterator, Optional

from .bench_results import bench_svg, load_runs, write_atomic
from .highlight import highlight_lines
from .outputs import numbered_diff

PAGE_FILE = "trace.html"
TRACE_FILE = "trace.json"


class _Side:
    """A program text and its highlighted lines, computed once."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = highlight_lines(text)


def diff_rows(before: _Side, after: _Side) -> list[list[Any]]:
    """`[tag, old line, new line, html]` rows of the step's diff; removed
    lines are highlighted in the old text, the others in the new."""
    rows: list[list[Any]] = []
    for tag, old, new, text in numbered_diff(before.text, after.text):
        shown = html.escape(text, quote=False) if tag == "@" else \
            before.lines[old - 1] if tag == "-" else after.lines[new - 1]
        rows.append([tag, old, new, shown])
    return rows


def status(step: dict[str, Any]) -> str:
    """`refused` (the transformation failed), `failed` (a check failed) or `ok`."""
    if step.get("error"):
        return "refused"
    return "failed" if any(not c.get("ok", True) for c in step.get("checks", {}).values()) else "ok"


def _flatten(steps: list[dict[str, Any]], start: str, start_annotated: Optional[str], depth: int) \
        -> Iterator[tuple[dict[str, Any], str, Optional[str], int]]:
    """Each step with the code it started from (plain and annotated) and
    its depth, parents before their sub-steps."""
    before, annotated = start, start_annotated
    for s in steps:
        yield s, before, annotated, depth
        yield from _flatten(s.get("substeps", []), before, annotated, depth + 1)
        before, annotated = s["code"], s.get("annotated")


def page_step(step: dict[str, Any], before: str, annotated: Optional[str], depth: int,
              sides: dict[str, _Side]) -> dict[str, Any]:
    """What the page shows of one step (a trace.json written by an older
    otp may lack some fields: they are shown empty)."""
    def side(text: str) -> _Side:
        if text not in sides:
            sides[text] = _Side(text)
        return sides[text]

    out = {k: step.get(k) for k in ("number", "name", "args", "target", "line", "time_s", "fp", "tolerance", "error")}
    out.update(obligations=step.get("obligations", []), checks=step.get("checks", {}), depth=depth,
               status=status(step), substeps=len(step.get("substeps", [])),
               diff=diff_rows(side(before), side(step["code"])))
    if annotated is not None and step.get("annotated") is not None:
        out["contracts_diff"] = diff_rows(side(annotated), side(step["annotated"]))
    return out


def page_data(trace: dict[str, Any]) -> dict[str, Any]:
    """The blob the page's script reads: the run, its flattened steps, the
    original program highlighted."""
    original = trace.get("original") or ""
    sides: dict[str, _Side] = {}
    steps = [page_step(s, b, a, d, sides)
             for s, b, a, d in _flatten(trace["steps"], original, trace.get("original_annotated"), 0)]
    head = {k: trace.get(k) for k in ("script", "source", "spec", "target", "sizes", "error", "input_check",
                                    "models")}
    return {**head, "original": highlight_lines(original), "steps": steps}


def blob(data: Any) -> str:
    """JSON for a `<script type="application/json">` element: `<` is
    escaped so that nothing in it can close the element or open a comment."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def render_page(trace: dict[str, Any], bench_runs: list[dict[str, Any]]) -> str:
    """The whole page for a trace and the benchmark runs recorded beside it."""
    title = html.escape(f"otp trace: {trace.get('script', '')}")
    chart = bench_svg(bench_runs) if any(r.get("ok") for r in bench_runs) else ""
    data = {**page_data(trace), "bench": bench_runs}
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>\n'
            f"<style>{_CSS}</style></head>\n<body>\n{_BODY}\n"
            f'<template id="bench-chart">{chart}</template>\n'
            f'<script type="application/json" id="trace-data">{blob(data)}</script>\n'
            f"<script>{_JS}</script>\n</body></html>\n")


def refresh_page(folder: Path) -> Optional[Path]:
    """Redraw `folder/trace.html` from the trace and benchmark runs there
    (after `otp bench`); None when no run wrote a trace there yet."""
    trace_path = folder / TRACE_FILE
    if not trace_path.is_file():
        return None
    page = folder / PAGE_FILE
    write_atomic(page, render_page(json.loads(trace_path.read_text()), load_runs(folder)))
    return page


_CSS = """
:root{--bg:#fbfbfa;--side:#f1f0ec;--line:#d8d6cf;--add:#e6ffec;--addn:#ccffd8;--del:#ffebe9;--deln:#ffd7d5;
--ok:#1a7f37;--bad:#cf222e;--warn:#9a6700;--mut:#6e7781}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,sans-serif;background:var(--bg);color:#1f2328;
display:grid;grid-template-columns:minmax(260px,22%) 1fr;grid-template-rows:auto 1fr;height:100vh}
header{grid-column:1/3;padding:8px 14px;border-bottom:1px solid var(--line);background:#fff}
header h1{font-size:16px;margin:0 0 2px}header .meta{color:var(--mut);font-size:12px}
#banner{margin-top:6px;padding:6px 10px;border-radius:4px;background:var(--del);color:var(--bad);white-space:pre-wrap;
font-family:ui-monospace,monospace;font-size:12px}
nav{overflow:auto;background:var(--side);border-right:1px solid var(--line);padding:6px 0}
nav ol{list-style:none;margin:0;padding:0}nav li{padding:3px 10px;cursor:pointer;white-space:nowrap;
overflow:hidden;text-overflow:ellipsis;font-size:13px}nav li:hover{background:#e6e4de}
nav li.sel{background:#0969da;color:#fff}nav li .num{display:inline-block;min-width:2.6em;color:var(--mut)}
nav li.sel .num{color:#dbe9ff}nav li .st{display:inline-block;width:1.2em}
.st.ok{color:var(--ok)}.st.failed,.st.refused{color:var(--bad)}nav li.sel .st{color:#fff}
nav li .lab{float:right;font-size:11px;color:var(--mut)}nav li.sel .lab{color:#dbe9ff}
main{overflow:auto;padding:12px 18px}h2{font-size:17px;margin:0 0 6px;font-family:ui-monospace,monospace}
h3{font-size:14px;margin:16px 0 6px}.kv{color:var(--mut);font-size:13px}.kv b{color:#1f2328;font-weight:600}
.badge{display:inline-block;padding:1px 7px;border-radius:10px;font-size:12px;margin-right:4px;border:1px solid}
.badge.ok{color:var(--ok);border-color:var(--ok)}.badge.bad{color:var(--bad);border-color:var(--bad)}
.badge.warn{color:var(--warn);border-color:var(--warn)}
.error{border:1px solid var(--bad);background:var(--del);color:var(--bad);padding:8px 12px;border-radius:4px;
white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:12.5px}
.views{margin:8px 0}.views button{font:inherit;font-size:12px;padding:2px 9px;border:1px solid var(--line);
background:#fff;cursor:pointer}.views button.on{background:#0969da;color:#fff;border-color:#0969da}
table.diff{border-collapse:collapse;width:100%;font:12.5px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace;
background:#fff;border:1px solid var(--line)}table.diff td{padding:0 6px;white-space:pre;vertical-align:top}
td.no{color:var(--mut);text-align:right;user-select:none;width:1%;background:#f6f8fa}
td.sg{width:1%;user-select:none;color:var(--mut)}tr.add td.code,td.code.add{background:var(--add)}
tr.add td.no,td.no.add{background:var(--addn)}tr.del td.code,td.code.del{background:var(--del)}
tr.del td.no,td.no.del{background:var(--deln)}tr.hunk td{background:#ddf4ff;color:var(--mut)}
tr.re td.code{color:#57606a}table.diff.split{table-layout:fixed}table.diff.split td.no{width:3.5em}
table.diff td.split{white-space:pre-wrap;overflow-wrap:anywhere}
.k{color:#cf222e}.t{color:#8250df}.n{color:#0550ae}.s{color:#0a3069}.c{color:#6e7781;font-style:italic}
.p{color:#953800}table.grid{border-collapse:collapse;font-size:13px;background:#fff}
table.grid th,table.grid td{border:1px solid var(--line);padding:3px 8px;text-align:left;vertical-align:top}
table.grid th{background:#f6f8fa}td.proved,td.pass,td.eq{color:var(--ok)}
td.refuted,td.fail,td.crash{color:var(--bad);font-weight:600}td.unknown{color:var(--warn)}
pre.reason{margin:4px 0 0;white-space:pre-wrap;font-size:12px;color:var(--bad)}
.hint{color:var(--mut);font-size:12px;margin-top:18px}svg{max-width:100%;height:auto}
"""

_BODY = """<header><h1 id="title"></h1><div class="meta" id="meta"></div><div id="banner" hidden></div></header>
<nav><ol id="steps"></ol></nav>
<main id="panel"></main>"""

_JS = r"""
"use strict";
const data = JSON.parse(document.getElementById("trace-data").textContent);
const esc = s => String(s ?? "").replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})[c]);
const entries = [{kind: "input"}].concat(data.steps.map(s => ({kind: "step", step: s})));
if (data.bench.length) entries.push({kind: "bench"});
let current = 0, view = "unified";

function fmtTime(s) { return s >= 1 ? s.toFixed(2) + " s" : (s * 1000).toFixed(s < 0.01 ? 1 : 0) + " ms"; }
function fmtNum(x) {
  if (typeof x !== "number") return esc(x);
  return x === 0 ? "0" : Math.abs(x) < 1e-3 || Math.abs(x) >= 1e5 ? x.toExponential(2) : String(+x.toPrecision(3));
}
function l3label(s) { const l3 = s.checks.level3; return l3 ? (l3.ok ? l3.label : "✗ L3") : ""; }
function mark(st) { return st === "ok" ? "✓" : "✗"; }

function listItem(e, i) {
  if (e.kind === "input") {
    const ok = !data.input_check || data.input_check.ok;
    return `<li data-i="${i}"><span class="st ${ok ? "ok" : "failed"}">${ok ? "✓" : "✗"}</span>` +
           `<span class="num">0</span>input</li>`;
  }
  if (e.kind === "bench") return `<li data-i="${i}"><span class="st ok">▮</span><span class="num"></span>benchmark</li>`;
  const s = e.step;
  return `<li data-i="${i}" style="padding-left:${10 + 16 * s.depth}px" title="${esc(s.name + "(" + s.args.join(", ") + ")")}">` +
         `<span class="st ${s.status}">${mark(s.status)}</span><span class="num">${esc(s.number)}</span>` +
         `${esc(s.name)}<span class="lab">${esc(l3label(s))}</span></li>`;
}

function diffTable(rows, split) {
  if (!rows.length) return `<p class="kv">(no change)</p>`;
  const cls = {"+": "add", "-": "del", "~": "re", " ": "", "@": "hunk"};
  if (!split) {
    return `<table class="diff unified">` + rows.map(([t, o, n, h]) => t === "@"
      ? `<tr class="hunk"><td class="no"></td><td class="no"></td><td colspan="2">${h}</td></tr>`
      : `<tr class="${cls[t]}"><td class="no">${o ?? ""}</td><td class="no">${n ?? ""}</td>` +
        `<td class="sg">${t === "~" ? "" : t}</td><td class="code">${h}</td></tr>`).join("") + `</table>`;
  }
  const out = [];
  for (let i = 0; i < rows.length;) {
    const [t, o, n, h] = rows[i];
    if (t === "@") { out.push(`<tr class="hunk"><td colspan="4">${h}</td></tr>`); i++; continue; }
    if (t === " " || t === "~") {
      out.push(`<tr class="${cls[t]}"><td class="no">${o}</td><td class="code split">${h}</td>` +
               `<td class="no">${n}</td><td class="code split">${h}</td></tr>`); i++; continue;
    }
    const dels = [], adds = [];
    while (i < rows.length && rows[i][0] === "-") dels.push(rows[i++]);
    while (i < rows.length && rows[i][0] === "+") adds.push(rows[i++]);
    for (let k = 0; k < Math.max(dels.length, adds.length); k++) {
      const d = dels[k], a = adds[k];
      out.push(`<tr><td class="no ${d ? "del" : ""}">${d ? d[1] : ""}</td><td class="code split ${d ? "del" : ""}">${d ? d[3] : ""}</td>` +
               `<td class="no ${a ? "add" : ""}">${a ? a[2] : ""}</td><td class="code split ${a ? "add" : ""}">${a ? a[3] : ""}</td></tr>`);
    }
  }
  return `<table class="diff split"><colgroup><col style="width:3.5em"><col><col style="width:3.5em"><col></colgroup>` +
         `${out.join("")}</table>`;
}

function obligationsTable(obs) {
  if (!obs.length) return "";
  return `<h3>Obligations</h3><table class="grid obligations"><tr><th>kind</th><th>claim</th><th>status</th><th>time</th></tr>` +
    obs.map(o => `<tr><td>${esc(o.kind)}</td><td>${esc(o.claim)}${o.reason ? `<pre class="reason">${esc(o.reason)}</pre>` : ""}</td>` +
      `<td class="${esc(o.status.split(" ")[0])}">${esc(o.status)}</td><td>${o.time_s !== undefined ? fmtTime(o.time_s) : ""}</td></tr>`).join("") +
    `</table>`;
}

function badges(s) {
  const b = [], c = s.checks;
  const badge = (ok, text) => b.push(`<span class="badge ${ok ? "ok" : "bad"}">${esc(text)}</span>`);
  if (c.level1) badge(c.level1.ok, (c.level1.ok ? "✓" : "✗") + " L1 well-formed");
  if (c.level2) badge(c.level2.ok, c.level2.ok ? `✓ L2 ${c.level2.proved} proved` :
    `✗ L2 ${c.level2.refuted} refuted, ${c.level2.unknown} unknown, ${c.level2.resources.length} resource problems`);
  if (c.level3) badge(c.level3.ok, (c.level3.ok ? "✓ L3 " : "✗ L3 ") + c.level3.label);
  if (c.exec) badge(c.exec.ok, (c.exec.ok ? "✓" : "✗") + " exec " + c.exec.status);
  if (s.tolerance) b.push(`<span class="badge warn">lossy (rel tol ${fmtNum(s.tolerance)})</span>`);
  else if (s.fp !== "exact") b.push(`<span class="badge warn">≈fp (${esc(s.fp)})</span>`);
  return b.join("");
}

function level3Section(l3) {
  if (!l3) return "";
  let h = `<h3>Level 3: <span class="l3label">${esc(l3.label)}</span> <span class="kv">${fmtTime(l3.time_s)}</span></h3>`;
  h += l3.problems.map(p => `<div class="error">${esc(p)}</div>`).join("");
  if (l3.functions.length) h += `<table class="grid level3"><tr><th>function</th><th>sizes</th><th>result</th><th>cells</th><th>detail</th></tr>` +
    l3.functions.map(f => `<tr><td>${esc(f.function)}</td><td>${esc(Object.entries(f.sizes).map(([k, v]) => k + "=" + v).join(" "))}</td>` +
      `<td class="${f.status === "=" || f.status === "≈fp" ? "eq" : esc(f.status)}">${esc(f.status)}</td><td>${f.cells}</td><td>${esc(f.detail)}</td></tr>`).join("") + `</table>`;
  return h;
}

function execSection(ex) {
  if (!ex) return "";
  let h = `<h3>--exec: ${esc(ex.status)} <span class="kv">against ${esc(ex.reference)}, ` +
          `${ex.tolerance ? "relative tolerance " + fmtNum(ex.tolerance) : "bit-exact"}${ex.note ? ", " + esc(ex.note) : ""}</span></h3>`;
  if (ex.functions.length) h += `<table class="grid exec"><tr><th>function</th><th>status</th><th>elements</th>` +
    `<th>max abs err</th><th>max rel err</th><th>first mismatch</th></tr>` +
    ex.functions.map(f => `<tr><td>${esc(f.function)}${f.narrowed && f.narrowed.length ?
      `<div class="kv">${esc(f.narrowed.join(", "))} narrowed: given the inputs rounded</div>` : ""}</td><td class="${esc(f.status)}">${esc(f.status)}</td><td>${f.elements}</td>` +
      `<td>${fmtNum(f.max_abs_error)}</td><td>${fmtNum(f.max_rel_error)}</td><td>${f.first_mismatch ?
        esc(`${f.first_mismatch.where}: expected ${f.first_mismatch.expected}, got ${f.first_mismatch.actual}`) : ""}` +
      `${f.reason ? esc(f.reason) : ""}${f.stderr ? `<pre class="reason">${esc(f.stderr)}</pre>` : ""}</td></tr>`).join("") + `</table>`;
  return h;
}

function problemsSection(c) {
  const l1 = c.level1 && !c.level1.ok ? c.level1.problems : [];
  const res = c.level2 ? c.level2.resources : [];
  return l1.concat(res.map(r => "resources: " + r)).map(p => `<div class="error">${esc(p)}</div>`).join("");
}

function stepPanel(s) {
  const views = [["unified", "unified"], ["split", "side by side"]];
  if (s.contracts_diff) views.push(["contracts", "with loop contracts"]);
  if (!views.some(v => v[0] === view)) view = "unified";
  let h = `<h2>step ${esc(s.number)} ${esc(s.name)}(${esc(s.args.join(", "))})</h2>` +
    `<div class="kv">target <b>${esc(s.target ?? "-")}</b>${s.line ? ` · line <b>${s.line}</b>` : ""} · ` +
    `<b>${fmtTime(s.time_s)}</b>${s.substeps ? ` · composite of <b>${s.substeps}</b> sub-steps` : ""}</div>` +
    `<div class="badges" style="margin-top:6px">${badges(s)}</div>`;
  if (s.error) h += `<h3>Refused</h3><div class="error" id="step-error">${esc(s.error)}</div>`;
  h += problemsSection(s.checks);
  if (!s.error) {
    h += `<div class="views">` + views.map(([k, t]) => `<button data-view="${k}" class="${k === view ? "on" : ""}">${t}</button>`).join("") + `</div>`;
    h += diffTable(view === "contracts" ? s.contracts_diff : s.diff, view === "split");
  }
  h += obligationsTable(s.obligations) + level3Section(s.checks.level3) + execSection(s.checks.exec);
  return h;
}

function inputPanel() {
  const ic = data.input_check;
  let h = `<h2>input: ${esc(data.source ?? "")}</h2><div class="kv">contracts <b>${esc(data.spec ?? "-")}</b> · ` +
          `sizes <b>${esc(Object.entries(data.sizes ?? {}).map(([k, v]) => k + "=" + v).join(" ") || "-")}</b></div>`;
  if (ic) h += `<div style="margin-top:6px"><span class="badge ${ic.ok ? "ok" : "bad"}">${ic.ok ? "✓ L2 fits its contracts" : "✗ L2 does not fit its contracts"}</span></div>` +
               ic.resources.map(r => `<div class="error">${esc(r)}</div>`).join("");
  const models = data.models ?? [];
  if (models.length) h += `<h3>Functional models (level 3)</h3><table class="grid models"><tr><th>function</th>` +
    `<th>ensures</th><th>sizes</th><th>result</th><th>cells</th><th>detail</th></tr>` +
    models.map(m => `<tr><td>${esc(m.function)}</td><td>${esc(m.ensures)}</td>` +
      `<td>${esc(Object.entries(m.sizes).map(([k, v]) => k + "=" + v).join(" "))}</td>` +
      `<td class="${m.ok ? "eq" : "refuted"}">${esc(m.status)}</td><td>${m.cells}</td><td>${esc(m.detail)}</td></tr>`).join("") +
    `</table><div class="kv">every later step labelled = or ≈fp at these sizes keeps it</div>`;
  h += `<h3>Original program</h3><table class="diff">` +
       data.original.map((l, i) => `<tr><td class="no">${i + 1}</td><td class="code">${l}</td></tr>`).join("") + `</table>`;
  return h;
}

function benchPanel() {
  let h = `<h2>benchmark</h2><div class="chart">${document.getElementById("bench-chart").innerHTML}</div>`;
  h += `<table class="grid benchruns"><tr><th>sizes</th><th>threads</th><th>measured</th><th>speedup</th><th>max rel err</th></tr>` +
    data.bench.map(r => `<tr><td>${esc(Object.entries(r.sizes).map(([k, v]) => k + "=" + v).join(" "))}</td><td>${r.threads}</td>` +
      `<td>${esc(r.measured_at ?? "")}</td><td>${r.ok ? r.speedup.toFixed(2) + "×" : `<span class="badge bad">${esc(r.error)}</span>`}</td>` +
      `<td>${fmtNum(r.max_rel_err)}</td></tr>`).join("") + `</table>`;
  return h;
}

function select(i) {
  current = Math.max(0, Math.min(entries.length - 1, i));
  const e = entries[current];
  document.querySelectorAll("#steps li").forEach(li => li.classList.toggle("sel", +li.dataset.i === current));
  const sel = document.querySelector("#steps li.sel");
  if (sel) sel.scrollIntoView({block: "nearest"});
  const panel = document.getElementById("panel");
  panel.innerHTML = (e.kind === "input" ? inputPanel() : e.kind === "bench" ? benchPanel() : stepPanel(e.step)) +
    `<p class="hint">j / k or ↓ / ↑: next / previous step · v: unified / side by side / with loop contracts</p>`;
  panel.querySelectorAll(".views button").forEach(b => b.onclick = () => { view = b.dataset.view; select(current); });
  history.replaceState(null, "", "#" + (e.kind === "step" ? "step-" + e.step.number : e.kind));
}

function cycleView() {
  const e = entries[current];
  const order = ["unified", "split"].concat(e.kind === "step" && e.step.contracts_diff ? ["contracts"] : []);
  view = order[(order.indexOf(view) + 1) % order.length];
  select(current);
}

document.getElementById("title").textContent = "otp trace: " + (data.script ?? "");
document.getElementById("meta").textContent = `${data.steps.filter(s => !s.depth).length} steps · ` +
  `${data.steps.filter(s => s.status !== "ok").length} failed · target ${data.target ?? "cpu"}`;
if (data.error) { const b = document.getElementById("banner"); b.hidden = false; b.textContent = data.error; }
document.getElementById("steps").innerHTML = entries.map(listItem).join("");
document.getElementById("steps").onclick = ev => { const li = ev.target.closest("li"); if (li) select(+li.dataset.i); };
document.addEventListener("keydown", ev => {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (ev.key === "j" || ev.key === "ArrowDown") { select(current + 1); ev.preventDefault(); }
  else if (ev.key === "k" || ev.key === "ArrowUp") { select(current - 1); ev.preventDefault(); }
  else if (ev.key === "v") cycleView();
});
const hash = decodeURIComponent(location.hash.slice(1));
const start = entries.findIndex(e => (e.kind === "step" ? "step-" + e.step.number : e.kind) === hash);
const failed = entries.findIndex(e => e.kind === "step" && e.step.status !== "ok");
select(start >= 0 ? start : failed >= 0 ? failed : Math.min(1, entries.length - 1));
"""
