//! Reading (and writing) the host's `/proc` and `/sys` below a root directory: `/` on a
//! real host, a fixture tree in tests.

use std::path::{Path, PathBuf};

/// The host's kernel interfaces, below `root`.
#[derive(Clone, Debug)]
pub struct Host {
    pub root: PathBuf,
}

impl Host {
    pub fn new(root: impl Into<PathBuf>) -> Host {
        Host { root: root.into() }
    }

    /// Whether this is the live host (live probes, like setting up an io_uring, are only
    /// meaningful there).
    pub fn is_live(&self) -> bool {
        self.root == Path::new("/")
    }

    /// `rel` (an absolute path such as `/proc/cmdline`) below the root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    /// The file's contents, trimmed; `None` when it does not exist or cannot be read.
    pub fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.path(rel))
            .ok()
            .map(|s| s.trim().to_owned())
    }

    pub fn read_u64(&self, rel: &str) -> Option<u64> {
        self.read(rel)?.parse().ok()
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.path(rel).exists()
    }

    /// Names of the entries of a directory (empty when it does not exist).
    pub fn list(&self, rel: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path(rel))
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    pub fn write(&self, rel: &str, value: &str) -> std::io::Result<()> {
        std::fs::write(self.path(rel), value)
    }

    /// A `key=value` (or bare `key`) parameter of the kernel command line.
    pub fn cmdline_param(&self, key: &str) -> Option<String> {
        let cmdline = self.read("/proc/cmdline")?;
        // Arguments after `--` go to init, not to the kernel.
        let kernel = cmdline.split(" -- ").next().unwrap_or("");
        kernel
            .split_whitespace()
            .find_map(|arg| match arg.split_once('=') {
                Some((k, v)) if k == key => Some(v.to_owned()),
                None if arg == key => Some(String::new()),
                _ => None,
            })
    }

    /// Online CPUs.
    pub fn online_cpus(&self) -> Vec<usize> {
        self.read("/sys/devices/system/cpu/online")
            .and_then(|s| parse_cpu_list(&s))
            .unwrap_or_default()
    }

    /// A CPU list file (`isolated`, `nohz_full`, ...); `None` if the file is missing.
    pub fn cpu_list(&self, rel: &str) -> Option<Vec<usize>> {
        parse_cpu_list(&self.read(rel)?)
    }

    /// The NUMA node of a CPU (`cpuN/nodeK`), if the kernel reports one.
    pub fn cpu_node(&self, cpu: usize) -> Option<u32> {
        self.list(&format!("/sys/devices/system/cpu/cpu{cpu}"))
            .iter()
            .find_map(|name| name.strip_prefix("node")?.parse().ok())
    }

    /// A `Max locked memory` soft limit from a `/proc/<pid>/limits` file: `None` when
    /// unlimited, `Some(bytes)` otherwise.
    pub fn memlock_limit(&self, limits: &str) -> Option<Option<u64>> {
        let text = self.read(limits)?;
        let line = text.lines().find(|l| l.starts_with("Max locked memory"))?;
        let soft = line["Max locked memory".len()..]
            .split_whitespace()
            .next()?;
        if soft == "unlimited" {
            Some(None)
        } else {
            soft.parse().ok().map(Some)
        }
    }

    /// A `/proc/meminfo` value in kB.
    pub fn meminfo_kb(&self, key: &str) -> Option<u64> {
        let text = self.read("/proc/meminfo")?;
        let line = text.lines().find(|l| l.split(':').next() == Some(key))?;
        line.split(':')
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// The interface the kernel routes `ip` through (`/proc/net/route`, longest prefix).
    pub fn route_interface(&self, ip: std::net::Ipv4Addr) -> Option<String> {
        let text = self.read("/proc/net/route")?;
        let addr = u32::from(ip);
        let mut best: Option<(u32, String)> = None;
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                continue;
            }
            // Little-endian hex, as the kernel prints them.
            let parse = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::from_be);
            let (Some(dest), Some(mask)) = (parse(fields[1]), parse(fields[7])) else {
                continue;
            };
            if addr & mask == dest & mask
                && best.as_ref().is_none_or(|(m, _)| mask.count_ones() > *m)
            {
                best = Some((mask.count_ones(), fields[0].to_owned()));
            }
        }
        best.map(|(_, iface)| iface)
    }
}

/// Parses a kernel CPU list (`0-3,6,8-9`); `None` if malformed. An empty list is empty.
pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        // isolcpus= may carry flags first (`isolcpus=nohz,domain,2-3`).
        if part.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) {
            continue;
        }
        match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi): (usize, usize) = (lo.parse().ok()?, hi.parse().ok()?);
                if hi < lo || hi - lo > 65_536 {
                    return None;
                }
                cpus.extend(lo..=hi);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Some(cpus)
}

/// Formats CPUs as a kernel CPU list (`0-3,6`).
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        while i + 1 < sorted.len() && sorted[i + 1] == sorted[i] + 1 {
            i += 1;
        }
        if sorted[i] == start {
            parts.push(start.to_string());
        } else {
            parts.push(format!("{start}-{}", sorted[i]));
        }
        i += 1;
    }
    parts.join(",")
}

/// A hexadecimal CPU mask (`/proc/irq/default_smp_affinity`: comma-separated 32-bit
/// groups, most significant first) as CPUs.
pub fn parse_cpu_mask(text: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    let groups: Vec<&str> = text.trim().split(',').collect();
    for (index, group) in groups.iter().rev().enumerate() {
        let bits = u32::from_str_radix(group, 16).ok()?;
        for bit in 0..32 {
            if bits & (1 << bit) != 0 {
                cpus.push(index * 32 + bit);
            }
        }
    }
    Some(cpus)
}

/// CPUs as a hexadecimal mask in the kernel's format.
pub fn format_cpu_mask(cpus: &[usize]) -> String {
    let groups = cpus.iter().max().map_or(1, |max| max / 32 + 1);
    let mut words = vec![0u32; groups];
    for cpu in cpus {
        words[cpu / 32] |= 1 << (cpu % 32);
    }
    // The most significant group unpadded, the others 8 digits (as the kernel prints).
    let parts: Vec<String> = words
        .iter()
        .rev()
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                format!("{w:x}")
            } else {
                format!("{w:08x}")
            }
        })
        .collect();
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_round_trip() {
        assert_eq!(parse_cpu_list("0-3,6,8-9"), Some(vec![0, 1, 2, 3, 6, 8, 9]));
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("nohz,domain,2-3"), Some(vec![2, 3]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(format_cpu_list(&[0, 1, 2, 3, 6, 8, 9]), "0-3,6,8-9");
        assert_eq!(format_cpu_list(&[]), "");
        assert_eq!(parse_cpu_mask("3"), Some(vec![0, 1]));
        assert_eq!(parse_cpu_mask("00000001,00000002"), Some(vec![1, 32]));
        assert_eq!(format_cpu_mask(&[1, 32]), "1,00000002");
        assert_eq!(format_cpu_mask(&[0, 2]), "5");
    }
}
