//! What an operator sees of a running daemon: Prometheus metrics and each
//! pipeline's status, both fed through a [`PipelineMetrics`] handle.
//!
//! Every series is labelled by `subscription`; `table` labels only ever name
//! a subscription's configured source tables, and `op` and `kind` come from
//! fixed lists, so the number of series is bounded by the config.
//!
//! The pipeline's hot path (one call per row or per batch) touches only
//! atomics: the label lookups are done once, when a pipeline registers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntGauge, Opts, Registry};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::Subscription;
use crate::pg::conninfo::ConnInfo;
use crate::pg::names::QualifiedName;
use crate::pg::{Lsn, timestamp, tls};
use crate::source::catalog::current_wal_lsn;
use crate::teardown::ForgottenSlot;

/// Every metric family ferry exports besides the process collector's, with
/// its help text. `Metrics::new` registers exactly these (a test checks).
pub const METRICS: &[(&str, &str)] = &[
    ("ferry_replication_lag_bytes", "Source WAL position minus the slot's confirmed flush position."),
    (
        "ferry_replication_lag_seconds",
        "Now minus the source commit time of the oldest change read but not yet applied; 0 when caught up.",
    ),
    (
        "ferry_source_slot_retained_wal_bytes",
        "Source WAL position minus the slot's restart_lsn: WAL the slot keeps.",
    ),
    ("ferry_events_total", "Row changes committed on the target, by source table and operation."),
    ("ferry_transactions_applied_total", "Source transactions with changes committed on the target."),
    ("ferry_apply_batch_duration_seconds", "Time from a target transaction's first change to its commit."),
    ("ferry_apply_batch_rows", "Row changes per target transaction."),
    ("ferry_errors_total", "Pipeline attempts that ended in an error, by kind."),
    (
        "ferry_dead_letters_total",
        "Changes the target refused for good, kept in ferry.dead_letters (on_error = dead_letter).",
    ),
    ("ferry_pipeline_up", "1 while the pipeline is streaming, 0 otherwise."),
    ("ferry_pipeline_copying", "1 while the pipeline makes its initial copy, 0 otherwise."),
    ("ferry_snapshot_rows_copied", "Rows copied so far by the initial copy of a table."),
    ("ferry_snapshot_rows_estimated", "Rows the initial copy of a table expects (pg_class.reltuples)."),
    (
        "ferry_forgotten_slot_retained_wal_bytes",
        "WAL kept on a source by a slot named like ferry's that no configured subscription uses, until ferry drop.",
    ),
    (
        "ferry_config_last_reload_successful",
        "0 when the last SIGHUP found a config that did not load (the running one is kept), else 1.",
    ),
];

/// The families of [`prometheus::process_collector::ProcessCollector`].
pub const PROCESS_METRICS: &[&str] = &[
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_threads",
];

/// Operations counted in `ferry_events_total{op}`.
pub const OPS: [&str; 4] = ["insert", "update", "delete", "truncate"];

/// Row change operations, as indexes into [`OPS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Insert = 0,
    Update = 1,
    Delete = 2,
    Truncate = 3,
}

/// What went wrong, as `ferry_errors_total{kind}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Connecting to, reading from or querying the source.
    Source,
    /// Connecting to or writing to the target.
    Target,
    /// The initial copy.
    Snapshot,
    /// The config and the databases disagree: a missing table, key,
    /// publication, or `wal_level`. Needs a person.
    Config,
    /// The slot vanished or was invalidated. Needs a person.
    Slot,
    /// A bug in ferry (a panic). Needs a person, and a report.
    Internal,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Source,
        ErrorKind::Target,
        ErrorKind::Snapshot,
        ErrorKind::Config,
        ErrorKind::Slot,
        ErrorKind::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Source => "source",
            ErrorKind::Target => "target",
            ErrorKind::Snapshot => "snapshot",
            ErrorKind::Config => "config",
            ErrorKind::Slot => "slot",
            ErrorKind::Internal => "internal",
        }
    }
}

/// Where a pipeline is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Connecting and checking, the first time.
    Starting,
    /// Copying the tables' existing rows.
    Snapshot,
    /// Reading the slot and applying changes.
    Streaming,
    /// An attempt failed; waiting to try again (see the error).
    Retrying,
    /// Stopped: asked to, or by an error that retrying cannot fix.
    Stopped,
}

impl State {
    const ALL: [State; 5] =
        [State::Starting, State::Snapshot, State::Streaming, State::Retrying, State::Stopped];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Snapshot => "snapshot",
            State::Streaming => "streaming",
            State::Retrying => "retrying",
            State::Stopped => "stopped",
        }
    }
}

/// The daemon's registry and the pipelines registered in it. Cloning is
/// cheap; all clones share the same state.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<MetricsInner>,
}

struct MetricsInner {
    registry: Registry,
    families: Families,
    pipelines: Mutex<Vec<PipelineMetrics>>,
    ready: AtomicBool,
}

