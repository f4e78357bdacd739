#ifndef OTP_FAKE_LIMITS_H
#define OTP_FAKE_LIMITS_H
extern const int INT_MAX, INT_MIN, CHAR_BIT, SHRT_MAX, SHRT_MIN, CHAR_MAX, CHAR_MIN, SCHAR_MAX, SCHAR_MIN, UCHAR_MAX;
extern const unsigned UINT_MAX;
extern const long LONG_MAX, LONG_MIN;
extern const unsigned long ULONG_MAX;
#endif
