"""The one place that runs nvcc: the level-1 compile check of emitted CUDA
(`nvcc -arch=sm_90 -Werror all-warnings`, compile only: no GPU needed) and
shared-library builds for `otp bench --target cuda`.

nvcc is `$OTP_NVCC`, else `nvcc` on PATH, else /usr/local/cuda/bin/nvcc.
Builds are cached like gcc's (build.cache_dir), keyed by the text and flags.
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from .cuda_emit import to_cuda
from .build import INCLUDE_DIR, BuildFailed, cache_dir, run_env
from . import ir
from .errors import ToolError

ARCH_FLAGS = ("-arch=sm_90",)
CHECK_FLAGS = (*ARCH_FLAGS, "-Werror", "all-warnings", "-std=c++17")
BENCH_FLAGS = (*ARCH_FLAGS, "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC")
_DEFAULT = "/usr/local/cuda/bin/nvcc"


def find_nvcc() -> Optional[str]:
    """The path of nvcc, or None when this machine has none."""
    named = os.environ.get("OTP_NVCC")
    if named:
        return shutil.which(named)
    return shutil.which("nvcc") or (_DEFAULT if os.access(_DEFAULT, os.X_OK) else None)


def _nvcc() -> str:
    path = find_nvcc()
    if path is None:
        raise ToolError("nvcc is needed for --target cuda and was not found (PATH, /usr/local/cuda/bin; "
                        "OTP_NVCC names another)")
    return path


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=run_env(), timeout=600)
    except subprocess.TimeoutExpired:
        raise ToolError(f"nvcc took more than 10 minutes: {' '.join(cmd)}") from None
    except OSError as e:
        raise ToolError(f"cannot run nvcc ({cmd[0]}): {e}") from None


def _diagnostics(stderr: str, src: str, name: str) -> list[str]:
    return [line.replace(src, name) for line in stderr.splitlines() if line.strip()]


@functools.lru_cache(maxsize=64)
def compile_check(cu_text: str, name: str) -> tuple[str, ...]:
    """nvcc's diagnostics for `cu_text` (named `name` in them); empty when it compiles."""
    nvcc = _nvcc()
    with tempfile.TemporaryDirectory(prefix="otp-nvcc-") as tmp:
        src = os.path.join(tmp, "otp-input.cu")
        Path(src).write_text(cu_text)
        proc = _run([nvcc, *CHECK_FLAGS, "-I", str(INCLUDE_DIR), "-c", src, "-o", os.path.join(tmp, "out.o")])
        if proc.returncode == 0:
            return ()
        return tuple(_diagnostics(proc.stderr, src, name)) or (f"nvcc failed (exit {proc.returncode})",)


def build_shared(cu_text: str, name: str, flags: Sequence[str] = BENCH_FLAGS) -> Path:
    """A shared library of `cu_text` built by nvcc (cached); BuildFailed with nvcc's messages."""
    nvcc = _nvcc()
    key = hashlib.sha256("\0".join([nvcc, *flags, cu_text]).encode()).hexdigest()[:24]
    out = cache_dir() / f"cuda-{key}.so"
    if out.exists():
        return out
    with tempfile.TemporaryDirectory(prefix="otp-nvcc-") as tmp:
        src = os.path.join(tmp, "otp-input.cu")
        Path(src).write_text(cu_text)
        part = os.path.join(tmp, "lib.so")
        proc = _run([nvcc, *flags, "-I", str(INCLUDE_DIR), src, "-o", part])
        if proc.returncode != 0:
            raise BuildFailed(name, _diagnostics(proc.stderr, src, name))
        shutil.move(part, out)
    return out


def emit_checked(program: ir.Program, name: str) -> tuple[str, list[str]]:
    """The CUDA text of `program` and, at level 1, nvcc's complaints about it
    (each prefixed `nvcc:`). CudaError when the program cannot be emitted."""
    text = to_cuda(program)
    return text, [f"nvcc: {d}" for d in compile_check(text, name)]
