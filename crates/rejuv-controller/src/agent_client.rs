//! HTTP client for the agent API (see `rejuv_core::api`).
//!
//! Every call carries the bearer token; every mutating call carries the controller's epoch.
//! Errors say whether a retry can help: [`ClientError::is_permanent`].
//!
//! Replies are not trusted: each is read up to a limit ([`MAX_REPLY`], [`MAX_SAMPLES_REPLY`],
//! [`MAX_EXPORTED_STATE`]) and refused beyond it, without being read whole; text in a reply
//! (error bodies, exit statuses, action details, the agent's version) is clipped and escaped
//! before anything stores or prints it ([`rejuv_core::text`]).

use rejuv_core::api::{
    ApiError, InstanceStatus, RejuvenateRequest, RejuvenationReport, StartInstance,
};
use rejuv_core::config::Action;
use rejuv_core::reply::{sanitize_instance, sanitize_report};
use rejuv_core::text::{clean, clean_bytes, MAX_REMOTE_TEXT};
use rejuv_net::tls::{PeerCheck, Role, Tls};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("agent {addr} unreachable")]
    Transport {
        addr: SocketAddr,
        #[source]
        source: reqwest::Error,
    },
    #[error("agent {addr} answered {status}: {message}")]
    Status {
        addr: SocketAddr,
        status: u16,
        message: String,
    },
    /// The polling connection's failures ([`crate::agent_conn`]): connecting, TLS, a timeout,
    /// a connection that ended within the answer.
    #[error("agent {addr} unreachable: {message}")]
    Unreachable { addr: SocketAddr, message: String },
    #[error("agent {addr} sent a reply that is not what the API says: {message}")]
    BadReply { addr: SocketAddr, message: String },
    #[error("agent {addr}: no server of the config has this address, so no certificate can be checked for it")]
    UnknownAgent { addr: SocketAddr },
}

impl ClientError {
    /// A 4xx answer will not change by asking again.
    pub fn is_permanent(&self) -> bool {
        matches!(self, ClientError::Status { status, .. } if (400..500).contains(status) && *status != 408 && *status != 429)
    }
}

/// Largest reply read from an agent, but for the two below (bytes). A state reply of a server
/// with a hundred instances is about 50 KB.
pub const MAX_REPLY: usize = 4 << 20;
/// Largest `GET /v1/samples` reply: an agent keeps at most a trend window of samples (six
/// hours of one a second is about 20 MB).
pub const MAX_SAMPLES_REPLY: usize = 32 << 20;
/// Largest exported instance state (`handoff.export`) carried to the target.
pub const MAX_EXPORTED_STATE: usize = 256 << 20;

#[derive(Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    token: String,
    tls: Option<Arc<AgentTls>>,
}

/// HTTPS to the agents: each address has its own client, which accepts only the certificate
/// of the server the config gives that address.
struct AgentTls {
    tls: Arc<Tls>,
    names: RwLock<HashMap<SocketAddr, String>>,
    /// The clients, made for one load of the TLS files (its generation): a new load (a
    /// renewed certificate, a revocation) drops them and their connections.
    clients: Mutex<(u64, HashMap<SocketAddr, reqwest::Client>)>,
    /// When a failed handshake with each address was last logged.
    warned: Mutex<HashMap<SocketAddr, std::time::Instant>>,
}

/// The time allowed for connecting to an agent (this client's and the polls' own, agent_conn).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// At most one log line about an agent's refused certificate this often.
const TLS_WARN_EVERY: Duration = Duration::from_secs(60);

impl AgentTls {
    /// What the agent at `addr` must show: an agent's certificate naming the server the config
    /// places there.
    fn check_for(&self, addr: SocketAddr) -> Result<PeerCheck, ClientError> {
        let name = self
            .names
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            .cloned()
            .ok_or(ClientError::UnknownAgent { addr })?;
        Ok(PeerCheck {
            role: Some(Role::Agent),
            name: Some(name),
        })
    }

    /// Logs (at most once a [`TLS_WARN_EVERY`] per agent) a handshake that failed on the
    /// certificate: an agent of another fleet, of another server, or revoked.
    fn warn_refused(&self, addr: SocketAddr, chain: &str) {
        if !chain.contains("certificate") {
            return;
        }
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if warned
            .get(&addr)
            .is_some_and(|at| now.duration_since(*at) < TLS_WARN_EVERY)
        {
            return;
        }
        warned.insert(addr, now);
        tracing::warn!(agent = %addr, error = %chain, "refusing the agent's TLS certificate");
    }
}

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(30))
}

