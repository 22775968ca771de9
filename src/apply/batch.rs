//! Rows gathered per table and sent as one statement each: many small
//! source transactions (an update of one table and an insert into another,
//! over and over) become a few set-based statements instead of one
//! statement — one parse, plan and executor start on the target — per row.
//!
//! Gathering rows per table reorders changes *across* tables inside one
//! target transaction. Within a table the order is kept: a batch holds one
//! kind of change, a change of another kind sends it first, and an update
//! batch holds each key once (a later update of the same row replaces the
//! earlier one's values, which it overwrites anyway). Nothing on the target
//! can observe the order across tables inside a transaction only when no
//! trigger, rule, row-level security policy or foreign key (either way)
//! involves the table; that is checked in the target's catalog, and tables
//! that do not qualify are applied strictly in source order, with every
//! batch gathered before them sent first. Update batches also need the
//! primary key to be the table's only unique constraint: a batch updates
//! its rows in no particular order, and a second unique index could see two
//! rows swap values in the wrong order.
//!
//! Values travel as one text-format array per column, `unnest`ed on the
//! target, so one prepared statement serves every batch size and each value
//! still goes through its type's own input function.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use tokio_postgres::{Client, Statement};

use super::param::TextParam;
use super::{ApplyError, target_error};
use crate::pg::names::{QualifiedName, quote_ident};

/// A batch is sent once it holds this many rows...
pub const BATCH_ROWS: usize = 2000;
/// ... or this many bytes of values.
pub const BATCH_BYTES: usize = 1 << 20;

/// What the target's catalog says about batching one table.
#[derive(Debug, Clone)]
pub struct BatchShape {
    /// For each carried column (plan order): the array type of its type, by
    /// its internal name (`"pg_catalog"."_bit"`: no modifier, not even the
    /// implied one of `bit` or `character`; the column's own assignment
    /// applies it), and the type's array delimiter.
    pub types: Vec<(String, u8)>,
    /// Whether update batches are allowed (no unique constraint but the key).
    pub updates: bool,
}

/// What the target table's catalog says about how its rows may be sent.
#[derive(Debug, Clone, Copy)]
pub struct TableTraits {
    /// Runs of inserts may go as COPY: COPY fires no rules (an `ON INSERT
    /// DO ALSO` audit rule would miss the rows the statements before them
    /// reached) and is refused under row-level security, where INSERT is not.
    pub copyable: bool,
    /// Its changes may be applied out of source order: no trigger, rule,
    /// policy or foreign key could see the order (internal triggers count:
    /// see `skips_updates`), nor a publication, whose readers decode the
    /// target's WAL in the order it was written (a ferry forwarding these
    /// changes to a third database with foreign keys among them, say).
    reorderable: bool,
    /// No unique constraint but the key (update batches are allowed).
    sole_unique: bool,
    /// A row trigger before UPDATE, on the table or on a partition or
    /// child of it, may skip an update (as PostgreSQL's
    /// `suppress_redundant_updates_trigger` does one that changes
    /// nothing): an update that changes no row then does not show that the
    /// row is missing. (Not with a rule: an UPDATE inside WITH, which
    /// tells, is refused for most.) Internal triggers count too: before
    /// PostgreSQL 15 a partition's copy of its parent's trigger is one.
    pub skips_updates: bool,
}

/// Reads `target`'s [`TableTraits`].
pub async fn traits(client: &Client, target: &QualifiedName) -> Result<TableTraits, ApplyError> {
    let row = client
        .query_one(
            "SELECT NOT c.relhasrules AND NOT c.relrowsecurity,
                    c.relkind = 'r'
                    AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid)
                    AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.contype = 'f'
                                    AND (k.conrelid = c.oid OR k.confrelid = c.oid)),
                    NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisunique AND NOT i.indisprimary)
                    AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid AND k.contype = 'x'),
                    NOT c.relhasrules AND EXISTS (
                        WITH RECURSIVE tree (oid) AS (
                            SELECT c.oid
                            UNION ALL SELECT i.inhrelid FROM pg_inherits i JOIN tree ON i.inhparent = tree.oid)
                        -- tgtype bits: 1 row, 2 before, 16 update
                        SELECT 1 FROM pg_trigger t JOIN tree ON t.tgrelid = tree.oid
                        WHERE t.tgenabled <> 'D' AND t.tgtype & 19 = 19),
                    -- published itself or through a partitioned ancestor (which
                    -- lists the table only when it is a partition)
                    NOT EXISTS (SELECT 1 FROM (SELECT c.oid AS relid
                                               UNION SELECT relid FROM pg_partition_ancestors(c.oid)) a
                                JOIN pg_class ac ON ac.oid = a.relid
                                JOIN pg_namespace an ON an.oid = ac.relnamespace
                                JOIN pg_publication_tables p
                                  ON p.schemaname = an.nspname AND p.tablename = ac.relname)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&target.schema, &target.name],
        )
        .await
        .map_err(target_error(format!("reading the rules, triggers, constraints and publications of {target}")))?;
    let (copyable, untriggered, unpublished): (bool, bool, bool) = (row.get(0), row.get(1), row.get(4));
    Ok(TableTraits {
        copyable,
        reorderable: copyable && untriggered && unpublished,
        sole_unique: row.get(2),
        skips_updates: row.get(3),
    })
}

