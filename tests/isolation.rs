//! Isolation (DESIGN.md invariant 6): one source, two subscriptions in one
//! daemon, each into its own target cluster, under a steady load. While
//! the first target is down for a minute, the second pipeline keeps the lag
//! it had before, and the first one's slot is seen holding more and more
//! WAL; when the target returns its pipeline catches up, and every table
//! on every target ends equal to the source.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry::metrics::State;
use support::daemon::{Daemon, checksum, wait_for_same};
use support::endpoints::{Endpoints, Samples, with_server};
use support::{Cluster, ClusterOptions, exec, free_port};

const SETTLE: Duration = Duration::from_secs(60);
/// How long the healthy pipeline's lag is sampled before the outage.
const BASELINE: Duration = Duration::from_secs(15);
/// How long the first target stays down.
const OUTAGE: Duration = Duration::from_secs(60);
/// Each of the two writers commits a transaction this often (150/s each).
const WRITE_EVERY: Duration = Duration::from_micros(6_667);
/// A probe row is committed this often, whether or not earlier ones arrived,
/// so that samples cover time evenly: a stall of the healthy pipeline shows
/// in as many samples as it lasts.
const PROBE_EVERY: Duration = Duration::from_millis(50);
/// The watcher looks for probes on the healthy target this often; it is
/// the resolution of every lag figure below.
const POLL_EVERY: Duration = Duration::from_millis(2);

const TABLE: &str = "(id bigint PRIMARY KEY, n int NOT NULL, note text)";

/// Subscription `to-t1`: `items_1` into `t1`; `to-t2`: `items_2` and the
/// probes into `t2`.
fn config(source: &Cluster, t1: &Cluster, t2: &Cluster) -> String {
    format!(
        "[sources.src]\nurl = \"{}\"\n\n[targets.t1]\nurl = \"{}\"\n\n[targets.t2]\nurl = \"{}\"\n\n\
         [[subscriptions]]\nname = \"to-t1\"\nsource = \"src\"\ntarget = \"t1\"\n\
         [[subscriptions.tables]]\nfrom = \"items_1\"\n\n\
         [[subscriptions]]\nname = \"to-t2\"\nsource = \"src\"\ntarget = \"t2\"\n\
         [[subscriptions.tables]]\nfrom = \"items_2\"\n\
         [[subscriptions.tables]]\nfrom = \"probes\"\n",
        source.url("postgres"),
        t1.url("postgres"),
        t2.url("postgres")
    )
}

/// Writes small transactions into `table` at a steady pace until `stop`:
/// an insert, an update of a recent row, and now and then a delete.
/// Returns the number of transactions committed.
async fn write_steadily(source: &Cluster, table: &'static str, stop: Arc<AtomicBool>) -> u64 {
    let client = source.client("postgres").await;
    let mut tick = tokio::time::interval(WRITE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut id: i64 = 1_000_000;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        id += 1;
        let mut sql = format!(
            "INSERT INTO {table} VALUES ({id}, 0, md5('{id}')); UPDATE {table} SET n = n + 1 WHERE id = {};",
            id - 7
        );
        if id % 20 == 0 {
            sql.push_str(&format!("DELETE FROM {table} WHERE id = {};", id - 50));
        }
        exec(&client, &sql).await;
    }
    (id - 1_000_000) as u64
}

/// The healthy pipeline's lag, measured with probe rows: one is committed
/// on the source every [`PROBE_EVERY`], and a watcher polls the target for
/// the highest probe id there. Transactions arrive in commit order, so when
/// probe `k` shows, every probe before it has too.
struct Probes {
    /// When each probe's commit returned on the source (index = id - 1).
    committed: Vec<Instant>,
    /// When the watcher first saw each probe on the target (shorter when
    /// the last ones never arrived).
    seen: Vec<Instant>,
}

impl Probes {
    /// The lag of every probe committed within `from..until`; a probe
    /// never seen counts as lagging until `never`.
    fn lags(&self, from: Instant, until: Instant, never: Instant) -> Vec<Duration> {
        self.committed
            .iter()
            .enumerate()
            .filter(|(_, c)| (from..until).contains(*c))
            .map(|(i, c)| self.seen.get(i).unwrap_or(&never).saturating_duration_since(*c))
            .collect()
    }
}

