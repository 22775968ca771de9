//! The initial copy: existing rows of each table, read under the snapshot
//! the slot exported, so that streaming from the slot's consistent point
//! continues exactly where the copy ends.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use futures_util::SinkExt;
use tokio_postgres::{Client, CopyInSink};

use crate::config::Subscription;
use crate::fault;
use crate::metrics::PipelineMetrics;
use crate::pg::catalog::{Column, index_key_columns};
use crate::pg::connection::Connection;
use crate::pg::conninfo::ConnInfo;
use crate::pg::error::describe_sql_error;
use crate::pg::names::{QualifiedName, quote_ident, quote_literal};
use crate::pg::{PgError, VALUE_SETTINGS};
use crate::route::TableRoute;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot: {context}: {}", describe_sql_error(source))]
    Sql { context: String, source: tokio_postgres::Error },
    #[error("snapshot: {0}")]
    Source(#[from] PgError),
    #[error(
        "target table {0} is not empty; the initial copy only fills empty tables (empty it, or set snapshot = false)"
    )]
    TargetNotEmpty(QualifiedName),
    #[error(
        "source table {0} was rewritten or truncated after the copy's snapshot was taken (ALTER TABLE ... TYPE, \
         TRUNCATE, ...): its rows are invisible to that snapshot, so the copy starts again under a new one"
    )]
    ChangedSinceSnapshot(String),
}

