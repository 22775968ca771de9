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

/// The output settings of every session ferry opens on either end, as
/// PostgreSQL's own subscriber sets them: values cross between servers as
/// text, and ISO dates, `postgres` intervals and shortest-exact floats read
/// back as they were written, whatever the servers' own settings.
pub const VALUE_SETTINGS: [(&str, &str); 3] =
    [("DateStyle", "ISO"), ("IntervalStyle", "postgres"), ("extra_float_digits", "3")];
