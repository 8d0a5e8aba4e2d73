/* Kernel attack surface (SPEC §4.3): keys, bpf, perf, userfaultfd, modules, reboot, kexec,
 * terminal ioctls, fileless exec, personality, foreign syscall ABIs.
 *
 * Every argument is chosen so the kernel would refuse or do nothing harmful even if the filter let
 * the call through (this runs as root on real machines): reboot gets a wrong magic number, kexec an
 * impossible architecture, init_module a buffer that is not an ELF file. Where the kernel's own
 * answer differs from the sandbox's (ENOTTY for a tty ioctl on a pipe, EINVAL for a bad reboot
 * magic), the payload prints REACHED: the call got past the filter. */
#include "common.h"

#include <linux/bpf.h>
#include <linux/perf_event.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <time.h>

#ifndef SYS_userfaultfd
#define SYS_userfaultfd 323
#endif
#ifndef SYS_execveat
#define SYS_execveat 322
#endif
#define UFFD_USER_MODE_ONLY 1
#define KEYCTL_GET_KEYRING_ID 0
#define KEY_SPEC_THREAD_KEYRING (-1)
#define KEY_SPEC_SESSION_KEYRING (-3)
#define LINUX_REBOOT_CMD_CAD_OFF 0
#define TIOCL_GETSHIFTSTATE 6

extern char **environ;

/* Report a call whose success would be the attack, where the kernel's own refusal (`kernel_errno`)
 * can be told apart from the sandbox's. kernel_errno 0: no such distinction. */
static void attempt_distinct(const char *what, long r, int kernel_errno)
{
    if (r >= 0)
        escaped(what, "returned %ld", r);
    else if (kernel_errno && errno == kernel_errno)
        printf("REACHED %s errno=%d (%s): the kernel, not the sandbox, refused\n", what, errno,
               strerrorname_np(errno));
    else
        blocked(what, errno);
}

static int cmd_keyctl(int argc, char **argv)
{
    (void)argc, (void)argv;
    ATTEMPT("keyctl", syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0));
    return 0;
}

static int cmd_add_key(int argc, char **argv)
{
    (void)argc, (void)argv;
    /* a "user" key in the thread keyring: it dies with this thread if it is ever created */
    ATTEMPT("add_key", syscall(SYS_add_key, "user", "evalbox-escape-test", "x", 1, KEY_SPEC_THREAD_KEYRING));
    return 0;
}

static int cmd_bpf(int argc, char **argv)
{
    (void)argc, (void)argv;
    struct bpf_insn prog[] = {
        {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 0}, /* r0 = 0 */
        {.code = BPF_JMP | BPF_EXIT},
    };
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
    attr.insns = (uint64_t)(uintptr_t)prog;
    attr.insn_cnt = 2;
    attr.license = (uint64_t)(uintptr_t) "GPL";
    ATTEMPT("bpf", syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof attr));
    return 0;
}

static int cmd_perf(int argc, char **argv)
{
    (void)argc, (void)argv;
    struct perf_event_attr pe;
    memset(&pe, 0, sizeof pe);
    pe.type = PERF_TYPE_SOFTWARE;
    pe.size = sizeof pe;
    pe.config = PERF_COUNT_SW_TASK_CLOCK;
    pe.disabled = 1;
    pe.exclude_kernel = 1;
    pe.exclude_hv = 1;
    ATTEMPT("perf_event_open", syscall(SYS_perf_event_open, &pe, 0, -1, -1, 0));
    return 0;
}

static int cmd_userfaultfd(int argc, char **argv)
{
    (void)argc, (void)argv;
    /* user-mode-only faults are allowed to unprivileged users: success means the filter passed it */
    ATTEMPT("userfaultfd", syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY));
    return 0;
}

static int cmd_reboot(int argc, char **argv)
{
    (void)argc, (void)argv;
    /* wrong magic: even with CAP_SYS_BOOT the kernel answers EINVAL and does nothing; without the
     * capability it answers EPERM first */
    try_("reboot");
    long r = syscall(SYS_reboot, 0xdeadbeefUL, 0x12345678UL, LINUX_REBOOT_CMD_CAD_OFF, NULL);
    attempt_distinct("reboot", r, EINVAL);
    return 0;
}

