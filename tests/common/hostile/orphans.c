/* orphans N: N workers each make orphans as fast as they can (a child
 * that forks a grandchild and exits at once, so every grandchild ends
 * as an orphan the sandbox's init must reap). Runs until killed. */
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 8;
    for (int i = 1; i < n; i++)
        if (fork() == 0)
            break;
    for (;;) {
        pid_t p = fork();
        if (p == 0) {
            fork();
            _exit(0);
        }
        if (p > 0)
            waitpid(p, 0, 0);
    }
}
