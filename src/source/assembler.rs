//! Assembles pgoutput messages into whole transactions in commit order,
//! spooling streamed in-progress transactions to temporary files and, when
//! asked, handing one of them on early, while it is still in progress.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use bytes::Bytes;

use super::{Change, Sink, SourceError, SourceEvent, TableNames};
use crate::pg::Lsn;
use crate::pg::pgoutput::{self, DecodeOptions, Message, Relation};

/// The write and read buffer of a spool.
const SPOOL_BUFFER: usize = 256 * 1024;

/// The spooled part of one streamed, not yet committed transaction.
struct Spool {
    writer: BufWriter<File>,
    len: u64,
    /// Where each (sub-)transaction's first change lies: aborting a
    /// sub-transaction cuts the spool there, since everything after it
    /// belongs to it or to its own children (what PostgreSQL's apply worker
    /// does too).
    first_offsets: Vec<(u32, u64)>,
    /// The xids in `first_offsets`: one lookup per change, however many
    /// sub-transactions (a PL/pgSQL loop with an exception block opens one
    /// per iteration).
    spooled_xids: HashSet<u32>,
    /// The Relation and Type records spooled and where they lie, kept in
    /// memory so that cutting a sub-transaction does not read the spool
    /// back.
    descriptions: Vec<(u64, Bytes)>,
    /// Relations as the stream describes them so far: they apply to its
    /// own changes first, and to everything after it once it commits.
    relations: HashMap<u32, Arc<Relation>>,
    /// The replication origin the transaction was applied by, if any.
    origin: Option<String>,
}

impl Spool {
    fn new() -> io::Result<Spool> {
        Ok(Spool {
            writer: BufWriter::with_capacity(SPOOL_BUFFER, tempfile::tempfile()?),
            len: 0,
            first_offsets: Vec::new(),
            spooled_xids: HashSet::new(),
            descriptions: Vec::new(),
            relations: HashMap::new(),
            origin: None,
        })
    }

    fn append(&mut self, xid: u32, raw: &[u8]) -> io::Result<()> {
        // Most changes belong to the sub-transaction of the one before.
        let same_as_last = self.first_offsets.last().is_some_and(|(last, _)| *last == xid);
        if !same_as_last && self.spooled_xids.insert(xid) {
            self.first_offsets.push((xid, self.len));
        }
        if matches!(raw.first(), Some(b'R' | b'Y')) {
            self.descriptions.push((self.len, Bytes::copy_from_slice(raw)));
        }
        self.writer.write_all(&(raw.len() as u32).to_be_bytes())?;
        self.writer.write_all(raw)?;
        self.len += 4 + raw.len() as u64;
        Ok(())
    }

    /// Cuts the aborted sub-transaction out of the spool. Relation and type
    /// descriptions in the cut-off part are kept (re-appended under the
    /// top-level `xid`) for the changes after the abort to be read with.
    ///
    /// None of the descriptions so far outlives the commit: at any abort the
    /// server forgets what it described to the transaction and describes
    /// again what comes next, and at the commit takes as known only what it
    /// described since (pgoutput's `cleanup_rel_sync_cache`). One from before
    /// the abort may be older than another transaction's description that
    /// came meanwhile (the sub-transaction's lock on the table went with
    /// it, letting an `ALTER TABLE` in).
    fn abort_subtransaction(&mut self, xid: u32, subxid: u32) -> io::Result<()> {
        self.relations.clear();
        // Not a scan for one that had no changes spooled (or was cut out
        // already, with a parent aborted first): rolling back an outer
        // block sends an abort for each of its many committed children.
        if !self.spooled_xids.contains(&subxid) {
            return Ok(());
        }
        let Some(pos) = self.first_offsets.iter().rposition(|(x, _)| *x == subxid) else {
            return Ok(());
        };
        let offset = self.first_offsets[pos].1;
        for (cut, _) in self.first_offsets.drain(pos..) {
            self.spooled_xids.remove(&cut);
        }
        let kept = self.descriptions.partition_point(|(at, _)| *at < offset);
        let descriptions = self.descriptions.split_off(kept);
        self.writer.flush()?;
        let file = self.writer.get_mut();
        file.set_len(offset)?;
        file.seek(SeekFrom::Start(offset))?;
        self.len = offset;
        for (_, description) in descriptions {
            self.append(xid, &description)?;
        }
        Ok(())
    }

