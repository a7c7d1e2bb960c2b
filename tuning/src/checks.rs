//! The checks `ringcast-tune check` runs, and the runtime changes `apply` derives from
//! the same readings (docs/tuning.md says why each item matters).

use std::fmt::Write as _;
use std::net::IpAddr;

use ringcast_engine::daemon::config::{DaemonConfig, IdleStrategy};
use serde::Serialize;

use crate::Change;
use crate::host::{Host, format_cpu_list, format_cpu_mask, parse_cpu_mask};

/// An idle state with a longer exit latency than this (µs) counts as deep: waking from
/// it costs more than a spinning engine may lose (C1/halt on x86 is 1-2 µs).
pub const DEEP_CSTATE_LATENCY_US: u64 = 10;

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// Stable identifier (`hugepages`, `isolcpus`, ...).
    pub id: &'static str,
    pub status: Status,
    /// What was found, with the figures.
    pub detail: String,
    /// How to fix it (absent when ok).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn check(id: &'static str, status: Status, detail: String, fix: Option<String>) -> Check {
    Check {
        id,
        status,
        detail,
        fix: if status == Status::Ok { None } else { fix },
    }
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub root: String,
    pub config: String,
    pub engine_cpu: Option<usize>,
    pub checks: Vec<Check>,
    pub ok: usize,
    pub warn: usize,
    pub fail: usize,
}

impl Report {
    pub fn failures(&self) -> usize {
        self.fail
    }

    pub fn find(&self, id: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.id == id)
    }

    /// The human report: one line per check, its fix below when it is not ok.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let cpu = self.engine_cpu.map_or_else(
            || "not pinned (cpu unset)".to_owned(),
            |c| format!("cpu {c}"),
        );
        let _ = writeln!(
            out,
            "ringcast-tune check: host {}, config {}, engine {cpu}",
            self.root, self.config
        );
        for c in &self.checks {
            let _ = writeln!(out, "{:<5} {:<14} {}", c.status.label(), c.id, c.detail);
            if let Some(fix) = &c.fix {
                let _ = writeln!(out, "{:<20} fix: {fix}", "");
            }
        }
        let _ = writeln!(
            out,
            "summary: {} ok, {} warn, {} fail",
            self.ok, self.warn, self.fail
        );
        out
    }
}

/// What the configured engine needs from the host.
#[derive(Clone, Debug)]
pub struct Needs {
    /// Where the configuration came from.
    pub origin: String,
    pub cpu: Option<usize>,
    pub spin: bool,
    pub sqpoll: bool,
    pub own_ip: IpAddr,
    /// Receive buffers (provided-buffer ring), pinned by io_uring.
    pub recv_buffer_bytes: u64,
    pub huge_recv: bool,
    pub huge_ipc: bool,
    pub delivery_pool_bytes: u64,
    /// One client session's shared region.
    pub client_region_bytes: u64,
    /// Client sessions to size the reservation for.
    pub clients: usize,
    /// What the engine asks for with SO_RCVBUF / SO_SNDBUF.
    pub socket_buffer_bytes: u64,
}

impl Needs {
    pub fn from_config(config: &DaemonConfig, origin: String, clients: usize) -> Needs {
        let s = &config.settings;
        // The engine's own sizing of its provided receive buffers (the larger one, with
        // coalescing, when udp_offload may turn it on).
        let (entries, buf_bytes) = ringcast_engine::io::engine::recv_buffers(config, s.udp_offload);
        let entries = usize::from(entries);
        let spec = ringcast_shm::RegionSpec {
            submit_ring_bytes: s.ipc.submit_ring_bytes,
            event_ring_bytes: s.ipc.event_ring_bytes,
            pool_bytes: if s.ipc.trusted_senders {
                0
            } else {
                s.ipc.send_buffer_bytes
            },
        };
        let client_region_bytes =
            ringcast_shm::Layout::new(&spec, true).map_or(0, |layout| layout.total_bytes as u64);
        Needs {
            origin,
            cpu: s.cpu,
            spin: s.idle == IdleStrategy::Spin,
            sqpoll: s.sqpoll,
            own_ip: config.own_addr.ip(),
            recv_buffer_bytes: (entries * buf_bytes) as u64,
            huge_recv: s.huge_pages,
            huge_ipc: s.ipc.huge_pages,
            delivery_pool_bytes: s.ipc.delivery_pool_bytes as u64,
            client_region_bytes,
            clients: clients.min(s.ipc.max_clients),
            socket_buffer_bytes: ringcast_engine::io::net::SOCKET_BUFFER_BYTES as u64,
        }
    }

