//! One subscription's pipeline: source setup, initial copy, then the reader
//! and the applier joined by a bounded channel, with feedback from the
//! applier's commits to the source and retries when something breaks.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::apply::{Applier, ApplyError};
use crate::config::{OnError, Subscription};
use crate::fault;
use crate::metrics::{ErrorKind, EventCounts, Op, PipelineMetrics, State};
use crate::pg::conninfo::ConnInfo;
use crate::pg::replication::{ReplicationClient, SlotKind, StartOptions};
use crate::pg::{Lsn, PgError, tls};
use crate::route::{LoadError, TableRoute};
use crate::snapshot::{self, SnapshotError};
use crate::source::catalog::{self, CatalogError, SlotState};
use crate::source::{self, Change, EventChunk, SourceError, SourceEvent};

/// Events in flight between reader and applier (in chunks of
/// [`source::CHUNK_EVENTS`]): enough to keep both busy, small enough that a
/// slow target slows reading instead of filling memory.
const CHANNEL_CAPACITY: usize = 4096;
/// A target transaction closes at the first source commit after this many
/// rows or this much time, or when no more changes are waiting.
const GROUP_COMMIT_ROWS: usize = 20_000;
const GROUP_COMMIT_AGE: Duration = Duration::from_millis(500);
/// When nothing more is waiting, a target transaction still lingers this
/// long for the next source transaction: catching up, the reader delivers
/// transactions a little apart, and a commit each would cost a round trip
/// each; live, it adds at most this much latency.
const GROUP_COMMIT_LINGER: Duration = Duration::from_millis(2);
/// A source transaction applied with nothing more waiting and committed
/// less than this long ago means the pipeline is caught up (live): rows
/// then go out one statement each as they arrive instead of being gathered
/// per table until the target commit. Catching up, the applier often finds
/// the channel empty for a moment too, but the commits it applies are old.
const LIVE_LAG: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How often an idle applier checks that its target connection is still
/// open, so that a target going away shows (and is retried) without
/// waiting for the next change.
const TARGET_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// How often commits waiting for the target's WAL flush are checked.
const FLUSH_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// How long a stopping applier waits for its last commits to be flushed.
const FINAL_FLUSH_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error("source: {0}")]
    ConnectSource(tls::SqlConnectError),
    #[error("target: {0}")]
    ConnectTarget(tls::SqlConnectError),
    #[error("target: the connection to {target} closed")]
    TargetClosed { target: String },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Route(#[from] LoadError),
    /// Not a failure: the pipeline restarts and applies the source
    /// transactions up to `until` carefully, setting refused changes aside.
    #[error("a change was refused; replaying up to {until} to record it as a dead letter")]
    ReplayCarefully { until: Lsn },
    /// Not a failure yet: rows sent together failed; the pipeline restarts
    /// and applies the source transactions up to `until` in source order,
    /// one statement per row, so that the failing row is named.
    #[error("a batch of rows failed; replaying up to {until} in source order, one statement per row")]
    ReplayInOrder { until: Lsn },
    #[error(
        "slot {slot} no longer exists on the source, but the target has progress recorded: changes since then \
         are lost to ferry. To start over, empty the target tables and run \
         DELETE FROM ferry.progress WHERE subscription = '{subscription}' on the target"
    )]
    SlotVanished { slot: String, subscription: String },
    #[error(
        "slot {slot} was invalidated by the source (it retained more WAL than max_slot_wal_keep_size allows): \
         changes are lost to ferry. To start over, drop the slot, empty the target tables and run \
         DELETE FROM ferry.progress WHERE subscription = '{subscription}' on the target"
    )]
    SlotInvalidated { slot: String, subscription: String },
}

