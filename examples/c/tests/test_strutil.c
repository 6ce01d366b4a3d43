/* Test driver for lab 3: `./test_strutil CASE` runs one case and exits 0
 * when it passes. One process per case, so a crash fails only that case. */
#include <stdio.h>
#include <string.h>

#include "strutil.h"

static int check_int(const char *what, long got, long want)
{
    if (got == want)
        return 0;
    printf("%s: expected %ld, got %ld\n", what, want, got);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s CASE\n", argv[0]);
        return 2;
    }
    const char *c = argv[1];
    if (strcmp(c, "length") == 0)
        return check_int("su_length(\"hello\")", (long)su_length("hello"), 5)
            | check_int("su_length(\"\")", (long)su_length(""), 0);
    if (strcmp(c, "reverse") == 0) {
        char s[] = "labgrader";
        su_reverse(s);
        if (strcmp(s, "redargbal") != 0) {
            printf("su_reverse(\"labgrader\"): expected \"redargbal\", got \"%s\"\n", s);
            return 1;
        }
        return 0;
    }
    if (strcmp(c, "count_char") == 0)
        return check_int("su_count_char(\"banana\", 'a')", su_count_char("banana", 'a'), 3);
    if (strcmp(c, "palindrome") == 0)
        return check_int("su_is_palindrome(\"Racecar\")", su_is_palindrome("Racecar"), 1)
            | check_int("su_is_palindrome(\"abca\")", su_is_palindrome("abca"), 0);
    if (strcmp(c, "count_words") == 0)
        return check_int("su_count_words(\"  two\\twords \")", su_count_words("  two\twords "), 2);
    if (strcmp(c, "hidden_long") == 0) {
        static char big[1 << 20];
        memset(big, 'x', sizeof big - 1);
        return check_int("su_length(1 MiB)", (long)su_length(big), (long)sizeof big - 1);
    }
    fprintf(stderr, "unknown case %s\n", c);
    return 2;
}
