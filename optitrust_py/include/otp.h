/* otp contract clauses for real builds.

   otp reads function and loop contracts written as calls at the top of a
   body, e.g.  __reads("q ~> Matrix3(H, S, D)");  When the code is compiled
   (gcc -I <otp package>/include), every clause expands to nothing, so the
   statement becomes the empty statement `;` and costs nothing. */
#ifndef OTP_H
#define OTP_H

#include <math.h>

#define __requires(s)
#define __ensures(s)
#define __reads(s)
#define __writes(s)
#define __modifies(s)
#define __xreads(s)
#define __xwrites(s)
#define __xmodifies(s)
#define __sreads(s)
#define __smodifies(s)

/* bfloat16 storage (matrix.set_precision(..., "otp_bf16")): a value is
   stored as otp_to_bf16(x), rounded to the nearest bfloat16 (ties to even)
   after saturating at the largest finite one, OTP_BF16_MAX (a NaN stays a
   NaN); reads convert back with (float). In CUDA the cells are
   __nv_bfloat16 (two bytes); on the CPU, where gcc 12's C has no bfloat16
   type, they are floats that hold bfloat16 values only, so the CPU build
   computes with exactly the values the GPU reads. */
#define OTP_BF16_MAX 3.38953139e38f
#ifdef __CUDACC__
#include <cuda_bf16.h>
typedef __nv_bfloat16 otp_bf16;
static __host__ __device__ inline otp_bf16 otp_to_bf16(float x) {
  return __float2bfloat16_rn(x > OTP_BF16_MAX ? OTP_BF16_MAX : x < -OTP_BF16_MAX ? -OTP_BF16_MAX : x);
}
#else
#include <stdint.h>
typedef float otp_bf16;
static inline float otp_to_bf16(float x) {
  union { float f; uint32_t u; } b;
  b.f = x > OTP_BF16_MAX ? OTP_BF16_MAX : x < -OTP_BF16_MAX ? -OTP_BF16_MAX : x;
  if ((b.u & 0x7fffffffu) <= 0x7f800000u) {
    b.u += 0x7fffu + ((b.u >> 16) & 1u);
    b.u &= 0xffff0000u;
  }
  return b.f;
}
#endif

/* gpu.fast_math: the GPU's approximate exponential and division (__expf:
   a multiply by log2 e and the hardware's base-2 exponential; __fdividef).
   On the CPU the same two roundings that dominate their error: the multiply
   by log2 e before an exact-enough exp2f, and the reciprocal before the
   multiply. */
#ifdef __CUDACC__
static __host__ __device__ inline float otp_fast_expf(float x) {
#ifdef __CUDA_ARCH__
  return __expf(x);
#else
  return exp2f(x * 1.44269504f);
#endif
}
static __host__ __device__ inline float otp_fast_div(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdividef(a, b);
#else
  return a * (1.0f / b);
#endif
}
#else
static inline float otp_fast_expf(float x) { return exp2f(x * 1.44269504f); }
static inline float otp_fast_div(float a, float b) { return a * (1.0f / b); }
#endif

/* One lane's share of a warp's tensor-core product (transformations/gpu.py,
   gpu.mma): C (16 x 8, float) += A (16 x 16) * B^T (B: 8 x 16), A and B in
   bfloat16. Lane l = 4g + t owns C's cells (g, 2t), (g, 2t + 1) (c_top) and
   (g + 8, 2t), (g + 8, 2t + 1) (c_bottom); a_top and a_bottom are rows g and
   g + 8 of A, b_even and b_odd rows 2t and 2t + 1 of B, 16 cells each. On
   the CPU each call adds its 16 products to its 4 cells in k order. In CUDA
   the 32 lanes of a warp call it together: each lane reaches row g of B
   from its rows 2t and 2t + 1 by their distance (gpu.mma requires B's rows
   evenly spaced; measured on the H100, bf16 attention D = 128: 9.8 ms
   against 13.5 ms when the pointer came from another lane by two
   shuffles), loads its fragments (pairs of bfloat16 at even offsets: rows
   must start 4-byte aligned) and the warp issues one mma.sync.m16n8k16
   with fp32 accumulation (not volatile: nvcc may schedule it with the
   loads around it). */
