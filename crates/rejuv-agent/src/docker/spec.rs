//! What a container is made from: the docker backend turns a catalog service and an instance
//! (its id, its port) into a [`ContainerSpec`], and [`super::container`] creates it.
//!
//! The spec is plain data, checked by [`ContainerSpec::validate`] and turned into the Engine's
//! create request by [`ContainerSpec::to_create_body`]; nothing here talks to the Engine.

use super::DockerError;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Where a container's network stack is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// The host's own stack: the service listens on the host's ports directly.
    Host,
    /// A Docker network by name (`bridge` is the Engine's default one).
    Named(String),
}

impl Default for Network {
    fn default() -> Self {
        Network::Named("bridge".to_string())
    }
}

/// A container port published on the host: `host_ip:host_port -> container_port/tcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedPort {
    pub host_ip: IpAddr,
    pub host_port: u16,
    pub container_port: u16,
}

/// A host path bound into the container: `src:dst[:ro]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub src: PathBuf,
    pub dst: PathBuf,
    pub read_only: bool,
}

impl FromStr for BindMount {
    type Err = String;

    /// Parses the catalog's `src:dst[:ro]` (also `:rw`); both paths absolute.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        let (src, dst, read_only) = match parts.as_slice() {
            [src, dst] => (*src, *dst, false),
            [src, dst, "ro"] => (*src, *dst, true),
            [src, dst, "rw"] => (*src, *dst, false),
            [_, _, mode] => return Err(format!("'{s}': mode '{mode}' is neither ro nor rw")),
            _ => return Err(format!("'{s}' is not src:dst[:ro]")),
        };
        for p in [src, dst] {
            if !p.starts_with('/') {
                return Err(format!("'{s}': '{p}' is not an absolute path"));
            }
        }
        Ok(BindMount {
            src: src.into(),
            dst: dst.into(),
            read_only,
        })
    }
}

impl BindMount {
    /// The Engine's `Binds` form.
    fn to_bind(&self) -> String {
        let mode = if self.read_only { ":ro" } else { "" };
        format!("{}:{}{mode}", self.src.display(), self.dst.display())
    }
}

/// Everything a container is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// The container's name; [`super::Docker::create_and_start`] is idempotent by it.
    pub name: String,
    /// A local image (no registry is used).
    pub image: String,
    /// Replaces the image's entrypoint when set.
    pub entrypoint: Option<Vec<String>>,
    /// Arguments (the Engine's `Cmd`); empty keeps the image's.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The agent sets [`super::LABEL_INSTANCE`], [`super::LABEL_SERVICE`] and
    /// [`super::LABEL_SERVER`].
    pub labels: BTreeMap<String, String>,
    pub workdir: Option<String>,
    /// `uid[:gid]` or a name the image knows.
    pub user: Option<String>,
    pub network: Network,
    /// Not allowed with [`Network::Host`] (nothing to publish).
    pub port: Option<PublishedPort>,
    pub mounts: Vec<BindMount>,
    /// Memory limit in bytes (swap included: the container cannot swap past it).
    pub memory_limit: Option<u64>,
    /// Run Docker's init (`docker-init`) as PID 1: it reaps zombies and passes SIGTERM on.
    /// Without it the service is PID 1, and a PID 1 without a SIGTERM handler ignores SIGTERM
    /// (it is then killed when the grace period ends).
    pub init: bool,
    /// How long the Engine waits after SIGTERM before SIGKILL, also for an operator's
    /// `docker stop`. Whole seconds; a fraction is rounded up.
    pub stop_timeout: Duration,
}

impl ContainerSpec {
    /// A spec with the Engine's defaults for everything but the name and the image.
    pub fn new(name: impl Into<String>, image: impl Into<String>) -> Self {
        ContainerSpec {
            name: name.into(),
            image: image.into(),
            entrypoint: None,
            args: Vec::new(),
            env: Vec::new(),
            labels: BTreeMap::new(),
            workdir: None,
            user: None,
            network: Network::default(),
            port: None,
            mounts: Vec::new(),
            memory_limit: None,
            init: false,
            stop_timeout: Duration::from_secs(10),
        }
    }

