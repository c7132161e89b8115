//! `sdoh-gateway export --registry ID --out FOLDER`: a registry's records as Bulk Data NDJSON files, written
//! straight from the database by the same streaming writer as `Group/{id}/$export`.
//!
//! On a terminal the progress is a bar redrawn in place on stderr; otherwise (logs, pipes) a line at every tenth.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::config::GatewayConfig;
use crate::registries::export::{ExportRequest, Level, Progress, write_files};

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Registry id, as in profiles/registries (e.g. diabetes)
    #[arg(long)]
    pub registry: String,
    /// Only records changed at or after this FHIR instant (e.g. 2026-01-01T00:00:00Z)
    #[arg(long)]
    pub since: Option<String>,
    /// Only these resource types (comma-separated, e.g. Patient,Condition)
    #[arg(long = "type", value_delimiter = ',')]
    pub types: Vec<String>,
    /// Folder for the NDJSON files (created if missing; files of the same names are replaced)
    #[arg(long)]
    pub out: PathBuf,
}

pub async fn run(config: &GatewayConfig, args: ExportArgs) -> anyhow::Result<()> {
    let request = request_of(&args)?;
    if !config.registries.enabled.contains(&args.registry) {
        tracing::warn!(registry = %args.registry, "registry is not enabled in this configuration; exporting its records as last kept");
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let store = crate::serve::open_store(config).await?;
    let started = Instant::now();
    let mut progress = Bar::new(std::io::stderr().is_terminal());
    let outcome = write_files(&store, &request, &args.out, &mut progress).await;
    store.close().await;
    progress.done();
    let files = outcome?.context("the export was interrupted")?;
    let mut out = std::io::stdout().lock();
    let total: u64 = files.iter().map(|f| f.count).sum();
    for f in &files {
        writeln!(out, "{}\t{}\t{}", f.resource_type, f.count, args.out.join(&f.file).display())?;
    }
    writeln!(out, "exported {total} resources in {} files ({:.1} s)", files.len(), started.elapsed().as_secs_f64())?;
    Ok(())
}

fn request_of(args: &ExportArgs) -> anyhow::Result<ExportRequest> {
    if sdoh::registry::Registries::builtin().get(&args.registry).is_none() {
        bail!("--registry: {:?} is not a known registry", args.registry);
    }
    let since = match &args.since {
        None => None,
        Some(text) => {
            let valid = fhir_server::rest::validate::is_valid(fhir_server::rest::validate::Primitive::Instant, text);
            let parsed = chrono::DateTime::parse_from_rfc3339(text).ok().filter(|_| valid);
            Some(
                parsed
                    .with_context(|| format!("--since: {text:?} is not a FHIR instant (e.g. 2026-01-01T00:00:00Z)"))?
                    .timestamp_micros(),
            )
        }
    };
    let exportable = ExportRequest::exportable(Level::Group);
    for t in &args.types {
        if !exportable.contains(&t.as_str()) {
            bail!("--type: {t} is not in registry records (supported: {})", exportable.join(", "));
        }
    }
    Ok(ExportRequest { level: Level::Group, registry: Some(args.registry.clone()), since, types: args.types.clone() })
}

/// Progress on stderr: a bar on a terminal, else a line per tenth.
struct Bar {
    terminal: bool,
    drawn: Option<Instant>,
    tenth: u64,
    started: Instant,
}

impl Bar {
    fn new(terminal: bool) -> Bar {
        Bar { terminal, drawn: None, tenth: 0, started: Instant::now() }
    }

    fn done(&self) {
        if self.terminal && self.drawn.is_some() {
            eprintln!();
        }
    }
}

impl Progress for Bar {
    async fn report(&mut self, done: u64, total: u64) -> bool {
        let fraction = if total == 0 { 1.0 } else { done as f64 / total as f64 };
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let redraw = self.drawn.is_none_or(|at| at.elapsed() >= Duration::from_millis(100)) || done >= total;
            if redraw {
                let filled = (fraction * 30.0).round() as usize;
                let rate = done as f64 / self.started.elapsed().as_secs_f64().max(0.001);
                let _ = write!(
                    err,
                    "\r[{}{}] {:>3.0}% {done}/{total} records ({rate:.0}/s)",
                    "#".repeat(filled.min(30)),
                    "-".repeat(30 - filled.min(30)),
                    fraction * 100.0
                );
                let _ = err.flush();
                self.drawn = Some(Instant::now());
            }
        } else {
            let tenth = (fraction * 10.0).floor() as u64;
            if self.drawn.is_none() || tenth > self.tenth {
                let _ = writeln!(err, "exported {done} of {total} records ({}%)", tenth * 10);
                self.tenth = tenth;
                self.drawn = Some(Instant::now());
            }
        }
        true
    }
}
