/* Network off (SPEC §4.2): IP, raw, packet, netlink, vsock sockets; host Unix sockets (abstract,
 * pathname, datagram); io_uring. Listeners are the test's own, on 127.0.0.1 or in a temp dir. */
#include "common.h"

#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/io_uring.h>
#include <linux/netlink.h>
#include <linux/vm_sockets.h>
#include <netinet/in.h>
#include <stddef.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#ifndef SYS_io_uring_setup
#define SYS_io_uring_setup 425
#endif

/* A socket whose mere creation is the escape; closed at once if it is ever created. */
static void socket_only(const char *what, int domain, int type, int proto)
{
    try_(what);
    int fd = socket(domain, type, proto);
    if (fd < 0) {
        blocked(what, errno);
        return;
    }
    escaped(what, "socket(%d, %#x, %d) = %d", domain, type, proto, fd);
    close(fd);
}

static int cmd_socket(int argc, char **argv)
{
    const char *n = argc > 1 ? argv[1] : "";
    if (!strcmp(n, "netlink_netfilter"))
        socket_only("netlink_netfilter", AF_NETLINK, SOCK_RAW, NETLINK_NETFILTER);
    else if (!strcmp(n, "netlink_route"))
        socket_only("netlink_route", AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
    else if (!strcmp(n, "netlink_audit"))
        socket_only("netlink_audit", AF_NETLINK, SOCK_RAW, NETLINK_AUDIT);
    else if (!strcmp(n, "raw"))
        socket_only("raw", AF_INET, SOCK_RAW, IPPROTO_ICMP);
    else if (!strcmp(n, "raw_cloexec"))
        socket_only("raw_cloexec", AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
    else if (!strcmp(n, "raw6_nonblock"))
        socket_only("raw6_nonblock", AF_INET6, SOCK_RAW | SOCK_NONBLOCK, IPPROTO_ICMPV6);
    else if (!strcmp(n, "ping"))
        socket_only("ping", AF_INET, SOCK_DGRAM, IPPROTO_ICMP);
    else if (!strcmp(n, "packet"))
        socket_only("packet", AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    else if (!strcmp(n, "packet_dgram"))
        socket_only("packet_dgram", AF_PACKET, SOCK_DGRAM, htons(ETH_P_IP));
    else if (!strcmp(n, "vsock"))
        socket_only("vsock", AF_VSOCK, SOCK_STREAM, 0); /* never connected: only created */
    else if (!strcmp(n, "vsock_dgram"))
        socket_only("vsock_dgram", AF_VSOCK, SOCK_DGRAM, 0);
    else if (!strcmp(n, "tcp"))
        socket_only("tcp", AF_INET, SOCK_STREAM, 0);
    else if (!strcmp(n, "udp6"))
        socket_only("udp6", AF_INET6, SOCK_DGRAM, 0);
    else if (!strcmp(n, "unix_dgram"))
        socket_only("unix_dgram", AF_UNIX, SOCK_DGRAM, 0);
    else {
        fprintf(stderr, "unknown socket kind %s\n", n);
        return 2;
    }
    return 0;
}

static struct sockaddr_in loopback(int port)
{
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

/* udp_send PORT TOKEN: a datagram to the test's UDP socket. */
static int cmd_udp_send(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    struct sockaddr_in a = loopback((int)parse_ul(argv[1]));
    try_("udp_socket");
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) {
        blocked("udp_socket", errno);
        return 0;
    }
    try_("udp_sendto");
    ssize_t n = sendto(fd, argv[2], strlen(argv[2]), 0, (struct sockaddr *)&a, sizeof a);
    if (n >= 0)
        escaped("udp_sendto", "sent %zd bytes to 127.0.0.1:%s", n, argv[1]);
    else
        blocked("udp_sendto", errno);
    return 0;
}

/* tcp_connect PORT TOKEN */
static int cmd_tcp_connect(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    struct sockaddr_in a = loopback((int)parse_ul(argv[1]));
    try_("tcp_socket");
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        blocked("tcp_socket", errno);
        return 0;
    }
    try_("tcp_connect");
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
        escaped("tcp_connect", "connected to 127.0.0.1:%s", argv[1]);
        if (write(fd, argv[2], strlen(argv[2])) < 0)
            printf("INFO write_errno=%d\n", errno);
    } else {
        blocked("tcp_connect", errno);
    }
    return 0;
}

/* tcp_listen: serve on 127.0.0.1 (and ::1). */
static int cmd_tcp_listen(int argc, char **argv)
{
    (void)argc, (void)argv;
    struct sockaddr_in a = loopback(0);
    try_("tcp_listen_socket");
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        blocked("tcp_listen_socket", errno);
    } else {
        try_("tcp_bind");
        if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0)
            blocked("tcp_bind", errno);
        else if (listen(fd, 1) != 0)
            blocked("tcp_listen", errno);
        else
            escaped("tcp_listen", "listening on 127.0.0.1");
        close(fd);
    }
    struct sockaddr_in6 a6 = {0};
    a6.sin6_family = AF_INET6;
    a6.sin6_addr = in6addr_loopback;
    try_("tcp6_listen_socket");
    fd = socket(AF_INET6, SOCK_STREAM, 0);
    if (fd < 0) {
        blocked("tcp6_listen_socket", errno);
    } else {
        if (bind(fd, (struct sockaddr *)&a6, sizeof a6) != 0)
            blocked("tcp6_bind", errno);
        else if (listen(fd, 1) != 0)
            blocked("tcp6_listen", errno);
        else
            escaped("tcp6_listen", "listening on ::1");
        close(fd);
    }
    return 0;
}

