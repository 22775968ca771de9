//! One subscription's pipeline: source setup, initial copy, then the reader
//! and the applier joined by a bounded channel, with feedback from the
//! applier's commits to the source and retries when something breaks.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;

use crate::apply::{self, Applier, ApplyError};
use crate::config::Subscription;
use crate::fault;
use crate::metrics::{ErrorKind, EventCounts, Op, PipelineMetrics, State};
use crate::pg::conninfo::ConnInfo;
use crate::pg::names::QualifiedName;
use crate::pg::replication::{ReplicationClient, ReplicationStream, SlotKind, StartOptions};
use crate::pg::{Lsn, PgError, tls};
use crate::route::{LoadError, TableRoute};
use crate::snapshot::SnapshotError;
use crate::source::catalog::{self, CatalogError, SlotState};
use crate::source::{self, Change, EventChunk, SourceError, SourceEvent, TableNames};
use crate::tablesync::{self, Copied, CopyEnds, Floor, Floors, TableStates};

/// Events in flight between reader and applier (in chunks of
/// [`source::CHUNK_EVENTS`]): enough to keep both busy, small enough that a
/// slow target slows reading instead of filling memory.
const CHANNEL_CAPACITY: usize = 4096;
/// A target transaction closes at the first source commit after this many
/// rows or this much time, or when no more changes are waiting.
const GROUP_COMMIT_ROWS: usize = 20_000;
const GROUP_COMMIT_AGE: Duration = Duration::from_millis(500);
/// The age at which a target transaction closes, although more changes are
/// waiting, when the pipeline is live (see [`source::is_recent`]): the applier is
/// working through a burst, and its rows should not wait for the whole
/// burst. Committing each transaction of a burst on its own instead would
/// slow the applier below the rate they arrive at, and the burst would grow.
const LIVE_GROUP_COMMIT_AGE: Duration = Duration::from_millis(50);
/// When nothing more is waiting, a target transaction still lingers this
/// long for the next source transaction while catching up: the reader then
/// delivers transactions a little apart, and a commit each would cost a
/// round trip each. Live it does not linger: at a steady rate of small
/// transactions a linger adds its latency to every row.
const GROUP_COMMIT_LINGER: Duration = Duration::from_millis(2);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often an idle applier checks that its target connection is still
/// open, so that a target going away shows (and is retried) without
/// waiting for the next change.
const TARGET_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// How often commits waiting for the target's WAL flush are checked.
const FLUSH_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// How long a stopping applier waits for its last commits to be flushed.
const FINAL_FLUSH_WAIT: Duration = Duration::from_secs(10);
/// How long a stopping pipeline may take to finish the transaction in
/// hand. A target that does not answer (a statement waiting on a lock)
/// would otherwise hold up the exit, and a reload of every other
/// subscription; past it, the connection is dropped. The target rolls the
/// transaction back, or commits it once the lock goes; the next start
/// waits for that session to end (see `apply::tag_with_origin`).
const STOP_GRACE: Duration = Duration::from_secs(10);

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
    /// Not a failure yet: the pipeline restarts, in a new target session,
    /// and applies the source transactions up to `until` in source order,
    /// one statement per row; `why` says what failed (rows sent together,
    /// which this names; or a row a new session may take, see
    /// [`ApplyError::may_pass_in_a_new_session`]).
    #[error(
        "{why}; applying again up to {until} in a new target session, in source order, one statement per row"
    )]
    ReplayInOrder { until: Lsn, why: String },
    #[error("the pipeline failed on a bug in ferry (please report it with the log): {0}")]
    Panicked(String),
    #[error("the pipeline's thread could not start: {0}")]
    NoThread(std::io::Error),
    /// Not a failure: see [`CopyBehindStream`].
    #[error(transparent)]
    CopyBehindStream(#[from] CopyBehindStream),
    #[error(
        "slot {slot} no longer exists on the source, but the target has progress recorded. If the source url \
         now reaches another server than the slot's, point it back; else changes since then are lost to \
         ferry: to start over, empty the target tables and run \
         DELETE FROM ferry.progress WHERE subscription = '{subscription}' on the target"
    )]
    SlotVanished { slot: String, subscription: String },
    #[error(
        "slot {slot} on the source's server belongs to {owner}, not to the database the source url reaches \
         now; point the url back (the slot keeps its WAL until it is read or dropped)"
    )]
    SlotElsewhere { slot: String, owner: String },
    #[error(
        "slot {slot} was invalidated by the source (it retained more WAL than max_slot_wal_keep_size allows): \
         changes are lost to ferry. To start over, drop the slot, empty the target tables and run \
         DELETE FROM ferry.progress WHERE subscription = '{subscription}' on the target"
    )]
    SlotInvalidated { slot: String, subscription: String },
    #[error(
        "slot {slot} exists on the source, but target {target} holds nothing of subscription {subscription}: \
         the slot may hold changes not yet applied to another target, or to a subscription of another name with \
         the same slot (was the subscription's target or name changed? or was an older ferry stopped during the \
         subscription's first start?). Change it back; or, if what the slot holds is not needed, drop it on the \
         source (SELECT pg_drop_replication_slot('{slot}')) and ferry starts afresh"
    )]
    SlotOfAnother { slot: String, subscription: String, target: String },
}

impl PipelineError {
    /// Whether the same attempt may succeed later (a database was down, a
    /// connection broke), as opposed to something that needs a person.
    pub fn is_retryable(&self) -> bool {
        match self {
            PipelineError::Pg(e)
            | PipelineError::Source(SourceError::Pg(e))
            | PipelineError::Snapshot(SnapshotError::Source(e)) => pg_retryable(e),
            // A restart spools again from the slot: a full disk or too many
            // open files may have cleared by then.
            PipelineError::Source(SourceError::StreamEnded | SourceError::Spool(_)) => true,
            PipelineError::ConnectSource(e) | PipelineError::ConnectTarget(e) => connect_retryable(e),
            PipelineError::TargetClosed { .. } => true,
            PipelineError::Catalog(e)
            | PipelineError::Route(LoadError::Source(e))
            | PipelineError::Apply(ApplyError::Source(e)) => catalog_retryable(e),
            PipelineError::Apply(e) | PipelineError::Route(LoadError::Target(e)) => e.is_retryable(),
            PipelineError::Snapshot(SnapshotError::Sql { source, .. }) => sql_retryable(source),
            PipelineError::Snapshot(SnapshotError::ChangedSinceSnapshot(_)) => true,
            _ => false,
        }
    }

