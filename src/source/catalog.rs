//! What a pipeline needs on its source before streaming: the tables exist
//! and can be identified, the publication lists them, and the slot is
//! where the target's progress expects it.

use std::collections::HashMap;

/// The source's current WAL position as SQL (replayed, on a standby), for
/// `concat!` into the queries that measure against it.
macro_rules! current_wal_lsn {
    () => {
        "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END"
    };
}
pub(crate) use current_wal_lsn;

use tokio_postgres::Client;

use crate::config::{Operations, Subscription};
use crate::pg::Lsn;
use crate::pg::catalog::{self, Column, TypeDescription, index_key_columns};
use crate::pg::conninfo::ConnInfo;
use crate::pg::error::describe_sql_error;
use crate::pg::names::{QualifiedName, quote_ident, quote_ident_if_needed};
use crate::pg::tls;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("source: {context}: {}", describe_sql_error(source))]
    Sql { context: String, source: tokio_postgres::Error },
    #[error("source: {0}")]
    Connect(Box<tls::SqlConnectError>),
    #[error(
        "source: a column type the replication stream names (oid {0}) no longer exists on the source, so the \
         column cannot be checked against the target"
    )]
    TypeGone(u32),
    #[error("source table {0} does not exist")]
    MissingTable(QualifiedName),
    #[error(
        "source table {0} is partitioned: ferry replicates plain tables; list its partitions as tables instead"
    )]
    Partitioned(QualifiedName),
    #[error(
        "source table {0} has no replica identity (no primary key, REPLICA IDENTITY NOTHING, or the index of \
         REPLICA IDENTITY USING INDEX was dropped): the source \
         refuses its updates and deletes while it is published; add a primary key or run \
         ALTER TABLE {0} REPLICA IDENTITY FULL"
    )]
    NoReplicaIdentity(QualifiedName),
    #[error(
        "publication {0:?} is configured but does not exist on the source; create it, or leave `publication` out and ferry manages one"
    )]
    MissingPublication(String),
    #[error(
        "publication {publication:?} does not hold {0} {1}, which the subscription replicates, so no change of \
         {0} {1} would ever arrive; run ALTER PUBLICATION {2} ADD TABLE {1} on the source, or leave \
         `publication` out and ferry manages one",
        if .tables.len() == 1 { "table" } else { "tables" }, names(.tables), quote_ident_if_needed(.publication)
    )]
    UnpublishedTables { publication: String, tables: Vec<QualifiedName> },
    #[error(
        "source table {table} left publication {publication:?} although the target holds its copy: it was dropped \
         and created again since ferry last read it (or taken out of the publication by hand), and its changes \
         since then never arrived. To copy it anew: take the table out of the subscription and restart ferry, \
         empty its target table, then add the table back"
    )]
    LeftPublication { publication: String, table: QualifiedName },
    #[error(
        "publication {publication:?} does not publish {} (its `publish` option), which the subscription \
         replicates, so they would never arrive; run ALTER PUBLICATION {} SET (publish = 'insert, update, \
         delete, truncate') on the source, or leave them out of the tables' `operations`",
        .operations.join(", "), quote_ident_if_needed(.publication)
    )]
    UnpublishedOperations { publication: String, operations: Vec<&'static str> },
    #[error(
        "publication {publication:?} filters the rows or columns of {table} (a WHERE clause or a column list): \
         the initial copy takes every row, and the stream would leave changes out without a trace; take them \
         out of the publication and use the subscription's `where` and `columns` instead"
    )]
    FilteredPublication { publication: String, table: QualifiedName },
    #[error(
        "wal_level is {0}; logical replication needs wal_level = logical on the source (set it and restart the server)"
    )]
    WalLevel(String),
    #[error(
        "role {0} has neither REPLICATION nor SUPERUSER: it cannot read a replication slot \
         (ALTER ROLE {0} REPLICATION; README: Least privilege)"
    )]
    NoReplication(String),
    #[error(
        "{} to make ({}), {free} of max_replication_slots free (raise it and restart the server, \
         or drop a slot no longer read)",
        if slots.len() == 1 { "1 slot" } else { "slots" },
        slots.join(", ")
    )]
    NoFreeSlot { slots: Vec<String>, free: i64 },
}

