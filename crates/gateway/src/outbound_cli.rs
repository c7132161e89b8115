//! `sdoh-gateway outbound list|show`: the outbound message log for operators, straight from the database.

use std::io::Write;

use clap::Subcommand;

use crate::config::GatewayConfig;
use crate::outbound_admin::outbound_query;

#[derive(Debug, Subcommand)]
pub enum OutboundCommand {
    /// List outbound messages, newest first (destinations, types, control ids, attempts, ACK codes; never bodies).
    List {
        /// queued, sent, acknowledged, failed or dead
        #[arg(long)]
        state: Option<String>,
        /// Destination name, as in [[outbound.destinations]]
        #[arg(long)]
        destination: Option<String>,
        /// Only messages with an id below this (paging)
        #[arg(long)]
        before: Option<i64>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// One JSON object per line instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Show one message's delivery record, with the receiver's text of its last ACK (MSA-3).
    Show { id: i64 },
}

pub async fn run(config: &GatewayConfig, command: OutboundCommand) -> anyhow::Result<()> {
    let store = crate::serve::open_store(config).await?;
    let outcome = run_with(&store, command).await;
    store.close().await;
    outcome
}

async fn run_with(store: &store::Store, command: OutboundCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        OutboundCommand::List { state, destination, before, limit, json } => {
            let query = outbound_query(state.as_deref(), destination.as_deref(), before, Some(limit))
                .map_err(anyhow::Error::msg)?;
            let messages = store.outbound_list(&query).await?;
            if json {
                for m in &messages {
                    writeln!(out, "{}", serde_json::to_string(m)?)?;
                }
            } else {
                writeln!(
                    out,
                    "{:>8}  {:<27}  {:<16}  {:<16}  {:<20}  {:<12}  {:>8}  {:<4}  ERROR",
                    "ID", "QUEUED", "DESTINATION", "TYPE", "CONTROL ID", "STATE", "ATTEMPTS", "ACK"
                )?;
                for m in &messages {
                    writeln!(
                        out,
                        "{:>8}  {:<27}  {:<16}  {:<16}  {:<20}  {:<12}  {:>8}  {:<4}  {}",
                        m.id,
                        store::format_instant(m.queued),
                        m.destination,
                        m.message_type,
                        m.control_id,
                        m.state,
                        m.attempts,
                        m.ack_code.as_deref().unwrap_or("-"),
                        m.last_error.as_deref().unwrap_or_default()
                    )?;
                }
            }
        }
        OutboundCommand::Show { id } => {
            let Some(record) = store.outbound_record(id).await? else { anyhow::bail!("no outbound message {id}") };
            writeln!(out, "{}", serde_json::to_string_pretty(&record)?)?;
        }
    }
    Ok(())
}
