//! Tables joining a subscription that is already streaming. Like
//! PostgreSQL's own table synchronisation, each batch of new tables gets
//! its own copy under its own snapshot while the subscription keeps
//! streaming its other tables, then joins the stream where its copy left
//! off.
//!
//! The target records which source tables of a subscription have been
//! copied (`ferry.tables`). A table whose copy and the stream are not in
//! step yet has a floor there: its changes are applied from source
//! transactions committed at or after it (those before are in the copy or
//! already applied). A table without a floor follows the subscription's
//! progress. Floors move with the stream and are cleared in the target
//! transaction where they meet the progress, so after a crash the target
//! still says exactly what each table has. A table taken out of the
//! subscription keeps its row, flagged `removed` (it is copied again if it
//! comes back): the rows say for good that this target recorded the
//! subscription, which a crash between taking one table out and recording
//! its replacement must not erase.

use std::collections::{HashMap, HashSet};

use tokio_postgres::Client;

use crate::apply::{self, ApplyError, target_error};
use crate::config::Subscription;
use crate::fault;
use crate::metrics::PipelineMetrics;
use crate::pg::Lsn;
use crate::pg::conninfo::ConnInfo;
use crate::pg::names::{QualifiedName, quote_literal};
use crate::pg::pgoutput::Relation;
use crate::pg::replication::{ReplicationClient, SlotKind};
use crate::pg::tls;
use crate::pipeline::PipelineError;
use crate::route::TableRoute;
use crate::snapshot::{self, SnapshotError};
use crate::source::Change;

/// The `removed` column came later: a target of an older ferry gets it. Only
/// then is the table altered, as ALTER TABLE would wait for (and hold up)
/// every transaction using the table, copies of other subscriptions
/// included.
pub const TABLES_DDL: &str = "CREATE TABLE IF NOT EXISTS ferry.tables (
    subscription text NOT NULL,
    source_table text NOT NULL,
    floor pg_lsn,
    copying boolean NOT NULL DEFAULT false,
    removed boolean NOT NULL DEFAULT false,
    target_table text,
    PRIMARY KEY (subscription, source_table)
);
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'ferry.tables'::regclass AND attname = 'removed') THEN
        ALTER TABLE ferry.tables ADD COLUMN removed boolean NOT NULL DEFAULT false;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'ferry.tables'::regclass AND attname = 'target_table') THEN
        ALTER TABLE ferry.tables ADD COLUMN target_table text;
    END IF;
END $$;";

/// What the target says about a subscription's tables.
#[derive(Debug, Default)]
pub struct TableStates {
    /// Anything was recorded for the subscription, even of tables since
    /// taken out of it or copies never finished.
    recorded: bool,
    copied: HashSet<String>,
    floors: HashMap<String, Lsn>,
}

