//! `ferry run`: every subscription of the config as its own pipeline, until
//! SIGTERM or SIGINT, with each pipeline's slot measured and a summary
//! logged once a minute. A new config (SIGHUP) is applied without a
//! restart: pipelines whose subscription changed restart, new ones start,
//! removed ones stop (their slots stay: see `ferry drop`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Subscription};
use crate::metrics::{self, Metrics};
use crate::pipeline::{self, PipelineError, PipelineSpec};
use crate::teardown;

/// How often each pipeline's summary line is logged.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// Runs all pipelines until `cancel` fires, with metrics nobody reads and
/// no reloads. Returns the number of pipelines that stopped with an error.
pub async fn run(config: Config, cancel: CancellationToken) -> usize {
    let (_keep, reloads) = mpsc::channel(1);
    run_with(config, &Metrics::new(), reloads, cancel).await
}

/// Runs all pipelines until `cancel` fires or none is left running,
/// reporting to `metrics` (ready once every pipeline has started, not ready
/// again once stopping), and applies each config that arrives on
/// `reloads`. A pipeline that stops for good does not stop the others.
/// Returns the number of pipelines that stopped with an error.
pub async fn run_with(
    config: Config,
    metrics: &Metrics,
    mut reloads: mpsc::Receiver<Config>,
    cancel: CancellationToken,
) -> usize {
    match raise_open_files_limit() {
        Ok(Some((from, to))) => tracing::info!("open files limit raised from {from} to {to}"),
        Ok(None) => {}
        // Streamed transactions waiting to be applied may then run short.
        Err(error) => tracing::warn!("the open files limit could not be raised: {error}"),
    }
    let mut background = JoinSet::new();
    background.spawn(metrics::log_summaries(metrics.clone(), SUMMARY_INTERVAL, cancel.clone()));
    let (configs, config_rx) = watch::channel(config.clone());
    background.spawn(teardown::watch_forgotten_slots(config_rx, metrics.clone(), cancel.clone()));
    let mut pipelines = Pipelines::new(metrics.clone(), cancel.clone());
    pipelines.apply(&config).await;
    // The address served until a restart, whatever the reloads say.
    let listening = config.server.listen;
    metrics.set_ready(true);
    while pipelines.any_running() {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(config) = reloads.recv() => {
                if config.server.listen != listening {
                    tracing::warn!(listen = %config.server.listen, serving = %listening, "a new [server] listen address takes a restart");
                }
                pipelines.apply(&config).await;
                configs.send_replace(config);
                tracing::info!("configuration reloaded");
            }
            Some(exit) = pipelines.tasks.join_next_with_id() => pipelines.exited(exit),
        }
    }
    metrics.set_ready(false);
    let failed = pipelines.stop_all().await;
    background.shutdown().await;
    failed
}

/// The running pipelines, by subscription name.
struct Pipelines {
    metrics: Metrics,
    cancel: CancellationToken,
    by_name: BTreeMap<String, Pipeline>,
    tasks: JoinSet<Result<(), PipelineError>>,
    /// Pipelines that stopped with an error, by name.
    failed: BTreeSet<String>,
}

struct Pipeline {
    spec: PipelineSpec,
    /// Stops the pipeline and its slot watcher.
    stop: CancellationToken,
    /// Its task, while it runs.
    task: Option<Id>,
}

impl Pipelines {
    fn new(metrics: Metrics, cancel: CancellationToken) -> Pipelines {
        Pipelines {
            metrics,
            cancel,
            by_name: BTreeMap::new(),
            tasks: JoinSet::new(),
            failed: BTreeSet::new(),
        }
    }

    fn any_running(&self) -> bool {
        self.by_name.values().any(|p| p.task.is_some())
    }