/// Reads whether and how `target`'s rows can be batched. `columns` are the
/// carried target column names in plan order. `None` when the table's
/// changes must be applied in source order (see [`TableTraits`]) or a
/// column's type has no array type to carry it (or is an array itself:
/// `unnest` would flatten it).
pub async fn shape(
    client: &Client,
    target: &QualifiedName,
    columns: &[String],
    traits: TableTraits,
) -> Result<Option<BatchShape>, ApplyError> {
    if !traits.reorderable {
        return Ok(None);
    }
    let rows = client
        .query(
            "SELECT a.attname, quote_ident(arrn.nspname) || '.' || quote_ident(arr.typname),
                    ty.typcategory <> 'A', ascii(ty.typdelim::text)
             FROM pg_attribute a
             JOIN pg_type ty ON ty.oid = a.atttypid
             JOIN pg_type arr ON arr.oid = ty.typarray
             JOIN pg_namespace arrn ON arrn.oid = arr.typnamespace
             JOIN pg_class c ON c.oid = a.attrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&target.schema, &target.name],
        )
        .await
        .map_err(target_error(format!("reading the column types of {target}")))?;
    let mut types = Vec::with_capacity(columns.len());
    for column in columns {
        let Some(row) = rows.iter().find(|r| r.get::<_, &str>(0) == column) else { return Ok(None) };
        let (type_name, arrayable, delim): (String, bool, i32) = (row.get(1), row.get(2), row.get(3));
        if !arrayable || !(1..=127).contains(&delim) {
            return Ok(None);
        }
        types.push((type_name, delim as u8));
    }
    Ok(Some(BatchShape { types, updates: traits.sole_unique }))
}

/// `INSERT INTO t (c...) SELECT unnest($1::_type), ...`: set-returning
/// functions in a select list run in lockstep, one column each (in `FROM`,
/// `unnest` would spread a composite type over several columns).
pub async fn prepare_insert(
    client: &Client,
    target: &QualifiedName,
    columns: &[String],
    shape: &BatchShape,
) -> Result<Statement, ApplyError> {
    let names: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let arrays: Vec<String> =
        shape.types.iter().enumerate().map(|(i, (ty, _))| format!("unnest(${}::{ty})", i + 1)).collect();
    let sql = format!(
        "INSERT INTO {target} ({}) OVERRIDING SYSTEM VALUE SELECT {}",
        names.join(", "),
        arrays.join(", ")
    );
    client.prepare(&sql).await.map_err(target_error(format!("preparing batched insert into {target}")))
}

/// `UPDATE t SET c = v.p1 ... FROM (SELECT unnest($1::_type) AS p1, ...) AS v
/// WHERE t.k = v.pN`
/// for the columns `set` (plan positions, not key columns) by the key
/// columns `key` (plan positions).
pub async fn prepare_update(
    client: &Client,
    target: &QualifiedName,
    columns: &[String],
    shape: &BatchShape,
    set: &[usize],
    key: &[usize],
) -> Result<Statement, ApplyError> {
    let all: Vec<usize> = set.iter().chain(key).copied().collect();
    let arrays: Vec<String> = all
        .iter()
        .enumerate()
        .map(|(n, &i)| format!("unnest(${}::{}) AS p{}", n + 1, shape.types[i].0, n + 1))
        .collect();
    let assignments: Vec<String> = set
        .iter()
        .enumerate()
        .map(|(n, &i)| format!("{} = v.p{}", quote_ident(&columns[i]), n + 1))
        .collect();
    let condition: Vec<String> = key
        .iter()
        .enumerate()
        .map(|(n, &i)| format!("t.{} = v.p{}", quote_ident(&columns[i]), set.len() + n + 1))
        .collect();
    let sql = format!(
        "UPDATE {target} AS t SET {} FROM (SELECT {}) AS v WHERE {}",
        assignments.join(", "),
        arrays.join(", "),
        condition.join(" AND ")
    );
    client.prepare(&sql).await.map_err(target_error(format!("preparing batched update of {target}")))
}

/// What a batch holds: inserts, or updates of one set of present columns
/// (plan positions of the columns assigned; key unchanged).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BatchKind {
    Insert,
    Update(Vec<usize>),
}

