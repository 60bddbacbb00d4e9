//! The connection to a running controller: where it is, the token, who asks, how answers
//! print; a client that reads the answers as the [`rejuv_core::wire`] types; the exit codes a
//! failed request maps to (documented in `docs/cli.md`): 1 runtime failure (controller
//! unreachable, 5xx), 2 bad usage (unreadable token file, a request the controller calls
//! malformed), 3 refused (does not fit the current state, or no such server), 4 unauthorized
//! (no token, or a wrong one).

use clap::{Args, ValueEnum};
use rejuv_core::error_chain;
use rejuv_core::wire::ApiError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

pub const EXIT_RUNTIME: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_REFUSED: i32 = 3;
pub const EXIT_UNAUTHORIZED: i32 = 4;

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum Output {
    /// Aligned tables for people.
    Table,
    /// JSON alone on stdout, for scripts.
    Json,
}

/// How to reach the controller, who is asking, and how to print the answer.
#[derive(Args, Clone, Debug)]
pub struct Conn {
    /// Controller API URL (default: from --config, else http://127.0.0.1:7070).
    #[arg(long, env = "REJUV_CONTROLLER", value_name = "URL")]
    pub controller: Option<String>,
    /// File holding the API token (default: from --config, else the token itself in
    /// REJUV_TOKEN).
    #[arg(long, env = "REJUV_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// The cluster's config: the controller's address (`controller.listen`) and the API
    /// token file (`auth.api_token_file`) come from it unless given.
    #[arg(long, env = "REJUV_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// CA certificate to verify an https:// controller with (default: from --config, else
    /// the system's roots are not used: an https:// controller needs it).
    #[arg(long, env = "REJUV_CACERT", value_name = "PATH")]
    pub cacert: Option<PathBuf>,
    /// Your name in the controller's events for the actions you take (default: $USER).
    #[arg(long, env = "REJUV_ACTOR", value_name = "NAME")]
    pub actor: Option<String>,
    /// `table` for people, `json` for scripts (JSON alone on stdout, messages on stderr).
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Give up on a request after this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
}

/// Where a controller is looked for when neither `--controller` nor `--config` says.
pub const DEFAULT_CONTROLLER: &str = "http://127.0.0.1:7070";

impl Conn {
    /// The connection with what `--config` supplies filled in where the command line and the
    /// environment left it open. A controller listening on every address is reached on
    /// loopback.
    pub fn resolved(&self) -> Result<Conn, Fail> {
        let mut c = self.clone();
        let Some(path) = &self.config else {
            return Ok(c);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| Fail::new(EXIT_USAGE, format!("--config {}: {e}", path.display())))?;
        let cfg = rejuv_core::config::Config::from_toml(&text)
            .map_err(|e| Fail::new(EXIT_USAGE, format!("--config {}: {e}", path.display())))?;
        if c.controller.is_none() {
            let mut at = cfg.controller.listen;
            if at.ip().is_unspecified() {
                at.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            let scheme = if cfg.api_tls() { "https" } else { "http" };
            c.controller = Some(format!("{scheme}://{at}"));
        }
        if c.cacert.is_none() && cfg.api_tls() {
            c.cacert = cfg.tls.as_ref().and_then(|t| t.ca.clone());
        }
        if c.token_file.is_none() {
            // Taken as written: a relative path is read from the working directory, as the
            // controller started from the same place reads it.
            c.token_file = cfg.auth.api_token_file.clone();
        }
        Ok(c)
    }
}

/// A request that did not succeed, with the exit code it maps to.
#[derive(Debug)]
pub struct Fail {
    pub code: i32,
    pub msg: String,
}

impl Fail {
    pub fn new(code: i32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
        }
    }
}

/// Prints the failure on stderr and gives its exit code.
pub fn report(f: Fail) -> i32 {
    eprintln!("rejuv: {}", rejuv_core::text::terminal_safe(&f.msg));
    f.code
}

/// The name sent in `x-rejuv-actor`: printable, short, never empty (the controller keeps at
/// most 64 characters and adds which token was used).
fn actor_name(explicit: Option<&str>) -> String {
    let raw = explicit
        .map(str::to_string)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_default();
    let clean: String = raw
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.@+".contains(*c))
        .take(48)
        .collect();
    if clean.is_empty() {
        "operator".into()
    } else {
        clean
    }
}

