//! `sdoh-fhir-load`: drives a FHIR R4 server over N keep-alive HTTP/1.1 connections with generated SDOH data
//! (Patients, Hunger Vital Sign screening Observations) and reports throughput and latency percentiles.
//!
//! The HTTP client is a deliberately small HTTP/1.1 implementation over a tokio `TcpStream`: the tool measures the
//! server, so the client should add as little work and as few layers as possible, and one fewer dependency suits a
//! binary that ships with the gateway.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// POST one resource per request (Patients and screening Observations, 1:2)
    Create,
    /// Create a working set, then GET random ids from it
    Read,
    /// `Observation?subject=Patient/<random existing>&category=survey`
    Search,
    /// POST transaction Bundles of `--transaction-size` entries (Patients plus their Observations)
    Transaction,
    /// CBO polling: load `--tasks` referral Tasks across `--owners` CBOs (unless `--tasks 0`), then
    /// `Task?owner=Organization/<cbo>&status=requested&_lastUpdated=gt<load start>`, each as that CBO (`--tokens-file`)
    Poll,
}

#[derive(Debug, Parser)]
#[command(name = "sdoh-fhir-load", about = "Load generator for a FHIR R4 REST API (sdoh-gateway or a peer)")]
struct Args {
    /// FHIR base URL (http only)
    #[arg(long, default_value = "http://127.0.0.1:8080/fhir")]
    base: String,
    /// Concurrent clients, one keep-alive connection each, one request in flight each
    #[arg(long, default_value_t = 32)]
    clients: usize,
    #[arg(long, value_enum, default_value = "create")]
    scenario: Scenario,
    /// Measured requests in all (ignored when --duration is given)
    #[arg(long, default_value_t = 10_000)]
    requests: u64,
    /// Run the measured phase for this many seconds instead of a request count
    #[arg(long)]
    duration: Option<f64>,
    /// Entries per transaction Bundle: one Patient per ten entries, the rest are that Patient's Observations
    #[arg(long, default_value_t = 100)]
    transaction_size: usize,
    /// Resources created before a read run (not measured)
    #[arg(long, default_value_t = 1000)]
    working_set: usize,
    /// Patient ids file: a transaction or create run appends the Patients it created; a search run picks from it.
    /// Without it a search run samples up to --working-set Patient ids from `Patient?_count=1000` pages.
    #[arg(long)]
    ids_file: Option<std::path::PathBuf>,
    /// Poll: referral Tasks to load before polling (0: poll what is there)
    #[arg(long, default_value_t = 100_000)]
    tasks: usize,
    /// Poll: CBO Organizations the Tasks are spread over (`Organization/cbo-<n>`)
    #[arg(long, default_value_t = 500)]
    owners: usize,
    /// Poll: lines `Organization/<id> <bearer token>`; each poll picks one and polls that CBO's queue as that CBO.
    /// Without it polls go unauthenticated to random owners.
    #[arg(long)]
    tokens_file: Option<std::path::PathBuf>,
    /// Poll: what each poll asks, `task` (`Task?owner=...&status=requested&_lastUpdated=gt...`) or `history`
    /// (`_history?_since=...`, as the polling CBO)
    #[arg(long, default_value = "task")]
    poll_query: String,
    /// Poll: `_lastUpdated`/`_since` from `load-start` (a first poll: every Task this run loads qualifies),
    /// `all` (the same over data loaded before: since 2000-01-01) or `load-end` (an incremental poll: only what
    /// changed since the last one)
    #[arg(long, default_value = "load-start")]
    poll_since: String,
    /// Bearer token for loading data (an admin or ehr client) when the server requires authentication
    #[arg(long)]
    token: Option<String>,
    /// Seed of the data and id choices, so runs are repeatable
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the report as one JSON object
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !matches!(args.poll_query.as_str(), "task" | "history") {
        bail!("--poll-query must be task or history");
    }
    if !matches!(args.poll_since.as_str(), "load-start" | "all" | "load-end") {
        bail!("--poll-since must be load-start, all or load-end");
    }
    // One thread: the generator shares two cores with the server it measures, so it should take little of them.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run(args))
}

/// `http://host:port/path` split into what a connection and a request line need.
#[derive(Debug, Clone)]
struct Base {
    addr: String,
    host: String,
    path: String,
}

