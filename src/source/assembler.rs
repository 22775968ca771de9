//! Assembles pgoutput messages into whole transactions in commit order,
//! spooling streamed in-progress transactions to temporary files.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use bytes::Bytes;

use super::{Change, Sink, SourceError, SourceEvent};
use crate::fault;
use crate::pg::Lsn;
use crate::pg::pgoutput::{self, DecodeOptions, Message, Relation};

/// The spooled part of one streamed, not yet committed transaction.
struct Spool {
    writer: BufWriter<File>,
    len: u64,
    /// Where each (sub-)transaction's first change lies: aborting a
    /// sub-transaction cuts the spool there, since everything after it
    /// belongs to it or to its own children (what PostgreSQL's apply worker
    /// does too).
    first_offsets: Vec<(u32, u64)>,
}

impl Spool {
    fn new() -> io::Result<Spool> {
        Ok(Spool {
            writer: BufWriter::with_capacity(256 * 1024, tempfile::tempfile()?),
            len: 0,
            first_offsets: Vec::new(),
        })
    }

    fn append(&mut self, xid: u32, raw: &[u8]) -> io::Result<()> {
        if !self.first_offsets.iter().any(|(x, _)| *x == xid) {
            self.first_offsets.push((xid, self.len));
        }
        self.writer.write_all(&(raw.len() as u32).to_be_bytes())?;
        self.writer.write_all(raw)?;
        self.len += 4 + raw.len() as u64;
        Ok(())
    }

    /// Cuts the aborted sub-transaction out of the spool. Relation and type
    /// descriptions in the cut-off part are kept (re-appended under the
    /// top-level `xid`): the server sends a description once per streamed
    /// transaction, and changes after the abort still rely on it.
    fn abort_subtransaction(&mut self, xid: u32, subxid: u32) -> io::Result<()> {
        let Some(pos) = self.first_offsets.iter().position(|(x, _)| *x == subxid) else {
            return Ok(()); // it had no changes streamed
        };
        let offset = self.first_offsets[pos].1;
        self.first_offsets.truncate(pos);
        self.writer.flush()?;
        let descriptions = self.descriptions_from(offset)?;
        let file = self.writer.get_mut();
        file.set_len(offset)?;
        file.seek(SeekFrom::Start(offset))?;
        self.len = offset;
        for description in descriptions {
            self.append(xid, &description)?;
        }
        Ok(())
    }

    /// The Relation and Type records from `offset` to the end.
    fn descriptions_from(&mut self, offset: u64) -> io::Result<Vec<Bytes>> {
        let file = self.writer.get_mut();
        file.seek(SeekFrom::Start(offset))?;
        let mut reader = SpoolReader { reader: BufReader::new(file), remaining: self.len - offset };
        let mut kept = Vec::new();
        while let Some(record) = reader.next_record()? {
            if matches!(record.first(), Some(b'R' | b'Y')) {
                kept.push(record);
            }
        }
        Ok(kept)
    }

    fn into_reader(self) -> io::Result<SpoolReader<File>> {
        let mut file = self.writer.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        Ok(SpoolReader { reader: BufReader::with_capacity(256 * 1024, file), remaining: self.len })
    }
}

struct SpoolReader<R> {
    reader: BufReader<R>,
    remaining: u64,
}

impl<R: Read> SpoolReader<R> {
    fn next_record(&mut self) -> io::Result<Option<Bytes>> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let mut len = [0u8; 4];
        self.reader.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        let mut record = vec![0u8; len];
        self.reader.read_exact(&mut record)?;
        self.remaining = self.remaining.saturating_sub(4 + len as u64);
        Ok(Some(Bytes::from(record)))
    }
}

