//! The MLLP client against the listener: one-shot sends, pipelining, split halves, timeouts.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{start, within};
use mllp::{Client, ClientConfig, ConnectionInfo, Connector, Error, ListenerConfig, Reply, handler_fn};

fn echo() -> impl mllp::Handler {
    handler_fn(|_c: ConnectionInfo, frame: Bytes| async move {
        match &frame[..] {
            b"silence" => Reply::Nothing,
            b"bye" => Reply::Close,
            _ => Reply::Send(frame),
        }
    })
}

#[tokio::test]
async fn send_waits_for_each_reply() {
    let server = start(ListenerConfig::default(), echo()).await;
    let mut client = within(Client::connect(server.addr, ClientConfig::default())).await.unwrap();
    for i in 0..20 {
        let msg = format!("MSH|^~\\&|{i}");
        assert_eq!(within(client.send(&msg)).await.unwrap(), Bytes::from(msg));
    }
    client.close().await.unwrap();
    server.stop().await.unwrap();
}

#[tokio::test]
async fn send_nowait_then_recv_pipelines_in_order() {
    let server = start(ListenerConfig { max_in_flight_per_connection: 8, ..Default::default() }, echo()).await;
    let mut client = within(Client::connect(server.addr, ClientConfig::default())).await.unwrap();
    for i in 0..50 {
        client.send_nowait(format!("m{i}")).await.unwrap();
    }
    for i in 0..50 {
        assert_eq!(within(client.recv()).await.unwrap(), Bytes::from(format!("m{i}")));
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn split_halves_keep_n_in_flight() {
    const TOTAL: usize = 500;
    const WINDOW: usize = 16;
    let server = start(ListenerConfig::default(), echo()).await;
    let connector = Connector::new(ClientConfig::default()).unwrap();
    let (mut tx, mut rx) = within(connector.connect(server.addr)).await.unwrap().split();
    let window = std::sync::Arc::new(tokio::sync::Semaphore::new(WINDOW));
    let w = window.clone();
    let writer = tokio::spawn(async move {
        for i in 0..TOTAL {
            w.acquire().await.unwrap().forget();
            tx.feed(format!("n{i}")).await.unwrap();
            tx.flush().await.unwrap();
        }
        tx
    });
    for i in 0..TOTAL {
        assert_eq!(within(rx.recv()).await.unwrap(), Bytes::from(format!("n{i}")));
        window.add_permits(1);
    }
    let mut tx = within(writer).await.unwrap();
    tx.close().await.unwrap();
    assert!(matches!(within(rx.recv()).await, Err(Error::Closed)));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn reply_timeout_and_close() {
    let server = start(ListenerConfig::default(), echo()).await;
    let config = ClientConfig { reply_timeout: Duration::from_millis(200), ..Default::default() };
    let mut client = within(Client::connect(server.addr, config)).await.unwrap();
    assert!(matches!(within(client.send("silence")).await, Err(Error::ReplyTimeout)));
    assert!(matches!(within(client.send("bye")).await, Err(Error::Closed)));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn connect_to_closed_port_fails() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    assert!(matches!(within(Client::connect(addr, ClientConfig::default())).await, Err(Error::Io(_))));
}

#[tokio::test]
async fn oversize_reply_is_a_frame_error() {
    let server = start(ListenerConfig::default(), echo()).await;
    let config = ClientConfig { max_frame_len: 8, ..Default::default() };
    let mut client = within(Client::connect(server.addr, config)).await.unwrap();
    assert_eq!(within(client.send("short")).await.unwrap(), Bytes::from_static(b"short"));
    assert!(matches!(within(client.send("much too long for it")).await, Err(Error::Frame(_))));
    server.stop().await.unwrap();
}
