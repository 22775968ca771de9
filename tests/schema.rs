//! Schema changes while `ferry run` streams, against real clusters: a
//! column added on the source is replicated or left out (and the log says
//! which); a replicated column dropped on the source, retyped beyond what
//! its target column takes, or dropped on the target stops only its own
//! pipeline with what to do, and doing that lets it go on. Each test ends
//! by comparing source and target contents by checksum.

mod support;

use support::exec;

use std::time::{Duration, Instant};

use ferry::metrics::{State, StatusReport};
use ferry::status::http_get;
use support::daemon::{Daemon, wait_for_same};
use support::{Cluster, ClusterOptions, free_port};

const SETTLE: Duration = Duration::from_secs(120);
const TABLE: &str = "(id int PRIMARY KEY, name text, qty int)";

/// A source and a target cluster, each with `items_a` and `items_b`; two
/// pipelines, `to-a` and `to-b`, replicate one table each, so that one can
/// stop while the other must go on.
struct Setup {
    source: Cluster,
    target: Cluster,
    port: u16,
    src: tokio_postgres::Client,
    dst: tokio_postgres::Client,
}

impl Setup {
    /// Both tables on both sides, with rows on the source for the initial copy.
    async fn new() -> Setup {
        Setup::with_source(Cluster::start()).await
    }

    /// A source whose WAL writer wakes every 10 s: with its commits
    /// asynchronous (as in every test cluster), they lie past where it has
    /// written WAL for up to that long (see [`Setup::fresh_wal_segment`]).
    async fn lazy_wal() -> Setup {
        let conf = vec!["wal_writer_delay = '10s'".into()];
        Setup::with_source(Cluster::start_with(ClusterOptions { conf, ..Default::default() })).await
    }

    /// Starts a new WAL segment on the source: what follows, until it fills
    /// a page, is written by nothing but the WAL writer.
    async fn fresh_wal_segment(&self) {
        exec(&self.src, "SELECT pg_switch_wal()").await;
    }

    async fn with_source(source: Cluster) -> Setup {
        let target = Cluster::start();
        let (src, dst) = (source.client("postgres").await, target.client("postgres").await);
        let tables = format!("CREATE TABLE items_a {TABLE}; CREATE TABLE items_b {TABLE};");
        exec(&src, &tables).await;
        exec(&dst, &tables).await;
        exec(
            &src,
            "INSERT INTO items_a SELECT g, 'a' || g, g FROM generate_series(1, 10) g;
             INSERT INTO items_b SELECT g, 'b' || g, g FROM generate_series(1, 10) g;",
        )
        .await;
        Setup { source, target, port: free_port(), src, dst }
    }

