/* matmul with an 8x32 register block of C held in a local array, as the
   matrix and loop transformations leave it before vectorization. */
#include <stdlib.h>

void matmul(int M, int N, int K, const float *A, const float *B, float *C) {
  for (int i = 0; i < M; i++) {
    for (int j = 0; j < N; j++) {
      C[i * N + j] = 0.0f;
    }
  }
  for (int bi = 0; bi < M; bi += 8) {
    for (int bj = 0; bj < N; bj += 32) {
      float acc[8][32];
      for (int ii = 0; ii < 8; ii++) {
        for (int jj = 0; jj < 32; jj++) {
          acc[ii][jj] = C[(bi + ii) * N + bj + jj];
        }
      }
      for (int k = 0; k < K; k++) {
        for (int ii = 0; ii < 8; ii++) {
          for (int jj = 0; jj < 32; jj++) {
            acc[ii][jj] += A[(bi + ii) * K + k] * B[k * N + bj + jj];
          }
        }
      }
      for (int ii = 0; ii < 8; ii++) {
        for (int jj = 0; jj < 32; jj++) {
          C[(bi + ii) * N + bj + jj] = acc[ii][jj];
        }
      }
    }
  }
}
