//! The gateway's one options struct: defaults, then a TOML file, then `SDOH_GATEWAY_*` variables, then CLI flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Prefix of the environment variables that override configuration; `__` separates sections from keys,
/// e.g. `SDOH_GATEWAY_DATABASE__URL`.
pub const ENV_PREFIX: &str = "SDOH_GATEWAY_";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    pub http: HttpConfig,
    pub database: DatabaseConfig,
    pub log: LogConfig,
    pub shutdown: ShutdownConfig,
    pub workers: WorkersConfig,
    pub mllp: MllpConfig,
    pub ingest: IngestConfig,
    pub fhir: FhirConfig,
    pub outbound: OutboundConfig,
    pub auth: AuthConfig,
    pub subscriptions: SubscriptionsConfig,
    pub measures: MeasuresConfig,
    pub registries: RegistriesConfig,
    pub exports: ExportsConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeasuresConfig {
    /// The closed-loop window: a referral counts as closed when its Task completed within this many days.
    pub completion_window_days: u32,
}

impl Default for MeasuresConfig {
    fn default() -> Self {
        MeasuresConfig { completion_window_days: 30 }
    }
}

/// CQI registries (definitions in `profiles/registries/`): which ones this gateway keeps, and their keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistriesConfig {
    /// Ids of the registries whose membership, Group and records are kept current (e.g. `["diabetes", "ckd"]`).
    /// Empty: none, and writes queue no membership work.
    pub enabled: Vec<String>,
    /// Pseudonymization keys (HMAC-SHA-256, at least 32 bytes) by the key name a registry definition gives
    /// (`pseudonym_key`); `SDOH_GATEWAY_REGISTRIES__KEYS__<NAME>` in the environment, `-` written as `_`. Keep them
    /// secret and stable: a new key gives every patient a new pseudonym.
    pub keys: std::collections::BTreeMap<String, String>,
}

impl RegistriesConfig {
    /// The configured key of that name (a `-` in the name may be written `_`, as environment variables need).
    pub fn key(&self, name: &str) -> Option<&str> {
        self.keys.get(name).or_else(|| self.keys.get(&name.replace('-', "_"))).map(String::as_str)
    }
}

/// Bulk Data exports (`$export`): where files are written and for how long they are served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportsConfig {
    /// Folder of export files, one subfolder per export.
    pub folder: PathBuf,
    /// How long a completed export's files are served before they are deleted, in seconds.
    pub expiry_secs: u64,
    /// Exports one client may have queued or running at once; a further kick-off is answered 429.
    pub max_concurrent_per_client: u32,
}