#ifdef __CUDACC__
static __device__ inline unsigned otp_bf16x2(const otp_bf16 *p) {
  return *(const unsigned *)p;
}
static __device__ inline void otp_mma_m16n8k16_bf16(float *c_top, float *c_bottom, const otp_bf16 *a_top,
                                                    const otp_bf16 *a_bottom, const otp_bf16 *b_even,
                                                    const otp_bf16 *b_odd, int lane) {
  int g = lane >> 2, t = lane & 3;
  const otp_bf16 *b = b_even + (g - 2 * t) * (b_odd - b_even);
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c_top[0]), "+f"(c_top[1]), "+f"(c_bottom[0]), "+f"(c_bottom[1])
      : "r"(otp_bf16x2(a_top + 2 * t)), "r"(otp_bf16x2(a_bottom + 2 * t)),
        "r"(otp_bf16x2(a_top + 2 * t + 8)), "r"(otp_bf16x2(a_bottom + 2 * t + 8)),
        "r"(otp_bf16x2(b + 2 * t)), "r"(otp_bf16x2(b + 2 * t + 8)));
}
#else
static inline void otp_mma_m16n8k16_bf16(float *c_top, float *c_bottom, const otp_bf16 *a_top,
                                         const otp_bf16 *a_bottom, const otp_bf16 *b_even,
                                         const otp_bf16 *b_odd, int lane) {
  (void)lane;
  for (int n = 0; n < 2; n++) {
    const otp_bf16 *b = n == 0 ? b_even : b_odd;
    for (int k = 0; k < 16; k++) {
      c_top[n] += (float)a_top[k] * (float)b[k];
    }
  }
  for (int n = 0; n < 2; n++) {
    const otp_bf16 *b = n == 0 ? b_even : b_odd;
    for (int k = 0; k < 16; k++) {
      c_bottom[n] += (float)a_bottom[k] * (float)b[k];
    }
  }
}
#endif

/* The same product with B stored k-major (gpu.mma on B[k][n], a tile whose
   rows are the reduction's: V in attention's P V): b_top and b_bottom point
   at B's cells (0, 2t) and (8, 2t), whose distance gives the row stride; the
   lane reads cells (k, 2t) and (k, 2t + 1) of rows 0 to 7 from b_top and 8
   to 15 from b_bottom. In CUDA the warp loads B's fragments with one
   ldmatrix.trans, lane r < 16 naming row r: B must be a shared tile (the
   printer refuses others) whose rows start 16-byte aligned (gpu.mma proves
   the tile's first column a multiple of 8, gpu.pad keeps rows a multiple of
   8 cells); the row's address is reckoned in 32-bit shared-memory bytes
   (H100, bf16 attention D = 128, side by side: 1.229 ms twice against 1.262
   and 1.277 with 64-bit pointers). Measured by hand: 1.19 ms against 1.37
   with four 2-byte loads a lane; with a run-time choice between the two in
   this helper, nvcc left the output tile's registers on the stack. */
