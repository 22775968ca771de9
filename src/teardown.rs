//! `ferry drop`: removes what a subscription left on its source (and, when
//! asked, its target) once it is gone from the config. Removing a
//! subscription from the config never drops its slot by itself, so a typo
//! in a config cannot throw away a slot and the changes it holds.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::metrics::Metrics;
use crate::pg::PgError;
use crate::pg::conninfo::ConnInfo;
use crate::pg::error::describe_sql_error;
use crate::pg::names::quote_ident;
use crate::pg::replication::ReplicationClient;
use crate::pg::tls;
use crate::source::catalog::current_wal_lsn;

#[derive(Debug, thiserror::Error)]
pub enum DropError {
    #[error(
        "subscription {0:?} is still in the config: remove it there (and reload or restart ferry) before dropping its slot"
    )]
    StillConfigured(String),
    #[error("the config has several sources ({0}); say which one held the subscription with --source")]
    WhichSource(String),
    #[error("the config has no source named {0:?}")]
    UnknownSource(String),
    #[error("the config has no target named {0:?}")]
    UnknownTarget(String),
    #[error("source {on}: there is no slot {slot} (nor a publication of that name){on_target}")]
    NoSlot { on: String, slot: String, on_target: String },
    #[error(
        "source {on}: there is no slot {slot}, but source {holder} has it: run again with --source {holder}"
    )]
    SlotElsewhere { on: String, slot: String, holder: String },
    #[error(
        "source {on}: slot {slot} belongs to database {database:?} of that server, not to the source's: \
         run again with --source naming that database's source"
    )]
    SlotInOtherDatabase { on: String, slot: String, database: String },
    #[error(
        "source {on}: there is no slot {slot}, and source {unasked} could not be asked whether it has it ({reason}); \
         nothing was removed: try again, or leave {unasked} out of the config given to ferry drop if it never held the subscription"
    )]
    SlotUnknown { on: String, slot: String, unasked: String, reason: String },
    #[error(
        "source {on}: slot {slot} is in use by process {pid}; is a ferry still running this subscription?"
    )]
    InUse { on: String, slot: String, pid: i32 },
    #[error("source: {0}")]
    Connect(Box<tls::SqlConnectError>),
    #[error("source: {context}: {source}")]
    Sql { context: &'static str, source: tokio_postgres::Error },
    #[error("target: {0}")]
    ConnectTarget(Box<tls::SqlConnectError>),
    #[error("target: {context}: {source}")]
    TargetSql { context: &'static str, source: tokio_postgres::Error },
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error("{error}; already done: {done}; run the same ferry drop again to finish")]
    Unfinished { done: String, error: Box<DropError> },
}

/// `error`, with what was removed before it (nothing: `error` as it is).
fn unfinished(done: &[String], error: impl Into<DropError>) -> DropError {
    let error = error.into();
    if done.is_empty() {
        error
    } else {
        DropError::Unfinished { done: done.join("; "), error: Box::new(error) }
    }
}

/// What `ferry drop` removed.
#[derive(Debug)]
pub struct Dropped {
    pub source: String,
    /// `None` when the slot was gone already (an earlier drop stopped
    /// before the publication).
    pub slot: Option<String>,
    pub publication: Option<String>,
    /// What was removed on the target, when one was named.
    pub target: Option<ClearedTarget>,
}

/// What `ferry drop --target` removed of a subscription's bookkeeping on
/// its target. Its tables' rows and its dead letters stay.
#[derive(Debug)]
pub struct ClearedTarget {
    /// The config's name of the target.
    pub target: String,
    /// Whether its row in `ferry.progress` was there: with it, the
    /// subscription added again would stop (its slot is gone, so changes
    /// since its last transaction would be lost).
    pub progress: bool,
    /// Its rows in `ferry.tables` (tables being copied or left behind).
    pub tables: u64,
    /// Its replication origins: each holds one of the target's
    /// `max_replication_slots` origin entries until dropped.
    pub origins: Vec<String>,
}

impl ClearedTarget {
    /// Whether the target held nothing of the subscription.
    pub fn is_empty(&self) -> bool {
        !self.progress && self.tables == 0 && self.origins.is_empty()
    }
}

