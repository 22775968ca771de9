//! The initial copy: existing rows of each table, read under the snapshot
//! the slot exported, so that streaming from the slot's consistent point
//! continues exactly where the copy ends.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

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

/// Shows a long copy's progress as it goes: a bar on a terminal, a log
/// line every ten seconds otherwise (logs collected from a pod have no
/// use for carriage returns).
pub struct CopyProgress<'a> {
    subscription: &'a str,
    table: &'a QualifiedName,
    estimate: u64,
    terminal: bool,
    shown: Instant,
    started: Instant,
}

impl<'a> CopyProgress<'a> {
    pub fn new(subscription: &'a str, table: &'a QualifiedName, estimate: i64) -> CopyProgress<'a> {
        let now = Instant::now();
        CopyProgress {
            subscription,
            table,
            estimate: estimate.max(0) as u64,
            terminal: std::io::stderr().is_terminal(),
            shown: now,
            started: now,
        }
    }

    pub fn update(&mut self, rows: u64) {
        let every = if self.terminal { Duration::from_millis(200) } else { Duration::from_secs(10) };
        if self.shown.elapsed() < every {
            return;
        }
        self.shown = Instant::now();
        let share = if self.estimate > 0 { (rows as f64 / self.estimate as f64).min(1.0) } else { 0.0 };
        if self.terminal {
            let filled = (share * 30.0) as usize;
            eprint!(
                "\r{} {}: [{}{}] {:>3.0}% {rows} of ~{} rows",
                self.subscription,
                self.table.readable(),
                "=".repeat(filled),
                " ".repeat(30 - filled),
                share * 100.0,
                self.estimate
            );
        } else {
            tracing::info!(
                subscription = self.subscription,
                table = %self.table,
                rows,
                estimated = self.estimate,
                seconds = self.started.elapsed().as_secs(),
                "copying ({:.0}%)",
                share * 100.0
            );
        }
    }

    /// Ends the bar's line, if one was drawn.
    pub fn finish(&self) {
        if self.terminal && self.shown != self.started {
            eprintln!();
        }
    }
}
