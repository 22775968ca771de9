//! Rows gathered per table and sent together: many small transactions over
//! several tables arrive as on the source, tables a trigger or foreign key
//! could watch keep their order, rules see every row, and a failing row in
//! a batch is named.

mod support;

use std::time::Duration;

use support::daemon::{Daemon, wait_for_same};
use support::{Cluster, ClusterOptions, exec};

const SETTLE: Duration = Duration::from_secs(120);

fn config(source: &Cluster, target: &Cluster, tables: &[&str]) -> String {
    let tables: Vec<(&str, &str)> = tables.iter().map(|t| (*t, *t)).collect();
    // The targets hold the same starting rows: no initial copy.
    support::daemon::config(
        &source.url("postgres"),
        &target.url("postgres"),
        "test",
        &tables,
        "snapshot = false",
    )
}

/// Starts ferry, waits until it streams and stops it, so that what the
/// source does next waits in the slot and arrives as one backlog.
async fn start_and_stop(config: &str) {
    let daemon = Daemon::start(config);
    daemon.wait_for_log("streaming", SETTLE).await;
    let (status, _) = daemon.signal_and_wait("TERM");
    assert_eq!(status, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_transactions_over_several_tables_arrive_as_on_the_source() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let src = source.client("postgres").await;
    let dst = target.client("postgres").await;
    // Every scalar type (arrays are applied row by row: unnest would
    // flatten them), updated and inserted in batches.
    let scalars: Vec<&(&str, &str, &str)> =
        support::types::COLUMNS.iter().filter(|(_, ty, _)| !ty.ends_with("[]")).collect();
    let definitions: Vec<String> = scalars.iter().map(|(name, ty, _)| format!("{name} {ty}")).collect();
    let schema = format!(
        "{types}
         CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL, note text);
         CREATE TABLE history (id bigserial PRIMARY KEY, aid int NOT NULL, delta int NOT NULL);
         CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
         CREATE TABLE scalars (id int PRIMARY KEY, {columns});",
        types = support::types::SUPPORTING_TYPES,
        columns = definitions.join(", ")
    );
    exec(&src, &schema).await;
    exec(&dst, &schema.replace("bigserial", "bigint")).await;
    exec(&src, "INSERT INTO accounts SELECT g, 0, 'account ' || g FROM generate_series(1, 50) g").await;
    exec(&dst, "INSERT INTO accounts SELECT g, 0, 'account ' || g FROM generate_series(1, 50) g").await;
    let body = "(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 700) g)";
    exec(&src, &format!("INSERT INTO docs SELECT g, 'draft', {body} FROM generate_series(1, 5) g")).await;
    exec(&dst, &format!("INSERT INTO docs SELECT g, 'draft', {body} FROM generate_series(1, 5) g")).await;
    let config = config(&source, &target, &["accounts", "history", "docs", "scalars"]);
    start_and_stop(&config).await;

    let values: Vec<&str> = scalars.iter().map(|(_, _, v)| *v).collect();
    let mut work = String::new();
    for n in 1..=3000 {
        // Few accounts: the same row comes back within a batch.
        let (aid, delta) = (n * 7 % 50 + 1, n % 13 - 6);
        work.push_str(&format!(
            "BEGIN; UPDATE accounts SET balance = balance + {delta}, note = 'n{n}' WHERE id = {aid};
             INSERT INTO history (aid, delta) VALUES ({aid}, {delta});"
        ));
        match n % 100 {
            // Unchanged TOAST: another set of columns, the body stays.
            10 => work.push_str(&format!("UPDATE docs SET title = 't{n}' WHERE id = {};", n % 5 + 1)),
            20 => work.push_str(&format!("INSERT INTO scalars VALUES ({n}, {});", values.join(", "))),
            30 => work.push_str(&format!("UPDATE scalars SET c_text = 'u{n}', c_bit = B'0101' WHERE id = {};", n - 10)),
            40 => work.push_str(&format!("UPDATE accounts SET note = NULL WHERE id = {aid};")),
            50 => work.push_str(&format!("DELETE FROM history WHERE id = {};", n - 1)),
            60 => work.push_str(&format!("UPDATE accounts SET id = id + 1000 WHERE id = {aid}; UPDATE accounts SET id = id - 1000 WHERE id = {aid} + 1000;")),
            _ => {}
        }
        work.push_str("COMMIT;");
        if n % 500 == 0 {
            exec(&src, &work).await;
            work.clear();
        }
    }
    // One transaction touching one row many times, in between others.
    exec(&src, "BEGIN; UPDATE accounts SET balance = balance * 2 WHERE id <= 10; UPDATE accounts SET balance = balance + 1; INSERT INTO history (aid, delta) SELECT g, 1 FROM generate_series(1, 200) g; UPDATE accounts SET balance = -balance WHERE id % 2 = 0; COMMIT;").await;

    let daemon = Daemon::start(&config);
    let names: Vec<&str> = scalars.iter().map(|(name, _, _)| *name).collect();
    wait_for_same(&src, &dst, "scalars", "scalars", &format!("id, {}", names.join(", ")), "id", SETTLE).await;
    wait_for_same(&src, &dst, "accounts", "accounts", "id, balance, note", "id", SETTLE).await;
    wait_for_same(&src, &dst, "history", "history", "id, aid, delta", "id", SETTLE).await;
    wait_for_same(&src, &dst, "docs", "docs", "id, title, body", "id", SETTLE).await;
    assert!(!daemon.logs().contains("replaying"), "nothing failed: {}", daemon.logs());
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_a_trigger_or_foreign_key_could_watch_keep_the_source_order() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let src = source.client("postgres").await;
    let dst = target.client("postgres").await;
    // `seen` records how many rows `b` had when the row of `a` was written:
    // the same on both sides only if a's and b's changes are applied in
    // the order the source made them.
    let schema = "
        CREATE TABLE a (id int PRIMARY KEY, seen bigint);
        CREATE TABLE b (id int PRIMARY KEY, v int);
        CREATE FUNCTION count_b() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN NEW.seen := (SELECT count(*) FROM b); RETURN NEW; END $$;
        CREATE TRIGGER count_b BEFORE INSERT OR UPDATE ON a FOR EACH ROW EXECUTE FUNCTION count_b();
        CREATE TABLE parent (id int PRIMARY KEY, v int);
        CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent);";
    exec(&src, schema).await;
    exec(&dst, schema).await;
    let config = config(&source, &target, &["a", "b", "parent", "child"]);
    start_and_stop(&config).await;

    let mut work = String::new();
    for n in 1..=600 {
        work.push_str(&format!(
            "BEGIN; INSERT INTO b VALUES ({n}, {n}); INSERT INTO a VALUES ({n}); UPDATE a SET id = id WHERE id = {};
             INSERT INTO parent VALUES ({n}, 0); INSERT INTO child VALUES ({n}, {n}); UPDATE parent SET v = {n} WHERE id = {n};",
            n / 2 + 1
        ));
        if n % 3 == 0 {
            work.push_str(&format!(
                "DELETE FROM child WHERE id = {}; DELETE FROM parent WHERE id = {};",
                n - 1,
                n - 1
            ));
        }
        work.push_str("COMMIT;");
    }
    exec(&src, &work).await;

    let daemon = Daemon::start(&config);
    wait_for_same(&src, &dst, "b", "b", "id, v", "id", SETTLE).await;
    wait_for_same(&src, &dst, "a", "a", "id, seen", "id", SETTLE).await;
    wait_for_same(&src, &dst, "parent", "parent", "id, v", "id", SETTLE).await;
    wait_for_same(&src, &dst, "child", "child", "id, parent_id", "id", SETTLE).await;
    drop(daemon);
}

