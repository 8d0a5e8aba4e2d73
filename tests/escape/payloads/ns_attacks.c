/* Mounts, namespaces, clone flags (SPEC §4.3). Every call uses arguments that do nothing harmful
 * if the filter lets it through; whatever is created is undone at once. */
#include "common.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>

#ifndef SYS_fsopen
#define SYS_fsopen 430
#define SYS_fsconfig 431
#endif
#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#define FSOPEN_CLOEXEC 0x00000001
#define FSCONFIG_SET_STRING 1

struct clone_args_ {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup;
};

/* mount DIR: a tmpfs over a workspace directory; unmounted at once if it worked. */
static int cmd_mount(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "mnt";
    mkdir(dir, 0755);
    try_("mount");
    if (mount("evalbox-test", dir, "tmpfs", 0, "size=1m") == 0) {
        escaped("mount", "tmpfs mounted on %s", dir);
        umount2(dir, MNT_DETACH);
    } else {
        blocked("mount", errno);
    }
    return 0;
}

/* fsopen + fsconfig: the new mount API (CVE-2022-0185 was in fsconfig's legacy parser). */
static int cmd_fsopen(int argc, char **argv)
{
    (void)argc, (void)argv;
    try_("fsopen");
    int fd = syscall(SYS_fsopen, "tmpfs", FSOPEN_CLOEXEC);
    if (fd < 0) {
        blocked("fsopen", errno);
        return 0;
    }
    escaped("fsopen", "fs context fd %d", fd);
    try_("fsconfig");
    if (syscall(SYS_fsconfig, fd, FSCONFIG_SET_STRING, "source", "evalbox-test", 0) == 0)
        escaped("fsconfig", "set a string parameter");
    else
        blocked("fsconfig", errno);
    close(fd);
    return 0;
}

/* unshare FLAGS (a number): e.g. CLONE_NEWUSER = 0x10000000. */
static int cmd_unshare(int argc, char **argv)
{
    unsigned long flags = argc > 1 ? parse_ul(argv[1]) : CLONE_NEWUSER;
    ATTEMPT("unshare", unshare(flags));
    return 0;
}

/* userns_mount: the classic escalation: a new user+mount namespace, then mount in it. */
static int cmd_userns_mount(int argc, char **argv)
{
    (void)argc, (void)argv;
    try_("unshare");
    if (unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0) {
        blocked("unshare", errno);
        return 0;
    }
    escaped("unshare", "new user and mount namespaces");
    mkdir("mnt", 0755);
    try_("mount");
    if (mount("evalbox-test", "mnt", "tmpfs", 0, "size=1m") == 0) {
        escaped("mount", "tmpfs mounted inside the new namespaces");
        umount2("mnt", MNT_DETACH);
    } else {
        blocked("mount", errno);
    }
    return 0;
}

/* clone FLAGS: raw clone(2) with namespace/parent flags; the child exits at once. */
static int cmd_clone(int argc, char **argv)
{
    unsigned long flags = argc > 1 ? parse_ul(argv[1]) : (CLONE_NEWUSER | CLONE_NEWNS);
    try_("clone");
    long pid = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0)
        _exit(0);
    if (pid < 0) {
        blocked("clone", errno);
        return 0;
    }
    escaped("clone", "child %ld created with flags %#lx", pid, flags);
    waitpid(pid, NULL, 0);
    return 0;
}

/* setns into our own user namespace: the kernel itself answers EINVAL, so any other answer (or
 * SIGSYS) comes from the sandbox. */
static int cmd_setns(int argc, char **argv)
{
    (void)argc, (void)argv;
    int fd = open("/proc/self/ns/user", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        printf("INFO open_ns_errno=%d\n", errno);
        fd = 0; /* any fd: the filter sees the call before the kernel looks at the fd */
    }
    try_("setns");
    if (setns(fd, CLONE_NEWUSER) == 0)
        escaped("setns", "joined a user namespace");
    else if (errno == EINVAL)
        printf("REACHED setns errno=%d (EINVAL): the kernel, not the sandbox, refused\n", errno);
    else
        blocked("setns", errno);
    return 0;
}

static void *thread_fn(void *arg) { return arg; }

/* clone3: must answer ENOSYS (glibc then falls back to clone), and threads and fork still work. */
static int cmd_clone3(int argc, char **argv)
{
    (void)argc, (void)argv;
    struct clone_args_ ca = {0};
    ca.exit_signal = SIGCHLD;
    try_("clone3");
    long pid = syscall(SYS_clone3, &ca, sizeof ca);
    if (pid == 0)
        _exit(0);
    if (pid > 0) {
        waitpid(pid, NULL, 0);
        printf("INFO clone3_plain=ok\n");
    } else {
        printf("INFO clone3_plain_errno=%d (%s)\n", errno, strerrorname_np(errno));
    }
    memset(&ca, 0, sizeof ca);
    ca.flags = CLONE_NEWUSER | CLONE_NEWNS;
    ca.exit_signal = SIGCHLD;
    try_("clone3_newuser");
    pid = syscall(SYS_clone3, &ca, sizeof ca);
    if (pid == 0)
        _exit(0);
    if (pid > 0) {
        escaped("clone3_newuser", "child %ld in new user+mount namespaces", pid);
        waitpid(pid, NULL, 0);
    } else {
        blocked("clone3_newuser", errno);
    }
    pthread_t t;
    int rc = pthread_create(&t, NULL, thread_fn, (void *)42);
    void *res = NULL;
    if (rc == 0 && pthread_join(t, &res) == 0 && res == (void *)42)
        ok("pthread", "created and joined");
    else
        printf("FAILED pthread rc=%d\n", rc);
    pid_t c = fork();
    if (c == 0)
        _exit(7);
    int st = 0;
    if (c > 0 && waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 7)
        ok("fork", "child exited 7");
    else
        printf("FAILED fork errno=%d\n", errno);
    return 0;
}

static const struct command cmds[] = {
    {"mount", cmd_mount}, {"fsopen", cmd_fsopen}, {"unshare", cmd_unshare},
    {"userns_mount", cmd_userns_mount}, {"clone", cmd_clone}, {"setns", cmd_setns},
    {"clone3", cmd_clone3}, {NULL, NULL},
};

int main(int argc, char **argv) { return dispatch(cmds, argc, argv); }
