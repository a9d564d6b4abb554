//! statusd posts WhatsApp status updates (24-hour stories) from a persistent
//! outbox, so that every status an upstream app enqueues is shown to viewers
//! exactly once.
//!
//! # Layout
//!
//! In pipeline order, from the data to the wiring; each module imports only
//! the ones listed above it, unit tests aside (the binary sits on top).
//!
//! - [`model`]: states, kinds, rows and the validation of rows written by others.
//! - [`config`]: layered settings (`config/`, `STATUSD__…` variables), secrets,
//!   and the one "is this instance configured" check.
//! - [`store`]: the `Store` trait, one method per query, with a SQLite and a
//!   PostgreSQL implementation; only this module writes SQL.
//! - [`metrics`]: the Prometheus metric names, help texts and label sets.
//! - [`wire`]: the provider's wire vocabulary (API paths, field names, chat
//!   ids, message-id forms and their generation), shared by the client and
//!   the simulator so that neither imports the other.
//! - [`provider`]: the provider trait and the Wawp client (`provider::wawp`:
//!   the classification of every HTTP outcome, look-ups, redaction).
//! - [`sim`]: the provider simulator with fault injection (tests, demo,
//!   bench), playing Wawp or one of WAHA's engines on both APIs; it imports
//!   the wire vocabulary, never the client, and of the modules below it
//!   only [`demo`] and [`cli`] (`statusd sim`) import it.
//! - [`instance`]: a configured instance as a process holds it: client,
//!   rate limiter, pause; and the registry of every instance the process
//!   knows (the file's, and the `status_instances` table's, kept in step
//!   at runtime).
//! - [`webhooks`]: the provider's events as evidence: signature checks,
//!   what an event proves (views, existence), the inbox processor.
//! - [`ops`]: the operator actions both the CLI and the admin API offer
//!   (find, validated enqueue, retry / force-resend, cancel, delete; the
//!   instance commands in `ops::instances`).
//! - [`daemon`]: the pipeline services, enqueue → id → claim → send →
//!   outcome → reconcile: id assigner, dispatcher, reconciler, lease
//!   rescuer, scheduler, each with its own config; wake-up, shutdown.
//! - [`admin`]: the admin HTTP API, metrics page and dashboard, over [`ops`].
//! - [`app`]: startup: builds the provider clients and wires store, daemon
//!   and admin server (`statusd run`).
//! - [`demo`]: `statusd demo`: SQLite, the simulator with faults and its
//!   signed webhook events, the daemon in one process, and what viewers saw.
//! - [`cli`]: the operator's command line (the binary is a thin wrapper).

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
pub mod webhooks;
pub mod wire;
