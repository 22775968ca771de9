//! `ferry demo`: two services, each with its own throwaway PostgreSQL,
//! kept in sync by ferry running in-process, under a small live workload.
//! At the end every copy is compared with its source by content.
//!
//! Only the PostgreSQL server binaries are needed (see [`cluster`]).

pub mod cluster;
mod report;
mod setup;
mod workload;

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use cluster::{ClusterAddr, Sandbox};
use report::Comparison;
use setup::{Databases, FLOWS, Service};
use workload::Shop;

/// Workload transactions per second.
const TRANSACTIONS_PER_SECOND: u32 = 20;
/// Rows there before ferry starts, for its initial copy.
const SEED_CUSTOMERS: usize = 20;
const SEED_ORDERS: usize = 40;
/// The same shop every run.
const WORKLOAD_SEED: u64 = 0x5eed_f322;
const STATUS_EVERY: Duration = Duration::from_secs(2);
/// How long the copies may take to catch up once the workload stops.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the pipelines may take to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    /// Stop after this long; `None` runs until `stop` fires.
    pub seconds: Option<u64>,
}

/// Runs the demo until `stop` fires (Ctrl-C) or `options.seconds` have
/// passed, then lets the copies catch up (`abort`, a second Ctrl-C, skips
/// that) and compares them with their sources. Returns whether every copy
/// matches, every pipeline ran without failing and the clean-up worked. The
/// servers are stopped and the temporary folder removed whatever happened
/// (on a panic too).
pub async fn run(
    options: DemoOptions,
    stop: CancellationToken,
    abort: CancellationToken,
) -> anyhow::Result<bool> {
    let mut sandbox = Sandbox::create("ferry-demo-")?;
    let folder = sandbox.path().to_path_buf();
    println!("ferry demo: two services, each with its own PostgreSQL, kept in sync by ferry");
    println!("  temporary folder  {} (removed at the end)", folder.display());
    println!("  server binaries   {}", sandbox.bin().display());
    let result = run_in(&mut sandbox, &options, &stop, &abort).await;
    let cleaned_up = match sandbox.close() {
        Ok(()) => {
            println!("Stopped both servers and removed {}.", folder.display());
            true
        }
        Err(error) => {
            tracing::error!("cleaning up {}: {error}", folder.display());
            false
        }
    };
    Ok(result? && cleaned_up)
}

async fn run_in(
    sandbox: &mut Sandbox,
    options: &DemoOptions,
    stop: &CancellationToken,
    abort: &CancellationToken,
) -> anyhow::Result<bool> {
    let [customers, orders] = start_clusters(sandbox)?;
    print_services(&customers, &orders);
    let (config, shop) = set_up_services(&customers, &orders).await?;
    let readers = Databases::connect(&customers, &orders).await?;
    let daemon = Daemon::start(config);
    let workload = Workload::start(shop, Databases::connect(&customers, &orders).await?);
    run_workload(&readers, workload, &daemon, options, stop).await?;
    wait_for_copies(&readers, &daemon, abort).await?;
    let failed = daemon.stop().await;
    Ok(print_check(&report::compare(&readers).await?, failed))
}

/// Creates both databases with their tables and first rows; returns ferry's
/// config and the shop that goes on from there.
async fn set_up_services(customers: &ClusterAddr, orders: &ClusterAddr) -> anyhow::Result<(Config, Shop)> {
    setup::create_database(customers, Service::Customers).await?;
    setup::create_database(orders, Service::Orders).await?;
    let config = demo_config(customers, orders)?;
    let mut shop = Shop::new(WORKLOAD_SEED);
    shop.seed(&Databases::connect(customers, orders).await?, SEED_CUSTOMERS, SEED_ORDERS).await?;
    Ok((config, shop))
}

/// Lets the workload run, showing progress, until it is time to stop.
async fn run_workload(
    db: &Databases,
    workload: Workload,
    daemon: &Daemon,
    options: &DemoOptions,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let watched = watch_until_stopped(db, &workload, daemon, started, options, stop).await;
    let transactions = workload.stop().await;
    watched?;
    println!("The workload ran {} transactions in {:.0}s.", transactions?, started.elapsed().as_secs_f64());
    Ok(())
}

/// Starts the customers and the orders service's clusters, in parallel.
fn start_clusters(sandbox: &mut Sandbox) -> anyhow::Result<[ClusterAddr; 2]> {
    println!("Starting a PostgreSQL server for each service...");
    let clusters = sandbox.start_clusters(&Service::ALL.map(Service::name))?;
    Ok(clusters.try_into().expect("one cluster per service"))
}

fn print_services(customers: &ClusterAddr, orders: &ClusterAddr) {
    for (service, cluster) in [(Service::Customers, customers), (Service::Orders, orders)] {
        println!("  {:<17} {}", format!("{} service", service.name()), cluster.url(service.name()));
    }
}

/// The generated config, validated as `ferry run` validates a file, and
/// printed: it is the part of the demo to copy from.
fn demo_config(customers: &ClusterAddr, orders: &ClusterAddr) -> anyhow::Result<Config> {
    let text = setup::config_toml(customers, orders);
    let config = setup::parse_config(&text)?;
    println!("ferry's config for this demo (what `ferry run --config` would read):\n");
    for line in text.lines() {
        if line.is_empty() { println!() } else { println!("    {line}") }
    }
    Ok(config)
}

