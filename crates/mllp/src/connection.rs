//! One served connection: reads frames while earlier ones are still being handled
//! (pipelining), writes replies strictly in arrival order, and enforces the timeouts.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures::FutureExt;
use futures::stream::{FuturesOrdered, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::{JoinError, JoinHandle};
use tokio::time::{Duration, Instant};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::codec::{MllpCodec, encode_frame};
use crate::server::{ConnectionInfo, Handler, ListenerConfig, Reply};
use crate::telemetry;

/// Read buffer headroom; HL7 messages are typically a few KiB.
const READ_CHUNK: usize = 8 * 1024;

pub(crate) struct Connection {
    info: Arc<ConnectionInfo>,
    codec: MllpCodec,
    read_timeout: Duration,
    idle_timeout: Duration,
    write_timeout: Duration,
    max_in_flight: usize,
    token: CancellationToken,
}

/// Why the connection loop ended; only for the log line.
#[derive(Clone, Copy)]
enum End {
    Done,
    Timeout(&'static str),
    HandlerClose,
    HandlerPanic,
    WriteError,
    ReadError,
}

impl End {
    fn label(self) -> &'static str {
        match self {
            End::Done => "done",
            End::Timeout(kind) => kind,
            End::HandlerClose => "handler_close",
            End::HandlerPanic => "handler_panic",
            End::WriteError => "write_error",
            End::ReadError => "read_error",
        }
    }
}

impl Connection {
    pub(crate) fn new(info: ConnectionInfo, config: &ListenerConfig, token: CancellationToken) -> Self {
        Self {
            info: Arc::new(info),
            codec: MllpCodec::new(config.max_frame_len).with_metrics(true),
            read_timeout: config.read_timeout,
            idle_timeout: config.idle_timeout,
            write_timeout: config.write_timeout,
            max_in_flight: config.max_in_flight_per_connection,
            token,
        }
    }

    pub(crate) async fn run<S, H>(mut self, stream: S, handler: Arc<H>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
        H: Handler,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut out = BytesMut::new();
        let mut in_flight: FuturesOrdered<InFlight> = FuturesOrdered::new();
        // Reading stops for good on EOF, a framing error, a read error or shutdown; frames
        // already received are still answered after that.
        let mut reading = true;
        let mut idle_since = Instant::now();
        let mut frame_started: Option<Instant> = None;
        let mut frames: u64 = 0;
        let mut bytes_in: u64 = 0;
        let mut bytes_out: u64 = 0;

        let end = loop {
            while reading && in_flight.len() < self.max_in_flight {
                match self.codec.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        telemetry::frame_received();
                        frames += 1;
                        frame_started = None;
                        idle_since = Instant::now();
                        let handler = handler.clone();
                        let info = self.info.clone();
                        in_flight.push_back(InFlight(tokio::spawn(async move { handler.handle(&info, frame).await })));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        debug!(peer = %self.info.peer, connection_id = self.info.connection_id,
                            reason = e.reason(), "MLLP framing error; closing after in-flight replies");
                        reading = false;
                    }
                }
            }
            if self.codec.in_frame() {
                // Not reset by a nested start block: resending start blocks must not keep a
                // connection alive past the read timeout.
                frame_started.get_or_insert_with(Instant::now);
            } else {
                frame_started = None;
            }
            if !reading && in_flight.is_empty() {
                break End::Done;
            }

            let can_read = reading && in_flight.len() < self.max_in_flight;
            // Timers only run while we are waiting on the peer: a full pipeline is our delay.
            let deadline = match (can_read, frame_started) {
                (false, _) => None,
                (true, Some(t)) => Some((t + self.read_timeout, "read")),
                (true, None) if in_flight.is_empty() => Some((idle_since + self.idle_timeout, "idle")),
                (true, None) => None,
            };
            if can_read && buf.capacity() - buf.len() < READ_CHUNK / 2 {
                buf.reserve(READ_CHUNK);
            }

            tokio::select! {
                biased;
                () = self.token.cancelled(), if reading => {
                    debug!(peer = %self.info.peer, connection_id = self.info.connection_id,
                        in_flight = in_flight.len(), "MLLP shutdown: answering in-flight frames");
                    reading = false;
                }
                Some(first) = in_flight.next(), if !in_flight.is_empty() => {
                    let mut close = Self::take_reply(first, &mut out);
                    // Coalesce replies that are already done into one write.
                    while close.is_none() {
                        match in_flight.next().now_or_never() {
                            Some(Some(next)) => close = Self::take_reply(next, &mut out),
                            _ => break,
                        }
                    }
                    if !out.is_empty() {
                        let n = out.len();
                        match tokio::time::timeout(self.write_timeout, write_flush(&mut wr, &out)).await {
                            Ok(Ok(())) => bytes_out += n as u64,
                            Ok(Err(e)) => {
                                debug!(peer = %self.info.peer, connection_id = self.info.connection_id,
                                    error_kind = ?e.kind(), "MLLP write failed");
                                break End::WriteError;
                            }
                            Err(_) => {
                                telemetry::timeout("write");
                                break End::Timeout("write");
                            }
                        }
                        out.clear();
                    }
                    idle_since = Instant::now();
                    if let Some(end) = close {
                        break end;
                    }
                }
                read = rd.read_buf(&mut buf), if can_read => match read {
                    Ok(0) => {
                        reading = false;
                        if self.codec.in_frame() {
                            telemetry::frame_error("truncated");
                            debug!(peer = %self.info.peer, connection_id = self.info.connection_id,
                                "MLLP peer closed in the middle of a frame");
                        }
                    }
                    Ok(n) => bytes_in += n as u64,
                    Err(e) => {
                        debug!(peer = %self.info.peer, connection_id = self.info.connection_id,
                            error_kind = ?e.kind(), "MLLP read failed");
                        reading = false;
                        if in_flight.is_empty() {
                            break End::ReadError;
                        }
                    }
                },
                () = sleep_until(deadline.map(|d| d.0)), if deadline.is_some() => {
                    let kind = deadline.map_or("idle", |d| d.1);
                    telemetry::timeout(kind);
                    break End::Timeout(kind);
                }
            }
        };

        // Best effort: sends TLS close_notify / FIN; the peer may already be gone.
        let _ = tokio::time::timeout(self.write_timeout, wr.shutdown()).await;
        debug!(peer = %self.info.peer, connection_id = self.info.connection_id, frames, bytes_in, bytes_out,
            discarded_bytes = self.codec.discarded_bytes(), end = end.label(), "MLLP connection closed");
    }

    /// Append the reply's frame to `out`; `Some` means the connection must close after writing.
    fn take_reply(result: Result<Reply, JoinError>, out: &mut BytesMut) -> Option<End> {
        match result {
            Ok(Reply::Send(payload)) => {
                encode_frame(&payload, out);
                None
            }
            Ok(Reply::Nothing) => None,
            Ok(Reply::Close) => Some(End::HandlerClose),
            Err(e) => {
                if e.is_panic() {
                    warn!("MLLP handler panicked; closing connection");
                }
                Some(End::HandlerPanic)
            }
        }
    }
}

/// A handler call running as its own task, so frames of one connection are handled in parallel
/// and a panicking handler cannot take the connection task down. Aborted when dropped: once a
/// connection is gone (closed, timed out, or cut off by the drain timeout) nobody can receive
/// the reply, and `Server::run` returning should mean no handler work is left behind.
struct InFlight(JoinHandle<Reply>);

impl Future for InFlight {
    type Output = Result<Reply, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn write_flush<W: AsyncWrite + Unpin>(wr: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    wr.write_all(bytes).await?;
    wr.flush().await
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
