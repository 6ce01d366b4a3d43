/* smallhog KIB: touch KIB KiB of memory, then sleep until killed. Many
 * of them, each smaller than the sandbox's init, leave the init the
 * largest process of the job's memory cgroup: the OOM killer's choice. */
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    size_t kib = argc > 1 ? strtoul(argv[1], 0, 10) : 1024;
    volatile char *p = malloc(kib << 10);
    if (!p)
        return 3;
    for (size_t i = 0; i < kib << 10; i += 4096)
        p[i] = 1;
    for (;;)
        pause();
}