/// A target table in a publication keeps the source order: whoever decodes
/// the target's WAL (a ferry forwarding to a third database, where a
/// foreign key links the tables) reads its changes in the order they were
/// written, and rows gathered per table would come out of order there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_target_table_keeps_the_source_order_in_its_wal() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let src = source.client("postgres").await;
    let dst = target.client("postgres").await;
    let schema =
        "CREATE TABLE parent (id int PRIMARY KEY); CREATE TABLE child (id int PRIMARY KEY, parent_id int);";
    exec(&src, schema).await;
    exec(&dst, schema).await;
    exec(&dst, "CREATE PUBLICATION onward FOR TABLE parent, child").await;
    exec(&dst, "SELECT pg_create_logical_replication_slot('onward', 'test_decoding')").await;
    let config = config(&source, &target, &["parent", "child"]);
    start_and_stop(&config).await;
    let mut work = String::new();
    for n in 1..=50 {
        work.push_str(&format!(
            "BEGIN; INSERT INTO child VALUES ({n}00, NULL); INSERT INTO parent VALUES ({n});
             INSERT INTO child VALUES ({n}01, {n}); COMMIT;"
        ));
    }
    exec(&src, &work).await;

    let daemon = Daemon::start(&config);
    wait_for_same(&src, &dst, "child", "child", "id, parent_id", "id", SETTLE).await;
    drop(daemon);
    // Decoding reads only flushed WAL, and ferry's commits (as the test
    // clusters' own) do not wait for the flush: one that does flushes all.
    exec(&dst, "SET synchronous_commit = on").await;
    exec(&dst, "CREATE TABLE flushed ()").await;
    let decoded: Vec<String> = dst
        .query(
            "SELECT data FROM pg_logical_slot_get_changes('onward', NULL, NULL)
             WHERE data LIKE 'table public.%INSERT%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<_, String>(0).split(':').next().unwrap().to_string())
        .collect();
    let expected: Vec<&str> =
        (1..=50).flat_map(|_| ["table public.child", "table public.parent", "table public.child"]).collect();
    assert_eq!(decoded, expected);
}

