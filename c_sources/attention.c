/* Multi-head causal self-attention over a whole sequence.
   q, k, v, out are laid out [H][S][D]. */

#include <math.h>
#include <stdlib.h>

void attention(int H, int S, int D, const float *q, const float *k,
               const float *v, float *out) {
  float *scores = malloc(S * sizeof(float));
  for (int h = 0; h < H; h++) {
    for (int i = 0; i < S; i++) {
      /* scores of query i against keys 0..i */
      for (int j = 0; j <= i; j++) {
        float s = 0.0f;
        for (int d = 0; d < D; d++) {
          s += q[(h * S + i) * D + d] * k[(h * S + j) * D + d];
        }
        scores[j] = s / sqrtf(D);
      }
      /* pass 1: max */
      float max_val = -INFINITY;
      for (int j = 0; j <= i; j++) {
        if (scores[j] > max_val) {
          max_val = scores[j];
        }
      }
      /* pass 2: exp and sum */
      float sum = 0.0f;
      for (int j = 0; j <= i; j++) {
        scores[j] = expf(scores[j] - max_val);
        sum += scores[j];
      }
      for (int j = 0; j <= i; j++) {
        scores[j] = scores[j] / sum;
      }
      /* pass 3: weighted sum of V */
      for (int d = 0; d < D; d++) {
        out[(h * S + i) * D + d] = 0.0f;
      }
      for (int j = 0; j <= i; j++) {
        for (int d = 0; d < D; d++) {
          out[(h * S + i) * D + d] += scores[j] * v[(h * S + j) * D + d];
        }
      }
    }
  }
  free(scores);
}
