//! Helpers for black-box tests: run the real `sdoh-gateway` binary, read its JSON logs, talk HTTP over real sockets.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_sdoh-gateway");

/// A running gateway process whose stderr log lines are collected as they come.
pub struct Gateway {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Gateway {
    /// Starts `sdoh-gateway <args>` in `cwd` with JSON logs.
    pub fn start(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Gateway {
        let mut command = Command::new(BIN);
        command
            .current_dir(cwd)
            .args(["--log-format", "json", "--log-level", "info", "--mllp-listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Black-box tests act as the gateway itself unless they test authentication (and set this to true).
        command.env("SDOH_GATEWAY_AUTH__REQUIRED", "false");
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start sdoh-gateway");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Gateway { child, lines, seen: Vec::new() }
    }

    /// Waits for a JSON log line whose `message` is `message`, returning it parsed.
    pub fn wait_for_log(&mut self, message: &str, within: Duration) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                        && v["message"] == message
                    {
                        return v;
                    }
                }
                Err(_) => panic!("no log line {message:?} within {within:?}; saw:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// Waits for the `ready` line and returns the HTTP address it reports.
    pub fn wait_ready(&mut self) -> SocketAddr {
        self.wait_ready_both().0
    }

    /// Waits for the `ready` line and returns the HTTP and MLLP addresses it reports.
    pub fn wait_ready_both(&mut self) -> (SocketAddr, SocketAddr) {
        let line = self.wait_for_log("ready", Duration::from_secs(30));
        let http = line["http_addr"].as_str().expect("http_addr").parse().expect("address");
        let mllp = line["mllp_addr"].as_str().expect("mllp_addr").parse().expect("MLLP address");
        (http, mllp)
    }

    pub fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        assert!(status.success());
    }

    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Drain remaining log lines for assertions.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(line);
                }
                return status;
            }
            assert!(Instant::now() < deadline, "gateway did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion and returns (status, stdout, stderr).
pub fn run(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let mut command = Command::new(BIN);
    command.current_dir(cwd).args(args).stdin(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("run sdoh-gateway");
    (out.status, String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// How long a test waits for something the gateway does in the background.
pub const WAIT_DEADLINE: Duration = Duration::from_secs(30);

/// Polls `probe` until it yields a value, failing the test after [`WAIT_DEADLINE`].
pub fn wait_for<T>(what: &str, probe: impl FnMut() -> Option<T>) -> T {
    wait_within(what, WAIT_DEADLINE, probe)
}

/// Polls `probe` until it yields a value, failing the test after `within`.
pub fn wait_within<T>(what: &str, within: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Registers an API client with `sdoh-gateway clients add --json` and returns what it prints (token, client_id,
/// role, organization).
pub fn add_client(dir: &Path, db_url: &str, name: &str, role: &str, organization: &str) -> serde_json::Value {
    let args =
        ["--database-url", db_url, "clients", "add", "--name", name, "--role", role, "--organization", organization];
    let (status, out, err) = run(dir, &[&args[..], &["--json"]].concat(), &[]);
    assert!(status.success(), "clients add: {err}");
    serde_json::from_str(out.trim()).expect("clients add --json prints one object")
}

/// An HTTP request with a client's bearer token.
pub fn http_as(
    addr: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String, String) {
    let auth = format!("Bearer {token}");
    let mut all = vec![("Authorization", auth.as_str())];
    all.extend_from_slice(headers);
    http_with(addr, method, path, &all, body)
}

/// A message of `conformance/v2fhir/` with its MSH-10 replaced (every run sends fresh control ids) and the given
/// text substitutions made.
pub fn conformance_message(name: &str, control_id: &str, replace: &[(&str, &str)]) -> Vec<u8> {
    let raw = std::fs::read_to_string(workspace_root().join("conformance/v2fhir").join(name)).expect("message file");
    let mut raw = raw.trim_end().replace("\r\n", "\r").replace('\n', "\r");
    for (from, to) in replace {
        raw = raw.replace(from, to);
    }
    let mut segments: Vec<String> = raw.split('\r').map(str::to_owned).collect();
    let mut msh: Vec<String> = segments[0].split('|').map(str::to_owned).collect();
    msh[9] = control_id.to_owned();
    segments[0] = msh.join("|");
    segments.join("\r").into_bytes()
}

/// Sends one message over MLLP and asserts it was accepted (MSA-1 = AA).
pub fn send_acked(addr: SocketAddr, message: &[u8]) {
    let mut stream = TcpStream::connect(addr).expect("connect to MLLP");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let ack = mllp::send(&mut stream, message).expect("an ACK");
    assert_eq!(mllp::field(&ack, "MSA", 1).as_deref(), Some("AA"), "{}", String::from_utf8_lossy(&ack));
}

/// `GET path`, asserting 200, as JSON.
pub fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, _, body) = http(addr, "GET", path, None);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

/// A minimal HTTP/1.1 exchange over a fresh connection: (status, headers, body).
pub fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String, String) {
    http_with(addr, method, path, &[], body)
}

/// Like [`http`], with extra request headers (`If-Match`, `Prefer`, ...).
pub fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.unwrap_or("");
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/fhir+json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    parse_response(&raw)
}

/// The value of a response header (case-insensitive name).
pub fn header_value(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

pub fn parse_response(raw: &[u8]) -> (u16, String, String) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    (status, head.to_owned(), body)
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary folder")
}

pub fn postgres_url() -> String {
    std::env::var("SDOH_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh schema in the test PostgreSQL database, returned as a URL whose connections use it.
pub async fn postgres_schema_url(base: &str) -> String {
    let schema = format!("e2e_{:016x}", {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(Instant::now())
    });
    let admin = store::Store::connect(&store::StoreOptions::new(postgres_url())).await.unwrap_or_else(|e| {
        panic!("PostgreSQL is required for these tests but {} could not be reached ({e})", postgres_url())
    });
    store::testing::execute(&admin, &format!("CREATE SCHEMA {schema}")).await.expect("create schema");
    admin.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// A TCP forwarder to a real server that a test can cut and restore, to make a database "go away" for real.
pub struct CuttableProxy {
    pub addr: SocketAddr,
    target: SocketAddr,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl CuttableProxy {
    pub async fn start(target: SocketAddr) -> CuttableProxy {
        let mut proxy = CuttableProxy { addr: "127.0.0.1:0".parse().unwrap(), target, stop: None, task: None };
        proxy.listen().await;
        proxy
    }

    async fn listen(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.expect("bind proxy");
        self.addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let target = self.target;
        self.stop = Some(stop);
        self.task = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            let mut accept_stopped = stopped.clone();
            loop {
                tokio::select! {
                    _ = accept_stopped.changed() => break,
                    accepted = listener.accept() => {
                        let Ok((mut client, _)) = accepted else { continue };
                        let mut conn_stopped = stopped.clone();
                        connections.spawn(async move {
                            let Ok(mut server) = tokio::net::TcpStream::connect(target).await else { return };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                                _ = conn_stopped.changed() => {}
                            }
                        });
                    }
                }
            }
            // Dropping the listener and every connection: the database is gone for the client.
            drop(listener);
            connections.shutdown().await;
        }));
    }

    /// Closes the listening socket and every forwarded connection.
    pub async fn cut(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Listens again on the same address.
    pub async fn restore(&mut self) {
        self.listen().await;
    }
}

/// MLLP over a plain TCP stream, written out here so the tests do not trust the code under test for framing.
pub mod mllp {
    use std::io::{Read, Write};

    pub const START: u8 = 0x0B;
    pub const END: [u8; 2] = [0x1C, 0x0D];

    pub fn frame(message: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(message.len() + 3);
        out.push(START);
        out.extend_from_slice(message);
        out.extend_from_slice(&END);
        out
    }

    /// Reads one framed reply; `None` when the peer closed the connection first.
    pub fn read_frame(stream: &mut impl Read) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match stream.read(&mut byte) {
                Ok(0) | Err(_) => return None,
                Ok(_) => buf.push(byte[0]),
            }
            if buf.ends_with(&END) {
                let start = buf.iter().position(|b| *b == START)?;
                return Some(buf[start + 1..buf.len() - 2].to_vec());
            }
        }
    }

    pub fn send(stream: &mut (impl Read + Write), message: &[u8]) -> Option<Vec<u8>> {
        stream.write_all(&frame(message)).ok()?;
        read_frame(stream)
    }

    /// A field of a segment in an ER7 message with standard delimiters, by HL7 numbering (MSH-1 is `|`).
    pub fn field(message: &[u8], segment: &str, n: usize) -> Option<String> {
        let text = String::from_utf8_lossy(message);
        let seg = text.split(['\r', '\n']).find(|s| s.starts_with(segment))?;
        let fields: Vec<&str> = seg.split('|').collect();
        let index = if segment == "MSH" { n - 1 } else { n };
        fields.get(index).map(|s| s.to_string())
    }
}

/// The MLLP tests' throwaway PKI (CA, server and client certificates), shared rather than written twice.
#[path = "../../crates/mllp/tests/common/pki.rs"]
pub mod pki;