impl AgentClient {
    pub fn new(token: String) -> Self {
        let http = builder().build().expect("http client");
        Self {
            http,
            token,
            tls: None,
        }
    }

    /// Talks HTTPS with `tls`: an agent must show a certificate of the fleet naming the server
    /// that `config` places at its address.
    pub fn with_tls(mut self, tls: Arc<Tls>, config: &rejuv_core::config::Config) -> Self {
        let t = AgentTls {
            tls,
            names: RwLock::new(HashMap::new()),
            clients: Mutex::new((0, HashMap::new())),
            warned: Mutex::new(HashMap::new()),
        };
        self.tls = Some(Arc::new(t));
        self.name_agents(config);
        self
    }

    /// Learns the server ids of the agents' addresses in `config` (a reload adds to them:
    /// servers gone from the config are kept until the cluster forgets them).
    pub fn name_agents(&self, config: &rejuv_core::config::Config) {
        if let Some(t) = &self.tls {
            let mut names = t.names.write().unwrap_or_else(|p| p.into_inner());
            for s in &config.servers {
                names.insert(s.agent, s.id.clone());
            }
        }
    }

    /// Learns that the agent at `addr` is server `id` (its certificate must name `id`).
    pub fn name_agent(&self, addr: SocketAddr, id: &str) {
        if let Some(t) = &self.tls {
            let mut names = t.names.write().unwrap_or_else(|p| p.into_inner());
            names.insert(addr, id.to_string());
        }
    }

    /// The bearer token every request carries.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// The load of the TLS files in force (0 without TLS): a connection checked with an older
    /// one is closed.
    pub(crate) fn tls_generation(&self) -> u64 {
        self.tls.as_ref().map_or(0, |t| t.tls.generation())
    }

    /// Logs a refused agent certificate (see [`AgentTls::warn_refused`]).
    pub(crate) fn warn_refused(&self, addr: SocketAddr, chain: &str) {
        if let Some(t) = &self.tls {
            t.warn_refused(addr, chain);
        }
    }

    /// A TLS connector that accepts only the certificate of the server at `addr`, or `None`
    /// when the agents speak plain HTTP.
    pub(crate) fn tls_connector(
        &self,
        addr: SocketAddr,
    ) -> Result<Option<tokio_rustls::TlsConnector>, ClientError> {
        let Some(t) = &self.tls else { return Ok(None) };
        Ok(Some(tokio_rustls::TlsConnector::from(Arc::new(
            t.tls.client_config(t.check_for(addr)?),
        ))))
    }

