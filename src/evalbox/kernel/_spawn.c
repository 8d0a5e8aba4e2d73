/*
 * evalbox.kernel._spawn: the only code that runs between fork and exec.
 *
 * Python prepares everything (argv, environment, fds, rlimits, a Landlock ruleset fd, seccomp
 * programs); this file clones a child that shares the caller's memory and is suspended until the
 * child execs (CLONE_VM | CLONE_VFORK, like posix_spawn), so the cost does not grow with the
 * caller's memory and no Python code runs in the child. The child applies the lockdown with raw
 * system calls only (async-signal-safe, no locks, no allocation) and reports the failing step and
 * errno through a close-on-exec pipe.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_openat2
#define SYS_openat2 437
#endif

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef SYS_landlock_restrict_self
#define SYS_landlock_restrict_self 446
#endif
#ifndef SYS_landlock_add_rule
#define SYS_landlock_add_rule 445
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif

#ifndef PR_GET_TID_ADDRESS
#define PR_GET_TID_ADDRESS 40
#endif

#define MAX_RLIMITS 16
#define MAX_FILTERS 4
#define MAX_CGROUP_FDS 4
#define MAX_OVERLAYS 8
#define MAX_BINDS 64
#define CHILD_STACK_SIZE (64 * 1024)

/* The step numbers are part of the Python interface (evalbox.process.spawn.STEPS). */
enum step {
    STEP_SIGNALS = 1,
    STEP_SETSID,
    STEP_PDEATHSIG,
    STEP_PARENT_GONE,
    STEP_CGROUP,
    STEP_STDIO,
    STEP_CLOSE_FDS,
    STEP_CHDIR,
    STEP_RLIMIT,
    STEP_CAPBSET,
    STEP_SECUREBITS,
    STEP_SETGROUPS,
    STEP_SETGID,
    STEP_SETUID,
    STEP_CAPSET,
    STEP_NO_NEW_PRIVS,
    STEP_LANDLOCK,
    STEP_SECCOMP,
    STEP_LISTENER,
    STEP_EXEC,
    STEP_MOUNTS,
    STEP_JAIL,
    STEP_ROOT,
    STEP_DUMPABLE,
    STEP_USERNS,
    STEP_PROGRAM_GONE, /* a warm jail's program process died before it said it runs */
};

struct child_rlimit {
    int resource;
    struct rlimit64 value;
};

struct filter {
    struct sock_fprog prog;
    unsigned int flags;
};

/* A tmpfs mounted over `target` in the child's own mount namespace, hiding what is there, with
 * some paths from below it bound back at their places (binds[first .. first+count)). */
struct overlay {
    const char *target;
    const char *options;     /* tmpfs options, e.g. "mode=0755,size=1m" */
    unsigned long long rights; /* Landlock rights to grant on the new tmpfs (0: none) */
    int first, count;
};

struct bind {
    const char *path;
    const char *source; /* what is bound at path: NULL for path itself (as it was before the overlay) */
    int is_dir;
    int readonly;       /* remount the bind read-only (nosuid, nodev): inside a writable overlay,
                         * Landlock's rights on the overlay would otherwise reach into it */
    int no_symlinks;    /* a plan-named path: opened with no symlink in any component */
};

struct root_entry;

struct config {
    const char *path;
    char *const *argv;
    char *const *envp;
    const char *cwd;
    int stdio[3];
    int errpipe;
    int parent_pid;
    int cgroup_fds[MAX_CGROUP_FDS];
    int n_cgroup_fds;
    int cgroup_dir_fd;     /* -1, or the run's v2 cgroup directory: born there (see clone_run) */
    int born_in_cgroup;    /* set by the cloning parent: the child skips the cgroup.procs writes */
    struct child_rlimit rlimits[MAX_RLIMITS];
    int n_rlimits;
    int drop_bounding_set; /* needs CAP_SETPCAP: only when the caller has it */
    int last_cap;
    long securebits;       /* -1: leave alone */
    long uid, gid;         /* -1: keep */
    int landlock_fd;       /* -1: none */
    struct overlay overlays[MAX_OVERLAYS]; /* needs CAP_SYS_ADMIN */
    int n_overlays;
    struct bind binds[MAX_BINDS];
    int n_binds;
    struct filter filters[MAX_FILTERS];
    int n_filters;
    int listener_sock;     /* a filter with NEW_LISTENER sends its fd here, then the child closes it */
    unsigned long long magic; /* tag of the child's own calls after a notify filter (see tagged) */
    mode_t umask;
    /* The jail (see init_main): namespaces the init is cloned into, and what it sets up there. */
    int jail_flags;          /* CLONE_NEW* flags; 0: no jail, the program is the direct child */
    int netns_fd;            /* -1: none; else a pooled network namespace to enter */
    unsigned long long proc_rights; /* Landlock rights on the jail's own /proc */
    const char *hostname;    /* NULL: keep */
    volatile int *failed;    /* set by report(): the init learns its program child failed to start */
    struct root_entry *root; /* the jail's constructed root (see build_root); NULL: the host's */
    int *root_fds;
    int n_root;
    unsigned long long root_rights; /* Landlock rights on the new root's own directories */
    int template_fd;         /* -1, or a template mount namespace (see template_main) to copy */
    int in_place;            /* lockdown_self: no exec follows, so fds are closed, not marked */
    long outer_uid, outer_gid; /* CLONE_NEWUSER: the caller's ids, mapped to themselves inside */
};

/* Once a user-notification filter is installed, the child's own remaining calls (handing over
 * the listener, exec, or reporting a failure) must not wait for a supervisor: the supervisor is
 * the parent, suspended until the exec. They carry a per-spawn random tag in the sixth argument
 * register, which the notify filter lets through; no kernel call here reads that register, and
 * the program cannot learn the tag (it lives only in the parent and in the filter). */
static long tagged(const struct config *c, long nr, long a0, long a1, long a2)
{
    return syscall(nr, a0, a1, a2, 0L, 0L, (long)c->magic);
}

static void report(const struct config *c, int step, int err)
{
    int msg[2] = {step, err};
    if (c->failed)
        *c->failed = 1;
    tagged(c, SYS_write, c->errpipe, (long)msg, sizeof msg);
    tagged(c, SYS_exit_group, 127, 0, 0);
    _exit(127);
}

/* One byte with room for one fd (SCM_RIGHTS): what both ends of an fd hand-over use. */
struct fd_message {
    char byte;
    struct iovec iov;
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } control;
    struct msghdr msg;
};

static void fd_message_init(struct fd_message *m)
{
    memset(m, 0, sizeof *m);
    m->iov.iov_base = &m->byte;
    m->iov.iov_len = 1;
    m->msg.msg_iov = &m->iov;
    m->msg.msg_iovlen = 1;
    m->msg.msg_control = m->control.buf;
    m->msg.msg_controllen = sizeof m->control.buf;
}

/* Send fd over a Unix socket with SCM_RIGHTS; a raw sendmsg is async-signal-safe. */
static int send_fd(const struct config *c, int sock, int fd)
{
    struct fd_message m;
    fd_message_init(&m);
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&m.msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
    return tagged(c, SYS_sendmsg, sock, (long)&m.msg, MSG_NOSIGNAL) == 1 ? 0 : -1;
}

/* The decimal digits of a non-negative number at out (no snprintf: not async-signal-safe);
 * returns how many. */
static size_t put_decimal(char *out, unsigned long value)
{
    char digits[24];
    size_t n = 0;
    do {
        digits[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value > 0);
    for (size_t i = 0; i < n; i++)
        out[i] = digits[n - 1 - i];
    return n;
}

/* "/proc/self/fd/N". */
static void fd_path(char out[32], int fd)
{
    static const char prefix[] = "/proc/self/fd/";
    memcpy(out, prefix, sizeof prefix - 1);
    out[sizeof prefix - 1 + put_decimal(out + sizeof prefix - 1, (unsigned long)fd)] = '\0';
}

/* Create the directories leading to `path` below `top` (and `path` itself, a directory or an
 * empty file), as bind targets on a fresh tmpfs. */
static int make_path(const char *top, const char *path, int is_dir)
{
    char buf[4096];
    size_t len = strlen(path), start = strlen(top);
    if (len >= sizeof buf)
        return ENAMETOOLONG;
    memcpy(buf, path, len + 1);
    for (size_t i = start + 1; i < len; i++) {
        if (buf[i] != '/')
            continue;
        buf[i] = '\0';
        if (mkdir(buf, 0755) != 0) {
            struct stat st;
            if (errno != EEXIST)
                return errno;
            /* never build through a link: it would resolve against the host's root */
            if (lstat(buf, &st) != 0)
                return errno;
            if (!S_ISDIR(st.st_mode))
                return ELOOP;
        }
        buf[i] = '/';
    }
    if (is_dir)
        return mkdir(buf, 0755) != 0 && errno != EEXIST ? errno : 0;
    struct stat st;
    if (lstat(buf, &st) == 0)
        return 0; /* already there (a bind target may sit on a read-only bind) */
    int fd = open(buf, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return errno;
    close(fd);
    return 0;
}

/* An O_PATH fd for a path the plan names (a mount source), with no symlink in any component
 * (a final link is refused too): the inode the host checked and gave its Landlock rule. */
static int open_no_symlinks(const char *path)
{
    struct open_how how = {.flags = O_PATH | O_NOFOLLOW | O_CLOEXEC, .resolve = RESOLVE_NO_SYMLINKS};
    struct stat st;
    int fd = (int)syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof how);
    if (fd >= 0 && (fstat(fd, &st) != 0 || S_ISLNK(st.st_mode))) {
        close(fd);
        errno = ELOOP;
        return -1;
    }
    return fd;
}

/* The program's own mount namespace: tmpfs overlays with selected paths bound back. Used on
 * privileged hosts for a private /dev/shm, and to reach paths (an interpreter under /root)
 * whose ancestors the sandbox's own uid may not search. */
static void private_mounts(const struct config *c)
{
    int fds[MAX_BINDS];
    char source[32];
    /* In a jail the init made the mount namespace already. */
    if (!(c->jail_flags & CLONE_NEWNS) &&
        (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0))
        report(c, STEP_MOUNTS, errno);
    /* Bind sources must belong to this namespace and be held before the overlays hide them. */
    for (int i = 0; i < c->n_binds; i++) {
        const char *from = c->binds[i].source ? c->binds[i].source : c->binds[i].path;
        if ((fds[i] = c->binds[i].no_symlinks ? open_no_symlinks(from) : open(from, O_PATH | O_CLOEXEC)) < 0)
            report(c, STEP_MOUNTS, errno);
    }
    for (int o = 0; o < c->n_overlays; o++) {
        const struct overlay *ov = &c->overlays[o];
        /* No tmpfs options: no tmpfs either, the binds go straight over existing paths. */
        int tmpfs = ov->options[0] != '\0';
        if (tmpfs && mount("tmpfs", ov->target, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, ov->options) != 0)
            report(c, STEP_MOUNTS, errno);
        for (int i = ov->first; i < ov->first + ov->count; i++) {
            int err = tmpfs ? make_path(ov->target, c->binds[i].path, c->binds[i].is_dir) : 0;
            if (err)
                report(c, STEP_MOUNTS, err);
            fd_path(source, fds[i]);
            if (mount(source, c->binds[i].path, NULL, MS_BIND | MS_REC, NULL) != 0)
                report(c, STEP_MOUNTS, errno);
            if (c->binds[i].readonly &&
                mount(NULL, c->binds[i].path, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) != 0)
                report(c, STEP_MOUNTS, errno);
            close(fds[i]);
        }
        if (ov->rights) {
            /* The new tmpfs is not the directory the parent could name: add its rule here. */
            int dir = open(ov->target, O_PATH | O_DIRECTORY | O_CLOEXEC);
            if (dir < 0)
                report(c, STEP_MOUNTS, errno);
            struct __attribute__((packed)) {
                uint64_t allowed_access;
                int32_t parent_fd;
            } rule = {ov->rights, dir};
            if (syscall(SYS_landlock_add_rule, c->landlock_fd, 1 /* PATH_BENEATH */, &rule, 0U) != 0)
                report(c, STEP_MOUNTS, errno);
            close(dir);
        }
    }
}

/* In place (no exec to come): close every fd above stdio now, except the ones the remaining
 * steps use (the error pipe, the Landlock ruleset, the listener socket). */
static void close_all_but(const struct config *c)
{
    int keep[3] = {c->errpipe, c->landlock_fd, c->listener_sock};
    unsigned int next = 3;
    for (;;) {
        int lowest = -1;
        for (int i = 0; i < 3; i++)
            if (keep[i] >= (int)next && (lowest < 0 || keep[i] < lowest))
                lowest = keep[i];
        if (lowest < 0)
            break;
        if ((unsigned int)lowest > next && syscall(SYS_close_range, next, (unsigned int)lowest - 1, 0U) != 0)
            report(c, STEP_CLOSE_FDS, errno);
        next = (unsigned int)lowest + 1;
    }
    if (syscall(SYS_close_range, next, ~0U, 0U) != 0)
        report(c, STEP_CLOSE_FDS, errno);
}

/* Everything between clone and exec, in order; on failure it reports the step and exits. Callable
 * without an exec following (a forked template interpreter locks itself down the same way). */
static void lockdown(const struct config *c)
{
    /* Host signal handlers live in the shared memory; put every disposition back to default so
     * nothing of the caller's (Python's handlers, an ignored SIGPIPE) leaks into the program. */
    for (int sig = 1; sig < _NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = SIG_DFL;
        sigaction(sig, &sa, NULL); /* fails harmlessly for the C library's reserved signals */
    }
    sigset_t none;
    sigemptyset(&none);
    if (sigprocmask(SIG_SETMASK, &none, NULL) != 0)
        report(c, STEP_SIGNALS, errno);

    /* Own session and process group: the whole tree can be signalled at once. */
    if (setsid() < 0)
        report(c, STEP_SETSID, errno);
    for (int i = 0; i < c->n_cgroup_fds && !c->born_in_cgroup; i++)
        if (write(c->cgroup_fds[i], "0", 1) != 1)
            report(c, STEP_CGROUP, errno);

    for (int i = 0; i < 3; i++)
        if (dup2(c->stdio[i], i) < 0)
            report(c, STEP_STDIO, errno);
    /* Everything above stdio closes at exec; the ruleset fd and error pipe stay usable until then. */
    if (syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC) != 0)
        report(c, STEP_CLOSE_FDS, errno);
    if (c->in_place)
        close_all_but(c);

    if (c->cwd && chdir(c->cwd) != 0)
        report(c, STEP_CHDIR, errno);
    umask(c->umask);

    if (c->n_overlays > 0)
        private_mounts(c);

    /* RLIMIT_NOFILE waits until the seccomp listener exists: until exec the child still holds
     * copies of the caller's fds, so a small limit would leave no number for the listener. */
    for (int i = 0; i < c->n_rlimits; i++)
        if (c->rlimits[i].resource != RLIMIT_NOFILE &&
            syscall(SYS_prlimit64, 0, c->rlimits[i].resource, &c->rlimits[i].value, NULL) != 0)
            report(c, STEP_RLIMIT, errno);

    if (c->drop_bounding_set) {
        /* Each drop commits new credentials; a launcher or warm template emptied its set once,
         * so its runs find nothing left to drop (PR_CAPBSET_READ: 1 held, 0 not, -1 unknown). */
        for (int cap = 0; cap <= c->last_cap; cap++)
            if (prctl(PR_CAPBSET_READ, cap, 0, 0, 0) != 0 && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 &&
                errno != EINVAL)
                report(c, STEP_CAPBSET, errno);
    }
    if (c->securebits >= 0 && prctl(PR_SET_SECUREBITS, (unsigned long)c->securebits, 0, 0, 0) != 0)
        report(c, STEP_SECUREBITS, errno);
    /* Raw system calls, not the C library's wrappers: those broadcast the change to every thread
     * of the (shared-memory) caller. Here it must apply to this child only. */
    if (c->gid >= 0) {
        if (syscall(SYS_setgroups, 0, NULL) != 0)
            report(c, STEP_SETGROUPS, errno);
        if (syscall(SYS_setresgid, c->gid, c->gid, c->gid) != 0)
            report(c, STEP_SETGID, errno);
    }
    if (c->uid >= 0 && syscall(SYS_setresuid, c->uid, c->uid, c->uid) != 0)
        report(c, STEP_SETUID, errno);
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); /* EINVAL before 4.3: nothing to clear */
    struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct no_caps[2];
    memset(no_caps, 0, sizeof no_caps);
    if (syscall(SYS_capset, &header, no_caps) != 0)
        report(c, STEP_CAPSET, errno);

    /* After the credential changes: changing uid clears the parent-death signal. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
        report(c, STEP_PDEATHSIG, errno);
    /* Changing uid also made the process non-dumpable (its /proc files root's: no
     * /proc/self/environ or /proc/self/mem); an exec undoes that, so in place do it here. */
    if (c->in_place && prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) != 0)
        report(c, STEP_DUMPABLE, errno);
    /* The caller may have died before the signal was armed (in a jail the parent is its init). */
    if (getppid() != (c->jail_flags & CLONE_NEWPID ? 1 : c->parent_pid))
        report(c, STEP_PARENT_GONE, ESRCH);

    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        report(c, STEP_NO_NEW_PRIVS, errno);
    if (c->landlock_fd >= 0 && syscall(SYS_landlock_restrict_self, c->landlock_fd, 0U) != 0)
        report(c, STEP_LANDLOCK, errno);

    for (int i = 0; i < c->n_filters; i++) {
        long fd = tagged(c, SYS_seccomp, SECCOMP_SET_MODE_FILTER, c->filters[i].flags, (long)&c->filters[i].prog);
        if (fd < 0)
            report(c, STEP_SECCOMP, errno);
        if (c->filters[i].flags & SECCOMP_FILTER_FLAG_NEW_LISTENER) {
            /* The supervisor gets the listener; the program must never hold a copy of it. */
            if (c->listener_sock < 0 || send_fd(c, c->listener_sock, (int)fd) != 0)
                report(c, STEP_LISTENER, c->listener_sock < 0 ? EBADF : errno);
            tagged(c, SYS_close, fd, 0, 0);
        }
    }

    /* RLIMIT_NOFILE last (see above). */
    for (int i = 0; i < c->n_rlimits; i++)
        if (c->rlimits[i].resource == RLIMIT_NOFILE &&
            tagged(c, SYS_prlimit64, 0, c->rlimits[i].resource, (long)&c->rlimits[i].value) != 0)
            report(c, STEP_RLIMIT, errno);
}

