//! Listener behaviour over real TCP sockets: replies, pipelining order, limits, timeouts and shutdown.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{Raw, expect_eof, frame, start, within};
use mllp::{ConnectionInfo, Handler, ListenerConfig, Reply, handler_fn};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};

fn echo() -> impl Handler {
    handler_fn(|_conn: ConnectionInfo, frame: Bytes| async move { Reply::Send(frame) })
}

fn parse_index(frame: &[u8]) -> usize {
    std::str::from_utf8(frame).unwrap().parse().unwrap()
}

#[tokio::test]
async fn echo_answers_each_frame() {
    let server = start(ListenerConfig::default(), echo()).await;
    let mut c = Raw::connect(server.addr).await;
    for msg in [&b"MSH|^~\\&|A|B\rPID|1"[..], b"", b"third"] {
        c.send(msg).await;
        assert_eq!(&c.reply().await[..], msg);
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn connection_info_is_passed_to_handler() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = start(
        ListenerConfig::default(),
        handler_fn(move |conn: ConnectionInfo, _f: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(conn);
                Reply::Send(Bytes::from_static(b"ok"))
            }
        }),
    )
    .await;
    let mut a = Raw::connect(server.addr).await;
    let mut b = Raw::connect(server.addr).await;
    a.send(b"x").await;
    a.reply().await;
    b.send(b"y").await;
    b.reply().await;
    let ia = rx.recv().await.unwrap();
    let ib = rx.recv().await.unwrap();
    assert_eq!(ia.peer, a.wr.local_addr().unwrap());
    assert_eq!(ib.peer, b.wr.local_addr().unwrap());
    assert_ne!(ia.connection_id, ib.connection_id);
    assert_eq!(ia.tls_client_subject, None);
    server.stop().await.unwrap();
}

/// Frame i's handler cannot finish before frame i+1's has, so the handler completes all 100 in
/// reverse order; the replies must still come back in arrival order.
struct Reversed {
    done: Vec<Semaphore>,
    finished: Mutex<Vec<usize>>,
}

impl Handler for Reversed {
    async fn handle(&self, _conn: &ConnectionInfo, frame: Bytes) -> Reply {
        let i = parse_index(&frame);
        if let Some(next) = self.done.get(i + 1) {
            next.acquire().await.unwrap().forget();
        }
        self.finished.lock().unwrap().push(i);
        self.done[i].add_permits(1);
        Reply::Send(frame)
    }
}

#[tokio::test]
async fn pipelined_frames_answered_in_order_when_finished_out_of_order() {
    const N: usize = 100;
    let handler =
        Arc::new(Reversed { done: (0..N).map(|_| Semaphore::new(0)).collect(), finished: Mutex::new(vec![]) });
    let config = ListenerConfig { max_in_flight_per_connection: 128, ..Default::default() };
    let server = mllp::Server::bind("127.0.0.1:0", config).await.unwrap();
    let addr = server.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(server.run(handler.clone(), async move {
        let _ = stop_rx.await;
    }));

    let mut c = Raw::connect(addr).await;
    let all: Vec<u8> = (0..N).flat_map(|i| frame(i.to_string().as_bytes())).collect();
    c.write(&all).await;
    for i in 0..N {
        assert_eq!(parse_index(&c.reply().await), i);
    }
    let finished = handler.finished.lock().unwrap().clone();
    assert_eq!(finished, (0..N).rev().collect::<Vec<_>>(), "handler really finished out of order");

    let _ = stop_tx.send(());
    within(run).await.unwrap().unwrap();
}

