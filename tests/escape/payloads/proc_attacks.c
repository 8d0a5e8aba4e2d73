/* Processes (SPEC §4.3-4.6): ptrace, process_vm_readv, signals, scheduling of other processes,
 * privileges, inherited fds, daemons and fork bombs. Targets are processes the test started. */
#include "common.h"

#include <dirent.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/uio.h>

/* traceme: ask to be traced by our parent (the host process that started us). */
static int cmd_traceme(int argc, char **argv)
{
    (void)argc, (void)argv;
    ATTEMPT("ptrace_traceme", ptrace(PTRACE_TRACEME, 0, 0, 0));
    return 0;
}

/* attach PID: PTRACE_ATTACH then PTRACE_SEIZE; detach at once if it worked. */
static int cmd_attach(int argc, char **argv)
{
    pid_t pid = argc > 1 ? (pid_t)parse_ul(argv[1]) : getppid();
    try_("ptrace_attach");
    if (ptrace(PTRACE_ATTACH, pid, 0, 0) == 0) {
        escaped("ptrace_attach", "attached to %d", pid);
        waitpid(pid, NULL, __WALL);
        ptrace(PTRACE_DETACH, pid, 0, 0);
    } else {
        blocked("ptrace_attach", errno);
    }
    try_("ptrace_seize");
    if (ptrace(PTRACE_SEIZE, pid, 0, 0) == 0) {
        escaped("ptrace_seize", "seized %d", pid);
        ptrace(PTRACE_DETACH, pid, 0, 0);
    } else {
        blocked("ptrace_seize", errno);
    }
    return 0;
}

/* attach_sibling: ptrace a child of our own (same sandbox, same uid). */
static int cmd_attach_sibling(int argc, char **argv)
{
    (void)argc, (void)argv;
    pid_t child = fork();
    if (child == 0) {
        for (;;)
            pause();
    }
    if (child < 0) {
        printf("INFO fork_errno=%d\n", errno);
        return 0;
    }
    printf("INFO sibling=%d\n", child);
    try_("ptrace_attach_sibling");
    if (ptrace(PTRACE_ATTACH, child, 0, 0) == 0) {
        escaped("ptrace_attach_sibling", "attached to %d", child);
        waitpid(child, NULL, __WALL);
        ptrace(PTRACE_DETACH, child, 0, 0);
    } else {
        blocked("ptrace_attach_sibling", errno);
    }
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    return 0;
}

/* vm_readv PID ADDR LEN: read another process's memory. */
static int cmd_vm_readv(int argc, char **argv)
{
    if (argc < 4)
        return 2;
    pid_t pid = (pid_t)parse_ul(argv[1]);
    char buf[256] = {0};
    size_t len = parse_ul(argv[3]);
    if (len > sizeof buf - 1)
        len = sizeof buf - 1;
    struct iovec local = {buf, len}, remote = {(void *)parse_ul(argv[2]), len};
    try_("process_vm_readv");
    ssize_t n = process_vm_readv(pid, &local, 1, &remote, 1, 0);
    if (n < 0)
        blocked("process_vm_readv", errno);
    else
        escaped("process_vm_readv", "read %zd bytes of %d: %.*s", n, pid, (int)n, buf);
    return 0;
}

/* kill PID SIG */
static int cmd_kill(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    pid_t pid = (pid_t)strtol(argv[1], NULL, 0);
    int sig = (int)parse_ul(argv[2]);
    char what[64];
    snprintf(what, sizeof what, "kill_%d_%d", pid, sig);
    ATTEMPT(what, kill(pid, sig));
    return 0;
}

/* killall SIG: kill(-1, SIG). Never while we are uid 0: a sandbox that kept the host's root uid
 * would signal every process of the machine (SIGKILL would take it down), so that alone is the
 * escape, reported without sending anything. */
static int cmd_killall(int argc, char **argv)
{
    int sig = argc > 1 ? (int)parse_ul(argv[1]) : SIGKILL;
    printf("INFO uid=%d euid=%d\n", getuid(), geteuid());
    if (getuid() == 0 || geteuid() == 0) {
        escaped("killall", "still uid 0: kill(-1, %d) would reach every process of the host (not sent)", sig);
        return 0;
    }
    char what[64];
    snprintf(what, sizeof what, "kill_minus1_%d", sig);
    try_(what);
    /* kill(-1) does not fail when only our own processes were reachable: report it as INFO */
    int r = kill(-1, sig);
    printf("INFO %s result=%d errno=%d\n", what, r, r ? errno : 0);
    return 0;
}

/* sched PID: change another process's priority, rlimits, affinity, scheduler, io priority. */
static int cmd_sched(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    pid_t pid = (pid_t)parse_ul(argv[1]);
    ATTEMPT("setpriority", setpriority(PRIO_PROCESS, pid, 19));
    struct rlimit rl = {3, 3};
    ATTEMPT("prlimit64", prlimit(pid, RLIMIT_NOFILE, &rl, NULL));
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(0, &set);
    ATTEMPT("sched_setaffinity", sched_setaffinity(pid, sizeof set, &set));
    struct sched_param sp = {0};
    ATTEMPT("sched_setscheduler", sched_setscheduler(pid, SCHED_IDLE, &sp));
    ATTEMPT("ioprio_set", syscall(SYS_ioprio_set, 1 /* IOPRIO_WHO_PROCESS */, pid, (3 << 13) /* IDLE */));
    return 0;
}

