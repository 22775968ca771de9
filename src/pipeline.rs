//! One subscription's pipeline: source setup, initial copy, then the reader
//! and the applier joined by a bounded channel, with feedback from the
//! applier's commits to the source and retries when something breaks.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::apply::{Applier, ApplyError};
use crate::config::{OnError, Subscription};
use crate::fault;
use crate::pg::conninfo::ConnInfo;
use crate::pg::replication::{ReplicationClient, SlotKind, StartOptions};
use crate::pg::{Lsn, PgError, tls};
use crate::route::{LoadError, TableRoute};
use crate::snapshot::{self, SnapshotError};
use crate::source::catalog::{self, CatalogError, SlotState};
use crate::source::{self, SourceError, SourceEvent};

/// Events in flight between reader and applier: enough to keep both busy,
/// small enough that a slow target slows reading instead of filling memory.
const CHANNEL_CAPACITY: usize = 4096;
/// A target transaction closes at the first source commit after this many
/// rows or this much time, or when no more changes are waiting.
const GROUP_COMMIT_ROWS: usize = 20_000;
const GROUP_COMMIT_AGE: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Connect(#[from] tls::SqlConnectError),
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
            PipelineError::Connect(e) => e.sqlstate().is_none_or(|c| sqlstate_retryable(c.code())),
            PipelineError::Apply(e) | PipelineError::Route(LoadError::Target(e)) => e.is_retryable(),
            PipelineError::Snapshot(SnapshotError::Sql { source, .. })
            | PipelineError::Catalog(CatalogError::Sql { source, .. })
            | PipelineError::Route(LoadError::Source(CatalogError::Sql { source, .. })) => {
                source.code().is_none_or(|c| sqlstate_retryable(c.code()))
            }
            _ => false,
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
/// retried with exponential backoff.
pub async fn run(spec: PipelineSpec, cancel: CancellationToken) -> Result<(), PipelineError> {
    let name = spec.subscription.name.clone();
    let mut backoff = Duration::from_secs(1);
    let mut careful_until = None;
    loop {
        let started = Instant::now();
        let error = match run_once(&spec, &cancel, careful_until).await {
            Ok(()) => return Ok(()),
            Err(PipelineError::ReplayCarefully { until }) => {
                // A change was refused for good and dead letters are on:
                // replay up to that transaction one statement at a time.
                tracing::info!(subscription = %name, %until, "replaying statement by statement to set the refused change aside");
                careful_until = Some(until);
                continue;
            }
            Err(error) => error,
        };
        if cancel.is_cancelled() {
            tracing::warn!(subscription = %name, "error while stopping: {error}");
            return Ok(());
        }
        if !error.is_retryable() {
            tracing::error!(subscription = %name, sqlstate = error.sqlstate(), "pipeline stopped: {error}");
            return Err(error);
        }
        if started.elapsed() > MAX_BACKOFF {
            backoff = Duration::from_secs(1);
        }
        tracing::warn!(
            subscription = %name,
            sqlstate = error.sqlstate(),
            "{error}; retrying in {}s",
            backoff.as_secs()
        );
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = cancel.cancelled() => return Ok(()),
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One attempt: set up, copy if new, then stream until cancelled or broken.
async fn run_once(
    spec: &PipelineSpec,
    cancel: &CancellationToken,
    careful_until: Option<Lsn>,
) -> Result<(), PipelineError> {
    let sub = &spec.subscription;
    let target = tls::connect_sql(&spec.target).await?;
    let source_sql = tls::connect_sql(&spec.source).await?;
    catalog::check_tables(&source_sql, sub).await?;
    let mut routes = Vec::new();
    for mapping in &sub.tables {
        let route = TableRoute::load(mapping, &source_sql, &target).await?;
        log_shape(&sub.name, &route);
        routes.push(route);
    }
    let dead_letters = sub.on_error == OnError::DeadLetter;
    let mut applier = Applier::new(target, &sub.name, routes, dead_letters).await?;
    let progress = applier.progress().await?;

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
            initial_sync(sub, &mut replication, &source_sql, &mut applier).await?
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

    let (events_tx, events_rx) = mpsc::channel(CHANNEL_CAPACITY);
    let (durable_tx, durable_rx) = watch::channel(start);
    let stop_reader = cancel.child_token();
    let reader = tokio::spawn(source::read_stream(stream, events_tx, durable_rx, stop_reader.clone()));
    let applied = apply_events(&mut applier, events_rx, &durable_tx, start, careful_until).await;
    if applied.is_err() {
        stop_reader.cancel();
    }
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
) -> Result<Lsn, PipelineError> {
    let slot = replication.create_slot(&sub.slot, SlotKind::Permanent, sub.snapshot).await?;
    applier.begin().await?;
    if let Some(snapshot_name) = slot.snapshot_name.as_deref().filter(|_| sub.snapshot) {
        snapshot::begin_at_snapshot(source_sql, snapshot_name).await?;
        for table in &sub.tables {
            let started = Instant::now();
            let route = applier.route(&table.from).ok_or_else(|| ApplyError::Unmapped(table.from.clone()))?;
            let rows = snapshot::copy_table(source_sql, route, applier.client()).await?;
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
    tracing::info!(subscription = %sub.name, slot = %sub.slot, at = %slot.consistent_point, "slot created");
    Ok(slot.consistent_point)
}

/// The applier's loop: applies whole source transactions, several per
/// target transaction, commits only at source commit boundaries, and
/// publishes each committed end LSN on `durable`.
async fn apply_events(
    applier: &mut Applier,
    mut events: mpsc::Receiver<SourceEvent>,
    durable: &watch::Sender<Lsn>,
    progress: Lsn,
    careful_until: Option<Lsn>,
) -> Result<(), PipelineError> {
    let mut state = ApplyState {
        progress,
        batch: None,
        in_source_transaction: false,
        skipping: false,
        current_commit: Lsn::ZERO,
        careful_until,
    };
    let result = async {
        while let Some(event) = events.recv().await {
            state.handle(applier, event, events.is_empty(), durable).await?;
        }
        state.finish(applier, durable).await
    }
    .await;
    if result.is_err() && state.batch.is_some() {
        applier.rollback().await;
    }
    match result {
        Err(error) if applier.would_dead_letter(&error) => {
            Err(PipelineError::ReplayCarefully { until: state.current_commit })
        }
        other => other.map_err(PipelineError::from),
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
    /// The commit LSN of the latest source transaction begun.
    current_commit: Lsn,
    /// Source transactions up to this commit LSN are applied carefully
    /// (one statement at a time, refused ones set aside).
    careful_until: Option<Lsn>,
}

struct Batch {
    rows: usize,
    started: Instant,
    /// End LSN and commit time of the last whole source transaction in it.
    last_commit: Option<(Lsn, i64)>,
}

impl ApplyState {
    async fn handle(
        &mut self,
        applier: &mut Applier,
        event: SourceEvent,
        nothing_waiting: bool,
        durable: &watch::Sender<Lsn>,
    ) -> Result<(), ApplyError> {
        match event {
            SourceEvent::Begin { commit_lsn, .. } => {
                self.in_source_transaction = true;
                // Its commit lies before the recorded end LSN: applied already.
                self.skipping = commit_lsn < self.progress;
                self.current_commit = commit_lsn;
                let careful = self.careful_until.is_some_and(|until| commit_lsn <= until);
                applier.begin_source_transaction(commit_lsn, careful);
            }
            SourceEvent::Change(change) if !self.skipping => {
                if self.batch.is_none() {
                    applier.begin().await?;
                    self.batch = Some(Batch { rows: 0, started: Instant::now(), last_commit: None });
                }
                applier.apply(&change).await?;
                if let Some(batch) = self.batch.as_mut() {
                    batch.rows += 1;
                }
            }
            SourceEvent::Commit { end_lsn, commit_time, .. } => {
                self.in_source_transaction = false;
                if self.skipping {
                    return Ok(());
                }
                let Some(batch) = self.batch.as_mut() else {
                    // Nothing of it reached the target (no mapped rows):
                    // there is nothing to make durable.
                    self.advance(end_lsn, durable);
                    return Ok(());
                };
                batch.last_commit = Some((end_lsn, commit_time));
                let full = batch.rows >= GROUP_COMMIT_ROWS || batch.started.elapsed() >= GROUP_COMMIT_AGE;
                if nothing_waiting || full {
                    self.commit(applier, durable).await?;
                }
            }
            SourceEvent::Change(_) | SourceEvent::Origin { .. } | SourceEvent::Message(_) => {}
        }
        Ok(())
    }

    /// Commits the open target transaction up to its last whole source
    /// transaction.
    async fn commit(
        &mut self,
        applier: &mut Applier,
        durable: &watch::Sender<Lsn>,
    ) -> Result<(), ApplyError> {
        match self.batch.take() {
            Some(Batch { last_commit: Some((end_lsn, commit_time)), .. }) => {
                applier.commit(end_lsn, commit_time).await?;
                fault::point(fault::AFTER_TARGET_COMMIT);
                self.advance(end_lsn, durable);
            }
            Some(_) => applier.rollback().await,
            None => {}
        }
        Ok(())
    }

    fn advance(&mut self, end_lsn: Lsn, durable: &watch::Sender<Lsn>) {
        self.progress = end_lsn;
        durable.send_replace(end_lsn);
    }

    /// The reader has stopped. Work that ends at a source commit is kept;
    /// a source transaction cut in the middle is rolled back (the source
    /// sends it again next time).
    async fn finish(
        &mut self,
        applier: &mut Applier,
        durable: &watch::Sender<Lsn>,
    ) -> Result<(), ApplyError> {
        if self.batch.is_none() {
            return Ok(());
        }
        if self.in_source_transaction {
            applier.rollback().await;
            self.batch = None;
            return Ok(());
        }
        self.commit(applier, durable).await
    }
}
