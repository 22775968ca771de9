//! Wire level: connection strings, TLS, the replication connection and the
//! pgoutput decoder. Nothing above this module touches PostgreSQL's bytes.

pub mod lsn;
pub mod pgoutput;

pub use lsn::Lsn;
