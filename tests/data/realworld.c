/* Real-world C the front end must carry through unchanged in meaning. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LEN 16
#define SQUARE(x) ((x) * (x))

typedef struct {
  int n;
  float *data;
} Vec;

typedef enum { MODE_SUM, MODE_MAX = 3 } Mode;

struct node {
  struct node *next;
  int value;
};

static const float weights[4] = {0.5f, -1.0f, 2.0f, 0.25f};
static int counter = 0;

static inline float clampf(float x, float lo, float hi) {
  return x < lo ? lo : x > hi ? hi : x;
}

static float reduce(const Vec *v, Mode mode) {
  float acc = mode == MODE_SUM ? 0.0f : -INFINITY;
  const float *p = v->data;
  const float *end = v->data + v->n;
  while (p < end) {
    if (mode == MODE_SUM) {
      acc += *p++;
    } else {
      acc = *p > acc ? *p : acc;
      p++;
    }
  }
  return acc;
}

static int list_sum(const struct node *head) {
  int s = 0;
  for (const struct node *it = head; it != NULL; it = it->next) {
    s += it->value;
  }
  return s;
}

static int find_first(const int *a, int n, int key) {
  for (int i = 0; i < n; i++) {
    if (a[i] == key) {
      return i;
    }
  }
  return -1;
}

uint32_t checksum(const uint8_t *bytes, size_t n) {
  uint32_t h = 2166136261u;
  size_t i = 0;
  do {
    h ^= bytes[i];
    h *= 16777619u;
    i++;
  } while (i < n);
  return h;
}

int main(void) {
  float buf[LEN];
  Vec v = {LEN, buf};
  #pragma omp simd
  for (int i = 0; i < LEN; i++) {
    buf[i] = clampf(sinf((float)i) * 3.0f, -2.0f, 2.0f) * weights[i % 4];
  }
  float copy[LEN];
  memcpy(copy, buf, sizeof(buf));
  struct node nodes[5];
  for (int i = 0; i < 5; i++) {
    nodes[i].value = SQUARE(i) - counter++;
    nodes[i].next = i + 1 < 5 ? &nodes[i + 1] : NULL;
  }
  int keys[6] = {4, 8, 15, 16, 23, 42};
  int idx = find_first(keys, 6, 16) + find_first(keys, 6, 99);
  int sw = 0;
  switch (idx) {
    case 2:
      sw = 1;
      break;
    default:
      sw = 2;
  }
  Vec *pv = &v;
  pv->n -= 2;
  uint8_t *raw = malloc(LEN * sizeof(float));
  memcpy(raw, copy, LEN * sizeof(float));
  printf("%.6f %.6f %d %d %d %u\n", reduce(&v, MODE_SUM), reduce(pv, MODE_MAX), list_sum(&nodes[0]), idx, sw,
         (unsigned)checksum(raw, LEN * sizeof(float)));
  free(raw);
  return 0;
}
