//! Config changes applied to a running daemon (SIGHUP): a table added to a
//! subscription is copied under its own snapshot while the others keep
//! streaming, then catches up; a removed table stops; a removed
//! subscription stops but keeps its slot until `ferry drop`.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::daemon::{Daemon, checksum, wait_for_same};
use support::endpoints::{Endpoints, Samples, with_server};
use support::{Cluster, exec, free_port};

const WAIT: Duration = Duration::from_secs(120);
const SCHEMA: &str = "CREATE TABLE steady (id bigserial PRIMARY KEY, note text);
     CREATE TABLE added (id int PRIMARY KEY, counter int NOT NULL, note text);";

fn config(source: &Cluster, target: &Cluster, tables: &[&str]) -> String {
    let tables: Vec<(&str, &str)> = tables.iter().map(|t| (*t, *t)).collect();
    support::daemon::config(&source.url("postgres"), &target.url("postgres"), "sub", &tables, "")
}

async fn setup() -> (Cluster, Cluster, tokio_postgres::Client, tokio_postgres::Client) {
    let (source, target) = (Cluster::start(), Cluster::start());
    let (src, dst) = (source.client("postgres").await, target.client("postgres").await);
    exec(&src, SCHEMA).await;
    exec(&dst, SCHEMA).await;
    exec(&src, "INSERT INTO added SELECT g, 0, 'row ' || g FROM generate_series(1, 20000) g").await;
    exec(&src, "INSERT INTO steady (note) SELECT 'before' FROM generate_series(1, 100)").await;
    (source, target, src, dst)
}

/// Writes to both tables until stopped: a row into `steady`, and a bump of
/// one `added` row, plus an insert now and then, per transaction.
fn write_until_stopped(source: &Cluster, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let url = source.url("postgres");
    tokio::spawn(async move {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let id = n % 20000 + 1;
            let mut sql = format!(
                "BEGIN; INSERT INTO steady (note) VALUES ('live {n}');
                 UPDATE added SET counter = counter + 1 WHERE id = {id};"
            );
            if n.is_multiple_of(10) {
                sql.push_str(&format!("INSERT INTO added VALUES ({}, 0, 'live');", 100_000 + n));
            }
            sql.push_str("COMMIT;");
            client.batch_execute(&sql).await.unwrap();
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        n
    })
}

async fn assert_same(src: &tokio_postgres::Client, dst: &tokio_postgres::Client) {
    wait_for_same(src, dst, "steady", "steady", "id, note", "id", WAIT).await;
    wait_for_same(src, dst, "added", "added", "id, counter, note", "id", WAIT).await;
}

