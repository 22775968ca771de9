//! `ferry tail`: the live change stream of a database as JSON lines, for
//! debugging (in the spirit of pg_recvlogical with wal2json).

use std::io::Write;

use serde_json::{Map, Value as Json, json};
use tokio::sync::{mpsc, watch};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::pg::conninfo::{ConnInfo, ConnInfoError};
use crate::pg::error::describe_sql_error;
use crate::pg::names::{NameError, QualifiedName, quote_ident, quote_literal};
use crate::pg::pgoutput::{LogicalMessage, OldTuple, Relation, Tuple, Value};
use crate::pg::replication::{ReplicationClient, ReplicationStream, SlotKind, StartOptions};
use crate::pg::{Lsn, PgError, timestamp, tls};
use crate::source::{self, Change, SourceError, SourceEvent};

/// How long Ctrl-C waits for the source to end the stream.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What to tail.
#[derive(Debug, Clone)]
pub struct TailOptions {
    pub source: ConnInfo,
    /// Tables to publish; ferry creates a publication for them.
    pub tables: Vec<QualifiedName>,
    /// An existing publication to read instead of `tables`.
    pub publication: Option<String>,
    /// A permanent slot to read (created when missing); without it a
    /// temporary slot lives as long as the command.
    pub slot: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("bad --source: {0}")]
    ConnInfo(#[from] ConnInfoError),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{0}")]
    Sql(#[from] tls::SqlConnectError),
    #[error("{context}: {source}")]
    Query { context: String, source: tokio_postgres::Error },
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("publication {0:?} does not exist on the source")]
    NoPublication(String),
    #[error(
        "--slot {0:?} is too long: with --table its publication is named ferry_tail_<slot>, which must fit in 63 bytes (so 52 for the slot)"
    )]
    SlotTooLong(String),
    #[error(
        "--slot {0:?}: names starting with ferry_ are ferry's own (a subscription's slot is ferry_<name>), \
         and reading one would confirm changes its subscription has not applied; give another --slot"
    )]
    FerrySlot(String),
    #[error("slot {slot:?} is in use by another reader (server process {pid}); give another --slot")]
    SlotInUse { slot: String, pid: i32 },
    #[error(
        "publication {publication} could not be dropped and is left on the source (drop it by hand): {reason}"
    )]
    PublicationLeft { publication: String, reason: String },
    #[error("give --table (one or more) or --publication")]
    NothingToTail,
    #[error("cannot write to standard output: {0}")]
    Output(#[from] std::io::Error),
}

fn query_error(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> TailError {
    let context = context.into();
    move |source| TailError::Query { context, source }
}

/// Runs until `cancel` fires or the stream fails, printing one JSON line
/// per change to `out`.
pub async fn run(options: TailOptions, out: impl Write, cancel: CancellationToken) -> Result<(), TailError> {
    if let Some(slot) = options.slot.as_ref().filter(|slot| slot.starts_with("ferry_")) {
        return Err(TailError::FerrySlot(slot.clone()));
    }
    let sql = tls::connect_sql(&options.source).await?;
    let temporary_name = temporary_name(&sql).await?;
    if let Some(slot) = &options.slot {
        refuse_slot_in_use(&sql, slot).await?;
    }
    if options.publication.is_none() {
        drop_stale_publications(&sql).await;
    }
    let (publication, created_publication) = prepare_publication(&sql, &options, &temporary_name).await?;
    // Whatever happens from here on, a publication made for this run goes.
    let result = stream(&sql, &options, &temporary_name, &publication, out, cancel).await;
    if !created_publication {
        return result;
    }
    match (drop_publication(&sql, &options.source, &publication).await, result) {
        (Err(error), Ok(())) => Err(error),
        (Err(error), Err(first)) => {
            tracing::warn!("{error}");
            Err(first)
        }
        (Ok(()), result) => result,
    }
}

/// The name of this run's temporary slot and publication: `ferry_tail_`,
/// the server process id of its session, which no other live session of
/// that server has (a process id of ferry's own could be the same in two
/// containers), and a random part, as a session of a later run may get
/// that process id once this one's was cut, while this run still owns
/// the publication.
async fn temporary_name(sql: &Client) -> Result<String, TailError> {
    let row = sql
        .query_one("SELECT format('ferry_tail_%s_%s', pg_backend_pid(), left(md5(random()::text), 8))", &[])
        .await
        .map_err(query_error("naming the temporary slot"))?;
    Ok(row.get(0))
}

/// Drops the publications of earlier runs that could not drop their own (a
/// killed tail, or one interrupted twice): named as [`temporary_name`]
/// makes them, their session gone, and no slot of that name (the run's
/// temporary slot, still read by a tail whose SQL session was cut) or of
/// their suffix (a `--slot` run's permanent one: `ferry_tail_SLOT`, where
/// SLOT may look alike). What cannot be dropped stays, with a warning.
async fn drop_stale_publications(sql: &Client) {
    let stale = sql
        .query(
            "SELECT p.pubname::text FROM pg_publication p,
                    LATERAL (SELECT substr(p.pubname, length('ferry_tail_') + 1) AS suffix) s
             WHERE p.pubname ~ '^ferry_tail_[0-9]+_[0-9a-f]{8}$'
               AND NOT EXISTS (SELECT 1 FROM pg_stat_activity
                               WHERE pid = split_part(s.suffix, '_', 1)::bigint)
               AND NOT EXISTS (SELECT 1 FROM pg_replication_slots
                               WHERE slot_name IN (p.pubname, s.suffix))",
            &[],
        )
        .await;
    let stale: Vec<String> = match stale {
        Ok(rows) => rows.iter().map(|row| row.get(0)).collect(),
        Err(error) => {
            tracing::warn!("looking for publications earlier runs left: {error}");
            return;
        }
    };
    for publication in stale {
        match sql.batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(&publication))).await {
            Ok(()) => tracing::info!(%publication, "dropped the publication an earlier run left"),
            Err(error) => tracing::warn!(%publication, "the publication an earlier run left stays: {error}"),
        }
    }
}

