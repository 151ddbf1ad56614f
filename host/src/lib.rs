//! tokenwarden: a sandboxed OAuth 2.0 client-credentials token refresher.
//!
//! A WebAssembly component ([`BUILTIN_COMPONENT`], built into this crate) fetches a token
//! and stores it; this library is the wasmtime host that runs it with exactly what its job
//! grants: outbound HTTP to the token endpoint's origin and a handful of named secrets.
//!
//! # Embedding
//!
//! - Run jobs with the reference host: build a [`Runtime`], describe a job with
//!   [`JobConfig`] (or load a [`Config`] file), and call [`Runtime::run`] with any
//!   [`SecretStore`] ([`MemoryStore`], [`SqliteStore`], [`PgStore`] or your own). For
//!   schedules, retries and several processes sharing a store, run a [`Daemon`].
//! - Or link the component into your own wasmtime host: wasi and wasi:http from
//!   wasmtime-wasi(-http) (with [`EgressPolicy`] as the HTTP hooks to keep the allow-list),
//!   [`secrets::add_to_linker`] for the secrets, and the [`Refresher`] bindings to call the
//!   exported action. `examples/embed.rs` is a complete host in sixty lines.
//!
//! # Modules
//!
//! The data path reads in one direction: a [`Config`] (the file) holds [`JobConfig`]s and
//! each capability's settings; the [`Runtime`] runs a job's component with the
//! [`secrets`] and [`egress`] capabilities; the component's results are the contract's
//! [`Outcome`] and [`PluginError`]; the [`store`] keeps what it wrote. [`schedule`] holds the
//! pure timing decisions the [`daemon`] applies, and [`admin`] serves its HTTP API; the
//! daemon gets each new token to its consumers through [`sink`] files (and their on-change
//! actions) and the [`socket`];
//! [`emulator`] is an Entra-compatible token endpoint for tests and demos. The contract's
//! names ([`role`], [`entra`]) come from the `tokenwarden-contract` crate the plugin shares.
//! The command line (`cli`) is the binary's, not a library API: it lives behind the `cli`
//! feature (on by default), which embedders can turn off.

pub mod admin;
mod bearer;
mod bindings;
mod cache;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod cli;
mod config;
pub mod daemon;
pub mod egress;
pub mod emulator;
mod files;
mod job;
mod limits;
mod listen;
mod outcome;
pub mod proxy;
mod redact;
mod runtime;
pub mod schedule;
pub mod secrets;
pub mod signing;
pub mod sink;
pub mod socket;
pub mod store;
mod text;
mod time;

pub use admin::{AdminConfig, AdminLimits};
pub use bindings::p3::{RefresherP3, RefresherP3Pre, async_action};
pub use bindings::{Refresher, RefresherPre, action};
pub use cache::{CacheOutcome, CompileCache};
pub use config::{CONFIG_ENV, Config, ConfigError};
pub use daemon::{
    Coordination, CurrentToken, Daemon, DaemonConfig, DeliveryStatus, JobStatus, RunEvent,
    RunRecord, Trigger, TriggerError,
};
pub use egress::{ClientIdentity, EgressPolicy, HttpLimits, NetTransport, Origin, Transport};
pub use job::{ClientAuth, IdentitySource, JobConfig, SigningAlg, WASI_ENV, WasiVersion};
pub use limits::RunLimits;
pub use outcome::{OAuthError, Outcome, PluginError, Retry, RunError};
pub use runtime::{
    BUILTIN_COMPONENT, BUILTIN_COMPONENT_P3, Pooling, RunReport, Runtime, RuntimeOptions,
    WASMTIME_VERSION, builtin_component,
};
pub use schedule::{Policy, Schedule};
pub use secrets::{SecretRoles, SecretsCtx};
pub use signing::SigningCtx;
pub use sink::{Action, Sink};
pub use socket::{Consumers, SocketConfig};
pub use store::{MemoryStore, PgStore, SecretStore, SqliteStore, StoreConfig, StoreError};
pub use tokenwarden_contract::{entra, role};
