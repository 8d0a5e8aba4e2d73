/*
 * Shared by every escape payload. Conventions (parsed by tests/escape/conftest.py):
 *   stderr: "EVALBOX_CWD=<cwd>" first, so the test can check the workspace is removed afterwards.
 *   stdout: "TRY <attack>" before the dangerous call (if the process then dies of SIGSYS, the
 *           test knows which call it was), then exactly one verdict line per attack:
 *             "BLOCKED <attack> errno=<n> (<ENAME>)"  the call failed: the attack did not happen
 *             "ESCAPED <attack>: <evidence>"           the attack worked
 *             "OK <what>: <detail>"                    ordinary behaviour that must work did
 *             "INFO <key>=<value>"                     facts for the test's own checks
 * stdout is unbuffered so that nothing is lost when the filter kills the process.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

__attribute__((unused)) static void try_(const char *what) { printf("TRY %s\n", what); }

__attribute__((unused)) static void blocked(const char *what, int e)
{
    const char *name = strerrorname_np(e);
    printf("BLOCKED %s errno=%d (%s)\n", what, e, name ? name : "?");
}

__attribute__((unused)) static void escaped(const char *what, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    printf("ESCAPED %s: %s\n", what, buf);
}

__attribute__((unused)) static void ok(const char *what, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    printf("OK %s: %s\n", what, buf);
}

/* A raw system call that reports its verdict: < 0 is BLOCKED (with errno), else ESCAPED. */
#define ATTEMPT(what, call)                                                                        \
    do {                                                                                           \
        try_(what);                                                                                \
        errno = 0;                                                                                 \
        long r_ = (long)(call);                                                                    \
        if (r_ < 0)                                                                                \
            blocked(what, errno);                                                                  \
        else                                                                                       \
            escaped(what, "returned %ld", r_);                                                     \
    } while (0)

struct command {
    const char *name;
    int (*fn)(int argc, char **argv); /* argv[0] is the command name */
};

static int dispatch(const struct command *cmds, int argc, char **argv)
{
    char cwd[4096];
    setvbuf(stdout, NULL, _IONBF, 0);
    setvbuf(stderr, NULL, _IONBF, 0);
    if (getcwd(cwd, sizeof cwd))
        fprintf(stderr, "EVALBOX_CWD=%s\n", cwd);
    if (argc < 2) {
        fprintf(stderr, "usage: %s COMMAND [ARGS]\n", argv[0]);
        return 2;
    }
    for (const struct command *c = cmds; c->name; c++)
        if (strcmp(c->name, argv[1]) == 0)
            return c->fn(argc - 1, argv + 1);
    fprintf(stderr, "unknown command %s\n", argv[1]);
    return 2;
}

__attribute__((unused)) static unsigned long parse_ul(const char *s) { return strtoul(s, NULL, 0); }
