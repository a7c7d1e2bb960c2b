//! The daemon's configuration: a TOML file, command-line flags that override any of its
//! settings, and built-in defaults that start a single-node engine on 127.0.0.1 with no
//! file at all.
//!
//! Resolution order (later wins): built-in defaults → `--config FILE` → dedicated flags
//! (`--node-id`, `--token-ms`, …) → `--set key=value` (any setting, dotted path, value in
//! TOML syntax). The merged table is then checked as a whole ([`DaemonConfig::resolve`]):
//! every error names the setting that is wrong.
//!
//! Names: a `*Settings` type is what the file and the flags say (this module, with
//! serde); a layer runs with one checked type of its own: `totem::Config`,
//! `cpg::Limits`, `ipc::IpcConfig`, and [`DaemonConfig`] holding them all.
//!
//! ```toml
//! cluster_name = "prod"
//! node_id = 2
//! transport = "udpu"            # or "multicast" (with multicast_group)
//! port = 5405
//! datagram_bytes = 1472
//! idle = "backoff"              # or "spin"
//! cpu = 3                       # pin the engine thread (optional)
//! key_file = "/etc/ringcast/authkey"
//! state_dir = "/var/lib/ringcast"
//!
//! [[nodelist]]
//! id = 1
//! address = "10.0.0.1"          # or "10.0.0.1:5405"
//! [[nodelist]]
//! id = 2
//! address = "10.0.0.2"
//!
//! [totem]
//! token_ms = 1000               # every Totem timer and constant, see TotemSettings
//! ```

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::totem::{self, NodeId};
use crate::wire::{self, seal};

/// How `Destination::All` reaches every node.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// One unicast copy per nodelist entry, this node included (Corosync's UDPU).
    #[default]
    Udpu,
    /// IP multicast to `multicast_group:port`; tokens are unicast.
    Multicast,
}

/// What the engine thread does when it has no work (docs/architecture.md, "Time, randomness, trust"; docs/tuning.md).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdleStrategy {
    /// Never sleep: for an isolated core on a tuned host.
    Spin,
    /// Spin a little, then yield, then sleep in `io_uring_enter` until the next
    /// deadline or completion.
    #[default]
    Backoff,
}

/// One configured node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    pub id: NodeId,
    /// `IP` (the cluster's `port` applies) or `IP:PORT`.
    pub address: String,
}

/// Totem timers and constants (docs/cpg.md §10). Unset values take Corosync's defaults,
/// derived from the effective token timeout like Corosync derives them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TotemSettings {
    /// Base token timeout (default 3000).
    pub token_ms: Option<u64>,
    /// Added per node above two (default 650; 0 disables scaling).
    pub token_coefficient_ms: Option<u64>,
    pub token_retransmit_ms: Option<u64>,
    pub hold_ms: Option<u64>,
    pub join_ms: Option<u64>,
    pub send_join_ms: Option<u64>,
    pub consensus_ms: Option<u64>,
    pub merge_ms: Option<u64>,
    pub token_warning_percent: Option<u32>,
    pub fail_recv_const: Option<u32>,
    pub seqno_unchanged_const: Option<u32>,
    /// Datagrams one node may originate per token visit. Set (or `window_size` set),
    /// both count datagrams as in Corosync (17 and 50 when unset); unset with
    /// `window_size` unset, both come from `window_bytes`.
    pub max_messages: Option<u32>,
    /// Datagrams the whole ring may originate per rotation (see `max_messages`).
    pub window_size: Option<u32>,
    /// Bytes of full datagrams the whole ring may originate per rotation, what a
    /// receiver may have to buffer: `window_size` = this / `datagram_bytes` (at least
    /// 50) and `max_messages` Corosync's share of it (17 per 50). Default: half the
    /// socket receive buffer the kernel grants the engine, at most 1 MiB;
    /// docs/performance.md, "The flow-control window". Not with `window_size` or
    /// `max_messages`.
    pub window_bytes: Option<usize>,
    pub miss_count_const: Option<u32>,
    pub max_message_bytes: Option<usize>,
    pub send_queue_bytes: Option<usize>,
    pub pack_by_reference_min: Option<usize>,
}

/// The internal load generator (a test hook, feature `test-hooks`): the engine submits
/// messages itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoadSettings {
    /// Size of each generated message; 0 disables the generator. At least 24 bytes
    /// (the generator's own header).
    pub size_bytes: usize,
    /// Messages per second; 0 = as fast as the send queue accepts them.
    pub rate_per_s: u64,
    /// Stop after this many messages; 0 = never.
    pub count: u64,
}

/// Client sessions (`[ipc]`): who may connect and how big each session's shared region is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IpcSettings {
    /// Users allowed to connect besides root and the engine's own user.
    pub allowed_uids: Vec<u32>,
    /// Groups whose members may connect.
    pub allowed_gids: Vec<u32>,
    /// Back each client's region with huge pages when the host has them reserved (one
    /// warning, then normal pages, when it has not).
    pub huge_pages: bool,
    /// Most client connections at once.
    pub max_clients: usize,
    /// Client → engine ring per session (power of two).
    pub submit_ring_bytes: usize,
    /// Engine → client ring per session (power of two).
    pub event_ring_bytes: usize,
    /// Events a slow client may leave unconsumed beyond its ring before it is cut off.
    pub backlog_events: usize,
    /// Payload bytes those events may pin.
    pub backlog_bytes: usize,
    /// Most members of one group, enforced: a join past it is refused with
    /// `CS_ERR_NO_SPACE`. Default 1024, above cpg.h's `CPG_MEMBERS_MAX` (128), which
    /// only sizes the arrays programs hand to `cpg_membership_get` (it writes at most
    /// the count it is given; docs/c-api.md).
    pub max_members_per_group: usize,
    /// Most groups in the cluster.
    pub max_groups: usize,
    /// One pool shared read-only with every client: a delivery of at least
    /// `delivery_pool_min_bytes` is copied into it once and each local receiver reads
    /// it there. A multiple of 2 MiB; 0 turns it off (every delivery inline). Pages
    /// are used as buffers are, up to this size.
    pub delivery_pool_bytes: usize,
    pub delivery_pool_min_bytes: usize,
    /// Send buffers in each client's region: a message larger than one submit-ring
    /// record is written there in place (`Cpg::alloc`, `mcast_with`) and the engine
    /// copies it out once. A multiple of 2 MiB; 0 = none (such messages are copied into
    /// the ring in pieces). Pages are used as buffers are.
    pub send_buffer_bytes: usize,
    /// Clients that trust each other (one application's processes): the delivery pool
    /// is mapped writable by every client, each writes its messages (`Cpg::alloc`)
    /// into its own slab of it (`send_buffer_bytes`), and the engine sends them and
    /// local receivers read them there: no copy of the payload on the host at all. Any
    /// client can then also change what the others send and read. Off by default.
    pub trusted_senders: bool,
}