struct Families {
    lag_bytes: prometheus::IntGaugeVec,
    lag_seconds: prometheus::GaugeVec,
    retained_wal_bytes: prometheus::IntGaugeVec,
    events: prometheus::IntCounterVec,
    transactions: prometheus::IntCounterVec,
    batch_duration: prometheus::HistogramVec,
    batch_rows: prometheus::HistogramVec,
    errors: prometheus::IntCounterVec,
    dead_letters: prometheus::IntCounterVec,
    up: prometheus::IntGaugeVec,
    copying: prometheus::IntGaugeVec,
    snapshot_copied: prometheus::IntGaugeVec,
    snapshot_estimated: prometheus::IntGaugeVec,
    reload_successful: IntGauge,
    forgotten_slot_retained: prometheus::IntGaugeVec,
}

fn help(name: &str) -> &'static str {
    METRICS.iter().find(|(n, _)| *n == name).map_or("", |(_, h)| h)
}

fn opts(name: &str) -> Opts {
    Opts::new(name, help(name))
}

impl Families {
    fn new(registry: &Registry) -> prometheus::Result<Families> {
        use prometheus::{GaugeVec, HistogramVec, IntCounterVec, IntGaugeVec};
        let sub = &["subscription"];
        let families = Families {
            lag_bytes: IntGaugeVec::new(opts("ferry_replication_lag_bytes"), sub)?,
            lag_seconds: GaugeVec::new(opts("ferry_replication_lag_seconds"), sub)?,
            retained_wal_bytes: IntGaugeVec::new(opts("ferry_source_slot_retained_wal_bytes"), sub)?,
            events: IntCounterVec::new(opts("ferry_events_total"), &["subscription", "table", "op"])?,
            transactions: IntCounterVec::new(opts("ferry_transactions_applied_total"), sub)?,
            batch_duration: HistogramVec::new(
                HistogramOpts::new(
                    "ferry_apply_batch_duration_seconds",
                    help("ferry_apply_batch_duration_seconds"),
                )
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                sub,
            )?,
            batch_rows: HistogramVec::new(
                HistogramOpts::new("ferry_apply_batch_rows", help("ferry_apply_batch_rows"))
                    .buckets(prometheus::exponential_buckets(1.0, 4.0, 9)?),
                sub,
            )?,
            errors: IntCounterVec::new(opts("ferry_errors_total"), &["subscription", "kind"])?,
            dead_letters: IntCounterVec::new(opts("ferry_dead_letters_total"), sub)?,
            up: IntGaugeVec::new(opts("ferry_pipeline_up"), sub)?,
            copying: IntGaugeVec::new(opts("ferry_pipeline_copying"), sub)?,
            snapshot_copied: IntGaugeVec::new(
                opts("ferry_snapshot_rows_copied"),
                &["subscription", "table"],
            )?,
            snapshot_estimated: IntGaugeVec::new(
                opts("ferry_snapshot_rows_estimated"),
                &["subscription", "table"],
            )?,
            reload_successful: IntGauge::with_opts(opts("ferry_config_last_reload_successful"))?,
            forgotten_slot_retained: IntGaugeVec::new(
                opts("ferry_forgotten_slot_retained_wal_bytes"),
                &["source", "slot"],
            )?,
        };
        families.reload_successful.set(1);
        registry.register(Box::new(families.lag_bytes.clone()))?;
        registry.register(Box::new(families.lag_seconds.clone()))?;
        registry.register(Box::new(families.retained_wal_bytes.clone()))?;
        registry.register(Box::new(families.events.clone()))?;
        registry.register(Box::new(families.transactions.clone()))?;
        registry.register(Box::new(families.batch_duration.clone()))?;
        registry.register(Box::new(families.batch_rows.clone()))?;
        registry.register(Box::new(families.errors.clone()))?;
        registry.register(Box::new(families.dead_letters.clone()))?;
        registry.register(Box::new(families.up.clone()))?;
        registry.register(Box::new(families.copying.clone()))?;
        registry.register(Box::new(families.snapshot_copied.clone()))?;
        registry.register(Box::new(families.snapshot_estimated.clone()))?;
        registry.register(Box::new(families.reload_successful.clone()))?;
        registry.register(Box::new(families.forgotten_slot_retained.clone()))?;
        Ok(families)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let families = Families::new(&registry).expect("ferry's metric definitions are valid and distinct");
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("the process collector registers once");
        Metrics {
            inner: Arc::new(MetricsInner {
                registry,
                families,
                pipelines: Mutex::new(Vec::new()),
                ready: AtomicBool::new(false),
            }),
        }
    }