    /// Starts `ferry run` with `a` and `b` as extra settings of each
    /// pipeline's table.
    fn daemon(&self, a: &str, b: &str) -> Daemon {
        let subscription = |name: &str, table: &str, settings: &str| {
            format!(
                "[[subscriptions]]\nname = \"{name}\"\nsource = \"src\"\ntarget = \"dst\"\n\
                 [[subscriptions.tables]]\nfrom = \"{table}\"\n{settings}\n\n"
            )
        };
        Daemon::start(&format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\n\n[sources.src]\nurl = \"{}\"\n\n[targets.dst]\nurl = \"{}\"\n\n{}{}",
            self.port,
            self.source.url("postgres"),
            self.target.url("postgres"),
            subscription("to-a", "items_a", a),
            subscription("to-b", "items_b", b),
        ))
    }

    /// Starts the daemon and waits until both tables are copied and a
    /// change to each has streamed through.
    async fn streaming(&self, a: &str, b: &str) -> Daemon {
        let daemon = self.daemon(a, b);
        exec(
            &self.src,
            "INSERT INTO items_a VALUES (11, 'a11', 11); INSERT INTO items_b VALUES (11, 'b11', 11);",
        )
        .await;
        self.same("items_a", "id, name, qty").await;
        self.same("items_b", "id, name, qty").await;
        daemon
    }

    async fn same(&self, table: &str, columns: &str) {
        wait_for_same(&self.src, &self.dst, table, table, columns, "id", SETTLE).await;
    }

    /// Waits for `to-a` to stop and checks that its error says each of
    /// `needles`, in the log and in `/status`, and that it is counted as a
    /// config error; `to-b` must still stream and replicate.
    async fn only_a_stops_saying(&self, daemon: &mut Daemon, needles: &[&str]) {
        let stopped = daemon.wait_for_log("pipeline stopped", SETTLE).await;
        for needle in
            ["subscription=to-a", "subscription to-a", "items_a", "then restart ferry"].iter().chain(needles)
        {
            assert!(stopped.contains(needle), "the error should say {needle:?}: {stopped}");
        }
        let status = self.status().await;
        let state = |name: &str| status.pipelines.iter().find(|p| p.subscription == name).unwrap();
        assert_eq!(state("to-a").state, State::Stopped, "{status:?}");
        assert!(state("to-a").error.as_deref().is_some_and(|e| e.contains(needles[0])), "{status:?}");
        assert_eq!(state("to-b").state, State::Streaming, "{status:?}");
        let (_, metrics) = http_get(&format!("http://127.0.0.1:{}/metrics", self.port)).await.unwrap();
        let errors = "ferry_errors_total{kind=\"config\",subscription=\"to-a\"} 1";
        assert!(metrics.lines().any(|l| l == errors), "no {errors} in:\n{metrics}");

        exec(&self.src, "INSERT INTO items_b SELECT g, 'later', g FROM generate_series(100, 120) g").await;
        self.same("items_b", "id, name, qty").await;
        assert!(daemon.is_running());
    }

    /// `/status`, once the daemon answers.
    async fn status(&self) -> StatusReport {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, body)) = http_get(&format!("http://127.0.0.1:{}/status", self.port)).await {
                return serde_json::from_str(&body).unwrap();
            }
            assert!(Instant::now() < deadline, "/status never answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// How many log lines contain `needle`.
fn lines_with(daemon: &Daemon, needle: &str) -> usize {
    daemon.logs().lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_on_both_sides_is_replicated_from_then_on() {
    let setup = Setup::new().await;
    let daemon = setup.streaming("", "").await;

    exec(&setup.dst, "ALTER TABLE items_a ADD COLUMN note text").await;
    exec(&setup.src, "ALTER TABLE items_a ADD COLUMN note text").await;
    exec(&setup.src, "INSERT INTO items_a SELECT g, 'new', g, 'note ' || g FROM generate_series(100, 149) g")
        .await;
    exec(&setup.src, "UPDATE items_a SET note = 'set later' WHERE id <= 5").await;

    setup.same("items_a", "id, name, qty, note").await;
    daemon.wait_for_log("note added: replicated into note", SETTLE).await;
    assert_eq!(lines_with(&daemon, "note added"), 1, "one line per change of the table, not per row");
}

/// While ferry is stopped, rows change and then a column is added on both
/// sides. The source writes its WAL lazily (see [`Setup::lazy_wal`]), so
/// when ferry starts, those commits lie past where it has written WAL. The changes from
/// before the addition, described without the column, are still told from
/// a column dropped while ferry runs (which stops the pipeline): what was
/// committed before the catalogs were read lies before where the source
/// had inserted WAL then, whether written or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_while_ferry_was_stopped_on_a_source_writing_wal_lazily() {
    let setup = Setup::lazy_wal().await;
    drop(setup.streaming("", "").await);

    setup.fresh_wal_segment().await;
    exec(&setup.src, "UPDATE items_a SET qty = qty * 100 WHERE id <= 5").await;
    exec(&setup.dst, "ALTER TABLE items_a ADD COLUMN note text").await;
    exec(&setup.src, "ALTER TABLE items_a ADD COLUMN note text").await;
    exec(&setup.src, "INSERT INTO items_a VALUES (20, 'after', 20, 'noted')").await;

    let daemon = setup.daemon("", "");
    setup.same("items_a", "id, name, qty, note").await;
    assert_eq!(lines_with(&daemon, "pipeline stopped"), 0, "{}", daemon.logs());
}

/// While ferry is stopped, rows change and then a column is renamed on
/// both sides (items_a) or dropped on both sides (items_b): once ferry is
/// back, the changes from before the rename land in the renamed column,
/// and those from before the drop without it. items_a also gains a column
/// between, so two descriptions of it name the old column. The source
/// writes its WAL lazily, as in the test above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_renamed_or_dropped_on_both_sides_while_ferry_was_stopped() {
    let setup = Setup::lazy_wal().await;
    drop(setup.streaming("", "").await);

    setup.fresh_wal_segment().await;

    for table in ["items_a", "items_b"] {
        let before = format!(
            "UPDATE {table} SET qty = qty * 100 WHERE id <= 5; INSERT INTO {table} VALUES (20, 'before', 20)"
        );
        exec(&setup.src, &before).await;
    }
    let added = "ALTER TABLE items_a ADD COLUMN note text";
    exec(&setup.src, added).await;
    exec(&setup.dst, added).await;
    exec(&setup.src, "INSERT INTO items_a VALUES (22, 'between', 22, 'noted')").await;
    let alter = "ALTER TABLE items_a RENAME qty TO amount; ALTER TABLE items_b DROP COLUMN qty";
    exec(&setup.src, alter).await;
    exec(&setup.dst, alter).await;
    exec(
        &setup.src,
        "UPDATE items_a SET amount = amount + 1 WHERE id = 1; INSERT INTO items_a VALUES (21, 'after', 21);
         INSERT INTO items_b VALUES (21, 'after')",
    )
    .await;

    let daemon = setup.daemon("", "");
    setup.same("items_a", "id, name, amount, note").await;
    setup.same("items_b", "id, name").await;
    let renamed = "column \"qty\" of changes from before the start is column \"amount\" now";
    daemon.wait_for_log(renamed, SETTLE).await;
    let per_description = lines_with(&daemon, "of changes from before the start is column");
    assert_eq!(per_description, 2, "{}", daemon.logs());
}

