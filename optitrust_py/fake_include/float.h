#ifndef OTP_FAKE_FLOAT_H
#define OTP_FAKE_FLOAT_H
extern const float FLT_MAX, FLT_MIN, FLT_EPSILON;
extern const double DBL_MAX, DBL_MIN, DBL_EPSILON;
#endif
