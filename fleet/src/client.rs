//! One agent's API, from the client side.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::tls::ClientTls;

/// What can go wrong talking to an agent.
#[derive(Debug, Clone, thiserror::Error, Serialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum FleetError {
    #[error("{0}")]
    Config(String),
    #[error("connection refused ({0})")]
    Refused(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("TLS handshake failed ({0})")]
    Tls(String),
    #[error("HTTP {status}: {message}")]
    Http { status: u16, message: String },
    #[error("unreadable answer: {0}")]
    Decode(String),
    #[error("{0}")]
    Other(String),
}

impl FleetError {
    /// A short class name for tables: refused, timeout, tls, http, ...
    #[must_use]
    pub fn class(&self) -> &'static str {
        match self {
            Self::Config(_) => "config",
            Self::Refused(_) => "refused",
            Self::Timeout(_) => "timeout",
            Self::Tls(_) => "tls",
            Self::Http { .. } => "http",
            Self::Decode(_) => "decode",
            Self::Other(_) => "error",
        }
    }
}

/// Walks an error's sources into one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

fn classify(e: &reqwest::Error, timeout: Duration) -> FleetError {
    let text = chain(e);
    let lower = text.to_ascii_lowercase();
    if e.is_timeout() {
        FleetError::Timeout(timeout)
    } else if lower.contains("connection refused") {
        FleetError::Refused(text)
    } else if lower.contains("certificate")
        || lower.contains("tls")
        || lower.contains("handshake")
        || lower.contains("alert")
        || lower.contains("peer closed connection without sending tls")
    {
        FleetError::Tls(text)
    } else if e.is_connect() {
        FleetError::Refused(text)
    } else {
        FleetError::Other(text)
    }
}

/// An agent's answer to an SQL query.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct QueryAnswer {
    pub node: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    pub truncated: bool,
}

/// One clock exchange: local send/receive and the agent's receive/send,
/// all Unix ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeSample {
    pub t0: i64,
    pub t1: i64,
    pub t2: i64,
    pub t3: i64,
}

fn unix_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// A client for one agent.
#[derive(Debug, Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    timeout: Duration,
    /// `host:port` as given.
    pub address: String,
}

impl AgentClient {
    /// A client for `address` (`host:port`) with a per-request `timeout`.
    pub fn new(address: &str, tls: &ClientTls, timeout: Duration) -> Result<Self, FleetError> {
        Self::with_tls_config(
            address,
            tls,
            timeout,
            if tls.no_tls { None } else { Some(tls.tls13()?) },
        )
    }

    /// As [`AgentClient::new`] with an explicit rustls configuration.
    pub fn with_tls_config(
        address: &str,
        tls: &ClientTls,
        timeout: Duration,
        config: Option<rustls::ClientConfig>,
    ) -> Result<Self, FleetError> {
        if !address.contains(':') || address.starts_with("http") {
            return Err(FleetError::Config(format!("'{address}' is not host:port")));
        }
        // The workspace's one crypto provider (ring); reqwest needs a process
        // default even for plain HTTP. Installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            .http1_only();
        let scheme = match config {
            Some(c) => {
                builder = builder.tls_backend_preconfigured(c);
                "https"
            }
            None => "http",
        };
        Ok(Self {
            http: builder.build().map_err(|e| FleetError::Config(chain(&e)))?,
            base: format!("{scheme}://{address}"),
            token: tls.token.clone(),
            timeout,
            address: address.to_owned(),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> Result<Value, FleetError> {
        let response = r.send().await.map_err(|e| classify(&e, self.timeout))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| classify(&e, self.timeout))?;
        let value: Value = serde_json::from_slice(&body).map_err(|e| {
            if status.is_success() {
                FleetError::Decode(e.to_string())
            } else {
                FleetError::Http {
                    status: status.as_u16(),
                    message: String::from_utf8_lossy(&body).trim().to_owned(),
                }
            }
        })?;
        if !status.is_success() {
            return Err(FleetError::Http {
                status: status.as_u16(),
                message: value["error"].as_str().unwrap_or("no message").to_owned(),
            });
        }
        Ok(value)
    }

    /// `GET path` as JSON.
    pub async fn get(&self, path: &str) -> Result<Value, FleetError> {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    /// One SQL statement on the agent.
    pub async fn query(&self, sql: &str, limit: Option<usize>) -> Result<QueryAnswer, FleetError> {
        let body = serde_json::json!({ "sql": sql, "limit": limit });
        let v = self
            .send(self.request(reqwest::Method::POST, "/api/v1/query").json(&body))
            .await?;
        serde_json::from_value(v).map_err(|e| FleetError::Decode(e.to_string()))
    }

    /// One clock exchange with the agent.
    pub async fn time(&self) -> Result<TimeSample, FleetError> {
        let start = Instant::now();
        let t0 = unix_ns();
        let v = self.get("/api/v1/time").await?;
        // Local receive time from the monotonic clock, so a clock step
        // during the exchange cannot make the round trip negative.
        let t3 = t0 + start.elapsed().as_nanos() as i64;
        let field = |k: &str| {
            v[k].as_i64()
                .ok_or_else(|| FleetError::Decode(format!("/api/v1/time without {k}")))
        };
        Ok(TimeSample {
            t0,
            t1: field("receive_ns")?,
            t2: field("send_ns")?,
            t3,
        })
    }
}