    /// Huge pages of `page_bytes` the engine maps before any client connects, and per
    /// client session.
    pub fn huge_pages(&self, page_bytes: u64) -> (u64, u64) {
        let pages = |bytes: u64| bytes.div_ceil(page_bytes.max(1));
        let mut base = 0;
        if self.huge_recv {
            base += pages(self.recv_buffer_bytes);
        }
        let mut per_client = 0;
        if self.huge_ipc {
            base += pages(self.delivery_pool_bytes);
            per_client = pages(self.client_region_bytes);
        }
        (base, per_client)
    }

    /// The huge pages to reserve: the base and `clients` sessions.
    pub fn huge_pages_wanted(&self, page_bytes: u64) -> u64 {
        let (base, per_client) = self.huge_pages(page_bytes);
        base + per_client * self.clients as u64
    }

    /// RLIMIT_MEMLOCK the engine may need: its pinned receive buffers and rings.
    pub fn memlock_bytes(&self) -> u64 {
        self.recv_buffer_bytes + (1 << 20)
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// The value a sysfs "choice" file selects (`always [madvise] never` -> `madvise`), or
/// the whole value when it has no brackets.
fn selected(text: &str) -> String {
    match (text.find('['), text.find(']')) {
        (Some(open), Some(close)) if open < close => text[open + 1..close].to_owned(),
        _ => text.trim().to_owned(),
    }
}

const HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";
const RMEM_MAX: &str = "/proc/sys/net/core/rmem_max";
const WMEM_MAX: &str = "/proc/sys/net/core/wmem_max";
const IO_URING_DISABLED: &str = "/proc/sys/kernel/io_uring_disabled";
const THP_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/enabled";
const CPU_DIR: &str = "/sys/devices/system/cpu";

fn boot_isolation(cpu: usize) -> String {
    format!(
        "kernel command line: isolcpus={cpu} nohz_full={cpu} rcu_nocbs={cpu} (e.g. in \
         GRUB_CMDLINE_LINUX of /etc/default/grub, then update-grub and reboot; the tuned \
         profile in tuning/deploy/tuned does it with isolated_cores={cpu})"
    )
}

/// Runs every check against `host` for `needs`.
pub fn run(host: &Host, needs: &Needs) -> Report {
    let checks = vec![
        hugepages(host, needs),
        cpu_online(host, needs),
        isolation(host, needs, "isolcpus"),
        isolation(host, needs, "nohz_full"),
        isolation(host, needs, "rcu_nocbs"),
        smt_sibling(host, needs),
        irqs(host, needs),
        governor(host, needs),
        cstates(host, needs),
        socket_buffer(host, needs, "rmem_max", RMEM_MAX),
        socket_buffer(host, needs, "wmem_max", WMEM_MAX),
        memlock(host, needs),
        thp(host),
        numa(host, needs),
        io_uring(host, needs),
    ];
    let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
    Report {
        root: host.root.display().to_string(),
        config: needs.origin.clone(),
        engine_cpu: needs.cpu,
        ok: count(Status::Ok),
        warn: count(Status::Warn),
        fail: count(Status::Fail),
        checks,
    }
}

fn huge_page_bytes(host: &Host) -> u64 {
    host.meminfo_kb("Hugepagesize")
        .map_or(2 << 20, |kb| kb * 1024)
}

fn hugepages(host: &Host, needs: &Needs) -> Check {
    let page_bytes = huge_page_bytes(host);
    let (base, per_client) = needs.huge_pages(page_bytes);
    let wanted = needs.huge_pages_wanted(page_bytes);
    let id = "hugepages";
    if base == 0 && per_client == 0 {
        return check(
            id,
            Status::Ok,
            "the config maps no huge pages (huge_pages and ipc.huge_pages off)".into(),
            None,
        );
    }
    let Some(reserved) = host.read_u64(HUGEPAGES) else {
        return check(
            id,
            Status::Warn,
            format!("cannot read {HUGEPAGES} (kernel without hugetlbfs?)"),
            Some("use a kernel with CONFIG_HUGETLBFS, or set huge_pages = false".into()),
        );
    };
    let free = host.meminfo_kb("HugePages_Free").unwrap_or(reserved);
    let detail = format!(
        "{reserved} reserved, {free} free ({} KiB pages); the config wants {base} before any \
         client (delivery pool {}, receive buffers {}) + {per_client} per client = {wanted} \
         for {} clients",
        page_bytes / 1024,
        if needs.huge_ipc {
            mib(needs.delivery_pool_bytes)
        } else {
            "off".into()
        },
        if needs.huge_recv {
            mib(needs.recv_buffer_bytes)
        } else {
            "off".into()
        },
        needs.clients,
    );
    let fix = Some(format!(
        "sysctl vm.nr_hugepages={wanted} (ringcast-tune apply; vm.nr_hugepages in \
         /etc/sysctl.d/ to keep it); without them the engine falls back to normal pages \
         with a warning"
    ));
    // Below the base the engine still starts, on normal pages with a warning.
    let status = if reserved < wanted {
        Status::Warn
    } else {
        Status::Ok
    };
    check(id, status, detail, fix)
}

fn cpu_online(host: &Host, needs: &Needs) -> Check {
    let online = host.online_cpus();
    let id = "cpu";
    match needs.cpu {
        None => check(
            id,
            Status::Warn,
            format!(
                "the engine thread is not pinned (cpu unset); online cpus {}",
                format_cpu_list(&online)
            ),
            Some(
                "set cpu = N (an isolated core) in the config; the CPU checks below need it".into(),
            ),
        ),
        Some(cpu) if online.contains(&cpu) => check(
            id,
            Status::Ok,
            format!(
                "engine pinned to cpu {cpu} (online: {})",
                format_cpu_list(&online)
            ),
            None,
        ),
        Some(cpu) => check(
            id,
            Status::Fail,
            format!(
                "cpu {cpu} is not online (online: {})",
                format_cpu_list(&online)
            ),
            Some("choose an online cpu for `cpu`".into()),
        ),
    }
}

/// Whether the engine's CPU is isolated by one of the kernel's isolation parameters.
fn isolation(host: &Host, needs: &Needs, param: &'static str) -> Check {
    let Some(cpu) = needs.cpu else {
        return check(
            param,
            Status::Warn,
            "not checked: no engine cpu (see cpu)".into(),
            None,
        );
    };
    // isolcpus and nohz_full are published in sysfs; rcu_nocbs only on the command line.
    let cpus = match param {
        "isolcpus" => host.cpu_list(&format!("{CPU_DIR}/isolated")),
        "nohz_full" => host.cpu_list(&format!("{CPU_DIR}/nohz_full")),
        _ => None,
    }
    .filter(|list| !list.is_empty())
    .or_else(|| {
        host.cmdline_param(param)
            .and_then(|v| crate::host::parse_cpu_list(&v))
    })
    .unwrap_or_default();
    let why = match param {
        "isolcpus" => "the scheduler puts no other task on it",
        "nohz_full" => "no scheduler tick while the engine runs alone",
        _ => "RCU callbacks run on other cpus",
    };
    if cpus.contains(&cpu) {
        check(
            param,
            Status::Ok,
            format!("cpu {cpu} in {param}={} ({why})", format_cpu_list(&cpus)),
            None,
        )
    } else {
        let status = if needs.spin {
            Status::Fail
        } else {
            Status::Warn
        };
        check(
            param,
            status,
            format!(
                "cpu {cpu} not in {param} ({}){}",
                if cpus.is_empty() {
                    "none".into()
                } else {
                    format_cpu_list(&cpus)
                },
                if needs.spin {
                    "; idle = spin needs an isolated core"
                } else {
                    ""
                }
            ),
            Some(boot_isolation(cpu)),
        )
    }
}

fn smt_sibling(host: &Host, needs: &Needs) -> Check {
    let id = "smt_sibling";
    let Some(cpu) = needs.cpu else {
        return check(
            id,
            Status::Warn,
            "not checked: no engine cpu (see cpu)".into(),
            None,
        );
    };
    let siblings = host
        .cpu_list(&format!("{CPU_DIR}/cpu{cpu}/topology/thread_siblings_list"))
        .unwrap_or_else(|| vec![cpu]);
    let others: Vec<usize> = siblings.into_iter().filter(|s| *s != cpu).collect();
    if others.is_empty() {
        return check(
            id,
            Status::Ok,
            format!("cpu {cpu} has no SMT sibling"),
            None,
        );
    }
    let online = host.online_cpus();
    let isolated = host
        .cpu_list(&format!("{CPU_DIR}/isolated"))
        .unwrap_or_default();
    let busy: Vec<usize> = others
        .iter()
        .copied()
        .filter(|s| online.contains(s) && !isolated.contains(s))
        .collect();
    if busy.is_empty() {
        check(
            id,
            Status::Ok,
            format!(
                "sibling {} of cpu {cpu} is offline or isolated",
                format_cpu_list(&others)
            ),
            None,
        )
    } else {
        let list = format_cpu_list(&busy);
        check(
            id,
            Status::Warn,
            format!("sibling {list} of cpu {cpu} is online and runs other tasks"),
            Some(format!(
                "isolate it too (isolcpus={}) and leave it idle, or take it offline: echo 0 > \
                 /sys/devices/system/cpu/cpu{}/online (nosmt on the kernel command line \
                 for all cores)",
                format_cpu_list(&[&[cpu][..], &busy].concat()),
                busy[0]
            )),
        )
    }
}

/// IRQs whose affinity includes `cpu`: (irq, affinity list text).
fn irqs_on(host: &Host, cpu: usize) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for irq in host.list("/proc/irq") {
        if !irq.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let Some(text) = host.read(&format!("/proc/irq/{irq}/smp_affinity_list")) else {
            continue;
        };
        if crate::host::parse_cpu_list(&text).is_some_and(|cpus| cpus.contains(&cpu)) {
            found.push((irq, text));
        }
    }
    found.sort_by_key(|(irq, _)| irq.parse::<u64>().unwrap_or(u64::MAX));
    found
}

/// CPUs that may take IRQs moved off the engine's cpu: the online ones minus the
/// engine's and minus isolated ones (unless that leaves none).
fn irq_cpus(host: &Host, cpu: usize) -> Vec<usize> {
    let online = host.online_cpus();
    let isolated = host
        .cpu_list(&format!("{CPU_DIR}/isolated"))
        .unwrap_or_default();
    let housekeeping: Vec<usize> = online
        .iter()
        .copied()
        .filter(|c| *c != cpu && !isolated.contains(c))
        .collect();
    if housekeeping.is_empty() {
        online.into_iter().filter(|c| *c != cpu).collect()
    } else {
        housekeeping
    }
}

fn irqs(host: &Host, needs: &Needs) -> Check {
    let id = "irq_affinity";
    let Some(cpu) = needs.cpu else {
        return check(
            id,
            Status::Warn,
            "not checked: no engine cpu (see cpu)".into(),
            None,
        );
    };
    let on = irqs_on(host, cpu);
    let default_on = host
        .read("/proc/irq/default_smp_affinity")
        .and_then(|m| parse_cpu_mask(&m))
        .is_some_and(|cpus| cpus.contains(&cpu));
    if on.is_empty() && !default_on {
        return check(id, Status::Ok, format!("no IRQ may run on cpu {cpu}"), None);
    }
    let names: Vec<&str> = on.iter().map(|(irq, _)| irq.as_str()).take(12).collect();
    let more = if on.len() > names.len() { " ..." } else { "" };
    check(
        id,
        Status::Warn,
        format!(
            "{} IRQs may run on cpu {cpu} ({}{more}){}",
            on.len(),
            names.join(" "),
            if default_on {
                "; so may new ones (default_smp_affinity)"
            } else {
                ""
            }
        ),
        Some(format!(
            "ringcast-tune apply moves them to cpus {} (and stop irqbalance, or ban the cpu: \
             IRQBALANCE_BANNED_CPULIST={cpu})",
            format_cpu_list(&irq_cpus(host, cpu))
        )),
    )
}

/// The CPUs whose governor and idle states matter: the engine's, or every online one.
fn tuned_cpus(host: &Host, needs: &Needs) -> Vec<usize> {
    match needs.cpu {
        Some(cpu) => vec![cpu],
        None => host.online_cpus(),
    }
}

fn governor(host: &Host, needs: &Needs) -> Check {
    let id = "governor";
    let cpus = tuned_cpus(host, needs);
    let mut slow = Vec::new();
    let mut seen = Vec::new();
    for cpu in &cpus {
        if let Some(g) = host.read(&format!("{CPU_DIR}/cpu{cpu}/cpufreq/scaling_governor")) {
            if g != "performance" {
                slow.push(format!("cpu{cpu}={g}"));
            }
            seen.push(*cpu);
        }
    }
    if seen.is_empty() {
        return check(
            id,
            Status::Ok,
            format!(
                "no cpufreq on cpu {}: the kernel does not scale its frequency (fixed, or \
                 managed by a hypervisor or firmware)",
                format_cpu_list(&cpus)
            ),
            None,
        );
    }
    if slow.is_empty() {
        check(
            id,
            Status::Ok,
            format!("performance on cpu {}", format_cpu_list(&seen)),
            None,
        )
    } else {
        check(
            id,
            Status::Warn,
            format!("not performance: {}", slow.join(" ")),
            Some(
                "ringcast-tune apply sets performance (cpupower frequency-set -g performance)"
                    .into(),
            ),
        )
    }
}

/// Enabled idle states deeper than [`DEEP_CSTATE_LATENCY_US`]: (cpu, state dir, name,
/// latency).
fn deep_states(host: &Host, cpus: &[usize]) -> Vec<(usize, String, String, u64)> {
    let mut found = Vec::new();
    for cpu in cpus {
        let dir = format!("{CPU_DIR}/cpu{cpu}/cpuidle");
        for state in host.list(&dir) {
            if !state.starts_with("state") {
                continue;
            }
            let base = format!("{dir}/{state}");
            let latency = host.read_u64(&format!("{base}/latency")).unwrap_or(0);
            let disabled = host.read_u64(&format!("{base}/disable")).unwrap_or(0) != 0;
            if latency > DEEP_CSTATE_LATENCY_US && !disabled {
                let name = host.read(&format!("{base}/name")).unwrap_or(state.clone());
                found.push((*cpu, base, name, latency));
            }
        }
    }
    found
}

fn cstates(host: &Host, needs: &Needs) -> Check {
    let id = "cstates";
    let cpus = tuned_cpus(host, needs);
    let any_idle = cpus
        .iter()
        .any(|cpu| host.exists(&format!("{CPU_DIR}/cpu{cpu}/cpuidle")));
    if !any_idle {
        return check(
            id,
            Status::Ok,
            "no cpuidle states exposed (no idle driver)".into(),
            None,
        );
    }
    let deep = deep_states(host, &cpus);
    if deep.is_empty() {
        return check(
            id,
            Status::Ok,
            format!(
                "no enabled idle state deeper than {DEEP_CSTATE_LATENCY_US} µs on cpu {}",
                format_cpu_list(&cpus)
            ),
            None,
        );
    }
    let shown: Vec<String> = deep
        .iter()
        .take(6)
        .map(|(cpu, _, name, latency)| format!("cpu{cpu}:{name}({latency} µs)"))
        .collect();
    check(
        id,
        Status::Warn,
        format!(
            "{} deep idle states enabled: {}{}",
            deep.len(),
            shown.join(" "),
            if deep.len() > shown.len() { " ..." } else { "" }
        ),
        Some(
            "ringcast-tune apply disables them (cpuidle stateN/disable); at boot: \
             intel_idle.max_cstate=1 processor.max_cstate=1, or tuned's force_latency"
                .into(),
        ),
    )
}

fn socket_buffer(host: &Host, needs: &Needs, id: &'static str, path: &str) -> Check {
    let want = needs.socket_buffer_bytes;
    match host.read_u64(path) {
        None => check(
            id,
            Status::Warn,
            format!("cannot read {path}"),
            Some(format!("sysctl net.core.{id}={want}")),
        ),
        Some(have) if have >= want => check(
            id,
            Status::Ok,
            format!("net.core.{id} = {have} (the engine asks for {want})"),
            None,
        ),
        Some(have) => check(
            id,
            Status::Warn,
            format!(
                "net.core.{id} = {have}: the kernel caps the engine's {want}-byte socket \
                 buffers there, and a burst beyond it is dropped"
            ),
            Some(format!(
                "sysctl net.core.{id}={want} (ringcast-tune apply; /etc/sysctl.d/ to keep it)"
            )),
        ),
    }
}

fn memlock(host: &Host, needs: &Needs) -> Check {
    let id = "memlock";
    let want = needs.memlock_bytes();
    let fix = Some(
        "LimitMEMLOCK=infinity in the unit (tuning/deploy/ringcastd.service has it), or \
         `ulimit -l unlimited` / memlock in /etc/security/limits.conf for a shell"
            .into(),
    );
    match host.memlock_limit("/proc/self/limits") {
        None => check(
            id,
            Status::Warn,
            "cannot read /proc/self/limits".into(),
            fix,
        ),
        Some(None) => check(id, Status::Ok, "unlimited".into(), None),
        Some(Some(limit)) if limit >= want => check(
            id,
            Status::Ok,
            format!(
                "{} (this shell); the engine pins about {} (receive buffers and rings)",
                mib(limit),
                mib(want)
            ),
            None,
        ),
        Some(Some(limit)) => check(
            id,
            Status::Warn,
            format!(
                "{} (this shell), below the {} the engine pins (receive buffers and rings)",
                mib(limit),
                mib(want)
            ),
            fix,
        ),
    }
}

fn thp(host: &Host) -> Check {
    let id = "thp";
    match host.read(THP_ENABLED) {
        None => check(
            id,
            Status::Ok,
            "transparent huge pages not compiled in".into(),
            None,
        ),
        Some(text) => {
            let mode = selected(&text);
            if mode == "always" {
                check(
                    id,
                    Status::Warn,
                    "transparent huge pages: always (khugepaged and compaction stall \
                     threads at random)"
                        .into(),
                    Some(
                        "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled \
                         (ringcast-tune apply; transparent_hugepage=madvise at boot)"
                            .into(),
                    ),
                )
            } else {
                check(
                    id,
                    Status::Ok,
                    format!("transparent huge pages: {mode}"),
                    None,
                )
            }
        }
    }
}

fn numa(host: &Host, needs: &Needs) -> Check {
    let id = "numa";
    let iface = match needs.own_ip {
        ip if ip.is_loopback() => {
            return check(
                id,
                Status::Ok,
                format!("{ip} is loopback: no NIC involved"),
                None,
            );
        }
        IpAddr::V4(ip) => host.route_interface(ip),
        IpAddr::V6(_) => None,
    };
    let Some(iface) = iface else {
        return check(
            id,
            Status::Warn,
            format!("cannot tell which interface carries {}", needs.own_ip),
            Some("check by hand: cat /sys/class/net/IFACE/device/numa_node".into()),
        );
    };
    let nic_node = host
        .read(&format!("/sys/class/net/{iface}/device/numa_node"))
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|n| *n >= 0);
    let Some(nic_node) = nic_node else {
        return check(
            id,
            Status::Ok,
            format!("{iface} reports no NUMA node (a single-node host or a virtual NIC)"),
            None,
        );
    };
    let Some(cpu) = needs.cpu else {
        return check(
            id,
            Status::Warn,
            format!("{iface} is on node {nic_node}; no engine cpu configured"),
            Some(format!("set cpu to a core of node {nic_node}")),
        );
    };
    match host.cpu_node(cpu) {
        Some(node) if i64::from(node) == nic_node => check(
            id,
            Status::Ok,
            format!("{iface} and cpu {cpu} on node {node}"),
            None,
        ),
        Some(node) => check(
            id,
            Status::Fail,
            format!(
                "{iface} is on node {nic_node}, cpu {cpu} on node {node}: every packet crosses the interconnect"
            ),
            Some(format!(
                "choose a cpu of node {nic_node} (/sys/devices/system/node/node{nic_node}/cpulist)"
            )),
        ),
        None => check(
            id,
            Status::Ok,
            format!("{iface} on node {nic_node}; cpu {cpu} reports no node"),
            None,
        ),
    }
}