impl Default for IpcSettings {
    fn default() -> IpcSettings {
        IpcSettings {
            allowed_uids: Vec::new(),
            allowed_gids: Vec::new(),
            huge_pages: true,
            max_clients: 64,
            submit_ring_bytes: 1 << 20,
            event_ring_bytes: 8 << 20,
            backlog_events: 65_536,
            backlog_bytes: 256 << 20,
            max_members_per_group: 1024,
            max_groups: 4096,
            delivery_pool_bytes: 256 << 20,
            delivery_pool_min_bytes: 8 << 10,
            send_buffer_bytes: 16 << 20,
            trusted_senders: false,
        }
    }
}

/// Every setting, as read from the file and the flags (before checking).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Hashed into the cluster id carried by every packet.
    pub cluster_name: String,
    pub node_id: NodeId,
    pub transport: Transport,
    /// Default UDP port of every node, and the multicast port.
    pub port: u16,
    /// Group address for `transport = "multicast"`.
    pub multicast_group: String,
    pub multicast_ttl: u32,
    /// Largest datagram on the wire (the UDP payload), seal overhead included.
    pub datagram_bytes: usize,
    pub idle: IdleStrategy,
    /// CPU to pin the engine thread to.
    pub cpu: Option<usize>,
    /// Back the receive buffers with huge pages (falls back to normal pages).
    pub huge_pages: bool,
    /// Let a kernel thread poll the submission queue.
    pub sqpoll: bool,
    pub sqpoll_idle_ms: u32,
    /// `idle = "backoff"`: after each token, keep polling (yielding the CPU between
    /// polls, never sleeping) for this long, so that the next token finds the engine
    /// awake on a busy ring; 0 = sleep as soon as the short spin is over.
    pub busy_poll_us: u64,
    /// Provided receive buffers (a power of two); 0 = sized from `datagram_bytes`.
    pub recv_buffers: u32,
    /// Datagrams of at least this many bytes are sent with `IORING_OP_SENDMSG_ZC`: the
    /// NIC reads the payload where it is, with no copy into a socket buffer. Pays on real
    /// NICs above ~10 KB (jumbo frames, fragmenting large datagrams); on loopback the
    /// kernel copies anyway, later. 0 = never (the default).
    pub send_zerocopy_bytes: usize,
    /// UDP segmentation offload both ways: a run of equal-size datagrams to one
    /// destination goes to the kernel as one send (`UDP_SEGMENT`, when every route's MTU
    /// carries a whole `datagram_bytes` datagram unfragmented), and the kernel may hand
    /// a run of datagrams from one sender over as one receive (`UDP_GRO`). The datagrams
    /// on the wire are the same either way (docs/performance.md).
    pub udp_offload: bool,
    /// 32-byte pre-shared key; without one the cluster runs in the clear.
    pub key_file: Option<PathBuf>,
    pub ipc_socket: PathBuf,
    /// Persistent ring sequence and the stats page.
    pub state_dir: PathBuf,
    /// error, warn, info, debug or trace.
    pub log_level: String,
    /// Empty = this node alone on 127.0.0.1.
    pub nodelist: Vec<NodeEntry>,
    pub totem: TotemSettings,
    pub load: LoadSettings,
    pub ipc: IpcSettings,
    /// Test feature: append every submit of the load generator, every delivery and
    /// every configuration change to this file (see `daemon::delivery_log`). Off when
    /// unset.
    pub delivery_log: Option<PathBuf>,
}

/// The default `datagram_bytes`: a whole datagram in one IPv4 packet on a link of MTU
/// 1,500 (1,500 − 20 bytes of IP − 8 of UDP), so that nothing is fragmented and UDP
/// segmentation offload applies (docs/performance.md); over IPv6 use 1,452.
pub const DEFAULT_DATAGRAM_BYTES: usize = 1472;

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            cluster_name: "ringcast".into(),
            node_id: 1,
            transport: Transport::Udpu,
            port: 5405,
            multicast_group: "239.192.76.1".into(),
            multicast_ttl: 1,
            datagram_bytes: DEFAULT_DATAGRAM_BYTES,
            idle: IdleStrategy::Backoff,
            cpu: None,
            huge_pages: false,
            sqpoll: false,
            sqpoll_idle_ms: 100,
            busy_poll_us: 0,
            recv_buffers: 0,
            send_zerocopy_bytes: 0,
            udp_offload: true,
            key_file: None,
            // /run/ringcast and /var/lib/ringcast for root, per-user directories
            // otherwise: the rule clients follow to find the engine (`ringcast_shm::paths`).
            ipc_socket: ringcast_shm::paths::socket(),
            state_dir: ringcast_shm::paths::state_dir(),
            log_level: "info".into(),
            nodelist: Vec::new(),
            totem: TotemSettings::default(),
            load: LoadSettings::default(),
            ipc: IpcSettings::default(),
            delivery_log: None,
        }
    }
}

