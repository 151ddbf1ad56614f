//! tokenwarden: a sandboxed OAuth 2.0 client-credentials token refresher.
//!
//! A WebAssembly component (built into this crate, see [`runtime::BUILTIN_COMPONENT`])
//! fetches tokens; this library is the wasmtime host that runs it with exactly the
//! capabilities its job grants. Modules by capability:
//! [`config`] (the TOML contract), [`store`] (durable secrets), [`egress`] (outbound HTTP
//! policy), [`grants`] (the `secrets` interface), [`runtime`] (engine and runs),
//! [`schedule`] (pure timing decisions), [`daemon`] (scheduled runs, retries), [`admin`]
//! (HTTP API), [`metrics`], [`emulator`] (an Entra-compatible token endpoint), [`cli`].

pub mod admin;
mod bindings;
pub mod cache;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod egress;
pub mod emulator;
pub mod files;
pub mod grants;
pub mod limits;
pub mod metrics;
pub mod outcome;
mod redact;
pub mod report;
pub mod runtime;
pub mod schedule;
pub mod store;
pub mod text;
pub mod time;

pub use config::{Config, JobConfig};
pub use limits::RunLimits;
pub use outcome::{Outcome, PluginError, RunError};
pub use runtime::{RunReport, Runtime, RuntimeOptions};
pub use store::{SecretStore, memory::MemoryStore, postgres::PgStore, sqlite::SqliteStore};
