//! The initial copy: existing rows of each table, read under the snapshot
//! the slot exported, so that streaming from the slot's consistent point
//! continues exactly where the copy ends.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_postgres::Client;

use crate::config::Subscription;
use crate::fault;
use crate::metrics::PipelineMetrics;
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

/// A source session inside the snapshot's transaction and a target session
/// inside a transaction of its own, copying together.
#[derive(Clone, Copy)]
pub struct CopyPair<'a> {
    pub source: &'a Client,
    pub target: &'a Client,
}

/// Tables smaller than this many heap blocks (8 MiB) are copied whole by
/// one pair: splitting them saves less than it costs.
const SPLIT_MIN_BLOCKS: i64 = 1024;

/// Which rows of a table a copy takes, by heap block: with two pairs, each
/// takes one half, so that two target backends insert at once (the
/// target's inserts, not the source's reads, bound a copy's speed).
#[derive(Debug, Clone, Copy)]
enum Part {
    Whole,
    Below(i64),
    From(i64),
}

impl Part {
    /// The condition on `ctid` (a TID range scan on the source).
    fn condition(self) -> Option<String> {
        match self {
            Part::Whole => None,
            Part::Below(block) => Some(format!("ctid < '({block},0)'::tid")),
            Part::From(block) => Some(format!("ctid >= '({block},0)'::tid")),
        }
    }
}

/// Copies each route's table from the pairs' sources (as of the exported
/// snapshot `snapshot_name`, which every source session imports) into their
/// targets, inside the targets' open transactions, reporting progress. A
/// large table is split between the first two pairs; the rest go to the
/// first. The source sessions' transactions end here.
pub async fn copy_tables(
    sub: &Subscription,
    routes: &[&TableRoute],
    pairs: &[CopyPair<'_>],
    snapshot_name: &str,
    metrics: &PipelineMetrics,
) -> Result<(), SnapshotError> {
    let main = pairs[0];
    let index_of =
        |route: &TableRoute| sub.tables.iter().position(|t| t.from == route.mapping.from).unwrap_or(0);
    let mut estimates = Vec::new();
    for route in routes {
        let estimate = estimated_rows(main.source, &route.mapping.from).await;
        metrics.snapshot_estimate(index_of(route), estimate);
        estimates.push(estimate);
    }
    for pair in pairs {
        begin_at_snapshot(pair.source, snapshot_name).await?;
    }
    for (route, estimate) in routes.iter().copied().zip(estimates) {
        let (started, index, table) = (Instant::now(), index_of(route), &route.mapping.from);
        // Both parts report to one count (the parts run in this task; the
        // lock is never contended, it only makes the future Send).
        let shown = Mutex::new(CopyProgress::new(&sub.name, table, estimate));
        let counted = AtomicU64::new(0);
        let progress = || {
            let rows = counted.fetch_add(1, Ordering::Relaxed) + 1;
            metrics.snapshot_copied(index, rows);
            shown.lock().expect("not poisoned").update(rows);
        };
        let blocks = if pairs.len() > 1 { splittable_blocks(main.source, table).await? } else { 0 };
        let rows = if blocks >= SPLIT_MIN_BLOCKS {
            let half = blocks / 2;
            let (below, from) = tokio::join!(
                copy_part(main, route, Part::Below(half), progress),
                copy_part(pairs[1], route, Part::From(half), progress)
            );
            below? + from?
        } else {
            copy_part(main, route, Part::Whole, progress).await?
        };
        shown.lock().expect("not poisoned").finish();
        metrics.snapshot_copied(index, rows);
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(subscription = %sub.name, %table, rows, seconds, "copied");
    }
    for pair in pairs {
        pair.source.batch_execute("COMMIT").await.map_err(sql_error("ending the snapshot transaction"))?;
    }
    Ok(())
}

/// How many heap blocks the source table has, or 0 when the source cannot
/// scan a range of them (TID range scans came with PostgreSQL 14; before,
/// each part would read the whole table).
async fn splittable_blocks(source: &Client, table: &QualifiedName) -> Result<i64, SnapshotError> {
    let row = source
        .query_one(
            "SELECT CASE WHEN current_setting('server_version_num')::int >= 140000
                    THEN pg_relation_size($1::text::regclass) / current_setting('block_size')::int ELSE 0 END",
            &[&table.to_string()],
        )
        .await
        .map_err(sql_error(format!("measuring {table}")))?;
    Ok(row.get(0))
}

/// The planner's row estimate for a source table (`pg_class.reltuples`;
/// 0 when the table was never analyzed, or the estimate cannot be read).
async fn estimated_rows(source: &Client, table: &QualifiedName) -> i64 {
    let name = table.to_string();
    match source
        .query_one("SELECT reltuples::bigint FROM pg_class WHERE oid = $1::text::regclass", &[&name])
        .await
    {
        Ok(row) => row.get::<_, i64>(0).max(0),
        Err(_) => 0,
    }
}

/// Copies a table's carried columns, and only the rows its filter keeps,
/// with COPY on both sides, streaming: the rows never sit in memory. The
/// filter is pushed into the source query, where it means the same as in
/// ferry's own evaluation. The target must be inside the caller's
/// transaction, and its table empty. Returns the row count; `progress`
/// hears of each row.
async fn copy_part(
    pair: CopyPair<'_>,
    route: &TableRoute,
    part: Part,
    progress: impl Fn(),
) -> Result<u64, SnapshotError> {
    let CopyPair { source, target } = pair;
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
    let conditions: Vec<String> = part
        .condition()
        .into_iter()
        .chain(route.filter.as_ref().map(|f| format!("({})", f.to_sql())))
        .collect();
    let filter =
        if conditions.is_empty() { String::new() } else { format!(" WHERE {}", conditions.join(" AND ")) };
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
    while let Some(chunk) = out.next().await {
        let chunk = chunk.map_err(sql_error(format!("reading {from}")))?;
        fault::point(fault::DURING_SNAPSHOT_COPY);
        sink.send(chunk).await.map_err(sql_error(format!("writing {to}")))?;
        progress(); // COPY TO sends a row per message
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
