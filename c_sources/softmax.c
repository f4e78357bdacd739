/* Row-wise softmax of x[R][C] into y[R][C]. */

#include <math.h>

void softmax(int R, int C, const float *x, float *y) {
  for (int i = 0; i < R; i++) {
    /* max of the row */
    float max_val = x[i * C];
    for (int j = 1; j < C; j++) {
      if (x[i * C + j] > max_val) {
        max_val = x[i * C + j];
      }
    }
    /* exp and sum */
    float sum = 0.0f;
    for (int j = 0; j < C; j++) {
      y[i * C + j] = expf(x[i * C + j] - max_val);
      sum += y[i * C + j];
    }
    /* normalise */
    for (int j = 0; j < C; j++) {
      y[i * C + j] = y[i * C + j] / sum;
    }
  }
}