impl TableStates {
    /// Reads the subscription's tables from the target and flags those no
    /// longer configured as removed (added again later, they are copied
    /// again). A table whose copy never finished is not copied: its copy
    /// starts over.
    pub async fn load(target: &Client, sub: &Subscription) -> Result<TableStates, ApplyError> {
        let (configured, targets): (Vec<String>, Vec<String>) =
            sub.tables.iter().map(|t| (t.from.to_string(), t.to.to_string())).unzip();
        // A table copied into another target table than the one it maps to
        // now is flagged too, before anything streams: its new target table
        // gets a copy, as if the table were added, and a change back later
        // copies again rather than trusting a state the stream moved past.
        // (A table streamed without a copy, or recorded before ferry kept
        // the target table, has none to compare.)
        let flagged = target
            .query(
                "UPDATE ferry.tables f SET removed = true
                 WHERE subscription = $1 AND NOT removed
                   AND (NOT source_table = ANY($2)
                        OR target_table <> (SELECT u.t FROM unnest($2::text[], $3::text[]) AS u (s, t)
                                            WHERE u.s = f.source_table))
                 RETURNING source_table, target_table",
                &[&sub.name, &configured, &targets],
            )
            .await
            .map_err(target_error("flagging tables removed from the subscription"))?;
        for row in &flagged {
            let (table, into): (String, Option<String>) = (row.get(0), row.get(1));
            match configured.iter().position(|c| *c == table) {
                Some(n) => tracing::info!(
                    subscription = %sub.name,
                    %table,
                    "the table now maps to {}, not {}: it is copied there as a table added to the subscription",
                    targets[n],
                    into.unwrap_or_default()
                ),
                None => {
                    tracing::info!(subscription = %sub.name, %table, "table no longer in the subscription: not replicated any more")
                }
            }
        }
        let rows = target
            .query(
                "SELECT source_table, floor::text, copying OR removed FROM ferry.tables WHERE subscription = $1",
                &[&sub.name],
            )
            .await
            .map_err(target_error("reading the subscription's tables"))?;
        let mut states = TableStates { recorded: !rows.is_empty(), ..TableStates::default() };
        for row in rows {
            let (table, not_copied): (String, bool) = (row.get(0), row.get(2));
            if not_copied {
                continue;
            }
            if let Some(floor) = row.get::<_, Option<String>>(1).and_then(|f| f.parse().ok()) {
                states.floors.insert(table.clone(), floor);
            }
            states.copied.insert(table);
        }
        Ok(states)
    }

    /// Nothing was ever recorded about the subscription's tables: a target
    /// written before ferry recorded them.
    pub fn nothing_recorded(&self) -> bool {
        !self.recorded
    }

    /// The configured tables the target has no copy of.
    pub fn not_copied<'a>(&self, sub: &'a Subscription) -> Vec<&'a QualifiedName> {
        sub.tables.iter().map(|t| &t.from).filter(|t| !self.copied.contains(&t.to_string())).collect()
    }

    /// The configured tables the target has a copy of.
    pub fn copied<'a>(&self, sub: &'a Subscription) -> Vec<&'a QualifiedName> {
        sub.tables.iter().map(|t| &t.from).filter(|t| self.copied.contains(&t.to_string())).collect()
    }

    /// The floors of tables not yet in step with the stream.
    pub fn floors(&self, sub: &Subscription) -> Floors {
        let mut floors = Floors::default();
        for table in &sub.tables {
            if let Some(&floor) = self.floors.get(&table.from.to_string()) {
                floors.set(table.from.clone(), Floor::From(floor));
            }
        }
        floors
    }
}