/// A configuration that cannot work: always names the setting.
#[derive(Debug, thiserror::Error)]
pub enum SettingError {
    /// The file could not be read.
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file or an override is not valid TOML, or names an unknown setting.
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    /// A setting has a value that cannot work.
    #[error("{name}: {why}")]
    Invalid { name: String, why: String },
    /// The Totem settings failed `totem::Config::validate`.
    #[error(transparent)]
    Totem(#[from] totem::ConfigError),
}

fn invalid(name: impl Into<String>, why: impl Into<String>) -> SettingError {
    SettingError::Invalid {
        name: name.into(),
        why: why.into(),
    }
}

/// Command-line flags of `ringcastd`. Every flag overrides the setting of the same name.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ConfigFlags {
    /// TOML configuration file.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Cluster name, hashed into every packet's cluster id (`cluster_name`).
    #[arg(long)]
    pub cluster_name: Option<String>,
    /// This node's id in the nodelist, never 0 (`node_id`).
    #[arg(long)]
    pub node_id: Option<NodeId>,
    /// A nodelist entry, `ID=ADDR` (repeatable; replaces the file's nodelist).
    #[arg(long = "node", value_name = "ID=ADDR")]
    pub nodes: Vec<String>,
    /// `udpu` or `multicast`.
    #[arg(long)]
    pub transport: Option<String>,
    /// UDP port of every node and of the multicast group (`port`, default 5405).
    #[arg(long)]
    pub port: Option<u16>,
    /// Group address for `--transport multicast` (`multicast_group`).
    #[arg(long)]
    pub multicast_group: Option<String>,
    /// Largest datagram on the wire, seal included (`datagram_bytes`, default 1500).
    #[arg(long)]
    pub datagram_bytes: Option<usize>,
    /// `spin` or `backoff`.
    #[arg(long)]
    pub idle: Option<String>,
    /// Pin the engine thread to this CPU, ideally an isolated core (`cpu`).
    #[arg(long)]
    pub cpu: Option<usize>,
    /// Receive buffers on huge pages, normal pages if none are reserved (`huge_pages`).
    #[arg(long, value_name = "BOOL")]
    pub huge_pages: Option<bool>,
    /// A kernel thread polls the io_uring submission queue (`sqpoll`).
    #[arg(long, value_name = "BOOL")]
    pub sqpoll: Option<bool>,
    /// 32-byte pre-shared key that authenticates and encrypts packets (`key_file`).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// The clients' Unix socket (`ipc_socket`; default /run/ringcast/ringcast.sock for
    /// root, $XDG_RUNTIME_DIR/ringcast/ringcast.sock or /tmp/ringcast-$UID/ringcast.sock
    /// otherwise).
    #[arg(long, value_name = "PATH")]
    pub ipc_socket: Option<PathBuf>,
    /// Ring sequence and stats page (`state_dir`; default /var/lib/ringcast for root,
    /// $XDG_STATE_HOME/ringcast or ~/.local/state/ringcast otherwise).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// error, warn, info, debug or trace (`log_level`, default info).
    #[arg(long)]
    pub log_level: Option<String>,
    /// Base token timeout (`totem.token_ms`).
    #[arg(long)]
    pub token_ms: Option<u64>,
    /// `totem.token_coefficient_ms`.
    #[arg(long)]
    pub token_coefficient_ms: Option<u64>,
    /// Load generator: bytes per message (`load.size_bytes`).
    #[arg(long, value_name = "BYTES")]
    pub load_size: Option<usize>,
    /// Load generator: messages per second, 0 = unlimited (`load.rate_per_s`).
    #[arg(long, value_name = "MSGS_PER_S")]
    pub load_rate: Option<u64>,
    /// Load generator: stop after this many messages (`load.count`).
    #[arg(long, value_name = "N")]
    pub load_count: Option<u64>,
    /// Test feature: log every delivery and configuration change to FILE (`delivery_log`).
    #[arg(long, value_name = "FILE")]
    pub delivery_log: Option<PathBuf>,
    /// Any setting: `--set totem.join_ms=60`, `--set nodelist=[{id=1,address="10.0.0.1"}]`.
    #[arg(long = "set", short = 's', value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

impl ConfigFlags {
    /// Merges the defaults, the file and the flags into [`Settings`].
    pub fn settings(&self) -> Result<Settings, SettingError> {
        let mut table = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| SettingError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<toml::Table>(&text).map_err(|e| SettingError::Parse {
                    origin: path.display().to_string(),
                    message: e.to_string(),
                })?
            }
            None => toml::Table::new(),
        };
        let mut put = |key: &str, value: toml::Value| set_path(&mut table, key, value);
        let string = |s: &str| toml::Value::String(s.to_owned());
        let path = |p: &Path| toml::Value::String(p.display().to_string());
        let int = |n: u64| toml::Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
        if let Some(v) = &self.cluster_name {
            put("cluster_name", string(v))?;
        }
        if let Some(v) = self.node_id {
            put("node_id", int(v.into()))?;
        }
        if !self.nodes.is_empty() {
            let mut list = Vec::new();
            for entry in &self.nodes {
                let (id, address) = entry
                    .split_once('=')
                    .ok_or_else(|| invalid("--node", format!("`{entry}` is not ID=ADDR")))?;
                let id: u64 = id
                    .trim()
                    .parse()
                    .map_err(|_| invalid("--node", format!("`{id}` is not a node id")))?;
                let mut node = toml::Table::new();
                node.insert("id".into(), int(id));
                node.insert("address".into(), string(address.trim()));
                list.push(toml::Value::Table(node));
            }
            put("nodelist", toml::Value::Array(list))?;
        }
        if let Some(v) = &self.transport {
            put("transport", string(v))?;
        }
        if let Some(v) = self.port {
            put("port", int(v.into()))?;
        }
        if let Some(v) = &self.multicast_group {
            put("multicast_group", string(v))?;
        }
        if let Some(v) = self.datagram_bytes {
            put("datagram_bytes", int(v as u64))?;
        }
        if let Some(v) = &self.idle {
            put("idle", string(v))?;
        }
        if let Some(v) = self.cpu {
            put("cpu", int(v as u64))?;
        }
        if let Some(v) = self.huge_pages {
            put("huge_pages", toml::Value::Boolean(v))?;
        }
        if let Some(v) = self.sqpoll {
            put("sqpoll", toml::Value::Boolean(v))?;
        }
        if let Some(v) = &self.key_file {
            put("key_file", path(v))?;
        }
        if let Some(v) = &self.ipc_socket {
            put("ipc_socket", path(v))?;
        }
        if let Some(v) = &self.state_dir {
            put("state_dir", path(v))?;
        }
        if let Some(v) = &self.log_level {
            put("log_level", string(v))?;
        }
        if let Some(v) = self.token_ms {
            put("totem.token_ms", int(v))?;
        }
        if let Some(v) = self.token_coefficient_ms {
            put("totem.token_coefficient_ms", int(v))?;
        }
        if let Some(v) = self.load_size {
            put("load.size_bytes", int(v as u64))?;
        }
        if let Some(v) = self.load_rate {
            put("load.rate_per_s", int(v))?;
        }
        if let Some(v) = self.load_count {
            put("load.count", int(v))?;
        }
        if let Some(v) = &self.delivery_log {
            put("delivery_log", path(v))?;
        }
        for assignment in &self.set {
            let (key, value) = assignment
                .split_once('=')
                .ok_or_else(|| invalid("--set", format!("`{assignment}` is not KEY=VALUE")))?;
            put(key.trim(), parse_value(value.trim()))?;
        }
        let origin = match &self.config {
            Some(path) => format!("{} and flags", path.display()),
            None => "flags".to_owned(),
        };
        Settings::deserialize(toml::Value::Table(table)).map_err(|e| SettingError::Parse {
            origin,
            message: e.to_string(),
        })
    }

    /// [`ConfigFlags::settings`], then [`DaemonConfig::resolve`].
    pub fn resolve(&self) -> Result<DaemonConfig, SettingError> {
        DaemonConfig::resolve(self.settings()?)
    }
}

