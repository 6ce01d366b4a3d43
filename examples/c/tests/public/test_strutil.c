/* Test driver for lab 3: `./test_strutil CASE` runs one case and prints
 * what the functions returned, on one line. It is public (students may
 * build and run it), and it decides nothing: the harness compares the line
 * with the expected one, which only the harness can read. One process per
 * case, so a crash fails only that case. */
#include <stdio.h>
#include <string.h>

#include "strutil.h"

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s CASE\n", argv[0]);
        return 2;
    }
    const char *c = argv[1];
    if (strcmp(c, "length") == 0) {
        printf("%zu %zu\n", su_length("hello"), su_length(""));
    } else if (strcmp(c, "reverse") == 0) {
        char s[] = "labgrader";
        su_reverse(s);
        printf("%s\n", s);
    } else if (strcmp(c, "count_char") == 0) {
        printf("%d\n", su_count_char("banana", 'a'));
    } else if (strcmp(c, "palindrome") == 0) {
        printf("%d %d\n", su_is_palindrome("Racecar"), su_is_palindrome("abca"));
    } else if (strcmp(c, "count_words") == 0) {
        printf("%d\n", su_count_words("  two\twords "));
    } else if (strcmp(c, "long_string") == 0) {
        static char big[1 << 20];
        memset(big, 'x', sizeof big - 1);
        printf("%zu\n", su_length(big));
    } else {
        fprintf(stderr, "unknown case %s\n", c);
        return 2;
    }
    return 0;
}