#ifdef __CUDACC__
static __device__ inline void otp_mma_m16n8k16_bf16_kn(float *c_top, float *c_bottom, const otp_bf16 *a_top,
                                                       const otp_bf16 *a_bottom, const otp_bf16 *b_top,
                                                       const otp_bf16 *b_bottom, int lane) {
  int t = lane & 3;
  unsigned top = (unsigned)__cvta_generic_to_shared(b_top), bottom = (unsigned)__cvta_generic_to_shared(b_bottom);
  unsigned b0, b1, at = top - 4 * t + (lane & 15) * ((bottom - top) >> 3);
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n" : "=r"(b0), "=r"(b1) : "r"(at));
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c_top[0]), "+f"(c_top[1]), "+f"(c_bottom[0]), "+f"(c_bottom[1])
      : "r"(otp_bf16x2(a_top + 2 * t)), "r"(otp_bf16x2(a_bottom + 2 * t)),
        "r"(otp_bf16x2(a_top + 2 * t + 8)), "r"(otp_bf16x2(a_bottom + 2 * t + 8)), "r"(b0), "r"(b1));
}
#else
static inline void otp_mma_m16n8k16_bf16_kn(float *c_top, float *c_bottom, const otp_bf16 *a_top,
                                            const otp_bf16 *a_bottom, const otp_bf16 *b_top,
                                            const otp_bf16 *b_bottom, int lane) {
  long row = (b_bottom - b_top) / 8;
  (void)lane;
  for (int n = 0; n < 2; n++) {
    for (int k = 0; k < 16; k++) {
      c_top[n] += (float)a_top[k] * (float)(k < 8 ? b_top : b_bottom)[k % 8 * row + n];
    }
  }
  for (int n = 0; n < 2; n++) {
    for (int k = 0; k < 16; k++) {
      c_bottom[n] += (float)a_bottom[k] * (float)(k < 8 ? b_top : b_bottom)[k % 8 * row + n];
    }
  }
}
#endif

/* The same tile product on float A and B (gpu.mma on fp32 operands), with
   the lanes' cells, operands and CPU order of otp_mma_m16n8k16_bf16 (and
   _kn), as three TF32 tensor-core products (the "3xTF32" split that CUTLASS
   calls OpMultiplyAddFastF32 and torch's memory-efficient fp32 attention
   runs on sm80 and later): each operand x is split into big, x rounded to
   tf32 (10 fraction bits, to nearest, ties away from zero: two integer
   operations on its bits), and small = x - big (exact), of which the
   tensor core reads the tf32 part (the 13 low bits dropped); C += small_a
   big_b + big_a small_b + big_a big_b, dropping small_a small_b (at most
   2^-22 |a b|) and what the truncations of small leave of a and b (at most
   2^-21 each). Lossy: gpu.mma declares TF32X3_TOLERANCE. The CPU version
   makes the same split and adds the three products of each k in that
   order, so the CPU build computes with the values the tensor cores get.
   In CUDA a k-slice of 16 is two m16n8k8 halves; lane 4g + t loads cells
   t and t + 4 of each half from A's rows g and g + 8 and from B's row g
   (n-major: reached from rows 2t and 2t + 1 by their distance) or column
   g (k-major: rows t and t + 4 of each half, plain loads: ldmatrix moves
   16-bit cells only). */
#ifdef __CUDACC__
static __device__ inline void otp_tf32_split(float x, unsigned *big, unsigned *small) {
  *big = (__float_as_uint(x) + 0x1000u) & 0xffffe000u;
  *small = __float_as_uint(x - __uint_as_float(*big));
}
static __device__ inline void otp_mma_m16n8k8_tf32(float *c_top, float *c_bottom, const unsigned *a,
                                                   const unsigned *b) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c_top[0]), "+f"(c_top[1]), "+f"(c_bottom[0]), "+f"(c_bottom[1])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
/* One k-half of 8: a_top, a_bottom at its first cell in rows g and g + 8
   of A, b0 and b1 the lane's two cells of B (k = t and t + 4, column g). */
