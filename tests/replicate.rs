//! `ferry run` against real clusters: snapshot, streaming, restarts and
//! crashes, each ending with source and target compared by checksum.

mod support;

use std::time::Duration;

use support::Cluster;
use support::daemon::{Daemon, checksum, wait_for_same};

const SETTLE: Duration = Duration::from_secs(120);

fn config(source: &Cluster, target: &Cluster, tables: &[(&str, &str)], extra: &str) -> String {
    let mut text = format!(
        "[sources.src]\nurl = \"{}\"\n\n[targets.dst]\nurl = \"{}\"\n\n[[subscriptions]]\nname = \"test\"\nsource = \"src\"\ntarget = \"dst\"\n{extra}\n",
        source.url("postgres"),
        target.url("postgres")
    );
    for (from, to) in tables {
        text.push_str(&format!("\n[[subscriptions.tables]]\nfrom = '{from}'\nto = '{to}'\n"));
    }
    text
}

async fn exec(client: &tokio_postgres::Client, sql: &str) {
    client.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

const ITEMS: &str =
    "CREATE TABLE items (id bigint PRIMARY KEY, name text, qty int, updated timestamptz DEFAULT now())";

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
