//! The Prometheus HTTP API, as much of it as a source needs: `GET /api/v1/query_range`.
//!
//! # Errors
//! Each names the server's URL: unreachable (with the transport's cause), an error answer
//! (Prometheus's `errorType` and `error`, e.g. a PromQL parse error, with the query), or a
//! reply that is not the API's. Text from the reply is clipped and escaped before it is shown.

use rejuv_core::text::{clean, clean_bytes, MAX_REMOTE_TEXT};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Largest reply read (bytes): 11,000 points of a thousand series is about 40 MB.
pub const MAX_REPLY: usize = 64 << 20;

/// Why a query got no series.
#[derive(Debug, thiserror::Error)]
pub enum PromError {
    #[error("Prometheus at {url} is unreachable")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error(
        "Prometheus at {url} refused the query `{query}` (HTTP {status}, {error_type}): {message}"
    )]
    Refused {
        url: String,
        query: String,
        status: u16,
        error_type: String,
        message: String,
    },
    #[error("Prometheus at {url} sent a reply that is not its API's: {message}")]
    BadReply { url: String, message: String },
}

/// One series of a range query: its labels and its points (wall-clock milliseconds, value),
/// oldest first. Points that are not finite numbers (`NaN`, `±Inf`) are left out.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub points: Vec<(u64, f64)>,
}

/// The times of a range query: `start` to `end` (wall-clock milliseconds) every `step`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub start_ms: u64,
    pub end_ms: u64,
    pub step: Duration,
}

#[derive(Deserialize)]
struct Reply {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<RawSeries>,
}

#[derive(Deserialize)]
struct RawSeries {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    #[serde(default)]
    values: Vec<(f64, String)>,
}

/// A client of one Prometheus server.
#[derive(Clone)]
pub struct PromClient {
    http: reqwest::Client,
    url: String,
    timeout: Duration,
}

impl PromClient {
    /// `url` is the server's base URL (`http://host:9090`, with a path prefix if it has one).
    pub fn new(url: &str, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .build()
            .expect("http client");
        Self {
            http,
            url: url.trim_end_matches('/').to_string(),
            timeout,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The series of `query` over `range`.
    pub async fn query_range(&self, query: &str, range: Range) -> Result<Vec<Series>, PromError> {
        let secs = |ms: u64| format!("{:.3}", ms as f64 / 1000.0);
        let step = format!("{:.3}", range.step.as_secs_f64().max(0.001));
        let resp = self
            .http
            .get(format!("{}/api/v1/query_range", self.url))
            .query(&[
                ("query", query),
                ("start", &secs(range.start_ms)),
                ("end", &secs(range.end_ms)),
                ("step", &step),
            ])
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|source| PromError::Unreachable {
                url: self.url.clone(),
                source,
            })?;
        let status = resp.status().as_u16();
        let body = self.read_bounded(resp).await?;
        parse_reply(&self.url, query, status, &body)
    }

    async fn read_bounded(&self, mut resp: reqwest::Response) -> Result<Vec<u8>, PromError> {
        let too_big = || PromError::BadReply {
            url: self.url.clone(),
            message: format!(
                "reply larger than {MAX_REPLY} bytes, not read (narrow the query or the range)"
            ),
        };
        if resp.content_length().is_some_and(|n| n > MAX_REPLY as u64) {
            return Err(too_big());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|source| PromError::Unreachable {
                url: self.url.clone(),
                source,
            })?
        {
            if body.len() + chunk.len() > MAX_REPLY {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// Reads a `query_range` reply: the matrix of a success, or the error Prometheus names.
fn parse_reply(url: &str, query: &str, status: u16, body: &[u8]) -> Result<Vec<Series>, PromError> {
    let bad = |message: String| PromError::BadReply {
        url: url.to_string(),
        message,
    };
    let reply: Reply = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) if (200..300).contains(&status) => {
            return Err(bad(clean(&e.to_string(), MAX_REMOTE_TEXT)))
        }
        // Not the API's JSON at all (a proxy's error page, another service on the port).
        Err(_) => {
            return Err(PromError::Refused {
                url: url.to_string(),
                query: clean(query, MAX_REMOTE_TEXT),
                status,
                error_type: "http".into(),
                message: clean_bytes(body, MAX_REMOTE_TEXT),
            })
        }
    };
    if reply.status != "success" || !(200..300).contains(&status) {
        return Err(PromError::Refused {
            url: url.to_string(),
            query: clean(query, MAX_REMOTE_TEXT),
            status,
            error_type: clean(reply.error_type.as_deref().unwrap_or("unknown"), 40),
            message: clean(
                reply.error.as_deref().unwrap_or("(no message)"),
                MAX_REMOTE_TEXT,
            ),
        });
    }
    let data = reply
        .data
        .ok_or_else(|| bad("a success without data".into()))?;
    if data.result_type != "matrix" {
        return Err(bad(format!(
            "a range query answered with a {} instead of a matrix",
            clean(&data.result_type, 40)
        )));
    }
    Ok(data
        .result
        .into_iter()
        .map(|s| Series {
            labels: s.metric,
            points: s
                .values
                .into_iter()
                .filter_map(|(t, v)| {
                    let v: f64 = v.parse().ok()?;
                    (v.is_finite() && t.is_finite() && t >= 0.0)
                        .then(|| ((t * 1000.0).round() as u64, v))
                })
                .collect(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_matrix_is_read_with_its_labels_and_finite_points() {
        let body = br#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"__name__":"m","server":"s1"},"values":[[1700000000.5,"12"],[1700000001.5,"NaN"],[1700000002.5,"+Inf"],[1700000003.5,"1e3"]]}
        ]}}"#;
        let s = parse_reply("http://p:9090", "m", 200, body).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].labels["server"], "s1");
        assert_eq!(
            s[0].points,
            vec![(1_700_000_000_500, 12.0), (1_700_000_003_500, 1000.0)]
        );
    }

    #[test]
    fn errors_name_the_url_the_query_and_the_reason() {
        let body = br#"{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected <op:->"}"#;
        let e = parse_reply("http://p:9090", "up -", 400, body).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("http://p:9090")
                && msg.contains("`up -`")
                && msg.contains("bad_data")
                && msg.contains("parse error"),
            "{msg}"
        );
        let e = parse_reply("http://p:9090", "up", 502, b"<html>Bad Gateway</html>").unwrap_err();
        assert!(e.to_string().contains("HTTP 502"), "{e}");
        let e = parse_reply("http://p:9090", "up", 200, b"hello").unwrap_err();
        assert!(matches!(e, PromError::BadReply { .. }), "{e}");
        let vector = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        let e = parse_reply("http://p:9090", "up", 200, vector).unwrap_err();
        assert!(e.to_string().contains("instead of a matrix"), "{e}");
    }
}
