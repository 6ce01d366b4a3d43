/* Lab 3 reference solution (staff only; not part of the starter). */
#include <ctype.h>
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
        if (tolower((unsigned char)s[i]) != tolower((unsigned char)s[n - 1 - i]))
            return 0;
    return 1;
}

int su_count_words(const char *s)
{
    int words = 0, in_word = 0;
    for (; *s; s++) {
        int space = *s == ' ' || *s == '\t' || *s == '\n';
        if (!space && !in_word)
            words++;
        in_word = !space;
    }
    return words;
}
