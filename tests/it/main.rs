//! All integration tests build into one binary (one module per feature).

mod store;
mod support;
mod cli;
mod daemon;
mod state_machine;
