//! A target that stalls: the reader, blocked on a full channel, still
//! reports to the source, so the connection is not timed out and nothing
//! has to start over; and what waits in memory stays bounded in bytes,
//! however large the rows.

mod support;

use std::time::Duration;

use support::daemon::{Daemon, wait_for_same};
use support::{Cluster, ClusterOptions, exec};

const SETTLE: Duration = Duration::from_secs(120);

/// A megabyte of random bytes (which TOAST does not compress), in a source
/// table `noise`, for rows of that size.
const NOISE: &str = "CREATE TABLE noise AS \
    SELECT decode(string_agg(md5(random()::text), ''), 'hex') AS b FROM generate_series(1, 65536)";

/// ferry streaming `table`, made by `schema` on both sides, from `source`
/// to a target of its own (`on_target` run there first).
struct Streaming {
    source: Cluster,
    target: Cluster,
    src: tokio_postgres::Client,
    dst: tokio_postgres::Client,
    daemon: Daemon,
    /// ferry's peak RSS once streaming, in MiB.
    rss_before: u64,
}

impl Streaming {
    async fn start(source: Cluster, schema: &str, on_target: &str, table: &str) -> Streaming {
        let target = Cluster::start();
        let src = source.client("postgres").await;
        let dst = target.client("postgres").await;
        exec(&src, schema).await;
        exec(&dst, schema).await;
        if !on_target.is_empty() {
            exec(&dst, on_target).await;
        }
        let config = support::daemon::config(
            &source.url("postgres"),
            &target.url("postgres"),
            "test",
            &[(table, table)],
            "snapshot = false",
        );
        let daemon = Daemon::start(&config);
        daemon.wait_for_log("streaming", SETTLE).await;
        let rss_before = peak_rss_mib(daemon.pid());
        Streaming { source, target, src, dst, daemon, rss_before }
    }

    /// A session on the target holding `table` locked until it commits.
    async fn lock_on_target(&self, table: &str) -> tokio_postgres::Client {
        let locker = self.target.client("postgres").await;
        exec(&locker, &format!("BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")).await;
        locker
    }

    /// Asserts that ferry's peak RSS grew by less than 160 MiB.
    fn assert_rss_bounded(&self) {
        let peak = peak_rss_mib(self.daemon.pid());
        assert!(peak < self.rss_before + 160, "peak RSS {peak} MiB, {} MiB before", self.rss_before);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_target_does_not_time_the_source_connection_out() {
    let source = Cluster::start_with(ClusterOptions {
        conf: vec!["wal_sender_timeout = 12s".into()],
        ..Default::default()
    });
    let run = Streaming::start(source, "CREATE TABLE items (id int PRIMARY KEY, v text)", "", "items").await;

    // The target's table is locked: the applier waits, the channel fills,
    // the reader waits on it.
    let locker = run.lock_on_target("items").await;
    let mut work = String::new();
    for n in 1..=6000 {
        work.push_str(&format!("BEGIN; INSERT INTO items VALUES ({n}, 'v{n}'); COMMIT;"));
    }
    // One transaction per row: far more events than the channel holds.
    exec(&run.src, &work).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    exec(&locker, "COMMIT").await;

    wait_for_same(&run.src, &run.dst, "items", "items", "id, v", "id", SETTLE).await;
    let logs = run.daemon.logs();
    assert!(!logs.contains("retrying"), "the source connection was kept: {logs}");
    assert!(!run.source.log().contains("replication timeout"), "{}", run.source.log());
}

/// The peak resident memory of process `pid`, in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/PID/status");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024
}

/// Rows of a megabyte each (two in their text form) while the target is
/// locked: the reader stops reading once a bounded number of bytes waits
/// for the applier, though the channel counts chunks of events, not bytes:
/// a chunk goes whenever the read buffer holds no whole message, so it
/// holds about one read (64 KiB) or one large message. All 200 rows would
/// be about 400 MiB; measured here, the peak grew by 15-20 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_rows_waiting_for_a_stalled_target_take_bounded_memory() {
    let schema = "CREATE TABLE blobs (id int PRIMARY KEY, b bytea)";
    let run = Streaming::start(Cluster::start(), schema, "", "blobs").await;
    let locker = run.lock_on_target("blobs").await;
    exec(&run.src, NOISE).await;
    // One transaction each, small enough not to be streamed.
    for id in 1..=200 {
        exec(&run.src, &format!("INSERT INTO blobs SELECT {id}, b || int4send({id}) FROM noise")).await;
    }
    until_the_source_stops_sending(&run.src).await;
    run.assert_rss_bounded();
    exec(&locker, "COMMIT").await;
    wait_for_same(&run.src, &run.dst, "blobs", "blobs", "id, md5(b)", "id", SETTLE).await;
}

/// Waits until the source's walsenders have sent nothing new for 3 s:
/// ferry has read all it will read while its target is locked.
async fn until_the_source_stops_sending(src: &tokio_postgres::Client) {
    let sent = || async {
        let sql = "SELECT coalesce(max(sent_lsn)::text, '') FROM pg_stat_replication";
        src.query_one(sql, &[]).await.unwrap().get::<_, String>(0)
    };
    let mut last = sent().await;
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = sent().await;
        if now == last {
            return;
        }
        last = now;
    }
}

/// One source transaction of 200 rows of a megabyte each into a target
/// table with a trigger that makes each take 50 ms: the rows wait for the
/// target, and only so many bytes of them may wait in ferry's memory. With
/// `row_security`, the target takes no COPY, and each row goes as a
/// statement sent ahead of the answers.
async fn a_slow_target_takes_large_rows(row_security: bool) {
    let slow = format!(
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN PERFORM pg_sleep(0.05); RETURN NEW; END';
         CREATE TRIGGER slow BEFORE INSERT ON blobs FOR EACH ROW EXECUTE FUNCTION slow(); {}",
        if row_security { "ALTER TABLE blobs ENABLE ROW LEVEL SECURITY" } else { "" }
    );
    let schema = "CREATE TABLE blobs (id int PRIMARY KEY, b bytea)";
    let run = Streaming::start(Cluster::start(), schema, &slow, "blobs").await;
    exec(&run.src, NOISE).await;
    exec(&run.src, "INSERT INTO blobs SELECT g, b || int4send(g) FROM noise, generate_series(1, 200) g")
        .await;
    wait_for_same(&run.src, &run.dst, "blobs", "blobs", "id, md5(b)", "id", SETTLE).await;
    run.assert_rss_bounded();
}

/// Before, a run of inserts held 64 rows back before it chose COPY, then
/// encoded them all into one buffer: 323 MiB here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_rows_copied_into_a_slow_target_take_bounded_memory() {
    a_slow_target_takes_large_rows(false).await;
}

/// Before, up to 2,048 statements waited for their answers whatever their
/// size: 732 MiB here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_rows_sent_as_statements_to_a_slow_target_take_bounded_memory() {
    a_slow_target_takes_large_rows(true).await;
}
