//! One pipeline's reading side: it turns the pgoutput stream of a slot into
//! whole transactions, in commit order, and keeps the slot moving.
//!
//! Transactions arrive either whole (Begin … Commit) or, when they are
//! large, streamed while still in progress: blocks of several transactions
//! interleave and a block can be aborted, in part (a sub-transaction) or
//! whole. Streamed changes are spooled to a temporary file, read back by
//! the consumer after Stream Commit, so memory does not grow with the size
//! of a transaction; a transaction that streams alone can also be handed
//! on while it arrives (see [`Assembler`]).

mod assembler;
pub mod catalog;

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Interval;
use tokio_util::sync::CancellationToken;

use crate::pg::names::QualifiedName;
use crate::pg::pgoutput::{self, LogicalMessage, OldTuple, Relation, Tuple};
use crate::pg::replication::{ReplicationMessage, ReplicationStream};
use crate::pg::{Lsn, PgError};

pub use assembler::{Assembler, StreamedChanges};

/// One step of a committed transaction, as the rest of ferry sees it.
#[derive(Debug)]
pub enum SourceEvent {
    Begin {
        xid: u32,
        commit_lsn: Lsn,
        commit_time: i64,
    },
    /// The transaction was applied by another replicator (replication origin).
    Origin {
        name: String,
    },
    Change(Change),
    Commit {
        xid: u32,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: i64,
    },
    /// A `pg_logical_emit_message` with `transactional = false`: it stands
    /// alone, outside any transaction.
    Message(LogicalMessage),
    /// A streamed transaction still in progress: its changes follow as they
    /// arrive, until its [`SourceEvent::StreamCommit`] or
    /// [`SourceEvent::StreamDiscard`]; no other transaction's events come
    /// in between.
    StreamBegin {
        xid: u32,
    },
    /// The changes since the StreamBegin of `xid` are void: it aborted, or
    /// it will be applied from its spool at its StreamCommit.
    StreamDiscard {
        xid: u32,
    },
    /// A streamed transaction committed. `changes` holds all of it; when
    /// its changes came early and were not discarded, they are all there
    /// already.
    StreamCommit {
        xid: u32,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: i64,
        changes: StreamedChanges,
    },
}