static int cmd_init_module(int argc, char **argv)
{
    (void)argc, (void)argv;
    static char garbage[64] = "this is not an ELF kernel module";
    try_("init_module");
    long r = syscall(SYS_init_module, garbage, sizeof garbage, "");
    attempt_distinct("init_module", r, ENOEXEC);
    try_("finit_module");
    r = syscall(SYS_finit_module, -1, "", 0);
    attempt_distinct("finit_module", r, EBADF);
    try_("delete_module");
    r = syscall(SYS_delete_module, "evalbox_no_such_module", O_NONBLOCK);
    attempt_distinct("delete_module", r, ENOENT);
    return 0;
}

static int cmd_kexec(int argc, char **argv)
{
    (void)argc, (void)argv;
    /* no segments and architecture 0xff (KEXEC_ARCH_MASK bits): refused as EINVAL by any kernel
     * that gets that far */
    try_("kexec_load");
    long r = syscall(SYS_kexec_load, 0UL, 0UL, NULL, 0x00ff0000UL);
    attempt_distinct("kexec_load", r, EINVAL);
    try_("kexec_file_load");
    r = syscall(SYS_kexec_file_load, -1, -1, 0UL, "", 0x80000000UL);
    attempt_distinct("kexec_file_load", r, EINVAL);
    return 0;
}

/* ioctl FD REQUEST: a tty ioctl on a pipe. The kernel would answer ENOTTY; the filter must act
 * first, whatever the fd is and whatever the upper 32 bits of the request hold. */
static int cmd_ioctl(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    int fd = (int)parse_ul(argv[1]);
    unsigned long req = parse_ul(argv[2]);
    char buf[8] = {'x', 0};
    int ldisc = 0; /* N_TTY */
    void *arg = buf;
    if ((req & 0xffffffffUL) == 0x541C) /* TIOCLINUX: subcode in the first byte */
        buf[0] = TIOCL_GETSHIFTSTATE;
    else if ((req & 0xffffffffUL) == 0x5423) /* TIOCSETD */
        arg = &ldisc;
    char what[64];
    snprintf(what, sizeof what, "ioctl_%#lx", req);
    try_(what);
    long r = syscall(SYS_ioctl, fd, req, arg);
    attempt_distinct(what, r, ENOTTY);
    return 0;
}

/* memfd_exec: write our own image to a memfd and run it from there (fileless exec), both by
 * execveat(AT_EMPTY_PATH) and by execve("/proc/self/fd/N"). */
static int copy_self(int out)
{
    int in = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return -1;
    char buf[65536];
    ssize_t n;
    while ((n = read(in, buf, sizeof buf)) > 0)
        if (write(out, buf, n) != n)
            return -1;
    close(in);
    return 0;
}

static int cmd_memfd_exec(int argc, char **argv)
{
    const char *how = argc > 1 ? argv[1] : "execveat";
    try_("memfd_create");
    int fd = syscall(SYS_memfd_create, "evalbox-test", 0);
    if (fd < 0) {
        blocked("memfd_create", errno);
        return 0;
    }
    /* memfd_create itself is allowed (runtimes use it): only running the memfd must fail */
    ok("memfd_create", "fd %d", fd);
    if (copy_self(fd) != 0) {
        printf("INFO copy_failed errno=%d\n", errno);
        return 0;
    }
    char *args[] = {"memfd", "fileless_ran", NULL};
    if (strcmp(how, "proc") == 0) {
        char path[64];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        try_("execve_proc_fd");
        execve(path, args, environ);
        blocked("execve_proc_fd", errno);
    } else {
        try_("execveat_memfd");
        syscall(SYS_execveat, fd, "", args, environ, AT_EMPTY_PATH);
        blocked("execveat_memfd", errno);
    }
    return 0;
}

/* execveat: run our own (on-disk) image through execveat(fd, "", AT_EMPTY_PATH), the fileless
 * exec primitive; also execve("/proc/self/fd/N") of an fd with no name left (O_TMPFILE is not
 * used: the workspace may run its own files anyway, only the fd routes are in question). */