/* ---- clone3(CLONE_INTO_CGROUP): a run born in its cgroup (cgroup v2, Linux 5.7+) ----
 *
 * Writing cgroup.procs after the clone migrates the child: the kernel moves its charges and, on
 * some kernels, waits for an RCU grace period; the child also runs its first steps in the caller's
 * cgroup. With CLONE_INTO_CGROUP the child exists only inside the run's cgroup. The C library has
 * no clone3 wrapper that runs a function on a new stack, so evalbox_clone3 does it: the child
 * starts on `args->stack`, calls fn(arg) and exits with its result. Returns the pid in the parent,
 * or -errno (no C library errno: the jail's init calls it too). */
struct evalbox_clone_args {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size,
        cgroup;
};
#define EVALBOX_CLONE_INTO_CGROUP 0x200000000ULL
#define EVALBOX_SYS_clone3 435
long evalbox_clone3(struct evalbox_clone_args *args, size_t size, int (*fn)(void *), void *arg);
#if defined(__x86_64__)
__asm__(".text\n"
        ".globl evalbox_clone3\n"
        ".hidden evalbox_clone3\n"
        ".type evalbox_clone3,@function\n"
        "evalbox_clone3:\n"
        "    mov %rdx, %r8\n"      /* fn and arg survive the system call in r8, r9 */
        "    mov %rcx, %r9\n"
        "    mov $435, %eax\n"
        "    syscall\n"
        "    test %rax, %rax\n"
        "    jz 1f\n"
        "    ret\n"
        "1:  xor %ebp, %ebp\n"     /* the child, on its own stack (16-byte aligned by the caller) */
        "    mov %r9, %rdi\n"
        "    call *%r8\n"
        "    mov %eax, %edi\n"
        "    mov $60, %eax\n"      /* exit */
        "    syscall\n"
        "    hlt\n"
        ".size evalbox_clone3, .-evalbox_clone3\n");
#elif defined(__aarch64__)
__asm__(".text\n"
        ".globl evalbox_clone3\n"
        ".hidden evalbox_clone3\n"
        ".type evalbox_clone3,%function\n"
        "evalbox_clone3:\n"
        "    mov x10, x2\n"
        "    mov x11, x3\n"
        "    mov x8, #435\n"
        "    svc #0\n"
        "    cbz x0, 1f\n"
        "    ret\n"
        "1:  mov x29, xzr\n"
        "    mov x30, xzr\n"
        "    mov x0, x11\n"
        "    blr x10\n"
        "    mov x8, #93\n"        /* exit */
        "    svc #0\n"
        "    brk #0\n"
        ".size evalbox_clone3, .-evalbox_clone3\n");
#else
#error "evalbox's spawn supports x86_64 and aarch64"
#endif

/* 0 until a kernel without clone3 or without CLONE_INTO_CGROUP (before 5.7) answered; then 1. */
static volatile int no_clone_into_cgroup;

/* clone(fn, top, flags, arg, pidfd), born in c->cgroup_dir_fd when there is one and the kernel
 * can (c->born_in_cgroup tells the child); otherwise the plain clone, whose child then writes
 * itself into the cgroup. `stack` is the lowest address of the child's stack, `top` its aligned
 * top. Returns the pid, or -1 with *err set (the caller's errno is left alone). */
static pid_t clone_run(int (*fn)(void *), char *stack, char *top, unsigned long flags, struct config *c, int *pidfd,
                       int *err)
{
    c->born_in_cgroup = 0;
    if (c->cgroup_dir_fd >= 0 && !no_clone_into_cgroup) {
        struct evalbox_clone_args a;
        memset(&a, 0, sizeof a);
        a.flags = (flags & ~0xffUL) | EVALBOX_CLONE_INTO_CGROUP;
        a.exit_signal = flags & 0xff;
        a.pidfd = (uint64_t)(uintptr_t)pidfd;
        a.stack = (uint64_t)(uintptr_t)stack;
        a.stack_size = (uint64_t)(top - stack);
        a.cgroup = (uint64_t)c->cgroup_dir_fd;
        c->born_in_cgroup = 1; /* read by the child (shared memory) before it would write cgroup.procs */
        long pid = evalbox_clone3(&a, sizeof a, fn, c);
        if (pid > 0)
            return (pid_t)pid;
        c->born_in_cgroup = 0;
        if (pid == -ENOSYS || pid == -E2BIG)
            no_clone_into_cgroup = 1; /* an older kernel: the cgroup.procs writes, from now on */
        else if (pid != -EACCES && pid != -EPERM) {
            *err = (int)-pid;
            return -1;
        }
        /* EACCES/EPERM: refused with this thread's credentials (an init in a user namespace);
         * the cgroup.procs fds carry their opener's, which the child's writes use. */
    }
    pid_t pid = clone(fn, top, (int)flags, c, pidfd);
    if (pid < 0)
        *err = errno;
    return pid;
}

static int child_main(void *arg)
{
    const struct config *c = arg;
    lockdown(c);
    tagged(c, SYS_execve, (long)c->path, (long)c->argv, (long)c->envp);
    report(c, STEP_EXEC, errno);
    return 127;
}

/* ---- the jail's root: a fresh tmpfs holding exactly what was granted ----
 *
 * Built by the init, in its own mount namespace, from a list of operations prepared by Python
 * (policy/jail.py), then entered with pivot_root; the host's root is detached. Paths are
 * absolute paths of the new root. Sources of binds are opened before anything is mounted. */

#define STEP_STARTED 0 /* report of the init (the program runs), or of a template's child */

enum root_op {
    ROOT_DIR = 1,     /* mkdir path (mode; rights: Landlock rule on it) */
    ROOT_BIND,        /* bind source at path (flags: ROOT_RO, ROOT_IS_DIR; rights: Landlock rule) */
    ROOT_SYMLINK,     /* symlink data -> path */
    ROOT_TMPFS,       /* tmpfs at path (data: options; rights: Landlock rule on it) */
    ROOT_PROC,        /* procfs of this PID namespace at path (data: options after hidepid=2; rights: Landlock rule) */
    ROOT_FILE,        /* a file at path with content data (mode) */
    ROOT_DEVPTS,      /* a devpts instance of its own at path (rights: Landlock rule) */
};
#define ROOT_RO 0x1
#define ROOT_IS_DIR 0x2
#define ROOT_OWNED 0x4 /* belongs to the sandbox's uid/gid */
#define ROOT_LATE 0x8  /* a bind whose source is inside the new root, opened when it is bound */
#define ROOT_NOFOLLOW 0x10 /* a source the plan names: opened with no symlink in any component */
#define ROOT_STAGING "/tmp"

struct root_entry {
    int op;
    const char *path;
    const char *data;
    Py_ssize_t data_len;
    unsigned int mode, flags;
    unsigned long long rights;
};

/* The new mount API (Linux 5.2; mount_setattr 5.12, below Landlock's 5.13): a mount is made
 * detached and attached to a target given as an fd, so no mount target is ever a path the kernel
 * resolves (and could follow a symlink in) at mount time. Raw calls: older C libraries lack them. */
#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef SYS_fsopen
#define SYS_fsopen 430
#endif
#ifndef SYS_fsconfig
#define SYS_fsconfig 431
#endif
#ifndef SYS_fsmount
#define SYS_fsmount 432
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#define EB_OPEN_TREE_CLONE 1
#define EB_AT_RECURSIVE 0x8000
#define EB_MOVE_MOUNT_F_EMPTY_PATH 0x4
#define EB_MOVE_MOUNT_T_EMPTY_PATH 0x40
#define EB_FSOPEN_CLOEXEC 1
#define EB_FSMOUNT_CLOEXEC 1
#define EB_FSCONFIG_SET_FLAG 0
#define EB_FSCONFIG_SET_STRING 1
#define EB_FSCONFIG_CMD_CREATE 6
#define EB_MOUNT_ATTR_RDONLY 0x1
#define EB_MOUNT_ATTR_NOSUID 0x2
#define EB_MOUNT_ATTR_NODEV 0x4
#define EB_MOUNT_ATTR_NOEXEC 0x8
struct eb_mount_attr {
    uint64_t attr_set, attr_clr, propagation, userns_fd;
};

static int landlock_rule_fd(const struct config *c, int fd, unsigned long long rights)
{
    if (c->landlock_fd < 0 || !rights)
        return 0;
    struct __attribute__((packed)) {
        uint64_t allowed_access;
        int32_t parent_fd;
    } rule = {rights, fd};
    return syscall(SYS_landlock_add_rule, c->landlock_fd, 1 /* PATH_BENEATH */, &rule, 0U) != 0 ? errno : 0;
}

static int landlock_rule_at(const struct config *c, const char *path, unsigned long long rights)
{
    if (c->landlock_fd < 0 || !rights)
        return 0;
    int dir = open(path, O_PATH | O_CLOEXEC);
    if (dir < 0)
        return errno;
    int err = landlock_rule_fd(c, dir, rights);
    close(dir);
    return err;
}

