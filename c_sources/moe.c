/* Top-k mixture-of-experts SwiGLU FFN.
   x, out [T][dim]; router wr [E][dim];
   w1, w3 [E][hidden][dim]; w2 [E][dim][hidden].
   Per token: pick the K experts of largest router logits (ties to the lower
   index; best is always an expert's number, replaced while it is a used
   one), softmax over them, sum the weighted w2_e (silu(w1_e x) * (w3_e x)). */

#include <math.h>
#include <stdlib.h>

void moe(int T, int dim, int hidden, int E, int K, const float *x,
         const float *wr, const float *w1, const float *w2, const float *w3,
         float *out) {
  float *logits = malloc(E * sizeof(float));
  int *used = malloc(E * sizeof(int));
  int *sel = malloc(K * sizeof(int));
  float *wsel = malloc(K * sizeof(float));
  float *hb = malloc(hidden * sizeof(float));
  float *hb2 = malloc(hidden * sizeof(float));

  for (int t = 0; t < T; t++) {
    /* router logits */
    for (int e = 0; e < E; e++) {
      logits[e] = 0.0f;
      for (int j = 0; j < dim; j++) {
        logits[e] += wr[e * dim + j] * x[t * dim + j];
      }
    }

    /* top-K selection */
    for (int e = 0; e < E; e++) {
      used[e] = 0;
    }
    for (int s = 0; s < K; s++) {
      int best = 0;
      for (int e = 0; e < E; e++) {
        if (used[e] == 0 && (used[best] != 0 || logits[e] > logits[best])) {
          best = e;
        }
      }
      sel[s] = best;
      used[best] = 1;
      wsel[s] = logits[best];
    }

    /* softmax over the selected logits */
    float max_val = wsel[0];
    for (int s = 1; s < K; s++) {
      if (wsel[s] > max_val) {
        max_val = wsel[s];
      }
    }
    float sum = 0.0f;
    for (int s = 0; s < K; s++) {
      wsel[s] = expf(wsel[s] - max_val);
      sum += wsel[s];
    }
    for (int s = 0; s < K; s++) {
      wsel[s] = wsel[s] / sum;
    }

    /* weighted sum of the selected experts */
    for (int i = 0; i < dim; i++) {
      out[t * dim + i] = 0.0f;
    }
    for (int s = 0; s < K; s++) {
      int e = sel[s];
      for (int i = 0; i < hidden; i++) {
        hb[i] = 0.0f;
        hb2[i] = 0.0f;
        for (int j = 0; j < dim; j++) {
          hb[i] += w1[(e * hidden + i) * dim + j] * x[t * dim + j];
          hb2[i] += w3[(e * hidden + i) * dim + j] * x[t * dim + j];
        }
      }
      for (int i = 0; i < hidden; i++) {
        float val = hb[i];
        val = val * (1.0f / (1.0f + expf(-val)));
        hb[i] = val * hb2[i];
      }
      for (int i = 0; i < dim; i++) {
        float acc = 0.0f;
        for (int j = 0; j < hidden; j++) {
          acc += w2[(e * dim + i) * hidden + j] * hb[j];
        }
        out[t * dim + i] += wsel[s] * acc;
      }
    }
  }

  free(logits);
  free(used);
  free(sel);
  free(wsel);
  free(hb);
  free(hb2);
}