/* status: the lockdown as the kernel reports it. */
static int cmd_status(int argc, char **argv)
{
    (void)argc, (void)argv;
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) {
        printf("INFO status_errno=%d\n", errno);
        return 0;
    }
    char line[512];
    while (fgets(line, sizeof line, f)) {
        static const char *keys[] = {"Uid:", "Gid:", "Groups:", "CapInh:", "CapPrm:", "CapEff:", "CapBnd:",
                                     "CapAmb:", "NoNewPrivs:", "Seccomp:", "Seccomp_filters:", NULL};
        for (int i = 0; keys[i]; i++)
            if (!strncmp(line, keys[i], strlen(keys[i]))) {
                char *v = line + strlen(keys[i]);
                v += strspn(v, " \t");
                v[strcspn(v, "\n")] = 0;
                printf("INFO %.*s=%s\n", (int)strlen(keys[i]) - 1, keys[i], v);
            }
    }
    fclose(f);
    printf("INFO securebits=%d\n", prctl(PR_GET_SECUREBITS, 0, 0, 0, 0));
    return 0;
}

/* ids: who we are, and attempts to become root. */
static int cmd_ids(int argc, char **argv)
{
    (void)argc, (void)argv;
    uid_t r, e, s;
    getresuid(&r, &e, &s);
    printf("INFO ruid=%d euid=%d suid=%d egid=%d\n", r, e, s, getegid());
    if (e == 0)
        escaped("setuid_binary", "effective uid is 0");
    try_("setuid0");
    if (setuid(0) == 0 && geteuid() == 0)
        escaped("setuid0", "became uid 0");
    else
        blocked("setuid0", errno);
    try_("setresgid0");
    if (setresgid(0, 0, 0) == 0 && getegid() == 0)
        escaped("setresgid0", "became gid 0");
    else
        blocked("setresgid0", errno);
    return 0;
}

/* fds: which fds we hold; read anything beyond 0-2. */
static int cmd_fds(int argc, char **argv)
{
    (void)argc, (void)argv;
    DIR *d = opendir("/proc/self/fd");
    int dfd = d ? dirfd(d) : -1;
    char list[1024] = {0};
    size_t used = 0;
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            if (e->d_name[0] != '.' && atoi(e->d_name) != dfd)
                used += snprintf(list + used, sizeof list - used, "%s%s", used ? "," : "", e->d_name);
        closedir(d);
    }
    printf("INFO fds=%s\n", list);
    for (int fd = 3; fd < 4096; fd++) {
        struct stat st;
        if (fstat(fd, &st) != 0)
            continue;
        char buf[256] = {0};
        ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
        char link[64], target[512] = {0};
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        if (readlink(link, target, sizeof target - 1) < 0)
            strcpy(target, "?");
        escaped("inherited_fd", "fd %d -> %s, read %zd: %s", fd, target, n, n > 0 ? buf : "");
    }
    return 0;
}

/* clone_parent: make a child of our parent (a host process): it would escape reaping. */
static int cmd_clone_parent(int argc, char **argv)
{
    (void)argc, (void)argv;
    try_("clone_parent");
    long pid = syscall(SYS_clone, CLONE_PARENT | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0)
        _exit(0);
    if (pid < 0)
        blocked("clone_parent", errno);
    else
        escaped("clone_parent", "child %ld of our parent", pid);
    return 0;
}

/* daemon: the classic double fork with setsid; the grandchild outlives the program and
 * reports its pid, then sleeps. The program exits at once. */
static int cmd_daemon(int argc, char **argv)
{
    (void)argc, (void)argv;
    int pipefd[2];
    if (pipe(pipefd) != 0)
        return 1;
    pid_t c = fork();
    if (c == 0) {
        int r = setsid();
        printf("INFO setsid=%d errno=%d\n", r, r < 0 ? errno : 0);
        r = setpgid(0, 0);
        printf("INFO setpgid=%d errno=%d\n", r, r < 0 ? errno : 0);
        pid_t g = fork();
        if (g == 0) {
            close(pipefd[0]);
            /* detach from the output pipes too, like a real daemon */
            int nul = open("/dev/null", O_RDWR);
            char msg[64];
            int len = snprintf(msg, sizeof msg, "%d\n", getpid());
            if (write(pipefd[1], msg, len) != len)
                _exit(1);
            close(pipefd[1]);
            if (nul >= 0) {
                dup2(nul, 0);
                dup2(nul, 1);
                dup2(nul, 2);
            }
            for (;;)
                pause();
        }
        _exit(0);
    }
    close(pipefd[1]);
    char buf[64] = {0};
    ssize_t n = read(pipefd[0], buf, sizeof buf - 1);
    if (n > 0)
        printf("INFO daemon=%d\n", atoi(buf));
    waitpid(c, NULL, 0);
    return 0;
}

/* forkbomb: every process forks for ever. */
static int cmd_forkbomb(int argc, char **argv)
{
    (void)argc, (void)argv;
    printf("INFO bombing pid=%d\n", getpid());
    for (;;)
        fork();
    return 0;
}

static int cmd_sleep(int argc, char **argv)
{
    int secs = argc > 1 ? (int)parse_ul(argv[1]) : 30;
    printf("INFO pid=%d\n", getpid());
    sleep(secs);
    return 0;
}

static const struct command cmds[] = {
    {"traceme", cmd_traceme}, {"attach", cmd_attach}, {"attach_sibling", cmd_attach_sibling},
    {"vm_readv", cmd_vm_readv}, {"kill", cmd_kill}, {"killall", cmd_killall}, {"sched", cmd_sched},
    {"status", cmd_status}, {"ids", cmd_ids}, {"fds", cmd_fds}, {"clone_parent", cmd_clone_parent},
    {"daemon", cmd_daemon}, {"forkbomb", cmd_forkbomb}, {"sleep", cmd_sleep}, {NULL, NULL},
};

int main(int argc, char **argv) { return dispatch(cmds, argc, argv); }
