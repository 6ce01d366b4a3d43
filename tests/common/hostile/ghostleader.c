/* ghostleader TARGET NAME: leave the caller at once (a forked child goes
 * on), whose main thread then ends while a second thread keeps making the
 * symlink NAME -> TARGET. /proc shows such a process as a zombie (its
 * thread-group leader's state) while it still runs. */
#include <pthread.h>
#include <unistd.h>

static const char *target, *name;

static void *relink(void *unused) {
    (void)unused;
    for (;;) {
        symlink(target, name);
        usleep(200);
    }
    return 0;
}

int main(int argc, char **argv) {
    pthread_t t;
    if (argc != 3)
        return 2;
    target = argv[1];
    name = argv[2];
    if (fork() != 0)
        return 0;
    pthread_create(&t, 0, relink, 0);
    pthread_exit(0);
}
