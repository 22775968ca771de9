//! A target that stalls: the reader, blocked on a full channel, still
//! reports to the source, so the connection is not timed out and nothing
//! has to start over; and what waits in memory stays bounded in bytes,
//! however large the rows.

mod support;

use std::time::Duration;

use support::daemon::{Daemon, wait_for_same};
use support::{Cluster, ClusterOptions, exec};

const SETTLE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_target_does_not_time_the_source_connection_out() {
    let source = Cluster::start_with(ClusterOptions {
        conf: vec!["wal_sender_timeout = 12s".into()],
        ..Default::default()
    });
    let target = Cluster::start();
    let src = source.client("postgres").await;
    let dst = target.client("postgres").await;
    let schema = "CREATE TABLE items (id int PRIMARY KEY, v text)";
    exec(&src, schema).await;
    exec(&dst, schema).await;
    let config = support::daemon::config(
        &source.url("postgres"),
        &target.url("postgres"),
        "test",
        &[("items", "items")],
        "snapshot = false",
    );
    let daemon = Daemon::start(&config);
    daemon.wait_for_log("streaming", SETTLE).await;

    // The target's table is locked: the applier waits, the channel fills,
    // the reader waits on it.
    let locker = target.client("postgres").await;
    exec(&locker, "BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE").await;
    let mut work = String::new();
    for n in 1..=6000 {
        work.push_str(&format!("BEGIN; INSERT INTO items VALUES ({n}, 'v{n}'); COMMIT;"));
    }
    // One transaction per row: far more events than the channel holds.
    exec(&src, &work).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    exec(&locker, "COMMIT").await;

    wait_for_same(&src, &dst, "items", "items", "id, v", "id", SETTLE).await;
    let logs = daemon.logs();
    assert!(!logs.contains("retrying"), "the source connection was kept: {logs}");
    assert!(!source.log().contains("replication timeout"), "{}", source.log());
    drop(daemon);
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
    let (source, target) = (Cluster::start(), Cluster::start());
    let src = source.client("postgres").await;
    let dst = target.client("postgres").await;
    let schema = "CREATE TABLE blobs (id int PRIMARY KEY, b bytea)";
    exec(&src, schema).await;
    exec(&dst, schema).await;
    let config = support::daemon::config(
        &source.url("postgres"),
        &target.url("postgres"),
        "test",
        &[("blobs", "blobs")],
        "snapshot = false",
    );
    let daemon = Daemon::start(&config);
    daemon.wait_for_log("streaming", SETTLE).await;
    let before = peak_rss_mib(daemon.pid());

    let locker = target.client("postgres").await;
    exec(&locker, "BEGIN; LOCK TABLE blobs IN ACCESS EXCLUSIVE MODE").await;
    // Random bytes, so that TOAST does not compress them; one transaction
    // each, small enough not to be streamed.
    exec(&src, "CREATE TABLE noise AS SELECT decode(string_agg(md5(random()::text), ''), 'hex') AS b FROM generate_series(1, 65536)").await;
    for id in 1..=200 {
        exec(&src, &format!("INSERT INTO blobs SELECT {id}, b || int4send({id}) FROM noise")).await;
    }
    until_the_source_stops_sending(&src).await;
    let waiting = peak_rss_mib(daemon.pid());
    exec(&locker, "COMMIT").await;
    wait_for_same(&src, &dst, "blobs", "blobs", "id, md5(b)", "id", SETTLE).await;
    assert!(waiting < before + 160, "peak RSS {waiting} MiB while stalled, {before} MiB before");
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
/// statement sent ahead of the answers. Returns ferry's peak RSS before and
/// after, in MiB.
async fn peak_rss_while_a_slow_target_takes_large_rows(row_security: bool) -> (u64, u64) {
    let (source, target) = (Cluster::start(), Cluster::start());
    let src = source.client("postgres").await;
    let dst = target.client("postgres").await;
    let schema = "CREATE TABLE blobs (id int PRIMARY KEY, b bytea)";
    exec(&src, schema).await;
    exec(&dst, schema).await;
    exec(
        &dst,
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN PERFORM pg_sleep(0.05); RETURN NEW; END';
         CREATE TRIGGER slow BEFORE INSERT ON blobs FOR EACH ROW EXECUTE FUNCTION slow()",
    )
    .await;
    if row_security {
        exec(&dst, "ALTER TABLE blobs ENABLE ROW LEVEL SECURITY").await;
    }
    let config = support::daemon::config(
        &source.url("postgres"),
        &target.url("postgres"),
        "test",
        &[("blobs", "blobs")],
        "snapshot = false",
    );
    let daemon = Daemon::start(&config);
    daemon.wait_for_log("streaming", SETTLE).await;
    let before = peak_rss_mib(daemon.pid());
    // Random bytes, so that TOAST does not compress them.
    exec(&src, "CREATE TABLE noise AS SELECT decode(string_agg(md5(random()::text), ''), 'hex') AS b FROM generate_series(1, 65536)").await;
    exec(&src, "INSERT INTO blobs SELECT g, b || int4send(g) FROM noise, generate_series(1, 200) g").await;
    wait_for_same(&src, &dst, "blobs", "blobs", "id, md5(b)", "id", SETTLE).await;
    (before, peak_rss_mib(daemon.pid()))
}

/// Before, a run of inserts held 64 rows back before it chose COPY, then
/// encoded them all into one buffer: about 300 MiB here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_rows_copied_into_a_slow_target_take_bounded_memory() {
    let (before, peak) = peak_rss_while_a_slow_target_takes_large_rows(false).await;
    assert!(peak < before + 160, "peak RSS {peak} MiB, {before} MiB before");
}

/// Before, up to 2,048 statements waited for their answers whatever their
/// size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_rows_sent_as_statements_to_a_slow_target_take_bounded_memory() {
    let (before, peak) = peak_rss_while_a_slow_target_takes_large_rows(true).await;
    assert!(peak < before + 160, "peak RSS {peak} MiB, {before} MiB before");
}