async fn copied_tables(dst: &tokio_postgres::Client) -> Vec<String> {
    let rows = dst
        .query("SELECT source_table FROM ferry.tables WHERE NOT copying AND NOT removed ORDER BY 1", &[])
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// Runs ferry on `tables` until it streams, then stops it: the
/// subscription has its slot and its progress, as after any earlier run.
async fn streamed_once(source: &Cluster, target: &Cluster, tables: &[&str]) {
    let daemon = Daemon::start(&config(source, target, tables));
    daemon.wait_for_log("streaming", WAIT).await;
    daemon.signal_and_wait("TERM");
}

/// Reads `slot` (of `publication`) from `source` until dropped, as another
/// reader would.
async fn hold_slot(
    source: &Cluster,
    slot: &str,
    publication: &str,
) -> ferry::pg::replication::ReplicationStream {
    use ferry::pg::replication::{ReplicationClient, StartOptions};
    let info = source.url("postgres").parse().unwrap();
    let options = StartOptions {
        publications: vec![publication.into()],
        protocol_version: None,
        messages: false,
        streaming: false,
    };
    let reader = ReplicationClient::connect(&info).await.unwrap();
    reader.start(slot, ferry::pg::Lsn::ZERO, &options).await.unwrap()
}

/// `daemon` stops, refusing to copy into `added` while it holds a row of
/// the target's own, and that one row is still there.
async fn assert_refused_and_kept(mut daemon: Daemon, dst: &tokio_postgres::Client) {
    assert_eq!(daemon.wait_for_exit(WAIT).await, Some(1));
    let logs = daemon.logs();
    assert!(logs.contains(r#"target table "public"."added" is not empty"#), "{logs}");
    let rows: i64 = dst.query_one("SELECT count(*) FROM added", &[]).await.unwrap().get(0);
    assert_eq!(rows, 1, "the target's own row is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_added_to_a_running_subscription_is_copied_while_the_others_stream() {
    let (source, target, src, dst) = setup().await;
    let daemon = Daemon::start(&config(&source, &target, &["steady"]));
    daemon.wait_for_log("streaming", WAIT).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = write_until_stopped(&source, stop.clone());

    // Hold the copy at its first row: a lock on the target table that
    // COPY has to wait for, taken in a transaction of the test's own.
    let (holder, connection) =
        tokio_postgres::connect(&target.url("postgres"), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    exec(&holder, "BEGIN; LOCK TABLE added IN SHARE MODE").await;
    daemon.reload(&config(&source, &target, &["steady", "added"]));
    daemon.wait_for_log("copying tables added to the subscription", WAIT).await;

    // While the copy waits, the other table keeps streaming.
    exec(&src, "INSERT INTO steady (note) VALUES ('during the copy')").await;
    let deadline = std::time::Instant::now() + WAIT;
    while dst.query_opt("SELECT 1 FROM steady WHERE note = 'during the copy'", &[]).await.unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "steady stopped streaming during the copy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(copied_tables(&dst).await, vec![r#""public"."steady""#], "the copy has not committed yet");
    let copied: i64 = dst.query_one("SELECT count(*) FROM added", &[]).await.unwrap().get(0);
    assert_eq!(copied, 0);

    exec(&holder, "COMMIT").await;
    // The stream went past the copy's snapshot while the copy waited: it
    // goes back for the changes the copy missed.
    daemon.wait_for_log("going back to", WAIT).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let transactions = writer.await.unwrap();
    assert_same(&src, &dst).await;
    let bumps: i64 = dst.query_one("SELECT sum(counter) FROM added", &[]).await.unwrap().get(0);
    assert_eq!(bumps as u64, transactions, "every bump counted once");
    assert_eq!(copied_tables(&dst).await.len(), 2);
    let floors: i64 = dst.query_one("SELECT count(floor) FROM ferry.tables", &[]).await.unwrap().get(0);
    assert_eq!(floors, 0, "the added table is in step with the stream");
    let logs = daemon.logs();
    assert!(!logs.contains("pipeline stopped") && !logs.contains("retrying"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_right_after_a_table_copy_loses_nothing() {
    let (source, target, src, dst) = setup().await;
    streamed_once(&source, &target, &["steady"]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = write_until_stopped(&source, stop.clone());
    // Killed after the copy committed with its floor, before the stream
    // took the table on: the restart goes by what the target says.
    let both = config(&source, &target, &["steady", "added"]);
    let mut crashed = Daemon::start_with_env(&both, &[("FERRY_FAILPOINT", "after-table-copy")]);
    assert_eq!(crashed.wait_for_exit(WAIT).await, Some(137));
    assert_eq!(copied_tables(&dst).await.len(), 2, "the copy and its floor committed together");
    let floors: i64 = dst.query_one("SELECT count(floor) FROM ferry.tables", &[]).await.unwrap().get(0);
    assert_eq!(floors, 1);

    let daemon = Daemon::start(&both);
    daemon.wait_for_log("streaming", WAIT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let transactions = writer.await.unwrap();
    assert_same(&src, &dst).await;
    let bumps: i64 = dst.query_one("SELECT sum(counter) FROM added", &[]).await.unwrap().get(0);
    assert_eq!(bumps as u64, transactions, "every bump counted once");
    let (rows, _) = checksum(&dst, "added", "id", "id").await;
    assert!(rows > 20_000);
}

/// Killed in the middle of copying an added table: the next start copies
/// it again rather than taking the unfinished copy for a finished one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_a_table_copy_copies_it_again() {
    let (source, target, src, dst) = setup().await;
    streamed_once(&source, &target, &["steady"]).await;
    let both = config(&source, &target, &["steady", "added"]);
    let mut crashed = Daemon::start_with_env(&both, &[("FERRY_FAILPOINT", "during-snapshot-copy")]);
    assert_eq!(crashed.wait_for_exit(WAIT).await, Some(137));
    assert_eq!(copied_tables(&dst).await, vec![r#""public"."steady""#]);

    let daemon = Daemon::start(&both);
    daemon.wait_for_log("streaming", WAIT).await;
    exec(&src, "UPDATE added SET counter = 1 WHERE id <= 10; INSERT INTO steady (note) VALUES ('after')")
        .await;
    assert_same(&src, &dst).await;
    assert_eq!(copied_tables(&dst).await.len(), 2);
    let logs = daemon.logs();
    assert!(logs.contains("removing what an unfinished copy left"), "{logs}");
}

/// A table that is not empty on the target is refused before the initial
/// copy, and again at the next start: its rows are never taken for what
/// an unfinished copy left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_table_with_rows_of_its_own_is_refused_and_kept() {
    let (source, target, _src, dst) = setup().await;
    exec(&dst, "INSERT INTO added VALUES (-1, 0, 'the target''s own')").await;
    for _ in 0..2 {
        assert_refused_and_kept(Daemon::start(&config(&source, &target, &["steady", "added"])), &dst).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_table_stops_and_a_removed_subscription_keeps_its_slot_until_dropped() {
    let (source, target, src, dst) = setup().await;
    let both = config(&source, &target, &["steady", "added"]);
    let port = free_port();
    let http = Endpoints::on(port);
    let forgotten_series = |samples: &Samples| {
        samples.get("ferry_forgotten_slot_retained_wal_bytes", &[("source", "src"), ("slot", "ferry_sub")])
    };
    let daemon = Daemon::start(&with_server(port, &both));
    daemon.wait_for_log("streaming", WAIT).await;
    assert_same(&src, &dst).await;
    assert_eq!(forgotten_series(&http.metrics().await), None, "the slot of a configured subscription");

    // Removing a table: its changes no longer arrive, the other's do.
    daemon.reload(&with_server(port, &config(&source, &target, &["steady"])));
    daemon.wait_for_log("table no longer in the subscription", WAIT).await;
    exec(
        &src,
        "UPDATE added SET counter = 7 WHERE id = 1; INSERT INTO steady (note) VALUES ('after removal')",
    )
    .await;
    wait_for_same(&src, &dst, "steady", "steady", "id, note", "id", WAIT).await;
    let counter: i32 = dst.query_one("SELECT counter FROM added WHERE id = 1", &[]).await.unwrap().get(0);
    assert_eq!(counter, 0, "the removed table is no longer replicated");
    let published: i64 = src
        .query_one("SELECT count(*) FROM pg_publication_tables WHERE pubname = 'ferry_sub'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(published, 1);

    // Removing the subscription: the pipeline stops, the slot stays.
    let other_target = Cluster::start();
    let other = other_target.client("postgres").await;
    exec(&other, SCHEMA).await;
    let replacement = support::daemon::config(
        &source.url("postgres"),
        &other_target.url("postgres"),
        "other",
        &[("steady", "steady")],
        "",
    );
    daemon.reload(&with_server(port, &replacement));
    daemon.wait_for_log("subscription removed", WAIT).await;
    wait_for_same(&src, &other, "steady", "steady", "id, note", "id", WAIT).await;
    let slot_exists = |name: &'static str| {
        let src = &src;
        async move {
            src.query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", &[&name])
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 1
        }
    };
    assert!(slot_exists("ferry_sub").await, "a removed subscription keeps its slot");
    // A `ferry_` slot another reader is using (a ferry elsewhere) is that
    // reader's, not forgotten.
    exec(&src, "CREATE PUBLICATION busy FOR TABLE steady").await;
    exec(&src, "SELECT pg_create_logical_replication_slot('ferry_busy', 'pgoutput')").await;
    let busy = hold_slot(&source, "ferry_busy", "busy").await;
    let running = ferry::config::Config::load(daemon.config_path()).unwrap();
    let forgotten = ferry::teardown::forgotten_slots(&running).await;
    let forgotten: Vec<(&str, &str)> =
        forgotten.values().flatten().map(|f| (f.source.as_str(), f.slot.as_str())).collect();
    assert_eq!(forgotten, vec![("src", "ferry_sub")]);
    drop(busy);
    // Its walsender lets go of it a moment after the reader does.
    let deadline = Instant::now() + WAIT;
    while let Err(error) = src.batch_execute("SELECT pg_drop_replication_slot('ferry_busy')").await {
        assert!(Instant::now() < deadline, "ferry_busy stays in use: {error}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    exec(&src, "DROP PUBLICATION busy").await;
    // Shown until dropped, so that an alert can fire before the source's
    // disk fills.
    http.wait_for_metrics("the removed subscription's slot", WAIT, |m| forgotten_series(m).is_some()).await;
    daemon.wait_for_log("slot ferry_sub on source src belongs to no configured subscription", WAIT).await;
    let validated = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["validate", "--config"])
        .arg(daemon.config_path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&validated.stdout);
    assert!(validated.status.success(), "{validated:?}");
    assert!(
        report.contains(
            "warning: source src: slot ferry_sub on source src belongs to no configured subscription"
        ),
        "{report}"
    );

    let drop = |name: &str| {
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["drop", name, "--config"])
            .arg(daemon.config_path())
            .output()
            .unwrap()
    };
    let refused = drop("other");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("still in the config"), "{refused:?}");
    let dropped = drop("sub");
    assert!(dropped.status.success(), "{dropped:?}");
    assert!(String::from_utf8_lossy(&dropped.stdout).contains("dropped slot ferry_sub"), "{dropped:?}");
    assert!(!slot_exists("ferry_sub").await);
    assert!(ferry::teardown::forgotten_slots(&running).await.values().all(Vec::is_empty));
    assert!(slot_exists("ferry_other").await);
    let publications: i64 = src
        .query_one("SELECT count(*) FROM pg_publication WHERE pubname = 'ferry_sub'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(publications, 0);
    let again = drop("sub");
    assert!(String::from_utf8_lossy(&again.stderr).contains("there is no slot ferry_sub"), "{again:?}");

    // Its bookkeeping on the target it wrote to (which the running config
    // no longer names) goes with --target, and then a subscription of
    // that name could start there afresh.
    let with_old_target = tempfile::NamedTempFile::new().unwrap();
    let urls = (source.url("postgres"), target.url("postgres"));
    std::fs::write(
        with_old_target.path(),
        format!("[sources.src]\nurl = \"{}\"\n\n[targets.old]\nurl = \"{}\"\n", urls.0, urls.1),
    )
    .unwrap();
    let drop_on_target = |target: &str| {
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["drop", "sub", "--target", target, "--config"])
            .arg(with_old_target.path())
            .output()
            .unwrap()
    };
    let count = |sql: &'static str| {
        let dst = &dst;
        async move { dst.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    let progress = "SELECT count(*) FROM ferry.progress WHERE subscription = 'sub'";
    let origins = "SELECT count(*) FROM pg_replication_origin WHERE roname = 'ferry_sub' OR roname LIKE 'ferry\\_sub.%'";
    assert_eq!(count(progress).await, 1);
    assert!(count(origins).await >= 1);
    let unknown = drop_on_target("nowhere");
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no target named \"nowhere\""), "{unknown:?}");
    assert_eq!(count(progress).await, 1, "nothing is removed when the target is unknown");
    // An origin in use (as by a ferry elsewhere still running it) leaves
    // everything in place.
    let holder = target.client("postgres").await;
    exec(&holder, "SELECT pg_replication_origin_session_setup('ferry_sub')").await;
    let in_use = drop_on_target("old");
    assert!(String::from_utf8_lossy(&in_use.stderr).contains("dropping a replication origin"), "{in_use:?}");
    assert_eq!(count(progress).await, 1, "nothing is removed while an origin is in use");
    exec(&holder, "SELECT pg_replication_origin_session_reset()").await;
    let cleared = drop_on_target("old");
    assert!(cleared.status.success(), "{cleared:?}");
    let said = String::from_utf8_lossy(&cleared.stdout);
    assert!(said.contains("no slot ferry_sub on source src"), "{said}");
    assert!(said.contains("deleted the progress of sub on target old"), "{said}");
    assert!(said.contains("dropped replication origin ferry_sub on target old"), "{said}");
    assert_eq!((count(progress).await, count(origins).await), (0, 0));
    let tables = count("SELECT count(*) FROM ferry.tables WHERE subscription = 'sub'").await;
    assert_eq!(tables, 0);
    let again = drop_on_target("old");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("and target old holds nothing of sub"),
        "{again:?}"
    );

    exec(&src, "INSERT INTO steady (note) VALUES ('still streaming')").await;
    wait_for_same(&src, &other, "steady", "steady", "id, note", "id", WAIT).await;

    // With the last subscription out of the config, its slot can still be
    // dropped: a config of the source alone is enough.
    exec(&src, "SELECT pg_create_logical_replication_slot('ferry_last', 'pgoutput')").await;
    let only_source = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(only_source.path(), format!("[sources.src]\nurl = \"{}\"\n", source.url("postgres")))
        .unwrap();
    let dropped = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["drop", "last", "--config"])
        .arg(only_source.path())
        .output()
        .unwrap();
    assert!(dropped.status.success(), "{dropped:?}");
    assert!(!slot_exists("ferry_last").await);

    // A drop that stopped after the slot finishes with the publication.
    exec(&src, "CREATE PUBLICATION ferry_half FOR TABLE steady").await;
    let dropped = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["drop", "half", "--config"])
        .arg(only_source.path())
        .output()
        .unwrap();
    assert!(dropped.status.success(), "{dropped:?}");
    assert!(
        String::from_utf8_lossy(&dropped.stdout).contains("dropped publication ferry_half"),
        "{dropped:?}"
    );
    let left: i64 = src
        .query_one("SELECT count(*) FROM pg_publication WHERE pubname = 'ferry_half'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

/// A drop that fails half way (here the publication belongs to another
/// role, while the slot only takes REPLICATION) says what it removed
/// already and that running it again finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_that_fails_half_way_says_what_it_already_removed() {
    let (source, _target, src, _dst) = setup().await;
    exec(&src, "SELECT pg_create_logical_replication_slot('ferry_half', 'pgoutput')").await;
    exec(&src, "CREATE ROLE dropper LOGIN REPLICATION; CREATE PUBLICATION ferry_half FOR TABLE steady").await;
    let config = tempfile::NamedTempFile::new().unwrap();
    let url = source.url("postgres").replacen("postgres@", "dropper@", 1);
    std::fs::write(config.path(), format!("[sources.src]\nurl = \"{url}\"\n")).unwrap();
    let dropped = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["drop", "half", "--config"])
        .arg(config.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&dropped.stderr);
    assert!(!dropped.status.success(), "{stderr}");
    assert!(stderr.contains("dropping the publication"), "{stderr}");
    assert!(
        stderr.contains("already done: dropped slot ferry_half; run the same ferry drop again"),
        "{stderr}"
    );
    let left: (i64, i64) = src
        .query_one(
            "SELECT (SELECT count(*) FROM pg_replication_slots), (SELECT count(*) FROM pg_publication)",
            &[],
        )
        .await
        .map(|row| (row.get(0), row.get(1)))
        .unwrap();
    assert_eq!(left, (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_that_does_not_load_keeps_the_running_one() {
    let (source, target, src, dst) = setup().await;
    let port = free_port();
    let http = Endpoints::on(port);
    let reload_metric = |samples: &Samples| samples.value("ferry_config_last_reload_successful", &[]);
    let daemon = Daemon::start(&with_server(port, &config(&source, &target, &["steady"])));
    daemon.wait_for_log("streaming", WAIT).await;
    assert_eq!(reload_metric(&http.metrics().await), 1.0);
    daemon.reload(&with_server(port, "[[subscriptions]]\nname = 'broken'\n"));
    daemon.wait_for_log("did not load, keeping the running one", WAIT).await;
    assert_eq!(reload_metric(&http.metrics().await), 0.0, "a failed reload shows in the metrics");
    exec(&src, "INSERT INTO steady (note) VALUES ('after a bad reload')").await;
    wait_for_same(&src, &dst, "steady", "steady", "id, note", "id", WAIT).await;

    // A second subscription added: it starts, the first one is left alone.
    let second = format!(
        "{}\n[[subscriptions]]\nname = \"second\"\nsource = \"src\"\ntarget = \"dst\"\n\
         [[subscriptions.tables]]\nfrom = 'added'\n",
        config(&source, &target, &["steady"])
    );
    daemon.reload(&with_server(port, &second));
    daemon.wait_for_log("configuration reloaded", WAIT).await;
    exec(&src, "UPDATE added SET counter = 3 WHERE id = 2; INSERT INTO steady (note) VALUES ('two')").await;
    assert_same(&src, &dst).await;
    assert_eq!(reload_metric(&http.metrics().await), 1.0);
    let logs = daemon.logs();
    assert_eq!(logs.matches("starting pipeline subscription=sub ").count(), 1, "{logs}");
    assert!(!logs.contains("restarting"), "{logs}");

    // Another listen address takes a restart, at every reload that asks for
    // it, and the one served is still served.
    // Back to the one served, none does.
    let elsewhere = free_port();
    for (listen, warned) in [(elsewhere, 1), (elsewhere, 2), (port, 2)] {
        let reloads = daemon.logs().matches("configuration reloaded").count();
        daemon.reload(&with_server(listen, &second));
        daemon.wait_for_count("configuration reloaded", reloads + 1, WAIT).await;
        let logs = daemon.logs();
        assert_eq!(logs.matches("listen address takes a restart").count(), warned, "{logs}");
    }
    assert_eq!(reload_metric(&http.metrics().await), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_copied_ahead_of_the_stream_joins_it_where_the_copy_ends() {
    let (source, target, src, dst) = setup().await;
    let daemon = Daemon::start(&config(&source, &target, &["steady"]));
    daemon.wait_for_log("streaming", WAIT).await;
    // Nothing is written while the copy runs, so the stream has not passed
    // its snapshot when it ends: no going back.
    daemon.reload(&config(&source, &target, &["steady", "added"]));
    daemon.wait_for_log("copied table joins the stream", WAIT).await;
    exec(&src, "UPDATE added SET counter = 5 WHERE id <= 10; INSERT INTO added VALUES (0, 1, 'new')").await;
    exec(&src, "INSERT INTO steady (note) VALUES ('after the copy')").await;
    assert_same(&src, &dst).await;
    assert!(!daemon.logs().contains("going back to"), "{}", daemon.logs());
    let floors: i64 = dst.query_one("SELECT count(floor) FROM ferry.tables", &[]).await.unwrap().get(0);
    assert_eq!(floors, 0, "the floor was cleared once the stream passed it");
}

/// A transaction applied while a table is copied is confirmed to the
/// source only as far as the copy's hold; once the table joins the stream
/// the hold is gone, and an idle subscription confirms the source's WAL
/// again. Before, nothing confirmed anything until the next change of a
/// subscribed table: the slot kept the source's WAL meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_subscription_confirms_the_source_again_once_a_copied_table_joins() {
    let (source, target, src, dst) = setup().await;
    let daemon = Daemon::start(&config(&source, &target, &["steady"]));
    daemon.wait_for_log("streaming", WAIT).await;
    // The copy waits for this lock on the target...
    let holder = target.client("postgres").await;
    exec(&holder, "BEGIN; LOCK TABLE added IN SHARE MODE").await;
    // ... and its slot for this transaction on the source, which thus
    // commits before the copy's snapshot and is applied during the copy.
    let open = source.client("postgres").await;
    exec(&open, "BEGIN; INSERT INTO steady (note) VALUES ('during the copy')").await;
    daemon.reload(&config(&source, &target, &["steady", "added"]));
    let deadline = Instant::now() + WAIT;
    let slot_waits = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender' AND wait_event = 'transactionid'";
    while src.query_one(slot_waits, &[]).await.unwrap().get::<_, i64>(0) == 0 {
        assert!(Instant::now() < deadline, "the copy's slot never waited for the open transaction");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    exec(&open, "COMMIT").await;
    wait_for_same(&src, &dst, "steady", "steady", "id, note", "id", WAIT).await;
    exec(&holder, "COMMIT").await;
    daemon.wait_for_log("copied table joins the stream", WAIT).await;

    // Nothing of the subscription's tables changes from here on.
    exec(&src, "CREATE TABLE unrelated (x int); INSERT INTO unrelated VALUES (1)").await;
    let written: String = src.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
    let confirmed = "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = 'ferry_sub'";
    while !src.query_one(confirmed, &[&written]).await.unwrap().get::<_, bool>(0) {
        assert!(Instant::now() < deadline, "the slot never confirmed {written}: {}", daemon.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!daemon.logs().contains("going back to"), "{}", daemon.logs());
    assert_same(&src, &dst).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_ends_while_a_target_transaction_is_open_goes_back_for_what_it_missed() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let (src, dst) = (source.client("postgres").await, target.client("postgres").await);
    let schema = "CREATE TABLE steady (id bigserial PRIMARY KEY, note text);
         CREATE TABLE marker (id bigserial PRIMARY KEY);
         CREATE TABLE added (id int PRIMARY KEY, counter int NOT NULL, note text);";
    exec(&src, schema).await;
    exec(&dst, schema).await;
    // On the target, the row 'slow' takes 250 ms to insert: the applier is
    // inside an open target transaction, holding a source transaction whose
    // change of `added` it left out, when the copy ends.
    exec(
        &dst,
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.note = 'slow' THEN PERFORM pg_sleep(0.25); END IF; RETURN NEW; END $$;
         CREATE TRIGGER slow BEFORE INSERT ON steady FOR EACH ROW EXECUTE FUNCTION slow();
         ALTER TABLE steady ENABLE ALWAYS TRIGGER slow;",
    )
    .await;
    exec(&src, "INSERT INTO added SELECT g, 0, 'row' FROM generate_series(1, 10) g").await;
    let daemon = Daemon::start(&config(&source, &target, &["steady", "marker"]));
    daemon.wait_for_log("streaming", WAIT).await;
    let (holder, connection) =
        tokio_postgres::connect(&target.url("postgres"), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    exec(&holder, "BEGIN; LOCK TABLE added IN SHARE MODE").await;
    daemon.reload(&config(&source, &target, &["steady", "marker", "added"]));
    daemon.wait_for_log("copying tables added to the subscription", WAIT).await;
    let mut sql = String::from(
        "BEGIN; UPDATE added SET counter = 1 WHERE id = 1;
         INSERT INTO steady (note) VALUES ('slow'); INSERT INTO marker DEFAULT VALUES; COMMIT;",
    );
    for _ in 0..50 {
        sql.push_str("INSERT INTO steady (note) VALUES ('z');");
    }
    exec(&src, &sql).await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let sleeping: i64 = holder
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'", &[])
            .await
            .unwrap()
            .get(0);
        if sleeping > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the applier never reached the slow row");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    exec(&holder, "COMMIT").await;
    daemon.wait_for_log("going back to", WAIT).await;
    exec(&src, "INSERT INTO steady (note) VALUES ('after'); UPDATE added SET counter = 2 WHERE id = 2").await;
    wait_for_same(&src, &dst, "steady", "steady", "id, note", "id", WAIT).await;
    wait_for_same(&src, &dst, "added", "added", "id, counter, note", "id", WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_of_a_removed_table_still_in_the_slot_are_left_out() {
    let (source, target, src, dst) = setup().await;
    let daemon = Daemon::start(&config(&source, &target, &["steady", "added"]));
    daemon.wait_for_log("streaming", WAIT).await;
    assert_same(&src, &dst).await;
    daemon.signal_and_wait("TERM");
    // While ferry is down, a change of the table about to be removed: its
    // transaction is decoded with the publication as it was.
    exec(&src, "UPDATE added SET counter = 1 WHERE id = 1; INSERT INTO steady (note) VALUES ('x')").await;
    let daemon = Daemon::start(&config(&source, &target, &["steady"]));
    daemon.wait_for_log("leaving out changes of a table this subscription no longer maps", WAIT).await;
    exec(&src, "INSERT INTO steady (note) VALUES ('after')").await;
    wait_for_same(&src, &dst, "steady", "steady", "id, note", "id", WAIT).await;
    let counter: i32 = dst.query_one("SELECT counter FROM added WHERE id = 1", &[]).await.unwrap().get(0);
    assert_eq!(counter, 0);
    assert!(!daemon.logs().contains("pipeline stopped"), "{}", daemon.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_from_before_ferry_recorded_its_tables_keeps_streaming() {
    let (source, target, src, dst) = setup().await;
    streamed_once(&source, &target, &["steady"]).await;
    // What an earlier ferry left on the target: progress, no table list.
    exec(&dst, "DROP TABLE ferry.tables").await;
    // The same restart adds a table: it is the only one copied.
    let daemon = Daemon::start(&config(&source, &target, &["steady", "added"]));
    daemon.wait_for_log("copied table joins the stream", WAIT).await;
    exec(
        &src,
        "INSERT INTO steady (note) VALUES ('after the upgrade'); UPDATE added SET counter = 9 WHERE id = 3",
    )
    .await;
    assert_same(&src, &dst).await;
    assert_eq!(daemon.logs().matches("copying it while the others stream").count(), 1, "{}", daemon.logs());
    // The copy's own replication origins are gone with it: each would keep
    // one of the target's origin entries for good.
    assert_eq!(support::origins(&dst).await, ["ferry_sub"]);
}

/// A subscription whose only table is replaced by another, over a
/// publication that held both all along: the new table is copied, not
/// taken for one an earlier ferry streamed without recording it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_replacing_the_only_one_is_copied() {
    let (source, target, src, dst) = setup().await;
    exec(&src, "CREATE PUBLICATION both_tables FOR TABLE steady, added").await;
    let extra = "publication = \"both_tables\"";
    let only = |table: &str| {
        support::daemon::config(
            &source.url("postgres"),
            &target.url("postgres"),
            "sub",
            &[(table, table)],
            extra,
        )
    };
    let daemon = Daemon::start(&only("steady"));
    daemon.wait_for_log("streaming", WAIT).await;
    daemon.signal_and_wait("TERM");

    let daemon = Daemon::start(&only("added"));
    daemon.wait_for_log("copied table joins the stream", WAIT).await;
    exec(&src, "UPDATE added SET counter = 9 WHERE id = 3").await;
    wait_for_same(&src, &dst, "added", "added", "id, counter, note", "id", WAIT).await;
    drop(daemon);
}

/// `ferry drop --help`: "Refuses while the subscription is still
/// configured". `a-b` and the configured `a_b` share the slot `ferry_a_b`
/// (config.rs even refuses both in one config for that reason), so dropping
/// `a-b` drops the slot of a configured subscription while its pipeline is
/// not connected (daemon stopped, or retrying after an error): the changes
/// the slot held are lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_refuses_a_name_whose_slot_a_configured_subscription_uses() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let src = source.client("postgres").await;
    exec(&src, "CREATE TABLE steady (id int PRIMARY KEY)").await;
    exec(&src, "SELECT pg_create_logical_replication_slot('ferry_a_b', 'pgoutput')").await;
    let text = support::daemon::config(
        &source.url("postgres"),
        &target.url("postgres"),
        "a_b",
        &[("steady", "steady")],
        "",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, text).unwrap();

    let output = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["drop", "a-b", "--config"])
        .arg(&path)
        .output()
        .unwrap();

    let slots: i64 = src
        .query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'ferry_a_b'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 1, "the slot of configured subscription a_b was dropped: {output:?}");
    assert!(!output.status.success(), "{output:?}");
}

/// `a-b` renamed `a_b` keeps the slot `ferry_a_b` but finds no progress of
/// its own on the target. The slot is kept, not dropped for a fresh start:
/// it holds what `a-b` has not applied yet, and naming the subscription
/// back brings that over. Before, the slot was dropped and made anew, and
/// the change made in between never reached the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_renamed_onto_the_same_slot_keeps_what_the_slot_holds() {
    let (source, target, src, dst) = setup().await;
    let named = |name: &str| {
        support::daemon::config(
            &source.url("postgres"),
            &target.url("postgres"),
            name,
            &[("steady", "steady")],
            "",
        )
    };
    let daemon = Daemon::start(&named("a-b"));
    wait_for_same(&src, &dst, "steady", "steady", "id, note", "id", WAIT).await;
    daemon.signal_and_wait("TERM");
    exec(&src, "INSERT INTO steady (note) VALUES ('while renamed')").await;

    let mut renamed = Daemon::start(&named("a_b"));
    let stopped = renamed.wait_for_log("pipeline stopped", WAIT).await;
    assert!(stopped.contains("slot ferry_a_b exists on the source"), "{stopped}");
    assert_ne!(renamed.wait_for_exit(WAIT).await, Some(0));

    let _daemon = Daemon::start(&named("a-b"));
    wait_for_same(&src, &dst, "steady", "steady", "id, note", "id", WAIT).await;
}

/// The only table replaced by another, and the process killed after the
/// old one was taken out (and the publication changed) but before the new
/// one was marked as being copied: the restart still copies the new one.
/// Before, taking the old one out deleted the subscription's last row in
/// `ferry.tables`, the restart took the target for one written before
/// ferry recorded its tables, and the new table streamed without its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_replacing_the_only_table_and_copying_its_successor_still_copies_it() {
    let (source, target, src, dst) = setup().await;
    streamed_once(&source, &target, &["steady"]).await;

    let replaced = config(&source, &target, &["added"]);
    let mut crashed = Daemon::start_with_env(&replaced, &[("FERRY_FAILPOINT", "before-table-copy")]);
    assert_eq!(crashed.wait_for_exit(WAIT).await, Some(137));

    let _daemon = Daemon::start(&replaced);
    wait_for_same(&src, &dst, "added", "added", "id, counter, note", "id", WAIT).await;
}

/// A target whose `ferry.tables` an older ferry made, without `removed`,
/// gets the column at the next start and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_tables_record_gets_its_removed_column() {
    let (source, target, src, dst) = setup().await;
    streamed_once(&source, &target, &["steady"]).await;
    exec(&dst, "ALTER TABLE ferry.tables DROP COLUMN removed").await;

    let _daemon = Daemon::start(&config(&source, &target, &["steady"]));
    exec(&src, "INSERT INTO steady (note) VALUES ('after the upgrade')").await;
    wait_for_same(&src, &dst, "steady", "steady", "id, note", "id", WAIT).await;
    let flagged: i64 =
        dst.query_one("SELECT count(*) FROM ferry.tables WHERE NOT removed", &[]).await.unwrap().get(0);
    assert_eq!(flagged, 1);
}

/// A table taken out while its copy was unfinished, and added back once
/// the target table holds rows of its own: those rows are not taken for
/// what the copy left, and the table is refused until emptied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_taken_out_mid_copy_is_not_emptied_when_it_comes_back() {
    let (source, target, _src, dst) = setup().await;
    streamed_once(&source, &target, &["steady"]).await;
    let both = config(&source, &target, &["steady", "added"]);
    let mut crashed = Daemon::start_with_env(&both, &[("FERRY_FAILPOINT", "during-snapshot-copy")]);
    assert_eq!(crashed.wait_for_exit(WAIT).await, Some(137));

    let daemon = Daemon::start(&config(&source, &target, &["steady"]));
    daemon.wait_for_log("table no longer in the subscription", WAIT).await;
    daemon.signal_and_wait("TERM");
    exec(&dst, "TRUNCATE added; INSERT INTO added VALUES (-1, 0, 'the target''s own')").await;

    assert_refused_and_kept(Daemon::start(&both), &dst).await;
}

/// `ferry drop` with the wrong `--source` clears nothing on the target and
/// names the source that holds the slot: cleared, the target would let a
/// subscription start afresh while the slot kept WAL on its real source.
/// And the target's rows go by slot: `a-b` is dropped as `a_b` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_names_the_source_that_holds_the_slot_and_clears_the_target_by_slot() {
    let (source, target, elsewhere) = (Cluster::start(), Cluster::start(), Cluster::start());
    let (src, dst) = (source.client("postgres").await, target.client("postgres").await);
    exec(&src, SCHEMA).await;
    exec(&dst, SCHEMA).await;
    let text = support::daemon::config(
        &source.url("postgres"),
        &target.url("postgres"),
        "a-b",
        &[("steady", "steady")],
        "",
    );
    let daemon = Daemon::start(&text);
    daemon.wait_for_log("streaming", WAIT).await;
    daemon.signal_and_wait("TERM");
    exec(&src, "CREATE DATABASE sibling").await;
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        format!(
            "[sources.elsewhere]\nurl = \"{}\"\n\n[sources.src]\nurl = \"{}\"\n\n\
             [sources.sibling]\nurl = \"{}\"\n\n[targets.dst]\nurl = \"{}\"\n",
            elsewhere.url("postgres"),
            source.url("postgres"),
            source.url("sibling"),
            target.url("postgres")
        ),
    )
    .unwrap();
    let drop = |name: &str, source: &str| {
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["drop", name, "--source", source, "--target", "dst", "--config"])
            .arg(config.path())
            .output()
            .unwrap()
    };
    let progress = || async {
        let sql = "SELECT count(*) FROM ferry.progress WHERE subscription = 'a-b'";
        dst.query_one(sql, &[]).await.unwrap().get::<_, i64>(0)
    };
    let slots = || async {
        let sql = "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'ferry_a_b'";
        src.query_one(sql, &[]).await.unwrap().get::<_, i64>(0)
    };
    assert_eq!((progress().await, slots().await), (1, 1));

    let wrong = drop("a-b", "elsewhere");
    assert!(!wrong.status.success(), "{wrong:?}");
    let said = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        said.contains(
            "source elsewhere: there is no slot ferry_a_b, but source src has it: run again with --source src"
        ),
        "{said}"
    );
    assert_eq!((progress().await, slots().await), (1, 1), "nothing is removed");
    // Slot names are the server's: another database of it does not have
    // the slot for its own.
    let sibling = drop("a-b", "sibling");
    let said = String::from_utf8_lossy(&sibling.stderr);
    assert!(said.contains("slot ferry_a_b belongs to database \"postgres\" of that server"), "{said}");
    assert_eq!((progress().await, slots().await), (1, 1), "nothing is removed");

    // A source that cannot be asked might be the one with the slot.
    let unreachable = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        unreachable.path(),
        format!(
            "[sources.elsewhere]\nurl = \"{}\"\n\n[sources.down]\nurl = \"postgresql://postgres:hunter2@127.0.0.1:{}/postgres\"\n\n[targets.dst]\nurl = \"{}\"\n",
            elsewhere.url("postgres"),
            free_port(),
            target.url("postgres")
        ),
    )
    .unwrap();
    let unknown = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["drop", "a-b", "--source", "elsewhere", "--target", "dst", "--config"])
        .arg(unreachable.path())
        .output()
        .unwrap();
    assert!(!unknown.status.success(), "{unknown:?}");
    let said = String::from_utf8_lossy(&unknown.stderr);
    assert!(said.contains("source down could not be asked whether it has it"), "{said}");
    assert!(!said.contains("hunter2"), "{said}");
    assert_eq!((progress().await, slots().await), (1, 1), "nothing is removed");

    let dropped = drop("a_b", "src");
    assert!(dropped.status.success(), "{dropped:?}");
    let said = String::from_utf8_lossy(&dropped.stdout);
    assert!(said.contains("dropped slot ferry_a_b on source src"), "{said}");
    assert!(said.contains("deleted the progress of a_b on target dst"), "{said}");
    assert_eq!((progress().await, slots().await), (0, 0));
}

/// A table whose `to` changes is copied into its new target table, as a
/// table added to the subscription would be, then streams there. Before,
/// it streamed into the new table from where it was, and the rows from
/// before never got there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_mapped_to_another_target_table_is_copied_there() {
    let (source, target, src, dst) = setup().await;
    let daemon = Daemon::start(&config(&source, &target, &["steady"]));
    daemon.wait_for_log("streaming", WAIT).await;
    wait_for_same(&src, &dst, "steady", "steady", "id, note", "id", WAIT).await;
    exec(&dst, "CREATE TABLE steady_v2 (id bigint PRIMARY KEY, note text)").await;

    let moved = support::daemon::config(
        &source.url("postgres"),
        &target.url("postgres"),
        "sub",
        &[("steady", "steady_v2")],
        "",
    );
    daemon.reload(&moved);
    exec(&src, "INSERT INTO steady (note) VALUES ('after the move')").await;
    wait_for_same(&src, &dst, "steady", "steady_v2", "id, note", "id", WAIT).await;
    assert!(daemon.logs().contains("now maps to \"public\".\"steady_v2\""), "{}", daemon.logs());
}

/// A copy of an added table that the target refuses at its commit (a
/// deferred foreign key) stops the pipeline and says why, dead letters or
/// not: the refused rows are the copy's, not changes of the stream to set
/// aside. Before, with dead letters on, the stream was replayed carefully
/// and the table copied again, for ever, with no error shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_the_target_refuses_stops_the_pipeline_even_with_dead_letters() {
    let (source, target, _, dst) = setup().await;
    let names = |tables: &[(&'static str, &'static str)]| {
        let extra = "on_error = \"dead_letter\"";
        support::daemon::config(&source.url("postgres"), &target.url("postgres"), "sub", tables, extra)
    };
    let mut daemon = Daemon::start(&names(&[("steady", "steady")]));
    daemon.wait_for_log("streaming", WAIT).await;
    exec(
        &dst,
        "CREATE TABLE owners (id int PRIMARY KEY);
         ALTER TABLE added ADD FOREIGN KEY (counter) REFERENCES owners DEFERRABLE INITIALLY DEFERRED",
    )
    .await;

    daemon.reload(&names(&[("steady", "steady"), ("added", "added")]));
    daemon.wait_for_log("pipeline stopped", WAIT).await;
    assert_eq!(daemon.wait_for_exit(WAIT).await, Some(1));
    let logs = daemon.logs();
    assert!(logs.contains("23503"), "{logs}");
    assert_eq!(logs.matches("copying tables added to the subscription").count(), 1, "{logs}");
    let rows: i64 = dst.query_one("SELECT count(*) FROM added", &[]).await.unwrap().get(0);
    assert_eq!(rows, 0);
}

/// A table mapped to another target table is flagged before anything
/// streams: while its copy waits (here on a lock), the stream moves on
/// without its changes, and when the copy then fails and the mapping is
/// changed back, the table is copied again (refused here: its old target
/// table has rows) rather than taken as in step with a progress that went
/// past its changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_mapped_back_after_a_failed_move_is_not_taken_as_in_step() {
    let (source, target, src, dst) = setup().await;
    let tables = |steady_to: &'static str| {
        let tables = [("steady", steady_to), ("added", "added")];
        support::daemon::config(&source.url("postgres"), &target.url("postgres"), "sub", &tables, "")
    };
    let mut daemon = Daemon::start(&tables("steady"));
    daemon.wait_for_log("streaming", WAIT).await;
    assert_same(&src, &dst).await;
    exec(&dst, "CREATE TABLE steady_v2 (id bigint PRIMARY KEY, note text)").await;
    let mut holder = target.client("postgres").await;
    let lock = holder.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE steady_v2 IN ACCESS EXCLUSIVE MODE").await.unwrap();

    daemon.reload(&tables("steady_v2"));
    daemon.wait_for_log("now maps to", WAIT).await;
    // The stream goes past a change of `steady` while its copy waits.
    exec(
        &src,
        "INSERT INTO steady (note) VALUES ('while moving'); UPDATE added SET counter = 9 WHERE id = 1",
    )
    .await;
    wait_for_same(&src, &dst, "added", "added", "id, counter, note", "id", WAIT).await;
    lock.batch_execute("INSERT INTO steady_v2 VALUES (1, 'the target''s own')").await.unwrap();
    lock.commit().await.unwrap();
    daemon.wait_for_log(r#"target table "public"."steady_v2" is not empty"#, WAIT).await;
    assert_eq!(daemon.wait_for_exit(WAIT).await, Some(1), "{}", daemon.logs());

    let mut daemon = Daemon::start(&tables("steady"));
    daemon.wait_for_log(r#"target table "public"."steady" is not empty"#, WAIT).await;
    assert_eq!(daemon.wait_for_exit(WAIT).await, Some(1), "{}", daemon.logs());
}

/// A copy that ends while a large source transaction streams in (its
/// changes wait for its commit while a table is being copied) joins the
/// stream when that transaction rolls back. Before, it waited for the next
/// commit, which an idle source may not send for long, and meanwhile the
/// copy's hold kept the slot from confirming anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_ends_during_a_streamed_transaction_that_aborts_joins_at_the_abort() {
    let (source, target, src, dst) = setup().await;
    let daemon = Daemon::start(&config(&source, &target, &["steady"]));
    daemon.wait_for_log("streaming", WAIT).await;
    // The copy waits for this lock on the target, its snapshot taken.
    let holder = target.client("postgres").await;
    exec(&holder, "BEGIN; LOCK TABLE added IN SHARE MODE").await;
    daemon.reload(&config(&source, &target, &["steady", "added"]));
    let deadline = Instant::now() + WAIT;
    let copy_waits = "SELECT count(*) FROM pg_locks WHERE relation = 'added'::regclass AND NOT granted";
    while dst.query_one(copy_waits, &[]).await.unwrap().get::<_, i64>(0) == 0 {
        assert!(Instant::now() < deadline, "the copy never waited for the lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Far over logical_decoding_work_mem (64 kB): streamed while open.
    let large = source.client("postgres").await;
    exec(&large, "BEGIN; INSERT INTO steady (note) SELECT repeat('x', 100) FROM generate_series(1, 20000)")
        .await;
    let streamed = "SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = 'ferry_sub'";
    while src.query_one(streamed, &[]).await.unwrap().get::<_, i64>(0) == 0 {
        assert!(Instant::now() < deadline, "the transaction was not streamed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    exec(&holder, "COMMIT").await;
    daemon.wait_for_log("copied subscription=sub", WAIT).await;
    exec(&large, "ROLLBACK").await;
    daemon.wait_for_log("copied table joins the stream", WAIT).await;
    assert_same(&src, &dst).await;
}

/// A pipeline whose target password comes from a file, streaming; the
/// target takes passwords over TCP (scram-sha-256) and the role starts with
/// `pw-Alpha-1`.
struct PasswordFromFile {
    _source: Cluster,
    _target: Cluster,
    src: tokio_postgres::Client,
    dst: tokio_postgres::Client,
    _secrets: tempfile::TempDir,
    file: std::path::PathBuf,
    config: String,
    daemon: Daemon,
}

impl PasswordFromFile {
    async fn streaming() -> PasswordFromFile {
        let source = Cluster::start();
        let target = Cluster::start_with(support::ClusterOptions {
            hba: Some("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n".into()),
            conf: vec!["password_encryption = 'scram-sha-256'".into()],
            ..Default::default()
        });
        let (src, dst) = (source.client("postgres").await, target.client("postgres").await);
        exec(&src, SCHEMA).await;
        exec(&dst, &format!("{SCHEMA} CREATE ROLE ferry LOGIN SUPERUSER PASSWORD 'pw-Alpha-1'")).await;
        let secrets = tempfile::tempdir().unwrap();
        let file = secrets.path().join("target");
        std::fs::write(&file, "pw-Alpha-1\n").unwrap();
        let url = format!("postgresql://ferry@127.0.0.1:{}/postgres?sslmode=disable", target.port);
        let config =
            support::daemon::config(&source.url("postgres"), &url, "sub", &[("steady", "steady")], "")
                .replace(&url, &format!("{url}\"\npassword_file = \"{}", file.display()));
        let daemon = Daemon::start(&config);
        daemon.wait_for_log("streaming", WAIT).await;
        PasswordFromFile {
            _source: source,
            _target: target,
            src,
            dst,
            _secrets: secrets,
            file,
            config,
            daemon,
        }
    }

    /// Ends ferry's target sessions, so that the pipeline connects again.
    async fn cut_ferry_off(&self) {
        exec(&self.dst, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'ferry'")
            .await;
    }

    /// A row inserted on the source reaches the target; no password was
    /// logged.
    async fn still_replicates(&self, note: &str) {
        exec(&self.src, &format!("INSERT INTO steady (note) VALUES ('{note}')")).await;
        wait_for_same(&self.src, &self.dst, "steady", "steady", "id, note", "id", WAIT).await;
        assert!(!self.daemon.logs().contains("pw-"), "{}", self.daemon.logs());
    }
}

/// A rotated target password takes effect at SIGHUP: the `password_file` is
/// read again, and the pipeline restarts with the new password, which a
/// later reconnect uses (the server no longer takes the old one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_password_file_is_read_at_sighup() {
    let setup = PasswordFromFile::streaming().await;
    setup.still_replicates("first").await;

    exec(&setup.dst, "ALTER ROLE ferry PASSWORD 'pw-Bravo-2'").await;
    std::fs::write(&setup.file, "pw-Bravo-2\n").unwrap();
    let started = setup.daemon.logs().matches("streaming").count();
    setup.daemon.reload(&setup.config);
    setup.daemon.wait_for_count("streaming", started + 1, WAIT).await;
    setup.cut_ferry_off().await;
    setup.still_replicates("second").await;
    assert!(!setup.daemon.logs().contains("28P01"), "{}", setup.daemon.logs());
}

/// A password file is read again at every connection: a pipeline refused
/// (28P01) between the role's new password and the file's rotation retries
/// instead of stopping (which, the last pipeline stopped, ended the daemon
/// before any SIGHUP could come), and takes the new password up without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_refused_mid_rotation_is_retried_until_the_file_has_the_new_one() {
    let setup = PasswordFromFile::streaming().await;
    exec(&setup.dst, "ALTER ROLE ferry PASSWORD 'pw-Bravo-2'").await;
    setup.cut_ferry_off().await;
    setup.daemon.wait_for_log("28P01", WAIT).await;
    std::fs::write(&setup.file, "pw-Bravo-2\n").unwrap();
    setup.still_replicates("after the rotation").await;
    assert!(!setup.daemon.logs().contains("pipeline stopped"), "{}", setup.daemon.logs());
}

/// The copy of an added table goes on through a restart of its pipeline
/// (here the careful replay that sets a refused change aside, with dead
/// letters on): started over at each, a large copy under steady refusals
/// would never finish. The target's statement trigger holds the copy open
/// long enough for the replay to come in the middle of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_copy_of_an_added_table_goes_on_through_a_replay() {
    let (source, target, src, dst) = setup().await;
    let names = |tables: &[(&'static str, &'static str)]| {
        let extra = "on_error = \"dead_letter\"";
        support::daemon::config(&source.url("postgres"), &target.url("postgres"), "sub", tables, extra)
    };
    let daemon = Daemon::start(&names(&[("steady", "steady")]));
    daemon.wait_for_log("streaming", WAIT).await;
    exec(
        &dst,
        "ALTER TABLE steady ADD CHECK (note <> 'refused');
         CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN PERFORM pg_sleep(6); RETURN NULL; END';
         CREATE TRIGGER slow AFTER INSERT ON added FOR EACH STATEMENT EXECUTE FUNCTION slow()",
    )
    .await;

    daemon.reload(&names(&[("steady", "steady"), ("added", "added")]));
    daemon.wait_for_log("copying tables added to the subscription", WAIT).await;
    exec(&src, "INSERT INTO steady (note) VALUES ('refused')").await;
    exec(&src, "INSERT INTO steady (note) VALUES ('fine')").await;
    daemon.wait_for_log("replaying statement by statement", WAIT).await;
    wait_for_same(&src, &dst, "added", "added", "id, counter, note", "id", WAIT).await;
    let fine: i64 =
        dst.query_one("SELECT count(*) FROM steady WHERE note = 'fine'", &[]).await.unwrap().get(0);
    assert_eq!(fine, 1);
    let logs = daemon.logs();
    assert_eq!(logs.matches("copying tables added to the subscription").count(), 1, "{logs}");
    assert!(logs.contains("the copy of tables added to the subscription goes on"), "{logs}");
}

/// Two subscriptions changed at one reload stop together: each waits its
/// grace period on a target statement stuck on a lock, and one after the
/// other those added up while the second ran on under the old config. A
/// table whose `where` changed is warned of: the rows already on the
/// target are not gone over again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_changed_at_a_reload_stop_together_and_a_new_filter_is_warned_of() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let (src, dst) = (source.client("postgres").await, target.client("postgres").await);
    let tables =
        "CREATE TABLE one (id int PRIMARY KEY, v int); CREATE TABLE two (id int PRIMARY KEY, v int);";
    exec(&src, tables).await;
    exec(&dst, tables).await;
    let port = free_port();
    let subscriptions = |filter: &str| {
        let database = |kind: &str, cluster: &Cluster| {
            format!("[{kind}.{kind}]\nurl = \"{}\"\n", cluster.url("postgres"))
        };
        let subscription = |name: &str, table: &str, extra: &str| {
            format!(
                "[[subscriptions]]\nname = \"{name}\"\nsource = \"sources\"\ntarget = \"targets\"\n\
                 [[subscriptions.tables]]\nfrom = \"{table}\"\n{extra}\n"
            )
        };
        let text = format!(
            "{}{}{}{}",
            database("sources", &source),
            database("targets", &target),
            subscription("a", "one", filter),
            subscription("b", "two", filter),
        );
        with_server(port, &text)
    };
    let daemon = Daemon::start(&subscriptions(""));
    daemon.wait_for_count("streaming subscription=", 2, WAIT).await;
    let holder = target.client("postgres").await;
    exec(&holder, "BEGIN; LOCK TABLE one, two IN ACCESS EXCLUSIVE MODE").await;
    // Rows the new filter takes too: the session given up at the grace may
    // commit them once the lock goes, or the next one applies them.
    exec(&src, "INSERT INTO one VALUES (1, 10), (2, 20); INSERT INTO two VALUES (1, 10), (2, 20)").await;
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND backend_type = 'client backend'";
    let deadline = Instant::now() + WAIT;
    while dst.query_one(waiting, &[]).await.unwrap().get::<_, i64>(0) < 2 {
        assert!(Instant::now() < deadline, "ferry never waited on the locks");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let reloads = daemon.logs().matches("configuration reloaded").count();
    daemon.reload(&subscriptions("where = \"v > 5\""));
    daemon.wait_for_count("configuration reloaded", reloads + 1, WAIT).await;
    let logs = daemon.logs();
    let after_reload = &logs[logs.find("subscription changed").expect("no restart logged")..];
    let gave_up = |name: &str| {
        let needle = "did not finish the transaction in hand";
        after_reload.lines().position(|l| l.contains(needle) && l.contains(&format!("subscription={name}")))
    };
    let started =
        after_reload.lines().position(|l| l.contains("starting pipeline")).expect("nothing restarted");
    for name in ["a", "b"] {
        assert!(
            gave_up(name).is_some_and(|line| line < started),
            "{name} stopped after a start:\n{after_reload}"
        );
        let warned = format!("subscription={name}");
        assert!(
            after_reload
                .lines()
                .any(|l| l.contains("`where` or `operations` changed") && l.contains(&warned)),
            "{after_reload}"
        );
    }

    exec(&holder, "ROLLBACK").await;
    exec(&src, "INSERT INTO one VALUES (3, 30), (4, 4); INSERT INTO two VALUES (3, 30), (4, 4)").await;
    for table in ["one", "two"] {
        // Under the new filter: (4, 4) stays out.
        wait_for_same(&src, &dst, &format!("{table} WHERE v > 5"), table, "id, v", "id", WAIT).await;
    }
}
