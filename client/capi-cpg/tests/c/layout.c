/* Layout and constants of the installed headers against docs/cpg.md §2
 * (LP64) and Corosync 3.1's cfg.h values. Exit status 0 when all hold. */
#include <corosync/cpg.h>
#include <corosync/cfg.h>
#include <stdalign.h>
#include <stddef.h>
#include <stdio.h>

static int failures;

#define CHECK_EQ(what, got, want)                                                    \
	do {                                                                         \
		unsigned long long g_ = (unsigned long long)(got);                   \
		unsigned long long w_ = (unsigned long long)(want);                  \
		if (g_ != w_) {                                                      \
			printf("FAIL %s = %llu, want %llu\n", what, g_, w_);         \
			failures++;                                                  \
		}                                                                    \
	} while (0)
#define SIZE(T, s, a)                                                                \
	do {                                                                         \
		CHECK_EQ("sizeof(" #T ")", sizeof(T), s);                           \
		CHECK_EQ("alignof(" #T ")", alignof(T), a);                         \
	} while (0)
#define OFF(T, f, o) CHECK_EQ("offsetof(" #T ", " #f ")", offsetof(T, f), o)
#define VAL(c, v) CHECK_EQ(#c, c, v)

int main(void)
{
	/* 2.1 cs_error_t */
	VAL(CS_OK, 1); VAL(CS_ERR_LIBRARY, 2); VAL(CS_ERR_VERSION, 3); VAL(CS_ERR_INIT, 4);
	VAL(CS_ERR_TIMEOUT, 5); VAL(CS_ERR_TRY_AGAIN, 6); VAL(CS_ERR_INVALID_PARAM, 7);
	VAL(CS_ERR_NO_MEMORY, 8); VAL(CS_ERR_BAD_HANDLE, 9); VAL(CS_ERR_BUSY, 10);
	VAL(CS_ERR_ACCESS, 11); VAL(CS_ERR_NOT_EXIST, 12); VAL(CS_ERR_NAME_TOO_LONG, 13);
	VAL(CS_ERR_EXIST, 14); VAL(CS_ERR_NO_SPACE, 15); VAL(CS_ERR_INTERRUPT, 16);
	VAL(CS_ERR_NAME_NOT_FOUND, 17); VAL(CS_ERR_NO_RESOURCES, 18);
	VAL(CS_ERR_NOT_SUPPORTED, 19); VAL(CS_ERR_BAD_OPERATION, 20);
	VAL(CS_ERR_FAILED_OPERATION, 21); VAL(CS_ERR_MESSAGE_ERROR, 22);
	VAL(CS_ERR_QUEUE_FULL, 23); VAL(CS_ERR_QUEUE_NOT_AVAILABLE, 24);
	VAL(CS_ERR_BAD_FLAGS, 25); VAL(CS_ERR_TOO_BIG, 26); VAL(CS_ERR_NO_SECTIONS, 27);
	VAL(CS_ERR_CONTEXT_NOT_FOUND, 28); VAL(CS_ERR_TOO_MANY_GROUPS, 30);
	VAL(CS_ERR_SECURITY, 100);
	SIZE(cs_error_t, 4, 4);

	/* 2.2 enumerations */
	VAL(CS_DISPATCH_ONE, 1); VAL(CS_DISPATCH_ALL, 2); VAL(CS_DISPATCH_BLOCKING, 3);
	VAL(CS_DISPATCH_ONE_NONBLOCKING, 4);
	SIZE(cs_dispatch_flags_t, 4, 4);
	VAL(CPG_TYPE_UNORDERED, 0); VAL(CPG_TYPE_FIFO, 1); VAL(CPG_TYPE_AGREED, 2);
	VAL(CPG_TYPE_SAFE, 3);
	SIZE(cpg_guarantee_t, 4, 4);
	VAL(CPG_FLOW_CONTROL_DISABLED, 0); VAL(CPG_FLOW_CONTROL_ENABLED, 1);
	SIZE(cpg_flow_control_state_t, 4, 4);
	VAL(CPG_REASON_UNDEFINED, 0); VAL(CPG_REASON_JOIN, 1); VAL(CPG_REASON_LEAVE, 2);
	VAL(CPG_REASON_NODEDOWN, 3); VAL(CPG_REASON_NODEUP, 4); VAL(CPG_REASON_PROCDOWN, 5);
	SIZE(cpg_reason_t, 4, 4);
	VAL(CPG_ITERATION_NAME_ONLY, 1); VAL(CPG_ITERATION_ONE_GROUP, 2);
	VAL(CPG_ITERATION_ALL, 3);
	SIZE(cpg_iteration_type_t, 4, 4);
	VAL(CPG_MODEL_V1, 1);
	SIZE(cpg_model_t, 4, 4);
	VAL(CPG_MODEL_V1_DELIVER_INITIAL_TOTEM_CONF, 0x01);
	SIZE(cpg_handle_t, 8, 8);
	SIZE(cpg_iteration_handle_t, 8, 8);

	/* 2.3 structures */
	SIZE(struct cpg_name, 132, 4);
	OFF(struct cpg_name, length, 0); OFF(struct cpg_name, value, 4);
	SIZE(struct cpg_address, 12, 4);
	OFF(struct cpg_address, nodeid, 0); OFF(struct cpg_address, pid, 4);
	OFF(struct cpg_address, reason, 8);
	SIZE(struct cpg_ring_id, 16, 8);
	OFF(struct cpg_ring_id, nodeid, 0); OFF(struct cpg_ring_id, seq, 8);
	SIZE(struct cpg_iteration_description_t, 140, 4);
	OFF(struct cpg_iteration_description_t, group, 0);
	OFF(struct cpg_iteration_description_t, nodeid, 132);
	OFF(struct cpg_iteration_description_t, pid, 136);
	SIZE(cpg_callbacks_t, 16, 8);
	OFF(cpg_callbacks_t, cpg_deliver_fn, 0); OFF(cpg_callbacks_t, cpg_confchg_fn, 8);
	SIZE(cpg_model_data_t, 4, 4);
	OFF(cpg_model_data_t, model, 0);
	SIZE(cpg_model_v1_data_t, 40, 8);
	OFF(cpg_model_v1_data_t, model, 0); OFF(cpg_model_v1_data_t, cpg_deliver_fn, 8);
	OFF(cpg_model_v1_data_t, cpg_confchg_fn, 16);
	OFF(cpg_model_v1_data_t, cpg_totem_confchg_fn, 24);
	OFF(cpg_model_v1_data_t, flags, 32);

	/* 2.4 limits */
	VAL(CPG_MAX_NAME_LENGTH, 128);
	VAL(CPG_MEMBERS_MAX, 128);

	/* corotypes.h extras */
	VAL(CS_MAX_NAME_LENGTH, 256);
	SIZE(cs_name_t, 258, 2);
	OFF(cs_name_t, value, 2);
	SIZE(cs_time_t, 8, 8);
	VAL(CS_TRACK_CURRENT, 1); VAL(CS_TRACK_CHANGES, 2); VAL(CS_TRACK_CHANGES_ONLY, 4);

	/* cfg.h (Corosync 3.1) */
	SIZE(corosync_cfg_handle_t, 8, 8);
	VAL(COROSYNC_CFG_SHUTDOWN_FLAG_REQUEST, 0);
	VAL(COROSYNC_CFG_SHUTDOWN_FLAG_REGARDLESS, 1);
	VAL(COROSYNC_CFG_SHUTDOWN_FLAG_IMMEDIATE, 2);
	VAL(COROSYNC_CFG_SHUTDOWN_FLAG_NO, 0); VAL(COROSYNC_CFG_SHUTDOWN_FLAG_YES, 1);
	SIZE(corosync_cfg_shutdown_flags_t, 4, 4);
	SIZE(corosync_cfg_callbacks_t, 8, 8);
	SIZE(corosync_cfg_node_address_t, 32, 4);
	OFF(corosync_cfg_node_address_t, address_length, 0);
	OFF(corosync_cfg_node_address_t, address, 4);
	VAL(CFG_NODE_STATUS_V1, 1);
	VAL(CFG_MAX_HOST_LEN, 256); VAL(CFG_MAX_LINKS, 8);
	SIZE(struct corosync_knet_link_status_v1, 520, 4);
	OFF(struct corosync_knet_link_status_v1, enabled, 0);
	OFF(struct corosync_knet_link_status_v1, connected, 1);
	OFF(struct corosync_knet_link_status_v1, dynconnected, 2);
	OFF(struct corosync_knet_link_status_v1, mtu, 4);
	OFF(struct corosync_knet_link_status_v1, src_ipaddr, 8);
	OFF(struct corosync_knet_link_status_v1, dst_ipaddr, 264);
	SIZE(struct corosync_cfg_node_status_v1, 4176, 4);
	OFF(struct corosync_cfg_node_status_v1, version, 0);
	OFF(struct corosync_cfg_node_status_v1, nodeid, 4);
	OFF(struct corosync_cfg_node_status_v1, reachable, 8);
	OFF(struct corosync_cfg_node_status_v1, remote, 9);
	OFF(struct corosync_cfg_node_status_v1, external, 10);
	OFF(struct corosync_cfg_node_status_v1, onwire_min, 11);
	OFF(struct corosync_cfg_node_status_v1, onwire_max, 12);
	OFF(struct corosync_cfg_node_status_v1, onwire_ver, 13);
	OFF(struct corosync_cfg_node_status_v1, link_status, 16);

	if (failures) {
		printf("%d layout checks failed\n", failures);
		return 1;
	}
	printf("layout ok\n");
	return 0;
}
