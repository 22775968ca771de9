//! `ferry run` as non-superuser roles holding exactly the grants README.md
//! lists under "Least privilege": a managed publication and a publication
//! made beforehand by the tables' owner, `ferry` schema made by ferry or
//! beforehand, what happens without `REPLICATION`, and what `ferry validate`
//! says of missing privileges. The databases grant
//! nothing to PUBLIC and the tables live outside `public`, so every grant
//! listed is one that is needed.

mod support;

use support::exec;

use std::time::Duration;

use support::Cluster;
use support::daemon::{Daemon, wait_for_same};

const SETTLE: Duration = Duration::from_secs(120);

/// An ordinary client logged in as `user`.
async fn client_as(cluster: &Cluster, user: &str, dbname: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(&cluster.conninfo(user, dbname), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect as {user}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// The service's database `shop`: tables owned by the role `shop_owner`,
/// nothing granted to PUBLIC, rows already there for the snapshot.
const SOURCE_SETUP: &str = "
    CREATE SCHEMA shop AUTHORIZATION shop_owner;
    SET ROLE shop_owner;
    CREATE TABLE shop.items (id bigint PRIMARY KEY, name text, qty int);
    CREATE TABLE shop.notes (id int PRIMARY KEY, body text);
    INSERT INTO shop.items SELECT g, 'item ' || g, g % 10 FROM generate_series(1, 500) g;
    INSERT INTO shop.notes SELECT g, 'note ' || g FROM generate_series(1, 20) g;
    RESET ROLE;";

/// What every source role gets (README: Least privilege, source).
const SOURCE_GRANTS: &str = "
    GRANT CONNECT ON DATABASE shop TO ferry_src;
    GRANT USAGE ON SCHEMA shop TO ferry_src;
    GRANT SELECT ON shop.items, shop.notes TO ferry_src;";

/// The other service's database `orders`, with its copies in `replica`.
const TARGET_SETUP: &str = "
    CREATE SCHEMA replica;
    CREATE TABLE replica.items (id bigint PRIMARY KEY, name text, qty int);
    CREATE TABLE replica.notes (id int PRIMARY KEY, body text);";

/// What every target role gets (README: Least privilege, target).
const TARGET_GRANTS: &str = "
    GRANT CONNECT ON DATABASE orders TO ferry_dst;
    GRANT USAGE ON SCHEMA replica TO ferry_dst;
    GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON replica.items, replica.notes TO ferry_dst;
    GRANT EXECUTE ON FUNCTION pg_replication_origin_oid(text), pg_replication_origin_create(text),
        pg_replication_origin_session_setup(text), pg_replication_origin_drop(text)
        TO ferry_dst;";

/// Two clusters with the databases set up and the ferry roles created with
/// `source_role` / `target_role` attributes, given the common grants.
/// Returns superuser clients to `shop` and `orders`.
async fn setup(
    source: &Cluster,
    target: &Cluster,
    source_role: &str,
) -> (tokio_postgres::Client, tokio_postgres::Client) {
    let admin = source.client("postgres").await;
    exec(&admin, "CREATE DATABASE shop").await;
    exec(
        &admin,
        &format!(
            "REVOKE ALL ON DATABASE shop FROM PUBLIC;
             CREATE ROLE shop_owner NOLOGIN;
             CREATE ROLE ferry_src {source_role} PASSWORD 'src-secret';"
        ),
    )
    .await;
    let src = source.client("shop").await;
    exec(&src, SOURCE_SETUP).await;
    exec(&src, SOURCE_GRANTS).await;

    let admin = target.client("postgres").await;
    exec(&admin, "CREATE DATABASE orders").await;
    exec(
        &admin,
        "REVOKE ALL ON DATABASE orders FROM PUBLIC;
         CREATE ROLE ferry_dst LOGIN PASSWORD 'dst-secret';",
    )
    .await;
    let dst = target.client("orders").await;
    exec(&dst, TARGET_SETUP).await;
    exec(&dst, TARGET_GRANTS).await;
    (src, dst)
}

fn config(source: &Cluster, target: &Cluster, extra: &str) -> String {
    support::daemon::config(
        &format!("postgresql://ferry_src@127.0.0.1:{}/shop?sslmode=disable", source.port),
        &format!("postgresql://ferry_dst@127.0.0.1:{}/orders?sslmode=disable", target.port),
        "shop-to-orders",
        &[("shop.items", "replica.items"), ("shop.notes", "replica.notes")],
        extra,
    )
}

/// Inserts, updates, deletes and a truncate, numbered by `round` so that
/// rounds do not collide.
async fn changes(src: &tokio_postgres::Client, round: i64) {
    let base = 1000 * round;
    exec(
        src,
        &format!(
            "BEGIN;
             INSERT INTO shop.items SELECT g, 'new ' || g, 1 FROM generate_series({}, {}) g;
             UPDATE shop.items SET qty = qty + 1, name = name || ' (changed)' WHERE id % 7 = {};
             DELETE FROM shop.items WHERE id % 11 = {};
             INSERT INTO shop.notes VALUES ({base}, 'before the truncate');
             COMMIT;",
            base + 1,
            base + 100,
            round % 7,
            round % 11
        ),
    )
    .await;
    exec(src, "TRUNCATE shop.notes").await;
    exec(
        src,
        &format!("INSERT INTO shop.notes SELECT g, 'after ' || g FROM generate_series({base}, {base} + 5) g"),
    )
    .await;
    exec(src, &format!("UPDATE shop.notes SET body = 'updated' WHERE id = {base}")).await;
}

async fn wait_for_both(src: &tokio_postgres::Client, dst: &tokio_postgres::Client) {
    wait_for_same(src, dst, "shop.items", "replica.items", "id, name, qty", "id", SETTLE).await;
    wait_for_same(src, dst, "shop.notes", "replica.notes", "id, body", "id", SETTLE).await;
}

/// The metrics' slot measurement works as the source role: it returns the
/// slot's row with both distances.
async fn check_slot_query(source: &Cluster) {
    let client = client_as(source, "ferry_src", "shop").await;
    let row = client
        .query_opt(ferry::metrics::SLOT_QUERY, &[&"ferry_shop_to_orders"])
        .await
        .unwrap_or_else(|e| panic!("the slot query as ferry_src: {e}"))
        .expect("the slot exists");
    let (lag, retained): (Option<i64>, Option<i64>) = (row.get(0), row.get(1));
    assert!(lag.is_some() && retained.is_some(), "{lag:?} {retained:?}");
}

fn assert_no_privilege_trouble(daemon: &Daemon) {
    let logs = daemon.logs();
    for bad in ["permission denied", "must be owner", "cannot measure the slot", "ERROR"] {
        assert!(!logs.contains(bad), "{bad:?} in the logs:\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_managed_publication_needs_create_and_ownership_only_the_first_time_for_create() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let (src, dst) = setup(&source, &target, "LOGIN REPLICATION").await;
    // ferry creates the publication (CREATE on the database, owning the
    // tables through the owner's role) and the ferry schema (CREATE on the
    // database).
    exec(&src, "GRANT CREATE ON DATABASE shop TO ferry_src; GRANT shop_owner TO ferry_src;").await;
    exec(&dst, "GRANT CREATE ON DATABASE orders TO ferry_dst;").await;
    let config = config(&source, &target, "");

    let daemon = Daemon::start(&config);
    daemon.wait_for_log("streaming", SETTLE).await;
    wait_for_both(&src, &dst).await;
    changes(&src, 1).await;
    wait_for_both(&src, &dst).await;
    check_slot_query(&source).await;
    assert_no_privilege_trouble(&daemon);
    let owner: String = src
        .query_one(
            "SELECT pubowner::regrole::text FROM pg_publication WHERE pubname = 'ferry_shop_to_orders'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, "ferry_src");
    assert_eq!(daemon.signal_and_wait("TERM").0, Some(0));

    // Once the publication and the ferry schema exist, CREATE on the
    // databases is no longer needed.
    exec(&src, "REVOKE CREATE ON DATABASE shop FROM ferry_src;").await;
    exec(&dst, "REVOKE CREATE ON DATABASE orders FROM ferry_dst;").await;
    changes(&src, 2).await;
    let daemon = Daemon::start(&config);
    daemon.wait_for_log("streaming", SETTLE).await;
    changes(&src, 3).await;
    wait_for_both(&src, &dst).await;
    assert_no_privilege_trouble(&daemon);
    assert_eq!(daemon.signal_and_wait("TERM").0, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_and_ferry_schema_made_beforehand_need_only_replication_and_select() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let (src, dst) = setup(&source, &target, "LOGIN REPLICATION").await;
    exec(&src, "CREATE PUBLICATION ferry_shop FOR TABLE shop.items, shop.notes;").await;
    exec(&dst, "CREATE SCHEMA ferry AUTHORIZATION ferry_dst;").await;
    // Dead letters on: ferry.dead_letters is created too.
    let config = config(&source, &target, "publication = \"ferry_shop\"\non_error = \"dead_letter\"");

    let daemon = Daemon::start(&config);
    daemon.wait_for_log("streaming", SETTLE).await;
    wait_for_both(&src, &dst).await;
    changes(&src, 1).await;
    changes(&src, 2).await;
    wait_for_both(&src, &dst).await;
    check_slot_query(&source).await;
    assert_no_privilege_trouble(&daemon);
    let tables: i64 = dst
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'ferry' AND tablename IN ('progress', 'dead_letters')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 2);
    assert_eq!(daemon.signal_and_wait("TERM").0, Some(0));
}

/// `ferry validate` passes with exactly the grants README.md lists, and
/// names a target table privilege taken away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_checks_the_target_privileges_the_tables_need() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let (src, dst) = setup(&source, &target, "LOGIN REPLICATION").await;
    exec(&src, "CREATE PUBLICATION ferry_shop FOR TABLE shop.items, shop.notes;").await;
    exec(&dst, "CREATE SCHEMA ferry AUTHORIZATION ferry_dst;").await;
    let config = config(&source, &target, "publication = \"ferry_shop\"");
    let validated = support::validate::validate(&config, &[]).await;
    assert_eq!(validated.code, Some(0), "{}", validated.output());

    exec(&dst, "REVOKE UPDATE, TRUNCATE ON replica.items FROM ferry_dst").await;
    let validated = support::validate::validate(&config, &[]).await;
    assert_eq!(validated.code, Some(1), "{}", validated.output());
    validated.assert_mentions("ferry's target role lacks UPDATE, TRUNCATE on replica.items");
}

/// Without REPLICATION, `ferry validate` says so, and a start stops saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_replication_the_pipeline_stops_saying_so() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let (src, dst) = setup(&source, &target, "LOGIN").await;
    exec(&src, "CREATE PUBLICATION ferry_shop FOR TABLE shop.items, shop.notes;").await;
    exec(&dst, "CREATE SCHEMA ferry AUTHORIZATION ferry_dst;").await;

    let config = config(&source, &target, "publication = \"ferry_shop\"");
    let validated = support::validate::validate(&config, &[]).await;
    assert_eq!(validated.code, Some(1), "{}", validated.output());
    validated.assert_mentions("role ferry_src has neither REPLICATION nor SUPERUSER");
    let mut daemon = Daemon::start(&config);
    assert_eq!(daemon.wait_for_exit(SETTLE).await, Some(1));
    let logs = daemon.logs();
    assert!(
        logs.contains("pipeline stopped") && logs.contains("42501") && logs.contains("replication role"),
        "{logs}"
    );
    assert!(!logs.contains("src-secret"), "{logs}");
}

/// A policy lets ferry's role see only some rows of a table: the copy
/// stops saying so instead of copying those rows alone (the stream, which
/// no policy filters, would then update and delete rows the target never
/// got). With BYPASSRLS, as README.md says, it copies them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_whose_rows_a_policy_hides_is_not_copied_in_part() {
    let (source, target) = (Cluster::start(), Cluster::start());
    let (src, dst) = setup(&source, &target, "LOGIN REPLICATION").await;
    exec(
        &src,
        "CREATE PUBLICATION ferry_shop FOR TABLE shop.items, shop.notes;
         ALTER TABLE shop.items ENABLE ROW LEVEL SECURITY;
         CREATE POLICY first_hundred ON shop.items FOR SELECT USING (id <= 100);",
    )
    .await;
    exec(&dst, "CREATE SCHEMA ferry AUTHORIZATION ferry_dst;").await;
    let config = config(&source, &target, "publication = \"ferry_shop\"");

    let mut daemon = Daemon::start(&config);
    assert_eq!(daemon.wait_for_exit(SETTLE).await, Some(1));
    let logs = daemon.logs();
    assert!(logs.contains("pipeline stopped") && logs.contains("row-level security"), "{logs}");
    let copied: i64 = dst.query_one("SELECT count(*) FROM replica.items", &[]).await.unwrap().get(0);
    assert_eq!(copied, 0, "part of the table was copied");

    exec(&source.client("postgres").await, "ALTER ROLE ferry_src BYPASSRLS").await;
    let daemon = Daemon::start(&config);
    daemon.wait_for_log("streaming", SETTLE).await;
    changes(&src, 1).await;
    wait_for_both(&src, &dst).await;
    assert_eq!(daemon.signal_and_wait("TERM").0, Some(0));
}
