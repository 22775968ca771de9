//! `ferry validate` run as the binary against real clusters: the plan for a
//! good setup, every problem of a bad one at once, and no database at all.

mod support;

use support::exec;

use std::net::TcpListener;

use support::validate::validate;
use support::{Cluster, ClusterOptions};

/// One subscription `customers-to-orders` from `source` to `target`, with
/// `extra` lines in it and then `tables` as (from, to).
fn config(source: &str, target: &str, extra: &str, tables: &[(&str, &str)]) -> String {
    let mut text = format!(
        "[sources.customers]\nurl = \"{source}\"\n\n[targets.orders]\nurl = \"{target}\"\n\n\
         [[subscriptions]]\nname = \"customers-to-orders\"\nsource = \"customers\"\ntarget = \"orders\"\n{extra}\n"
    );
    for (from, to) in tables {
        text.push_str(&format!("\n[[subscriptions.tables]]\nfrom = '{from}'\nto = '{to}'\n"));
    }
    text
}

/// A cluster with a `customers` (source) and an `orders` (target) database.
async fn source_and_target(cluster: &Cluster) -> (tokio_postgres::Client, tokio_postgres::Client) {
    let admin = cluster.client("postgres").await;
    // One statement at a time: CREATE DATABASE cannot run in a transaction.
    exec(&admin, "CREATE DATABASE customers").await;
    exec(&admin, "CREATE DATABASE orders").await;
    (cluster.client("customers").await, cluster.client("orders").await)
}