/// Drops the slot of the removed subscription `name` on its source (named
/// by `source`, or the config's only one), and the publication ferry made
/// for it when there is one; with `target` named, first removes its
/// bookkeeping there (see [`ClearedTarget`]).
pub async fn drop_subscription(
    config: &Config,
    name: &str,
    source: Option<&str>,
    target: Option<&str>,
) -> Result<Dropped, DropError> {
    if config.subscriptions.iter().any(|s| s.name == name || s.slot == config::slot_name(name)) {
        return Err(DropError::StillConfigured(name.to_string()));
    }
    let (source_name, info) = pick_source(config, source)?;
    let target = target
        .map(|wanted| {
            named(&config.targets, wanted).ok_or_else(|| DropError::UnknownTarget(wanted.to_string()))
        })
        .transpose()?;
    let slot = config::slot_name(name);
    let client = tls::connect_sql(info).await.map_err(|e| DropError::Connect(Box::new(e)))?;
    let row = client
        .query_opt(
            "SELECT active_pid, COALESCE(database::text, ''), COALESCE(database = current_database(), false)
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(source_error("looking up the slot"))?;
    // Slot names are the server's, not the database's.
    if let Some(row) = row.as_ref().filter(|row| !row.get::<_, bool>(2)) {
        let (on, database) = (source_name.to_string(), row.get(1));
        return Err(DropError::SlotInOtherDatabase { on, slot, database });
    }
    let found = row.is_some();
    if let Some(pid) = row.and_then(|row| row.get::<_, Option<i32>>(0)) {
        return Err(DropError::InUse { on: source_name.to_string(), slot, pid });
    }
    // A source named wrongly would clear the target of a subscription
    // whose slot, on its real source, then kept WAL for ever.
    if !found && let Some(holder) = holder_elsewhere(config, source_name, &slot, target.is_some()).await? {
        return Err(DropError::SlotElsewhere { on: source_name.to_string(), slot, holder });
    }
    // The target goes first: a drop that stops half way is run again,
    // and finds the slot still there to tell that the name is right.
    let cleared = match target {
        Some((target, info)) => Some(clear_target(target, info, &slot).await?),
        None => None,
    };
    // A failure from here on says what is gone already.
    let mut done = Vec::new();
    if let Some(cleared) = cleared.as_ref().filter(|c| !c.is_empty()) {
        done.push(format!("removed the bookkeeping of {name} on target {}", cleared.target));
    }
    if found {
        let dropped = async { ReplicationClient::connect(info).await?.drop_slot(&slot, false).await };
        dropped.await.map_err(|error| unfinished(&done, error))?;
        done.push(format!("dropped slot {slot}"));
    }
    // The publication of the same name is the one ferry managed for it,
    // unless a configured subscription names it as its own.
    let in_use = config.subscriptions.iter().any(|s| s.publication == slot);
    let publication = client
        .query_opt("SELECT pubname::text FROM pg_publication WHERE pubname = $1", &[&slot])
        .await
        .map_err(|error| unfinished(&done, source_error("looking up the publication")(error)))?
        .map(|row| row.get::<_, String>(0))
        .filter(|_| !in_use);
    match &publication {
        Some(publication) => client
            .batch_execute(&format!("DROP PUBLICATION {}", quote_ident(publication)))
            .await
            .map_err(|error| unfinished(&done, source_error("dropping the publication")(error)))?,
        None if !found && cleared.as_ref().is_none_or(ClearedTarget::is_empty) => {
            let on_target = match &cleared {
                Some(cleared) => format!(", and target {} holds nothing of {name}", cleared.target),
                None => String::new(),
            };
            return Err(DropError::NoSlot { on: source_name.to_string(), slot, on_target });
        }
        None => {}
    }
    Ok(Dropped { source: source_name.to_string(), slot: found.then_some(slot), publication, target: cleared })
}

/// The other source of the config, if any, that has `slot` (sources that
/// are `named`'s database are not asked again). With `strict`, a source
/// that cannot be asked is an error rather than one without it.
async fn holder_elsewhere(
    config: &Config,
    named: &str,
    slot: &str,
    strict: bool,
) -> Result<Option<String>, DropError> {
    let here = &config.sources[named];
    let others = config.sources.iter().filter(|(name, info)| *name != named && !info.same_database(here));
    for (name, info) in others {
        match tokio::time::timeout(FORGOTTEN_SLOT_TIMEOUT, has_slot(info, slot)).await {
            Ok(Ok(true)) => return Ok(Some(name.clone())),
            Ok(Ok(false)) => {}
            unanswered if strict => {
                let reason = match unanswered {
                    Ok(Err(error)) => error,
                    _ => format!("no answer within {}s", FORGOTTEN_SLOT_TIMEOUT.as_secs()),
                };
                let (on, unasked) = (named.to_string(), name.clone());
                return Err(DropError::SlotUnknown { on, slot: slot.to_string(), unasked, reason });
            }
            _ => {}
        }
    }
    Ok(None)
}

/// Whether the source `info` has the slot `slot` in its database.
async fn has_slot(info: &ConnInfo, slot: &str) -> Result<bool, String> {
    let client = tls::connect_sql(info).await.map_err(|error| error.to_string())?;
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database())",
            &[&slot],
        )
        .await
        .map_err(|error| describe_sql_error(&error))?;
    Ok(row.get(0))
}

