//! Addresses that cannot all be bound: checks across sections, so that a config whose parts
//! would fight over a port fails `rejuv config check` instead of failing at run time.
//!
//! Every listening address the config names (the controller's API, the builtin proxy's admin
//! API and front ends, each agent's API) must be distinct, where an unspecified address
//! (`0.0.0.0`, `::`) takes its port on every address; and no server's instance port range may
//! hold a port the config gives another listener on that server's address.

use super::field::Errors;
use super::Config;
use std::net::{IpAddr, SocketAddr};

/// Two sockets that cannot both be bound on one host.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn same_host(a: IpAddr, b: IpAddr) -> bool {
    a == b || a.is_unspecified() || b.is_unspecified()
}

pub(crate) fn validate(cfg: &Config, errs: &mut Errors) {
    let mut listeners: Vec<(String, SocketAddr)> =
        vec![("controller.listen".into(), cfg.controller.listen)];
    if let Some(admin) = cfg.traffic.admin {
        listeners.push(("traffic.admin".into(), admin));
    }
    for (name, addr) in &cfg.traffic.listen {
        listeners.push((format!("traffic.listen.{name}"), *addr));
    }
    for (i, s) in cfg.servers.iter().enumerate() {
        listeners.push((format!("servers[{i}].agent"), s.agent));
    }
    for (j, (field, addr)) in listeners.iter().enumerate() {
        if let Some((other, _)) = listeners[..j].iter().find(|(_, a)| clash(*a, *addr)) {
            errs.add(
                field.clone(),
                format!("{addr} is also {other}: both cannot listen on it"),
            );
        }
    }
    for (i, s) in cfg.servers.iter().enumerate() {
        let [lo, hi] = s.port_range;
        if lo > hi {
            continue; // the server's own check reports it
        }
        for (field, addr) in &listeners {
            if same_host(s.address, addr.ip()) && (lo..=hi).contains(&addr.port()) {
                errs.add(
                    format!("servers[{i}].port_range"),
                    format!(
                        "[{lo}, {hi}] holds port {} of {field} ({addr}): an instance could take it",
                        addr.port()
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    /// The shared example with the controller's address written out.
    fn base() -> String {
        format!(
            "{}\n[controller]\nlisten = \"127.0.0.1:7070\"\n",
            super::super::tests::EXAMPLE
        )
    }

    fn errors(text: &str) -> String {
        match Config::from_toml(text) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn distinct_listeners_pass() {
        assert_eq!(errors(&base()), "");
    }

    #[test]
    fn a_front_end_on_an_agents_address_is_refused() {
        let t = base().replace(
            "listen = { web = \"127.0.0.1:8080\" }",
            "listen = { web = \"127.0.0.2:7001\" }",
        );
        let e = errors(&t);
        assert!(
            e.contains("servers[0].agent: 127.0.0.2:7001 is also traffic.listen.web"),
            "{e}"
        );
    }

    #[test]
    fn a_port_range_holding_the_agents_own_port_is_refused() {
        let t = base().replacen(
            "port_range = [20000, 20010]",
            "port_range = [7000, 7010]",
            1,
        );
        let e = errors(&t);
        assert!(
            e.contains("servers[0].port_range: [7000, 7010] holds port 7001 of servers[0].agent"),
            "{e}"
        );
    }

    #[test]
    fn the_controller_on_the_proxys_admin_address_is_refused() {
        let t = base().replace("listen = \"127.0.0.1:7070\"", "listen = \"0.0.0.0:7071\"");
        let e = errors(&t);
        assert!(
            e.contains("traffic.admin: 127.0.0.1:7071 is also controller.listen"),
            "{e}"
        );
    }
}
