//! Failures a replicator meets in production: a target that goes away, a
//! change the target refuses for good, a slot that vanished or was
//! invalidated, a table the source cannot identify rows of, and a source
//! that writes nothing the subscription reads.

mod support;

use support::exec;

use std::time::Duration;

use support::daemon::{Daemon, wait_for_same};
use support::{Cluster, ClusterOptions};

const SETTLE: Duration = Duration::from_secs(120);

/// Two subscriptions from one source: `a` into `target_a`, `b` into `target_b`.
fn two_pipelines(source: &Cluster, target_a: &Cluster, target_b: &Cluster) -> String {
    format!(
        "[sources.src]\nurl = \"{}\"\n\n[targets.a]\nurl = \"{}\"\n\n[targets.b]\nurl = \"{}\"\n\n\
         [[subscriptions]]\nname = \"to-a\"\nsource = \"src\"\ntarget = \"a\"\n\
         [[subscriptions.tables]]\nfrom = \"items_a\"\n\n\
         [[subscriptions]]\nname = \"to-b\"\nsource = \"src\"\ntarget = \"b\"\n\
         [[subscriptions.tables]]\nfrom = \"items_b\"\n",
        source.url("postgres"),
        target_a.url("postgres"),
        target_b.url("postgres")
    )
}

async fn setup_two(check: &str) -> (Cluster, Cluster, Cluster) {
    let (source, target_a, target_b) = (Cluster::start(), Cluster::start(), Cluster::start());
    let schema = format!(
        "CREATE TABLE items_a (id int PRIMARY KEY, qty int {check}); CREATE TABLE items_b (id int PRIMARY KEY, qty int);"
    );
    exec(&source.client("postgres").await, &schema.replace(check, "")).await;
    exec(&target_a.client("postgres").await, &schema).await;
    exec(&target_b.client("postgres").await, &schema).await;
    (source, target_a, target_b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_goes_away_is_retried_while_other_pipelines_carry_on() {
    let (source, target_a, target_b) = setup_two("").await;
    let daemon = Daemon::start(&two_pipelines(&source, &target_a, &target_b));
    daemon.wait_for_log("subscription=to-a slot=ferry_to_a", SETTLE).await;
    daemon.wait_for_log("subscription=to-b slot=ferry_to_b", SETTLE).await;
    let src = source.client("postgres").await;

    target_a.stop();
    for i in 0..20 {
        exec(&src, &format!("INSERT INTO items_a VALUES ({i}, {i}); INSERT INTO items_b VALUES ({i}, {i});"))
            .await;
    }
    // b keeps up while a is down.
    let dst_b = target_b.client("postgres").await;
    wait_for_same(&src, &dst_b, "items_b", "items_b", "id, qty", "id", SETTLE).await;
    daemon.wait_for_log("retrying in", SETTLE).await;
    let retry = daemon.wait_for_log("subscription=to-a", SETTLE).await;
    assert!(!retry.contains("password"), "{retry}");

    target_a.start_again();
    let dst_a = target_a.client("postgres").await;
    wait_for_same(&src, &dst_a, "items_a", "items_a", "id, qty", "id", SETTLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_the_target_refuses_stops_only_its_pipeline_with_a_clear_error() {
    let (source, target_a, target_b) = setup_two("CHECK (qty < 100)").await;
    let mut daemon = Daemon::start(&two_pipelines(&source, &target_a, &target_b));
    daemon.wait_for_log("subscription=to-a slot=ferry_to_a", SETTLE).await;
    let src = source.client("postgres").await;
    // A value no timestamp, port or process id in the log line contains.
    exec(&src, "INSERT INTO items_a VALUES (1, 5); INSERT INTO items_a VALUES (7, 98765);").await;

    let stopped = daemon.wait_for_log("pipeline stopped", SETTLE).await;
    for needle in ["to-a", "23514", "items_a", "(id)=(7)", "check constraint"] {
        assert!(stopped.contains(needle), "the error should name {needle}: {stopped}");
    }
    assert!(!stopped.contains("98765"), "no row values beyond the key: {stopped}");

    // The other pipeline is unaffected.
    exec(&src, "INSERT INTO items_b VALUES (1, 1), (2, 2)").await;
    let dst_b = target_b.client("postgres").await;
    wait_for_same(&src, &dst_b, "items_b", "items_b", "id, qty", "id", SETTLE).await;
    assert!(daemon.is_running());
    // Nothing of the refused transaction was applied.
    let rows: i64 = target_a
        .client("postgres")
        .await
        .query_one("SELECT count(*) FROM items_a", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
}

fn one_pipeline(source: &Cluster, target: &Cluster) -> String {
    support::daemon::config(
        &source.url("postgres"),
        &target.url("postgres"),
        "test",
        &[("items", "items")],
        "",
    )
}

async fn setup_one(source_options: ClusterOptions) -> (Cluster, Cluster) {
    let (source, target) = (Cluster::start_with(source_options), Cluster::start());
    let schema = "CREATE TABLE items (id int PRIMARY KEY, qty int); CREATE TABLE unrelated (id serial PRIMARY KEY, pad text);";
    exec(&source.client("postgres").await, schema).await;
    exec(&target.client("postgres").await, schema).await;
    (source, target)
}

/// A first copy the target refuses (a check constraint here) stops the
/// pipeline and drops the slot it made: with no progress on the target the
/// next start makes a new one anyway, and kept, it would hold the source's
/// WAL until then. Once the target takes the rows, a start copies them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_copy_the_target_refuses_stops_and_leaves_no_slot() {
    let (source, target) = setup_one(ClusterOptions::default()).await;
    let (src, dst) = (source.client("postgres").await, target.client("postgres").await);
    exec(&src, "INSERT INTO items SELECT g, g FROM generate_series(1, 100) g").await;
    exec(&dst, "ALTER TABLE items ADD CONSTRAINT small CHECK (qty < 50)").await;
    let config = one_pipeline(&source, &target);
    let mut daemon = Daemon::start(&config);
    assert_eq!(daemon.wait_for_exit(SETTLE).await, Some(1));
    let logs = daemon.logs();
    assert!(logs.contains("23514") && logs.contains("slot dropped"), "{logs}");
    let slots: i64 = src.query_one("SELECT count(*) FROM pg_replication_slots", &[]).await.unwrap().get(0);
    assert_eq!(slots, 0);

    exec(&dst, "ALTER TABLE items DROP CONSTRAINT small").await;
    let _daemon = Daemon::start(&config);
    wait_for_same(&src, &dst, "items", "items", "id, qty", "id", SETTLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_slot_is_a_clear_error_not_a_fresh_start() {
    let (source, target) = setup_one(ClusterOptions::default()).await;
    let config = one_pipeline(&source, &target);
    let daemon = Daemon::start(&config);
    daemon.wait_for_log("streaming", SETTLE).await;
    assert_eq!(daemon.signal_and_wait("TERM").0, Some(0));
    exec(&source.client("postgres").await, "SELECT pg_drop_replication_slot('ferry_test')").await;

    let mut daemon = Daemon::start(&config);
    assert_eq!(daemon.wait_for_exit(SETTLE).await, Some(1));
    let logs = daemon.logs();
    assert!(logs.contains("slot ferry_test no longer exists"), "{logs}");
    let slots: i64 = source
        .client("postgres")
        .await
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "ferry must not silently create a new slot");
}

/// A source url that now reaches another database of the same server finds
/// the slot in the old one (slot names are the server's): the pipeline
/// stops naming the slot's database, and makes nothing in the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_url_moved_to_another_database_stops_naming_the_slots_database() {
    let (source, target) = setup_one(ClusterOptions::default()).await;
    exec(&source.client("postgres").await, "CREATE DATABASE other").await;
    let other = source.client("other").await;
    exec(&other, "CREATE TABLE items (id int PRIMARY KEY, qty int)").await;
    let config = one_pipeline(&source, &target);
    let daemon = Daemon::start(&config);
    daemon.wait_for_log("streaming", SETTLE).await;
    assert_eq!(daemon.signal_and_wait("TERM").0, Some(0));

    let moved = config.replace(&source.url("postgres"), &source.url("other"));
    assert_ne!(moved, config);
    let mut daemon = Daemon::start(&moved);
    assert_eq!(daemon.wait_for_exit(SETTLE).await, Some(1));
    let logs = daemon.logs();
    assert!(logs.contains("slot ferry_test on the source's server belongs to database postgres"), "{logs}");
    let made: i64 = other.query_one("SELECT count(*) FROM pg_publication", &[]).await.unwrap().get(0);
    assert_eq!(made, 0, "no publication in the database the url reaches now");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_slot_is_a_clear_error() {
    let options = ClusterOptions {
        conf: vec![
            "max_slot_wal_keep_size = 1MB".into(),
            "wal_keep_size = 0".into(),
            "max_wal_size = 32MB".into(),
            "min_wal_size = 32MB".into(),
        ],
        ..Default::default()
    };
    let (source, target) = setup_one(options).await;
    let config = one_pipeline(&source, &target);
    let daemon = Daemon::start(&config);
    daemon.wait_for_log("streaming", SETTLE).await;
    assert_eq!(daemon.signal_and_wait("TERM").0, Some(0));
    let src = source.client("postgres").await;
    for _ in 0..4 {
        exec(&src, "INSERT INTO unrelated (pad) SELECT repeat('x', 1000) FROM generate_series(1, 20000); SELECT pg_switch_wal(); CHECKPOINT;").await;
    }
    let status: String = src
        .query_one("SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'ferry_test'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "lost", "the test needs the server to invalidate the slot");

    let mut daemon = Daemon::start(&config);
    assert_eq!(daemon.wait_for_exit(SETTLE).await, Some(1));
    assert!(daemon.logs().contains("was invalidated"), "{}", daemon.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_identity_nothing_is_refused_with_what_to_do() {
    // The second leaves `REPLICA IDENTITY USING INDEX` without its index:
    // published, the table would refuse the source's own updates.
    for identity in [
        "ALTER TABLE items REPLICA IDENTITY NOTHING",
        "CREATE UNIQUE INDEX items_id ON items (id); ALTER TABLE items REPLICA IDENTITY USING INDEX items_id;
         DROP INDEX items_id",
    ] {
        let (source, target) = setup_one(ClusterOptions::default()).await;
        let src = source.client("postgres").await;
        exec(&src, identity).await;
        let mut daemon = Daemon::start(&one_pipeline(&source, &target));
        assert_eq!(daemon.wait_for_exit(SETTLE).await, Some(1));
        let logs = daemon.logs();
        assert!(logs.contains("no replica identity") && logs.contains("REPLICA IDENTITY"), "{logs}");
        exec(&src, "INSERT INTO items VALUES (1, 1); UPDATE items SET qty = 2; DELETE FROM items").await;
    }
}

/// A source table identified by another unique index (`REPLICA IDENTITY
/// USING INDEX`) keys its changes by that index's columns: a target that
/// lacks one is refused at start, as `ferry validate` refuses it. Before,
/// the start went by the primary key and streamed, and the pipeline
/// stopped at the table's first change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_lacking_a_replica_identity_index_column_is_refused_at_start() {
    let (source, target) = setup_one(ClusterOptions::default()).await;
    exec(
        &source.client("postgres").await,
        "CREATE UNIQUE INDEX items_qty ON items (qty); ALTER TABLE items ALTER qty SET NOT NULL;
         ALTER TABLE items REPLICA IDENTITY USING INDEX items_qty",
    )
    .await;
    exec(&target.client("postgres").await, "ALTER TABLE items DROP COLUMN qty").await;
    let mut daemon = Daemon::start(&one_pipeline(&source, &target));
    assert_eq!(daemon.wait_for_exit(SETTLE).await, Some(1), "{}", daemon.logs());
    let logs = daemon.logs();
    assert!(logs.contains("qty") && !logs.contains("streaming"), "{logs}");
}

/// A target column `GENERATED ALWAYS AS IDENTITY` (the same DDL on both
/// sides, say) takes only DEFAULT in an update, so it is refused at start
/// with the ALTER that fixes it; after that ALTER, updates replicate.
/// Before, the start streamed and the first update of the table stopped
/// the pipeline (428C9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_always_target_column_is_refused_at_start_with_its_remedy() {
    let (source, target) = setup_one(ClusterOptions::default()).await;
    let (src, dst) = (source.client("postgres").await, target.client("postgres").await);
    let schema = "ALTER TABLE items ADD COLUMN number bigint GENERATED ALWAYS AS IDENTITY";
    exec(&src, schema).await;
    exec(&dst, schema).await;
    let config = one_pipeline(&source, &target);
    let mut daemon = Daemon::start(&config);
    assert_eq!(daemon.wait_for_exit(SETTLE).await, Some(1), "{}", daemon.logs());
    let logs = daemon.logs();
    assert!(
        logs.contains("ALTER COLUMN \"number\" SET GENERATED BY DEFAULT") && !logs.contains("streaming"),
        "{logs}"
    );

    exec(&dst, "ALTER TABLE items ALTER COLUMN number SET GENERATED BY DEFAULT").await;
    let _daemon = Daemon::start(&config);
    exec(&src, "INSERT INTO items (id, qty) VALUES (1, 1), (2, 2); UPDATE items SET qty = qty + 10").await;
    wait_for_same(&src, &dst, "items", "items", "id, qty, number", "id", SETTLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_source_still_advances_its_slot() {
    let (source, target) = setup_one(ClusterOptions::default()).await;
    let daemon = Daemon::start(&one_pipeline(&source, &target));
    daemon.wait_for_log("streaming", SETTLE).await;
    let src = source.client("postgres").await;
    // Only a table no subscription reads changes.
    exec(&src, "INSERT INTO unrelated (pad) SELECT 'x' FROM generate_series(1, 1000)").await;
    let written: String = src.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
    let written: ferry::pg::Lsn = written.parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let confirmed: String = src
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'ferry_test'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if confirmed.parse::<ferry::pg::Lsn>().unwrap() >= written {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "confirmed_flush_lsn {confirmed} stayed before {written} for a minute"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_pipeline_still_waiting_for_a_server_that_never_answers() {
    // A server that accepts connections and says nothing, as one stuck or
    // behind a proxy whose backend is gone; `connect_timeout=0` waits for
    // it for ever, as libpq would.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().collect();
        drop(held);
    });
    let url = format!("postgresql://ferry@127.0.0.1:{port}/app?sslmode=disable&connect_timeout=0");
    let config = support::daemon::config(&url, &url, "stuck", &[("items", "items")], "");
    let daemon = Daemon::start(&config);
    daemon.wait_for_log("starting pipeline", SETTLE).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, _) = daemon.signal_and_wait("TERM");
    assert_eq!(code, Some(0), "SIGTERM should end ferry cleanly while it is connecting");
}

/// A source that stops answering while ferry streams from it (its
/// walsender frozen here, as a host gone without a reset looks: the kernel
/// still acknowledges) does not hold up SIGTERM: ending the stream waits
/// for an answer a bounded time, then drops the connection. Before, the
/// exit waited for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_pipeline_whose_source_stopped_answering() {
    let (source, target) = setup_one(ClusterOptions::default()).await;
    let daemon = Daemon::start(&one_pipeline(&source, &target));
    daemon.wait_for_log("streaming", SETTLE).await;
    let walsender = support::walsender_of(&source.client("postgres").await, "ferry_test").await;
    support::send_signal("STOP", walsender);
    let (code, _) = daemon.signal_and_wait("TERM");
    support::send_signal("CONT", walsender);
    assert_eq!(code, Some(0), "SIGTERM should end ferry cleanly");
}

/// A pipeline that stopped with an error and was then taken out of the
/// config no longer counts: SIGTERM ends the daemon with 0, as README
/// says. Before, the exit code was 1 for the error of a subscription no
/// longer configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_subscription_removed_from_the_config_no_longer_fails_the_exit() {
    let (source, target_a, target_b) = setup_two("").await;
    let both = two_pipelines(&source, &target_a, &target_b);
    let broken = both.replace("from = \"items_a\"", "from = \"no_such_table\"");
    let daemon = Daemon::start(&broken);
    daemon.wait_for_log("pipeline stopped", SETTLE).await;
    daemon.wait_for_log("streaming", SETTLE).await;
    let without_a = format!(
        "[sources.src]\nurl = \"{}\"\n\n[targets.b]\nurl = \"{}\"\n\n\
         [[subscriptions]]\nname = \"to-b\"\nsource = \"src\"\ntarget = \"b\"\n\
         [[subscriptions.tables]]\nfrom = \"items_b\"\n",
        source.url("postgres"),
        target_b.url("postgres")
    );
    daemon.reload(&without_a);
    daemon.wait_for_log("subscription removed", SETTLE).await;
    let (code, _) = daemon.signal_and_wait("TERM");
    assert_eq!(code, Some(0), "the removed subscription's old error still counted");
}

/// A source stopped cleanly (a fast shutdown, as for a restart or a minor
/// upgrade) ends each walsender's stream with CommandComplete once its
/// client has confirmed everything sent, not with CopyDone. That is the
/// stream ending, retried like any other end, not a protocol error that
/// stops the pipeline for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_restart_is_retried() {
    let (source, target) = setup_one(ClusterOptions::default()).await;
    let daemon = Daemon::start(&one_pipeline(&source, &target));
    daemon.wait_for_log("streaming", SETTLE).await;
    let src = source.client("postgres").await;
    exec(&src, "INSERT INTO items SELECT g, g FROM generate_series(1, 100) g").await;
    let dst = target.client("postgres").await;
    wait_for_same(&src, &dst, "items", "items", "id, qty", "id", SETTLE).await;
    // Let an idle keepalive confirm all that was sent, as on a quiet source.
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| source.restart());

    let src = source.client("postgres").await;
    exec(&src, "INSERT INTO items SELECT g, g FROM generate_series(101, 200) g").await;
    wait_for_same(&src, &dst, "items", "items", "id, qty", "id", SETTLE).await;
    let logs = daemon.logs();
    assert!(!logs.contains("pipeline stopped"), "{logs}");
}

/// A second signal does not wait for the stop's grace period (here held up
/// by a target statement waiting on a lock): ferry exits at once, as if
/// killed, with code 130 (SIGINT's), and the next start applies what the
/// target did not commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_and_loses_nothing() {
    let (stuck, mut daemon) = StuckOnALock::start().await;
    let pid = daemon.pid() as i32;
    support::send_signal("TERM", pid);
    daemon.wait_for_log("stopping", SETTLE).await;
    support::send_signal("INT", pid);
    assert_eq!(daemon.wait_for_exit(SETTLE).await, Some(130), "{}", daemon.logs());
    assert!(daemon.logs().contains("second signal: exiting at once"), "{}", daemon.logs());
    stuck.loses_nothing().await;
}

/// A target that does not answer (ferry's statement waits on a lock held
/// by someone else) does not hold up the exit: after a grace period the
/// connection is dropped, the target rolls the transaction back, and the
/// next start applies it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_stuck_on_a_lock_does_not_hold_up_the_exit_and_loses_nothing() {
    let (stuck, daemon) = StuckOnALock::start().await;
    let (code, _) = tokio::task::block_in_place(|| daemon.signal_and_wait("TERM"));
    assert_eq!(code, Some(0));
    stuck.loses_nothing().await;
}

/// Without the replication origin functions, the target session of a
/// stopped pipeline left waiting on a lock (past the stop's grace) still
/// commits once the lock goes. The next start waits for that session to end
/// (an advisory lock stands in for the origin, which one session holds at a
/// time) instead of reading the progress before that commit and applying
/// the same transaction again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_origins_a_session_left_on_a_lock_is_waited_for_not_applied_again() {
    let (stuck, daemon) = StuckOnALock::start_without_origins().await;
    let (code, _) = tokio::task::block_in_place(|| daemon.signal_and_wait("TERM"));
    assert_eq!(code, Some(0));
    let daemon = Daemon::start(&stuck.config);
    daemon.wait_for_log("another session of this subscription is still open", SETTLE).await;
    exec(&stuck.holder, "ROLLBACK").await;
    exec(&stuck.src, "INSERT INTO items VALUES (2, 2)").await;
    wait_for_same(&stuck.src, &stuck.dst, "items", "items", "id, qty", "id", SETTLE).await;
    let logs = daemon.logs();
    assert!(!logs.contains("23505") && !logs.contains("pipeline stopped"), "{logs}");
}

