//! ferry: change-data-capture replication between microservices' PostgreSQL
//! databases. See DESIGN.md in the shared notes for the vocabulary and data path.
//!
//! The data path reads top to bottom: [`source`] (replication stream to
//! transactions) → [`pipeline`] (wiring, feedback, retries) → [`apply`]
//! (target writes and progress), with [`snapshot`] for the initial copy and
//! [`route`] for the rules that shape what flows (columns, rows, operations).
//! [`demo`] runs all of it between two throwaway clusters. [`metrics`]
//! holds what an operator sees of it, served by [`server`] and printed by
//! [`status`].

pub mod apply;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod fault;
pub mod metrics;
pub mod pg;
pub mod pipeline;
pub mod route;
pub mod server;
pub mod snapshot;
pub mod source;
pub mod status;
pub mod tablesync;
pub mod tail;
pub mod teardown;
pub mod validate;