/// A local port nothing listens on.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_setup_passes_and_prints_the_plan_without_changing_anything() {
    let cluster = Cluster::start();
    let (source, target) = source_and_target(&cluster).await;
    exec(&source, "CREATE TABLE customers (id int PRIMARY KEY, name text, email text, ssn text)").await;
    exec(
        &target,
        "CREATE SCHEMA replica; CREATE TABLE replica.customers (id int PRIMARY KEY, name text, email text)",
    )
    .await;
    let text = config(
        &cluster.url("customers"),
        &cluster.url("orders"),
        "",
        &[("public.customers", "replica.customers")],
    );

    let validated = validate(&text, &[]).await;

    assert_eq!(validated.code, Some(0), "{}", validated.output());
    assert_eq!(
        validated.stdout,
        "subscription customers-to-orders: source customers → target orders, slot ferry_customers_to_orders, \
         publication ferry_customers_to_orders (managed), snapshot on\n  \
         public.customers → replica.customers  columns: id, name, email (3 of 4; not in target: ssn)\n\
         ok: 1 subscription, 1 table\n"
    );
    let created: i64 = source
        .query_one(
            "SELECT (SELECT count(*) FROM pg_publication) + (SELECT count(*) FROM pg_replication_slots)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(created, 0, "validate created a publication or a slot");
    let ferry_schema =
        target.query_opt("SELECT 1 FROM pg_namespace WHERE nspname = 'ferry'", &[]).await.unwrap();
    assert!(ferry_schema.is_none(), "validate created the ferry schema on the target");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_every_problem_of_every_table_at_once() {
    let cluster = Cluster::start();
    let (source, target) = source_and_target(&cluster).await;
    exec(
        &source,
        "CREATE TABLE keyless_target (id int PRIMARY KEY, name text);
         CREATE TABLE unidentified (id int PRIMARY KEY, name text);
         ALTER TABLE unidentified REPLICA IDENTITY NOTHING;
         CREATE TABLE regional (id int PRIMARY KEY, name text);
         CREATE TABLE typed (id int PRIMARY KEY, amount text)",
    )
    .await;
    exec(
        &target,
        "CREATE TABLE present_only_here (id int PRIMARY KEY);
         CREATE TABLE keyless_target (id int, name text);
         CREATE TABLE unidentified (id int PRIMARY KEY, name text);
         CREATE TABLE regional (id int, region text, name text, PRIMARY KEY (id, region));
         CREATE TABLE typed (id int PRIMARY KEY, amount integer)",
    )
    .await;
    let text = config(
        &cluster.url("customers"),
        &cluster.url("orders"),
        "publication = \"orders_pub\"",
        &[
            ("public.not_there", "public.present_only_here"),
            ("keyless_target", "keyless_target"),
            ("unidentified", "unidentified"),
            ("regional", "regional"),
            ("typed", "typed"),
        ],
    );

    let validated = validate(&text, &[]).await;

    assert_eq!(validated.code, Some(1), "{}", validated.output());
    let sub = "subscription customers-to-orders";
    for expected in [
        format!("error: {sub}: publication \"orders_pub\" is configured but does not exist on the source"),
        format!("error: {sub}, table public.not_there: source table \"public\".\"not_there\" does not exist"),
        format!(
            "error: {sub}, table public.keyless_target: target table \"public\".\"keyless_target\" has no primary key"
        ),
        format!(
            "error: {sub}, table public.unidentified: source table \"public\".\"unidentified\" has no replica identity"
        ),
        format!(
            "error: {sub}, table public.regional: source table \"public\".\"regional\" does not send key column \
             region of target table \"public\".\"regional\""
        ),
        format!("warning: {sub}, table public.typed: column amount: source type text, target type integer"),
        "  public.typed → public.typed  columns: id, amount\n".to_string(),
        "failed: 5 errors, 1 warning (1 subscription, 5 tables)".to_string(),
    ] {
        validated.assert_mentions(&expected);
    }
}

/// The mismatches a running pipeline stops for (see tests/schema.rs), found
/// before it runs, in the same words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_the_column_mismatches_a_pipeline_would_stop_for() {
    let cluster = Cluster::start();
    let (source, target) = source_and_target(&cluster).await;
    exec(
        &source,
        "CREATE TABLE dropped (id int PRIMARY KEY, name text);
         CREATE TABLE short (id int PRIMARY KEY, name text, qty int);
         CREATE TABLE flags (id int PRIMARY KEY, active boolean, born date);
         CREATE TABLE widened (id int PRIMARY KEY, qty bigint);
         CREATE TABLE stamps (id int PRIMARY KEY, at timestamptz)",
    )
    .await;
    exec(
        &target,
        "CREATE TABLE dropped (id int PRIMARY KEY, name text, qty int);
         CREATE TABLE short (id int PRIMARY KEY, name text);
         CREATE TABLE flags (id int PRIMARY KEY, active integer, born date);
         CREATE TABLE widened (id int PRIMARY KEY, qty integer);
         CREATE TABLE stamps (id int PRIMARY KEY, at timestamp)",
    )
    .await;
    let mut text = config(&cluster.url("customers"), &cluster.url("orders"), "", &[]);
    for (table, settings) in [
        ("dropped", "columns = [\"id\", \"name\", \"qty\"]"),
        ("short", "columns = [\"id\", \"name\", \"qty\"]"),
        ("flags", ""),
        ("widened", ""),
        ("stamps", ""),
    ] {
        text.push_str(&format!("\n[[subscriptions.tables]]\nfrom = '{table}'\n{settings}\n"));
    }

    let validated = validate(&text, &[]).await;

    assert_eq!(validated.code, Some(1), "{}", validated.output());
    let sub = "subscription customers-to-orders";
    for expected in [
        format!(
            "error: {sub}, table public.dropped: table \"public\".\"dropped\": column \"qty\" is configured but the \
             source table has no such column"
        ),
        format!(
            "error: {sub}, table public.short: table \"public\".\"short\": column \"qty\" is replicated into column \
             \"qty\", which target table \"public\".\"short\" lacks; add it there (ALTER TABLE \"public\".\"short\" ADD \
             COLUMN qty integer), or remove \"qty\" from the table's `columns`"
        ),
        format!(
            "error: {sub}, table public.flags: table \"public\".\"flags\": column \"active\" is boolean on the source \
             but integer in target table \"public\".\"flags\" (column \"active\"), and no boolean value is valid \
             integer input; change the target column's type (ALTER TABLE \"public\".\"flags\" ALTER COLUMN active \
             TYPE boolean), or leave it out of the subscription (add \"active\" to the table's `exclude`)"
        ),
        format!("warning: {sub}, table public.widened: column qty: source type bigint, target type integer"),
        format!(
            "error: {sub}, table public.stamps: table \"public\".\"stamps\": column \"at\" is timestamp with time zone \
             on the source but timestamp without time zone in target table \"public\".\"stamps\" (column \"at\"): the \
             target ignores the time zone offset, so the replica would differ without an error"
        ),
        "failed: 4 errors, 1 warning (1 subscription, 5 tables)".to_string(),
    ] {
        validated.assert_mentions(&expected);
    }
}

