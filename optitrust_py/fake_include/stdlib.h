#ifndef OTP_FAKE_STDLIB_H
#define OTP_FAKE_STDLIB_H
#include <stddef.h>
extern const int RAND_MAX, EXIT_SUCCESS, EXIT_FAILURE;
void *malloc(size_t);
void *calloc(size_t, size_t);
void *realloc(void *, size_t);
void *aligned_alloc(size_t, size_t);
int posix_memalign(void **, size_t, size_t);
void free(void *);
void exit(int);
void abort(void);
int abs(int);
long labs(long);
int atoi(const char *);
long atol(const char *);
double atof(const char *);
long strtol(const char *, char **, int);
double strtod(const char *, char **);
int rand(void);
void srand(unsigned);
void qsort(void *, size_t, size_t, int (*)(const void *, const void *));
char *getenv(const char *);
#endif