/* `rel` below the directory `at`, never through a symlink (with O_PATH a final link is opened as
 * itself: callers check the type), `..` or a magic link: whatever is planted in the new root or
 * in a tree bound into it, this stays inside it. Returns the fd or -errno. */
static int open_beneath(int at, const char *rel, int flags)
{
    struct open_how how = {.flags = (uint64_t)(flags | O_NOFOLLOW | O_CLOEXEC),
                           .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS};
    int fd = (int)syscall(SYS_openat2, at, rel, &how, sizeof how);
    return fd < 0 ? -errno : fd;
}

/* The directory holding the last component of `path` (absolute in the new root, whose top is
 * `root`), made (0755) where missing, one component at a time with open_beneath. `buf` receives
 * a copy of the path; *name points at its last component. Returns the fd or -errno. */
static int parent_beneath(int root, const char *path, char buf[4096], const char **name)
{
    size_t len = strlen(path);
    if (len >= 4096)
        return -ENAMETOOLONG;
    memcpy(buf, path, len + 1);
    char *p = buf;
    while (*p == '/')
        p++;
    char *last = strrchr(p, '/');
    const char *base = last ? last + 1 : p;
    if (!*base || strcmp(base, ".") == 0 || strcmp(base, "..") == 0)
        return -EINVAL;
    *name = base;
    if (!last) { /* directly below the top */
        int top = fcntl(root, F_DUPFD_CLOEXEC, 0);
        return top < 0 ? -errno : top;
    }
    /* usually the parent exists: one openat2 for it all */
    *last = '\0';
    int dir = open_beneath(root, p, O_PATH | O_DIRECTORY);
    if (dir != -ENOENT) {
        *last = '/';
        return dir;
    }
    *last = '/';
    dir = open_beneath(root, ".", O_PATH | O_DIRECTORY);
    for (char *slash; dir >= 0 && (slash = strchr(p, '/')) != NULL; p = slash + 1) {
        *slash = '\0';
        if (*p) {
            int next = open_beneath(dir, p, O_PATH | O_DIRECTORY);
            if (next == -ENOENT)
                next = mkdirat(dir, p, 0755) != 0 && errno != EEXIST ? -errno
                                                                    : open_beneath(dir, p, O_PATH | O_DIRECTORY);
            close(dir);
            dir = next;
        }
        *slash = '/';
    }
    return dir;
}

/* The mount target `name` in `dir` (a directory or an empty file, made if missing), as an
 * O_PATH fd, never a symlink. Returns the fd or -errno. */
static int mount_target(int dir, const char *name, int is_dir)
{
    if (is_dir) { /* (O_DIRECTORY: a link there fails to open, no fstat needed) */
        if (mkdirat(dir, name, 0755) != 0 && errno != EEXIST)
            return -errno;
        return open_beneath(dir, name, O_PATH | O_DIRECTORY);
    }
    int fd = open_beneath(dir, name, O_PATH);
    if (fd == -ENOENT) {
        int made = openat(dir, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (made < 0 && errno != EEXIST)
            return -errno;
        if (made >= 0)
            close(made);
        fd = open_beneath(dir, name, O_PATH);
    }
    if (fd < 0)
        return fd;
    struct stat st;
    int err = fstat(fd, &st) != 0 ? errno : S_ISLNK(st.st_mode) ? ELOOP : S_ISDIR(st.st_mode) ? EISDIR : 0;
    if (err) {
        close(fd);
        return -err;
    }
    return fd;
}

/* Attach the detached mount `mnt` on the target fd. */
static int attach(int mnt, int target)
{
    return syscall(SYS_move_mount, mnt, "", target, "", EB_MOVE_MOUNT_F_EMPTY_PATH | EB_MOVE_MOUNT_T_EMPTY_PATH) != 0
               ? errno : 0;
}

/* A detached mount of a new `fstype` with `options` ("k=v,flag,..."), or -errno. */
#define EB_JAIL_MAX_PTYS "32" /* pseudo-terminals of one run at once (README: "view") */

static int new_mount(const char *fstype, const char *options, unsigned int attrs)
{
    char buf[512];
    size_t len = strlen(options);
    if (len >= sizeof buf)
        return -EINVAL;
    memcpy(buf, options, len + 1);
    int fs = (int)syscall(SYS_fsopen, fstype, EB_FSOPEN_CLOEXEC);
    if (fs < 0)
        return -errno;
    int err = syscall(SYS_fsconfig, fs, EB_FSCONFIG_SET_STRING, "source", fstype, 0) != 0 ? errno : 0;
    for (char *opt = buf; !err && *opt;) {
        char *comma = strchr(opt, ',');
        if (comma)
            *comma = '\0';
        if (*opt) {
            char *eq = strchr(opt, '=');
            if (eq)
                *eq = '\0';
            if (syscall(SYS_fsconfig, fs, eq ? EB_FSCONFIG_SET_STRING : EB_FSCONFIG_SET_FLAG, opt, eq ? eq + 1 : NULL,
                        0) != 0)
                err = errno;
        }
        if (!comma)
            break;
        opt = comma + 1;
    }
    if (!err && syscall(SYS_fsconfig, fs, EB_FSCONFIG_CMD_CREATE, NULL, NULL, 0) != 0)
        err = errno;
    int mnt = err ? -1 : (int)syscall(SYS_fsmount, fs, EB_FSMOUNT_CLOEXEC, attrs);
    if (!err && mnt < 0)
        err = errno;
    close(fs);
    return err ? -err : mnt;
}

/* A detached copy of the tree at `source` (an fd), read-only if asked, or -errno. */
static int bind_tree(int source, int readonly)
{
    int tree = (int)syscall(SYS_open_tree, source, "", EB_OPEN_TREE_CLONE | O_CLOEXEC | AT_EMPTY_PATH | EB_AT_RECURSIVE);
    if (tree < 0)
        return -errno;
    struct eb_mount_attr attr = {.attr_set = EB_MOUNT_ATTR_RDONLY | EB_MOUNT_ATTR_NOSUID};
    if (readonly && syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH, &attr, sizeof attr) != 0) {
        int err = errno;
        close(tree);
        return -err;
    }
    return tree;
}

/* A mount made by `made` (fd or -errno) attached at `target` (fd or -errno), owned and given its
 * Landlock rule (the mount's own root, not the directory it covers). Closes both fds. */
static int place_mount(const struct config *c, int made, int target, unsigned int flags, unsigned long long rights)
{
    int err = made < 0 ? -made : target < 0 ? -target : 0;
    if (!err)
        err = attach(made, target);
    if (!err && (flags & ROOT_OWNED) && c->uid >= 0 &&
        fchownat(made, "", (uid_t)c->uid, (gid_t)c->gid, AT_EMPTY_PATH) != 0)
        err = errno;
    if (!err)
        err = landlock_rule_fd(c, made, rights);
    if (made >= 0)
        close(made);
    if (target >= 0)
        close(target);
    return err;
}

/* Bind sources are held before anything is mounted over them. */
static void open_root_sources(const struct config *c)
{
    for (int i = 0; i < c->n_root; i++) {
        c->root_fds[i] = -1;
        if (c->root[i].op != ROOT_BIND || (c->root[i].flags & ROOT_LATE))
            continue;
        /* a plan-named source: a link swapped in since the host's check cannot change what is bound */
        c->root_fds[i] = (c->root[i].flags & ROOT_NOFOLLOW) ? open_no_symlinks(c->root[i].data)
                                                            : open(c->root[i].data, O_PATH | O_CLOEXEC);
        if (c->root_fds[i] < 0)
            report(c, STEP_ROOT, errno);
    }
}

/* One root operation on the new root whose top directory is `root`. Every path (target, and the
 * source of a late bind) is resolved below `root` with no symlink, `..` or magic link in any
 * component: nothing planted in the root or in a tree bound into it can make an operation act
 * on the host's filesystem. Returns 0 or an errno. */
static int apply_root_op(const struct config *c, int root, int i, int dir, const char *name)
{
    const struct root_entry *e = &c->root[i];
    int err = 0, fd = -1;
    switch (e->op) {
    case ROOT_DIR:
        /* (the umask is 0 here: a directory made now has its mode; one already there is set) */
        if (mkdirat(dir, name, e->mode) == 0) {
            if ((e->flags & ROOT_OWNED) && c->uid >= 0 &&
                fchownat(dir, name, (uid_t)c->uid, (gid_t)c->gid, AT_SYMLINK_NOFOLLOW) != 0)
                err = errno;
            if (!err && e->rights) {
                fd = open_beneath(dir, name, O_PATH | O_DIRECTORY);
                err = fd < 0 ? -fd : landlock_rule_fd(c, fd, e->rights);
            }
            break;
        }
        if (errno != EEXIST) {
            err = errno;
            break;
        }
        fd = open_beneath(dir, name, O_RDONLY | O_DIRECTORY);
        if (fd < 0) {
            err = -fd;
            break;
        }
        if (fchmod(fd, e->mode) != 0)
            err = errno;
        if (!err && (e->flags & ROOT_OWNED) && c->uid >= 0 && fchown(fd, (uid_t)c->uid, (gid_t)c->gid) != 0)
            err = errno;
        if (!err)
            err = landlock_rule_fd(c, fd, e->rights);
        break;
    case ROOT_BIND: {
        int source = c->root_fds[i];
        if (e->flags & ROOT_LATE) {
            const char *from = e->data;
            struct stat st;
            while (*from == '/')
                from++;
            source = open_beneath(root, from, O_PATH);
            if (source >= 0 && (fstat(source, &st) != 0 || S_ISLNK(st.st_mode))) {
                close(source);
                source = -ELOOP;
            }
        }
        int tree = source < 0 ? source : bind_tree(source, e->flags & ROOT_RO);
        if (source >= 0)
            close(source);
        c->root_fds[i] = -1;
        err = place_mount(c, tree, mount_target(dir, name, e->flags & ROOT_IS_DIR), 0, e->rights);
        break;
    }
    case ROOT_SYMLINK:
        if (symlinkat(e->data, dir, name) != 0) {
            err = errno;
            /* an empty directory made earlier as a parent gives way to the link */
            if (err == EEXIST && unlinkat(dir, name, AT_REMOVEDIR) == 0)
                err = symlinkat(e->data, dir, name) != 0 ? errno : 0;
        }
        if (!err && (e->flags & ROOT_OWNED) && c->uid >= 0 &&
            fchownat(dir, name, (uid_t)c->uid, (gid_t)c->gid, AT_SYMLINK_NOFOLLOW) != 0)
            err = errno;
        break;
    case ROOT_TMPFS:
        err = place_mount(c, new_mount("tmpfs", e->data, EB_MOUNT_ATTR_NOSUID | EB_MOUNT_ATTR_NODEV),
                          mount_target(dir, name, 1), e->flags, e->rights);
        break;
    case ROOT_PROC: {
        /* hidepid=2: the init (which shares the caller's memory, and so its command line) is
         * invisible to the program, which may not ptrace it. data: more options (gid=: a group
         * exempt from hidepid, held only by the supervisor's opener thread) */
        char options[128] = "hidepid=2";
        size_t used = strlen(options);
        if (e->data_len > 0) {
            if (used + 1 + (size_t)e->data_len >= sizeof options) {
                err = EINVAL;
                break;
            }
            options[used] = ',';
            memcpy(options + used + 1, e->data, (size_t)e->data_len);
            options[used + 1 + e->data_len] = '\0';
        }
        err = place_mount(c, new_mount("proc", options, EB_MOUNT_ATTR_NOSUID | EB_MOUNT_ATTR_NODEV | EB_MOUNT_ATTR_NOEXEC),
                          mount_target(dir, name, 1), 0, e->rights);
        break;
    }
    case ROOT_DEVPTS:
        /* max=: the kernel's pseudo-terminals outside the host's reserve are one pool for every
           devpts instance; without a cap one run could take them all from the others */
        err = place_mount(c, new_mount("devpts", "newinstance,ptmxmode=0666,mode=0620,max=" EB_JAIL_MAX_PTYS,
                                       EB_MOUNT_ATTR_NOSUID | EB_MOUNT_ATTR_NOEXEC),
                          mount_target(dir, name, 1), 0, e->rights);
        break;
    case ROOT_FILE: {
        fd = openat(dir, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, e->mode);
        if (fd < 0) {
            err = errno;
            break;
        }
        Py_ssize_t done = 0;
        while (!err && done < e->data_len) {
            ssize_t n = write(fd, e->data + done, (size_t)(e->data_len - done));
            if (n < 0 && errno != EINTR)
                err = errno;
            else if (n > 0)
                done += n;
        }
        /* (made with its mode: the umask is 0 here) */
        if (!err && (e->flags & ROOT_OWNED) && c->uid >= 0 && fchown(fd, (uid_t)c->uid, (gid_t)c->gid) != 0)
            err = errno;
        if (!err) /* e.g. a file bound elsewhere: Landlock sees it by its own inode */
            err = landlock_rule_fd(c, fd, e->rights);
        break;
    }
    default:
        err = EINVAL;
    }
    if (fd >= 0)
        close(fd);
    return err;
}

/* Length of the parent part of an absolute path ("/a/b" -> 2, "/a" -> 0). */
static size_t parent_len(const char *path)
{
    const char *last = strrchr(path, '/');
    return last ? (size_t)(last - path) : 0;
}

/* Apply the root operations to the new root whose top directory is `root` (an fd), sources of
 * early binds already open. The first failure ends the process before anything else runs.
 * Consecutive operations in one directory share its fd: none of them can place anything at
 * that directory or above it (which would leave the fd naming a hidden directory), since an
 * operation at a path has that path's parent as its own directory. */