/// Says on the target, in a transaction of its own, that ferry is about to
/// copy `routes`' tables, and into which target tables: a copy is split
/// over several target transactions (see [`snapshot::copy_tables`]), so a
/// crash can leave part of one behind, and the next attempt must know that
/// what it finds is its own. Such leftovers are deleted here. Any other
/// table must be empty before it is marked: rows ferry did not write are
/// never taken for leftovers, nor is a table the copy did not go into (the
/// table's `to` changed since; marks from before ferry recorded the target
/// table are taken as the current one's).
pub async fn mark_copying(
    target: &Client,
    subscription: &str,
    routes: &[&TableRoute],
) -> Result<(), PipelineError> {
    let names: Vec<String> = routes.iter().map(|r| r.mapping.from.to_string()).collect();
    let unfinished = unfinished_copies(target, subscription, &names).await?;
    // Durable at once: the slot made next is dropped at a restart only
    // when this says it is this target's (see `pipeline::set_up`).
    let mut sql = String::from("BEGIN; SET LOCAL synchronous_commit = on;");
    for route in routes {
        let (from, to) = (&route.mapping.from, &route.mapping.to);
        let to_name = to.to_string();
        let unfinished = unfinished.get(&from.to_string());
        let copied_into = unfinished.map(|(into, _)| into.as_deref().unwrap_or(&to_name));
        let removed_since = unfinished.is_some_and(|(_, removed)| *removed);
        match copied_into {
            Some(into) if into == to_name && !removed_since => {
                tracing::info!(%subscription, table = %to, "removing what an unfinished copy left");
                sql.push_str(&format!("DELETE FROM {to};"));
                continue;
            }
            Some(into) if into == to_name => {
                tracing::warn!(%subscription, table = %from, "an unfinished copy went into {into} before the table left the subscription or moved; what that table holds now is not taken for what it left");
            }
            Some(into) => {
                tracing::warn!(%subscription, table = %from, "an unfinished copy went into {into}, which the table no longer maps to; what it left there stays");
            }
            None => {}
        }
        if !snapshot::is_empty(target, to).await? {
            return Err(SnapshotError::TargetNotEmpty(to.clone()).into());
        }
    }
    let targets: Vec<String> = routes.iter().map(|r| r.mapping.to.to_string()).collect();
    let array = |values: &[String]| values.iter().map(|v| quote_literal(v)).collect::<Vec<_>>().join(", ");
    target
        .batch_execute(&format!(
            "{sql} INSERT INTO ferry.tables (subscription, source_table, copying, target_table)
             SELECT {subscription}, s, true, t FROM unnest(ARRAY[{sources}]::text[], ARRAY[{targets}]::text[]) AS u (s, t)
             ON CONFLICT (subscription, source_table)
             DO UPDATE SET copying = true, floor = NULL, removed = false, target_table = EXCLUDED.target_table;
             COMMIT;",
            subscription = quote_literal(subscription),
            sources = array(&names),
            targets = array(&targets),
        ))
        .await
        .map_err(target_error("marking the tables as being copied"))?;
    Ok(())
}

/// Where a copy reads and writes: the source and target databases, and a
/// session open on each (the source's for measuring tables, the target's
/// inside the transaction that will record the copy complete).
pub struct CopyEnds<'a> {
    pub source: &'a ConnInfo,
    pub source_sql: &'a Client,
    pub target: &'a ConnInfo,
    pub target_sql: &'a Client,
}

/// Copies `routes`' tables as of the exported snapshot `snapshot_name`
/// into `ends.target_sql`'s open transaction. A table large enough to split
/// gets more target sessions (replication origins `origin` + `.copy`,
/// `.copy2`, …, as an origin serves one session at a time) for its other
/// parts, which commit here, before the caller's transaction records the
/// copy complete.
pub async fn copy(
    sub: &Subscription,
    ends: CopyEnds<'_>,
    origin: &str,
    routes: &[&TableRoute],
    snapshot_name: &str,
    metrics: &PipelineMetrics,
) -> Result<(), PipelineError> {
    let splits = snapshot::split_points(ends.source_sql, ends.target_sql, routes).await?;
    let parts = splits.iter().map(|points| points.len() + 1).max().unwrap_or(1);
    let extra = ExtraTarget::open(ends.target, &sub.name, origin, parts - 1).await;
    let targets: Vec<&Client> =
        std::iter::once(ends.target_sql).chain(extra.iter().map(|s| &s.client)).collect();
    snapshot::copy_tables(sub, routes, &splits, ends.source, &targets, snapshot_name, metrics).await?;
    for session in extra {
        session.commit().await?;
    }
    Ok(())
}

/// What the origins of a copy's extra sessions begin with, for a copy
/// whose first session has `origin`.
pub fn copy_origin_prefix(origin: &str) -> String {
    format!("{origin}.copy")
}

/// A further target session for a copy, its transaction open and tagged
/// with a replication origin of its own.
struct ExtraTarget {
    client: Client,
}

