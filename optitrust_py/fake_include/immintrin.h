#ifndef OTP_FAKE_IMMINTRIN_H
#define OTP_FAKE_IMMINTRIN_H
/* The x86 vector types and the intrinsics otp emits, declared for otp's
   parser and type inference only; gcc compiles against the real header. */
typedef struct { float lane[16]; } __m512;
typedef struct { float lane[8]; } __m256;
__m512 _mm512_loadu_ps(const void *); void _mm512_storeu_ps(void *, __m512);
__m512 _mm512_set1_ps(float); __m512 _mm512_setzero_ps(void);
__m512 _mm512_add_ps(__m512, __m512); __m512 _mm512_sub_ps(__m512, __m512);
__m512 _mm512_mul_ps(__m512, __m512); __m512 _mm512_div_ps(__m512, __m512);
__m512 _mm512_fmadd_ps(__m512, __m512, __m512); __m512 _mm512_fnmadd_ps(__m512, __m512, __m512);
__m512 _mm512_max_ps(__m512, __m512); __m512 _mm512_min_ps(__m512, __m512);
float _mm512_reduce_add_ps(__m512); float _mm512_reduce_max_ps(__m512);
__m512 _mm512_roundscale_ps(__m512, int); __m512 _mm512_scalef_ps(__m512, __m512);
__m256 _mm256_loadu_ps(const float *); void _mm256_storeu_ps(float *, __m256);
__m256 _mm256_set1_ps(float); __m256 _mm256_setzero_ps(void);
__m256 _mm256_add_ps(__m256, __m256); __m256 _mm256_sub_ps(__m256, __m256);
__m256 _mm256_mul_ps(__m256, __m256); __m256 _mm256_div_ps(__m256, __m256);
__m256 _mm256_fmadd_ps(__m256, __m256, __m256);
__m256 _mm256_max_ps(__m256, __m256); __m256 _mm256_min_ps(__m256, __m256);
void _mm512_stream_ps(void *, __m512); void _mm256_stream_ps(float *, __m256); void _mm_sfence(void);
typedef struct { long long lane[8]; } __m512i;
typedef struct { long long lane[4]; } __m256i;
__m256i _mm256_loadu_si256(const __m256i *); __m512i _mm512_setzero_si512(void);
__m512i _mm512_cvtepi8_epi16(__m256i); __m512i _mm512_dpwssd_epi32(__m512i, __m512i, __m512i);
__m512 _mm512_cvtepi32_ps(__m512i);
int __builtin_cpu_supports(const char *);
#endif