    /// The spooled changes of the committed transaction, to be read back
    /// against `relations` (those described before the stream).
    fn into_changes(
        self,
        relations: &HashMap<u32, Arc<Relation>>,
        names: &TableNames,
    ) -> io::Result<StreamedChanges> {
        let mut file = self.writer.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        Ok(StreamedChanges {
            reader: SpoolReader { file: Some(file), reader: None, remaining: self.len },
            relations: relations.clone(),
            streamed: HashMap::new(),
            names: names.clone(),
            origin: self.origin,
        })
    }
}

/// Reads a committed spool back. Its read buffer is made at the first
/// read, not at the commit: committed streamed transactions can wait by the
/// thousand for a slow target (many streamed at once, none handed on
/// early), and a buffer each would add up to gigabytes.
struct SpoolReader {
    file: Option<File>,
    reader: Option<BufReader<File>>,
    remaining: u64,
}

impl SpoolReader {
    fn next_record(&mut self) -> io::Result<Option<Bytes>> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let reader = self.reader.get_or_insert_with(|| {
            BufReader::with_capacity(SPOOL_BUFFER, self.file.take().expect("the spool is read once"))
        });
        let mut len = [0u8; 4];
        reader.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        let mut record = vec![0u8; len];
        reader.read_exact(&mut record)?;
        self.remaining = self.remaining.saturating_sub(4 + len as u64);
        Ok(Some(Bytes::from(record)))
    }
}

/// The changes of a committed streamed transaction, read back from its
/// spool in source order.
pub struct StreamedChanges {
    reader: SpoolReader,
    /// The relations described before the stream.
    relations: HashMap<u32, Arc<Relation>>,
    /// The relations described inside the stream, so far as it is read.
    streamed: HashMap<u32, Arc<Relation>>,
    names: TableNames,
    origin: Option<String>,
}

impl StreamedChanges {
    /// The replication origin the transaction was applied by, if any.
    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }

    /// The next change, or `None` at the end.
    pub fn next_change(&mut self) -> Result<Option<Change>, SourceError> {
        let options = DecodeOptions { in_stream: true, stream_abort_info: false };
        while let Some(record) = self.reader.next_record()? {
            match pgoutput::decode(record, options)? {
                Message::Relation(relation) => {
                    self.streamed.insert(relation.oid, self.names.adopt(relation));
                }
                Message::Type(_) => {}
                other => return resolve(&self.relations, Some(&self.streamed), other).map(Some),
            }
        }
        Ok(None)
    }
}

impl std::fmt::Debug for StreamedChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamedChanges")
            .field("bytes_left", &self.reader.remaining)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// Turns decoded pgoutput messages into [`SourceEvent`]s of committed
/// transactions, in commit order.
///
/// With `early` on, one streamed transaction at a time is also handed on
/// while it is in progress, between [`SourceEvent::StreamBegin`] and its
/// [`SourceEvent::StreamCommit`] or [`SourceEvent::StreamDiscard`], with
/// no other event in between: the consumer can apply it while the source
/// is still decoding the rest. Only a transaction that streams alone is
/// handed on early: once anything else arrives before its commit (another
/// transaction, another stream) or part of it aborts, its early changes
/// are discarded and the spool, which is always written, holds it whole.
pub struct Assembler {
    decoder: pgoutput::Decoder,
    relations: HashMap<u32, Arc<Relation>>,
    names: TableNames,
    /// The xid of the whole (not streamed) transaction being received.
    open_xid: Option<u32>,
    /// The end LSN of the last commit handed on.
    last_commit_end: Lsn,
    streams: HashMap<u32, Spool>,
    /// The top-level xid of the stream block being received.
    stream_block: Option<u32>,
    /// Whether streamed transactions may be handed on early.
    early: bool,
    /// The streamed transaction being handed on early, and whether its
    /// StreamBegin went out yet (it goes with its first change).
    handing_on: Option<(u32, bool)>,
}