impl ExtraTarget {
    /// Opens `count` of them, for the parts of split tables (see
    /// [`snapshot::split_points`]). When they cannot all be opened (say,
    /// the target has no replication origin slot to spare), none is: the
    /// copy goes on with one session, unsplit.
    async fn open(target: &ConnInfo, subscription: &str, origin: &str, count: usize) -> Vec<ExtraTarget> {
        let mut sessions = Vec::new();
        for n in 1..=count {
            let prefix = copy_origin_prefix(origin);
            let origin = if n == 1 { prefix } else { format!("{prefix}{n}") };
            let opened = async {
                let client = tls::connect_sql(target).await.map_err(PipelineError::ConnectTarget)?;
                apply::prepare_target_session(&client, subscription, &origin).await?;
                client.batch_execute("BEGIN").await.map_err(target_error("BEGIN"))?;
                Ok::<_, PipelineError>(ExtraTarget { client })
            };
            match opened.await {
                Ok(session) => sessions.push(session),
                Err(error) => {
                    tracing::warn!(%subscription, "copying with one target session only: another one could not be opened: {error}");
                    return Vec::new();
                }
            }
        }
        sessions
    }

    /// Commits its part, before the first session's transaction says the
    /// copy is complete.
    async fn commit(self) -> Result<(), ApplyError> {
        self.client.batch_execute("COMMIT").await.map_err(target_error("COMMIT"))?;
        fault::point(fault::AFTER_COPY_PART_COMMIT);
        Ok(())
    }
}

/// The tables among `names` (source tables) whose copy was begun and
/// never finished: the target table it went into (`None`: marked before
/// ferry recorded it), and whether the table was taken out of the
/// subscription or mapped elsewhere since (what that table holds now may
/// be anyone's).
async fn unfinished_copies(
    target: &Client,
    subscription: &str,
    names: &[String],
) -> Result<HashMap<String, (Option<String>, bool)>, ApplyError> {
    let rows = target
        .query(
            "SELECT source_table, target_table, removed FROM ferry.tables
             WHERE subscription = $1 AND copying AND source_table = ANY($2)",
            &[&subscription, &names],
        )
        .await
        .map_err(target_error("looking for unfinished copies"))?;
    Ok(rows.iter().map(|row| (row.get(0), (row.get(1), row.get(2)))).collect())
}

/// Records `tables` as in step with the subscription's progress without
/// a copy (`snapshot = false`), durably, in a transaction of its own:
/// before the subscription's slot is made, which a restart then knows for
/// this target's own (see `pipeline::set_up`). What an unfinished copy of
/// one of them left stays, and the log says so: the rows may have been
/// loaded some other way since.
pub async fn record_streamed(
    target: &Client,
    sub: &Subscription,
    tables: &[&QualifiedName],
) -> Result<(), ApplyError> {
    let subscription = sub.name.as_str();
    let names: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
    for (table, (into, _)) in unfinished_copies(target, subscription, &names).await? {
        let into = into.unwrap_or_else(|| "its target table".into());
        tracing::warn!(%subscription, %table, "a copy of the table was begun and never finished; with snapshot = false it is not copied again, and what it left in {into} stays (to copy it anew: remove the table from the subscription and restart ferry, empty that table, then add the table back with snapshot = true)");
    }
    target.batch_execute("BEGIN; SET LOCAL synchronous_commit = on").await.map_err(target_error("BEGIN"))?;
    record_copied(target, subscription, tables, None).await?;
    // Streamed into the table each maps to now (see `TableStates::load`).
    let (sources, targets): (Vec<String>, Vec<String>) = sub
        .tables
        .iter()
        .filter(|t| tables.contains(&&t.from))
        .map(|t| (t.from.to_string(), t.to.to_string()))
        .unzip();
    target
        .execute(
            "UPDATE ferry.tables f SET target_table = u.t FROM unnest($2::text[], $3::text[]) AS u (s, t)
             WHERE f.subscription = $1 AND f.source_table = u.s",
            &[&subscription, &sources, &targets],
        )
        .await
        .map_err(target_error("recording the subscription's tables"))?;
    target.batch_execute("COMMIT").await.map_err(target_error("COMMIT"))
}

