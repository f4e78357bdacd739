"""bfloat16 storage: matrix.set_precision(..., "otp_bf16") of a local array
or of a pointer parameter (gqa_decode's KV caches), the conversion
otp_to_bf16 of include/otp.h (CPU build), level 2's in_type_range for it,
the CUDA bench's bfloat16 buffers (what can be checked without a GPU), and
attention.py's and gqa_decode.py's bf16 CUDA endings compiled by nvcc."""
from __future__ import annotations

import math
import struct
import subprocess
import sys
import textwrap
from array import array
from pathlib import Path
from typing import Optional

import pytest

from optitrust_py import ir
from optitrust_py.bench import TOLERANCE, declare, declared
from optitrust_py.contract import evaluate
from optitrust_py.cuda_bench import CudaReport, _plan, bf16_round, device_inputs, narrowed
from optitrust_py.cuda_build import compile_check, find_nvcc
from optitrust_py.errors import ScriptError, TargetError
from optitrust_py.frontend import parse_text
from optitrust_py.level2 import check_step
from optitrust_py.obligation import Obligation
from optitrust_py.printer import to_c
from optitrust_py.runner import new_session, run_script
from optitrust_py.session import Rewrite, Session
from optitrust_py.spec import load_contracts, parse_formula
from conftest import Floats
from helpers import attention_args, refusal
from transformations import gpu, matrix

ROOT = Path(__file__).resolve().parents[1]
BF16_TOL = 8 * 2.0 ** -8


def in_type_range(before: ir.Program, rewrite: Rewrite) -> tuple[str, str]:
    contracts = load_contracts(before, ROOT / "specs" / "attention.spec")
    result = check_step(before, rewrite.program, rewrite.obligations, contracts)
    (v,) = [v for v in result.verdicts if v.kind == "in_type_range"]
    return v.status, v.reason


def test_set_precision_bf16_converts_every_store(ck):
    p = ck.load("attention.c")
    r = matrix.set_precision.apply(p, "attention > def scores", "otp_bf16")
    text = ck.function_text(r.program, "attention")
    assert "otp_bf16 *scores = malloc(S * sizeof(otp_bf16));" in text
    assert "scores[j] = otp_to_bf16(s / scale);" in text or "scores[j] = otp_to_bf16(s / sqrtf(D));" in text
    assert "scores[j] = otp_to_bf16(expf((float)scores[j] - max_val));" in text
    assert "#include <otp.h>" in r.program.includes
    assert r.fp == "lossy" and r.tolerance == BF16_TOL
    ck.roundtrip(r.program)
    ck.compiles(r.program)
    assert ck.close_outputs(p, r.program, "attention", attention_args(ck, 2, 8, 4), r.tolerance, floor=1.0) > 0
    assert in_type_range(p, r) == ("proved", "")


def test_a_store_without_the_conversion_is_not_proved_in_range(ck):
    p = ck.load("attention.c")
    r = matrix.set_precision.apply(p, "attention > def scores", "otp_bf16")
    text = ck.function_text(r.program, "attention").replace("otp_to_bf16(expf(", "(expf(")
    bypass = ck.parse("#include <math.h>\n#include <stdlib.h>\n#include <otp.h>\n" + text, str(p.file))
    (ob,) = r.obligations
    status, reason = in_type_range(p, Rewrite(bypass, (Obligation(ob.kind, ob.claim, ob.function, ob.paths),),
                                              "lossy", r.tolerance))
    assert status == "unknown"
    assert "is stored into 'scores' without otp_to_bf16()" in reason


def test_set_precision_bf16_refuses_an_update(ck):
    odd = ck.parse(textwrap.dedent("""
        void f(int n, const float *x, float *y) {
          float t[16];
          for (int i = 0; i < 16; i++) {
            t[i] = x[i];
            t[i] += x[i + 16];
          }
          for (int i = 0; i < 16; i++) {
            y[i] = t[i];
          }
        }"""))
    assert "'t[i]' updates 't', whose new type is stored through otp_to_bf16(): write it as a store" in \
        refusal(matrix.set_precision.apply, odd, "f > def t", "otp_bf16")


def bf16_reference(x: float) -> float:
    """Round to the nearest bfloat16, ties to even, saturating finite
    overflow and infinities at the largest finite bfloat16 (as otp.h says)."""
    largest = struct.unpack("<f", struct.pack("<I", 0x7F7F0000))[0]
    if math.isnan(x):
        return x
    x = max(-largest, min(largest, x))
    u = struct.unpack("<I", struct.pack("<f", x))[0]
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return struct.unpack("<f", struct.pack("<I", u))[0]


