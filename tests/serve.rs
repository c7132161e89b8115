//! Black-box tests of `sdoh-gateway serve`, `migrate` and `check-config`: the real binary, real sockets, real databases.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn zero_configuration_serve_creates_sqlite_in_data_and_answers_health_and_metrics() {
    let dir = temp_dir();
    let mut gw = Gateway::start(dir.path(), &["--http-listen", "127.0.0.1:0"], &[]);
    let addr = gw.wait_ready();

    let (status, _, body) = http(addr, "GET", "/health/live", None);
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = http(addr, "GET", "/health/ready", None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"ready\""));
    let (status, _, _) = http(addr, "GET", "/no/such/route", None);
    assert_eq!(status, 404);

    let (status, head, metrics) = http(addr, "GET", "/metrics", None);
    assert_eq!(status, 200);
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain"), "{head}");
    for expected in [
        "sdoh_gateway_build_info{",
        "process_uptime_seconds ",
        "http_requests_total{method=\"GET\",route=\"/health/ready\",status=\"200\"} 1",
        "http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"} 1",
        "http_request_duration_seconds_bucket{method=\"GET\",route=\"/health/live\",status=\"200\",le=",
        "db_pool_connections{pool=\"write\",state=\"idle\"}",
        "db_pool_max_connections{pool=\"read\"} 8",
        "db_up 1",
    ] {
        assert!(metrics.contains(expected), "metrics lack {expected:?}:\n{metrics}");
    }

    // ./data/gateway.db, in WAL mode (file header bytes 18 and 19 are 2 for WAL).
    let db = dir.path().join("data/gateway.db");
    let mut header = [0u8; 20];
    std::fs::File::open(&db).expect("data/gateway.db exists").read_exact(&mut header).unwrap();
    assert_eq!(&header[..16], b"SQLite format 3\0");
    assert_eq!((header[18], header[19]), (2, 2), "WAL mode");

    gw.terminate();
    let status = gw.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}");
    assert!(gw.seen.iter().any(|l| l.contains("\"stopped\"")));
}

#[test]
fn sigterm_finishes_an_in_flight_request_then_exits_zero() {
    let dir = temp_dir();
    let mut gw = Gateway::start(dir.path(), &["--http-listen", "127.0.0.1:0"], &[]);
    let addr = gw.wait_ready();

    // A request whose headers are half sent is in flight when the signal arrives.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(b"GET /health/live HTTP/1.1\r\nHost: gw\r\n").unwrap();
    // Connections are accepted in order: once a later one is answered, the half-sent one is being served.
    let (status, _, _) = http(addr, "GET", "/health/live", None);
    assert_eq!(status, 200);

    gw.terminate();
    gw.wait_for_log("shutdown requested: no new connections; finishing in-flight work", Duration::from_secs(10));
    stream.write_all(b"\r\n").unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let (status, _, body) = parse_response(&raw);
    assert_eq!(status, 200, "the in-flight request was answered: {body}");

    let status = gw.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}");
    // Stopped accepting: a new connection is refused once the process is gone.
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn configuration_layers_apply_in_order_and_secrets_are_redacted() {
    let dir = temp_dir();
    let file = dir.path().join("gw.toml");
    std::fs::write(
        &file,
        "[log]\nlevel = \"debug\"\n[http]\nlisten = \"127.0.0.1:9000\"\n[database]\nurl = \"sqlite:./from-file.db\"\nmax_connections = 3\n",
    )
    .unwrap();
    let (status, out, err) = run(
        dir.path(),
        &[
            "--config",
            file.to_str().unwrap(),
            "--database-url",
            "postgres://app:s3cret@db.example:5432/sdoh",
            "check-config",
        ],
        &[("SDOH_GATEWAY_HTTP__LISTEN", "127.0.0.1:9100"), ("SDOH_GATEWAY_DATABASE__MAX_CONNECTIONS", "5")],
    );
    assert!(status.success(), "{err}");
    let shown: toml::Value = toml::from_str(&out).expect("check-config prints TOML");
    assert_eq!(shown["log"]["level"].as_str(), Some("debug"), "file applies");
    assert_eq!(shown["http"]["listen"].as_str(), Some("127.0.0.1:9100"), "environment overrides file");
    assert_eq!(shown["database"]["max_connections"].as_integer(), Some(5));
    assert_eq!(
        shown["database"]["url"].as_str(),
        Some("postgres://app:***@db.example:5432/sdoh"),
        "flag wins, redacted"
    );
    assert!(!out.contains("s3cret"));
    assert!(shown["workers"]["lease_secs"].as_integer().is_some(), "defaults fill the rest");
}

