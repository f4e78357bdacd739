/* Row-wise RMS normalisation of x[R][C] with weights w[C], into y[R][C]. */

#include <math.h>

void rmsnorm(int R, int C, const float *x, const float *w, float *y) {
  for (int i = 0; i < R; i++) {
    /* sum of squares */
    float ss = 0.0f;
    for (int j = 0; j < C; j++) {
      ss += x[i * C + j] * x[i * C + j];
    }
    ss = ss / C + 1e-5f;
    ss = 1.0f / sqrtf(ss);
    /* normalise and scale */
    for (int j = 0; j < C; j++) {
      y[i * C + j] = w[j] * (ss * x[i * C + j]);
    }
  }
}
