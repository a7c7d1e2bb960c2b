//! Network namespaces for multi-host tests, created and removed by the test itself: the
//! shared topology of `ringcast-netns`, named after the test process, with the node
//! addresses of [`NETNS_SUBNET`].

// Each test binary compiles this module and uses a part of it.
#[allow(unused_imports)]
pub use ringcast_netns::{ip, netns_names};

use super::NETNS_SUBNET;

/// Namespaces `<prefix>sw` (a bridge) and `<prefix><id>` per node, whose `v<id>` is a
/// veth to port `p<id>` of the bridge; deleted on drop (also when the test panics).
pub struct Netns {
    pub prefix: String,
    namespaces: ringcast_netns::Netns,
}

impl Netns {
    /// The namespaces for nodes 1..=n, or why they cannot be made (not root, no `ip`,
    /// no netns support).
    pub fn create(n: u32) -> Result<Netns, String> {
        let prefix = format!("rcns{}x", std::process::id());
        let namespaces = ringcast_netns::Netns::create(&ringcast_netns::Topology {
            prefix: prefix.clone(),
            subnet: NETNS_SUBNET.to_owned(),
            nodes: n,
            mtu: None,
            link_single_node: true,
        })?;
        Ok(Netns { prefix, namespaces })
    }

    pub fn node(&self, id: u32) -> String {
        self.namespaces.node(id)
    }

    /// Pulls (or plugs back) node `id`'s cable; a test cannot go on without it.
    pub fn set_port(&self, id: u32, up: bool) {
        if let Err(e) = self.namespaces.set_port(id, up) {
            panic!("set port of node {id}: {e}");
        }
    }
}
