"""GPU transformations (transformations/gpu.py) and the CUDA back end
(cuda_emit, cuda_build): mapped loops on the real kernels, the CUDA they
print, nvcc's verdict on it, the level-2 proofs of the scripts' CUDA
endings, and a corpus of invalid GPU steps that level 2 rejects with the
reason. Nothing here needs a GPU; the nvcc tests are skipped, saying so,
only where nvcc is absent."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from optitrust_py import ir
from optitrust_py.cuda_build import compile_check, find_nvcc
from optitrust_py.cuda_emit import CudaError, to_cuda
from optitrust_py.cuda_map import mapping
from optitrust_py.frontend import parse_text
from optitrust_py.level2 import check_step
from optitrust_py.session import Rewrite
from optitrust_py.spec import parse_spec_text
from optitrust_py.tree import walk
from transformations import gpu, loop
from helpers import matmul_args, refusal, refuted

ROOT = Path(__file__).resolve().parent.parent
needs_nvcc = pytest.mark.skipif(find_nvcc() is None, reason="nvcc is not installed here (PATH, /usr/local/cuda/bin)")


def steps(program: ir.Program, *calls: tuple[Any, ...]) -> ir.Program:
    for fn, *args in calls:
        program = fn.apply(program, *args).program
    return program


def mappings(program: ir.Program) -> list[tuple[str, tuple[str, str]]]:
    return [(n.index, m) for _, n in walk(program) if (m := mapping(n)) is not None]


def rows_in_blocks(ck: Any) -> ir.Program:
    """matmul with a block per row and 256 columns, a thread per column."""
    return steps(ck.load("matmul.c"), (loop.tile, "matmul > for j", 256, "bj", "guard"),
                 (gpu.map_blocks, "matmul > for i", "y"), (gpu.map_blocks, "matmul > for bj", "x"),
                 (gpu.map_threads, "matmul > for j", "x"))


# ----------------------------------------------------------------- mapping


def test_map_blocks_and_threads_mark_the_loops_and_keep_the_results(ck):
    p0 = ck.load("matmul.c")
    p = rows_in_blocks(ck)
    assert mappings(p) == [("i", ("block", "y")), ("bj", ("block", "x")), ("j", ("thread", "x"))]
    assert "#pragma otp gpu thread x" in ck.function_text(p, "matmul")
    ck.roundtrip(p)
    ck.compiles(p)
    ck.same_outputs(p0, p, "matmul", matmul_args(ck, 5, 300, 7))


def test_each_mapping_declares_parallel_and_level2_proves_it(ck):
    p = steps(ck.load("matmul.c"), (loop.tile, "matmul > for j", 256, "bj", "guard"))
    rw = gpu.map_blocks.apply(p, "matmul > for i", "y")
    assert [o.kind for o in rw.obligations] == ["parallel"]
    contracts = parse_spec_text((ROOT / "specs" / "matmul.spec").read_text())
    result = check_step(p, rw.program, rw.obligations, contracts)
    assert result.ok, result.problems


@pytest.mark.parametrize("calls, message", [
    ([(gpu.map_threads, "matmul > for j", "x")], "is not inside a loop mapped to blocks"),
    ([(gpu.map_blocks, "matmul > for i", "y"), (gpu.map_threads, "matmul > for j", "x")],
     "does not run a constant number of iterations"),
    ([(gpu.map_blocks, "matmul > for i", "w")], "axis must be one of x, y, z"),
    ([(gpu.map_blocks, "matmul > for i", "y"), (gpu.map_blocks, "matmul > for j", "y")],
     "inside another loop mapped to block y"),
    ([(gpu.map_blocks, "matmul > for i", "y"), (gpu.map_blocks, "matmul > for i", "x")], "already has"),
])
def test_mapping_refusals(ck, calls, message):
    p = steps(ck.load("matmul.c"), *calls[:-1])
    fn, *args = calls[-1]
    assert message in refusal(fn.apply, p, *args)


def test_block_inside_thread_is_refused(ck):
    p = steps(ck.load("matmul.c"), (loop.tile, "matmul > for i", 16, "bi", "guard"),
              (gpu.map_blocks, "matmul > for bi", "y"), (gpu.map_threads, "matmul > for i", "y"))
    assert "is inside a thread loop" in refusal(gpu.map_blocks.apply, p, "matmul > for j", "x")


# ----------------------------------------------------------------- printing CUDA


def test_cuda_of_rows_in_blocks(ck):
    cu = to_cuda(rows_in_blocks(ck))
    assert "__global__ void matmul_kernel1(int M, int N, int K, const float *A, const float *B, float *C)" in cu
    assert "int i = (int)blockIdx.y;" in cu and "int bj = (int)blockIdx.x * 256;" in cu
    assert "int j = bj + (int)threadIdx.x;" in cu
    assert 'extern "C" void matmul(' in cu
    assert "matmul_kernel1<<<dim3((N + (256 - 1)) / 256, M, 1), dim3(256, 1, 1)>>>(M, N, K, A, B, C);" in cu
    assert "__syncthreads" not in cu  # one phase: nothing to wait for


def staged(ck: Any) -> ir.Program:
    """A block of 16 x 16 threads per tile of C, A's tile staged in shared
    memory, C's tile in a register per thread."""
    src = ck.parse(textwrap.dedent("""
        void mm(int M, int N, int K, const float *A, const float *B, float *C) {
          for (int bi = 0; bi < M; bi += 16) {
            for (int bj = 0; bj < N; bj += 16) {
              for (int bk = 0; bk < K; bk += 16) {
                for (int i = bi; i < bi + 16; i++) {
                  for (int j = bj; j < bj + 16; j++) {
                    for (int k = bk; k < bk + 16; k++) {
                      C[i * N + j] += A[i * K + k] * B[k * N + j];
                    }
                  }
                }
              }
            }
          }
        }"""), "mm.c")
    p = steps(src, (gpu.map_blocks, "mm > for bi", "y"), (gpu.map_blocks, "mm > for bj", "x"))
    p = gpu.stage.apply(p, "mm > for bj > for bk", "C", "acc", ["M", "N"]).program
    p = gpu.stage.apply(p, "mm > for bk > for i", "A", "As", ["M", "K"]).program
    return steps(p, (gpu.map_threads, "mm > for bk > for i", "y"), (gpu.map_threads, "mm > for bk > for i > for j", "x"))


