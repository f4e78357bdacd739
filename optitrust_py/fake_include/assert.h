#ifndef OTP_FAKE_ASSERT_H
#define OTP_FAKE_ASSERT_H
void assert(int);
#endif