    /// Makes the running pipelines those of `config`: removed subscriptions
    /// stop, changed ones restart, new ones start, and ones that stopped
    /// with an error get another chance.
    async fn apply(&mut self, config: &Config) {
        if self.cancel.is_cancelled() {
            return; // stopping: nothing new starts
        }
        let wanted: BTreeMap<String, PipelineSpec> = config
            .subscriptions
            .iter()
            .map(|sub| {
                let spec = PipelineSpec {
                    subscription: sub.clone(),
                    source: config.sources[&sub.source].clone(),
                    target: config.targets[&sub.target].clone(),
                };
                (sub.name.clone(), spec)
            })
            .collect();
        let removed: Vec<String> =
            self.by_name.keys().filter(|n| !wanted.contains_key(*n)).cloned().collect();
        let mut starting = Vec::new();
        for (name, spec) in wanted {
            match self.by_name.get(&name) {
                Some(running) if running.spec == spec && running.task.is_some() => continue,
                Some(running) if running.spec == spec => {
                    tracing::info!(subscription = %name, "restarting a pipeline that had stopped");
                }
                Some(running) => {
                    tracing::info!(subscription = %name, "subscription changed: restarting its pipeline");
                    warn_of_reshaped_tables(&running.spec.subscription, &spec.subscription);
                }
                None => {}
            }
            starting.push(spec);
        }
        // All at once: each may take its grace period to stop (a target
        // statement waiting on a lock), and one after another they would
        // add up while the rest run on under the old config.
        let stopping: Vec<&String> =
            removed.iter().chain(starting.iter().map(|s| &s.subscription.name)).collect();
        self.stop(&stopping).await;
        for name in removed {
            let Some(pipeline) = self.by_name.remove(&name) else { continue };
            self.metrics.forget(&pipeline.spec.subscription);
            // What is no longer configured no longer counts as failed.
            self.failed.remove(&name);
            let (slot, source) = (&pipeline.spec.subscription.slot, &pipeline.spec.subscription.source);
            tracing::warn!(
                subscription = %name,
                %slot,
                "subscription removed: its pipeline stopped; its slot {slot}, if made, stays on the source and keeps \
                 WAL until `ferry drop {name} --source {source}` removes it"
            );
        }
        for spec in starting {
            self.start(spec);
        }
    }

    fn start(&mut self, spec: PipelineSpec) {
        let subscription = &spec.subscription;
        tracing::info!(
            subscription = %subscription.name,
            source = %spec.source,
            target = %spec.target,
            tables = subscription.tables.len(),
            "starting pipeline"
        );
        let metrics = self.metrics.pipeline(subscription);
        let stop = self.cancel.child_token();
        // The slot is watched as long as the subscription is configured,
        // even when its pipeline has stopped: that is when it grows.
        self.tasks.spawn(watch_slot(spec.clone(), metrics.clone(), stop.clone()));
        let task = self.tasks.spawn(run_on_own_thread(spec.clone(), metrics, stop.clone())).id();
        self.failed.remove(&subscription.name);
        self.by_name.insert(subscription.name.clone(), Pipeline { spec, stop, task: Some(task) });
    }

    /// Stops pipelines (and their slot watchers) and waits for them to end.
    async fn stop(&mut self, names: &[&String]) {
        for name in names {
            if let Some(pipeline) = self.by_name.get(*name) {
                pipeline.stop.cancel();
            }
        }
        while names.iter().any(|name| self.by_name.get(*name).is_some_and(|p| p.task.is_some())) {
            match self.tasks.join_next_with_id().await {
                Some(exit) => self.exited(exit),
                None => break,
            }
        }
    }

    /// Notes a task's end: a pipeline's (with its result) or a watcher's.
    fn exited(&mut self, exit: Result<(Id, Result<(), PipelineError>), tokio::task::JoinError>) {
        // Errors, panics in the pipeline's run among them, are logged by
        // the pipeline; its task panics only if its thread could not run.
        let (id, failed, panic) = match exit {
            Ok((id, result)) => (id, result.is_err(), None),
            Err(panic) => (panic.id(), true, Some(panic)),
        };
        let found = self.by_name.iter_mut().find(|(_, p)| p.task == Some(id));
        if let Some(panic) = panic {
            let subscription = found.as_ref().map(|(name, _)| name.as_str());
            tracing::error!(subscription, "a task of the daemon panicked: {panic}");
        }
        let Some((name, pipeline)) = found else {
            return; // a slot watcher
        };
        pipeline.task = None;
        if failed {
            self.failed.insert(name.clone());
        }
    }

    /// Stops everything; returns how many pipelines stopped with an error.
    async fn stop_all(&mut self) -> usize {
        self.cancel.cancel();
        while let Some(exit) = self.tasks.join_next_with_id().await {
            self.exited(exit);
        }
        self.failed.len()
    }
}