/// Refuses a permanent slot another reader is using before anything is
/// changed for it (its publication's tables, which that reader reads too).
async fn refuse_slot_in_use(sql: &Client, slot: &str) -> Result<(), TailError> {
    let reader = sql
        .query_opt(
            "SELECT coalesce(active_pid, 0) FROM pg_replication_slots WHERE slot_name = $1 AND active",
            &[&slot],
        )
        .await
        .map_err(query_error("looking up the slot"))?;
    match reader {
        Some(row) => Err(TailError::SlotInUse { slot: slot.to_string(), pid: row.get(0) }),
        None => Ok(()),
    }
}

/// Drops this run's publication; on a new session when the run's own has
/// gone (the source restarted, or an idle connection was cut), as the
/// publication would otherwise stay on the source for good.
async fn drop_publication(sql: &Client, source: &ConnInfo, publication: &str) -> Result<(), TailError> {
    let statement = format!("DROP PUBLICATION IF EXISTS {}", quote_ident(publication));
    if sql.batch_execute(&statement).await.is_ok() {
        return Ok(());
    }
    let left = |reason: String| TailError::PublicationLeft { publication: publication.to_string(), reason };
    let fresh = tls::connect_sql(source).await.map_err(|error| left(error.to_string()))?;
    fresh.batch_execute(&statement).await.map_err(|error| left(describe_sql_error(&error)))
}

/// Creates the slot and prints its changes until `cancel` fires (which may
/// come while the slot is still being made: that waits for every
/// transaction open on the source, however long it stays open).
async fn stream(
    sql: &Client,
    options: &TailOptions,
    temporary_name: &str,
    publication: &str,
    out: impl Write,
    cancel: CancellationToken,
) -> Result<(), TailError> {
    let stream = tokio::select! {
        started = start_stream(sql, options, temporary_name, publication) => started?,
        _ = cancel.cancelled() => return Ok(()),
    };
    let (events_tx, events_rx) = mpsc::channel(1024 / source::CHUNK_EVENTS);
    let (durable_tx, durable_rx) = watch::channel(Lsn::ZERO);
    let reader = tokio::spawn(source::read_stream(
        stream,
        events_tx,
        durable_rx,
        cancel.clone(),
        false,
        source::TableNames::default(),
    ));
    let printed = print_events(events_rx, out, durable_tx).await;
    // The printer only stops early on an output error: stop reading too.
    cancel.cancel();
    let read = source::stopped_reader(reader, STOP_WAIT).await.and_then(Result::ok).unwrap_or(Ok(()));
    printed?;
    read?;
    Ok(())
}

/// Makes (or finds) the slot and starts streaming from it.
async fn start_stream(
    sql: &Client,
    options: &TailOptions,
    temporary_name: &str,
    publication: &str,
) -> Result<ReplicationStream, TailError> {
    let mut replication = ReplicationClient::connect(&options.source).await?;
    let slot = match &options.slot {
        Some(name) => {
            ensure_permanent_slot(sql, &mut replication, name).await?;
            name.clone()
        }
        None => {
            replication.create_slot(temporary_name, SlotKind::Temporary, false).await?;
            temporary_name.to_string()
        }
    };
    let start = StartOptions {
        publications: vec![publication.to_string()],
        protocol_version: None,
        messages: true,
        streaming: true,
    };
    let stream = replication.start(&slot, Lsn::ZERO, &start).await?;
    tracing::info!(%slot, %publication, source = %options.source, "streaming changes; Ctrl-C stops");
    Ok(stream)
}

