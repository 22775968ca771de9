//! Subscription rules: which tables, columns, rows and kinds of change go
//! where, and under which names.

pub mod filter;
mod table;

pub use table::{LoadError, RouteError, TableRoute};