impl Base {
    fn parse(url: &str) -> anyhow::Result<Base> {
        let rest = url.strip_prefix("http://").ok_or_else(|| anyhow!("--base must be an http:// URL"))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let addr = if authority.contains(':') { authority.to_owned() } else { format!("{authority}:80") };
        Ok(Base { addr, host: authority.to_owned(), path: format!("/{}", path.trim_end_matches('/')) })
    }
}

struct Response {
    status: u16,
    body: Vec<u8>,
    location: Option<String>,
}

/// One keep-alive HTTP/1.1 connection; reconnects when the server closes it.
struct Conn {
    base: Arc<Base>,
    stream: Option<BufReader<TcpStream>>,
    request: Vec<u8>,
    /// `Authorization` header value sent with every request, if any.
    authorization: Option<String>,
}

impl Conn {
    fn new(base: Arc<Base>) -> Conn {
        Conn { base, stream: None, request: Vec::with_capacity(64 * 1024), authorization: None }
    }

    async fn send(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> anyhow::Result<Response> {
        self.request.clear();
        write!(
            self.request,
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nAccept: application/fhir+json\r\n",
            self.base.path, self.base.host
        )?;
        if let Some(auth) = &self.authorization {
            write!(self.request, "Authorization: {auth}\r\n")?;
        }
        if let Some(body) = body {
            write!(self.request, "Content-Type: application/fhir+json\r\nContent-Length: {}\r\n", body.len())?;
        }
        self.request.extend_from_slice(b"\r\n");
        if let Some(body) = body {
            self.request.extend_from_slice(body);
        }
        // A kept-alive connection the server closed while idle fails on first use; one fresh attempt is honest.
        let reused = self.stream.is_some();
        match self.exchange().await {
            Ok(r) => Ok(r),
            Err(_) if reused => {
                self.stream = None;
                self.exchange().await
            }
            Err(e) => Err(e),
        }
    }

    async fn exchange(&mut self) -> anyhow::Result<Response> {
        if self.stream.is_none() {
            let tcp =
                TcpStream::connect(&self.base.addr).await.with_context(|| format!("connect {}", self.base.addr))?;
            tcp.set_nodelay(true)?;
            self.stream = Some(BufReader::with_capacity(64 * 1024, tcp));
        }
        let stream = self.stream.as_mut().expect("connected above");
        stream.get_mut().write_all(&self.request).await?;
        let result = read_response(stream).await;
        match &result {
            Ok((_, close)) if !*close => {}
            _ => self.stream = None,
        }
        result.map(|(r, _)| r)
    }
}

/// Reads one response; the flag says whether the server will close the connection after it.
async fn read_response(stream: &mut BufReader<TcpStream>) -> anyhow::Result<(Response, bool)> {
    let mut line = String::new();
    if stream.read_line(&mut line).await? == 0 {
        bail!("connection closed before the status line");
    }
    let status: u16 = line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| anyhow!("bad status line"))?;
    let (mut length, mut chunked, mut close, mut location) = (None, false, false, None);
    loop {
        line.clear();
        if stream.read_line(&mut line).await? == 0 {
            bail!("connection closed inside the headers");
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>()?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("location") {
            location = Some(value.to_owned());
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            stream.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)?;
            if size == 0 {
                // Trailers, if any, end with an empty line.
                loop {
                    line.clear();
                    if stream.read_line(&mut line).await? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            stream.read_exact(&mut body[start..]).await?;
            let mut crlf = [0u8; 2];
            stream.read_exact(&mut crlf).await?;
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        stream.read_exact(&mut body).await?;
    } else if status != 204 && status != 304 && !(100..200).contains(&status) {
        // No length and not chunked: the body runs to the end of the connection.
        stream.read_to_end(&mut body).await?;
        close = true;
    }
    Ok((Response { status, body, location }, close))
}

/// xorshift64*: the tool needs cheap, repeatable choices, not cryptographic ones.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a>(&mut self, items: &'a [&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const GIVEN: &[&str] = &["Maria", "James", "Aisha", "Wei", "Olga", "Diego", "Fatima", "John", "Priya", "Samuel"];
const FAMILY: &[&str] = &["Garcia", "Smith", "Okafor", "Chen", "Ivanova", "Lopez", "Haddad", "Brown", "Patel", "Kim"];
const CITY: &[(&str, &str, &str)] = &[
    ("Springfield", "IL", "62701"),
    ("Columbus", "OH", "43004"),
    ("Tucson", "AZ", "85701"),
    ("Albany", "NY", "12207"),
];
/// Hunger Vital Sign answers (LOINC answer list LL2812-4).
const ANSWERS: &[(&str, &str)] =
    &[("LA28397-0", "Often true"), ("LA6729-3", "Sometimes true"), ("LA28398-8", "Never true")];
/// Hunger Vital Sign questions.
const QUESTIONS: &[(&str, &str)] = &[
    ("88122-7", "Within the past 12 months we worried whether our food would run out before we got money to buy more"),
    ("88123-5", "Within the past 12 months the food we bought just didn't last and we didn't have money to get more"),
];

fn patient(rng: &mut Rng, n: u64) -> Value {
    let (city, state, zip) = CITY[rng.below(CITY.len())];
    let gender = ["female", "male", "other", "unknown"][rng.below(4)];
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.3.1234.5.1", "value": format!("MRN{:09}", n)}],
        "active": true,
        "name": [{"use": "official", "family": rng.pick(FAMILY), "given": [rng.pick(GIVEN)]}],
        "gender": gender,
        "birthDate": format!("{}-{:02}-{:02}", 1940 + rng.below(70), 1 + rng.below(12), 1 + rng.below(28)),
        "address": [{"use": "home", "line": [format!("{} Main St", 1 + rng.below(9000))],
            "city": city, "state": state, "postalCode": zip, "country": "US"}],
    })
}

fn observation(rng: &mut Rng, subject: &str) -> Value {
    let (code, question) = QUESTIONS[rng.below(QUESTIONS.len())];
    let (answer, display) = ANSWERS[rng.below(ANSWERS.len())];
    let when =
        format!("2025-{:02}-{:02}T{:02}:{:02}:00Z", 1 + rng.below(12), 1 + rng.below(28), rng.below(24), rng.below(60));
    json!({
        "resourceType": "Observation",
        "meta": {"profile": ["http://hl7.org/fhir/us/sdoh-clinicalcare/StructureDefinition/SDOHCC-ObservationScreeningResponse"]},
        "status": "final",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "social-history", "display": "Social History"}]},
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "survey", "display": "Survey"}]},
            {"coding": [{"system": "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes",
                "code": "food-insecurity", "display": "Food Insecurity"}]}
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": question}]},
        "subject": {"reference": subject},
        "effectiveDateTime": when,
        "issued": when,
        "valueCodeableConcept": {"coding": [{"system": "http://loinc.org", "code": answer, "display": display}]},
    })
}

