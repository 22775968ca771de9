//! The `pgoutput` logical replication protocol (versions 1–4), bytes in and
//! typed messages out.
//!
//! Nothing here touches a socket: the replication client hands over the payload
//! of each XLogData frame (exactly one pgoutput message), so the decoder can be
//! pinned down by byte fixtures and property tests, and fuzzed. Column values are
//! `Bytes` slices of the received frame, so decoding a row costs no copy per
//! value; only names (relations, columns, prefixes, GIDs) become `String`s,
//! because they are few, are kept in caches, and must be UTF-8 to be compared
//! with configuration.
//!
//! The input comes from the network and a decoder that panics takes the whole
//! pipeline down with it, so every read is bounds-checked and every failure is a
//! [`DecodeError`]; the lints below hold the non-test code to that.
//!
//! Field order follows PostgreSQL's `src/backend/replication/logical/proto.c`.

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::pg::Lsn;

/// What the decoder cannot learn from a message itself: the wire shape of some
/// messages depends on where they occur and on how replication was started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct DecodeOptions {
    /// Between Stream Start and Stream Stop the server prefixes R, Y, I, U, D,
    /// T and M with the (sub)transaction id, and nowhere else.
    pub in_stream: bool,
    /// Protocol v4 with `streaming 'parallel'` appends the abort LSN and time
    /// to Stream Abort; nothing in the message says whether they are there.
    pub stream_abort_info: bool,
}

/// Decodes one pgoutput message (the payload of one XLogData frame).
///
/// The whole buffer must be consumed: bytes left over mean the options do not
/// match what the server sends, and guessing past that would misread the
/// stream.
pub fn decode(buf: Bytes, opts: DecodeOptions) -> Result<Message, DecodeError> {
    let mut r = Reader { buf, pos: 0, message: "pgoutput" };
    let tag = r.u8("message tag")?;
    let msg = match tag {
        b'B' => {
            r.message = "Begin";
            Message::Begin(Begin {
                final_lsn: r.lsn("final LSN")?,
                commit_time: r.i64("commit timestamp")?,
                xid: r.u32("transaction id")?,
            })
        }
        b'C' => {
            r.message = "Commit";
            Message::Commit(Commit {
                flags: r.u8("flags")?,
                commit_lsn: r.lsn("commit LSN")?,
                end_lsn: r.lsn("end LSN")?,
                commit_time: r.i64("commit timestamp")?,
            })
        }
        b'O' => {
            r.message = "Origin";
            Message::Origin(Origin { lsn: r.lsn("origin LSN")?, name: r.string("origin name")? })
        }
        b'R' => {
            r.message = "Relation";
            let xid = r.xid(opts)?;
            let oid = r.u32("relation oid")?;
            let namespace = r.namespace()?;
            let name = r.string("relation name")?;
            let replica_identity = match r.u8("replica identity")? {
                b'd' => ReplicaIdentity::Default,
                b'n' => ReplicaIdentity::Nothing,
                b'f' => ReplicaIdentity::Full,
                b'i' => ReplicaIdentity::Index,
                other => return Err(DecodeError::UnknownReplicaIdentity(other)),
            };
            let ncols = r.u16("column count")?;
            // Every column takes at least 10 bytes, so a lying count cannot
            // make us reserve more than the frame could hold.
            let mut columns = Vec::with_capacity(usize::from(ncols).min(r.remaining()));
            for _ in 0..ncols {
                columns.push(RelationColumn {
                    is_key: r.u8("column flags")? & 1 != 0,
                    name: r.string("column name")?,
                    type_oid: r.u32("column type oid")?,
                    type_modifier: r.i32("column type modifier")?,
                });
            }
            Message::Relation(Relation { xid, oid, namespace, name, replica_identity, columns })
        }
        b'Y' => {
            r.message = "Type";
            Message::Type(TypeInfo {
                xid: r.xid(opts)?,
                oid: r.u32("type oid")?,
                namespace: r.namespace()?,
                name: r.string("type name")?,
            })
        }
        b'I' => {
            r.message = "Insert";
            let xid = r.xid(opts)?;
            let relation = r.u32("relation oid")?;
            match r.u8("tuple marker")? {
                b'N' => {}
                other => {
                    return Err(DecodeError::BadTupleMarker {
                        message: r.message,
                        marker: other,
                        expected: "'N'",
                    });
                }
            }
            Message::Insert(Insert { xid, relation, new: r.tuple()? })
        }
        b'U' => {
            r.message = "Update";
            let xid = r.xid(opts)?;
            let relation = r.u32("relation oid")?;
            let old = match r.u8("tuple marker")? {
                b'K' => Some(OldTuple::Key(r.tuple()?)),
                b'O' => Some(OldTuple::Full(r.tuple()?)),
                b'N' => None,
                other => {
                    return Err(DecodeError::BadTupleMarker {
                        message: r.message,
                        marker: other,
                        expected: "'K', 'O' or 'N'",
                    });
                }
            };
            if old.is_some() {
                match r.u8("new tuple marker")? {
                    b'N' => {}
                    other => {
                        return Err(DecodeError::BadTupleMarker {
                            message: r.message,
                            marker: other,
                            expected: "'N' after the old tuple",
                        });
                    }
                }
            }
            Message::Update(Update { xid, relation, old, new: r.tuple()? })
        }
        b'D' => {
            r.message = "Delete";
            let xid = r.xid(opts)?;
            let relation = r.u32("relation oid")?;
            let old = match r.u8("tuple marker")? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                other => {
                    return Err(DecodeError::BadTupleMarker {
                        message: r.message,
                        marker: other,
                        expected: "'K' or 'O'",
                    });
                }
            };
            Message::Delete(Delete { xid, relation, old })
        }
        b'T' => {
            r.message = "Truncate";
            let xid = r.xid(opts)?;
            let count = r.length("relation count")?;
            let flags = r.u8("flags")?;
            let mut relations = Vec::with_capacity(count.min(r.remaining() / 4));
            for _ in 0..count {
                relations.push(r.u32("relation oid")?);
            }
            Message::Truncate(Truncate {
                xid,
                cascade: flags & 1 != 0,
                restart_identity: flags & 2 != 0,
                relations,
            })
        }
        b'M' => {
            r.message = "Message";
            let xid = r.xid(opts)?;
            let transactional = r.u8("flags")? & 1 != 0;
            let lsn = r.lsn("message LSN")?;
            let prefix = r.string("prefix")?;
            let len = r.length("content length")?;
            Message::Message(LogicalMessage {
                xid,
                transactional,
                lsn,
                prefix,
                content: r.bytes(len, "content")?,
            })
        }
        b'S' => {
            r.message = "Stream Start";
            Message::StreamStart(StreamStart {
                xid: r.u32("transaction id")?,
                first_segment: r.u8("first segment flag")? == 1,
            })
        }
        b'E' => {
            r.message = "Stream Stop";
            Message::StreamStop
        }
        b'c' => {
            r.message = "Stream Commit";
            Message::StreamCommit(StreamCommit {
                xid: r.u32("transaction id")?,
                flags: r.u8("flags")?,
                commit_lsn: r.lsn("commit LSN")?,
                end_lsn: r.lsn("end LSN")?,
                commit_time: r.i64("commit timestamp")?,
            })
        }
        b'A' => {
            r.message = "Stream Abort";
            let xid = r.u32("transaction id")?;
            let subxid = r.u32("subtransaction id")?;
            let (abort_lsn, abort_time) = if opts.stream_abort_info {
                (Some(r.lsn("abort LSN")?), Some(r.i64("abort timestamp")?))
            } else {
                (None, None)
            };
            Message::StreamAbort(StreamAbort { xid, subxid, abort_lsn, abort_time })
        }
        b'b' => {
            r.message = "Begin Prepare";
            Message::BeginPrepare(PrepareInfo {
                flags: 0,
                prepare_lsn: r.lsn("prepare LSN")?,
                end_lsn: r.lsn("end LSN")?,
                prepare_time: r.i64("prepare timestamp")?,
                xid: r.u32("transaction id")?,
                gid: r.string("gid")?,
            })
        }
        b'P' => {
            r.message = "Prepare";
            Message::Prepare(r.prepare()?)
        }
        b'p' => {
            r.message = "Stream Prepare";
            Message::StreamPrepare(r.prepare()?)
        }
        b'K' => {
            r.message = "Commit Prepared";
            Message::CommitPrepared(CommitPrepared {
                flags: r.u8("flags")?,
                commit_lsn: r.lsn("commit LSN")?,
                end_lsn: r.lsn("end LSN")?,
                commit_time: r.i64("commit timestamp")?,
                xid: r.u32("transaction id")?,
                gid: r.string("gid")?,
            })
        }
        b'r' => {
            r.message = "Rollback Prepared";
            Message::RollbackPrepared(RollbackPrepared {
                flags: r.u8("flags")?,
                prepare_end_lsn: r.lsn("prepare end LSN")?,
                rollback_end_lsn: r.lsn("rollback end LSN")?,
                prepare_time: r.i64("prepare timestamp")?,
                rollback_time: r.i64("rollback timestamp")?,
                xid: r.u32("transaction id")?,
                gid: r.string("gid")?,
            })
        }
        other => return Err(DecodeError::UnknownMessage(other)),
    };
    r.finish()?;
    Ok(msg)
}

