//! The replication protocol on top of [`Connection`]: slots, and the
//! CopyBoth stream of WAL data and keepalives with standby status replies.

use bytes::{Buf, Bytes};

use super::VALUE_SETTINGS;
use super::connection::{Connection, QueryResult};
use super::conninfo::ConnInfo;
use super::error::PgError;
use super::lsn::Lsn;
use super::names::quote_ident;
use super::timestamp;

/// What IDENTIFY_SYSTEM reports.
#[derive(Debug, Clone)]
pub struct SystemIdentity {
    pub system_id: String,
    pub timeline: u32,
    pub xlog_pos: Lsn,
    pub dbname: Option<String>,
}

/// A slot just created, with the snapshot it exported when asked.
#[derive(Debug, Clone)]
pub struct CreatedSlot {
    pub name: String,
    /// Streaming from here continues exactly where the snapshot ends.
    pub consistent_point: Lsn,
    /// Valid for `SET TRANSACTION SNAPSHOT` until the next command on this
    /// replication connection.
    pub snapshot_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    Permanent,
    /// Dropped by the server when this connection ends, however it ends.
    Temporary,
}

/// Options for START_REPLICATION with pgoutput.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub publications: Vec<String>,
    /// pgoutput protocol version; `None` picks the highest the server speaks.
    pub protocol_version: Option<u32>,
    /// Ask for logical decoding messages (`pg_logical_emit_message`).
    pub messages: bool,
    /// Ask for in-progress transactions to be streamed (protocol 2+), so a
    /// large transaction does not have to fit anywhere before its commit.
    pub streaming: bool,
}

/// The highest pgoutput protocol version a server of this version speaks.
pub fn highest_protocol_version(server_version_num: u32) -> u32 {
    match server_version_num {
        160000.. => 4,
        150000.. => 3,
        140000.. => 2,
        _ => 1,
    }
}

/// Parses `server_version` ("15.19 (Debian 15.19-0+deb12u1)", "16beta1")
/// into the `server_version_num` form (150019).
pub fn parse_server_version(text: &str) -> Option<u32> {
    let numeric: String = text.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let mut parts = numeric.split('.').filter(|p| !p.is_empty()).map(|p| p.parse::<u32>());
    let major = parts.next()?.ok()?;
    let minor = parts.next().and_then(Result::ok).unwrap_or(0);
    // A server is not trusted to send a sane version: no overflow.
    major.checked_mul(10000)?.checked_add(minor)
}

/// A connection opened with `replication=database`.
pub struct ReplicationClient {
    conn: Connection,
    server_version_num: u32,
}

impl ReplicationClient {
    pub async fn connect(info: &ConnInfo) -> Result<Self, PgError> {
        let startup: Vec<(&str, &str)> =
            [("replication", "database")].into_iter().chain(VALUE_SETTINGS).collect();
        let conn = Connection::connect(info, &startup).await?;
        let version = conn.parameter("server_version").unwrap_or_default().to_string();
        let server_version_num = parse_server_version(&version)
            .ok_or_else(|| conn.protocol(format!("cannot read the server version {version:?}")))?;
        Ok(ReplicationClient { conn, server_version_num })
    }

    /// `server_version_num`, e.g. 150019.
    pub fn server_version_num(&self) -> u32 {
        self.server_version_num
    }

    pub fn target(&self) -> &str {
        self.conn.target()
    }

    /// Runs SQL or a replication command on this connection.
    pub async fn simple_query(&mut self, sql: &str) -> Result<QueryResult, PgError> {
        self.conn.simple_query(sql).await
    }

    pub async fn identify_system(&mut self) -> Result<SystemIdentity, PgError> {
        let result = self.conn.simple_query("IDENTIFY_SYSTEM").await?;
        let field = |name: &str| {
            result
                .first(name)
                .map(str::to_string)
                .ok_or_else(|| self.conn.protocol(format!("IDENTIFY_SYSTEM without {name}")))
        };
        Ok(SystemIdentity {
            system_id: field("systemid")?,
            timeline: field("timeline")?.parse().map_err(|_| self.conn.protocol("bad timeline".into()))?,
            xlog_pos: field("xlogpos")?.parse().map_err(|e| self.conn.protocol(format!("{e}")))?,
            dbname: result.first("dbname").map(str::to_string),
        })
    }

