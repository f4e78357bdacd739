/* Group-quantized matrix-vector product, written the straightforward way
   (as llama2.c's runq.c does): y[D] = W[D][N] * x[N], W row-major, with W
   and x in int8 groups of GS values that share one float scale (Q8_0).

   quantize_q8 turns R rows of C floats into int8 values and one scale per
   group, scale = max |v| / 127, value = round(v / scale). matvec_q8 takes
   W already quantized (done once, when the weights are loaded), quantizes
   x on the fly, sums each group's products in int32 and scales the sum
   once per group; rows are shared between threads. matvec does both steps
   for a float W. N must be a multiple of GS (specs/matvec_q8.spec). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define GS 32

void quantize_q8(int R, int C, const float *src, int8_t *q, float *s) {
  for (int r = 0; r < R; r++) {
    for (int g = 0; g < C / GS; g++) {
      const float *v = src + r * C + g * GS;
      float vmax = 0.0f;
      for (int k = 0; k < GS; k++) {
        float a = fabsf(v[k]);
        if (a > vmax) {
          vmax = a;
        }
      }
      float scale = vmax / 127.0f;
      s[r * (C / GS) + g] = scale;
      for (int k = 0; k < GS; k++) {
        float scaled = scale > 0.0f ? v[k] / scale : 0.0f;
        q[r * C + g * GS + k] = (int8_t)roundf(scaled);
      }
    }
  }
}

void matvec_q8(int N, int D, const int8_t *Wq, const float *Ws, const float *x, float *y) {
  int8_t *xq = malloc(N * sizeof(int8_t));
  float *xs = malloc(N / GS * sizeof(float));
  quantize_q8(1, N, x, xq, xs);
#pragma omp parallel for
  for (int i = 0; i < D; i++) {
    const int8_t *row = Wq + i * N;
    float sum = 0.0f;
    for (int g = 0; g < N / GS; g++) {
      int32_t dot = 0;
      for (int k = 0; k < GS; k++) {
        dot += (int32_t)row[g * GS + k] * (int32_t)xq[g * GS + k];
      }
      sum += (float)dot * Ws[i * (N / GS) + g] * xs[g];
    }
    y[i] = sum;
  }
  free(xq);
  free(xs);
}

void matvec(int N, int D, const float *W, const float *x, float *y) {
  int8_t *Wq = malloc((size_t)D * N * sizeof(int8_t));
  float *Ws = malloc((size_t)D * (N / GS) * sizeof(float));
  quantize_q8(D, N, W, Wq, Ws);
  matvec_q8(N, D, Wq, Ws, x, y);
  free(Wq);
  free(Ws);
}