/// A rule on the target sees every inserted row, however long the run of
/// inserts: COPY, which carries long runs elsewhere, fires no rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_on_the_target_sees_every_row_of_a_long_run_of_inserts() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let src = source.client("postgres").await;
    let dst = target.client("postgres").await;
    let table = "CREATE TABLE orders (id int PRIMARY KEY, total int)";
    exec(&src, table).await;
    exec(&dst, table).await;
    exec(
        &dst,
        "CREATE TABLE audit (order_id int);
         CREATE RULE audited AS ON INSERT TO orders DO ALSO INSERT INTO audit VALUES (NEW.id)",
    )
    .await;
    let config = config(&source, &target, &["orders"]);
    start_and_stop(&config).await;
    exec(&src, "INSERT INTO orders SELECT g, g * 10 FROM generate_series(1, 1000) g").await;

    let daemon = Daemon::start(&config);
    wait_for_same(&src, &dst, "orders", "orders", "id, total", "id", SETTLE).await;
    let audited: i64 = dst.query_one("SELECT count(DISTINCT order_id) FROM audit", &[]).await.unwrap().get(0);
    assert_eq!(audited, 1000);
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_missing_from_a_batched_update_is_named() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let src = source.client("postgres").await;
    let dst = target.client("postgres").await;
    let schema = "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL)";
    exec(&src, schema).await;
    exec(&dst, schema).await;
    exec(&src, "INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 20) g").await;
    exec(&dst, "INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 20) g WHERE g <> 7").await;
    let config = config(&source, &target, &["accounts"]);
    start_and_stop(&config).await;
    exec(&src, "UPDATE accounts SET balance = id * 10").await;

    let daemon = Daemon::start(&config);
    let stopped = daemon.wait_for_log("pipeline stopped", SETTLE).await;
    assert!(stopped.contains("found no row with key (id)=(7)"), "{stopped}");
    // The rows were updated together first, then again one by one.
    assert!(daemon.logs().contains("rows sent together failed; applying again"), "{}", daemon.logs());
    let balance: i64 = dst.query_one("SELECT sum(balance)::bigint FROM accounts", &[]).await.unwrap().get(0);
    assert_eq!(balance, 0, "nothing of the failed transaction was applied");
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_live_transactions_go_as_one_query_and_arrive_as_on_the_source() {
    let source = Cluster::start();
    // The target logs its statements, to show which way the rows went.
    let target = Cluster::start_with(ClusterOptions {
        conf: vec!["log_statement = 'all'".into()],
        ..Default::default()
    });
    let src = source.client("postgres").await;
    let dst = target.client("postgres").await;
    let scalars: Vec<&(&str, &str, &str)> =
        support::types::COLUMNS.iter().filter(|(_, ty, _)| !ty.ends_with("[]")).collect();
    let definitions: Vec<String> = scalars.iter().map(|(name, ty, _)| format!("{name} {ty}")).collect();
    let schema = format!(
        "{types}
         CREATE TABLE scalars (id int PRIMARY KEY, {columns});
         CREATE TABLE accounts (id int PRIMARY KEY, note text);
         CREATE TABLE pairs (k pair PRIMARY KEY, v int);",
        types = support::types::SUPPORTING_TYPES,
        columns = definitions.join(", ")
    );
    exec(&src, &schema).await;
    exec(&dst, &schema).await;
    let daemon = Daemon::start(&config(&source, &target, &["scalars", "accounts", "pairs"]));
    daemon.wait_for_log("streaming", SETTLE).await;

    let values: Vec<&str> = scalars.iter().map(|(_, _, v)| *v).collect();
    let names: Vec<&str> = scalars.iter().map(|(name, _, _)| *name).collect();
    let columns = format!("id, {}", names.join(", "));
    // The first rows of a table or of a kind of change prepare statements
    // on their way, and go as usual.
    exec(&src, &format!("INSERT INTO scalars VALUES (1, {})", values.join(", "))).await;
    exec(&src, "UPDATE scalars SET c_text = 'warm' WHERE id = 1").await;
    exec(&src, "INSERT INTO accounts VALUES (0, 'zero')").await;
    exec(&src, "INSERT INTO pairs VALUES (ROW(1, 'a b'), 1)").await;
    exec(&src, "UPDATE pairs SET v = 2").await;
    wait_for_same(&src, &dst, "scalars", "scalars", &columns, "id", SETTLE).await;
    wait_for_same(&src, &dst, "accounts", "accounts", "id, note", "id", SETTLE).await;
    wait_for_same(&src, &dst, "pairs", "pairs", "k, v", "k", SETTLE).await;

    // Text a literal must carry: quotes, backslashes, escapes that are not
    // escapes, non-ASCII; and a NULL. Each transaction arrives alone (a
    // change of another kind to a table sends what it gathered first).
    let odd = r"E'it''s a \\ back\\slash, \\x41 not A, \\n not a newline, ünïcødé ✓'";
    let transactions = [
        format!("INSERT INTO scalars VALUES (2, {})", values.join(", ")),
        format!("INSERT INTO scalars VALUES (3, {})", values.join(", ")),
        format!("UPDATE scalars SET c_text = {odd}, c_bytea = '\\x5c27', c_null = 'now set' WHERE id = 2"),
        "BEGIN; INSERT INTO accounts VALUES (1, 'one'); UPDATE scalars SET c_text = NULL WHERE id = 3; COMMIT".into(),
        // A composite key: its parameter is read as the column's type.
        "UPDATE pairs SET v = 3 WHERE k = ROW(1, 'a b')::pair".into(),
    ];
    for sql in &transactions {
        exec(&src, sql).await;
        wait_for_same(&src, &dst, "scalars", "scalars", &columns, "id", SETTLE).await;
        wait_for_same(&src, &dst, "accounts", "accounts", "id, note", "id", SETTLE).await;
        wait_for_same(&src, &dst, "pairs", "pairs", "k, v", "k", SETTLE).await;
    }
    let log = target.log();
    let one_query =
        |needle: &str| log.lines().any(|l| l.contains("EXECUTE ferry_row_") && l.contains(needle));
    assert!(
        one_query("ünïcødé") && one_query("'one'") && one_query("\"a b\")');"),
        "rows went as one query: {log}"
    );
    assert!(!daemon.logs().contains("sent as one query failed"), "{}", daemon.logs());
    drop(daemon);
}