/// Runs a pipeline on a thread of its own, in a runtime of that one
/// thread: its reader, its applier and their connections hand work to each
/// other without waking another thread for it. On a busy machine every
/// wake-up waits for a CPU, and on the shared runtime a pipeline made
/// several per source transaction. Pipelines still run in parallel.
async fn run_on_own_thread(
    spec: PipelineSpec,
    metrics: metrics::PipelineMetrics,
    stop: CancellationToken,
) -> Result<(), PipelineError> {
    let (done, result) = tokio::sync::oneshot::channel();
    let (kept_spec, kept_metrics) = (spec.clone(), metrics.clone());
    let spawned = std::thread::Builder::new().name(format!("ferry {}", spec.subscription.name)).spawn(move || {
        if let Err(error) = no_wakeup_preemption() {
            tracing::debug!(subscription = %spec.subscription.name, "the pipeline's thread keeps the default scheduling: {error}");
        }
        let ended = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => run_to_end(&runtime, pipeline::run(spec.clone(), metrics.clone(), stop), &spec, &metrics),
            Err(error) => Err(pipeline::stopped_outside_run(&spec, &metrics, PipelineError::NoThread(error))),
        };
        let _ = done.send(ended);
    });
    // Threads and the files a runtime needs can run out (EAGAIN, EMFILE).
    if let Err(error) = spawned {
        return Err(pipeline::stopped_outside_run(&kept_spec, &kept_metrics, PipelineError::NoThread(error)));
    }
    result.await.expect("the pipeline's thread sends its result")
}

/// Runs a pipeline to its end on `runtime`. A panic in it (a bug in ferry)
/// ends it as an error that stops it, which its metrics and `/status` show.
#[expect(clippy::result_large_err, reason = "returned once, when the pipeline ends; as pipeline::run's")]
fn run_to_end(
    runtime: &tokio::runtime::Runtime,
    run: impl std::future::Future<Output = Result<(), PipelineError>>,
    spec: &PipelineSpec,
    metrics: &metrics::PipelineMetrics,
) -> Result<(), PipelineError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(run)))
        .unwrap_or_else(|panic| Err(pipeline::stopped_by_panic(spec, metrics, panic)))
}

/// Has the calling thread run as `SCHED_BATCH`: it no longer preempts the
/// task running on its CPU when woken, and waits for that task to block or
/// its slice to end. The source's walsender writes each message of a
/// transaction to the socket on its own (Begin, each change, Commit), and a
/// pipeline woken by each of them took the walsender's CPU every time: on a
/// busy machine the walsender then queued for a CPU at each message, fell
/// behind the WAL by up to 200 KB, and the changes reached ferry tens of
/// milliseconds late. Unwoken early, the pipeline reads the whole
/// transaction when the walsender waits for more WAL. Any user may choose
/// this policy for its own threads; the priority (nice value) is kept.
#[cfg(target_os = "linux")]
fn no_wakeup_preemption() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call, and
    // pid 0 names the calling thread; nothing else is read or written.
    let status = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if status == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(not(target_os = "linux"))]
fn no_wakeup_preemption() -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "SCHED_BATCH is Linux's"))
}

/// Raises the soft limit on open files to the hard one, as Go's runtime
/// does for every program: a pipeline keeps a spool file open for each
/// streamed transaction committed and not yet applied, which behind a slow
/// target can be thousands, while the soft limit is often 1,024 (systemd's
/// default) and the hard one far higher. Returns the limits before and
/// after, when it changed.
#[cfg(target_os = "linux")]
fn raise_open_files_limit() -> std::io::Result<Option<(u64, u64)>> {
    let mut limit = open_files_limit()?;
    let before = limit.rlim_cur;
    if before >= limit.rlim_max {
        return Ok(None);
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: `limit` is a valid rlimit the call only reads; raising the
    // soft limit up to the hard one needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Some((before, limit.rlim_cur)))
}

/// The process's soft and hard limits on open files.
#[cfg(target_os = "linux")]
fn open_files_limit() -> std::io::Result<libc::rlimit> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid rlimit the call writes into.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(limit)
}

#[cfg(not(target_os = "linux"))]
fn raise_open_files_limit() -> std::io::Result<Option<(u64, u64)>> {
    Ok(None)
}