/// Records `tables` as copied and in step with the subscription's progress
/// (`floor`: `None`), or from `floor` on, inside the caller's transaction.
pub async fn record_copied(
    target: &Client,
    subscription: &str,
    tables: &[&QualifiedName],
    floor: Option<Lsn>,
) -> Result<(), ApplyError> {
    let names: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
    let floor = floor.map(|f| f.to_string());
    target
        .execute(
            "INSERT INTO ferry.tables (subscription, source_table, floor)
             SELECT $1, t, $3::text::pg_lsn FROM unnest($2::text[]) AS t
             ON CONFLICT (subscription, source_table)
             DO UPDATE SET floor = EXCLUDED.floor, copying = false, removed = false",
            &[&subscription, &names, &floor],
        )
        .await
        .map_err(target_error("recording the subscription's tables"))?;
    Ok(())
}

/// Where a table out of step with the stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Floor {
    /// Being copied: none of its changes are applied yet, and the source
    /// may not forget anything from `hold` on (if the copy ends up behind
    /// the stream, the stream goes back to it).
    Copying { hold: Lsn },
    /// Its changes are applied from source transactions committed at or
    /// after this.
    From(Lsn),
}

/// The tables of a subscription out of step with its progress. Empty, as
/// it almost always is, it costs the stream nothing.
#[derive(Debug, Default)]
pub struct Floors {
    tables: Vec<(QualifiedName, Floor)>,
}

impl Floors {
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    pub fn set(&mut self, table: QualifiedName, floor: Floor) {
        match self.tables.iter_mut().find(|(t, _)| *t == table) {
            Some(entry) => entry.1 = floor,
            None => self.tables.push((table, floor)),
        }
    }

    fn get(&self, relation: &Relation) -> Option<Floor> {
        self.tables
            .iter()
            .find(|(t, _)| t.schema == relation.namespace && t.name == relation.name)
            .map(|&(_, floor)| floor)
    }

    /// The lowest commit LSN any table still needs: transactions committed
    /// before it are skipped whole.
    pub fn lowest(&self, progress: Lsn) -> Lsn {
        self.tables
            .iter()
            .filter_map(|(_, floor)| match floor {
                Floor::From(lsn) => Some(*lsn),
                Floor::Copying { .. } => None,
            })
            .fold(progress, Lsn::min)
    }

    /// Whether a change of `relation` in the source transaction committed
    /// at `commit_lsn` is applied; `replaying`: that transaction is before
    /// the subscription's progress (applied already for tables in step).
    pub fn applies(&self, relation: &Relation, commit_lsn: Lsn, replaying: bool) -> bool {
        match self.get(relation) {
            None => !replaying,
            Some(Floor::Copying { .. }) => false,
            Some(Floor::From(floor)) => commit_lsn >= floor,
        }
    }

    /// Keeps of `change` (from the source transaction committed at
    /// `commit_lsn`) what the tables it touches take; false when nothing.
    pub fn keep(&self, change: &mut Change, commit_lsn: Lsn, replaying: bool) -> bool {
        match change {
            Change::Insert { relation, .. }
            | Change::Update { relation, .. }
            | Change::Delete { relation, .. } => self.applies(relation, commit_lsn, replaying),
            Change::Truncate { relations, .. } => {
                relations.retain(|r| self.applies(r, commit_lsn, replaying));
                !relations.is_empty()
            }
            Change::Message(_) => !replaying,
        }
    }

    /// A source transaction ending at `end_lsn` was handled: every table
    /// has whatever it needed of it.
    pub fn passed(&mut self, end_lsn: Lsn) {
        for (_, floor) in &mut self.tables {
            if let Floor::From(lsn) = floor
                && *lsn < end_lsn
            {
                *lsn = end_lsn;
            }
        }
    }

    /// How far the source may forget: no further than any floor or hold.
    pub fn cap(&self, durable: Lsn) -> Lsn {
        self.tables
            .iter()
            .map(|(_, floor)| match floor {
                Floor::From(lsn) | Floor::Copying { hold: lsn } => *lsn,
            })
            .fold(durable, Lsn::min)
    }

