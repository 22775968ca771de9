//! Crashes: the daemon killed with SIGKILL at random moments and at the
//! named fault seams, under a mixed workload. Every run ends by comparing
//! source and target contents; a counter bumped by every source transaction
//! proves that none was applied twice or lost.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use support::daemon::{Daemon, config, wait_for_same};
use support::{Cluster, ClusterOptions};

const SCHEMA: &str = "
    CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL, owner text);
    CREATE TABLE events (id bigserial PRIMARY KEY, account int NOT NULL, amount int, note text);
    CREATE TABLE counter (id int PRIMARY KEY, n bigint NOT NULL);";
const SEED_DATA: &str = "
    INSERT INTO accounts SELECT g, 0, 'owner ' || g FROM generate_series(1, 1000) g;
    INSERT INTO counter VALUES (1, 0);";
const TABLES: &[(&str, &str)] = &[
    ("public.accounts", "public.accounts"),
    ("public.events", "public.events"),
    ("public.counter", "public.counter"),
];

/// A tiny deterministic generator, so a failing run can be repeated from
/// the seed it prints.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn seed() -> u64 {
    let seed = std::env::var("FERRY_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    eprintln!("seed: {seed} (set FERRY_TEST_SEED to repeat)");
    seed
}

/// Transactions of 1 to 10,000 rows: inserts, updates and deletes across
/// the tables, each bumping the counter once. Runs until `stop`.
async fn workload(client: tokio_postgres::Client, stop: Arc<AtomicBool>, done: Arc<AtomicU64>, seed: u64) {
    let mut rng = Rng(seed);
    while !stop.load(Ordering::Relaxed) {
        let rows = [1, 3, 20, 200, 2_000, 10_000][rng.below(6) as usize];
        let sql = format!(
            "BEGIN;
             INSERT INTO events (account, amount, note)
                 SELECT {account} + g % 10, g % 97, md5(g::text) FROM generate_series(1, {rows}) g;
             UPDATE accounts SET balance = balance + {amount} WHERE id % 50 = {bucket};
             DELETE FROM events WHERE id IN (SELECT id FROM events WHERE account = {account} ORDER BY id LIMIT {deletes});
             UPDATE counter SET n = n + 1 WHERE id = 1;
             COMMIT;",
            account = 1 + rng.below(990),
            amount = 1 + rng.below(100),
            bucket = rng.below(50),
            deletes = rows / 3,
        );
        client.batch_execute(&sql).await.unwrap();
        done.fetch_add(1, Ordering::Relaxed);
    }
}

async fn assert_identical(source: &Cluster, target: &Cluster) {
    let src = source.client("postgres").await;
    let dst = target.client("postgres").await;
    let settle = Duration::from_secs(180);
    wait_for_same(&src, &dst, "counter", "counter", "id, n", "id", settle).await;
    wait_for_same(&src, &dst, "accounts", "accounts", "id, balance, owner", "id", settle).await;
    wait_for_same(&src, &dst, "events", "events", "id, account, amount, note", "id", settle).await;
}

