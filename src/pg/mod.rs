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

/// The settings of every session ferry opens on either end. Values cross
/// between servers as text, so both ends write and read them alike, whatever
/// the servers' own settings: ISO dates, `postgres` intervals and
/// shortest-exact floats, as PostgreSQL's own subscriber sets them, and
/// money in the C locale (under `lc_monetary`, a German server writes
/// `1.234,56 €`, which a French or a C one refuses).
pub const VALUE_SETTINGS: [(&str, &str); 4] =
    [("DateStyle", "ISO"), ("IntervalStyle", "postgres"), ("extra_float_digits", "3"), ("lc_monetary", "C")];
pub use error::{PgError, ServerError};
pub use lsn::Lsn;