/// A row change, with the relation as the server last described it.
#[derive(Debug, Clone)]
pub enum Change {
    Insert { relation: Arc<Relation>, new: Tuple },
    Update { relation: Arc<Relation>, old: Option<OldTuple>, new: Tuple },
    Delete { relation: Arc<Relation>, old: OldTuple },
    Truncate { relations: Vec<Arc<Relation>>, cascade: bool, restart_identity: bool },
    Message(LogicalMessage),
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error("cannot decode the replication stream: {0}")]
    Decode(#[from] pgoutput::DecodeError),
    #[error("the server sent a change for relation {0} before describing it")]
    UnknownRelation(u32),
    #[error("the replication stream is out of order: {0}")]
    Sequence(String),
    #[error("cannot spool a streamed transaction to a temporary file: {0}")]
    Spool(#[from] io::Error),
    #[error("the server ended the replication stream")]
    StreamEnded,
    #[error("the consumer of the change stream has stopped")]
    ConsumerGone,
}

/// How often a standby status goes to the server even when nothing asks.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// Events travel to the consumer in chunks of up to this many: one channel
/// operation (and wake-up) per chunk instead of per event. A chunk also
/// goes as soon as the stream has nothing more buffered, so a quiet source
/// waits for nothing.
pub const CHUNK_EVENTS: usize = 256;

/// A source transaction committed less than this long ago means ferry is
/// caught up with its source (live).
const LIVE_LAG: Duration = Duration::from_millis(250);

/// Whether a source transaction that committed at `commit_time` (µs since
/// 2000-01-01, as pgoutput sends it) is recent enough to mean ferry is live
/// (see [`LIVE_LAG`]).
pub fn is_recent(commit_time: i64) -> bool {
    crate::pg::timestamp::now_micros().saturating_sub(commit_time) < LIVE_LAG.as_micros() as i64
}

/// Events in source order, as they travel to the consumer.
pub type EventChunk = Vec<SourceEvent>;

/// A subscription's source tables by oid, under their configured names.
/// The server describes a table under the name it had at each change; one
/// renamed while ferry runs is still the same table (and still in the
/// publication), so its changes go on to where they went before, instead
/// of being taken for changes of a table the subscription does not map.
///
/// Only for a publication ferry manages, which lists exactly those tables:
/// under one that publishes by schema or all tables, a table made since
/// under the old name would be published too, and two tables would feed
/// one target table.
#[derive(Debug, Clone, Default)]
pub struct TableNames {
    subscription: Arc<str>,
    by_oid: Arc<HashMap<u32, QualifiedName>>,
    /// The renamed ones already logged: the server describes a table again
    /// after every change to its catalog entry (an ANALYZE, say).
    warned: Arc<std::sync::Mutex<std::collections::HashSet<u32>>>,
}

impl TableNames {
    pub fn new(subscription: &str, by_oid: HashMap<u32, QualifiedName>) -> TableNames {
        TableNames { subscription: subscription.into(), by_oid: Arc::new(by_oid), warned: Arc::default() }
    }

    /// `relation` under its table's configured name.
    fn adopt(&self, relation: Relation) -> Arc<Relation> {
        let Some(table) = self.by_oid.get(&relation.oid) else { return Arc::new(relation) };
        if table.schema == relation.namespace && table.name == relation.name {
            return Arc::new(relation);
        }
        let renamed = Arc::new(Relation {
            namespace: table.schema.clone(),
            name: table.name.clone(),
            ..relation.clone()
        });
        if !self.warned.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(relation.oid) {
            return renamed;
        }
        let now = QualifiedName::new(relation.namespace, relation.name);
        tracing::warn!(
            subscription = %self.subscription,
            %table,
            "the source table is named {now} now (renamed while ferry runs); its changes go on as before, but a \
             start looks it up by its configured name: rename it back before ferry next starts, or put the new \
             name in `from`, which takes it for a new table (copied again, into an emptied target table)"
        );
        renamed
    }
}

/// How long a stopping reader waits for the consumer to make the last
/// transaction durable before it reports its final position anyway.
const FINAL_FLUSH_WAIT: Duration = Duration::from_secs(30);

/// Waits for a reader told to stop, which ends the stream and waits for
/// the source's answer, at most `grace`: a source that stopped answering
/// without a reset (the kernel still acknowledges, so no TCP timeout fires)
/// never answers, and the reader is dropped with its connection instead,
/// which loses nothing (the slot sends again from what was confirmed).
/// `None` when it was dropped; otherwise how the reader's task ended.
pub async fn stopped_reader(
    mut reader: tokio::task::JoinHandle<Result<(), SourceError>>,
    grace: Duration,
) -> Option<Result<Result<(), SourceError>, tokio::task::JoinError>> {
    match tokio::time::timeout(grace, &mut reader).await {
        Ok(ended) => Some(ended),
        Err(_) => {
            reader.abort();
            None
        }
    }
}

/// Reads a replication stream until `cancel` fires: decodes and assembles
/// transactions into `out` (streamed ones also early, with `early`; see
/// [`Assembler`]; tables under their `names`), and reports `durable` (what
/// the consumer has made durable) as the flush position.
///
/// When the source is idle — no transaction open and everything handed on
/// already durable — the WAL end of keepalives is confirmed too, so the
/// slot moves forward even when nothing it publishes changes.
///
/// On cancellation the transaction in hand is finished first; then `out`
/// is closed, the consumer's last durable position awaited and confirmed,
/// and the stream stopped cleanly.
pub async fn read_stream(
    stream: ReplicationStream,
    out: mpsc::Sender<EventChunk>,
    durable: watch::Receiver<Lsn>,
    cancel: CancellationToken,
    early: bool,
    names: TableNames,
) -> Result<(), SourceError> {
    let mut assembler = Assembler::new(early, names);
    let mut ticker = tokio::time::interval(STATUS_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sink = Sink {
        stream,
        out,
        chunk: Vec::with_capacity(CHUNK_EVENTS),
        ticker,
        durable,
        feedback: Feedback::default(),
    };
    let mut stopping = false;
    loop {
        if stopping && !assembler.in_transaction() {
            break;
        }
        if !sink.stream.has_buffered_message() {
            // About to wait for the server: hand on what is gathered.
            sink.flush().await?;
        }
        let Sink { stream, ticker, durable, feedback, .. } = &mut sink;
        tokio::select! {
            biased;
            _ = cancel.cancelled(), if !stopping => stopping = true,
            // Before the stream, which is always ready while a backlog
            // streams in: status still goes out every STATUS_INTERVAL.
            _ = ticker.tick() => {
                let durable = *durable.borrow_and_update();
                feedback.send(stream, &assembler, durable).await?;
            }
            message = stream.next() => match message?.ok_or(SourceError::StreamEnded)? {
                ReplicationMessage::XLogData { wal_end, data, .. } => {
                    feedback.written = feedback.written.max(wal_end);
                    assembler.handle(data, &mut sink).await?;
                }
                ReplicationMessage::Keepalive { wal_end, reply_requested, .. } => {
                    feedback.written = feedback.written.max(wal_end);
                    if !assembler.in_transaction() {
                        feedback.idle_wal_end = feedback.idle_wal_end.max(wal_end);
                    }
                    if reply_requested {
                        let durable = *durable.borrow();
                        feedback.send(stream, &assembler, durable).await?;
                    }
                }
            },
        }
    }
    sink.flush().await?;
    let Sink { mut stream, out, mut durable, mut feedback, .. } = sink;
    drop(out);
    let last = assembler.last_commit_end();
    let _ = tokio::time::timeout(FINAL_FLUSH_WAIT, durable.wait_for(|d| *d >= last)).await;
    let final_durable = *durable.borrow();
    feedback.send(&mut stream, &assembler, final_durable).await?;
    stream.stop().await?;
    Ok(())
}

/// Where assembled events go: gathered into chunks for the consumer. While
/// the consumer is behind (the channel is full) and the stream is not read,
/// standby status still goes to the server every [`STATUS_INTERVAL`], so
/// that it does not time the connection out (`wal_sender_timeout`).
pub struct Sink {
    stream: ReplicationStream,
    out: mpsc::Sender<EventChunk>,
    chunk: EventChunk,
    ticker: Interval,
    durable: watch::Receiver<Lsn>,
    feedback: Feedback,
}

impl Sink {
    /// Adds an event; a full chunk is handed on.
    pub async fn send(&mut self, event: SourceEvent) -> Result<(), SourceError> {
        self.chunk.push(event);
        if self.chunk.len() >= CHUNK_EVENTS {
            self.flush().await?;
        }
        Ok(())
    }

    /// Hands the gathered events on, waiting for room in the channel.
    pub async fn flush(&mut self) -> Result<(), SourceError> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        loop {
            tokio::select! {
                biased;
                permit = self.out.reserve() => {
                    let permit = permit.map_err(|_| SourceError::ConsumerGone)?;
                    permit.send(std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK_EVENTS)));
                    return Ok(());
                }
                _ = self.ticker.tick() => {
                    // Only what the consumer made durable counts as
                    // flushed; keepalive positions wait for the loop.
                    let durable = *self.durable.borrow_and_update();
                    self.feedback.report(&mut self.stream, false, durable).await?;
                }
            }
        }
    }
}