static socklen_t unix_addr(struct sockaddr_un *a, const char *name)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    if (name[0] == '@') { /* abstract */
        size_t len = strlen(name + 1);
        memcpy(a->sun_path + 1, name + 1, len);
        return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len);
    }
    strncpy(a->sun_path, name, sizeof a->sun_path - 1);
    return (socklen_t)sizeof *a;
}

/* unix_connect NAME TOKEN: NAME is a path or @abstract; stream then seqpacket. */
static int cmd_unix_connect(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    struct sockaddr_un a;
    socklen_t len = unix_addr(&a, argv[1]);
    int types[] = {SOCK_STREAM, SOCK_SEQPACKET};
    const char *names[] = {"unix_stream_connect", "unix_seqpacket_connect"};
    for (int i = 0; i < 2; i++) {
        try_(names[i]);
        int fd = socket(AF_UNIX, types[i], 0);
        if (fd < 0) {
            blocked(names[i], errno);
            continue;
        }
        if (connect(fd, (struct sockaddr *)&a, len) == 0) {
            escaped(names[i], "connected to %s", argv[1]);
            if (write(fd, argv[2], strlen(argv[2])) < 0)
                printf("INFO write_errno=%d\n", errno);
        } else {
            blocked(names[i], errno);
        }
        close(fd);
    }
    return 0;
}

/* unix_dgram NAME TOKEN: a datagram to a host socket (like /dev/log): from a fresh datagram
 * socket, from a datagram socketpair, and sendto() from a stream socket. */
static int cmd_unix_dgram(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    struct sockaddr_un a;
    socklen_t len = unix_addr(&a, argv[1]);
    try_("unix_dgram_socket");
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (fd < 0) {
        blocked("unix_dgram_socket", errno);
    } else {
        try_("unix_dgram_sendto");
        if (sendto(fd, argv[2], strlen(argv[2]), 0, (struct sockaddr *)&a, len) >= 0)
            escaped("unix_dgram_sendto", "sent to %s", argv[1]);
        else
            blocked("unix_dgram_sendto", errno);
        close(fd);
    }
    int sv[2];
    try_("unix_dgram_socketpair");
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) != 0) {
        blocked("unix_dgram_socketpair", errno);
    } else {
        try_("socketpair_sendto");
        if (sendto(sv[0], argv[2], strlen(argv[2]), 0, (struct sockaddr *)&a, len) >= 0)
            escaped("socketpair_sendto", "sent to %s from a socketpair end", argv[1]);
        else
            blocked("socketpair_sendto", errno);
    }
    try_("unix_stream_sendto");
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd >= 0) {
        if (sendto(fd, argv[2], strlen(argv[2]), 0, (struct sockaddr *)&a, len) >= 0)
            escaped("unix_stream_sendto", "sent to %s", argv[1]);
        else
            blocked("unix_stream_sendto", errno);
    } else {
        blocked("unix_stream_sendto", errno);
    }
    return 0;
}

/* listen NAME SECONDS: serve on a host-visible Unix name (@abstract or a path outside the
 * workspace) and wait for a connection from outside the sandbox. */
static int cmd_listen(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    struct sockaddr_un a;
    socklen_t len = unix_addr(&a, argv[1]);
    try_("unix_listen_socket");
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0) {
        blocked("unix_listen_socket", errno);
        printf("INFO listening=no\n");
        return 0;
    }
    try_("unix_bind_host_name");
    if (bind(fd, (struct sockaddr *)&a, len) != 0 || listen(fd, 4) != 0) {
        blocked("unix_bind_host_name", errno);
        printf("INFO listening=no\n");
        return 0;
    }
    printf("INFO listening=yes\n");
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, (int)parse_ul(argv[2]) * 1000) == 1) {
        int c = accept(fd, NULL, NULL);
        char buf[128] = {0};
        ssize_t n = c >= 0 ? read(c, buf, sizeof buf - 1) : -1;
        if (c >= 0)
            escaped("unix_accept_from_host", "a host process connected to %s and sent %zd bytes: %s", argv[1], n, buf);
        else
            blocked("unix_accept_from_host", errno);
    } else {
        printf("INFO no_connection\n");
    }
    return 0;
}

static int cmd_io_uring(int argc, char **argv)
{
    (void)argc, (void)argv;
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    ATTEMPT("io_uring_setup", syscall(SYS_io_uring_setup, 4, &p));
    return 0;
}

/* socketpair: in-sandbox IPC over a Unix stream pair must keep working. */
static int cmd_socketpair(int argc, char **argv)
{
    (void)argc, (void)argv;
    int sv[2];
    char buf[8] = {0};
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        printf("FAILED socketpair errno=%d (%s)\n", errno, strerrorname_np(errno));
        return 1;
    }
    if (write(sv[0], "ping", 4) != 4 || read(sv[1], buf, 4) != 4 || strcmp(buf, "ping")) {
        printf("FAILED socketpair_io errno=%d\n", errno);
        return 1;
    }
    ok("socketpair", "stream pair carries data");
    return 0;
}

static const struct command cmds[] = {
    {"socket", cmd_socket}, {"udp_send", cmd_udp_send}, {"tcp_connect", cmd_tcp_connect},
    {"tcp_listen", cmd_tcp_listen}, {"unix_connect", cmd_unix_connect}, {"unix_dgram", cmd_unix_dgram},
    {"io_uring", cmd_io_uring}, {"listen", cmd_listen}, {"socketpair", cmd_socketpair}, {NULL, NULL},
};

int main(int argc, char **argv) { return dispatch(cmds, argc, argv); }