/// A transaction of one Patient per ten entries, each followed by its Observations, linked by `urn:uuid` fullUrls
/// so the server resolves the references inside the transaction.
fn transaction_bundle(rng: &mut Rng, size: usize, n: u64) -> Value {
    let mut entries = Vec::with_capacity(size);
    let mut subject = String::new();
    for i in 0..size {
        if i % 10 == 0 {
            subject = format!("urn:uuid:{:08x}-0000-4000-8000-{:012x}", rng.next() as u32, n * 1000 + i as u64);
            entries.push(json!({"fullUrl": subject, "resource": patient(rng, n * 1000 + i as u64),
                "request": {"method": "POST", "url": "Patient"}}));
        } else {
            entries.push(json!({"fullUrl": format!("urn:uuid:{:08x}-0000-4000-8001-{:012x}", rng.next() as u32, n * 1000 + i as u64),
                "resource": observation(rng, &subject), "request": {"method": "POST", "url": "Observation"}}));
        }
    }
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// `.../Patient/abc/_history/1` or `Patient/abc/_history/1` -> `Patient/abc`.
fn reference_of(location: &str) -> Option<String> {
    let parts: Vec<&str> = location.split('/').collect();
    let h = parts.iter().rposition(|p| *p == "_history")?;
    (h >= 2).then(|| format!("{}/{}", parts[h - 2], parts[h - 1]))
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    statuses: std::collections::BTreeMap<u16, u64>,
    transport_errors: u64,
    results: u64,
    created_patients: Vec<String>,
}

async fn run(args: Args) -> anyhow::Result<()> {
    let base = Arc::new(Base::parse(&args.base)?);
    let mut rng = Rng::new(args.seed);
    let mut setup = Conn::new(base.clone());
    setup.authorization = args.token.as_ref().map(|t| format!("Bearer {t}"));
    let setup_started = Instant::now();
    let poll_since = chrono::Utc::now() - chrono::Duration::seconds(1);
    let pollers: Arc<Vec<(String, Option<String>)>> = Arc::new(match args.scenario {
        Scenario::Poll => {
            load_tasks(&mut setup, &mut rng, &args).await?;
            pollers(&args)?
        }
        _ => Vec::new(),
    });
    let poll_since = match args.poll_since.as_str() {
        "load-end" => chrono::Utc::now(),
        "all" => chrono::DateTime::from_timestamp(946_684_800, 0).unwrap_or(poll_since),
        _ => poll_since,
    };
    let since = poll_since.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    // What the measured phase reads or searches: resource references (read) or Patient references (search).
    let targets: Arc<Vec<String>> = Arc::new(match args.scenario {
        Scenario::Read => create_working_set(&mut setup, &mut rng, args.working_set).await?,
        Scenario::Search => patient_ids(&mut setup, &args).await?,
        _ => Vec::new(),
    });
    if matches!(args.scenario, Scenario::Read | Scenario::Search) && targets.is_empty() {
        bail!("no resources to read or search: the working set is empty");
    }
    let setup_s = setup_started.elapsed().as_secs_f64();
    drop(setup);

    let next = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let deadline = args.duration.map(|d| started + Duration::from_secs_f64(d));
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..args.clients {
        let (base, next, tally, targets) = (base.clone(), next.clone(), tally.clone(), targets.clone());
        let (pollers, since) = (pollers.clone(), since.clone());
        let data_token = args.token.clone();
        let history_polls = args.poll_query == "history";
        let (scenario, total, size) = (args.scenario, args.requests, args.transaction_size);
        let mut rng = Rng::new(args.seed.wrapping_mul(1_000_003).wrapping_add(client as u64 + 1));
        let keep_ids = args.ids_file.is_some();
        tasks.spawn(async move {
            let mut conn = Conn::new(base);
            conn.authorization = data_token.map(|t| format!("Bearer {t}"));
            let mut local = Tally::default();
            let mut body = Vec::with_capacity(64 * 1024);
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if deadline.is_none() && i >= total {
                    break;
                }
                // Bodies are built before the clock starts: generating data is the client's cost, not the server's.
                body.clear();
                let (method, path) = match scenario {
                    // Every Observation names a Patient this client created, as a real client's would.
                    Scenario::Create if i % 3 == 0 || local.created_patients.is_empty() => {
                        serde_json::to_writer(&mut body, &patient(&mut rng, i))?;
                        ("POST", "/Patient".to_owned())
                    }
                    Scenario::Create => {
                        let subject = local.created_patients.last().cloned().unwrap_or_default();
                        serde_json::to_writer(&mut body, &observation(&mut rng, &subject))?;
                        ("POST", "/Observation".to_owned())
                    }
                    Scenario::Transaction => {
                        serde_json::to_writer(&mut body, &transaction_bundle(&mut rng, size, i))?;
                        ("POST", String::new())
                    }
                    Scenario::Read => ("GET", format!("/{}", targets[rng.below(targets.len())])),
                    Scenario::Search => {
                        ("GET", format!("/Observation?subject={}&category=survey", targets[rng.below(targets.len())]))
                    }
                    Scenario::Poll => {
                        let (owner, token) = &pollers[rng.below(pollers.len())];
                        conn.authorization = token.as_ref().map(|t| format!("Bearer {t}"));
                        if history_polls {
                            ("GET", format!("/_history?_since={since}"))
                        } else {
                            ("GET", format!("/Task?owner={owner}&status=requested&_lastUpdated=gt{since}"))
                        }
                    }
                };
                let sent = Instant::now();
                let answer = conn.send(method, &path, (method == "POST").then_some(&body[..])).await;
                let micros = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
                match answer {
                    Ok(r) => {
                        local.latencies_us.push(micros);
                        *local.statuses.entry(r.status).or_default() += 1;
                        if (200..300).contains(&r.status) {
                            account(scenario, &r, keep_ids, &mut local);
                        }
                    }
                    Err(e) => {
                        if local.transport_errors == 0 {
                            eprintln!("client {client}: {e:#}");
                        }
                        local.transport_errors += 1;
                    }
                }
            }
            let mut t = tally.lock().await;
            t.latencies_us.extend(local.latencies_us);
            t.transport_errors += local.transport_errors;
            t.results += local.results;
            t.created_patients.extend(local.created_patients);
            for (k, v) in local.statuses {
                *t.statuses.entry(k).or_default() += v;
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    let elapsed = started.elapsed();
    let mut tally = Arc::try_unwrap(tally).map_err(|_| anyhow!("tasks still running"))?.into_inner();
    if let Some(path) = &args.ids_file
        && matches!(args.scenario, Scenario::Create | Scenario::Transaction)
    {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        for id in &tally.created_patients {
            writeln!(file, "{id}")?;
        }
    }
    report(&args, &mut tally, elapsed, setup_s, targets.len())
}

/// Counts what a successful answer carried: resources created (create, transaction) or matches (search).
fn account(scenario: Scenario, r: &Response, keep_ids: bool, local: &mut Tally) {
    match scenario {
        Scenario::Create => {
            local.results += 1;
            if let Some(reference) = r.location.as_deref().and_then(reference_of)
                && reference.starts_with("Patient/")
            {
                local.created_patients.push(reference);
            }
        }
        Scenario::Transaction => {
            let Ok(bundle) = serde_json::from_slice::<Value>(&r.body) else { return };
            for entry in bundle["entry"].as_array().into_iter().flatten() {
                local.results += 1;
                if keep_ids
                    && let Some(reference) = entry["response"]["location"].as_str().and_then(reference_of)
                    && reference.starts_with("Patient/")
                {
                    local.created_patients.push(reference);
                }
            }
        }
        Scenario::Search | Scenario::Poll => {
            if let Ok(bundle) = serde_json::from_slice::<Value>(&r.body) {
                let matches = bundle["entry"].as_array().into_iter().flatten();
                local.results += matches.filter(|e| e["search"]["mode"] != "include").count() as u64;
            }
        }
        Scenario::Read => local.results += 1,
    }
}

const TASK_STATUSES: &[&str] = &["requested", "requested", "requested", "accepted", "in-progress", "completed"];

/// A referral Task from the clinic to CBO `owner`, about one of a few thousand patients.
fn referral_task(rng: &mut Rng, owner: usize, n: u64) -> Value {
    json!({
        "resourceType": "Task",
        "meta": {"profile": ["http://hl7.org/fhir/us/sdoh-clinicalcare/StructureDefinition/SDOHCC-TaskForReferralManagement"]},
        "status": rng.pick(TASK_STATUSES),
        "intent": "order",
        "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
        "focus": {"reference": format!("ServiceRequest/sr-{n}")},
        "for": {"reference": format!("Patient/pat-{}", n % 5000)},
        "authoredOn": "2026-11-01T09:00:00Z",
        "requester": {"reference": "Organization/clinic"},
        "owner": {"reference": format!("Organization/cbo-{owner}")},
    })
}

/// Loads `--tasks` referral Tasks spread over `--owners` CBOs, 500 per transaction.
async fn load_tasks(conn: &mut Conn, rng: &mut Rng, args: &Args) -> anyhow::Result<()> {
    let mut n = 0u64;
    while (n as usize) < args.tasks {
        let batch = (args.tasks - n as usize).min(500);
        let entries: Vec<Value> = (0..batch as u64)
            .map(|i| {
                let task = referral_task(rng, ((n + i) as usize) % args.owners.max(1), n + i);
                json!({"resource": task, "request": {"method": "POST", "url": "Task"}})
            })
            .collect();
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
        let r = conn.send("POST", "", Some(&serde_json::to_vec(&bundle)?)).await?;
        if r.status != 200 {
            bail!("loading Tasks: the transaction answered {}: {}", r.status, String::from_utf8_lossy(&r.body));
        }
        n += batch as u64;
    }
    Ok(())
}

/// Who polls: (owner reference, token) pairs from --tokens-file, or every owner unauthenticated.
fn pollers(args: &Args) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let Some(path) = &args.tokens_file else {
        return Ok((0..args.owners.max(1)).map(|k| (format!("Organization/cbo-{k}"), None)).collect());
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let pairs: Vec<(String, Option<String>)> = text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(owner, token)| (owner.trim().to_owned(), Some(token.trim().to_owned())))
        .collect();
    if pairs.is_empty() {
        bail!("{} holds no `Organization/<id> <token>` lines", path.display());
    }
    Ok(pairs)
}

/// Creates Patients and screening Observations (1:2) for a read run and returns their references.
async fn create_working_set(conn: &mut Conn, rng: &mut Rng, size: usize) -> anyhow::Result<Vec<String>> {
    let mut refs = Vec::with_capacity(size);
    let mut subject = String::from("Patient/unknown");
    for i in 0..size as u64 {
        let (path, resource) =
            if i % 3 == 0 { ("/Patient", patient(rng, i)) } else { ("/Observation", observation(rng, &subject)) };
        let r = conn.send("POST", path, Some(&serde_json::to_vec(&resource)?)).await?;
        if r.status != 201 {
            bail!("creating the working set: {path} answered {}", r.status);
        }
        let reference =
            r.location.as_deref().and_then(reference_of).ok_or_else(|| anyhow!("create without Location"))?;
        if path == "/Patient" {
            subject = reference.clone();
        }
        refs.push(reference);
    }
    Ok(refs)
}

/// Patient references for a search run: from --ids-file, or sampled from the server's Patient pages.
async fn patient_ids(conn: &mut Conn, args: &Args) -> anyhow::Result<Vec<String>> {
    if let Some(path) = &args.ids_file {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        return Ok(text.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect());
    }
    let mut ids = Vec::new();
    let mut path = "/Patient?_count=1000".to_owned();
    while ids.len() < args.working_set {
        let r = conn.send("GET", &path, None).await?;
        if r.status != 200 {
            bail!("listing Patients: {path} answered {}", r.status);
        }
        let bundle: Value = serde_json::from_slice(&r.body)?;
        for e in bundle["entry"].as_array().into_iter().flatten() {
            if let Some(id) = e["resource"]["id"].as_str() {
                ids.push(format!("Patient/{id}"));
            }
        }
        let next = bundle["link"].as_array().into_iter().flatten().find(|l| l["relation"] == "next");
        match next.and_then(|l| l["url"].as_str()).and_then(|u| u.split_once(&args.base)) {
            Some((_, rest)) => path = rest.to_owned(),
            None => break,
        }
    }
    ids.truncate(args.working_set);
    Ok(ids)
}

fn report(args: &Args, tally: &mut Tally, elapsed: Duration, setup_s: f64, targets: usize) -> anyhow::Result<()> {
    tally.latencies_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        if tally.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((tally.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        (f64::from(tally.latencies_us[i]) / 10.0).round() / 100.0
    };
    let answered = tally.latencies_us.len() as u64;
    let ok: u64 = tally.statuses.iter().filter(|(s, _)| (200..300).contains(*s)).map(|(_, n)| n).sum();
    let errors = answered - ok + tally.transport_errors;
    let secs = elapsed.as_secs_f64();
    let mut report = json!({
        "scenario": format!("{:?}", args.scenario).to_lowercase(),
        "clients": args.clients,
        "requests": answered,
        "statuses": tally.statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "errors": errors,
        "elapsed_s": (secs * 1000.0).round() / 1000.0,
        "throughput_req_per_s": (answered as f64 / secs).round(),
        "latency_ms": {"p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99), "max": pct(1.0)},
    });
    match args.scenario {
        Scenario::Transaction => {
            report["transaction_size"] = json!(args.transaction_size);
            report["resources_created"] = json!(tally.results);
            report["resources_per_s"] = json!((tally.results as f64 / secs).round());
        }
        Scenario::Create => report["resources_created"] = json!(tally.results),
        Scenario::Search => {
            report["patients_sampled"] = json!(targets);
            report["mean_matches_per_search"] =
                json!((tally.results as f64 / ok.max(1) as f64 * 100.0).round() / 100.0);
        }
        Scenario::Read => report["working_set"] = json!(targets),
        Scenario::Poll => {
            report["tasks_loaded"] = json!(args.tasks);
            report["owners"] = json!(args.owners);
            report["poll_query"] = json!(args.poll_query);
            report["poll_since"] = json!(args.poll_since);
            report["mean_matches_per_poll"] = json!((tally.results as f64 / ok.max(1) as f64 * 100.0).round() / 100.0);
            report["setup_s"] = json!((setup_s * 1000.0).round() / 1000.0);
        }
    }
    if matches!(args.scenario, Scenario::Read | Scenario::Search) {
        report["setup_s"] = json!((setup_s * 1000.0).round() / 1000.0);
    }
    if args.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if errors > 0 {
        bail!("{errors} requests failed (non-2xx or transport errors)");
    }
    Ok(())
}