/// Warns of tables of a changed subscription whose columns, `where` or
/// `operations` changed: the new settings shape changes from now on, and
/// the rows replicated under the old ones stay as they are.
fn warn_of_reshaped_tables(old: &Subscription, new: &Subscription) {
    for table in &new.tables {
        let before = old.tables.iter().find(|t| t.from == table.from && t.to == table.to);
        if before.is_some_and(|before| before != table) {
            tracing::warn!(
                subscription = %new.name,
                table = %table.from,
                "the table's columns, `where` or `operations` changed: they shape its changes from now on, and \
                 the rows on the target are not gone over again (rows they now take in that do not change are not \
                 copied, rows they now leave out stay); to have them hold for every row, take the table out of the \
                 subscription and reload, empty its target table, then add the table back"
            );
        }
    }
}

/// Measures a pipeline's slot until `stop` fires. Never fails: it only
/// reports, and shares the pipelines' task set for that reason.
async fn watch_slot(
    spec: PipelineSpec,
    metrics: metrics::PipelineMetrics,
    stop: CancellationToken,
) -> Result<(), PipelineError> {
    metrics::watch_slot(spec.source, spec.subscription.slot, metrics, stop).await;
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    fn policy() -> i32 {
        // SAFETY: pid 0 names the calling thread; the call only reads.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_one() {
        let hard = super::open_files_limit().unwrap().rlim_max;
        let lowered = libc::rlimit { rlim_cur: hard.min(1024) - 1, rlim_max: hard };
        // SAFETY: a valid rlimit, only read; lowering the soft limit needs no privilege.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }, 0);
        assert_eq!(super::raise_open_files_limit().unwrap(), Some((lowered.rlim_cur, hard)));
        assert_eq!(super::open_files_limit().unwrap().rlim_cur, hard);
        assert_eq!(super::raise_open_files_limit().unwrap(), None, "nothing left to raise");
    }

    #[test]
    fn a_pipeline_that_panics_shows_as_stopped_with_an_internal_error() {
        use crate::metrics::{ErrorKind, Metrics, State};
        let metrics = Metrics::new();
        let subscription = crate::metrics::tests::subscription("a");
        let pipeline = metrics.pipeline(&subscription);
        let url: crate::pg::conninfo::ConnInfo = "postgresql://ferry:hunter2@db/shop".parse().unwrap();
        let spec = super::PipelineSpec { subscription, source: url.clone(), target: url };
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let run = async {
            pipeline.set_state(State::Streaming);
            panic!("no such thing with password hunter2");
        };
        let error = super::run_to_end(&runtime, run, &spec, &pipeline).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Internal);
        let status = &metrics.status().pipelines[0];
        assert_eq!(status.state, State::Stopped);
        let shown = status.error.as_deref().unwrap();
        assert!(shown.contains("bug in ferry") && !shown.contains("hunter2"), "{shown}");
        let rendered = metrics.render();
        assert!(rendered.contains(r#"ferry_errors_total{kind="internal",subscription="a"} 1"#), "{rendered}");
        assert!(rendered.contains(r#"ferry_pipeline_up{subscription="a"} 0"#), "{rendered}");
    }

    /// Out of threads (EAGAIN), as the daemon would be under a low
    /// RLIMIT_NPROC: the pipeline shows as stopped, not as starting.
    #[test]
    fn a_pipeline_whose_thread_cannot_start_shows_as_stopped() {
        use crate::metrics::{ErrorKind, Metrics, State};
        let metrics = Metrics::new();
        let subscription = crate::metrics::tests::subscription("a");
        let pipeline = metrics.pipeline(&subscription);
        let url: crate::pg::conninfo::ConnInfo = "postgresql://ferry@db/shop".parse().unwrap();
        let spec = super::PipelineSpec { subscription, source: url.clone(), target: url };
        let no_thread = super::PipelineError::NoThread(std::io::Error::from_raw_os_error(libc::EAGAIN));
        let error = super::pipeline::stopped_outside_run(&spec, &pipeline, no_thread);
        assert_eq!(error.kind(), ErrorKind::Internal);
        let status = &metrics.status().pipelines[0];
        assert_eq!(status.state, State::Stopped);
        assert!(status.error.as_deref().unwrap().contains("thread could not start"), "{status:?}");
    }

    #[test]
    fn a_pipeline_thread_asks_not_to_preempt_on_wakeup_and_only_it() {
        let own = std::thread::spawn(|| {
            super::no_wakeup_preemption().expect("any user may choose SCHED_BATCH");
            policy()
        })
        .join()
        .expect("the thread did not panic");
        assert_eq!(own, libc::SCHED_BATCH);
        assert_eq!(policy(), libc::SCHED_OTHER, "the calling thread only");
    }
}