static void apply_root_ops(const struct config *c, int root)
{
    char buf[4096];
    int cached = -1, cached_dir = -1;
    umask(0);
    for (int i = 0; i < c->n_root; i++) {
        const struct root_entry *e = &c->root[i];
        const char *name = NULL;
        size_t plen = parent_len(e->path);
        int dir;
        if (cached >= 0 && parent_len(c->root[cached].path) == plen && memcmp(c->root[cached].path, e->path, plen) == 0) {
            dir = cached_dir;
            name = e->path + plen + 1;
            if (!*name || strchr(name, '/') || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
                report(c, STEP_ROOT, EINVAL);
        } else {
            if (cached_dir >= 0)
                close(cached_dir);
            cached = cached_dir = -1;
            dir = parent_beneath(root, e->path, buf, &name);
            if (dir < 0)
                report(c, STEP_ROOT, -dir);
            name = e->path + (name - buf); /* (the same name, in the entry: buf is reused) */
            cached = i;
            cached_dir = dir;
        }
        int err = apply_root_op(c, root, i, dir, name);
        if (err)
            report(c, STEP_ROOT, err);
    }
    if (cached_dir >= 0)
        close(cached_dir);
}

/* A root built from scratch: a fresh tmpfs attached over /tmp of this (private) mount namespace,
 * filled through its own fd, entered with pivot_root. */
static void build_root(const struct config *c)
{
    open_root_sources(c);
    int root = new_mount("tmpfs", "mode=0755,size=1m,nr_inodes=4096", EB_MOUNT_ATTR_NOSUID | EB_MOUNT_ATTR_NODEV);
    if (root < 0)
        report(c, STEP_ROOT, -root);
    /* attached somewhere (pivot_root needs a mount of this namespace): where does not matter,
     * everything below goes through `root` */
    if (syscall(SYS_move_mount, root, "", AT_FDCWD, ROOT_STAGING, EB_MOVE_MOUNT_F_EMPTY_PATH) != 0)
        report(c, STEP_ROOT, errno);
    apply_root_ops(c, root);
    /* pivot_root(".", "."): the old root ends up stacked on the new one and is detached at once. */
    if (fchdir(root) != 0 || syscall(SYS_pivot_root, ".", ".") != 0 || umount2(".", MNT_DETACH) != 0 ||
        chdir("/") != 0)
        report(c, STEP_ROOT, errno);
    close(root);
}

/* The template's child: a mount namespace whose root holds the static part of jails' roots,
 * read-only; kept alive by the fd it leaves in the caller's table (CLONE_FILES). */
static int template_main(void *arg)
{
    struct config *c = arg;
    int fd = open("/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        report(c, STEP_ROOT, errno);
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
        report(c, STEP_ROOT, errno);
    build_root(c);
    if (mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) != 0)
        report(c, STEP_ROOT, errno);
    int msg[2] = {STEP_STARTED, fd};
    if (write(c->errpipe, msg, sizeof msg) != sizeof msg)
        _exit(127);
    _exit(0);
}

/* ---- the jail's init ----
 *
 * In a jail the caller's child is the init of fresh PID (and IPC, UTS, mount, network)
 * namespaces: it sets them up, starts the program as its own child (the same clone-lockdown-exec
 * as without a jail), then reaps every process of the namespace until the program exits, and
 * exits itself, which makes the kernel kill whatever is left in the namespace. No orphan of the
 * program ever reaches the caller (or its subreaper), and killing the init kills the namespace.
 *
 * The init shares the caller's memory (CLONE_VM, no exec: no copy of a large caller's page tables
 * and no second exec) but, unlike the program's child, it does not hold the caller suspended: the
 * caller waits only until the program has exec'd (spawn polls the report pipe). From then on the
 * init runs alongside the caller's threads, on a stack of its own that nothing else uses, and
 * touches nothing but that stack: raw system calls (the C library's wrappers would write errno
 * into the caller's thread-local storage), no stack protector (its canary lives there too). The
 * program cannot reach the init's memory (the caller's): ptrace and process_vm_* are killed by
 * seccomp, and /proc/1/mem needs ptrace access, which Landlock (and, on root hosts, the uid)
 * refuses. */

#define NO_TLS __attribute__((no_stack_protector, noinline))

static inline __attribute__((always_inline)) long raw4(long n, long a1, long a2, long a3, long a4)
{
#if defined(__x86_64__)
    long ret;
    register long r10 __asm__("r10") = a4;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a1), "S"(a2), "d"(a3), "r"(r10) : "rcx", "r11", "memory");
    return ret;
#elif defined(__aarch64__)
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a1;
    register long x1 __asm__("x1") = a2;
    register long x2 __asm__("x2") = a3;
    register long x3 __asm__("x3") = a4;
    __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3) : "memory", "cc");
    return x0;
#else
#error "evalbox's jail init supports x86_64 and aarch64"
#endif
}

/* What the init writes on the report pipe when the program has exited: its wait status, and the
 * CPU time and peak memory of every process of the namespace that the init reaped (the init's
 * own rusage would count the caller's memory, which it shares). Part of the Python interface. */
struct init_record {
    int32_t kind;   /* INIT_RECORD_KIND */
    int32_t status; /* the program's wait status */
    int64_t utime_us, stime_us, maxrss_kb;
};
#define INIT_RECORD_KIND 0x45424f58 /* "EBOX" */

/* The stacks of running inits: each in its own mapping (guard page, the program child's stack
 * used until its exec, the init's own), reused once the kernel has cleared `tid`
 * (CLONE_CHILD_CLEARTID), that is once that init has exited. Touched with the GIL held. */
#define SLOT_SIZE (256 * 1024)
#define SLOT_GUARD 4096
#define SLOT_CHILD_STACK (96 * 1024)
struct slot_head {
    volatile pid_t tid; /* non-zero while an init runs on this slot */
};
#define SLOT_HEAD(slot) ((struct slot_head *)((slot) + SLOT_SIZE - 64))
static char **slots;
static size_t n_slots, cap_slots;

static char *take_slot(void)
{
    for (size_t i = 0; i < n_slots; i++) {
        if (__atomic_load_n(&SLOT_HEAD(slots[i])->tid, __ATOMIC_ACQUIRE) == 0)
            return slots[i];
    }
    if (n_slots == cap_slots) {
        size_t cap = cap_slots ? cap_slots * 2 : 16;
        char **grown = PyMem_RawRealloc(slots, cap * sizeof *slots);
        if (!grown)
            return NULL;
        slots = grown;
        cap_slots = cap;
    }
    char *base = mmap(NULL, SLOT_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (base == MAP_FAILED)
        return NULL;
    if (mprotect(base, SLOT_GUARD, PROT_NONE) != 0) {
        munmap(base, SLOT_SIZE);
        return NULL;
    }
    slots[n_slots++] = base;
    return base;
}

/* A copy of a template must not hold the stacks of inits that ran (or run) in the template's
 * memory: they hold other runs' verdicts and rusage. Every process forked from a template drops
 * them first (its own later inits map fresh ones). */
static void drop_inherited_slots(void)
{
    for (size_t i = 0; i < n_slots; i++)
        munmap(slots[i], SLOT_SIZE);
    n_slots = 0;
}

/* What the C library registered with the kernel for this thread and a fork made with raw clone
 * must register again in the child: its robust futex list (reset at every clone) and, when the
 * child descends from a CLONE_VM init (which the kernel gives no rseq area), its rseq area. */
struct thread_registrations {
    void *robust_head;
    size_t robust_len;
    void *rseq_area;
    unsigned int rseq_len;
};

#if defined(__x86_64__)
#define EVALBOX_RSEQ_SIG 0x53053053U
#elif defined(__aarch64__)
#define EVALBOX_RSEQ_SIG 0xd428bc00U
#endif

/* Looked up once: a template serves from one thread, whose registrations never change (and a
 * launcher, its copy, has them at the same addresses). */
static void save_thread_registrations(struct thread_registrations *r)
{
    static struct thread_registrations saved;
    static int looked;
    if (!looked) {
        if (syscall(SYS_get_robust_list, 0, &saved.robust_head, &saved.robust_len) != 0)
            saved.robust_head = NULL;
#ifdef SYS_rseq
        /* glibc >= 2.35 exports where its area is (0 size: it registered none) */
        const ptrdiff_t *offset = dlsym(RTLD_DEFAULT, "__rseq_offset");
        const unsigned int *size = dlsym(RTLD_DEFAULT, "__rseq_size");
        if (offset && size && *size) {
            saved.rseq_area = (char *)__builtin_thread_pointer() + *offset;
            saved.rseq_len = *size < 32 ? 32 : *size; /* the kernel's original struct rseq is 32 bytes */
        }
#endif
        looked = 1;
    }
    *r = saved;
}

static void restore_thread_registrations(const struct thread_registrations *r, int rseq)
{
    if (r->robust_head)
        syscall(SYS_set_robust_list, r->robust_head, r->robust_len);
#ifdef SYS_rseq
    if (rseq && r->rseq_area)
        syscall(SYS_rseq, r->rseq_area, r->rseq_len, 0, EVALBOX_RSEQ_SIG);
#else
    (void)rseq;
#endif
}

static inline void *stack_top(char *p)
{
    return (void *)((uintptr_t)p & ~(uintptr_t)15);
}

/* SIGUSR1 from the caller: end the run. kill(-1) from a namespace's init reaches every other
 * process of that namespace and nothing outside it. */
static NO_TLS void kill_namespace(int sig)
{
    (void)sig;
    raw4(SYS_kill, -1, SIGKILL, 0, 0);
}

/* The init's life once the program runs: reap until the program exits, then report and exit. */
static NO_TLS void init_reap(int errpipe, pid_t program, int detach_root)
{
    struct init_record rec = {INIT_RECORD_KIND, 0, 0, 0, 0};
    for (;;) {
        int status = 0;
        struct rusage ru;
        long pid = raw4(SYS_wait4, -1, (long)&status, __WALL, (long)&ru);
        if (pid == -EINTR)
            continue;
        if (pid < 0) { /* ECHILD: cannot happen while the program lives; report what we have */
            rec.status = 127 << 8;
            break;
        }
        rec.utime_us += (int64_t)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec;
        rec.stime_us += (int64_t)ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec;
        if (ru.ru_maxrss > rec.maxrss_kb)
            rec.maxrss_kb = ru.ru_maxrss;
        if (pid == program) {
            rec.status = status;
            break;
        }
    }
    /* Detach the jail's mounts lazily: since Linux 6.15 their release then waits for RCU in the
     * background, where the namespace's teardown at exit would wait for it (~0.1-3 ms). (Only
     * from the jail's own mount namespace: a warm copy's init may live in the host's.) */
    if (detach_root)
        raw4(SYS_umount2, (long)"/", MNT_DETACH, 0, 0);
    raw4(SYS_write, errpipe, (long)&rec, sizeof rec, 0);
    for (;;)
        raw4(SYS_exit_group, 0, 0, 0, 0); /* the kernel kills the rest of the namespace */
}

/* Set a network interface up (loopback) with an ioctl on a datagram socket of this namespace. */
static int interface_up(const char *name)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return errno;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    int err = 0;
    if (ioctl(fd, SIOCGIFFLAGS, &ifr) != 0)
        err = errno;
    else if (!(ifr.ifr_flags & IFF_UP)) {
        ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
        if (ioctl(fd, SIOCSIFFLAGS, &ifr) != 0)
            err = errno;
    }
    close(fd);
    return err;
}

/* "<id> <id> 1\n" into out; returns the length. */
static size_t id_map_line(char out[64], long id)
{
    size_t len = put_decimal(out, (unsigned long)id);
    out[len++] = ' ';
    len += put_decimal(out + len, (unsigned long)id);
    out[len++] = ' ';
    out[len++] = '1';
    out[len++] = '\n';
    return len;
}

