#ifndef OTP_FAKE_TIME_H
#define OTP_FAKE_TIME_H
typedef long time_t;
typedef long clock_t;
struct timespec { time_t tv_sec; long tv_nsec; };
extern const int CLOCK_MONOTONIC, CLOCK_REALTIME;
extern const long CLOCKS_PER_SEC;
int clock_gettime(int, struct timespec *);
clock_t clock(void);
time_t time(time_t *);
#endif
