//! Two services that replicate the same table to each other settle instead
//! of looping: changes ferry applies carry a replication origin, and a
//! pipeline reading that database leaves them out unless it forwards them.

mod support;

use std::time::Duration;

use support::Cluster;
use support::daemon::{Daemon, wait_for_same};

const SETTLE: Duration = Duration::from_secs(120);
const SCHEMA: &str = "CREATE TABLE notes (id int PRIMARY KEY, body text)";

fn database(kind: &str, name: &str, cluster: &Cluster) -> String {
    format!("[{kind}.{name}]\nurl = \"{}\"\n", cluster.url("postgres"))
}

fn subscription(name: &str, source: &str, target: &str, extra: &str) -> String {
    format!(
        "[[subscriptions]]\nname = \"{name}\"\nsource = \"{source}\"\ntarget = \"{target}\"\n{extra}\n\
         [[subscriptions.tables]]\nfrom = \"notes\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_replicating_to_each_other_settle_without_loops() {
    let (a, b) = (Cluster::start(), Cluster::start());
    let (ca, cb) = (a.client("postgres").await, b.client("postgres").await);
    ca.batch_execute(SCHEMA).await.unwrap();
    cb.batch_execute(SCHEMA).await.unwrap();
    let config = [
        database("sources", "a", &a),
        database("sources", "b", &b),
        database("targets", "a", &a),
        database("targets", "b", &b),
        subscription("a-to-b", "a", "b", "snapshot = false"),
        subscription("b-to-a", "b", "a", "snapshot = false"),
    ]
    .join("\n");
    let daemon = Daemon::start(&config);
    daemon.wait_for_log("subscription=a-to-b slot=ferry_a_to_b", SETTLE).await;
    daemon.wait_for_log("subscription=b-to-a slot=ferry_b_to_a", SETTLE).await;

    for i in 1..=20 {
        ca.batch_execute(&format!("INSERT INTO notes VALUES ({i}, 'from a')")).await.unwrap();
        cb.batch_execute(&format!("INSERT INTO notes VALUES ({}, 'from b')", 100 + i)).await.unwrap();
    }
    wait_for_same(&ca, &cb, "notes", "notes", "id, body", "id", SETTLE).await;
    // Each side now changes a row the other side wrote.
    ca.batch_execute("UPDATE notes SET body = 'edited on a' WHERE id = 101").await.unwrap();
    cb.batch_execute("DELETE FROM notes WHERE id = 1").await.unwrap();
    wait_for_same(&ca, &cb, "notes", "notes", "id, body", "id", SETTLE).await;
    // A transaction large enough to be streamed while in progress, on both
    // legs: its origin arrives inside the stream.
    ca.batch_execute("INSERT INTO notes SELECT g, 'bulk from a' FROM generate_series(1000, 20999) g")
        .await
        .unwrap();
    wait_for_same(&ca, &cb, "notes", "notes", "id, body", "id", SETTLE).await;
    // A change sent back would have hit a duplicate key or a missing row.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logs = daemon.logs();
    assert!(!logs.contains("pipeline stopped") && !logs.contains("retrying"), "{logs}");
    let (count, _) = support::daemon::checksum(&ca, "notes", "id", "id").await;
    assert_eq!(count, 20_039);
    let origins: i64 = ca
        .query_one("SELECT count(*) FROM pg_replication_origin WHERE roname = 'ferry_b_to_a'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(origins, 1, "changes applied on a carry ferry's origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_forwards_only_when_asked() {
    let (a, b, c, d) = (Cluster::start(), Cluster::start(), Cluster::start(), Cluster::start());
    for cluster in [&a, &b, &c, &d] {
        cluster.client("postgres").await.batch_execute(SCHEMA).await.unwrap();
    }
    let config = [
        database("sources", "a", &a),
        database("sources", "b", &b),
        database("targets", "b", &b),
        database("targets", "c", &c),
        database("targets", "d", &d),
        subscription("a-to-b", "a", "b", "snapshot = false"),
        subscription("b-to-c", "b", "c", "snapshot = false\nforward_origins = true"),
        subscription("b-to-d", "b", "d", "snapshot = false"),
    ]
    .join("\n");
    let daemon = Daemon::start(&config);
    for name in ["a_to_b", "b_to_c", "b_to_d"] {
        daemon.wait_for_log(&format!("slot=ferry_{name} start="), SETTLE).await;
    }
    let (ca, cb) = (a.client("postgres").await, b.client("postgres").await);
    ca.batch_execute("INSERT INTO notes VALUES (1, 'from a')").await.unwrap();
    cb.batch_execute("INSERT INTO notes VALUES (2, 'from b')").await.unwrap();
    let (cc, cd) = (c.client("postgres").await, d.client("postgres").await);
    // c forwards what b got from a; d only takes b's own changes.
    wait_for_same(&cb, &cc, "notes", "notes", "id, body", "id", SETTLE).await;
    let own = "(SELECT * FROM notes WHERE id = 2) n";
    wait_for_same(&cb, &cd, own, "notes", "id, body", "id", SETTLE).await;
    drop(daemon);
}

/// Three services, each replicating its own table into the other two, all
/// from one daemon: every copy ends equal to its source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_services_each_copy_their_table_into_the_other_two() {
    let services = ["customers", "orders", "billing"];
    let clusters = [Cluster::start(), Cluster::start(), Cluster::start()];
    let mut config = Vec::new();
    for (service, cluster) in services.iter().zip(&clusters) {
        let client = cluster.client("postgres").await;
        for table in services {
            client
                .batch_execute(&format!("CREATE TABLE {table} (id int PRIMARY KEY, body text)"))
                .await
                .unwrap();
        }
        config.push(database("sources", service, cluster));
        config.push(database("targets", service, cluster));
    }
    for from in services {
        for to in services.iter().filter(|t| **t != from) {
            config.push(format!(
                "[[subscriptions]]\nname = \"{from}-to-{to}\"\nsource = \"{from}\"\ntarget = \"{to}\"\nsnapshot = false\n\
                 [[subscriptions.tables]]\nfrom = \"{from}\"\n"
            ));
        }
    }
    let daemon = Daemon::start(&config.join("\n"));
    for from in services {
        for to in services.iter().filter(|t| **t != from) {
            daemon.wait_for_log(&format!("slot=ferry_{from}_to_{to} start="), SETTLE).await;
        }
    }
    for (service, cluster) in services.iter().zip(&clusters) {
        let client = cluster.client("postgres").await;
        client
            .batch_execute(&format!(
                "INSERT INTO {service} SELECT g, '{service} ' || g FROM generate_series(1, 500) g;
                 UPDATE {service} SET body = body || ' edited' WHERE id % 7 = 0;
                 DELETE FROM {service} WHERE id % 11 = 0;"
            ))
            .await
            .unwrap();
    }
    for (service, owner) in services.iter().zip(&clusters) {
        let source = owner.client("postgres").await;
        for copy in clusters.iter().filter(|c| c.port != owner.port) {
            let target = copy.client("postgres").await;
            wait_for_same(&source, &target, service, service, "id, body", "id", SETTLE).await;
        }
    }
    drop(daemon);
}
