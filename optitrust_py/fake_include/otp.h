#ifndef OTP_FAKE_OTP_H
#define OTP_FAKE_OTP_H
void __requires(const char *); void __ensures(const char *);
void __reads(const char *); void __writes(const char *); void __modifies(const char *);
void __xreads(const char *); void __xwrites(const char *); void __xmodifies(const char *);
void __sreads(const char *); void __smodifies(const char *);
typedef float otp_bf16; float otp_to_bf16(float); float otp_fast_expf(float); float otp_fast_div(float, float);
void otp_mma_m16n8k16_bf16(float *, float *, const otp_bf16 *, const otp_bf16 *, const otp_bf16 *, const otp_bf16 *,
                           int);
#endif
