/* otp fake header: declarations only, so pycparser can parse user code.
   Standard macros are declared as identifiers so they print back unexpanded. */
#ifndef OTP_FAKE_STDDEF_H
#define OTP_FAKE_STDDEF_H
typedef unsigned long size_t;
typedef long ptrdiff_t;
typedef int wchar_t;
extern void *NULL;
#endif