static int write_proc_self(const char *name, const char *data, size_t len)
{
    int fd = open(name, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    int err = write(fd, data, len) == (ssize_t)len ? 0 : errno;
    close(fd);
    return err;
}

/* An unprivileged caller's jail lives in a user namespace of its own (cloned with the others,
 * which it then owns): map the caller's uid and gid to themselves, the only mapping the kernel
 * allows an unprivileged writer (and setgroups must be denied first). The init then holds every
 * capability over its namespaces (and none over the host's), which building the root needs; the
 * program drops them all in its lockdown as everywhere. Files keep the caller's ids. */
static int user_namespace_maps(const struct config *c)
{
    char line[64];
    int err = write_proc_self("/proc/self/setgroups", "deny", 4);
    if (!err)
        err = write_proc_self("/proc/self/uid_map", line, id_map_line(line, c->outer_uid));
    if (!err)
        err = write_proc_self("/proc/self/gid_map", line, id_map_line(line, c->outer_gid));
    return err;
}

/* The namespaces' set-up, done by the init while the caller waits. */
static void init_namespaces(const struct config *c)
{
    if (c->jail_flags & CLONE_NEWUSER) {
        int err = user_namespace_maps(c);
        if (err)
            report(c, STEP_USERNS, err);
    }
    if (c->netns_fd >= 0 && setns(c->netns_fd, CLONE_NEWNET) != 0)
        report(c, STEP_JAIL, errno);
    if (c->jail_flags & CLONE_NEWNET) {
        int err = interface_up("lo");
        if (err)
            report(c, STEP_JAIL, err);
    }
    if (c->hostname && (c->jail_flags & CLONE_NEWUTS) && sethostname(c->hostname, strlen(c->hostname)) != 0)
        report(c, STEP_JAIL, errno);
    if (c->template_fd >= 0) {
        /* A private copy of the template's namespace: its root is the jail's static root. */
        open_root_sources(c);
        struct stat host_root, root_st;
        if (stat("/", &host_root) != 0)
            report(c, STEP_ROOT, errno);
        if (setns(c->template_fd, CLONE_NEWNS) != 0 || unshare(CLONE_NEWNS) != 0)
            report(c, STEP_ROOT, errno);
        int root = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (root < 0 || fstat(root, &root_st) != 0)
            report(c, STEP_ROOT, errno);
        /* a template is a root of its own: an fd that names the host's mount namespace (a
         * stale number) must never have the run's operations applied to the host's root */
        if (root_st.st_dev == host_root.st_dev && root_st.st_ino == host_root.st_ino)
            report(c, STEP_ROOT, EBADF);
        apply_root_ops(c, root);
        close(root);
        if (landlock_rule_at(c, "/", c->root_rights) != 0)
            report(c, STEP_ROOT, errno);
    } else if (c->jail_flags & CLONE_NEWNS) {
        /* Nothing mounted here may propagate to the host. */
        if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
            report(c, STEP_JAIL, errno);
        if (c->n_root > 0) {
            build_root(c); /* its /proc included */
            if (landlock_rule_at(c, "/", c->root_rights) != 0)
                report(c, STEP_ROOT, errno);
        } else if (c->jail_flags & CLONE_NEWPID) {
            /* A /proc of this PID namespace: only the sandbox's own processes. */
            /* hidepid=2: the init itself (which shares the caller's memory, and so its command
             * line) is invisible to the program, which may not ptrace it. */
            if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2") != 0)
                report(c, STEP_JAIL, errno);
            if (c->landlock_fd >= 0 && c->proc_rights) {
                int dir = open("/proc", O_PATH | O_DIRECTORY | O_CLOEXEC);
                if (dir < 0)
                    report(c, STEP_JAIL, errno);
                struct __attribute__((packed)) {
                    uint64_t allowed_access;
                    int32_t parent_fd;
                } rule = {c->proc_rights, dir};
                if (syscall(SYS_landlock_add_rule, c->landlock_fd, 1 /* PATH_BENEATH */, &rule, 0U) != 0)
                    report(c, STEP_JAIL, errno);
                close(dir);
            }
        }
    }
}

struct init_args {
    struct config *c;
    char *slot;
};

/* An init's dispositions: the default for all (the caller's or a template's handlers must never
 * run in an init), SIGUSR1 kills the namespace. Called with every signal blocked. */
static void init_signals(void)
{
    for (int sig = 1; sig < _NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = sig == SIGUSR1 ? kill_namespace : SIG_DFL;
        sa.sa_flags = SA_RESTART;
        sigfillset(&sa.sa_mask);
        sigaction(sig, &sa, NULL);
    }
}

static int init_main(void *arg)
{
    struct init_args *a = arg;
    struct config *c = a->c;
    char *slot = a->slot;
    /* Signals arrive blocked (see spawn). */
    init_signals();
    /* Dies with the caller's thread, and so does the namespace. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
        report(c, STEP_PDEATHSIG, errno);
    init_namespaces(c);

    volatile int failed = 0;
    c->failed = &failed;
    int clone_err = 0;
    pid_t program = clone_run(child_main, slot + SLOT_GUARD, stack_top(slot + SLOT_GUARD + SLOT_CHILD_STACK),
                              CLONE_VM | CLONE_VFORK | SIGCHLD, c, NULL, &clone_err);
    if (program < 0)
        report(c, STEP_JAIL, clone_err);
    if (failed) {
        /* The child reported its step, so the caller runs again: raw calls only. */
        int status;
        while (raw4(SYS_wait4, program, (long)&status, __WALL, 0) == -EINTR)
            ;
        for (;;)
            raw4(SYS_exit_group, 127, 0, 0, 0);
    }
    /* The init holds a copy of the caller's fd table (pipes of other sandboxes, the write end of
     * this one's stdin...): keep only the report pipe. */
    int errpipe = c->errpipe;
    if (errpipe > 0)
        raw4(SYS_close_range, 0, errpipe - 1, 0, 0);
    raw4(SYS_close_range, errpipe + 1, ~0U, 0, 0);
    /* From here on the caller runs again: raw calls only. */
    sigset_t only_usr1;
    sigfillset(&only_usr1);
    sigdelset(&only_usr1, SIGUSR1);
    raw4(SYS_rt_sigprocmask, SIG_SETMASK, (long)&only_usr1, 0, _NSIG / 8);
    int started[2] = {STEP_STARTED, (int)program};
    raw4(SYS_write, errpipe, (long)started, sizeof started, 0);
    init_reap(errpipe, program, 1);
    return 0;
}

/* ---- the jail of a warm copy ----
 *
 * A warm template (warm_template.py) starts each jailed run with fork_jail: an init that shares
 * the template's memory (CLONE_VM, on a slot's stack; no Python runs in it) is cloned into fresh
 * PID, mount (or none: the program copies a template mount namespace), IPC and UTS namespaces as
 * their PID 1 and the caller's child, as a cold jail's init is; it forks the program's process
 * at once (PID 2, a copy of the interpreter, which returns to Python, reads its own request and
 * locks itself down) and becomes the init.
 * The program's lockdown_self hands the init the caller's report pipe and the caller's pidfd,
 * builds the jail's namespaces itself (init_namespaces: the pooled network namespace, hostname,
 * root, /proc), then locks down; on their own socket it tells the init how that went: (step,
 * errno) if it failed, (STEP_STARTED, 0) once the program runs. The init reports on the caller's
 * pipe exactly as a cold init does (STEP_STARTED and the program's pid, or the failing step; then
 * the init_record), reaps and exits (init_reap). The init never reads a run's request; what it
 * keeps of its run (wait statuses, rusage) is on its slot stack, which every copy of the template
 * drops before anything runs (drop_inherited_slots). */

/* One fd from a Unix socket (SCM_RIGHTS), with raw calls; -1 if none came. */
static NO_TLS int recv_fd(int sock)
{
    struct fd_message m;
    fd_message_init(&m);
    long got;
    while ((got = raw4(SYS_recvmsg, sock, (long)&m.msg, MSG_CMSG_CLOEXEC, 0)) == -EINTR)
        ;
    struct cmsghdr *cmsg = got == 1 ? CMSG_FIRSTHDR(&m.msg) : NULL;
    if (!cmsg || cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS ||
        cmsg->cmsg_len != CMSG_LEN(sizeof(int)))
        return -1;
    int fd;
    memcpy(&fd, CMSG_DATA(cmsg), sizeof fd);
    return fd;
}

static NO_TLS void warm_init_give_up(long program, int status)
{
    int ignored;
    raw4(SYS_kill, program, SIGKILL, 0, 0);
    while (raw4(SYS_wait4, program, (long)&ignored, __WALL, 0) == -EINTR)
        ;
    for (;;)
        raw4(SYS_exit_group, status, 0, 0, 0);
}

/* The init of a warm copy's jail (see above), once fork_jail's caller runs again: raw calls only
 * (it shares that template's memory and C library state). `sock` is its end of the program's
 * socket. Its dispositions are set and signals blocked. Never returns. */
static NO_TLS void warm_init(int sock, long program, int detach_root)
{
    /* It holds copies of the template's fds (its control socket, this run's channel): only the
     * program's socket stays. */
    if (sock > 0)
        raw4(SYS_close_range, 0, sock - 1, 0, 0);
    raw4(SYS_close_range, sock + 1, ~0U, 0, 0);
    int caller = recv_fd(sock);
    int alive = caller >= 0 ? recv_fd(sock) : -1;
    if (alive < 0) /* the program failed before: it reported on the caller's pipe itself */
        warm_init_give_up(program, 127);
    /* getppid() is 0 here (the parent lives outside the namespace): its pidfd says whether the
     * caller died before the signal was armed. */
    struct pollfd parent = {.fd = alive, .events = POLLIN};
    struct timespec now = {0, 0};
    if (raw4(SYS_ppoll, (long)&parent, 1, (long)&now, 0) != 0) {
        int gone[2] = {STEP_PARENT_GONE, ESRCH};
        raw4(SYS_write, caller, (long)gone, sizeof gone, 0);
        warm_init_give_up(program, 127);
    }
    raw4(SYS_close, alive, 0, 0, 0);
    int msg[2];
    long got;
    while ((got = raw4(SYS_read, sock, (long)msg, sizeof msg, 0)) == -EINTR)
        ;
    /* The program says (STEP_STARTED, 0) once it runs; its lockdown's failing step otherwise.
     * End of file without a word: its process died first (killed from outside). */
    if (got != (long)sizeof msg || msg[0] != STEP_STARTED) {
        if (got == 0) {
            msg[0] = STEP_PROGRAM_GONE;
            msg[1] = ESRCH;
        } else if (got != (long)sizeof msg) {
            msg[0] = STEP_JAIL;
            msg[1] = EPROTO;
        }
        raw4(SYS_write, caller, (long)msg, sizeof msg, 0);
        warm_init_give_up(program, 127);
    }
    raw4(SYS_close, sock, 0, 0, 0);
    sigset_t only_usr1;
    sigfillset(&only_usr1);
    sigdelset(&only_usr1, SIGUSR1);
    raw4(SYS_rt_sigprocmask, SIG_SETMASK, (long)&only_usr1, 0, _NSIG / 8);
    int started[2] = {STEP_STARTED, (int)program};
    raw4(SYS_write, caller, (long)started, sizeof started, 0);
    init_reap(caller, (pid_t)program, detach_root);
}

/* What fork_jail shares with the init it clones: the init runs on a slot's stack in the
 * template's own memory (CLONE_VM: no copy of the interpreter's page tables to make and tear down
 * for a process that runs no Python), while fork_jail waits on `forked` for it to fork the
 * program. The program's process, a copy of that memory taken while fork_jail waits, resumes
 * fork_jail at `resume`. */
struct warm_fork {
    void *resume[5]; /* __builtin_setjmp */
    int *tid_address;
    unsigned long child_flags;
    int init_sock, program_sock, forked[2];
    int detach_root;
    sigset_t old_mask;
    struct thread_registrations registered;
};

static NO_TLS __attribute__((noreturn)) void resume_as_program(struct warm_fork *f)
{
    __builtin_longjmp(f->resume, 1);
}

static NO_TLS int warm_init_main(void *arg)
{
    struct warm_fork *f = arg;
    /* The template is blocked until the word on `forked`: this memory is its own, as fork_jail
     * left it, so the copy forked now is the one a fork would have made. */
    long program = syscall(SYS_clone, SIGCHLD | f->child_flags, 0L, NULL, f->tid_address, 0L);
    if (program == 0)
        resume_as_program(f); /* the program's process (PID 2) */
    int sock = f->init_sock, forked = f->forked[1], detach_root = f->detach_root;
    if (program < 0) /* the template reads end of file; the caller sees its report pipe close */
        for (;;)
            raw4(SYS_exit_group, 127, 0, 0, 0);
    /* Still before the word (the C library's calls may set the template's errno): no handler of
     * the template may ever run here, and the init dies with the caller. Not made non-dumpable:
     * that flag belongs to the memory, which is the template's; the init is root's and hidden
     * (hidepid), the program runs as another uid under Landlock, so neither its /proc files nor
     * its memory are within the program's reach. */
    init_signals();
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
        warm_init_give_up(program, 127);
    char word = 1;
    raw4(SYS_write, forked, (long)&word, 1, 0);
    warm_init(sock, program, detach_root); /* never returns */
    return 127;
}

/* In the program's process (PID 2), signals blocked: hand the init what it reports on, then
 * build the jail's namespaces; from here on failures are reported to the init. */
static void warm_jail_program(struct config *c, int alive_fd, int init_sock)
{
    if (send_fd(c, init_sock, c->errpipe) != 0 || send_fd(c, init_sock, alive_fd) != 0)
        report(c, STEP_JAIL, errno); /* on the caller's pipe: the init gives up on end of file */
    close(c->errpipe);
    close(alive_fd);
    c->errpipe = init_sock;
    init_namespaces(c);
}

/* ---- argument conversion (parent side, GIL held) ---- */

static char **bytes_list(PyObject *seq, PyObject **keep)
{
    PyObject *fast = PySequence_Fast(seq, "expected a sequence of bytes");
    if (!fast)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    char **out = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    if (!out) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        if (!PyBytes_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "argv and env items must be bytes");
            PyMem_Free(out);
            Py_DECREF(fast);
            return NULL;
        }
        out[i] = PyBytes_AS_STRING(item);
    }
    *keep = fast; /* items stay alive as long as the fast sequence does */
    return out;
}

static int int_list(PyObject *seq, int *out, int max, int *count, const char *what)
{
    PyObject *fast = PySequence_Fast(seq, what);
    if (!fast)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n > max) {
        PyErr_Format(PyExc_ValueError, "too many %s (at most %d)", what, max);
        Py_DECREF(fast);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        out[i] = (int)PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
        if (out[i] == -1 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return -1;
        }
    }
    *count = (int)n;
    Py_DECREF(fast);
    return 0;
}

/* rlimits: [(resource, soft, hard), ...] */
static int parse_rlimits(PyObject *obj, struct config *c)
{
    PyObject *fast = PySequence_Fast(obj, "rlimits must be a sequence of (resource, soft, hard)");
    if (!fast)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n > MAX_RLIMITS) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "too many rlimits");
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int resource;
        unsigned long long soft, hard;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "iKK", &resource, &soft, &hard)) {
            Py_DECREF(fast);
            return -1;
        }
        c->rlimits[i].resource = resource;
        c->rlimits[i].value.rlim_cur = soft;
        c->rlimits[i].value.rlim_max = hard;
    }
    Py_DECREF(fast);
    c->n_rlimits = (int)n;
    return 0;
}

/* filters: [(program bytes, flags), ...]; the programs stay alive through `keep` (set even on
 * failure: the caller releases it). */
