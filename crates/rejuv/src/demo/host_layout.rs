//! Where the demo's host containers will be (`--hosts docker`), as the config needs it before
//! they run: their addresses, agent port, port range, restart command and escalation. The
//! plan reads it; [`crate::demo::hosts`] makes it with the network and runs the hosts.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The agent's API port on every host (each host has its own network stack).
const AGENT_PORT: u16 = 7070;
/// The instances' ports on every host.
pub const PORT_RANGE: [u16; 2] = [20_000, 20_015];
/// Where `kill` is inside the image: the hosts' restart command.
pub const KILL: &str = "/bin/kill";

/// What the config needs to know of the hosts before they run: their addresses and the
/// binary inside the image.
pub struct Layout {
    /// This run's value of the hosts' label (`rejuv.host`).
    pub run: String,
    pub network: String,
    pub image: String,
    /// The `rejuv` binary inside the image.
    pub binary: String,
    /// The private network's `/24`: the gateway (this machine) is `.1`, hosts from `.2`.
    pub subnet: Ipv4Addr,
}

impl Layout {
    /// The address, agent API address and port range of server number `i` (from 0).
    pub fn server(&self, i: usize) -> anyhow::Result<(IpAddr, SocketAddr, [u16; 2])> {
        anyhow::ensure!(
            i < 250,
            "--hosts docker: at most 250 servers on one network"
        );
        let [a, b, c, _] = self.subnet.octets();
        let ip = IpAddr::V4(Ipv4Addr::new(a, b, c, 2 + i as u8));
        Ok((ip, SocketAddr::new(ip, AGENT_PORT), PORT_RANGE))
    }

    /// `[rejuvenation]` lines: a server that ages again within five minutes of its last
    /// rejuvenation gets its host restarted.
    pub fn escalation(&self) -> String {
        "# Host containers: a server that ages again within five minutes of its last\n\
         # rejuvenation has its host restarted (drop-caches and compact-memory report skipped\n\
         # in a container without privileges).\n\
         escalation = [[\"stop-instances\", \"drop-caches\", \"compact-memory\", \"restart-host\"]]\n\
         escalation_window = \"5m\"\n"
            .to_string()
    }

    /// `[agent]` lines: the host restart command of a container host.
    pub fn restart_command(&self) -> String {
        format!(
            "# In a host container: PID 1 ends, the container's restart policy starts it again.\n\
             restart_command = [\"{KILL}\", \"-TERM\", \"1\"]\n"
        )
    }
}