async fn commit_probes(source: &Cluster, stop: Arc<AtomicBool>) -> Vec<Instant> {
    let client = source.client("postgres").await;
    let insert = client.prepare("INSERT INTO probes VALUES ($1, clock_timestamp())").await.unwrap();
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut committed = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let id = committed.len() as i64 + 1;
        client.execute(&insert, &[&id]).await.unwrap();
        committed.push(Instant::now());
    }
    committed
}

async fn watch_probes(target: &Cluster, stop: Arc<AtomicBool>, highest: Arc<AtomicU64>) -> Vec<Instant> {
    let client = target.client("postgres").await;
    let query = client.prepare("SELECT coalesce(max(id), 0) FROM probes").await.unwrap();
    let mut seen = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let max: i64 = client.query_one(&query, &[]).await.unwrap().get(0);
        let now = Instant::now();
        while (seen.len() as i64) < max {
            seen.push(now);
        }
        highest.store(max as u64, Ordering::Relaxed);
        tokio::time::sleep(POLL_EVERY).await;
    }
    seen
}

/// The `q` quantile (0..=1) of `samples`, nearest rank.
fn quantile(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn retained(samples: &Samples, subscription: &str) -> f64 {
    samples.value("ferry_source_slot_retained_wal_bytes", &[("subscription", subscription)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_down_for_a_minute_does_not_slow_the_other_pipeline_and_catches_up() {
    let test_started = Instant::now();
    // The test clusters commit asynchronously; the source here does not:
    // an asynchronous commit reaches the walsender only when the WAL writer
    // flushes it (every 200 ms), which would bury the pipeline's own lag in
    // that delay. (fsync stays off, so commits are cheap.)
    let source = Cluster::start_with(ClusterOptions {
        conf: vec!["synchronous_commit = on".into()],
        ..Default::default()
    });
    let (t1, t2) = (Cluster::start(), Cluster::start());
    let src = source.client("postgres").await;
    let schema = format!(
        "CREATE TABLE items_1 {TABLE}; CREATE TABLE items_2 {TABLE}; \
         CREATE TABLE probes (id bigint PRIMARY KEY, at timestamptz NOT NULL);"
    );
    for cluster in [&source, &t1, &t2] {
        exec(&cluster.client("postgres").await, &schema).await;
    }
    exec(
        &src,
        "INSERT INTO items_1 SELECT g, 0, md5(g::text) FROM generate_series(1, 5000) g; \
         INSERT INTO items_2 SELECT g, 0, md5(g::text) FROM generate_series(1, 5000) g;",
    )
    .await;

    let port = free_port();
    let daemon = Daemon::start(&with_server(port, &config(&source, &t1, &t2)));
    let http = Endpoints::on(port);
    http.wait_for_state("to-t1", State::Streaming, SETTLE).await;
    http.wait_for_state("to-t2", State::Streaming, SETTLE).await;

    // The load, for the whole test.
    let stop_load = Arc::new(AtomicBool::new(false));
    let source = Arc::new(source);
    let t2 = Arc::new(t2);
    let writers: Vec<_> = ["items_1", "items_2"]
        .into_iter()
        .map(|table| {
            let (source, stop) = (Arc::clone(&source), Arc::clone(&stop_load));
            tokio::spawn(async move { write_steadily(&source, table, stop).await })
        })
        .collect();
    let stop_probes = Arc::new(AtomicBool::new(false));
    let stop_watcher = Arc::new(AtomicBool::new(false));
    let probes_seen = Arc::new(AtomicU64::new(0));
    let prober = {
        let (source, stop) = (Arc::clone(&source), Arc::clone(&stop_probes));
        tokio::spawn(async move { commit_probes(&source, stop).await })
    };
    let watcher = {
        let (t2, stop, highest) = (Arc::clone(&t2), Arc::clone(&stop_watcher), Arc::clone(&probes_seen));
        tokio::spawn(async move { watch_probes(&t2, stop, highest).await })
    };

    let load_started = Instant::now();
    eprintln!("clusters and daemon ready after {:.1} s", test_started.elapsed().as_secs_f64());
    // A few seconds to settle into the load, then the baseline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let baseline_from = Instant::now();
    tokio::time::sleep(BASELINE).await;

    // The outage. Stopping and starting a server blocks this thread; the
    // probe tasks move to the other worker meanwhile.
    let before = http.metrics().await;
    let retained_before = retained(&before, "to-t1");
    let down_at = Instant::now();
    tokio::task::block_in_place(|| t1.crash());
    eprintln!("t1 down; to-t1 slot retained {retained_before} bytes at the last measurement");

    // to-t1's retained WAL at each new measurement (every 10 s) after the
    // stop. The one shown at the stop was taken up to 10 s before it, when
    // the slot still moved, so it may be larger than the first one after.
    let mut readings = Vec::new();
    let mut last = http.metrics().await;
    while down_at.elapsed() < OUTAGE {
        tokio::time::sleep(Duration::from_secs(1)).await;
        last = http.metrics().await;
        let value = retained(&last, "to-t1");
        if readings.last().unwrap_or(&retained_before) != &value {
            eprintln!(
                "{:>5.1}s into the outage: to-t1 slot retains {value} bytes",
                down_at.elapsed().as_secs_f64()
            );
            readings.push(value);
        }
    }
    let report = http.status().await;
    let back_at = Instant::now();
    tokio::task::block_in_place(|| t1.start_again());

    // While the target was away, its pipeline said so and its slot was seen
    // holding ever more WAL (measured every 10 s, from the source alone);
    // the healthy pipeline's slot was not held back.
    let down = [("subscription", "to-t1")];
    let healthy = [("subscription", "to-t2")];
    assert_eq!(last.value("ferry_pipeline_up", &down), 0.0, "{}", last.ferry_lines());
    assert!(last.value("ferry_errors_total", &[("kind", "target"), ("subscription", "to-t1")]) >= 1.0);
    assert_eq!(last.value("ferry_pipeline_up", &healthy), 1.0, "{}", last.ferry_lines());
    for kind in ["source", "target", "snapshot", "config", "slot"] {
        assert_eq!(last.value("ferry_errors_total", &[("kind", kind), ("subscription", "to-t2")]), 0.0);
    }
    let t1_status = report.pipelines.iter().find(|p| p.subscription == "to-t1").unwrap();
    assert_eq!(t1_status.state, State::Retrying, "{report:?}");
    assert!(t1_status.error.as_deref().is_some_and(|e| e.starts_with("target:")), "{report:?}");
    // Once the slot is idle its restart_lsn stays put, so each measurement
    // is larger than the one before (the source keeps writing).
    assert!(
        readings.len() >= 3 && readings.windows(2).all(|w| w[0] < w[1]),
        "the retained WAL of to-t1 did not grow at each measurement during the outage: {readings:?}"
    );
    let retained_after = *readings.last().unwrap();
    assert!(retained_after > retained_before, "before {retained_before}, then {readings:?}");
    assert!(
        retained(&last, "to-t2") < retained_after,
        "the healthy slot retains as much as the stopped one: {}",
        last.ferry_lines()
    );
    let lag_bytes = |labels| last.value("ferry_replication_lag_bytes", labels);
    assert!(lag_bytes(&down) > lag_bytes(&healthy), "{}", last.ferry_lines());

    // The target is back: its pipeline resumes at its next retry. The
    // first attempt failed at the stop and the next ones came 1, 2, 4, 8,
    // 16 and 32 s apart, so one falls about 63 s after the stop, a few
    // seconds after the target's return; were the restart slower than
    // that, the next one is 60 s later, which this wait allows.
    http.wait_for_state("to-t1", State::Streaming, Duration::from_secs(90)).await;
    let resumed_after = back_at.elapsed();
    let resumed_at = Instant::now();
    // Catching up under load, then the load stops.
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop_load.store(true, Ordering::Relaxed);
    let mut transactions = 0;
    for writer in writers {
        transactions += writer.await.unwrap();
    }
    let load_seconds = load_started.elapsed().as_secs_f64();
    stop_probes.store(true, Ordering::Relaxed);
    let committed = prober.await.unwrap();
    // The last probes are still under way: wait for them before stopping
    // the watcher.
    let deadline = Instant::now() + SETTLE;
    while probes_seen.load(Ordering::Relaxed) < committed.len() as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_watcher.store(true, Ordering::Relaxed);
    let seen = watcher.await.unwrap();
    let probes = Probes { committed, seen };
    let (source, t2) = (Arc::into_inner(source).unwrap(), Arc::into_inner(t2).unwrap());

    // Nothing lost: every table on every target equals the source.
    let src = source.client("postgres").await;
    let dst1 = t1.client("postgres").await;
    let dst2 = t2.client("postgres").await;
    let columns = "id, n, note";
    wait_for_same(&src, &dst1, "items_1", "items_1", columns, "id", SETTLE).await;
    wait_for_same(&src, &dst2, "items_2", "items_2", columns, "id", SETTLE).await;
    wait_for_same(&src, &dst2, "probes", "probes", "id, at", "id", SETTLE).await;
    for (target, table, columns) in
        [(&dst1, "items_1", columns), (&dst2, "items_2", columns), (&dst2, "probes", "id, at")]
    {
        let expected = checksum(&src, table, columns, "id").await;
        assert_eq!(checksum(target, table, columns, "id").await, expected, "{table}");
        assert!(expected.0 > 5000 || table == "probes", "{table}: {expected:?}");
    }
    // The tables of one subscription never reached the other's target.
    let stray: i64 = dst1.query_one("SELECT count(*) FROM items_2", &[]).await.unwrap().get::<_, i64>(0)
        + dst2.query_one("SELECT count(*) FROM items_1", &[]).await.unwrap().get::<_, i64>(0);
    assert_eq!(stray, 0);

    // The healthy pipeline's lag during the outage, against its own lag
    // before it in the same run.
    let never = Instant::now();
    let baseline = probes.lags(baseline_from, down_at, never);
    let outage = probes.lags(down_at, back_at, never);
    let catch_up = probes.lags(back_at, resumed_at + Duration::from_secs(5), never);
    let figures = |samples: &[Duration]| {
        format!(
            "{} probes, median {:.1} ms, p90 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            samples.len(),
            ms(quantile(samples, 0.5)),
            ms(quantile(samples, 0.9)),
            ms(quantile(samples, 0.95)),
            ms(quantile(samples, 0.99)),
            ms(quantile(samples, 1.0)),
        )
    };
    eprintln!("healthy pipeline lag, baseline ({BASELINE:?}): {}", figures(&baseline));
    eprintln!("healthy pipeline lag, t1 down ({OUTAGE:?}): {}", figures(&outage));
    eprintln!("healthy pipeline lag, t1 back and catching up: {}", figures(&catch_up));
    eprintln!(
        "to-t1 streaming again {:.1} s after t1 returned; {transactions} load transactions \
         ({:.0}/s); to-t1 slot retained {retained_before} B before the outage, {retained_after} B at its end; \
         test took {:.0} s",
        resumed_after.as_secs_f64(),
        transactions as f64 / load_seconds,
        test_started.elapsed().as_secs_f64()
    );
    assert!(baseline.len() as f64 >= 0.5 * BASELINE.as_secs_f64() / PROBE_EVERY.as_secs_f64());

    // The rule: each of the median and the 95th percentile during the
    // outage stays within
    //     3 × the same figure at baseline + the baseline's spread + one poll,
    // where the spread is the baseline's p90 minus its median.
    // - Same run, same machine: the bound moves with how fast this machine
    //   is today (2 shared cores, other work running), so no fixed number.
    // - The median says the usual lag holds; the 95th percentile catches
    //   stalls that come and go (say, the daemon blocking whenever the
    //   other pipeline retries): probes are committed at a fixed pace
    //   whether or not earlier ones arrived, so a stall covering more than
    //   5% of the outage shows as that many slow samples, and a healthy
    //   pipeline stopping outright fails the median.
    // - 3× absorbs the machine's noise between two windows (a neighbour's
    //   build starting), the spread term keeps a baseline that happens to be
    //   very tight from turning jitter into failure, and one poll interval
    //   is the measurement's own resolution.
    // Lag while t1 catches up is reported, not judged: its pipeline then
    // decodes a minute of WAL on the same two cores.
    let spread = quantile(&baseline, 0.9).saturating_sub(quantile(&baseline, 0.5));
    for (name, q) in [("median", 0.5), ("p95", 0.95)] {
        let allowed = quantile(&baseline, q) * 3 + spread + POLL_EVERY;
        let during = quantile(&outage, q);
        assert!(
            during <= allowed,
            "the healthy pipeline's {name} lag rose from {:.1} ms to {:.1} ms (allowed {:.1} ms) while \
             the other target was down\nbaseline: {}\noutage: {}",
            ms(quantile(&baseline, q)),
            ms(during),
            ms(allowed),
            figures(&baseline),
            figures(&outage),
        );
    }
    assert!(
        outage.len() as f64 >= 0.5 * OUTAGE.as_secs_f64() / PROBE_EVERY.as_secs_f64(),
        "too few probes during the outage: {}",
        outage.len()
    );
    drop(daemon);
}
