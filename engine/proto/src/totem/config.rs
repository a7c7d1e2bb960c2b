use std::time::Duration;

use super::NodeId;

/// Totem settings. [`Config::new`] applies Corosync's defaults (docs/cpg.md §10),
/// including the token scaling with the node count; every field may then be changed and
/// [`Config::validate`] checks the result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node's id; never 0.
    pub node_id: NodeId,
    /// Packets that carry another cluster id are dropped (and counted).
    pub cluster_id: u32,
    /// Token-loss timeout.
    pub token: Duration,
    /// Resend the last token (or commit token) when nothing came back in this long.
    pub token_retransmit: Duration,
    /// How long an idle representative holds the token before passing it on.
    pub hold: Duration,
    /// Resend the join message this often while gathering.
    pub join: Duration,
    /// Largest random delay before sending a join message (0 = none).
    pub send_join: Duration,
    /// Give up on nodes that have not agreed on membership after this long.
    pub consensus: Duration,
    /// How often an idle representative looks for other rings (merge detection).
    pub merge: Duration,
    /// Log a warning after this percentage of `token` without a token (0 = never).
    pub token_warning_percent: u32,
    /// Token visits with a stuck aru before a node declares it failed to receive.
    pub fail_recv_const: u32,
    /// Token visits with no new message before the representative may hold the token.
    pub seqno_unchanged_const: u32,
    /// Messages one node may originate per token visit.
    pub max_messages: u32,
    /// Messages the whole ring may originate per rotation.
    pub window_size: u32,
    /// Token visits a message must be seen missing before it is requested again.
    pub miss_count_const: u32,
    /// Largest datagram the transport carries, headers included.
    pub max_datagram_bytes: usize,
    /// Largest application message; larger ones are refused at submit. The default,
    /// 64 MiB + 4 KiB, carries a 64 MiB CPG payload with its CPG header.
    pub max_message_bytes: usize,
    /// Bytes of application messages that may wait in the send queue.
    pub send_queue_bytes: usize,
    /// Messages of at least this many bytes (all their fragments too) go into datagrams
    /// by reference, not by copy: the datagram is handed out in pieces
    /// ([`Gather`](crate::wire::gather::Gather)) and this node delivers such messages
    /// from the very `Bytes` it was given. Below it a copy is cheaper than a piece.
    pub pack_by_reference_min: usize,
    /// Largest ring this node accepts.
    pub max_nodes: usize,
    /// Seed of the node's own jitter (send_join); any value.
    pub seed: u64,
    /// Hold application messages after each new regular configuration until the user
    /// calls [`Node::sync_done`](super::Node::sync_done) for that ring; meanwhile only
    /// messages given to [`Node::submit_sync`](super::Node::submit_sync) are sent
    /// (Corosync's "waiting for sync" queue, docs/cpg.md §9.6 "Entering OPERATIONAL"
    /// step 4). The CPG service needs it; a user that never calls `sync_done` must
    /// leave it off.
    pub sync_barrier: bool,
}

/// Smallest `pack_by_reference_min`: bounds the pieces of one datagram.
pub const MIN_PACK_BY_REFERENCE: usize = 256;

/// Default largest application message: a 64 MiB CPG payload plus room for the CPG
/// header (at most a few hundred bytes).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = (64 << 20) + 4096;

/// Corosync's bounds on datagrams: a UDP payload cannot exceed 65,507 bytes.
pub const MAX_DATAGRAM_BYTES: usize = 65_507;
/// The smallest datagram that still leaves room for a token with retransmit requests.
pub const MIN_DATAGRAM_BYTES: usize = 576;
/// Largest send window (Corosync's `MESSAGE_QUEUE_MAX` for the retransmit store).
pub const MAX_WINDOW: u32 = 16_384;

/// Corosync's flow-control defaults, in datagrams: `window_size` per rotation and
/// `max_messages` per token visit. A window sized from bytes never goes below them.
pub const COROSYNC_WINDOW: u32 = 50;
pub const COROSYNC_MAX_MESSAGES: u32 = 17;

