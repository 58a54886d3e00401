// TCP load for bench/conntrack.ts and bench/lb.ts: real connections through the filter, one process each side.
// Built by the bench with `cc -O2` into its temp directory; prints one JSON line and exits.
//
//   tcp-churn server ADDR PORT close|echo        accept until SIGTERM; close: close at once
//                                                 (the server sends the first FIN), echo: echo
//   tcp-churn churn SRCPFX NSRC DST PORT SECONDS INFLIGHT START [NDST]
//       new connections for SECONDS, INFLIGHT at a time, each from its own (source address,
//       source port): tuple k = (SRCPFX.(1 + k % NSRC), 1024 + (k / NSRC) % 64000), k = START...,
//       so no tuple repeats and no conntrack entry is reused. A connection is connect, wait for
//       the server's FIN, close: SYN, SYN+ACK, ACK, FIN, ACK, FIN, ACK. With NDST (bench/lb.ts:
//       many VIPs), connection k goes to address DST + k % NDST (IPv4, counted as a number).
//   tcp-churn persist SRC DST PORT CONNS SECONDS STALL_MS
//       CONNS long-lived connections doing 64-byte request/response until SECONDS or SIGTERM. A
//       connection is broken if it errors, sees EOF, or has an answer outstanding for STALL_MS.
//
// CPU is getrusage(RUSAGE_SELF): the scheduler's runtime of this process, which (no
// CONFIG_IRQ_TIME_ACCOUNTING on the bench machine) includes the softirq work its sends run inline.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static double now(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static void cpu(long *user_us, long *sys_us) {
	struct rusage r;
	getrusage(RUSAGE_SELF, &r);
	*user_us = r.ru_utime.tv_sec * 1000000L + r.ru_utime.tv_usec;
	*sys_us = r.ru_stime.tv_sec * 1000000L + r.ru_stime.tv_usec;
}

static struct sockaddr_in addr_of(const char *ip, int port) {
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
	if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
		fprintf(stderr, "bad address %s\n", ip);
		exit(2);
	}
	return a;
}

static int server(const char *ip, int port, int echo) {
	int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in a = addr_of(ip, port);
	if (bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 4096) < 0) {
		perror("listen");
		return 1;
	}
	int ep = epoll_create1(0);
	struct epoll_event ev = {.events = EPOLLIN, .data.fd = l};
	epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
	long accepted = 0, echoed = 0;
	printf("ready\n");
	fflush(stdout);
	struct epoll_event events[256];
	char buf[4096];
	while (!stop) {
		int n = epoll_wait(ep, events, 256, 100);
		for (int i = 0; i < n; i++) {
			int fd = events[i].data.fd;
			if (fd == l) {
				for (;;) {
					int c = accept4(l, NULL, NULL, SOCK_NONBLOCK);
					if (c < 0) break;
					accepted++;
					if (!echo) {
						close(c);
						continue;
					}
					setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
					struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
					epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
				}
				continue;
			}
			ssize_t r = read(fd, buf, sizeof buf);
			if (r <= 0) {
				if (r == 0 || (errno != EAGAIN && errno != EINTR)) close(fd);
				continue;
			}
			if (write(fd, buf, r) == r) echoed++;
		}
	}
	long u, s;
	cpu(&u, &s);
	printf("{\"accepted\":%ld,\"echoed\":%ld,\"userUs\":%ld,\"sysUs\":%ld}\n", accepted, echoed, u, s);
	return 0;
}

struct conn {
	int fd;
	int connected;
};

static int churn(const char *prefix, int nsrc, const char *dst, int port, double seconds, int inflight, long start, long ndst) {
	struct sockaddr_in to = addr_of(dst, port);
	uint32_t first = ntohl(to.sin_addr.s_addr);
	int ep = epoll_create1(0);
	struct conn *conns = calloc(inflight, sizeof *conns);
	long next = start, done = 0, failed = 0, bindFailed = 0;
	char src[64];
	double end = now() + seconds;
	long u0, s0;
	cpu(&u0, &s0);
	int open = 0;
	for (;;) {
		int starting = !stop && now() < end;
		for (int i = 0; starting && i < inflight; i++) {
			if (conns[i].fd > 0) continue;
			int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
			setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
			long k = next++;
			snprintf(src, sizeof src, "%s.%ld", prefix, 1 + k % nsrc);
			struct sockaddr_in from = addr_of(src, 1024 + (int)((k / nsrc) % 64000));
			if (bind(fd, (struct sockaddr *)&from, sizeof from) < 0) {
				bindFailed++;
				close(fd);
				continue;
			}
			to.sin_addr.s_addr = htonl(first + (uint32_t)(k % ndst));
			if (connect(fd, (struct sockaddr *)&to, sizeof to) < 0 && errno != EINPROGRESS) {
				failed++;
				close(fd);
				continue;
			}
			conns[i].fd = fd;
			conns[i].connected = 0;
			struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP, .data.u32 = i};
			epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
			open++;
		}
		if (!starting && open == 0) break;
		if (!starting && now() > end + 5) break; /* what is still open after 5 s has failed */
		struct epoll_event events[256];
		int n = epoll_wait(ep, events, 256, 100);
		for (int e = 0; e < n; e++) {
			struct conn *c = &conns[events[e].data.u32];
			if (c->fd <= 0) continue;
			int err = 0;
			socklen_t len = sizeof err;
			getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
			if (err != 0) {
				failed++;
			} else if (!(events[e].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP))) {
				/* connected; wait for the server's FIN */
				struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.u32 = events[e].data.u32};
				epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
				continue;
			} else {
				char b[16];
				ssize_t r = read(c->fd, b, sizeof b);
				if (r == 0) done++;
				else if (r < 0 && errno == EAGAIN) continue;
				else failed++;
			}
			close(c->fd);
			c->fd = 0;
			open--;
		}
	}
	failed += open;
	long u, s;
	cpu(&u, &s);
	printf("{\"connections\":%ld,\"failed\":%ld,\"bindFailed\":%ld,\"next\":%ld,\"userUs\":%ld,\"sysUs\":%ld}\n", done, failed, bindFailed, next, u - u0, s - s0);
	return 0;
}