static int parse_filters(PyObject *obj, struct config *c, PyObject **keep)
{
    *keep = PySequence_Fast(obj, "filters must be a sequence of (program bytes, flags)");
    if (!*keep)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(*keep);
    if (n > MAX_FILTERS) {
        PyErr_SetString(PyExc_ValueError, "too many seccomp filters");
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *program;
        unsigned int flags;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(*keep, i), "O!I", &PyBytes_Type, &program, &flags))
            return -1;
        Py_ssize_t size = PyBytes_GET_SIZE(program);
        if (size == 0 || size % sizeof(struct sock_filter) != 0 || size / sizeof(struct sock_filter) > 0xFFFF) {
            PyErr_SetString(PyExc_ValueError, "a seccomp program must be a non-empty array of sock_filter");
            return -1;
        }
        c->filters[i].prog.len = (unsigned short)(size / sizeof(struct sock_filter));
        c->filters[i].prog.filter = (struct sock_filter *)PyBytes_AS_STRING(program);
        c->filters[i].flags = flags;
    }
    c->n_filters = (int)n;
    return 0;
}

/* overlays: [(target bytes, tmpfs options bytes (b"": no tmpfs), landlock rights int,
 *             [(path bytes, is_dir bool[, source bytes or None[, readonly bool[, no_symlinks bool]]]), ...]), ...]
 * The strings stay alive through `keep`, a list holding every tuple. */
static int parse_overlays(PyObject *obj, struct config *c, PyObject **keep)
{
    PyObject *fast = PySequence_Fast(obj, "overlays must be a sequence");
    if (!fast)
        return -1;
    *keep = fast;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n > MAX_OVERLAYS) {
        PyErr_Format(PyExc_ValueError, "at most %d overlays", MAX_OVERLAYS);
        return -1;
    }
    for (Py_ssize_t o = 0; o < n; o++) {
        PyObject *target, *options, *binds;
        unsigned long long rights;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, o), "O!O!KO", &PyBytes_Type, &target, &PyBytes_Type,
                              &options, &rights, &binds))
            return -1;
        if (!PyList_Check(binds)) {
            PyErr_SetString(PyExc_TypeError, "overlay binds must be a list");
            return -1;
        }
        struct overlay *ov = &c->overlays[o];
        ov->target = PyBytes_AS_STRING(target);
        ov->options = PyBytes_AS_STRING(options);
        ov->rights = rights;
        ov->first = c->n_binds;
        ov->count = (int)PyList_GET_SIZE(binds);
        if (c->n_binds + ov->count > MAX_BINDS) {
            PyErr_Format(PyExc_ValueError, "at most %d bound-back paths", MAX_BINDS);
            return -1;
        }
        for (int i = 0; i < ov->count; i++) {
            PyObject *path, *source = Py_None;
            int is_dir, readonly = 0, no_symlinks = 0;
            if (!PyArg_ParseTuple(PyList_GET_ITEM(binds, i), "O!p|Opp", &PyBytes_Type, &path, &is_dir, &source,
                                  &readonly, &no_symlinks))
                return -1;
            if (source != Py_None && !PyBytes_Check(source)) {
                PyErr_SetString(PyExc_TypeError, "a bind source must be bytes or None");
                return -1;
            }
            c->binds[c->n_binds].path = PyBytes_AS_STRING(path);
            c->binds[c->n_binds].source = source != Py_None ? PyBytes_AS_STRING(source) : NULL;
            c->binds[c->n_binds].is_dir = is_dir;
            c->binds[c->n_binds].readonly = readonly;
            c->binds[c->n_binds].no_symlinks = no_symlinks;
            c->n_binds++;
        }
        c->n_overlays++;
    }
    return 0;
}

/* Clone the jail's init (see init_main) and wait, without the GIL, until it reports: the program
 * runs (STEP_STARTED), a step failed, or the init died. Returns (pid, pidfd, report bytes). */
static PyObject *spawn_jailed(struct config *c, int report_fd, int sibling)
{
    char *slot = take_slot();
    if (!slot)
        return PyErr_NoMemory();
    struct slot_head *head = SLOT_HEAD(slot);
    head->tid = 1;
    struct init_args a = {c, slot};
    int pidfd = -1, saved_errno = 0;
    char buf[8];
    ssize_t got = 0;
    pid_t pid;
    Py_BEGIN_ALLOW_THREADS
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pid = clone(init_main, stack_top((char *)head),
                CLONE_VM | CLONE_PIDFD | CLONE_CHILD_CLEARTID | c->jail_flags | SIGCHLD | (sibling ? CLONE_PARENT : 0),
                &a, &pidfd, NULL, &head->tid);
    saved_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pid > 0) {
        /* The init reads `c` until it reports; the report is 8 bytes written at once. */
        struct pollfd p[2] = {{.fd = report_fd, .events = POLLIN}, {.fd = pidfd, .events = POLLIN}};
        for (;;) {
            int n = poll(p, 2, -1);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0) {
                saved_errno = errno;
                break;
            }
            if (p[0].revents) {
                got = read(report_fd, buf, sizeof buf);
                if (got < 0 && errno == EINTR)
                    continue;
                break;
            }
            if (p[1].revents) { /* the init died without a word; its report may still be in flight */
                struct pollfd last = {.fd = report_fd, .events = POLLIN};
                got = poll(&last, 1, 0) == 1 ? read(report_fd, buf, sizeof buf) : 0;
                break;
            }
        }
    }
    Py_END_ALLOW_THREADS
    if (pid < 0) {
        head->tid = 0;
        errno = saved_errno;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return Py_BuildValue("(iiy#)", (int)pid, pidfd, buf, (Py_ssize_t)(got > 0 ? got : 0));
}

/* root: [(op, path bytes, data bytes, mode, flags, Landlock rights), ...]; strings stay alive in
 * `keep`. */
static int parse_root(PyObject *obj, struct config *c, PyObject **keep)
{
    PyObject *fast = PySequence_Fast(obj, "root must be a sequence");
    if (!fast)
        return -1;
    *keep = fast;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n == 0)
        return 0;
    c->root = PyMem_Calloc((size_t)n, sizeof *c->root);
    c->root_fds = PyMem_Calloc((size_t)n, sizeof *c->root_fds);
    if (!c->root || !c->root_fds) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        struct root_entry *e = &c->root[i];
        PyObject *path, *data;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "iO!O!IIK", &e->op, &PyBytes_Type, &path,
                              &PyBytes_Type, &data, &e->mode, &e->flags, &e->rights))
            return -1;
        e->path = PyBytes_AS_STRING(path);
        if (e->path[0] != '/') {
            PyErr_SetString(PyExc_ValueError, "root paths must be absolute");
            return -1;
        }
        e->data = PyBytes_AS_STRING(data);
        e->data_len = PyBytes_GET_SIZE(data);
    }
    c->n_root = (int)n;
    return 0;
}

PyDoc_STRVAR(template_doc,
"build_template(root) -> fd\n\n"
"A mount namespace whose root (read-only tmpfs) is built from `root` (spawn's format), for\n"
"jails to copy (spawn's template_fd). Raises OSError(errno) with the failing step's errno.");

static PyObject *build_template(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *root_obj, *keep_root = NULL, *result = NULL;
    if (!PyArg_ParseTuple(args, "O", &root_obj))
        return NULL;
    struct config c;
    memset(&c, 0, sizeof c);
    c.cgroup_dir_fd = -1;
    c.landlock_fd = -1;
    c.template_fd = -1;
    c.uid = c.gid = -1;
    int pipefd[2] = {-1, -1};
    void *stack = NULL;
    if (parse_root(root_obj, &c, &keep_root) < 0)
        goto done;
    if (pipe2(pipefd, O_CLOEXEC) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    c.errpipe = pipefd[1];
    stack = PyMem_RawMalloc(CHILD_STACK_SIZE);
    if (!stack) {
        PyErr_NoMemory();
        goto done;
    }
    int msg[2] = {0, 0}, status = 0;
    ssize_t got;
    pid_t pid;
    Py_BEGIN_ALLOW_THREADS
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pid = clone(template_main, stack_top((char *)stack + CHILD_STACK_SIZE),
                CLONE_VM | CLONE_VFORK | CLONE_FILES | CLONE_NEWNS | SIGCHLD, &c);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    got = pid > 0 ? read(pipefd[0], msg, sizeof msg) : -1;
    if (pid > 0)
        waitpid(pid, &status, __WALL);
    Py_END_ALLOW_THREADS
    if (pid < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
    } else if (got != sizeof msg || msg[0] != STEP_STARTED) {
        errno = got == sizeof msg ? msg[1] : EIO;
        PyErr_SetFromErrno(PyExc_OSError);
    } else {
        result = PyLong_FromLong(msg[1]);
    }
done:
    if (pipefd[0] >= 0)
        close(pipefd[0]);
    if (pipefd[1] >= 0)
        close(pipefd[1]);
    PyMem_RawFree(stack);
    Py_XDECREF(keep_root);
    PyMem_Free(c.root);
    PyMem_Free(c.root_fds);
    return result;
}

PyDoc_STRVAR(spawn_doc,
"spawn(path, argv, envp, cwd, stdio, errpipe, parent_pid, cgroup_fds, rlimits,\n"
"      drop_bounding_set, last_cap, securebits, uid, gid, landlock_fd, filters,\n"
"      listener_sock, umask, overlays=(), magic=0, jail_flags=0, netns_fd=-1,\n"
"      proc_rights=0, hostname=None, report_fd=-1, ..., started=[]) -> (pid, pidfd)\n"
"      or, in a jail, (pid, pidfd, report)\n\n"
"Clone a child that applies the prepared lockdown and execs path. Returns as soon as the child\n"
"has exec'd (in a jail: once its init reports). sibling=True: the child (in a jail, its init) is\n"
"the caller's parent's child (CLONE_PARENT: a slot's launcher starts runs for the process that\n"
"waits for them). On failure the child exits 127 after writing (step, errno) to errpipe, which the\n"
"caller reads; this function only raises for errors of the clone itself. cgroup_dir_fd: the run's\n"
"cgroup v2 directory; the program (in a jail: the program, not its init) is born in it\n"
"(clone3 CLONE_INTO_CGROUP), or on kernels before 5.7 writes itself in through cgroup_fds.\n"
"started: a list the result is appended to before this function returns.");

static PyObject *spawn(PyObject *self, PyObject *args, PyObject *kwargs)
{
    (void)self;
    static char *keywords[] = {"path", "argv", "envp", "cwd", "stdio", "errpipe", "parent_pid", "cgroup_fds",
                               "rlimits", "drop_bounding_set", "last_cap", "securebits", "uid", "gid",
                               "landlock_fd", "filters", "listener_sock", "umask", "overlays", "magic",
                               "jail_flags", "netns_fd", "proc_rights", "hostname", "report_fd", "root",
                               "root_rights", "template_fd", "sibling", "cgroup_dir_fd", "started", NULL};
    PyObject *path, *argv_obj, *envp_obj, *cwd_obj, *stdio_obj, *cgroup_obj, *rlimits_obj, *filters_obj;
    PyObject *overlays_obj = NULL;
    int errpipe, parent_pid, drop_bounding_set, last_cap, landlock_fd, listener_sock;
    long securebits, uid, gid;
    unsigned int umask_value;
    unsigned long long magic = 0, proc_rights = 0;
    int jail_flags = 0, netns_fd = -1, report_fd = -1;
    const char *hostname = NULL;
    PyObject *root_obj = NULL;
    unsigned long long root_rights = 0;
    int template_fd = -1, sibling = 0, cgroup_dir_fd = -1;
    PyObject *started = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!OOOOiiOOpillliOiI|OKiiKziOKipiO!", keywords, &PyBytes_Type, &path,
                                     &argv_obj, &envp_obj, &cwd_obj, &stdio_obj, &errpipe, &parent_pid,
                                     &cgroup_obj, &rlimits_obj, &drop_bounding_set, &last_cap, &securebits, &uid,
                                     &gid, &landlock_fd, &filters_obj, &listener_sock, &umask_value,
                                     &overlays_obj, &magic, &jail_flags, &netns_fd, &proc_rights, &hostname,
                                     &report_fd, &root_obj, &root_rights, &template_fd, &sibling, &cgroup_dir_fd,
                                     &PyList_Type, &started))
        return NULL;
    if (jail_flags && report_fd < 0) {
        PyErr_SetString(PyExc_ValueError, "a jail needs report_fd (the read end of errpipe)");
        return NULL;
    }

    struct config c;
    memset(&c, 0, sizeof c);
    c.cgroup_dir_fd = -1;
    PyObject *keep_argv = NULL, *keep_envp = NULL, *keep_filters = NULL, *keep_overlays = NULL, *result = NULL;
    PyObject *keep_root = NULL;
    char **argv = NULL, **envp = NULL;
    void *stack = NULL;

    c.path = PyBytes_AS_STRING(path);
    if (cwd_obj != Py_None) {
        if (!PyBytes_Check(cwd_obj)) {
            PyErr_SetString(PyExc_TypeError, "cwd must be bytes or None");
            return NULL;
        }
        c.cwd = PyBytes_AS_STRING(cwd_obj);
    }
    if (!(argv = bytes_list(argv_obj, &keep_argv)) || !(envp = bytes_list(envp_obj, &keep_envp)))
        goto done;
    c.argv = argv;
    c.envp = envp;
    int n_stdio = 0;
    if (int_list(stdio_obj, c.stdio, 3, &n_stdio, "stdio fds") < 0)
        goto done;
    if (n_stdio != 3) {
        PyErr_SetString(PyExc_ValueError, "stdio must hold exactly 3 fds");
        goto done;
    }
    if (int_list(cgroup_obj, c.cgroup_fds, MAX_CGROUP_FDS, &c.n_cgroup_fds, "cgroup fds") < 0)
        goto done;

    if (parse_rlimits(rlimits_obj, &c) < 0 || parse_filters(filters_obj, &c, &keep_filters) < 0)
        goto done;

    c.errpipe = errpipe;
    c.parent_pid = parent_pid;
    c.drop_bounding_set = drop_bounding_set;
    c.last_cap = last_cap;
    c.securebits = securebits;
    c.uid = uid;
    c.gid = gid;
    c.landlock_fd = landlock_fd;
    c.listener_sock = listener_sock;
    c.umask = (mode_t)umask_value;
    c.magic = magic;
    c.jail_flags = jail_flags;
    c.outer_uid = geteuid();
    c.outer_gid = getegid();
    c.netns_fd = netns_fd;
    c.proc_rights = proc_rights;
    c.hostname = hostname;
    c.root_rights = root_rights;
    c.template_fd = template_fd;
    c.cgroup_dir_fd = cgroup_dir_fd;
    if (root_obj && root_obj != Py_None && parse_root(root_obj, &c, &keep_root) < 0)
        goto done;
    if (c.template_fd >= 0 && (jail_flags & CLONE_NEWNS)) {
        PyErr_SetString(PyExc_ValueError, "a template's copy is the mount namespace: no CLONE_NEWNS");
        goto done;
    }
    if (c.n_root > 0 && !(jail_flags & CLONE_NEWNS) && c.template_fd < 0) {
        PyErr_SetString(PyExc_ValueError, "a constructed root needs a mount namespace");
        goto done;
    }
    if (overlays_obj && parse_overlays(overlays_obj, &c, &keep_overlays) < 0)
        goto done;
    if (c.n_overlays > 0 && c.landlock_fd < 0) {
        PyErr_SetString(PyExc_ValueError, "overlays need a Landlock ruleset");
        goto done;
    }

    if (jail_flags) {
        result = spawn_jailed(&c, report_fd, sibling);
        goto done;
    }

    stack = PyMem_RawMalloc(CHILD_STACK_SIZE);
    if (!stack) {
        PyErr_NoMemory();
        goto done;
    }
    void *top = stack_top((char *)stack + CHILD_STACK_SIZE);

    int pidfd = -1, saved_errno = 0;
    pid_t pid;
    Py_BEGIN_ALLOW_THREADS
    /* No handler of the caller may run in the child while it shares the caller's memory. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pid = clone_run(child_main, stack, top, CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD | (sibling ? CLONE_PARENT : 0),
                    &c, &pidfd, &saved_errno);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    Py_END_ALLOW_THREADS

    if (pid < 0) {
        errno = saved_errno;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    result = Py_BuildValue("(ii)", (int)pid, pidfd);

done:
    /* The child runs: recorded in the caller's list before Python sees the result, so that a
       signal handler's exception raised as this call returns cannot lose it (the caller kills
       and reaps what the list names). */
    if (result && started && PyList_Append(started, result) < 0)
        PyErr_Clear(); /* (out of memory: the result still says it) */
    PyMem_RawFree(stack);
    PyMem_Free(argv);
    PyMem_Free(envp);
    Py_XDECREF(keep_argv);
    Py_XDECREF(keep_envp);
    Py_XDECREF(keep_filters);
    Py_XDECREF(keep_overlays);
    Py_XDECREF(keep_root);
    PyMem_Free(c.root);
    PyMem_Free(c.root_fds);
    return result;
}

