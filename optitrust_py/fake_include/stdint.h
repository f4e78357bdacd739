#ifndef OTP_FAKE_STDINT_H
#define OTP_FAKE_STDINT_H
typedef signed char int8_t;
typedef short int16_t;
typedef int int32_t;
typedef long int64_t;
typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long uint64_t;
typedef long intptr_t;
typedef unsigned long uintptr_t;
typedef long intmax_t;
typedef unsigned long uintmax_t;
extern const int INT8_MIN, INT8_MAX, INT16_MIN, INT16_MAX, INT32_MIN, INT32_MAX, UINT8_MAX, UINT16_MAX;
extern const long INT64_MIN, INT64_MAX;
extern const unsigned UINT32_MAX;
extern const unsigned long UINT64_MAX, SIZE_MAX;
#endif
