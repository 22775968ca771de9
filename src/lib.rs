//! ferry: change-data-capture replication between microservices' PostgreSQL
//! databases. See DESIGN.md in the shared notes for the vocabulary and data path.
//!
//! The data path reads top to bottom: [`source`] (replication stream to
//! transactions) → [`pipeline`] (wiring, feedback, retries) → [`apply`]
//! (target writes and progress), with [`snapshot`] for the initial copy and
//! [`route`] for the rules that pick rows (the `where` filter).
//! [`demo`] runs all of it between two throwaway clusters.

pub mod apply;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod fault;
pub mod pg;
pub mod pipeline;
pub mod route;
pub mod snapshot;
pub mod source;
pub mod tail;
pub mod validate;