/// Whether this process can set up an io_uring (with SQPOLL when asked).
fn probe_io_uring(sqpoll: bool) -> Result<(), std::io::Error> {
    let mut builder =
        io_uring::IoUring::<io_uring::squeue::Entry, io_uring::cqueue::Entry>::builder();
    if sqpoll {
        builder.setup_sqpoll(100);
    }
    builder.build(4).map(drop)
}

fn io_uring(host: &Host, needs: &Needs) -> Check {
    let id = "io_uring";
    let disabled = host.read_u64(IO_URING_DISABLED);
    if disabled == Some(2) {
        return check(
            id,
            Status::Fail,
            "kernel.io_uring_disabled = 2: io_uring is off for every process".into(),
            Some("sysctl kernel.io_uring_disabled=0 (ringcast-tune apply)".into()),
        );
    }
    let sysctl = match disabled {
        Some(1) => "kernel.io_uring_disabled = 1 (only root and kernel.io_uring_group)",
        Some(_) => "kernel.io_uring_disabled = 0",
        None => "no kernel.io_uring_disabled (kernel before 6.6)",
    };
    if !host.is_live() {
        return check(
            id,
            if disabled == Some(1) {
                Status::Warn
            } else {
                Status::Ok
            },
            format!("{sysctl}; not probed (--root is not /)"),
            Some("sysctl kernel.io_uring_disabled=0, or run the engine in io_uring_group".into()),
        );
    }
    match probe_io_uring(false) {
        Err(e) => check(
            id,
            Status::Fail,
            format!("{sysctl}; io_uring_setup fails here: {e}"),
            Some(
                "a kernel with io_uring (5.19 or later for the engine's features), not \
                 blocked by seccomp or io_uring_disabled"
                    .into(),
            ),
        ),
        Ok(()) if !needs.sqpoll => check(
            id,
            Status::Ok,
            format!("{sysctl}; io_uring_setup works (SQPOLL not configured)"),
            None,
        ),
        Ok(()) => match probe_io_uring(true) {
            Ok(()) => check(
                id,
                Status::Ok,
                format!("{sysctl}; io_uring_setup works, with SQPOLL"),
                None,
            ),
            Err(e) => check(
                id,
                Status::Fail,
                format!("{sysctl}; io_uring works but SQPOLL (sqpoll = true) fails: {e}"),
                Some(
                    "run the engine as root or with CAP_SYS_NICE (kernels before 5.11), or \
                     set sqpoll = false"
                        .into(),
                ),
            ),
        },
    }
}