/// A filtered table whose carried columns can hold values the server does
/// not resend when an update leaves them unchanged (TOAST) is warned of: an
/// update moving a row into the filter without them stops the pipeline.
/// REPLICA IDENTITY FULL resends every value, and no warning is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_over_columns_an_update_may_leave_out_is_warned_of() {
    let cluster = Cluster::start();
    let (source, target) = source_and_target(&cluster).await;
    let schema = "CREATE TABLE orders (id int PRIMARY KEY, status text, total int, notes text)";
    exec(&source, schema).await;
    exec(&target, schema).await;
    let mut text = config(&cluster.url("customers"), &cluster.url("orders"), "", &[]);
    text.push_str("\n[[subscriptions.tables]]\nfrom = 'orders'\nwhere = \"status = 'shipped'\"\n");

    let validated = validate(&text, &[]).await;
    validated.assert_mentions(
        "warning: subscription customers-to-orders, table public.orders: an update moving a row into the `where` \
         filter stops the pipeline if status or notes holds a value over about 2 kB",
    );
    assert_eq!(validated.code, Some(0), "a warning only: {}", validated.output());
    exec(&source, "ALTER TABLE orders REPLICA IDENTITY FULL").await;
    let validated = validate(&text, &[]).await;
    assert!(!validated.output().contains("moving a row into"), "{}", validated.output());
}