/// Keeps track of stream blocks, because whether a change carries an xid
/// prefix depends on the messages before it and getting it wrong misreads
/// every field after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoder {
    stream_abort_info: bool,
    streaming: Option<u32>,
}

impl Decoder {
    /// `stream_abort_info` must be true exactly when replication was started
    /// with protocol version 4 and `streaming 'parallel'`.
    pub fn new(stream_abort_info: bool) -> Self {
        Decoder { stream_abort_info, streaming: None }
    }

    /// Decodes the next message of the stream. On error the state is left as
    /// it was; the stream cannot be trusted past a bad message anyway.
    pub fn decode(&mut self, buf: Bytes) -> Result<Message, DecodeError> {
        let msg = decode(buf, self.options())?;
        match (&msg, self.streaming) {
            (Message::StreamStart(start), Some(open)) => {
                return Err(DecodeError::NestedStreamStart { open, xid: start.xid });
            }
            (Message::StreamStart(start), None) => self.streaming = Some(start.xid),
            (Message::StreamStop, None) => return Err(DecodeError::StreamStopOutsideStream),
            (Message::StreamStop, Some(_)) => self.streaming = None,
            _ => {}
        }
        Ok(msg)
    }

    /// The options the next message will be decoded with.
    pub fn options(&self) -> DecodeOptions {
        DecodeOptions { in_stream: self.streaming.is_some(), stream_abort_info: self.stream_abort_info }
    }

    /// The top-level transaction of the open stream block, if any.
    pub fn streaming_xid(&self) -> Option<u32> {
        self.streaming
    }
}

/// One pgoutput message, named after the protocol documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(TypeInfo),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    Message(LogicalMessage),
    StreamStart(StreamStart),
    StreamStop,
    StreamCommit(StreamCommit),
    StreamAbort(StreamAbort),
    BeginPrepare(PrepareInfo),
    Prepare(PrepareInfo),
    CommitPrepared(CommitPrepared),
    RollbackPrepared(RollbackPrepared),
    StreamPrepare(PrepareInfo),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the commit record; the transaction's identity in the WAL.
    pub final_lsn: Lsn,
    /// Microseconds since 2000-01-01 00:00 UTC, PostgreSQL's epoch.
    pub commit_time: i64,
    pub xid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Unused by PostgreSQL so far (always 0); kept so nothing is lost.
    pub flags: u8,
    pub commit_lsn: Lsn,
    /// The resume point: everything up to here is in this transaction.
    pub end_lsn: Lsn,
    pub commit_time: i64,
}

/// Sent before a transaction's changes when it was itself replicated into this
/// database (by ferry or anyone else); the key to loop prevention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub lsn: Lsn,
    pub name: String,
}

/// The column layout every later tuple of this relation is read against,
/// until the next Relation message for the same oid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub xid: Option<u32>,
    pub oid: u32,
    /// The server sends an empty name for `pg_catalog`; it is decoded as
    /// `"pg_catalog"` so callers always see a qualified name.
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<RelationColumn>,
}

impl Relation {
    /// Whether `other` describes the table the same way, whichever
    /// transaction sent it: inside a streamed transaction the message
    /// carries its xid, outside it none.
    pub fn describes_as(&self, other: &Relation) -> bool {
        Relation { xid: other.xid, ..self.clone() } == *other
    }
}

/// Decides what old values Update and Delete carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// Primary key columns (`'d'`).
    Default,
    /// No old values at all (`'n'`).
    Nothing,
    /// The whole old row (`'f'`).
    Full,
    /// The columns of a chosen unique index (`'i'`).
    Index,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity (flag bit 1), i.e. present in old keys.
    pub is_key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// Sent for non-built-in column types so the receiver can name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    pub xid: Option<u32>,
    pub oid: u32,
    /// Empty on the wire for `pg_catalog`, decoded as `"pg_catalog"`.
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    pub xid: Option<u32>,
    pub relation: u32,
    pub new: Tuple,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub xid: Option<u32>,
    pub relation: u32,
    /// Present only when the key changed (`Key`) or the replica identity is
    /// FULL (`Full`); otherwise the key is found in `new`.
    pub old: Option<OldTuple>,
    pub new: Tuple,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub xid: Option<u32>,
    pub relation: u32,
    pub old: OldTuple,
}

/// The old row of an Update or Delete, as far as the replica identity says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// Only the replica identity columns are meaningful; the others are null
    /// (`'K'`).
    Key(Tuple),
    /// Every column, for REPLICA IDENTITY FULL (`'O'`).
    Full(Tuple),
}

