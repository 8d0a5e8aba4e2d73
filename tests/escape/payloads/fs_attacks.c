/* Files (SPEC §4.1): reads and writes outside the workspace, by path, `..`, symlinks, hard links,
 * renames, metadata changes; cgroup files. Targets are sacrificial files the test created. */
#include "common.h"

#include <dirent.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <time.h>

/* Print what was read, as text with non-printables escaped (the test looks for its secret). */
static void show(const char *what, const char *path, const char *buf, ssize_t n)
{
    char out[600];
    size_t j = 0;
    for (ssize_t i = 0; i < n && j < sizeof out - 5; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (c >= 0x20 && c < 0x7f)
            out[j++] = c;
        else
            j += snprintf(out + j, sizeof out - j, "\\x%02x", c);
    }
    out[j] = 0;
    escaped(what, "read %zd bytes from %s: %s", n, path, out);
}

static int read_path(const char *what, const char *path)
{
    try_(what);
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        blocked(what, errno);
        return -1;
    }
    char buf[512];
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0)
        blocked(what, errno);
    else
        show(what, path, buf, n);
    close(fd);
    return 0;
}

/* read PATH... : open and read each path. */
static int cmd_read(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        read_path("read", argv[i]);
    return 0;
}

/* symlink TARGET: a link in the workspace pointing out, then read through it. */
static int cmd_symlink(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    unlink("evalbox-link");
    if (symlink(argv[1], "evalbox-link") != 0)
        printf("INFO symlink_errno=%d\n", errno);
    read_path("read_via_symlink", "evalbox-link");
    return 0;
}

/* hardlink TARGET: link the outside file into the workspace (itself a write outside: the
 * workspace name would then reach the outside inode), then read and append through it. */
static int cmd_hardlink(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    try_("link");
    if (link(argv[1], "evalbox-hardlink") != 0) {
        blocked("link", errno);
        return 0;
    }
    escaped("link", "%s linked into the workspace", argv[1]);
    read_path("read_via_hardlink", "evalbox-hardlink");
    int fd = open("evalbox-hardlink", O_WRONLY | O_APPEND);
    if (fd >= 0 && write(fd, "ESCAPED-HARDLINK\n", 17) == 17)
        escaped("append_via_hardlink", "wrote through the link");
    return 0;
}

/* linkat_out TARGET_DIR: the other way: link a workspace file into an outside directory. */
static int cmd_link_out(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    int fd = open("evalbox-mine", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
        if (write(fd, "ESCAPED-LINK-OUT\n", 17) < 0)
            printf("INFO write_errno=%d\n", errno);
        close(fd);
    }
    ATTEMPT("link_out", link("evalbox-mine", argv[1]));
    return 0;
}

/* append PATH...: open for appending and write a marker. */
static int cmd_append(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        try_("append");
        int fd = open(argv[i], O_WRONLY | O_APPEND);
        if (fd < 0) {
            blocked("append", errno);
            continue;
        }
        ssize_t n = write(fd, "ESCAPED-APPEND\n", 15);
        if (n > 0)
            escaped("append", "%zd bytes appended to %s", n, argv[i]);
        else
            blocked("append", errno);
        close(fd);
    }
    return 0;
}

/* overwrite PATH: open read-write without truncating and write over the start. */
static int cmd_overwrite(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        try_("overwrite");
        int fd = open(argv[i], O_RDWR);
        if (fd < 0) {
            blocked("overwrite", errno);
            continue;
        }
        ssize_t n = pwrite(fd, "ESCAPED", 7, 0);
        if (n > 0)
            escaped("overwrite", "%zd bytes written into %s", n, argv[i]);
        else
            blocked("overwrite", errno);
        close(fd);
    }
    return 0;
}