static int persist(const char *srcIp, const char *dst, int port, int count, double seconds, double stallMs) {
	struct sockaddr_in to = addr_of(dst, port), from = addr_of(srcIp, 0);
	int *fds = calloc(count, sizeof *fds);
	double *sent = calloc(count, sizeof *sent);
	int *broken = calloc(count, sizeof *broken);
	long trips = 0, slow = 0, errors = 0, eofs = 0, stalls = 0;
	double maxMs = 0;
	char msg[64];
	memset(msg, 'x', sizeof msg);
	for (int i = 0; i < count; i++) {
		int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		if (bind(fd, (struct sockaddr *)&from, sizeof from) < 0 || connect(fd, (struct sockaddr *)&to, sizeof to) < 0) {
			perror("persist connect");
			return 1;
		}
		fcntl(fd, F_SETFL, O_NONBLOCK);
		fds[i] = fd;
	}
	int ep = epoll_create1(0);
	for (int i = 0; i < count; i++) {
		struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.u32 = i};
		epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
		sent[i] = now();
		if (write(fds[i], msg, sizeof msg) != sizeof msg) broken[i] = 1, errors++;
	}
	printf("ready\n");
	fflush(stdout);
	double end = now() + seconds;
	while (!stop && now() < end) {
		struct epoll_event events[256];
		int n = epoll_wait(ep, events, 256, 50);
		double t = now();
		for (int e = 0; e < n; e++) {
			int i = events[e].data.u32;
			if (broken[i]) continue;
			char b[256];
			ssize_t r = read(fds[i], b, sizeof b);
			if (r < 0 && errno == EAGAIN) continue;
			if (r <= 0) {
				broken[i] = 1;
				if (r == 0) eofs++;
				else errors++;
				continue;
			}
			/* 64 bytes out, up to 64 back: a reply may arrive in pieces; count a trip when complete */
			static long pending[65536];
			pending[i] += r;
			if (pending[i] < (long)sizeof msg) continue;
			pending[i] = 0;
			double ms = (t - sent[i]) * 1000;
			if (ms > maxMs) maxMs = ms;
			if (ms > 200) slow++;
			trips++;
			sent[i] = now();
			if (write(fds[i], msg, sizeof msg) != sizeof msg) broken[i] = 1, errors++;
		}
		for (int i = 0; i < count; i++) {
			if (!broken[i] && (t - sent[i]) * 1000 > stallMs) broken[i] = 1, stalls++;
		}
	}
	int brokenCount = 0;
	for (int i = 0; i < count; i++) brokenCount += broken[i];
	printf("{\"connections\":%d,\"roundTrips\":%ld,\"broken\":%d,\"errors\":%ld,\"eofs\":%ld,\"stalls\":%ld,\"over200ms\":%ld,\"maxMs\":%.1f}\n", count, trips, brokenCount, errors,
	       eofs, stalls, slow, maxMs);
	return 0;
}

int main(int argc, char **argv) {
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	signal(SIGPIPE, SIG_IGN);
	if (argc == 5 && strcmp(argv[1], "server") == 0) return server(argv[2], atoi(argv[3]), strcmp(argv[4], "echo") == 0);
	if ((argc == 9 || argc == 10) && strcmp(argv[1], "churn") == 0) {
		long ndst = argc == 10 ? atol(argv[9]) : 1;
		if (ndst < 1) {
			fprintf(stderr, "NDST must be at least 1\n");
			return 2;
		}
		return churn(argv[2], atoi(argv[3]), argv[4], atoi(argv[5]), atof(argv[6]), atoi(argv[7]), atol(argv[8]), ndst);
	}
	if (argc == 8 && strcmp(argv[1], "persist") == 0)
		return persist(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]), atof(argv[6]), atof(argv[7]));
	fprintf(stderr, "usage: see bench/tcp-churn.c\n");
	return 2;
}
