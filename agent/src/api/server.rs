//! The listener: accepts connections, performs the TLS handshake (unless
//! plain HTTP was asked for), and serves HTTP/1.1 or HTTP/2 on each
//! connection in its own task, so a slow or hostile client affects only
//! itself. A failed handshake (no client certificate, one from another CA,
//! TLS 1.2) is counted and the connection dropped.

use std::{future::Future, sync::Arc, time::Duration};

use axum::Router;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::ApiState;

/// Longest a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn serve_connection<I>(io: I, router: Router)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = TowerToHyperService::new(router);
        if let Err(e) = auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(io), service)
            .await
        {
            log::debug!("connection ended with an error: {e}");
        }
    });
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    router: Router,
    state: Arc<ApiState>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    log::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        match &acceptor {
            None => serve_connection(stream, router),
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => serve_connection(tls, router),
                        Ok(Err(e)) => {
                            state
                                .metrics
                                .tls_handshake_failures
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            log::info!("TLS handshake with {peer} failed: {e}");
                        }
                        Err(_) => {
                            state
                                .metrics
                                .tls_handshake_failures
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            log::info!("TLS handshake with {peer} timed out");
                        }
                    }
                });
            }
        }
    }
}