fn sql_error(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> SnapshotError {
    let context = context.into();
    move |source| SnapshotError::Sql { context, source }
}

/// Tables smaller than this many heap blocks (8 MiB) are copied whole by
/// one session: splitting them saves less than it costs.
const SPLIT_MIN_BLOCKS: i64 = 1024;
/// How long a further session of a split copy waits to lock the tables
/// (see [`SnapshotReader::hold`]).
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// The statement that locks `tables` against DDL for a copy's transaction.
fn lock_statement(tables: &[&QualifiedName]) -> String {
    let names: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
    format!("LOCK TABLE ONLY {} IN ACCESS SHARE MODE", names.join(", "))
}

/// Rows go to the target in chunks of about this size: COPY takes its
/// input in any chunking, and few large messages cost far less than a
/// message per row.
const CHUNK: usize = 64 * 1024;

/// A copy of a large table is split into this many parts by heap block,
/// each written by a target session of its own, so that several target
/// backends insert at once (the target's inserts, not the source's reads,
/// bound a copy). More parts cost the target more work in all: every part
/// but the last inserts into the middle of the primary key, where a
/// one-column index splits its pages half and half, and ends up with more
/// pages to write. On two CPUs (`bench/run --only snapshot`, runs
/// alternated) two parts copied 1,000,000 rows in 2.07 and 2.08 s, three
/// in 2.13 and 2.13 s.
pub const COPY_SESSIONS: usize = 2;

/// Which rows of a table a copy takes: heap blocks from `from` and below
/// `below` (each unbounded when `None`).
#[derive(Debug, Clone, Copy)]
struct Part {
    from: Option<i64>,
    below: Option<i64>,
}

impl Part {
    /// The parts a table splits into at `points` (ascending heap blocks;
    /// none: the whole table).
    fn split(points: &[i64]) -> Vec<Part> {
        let bounds: Vec<Option<i64>> =
            std::iter::once(None).chain(points.iter().copied().map(Some)).chain([None]).collect();
        bounds.windows(2).map(|w| Part { from: w[0], below: w[1] }).collect()
    }

    /// The condition on `ctid` (a TID range scan on the source).
    fn condition(self) -> Option<String> {
        let from = self.from.map(|block| format!("ctid >= '({block},0)'::tid"));
        let below = self.below.map(|block| format!("ctid < '({block},0)'::tid"));
        let both: Vec<String> = from.into_iter().chain(below).collect();
        (!both.is_empty()).then(|| both.join(" AND "))
    }
}

/// A source session inside a transaction that sees an exported snapshot.
/// It is ferry's own protocol connection rather than a client library's:
/// COPY's rows are gathered straight from the socket buffer into large
/// chunks, instead of travelling one message per row between tasks.
pub struct SnapshotReader {
    conn: Connection,
}

impl SnapshotReader {
    /// A session reading as of `snapshot`. A large table's COPY runs for
    /// minutes, and the session waits between tables: a time limit set
    /// on the database or the role would cut the copy short (PostgreSQL's
    /// own table sync is held to none either). Row-level security is off,
    /// as pg_dump has it: a policy hiding rows from ferry's role makes the
    /// COPY fail instead of copying part of the table, while the stream,
    /// which no policy filters, would go on with every row's changes.
    pub async fn open(source: &ConnInfo, snapshot: &str) -> Result<SnapshotReader, SnapshotError> {
        let startup: Vec<(&str, &str)> = VALUE_SETTINGS
            .into_iter()
            .chain([
                ("statement_timeout", "0"),
                ("idle_in_transaction_session_timeout", "0"),
                ("row_security", "off"),
            ])
            .collect();
        let mut conn = Connection::connect(source, &startup).await?;
        conn.simple_query(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(snapshot)
        ))
        .await?;
        Ok(SnapshotReader { conn })
    }

    /// Locks `tables` against rewrites for as long as the snapshot is read,
    /// as pg_dump does, and checks that none was rewritten between the
    /// snapshot and the lock. A rewrite (`ALTER TABLE ... TYPE`, `TRUNCATE`)
    /// writes the table anew with rows an older snapshot does not see: its
    /// copy would come out empty, and the stream has nothing to bring the
    /// rows back. A rewritten table's file node differs from the one the
    /// snapshot's catalog row names (`pg_relation_filenode` reads the
    /// current one, which the lock brought up to date).
    pub async fn hold_unchanged(&mut self, tables: &[&QualifiedName]) -> Result<(), SnapshotError> {
        if tables.is_empty() {
            return Ok(());
        }
        let names = tables.iter().map(|t| quote_literal(&t.to_string())).collect::<Vec<_>>().join(", ");
        let result = self
            .conn
            .simple_query(&format!(
                "{};
                 SELECT t::text FROM unnest(ARRAY[{names}]::regclass[]) AS t
                 WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t AND c.relfilenode = pg_relation_filenode(t))",
                lock_statement(tables)
            ))
            .await?;
        match result.rows.first().and_then(|row| row.first().cloned().flatten()) {
            Some(table) => Err(SnapshotError::ChangedSinceSnapshot(table)),
            None => Ok(()),
        }
    }

    /// Locks `tables` as [`SnapshotReader::hold_unchanged`] does, in a
    /// further session of a split copy, which must hold them from the start
    /// too: else its part's COPY could queue behind DDL that waits for the
    /// first session's lock, while the first waits for that part to end, a
    /// wait PostgreSQL cannot see, and the table (and the service's own
    /// queries, queued behind the DDL) would wait for ever. Such DDL may
    /// already be queued when this lock is asked for, so it gives up after
    /// [`LOCK_WAIT`] (a retryable error: the copy starts again).
    async fn hold(&mut self, tables: &[&QualifiedName]) -> Result<(), SnapshotError> {
        if tables.is_empty() {
            return Ok(());
        }
        self.conn
            .simple_query(&format!(
                "SET LOCAL lock_timeout = {}; {}; SET LOCAL lock_timeout = 0",
                LOCK_WAIT.as_millis(),
                lock_statement(tables)
            ))
            .await?;
        Ok(())
    }

    /// A query's single number (0 when it returns none).
    async fn number(&mut self, sql: &str) -> Result<i64, SnapshotError> {
        let result = self.conn.simple_query(sql).await?;
        let value = result.rows.first().and_then(|row| row.first()?.as_deref()?.parse().ok());
        Ok(value.unwrap_or(0))
    }

    /// The planner's row estimate for a table (`pg_class.reltuples`; 0 when
    /// it was never analyzed).
    async fn estimated_rows(&mut self, table: &QualifiedName) -> Result<i64, SnapshotError> {
        let name = quote_literal(&table.to_string());
        let rows = self
            .number(&format!("SELECT reltuples::bigint FROM pg_class WHERE oid = {name}::regclass"))
            .await?;
        Ok(rows.max(0))
    }

    /// Runs `COPY ... TO STDOUT` and sends what it yields into `sink` in
    /// large chunks; `progress` hears, with each chunk, how many messages
    /// it holds (one per row, and in the binary format a last one that ends
    /// the data).
    async fn copy_into(
        &mut self,
        sql: &str,
        mut sink: Pin<&mut CopyInSink<Bytes>>,
        to: &QualifiedName,
        progress: impl Fn(u64),
    ) -> Result<(), SnapshotError> {
        self.conn.buffer_query(sql)?;
        self.conn.flush().await?;
        let mut chunk = BytesMut::with_capacity(CHUNK);
        let mut rows = 0;
        let mut error = None;
        loop {
            let frame = self.conn.read_frame().await?;
            match frame.tag {
                b'd' => {
                    fault::point(fault::DURING_SNAPSHOT_COPY);
                    chunk.extend_from_slice(frame.payload());
                    rows += 1;
                    if chunk.len() >= CHUNK {
                        let full = std::mem::replace(&mut chunk, BytesMut::with_capacity(CHUNK));
                        sink.send(full.freeze()).await.map_err(sql_error(format!("writing {to}")))?;
                        progress(std::mem::take(&mut rows));
                    }
                }
                b'H' | b'c' | b'C' => {}
                b'E' => error = Some(self.conn.server_error(&frame)),
                b'Z' => break,
                other => return Err(self.conn.unexpected(other, "in COPY TO").into()),
            }
        }
        if let Some(error) = error {
            return Err(error.into());
        }
        if !chunk.is_empty() {
            sink.send(chunk.freeze()).await.map_err(sql_error(format!("writing {to}")))?;
            progress(rows);
        }
        Ok(())
    }

    /// Ends the snapshot's transaction and the session.
    async fn close(mut self) -> Result<(), SnapshotError> {
        self.conn.simple_query("COMMIT").await?;
        self.conn.terminate().await;
        Ok(())
    }
}

