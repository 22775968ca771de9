//! `ferry tail` against real servers: every kind of change arrives as one
//! JSON line with the server's own text for each value.

mod support;

use serde_json::{Value, json};
use support::Cluster;
use support::tail::TailProcess;

async fn setup(cluster: &Cluster, sql: &str) -> tokio_postgres::Client {
    let client = cluster.client("postgres").await;
    client.batch_execute(sql).await.unwrap();
    client
}

fn tail(cluster: &Cluster, tables: &[&str]) -> TailProcess {
    let url = cluster.url("postgres");
    let mut args = vec!["--source", url.as_str()];
    for table in tables {
        args.extend(["--table", table]);
    }
    TailProcess::start(&args)
}

async fn slot_count(client: &tokio_postgres::Client) -> i64 {
    client.query_one("SELECT count(*) FROM pg_replication_slots", &[]).await.unwrap().get(0)
}

async fn publication_count(client: &tokio_postgres::Client) -> i64 {
    client.query_one("SELECT count(*) FROM pg_publication", &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prints_inserts_updates_and_deletes_and_cleans_up_on_ctrl_c() {
    let cluster = Cluster::start();
    let client = setup(&cluster, "CREATE TABLE items (id int PRIMARY KEY, name text, note text)").await;
    let tail = tail(&cluster, &["public.items"]);

    for statement in [
        "INSERT INTO items VALUES (1, 'one', NULL), (2, 'two', 'x')",
        "UPDATE items SET name = 'uno' WHERE id = 1",
        "UPDATE items SET id = 10 WHERE id = 2",
        "DELETE FROM items WHERE id = 1",
    ] {
        client.batch_execute(statement).await.unwrap();
    }
    let lines = tail.take(5);

    assert_eq!(lines[0]["op"], "insert");
    assert_eq!(lines[0]["schema"], "public");
    assert_eq!(lines[0]["table"], "items");
    assert_eq!(lines[0]["key"], json!({"id": "1"}));
    assert_eq!(lines[0]["new"], json!({"id": "1", "name": "one", "note": null}));
    assert!(lines[0]["xid"].as_u64().is_some());
    assert!(lines[0]["commit_time"].as_str().unwrap().ends_with('Z'));
    assert!(lines[0]["lsn"].as_str().unwrap().contains('/'));
    assert_eq!(lines[1]["new"]["id"], "2");

    // An update that keeps the key: no old values under replica identity default.
    assert_eq!(lines[2]["op"], "update");
    assert_eq!(lines[2]["new"]["name"], "uno");
    assert!(lines[2].get("old").is_none());

    // A key change: the old key is sent and is the row's identity.
    assert_eq!(lines[3]["op"], "update");
    assert_eq!(lines[3]["key"], json!({"id": "2"}));
    assert_eq!(lines[3]["old"], json!({"id": "2"}));
    assert_eq!(lines[3]["new"], json!({"id": "10", "name": "two", "note": "x"}));

    assert_eq!(lines[4]["op"], "delete");
    assert_eq!(lines[4]["key"], json!({"id": "1"}));
    assert!(lines[4].get("new").is_none());

    // Each statement above was its own transaction.
    assert_eq!(lines[0]["xid"], lines[1]["xid"]);
    assert_ne!(lines[2]["xid"], lines[3]["xid"]);

    assert_eq!(slot_count(&client).await, 1);
    assert!(tail.interrupt(), "ferry tail should exit 0 on SIGINT");
    assert_eq!(slot_count(&client).await, 0, "the temporary slot must disappear");
    assert_eq!(publication_count(&client).await, 0, "the temporary publication must be dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_identity_full_sends_whole_old_rows() {
    let cluster = Cluster::start();
    let client = setup(
        &cluster,
        "CREATE TABLE accounts (id int PRIMARY KEY, balance int, owner text);
         ALTER TABLE accounts REPLICA IDENTITY FULL;
         INSERT INTO accounts VALUES (1, 100, 'ann');",
    )
    .await;
    let tail = tail(&cluster, &["accounts"]);
    client
        .batch_execute("UPDATE accounts SET balance = 50 WHERE id = 1; DELETE FROM accounts WHERE id = 1;")
        .await
        .unwrap();
    let lines = tail.take(2);
    assert_eq!(lines[0]["op"], "update");
    assert_eq!(lines[0]["old"], json!({"id": "1", "balance": "100", "owner": "ann"}));
    assert_eq!(lines[0]["new"], json!({"id": "1", "balance": "50", "owner": "ann"}));
    assert_eq!(lines[1]["op"], "delete");
    assert_eq!(lines[1]["old"], json!({"id": "1", "balance": "50", "owner": "ann"}));
    // Under replica identity full the whole old row is the identity.
    assert_eq!(lines[1]["key"], lines[1]["old"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_with_cascade_names_every_table() {
    let cluster = Cluster::start();
    let client = setup(
        &cluster,
        "CREATE TABLE parent (id int PRIMARY KEY);
         CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent);
         INSERT INTO parent VALUES (1); INSERT INTO child VALUES (1, 1);",
    )
    .await;
    let tail = tail(&cluster, &["parent", "child"]);
    client.batch_execute("TRUNCATE parent RESTART IDENTITY CASCADE").await.unwrap();
    let lines = tail.take(2);
    let mut tables: Vec<&str> = lines.iter().map(|l| l["table"].as_str().unwrap()).collect();
    tables.sort();
    assert_eq!(tables, ["child", "parent"]);
    for line in &lines {
        assert_eq!(line["op"], "truncate");
        assert_eq!(line["cascade"], true);
        assert_eq!(line["restart_identity"], true);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_messages_arrive_in_and_out_of_transactions() {
    let cluster = Cluster::start();
    let client = setup(&cluster, "CREATE TABLE t (id int PRIMARY KEY)").await;
    let tail = tail(&cluster, &["t"]);
    client
        .batch_execute(
            "BEGIN; INSERT INTO t VALUES (1); SELECT pg_logical_emit_message(true, 'audit', 'in a transaction'); COMMIT;
             SELECT pg_logical_emit_message(false, 'ping', 'standalone');",
        )
        .await
        .unwrap();
    let lines = tail.take(3);
    assert_eq!(lines[0]["op"], "insert");
    assert_eq!(lines[1]["op"], "message");
    assert_eq!(lines[1]["transactional"], true);
    assert_eq!(lines[1]["prefix"], "audit");
    assert_eq!(lines[1]["content"], "in a transaction");
    assert_eq!(lines[1]["xid"], lines[0]["xid"]);
    assert_eq!(lines[2]["op"], "message");
    assert_eq!(lines[2]["transactional"], false);
    assert_eq!(lines[2]["content"], "standalone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_work_never_shows() {
    let cluster = Cluster::start();
    let client = setup(&cluster, "CREATE TABLE t (id int PRIMARY KEY, pad text)").await;
    let tail = tail(&cluster, &["t"]);
    client
        .batch_execute(
            "BEGIN; INSERT INTO t VALUES (1); ROLLBACK;
             BEGIN; INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(100, 5099) g; ROLLBACK;
             BEGIN; INSERT INTO t VALUES (2); SAVEPOINT s; INSERT INTO t VALUES (3); ROLLBACK TO SAVEPOINT s;
                    INSERT INTO t VALUES (4); COMMIT;
             INSERT INTO t VALUES (5);",
        )
        .await
        .unwrap();
    let ids: Vec<String> =
        tail.take(3).iter().map(|l| l["new"]["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, ["2", "4", "5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transaction_arrives_streamed_with_aborted_subtransactions_left_out() {
    let cluster = Cluster::start();
    let client = setup(&cluster, "CREATE TABLE big (id int PRIMARY KEY, pad text)").await;
    let tail = tail(&cluster, &["big"]);
    client
        .batch_execute(
            "BEGIN;
             INSERT INTO big SELECT g, 'row ' || g FROM generate_series(1, 100000) g;
             SAVEPOINT s;
             INSERT INTO big SELECT g, 'gone' FROM generate_series(100001, 120000) g;
             ROLLBACK TO SAVEPOINT s;
             INSERT INTO big SELECT g, 'row ' || g FROM generate_series(120001, 220000) g;
             COMMIT;
             INSERT INTO big VALUES (0, 'after');",
        )
        .await
        .unwrap();
    let lines = tail.take(200_001);
    let xid = &lines[0]["xid"];
    let mut expected = (1..=100_000).chain(120_001..=220_000);
    for line in &lines[..200_000] {
        assert_eq!(line["op"], "insert");
        assert_eq!(&line["xid"], xid);
        let id: u32 = line["new"]["id"].as_str().unwrap().parse().unwrap();
        assert_eq!(Some(id), expected.next(), "rows arrive once, in order, none from the aborted savepoint");
        assert_eq!(line["new"]["pad"], format!("row {id}"));
    }
    assert_eq!(lines[200_000]["new"]["id"], "0");
    let streamed: i64 = client
        .query_one("SELECT coalesce(sum(stream_txns), 0)::bigint FROM pg_stat_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert!(streamed >= 1, "the transaction should have been streamed while in progress");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_values_are_marked_not_null() {
    let cluster = Cluster::start();
    // Random text does not compress, so 20 kB of it is stored out of line.
    let client = setup(
        &cluster,
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
         INSERT INTO docs SELECT 1, 'draft', string_agg(md5(g::text), '') FROM generate_series(1, 700) g;",
    )
    .await;
    let tail = tail(&cluster, &["docs"]);
    client.batch_execute("UPDATE docs SET title = 'final' WHERE id = 1").await.unwrap();
    let line = tail.next();
    assert_eq!(line["op"], "update");
    assert_eq!(line["new"]["title"], "final");
    assert_eq!(line["new"]["body"], json!({"unchanged_toast": true}));
}

/// Every built-in scalar type, arrays, an enum, a domain, a composite,
/// json/jsonb, numeric NaN and infinite timestamps: each value as printed
/// equals the server's own text for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_decodes_to_the_servers_text() {
    let cluster = Cluster::start();
    let columns = support::types::COLUMNS;
    let definitions: Vec<String> = columns.iter().map(|(name, ty, _)| format!("{name} {ty}")).collect();
    let values: Vec<&str> = columns.iter().map(|(_, _, v)| *v).collect();
    let client = setup(
        &cluster,
        &format!(
            "{} CREATE TABLE every_type (id int PRIMARY KEY, {});",
            support::types::SUPPORTING_TYPES,
            definitions.join(", ")
        ),
    )
    .await;
    let tail = tail(&cluster, &["every_type"]);
    client.batch_execute(&format!("INSERT INTO every_type VALUES (1, {})", values.join(", "))).await.unwrap();
    let line = tail.next();

    let rows = client.simple_query("SELECT * FROM every_type").await.unwrap();
    let row = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .unwrap();
    for (i, (name, ty, _)) in columns.iter().enumerate() {
        let expected = row.get(i + 1).map(|s| Value::String(s.to_string())).unwrap_or(Value::Null);
        assert_eq!(line["new"][name], expected, "column {name} of type {ty}");
    }
    assert_eq!(line["new"]["c_numeric_nan"], "NaN");
    assert_eq!(line["new"]["c_timestamptz_inf"], "infinity");
}

/// The server describes a table once per streamed transaction; when it did
/// so inside a sub-transaction that is rolled back, later changes to that
/// table still need the description.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_first_described_in_an_aborted_savepoint_still_decodes_afterwards() {
    let cluster = Cluster::start();
    let client = setup(
        &cluster,
        "CREATE TABLE a (id int PRIMARY KEY, pad text); CREATE TABLE b (id int PRIMARY KEY, pad text)",
    )
    .await;
    let tail = tail(&cluster, &["a", "b"]);
    client
        .batch_execute(
            "BEGIN;
             INSERT INTO a SELECT g, repeat('x', 100) FROM generate_series(1, 5000) g;
             SAVEPOINT s;
             INSERT INTO b SELECT g, repeat('y', 100) FROM generate_series(1, 5000) g;
             ROLLBACK TO SAVEPOINT s;
             INSERT INTO b VALUES (1, 'kept');
             COMMIT;",
        )
        .await
        .unwrap();
    let lines = tail.take(5001);
    assert!(lines[..5000].iter().all(|l| l["table"] == "a"));
    assert_eq!(lines[5000]["table"], "b");
    assert_eq!(lines[5000]["new"], json!({"id": "1", "pad": "kept"}));
}

/// `ferry tail --help`: "Creates a publication for the given tables and a
/// temporary slot, both removed on exit". When the slot cannot be made (here
/// wal_level = replica), ferry exits with an error but leaves its
/// publication `ferry_tail_<pid>_<random>` on the source for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_removes_the_publication_it_created() {
    let cluster = Cluster::start_with(support::ClusterOptions {
        conf: vec!["wal_level = replica".into()],
        ..Default::default()
    });
    let client = setup(&cluster, "CREATE TABLE items (id int PRIMARY KEY)").await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["tail", "--source", &cluster.url("postgres"), "--table", "public.items"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success(), "tail should fail without wal_level = logical");
    let left: Vec<String> = client
        .query("SELECT pubname::text FROM pg_publication", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        left.is_empty(),
        "publications left behind: {left:?}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `--slot NAME` keeps a publication `ferry_tail_NAME`, found again by name
/// on the next run. A slot name of 53 to 63 bytes (valid for a slot) would
/// make that name longer than PostgreSQL keeps, so it is refused up front,
/// with nothing made on the source; so is a name of ferry's own, such as a
/// subscription's slot (`ferry_orders`), whose changes tail would confirm
/// while its pipeline waits to retry (its slot inactive).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_name_tail_must_not_use_is_refused() {
    let cluster = Cluster::start();
    let client = setup(&cluster, "CREATE TABLE items (id int PRIMARY KEY)").await;
    client
        .batch_execute("SELECT pg_create_logical_replication_slot('ferry_orders', 'pgoutput')")
        .await
        .unwrap();
    for (slot, why) in [("s".repeat(53), "too long"), ("ferry_orders".into(), "ferry's own")] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["tail", "--source", &cluster.url("postgres"), "--table", "public.items", "--slot", &slot])
            .output()
            .await
            .unwrap();

        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(stderr.contains(why), "{stderr}");
        let made = publication_count(&client).await + slot_count(&client).await;
        assert_eq!(made, 1, "a publication or slot was made on the source");
    }
}

/// The source url may come from `FERRY_TAIL_SOURCE`, password and all:
/// `--help` says the variable exists, not what it holds.
#[test]
fn help_does_not_show_the_source_from_the_environment() {
    let secret = "hunter2-do-not-print";
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["tail", "--help"])
        .env("FERRY_TAIL_SOURCE", format!("postgresql://u:{secret}@h/db"))
        .env("PGPASSWORD", secret)
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("FERRY_TAIL_SOURCE"), "{help}");
    assert!(!help.contains(secret), "the password leaked:\n{help}");
}

/// A password not in `--source` comes from `PGPASSWORD`, as for psql (no
/// flag: it would show in the process list).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_comes_from_pgpassword() {
    let cluster = Cluster::start_with(support::ClusterOptions {
        hba: Some("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n".into()),
        ..Default::default()
    });
    setup(&cluster, "CREATE ROLE tailer SUPERUSER LOGIN PASSWORD 'right-one'").await;
    let url = format!("postgresql://tailer@127.0.0.1:{}/postgres?sslmode=disable", cluster.port);
    let run = |password: &'static str| {
        let url = url.clone();
        async move {
            let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
                .args(["tail", "--source", &url, "--table", "public.missing"])
                .env("PGPASSWORD", password)
                .output()
                .await
                .unwrap();
            assert!(!output.status.success());
            String::from_utf8_lossy(&output.stderr).into_owned()
        }
    };
    let wrong = run("wrong-one").await;
    assert!(wrong.contains("28P01") && !wrong.contains("wrong-one"), "{wrong}");
    let right = run("right-one").await;
    assert!(!right.contains("28P01") && right.contains("missing"), "got past authentication: {right}");
}

/// The temporary publication is named after the server process of the
/// tail's own session and a random part (`ferry_tail_<pid>_<random>`): no
/// other live session of the server has that process id (ferry's own may
/// be 1 in every container), and a later one given it has another random
/// part. It goes at Ctrl-C even when that session was cut meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publication_goes_even_when_its_session_was_cut_meanwhile() {
    let cluster = Cluster::start();
    let client = setup(&cluster, "CREATE TABLE items (id int PRIMARY KEY)").await;
    let tail = tail(&cluster, &["public.items"]);
    let name: String =
        client.query_one("SELECT pubname::text FROM pg_publication", &[]).await.unwrap().get(0);
    let (pid, random) = name.strip_prefix("ferry_tail_").unwrap().split_once('_').unwrap();
    let pid: i32 = pid.parse().unwrap();
    assert!(random.len() == 8 && random.chars().all(|c| c.is_ascii_hexdigit()), "{name}");
    let terminated: bool = client.query_one("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap().get(0);
    assert!(terminated, "no session of the server has process id {pid}");
    client.batch_execute("INSERT INTO items VALUES (1)").await.unwrap();
    assert_eq!(tail.next()["new"]["id"], "1", "the stream goes on without that session");
    assert!(tail.interrupt(), "ferry tail should exit 0 on SIGINT");
    assert_eq!(publication_count(&client).await, 0, "the temporary publication must be dropped");
}

/// A second tail of a permanent slot another one reads is refused before
/// it sets the slot's publication to its own tables, which would silently
/// change what the first one prints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_another_tail_reads_is_refused_before_its_publication_changes() {
    let cluster = Cluster::start();
    let client =
        setup(&cluster, "CREATE TABLE items (id int PRIMARY KEY); CREATE TABLE other (id int PRIMARY KEY)")
            .await;
    let url = cluster.url("postgres");
    let first = TailProcess::start(&["--source", &url, "--table", "public.items", "--slot", "shared"]);
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["tail", "--source", &url, "--table", "public.other", "--slot", "shared"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("in use by another reader"), "{stderr}");
    let published: Vec<String> = client
        .query("SELECT tablename::text FROM pg_publication_tables WHERE pubname = 'ferry_tail_shared'", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(published, ["items"]);
    client.batch_execute("INSERT INTO items VALUES (1)").await.unwrap();
    assert_eq!(first.next()["table"], "items");
}

/// Making the slot waits for every transaction open on the source; Ctrl-C
/// meanwhile stops tail at once, its publication dropped, instead of going
/// unheard until that transaction ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_while_the_slot_waits_for_an_open_transaction_stops_and_cleans_up() {
    let cluster = Cluster::start();
    let client = setup(&cluster, "CREATE TABLE items (id int PRIMARY KEY)").await;
    let open = cluster.client("postgres").await;
    open.batch_execute("BEGIN; INSERT INTO items VALUES (1)").await.unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["tail", "--source", &cluster.url("postgres"), "--table", "public.items"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender' AND wait_event = 'transactionid'";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while client.query_one(waiting, &[]).await.unwrap().get::<_, i64>(0) == 0 {
        assert!(std::time::Instant::now() < deadline, "the slot never waited for the open transaction");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let exited = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait()).await;
    let status = exited.expect("ferry tail did not stop while the transaction stayed open").unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(publication_count(&client).await, 0, "the temporary publication must be dropped");
    open.batch_execute("ROLLBACK").await.unwrap();
}

/// Ctrl-C while the source has stopped answering (its walsender frozen
/// here, as a host gone without a reset looks) still ends tail: ending the
/// stream waits for the source a bounded time. Before, it waited for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_ends_a_tail_whose_source_stopped_answering() {
    let cluster = Cluster::start();
    let client = setup(&cluster, "CREATE TABLE items (id int PRIMARY KEY)").await;
    let tail = tail(&cluster, &["public.items"]);
    let walsender = support::walsender_of(&client, "ferry\\_tail\\_%").await;
    support::send_signal("STOP", walsender);
    let ended = tail.interrupt();
    support::send_signal("CONT", walsender);
    assert!(ended, "ferry tail should exit 0 on SIGINT");
}

/// A publication an earlier run could not drop (killed, or interrupted
/// twice) goes at the next run: its session is gone and no slot reads it.
/// One whose slot still exists (a `--slot` run's, with a name alike) stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_a_killed_run_left_goes_at_the_next_run() {
    let cluster = Cluster::start();
    // Process ids stop at 2^22: these sessions cannot be alive.
    let client = setup(
        &cluster,
        "CREATE TABLE items (id int PRIMARY KEY);
         CREATE PUBLICATION ferry_tail_4194305_0badcafe FOR TABLE items;
         CREATE PUBLICATION ferry_tail_4194306_cafe0bad FOR TABLE items;",
    )
    .await;
    client
        .batch_execute("SELECT pg_create_logical_replication_slot('4194306_cafe0bad', 'pgoutput')")
        .await
        .unwrap();

    let tail = tail(&cluster, &["public.items"]);
    let left: Vec<String> = client
        .query(
            "SELECT pubname::text FROM pg_publication WHERE pubname LIKE 'ferry_tail_41943%' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(left, ["ferry_tail_4194306_cafe0bad"]);
    assert!(tail.interrupt());
}
