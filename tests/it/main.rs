//! All integration tests build into one binary (one module per feature).

mod admin;
mod api;
mod capabilities;
mod chaos;
mod cli;
mod clock;
mod config;
mod daemon;
mod dashboard;
mod disk_full;
mod fairness;
mod instances;
mod multiprocess;
mod netfault;
mod pg_restart;
mod provider;
mod sim;
mod soak;
mod sqlite_kill;
mod state_machine;
mod store;
mod support;
mod webhooks;