impl Assembler {
    /// With `early`, a streamed transaction may be handed on while in
    /// progress (see [`Assembler`]).
    /// Relations are described under the subscription's `names` for them.
    pub fn new(early: bool, names: TableNames) -> Assembler {
        Assembler {
            decoder: pgoutput::Decoder::new(false),
            relations: HashMap::new(),
            names,
            open_xid: None,
            last_commit_end: Lsn::ZERO,
            streams: HashMap::new(),
            stream_block: None,
            early,
            handing_on: None,
        }
    }

    /// True between a Begin and its Commit.
    pub fn in_transaction(&self) -> bool {
        self.open_xid.is_some()
    }

    /// The end LSN of the last transaction handed on.
    pub fn last_commit_end(&self) -> Lsn {
        self.last_commit_end
    }

    /// Takes one pgoutput message and sends what became ready to `out`.
    pub async fn handle(&mut self, raw: Bytes, out: &mut Sink) -> Result<(), SourceError> {
        let message = self.decoder.decode(raw.clone())?;
        match message {
            Message::Begin(begin) => {
                if self.open_xid.is_some() || self.stream_block.is_some() {
                    return Err(SourceError::Sequence(format!(
                        "Begin of transaction {} inside another transaction",
                        begin.xid
                    )));
                }
                self.stop_handing_on(out).await?;
                self.open_xid = Some(begin.xid);
                send(
                    out,
                    SourceEvent::Begin {
                        xid: begin.xid,
                        commit_lsn: begin.final_lsn,
                        commit_time: begin.commit_time,
                    },
                )
                .await
            }
            Message::Commit(commit) => {
                let xid = self
                    .open_xid
                    .take()
                    .ok_or_else(|| SourceError::Sequence("Commit without Begin".into()))?;
                self.last_commit_end = commit.end_lsn;
                send(
                    out,
                    SourceEvent::Commit {
                        xid,
                        commit_lsn: commit.commit_lsn,
                        end_lsn: commit.end_lsn,
                        commit_time: commit.commit_time,
                    },
                )
                .await
            }
            Message::Origin(origin) => match self.stream_block {
                Some(xid) => {
                    // Transactions from elsewhere are not handed on early:
                    // whether they are applied is decided at their commit.
                    if self.handing_on.is_some_and(|(early, _)| early == xid) {
                        self.stop_handing_on(out).await?;
                    }
                    self.spool(xid)?.origin = Some(origin.name);
                    Ok(())
                }
                None => send(out, SourceEvent::Origin { name: origin.name }).await,
            },
            Message::StreamStart(start) => {
                if self.handing_on.is_some_and(|(early, _)| early != start.xid) {
                    self.stop_handing_on(out).await?;
                }
                if start.first_segment {
                    if self.streams.contains_key(&start.xid) {
                        return Err(SourceError::Sequence(format!(
                            "first stream segment of transaction {} again",
                            start.xid
                        )));
                    }
                    if self.early && self.streams.is_empty() && self.handing_on.is_none() {
                        self.handing_on = Some((start.xid, false));
                    }
                    self.streams.insert(start.xid, Spool::new()?);
                }
                self.stream_block = Some(start.xid);
                Ok(())
            }
            Message::StreamStop => {
                self.stream_block = None;
                Ok(())
            }
            Message::StreamAbort(abort) => {
                if self.handing_on.is_some_and(|(early, _)| early == abort.xid) {
                    self.stop_handing_on(out).await?;
                }
                self.stream_abort(abort.xid, abort.subxid)
            }
            Message::StreamCommit(commit) => {
                let mut spool = self.streams.remove(&commit.xid).ok_or_else(|| {
                    SourceError::Sequence(format!(
                        "Stream Commit of transaction {} that never started",
                        commit.xid
                    ))
                })?;
                match self.handing_on {
                    Some((early, _)) if early == commit.xid => self.handing_on = None,
                    Some(_) => self.stop_handing_on(out).await?,
                    None => {}
                }
                let streamed = std::mem::take(&mut spool.relations);
                let changes = spool.into_changes(&self.relations, &self.names)?;
                self.relations.extend(streamed);
                self.last_commit_end = commit.end_lsn;
                send(
                    out,
                    SourceEvent::StreamCommit {
                        xid: commit.xid,
                        commit_lsn: commit.commit_lsn,
                        end_lsn: commit.end_lsn,
                        commit_time: commit.commit_time,
                        changes,
                    },
                )
                .await
            }
            Message::BeginPrepare(_)
            | Message::Prepare(_)
            | Message::CommitPrepared(_)
            | Message::RollbackPrepared(_)
            | Message::StreamPrepare(_) => Err(SourceError::Sequence(
                "two-phase commit messages arrived, but ferry never asks for them".into(),
            )),
            other => self.data_message(other, raw, out).await,
        }
    }

