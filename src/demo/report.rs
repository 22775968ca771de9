//! What the demo shows: row counts while it runs, and at the end a
//! comparison of each copy with its source by content.

use std::time::Duration;

use tokio_postgres::Client;

use super::setup::{Databases, FLOWS, Flow};

/// A table's contents in short: row count and md5 over the rows in key
/// order (`id`, which every flow keeps), each row in its text form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    pub rows: i64,
    pub md5: String,
}

async fn checksum(db: &Client, rows_query: &str) -> Result<Checksum, tokio_postgres::Error> {
    let row = db
        .query_one(
            &format!(
                "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t.id)), '') FROM ({rows_query}) t"
            ),
            &[],
        )
        .await?;
    Ok(Checksum { rows: row.get(0), md5: row.get(1) })
}

/// A flow's source and copy, compared.
#[derive(Debug)]
pub struct Comparison {
    pub flow: Flow,
    pub source: Checksum,
    pub copy: Checksum,
}

impl Comparison {
    pub fn matches(&self) -> bool {
        self.source == self.copy
    }

    /// One line of the consistency check.
    pub fn line(&self) -> String {
        let what = format!("{}:", self.flow.table);
        let direction = format!("{} db → copy in {} db", self.flow.from.name(), self.flow.to.name());
        if self.matches() {
            format!("  {what:<11}{direction:<34} match ({} rows, md5 {})", self.source.rows, self.source.md5)
        } else {
            format!(
                "  {what:<11}{direction:<34} MISMATCH (source {} rows, md5 {}; copy {} rows, md5 {})",
                self.source.rows, self.source.md5, self.copy.rows, self.copy.md5
            )
        }
    }
}

/// Compares every flow's source rows with its copy.
pub async fn compare(db: &Databases) -> Result<Vec<Comparison>, tokio_postgres::Error> {
    let mut comparisons = Vec::new();
    for flow in FLOWS {
        let source = checksum(db.of(flow.from), &flow.source_query()).await?;
        let copy = checksum(db.of(flow.to), &flow.copy_query()).await?;
        comparisons.push(Comparison { flow, source, copy });
    }
    Ok(comparisons)
}

async fn count(db: &Client, table: &str) -> Result<i64, tokio_postgres::Error> {
    Ok(db.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await?.get(0))
}

/// The status line: rows in each source table and in its copy.
pub async fn status_line(
    db: &Databases,
    elapsed: Duration,
    last_change: &str,
) -> Result<String, tokio_postgres::Error> {
    let mut line = format!("t={}s", elapsed.as_secs());
    for (i, flow) in FLOWS.iter().enumerate() {
        let source = count(db.of(flow.from), flow.table).await?;
        let copy = count(db.of(flow.to), flow.table).await?;
        // The first pair says what the numbers are; the rest follow suit.
        let (rows, source_label) = if i == 0 { (" rows", " (source)") } else { ("", "") };
        line.push_str(&format!(
            "   {}: {source}{rows}{source_label} / {copy} (copy in {})",
            flow.table,
            flow.to.name()
        ));
    }
    line.push_str(&format!("   last change: {last_change}"));
    Ok(line)
}