/* create PATH...: create a new file (O_EXCL) with a marker in it. */
static int cmd_create(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        try_("create");
        int fd = open(argv[i], O_WRONLY | O_CREAT | O_EXCL, 0644);
        if (fd < 0) {
            blocked("create", errno);
            continue;
        }
        if (write(fd, "ESCAPED-CREATE\n", 15) < 0)
            printf("INFO write_errno=%d\n", errno);
        close(fd);
        escaped("create", "created %s", argv[i]);
    }
    return 0;
}

/* mkdir PATH...; symlink_out LINKPATH: create a symlink outside; mknod_fifo PATH. */
static int cmd_mkdir(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        ATTEMPT("mkdir", mkdir(argv[i], 0755));
    return 0;
}

static int cmd_symlink_out(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        ATTEMPT("symlink_out", symlink("/etc/passwd", argv[i]));
    return 0;
}

static int cmd_rename(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    ATTEMPT("rename", rename(argv[1], argv[2]));
    return 0;
}

/* rename_in SRC: move an outside file into the workspace (a delete outside). */
static int cmd_rename_in(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    ATTEMPT("rename_in", rename(argv[1], "evalbox-moved-in"));
    return 0;
}

/* rename_out DEST: move a workspace file out (a write outside). */
static int cmd_rename_out(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    int fd = open("evalbox-mine", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
        if (write(fd, "ESCAPED-RENAME-OUT\n", 19) < 0)
            printf("INFO write_errno=%d\n", errno);
        close(fd);
    }
    ATTEMPT("rename_out", rename("evalbox-mine", argv[1]));
    return 0;
}

static int cmd_unlink(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        ATTEMPT("unlink", unlink(argv[i]));
    return 0;
}

static int cmd_truncate(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        ATTEMPT("truncate", truncate(argv[i], 0));
        try_("open_trunc");
        int fd = open(argv[i], O_WRONLY | O_TRUNC);
        if (fd >= 0) {
            escaped("open_trunc", "opened %s with O_TRUNC", argv[i]);
            close(fd);
        } else {
            blocked("open_trunc", errno);
        }
    }
    return 0;
}

/* meta PATH: chmod, chown, utimes (explicit and "now"), setxattr, each on PATH. */
static int cmd_meta(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    const char *p = argv[1];
    ATTEMPT("chmod", chmod(p, 06777));
    ATTEMPT("chown", chown(p, getuid(), getgid()));
    ATTEMPT("lchown", lchown(p, getuid(), getgid()));
    struct timespec ts[2] = {{12345, 0}, {12345, 0}};
    ATTEMPT("utimensat", utimensat(AT_FDCWD, p, ts, 0));
    ATTEMPT("setxattr", setxattr(p, "user.evalbox_escape", "x", 1, 0));
    ATTEMPT("setxattr_security", setxattr(p, "security.evalbox_escape", "x", 1, 0));
    return 0;
}

/* touch PATH: utimensat(NULL): "now", which the kernel allows to anyone who may write the file. */
static int cmd_touch(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        ATTEMPT("utimensat_now", utimensat(AT_FDCWD, argv[i], NULL, 0));
    return 0;
}

/* ls DIR...: list a directory. */
static int cmd_ls(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        try_("ls");
        DIR *d = opendir(argv[i]);
        if (!d) {
            blocked("ls", errno);
            continue;
        }
        char names[900] = {0};
        size_t used = 0;
        int count = 0;
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                continue;
            count++;
            used += snprintf(names + used, used < sizeof names ? sizeof names - used : 0, "%s ", e->d_name);
            if (used >= sizeof names)
                used = sizeof names - 1;
        }
        closedir(d);
        escaped("ls", "%d entries in %s: %s", count, argv[i], names);
    }
    return 0;
}

