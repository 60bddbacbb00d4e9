//! The Docker Engine, as the agent's `docker` backend sees it: an instance is a container.
//!
//! This layer knows nothing of instances, catalogs or workflows; the supervisor's docker
//! backend maps an instance onto a [`ContainerSpec`] and calls the operations here. Everything
//! goes through the Engine's HTTP API on its unix socket (the `bollard` client), never through
//! the `docker` CLI.
//!
//! - this file: [`Docker`], the connection, and [`DockerError`];
//! - [`spec`]: what a container is made from ([`ContainerSpec`]);
//! - [`container`]: idempotent start, wait, stop with grace, inspect, list by labels;
//! - [`cgroup`]: where a container's cgroup is, for readings;
//! - [`image`]: `FROM scratch` images built from a host binary and its shared libraries.
//!
//! The labels [`LABEL_INSTANCE`], [`LABEL_SERVICE`] and [`LABEL_SERVER`] mark the containers
//! an agent owns, so that a restarted agent adopts them and removes the ones it no longer owns;
//! [`LABEL_IMAGE`] marks the images built here, so a clean-up can find them.
//!
//! # Guarantees
//! [`Docker::connect`] never hangs: a missing socket fails at once, an Engine that does not
//! answer fails after the given timeout, and both errors name the socket. Every later request
//! has a deadline for the Engine's first answer (a stop: the grace period on top).

pub mod cgroup;
pub mod container;
pub mod image;
pub mod spec;

pub use cgroup::cgroup_dir;
pub use container::{Container, ContainerState, ContainerSummary, ExitReason};
pub use image::{build_scratch_image, build_scratch_image_with, scratch_image_tag};
pub use spec::{BindMount, ContainerSpec, Network, PublishedPort};

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The instance id a container runs.
pub const LABEL_INSTANCE: &str = "rejuv.instance";
/// The catalog service the container's instance belongs to.
pub const LABEL_SERVICE: &str = "rejuv.service";
/// The server (agent) that owns the container.
pub const LABEL_SERVER: &str = "rejuv.server";
/// The instance's port on the server (what a restarted agent adopts it with).
pub const LABEL_PORT: &str = "rejuv.port";
/// Set to `1` on every image [`build_scratch_image`] makes.
pub const LABEL_IMAGE: &str = "rejuv.image";

/// The Engine's usual socket.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// How long the Engine gets to start answering an ordinary request (create, start, inspect,
/// remove). Creating a container on a slow storage driver (fuse-overlayfs) takes seconds.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a Docker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("no Docker Engine socket at {} (is the Docker Engine running?)", .socket.display())]
    NoSocket { socket: PathBuf },
    #[error("the Docker Engine at unix://{} does not answer", .socket.display())]
    Unreachable {
        socket: PathBuf,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("the Docker Engine at unix://{} does not answer within {timeout:?}", .socket.display())]
    Timeout { socket: PathBuf, timeout: Duration },
    #[error("invalid container spec: {field}: {reason}")]
    InvalidSpec { field: &'static str, reason: String },
    #[error(
        "a container named {name} exists but is not this one (its labels differ); \
         refusing to touch it"
    )]
    NameTaken { name: String },
    #[error("image {image} is not on this host (no registry is used: build or load it first)")]
    ImageMissing { image: String },
    #[error("container {name} {reason} right after it started; its last output:\n{logs}")]
    ExitedAtStart {
        name: String,
        reason: ExitReason,
        logs: String,
    },
    #[error("docker {op} {target} failed")]
    Api {
        op: &'static str,
        target: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("cannot list the shared libraries of {}: {stderr}", .binary.display())]
    Ldd { binary: PathBuf, stderr: String },
    #[error("cannot read {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("building image {tag} failed: {message}")]
    Build { tag: String, message: String },
}

impl DockerError {
    pub(crate) fn api(op: &'static str, target: &str, source: bollard::errors::Error) -> Self {
        DockerError::Api {
            op,
            target: target.to_string(),
            source,
        }
    }
}

/// A connection to one Docker Engine. Cheap to clone (the connection pool is shared).
#[derive(Debug, Clone)]
pub struct Docker {
    client: bollard::Docker,
    socket: PathBuf,
}

impl Docker {
    /// Connects to the Engine on the unix socket `socket` and checks that it answers, within
    /// `timeout`. The API version is negotiated down to the Engine's (20.10 speaks 1.41).
    ///
    /// # Errors
    /// [`DockerError::NoSocket`] when nothing is at `socket`; [`DockerError::Unreachable`] when
    /// the Engine refuses or fails the ping; [`DockerError::Timeout`] when it does not answer
    /// within `timeout`. Each names the socket.
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Docker, DockerError> {
        if !socket.exists() {
            return Err(DockerError::NoSocket {
                socket: socket.to_path_buf(),
            });
        }
        let unreachable = |source| DockerError::Unreachable {
            socket: socket.to_path_buf(),
            source,
        };
        let path = socket.to_str().ok_or_else(|| DockerError::InvalidSpec {
            field: "socket",
            reason: format!("{} is not UTF-8", socket.display()),
        })?;
        // bollard's own timeout is whole seconds; ours (below) is the exact one.
        let secs = timeout.as_secs().max(1) + 1;
        let client = bollard::Docker::connect_with_unix(path, secs, bollard::API_DEFAULT_VERSION)
            .map_err(unreachable)?;
        let handshake = async {
            let client = client.negotiate_version().await?;
            client.ping().await?;
            Ok::<_, bollard::errors::Error>(client)
        };
        let client = match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(unreachable(e)),
            Err(_) => {
                return Err(DockerError::Timeout {
                    socket: socket.to_path_buf(),
                    timeout,
                })
            }
        };
        Ok(Docker {
            client: client.with_timeout(REQUEST_TIMEOUT),
            socket: socket.to_path_buf(),
        })
    }

    /// The socket this connection talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The client, for requests that may take `extra` longer than an ordinary one to start
    /// answering (a stop waits out its grace period; a build runs its steps).
    pub(crate) fn client_with_extra(&self, extra: Duration) -> bollard::Docker {
        self.client.clone().with_timeout(REQUEST_TIMEOUT + extra)
    }

    pub(crate) fn client(&self) -> &bollard::Docker {
        &self.client
    }
}

/// True when `e` is the Engine's answer with HTTP status `code`.
pub(crate) fn is_status(e: &bollard::errors::Error, code: u16) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code, .. } if *status_code == code)
}