/// Inserts committed one by one, each its own target transaction, go as
/// one query each however many come in a row: COPY is for a long run in
/// one transaction. Before, the run was counted across commits, and from
/// the 64th on every one-row transaction took a COPY and four more round
/// trips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_committed_one_by_one_do_not_go_to_copy() {
    let source = Cluster::start();
    let target = Cluster::start_with(ClusterOptions {
        conf: vec!["log_statement = 'all'".into()],
        ..Default::default()
    });
    let (src, dst) = (source.client("postgres").await, target.client("postgres").await);
    let schema = "CREATE TABLE events (id int PRIMARY KEY, what text)";
    exec(&src, schema).await;
    exec(&dst, schema).await;
    let daemon = Daemon::start(&config(&source, &target, &["events"]));
    daemon.wait_for_log("streaming", SETTLE).await;
    for id in 1..=80 {
        exec(&src, &format!("INSERT INTO events VALUES ({id}, 'event {id}')")).await;
        wait_for_same(&src, &dst, "events", "events", "id, what", "id", SETTLE).await;
    }
    let log = target.log();
    assert!(log.contains("'event 80'"), "the last insert went as one query: {log}");
    assert!(!log.contains("COPY"), "no insert went by COPY: {log}");
    drop(daemon);
}

/// Source and target with `accounts` (ten rows, the target lacking row 7,
/// so that an update of it fails) and `table` made by `ddl`, and ferry
/// streaming both.
async fn streaming_without_account_7(
    table: &str,
    ddl: &str,
) -> ((Cluster, Cluster), tokio_postgres::Client, tokio_postgres::Client, Daemon) {
    let (source, target) = (Cluster::start(), Cluster::start());
    let src = source.client("postgres").await;
    let dst = target.client("postgres").await;
    let schema = format!("CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL); {ddl};");
    exec(&src, &schema).await;
    exec(&dst, &schema).await;
    exec(&src, "INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 10) g").await;
    exec(&dst, "INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 10) g WHERE g <> 7").await;
    let daemon = Daemon::start(&config(&source, &target, &["accounts", table]));
    daemon.wait_for_log("streaming", SETTLE).await;
    ((source, target), src, dst, daemon)
}

