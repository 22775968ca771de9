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
    // Wait for the walsender to stop sending: ferry has read all it will
    // read while the target is locked.
    let sent = || async {
        let row = src
            .query_one("SELECT coalesce(max(sent_lsn)::text, '') FROM pg_stat_replication", &[])
            .await
            .unwrap();
        row.get::<_, String>(0)
    };
    let mut last = sent().await;
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = sent().await;
        if now == last {
            break;
        }
        last = now;
    }
    let waiting = peak_rss_mib(daemon.pid());
    exec(&locker, "COMMIT").await;
    wait_for_same(&src, &dst, "blobs", "blobs", "id, md5(b)", "id", SETTLE).await;
    assert!(waiting < before + 160, "peak RSS {waiting} MiB while stalled, {before} MiB before");
}
