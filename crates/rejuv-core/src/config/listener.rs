//! The bounds every HTTP listener is held to: a cap on concurrent connections, a header-read
//! timeout and an idle timeout. `[agent]`, `[controller]` and `[traffic]` (the builtin proxy's
//! front ends) each carry the three fields; the proxy's admin API uses [`ListenerLimits::api`].
//! The listeners themselves apply them (`rejuv-net`).

use super::field::Errors;
use std::time::Duration;

/// Connections at once on an API listener (agent, controller, proxy admin). Their clients are
/// a controller or two, Prometheus, a few operators and dashboards: a few dozen connections.
/// The cap sits far above that so that an attack of a thousand or so connections, held until
/// the timeouts close them, still leaves room for the real clients.
pub const API_MAX_CONNECTIONS: usize = 2048;
/// Connections at once on each of the builtin proxy's front-end listeners: the service's own
/// clients, as many as a small deployment's HTTP front end holds.
pub const FRONT_END_MAX_CONNECTIONS: usize = 10_000;
/// How long a client has to send a whole request head (slowloris): HAProxy's usual
/// `timeout http-request`; a program on a private network sends its head in one packet.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may wait on a silent client: between requests on a keep-alive
/// connection, or for a request body, or for the client to take the response. As long as
/// common load balancers keep an idle connection, longer than clients' pools usually wait
/// (the proxy's own pool drops its idle connections after 15 s).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest `max_connections`: far above any file-descriptor limit a part would run with; a
/// larger value is a typo.
pub const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;
/// Longest timeout accepted: a listener that waits longer on a silent client holds its
/// connection for no purpose.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// The bounds of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Connections served at once; one more is accepted and closed at once (and counted).
    pub max_connections: usize,
    /// From a connection's start (or the first byte of a later request) to the end of the
    /// request head.
    pub header_read_timeout: Duration,
    /// Silence from the client while nothing of a request is being read or answered, or while
    /// the server waits for the client's body or for the client to take the response.
    pub idle_timeout: Duration,
}

impl ListenerLimits {
    /// The API listeners' limits (agent, controller, proxy admin) by default.
    pub const fn api() -> Self {
        Self {
            max_connections: API_MAX_CONNECTIONS,
            header_read_timeout: HEADER_READ_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
        }
    }

    /// The builtin proxy's front-end limits by default.
    pub const fn front_end() -> Self {
        Self {
            max_connections: FRONT_END_MAX_CONNECTIONS,
            header_read_timeout: HEADER_READ_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
        }
    }

    /// Checks the three fields of `section` (`agent`, `controller`, `traffic`).
    pub(crate) fn validate(&self, section: &str, errs: &mut Errors) {
        if self.max_connections == 0 {
            errs.add(
                format!("{section}.max_connections"),
                "must be at least 1 (0 would refuse every connection)",
            );
        } else if self.max_connections > MAX_CONNECTIONS_LIMIT {
            errs.add(
                format!("{section}.max_connections"),
                format!("must be at most {MAX_CONNECTIONS_LIMIT}"),
            );
        }
        let timeouts = [
            ("header_read_timeout", self.header_read_timeout),
            ("idle_timeout", self.idle_timeout),
        ];
        for (name, value) in timeouts {
            if value.is_zero() {
                errs.add(
                    format!("{section}.{name}"),
                    "must be greater than 0 (every connection would be closed at once)",
                );
            } else if value > MAX_TIMEOUT {
                errs.add(
                    format!("{section}.{name}"),
                    format!(
                        "must be at most {}",
                        humantime::format_duration(MAX_TIMEOUT)
                    ),
                );
            }
        }
    }
}

pub(crate) fn default_api_max_connections() -> usize {
    API_MAX_CONNECTIONS
}
pub(crate) fn default_front_end_max_connections() -> usize {
    FRONT_END_MAX_CONNECTIONS
}
pub(crate) fn default_header_read_timeout() -> Duration {
    HEADER_READ_TIMEOUT
}
pub(crate) fn default_idle_timeout() -> Duration {
    IDLE_TIMEOUT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(limits: ListenerLimits) -> Vec<String> {
        let mut errs = Errors::default();
        limits.validate("agent", &mut errs);
        errs.into_vec().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn the_defaults_pass() {
        assert!(fields(ListenerLimits::api()).is_empty());
        assert!(fields(ListenerLimits::front_end()).is_empty());
    }

    #[test]
    fn zero_and_absurd_values_are_refused_by_name() {
        let zero = ListenerLimits {
            max_connections: 0,
            header_read_timeout: Duration::ZERO,
            idle_timeout: Duration::ZERO,
        };
        assert_eq!(
            fields(zero),
            [
                "agent.max_connections",
                "agent.header_read_timeout",
                "agent.idle_timeout"
            ]
        );
        let huge = ListenerLimits {
            max_connections: MAX_CONNECTIONS_LIMIT + 1,
            header_read_timeout: MAX_TIMEOUT + Duration::from_secs(1),
            idle_timeout: Duration::from_secs(u64::MAX),
        };
        assert_eq!(fields(huge).len(), 3);
    }
}
