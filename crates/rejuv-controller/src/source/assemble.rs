//! From the series of the source's queries to samples per server, the shape every detector
//! of the controller reads.
//!
//! Each series belongs to the server its `server_label` names. A host-wide resource has one
//! series per server; a per-instance one has one per instance, named by `instance_label`
//! (or, without one, a single instance named after the server). The readings of one server at
//! one time make one [`Sample`]: `memory-used` sets its used and total memory (the capacity),
//! `instance-rss` an instance's RSS and its memory limit (the capacity), and so on. A reading
//! no query gives stays zero, which the detector reads as "not measured" for every resource
//! measured as a fraction (a total of zero), and as a flat zero for the counts.
//!
//! # Errors
//! A series without the server label, or two series for the same server (and instance) of
//! one resource, make the query unusable: [`AssembleError`] names the resource and the fix.
//! A series whose capacity is missing is left out with a note.

use super::prometheus::Series;
use rejuv_core::config::{needs_capacity, Resource, SourceConfig};
use rejuv_core::detect::detector::per_instance;
use rejuv_core::text::clean;
use rejuv_core::types::{InstanceSample, Sample, ServerId};
use std::collections::BTreeMap;

/// What one resource's queries returned.
pub struct ResourceSeries {
    pub resource: Resource,
    pub values: Vec<Series>,
    pub capacity: CapacitySeries,
}

/// The capacity of one resource's series.
pub enum CapacitySeries {
    /// A count: its limit is its threshold rule's.
    None,
    Fixed(f64),
    Series(Vec<Series>),
}

/// Why the series of a query cannot be read as servers' readings.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AssembleError {
    #[error("source.queries.{resource}: a series has no `{label}` label ({series}); keep the server label in the query's result, e.g. `max by ({label}) (...)`")]
    NoServer {
        resource: Resource,
        label: String,
        series: String,
    },
    #[error("source.queries.{resource}: {count} series for server `{server}`{instance} ({example}); aggregate them by the server label{hint}")]
    Ambiguous {
        resource: Resource,
        server: String,
        instance: String,
        count: usize,
        example: String,
        hint: &'static str,
    },
    #[error("source.capacity.{resource}: {count} series for server `{server}`; give one capacity per server (e.g. `max by (LABEL) (...)`)")]
    AmbiguousCapacity {
        resource: Resource,
        server: String,
        count: usize,
    },
}

/// The samples per server, oldest first, and notes on what was left out.
#[derive(Debug, Default)]
pub struct Assembled {
    pub samples: BTreeMap<ServerId, Vec<Sample>>,
    pub notes: Vec<String>,
}

/// A series' labels for people: `{job="node", server="s1"}`.
pub fn show_labels(labels: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", clean(v, 60)))
        .collect();
    format!("{{{}}}", inner.join(", "))
}

/// Where a series belongs: its server and, for a per-instance resource, its instance.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    server: String,
    instance: Option<String>,
}

fn key_of(cfg: &SourceConfig, resource: Resource, s: &Series) -> Result<Key, AssembleError> {
    let server = s
        .labels
        .get(&cfg.server_label)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| AssembleError::NoServer {
            resource,
            label: cfg.server_label.clone(),
            series: show_labels(&s.labels),
        })?
        .clone();
    let instance = per_instance(resource).then(|| {
        cfg.instance_label
            .as_ref()
            .and_then(|l| s.labels.get(l))
            .filter(|v| !v.is_empty())
            .cloned()
            .unwrap_or_else(|| server.clone())
    });
    Ok(Key { server, instance })
}

/// One resource's series by where they belong, each at most once.
fn by_key<'a>(
    cfg: &SourceConfig,
    resource: Resource,
    series: &'a [Series],
) -> Result<BTreeMap<Key, &'a Series>, AssembleError> {
    let mut out: BTreeMap<Key, Vec<&Series>> = BTreeMap::new();
    for s in series {
        out.entry(key_of(cfg, resource, s)?).or_default().push(s);
    }
    out.into_iter()
        .map(|(k, v)| {
            if v.len() > 1 {
                let hint = match (per_instance(resource), &cfg.instance_label) {
                    (true, None) => " (and the instance label), or set source.instance_label",
                    (true, Some(_)) => " and source.instance_label",
                    (false, _) => ", e.g. `max by (LABEL) (...)`",
                };
                return Err(AssembleError::Ambiguous {
                    resource,
                    instance: k
                        .instance
                        .as_ref()
                        .filter(|_| cfg.instance_label.is_some())
                        .map(|i| format!(", instance `{i}`"))
                        .unwrap_or_default(),
                    server: k.server,
                    count: v.len(),
                    example: show_labels(&v[1].labels),
                    hint,
                });
            }
            Ok((k, v[0]))
        })
        .collect()
}

