//! Network namespaces for multi-host tests, created and removed by the test itself.

use std::process::Command;

use super::NETNS_SUBNET;

/// Runs `ip` with `args`; its stderr on failure.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Network namespaces for one test, named after the test process: a switch namespace
/// `<prefix>sw` with a bridge, and one namespace `<prefix><id>` per node whose `v<id>`
/// is a veth to port `p<id>` of the bridge. Nothing is created in the host's namespace;
/// everything is deleted on drop (also when the test panics).
pub struct Netns {
    pub prefix: String,
    created: Vec<String>,
}

impl Netns {
    /// The namespaces for nodes 1..=n, or why they cannot be made (not root, no `ip`,
    /// no netns support).
    pub fn create(n: u32) -> Result<Netns, String> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        let mut netns = Netns {
            prefix: format!("rcns{}x", std::process::id()),
            created: Vec::new(),
        };
        let switch = netns.switch();
        netns.add(&switch)?;
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        for id in 1..=n {
            let node = netns.node(id);
            netns.add(&node)?;
            let (v, p) = (format!("v{id}"), format!("p{id}"));
            ip(&[
                "link", "add", &v, "netns", &node, "type", "veth", "peer", "name", &p, "netns",
                &switch,
            ])?;
            ip(&["-n", &switch, "link", "set", &p, "master", "br0"])?;
            ip(&["-n", &switch, "link", "set", &p, "up"])?;
            let address = format!("{NETNS_SUBNET}.{id}/24");
            ip(&["-n", &node, "addr", "add", &address, "dev", &v])?;
            ip(&["-n", &node, "link", "set", &v, "up"])?;
            ip(&["-n", &node, "link", "set", "lo", "up"])?;
        }
        Ok(netns)
    }

    fn add(&mut self, name: &str) -> Result<(), String> {
        ip(&["netns", "add", name])?;
        self.created.push(name.to_owned());
        Ok(())
    }

    pub fn switch(&self) -> String {
        format!("{}sw", self.prefix)
    }

    pub fn node(&self, id: u32) -> String {
        format!("{}{id}", self.prefix)
    }

    /// Pulls (or plugs back) node `id`'s cable: its bridge port goes down (up).
    pub fn set_port(&self, id: u32, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&[
            "-n",
            &self.switch(),
            "link",
            "set",
            &format!("p{id}"),
            state,
        ])
        .unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace removes its veth ends and bridge with it.
        for name in self.created.drain(..).rev() {
            if let Err(e) = ip(&["netns", "del", &name]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

pub fn netns_names() -> String {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