    /// Which side or step failed, for `ferry_errors_total{kind}`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PipelineError::Pg(_)
            | PipelineError::ConnectSource(_)
            | PipelineError::Source(_)
            | PipelineError::Catalog(CatalogError::Sql { .. } | CatalogError::Connect(_))
            | PipelineError::Route(LoadError::Source(CatalogError::Sql { .. } | CatalogError::Connect(_)))
            | PipelineError::Apply(ApplyError::Source(CatalogError::Sql { .. } | CatalogError::Connect(_))) => {
                ErrorKind::Source
            }
            PipelineError::Apply(e) | PipelineError::Route(LoadError::Target(e)) if e.is_target_failure() => {
                ErrorKind::Target
            }
            PipelineError::ConnectTarget(_)
            | PipelineError::TargetClosed { .. }
            | PipelineError::ReplayCarefully { .. }
            | PipelineError::ReplayInOrder { .. }
            | PipelineError::CopyBehindStream(_) => ErrorKind::Target,
            PipelineError::Snapshot(_) => ErrorKind::Snapshot,
            PipelineError::SlotVanished { .. }
            | PipelineError::SlotElsewhere { .. }
            | PipelineError::SlotInvalidated { .. }
            | PipelineError::SlotOfAnother { .. } => ErrorKind::Slot,
            PipelineError::Panicked(_) | PipelineError::NoThread(_) => ErrorKind::Internal,
            PipelineError::Apply(_) | PipelineError::Catalog(_) | PipelineError::Route(_) => {
                ErrorKind::Config
            }
        }
    }

    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            PipelineError::Pg(e)
            | PipelineError::Source(SourceError::Pg(e))
            | PipelineError::Snapshot(SnapshotError::Source(e)) => e.sqlstate(),
            PipelineError::ConnectSource(e) | PipelineError::ConnectTarget(e) => {
                e.sqlstate().map(SqlState::code)
            }
            // A connection of its own for the catalog (a retyped column's types).
            PipelineError::Catalog(CatalogError::Connect(e))
            | PipelineError::Route(LoadError::Source(CatalogError::Connect(e)))
            | PipelineError::Apply(ApplyError::Source(CatalogError::Connect(e))) => {
                e.sqlstate().map(SqlState::code)
            }
            PipelineError::Apply(e) => e.sqlstate(),
            _ => None,
        }
    }

    /// A password refused (`28P01`) on a side whose password comes from a
    /// file: its Secret may be mid-rotation (the role's new password set,
    /// the file not yet), and every attempt reads the file again, so this
    /// is retried rather than waiting for a person and a SIGHUP, which in
    /// a pod no one sends.
    fn may_pass_with_a_rotated_password(&self, spec: &PipelineSpec) -> bool {
        let from_file = |info: &ConnInfo| info.password_file.is_some();
        let rotating = match self.kind() {
            ErrorKind::Source => from_file(&spec.source),
            ErrorKind::Target => from_file(&spec.target),
            // A copy's sessions are on both sides.
            ErrorKind::Snapshot => from_file(&spec.source) || from_file(&spec.target),
            _ => false,
        };
        rotating && self.sqlstate() == Some("28P01")
    }
}

fn pg_retryable(error: &PgError) -> bool {
    match error {
        PgError::Connect { .. } | PgError::Io { .. } => true,
        PgError::Server { error, .. } => sqlstate_retryable(&error.code) || error.code == "55006",
        _ => false,
    }
}

fn connect_retryable(error: &tls::SqlConnectError) -> bool {
    !error.is_tls_refusal() && error.sqlstate().is_none_or(|c| sqlstate_retryable(c.code()))
}

/// Whether a failed query may work later; no SQLSTATE means the connection broke.
fn sql_retryable(error: &tokio_postgres::Error) -> bool {
    error.code().is_none_or(|c| sqlstate_retryable(c.code()))
}

/// Reading the source's catalog failed on the way (retryable), or the
/// catalog says something a person must fix (not).
fn catalog_retryable(error: &CatalogError) -> bool {
    match error {
        CatalogError::Sql { source, .. } => sql_retryable(source),
        CatalogError::Connect(e) => connect_retryable(e),
        _ => false,
    }
}

/// Connection trouble, shutdowns, lack of resources, lost races, a lock
/// not granted in time (`lock_timeout`).
fn sqlstate_retryable(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P")
        || code == "40001"
        || code == "40P01"
        || code == "55P03"
}

/// Tables copied as of `at` missed the stream's changes since then, up to
/// `progress`: the stream goes back to `at`.
#[derive(Debug, thiserror::Error)]
#[error(
    "tables were copied as of {at}, behind the stream at {progress}; going back to {at} to bring them up to date"
)]
pub struct CopyBehindStream {
    at: Lsn,
    progress: Lsn,
}