/// The capacity series of one resource, by server and instance where they carry the
/// instance label, else by server alone.
struct Capacities<'a> {
    exact: BTreeMap<Key, &'a Series>,
    per_server: BTreeMap<String, Vec<&'a Series>>,
}

impl<'a> Capacities<'a> {
    fn new(
        cfg: &SourceConfig,
        resource: Resource,
        series: &'a [Series],
    ) -> Result<Self, AssembleError> {
        let mut exact = BTreeMap::new();
        let mut per_server: BTreeMap<String, Vec<&Series>> = BTreeMap::new();
        for s in series {
            let Ok(k) = key_of(cfg, resource, s) else {
                continue;
            };
            per_server.entry(k.server.clone()).or_default().push(s);
            let labelled = cfg
                .instance_label
                .as_ref()
                .is_some_and(|l| s.labels.contains_key(l));
            if labelled {
                exact.insert(k, s);
            }
        }
        Ok(Self { exact, per_server })
    }

    fn find(&self, resource: Resource, key: &Key) -> Result<Option<&'a Series>, AssembleError> {
        if let Some(s) = self.exact.get(key) {
            return Ok(Some(s));
        }
        match self.per_server.get(&key.server).map(Vec::as_slice) {
            None | Some([]) => Ok(None),
            Some([one]) => Ok(Some(one)),
            Some(many) => Err(AssembleError::AmbiguousCapacity {
                resource,
                server: key.server.clone(),
                count: many.len(),
            }),
        }
    }
}

/// A series' value at `t_ms`: the point at that time, else the latest before it, else the
/// first after it.
fn value_at(points: &[(u64, f64)], t_ms: u64) -> Option<f64> {
    match points.binary_search_by_key(&t_ms, |p| p.0) {
        Ok(i) => Some(points[i].1),
        Err(0) => points.first().map(|p| p.1),
        Err(i) => Some(points[i - 1].1),
    }
}

/// A non-negative reading as the integer the sample holds.
fn whole(v: f64) -> u64 {
    v.max(0.0).round().min(u64::MAX as f64) as u64
}

/// Puts one reading into a sample.
fn set(sample: &mut Sample, resource: Resource, instance: Option<&str>, v: f64, cap: Option<f64>) {
    let cap = cap.map(whole).unwrap_or(0);
    match (resource, instance) {
        (Resource::MemoryUsed, _) => {
            sample.mem_used_bytes = whole(v);
            sample.mem_total_bytes = cap;
            sample.mem_available_bytes = cap.saturating_sub(whole(v));
        }
        (Resource::SwapUsed, _) => {
            sample.swap_used_bytes = whole(v);
            sample.swap_total_bytes = cap;
        }
        (Resource::Fds, _) => {
            sample.open_fds = whole(v);
            sample.max_fds = cap;
        }
        (Resource::Threads, _) => sample.threads = whole(v),
        (r, Some(id)) => {
            let i = sample
                .instances
                .entry(id.to_string())
                .or_insert_with(|| InstanceSample {
                    healthy: true,
                    ..InstanceSample::default()
                });
            match r {
                Resource::InstanceRss => {
                    i.rss_bytes = whole(v);
                    i.memory_limit_bytes = Some(cap);
                }
                Resource::InstanceFds => i.fds = whole(v),
                Resource::InstanceThreads => i.threads = whole(v),
                Resource::HealthLatencyMs => i.health_latency_ms = Some(v.max(0.0)),
                _ => {}
            }
        }
        (_, None) => {}
    }
}