/// Rows of one table waiting to be sent together.
pub struct TableBatch {
    pub oid: u32,
    pub kind: BatchKind,
    /// Each row's values, in the statement's parameter order.
    rows: Vec<Vec<TextParam>>,
    /// Update batches: where each key's row is.
    by_key: HashMap<Vec<Option<Bytes>>, usize>,
    bytes: usize,
}

impl TableBatch {
    pub fn new(oid: u32, kind: BatchKind) -> TableBatch {
        TableBatch { oid, kind, rows: Vec::new(), by_key: HashMap::new(), bytes: 0 }
    }

    /// The rows, for a COPY.
    pub fn into_rows(self) -> Vec<Vec<TextParam>> {
        self.rows
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Each row's values, in the statement's parameter order.
    pub fn rows(&self) -> &[Vec<TextParam>] {
        &self.rows
    }

    /// Whether it should be sent now.
    pub fn full(&self) -> bool {
        self.rows.len() >= BATCH_ROWS || self.bytes >= BATCH_BYTES
    }

    pub fn push(&mut self, row: Vec<TextParam>) {
        self.bytes += row_bytes(&row);
        self.rows.push(row);
    }

    /// Adds an update; a row already in the batch takes the new values
    /// (the same columns are assigned, so the earlier values would be
    /// overwritten anyway).
    pub fn push_update(&mut self, key: Vec<Option<Bytes>>, row: Vec<TextParam>) {
        self.bytes += row_bytes(&row);
        match self.by_key.get(&key) {
            Some(&at) => self.rows[at] = row,
            None => {
                self.by_key.insert(key, self.rows.len());
                self.rows.push(row);
            }
        }
    }

    /// The rows as one array literal per parameter; `delims[i]` is the
    /// array delimiter of parameter `i`'s type.
    pub fn encode(&self, delims: &[u8]) -> Vec<TextParam> {
        let width = delims.len();
        let mut arrays: Vec<BytesMut> = (0..width)
            .map(|_| BytesMut::with_capacity(self.bytes / width.max(1) + 4 * self.rows.len() + 2))
            .collect();
        for array in &mut arrays {
            array.put_u8(b'{');
        }
        for (n, row) in self.rows.iter().enumerate() {
            for (i, (array, value)) in arrays.iter_mut().zip(row).enumerate() {
                if n > 0 {
                    array.put_u8(delims[i]);
                }
                match &value.0 {
                    None => array.put_slice(b"NULL"),
                    Some(bytes) => quote_element(array, bytes),
                }
            }
        }
        arrays
            .into_iter()
            .map(|mut array| {
                array.put_u8(b'}');
                TextParam(Some(array.freeze()))
            })
            .collect()
    }
}

fn row_bytes(row: &[TextParam]) -> usize {
    row.iter().map(|v| v.0.as_ref().map_or(4, |b| b.len() + 3)).sum()
}

/// An array element in double quotes, with `"` and `\` escaped: the array
/// input function then hands the element's exact text to the type.
fn quote_element(out: &mut BytesMut, value: &[u8]) {
    out.put_u8(b'"');
    let mut start = 0;
    for (i, &byte) in value.iter().enumerate() {
        if byte == b'"' || byte == b'\\' {
            out.put_slice(&value[start..i]);
            out.put_u8(b'\\');
            start = i;
        }
    }
    out.put_slice(&value[start..]);
    out.put_u8(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::param::text;

    #[test]
    fn encodes_one_array_per_column() {
        let mut batch = TableBatch::new(1, BatchKind::Insert);
        batch.push(vec![text("1"), text("a \"b\" \\c"), TextParam(None)]);
        batch.push(vec![text("2"), text(""), text("{x,y}")]);
        let arrays = batch.encode(b",,;");
        let arrays: Vec<&[u8]> = arrays.iter().map(|a| a.0.as_deref().unwrap()).collect();
        assert_eq!(arrays[0], b"{\"1\",\"2\"}");
        assert_eq!(arrays[1], b"{\"a \\\"b\\\" \\\\c\",\"\"}");
        assert_eq!(arrays[2], b"{NULL;\"{x,y}\"}");
    }

    #[test]
    fn an_update_batch_holds_each_key_once_with_its_latest_values() {
        let mut batch = TableBatch::new(1, BatchKind::Update(vec![1]));
        let key = |k: &str| vec![Some(Bytes::copy_from_slice(k.as_bytes()))];
        batch.push_update(key("1"), vec![text("10"), text("1")]);
        batch.push_update(key("2"), vec![text("20"), text("2")]);
        batch.push_update(key("1"), vec![text("11"), text("1")]);
        assert_eq!(batch.len(), 2);
        let arrays = batch.encode(b",,");
        assert_eq!(arrays[0].0.as_deref().unwrap(), b"{\"11\",\"20\"}");
        assert_eq!(arrays[1].0.as_deref().unwrap(), b"{\"1\",\"2\"}");
    }
}