async fn setup() -> (Cluster, Cluster, String) {
    let (source, target) = (Cluster::start(), Cluster::start());
    let src = source.client("postgres").await;
    src.batch_execute(SCHEMA).await.unwrap();
    src.batch_execute(SEED_DATA).await.unwrap();
    target.client("postgres").await.batch_execute(SCHEMA).await.unwrap();
    let config = config(&source.url("postgres"), &target.url("postgres"), "crash", TABLES, "");
    (source, target, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_repeated_sigkill_with_every_transaction_applied_once() {
    let (source, target, config) = setup().await;
    let seed = seed();
    let mut rng = Rng(seed ^ 0x9E37_79B9_7F4A_7C15);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn(workload(source.client("postgres").await, stop.clone(), done.clone(), seed));

    for round in 0..12 {
        let daemon = Daemon::start(&config);
        let lifetime = Duration::from_millis(300 + rng.below(2_700));
        tokio::time::sleep(lifetime).await;
        eprintln!(
            "round {round}: SIGKILL after {lifetime:?}, {} transactions so far",
            done.load(Ordering::Relaxed)
        );
        daemon.kill9();
    }
    let daemon = Daemon::start(&config);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    assert_identical(&source, &target).await;
    let n: i64 =
        target.client("postgres").await.query_one("SELECT n FROM counter", &[]).await.unwrap().get(0);
    assert_eq!(n as u64, done.load(Ordering::Relaxed), "every source transaction applied exactly once");
    drop(daemon);
}

/// Crashes at `failpoint` while `load` runs (one transaction at a time, a
/// little apart, so each gets its own target commit), restarts, and checks
/// the copy.
async fn crash_at(failpoint: &str, load: &[&str]) {
    let (source, target, config) = setup().await;
    let src = source.client("postgres").await;
    let mut daemon = Daemon::start_with_env(&config, &[("FERRY_FAILPOINT", failpoint)]);
    daemon.wait_for_log("streaming", Duration::from_secs(180)).await;
    for transaction in load {
        src.batch_execute(transaction).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(daemon.wait_for_exit(Duration::from_secs(120)).await, Some(137), "the failpoint should fire");
    assert!(daemon.logs().contains("failpoint"), "{}", daemon.logs());
    let _daemon = Daemon::start(&config);
    assert_identical(&source, &target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_target_commit_and_feedback_loses_and_repeats_nothing() {
    let load = ["BEGIN; UPDATE counter SET n = n + 1; INSERT INTO events (account) VALUES (1); COMMIT;"; 30];
    crash_at("after-target-commit:3", &load).await;
}

/// A source table large enough (about 16 MiB) to be copied in parts
/// at once, and a first start that crashes at `failpoint` during its
/// initial copy. Returns the clusters and the config, for the restart.
async fn crash_during_the_initial_copy(failpoint: &str) -> (Cluster, Cluster, String) {
    let (source, target, config) = setup().await;
    let src = source.client("postgres").await;
    src.batch_execute(
        "INSERT INTO events (account, amount, note) SELECT g % 1000 + 1, g, md5(g::text) FROM generate_series(1, 200000) g",
    )
    .await
    .unwrap();
    let mut daemon = Daemon::start_with_env(&config, &[("FERRY_FAILPOINT", failpoint)]);
    assert_eq!(daemon.wait_for_exit(Duration::from_secs(120)).await, Some(137), "the failpoint should fire");
    // Writes between the crash and the restart are picked up too.
    src.batch_execute("UPDATE counter SET n = n + 1; DELETE FROM events WHERE id <= 10;").await.unwrap();
    (source, target, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_the_middle_of_the_initial_copy_starts_the_copy_over() {
    let (source, target, config) = crash_during_the_initial_copy("during-snapshot-copy:20").await;
    let _daemon = Daemon::start(&config);
    assert_identical(&source, &target).await;
}

/// The slot a crashed first copy left behind is in use when ferry starts
/// again (a walsender the source has not yet let go of, or a second ferry
/// on the same subscription): the start is refused and retried, saying
/// so, rather than waiting on the slot without a word for as long as it
/// is held; once it is free, the copy starts over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leftover_slot_in_use_is_retried_not_waited_on() {
    use ferry::pg::replication::{ReplicationClient, StartOptions};
    let (source, target, config) = crash_during_the_initial_copy("during-snapshot-copy:20").await;
    let src = source.client("postgres").await;
    let row = src
        .query_one(
            "SELECT slot_name::text, confirmed_flush_lsn::text, (SELECT pubname::text FROM pg_publication LIMIT 1)
             FROM pg_replication_slots",
            &[],
        )
        .await
        .unwrap();
    let (slot, at, publication): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    let info = source.url("postgres").parse().unwrap();
    let options = StartOptions {
        publications: vec![publication],
        protocol_version: None,
        messages: false,
        streaming: false,
    };
    let holder = ReplicationClient::connect(&info).await.unwrap();
    let held = holder.start(&slot, at.parse().unwrap(), &options).await.unwrap();

    let daemon = Daemon::start(&config);
    daemon.wait_for_log("55006", Duration::from_secs(60)).await;
    drop(held);
    assert_identical(&source, &target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_part_of_a_split_copy_committed_copies_it_all_again() {
    let (source, target, config) = crash_during_the_initial_copy("after-copy-part-commit").await;
    let dst = target.client("postgres").await;
    let left: i64 = dst.query_one("SELECT count(*) FROM events", &[]).await.unwrap().get(0);
    assert!(left > 0 && left < 200_000, "part of the copy was committed: {left} rows");
    let daemon = Daemon::start(&config);
    assert_identical(&source, &target).await;
    assert!(daemon.logs().contains("removing what an unfinished copy left"), "{}", daemon.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_while_applying_a_streamed_transaction_applies_it_once_later() {
    let load = "BEGIN;
        INSERT INTO events (account, amount, note) SELECT g % 1000 + 1, g, md5(g::text) FROM generate_series(1, 50000) g;
        UPDATE counter SET n = n + 1;
        COMMIT;";
    crash_at("in-streamed-transaction:20000", &[load]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_while_applying_a_streamed_transaction_from_its_spool_applies_it_once_later() {
    let (source, target, config) = setup().await;
    let (src, other) = (source.client("postgres").await, source.client("postgres").await);
    // Seam hits: at most 30,000 while the transaction arrives, then one per
    // change (60,000 and more) from the spool.
    let mut daemon = Daemon::start_with_env(&config, &[("FERRY_FAILPOINT", "in-streamed-transaction:40000")]);
    daemon.wait_for_log("streaming", Duration::from_secs(180)).await;
    let insert = "INSERT INTO events (account, amount, note) SELECT g % 1000 + 1, g, md5(g::text) FROM generate_series(1, 30000) g";
    src.batch_execute(&format!("BEGIN; {insert}")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Committed while the large one is open: the large one is applied at
    // its commit, from its spool.
    other.batch_execute("UPDATE counter SET n = n + 1").await.unwrap();
    src.batch_execute(&format!("{insert}; UPDATE counter SET n = n + 1; COMMIT")).await.unwrap();
    assert_eq!(daemon.wait_for_exit(Duration::from_secs(120)).await, Some(137), "the failpoint should fire");
    assert!(daemon.logs().contains("applying it from its spool"), "{}", daemon.logs());
    let _daemon = Daemon::start(&config);
    assert_identical(&source, &target).await;
    let n: i64 =
        target.client("postgres").await.query_one("SELECT n FROM counter", &[]).await.unwrap().get(0);
    assert_eq!(n, 2, "both transactions applied once");
}

/// The target crashes just after a first start and loses its latest
/// commits (asynchronous, with a WAL writer asleep for 10 s). The first
/// start's commit records where the new slot begins; had it been lost, the
/// next start would take the slot for a leftover and make a new one,
/// losing what the source wrote in between (here, while the target was
/// down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_crash_just_after_the_first_start_loses_nothing() {
    let source = Cluster::start();
    let target = Cluster::start_with(ClusterOptions {
        conf: vec!["wal_writer_delay = '10s'".into()],
        ..Default::default()
    });
    let src = source.client("postgres").await;
    src.batch_execute(SCHEMA).await.unwrap();
    target.client("postgres").await.batch_execute(SCHEMA).await.unwrap();
    let config =
        config(&source.url("postgres"), &target.url("postgres"), "crash", TABLES, "snapshot = false");
    let daemon = Daemon::start(&config);
    daemon.wait_for_log("streaming", Duration::from_secs(60)).await;
    tokio::task::block_in_place(|| target.crash());
    src.batch_execute(SEED_DATA).await.unwrap();
    tokio::task::block_in_place(|| target.start_again());
    let progress: i64 = target
        .client("postgres")
        .await
        .query_one("SELECT count(*) FROM ferry.progress WHERE subscription = 'crash'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(progress, 1, "the first start's progress row was lost in the crash");
    assert_identical(&source, &target).await;
    drop(daemon);
}

/// A split copy crashes after one part committed, and the table is then
/// mapped to another target table, which holds rows of its own. The
/// restart does not take them for what the unfinished copy left: it stops,
/// saying the table is not empty, and deletes nothing, and says where the
/// unfinished copy went. Mapped back there, the table is refused as not
/// empty too (what a table ferry stopped writing holds may be anyone's by
/// then), by `validate` as by a start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_copy_is_not_cleaned_up_in_a_table_it_did_not_go_into() {
    let (source, target, _) = crash_during_the_initial_copy("after-copy-part-commit").await;
    let dst = target.client("postgres").await;
    dst.batch_execute(
        "CREATE TABLE other_events (LIKE events INCLUDING ALL); INSERT INTO other_events (account) VALUES (7)",
    )
    .await
    .unwrap();
    let tables = [
        ("public.accounts", "public.accounts"),
        ("public.events", "public.other_events"),
        ("public.counter", "public.counter"),
    ];
    let moved = config(&source.url("postgres"), &target.url("postgres"), "crash", &tables, "");
    let mut daemon = Daemon::start(&moved);
    assert_eq!(daemon.wait_for_exit(Duration::from_secs(120)).await, Some(1), "{}", daemon.logs());
    assert!(daemon.logs().contains(r#""other_events" is not empty"#), "{}", daemon.logs());
    let count = |table: &'static str| {
        let dst = &dst;
        async move { dst.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("other_events").await, 1, "the table's own row was deleted");
    assert!(count("events").await > 0, "what the copy left where it went stays");
    assert!(daemon.logs().contains(r#"an unfinished copy went into "public"."events""#), "{}", daemon.logs());

    let back = config(&source.url("postgres"), &target.url("postgres"), "crash", TABLES, "");
    let validated = support::validate::validate(&back, &[]).await;
    assert_eq!(validated.code, Some(1), "{}", validated.output());
    validated.assert_mentions(r#""events" is not empty"#);
    let mut daemon = Daemon::start(&back);
    assert_eq!(daemon.wait_for_exit(Duration::from_secs(120)).await, Some(1), "{}", daemon.logs());
    let logs = daemon.logs();
    assert!(logs.contains("before the table left the subscription or moved"), "{logs}");
    assert!(logs.contains(r#""events" is not empty"#), "{logs}");
}

/// A split copy crashes after one part committed, and the subscription is
/// then set to `snapshot = false`: the table is not copied again, and what
/// the copy left stays (it may have been loaded some other way since), with
/// a warning that says so and how to copy it anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_copy_left_by_snapshot_false_is_kept_with_a_warning() {
    let (source, target, _) = crash_during_the_initial_copy("after-copy-part-commit").await;
    let dst = target.client("postgres").await;
    let count =
        || async { dst.query_one("SELECT count(*) FROM events", &[]).await.unwrap().get::<_, i64>(0) };
    let left = count().await;
    let config =
        config(&source.url("postgres"), &target.url("postgres"), "crash", TABLES, "snapshot = false");
    let daemon = Daemon::start(&config);
    let warning =
        daemon.wait_for_log(r#"what it left in "public"."events" stays"#, Duration::from_secs(120)).await;
    assert!(warning.contains("a copy of the table was begun and never finished"), "{warning}");
    daemon.wait_for_log("streaming", Duration::from_secs(120)).await;
    assert_eq!(count().await, left, "what the copy left is kept");
}
