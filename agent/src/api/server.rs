//! The listener: accepts connections, performs the TLS handshake (unless
//! plain HTTP was asked for), and serves HTTP/1.1 or HTTP/2 on each
//! connection in its own task, so a slow or hostile client affects only
//! itself. A failed handshake (no client certificate, one from another CA,
//! TLS 1.2) is counted and the connection dropped.
//!
//! Before TLS and authentication, each connection is bounded: at most
//! `max_connections_per_address` open at once from one IP address (more are
//! closed at once), closed after `idle_timeout` without a byte either way
//! (plain HTTP, the handshake, and TLS after it), and an HTTP/1 request's
//! headers must arrive within `header_timeout`. When the server stops,
//! every database statement still running is interrupted.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::IpAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::Router;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use rustls::ServerConfig;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    time::{Instant, Sleep},
};
use tokio_rustls::TlsAcceptor;

use super::{ApiState, ConnLimits};

/// How long a refused TLS client is given to read our alert.
const LINGER: Duration = Duration::from_millis(250);

/// Closes a connection whose handshake failed so that the client reads the
/// alert (which names the reason, e.g. "certificate required"): our side
/// is shut down, then what the client already sent is read and dropped for
/// a moment. Closing a socket with unread data would send a reset, and a
/// client whose TLS 1.3 handshake looked finished (it sends its request at
/// once) would then see only "connection reset".
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let _ = io.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while io.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    })
    .await;
}

/// Longest a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A stream closed with `TimedOut` when no byte went either way for its
/// idle time. While a request is being handled (`busy` above zero) a
/// silent client is not idle; a stalled write always is.
struct Idle<I> {
    inner: I,
    limit: Duration,
    timer: Pin<Box<Sleep>>,
    busy: Arc<AtomicUsize>,
}

impl<I> Idle<I> {
    fn new(inner: I, limit: Duration, busy: Arc<AtomicUsize>) -> Self {
        Self {
            inner,
            limit,
            timer: Box::pin(tokio::time::sleep(limit)),
            busy,
        }
    }

    /// After a pending read or write: an error once the idle time is over
    /// (for a read, only when no request is being handled).
    fn expired(&mut self, cx: &mut Context<'_>, reading: bool) -> bool {
        if self.timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        if reading && self.busy.load(Ordering::Relaxed) > 0 {
            self.progressed();
            let _ = self.timer.as_mut().poll(cx);
            return false;
        }
        true
    }

    fn progressed(&mut self) {
        let next = Instant::now() + self.limit;
        self.timer.as_mut().reset(next);
    }
}

fn idle_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle for too long")
}

impl<I: AsyncRead + Unpin> AsyncRead for Idle<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.progressed();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.expired(cx, true) => Poll::Ready(Err(idle_error())),
            other => other,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Idle<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.progressed();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.expired(cx, false) => Poll::Ready(Err(idle_error())),
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending if self.expired(cx, false) => Poll::Ready(Err(idle_error())),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Open connections per IP address.
type PerAddress = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// One counted connection; uncounted when dropped.
struct Counted {
    map: PerAddress,
    ip: IpAddr,
}

impl Counted {
    /// Counts a connection from `ip`, or `None` when it already has `max`.
    fn admit(map: &PerAddress, ip: IpAddr, max: usize) -> Option<Self> {
        let mut m = map.lock().ok()?;
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Self {
            map: Arc::clone(map),
            ip,
        })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Ok(mut m) = self.map.lock()
            && let Some(n) = m.get_mut(&self.ip)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Counts a request being handled on its connection while alive.
struct Handling(Arc<AtomicUsize>);

impl Handling {
    fn enter(busy: &Arc<AtomicUsize>) -> Self {
        busy.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(busy))
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_connection<I>(io: I, router: Router, limits: ConnLimits, busy: Arc<AtomicUsize>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(tower::service_fn(
        move |request: hyper::Request<hyper::body::Incoming>| {
            let handling = Handling::enter(&busy);
            let answer = tower::Service::call(&mut router.clone(), request);
            async move {
                let response = answer.await;
                drop(handling);
                response
            }
        },
    ));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());
    if let Err(e) = builder.serve_connection(TokioIo::new(io), service).await {
        log::debug!("connection ended with an error: {e}");
    }
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
    let per_address: PerAddress = Arc::default();
    let limits = state.limits;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => {
                state.stopping.store(true, Ordering::Relaxed);
                return;
            }
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    log::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(counted) = Counted::admit(&per_address, peer.ip(), limits.max_connections_per_address)
        else {
            state.metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
            log::info!("{peer}: too many connections from this address; closed");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let busy = Arc::new(AtomicUsize::new(0));
        let stream = Idle::new(stream, limits.idle_timeout, Arc::clone(&busy));
        let router = router.clone();
        match &acceptor {
            None => {
                tokio::spawn(async move {
                    let _counted = counted;
                    serve_connection(stream, router, limits, busy).await;
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    let _counted = counted;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream).into_fallible())
                        .await
                    {
                        Ok(Ok(tls)) => serve_connection(tls, router, limits, busy).await,
                        Ok(Err((e, mut io))) => {
                            state
                                .metrics
                                .tls_handshake_failures
                                .fetch_add(1, Ordering::Relaxed);
                            log::info!("TLS handshake with {peer} failed: {e}");
                            linger(&mut io).await;
                        }
                        Err(_) => {
                            state
                                .metrics
                                .tls_handshake_failures
                                .fetch_add(1, Ordering::Relaxed);
                            log::info!("TLS handshake with {peer} timed out");
                        }
                    }
                });
            }
        }
    }
}