/// Turns decoded pgoutput messages into [`SourceEvent`]s of committed
/// transactions, in commit order.
pub struct Assembler {
    decoder: pgoutput::Decoder,
    relations: HashMap<u32, Arc<Relation>>,
    /// The xid of the whole (not streamed) transaction being received.
    open_xid: Option<u32>,
    /// The end LSN of the last commit handed on.
    last_commit_end: Lsn,
    streams: HashMap<u32, Spool>,
    /// The top-level xid of the stream block being received.
    stream_block: Option<u32>,
}

impl Default for Assembler {
    fn default() -> Self {
        Assembler::new()
    }
}

impl Assembler {
    pub fn new() -> Assembler {
        Assembler {
            decoder: pgoutput::Decoder::new(false),
            relations: HashMap::new(),
            open_xid: None,
            last_commit_end: Lsn::ZERO,
            streams: HashMap::new(),
            stream_block: None,
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
            Message::Origin(origin) => send(out, SourceEvent::Origin { name: origin.name }).await,
            Message::StreamStart(start) => {
                if start.first_segment {
                    self.streams.insert(start.xid, Spool::new()?);
                }
                self.stream_block = Some(start.xid);
                Ok(())
            }
            Message::StreamStop => {
                self.stream_block = None;
                Ok(())
            }
            Message::StreamAbort(abort) => self.stream_abort(abort.xid, abort.subxid),
            Message::StreamCommit(commit) => {
                let spool = self.streams.remove(&commit.xid).ok_or_else(|| {
                    SourceError::Sequence(format!(
                        "Stream Commit of transaction {} that never started",
                        commit.xid
                    ))
                })?;
                send(
                    out,
                    SourceEvent::Begin {
                        xid: commit.xid,
                        commit_lsn: commit.commit_lsn,
                        commit_time: commit.commit_time,
                    },
                )
                .await?;
                self.replay(spool, out).await?;
                self.last_commit_end = commit.end_lsn;
                send(
                    out,
                    SourceEvent::Commit {
                        xid: commit.xid,
                        commit_lsn: commit.commit_lsn,
                        end_lsn: commit.end_lsn,
                        commit_time: commit.commit_time,
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

    /// Relation, Type and row messages: spooled inside a stream block,
    /// otherwise resolved and sent on.
    async fn data_message(
        &mut self,
        message: Message,
        raw: Bytes,
        out: &mut Sink,
    ) -> Result<(), SourceError> {
        if let Some(top) = self.stream_block {
            let xid = message_xid(&message).unwrap_or(top);
            let spool = self.streams.get_mut(&top).ok_or_else(|| {
                SourceError::Sequence(format!("stream block of transaction {top} without its first segment"))
            })?;
            spool.append(xid, &raw)?;
            return Ok(());
        }
        match message {
            Message::Relation(relation) => {
                self.relations.insert(relation.oid, Arc::new(relation));
                Ok(())
            }
            Message::Type(_) => Ok(()), // values arrive as text; type names are not needed
            Message::Message(m) if !m.transactional => send(out, SourceEvent::Message(m)).await,
            other => {
                let change = resolve(&self.relations, None, other)?;
                send(out, SourceEvent::Change(change)).await
            }
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

    /// Sends the spooled changes of a committed streamed transaction.
    /// Relations described inside the stream apply to it first, and to
    /// everything after it once it has committed (as the server assumes).
    async fn replay(&mut self, spool: Spool, out: &mut Sink) -> Result<(), SourceError> {
        let mut reader = spool.into_reader()?;
        let mut streamed: HashMap<u32, Arc<Relation>> = HashMap::new();
        let options = DecodeOptions { in_stream: true, stream_abort_info: false };
        while let Some(record) = reader.next_record()? {
            match pgoutput::decode(record, options)? {
                Message::Relation(relation) => {
                    streamed.insert(relation.oid, Arc::new(relation));
                }
                Message::Type(_) => {}
                other => {
                    let change = resolve(&self.relations, Some(&streamed), other)?;
                    send(out, SourceEvent::Change(change)).await?;
                    fault::point(fault::IN_STREAMED_TRANSACTION);
                }
            }
        }
        self.relations.extend(streamed);
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
