//! One agent's API, from the client side.

use std::time::{Duration, Instant};

use ingero_api::{
    Endpoint, ErrorAnswer, MAX_ROWS, QueryAnswer, QueryEndpoint, QueryRequest, Since, TimeEndpoint,
};
use serde::{Serialize, de::DeserializeOwned};

use crate::tls::ClientTls;

/// What can go wrong talking to an agent, in an operator's words.
#[derive(Debug, Clone, thiserror::Error, Serialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum FleetError {
    /// The client setup is wrong before anything is sent: an address that is
    /// not `host:port`, a duplicate or empty node list, an unreadable CA or
    /// client certificate. Fix the flags or `ingero.yaml` the message names.
    #[error("{0}")]
    Config(String),
    /// Nothing listens there, or the host cannot be reached.
    #[error("cannot connect: {0}")]
    Refused(String),
    /// No answer within the per-request timeout (or the fan-out's overall
    /// deadline, which is the duration it carries then).
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The TLS handshake failed; the message starts with what to check
    /// (CA, client certificate, `--no-tls`), then rustls's own words.
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// The agent answered with an error status: it was reached but refused
    /// the request (400 invalid, 401 missing or wrong token, 403 refused by
    /// the read-only guard, 408 past its deadline, ...).
    #[error("HTTP {status}: {message}")]
    Http {
        /// HTTP status code of the answer.
        status: u16,
        /// The agent's error message (the `error` field of its JSON body,
        /// else the body as text).
        message: String,
    },
    /// The agent's answer could not be used: a body that is not the expected
    /// JSON (a different agent version, a proxy in between), or query
    /// columns that differ from the other nodes'.
    #[error("unreadable answer: {0}")]
    Decode(String),
    /// The agent began its answer and did not finish it: it ended the
    /// answer with an error after sending rows (its deadline passed, it is
    /// stopping; the agent's sentence says), or the answer broke off
    /// before its end (the agent's 30 s send limit passed, or the
    /// connection was lost). The partial rows are left out.
    #[error("its answer was cut off: {0}")]
    Incomplete(String),
    /// An answer longer than the client reads (bytes); the rest was not read.
    #[error("its answer exceeded {} MiB; stopped reading it (raise --max-answer or fleet.max_answer_size if the agent is trusted)", .0 >> 20)]
    TooLarge(u64),
    /// The agent reports the same node name as an agent listed before it
    /// (two agents serving one database, or a copied `--node`): its answer
    /// is left out, so nothing is counted twice.
    #[error(
        "it reports node {node}, as {first} does: its answer is left out so nothing is counted twice (give each agent its own node name, or list the node once)"
    )]
    DuplicateNode {
        /// The node name both agents report.
        node: String,
        /// The address of the agent that reported it first.
        first: String,
    },
    /// Anything else (a failed task, a stopped writer, an unclassified
    /// transport error); the message says what.
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
            Self::Incomplete(_) => "incomplete",
            Self::TooLarge(_) => "too_large",
            Self::DuplicateNode { .. } => "duplicate_node",
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

/// How this client presents itself to an agent: what a connection the
/// agent closes right after the handshake most likely means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presented {
    /// Plain HTTP.
    Plain,
    /// TLS without a client certificate.
    Anonymous,
    /// TLS with a client certificate.
    Certificate,
}

/// How long to wait before asking a busy agent again: its `retry-after`
/// in seconds, at most [`BUSY_WAIT_CAP`]; half a second when it says none.
fn busy_wait(headers: &reqwest::header::HeaderMap) -> Duration {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .map_or(Duration::from_millis(500), Duration::from_secs)
        .min(BUSY_WAIT_CAP)
}

fn classify(e: &reqwest::Error, timeout: Duration, presented: Presented) -> FleetError {
    let cause = root_cause(e);
    let lower = cause.to_ascii_lowercase();
    // TLS 1.3: the client's side of the handshake completes before the
    // agent checks its certificate; when the agent's alert loses the race
    // with the close, all that shows is a closed connection.
    let closed =
        lower.contains("not ready") || lower.contains("connection closed") || lower.contains("reset by peer");
    if presented == Presented::Anonymous && closed {
        return FleetError::Tls(format!(
            "the agent closed the connection right after the TLS handshake; it probably requires a client certificate: pass --client-cert and --client-key ({cause})"
        ));
    }
    // With a certificate, only a close before the request could be sent
    // says so: a close after it is the agent's (or the network's) doing.
    if presented == Presented::Certificate && lower.contains("not ready") {
        return FleetError::Tls(format!(
            "the agent closed the connection right after the TLS handshake; it probably refused our client certificate: is it from the agent's CA? ({cause})"
        ));
    }
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

/// One clock exchange: local send/receive and the agent's receive/send,
/// all Unix ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeSample {
    /// When we sent the request, Unix ns on our clock.
    pub t0: i64,
    /// When the agent received it, Unix ns on the agent's clock.
    pub t1: i64,
    /// When the agent sent its answer, Unix ns on the agent's clock.
    pub t2: i64,
    /// When we received the answer, Unix ns on our clock (`t0` plus the
    /// monotonic time elapsed, so a clock step cannot make it precede `t0`).
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
    /// Largest answer body read from the agent, bytes.
    max_answer_bytes: u64,
    /// `host:port` as given.
    pub address: String,
    /// Whether TLS is used, and with a client certificate: an agent that
    /// refuses what it got closes the connection after the handshake.
    presented: Presented,
}

/// Largest answer read from one agent unless [`AgentClient::with_answer_limit`]
/// says otherwise (the CLI passes its configured `fleet.max_answer_size`).
pub const DEFAULT_MAX_ANSWER_BYTES: u64 = 256 << 20;

