/* Lab 3 interface. This file comes from the tests' public/ directory and
 * replaces any copy in the student's repository. */
#ifndef STRUTIL_H
#define STRUTIL_H

#include <stddef.h>

/* Number of bytes before the terminating NUL (like strlen). */
size_t su_length(const char *s);
/* Reverse s in place. */
void su_reverse(char *s);
/* How often c occurs in s. */
int su_count_char(const char *s, char c);
/* 1 if s reads the same backwards, ignoring ASCII case; else 0. */
int su_is_palindrome(const char *s);
/* Number of words: maximal runs of characters other than ' ', '\t', '\n'. */
int su_count_words(const char *s);

#endif