/// Pairs that store every value changed are refused through domains and
/// arrays too (the values' own types count), as are integers into a
/// negative scale, json into jsonb and text into "char".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_pairs_are_refused_through_domains_and_arrays() {
    let cluster = Cluster::start();
    let (source, target) = source_and_target(&cluster).await;
    exec(
        &source,
        "CREATE TABLE amounts (id int PRIMARY KEY, amount numeric(12,4), amounts numeric(12,4)[], at timestamptz,
                               hundreds int, doc json, code text)",
    )
    .await;
    exec(
        &target,
        "CREATE DOMAIN cents AS numeric(12,2); CREATE DOMAIN local_time AS timestamp CHECK (VALUE IS NOT NULL);
         CREATE TABLE amounts (id int PRIMARY KEY, amount cents, amounts numeric(12,2)[], at local_time,
                               hundreds numeric(5,-2), doc jsonb, code \"char\")",
    )
    .await;
    let text = config(&cluster.url("customers"), &cluster.url("orders"), "", &[("amounts", "amounts")]);

    let validated = validate(&text, &[]).await;

    assert_eq!(validated.code, Some(1), "{}", validated.output());
    for (column, loss) in [
        ("amount", "the target rounds to fewer decimal places"),
        ("amounts", "the target rounds to fewer decimal places"),
        ("at", "the target ignores the time zone offset"),
        ("hundreds", "the target rounds to fewer decimal places"),
        ("doc", "the target keeps neither key order"),
        ("code", "the target keeps the first byte only"),
    ] {
        validated.assert_mentions(&format!("column \"{column}\" is "));
        let line = validated
            .output()
            .lines()
            .find(|l| l.contains(&format!("column \"{column}\" is ")))
            .unwrap()
            .to_string();
        assert!(line.starts_with("error: ") && line.contains(loss), "{line}");
    }
    validated.assert_mentions("failed: 6 errors");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_without_logical_wal_is_an_error() {
    let cluster = Cluster::start_with(ClusterOptions {
        conf: vec!["wal_level = replica".into()],
        ..Default::default()
    });
    let (source, target) = source_and_target(&cluster).await;
    exec(&source, "CREATE TABLE t (id int PRIMARY KEY)").await;
    exec(&target, "CREATE TABLE t (id int PRIMARY KEY)").await;
    let text = config(&cluster.url("customers"), &cluster.url("orders"), "", &[("t", "t")]);

    let validated = validate(&text, &[]).await;

    assert_eq!(validated.code, Some(1), "{}", validated.output());
    validated.assert_mentions(
        "error: source customers: wal_level is replica; logical replication needs wal_level = logical",
    );
}

/// A subscription whose slot does not exist yet needs a free entry of
/// `max_replication_slots`, each of several on one source one of its own;
/// one whose slot exists does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_without_room_for_the_slot_is_an_error() {
    let cluster = Cluster::start_with(ClusterOptions {
        conf: vec!["max_replication_slots = 1".into()],
        ..Default::default()
    });
    let (source, target) = source_and_target(&cluster).await;
    exec(&source, "CREATE TABLE t (id int PRIMARY KEY)").await;
    exec(&target, "CREATE TABLE t (id int PRIMARY KEY)").await;
    let text = config(&cluster.url("customers"), &cluster.url("orders"), "", &[("t", "t")]);
    let full = "1 slot to make (ferry_customers_to_orders), 0 of max_replication_slots free";

    exec(&source, "SELECT pg_create_physical_replication_slot('other')").await;
    let validated = validate(&text, &[]).await;
    assert_eq!(validated.code, Some(1), "{}", validated.output());
    validated.assert_mentions(full);

    exec(&source, "SELECT pg_drop_replication_slot('other')").await;
    exec(&source, "CREATE TABLE u (id int PRIMARY KEY)").await;
    exec(&target, "CREATE TABLE u (id int PRIMARY KEY)").await;
    let two = format!(
        "{text}\n[[subscriptions]]\nname = \"second\"\nsource = \"customers\"\ntarget = \"orders\"\n\n\
         [[subscriptions.tables]]\nfrom = 'u'\nto = 'u'\n"
    );
    let validated = validate(&two, &[]).await;
    assert_eq!(validated.code, Some(1), "{}", validated.output());
    validated.assert_mentions(
        "slots to make (ferry_customers_to_orders, ferry_second), 1 of max_replication_slots free",
    );

    exec(&source, "SELECT pg_create_logical_replication_slot('ferry_customers_to_orders', 'pgoutput')").await;
    let validated = validate(&text, &[]).await;
    assert!(!validated.output().contains("max_replication_slots"), "{}", validated.output());
}

#[tokio::test]
async fn offline_checks_the_file_without_any_database() {
    let port = closed_port();
    let text = config(
        &format!("postgresql://ferry@127.0.0.1:{port}/customers"),
        &format!("postgresql://ferry@127.0.0.1:{port}/orders"),
        "",
        &[("public.customers", "replica.customers")],
    );

    let validated = validate(&text, &["--offline"]).await;

    assert_eq!(validated.code, Some(0), "{}", validated.output());
    assert_eq!(
        validated.stdout,
        "subscription customers-to-orders: source customers → target orders, slot ferry_customers_to_orders, \
         publication ferry_customers_to_orders (managed), snapshot on\n  \
         public.customers → replica.customers\n\
         ok: 1 subscription, 1 table (offline: no database contacted)\n"
    );

    let broken = text.replace("target = \"orders\"", "target = \"shipping\"");
    let validated = validate(&broken, &["--offline"]).await;
    assert_eq!(validated.code, Some(1), "{}", validated.output());
    assert!(validated.stdout.is_empty(), "{}", validated.stdout);
    validated.assert_mentions("ferry.toml:10:10: unknown target \"shipping\" (defined: [\"orders\"])");
}

