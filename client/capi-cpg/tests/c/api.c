/* Every function of libcpg.so.4 and libcfg.so.7 against one running ringcastd
 * (docs/cpg.md §3, §4 and §12): errors, callbacks that call the API, all
 * dispatch modes, the pollable fd, two handles in one process, zero-copy buffers,
 * iterations, finalize inside a callback and from another thread, pthread_cancel of
 * a blocked dispatch. Prints "ok <step>" per step; exits non-zero at the first failure.
 * Built only against the installed headers and `pkg-config --libs libcpg libcfg`. */
#include <corosync/cpg.h>
#include <corosync/cfg.h>
#include <arpa/inet.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FAIL(...)                                                                    \
	do {                                                                         \
		fprintf(stderr, "FAIL line %d: ", __LINE__);                        \
		fprintf(stderr, __VA_ARGS__);                                        \
		fprintf(stderr, "\n");                                               \
		exit(1);                                                             \
	} while (0)
#define EXPECT(call, want)                                                           \
	do {                                                                         \
		int got_ = (call);                                                   \
		if (got_ != (want))                                                  \
			FAIL("%s = %d, want %d", #call, got_, (int)(want));          \
	} while (0)
#define OK(step) printf("ok %s\n", step), fflush(stdout)

/* One handle per (process, group): the engine refuses a second join of the same
 * group from the same pid (EXIST, docs/cpg.md §3), so each handle of this
 * process has its own group; other processes are in the multi-process tests. */
static struct cpg_name group, group_b, group_c;

static void set_name(struct cpg_name *n, const char *s)
{
	n->length = strlen(s);
	memcpy(n->value, s, n->length);
}

/* Retries TRY_AGAIN as CPG programs do (bounded). */
#define RETRY(call)                                                                  \
	({                                                                           \
		int r_;                                                              \
		int tries_ = 0;                                                      \
		while ((r_ = (call)) == CS_ERR_TRY_AGAIN && tries_++ < 5000)         \
			usleep(2000);                                                \
		r_;                                                                  \
	})

/* What the callbacks saw, per handle slot. */
struct seen {
	cpg_handle_t handle;
	int confchgs;
	size_t members;
	struct cpg_address last_left;
	size_t left_n;
	int totem_confchgs;
	int delivers;
	char last_msg[64];
	size_t last_len;
	uint32_t last_crc;
	int in_callback_calls_ok;
	int zcb_a, zcb_b, zcb_bad;
	int finalize_in_confchg;
	int finalize_result;
};
static struct seen seen[8];
static int pong_sent;

static struct seen *slot(cpg_handle_t h)
{
	for (int i = 0; i < 8; i++)
		if (seen[i].handle == h)
			return &seen[i];
	FAIL("callback for unknown handle");
}

static uint32_t crc32(const unsigned char *p, size_t n)
{
	uint32_t c = 0xffffffffu;
	for (size_t i = 0; i < n; i++) {
		c ^= p[i];
		for (int k = 0; k < 8; k++)
			c = (c >> 1) ^ (0xedb88320u & -(c & 1));
	}
	return ~c;
}

static void deliver(cpg_handle_t h, const struct cpg_name *g, uint32_t nodeid, uint32_t pid,
		    void *msg, size_t len)
{
	struct seen *s = slot(h);
	(void)nodeid;
	(void)pid;
	if (g->length > CPG_MAX_NAME_LENGTH || g->length < 5 || memcmp(g->value, "capi-", 5))
		FAIL("deliver for an unknown group");
	s->delivers++;
	s->last_len = len;
	memset(s->last_msg, 0, sizeof(s->last_msg));
	memcpy(s->last_msg, msg, len < 63 ? len : 63);
	if (len > 4096)
		s->last_crc = crc32(msg, len);
	/* The message is writable (programs byte-swap in place): a read-only mapping
	 * would fault here. */
	if (len > 0) {
		volatile unsigned char *v = msg;
		v[0] = v[0];
		v[len - 1] = v[len - 1];
	}
	if (len == 100000) {
		const unsigned char *b = msg;
		size_t i;
		for (i = 1; i < len && b[i] == b[0]; i++)
			;
		if (i != len)
			s->zcb_bad++;
		else if (b[0] == 'A')
			s->zcb_a++;
		else if (b[0] == 'B')
			s->zcb_b++;
		else
			s->zcb_bad++;
	}
	/* Callbacks may call the API (docs/cpg.md §12). */
	if (len == 11 && memcmp(msg, "hello world", 11) == 0) {
		unsigned int local;
		struct cpg_address list[8];
		int n = 8;
		if (cpg_local_get(h, &local) == CS_OK && local == 1 &&
		    cpg_membership_get(h, &group, list, &n) == CS_OK && n >= 1)
			s->in_callback_calls_ok++;
		if (!pong_sent) {
			struct iovec iov = { .iov_base = "pong", .iov_len = 4 };
			pong_sent = 1;
			if (cpg_mcast_joined(h, CPG_TYPE_AGREED, &iov, 1) != CS_OK)
				FAIL("mcast inside deliver");
		}
	}
}

static void confchg(cpg_handle_t h, const struct cpg_name *g, const struct cpg_address *m,
		    size_t nm, const struct cpg_address *l, size_t nl,
		    const struct cpg_address *j, size_t nj)
{
	struct seen *s = slot(h);
	(void)g;
	(void)j;
	(void)nj;
	s->confchgs++;
	s->members = nm;
	s->left_n = nl;
	if (nl > 0)
		s->last_left = l[0];
	for (size_t i = 0; i < nm; i++)
		if (m[i].reason != 0)
			FAIL("member with a reason");
	if (s->finalize_in_confchg) {
		unsigned int local;
		s->finalize_in_confchg = 0;
		s->in_callback_calls_ok += cpg_local_get(h, &local) == CS_OK;
		s->finalize_result = cpg_finalize(h);
	}
}

static void totem_confchg(cpg_handle_t h, struct cpg_ring_id ring, uint32_t n,
			  const uint32_t *members)
{
	struct seen *s = slot(h);
	if (n < 1 || members[0] != 1 || ring.nodeid != 1)
		FAIL("totem confchg: n %u rep %u", n, ring.nodeid);
	s->totem_confchgs++;
}

/* Dispatches `h` (ONE_NONBLOCKING + poll on its fd) until `cond` holds, 20 s at most. */
#define WAIT_FOR(h, cond)                                                            \
	do {                                                                         \
		int fd_;                                                             \
		EXPECT(cpg_fd_get((h), &fd_), CS_OK);                                \
		for (int i_ = 0; !(cond); i_++) {                                    \
			struct pollfd p_ = { .fd = fd_, .events = POLLIN };          \
			if (i_ > 2000)                                               \
				FAIL("timeout waiting for %s", #cond);               \
			if (cpg_dispatch((h), CS_DISPATCH_ONE_NONBLOCKING) ==        \
			    CS_ERR_TRY_AGAIN)                                        \
				poll(&p_, 1, 10);                                    \
		}                                                                    \
	} while (0)

static int fd_readable(cpg_handle_t h, int ms)
{
	int fd;
	struct pollfd p;
	EXPECT(cpg_fd_get(h, &fd), CS_OK);
	p.fd = fd;
	p.events = POLLIN;
	p.revents = 0;
	return poll(&p, 1, ms) > 0;
}

static void *blocking_dispatch(void *arg)
{
	cpg_handle_t h = *(cpg_handle_t *)arg;
	long r = cpg_dispatch(h, CS_DISPATCH_BLOCKING);
	return (void *)r;
}

static cpg_handle_t new_handle(int slot_index, cpg_callbacks_t *cb)
{
	cpg_handle_t h;
	EXPECT(RETRY(cpg_initialize(&h, cb)), CS_OK);
	seen[slot_index].handle = h;
	return h;
}

static void cfg_checks(void)
{
	corosync_cfg_handle_t c;
	corosync_cfg_callbacks_t cb = { NULL };
	unsigned int local = 0;
	int num = 0, fd = -1;
	corosync_cfg_node_address_t addrs[4];
	struct corosync_cfg_node_status_v1 st;
	char **names = NULL, **statuses = NULL;
	unsigned int count = 0;
	char text[64];

	EXPECT(corosync_cfg_initialize(NULL, &cb), CS_ERR_INVALID_PARAM);
	EXPECT(corosync_cfg_initialize(&c, &cb), CS_OK);
	EXPECT(corosync_cfg_fd_get(c, &fd), CS_OK);
	if (fd < 0)
		FAIL("cfg fd");
	EXPECT(corosync_cfg_local_get(c, &local), CS_OK);
	if (local != 1)
		FAIL("cfg local %u", local);
	EXPECT(corosync_cfg_get_node_addrs(c, 1, 4, &num, addrs), CS_OK);
	if (num != 1)
		FAIL("node addrs %d", num);
	{
		struct sockaddr_in *sin = (struct sockaddr_in *)addrs[0].address;
		if (sin->sin_family != AF_INET)
			FAIL("family");
		inet_ntop(AF_INET, &sin->sin_addr, text, sizeof(text));
		if (strcmp(text, "127.0.0.1") != 0)
			FAIL("address %s", text);
	}
	EXPECT(corosync_cfg_get_node_addrs(c, 99, 4, &num, addrs), CS_ERR_NOT_EXIST);
	EXPECT(corosync_cfg_node_status_get(c, 1, CFG_NODE_STATUS_V1, &st), CS_OK);
	if (st.nodeid != 1 || !st.reachable || st.remote || !st.link_status[0].enabled ||
	    !st.link_status[0].connected || strcmp(st.link_status[0].dst_ipaddr, "127.0.0.1"))
		FAIL("node status");
	EXPECT(corosync_cfg_node_status_get(c, 1, 2, &st), CS_ERR_NOT_SUPPORTED);
	EXPECT(corosync_cfg_ring_status_get(c, &names, &statuses, &count), CS_OK);
	if (count != 1 || strstr(statuses[0], "active") == NULL)
		FAIL("ring status");
	free(names[0]);
	free(statuses[0]);
	free(names);
	free(statuses);
	EXPECT(corosync_cfg_trackstart(c, CS_TRACK_CHANGES), CS_OK);
	EXPECT(corosync_cfg_trackstop(c), CS_OK);
	EXPECT(corosync_cfg_replyto_shutdown(c, COROSYNC_CFG_SHUTDOWN_FLAG_YES), CS_OK);
	EXPECT(corosync_cfg_try_shutdown(c, 7), CS_ERR_INVALID_PARAM);
	EXPECT(corosync_cfg_kill_node(c, 1, "test"), CS_ERR_NOT_SUPPORTED);
	EXPECT(corosync_cfg_reload_config(c), CS_ERR_NOT_SUPPORTED);
	EXPECT(corosync_cfg_reopen_log_files(c), CS_ERR_NOT_SUPPORTED);
	EXPECT(corosync_cfg_dispatch(c, CS_DISPATCH_ALL), CS_OK);
	EXPECT(corosync_cfg_finalize(c), CS_OK);
	EXPECT(corosync_cfg_finalize(c), CS_ERR_BAD_HANDLE);
	EXPECT(corosync_cfg_local_get(c, &local), CS_ERR_BAD_HANDLE);
	OK("cfg");
}

int main(void)
{
	cpg_handle_t h1, h2, h3, h4, h5, bogus = 0x1234567800000001ULL;
	cpg_callbacks_t callbacks = { deliver, confchg };
	cpg_model_v1_data_t model = { CPG_MODEL_V1, deliver, confchg, totem_confchg,
				      CPG_MODEL_V1_DELIVER_INITIAL_TOTEM_CONF };
	cpg_model_v1_data_t bad_flags = model;
	struct cpg_name long_name, other;
	struct cpg_address list[16];
	int n, fd, ctx = 7, other_ctx = 8;
	void *p;
	unsigned int local;
	uint32_t max;
	cpg_flow_control_state_t fc;
	pthread_t thread;
	void *ret;

	alarm(120);
	set_name(&group, "capi-group");
	set_name(&group_b, "capi-group-b");
	set_name(&group_c, "capi-group-c");
	memset(&long_name, 'x', sizeof(long_name));
	long_name.length = 129;

	/* Errors that need no connection (docs/cpg.md §3). */
	EXPECT(cpg_finalize(bogus), CS_ERR_BAD_HANDLE);
	EXPECT(cpg_join(bogus, &long_name), CS_ERR_NAME_TOO_LONG);
	EXPECT(cpg_join(bogus, &group), CS_ERR_BAD_HANDLE);
	EXPECT(cpg_leave(bogus, &long_name), CS_ERR_NAME_TOO_LONG);
	EXPECT(cpg_dispatch(bogus, CS_DISPATCH_ALL), CS_ERR_BAD_HANDLE);
	EXPECT(cpg_local_get(bogus, &local), CS_ERR_BAD_HANDLE);
	EXPECT(cpg_model_initialize(&h1, 2, (cpg_model_data_t *)&model, NULL),
	       CS_ERR_INVALID_PARAM);
	bad_flags.flags = 0x2;
	EXPECT(cpg_model_initialize(&h1, CPG_MODEL_V1, (cpg_model_data_t *)&bad_flags, NULL),
	       CS_ERR_INVALID_PARAM);
	EXPECT(cpg_initialize(NULL, &callbacks), CS_ERR_INVALID_PARAM);
	EXPECT(cpg_iteration_next(bogus, NULL), CS_ERR_INVALID_PARAM);
	OK("errors-without-connection");

	/* Handle 1: model V1 with every callback and the initial totem confchg. */
	EXPECT(RETRY(cpg_model_initialize(&h1, CPG_MODEL_V1, (cpg_model_data_t *)&model, &ctx)),
	       CS_OK);
	seen[1].handle = h1;
	EXPECT(cpg_context_get(h1, &p), CS_OK);
	if (p != &ctx)
		FAIL("context");
	EXPECT(cpg_context_set(h1, &other_ctx), CS_OK);
	EXPECT(cpg_context_get(h1, &p), CS_OK);
	if (p != &other_ctx)
		FAIL("context set");
	EXPECT(cpg_context_get(h1, NULL), CS_ERR_INVALID_PARAM);
	EXPECT(cpg_fd_get(h1, &fd), CS_OK);
	EXPECT(cpg_fd_get(h1, NULL), CS_ERR_INVALID_PARAM);
	EXPECT(cpg_max_atomic_msgsize_get(h1, &max), CS_OK);
	if (max != 1047552)
		FAIL("max atomic %u", max);
	EXPECT(cpg_local_get(h1, &local), CS_OK);
	if (local != 1)
		FAIL("local %u", local);
	EXPECT(cpg_flow_control_state_get(h1, &fc), CS_OK);
	if (fc != CPG_FLOW_CONTROL_DISABLED)
		FAIL("flow control");
	EXPECT(cpg_dispatch(h1, CS_DISPATCH_ONE_NONBLOCKING), CS_ERR_TRY_AGAIN);
	EXPECT(cpg_dispatch(h1, CS_DISPATCH_ALL), CS_OK);
	if (fd_readable(h1, 0))
		FAIL("fd readable with nothing pending");
	OK("handle");

	/* Join; the joiner gets its own join confchg, then the initial totem confchg. */
	EXPECT(cpg_join(h1, &long_name), CS_ERR_NAME_TOO_LONG);
	EXPECT(RETRY(cpg_join(h1, &group)), CS_OK);
	EXPECT(cpg_join(h1, &group), CS_ERR_EXIST);
	for (int i = 0; i < 10 && seen[1].confchgs == 0; i++)
		EXPECT(cpg_dispatch(h1, CS_DISPATCH_ONE), CS_OK);
	if (seen[1].confchgs != 1 || seen[1].members != 1)
		FAIL("join confchg: %d %zu", seen[1].confchgs, seen[1].members);
	WAIT_FOR(h1, seen[1].totem_confchgs >= 1);
	n = 16;
	EXPECT(cpg_membership_get(h1, &group, list, &n), CS_OK);
	if (n != 1 || list[0].nodeid != 1 || list[0].pid != (uint32_t)getpid() || list[0].reason)
		FAIL("membership n=%d", n);
	EXPECT(cpg_membership_get(h1, &group, NULL, &n), CS_ERR_INVALID_PARAM);
	EXPECT(cpg_membership_get(h1, &long_name, list, &n), CS_ERR_NAME_TOO_LONG);
	n = 0;
	EXPECT(cpg_membership_get(h1, &group, list, &n), CS_OK);
	if (n != 0)
		FAIL("membership capacity ignored");
	OK("join");

	/* A second handle in the same process, in its own group. */
	h2 = new_handle(2, &callbacks);
	EXPECT(RETRY(cpg_join(h2, &group)), CS_ERR_EXIST);
	EXPECT(RETRY(cpg_join(h2, &group_b)), CS_OK);
	WAIT_FOR(h2, seen[2].confchgs == 1);
	if (seen[2].members != 1)
		FAIL("second handle's join confchg");
	n = 16;
	EXPECT(cpg_membership_get(h2, &group, list, &n), CS_OK);
	if (n != 1 || list[0].pid != (uint32_t)getpid())
		FAIL("membership of another group: %d", n);
	{
		struct iovec iov = { "in-b", 4 };
		EXPECT(RETRY(cpg_mcast_joined(h2, CPG_TYPE_AGREED, &iov, 1)), CS_OK);
	}
	WAIT_FOR(h2, seen[2].delivers == 1);
	if (strcmp(seen[2].last_msg, "in-b") != 0)
		FAIL("h2 got '%s'", seen[2].last_msg);
	OK("two-handles");

	/* Two iovecs; self-delivery; the deliver callback calls the API and sends. */
	{
		struct iovec iov[2] = { { "hello ", 6 }, { "world", 5 } };
		EXPECT(cpg_mcast_joined(h1, CPG_TYPE_AGREED, NULL, 1), CS_ERR_INVALID_PARAM);
		EXPECT(RETRY(cpg_mcast_joined(h1, CPG_TYPE_AGREED, iov, 2)), CS_OK);
	}
	WAIT_FOR(h1, seen[1].delivers >= 2);
	if (seen[1].in_callback_calls_ok != 1 || strcmp(seen[1].last_msg, "pong") != 0)
		FAIL("deliver: %d '%s'", seen[1].in_callback_calls_ok, seen[1].last_msg);
	EXPECT(cpg_dispatch(h2, CS_DISPATCH_ALL), CS_OK);
	if (seen[2].delivers != 1)
		FAIL("h2 got group A's messages");
	OK("mcast-and-callbacks");

	/* The fd is level-accurate: readable exactly while events are pending. */
	EXPECT(cpg_dispatch(h1, CS_DISPATCH_ALL), CS_OK);
	if (fd_readable(h1, 0))
		FAIL("readable after ALL");
	{
		struct iovec iov = { "level", 5 };
		EXPECT(RETRY(cpg_mcast_joined(h1, CPG_TYPE_FIFO, &iov, 1)), CS_OK);
	}
	if (!fd_readable(h1, 5000))
		FAIL("not readable with an event pending");
	if (!fd_readable(h1, 0))
		FAIL("level lost before dispatch");
	EXPECT(cpg_dispatch(h1, CS_DISPATCH_ALL), CS_OK);
	if (strcmp(seen[1].last_msg, "level") != 0)
		FAIL("level message");
	if (fd_readable(h1, 0))
		FAIL("readable after dispatching everything");
	EXPECT(cpg_dispatch(h1, CS_DISPATCH_ONE_NONBLOCKING), CS_ERR_TRY_AGAIN);
	OK("fd-level");

	/* A message far above the atomic size, fragmented by the library; CRC intact. */
	{
		size_t len = 3 * 1024 * 1024 + 17;
		unsigned char *big = malloc(len);
		struct iovec iov[3];
		uint32_t crc;
		for (size_t i = 0; i < len; i++)
			big[i] = (unsigned char)(i * 7 + (i >> 12));
		crc = crc32(big, len);
		iov[0].iov_base = big;
		iov[0].iov_len = 1000;
		iov[1].iov_base = big + 1000;
		iov[1].iov_len = 2 * 1024 * 1024;
		iov[2].iov_base = big + 1000 + 2 * 1024 * 1024;
		iov[2].iov_len = len - 1000 - 2 * 1024 * 1024;
		EXPECT(RETRY(cpg_mcast_joined(h1, CPG_TYPE_AGREED, iov, 3)), CS_OK);
		WAIT_FOR(h1, seen[1].last_len == len);
		if (seen[1].last_crc != crc)
			FAIL("large message CRC (self)");
		free(big);
		big = calloc(1, 80u << 20);
		iov[0].iov_base = big;
		iov[0].iov_len = 80u << 20;
		EXPECT(cpg_mcast_joined(h1, CPG_TYPE_AGREED, iov, 1), CS_ERR_TOO_BIG);
		free(big);
	}
	OK("large-messages");

	/* Zero-copy buffers: the message is the buffer at the call; the caller may
	 * rewrite it and send again at once. */
	{
		void *buf = NULL, *small = NULL;
		EXPECT(cpg_zcb_alloc(h1, 100000, NULL), CS_ERR_INVALID_PARAM);
		EXPECT(cpg_zcb_alloc(bogus, 100000, &buf), CS_ERR_BAD_HANDLE);
		EXPECT(cpg_zcb_alloc(h1, 100000, &buf), CS_OK);
		memset(buf, 'A', 100000);
		EXPECT(RETRY(cpg_zcb_mcast_joined(h1, CPG_TYPE_AGREED, buf, 100000)), CS_OK);
		memset(buf, 'B', 100000);
		EXPECT(RETRY(cpg_zcb_mcast_joined(h1, CPG_TYPE_AGREED, buf, 100000)), CS_OK);
		memset(buf, 'C', 100000);
		EXPECT(cpg_zcb_mcast_joined(h1, CPG_TYPE_AGREED, buf, 100001), CS_ERR_INVALID_PARAM);
		EXPECT(cpg_zcb_alloc(h1, 64, &small), CS_OK);
		memcpy(small, "zcb-small", 9);
		EXPECT(RETRY(cpg_zcb_mcast_joined(h1, CPG_TYPE_AGREED, small, 9)), CS_OK);
		WAIT_FOR(h1, strcmp(seen[1].last_msg, "zcb-small") == 0);
		if (seen[1].zcb_a != 1 || seen[1].zcb_b != 1 || seen[1].zcb_bad != 0)
			FAIL("zcb contents: A %d B %d bad %d", seen[1].zcb_a, seen[1].zcb_b,
			     seen[1].zcb_bad);
		EXPECT(cpg_zcb_free(h1, buf), CS_OK);
		EXPECT(cpg_zcb_free(h1, buf), CS_ERR_INVALID_PARAM);
		EXPECT(cpg_zcb_free(h1, small), CS_OK);
		EXPECT(cpg_zcb_free(h1, NULL), CS_OK);
	}
	OK("zcb");

	/* Iterations. */
	{
		cpg_iteration_handle_t it;
		struct cpg_iteration_description_t d;
		int groups = 0, members = 0;
		EXPECT(cpg_iteration_initialize(h1, CPG_ITERATION_ALL, &long_name, &it),
		       CS_ERR_NAME_TOO_LONG);
		EXPECT(cpg_iteration_initialize(h1, CPG_ITERATION_ALL, NULL, NULL),
		       CS_ERR_INVALID_PARAM);
		EXPECT(cpg_iteration_initialize(h1, CPG_ITERATION_ONE_GROUP, NULL, &it),
		       CS_ERR_INVALID_PARAM);
		EXPECT(cpg_iteration_initialize(h1, CPG_ITERATION_ALL, &group, &it),
		       CS_ERR_INVALID_PARAM);
		EXPECT(cpg_iteration_initialize(h1, 9, NULL, &it), CS_ERR_INVALID_PARAM);
		EXPECT(cpg_iteration_initialize(bogus, CPG_ITERATION_ALL, NULL, &it),
		       CS_ERR_BAD_HANDLE);
		EXPECT(cpg_iteration_initialize(h1, CPG_ITERATION_NAME_ONLY, NULL, &it), CS_OK);
		while (cpg_iteration_next(it, &d) == CS_OK)
			if (((d.group.length == group.length &&
			      !memcmp(d.group.value, group.value, group.length)) ||
			     (d.group.length == group_b.length &&
			      !memcmp(d.group.value, group_b.value, group_b.length))) &&
			    !d.nodeid && !d.pid)
				groups++;
		EXPECT(cpg_iteration_next(it, &d), CS_ERR_NO_SECTIONS);
		EXPECT(cpg_iteration_next(it, NULL), CS_ERR_INVALID_PARAM);
		EXPECT(cpg_iteration_finalize(it), CS_OK);
		EXPECT(cpg_iteration_finalize(it), CS_ERR_BAD_HANDLE);
		EXPECT(cpg_iteration_next(it, &d), CS_ERR_BAD_HANDLE);
		EXPECT(cpg_iteration_initialize(h1, CPG_ITERATION_ONE_GROUP, &group, &it), CS_OK);
		while (cpg_iteration_next(it, &d) == CS_OK)
			if (d.nodeid == 1 && d.pid == (uint32_t)getpid())
				members++;
		EXPECT(cpg_iteration_finalize(it), CS_OK);
		EXPECT(cpg_iteration_initialize(h1, CPG_ITERATION_ALL, NULL, &it), CS_OK);
		while (cpg_iteration_next(it, &d) == CS_OK)
			if (d.nodeid == 1 && d.pid == (uint32_t)getpid())
				members++;
		if (groups != 2 || members != 3)
			FAIL("iterations: groups %d members %d", groups, members);
		/* Left open: iterations die with their handle (checked below). */
		EXPECT(cpg_iteration_initialize(h2, CPG_ITERATION_ALL, NULL, &it), CS_OK);
		EXPECT(cpg_finalize(h2), CS_OK);
		EXPECT(cpg_iteration_next(it, &d), CS_ERR_BAD_HANDLE);
	}
	OK("iterations");

	/* Leave: wrong name NOT_EXIST; the leaver gets its own LEAVE confchg. */
	h3 = new_handle(3, &callbacks);
	EXPECT(RETRY(cpg_join(h3, &group_c)), CS_OK);
	WAIT_FOR(h3, seen[3].confchgs == 1);
	set_name(&other, "not-this-group");
	EXPECT(cpg_leave(h3, &other), CS_ERR_NOT_EXIST);
	EXPECT(RETRY(cpg_leave(h3, &group_c)), CS_OK);
	WAIT_FOR(h3, seen[3].confchgs == 2);
	if (seen[3].left_n != 1 || seen[3].last_left.reason != CPG_REASON_LEAVE ||
	    seen[3].members != 0)
		FAIL("own leave: reason %u", seen[3].last_left.reason);
	EXPECT(cpg_leave(h3, &group_c), CS_ERR_NOT_EXIST);
	/* Re-join after the leave (the reset docs/cpg.md §5.1 asks for), and
	 * finalize inside the join confchg: the dispatch returns BAD_HANDLE. */
	seen[3].finalize_in_confchg = 1;
	EXPECT(RETRY(cpg_join(h3, &group_c)), CS_OK);
	OK("leave");
	h4 = new_handle(4, &callbacks);
	{
		int r = CS_OK;
		for (int i = 0; i < 2000 && r == CS_OK; i++) {
			r = cpg_dispatch(h3, CS_DISPATCH_ONE_NONBLOCKING);
			if (r == CS_ERR_TRY_AGAIN) {
				r = CS_OK;
				usleep(10000);
			}
		}
		if (r != CS_ERR_BAD_HANDLE || seen[3].finalize_result != CS_OK)
			FAIL("finalize in callback: dispatch %d finalize %d", r,
			     seen[3].finalize_result);
		EXPECT(cpg_finalize(h3), CS_ERR_BAD_HANDLE);
		EXPECT(cpg_join(h3, &group), CS_ERR_BAD_HANDLE);
	}
	OK("finalize-in-callback");

	/* pthread_cancel of a thread blocked in a BLOCKING dispatch. */
	EXPECT(pthread_create(&thread, NULL, blocking_dispatch, &h4), 0);
	usleep(300000);
	EXPECT(pthread_cancel(thread), 0);
	EXPECT(pthread_join(thread, &ret), 0);
	if (ret != PTHREAD_CANCELED)
		FAIL("cancelled dispatch returned %ld", (long)ret);
	/* The handle still works after its dispatcher was cancelled. */
	EXPECT(cpg_local_get(h4, &local), CS_OK);
	EXPECT(cpg_dispatch(h4, CS_DISPATCH_ALL), CS_OK);
	EXPECT(cpg_finalize(h4), CS_OK);
	OK("pthread-cancel");

	/* cpg_finalize from another thread ends a BLOCKING dispatch with BAD_HANDLE;
	 * ONE waits for an event. */
	h5 = new_handle(5, &callbacks);
	EXPECT(pthread_create(&thread, NULL, blocking_dispatch, &h5), 0);
	usleep(200000);
	EXPECT(cpg_finalize(h5), CS_OK);
	EXPECT(pthread_join(thread, &ret), 0);
	if ((long)ret != CS_ERR_BAD_HANDLE)
		FAIL("blocking dispatch after finalize: %ld", (long)ret);
	OK("finalize-from-thread");

	cfg_checks();

	/* Finalize: BAD_HANDLE afterwards everywhere. */
	EXPECT(cpg_finalize(h1), CS_OK);
	EXPECT(cpg_finalize(h1), CS_ERR_BAD_HANDLE);
	EXPECT(cpg_local_get(h1, &local), CS_ERR_BAD_HANDLE);
	EXPECT(cpg_context_get(h1, &p), CS_ERR_BAD_HANDLE);
	EXPECT(cpg_mcast_joined(h1, CPG_TYPE_AGREED, NULL, 0), CS_ERR_BAD_HANDLE);
	EXPECT(cpg_zcb_free(h1, NULL), CS_ERR_BAD_HANDLE);
	EXPECT(cpg_flow_control_state_get(h1, &fc), CS_ERR_BAD_HANDLE);
	OK("finalize");
	printf("all ok\n");
	return 0;
}