#[tokio::test]
async fn pipelining_beyond_in_flight_limit_keeps_order() {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (in_flight2, peak2) = (in_flight.clone(), peak.clone());
    let handler = handler_fn(move |_c: ConnectionInfo, frame: Bytes| {
        let (in_flight, peak) = (in_flight2.clone(), peak2.clone());
        async move {
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            // Uneven work so completion order differs from arrival order.
            let i = parse_index(&frame);
            tokio::time::sleep(Duration::from_millis(((i * 7) % 5) as u64)).await;
            in_flight.fetch_sub(1, Ordering::SeqCst);
            Reply::Send(frame)
        }
    });
    let server = start(ListenerConfig { max_in_flight_per_connection: 4, ..Default::default() }, handler).await;
    let mut c = Raw::connect(server.addr).await;
    let all: Vec<u8> = (0..200).flat_map(|i: usize| frame(i.to_string().as_bytes())).collect();
    c.write(&all).await;
    for i in 0..200 {
        assert_eq!(parse_index(&c.reply().await), i);
    }
    assert!(peak.load(Ordering::SeqCst) <= 4, "in-flight limit respected");
    assert!(peak.load(Ordering::SeqCst) >= 2, "frames were actually handled concurrently");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn garbage_and_nested_start_still_answer_next_frame() {
    let server = start(ListenerConfig::default(), echo()).await;
    let mut c = Raw::connect(server.addr).await;
    c.write(b"\r\nnoise before any frame").await;
    c.write(b"\x0bpartial frame abandoned").await;
    c.send(b"whole").await;
    assert_eq!(&c.reply().await[..], b"whole");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn reply_nothing_and_close() {
    let handler = handler_fn(|_c: ConnectionInfo, frame: Bytes| async move {
        match &frame[..] {
            b"skip" => Reply::Nothing,
            b"close" => Reply::Close,
            _ => Reply::Send(frame),
        }
    });
    let server = start(ListenerConfig::default(), handler).await;
    let mut c = Raw::connect(server.addr).await;
    let all = [frame(b"a"), frame(b"skip"), frame(b"b"), frame(b"close"), frame(b"c")].concat();
    c.write(&all).await;
    assert_eq!(&c.reply().await[..], b"a");
    assert_eq!(&c.reply().await[..], b"b");
    c.expect_closed().await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn handler_panic_closes_only_that_connection() {
    let handler = handler_fn(|_c: ConnectionInfo, frame: Bytes| async move {
        if &frame[..] == b"boom" {
            panic!("handler bug");
        }
        Reply::Send(frame)
    });
    let server = start(ListenerConfig::default(), handler).await;
    let mut good = Raw::connect(server.addr).await;
    let mut bad = Raw::connect(server.addr).await;
    bad.send(b"boom").await;
    bad.expect_closed().await;
    good.send(b"still here").await;
    assert_eq!(&good.reply().await[..], b"still here");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn connections_over_limit_are_closed_at_once() {
    let server = start(ListenerConfig { max_connections: 2, ..Default::default() }, echo()).await;
    let mut a = Raw::connect(server.addr).await;
    let mut b = Raw::connect(server.addr).await;
    // A round trip on each proves both hold a slot before the third arrives.
    a.send(b"a").await;
    a.reply().await;
    b.send(b"b").await;
    b.reply().await;

    let mut c = within(TcpStream::connect(server.addr)).await.unwrap();
    expect_eof(&mut c).await;

    a.send(b"a2").await;
    assert_eq!(&a.reply().await[..], b"a2");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn idle_timeout_closes() {
    let config = ListenerConfig { idle_timeout: Duration::from_millis(200), ..Default::default() };
    let server = start(config, echo()).await;
    let mut c = Raw::connect(server.addr).await;
    c.send(b"one").await;
    c.reply().await;
    let started = tokio::time::Instant::now();
    c.expect_closed().await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn read_timeout_closes_frame_without_end_block() {
    let config = ListenerConfig {
        read_timeout: Duration::from_millis(200),
        idle_timeout: Duration::from_secs(120),
        ..Default::default()
    };
    let server = start(config, echo()).await;
    let mut c = Raw::connect(server.addr).await;
    c.write(b"\x0bMSH|never ends").await;
    c.expect_closed().await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn oversize_frame_closes_after_answering_earlier_frames() {
    let config = ListenerConfig { max_frame_len: 16, ..Default::default() };
    let server = start(config, echo()).await;
    let mut c = Raw::connect(server.addr).await;
    let all = [frame(b"small"), frame(&[b'x'; 100])].concat();
    c.write(&all).await;
    assert_eq!(&c.reply().await[..], b"small");
    c.expect_closed().await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn oversize_frame_without_end_closes() {
    let config = ListenerConfig { max_frame_len: 1024, ..Default::default() };
    let server = start(config, echo()).await;
    let mut c = Raw::connect(server.addr).await;
    let mut big = vec![0x0b];
    big.extend(std::iter::repeat_n(b'y', 4096));
    c.write(&big).await;
    c.expect_closed().await;
    server.stop().await.unwrap();
}

/// Handlers hold every frame until released, so shutdown arrives while frames are in flight.
struct Gated {
    started: mpsc::UnboundedSender<()>,
    gate: Semaphore,
}

impl Handler for Gated {
    async fn handle(&self, _conn: &ConnectionInfo, frame: Bytes) -> Reply {
        let _ = self.started.send(());
        self.gate.acquire().await.unwrap().forget();
        Reply::Send(frame)
    }
}

#[tokio::test]
async fn graceful_shutdown_answers_in_flight_then_closes() {
    let (tx, mut started) = mpsc::unbounded_channel();
    let handler = Arc::new(Gated { started: tx, gate: Semaphore::new(0) });
    let server = mllp::Server::bind("127.0.0.1:0", ListenerConfig::default()).await.unwrap();
    let addr = server.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(server.run(handler.clone(), async move {
        let _ = stop_rx.await;
    }));

    let mut c = Raw::connect(addr).await;
    c.write(&[frame(b"1"), frame(b"2"), frame(b"3")].concat()).await;
    for _ in 0..3 {
        within(started.recv()).await.unwrap();
    }
    stop_tx.send(()).unwrap();
    handler.gate.add_permits(3);

    for expected in [&b"1"[..], b"2", b"3"] {
        assert_eq!(&c.reply().await[..], expected);
    }
    c.expect_closed().await;
    within(run).await.unwrap().unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "listener no longer accepts");
}

/// Never finishes; tells the test when its future is dropped (the task was aborted).
struct Stuck {
    started: mpsc::UnboundedSender<()>,
    dropped: mpsc::UnboundedSender<()>,
}

struct SignalOnDrop(mpsc::UnboundedSender<()>);

impl Drop for SignalOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

impl Handler for Stuck {
    async fn handle(&self, _conn: &ConnectionInfo, _frame: Bytes) -> Reply {
        let _guard = SignalOnDrop(self.dropped.clone());
        let _ = self.started.send(());
        std::future::pending::<Reply>().await
    }
}

#[tokio::test]
async fn drain_timeout_bounds_shutdown_and_aborts_handlers() {
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel();
    let handler = Stuck { started: started_tx, dropped: dropped_tx };
    let config = ListenerConfig { drain_timeout: Duration::from_millis(200), ..Default::default() };
    let mut server = start(config, handler).await;
    let mut c = Raw::connect(server.addr).await;
    c.send(b"stuck").await;
    within(started.recv()).await.unwrap();
    server.trigger_shutdown();
    within(server.handle).await.unwrap().unwrap();
    c.expect_closed().await;
    within(dropped.recv()).await.expect("handler future dropped after drain timeout");
}

#[tokio::test]
async fn invalid_config_is_rejected() {
    let err =
        mllp::Server::bind("127.0.0.1:0", ListenerConfig { max_in_flight_per_connection: 0, ..Default::default() })
            .await
            .unwrap_err();
    assert!(matches!(err, mllp::Error::InvalidConfig(_)));
}