/// A TOML value, or the text itself as a string when it does not parse as one (so that
/// `--set log_level=debug` needs no quotes).
fn parse_value(text: &str) -> toml::Value {
    let doc = format!("v = {text}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(text.into())),
        Err(_) => toml::Value::String(text.into()),
    }
}

fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), SettingError> {
    let mut parts = key.split('.').peekable();
    let mut current = table;
    while let Some(part) = parts.next() {
        if part.is_empty() {
            return Err(invalid(key, "empty component in setting name"));
        }
        if parts.peek().is_none() {
            current.insert(part.to_owned(), value);
            return Ok(());
        }
        let entry = current
            .entry(part.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| invalid(key, format!("`{part}` is not a table")))?;
    }
    Err(invalid(key, "empty setting name"))
}

/// A checked, resolved configuration: what the engine runs with.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// The settings it was resolved from.
    pub settings: Settings,
    /// FNV-1a of `cluster_name`.
    pub cluster_id: u32,
    pub node_id: NodeId,
    /// This node's address (from the nodelist): bound, and the source of everything sent.
    pub own_addr: SocketAddr,
    /// Every configured node, sorted by id, this node included.
    pub nodes: Vec<(NodeId, SocketAddr)>,
    /// `Some(group:port)` for the multicast transport.
    pub multicast_group: Option<SocketAddr>,
    /// The protocol's settings; `max_datagram_bytes` leaves room for the seal.
    pub totem: totem::Config,
    /// The ring sequence file of this node.
    pub ring_seq_path: PathBuf,
    /// The shared-memory stats page of this node.
    pub stats_path: PathBuf,
    /// The longest datagram this node must receive whole ([`recv_datagram_bytes`]).
    pub recv_datagram_bytes: usize,
}

/// The load generator and the delivery log exist only with the feature `test-hooks`.
#[cfg(feature = "test-hooks")]
fn check_test_hooks(s: &Settings, totem: &crate::totem::Config) -> Result<(), SettingError> {
    if s.load.size_bytes != 0 {
        if s.load.size_bytes < super::load::HEADER_BYTES {
            return Err(invalid(
                "load.size_bytes",
                format!("at least {} (or 0 = off)", super::load::HEADER_BYTES),
            ));
        }
        if s.load.size_bytes > totem.max_message_bytes {
            return Err(invalid(
                "load.size_bytes",
                "larger than totem.max_message_bytes",
            ));
        }
    }
    Ok(())
}

/// Without the feature `test-hooks`, the settings that would turn a hook on are
/// refused rather than ignored.
#[cfg(not(feature = "test-hooks"))]
fn check_test_hooks(s: &Settings, _totem: &crate::totem::Config) -> Result<(), SettingError> {
    const WHY: &str = "0 / unset: this ringcastd is built without the feature test-hooks";
    if s.load.size_bytes != 0 {
        return Err(invalid("load.size_bytes", WHY));
    }
    if s.delivery_log.is_some() {
        return Err(invalid("delivery_log", WHY));
    }
    Ok(())
}

/// Largest UDP payload over IPv4.
const MAX_DATAGRAM_BYTES: usize = 65_507;
/// `totem::Config::validate`'s lower bound on a datagram.
const MIN_DATAGRAM_BYTES: usize = 576;

fn check_ipc(ipc: &IpcSettings) -> Result<(), SettingError> {
    for (name, bytes) in [
        ("ipc.submit_ring_bytes", ipc.submit_ring_bytes),
        ("ipc.event_ring_bytes", ipc.event_ring_bytes),
    ] {
        if !bytes.is_power_of_two() || !(64 << 10..=1 << 30).contains(&bytes) {
            return Err(invalid(name, "a power of two between 64 KiB and 1 GiB"));
        }
    }
    if ipc.max_clients == 0 || ipc.max_clients > 65_536 {
        return Err(invalid("ipc.max_clients", "between 1 and 65536"));
    }
    if ipc.max_members_per_group == 0 || ipc.max_members_per_group > 65_536 {
        return Err(invalid("ipc.max_members_per_group", "between 1 and 65536"));
    }
    // The largest confchg (every member listed, plus one joined or left) must fit in
    // one event record.
    let confchg = 200 + 12 * (2 * ipc.max_members_per_group + 1);
    if confchg > ipc.event_ring_bytes / 4 {
        return Err(invalid(
            "ipc.max_members_per_group",
            "too many for ipc.event_ring_bytes",
        ));
    }
    if ipc.max_groups == 0 {
        return Err(invalid("ipc.max_groups", "at least 1"));
    }
    if ipc.delivery_pool_bytes % (2 << 20) != 0 || ipc.delivery_pool_bytes > 64 << 30 {
        return Err(invalid(
            "ipc.delivery_pool_bytes",
            "a multiple of 2 MiB (2097152), at most 64 GiB, or 0",
        ));
    }
    if ipc.send_buffer_bytes % (2 << 20) != 0 || ipc.send_buffer_bytes > 64 << 30 {
        return Err(invalid(
            "ipc.send_buffer_bytes",
            "a multiple of 2 MiB (2097152), at most 64 GiB, or 0",
        ));
    }
    if ipc.trusted_senders && (ipc.delivery_pool_bytes == 0 || ipc.send_buffer_bytes == 0) {
        return Err(invalid(
            "ipc.trusted_senders",
            "needs ipc.delivery_pool_bytes and ipc.send_buffer_bytes",
        ));
    }
    if ipc.backlog_events == 0 || ipc.backlog_bytes == 0 {
        return Err(invalid(
            "ipc.backlog_events",
            "backlog limits must be non-zero",
        ));
    }
    Ok(())
}

