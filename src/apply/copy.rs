//! Runs of inserts into one table go to the target with COPY: one request
//! for thousands of rows instead of one statement each.

use std::pin::Pin;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::SinkExt;
use tokio_postgres::{Client, CopyInSink, Statement};

use super::param::TextParam;
use super::{ApplyError, RowRef, target_error};
use crate::pg::names::{QualifiedName, quote_ident};

/// Below this many rows a run is sent as pipelined INSERTs: COPY costs a
/// round trip of its own, which a short run does not repay.
pub const COPY_AFTER_ROWS: usize = 64;

/// How much COPY data is gathered before it goes on the wire. A run whose
/// rows held back add up to this much goes to COPY too, however few they
/// are: rows of megabytes are not held back by the dozen.
const CHUNK_BYTES: usize = 1 << 20;

/// Consecutive inserts into one relation, not yet on the target.
pub struct InsertRun {
    pub oid: u32,
    pub insert: Statement,
    target: Arc<QualifiedName>,
    columns: Vec<String>,
    /// Rows held back while the run is short.
    pub held: Vec<(RowRef, Vec<TextParam>)>,
    /// The bytes of their values.
    held_bytes: usize,
    copy: Option<CopyStream>,
}

struct CopyStream {
    sink: Pin<Box<CopyInSink<Bytes>>>,
    buf: BytesMut,
    rows: usize,
}

impl InsertRun {
    pub fn new(oid: u32, insert: Statement, target: Arc<QualifiedName>, columns: Vec<String>) -> InsertRun {
        InsertRun { oid, insert, target, columns, held: Vec::new(), held_bytes: 0, copy: None }
    }

    /// Starts a COPY right away with `rows` (inserts gathered in a batch).
    pub async fn copy_now(
        oid: u32,
        insert: Statement,
        target: Arc<QualifiedName>,
        columns: Vec<String>,
        client: &Client,
        rows: Vec<Vec<TextParam>>,
    ) -> Result<InsertRun, ApplyError> {
        let mut run = InsertRun::new(oid, insert, target, columns);
        run.start_copy(client, rows).await?;
        Ok(run)
    }

    /// Whether a COPY is streaming (nothing else can be sent until it ends).
    pub fn copying(&self) -> bool {
        self.copy.is_some()
    }

    /// Rows in the run so far.
    pub fn rows(&self) -> usize {
        self.copy.as_ref().map_or(self.held.len(), |c| c.rows)
    }

    /// Whether the next row, of `bytes` bytes of values, switches `run`
    /// (none yet: the run it starts) to COPY.
    pub fn starts_copy_next(run: Option<&InsertRun>, bytes: usize) -> bool {
        match run {
            Some(run) => run.copy.is_none() && long_enough(run.held.len() + 1, run.held_bytes + bytes),
            None => long_enough(1, bytes),
        }
    }

    /// Adds a row of `bytes` bytes of values; once the run is long enough
    /// (rows or bytes) it switches to COPY and streams from then on.
    pub async fn push(
        &mut self,
        client: &Client,
        row: RowRef,
        params: Vec<TextParam>,
        bytes: usize,
    ) -> Result<(), ApplyError> {
        if self.copy.is_some() {
            return self.push_copied(&params).await;
        }
        self.held_bytes += bytes;
        self.held.push((row, params));
        if long_enough(self.held.len(), self.held_bytes) {
            let held: Vec<Vec<TextParam>> = self.held.drain(..).map(|(_, params)| params).collect();
            self.held_bytes = 0;
            self.start_copy(client, held).await?;
        }
        Ok(())
    }

    /// Adds a row to the COPY streaming (see [`InsertRun::copying`]).
    pub async fn push_copied(&mut self, params: &[TextParam]) -> Result<(), ApplyError> {
        let copy = self.copy.as_mut().expect("only called while copying");
        encode_row(&mut copy.buf, params);
        copy.rows += 1;
        if copy.buf.len() >= CHUNK_BYTES {
            let chunk = copy.buf.split().freeze();
            copy.sink.send(chunk).await.map_err(target_error(format!("copy into {}", self.target)))?;
        }
        Ok(())
    }

    /// Starts a COPY with `rows`, which then go like any row after them.
    async fn start_copy(&mut self, client: &Client, rows: Vec<Vec<TextParam>>) -> Result<(), ApplyError> {
        let columns: Vec<String> = self.columns.iter().map(|c| quote_ident(c)).collect();
        let sql = format!("COPY {} ({}) FROM STDIN", self.target, columns.join(", "));
        let sink = client.copy_in(&sql).await.map_err(target_error(format!("copy into {}", self.target)))?;
        let buf = BytesMut::with_capacity(CHUNK_BYTES + 64 * 1024);
        self.copy = Some(CopyStream { sink: Box::pin(sink), buf, rows: 0 });
        for params in &rows {
            self.push_copied(params).await?;
        }
        Ok(())
    }

    /// Ends a COPY run on the target. A short run is the caller's to send
    /// (it is still in `held`).
    pub async fn finish_copy(&mut self) -> Result<(), ApplyError> {
        let Some(mut copy) = self.copy.take() else { return Ok(()) };
        let context = || format!("copy of {} rows into {}", copy.rows, self.target);
        if !copy.buf.is_empty() {
            let chunk = copy.buf.split().freeze();
            copy.sink.send(chunk).await.map_err(target_error(context()))?;
        }
        copy.sink.as_mut().finish().await.map_err(target_error(context()))?;
        Ok(())
    }
}

/// Whether a run of `rows` rows, `bytes` bytes of values, goes to COPY.
fn long_enough(rows: usize, bytes: usize) -> bool {
    rows >= COPY_AFTER_ROWS || bytes >= CHUNK_BYTES
}

/// The bytes of a row's values.
pub fn bytes_of(params: &[TextParam]) -> usize {
    params.iter().map(|p| p.0.as_ref().map_or(0, Bytes::len)).sum()
}

/// Appends one row in COPY's text format: tab between columns, `\N` for
/// NULL, backslash escapes for the characters the format reserves.
fn encode_row(buf: &mut BytesMut, params: &[TextParam]) {
    for (i, param) in params.iter().enumerate() {
        if i > 0 {
            buf.put_u8(b'\t');
        }
        match &param.0 {
            None => buf.put_slice(b"\\N"),
            Some(value) => escape_into(buf, value),
        }
    }
    buf.put_u8(b'\n');
}

fn escape_into(buf: &mut BytesMut, value: &[u8]) {
    let mut start = 0;
    for (i, &byte) in value.iter().enumerate() {
        let escaped: &[u8] = match byte {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        buf.put_slice(&value[start..i]);
        buf.put_slice(escaped);
        start = i + 1;
    }
    buf.put_slice(&value[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::param::text;

    #[test]
    fn encodes_rows_in_copy_text_format() {
        let mut buf = BytesMut::new();
        encode_row(&mut buf, &[text("1"), TextParam(None), text("a\tb\\c\nd\re"), text("")]);
        assert_eq!(&buf[..], b"1\t\\N\ta\\tb\\\\c\\nd\\re\t\n");
    }
}