impl OldTuple {
    pub fn tuple(&self) -> &Tuple {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    pub xid: Option<u32>,
    pub cascade: bool,
    pub restart_identity: bool,
    pub relations: Vec<u32>,
}

/// A `pg_logical_emit_message` record (`messages 'true'`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    pub xid: Option<u32>,
    /// Non-transactional messages arrive at once, outside any transaction.
    pub transactional: bool,
    pub lsn: Lsn,
    pub prefix: String,
    pub content: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStart {
    pub xid: u32,
    /// The first block of this transaction: its state starts here.
    pub first_segment: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCommit {
    pub xid: u32,
    pub flags: u8,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_time: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAbort {
    pub xid: u32,
    /// Equal to `xid` when the whole transaction aborted; otherwise only this
    /// subtransaction's changes are discarded.
    pub subxid: u32,
    /// Present only with [`DecodeOptions::stream_abort_info`] (v4, parallel).
    pub abort_lsn: Option<Lsn>,
    pub abort_time: Option<i64>,
}

/// Begin Prepare, Prepare and Stream Prepare share their fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareInfo {
    /// Prepare and Stream Prepare carry a flags byte (always 0 so far);
    /// Begin Prepare has none, decodes it as 0 and does not write it.
    pub flags: u8,
    pub prepare_lsn: Lsn,
    /// End of the prepared transaction in the WAL.
    pub end_lsn: Lsn,
    pub prepare_time: i64,
    pub xid: u32,
    pub gid: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPrepared {
    pub flags: u8,
    pub commit_lsn: Lsn,
    /// End of the COMMIT PREPARED record; the resume point.
    pub end_lsn: Lsn,
    pub commit_time: i64,
    pub xid: u32,
    pub gid: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackPrepared {
    pub flags: u8,
    /// Lets a receiver that never saw the prepare (it was before its start
    /// point) tell so and skip the rollback.
    pub prepare_end_lsn: Lsn,
    pub rollback_end_lsn: Lsn,
    pub prepare_time: i64,
    pub rollback_time: i64,
    pub xid: u32,
    pub gid: String,
}

/// Column values in the order of the relation's latest Relation message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tuple(pub Vec<Value>);

/// One column of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    /// A TOASTed value the change did not touch: the target must keep what it
    /// has, never write NULL over it.
    UnchangedToast,
    /// The type's text output, as sent (`'t'`).
    Text(Bytes),
    /// The type's binary send format (`'b'`, with `binary 'true'`).
    Binary(Bytes),
}

/// Everything that can be wrong with a pgoutput message. Each names the
/// message and field, so the operator can tell a truncated frame from a
/// protocol-version mismatch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "pgoutput {message} message ended before its {field}: the frame is truncated, \
         or the server speaks a different protocol version or streaming mode than ferry asked for"
    )]
    UnexpectedEof { message: &'static str, field: &'static str },
    #[error(
        "unknown pgoutput message tag {}: the server may speak a newer protocol than \
         the proto_version ferry requested",
        ShowByte(*.0)
    )]
    UnknownMessage(u8),
    #[error("unknown tuple column kind {}: expected 'n', 'u', 't' or 'b'", ShowByte(*.0))]
    UnknownTupleKind(u8),
    #[error("{message} message has tuple marker {}, expected {expected}", ShowByte(*.marker))]
    BadTupleMarker { message: &'static str, marker: u8, expected: &'static str },
    #[error("unknown replica identity {} in Relation message: expected 'd', 'n', 'f' or 'i'", ShowByte(*.0))]
    UnknownReplicaIdentity(u8),
    #[error(
        "{field} in pgoutput {message} message is not valid UTF-8: \
         connect with client_encoding=UTF8"
    )]
    InvalidUtf8 { message: &'static str, field: &'static str },
    #[error("{field} in pgoutput {message} message is not NUL-terminated: the frame is truncated")]
    MissingNul { message: &'static str, field: &'static str },
    #[error("{field} in pgoutput {message} message is negative ({len})")]
    NegativeLength { message: &'static str, field: &'static str, len: i32 },
    #[error(
        "{count} unexpected bytes after a pgoutput {message} message: the decoder's options \
         (stream block, v4 parallel abort info) do not match what the server sends"
    )]
    TrailingBytes { message: &'static str, count: usize },
    #[error("Stream Start for transaction {xid} while the stream block of transaction {open} is still open")]
    NestedStreamStart { open: u32, xid: u32 },
    #[error("Stream Stop without an open stream block")]
    StreamStopOutsideStream,
}

/// Shows a tag byte as `'x' (0x78)` when printable, else as hex, since tags
/// are letters but garbage is not.
struct ShowByte(u8);

impl fmt::Display for ShowByte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}' ({:#04x})", char::from(self.0), self.0)
        } else {
            write!(f, "{:#04x}", self.0)
        }
    }
}

/// A cursor over one message; every read checks the bounds, so no input can
/// make it panic.
struct Reader {
    buf: Bytes,
    pos: usize,
    /// Which message is being read, for error messages.
    message: &'static str,
}

impl Reader {
    fn eof(&self, field: &'static str) -> DecodeError {
        DecodeError::UnexpectedEof { message: self.message, field }
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// End of the next `n` bytes, if they are there.
    fn end(&self, n: usize, field: &'static str) -> Result<usize, DecodeError> {
        self.pos.checked_add(n).filter(|&end| end <= self.buf.len()).ok_or_else(|| self.eof(field))
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let end = self.end(N, field)?;
        let bytes = self
            .buf
            .get(self.pos..end)
            .and_then(|s| <[u8; N]>::try_from(s).ok())
            .ok_or_else(|| self.eof(field))?;
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array(field)?))
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    fn lsn(&mut self, field: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.array(field)?)))
    }

    /// An Int32 count or length, which PostgreSQL never sends negative.
    fn length(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let len = self.i32(field)?;
        usize::try_from(len).map_err(|_| DecodeError::NegativeLength { message: self.message, field, len })
    }

    /// The next `n` bytes as a slice of the received frame, without copying.
    fn bytes(&mut self, n: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        let end = self.end(n, field)?;
        // In bounds: `end` is checked against the length above.
        let out = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(out)
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let missing_nul = || DecodeError::MissingNul { message: self.message, field };
        let rest = self.buf.get(self.pos..).ok_or_else(missing_nul)?;
        let len = rest.iter().position(|&b| b == 0).ok_or_else(missing_nul)?;
        let text = rest.get(..len).ok_or_else(missing_nul)?;
        let text = std::str::from_utf8(text)
            .map_err(|_| DecodeError::InvalidUtf8 { message: self.message, field })?;
        let text = text.to_owned();
        self.pos = self.end(len, field)?;
        self.pos = self.end(1, field)?;
        Ok(text)
    }

    /// Namespaces are sent empty for `pg_catalog` to save bytes; PostgreSQL's
    /// own reader puts the name back, and so do we.
    fn namespace(&mut self) -> Result<String, DecodeError> {
        let name = self.string("namespace")?;
        Ok(if name.is_empty() { PG_CATALOG.to_owned() } else { name })
    }

    fn xid(&mut self, opts: DecodeOptions) -> Result<Option<u32>, DecodeError> {
        if opts.in_stream { Ok(Some(self.u32("transaction id")?)) } else { Ok(None) }
    }

    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let ncols = self.u16("tuple column count")?;
        // Each column takes at least its kind byte; a lying count cannot make
        // us reserve more than the frame holds.
        let mut values = Vec::with_capacity(usize::from(ncols).min(self.remaining()));
        for _ in 0..ncols {
            let value = match self.u8("tuple column kind")? {
                b'n' => Value::Null,
                b'u' => Value::UnchangedToast,
                b't' => {
                    let len = self.length("text column length")?;
                    Value::Text(self.bytes(len, "text column value")?)
                }
                b'b' => {
                    let len = self.length("binary column length")?;
                    Value::Binary(self.bytes(len, "binary column value")?)
                }
                other => return Err(DecodeError::UnknownTupleKind(other)),
            };
            values.push(value);
        }
        Ok(Tuple(values))
    }

    /// Prepare and Stream Prepare.
    fn prepare(&mut self) -> Result<PrepareInfo, DecodeError> {
        Ok(PrepareInfo {
            flags: self.u8("flags")?,
            prepare_lsn: self.lsn("prepare LSN")?,
            end_lsn: self.lsn("end LSN")?,
            prepare_time: self.i64("prepare timestamp")?,
            xid: self.u32("transaction id")?,
            gid: self.string("gid")?,
        })
    }

    fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes { message: self.message, count }),
        }
    }
}

const PG_CATALOG: &str = "pg_catalog";

