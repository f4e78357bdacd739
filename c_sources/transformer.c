/* Llama-style transformer layer stack (after Karpathy's llama2.c forward,
   without embedding table and final classifier).
   Weights:  rms_att_w, rms_ffn_w [L][dim]; wq, wo [L][dim][dim];
             wk, wv [L][kv_dim][dim]; w1, w3 [L][hidden][dim]; w2 [L][dim][hidden]
   Caches:   k_cache, v_cache [L][SMAX][kv_dim], with kv_dim = dim * KVH / H. */

#include <math.h>
#include <stdlib.h>

/* o[n] = w * (x / rms(x)) */
void rmsnorm_vec(int n, const float *x, const float *w, float *o) {
  float ss = 0.0f;
  for (int j = 0; j < n; j++) {
    ss += x[j] * x[j];
  }
  ss = ss / n + 1e-5f;
  ss = 1.0f / sqrtf(ss);
  for (int j = 0; j < n; j++) {
    o[j] = w[j] * (ss * x[j]);
  }
}

/* y[d] = W[d][n] * x[n], W row-major */
void matvec(int n, int d, const float *W, const float *x, float *y) {
  for (int i = 0; i < d; i++) {
    y[i] = 0.0f;
    for (int j = 0; j < n; j++) {
      y[i] += W[i * n + j] * x[j];
    }
  }
}

/* in-place softmax of x[n] */
void softmax_vec(int n, float *x) {
  float max_val = x[0];
  for (int i = 1; i < n; i++) {
    if (x[i] > max_val) {
      max_val = x[i];
    }
  }
  float sum = 0.0f;
  for (int i = 0; i < n; i++) {
    x[i] = expf(x[i] - max_val);
    sum += x[i];
  }
  for (int i = 0; i < n; i++) {
    x[i] = x[i] / sum;
  }
}

/* One token at position pos; x[dim] is the residual stream, updated in place. */
void transformer_token(int L, int dim, int hidden, int H, int KVH, int SMAX,
                       int pos, const float *rms_att_w, const float *wq,
                       const float *wk, const float *wv, const float *wo,
                       const float *rms_ffn_w, const float *w1,
                       const float *w2, const float *w3, float *x,
                       float *k_cache, float *v_cache) {
  int head_size = dim / H;
  int kv_dim = dim * KVH / H;
  int kv_mul = H / KVH;

  float *xb = malloc(dim * sizeof(float));
  float *xb2 = malloc(dim * sizeof(float));
  float *q = malloc(dim * sizeof(float));
  float *k = malloc(kv_dim * sizeof(float));
  float *v = malloc(kv_dim * sizeof(float));
  float *att = malloc((pos + 1) * sizeof(float));
  float *hb = malloc(hidden * sizeof(float));
  float *hb2 = malloc(hidden * sizeof(float));

  for (int l = 0; l < L; l++) {
    /* attention rmsnorm */
    rmsnorm_vec(dim, x, &rms_att_w[l * dim], xb);

    /* q, k, v projections */
    matvec(dim, dim, &wq[l * dim * dim], xb, q);
    matvec(dim, kv_dim, &wk[l * kv_dim * dim], xb, k);
    matvec(dim, kv_dim, &wv[l * kv_dim * dim], xb, v);

    /* RoPE: rotate pairs (i, i+1) of q and k */
    for (int i = 0; i < dim; i += 2) {
      float freq = 1.0f / powf(10000.0f, (i % head_size) / (float)head_size);
      float val = pos * freq;
      float fcr = cosf(val);
      float fci = sinf(val);
      float q0 = q[i];
      float q1 = q[i + 1];
      q[i] = q0 * fcr - q1 * fci;
      q[i + 1] = q0 * fci + q1 * fcr;
    }
    for (int i = 0; i < kv_dim; i += 2) {
      float freq = 1.0f / powf(10000.0f, (i % head_size) / (float)head_size);
      float val = pos * freq;
      float fcr = cosf(val);
      float fci = sinf(val);
      float k0 = k[i];
      float k1 = k[i + 1];
      k[i] = k0 * fcr - k1 * fci;
      k[i + 1] = k0 * fci + k1 * fcr;
    }

    /* store k and v in the caches at position pos */
    for (int i = 0; i < kv_dim; i++) {
      k_cache[(l * SMAX + pos) * kv_dim + i] = k[i];
      v_cache[(l * SMAX + pos) * kv_dim + i] = v[i];
    }

    /* multi-head attention over positions 0..pos (grouped-query) */
    for (int h = 0; h < H; h++) {
      int g = h / kv_mul;
      for (int t = 0; t <= pos; t++) {
        float score = 0.0f;
        for (int i = 0; i < head_size; i++) {
          score += q[h * head_size + i] *
                   k_cache[(l * SMAX + t) * kv_dim + g * head_size + i];
        }
        att[t] = score / sqrtf(head_size);
      }
      softmax_vec(pos + 1, att);
      for (int i = 0; i < head_size; i++) {
        xb[h * head_size + i] = 0.0f;
      }
      for (int t = 0; t <= pos; t++) {
        for (int i = 0; i < head_size; i++) {
          xb[h * head_size + i] +=
              att[t] * v_cache[(l * SMAX + t) * kv_dim + g * head_size + i];
        }
      }
    }

    /* output projection and residual */
    matvec(dim, dim, &wo[l * dim * dim], xb, xb2);
    for (int i = 0; i < dim; i++) {
      x[i] += xb2[i];
    }

    /* ffn rmsnorm */
    rmsnorm_vec(dim, x, &rms_ffn_w[l * dim], xb);

    /* SwiGLU: w2 (silu(w1 x) * (w3 x)) */
    matvec(dim, hidden, &w1[l * hidden * dim], xb, hb);
    matvec(dim, hidden, &w3[l * hidden * dim], xb, hb2);
    for (int i = 0; i < hidden; i++) {
      float val = hb[i];
      val = val * (1.0f / (1.0f + expf(-val)));
      hb[i] = val * hb2[i];
    }
    matvec(hidden, dim, &w2[l * dim * hidden], hb, xb);

    /* residual */
    for (int i = 0; i < dim; i++) {
      x[i] += xb[i];
    }
  }

  free(xb);
  free(xb2);
  free(q);
  free(k);
  free(v);
  free(att);
  free(hb);
  free(hb2);
}

/* Prompt prefill: xs[T][dim] holds the prompt's embeddings, updated in place;
   token t is processed at position t. */
void transformer_prefill(int T, int L, int dim, int hidden, int H, int KVH,
                         int SMAX, const float *rms_att_w, const float *wq,
                         const float *wk, const float *wv, const float *wo,
                         const float *rms_ffn_w, const float *w1,
                         const float *w2, const float *w3, float *xs,
                         float *k_cache, float *v_cache) {
  for (int t = 0; t < T; t++) {
    transformer_token(L, dim, hidden, H, KVH, SMAX, t, rms_att_w, wq, wk, wv,
                      wo, rms_ffn_w, w1, w2, w3, &xs[t * dim], k_cache,
                      v_cache);
  }
}
