//! What a database's catalog says about a table: its columns, their types
//! and its primary key. The source checks, the applier and `ferry validate`
//! all read tables this way.

use tokio_postgres::Client;

use super::names::QualifiedName;

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// `format_type` of the column, e.g. `character varying(10)`.
    pub type_name: String,
    /// Part of the table's primary key.
    pub is_key: bool,
    /// Variable length and not stored plain, so it can be TOASTed: an
    /// update that leaves it alone may not send its value.
    pub toastable: bool,
}

/// The columns of an ordinary or partitioned table, in table order; empty
/// when there is no such table.
pub async fn table_columns(
    client: &Client,
    table: &QualifiedName,
) -> Result<Vec<Column>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod),
                    coalesce(a.attnum = ANY(i.indkey), false),
                    a.attlen = -1 AND a.attstorage <> 'p'
             FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
             LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
             ORDER BY a.attnum",
            &[&table.schema, &table.name],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Column { name: r.get(0), type_name: r.get(1), is_key: r.get(2), toastable: r.get(3) })
        .collect())
}
