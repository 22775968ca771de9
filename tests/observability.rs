//! What an operator sees of `ferry run` against real clusters: `/metrics`
//! moving as replication runs, `/healthz` and `/readyz`, `/status` and
//! `ferry status`, a broken target counted against its own pipeline only,
//! and no password anywhere even when connections fail.

mod support;

use support::exec;

use std::time::Duration;

use ferry::metrics::State;
use support::daemon::{Daemon, wait_for_same};
use support::endpoints::{Endpoints, Samples, with_server};
use support::{Cluster, free_port};

const SETTLE: Duration = Duration::from_secs(120);
const SECRET: &str = "s3cret-Never-Shown";
const ITEMS: &str = "CREATE TABLE items (id bigint PRIMARY KEY, name text, qty int)";

fn url_with_password(cluster_port: u16) -> String {
    format!("postgresql://postgres:{SECRET}@127.0.0.1:{cluster_port}/postgres?sslmode=disable")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_a_replication_and_lag_returns_to_zero() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let src = source.client("postgres").await;
    let dst = target.client("postgres").await;
    exec(&src, ITEMS).await;
    exec(&dst, ITEMS).await;
    exec(&src, "INSERT INTO items SELECT g, 'old ' || g, 1 FROM generate_series(1, 1000) g; ANALYZE items")
        .await;

    let (daemon, http) = start_items_pipeline(&source, &target);
    assert_eq!(http.get("/healthz").await.0, 200);
    http.wait_for_state("test", State::Streaming, SETTLE).await;
    assert_eq!(http.get("/readyz").await.0, 200);

    let table = [("subscription", "test"), ("table", "public.items")];
    let after_copy = http.metrics().await;
    assert_eq!(after_copy.value("ferry_snapshot_rows_copied", &table), 1000.0);
    assert_eq!(after_copy.value("ferry_snapshot_rows_estimated", &table), 1000.0);
    assert_eq!(after_copy.value("ferry_pipeline_up", &[("subscription", "test")]), 1.0);

    // Three source transactions: 5 inserts, 3 updates, 2 deletes.
    exec(&src, "INSERT INTO items SELECT g, 'new', 0 FROM generate_series(2001, 2005) g").await;
    exec(&src, "UPDATE items SET qty = qty + 1 WHERE id IN (1, 2, 2001)").await;
    exec(&src, "DELETE FROM items WHERE id IN (3, 2002)").await;
    wait_for_same(&src, &dst, "items", "items", "id, name, qty", "id", SETTLE).await;

    let events = |op: &'static str| [("op", op), ("subscription", "test"), ("table", "public.items")];
    let sub = [("subscription", "test")];
    let samples = http
        .wait_for_metrics("3 transactions applied", SETTLE, |s| {
            s.value("ferry_transactions_applied_total", &sub) == 3.0
        })
        .await;
    assert_eq!(samples.value("ferry_events_total", &events("insert")), 5.0);
    assert_eq!(samples.value("ferry_events_total", &events("update")), 3.0);
    assert_eq!(samples.value("ferry_events_total", &events("delete")), 2.0);
    assert_eq!(samples.value("ferry_events_total", &events("truncate")), 0.0);
    assert_eq!(samples.value("ferry_apply_batch_rows_sum", &sub), 10.0);
    assert!(samples.value("ferry_apply_batch_duration_seconds_count", &sub) >= 1.0);
    assert_eq!(samples.value("ferry_replication_lag_seconds", &sub), 0.0);
    assert_eq!(samples.value("ferry_pipeline_up", &sub), 1.0);
    for kind in ["source", "target", "snapshot", "config", "slot"] {
        assert_eq!(samples.value("ferry_errors_total", &[("kind", kind), ("subscription", "test")]), 0.0);
    }
    assert!(samples.get("process_resident_memory_bytes", &[]).is_some_and(|v| v > 0.0));
    // The slot is measured every 10 s; the first measurement after the
    // slot exists shows it within a few MiB of the source's WAL.
    let samples = http
        .wait_for_metrics("the slot's retained WAL measured", SETTLE, |s| {
            s.value("ferry_source_slot_retained_wal_bytes", &sub) > 0.0
        })
        .await;
    let lag_bytes = samples.value("ferry_replication_lag_bytes", &sub);
    assert!((0.0..16e6).contains(&lag_bytes), "lag bytes {lag_bytes}");

    let report = http.status().await;
    let [pipeline] = report.pipelines.as_slice() else { panic!("one pipeline: {report:?}") };
    assert_eq!((pipeline.subscription.as_str(), pipeline.state), ("test", State::Streaming));
    assert!(pipeline.last_applied_lsn.is_some() && pipeline.last_commit_time.is_some(), "{pipeline:?}");
    assert_eq!((pipeline.lag_seconds, pipeline.error.as_deref()), (0.0, None));

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["status", "--url", &http.base])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "ferry status failed: {}", String::from_utf8_lossy(&output.stderr));
    let line = shown
        .lines()
        .find(|l| l.starts_with("test "))
        .unwrap_or_else(|| panic!("no line for test:\n{shown}"));
    assert!(
        line.contains("streaming") && line.contains(pipeline.last_applied_lsn.as_deref().unwrap()),
        "{shown}"
    );
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_target_counts_against_its_own_pipeline_only_and_no_password_shows() {
    let (source, good, broken) = (Cluster::start(), Cluster::start(), Cluster::start());
    broken.stop();
    let src = source.client("postgres").await;
    let dst = good.client("postgres").await;
    exec(&src, ITEMS).await;
    exec(&dst, ITEMS).await;

    let port = free_port();
    let config = format!(
        "[sources.src]\nurl = \"{}\"\n\n[targets.good]\nurl = \"{}\"\n\n[targets.broken]\nurl = \"{}\"\n\n\
         [[subscriptions]]\nname = \"good\"\nsource = \"src\"\ntarget = \"good\"\ntables = [{{ from = \"public.items\" }}]\n\n\
         [[subscriptions]]\nname = \"broken\"\nsource = \"src\"\ntarget = \"broken\"\ntables = [{{ from = \"public.items\" }}]\n",
        url_with_password(source.port),
        good.url("postgres"),
        url_with_password(broken.port),
    );
    let daemon = Daemon::start(&with_server(port, &config));
    let http = Endpoints::on(port);
    http.wait_for_state("good", State::Streaming, SETTLE).await;
    exec(&src, "INSERT INTO items SELECT g, 'x', g FROM generate_series(1, 20) g").await;
    wait_for_same(&src, &dst, "items", "items", "id, name, qty", "id", SETTLE).await;

    let target_errors =
        |s: &Samples, sub: &str| s.value("ferry_errors_total", &[("kind", "target"), ("subscription", sub)]);
    let samples = http
        .wait_for_metrics("two failed attempts of the broken pipeline", SETTLE, |s| {
            target_errors(s, "broken") >= 2.0
        })
        .await;
    assert_eq!(samples.value("ferry_pipeline_up", &[("subscription", "broken")]), 0.0);
    assert_eq!(samples.value("ferry_pipeline_up", &[("subscription", "good")]), 1.0);
    assert_eq!(target_errors(&samples, "good"), 0.0);
    assert_eq!(
        samples.value(
            "ferry_events_total",
            &[("op", "insert"), ("subscription", "good"), ("table", "public.items")]
        ),
        20.0
    );
    assert_eq!(
        samples.value(
            "ferry_events_total",
            &[("op", "insert"), ("subscription", "broken"), ("table", "public.items")]
        ),
        0.0
    );

    let report = http.status().await;
    let broken_status = report.pipelines.iter().find(|p| p.subscription == "broken").unwrap();
    assert_eq!(broken_status.state, State::Retrying, "{report:?}");
    let error = broken_status.error.as_deref().unwrap_or_default();
    assert!(error.contains("cannot connect") && error.contains(&broken.port.to_string()), "{error}");
    let good_status = report.pipelines.iter().find(|p| p.subscription == "good").unwrap();
    assert_eq!((good_status.state, good_status.error.as_deref()), (State::Streaming, None));

    // The failure was logged, and nothing shown anywhere holds the password.
    daemon.wait_for_log("retrying in", SETTLE).await;
    let (_, status_body) = http.get("/status").await;
    let (_, metrics_body) = http.get("/metrics").await;
    let status_table = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["status", "--url", &http.base])
        .output()
        .unwrap();
    for (what, text) in [
        ("logs", daemon.logs()),
        ("/status", status_body),
        ("/metrics", metrics_body),
        ("ferry status", String::from_utf8_lossy(&status_table.stdout).into_owned()),
    ] {
        assert!(!text.contains(SECRET), "the password shows in {what}:\n{text}");
    }
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_goes_away_takes_its_pipeline_down_until_it_returns() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let src = source.client("postgres").await;
    exec(&src, ITEMS).await;
    exec(&target.client("postgres").await, ITEMS).await;
    let (daemon, http) = start_items_pipeline(&source, &target);
    http.wait_for_state("test", State::Streaming, SETTLE).await;

    // No change flows: the idle pipeline notices the closed connection.
    target.stop();
    let sub = [("subscription", "test")];
    http.wait_for_metrics("the pipeline down with a target error", SETTLE, |s| {
        s.value("ferry_pipeline_up", &sub) == 0.0
            && s.value("ferry_errors_total", &[("kind", "target"), ("subscription", "test")]) >= 1.0
    })
    .await;
    assert_eq!(http.get("/healthz").await.0, 200, "a database being down is no reason to restart ferry");
    assert_eq!(http.get("/readyz").await.0, 200);

    target.start_again();
    http.wait_for_metrics("the pipeline up again", SETTLE, |s| s.value("ferry_pipeline_up", &sub) == 1.0)
        .await;
    exec(&src, "INSERT INTO items VALUES (1, 'after', 1)").await;
    let dst = target.client("postgres").await;
    wait_for_same(&src, &dst, "items", "items", "id, name, qty", "id", SETTLE).await;
    drop(daemon);
}