    /// Registers a subscription's pipeline: every series it will ever have
    /// is created now (at zero), so dashboards and alerts see it from the
    /// start.
    pub fn pipeline(&self, subscription: &Subscription) -> PipelineMetrics {
        let f = &self.inner.families;
        let name = subscription.name.as_str();
        let tables = subscription
            .tables
            .iter()
            .map(|mapping| {
                let label = table_label(&mapping.from);
                TableMetrics {
                    name: mapping.from.clone(),
                    events: OPS.map(|op| f.events.with_label_values(&[name, &label, op])),
                    copied: f.snapshot_copied.with_label_values(&[name, &label]),
                    estimated: f.snapshot_estimated.with_label_values(&[name, &label]),
                    label,
                }
            })
            .collect();
        let pipeline = PipelineMetrics {
            inner: Arc::new(PipelineInner {
                subscription: name.to_string(),
                source: subscription.source.clone(),
                target: subscription.target.clone(),
                up: f.up.with_label_values(&[name]),
                copying: f.copying.with_label_values(&[name]),
                lag_bytes: f.lag_bytes.with_label_values(&[name]),
                lag_seconds: f.lag_seconds.with_label_values(&[name]),
                retained_wal_bytes: f.retained_wal_bytes.with_label_values(&[name]),
                transactions: f.transactions.with_label_values(&[name]),
                batch_duration: f.batch_duration.with_label_values(&[name]),
                batch_rows: f.batch_rows.with_label_values(&[name]),
                errors: ErrorKind::ALL.map(|kind| f.errors.with_label_values(&[name, kind.as_str()])),
                dead_letters: f.dead_letters.with_label_values(&[name]),
                tables,
                state: AtomicU8::new(State::Starting as u8),
                last_end_lsn: AtomicU64::new(0),
                last_commit_time: AtomicI64::new(NONE),
                pending_since: AtomicI64::new(NONE),
                slot_lag_bytes: AtomicI64::new(NONE),
                slot_retained_bytes: AtomicI64::new(NONE),
                error: Mutex::new(None),
            }),
        };
        let mut pipelines = self.inner.pipelines.lock().expect("not poisoned");
        // A pipeline restarted with a new configuration replaces its old
        // self; the series of tables it no longer has end.
        for old in pipelines.iter().filter(|p| p.subscription() == name) {
            if old.inner.source == pipeline.inner.source && old.inner.target == pipeline.inner.target {
                pipeline.inner.resume_from(&old.inner);
            }
            for table in
                old.inner.tables.iter().filter(|t| !subscription.tables.iter().any(|m| m.from == t.name))
            {
                self.remove_table_series(name, &table.label);
            }
        }
        pipelines.retain(|p| p.subscription() != name);
        pipelines.push(pipeline.clone());
        pipeline
    }

    fn remove_table_series(&self, subscription: &str, table: &str) {
        let f = &self.inner.families;
        for op in OPS {
            let _ = f.events.remove_label_values(&[subscription, table, op]);
        }
        for family in [&f.snapshot_copied, &f.snapshot_estimated] {
            let _ = family.remove_label_values(&[subscription, table]);
        }
    }

    /// Drops a subscription no longer configured: its series end, so that
    /// alerts about it do not fire for ever.
    pub fn forget(&self, subscription: &Subscription) {
        let f = &self.inner.families;
        let name = subscription.name.as_str();
        self.inner.pipelines.lock().expect("not poisoned").retain(|p| p.subscription() != name);
        for family in [&f.lag_bytes, &f.retained_wal_bytes, &f.up, &f.copying] {
            let _ = family.remove_label_values(&[name]);
        }
        let _ = f.lag_seconds.remove_label_values(&[name]);
        for family in [&f.transactions, &f.dead_letters] {
            let _ = family.remove_label_values(&[name]);
        }
        for family in [&f.batch_duration, &f.batch_rows] {
            let _ = family.remove_label_values(&[name]);
        }
        for kind in ErrorKind::ALL {
            let _ = f.errors.remove_label_values(&[name, kind.as_str()]);
        }
        for mapping in &subscription.tables {
            self.remove_table_series(name, &table_label(&mapping.from));
        }
    }

    /// The pipelines registered so far, in order.
    pub fn pipelines(&self) -> Vec<PipelineMetrics> {
        self.inner.pipelines.lock().expect("not poisoned").clone()
    }

    /// Whether the config is loaded and every pipeline started (`/readyz`).
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
    }

    /// The forgotten slots (see [`ForgottenSlot`]) now:
    /// series of slots no longer among them end.
    pub fn forgotten_slots<'a>(&self, slots: impl Iterator<Item = &'a ForgottenSlot>) {
        let family = &self.inner.families.forgotten_slot_retained;
        family.reset();
        for slot in slots {
            family.with_label_values(&[&slot.source, &slot.slot]).set(slot.retained_bytes);
        }
    }

    /// Whether the config a SIGHUP read loaded.
    pub fn reloaded(&self, loaded: bool) {
        self.inner.families.reload_successful.set(i64::from(loaded));
    }

    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Relaxed);
    }

    /// Everything in the Prometheus text format, lag brought up to now.
    pub fn render(&self) -> String {
        let now = timestamp::now_micros();
        for pipeline in self.pipelines() {
            pipeline.inner.lag_seconds.set(pipeline.lag_seconds_at(now));
        }
        prometheus::TextEncoder::new()
            .encode_to_string(&self.inner.registry.gather())
            .unwrap_or_else(|error| format!("# cannot encode the metrics: {error}\n"))
    }

    /// Every pipeline's status, for `/status`.
    pub fn status(&self) -> StatusReport {
        let now = timestamp::now_micros();
        StatusReport { pipelines: self.pipelines().iter().map(|p| p.status_at(now)).collect() }
    }
}

/// A table as its label shows it: `schema.name`, unquoted.
pub fn table_label(name: &QualifiedName) -> String {
    format!("{}.{}", name.schema, name.name)
}