// The longest control packet Totem can send (a commit token of `MAX_MEMBERS`), sealed,
// must still fit in one UDP datagram, or a ring that large could never form.
const _: () =
    assert!(wire::packet::MAX_CONTROL_PACKET_BYTES + seal::OVERHEAD <= MAX_DATAGRAM_BYTES);

/// The longest datagram a node of a cluster of `nodes` configured nodes must be able to
/// receive whole: a datagram of `datagram_bytes`, or a control packet of a ring of every
/// configured node when that is longer (joins and commit tokens grow with the ring and
/// are not split: a commit token outgrows 1500 bytes above 28 members), plus the seal
/// when `sealed`. Only configured nodes are heard from (the engine drops the rest), so a
/// legitimate control packet never lists more members than that; for `MAX_MEMBERS`
/// nodes this is `wire::MAX_CONTROL_PACKET_BYTES` plus the seal.
pub fn recv_datagram_bytes(datagram_bytes: usize, nodes: usize, sealed: bool) -> usize {
    use crate::wire::packet::{commit_len, join_len, token_len};
    let nodes = nodes.min(wire::MAX_MEMBERS);
    let control = commit_len(nodes)
        .max(join_len(nodes, nodes))
        .max(token_len(wire::MAX_RTR_ENTRIES));
    let seal = if sealed { seal::OVERHEAD } else { 0 };
    datagram_bytes.max(control + seal)
}

/// Stable 32-bit hash of the cluster name (FNV-1a): the cluster id on the wire.
pub fn cluster_id(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// The stats page a node with this state dir and id writes (read by `ringcast status`).
pub fn stats_path(state_dir: &Path, node_id: NodeId) -> PathBuf {
    ringcast_shm::stats::page_path(state_dir, node_id)
}

fn parse_address(address: &str, port: u16) -> Option<SocketAddr> {
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return Some(addr);
    }
    address
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, port))
}

impl DaemonConfig {
    /// Checks every setting and derives what the engine needs.
    pub fn resolve(settings: Settings) -> Result<DaemonConfig, SettingError> {
        let s = &settings;
        if s.cluster_name.is_empty() {
            return Err(invalid("cluster_name", "must not be empty"));
        }
        if s.node_id == 0 {
            return Err(invalid("node_id", "0 is reserved"));
        }
        if s.port == 0 {
            return Err(invalid("port", "must not be 0"));
        }
        if !["error", "warn", "info", "debug", "trace"].contains(&s.log_level.as_str()) {
            return Err(invalid(
                "log_level",
                "one of error, warn, info, debug, trace",
            ));
        }
        if s.recv_buffers != 0 && (!s.recv_buffers.is_power_of_two() || s.recv_buffers > 32768) {
            return Err(invalid("recv_buffers", "a power of two up to 32768, or 0"));
        }
        if let Some(cpu) = s.cpu {
            let online = core_affinity::get_core_ids().map_or(0, |ids| ids.len());
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            if cpu >= online.max(cpus) {
                return Err(invalid(
                    "cpu",
                    format!("no cpu {cpu} (this host has {})", online.max(cpus)),
                ));
            }
        }

        // Nodelist: unique ids and addresses, this node present.
        let entries = if s.nodelist.is_empty() {
            vec![NodeEntry {
                id: s.node_id,
                address: Ipv4Addr::LOCALHOST.to_string(),
            }]
        } else {
            s.nodelist.clone()
        };
        if entries.len() > crate::wire::MAX_MEMBERS {
            return Err(invalid(
                "nodelist",
                format!("at most {} nodes", crate::wire::MAX_MEMBERS),
            ));
        }
        let mut nodes = Vec::with_capacity(entries.len());
        let mut ids = HashSet::new();
        let mut addrs = HashSet::new();
        for entry in &entries {
            if entry.id == 0 {
                return Err(invalid("nodelist", "node id 0 is reserved"));
            }
            let addr = parse_address(&entry.address, s.port).ok_or_else(|| {
                invalid(
                    "nodelist",
                    format!(
                        "node {}: `{}` is not IP or IP:PORT",
                        entry.id, entry.address
                    ),
                )
            })?;
            if addr.ip().is_unspecified() || addr.ip().is_multicast() || addr.port() == 0 {
                return Err(invalid(
                    "nodelist",
                    format!("node {}: {addr} is not a node address", entry.id),
                ));
            }
            if !ids.insert(entry.id) {
                return Err(invalid("nodelist", format!("node id {} twice", entry.id)));
            }
            if !addrs.insert(addr) {
                return Err(invalid("nodelist", format!("address {addr} twice")));
            }
            nodes.push((entry.id, addr));
        }
        nodes.sort_unstable();
        let own_addr = nodes
            .iter()
            .find(|(id, _)| *id == s.node_id)
            .map(|(_, addr)| *addr)
            .ok_or_else(|| {
                invalid(
                    "nodelist",
                    format!("node_id {} is not in the nodelist", s.node_id),
                )
            })?;
        if nodes.iter().any(|(_, a)| a.is_ipv4() != own_addr.is_ipv4()) {
            return Err(invalid("nodelist", "mixes IPv4 and IPv6 addresses"));
        }

        let multicast_group = match s.transport {
            Transport::Udpu => None,
            Transport::Multicast => {
                let group: IpAddr = s.multicast_group.parse().map_err(|_| {
                    invalid(
                        "multicast_group",
                        format!("`{}` is not an IP", s.multicast_group),
                    )
                })?;
                if !group.is_multicast() {
                    return Err(invalid(
                        "multicast_group",
                        format!("{group} is not multicast"),
                    ));
                }
                if group.is_ipv4() != own_addr.is_ipv4() {
                    return Err(invalid(
                        "multicast_group",
                        "must be of the nodelist's address family",
                    ));
                }
                if nodes.iter().any(|(_, a)| a.port() != s.port) {
                    return Err(invalid(
                        "nodelist",
                        "with multicast every node uses `port` (no IP:PORT entries)",
                    ));
                }
                Some(SocketAddr::new(group, s.port))
            }
        };

        let seal_overhead = if s.key_file.is_some() {
            seal::OVERHEAD
        } else {
            0
        };
        let min_datagram = MIN_DATAGRAM_BYTES + seal_overhead;
        if !(min_datagram..=MAX_DATAGRAM_BYTES).contains(&s.datagram_bytes) {
            return Err(invalid(
                "datagram_bytes",
                format!("between {min_datagram} and {MAX_DATAGRAM_BYTES}"),
            ));
        }

        let totem = totem_config(s, nodes.len(), s.datagram_bytes - seal_overhead)?;
        let totem = flow_control(
            &s.totem,
            totem,
            s.datagram_bytes,
            crate::io::net::receive_buffer_grant,
        )?;
        check_ipc(&s.ipc)?;
        check_test_hooks(s, &totem)?;

        let recv_datagram_bytes =
            recv_datagram_bytes(s.datagram_bytes, nodes.len(), s.key_file.is_some());
        Ok(DaemonConfig {
            recv_datagram_bytes,
            cluster_id: cluster_id(&s.cluster_name),
            node_id: s.node_id,
            own_addr,
            nodes,
            multicast_group,
            totem,
            ring_seq_path: s.state_dir.join(format!("ringid_{}", s.node_id)),
            stats_path: stats_path(&s.state_dir, s.node_id),
            settings,
        })
    }

