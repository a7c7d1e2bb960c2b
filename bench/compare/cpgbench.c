/*
 * cpgbench: one CPG benchmark program, written against corosync/cpg.h only, so that
 * the same binary measures Corosync (Debian's libcpg) and ringcast (ringcast's
 * libcpg.so.4 through LD_LIBRARY_PATH). docs/bench-compare.md describes the method.
 *
 *   cpgbench tput    --size N --seconds S        flood, count own agreed deliveries
 *   cpgbench lat     --size N --samples K        send, wait for own delivery, repeat
 *   cpgbench groups  --groups G --size N --seconds S
 *                                                G handles, one group each, round robin
 *   cpgbench members --members M                 a group grows to M members (one process
 *                                                and handle each), then shrinks to 1
 *   common: --nodes N   wait until the totem membership has N nodes (default 1)
 *           --timeout S bound on every wait (default 60)
 *
 * Every mode prints one JSON object on stdout. Exit status 0 on success, 1 on failure
 * (a message on stderr), 2 on bad arguments.
 */
#define _GNU_SOURCE
#include <corosync/cpg.h>
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define HEADER 16 /* u64 sequence number, u64 send time (ns) */

struct opts {
	const char *mode;
	size_t size;
	double seconds;
	long samples;
	long groups;
	long members;
	long nodes;
	double timeout;
};

/* Per handle: what it sent and what came back to it. */
struct conn {
	cpg_handle_t handle;
	struct cpg_name group;
	uint64_t sent;
	uint64_t delivered;
	uint64_t last_seq;
	uint64_t last_send_ns;
	int joined;
};

static struct conn *conns;
static long nconns;
static uint32_t local_nodeid;
static uint32_t local_pid;
static uint32_t totem_members;
static uint32_t group_members;
static uint64_t checksum;
static uint64_t last_delivery_ns;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what, cs_error_t rc)
{
	fprintf(stderr, "cpgbench: %s: cs_error %d\n", what, (int)rc);
	exit(1);
}

static struct conn *conn_of(cpg_handle_t handle)
{
	void *ctx = NULL;
	if (cpg_context_get(handle, &ctx) != CS_OK || ctx == NULL)
		return NULL;
	return ctx;
}

/* Reads every byte of every delivered message (a receiver that uses its data). */
static void on_deliver(cpg_handle_t handle, const struct cpg_name *group, uint32_t nodeid,
		       uint32_t pid, void *msg, size_t len)
{
	(void)group;
	struct conn *c = conn_of(handle);
	const unsigned char *p = msg;
	/* Eight bytes at a time: every byte is read, at memory speed rather than at one
	 * add per byte (which would cap large messages at the client, not the daemon). */
	uint64_t sum = 0, word;
	size_t i = 0;
	for (; i + 8 <= len; i += 8) {
		memcpy(&word, p + i, 8);
		sum ^= word;
	}
	for (; i < len; i++)
		sum += p[i];
	checksum += sum;
	if (c == NULL || nodeid != local_nodeid || pid != local_pid || len < HEADER)
		return;
	memcpy(&c->last_seq, p, 8);
	memcpy(&c->last_send_ns, p + 8, 8);
	c->delivered++;
	last_delivery_ns = now_ns();
}

static void on_confchg(cpg_handle_t handle, const struct cpg_name *group,
		       const struct cpg_address *members, size_t n_members,
		       const struct cpg_address *left, size_t n_left,
		       const struct cpg_address *joined, size_t n_joined)
{
	(void)group, (void)members, (void)left, (void)n_left;
	struct conn *c = conn_of(handle);
	group_members = (uint32_t)n_members;
	for (size_t i = 0; c != NULL && i < n_joined; i++)
		if (joined[i].nodeid == local_nodeid && joined[i].pid == local_pid)
			c->joined = 1;
}

static void on_totem(cpg_handle_t handle, struct cpg_ring_id ring_id, uint32_t n,
		     const uint32_t *list)
{
	(void)handle, (void)ring_id, (void)list;
	totem_members = n;
}

static cpg_model_v1_data_t model = {
	.model = CPG_MODEL_V1,
	.cpg_deliver_fn = on_deliver,
	.cpg_confchg_fn = on_confchg,
	.cpg_totem_confchg_fn = on_totem,
	.flags = CPG_MODEL_V1_DELIVER_INITIAL_TOTEM_CONF,
};

/* Waits up to ms for the handle's fd, then dispatches everything pending. */
static void pump(struct conn *c, int ms)
{
	int fd;
	if (ms > 0 && cpg_fd_get(c->handle, &fd) == CS_OK) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		poll(&p, 1, ms);
	}
	cs_error_t rc = cpg_dispatch(c->handle, CS_DISPATCH_ALL);
	if (rc != CS_OK && rc != CS_ERR_TRY_AGAIN)
		die("cpg_dispatch", rc);
}

