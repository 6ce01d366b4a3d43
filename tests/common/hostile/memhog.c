/* Allocates and touches 1 GiB in 16 MiB steps, printing progress. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(void) {
    size_t step = 16u << 20, total = 0;
    while (total < (1u << 30)) {
        char *p = malloc(step);
        if (!p) { printf("malloc failed at %zu MiB\n", total >> 20); return 3; }
        memset(p, 1, step);
        total += step;
        printf("touched %zu MiB\n", total >> 20);
        fflush(stdout);
    }
    printf("allocated 1 GiB without being stopped\n");
    return 0;
}