fn sql_error(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> CatalogError {
    let context = context.into();
    move |source| CatalogError::Sql { context, source }
}

/// Checks that every source table exists and has a usable replica identity;
/// stops at the first that does not.
pub async fn check_tables(client: &Client, subscription: &Subscription) -> Result<(), CatalogError> {
    for table in &subscription.tables {
        check_table(client, &table.from).await?;
    }
    Ok(())
}

/// Checks that a source table exists and has a usable replica identity.
pub async fn check_table(client: &Client, table: &QualifiedName) -> Result<(), CatalogError> {
    let row = client
        .query_opt(
            "SELECT c.relreplident::text,
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
                    c.relkind = 'p',
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(sql_error(format!("looking up {table}")))?
        .ok_or_else(|| CatalogError::MissingTable(table.clone()))?;
    let identity: String = row.get(0);
    let has_primary_key: bool = row.get(1);
    if row.get::<_, bool>(2) {
        return Err(CatalogError::Partitioned(table.clone()));
    }
    // An identity index that was dropped leaves `i` behind with no index:
    // the server then has no identity either, and once the table is
    // published it refuses the service's own updates and deletes.
    let has_identity_index: bool = row.get(3);
    if identity == "n" || (identity == "d" && !has_primary_key) || (identity == "i" && !has_identity_index) {
        return Err(CatalogError::NoReplicaIdentity(table.clone()));
    }
    Ok(())
}

/// A source table as its changes will describe it.
#[derive(Debug)]
pub struct SourceTable {
    /// In table order (none when the table does not exist), keyed by the
    /// replica identity.
    pub columns: Vec<Column>,
    pub identity: Identity,
}

/// Reads a source table's columns and replica identity. Its changes key
/// rows by the identity, which an index may name instead of the primary
/// key (the stream's table descriptions say so, and the pipeline goes by
/// them); under FULL, or with no usable identity, the primary key stays
/// the key.
pub async fn source_table(client: &Client, table: &QualifiedName) -> Result<SourceTable, CatalogError> {
    let mut columns = catalog::table_columns(client, table)
        .await
        .map_err(sql_error(format!("reading the columns of {table}")))?;
    let identity = identity(client, table).await?;
    if !identity.columns().is_empty() {
        for column in &mut columns {
            column.is_key = identity.columns().contains(&column.name);
        }
    }
    Ok(SourceTable { columns, identity })
}

/// Names the column types a Relation message gives by oid and modifier,
/// from the source's catalog. It connects for this: a table changes on the
/// source rarely, and a connection kept open for it would be one more that
/// can break.
pub async fn describe_types(
    info: &ConnInfo,
    types: &[(u32, i32)],
) -> Result<HashMap<(u32, i32), TypeDescription>, CatalogError> {
    if types.is_empty() {
        return Ok(HashMap::new());
    }
    let client = connect(info).await?;
    let described =
        catalog::describe_types(&client, types).await.map_err(sql_error("looking up column types"))?;
    match types.iter().find(|t| !described.contains_key(t)) {
        Some(&(oid, _)) => Err(CatalogError::TypeGone(oid)),
        None => Ok(described),
    }
}

/// A source table's attributes in table order, as pgoutput describes
/// columns (generated ones left out), `None` for a dropped one, which keeps
/// its place (see [`crate::route::renamed`]). It connects for this, as
/// [`describe_types`] does.
pub async fn attributes(info: &ConnInfo, table_oid: u32) -> Result<Vec<Option<String>>, CatalogError> {
    let client = connect(info).await?;
    let rows = client
        .query(
            "SELECT CASE WHEN attisdropped THEN NULL ELSE attname::text END FROM pg_attribute
             WHERE attrelid = $1 AND attnum > 0 AND attgenerated = '' ORDER BY attnum",
            &[&table_oid],
        )
        .await
        .map_err(sql_error("reading the columns of a table by number"))?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

async fn connect(info: &ConnInfo) -> Result<Client, CatalogError> {
    tls::connect_sql(info).await.map_err(|e| CatalogError::Connect(Box::new(e)))
}

/// What the source identifies a table's rows by in its changes: its
/// replica identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Whole old rows (REPLICA IDENTITY FULL).
    Full,
    /// These columns: the primary key's, or the index's it names.
    Columns(Vec<String>),
}

impl Identity {
    pub fn is_full(&self) -> bool {
        *self == Identity::Full
    }

    /// The identifying columns (none under FULL, where every column is).
    pub fn columns(&self) -> &[String] {
        match self {
            Identity::Full => &[],
            Identity::Columns(columns) => columns,
        }
    }
}

/// The table's replica identity (no columns for a missing table or one
/// without a usable identity, which [`check_table`] refuses).
async fn identity(client: &Client, table: &QualifiedName) -> Result<Identity, CatalogError> {
    let row = client
        .query_opt(
            concat!(
                "SELECT c.relreplident = 'f',
                        coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum)
                                  FROM pg_index i
                                  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (",
                index_key_columns!(),
                ")
                                  WHERE i.indrelid = c.oid
                                    AND CASE c.relreplident WHEN 'd' THEN i.indisprimary
                                                            WHEN 'i' THEN i.indisreplident ELSE false END),
                                 '{}')
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = $2"
            ),
            &[&table.schema, &table.name],
        )
        .await
        .map_err(sql_error(format!("reading the replica identity of {table}")))?;
    Ok(match row {
        Some(row) if row.get::<_, bool>(0) => Identity::Full,
        Some(row) => Identity::Columns(row.get(1)),
        None => Identity::Columns(Vec::new()),
    })
}