    /// Creates a pgoutput slot, exporting a snapshot when `export_snapshot`
    /// is set (for the initial copy).
    pub async fn create_slot(
        &mut self,
        name: &str,
        kind: SlotKind,
        export_snapshot: bool,
    ) -> Result<CreatedSlot, PgError> {
        let temporary = if kind == SlotKind::Temporary { " TEMPORARY" } else { "" };
        // Server 15 introduced the parenthesised option list; 14 only knows
        // the keywords.
        let snapshot = match (self.server_version_num >= 150000, export_snapshot) {
            (true, true) => " (SNAPSHOT 'export')",
            (true, false) => " (SNAPSHOT 'nothing')",
            (false, true) => " EXPORT_SNAPSHOT",
            (false, false) => " NOEXPORT_SNAPSHOT",
        };
        let sql =
            format!("CREATE_REPLICATION_SLOT {}{temporary} LOGICAL pgoutput{snapshot}", quote_ident(name));
        let result = self.conn.simple_query(&sql).await?;
        let consistent_point = result
            .first("consistent_point")
            .ok_or_else(|| self.conn.protocol("CREATE_REPLICATION_SLOT without consistent_point".into()))?
            .parse()
            .map_err(|e| self.conn.protocol(format!("{e}")))?;
        Ok(CreatedSlot {
            name: name.to_string(),
            consistent_point,
            snapshot_name: result.first("snapshot_name").map(str::to_string),
        })
    }

    /// Drops a slot, waiting for it to become inactive when `wait` is set.
    pub async fn drop_slot(&mut self, name: &str, wait: bool) -> Result<(), PgError> {
        let wait = if wait { " WAIT" } else { "" };
        self.conn.simple_query(&format!("DROP_REPLICATION_SLOT {}{wait}", quote_ident(name))).await?;
        Ok(())
    }

    /// The pgoutput options START_REPLICATION will send for `options`.
    pub fn plugin_options(&self, options: &StartOptions) -> Vec<(String, String)> {
        let version =
            options.protocol_version.unwrap_or_else(|| highest_protocol_version(self.server_version_num));
        let publications: Vec<String> = options.publications.iter().map(|p| quote_ident(p)).collect();
        let mut list = vec![
            ("proto_version".to_string(), version.to_string()),
            ("publication_names".to_string(), publications.join(",")),
        ];
        if options.messages {
            list.push(("messages".to_string(), "true".to_string()));
        }
        if options.streaming && version >= 2 {
            list.push(("streaming".to_string(), "on".to_string()));
        }
        list
    }

    /// Starts streaming `slot` from `start` (the server begins at the slot's
    /// confirmed position if that is later).
    pub async fn start(
        mut self,
        slot: &str,
        start: Lsn,
        options: &StartOptions,
    ) -> Result<ReplicationStream, PgError> {
        let plugin_options: Vec<String> = self
            .plugin_options(options)
            .iter()
            .map(|(k, v)| format!("{} {}", quote_ident(k), quote_command_string(v)))
            .collect();
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {start} ({})",
            quote_ident(slot),
            plugin_options.join(", ")
        );
        self.conn.buffer_query(&sql)?;
        self.conn.flush().await?;
        let frame = self.conn.read_frame().await?;
        match frame.tag {
            b'W' => {}
            b'E' => {
                let error = self.conn.server_error(&frame);
                // The server follows an error with ReadyForQuery.
                let _ = self.conn.read_frame().await;
                return Err(error);
            }
            other => return Err(self.conn.unexpected(other, "after START_REPLICATION")),
        }
        Ok(ReplicationStream { conn: self.conn, status: Vec::with_capacity(34) })
    }

    pub async fn close(self) {
        self.conn.terminate().await
    }
}

/// One message of the replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// A pgoutput message and where it lies in the WAL.
    XLogData { wal_start: Lsn, wal_end: Lsn, send_time: i64, data: Bytes },
    /// The server's WAL end; answer promptly when `reply_requested`.
    Keepalive { wal_end: Lsn, send_time: i64, reply_requested: bool },
}

/// The server side of START_REPLICATION: WAL data in, standby status out.
pub struct ReplicationStream {
    conn: Connection,
    status: Vec<u8>,
}

