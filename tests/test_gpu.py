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
import z3

from optitrust_py import ir
from optitrust_py.cuda_build import compile_check, find_nvcc
from optitrust_py.cuda_emit import CudaError, to_cuda
from optitrust_py.cuda_warpsync import warp_local
from optitrust_py.cuda_map import mapping
from optitrust_py.errors import TargetError
from optitrust_py.frontend import parse_text
from optitrust_py.level2 import check_step
from optitrust_py.session import Rewrite
from optitrust_py.spec import parse_spec_text
from optitrust_py.printer import to_c
from optitrust_py.smt import Terms, proves, satisfy
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


def test_a_later_kernel_is_launched_dependent_on_the_one_before(ck):
    """The wrapper's second kernel is launched with programmatic dependent
    launch (cuda_launch) and waits, first thing, for the first to complete;
    the first is launched as usual."""
    src = ck.parse(textwrap.dedent("""
        void twice(int n, float *x, float *y) {
          for (int b = 0; b < n; b++) {
            for (int i = 0; i < 64; i++) { x[b * 64 + i] = 2.0f * x[b * 64 + i]; }
          }
          for (int b = 0; b < n; b++) {
            for (int i = 0; i < 64; i++) { y[b * 64 + i] = x[b * 64 + 63 - i]; }
          }
        }"""), "twice.c")
    cu = to_cuda(steps(src, (gpu.map_blocks, "twice > for b#1", "x"), (gpu.map_threads, "twice > for b#1 > for i", "x"),
                       (gpu.map_blocks, "twice > for b#2", "x"), (gpu.map_threads, "twice > for b#2 > for i", "x")))
    first, second = cu[cu.index("void twice_kernel1"):cu.index("void twice_kernel2")], cu[cu.index("void twice_kernel2"):]
    assert "griddepcontrol" not in first
    assert second.split("{", 1)[1].lstrip().startswith('asm volatile("griddepcontrol.wait;" ::: "memory");')
    assert "twice_kernel1<<<dim3(n, 1, 1), dim3(64, 1, 1)>>>(n, x, y);" in cu
    assert "otp_pdl[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;" in cu
    assert "cudaLaunchConfig_t otp_launch = {dim3(n, 1, 1), dim3(64, 1, 1), 0, 0, otp_pdl, 1};" in cu
    assert "cudaLaunchKernelEx(&otp_launch, twice_kernel2, n, x, y);" in cu
    if find_nvcc() is not None:
        assert compile_check(cu, "twice.cu") == ()


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
    assert "__shared__ __align__(16) unsigned char otp_smem[1024];" in cu  # one buffer, As a pointer into it
    assert "float (*As)[16] = (float (*)[16])(otp_smem + 0);" in cu
    assert "  float acc;\n" in cu and "acc += As[i - bi][k - bk] * B[k * N + j];" in cu
    body = cu.split("for (int bk = 0; bk < K; bk += 16) {")[1]
    copy, use = body.index("As[i0_1][i1_1] = A["), body.index("acc += As")
    barrier = body.index("__syncthreads();")
    assert copy < barrier < use  # copy in, barrier, use
    assert body[use:].startswith("acc += As[i - bi][k - bk] * B[k * N + j];\n      }\n    }\n    __syncthreads();\n  }")
    # ... and a barrier before the next tile overwrites As


HALF = """
    void halves(int n, const float *x, float *y) {
      for (int b = 0; b < n; b++) {
        float m[64];
        for (int i = 0; i < 64; i++) {
          m[i] = x[b * 64 + i];
        }
        for (int i = 0; i < 128; i++) {
          y[b * 128 + i] = 1.0f;
        }
        for (int i = 0; i < 64; i++) {
          y[b * 128 + i] += READ;
        }
      }
    }"""


@pytest.mark.parametrize("read, kept", [("m[i]", "  float m;\n"), ("m[i / 2]", "float *m = (float *)(otp_smem + 0);")])
def test_an_array_touched_by_half_the_block_s_threads(ck, read, kept):
    """A block of 128 threads (one phase needs them) whose array m is
    touched only in phases of 64: each of threads 0..63 owns its cell, kept
    in a register; read as m[i / 2], thread i reads thread i / 2's cell, so
    m stays shared."""
    src = ck.parse(textwrap.dedent(HALF).replace("READ", read), "halves.c")
    p = steps(src, (gpu.map_blocks, "halves > for b", "x"), *((gpu.map_threads, f"halves > for i#{k}", "x")
                                                             for k in (1, 2, 3)))
    cu = to_cuda(p)
    assert "dim3(128, 1, 1)" in cu and kept in cu
    if find_nvcc() is not None:
        assert compile_check(cu, "halves.cu") == ()


def test_shared_arrays_past_48_kb_go_to_dynamic_shared_memory(ck):
    """Two 32 KB tiles that other threads read (so not registers): the
    kernel asks for 64 KB of dynamic shared memory, and nvcc accepts it."""
    src = ck.parse(textwrap.dedent("""
        void flip(int n, const float *x, float *y) {
          for (int b = 0; b < n; b += 128) {
            float t[128][64];
            float u[128][64];
            for (int i = 0; i < 128; i++) {
              for (int j = 0; j < 64; j++) {
                t[i][j] = x[(b + i) * 64 + j];
                u[i][j] = 2.0f * x[(b + i) * 64 + j];
              }
            }
            for (int i = 0; i < 128; i++) {
              for (int j = 0; j < 64; j++) {
                y[(b + i) * 64 + j] = t[127 - i][j] + u[127 - i][j];
              }
            }
          }
        }"""), "flip.c")
    p = steps(src, (gpu.map_blocks, "flip > for b", "x"), (gpu.map_threads, "flip > for i#1", "x"),
              (gpu.map_threads, "flip > for i#2", "x"))
    cu = to_cuda(p)
    assert "extern __shared__ __align__(16) unsigned char otp_smem[];" in cu
    assert "float (*t)[64] = (float (*)[64])(otp_smem + 0);" in cu
    assert "float (*u)[64] = (float (*)[64])(otp_smem + 32768);" in cu
    assert "cudaFuncSetAttribute(flip_kernel1, cudaFuncAttributeMaxDynamicSharedMemorySize, 65536);" in cu
    assert "dim3(128, 1, 1), 65536>>>(n, x, y);" in cu and "__shared__ __align__(16) float" not in cu
    if find_nvcc() is not None:
        assert compile_check(cu, "final.cu") == ()


def test_shared_arrays_never_live_together_share_bytes(ck):
    """t is done with at the barrier before u's phase: u takes t's bytes,
    in one static buffer. Written in the phase that reads t, u keeps its
    own bytes: another thread may still read t there."""
    def kernel(apart: bool) -> str:
        t_read, u_write = "y[b + i] = t[127 - i];", "u[i] = 2.0f * x[b + i];"
        middle = (f"for (int i = 0; i < 128; i++) {{ {t_read} }}\n for (int i = 0; i < 128; i++) {{ {u_write} }}"
                  if apart else f"for (int i = 0; i < 128; i++) {{ {t_read} {u_write} }}")
        src = ck.parse(textwrap.dedent(f"""
            void twice(int n, const float *x, float *y) {{
              for (int b = 0; b < n; b += 128) {{
                float t[128];
                float u[128];
                for (int i = 0; i < 128; i++) {{ t[i] = x[b + i]; }}
                {middle}
                for (int i = 0; i < 128; i++) {{ y[n + b + i] = u[127 - i]; }}
              }}
            }}"""), "twice.c")
        loops = len([1 for _, n in walk(src) if isinstance(n, ir.For)]) - 1
        return to_cuda(steps(src, (gpu.map_blocks, "twice > for b", "x"),
                             *[(gpu.map_threads, f"twice > for i#{k}", "x") for k in range(1, loops + 1)]))
    shared = kernel(apart=True)
    assert "__shared__ __align__(16) unsigned char otp_smem[512];" in shared
    assert "float *t = (float *)(otp_smem + 0);" in shared and "float *u = (float *)(otp_smem + 0);" in shared
    assert "<<<dim3((n + (128 - 1)) / 128, 1, 1), dim3(128, 1, 1)>>>" in shared  # static: no bytes at launch
    alone = kernel(apart=False)
    assert "float *t = (float *)(otp_smem + 0);" in alone and "float *u = (float *)(otp_smem + 512);" in alone
    if find_nvcc() is not None:
        assert compile_check(shared, "twice.cu") == ()


