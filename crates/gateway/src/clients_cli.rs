//! `sdoh-gateway clients add|list|revoke`: API client credentials for operators, straight from the database.

use std::io::Write;

use clap::Subcommand;

use crate::config::GatewayConfig;

#[derive(Debug, Subcommand)]
pub enum ClientsCommand {
    /// Register a client and print its bearer token (shown this once; only a hash is stored).
    Add {
        /// A name operators recognise, e.g. "Eastside Food Bank platform"
        #[arg(long)]
        name: String,
        /// admin, ehr, cbo or registry
        #[arg(long)]
        role: String,
        /// The Organization the client acts for, as Organization/{id}
        #[arg(long)]
        organization: String,
        /// Print the new client as one JSON object (token included)
        #[arg(long)]
        json: bool,
    },
    /// List clients, newest first (never secrets).
    List {
        /// One JSON object per line instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Revoke a client: its token stops working (within `auth.cache_secs` on running gateways).
    Revoke { client_id: String },
}

pub async fn run(config: &GatewayConfig, command: ClientsCommand) -> anyhow::Result<()> {
    let store = crate::serve::open_store(config).await?;
    let outcome = run_with(&store, command).await;
    store.close().await;
    outcome
}

fn client_json(client: &store::ApiClient) -> serde_json::Value {
    serde_json::json!({
        "client_id": client.client_id,
        "name": client.name,
        "role": client.role,
        "organization": client.organization,
        "created": store::format_instant(client.created),
        "revoked": client.revoked.map(store::format_instant),
    })
}

async fn run_with(store: &store::Store, command: ClientsCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        ClientsCommand::Add { name, role, organization, json } => {
            let created = store.add_client(&name, &role, &organization).await?;
            if json {
                let mut value = client_json(&created.client);
                value["token"] = created.token.into();
                writeln!(out, "{value}")?;
            } else {
                writeln!(out, "client_id: {}", created.client.client_id)?;
                writeln!(out, "role: {}  organization: {}", created.client.role, created.client.organization)?;
                writeln!(out, "token: {}", created.token)?;
                writeln!(
                    out,
                    "Keep the token secret; it is not shown again. Send it as Authorization: Bearer <token>."
                )?;
            }
        }
        ClientsCommand::List { json } => {
            let clients = store.list_clients().await?;
            if json {
                for c in &clients {
                    writeln!(out, "{}", client_json(c))?;
                }
            } else {
                writeln!(out, "{:<16}  {:<8}  {:<28}  {:<24}  name", "client_id", "role", "organization", "revoked")?;
                for c in &clients {
                    let revoked = c.revoked.map(store::format_instant).unwrap_or_else(|| "-".into());
                    writeln!(
                        out,
                        "{:<16}  {:<8}  {:<28}  {:<24}  {}",
                        c.client_id, c.role, c.organization, revoked, c.name
                    )?;
                }
            }
        }
        ClientsCommand::Revoke { client_id } => {
            if store.revoke_client(&client_id).await? {
                writeln!(out, "revoked {client_id}")?;
            } else {
                anyhow::bail!("no live client {client_id}");
            }
        }
    }
    Ok(())
}