impl ReplicationStream {
    /// The next message; `None` when the server ended the stream. Cancel
    /// safe, so it can sit in a `select!` beside a status timer.
    pub async fn next(&mut self) -> Result<Option<ReplicationMessage>, PgError> {
        let frame = self.conn.read_frame().await?;
        match frame.tag {
            b'd' => self.parse_copy_data(frame.body()).map(Some),
            // A walsender whose server shuts down cleanly ends the stream
            // with CommandComplete, without CopyDone, once its client has
            // confirmed all it sent (`WalSndDone`).
            b'c' | b'C' => Ok(None),
            b'E' => Err(self.conn.server_error(&frame)),
            other => Err(self.conn.unexpected(other, "in the replication stream")),
        }
    }

    /// Whether a whole message is already read and waiting, so that the
    /// next [`ReplicationStream::next`] returns without waiting.
    pub fn has_buffered_message(&self) -> bool {
        self.conn.has_buffered_frame()
    }

    fn parse_copy_data(&self, mut body: Bytes) -> Result<ReplicationMessage, PgError> {
        let short = || self.conn.protocol("truncated replication message".into());
        if body.is_empty() {
            return Err(short());
        }
        match body.get_u8() {
            b'w' if body.len() >= 24 => {
                let wal_start = Lsn(body.get_u64());
                let wal_end = Lsn(body.get_u64());
                let send_time = body.get_i64();
                Ok(ReplicationMessage::XLogData { wal_start, wal_end, send_time, data: body })
            }
            b'k' if body.len() >= 17 => Ok(ReplicationMessage::Keepalive {
                wal_end: Lsn(body.get_u64()),
                send_time: body.get_i64(),
                reply_requested: body.get_u8() != 0,
            }),
            b'w' | b'k' => Err(short()),
            other => Err(self.conn.protocol(format!("unknown replication message '{}'", other as char))),
        }
    }

    /// Sends a standby status update. `flushed` is what the server may
    /// forget: it must never pass what the consumer has made durable.
    pub async fn send_status(
        &mut self,
        written: Lsn,
        flushed: Lsn,
        applied: Lsn,
        reply_requested: bool,
    ) -> Result<(), PgError> {
        self.status.clear();
        self.status.push(b'r');
        self.status.extend_from_slice(&written.0.to_be_bytes());
        self.status.extend_from_slice(&flushed.0.to_be_bytes());
        self.status.extend_from_slice(&applied.0.to_be_bytes());
        self.status.extend_from_slice(&timestamp::now_micros().to_be_bytes());
        self.status.push(u8::from(reply_requested));
        self.conn.buffer_copy_data(&self.status);
        self.conn.flush().await
    }

    /// Ends streaming cleanly: CopyDone, drain what the server still sends
    /// until it is ready again, then Terminate. A temporary slot goes with it.
    pub async fn stop(mut self) -> Result<(), PgError> {
        self.conn.buffer_copy_done();
        self.conn.flush().await?;
        loop {
            let frame = self.conn.read_frame().await?;
            match frame.tag {
                b'd' | b'c' | b'C' | b'T' | b'D' => {}
                b'Z' => break,
                b'E' => return Err(self.conn.server_error(&frame)),
                other => return Err(self.conn.unexpected(other, "while stopping replication")),
            }
        }
        self.conn.terminate().await;
        Ok(())
    }
}

/// A string in a replication command, whose grammar knows only `'...'`
/// with `''` for a quote: a backslash is plain there and `E''` unknown.
fn quote_command_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_server_versions() {
        assert_eq!(parse_server_version("15.19 (Debian 15.19-0+deb12u1)"), Some(150019));
        assert_eq!(parse_server_version("16beta1"), Some(160000));
        assert_eq!(parse_server_version("14.0"), Some(140000));
        assert_eq!(parse_server_version("devel"), None);
        assert_eq!(parse_server_version("4294967.0"), None);
        assert_eq!(parse_server_version("429496.7295"), Some(u32::MAX));
        assert_eq!(parse_server_version("429496.7296"), None);
    }

    #[test]
    fn picks_the_highest_protocol_version() {
        assert_eq!(highest_protocol_version(140005), 2);
        assert_eq!(highest_protocol_version(150019), 3);
        assert_eq!(highest_protocol_version(170002), 4);
    }

    #[test]
    fn replication_command_strings_double_only_quotes() {
        assert_eq!(quote_command_string(r#""it's", "C:\dir""#), r#"'"it''s", "C:\dir"'"#);
    }
}