static __device__ inline void otp_mma_k8_tf32x3(float *c_top, float *c_bottom, const float *a_top,
                                                const float *a_bottom, float b0, float b1, int t) {
  unsigned ab[4], as[4], bb[2], bs[2];
  otp_tf32_split(a_top[t], &ab[0], &as[0]);
  otp_tf32_split(a_bottom[t], &ab[1], &as[1]);
  otp_tf32_split(a_top[t + 4], &ab[2], &as[2]);
  otp_tf32_split(a_bottom[t + 4], &ab[3], &as[3]);
  otp_tf32_split(b0, &bb[0], &bs[0]);
  otp_tf32_split(b1, &bb[1], &bs[1]);
  otp_mma_m16n8k8_tf32(c_top, c_bottom, as, bb);
  otp_mma_m16n8k8_tf32(c_top, c_bottom, ab, bs);
  otp_mma_m16n8k8_tf32(c_top, c_bottom, ab, bb);
}
static __device__ inline void otp_mma_m16n8k16_tf32x3(float *c_top, float *c_bottom, const float *a_top,
                                                      const float *a_bottom, const float *b_even,
                                                      const float *b_odd, int lane) {
  int g = lane >> 2, t = lane & 3;
  const float *b = b_even + (g - 2 * t) * (b_odd - b_even);
  otp_mma_k8_tf32x3(c_top, c_bottom, a_top, a_bottom, b[t], b[t + 4], t);
  otp_mma_k8_tf32x3(c_top, c_bottom, a_top + 8, a_bottom + 8, b[t + 8], b[t + 12], t);
}
static __device__ inline void otp_mma_m16n8k16_tf32x3_kn(float *c_top, float *c_bottom, const float *a_top,
                                                         const float *a_bottom, const float *b_top,
                                                         const float *b_bottom, int lane) {
  int g = lane >> 2, t = lane & 3;
  long row = (b_bottom - b_top) >> 3;
  const float *top = b_top + (g - 2 * t), *bottom = b_bottom + (g - 2 * t);
  otp_mma_k8_tf32x3(c_top, c_bottom, a_top, a_bottom, top[t * row], top[(t + 4) * row], t);
  otp_mma_k8_tf32x3(c_top, c_bottom, a_top + 8, a_bottom + 8, bottom[t * row], bottom[(t + 4) * row], t);
}
#else
static inline float otp_to_tf32(float x) {
  union { float f; uint32_t u; } b;
  b.f = x;
  if ((b.u & 0x7fffffffu) < 0x7f800000u) {
    b.u += 0x1000u;
    b.u &= 0xffffe000u;
  }
  return b.f;
}
static inline float otp_tf32_truncated(float x) {
  union { float f; uint32_t u; } b;
  b.f = x;
  b.u &= 0xffffe000u;
  return b.f;
}
static inline void otp_tf32x3_row(float *c, const float *a, const float *b, long stride) {
  for (int k = 0; k < 16; k++) {
    float ab = otp_to_tf32(a[k]), as = otp_tf32_truncated(a[k] - ab);
    float bb = otp_to_tf32(b[k * stride]), bs = otp_tf32_truncated(b[k * stride] - bb);
    *c += as * bb;
    *c += ab * bs;
    *c += ab * bb;
  }
}
static inline void otp_mma_m16n8k16_tf32x3(float *c_top, float *c_bottom, const float *a_top,
                                           const float *a_bottom, const float *b_even, const float *b_odd,
                                           int lane) {
  (void)lane;
  for (int n = 0; n < 2; n++) {
    otp_tf32x3_row(&c_top[n], a_top, n == 0 ? b_even : b_odd, 1);
  }
  for (int n = 0; n < 2; n++) {
    otp_tf32x3_row(&c_bottom[n], a_bottom, n == 0 ? b_even : b_odd, 1);
  }
}
static inline void otp_mma_m16n8k16_tf32x3_kn(float *c_top, float *c_bottom, const float *a_top,
                                              const float *a_bottom, const float *b_top, const float *b_bottom,
                                              int lane) {
  long row = (b_bottom - b_top) / 8;
  (void)lane;
  for (int n = 0; n < 2; n++) {
    otp_tf32x3_row(&c_top[n], a_top, b_top + n, row);
  }
  for (int n = 0; n < 2; n++) {
    otp_tf32x3_row(&c_bottom[n], a_bottom, b_top + n, row);
  }
}
#endif
#endif /* OTP_H */