def test_shared_tiles_registers_and_barriers(ck):
    cu = to_cuda(staged(ck))
    assert "__shared__ __align__(16) float As[16][16];" in cu
    assert "  float acc;\n" in cu and "acc += As[i - bi][k - bk] * B[k * N + j];" in cu
    body = cu.split("for (int bk = 0; bk < K; bk += 16) {")[1]
    copy, use = body.index("As[i0_1][i1_1] = A["), body.index("acc += As")
    barrier = body.index("__syncthreads();")
    assert copy < barrier < use  # copy in, barrier, use
    assert body[use:].startswith("acc += As[i - bi][k - bk] * B[k * N + j];\n      }\n    }\n    __syncthreads();\n  }")
    # ... and a barrier before the next tile overwrites As


def test_stage_refuses_a_loop_that_does_not_touch_the_array(ck):
    p = steps(ck.load("matmul.c"), (loop.tile, "matmul > for i", 16, "bi", "guard"),
              (gpu.map_blocks, "matmul > for bi", "y"))
    with pytest.raises(Exception) as info:
        gpu.stage.apply(p, "matmul > for bi > for i", "D", "Ds")
    assert "D" in str(info.value)


@pytest.mark.parametrize("text, message", [
    ("""void f(int n, float *x) {
          x[0] = 1.0f;
          #pragma otp gpu block x
          for (int i = 0; i < n; i++) {
            x[i] = 0.0f;
          }
        }""", "runs on the host between kernels"),
    ("""void f(int n, float *x) {
          #pragma otp gpu block x
          for (int i = 0; i < n; i++) {
            x[i] = 0.0f;
          }
        }""", "would run on every thread of the block"),
    ("""void f(int n, float *x) {
          for (int i = 0; i < n; i++) {
            x[i] = 0.0f;
          }
        }""", "no loop mapped to the GPU"),
    ("""#include <stdlib.h>
        void f(int n, float *x) {
          #pragma otp gpu block x
          for (int b = 0; b < n; b += 64) {
            float *tmp = malloc(64 * sizeof(float));
            #pragma otp gpu thread x
            for (int i = b; i < b + 64; i++) {
              x[i] = 0.0f;
            }
          }
        }""", "initialized by a call every thread of the block would make"),
    ("""void f(int n, float *x) {
          #pragma otp gpu block x
          for (int b = 0; b < n; b += 2048) {
            #pragma otp gpu thread x
            for (int i = b; i < b + 2048; i++) {
              x[i] = 0.0f;
            }
          }
        }""", "over the 1024 a block may have"),
])
def test_cuda_refusals(ck, text, message):
    with pytest.raises(CudaError) as info:
        to_cuda(parse_text(textwrap.dedent(text), "f.c"))
    assert message in info.value.message