/// A row of a megabyte goes to COPY on its own; as the first change of a
/// target transaction, its COPY went out before the transaction's deferred
/// BEGIN and committed by itself: when the rest of the source transaction
/// failed, the row stayed on the target (and its replay then failed on a
/// duplicate key instead of naming the missing row). The array column
/// keeps `docs` out of the per-table batches, so its inserts gather for
/// COPY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_row_copied_first_in_a_transaction_goes_with_it() {
    let (_clusters, src, dst, daemon) =
        streaming_without_account_7("docs", "CREATE TABLE docs (id int PRIMARY KEY, tags text[], body text)")
            .await;
    exec(&src, "INSERT INTO docs VALUES (1, '{}', 'small')").await;
    wait_for_same(&src, &dst, "docs", "docs", "id, tags, body", "id", SETTLE).await;

    exec(
        &src,
        "BEGIN; INSERT INTO docs VALUES (2, '{}', repeat('x', 1100000));
         UPDATE accounts SET balance = 70 WHERE id = 7; COMMIT",
    )
    .await;
    let stopped = daemon.wait_for_log("pipeline stopped", SETTLE).await;
    assert!(stopped.contains("found no row with key (id)=(7)"), "{stopped}");
    let landed: i64 = dst.query_one("SELECT count(*) FROM docs WHERE id = 2", &[]).await.unwrap().get(0);
    assert_eq!(landed, 0, "nothing of the failed transaction lands");
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_missing_from_a_small_live_transaction_is_named_and_nothing_of_it_lands() {
    let (_clusters, src, dst, daemon) = streaming_without_account_7(
        "history",
        "CREATE TABLE history (id int PRIMARY KEY, delta int NOT NULL)",
    )
    .await;

    exec(
        &src,
        "BEGIN; INSERT INTO history VALUES (1, 5); UPDATE accounts SET balance = 5 WHERE id = 1; COMMIT",
    )
    .await;
    wait_for_same(&src, &dst, "history", "history", "id, delta", "id", SETTLE).await;
    exec(
        &src,
        "BEGIN; INSERT INTO history VALUES (2, 70); UPDATE accounts SET balance = 70 WHERE id = 7; COMMIT",
    )
    .await;

    let stopped = daemon.wait_for_log("pipeline stopped", SETTLE).await;
    assert!(stopped.contains("found no row with key (id)=(7)"), "{stopped}");
    assert!(daemon.logs().contains("sent as one query failed"), "{}", daemon.logs());
    let rows: Vec<(i32, i32)> = dst
        .query("SELECT id, delta FROM history ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(rows, [(1, 5)], "the first transaction landed, nothing of the failed one did");
    let balance: i64 = dst.query_one("SELECT sum(balance)::bigint FROM accounts", &[]).await.unwrap().get(0);
    assert_eq!(balance, 5);
    drop(daemon);
}