static int cmd_execveat(int argc, char **argv)
{
    (void)argc, (void)argv;
    int fd = open("/proc/self/exe", O_RDONLY);
    if (fd < 0) {
        printf("INFO open_self_errno=%d\n", errno);
        return 0;
    }
    char *args[] = {"fdexec", "fileless_ran", NULL};
    try_("execveat_empty_path");
    syscall(SYS_execveat, fd, "", args, environ, AT_EMPTY_PATH);
    blocked("execveat_empty_path", errno);
    return 0;
}

static int cmd_fileless_ran(int argc, char **argv)
{
    (void)argc, (void)argv;
    escaped("fileless_exec", "a program ran from an fd (pid %d)", getpid());
    return 0;
}

/* personality VALUE: set a persona; escaped if it is then in effect. */
static int cmd_personality(int argc, char **argv)
{
    unsigned long want = argc > 1 ? parse_ul(argv[1]) : READ_IMPLIES_EXEC;
    long before = syscall(SYS_personality, 0xffffffffUL);
    printf("INFO personality_before=%#lx\n", before);
    try_("personality");
    long r = syscall(SYS_personality, want);
    long after = syscall(SYS_personality, 0xffffffffUL);
    printf("INFO personality_after=%#lx\n", after);
    if (after >= 0 && ((unsigned long)after & want) == want && want != 0)
        escaped("personality", "persona %#lx now in effect (call returned %ld)", after, r);
    else if (r < 0)
        blocked("personality", errno);
    else
        printf("REACHED personality returned %ld but the persona is unchanged\n", r);
    return 0;
}

/* int80: the i386 ABI from a 64-bit process: getpid is 20 there. */
static int cmd_int80(int argc, char **argv)
{
    (void)argc, (void)argv;
    long ret;
    try_("int80_getpid");
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(20L) : "memory", "rcx", "r11");
    if (ret == (long)getpid())
        escaped("int80_getpid", "i386 getpid returned %ld", ret);
    else if (ret < 0 && ret > -4096)
        printf("BLOCKED int80_getpid errno=%ld (%s)\n", -ret, strerrorname_np(-ret));
    else
        escaped("int80_getpid", "i386 syscall ran, returned %ld", ret);
    return 0;
}

/* x32: getpid (39) with the x32 bit. Kernels without CONFIG_X86_X32_ABI answer ENOSYS; the
 * filter must kill before the kernel looks. */
static int cmd_x32(int argc, char **argv)
{
    (void)argc, (void)argv;
    try_("x32_getpid");
    long r = syscall(0x40000000L | 39);
    if (r == (long)getpid())
        escaped("x32_getpid", "x32 getpid returned %ld", r);
    else
        attempt_distinct("x32_getpid", r, ENOSYS);
    return 0;
}

