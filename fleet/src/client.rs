//! One agent's API, from the client side.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::tls::ClientTls;

/// What can go wrong talking to an agent, in an operator's words.
#[derive(Debug, Clone, thiserror::Error, Serialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum FleetError {
    #[error("{0}")]
    Config(String),
    /// Nothing listens there, or the host cannot be reached.
    #[error("cannot connect: {0}")]
    Refused(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("TLS handshake failed: {0}")]
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

/// The innermost cause of an error: the part that says what happened
/// ("Connection refused (os error 111)", "received fatal alert: ...").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        last = s.to_string();
        cur = s.source();
    }
    last
}

/// What to do about a TLS failure, from rustls's words.
fn tls_hint(cause: &str) -> &'static str {
    if cause.contains("CertificateRequired") {
        "the agent requires a client certificate: pass --client-cert and --client-key"
    } else if cause.contains("invalid peer certificate")
        && (cause.contains("UnknownIssuer") || cause.contains("BadSignature"))
    {
        "the agent's certificate is not signed by --ca-cert"
    } else if cause.contains("NotValidForName") {
        "the agent's certificate does not name this address: reissue it with --san ADDRESS"
    } else if cause.contains("UnknownCA")
        || cause.contains("BadCertificate")
        || cause.contains("DecryptError")
    {
        "the agent refused our client certificate: is it from the agent's CA?"
    } else if cause.contains("ProtocolVersion") {
        "the agent and this client share no TLS version (agents speak TLS 1.3 only)"
    } else if cause.contains("Expired") {
        "a certificate has expired (or a clock is far off)"
    } else if cause.contains("InvalidContentType") || cause.contains("CorruptMessage") {
        "the agent does not speak TLS here: started with --no-tls? then pass --no-tls"
    } else {
        "check --ca-cert, --client-cert and --client-key"
    }
}

fn classify(e: &reqwest::Error, timeout: Duration) -> FleetError {
    let cause = root_cause(e);
    let lower = cause.to_ascii_lowercase();
    if e.is_timeout() {
        FleetError::Timeout(timeout)
    } else if lower.contains("connection refused")
        || lower.contains("no route")
        || lower.contains("unreachable")
    {
        FleetError::Refused(cause)
    } else if lower.contains("certificate")
        || lower.contains("tls")
        || lower.contains("handshake")
        || lower.contains("alert")
        || lower.contains("invalid peer")
        || lower.contains("corrupt message")
        || lower.contains("invalid content type")
    {
        FleetError::Tls(format!("{} ({cause})", tls_hint(&cause)))
    } else if e.is_connect() {
        FleetError::Refused(cause)
    } else {
        FleetError::Other(cause)
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

/// What `POST /api/v1/query` takes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueryRequest {
    pub sql: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Only the last DURATION of the agent's recorded data (`5m`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
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
            http: builder.build().map_err(|e| FleetError::Config(root_cause(&e)))?,
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
        self.query_with(&QueryRequest {
            sql: sql.to_owned(),
            limit,
            ..QueryRequest::default()
        })
        .await
    }

    /// One SQL statement on the agent, with every option.
    pub async fn query_with(&self, request: &QueryRequest) -> Result<QueryAnswer, FleetError> {
        let v = self
            .send(self.request(reqwest::Method::POST, "/api/v1/query").json(request))
            .await?;
        serde_json::from_value(v).map_err(|e| FleetError::Decode(e.to_string()))
    }

    /// One clock exchange with the agent: its node name and the times.
    pub async fn time(&self) -> Result<(String, TimeSample), FleetError> {
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
        let sample = TimeSample {
            t0,
            t1: field("receive_ns")?,
            t2: field("send_ns")?,
            t3,
        };
        Ok((v["node"].as_str().unwrap_or_default().to_owned(), sample))
    }
}