#[tokio::test]
async fn an_unreachable_database_is_an_error_that_keeps_the_password_secret() {
    let port = closed_port();
    let password = "s3cret-Pa55word";
    let text = config(
        &format!("postgresql://ferry:{password}@127.0.0.1:{port}/customers?sslmode=disable"),
        &format!("postgresql://ferry:{password}@127.0.0.1:{port}/orders?sslmode=disable"),
        "",
        &[("public.customers", "public.customers")],
    );

    let validated = validate(&text, &[]).await;

    assert_eq!(validated.code, Some(1), "{}", validated.output());
    validated.assert_mentions(&format!(
        "error: source customers: cannot connect to postgresql://ferry@127.0.0.1:{port}/customers"
    ));
    validated.assert_mentions(&format!(
        "error: target orders: cannot connect to postgresql://ferry@127.0.0.1:{port}/orders"
    ));
    assert!(!validated.output().contains(password), "the password leaked:\n{}", validated.output());
}

/// PostgreSQL folds only ASCII letters of an unquoted name (in a UTF-8
/// database `CREATE TABLE Äpfel` makes a table named `Äpfel`), so the same
/// unquoted name in the config must find that table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unquoted_non_ascii_table_name_folds_as_postgresql_folds_it() {
    let cluster = Cluster::start();
    let (source, target) = source_and_target(&cluster).await;
    exec(&source, "CREATE TABLE Äpfel (id int PRIMARY KEY)").await;
    exec(&target, "CREATE TABLE Äpfel (id int PRIMARY KEY)").await;
    let text = config(&cluster.url("customers"), &cluster.url("orders"), "", &[("Äpfel", "Äpfel")]);

    let validated = validate(&text, &[]).await;

    assert_eq!(validated.code, Some(0), "{}", validated.output());
}

/// Two source columns carried into one target column cannot be applied
/// (`INSERT INTO t (id, b, b)`): validate must say so, not pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_source_columns_carried_into_one_target_column_are_an_error() {
    let cluster = Cluster::start();
    let (source, target) = source_and_target(&cluster).await;
    exec(&source, "CREATE TABLE t (id int PRIMARY KEY, a text, b text)").await;
    exec(&target, "CREATE TABLE t (id int PRIMARY KEY, b text)").await;
    let mut text = config(&cluster.url("customers"), &cluster.url("orders"), "", &[]);
    text.push_str("\n[[subscriptions.tables]]\nfrom = 't'\nrename = { a = \"b\" }\n");

    let validated = validate(&text, &[]).await;

    assert_eq!(validated.code, Some(1), "{}", validated.output());
    validated.assert_mentions("\"b\"");
}

/// A publication made beforehand that lacks a table of the subscription
/// would never send that table's changes: validate says which, and what to
/// run. Before, it passed, and `ferry run` copied the table and then
/// replicated nothing of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_publication_must_hold_every_table() {
    let cluster = Cluster::start();
    let (source, target) = source_and_target(&cluster).await;
    let schema = "CREATE TABLE items (id int PRIMARY KEY); CREATE TABLE notes (id int PRIMARY KEY)";
    exec(&source, schema).await;
    exec(&target, schema).await;
    exec(&source, "CREATE PUBLICATION shop_pub FOR TABLE items").await;
    let text = config(
        &cluster.url("customers"),
        &cluster.url("orders"),
        "publication = \"shop_pub\"",
        &[("items", "items"), ("notes", "notes")],
    );

    let validated = validate(&text, &[]).await;

    assert_eq!(validated.code, Some(1), "{}", validated.output());
    validated.assert_mentions(
        "error: subscription customers-to-orders: publication \"shop_pub\" does not hold table \
         \"public\".\"notes\", which the subscription replicates",
    );
    validated.assert_mentions("ALTER PUBLICATION shop_pub ADD TABLE \"public\".\"notes\"");
}