impl Default for ExportsConfig {
    fn default() -> Self {
        ExportsConfig { folder: PathBuf::from("./data/exports"), expiry_secs: 3600, max_concurrent_per_client: 2 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Whether the FHIR API and the admin endpoints need a bearer token (`sdoh-gateway clients add`). Turn off only
    /// behind another authenticating layer or for local experiments: every request then acts as the gateway itself.
    pub required: bool,
    /// How long a token's answer (valid, or not) is cached; a revocation takes effect within this time.
    pub cache_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig { required: true, cache_secs: 10 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FhirConfig {
    /// The FHIR base URL as clients reach it (for Location headers, fullUrl and paging links), e.g.
    /// `https://sdoh.example.org/fhir` behind a proxy. Empty: `http://<http.listen>/fhir`.
    pub base_url: String,
    /// Whether `PUT` to an id that does not exist creates the resource (client-assigned ids).
    pub allow_update_create: bool,
}

impl Default for FhirConfig {
    fn default() -> Self {
        FhirConfig { base_url: String::new(), allow_update_create: true }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address the HTTP API (FHIR, health, metrics) listens on.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Longest a request may take before it is answered 503, in seconds.
    pub request_timeout_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite:<path>` (embedded) or `postgres://user:password@host:port/db`.
    pub url: String,
    /// Pool size (SQLite: reader connections; there is always one writer).
    pub max_connections: u32,
    /// Longest start-up waits for the database before giving up, in seconds.
    pub connect_timeout_secs: u64,
    /// Longest a request waits for a pooled connection, in seconds.
    pub acquire_timeout_secs: u64,
    /// SQLite commit durability: `full` (survives power loss) or `normal` (survives a process crash).
    pub sqlite_durability: store::SqliteDurability,
    /// SQLite writer page cache in MiB: more makes background conversion faster and the process larger.
    pub sqlite_writer_cache_mib: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: a level (`info`) or directives (`info,sqlx=warn,mllp=debug`).
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// After SIGTERM/Ctrl-C, how long in-flight work may take before the process exits anyway, in seconds.
    pub grace_period_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersConfig {
    /// Longest a claimed job stays leased before another worker may take it, in seconds.
    pub lease_secs: u64,
    /// How often idle workers look for due jobs (committed jobs also wake them at once), in milliseconds.
    pub poll_interval_ms: u64,
    /// Attempts before a job is dead-lettered.
    pub max_attempts: i32,
    /// Worker tasks per queue (conversion, normalization, registries, exports) in this process; 0 runs none (other
    /// replicas work).
    pub count: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MllpConfig {
    /// Whether the HL7 v2 MLLP listener runs.
    pub enabled: bool,
    /// Address the MLLP listener binds.
    pub listen: SocketAddr,
    /// Connections beyond this are accepted and closed at once.
    pub max_connections: usize,
    /// Largest frame accepted, in bytes; a larger one closes the connection.
    pub max_frame_bytes: usize,
    /// Longest from a frame's first byte to its end block, in seconds.
    pub read_timeout_secs: u64,
    /// Longest a connection may sit with no frame in progress, in seconds.
    pub idle_timeout_secs: u64,
    /// Frames of one connection handled at once (pipelining); answers still go out in order.
    pub max_in_flight_per_connection: usize,
    /// TLS for MLLP (optional): PEM files; with `client_ca_file`, clients must present a certificate it signed.
    pub tls: Option<MllpTlsConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MllpTlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

impl Default for MllpConfig {
    fn default() -> Self {
        MllpConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 2575)),
            max_connections: 256,
            max_frame_bytes: 1024 * 1024,
            read_timeout_secs: 30,
            idle_timeout_secs: 300,
            max_in_flight_per_connection: 64,
            tls: None,
        }
    }
}

/// Durable outbound HL7 v2 delivery over MLLP (application acknowledgments, referral status updates) to EHRs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    /// Whether this replica runs the delivery worker. Messages are queued either way; for strict per-destination
    /// order across replicas, run the worker on one replica only.
    pub enabled: bool,
    /// Delay before the first retry of a failed delivery, in milliseconds; it doubles per attempt (+/-20 %).
    pub backoff_base_ms: u64,
    /// Longest delay between retries, in seconds.
    pub backoff_max_secs: u64,
    /// How often an idle destination looks for due messages (new messages also wake it at once), in milliseconds.
    pub poll_interval_ms: u64,
    /// An open connection with nothing to send for this long is closed, in seconds.
    pub idle_close_secs: u64,
    /// Receiving EHRs, matched in order against MSH-5/MSH-6 of each outbound message; the first match wins.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<OutboundDestination>,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            enabled: true,
            backoff_base_ms: 1000,
            backoff_max_secs: 600,
            poll_interval_ms: 1000,
            idle_close_secs: 60,
            destinations: Vec::new(),
        }
    }
}

/// Rest-hook notification delivery for topic-based Subscriptions (FHIR R4 Subscriptions Backport).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubscriptionsConfig {
    /// Whether this replica delivers notifications. Events are recorded either way.
    pub enabled: bool,
    /// Delivery tasks; each serves one subscription at a time.
    pub workers: usize,
    /// Consecutive failed notifications after which a subscription's status becomes `error` (still retried).
    pub error_after_failures: u32,
    /// Consecutive failed notifications after which a subscription's status becomes `off` (delivery stops).
    pub off_after_failures: u32,
    /// Delay before the first retry of a failed notification, in milliseconds; it doubles per failure (+/-20 %).
    pub backoff_base_ms: u64,
    /// Longest delay between retries, in seconds.
    pub backoff_max_secs: u64,
    /// Timeout of one notification when the Subscription sets no `backport-timeout`, in seconds.
    pub default_timeout_secs: u64,
    /// Upper bound on a Subscription's `backport-timeout`, in seconds.
    pub max_timeout_secs: u64,
    /// Most events in one notification (a Subscription's `backport-max-count` may ask for fewer; default 1).
    pub max_events_per_notification: u32,
    /// How often due heartbeats are looked for, in milliseconds.
    pub heartbeat_check_ms: u64,
    /// PEM file of the certificate authorities that https endpoints are verified against; empty: the system
    /// bundle (`/etc/ssl/certs/ca-certificates.crt`) when present.
    pub ca_file: String,
}

impl Default for SubscriptionsConfig {
    fn default() -> Self {
        SubscriptionsConfig {
            enabled: true,
            workers: 4,
            error_after_failures: 3,
            off_after_failures: 20,
            backoff_base_ms: 1000,
            backoff_max_secs: 300,
            default_timeout_secs: 10,
            max_timeout_secs: 60,
            max_events_per_notification: 100,
            heartbeat_check_ms: 1000,
            ca_file: String::new(),
        }
    }
}

impl SubscriptionsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let positive = |key: &'static str, value: u64| {
            if value == 0 { Err(ConfigError::Invalid { key, reason: "must be at least 1".into() }) } else { Ok(()) }
        };
        positive("subscriptions.error_after_failures", u64::from(self.error_after_failures))?;
        positive("subscriptions.backoff_base_ms", self.backoff_base_ms)?;
        positive("subscriptions.backoff_max_secs", self.backoff_max_secs)?;
        positive("subscriptions.default_timeout_secs", self.default_timeout_secs)?;
        positive("subscriptions.max_timeout_secs", self.max_timeout_secs)?;
        positive("subscriptions.max_events_per_notification", u64::from(self.max_events_per_notification))?;
        positive("subscriptions.heartbeat_check_ms", self.heartbeat_check_ms)?;
        if self.off_after_failures < self.error_after_failures {
            return Err(ConfigError::Invalid {
                key: "subscriptions.off_after_failures",
                reason: "must be at least subscriptions.error_after_failures".into(),
            });
        }
        if !self.ca_file.is_empty() && !Path::new(&self.ca_file).is_file() {
            return Err(ConfigError::Invalid { key: "subscriptions.ca_file", reason: "is not a readable file".into() });
        }
        Ok(())
    }
}

