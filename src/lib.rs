//! statusd posts WhatsApp status updates (24-hour stories) from a persistent
//! outbox, so that every status an upstream app enqueues is shown to viewers
//! exactly once.
//!
//! # Layout
//!
//! - [`model`]: states, kinds, rows and the validation of rows written by others.
//! - [`config`]: layered settings (`config/`, `STATUSD__…` variables), secrets.
//! - [`store`]: the `Store` trait, one method per query, with a SQLite and a
//!   PostgreSQL implementation; only this module writes SQL.
//! - [`provider`]: the provider trait, the Wawp client, the classification of
//!   every HTTP outcome, local message-id generation.
//! - [`sim`]: the provider simulator with fault injection (tests, demo, bench).
//! - [`daemon`]: the pipeline services: id assigner, dispatcher, reconciler,
//!   lease rescuer, scheduler, wake-up, shutdown.
//! - [`admin`]: the admin HTTP API, metrics and dashboard.
//! - [`cli`]: the operator's command line (the binary is a thin wrapper).

pub mod admin;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod model;
pub mod provider;
pub mod sim;
pub mod store;