/// A WAL position before which every transaction committed so far lies:
/// where WAL is being inserted, or replayed on a standby. Not where it is
/// written: an asynchronous commit (`synchronous_commit = off`) can lie
/// past that for a while.
pub async fn wal_position(client: &Client) -> Result<Lsn, CatalogError> {
    let row = client
        .query_one(
            "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
             ELSE pg_current_wal_insert_lsn() END - '0/0')::bigint",
            &[],
        )
        .await
        .map_err(sql_error("reading the WAL position"))?;
    Ok(Lsn(row.get::<_, i64>(0) as u64))
}

/// Checks that the server writes the WAL logical decoding needs.
pub async fn check_wal_level(client: &Client) -> Result<(), CatalogError> {
    let row = client.query_one("SHOW wal_level", &[]).await.map_err(sql_error("reading wal_level"))?;
    let level: String = row.get(0);
    if level == "logical" { Ok(()) } else { Err(CatalogError::WalLevel(level)) }
}

/// Checks that the session's role may read a replication slot.
pub async fn check_replication_role(client: &Client) -> Result<(), CatalogError> {
    let row = client
        .query_one(
            // Amazon RDS grants replication through membership in its
            // rds_replication role, not the attribute.
            "SELECT rolreplication OR rolsuper
                    OR EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = 'rds_replication'
                               AND pg_has_role(current_user, r.oid, 'MEMBER')),
                    quote_ident(rolname)
             FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(sql_error("reading the role's attributes"))?;
    if row.get(0) { Ok(()) } else { Err(CatalogError::NoReplication(row.get(1))) }
}

/// Checks that a configured publication exists and holds every table of
/// the subscription. A managed one needs no check: ferry makes it so.
pub async fn check_publication(client: &Client, subscription: &Subscription) -> Result<(), CatalogError> {
    let name = &subscription.publication;
    if subscription.publication_managed {
        return Ok(());
    }
    if !publication_exists(client, name).await? {
        return Err(CatalogError::MissingPublication(name.clone()));
    }
    let published = published_tables(client, name).await?;
    let missing: Vec<QualifiedName> =
        subscription.tables.iter().map(|t| &t.from).filter(|t| !published.contains(t)).cloned().collect();
    if !missing.is_empty() {
        return Err(CatalogError::UnpublishedTables { publication: name.clone(), tables: missing });
    }
    check_published_operations(client, subscription).await?;
    check_unfiltered(client, subscription).await
}