/// Removes the rows of the subscription that used `slot` from ferry's
/// tables on `target`, and its replication origins: `slot`, and those of
/// its copies' sessions (named after it, with a dot). All in one
/// transaction: an origin still in use (a ferry elsewhere running the
/// subscription) leaves everything.
async fn clear_target(target: &str, info: &ConnInfo, slot: &str) -> Result<ClearedTarget, DropError> {
    let mut client = tls::connect_sql(info).await.map_err(|e| DropError::ConnectTarget(Box::new(e)))?;
    let transaction = client.transaction().await.map_err(target_error("starting a transaction"))?;
    let origins: Vec<String> = transaction
        .query(
            "SELECT roname::text FROM pg_replication_origin WHERE roname = $1 OR starts_with(roname, $1 || '.')
             ORDER BY roname",
            &[&slot],
        )
        .await
        .map_err(target_error("looking up replication origins"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    for origin in &origins {
        if let Err(error) = transaction.execute("SELECT pg_replication_origin_drop($1)", &[origin]).await {
            let context = if error.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
                "dropping a replication origin (grant EXECUTE on pg_replication_origin_drop(text))"
            } else {
                "dropping a replication origin"
            };
            return Err(target_error(context)(error));
        }
    }
    let progress = delete_rows_of(&transaction, "ferry.progress", slot).await? > 0;
    let tables = delete_rows_of(&transaction, "ferry.tables", slot).await?;
    transaction.commit().await.map_err(target_error("committing"))?;
    Ok(ClearedTarget { target: target.to_string(), progress, tables, origins })
}

/// Deletes the rows of the subscription that used `slot` from `table`,
/// one of ferry's own on the target, if the target has it (a pipeline
/// that never started made none). Rows are matched by slot, not by name:
/// `a-b` and `a_b` share the slot `ferry_a_b`, and neither can be dropped
/// while the other is configured.
async fn delete_rows_of(
    transaction: &tokio_postgres::Transaction<'_>,
    table: &'static str,
    slot: &str,
) -> Result<u64, DropError> {
    let exists: bool = transaction
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .map_err(target_error("looking up ferry's tables"))?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let names: Vec<String> = transaction
        .query(&format!("SELECT DISTINCT subscription FROM {table}"), &[])
        .await
        .map_err(target_error("reading the subscriptions' rows"))?
        .iter()
        .map(|row| row.get::<_, String>(0))
        .filter(|name| config::slot_name(name) == slot)
        .collect();
    transaction
        .execute(&format!("DELETE FROM {table} WHERE subscription = ANY($1)"), &[&names])
        .await
        .map_err(target_error("deleting the subscription's rows"))
}

fn source_error(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> DropError {
    move |source| DropError::Sql { context, source }
}

fn target_error(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> DropError {
    move |source| DropError::TargetSql { context, source }
}

/// A slot named like ferry's that no configured subscription uses: left
/// by a subscription taken out of the config, it keeps WAL until `ferry
/// drop` removes it. One a reader is using (a ferry with another config)
/// is that reader's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgottenSlot {
    /// The config's name of the source it is on.
    pub source: String,
    pub slot: String,
    /// The WAL it keeps on the source, in bytes.
    pub retained_bytes: i64,
}

/// What the daemon logs and validate warns about it. It may still be a
/// ferry's with another config that is not reading it just now (retrying,
/// redeploying), hence the "unless".
impl std::fmt::Display for ForgottenSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (slot, source) = (&self.slot, &self.source);
        write!(
            f,
            "slot {slot} on source {source} belongs to no configured subscription and keeps WAL; unless a ferry \
             with another config uses it, `ferry drop SUBSCRIPTION --source {source}` removes it"
        )
    }
}

/// How long one source may take to say which slots it has.
const FORGOTTEN_SLOT_TIMEOUT: Duration = Duration::from_secs(10);