/// Returns the publication to read and whether it is temporary (ours to drop).
async fn prepare_publication(
    sql: &tokio_postgres::Client,
    options: &TailOptions,
    temporary_name: &str,
) -> Result<(String, bool), TailError> {
    if let Some(name) = &options.publication {
        let exists = sql
            .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[name])
            .await
            .map_err(query_error("looking up the publication"))?;
        return match exists {
            Some(_) => Ok((name.clone(), false)),
            None => Err(TailError::NoPublication(name.clone())),
        };
    }
    if options.tables.is_empty() {
        return Err(TailError::NothingToTail);
    }
    let tables: Vec<String> = options.tables.iter().map(ToString::to_string).collect();
    let tables = tables.join(", ");
    // A permanent slot needs a publication that outlives this run: the
    // server looks publications up as of the WAL it decodes.
    let (name, temporary) = match &options.slot {
        Some(slot) => {
            let name = format!("ferry_tail_{slot}");
            // PostgreSQL would cut a longer name, and the next run would not
            // find the publication under the name it asks for.
            if name.len() > 63 {
                return Err(TailError::SlotTooLong(slot.clone()));
            }
            (name, false)
        }
        None => (temporary_name.to_string(), true),
    };
    // A temporary name is this run's alone: one that exists is another
    // run's, and creating it fails.
    let exists = !temporary
        && sql
            .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
            .await
            .map_err(query_error("looking up the publication"))?
            .is_some();
    let statement = if exists {
        format!("ALTER PUBLICATION {} SET TABLE {tables}", quote_ident(&name))
    } else {
        format!("CREATE PUBLICATION {} FOR TABLE {tables}", quote_ident(&name))
    };
    sql.batch_execute(&statement).await.map_err(query_error(format!("creating publication {name}")))?;
    Ok((name, temporary))
}

async fn ensure_permanent_slot(
    sql: &tokio_postgres::Client,
    replication: &mut ReplicationClient,
    name: &str,
) -> Result<(), TailError> {
    let found = sql
        .query_opt("SELECT plugin FROM pg_replication_slots WHERE slot_name = $1", &[&name])
        .await
        .map_err(query_error("looking up the slot"))?;
    if found.is_none() {
        replication.create_slot(name, SlotKind::Permanent, false).await?;
        tracing::info!(
            slot = name,
            "created permanent slot; drop it with SELECT pg_drop_replication_slot({})",
            quote_literal(name)
        );
    }
    Ok(())
}

/// The next event: the rest of the current chunk first, then the next one.
async fn next_event(
    events: &mut mpsc::Receiver<source::EventChunk>,
    pending: &mut std::vec::IntoIter<SourceEvent>,
) -> Option<SourceEvent> {
    loop {
        if let Some(event) = pending.next() {
            return Some(event);
        }
        *pending = events.recv().await?.into_iter();
    }
}

