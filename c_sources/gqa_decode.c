/* One decode step of grouped-query attention.
   q is [H][D], k_new and v_new are [KVH][D], the caches are [KVH][SMAX][D],
   out is [H][D]. Query head h uses kv head h / (H / KVH). */

#include <math.h>
#include <stdlib.h>

void gqa_decode(int H, int KVH, int D, int SMAX, int pos, const float *q,
                const float *k_new, const float *v_new, float *k_cache,
                float *v_cache, float *out) {
  /* append the new key and value at position pos */
  for (int g = 0; g < KVH; g++) {
    for (int d = 0; d < D; d++) {
      k_cache[(g * SMAX + pos) * D + d] = k_new[g * D + d];
      v_cache[(g * SMAX + pos) * D + d] = v_new[g * D + d];
    }
  }

  float *scores = malloc((pos + 1) * sizeof(float));
  for (int h = 0; h < H; h++) {
    int g = h / (H / KVH);
    /* scores against positions 0..pos */
    for (int t = 0; t <= pos; t++) {
      float s = 0.0f;
      for (int d = 0; d < D; d++) {
        s += q[h * D + d] * k_cache[(g * SMAX + t) * D + d];
      }
      scores[t] = s / sqrtf(D);
    }
    /* softmax */
    float max_val = -INFINITY;
    for (int t = 0; t <= pos; t++) {
      if (scores[t] > max_val) {
        max_val = scores[t];
      }
    }
    float sum = 0.0f;
    for (int t = 0; t <= pos; t++) {
      scores[t] = expf(scores[t] - max_val);
      sum += scores[t];
    }
    for (int t = 0; t <= pos; t++) {
      scores[t] = scores[t] / sum;
    }
    /* weighted sum of V */
    for (int d = 0; d < D; d++) {
      out[h * D + d] = 0.0f;
    }
    for (int t = 0; t <= pos; t++) {
      for (int d = 0; d < D; d++) {
        out[h * D + d] += scores[t] * v_cache[(g * SMAX + t) * D + d];
      }
    }
  }
  free(scores);
}
