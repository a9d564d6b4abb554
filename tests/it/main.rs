//! All integration tests build into one binary (one module per feature).

mod admin;
mod chaos;
mod cli;
mod daemon;
mod dashboard;
mod netfault;
mod pg_restart;
mod provider;
mod sim;
mod state_machine;
mod store;
mod support;
