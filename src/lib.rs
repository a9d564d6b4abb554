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
//! - [`wire`]: the provider's wire vocabulary (API paths, field names, chat
//!   ids, message-id forms and their generation), shared by the client and
//!   the simulator so that neither imports the other.
//! - [`provider`]: the provider trait and the Wawp client (`provider::wawp`:
//!   the classification of every HTTP outcome, look-ups, redaction).
//! - [`sim`]: the provider simulator with fault injection (tests, demo,
//!   bench); it imports the wire vocabulary, never the client.
//! - [`daemon`]: the pipeline services: id assigner, dispatcher, reconciler,
//!   lease rescuer, scheduler, wake-up, shutdown.
//! - [`admin`]: the admin HTTP API, metrics and dashboard.
//! - [`cli`]: the operator's command line (the binary is a thin wrapper).
//! - [`demo`]: `statusd demo`: SQLite, the simulator with faults and the
//!   daemon in one process, and what viewers saw.

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod instance;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod provider;
pub mod sim;
pub mod store;
pub mod wire;
