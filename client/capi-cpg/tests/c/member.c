/* A CPG member driven through stdin, as CPG programs in the field are written
 * (docs/cpg.md §12): it polls the cpg fd and the cfg fd together with stdin,
 * dispatches with CS_DISPATCH_ALL, and reconnects after CS_ERR_LIBRARY when the engine
 * restarts. Usage: member GROUP. Prints one line per event:
 *   ready NODE PID | confchg members=N left=node:pid:reason,... joined=...
 *   deliver NODE PID TEXT | members N node:pid,... | lost ... | reconnected | shutdown FLAGS
 * Commands on stdin: `send TEXT`, `members`, `leave`, `shutdown` (cfg try_shutdown),
 * `exit`; EOF exits without leaving. */
#include <corosync/cpg.h>
#include <corosync/cfg.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct cpg_name group;
static cpg_handle_t handle;
static corosync_cfg_handle_t cfg;

static void print_list(const char *what, const struct cpg_address *l, size_t n)
{
	printf(" %s=", what);
	for (size_t i = 0; i < n; i++)
		printf("%s%u:%u:%u", i ? "," : "", l[i].nodeid, l[i].pid, l[i].reason);
}

static void confchg(cpg_handle_t h, const struct cpg_name *g, const struct cpg_address *m,
		    size_t nm, const struct cpg_address *l, size_t nl,
		    const struct cpg_address *j, size_t nj)
{
	(void)h;
	(void)g;
	printf("confchg members=%zu", nm);
	print_list("list", m, nm);
	print_list("left", l, nl);
	print_list("joined", j, nj);
	printf("\n");
	fflush(stdout);
}

static void deliver(cpg_handle_t h, const struct cpg_name *g, uint32_t nodeid, uint32_t pid,
		    void *msg, size_t len)
{
	(void)h;
	(void)g;
	printf("deliver %u %u %.*s\n", nodeid, pid, (int)len, (const char *)msg);
	fflush(stdout);
}

static void shutdown_cb(corosync_cfg_handle_t h, corosync_cfg_shutdown_flags_t flags)
{
	(void)h;
	printf("shutdown %d\n", (int)flags);
	fflush(stdout);
}

/* Connects and joins, retrying while the engine is down or syncing (30 s). */
static void connect_and_join(void)
{
	cpg_callbacks_t cb = { deliver, confchg };
	corosync_cfg_callbacks_t cfg_cb = { shutdown_cb };
	unsigned int node = 0;
	int r;

	for (int i = 0; (r = cpg_initialize(&handle, &cb)) != CS_OK; i++) {
		if (i > 3000) {
			printf("initialize failed %d\n", r);
			exit(2);
		}
		usleep(10000);
	}
	for (int i = 0; (r = cpg_join(handle, &group)) != CS_OK; i++) {
		if (r != CS_ERR_TRY_AGAIN || i > 3000) {
			printf("join failed %d\n", r);
			exit(2);
		}
		usleep(10000);
	}
	if (corosync_cfg_initialize(&cfg, &cfg_cb) != CS_OK ||
	    corosync_cfg_trackstart(cfg, CS_TRACK_CHANGES) != CS_OK) {
		printf("cfg failed\n");
		exit(2);
	}
	cpg_local_get(handle, &node);
	printf("ready %u %d\n", node, (int)getpid());
	fflush(stdout);
}

/* The engine went away: Corosync's sequence (LIBRARY, then BAD_HANDLE once the handle
 * is finalized), then a new handle. */
static void reconnect(int first_error)
{
	unsigned int node;
	int again, fin, after;

	again = cpg_local_get(handle, &node);
	fin = cpg_finalize(handle);
	after = cpg_local_get(handle, &node);
	while (corosync_cfg_dispatch(cfg, CS_DISPATCH_ALL) == CS_OK)
		usleep(10000);
	corosync_cfg_finalize(cfg);
	printf("lost dispatch=%d again=%d finalize=%d after=%d\n", first_error, again, fin, after);
	fflush(stdout);
	connect_and_join();
	printf("reconnected\n");
	fflush(stdout);
}

int main(int argc, char **argv)
{
	char line[4096];

	if (argc != 2)
		return 2;
	group.length = strlen(argv[1]);
	memcpy(group.value, argv[1], group.length);
	setvbuf(stdin, NULL, _IONBF, 0);
	connect_and_join();
	for (;;) {
		int fd, cfg_fd;
		struct pollfd p[3];

		cpg_fd_get(handle, &fd);
		corosync_cfg_fd_get(cfg, &cfg_fd);
		p[0] = (struct pollfd){ .fd = 0, .events = POLLIN };
		p[1] = (struct pollfd){ .fd = fd, .events = POLLIN };
		p[2] = (struct pollfd){ .fd = cfg_fd, .events = POLLIN };
		if (poll(p, 3, 1000) < 0)
			continue;
		if (p[2].revents)
			corosync_cfg_dispatch(cfg, CS_DISPATCH_ALL);
		if (p[1].revents) {
			int r = cpg_dispatch(handle, CS_DISPATCH_ALL);
			if (r != CS_OK) {
				reconnect(r);
				continue;
			}
		}
		if (p[0].revents) {
			ssize_t n = read(0, line, sizeof(line) - 1);
			char *cmd, *save = NULL;
			if (n <= 0)
				return 0; /* EOF: exit without leaving */
			line[n] = 0;
			for (cmd = strtok_r(line, "\n", &save); cmd; cmd = strtok_r(NULL, "\n", &save)) {
				if (strncmp(cmd, "send ", 5) == 0) {
					struct iovec iov = { cmd + 5, strlen(cmd + 5) };
					int r;
					while ((r = cpg_mcast_joined(handle, CPG_TYPE_AGREED, &iov, 1)) ==
					       CS_ERR_TRY_AGAIN)
						usleep(1000);
					if (r != CS_OK)
						printf("send failed %d\n", r);
				} else if (strcmp(cmd, "members") == 0) {
					struct cpg_address l[64];
					int count = 64;
					int r = cpg_membership_get(handle, &group, l, &count);
					printf("members %d", r == CS_OK ? count : -r);
					for (int i = 0; r == CS_OK && i < count; i++)
						printf("%s%u:%u", i ? "," : " ", l[i].nodeid, l[i].pid);
					printf("\n");
				} else if (strcmp(cmd, "leave") == 0) {
					printf("leave %d\n", cpg_leave(handle, &group));
				} else if (strcmp(cmd, "shutdown") == 0) {
					printf("try_shutdown %d\n",
					       corosync_cfg_try_shutdown(
						       cfg, COROSYNC_CFG_SHUTDOWN_FLAG_REQUEST));
				} else if (strcmp(cmd, "exit") == 0) {
					_exit(0);
				}
				fflush(stdout);
			}
		}
	}
}