    /// Node id of a datagram's source address, if the sender is configured.
    pub fn node_of(&self, addr: &SocketAddr) -> Option<NodeId> {
        self.nodes
            .iter()
            .find(|(_, a)| a == addr)
            .map(|(id, _)| *id)
    }

    /// The address of a configured node.
    pub fn addr_of(&self, node: NodeId) -> Option<SocketAddr> {
        self.nodes
            .binary_search_by_key(&node, |(id, _)| *id)
            .ok()
            .map(|i| self.nodes[i].1)
    }
}

/// Largest default `window_bytes`: 1 MiB, 712 datagrams of 1,472 bytes (242 per
/// visit). Larger windows were measured no faster with every node sending 1 MiB
/// messages while each token hop grew in proportion (docs/performance.md, "The
/// flow-control window"); Corosync's rotation may carry up to 50 knet packets of
/// 64 KiB (`netmtu` 65,536, corosync.conf(5)), about three times as much.
pub const MAX_DEFAULT_WINDOW_BYTES: usize = 1 << 20;

/// The default `window_bytes` for a receive buffer of `granted` bytes as the kernel
/// reports it: half of it, the part socket(7) says is for data (the kernel doubles the
/// size asked for, for its bookkeeping), at most [`MAX_DEFAULT_WINDOW_BYTES`].
pub fn default_window_bytes(granted: usize) -> usize {
    (granted / 2).min(MAX_DEFAULT_WINDOW_BYTES)
}

/// Sets Totem's flow-control limits (`window_size`, `max_messages`) from the settings:
/// datagram counts when either is set (Corosync's meaning, the defaults 50 and 17 for
/// the other), else from `window_bytes`, by default from `grant()`, the socket receive
/// buffer the engine will get (asked only then). Validates the result.
fn flow_control(
    t: &TotemSettings,
    mut config: totem::Config,
    datagram_bytes: usize,
    grant: impl FnOnce() -> usize,
) -> Result<totem::Config, SettingError> {
    let counted = t.window_size.is_some() || t.max_messages.is_some();
    match t.window_bytes {
        Some(_) if counted => {
            return Err(invalid(
                "totem.window_bytes",
                "set either window_bytes or window_size/max_messages",
            ));
        }
        Some(0) => return Err(invalid("totem.window_bytes", "at least 1")),
        _ if counted => return Ok(config),
        _ => {}
    }
    let bytes = t
        .window_bytes
        .unwrap_or_else(|| default_window_bytes(grant()));
    (config.window_size, config.max_messages) = totem::window_for_bytes(bytes, datagram_bytes);
    config.validate()?;
    Ok(config)
}

