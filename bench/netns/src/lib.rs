//! Network namespaces for multi-node tests and benchmarks: one namespace per node,
//! joined by veth pairs to a bridge in a switch namespace, so datagrams between engines
//! cross a real (virtual) Ethernet link instead of loopback's 64 KiB MTU. Needs root and
//! `ip` (iproute2). Nothing is created in the caller's namespace; everything is deleted
//! on drop, also when the test or benchmark panics.
//!
//! Used by the engine's multi-node tests, the chaos run, `engine_throughput --netns` and
//! `bench-compare`: one topology, one set of names.

use std::process::Command;

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

/// The names `ip netns list` prints now (to check that nothing was left behind).
pub fn netns_names() -> String {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// What to build.
#[derive(Clone, Debug)]
pub struct Topology {
    /// Prefix of every namespace name: node `id` runs in `<prefix><id>`, the bridge
    /// lives in `<prefix>sw`. Make it unique per process (tests run in parallel).
    pub prefix: String,
    /// Node `id` gets `<subnet>.<id>/24` on its veth `v<id>`.
    pub subnet: String,
    /// Nodes 1..=nodes.
    pub nodes: u32,
    /// The MTU of every veth and the bridge; `None` keeps the kernel's (1,500).
    pub mtu: Option<u32>,
    /// Whether a single node gets a link too; without one it has only `lo`.
    pub link_single_node: bool,
}

/// The namespaces of one [`Topology`], deleted on drop.
#[derive(Debug)]
pub struct Netns {
    prefix: String,
    subnet: String,
    linked: bool,
    created: Vec<String>,
}

impl Netns {
    /// Creates the namespaces, or says why it cannot (not root, no `ip`, no netns
    /// support); what was created before a failure is deleted again.
    pub fn create(topology: &Topology) -> Result<Netns, String> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err("network namespaces need root".into());
        }
        let mut netns = Netns {
            prefix: topology.prefix.clone(),
            subnet: topology.subnet.clone(),
            linked: topology.nodes > 1 || topology.link_single_node,
            created: Vec::new(),
        };
        if netns.linked {
            netns.add_switch(topology.mtu)?;
        }
        for id in 1..=topology.nodes {
            netns.add_node(id, topology.mtu)?;
        }
        Ok(netns)
    }

    fn add_switch(&mut self, mtu: Option<u32>) -> Result<(), String> {
        let switch = self.switch();
        self.add(&switch)?;
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        if let Some(mtu) = mtu {
            ip(&["-n", &switch, "link", "set", "br0", "mtu", &mtu.to_string()])?;
        }
        ip(&["-n", &switch, "link", "set", "br0", "up"])
    }

    fn add_node(&mut self, id: u32, mtu: Option<u32>) -> Result<(), String> {
        let node = self.node(id);
        self.add(&node)?;
        ip(&["-n", &node, "link", "set", "lo", "up"])?;
        if !self.linked {
            return Ok(());
        }
        let (switch, v, p) = (self.switch(), format!("v{id}"), format!("p{id}"));
        let mut veth = vec!["link", "add", &v, "netns", &node];
        let mtu = mtu.map(|m| m.to_string());
        if let Some(mtu) = &mtu {
            veth.extend(["mtu", mtu.as_str()]);
        }
        veth.extend(["type", "veth", "peer", "name", &p, "netns", &switch]);
        if let Some(mtu) = &mtu {
            veth.extend(["mtu", mtu.as_str()]);
        }
        ip(&veth)?;
        ip(&["-n", &switch, "link", "set", &p, "master", "br0"])?;
        ip(&["-n", &switch, "link", "set", &p, "up"])?;
        let address = format!("{}/24", self.addr(id));
        ip(&["-n", &node, "addr", "add", &address, "dev", &v])?;
        ip(&["-n", &node, "link", "set", &v, "up"])
    }

    fn add(&mut self, name: &str) -> Result<(), String> {
        ip(&["netns", "add", name])?;
        self.created.push(name.to_owned());
        Ok(())
    }

    /// The namespace holding the bridge.
    pub fn switch(&self) -> String {
        format!("{}sw", self.prefix)
    }

    /// The namespace node `id` runs in.
    pub fn node(&self, id: u32) -> String {
        format!("{}{id}", self.prefix)
    }

    /// Node `id`'s address on its link.
    pub fn addr(&self, id: u32) -> String {
        format!("{}.{id}", self.subnet)
    }

    /// Pulls (or plugs back) node `id`'s cable: its bridge port goes down (up).
    pub fn set_port(&self, id: u32, up: bool) -> Result<(), String> {
        let state = if up { "up" } else { "down" };
        let port = format!("p{id}");
        ip(&["-n", &self.switch(), "link", "set", &port, state])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace removes its veth ends and bridge with it.
        for name in self.created.drain(..).rev() {
            if let Err(e) = ip(&["netns", "del", &name]) {
                eprintln!("netns cleanup: {e}");
            }
        }
    }
}
