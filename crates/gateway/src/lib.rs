//! The sdoh-gateway application: configuration, HTTP and MLLP wiring, workers, telemetry and operator commands.
//! The `sdoh-gateway` binary (`main.rs`) and the load tool (`bin/sdoh-load.rs`) are thin shells around it.

pub mod admin;
pub mod auth;
pub mod clients_cli;
pub mod config;
pub mod dashboard;
pub mod export_cli;
pub mod http;
pub mod ingest;
pub mod messages_cli;
pub mod outbound;
pub mod outbound_admin;
pub mod outbound_cli;
pub mod registries;
pub mod seed;
pub mod serve;
pub mod subscriptions;
pub mod synth;
pub mod telemetry;
pub mod worker;