/// Where to split each route's table (heap blocks, ascending; empty: not
/// split), for those large enough to gain from it. Measured before the
/// copy, so that more target sessions are only opened when some table
/// needs them (each takes one of the target's replication origin slots).
pub async fn split_points(
    source: &Client,
    target: &Client,
    routes: &[&TableRoute],
) -> Result<Vec<Vec<i64>>, SnapshotError> {
    let mut points = Vec::new();
    for route in routes {
        let table = &route.mapping.from;
        // TID range scans came with PostgreSQL 14; before, each part would
        // read the whole table.
        let blocks: i64 = source
            .query_one(
                "SELECT CASE WHEN current_setting('server_version_num')::int >= 140000
                        THEN pg_relation_size($1::text::regclass) / current_setting('block_size')::int ELSE 0 END",
                &[&table.to_string()],
            )
            .await
            .map_err(sql_error(format!("measuring {table}")))?
            .get(0);
        // Only a table large enough to split has its target's indexes read.
        let split = blocks >= SPLIT_MIN_BLOCKS && parts_cannot_collide(target, route).await?;
        let parts = if split { COPY_SESSIONS as i64 } else { 1 };
        points.push((1..parts).map(|n| blocks * n / parts).collect());
    }
    Ok(points)
}

/// Whether the parts of a split copy can never wait for each other's rows:
/// the target's only unique index is its primary key, and the source's
/// primary key is carried into it, each column into one of the same type
/// with a deterministic collation, if any (`citext`, `char(n)` or a
/// case-insensitive collation can make two source keys one). The parts'
/// sessions commit only once all are done, so two parts inserting the same
/// value into a unique index would wait for each other for ever, a
/// deadlock PostgreSQL cannot see; copied whole, the table fails with the
/// duplicate named instead. Nor may a foreign key of the target reference
/// the table or start from it: its
/// check does not see rows another session has not committed, so a row
/// whose referenced row another part copies would be refused. Nor may an
/// insert trigger fire on it: what it writes, other parts may write too.
/// Partitions of a partitioned target count as the table.
async fn parts_cannot_collide(target: &Client, route: &TableRoute) -> Result<bool, SnapshotError> {
    if !source_key_in_target_key(route) {
        return Ok(false);
    }
    let to = &route.mapping.to;
    let other_unique: bool = target
        .query_one(
            concat!(
                "WITH tree AS (SELECT $1::text::regclass AS relid UNION SELECT relid FROM pg_partition_tree($1::text::regclass))
                 SELECT EXISTS (SELECT 1 FROM pg_index WHERE indrelid IN (SELECT relid FROM tree)
                                AND indisunique AND NOT indisprimary)
                     OR EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid IN (SELECT relid FROM tree) AND contype = 'x')
                     OR EXISTS (SELECT 1 FROM pg_constraint WHERE contype = 'f'
                                AND (conrelid IN (SELECT relid FROM tree) OR confrelid IN (SELECT relid FROM tree)))
                     -- tgtype bit 4: fires on INSERT (which COPY is)
                     OR EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid IN (SELECT relid FROM tree)
                                AND NOT tgisinternal AND tgenabled IN ('O', 'A') AND tgtype & 4 <> 0)
                     OR EXISTS (SELECT 1 FROM pg_index i
                                JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (",
                index_key_columns!(),
                ")
                                JOIN pg_collation c ON c.oid = a.attcollation
                                WHERE i.indrelid = $1::text::regclass AND i.indisprimary
                                  AND NOT c.collisdeterministic)"
            ),
            &[&to.to_string()],
        )
        .await
        .map_err(sql_error(format!("reading the unique indexes, foreign keys and triggers of {to}")))?
        .get(0);
    Ok(!other_unique)
}

