//! The initial copy: existing rows of each table, read under the snapshot
//! the slot exported, so that streaming from the slot's consistent point
//! continues exactly where the copy ends.

use futures_util::{SinkExt, StreamExt};
use tokio_postgres::Client;

use crate::apply::TargetTable;
use crate::fault;
use crate::pg::names::{QualifiedName, quote_ident, quote_literal};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot: {context}: {source}")]
    Sql { context: String, source: tokio_postgres::Error },
    #[error(
        "target table {0} is not empty; the initial copy only fills empty tables (empty it, or set snapshot = false)"
    )]
    TargetNotEmpty(QualifiedName),
}

fn sql_error(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> SnapshotError {
    let context = context.into();
    move |source| SnapshotError::Sql { context, source }
}

/// Opens a read-only transaction on `source` that sees exactly `snapshot`
/// (an exported snapshot name). It stays usable until COMMIT.
pub async fn begin_at_snapshot(source: &Client, snapshot: &str) -> Result<(), SnapshotError> {
    source
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(snapshot)
        ))
        .await
        .map_err(sql_error("importing the slot's snapshot"))
}

/// Copies `from` into `to` with COPY on both sides, streaming: the rows
/// never sit in memory. The target must be inside the caller's transaction.
/// Only the columns both tables have are copied. Returns the row count;
/// `progress` hears the count so far after each row.
pub async fn copy_table(
    source: &Client,
    from: &QualifiedName,
    target: &Client,
    to: &TargetTable,
    mut progress: impl FnMut(u64),
) -> Result<u64, SnapshotError> {
    let empty: bool = target
        .query_one(&format!("SELECT NOT EXISTS (SELECT 1 FROM {})", to.name), &[])
        .await
        .map_err(sql_error(format!("checking that {} is empty", to.name)))?
        .get(0);
    if !empty {
        return Err(SnapshotError::TargetNotEmpty(to.name.clone()));
    }
    let source_columns: Vec<String> = source
        .query(
            "SELECT a.attname FROM pg_attribute a
             WHERE a.attrelid = ($1 || '.' || $2)::regclass AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
            &[&quote_ident(&from.schema), &quote_ident(&from.name)],
        )
        .await
        .map_err(sql_error(format!("reading the columns of {from}")))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let columns: Vec<String> = to
        .columns
        .iter()
        .filter(|c| source_columns.contains(&c.name))
        .map(|c| quote_ident(&c.name))
        .collect();
    let list = columns.join(", ");
    let out = source
        .copy_out(&format!("COPY (SELECT {list} FROM ONLY {from}) TO STDOUT"))
        .await
        .map_err(sql_error(format!("reading {from}")))?;
    let sink = target
        .copy_in(&format!("COPY {} ({list}) FROM STDIN", to.name))
        .await
        .map_err(sql_error(format!("writing {}", to.name)))?;
    futures_util::pin_mut!(out);
    futures_util::pin_mut!(sink);
    let mut rows = 0;
    while let Some(chunk) = out.next().await {
        let chunk = chunk.map_err(sql_error(format!("reading {from}")))?;
        fault::point(fault::DURING_SNAPSHOT_COPY);
        sink.send(chunk).await.map_err(sql_error(format!("writing {}", to.name)))?;
        rows += 1; // COPY TO sends a row per message
        progress(rows);
    }
    sink.as_mut().finish().await.map_err(sql_error(format!("finishing the copy into {}", to.name)))
}
