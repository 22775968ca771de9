//! A target that stalls longer than the source's `wal_sender_timeout`: the
//! reader, blocked on a full channel, still reports to the source, so the
//! connection is not timed out and nothing has to start over.

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