/// A publication made beforehand that leaves out operations the
/// subscription replicates (`publish`), or rows or columns of its tables (a
/// row filter or column list), would have changes never arrive while the
/// copy took everything: validate (and `ferry run`) refuse it, saying what
/// to change. Before, both passed, and updates and deletes were lost
/// without a trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_publication_must_send_every_change_the_subscription_wants() {
    let cluster = Cluster::start();
    let (source, target) = source_and_target(&cluster).await;
    let schema = "CREATE TABLE items (id int PRIMARY KEY, qty int)";
    exec(&source, schema).await;
    exec(&target, schema).await;
    exec(&source, "CREATE PUBLICATION shop_pub FOR TABLE items WITH (publish = 'insert, delete')").await;
    let text = |operations: &str| {
        let subscription =
            config(&cluster.url("customers"), &cluster.url("orders"), "publication = \"shop_pub\"", &[]);
        format!("{subscription}\n[[subscriptions.tables]]\nfrom = 'items'\n{operations}\n")
    };

    let validated = validate(&text(""), &[]).await;
    assert_eq!(validated.code, Some(1), "{}", validated.output());
    validated.assert_mentions(
        "error: subscription customers-to-orders: publication \"shop_pub\" does not publish updates, truncates \
         (its `publish` option)",
    );
    // Asking only for what it publishes is fine.
    let validated = validate(&text("operations = [\"insert\", \"delete\"]"), &[]).await;
    assert_eq!(validated.code, Some(0), "{}", validated.output());

    exec(&source, "ALTER PUBLICATION shop_pub SET (publish = 'insert, update, delete, truncate')").await;
    exec(&source, "ALTER PUBLICATION shop_pub SET TABLE items WHERE (qty > 0)").await;
    let validated = validate(&text(""), &[]).await;
    assert_eq!(validated.code, Some(1), "{}", validated.output());
    validated.assert_mentions("publication \"shop_pub\" filters the rows or columns of \"public\".\"items\"");
}

/// A source table keyed by `REPLICA IDENTITY USING INDEX` sends that
/// index's columns as the key of its changes, and the pipeline goes by
/// them: a target without such a column is an error here too. Before,
/// validate went by the primary key and said ok, and `ferry run` stopped
/// at the table's first change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_identity_index_is_the_key_validate_checks() {
    let cluster = Cluster::start();
    let (source, target) = source_and_target(&cluster).await;
    exec(
        &source,
        "CREATE TABLE items (id int PRIMARY KEY, email text NOT NULL);
         CREATE UNIQUE INDEX items_email ON items (email);
         ALTER TABLE items REPLICA IDENTITY USING INDEX items_email",
    )
    .await;
    exec(&target, "CREATE TABLE items (id int PRIMARY KEY)").await;
    let text = config(&cluster.url("customers"), &cluster.url("orders"), "", &[("items", "items")]);

    let validated = validate(&text, &[]).await;

    assert_eq!(validated.code, Some(1), "{}", validated.output());
    validated.assert_mentions("email");

    // Columns the index only INCLUDEs are not part of the key the changes
    // carry: a target without them is fine.
    exec(
        &source,
        "ALTER TABLE items ADD COLUMN note text;
         CREATE UNIQUE INDEX items_id_note ON items (id) INCLUDE (note);
         ALTER TABLE items REPLICA IDENTITY USING INDEX items_id_note",
    )
    .await;
    let validated = validate(&text, &[]).await;
    assert_eq!(validated.code, Some(0), "{}", validated.output());
}

/// Two sources of the config that are the same database (say, one role per
/// publication): the slot of a subscription on one is not a forgotten slot
/// on the other. Before, every start and validate warned about it and
/// suggested a `ferry drop` that refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_of_a_source_spelled_twice_is_not_forgotten() {
    let cluster = Cluster::start();
    let (source, target) = source_and_target(&cluster).await;
    exec(&source, "CREATE TABLE items (id int PRIMARY KEY)").await;
    exec(&target, "CREATE TABLE items (id int PRIMARY KEY)").await;
    exec(&source, "SELECT pg_create_logical_replication_slot('ferry_customers_to_orders', 'pgoutput')").await;
    exec(&source, "SELECT pg_create_logical_replication_slot('ferry_long_gone', 'pgoutput')").await;
    let text = format!(
        "{}\n[sources.customers_again]\nurl = \"{}\"\n",
        config(&cluster.url("customers"), &cluster.url("orders"), "", &[("items", "items")]),
        cluster.url("customers")
    );

    let validated = validate(&text, &[]).await;

    let output = validated.output();
    assert!(!output.contains("slot ferry_customers_to_orders on source"), "{output}");
    validated.assert_mentions("slot ferry_long_gone on source");
    validated.assert_mentions("belongs to no configured subscription");
}

