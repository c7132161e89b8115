//! The `sdoh-gateway` command: serve, migrate, check-config, messages, clients, outbound, export.

use gateway::{clients_cli, config, export_cli, messages_cli, outbound_cli, serve, telemetry};

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: the gateway allocates and frees many small JSON values per request and
/// per normalized screening, and glibc's malloc/free were ~12 % of a FHIR create's profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use config::{GatewayConfig, Overrides};

/// HL7 v2 + FHIR R4 gateway for social-needs (SDOH) data between clinics, community organizations and registries.
#[derive(Debug, Parser)]
#[command(name = "sdoh-gateway", version, about)]
struct Cli {
    /// TOML configuration file (see deploy/gateway.example.toml); SDOH_GATEWAY_* variables and flags override it.
    #[arg(long, global = true, env = "SDOH_GATEWAY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default): migrate the database, then serve until SIGTERM or Ctrl-C.
    Serve,
    /// Bring the database schema up to date and exit.
    Migrate,
    /// Print the effective configuration (file + environment + flags) with secrets redacted, and exit.
    CheckConfig,
    /// The HL7 v2 message journal: list, show, reprocess.
    #[command(subcommand)]
    Messages(messages_cli::MessagesCommand),
    /// API clients (bearer credentials bound to an Organization and a role): add, list, revoke.
    #[command(subcommand)]
    Clients(clients_cli::ClientsCommand),
    /// Outbound HL7 v2 messages (application ACKs, referral status updates) and their ACKs: list, show.
    #[command(subcommand)]
    Outbound(outbound_cli::OutboundCommand),
    /// Export a registry's records as Bulk Data NDJSON files into a folder, straight from the database.
    Export(export_cli::ExportArgs),
}

/// Exit status for configuration errors, as for command-line usage errors.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match GatewayConfig::load(cli.config.as_deref(), &cli.overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sdoh-gateway: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::CheckConfig = command {
        print!("{}", config.to_redacted_toml());
        return ExitCode::SUCCESS;
    }
    telemetry::init_logging(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sdoh-gateway: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match command {
            Command::Serve => serve::run(config).await,
            Command::Migrate => {
                let store = serve::open_store(&config).await?;
                store.close().await;
                println!("database schema is up to date ({})", store.backend().as_str());
                Ok(())
            }
            Command::Messages(command) => messages_cli::run(&config, command).await,
            Command::Clients(command) => clients_cli::run(&config, command).await,
            Command::Outbound(command) => outbound_cli::run(&config, command).await,
            Command::Export(args) => export_cli::run(&config, args).await,
            Command::CheckConfig => unreachable!("handled before the runtime starts"),
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "fatal");
            eprintln!("sdoh-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}