def test_a_tile_after_a_loop_takes_the_bytes_of_the_loop_s_tiles(ck):
    """The tile t of a sequential loop's body is done with at the barrier
    that ends each run of the body; u, staged after the loop, takes its
    bytes. v, read after the loop too, keeps its own."""
    src = ck.parse(textwrap.dedent("""
        void steps(int n, const float *x, float *y) {
          for (int b = 0; b < n; b += 128) {
            float v[128];
            for (int i = 0; i < 128; i++) { v[i] = x[b + i]; }
            for (int r = 0; r < 4; r++) {
              float t[128];
              for (int i = 0; i < 128; i++) { t[i] = x[r * n + b + i] + v[127 - i]; }
              for (int i = 0; i < 128; i++) { y[r * n + b + i] = t[127 - i]; }
            }
            float u[128];
            for (int i = 0; i < 128; i++) { u[i] = 2.0f * x[b + i]; }
            for (int i = 0; i < 128; i++) { y[4 * n + b + i] = u[127 - i] + v[127 - i]; }
          }
        }"""), "steps.c")
    p = steps(src, (gpu.map_blocks, "steps > for b", "x"),
              *[(gpu.map_threads, f"steps > for i#{k}", "x") for k in range(1, 6)])
    cu = to_cuda(p)
    assert "float *t = (float *)(otp_smem + 512);" in cu and "float *u = (float *)(otp_smem + 512);" in cu
    assert "float *v = (float *)(otp_smem + 0);" in cu
    assert "__shared__ __align__(16) unsigned char otp_smem[1024];" in cu
    if find_nvcc() is not None:
        assert compile_check(cu, "steps.cu") == ()


def _async_kernel(copies: str, uses: str) -> ir.Program:
    """A block staging tiles t and u of x and z with the copy loops `copies`, then the phases `uses`."""
    return parse_text(textwrap.dedent(f"""
        void pair(int n, const float *x, const float *z, float *y) {{
          #pragma otp gpu block x
          for (int b = 0; b < n; b += 128) {{
            float t[128];
            float u[128];
            {copies}
            {uses}
          }}
        }}"""), "pair.c")


def _async_phase(dst: str, src: str, extra: str = "") -> str:
    return (f"#pragma otp gpu thread x\n for (int p = 0; p < 32; p++) {{\n #pragma otp gpu int4 4 async\n "
            f"for (int c = 0; c < 4; c++) {{ {dst}[p * 4 + c] = {src}[b + p * 4 + c]; }} {extra} }}")


_READ_T = "#pragma otp gpu thread x\n for (int i = 0; i < 128; i++) { y[b + i] = t[127 - i]; }"
_READ_U = "#pragma otp gpu thread x\n for (int i = 0; i < 128; i++) { y[n + b + i] = u[127 - i]; }"


def test_async_copies_are_waited_for_before_the_phase_that_reads_them(ck):
    """gpu.async_copy's printing: each copy phase is a committed group; the
    barrier before t's reader waits for t's group only (u's may stay in
    flight: wait_prior(1)), the one before u's reader for the rest. The two
    copies touch apart arrays, t still used after them: a warp barrier
    between them."""
    cu = to_cuda(_async_kernel(_async_phase("t", "x") + _async_phase("u", "z"), _READ_T + _READ_U))
    assert cu.count("__pipeline_memcpy_async(&t[p * 4 + c], &x[b + p * 4 + c], 16);") == 1
    body = cu[cu.index("__global__"):cu.index('extern "C"')]
    order = ["&t[p * 4 + c]", "__pipeline_commit();", "__syncwarp();", "&u[p * 4 + c]", "__pipeline_commit();",
             "__pipeline_wait_prior(1);", "__syncthreads();", "y[b + i] = t[127 - i];",
             "__pipeline_wait_prior(0);", "__syncthreads();", "y[n + b + i] = u[127 - i];"]
    at = 0
    for piece in order:
        at = body.index(piece, at) + len(piece)
    assert body.count("__pipeline_wait_prior") == 2
    # copied for the next turn of a loop: nothing stays in flight past the body's end
    again = to_cuda(_async_kernel("", "for (int k = 0; k < 4; k++) {" + _READ_T + _async_phase("t", "x") + "}"))
    loop_body = again[again.index("for (int k"):]
    assert loop_body.index("__pipeline_commit();") < loop_body.index("__pipeline_wait_prior(0);") \
        < loop_body.index("__syncthreads();\n  }")
    if find_nvcc() is not None:
        assert compile_check(cu, "pair.cu") == ()


def test_async_copy_marks_a_vector_copy_from_a_parameter_into_a_shared_tile(ck):
    """gpu.async_copy on a copy gpu.vector_copy marked: from x into the
    shared tile t it becomes asynchronous (the C unchanged, no obligation);
    from the tile t into u, it is refused (cp.async reads global memory)."""
    sync = _async_phase("t", "x").replace(" async", "") + _async_phase("u", "t").replace(" async", "")
    program = _async_kernel(sync, _READ_U)
    r = gpu.async_copy.apply(program, "pair > for b > for p#1 > for c")
    assert r.obligations == () and "#pragma otp gpu int4 4 async" in to_c(r.program)
    assert "'t', which for c (line 15) reads, is not a parameter of pair" in refusal(
        gpu.async_copy.apply, program, "pair > for b > for p#2 > for c")


@pytest.mark.parametrize("copies, uses, message", [
    ("#pragma otp gpu thread x\n for (int p = 0; p < 32; p++) {\n float r[4];\n #pragma otp gpu int4 4 async\n"
     " for (int c = 0; c < 4; c++) { r[c] = x[b + p * 4 + c]; } y[b + p] = r[0]; }", "",
     "copies asynchronously into 'r', which is not a shared array of the block"),
    (_async_phase("t", "x", "y[b + p] = t[p];"), _READ_T, "touches 't' besides copying it asynchronously"),
    (_async_phase("t", "y"), _READ_T, "writes y, which an asynchronous copy of the kernel reads"),
])
def test_async_copy_printing_refusals(ck, copies, uses, message):
    with pytest.raises(CudaError) as info:
        to_cuda(_async_kernel(copies, uses))
    assert message in info.value.message


def test_stage_with_a_thread_count_per_copy_loop(ck):
    """threads=[4, 16]: the rows of a 16 x 64 tile of C copied by 4 threads
    (y), its columns by 16 (x), each thread copying 4 x 4 cells."""
    p0 = ck.load("matmul.c")
    p = steps(p0, (loop.tile, "matmul > for i", 16), (loop.tile, "matmul > for bi > for i > for j", 64),
              (loop.swap, "matmul > for bi > for i"), (gpu.map_blocks, "matmul > for bi", "y"),
              (gpu.map_blocks, "matmul > for bj", "x"))
    s = gpu.stage.apply(p, "matmul > for bj > for i", "C", "Cs", ["M", "N"], ["y", "x"], ["bi:16", "bj:64"],
                        [4, 16]).program
    assert ck.contains(ck.function_text(s, "matmul"), """
        #pragma otp gpu thread y
        for (int i0 = 0; i0 < 4; i0++) {
          #pragma otp gpu thread x
          for (int i1 = 0; i1 < 16; i1++) {
            for (int ri0 = 0; ri0 < 16; ri0 += 4) {
              for (int ri1 = 0; ri1 < 64; ri1 += 16) {
                Cs[i0 + ri0][i1 + ri1] = C[(bi + i0 + ri0) * N + bj + i1 + ri1];""")
    ck.same_outputs(p0, s, "matmul", matmul_args(ck, 32, 128, 5))
    assert refusal(gpu.stage.apply, p, "matmul > for bj > for i", "C", "Cs", ["M", "N"], ["y", "x"],
                   ["bi:16", "bj:64"], [4]) == (
        "gpu.stage: the copy of 'C' is a nest of 2 loops but 1 thread counts were given ([4])")


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
    ("""void f(int n, float *x) {
          #pragma otp gpu block x reduction(+:x)
          for (int b = 0; b < n; b += 64) {
            #pragma otp gpu thread x
            for (int t = 0; t < 64; t++) {
              x[t] = 1.0f;
            }
          }
        }""", "only `a[i] += e;` can be made atomic"),
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
@pytest.mark.parametrize("script", ["scripts/matmul.py", "scripts/softmax.py", "scripts/attention.py",
                                    "scripts/gqa_decode.py", "scripts/quantize.py"])