/// With `snapshot = true` a start copies each table the target has no copy
/// of, and the copy refuses a target table holding rows: validate says so
/// first. A table ferry copied before, or `snapshot = false`, is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_the_start_would_copy_into_must_be_empty() {
    let cluster = Cluster::start();
    let (source, target) = source_and_target(&cluster).await;
    exec(&source, "CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items VALUES (1)").await;
    exec(&target, "CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items VALUES (2)").await;
    let copied = config(&cluster.url("customers"), &cluster.url("orders"), "", &[("items", "items")]);

    let validated = validate(&copied, &[]).await;
    assert_eq!(validated.code, Some(1), "{}", validated.output());
    validated.assert_mentions("target table \"public\".\"items\" is not empty");
    let streamed =
        config(&cluster.url("customers"), &cluster.url("orders"), "snapshot = false", &[("items", "items")]);
    let validated = validate(&streamed, &[]).await;
    assert_eq!(validated.code, Some(0), "{}", validated.output());

    exec(&target, "DELETE FROM items").await;
    let daemon = support::daemon::Daemon::start(&copied);
    daemon.wait_for_log("streaming", std::time::Duration::from_secs(60)).await;
    assert_eq!(daemon.signal_and_wait("TERM").0, Some(0));
    let validated = validate(&copied, &[]).await;
    assert_eq!(validated.code, Some(0), "{}", validated.output());
}

/// A target an older ferry wrote: its `ferry.tables` lacks the columns
/// added since (`removed`, `target_table`), which `ferry run` adds, and
/// before that ferry recorded no tables at all, which the start takes as
/// the publication's tables copied. validate reads both as the start
/// does: before, the first was an SQL error and the second took every
/// table as copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_an_older_ferry_wrote_is_read_as_the_start_reads_it() {
    let cluster = Cluster::start();
    let (source, target) = source_and_target(&cluster).await;
    let tables = "CREATE TABLE items (id int PRIMARY KEY); CREATE TABLE extra (id int PRIMARY KEY);
                  INSERT INTO items VALUES (1); INSERT INTO extra VALUES (1);";
    exec(&source, &format!("{tables} CREATE PUBLICATION ferry_customers_to_orders FOR TABLE items")).await;
    exec(
        &target,
        &format!(
            "{tables} CREATE SCHEMA ferry;
             CREATE TABLE ferry.progress (subscription text PRIMARY KEY, end_lsn pg_lsn NOT NULL);
             INSERT INTO ferry.progress VALUES ('customers-to-orders', '0/1');
             CREATE TABLE ferry.tables (subscription text NOT NULL, source_table text NOT NULL, floor pg_lsn,
                                        copying boolean NOT NULL DEFAULT false,
                                        PRIMARY KEY (subscription, source_table));"
        ),
    )
    .await;
    let text = config(
        &cluster.url("customers"),
        &cluster.url("orders"),
        "",
        &[("items", "items"), ("extra", "extra")],
    );

    // Nothing recorded: items, published, counts as copied; extra is copied.
    let validated = validate(&text, &[]).await;
    assert_eq!(validated.code, Some(1), "{}", validated.output());
    validated.assert_mentions("target table \"public\".\"extra\" is not empty");
    assert!(!validated.output().contains("\"items\" is not empty"), "{}", validated.output());

    // Both recorded as copied, in the older shape, and so published.
    exec(
        &target,
        "INSERT INTO ferry.tables (subscription, source_table) VALUES
             ('customers-to-orders', '\"public\".\"items\"'), ('customers-to-orders', '\"public\".\"extra\"')",
    )
    .await;
    let validated = validate(&text, &[]).await;
    validated.assert_mentions("source table \"public\".\"extra\" left publication");
    exec(&source, "ALTER PUBLICATION ferry_customers_to_orders ADD TABLE extra").await;
    let validated = validate(&text, &[]).await;
    assert_eq!(validated.code, Some(0), "{}", validated.output());
}