/// The forgotten slots on the config's sources, by source name, asked of
/// all sources at once (a source named twice, once); a source that cannot
/// be asked within [`FORGOTTEN_SLOT_TIMEOUT`] is left out.
pub async fn forgotten_slots(config: &Config) -> BTreeMap<String, Vec<ForgottenSlot>> {
    let sources: Vec<(&String, &ConnInfo)> = config.sources.iter().collect();
    let distinct = sources
        .iter()
        .enumerate()
        .filter(|(i, (_, info))| !sources[..*i].iter().any(|(_, earlier)| earlier.same_database(info)))
        .map(|(_, source)| *source);
    let asked = distinct.map(|(name, info)| async move {
        let ask = async {
            let client = tls::connect_sql(info).await.ok()?;
            forgotten_slots_on(config, name, &client).await.ok()
        };
        let slots = tokio::time::timeout(FORGOTTEN_SLOT_TIMEOUT, ask).await.ok().flatten()?;
        Some((name.clone(), slots))
    });
    join_all(asked).await.into_iter().flatten().collect()
}

/// Whether a subscription of `config` uses `slot` on `source` (or on
/// another source of the config that is the same database: say, as two
/// roles).
fn is_configured(config: &Config, source: &str, slot: &str) -> bool {
    config
        .subscriptions
        .iter()
        .any(|s| s.slot == slot && config::same_database(&config.sources, &s.source, source))
}

/// The forgotten slots (see [`ForgottenSlot`]) on the source `source`,
/// asked over `client`.
pub async fn forgotten_slots_on(
    config: &Config,
    source: &str,
    client: &tokio_postgres::Client,
) -> Result<Vec<ForgottenSlot>, tokio_postgres::Error> {
    let rows = client
        .query(
            concat!(
                "SELECT slot_name::text, COALESCE(pg_wal_lsn_diff(",
                current_wal_lsn!(),
                ", restart_lsn), 0)::bigint
                 FROM pg_replication_slots
                 WHERE slot_type = 'logical' AND NOT temporary AND NOT active AND database = current_database()
                   AND slot_name LIKE 'ferry\\_%' ORDER BY 1"
            ),
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| ForgottenSlot { source: source.to_string(), slot: row.get(0), retained_bytes: row.get(1) })
        .filter(|found| !is_configured(config, source, &found.slot))
        .collect())
}

/// How often the sources are asked for forgotten slots.
pub const FORGOTTEN_SLOT_INTERVAL: Duration = Duration::from_secs(60);

/// Asks the sources of the latest config (`config`) for forgotten slots
/// at start, every [`FORGOTTEN_SLOT_INTERVAL`] and after each reload: the
/// log names each one once, and `ferry_forgotten_slot_retained_wal_bytes`
/// shows the WAL it keeps, so that an alert can fire before the source's
/// disk fills. A source that cannot be asked keeps its last figures.
pub async fn watch_forgotten_slots(
    mut config: watch::Receiver<Config>,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let mut ticker = tokio::time::interval(FORGOTTEN_SLOT_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = HashSet::new();
    // By source name: where it was asked, and what it said.
    let mut last: BTreeMap<String, (ConnInfo, Vec<ForgottenSlot>)> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
            changed = config.changed() => if changed.is_err() { return },
        }
        let current = config.borrow_and_update().clone();
        let found = tokio::select! {
            _ = cancel.cancelled() => return,
            found = forgotten_slots(&current) => found,
        };
        // What a source that did not answer said before holds while the
        // source is the same and the slot still forgotten.
        last.retain(|source, (info, _)| current.sources.get(source) == Some(info));
        for (_, slots) in last.values_mut() {
            slots.retain(|slot| !is_configured(&current, &slot.source, &slot.slot));
        }
        last.extend(found.into_iter().map(|(source, slots)| {
            let info = current.sources[&source].clone();
            (source, (info, slots))
        }));
        let forgotten = || last.values().flat_map(|(_, slots)| slots);
        for slot in forgotten() {
            if warned.insert((slot.source.clone(), slot.slot.clone())) {
                tracing::warn!(source = %slot.source, slot = %slot.slot, "{slot}");
            }
        }
        metrics.forgotten_slots(forgotten());
    }
}

/// The config's source or target called `name`, with its name.
fn named<'a>(entries: &'a BTreeMap<String, ConnInfo>, name: &str) -> Option<(&'a str, &'a ConnInfo)> {
    entries.get_key_value(name).map(|(name, info)| (name.as_str(), info))
}

fn pick_source<'a>(config: &'a Config, wanted: Option<&str>) -> Result<(&'a str, &'a ConnInfo), DropError> {
    match wanted {
        Some(name) => named(&config.sources, name).ok_or_else(|| DropError::UnknownSource(name.to_string())),
        None if config.sources.len() == 1 => {
            let (name, info) = config.sources.iter().next().expect("one source");
            Ok((name.as_str(), info))
        }
        None => Err(DropError::WhichSource(config.sources.keys().cloned().collect::<Vec<_>>().join(", "))),
    }
}