#[tokio::test]
async fn ferry_run_fails_at_start_when_its_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    // Databases that do not exist: the port is checked before any connection.
    let config = support::daemon::config(
        "postgresql://ferry@127.0.0.1:1/a",
        "postgresql://ferry@127.0.0.1:1/b",
        "test",
        &[("public.items", "public.items")],
        "",
    );
    let mut daemon = Daemon::start(&with_server(port, &config));
    assert_eq!(daemon.wait_for_exit(Duration::from_secs(30)).await, Some(1));
    let logs = daemon.logs();
    assert!(logs.contains(&format!("cannot listen on 127.0.0.1:{port}")), "{logs}");
    assert!(!logs.contains("starting pipeline"), "{logs}");
}

/// A command that fails says why once: many errors name their cause in
/// their own message, and the cause is not repeated after it.
#[test]
fn a_failed_command_names_its_cause_once() {
    let missing = std::env::temp_dir().join("ferry-no-such-config.toml");
    let closed = format!("http://127.0.0.1:{}", free_port());
    let commands: [(&[&str], &str); 2] = [
        (&["run", "--config", missing.to_str().unwrap()], "No such file or directory"),
        (&["status", "--url", &closed], "Connection refused"),
    ];
    for (args, cause) in commands {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_ferry")).args(args).output().unwrap();
        let shown = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {shown}");
        assert_eq!(shown.matches(cause).count(), 1, "{args:?}: {shown}");
    }
}