/// "Not known" in the atomics that hold optional values.
const NONE: i64 = i64::MIN;

/// One pipeline's metrics and status. Cloning is cheap; every call is a few
/// atomic operations, except recording an error (a mutex, once per failed
/// attempt).
#[derive(Clone)]
pub struct PipelineMetrics {
    inner: Arc<PipelineInner>,
}

struct PipelineInner {
    subscription: String,
    source: String,
    target: String,
    up: IntGauge,
    copying: IntGauge,
    lag_bytes: IntGauge,
    lag_seconds: Gauge,
    retained_wal_bytes: IntGauge,
    transactions: IntCounter,
    batch_duration: Histogram,
    batch_rows: Histogram,
    errors: [IntCounter; ErrorKind::ALL.len()],
    dead_letters: IntCounter,
    tables: Vec<TableMetrics>,
    state: AtomicU8,
    last_end_lsn: AtomicU64,
    /// Source commit time (µs since 2000) of the last transaction applied.
    last_commit_time: AtomicI64,
    /// Source commit time of the oldest transaction read but not applied.
    pending_since: AtomicI64,
    slot_lag_bytes: AtomicI64,
    slot_retained_bytes: AtomicI64,
    error: Mutex<Option<String>>,
}

impl PipelineInner {
    /// Takes over where the same pipeline stood before a restart (a
    /// reload): its progress, the slot's last measure, and the commit time
    /// of the oldest change it had read and not applied, which it reads
    /// again, so that the lag goes on growing rather than dropping to 0
    /// while the target is still away.
    fn resume_from(&self, old: &PipelineInner) {
        self.last_end_lsn.store(old.last_end_lsn.load(Ordering::Relaxed), Ordering::Relaxed);
        for (new, old) in [
            (&self.last_commit_time, &old.last_commit_time),
            (&self.pending_since, &old.pending_since),
            (&self.slot_lag_bytes, &old.slot_lag_bytes),
            (&self.slot_retained_bytes, &old.slot_retained_bytes),
        ] {
            new.store(old.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

struct TableMetrics {
    name: QualifiedName,
    label: String,
    events: [IntCounter; OPS.len()],
    copied: IntGauge,
    estimated: IntGauge,
}

/// Row changes of one target transaction, counted until it commits, by
/// table index and [`Op`].
#[derive(Debug, Default, Clone)]
pub struct EventCounts(Vec<u64>);

impl EventCounts {
    pub fn add(&mut self, table: usize, op: Op) {
        let i = table * OPS.len() + op as usize;
        if self.0.len() <= i {
            self.0.resize(i + 1, 0);
        }
        self.0[i] += 1;
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

impl PipelineMetrics {
    /// A pipeline registered nowhere, for code run without a daemon.
    pub fn detached(subscription: &Subscription) -> PipelineMetrics {
        Metrics::new().pipeline(subscription)
    }

    pub fn subscription(&self) -> &str {
        &self.inner.subscription
    }

    pub fn state(&self) -> State {
        let raw = self.inner.state.load(Ordering::Relaxed);
        State::ALL.into_iter().find(|s| *s as u8 == raw).unwrap_or(State::Stopped)
    }

    /// Moves to `state`; `ferry_pipeline_up` is 1 only while streaming,
    /// `ferry_pipeline_copying` only during the initial copy (which the
    /// alert on a pipeline not streaming leaves alone), and reaching
    /// streaming clears the last error.
    pub fn set_state(&self, state: State) {
        self.inner.state.store(state as u8, Ordering::Relaxed);
        self.inner.up.set(i64::from(state == State::Streaming));
        self.inner.copying.set(i64::from(state == State::Snapshot));
        if state == State::Streaming {
            *self.inner.error.lock().expect("not poisoned") = None;
        }
    }

    /// Counts a failed attempt and keeps its message for `/status`. The
    /// message must already be free of passwords (ferry's errors show
    /// connection strings redacted).
    pub fn error(&self, kind: ErrorKind, message: String) {
        self.inner.errors[kind as usize].inc();
        *self.inner.error.lock().expect("not poisoned") = Some(message);
    }

    /// The index of a configured source table, for [`EventCounts`] and the
    /// snapshot gauges.
    pub fn table_index(&self, schema: &str, name: &str) -> Option<usize> {
        self.inner.tables.iter().position(|t| t.name.schema == schema && t.name.name == name)
    }

    /// A source transaction committed at `commit_time` has been read and
    /// is not applied yet.
    pub fn pending(&self, commit_time: i64) {
        let _ = self.inner.pending_since.compare_exchange(
            NONE,
            commit_time,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Everything read so far is applied, up to `end_lsn`.
    pub fn applied(&self, end_lsn: Lsn, commit_time: Option<i64>) {
        self.inner.last_end_lsn.store(end_lsn.0, Ordering::Relaxed);
        if let Some(time) = commit_time {
            self.inner.last_commit_time.store(time, Ordering::Relaxed);
        }
        self.inner.pending_since.store(NONE, Ordering::Relaxed);
    }

    /// Where the target's recorded progress says the pipeline is, when it
    /// (re)starts.
    pub fn resumed_at(&self, end_lsn: Lsn) {
        self.inner.last_end_lsn.store(end_lsn.0, Ordering::Relaxed);
    }

    /// A target transaction committed.
    pub fn batch_committed(&self, events: &EventCounts, transactions: u64, duration: Duration) {
        for (i, &count) in events.0.iter().enumerate() {
            if count > 0
                && let Some(table) = self.inner.tables.get(i / OPS.len())
            {
                table.events[i % OPS.len()].inc_by(count);
            }
        }
        self.inner.transactions.inc_by(transactions);
        self.inner.batch_rows.observe(events.total() as f64);
        self.inner.batch_duration.observe(duration.as_secs_f64());
    }

    /// `count` refused changes were committed to ferry.dead_letters.
    pub fn dead_lettered(&self, count: u64) {
        self.inner.dead_letters.inc_by(count);
    }

    /// The initial copy of table `index` expects about `rows` rows.
    pub fn snapshot_estimate(&self, index: usize, rows: i64) {
        if let Some(table) = self.inner.tables.get(index) {
            table.estimated.set(rows.max(0));
            table.copied.set(0);
        }
    }

    /// The initial copy of table `index` has copied `rows` rows so far.
    pub fn snapshot_copied(&self, index: usize, rows: u64) {
        if let Some(table) = self.inner.tables.get(index) {
            table.copied.set(rows as i64);
        }
    }

    /// What the source says about the slot, in bytes behind its WAL.
    pub fn slot_positions(&self, lag_bytes: i64, retained_bytes: i64) {
        self.inner.lag_bytes.set(lag_bytes);
        self.inner.retained_wal_bytes.set(retained_bytes);
        self.inner.slot_lag_bytes.store(lag_bytes, Ordering::Relaxed);
        self.inner.slot_retained_bytes.store(retained_bytes, Ordering::Relaxed);
    }

    /// Seconds between now and the commit of the oldest change not applied.
    fn lag_seconds_at(&self, now: i64) -> f64 {
        match self.inner.pending_since.load(Ordering::Relaxed) {
            NONE => 0.0,
            since => now.saturating_sub(since).max(0) as f64 / 1e6,
        }
    }

    pub fn lag_seconds(&self) -> f64 {
        self.lag_seconds_at(timestamp::now_micros())
    }

    /// Transactions and row changes applied since the start.
    pub fn totals(&self) -> (u64, u64) {
        let rows = self.inner.tables.iter().flat_map(|t| t.events.iter()).map(IntCounter::get).sum();
        (self.inner.transactions.get(), rows)
    }

    /// Rows copied and rows expected by the initial copy, over all tables.
    pub fn snapshot_totals(&self) -> (i64, i64) {
        let tables = &self.inner.tables;
        (tables.iter().map(|t| t.copied.get()).sum(), tables.iter().map(|t| t.estimated.get()).sum())
    }

    fn status_at(&self, now: i64) -> PipelineStatus {
        let inner = &self.inner;
        let known = |value: i64| (value != NONE).then_some(value);
        let lsn = inner.last_end_lsn.load(Ordering::Relaxed);
        let state = self.state();
        PipelineStatus {
            subscription: inner.subscription.clone(),
            source: inner.source.clone(),
            target: inner.target.clone(),
            state,
            last_applied_lsn: (lsn != 0).then(|| Lsn(lsn).to_string()),
            last_commit_time: known(inner.last_commit_time.load(Ordering::Relaxed))
                .map(timestamp::to_rfc3339),
            lag_seconds: self.lag_seconds_at(now),
            lag_bytes: known(inner.slot_lag_bytes.load(Ordering::Relaxed)),
            retained_wal_bytes: known(inner.slot_retained_bytes.load(Ordering::Relaxed)),
            snapshot: (state == State::Snapshot).then(|| {
                inner
                    .tables
                    .iter()
                    .map(|t| SnapshotTable {
                        table: t.label.clone(),
                        rows_copied: t.copied.get(),
                        rows_estimated: t.estimated.get(),
                    })
                    .collect()
            }),
            error: inner.error.lock().expect("not poisoned").clone(),
        }
    }
}

/// `/status`: every pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub pipelines: Vec<PipelineStatus>,
}

/// One pipeline in `/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineStatus {
    pub subscription: String,
    pub source: String,
    pub target: String,
    pub state: State,
    /// End LSN of the last source transaction applied (or recorded as
    /// applied when the pipeline started).
    pub last_applied_lsn: Option<String>,
    /// Source commit time of the last transaction applied since the start.
    pub last_commit_time: Option<String>,
    pub lag_seconds: f64,
    /// Source WAL minus the slot's confirmed flush, as last measured.
    pub lag_bytes: Option<i64>,
    pub retained_wal_bytes: Option<i64>,
    /// Per table progress, while the initial copy runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Vec<SnapshotTable>>,
    /// The error of the last failed attempt, until streaming again.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotTable {
    pub table: String,
    pub rows_copied: i64,
    pub rows_estimated: i64,
}

/// How often the slot's distance from the source's WAL is measured.
pub const SLOT_POLL_INTERVAL: Duration = Duration::from_secs(10);

/// The slot measurement (`$1` is the slot name); public so that the
/// least-privilege tests can run it as an unprivileged role.
pub const SLOT_QUERY: &str = concat!(
    "SELECT pg_wal_lsn_diff(w.lsn, s.confirmed_flush_lsn)::bigint, pg_wal_lsn_diff(w.lsn, s.restart_lsn)::bigint
     FROM pg_replication_slots s, (SELECT ",
    current_wal_lsn!(),
    " AS lsn) w
     WHERE s.slot_name = $1 AND s.database = current_database()"
);

/// Measures, every [`SLOT_POLL_INTERVAL`] until `cancel`, how far the slot
/// is behind the source's WAL, over an ordinary SQL connection kept open
/// between measurements (and opened again when it breaks). A source that
/// cannot be reached leaves the last values; the pipeline reports the error.
pub async fn watch_slot(source: ConnInfo, slot: String, metrics: PipelineMetrics, cancel: CancellationToken) {
    let mut ticker = tokio::time::interval(SLOT_POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client: Option<tokio_postgres::Client> = None;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        // A source that does not answer must not hold up stopping.
        let measured = tokio::select! {
            _ = cancel.cancelled() => return,
            measured = tokio::time::timeout(SLOT_POLL_INTERVAL, measure_slot(&mut client, &source, &slot)) => measured,
        };
        let error = match measured {
            Ok(Ok(Some((lag, retained)))) => {
                metrics.slot_positions(lag, retained);
                None
            }
            Ok(Ok(None)) => {
                metrics.slot_positions(0, 0); // no slot yet
                None
            }
            Ok(Err(error)) => Some(error),
            Err(_) => Some("timed out".to_string()),
        };
        if let Some(error) = &error {
            client = None;
            if !failing {
                tracing::debug!(subscription = %metrics.subscription(), "cannot measure the slot: {error}");
            }
        }
        failing = error.is_some();
    }
}

async fn measure_slot(
    client: &mut Option<tokio_postgres::Client>,
    source: &ConnInfo,
    slot: &str,
) -> Result<Option<(i64, i64)>, String> {
    if client.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
        *client = Some(tls::connect_sql(source).await.map_err(|e| e.to_string())?);
    }
    let client = client.as_ref().expect("connected above");
    let row = client.query_opt(SLOT_QUERY, &[&slot]).await.map_err(|e| e.to_string())?;
    Ok(row.map(|r| (r.get::<_, Option<i64>>(0).unwrap_or(0), r.get::<_, Option<i64>>(1).unwrap_or(0))))
}

/// Logs one summary line per pipeline every `every` until `cancel`: rates
/// of transactions and rows applied over the interval, lag and state (with
/// the initial copy's progress while it runs).
pub async fn log_summaries(metrics: Metrics, every: Duration, cancel: CancellationToken) {
    let start = tokio::time::Instant::now() + every;
    let mut ticker = tokio::time::interval_at(start, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = HashMap::new();
    let mut last_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let seconds = last_at.elapsed().as_secs_f64().max(0.001);
        last_at = tokio::time::Instant::now();
        for summary in summaries(&metrics.pipelines(), &mut last, seconds) {
            summary.log();
        }
    }
}

/// The pipelines' summaries over the last `seconds`, against their totals
/// at the last tick, by subscription (pipelines come, go and restart with
/// a reload): a pipeline not seen before counts from zero, as its counters
/// do.
fn summaries(
    pipelines: &[PipelineMetrics],
    last: &mut HashMap<String, (u64, u64)>,
    seconds: f64,
) -> Vec<Summary> {
    let before = std::mem::take(last);
    pipelines
        .iter()
        .map(|pipeline| {
            let totals = pipeline.totals();
            let previous = before.get(pipeline.subscription()).copied().unwrap_or_default();
            last.insert(pipeline.subscription().to_string(), totals);
            Summary::new(pipeline, previous, totals, seconds)
        })
        .collect()
}

/// One pipeline's summary line.
#[derive(Debug, PartialEq)]
struct Summary {
    subscription: String,
    state: State,
    transactions_per_second: f64,
    rows_per_second: f64,
    lag_seconds: f64,
    lag_bytes: Option<i64>,
    snapshot: Option<(i64, i64)>,
}

impl Summary {
    fn new(pipeline: &PipelineMetrics, before: (u64, u64), now: (u64, u64), seconds: f64) -> Summary {
        let rate = |a: u64, b: u64| (b.saturating_sub(a) as f64 / seconds * 10.0).round() / 10.0;
        let state = pipeline.state();
        let lag_bytes = pipeline.inner.slot_lag_bytes.load(Ordering::Relaxed);
        Summary {
            subscription: pipeline.subscription().to_string(),
            state,
            transactions_per_second: rate(before.0, now.0),
            rows_per_second: rate(before.1, now.1),
            lag_seconds: (pipeline.lag_seconds() * 1000.0).round() / 1000.0,
            lag_bytes: (lag_bytes != NONE).then_some(lag_bytes),
            snapshot: (state == State::Snapshot).then(|| pipeline.snapshot_totals()),
        }
    }

    fn log(&self) {
        let (copied, estimated) = self.snapshot.unwrap_or((0, 0));
        tracing::info!(
            subscription = %self.subscription,
            state = self.state.as_str(),
            transactions_per_second = self.transactions_per_second,
            rows_per_second = self.rows_per_second,
            lag_seconds = self.lag_seconds,
            lag_bytes = self.lag_bytes,
            snapshot_rows_copied = self.snapshot.map(|_| copied),
            snapshot_rows_estimated = self.snapshot.map(|_| estimated),
            "summary"
        );
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::config::TableMapping;

    /// A subscription of two tables, for tests.
    pub(crate) fn subscription(name: &str) -> Subscription {
        let table =
            |t: &str| TableMapping::new(QualifiedName::new("public", t), QualifiedName::new("public", t));
        Subscription {
            name: name.into(),
            source: "src".into(),
            target: "dst".into(),
            snapshot: true,
            slot: format!("ferry_{name}"),
            publication: format!("ferry_{name}"),
            publication_managed: true,
            on_error: Default::default(),
            forward_origins: false,
            tables: vec![table("items"), table("orders")],
        }
    }

    /// The value of the sample `series` (name with labels, as rendered).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn registers_exactly_the_documented_families() {
        let metrics = Metrics::new();
        metrics.pipeline(&subscription("a"));
        let forgotten = ForgottenSlot { source: "s".into(), slot: "ferry_gone".into(), retained_bytes: 1 };
        metrics.forgotten_slots([&forgotten].into_iter());
        let families: BTreeSet<String> =
            metrics.inner.registry.gather().iter().map(|f| f.name().to_string()).collect();
        let documented: BTreeSet<String> = METRICS
            .iter()
            .map(|(n, _)| n.to_string())
            .chain(PROCESS_METRICS.iter().map(|n| n.to_string()))
            .collect();
        assert_eq!(families, documented);
        assert!(METRICS.iter().all(|(_, help)| !help.is_empty()));
    }

    #[test]
    fn every_series_of_a_pipeline_exists_from_the_start() {
        let metrics = Metrics::new();
        metrics.pipeline(&subscription("a"));
        let text = metrics.render();
        assert_eq!(sample(&text, r#"ferry_pipeline_up{subscription="a"}"#), Some(0.0));
        assert_eq!(
            sample(&text, r#"ferry_events_total{op="truncate",subscription="a",table="public.orders"}"#),
            Some(0.0)
        );
        assert_eq!(sample(&text, r#"ferry_errors_total{kind="slot",subscription="a"}"#), Some(0.0));
        assert_eq!(sample(&text, r#"ferry_apply_batch_rows_count{subscription="a"}"#), Some(0.0));
        assert_eq!(
            sample(&text, r#"ferry_snapshot_rows_estimated{subscription="a",table="public.items"}"#),
            Some(0.0)
        );
        assert_eq!(sample(&text, r#"ferry_replication_lag_seconds{subscription="a"}"#), Some(0.0));
    }

    #[test]
    fn copying_shows_only_during_the_initial_copy() {
        let metrics = Metrics::new();
        let p = metrics.pipeline(&subscription("a"));
        let values = || {
            let text = metrics.render();
            let value = |name: &str| sample(&text, &format!(r#"{name}{{subscription="a"}}"#));
            (value("ferry_pipeline_up"), value("ferry_pipeline_copying"))
        };
        assert_eq!(values(), (Some(0.0), Some(0.0)));
        p.set_state(State::Snapshot);
        assert_eq!(values(), (Some(0.0), Some(1.0)));
        p.set_state(State::Streaming);
        assert_eq!(values(), (Some(1.0), Some(0.0)));
        p.set_state(State::Retrying);
        assert_eq!(values(), (Some(0.0), Some(0.0)));
        metrics.forget(&subscription("a"));
        assert_eq!(values(), (None, None), "a removed subscription's series end");
    }

    #[test]
    fn a_table_taken_out_of_a_subscription_loses_its_series() {
        let metrics = Metrics::new();
        metrics.pipeline(&subscription("a"));
        let mut changed = subscription("a");
        changed.tables.retain(|t| t.from.name == "items");
        metrics.pipeline(&changed);
        let text = metrics.render();
        let series = |table: &str| {
            format!(r#"ferry_events_total{{op="insert",subscription="a",table="public.{table}"}}"#)
        };
        assert_eq!(sample(&text, &series("items")), Some(0.0));
        assert_eq!(sample(&text, &series("orders")), None);
        assert!(!text.contains("public.orders"), "{text}");
    }

    #[test]
    fn events_count_when_their_batch_commits() {
        let metrics = Metrics::new();
        let p = metrics.pipeline(&subscription("a"));
        let orders = p.table_index("public", "orders").unwrap();
        assert_eq!(p.table_index("public", "nope"), None);
        let mut events = EventCounts::default();
        events.add(orders, Op::Insert);
        events.add(orders, Op::Insert);
        events.add(0, Op::Delete);
        assert_eq!(p.totals(), (0, 0));
        p.batch_committed(&events, 2, Duration::from_millis(3));
        assert_eq!(p.totals(), (2, 3));
        let text = metrics.render();
        assert_eq!(
            sample(&text, r#"ferry_events_total{op="insert",subscription="a",table="public.orders"}"#),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, r#"ferry_events_total{op="delete",subscription="a",table="public.items"}"#),
            Some(1.0)
        );
        assert_eq!(sample(&text, r#"ferry_transactions_applied_total{subscription="a"}"#), Some(2.0));
        assert_eq!(sample(&text, r#"ferry_apply_batch_rows_sum{subscription="a"}"#), Some(3.0));
    }

    #[test]
    fn lag_runs_from_the_oldest_pending_commit_until_applied() {
        let p = PipelineMetrics::detached(&subscription("a"));
        let now = timestamp::now_micros();
        assert_eq!(p.lag_seconds_at(now), 0.0);
        p.pending(now - 5_000_000);
        p.pending(now - 1_000_000); // a later transaction does not reset it
        assert_eq!(p.lag_seconds_at(now), 5.0);
        p.applied(Lsn(0x16B3748), Some(now - 1_000_000));
        assert_eq!(p.lag_seconds_at(now), 0.0);
        let status = p.status_at(now);
        assert_eq!(status.last_applied_lsn.as_deref(), Some("0/16B3748"));
        assert!(status.last_commit_time.is_some());
        // A commit time no server should send ('-infinity' and just
        // after): a huge lag, not an overflow.
        p.pending(NONE + 1);
        assert!(p.lag_seconds_at(now) > 1e12);
    }

    #[test]
    fn a_pipeline_restarted_by_a_reload_keeps_its_lag_and_progress() {
        let metrics = Metrics::new();
        let now = timestamp::now_micros();
        let before = metrics.pipeline(&subscription("a"));
        before.applied(Lsn(0x100), Some(now - 9_000_000));
        before.pending(now - 5_000_000);
        before.slot_positions(10, 20);
        let after = metrics.pipeline(&subscription("a"));
        assert_eq!(after.lag_seconds_at(now), 5.0, "the change read before is still not applied");
        let status = after.status_at(now);
        assert_eq!(status.last_applied_lsn.as_deref(), Some("0/100"));
        assert_eq!((status.lag_bytes, status.retained_wal_bytes), (Some(10), Some(20)));

        let mut elsewhere = subscription("a");
        elsewhere.target = "another".into();
        let moved = metrics.pipeline(&elsewhere);
        assert_eq!(moved.lag_seconds_at(now), 0.0, "another target starts afresh");
        assert_eq!(moved.status_at(now).last_applied_lsn, None);
    }

    #[test]
    fn up_only_while_streaming_and_streaming_clears_the_error() {
        let metrics = Metrics::new();
        let a = metrics.pipeline(&subscription("a"));
        let b = metrics.pipeline(&subscription("b"));
        a.set_state(State::Streaming);
        b.error(ErrorKind::Target, "target: cannot connect".into());
        b.set_state(State::Retrying);
        let text = metrics.render();
        assert_eq!(sample(&text, r#"ferry_pipeline_up{subscription="a"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"ferry_pipeline_up{subscription="b"}"#), Some(0.0));
        assert_eq!(sample(&text, r#"ferry_errors_total{kind="target",subscription="b"}"#), Some(1.0));
        let report = metrics.status();
        assert_eq!(report.pipelines[1].state, State::Retrying);
        assert_eq!(report.pipelines[1].error.as_deref(), Some("target: cannot connect"));
        b.set_state(State::Streaming);
        assert_eq!(metrics.status().pipelines[1].error, None);
    }

    #[test]
    fn summaries_follow_each_subscription_whatever_the_order() {
        let metrics = Metrics::new();
        let a = metrics.pipeline(&subscription("a"));
        let _b = metrics.pipeline(&subscription("b"));
        a.batch_committed(&EventCounts::default(), 10, Duration::ZERO);
        let mut last = HashMap::new();
        let first = summaries(&metrics.pipelines(), &mut last, 1.0);
        assert_eq!(first.iter().map(|s| s.transactions_per_second).collect::<Vec<_>>(), [10.0, 0.0]);
        // A reload restarts `a`: it moves behind `b` in the list.
        let a = metrics.pipeline(&subscription("a"));
        a.batch_committed(&EventCounts::default(), 5, Duration::ZERO);
        let second = summaries(&metrics.pipelines(), &mut last, 1.0);
        let rates: Vec<(&str, f64)> =
            second.iter().map(|s| (s.subscription.as_str(), s.transactions_per_second)).collect();
        assert_eq!(rates, [("b", 0.0), ("a", 5.0)]);
    }

    #[test]
    fn summary_rates_are_per_second_over_the_interval() {
        let p = PipelineMetrics::detached(&subscription("a"));
        p.set_state(State::Snapshot);
        p.snapshot_estimate(0, 1000);
        p.snapshot_copied(0, 250);
        let summary = Summary::new(&p, (10, 100), (40, 400), 60.0);
        assert_eq!(summary.transactions_per_second, 0.5);
        assert_eq!(summary.rows_per_second, 5.0);
        assert_eq!(summary.snapshot, Some((250, 1000)));
        assert_eq!(summary.lag_bytes, None);
    }
}
