//! Subscription rules applied between reading and applying: which tables,
//! columns, rows ([`filter`], the `where` setting) and kinds of change go
//! where, and under which names; whether column types fit; and how a route
//! follows a source table that changes while a pipeline runs.

mod change;
pub mod filter;
pub mod renamed;
mod table;
mod types;

pub use change::{ChangeNote, change_note};
pub use table::{LoadError, RouteError, TableRoute};
pub use types::{TypeFit, may_fail_warning, type_fit};
