//! Starting the API: from listen options to a bound, serving listener.
//!
//! Rules: TLS 1.3 by default (the operator's certificate, else a persistent
//! self-signed one); `--ca-cert` makes client certificates mandatory; plain
//! HTTP only with `--no-tls`, announced loudly, and on a non-loopback
//! address only together with a bearer token (`--token-file`).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

use super::{ApiState, router, server};
use crate::tls::{ServerIdentity, TlsError, server_config};

/// Why the API cannot start listening.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The server certificate, key or CA cannot be loaded or used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The address cannot be bound (in use, not local, no permission).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Plain HTTP (`--no-tls`) on a non-loopback address without a bearer
    /// token; holds the address.
    #[error(
        "plain HTTP on {0} would expose the agent to the network without protection: add --token-file, or use TLS (drop --no-tls)"
    )]
    TokenRequired(SocketAddr),
    /// Only one of `--tls-cert` and `--tls-key` was given.
    #[error("--tls-cert and --tls-key go together")]
    HalfIdentity,
}

/// How the API listens, after configuration layering.
#[derive(Debug, Clone)]
pub struct ListenOptions {
    /// Address and port to bind; port 0 picks a free one.
    pub addr: SocketAddr,
    /// `None`: plain HTTP.
    pub tls: Option<TlsSettings>,
    /// File holding the bearer token clients must send; `None`: no token.
    pub token_file: Option<PathBuf>,
}

/// The server's TLS settings: its certificate and the optional client CA.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Where the server certificate and key come from.
    pub identity: ServerIdentity,
    /// CA that client certificates must be signed by; `Some` makes mutual
    /// TLS mandatory.
    pub ca: Option<PathBuf>,
}

impl TlsSettings {
    /// The operator's files if both are given, else a self-signed
    /// certificate kept under `state_dir/tls`.
    pub fn new(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        ca: Option<PathBuf>,
        state_dir: &Path,
        node: &str,
    ) -> Result<Self, ListenError> {
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => ServerIdentity::Files { cert, key },
            (None, None) => ServerIdentity::SelfSigned {
                dir: state_dir.join("tls"),
                node: node.to_owned(),
            },
            _ => return Err(ListenError::HalfIdentity),
        };
        Ok(Self { identity, ca })
    }
}

/// A serving API; [`RunningApi::stop`] ends it.
#[derive(Debug)]
pub struct RunningApi {
    /// The address actually bound (the real port when 0 was asked for).
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl RunningApi {
    /// Signals the server to stop and waits for its task to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.task.await;
    }
}

/// Checks the options without side effects (before tracing starts).
pub fn validate(opts: &ListenOptions) -> Result<(), ListenError> {
    if opts.tls.is_none() && !opts.addr.ip().is_loopback() && opts.token_file.is_none() {
        return Err(ListenError::TokenRequired(opts.addr));
    }
    Ok(())
}

/// Binds and starts serving; prints how to reach the agent.
pub async fn start(opts: &ListenOptions, state: Arc<ApiState>) -> Result<RunningApi, ListenError> {
    validate(opts)?;
    let tls = opts
        .tls
        .as_ref()
        .map(|t| server_config(&t.identity, t.ca.as_deref()))
        .transpose()?;
    let listener = TcpListener::bind(opts.addr)
        .await
        .map_err(|source| ListenError::Bind {
            addr: opts.addr,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ListenError::Bind {
        addr: opts.addr,
        source,
    })?;
    if let Some(t) = &tls {
        for warning in &t.warnings {
            crate::say!("ingero: warning: {warning}");
        }
        crate::say!(
            "ingero: API on https://{addr} (TLS 1.3, {}); certificate {} SHA-256 {}",
            if t.mutual {
                "clients need a certificate from the CA"
            } else {
                "no client certificate required"
            },
            t.cert_path.display(),
            t.fingerprint
        );
        if !t.mutual && !addr.ip().is_loopback() {
            crate::say!(
                "ingero: warning: any client that reaches {addr} can query this agent; pass --ca-cert for mutual TLS"
            );
        }
    } else {
        crate::say!(
            "ingero: WARNING: API on plain http://{addr} (--no-tls): traffic is not encrypted{}",
            if state.token.is_some() {
                "; a bearer token is required"
            } else {
                ""
            }
        );
    }
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let app = router(Arc::clone(&state));
    let task = tokio::spawn(server::serve(
        listener,
        tls.map(|t| t.config),
        app,
        state,
        async move {
            let _ = stop_rx.await;
        },
    ));
    Ok(RunningApi {
        addr,
        stop: Some(stop_tx),
        task,
    })
}
