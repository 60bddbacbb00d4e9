//! `[source]`: where the controller's readings come from — its agents (the default), or a
//! Prometheus server it asks with one PromQL query per resource.
//!
//! With `kind = "prometheus"` every series a query returns is a reading of the server named
//! by its `server_label`, judged by the same detector the agents' samples go through. Without
//! any `[[servers]]` the controller can only advise (`rejuv controller --dry-run`): nothing
//! runs an instance there, so nothing can be moved.
//!
//! A resource measured as a fraction (`memory-used`, `swap-used`, `fds`, `instance-rss`)
//! needs its capacity: a query (e.g. `node_memory_MemTotal_bytes`) or a fixed number. The
//! counted ones (`threads`, `instance-fds`, `instance-threads`, `health-latency-ms`) take their
//! limit from their threshold rule in `[policy]`, as for agents.

use super::field::Errors;
use super::policy::Resource;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Where readings come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// The agents' own samples.
    #[default]
    Agents,
    /// A Prometheus server's series (`query_range` over HTTP).
    Prometheus,
}

/// The exhaustion level of a resource read from Prometheus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Capacity {
    /// The same for every series, in the unit of the query's values (e.g. bytes).
    Fixed(f64),
    /// A PromQL query whose series give it per server (matched by the server label, and the
    /// instance label where one is set).
    Query(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    #[serde(default)]
    pub kind: SourceKind,
    /// The Prometheus server's base URL, e.g. `http://prometheus:9090` (plain HTTP).
    pub url: Option<String>,
    /// The label whose value names the server a series belongs to (`instance`, or a
    /// `server` label added in the scrape config).
    #[serde(default = "default_server_label")]
    pub server_label: String,
    /// For the per-instance resources: the label whose value names the instance (e.g.
    /// `groupname` of process-exporter). Without it, a server has one series per resource.
    pub instance_label: Option<String>,
    /// The resolution of the series read, and how often the controller reads new points.
    #[serde(with = "humantime_serde", default = "default_step")]
    pub step: Duration,
    /// How much history the first read takes (later reads take what is new).
    #[serde(with = "humantime_serde", default = "default_range")]
    pub range: Duration,
    /// Give up on one request to Prometheus after this long.
    #[serde(with = "humantime_serde", default = "default_timeout")]
    pub timeout: Duration,
    /// One PromQL query per resource, e.g.
    /// `memory-used = "node_memory_MemTotal_bytes - node_memory_MemAvailable_bytes"`.
    #[serde(default)]
    pub queries: BTreeMap<Resource, String>,
    /// The capacity of each resource measured as a fraction: a query or a fixed number.
    #[serde(default)]
    pub capacity: BTreeMap<Resource, Capacity>,
}

fn default_server_label() -> String {
    "instance".into()
}
fn default_step() -> Duration {
    Duration::from_secs(15)
}
fn default_range() -> Duration {
    Duration::from_secs(3600)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            kind: SourceKind::Agents,
            url: None,
            server_label: default_server_label(),
            instance_label: None,
            step: default_step(),
            range: default_range(),
            timeout: default_timeout(),
            queries: BTreeMap::new(),
            capacity: BTreeMap::new(),
        }
    }
}

/// Prometheus refuses a range query of more points than this per series.
pub const MAX_POINTS: u64 = 11_000;

/// Whether a resource is read as a fraction of a capacity (else as a count or milliseconds
/// against its threshold rule's limit).
pub fn needs_capacity(resource: Resource) -> bool {
    matches!(
        resource,
        Resource::MemoryUsed | Resource::SwapUsed | Resource::Fds | Resource::InstanceRss
    )
}

