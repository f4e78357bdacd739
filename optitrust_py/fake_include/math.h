#ifndef OTP_FAKE_MATH_H
#define OTP_FAKE_MATH_H
extern const float INFINITY, NAN, HUGE_VALF;
extern const double HUGE_VAL, M_PI, M_E, M_SQRT2;
float expf(float); double exp(double);
float exp2f(float); double exp2(double);
float logf(float); double log(double);
float log2f(float); double log2(double);
float sqrtf(float); double sqrt(double);
float powf(float, float); double pow(double, double);
float sinf(float); double sin(double);
float cosf(float); double cos(double);
float tanf(float); double tan(double);
float tanhf(float); double tanh(double);
float erff(float); double erf(double);
float fabsf(float); double fabs(double);
float floorf(float); double floor(double);
float ceilf(float); double ceil(double);
float roundf(float); double round(double);
float fmaxf(float, float); double fmax(double, double);
float fminf(float, float); double fmin(double, double);
float fmaf(float, float, float); double fma(double, double, double);
float fmodf(float, float); double fmod(double, double);
long lroundf(float); long lround(double);
int isnan(double); int isinf(double); int isfinite(double);
#endif