PyDoc_STRVAR(lockdown_self_doc,
"lockdown_self(cwd, stdio, errpipe, parent_pid, cgroup_fds, rlimits, drop_bounding_set, last_cap,\n"
"              securebits, uid, gid, landlock_fd, filters, listener_sock, umask, overlays=(),\n"
"              jail_flags=0, netns_fd=-1, proc_rights=0, hostname=None, root=None, root_rights=0,\n"
"              template_fd=-1, alive_fd=-1, init_sock=-1) -> errpipe\n\n"
"Apply spawn()'s lockdown to the calling process itself, which must be single-threaded (a warm\n"
"template's fresh copy). The same steps as spawn's child, in the same order, except that every fd\n"
"above stdio is closed (no exec follows to close them) but the error pipe, which the caller closes\n"
"once the program runs: its fd is returned. On failure it writes (step, errno) to errpipe and exits\n"
"127: it never returns half locked down.\n\n"
"jail_flags: the copy is a jail's program (PID 2, forked by fork_jail's init; init_sock is its\n"
"socket to the init, alive_fd a pidfd of the caller): it hands the init errpipe and alive_fd,\n"
"builds the jail's namespaces as a cold init does (network, hostname, root, /proc), then locks\n"
"down; failures from then on go to the init, which reports them on errpipe as a cold init does.\n"
"The returned fd is then init_sock.");

static PyObject *lockdown_self(PyObject *self, PyObject *args, PyObject *kwargs)
{
    (void)self;
    static char *keywords[] = {"cwd", "stdio", "errpipe", "parent_pid", "cgroup_fds", "rlimits",
                               "drop_bounding_set", "last_cap", "securebits", "uid", "gid", "landlock_fd",
                               "filters", "listener_sock", "umask", "overlays", "jail_flags", "netns_fd",
                               "proc_rights", "hostname", "root", "root_rights", "template_fd", "alive_fd",
                               "init_sock", NULL};
    PyObject *cwd_obj, *stdio_obj, *cgroup_obj, *rlimits_obj, *filters_obj, *overlays_obj = NULL, *root_obj = NULL;
    int errpipe, parent_pid, drop_bounding_set, last_cap, landlock_fd, listener_sock;
    long securebits, uid, gid;
    unsigned int umask_value;
    int jail_flags = 0, netns_fd = -1, template_fd = -1, alive_fd = -1, init_sock = -1;
    unsigned long long proc_rights = 0, root_rights = 0;
    const char *hostname = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!OiiOOpillliOiI|OiiKzOKiii", keywords, &PyBytes_Type, &cwd_obj,
                                     &stdio_obj, &errpipe, &parent_pid, &cgroup_obj, &rlimits_obj,
                                     &drop_bounding_set, &last_cap, &securebits, &uid, &gid, &landlock_fd,
                                     &filters_obj, &listener_sock, &umask_value, &overlays_obj, &jail_flags,
                                     &netns_fd, &proc_rights, &hostname, &root_obj, &root_rights, &template_fd,
                                     &alive_fd, &init_sock))
        return NULL;
    struct config c;
    memset(&c, 0, sizeof c);
    c.cgroup_dir_fd = -1;
    PyObject *keep_filters = NULL, *keep_overlays = NULL, *keep_root = NULL;
    c.cwd = PyBytes_AS_STRING(cwd_obj);
    int n_stdio = 0;
    if (int_list(stdio_obj, c.stdio, 3, &n_stdio, "stdio fds") < 0)
        return NULL;
    if (n_stdio != 3) {
        PyErr_SetString(PyExc_ValueError, "stdio must hold exactly 3 fds");
        return NULL;
    }
    if (int_list(cgroup_obj, c.cgroup_fds, MAX_CGROUP_FDS, &c.n_cgroup_fds, "cgroup fds") < 0)
        return NULL;
    if (parse_rlimits(rlimits_obj, &c) < 0)
        return NULL;
    if (parse_filters(filters_obj, &c, &keep_filters) < 0)
        goto fail;
    c.errpipe = errpipe;
    c.parent_pid = parent_pid;
    c.drop_bounding_set = drop_bounding_set;
    c.last_cap = last_cap;
    c.securebits = securebits;
    c.uid = uid;
    c.gid = gid;
    c.landlock_fd = landlock_fd;
    c.listener_sock = listener_sock;
    c.umask = (mode_t)umask_value;
    c.template_fd = template_fd;
    c.netns_fd = netns_fd;
    c.jail_flags = jail_flags;
    c.outer_uid = geteuid(); /* (a warm copy: the same ids as its evalbox caller) */
    c.outer_gid = getegid();
    c.proc_rights = proc_rights;
    c.hostname = hostname;
    c.root_rights = root_rights;
    c.in_place = 1;
    if (overlays_obj && parse_overlays(overlays_obj, &c, &keep_overlays) < 0)
        goto fail;
    if (c.n_overlays > 0 && c.landlock_fd < 0) {
        PyErr_SetString(PyExc_ValueError, "overlays need a Landlock ruleset");
        goto fail;
    }
    if (root_obj && root_obj != Py_None && parse_root(root_obj, &c, &keep_root) < 0)
        goto fail;
    if (jail_flags && (!(jail_flags & CLONE_NEWPID) || c.n_overlays > 0)) {
        PyErr_SetString(PyExc_ValueError, "a warm jail is a PID namespace's init, and has no overlays");
        goto fail;
    }
    if (jail_flags && (getpid() != 2 || init_sock < 0 || alive_fd < 0)) {
        PyErr_SetString(PyExc_ValueError, "a warm jail's program must be forked by fork_jail (init_sock, alive_fd)");
        goto fail;
    }
    if (c.n_root > 0 && !(jail_flags & CLONE_NEWNS) && c.template_fd < 0) {
        PyErr_SetString(PyExc_ValueError, "a constructed root needs a mount namespace");
        goto fail;
    }
    /* Signals stay blocked while dispositions change (Python's handlers must not run midway). */
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL);
    if (jail_flags)
        warm_jail_program(&c, alive_fd, init_sock);
    lockdown(&c); /* unblocks every signal in its first step */
    if (c.landlock_fd >= 0)
        close(c.landlock_fd);
    if (c.listener_sock >= 0)
        close(c.listener_sock); /* the listener went to the supervisor: nothing of it stays here */
    Py_XDECREF(keep_filters);
    Py_XDECREF(keep_overlays);
    Py_XDECREF(keep_root);
    PyMem_Free(c.root);
    PyMem_Free(c.root_fds);
    return PyLong_FromLong(c.errpipe);
fail:
    Py_XDECREF(keep_filters);
    Py_XDECREF(keep_overlays);
    Py_XDECREF(keep_root);
    PyMem_Free(c.root);
    PyMem_Free(c.root_fds);
    return NULL;
}

PyDoc_STRVAR(fork_sibling_doc,
"fork_sibling() -> int\n\n"
"fork() whose child is a child of the caller's parent (CLONE_PARENT), so that the process that\n"
"asked a warm template for a run can wait for it, read its rusage and kill it like any spawn.\n"
"Returns the child's pid in the caller and 0 in the child, like os.fork (Python's fork hooks run).");

/* The C library caches the thread id where set_tid_address pointed the kernel: have the kernel
 * write the child's own id there and keep that address for the child (whose own forks, a
 * launcher's or a jail's init's, read it back), as the library's fork does. */
static unsigned long tid_flags(int **tid_address)
{
    *tid_address = NULL;
    if (prctl(PR_GET_TID_ADDRESS, tid_address, 0, 0, 0) == 0 && *tid_address != NULL)
        return CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID;
    *tid_address = NULL;
    return 0;
}

