//! A query answer streamed to its client as its rows are read. The
//! statement runs on a blocking thread that writes the answer's JSON into
//! pieces of about [`PIECE`] bytes and hands each to the connection through
//! a channel of [`QUEUED`] pieces: a reader slower than the statement
//! blocks the statement (its deadline is postponed by the wait), so an
//! answer in flight holds a few pieces of memory, not the whole answer.
//!
//! The status is chosen when the first piece is ready: a statement that
//! fails before its first row gets its error status (403, 400, 408, 503),
//! and an answer that fits in one piece is sent whole with its length.
//! Once rows were sent (status 200), a failure cannot change the status:
//! the answer then ends `"truncated": true, "error": "..."` (the fleet
//! client reports that node as failed with the sentence). An answer still
//! being sent [`SEND_TIMEOUT`] after its first piece is abandoned: its
//! statement stops and the connection is cut before the end of the body
//! (the client sees an incomplete answer).

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::body::{Bytes, HttpBody};
use tokio::sync::mpsc::{self, error::SendTimeoutError};

use super::{CancelOnDrop, SEND_TIMEOUT};
use crate::readonly::QueryError;

/// Bytes of answer gathered before they are handed to the connection.
pub const PIECE: usize = 64 * 1024;
/// Pieces waiting for the connection at most; past them the statement
/// waits for its reader.
pub const QUEUED: usize = 4;
/// Longest rows already read wait in a partial piece (a statement that
/// finds rows slowly still shows them as it goes).
const FLUSH_AFTER: Duration = Duration::from_millis(100);

/// What the statement's thread hands to the connection.
#[derive(Debug)]
pub enum Piece {
    /// A piece of the answer; more follow.
    More(Bytes),
    /// The answer's last piece (or the whole answer, when it is the first).
    Last(Bytes),
    /// The statement failed before anything was sent: an error status.
    Failed(QueryError),
}

/// Pieces of an answer written as they come: raw JSON text, or a value.
pub mod erased {
    /// Something that writes itself as JSON text into a buffer.
    pub trait Json {
        /// Appends the JSON text.
        fn write(&self, out: &mut Vec<u8>) -> serde_json::Result<()>;
    }

    impl Json for &str {
        fn write(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
            out.extend_from_slice(self.as_bytes());
            Ok(())
        }
    }

    impl Json for serde_json::Value {
        fn write(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
            serde_json::to_writer(out, self)
        }
    }
}

/// The statement's side: writes the answer's JSON and hands it over in
/// pieces, waiting (within the send deadline) when the reader is behind.
#[derive(Debug)]
pub struct Writer {
    tx: mpsc::Sender<Piece>,
    runtime: tokio::runtime::Handle,
    buf: Vec<u8>,
    /// When the writer was made (the answer's `elapsed_ms` on failure).
    started: Instant,
    /// When the last piece went out (or the writer was made).
    flushed: Instant,
    /// The first piece went out: the status is 200 now.
    sent: bool,
    /// The reader left or was too slow: nothing more is sent.
    abandoned: bool,
    /// The whole answer must be handed over by then (set at the first piece).
    deadline: Option<Instant>,
}

impl Writer {
    /// A writer handing pieces to `tx`; `runtime` is the API's (the writer
    /// runs on one of its blocking threads).
    #[must_use]
    pub fn new(tx: mpsc::Sender<Piece>, runtime: tokio::runtime::Handle) -> Self {
        let now = Instant::now();
        Self {
            tx,
            runtime,
            buf: Vec::with_capacity(PIECE + 4096),
            started: now,
            flushed: now,
            sent: false,
            abandoned: false,
            deadline: None,
        }
    }

    /// Appends JSON text to the current piece.
    pub fn write(&mut self, v: &dyn erased::Json) -> Result<(), QueryError> {
        v.write(&mut self.buf)
            .map_err(|e| QueryError::Sql(format!("cannot encode the answer: {e}")))
    }

    /// After a row: hands the piece over when it is full or its rows have
    /// waited long enough. Returns how long the reader held the statement
    /// up (to postpone its deadline by); an error stops the statement.
    pub fn row_done(&mut self) -> Result<Duration, QueryError> {
        if self.buf.len() < PIECE && self.flushed.elapsed() < FLUSH_AFTER {
            return Ok(Duration::ZERO);
        }
        let piece = Piece::More(Bytes::from(std::mem::take(&mut self.buf)));
        self.buf.reserve(PIECE + 4096);
        self.send(piece)
    }

