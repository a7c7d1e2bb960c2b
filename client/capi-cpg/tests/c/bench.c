/* Throughput of cpg_mcast_joined against cpg_zcb_mcast_joined: one member sends COUNT
 * messages of SIZE bytes to its own group and receives them all (self-delivery).
 * Usage: bench mcast|zcb SIZE COUNT. Prints one line: mode, size, count, seconds,
 * messages/s, MB/s. The payload copies are counted by the engine's
 * payload_bytes_copied counter (read by the test around the run). */
#include <corosync/cpg.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long received;
static int joined;

static void deliver(cpg_handle_t h, const struct cpg_name *g, uint32_t n, uint32_t p, void *m,
		    size_t len)
{
	(void)h; (void)g; (void)n; (void)p; (void)m; (void)len;
	received++;
}

static void confchg(cpg_handle_t h, const struct cpg_name *g, const struct cpg_address *m,
		    size_t nm, const struct cpg_address *l, size_t nl, const struct cpg_address *j,
		    size_t nj)
{
	(void)h; (void)g; (void)m; (void)nm; (void)l; (void)nl; (void)j; (void)nj;
	joined = 1;
}

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	cpg_handle_t h;
	cpg_callbacks_t cb = { deliver, confchg };
	struct cpg_name group = { 10, "capi-bench" };
	int zcb, r;
	size_t size;
	long count, sent = 0;
	void *buf;
	double start, secs;

	if (argc != 4)
		return 2;
	zcb = strcmp(argv[1], "zcb") == 0;
	size = strtoul(argv[2], NULL, 10);
	count = strtol(argv[3], NULL, 10);
	alarm(300);
	while ((r = cpg_initialize(&h, &cb)) == CS_ERR_TRY_AGAIN)
		usleep(10000);
	if (r != CS_OK)
		return 3;
	while ((r = cpg_join(h, &group)) == CS_ERR_TRY_AGAIN)
		usleep(10000);
	if (r != CS_OK)
		return 4;
	while (!joined)
		if (cpg_dispatch(h, CS_DISPATCH_ONE) != CS_OK)
			return 5;
	if (zcb) {
		if (cpg_zcb_alloc(h, size, &buf) != CS_OK)
			return 6;
	} else {
		buf = malloc(size);
	}
	memset(buf, 'x', size);
	start = now();
	while (received < count) {
		if (sent < count) {
			struct iovec iov = { buf, size };
			memcpy(buf, &sent, sizeof(sent) < size ? sizeof(sent) : size);
			r = zcb ? cpg_zcb_mcast_joined(h, CPG_TYPE_AGREED, buf, size)
				: cpg_mcast_joined(h, CPG_TYPE_AGREED, &iov, 1);
			if (r == CS_OK)
				sent++;
			else if (r != CS_ERR_TRY_AGAIN)
				return 7;
		}
		r = cpg_dispatch(h, sent < count ? CS_DISPATCH_ALL : CS_DISPATCH_ONE);
		if (r != CS_OK)
			return 8;
	}
	secs = now() - start;
	printf("%s size=%zu count=%ld seconds=%.3f msgs_per_s=%.0f MB_per_s=%.1f\n",
	       zcb ? "zcb" : "mcast", size, count, secs, count / secs, count * (double)size / secs / 1e6);
	if (zcb)
		cpg_zcb_free(h, buf);
	cpg_finalize(h);
	return 0;
}