/// Everything one pipeline needs.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    let mut copy = CopyInFlight::default();
    metrics.set_state(State::Starting);
    loop {
        if cancel.is_cancelled() {
            metrics.set_state(State::Stopped);
            return Ok(());
        }
        let started = Instant::now();
        let error = match run_once(&spec, &metrics, &cancel, replay, &mut copy).await {
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
            Err(error @ PipelineError::ReplayInOrder { until, .. }) => {
                tracing::info!(subscription = %name, "{}", without_passwords(error.to_string(), &spec));
                replay.in_order_until = Some(until);
                continue;
            }
            Err(error @ PipelineError::CopyBehindStream(_)) => {
                tracing::info!(subscription = %name, "{error}");
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
        if !error.is_retryable() && !error.may_pass_with_a_rotated_password(&spec) {
            // Stopped before the log says so: whoever reads the log line
            // and then asks /status sees the same.
            metrics.set_state(State::Stopped);
            tracing::error!(subscription = %name, sqlstate = error.sqlstate(), "pipeline stopped: {message}");
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

/// A task of the pipeline that did not finish: it panicked (a bug in
/// ferry), as nothing aborts these tasks.
fn panicked_in(task: &str, failed: tokio::task::JoinError) -> PipelineError {
    PipelineError::Panicked(format!("{task}: {failed}"))
}

/// Stops a pipeline whose run panicked (a bug in ferry) as one that met an
/// error retrying cannot fix: its state, `ferry_pipeline_up` and
/// `ferry_errors_total` must not go on showing it as it was.
pub fn stopped_by_panic(
    spec: &PipelineSpec,
    metrics: &PipelineMetrics,
    panic: Box<dyn std::any::Any + Send>,
) -> PipelineError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    stopped_outside_run(spec, metrics, PipelineError::Panicked(what))
}

/// Shows a pipeline stopped by `error`, which ended it outside its run
/// (that reports its own errors).
pub fn stopped_outside_run(
    spec: &PipelineSpec,
    metrics: &PipelineMetrics,
    error: PipelineError,
) -> PipelineError {
    let message = without_passwords(error.to_string(), spec);
    metrics.error(error.kind(), message.clone());
    metrics.set_state(State::Stopped);
    tracing::error!(subscription = %spec.subscription.name, "pipeline stopped: {message}");
    error
}

/// An error message with the source's and target's passwords masked. Errors
/// show connection strings without them already; this makes sure of it for
/// what the operator sees (logs, `/status`). A password file's is masked as
/// read at the start and as it holds now (a connection may have used either).
fn without_passwords(mut message: String, spec: &PipelineSpec) -> String {
    let current = [&spec.source, &spec.target].map(ConnInfo::with_current_password);
    for info in [&spec.source, &spec.target].into_iter().chain(&current) {
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

impl Replay {
    /// Whether the transaction committing at `commit_lsn` is applied
    /// carefully, and whether in order.
    fn modes(&self, commit_lsn: Lsn) -> (bool, bool) {
        let covers = |until: Option<Lsn>| until.is_some_and(|until| commit_lsn <= until);
        (covers(self.careful_until), covers(self.in_order_until))
    }

    /// Whether every transaction replayed in order is committed on the
    /// target, whose progress is `progress`: a change failing since then
    /// was sent in the usual way, not in the replay. One failing in the
    /// replay fails for good (the replay's own session prepared it), even
    /// when noticed only at a later source commit, which the target
    /// transaction it went in may reach.
    fn in_order_committed(&self, progress: Lsn) -> bool {
        // `until` is a commit LSN, where the commit record starts; the
        // transaction's end LSN, which `progress` is, lies past it (and may
        // be the next transaction's commit LSN).
        self.in_order_until.is_none_or(|until| progress > until)
    }

    /// Whether transactions committing after `handled` may still be
    /// replayed.
    fn pending(&self, handled: Lsn) -> bool {
        [self.careful_until, self.in_order_until].into_iter().flatten().any(|until| until >= handled)
    }
}

/// One attempt: set up, copy if new, then stream until cancelled or broken.
async fn run_once(
    spec: &PipelineSpec,
    metrics: &PipelineMetrics,
    cancel: &CancellationToken,
    replay: Replay,
    copy: &mut CopyInFlight,
) -> Result<(), PipelineError> {
    let sub = &spec.subscription;
    // Setting up can wait on a server that accepted the connection and
    // never answers, and a copy can take long: stopping waits for neither
    // (nothing was applied yet; a copy is rolled back, and done again next
    // time).
    let ready = tokio::select! {
        ready = set_up(spec, metrics, copy) => ready?,
        _ = cancel.cancelled() => return Ok(()),
    };
    let Ready { mut applier, stream, names, progress, start, floors } = ready;
    tracing::info!(subscription = %sub.name, slot = %sub.slot, %start, "streaming");
    metrics.set_state(State::Streaming);

    let (events_tx, events_rx) = mpsc::channel(CHANNEL_CAPACITY / source::CHUNK_EVENTS);
    let (durable_tx, durable_rx) = watch::channel(start);
    let stop_reader = cancel.child_token();
    let reader =
        tokio::spawn(source::read_stream(stream, events_tx, durable_rx, stop_reader.clone(), true, names));
    let target = spec.target.to_string();
    let state = ApplyState::new(progress, start, floors, metrics, replay, sub.forward_origins);
    let grace_over = async {
        cancel.cancelled().await;
        tokio::time::sleep(STOP_GRACE).await;
    };
    let applied = tokio::select! {
        applied = apply_events(&mut applier, events_rx, &durable_tx, state, &mut copy.task, &target) => applied,
        () = grace_over => {
            tracing::warn!(subscription = %sub.name, "stopping: the target did not finish the transaction in hand within {}s; its connection is dropped, and the next start goes on from whatever the target committed", STOP_GRACE.as_secs());
            Ok(())
        }
    };
    if applied.is_err() {
        stop_reader.cancel();
    }
    // Nothing more will become durable: a reader waiting for its last
    // position stops waiting now.
    drop(durable_tx);
    let read = match source::stopped_reader(reader, STOP_GRACE).await {
        Some(read) => read.map_err(|failed| panicked_in("the reader of the source's change stream", failed)),
        None => {
            tracing::warn!(subscription = %sub.name, "stopping: the source did not end the stream within {}s; its connection is dropped", STOP_GRACE.as_secs());
            Ok(Ok(()))
        }
    };
    applied?;
    read??;
    Ok(())
}

/// Why the slot's state forbids going on, if it does.
fn slot_refusal(
    spec: &PipelineSpec,
    progress: Option<Lsn>,
    slot: &SlotState,
    tables: &TableStates,
) -> Option<PipelineError> {
    let sub = &spec.subscription;
    let (slot_name, subscription) = (sub.slot.clone(), sub.name.clone());
    match (progress, slot) {
        (_, SlotState::Elsewhere(owner)) => {
            Some(PipelineError::SlotElsewhere { slot: slot_name, owner: owner.clone() })
        }
        (Some(_), SlotState::Missing) => Some(PipelineError::SlotVanished { slot: slot_name, subscription }),
        (Some(_), SlotState::Lost) => Some(PipelineError::SlotInvalidated { slot: slot_name, subscription }),
        (None, SlotState::Usable) if tables.nothing_recorded() => Some(PipelineError::SlotOfAnother {
            slot: slot_name,
            subscription,
            target: spec.target.to_string(),
        }),
        _ => None,
    }
}

/// A pipeline set up and ready to stream.
struct Ready {
    applier: Applier,
    stream: ReplicationStream,
    names: TableNames,
    /// The last source transaction the target holds.
    progress: Lsn,
    /// Where the stream starts (before `progress` while an added table
    /// catches up).
    start: Lsn,
    floors: Floors,
}

/// The copy of tables added to the subscription, running while the others
/// stream. It outlives a restart of the pipeline within its run (a replay,
/// a lost connection): started over, it would lose what it copied, and a
/// large copy under frequent restarts (dead letters) would never finish.
#[derive(Default)]
struct CopyInFlight {
    task: JoinSet<Result<Copied, PipelineError>>,
    /// The source tables it copies.
    tables: Vec<QualifiedName>,
    /// How far back the source keeps its WAL for it (see [`Floor::Copying`]).
    hold: Lsn,
}

impl CopyInFlight {
    /// Whether it copies exactly `tables`, the ones the target has no copy
    /// of: otherwise it finished (recorded, or failed) and what is left
    /// of it goes.
    fn copies(&mut self, tables: &[&QualifiedName]) -> bool {
        let same = !self.task.is_empty()
            && tables.len() == self.tables.len()
            && tables.iter().all(|table| self.tables.contains(table));
        if !same {
            // Dropped, the tasks are aborted.
            self.task = JoinSet::new();
        }
        same
    }
}

/// Connects to both databases, resolves the routes, creates the slot and
/// copies the tables when the subscription is new, and starts the stream.
async fn set_up(
    spec: &PipelineSpec,
    metrics: &PipelineMetrics,
    copy: &mut CopyInFlight,
) -> Result<Ready, PipelineError> {
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
    let names = if sub.publication_managed {
        let configured: Vec<&QualifiedName> = sub.tables.iter().map(|t| &t.from).collect();
        TableNames::new(&sub.name, catalog::table_oids(&source_sql, &configured).await?)
    } else {
        TableNames::default()
    };
    let routes_read_at = catalog::wal_position(&source_sql).await?;
    let monitor = tls::connect_sql(&spec.target).await.map_err(PipelineError::ConnectTarget)?;
    let mut applier = Applier::new(target, monitor, sub, spec.source.clone(), routes, routes_read_at).await?;
    let progress = applier.progress().await?;
    if let Some(progress) = progress {
        applier.make_progress_durable().await?;
        metrics.resumed_at(progress);
    }
    let mut tables = TableStates::load(applier.client(), sub).await?;
    if progress.is_some() && tables.nothing_recorded() {
        // A target written before ferry recorded its tables: the ones it
        // streamed are those the publication holds.
        let published = catalog::published_tables(&source_sql, &sub.publication).await?;
        let streamed: Vec<&QualifiedName> =
            sub.tables.iter().map(|t| &t.from).filter(|t| published.contains(t)).collect();
        tablesync::record_copied(applier.client(), &sub.name, &streamed, None).await?;
        tables = TableStates::load(applier.client(), sub).await?;
    }

    // Before the publication: a source url that reaches another database
    // than before must not leave one made there.
    let slot = catalog::slot_state(&source_sql, &sub.slot).await?;
    if let Some(refusal) = slot_refusal(spec, progress, &slot, &tables) {
        return Err(refusal);
    }
    catalog::ensure_publication(&source_sql, sub, &tables.copied(sub)).await?;
    let mut replication = ReplicationClient::connect(&spec.source).await?;
    let mut floors = Floors::default();
    let (progress, start) = match (progress, slot) {
        (Some(progress), _) => {
            floors = tables.floors(sub);
            let start = floors.lowest(progress);
            join_new_tables(spec, &tables, &mut applier, &mut floors, start, metrics, copy).await?;
            (progress, start)
        }
        (None, state) => {
            // Nothing was ever committed on the target, and the tables were
            // recorded before the slot was made: a slot left over (say, by
            // a crash during the copy) is this target's and holds nothing
            // of value. One still in use (a walsender the source has not let
            // go of yet, or another ferry on it) is refused with 55006 and
            // retried with backoff, not waited on for as long as it is held.
            if state != SlotState::Missing {
                replication.drop_slot(&sub.slot, false).await?;
            }
            metrics.set_state(State::Snapshot);
            let start = initial_sync(spec, &mut replication, &source_sql, &mut applier, metrics).await?;
            (start, start)
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
    Ok(Ready { applier, stream, names, progress, start, floors })
}

/// Says in the log what a table lets through, when it is not everything.
fn log_shape(subscription: &str, route: &TableRoute) {
    let mapping = &route.mapping;
    let missing: Vec<&str> = route.dropped_for_lack_of_target().collect();
    if !missing.is_empty() {
        tracing::warn!(
            %subscription,
            table = %mapping.from,
            "not replicating {}: target table {} has no such columns",
            missing.join(", "),
            mapping.to
        );
    }
    let dropped = mapping.operations.dropped();
    if !dropped.is_empty() {
        tracing::info!(%subscription, table = %mapping.from, "not replicating {}", dropped.join(", "));
    }
    if let Some(filter) = &mapping.filter {
        tracing::info!(%subscription, table = %mapping.from, "only rows where {filter}");
    }
}

/// Tables configured since the target last streamed this subscription:
/// copied in the background under a snapshot of their own while the
/// others stream (see [`tablesync`]), or, without `snapshot`, streamed
/// from now on.
async fn join_new_tables(
    spec: &PipelineSpec,
    tables: &TableStates,
    applier: &mut Applier,
    floors: &mut Floors,
    start: Lsn,
    metrics: &PipelineMetrics,
    copy: &mut CopyInFlight,
) -> Result<(), PipelineError> {
    let sub = &spec.subscription;
    let new = tables.not_copied(sub);
    if copy.copies(&new) {
        tracing::info!(subscription = %sub.name, tables = new.len(), "the copy of tables added to the subscription goes on");
        for table in new {
            applier.take_route(table)?;
            floors.set(table.clone(), Floor::Copying { hold: copy.hold });
        }
        return Ok(());
    }
    if new.is_empty() {
        return Ok(());
    }
    if !sub.snapshot {
        tablesync::record_streamed(applier.client(), sub, &new).await?;
        return Ok(());
    }
    let mut routes = Vec::new();
    for table in &new {
        tracing::info!(subscription = %sub.name, %table, "table added to the subscription: copying it while the others stream");
        routes.push(applier.take_route(table)?);
        floors.set((*table).clone(), Floor::Copying { hold: start });
    }
    let (source, target) = (spec.source.clone(), spec.target.clone());
    copy.task.spawn(tablesync::copy_new_tables(sub.clone(), source, target, routes, metrics.clone()));
    copy.tables = new.into_iter().cloned().collect();
    copy.hold = start;
    Ok(())
}

/// Creates the slot and, when asked, copies the tables under its snapshot;
/// records the slot's consistent point as progress in the same target
/// transaction. Returns where streaming starts.
async fn initial_sync(
    spec: &PipelineSpec,
    replication: &mut ReplicationClient,
    source_sql: &tokio_postgres::Client,
    applier: &mut Applier,
    metrics: &PipelineMetrics,
) -> Result<Lsn, PipelineError> {
    let sub = &spec.subscription;
    let tables: Vec<&QualifiedName> = sub.tables.iter().map(|t| &t.from).collect();
    // The tables are recorded before the slot exists, so that a slot found
    // later without progress is known to be this target's (see `set_up`).
    if sub.snapshot {
        tablesync::mark_copying(applier.client(), &sub.name, &routes_of(applier, &tables)?).await?;
    } else {
        tablesync::record_streamed(applier.client(), sub, &tables).await?;
    }
    let slot = replication.create_slot(&sub.slot, SlotKind::Permanent, sub.snapshot).await?;
    applier.begin_now()?;
    if let Some(snapshot_name) = slot.snapshot_name.as_deref().filter(|_| sub.snapshot) {
        let ends =
            CopyEnds { source: &spec.source, source_sql, target: &spec.target, target_sql: applier.client() };
        // The applier's session carries the subscription's origin, the slot's name.
        let copied = async {
            tablesync::copy(sub, ends, &sub.slot, &routes_of(applier, &tables)?, snapshot_name, metrics)
                .await?;
            tablesync::record_copied(applier.client(), &sub.name, &tables, None).await?;
            Ok::<_, PipelineError>(())
        };
        if let Err(error) = copied.await {
            if !error.is_retryable() {
                drop_unused_slot(replication, &sub.slot).await;
            }
            return Err(error);
        }
    }
    // Flushed before it returns: the stream starts from here and may tell
    // the source of positions past it before any other commit, and a
    // target that lost this one in a crash would make the next start
    // replace the slot, losing what the source wrote in between.
    applier.with_next_commit("SET LOCAL synchronous_commit = on;".into());
    applier.commit(slot.consistent_point, crate::pg::timestamp::now_micros()).await?;
    if sub.snapshot {
        apply::drop_helper_origins(applier.client(), &sub.name, &tablesync::copy_origin_prefix(&sub.slot))
            .await;
    }
    metrics.applied(slot.consistent_point, None);
    tracing::info!(subscription = %sub.name, slot = %sub.slot, at = %slot.consistent_point, "slot created");
    Ok(slot.consistent_point)
}

/// Drops the slot of a first copy that failed for good (the pipeline
/// stops): without progress on the target, the next start replaces it
/// anyway, and kept it would hold the source's WAL until then.
async fn drop_unused_slot(replication: &mut ReplicationClient, slot: &str) {
    match replication.drop_slot(slot, false).await {
        Ok(()) => tracing::info!(%slot, "the first copy failed: slot dropped, the next start makes it anew"),
        Err(error) => {
            tracing::warn!(%slot, "the first copy failed, and its slot could not be dropped: {error}")
        }
    }
}

/// The applier's routes of `tables`.
fn routes_of<'a>(applier: &'a Applier, tables: &[&QualifiedName]) -> Result<Vec<&'a TableRoute>, ApplyError> {
    tables.iter().map(|t| applier.route(t).ok_or_else(|| ApplyError::Unmapped((*t).clone()))).collect()
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
    copying: &mut JoinSet<Result<Copied, PipelineError>>,
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
                Some(copied) = copying.join_next(), if !copying.is_empty() => {
                    let copied = copied.map_err(|failed| panicked_in("the copy of tables added to the subscription", failed))?;
                    state.copied(applier, copied?, durable)?;
                }
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
            let why = "rows sent together failed".to_string();
            Err(PipelineError::ReplayInOrder { until: state.current_commit, why })
        }
        Err(PipelineError::Apply(error))
            if error.may_pass_in_a_new_session() && state.replay.in_order_committed(state.progress) =>
        {
            let why = format!(
                "{error}; statements prepared before the target table changed fail so too, and a new session \
                 prepares them anew"
            );
            Err(PipelineError::ReplayInOrder { until: state.current_commit, why })
        }
        Err(PipelineError::Apply(error)) => Err(applier.explain(error).await.into()),
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
    /// The end LSN of the latest source transaction handled (committed on
    /// the target or not).
    handled: Lsn,
    /// Source transactions applied carefully or in order after a failure.
    replay: Replay,
    metrics: PipelineMetrics,
    /// Changes of the current source transaction applied so far.
    transaction_changes: usize,
    /// The current source transaction is before `progress`: only tables
    /// behind the stream (see `floors`) take its changes.
    replaying: bool,
    /// Tables out of step with `progress`: being copied, or behind.
    floors: Floors,
    /// Tables copied while a source transaction was open, joining the
    /// stream at its end.
    joining: Option<Copied>,
    /// The streamed transaction in progress whose changes arrive early.
    early: Option<Early>,
    /// Committed on the target but maybe not yet flushed there.
    unflushed: Unflushed,
    /// The end LSN of the last source transaction flushed on the target,
    /// which the source hears of as far as the floors allow.
    released: Lsn,
}

/// Commits on the target maybe not yet flushed there, oldest first: the
/// target WAL position that must be flushed before the source hears of it
/// (0/0: nothing to flush; `None`: not read yet), and the source end LSN.
#[derive(Debug, Default)]
struct Unflushed(VecDeque<(Option<Lsn>, Lsn)>);

impl Unflushed {
    fn push(&mut self, target_lsn: Option<Lsn>, end_lsn: Lsn) {
        self.0.push_back((target_lsn, end_lsn));
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the oldest commit waits for a read of the target's WAL
    /// positions: then the source end LSN of the newest, which the read
    /// will cover.
    fn read_needed(&self) -> Option<Lsn> {
        match self.0.front()? {
            (Some(Lsn::ZERO), _) => None,
            _ => self.0.back().map(|&(_, end_lsn)| end_lsn),
        }
    }

    /// Takes the commits that `read` (none: no read) shows flushed, oldest
    /// first, and returns the source end LSN of the newest taken.
    fn take_flushed(&mut self, read: Option<WalRead>) -> Option<Lsn> {
        let flushed = match read {
            Some(read) => {
                for (target_lsn, end_lsn) in self.0.iter_mut() {
                    if target_lsn.is_none() && *end_lsn <= read.asked {
                        *target_lsn = Some(read.inserted);
                    }
                }
                read.flushed
            }
            None => Lsn::ZERO,
        };
        let mut released = None;
        while let Some(&(Some(target_lsn), end_lsn)) = self.0.front() {
            if target_lsn > flushed {
                break;
            }
            released = Some(end_lsn);
            self.0.pop_front();
        }
        released
    }
}

/// The target's WAL positions as a read returned them, and the source end
/// LSN of the last commit that had returned when it was asked.
struct WalRead {
    asked: Lsn,
    inserted: Lsn,
    flushed: Lsn,
}

impl WalRead {
    fn new(asked: Lsn, (inserted, flushed): (Lsn, Lsn)) -> WalRead {
        WalRead { asked, inserted, flushed }
    }
}

/// A streamed transaction in progress (see [`ApplyState::stream_begin`]).
#[derive(Clone, Copy)]
struct Early {
    /// Its changes are applied as they arrive; otherwise they are left
    /// for its commit.
    applying: bool,
}

/// Where a streamed transaction committed.
struct StreamedCommit {
    xid: u32,
    commit_lsn: Lsn,
    end_lsn: Lsn,
    commit_time: i64,
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
    /// The applier starts from `progress`, with `floors` for the tables out
    /// of step with it, and the stream from `start`, as far as every table
    /// is durably on the target; source transactions up to `replay`'s
    /// positions are applied carefully or in order.
    fn new(
        progress: Lsn,
        start: Lsn,
        floors: Floors,
        metrics: &PipelineMetrics,
        replay: Replay,
        forward_origins: bool,
    ) -> ApplyState {
        ApplyState {
            progress,
            batch: None,
            in_source_transaction: false,
            skipping: false,
            current_commit: Lsn::ZERO,
            handled: progress,
            replay,
            from_elsewhere: false,
            forward_origins,
            metrics: metrics.clone(),
            transaction_changes: 0,
            replaying: false,
            floors,
            joining: None,
            early: None,
            unflushed: Unflushed::default(),
            // Not `progress`: floors below it move up as transactions are
            // handled, before they are flushed, and would not cap it.
            released: start,
        }
    }

    async fn handle(
        &mut self,
        applier: &mut Applier,
        event: SourceEvent,
        nothing_waiting: bool,
        durable: &watch::Sender<Lsn>,
    ) -> Result<(), PipelineError> {
        match event {
            SourceEvent::Begin { commit_lsn, commit_time, .. } => {
                self.begin(applier, commit_lsn, commit_time)
            }
            SourceEvent::Origin { name } => self.origin(&name),
            SourceEvent::Change(change) => self.change(applier, change).await?,
            SourceEvent::Commit { end_lsn, commit_time, .. } => {
                self.commit_source(applier, end_lsn, commit_time, nothing_waiting, durable).await?;
            }
            SourceEvent::Message(_) => {}
            SourceEvent::StreamBegin { .. } => self.stream_begin(applier).await?,
            SourceEvent::StreamDiscard { .. } => {
                self.stream_discard(applier).await;
                // A source idle after the abort may send no commit for long.
                self.join_waiting(applier, durable)?;
            }
            SourceEvent::StreamCommit { xid, commit_lsn, end_lsn, commit_time, changes } => {
                let commit = StreamedCommit { xid, commit_lsn, end_lsn, commit_time };
                self.stream_commit(applier, commit, changes, nothing_waiting, durable).await?;
            }
        }
        Ok(())
    }

    fn begin(&mut self, applier: &mut Applier, commit_lsn: Lsn, commit_time: i64) {
        self.in_source_transaction = true;
        self.transaction_changes = 0;
        self.from_elsewhere = false;
        // Its commit lies before the recorded end LSN: applied
        // already, unless a table behind the stream needs it.
        self.replaying = commit_lsn < self.progress;
        self.skipping = commit_lsn < self.floors.lowest(self.progress);
        self.current_commit = commit_lsn;
        let (careful, in_order) = self.replay.modes(commit_lsn);
        applier.begin_source_transaction(commit_lsn, careful, in_order);
        if !self.skipping {
            self.metrics.pending(commit_time);
        }
    }

    fn origin(&mut self, name: &str) {
        // Applied there by a replicator (ferry or PostgreSQL's own):
        // sent on only when the subscription forwards such changes.
        if !self.forward_origins {
            tracing::debug!(subscription = %self.metrics.subscription(), origin = %name, "leaving out a transaction applied by another replicator");
            self.from_elsewhere = true;
        }
    }

    async fn change(&mut self, applier: &mut Applier, mut change: Change) -> Result<(), ApplyError> {
        if self.skipping || self.from_elsewhere {
            return Ok(());
        }
        if let Some(early) = self.early {
            if !early.applying {
                return Ok(());
            }
            fault::point(fault::IN_STREAMED_TRANSACTION);
            return self.early_change(applier, &change).await;
        }
        if !self.floors.is_empty() && !self.floors.keep(&mut change, self.current_commit, self.replaying) {
            return Ok(());
        }
        self.apply(applier, &change).await
    }

    async fn apply(&mut self, applier: &mut Applier, change: &Change) -> Result<(), ApplyError> {
        if self.batch.is_none() {
            applier.begin();
            self.batch = Some(Batch {
                rows: 0,
                started: Instant::now(),
                last_commit: None,
                transactions: 0,
                events: EventCounts::default(),
            });
        }
        applier.apply(change).await?;
        self.transaction_changes += 1;
        if let Some(batch) = self.batch.as_mut() {
            batch.rows += 1;
            count_event(&self.metrics, &mut batch.events, change);
        }
        Ok(())
    }

    async fn commit_source(
        &mut self,
        applier: &mut Applier,
        end_lsn: Lsn,
        commit_time: i64,
        nothing_waiting: bool,
        durable: &watch::Sender<Lsn>,
    ) -> Result<(), PipelineError> {
        self.in_source_transaction = false;
        self.handled = self.handled.max(end_lsn);
        self.floors.passed(end_lsn);
        if !self.skipping {
            self.source_committed(applier, end_lsn, commit_time, nothing_waiting, durable).await?;
        }
        self.join_waiting(applier, durable)?;
        Ok(())
    }

    /// A streamed transaction arrives while still in progress. It is
    /// applied as it arrives, in a target transaction of its own, when
    /// nothing can make its changes conditional on its commit LSN (which
    /// is not known yet): no table out of step with the stream, no replay
    /// after a failure. Otherwise its changes wait for its commit.
    async fn stream_begin(&mut self, applier: &mut Applier) -> Result<(), ApplyError> {
        self.stream_discard(applier).await;
        // What is open so far ends at a source commit: it goes first, and
        // does not wait for however long the stream takes.
        self.commit(applier).await?;
        let applying = self.floors.is_empty() && !self.replay.pending(self.handled);
        if applying {
            applier.begin_source_transaction(Lsn::ZERO, false, false);
            applier.begin_stream();
        }
        self.early = Some(Early { applying });
        self.in_source_transaction = true;
        self.transaction_changes = 0;
        self.skipping = false;
        self.from_elsewhere = false;
        self.replaying = false;
        Ok(())
    }

    /// Applies a change of a transaction still in progress. A change the
    /// target refuses (a constraint, say) does not fail the pipeline here:
    /// the transaction is applied again from its spool at its commit,
    /// where the failure is handled with the commit's position known.
    async fn early_change(&mut self, applier: &mut Applier, change: &Change) -> Result<(), ApplyError> {
        match self.apply(applier, change).await {
            Err(error) if !error.is_retryable() => {
                tracing::debug!(subscription = %self.metrics.subscription(), %error, "applying a transaction in progress failed; applying it at its commit instead");
                self.stream_discard(applier).await;
                self.early = Some(Early { applying: false });
                self.in_source_transaction = true;
                Ok(())
            }
            other => other,
        }
    }

    /// Rolls back what was applied of a transaction in progress, and any
    /// change of a table's description it brought.
    async fn stream_discard(&mut self, applier: &mut Applier) {
        if self.early.take().is_some_and(|early| early.applying) {
            if self.batch.take().is_some() {
                applier.rollback().await;
            }
            applier.end_stream(false);
        }
        self.in_source_transaction = false;
    }

    /// A streamed transaction committed: what was applied of it while it
    /// arrived commits too, when the commit LSN confirms it had to be
    /// applied whole; otherwise it is applied from its spool now, like any
    /// other transaction.
    async fn stream_commit(
        &mut self,
        applier: &mut Applier,
        commit: StreamedCommit,
        mut changes: source::StreamedChanges,
        nothing_waiting: bool,
        durable: &watch::Sender<Lsn>,
    ) -> Result<(), PipelineError> {
        let StreamedCommit { xid, commit_lsn, end_lsn, commit_time } = commit;
        let applied_early = self.early.is_some_and(|early| early.applying)
            && commit_lsn >= self.progress
            && self.replay.modes(commit_lsn) == (false, false);
        if applied_early {
            tracing::info!(subscription = %self.metrics.subscription(), xid, changes = self.transaction_changes, %commit_lsn, "streamed transaction committed; it was applied while it arrived");
            self.early = None;
            applier.end_stream(true);
            self.current_commit = commit_lsn;
            self.metrics.pending(commit_time);
        } else {
            tracing::info!(subscription = %self.metrics.subscription(), xid, %commit_lsn, "streamed transaction committed; applying it from its spool");
            self.stream_discard(applier).await;
            self.begin(applier, commit_lsn, commit_time);
            if let Some(origin) = changes.origin() {
                self.origin(origin);
            }
            while let Some(change) = changes.next_change()? {
                self.change(applier, change).await?;
                fault::point(fault::IN_STREAMED_TRANSACTION);
            }
        }
        self.commit_source(applier, end_lsn, commit_time, nothing_waiting, durable).await
    }

    /// A source transaction ended: it joins the open target transaction,
    /// which commits when full (by rows, or by age: [`GROUP_COMMIT_AGE`],
    /// or [`LIVE_GROUP_COMMIT_AGE`] when the source commit is recent), or
    /// once it is older than the linger when nothing more is waiting. While
    /// more is waiting it stays open: the changes waiting are applied sooner
    /// in it than after a commit.
    async fn source_committed(
        &mut self,
        applier: &mut Applier,
        end_lsn: Lsn,
        commit_time: i64,
        nothing_waiting: bool,
        durable: &watch::Sender<Lsn>,
    ) -> Result<(), ApplyError> {
        let Some(batch) = self.batch.as_mut() else {
            // Nothing of it reached the target (no mapped rows):
            // there is nothing to flush, only commits before it.
            let waiting = !self.unflushed.is_empty();
            self.advance(Some(Lsn::ZERO), end_lsn, commit_time);
            if !waiting {
                self.release_flushed(applier, durable).await?;
            }
            return Ok(());
        };
        batch.last_commit = Some((end_lsn, commit_time));
        if self.transaction_changes > 0 {
            batch.transactions += 1;
        }
        let age = batch.started.elapsed();
        let (max_age, linger) = if source::is_recent(commit_time) {
            (LIVE_GROUP_COMMIT_AGE, Duration::ZERO)
        } else {
            (GROUP_COMMIT_AGE, GROUP_COMMIT_LINGER)
        };
        let full = batch.rows >= GROUP_COMMIT_ROWS || age >= max_age;
        if full || (nothing_waiting && age >= linger) {
            self.commit(applier).await?;
        }
        Ok(())
    }

    /// New tables were copied: they join the stream at the next source
    /// commit boundary.
    fn copied(
        &mut self,
        applier: &mut Applier,
        copied: Copied,
        durable: &watch::Sender<Lsn>,
    ) -> Result<(), CopyBehindStream> {
        if self.in_source_transaction {
            self.joining = Some(copied);
            return Ok(());
        }
        self.join(applier, copied, durable)
    }

    /// Copied tables take the stream's changes from their snapshot on. The
    /// stream skipped their changes while they were copied: if it already
    /// went past the snapshot, it must go back for them. The hold their
    /// copy kept on the source goes with them: what the target flushed
    /// meanwhile is confirmed now, not at the next commit, which an idle
    /// subscription may not see for long (its slot would hold the source's
    /// WAL).
    fn join(
        &mut self,
        applier: &mut Applier,
        copied: Copied,
        durable: &watch::Sender<Lsn>,
    ) -> Result<(), CopyBehindStream> {
        if copied.at < self.handled {
            return Err(CopyBehindStream { at: copied.at, progress: self.handled });
        }
        for route in copied.routes {
            tracing::info!(subscription = %self.metrics.subscription(), table = %route.mapping.from, at = %copied.at, "copied table joins the stream");
            self.floors.set(route.mapping.from.clone(), Floor::From(copied.at));
            applier.add_route(route);
        }
        self.confirm(durable);
        Ok(())
    }

    /// Tables copied while a source transaction was open join the stream
    /// now that it has ended.
    fn join_waiting(
        &mut self,
        applier: &mut Applier,
        durable: &watch::Sender<Lsn>,
    ) -> Result<(), CopyBehindStream> {
        match self.joining.take() {
            Some(copied) => self.join(applier, copied, durable),
            None => Ok(()),
        }
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
                // Replaying for tables behind the stream must not take the
                // progress back.
                let progress = end_lsn.max(self.progress);
                if !self.floors.is_empty() {
                    applier.with_next_commit(self.floors.record_sql(self.metrics.subscription(), progress));
                }
                applier.commit(progress, commit_time).await?;
                self.floors.settle(progress);
                self.metrics.batch_committed(&events, transactions, started.elapsed());
                self.metrics.dead_lettered(applier.take_dead_letters());
                fault::point(fault::AFTER_TARGET_COMMIT);
                // The source hears of it at a flush check.
                self.advance(None, end_lsn, commit_time);
            }
            Some(_) => applier.rollback().await,
            None => {}
        }
        Ok(())
    }

    /// Everything received is on the target, up to `end_lsn`, once the
    /// target has flushed its WAL to `target_lsn` (see `unflushed`).
    fn advance(&mut self, target_lsn: Option<Lsn>, end_lsn: Lsn, commit_time: i64) {
        self.progress = self.progress.max(end_lsn);
        self.metrics.applied(self.progress, Some(commit_time));
        self.unflushed.push(target_lsn, end_lsn);
    }

    /// Tells the source about every commit the target has flushed. The
    /// target's WAL positions are read here, apart from the commits, which
    /// would cost the target a statement per transaction: every commit so
    /// far has returned, so each lies below the insert position read now.
    async fn release_flushed(
        &mut self,
        applier: &mut Applier,
        durable: &watch::Sender<Lsn>,
    ) -> Result<(), ApplyError> {
        let read = match self.unflushed.read_needed() {
            Some(asked) => Some(WalRead::new(asked, applier.wal_positions().await?)),
            None => None,
        };
        if let Some(end_lsn) = self.unflushed.take_flushed(read) {
            self.released = end_lsn;
            self.confirm(durable);
        }
        Ok(())
    }

    /// Tells the source how far it may forget: what the target flushed, as
    /// far as the floors allow.
    fn confirm(&self, durable: &watch::Sender<Lsn>) {
        durable.send_replace(self.floors.cap(self.released));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(n: u64) -> Lsn {
        Lsn(n)
    }

    #[test]
    fn a_target_failure_counts_as_the_targets_even_inside_a_batch() {
        let missing =
            || ApplyError::MissingRow { table: "public.t".parse().unwrap(), key: "(id)=(1)".into() };
        let batched =
            |source| PipelineError::Apply(ApplyError::Batched { rows: 2, source: Box::new(source) });
        assert_eq!(PipelineError::Apply(missing()).kind(), ErrorKind::Target);
        assert_eq!(batched(missing()).kind(), ErrorKind::Target);
        assert_eq!(PipelineError::Route(LoadError::Target(missing())).kind(), ErrorKind::Target);
        let missing_table = || ApplyError::MissingTable { table: "public.t".parse().unwrap() };
        assert_eq!(PipelineError::Apply(missing_table()).kind(), ErrorKind::Config);
        assert_eq!(PipelineError::Route(LoadError::Target(missing_table())).kind(), ErrorKind::Config);
    }

    /// A panic in the reader's or a copy's task is a bug, counted as such
    /// and not retried, as one in the pipeline's own run.
    #[tokio::test]
    async fn a_task_of_the_pipeline_that_panicked_is_an_internal_error() {
        let failed = tokio::spawn(async { panic!("decoder bug") }).await.unwrap_err();
        let error = panicked_in("the reader of the source's change stream", failed);
        assert_eq!(error.kind(), ErrorKind::Internal);
        assert!(!error.is_retryable());
        assert!(
            error.to_string().contains("the reader of the source's change stream")
                && error.to_string().contains("decoder bug"),
            "{error}"
        );
    }

    #[test]
    fn a_streamed_transaction_that_cannot_be_spooled_is_retried() {
        let full = std::io::Error::from_raw_os_error(28);
        let error = PipelineError::Source(SourceError::Spool(full));
        assert!(error.is_retryable(), "{error}");
        assert_eq!(error.kind(), ErrorKind::Source);
    }

    #[test]
    fn a_change_failing_in_the_in_order_replay_is_not_given_another_session() {
        let mut replay = Replay::default();
        assert!(replay.in_order_committed(lsn(5)));
        replay.in_order_until = Some(lsn(20));
        // Noticed at any later source commit: what the target holds tells.
        assert!(!replay.in_order_committed(lsn(19)));
        // The end of the transaction before, whose commit record ends
        // where the replayed one's starts.
        assert!(!replay.in_order_committed(lsn(20)));
        assert!(replay.in_order_committed(lsn(21)));
    }

    #[test]
    fn what_is_confirmed_before_the_first_flush_stays_below_every_floor() {
        // A restart with table b behind the stream and table d being copied.
        let (b, d) = (QualifiedName::new("public", "b"), QualifiedName::new("public", "d"));
        let mut floors = Floors::default();
        floors.set(b.clone(), Floor::From(lsn(10)));
        floors.set(d.clone(), Floor::Copying { hold: lsn(10) });
        let start = floors.lowest(lsn(50));
        let metrics = PipelineMetrics::detached(&crate::metrics::tests::subscription("a"));
        let mut state = ApplyState::new(lsn(50), start, floors, &metrics, Replay::default(), false);
        // b's changes up to 40 are applied, not yet flushed; d joins the stream.
        state.floors.passed(lsn(40));
        state.floors.set(d, Floor::From(lsn(45)));
        let (durable, _) = watch::channel(start);
        state.confirm(&durable);
        assert_eq!(*durable.borrow(), lsn(10));
    }

    #[test]
    fn commits_with_nothing_to_flush_go_without_a_read() {
        let mut unflushed = Unflushed::default();
        unflushed.push(Some(Lsn::ZERO), lsn(10));
        unflushed.push(None, lsn(20));
        assert_eq!(unflushed.read_needed(), None);
        assert_eq!(unflushed.take_flushed(None), Some(lsn(10)));
        assert_eq!(unflushed.read_needed(), Some(lsn(20)));
        assert_eq!(unflushed.take_flushed(None), None, "a commit that wrote waits for a read");
    }

    #[test]
    fn a_commit_goes_once_the_target_flushed_past_where_it_was_read() {
        let mut unflushed = Unflushed::default();
        unflushed.push(None, lsn(10));
        let asked = unflushed.read_needed().unwrap();
        let read = WalRead::new(asked, (lsn(500), lsn(400)));
        assert_eq!(unflushed.take_flushed(Some(read)), None, "inserted up to 500, flushed only 400");
        unflushed.push(None, lsn(20));
        let read = WalRead::new(unflushed.read_needed().unwrap(), (lsn(900), lsn(500)));
        assert_eq!(unflushed.take_flushed(Some(read)), Some(lsn(10)));
        assert!(!unflushed.is_empty(), "the second commit lies below 900, not yet flushed");
    }

    #[test]
    fn a_commit_that_returned_after_the_read_was_asked_waits_for_the_next() {
        let mut unflushed = Unflushed::default();
        unflushed.push(None, lsn(10));
        let asked = unflushed.read_needed().unwrap();
        // The second commit returns while the read is on its way: the
        // positions read may come from before it.
        unflushed.push(None, lsn(20));
        let read = WalRead::new(asked, (lsn(500), lsn(500)));
        assert_eq!(unflushed.take_flushed(Some(read)), Some(lsn(10)));
        assert_eq!(unflushed.read_needed(), Some(lsn(20)));
        let read = WalRead::new(lsn(20), (lsn(600), lsn(600)));
        assert_eq!(unflushed.take_flushed(Some(read)), Some(lsn(20)));
        assert!(unflushed.is_empty());
    }
}