/// The samples of every server the series name.
pub fn assemble(cfg: &SourceConfig, data: &[ResourceSeries]) -> Result<Assembled, AssembleError> {
    let mut out = Assembled::default();
    let mut samples: BTreeMap<String, BTreeMap<u64, Sample>> = BTreeMap::new();
    for rs in data {
        let r = rs.resource;
        let values = by_key(cfg, r, &rs.values)?;
        let caps = match &rs.capacity {
            CapacitySeries::Series(s) => Some(Capacities::new(cfg, r, s)?),
            _ => None,
        };
        for (key, series) in values {
            let cap_series = match &caps {
                Some(c) => match c.find(r, &key)? {
                    Some(s) if !s.points.is_empty() => Some(s),
                    _ => {
                        out.notes.push(format!(
                            "{r} of server `{}`: its capacity query (source.capacity.{r}) has no series for it; not judged",
                            key.server
                        ));
                        continue;
                    }
                },
                None => None,
            };
            for &(t, v) in &series.points {
                let cap = match (&rs.capacity, cap_series) {
                    (CapacitySeries::Fixed(c), _) => Some(*c),
                    (_, Some(s)) => value_at(&s.points, t),
                    _ => None,
                };
                if needs_capacity(r) && !cap.is_some_and(|c| c >= 1.0) {
                    continue;
                }
                let sample = samples
                    .entry(key.server.clone())
                    .or_default()
                    .entry(t)
                    .or_insert_with(|| Sample {
                        taken_at_ms: t,
                        ..Sample::default()
                    });
                set(sample, r, key.instance.as_deref(), v, cap);
            }
        }
    }
    out.samples = samples
        .into_iter()
        .map(|(server, by_t)| (server, by_t.into_values().collect()))
        .collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rejuv_core::config::{Capacity, SourceKind};

    fn series(labels: &[(&str, &str)], points: &[(u64, f64)]) -> Series {
        Series {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            points: points.to_vec(),
        }
    }

    fn cfg(instance_label: Option<&str>) -> SourceConfig {
        let mut c = SourceConfig {
            kind: SourceKind::Prometheus,
            url: Some("http://p:9090".into()),
            server_label: "server".into(),
            instance_label: instance_label.map(Into::into),
            ..SourceConfig::default()
        };
        c.capacity
            .insert(Resource::MemoryUsed, Capacity::Query("total".into()));
        c
    }

    #[test]
    fn readings_of_one_server_and_time_make_one_sample() {
        let c = cfg(Some("group"));
        let data = [
            ResourceSeries {
                resource: Resource::MemoryUsed,
                values: vec![
                    series(&[("server", "s1")], &[(1000, 10.0), (2000, 20.0)]),
                    series(&[("server", "s2")], &[(1000, 5.0)]),
                ],
                capacity: CapacitySeries::Series(vec![series(
                    &[("server", "s1"), ("__name__", "total")],
                    &[(1000, 100.0)],
                )]),
            },
            ResourceSeries {
                resource: Resource::InstanceRss,
                values: vec![
                    series(&[("server", "s1"), ("group", "api")], &[(2000, 7.0)]),
                    series(&[("server", "s1"), ("group", "db")], &[(2000, 9.0)]),
                ],
                capacity: CapacitySeries::Fixed(50.0),
            },
        ];
        let a = assemble(&c, &data).unwrap();
        // s2 has no capacity series: left out with a note.
        assert_eq!(a.samples.keys().collect::<Vec<_>>(), vec!["s1"]);
        assert_eq!(a.notes.len(), 1, "{:?}", a.notes);
        assert!(a.notes[0].contains("`s2`"));
        let s1 = &a.samples["s1"];
        assert_eq!(s1.len(), 2);
        assert_eq!((s1[0].taken_at_ms, s1[0].mem_used_bytes), (1000, 10));
        // The capacity's latest point stands for later times.
        assert_eq!((s1[1].mem_used_bytes, s1[1].mem_total_bytes), (20, 100));
        assert_eq!(s1[1].instances["api"].rss_bytes, 7);
        assert_eq!(s1[1].instances["db"].memory_limit_bytes, Some(50));
        assert!(s1[0].instances.is_empty());
    }

    #[test]
    fn a_series_without_the_server_label_or_twice_for_one_server_is_an_error() {
        let c = cfg(None);
        let mk = |values| {
            [ResourceSeries {
                resource: Resource::InstanceRss,
                values,
                capacity: CapacitySeries::Fixed(1e9),
            }]
        };
        let e = assemble(&c, &mk(vec![series(&[("job", "x")], &[(1, 1.0)])])).unwrap_err();
        assert!(e.to_string().contains("no `server` label"), "{e}");
        let e = assemble(
            &c,
            &mk(vec![
                series(&[("server", "s1"), ("g", "a")], &[(1, 1.0)]),
                series(&[("server", "s1"), ("g", "b")], &[(1, 1.0)]),
            ]),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("2 series for server `s1`") && msg.contains("source.instance_label"),
            "{msg}"
        );
        // With one series per server, the instance is named after the server.
        let a = assemble(&c, &mk(vec![series(&[("server", "s1")], &[(1, 1.0)])])).unwrap();
        assert!(a.samples["s1"][0].instances.contains_key("s1"));
    }
}
