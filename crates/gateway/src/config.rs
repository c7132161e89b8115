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
        WorkersConfig { lease_secs: 60, poll_interval_ms: 500, max_attempts: 10 }
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
        Ok(())
    }

    /// The configuration as TOML with secrets (database password) replaced by `***`.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        shown.database.url = redact_url(&shown.database.url);
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
        options
    }
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