/// One receiving EHR interface (an MLLP listener).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundDestination {
    /// Short unique name, used in logs, metrics and the job queue name (`outbound-mllp:<name>`).
    pub name: String,
    /// `host:port` of the EHR's MLLP listener.
    pub address: String,
    /// MSH-5.1 (receiving application) this destination takes; empty matches any.
    #[serde(default)]
    pub receiving_application: String,
    /// MSH-6.1 (receiving facility) this destination takes; empty matches any.
    #[serde(default)]
    pub receiving_facility: String,
    /// Longest for the TCP connect plus the TLS handshake, in seconds.
    #[serde(default = "default_connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// Longest to wait for the ACK of one message, in seconds.
    #[serde(default = "default_ack_timeout_secs")]
    pub ack_timeout_secs: u64,
    /// Delivery attempts before a message is dead-lettered.
    #[serde(default = "default_outbound_max_attempts")]
    pub max_attempts: i32,
    /// TLS (optional); with `cert_file` and `key_file` the gateway presents a client certificate (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<OutboundTlsConfig>,
}

fn default_connect_timeout_secs() -> u64 {
    10
}

fn default_ack_timeout_secs() -> u64 {
    30
}

fn default_outbound_max_attempts() -> i32 {
    10
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundTlsConfig {
    /// PEM file of the CA(s) that signed the EHR's server certificate.
    pub ca_file: PathBuf,
    /// PEM client certificate chain and key, for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Name checked against the server certificate; empty: the host part of `address`.
    #[serde(default)]
    pub server_name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Message types accepted, as `TYPE^EVENT`; `TYPE^*` accepts every event of a type. Others get AR.
    pub accepted_message_types: Vec<String>,
    /// MSH-11 processing ids accepted (P production, D debugging, T training). Others get AR.
    pub accepted_processing_ids: Vec<String>,
    /// Most messages journaled in one transaction (group commit).
    pub group_commit_max_batch: usize,
    /// Journal transactions in flight at once; 0 chooses (1 for SQLite, which has one writer; 4 for PostgreSQL).
    pub committers: usize,
    /// This gateway's own application and facility names, sent as MSH-3/MSH-4 of its acknowledgments.
    pub receiving_application: String,
    pub receiving_facility: String,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            accepted_message_types: [
                "ADT^A01", "ADT^A02", "ADT^A03", "ADT^A04", "ADT^A08", "ADT^A28", "ADT^A31", "ADT^A40", "ORU^R01",
                "REF^I12", "REF^I14",
            ]
            .map(String::from)
            .to_vec(),
            accepted_processing_ids: ["P", "D", "T"].map(String::from).to_vec(),
            group_commit_max_batch: 512,
            committers: 0,
            receiving_application: "SDOH-GATEWAY".into(),
            receiving_facility: "SDOH-HUB".into(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 16 * 1024 * 1024,
            request_timeout_secs: 60,
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "sqlite:./data/gateway.db".into(),
            max_connections: 8,
            connect_timeout_secs: 10,
            acquire_timeout_secs: 5,
            sqlite_durability: store::SqliteDurability::Full,
            sqlite_writer_cache_mib: 32,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info,sqlx=warn".into(), format: LogFormat::Pretty }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { grace_period_secs: 30 }
    }
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig { lease_secs: 60, poll_interval_ms: 500, max_attempts: 10, count: 2 }
    }
}

