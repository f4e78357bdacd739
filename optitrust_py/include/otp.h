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

#endif /* OTP_H */