/// How many times a request refused with 429 (every query slot of the
/// agent busy) is sent again before the node is reported busy: a paged
/// export sends hundreds of requests, and one busy moment must not cost
/// the node.
pub const BUSY_RETRIES: u32 = 4;
/// Longest wait before sending a refused request again, whatever the
/// agent's `retry-after` says (the fan-out's deadline bounds the total).
pub const BUSY_WAIT_CAP: Duration = Duration::from_secs(2);

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
            max_answer_bytes: DEFAULT_MAX_ANSWER_BYTES,
            address: address.to_owned(),
            presented: match (scheme, &tls.client_cert) {
                ("http", _) => Presented::Plain,
                (_, None) => Presented::Anonymous,
                (_, Some(_)) => Presented::Certificate,
            },
        })
    }

    /// The same client, reading at most `bytes` of any answer: past it the
    /// answer is abandoned and the node reported as failed, so an agent (or
    /// anything listening at its address) cannot grow our memory.
    #[must_use]
    pub fn with_answer_limit(mut self, bytes: u64) -> Self {
        self.max_answer_bytes = bytes;
        self
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Sends a request and reads a typed answer; an error status becomes
    /// [`FleetError::Http`] with the agent's own message.
    async fn send<T: DeserializeOwned>(&self, mut r: reqwest::RequestBuilder) -> Result<T, FleetError> {
        let mut retries = BUSY_RETRIES;
        let mut response = loop {
            let again = r.try_clone();
            let response = r
                .send()
                .await
                .map_err(|e| classify(&e, self.timeout, self.presented))?;
            match again {
                Some(next) if retries > 0 && response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => {
                    retries -= 1;
                    tokio::time::sleep(busy_wait(response.headers())).await;
                    r = next;
                }
                _ => break response,
            }
        };
        let status = response.status();
        if response
            .content_length()
            .is_some_and(|n| n > self.max_answer_bytes)
        {
            return Err(FleetError::TooLarge(self.max_answer_bytes));
        }
        let mut body = Vec::new();
        // Past the status, a failure is the answer breaking off (agents
        // stream their answers), not a connection or TLS problem.
        let broken = |e: &reqwest::Error, got: usize| {
            if e.is_timeout() {
                FleetError::Timeout(self.timeout)
            } else {
                FleetError::Incomplete(format!(
                    "it broke off after {got} bytes, before its end; the agent took longer than its send limit or stopped ({})",
                    root_cause(e)
                ))
            }
        };
        while let Some(chunk) = response.chunk().await.map_err(|e| broken(&e, body.len()))? {
            if body.len() as u64 + chunk.len() as u64 > self.max_answer_bytes {
                return Err(FleetError::TooLarge(self.max_answer_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorAnswer>(&body)
                .map_or_else(|_| String::from_utf8_lossy(&body).trim().to_owned(), |e| e.error);
            return Err(FleetError::Http {
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&body).map_err(|e| FleetError::Decode(e.to_string()))
    }

    /// A windowed endpoint's answer (`since`: the agent's default when `None`).
    pub async fn get<E: Endpoint>(&self, since: Option<Since>) -> Result<E::Answer, FleetError> {
        let path = match since {
            Some(s) => format!("{}{}", E::PATH, s.query()),
            None => E::PATH.to_owned(),
        };
        self.send(self.request(reqwest::Method::GET, &path)).await
    }

    /// One SQL statement on the agent with the agent's default limits.
    pub async fn sql(&self, sql: &str) -> Result<QueryAnswer, FleetError> {
        self.query(&QueryRequest {
            sql: sql.to_owned(),
            ..QueryRequest::default()
        })
        .await
    }

    /// One SQL statement on the agent, with every option.
    pub async fn query(&self, request: &QueryRequest) -> Result<QueryAnswer, FleetError> {
        let answer: QueryAnswer = self
            .send(
                self.request(reqwest::Method::POST, QueryEndpoint::PATH)
                    .json(request),
            )
            .await?;
        if let Some(error) = answer.error {
            return Err(FleetError::Incomplete(format!(
                "the agent stopped it after {} rows: {error}",
                answer.rows.len()
            )));
        }
        let asked = request.limit.unwrap_or(MAX_ROWS).min(MAX_ROWS);
        if answer.rows.len() > asked {
            return Err(FleetError::Decode(format!(
                "{} rows where at most {asked} were asked for",
                answer.rows.len()
            )));
        }
        Ok(answer)
    }

    /// One clock exchange with the agent: its node name and the times.
    pub async fn time(&self) -> Result<(String, TimeSample), FleetError> {
        let start = Instant::now();
        let t0 = unix_ns();
        let answer = self.get::<TimeEndpoint>(None).await?;
        // Local receive time from the monotonic clock, so a clock step
        // during the exchange cannot make the round trip negative.
        let t3 = t0 + start.elapsed().as_nanos() as i64;
        let sample = TimeSample {
            t0,
            t1: answer.receive_ns,
            t2: answer.send_ns,
            t3,
        };
        Ok((answer.node, sample))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    fn after(value: &str) -> Duration {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(value).expect("header"));
        busy_wait(&h)
    }

    #[test]
    fn a_busy_agent_is_asked_again_after_what_it_says_within_the_cap() {
        assert_eq!(after("1"), Duration::from_secs(1));
        assert_eq!(after(" 2 "), Duration::from_secs(2));
        assert_eq!(after("3600"), BUSY_WAIT_CAP, "a huge retry-after is capped");
        // An HTTP date or garbage: the default half second.
        assert_eq!(after("Wed, 21 Oct 2026 07:28:00 GMT"), Duration::from_millis(500));
        assert_eq!(busy_wait(&HeaderMap::new()), Duration::from_millis(500));
    }
}