/// Flags that override the file and the environment (highest precedence).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// Database URL (`sqlite:<path>` or `postgres://...`); key database.url
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// HTTP listen address; key http.listen
    #[arg(long, global = true, value_name = "ADDR")]
    pub http_listen: Option<String>,
    /// Log filter (level or directives); key log.level
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log format, pretty or json; key log.format
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// MLLP (HL7 v2) listen address; key mllp.listen
    #[arg(long, global = true, value_name = "ADDR")]
    pub mllp_listen: Option<String>,
}

/// A configuration problem, naming the key and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Parse(String),
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl GatewayConfig {
    /// Reads the layers in precedence order and validates the result.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<GatewayConfig, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(GatewayConfig::default()));
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::File { path: path.to_owned(), reason: e.to_string() })?;
            // Parse first so a syntax error reports the file and position, not a figment provider name.
            toml::from_str::<toml::Table>(&text).map_err(|e| ConfigError::File {
                path: path.to_owned(),
                reason: e.to_string().trim().replace('\n', " "),
            })?;
            figment = figment.merge(Toml::string(&text));
        }
        figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__").ignore(&["config"]));
        for (key, value) in [
            ("database.url", &overrides.database_url),
            ("http.listen", &overrides.http_listen),
            ("log.level", &overrides.log_level),
            ("log.format", &overrides.log_format),
            ("mllp.listen", &overrides.mllp_listen),
        ] {
            if let Some(value) = value {
                figment = figment.merge(Serialized::default(key, value));
            }
        }
        let config: GatewayConfig = figment.extract().map_err(|e| ConfigError::Parse(describe_figment_error(e)))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        store::BackendKind::from_url(&self.database.url)
            .map_err(|e| ConfigError::Invalid { key: "database.url", reason: e.to_string() })?;
        if self.database.max_connections == 0 {
            return Err(ConfigError::Invalid { key: "database.max_connections", reason: "must be at least 1".into() });
        }
        if !(1..=4096).contains(&self.database.sqlite_writer_cache_mib) {
            return Err(ConfigError::Invalid {
                key: "database.sqlite_writer_cache_mib",
                reason: "must be between 1 and 4096".into(),
            });
        }
        if self.database.connect_timeout_secs == 0 {
            return Err(ConfigError::Invalid {
                key: "database.connect_timeout_secs",
                reason: "must be at least 1".into(),
            });
        }
        tracing_subscriber::EnvFilter::builder()
            .parse(&self.log.level)
            .map_err(|e| ConfigError::Invalid { key: "log.level", reason: e.to_string() })?;
        if self.http.max_body_bytes < 1024 {
            return Err(ConfigError::Invalid { key: "http.max_body_bytes", reason: "must be at least 1024".into() });
        }
        if !(1..=365).contains(&self.measures.completion_window_days) {
            return Err(ConfigError::Invalid {
                key: "measures.completion_window_days",
                reason: "must be from 1 to 365".into(),
            });
        }
        if self.workers.max_attempts < 1 {
            return Err(ConfigError::Invalid { key: "workers.max_attempts", reason: "must be at least 1".into() });
        }
        if self.mllp.max_connections == 0 {
            return Err(ConfigError::Invalid { key: "mllp.max_connections", reason: "must be at least 1".into() });
        }
        if self.mllp.max_frame_bytes < 1024 {
            return Err(ConfigError::Invalid { key: "mllp.max_frame_bytes", reason: "must be at least 1024".into() });
        }
        if self.mllp.max_in_flight_per_connection == 0 {
            return Err(ConfigError::Invalid {
                key: "mllp.max_in_flight_per_connection",
                reason: "must be at least 1".into(),
            });
        }
        if let Some(tls) = &self.mllp.tls {
            for (key, path) in [
                ("mllp.tls.cert_file", Some(&tls.cert_file)),
                ("mllp.tls.key_file", Some(&tls.key_file)),
                ("mllp.tls.client_ca_file", tls.client_ca_file.as_ref()),
            ] {
                if let Some(path) = path.filter(|p| !p.is_file()) {
                    return Err(ConfigError::Invalid {
                        key,
                        reason: format!("{} is not a readable file", path.display()),
                    });
                }
            }
        }
        for pattern in &self.ingest.accepted_message_types {
            let valid = pattern.split_once('^').is_some_and(|(t, e)| {
                t.len() == 3
                    && t.bytes().all(|b| b.is_ascii_uppercase())
                    && (e == "*" || (!e.is_empty() && e.len() <= 3))
            });
            if !valid {
                return Err(ConfigError::Invalid {
                    key: "ingest.accepted_message_types",
                    reason: format!("{pattern:?} is not TYPE^EVENT (e.g. ADT^A01 or ADT^*)"),
                });
            }
        }
        if self.ingest.group_commit_max_batch == 0 {
            return Err(ConfigError::Invalid {
                key: "ingest.group_commit_max_batch",
                reason: "must be at least 1".into(),
            });
        }
        let base = &self.fhir.base_url;
        if !(base.is_empty() || base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ConfigError::Invalid {
                key: "fhir.base_url",
                reason: "must be an http:// or https:// URL".into(),
            });
        }
        if self.workers.lease_secs == 0 {
            return Err(ConfigError::Invalid { key: "workers.lease_secs", reason: "must be at least 1".into() });
        }
        self.outbound.validate()?;
        self.subscriptions.validate()?;
        self.validate_registries()?;
        Ok(())
    }

    fn validate_registries(&self) -> Result<(), ConfigError> {
        let known = sdoh::registry::Registries::builtin();
        for id in &self.registries.enabled {
            let Some(definition) = known.get(id) else {
                let ids: Vec<&str> = known.definitions().iter().map(|d| d.id.as_str()).collect();
                return Err(ConfigError::Invalid {
                    key: "registries.enabled",
                    reason: format!("{id:?} is not a known registry (known: {})", ids.join(", ")),
                });
            };
            let name = &definition.pseudonym_key;
            let env = format!("{ENV_PREFIX}REGISTRIES__KEYS__{}", name.replace('-', "_").to_ascii_uppercase());
            match self.registries.key(name) {
                None => {
                    return Err(ConfigError::Parse(format!(
                        "missing value for `registries.keys.{name}` (or {env}): registry {id} is enabled and needs \
                         its pseudonymization key"
                    )));
                }
                Some(key) if key.len() < sdoh::registry::MIN_KEY_BYTES => {
                    return Err(ConfigError::Parse(format!(
                        "invalid value for `registries.keys.{name}` (or {env}): a pseudonymization key needs at \
                         least {} bytes",
                        sdoh::registry::MIN_KEY_BYTES
                    )));
                }
                Some(_) => {}
            }
        }
        if self.exports.expiry_secs == 0 {
            return Err(ConfigError::Invalid { key: "exports.expiry_secs", reason: "must be at least 1".into() });
        }
        if self.exports.max_concurrent_per_client == 0 {
            return Err(ConfigError::Invalid {
                key: "exports.max_concurrent_per_client",
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }

    /// The configuration as TOML with secrets (database password) replaced by `***`.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        shown.database.url = redact_url(&shown.database.url);
        for key in shown.registries.keys.values_mut() {
            *key = "***".into();
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }

    /// The FHIR base URL: configured, or derived from the address the HTTP listener actually bound.
    pub fn fhir_base_url(&self, bound: SocketAddr) -> String {
        if self.fhir.base_url.is_empty() {
            format!("http://{bound}/fhir")
        } else {
            self.fhir.base_url.trim_end_matches('/').to_owned()
        }
    }

    pub fn store_options(&self) -> store::StoreOptions {
        let mut options = store::StoreOptions::new(self.database.url.clone());
        options.max_connections = self.database.max_connections;
        options.connect_timeout = std::time::Duration::from_secs(self.database.connect_timeout_secs);
        options.acquire_timeout = std::time::Duration::from_secs(self.database.acquire_timeout_secs.max(1));
        options.sqlite_durability = self.database.sqlite_durability;
        options.sqlite_writer_cache_mib = self.database.sqlite_writer_cache_mib;
        options
    }
}

impl OutboundConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let at_least_one = |key: &'static str, value: u64| {
            if value == 0 { Err(ConfigError::Invalid { key, reason: "must be at least 1".into() }) } else { Ok(()) }
        };
        at_least_one("outbound.backoff_base_ms", self.backoff_base_ms)?;
        at_least_one("outbound.backoff_max_secs", self.backoff_max_secs)?;
        at_least_one("outbound.poll_interval_ms", self.poll_interval_ms)?;
        at_least_one("outbound.idle_close_secs", self.idle_close_secs)?;
        let mut names = std::collections::HashSet::new();
        for d in &self.destinations {
            let invalid = |key: &'static str, reason: String| ConfigError::Invalid {
                key,
                reason: format!("destination {:?}: {reason}", d.name),
            };
            let name_ok = !d.name.is_empty()
                && d.name.len() <= 64
                && d.name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !name_ok {
                return Err(invalid(
                    "outbound.destinations.name",
                    "must be 1 to 64 letters, digits, '-', '_' or '.'".into(),
                ));
            }
            if !names.insert(d.name.as_str()) {
                return Err(invalid("outbound.destinations.name", "is used by more than one destination".into()));
            }
            if split_host_port(&d.address).is_none() {
                return Err(invalid("outbound.destinations.address", format!("{:?} is not host:port", d.address)));
            }
            if d.connect_timeout_secs == 0 {
                return Err(invalid("outbound.destinations.connect_timeout_secs", "must be at least 1".into()));
            }
            if d.ack_timeout_secs == 0 {
                return Err(invalid("outbound.destinations.ack_timeout_secs", "must be at least 1".into()));
            }
            if d.max_attempts < 1 {
                return Err(invalid("outbound.destinations.max_attempts", "must be at least 1".into()));
            }
            if let Some(tls) = &d.tls {
                if tls.cert_file.is_some() != tls.key_file.is_some() {
                    return Err(invalid(
                        "outbound.destinations.tls.cert_file",
                        "cert_file and key_file go together (mutual TLS)".into(),
                    ));
                }
                for (key, path) in [
                    ("outbound.destinations.tls.ca_file", Some(&tls.ca_file)),
                    ("outbound.destinations.tls.cert_file", tls.cert_file.as_ref()),
                    ("outbound.destinations.tls.key_file", tls.key_file.as_ref()),
                ] {
                    if let Some(path) = path.filter(|p| !p.is_file()) {
                        return Err(invalid(key, format!("{} is not a readable file", path.display())));
                    }
                }
            }
        }
        Ok(())
    }
}