/// Prints a status line every few seconds until `stop` fires, the time is
/// up, or the workload or ferry stops by itself.
async fn watch_until_stopped(
    db: &Databases,
    workload: &Workload,
    daemon: &Daemon,
    started: Instant,
    options: &DemoOptions,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    announce_workload(options.seconds);
    let time_up = time_up(options.seconds);
    tokio::pin!(time_up);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + STATUS_EVERY, STATUS_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                println!("Interrupted: stopping the workload.");
                return Ok(());
            }
            _ = &mut time_up => {
                println!("Time is up: stopping the workload.");
                return Ok(());
            }
            _ = ticks.tick() => {}
        }
        if daemon.has_stopped() || workload.has_stopped() {
            let who = if daemon.has_stopped() { "ferry" } else { "The workload" };
            println!("{who} stopped by itself (see the log above).");
            return Ok(());
        }
        println!("{}", report::status_line(db, started.elapsed(), &workload.last_change()).await?);
    }
}

fn announce_workload(seconds: Option<u64>) {
    let until = match seconds {
        Some(seconds) => format!("for {seconds}s (Ctrl-C stops earlier)"),
        None => "until Ctrl-C".to_string(),
    };
    println!("Running a workload of {TRANSACTIONS_PER_SECOND} transactions/s on both services {until}.");
}

/// Ends after `seconds`, or never.
async fn time_up(seconds: Option<u64>) {
    match seconds {
        Some(seconds) => tokio::time::sleep(Duration::from_secs(seconds)).await,
        None => std::future::pending().await,
    }
}

/// Waits, bounded, until every copy matches its source.
async fn wait_for_copies(db: &Databases, daemon: &Daemon, abort: &CancellationToken) -> anyhow::Result<()> {
    println!(
        "Waiting for the copies to catch up (at most {}s; Ctrl-C again skips this)...",
        CATCH_UP_TIMEOUT.as_secs()
    );
    let started = Instant::now();
    loop {
        if report::compare(db).await?.iter().all(Comparison::matches) {
            println!("Caught up after {:.1}s.", started.elapsed().as_secs_f64());
            return Ok(());
        }
        if started.elapsed() >= CATCH_UP_TIMEOUT || daemon.has_stopped() {
            println!("The copies did not catch up.");
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = abort.cancelled() => {
                println!("Interrupted again: not waiting any longer.");
                return Ok(());
            }
        }
    }
}

/// Prints the consistency check; returns whether everything is consistent.
fn print_check(comparisons: &[Comparison], failed_pipelines: usize) -> bool {
    println!("Consistency check (row count and md5 over the rows in key order):");
    for comparison in comparisons {
        println!("{}", comparison.line());
    }
    if failed_pipelines > 0 {
        println!("{failed_pipelines} pipeline(s) stopped with an error (see the log above).");
    }
    let consistent = failed_pipelines == 0 && comparisons.iter().all(Comparison::matches);
    if consistent {
        println!("Consistent: every copy equals its source.");
    } else {
        println!("NOT consistent.");
    }
    consistent
}

/// ferry's pipelines, running in-process (`ferry run` without the config
/// file). Dropping it cancels them.
struct Daemon {
    cancel: CancellationToken,
    task: JoinHandle<usize>,
}

impl Daemon {
    fn start(config: Config) -> Daemon {
        debug_assert_eq!(config.subscriptions.len(), FLOWS.len());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(crate::daemon::run(config, cancel.clone()));
        Daemon { cancel, task }
    }

    fn has_stopped(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the pipelines (each finishes the transaction in hand) and
    /// returns how many stopped with an error, counting one that did not
    /// stop in time.
    async fn stop(mut self) -> usize {
        self.cancel.cancel();
        match tokio::time::timeout(STOP_TIMEOUT, &mut self.task).await {
            Ok(Ok(failed)) => failed,
            Ok(Err(panic)) => {
                tracing::error!("the pipelines panicked: {panic}");
                FLOWS.len()
            }
            Err(_) => {
                tracing::error!("the pipelines did not stop within {}s", STOP_TIMEOUT.as_secs());
                FLOWS.len()
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.task.abort();
    }
}

/// The shop's transactions, running in the background. Dropping it stops
/// them.
struct Workload {
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<u64>>,
    last_change: watch::Receiver<String>,
}

impl Workload {
    fn start(shop: Shop, db: Databases) -> Workload {
        let stop = CancellationToken::new();
        let (last_change_tx, last_change) = watch::channel("none yet".to_string());
        let task = tokio::spawn(shop.run(db, TRANSACTIONS_PER_SECOND, last_change_tx, stop.clone()));
        Workload { stop, task, last_change }
    }

    fn last_change(&self) -> String {
        self.last_change.borrow().clone()
    }

    fn has_stopped(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops it; returns how many transactions ran.
    async fn stop(mut self) -> anyhow::Result<u64> {
        self.stop.cancel();
        (&mut self.task).await?
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop.cancel();
        self.task.abort();
    }
}