    /// Hands `piece` over, waiting for the reader at most until the send
    /// deadline; how long it waited.
    fn send(&mut self, piece: Piece) -> Result<Duration, QueryError> {
        let now = Instant::now();
        let deadline = *self.deadline.get_or_insert(now + SEND_TIMEOUT);
        let sent = self.runtime.block_on(
            self.tx
                .send_timeout(piece, deadline.saturating_duration_since(now)),
        );
        self.flushed = Instant::now();
        match sent {
            Ok(()) => {
                self.sent = true;
                Ok(self.flushed - now)
            }
            Err(SendTimeoutError::Closed(_) | SendTimeoutError::Timeout(_)) => {
                // The client left, or reads too slowly: stop the statement
                // (dropping the sender cuts the answer short).
                self.abandoned = true;
                Err(QueryError::Cancelled)
            }
        }
    }

    /// Ends the answer after its statement: the closing fields, or the
    /// error as a status (nothing sent yet) or as the answer's `error`
    /// field (rows already sent).
    pub fn finish(mut self, result: &Result<(bool, f64), QueryError>) {
        if self.abandoned {
            return;
        }
        let end = match result {
            Ok((truncated, elapsed_ms)) => self.close(*truncated, *elapsed_ms, None),
            Err(e) if !self.sent => {
                let _ = self.send(Piece::Failed(clone_error(e)));
                return;
            }
            Err(e) => {
                let elapsed_ms = self.started.elapsed().as_secs_f64() * 1e3;
                self.close(true, elapsed_ms, Some(&e.to_string()))
            }
        };
        match end {
            Ok(()) => {
                let piece = Piece::Last(Bytes::from(std::mem::take(&mut self.buf)));
                let _ = self.send(piece);
            }
            Err(e) if !self.sent => {
                let _ = self.send(Piece::Failed(e));
            }
            Err(_) => {} // dropping the sender cuts the answer short
        }
    }

    /// Writes the fields after the rows.
    fn close(&mut self, truncated: bool, elapsed_ms: f64, error: Option<&str>) -> Result<(), QueryError> {
        self.write(&"],\"truncated\":")?;
        self.write(&serde_json::Value::from(truncated))?;
        self.write(&",\"elapsed_ms\":")?;
        self.write(&serde_json::json!(elapsed_ms))?;
        if let Some(error) = error {
            self.write(&",\"error\":")?;
            self.write(&serde_json::Value::from(error))?;
        }
        self.write(&"}")
    }
}

/// A copy of a query error for the status (the original stays for the
/// metrics); an unopenable database keeps its sentence.
fn clone_error(e: &QueryError) -> QueryError {
    match e {
        QueryError::Denied(s) => QueryError::Denied(s.clone()),
        QueryError::Timeout(d) => QueryError::Timeout(*d),
        QueryError::Sql(s) => QueryError::Sql(s.clone()),
        QueryError::Busy => QueryError::Busy,
        QueryError::Cancelled => QueryError::Cancelled,
        QueryError::Open { .. } | QueryError::NotIngero { .. } => QueryError::Sql(e.to_string()),
    }
}

/// The connection's side: the pieces as a response body. Dropping it (the
/// client left, the connection was cut) stops the statement.
#[derive(Debug)]
pub struct Streamed {
    first: Option<Bytes>,
    rx: mpsc::Receiver<Piece>,
    ended: bool,
    _cancel: CancelOnDrop,
}

impl Streamed {
    /// The body that starts with `first` and goes on with what `rx` brings.
    #[must_use]
    pub fn new(first: Bytes, rx: mpsc::Receiver<Piece>, cancel: CancelOnDrop) -> Self {
        Self {
            first: Some(first),
            rx,
            ended: false,
            _cancel: cancel,
        }
    }
}

impl HttpBody for Streamed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(hyper::body::Frame::data(first))));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Piece::More(b))) => Poll::Ready(Some(Ok(hyper::body::Frame::data(b)))),
            Poll::Ready(Some(Piece::Last(b))) => {
                self.ended = true;
                Poll::Ready(Some(Ok(hyper::body::Frame::data(b))))
            }
            // An error after the first piece is written into the answer;
            // a sender gone without the last piece gave up on the answer.
            Poll::Ready(Some(Piece::Failed(_)) | None) => Poll::Ready(Some(Err(axum::Error::new(
                "the answer was abandoned before its end",
            )))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.first.is_none()
    }
}
