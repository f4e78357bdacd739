/* Naive matrix-vector product: y[D] = W[D][N] * x[N], W row-major. */

void matvec(int N, int D, const float *W, const float *x, float *y) {
  for (int i = 0; i < D; i++) {
    y[i] = 0.0f;
    for (int j = 0; j < N; j++) {
      y[i] += W[i * N + j] * x[j];
    }
  }
}