    /// SQL recording the floors in the target transaction that commits
    /// `progress`; a floor that met the progress is cleared.
    pub fn record_sql(&self, subscription: &str, progress: Lsn) -> String {
        let mut sql = String::new();
        for (table, floor) in &self.tables {
            let Floor::From(lsn) = floor else { continue };
            let value = if *lsn == progress { "NULL".to_string() } else { format!("'{lsn}'::pg_lsn") };
            sql.push_str(&format!(
                "UPDATE ferry.tables SET floor = {value} WHERE subscription = {} AND source_table = {};\n",
                quote_literal(subscription),
                quote_literal(&table.to_string())
            ));
        }
        sql
    }

    /// The target committed `progress`: tables whose floor met it follow
    /// the progress from now on.
    pub fn settle(&mut self, progress: Lsn) {
        self.tables.retain(|(_, floor)| *floor != Floor::From(progress));
    }
}

/// Tables copied under one snapshot, ready to join the stream.
#[derive(Debug)]
pub struct Copied {
    pub routes: Vec<TableRoute>,
    /// The snapshot's consistent point: the copy holds every source
    /// transaction committed before it.
    pub at: Lsn,
}

/// Copies tables newly added to a streaming subscription under a snapshot
/// of their own (a temporary slot's), on connections of their own, and
/// records them with the snapshot's point as floor in the same target
/// transaction. The publication must already include them (setting up
/// made sure of it).
pub async fn copy_new_tables(
    sub: Subscription,
    source: ConnInfo,
    target: ConnInfo,
    routes: Vec<TableRoute>,
    metrics: PipelineMetrics,
) -> Result<Copied, PipelineError> {
    copy_and_record(sub, source, target, routes, metrics).await.map_err(|error| match error {
        // A statement of the copy the target refused for good is the
        // copy's failure, not a change of the stream to set aside or
        // replay: replaying the stream would only copy again, and fail
        // again, for ever. (What may pass later is retried as it was.)
        PipelineError::Apply(error) if !error.is_retryable() => match error {
            ApplyError::Target { context, source } => SnapshotError::Sql { context, source }.into(),
            other => PipelineError::Apply(other),
        },
        other => other,
    })
}

async fn copy_and_record(
    sub: Subscription,
    source: ConnInfo,
    target: ConnInfo,
    routes: Vec<TableRoute>,
    metrics: PipelineMetrics,
) -> Result<Copied, PipelineError> {
    let target_sql = tls::connect_sql(&target).await.map_err(PipelineError::ConnectTarget)?;
    // Origins of their own: an origin serves one session at a time, and the
    // stream's session holds the subscription's. The dot keeps them apart
    // from any subscription's origin (subscription names have none).
    let origin = format!("{}.sync", sub.slot);
    apply::prepare_target_session(&target_sql, &sub.name, &origin).await?;
    let source_sql = tls::connect_sql(&source).await.map_err(PipelineError::ConnectSource)?;
    let routes_ref: Vec<&TableRoute> = routes.iter().collect();
    fault::point(fault::BEFORE_TABLE_COPY);
    mark_copying(&target_sql, &sub.name, &routes_ref).await?;
    let mut replication = ReplicationClient::connect(&source).await?;
    let slot_name = temporary_slot_name(&source_sql).await?;
    let slot = replication.create_slot(&slot_name, SlotKind::Temporary, true).await?;
    let snapshot_name = slot.snapshot_name.as_deref().unwrap_or_default();
    tracing::info!(subscription = %sub.name, tables = routes.len(), slot = %slot_name, at = %slot.consistent_point, "copying tables added to the subscription");
    target_sql
        .batch_execute("BEGIN; SET LOCAL synchronous_commit = on")
        .await
        .map_err(target_error("BEGIN"))?;
    let ends =
        CopyEnds { source: &source, source_sql: &source_sql, target: &target, target_sql: &target_sql };
    copy(&sub, ends, &origin, &routes_ref, snapshot_name, &metrics).await?;
    let names: Vec<&QualifiedName> = routes.iter().map(|r| &r.mapping.from).collect();
    record_copied(&target_sql, &sub.name, &names, Some(slot.consistent_point)).await?;
    target_sql.batch_execute("COMMIT").await.map_err(target_error("COMMIT"))?;
    fault::point(fault::AFTER_TABLE_COPY);
    // This session holds `origin`: the origins go from another one.
    drop(target_sql);
    match tls::connect_sql(&target).await {
        Ok(client) => apply::drop_helper_origins(&client, &sub.name, &origin).await,
        Err(error) => {
            tracing::info!(subscription = %sub.name, "the copy's replication origins stay on the target: {error}")
        }
    }
    Ok(Copied { routes, at: slot.consistent_point })
}