/// `host:port` split into its parts (`[::1]:2575` for IPv6); `None` unless both are present and the port is a number.
pub fn split_host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let port: u16 = port.parse().ok()?;
    if host.is_empty() || port == 0 || host.contains(char::is_whitespace) {
        return None;
    }
    Some((host, port))
}

/// Replaces the password of a URL's user info with `***`, leaving everything else readable.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let user_info = &authority[..at];
            let user = user_info.split(':').next().unwrap_or("");
            let hidden = if user_info.contains(':') { format!("{user}:***") } else { user.to_owned() };
            format!("{}://{hidden}@{}", &url[..scheme_end], &rest[at + 1..])
        }
        None => url.to_owned(),
    }
}

/// Figment's message, reworded to name our keys (`database.url`) instead of its internal profile path.
fn describe_figment_error(error: figment::Error) -> String {
    let mut lines = Vec::new();
    for e in error {
        let key = e.path.join(".");
        let source = e
            .metadata
            .as_ref()
            .map(|m| match &m.source {
                Some(figment::Source::Custom(s)) => format!(" (from {s})"),
                _ if m.name.contains("environment") => " (from environment)".to_owned(),
                _ if m.name.contains("TOML") => " (from configuration file)".to_owned(),
                _ => String::new(),
            })
            .unwrap_or_default();
        let reason = e.kind.to_string();
        if key.is_empty() {
            lines.push(format!("invalid configuration: {reason}{source}"));
        } else {
            lines.push(format!("invalid value for `{key}`: {reason}{source}"));
        }
    }
    lines.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_and_nothing_else() {
        assert_eq!(redact_url("postgres://app:s3cret@db:5432/sdoh"), "postgres://app:***@db:5432/sdoh");
        assert_eq!(redact_url("postgres://app@db/sdoh"), "postgres://app@db/sdoh");
        assert_eq!(redact_url("sqlite:./data/gateway.db"), "sqlite:./data/gateway.db");
        assert_eq!(redact_url("postgres://a:b@h/d?sslmode=require"), "postgres://a:***@h/d?sslmode=require");
    }

    #[test]
    fn defaults_are_valid_and_zero_configuration() {
        let config = GatewayConfig::default();
        config.validate().unwrap();
        assert_eq!(config.http.listen.to_string(), "127.0.0.1:8080");
        assert!(config.database.url.starts_with("sqlite:./data/"));
    }

    #[test]
    fn the_example_outbound_destination_parses_once_uncommented() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/gateway.example.toml");
        let text = std::fs::read_to_string(example).unwrap();
        let block: String = text
            .lines()
            .skip_while(|l| !l.starts_with("# [[outbound.destinations]]"))
            .take_while(|l| l.starts_with('#'))
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        let start = text.find("# [[outbound.destinations]]").unwrap();
        let parsed: GatewayConfig = toml::from_str(&format!("{}{block}", &text[..start])).unwrap();
        // The example's TLS files do not exist here.
        assert_eq!(invalid_key(parsed.validate()), "outbound.destinations.tls.ca_file");
        let d = &parsed.outbound.destinations;
        assert_eq!(d.len(), 1, "{block}");
        assert_eq!(d[0].name, "ehr-main");
        assert_eq!(d[0].address, "ehr.example.org:2575");
        assert_eq!(d[0].receiving_application, "EPIC");
        assert_eq!((d[0].connect_timeout_secs, d[0].ack_timeout_secs, d[0].max_attempts), (10, 30, 10));
        let tls = d[0].tls.as_ref().unwrap();
        assert_eq!(tls.server_name, "ehr.example.org");
        assert!(tls.cert_file.is_some() && tls.key_file.is_some());
        // Every key of a destination (TLS included) is in the documented block.
        let mut full = OutboundDestination {
            name: "x".into(),
            address: "h:1".into(),
            receiving_application: String::new(),
            receiving_facility: String::new(),
            connect_timeout_secs: 1,
            ack_timeout_secs: 1,
            max_attempts: 1,
            tls: None,
        };
        full.tls = Some(OutboundTlsConfig {
            ca_file: "a".into(),
            cert_file: Some("b".into()),
            key_file: Some("c".into()),
            server_name: String::new(),
        });
        let keys = toml::Value::try_from(&full).unwrap();
        for (key, value) in keys.as_table().unwrap() {
            assert!(block.contains(&format!("{key} =")) || value.is_table(), "example lacks destinations.{key}");
            if let Some(t) = value.as_table() {
                for k in t.keys() {
                    assert!(block.contains(&format!("{k} =")), "example lacks destinations.{key}.{k}");
                }
            }
        }
    }

    fn with_destination(edit: impl FnOnce(&mut OutboundDestination)) -> Result<(), ConfigError> {
        let mut d = OutboundDestination {
            name: "ehr".into(),
            address: "ehr.example.org:2575".into(),
            receiving_application: "EPIC".into(),
            receiving_facility: String::new(),
            connect_timeout_secs: 10,
            ack_timeout_secs: 30,
            max_attempts: 10,
            tls: None,
        };
        edit(&mut d);
        let mut config = GatewayConfig::default();
        config.outbound.destinations = vec![d];
        config.validate()
    }

    fn invalid_key(result: Result<(), ConfigError>) -> &'static str {
        match result {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn the_sqlite_writer_cache_reaches_the_store_and_is_bounded() {
        let mut config = GatewayConfig::default();
        assert_eq!(config.store_options().sqlite_writer_cache_mib, 32);
        config.database.sqlite_writer_cache_mib = 64;
        config.validate().unwrap();
        assert_eq!(config.store_options().sqlite_writer_cache_mib, 64);
        for mib in [0, 4097] {
            config.database.sqlite_writer_cache_mib = mib;
            assert_eq!(invalid_key(config.validate()), "database.sqlite_writer_cache_mib");
        }
    }

    #[test]
    fn the_closed_loop_window_is_a_day_to_a_year() {
        let mut config = GatewayConfig::default();
        assert_eq!(config.measures.completion_window_days, 30);
        config.validate().unwrap();
        for days in [0, 366] {
            config.measures.completion_window_days = days;
            assert_eq!(invalid_key(config.validate()), "measures.completion_window_days");
        }
    }

    #[test]
    fn outbound_destinations_are_validated_naming_the_key() {
        with_destination(|_| {}).unwrap();
        with_destination(|d| d.address = "[::1]:2575".into()).unwrap();
        assert_eq!(invalid_key(with_destination(|d| d.name = "has space".into())), "outbound.destinations.name");
        assert_eq!(
            invalid_key(with_destination(|d| d.address = "ehr.example.org".into())),
            "outbound.destinations.address"
        );
        assert_eq!(invalid_key(with_destination(|d| d.address = "ehr:http".into())), "outbound.destinations.address");
        assert_eq!(invalid_key(with_destination(|d| d.ack_timeout_secs = 0)), "outbound.destinations.ack_timeout_secs");
        assert_eq!(
            invalid_key(with_destination(|d| d.connect_timeout_secs = 0)),
            "outbound.destinations.connect_timeout_secs"
        );
        assert_eq!(invalid_key(with_destination(|d| d.max_attempts = 0)), "outbound.destinations.max_attempts");
        let missing = |cert: Option<PathBuf>| OutboundTlsConfig {
            ca_file: "/nonexistent/ca.pem".into(),
            key_file: cert.clone(),
            cert_file: cert,
            server_name: String::new(),
        };
        assert_eq!(invalid_key(with_destination(|d| d.tls = Some(missing(None)))), "outbound.destinations.tls.ca_file");
        let mut half = missing(None);
        half.cert_file = Some("/nonexistent/cert.pem".into());
        assert_eq!(invalid_key(with_destination(|d| d.tls = Some(half))), "outbound.destinations.tls.cert_file");
        let mut config = GatewayConfig::default();
        config.outbound.destinations = vec![
            OutboundDestination { name: "a".into(), ..config_destination() },
            OutboundDestination { name: "a".into(), ..config_destination() },
        ];
        assert_eq!(invalid_key(config.validate()), "outbound.destinations.name");
        let mut config = GatewayConfig::default();
        config.outbound.backoff_base_ms = 0;
        assert_eq!(invalid_key(config.validate()), "outbound.backoff_base_ms");
    }

    fn config_destination() -> OutboundDestination {
        toml::from_str("name = \"x\"\naddress = \"127.0.0.1:2575\"").unwrap()
    }

    #[test]
    fn outbound_destinations_come_from_toml_with_defaults() {
        let config: GatewayConfig = toml::from_str(
            "[outbound]\nbackoff_base_ms = 50\n[[outbound.destinations]]\nname = \"ehr\"\naddress = \"127.0.0.1:2575\"\n",
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.outbound.backoff_base_ms, 50);
        let d = &config.outbound.destinations[0];
        assert_eq!((d.connect_timeout_secs, d.ack_timeout_secs, d.max_attempts), (10, 30, 10));
        assert!(d.receiving_application.is_empty() && d.tls.is_none());
        assert!(
            toml::from_str::<GatewayConfig>("[[outbound.destinations]]\nname = \"x\"\naddress = \"h:1\"\nport = 1\n")
                .is_err()
        );
    }

    #[test]
    fn the_example_file_documents_every_key_and_parses() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/gateway.example.toml");
        let text = std::fs::read_to_string(example).unwrap();
        let parsed: GatewayConfig = toml::from_str(&text).unwrap();
        parsed.validate().unwrap();
        // Every key of the full struct appears in the example.
        let full = toml::Value::try_from(GatewayConfig::default()).unwrap();
        let example: toml::Value = toml::from_str(&text).unwrap();
        for (section, keys) in full.as_table().unwrap() {
            for key in keys.as_table().unwrap().keys() {
                assert!(
                    example.get(section).and_then(|s| s.get(key)).is_some(),
                    "deploy/gateway.example.toml lacks {section}.{key}"
                );
            }
        }
    }
}