/// A Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl SourceConfig {
    pub fn is_prometheus(&self) -> bool {
        self.kind == SourceKind::Prometheus
    }

    pub(crate) fn validate(&self, errs: &mut Errors) {
        if !self.is_prometheus() {
            if self.url.is_some() {
                errs.add("source.url", "only used with source.kind = \"prometheus\"");
            }
            if !self.queries.is_empty() {
                errs.add(
                    "source.queries",
                    "only used with source.kind = \"prometheus\"",
                );
            }
            return;
        }
        match &self.url {
            None => errs.add(
                "source.url",
                "required with source.kind = \"prometheus\" (e.g. \"http://127.0.0.1:9090\")",
            ),
            Some(u) if u.starts_with("https://") => errs.add(
                "source.url",
                "https is not supported (the controller's HTTP client speaks no TLS): reach Prometheus over http:// on a trusted network or through a local TLS-terminating proxy",
            ),
            Some(u) if !u.starts_with("http://") || u.len() == "http://".len() => {
                errs.add("source.url", "must be an http:// URL, e.g. \"http://127.0.0.1:9090\"")
            }
            Some(_) => {}
        }
        if !is_label_name(&self.server_label) {
            errs.add(
                "source.server_label",
                "must be a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)",
            );
        }
        if let Some(l) = &self.instance_label {
            if !is_label_name(l) {
                errs.add(
                    "source.instance_label",
                    "must be a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)",
                );
            } else if *l == self.server_label {
                errs.add(
                    "source.instance_label",
                    "must differ from source.server_label",
                );
            }
        }
        self.validate_timing(errs);
        self.validate_queries(errs);
    }

    fn validate_timing(&self, errs: &mut Errors) {
        if self.step < Duration::from_millis(1) {
            errs.add("source.step", "must be at least 1ms");
        } else if self.range < self.step {
            errs.add("source.range", "must be at least source.step");
        } else if self.range.as_millis() / self.step.as_millis() > u128::from(MAX_POINTS) {
            errs.add(
                "source.range",
                format!(
                    "holds more than {MAX_POINTS} steps of source.step (Prometheus refuses such a range query): lengthen the step or shorten the range"
                ),
            );
        }
        if self.timeout.is_zero() {
            errs.add("source.timeout", "must be longer than zero");
        }
    }

    fn validate_queries(&self, errs: &mut Errors) {
        if self.queries.is_empty() {
            errs.add(
                "source.queries",
                "at least one query is required with source.kind = \"prometheus\" (e.g. memory-used = \"node_memory_MemTotal_bytes - node_memory_MemAvailable_bytes\")",
            );
        }
        for (r, q) in &self.queries {
            if q.trim().is_empty() {
                errs.add(format!("source.queries.{r}"), "must not be empty");
            }
            if needs_capacity(*r) && !self.capacity.contains_key(r) {
                errs.add(
                    format!("source.capacity.{r}"),
                    format!("required: {r} is judged as a fraction of its capacity (a query such as \"node_memory_MemTotal_bytes\", or a number)"),
                );
            }
        }
        for (r, c) in &self.capacity {
            let field = format!("source.capacity.{r}");
            if !self.queries.contains_key(r) {
                errs.add(field, "names a resource with no query in source.queries");
                continue;
            }
            if !needs_capacity(*r) {
                errs.add(
                    field,
                    format!("{r} is a count: its limit is the `above` of its rule in [policy]"),
                );
                continue;
            }
            match c {
                Capacity::Fixed(v) if !(v.is_finite() && *v > 0.0) => {
                    errs.add(field, "must be a positive number or a PromQL query")
                }
                Capacity::Query(q) if q.trim().is_empty() => errs.add(field, "must not be empty"),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> SourceConfig {
        #[derive(Deserialize)]
        struct Wrap {
            source: SourceConfig,
        }
        toml::from_str::<Wrap>(text).unwrap().source
    }

    fn problems(s: &SourceConfig) -> Vec<String> {
        let mut errs = Errors::default();
        s.validate(&mut errs);
        errs.into_vec().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_prometheus_source_parses_with_query_and_fixed_capacities() {
        let s = parse(
            r#"
[source]
kind = "prometheus"
url = "http://127.0.0.1:9090"
server_label = "server"
instance_label = "groupname"
step = "1s"
range = "2m"
[source.queries]
memory-used = "node_memory_MemTotal_bytes - node_memory_MemAvailable_bytes"
instance-rss = 'namedprocess_namegroup_memory_bytes{memtype="resident"}'
[source.capacity]
memory-used = "node_memory_MemTotal_bytes"
instance-rss = 2147483648
"#,
        );
        assert!(s.is_prometheus());
        assert_eq!(s.step, Duration::from_secs(1));
        assert_eq!(
            s.capacity[&Resource::MemoryUsed],
            Capacity::Query("node_memory_MemTotal_bytes".into())
        );
        assert_eq!(
            s.capacity[&Resource::InstanceRss],
            Capacity::Fixed(2147483648.0)
        );
        assert!(problems(&s).is_empty(), "{:?}", problems(&s));
    }

    #[test]
    fn problems_name_their_fields() {
        let s = parse(
            r#"
[source]
kind = "prometheus"
server_label = "0bad"
step = "1s"
range = "5h"
[source.queries]
instance-rss = "x"
threads = " "
[source.capacity]
threads = 5
fds = "y"
"#,
        );
        let p = problems(&s);
        for want in [
            "source.url: required",
            "source.server_label: must be a Prometheus label name",
            "source.range: holds more than 11000 steps",
            "source.queries.threads: must not be empty",
            "source.capacity.instance-rss: required",
            "source.capacity.threads: threads is a count",
            "source.capacity.fds: names a resource with no query",
        ] {
            assert!(p.iter().any(|e| e.starts_with(want)), "{want} not in {p:?}");
        }
        assert_eq!(p.len(), 7, "{p:?}");
    }

    #[test]
    fn agents_take_no_prometheus_fields() {
        let s = parse("[source]\nurl = \"http://x:9090\"\n");
        assert_eq!(s.kind, SourceKind::Agents);
        assert_eq!(
            problems(&s),
            vec!["source.url: only used with source.kind = \"prometheus\""]
        );
        assert!(problems(&SourceConfig::default()).is_empty());
    }

    #[test]
    fn a_prometheus_source_alone_needs_no_servers_services_or_traffic() {
        let advisory = r#"
[cluster]
mode = "active-standby"
[source]
kind = "prometheus"
url = "http://127.0.0.1:9090"
[source.queries]
memory-used = "node_memory_MemTotal_bytes - node_memory_MemAvailable_bytes"
[source.capacity]
memory-used = "node_memory_MemTotal_bytes"
"#;
        let cfg = crate::config::Config::from_toml(advisory).unwrap();
        assert!(cfg.servers.is_empty() && cfg.source.is_prometheus());
        let agents = "[cluster]\nmode = \"active-standby\"\n";
        let err = crate::config::Config::from_toml(agents)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("servers: at least one server is required"),
            "{err}"
        );
        let bad_url = advisory.replace("http://127.0.0.1:9090", "https://p:9090");
        let err = crate::config::Config::from_toml(&bad_url)
            .unwrap_err()
            .to_string();
        assert!(err.contains("source.url: https is not supported"), "{err}");
    }
}
