//! Subscription rules applied between reading and applying: which tables,
//! columns, rows ([`filter`], the `where` setting) and kinds of change go
//! where, and under which names.

pub mod filter;
mod table;

pub use table::{LoadError, RouteError, TableRoute};