/* Connects (retrying while the daemon starts) and joins the handle's group. */
static void connect_join(struct conn *c, double timeout)
{
	uint64_t deadline = now_ns() + (uint64_t)(timeout * 1e9);
	cs_error_t rc;
	while ((rc = cpg_model_initialize(&c->handle, CPG_MODEL_V1, (cpg_model_data_t *)&model,
					  c)) != CS_OK) {
		if (now_ns() > deadline)
			die("cpg_model_initialize", rc);
		usleep(100000);
	}
	while ((rc = cpg_join(c->handle, &c->group)) != CS_OK) {
		if (rc != CS_ERR_TRY_AGAIN || now_ns() > deadline)
			die("cpg_join", rc);
		usleep(10000);
	}
}

static void wait_until(struct conn *c, const int *flag, double timeout, const char *what)
{
	uint64_t deadline = now_ns() + (uint64_t)(timeout * 1e9);
	while (!*flag) {
		if (now_ns() > deadline) {
			fprintf(stderr, "cpgbench: timed out waiting for %s\n", what);
			exit(1);
		}
		pump(c, 10);
	}
}

static void name_group(struct conn *c, const char *kind, long i)
{
	int n = snprintf(c->group.value, sizeof c->group.value, "cpgbench-%s-%u-%ld", kind,
			 local_pid, i);
	c->group.length = (uint32_t)n;
}

/* Opens n handles, each joined to its own group, after the ring has opts->nodes nodes. */
static void open_conns(const struct opts *o, long n, const char *kind)
{
	conns = calloc((size_t)n, sizeof *conns);
	if (conns == NULL)
		exit(1);
	nconns = n;
	for (long i = 0; i < n; i++) {
		name_group(&conns[i], kind, i);
		connect_join(&conns[i], o->timeout);
		if (i == 0) {
			cs_error_t rc = cpg_local_get(conns[0].handle, &local_nodeid);
			if (rc != CS_OK)
				die("cpg_local_get", rc);
		}
	}
	uint64_t deadline = now_ns() + (uint64_t)(o->timeout * 1e9);
	while (totem_members < (uint32_t)o->nodes) {
		if (now_ns() > deadline) {
			fprintf(stderr, "cpgbench: ring has %u of %ld nodes\n", totem_members, o->nodes);
			exit(1);
		}
		pump(&conns[0], 10);
	}
	for (long i = 0; i < n; i++)
		wait_until(&conns[i], &conns[i].joined, o->timeout, "own join");
}

/* One send: the sender writes every byte (sequence, time, then a pattern). */
static cs_error_t send_one(struct conn *c, unsigned char *buf, size_t size)
{
	uint64_t seq = c->sent + 1, t = now_ns();
	memcpy(buf, &seq, 8);
	memcpy(buf + 8, &t, 8);
	memset(buf + HEADER, (int)(seq & 0xff), size - HEADER);
	struct iovec iov = { .iov_base = buf, .iov_len = size };
	cs_error_t rc = cpg_mcast_joined(c->handle, CPG_TYPE_AGREED, &iov, 1);
	if (rc == CS_OK)
		c->sent = seq;
	else if (rc != CS_ERR_TRY_AGAIN)
		die("cpg_mcast_joined", rc);
	return rc;
}

static uint64_t total(size_t field)
{
	uint64_t sum = 0;
	for (long i = 0; i < nconns; i++)
		sum += *(uint64_t *)((char *)&conns[i] + field);
	return sum;
}