impl Message {
    /// Writes the message as the server would, so tests, fixtures and the
    /// fuzz target can produce wire bytes from values.
    ///
    /// The wire shape follows `opts`, as the server's does: with `in_stream`
    /// an xid prefix is written (0 when the message has none), without it a
    /// message's xid is dropped; likewise Stream Abort's v4 fields. So
    /// `decode(encode(m, o), o) == m` for every `m` that `decode` can return
    /// under `o`. What the wire cannot carry is cut rather than panicked on:
    /// strings end at an interior NUL, and counts and lengths beyond their
    /// field's range keep only the first elements that fit.
    pub fn encode(&self, opts: DecodeOptions, out: &mut BytesMut) {
        match self {
            Message::Begin(m) => {
                out.put_u8(b'B');
                out.put_u64(m.final_lsn.0);
                out.put_i64(m.commit_time);
                out.put_u32(m.xid);
            }
            Message::Commit(m) => {
                out.put_u8(b'C');
                out.put_u8(m.flags);
                out.put_u64(m.commit_lsn.0);
                out.put_u64(m.end_lsn.0);
                out.put_i64(m.commit_time);
            }
            Message::Origin(m) => {
                out.put_u8(b'O');
                out.put_u64(m.lsn.0);
                put_string(out, &m.name);
            }
            Message::Relation(m) => {
                out.put_u8(b'R');
                put_xid(out, opts, m.xid);
                out.put_u32(m.oid);
                put_namespace(out, &m.namespace);
                put_string(out, &m.name);
                out.put_u8(match m.replica_identity {
                    ReplicaIdentity::Default => b'd',
                    ReplicaIdentity::Nothing => b'n',
                    ReplicaIdentity::Full => b'f',
                    ReplicaIdentity::Index => b'i',
                });
                let ncols = u16::try_from(m.columns.len()).unwrap_or(u16::MAX);
                out.put_u16(ncols);
                for column in m.columns.iter().take(usize::from(ncols)) {
                    out.put_u8(u8::from(column.is_key));
                    put_string(out, &column.name);
                    out.put_u32(column.type_oid);
                    out.put_i32(column.type_modifier);
                }
            }
            Message::Type(m) => {
                out.put_u8(b'Y');
                put_xid(out, opts, m.xid);
                out.put_u32(m.oid);
                put_namespace(out, &m.namespace);
                put_string(out, &m.name);
            }
            Message::Insert(m) => {
                out.put_u8(b'I');
                put_xid(out, opts, m.xid);
                out.put_u32(m.relation);
                out.put_u8(b'N');
                put_tuple(out, &m.new);
            }
            Message::Update(m) => {
                out.put_u8(b'U');
                put_xid(out, opts, m.xid);
                out.put_u32(m.relation);
                if let Some(old) = &m.old {
                    put_old_tuple(out, old);
                }
                out.put_u8(b'N');
                put_tuple(out, &m.new);
            }
            Message::Delete(m) => {
                out.put_u8(b'D');
                put_xid(out, opts, m.xid);
                out.put_u32(m.relation);
                put_old_tuple(out, &m.old);
            }
            Message::Truncate(m) => {
                out.put_u8(b'T');
                put_xid(out, opts, m.xid);
                let count = i32::try_from(m.relations.len()).unwrap_or(i32::MAX);
                out.put_i32(count);
                out.put_u8(u8::from(m.cascade) | (u8::from(m.restart_identity) << 1));
                for oid in m.relations.iter().take(usize::try_from(count).unwrap_or(0)) {
                    out.put_u32(*oid);
                }
            }
            Message::Message(m) => {
                out.put_u8(b'M');
                put_xid(out, opts, m.xid);
                out.put_u8(u8::from(m.transactional));
                out.put_u64(m.lsn.0);
                put_string(out, &m.prefix);
                put_counted(out, &m.content);
            }
            Message::StreamStart(m) => {
                out.put_u8(b'S');
                out.put_u32(m.xid);
                out.put_u8(u8::from(m.first_segment));
            }
            Message::StreamStop => out.put_u8(b'E'),
            Message::StreamCommit(m) => {
                out.put_u8(b'c');
                out.put_u32(m.xid);
                out.put_u8(m.flags);
                out.put_u64(m.commit_lsn.0);
                out.put_u64(m.end_lsn.0);
                out.put_i64(m.commit_time);
            }
            Message::StreamAbort(m) => {
                out.put_u8(b'A');
                out.put_u32(m.xid);
                out.put_u32(m.subxid);
                if opts.stream_abort_info {
                    out.put_u64(m.abort_lsn.unwrap_or_default().0);
                    out.put_i64(m.abort_time.unwrap_or_default());
                }
            }
            Message::BeginPrepare(m) => {
                out.put_u8(b'b');
                out.put_u64(m.prepare_lsn.0);
                out.put_u64(m.end_lsn.0);
                out.put_i64(m.prepare_time);
                out.put_u32(m.xid);
                put_string(out, &m.gid);
            }
            Message::Prepare(m) => put_prepare(out, b'P', m),
            Message::StreamPrepare(m) => put_prepare(out, b'p', m),
            Message::CommitPrepared(m) => {
                out.put_u8(b'K');
                out.put_u8(m.flags);
                out.put_u64(m.commit_lsn.0);
                out.put_u64(m.end_lsn.0);
                out.put_i64(m.commit_time);
                out.put_u32(m.xid);
                put_string(out, &m.gid);
            }
            Message::RollbackPrepared(m) => {
                out.put_u8(b'r');
                out.put_u8(m.flags);
                out.put_u64(m.prepare_end_lsn.0);
                out.put_u64(m.rollback_end_lsn.0);
                out.put_i64(m.prepare_time);
                out.put_i64(m.rollback_time);
                out.put_u32(m.xid);
                put_string(out, &m.gid);
            }
        }
    }
}

fn put_xid(out: &mut BytesMut, opts: DecodeOptions, xid: Option<u32>) {
    if opts.in_stream {
        out.put_u32(xid.unwrap_or(0));
    }
}

fn put_string(out: &mut BytesMut, s: &str) {
    let bytes = s.as_bytes().split(|&b| b == 0).next().unwrap_or_default();
    out.put_slice(bytes);
    out.put_u8(0);
}

fn put_namespace(out: &mut BytesMut, namespace: &str) {
    put_string(out, if namespace == PG_CATALOG { "" } else { namespace });
}

fn put_counted(out: &mut BytesMut, bytes: &[u8]) {
    let len = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
    let kept = usize::try_from(len).unwrap_or(0);
    out.put_i32(len);
    out.put_slice(bytes.get(..kept).unwrap_or(bytes));
}

fn put_tuple(out: &mut BytesMut, tuple: &Tuple) {
    let ncols = u16::try_from(tuple.0.len()).unwrap_or(u16::MAX);
    out.put_u16(ncols);
    for value in tuple.0.iter().take(usize::from(ncols)) {
        match value {
            Value::Null => out.put_u8(b'n'),
            Value::UnchangedToast => out.put_u8(b'u'),
            Value::Text(bytes) => {
                out.put_u8(b't');
                put_counted(out, bytes);
            }
            Value::Binary(bytes) => {
                out.put_u8(b'b');
                put_counted(out, bytes);
            }
        }
    }
}

fn put_old_tuple(out: &mut BytesMut, old: &OldTuple) {
    match old {
        OldTuple::Key(tuple) => {
            out.put_u8(b'K');
            put_tuple(out, tuple);
        }
        OldTuple::Full(tuple) => {
            out.put_u8(b'O');
            put_tuple(out, tuple);
        }
    }
}