/// The flow-control limits that let a rotation carry `window_bytes` of full datagrams of
/// `datagram_bytes`: `(window_size, max_messages)`, the window at least Corosync's 50
/// and at most [`MAX_WINDOW`], the per-visit limit Corosync's share of it (17 of 50).
///
/// Totem counts datagrams (the token's `fcc` and `backlog`, docs/wire-format.md), but
/// what a burst costs a receiver is bytes: its kernel receive buffer, which a whole
/// rotation of the ring's datagrams may fill before it reads them (docs/performance.md,
/// "The flow-control window"). Corosync's 50 counts knet packets of up to 64 KB; at
/// 1,472 bytes the same count carries 1/44 of that.
pub fn window_for_bytes(window_bytes: usize, datagram_bytes: usize) -> (u32, u32) {
    let datagrams = window_bytes / datagram_bytes.max(1);
    let window = u32::try_from(datagrams)
        .unwrap_or(MAX_WINDOW)
        .clamp(COROSYNC_WINDOW, MAX_WINDOW);
    let per_visit =
        (u64::from(window) * u64::from(COROSYNC_MAX_MESSAGES) / u64::from(COROSYNC_WINDOW)) as u32;
    (window, per_visit.max(COROSYNC_MAX_MESSAGES))
}

impl Config {
    /// Corosync's effective defaults for a cluster of `node_count` configured nodes:
    /// `token = 3000 ms + 650 ms × (N − 2)` for N ≥ 3 and the timers derived from it.
    pub fn new(node_id: NodeId, node_count: usize) -> Config {
        let extra = node_count.saturating_sub(2) as u64;
        let token_ms = 3000 + if node_count >= 3 { 650 * extra } else { 0 };
        Config::with_token(node_id, Duration::from_millis(token_ms))
    }

    /// Defaults derived from a given token timeout, as Corosync derives them:
    /// `token_retransmit = ⌊token / 4.2⌋`, `hold = ⌊0.8 × token_retransmit − 10⌋`,
    /// `consensus = ⌊1.2 × token⌋`.
    pub fn with_token(node_id: NodeId, token: Duration) -> Config {
        let token_ms = token.as_millis() as u64;
        let retransmit_ms = token_ms * 10 / 42;
        let hold_ms = (retransmit_ms * 8 / 10).saturating_sub(10);
        Config {
            node_id,
            cluster_id: 0,
            token,
            token_retransmit: Duration::from_millis(retransmit_ms),
            hold: Duration::from_millis(hold_ms),
            join: Duration::from_millis(50),
            send_join: Duration::ZERO,
            consensus: Duration::from_millis(token_ms * 12 / 10),
            merge: Duration::from_millis(200),
            token_warning_percent: 75,
            fail_recv_const: 2500,
            seqno_unchanged_const: 30,
            max_messages: COROSYNC_MAX_MESSAGES,
            window_size: COROSYNC_WINDOW,
            miss_count_const: 5,
            max_datagram_bytes: 1500,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            send_queue_bytes: 128 << 20,
            pack_by_reference_min: 4096,
            max_nodes: 384,
            seed: u64::from(node_id),
            sync_barrier: false,
        }
    }

    /// Checks every setting; the error names the one that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let at_least = |name: &'static str, value: Duration, min_ms: u64| {
            if value < Duration::from_millis(min_ms) {
                Err(ConfigError::TooSmall { name, min_ms })
            } else {
                Ok(())
            }
        };
        if self.node_id == 0 {
            return Err(ConfigError::Invalid {
                name: "node_id",
                why: "0 is reserved",
            });
        }
        at_least("token", self.token, 30)?;
        at_least("token_retransmit", self.token_retransmit, 30)?;
        at_least("join", self.join, 30)?;
        at_least("consensus", self.consensus, 30)?;
        at_least("merge", self.merge, 30)?;
        at_least("hold", self.hold, 14)?;
        if self.consensus < self.join {
            return Err(ConfigError::Invalid {
                name: "consensus",
                why: "must be at least join",
            });
        }
        if self.token_retransmit >= self.token {
            return Err(ConfigError::Invalid {
                name: "token_retransmit",
                why: "must be shorter than token",
            });
        }
        if self.hold >= self.token_retransmit {
            return Err(ConfigError::Invalid {
                name: "hold",
                why: "must be shorter than token_retransmit",
            });
        }
        if self.token_warning_percent > 100 {
            return Err(ConfigError::Invalid {
                name: "token_warning_percent",
                why: "0 to 100",
            });
        }
        if self.max_messages == 0 {
            return Err(ConfigError::Invalid {
                name: "max_messages",
                why: "at least 1",
            });
        }
        if self.window_size < self.max_messages || self.window_size > MAX_WINDOW {
            return Err(ConfigError::Invalid {
                name: "window_size",
                why: "between max_messages and 16384",
            });
        }
        if self.seqno_unchanged_const == 0
            || self.fail_recv_const == 0
            || self.miss_count_const == 0
        {
            return Err(ConfigError::Invalid {
                name: "seqno_unchanged_const/fail_recv_const/miss_count_const",
                why: "at least 1",
            });
        }
        if !(MIN_DATAGRAM_BYTES..=MAX_DATAGRAM_BYTES).contains(&self.max_datagram_bytes) {
            return Err(ConfigError::Invalid {
                name: "max_datagram_bytes",
                why: "between 576 and 65507",
            });
        }
        if self.max_message_bytes == 0 || self.max_message_bytes > u32::MAX as usize {
            return Err(ConfigError::Invalid {
                name: "max_message_bytes",
                why: "between 1 and 4 GiB - 1",
            });
        }
        if self.send_queue_bytes < self.max_message_bytes {
            return Err(ConfigError::Invalid {
                name: "send_queue_bytes",
                why: "must hold at least one message of max_message_bytes",
            });
        }
        // A datagram then has at most 2 * 65,507 / 256 + 1 pieces, well under the
        // 1,024 iovecs one sendmsg takes.
        if self.pack_by_reference_min < MIN_PACK_BY_REFERENCE {
            return Err(ConfigError::Invalid {
                name: "pack_by_reference_min",
                why: "at least 256",
            });
        }
        if !(1..=crate::wire::MAX_MEMBERS).contains(&self.max_nodes) {
            return Err(ConfigError::Invalid {
                name: "max_nodes",
                why: "between 1 and 384",
            });
        }
        Ok(())
    }
}

