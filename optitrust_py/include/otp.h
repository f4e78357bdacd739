/* otp contract clauses for real builds.

   otp reads function and loop contracts written as calls at the top of a
   body, e.g.  __reads("q ~> Matrix3(H, S, D)");  When the code is compiled
   (gcc -I <otp package>/include), every clause expands to nothing, so the
   statement becomes the empty statement `;` and costs nothing. */
#ifndef OTP_H
#define OTP_H

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

#endif /* OTP_H */