fn put_prepare(out: &mut BytesMut, tag: u8, m: &PrepareInfo) {
    out.put_u8(tag);
    out.put_u8(m.flags);
    out.put_u64(m.prepare_lsn.0);
    out.put_u64(m.end_lsn.0);
    out.put_i64(m.prepare_time);
    out.put_u32(m.xid);
    put_string(out, &m.gid);
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PLAIN: DecodeOptions = DecodeOptions { in_stream: false, stream_abort_info: false };
    const STREAM: DecodeOptions = DecodeOptions { in_stream: true, stream_abort_info: false };
    const PARALLEL: DecodeOptions = DecodeOptions { in_stream: false, stream_abort_info: true };

    fn frame(parts: &[&[u8]]) -> Bytes {
        Bytes::from(parts.concat())
    }

    fn encode(msg: &Message, opts: DecodeOptions) -> Bytes {
        let mut out = BytesMut::new();
        msg.encode(opts, &mut out);
        out.freeze()
    }

    /// The fixture decodes to `expected`, `expected` encodes to exactly the
    /// fixture, and no shorter or longer frame decodes at all.
    fn check(opts: DecodeOptions, wire: Bytes, expected: Message) {
        assert_eq!(decode(wire.clone(), opts), Ok(expected.clone()));
        assert_eq!(encode(&expected, opts), wire, "encode is not the inverse");
        for len in 0..wire.len() {
            assert!(decode(wire.slice(..len), opts).is_err(), "prefix of {len} bytes decoded: {wire:?}");
        }
        let longer = frame(&[&wire, b"\0"]);
        assert!(matches!(decode(longer, opts), Err(DecodeError::TrailingBytes { count: 1, .. })));
    }

    const LSN: u64 = 0x16_B374_D848;
    const TS: i64 = 774_000_000_123_456;

    fn text(s: &str) -> Value {
        Value::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn begin() {
        let wire = frame(&[b"B", &LSN.to_be_bytes(), &TS.to_be_bytes(), &731u32.to_be_bytes()]);
        let msg = Message::Begin(Begin { final_lsn: Lsn(LSN), commit_time: TS, xid: 731 });
        check(PLAIN, wire, msg);
    }

    #[test]
    fn commit() {
        let wire = frame(&[b"C", &[0], &LSN.to_be_bytes(), &(LSN + 8).to_be_bytes(), &TS.to_be_bytes()]);
        let msg = Message::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(LSN),
            end_lsn: Lsn(LSN + 8),
            commit_time: TS,
        });
        check(PLAIN, wire, msg);
    }

    #[test]
    fn origin() {
        let wire = frame(&[b"O", &LSN.to_be_bytes(), b"ferry_orders\0"]);
        let msg = Message::Origin(Origin { lsn: Lsn(LSN), name: "ferry_orders".into() });
        check(PLAIN, wire, msg);
    }

    fn orders_relation(xid: Option<u32>) -> Relation {
        Relation {
            xid,
            oid: 16384,
            namespace: "public".into(),
            name: "orders".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                RelationColumn { is_key: true, name: "id".into(), type_oid: 20, type_modifier: -1 },
                RelationColumn { is_key: false, name: "note".into(), type_oid: 1043, type_modifier: 68 },
            ],
        }
    }

    #[test]
    fn a_description_in_a_stream_is_the_same_as_one_outside() {
        assert!(orders_relation(Some(7)).describes_as(&orders_relation(None)));
        let mut renamed = orders_relation(None);
        renamed.columns[1].name = "remark".into();
        assert!(!orders_relation(Some(7)).describes_as(&renamed));
    }

    fn orders_relation_body() -> Bytes {
        frame(&[
            &16384u32.to_be_bytes(),
            b"public\0orders\0",
            b"d",
            &2u16.to_be_bytes(),
            &[1],
            b"id\0",
            &20u32.to_be_bytes(),
            &(-1i32).to_be_bytes(),
            &[0],
            b"note\0",
            &1043u32.to_be_bytes(),
            &68i32.to_be_bytes(),
        ])
    }

    #[test]
    fn relation() {
        let wire = frame(&[b"R", &orders_relation_body()]);
        check(PLAIN, wire, Message::Relation(orders_relation(None)));
    }

    #[test]
    fn relation_in_stream_has_xid() {
        let wire = frame(&[b"R", &900u32.to_be_bytes(), &orders_relation_body()]);
        check(STREAM, wire, Message::Relation(orders_relation(Some(900))));
    }

    #[test]
    fn relation_replica_identities() {
        for (byte, identity) in [
            (b'd', ReplicaIdentity::Default),
            (b'n', ReplicaIdentity::Nothing),
            (b'f', ReplicaIdentity::Full),
            (b'i', ReplicaIdentity::Index),
        ] {
            let wire = frame(&[b"R", &7u32.to_be_bytes(), b"s\0t\0", &[byte], &[0, 0]]);
            let msg = Message::Relation(Relation {
                xid: None,
                oid: 7,
                namespace: "s".into(),
                name: "t".into(),
                replica_identity: identity,
                columns: vec![],
            });
            check(PLAIN, wire, msg);
        }
    }

    #[test]
    fn column_flags_other_than_key_bit_are_ignored() {
        let wire = frame(&[
            b"R",
            &7u32.to_be_bytes(),
            b"s\0t\0d",
            &1u16.to_be_bytes(),
            &[0xFE],
            b"c\0",
            &25u32.to_be_bytes(),
            &(-1i32).to_be_bytes(),
        ]);
        let Ok(Message::Relation(rel)) = decode(wire, PLAIN) else {
            panic!("not a relation");
        };
        assert!(!rel.columns[0].is_key);
    }

    #[test]
    fn type_message_with_pg_catalog_sent_as_empty_namespace() {
        let wire = frame(&[b"Y", &16500u32.to_be_bytes(), b"\0mood\0"]);
        let msg = Message::Type(TypeInfo {
            xid: None,
            oid: 16500,
            namespace: "pg_catalog".into(),
            name: "mood".into(),
        });
        check(PLAIN, wire, msg);
    }

    #[test]
    fn type_message_in_stream() {
        let wire = frame(&[b"Y", &5u32.to_be_bytes(), &16500u32.to_be_bytes(), b"app\0mood\0"]);
        let msg = Message::Type(TypeInfo {
            xid: Some(5),
            oid: 16500,
            namespace: "app".into(),
            name: "mood".into(),
        });
        check(STREAM, wire, msg);
    }

    /// One column of each kind: null, unchanged TOAST, text, binary.
    fn every_kind_tuple() -> (Bytes, Tuple) {
        let wire = frame(&[
            &4u16.to_be_bytes(),
            b"n",
            b"u",
            b"t",
            &2i32.to_be_bytes(),
            b"42",
            b"b",
            &4i32.to_be_bytes(),
            &[0, 0, 0, 42],
        ]);
        let tuple = Tuple(vec![
            Value::Null,
            Value::UnchangedToast,
            text("42"),
            Value::Binary(Bytes::from_static(&[0, 0, 0, 42])),
        ]);
        (wire, tuple)
    }

    #[test]
    fn insert_with_every_tuple_kind() {
        let (tuple_wire, tuple) = every_kind_tuple();
        let wire = frame(&[b"I", &16384u32.to_be_bytes(), b"N", &tuple_wire]);
        let msg = Message::Insert(Insert { xid: None, relation: 16384, new: tuple });
        check(PLAIN, wire, msg);
    }

    #[test]
    fn insert_in_stream() {
        let (tuple_wire, tuple) = every_kind_tuple();
        let wire = frame(&[b"I", &901u32.to_be_bytes(), &16384u32.to_be_bytes(), b"N", &tuple_wire]);
        let msg = Message::Insert(Insert { xid: Some(901), relation: 16384, new: tuple });
        check(STREAM, wire, msg);
    }

    #[test]
    fn empty_values_and_empty_tuples() {
        let wire = frame(&[
            b"I",
            &1u32.to_be_bytes(),
            b"N",
            &2u16.to_be_bytes(),
            b"t",
            &0i32.to_be_bytes(),
            b"b",
            &0i32.to_be_bytes(),
        ]);
        let msg = Message::Insert(Insert {
            xid: None,
            relation: 1,
            new: Tuple(vec![Value::Text(Bytes::new()), Value::Binary(Bytes::new())]),
        });
        check(PLAIN, wire, msg);
        let wire = frame(&[b"I", &1u32.to_be_bytes(), b"N", &0u16.to_be_bytes()]);
        let msg = Message::Insert(Insert { xid: None, relation: 1, new: Tuple(vec![]) });
        check(PLAIN, wire, msg);
    }

    fn one_text(s: &str) -> (Bytes, Tuple) {
        let len = i32::try_from(s.len()).unwrap();
        let wire = frame(&[&1u16.to_be_bytes(), b"t", &len.to_be_bytes(), s.as_bytes()]);
        (wire, Tuple(vec![text(s)]))
    }

    #[test]
    fn update_without_old_tuple() {
        let (new_wire, new) = one_text("new");
        let wire = frame(&[b"U", &16384u32.to_be_bytes(), b"N", &new_wire]);
        let msg = Message::Update(Update { xid: None, relation: 16384, old: None, new });
        check(PLAIN, wire, msg);
    }

    #[test]
    fn update_with_old_key() {
        let (old_wire, old) = one_text("1");
        let (new_wire, new) = one_text("2");
        let wire = frame(&[b"U", &16384u32.to_be_bytes(), b"K", &old_wire, b"N", &new_wire]);
        let msg = Message::Update(Update { xid: None, relation: 16384, old: Some(OldTuple::Key(old)), new });
        check(PLAIN, wire, msg);
    }

    #[test]
    fn update_with_full_old_row_in_stream() {
        let (old_wire, old) = one_text("before");
        let (new_wire, new) = one_text("after");
        let wire =
            frame(&[b"U", &902u32.to_be_bytes(), &16384u32.to_be_bytes(), b"O", &old_wire, b"N", &new_wire]);
        let msg =
            Message::Update(Update { xid: Some(902), relation: 16384, old: Some(OldTuple::Full(old)), new });
        check(STREAM, wire, msg);
    }

    #[test]
    fn delete_with_key_and_with_full_row() {
        let (old_wire, old) = one_text("1");
        let wire = frame(&[b"D", &16384u32.to_be_bytes(), b"K", &old_wire]);
        let msg = Message::Delete(Delete { xid: None, relation: 16384, old: OldTuple::Key(old.clone()) });
        check(PLAIN, wire, msg);

        let wire = frame(&[b"D", &903u32.to_be_bytes(), &16384u32.to_be_bytes(), b"O", &old_wire]);
        let msg = Message::Delete(Delete { xid: Some(903), relation: 16384, old: OldTuple::Full(old) });
        check(STREAM, wire, msg);
    }

    #[test]
    fn truncate() {
        let wire =
            frame(&[b"T", &2i32.to_be_bytes(), &[3], &16384u32.to_be_bytes(), &16390u32.to_be_bytes()]);
        let msg = Message::Truncate(Truncate {
            xid: None,
            cascade: true,
            restart_identity: true,
            relations: vec![16384, 16390],
        });
        check(PLAIN, wire, msg);

        let wire = frame(&[b"T", &904u32.to_be_bytes(), &1i32.to_be_bytes(), &[2], &16384u32.to_be_bytes()]);
        let msg = Message::Truncate(Truncate {
            xid: Some(904),
            cascade: false,
            restart_identity: true,
            relations: vec![16384],
        });
        check(STREAM, wire, msg);
    }

    #[test]
    fn logical_messages() {
        let wire = frame(&[b"M", &[0], &LSN.to_be_bytes(), b"ferry\0", &5i32.to_be_bytes(), b"hello"]);
        let msg = Message::Message(LogicalMessage {
            xid: None,
            transactional: false,
            lsn: Lsn(LSN),
            prefix: "ferry".into(),
            content: Bytes::from_static(b"hello"),
        });
        check(PLAIN, wire, msg);

        let wire =
            frame(&[b"M", &905u32.to_be_bytes(), &[1], &LSN.to_be_bytes(), b"ferry\0", &0i32.to_be_bytes()]);
        let msg = Message::Message(LogicalMessage {
            xid: Some(905),
            transactional: true,
            lsn: Lsn(LSN),
            prefix: "ferry".into(),
            content: Bytes::new(),
        });
        check(STREAM, wire, msg);
    }

    #[test]
    fn stream_start_and_stop() {
        let wire = frame(&[b"S", &906u32.to_be_bytes(), &[1]]);
        let msg = Message::StreamStart(StreamStart { xid: 906, first_segment: true });
        check(PLAIN, wire, msg);
        let wire = frame(&[b"S", &906u32.to_be_bytes(), &[0]]);
        let msg = Message::StreamStart(StreamStart { xid: 906, first_segment: false });
        check(PLAIN, wire, msg);
        check(STREAM, frame(&[b"E"]), Message::StreamStop);
    }

    #[test]
    fn stream_commit() {
        let wire = frame(&[
            b"c",
            &906u32.to_be_bytes(),
            &[0],
            &LSN.to_be_bytes(),
            &(LSN + 8).to_be_bytes(),
            &TS.to_be_bytes(),
        ]);
        let msg = Message::StreamCommit(StreamCommit {
            xid: 906,
            flags: 0,
            commit_lsn: Lsn(LSN),
            end_lsn: Lsn(LSN + 8),
            commit_time: TS,
        });
        check(PLAIN, wire, msg);
    }

    #[test]
    fn stream_abort_without_v4_info() {
        let wire = frame(&[b"A", &906u32.to_be_bytes(), &907u32.to_be_bytes()]);
        let msg =
            Message::StreamAbort(StreamAbort { xid: 906, subxid: 907, abort_lsn: None, abort_time: None });
        check(PLAIN, wire, msg);
    }

    #[test]
    fn stream_abort_with_v4_parallel_info() {
        let wire = frame(&[
            b"A",
            &906u32.to_be_bytes(),
            &906u32.to_be_bytes(),
            &LSN.to_be_bytes(),
            &TS.to_be_bytes(),
        ]);
        let msg = Message::StreamAbort(StreamAbort {
            xid: 906,
            subxid: 906,
            abort_lsn: Some(Lsn(LSN)),
            abort_time: Some(TS),
        });
        check(PARALLEL, wire.clone(), msg);
        // Decoding with the wrong option is an error, not a silent misread.
        assert_eq!(
            decode(wire, PLAIN),
            Err(DecodeError::TrailingBytes { message: "Stream Abort", count: 16 })
        );
    }

    fn prepare_body() -> Bytes {
        frame(&[
            &LSN.to_be_bytes(),
            &(LSN + 64).to_be_bytes(),
            &TS.to_be_bytes(),
            &908u32.to_be_bytes(),
            b"tx-1\0",
        ])
    }

    fn prepare_info() -> PrepareInfo {
        PrepareInfo {
            flags: 0,
            prepare_lsn: Lsn(LSN),
            end_lsn: Lsn(LSN + 64),
            prepare_time: TS,
            xid: 908,
            gid: "tx-1".into(),
        }
    }

    #[test]
    fn begin_prepare_has_no_flags() {
        let wire = frame(&[b"b", &prepare_body()]);
        check(PLAIN, wire, Message::BeginPrepare(prepare_info()));
    }

    #[test]
    fn prepare_and_stream_prepare() {
        let wire = frame(&[b"P", &[0], &prepare_body()]);
        check(PLAIN, wire, Message::Prepare(prepare_info()));
        let wire = frame(&[b"p", &[0], &prepare_body()]);
        check(PLAIN, wire, Message::StreamPrepare(prepare_info()));
    }

    #[test]
    fn commit_prepared() {
        let wire = frame(&[
            b"K",
            &[0],
            &LSN.to_be_bytes(),
            &(LSN + 8).to_be_bytes(),
            &TS.to_be_bytes(),
            &908u32.to_be_bytes(),
            b"tx-1\0",
        ]);
        let msg = Message::CommitPrepared(CommitPrepared {
            flags: 0,
            commit_lsn: Lsn(LSN),
            end_lsn: Lsn(LSN + 8),
            commit_time: TS,
            xid: 908,
            gid: "tx-1".into(),
        });
        check(PLAIN, wire, msg);
    }

    #[test]
    fn rollback_prepared() {
        let wire = frame(&[
            b"r",
            &[0],
            &(LSN + 64).to_be_bytes(),
            &(LSN + 128).to_be_bytes(),
            &TS.to_be_bytes(),
            &(TS + 1).to_be_bytes(),
            &908u32.to_be_bytes(),
            b"tx-1\0",
        ]);
        let msg = Message::RollbackPrepared(RollbackPrepared {
            flags: 0,
            prepare_end_lsn: Lsn(LSN + 64),
            rollback_end_lsn: Lsn(LSN + 128),
            prepare_time: TS,
            rollback_time: TS + 1,
            xid: 908,
            gid: "tx-1".into(),
        });
        check(PLAIN, wire, msg);
    }

    #[test]
    fn values_share_the_received_buffer() {
        let (tuple_wire, _) = every_kind_tuple();
        let wire = frame(&[b"I", &1u32.to_be_bytes(), b"N", &tuple_wire]);
        let range = wire.as_ptr_range();
        let Ok(Message::Insert(insert)) = decode(wire.clone(), PLAIN) else {
            panic!("not an insert");
        };
        let Value::Text(value) = &insert.new.0[2] else {
            panic!("not text");
        };
        assert!(range.contains(&value.as_ptr()), "text value was copied");
    }

    #[test]
    fn empty_frame_and_unknown_tags_are_errors() {
        assert!(matches!(decode(Bytes::new(), PLAIN), Err(DecodeError::UnexpectedEof { .. })));
        for tag in [b'Z', b'X', 0, 0xFF, b'w', b'k'] {
            assert_eq!(decode(frame(&[&[tag], &[0; 32]]), PLAIN), Err(DecodeError::UnknownMessage(tag)));
        }
        let shown = DecodeError::UnknownMessage(b'Z').to_string();
        assert!(shown.contains("'Z' (0x5a)"), "{shown}");
    }

    #[test]
    fn unknown_tuple_kind_is_an_error() {
        let wire = frame(&[b"I", &1u32.to_be_bytes(), b"N", &1u16.to_be_bytes(), b"x"]);
        assert_eq!(decode(wire, PLAIN), Err(DecodeError::UnknownTupleKind(b'x')));
    }

    #[test]
    fn bad_tuple_markers_are_errors() {
        let tuple = frame(&[&0u16.to_be_bytes()]);
        let cases: [(&[u8], u8); 4] = [(b"IK", b'K'), (b"UX", b'X'), (b"DN", b'N'), (b"IO", b'O')];
        for (head, marker) in cases {
            let wire = frame(&[&head[..1], &1u32.to_be_bytes(), &head[1..], &tuple]);
            assert!(
                matches!(decode(wire, PLAIN), Err(DecodeError::BadTupleMarker { marker: m, .. }) if m == marker),
                "{head:?}"
            );
        }
        // An old tuple must be followed by 'N'.
        let wire = frame(&[b"U", &1u32.to_be_bytes(), b"K", &tuple, b"K", &tuple]);
        assert!(matches!(decode(wire, PLAIN), Err(DecodeError::BadTupleMarker { marker: b'K', .. })));
    }

    #[test]
    fn unknown_replica_identity_is_an_error() {
        let wire = frame(&[b"R", &7u32.to_be_bytes(), b"s\0t\0x", &[0, 0]]);
        assert_eq!(decode(wire, PLAIN), Err(DecodeError::UnknownReplicaIdentity(b'x')));
    }

    #[test]
    fn names_must_be_utf8_and_terminated() {
        let wire = frame(&[b"O", &LSN.to_be_bytes(), b"caf\xE9\0"]);
        assert_eq!(
            decode(wire, PLAIN),
            Err(DecodeError::InvalidUtf8 { message: "Origin", field: "origin name" })
        );
        let wire = frame(&[b"O", &LSN.to_be_bytes(), b"cafe"]);
        assert_eq!(
            decode(wire, PLAIN),
            Err(DecodeError::MissingNul { message: "Origin", field: "origin name" })
        );
    }

    #[test]
    fn negative_lengths_are_errors() {
        let wire =
            frame(&[b"I", &1u32.to_be_bytes(), b"N", &1u16.to_be_bytes(), b"t", &(-1i32).to_be_bytes()]);
        assert!(matches!(decode(wire, PLAIN), Err(DecodeError::NegativeLength { len: -1, .. })));
        let wire = frame(&[b"T", &i32::MIN.to_be_bytes(), &[0]]);
        assert!(matches!(decode(wire, PLAIN), Err(DecodeError::NegativeLength { .. })));
    }

    #[test]
    fn lying_counts_fail_without_reserving_memory() {
        let wire = frame(&[b"T", &i32::MAX.to_be_bytes(), &[0]]);
        assert!(matches!(decode(wire, PLAIN), Err(DecodeError::UnexpectedEof { .. })));
        let wire = frame(&[b"I", &1u32.to_be_bytes(), b"N", &u16::MAX.to_be_bytes()]);
        assert!(matches!(decode(wire, PLAIN), Err(DecodeError::UnexpectedEof { .. })));
        let wire = frame(&[b"M", &[0], &LSN.to_be_bytes(), b"p\0", &i32::MAX.to_be_bytes()]);
        assert!(matches!(decode(wire, PLAIN), Err(DecodeError::UnexpectedEof { .. })));
    }

    #[test]
    fn decoder_reads_xid_prefix_only_inside_stream_blocks() {
        let mut decoder = Decoder::new(false);
        let (tuple_wire, tuple) = one_text("x");
        let plain_insert = frame(&[b"I", &1u32.to_be_bytes(), b"N", &tuple_wire]);
        let streamed_insert = frame(&[b"I", &910u32.to_be_bytes(), &1u32.to_be_bytes(), b"N", &tuple_wire]);

        assert!(matches!(
            decoder.decode(plain_insert.clone()),
            Ok(Message::Insert(Insert { xid: None, .. }))
        ));
        decoder.decode(frame(&[b"S", &910u32.to_be_bytes(), &[1]])).unwrap();
        assert_eq!(decoder.streaming_xid(), Some(910));
        assert_eq!(
            decoder.decode(streamed_insert),
            Ok(Message::Insert(Insert { xid: Some(910), relation: 1, new: tuple }))
        );
        assert_eq!(decoder.decode(frame(&[b"E"])), Ok(Message::StreamStop));
        assert_eq!(decoder.streaming_xid(), None);
        assert!(matches!(decoder.decode(plain_insert), Ok(Message::Insert(Insert { xid: None, .. }))));
    }

    #[test]
    fn decoder_rejects_unbalanced_stream_blocks() {
        let mut decoder = Decoder::new(false);
        assert_eq!(decoder.decode(frame(&[b"E"])), Err(DecodeError::StreamStopOutsideStream));
        decoder.decode(frame(&[b"S", &1u32.to_be_bytes(), &[1]])).unwrap();
        assert_eq!(
            decoder.decode(frame(&[b"S", &2u32.to_be_bytes(), &[1]])),
            Err(DecodeError::NestedStreamStart { open: 1, xid: 2 })
        );
        assert_eq!(decoder.streaming_xid(), Some(1));
    }

    #[test]
    fn decoder_passes_stream_abort_info_on() {
        let mut decoder = Decoder::new(true);
        let wire =
            frame(&[b"A", &1u32.to_be_bytes(), &2u32.to_be_bytes(), &LSN.to_be_bytes(), &TS.to_be_bytes()]);
        assert!(matches!(
            decoder.decode(wire),
            Ok(Message::StreamAbort(StreamAbort { abort_lsn: Some(_), abort_time: Some(_), .. }))
        ));
    }

    // ---- properties ----

    fn arb_string() -> impl Strategy<Value = String> {
        "[^\\x00]{0,12}"
    }

    fn arb_namespace() -> impl Strategy<Value = String> {
        // Never empty: the empty namespace is pg_catalog on the wire.
        "[^\\x00]{1,12}"
    }

    fn arb_bytes() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(Bytes::from)
    }

    fn arb_lsn() -> impl Strategy<Value = Lsn> {
        any::<u64>().prop_map(Lsn)
    }

    fn arb_xid(opts: DecodeOptions) -> BoxedStrategy<Option<u32>> {
        if opts.in_stream { any::<u32>().prop_map(Some).boxed() } else { Just(None).boxed() }
    }

    fn arb_tuple() -> impl Strategy<Value = Tuple> {
        let value = prop_oneof![
            Just(Value::Null),
            Just(Value::UnchangedToast),
            arb_bytes().prop_map(Value::Text),
            arb_bytes().prop_map(Value::Binary),
        ];
        proptest::collection::vec(value, 0..6).prop_map(Tuple)
    }

    fn arb_old_tuple() -> impl Strategy<Value = OldTuple> {
        prop_oneof![arb_tuple().prop_map(OldTuple::Key), arb_tuple().prop_map(OldTuple::Full),]
    }

    fn arb_prepare(flags: BoxedStrategy<u8>) -> impl Strategy<Value = PrepareInfo> {
        (flags, arb_lsn(), arb_lsn(), any::<i64>(), any::<u32>(), arb_string()).prop_map(
            |(flags, prepare_lsn, end_lsn, prepare_time, xid, gid)| PrepareInfo {
                flags,
                prepare_lsn,
                end_lsn,
                prepare_time,
                xid,
                gid,
            },
        )
    }

    /// Every message `decode` can produce under `opts`.
    fn arb_message(opts: DecodeOptions) -> BoxedStrategy<Message> {
        let xid = || arb_xid(opts);
        let identity = prop_oneof![
            Just(ReplicaIdentity::Default),
            Just(ReplicaIdentity::Nothing),
            Just(ReplicaIdentity::Full),
            Just(ReplicaIdentity::Index),
        ];
        let column = (any::<bool>(), arb_string(), any::<u32>(), any::<i32>()).prop_map(
            |(is_key, name, type_oid, type_modifier)| RelationColumn {
                is_key,
                name,
                type_oid,
                type_modifier,
            },
        );
        let abort_info = if opts.stream_abort_info {
            (arb_lsn(), any::<i64>()).prop_map(|(l, t)| (Some(l), Some(t))).boxed()
        } else {
            Just((None, None)).boxed()
        };
        prop_oneof![
            (arb_lsn(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, commit_time, xid)| {
                Message::Begin(Begin { final_lsn, commit_time, xid })
            }),
            (any::<u8>(), arb_lsn(), arb_lsn(), any::<i64>()).prop_map(
                |(flags, commit_lsn, end_lsn, commit_time)| Message::Commit(Commit {
                    flags,
                    commit_lsn,
                    end_lsn,
                    commit_time,
                })
            ),
            (arb_lsn(), arb_string()).prop_map(|(lsn, name)| Message::Origin(Origin { lsn, name })),
            (
                xid(),
                any::<u32>(),
                arb_namespace(),
                arb_string(),
                identity,
                proptest::collection::vec(column, 0..5)
            )
                .prop_map(|(xid, oid, namespace, name, replica_identity, columns)| {
                    Message::Relation(Relation { xid, oid, namespace, name, replica_identity, columns })
                }),
            (xid(), any::<u32>(), arb_namespace(), arb_string()).prop_map(|(xid, oid, namespace, name)| {
                Message::Type(TypeInfo { xid, oid, namespace, name })
            }),
            (xid(), any::<u32>(), arb_tuple()).prop_map(|(xid, relation, new)| Message::Insert(Insert {
                xid,
                relation,
                new
            })),
            (xid(), any::<u32>(), proptest::option::of(arb_old_tuple()), arb_tuple())
                .prop_map(|(xid, relation, old, new)| Message::Update(Update { xid, relation, old, new })),
            (xid(), any::<u32>(), arb_old_tuple()).prop_map(|(xid, relation, old)| Message::Delete(Delete {
                xid,
                relation,
                old
            })),
            (xid(), any::<bool>(), any::<bool>(), proptest::collection::vec(any::<u32>(), 0..5)).prop_map(
                |(xid, cascade, restart_identity, relations)| {
                    Message::Truncate(Truncate { xid, cascade, restart_identity, relations })
                }
            ),
            (xid(), any::<bool>(), arb_lsn(), arb_string(), arb_bytes()).prop_map(
                |(xid, transactional, lsn, prefix, content)| Message::Message(LogicalMessage {
                    xid,
                    transactional,
                    lsn,
                    prefix,
                    content,
                })
            ),
            (any::<u32>(), any::<bool>()).prop_map(|(xid, first_segment)| {
                Message::StreamStart(StreamStart { xid, first_segment })
            }),
            Just(Message::StreamStop),
            (any::<u32>(), any::<u8>(), arb_lsn(), arb_lsn(), any::<i64>()).prop_map(
                |(xid, flags, commit_lsn, end_lsn, commit_time)| {
                    Message::StreamCommit(StreamCommit { xid, flags, commit_lsn, end_lsn, commit_time })
                }
            ),
            (any::<u32>(), any::<u32>(), abort_info).prop_map(|(xid, subxid, (abort_lsn, abort_time))| {
                Message::StreamAbort(StreamAbort { xid, subxid, abort_lsn, abort_time })
            }),
            arb_prepare(Just(0).boxed()).prop_map(Message::BeginPrepare),
            arb_prepare(any::<u8>().boxed()).prop_map(Message::Prepare),
            arb_prepare(any::<u8>().boxed()).prop_map(Message::StreamPrepare),
            (any::<u8>(), arb_lsn(), arb_lsn(), any::<i64>(), any::<u32>(), arb_string()).prop_map(
                |(flags, commit_lsn, end_lsn, commit_time, xid, gid)| {
                    Message::CommitPrepared(CommitPrepared {
                        flags,
                        commit_lsn,
                        end_lsn,
                        commit_time,
                        xid,
                        gid,
                    })
                }
            ),
            (any::<u8>(), arb_lsn(), arb_lsn(), any::<i64>(), any::<i64>(), any::<u32>(), arb_string())
                .prop_map(
                    |(flags, prepare_end_lsn, rollback_end_lsn, prepare_time, rollback_time, xid, gid)| {
                        Message::RollbackPrepared(RollbackPrepared {
                            flags,
                            prepare_end_lsn,
                            rollback_end_lsn,
                            prepare_time,
                            rollback_time,
                            xid,
                            gid,
                        })
                    }
                ),
        ]
        .boxed()
    }

    fn arb_options() -> impl Strategy<Value = DecodeOptions> {
        (any::<bool>(), any::<bool>())
            .prop_map(|(in_stream, stream_abort_info)| DecodeOptions { in_stream, stream_abort_info })
    }

    fn arb_options_and_message() -> impl Strategy<Value = (DecodeOptions, Message)> {
        arb_options().prop_flat_map(|opts| (Just(opts), arb_message(opts)))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn decode_never_panics_on_arbitrary_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..96),
            opts in arb_options(),
        ) {
            let _ = decode(Bytes::from(bytes), opts);
        }

        /// Arbitrary bytes rarely start with a valid tag; these always do.
        #[test]
        fn decode_never_panics_after_a_valid_tag(
            tag in proptest::sample::select(b"BCORYIUDTMSEcAbPpKr".to_vec()),
            body in proptest::collection::vec(any::<u8>(), 0..96),
            opts in arb_options(),
        ) {
            let _ = decode(frame(&[&[tag], &body]), opts);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn encode_then_decode_round_trips((opts, msg) in arb_options_and_message()) {
            let wire = encode(&msg, opts);
            prop_assert_eq!(decode(wire, opts), Ok(msg));
        }

        #[test]
        fn truncated_or_extended_frames_are_errors((opts, msg) in arb_options_and_message()) {
            let wire = encode(&msg, opts);
            for len in 0..wire.len() {
                prop_assert!(decode(wire.slice(..len), opts).is_err());
            }
            let longer = frame(&[&wire, b"x"]);
            let is_trailing = matches!(decode(longer, opts), Err(DecodeError::TrailingBytes { .. }));
            prop_assert!(is_trailing);
        }
    }
}
