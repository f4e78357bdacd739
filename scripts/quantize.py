"""Quantized matvec: y = W x in int8 groups of 32 (Q8_0, as llama.cpp and
llama2.c's runq), from the naive fp32 loop to an AVX-512 VNNI kernel.

1. The reduction over j is cut in groups of 32 (N is a multiple of 32: the
   contract specs/matvec_q8.spec states it, matvec.spec does not).
2. W and x are read through their int8 quantization, one float scale per
   group: W by a generated quantize_q8 called once in a wrapper (a program
   quantizes its weights once, then calls the kernel matvec_q8 for every
   vector), x when the kernel starts. The one lossy step: each value moves
   by at most half a quantization step, 1/254 of its group's maximum.
3. Each group's products are summed without the two scales, which multiply
   the group's sum once (the accumulator).
4. The group's sum is of int8 products: it runs in int32, exactly.
5. Rows go to the threads; each row keeps its sum in a local, and its loop
   over groups becomes AVX-512 VNNI: 32 int8 of W and of x widened to int16,
   one vpdpwssd (16 exact pairwise sums), converted and scaled into a vector
   of partial sums.

`otp bench` times the kernel on weights quantized once (setup, untimed)
against the naive fp32 loop, the fp32 ending of the same script (`fp32`:
the row loop parallel, the dot product in AVX-512 vectors) and the
straightforward quantized kernel of c_sources/matvec_q8.c (`runq`).
Quantization noise on random inputs is about 0.5% of the outputs' largest
magnitude: the outputs must agree with the fp32 original within 2%.

With `--target cuda`, steps 1 to 4 are shared; quantize_q8 runs a thread
per group (its 32 floats read, and its 32 int8 written, 16 bytes at a
time: gpu.vector_copy), and matvec_q8 a block per row, a thread per group
of 32: the group's int8 weights and quantized x staged in registers by
16-byte loads, the int32 dot product, the scaled partial sums reduced over
the block's threads, the row stored by one thread (gpu.single). The bench
times matvec_q8 on weights quantized once on the GPU (setup=), against
torch's fp32 matvec (TF32 off).
"""
from optitrust_py.script import bench, load, target
from transformations import gpu, llm, loop, matrix, parallel, quantize, variable, vector

load("../c_sources/matvec.c", spec="../specs/matvec_q8.spec", sizes={"N": 256, "D": 24})


def fp32() -> None:
    """The fp32 ending: rows in parallel, each dot product in vectors."""
    parallel.parallel_for("matvec > for i")
    variable.local_accumulator("matvec > for j", "y[i]")
    vector.vectorize("matvec > for j")


bench("matvec", sizes={"N": 4096, "D": 4096}, flops="2*N*D", tolerance=0.02,
      setup="quantize_q8(D, N, W, Wq, Ws)", call="matvec_q8(N, D, Wq, Ws, x, y)",
      variants={"fp32": fp32, "runq": "../c_sources/matvec_q8.c"},
      numpy="y = W.reshape(D, N) @ x", torch="y = W.reshape(D, N) @ x")

loop.tile("matvec > for j", 32)
quantize.int8_groups("matvec > for bj > for j", {"W": ["D", "N"], "x": ["N"]}, ahead=["W"])
quantize.group_accumulator("matvec_q8 > for bj > for j")
quantize.integer_product("matvec_q8 > for bj > for j")

if target() == "cuda":
    # 5. (CUDA) quantize_q8: a block per row and 128 groups, a thread per
    #    group; matvec_q8: a block per row, a thread per group, the row's
    #    sum reduced over the block's threads and stored by one of them
    loop.tile("quantize_q8 > for g", 128, "bg", "min")
    gpu.map_blocks("quantize_q8 > for r", "y")
    gpu.map_blocks("quantize_q8 > for r > for bg", "x")
    gpu.map_threads("quantize_q8 > for r > for bg > for g", "x")
    matrix.local_buffer("quantize_q8 > for g > for k#1", "src", "sg", ["R", "C"], ["r:1", "g * 32:32"])
    gpu.vector_copy("quantize_q8 > for g > for i0")
    matrix.local_buffer("quantize_q8 > for g > for k#2", "q", "qg", ["R", "C"], ["r:1", "g * 32:32"])
    gpu.vector_copy("quantize_q8 > for g > for i0_1")
    variable.local_accumulator("matvec_q8 > for bj", "y[i]")
    llm.unblock("matvec_q8 > def acc_1")
    gpu.map_blocks("matvec_q8 > for i", "x")
    gpu.reduce("matvec_q8 > for i > for bj", "acc_1", 128)
    matrix.local_buffer("matvec_q8 > for bj > for j", "Wq", "wq", ["D", "N"], ["i:1", "bj:32"])
    matrix.local_buffer("matvec_q8 > for bj > for j", "xq", "xg", ["N"], ["bj:32"])
    gpu.vector_copy("matvec_q8 > for bj > for i0#1")
    gpu.vector_copy("matvec_q8 > for bj > for i0_1")
    gpu.single("matvec_q8 > for i > 'y[i] = 0.0f;'")
    gpu.single("matvec_q8 > for i > 'y[i] = acc_1;'")
else:
    parallel.parallel_for("matvec_q8 > for i")
    variable.local_accumulator("matvec_q8 > for bj", "y[i]")
    vector.vectorize("matvec_q8 > for bj")
