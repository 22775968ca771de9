//! What a database's catalog says about a table: its columns, their types
//! and its primary key. The source checks, the applier and `ferry validate`
//! all read tables this way.

use std::collections::HashMap;

/// The column numbers of index `i`'s key, without its `INCLUDE`d columns,
/// as SQL for `concat!` into catalog queries: a primary key or replica
/// identity is made of these, as the server's own changes flag them.
macro_rules! index_key_columns {
    () => {
        "(i.indkey::int2[])[0:i.indnkeyatts - 1]"
    };
}
pub(crate) use index_key_columns;

/// A lateral subquery `base (oid, typmod)` for a column of type `$oid`
/// with modifier `$typmod` (SQL expressions), as SQL for `concat!`: the
/// type its values really have, through domains (to the base type and the
/// modifier the domain gives it) and arrays (to the element type, which
/// the array's modifier is for). Type fit compares these: a domain over
/// `numeric(12,2)` rounds as `numeric(12,2)` does.
macro_rules! base_type {
    ($oid:literal, $typmod:literal) => {
        concat!(
            "CROSS JOIN LATERAL (
                WITH RECURSIVE b (oid, typmod, depth) AS (
                    SELECT ",
            $oid,
            ", ",
            $typmod,
            ", 0
                    UNION ALL
                    SELECT CASE bt.typtype WHEN 'd' THEN bt.typbasetype ELSE bt.typelem END,
                           CASE bt.typtype WHEN 'd' THEN bt.typtypmod ELSE b.typmod END, b.depth + 1
                    FROM b JOIN pg_type bt ON bt.oid = b.oid
                    WHERE bt.typtype = 'd' OR (bt.typcategory = 'A' AND bt.typlen = -1 AND bt.typelem <> 0))
                SELECT b.oid, b.typmod FROM b ORDER BY b.depth DESC LIMIT 1) base"
        )
    };
}

use tokio_postgres::Client;

use super::names::QualifiedName;

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// `format_type` of the column, e.g. `character varying(10)`.
    pub type_name: String,
    /// The type's oid and modifier, as a Relation message gives them: a
    /// source column whose pair changes was retyped.
    pub type_oid: u32,
    pub type_modifier: i32,
    /// The oid and modifier of the type its values have (see
    /// [`base_type`]): the type's own, but for a domain or an array.
    pub base_type: (u32, i32),
    /// `pg_type.typcategory`: `N` numeric, `S` string, `D` date/time, `B`
    /// boolean, `U` user-defined, … (see [`crate::route::type_fit`]).
    pub category: char,
    /// Part of the table's primary key (of a source table's replica
    /// identity, as `source::catalog::source_table` reads it); `INCLUDE`d
    /// columns are not, as in the server's own changes.
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
            concat!(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod),
                        coalesce(a.attnum = ANY (",
                index_key_columns!(),
                "), false),
                        a.attlen = -1 AND a.attstorage <> 'p',
                        a.atttypid, a.atttypmod, t.typcategory::text, base.oid, base.typmod
                 FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
                 JOIN pg_type t ON t.oid = a.atttypid
                 LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
                 ",
                base_type!("a.atttypid", "a.atttypmod"),
                "
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
                 ORDER BY a.attnum"
            ),
            &[&table.schema, &table.name],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Column {
            name: r.get(0),
            type_name: r.get(1),
            type_oid: r.get(4),
            type_modifier: r.get(5),
            base_type: (r.get(7), r.get(8)),
            category: category(r.get(6)),
            is_key: r.get(2),
            toastable: r.get(3),
        })
        .collect())
}

/// The column sets of a table's unique indexes that `INSERT ... ON
/// CONFLICT (columns)` can name: valid, not deferrable, without a
/// predicate or an expression; key columns only (not `INCLUDE`d ones),
/// each set sorted.
pub async fn unique_keys(
    client: &Client,
    table: &QualifiedName,
) -> Result<Vec<Vec<String>>, tokio_postgres::Error> {
    let rows = client
        .query(
            concat!(
                "SELECT array_agg(a.attname::text ORDER BY a.attname::text)
                 FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 JOIN pg_index i ON i.indrelid = c.oid
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (",
                index_key_columns!(),
                ")
                 WHERE n.nspname = $1 AND c.relname = $2 AND i.indisunique AND i.indisvalid AND i.indimmediate
                   AND i.indpred IS NULL AND i.indexprs IS NULL
                 GROUP BY i.indexrelid"
            ),
            &[&table.schema, &table.name],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// The table's identity columns that only take generated values
/// (`GENERATED ALWAYS AS IDENTITY`), in table order.
pub async fn generated_always(
    client: &Client,
    table: &QualifiedName,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT a.attname::text
             FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attidentity = 'a'
             ORDER BY a.attnum",
            &[&table.schema, &table.name],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// A `typcategory` read as text (`"char"` has no Rust counterpart).
fn category(text: &str) -> char {
    text.chars().next().unwrap_or('X')
}

/// A column type as a catalog names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeDescription {
    pub type_name: String,
    pub category: char,
    /// See [`Column::toastable`]; from the type's default storage, which a
    /// column rarely overrides.
    pub toastable: bool,
    /// See [`Column::base_type`].
    pub base_type: (u32, i32),
}

/// Names column types given by oid and modifier (as a Relation message
/// gives them). Types the catalog does not have are left out.
pub async fn describe_types(
    client: &Client,
    types: &[(u32, i32)],
) -> Result<HashMap<(u32, i32), TypeDescription>, tokio_postgres::Error> {
    let (oids, modifiers): (Vec<u32>, Vec<i32>) = types.iter().copied().unzip();
    let rows = client
        .query(
            concat!(
                "SELECT c.oid, c.typmod, format_type(c.oid, c.typmod), t.typcategory::text,
                        t.typlen = -1 AND t.typstorage <> 'p', base.oid, base.typmod
                 FROM unnest($1::oid[], $2::int4[]) AS c(oid, typmod)
                 JOIN pg_type t ON t.oid = c.oid
                 ",
                base_type!("c.oid", "c.typmod")
            ),
            &[&oids, &modifiers],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let description = TypeDescription {
                type_name: r.get(2),
                category: category(r.get(3)),
                toastable: r.get(4),
                base_type: (r.get(5), r.get(6)),
            };
            ((r.get(0), r.get(1)), description)
        })
        .collect())
}