static PyObject *fork_sibling(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    int *tid_address;
    unsigned long flags = CLONE_PARENT | tid_flags(&tid_address);
    struct thread_registrations registered;
    save_thread_registrations(&registered);
    PyOS_BeforeFork();
    long pid = syscall(SYS_clone, flags, 0L, NULL, tid_address, 0L);
    int saved_errno = errno;
    if (pid == 0) {
        drop_inherited_slots();
        restore_thread_registrations(&registered, 0); /* (rseq: the kernel kept it) */
        PyOS_AfterFork_Child();
        return PyLong_FromLong(0);
    }
    PyOS_AfterFork_Parent();
    if (pid < 0) {
        errno = saved_errno;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(pid);
}

PyDoc_STRVAR(fork_jail_doc,
"fork_jail(namespaces) -> (pid, init_sock)\n\n"
"Start a warm jailed run: an init that shares this process's memory and runs no Python is\n"
"cloned into new namespaces (CLONE_NEW{PID,NS,IPC,UTS}; PID required) as their PID 1 and the\n"
"caller's parent's child (CLONE_PARENT); it forks the run's program process (PID 2, a copy of\n"
"this process that returns here) while this one waits, and becomes the jail's init (see\n"
"lockdown_self). Returns (the init's pid, -1) here and (0, its socket to the init) in the\n"
"program's process, whose lockdown_self(jail_flags=..., init_sock=...) must follow.");

/* The program's process, resumed in fork_jail (see warm_fork): its memory is the template's as it
 * was when fork_jail waited; fork_jail's other fds are copies it does not need. */
static PyObject *fork_jail_program(struct warm_fork *f)
{
    drop_inherited_slots(); /* (the init's own included: this process is back on the template's stack) */
    restore_thread_registrations(&f->registered, 1);
    close(f->init_sock);
    close(f->forked[0]);
    close(f->forked[1]);
    sigprocmask(SIG_SETMASK, &f->old_mask, NULL);
    PyOS_AfterFork_Child();
    return Py_BuildValue("(ii)", 0, f->program_sock);
}

static PyObject *fork_jail(PyObject *self, PyObject *args)
{
    (void)self;
    int namespaces;
    if (!PyArg_ParseTuple(args, "i", &namespaces))
        return NULL;
    if (!(namespaces & CLONE_NEWPID) || (namespaces & ~(CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS))) {
        PyErr_SetString(PyExc_ValueError, "fork_jail takes CLONE_NEWPID and maybe mount, IPC and UTS namespace flags");
        return NULL;
    }
    static struct warm_fork f; /* (static: its address is the same in the program's copy) */
    memset(&f, 0, sizeof f);
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    if (pipe2(f.forked, O_CLOEXEC) != 0) {
        int saved = errno;
        close(sv[0]);
        close(sv[1]);
        errno = saved;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    char *slot = take_slot();
    if (!slot) {
        close(sv[0]);
        close(sv[1]);
        close(f.forked[0]);
        close(f.forked[1]);
        return PyErr_NoMemory();
    }
    struct slot_head *head = SLOT_HEAD(slot);
    f.init_sock = sv[0];
    f.program_sock = sv[1];
    f.detach_root = (namespaces & CLONE_NEWNS) != 0;
    f.child_flags = tid_flags(&f.tid_address);
    save_thread_registrations(&f.registered);
    /* No handler of the template may ever run in the init: signals stay blocked in it until it
     * has its own dispositions (init_signals), and come back in the program's process. */
    sigset_t all;
    sigfillset(&all);
    PyOS_BeforeFork();
    sigprocmask(SIG_BLOCK, &all, &f.old_mask);
    if (__builtin_setjmp(f.resume))
        return fork_jail_program(&f);
    head->tid = 1; /* cleared by the kernel when the init exits (CLONE_CHILD_CLEARTID) */
    long pid = clone(warm_init_main, stack_top((char *)head),
                     CLONE_VM | CLONE_PARENT | CLONE_CHILD_CLEARTID | (unsigned long)namespaces, &f, NULL, NULL,
                     &head->tid);
    int saved_errno = errno;
    close(f.forked[1]);
    if (pid > 0) { /* wait, touching nothing the copy needs, until the init has forked it */
        char word;
        while (read(f.forked[0], &word, 1) < 0 && errno == EINTR)
            ;
    } else
        head->tid = 0;
    close(f.forked[0]);
    sigprocmask(SIG_SETMASK, &f.old_mask, NULL);
    PyOS_AfterFork_Parent();
    close(sv[0]);
    close(sv[1]);
    if (pid < 0) {
        errno = saved_errno;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return Py_BuildValue("(ii)", (int)pid, -1);
}

PyDoc_STRVAR(recv_request_doc,
"recv_request(fd) -> (bytes, [fd, ...])\n\n"
"Read the one message waiting on a Unix SOCK_SEQPACKET socket (any size) with the fds it carries\n"
"(at most 16, close-on-exec), then close the socket. A warm copy reads its run's request so,\n"
"touching (and so copying) as little of the template's memory as it can.");

#define MAX_REQUEST_FDS 16

static PyObject *recv_request(PyObject *self, PyObject *args)
{
    (void)self;
    int sock;
    if (!PyArg_ParseTuple(args, "i", &sock))
        return NULL;
    char peek;
    struct iovec iov = {&peek, 1};
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    ssize_t size;
    while ((size = recvmsg(sock, &m, MSG_PEEK | MSG_TRUNC)) < 0 && errno == EINTR)
        ;
    if (size < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        close(sock);
        return NULL;
    }
    PyObject *data = PyBytes_FromStringAndSize(NULL, size > 0 ? size : 1);
    if (!data) {
        close(sock);
        return NULL;
    }
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(MAX_REQUEST_FDS * sizeof(int))];
    } control;
    iov.iov_base = PyBytes_AS_STRING(data);
    iov.iov_len = size > 0 ? (size_t)size : 1;
    memset(&m, 0, sizeof m);
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = control.buf;
    m.msg_controllen = sizeof control.buf;
    ssize_t got;
    while ((got = recvmsg(sock, &m, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR)
        ;
    int saved_errno = errno;
    close(sock);
    int fds[MAX_REQUEST_FDS];
    size_t n = 0;
    for (struct cmsghdr *c = got >= 0 ? CMSG_FIRSTHDR(&m) : NULL; c; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
            if (n < MAX_REQUEST_FDS)
                fds[n++] = fd;
            else
                close(fd);
        }
    }
    if (got < 0 || got != size || (m.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
        for (size_t i = 0; i < n; i++)
            close(fds[i]);
        Py_DECREF(data);
        if (got < 0) {
            errno = saved_errno;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        PyErr_SetString(PyExc_OSError, "a run's request came cut short");
        return NULL;
    }
    if (_PyBytes_Resize(&data, got) != 0)
        goto fail;
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (!list) {
        Py_DECREF(data);
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        PyObject *fd = PyLong_FromLong(fds[i]);
        if (!fd) {
            Py_DECREF(list);
            Py_DECREF(data);
            goto fail;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, fd);
    }
    PyObject *result = PyTuple_Pack(2, data, list);
    Py_DECREF(data);
    Py_DECREF(list);
    return result;
fail:
    for (size_t i = 0; i < n; i++)
        close(fds[i]);
    return NULL;
}

PyDoc_STRVAR(syscall_doc,
"syscall(nr, *args) -> int\n\n"
"A raw system call for kernel interfaces the os module lacks (Landlock). Each argument is an int\n"
"or a buffer (passed by address; writable buffers receive output). Raises OSError on failure.");

static PyObject *raw_syscall(PyObject *self, PyObject *args)
{
    (void)self;
    Py_ssize_t n = PyTuple_GET_SIZE(args);
    if (n < 1 || n > 7) {
        PyErr_SetString(PyExc_TypeError, "syscall(nr, *args) takes 1 to 7 arguments");
        return NULL;
    }
    long nr = PyLong_AsLong(PyTuple_GET_ITEM(args, 0));
    if (nr == -1 && PyErr_Occurred())
        return NULL;
    unsigned long a[6] = {0};
    Py_buffer views[6];
    int held[6] = {0};
    PyObject *result = NULL;
    for (Py_ssize_t i = 1; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(args, i);
        if (PyLong_Check(item)) {
            a[i - 1] = PyLong_AsUnsignedLongMask(item);
            if (PyErr_Occurred())
                goto done;
        } else if (PyObject_GetBuffer(item, &views[i - 1], PyBUF_SIMPLE) == 0) {
            held[i - 1] = 1;
            a[i - 1] = (unsigned long)views[i - 1].buf;
        } else {
            goto done;
        }
    }
    long ret;
    int saved_errno;
    /* without the GIL: a call that waits (an open on the program's behalf) stalls no other thread */
    Py_BEGIN_ALLOW_THREADS
    ret = syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
    saved_errno = errno;
    Py_END_ALLOW_THREADS
    errno = saved_errno;
    if (ret < 0)
        PyErr_SetFromErrno(PyExc_OSError);
    else
        result = PyLong_FromLong(ret);
done:
    for (int i = 0; i < 6; i++)
        if (held[i])
            PyBuffer_Release(&views[i]);
    return result;
}

PyDoc_STRVAR(add_rules_doc,
"landlock_add_path_rules(ruleset_fd, rules) -> None\n\n"
"Add PATH_BENEATH rules in one call. `rules` packs, per rule: u64 allowed_access, s32 parent_fd\n"
"(struct landlock_path_beneath_attr), then u64 st_dev, u64 st_ino that parent_fd must still\n"
"refer to: the fds are long-lived, and if the host closed and reused one, granting it would\n"
"grant some other file. A mismatch raises OSError(ESTALE) before any rule of that one is added.");

struct packed_rule {
    uint64_t allowed_access;
    int32_t parent_fd;
    uint64_t dev;
    uint64_t ino;
} __attribute__((packed));

static PyObject *landlock_add_path_rules(PyObject *self, PyObject *args)
{
    (void)self;
    int ruleset;
    Py_buffer rules;
    if (!PyArg_ParseTuple(args, "iy*", &ruleset, &rules))
        return NULL;
    if (rules.len % (Py_ssize_t)sizeof(struct packed_rule) != 0) {
        PyBuffer_Release(&rules);
        PyErr_SetString(PyExc_ValueError, "rules must be a multiple of 28 bytes");
        return NULL;
    }
    Py_ssize_t n = rules.len / (Py_ssize_t)sizeof(struct packed_rule);
    for (Py_ssize_t i = 0; i < n; i++) {
        struct packed_rule r;
        memcpy(&r, (char *)rules.buf + i * (Py_ssize_t)sizeof r, sizeof r);
        struct stat st;
        int err = 0;
        if (fstat(r.parent_fd, &st) != 0)
            err = errno;
        else if ((uint64_t)st.st_dev != r.dev || (uint64_t)st.st_ino != r.ino)
            err = ESTALE;
        else if (syscall(SYS_landlock_add_rule, ruleset, 1 /* PATH_BENEATH */, &r, 0U) != 0)
            err = errno;
        if (err) {
            PyBuffer_Release(&rules);
            errno = err;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
    }
    PyBuffer_Release(&rules);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(probe_userns_doc,
"probe_user_namespace() -> (step, errno)\n\n"
"Try what an unprivileged jail needs, in a throw-away child: clone into new user, PID, mount,\n"
"network, IPC and UTS namespaces, map the caller's ids, mount a tmpfs and a /proc of its own,\n"
"set the loopback up. (0, 0) when all of it works; else the first step that failed: 1 clone,\n"
"2 the id maps, 3 a tmpfs, 4 /proc, 5 the loopback; and its errno.");

#define PROBE_FLAGS (CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS)

static int probe_main(void *arg)
{
    struct config *c = arg;
    int err = user_namespace_maps(c);
    if (err)
        report(c, 2, err);
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
        mount("tmpfs", ROOT_STAGING, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k") != 0)
        report(c, 3, errno);
    /* the jail's root is built with the new mount API (see bind_tree) */
    int fs = (int)syscall(SYS_fsopen, "tmpfs", 1 /* FSOPEN_CLOEXEC */);
    if (fs < 0)
        report(c, 3, errno);
    close(fs);
    if (mount("proc", ROOT_STAGING, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2") != 0)
        report(c, 4, errno);
    if ((err = interface_up("lo")) != 0)
        report(c, 5, err);
    _exit(0);
}

static PyObject *probe_user_namespace(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    struct config c;
    memset(&c, 0, sizeof c);
    c.outer_uid = geteuid();
    c.outer_gid = getegid();
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    c.errpipe = pipefd[1];
    void *stack = PyMem_RawMalloc(CHILD_STACK_SIZE);
    if (!stack) {
        close(pipefd[0]);
        close(pipefd[1]);
        return PyErr_NoMemory();
    }
    int msg[2] = {0, 0}, status = 0, clone_errno = 0;
    pid_t pid;
    Py_BEGIN_ALLOW_THREADS
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pid = clone(probe_main, stack_top((char *)stack + CHILD_STACK_SIZE), CLONE_VM | CLONE_VFORK | PROBE_FLAGS | SIGCHLD,
                &c);
    clone_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(pipefd[1]);
    if (pid > 0) {
        if (read(pipefd[0], msg, sizeof msg) != sizeof msg)
            msg[0] = msg[1] = 0;
        while (waitpid(pid, &status, __WALL) < 0 && errno == EINTR)
            ;
    }
    close(pipefd[0]);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(stack);
    if (pid < 0)
        return Py_BuildValue("(ii)", 1, clone_errno);
    if (msg[0] == 0 && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
        return Py_BuildValue("(ii)", 5, EIO);
    return Py_BuildValue("(ii)", msg[0], msg[1]);
}

static PyMethodDef methods[] = {
    {"probe_user_namespace", probe_user_namespace, METH_NOARGS, probe_userns_doc},
    {"fork_sibling", fork_sibling, METH_NOARGS, fork_sibling_doc},
    {"fork_jail", fork_jail, METH_VARARGS, fork_jail_doc},
    {"recv_request", recv_request, METH_VARARGS, recv_request_doc},
    {"landlock_add_path_rules", landlock_add_path_rules, METH_VARARGS, add_rules_doc},
    {"lockdown_self", (PyCFunction)(void (*)(void))lockdown_self, METH_VARARGS | METH_KEYWORDS, lockdown_self_doc},
    {"spawn", (PyCFunction)(void (*)(void))spawn, METH_VARARGS | METH_KEYWORDS, spawn_doc},
    {"build_template", build_template, METH_VARARGS, template_doc},
    {"syscall", raw_syscall, METH_VARARGS, syscall_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_spawn", "Clone-and-lockdown spawn for evalbox (see spawn.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__spawn(void)
{
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    if (PyModule_AddIntConstant(m, "STACK_SIZE", CHILD_STACK_SIZE) < 0 ||
        PyModule_AddIntConstant(m, "INIT_RECORD_KIND", INIT_RECORD_KIND) < 0 ||
        PyModule_AddIntConstant(m, "STEP_STARTED", STEP_STARTED) < 0 ||
        PyModule_AddIntConstant(m, "ROOT_DIR", ROOT_DIR) < 0 || PyModule_AddIntConstant(m, "ROOT_BIND", ROOT_BIND) < 0 ||
        PyModule_AddIntConstant(m, "ROOT_SYMLINK", ROOT_SYMLINK) < 0 ||
        PyModule_AddIntConstant(m, "ROOT_TMPFS", ROOT_TMPFS) < 0 || PyModule_AddIntConstant(m, "ROOT_PROC", ROOT_PROC) < 0 ||
        PyModule_AddIntConstant(m, "ROOT_FILE", ROOT_FILE) < 0 || PyModule_AddIntConstant(m, "ROOT_RO", ROOT_RO) < 0 ||
        PyModule_AddIntConstant(m, "ROOT_IS_DIR", ROOT_IS_DIR) < 0 ||
        PyModule_AddIntConstant(m, "ROOT_OWNED", ROOT_OWNED) < 0 ||
        PyModule_AddIntConstant(m, "ROOT_LATE", ROOT_LATE) < 0 ||
        PyModule_AddIntConstant(m, "ROOT_NOFOLLOW", ROOT_NOFOLLOW) < 0 ||
        PyModule_AddIntConstant(m, "ROOT_DEVPTS", ROOT_DEVPTS) < 0 ||
        PyModule_AddIntConstant(m, "SECCOMP_FILTER_FLAG_NEW_LISTENER", SECCOMP_FILTER_FLAG_NEW_LISTENER) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