/// The operations a configured publication publishes include every one the
/// subscription's tables let through.
async fn check_published_operations(
    client: &Client,
    subscription: &Subscription,
) -> Result<(), CatalogError> {
    let row = client
        .query_one(
            "SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname = $1",
            &[&subscription.publication],
        )
        .await
        .map_err(sql_error("reading what the publication publishes"))?;
    let wants = |pick: fn(&Operations) -> bool| subscription.tables.iter().any(|t| pick(&t.operations));
    let wanted = [wants(|o| o.insert), wants(|o| o.update), wants(|o| o.delete), wants(|o| o.truncate)];
    let unpublished: Vec<&'static str> = ["inserts", "updates", "deletes", "truncates"]
        .into_iter()
        .enumerate()
        .filter(|&(i, _)| wanted[i] && !row.get::<_, bool>(i))
        .map(|(_, name)| name)
        .collect();
    if unpublished.is_empty() {
        Ok(())
    } else {
        Err(CatalogError::UnpublishedOperations {
            publication: subscription.publication.clone(),
            operations: unpublished,
        })
    }
}

/// No table of a configured publication has a row filter or a column list
/// (PostgreSQL 15 and later): the copy would not know of them.
async fn check_unfiltered(client: &Client, subscription: &Subscription) -> Result<(), CatalogError> {
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(sql_error("reading the server version"))?
        .get(0);
    if version < 150000 {
        return Ok(());
    }
    let filtered = client
        .query(
            "SELECT n.nspname::text, c.relname::text
             FROM pg_publication p JOIN pg_publication_rel r ON r.prpubid = p.oid
             JOIN pg_class c ON c.oid = r.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE p.pubname = $1 AND (r.prqual IS NOT NULL OR r.prattrs IS NOT NULL)",
            &[&subscription.publication],
        )
        .await
        .map_err(sql_error("reading the publication's row filters and column lists"))?;
    let table = filtered
        .iter()
        .map(|row| QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1)))
        .find(|table| subscription.tables.iter().any(|t| &t.from == table));
    match table {
        Some(table) => {
            Err(CatalogError::FilteredPublication { publication: subscription.publication.clone(), table })
        }
        None => Ok(()),
    }
}

