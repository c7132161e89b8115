//! `sdoh-bench-seed`: writes a deterministic synthetic population (`gateway::seed`) straight into a gateway's
//! database, with registry membership, for the registry, export and measure benchmarks (`scripts/bench-registry.sh`).
//! Not for production databases: it writes Patients under fixed `bp…` ids.

use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use gateway::config::RegistriesConfig;
use gateway::registries::RegistrySet;
use gateway::seed::{Population, seed};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "sdoh-bench-seed", about = "Seed a gateway database with a synthetic population for benchmarks")]
struct Args {
    /// Database URL (sqlite:… or postgres://…), as the gateway's --database-url
    #[arg(long)]
    database_url: String,
    /// Patients to write (numbers --from .. --from + --patients)
    #[arg(long, default_value_t = 10_000)]
    patients: u64,
    /// First patient number: a population grows in steps with the same seed
    #[arg(long, default_value_t = 0)]
    from: u64,
    #[arg(long, default_value_t = 8)]
    seed: u64,
    /// Patients per transaction
    #[arg(long, default_value_t = 500)]
    per_transaction: u64,
    /// Registries to record membership in, with their keys: `id=key` (the gateway must use the same keys)
    #[arg(long = "registry", value_parser = parse_registry)]
    registries: Vec<(String, String)>,
}

fn parse_registry(text: &str) -> Result<(String, String), String> {
    let (id, key) = text.split_once('=').ok_or("expected id=key")?;
    Ok((id.to_owned(), key.to_owned()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = RegistriesConfig::default();
    for (id, key) in &args.registries {
        let definition = sdoh::registry::Registries::builtin()
            .get(id)
            .with_context(|| format!("--registry: unknown registry {id:?}"))?;
        config.enabled.push(id.clone());
        config.keys.insert(definition.pseudonym_key.clone(), key.clone());
    }
    let registries = RegistrySet::from_config(&config).map_err(anyhow::Error::msg)?;
    let mut options = store::StoreOptions::new(&args.database_url);
    // Seeding is reloadable: a crash loses the run, not data anyone relies on.
    options.sqlite_durability = store::SqliteDurability::Normal;
    let store = store::Store::connect(&options).await?;
    store.migrate().await?;
    fhir_server::measures::facts::backfill(&store).await?;
    let started = Instant::now();
    let population = Population { seed: args.seed, ..Population::default() };
    let mut reported = 0;
    let seeded = seed(
        &store,
        &registries,
        &population,
        args.from,
        args.from + args.patients,
        args.per_transaction,
        |done, total| {
            if done * 10 / total.max(1) > reported || done == total {
                reported = done * 10 / total.max(1);
                eprintln!("{done} of {total} patients ({:.0} s)", started.elapsed().as_secs_f64());
            }
        },
    )
    .await?;
    store.close().await;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{{\"patients\":{},\"resources\":{},\"registry_rows\":{},\"seconds\":{:.1},\"resources_per_s\":{:.0}}}",
        seeded.patients,
        seeded.resources,
        seeded.registry_rows,
        seconds,
        seeded.resources as f64 / seconds
    );
    Ok(())
}
