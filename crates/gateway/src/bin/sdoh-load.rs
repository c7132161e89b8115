//! `sdoh-load`: sends generated, realistic HL7 v2 messages over N MLLP connections and reports throughput and
//! ACK latency percentiles; optionally verifies afterwards that every AA'd message is in the gateway's journal.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use gateway::synth::MessageFactory;
use tokio::sync::{Mutex, Semaphore};

#[derive(Debug, Parser)]
#[command(name = "sdoh-load", about = "Load generator for the sdoh-gateway MLLP listener")]
struct Args {
    /// MLLP address of the gateway
    #[arg(long, default_value = "127.0.0.1:2575")]
    mllp: String,
    /// Concurrent connections
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Messages to send in all
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Steady rate in messages per second across all connections; 0 sends as fast as ACKs allow
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Frames in flight per connection (1 = send, wait for the ACK, send the next, as most interface engines do)
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Control id prefix; defaults to one unique to this run, so reruns are not duplicates
    #[arg(long)]
    prefix: Option<String>,
    /// After the run, check the journal in this database: every AA'd message present exactly once
    #[arg(long, value_name = "DATABASE_URL")]
    verify_database: Option<String>,
    /// Print the report as one JSON object
    #[arg(long)]
    json: bool,
    /// Which messages to send: `mixed` (ADT, screening ORU and REF as a clinic interface sends them) or
    /// `oru-screening` (only ORU^R01 Hunger Vital Sign screenings, each on its own patient MRN<n>, n = 1..messages
    /// across all connections)
    #[arg(long, value_enum, default_value_t = Kind::Mixed)]
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Kind {
    Mixed,
    OruScreening,
}

/// A sent frame awaiting its ACK: when it was sent, and the message's idempotency key (app, facility, control id).
type InFlight = (Instant, String, String, String);

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    codes: HashMap<String, u64>,
    acked: Vec<(String, String, String)>,
    errors: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // One thread: the generator shares the machine with the gateway it measures, so it should take little of it.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let prefix = args.prefix.clone().unwrap_or_else(|| format!("L{:x}", chrono::Utc::now().timestamp_millis()));
    let next = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for conn in 0..args.connections {
        let (next, tally, prefix) = (next.clone(), tally.clone(), prefix.clone());
        let (addr, total, rate, pipeline) = (args.mllp.clone(), args.messages, args.rate, args.pipeline.max(1));
        let kind = args.kind;
        tasks.spawn(async move {
            if let Err(e) =
                connection(conn, &addr, &prefix, kind, total, rate, pipeline, started, next, tally.clone()).await
            {
                eprintln!("connection {conn}: {e}");
                tally.lock().await.errors += 1;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let mut tally = Arc::try_unwrap(tally).map_err(|_| anyhow::anyhow!("tasks still running"))?.into_inner();
    tally.latencies_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        if tally.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((tally.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        f64::from(tally.latencies_us[i]) / 1000.0
    };
    let answered = tally.latencies_us.len() as u64;
    let throughput = answered as f64 / elapsed.as_secs_f64();
    let mut report = serde_json::json!({
        "kind": format!("{:?}", args.kind),
        "connections": args.connections,
        "pipeline": args.pipeline,
        "target_rate": args.rate,
        "answered": answered,
        "codes": tally.codes,
        "connection_errors": tally.errors,
        "elapsed_s": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        "throughput_msg_per_s": throughput.round(),
        "ack_latency_ms": {"p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99), "max": pct(1.0)},
    });
    if let Some(url) = &args.verify_database {
        let verified = verify(url, &tally.acked).await?;
        report["verified_in_journal"] = serde_json::json!(verified);
    }
    if args.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if tally.errors > 0
        || report.get("verified_in_journal").is_some_and(|v| v.as_u64() != Some(tally.acked.len() as u64))
    {
        anyhow::bail!("the run had connection errors or unverified acknowledgments");
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    conn: usize,
    addr: &str,
    prefix: &str,
    kind: Kind,
    total: u64,
    rate: u64,
    pipeline: usize,
    started: Instant,
    next: Arc<AtomicU64>,
    tally: Arc<Mutex<Tally>>,
) -> anyhow::Result<()> {
    let client = mllp::Client::connect(addr, mllp::ClientConfig::default()).await?;
    let (mut writer, mut reader) = client.split();
    let mut factory = MessageFactory::new(format!("{prefix}-{conn}"), conn as u64 + 1);
    let window = Arc::new(Semaphore::new(pipeline));
    let in_flight: Arc<std::sync::Mutex<VecDeque<InFlight>>> = Arc::default();
    let reader_side = {
        let (window, in_flight, tally) = (window.clone(), in_flight.clone(), tally.clone());
        tokio::spawn(async move {
            let mut local = Tally::default();
            loop {
                let Ok(ack) = reader.recv().await else { break };
                let Some((sent_at, app, facility, control_id)) = in_flight.lock().expect("queue").pop_front() else {
                    break;
                };
                local.latencies_us.push(u32::try_from(sent_at.elapsed().as_micros()).unwrap_or(u32::MAX));
                let (code, acked_id) = match hl7v2::Message::parse(&ack) {
                    Ok(m) => (
                        m.text("MSA-1").map(|c| c.into_owned()).unwrap_or_default(),
                        m.text("MSA-2").map(|c| c.into_owned()).unwrap_or_default(),
                    ),
                    Err(_) => ("unparseable".to_owned(), String::new()),
                };
                if acked_id != control_id {
                    *local.codes.entry("out_of_order".into()).or_default() += 1;
                } else if code == "AA" || code == "CA" {
                    local.acked.push((app, facility, control_id));
                }
                *local.codes.entry(code).or_default() += 1;
                window.add_permits(1);
            }
            // The connection is gone: wake a writer waiting for a window slot instead of leaving it hanging.
            window.close();
            let mut t = tally.lock().await;
            t.latencies_us.extend(local.latencies_us);
            t.acked.extend(local.acked);
            for (k, v) in local.codes {
                *t.codes.entry(k).or_default() += v;
            }
        })
    };
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= total {
            break;
        }
        if rate > 0 {
            let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        window.acquire().await?.forget();
        let (control_id, message) = match kind {
            Kind::Mixed => factory.next_message(),
            Kind::OruScreening => factory.oru_screening(i + 1),
        };
        let header = hl7v2::Message::parse(&message).map(|m| m.header()).map_err(|e| anyhow::anyhow!("{e}"))?;
        in_flight.lock().expect("queue").push_back((
            Instant::now(),
            header.sending_application,
            header.sending_facility,
            control_id,
        ));
        writer.send(&message).await?;
    }
    // Wait for the last ACKs, then close.
    let _ = window.acquire_many(pipeline as u32).await;
    writer.close().await?;
    reader_side.await?;
    Ok(())
}

/// Counts how many acknowledged messages are in the journal (each at most once by its unique key).
async fn verify(url: &str, acked: &[(String, String, String)]) -> anyhow::Result<u64> {
    let store = store::Store::connect(&store::StoreOptions::new(url)).await?;
    let mut found = 0u64;
    for (app, facility, control_id) in acked {
        if store.journal_find(app, facility, control_id).await?.is_some() {
            found += 1;
        }
    }
    store.close().await;
    Ok(found)
}