/* Floods every handle round robin for o->seconds, then waits for the last deliveries. */
static void flood(const struct opts *o, const char *mode)
{
	unsigned char *buf = malloc(o->size);
	if (buf == NULL)
		exit(1);
	const int batch = o->size >= 65536 ? 1 : 16;
	uint64_t start = now_ns(), stop = start + (uint64_t)(o->seconds * 1e9);
	while (now_ns() < stop) {
		for (long i = 0; i < nconns; i++) {
			struct conn *c = &conns[i];
			int blocked = 0;
			for (int k = 0; k < batch && !blocked; k++)
				blocked = send_one(c, buf, o->size) == CS_ERR_TRY_AGAIN;
			pump(c, blocked && nconns == 1 ? 1 : 0);
		}
	}
	uint64_t deadline = now_ns() + (uint64_t)(o->timeout * 1e9);
	while (total(offsetof(struct conn, delivered)) < total(offsetof(struct conn, sent)) &&
	       now_ns() < deadline)
		for (long i = 0; i < nconns; i++)
			pump(&conns[i], conns[i].delivered < conns[i].sent && nconns == 1 ? 10 : 0);
	uint64_t sent = total(offsetof(struct conn, sent));
	uint64_t delivered = total(offsetof(struct conn, delivered));
	double secs = (double)(last_delivery_ns - start) / 1e9;
	printf("{\"mode\":\"%s\",\"size\":%zu,\"groups\":%ld,\"sent\":%llu,\"delivered\":%llu,"
	       "\"seconds\":%.6f,\"msgs_per_s\":%.1f,\"mb_per_s\":%.3f,\"checksum\":%llu}\n",
	       mode, o->size, nconns, (unsigned long long)sent, (unsigned long long)delivered,
	       secs, (double)delivered / secs, (double)delivered * (double)o->size / secs / 1e6,
	       (unsigned long long)checksum);
	free(buf);
	if (delivered != sent) {
		fprintf(stderr, "cpgbench: %llu of %llu delivered\n", (unsigned long long)delivered,
			(unsigned long long)sent);
		exit(1);
	}
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static double pct(const uint64_t *v, long n, double p)
{
	long i = (long)(p / 100.0 * (double)(n - 1) + 0.5);
	return (double)v[i] / 1000.0;
}

/* Send one message, dispatch until it comes back, record the time; o->samples times. */
static void latency(const struct opts *o)
{
	struct conn *c = &conns[0];
	unsigned char *buf = malloc(o->size);
	uint64_t *lat = calloc((size_t)o->samples, sizeof *lat);
	if (buf == NULL || lat == NULL)
		exit(1);
	const long warmup = o->samples / 10 < 100 ? o->samples / 10 : 100;
	uint64_t deadline = now_ns() + (uint64_t)(o->timeout * 1e9);
	long n = 0;
	for (long s = 0; s < o->samples + warmup && now_ns() < deadline; s++) {
		uint64_t t0 = now_ns();
		while (send_one(c, buf, o->size) == CS_ERR_TRY_AGAIN)
			pump(c, 1);
		while (c->delivered < c->sent) {
			cs_error_t rc = cpg_dispatch(c->handle, CS_DISPATCH_ONE);
			if (rc != CS_OK)
				die("cpg_dispatch", rc);
		}
		if (s >= warmup)
			lat[n++] = last_delivery_ns - t0;
	}
	if (n == 0)
		die("no latency sample before the timeout", CS_ERR_TIMEOUT);
	qsort(lat, (size_t)n, sizeof *lat, cmp_u64);
	double sum = 0;
	for (long i = 0; i < n; i++)
		sum += (double)lat[i];
	printf("{\"mode\":\"lat\",\"size\":%zu,\"samples\":%ld,\"mean_us\":%.3f,\"p50_us\":%.3f,"
	       "\"p90_us\":%.3f,\"p99_us\":%.3f,\"p999_us\":%.3f,\"max_us\":%.3f}\n",
	       o->size, n, sum / (double)n / 1000.0, pct(lat, n, 50), pct(lat, n, 90),
	       pct(lat, n, 99), pct(lat, n, 99.9), (double)lat[n - 1] / 1000.0);
	free(buf);
	free(lat);
}

/* A child of the spawner: one handle joined to the observer's group until told to go. */
static void member_child(const struct cpg_name *group, int ready_fd, int hold_fd, double timeout)
{
	struct conn c = { .group = *group };
	local_pid = (uint32_t)getpid();
	conns = &c;
	nconns = 1;
	connect_join(&c, timeout);
	char byte = 1;
	if (write(ready_fd, &byte, 1) != 1)
		_exit(1);
	/* Holds the membership until the parent closes the pipe (EOF), dispatching so
	 * that the daemon never sees a stalled reader. */
	int fd = -1;
	cpg_fd_get(c.handle, &fd);
	for (;;) {
		struct pollfd p[2] = { { .fd = hold_fd, .events = POLLIN }, { .fd = fd, .events = POLLIN } };
		if (poll(p, 2, 1000) < 0 && errno != EINTR)
			break;
		if (p[0].revents)
			break;
		if (p[1].revents && cpg_dispatch(c.handle, CS_DISPATCH_ALL) != CS_OK)
			break;
	}
	cpg_finalize(c.handle);
	_exit(0);
}

/* Waits until the observer's group has `want` members; returns seconds since t0. */
static double wait_members(struct conn *c, uint32_t want, uint64_t t0, double timeout)
{
	uint64_t deadline = t0 + (uint64_t)(timeout * 1e9);
	while (group_members != want) {
		if (now_ns() > deadline) {
			fprintf(stderr, "cpgbench: group has %u of %u members\n", group_members, want);
			return -1;
		}
		pump(c, 10);
	}
	return (double)(now_ns() - t0) / 1e9;
}

/* A group grows to o->members members, one process each, then shrinks back to one. The
 * children come from a spawner forked before any CPG call (no library state to copy). */
static void members(const struct opts *o)
{
	int go[2], ready[2], hold[2];
	if (pipe(go) || pipe(ready) || pipe(hold))
		exit(1);
	local_pid = (uint32_t)getpid();
	struct conn observer;
	memset(&observer, 0, sizeof observer);
	name_group(&observer, "members", 0);
	pid_t spawner = fork();
	if (spawner == 0) {
		close(go[1]), close(hold[1]), close(ready[0]);
		char byte;
		if (read(go[0], &byte, 1) != 1)
			_exit(0);
		for (long i = 1; i < o->members; i++)
			if (fork() == 0)
				member_child(&observer.group, ready[1], hold[0], o->timeout);
		close(hold[0]);
		while (wait(NULL) > 0)
			;
		_exit(0);
	}
	close(go[0]), close(hold[0]), close(ready[1]);
	conns = &observer;
	nconns = 1;
	connect_join(&observer, o->timeout);
	cs_error_t rc = cpg_local_get(observer.handle, &local_nodeid);
	if (rc != CS_OK)
		die("cpg_local_get", rc);
	wait_until(&observer, &observer.joined, o->timeout, "own join");
	uint64_t t0 = now_ns();
	if (write(go[1], "g", 1) != 1)
		exit(1);
	double grow = wait_members(&observer, (uint32_t)o->members, t0, o->timeout);
	uint32_t reached = group_members;
	uint64_t t1 = now_ns();
	close(hold[1]);
	double shrink = grow < 0 ? -1 : wait_members(&observer, 1, t1, o->timeout);
	close(go[1]);
	waitpid(spawner, NULL, 0);
	printf("{\"mode\":\"members\",\"members\":%ld,\"reached\":%u,\"grow_s\":%.6f,"
	       "\"shrink_s\":%.6f}\n",
	       o->members, reached, grow, shrink);
	cpg_finalize(observer.handle);
	if (grow < 0 || shrink < 0)
		exit(1);
}

static void usage(void)
{
	fprintf(stderr, "usage: cpgbench tput|lat|groups|members [--size N] [--seconds S] "
			"[--samples K] [--groups G] [--members M] [--nodes N] [--timeout S]\n");
	exit(2);
}

static struct opts parse(int argc, char **argv)
{
	struct opts o = { .size = 64, .seconds = 2, .samples = 10000, .groups = 1,
			  .members = 1024, .nodes = 1, .timeout = 60 };
	if (argc < 2)
		usage();
	o.mode = argv[1];
	for (int i = 2; i + 1 < argc; i += 2) {
		const char *k = argv[i], *v = argv[i + 1];
		if (!strcmp(k, "--size"))
			o.size = strtoul(v, NULL, 10);
		else if (!strcmp(k, "--seconds"))
			o.seconds = strtod(v, NULL);
		else if (!strcmp(k, "--samples"))
			o.samples = strtol(v, NULL, 10);
		else if (!strcmp(k, "--groups"))
			o.groups = strtol(v, NULL, 10);
		else if (!strcmp(k, "--members"))
			o.members = strtol(v, NULL, 10);
		else if (!strcmp(k, "--nodes"))
			o.nodes = strtol(v, NULL, 10);
		else if (!strcmp(k, "--timeout"))
			o.timeout = strtod(v, NULL);
		else
			usage();
	}
	if (argc % 2 != 0 || o.size < HEADER || o.groups < 1 || o.members < 1 ||
	    o.samples < 1 || o.nodes < 1)
		usage();
	return o;
}

int main(int argc, char **argv)
{
	struct opts o = parse(argc, argv);
	local_pid = (uint32_t)getpid();
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!strcmp(o.mode, "tput")) {
		open_conns(&o, 1, "tput");
		flood(&o, "tput");
	} else if (!strcmp(o.mode, "groups")) {
		open_conns(&o, o.groups, "groups");
		flood(&o, "groups");
	} else if (!strcmp(o.mode, "lat")) {
		open_conns(&o, 1, "lat");
		latency(&o);
	} else if (!strcmp(o.mode, "members")) {
		members(&o);
		return 0;
	} else {
		usage();
	}
	for (long i = 0; i < nconns; i++)
		cpg_finalize(conns[i].handle);
	return 0;
}