class Given(Floats):
    """A float array argument holding the given values."""

    def __init__(self, values: list[float]) -> None:
        super().__init__(len(values), 0)
        self.values = values

    def make(self) -> array:
        return array("f", self.values)


def test_otp_to_bf16_rounds_to_nearest_even_and_saturates(ck):
    code = textwrap.dedent("""
        #include <otp.h>
        void convert(int n, float *x) {
          for (int i = 0; i < n; i++) {
            otp_bf16 b = otp_to_bf16(x[i]);
            x[i] = (float)b;
          }
        }""")
    ties = [1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8, 1.0 + 2.0 ** -8 + 2.0 ** -20]
    values = ties + [3.14159, -2.5e-3, 3.4e38, -3.4e38, math.inf, -math.inf, 1e-40, 0.0, math.nan]
    (got,) = ck.run_text(code, "bf16.c", "convert", [len(values), Given(values)])
    out = array("f", got)
    want = [bf16_reference(array("f", [v])[0]) for v in values]
    assert out[:3].tolist() == [1.0, 1.0 + 4 * 2.0 ** -8, 1.0 + 2.0 ** -7]
    assert [str(a) for a in out] == [str(b) for b in want]


@pytest.mark.skipif(find_nvcc() is None, reason="nvcc is not installed here (PATH, /usr/local/cuda/bin)")
def test_attention_bf16_ending_compiles_with_nvcc(tmp_path):
    """--precision bf16: the Q, K, V and P tiles of both copies are
    otp_bf16 (__nv_bfloat16) in shared memory, padded, and Q K^T and P V are
    tensor-core calls by the lanes of four warps, accumulating in registers,
    in the diagonal block too (masked); P V reads V's tile as it is copied,
    k-major (ldmatrix.trans in CUDA)."""
    r = subprocess.run([sys.executable, "-m", "optitrust_py", "run", "scripts/attention.py", "--target", "cuda",
                        "--precision", "bf16", "--quiet", "--no-color", "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    cu = (tmp_path / "attention" / "final.cu").read_text()
    for tile in ("q64)[72]", "k64)[72]", "v64)[72]", "p64)[72]", "q128)[136]", "k128)[136]", "v128)[136]",
                 "p128)[72]"):
        assert f"otp_bf16 (*{tile} = " in cu
    for d in (64, 128):
        assert (f"otp_mma_m16n8k16_bf16(&lane{d}_acc_h[(nj{d} - bj) / 8][0], &lane{d}_acc_h[(nj{d} - bj) / 8][2], "
                f"&q{d}[mi{d} + lane{d}_t % 32 / 4 - bi][kd{d}]") in cu
        assert f"otp_mma_m16n8k16_bf16_kn(&lane{d}_pv_acc[0], &lane{d}_pv_acc[2], &p{d}[mo{d} + lane{d}_pv_t % 32 / 4" in cu
        assert (f"&v{d}[kj{d} - bj][nd{d} + 2 * (lane{d}_pv_t % 32 % 4)], &v{d}[kj{d} + 8 - bj][nd{d} + 2 * "
                f"(lane{d}_pv_t % 32 % 4)], lane{d}_pv_t % 32);") in cu
    # the diagonal block masked (flash.mask): tile products like the others, no per-query key bound; the
    # scores multiplied by 1 / scale (arith.reciprocal); the GPU's approximate exponential (gpu.fast_math); a
    # query's softmax on the four lanes that hold its scores (gpu.warp_rows' mma form), the scores and
    # exp-scores in those lanes' registers (gpu.fragment_layout: no shared tile of scores), max and sum folded
    # by two xor shuffles each
    for d, w, half, jc in ((64, "w", "half", "jc"), (128, "w_1", "half_1", "jc_1")):
        assert f"float s{d}_h[8][4];" in cu and f"float sc{d}[8][4];" in cu and f"(*s{d}_h)" not in cu
        row = f"{w} / 32 * 16 + {w} % 32 / 4 + {half} * 8"
        assert (f"sc{d}[(j - bj) / 8][2 * {half} + {jc}] = j + 2 * ({w} % 4) + {jc} < bi + {row} + 1 ? "
                f"s{d}_h[(j - bj) / 8][2 * {half} + {jc}] * rscale : -INFINITY;") in cu
        assert (f"sc{d}[(j - bj) / 8][2 * {half} + {jc}] = otp_fast_expf(sc{d}[(j - bj) / 8][2 * {half} + {jc}] "
                f"- max_val_blk);") in cu
        assert (f"p{d}[{row}][p{d}_1 + 2 * ({w} % 4) + p{d}_1c] = otp_to_bf16(sc{d}[p{d}_1 / 8][2 * {half} "
                f"+ p{d}_1c]);") in cu
    assert cu.count("__shfl_xor_sync(0xffffffffu, ") == 8
    for kernel in ("attention_kernel1", "attention_kernel3"):  # the query blocks of D = 64 and 128
        assert "? bj + 64 : i + 1" not in cu.split(f"__global__ void {kernel}(")[1].split("__global__")[0]
    # q, k and v in bfloat16 (the caller's); D = 128: the K and V tiles copied by the block's 128 threads in
    # 16-byte pieces straight into shared memory (cp.async), each waited for before the phase that reads it
    assert "void attention(int H, int S, int D, const otp_bf16 *q, const otp_bf16 *k, const otp_bf16 *v, " in cu
    assert ("__pipeline_memcpy_async(&k128[k128_0][ck128_1 + rk128_1 * 8], "
            "&k[(h * S + bj + k128_0) * 128 + ck128_1 + rk128_1 * 8], 16);") in cu
    assert ("__pipeline_memcpy_async(&v128[v128_0][cv128_1 + rv128_1 * 8], "
            "&v[(h * S + bj + v128_0) * 128 + cv128_1 + rv128_1 * 8], 16);") in cu
    launch = cu[cu.index("cudaLaunchKernelEx(&otp_launch, attention_kernel2,"):cu.index(
        "cudaLaunchKernelEx(&otp_launch, attention_kernel3,")]  # a later kernel: programmatic dependent launch
    assert "otp_launch = {dim3((S - S % 64 + (64 - 1)) / 64, H, 1), dim3(128, 1, 1), " in launch
    # the output tile in the lanes' registers (gpu.fragment_layout); tiles never live together share bytes
    # (cuda_shared): V over K, done with after Q K^T, the output's copy out over the key blocks' tiles, done with
    # at the barrier that ends the key loop's body; P apart (the softmax's phases, a warp's rows each, are
    # ordered by warp barriers only); the running max and sum, which the rows' first lanes keep, in shared
    # memory: 50944 bytes a block
    assert "float o128[16][4];" in cu and "float (*ob128)[129] = (float (*)[129])(otp_smem + 17920);" in cu
    assert "float *max_val_h_1 = (float *)(otp_smem + 0);" in cu and "float *sum_h_1 = (float *)(otp_smem + 256);" in cu
    assert "otp_bf16 (*k128)[136] = (otp_bf16 (*)[136])(otp_smem + 17920);" in cu
    assert "otp_bf16 (*v128)[136] = (otp_bf16 (*)[136])(otp_smem + 17920);" in cu
    assert "otp_bf16 (*p128)[72] = (otp_bf16 (*)[72])(otp_smem + 35328);" in cu
    assert "float *rs128 = (float *)(otp_smem + 44544);" in cu
    assert "dim3(128, 1, 1), 50944, 0, otp_pdl, 1};" in launch
    # four block barriers a key block: after K's copy, after Q K^T (V's copy takes K's bytes), before P V
    # (V's copy waited for), at the end; V's copy and the softmax's three phases (the scores and their max; the
    # exp-scores and their sum; the sum's fold and P) are ordered by warp barriers
    body = cu.split("__global__ void attention_kernel3(")[1].split("__global__")[0]
    loop = body[body.index("for (int bj = 0;"):body.index("float (*ob128)")]
    assert loop.count("__syncthreads();") == 4 and loop.count("__syncwarp();") == 3
    # V's copy stays in flight under the softmax: waited for at the barrier before P V
    assert loop.count("__pipeline_wait_prior(0);") == 2
    assert "__pipeline_wait_prior(0);\n    __syncthreads();\n    {\n      int lane128_pv_t" in loop
    # the output set to zero, and divided by the sums, a thread per column: coalesced
    assert ("int d = (int)threadIdx.x;\n    for (int i = bi; i < bi + 64; i++) {\n"
            "      out[(h * S + i) * 128 + d] = 0.0f;") in body
    assert ("      out[(h * S + o128_0) * 128 + o128_1] = otp_fast_div(out[(h * S + o128_0) * 128 + o128_1], "
            "sum_h_1[o128_0 - bi]);") in body
    # Q K^T: a lane's accumulators of its 8 column tiles at once, the k-slices outside the tiles (each slice's
    # Q fragment loaded once for the 8)
    qk = loop[loop.index("float lane128_acc_h[8][4];"):]
    assert qk.index("for (int kd128 = 0; kd128 < 128; kd128 += 16) {") < qk.index(
        "for (int nj128 = bj; nj128 < bj + 64; nj128 += 8) {\n            otp_mma_m16n8k16_bf16(&lane128_acc_h[(nj128 - bj) / 8][0]")
    # the last S % 64 queries (D = 128): a thread per query, its rows of q and of the output in local arrays
    tail = cu.split("__global__ void attention_kernel4(")[1].split("__global__")[0]
    assert "float out_row128[128];" in tail and "otp_bf16 q_row128[128];" in tail
    assert "out_row128[d] += scores_blk[j - bj] * (float)v[(h * S + j) * 128 + d];" in tail
    assert compile_check(cu, "final.cu") == ()


# ----------------------------------------------------------------- a parameter narrowed: the KV cache


GQA_SPEC = ROOT / "specs" / "gqa_decode.spec"


def narrowed_caches(ck) -> tuple[ir.Program, Rewrite, Rewrite]:
    p = ck.load("gqa_decode.c")
    k = matrix.set_precision.apply(p, "gqa_decode > param k_cache", "otp_bf16")
    return p, k, matrix.set_precision.apply(k.program, "gqa_decode > param v_cache", "otp_bf16")


def test_set_precision_narrows_the_kv_cache_parameters(ck):
    """The caller holds the caches in bfloat16: the parameters' type
    changes, the append rounds through otp_to_bf16, the reads convert back."""
    p, k, v = narrowed_caches(ck)
    text = ck.function_text(v.program, "gqa_decode")
    assert "const float *v_new, otp_bf16 *k_cache, otp_bf16 *v_cache, float *out)" in text
    assert "k_cache[(g * SMAX + pos) * D + d] = otp_to_bf16(k_new[g * D + d]);" in text
    assert "v_cache[(g * SMAX + pos) * D + d] = otp_to_bf16(v_new[g * D + d]);" in text
    assert "s += q[h * D + d] * (float)k_cache[(g * SMAX + t) * D + d];" in text
    assert "out[h * D + d] += scores[t] * (float)v_cache[(g * SMAX + t) * D + d];" in text
    assert "#include <otp.h>" in v.program.includes and v.program.includes.count("#include <otp.h>") == 1
    for r in (k, v):
        assert r.fp == "lossy" and r.tolerance == BF16_TOL
    ck.roundtrip(v.program)
    ck.compiles(v.program)
    contracts = load_contracts(p, GQA_SPEC)
    for before, r in ((p, k), (k.program, v)):
        result = check_step(before, r.program, r.obligations, contracts)
        assert [(x.kind, x.status) for x in result.verdicts] == [("in_type_range", "proved")], result.problems
        assert not result.problems


def test_set_precision_keeps_a_const_parameter_const(ck):
    p = ck.load("attention.c")
    r = matrix.set_precision.apply(p, "attention > param k", "otp_bf16")
    text = ck.function_text(r.program, "attention")
    assert "const float *q, const otp_bf16 *k, const float *v, float *out)" in text
    assert "(float)k[" in text and "otp_to_bf16" not in text  # read only: nothing stored
    ck.compiles(r.program)


def test_set_precision_of_a_parameter_refusals(ck):
    sp = matrix.set_precision.apply
    g = ck.load("gqa_decode.c")
    assert "'pos' is not an array nor a pointer" in refusal(sp, g, "gqa_decode > param pos", "otp_bf16")
    assert "narrowed to otp_bf16 only (its callers then pass arrays of that type), not '_Float16'" in \
        refusal(sp, g, "gqa_decode > param k_cache", "_Float16")
    assert "not 'half'" in refusal(sp, g, "gqa_decode > param k_cache", "half")
    assert "tolerance must be a positive number" in refusal(sp, g, "gqa_decode > param k_cache", "otp_bf16",
                                                            tolerance=-1.0)
    assert "'k_cache' is a parameter of gqa_decode: name it 'gqa_decode > param k_cache'" in \
        refusal(sp, g, "gqa_decode > def k_cache", "otp_bf16")
    with pytest.raises(TargetError, match="param kc matches nothing in gqa_decode; candidates:"):
        sp(g, "gqa_decode > param kc", "otp_bf16")
    q8 = ck.load("matvec_q8.c")
    assert "'Wq' holds const int8_t: a parameter narrowed to otp_bf16 must hold float" in \
        refusal(sp, q8, "matvec_q8 > param Wq", "otp_bf16")
    doubles = ck.parse("void f(int n, double *x) {\n  for (int i = 0; i < n; i++) {\n    x[i] = 0.5;\n  }\n}\n")
    assert "'x' holds double: a parameter narrowed to otp_bf16 must hold float" in \
        refusal(sp, doubles, "f > param x", "otp_bf16")
    # transformer_token's matvec is called with the float weights of the model
    t = ck.load("transformer.c")
    assert "matvec is called with '&wq[l * dim * dim]' (const float *) as 'W' (line" in \
        refusal(sp, t, "matvec > param W", "otp_bf16")
    # transformer_prefill passes its float cache to transformer_token, which it cannot narrow in turn
    assert "transformer_token is called with 'k_cache' (float *) as 'k_cache' (line 131)" in \
        refusal(sp, t, "transformer_token > param k_cache", "otp_bf16")
    assert "'k_cache' is passed to a call in 'transformer_token(" in \
        refusal(sp, t, "transformer_prefill > param k_cache", "otp_bf16")


CALLERS = """
    #include <otp.h>
    void scale(int n, float *x);
    void scale(int n, float *x) {
      for (int i = 0; i < n; i++) {
        x[i] = 2.0f * x[i];
      }
    }
    void caller(int n, otp_bf16 *kc) {
      scale(n, kc);
    }
"""


def test_set_precision_of_a_parameter_and_its_callers(ck):
    """A caller that passes an otp_bf16 array is kept (and the prototype
    follows the definition); one that passes floats, or a pointer to the
    function, is refused."""
    r = matrix.set_precision.apply(ck.parse(textwrap.dedent(CALLERS)), "scale > param x", "otp_bf16")
    text = to_c(r.program)
    assert text.count("void scale(int n, otp_bf16 *x)") == 2 and "x[i] = otp_to_bf16(2.0f * (float)x[i]);" in text
    ck.compiles(r.program)
    floats = ck.parse(textwrap.dedent(CALLERS).replace("otp_bf16 *kc", "float *kc"))
    assert "scale is called with 'kc' (float *) as 'x' (line 12): narrowed, it would read those values as " \
           "otp_bf16; narrow the caller's array first" in refusal(matrix.set_precision.apply, floats,
                                                                  "scale > param x", "otp_bf16")
    pointer = ck.parse(textwrap.dedent(CALLERS).replace("scale(n, kc);", "void (*f)(int, float *) = scale;"))
    assert "the address of scale is taken (line 12)" in \
        refusal(matrix.set_precision.apply, pointer, "scale > param x", "otp_bf16")


# ----------------------------------------------------------------- gqa_decode.py with bfloat16 caches (CUDA)


def gqa_session(precision: str, steps: Optional[int] = None) -> Session:
    session = new_session(ROOT / "scripts" / "gqa_decode.py", "cuda", stop_after=steps, precision=precision)
    assert run_script(session, ROOT / "scripts" / "gqa_decode.py") is None
    return session


def test_gqa_script_narrows_the_caches_first_and_counts_two_bytes_a_value():
    """--precision bf16: the CUDA steps start by narrowing both caches; the
    bench counts the K and V rows read at 2 bytes a value, checks within
    2e-2 and gives torch q in bfloat16 (the caches it gets are the GPU's
    bfloat16 tensors); fp32 keeps 4 bytes and its default tolerance."""
    bf16 = gqa_session("bf16", 4)
    calls = [s.call for s in bf16.steps]
    assert calls[2:] == ["matrix.set_precision('gqa_decode > param k_cache', 'otp_bf16')",
                         "matrix.set_precision('gqa_decode > param v_cache', 'otp_bf16')"]
    spec = declared(bf16)
    sizes = dict(spec.sizes)
    rows = sizes["KVH"] * (sizes["pos"] + 1) * sizes["D"]  # cached values read, per cache
    assert spec.unit == "bytes" and evaluate(parse_formula(spec.work), sizes) == 2 * rows * 2
    assert spec.tolerance == 2e-2 and "bf16(q)" in spec.formulation("torch")
    assert narrowed(bf16.original, bf16.program, spec) == ("k_cache", "v_cache")
    fp32 = gqa_session("fp32", 4)
    spec32 = declared(fp32)
    assert evaluate(parse_formula(spec32.work), sizes) == 2 * rows * 4 and spec32.tolerance == TOLERANCE
    assert "set_precision" not in " ".join(s.call for s in fp32.steps)
    assert narrowed(fp32.original, fp32.program, spec32) == ()


def test_bf16_round_is_otp_to_bf16(ck):
    """The CUDA bench rounds a narrowed parameter's inputs as the CPU build
    does (otp_to_bf16): ties to even, saturation, NaN kept."""
    np = pytest.importorskip("numpy")
    special = [1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8, 3.4e38, -3.4e38, math.inf, -math.inf, 1e-40, -0.0, math.nan]
    values = special + list(np.random.default_rng(7).uniform(-1, 1, 500).astype(np.float32))
    got = bf16_round(np.array(values, np.float32))
    assert got.dtype == np.float32
    (c_bytes,) = ck.run_text(textwrap.dedent("""
        #include <otp.h>
        void convert(int n, float *x) {
          for (int i = 0; i < n; i++) {
            x[i] = otp_to_bf16(x[i]);
          }
        }"""), "bf16.c", "convert", [len(values), Given([float(v) for v in values])])
    assert got.tobytes() == np.frombuffer(c_bytes, np.float32).tobytes()
    assert [str(float(x)) for x in got[:9]] == [str(bf16_reference(float(np.float32(v)))) for v in special]


def test_cuda_bench_device_inputs_of_narrowed_caches(ck):
    """The GPU's cache buffers start from the bench's random inputs rounded
    once (2 bytes a value); the CPU reference keeps the plain inputs."""
    np = pytest.importorskip("numpy")
    p, _, v = narrowed_caches(ck)
    plan, arrays = _plan(p.function("gqa_decode"), load_contracts(p, GQA_SPEC)["gqa_decode"],
                         {"H": 4, "KVH": 2, "D": 8, "SMAX": 16, "pos": 9})
    plain = {k: a.copy() for k, a in arrays.items()}
    spec = declare("gqa_decode", None, None, "4*KVH*(pos+1)*D", {})
    dev = device_inputs(arrays, narrowed(p, v.program, spec))
    assert {k for k, (_, half) in dev.items() if half} == {"k_cache", "v_cache"}
    for name, (values, half) in dev.items():
        assert values is not arrays[name] and arrays[name].tobytes() == plain[name].tobytes()
        want = bf16_round(plain[name]) if half else plain[name]
        assert values.tobytes() == want.tobytes()
    assert not np.array_equal(dev["k_cache"][0], plain["k_cache"])  # rounding changed some
    broken = variant_text(v.program, "otp_bf16 *k_cache", "double *k_cache")
    with pytest.raises(ScriptError, match="takes other parameter types than the original's"):
        narrowed(p, broken, spec)


def variant_text(p: ir.Program, old: str, new: str) -> ir.Program:
    text = to_c(p)
    assert old in text
    return parse_text(text.replace(old, new), "variant.c")


def test_cuda_report_states_the_tolerance_and_the_bf16_parameters():
    report = CudaReport("gqa_decode", {"H": 32}, "bytes", {"check_sizes": 3e-3}, {}, "", 2e-2, ("k_cache",))
    data = report.to_json("scripts/gqa_decode.py")
    assert data["tolerance"] == 2e-2 and data["bf16"] == ["k_cache"]


@pytest.mark.skipif(find_nvcc() is None, reason="nvcc is not installed here (PATH, /usr/local/cuda/bin)")
def test_async_copy_refusals_on_the_gqa_chunks():
    """gpu.async_copy on gqa_decode.py's bf16 ending (its K and V tiles are
    asynchronous there): refused for a copy already asynchronous, for one
    gpu.vector_copy did not mark, and for a copy into a thread's registers."""
    program = gqa_session("bf16").program
    chunk = "gqa_decode > for g#2 > for bt"
    assert "is not a 16-byte copy that is still synchronous" in refusal(gpu.async_copy.apply, program,
                                                                         f"{chunk} > for t_3 > for ci1_2_1")
    assert "make it one with gpu.vector_copy first" in refusal(gpu.async_copy.apply, program, f"{chunk} > for i0_1")
    assert "'kr', which for i0_4 (line 68) writes, is not an array declared in a block loop" \
        in refusal(gpu.async_copy.apply, program, f"{chunk} > for i0_4")


def test_gqa_bf16_ending_passes_exec_and_compiles_with_nvcc(tmp_path):
    """Every step of the bf16 CUDA ending agrees with the one before under
    --exec (the narrowing steps within their tolerance, given rounded
    caches); the kernels take the caches as __nv_bfloat16 and compile."""
    r = subprocess.run([sys.executable, "-m", "optitrust_py", "run", "scripts/gqa_decode.py", "--target", "cuda",
                        "--precision", "bf16", "--exec", "--quiet", "--no-color", "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("k_cache narrowed") == 1 and r.stdout.count("v_cache narrowed") == 1
    cu = (tmp_path / "gqa_decode" / "final.cu").read_text()
    assert ("extern \"C\" void gqa_decode(int H, int KVH, int D, int SMAX, int pos, const float *q, "
            "const float *k_new, const float *v_new, otp_bf16 *k_cache, otp_bf16 *v_cache, float *out)") in cu
    assert "k_cache[(g * SMAX + pos) * D + d] = otp_to_bf16(k_new[g * D + d]);" in cu
    assert "otp_bf16 (*ks)[136] = (otp_bf16 (*)[136])(otp_smem + 3136);" in cu  # the staged K tile stays bfloat16
    # copied 8 values a piece by the block's threads (gpu.stage's vector), rows padded to stay 16-byte aligned,
    # asynchronously (gpu.async_copy), and so is V's tile, issued right after (flash.move_up)
    k_copy = ("__pipeline_memcpy_async(&ks[i0_2][ci1_2 + ri1_2 * 8], &k_cache[(g * SMAX + 64 * bt + i0_2) * 128 + "
              "ci1_2 + ri1_2 * 8], 16);")
    v_copy = ("__pipeline_memcpy_async(&vs[i0_3][ci1_2_1 + ri1_2_1 * 8], &v_cache[(g * SMAX + 64 * bt + i0_3) * "
              "128 + ci1_2_1 + ri1_2_1 * 8], 16);")
    # the scores wait for K's copy only (V's stays in flight under them), the weighted sum of V for the rest
    order = [k_copy, "__pipeline_commit();", v_copy, "__pipeline_commit();", "__pipeline_wait_prior(1);",
             "__syncthreads();", "sc[t - 64 * bt][r] = s4[r] / sqrtf(128);", "max_val_chunk_part =",
             "__pipeline_wait_prior(0);", "__syncthreads();", "(float)vs[t - 64 * bt][d]"]
    at = 0
    for piece in order:
        at = cu.index(piece, at) + len(piece)
    # a thread per key computes its G = 4 scores together, reading its K row and q 16 bytes at a time
    assert "*(int4 *)&kr[i0_4] = *(const int4 *)&ks[t - 64 * bt][bd + i0_4];" in cu
    assert "*(int4 *)&qr[i0_5][i1_2] = *(const int4 *)&qs[i0_5][bd + i1_2];" in cu
    assert "s4[r] += qr[r][d - bd] * (float)kr[d - bd];" in cu
    # the scores laid out [key][head]: the weighted sum of V reads a key's 4 weights in one 16-byte read
    assert "*(int4 *)&wr[i0_6] = *(const int4 *)&sc[t - 64 * bt][i0_6];" in cu
    assert "acc[i0] = 0.0f;" in cu  # the partial outputs start at zero in registers (local_buffer's init)
    # the scores are not copied back to the scratch buffer (matrix.drop_dead_store): no chunk's kernel but
    # the last, shorter one's touches it
    chunks = cu[cu.index("__global__ void gqa_decode_kernel2("):cu.index("__global__ void gqa_decode_kernel3(")]
    assert "scores" not in chunks.split("{", 1)[1]
    # the combination's sum over the chunks unrolled by 16: 16 loads of partial outputs in flight at once
    assert "(bt + 15) * D + d" in cu
    assert "(float)v_cache[(g * SMAX + t) * D + d]" in cu
    assert compile_check(cu, "final.cu") == ()
