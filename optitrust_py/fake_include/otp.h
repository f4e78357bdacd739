#ifndef OTP_FAKE_OTP_H
#define OTP_FAKE_OTP_H
void __requires(const char *); void __ensures(const char *);
void __reads(const char *); void __writes(const char *); void __modifies(const char *);
void __xreads(const char *); void __xwrites(const char *); void __xmodifies(const char *);
void __sreads(const char *); void __smodifies(const char *);
typedef float otp_bf16; float otp_to_bf16(float);
#endif
