//! `ferry run` against real clusters: snapshot, streaming, restarts and
//! crashes, each ending with source and target compared by checksum.

mod support;

use support::exec;

use std::time::Duration;

use support::daemon::{Daemon, checksum, wait_for_same};
use support::{Cluster, ClusterOptions};

const SETTLE: Duration = Duration::from_secs(120);

fn config(source: &Cluster, target: &Cluster, tables: &[(&str, &str)], extra: &str) -> String {
    support::daemon::config(&source.url("postgres"), &target.url("postgres"), "test", tables, extra)
}

const ITEMS: &str =
    "CREATE TABLE items (id bigint PRIMARY KEY, name text, qty int, updated timestamptz DEFAULT now())";

/// Source and target with the items table, and a daemon streaming it.
struct ItemsPipeline {
    source: Cluster,
    src: tokio_postgres::Client,
    dst: tokio_postgres::Client,
    daemon: Daemon,
    target: Cluster,
}

async fn streaming_items() -> ItemsPipeline {
    let (source, target) = (Cluster::start(), Cluster::start());
    let (src, dst) = (source.client("postgres").await, target.client("postgres").await);
    exec(&src, ITEMS).await;
    exec(&dst, ITEMS).await;
    let daemon = Daemon::start(&config(&source, &target, &[("items", "items")], ""));
    daemon.wait_for_log("streaming", SETTLE).await;
    ItemsPipeline { source, src, dst, daemon, target }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_existing_rows_then_streams_changes_made_during_the_copy() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let src = source.client("postgres").await;
    let dst = target.client("postgres").await;
    exec(&src, ITEMS).await;
    exec(
        &src,
        "INSERT INTO items (id, name, qty) SELECT g, 'item ' || g, g % 100 FROM generate_series(1, 50000) g",
    )
    .await;
    exec(&dst, ITEMS).await;

    // Keep writing while the daemon starts and copies.
    let writer_src = source.client("postgres").await;
    let writer = tokio::spawn(async move {
        for i in 0..300i64 {
            writer_src
                .batch_execute(&format!(
                    "BEGIN;
                     INSERT INTO items (id, name, qty) VALUES ({}, 'new', 1);
                     UPDATE items SET qty = qty + 1 WHERE id = {};
                     DELETE FROM items WHERE id = {};
                     COMMIT;",
                    100_000 + i,
                    1 + i * 7,
                    2 + i * 11
                ))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let daemon = Daemon::start(&config(&source, &target, &[("public.items", "public.items")], ""));
    writer.await.unwrap();
    wait_for_same(&src, &dst, "items", "items", "id, name, qty, updated", "id", SETTLE).await;
    assert!(checksum(&dst, "items", "id", "id").await.0 > 49_000);
    drop(daemon);
}

async fn slot_confirmed(client: &tokio_postgres::Client) -> String {
    client
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'ferry_test'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_confirms_and_a_restart_resumes_without_duplicates() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let src = source.client("postgres").await;
    let dst = target.client("postgres").await;
    let schema = "CREATE TABLE counter (id int PRIMARY KEY, n bigint); CREATE TABLE log (id bigint PRIMARY KEY, note text);";
    exec(&src, schema).await;
    exec(&src, "INSERT INTO counter VALUES (1, 0)").await;
    exec(&dst, schema).await;
    let config = config(&source, &target, &[("counter", "counter"), ("log", "log")], "");

    let daemon = Daemon::start(&config);
    daemon.wait_for_log("streaming", SETTLE).await;
    for i in 0..50 {
        exec(
            &src,
            &format!("BEGIN; UPDATE counter SET n = n + 1; INSERT INTO log VALUES ({i}, 'x'); COMMIT;"),
        )
        .await;
    }
    wait_for_same(&src, &dst, "counter", "counter", "id, n", "id", SETTLE).await;
    let (code, _) = daemon.signal_and_wait("TERM");
    assert_eq!(code, Some(0), "SIGTERM should end ferry cleanly");

    // Feedback after durability: what the source may forget is exactly what
    // the target recorded.
    let progress: String = dst
        .query_one("SELECT end_lsn::text FROM ferry.progress WHERE subscription = 'test'", &[])
        .await
        .unwrap()
        .get(0);
    let confirmed = slot_confirmed(&src).await;
    let (progress, confirmed): (ferry::pg::Lsn, ferry::pg::Lsn) =
        (progress.parse().unwrap(), confirmed.parse().unwrap());
    assert!(confirmed <= progress, "confirmed {confirmed} must not pass the target's progress {progress}");

    // Changes while ferry is down arrive after the restart, once.
    for i in 50..80 {
        exec(
            &src,
            &format!("BEGIN; UPDATE counter SET n = n + 1; INSERT INTO log VALUES ({i}, 'y'); COMMIT;"),
        )
        .await;
    }
    let daemon = Daemon::start(&config);
    wait_for_same(&src, &dst, "log", "log", "id, note", "id", SETTLE).await;
    wait_for_same(&src, &dst, "counter", "counter", "id, n", "id", SETTLE).await;
    let n: i64 = dst.query_one("SELECT n FROM counter", &[]).await.unwrap().get(0);
    assert_eq!(n, 80);
    let (code, _) = daemon.signal_and_wait("INT");
    assert_eq!(code, Some(0), "SIGINT should end ferry cleanly too");
}

/// A restart must not wait on WAL that ferry did not write. The progress
/// read at start may come from an asynchronous commit not yet flushed, and
/// must be durable before the source hears of it. Before, ferry waited for
/// the target's flush position to pass its insert position; a session
/// holding an open transaction that had written something (an application
/// idle in its transaction) leaves WAL there that nothing flushes on an
/// otherwise quiet target, and the start failed with "the target did not
/// flush its WAL" every 10 s for as long as that transaction stayed open.
/// (With `wal_level = replica` or above, the standby snapshot the server
/// logs every 15 s flushes it sooner or later; `minimal` makes it last.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_goes_on_while_a_target_session_holds_unflushed_wal() {
    let source = Cluster::start();
    let target = Cluster::start_with(ClusterOptions {
        conf: vec!["wal_level = minimal".into(), "max_wal_senders = 0".into()],
        ..Default::default()
    });
    let (src, dst) = (source.client("postgres").await, target.client("postgres").await);
    exec(&src, ITEMS).await;
    exec(&dst, &format!("{ITEMS}; CREATE TABLE noise (id int)")).await;
    let config = config(&source, &target, &[("items", "items")], "");
    let daemon = Daemon::start(&config);
    daemon.wait_for_log("streaming", SETTLE).await;
    exec(&src, "INSERT INTO items (id, name) VALUES (1, 'before the restart')").await;
    wait_for_same(&src, &dst, "items", "items", "id, name", "id", SETTLE).await;
    let (code, _) = daemon.signal_and_wait("TERM");
    assert_eq!(code, Some(0));

    let application = target.client("postgres").await;
    exec(&application, "BEGIN; INSERT INTO noise VALUES (1)").await;
    exec(&src, "INSERT INTO items (id, name) VALUES (2, 'after the restart')").await;
    let daemon = Daemon::start(&config);
    wait_for_same(&src, &dst, "items", "items", "id, name", "id", SETTLE).await;
    assert!(!daemon.logs().contains("did not flush"), "{}", daemon.logs());
    exec(&application, "COMMIT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_key_changes_toast_truncate_and_every_replica_identity() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let src = source.client("postgres").await;
    let dst = target.client("postgres").await;
    let schema = "
        CREATE TABLE plain (id int PRIMARY KEY, v text);
        CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
        CREATE TABLE full_identity (id int PRIMARY KEY, data jsonb, n int);
        CREATE TABLE by_index (id int PRIMARY KEY, code text NOT NULL, n int);
        CREATE UNIQUE INDEX by_index_code ON by_index (code);";
    exec(&src, schema).await;
    exec(&src, "ALTER TABLE full_identity REPLICA IDENTITY FULL; ALTER TABLE by_index REPLICA IDENTITY USING INDEX by_index_code;").await;
    // The target keys by_index on code, as its source identity does.
    exec(
        &dst,
        &schema.replace(
            "by_index (id int PRIMARY KEY, code text NOT NULL",
            "by_index (id int, code text PRIMARY KEY",
        ),
    )
    .await;
    exec(
        &src,
        "INSERT INTO docs SELECT 1, 'draft', string_agg(md5(g::text), '') FROM generate_series(1, 700) g",
    )
    .await;
    let tables =
        [("plain", "plain"), ("docs", "docs"), ("full_identity", "full_identity"), ("by_index", "by_index")];
    let daemon = Daemon::start(&config(&source, &target, &tables, ""));
    daemon.wait_for_log("streaming", SETTLE).await;

    for statement in [
        "INSERT INTO plain VALUES (1, 'a'), (2, 'b'), (3, 'c')",
        "UPDATE plain SET id = 10 WHERE id = 1",
        "UPDATE plain SET id = id + 100, v = v || '!'",
        "DELETE FROM plain WHERE id = 102",
        "UPDATE docs SET title = 'final' WHERE id = 1",
        "INSERT INTO full_identity VALUES (1, '{\"a\": 1}', 1), (2, '[1, 2]', 2)",
        "UPDATE full_identity SET n = 5, data = '{\"b\": [null]}' WHERE id = 1",
        "DELETE FROM full_identity WHERE id = 2",
        "INSERT INTO by_index VALUES (1, 'one', 1), (2, 'two', 2)",
        "UPDATE by_index SET n = 10 WHERE code = 'one'",
        "UPDATE by_index SET code = 'uno' WHERE code = 'one'",
        "DELETE FROM by_index WHERE code = 'two'",
    ] {
        exec(&src, statement).await;
    }
    wait_for_same(&src, &dst, "plain", "plain", "id, v", "id", SETTLE).await;
    wait_for_same(&src, &dst, "docs", "docs", "id, title, body", "id", SETTLE).await;
    wait_for_same(&src, &dst, "full_identity", "full_identity", "id, data, n", "id", SETTLE).await;
    wait_for_same(&src, &dst, "by_index", "by_index", "id, code, n", "code", SETTLE).await;
    let body_length: i32 = dst.query_one("SELECT length(body) FROM docs", &[]).await.unwrap().get(0);
    assert_eq!(body_length, 700 * 32, "an unchanged TOAST value keeps its target value");

    exec(&src, "TRUNCATE plain, docs").await;
    wait_for_same(&src, &dst, "plain", "plain", "id, v", "id", SETTLE).await;
    wait_for_same(&src, &dst, "docs", "docs", "id", "id", SETTLE).await;
    assert_eq!(checksum(&dst, "plain", "id", "id").await.0, 0);
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_identifiers_and_every_type_arrive_as_on_the_source() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let src = source.client("postgres").await;
    let dst = target.client("postgres").await;
    let definitions: Vec<String> =
        support::types::COLUMNS.iter().map(|(name, ty, _)| format!("{name} {ty}")).collect();
    let schema = format!(
        "{types}
         CREATE SCHEMA \"Sales Dept\";
         CREATE TABLE \"Sales Dept\".\"Order Lines\" (\"Id\" int PRIMARY KEY, \"select\" text, \"naïve col\" int, \"MixedCase\" text);
         CREATE TABLE every_type (id int PRIMARY KEY, {columns});",
        types = support::types::SUPPORTING_TYPES,
        columns = definitions.join(", ")
    );
    exec(&src, &schema).await;
    exec(&dst, &schema).await;
    let values: Vec<&str> = support::types::COLUMNS.iter().map(|(_, _, v)| *v).collect();
    // One row copied by the snapshot, one streamed.
    exec(&src, &format!("INSERT INTO every_type VALUES (1, {})", values.join(", "))).await;
    let tables =
        [(r#""Sales Dept"."Order Lines""#, r#""Sales Dept"."Order Lines""#), ("every_type", "every_type")];
    let daemon = Daemon::start(&config(&source, &target, &tables, ""));
    daemon.wait_for_log("streaming", SETTLE).await;
    exec(&src, &format!("INSERT INTO every_type VALUES (2, {})", values.join(", "))).await;
    exec(&src, "INSERT INTO \"Sales Dept\".\"Order Lines\" VALUES (1, 'from', 2, 'Ünïcødé')").await;
    exec(&src, "UPDATE \"Sales Dept\".\"Order Lines\" SET \"select\" = 'where', \"MixedCase\" = NULL").await;

    let names: Vec<&str> = support::types::COLUMNS.iter().map(|(name, _, _)| *name).collect();
    wait_for_same(&src, &dst, "every_type", "every_type", &format!("id, {}", names.join(", ")), "id", SETTLE)
        .await;
    let odd = r#""Sales Dept"."Order Lines""#;
    wait_for_same(&src, &dst, odd, odd, r#""Id", "select", "naïve col", "MixedCase""#, r#""Id""#, SETTLE)
        .await;
    // Compare value by value too, so a mismatch names its column.
    let text = |rows: Vec<tokio_postgres::SimpleQueryMessage>| -> Vec<Option<String>> {
        rows.into_iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => {
                    Some((0..row.len()).map(|i| row.get(i).map(str::to_string)).collect())
                }
                _ => None,
            })
            .unwrap()
    };
    for id in [1, 2] {
        let query = format!("SELECT * FROM every_type WHERE id = {id}");
        let (expected, actual) =
            (text(src.simple_query(&query).await.unwrap()), text(dst.simple_query(&query).await.unwrap()));
        for (i, name) in std::iter::once("id").chain(names.iter().copied()).enumerate() {
            assert_eq!(actual[i], expected[i], "row {id}, column {name}");
        }
    }
    drop(daemon);
}

/// With `standard_conforming_strings` off a backslash in a plain literal is
/// an escape: ferry's literals must mean the same either way, here the
/// table name it records its copy under.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backslash_in_a_table_name_is_recorded_as_it_is_when_literals_take_escapes() {
    let source = Cluster::start();
    let target = Cluster::start_with(ClusterOptions {
        conf: vec!["standard_conforming_strings = off".into(), "escape_string_warning = off".into()],
        ..Default::default()
    });
    let (src, dst) = (source.client("postgres").await, target.client("postgres").await);
    let table = r#""back\slash""#;
    let schema = format!("CREATE TABLE {table} (id int PRIMARY KEY, note text)");
    exec(&src, &schema).await;
    exec(&dst, &schema).await;
    exec(&src, &format!(r"INSERT INTO {table} VALUES (1, E'copied \\ once')")).await;
    let daemon = Daemon::start(&config(&source, &target, &[(table, table)], ""));
    daemon.wait_for_log("streaming", SETTLE).await;
    exec(&src, &format!(r"INSERT INTO {table} VALUES (2, E'streamed \\ once')")).await;
    wait_for_same(&src, &dst, table, table, "id, note", "id", SETTLE).await;

    let recorded: Vec<(String, bool)> = dst
        .query("SELECT source_table, copying FROM ferry.tables", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(recorded, vec![(r#""public"."back\slash""#.to_string(), false)]);
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_transactions_that_abort_leave_nothing_on_the_target() {
    let ItemsPipeline { source: _source, src, dst, daemon: _daemon, target: _target } =
        streaming_items().await;
    // Each is far over the clusters' logical_decoding_work_mem (64 kB), so
    // the source streams it while in progress.
    exec(
        &src,
        "BEGIN; INSERT INTO items (id, name, qty) SELECT g, repeat('x', 100), 1 FROM generate_series(1, 20000) g;
         ROLLBACK;
         BEGIN; INSERT INTO items (id, name, qty) SELECT g, repeat('y', 100), 2 FROM generate_series(1, 10000) g;
         SAVEPOINT s;
         INSERT INTO items (id, name, qty) SELECT g, repeat('z', 100), 3 FROM generate_series(10001, 20000) g;
         ROLLBACK TO SAVEPOINT s;
         UPDATE items SET qty = 4 WHERE id <= 10;
         COMMIT;
         INSERT INTO items (id, name, qty) VALUES (0, 'after', 5);",
    )
    .await;
    wait_for_same(&src, &dst, "items", "items", "id, name, qty, updated", "id", SETTLE).await;
    let (rows, _) = checksum(&dst, "items", "id", "id").await;
    assert_eq!(rows, 10_001, "only the committed work arrived");
    wait_until_streamed(&src, 2).await;
}

/// A column added inside a streamed transaction that is applied while it
/// arrives and then rolls back is not carried afterwards: the table's later
/// changes, without it, still apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_by_a_streamed_transaction_that_aborts_is_forgotten() {
    let ItemsPipeline { source: _source, src, dst, daemon, target: _target } = streaming_items().await;
    // The target is ready for the column first, as a migration would be.
    exec(&dst, "ALTER TABLE items ADD COLUMN c int").await;
    exec(
        &src,
        "BEGIN; ALTER TABLE items ADD COLUMN c int;
         INSERT INTO items (id, name, qty, c) SELECT g, repeat('x', 100), 1, g FROM generate_series(1, 20000) g",
    )
    .await;
    wait_until_written(&dst, "items").await;
    exec(&src, "ROLLBACK; INSERT INTO items (id, name, qty) VALUES (1, 'after', 5)").await;
    wait_for_same(&src, &dst, "items", "items", "id, name, qty, updated", "id", SETTLE).await;
    assert_eq!(count(&dst, "items").await, 1);
    // The stream's description was followed while it was applied.
    assert!(daemon.logs().contains("c added: replicated into c"), "{}", daemon.logs());
}

/// A loop with an exception block opens a sub-transaction per iteration;
/// those that fail are cut out of the streamed transaction one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_transaction_with_thousands_of_subtransactions_keeps_the_committed_ones() {
    let ItemsPipeline { source: _source, src, dst, daemon: _daemon, target: _target } =
        streaming_items().await;
    exec(
        &src,
        "DO $$ BEGIN FOR i IN 1..20000 LOOP
           BEGIN
             INSERT INTO items (id, name, qty) VALUES (i, repeat('s', 100), i % 7);
             IF i % 3 = 0 THEN RAISE EXCEPTION 'undo %', i; END IF;
           EXCEPTION WHEN raise_exception THEN NULL;
           END;
         END LOOP; END $$",
    )
    .await;
    wait_for_same(&src, &dst, "items", "items", "id, name, qty, updated", "id", SETTLE).await;
    assert_eq!(count(&dst, "items").await, 13_334);
    wait_until_streamed(&src, 1).await;
}

/// Waits until the source has streamed at least `transactions` in progress;
/// the walsender reports its statistics a little after the fact.
async fn wait_until_streamed(src: &tokio_postgres::Client, transactions: i64) {
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let streamed: i64 = src
            .query_one(
                "SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = 'ferry_test'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if streamed >= transactions {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the transactions were not streamed: {streamed}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether a transaction other than the caller's holds a write lock on
/// `table`: rows are being written into it, not yet committed.
async fn being_written(client: &tokio_postgres::Client, table: &str) -> bool {
    client
        .query_one(
            "SELECT count(*) > 0 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
             WHERE c.relname = $1 AND l.mode = 'RowExclusiveLock' AND l.pid <> pg_backend_pid()",
            &[&table],
        )
        .await
        .unwrap()
        .get(0)
}

async fn wait_until_written(client: &tokio_postgres::Client, table: &str) {
    let deadline = std::time::Instant::now() + SETTLE;
    while !being_written(client, table).await {
        assert!(std::time::Instant::now() < deadline, "nothing was written into {table} on the target");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn count(client: &tokio_postgres::Client, table: &str) -> i64 {
    client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_transaction_is_applied_while_it_arrives_and_shows_only_at_its_commit() {
    let ItemsPipeline { source: _source, src, dst, daemon, target: _target } = streaming_items().await;

    // Far over logical_decoding_work_mem (64 kB): streamed while open.
    exec(&src, "BEGIN; INSERT INTO items (id, name, qty) SELECT g, repeat('x', 100), 1 FROM generate_series(1, 20000) g")
        .await;
    wait_until_written(&dst, "items").await;
    assert_eq!(count(&dst, "items").await, 0, "nothing shows before the source commits");
    exec(&src, "UPDATE items SET qty = 2 WHERE id <= 100; DELETE FROM items WHERE id > 19990; COMMIT").await;
    wait_for_same(&src, &dst, "items", "items", "id, name, qty, updated", "id", SETTLE).await;
    assert_eq!(count(&dst, "items").await, 19_990);
    let logs = daemon.logs();
    assert!(logs.contains("it was applied while it arrived"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_committed_while_a_large_one_streams_goes_first() {
    let ItemsPipeline { source, src, dst, daemon, target: _target } = streaming_items().await;
    let other = source.client("postgres").await;

    exec(&src, "BEGIN; INSERT INTO items (id, name, qty) SELECT g, repeat('x', 100), 1 FROM generate_series(1, 20000) g")
        .await;
    wait_until_written(&dst, "items").await;
    // Commits first, so it is applied first: what was applied of the open
    // transaction is rolled back, not committed along with it.
    exec(&other, "INSERT INTO items (id, name, qty) VALUES (0, 'between', 5)").await;
    let deadline = std::time::Instant::now() + SETTLE;
    while count(&dst, "items").await == 0 {
        assert!(std::time::Instant::now() < deadline, "the transaction in between did not arrive");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(&dst, "items").await, 1, "only the committed transaction shows");
    // The large one then changes the row the other one wrote.
    exec(&src, "UPDATE items SET qty = 9 WHERE id = 0; COMMIT").await;
    wait_for_same(&src, &dst, "items", "items", "id, name, qty, updated", "id", SETTLE).await;
    assert_eq!(count(&dst, "items").await, 20_001);
    let logs = daemon.logs();
    assert!(logs.contains("applying it from its spool"), "{logs}");
    assert!(!logs.contains("retrying"), "{logs}");
}

/// Two large transactions streamed at once, their stream blocks
/// interleaved, commit in the opposite order to their start: each is
/// applied whole, in commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_streamed_transactions_apply_in_commit_order() {
    let ItemsPipeline { source, src, dst, daemon, target: _target } = streaming_items().await;
    let other = source.client("postgres").await;

    exec(&src, "BEGIN; INSERT INTO items (id, name, qty) SELECT g, repeat('a', 100), 1 FROM generate_series(1, 20000) g")
        .await;
    wait_until_written(&dst, "items").await;
    // Keys apart from the first one's, so neither waits for the other.
    exec(
        &other,
        "BEGIN; INSERT INTO items (id, name, qty) SELECT g, repeat('b', 100), 2 FROM generate_series(100001, 120000) g",
    )
    .await;
    exec(&src, "INSERT INTO items (id, name, qty) SELECT g, repeat('c', 100), 3 FROM generate_series(20001, 40000) g")
        .await;
    exec(&other, "UPDATE items SET qty = 7 WHERE id > 110000; COMMIT").await;
    let deadline = std::time::Instant::now() + SETTLE;
    while count(&dst, "items").await != 20_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the second transaction, committed first, did not arrive alone"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Committed after it, so its update of the other one's rows wins.
    exec(&src, "UPDATE items SET qty = 9 WHERE id BETWEEN 115001 AND 120000; COMMIT").await;
    wait_for_same(&src, &dst, "items", "items", "id, name, qty, updated", "id", SETTLE).await;
    let nines: i64 = dst.query_one("SELECT count(*) FROM items WHERE qty = 9", &[]).await.unwrap().get(0);
    assert_eq!(nines, 5_000);
    wait_until_streamed(&src, 2).await;
    assert!(daemon.logs().contains("applying it from its spool"), "{}", daemon.logs());
}

/// A large table whose target has a unique index of its own is copied in
/// one part: two parts inserting the same value would wait for each other
/// for ever, as each commits only once both are done. Whole, the copy
/// fails on the duplicate and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_only_unique_index_is_not_split_into_a_deadlock() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let (src, dst) = (source.client("postgres").await, target.client("postgres").await);
    let table = "CREATE TABLE big (id int PRIMARY KEY, tag int, pad text)";
    exec(&src, table).await;
    exec(&dst, &format!("{table}; CREATE UNIQUE INDEX ON big (tag)")).await;
    // Large enough to be split; the first and the last row share a tag.
    exec(
        &src,
        "INSERT INTO big SELECT g, CASE WHEN g = 200000 THEN 1 ELSE g END, md5(g::text) FROM generate_series(1, 200000) g",
    )
    .await;
    let daemon = Daemon::start(&config(&source, &target, &[("big", "big")], ""));
    daemon.wait_for_log("23505", SETTLE).await;
    let rows: i64 = dst.query_one("SELECT count(*) FROM big", &[]).await.unwrap().get(0);
    assert_eq!(rows, 0, "nothing of the failed copy stays");
}

/// A large table whose target key tells apart less than the source's (a
/// case-insensitive collation, or `citext` for `text`) is copied in one
/// part: two source keys that are one on the target, copied by two parts,
/// would wait for each other for ever. Copied whole, the duplicate is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_key_that_makes_two_source_keys_one_is_not_split_into_a_deadlock() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let (src, dst) = (source.client("postgres").await, target.client("postgres").await);
    exec(
        &src,
        "CREATE TABLE big (id text PRIMARY KEY, pad text); CREATE TABLE big2 (id text PRIMARY KEY, pad text)",
    )
    .await;
    exec(
        &dst,
        "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
         CREATE TABLE big (id text COLLATE ci PRIMARY KEY, pad text);
         CREATE EXTENSION citext;
         CREATE TABLE big2 (id citext PRIMARY KEY, pad text);",
    )
    .await;
    // Large enough to be split; the first row and the last differ in case only.
    for table in ["big", "big2"] {
        exec(
            &src,
            &format!(
                "INSERT INTO {table} SELECT 'k' || g, md5(g::text) FROM generate_series(1, 200000) g;
                 INSERT INTO {table} VALUES ('K1', 'last');"
            ),
        )
        .await;
        let daemon = Daemon::start(&config(&source, &target, &[(table, table)], ""));
        daemon.wait_for_log("23505", SETTLE).await;
        let rows: i64 = dst.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0);
        assert_eq!(rows, 0, "nothing of the failed copy stays");
        drop(daemon);
    }
}

/// A large table that a foreign key of the target involves is copied in
/// one part: a part's session does not see the rows another part has not
/// committed yet, so a row referencing one of those would be refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_table_under_a_foreign_key_is_copied_whole() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let (src, dst) = (source.client("postgres").await, target.client("postgres").await);
    let table = "CREATE TABLE tree (id int PRIMARY KEY, parent int REFERENCES tree, pad text)";
    exec(&src, table).await;
    exec(&dst, table).await;
    // Large enough to be split; each row of the first half references one
    // of the second, the second half's rows their own parent.
    exec(
        &src,
        "INSERT INTO tree SELECT g, NULL, md5(g::text) FROM generate_series(100001, 200000) g;
         INSERT INTO tree SELECT g, 200001 - g, md5(g::text) FROM generate_series(1, 100000) g",
    )
    .await;
    let daemon = Daemon::start(&config(&source, &target, &[("tree", "tree")], ""));
    wait_for_same(&src, &dst, "tree", "tree", "id, parent, pad", "id", SETTLE).await;
    assert!(!daemon.logs().contains("23503"), "{}", daemon.logs());
}

/// A case-insensitive collation on a column the target's primary key only
/// INCLUDEs cannot make two source keys one: the large table is still
/// copied in two parts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collation_on_an_included_column_does_not_stop_a_split() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let (src, dst) = (source.client("postgres").await, target.client("postgres").await);
    exec(&src, "CREATE TABLE big (id int PRIMARY KEY, tag text)").await;
    exec(
        &dst,
        "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
         CREATE TABLE big (id int, tag text COLLATE ci, PRIMARY KEY (id) INCLUDE (tag))",
    )
    .await;
    // Large enough to be split.
    exec(&src, "INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 200000) g").await;
    let daemon = Daemon::start(&config(&source, &target, &[("big", "big")], ""));
    wait_for_same(&src, &dst, "big", "big", "id, tag", "id", SETTLE).await;
    let copied = daemon.wait_for_log("parts=", SETTLE).await;
    assert!(copied.contains("parts=2"), "{copied}");
}

/// A large table whose target has an insert trigger is copied in one
/// part: the trigger may write a row every part's session writes (here a
/// statement trigger, which each part's COPY fires; or a row trigger on a
/// partition taking a lock), and a part waiting for another's lock while
/// that one waits, idle, for the rest to commit is a deadlock PostgreSQL
/// cannot see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_table_whose_target_has_a_trigger_is_copied_whole() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let (src, dst) = (source.client("postgres").await, target.client("postgres").await);
    let table = "CREATE TABLE big (id int PRIMARY KEY, pad text)";
    exec(&src, table).await;
    exec(
        &dst,
        &format!(
            "{table};
             CREATE TABLE copies (n int);
             INSERT INTO copies VALUES (0);
             CREATE FUNCTION count_copy() RETURNS trigger LANGUAGE plpgsql
                 AS 'BEGIN UPDATE copies SET n = n + 1; RETURN NULL; END';
             CREATE TRIGGER counted AFTER INSERT ON big FOR EACH STATEMENT EXECUTE FUNCTION count_copy()"
        ),
    )
    .await;
    // A partitioned target whose partition has a row trigger that takes a
    // lock until its transaction ends.
    exec(&src, "CREATE TABLE parted (id int PRIMARY KEY, pad text)").await;
    exec(
        &dst,
        "CREATE TABLE parted (id int PRIMARY KEY, pad text) PARTITION BY RANGE (id);
         CREATE TABLE parted_all PARTITION OF parted FOR VALUES FROM (MINVALUE) TO (MAXVALUE);
         CREATE FUNCTION take_lock() RETURNS trigger LANGUAGE plpgsql
             AS 'BEGIN PERFORM pg_advisory_xact_lock(1); RETURN NEW; END';
         CREATE TRIGGER locking BEFORE INSERT ON parted_all FOR EACH ROW EXECUTE FUNCTION take_lock()",
    )
    .await;
    // Large enough to be split.
    for table in ["big", "parted"] {
        exec(&src, &format!("INSERT INTO {table} SELECT g, md5(g::text) FROM generate_series(1, 200000) g"))
            .await;
    }
    let daemon = Daemon::start(&config(&source, &target, &[("big", "big"), ("parted", "parted")], ""));
    wait_for_same(&src, &dst, "big", "big", "id, pad", "id", SETTLE).await;
    wait_for_same(&src, &dst, "parted", "parted", "id, pad", "id", SETTLE).await;
    let copies: i32 = dst.query_one("SELECT n FROM copies", &[]).await.unwrap().get(0);
    assert_eq!(copies, 1, "one COPY");
    assert_eq!(daemon.logs().matches("parts=1").count(), 2, "{}", daemon.logs());
}

/// Time limits set on both databases for every session do not cut the
/// copy of a large table short: ferry's copy sessions run without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_time_limits_do_not_cut_a_large_copy_short() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let (src, dst) = (source.client("postgres").await, target.client("postgres").await);
    let table = "CREATE TABLE big (id int PRIMARY KEY, pad text)";
    exec(&src, table).await;
    exec(&dst, table).await;
    exec(&src, "INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 300000) g").await;
    let limits = "ALTER DATABASE postgres SET statement_timeout = '250ms';
                  ALTER DATABASE postgres SET idle_in_transaction_session_timeout = '250ms'";
    exec(&src, limits).await;
    exec(&dst, limits).await;
    let daemon = Daemon::start(&config(&source, &target, &[("big", "big")], ""));
    wait_for_same(&src, &dst, "big", "big", "id, pad", "id", SETTLE).await;
    assert!(!daemon.logs().contains("57014"), "{}", daemon.logs());
    // The table was copied in parts; the origin of the second part's
    // session went with it: each would keep one of the target's origin
    // entries for good.
    daemon.wait_for_log("slot created", SETTLE).await;
    assert_eq!(support::origins(&dst).await, ["ferry_test"]);
}

/// An object reference (`regclass`) names the same object after the copy,
/// though its oid differs on the target: it travels as a name, not as the
/// source's oid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regclass_value_names_the_same_table_after_the_copy() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let (src, dst) = (source.client("postgres").await, target.client("postgres").await);
    let refs = "CREATE TABLE refs (id int PRIMARY KEY, r regclass)";
    // The source's tables get other oids than the target's.
    exec(&src, &format!("CREATE TABLE padding (); CREATE TABLE more_padding (); {refs}")).await;
    exec(&dst, refs).await;
    exec(&src, "INSERT INTO refs VALUES (1, 'refs')").await;
    let daemon = Daemon::start(&config(&source, &target, &[("refs", "refs")], ""));
    daemon.wait_for_log("streaming", SETTLE).await;
    let named: String = dst.query_one("SELECT r::text FROM refs WHERE id = 1", &[]).await.unwrap().get(0);
    assert_eq!(named, "refs");
}

/// Quotes (both kinds), commas, spaces and upper case in every name a config
/// can hold: schema, table, columns, rename target, filter column and an
/// existing publication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotes_in_every_name_survive_snapshot_and_streaming() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let (src, dst) = (source.client("postgres").await, target.client("postgres").await);
    exec(
        &src,
        r#"CREATE SCHEMA "Q""s"; CREATE TABLE "Q""s"."it's ""x""" ("I""d" int PRIMARY KEY, "co'l" text, "Upper, Col" text);
           CREATE PUBLICATION "My ""Pub"", x'" FOR TABLE "Q""s"."it's ""x""";
           INSERT INTO "Q""s"."it's ""x""" VALUES (1, 'a', 'A'), (2, 'skip', 'B');"#,
    )
    .await;
    exec(
        &dst,
        r#"CREATE SCHEMA "T""2"; CREATE TABLE "T""2"."Dst ""t""" ("I""d" int PRIMARY KEY, "ta""rget" text, "Upper, Col" text);"#,
    )
    .await;
    let config = format!(
        "[sources.src]\nurl = \"{}\"\n\n[targets.dst]\nurl = \"{}\"\n\n\
         [[subscriptions]]\nname = \"odd\"\nsource = \"src\"\ntarget = \"dst\"\npublication = '''My \"Pub\", x''''\n\n\
         [[subscriptions.tables]]\nfrom = '''\"Q\"\"s\".\"it's \"\"x\"\"\"'''\nto = '''\"T\"\"2\".\"Dst \"\"t\"\"\"'''\n\
         rename = {{ \"co'l\" = 'ta\"rget' }}\nwhere = '''\"co'l\" <> 'skip' '''\n",
        source.url("postgres"),
        target.url("postgres")
    );
    let daemon = Daemon::start(&config);
    daemon.wait_for_log("streaming", SETTLE).await;
    exec(&src, r#"INSERT INTO "Q""s"."it's ""x""" VALUES (3, 'c', 'C'), (4, 'skip', 'D'); UPDATE "Q""s"."it's ""x""" SET "Upper, Col" = 'AA' WHERE "I""d" = 1; DELETE FROM "Q""s"."it's ""x""" WHERE "I""d" = 3"#).await;
    exec(&src, r#"INSERT INTO "Q""s"."it's ""x""" VALUES (5, 'e', 'E')"#).await;
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let rows = dst
            .query(r#"SELECT "I""d", "ta""rget", "Upper, Col" FROM "T""2"."Dst ""t""" ORDER BY 1"#, &[])
            .await
            .unwrap();
        let got: Vec<(i32, String, String)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
        let want = vec![(1, "a".to_string(), "AA".to_string()), (5, "e".into(), "E".into())];
        if got == want {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "got {got:?}\n{}", daemon.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    exec(&src, r#"INSERT INTO "Q""s"."it's ""x""" SELECT g, 'g' || g, 'u' FROM generate_series(100, 399) g"#)
        .await;
    exec(
        &src,
        r#"UPDATE "Q""s"."it's ""x""" SET "co'l" = "co'l" || '!', "Upper, Col" = 'v' WHERE "I""d" >= 100"#,
    )
    .await;
    exec(&src, r#"DELETE FROM "Q""s"."it's ""x""" WHERE "I""d" >= 300"#).await;
    loop {
        let row = dst
            .query_one(r#"SELECT count(*), count(*) FILTER (WHERE "ta""rget" LIKE '%!' AND "Upper, Col" = 'v') FROM "T""2"."Dst ""t""""#, &[])
            .await
            .unwrap();
        let got: (i64, i64) = (row.get(0), row.get(1));
        if got == (202, 200) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "got {got:?}\n{}", daemon.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(daemon);
}

/// The source's output settings must not change values: ferry reads the
/// source in ISO dates, `postgres` intervals and shortest-exact floats, as
/// PostgreSQL's own subscriber does. Before, a source with `DateStyle =
/// 'German'` sent 3 February as `03.02.2024`, which the target read as 2
/// March, and `extra_float_digits = 0` rounded 0.30000000000000004 to 0.3.
/// The target's key is `bigint` so that the snapshot copies as text too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_output_settings_do_not_change_values() {
    let source = Cluster::start_with(ClusterOptions {
        conf: vec![
            "datestyle = 'German'".into(),
            "intervalstyle = 'sql_standard'".into(),
            "extra_float_digits = 0".into(),
        ],
        ..Default::default()
    });
    let target = Cluster::start();
    let (src, dst) = (source.client("postgres").await, target.client("postgres").await);
    exec(&src, "CREATE TABLE e (id int PRIMARY KEY, d date, iv interval, f float8)").await;
    exec(&dst, "CREATE TABLE e (id bigint PRIMARY KEY, d date, iv interval, f float8)").await;
    let row =
        |id: i32| format!("INSERT INTO e VALUES ({id}, '2024-02-03', '-1 day -02:03:04', 0.1::float8 + 0.2)");
    exec(&src, &row(1)).await;
    let daemon = Daemon::start(&config(&source, &target, &[("e", "e")], ""));
    daemon.wait_for_log("streaming", SETTLE).await;
    exec(&src, &row(2)).await;

    let same_output = "SET datestyle = 'ISO'; SET intervalstyle = 'postgres'; SET extra_float_digits = 3";
    exec(&src, same_output).await;
    exec(&dst, same_output).await;
    wait_for_same(&src, &dst, "e", "e", "id, d, iv, f", "id", SETTLE).await;
}

/// A key `GENERATED ALWAYS AS IDENTITY` takes the source's values: inserts
/// say OVERRIDING SYSTEM VALUE, and an update leaves an unchanged key out of
/// its SET (such a column can only be set to DEFAULT), even when nothing
/// else is left to assign (a TOASTed value sent as unchanged). The trigger
/// makes the target apply row by row, through the statements that assign
/// columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_always_keys_are_replicated() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let (src, dst) = (source.client("postgres").await, target.client("postgres").await);
    let schema = "CREATE TABLE ga (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text)";
    exec(&src, schema).await;
    exec(&dst, schema).await;
    exec(
        &dst,
        "CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
         CREATE TRIGGER t BEFORE INSERT OR UPDATE ON ga FOR EACH ROW EXECUTE FUNCTION noop();
         ALTER TABLE ga ENABLE ALWAYS TRIGGER t;
         CREATE TABLE updates_of_5 (at timestamptz);
         CREATE FUNCTION count_update() RETURNS trigger LANGUAGE plpgsql
             AS 'BEGIN INSERT INTO updates_of_5 VALUES (now()); RETURN NULL; END';
         CREATE TRIGGER counted AFTER UPDATE ON ga FOR EACH ROW WHEN (OLD.id = 5) EXECUTE FUNCTION count_update()",
    )
    .await;
    exec(&src, "INSERT INTO ga (v) SELECT 'snap' FROM generate_series(1, 10)").await;
    let daemon = Daemon::start(&config(&source, &target, &[("ga", "ga")], ""));
    daemon.wait_for_log("streaming", SETTLE).await;

    exec(&src, "INSERT INTO ga (v) VALUES ('one')").await;
    exec(&src, "INSERT INTO ga (v) SELECT 'many' FROM generate_series(1, 100)").await;
    exec(&src, "UPDATE ga SET v = 'changed' WHERE id % 2 = 0").await;
    exec(&src, "UPDATE ga SET v = 'one row' WHERE id = 3").await;
    // Too long, even compressed, to stay in the row: stored out of line.
    exec(
        &src,
        "UPDATE ga SET v = (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 400) g) WHERE id = 5",
    )
    .await;
    exec(&src, "UPDATE ga SET v = v WHERE id = 5").await;
    exec(&src, "INSERT INTO ga (v) VALUES ('after')").await;

    wait_for_same(&src, &dst, "ga", "ga", "id, v", "id", SETTLE).await;
    // Both updates of row 5 happened on the target too, for its triggers.
    let updated: i64 = dst.query_one("SELECT count(*) FROM updates_of_5", &[]).await.unwrap().get(0);
    assert_eq!(updated, 2);
    let logs = daemon.logs();
    assert!(!logs.contains("can only be updated to DEFAULT"), "{logs}");
}

/// A source TRUNCATE empties a partitioned target table, partitions and
/// all: PostgreSQL refuses `TRUNCATE ONLY` for one. A plain table
/// truncated with it in one statement still goes as ONLY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_empties_a_partitioned_target_table() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let (src, dst) = (source.client("postgres").await, target.client("postgres").await);
    exec(&src, "CREATE TABLE parted (id int PRIMARY KEY, qty int); CREATE TABLE plain (id int PRIMARY KEY)")
        .await;
    exec(
        &dst,
        "CREATE TABLE parted (id int PRIMARY KEY, qty int) PARTITION BY RANGE (id);
         CREATE TABLE parted_low PARTITION OF parted FOR VALUES FROM (MINVALUE) TO (100);
         CREATE TABLE parted_high PARTITION OF parted FOR VALUES FROM (100) TO (MAXVALUE);
         CREATE TABLE plain (id int PRIMARY KEY)",
    )
    .await;
    let tables = [("parted", "parted"), ("plain", "plain")];
    let daemon = Daemon::start(&config(&source, &target, &tables, ""));
    daemon.wait_for_log("streaming", SETTLE).await;
    exec(&src, "INSERT INTO parted SELECT g, g FROM generate_series(1, 200) g; INSERT INTO plain VALUES (1)")
        .await;
    wait_for_same(&src, &dst, "parted", "parted", "id, qty", "id", SETTLE).await;

    exec(&src, "TRUNCATE parted, plain").await;
    exec(&src, "INSERT INTO parted VALUES (150, 1); INSERT INTO plain VALUES (2)").await;
    wait_for_same(&src, &dst, "parted", "parted", "id, qty", "id", SETTLE).await;
    wait_for_same(&src, &dst, "plain", "plain", "id", "id", SETTLE).await;
    let logs = daemon.logs();
    assert!(!logs.contains("pipeline stopped"), "{logs}");
}

/// A target trigger that skips updates (PostgreSQL's own
/// `suppress_redundant_updates_trigger`, made for replicas) changes no row
/// for an update that changes nothing: that row is there, and replication
/// goes on. A row that is really missing still stops the pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_a_target_trigger_skips_is_not_a_missing_row() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let (src, dst) = (source.client("postgres").await, target.client("postgres").await);
    let parted = "CREATE TABLE parted (id int PRIMARY KEY, qty int)";
    exec(&src, &format!("{ITEMS}; {parted}")).await;
    // On `parted`, a partitioned table, the trigger is on a partition only.
    exec(
        &dst,
        &format!(
            "{ITEMS}; CREATE TRIGGER unchanged BEFORE UPDATE ON items
             FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger();
             {parted} PARTITION BY RANGE (id);
             CREATE TABLE parted_all PARTITION OF parted FOR VALUES FROM (MINVALUE) TO (MAXVALUE);
             CREATE TRIGGER unchanged BEFORE UPDATE ON parted_all
             FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()"
        ),
    )
    .await;
    exec(
        &src,
        "INSERT INTO items (id, name, qty) SELECT g, 'item ' || g, g FROM generate_series(1, 10) g;
         INSERT INTO parted SELECT g, g FROM generate_series(1, 10) g",
    )
    .await;
    let tables = [("items", "items"), ("parted", "parted")];
    let mut daemon = Daemon::start(&config(&source, &target, &tables, ""));
    daemon.wait_for_log("streaming", SETTLE).await;

    exec(&src, "UPDATE items SET qty = qty WHERE id = 1; UPDATE parted SET qty = qty WHERE id = 1").await;
    exec(&src, "UPDATE items SET id = 11 WHERE id = 2; UPDATE parted SET qty = 50 WHERE id = 5").await;
    exec(&src, "UPDATE items SET qty = 50 WHERE id = 5").await;
    wait_for_same(&src, &dst, "items", "items", "id, name, qty", "id", SETTLE).await;
    wait_for_same(&src, &dst, "parted", "parted", "id, qty", "id", SETTLE).await;

    exec(&dst, "DELETE FROM items WHERE id = 7").await;
    exec(&src, "UPDATE items SET qty = 70 WHERE id = 7").await;
    daemon.wait_for_log("found no row", SETTLE).await;
    assert_eq!(daemon.wait_for_exit(SETTLE).await, Some(1));
}

/// A table rewritten on the source (`ALTER TABLE ... TYPE`) while an
/// earlier table of the same snapshot is being copied: a rewrite writes
/// rows the older snapshot does not see, so its copy would come out empty,
/// and the stream carries nothing that brings them back. ferry holds every
/// table it copies from the start of the copy, so the rewrite waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_rewritten_during_the_copy_of_another_arrives_whole() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let (src, dst) = (source.client("postgres").await, target.client("postgres").await);
    exec(
        &src,
        "CREATE TABLE first (id int PRIMARY KEY, v int); CREATE TABLE second (id int PRIMARY KEY, v int)",
    )
    .await;
    exec(
        &dst,
        "CREATE TABLE first (id int PRIMARY KEY, v int); CREATE TABLE second (id int PRIMARY KEY, v bigint)",
    )
    .await;
    exec(&src, "INSERT INTO first SELECT g, g FROM generate_series(1, 500000) g").await;
    exec(&src, "INSERT INTO second SELECT g, g FROM generate_series(1, 1000) g").await;
    let _daemon = Daemon::start(&config(&source, &target, &[("first", "first"), ("second", "second")], ""));
    wait_until_written(&dst, "first").await;
    exec(&src, "ALTER TABLE second ALTER COLUMN v TYPE bigint").await;
    wait_for_same(&src, &dst, "first", "first", "id, v", "id", SETTLE).await;
    wait_for_same(&src, &dst, "second", "second", "id, v", "id", SETTLE).await;
}

/// Every session of a split copy holds the tables from the start of the
/// copy: DDL asked for while an earlier table is copied queues behind them
/// all, and the split table's second part does not queue behind the DDL
/// (the first session would wait for that part for ever, and the DDL, and
/// the service's queries queued behind it, with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_queued_during_the_copy_of_a_table_does_not_stall_a_split_one_after_it() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let (src, dst) = (source.client("postgres").await, target.client("postgres").await);
    let schema =
        "CREATE TABLE small (id int PRIMARY KEY, v int); CREATE TABLE big (id int PRIMARY KEY, pad text)";
    exec(&src, schema).await;
    exec(&dst, schema).await;
    exec(&src, "INSERT INTO small SELECT g, g FROM generate_series(1, 1000) g").await;
    exec(&src, "INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 300000) g").await;
    // The copy of `small` waits for this lock on the target.
    let holder = target.client("postgres").await;
    exec(&holder, "BEGIN; LOCK TABLE small IN SHARE MODE").await;
    let daemon = Daemon::start(&config(&source, &target, &[("small", "small"), ("big", "big")], ""));
    let waits = |table: &str, mode: &str| {
        format!(
            "SELECT count(*) FROM pg_locks WHERE relation = '{table}'::regclass AND mode = '{mode}' AND NOT granted"
        )
    };
    wait_until(&dst, &waits("small", "RowExclusiveLock")).await;
    let ddl = source.client("postgres").await;
    let queued = tokio::spawn(async move {
        ddl.batch_execute("BEGIN; LOCK TABLE big IN ACCESS EXCLUSIVE MODE; COMMIT").await.unwrap();
    });
    wait_until(&src, &waits("big", "AccessExclusiveLock")).await;
    exec(&holder, "COMMIT").await;
    wait_for_same(&src, &dst, "small", "small", "id, v", "id", SETTLE).await;
    wait_for_same(&src, &dst, "big", "big", "id, pad", "id", SETTLE).await;
    queued.await.unwrap();
    assert!(daemon.logs().contains("slot created"), "{}", daemon.logs());
}

/// Waits until `count_sql` counts something.
async fn wait_until(client: &tokio_postgres::Client, count_sql: &str) {
    let deadline = std::time::Instant::now() + SETTLE;
    while client.query_one(count_sql, &[]).await.unwrap().get::<_, i64>(0) == 0 {
        assert!(std::time::Instant::now() < deadline, "never: {count_sql}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A table with inheritance children is published alone (`ONLY`): the
/// children's changes are not the subscription's, and with them in the
/// publication the list never matched what ferry wanted, so every start
/// altered it (which takes owning the tables).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_with_inheritance_children_is_published_alone() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let (src, dst) = (source.client("postgres").await, target.client("postgres").await);
    exec(&src, "CREATE TABLE parent (id int PRIMARY KEY, v text); CREATE TABLE child () INHERITS (parent)")
        .await;
    exec(&dst, "CREATE TABLE parent (id int PRIMARY KEY, v text)").await;
    let config = config(&source, &target, &[("parent", "parent")], "");
    for start in 1..=2 {
        let daemon = Daemon::start(&config);
        daemon.wait_for_log("streaming", SETTLE).await;
        exec(
            &src,
            &format!("INSERT INTO parent VALUES ({start}, 'p'); INSERT INTO child VALUES ({start}0, 'c')"),
        )
        .await;
        wait_for_same(&src, &dst, "ONLY parent", "parent", "id, v", "id", SETTLE).await;
        let altered = daemon.logs().contains("publication set to");
        assert_eq!(altered, start == 1, "{}", daemon.logs());
        assert_eq!(daemon.signal_and_wait("TERM").0, Some(0));
    }
    let published: Vec<String> = src
        .query("SELECT tablename::text FROM pg_publication_tables WHERE pubname = 'ferry_test'", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(published, ["parent"]);
}
