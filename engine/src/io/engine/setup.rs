//! Setting the engine up from the daemon's configuration: keys, the ring sequence
//! file, the host's and the ipc layer's configurations, the start log line.

use super::*;

/// The sealer and opener of the configured key file; none without one (the cluster
/// then runs in the clear, which is logged).
pub(super) fn sealing(
    config: &DaemonConfig,
) -> Result<(Option<Sealer>, Option<Opener>), EngineError> {
    let Some(path) = &config.settings.key_file else {
        tracing::warn!(
            "no key_file: the cluster runs in the clear (no authentication, no encryption)"
        );
        return Ok((None, None));
    };
    let key = keyfile::read(path)?;
    if keyfile::is_exposed(path) {
        tracing::warn!(key_file = %path.display(), "key file is readable by group or others");
    }
    tracing::info!(key_file = %path.display(), "datagrams are sealed (ChaCha20-Poly1305)");
    Ok((
        Some(Sealer::new(
            &key,
            config.node_id,
            config.cluster_id,
            keyfile::counter_from_clock(),
        )),
        Some(Opener::new(&key, config.cluster_id, config.nodes.len())),
    ))
}

/// The ring sequence file and the value stored in it (rewritten at once: a bad state
/// dir stops the start).
pub(super) fn open_ring_seq_store(
    config: &DaemonConfig,
) -> Result<(FileRingSeqStore, u64), EngineError> {
    FileRingSeqStore::open(config.ring_seq_path.clone()).map_err(io_error(format!(
        "state_dir: ring sequence file {}",
        config.ring_seq_path.display()
    )))
}

/// The host's configuration, one per layer, from the daemon's.
pub(super) fn host_config(config: &DaemonConfig) -> HostConfig {
    let ipc = &config.settings.ipc;
    HostConfig {
        totem: config.totem.clone(),
        cpg: crate::cpg::Limits {
            max_members_per_group: ipc.max_members_per_group,
            max_groups: ipc.max_groups,
            max_connections: ipc.max_clients,
            max_message_bytes: config
                .totem
                .max_message_bytes
                .saturating_sub(crate::cpg::MCAST_HEADER_MAX),
        },
        flow: FlowLimits {
            max_events: ipc.backlog_events,
            max_bytes: ipc.backlog_bytes,
        },
    }
}

pub(super) fn log_ready(
    config: &DaemonConfig,
    recv_buffers: u16,
    huge_pages: bool,
    gso: bool,
    gro: bool,
) {
    let s = &config.settings;
    tracing::info!(
        node_id = config.node_id,
        cluster = %s.cluster_name,
        cluster_id = config.cluster_id,
        address = %config.own_addr,
        transport = ?s.transport,
        nodes = config.nodes.len(),
        token_ms = config.totem.token.as_millis() as u64,
        recv_buffers,
        udp_gso = gso,
        udp_gro = gro,
        huge_pages,
        stats = %config.stats_path.display(),
        "engine ready"
    );
}

/// The session layer's configuration, from the daemon's.
pub(super) fn ipc_config(config: &DaemonConfig) -> IpcConfig {
    let s = &config.settings;
    let ipc = &s.ipc;
    IpcConfig {
        socket_path: s.ipc_socket.clone(),
        nodes: config.nodes.clone(),
        allowed_uids: ipc.allowed_uids.clone(),
        allowed_gids: ipc.allowed_gids.clone(),
        region: ringcast_shm::RegionSpec {
            submit_ring_bytes: ipc.submit_ring_bytes,
            event_ring_bytes: ipc.event_ring_bytes,
            // Trusted senders write into a slab of the delivery pool instead.
            pool_bytes: if ipc.trusted_senders {
                0
            } else {
                ipc.send_buffer_bytes
            },
        },
        huge_pages: ipc.huge_pages,
        max_clients: ipc.max_clients,
        delivery_pool_bytes: ipc.delivery_pool_bytes,
        delivery_pool_min_bytes: ipc.delivery_pool_min_bytes,
        trusted_slab_bytes: if ipc.trusted_senders {
            ipc.send_buffer_bytes
        } else {
            0
        },
    }
}
