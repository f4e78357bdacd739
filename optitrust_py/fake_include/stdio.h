#ifndef OTP_FAKE_STDIO_H
#define OTP_FAKE_STDIO_H
#include <stddef.h>
typedef struct _otp_FILE FILE;
extern FILE *stdin, *stdout, *stderr;
extern const int EOF;
int printf(const char *, ...);
int fprintf(FILE *, const char *, ...);
int sprintf(char *, const char *, ...);
int snprintf(char *, size_t, const char *, ...);
int scanf(const char *, ...);
int sscanf(const char *, const char *, ...);
int puts(const char *);
int putchar(int);
int getchar(void);
FILE *fopen(const char *, const char *);
int fclose(FILE *);
size_t fread(void *, size_t, size_t, FILE *);
size_t fwrite(const void *, size_t, size_t, FILE *);
int fflush(FILE *);
int fputs(const char *, FILE *);
char *fgets(char *, int, FILE *);
int fgetc(FILE *);
int fputc(int, FILE *);
int fseek(FILE *, long, int);
long ftell(FILE *);
void perror(const char *);
#endif
