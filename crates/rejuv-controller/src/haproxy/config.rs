//! The adapter's configuration: where the runtime API listens, which backend serves which
//! rejuv service, the name prefix of rejuv's servers, and the health checks they get.

use super::args::check_name;
use super::error::HaproxyError;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default name prefix of the servers rejuv manages.
pub const DEFAULT_PREFIX: &str = "rj-";

/// Where HAProxy's runtime API listens (`stats socket … level admin`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HaproxySocket {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl fmt::Display for HaproxySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HaproxySocket::Unix(p) => write!(f, "unix:{}", p.display()),
            HaproxySocket::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// Health checks HAProxy runs on the servers rejuv adds (`check inter … rise … fall …`).
/// The check type (`option httpchk …`) comes from the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthCheck {
    pub inter: Duration,
    pub rise: u32,
    pub fall: u32,
}

#[derive(Debug, Clone)]
pub struct HaproxyConfig {
    pub socket: HaproxySocket,
    /// rejuv service name → HAProxy backend name.
    pub backends: BTreeMap<String, String>,
    /// Name prefix of rejuv's servers; only servers with it are ever changed.
    pub server_prefix: String,
    /// `None`: servers are added without checks (rejuv only routes to healthy instances, and
    /// `retry-on conn-failure` covers a crash in between).
    pub health_check: Option<HealthCheck>,
    /// Limit for one runtime API exchange (connect, send, read to the end).
    pub timeout: Duration,
}

impl HaproxyConfig {
    /// A configuration with the default prefix, no health checks and a 3 s timeout.
    pub fn new(socket: HaproxySocket, backends: BTreeMap<String, String>) -> Self {
        Self {
            socket,
            backends,
            server_prefix: DEFAULT_PREFIX.to_string(),
            health_check: None,
            timeout: Duration::from_secs(3),
        }
    }

    /// Checks the backend names and the prefix against the strict character set.
    ///
    /// # Errors
    /// [`HaproxyError::InvalidArgument`] naming the first bad value.
    pub fn validate(&self) -> Result<(), HaproxyError> {
        check_name("server prefix", &self.server_prefix)?;
        let mut seen = BTreeSet::new();
        for b in self.backends.values() {
            check_name("backend name", b)?;
            // Each pass makes a backend equal to one service's list: two services on one
            // backend would delete each other's servers.
            if !seen.insert(b) {
                return Err(HaproxyError::InvalidArgument {
                    what: "backend name",
                    value: b.clone(),
                    reason: "mapped to two services",
                });
            }
        }
        if let Some(hc) = &self.health_check {
            if hc.inter.is_zero() || hc.rise == 0 || hc.fall == 0 {
                return Err(HaproxyError::InvalidArgument {
                    what: "health check",
                    value: format!("{hc:?}"),
                    reason: "inter, rise and fall must be positive",
                });
            }
        }
        Ok(())
    }
}