impl PipelineError {
    /// Whether the same attempt may succeed later (a database was down, a
    /// connection broke), as opposed to something that needs a person.
    pub fn is_retryable(&self) -> bool {
        match self {
            PipelineError::Pg(e) | PipelineError::Source(SourceError::Pg(e)) => pg_retryable(e),
            PipelineError::Source(SourceError::StreamEnded) => true,
            PipelineError::ConnectSource(e) | PipelineError::ConnectTarget(e) => {
                e.sqlstate().is_none_or(|c| sqlstate_retryable(c.code()))
            }
            PipelineError::TargetClosed { .. } => true,
            PipelineError::Apply(e) | PipelineError::Route(LoadError::Target(e)) => e.is_retryable(),
            PipelineError::Snapshot(SnapshotError::Sql { source, .. })
            | PipelineError::Catalog(CatalogError::Sql { source, .. })
            | PipelineError::Route(LoadError::Source(CatalogError::Sql { source, .. })) => {
                source.code().is_none_or(|c| sqlstate_retryable(c.code()))
            }
            _ => false,
        }
    }

    /// Which side or step failed, for `ferry_errors_total{kind}`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PipelineError::Pg(_)
            | PipelineError::ConnectSource(_)
            | PipelineError::Source(_)
            | PipelineError::Catalog(CatalogError::Sql { .. })
            | PipelineError::Route(LoadError::Source(CatalogError::Sql { .. })) => ErrorKind::Source,
            PipelineError::ConnectTarget(_)
            | PipelineError::TargetClosed { .. }
            | PipelineError::Apply(ApplyError::Target { .. } | ApplyError::MissingRow { .. })
            | PipelineError::ReplayCarefully { .. }
            | PipelineError::ReplayInOrder { .. } => ErrorKind::Target,
            PipelineError::Snapshot(_) => ErrorKind::Snapshot,
            PipelineError::SlotVanished { .. } | PipelineError::SlotInvalidated { .. } => ErrorKind::Slot,
            PipelineError::Apply(_) | PipelineError::Catalog(_) | PipelineError::Route(_) => {
                ErrorKind::Config
            }
        }
    }

    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            PipelineError::Pg(e) | PipelineError::Source(SourceError::Pg(e)) => e.sqlstate(),
            PipelineError::Apply(e) => e.sqlstate(),
            _ => None,
        }
    }
}

fn pg_retryable(error: &PgError) -> bool {
    match error {
        PgError::Connect { .. } | PgError::Io { .. } => true,
        PgError::Server { error, .. } => sqlstate_retryable(&error.code) || error.code == "55006",
        _ => false,
    }
}

/// Connection trouble, shutdowns, lack of resources, lost races.
fn sqlstate_retryable(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P")
        || code == "40001"
        || code == "40P01"
}

/// Everything one pipeline needs.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    pub subscription: Subscription,
    pub source: ConnInfo,
    pub target: ConnInfo,
}

