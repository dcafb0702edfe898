//! The listener: accepts connections, performs the TLS handshake (unless
//! plain HTTP was asked for), and serves HTTP/1.1 or HTTP/2 on each
//! connection in its own task, so a slow or hostile client affects only
//! itself. A failed handshake (no client certificate, one from another CA,
//! TLS 1.2) is counted and the connection dropped.
//!
//! Before TLS and authentication, each connection is bounded: at most
//! `max_connections_per_address` open at once from one IP address (more are
//! closed at once), closed after `idle_timeout` without a byte either way
//! (plain HTTP, the handshake, and TLS after it), and, once HTTP is served
//! (after the handshake), a connection that is handling no request must
//! complete a request's headers within `header_timeout`, over HTTP/1 and
//! HTTP/2 alike (hyper times HTTP/1 headers itself; HTTP/2 has no such
//! setting, so the connection's stream does it: a timer runs while no
//! request is being handled, from the handshake or the end of the last
//! answer). An idle keep-alive connection is therefore closed after
//! `header_timeout`. When the server stops, every database statement still
//! running is interrupted.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, Mutex, atomic::Ordering},
    task::{Context, Poll, Waker},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes, HttpBody},
};
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

/// The requests of one connection: how many are being handled (from the
/// moment their headers are complete until their answer is sent or
/// dropped), and since when none is.
#[derive(Debug, Default)]
struct Requests(Mutex<RequestsState>);

#[derive(Debug, Default)]
struct RequestsState {
    in_flight: usize,
    /// Since when no request is handled; `None` until HTTP is served
    /// (during the TLS handshake, which has its own limit).
    idle_since: Option<Instant>,
    /// The connection's reading task, woken when its last request ends so
    /// that its header timer starts then.
    waker: Option<Waker>,
}

impl Requests {
    fn state(&self) -> std::sync::MutexGuard<'_, RequestsState> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// HTTP is served from now on: the header timer starts.
    fn serving(&self) {
        self.state().idle_since = Some(Instant::now());
    }

    /// Whether a request is being handled.
    fn busy(&self) -> bool {
        self.state().in_flight > 0
    }

    /// Since when no request is handled, or `None` while one is (then the
    /// caller is woken when the last one ends).
    fn idle_since(&self, cx: &Context<'_>) -> Option<Instant> {
        let mut state = self.state();
        if state.in_flight > 0 {
            state.waker = Some(cx.waker().clone());
            return None;
        }
        state.idle_since
    }
}

/// A stream closed with `TimedOut` when no byte went either way for its
/// idle time (while a request is being handled a silent client is not
/// idle; a stalled write always is), or when, HTTP being served and no
/// request handled, no request's headers were complete within the header
/// time (HTTP/2 as well as HTTP/1: an HTTP/2 client trickling a HEADERS
/// frame, or sending only other frames, is cut like a slow HTTP/1 one).
struct Idle<I> {
    inner: I,
    limit: Duration,
    timer: Pin<Box<Sleep>>,
    header_limit: Duration,
    header_timer: Option<Pin<Box<Sleep>>>,
    requests: Arc<Requests>,
    /// The last write could not go out (the client does not read).
    write_stalled: bool,
}

impl<I> Idle<I> {
    fn new(inner: I, limits: &ConnLimits, requests: Arc<Requests>) -> Self {
        Self {
            inner,
            limit: limits.idle_timeout,
            timer: Box::pin(tokio::time::sleep(limits.idle_timeout)),
            header_limit: limits.header_timeout,
            header_timer: None,
            requests,
            write_stalled: false,
        }
    }

    /// After a pending read or write: an error once the idle time is over
    /// (for a read, only when no request is being handled; a request being
    /// handled keeps the connection alive unless its answer is stalled).
    fn expired(&mut self, cx: &mut Context<'_>, reading: bool) -> bool {
        if !reading {
            self.write_stalled = true;
        }
        if self.timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        if reading && self.requests.busy() {
            if !self.write_stalled {
                self.progressed();
                let _ = self.timer.as_mut().poll(cx);
            }
            return false;
        }
        true
    }

    /// After a pending read: whether the header time has passed with no
    /// request handled.
    fn headers_late(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(since) = self.requests.idle_since(cx) else {
            self.header_timer = None;
            return false;
        };
        let deadline = since + self.header_limit;
        let timer = self
            .header_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready()
    }

    fn progressed(&mut self) {
        let next = Instant::now() + self.limit;
        self.timer.as_mut().reset(next);
    }
}

fn idle_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle for too long")
}

fn header_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "no request's headers were complete within the header timeout",
    )
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
            Poll::Pending if self.headers_late(cx) => Poll::Ready(Err(header_error())),
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
                    self.write_stalled = false;
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
            Poll::Ready(Ok(())) => {
                self.write_stalled = false;
                Poll::Ready(Ok(()))
            }
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

/// Counts a request being handled on its connection while alive: from
/// its service call until its answer's body is sent or dropped.
struct Handling(Arc<Requests>);

impl Handling {
    fn enter(requests: &Arc<Requests>) -> Self {
        requests.state().in_flight += 1;
        Self(Arc::clone(requests))
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.in_flight = state.in_flight.saturating_sub(1);
        if state.in_flight == 0 {
            state.idle_since = Some(Instant::now());
            if let Some(waker) = state.waker.take() {
                waker.wake();
            }
        }
    }
}

/// A response body that keeps its request counted until it is sent (a
/// streamed answer is still being handled after its headers left).
struct Tracked {
    inner: Body,
    _handling: Handling,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

async fn serve_connection<I>(io: I, router: Router, limits: ConnLimits, requests: Arc<Requests>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    requests.serving();
    let service = TowerToHyperService::new(tower::service_fn(
        move |request: hyper::Request<hyper::body::Incoming>| {
            let handling = Handling::enter(&requests);
            let answer = tower::Service::call(&mut router.clone(), request);
            async move {
                let response = answer.await?;
                Ok::<_, std::convert::Infallible>(response.map(|inner| {
                    Body::new(Tracked {
                        inner,
                        _handling: handling,
                    })
                }))
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
        let requests = Arc::new(Requests::default());
        let stream = Idle::new(stream, &limits, Arc::clone(&requests));
        let router = router.clone();
        match &acceptor {
            None => {
                tokio::spawn(async move {
                    let _counted = counted;
                    serve_connection(stream, router, limits, requests).await;
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
                        Ok(Ok(tls)) => serve_connection(tls, router, limits, requests).await,
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
