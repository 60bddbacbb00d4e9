//! HTTP client for the agent API (see `rejuv_core::api`).
//!
//! Every call carries the bearer token; every mutating call carries the controller's epoch.
//! Errors say whether a retry can help: [`ClientError::is_permanent`].

use rejuv_core::api::{
    AgentState, ApiError, InstanceStatus, RejuvenateRequest, RejuvenationReport, StartInstance,
};
use rejuv_core::config::Action;
use std::net::SocketAddr;
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
    #[error("agent {addr} sent a reply that is not what the API says: {message}")]
    BadReply { addr: SocketAddr, message: String },
}

impl ClientError {
    /// A 4xx answer will not change by asking again.
    pub fn is_permanent(&self) -> bool {
        matches!(self, ClientError::Status { status, .. } if (400..500).contains(status) && *status != 408 && *status != 429)
    }
}

#[derive(Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    token: String,
}

impl AgentClient {
    pub fn new(token: String) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        Self { http, token }
    }

    async fn send(
        &self,
        addr: SocketAddr,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|source| ClientError::Transport { addr, source })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ApiError>(&body)
            .map(|e| e.error)
            .unwrap_or(body);
        Err(ClientError::Status {
            addr,
            status: status.as_u16(),
            message,
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        addr: SocketAddr,
        resp: reqwest::Response,
    ) -> Result<T, ClientError> {
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| ClientError::Transport { addr, source })?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::BadReply {
            addr,
            message: e.to_string(),
        })
    }

    pub async fn state(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<AgentState, ClientError> {
        let r = self
            .send(
                addr,
                self.http
                    .get(format!("http://{addr}/v1/state"))
                    .timeout(timeout),
            )
            .await?;
        Self::json(addr, r).await
    }

    /// The samples the agent kept, oldest first, taken after `after_ms`.
    pub async fn samples(
        &self,
        addr: SocketAddr,
        after_ms: u64,
        timeout: Duration,
    ) -> Result<Vec<rejuv_core::types::Sample>, ClientError> {
        let r = self
            .send(
                addr,
                self.http
                    .get(format!("http://{addr}/v1/samples?after_ms={after_ms}"))
                    .timeout(timeout),
            )
            .await?;
        Self::json(addr, r).await
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
        Self::json(addr, r).await
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
        Self::json(addr, r).await
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
        Ok(r.bytes()
            .await
            .map_err(|source| ClientError::Transport { addr, source })?
            .to_vec())
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
    ) -> Result<RejuvenationReport, ClientError> {
        let body = RejuvenateRequest {
            epoch,
            run_id: run_id.to_string(),
            actions: actions.to_vec(),
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
        Self::json(addr, r).await
    }
}