#[test]
fn bad_configuration_names_the_key_and_exits_2() {
    let dir = temp_dir();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let malformed = write("malformed.toml", "[http\nlisten = 1");
    let unknown = write("unknown.toml", "[http]\nlisten = \"127.0.0.1:1\"\nlisen_typo = 3\n");
    let bad_type = write("type.toml", "[database]\nmax_connections = \"many\"\n");
    let bad_addr = write("addr.toml", "[http]\nlisten = \"localhost-ish\"\n");
    // (arguments, environment, what stderr must name)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["--config", &malformed, "check-config"], vec![], "malformed.toml"),
        (vec!["--config", &unknown, "check-config"], vec![], "lisen_typo"),
        (vec!["--config", &bad_type, "check-config"], vec![], "database.max_connections"),
        (vec!["--config", &bad_addr, "check-config"], vec![], "http.listen"),
        (vec!["--config", "/nonexistent/gw.toml", "check-config"], vec![], "/nonexistent/gw.toml"),
        (vec!["--database-url", "mysql://x/y", "check-config"], vec![], "database.url"),
        (vec!["--log-format", "xml", "check-config"], vec![], "log.format"),
        (vec!["--log-level", "info,=[", "serve"], vec![], "log.level"),
        (vec!["check-config"], vec![("SDOH_GATEWAY_DATABASE__MAX_CONNECTIONS", "abc")], "database.max_connections"),
        (vec!["check-config"], vec![("SDOH_GATEWAY_NOPE__KEY", "1")], "nope"),
        (vec!["serve"], vec![("SDOH_GATEWAY_WORKERS__MAX_ATTEMPTS", "0")], "workers.max_attempts"),
    ];
    for (args, env, expected) in cases {
        let (status, _, err) = run(dir.path(), &args, &env);
        assert_eq!(status.code(), Some(2), "{args:?} {env:?}: {err}");
        assert!(err.contains(expected), "{args:?} {env:?}: stderr should name {expected:?}: {err}");
    }
}

#[test]
fn an_unreachable_database_fails_start_up_quickly_and_clearly() {
    let dir = temp_dir();
    let started = Instant::now();
    let (status, _, err) = run(
        dir.path(),
        &["--database-url", "postgres://postgres@127.0.0.1:9/test", "--http-listen", "127.0.0.1:0", "serve"],
        &[("SDOH_GATEWAY_DATABASE__CONNECT_TIMEOUT_SECS", "3")],
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15), "bounded: {:?}", started.elapsed());
    assert!(err.contains("cannot open the database at postgres://postgres@127.0.0.1:9/test"), "{err}");
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let dir = temp_dir();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (status, _, err) = run(dir.path(), &["--http-listen", &addr, "serve"], &[]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("cannot listen for HTTP on {addr}")), "{err}");
}

#[test]
fn migrate_brings_both_backends_up_to_date() {
    let dir = temp_dir();
    let (status, out, err) = run(dir.path(), &["--database-url", "sqlite:./m/gw.db", "migrate"], &[]);
    assert!(status.success(), "{err}");
    assert!(out.contains("up to date (sqlite)"), "{out}");
    assert!(dir.path().join("m/gw.db").exists());

    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = rt.block_on(postgres_schema_url(&postgres_url()));
    for _ in 0..2 {
        let (status, out, err) = run(dir.path(), &["--database-url", &url, "migrate"], &[]);
        assert!(status.success(), "{err}");
        assert!(out.contains("up to date (postgres)"), "{out}");
    }
}

#[test]
fn readiness_follows_the_database_when_it_goes_away_and_returns() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pg: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let mut proxy = rt.block_on(CuttableProxy::start(pg));
    let schema_url = rt.block_on(postgres_schema_url(&postgres_url()));
    let url = schema_url.replace("127.0.0.1:5432", &proxy.addr.to_string());

    let dir = temp_dir();
    let mut gw = Gateway::start(
        dir.path(),
        &["--database-url", &url, "--http-listen", "127.0.0.1:0"],
        &[("SDOH_GATEWAY_DATABASE__ACQUIRE_TIMEOUT_SECS", "1")],
    );
    let (addr, mllp_addr) = gw.wait_ready_both();
    assert_eq!(http(addr, "GET", "/health/ready", None).0, 200);
    let message =
        b"MSH|^~\\&|EHR|CLINIC|GW|HUB|20261123120000||ADT^A01^ADT_A01|LOST-1|P|2.5.1\rPID|1||1^^^C^MR||Doe^Jane\r";
    let mut hl7 = std::net::TcpStream::connect(mllp_addr).unwrap();
    hl7.set_read_timeout(Some(Duration::from_secs(30))).unwrap();

    rt.block_on(proxy.cut());
    let (status, _, body) = http(addr, "GET", "/health/ready", None);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("unready"), "{body}");
    let (_, _, metrics) = http(addr, "GET", "/metrics", None);
    assert!(metrics.contains("db_up 0"), "{metrics}");
    assert_eq!(http(addr, "GET", "/health/live", None).0, 200, "alive while the database is down");
    let (status, _, body) = http(addr, "GET", "/admin/messages", None);
    assert_eq!(status, 503, "requests that need the database fail clearly: {body}");
    assert!(body.contains("could not be read") && !body.to_lowercase().contains("select"), "{body}");
    // An HL7 message that cannot be committed is not acknowledged AA: AE with HL7 error 207 tells the sender to resend.
    let ack = mllp::send(&mut hl7, message).expect("an answer, not a hang");
    assert_eq!(mllp::field(&ack, "MSA", 1).as_deref(), Some("AE"), "{}", String::from_utf8_lossy(&ack));
    assert!(mllp::field(&ack, "ERR", 3).unwrap_or_default().starts_with("207^"));

    rt.block_on(proxy.restore());
    // The pool reconnects on demand; the first check after the return may still hold a dead connection.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = 0;
    while Instant::now() < deadline {
        last = http(addr, "GET", "/health/ready", None).0;
        if last == 200 {
            break;
        }
    }
    assert_eq!(last, 200, "ready again after the database returned");
    let ack = mllp::send(&mut hl7, message).expect("an answer");
    assert_eq!(mllp::field(&ack, "MSA", 1).as_deref(), Some("AA"), "the resend is accepted once the database is back");
    assert!(gw.child.try_wait().unwrap().is_none(), "no crash while the database was away");
    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(30)).success());
}
