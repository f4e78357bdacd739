#ifndef OTP_FAKE_FLOAT_H
#define OTP_FAKE_FLOAT_H
extern const float FLT_MAX, FLT_MIN, FLT_EPSILON;
extern const double DBL_MAX, DBL_MIN, DBL_EPSILON;
/* gcc's half-precision type is a keyword; the parser learns it as a type name
   (typed as float, which it converts to and from). */
typedef float _Float16;
#endif
