//! `sdoh-gateway messages list|show|reprocess`: the message journal for operators, straight from the database.

use std::io::Write;

use clap::Subcommand;

use crate::admin::{CONVERT_QUEUE, journal_query};
use crate::config::GatewayConfig;

#[derive(Debug, Subcommand)]
pub enum MessagesCommand {
    /// List journal entries, newest first (control ids, types, statuses; never bodies).
    List {
        /// received, converted or failed
        #[arg(long)]
        status: Option<String>,
        /// Message type as TYPE^EVENT, e.g. ORU^R01
        #[arg(long = "type")]
        message_type: Option<String>,
        /// Only entries received at or after this time (RFC 3339 or YYYY-MM-DD)
        #[arg(long)]
        since: Option<String>,
        /// Only entries received at or before this time
        #[arg(long)]
        until: Option<String>,
        /// Only entries with an id below this (paging)
        #[arg(long)]
        before: Option<i64>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// One JSON object per line instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Show one entry; with --body also print the message itself (patient data: handle with care).
    Show {
        id: i64,
        #[arg(long)]
        body: bool,
    },
    /// Queue entries for conversion again: the given ids, or every entry with --status.
    Reprocess {
        ids: Vec<i64>,
        /// e.g. failed: reprocess every entry in that status
        #[arg(long)]
        status: Option<String>,
    },
}

pub async fn run(config: &GatewayConfig, command: MessagesCommand) -> anyhow::Result<()> {
    let store = crate::serve::open_store(config).await?;
    let outcome = run_with(&store, config, command).await;
    store.close().await;
    outcome
}

async fn run_with(store: &store::Store, config: &GatewayConfig, command: MessagesCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        MessagesCommand::List { status, message_type, since, until, before, limit, json } => {
            let query = journal_query(
                status.as_deref(),
                message_type.as_deref(),
                since.as_deref(),
                until.as_deref(),
                before,
                Some(limit),
            )
            .map_err(anyhow::Error::msg)?;
            let entries = store.journal_list(&query).await?;
            if json {
                for e in &entries {
                    writeln!(out, "{}", serde_json::to_string(e)?)?;
                }
            } else {
                writeln!(
                    out,
                    "{:>8}  {:<27}  {:<8}  {:<20}  {:<24}  {:<9}  {:>7}  DETAIL",
                    "ID", "RECEIVED", "TYPE", "CONTROL ID", "SENDER", "STATUS", "BYTES"
                )?;
                for e in &entries {
                    writeln!(
                        out,
                        "{:>8}  {:<27}  {:<8}  {:<20}  {:<24}  {:<9}  {:>7}  {}",
                        e.id,
                        store::format_instant(e.received),
                        e.message_type,
                        e.control_id,
                        format!("{}/{}", e.sending_application, e.sending_facility),
                        e.status,
                        e.size_bytes,
                        e.status_detail.as_deref().map(detail_summary).unwrap_or_default()
                    )?;
                }
            }
        }
        MessagesCommand::Show { id, body } => {
            let Some(entry) = store.journal_entry(id).await? else { anyhow::bail!("no journal entry {id}") };
            writeln!(out, "{}", serde_json::to_string_pretty(&entry)?)?;
            if body && let Some(raw) = store.journal_body(id).await? {
                // Segment terminators are CR on the wire; show one segment per line.
                let text = String::from_utf8_lossy(&raw).replace("\r\n", "\n").replace('\r', "\n");
                writeln!(out, "{text}")?;
            }
        }
        MessagesCommand::Reprocess { mut ids, status } => {
            if let Some(status) = status {
                let status = store::JournalStatus::parse(&status)
                    .ok_or_else(|| anyhow::anyhow!("unknown status {status:?} (received, converted, failed)"))?;
                ids.extend(store.journal_ids_with_status(status, 1_000_000).await?);
            }
            if ids.is_empty() {
                anyhow::bail!("nothing to reprocess: give journal ids or --status");
            }
            let queued = store.journal_reprocess(&ids, CONVERT_QUEUE, config.workers.max_attempts).await?;
            writeln!(out, "queued {queued} of {} entries for conversion", ids.len())?;
        }
    }
    Ok(())
}

/// The first issue of a status detail (an OperationOutcome) on one line: its diagnostics and location, plus how
/// many more issues there are. `messages show` prints the whole outcome.
fn detail_summary(detail: &str) -> String {
    let Ok(outcome) = serde_json::from_str::<serde_json::Value>(detail) else { return String::new() };
    let issues = outcome["issue"].as_array().map(Vec::as_slice).unwrap_or_default();
    let Some(first) = issues.first() else { return String::new() };
    let mut text = format!(
        "{}: {}",
        first["severity"].as_str().unwrap_or("issue"),
        first["diagnostics"].as_str().unwrap_or("(no diagnostics)")
    );
    if issues.len() > 1 {
        text += &format!(" (+{} more)", issues.len() - 1);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::detail_summary;

    #[test]
    fn details_are_summarized_on_one_line() {
        let oo = r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing",
            "diagnostics":"required field PID-3 is missing"},{"severity":"warning","diagnostics":"x"}]}"#;
        assert_eq!(detail_summary(oo), "error: required field PID-3 is missing (+1 more)");
        assert_eq!(detail_summary("not json"), "");
    }
}
