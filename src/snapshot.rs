//! The initial copy: existing rows of each table, read under the snapshot
//! the slot exported, so that streaming from the slot's consistent point
//! continues exactly where the copy ends.

use futures_util::{SinkExt, StreamExt};
use tokio_postgres::Client;

use crate::fault;
use crate::pg::error::describe_sql_error;
use crate::pg::names::{QualifiedName, quote_ident, quote_literal};
use crate::route::TableRoute;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot: {context}: {}", describe_sql_error(source))]
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

/// Copies a table's carried columns, and only the rows its filter keeps,
/// with COPY on both sides, streaming: the rows never sit in memory. The
/// filter is pushed into the source query, where it means the same as in
/// ferry's own evaluation. The target must be inside the caller's
/// transaction, and its table empty. Returns the row count; `progress`
/// hears the count so far after each row.
pub async fn copy_table(
    source: &Client,
    route: &TableRoute,
    target: &Client,
    mut progress: impl FnMut(u64),
) -> Result<u64, SnapshotError> {
    let (from, to) = (&route.mapping.from, &route.mapping.to);
    let empty: bool = target
        .query_one(&format!("SELECT NOT EXISTS (SELECT 1 FROM {to})"), &[])
        .await
        .map_err(sql_error(format!("checking that {to} is empty")))?
        .get(0);
    if !empty {
        return Err(SnapshotError::TargetNotEmpty(to.clone()));
    }
    let (source_list, target_list): (Vec<String>, Vec<String>) =
        route.carried().map(|(s, t)| (quote_ident(s), quote_ident(t))).unzip();
    let filter = route.filter.as_ref().map(|f| format!(" WHERE {}", f.to_sql())).unwrap_or_default();
    let out = source
        .copy_out(&format!("COPY (SELECT {} FROM ONLY {from}{filter}) TO STDOUT", source_list.join(", ")))
        .await
        .map_err(sql_error(format!("reading {from}")))?;
    let sink = target
        .copy_in(&format!("COPY {to} ({}) FROM STDIN", target_list.join(", ")))
        .await
        .map_err(sql_error(format!("writing {to}")))?;
    futures_util::pin_mut!(out);
    futures_util::pin_mut!(sink);
    let mut rows = 0;
    while let Some(chunk) = out.next().await {
        let chunk = chunk.map_err(sql_error(format!("reading {from}")))?;
        fault::point(fault::DURING_SNAPSHOT_COPY);
        sink.send(chunk).await.map_err(sql_error(format!("writing {to}")))?;
        rows += 1; // COPY TO sends a row per message
        progress(rows);
    }
    sink.as_mut().finish().await.map_err(sql_error(format!("finishing the copy into {to}")))
}