    /// Relation, Type and row messages: spooled inside a stream block (and
    /// handed on when early), otherwise resolved and sent on.
    async fn data_message(
        &mut self,
        message: Message,
        raw: Bytes,
        out: &mut Sink,
    ) -> Result<(), SourceError> {
        if let Some(top) = self.stream_block {
            return self.streamed_message(top, message, raw, out).await;
        }
        match message {
            Message::Relation(relation) => {
                self.relations.insert(relation.oid, self.names.adopt(relation));
                Ok(())
            }
            Message::Type(_) => Ok(()), // values arrive as text; type names are not needed
            Message::Message(m) if !m.transactional => {
                // Nothing may come between an early transaction's events.
                self.stop_handing_on(out).await?;
                send(out, SourceEvent::Message(m)).await
            }
            other => {
                let change = resolve(&self.relations, None, other)?;
                send(out, SourceEvent::Change(change)).await
            }
        }
    }

    async fn streamed_message(
        &mut self,
        top: u32,
        message: Message,
        raw: Bytes,
        out: &mut Sink,
    ) -> Result<(), SourceError> {
        let xid = message_xid(&message).unwrap_or(top);
        self.spool(top)?.append(xid, &raw)?;
        match message {
            Message::Relation(relation) => {
                let relation = self.names.adopt(relation);
                self.spool(top)?.relations.insert(relation.oid, relation);
            }
            Message::Type(_) => {}
            change => {
                let Some((early, begun)) = self.handing_on.filter(|(early, _)| *early == top) else {
                    return Ok(());
                };
                let spool = &self.streams[&top];
                let change = resolve(&self.relations, Some(&spool.relations), change)?;
                if !begun {
                    self.handing_on = Some((early, true));
                    send(out, SourceEvent::StreamBegin { xid: early }).await?;
                }
                send(out, SourceEvent::Change(change)).await?;
            }
        }
        Ok(())
    }

    fn spool(&mut self, top: u32) -> Result<&mut Spool, SourceError> {
        self.streams.get_mut(&top).ok_or_else(|| {
            SourceError::Sequence(format!("stream block of transaction {top} without its first segment"))
        })
    }

    /// The transaction handed on early is no longer: what was handed on of
    /// it is void (its spool keeps it whole).
    async fn stop_handing_on(&mut self, out: &mut Sink) -> Result<(), SourceError> {
        match self.handing_on.take() {
            Some((xid, true)) => send(out, SourceEvent::StreamDiscard { xid }).await,
            _ => Ok(()),
        }
    }

    fn stream_abort(&mut self, xid: u32, subxid: u32) -> Result<(), SourceError> {
        if xid == subxid {
            self.streams.remove(&xid);
        } else if let Some(spool) = self.streams.get_mut(&xid) {
            spool.abort_subtransaction(xid, subxid)?;
        }
        Ok(())
    }
}

async fn send(out: &mut Sink, event: SourceEvent) -> Result<(), SourceError> {
    out.send(event).await
}

/// The xid a streamed message carries (the sub-transaction it belongs to).
fn message_xid(message: &Message) -> Option<u32> {
    match message {
        Message::Relation(m) => m.xid,
        Message::Type(m) => m.xid,
        Message::Insert(m) => m.xid,
        Message::Update(m) => m.xid,
        Message::Delete(m) => m.xid,
        Message::Truncate(m) => m.xid,
        Message::Message(m) => m.xid,
        _ => None,
    }
}