/// Runs a pipeline until `cancel` fires (returns Ok) or it meets an error
/// that retrying cannot fix (returns it). Retryable errors are logged and
/// retried with exponential backoff. State, errors and progress go to
/// `metrics`.
pub async fn run(
    spec: PipelineSpec,
    metrics: PipelineMetrics,
    cancel: CancellationToken,
) -> Result<(), PipelineError> {
    let name = spec.subscription.name.clone();
    let mut backoff = Duration::from_secs(1);
    let mut replay = Replay::default();
    metrics.set_state(State::Starting);
    loop {
        let started = Instant::now();
        let error = match run_once(&spec, &metrics, &cancel, replay).await {
            Ok(()) => {
                metrics.set_state(State::Stopped);
                return Ok(());
            }
            Err(PipelineError::ReplayCarefully { until }) => {
                // A change was refused for good and dead letters are on:
                // replay up to that transaction one statement at a time.
                tracing::info!(subscription = %name, %until, "replaying statement by statement to set the refused change aside");
                replay.careful_until = Some(until);
                continue;
            }
            Err(PipelineError::ReplayInOrder { until }) => {
                tracing::info!(subscription = %name, %until, "rows sent together failed; applying again in source order, one statement per row");
                replay.in_order_until = Some(until);
                continue;
            }
            Err(error) => error,
        };
        let message = without_passwords(error.to_string(), &spec);
        if cancel.is_cancelled() {
            tracing::warn!(subscription = %name, "error while stopping: {message}");
            metrics.set_state(State::Stopped);
            return Ok(());
        }
        metrics.error(error.kind(), message.clone());
        if !error.is_retryable() {
            tracing::error!(subscription = %name, sqlstate = error.sqlstate(), "pipeline stopped: {message}");
            metrics.set_state(State::Stopped);
            return Err(error);
        }
        metrics.set_state(State::Retrying);
        if started.elapsed() > MAX_BACKOFF {
            backoff = Duration::from_secs(1);
        }
        tracing::warn!(
            subscription = %name,
            sqlstate = error.sqlstate(),
            "{message}; retrying in {}s",
            backoff.as_secs()
        );
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = cancel.cancelled() => {
                metrics.set_state(State::Stopped);
                return Ok(());
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// An error message with the source's and target's passwords masked. Errors
/// show connection strings without them already; this makes sure of it for
/// what the operator sees (logs, `/status`).
fn without_passwords(mut message: String, spec: &PipelineSpec) -> String {
    for info in [&spec.source, &spec.target] {
        if let Some(password) = info.password.as_ref().map(|p| p.expose()).filter(|p| !p.is_empty())
            && message.contains(password)
        {
            message = message.replace(password, "***");
        }
    }
    message
}

/// Source transactions applied differently after a failure.
#[derive(Debug, Clone, Copy, Default)]
struct Replay {
    /// Up to this commit LSN: one statement at a time, refused changes set
    /// aside as dead letters.
    careful_until: Option<Lsn>,
    /// Up to this commit LSN: in source order, one statement per row (no
    /// batches, no COPY), so that a refused row is named.
    in_order_until: Option<Lsn>,
}

/// One attempt: set up, copy if new, then stream until cancelled or broken.
async fn run_once(
    spec: &PipelineSpec,
    metrics: &PipelineMetrics,
    cancel: &CancellationToken,
    replay: Replay,
) -> Result<(), PipelineError> {
    let sub = &spec.subscription;
    let target = tls::connect_sql(&spec.target).await.map_err(PipelineError::ConnectTarget)?;
    let source_sql = tls::connect_sql(&spec.source).await.map_err(PipelineError::ConnectSource)?;
    catalog::check_tables(&source_sql, sub).await?;
    let mut routes = Vec::new();
    for mapping in &sub.tables {
        let route = TableRoute::load(mapping, &source_sql, &target).await?;
        log_shape(&sub.name, &route);
        routes.push(route);
    }
    let dead_letters = sub.on_error == OnError::DeadLetter;
    let monitor = tls::connect_sql(&spec.target).await.map_err(PipelineError::ConnectTarget)?;
    let mut applier = Applier::new(target, monitor, &sub.name, &sub.slot, routes, dead_letters).await?;
    let progress = applier.progress().await?;
    if let Some(progress) = progress {
        applier.wait_for_flush().await?;
        metrics.resumed_at(progress);
    }

    catalog::ensure_publication(&source_sql, sub).await?;
    let mut replication = ReplicationClient::connect(&spec.source).await?;
    let start = match (progress, catalog::slot_state(&source_sql, &sub.slot).await?) {
        (Some(progress), SlotState::Usable) => progress,
        (Some(_), SlotState::Missing) => {
            return Err(PipelineError::SlotVanished {
                slot: sub.slot.clone(),
                subscription: sub.name.clone(),
            });
        }
        (Some(_), SlotState::Lost) => {
            return Err(PipelineError::SlotInvalidated {
                slot: sub.slot.clone(),
                subscription: sub.name.clone(),
            });
        }
        (None, state) => {
            // Nothing was ever committed on the target, so a slot left over
            // (say, by a crash during the copy) holds nothing of value.
            if state != SlotState::Missing {
                replication.drop_slot(&sub.slot, true).await?;
            }
            metrics.set_state(State::Snapshot);
            initial_sync(sub, &mut replication, &source_sql, &mut applier, metrics).await?
        }
    };
    drop(source_sql);

    let options = StartOptions {
        publications: vec![sub.publication.clone()],
        protocol_version: None,
        messages: false,
        streaming: true,
    };
    let stream = replication.start(&sub.slot, start, &options).await?;
    tracing::info!(subscription = %sub.name, slot = %sub.slot, %start, "streaming");
    metrics.set_state(State::Streaming);

    let (events_tx, events_rx) = mpsc::channel(CHANNEL_CAPACITY / source::CHUNK_EVENTS);
    let (durable_tx, durable_rx) = watch::channel(start);
    let stop_reader = cancel.child_token();
    let reader = tokio::spawn(source::read_stream(stream, events_tx, durable_rx, stop_reader.clone()));
    let target = spec.target.to_string();
    let state = ApplyState::new(start, metrics, replay, sub.forward_origins);
    let applied = apply_events(&mut applier, events_rx, &durable_tx, state, &target).await;
    if applied.is_err() {
        stop_reader.cancel();
    }
    // Nothing more will become durable: a reader waiting for its last
    // position stops waiting now.
    drop(durable_tx);
    let read = reader.await.unwrap_or(Err(SourceError::ConsumerGone));
    applied?;
    read?;
    Ok(())
}

/// Says in the log what a table lets through, when it is not everything.
fn log_shape(subscription: &str, route: &TableRoute) {
    let mapping = &route.mapping;
    let dropped = mapping.operations.dropped();
    if !dropped.is_empty() {
        tracing::info!(%subscription, table = %mapping.from, "not replicating {}", dropped.join(", "));
    }
    if let Some(filter) = &mapping.filter {
        tracing::info!(%subscription, table = %mapping.from, "only rows where {filter}");
    }
}

/// Creates the slot and, when asked, copies the tables under its snapshot;
/// records the slot's consistent point as progress in the same target
/// transaction. Returns where streaming starts.
async fn initial_sync(
    sub: &Subscription,
    replication: &mut ReplicationClient,
    source_sql: &tokio_postgres::Client,
    applier: &mut Applier,
    metrics: &PipelineMetrics,
) -> Result<Lsn, PipelineError> {
    let slot = replication.create_slot(&sub.slot, SlotKind::Permanent, sub.snapshot).await?;
    applier.begin().await?;
    if let Some(snapshot_name) = slot.snapshot_name.as_deref().filter(|_| sub.snapshot) {
        let mut estimates = Vec::new();
        for (index, table) in sub.tables.iter().enumerate() {
            let estimate = estimated_rows(source_sql, &table.from).await;
            metrics.snapshot_estimate(index, estimate);
            estimates.push(estimate);
        }
        snapshot::begin_at_snapshot(source_sql, snapshot_name).await?;
        for (index, table) in sub.tables.iter().enumerate() {
            let started = Instant::now();
            let route = applier.route(&table.from).ok_or_else(|| ApplyError::Unmapped(table.from.clone()))?;
            let mut shown = snapshot::CopyProgress::new(&sub.name, &table.from, estimates[index]);
            let progress = |rows| {
                metrics.snapshot_copied(index, rows);
                shown.update(rows);
            };
            let rows = snapshot::copy_table(source_sql, route, applier.client(), progress).await?;
            shown.finish();
            metrics.snapshot_copied(index, rows);
            tracing::info!(
                subscription = %sub.name,
                table = %table.from,
                rows,
                seconds = started.elapsed().as_secs_f64(),
                "copied"
            );
        }
        source_sql.batch_execute("COMMIT").await.map_err(|source| SnapshotError::Sql {
            context: "ending the snapshot transaction".into(),
            source,
        })?;
    }
    applier.commit(slot.consistent_point, crate::pg::timestamp::now_micros()).await?;
    metrics.applied(slot.consistent_point, None);
    tracing::info!(subscription = %sub.name, slot = %sub.slot, at = %slot.consistent_point, "slot created");
    Ok(slot.consistent_point)
}

/// The planner's row estimate for a source table (`pg_class.reltuples`;
/// 0 when the table was never analyzed, or the estimate cannot be read).
async fn estimated_rows(source: &tokio_postgres::Client, table: &crate::pg::names::QualifiedName) -> i64 {
    let name = format!("{table}");
    match source
        .query_one("SELECT reltuples::bigint FROM pg_class WHERE oid = $1::text::regclass", &[&name])
        .await
    {
        Ok(row) => row.get::<_, i64>(0).max(0),
        Err(_) => 0,
    }
}

/// The applier's loop: applies whole source transactions, several per
/// target transaction, commits only at source commit boundaries, and
/// publishes each committed end LSN on `durable`. While idle it checks
/// that the target connection is still open (`target` names it).
async fn apply_events(
    applier: &mut Applier,
    mut events: mpsc::Receiver<EventChunk>,
    durable: &watch::Sender<Lsn>,
    mut state: ApplyState,
    target: &str,
) -> Result<(), PipelineError> {
    let mut check = tokio::time::interval(TARGET_CHECK_INTERVAL);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut flush_check = tokio::time::interval(FLUSH_CHECK_INTERVAL);
    flush_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = async {
        loop {
            tokio::select! {
                chunk = events.recv() => match chunk {
                    Some(chunk) => {
                        let last = chunk.len();
                        for (n, event) in chunk.into_iter().enumerate() {
                            let nothing_waiting = n + 1 == last && events.is_empty();
                            state.handle(applier, event, nothing_waiting, durable).await?;
                        }
                    }
                    None => break,
                },
                _ = check.tick() => if applier.client().is_closed() {
                    return Err(PipelineError::TargetClosed { target: target.to_string() });
                },
                _ = flush_check.tick(), if !state.unflushed.is_empty() => state.release_flushed(applier, durable).await?,
                _ = tokio::time::sleep_until(state.linger_deadline()), if state.lingering() => {
                    state.commit(applier).await?;
                }
            }
        }
        state.finish(applier, durable).await.map_err(PipelineError::from)
    }
    .await;
    if result.is_err() && state.batch.is_some() {
        applier.rollback().await;
    }
    match result {
        Err(PipelineError::Apply(error)) if applier.would_dead_letter(&error) => {
            Err(PipelineError::ReplayCarefully { until: state.current_commit })
        }
        Err(PipelineError::Apply(error)) if error.is_batched() && !error.is_retryable() => {
            Err(PipelineError::ReplayInOrder { until: state.current_commit })
        }
        other => other,
    }
}

struct ApplyState {
    /// The end LSN of the last source transaction on the target.
    progress: Lsn,
    /// The open target transaction, if any.
    batch: Option<Batch>,
    in_source_transaction: bool,
    /// The current source transaction was applied before a restart.
    skipping: bool,
    /// The current source transaction came from another replicator and is
    /// left out (see `forward_origins`).
    from_elsewhere: bool,
    forward_origins: bool,
    /// The commit LSN of the latest source transaction begun.
    current_commit: Lsn,
    /// Source transactions applied carefully or in order after a failure.
    replay: Replay,
    metrics: PipelineMetrics,
    /// Changes of the current source transaction applied so far.
    transaction_changes: usize,
    /// Committed on the target but maybe not yet flushed there: (target
    /// WAL position of the commit, source end LSN), oldest first. The
    /// source hears of each only once the target has flushed it.
    unflushed: VecDeque<(Lsn, Lsn)>,
}

struct Batch {
    rows: usize,
    started: Instant,
    /// End LSN and commit time of the last whole source transaction in it.
    last_commit: Option<(Lsn, i64)>,
    /// Source transactions with changes in it.
    transactions: u64,
    /// Its changes by table and operation, counted once it commits.
    events: EventCounts,
}

impl ApplyState {
    /// The applier starts from `progress`; source transactions up to
    /// `replay`'s positions are applied carefully or in order.
    fn new(progress: Lsn, metrics: &PipelineMetrics, replay: Replay, forward_origins: bool) -> ApplyState {
        ApplyState {
            progress,
            batch: None,
            in_source_transaction: false,
            skipping: false,
            current_commit: Lsn::ZERO,
            replay,
            from_elsewhere: false,
            forward_origins,
            metrics: metrics.clone(),
            transaction_changes: 0,
            unflushed: VecDeque::new(),
        }
    }

    async fn handle(
        &mut self,
        applier: &mut Applier,
        event: SourceEvent,
        nothing_waiting: bool,
        durable: &watch::Sender<Lsn>,
    ) -> Result<(), ApplyError> {
        match event {
            SourceEvent::Begin { commit_lsn, commit_time, .. } => {
                self.in_source_transaction = true;
                self.transaction_changes = 0;
                self.from_elsewhere = false;
                // Its commit lies before the recorded end LSN: applied already.
                self.skipping = commit_lsn < self.progress;
                self.current_commit = commit_lsn;
                let careful = self.replay.careful_until.is_some_and(|until| commit_lsn <= until);
                let in_order = self.replay.in_order_until.is_some_and(|until| commit_lsn <= until);
                applier.begin_source_transaction(commit_lsn, careful, in_order);
                if !self.skipping {
                    self.metrics.pending(commit_time);
                }
            }
            SourceEvent::Origin { name } => {
                // Applied there by a replicator (ferry or PostgreSQL's own):
                // sent on only when the subscription forwards such changes.
                if !self.forward_origins {
                    tracing::debug!(subscription = %self.metrics.subscription(), origin = %name, "leaving out a transaction applied by another replicator");
                    self.from_elsewhere = true;
                }
            }
            SourceEvent::Change(change) if !self.skipping && !self.from_elsewhere => {
                if self.batch.is_none() {
                    applier.begin().await?;
                    self.batch = Some(Batch {
                        rows: 0,
                        started: Instant::now(),
                        last_commit: None,
                        transactions: 0,
                        events: EventCounts::default(),
                    });
                }
                applier.apply(&change).await?;
                self.transaction_changes += 1;
                if let Some(batch) = self.batch.as_mut() {
                    batch.rows += 1;
                    count_event(&self.metrics, &mut batch.events, &change);
                }
            }
            SourceEvent::Commit { end_lsn, commit_time, .. } => {
                self.in_source_transaction = false;
                // Caught up or behind: decides whether the next
                // transaction's rows are gathered per table.
                let lag = crate::pg::timestamp::now_micros().saturating_sub(commit_time);
                applier.set_live(nothing_waiting && lag < LIVE_LAG.as_micros() as i64);
                if self.skipping {
                    return Ok(());
                }
                let Some(batch) = self.batch.as_mut() else {
                    // Nothing of it reached the target (no mapped rows):
                    // there is nothing to flush, only commits before it.
                    let waiting = !self.unflushed.is_empty();
                    self.advance(Lsn::ZERO, end_lsn, commit_time);
                    if !waiting {
                        self.release_flushed(applier, durable).await?;
                    }
                    return Ok(());
                };
                batch.last_commit = Some((end_lsn, commit_time));
                if self.transaction_changes > 0 {
                    batch.transactions += 1;
                }
                let full = batch.rows >= GROUP_COMMIT_ROWS || batch.started.elapsed() >= GROUP_COMMIT_AGE;
                if full || (nothing_waiting && batch.started.elapsed() >= GROUP_COMMIT_LINGER) {
                    self.commit(applier).await?;
                }
            }
            SourceEvent::Change(_) | SourceEvent::Message(_) => {}
        }
        Ok(())
    }

    /// Whether the open target transaction ends at a source commit and
    /// waits for more (see [`GROUP_COMMIT_LINGER`]).
    fn lingering(&self) -> bool {
        !self.in_source_transaction && self.batch.as_ref().is_some_and(|b| b.last_commit.is_some())
    }

    fn linger_deadline(&self) -> tokio::time::Instant {
        let started = self.batch.as_ref().map_or_else(Instant::now, |b| b.started);
        tokio::time::Instant::from_std(started + GROUP_COMMIT_LINGER)
    }

    /// Commits the open target transaction up to its last whole source
    /// transaction.
    async fn commit(&mut self, applier: &mut Applier) -> Result<(), ApplyError> {
        match self.batch.take() {
            Some(Batch {
                last_commit: Some((end_lsn, commit_time)), started, transactions, events, ..
            }) => {
                let target_lsn = applier.commit(end_lsn, commit_time).await?;
                self.metrics.batch_committed(&events, transactions, started.elapsed());
                self.metrics.dead_lettered(applier.take_dead_letters());
                fault::point(fault::AFTER_TARGET_COMMIT);
                // The source hears of it at the next flush check.
                self.advance(target_lsn, end_lsn, commit_time);
            }
            Some(_) => applier.rollback().await,
            None => {}
        }
        Ok(())
    }

    /// Everything received is on the target, up to `end_lsn`, once the
    /// target has flushed its WAL to `target_lsn` (0/0: nothing to flush).
    fn advance(&mut self, target_lsn: Lsn, end_lsn: Lsn, commit_time: i64) {
        self.progress = end_lsn;
        self.metrics.applied(end_lsn, Some(commit_time));
        self.unflushed.push_back((target_lsn, end_lsn));
    }

    /// Tells the source about every commit the target has flushed.
    async fn release_flushed(
        &mut self,
        applier: &mut Applier,
        durable: &watch::Sender<Lsn>,
    ) -> Result<(), ApplyError> {
        let Some(&(oldest, _)) = self.unflushed.front() else { return Ok(()) };
        let flushed = if oldest == Lsn::ZERO { Lsn::ZERO } else { applier.flushed().await? };
        let mut released = None;
        while let Some(&(target_lsn, end_lsn)) = self.unflushed.front() {
            if target_lsn > flushed {
                break;
            }
            released = Some(end_lsn);
            self.unflushed.pop_front();
        }
        if let Some(end_lsn) = released {
            durable.send_replace(end_lsn);
        }
        Ok(())
    }

    /// Waits (briefly: the WAL writer flushes asynchronous commits within a
    /// few hundred milliseconds) until every commit is flushed and confirmed.
    async fn drain_unflushed(
        &mut self,
        applier: &mut Applier,
        durable: &watch::Sender<Lsn>,
    ) -> Result<(), ApplyError> {
        let deadline = Instant::now() + FINAL_FLUSH_WAIT;
        while !self.unflushed.is_empty() && Instant::now() < deadline {
            self.release_flushed(applier, durable).await?;
            if !self.unflushed.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// The reader has stopped. Work that ends at a source commit is kept;
    /// a source transaction cut in the middle is rolled back (the source
    /// sends it again next time).
    async fn finish(
        &mut self,
        applier: &mut Applier,
        durable: &watch::Sender<Lsn>,
    ) -> Result<(), ApplyError> {
        if self.batch.is_some() {
            if self.in_source_transaction {
                applier.rollback().await;
                self.batch = None;
            } else {
                self.commit(applier).await?;
            }
        }
        self.drain_unflushed(applier, durable).await
    }
}

/// Counts a change applied in `batch` under its source table and operation
/// (tables outside the subscription are not counted: labels stay bounded).
fn count_event(metrics: &PipelineMetrics, events: &mut EventCounts, change: &Change) {
    let mut add = |relation: &crate::pg::pgoutput::Relation, op| {
        if let Some(table) = metrics.table_index(&relation.namespace, &relation.name) {
            events.add(table, op);
        }
    };
    match change {
        Change::Insert { relation, .. } => add(relation, Op::Insert),
        Change::Update { relation, .. } => add(relation, Op::Update),
        Change::Delete { relation, .. } => add(relation, Op::Delete),
        Change::Truncate { relations, .. } => relations.iter().for_each(|r| add(r, Op::Truncate)),
        Change::Message(_) => {}
    }
}
