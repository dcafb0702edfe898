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

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "plain HTTP on {0} would expose the agent to the network without protection: add --token-file, or use TLS (drop --no-tls)"
    )]
    TokenRequired(SocketAddr),
    #[error("--tls-cert and --tls-key go together")]
    HalfIdentity,
}

/// How the API listens, after configuration layering.
#[derive(Debug, Clone)]
pub struct ListenOptions {
    pub addr: SocketAddr,
    /// `None`: plain HTTP.
    pub tls: Option<TlsSettings>,
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub identity: ServerIdentity,
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
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl RunningApi {
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
    match &tls {
        Some(t) => {
            eprintln!(
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
                eprintln!(
                    "ingero: warning: any client that reaches {addr} can query this agent; pass --ca-cert for mutual TLS"
                );
            }
        }
        None => eprintln!(
            "ingero: WARNING: API on plain http://{addr} (--no-tls): traffic is not encrypted{}",
            if state.token.is_some() {
                "; a bearer token is required"
            } else {
                ""
            }
        ),
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