/// Attaches the relation description to a row message.
fn resolve(
    relations: &HashMap<u32, Arc<Relation>>,
    streamed: Option<&HashMap<u32, Arc<Relation>>>,
    message: Message,
) -> Result<Change, SourceError> {
    let lookup = |oid: u32| {
        streamed
            .and_then(|s| s.get(&oid))
            .or_else(|| relations.get(&oid))
            .cloned()
            .ok_or(SourceError::UnknownRelation(oid))
    };
    Ok(match message {
        Message::Insert(m) => Change::Insert { relation: lookup(m.relation)?, new: m.new },
        Message::Update(m) => Change::Update { relation: lookup(m.relation)?, old: m.old, new: m.new },
        Message::Delete(m) => Change::Delete { relation: lookup(m.relation)?, old: m.old },
        Message::Truncate(m) => Change::Truncate {
            relations: m.relations.iter().map(|&oid| lookup(oid)).collect::<Result<_, _>>()?,
            cascade: m.cascade,
            restart_identity: m.restart_identity,
        },
        Message::Message(m) => Change::Message(m),
        other => return Err(SourceError::Sequence(format!("unexpected message {other:?}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(spool: Spool) -> Vec<Vec<u8>> {
        let mut changes = spool.into_changes(&HashMap::new(), &TableNames::default()).unwrap();
        let mut out = Vec::new();
        while let Some(record) = changes.reader.next_record().unwrap() {
            out.push(record.to_vec());
        }
        out
    }

    #[test]
    fn a_committed_spool_holds_no_read_buffer_until_it_is_read() {
        let mut spool = Spool::new().unwrap();
        spool.append(1, b"I one").unwrap();
        let mut changes = spool.into_changes(&HashMap::new(), &TableNames::default()).unwrap();
        assert!(changes.reader.reader.is_none());
        assert_eq!(changes.reader.next_record().unwrap().as_deref(), Some(&b"I one"[..]));
        assert_eq!(changes.reader.reader.as_ref().map(BufReader::capacity), Some(SPOOL_BUFFER));
    }

    #[test]
    fn an_aborted_subtransaction_is_cut_out_and_its_descriptions_kept() {
        let mut spool = Spool::new().unwrap();
        spool.append(1, b"I top").unwrap();
        spool.append(2, b"R described in 2").unwrap();
        spool.append(2, b"I in 2").unwrap();
        spool.append(3, b"I in 3, a child of 2").unwrap();
        spool.append(3, b"Y typed in 3").unwrap();
        spool.abort_subtransaction(1, 2).unwrap();
        spool.append(4, b"I in 4").unwrap();
        // Sub-transaction 3 aborts after the cut: nothing of it is left.
        spool.abort_subtransaction(1, 3).unwrap();
        let kept: Vec<&[u8]> = vec![b"I top", b"R described in 2", b"Y typed in 3", b"I in 4"];
        assert_eq!(records(spool), kept);
    }

    #[test]
    fn no_description_from_before_a_subtransaction_abort_outlives_the_commit() {
        let mut spool = Spool::new().unwrap();
        let relation = Relation {
            xid: Some(2),
            oid: 7,
            namespace: "public".into(),
            name: "x".into(),
            replica_identity: crate::pg::pgoutput::ReplicaIdentity::Default,
            columns: Vec::new(),
        };
        spool.relations.insert(7, Arc::new(relation));
        // Even a sub-transaction that streamed no change of its own.
        spool.abort_subtransaction(1, 3).unwrap();
        assert!(spool.relations.is_empty());
    }

    #[test]
    fn a_subtransaction_seen_again_after_a_cut_starts_where_it_resumes() {
        let mut spool = Spool::new().unwrap();
        spool.append(1, b"I top").unwrap();
        spool.append(2, b"I in 2").unwrap();
        spool.abort_subtransaction(1, 2).unwrap();
        // An xid is not reused within a transaction, but a cut one must
        // not keep its old offset, which now lies past the end.
        spool.append(2, b"I in 2 again").unwrap();
        spool.append(5, b"I in 5").unwrap();
        spool.abort_subtransaction(1, 2).unwrap();
        let kept: Vec<&[u8]> = vec![b"I top"];
        assert_eq!(records(spool), kept);
    }
}
