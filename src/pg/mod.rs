//! Wire level: connection strings, TLS, the replication connection and the
//! pgoutput decoder, and the catalog queries both ends share. Nothing above
//! this module touches PostgreSQL's bytes.

pub mod catalog;
mod cert_names;
pub mod connection;
pub mod conninfo;
pub mod error;
pub mod lsn;
pub mod names;
pub mod pgoutput;
pub mod replication;
pub mod timestamp;
pub mod tls;

pub use conninfo::{ConnInfo, ConnInfoError, Host, Secret, SslMode};
pub use error::{PgError, ServerError};
pub use lsn::Lsn;