/// A name for the copy's temporary slot, unique on the source while the
/// copy runs (the backend of its snapshot transaction lives as long), and
/// short whatever the subscription's name.
async fn temporary_slot_name(source: &Client) -> Result<String, SnapshotError> {
    let row = source
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .map_err(|source| SnapshotError::Sql { context: "naming the copy's slot".into(), source })?;
    // Not `ferry_...`: that is where subscriptions' slots are named.
    Ok(format!("ferrycopy_{}", row.get::<_, i32>(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::pgoutput::ReplicaIdentity;

    fn relation(name: &str) -> Relation {
        Relation {
            xid: None,
            oid: 1,
            namespace: "public".into(),
            name: name.into(),
            replica_identity: ReplicaIdentity::Default,
            columns: Vec::new(),
        }
    }

    fn lsn(n: u64) -> Lsn {
        Lsn(n)
    }

    #[test]
    fn a_table_behind_the_stream_catches_up_then_follows() {
        let mut floors = Floors::default();
        floors.set(QualifiedName::new("public", "new"), Floor::From(lsn(100)));
        let (new, old) = (relation("new"), relation("old"));
        // The stream went back to 100; the subscription had reached 300.
        assert_eq!(floors.lowest(lsn(300)), lsn(100));
        assert!(floors.applies(&new, lsn(150), true));
        assert!(!floors.applies(&old, lsn(150), true));
        assert!(floors.applies(&old, lsn(300), false));
        floors.passed(lsn(160));
        assert!(!floors.applies(&new, lsn(150), true), "already applied");
        assert_eq!(floors.cap(lsn(300)), lsn(160));
        assert!(floors.record_sql("s", lsn(300)).contains("'0/A0'::pg_lsn"));
        floors.settle(lsn(300));
        assert!(!floors.is_empty(), "still behind");
        floors.passed(lsn(320));
        assert!(floors.record_sql("s", lsn(320)).contains("floor = NULL"));
        floors.settle(lsn(320));
        assert!(floors.is_empty());
    }

    #[test]
    fn a_table_being_copied_gets_nothing_and_holds_the_source() {
        let mut floors = Floors::default();
        floors.set(QualifiedName::new("public", "new"), Floor::Copying { hold: lsn(50) });
        assert!(!floors.applies(&relation("new"), lsn(500), false));
        assert!(floors.applies(&relation("old"), lsn(500), false));
        assert_eq!(floors.lowest(lsn(400)), lsn(400));
        floors.passed(lsn(600));
        assert_eq!(floors.cap(lsn(600)), lsn(50));
        assert_eq!(floors.record_sql("s", lsn(600)), "");
    }

    #[test]
    fn a_copy_ahead_of_the_stream_waits_for_it() {
        let mut floors = Floors::default();
        floors.set(QualifiedName::new("public", "new"), Floor::From(lsn(500)));
        assert!(!floors.applies(&relation("new"), lsn(400), false), "in the copy");
        floors.passed(lsn(450));
        assert_eq!(floors.cap(lsn(450)), lsn(450));
        assert!(floors.applies(&relation("new"), lsn(500), false));
        floors.passed(lsn(520));
        floors.settle(lsn(520));
        assert!(floors.is_empty());
    }
}
