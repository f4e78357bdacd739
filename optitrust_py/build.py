"""The one place that runs gcc: syntax checks (level 1) and builds (the exec
check, benchmarks).

- `syntax_check(text, name)` runs `gcc -std=c11 -Wall -Werror -fsyntax-only`
  and returns gcc's diagnostics, with the temporary file's name replaced by
  `name`, one entry per diagnostic (an empty list means the text compiles).
- `compile_exe(text, name, flags)` / `compile_shared(...)` build an executable
  or a shared object and return its path. Builds are cached under
  `<system temp>/otp-build-<uid>/` (`$OTP_BUILD_CACHE` overrides), keyed by
  a hash of the text, the flags, gcc's identity and `include/otp.h`: an
  identical build is reused within a process and across runs; builds unused
  for a week are removed. A build that fails raises `BuildFailed` (gcc's
  diagnostics, about the user's code); gcc missing or unusable raises
  `ToolError`.
- `compile_many(...)` / `parallel_map(...)` run several builds at once on a
  small thread pool (gcc is a separate process, so threads are enough).

Every compile gets `-I <package>/include`, whose `otp.h` turns the in-source
contract clauses (`__reads("...")`, ...) into nothing, links `-lm`, and adds
`-fopenmp` when the text has an `omp` pragma (so `-Wall`'s unknown-pragma
warning does not fire and parallel code really runs in parallel), and
`-Wno-unknown-pragmas` when it has otp's GPU marks (`#pragma otp gpu block x`,
see cuda_map.py), loops gcc runs sequentially.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, TypeVar, Union

from .errors import OtpError, ToolError

INCLUDE_DIR = Path(__file__).parent / "include"
"""Headers for real builds (`otp.h`); pass `-I` this to compile otp's output."""

SYNTAX_FLAGS = ("-std=c11", "-Wall", "-Werror", "-fsyntax-only")
EXEC_FLAGS = ("-std=c11", "-O1", "-ffp-contract=off", "-fno-fast-math")
"""Flags for the exec check: optimised enough to be quick, with no float
contraction or fast-math so that two programs doing the same float operations
in the same order give bit-identical results."""
BENCH_FLAGS = ("-O3", "-march=native", "-fopenmp")
"""Flags for `otp bench`: what a user would ship (OpenMP always on, so the
original and the optimized program are built alike). No `-std=c11`: in an
ISO mode gcc stops contracting `a * b + c` into FMAs, which halves the speed
of float kernels and is not how such code is built."""
SANITIZE_FLAGS = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                  "-fno-omit-frame-pointer", "-g")
"""Added by the exec check's `sanitize=True`: out-of-bounds accesses and
undefined behaviour stop the program with a report."""
SANITIZE_ENV = {
    "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:exitcode=86",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1:exitcode=87",
}
"""Environment for running sanitized programs (leaks are not errors here)."""

_OMP_RE = re.compile(r"^[ \t]*#[ \t]*pragma[ \t]+omp\b", re.M)
_GPU_MARK_RE = re.compile(r"^[ \t]*#[ \t]*pragma[ \t]+otp[ \t]+gpu\b", re.M)
_DIAG_START = re.compile(r"^(\S.*?:\d+:(\d+:)? |cc1\S*: |gcc\S*: |collect2: |/\S*ld\S*: )")


class BuildFailed(OtpError):
    """gcc rejected the code: `diagnostics` are its messages, one entry per
    diagnostic, naming the source as the caller named it."""

    def __init__(self, name: str, diagnostics: Sequence[str]) -> None:
        self.diagnostics = list(diagnostics)
        shown = "\n".join(self.diagnostics[:20])
        more = f"\n... ({len(self.diagnostics) - 20} more)" if len(self.diagnostics) > 20 else ""
        super().__init__(f"gcc could not build {name}:\n{shown}{more}")
        self.name = name


# ----------------------------------------------------------------- gcc


def find_gcc() -> str:
    """The path of gcc (`$CC` when it names a gcc-compatible compiler), or ToolError."""
    cc = os.environ.get("OTP_CC") or "gcc"
    path = shutil.which(cc)
    if path is None:
        raise ToolError(f"gcc is needed for this check and '{cc}' was not found on PATH "
                        "(install gcc, or set OTP_CC to a gcc-compatible compiler)")
    return path