/// What `apply` does: runtime changes (old value read now), and the boot-time ones it
/// can only print.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub runtime: Vec<Change>,
    pub boot: Vec<String>,
}

/// Derives the runtime changes and the boot-time advice from the same readings as the
/// checks.
pub fn plan(host: &Host, needs: &Needs) -> Plan {
    let mut plan = Plan::default();
    let mut change = |path: String, old: String, new: String, why: &str| {
        if old != new {
            plan.runtime.push(Change {
                path,
                old,
                new,
                why: why.to_owned(),
            });
        }
    };

    let wanted = needs.huge_pages_wanted(huge_page_bytes(host));
    if let Some(have) = host.read_u64(HUGEPAGES)
        && have < wanted
    {
        change(
            HUGEPAGES.into(),
            have.to_string(),
            wanted.to_string(),
            "hugepages",
        );
    }
    for (id, path) in [("rmem_max", RMEM_MAX), ("wmem_max", WMEM_MAX)] {
        if let Some(have) = host.read_u64(path)
            && have < needs.socket_buffer_bytes
        {
            change(
                path.into(),
                have.to_string(),
                needs.socket_buffer_bytes.to_string(),
                id,
            );
        }
    }
    if let Some(have) = host.read_u64(IO_URING_DISABLED)
        && have != 0
    {
        change(
            IO_URING_DISABLED.into(),
            have.to_string(),
            "0".into(),
            "io_uring",
        );
    }
    if let Some(cpu) = needs.cpu {
        let targets = irq_cpus(host, cpu);
        if !targets.is_empty() {
            let list = format_cpu_list(&targets);
            for (irq, old) in irqs_on(host, cpu) {
                change(
                    format!("/proc/irq/{irq}/smp_affinity_list"),
                    old,
                    list.clone(),
                    "irq_affinity",
                );
            }
            let path = "/proc/irq/default_smp_affinity";
            if let Some(old) = host.read(path)
                && parse_cpu_mask(&old).is_some_and(|cpus| cpus.contains(&cpu))
            {
                let new = parse_cpu_mask(&old)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|c| *c != cpu)
                    .collect::<Vec<_>>();
                if !new.is_empty() {
                    // Same width as the kernel printed it.
                    let text = format_cpu_mask(&new);
                    let width = old.len().max(text.len());
                    change(
                        path.into(),
                        old.clone(),
                        format!("{text:0>width$}"),
                        "irq_affinity",
                    );
                }
            }
        }
    }
    for cpu in tuned_cpus(host, needs) {
        let path = format!("{CPU_DIR}/cpu{cpu}/cpufreq/scaling_governor");
        let available = host
            .read(&format!(
                "{CPU_DIR}/cpu{cpu}/cpufreq/scaling_available_governors"
            ))
            .unwrap_or_default();
        if let Some(old) = host.read(&path)
            && available.split_whitespace().any(|g| g == "performance")
        {
            change(path, old, "performance".into(), "governor");
        }
    }
    for (_, state, _, _) in deep_states(host, &tuned_cpus(host, needs)) {
        change(
            format!("{state}/disable"),
            "0".into(),
            "1".into(),
            "cstates",
        );
    }
    if let Some(text) = host.read(THP_ENABLED)
        && selected(&text) == "always"
    {
        change(THP_ENABLED.into(), "always".into(), "madvise".into(), "thp");
    }

    // Boot-time: what the checks found and apply cannot change at run time.
    let report = run(host, needs);
    let bad = |id: &str| report.find(id).is_some_and(|c| c.status != Status::Ok);
    if let Some(cpu) = needs.cpu {
        if bad("isolcpus") || bad("nohz_full") || bad("rcu_nocbs") {
            plan.boot.push(boot_isolation(cpu));
        }
        // The engine thread pins itself; the daemon's other threads belong on the
        // housekeeping cpus, never on another isolated core.
        let mut cpus = irq_cpus(host, cpu);
        cpus.push(cpu);
        plan.boot.push(format!(
            "systemd: CPUAffinity={} in a drop-in for ringcastd (systemctl edit ringcastd)",
            format_cpu_list(&cpus)
        ));
    } else {
        plan.boot
            .push("config: set cpu = N (an isolated core) to pin the engine thread".into());
    }
    for id in ["cpu", "smt_sibling", "numa", "memlock"] {
        let per_cpu = id != "memlock";
        if let Some(c) = report.find(id)
            && c.status != Status::Ok
            && (needs.cpu.is_some() || !per_cpu)
            && let Some(fix) = &c.fix
        {
            plan.boot.push(format!("{id}: {fix}"));
        }
    }
    plan.boot.push(
        "persist the runtime changes across reboots: the tuned profile in \
         tuning/deploy/tuned (tuned-adm profile ringcast), or /etc/sysctl.d/"
            .into(),
    );
    plan
}