/// The source table has a primary key, and each of its columns is carried
/// into a column of the target's primary key of the same type.
fn source_key_in_target_key(route: &TableRoute) -> bool {
    let mut source_key = route.source_columns.iter().filter(|c| c.is_key).peekable();
    let same_key = |source: &Column, name: &str| {
        route.target_columns.iter().any(|c| c.name == name && c.is_key && c.type_name == source.type_name)
    };
    source_key.peek().is_some()
        && source_key.all(|c| route.carried_as(&c.name).is_some_and(|name| same_key(c, name)))
}

/// Copies each route's table from `source` (as of the exported snapshot
/// `snapshot_name`) into `targets`, inside their open transactions,
/// reporting progress. A table with split points (see [`split_points`]) is
/// split between as many targets, each part fed by a source session of its
/// own; the rest go to the first. With fewer targets than parts (a session
/// could not be opened), the table is copied whole.
pub async fn copy_tables(
    sub: &Subscription,
    routes: &[&TableRoute],
    splits: &[Vec<i64>],
    source: &ConnInfo,
    targets: &[&Client],
    snapshot_name: &str,
    metrics: &PipelineMetrics,
) -> Result<(), SnapshotError> {
    let mut readers = Vec::new();
    for _ in targets {
        readers.push(SnapshotReader::open(source, snapshot_name).await?);
    }
    let tables: Vec<&QualifiedName> = routes.iter().map(|r| &r.mapping.from).collect();
    readers[0].hold_unchanged(&tables).await?;
    for reader in &mut readers[1..] {
        reader.hold(&tables).await?;
    }
    let index_of =
        |route: &TableRoute| sub.tables.iter().position(|t| t.from == route.mapping.from).unwrap_or(0);
    let mut estimates = Vec::new();
    for route in routes {
        let estimate = readers[0].estimated_rows(&route.mapping.from).await?;
        metrics.snapshot_estimate(index_of(route), estimate);
        estimates.push(estimate);
    }
    for ((route, estimate), points) in routes.iter().copied().zip(estimates).zip(splits) {
        let (started, index, table) = (Instant::now(), index_of(route), &route.mapping.from);
        // The parts report to one count (they run in this task; the lock
        // is never contended, it only makes the future Send).
        let shown = Mutex::new(CopyProgress::new(&sub.name, table, estimate));
        let counted = AtomicU64::new(0);
        let progress = |rows: u64| {
            let rows = counted.fetch_add(rows, Ordering::Relaxed) + rows;
            metrics.snapshot_copied(index, rows);
            shown.lock().expect("not poisoned").update(rows);
        };
        let parts = Part::split(if points.len() < targets.len() { points } else { &[] });
        let part_count = parts.len();
        let copies = readers
            .iter_mut()
            .zip(targets)
            .zip(parts)
            .map(|((reader, target), part)| copy_part(reader, route, target, part, &progress));
        let rows = futures_util::future::try_join_all(copies).await?.into_iter().sum();
        shown.lock().expect("not poisoned").finish();
        metrics.snapshot_copied(index, rows);
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(subscription = %sub.name, %table, rows, seconds, parts = part_count, "copied");
    }
    for reader in readers {
        reader.close().await?;
    }
    Ok(())
}

