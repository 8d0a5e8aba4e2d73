/* Limits (SPEC §4.6): wall clock, output, memory, open files, file size. */
#include "common.h"

#include <signal.h>

static int cmd_spin(int argc, char **argv)
{
    (void)argc, (void)argv;
    printf("INFO spinning\n");
    volatile unsigned long x = 0;
    for (;;)
        x++;
    return 0;
}

/* flood: write to stdout for ever. */
static int cmd_flood(int argc, char **argv)
{
    (void)argc, (void)argv;
    static char buf[65536];
    memset(buf, 'A', sizeof buf);
    for (;;)
        if (write(1, buf, sizeof buf) < 0)
            return 1;
    return 0;
}

/* memhog MIB: allocate and touch MIB MiB, one MiB at a time. */
static int cmd_memhog(int argc, char **argv)
{
    long mib = argc > 1 ? (long)parse_ul(argv[1]) : 1024;
    long done = 0;
    for (; done < mib; done++) {
        char *p = malloc(1 << 20);
        if (!p) {
            printf("BLOCKED memhog errno=%d (%s) after %ld MiB\n", errno, strerrorname_np(errno), done);
            return 3;
        }
        memset(p, 0x5a, 1 << 20);
        if (done % 64 == 0)
            printf("INFO touched=%ld\n", done);
    }
    escaped("memhog", "touched %ld MiB", done);
    return 0;
}

/* nofile N: open /dev/null N times. */
static int cmd_nofile(int argc, char **argv)
{
    int n = argc > 1 ? (int)parse_ul(argv[1]) : 1000;
    int opened = 0, err = 0;
    for (int i = 0; i < n; i++) {
        if (open("/dev/null", O_RDONLY) < 0) {
            err = errno;
            break;
        }
        opened++;
    }
    printf("INFO opened=%d errno=%d (%s)\n", opened, err, err ? strerrorname_np(err) : "0");
    if (opened == n)
        escaped("nofile", "opened all %d files", n);
    return 0;
}

/* fsize BYTES [PATH]: write a file of BYTES bytes (SIGXFSZ ignored so the error is visible). */
static int cmd_fsize(int argc, char **argv)
{
    long want = argc > 1 ? (long)parse_ul(argv[1]) : (64L << 20);
    const char *path = argc > 2 ? argv[2] : "big";
    signal(SIGXFSZ, SIG_IGN);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        printf("INFO open_errno=%d\n", errno);
        return 1;
    }
    static char buf[65536];
    memset(buf, 'B', sizeof buf);
    long total = 0;
    int err = 0;
    printf("INFO writing=%s\n", path);
    while (total < want) {
        ssize_t n = write(fd, buf, sizeof buf);
        if (n <= 0) {
            err = errno;
            break;
        }
        total += n;
    }
    close(fd);
    struct stat st;
    st.st_size = -1;
    stat(path, &st);
    printf("INFO written=%ld size=%ld errno=%d (%s)\n", total, (long)st.st_size, err, err ? strerrorname_np(err) : "0");
    if (total >= want)
        escaped("fsize", "wrote %ld bytes", total);
    return 0;
}

static const struct command cmds[] = {
    {"spin", cmd_spin}, {"flood", cmd_flood}, {"memhog", cmd_memhog}, {"nofile", cmd_nofile},
    {"fsize", cmd_fsize}, {NULL, NULL},
};

int main(int argc, char **argv) { return dispatch(cmds, argc, argv); }