/// Prints events and reports each printed commit as durable, so the slot
/// only moves past what reached the output.
async fn print_events(
    mut events: mpsc::Receiver<source::EventChunk>,
    mut out: impl Write,
    durable: watch::Sender<Lsn>,
) -> Result<(), TailError> {
    let mut transaction = TransactionContext::default();
    let mut pending = Vec::new().into_iter();
    while let Some(event) = next_event(&mut events, &mut pending).await {
        match event {
            SourceEvent::Begin { xid, commit_lsn, commit_time } => {
                transaction =
                    TransactionContext { xid: Some(xid), lsn: commit_lsn, commit_time: Some(commit_time) };
            }
            SourceEvent::Origin { .. } => {}
            SourceEvent::Change(change) => print_change(&mut out, &transaction, &change)?,
            SourceEvent::Commit { end_lsn, .. } => {
                out.flush()?;
                durable.send_replace(end_lsn);
                transaction = TransactionContext::default();
            }
            // Read without `early`: a streamed transaction comes whole, at its commit.
            SourceEvent::StreamBegin { .. } | SourceEvent::StreamDiscard { .. } => {}
            SourceEvent::StreamCommit { xid, commit_lsn, end_lsn, commit_time, mut changes } => {
                let transaction =
                    TransactionContext { xid: Some(xid), lsn: commit_lsn, commit_time: Some(commit_time) };
                while let Some(change) = changes.next_change()? {
                    print_change(&mut out, &transaction, &change)?;
                }
                out.flush()?;
                durable.send_replace(end_lsn);
            }
            SourceEvent::Message(message) => {
                let line = message_line(&TransactionContext::default(), &message);
                serde_json::to_writer(&mut out, &line).map_err(std::io::Error::from)?;
                out.write_all(b"\n")?;
                out.flush()?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

fn print_change(
    out: &mut impl Write,
    transaction: &TransactionContext,
    change: &Change,
) -> std::io::Result<()> {
    for line in change_lines(transaction, change) {
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// The transaction a change belongs to.
#[derive(Debug, Default, Clone)]
pub struct TransactionContext {
    pub xid: Option<u32>,
    /// The commit LSN (the WAL position of the transaction's commit record).
    pub lsn: Lsn,
    pub commit_time: Option<i64>,
}

/// The JSON lines for one change: one per row change, one per truncated table.
pub fn change_lines(transaction: &TransactionContext, change: &Change) -> Vec<Json> {
    match change {
        Change::Insert { relation, new } => {
            vec![row_line(transaction, "insert", relation, Some(new), None)]
        }
        Change::Update { relation, old, new } => {
            vec![row_line(transaction, "update", relation, Some(new), old.as_ref())]
        }
        Change::Delete { relation, old } => vec![row_line(transaction, "delete", relation, None, Some(old))],
        Change::Truncate { relations, cascade, restart_identity } => relations
            .iter()
            .map(|relation| {
                let mut line = header(transaction, "truncate");
                line.insert("schema".into(), json!(relation.namespace));
                line.insert("table".into(), json!(relation.name));
                line.insert("cascade".into(), json!(cascade));
                line.insert("restart_identity".into(), json!(restart_identity));
                Json::Object(line)
            })
            .collect(),
        Change::Message(message) => vec![message_line(transaction, message)],
    }
}

fn header(transaction: &TransactionContext, op: &str) -> Map<String, Json> {
    let mut line = Map::new();
    line.insert("lsn".into(), json!(transaction.lsn.to_string()));
    line.insert("xid".into(), json!(transaction.xid));
    line.insert("commit_time".into(), json!(transaction.commit_time.map(timestamp::to_rfc3339)));
    line.insert("op".into(), json!(op));
    line
}

fn row_line(
    transaction: &TransactionContext,
    op: &str,
    relation: &Relation,
    new: Option<&Tuple>,
    old: Option<&OldTuple>,
) -> Json {
    let mut line = header(transaction, op);
    line.insert("schema".into(), json!(relation.namespace));
    line.insert("table".into(), json!(relation.name));
    // The key of the row as it was: the old key when the server sent one
    // (the key changed, or a delete), else the new row's.
    let key_source = match (old, new) {
        (Some(OldTuple::Key(t) | OldTuple::Full(t)), _) | (None, Some(t)) => Some(t),
        (None, None) => None,
    };
    if let Some(tuple) = key_source {
        line.insert("key".into(), tuple_object(relation, tuple, true));
    }
    if let Some(tuple) = new {
        line.insert("new".into(), tuple_object(relation, tuple, false));
    }
    match old {
        Some(OldTuple::Key(t)) => {
            line.insert("old".into(), tuple_object(relation, t, true));
        }
        Some(OldTuple::Full(t)) => {
            line.insert("old".into(), tuple_object(relation, t, false));
        }
        None => {}
    }
    Json::Object(line)
}

fn tuple_object(relation: &Relation, tuple: &Tuple, keys_only: bool) -> Json {
    let mut object = Map::new();
    for (column, value) in relation.columns.iter().zip(&tuple.0) {
        if keys_only && !column.is_key {
            continue;
        }
        object.insert(column.name.clone(), value_json(value));
    }
    Json::Object(object)
}

fn value_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        // Never null: the value exists, the server just did not resend it.
        Value::UnchangedToast => json!({ "unchanged_toast": true }),
        Value::Text(bytes) => Json::String(String::from_utf8_lossy(bytes).into_owned()),
        Value::Binary(bytes) => Json::String(format!("\\x{}", hex(bytes))),
    }
}

fn message_line(transaction: &TransactionContext, message: &LogicalMessage) -> Json {
    let mut line = header(transaction, "message");
    line.insert("lsn".into(), json!(message.lsn.to_string()));
    line.insert("transactional".into(), json!(message.transactional));
    line.insert("prefix".into(), json!(message.prefix));
    match std::str::from_utf8(&message.content) {
        Ok(text) => line.insert("content".into(), json!(text)),
        Err(_) => line.insert("content_hex".into(), json!(hex(&message.content))),
    };
    Json::Object(line)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
