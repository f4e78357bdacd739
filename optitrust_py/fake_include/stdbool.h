#ifndef OTP_FAKE_STDBOOL_H
#define OTP_FAKE_STDBOOL_H
typedef _Bool bool;
extern const int true, false;
#endif
