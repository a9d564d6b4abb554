//! All integration tests build into one binary (one module per feature).

mod admin;
mod chaos;
mod cli;
mod daemon;
mod dashboard;
mod multiprocess;
mod provider;
mod sim;
mod state_machine;
mod store;
mod support;