    /// # Errors
    /// [`DockerError::InvalidSpec`] naming the first field that the Engine would refuse or
    /// misread.
    pub fn validate(&self) -> Result<(), DockerError> {
        let invalid = |field, reason: &str| {
            Err(DockerError::InvalidSpec {
                field,
                reason: reason.to_string(),
            })
        };
        let name_ok = self
            .name
            .chars()
            .enumerate()
            .all(|(i, c)| c.is_ascii_alphanumeric() || (i > 0 && matches!(c, '_' | '.' | '-')));
        if self.name.is_empty() || !name_ok {
            return invalid("name", "must be [a-zA-Z0-9][a-zA-Z0-9_.-]*");
        }
        if self.image.trim().is_empty() {
            return invalid("image", "is empty");
        }
        if let Some(k) = self
            .env
            .iter()
            .map(|(k, _)| k)
            .find(|k| k.is_empty() || k.contains('='))
        {
            return invalid("env", &format!("'{k}' is not a variable name"));
        }
        if let Network::Named(n) = &self.network {
            if n.is_empty() || n == "host" || n == "none" {
                return invalid("network", "a named network must not be empty, host or none");
            }
        }
        if self.port.is_some() && self.network == Network::Host {
            return invalid("port", "nothing to publish on the host network");
        }
        if let Some(p) = self.port {
            if p.container_port == 0 {
                return invalid("port", "the container port is 0");
            }
        }
        if self.memory_limit.is_some_and(|m| m < 6 * 1024 * 1024) {
            return invalid("memory_limit", "below the Engine's minimum of 6 MiB");
        }
        Ok(())
    }

    /// The Engine's create request for this spec.
    pub fn to_create_body(&self) -> ContainerCreateBody {
        let mut host = HostConfig {
            binds: (!self.mounts.is_empty())
                .then(|| self.mounts.iter().map(BindMount::to_bind).collect()),
            network_mode: Some(match &self.network {
                Network::Host => "host".to_string(),
                Network::Named(n) => n.clone(),
            }),
            init: self.init.then_some(true),
            ..Default::default()
        };
        if let Some(m) = self.memory_limit {
            let m = i64::try_from(m).unwrap_or(i64::MAX);
            host.memory = Some(m);
            host.memory_swap = Some(m);
        }
        let mut exposed = None;
        if let Some(p) = self.port {
            let key = format!("{}/tcp", p.container_port);
            let binding = PortBinding {
                host_ip: Some(p.host_ip.to_string()),
                host_port: Some(p.host_port.to_string()),
            };
            host.port_bindings = Some(HashMap::from([(key.clone(), Some(vec![binding]))]));
            exposed = Some(vec![key]);
        }
        ContainerCreateBody {
            image: Some(self.image.clone()),
            entrypoint: self.entrypoint.clone(),
            cmd: (!self.args.is_empty()).then(|| self.args.clone()),
            env: (!self.env.is_empty())
                .then(|| self.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(self.labels.clone().into_iter().collect()),
            working_dir: self.workdir.clone(),
            user: self.user.clone(),
            exposed_ports: exposed,
            stop_timeout: Some(whole_seconds(self.stop_timeout)),
            host_config: Some(host),
            ..Default::default()
        }
    }
}

/// `d` in whole seconds, rounded up: a grace period is never shortened.
pub(crate) fn whole_seconds(d: Duration) -> i64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i64::try_from(s).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_mounts_parse() {
        let m: BindMount = "/srv/data:/data:ro".parse().unwrap();
        assert_eq!(m.src, PathBuf::from("/srv/data"));
        assert!(m.read_only);
        assert_eq!(m.to_bind(), "/srv/data:/data:ro");
        let m: BindMount = "/a:/b".parse().unwrap();
        assert!(!m.read_only);
        assert!("a:/b".parse::<BindMount>().is_err());
        assert!("/a:/b:xx".parse::<BindMount>().is_err());
        assert!("/a".parse::<BindMount>().is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let mut s = ContainerSpec::new("rejuv-x", "img:1");
        s.validate().unwrap();
        s.network = Network::Host;
        s.port = Some(PublishedPort {
            host_ip: "127.0.0.1".parse().unwrap(),
            host_port: 8080,
            container_port: 80,
        });
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("port"), "{e}");
        let s = ContainerSpec::new("-bad", "img");
        assert!(s.validate().unwrap_err().to_string().contains("name"));
    }

    #[test]
    fn create_body_carries_the_spec() {
        let mut s = ContainerSpec::new("c", "img:1");
        s.port = Some(PublishedPort {
            host_ip: "127.0.0.1".parse().unwrap(),
            host_port: 18080,
            container_port: 8080,
        });
        s.memory_limit = Some(64 << 20);
        s.stop_timeout = Duration::from_millis(1500);
        s.env = vec![("A".into(), "b=c".into())];
        let b = s.to_create_body();
        assert_eq!(b.stop_timeout, Some(2));
        assert_eq!(b.env, Some(vec!["A=b=c".to_string()]));
        assert_eq!(b.exposed_ports, Some(vec!["8080/tcp".to_string()]));
        let h = b.host_config.unwrap();
        assert_eq!(h.memory, Some(64 << 20));
        let pb = h.port_bindings.unwrap();
        let bound = pb["8080/tcp"].as_ref().unwrap();
        assert_eq!(bound[0].host_port.as_deref(), Some("18080"));
        assert_eq!(h.network_mode.as_deref(), Some("bridge"));
    }
}