/// Maps the Totem settings onto `totem::Config` and validates it.
fn totem_config(
    s: &Settings,
    node_count: usize,
    datagram_bytes: usize,
) -> Result<totem::Config, SettingError> {
    let t = &s.totem;
    let ms = Duration::from_millis;
    let mut config = if t.token_ms.is_none() && t.token_coefficient_ms.is_none() {
        totem::Config::new(s.node_id, node_count)
    } else {
        // docs/cpg.md §10: the configured token is the base, scaled for N ≥ 3.
        let base = t.token_ms.unwrap_or(3000);
        let coefficient = t.token_coefficient_ms.unwrap_or(650);
        let extra = if node_count >= 3 {
            coefficient.saturating_mul(node_count as u64 - 2)
        } else {
            0
        };
        totem::Config::with_token(s.node_id, ms(base.saturating_add(extra)))
    };
    config.cluster_id = cluster_id(&s.cluster_name);
    config.max_datagram_bytes = datagram_bytes;
    config.max_nodes = config.max_nodes.max(node_count);
    if let Some(v) = t.token_retransmit_ms {
        config.token_retransmit = ms(v);
    }
    if let Some(v) = t.hold_ms {
        config.hold = ms(v);
    }
    if let Some(v) = t.join_ms {
        config.join = ms(v);
    }
    if let Some(v) = t.send_join_ms {
        config.send_join = ms(v);
    }
    if let Some(v) = t.consensus_ms {
        config.consensus = ms(v);
    }
    if let Some(v) = t.merge_ms {
        config.merge = ms(v);
    }
    if let Some(v) = t.token_warning_percent {
        config.token_warning_percent = v;
    }
    if let Some(v) = t.fail_recv_const {
        config.fail_recv_const = v;
    }
    if let Some(v) = t.seqno_unchanged_const {
        config.seqno_unchanged_const = v;
    }
    if let Some(v) = t.max_messages {
        config.max_messages = v;
    }
    if let Some(v) = t.window_size {
        config.window_size = v;
    }
    if let Some(v) = t.miss_count_const {
        config.miss_count_const = v;
    }
    if let Some(v) = t.max_message_bytes {
        config.max_message_bytes = v;
    }
    if let Some(v) = t.send_queue_bytes {
        config.send_queue_bytes = v;
    }
    if let Some(v) = t.pack_by_reference_min {
        config.pack_by_reference_min = v;
    }
    // The CPG service runs its sync (joinlists) ahead of application messages after
    // every configuration change, as Corosync's totempg does (docs/cpg.md §5.5).
    config.sync_barrier = true;
    // Jitter differs per node and per start.
    config.seed = u64::from(s.node_id) ^ u64::from(std::process::id()).rotate_left(32);
    config.validate()?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        flags: ConfigFlags,
    }

    fn resolve(args: &[&str]) -> Result<DaemonConfig, SettingError> {
        let cli = Cli::try_parse_from(std::iter::once("ringcastd").chain(args.iter().copied()))
            .expect("flags parse");
        cli.flags.resolve()
    }

    fn error_of(args: &[&str]) -> String {
        resolve(args).expect_err("must be rejected").to_string()
    }

    #[test]
    fn defaults_start_a_single_node_on_localhost() {
        let c = resolve(&[]).unwrap();
        assert_eq!(c.node_id, 1);
        assert_eq!(c.own_addr, "127.0.0.1:5405".parse().unwrap());
        assert_eq!(c.nodes, vec![(1, c.own_addr)]);
        assert_eq!(c.settings.idle, IdleStrategy::Backoff);
        assert_eq!(c.settings.transport, Transport::Udpu);
        assert_eq!(c.totem.token, Duration::from_millis(3000));
        assert_eq!(c.totem.cluster_id, cluster_id("ringcast"));
        assert_eq!(c.totem.max_datagram_bytes, DEFAULT_DATAGRAM_BYTES);
        assert_eq!(c.settings.ipc_socket, ringcast_shm::paths::socket());
        assert_eq!(c.settings.state_dir, ringcast_shm::paths::state_dir());
    }

    /// docs/performance.md, "The flow-control window": without datagram counts the
    /// window comes from bytes (by default half the granted receive buffer, at most
    /// Corosync's rotation); with either count set, Corosync's meaning is kept exactly.
    #[test]
    fn flow_control_from_bytes_or_counts() {
        let base = || totem::Config::new(1, 3);
        let limits = |t: &TotemSettings, granted: usize| {
            flow_control(t, base(), 1472, || granted).map(|c| (c.window_size, c.max_messages))
        };
        let unset = TotemSettings::default();
        // The Debian default rmem_max (212,992 bytes), doubled by the kernel.
        assert_eq!(limits(&unset, 425_984).unwrap(), (144, 48));
        assert_eq!(limits(&unset, 16 << 20).unwrap(), (712, 242));
        assert_eq!(limits(&unset, 0).unwrap(), (50, 17), "grant unknown");
        let bytes = TotemSettings {
            window_bytes: Some(200 * 1472),
            ..TotemSettings::default()
        };
        assert_eq!(limits(&bytes, 0).unwrap(), (200, 68));
        let counted = TotemSettings {
            window_size: Some(200),
            ..TotemSettings::default()
        };
        let never = || -> usize { panic!("counts set: the grant is not asked") };
        let config = flow_control(&counted, base(), 1472, never).unwrap();
        assert_eq!(
            (config.window_size, config.max_messages),
            (50, 17),
            "untouched"
        );
        let both = TotemSettings {
            max_messages: Some(20),
            ..bytes.clone()
        };
        assert!(
            limits(&both, 0)
                .unwrap_err()
                .to_string()
                .contains("window_bytes")
        );
        let zero = TotemSettings {
            window_bytes: Some(0),
            ..TotemSettings::default()
        };
        assert!(limits(&zero, 0).is_err());
        // Through the whole resolution, counts as before.
        let c = resolve(&[
            "--set",
            "totem.window_size=200",
            "--set",
            "totem.max_messages=68",
        ])
        .unwrap();
        assert_eq!((c.totem.window_size, c.totem.max_messages), (200, 68));
        let c = resolve(&["--set", "totem.window_size=200"]).unwrap();
        assert_eq!((c.totem.window_size, c.totem.max_messages), (200, 17));
        let c = resolve(&["--set", "totem.window_bytes=1000000"]).unwrap();
        assert_eq!((c.totem.window_size, c.totem.max_messages), (679, 230));
        assert_eq!(default_window_bytes(usize::MAX), MAX_DEFAULT_WINDOW_BYTES);
    }

    #[test]
    fn cluster_id_is_stable() {
        // FNV-1a test vectors.
        assert_eq!(cluster_id(""), 0x811c_9dc5);
        assert_eq!(cluster_id("a"), 0xe40c_292c);
        assert_ne!(cluster_id("one"), cluster_id("two"));
    }

    #[test]
    fn file_then_flags_then_set() {
        let dir = std::env::temp_dir().join(format!("ringcast-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a.toml");
        std::fs::write(
            &file,
            r#"
cluster_name = "c1"
node_id = 2
port = 6000
[[nodelist]]
id = 1
address = "127.0.0.1"
[[nodelist]]
id = 2
address = "127.0.0.2"
[[nodelist]]
id = 3
address = "127.0.0.3:7000"
[totem]
token_ms = 400
token_coefficient_ms = 0
join_ms = 40
"#,
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let c = resolve(&["-c", f, "--idle", "spin", "--set", "totem.merge_ms=250"]).unwrap();
        assert_eq!(c.node_id, 2);
        assert_eq!(c.own_addr, "127.0.0.2:6000".parse().unwrap());
        assert_eq!(c.addr_of(3), Some("127.0.0.3:7000".parse().unwrap()));
        assert_eq!(c.node_of(&"127.0.0.1:6000".parse().unwrap()), Some(1));
        assert_eq!(c.node_of(&"127.0.0.1:6001".parse().unwrap()), None);
        assert_eq!(c.totem.token, Duration::from_millis(400));
        assert_eq!(c.totem.token_retransmit, Duration::from_millis(95));
        assert_eq!(c.totem.consensus, Duration::from_millis(480));
        assert_eq!(c.totem.join, Duration::from_millis(40));
        assert_eq!(c.totem.merge, Duration::from_millis(250));
        assert_eq!(c.settings.idle, IdleStrategy::Spin);
        assert_eq!(c.cluster_id, cluster_id("c1"));

        // The coefficient scales the token with the node count, as Corosync does.
        let c = resolve(&["-c", f, "--token-coefficient-ms", "100"]).unwrap();
        assert_eq!(c.totem.token, Duration::from_millis(500));

        // --node replaces the nodelist; --set takes any value.
        let c = resolve(&[
            "-c",
            f,
            "--node-id",
            "5",
            "--node",
            "5=127.0.0.5",
            "--set",
            "log_level=debug",
        ])
        .unwrap();
        assert_eq!(c.nodes.len(), 1);
        assert_eq!(c.settings.log_level, "debug");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_name_the_setting() {
        assert!(error_of(&["--node-id", "2", "--node", "1=127.0.0.1"]).starts_with("nodelist:"));
        assert!(error_of(&["--node", "1=127.0.0.1", "--node", "1=127.0.0.2"]).contains("twice"));
        assert!(
            error_of(&["--node", "1=127.0.0.1", "--node", "2=127.0.0.1"])
                .contains("127.0.0.1:5405 twice")
        );
        assert!(error_of(&["--node", "1=nowhere"]).starts_with("nodelist:"));
        assert!(error_of(&["--set", "totem.join_ms=10"]).contains("totem.join"));
        assert!(error_of(&["--set", "totem.hold_ms=900"]).contains("totem.hold"));
        assert!(error_of(&["--set", "totem.tokn_ms=10"]).contains("tokn_ms"));
        assert!(error_of(&["--idle", "sleepy"]).contains("sleepy"));
        assert!(error_of(&["--datagram-bytes", "100"]).starts_with("datagram_bytes:"));
        assert!(error_of(&["--log-level", "loud"]).starts_with("log_level:"));
        assert!(error_of(&["--cpu", "100000"]).starts_with("cpu:"));
        assert!(error_of(&["--load-size", "3"]).starts_with("load.size_bytes:"));
        assert!(
            error_of(&["--transport", "multicast", "--multicast-group", "10.0.0.1"])
                .starts_with("multicast_group:")
        );
        assert!(error_of(&["--set", "recv_buffers=3"]).starts_with("recv_buffers:"));
        assert!(
            error_of(&["--set", "totem.pack_by_reference_min=100"])
                .contains("pack_by_reference_min")
        );
        assert!(
            error_of(&[
                "--set",
                "ipc.trusted_senders=true",
                "--set",
                "ipc.delivery_pool_bytes=0"
            ])
            .contains("ipc.trusted_senders")
        );
        let c = resolve(&["--set", "totem.pack_by_reference_min=65536"]).unwrap();
        assert_eq!(c.totem.pack_by_reference_min, 65536);
    }

    /// The receive buffers hold every control packet of the configured ring,
    /// up to `wire::MAX_CONTROL_PACKET_BYTES` (a commit token of 384 members), and every
    /// datagram of `datagram_bytes`.
    #[test]
    fn receive_buffers_hold_every_control_packet() {
        use crate::wire::packet::{commit_len, join_len};
        for nodes in 1..=wire::MAX_MEMBERS {
            for sealed in [false, true] {
                let seal = if sealed { seal::OVERHEAD } else { 0 };
                let bytes = recv_datagram_bytes(1500, nodes, sealed);
                assert!(bytes >= 1500);
                assert!(bytes >= commit_len(nodes) + seal, "{nodes} nodes");
                assert!(bytes >= join_len(nodes, nodes) + seal, "{nodes} nodes");
            }
        }
        assert_eq!(recv_datagram_bytes(1500, 5, true), 1500);
        assert_eq!(
            recv_datagram_bytes(1500, wire::MAX_MEMBERS, true),
            wire::packet::MAX_CONTROL_PACKET_BYTES + seal::OVERHEAD
        );
        assert_eq!(recv_datagram_bytes(65_507, 3, false), 65_507);
        let c = resolve(&["--key-file", "/nonexistent"]).unwrap();
        assert_eq!(c.recv_datagram_bytes, DEFAULT_DATAGRAM_BYTES);
        let mut args = vec!["--node-id".to_string(), "1".into()];
        for id in 1..=40 {
            args.push("--node".into());
            args.push(format!("{id}=10.0.0.{id}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let c = resolve(&args).unwrap();
        assert_eq!(c.recv_datagram_bytes, commit_len(40));
        assert!(c.recv_datagram_bytes > 1500);
    }

    #[test]
    fn multicast_resolves_the_group() {
        let c = resolve(&["--transport", "multicast"]).unwrap();
        assert_eq!(
            c.multicast_group,
            Some("239.192.76.1:5405".parse().unwrap())
        );
    }

    #[test]
    fn a_key_leaves_room_for_the_seal() {
        let c = resolve(&["--key-file", "/nonexistent"]).unwrap();
        assert_eq!(
            c.totem.max_datagram_bytes,
            DEFAULT_DATAGRAM_BYTES - seal::OVERHEAD
        );
    }
}
