//! Joining a cluster instead of being listed in its `[[servers]]`: the agent announces its
//! server's facts to the controller (`POST /v1/join`, with the join token) until it is in.
//!
//! A request that waits for an operator is announced again every [`ASK_AGAIN`]: the controller
//! keeps waiting requests in memory, so one that restarted hears it again. A controller that
//! does not answer is asked again with a growing backoff (1 s to 30 s); one that refuses (a
//! wrong token, wrong facts) every [`AFTER_REFUSAL`], with the reason in the log each time,
//! since only an operator can fix either side.

use rejuv_core::config::{Config, JoinRequest};
use rejuv_core::wire::{ApiError, JoinAnswer, JoinState};
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a waiting request is announced again.
pub const ASK_AGAIN: Duration = Duration::from_secs(10);

/// How long after a refusal the agent asks again.
pub const AFTER_REFUSAL: Duration = Duration::from_secs(60);

/// Longest wait between attempts at a controller that does not answer.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Where and how to ask.
pub struct JoinOptions {
    /// The controller's API, e.g. `https://10.0.0.10:7070`.
    pub controller: reqwest::Url,
    /// The join token (`join.token_file` of the controller).
    pub token: String,
    /// The fleet's CA, for an `https://` controller.
    pub ca: Option<PathBuf>,
    pub request: JoinRequest,
}

/// Why joining cannot even start.
#[derive(Debug, thiserror::Error)]
pub enum JoinSetupError {
    #[error("--join {0}: must be an http:// or https:// URL")]
    Scheme(String),
    #[error("--join {0}: an https:// controller needs the fleet's CA ([tls] ca of the config)")]
    NoCa(String),
    #[error("[tls] ca")]
    Ca(#[source] rejuv_net::tls::TlsError),
    #[error("the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("[tls]: the agent's certificate names {found}, but it joins as server '{id}': issue it a certificate for '{id}' (`rejuv tls issue --role agent --name {id}`)")]
    Certificate { id: String, found: String },
    #[error("[tls]: {0}")]
    Tls(#[source] rejuv_net::tls::TlsError),
}

/// With TLS on, the agent's certificate must name the server id it claims: the controller
/// reaches a joined agent only under that name, as it does a listed one.
pub fn check_certificate(config: &Config, id: &str) -> Result<(), JoinSetupError> {
    let Some(files) = config.tls_files(id) else {
        return Ok(());
    };
    let tls = rejuv_net::tls::Tls::load(files).map_err(JoinSetupError::Tls)?;
    let own = tls.own();
    if own.role != rejuv_net::tls::Role::Agent || own.name != id {
        return Err(JoinSetupError::Certificate {
            id: id.to_string(),
            found: own.to_string(),
        });
    }
    Ok(())
}

/// A join request ready to be sent: its URL and client checked.
pub struct Joiner {
    client: reqwest::Client,
    url: reqwest::Url,
    opts: JoinOptions,
}

impl Joiner {
    /// # Errors
    /// A URL that is not http(s), an https URL without a CA, an unreadable CA.
    pub fn new(opts: JoinOptions) -> Result<Self, JoinSetupError> {
        let client = client(&opts)?;
        let url = opts
            .controller
            .join("v1/join")
            .map_err(|_| JoinSetupError::Scheme(opts.controller.to_string()))?;
        Ok(Self { client, url, opts })
    }

    /// Asks until the controller says the server is in (then returns `true`), or until
    /// `shutdown` (`false`).
    pub async fn run(self, shutdown: CancellationToken) -> bool {
        let id = &self.opts.request.id;
        let mut backoff = Duration::from_secs(1);
        let mut said_pending = false;
        loop {
            let wait = match ask(&self.client, &self.url, &self.opts).await {
                Ok(answer) if answer.state == JoinState::Joined => {
                    tracing::info!(server = %id, controller = %self.opts.controller, "joined the cluster: {}", answer.message);
                    return true;
                }
                Ok(answer) => {
                    if !said_pending {
                        tracing::info!(server = %id, "join request waiting: {}", answer.message);
                        said_pending = true;
                    }
                    backoff = Duration::from_secs(1);
                    ASK_AGAIN
                }
                Err(Failure::Refused(why)) => {
                    tracing::error!(server = %id, "the controller refuses to let this server join: {why}; asking again in {}s", AFTER_REFUSAL.as_secs());
                    AFTER_REFUSAL
                }
                Err(Failure::Unreachable(why)) => {
                    tracing::warn!(server = %id, "cannot ask the controller to join: {why}; again in {}s", backoff.as_secs());
                    let w = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    w
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

enum Failure {
    /// A 4xx: the token or the facts are wrong.
    Refused(String),
    /// No answer, or a 5xx.
    Unreachable(String),
}

async fn ask(
    client: &reqwest::Client,
    url: &reqwest::Url,
    opts: &JoinOptions,
) -> Result<JoinAnswer, Failure> {
    let resp = client
        .post(url.clone())
        .bearer_auth(&opts.token)
        .json(&opts.request)
        .send()
        .await
        .map_err(|e| Failure::Unreachable(rejuv_core::error_chain(&e.without_url())))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| Failure::Unreachable(rejuv_core::error_chain(&e)))?;
    if status.is_success() {
        return serde_json::from_str(&text)
            .map_err(|e| Failure::Unreachable(format!("an answer this agent does not read: {e}")));
    }
    let msg = serde_json::from_str::<ApiError>(&text).map_or(text, |e| e.error);
    let msg = rejuv_core::text::clean(&msg, 1000);
    if status.is_client_error() {
        Err(Failure::Refused(format!("{status}: {msg}")))
    } else {
        Err(Failure::Unreachable(format!("{status}: {msg}")))
    }
}

fn client(opts: &JoinOptions) -> Result<reqwest::Client, JoinSetupError> {
    let url = opts.controller.to_string();
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5));
    match opts.controller.scheme() {
        "http" => {}
        "https" => {
            let ca = opts.ca.as_deref().ok_or(JoinSetupError::NoCa(url))?;
            let tls = rejuv_net::tls::api_client_config(ca).map_err(JoinSetupError::Ca)?;
            builder = builder.use_preconfigured_tls(tls);
        }
        _ => return Err(JoinSetupError::Scheme(url)),
    }
    builder.build().map_err(JoinSetupError::Client)
}
