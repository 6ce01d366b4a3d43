/* Tries a TCP connect and a DNS query over UDP; prints "tcp: open|blocked"
 * and "dns: open|blocked". Argument: host TCP port to try on 127.0.0.1. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static int tcp_ok(const char *ip, int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) return 0;
    struct timeval tv = {2, 0};
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    inet_pton(AF_INET, ip, &a.sin_addr);
    int ok = connect(s, (struct sockaddr *)&a, sizeof a) == 0;
    close(s);
    return ok;
}

static int dns_ok(void) {
    /* A DNS query for example.com to 8.8.8.8 and to 127.0.0.53; any answer = open. */
    static const unsigned char q[] = {0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 3, 'c', 'o', 'm', 0, 0, 1, 0, 1};
    const char *servers[] = {"8.8.8.8", "1.1.1.1"};
    for (int i = 0; i < 2; i++) {
        int s = socket(AF_INET, SOCK_DGRAM, 0);
        if (s < 0) continue;
        struct timeval tv = {2, 0};
        setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        struct sockaddr_in a = {0};
        a.sin_family = AF_INET;
        a.sin_port = htons(53);
        inet_pton(AF_INET, servers[i], &a.sin_addr);
        char buf[512];
        if (sendto(s, q, sizeof q, 0, (struct sockaddr *)&a, sizeof a) == sizeof q && recv(s, buf, sizeof buf, 0) > 0) {
            close(s);
            return 1;
        }
        close(s);
    }
    return 0;
}

int main(int argc, char **argv) {
    int host_port = argc > 1 ? atoi(argv[1]) : 0;
    int tcp = tcp_ok("1.1.1.1", 80) || (host_port && tcp_ok("127.0.0.1", host_port));
    printf("tcp: %s\n", tcp ? "open" : "blocked");
    printf("dns: %s\n", dns_ok() ? "open" : "blocked");
    return 0;
}
