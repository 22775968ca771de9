//! ferry: change-data-capture replication between microservices' PostgreSQL
//! databases. See DESIGN.md in the shared notes for the vocabulary and data path.

pub mod pg;