/// Whether the target table `table` holds no row (that the session sees).
pub async fn is_empty(target: &Client, table: &QualifiedName) -> Result<bool, SnapshotError> {
    let row = target
        .query_one(&format!("SELECT NOT EXISTS (SELECT 1 FROM {table})"), &[])
        .await
        .map_err(sql_error(format!("checking that {table} is empty")))?;
    Ok(row.get(0))
}

/// Copies a table's carried columns, and only the rows its filter keeps
/// (and `part` takes), with COPY on both sides, streaming: the rows never
/// sit in memory. The filter is pushed into the source query, where it
/// means the same as in ferry's own evaluation. The target must be inside
/// the caller's transaction, and its table empty. Returns the row count;
/// `progress` hears of the rows as they go.
async fn copy_part(
    reader: &mut SnapshotReader,
    route: &TableRoute,
    target: &Client,
    part: Part,
    progress: impl Fn(u64),
) -> Result<u64, SnapshotError> {
    let (from, to) = (&route.mapping.from, &route.mapping.to);
    if !is_empty(target, to).await? {
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
    let format = if route.binary_copy_safe() { " (FORMAT binary)" } else { "" };
    let sink = target
        .copy_in(&format!("COPY {to} ({}) FROM STDIN{format}", target_list.join(", ")))
        .await
        .map_err(sql_error(format!("writing {to}")))?;
    futures_util::pin_mut!(sink);
    let copy = format!("COPY (SELECT {} FROM ONLY {from}{filter}) TO STDOUT{format}", source_list.join(", "));
    reader.copy_into(&copy, sink.as_mut(), to, progress).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_splits_into_adjoining_parts_that_cover_every_block() {
        let parts = Part::split(&[100, 200]);
        let conditions: Vec<Option<String>> = parts.into_iter().map(Part::condition).collect();
        assert_eq!(
            conditions,
            [
                Some("ctid < '(100,0)'::tid".to_string()),
                Some("ctid >= '(100,0)'::tid AND ctid < '(200,0)'::tid".to_string()),
                Some("ctid >= '(200,0)'::tid".to_string()),
            ]
        );
    }

    #[test]
    fn a_table_without_split_points_is_copied_whole() {
        let parts = Part::split(&[]);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].condition(), None);
    }
}