/// Tables as a list for a message: `a, b`.
fn names(tables: &[QualifiedName]) -> String {
    tables.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

async fn publication_exists(client: &Client, name: &str) -> Result<bool, CatalogError> {
    let row = client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
        .await
        .map_err(sql_error("looking up the publication"))?;
    Ok(row.is_some())
}

/// Makes the publication list exactly the subscription's tables when ferry
/// manages it; checks that it exists otherwise. This must happen before the
/// slot is created: the server reads publications as of the WAL it decodes.
///
/// A managed publication holds every table the target has a copy of
/// (`copied`): one that left it was dropped and created again under its
/// name (a publication holds tables, not names) or taken out by hand, and
/// its changes since never arrived. Adding it back would hide that.
pub async fn ensure_publication(
    client: &Client,
    subscription: &Subscription,
    copied: &[&QualifiedName],
) -> Result<(), CatalogError> {
    if !subscription.publication_managed {
        return check_publication(client, subscription).await;
    }
    let name = &subscription.publication;
    let exists = publication_exists(client, name).await?;
    let tables: Vec<String> = subscription.tables.iter().map(|t| t.from.to_string()).collect();
    let tables = tables.join(", ");
    // ONLY: a table's inheritance children are not the subscription's, and
    // published they would be decoded for nothing (and the list would never
    // match, altering the publication at every start).
    let only: Vec<String> = subscription.tables.iter().map(|t| format!("ONLY {}", t.from)).collect();
    let only = only.join(", ");
    let statement = if exists {
        let listed = published_tables(client, name).await?;
        check_published_copies(name, &listed, copied)?;
        let mut wanted: Vec<QualifiedName> = subscription.tables.iter().map(|t| t.from.clone()).collect();
        wanted.sort();
        if listed == wanted {
            return Ok(());
        }
        format!("ALTER PUBLICATION {} SET TABLE {only}", quote_ident(name))
    } else {
        format!("CREATE PUBLICATION {} FOR TABLE {only}", quote_ident(name))
    };
    client.batch_execute(&statement).await.map_err(sql_error(format!("creating publication {name}")))?;
    tracing::info!(subscription = %subscription.name, publication = %name, "publication set to {tables}");
    Ok(())
}

/// Every table the target holds a copy of (`copied`) is still in ferry's
/// publication `name`, which `listed` says it holds (see
/// [`ensure_publication`]).
pub fn check_published_copies(
    name: &str,
    listed: &[QualifiedName],
    copied: &[&QualifiedName],
) -> Result<(), CatalogError> {
    match copied.iter().find(|t| !listed.contains(t)) {
        Some(&table) => {
            Err(CatalogError::LeftPublication { publication: name.to_string(), table: table.clone() })
        }
        None => Ok(()),
    }
}

/// The oids of those of `tables` the source has, with their names.
pub async fn table_oids(
    client: &Client,
    tables: &[&QualifiedName],
) -> Result<HashMap<u32, QualifiedName>, CatalogError> {
    let (schemas, names): (Vec<&str>, Vec<&str>) =
        tables.iter().map(|t| (t.schema.as_str(), t.name.as_str())).unzip();
    let rows = client
        .query(
            "SELECT c.oid, u.s, u.n FROM unnest($1::text[], $2::text[]) AS u (s, n)
             JOIN pg_namespace ns ON ns.nspname = u.s
             JOIN pg_class c ON c.relnamespace = ns.oid AND c.relname = u.n",
            &[&schemas, &names],
        )
        .await
        .map_err(sql_error("looking up the tables' oids"))?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), QualifiedName::new(r.get::<_, String>(1), r.get::<_, String>(2))))
        .collect())
}

/// The tables a publication holds (none when it does not exist), sorted.
pub async fn published_tables(
    client: &Client,
    publication: &str,
) -> Result<Vec<QualifiedName>, CatalogError> {
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(sql_error("listing the publication's tables"))?;
    let mut tables: Vec<QualifiedName> =
        rows.iter().map(|r| QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1))).collect();
    tables.sort();
    Ok(tables)
}

/// What the source says about a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    Missing,
    /// The server invalidated it (it retained too much WAL): the changes it
    /// held are gone.
    Lost,
    Usable,
    /// It is not this database's (slot names are the server's): the url
    /// reaches another database than before. Whose it is, for a message:
    /// `database "shop"`, or none, being physical.
    Elsewhere(String),
}

/// Checks that the server has a free `max_replication_slots` entry for
/// each of `slots` not made yet (every slot of the server takes one).
pub async fn check_slot_room(client: &Client, slots: &[&str]) -> Result<(), CatalogError> {
    let row = client
        .query_one(
            "SELECT ARRAY(SELECT s FROM unnest($1::text[]) AS s
                          WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = s)),
                    current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots)",
            &[&slots],
        )
        .await
        .map_err(sql_error("counting the replication slots"))?;
    let (missing, free): (Vec<String>, i64) = (row.get(0), row.get(1));
    if missing.len() as i64 <= free { Ok(()) } else { Err(CatalogError::NoFreeSlot { slots: missing, free }) }
}

pub async fn slot_state(client: &Client, slot: &str) -> Result<SlotState, CatalogError> {
    let row = client
        .query_opt(
            "SELECT coalesce(wal_status, ''),
                    coalesce('database ' || quote_ident(database), 'no database (a physical slot)'),
                    database = current_database()
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(sql_error("looking up the slot"))?;
    Ok(match row {
        None => SlotState::Missing,
        Some(row) if row.get::<_, Option<bool>>(2) != Some(true) => SlotState::Elsewhere(row.get(1)),
        Some(row) if row.get::<_, String>(0) == "lost" => SlotState::Lost,
        Some(_) => SlotState::Usable,
    })
}