@functools.lru_cache(maxsize=None)
def _gcc_identity(gcc: str) -> str:
    """gcc's path and version: part of every cache key."""
    try:
        out = subprocess.run([gcc, "-dumpfullversion", "-dumpversion"], capture_output=True,
                             text=True, env=run_env(), timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise ToolError(f"cannot run {gcc}: {e}") from None
    return f"{gcc} {out.stdout.strip()}"


def run_env(extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The environment gcc and built programs run in: the caller's, with
    LC_ALL=C (plain messages) and `extra` (e.g. SANITIZE_ENV)."""
    env = dict(os.environ)
    env["LC_ALL"] = "C"  # plain ASCII quotes in messages
    env.pop("GCC_COLORS", None)
    if extra:
        env.update(extra)
    return env


def uses_openmp(c_text: str) -> bool:
    return bool(_OMP_RE.search(c_text))


def _common_flags(c_text: str) -> list[str]:
    flags = ["-fdiagnostics-color=never", "-fno-diagnostics-show-caret", "-I", str(INCLUDE_DIR)]
    if uses_openmp(c_text):
        flags.append("-fopenmp")
    if _GPU_MARK_RE.search(c_text):
        flags.append("-Wno-unknown-pragmas")  # otp's GPU marks: gcc runs those loops sequentially
    return flags


def _diagnostics(stderr: str, src: str, name: str) -> list[str]:
    """gcc's stderr as a list of diagnostics (continuation lines folded into
    the one before), with the temporary source path replaced by `name`."""
    out: list[str] = []
    for line in stderr.replace(src, name).splitlines():
        if not line.strip() or ": In function " in line or line.startswith("In file included from"):
            continue
        if line.startswith("cc1: all warnings being treated as errors") or line.startswith("compilation terminated"):
            continue
        if _DIAG_START.match(line) or not out:
            out.append(line)
        else:
            out[-1] += "\n" + line
    return out


# ----------------------------------------------------------------- syntax check


@functools.lru_cache(maxsize=256)
def _syntax_check_cached(c_text: str, name: str, flags: tuple[str, ...]) -> tuple[str, ...]:
    gcc = find_gcc()
    with tempfile.TemporaryDirectory(prefix="otp-syntax-") as tmp:
        src = os.path.join(tmp, "otp-input.c")
        Path(src).write_text(c_text)
        cmd = [gcc, *SYNTAX_FLAGS, *_common_flags(c_text), *flags, src]
        proc = _run_gcc(cmd)
        if proc.returncode == 0:
            return ()
        diags = _diagnostics(proc.stderr, src, name)
        if proc.returncode != 1:  # 1: the code has errors; anything else: gcc itself failed
            raise ToolError(f"gcc could not check {name}: it stopped with exit status {proc.returncode}"
                            + "".join(f"\n{d}" for d in diags))
        return tuple(diags) or (f"gcc failed (exit {proc.returncode}) without a message",)


def syntax_check(c_text: str, name: str, flags: Sequence[str] = ()) -> list[str]:
    """`gcc -std=c11 -Wall -Werror -fsyntax-only` on `c_text`: gcc's
    diagnostics naming the source `name` (e.g. `matmul.c:3:5: error: ...`);
    empty when the text compiles. `flags` are added (e.g. `-I dir` for a
    user's own headers)."""
    return list(_syntax_check_cached(c_text, name, tuple(flags)))


def _run_gcc(cmd: list[str], cwd: Optional[Path] = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=run_env(), timeout=600, cwd=cwd)
    except subprocess.TimeoutExpired:
        raise ToolError(f"gcc took more than 10 minutes: {' '.join(cmd)}") from None
    except OSError as e:
        raise ToolError(f"cannot run gcc ({cmd[0]}): {e}") from None


# ----------------------------------------------------------------- builds


def cache_dir() -> Path:
    """Where builds are kept: `<system temp>/otp-build-<uid>` (`$OTP_BUILD_CACHE` overrides)."""
    root = os.environ.get("OTP_BUILD_CACHE")
    uid = getattr(os, "getuid", lambda: 0)()
    d = Path(root) if root else Path(tempfile.gettempdir()) / f"otp-build-{uid}"
    d.mkdir(parents=True, exist_ok=True)
    _prune(str(d))
    return d


CACHE_MAX_AGE_S = 7 * 24 * 3600


@functools.lru_cache(maxsize=None)
def _prune(d: str) -> None:
    """Once per process and cache dir: drop builds not used for a week."""
    cutoff = time.time() - CACHE_MAX_AGE_S
    try:
        entries = list(os.scandir(d))
    except OSError:
        return
    for e in entries:
        try:
            if e.is_file() and e.stat().st_atime < cutoff and e.stat().st_mtime < cutoff:
                os.unlink(e.path)
        except OSError:
            pass


@functools.lru_cache(maxsize=1)
def _header_hash() -> str:
    h = hashlib.sha256()
    for p in sorted(INCLUDE_DIR.glob("*.h")):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock_for(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def build_key(c_text: str, flags: Sequence[str], kind: str) -> str:
    """The cache key of a build: text, flags, kind, gcc and otp.h."""
    blob = json.dumps([kind, c_text, list(flags), _gcc_identity(find_gcc()), _header_hash()])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _compile(c_text: str, name: str, flags: Sequence[str], kind: str) -> Path:
    gcc = find_gcc()
    key = build_key(c_text, flags, kind)
    d = cache_dir()
    suffix = ".so" if kind == "shared" else ".exe"
    out = d / f"{key}{suffix}"
    with _lock_for(key):
        if out.is_file():
            os.utime(out)  # keep it from being pruned
            return out
        src = d / f"{key}.c"
        src_tmp = d / f"{key}.{os.getpid()}.{threading.get_ident()}.c"
        src_tmp.write_text(c_text)
        os.replace(src_tmp, src)
        tmp_out = d / f"{key}.{os.getpid()}.{threading.get_ident()}.tmp"
        kind_flags = ["-shared", "-fPIC"] if kind == "shared" else []
        cmd = [gcc, *_common_flags(c_text), *kind_flags, *flags, str(src), "-o", str(tmp_out), "-lm"]
        proc = _run_gcc(cmd, cwd=d)  # debug info names files relative to the cache
        if proc.returncode != 0:
            tmp_out.unlink(missing_ok=True)
            diags = _diagnostics(proc.stderr, str(src), name)
            raise BuildFailed(name, diags or [f"gcc failed (exit {proc.returncode}) without a message"])
        os.replace(tmp_out, out)
        return out


def compile_exe(c_text: str, name: str, flags: Sequence[str] = EXEC_FLAGS) -> Path:
    """Build an executable from `c_text` (which defines `main`), linked with
    `-lm`; cached. BuildFailed with gcc's diagnostics naming `name`."""
    return _compile(c_text, name, tuple(flags), "exe")


def compile_shared(c_text: str, name: str, flags: Sequence[str] = EXEC_FLAGS) -> Path:
    """Build a shared object (`-shared -fPIC`, `-lm`) for ctypes; cached."""
    return _compile(c_text, name, tuple(flags), "shared")


@functools.lru_cache(maxsize=None)
def check_sanitizers() -> None:
    """ToolError unless gcc can build and run with SANITIZE_FLAGS."""
    try:
        exe = compile_exe("int main(void) { return 0; }\n", "<sanitizer probe>",
                          EXEC_FLAGS + SANITIZE_FLAGS)
        proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60,
                              env=run_env(SANITIZE_ENV))
    except BuildFailed as e:
        raise ToolError("gcc cannot build with -fsanitize=address,undefined here "
                        f"(libasan/libubsan missing?): {e.diagnostics[:3]}") from None
    except (OSError, subprocess.SubprocessError) as e:
        raise ToolError(f"a sanitized program cannot run here: {e}") from None
    if proc.returncode != 0:
        raise ToolError(f"a sanitized program cannot run here: {proc.stderr.strip()[:500]}")


# ----------------------------------------------------------------- parallelism

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """Parallel gcc processes: the cores, between 2 and 4."""
    return max(2, min(4, os.cpu_count() or 2))


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: Optional[int] = None
                 ) -> list[Union[R, BaseException]]:
    """`fn` over `items` on a small thread pool, in order; an item whose call
    raised an OtpError gives the exception in its place (other exceptions
    propagate), so the caller decides which failures matter."""
    items = list(items)

    def safe(x: T) -> Union[R, BaseException]:
        try:
            return fn(x)
        except OtpError as e:
            return e

    if len(items) <= 1:
        return [safe(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(workers or default_workers(), len(items))) as pool:
        return list(pool.map(safe, items))


def compile_many(sources: Sequence[tuple[str, str]], flags: Sequence[str] = EXEC_FLAGS,
                 kind: str = "exe", workers: Optional[int] = None) -> list[Union[Path, BuildFailed]]:
    """Build `(c_text, name)` pairs concurrently; each entry is the built path
    or the BuildFailed for that source (a ToolError is raised)."""
    if kind not in ("exe", "shared"):
        raise ValueError(f"kind must be 'exe' or 'shared', not {kind!r}")
    results = parallel_map(lambda s: _compile(s[0], s[1], tuple(flags), kind), sources, workers)
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, BuildFailed):
            raise r
    return results  # type: ignore[return-value]
