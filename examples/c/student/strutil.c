/* Lab 3: string utilities in C. The interface is in strutil.h (provided
 * by the course's tests; keep your copy identical).
 *
 * TODO: is_palindrome must ignore case, and count_words is not written.
 */
#include <stddef.h>

#include "strutil.h"

size_t su_length(const char *s)
{
    size_t n = 0;
    while (s[n] != '\0')
        n++;
    return n;
}

void su_reverse(char *s)
{
    size_t n = su_length(s);
    for (size_t i = 0; i < n / 2; i++) {
        char t = s[i];
        s[i] = s[n - 1 - i];
        s[n - 1 - i] = t;
    }
}

int su_count_char(const char *s, char c)
{
    int k = 0;
    for (; *s; s++)
        if (*s == c)
            k++;
    return k;
}

int su_is_palindrome(const char *s)
{
    size_t n = su_length(s);
    for (size_t i = 0; i < n / 2; i++)
        if (s[i] != s[n - 1 - i])
            return 0;
    return 1;
}

int su_count_words(const char *s)
{
    (void)s;
    return -1;
}