/// `ferry run` replicating `items` from `source` to `target` as subscription
/// `test`, with its HTTP endpoints on a port of their own.
fn start_items_pipeline(source: &Cluster, target: &Cluster) -> (Daemon, Endpoints) {
    let port = free_port();
    let config = support::daemon::config(
        &source.url("postgres"),
        &target.url("postgres"),
        "test",
        &[("public.items", "public.items")],
        "",
    );
    (Daemon::start(&with_server(port, &config)), Endpoints::on(port))
}

/// A client that stops half way through a request (a stuck scraper, a port
/// scan) does not hold up the exit: after SIGTERM, open connections get a
/// few seconds, then ferry exits as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_http_client_does_not_hold_up_the_exit() {
    let (source, target) = (Cluster::start(), Cluster::start());
    exec(&source.client("postgres").await, ITEMS).await;
    exec(&target.client("postgres").await, ITEMS).await;
    let (daemon, http) = start_items_pipeline(&source, &target);
    daemon.wait_for_log("streaming", SETTLE).await;
    let address = http.base.trim_start_matches("http://");
    let mut stalled = std::net::TcpStream::connect(address).unwrap();
    std::io::Write::write_all(&mut stalled, b"GET /metrics HTTP/1.1\r\n").unwrap();

    let (code, _) = tokio::task::block_in_place(|| daemon.signal_and_wait("TERM"));
    assert_eq!(code, Some(0));
    drop(stalled);
}