/// A pipeline (its daemon returned beside) whose target statement waits on
/// a lock that `holder` holds in an open transaction.
struct StuckOnALock {
    source: Cluster,
    target: Cluster,
    config: String,
    src: tokio_postgres::Client,
    dst: tokio_postgres::Client,
    holder: tokio_postgres::Client,
}

impl StuckOnALock {
    async fn start() -> (StuckOnALock, Daemon) {
        let (source, target) = setup_one(ClusterOptions::default()).await;
        let config = one_pipeline(&source, &target);
        StuckOnALock::stuck(source, target, config).await
    }

    /// With ferry on the target as a role that may write the table but not
    /// use replication origins.
    async fn start_without_origins() -> (StuckOnALock, Daemon) {
        let (source, target) = setup_one(ClusterOptions::default()).await;
        exec(
            &target.client("postgres").await,
            "CREATE ROLE ferry_dst LOGIN; GRANT CREATE ON DATABASE postgres TO ferry_dst;
             GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON items TO ferry_dst;",
        )
        .await;
        let config = support::daemon::config(
            &source.url("postgres"),
            &target.conninfo("ferry_dst", "postgres"),
            "test",
            &[("items", "items")],
            "",
        );
        StuckOnALock::stuck(source, target, config).await
    }

    async fn stuck(source: Cluster, target: Cluster, config: String) -> (StuckOnALock, Daemon) {
        let daemon = Daemon::start(&config);
        daemon.wait_for_log("streaming", SETTLE).await;
        let (src, dst) = (source.client("postgres").await, target.client("postgres").await);
        let holder = target.client("postgres").await;
        exec(&holder, "BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE").await;
        exec(&src, "INSERT INTO items VALUES (1, 1)").await;
        let waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND backend_type = 'client backend'";
        let deadline = std::time::Instant::now() + SETTLE;
        while dst.query_one(waiting, &[]).await.unwrap().get::<_, i64>(0) == 0 {
            assert!(std::time::Instant::now() < deadline, "ferry never waited on the lock");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (StuckOnALock { source, target, config, src, dst, holder }, daemon)
    }

    /// Once the lock is given up, a new start applies the row the stopped
    /// one did not commit, and what comes after.
    async fn loses_nothing(self) {
        exec(&self.holder, "ROLLBACK").await;
        let daemon = Daemon::start(&self.config);
        exec(&self.src, "INSERT INTO items VALUES (2, 2)").await;
        wait_for_same(&self.src, &self.dst, "items", "items", "id, qty", "id", SETTLE).await;
        drop((daemon, self.source, self.target));
    }
}
