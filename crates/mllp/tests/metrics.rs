//! The `mllp_*` metrics, checked with an in-memory recorder. One test per binary, because a
//! `metrics` recorder is process-wide.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{Pki, Raw, expect_eof, frame, start, within};
use metrics::{Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use mllp::{ConnectionInfo, ListenerConfig, Reply, TlsServerConfig, handler_fn};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Counter values and gauge values (as f64 bits), keyed by `name{label=value,...}`.
#[derive(Default)]
struct Store {
    values: Mutex<HashMap<String, Arc<Cell>>>,
}

#[derive(Default)]
struct Cell(AtomicU64);

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::SeqCst);
    }
}

impl GaugeFn for Cell {
    fn increment(&self, value: f64) {
        let _ =
            self.0.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| Some((f64::from_bits(b) + value).to_bits()));
    }
    fn decrement(&self, value: f64) {
        GaugeFn::increment(self, -value);
    }
    fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::SeqCst);
    }
}

impl Store {
    fn cell(&self, key: &Key) -> Arc<Cell> {
        let mut name = key.name().to_string();
        let labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
        if !labels.is_empty() {
            name = format!("{name}{{{}}}", labels.join(","));
        }
        self.values.lock().unwrap().entry(name).or_default().clone()
    }

    fn counter(&self, name: &str) -> u64 {
        self.values.lock().unwrap().get(name).map_or(0, |c| c.0.load(Ordering::SeqCst))
    }

    fn gauge(&self, name: &str) -> f64 {
        self.values.lock().unwrap().get(name).map_or(0.0, |c| f64::from_bits(c.0.load(Ordering::SeqCst)))
    }
}

struct TestRecorder(Arc<Store>);

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.0.cell(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.0.cell(key))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

fn echo() -> impl mllp::Handler {
    handler_fn(|_c: ConnectionInfo, frame: Bytes| async move { Reply::Send(frame) })
}

#[tokio::test]
async fn listener_emits_metrics() {
    let store = Arc::new(Store::default());
    metrics::set_global_recorder(TestRecorder(store.clone())).expect("first recorder");

    // Framing: garbage, a nested start, a good frame, then an oversize frame.
    let server = start(ListenerConfig { max_frame_len: 16, ..Default::default() }, echo()).await;
    let mut c = Raw::connect(server.addr).await;
    c.write(b"xyz\x0bpartial").await;
    c.send(b"ok").await;
    c.reply().await;
    c.write(&frame(&[b'z'; 64])).await;
    c.expect_closed().await;
    server.stop().await.unwrap();

    // Connection limit.
    let server = start(ListenerConfig { max_connections: 1, ..Default::default() }, echo()).await;
    let mut held = Raw::connect(server.addr).await;
    held.send(b"hold").await;
    held.reply().await;
    let mut refused = within(TcpStream::connect(server.addr)).await.unwrap();
    expect_eof(&mut refused).await;
    server.stop().await.unwrap();

    // Timeouts by kind; each server makes only one kind possible.
    let idle_only = ListenerConfig { idle_timeout: Duration::from_millis(100), ..Default::default() };
    let server = start(idle_only, echo()).await;
    let mut idle = Raw::connect(server.addr).await;
    idle.expect_closed().await;
    server.stop().await.unwrap();
    let read_only = ListenerConfig { read_timeout: Duration::from_millis(100), ..Default::default() };
    let server = start(read_only, echo()).await;
    let mut slow = Raw::connect(server.addr).await;
    slow.write(b"\x0bnever finished").await;
    slow.expect_closed().await;
    server.stop().await.unwrap();

    // TLS handshake failure: plain MLLP to a TLS port.
    let pki = Pki::generate();
    let tls = TlsServerConfig {
        cert_chain_pem: pki.server_cert.clone(),
        key_pem: pki.server_key.clone(),
        client_ca_pem: None,
    };
    let server = start(ListenerConfig { tls: Some(tls), ..Default::default() }, echo()).await;
    let mut plain = within(TcpStream::connect(server.addr)).await.unwrap();
    plain.write_all(&frame(b"MSH|plain")).await.unwrap();
    expect_eof(&mut plain).await;
    server.stop().await.unwrap();

    // Every server has been stopped, so every connection task has finished and emitted.
    assert_eq!(store.counter("mllp_discarded_bytes_total"), 3 + 7);
    assert_eq!(store.counter("mllp_frame_errors_total{reason=nested_start}"), 1);
    assert_eq!(store.counter("mllp_frame_errors_total{reason=too_large}"), 1);
    assert_eq!(store.counter("mllp_frames_received_total"), 2);
    assert_eq!(store.counter("mllp_connections_refused_total"), 1);
    assert_eq!(store.counter("mllp_connections_accepted_total"), 5);
    assert_eq!(store.counter("mllp_timeouts_total{kind=idle}"), 1);
    assert_eq!(store.counter("mllp_timeouts_total{kind=read}"), 1);
    assert_eq!(store.counter("mllp_tls_handshake_failures_total"), 1);
    assert_eq!(store.gauge("mllp_connections_open"), 0.0);
}