    /// The client that reaches `addr`: plain, or HTTPS checking the server it must be.
    fn client_for(&self, addr: SocketAddr) -> Result<Option<reqwest::Client>, ClientError> {
        let Some(t) = &self.tls else { return Ok(None) };
        let generation = t.tls.generation();
        let mut clients = t.clients.lock().unwrap_or_else(|p| p.into_inner());
        if clients.0 != generation {
            *clients = (generation, HashMap::new());
        }
        if let Some(c) = clients.1.get(&addr) {
            return Ok(Some(c.clone()));
        }
        let client = t
            .tls
            .reqwest_builder(t.check_for(addr)?)
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|source| ClientError::Transport { addr, source })?;
        clients.1.insert(addr, client.clone());
        Ok(Some(client))
    }

    async fn send(
        &self,
        addr: SocketAddr,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let req = req.bearer_auth(&self.token);
        let sent = match self.client_for(addr)? {
            None => req.send().await,
            Some(client) => {
                let (_, request) = req.build_split();
                match request {
                    Ok(mut request) => {
                        // The paths are written as http://; the same request goes by TLS.
                        let _ = request.url_mut().set_scheme("https");
                        client.execute(request).await
                    }
                    Err(e) => Err(e),
                }
            }
        };
        let resp = sent.map_err(|source| {
            if let Some(t) = &self.tls {
                t.warn_refused(addr, &rejuv_core::error_chain(&source));
            }
            ClientError::Transport { addr, source }
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = read_bounded(addr, resp, MAX_REPLY)
            .await
            .unwrap_or_default();
        let message = match serde_json::from_slice::<ApiError>(&body) {
            Ok(e) => clean(&e.error, MAX_REMOTE_TEXT),
            Err(_) => clean_bytes(&body, MAX_REMOTE_TEXT),
        };
        Err(ClientError::Status {
            addr,
            status: status.as_u16(),
            message,
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        addr: SocketAddr,
        resp: reqwest::Response,
        limit: usize,
    ) -> Result<T, ClientError> {
        let bytes = read_bounded(addr, resp, limit).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::BadReply {
            addr,
            message: clean(&e.to_string(), MAX_REMOTE_TEXT),
        })
    }

    /// A piece of instance `id`'s output: from `offset`, or its last `tail` bytes.
    pub async fn logs(
        &self,
        addr: SocketAddr,
        id: &str,
        offset: Option<u64>,
        tail: u64,
        timeout: Duration,
    ) -> Result<rejuv_core::api::LogChunk, ClientError> {
        let mut url =
            reqwest::Url::parse(&format!("http://{addr}/")).map_err(|e| ClientError::BadReply {
                addr,
                message: e.to_string(),
            })?;
        if let Ok(mut p) = url.path_segments_mut() {
            p.pop_if_empty().extend(["v1", "instances", id, "logs"]);
        }
        match offset {
            Some(o) => url.set_query(Some(&format!("offset={o}"))),
            None => url.set_query(Some(&format!("tail={tail}"))),
        }
        let r = self.send(addr, self.http.get(url).timeout(timeout)).await?;
        Self::json(addr, r, MAX_REPLY).await
    }

    pub async fn start(
        &self,
        addr: SocketAddr,
        epoch: u64,
        instance: &str,
        service: &str,
    ) -> Result<InstanceStatus, ClientError> {
        let body = StartInstance {
            epoch,
            service: service.to_string(),
        };
        let r = self
            .send(
                addr,
                self.http
                    .put(format!("http://{addr}/v1/instances/{instance}"))
                    .timeout(Duration::from_secs(15))
                    .json(&body),
            )
            .await?;
        let mut status: InstanceStatus = Self::json(addr, r, MAX_REPLY).await?;
        sanitize_instance(&mut status);
        Ok(status)
    }

    pub async fn stop(
        &self,
        addr: SocketAddr,
        epoch: u64,
        instance: &str,
    ) -> Result<InstanceStatus, ClientError> {
        let r = self
            .send(
                addr,
                self.http
                    .delete(format!(
                        "http://{addr}/v1/instances/{instance}?epoch={epoch}"
                    ))
                    .timeout(Duration::from_secs(60)),
            )
            .await?;
        let mut status: InstanceStatus = Self::json(addr, r, MAX_REPLY).await?;
        sanitize_instance(&mut status);
        Ok(status)
    }

    pub async fn export_state(
        &self,
        addr: SocketAddr,
        instance: &str,
    ) -> Result<Vec<u8>, ClientError> {
        let r = self
            .send(
                addr,
                self.http
                    .get(format!("http://{addr}/v1/instances/{instance}/state"))
                    .timeout(Duration::from_secs(10)),
            )
            .await?;
        read_bounded(addr, r, MAX_EXPORTED_STATE).await
    }

    pub async fn import_state(
        &self,
        addr: SocketAddr,
        epoch: u64,
        instance: &str,
        body: Vec<u8>,
    ) -> Result<(), ClientError> {
        self.send(
            addr,
            self.http
                .put(format!(
                    "http://{addr}/v1/instances/{instance}/state?epoch={epoch}"
                ))
                .timeout(Duration::from_secs(10))
                .body(body),
        )
        .await?;
        Ok(())
    }

    pub async fn rejuvenate(
        &self,
        addr: SocketAddr,
        epoch: u64,
        run_id: &str,
        actions: &[Action],
        keep: &[rejuv_core::types::InstanceId],
    ) -> Result<RejuvenationReport, ClientError> {
        let body = RejuvenateRequest {
            epoch,
            run_id: run_id.to_string(),
            actions: actions.to_vec(),
            keep_instances: keep.to_vec(),
        };
        let r = self
            .send(
                addr,
                self.http
                    .post(format!("http://{addr}/v1/rejuvenate"))
                    .timeout(Duration::from_secs(120))
                    .json(&body),
            )
            .await?;
        let mut report: RejuvenationReport = Self::json(addr, r, MAX_REPLY).await?;
        sanitize_report(&mut report);
        Ok(report)
    }
}

/// The body of `resp`, refused as soon as it passes `limit` bytes (a `Content-Length` above
/// it is refused before anything is read).
async fn read_bounded(
    addr: SocketAddr,
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, ClientError> {
    let too_big = || ClientError::BadReply {
        addr,
        message: format!("reply larger than {limit} bytes, not read"),
    };
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|source| ClientError::Transport { addr, source })?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