@needs_nvcc
def test_nvcc_compiles_what_the_printer_writes(ck):
    for program in (rows_in_blocks(ck), staged(ck)):
        assert compile_check(to_cuda(program), "final.cu") == ()


@needs_nvcc
def test_nvcc_errors_are_reported():
    problems = compile_check("__global__ void k(int *x) { x[0] = y; }\n", "bad.cu")
    assert problems and any("bad.cu" in p and "y" in p for p in problems)


# ----------------------------------------------------------------- the scripts' CUDA endings


def otp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "optitrust_py", *args], cwd=ROOT, capture_output=True, text=True)


@needs_nvcc
@pytest.mark.parametrize("script", ["scripts/matmul.py", "scripts/softmax.py", "scripts/attention.py"])
def test_cuda_endings_pass_level2_exec_and_nvcc(script):
    r = otp("check", script, "--level", "2", "--exec", "--target", "cuda", "--no-color")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 obligations not proved" in r.stdout and "0 resource problems" in r.stdout


@needs_nvcc
def test_run_writes_final_cu(tmp_path):
    r = otp("run", "scripts/softmax.py", "--target", "cuda", "--quiet", "--no-color", "--out", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    cu = (tmp_path / "softmax" / "final.cu").read_text()
    assert "__global__ void softmax_kernel1" in cu and "__shared__ __align__(16) float sum_part[256];" in cu
    assert "#pragma otp" in (tmp_path / "softmax" / "final.c").read_text()


def test_bench_without_gpu_is_refused_cleanly():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: tests/benchmarks/cuda_bench.py times it")
    if find_nvcc() is None:
        pytest.skip("nvcc is not installed here")
    r = otp("bench", "scripts/softmax.py", "--target", "cuda")
    assert r.returncode == 2 and "needs a CUDA GPU" in r.stderr, r.stderr


# ----------------------------------------------------------------- the invalid GPU steps


TWO_PHASES = """
    void center(int n, const float *x, float *y) {
      for (int b = 0; b < n; b += 64) {
        float s[64];
        for (int t = 0; t < 64; t++) {
          s[t] = x[b + t];
        }
        for (int t = 0; t < 64; t++) {
          y[b + t] = x[b + t] - s[0];
        }
      }
    }
"""
TWO_PHASES_SPEC = """
    center(n, x, y):
      requires n >= 64, n % 64 == 0
      reads    x ~> Matrix1(n)
      writes   y ~> Matrix1(n)
"""


def race(before: ir.Program, rewrite: Rewrite, contracts: dict[str, Any]) -> str:
    """The GPU race level 2 reports for a step whose own obligations hold."""
    result = check_step(before, rewrite.program, rewrite.obligations, contracts)
    assert all(v.status == "proved" for v in result.verdicts), result.problems
    races = [r for r in result.resources if r.startswith("GPU race")]
    assert len(races) == 1, result.problems
    return races[0]


def test_missing_barrier_is_a_race(ck):
    """Fusing the copy-in phase with the phase that reads it removes the
    barrier between them: valid sequentially (t reads s[0], written at
    t = 0), a race on the GPU (thread t reads s[0] while thread 0 writes it)."""
    p = steps(ck.parse(textwrap.dedent(TWO_PHASES), "center.c"), (gpu.map_blocks, "center > for b", "x"),
              (gpu.map_threads, "center > for t#1", "x"), (gpu.map_threads, "center > for t#2", "x"))
    contracts = parse_spec_text(textwrap.dedent(TWO_PHASES_SPEC))
    assert check_step(p, p, (), contracts).ok
    fused = loop.fusion.apply(p, "center > for t#1")
    reason = race(p, fused, contracts)
    assert "for t" in reason and "refuted" in reason and "s[" in reason


def test_two_threads_writing_one_cell_is_refuted(ck):
    """The k loop of a dot product mapped to threads: every thread updates C[i][j]."""
    p = steps(ck.load("matmul.c"), (loop.tile, "matmul > for k", 32, "bk", "divides"),
              (gpu.map_blocks, "matmul > for i", "y"))
    contracts = parse_spec_text((ROOT / "specs" / "matmul.spec").read_text())
    reason = refuted(p, gpu.map_threads.apply(p, "matmul > for k", "x"), contracts)
    assert reason.startswith("parallel") and "C[" in reason


def test_block_mapping_across_a_dependence_is_refuted(ck):
    """Rows of an in-place prefix sum depend on the row before: not blocks."""
    src = ck.parse(textwrap.dedent("""
        void prefix(int R, int C, float *x) {
          for (int i = 1; i < R; i++) {
            for (int j = 0; j < C; j++) {
              x[i * C + j] += x[(i - 1) * C + j];
            }
          }
        }"""), "prefix.c")
    contracts = parse_spec_text("prefix(R, C, x):\n  requires R >= 2, C >= 1\n  modifies x ~> Matrix2(R, C)\n")
    reason = refuted(src, gpu.map_blocks.apply(src, "prefix > for i", "x"), contracts)
    assert reason.startswith("parallel") and "x[" in reason and "meet" in reason


def test_reduction_mapped_to_threads_without_gpu_reduce_is_refuted(ck):
    """A sum every thread adds into: gpu.reduce is the valid way."""
    p = steps(ck.load("softmax.c"), (gpu.map_blocks, "softmax > for i", "x"),
              (loop.tile, "softmax > for j#3", 64, "bj", "guard"), (loop.tile, "softmax > for j#2", 64, "bj2", "guard"))
    contracts = parse_spec_text((ROOT / "specs" / "softmax.spec").read_text())
    reason = refuted(p, gpu.map_threads.apply(p, "softmax > for bj2 > for j", "x"), contracts)
    assert reason.startswith("parallel") and "sum" in reason


def test_reduce_refuses_what_is_not_a_reduction(ck):
    p = steps(ck.load("softmax.c"), (gpu.map_blocks, "softmax > for i", "x"))
    assert "not a float or double reduction" in refusal(gpu.reduce.apply, p, "softmax > for j#3", "sum")
    assert "power of two" in refusal(gpu.reduce.apply, p, "softmax > for j#2", "sum", 100)
    q = ck.load("softmax.c")
    assert "must be inside a block loop" in refusal(gpu.reduce.apply, q, "softmax > for j#2", "sum")


def test_reduce_and_cyclic_keep_the_results(ck):
    p0 = ck.load("softmax.c")
    p = steps(p0, (gpu.map_blocks, "softmax > for i", "x"), (gpu.reduce, "softmax > for j#1", "max_val", 64),
              (gpu.reduce, "softmax > for j#2", "sum", 64), (gpu.cyclic, "softmax > for j#3", 64))
    ck.roundtrip(p)
    ck.close_outputs(p0, p, "softmax", [3, 150, ck.floats(450), ck.floats(450)])


def test_a_min_tile_maps_to_guarded_threads(ck):
    """The last tile of a loop tiled in mode "min" is shorter: its extra threads skip the body."""
    p0 = ck.load("matmul.c")
    p = steps(p0, (loop.tile, "matmul > for j", 64, "bj", "min"), (gpu.map_blocks, "matmul > for i", "y"),
              (gpu.map_blocks, "matmul > for bj", "x"), (gpu.map_threads, "matmul > for j", "x"))
    ck.same_outputs(p0, p, "matmul", matmul_args(ck, 3, 100, 5))
    cu = to_cuda(p)
    assert "int j = bj + (int)threadIdx.x;\n    if (j < (bj + 64 < N ? bj + 64 : N)) {" in cu
    assert "dim3(64, 1, 1)" in cu


def test_thread_tile_gives_each_thread_a_register_tile(ck):
    """64 x 64 tiles, 16 x 16 threads: each thread owns the 4 x 4 cells i + ri, j + rj (ri, rj step 16)."""
    src = ck.parse(textwrap.dedent("""
        void mm(int M, int N, int K, const float *A, const float *B, float *C) {
          for (int bi = 0; bi < M; bi += 64) {
            for (int bj = 0; bj < N; bj += 64) {
              for (int bk = 0; bk < K; bk++) {
                for (int i = bi; i < bi + 64; i++) {
                  for (int j = bj; j < bj + 64; j++) {
                    C[i * N + j] += A[i * K + bk] * B[bk * N + j];
                  }
                }
              }
            }
          }
        }"""), "mm.c")
    p = steps(src, (gpu.map_blocks, "mm > for bi", "y"), (gpu.map_blocks, "mm > for bj", "x"),
              (gpu.thread_tile, "mm > for bk > for i", 16), (gpu.thread_tile, "mm > for bk > for ri > for j", 16),
              (loop.swap, "mm > for bk > for ri"))
    p = gpu.stage.apply(p, "mm > for bj > for bk", "C", "acc", ["M", "N"], None, ["bi:64", "bj:64"], 16).program
    p = steps(p, (gpu.map_threads, "mm > for bk > for i", "y"), (gpu.map_threads, "mm > for bk > for i > for j", "x"))
    ck.same_outputs(src, p, "mm", matmul_args(ck, 128, 64, 3))
    cu = to_cuda(p)
    assert "  float acc[4][4];\n" in cu and "__shared__" not in cu
    assert "acc[(i + ri - bi - i) / 16][(j + rj - bj - j) / 16] += A[" in cu
    if find_nvcc() is not None:
        assert compile_check(cu, "final.cu") == ()


def test_three_block_axes_make_a_3d_grid(ck):
    """Heads on z, query tiles on y, 64-wide column tiles on x: no flattening."""
    src = ck.parse(textwrap.dedent("""
        void scale3(int H, int S, int D, const float *x, float *y) {
          for (int h = 0; h < H; h++) {
            for (int i = 0; i < S; i++) {
              for (int d = 0; d < D; d++) {
                y[(h * S + i) * D + d] = 2.0f * x[(h * S + i) * D + d];
              }
            }
          }
        }"""), "scale3.c")
    p = steps(src, (loop.tile, "scale3 > for d", 64, "bd", "min"), (gpu.map_blocks, "scale3 > for h", "z"),
              (gpu.map_blocks, "scale3 > for i", "y"), (gpu.map_blocks, "scale3 > for bd", "x"),
              (gpu.map_threads, "scale3 > for d", "x"))
    n = 2 * 3 * 70
    ck.same_outputs(src, p, "scale3", [2, 3, 70, ck.floats(n), ck.floats(n)])
    cu = to_cuda(p)
    assert "int h = (int)blockIdx.z;" in cu and "int i = (int)blockIdx.y;" in cu
    assert "<<<dim3((D + (64 - 1)) / 64, S, H), dim3(64, 1, 1)>>>" in cu
    if find_nvcc() is not None:
        assert compile_check(cu, "final.cu") == ()