/// A setting that cannot work, by name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("totem.{name} must be at least {min_ms} ms")]
    TooSmall { name: &'static str, min_ms: u64 },
    #[error("totem.{name}: {why}")]
    Invalid {
        name: &'static str,
        why: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/cpg.md §10, "Effective defaults".
    #[test]
    fn defaults_match_corosync_effective_table() {
        for (n, token, retransmit, hold, consensus) in [
            (2, 3000, 714, 561, 3600),
            (3, 3650, 869, 685, 4380),
            (5, 4950, 1178, 932, 5940),
            (16, 12100, 2880, 2294, 14520),
        ] {
            let c = Config::new(1, n);
            assert_eq!(c.token.as_millis(), token, "token for N={n}");
            assert_eq!(
                c.token_retransmit.as_millis(),
                retransmit,
                "retransmit for N={n}"
            );
            assert_eq!(c.hold.as_millis(), hold, "hold for N={n}");
            assert_eq!(c.consensus.as_millis(), consensus, "consensus for N={n}");
            assert_eq!(c.join.as_millis(), 50);
            assert_eq!(c.merge.as_millis(), 200);
            assert_eq!((c.max_messages, c.window_size), (17, 50));
            assert_eq!(c.max_message_bytes, (64 << 20) + 4096);
            assert!(!c.sync_barrier);
            c.validate().unwrap();
        }
    }

    /// The window scales with the bytes it may carry, keeps Corosync's per-visit share,
    /// and stays within Corosync's defaults and the retransmit store's bound.
    #[test]
    fn window_for_bytes_scales_within_bounds() {
        assert_eq!(window_for_bytes(0, 1472), (50, 17));
        assert_eq!(window_for_bytes(50 * 65_536, 65_536), (50, 17));
        assert_eq!(window_for_bytes(200 * 1472, 1472), (200, 68));
        assert_eq!(window_for_bytes(200 * 1472 + 1471, 1472), (200, 68));
        assert_eq!(window_for_bytes(4 << 20, 1472), (2849, 968));
        assert_eq!(window_for_bytes(usize::MAX, 576), (MAX_WINDOW, 5570));
        assert_eq!(window_for_bytes(1 << 20, 0).0, MAX_WINDOW);
        for bytes in [0, 1 << 16, 1 << 20, 1 << 24, 1 << 30] {
            for datagram in [MIN_DATAGRAM_BYTES, 1472, 9000, MAX_DATAGRAM_BYTES] {
                let mut c = Config::new(1, 3);
                c.max_datagram_bytes = datagram;
                (c.window_size, c.max_messages) = window_for_bytes(bytes, datagram);
                c.validate().unwrap();
            }
        }
    }

    /// docs/cpg.md §10, "Validation".
    #[test]
    fn validation_names_the_bad_setting() {
        let mut c = Config::new(1, 3);
        c.join = Duration::from_millis(10);
        assert_eq!(
            c.validate(),
            Err(ConfigError::TooSmall {
                name: "join",
                min_ms: 30
            })
        );
        let mut c = Config::new(1, 3);
        c.hold = Duration::from_millis(5);
        assert_eq!(
            c.validate(),
            Err(ConfigError::TooSmall {
                name: "hold",
                min_ms: 14
            })
        );
        let mut c = Config::new(0, 3);
        c.node_id = 0;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                name: "node_id",
                ..
            })
        ));
        let mut c = Config::new(1, 3);
        c.max_datagram_bytes = 100;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("max_datagram_bytes")
        );
    }
}