def test_cuda_endings_pass_level2_exec_and_nvcc(script):
    r = otp("check", script, "--level", "2", "--exec", "--target", "cuda", "--no-color")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 obligations not proved" in r.stdout and "0 resource problems" in r.stdout


def final_cu(script: str, out: Path) -> str:
    """The final.cu that `otp run SCRIPT --target cuda` writes."""
    r = otp("run", script, "--target", "cuda", "--quiet", "--no-color", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    return (out / Path(script).stem / "final.cu").read_text()


@needs_nvcc
def test_run_writes_final_cu(tmp_path):
    cu = final_cu("scripts/softmax.py", tmp_path)
    assert "__global__ void softmax_kernel1" in cu
    # the max's and the sum's partials, never live together, share one static buffer (cuda_shared)
    assert "__shared__ __align__(16) unsigned char otp_smem[1024];" in cu
    assert "float *max_val_part = (float *)(otp_smem + 0);" in cu and "float *sum_part = (float *)(otp_smem + 0);" in cu
    assert "#pragma otp" in (tmp_path / "softmax" / "final.c").read_text()


@needs_nvcc
def test_apply_takes_gpu_steps_and_writes_final_cu(tmp_path):
    r = otp("apply", "c_sources/matmul.c", "loop.tile('matmul > for j', 256, 'bj', 'guard')",
            "gpu.map_blocks('matmul > for i', 'y')", "gpu.map_blocks('matmul > for bj', 'x')",
            "gpu.map_threads('matmul > for j', 'x')", "gpu.launch_bounds('matmul > for i', 2)", "--target", "cuda",
            "--level", "2", "--exec", "--size", "M=3,N=300,K=4", "--quiet", "--no-color", "--out", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 refuted, 0 unknown; 0 resource problems" in r.stdout
    cu = (tmp_path / "matmul" / "final.cu").read_text()
    assert "__global__ __launch_bounds__(256, 2) void matmul_kernel1(" in cu


def test_bench_without_gpu_is_refused_cleanly():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: tests/benchmarks/cuda_bench.py times it")
    if find_nvcc() is None:
        pytest.skip("nvcc is not installed here")
    r = otp("bench", "scripts/softmax.py", "--target", "cuda")
    assert r.returncode == 2 and "needs a CUDA GPU" in r.stderr, r.stderr


class _HostTorch:
    """torch on the host standing in for the GPU: tensors on the CPU, CUDA
    events that count their records, so the bench's timing loop runs here
    with torch's own tensor calls."""

    def __init__(self, torch: Any) -> None:
        self.torch = torch
        self.records = 0
        outer = self

        class Event:
            def __init__(self, enable_timing: bool = False) -> None:
                self.at = 0

            def record(self) -> None:
                outer.records += 1
                self.at = outer.records

            def elapsed_time(self, end: "Event") -> float:
                return float(end.at - self.at)

        self.cuda = type("cuda", (), {"Event": Event, "synchronize": staticmethod(lambda: None)})

    def __getattr__(self, name: str) -> Any:
        return getattr(self.torch, name)

    def zeros(self, *shape: Any, device: str = "cpu", **kw: Any) -> Any:
        return self.torch.zeros(*shape, **kw)


def test_the_bench_evicts_the_l2_by_reading_between_timed_calls(monkeypatch):
    """cuda_bench's timing loop with torch's own calls (on the host): the
    eviction before each timed call is a read (a sum of FLUSH_BYTES), and
    each call sits between its two events, the calls queued in order."""
    torch = pytest.importorskip("torch")
    from optitrust_py import cuda_bench
    monkeypatch.setattr(cuda_bench, "FLUSH_BYTES", 1 << 20)
    host = _HostTorch(torch)
    sums: list[int] = []
    real_sum = torch.sum
    monkeypatch.setattr(host, "sum", lambda *a, **kw: sums.append(1) or real_sum(*a, **kw), raising=False)
    calls: list[int] = []
    times = cuda_bench._timed(host, lambda: calls.append(host.records), 4)
    assert len(calls) == cuda_bench.WARMUP + 4 and len(sums) == 4
    assert times == (1e-3,) * 4  # one record before each timed call, one after it


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


def test_the_last_five_tree_steps_run_as_warp_shuffles(ck):
    """gpu.reduce over 64 threads: the halving steps 32 keeps (a barrier
    after it), 16 .. 1 become __shfl_down_sync in the first warp, in the
    tree's order (the same additions on the same values), lane 0 storing
    the sum; under 32 threads, or when a later statement reads another
    cell of the partial results, the steps stay as they were."""
    p0 = ck.load("softmax.c")
    p = steps(p0, (gpu.map_blocks, "softmax > for i", "x"), (gpu.reduce, "softmax > for j#1", "max_val", 64),
              (gpu.reduce, "softmax > for j#2", "sum", 64), (gpu.cyclic, "softmax > for j#3", 64))
    cu = to_cuda(p)
    assert "if (t_1 < 32) {\n      sum_part[t_1] += sum_part[t_1 + 32];" in cu and "t_1 < 16" not in cu
    lane = cu.split("float sum_part_lane = sum_part[t_1];\n")[1]
    assert lane.startswith("    sum_part_lane += __shfl_down_sync(0xffffffffu, sum_part_lane, 16);\n")
    assert "max_val_part_lane = fmaxf(max_val_part_lane, __shfl_down_sync(0xffffffffu, max_val_part_lane, 1));" in cu
    assert ("if (t_1 == 0) {\n      sum_part[0] = sum_part_lane;\n    }\n  }\n  __syncthreads();\n"
            "  sum += sum_part[0];") in cu
    if find_nvcc() is not None:
        assert compile_check(cu, "final.cu") == ()
    narrow = steps(p0, (gpu.map_blocks, "softmax > for i", "x"), (gpu.reduce, "softmax > for j#1", "max_val", 16),
                   (gpu.reduce, "softmax > for j#2", "sum", 16), (gpu.cyclic, "softmax > for j#3", 16))
    assert "__shfl" not in to_cuda(narrow)
    peek = ck.parse(ck.function_text(p, "softmax").replace("sum += sum_part[0];", "sum += sum_part[1];"),
                    "softmax.c")
    assert "sum_part_lane" not in to_cuda(peek) and "max_val_part_lane" in to_cuda(peek)


def rows_of_four(ck: Any) -> ir.Program:
    """softmax with a block per 4 rows: the row loop inside the block loop."""
    return steps(ck.load("softmax.c"), (loop.tile, "softmax > for i", 4, "bi"),
                 (gpu.map_blocks, "softmax > for bi", "x"))


def test_warp_rows_gives_each_row_a_warp_and_keeps_the_results(ck):
    """softmax, 4 rows a block: three phases of 128 threads (the max's
    partials; its fold, the exp-sum's partials; the sum's fold and the
    normalisation), each row's loops shared by its 32 lanes; level 2
    proves the rows and the phases disjoint."""
    p0 = rows_of_four(ck)
    rw = gpu.warp_rows.apply(p0, "softmax > for bi > for i", 32)
    text = ck.function_text(rw.program, "softmax")
    assert text.count("#pragma otp gpu thread x\n") == 3
    assert "for (int j = 1 + w % 32; j < C; j += 32) {\n" in text
    assert "if (x[(bi + w / 32) * C + j] > max_val_part[w]) {" in text
    # the max starts at the row's first value: in its first lane's partial, read where the loop starts
    assert "max_val_part[w] = w % 32 == 0 ? x[(bi + w / 32) * C] : -INFINITY;\n" in text
    assert "float max_val = -INFINITY;\n" in text
    assert "max_val = fmaxf(max_val, max_val_part[w / 32 * 32 + k]);" in text
    assert "sum += sum_part[w / 32 * 32 + k];" in text
    assert rw.fp == "reassoc"
    ck.roundtrip(rw.program)
    ck.compiles(rw.program)
    ck.close_outputs(p0, rw.program, "softmax", [8, 150, ck.floats(1200), ck.floats(1200)])
    spec = (ROOT / "specs" / "softmax.spec").read_text().replace("R >= 1", "R >= 4, R % 4 == 0")
    result = check_step(p0, rw.program, rw.obligations, parse_spec_text(spec))
    assert [v.status for v in result.verdicts] == ["proved"] * 4 and result.ok, result.problems


def test_warp_rows_folds_by_xor_shuffles_in_registers(ck):
    """The folds become butterflies of __shfl_xor_sync over the row's lanes
    (16 .. 1 for a warp, 2 and 1 for 4 lanes), the partials registers."""
    p = gpu.warp_rows.apply(rows_of_four(ck), "softmax > for bi > for i", 32).program
    cu = to_cuda(p)
    assert "float max_val_part;\n" in cu and "__shared__" not in cu.split("max_val_part;")[0].split("{")[-1]
    assert ("float sum_part_lanes = sum_part;\n      sum_part_lanes += __shfl_xor_sync(0xffffffffu, "
            "sum_part_lanes, 16);") in cu
    assert "max_val = fmaxf(max_val, max_val_part_lanes);" in cu and "[w / 32 * 32 + k]" not in cu
    quads = steps(ck.load("softmax.c"), (loop.tile, "softmax > for i", 32, "bi"),
                  (gpu.map_blocks, "softmax > for bi", "x"), (gpu.warp_rows, "softmax > for bi > for i", 4))
    cu4 = to_cuda(quads)
    assert "__shfl_xor_sync(0xffffffffu, sum_part_lanes, 2);\n      sum_part_lanes += __shfl_xor_sync(" in cu4
    assert "sum_part_lanes, 4)" not in cu4


def test_phases_that_meet_within_warps_are_ordered_by_syncwarp(ck):
    """softmax, a warp a row (gpu.warp_rows): each phase touches the cells
    of its warp's row that the one before wrote (x's partials are
    registers, y's row is the warp's), so the two barriers between them are
    __syncwarp(). In twice, t[127 - i] reads what another warp wrote: the
    barrier stays __syncthreads(), as it does before a phase that starts
    using a shared array (u) when another (t) is done with: u takes t's
    bytes."""
    p = gpu.warp_rows.apply(rows_of_four(ck), "softmax > for bi > for i", 32).program
    cu = to_cuda(p)
    kernel = cu[cu.index("__global__"):cu.index('extern "C"')]
    assert kernel.count("__syncwarp();") == 2 and "__syncthreads" not in kernel
    src = ck.parse(textwrap.dedent("""
        void twice(int n, const float *x, float *y) {
          for (int b = 0; b < n; b += 128) {
            float t[128];
            float u[128];
            for (int i = 0; i < 128; i++) { t[i] = x[b + i]; }
            for (int i = 0; i < 128; i++) { y[b + i] = t[127 - i]; }
            for (int i = 0; i < 128; i++) { u[i] = 2.0f * x[b + i]; }
            for (int i = 0; i < 128; i++) { y[n + b + i] = u[127 - i]; }
          }
        }"""), "twice.c")
    p2 = steps(src, (gpu.map_blocks, "twice > for b", "x"),
               *[(gpu.map_threads, f"twice > for i#{k}", "x") for k in range(1, 5)])
    kernel = to_cuda(p2).split('extern "C"')[0]
    assert kernel.count("__syncthreads();") == 3 and "__syncwarp" not in kernel


def test_warp_local_needs_bounds_every_thread_shares(ck):
    """cuda_warpsync.warp_local on two phases: warp w / 32 folds the cells
    its own lanes wrote, so they meet within the warp; but a loop bound
    that is not the same for every thread (c, when it is not a parameter
    or a block-level index) keeps the full barrier."""
    src = ck.parse(textwrap.dedent("""
        void f(int c, float *s) {
          #pragma otp gpu thread x
          for (int w = 0; w < 128; w++) {
            s[w] = 1.0f;
          }
          #pragma otp gpu thread x
          for (int w = 0; w < 128; w++) {
            for (int j = 0; j < c; j++) {
              s[w / 32 * 32 + j % 32] += 1.0f;
            }
          }
        }"""), "f.c")
    first, second = (n for _, n in walk(src) if isinstance(n, ir.For) and n.index == "w")
    assert warp_local(first, second, set(), {"c"})
    assert not warp_local(first, second, set(), set())
    across = ck.parse(ck.function_text(src, "f").replace("j % 32]", "j % 64]"), "f.c")
    first, second = (n for _, n in walk(across) if isinstance(n, ir.For) and n.index == "w")
    assert not warp_local(first, second, set(), {"c"})


def test_lane_digits_of_two_threads_are_told_apart():
    """The cells of gpu.warp_rows' mma form, [w / 32 * 16 + w % 32 / 4 + 8
    h][j + 2 * (w % 4) + c] (j a multiple of 8, h and c below 2), are apart
    for two threads: Z3's default strategy case-splits the nested digits
    past its work limit, the retry with Ifs and divisions named proves it
    (satisfy, proves); with j any number, two threads meet (a model)."""
    e = parse_text("int f(int w, int h, int j, int c) { return w / 32 * 16 + w % 32 / 4 + 8 * h + "
                   "(j + 2 * (w % 4) + c) * 1000; }", "d.c").items[0].body.stmts[0].value
    tm = Terms("digits")
    w, h, j, c, w2, h2, j2, c2 = z3.Ints("w h j c w2 h2 j2 c2")
    cell = tm.term(e)
    other = z3.substitute(cell, (w, w2), (h, h2), (j, j2), (c, c2))
    bounds = [0 <= w, w < 128, 0 <= w2, w2 < 128, 0 <= h, h < 2, 0 <= h2, h2 < 2, 0 <= c, c < 2, 0 <= c2, c2 < 2,
              0 <= j, j < 64, 0 <= j2, j2 < 64]
    tiles = [j % 8 == 0, j2 % 8 == 0]
    assert satisfy(bounds + tiles, [cell == other, w != w2])[0] == "unsat"
    assert proves(w == w2, bounds + tiles + [cell == other])
    answer, model, _ = satisfy(bounds, [cell == other, w != w2])
    assert answer == "sat" and model is not None


@needs_nvcc
def test_warp_rows_cuda_compiles(ck, tmp_path):
    p = gpu.warp_rows.apply(rows_of_four(ck), "softmax > for bi > for i", 32).program
    compile_check(to_cuda(p), tmp_path / "rows.cu")


def test_warp_rows_refuses_what_lanes_cannot_share(ck):
    p = rows_of_four(ck)
    assert "lanes must be one of 2, 4, 8, 16, 32" in refusal(gpu.warp_rows.apply, p, "softmax > for bi > for i", 3)
    assert "inside a block loop" in refusal(gpu.warp_rows.apply, ck.load("softmax.c"), "softmax > for i", 32)
    wide = steps(ck.load("softmax.c"), (loop.tile, "softmax > for i", 64, "bi"),
                 (gpu.map_blocks, "softmax > for bi", "x"))
    assert "at most 32 for 32 lanes" in refusal(gpu.warp_rows.apply, wide, "softmax > for bi > for i", 32)
    q = steps(ck.load("softmax.c"), (gpu.map_blocks, "softmax > for i", "x"),
              (loop.tile, "softmax > for j#2", 4, "bj"))
    assert "sets 'sum', declared outside the rows" in refusal(gpu.warp_rows.apply, q, "softmax > for bj > for j", 32)


def test_warp_rows_lanes_adding_into_one_cell_are_refuted(ck):
    """matmul, a block per row and 4 columns as rows: each column's k loop
    adds into C[i * N + j], which the column's 32 lanes would share out and
    race on; level 2 refutes the phase."""
    p = steps(ck.load("matmul.c"), (gpu.map_blocks, "matmul > for i", "x"), (loop.tile, "matmul > for j", 4, "bj"))
    reason = refuted(p, gpu.warp_rows.apply(p, "matmul > for bj > for j", 32))
    assert reason.startswith("parallel") and "C[" in reason and "meet" in reason


def test_warp_rows_folds_a_partial_sum_and_the_first_lane_adds_it(ck):
    """matmul as above, each column's k loop first summed apart from C's
    cell (gpu.partial_sum's braced block, opened into the row): the lanes'
    sums are folded in every lane and the row's first lane adds the result,
    so no two lanes write the cell; level 2 proves the rows and phases
    disjoint, and the outputs agree."""
    p0 = ck.load("matmul.c")
    p = steps(p0, (gpu.map_blocks, "matmul > for i", "x"), (loop.tile, "matmul > for j", 4, "bj"),
              (gpu.partial_sum, "matmul > for bj > for j > for k", "C[i * N + j]"))
    rw = gpu.warp_rows.apply(p, "matmul > for bj > for j", 32)
    text = ck.function_text(rw.program, "matmul")
    assert "acc_part[w] = 0.0f;\n" in text and "float acc = 0.0f;\n" in text
    assert "if (w % 32 == 0) {\n          C[i * N + (bj + w / 32)] += acc;" in text
    spec = (ROOT / "specs" / "matmul.spec").read_text().replace("N >= 1", "N >= 4, N % 4 == 0")
    result = check_step(p, rw.program, rw.obligations, parse_spec_text(spec))
    assert [v.status for v in result.verdicts] == ["proved"] * 3 and result.ok, result.problems
    ck.close_outputs(p0, rw.program, "matmul", matmul_args(ck, 3, 8, 40))


def test_warp_rows_of_a_thread_loop_start_a_reduction_in_the_first_lane(ck):
    """softmax, 4 rows a block already run by a thread each: gpu.warp_rows
    gives each row 32 threads instead. The row's max starts at its first
    value, a load: the first lane's partial starts there, read where the
    max loop starts (not after it, where the fold is), the others at
    -INFINITY. Refused when a statement between the declaration and the
    loop stores into what the start value reads."""
    p0 = rows_of_four(ck)
    threads = gpu.map_threads.apply(p0, "softmax > for bi > for i", "x").program
    rw = gpu.warp_rows.apply(threads, "softmax > for bi > for i", 32)
    text = ck.function_text(rw.program, "softmax")
    assert text.count("#pragma otp gpu thread x\n") == 3 and "for (int i = " not in text
    assert "max_val_part[w] = w % 32 == 0 ? x[(bi + w / 32) * C] : -INFINITY;\n" in text
    ck.close_outputs(p0, rw.program, "softmax", [8, 150, ck.floats(1200), ck.floats(1200)])
    source = (ROOT / "c_sources" / "softmax.c").read_text()
    changed = source.replace("float max_val = x[i * C];", "float max_val = y[i * C];\n    y[i * C] = 0.0f;")
    assert changed != source
    late = steps(ck.parse(changed, "softmax.c"), (loop.tile, "softmax > for i", 4, "bi"),
                 (gpu.map_blocks, "softmax > for bi", "x"))
    assert "the value of 'max_val' (y[i * C]) is read where its reduction starts" in \
        refusal(gpu.warp_rows.apply, late, "softmax > for bi > for i", 32)


def test_last_first_counts_the_blocks_from_the_end(ck):
    p = gpu.last_first.apply(rows_in_blocks(ck), "matmul > for bj").program
    assert "#pragma otp gpu last_first\n" in ck.function_text(p, "matmul")
    cu = to_cuda(p)
    assert "int bj = ((N + (256 - 1)) / 256 - 1 - (int)blockIdx.x) * 256;" in cu and "int i = (int)blockIdx.y;" in cu
    if find_nvcc() is not None:
        assert compile_check(cu, "final.cu") == ()
    assert "not mapped to blocks" in refusal(gpu.last_first.apply, p, "matmul > for j")
    assert "already launches its last block first" in refusal(gpu.last_first.apply, p, "matmul > for bj")


def test_a_min_tile_maps_to_guarded_threads(ck):
    """The last tile of a loop tiled in mode "min" is shorter: its extra threads skip the body."""
    p0 = ck.load("matmul.c")
    p = steps(p0, (loop.tile, "matmul > for j", 64, "bj", "min"), (gpu.map_blocks, "matmul > for i", "y"),
              (gpu.map_blocks, "matmul > for bj", "x"), (gpu.map_threads, "matmul > for j", "x"))
    ck.same_outputs(p0, p, "matmul", matmul_args(ck, 3, 100, 5))
    cu = to_cuda(p)
    assert "int j = bj + (int)threadIdx.x;\n    if (j < (bj + 64 < N ? bj + 64 : N)) {" in cu
    assert "dim3(64, 1, 1)" in cu


MM_TILES = textwrap.dedent("""
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
    }""")


def test_thread_tile_gives_each_thread_a_register_tile(ck):
    """64 x 64 tiles, 16 x 16 threads: each thread owns the 4 x 4 cells i + ri, j + rj (ri, rj step 16)."""
    src = ck.parse(MM_TILES, "mm.c")
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


def runs_of_four(ck: Any, copy_width: list[int]) -> tuple[ir.Program, ir.Program]:
    """MM_TILES on 16 x 4 threads, each owning 4 rows (i + 16 ri) and 4
    runs of 4 neighbouring columns (4 j + 4 rj + cj, rj = 0, 4, 8, 12), C
    staged by copies whose loops take runs of `copy_width`."""
    src = ck.parse(MM_TILES, "mm.c")
    p = steps(src, (gpu.map_blocks, "mm > for bi", "y"), (gpu.map_blocks, "mm > for bj", "x"),
              (gpu.thread_tile, "mm > for bk > for i", 16),
              (gpu.thread_tile, "mm > for bk > for ri > for j", 4, None, 4), (loop.swap, "mm > for bk > for ri"))
    p = gpu.stage.apply(p, "mm > for bj > for bk", "C", "acc", ["M", "N"], None, ["bi:64", "bj:64"], [16, 4],
                        copy_width).program
    return src, steps(p, (gpu.map_threads, "mm > for bk > for i", "y"),
                      (gpu.map_threads, "mm > for bk > for i > for j", "x"))


def test_thread_tile_in_runs_keeps_the_tile_in_registers(ck):
    """A thread of 16 x 4 owns rows i + ri and runs of 4 neighbouring columns
    (16-byte loads of a row): the printer keeps its 4 x 16 cells in
    registers when the copies of C give each thread the same runs, and
    leaves the tile shared when they do not."""
    src, p = runs_of_four(ck, [1, 4])
    ck.same_outputs(src, p, "mm", matmul_args(ck, 128, 64, 3))
    assert "for (int cj = 0; cj < 4; cj++) {" in ck.function_text(p, "mm")
    cu = to_cuda(p)
    assert "  float acc[4][16];\n" in cu and "__shared__" not in cu and "dim3(4, 16, 1)" in cu
    assert "acc[(i + ri - bi - i) / 16][(cj + 4 * j + 4 * rj - 4 * j) / 16 * 4 + (cj + 4 * j + 4 * rj - 4 * j) % 4]" \
        in cu
    if find_nvcc() is not None:
        assert compile_check(cu, "final.cu") == ()
    src, shared = runs_of_four(ck, [1, 1])
    ck.same_outputs(src, shared, "mm", matmul_args(ck, 128, 64, 3))
    assert "float (*acc)[64] = (float (*)[64])(otp_smem + 0);" in to_cuda(shared)
    assert "width must be a positive integer" in refusal(gpu.thread_tile.apply, src, "mm > for bk > for i", 16, None, 0)
    assert "runs 64 iterations, not a multiple of 16 threads x 3" in \
        refusal(gpu.thread_tile.apply, src, "mm > for bk > for i", 16, None, 3)


def test_launch_bounds_asks_nvcc_for_blocks_per_multiprocessor(ck):
    p = gpu.launch_bounds.apply(rows_in_blocks(ck), "matmul > for i", 3).program
    assert "#pragma otp gpu min_blocks 3\n" in ck.function_text(p, "matmul")
    cu = to_cuda(p)
    assert "__global__ __launch_bounds__(256, 3) void matmul_kernel1(" in cu
    if find_nvcc() is not None:
        assert compile_check(cu, "final.cu") == ()
    assert "not mapped to blocks" in refusal(gpu.launch_bounds.apply, p, "matmul > for j", 2)
    assert "already asks for 3 blocks" in refusal(gpu.launch_bounds.apply, p, "matmul > for i", 2)
    assert "positive integer" in refusal(gpu.launch_bounds.apply, rows_in_blocks(ck), "matmul > for i", 0)


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


def test_a_thread_loop_may_start_at_an_outer_thread_index(ck):
    """64 rows as 4 x 16 threads: the x loop starts at `16 * iy`, so the
    printer declares iy (threadIdx.y) though the body never names it."""
    src = ck.parse(textwrap.dedent("""
        void rows(int N, const float *x, float *y) {
          for (int b = 0; b < N; b += 64) {
            for (int i = b; i < b + 64; i++) {
              y[i] = 2.0f * x[i];
            }
          }
        }"""), "rows.c")
    p = steps(src, (loop.tile, "rows > for i", 16, "iy"), (loop.normalize, "rows > for iy"),
              (gpu.map_blocks, "rows > for b", "x"), (gpu.map_threads, "rows > for iy", "y"),
              (gpu.map_threads, "rows > for iy > for i", "x"))
    ck.same_outputs(src, p, "rows", [128, ck.floats(128), ck.floats(128)])
    cu = to_cuda(p)
    assert "    int iy = (int)threadIdx.y;\n    int i = b + iy * 16 + (int)threadIdx.x;\n" in cu
    if find_nvcc() is not None:
        assert compile_check(cu, "final.cu") == ()


# ----------------------------------------------------------------- split reductions, scratch, one thread, padding


GQA_SPEC = ROOT / "specs" / "gqa_decode.spec"


PARTIAL = (gpu.partial_sum, "gqa_decode > for g#4 > for bc > for d > for r > for t", "out[(g * G + r) * D + d]")


def gqa_chunks(ck: Any, partial: bool = True) -> ir.Program:
    """gqa_decode split over chunks of positions that add into out (a
    split-K decode, which scripts/gqa_decode.py's CUDA ending was before
    flash-decoding) before the weighted sum of V is mapped: kv heads
    outside, chunks of 64 positions, a partial sum per (d, query head of
    the group) and chunk."""
    from transformations import llm, variable

    return steps(ck.load("gqa_decode.c"), (variable.bind, "gqa_decode > expr 'H / KVH'", "G"),
                 (loop.move_out, "gqa_decode > for h > def G"),
                 (llm.group_heads, "gqa_decode > for h", "G", "scores", "pos + 1"),
                 (llm.batch_buffer, "gqa_decode > for g#2", "scores"),
                 (loop.fission, "gqa_decode > for g#2 > after for t#1"),
                 (loop.fission, "gqa_decode > for g#3 > after for r#1"),
                 (loop.tile, "gqa_decode > for g#4 > for t", 64, "bc", "min"),
                 (loop.swap, "gqa_decode > for g#4 > for bc > for t"),
                 (loop.swap, "gqa_decode > for g#4 > for bc > for r > for t"),
                 (loop.swap, "gqa_decode > for g#4 > for bc > for r"), *([PARTIAL] if partial else []))


def gqa_args(ck: Any, H: int, KVH: int, D: int, SMAX: int, pos: int) -> list[Any]:
    return [H, KVH, D, SMAX, pos, ck.floats(H * D), ck.floats(KVH * D), ck.floats(KVH * D),
            ck.floats(KVH * SMAX * D), ck.floats(KVH * SMAX * D), ck.floats(H * D)]


def test_partial_sum_adds_a_chunk_once(ck):
    p0 = ck.load("gqa_decode.c")
    p = gqa_chunks(ck)
    text = ck.function_text(p, "gqa_decode")
    assert "float acc = 0.0f;" in text and "out[(g * G + r) * D + d] += acc;" in text
    ck.roundtrip(p)
    ck.close_outputs(p0, p, "gqa_decode", gqa_args(ck, 8, 2, 20, 140, 130))
    rw = gpu.partial_sum.apply(gqa_chunks(ck, partial=False), *PARTIAL[1:])
    assert rw.program == p and rw.fp == "reassoc" and [o.kind for o in rw.obligations] == ["unaliased"]


def quantized(ck: Any) -> ir.Program:
    """scripts/quantize.py up to its CUDA ending: matvec quantizes W, then
    calls matvec_q8, which quantizes x and calls quantize_q8."""
    from optitrust_py.session import Session
    from optitrust_py.spec import load_contracts
    from transformations import quantize

    p = ck.load("matvec.c")
    with Session() as s:
        s.contracts = load_contracts(p, ROOT / "specs" / "matvec_q8.spec")
        return steps(p, (loop.tile, "matvec > for j", 32),
                     (quantize.int8_groups, "matvec > for bj > for j", {"W": ["D", "N"], "x": ["N"]}, ["W"]),
                     (quantize.group_accumulator, "matvec_q8 > for bj > for j"),
                     (quantize.integer_product, "matvec_q8 > for bj > for j"))


def test_partial_sum_refusals(ck):
    p = quantized(ck)
    assert "not a float or double cell" in refusal(gpu.partial_sum.apply, p, "matvec_q8 > for bj > for j", "acc")
    assert "does not occur" in refusal(gpu.partial_sum.apply, p, "matvec_q8 > for bj > for j", "y[i]")


def test_blocks_adding_into_one_array_are_proved_with_sums_and_refuted_without(ck):
    """Chunks of positions as blocks: they all add into out, which only a
    split reduction (atomic additions) allows."""
    p = steps(gqa_chunks(ck), (gpu.map_blocks, "gqa_decode > for g#4", "y"))
    contracts = parse_spec_text(GQA_SPEC.read_text())
    rw = gpu.map_blocks.apply(p, "gqa_decode > for g#4 > for bc", "x", ["out"])
    assert rw.fp == "reassoc" and rw.obligations[0].names == ("out",)
    assert check_step(p, rw.program, rw.obligations, contracts).ok
    assert "#pragma otp gpu block x reduction(+:out)" in ck.function_text(rw.program, "gqa_decode")
    reason = refuted(p, gpu.map_blocks.apply(p, "gqa_decode > for g#4 > for bc", "x"), contracts)
    assert reason.startswith("parallel") and "out[" in reason
    assert "sums must be a list" in refusal(gpu.map_blocks.apply, p, "gqa_decode > for g#4 > for bc", "x", "out")
    assert "never adds into 'q'" in refusal(gpu.map_blocks.apply, p, "gqa_decode > for g#4 > for bc", "x", ["q"])
    assert "not an array" in refusal(gpu.map_blocks.apply, p, "gqa_decode > for g#4 > for bc", "x", ["G"])


def test_a_later_step_breaking_a_split_reduction_is_refuted(ck):
    """Once blocks add into out, a later step that makes each block load
    and store out (variable.local_accumulator where gpu.partial_sum was
    meant) is a race between blocks, which level 2 reports."""
    from transformations import variable

    p = steps(gqa_chunks(ck, partial=False), (gpu.map_blocks, "gqa_decode > for g#4", "y"),
              (gpu.map_blocks, "gqa_decode > for g#4 > for bc", "x", ["out"]))
    rw = variable.local_accumulator.apply(p, PARTIAL[1], PARTIAL[2])
    contracts = parse_spec_text(GQA_SPEC.read_text())
    result = check_step(p, rw.program, rw.obligations, contracts)
    assert not result.ok and any("for bc" in x and "out[" in x for x in result.problems), result.problems
    assert check_step(p, gpu.partial_sum.apply(p, *PARTIAL[1:]).program, (), contracts).ok


def test_cuda_of_split_reduction_and_scratch(ck):
    p = steps(gqa_chunks(ck), (gpu.map_blocks, "gqa_decode > for g#1", "x"),
              (gpu.cyclic, "gqa_decode > for g#1 > for d", 128),
              (gpu.map_blocks, "gqa_decode > for g#2", "y"), (gpu.cyclic, "gqa_decode > for g#2 > for t", 128),
              (gpu.map_blocks, "gqa_decode > for g#3", "y"), (gpu.map_blocks, "gqa_decode > for g#3 > for r", "x"),
              (gpu.reduce, "gqa_decode > for g#3 > for r > for t#1", "max_val", 256),
              (gpu.reduce, "gqa_decode > for g#3 > for r > for t#2", "sum", 256),
              (gpu.cyclic, "gqa_decode > for g#3 > for r > for t#3", 256),
              (gpu.cyclic, "gqa_decode > for g#3 > for r > for d", 256),
              (gpu.map_blocks, "gqa_decode > for g#4", "y"),
              (gpu.map_blocks, "gqa_decode > for g#4 > for bc", "x", ["out"]),
              (gpu.cyclic, "gqa_decode > for g#4 > for bc > for d", 128))
    cu = to_cuda(p)
    assert "atomicAdd(&out[(g * G + r) * D + d], acc);" in cu
    assert "float *scores_b = (float *)otp_scratch(0, H / G * (G * (pos + 1)) * sizeof(float));" in cu
    assert "static void *otp_scratch(int slot, size_t bytes)" in cu and "free(" not in cu.split("extern")[-1]
    assert ", int G, float *scores_b) {" in cu  # the scratch buffer and G are kernel parameters
    if find_nvcc() is not None:
        assert compile_check(cu, "final.cu") == ()


def test_single_runs_a_store_on_one_thread(ck):
    p0 = quantized(ck)
    p = steps(p0, (gpu.map_blocks, "matvec_q8 > for i", "x"), (gpu.cyclic, "matvec_q8 > for i > for bj", 128))
    assert "'quantize_q8(1, N, x, xq, xs);' runs on the host" in str(pytest.raises(CudaError, to_cuda, p).value)
    p = steps(p, (loop.tile, "quantize_q8 > for g", 128, "bg", "min"), (gpu.map_blocks, "quantize_q8 > for r", "y"),
              (gpu.map_blocks, "quantize_q8 > for bg", "x"), (gpu.map_threads, "quantize_q8 > for bg > for g", "x"))
    assert "'y[i] = 0.0f;' would run on every thread" in str(pytest.raises(CudaError, to_cuda, p).value)
    p = steps(p, (gpu.single, "matvec_q8 > for i > 'y[i] = 0.0f;'"))
    text = ck.function_text(p, "matvec_q8")
    assert "#pragma otp gpu thread x\n    for (int t_1 = 0; t_1 < 1; t_1++) {\n      y[i] = 0.0f;" in text
    cu = to_cuda(p)
    assert "if ((int)threadIdx.x < 1) {\n    y[i] = 0.0f;\n  }\n  __syncthreads();" in cu
    assert "matvec_q8(N, D, Wq, Ws, x, y);" in cu  # matvec calls the wrapper, its buffers are scratch
    assert "quantize_q8(D, N, W, Wq, Ws);" in cu and "(int8_t *)otp_scratch(" in cu
    n, d = 64, 3
    ck.same_outputs(p0, p, "matvec", [n, d, ck.floats(n * d), ck.floats(n), ck.floats(d)])
    assert "must be a statement of a block loop" in refusal(gpu.single.apply, p0, "matvec_q8 > for i > 'y[i] = 0.0f;'")
    with pytest.raises(TargetError, match="must name a statement"):
        gpu.single.apply(p, "matvec_q8 > def xq")


def test_pad_lengthens_the_rows_of_a_shared_tile(ck):
    src = ck.parse(textwrap.dedent("""
        void rowsum(int R, const float *x, float *y) {
          for (int b = 0; b < R; b += 32) {
            float tile[32][64];
            for (int i = 0; i < 32; i++) {
              for (int j = 0; j < 64; j++) {
                tile[i][j] = x[(b + i) * 64 + j];
              }
            }
            for (int i = 0; i < 32; i++) {
              y[b + i] = 0.0f;
              for (int j = 0; j < 64; j++) {
                y[b + i] += tile[i][j];
              }
            }
          }
        }"""), "rowsum.c")
    p = gpu.pad.apply(src, "rowsum > def tile", 1).program
    assert "float tile[32][65];" in ck.function_text(p, "rowsum")
    ck.same_outputs(src, p, "rowsum", [64, ck.floats(64 * 64), ck.floats(64)])
    contracts = parse_spec_text("rowsum(R, x, y):\n  requires R >= 32, R % 32 == 0\n  reads x ~> Matrix2(R, 64)\n"
                                "  writes y ~> Matrix1(R)\n")
    assert check_step(src, p, (), contracts).ok
    assert "positive integer" in refusal(gpu.pad.apply, src, "rowsum > def tile", 0)
    flat = ck.parse("void f(float *y) {\n  float t[64];\n  t[0] = 1.0f;\n  y[0] = t[0];\n}\n")
    assert "two or more constant dimensions" in refusal(gpu.pad.apply, flat, "f > def t")
    passed = ck.parse("void g(float (*r)[4]);\nvoid f(void) {\n  float t[4][4];\n  g(t);\n}\n")
    assert "used otherwise than indexed" in refusal(gpu.pad.apply, passed, "f > def t")


def test_vector_copy_moves_16_bytes_at_a_time(ck):
    """matvec_q8's group of 32 int8 weights, staged per thread: two int4 loads."""
    from optitrust_py.spec import load_contracts
    from transformations import matrix

    p0 = quantized(ck)
    p = matrix.local_buffer.apply(p0, "matvec_q8 > for bj > for j", "Wq", "wq", ["D", "N"], ["i:1", "bj:32"]).program
    rw = gpu.vector_copy.apply(p, "matvec_q8 > for bj > for i0")
    assert [o.kind for o in rw.obligations] == ["equals", "equals"]
    result = check_step(p, rw.program, rw.obligations, load_contracts(p, ROOT / "specs" / "matvec_q8.spec"))
    assert result.ok and [v.status for v in result.verdicts] == ["proved", "proved"], result.problems
    assert "#pragma otp gpu int4 16\n" in ck.function_text(rw.program, "matvec_q8")
    n, d = 64, 3
    ck.same_outputs(p0, rw.program, "matvec", [n, d, ck.floats(n * d), ck.floats(n), ck.floats(d)])
    assert "is not a copy" in refusal(gpu.vector_copy.apply, p, "matvec_q8 > for bj > for j")


@needs_nvcc
def test_quantize_cuda_loads_groups_16_bytes_at_a_time(tmp_path):
    cu = final_cu("scripts/quantize.py", tmp_path)
    assert "__align__(16) int8_t wq[32];" in cu and "for (int i0 = 0; i0 < 32; i0 += 16) {" in cu
    assert "*(int4 *)&wq[i0] = *(const int4 *)&Wq[i * N + (bj + i0)];" in cu
    assert "*(int4 *)&sg[i0] = *(const int4 *)&src[r * C + (32 * g + i0)];" in cu
    assert 'extern "C" void matvec(' in cu and "matvec_q8(N, D, Wq, Ws, x, y);" in cu


VECTOR_SPEC = """
    shift(n, o, x, y):
      requires n >= 64, n % 16 == 0, o >= 0, o + 16 <= n
      reads    x ~> Matrix1(n)
      writes   y ~> Matrix1(16)
"""


def test_vector_copy_from_an_unaligned_place_is_refuted(ck):
    src = ck.parse(textwrap.dedent("""
        void shift(int n, int o, const float *x, float *y) {
          for (int k = 0; k < 16; k++) {
            y[k] = x[o + k];
          }
        }"""), "shift.c")
    contracts = parse_spec_text(textwrap.dedent(VECTOR_SPEC))
    reason = refuted(src, gpu.vector_copy.apply(src, "shift > for k"), contracts)
    assert reason.startswith("equals") and "o" in reason
    two = ck.parse("void f(float *y, const double *x) {\n  for (int k = 0; k < 4; k++) {\n    y[k] = x[k];\n  }\n}\n")
    assert "one scalar type" in refusal(gpu.vector_copy.apply, two, "f > for k")
    odd = ck.parse("void f(float *y, const float *x) {\n  for (int k = 0; k < 6; k++) {\n    y[k] = x[k];\n  }\n}\n")
    assert "must divide the bytes copied" in refusal(gpu.vector_copy.apply, odd, "f > for k")
    strided = ck.parse("void f(float *y, const float *x) {\n  for (int k = 0; k < 8; k++) {\n    y[k] = x[2 * k];\n"
                       "  }\n}\n")
    assert "consecutive cells" in refusal(gpu.vector_copy.apply, strided, "f > for k")
    padded = ck.parse("void f(const float *x) {\n  float t[2][6];\n  for (int k = 0; k < 4; k++) {\n"
                      "    t[1][k] = x[k];\n  }\n  x = &t[0][0];\n}\n")
    assert "rows of 't[1][k]'" in refusal(gpu.vector_copy.apply, padded, "f > for k")


def test_cuda_bench_keeps_the_contents_of_modified_arrays(ck):
    """gqa_decode reads the KV caches it appends to: only `out`, which it
    only writes, starts as NaN in the GPU check (NaN caches made every
    output NaN on both sides, and the check vacuous)."""
    from optitrust_py.cuda_bench import _outputs, _plan, _poisoned
    from optitrust_py.spec import load_contracts

    p = ck.load("gqa_decode.c")
    f = p.function("gqa_decode")
    plan, arrays = _plan(f, load_contracts(p, GQA_SPEC)["gqa_decode"], {"H": 4, "KVH": 2, "D": 8, "SMAX": 16, "pos": 9})
    assert _outputs(plan) == ["k_cache", "v_cache", "out"] and _poisoned(plan) == ["out"]
    cache = arrays["k_cache"]
    assert cache.any() and all(x == x for x in cache)  # random, not NaN: what the check runs on


def test_vector_copy_into_a_row_of_a_2d_array(ck):
    """A row of 8 floats holds two int4: the copy into its first 4 cells is
    one; rows of 6 floats (24 bytes) would misalign every other row."""
    src = ck.parse("void f(const float *x, float *y) {\n  float t[2][8];\n  for (int k = 0; k < 4; k++) {\n"
                   "    t[1][k] = x[k];\n  }\n  y[0] = t[1][0];\n}\n")
    rw = gpu.vector_copy.apply(src, "f > for k")
    assert [o.kind for o in rw.obligations] == ["equals", "equals"]
    assert "#pragma otp gpu int4 4\n" in ck.function_text(rw.program, "f")


def test_pad_keeps_the_rows_of_a_vector_copy_aligned(ck):
    """After a 16-byte copy into t's rows, padding them by 1 float would
    put every other row's int4 off a 16-byte boundary: refused; by 4 kept."""
    src = ck.parse("void f(const float *x, float *y) {\n  float t[2][8];\n  for (int k = 0; k < 8; k++) {\n"
                   "    t[1][k] = x[k];\n  }\n  y[0] = t[1][0];\n}\n")
    p = gpu.vector_copy.apply(src, "f > for k").program
    assert refusal(gpu.pad.apply, p, "f > def t") == (
        "gpu.pad: the loop over k copies 't' 4 cells at a time (gpu.vector_copy), so its rows must stay a "
        "multiple of 4 cells: pad by 4")
    assert "float t[2][12];" in ck.function_text(gpu.pad.apply(p, "f > def t", 4).program, "f")


def test_stage_with_vector_copies_a_tile_in_16_byte_pieces(ck):
    """matmul's 16 x 64 tile of C shared by 64 threads: 256 pieces of 4
    floats, 4 each, copied in and back; level 2 proves every sub-step and
    the outputs agree."""
    p0 = ck.load("matmul.c")
    p = steps(p0, (loop.tile, "matmul > for i", 16), (loop.tile, "matmul > for bi > for i > for j", 64),
              (loop.swap, "matmul > for bi > for i"), (gpu.map_blocks, "matmul > for bi", "y"),
              (gpu.map_blocks, "matmul > for bj", "x"))
    rw = gpu.stage.apply(p, "matmul > for bj > for i", "C", "Cs", ["M", "N"], region=["bi:16", "bj:64"], vector=64)
    text = ck.function_text(rw.program, "matmul")
    assert ck.contains(text, """
        #pragma otp gpu thread x
        for (int t = 0; t < 64; t++) {
          for (int pi0 = t; pi0 < 256; pi0 += 64) {
            int i0 = pi0 / 16;
            int ri1 = pi0 % 16;
            #pragma otp gpu int4 4
            for (int ci1 = 0; ci1 < 4; ci1++) {
              Cs[i0][ci1 + ri1 * 4] = C[(bi + i0) * N + bj + ci1 + ri1 * 4];""")
    assert "C[(bi + i0) * N + bj + ci1_1 + ri1_1 * 4] = Cs[i0][ci1_1 + ri1_1 * 4];" in text  # and back
    tiles = parse_spec_text("matmul(M, N, K, A, B, C):\n  requires M >= 16, N >= 64, K >= 1, M % 16 == 0, "
                            "N % 64 == 0\n  reads A ~> Matrix2(M, K), B ~> Matrix2(K, N)\n"
                            "  writes C ~> Matrix2(M, N)\n")
    result = check_step(p, rw.program, rw.obligations, tiles)
    assert result.ok, result.problems
    ck.same_outputs(p0, rw.program, "matmul", matmul_args(ck, 32, 128, 5))
    assert "give no `axes`" in refusal(gpu.stage.apply, p, "matmul > for bj > for i", "C", "Cs", ["M", "N"],
                                       axes=["x"], vector=64)


def test_stage_copies_back_along_other_axes(ck, tmp_path):
    """matmul's 16 x 64 tile of C copied in a thread per row and back a
    thread per column (`out_axes`): neighbouring threads write neighbouring
    cells of C. `otp check --level 2 --exec` proves each sub-step (the copy
    back's loops swapped, its threads apart) and the outputs agree; refused
    where nothing is copied back, or with `vector`."""
    p0 = ck.load("matmul.c")
    tiles = [(loop.tile, "matmul > for i", 16), (loop.tile, "matmul > for bi > for i > for j", 64),
             (loop.swap, "matmul > for bi > for i"), (gpu.map_blocks, "matmul > for bi", "y"),
             (gpu.map_blocks, "matmul > for bj", "x")]
    p = steps(p0, *tiles)
    rw = gpu.stage.apply(p, "matmul > for bj > for i", "C", "Cs", ["M", "N"], region=["bi:16", "bj:64"],
                         axes=["x", None], out_axes=[None, "x"])
    text = ck.function_text(rw.program, "matmul")
    assert ck.contains(text, """
        #pragma otp gpu thread x
        for (int i0 = 0; i0 < 16; i0++) {
          for (int i1 = 0; i1 < 64; i1++) {
            Cs[i0][i1] = C[(bi + i0) * N + (bj + i1)];""")
    assert ck.contains(text, """
        #pragma otp gpu thread x
        for (int i1 = 0; i1 < 64; i1++) {
          for (int i0 = 0; i0 < 16; i0++) {
            C[(bi + i0) * N + (bj + i1)] = Cs[i0][i1];""")
    ck.same_outputs(p0, rw.program, "matmul", matmul_args(ck, 32, 128, 5))
    spec = tmp_path / "tiles.spec"
    spec.write_text((ROOT / "specs" / "matmul.spec").read_text().replace(
        "requires M >= 1, N >= 1, K >= 1", "requires M >= 16, N >= 64, K >= 1, M % 16 == 0, N % 64 == 0"))
    script = tmp_path / "tiles.py"
    script.write_text(textwrap.dedent(f"""
        from optitrust_py.script import load
        from transformations import gpu, loop
        load({str(ROOT / "c_sources" / "matmul.c")!r}, spec={str(spec)!r}, sizes={{"M": 32, "N": 128, "K": 5}})
        """) + "".join(f"{fn.__module__.split('.')[-1]}.{fn.__name__}{tuple(args)!r}\n" for fn, *args in tiles)
        + "gpu.stage('matmul > for bj > for i', 'C', 'Cs', ['M', 'N'], region=['bi:16', 'bj:64'], "
          "axes=['x', None], out_axes=[None, 'x'])\n")
    r = otp("check", str(script), "--level", "2", "--exec", "--no-color")
    assert r.returncode == 0 and "0 obligations not proved" in r.stdout, r.stdout + r.stderr
    assert "does not write 'A': there is no copy back for `out_axes`" in refusal(
        gpu.stage.apply, p, "matmul > for bj > for i", "A", "As", ["M", "K"], region=["bi:16", "0:K"],
        axes=["x", None], out_axes=[None, "x"])
    assert "give no `axes`, `out_axes`" in refusal(gpu.stage.apply, p, "matmul > for bj > for i", "C", "Cs",
                                                   ["M", "N"], out_axes=["x", None], vector=64)


def test_vector_pieces_refusals(ck):
    src = ck.parse("void f(const float *x, float *y) {\n  float t[2][2][8];\n  for (int a = 0; a < 2; a++) {\n"
                   "    for (int b = 0; b < 2; b++) {\n      for (int k = 0; k < 8; k++) {\n"
                   "        t[a][b][k] = x[k];\n      }\n    }\n  }\n  y[0] = t[1][1][0];\n}\n")
    assert "is not a copy nest of one or two loops" in refusal(gpu.vector_pieces.apply, src, "f > for a", 32)
    odd = ck.parse("void f(const float *x, float *y) {\n  float t[8];\n  for (int k = 0; k < 8; k++) {\n"
                   "    t[k] = x[k] + 1.0f;\n  }\n  y[0] = t[0];\n}\n")
    assert "is not a copy" in refusal(gpu.vector_pieces.apply, odd, "f > for k", 2)