/// While ferry is stopped, rows change and then two columns swap names on
/// both sides (items_a: `name` and `label`), or a column is dropped and
/// added again under its name (items_b: `name`, which then comes after
/// `qty`). The changes from before name the columns out of the table's
/// order, so names say nothing of them: items_a's values land by place,
/// where they belong now; for items_b, the dropped column's place leaves
/// open whether `name` and `qty` were dropped or swapped, so their values
/// in those changes are left out, and the log says so. Before, both went
/// by name, into the wrong columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_swapped_or_dropped_and_added_again_while_ferry_was_stopped() {
    let setup = Setup::lazy_wal().await;
    for side in [&setup.src, &setup.dst] {
        exec(side, "ALTER TABLE items_a ADD COLUMN label text").await;
    }
    drop(setup.streaming("", "").await);

    setup.fresh_wal_segment().await;
    exec(
        &setup.src,
        "UPDATE items_a SET name = 'name ' || id, label = 'label ' || id WHERE id <= 5;
         UPDATE items_b SET name = 'old ' || id WHERE id <= 5",
    )
    .await;
    let alter = "ALTER TABLE items_a RENAME name TO swapping; ALTER TABLE items_a RENAME label TO name;
                 ALTER TABLE items_a RENAME swapping TO label;
                 ALTER TABLE items_b DROP COLUMN name; ALTER TABLE items_b ADD COLUMN name text";
    exec(&setup.src, alter).await;
    exec(&setup.dst, alter).await;
    exec(
        &setup.src,
        "INSERT INTO items_a (id, name, qty, label) VALUES (21, 'after', 21, 'after label');
         INSERT INTO items_b (id, qty, name) VALUES (21, 21, 'after')",
    )
    .await;

    let daemon = setup.daemon("", "");
    setup.same("items_a", "id, name, qty, label").await;
    setup.same("items_b", "id, name, qty").await;
    daemon
        .wait_for_log("column \"name\" of changes from before the start is column \"label\" now", SETTLE)
        .await;
    daemon
        .wait_for_log("column \"label\" of changes from before the start is column \"name\" now", SETTLE)
        .await;
    let open = "of changes from before the start may be another column now, or none";
    daemon.wait_for_log(&format!("column \"name\" {open}"), SETTLE).await;
    daemon.wait_for_log(&format!("column \"qty\" {open}"), SETTLE).await;
    assert_eq!(lines_with(&daemon, "pipeline stopped"), 0, "{}", daemon.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_left_open_while_ferry_was_stopped_that_the_settings_name_stops_its_pipeline_with_the_way_past()
 {
    let setup = Setup::lazy_wal().await;
    let listed = "columns = [\"id\", \"name\", \"qty\"]";
    drop(setup.streaming(listed, "").await);

    setup.fresh_wal_segment().await;
    exec(&setup.src, "UPDATE items_a SET name = 'old ' || id WHERE id <= 5").await;
    let alter = "ALTER TABLE items_a DROP COLUMN name; ALTER TABLE items_a ADD COLUMN name text";
    exec(&setup.src, alter).await;
    exec(&setup.dst, alter).await;

    let mut daemon = setup.daemon(listed, "");
    setup
        .only_a_stops_saying(
            &mut daemon,
            &[
                "column \"name\" of changes from before the start is left out of them",
                "the table's settings name it",
                "remove the table from the subscription and restart ferry",
                "empty the target table and add the table back",
            ],
        )
        .await;
}

/// While ferry is stopped, rows change, then a column is added on both
/// sides, and the config then names it: items_b lists it in `columns`
/// (the changes from before simply lack it) and replicates; items_a's
/// filter reads it, which cannot be evaluated on those changes, so its
/// pipeline stops with the way past.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_while_ferry_was_stopped_that_the_settings_name_is_absent_from_older_changes() {
    let setup = Setup::lazy_wal().await;
    drop(setup.streaming("", "").await);

    setup.fresh_wal_segment().await;
    exec(
        &setup.src,
        "UPDATE items_a SET qty = qty * 100 WHERE id <= 5; UPDATE items_b SET qty = qty * 100 WHERE id <= 5",
    )
    .await;
    let added = "ALTER TABLE items_a ADD COLUMN region text; ALTER TABLE items_b ADD COLUMN region text";
    exec(&setup.src, added).await;
    exec(&setup.dst, added).await;
    exec(&setup.src, "UPDATE items_b SET region = 'eu' WHERE id = 1").await;

    let listed = "columns = [\"id\", \"name\", \"qty\", \"region\"]";
    let mut daemon = setup.daemon("where = \"region = 'eu'\"", listed);
    setup
        .only_a_stops_saying(
            &mut daemon,
            &[
                "the filter reads column \"region\", which changes from before the start lack",
                "remove the table from the subscription and restart ferry",
                "empty the target table and add the table back",
            ],
        )
        .await;
    setup.same("items_b", "id, name, qty, region").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_the_target_lacks_or_the_table_leaves_out_is_ignored_and_logged() {
    let setup = Setup::new().await;
    // items_b's target has the column, but the table lists its columns.
    exec(&setup.dst, "ALTER TABLE items_b ADD COLUMN extra text").await;
    let daemon = setup.streaming("", "columns = [\"id\", \"name\", \"qty\"]").await;

    exec(
        &setup.src,
        "ALTER TABLE items_a ADD COLUMN extra text DEFAULT 'x'; ALTER TABLE items_b ADD COLUMN extra text",
    )
    .await;
    for table in ["items_a", "items_b"] {
        exec(
            &setup.src,
            &format!("INSERT INTO {table} SELECT g, 'new', g, 'e' FROM generate_series(100, 149) g"),
        )
        .await;
        exec(&setup.src, &format!("UPDATE {table} SET qty = qty + 1, extra = 'changed' WHERE id <= 5")).await;
        setup.same(table, "id, name, qty").await;
    }

    let untouched: i64 = setup
        .dst
        .query_one("SELECT count(*) FROM items_b WHERE extra IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(untouched, 0, "a column the table leaves out is not replicated");
    let lacking = "extra added: not replicated (target table \"public\".\"items_a\" has no column extra";
    daemon.wait_for_log(lacking, SETTLE).await;
    daemon.wait_for_log("extra added: not replicated (the table's columns leave it out)", SETTLE).await;
    assert_eq!(lines_with(&daemon, "extra added"), 2, "one line per change of each table, not per row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_column_dropped_on_the_source_stops_only_its_pipeline() {
    let setup = Setup::new().await;
    let mut daemon = setup.streaming("", "").await;

    exec(
        &setup.src,
        "ALTER TABLE items_a DROP COLUMN qty; INSERT INTO items_a VALUES (100, 'after the drop')",
    )
    .await;
    setup
        .only_a_stops_saying(
            &mut daemon,
            &[
                "column \"qty\" was dropped (or renamed) on the source",
                "drop column \"qty\" of \"public\".\"items_a\" too",
            ],
        )
        .await;
    drop(daemon);

    // What the message says: drop it on the target too, then restart.
    exec(&setup.dst, "ALTER TABLE items_a DROP COLUMN qty").await;
    let _daemon = setup.daemon("", "");
    exec(&setup.src, "INSERT INTO items_a VALUES (101, 'after the restart')").await;
    setup.same("items_a", "id, name").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_column_retyped_beyond_fit_on_the_source_stops_only_its_pipeline() {
    let setup = Setup::new().await;
    let mut daemon = setup.streaming("", "").await;

    // A wider type fits: a warning, and replication goes on.
    exec(
        &setup.src,
        "ALTER TABLE items_b ALTER COLUMN qty TYPE bigint; INSERT INTO items_b VALUES (50, 'wide', 50)",
    )
    .await;
    setup.same("items_b", "id, name, qty").await;
    daemon.wait_for_log("qty is now bigint (was integer)", SETTLE).await;

    let retype = "ALTER TABLE items_a ALTER COLUMN qty TYPE boolean USING qty > 5";
    exec(&setup.src, &format!("{retype}; INSERT INTO items_a VALUES (100, 'after the change', true)")).await;
    setup
        .only_a_stops_saying(
            &mut daemon,
            &[
                "column \"qty\" is boolean on the source but integer in target table \"public\".\"items_a\"",
                "ALTER TABLE \"public\".\"items_a\" ALTER COLUMN qty TYPE boolean",
            ],
        )
        .await;
    drop(daemon);

    // What the message says: the same change on the target, then restart.
    exec(&setup.dst, retype).await;
    let _daemon = setup.daemon("", "");
    exec(&setup.src, "INSERT INTO items_a VALUES (101, 'after the restart', false)").await;
    setup.same("items_a", "id, name, qty").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_column_dropped_on_the_target_stops_only_its_pipeline() {
    let setup = Setup::new().await;
    let mut daemon = setup.streaming("", "").await;

    exec(&setup.dst, "ALTER TABLE items_a DROP COLUMN qty").await;
    exec(&setup.src, "INSERT INTO items_a VALUES (100, 'after the drop', 100)").await;
    setup
        .only_a_stops_saying(
            &mut daemon,
            &[
                "column \"qty\" is replicated into column \"qty\", which target table \"public\".\"items_a\" lacks",
                "ALTER TABLE \"public\".\"items_a\" ADD COLUMN qty integer",
                "add \"qty\" to the table's `exclude`",
            ],
        )
        .await;
    drop(daemon);

    // What the message says: leave the column out, then restart. The
    // refused transaction is applied now, without it.
    let _daemon = setup.daemon("exclude = [\"qty\"]", "");
    exec(&setup.src, "UPDATE items_a SET name = 'after the restart', qty = 0 WHERE id <= 3").await;
    setup.same("items_a", "id, name").await;
}

/// A filter that reads a column the table does not carry needs whole old
/// rows (an update that leaves a large value alone does not send it): a
/// source table that stops sending them while the pipeline runs stops it,
/// as such a config is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_losing_the_whole_old_rows_it_reads_stops_only_its_pipeline() {
    let setup = Setup::new().await;
    exec(&setup.src, "ALTER TABLE items_a REPLICA IDENTITY FULL").await;
    let mut daemon = setup.daemon("columns = [\"id\", \"qty\"]\nwhere = \"name <> 'hidden'\"", "");
    setup.same("items_a", "id, qty").await;
    setup.same("items_b", "id, name, qty").await;
    exec(&setup.src, "ALTER TABLE items_a REPLICA IDENTITY DEFAULT; UPDATE items_a SET qty = 0 WHERE id = 1")
        .await;
    setup
        .only_a_stops_saying(&mut daemon, &["\"name\", which is not carried", "REPLICA IDENTITY FULL"])
        .await;
}

/// A source column wider than its target column is accepted with a warning
/// (its values may not fit). Widening the target column while ferry runs
/// must let the values that did not fit through: the target session's
/// statements were prepared with the old type, and only a session that
/// prepares them again sees the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_column_widened_while_ferry_runs_takes_values_the_old_type_could_not() {
    let setup = Setup::new().await;
    exec(&setup.src, "ALTER TABLE items_a ALTER COLUMN qty TYPE bigint").await;
    let mut daemon = setup.streaming("", "").await;
    // A key changed goes as a statement of its own, now prepared.
    exec(&setup.src, "UPDATE items_a SET id = 103 WHERE id = 3").await;
    setup.same("items_a", "id, name, qty").await;

    exec(&setup.dst, "ALTER TABLE items_a ALTER COLUMN qty TYPE bigint").await;
    // One change per source transaction.
    for change in [
        "UPDATE items_a SET id = 102, qty = 8000000000 WHERE id = 2",
        "INSERT INTO items_a VALUES (100, 'wide', 5000000000)",
        "UPDATE items_a SET qty = 6000000000 WHERE id = 1",
        "INSERT INTO items_a VALUES (101, 'narrow', 7)",
    ] {
        exec(&setup.src, change).await;
    }
    setup.same("items_a", "id, name, qty").await;
    assert!(daemon.is_running());
    assert_eq!(lines_with(&daemon, "pipeline stopped"), 0, "{}", daemon.logs());
    let logs = daemon.logs();
    let replays: Vec<&str> =
        logs.lines().filter(|l| l.contains("statements prepared before the target table changed")).collect();
    assert_eq!(replays.len(), 1, "{logs}");
    assert!(replays[0].contains("ERROR 22003") && replays[0].contains("items_a"), "{logs}");
}

/// A source table renamed while ferry runs is still the table the
/// subscription maps (and still in its publication): its changes go on to
/// the same target table, and the log says what to do before the next
/// start. Before, they were taken for a table the subscription does not
/// map and left out without a trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_table_renamed_while_ferry_runs_goes_on_replicating() {
    let setup = Setup::new().await;
    let daemon = setup.streaming("", "").await;
    exec(
        &setup.src,
        "ALTER TABLE items_a RENAME TO items_a_renamed;
         INSERT INTO items_a_renamed VALUES (12, 'a12', 12);
         UPDATE items_a_renamed SET qty = qty + 100 WHERE id <= 3;
         DELETE FROM items_a_renamed WHERE id = 4;",
    )
    .await;
    wait_for_same(&setup.src, &setup.dst, "items_a_renamed", "items_a", "id, name, qty", "id", SETTLE).await;
    let logs = daemon.logs();
    assert!(
        logs.contains("is named \"public\".\"items_a_renamed\" now") && logs.contains("rename it back"),
        "{logs}"
    );
    assert!(!logs.contains("leaving out changes"), "{logs}");
}

/// A source table dropped and created again under its name is not the
/// table in ferry's publication (which holds tables, not names): its
/// changes never arrived. The next start stops saying so instead of adding
/// the new table to the publication and going on without them, and the
/// way it names (take the table out, empty the target table, add it back)
/// copies the new table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_table_created_again_under_its_name_stops_the_next_start_with_the_way_past() {
    let setup = Setup::new().await;
    for client in [&setup.src, &setup.dst] {
        exec(client, "CREATE TABLE extra (id int PRIMARY KEY)").await;
    }
    let extra = "\n[[subscriptions.tables]]\nfrom = \"extra\"\n";
    let daemon = setup.streaming(extra, "").await;
    let config = std::fs::read_to_string(daemon.config_path()).unwrap();
    exec(
        &setup.src,
        &format!(
            "DROP TABLE items_a; CREATE TABLE items_a {TABLE}; INSERT INTO items_a VALUES (1, 'new', 1);"
        ),
    )
    .await;
    assert_eq!(daemon.signal_and_wait("TERM").0, Some(0));
    let validated = support::validate::validate(&config, &[]).await;
    validated
        .assert_mentions("error: subscription to-a: source table \"public\".\"items_a\" left publication");

    let daemon = setup.daemon(extra, "");
    let stopped = daemon.wait_for_log("pipeline stopped", SETTLE).await;
    assert!(
        stopped.contains("subscription=to-a")
            && stopped.contains("items_a\" left publication \"ferry_to_a\""),
        "{stopped}"
    );
    let published =
        "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'ferry_to_a' AND tablename = 'items_a'";
    let published: i64 = setup.src.query_one(published, &[]).await.unwrap().get(0);
    assert_eq!(published, 0, "the new table must not be published behind the user's back");
    setup.same("items_b", "id, name, qty").await;
    daemon.signal_and_wait("TERM");

    let without = config.replacen("[[subscriptions.tables]]\nfrom = \"items_a\"\n", "", 1);
    assert_ne!(without, config);
    let daemon = Daemon::start(&without);
    daemon.wait_for_log("table no longer in the subscription", SETTLE).await;
    daemon.wait_for_count("streaming subscription=", 2, SETTLE).await;
    daemon.signal_and_wait("TERM");
    exec(&setup.dst, "TRUNCATE items_a").await;
    let _daemon = Daemon::start(&config);
    setup.same("items_a", "id, name, qty").await;
}
