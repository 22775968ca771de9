//! Subscription rules applied between reading and applying: which rows of a
//! table a subscription keeps ([`filter`], the `where` setting).

pub mod filter;
