//! Wire level: connection strings, TLS, the replication connection and the
//! pgoutput decoder. Nothing above this module touches PostgreSQL's bytes.

pub mod conninfo;
pub mod lsn;
pub mod tls;

pub use conninfo::{ConnInfo, ConnInfoError, Host, Secret, SslMode};
pub use lsn::Lsn;