/* misc NAME: one-off calls that are refused to everyone by the kernel too, or are harmless. */
static int cmd_misc(int argc, char **argv)
{
    const char *n = argc > 1 ? argv[1] : "";
    if (!strcmp(n, "open_by_handle_at")) {
        struct {
            unsigned int bytes;
            int type;
            unsigned char h[8];
        } fh = {8, 1, {2, 0, 0, 0, 0, 0, 0, 0}}; /* "shocker": inode 2 = root of the filesystem */
        try_("open_by_handle_at");
        long r = syscall(SYS_open_by_handle_at, AT_FDCWD, &fh, O_RDONLY);
        attempt_distinct("open_by_handle_at", r, 0);
        if (r >= 0)
            close((int)r);
    } else if (!strcmp(n, "name_to_handle_at")) {
        struct {
            unsigned int bytes;
            int type;
            unsigned char h[128];
        } fh = {128, 0, {0}};
        int mount_id;
        ATTEMPT("name_to_handle_at", syscall(SYS_name_to_handle_at, AT_FDCWD, "/etc", &fh, &mount_id, 0));
    } else if (!strcmp(n, "open_tree")) {
        /* OPEN_TREE_CLONE of /: a detached copy of the host's mount tree */
        try_("open_tree");
        long r = syscall(SYS_open_tree, AT_FDCWD, "/", 1 /* OPEN_TREE_CLONE */ | 0x8000 /* AT_RECURSIVE */);
        attempt_distinct("open_tree", r, 0);
        if (r >= 0)
            close((int)r);
    } else if (!strcmp(n, "clock_settime")) {
        /* setting CLOCK_REALTIME to its current value changes nothing even if it went through */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ATTEMPT("clock_settime", syscall(SYS_clock_settime, CLOCK_REALTIME, &ts));
    } else if (!strcmp(n, "modify_ldt")) {
        char buf[16];
        /* func 0 reads the LDT: unprivileged and harmless, so success shows the filter passed it */
        ATTEMPT("modify_ldt", syscall(SYS_modify_ldt, 0, buf, sizeof buf));
    } else if (!strcmp(n, "iopl")) {
        ATTEMPT("iopl", syscall(SYS_iopl, 3));
    } else if (!strcmp(n, "ioperm")) {
        ATTEMPT("ioperm", syscall(SYS_ioperm, 0x80, 1, 1));
    } else if (!strcmp(n, "chroot")) {
        ATTEMPT("chroot", syscall(SYS_chroot, "."));
    } else if (!strcmp(n, "pivot_root")) {
        ATTEMPT("pivot_root", syscall(SYS_pivot_root, ".", "."));
    } else if (!strcmp(n, "syslog")) {
        /* SYSLOG_ACTION_SIZE_BUFFER: reading kernel log metadata */
        ATTEMPT("syslog", syscall(SYS_syslog, 10, NULL, 0));
    } else if (!strcmp(n, "acct")) {
        ATTEMPT("acct", syscall(SYS_acct, NULL));
    } else if (!strcmp(n, "swapoff")) {
        ATTEMPT("swapoff", syscall(SYS_swapoff, "/nonexistent-evalbox-swap"));
    } else if (!strcmp(n, "settimeofday")) {
        /* NULL tv and tz: changes nothing even when allowed */
        try_("settimeofday");
        long r = syscall(SYS_settimeofday, NULL, NULL);
        attempt_distinct("settimeofday", r, 0);
    } else if (!strcmp(n, "sethostname")) {
        /* the current name, so nothing changes even if it went through */
        char name[256] = {0};
        gethostname(name, sizeof name - 1);
        ATTEMPT("sethostname", syscall(SYS_sethostname, name, strlen(name)));
    } else if (!strcmp(n, "fanotify_init")) {
        ATTEMPT("fanotify_init", syscall(SYS_fanotify_init, 0, O_RDONLY));
    } else if (!strcmp(n, "kcmp")) {
        ATTEMPT("kcmp", syscall(SYS_kcmp, getpid(), getppid(), 0, 0, 0));
    } else if (!strcmp(n, "pidfd_getfd")) {
        /* steal fd 0 of our own parent (the host process that started us) through a pidfd */
        int pfd = syscall(SYS_pidfd_open, getppid(), 0);
        printf("INFO pidfd_open_parent=%d\n", pfd);
        ATTEMPT("pidfd_getfd", syscall(SYS_pidfd_getfd, pfd < 0 ? 0 : pfd, 0, 0));
    } else {
        fprintf(stderr, "unknown misc %s\n", n);
        return 2;
    }
    return 0;
}

static const struct command cmds[] = {
    {"keyctl", cmd_keyctl}, {"add_key", cmd_add_key}, {"bpf", cmd_bpf}, {"perf", cmd_perf},
    {"userfaultfd", cmd_userfaultfd}, {"reboot", cmd_reboot}, {"init_module", cmd_init_module},
    {"kexec", cmd_kexec}, {"ioctl", cmd_ioctl}, {"memfd_exec", cmd_memfd_exec},
    {"execveat", cmd_execveat}, {"fileless_ran", cmd_fileless_ran}, {"personality", cmd_personality},
    {"int80", cmd_int80}, {"x32", cmd_x32}, {"misc", cmd_misc}, {NULL, NULL},
};

int main(int argc, char **argv) { return dispatch(cmds, argc, argv); }