/// The positions reported in standby status updates.
#[derive(Default)]
struct Feedback {
    written: Lsn,
    /// The latest keepalive WAL end seen outside a transaction.
    idle_wal_end: Lsn,
    /// The highest flush position reported.
    reported: Lsn,
}

impl Feedback {
    /// The flush position: what the consumer made durable, or the idle WAL
    /// end when everything handed on is durable and nothing is open
    /// (`settled`); never below one reported before. PostgreSQL before 17
    /// takes a lower one as it comes and moves the slot's confirmed_flush_lsn
    /// back (an idle WAL end, then the durable end of the transaction before
    /// the next one arrives), and the lag measured from it jumps.
    fn flushed(&mut self, settled: bool, durable: Lsn) -> Lsn {
        let flushed = if settled { durable.max(self.idle_wal_end) } else { durable };
        self.reported = self.reported.max(flushed);
        self.reported
    }

    async fn send(
        &mut self,
        stream: &mut ReplicationStream,
        assembler: &Assembler,
        durable: Lsn,
    ) -> Result<(), SourceError> {
        let settled = !assembler.in_transaction() && durable >= assembler.last_commit_end();
        self.report(stream, settled, durable).await
    }

    /// Sends a standby status update with the flush position of
    /// [`Feedback::flushed`].
    async fn report(
        &mut self,
        stream: &mut ReplicationStream,
        settled: bool,
        durable: Lsn,
    ) -> Result<(), SourceError> {
        let flushed = self.flushed(settled, durable);
        stream.send_status(self.written.max(flushed), flushed, flushed, false).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flush_position_reported_never_goes_back() {
        let mut feedback = Feedback { idle_wal_end: Lsn(200), ..Feedback::default() };
        assert_eq!(feedback.flushed(true, Lsn(100)), Lsn(200), "idle: as far as the WAL end");
        assert_eq!(feedback.flushed(false, Lsn(100)), Lsn(200), "a transaction handed on, not durable yet");
        assert_eq!(feedback.flushed(false, Lsn(300)), Lsn(300));
    }
}