pub struct Client {
    http: reqwest::Client,
    base: reqwest::Url,
    token: String,
    /// The name sent in `x-rejuv-actor`.
    pub actor: String,
}

impl Client {
    pub fn new(conn: &Conn) -> Result<Self, Fail> {
        let conn = &conn.resolved()?;
        let controller = conn.controller.as_deref().unwrap_or(DEFAULT_CONTROLLER);
        let token = match &conn.token_file {
            Some(f) => crate::config_file::read_token(f)
                .map_err(|e| Fail::new(EXIT_USAGE, format!("{e:#}")))?,
            None => match std::env::var("REJUV_TOKEN") {
                Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
                _ => {
                    return Err(Fail::new(
                        EXIT_UNAUTHORIZED,
                        "no API token: pass --token-file PATH or set REJUV_TOKEN",
                    ))
                }
            },
        };
        let mut base = reqwest::Url::parse(controller).map_err(|e| {
            Fail::new(
                EXIT_USAGE,
                format!("--controller {controller:?} is not a URL: {e}"),
            )
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(Fail::new(
                EXIT_USAGE,
                format!("--controller {controller:?} must be an http:// or https:// URL"),
            ));
        }
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let mut builder = reqwest::Client::builder();
        if base.scheme() == "https" {
            let ca = conn.cacert.as_deref().ok_or_else(|| {
                Fail::new(
                    EXIT_USAGE,
                    "an https:// controller needs the fleet's CA: pass --cacert PATH (or --config)",
                )
            })?;
            let tls = rejuv_net::tls::api_client_config(ca)
                .map_err(|e| Fail::new(EXIT_USAGE, format!("--cacert: {e}")))?;
            builder = builder.use_preconfigured_tls(tls);
        }
        let http = builder
            .timeout(conn.timeout)
            .connect_timeout(conn.timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| Fail::new(EXIT_RUNTIME, error_chain(&e)))?;
        Ok(Self {
            http,
            base,
            token,
            actor: actor_name(conn.actor.as_deref()),
        })
    }

    /// `segments` are joined as path segments (so a server id is escaped), `query` appended.
    pub fn url(&self, segments: &[&str], query: &str) -> reqwest::Url {
        let mut u = self.base.clone();
        if let Ok(mut p) = u.path_segments_mut() {
            p.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            u.set_query(Some(query));
        }
        u
    }

    /// Sends one request; a success's body is read as `T`, a failure mapped to its exit code
    /// (the message is the controller's [`ApiError`], or its answer as text).
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        url: reqwest::Url,
        body: Option<&impl Serialize>,
    ) -> Result<T, Fail> {
        let mut req = self
            .http
            .request(method, url.clone())
            .bearer_auth(&self.token)
            .header("x-rejuv-actor", &self.actor);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            Fail::new(
                EXIT_RUNTIME,
                format!(
                    "cannot reach the controller at {url}: {}",
                    error_chain(&e.without_url())
                ),
            )
        })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| {
            Fail::new(
                EXIT_RUNTIME,
                format!("reading the controller's answer: {}", error_chain(&e)),
            )
        })?;
        if status.is_success() {
            return serde_json::from_str(&text).map_err(|e| {
                Fail::new(
                    EXIT_RUNTIME,
                    format!("the controller's answer to {url} is not what this rejuv reads: {e}"),
                )
            });
        }
        let msg = match serde_json::from_str::<ApiError>(&text) {
            Ok(e) => e.error,
            Err(_) => text,
        };
        Err(match status.as_u16() {
            401 | 403 => Fail::new(
                EXIT_UNAUTHORIZED,
                format!("unauthorized: {msg} (check --token-file or REJUV_TOKEN)"),
            ),
            404 | 409 => Fail::new(EXIT_REFUSED, format!("refused: {msg}")),
            400 | 422 => Fail::new(EXIT_USAGE, format!("bad request: {msg}")),
            _ => Fail::new(EXIT_RUNTIME, format!("controller answered {status}: {msg}")),
        })
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &str,
    ) -> Result<T, Fail> {
        self.call(reqwest::Method::GET, self.url(segments, query), None::<&()>)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_actor_name_is_short_and_printable() {
        assert_eq!(actor_name(Some("alice")), "alice");
        assert_eq!(actor_name(Some("bob smith\n")), "bobsmith");
        assert_eq!(actor_name(Some("   ")), "operator");
        assert_eq!(actor_name(Some(&"x".repeat(100))).len(), 48);
    }
}
