//! Network namespaces for a multi-node benchmark: one namespace per node, joined by
//! veth pairs at MTU 1,500 to a bridge in a switch namespace, so the datagrams between
//! engines cross a real (virtual) link with Ethernet framing, unlike loopback's 64 KiB
//! MTU. Needs root and `ip` (iproute2). Nothing is created in the caller's namespace;
//! everything is deleted on drop, also when the benchmark panics.

use std::process::Command;

/// Subnet of the node addresses (`<SUBNET>.<id>`); not used by the tests.
pub const SUBNET: &str = "10.231.14";

/// The link MTU of every veth (a typical Ethernet LAN).
pub const MTU: u32 = 1500;

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

/// The namespaces of nodes 1..=n: `<prefix><id>`, and `<prefix>sw` with the bridge.
#[derive(Debug)]
pub struct Netns {
    prefix: String,
    created: Vec<String>,
}

impl Netns {
    /// Creates them, or says why it cannot (not root, no `ip`, no netns support).
    pub fn create(n: u32) -> Result<Netns, String> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err("network namespaces need root".into());
        }
        let mut netns = Netns {
            prefix: format!("rcbench{}x", std::process::id()),
            created: Vec::new(),
        };
        let switch = format!("{}sw", netns.prefix);
        netns.add(&switch)?;
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        let mtu = MTU.to_string();
        for id in 1..=n {
            let node = netns.node(id);
            netns.add(&node)?;
            let (v, p) = (format!("v{id}"), format!("p{id}"));
            ip(&[
                "link", "add", &v, "mtu", &mtu, "netns", &node, "type", "veth", "peer", "name", &p,
                "mtu", &mtu, "netns", &switch,
            ])?;
            ip(&["-n", &switch, "link", "set", &p, "master", "br0"])?;
            ip(&["-n", &switch, "link", "set", &p, "up"])?;
            ip(&[
                "-n",
                &node,
                "addr",
                "add",
                &format!("{SUBNET}.{id}/24"),
                "dev",
                &v,
            ])?;
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

    /// The namespace node `id` runs in.
    pub fn node(&self, id: u32) -> String {
        format!("{}{id}", self.prefix)
    }

    /// Node `id`'s address.
    pub fn addr(id: u32) -> String {
        format!("{SUBNET}.{id}")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace removes its veth ends and the bridge with it.
        for name in self.created.drain(..).rev() {
            if let Err(e) = ip(&["netns", "del", &name]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}