/* cgroup: write to our own cgroup's limits and try to move out of it. */
static int cmd_cgroup(int argc, char **argv)
{
    (void)argc, (void)argv;
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (!f) {
        printf("INFO proc_self_cgroup_errno=%d\n", errno);
        return 0;
    }
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        char *ctl = strchr(line, ':');
        if (!ctl)
            continue;
        ctl++;
        char *path = strchr(ctl, ':');
        if (!path)
            continue;
        *path++ = 0;
        char dir[2048];
        const char *files[3];
        int nfiles = 0;
        if (!strcmp(ctl, "pids")) {
            snprintf(dir, sizeof dir, "/sys/fs/cgroup/pids%s", path);
            files[nfiles++] = "pids.max";
        } else if (!strcmp(ctl, "memory")) {
            snprintf(dir, sizeof dir, "/sys/fs/cgroup/memory%s", path);
            files[nfiles++] = "memory.limit_in_bytes";
            files[nfiles++] = "memory.memsw.limit_in_bytes";
        } else if (ctl[0] == 0) {
            snprintf(dir, sizeof dir, "/sys/fs/cgroup/unified%s", path);
            files[nfiles++] = "pids.max";
            files[nfiles++] = "memory.max";
        } else {
            continue;
        }
        for (int i = 0; i < nfiles; i++) {
            char p[2200];
            snprintf(p, sizeof p, "%s/%s", dir, files[i]);
            try_("cgroup_limit");
            int fd = open(p, O_WRONLY);
            if (fd < 0) {
                blocked("cgroup_limit", errno);
                continue;
            }
            ssize_t n = write(fd, "max", 3);
            if (n > 0)
                escaped("cgroup_limit", "wrote max to %s", p);
            else
                blocked("cgroup_limit", errno);
            close(fd);
        }
        /* leave the group: join the hierarchy's root */
        char root[2200];
        const char *mnt = !strcmp(ctl, "pids") ? "pids" : !strcmp(ctl, "memory") ? "memory" : "unified";
        snprintf(root, sizeof root, "/sys/fs/cgroup/%s/cgroup.procs", mnt);
        try_("cgroup_move");
        int fd = open(root, O_WRONLY);
        if (fd < 0) {
            blocked("cgroup_move", errno);
            continue;
        }
        if (write(fd, "0", 1) == 1)
            escaped("cgroup_move", "moved into %s", root);
        else
            blocked("cgroup_move", errno);
        close(fd);
    }
    fclose(f);
    return 0;
}

/* mknod KIND PATH: KIND "fifo" must work in the workspace (an ordinary tool); "mem" makes a
 * character device node for /dev/mem (1,1), which would open physical memory through a workspace
 * path: it must fail (the node is removed at once if it was ever made). */
static int cmd_mknod(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    if (!strcmp(argv[1], "fifo")) {
        try_("mkfifo");
        if (mknod(argv[2], S_IFIFO | 0600, 0) == 0)
            ok("mkfifo", "made %s", argv[2]);
        else
            printf("FAILED mkfifo errno=%d (%s)\n", errno, strerrorname_np(errno));
    } else {
        try_("mknod_chr");
        if (mknod(argv[2], S_IFCHR | 0666, makedev(1, 1)) == 0) {
            escaped("mknod_chr", "made a /dev/mem device node at %s", argv[2]);
            unlink(argv[2]);
        } else {
            blocked("mknod_chr", errno);
        }
    }
    return 0;
}

static const struct command cmds[] = {
    {"mknod", cmd_mknod},
    {"read", cmd_read}, {"symlink", cmd_symlink}, {"hardlink", cmd_hardlink}, {"link_out", cmd_link_out},
    {"append", cmd_append}, {"overwrite", cmd_overwrite}, {"create", cmd_create}, {"mkdir", cmd_mkdir},
    {"symlink_out", cmd_symlink_out}, {"rename", cmd_rename}, {"rename_in", cmd_rename_in}, {"rename_out", cmd_rename_out},
    {"unlink", cmd_unlink}, {"truncate", cmd_truncate}, {"meta", cmd_meta}, {"touch", cmd_touch},
    {"ls", cmd_ls}, {"cgroup", cmd_cgroup}, {NULL, NULL},
};

int main(int argc, char **argv) { return dispatch(cmds, argc, argv); }
