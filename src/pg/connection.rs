//! A frontend/backend protocol connection written directly on
//! `postgres-protocol`, because tokio-postgres cannot open a replication
//! connection. It does startup, TLS negotiation, authentication (trust,
//! password, md5, SCRAM-SHA-256 with channel binding), simple queries and
//! raw framing; the replication layer builds on top of it.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{
    ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramSha256,
};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::conninfo::{self, ConnInfo, Host, SslMode, TargetSessionAttrs};
use super::error::{PgError, ServerError};
use super::tls;

/// Frames larger than this are refused instead of allocated: no legitimate
/// message comes close (PostgreSQL caps a field at 1 GB).
const MAX_FRAME: usize = 1 << 30;

/// The limit until the server is ready: what comes before (authentication
/// requests, parameters, errors) is small, and a server not yet proven to
/// be the right one should not make ferry reserve a gigabyte. A megabyte
/// leaves room for a long notice (from a login event trigger, say).
const STARTUP_MAX_FRAME: usize = 1 << 20;

/// The byte stream under a connection.
enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Socket {
    /// The channel binding data of the server's certificate, over TLS.
    fn tls_server_end_point(&self) -> Option<Vec<u8>> {
        let Socket::Tls(stream) = self else { return None };
        tls::server_end_point(stream.get_ref().1.peer_certificates()?.first()?)
    }
}

impl AsyncRead for Socket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One backend message: its tag and the whole frame (tag and length
/// included, so postgres-protocol's parser can read the rare kinds).
pub struct Frame {
    pub tag: u8,
    frame: Bytes,
}

impl Frame {
    /// The message body after the tag and length.
    pub fn body(&self) -> Bytes {
        self.frame.slice(5..)
    }

    /// The message body, borrowed.
    pub fn payload(&self) -> &[u8] {
        &self.frame[5..]
    }

    fn parse(&self) -> io::Result<backend::Message> {
        let mut buf = BytesMut::from(&self.frame[..]);
        backend::Message::parse(&mut buf)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "incomplete message"))
    }
}

/// The rows of a simple query, as text.
#[derive(Debug, Default)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl QueryResult {
    /// The value of `column` in the first row, if there is one.
    pub fn first(&self, column: &str) -> Option<&str> {
        let i = self.columns.iter().position(|c| c == column)?;
        self.rows.first()?.get(i)?.as_deref()
    }
}

/// Reads ask the kernel for at least `READ_MIN` bytes, in a buffer grown
/// by `READ_SIZE` when it has less room.
const READ_MIN: usize = 16 * 1024;
const READ_SIZE: usize = 64 * 1024;

/// The keepalive settings every ferry connection uses (see
/// [`crate::pg::conninfo::KEEPALIVE_IDLE`]).
fn set_keepalive(tcp: &TcpStream) -> io::Result<()> {
    use crate::pg::conninfo::{KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_RETRIES, TCP_USER_TIMEOUT};
    let socket = socket2::SockRef::from(tcp);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    socket.set_tcp_keepalive(&keepalive)?;
    socket.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT))
}

pub struct Connection {
    socket: Socket,
    read_buf: BytesMut,
    write_buf: BytesMut,
    /// The redacted connection string, for error messages and logs.
    target: String,
    parameters: HashMap<String, String>,
    /// The largest frame accepted now: [`STARTUP_MAX_FRAME`] until the
    /// server is ready, [`MAX_FRAME`] after.
    max_frame: usize,
}

impl Connection {
    /// Connects to the first host of `info` that answers, authenticates and
    /// waits until the server is ready. `startup` adds startup parameters
    /// (e.g. `replication=database`).
    pub async fn connect(info: &ConnInfo, startup: &[(&str, &str)]) -> Result<Self, PgError> {
        let info = &info.with_current_password();
        let target = info.to_string();
        let mut last_error = None;
        for endpoint in info.endpoints() {
            let attempt = Self::connect_one(info, &endpoint.host, endpoint.port, startup, &target);
            let attempt = async { Self::with_session_attrs(info, attempt.await?, &target).await };
            let result = match info.connect_limit() {
                Some(limit) => tokio::time::timeout(limit, attempt).await.unwrap_or_else(|_| {
                    Err(PgError::Connect {
                        target: target.clone(),
                        source: io::Error::new(io::ErrorKind::TimedOut, "connect_timeout expired"),
                    })
                }),
                None => attempt.await,
            };
            match result {
                Ok(conn) => return Ok(conn),
                // A failed authentication is final, as in libpq (and in
                // `tls::connect_sql`): the next host would be asked the
                // same password. Any other failure moves on.
                Err(e @ PgError::Auth { .. }) => return Err(e),
                Err(e) if e.sqlstate().is_some_and(|code| code.starts_with("28")) => return Err(e),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| PgError::Connect {
            target,
            source: io::Error::new(io::ErrorKind::InvalidInput, "no host to connect to"),
        }))
    }

    /// `conn` when its server is of the kind `target_session_attrs` asks
    /// for; else an error that moves the search on to the next host.
    async fn with_session_attrs(info: &ConnInfo, mut conn: Self, target: &str) -> Result<Self, PgError> {
        if info.target_session_attrs == TargetSessionAttrs::Any {
            return Ok(conn);
        }
        let answer = conn.simple_query(TargetSessionAttrs::QUESTION).await?;
        match info.target_session_attrs.refusal(answer.first("in_recovery"), answer.first("read_only")) {
            None => Ok(conn),
            Some(refusal) => {
                conn.terminate().await;
                Err(PgError::Connect { target: target.to_string(), source: io::Error::other(refusal) })
            }
        }
    }

    async fn connect_one(
        info: &ConnInfo,
        host: &Host,
        port: u16,
        startup: &[(&str, &str)],
        target: &str,
    ) -> Result<Self, PgError> {
        let connect_error = |source| PgError::Connect { target: target.to_string(), source };
        let socket = match host {
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                Socket::Unix(UnixStream::connect(path).await.map_err(connect_error)?)
            }
            Host::Tcp(name) => {
                let tcp = TcpStream::connect((name.as_str(), port)).await.map_err(connect_error)?;
                tcp.set_nodelay(true).map_err(connect_error)?;
                set_keepalive(&tcp).map_err(connect_error)?;
                negotiate_tls(info, name, tcp, target).await?
            }
        };
        let mut conn = Connection {
            socket,
            read_buf: BytesMut::with_capacity(READ_SIZE),
            write_buf: BytesMut::with_capacity(8 * 1024),
            target: target.to_string(),
            parameters: HashMap::new(),
            max_frame: STARTUP_MAX_FRAME,
        };
        conn.startup(info, startup).await?;
        Ok(conn)
    }

    async fn startup(&mut self, info: &ConnInfo, extra: &[(&str, &str)]) -> Result<(), PgError> {
        let mut params =
            vec![("user", info.user()), ("database", info.dbname()), ("client_encoding", "UTF8")];
        if let Some(name) = &info.application_name {
            params.push(("application_name", name));
        }
        if let Some(options) = &info.options {
            params.push(("options", options));
        }
        params.extend_from_slice(extra);
        frontend::startup_message(params, &mut self.write_buf).map_err(|e| self.io_error(e))?;
        self.flush().await?;
        self.authenticate(info).await?;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                b'K' => {}
                b'Z' => {
                    self.max_frame = MAX_FRAME;
                    return Ok(());
                }
                b'E' => return Err(self.server_error(&frame)),
                other => return Err(self.unexpected(other, "during startup")),
            }
        }
    }

    async fn authenticate(&mut self, info: &ConnInfo) -> Result<(), PgError> {
        let mut scram: Option<ScramSha256> = None;
        // A SCRAM exchange ends with the server's proof that it knows the
        // password; one that says "ok" before has not shown it, and may be
        // a man in the middle passing the exchange on.
        let mut server_proven = false;
        loop {
            let frame = self.read_frame().await?;
            if frame.tag == b'E' {
                let error = self.server_error(&frame);
                return Err(match error {
                    // 28P01 / 28000: wrong password or no pg_hba entry.
                    PgError::Server { error, .. } if error.code.starts_with("28") => {
                        PgError::Auth { target: self.target.clone(), message: error.to_string() }
                    }
                    other => other,
                });
            }
            if frame.tag != b'R' {
                return Err(self.unexpected(frame.tag, "during authentication"));
            }
            let message = frame.parse().map_err(|e| self.protocol(e.to_string()))?;
            match message {
                backend::Message::AuthenticationOk if scram.is_some() && !server_proven => {
                    return Err(self.auth(
                        "the server ended SCRAM authentication without proving that it knows the password"
                            .into(),
                    ));
                }
                backend::Message::AuthenticationOk => {
                    if scram.is_none() {
                        self.may_skip_channel_binding(info)?;
                    }
                    return Ok(());
                }
                backend::Message::AuthenticationCleartextPassword => {
                    self.may_skip_channel_binding(info)?;
                    let password = self.password(info)?;
                    frontend::password_message(password, &mut self.write_buf)
                        .map_err(|e| self.io_error(e))?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    self.may_skip_channel_binding(info)?;
                    let password = self.password(info)?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        info.user().as_bytes(),
                        password,
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.write_buf)
                        .map_err(|e| self.io_error(e))?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let mechanisms: Vec<String> = body
                        .mechanisms()
                        .map(|m| Ok(m.to_string()))
                        .collect()
                        .map_err(|e| self.protocol(e.to_string()))?;
                    let (mechanism, binding) = self.scram_mechanism(info, &mechanisms)?;
                    let state = ScramSha256::new(self.password(info)?, binding);
                    frontend::sasl_initial_response(mechanism, state.message(), &mut self.write_buf)
                        .map_err(|e| self.io_error(e))?;
                    scram = Some(state);
                }
                backend::Message::AuthenticationSaslContinue(body) => {
                    let state = scram
                        .as_mut()
                        .ok_or_else(|| self.protocol("SASL continue before SASL start".into()))?;
                    state.update(body.data()).map_err(|e| self.auth(format!("SCRAM: {e}")))?;
                    frontend::sasl_response(state.message(), &mut self.write_buf)
                        .map_err(|e| self.io_error(e))?;
                }
                backend::Message::AuthenticationSaslFinal(body) => {
                    let state =
                        scram.as_mut().ok_or_else(|| self.protocol("SASL final before SASL start".into()))?;
                    state
                        .finish(body.data())
                        .map_err(|e| self.auth(format!("SCRAM: the server's proof is wrong ({e})")))?;
                    server_proven = true;
                    continue;
                }
                _ => {
                    return Err(self.auth(
                        "the server asks for an authentication method ferry does not support (use scram-sha-256, md5, password or trust)".into(),
                    ));
                }
            }
            self.flush().await?;
        }
    }

    /// The SCRAM mechanism to answer `offered` with, and its channel
    /// binding, as libpq chooses them: bound to the TLS connection when the
    /// server offers `-PLUS` and `channel_binding` allows; otherwise plain,
    /// saying whether ferry could have bound (so that a server which did
    /// offer binding, and a man in the middle that struck the offer out,
    /// are told apart by the server).
    fn scram_mechanism(
        &self,
        info: &ConnInfo,
        offered: &[String],
    ) -> Result<(&'static str, ChannelBinding), PgError> {
        let end_point = match info.channel_binding {
            conninfo::ChannelBinding::Disable => None,
            _ => self.socket.tls_server_end_point(),
        };
        let offers = |mechanism: &str| offered.iter().any(|m| m == mechanism);
        let chosen = match end_point {
            Some(data) if offers(SCRAM_SHA_256_PLUS) => {
                return Ok((SCRAM_SHA_256_PLUS, ChannelBinding::tls_server_end_point(data)));
            }
            Some(_) if offers(SCRAM_SHA_256) => (SCRAM_SHA_256, ChannelBinding::unrequested()),
            None if offers(SCRAM_SHA_256) => (SCRAM_SHA_256, ChannelBinding::unsupported()),
            _ => {
                return Err(self.auth(format!(
                    "server offers SASL mechanisms {offered:?}, ferry speaks {SCRAM_SHA_256} and {SCRAM_SHA_256_PLUS}"
                )));
            }
        };
        self.may_skip_channel_binding(info)?;
        Ok(chosen)
    }

    /// Refuses authentication without channel binding when the connection
    /// string requires it.
    fn may_skip_channel_binding(&self, info: &ConnInfo) -> Result<(), PgError> {
        if info.channel_binding != conninfo::ChannelBinding::Require {
            return Ok(());
        }
        let why = if matches!(self.socket, Socket::Tls(_)) {
            "the server authenticates without SCRAM-SHA-256-PLUS (or its certificate's signature has no hash to bind to)"
        } else {
            "the connection is not encrypted (the server refused TLS, or this is a Unix socket)"
        };
        Err(self.auth(format!("channel_binding=require, and {why}")))
    }

    fn password<'a>(&self, info: &'a ConnInfo) -> Result<&'a [u8], PgError> {
        info.password
            .as_ref()
            .map(|p| p.expose().as_bytes())
            .ok_or_else(|| self.auth("the server asks for a password and none is configured".into()))
    }

    /// The value of a server parameter reported at startup (`server_version`, ...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// The redacted connection string.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Reads the next message. Notices are logged and parameter changes
    /// recorded here, so callers only see what they asked for. Cancel safe:
    /// bytes read so far stay in the buffer.
    pub async fn read_frame(&mut self) -> Result<Frame, PgError> {
        loop {
            if let Some(frame) = self.split_frame()? {
                match frame.tag {
                    b'N' => self.log_notice(&frame),
                    b'S' => self.record_parameter(&frame),
                    _ => return Ok(frame),
                }
                continue;
            }
            // Read in large pieces: frames split off the buffer take its
            // space with them, and a nearly full buffer would otherwise be
            // refilled a few bytes per system call.
            if self.read_buf.capacity() - self.read_buf.len() < READ_MIN {
                self.read_buf.reserve(READ_SIZE);
            }
            let n = self.socket.read_buf(&mut self.read_buf).await.map_err(|e| self.io_error(e))?;
            if n == 0 {
                return Err(self.io_error(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                )));
            }
        }
    }

    /// Whether [`Connection::read_frame`] would return a frame without
    /// reading from the socket.
    pub fn has_buffered_frame(&self) -> bool {
        holds_frame(&self.read_buf)
    }

    fn split_frame(&mut self) -> Result<Option<Frame>, PgError> {
        if self.read_buf.len() < 5 {
            return Ok(None);
        }
        let tag = self.read_buf[0];
        let len = u32::from_be_bytes([self.read_buf[1], self.read_buf[2], self.read_buf[3], self.read_buf[4]])
            as usize;
        if !(4..=self.max_frame).contains(&len) {
            return Err(
                self.protocol(format!("message of invalid length {len} (at most {})", self.max_frame))
            );
        }
        let total = len + 1;
        if self.read_buf.len() < total {
            self.read_buf.reserve(total - self.read_buf.len());
            return Ok(None);
        }
        Ok(Some(Frame { tag, frame: self.read_buf.split_to(total).freeze() }))
    }

    fn log_notice(&self, frame: &Frame) {
        if let Ok(error) = parse_error_fields(frame) {
            tracing::info!(server = %self.target, "server notice: {error}");
        }
    }

    fn record_parameter(&mut self, frame: &Frame) {
        if let Ok(backend::Message::ParameterStatus(body)) = frame.parse()
            && let (Ok(name), Ok(value)) = (body.name(), body.value())
        {
            self.parameters.insert(name.to_string(), value.to_string());
        }
    }

    /// Appends a CopyData message to the write buffer; `flush` sends it.
    pub fn buffer_copy_data(&mut self, payload: &[u8]) {
        self.write_buf.reserve(5 + payload.len());
        self.write_buf.extend_from_slice(b"d");
        self.write_buf.extend_from_slice(&((payload.len() + 4) as u32).to_be_bytes());
        self.write_buf.extend_from_slice(payload);
    }

    /// Appends CopyDone to the write buffer.
    pub fn buffer_copy_done(&mut self) {
        frontend::copy_done(&mut self.write_buf);
    }

    /// Appends a simple Query message to the write buffer.
    pub fn buffer_query(&mut self, sql: &str) -> Result<(), PgError> {
        frontend::query(sql, &mut self.write_buf).map_err(|e| self.io_error(e))
    }

    pub async fn flush(&mut self) -> Result<(), PgError> {
        let result = async {
            self.socket.write_all(&self.write_buf).await?;
            self.socket.flush().await
        }
        .await;
        self.write_buf.clear();
        result.map_err(|e| self.io_error(e))
    }

    /// Runs one statement with the simple query protocol and collects its
    /// rows as text. Replication commands (IDENTIFY_SYSTEM, ...) go here too.
    pub async fn simple_query(&mut self, sql: &str) -> Result<QueryResult, PgError> {
        self.buffer_query(sql)?;
        self.flush().await?;
        let mut result = QueryResult::default();
        let mut error = None;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                b'T' => result.columns = self.row_description(&frame)?,
                b'D' => result.rows.push(self.data_row(&frame)?),
                b'C' | b'I' => {}
                b'E' => error = Some(self.server_error(&frame)),
                b'Z' => return error.map_or(Ok(result), Err),
                other => return Err(self.unexpected(other, "in a query result")),
            }
        }
    }

    fn row_description(&self, frame: &Frame) -> Result<Vec<String>, PgError> {
        match frame.parse() {
            Ok(backend::Message::RowDescription(body)) => body
                .fields()
                .map(|f| Ok(f.name().to_string()))
                .collect()
                .map_err(|e| self.protocol(e.to_string())),
            _ => Err(self.protocol("malformed RowDescription".into())),
        }
    }

    fn data_row(&self, frame: &Frame) -> Result<Vec<Option<String>>, PgError> {
        let Ok(backend::Message::DataRow(body)) = frame.parse() else {
            return Err(self.protocol("malformed DataRow".into()));
        };
        let buffer = body.buffer();
        body.ranges()
            .map(|range| Ok(range.map(|r| String::from_utf8_lossy(&buffer[r]).into_owned())))
            .collect()
            .map_err(|e| self.protocol(e.to_string()))
    }

    /// Ends the session politely; errors are irrelevant at this point.
    pub async fn terminate(mut self) {
        frontend::terminate(&mut self.write_buf);
        let _ = self.flush().await;
        let _ = self.socket.shutdown().await;
    }

    pub fn server_error(&self, frame: &Frame) -> PgError {
        match parse_error_fields(frame) {
            Ok(error) => PgError::Server { target: self.target.clone(), error: Box::new(error) },
            Err(e) => self.protocol(format!("malformed ErrorResponse: {e}")),
        }
    }

    pub fn unexpected(&self, tag: u8, context: &str) -> PgError {
        self.protocol(format!("message '{}' {context}", tag as char))
    }

    pub fn protocol(&self, message: String) -> PgError {
        PgError::Protocol { target: self.target.clone(), message }
    }

    fn auth(&self, message: String) -> PgError {
        PgError::Auth { target: self.target.clone(), message }
    }

    fn io_error(&self, source: io::Error) -> PgError {
        PgError::Io { target: self.target.clone(), source }
    }
}

/// Reads the fields of an ErrorResponse or NoticeResponse body.
fn parse_error_fields(frame: &Frame) -> io::Result<ServerError> {
    let mut body = frame.body();
    let mut error = ServerError {
        severity: String::new(),
        code: String::new(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    while body.has_remaining() {
        let kind = body.get_u8();
        if kind == 0 {
            break;
        }
        let end = body
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unterminated field"))?;
        let value = String::from_utf8_lossy(&body[..end]).into_owned();
        body.advance(end + 1);
        match kind {
            b'V' => error.severity = value,
            b'S' if error.severity.is_empty() => error.severity = value,
            b'C' => error.code = value,
            b'M' => error.message = value,
            b'D' => error.detail = Some(value),
            b'H' => error.hint = Some(value),
            _ => {}
        }
    }
    Ok(error)
}

/// Asks the server for TLS as `sslmode` says and performs the handshake.
async fn negotiate_tls(
    info: &ConnInfo,
    host: &str,
    mut tcp: TcpStream,
    target: &str,
) -> Result<Socket, PgError> {
    let tls_error = |message: String| PgError::Tls { target: target.to_string(), message };
    let Some(config) = tls::client_config(info).map_err(|e| tls_error(e.to_string()))? else {
        return Ok(Socket::Tcp(tcp));
    };
    let io_error = |source| PgError::Io { target: target.to_string(), source };
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await.map_err(io_error)?;
    match tcp.read_u8().await.map_err(io_error)? {
        b'S' => {}
        b'N' if info.sslmode == SslMode::Prefer => return Ok(Socket::Tcp(tcp)),
        b'N' => {
            return Err(tls_error(format!(
                "the server does not accept TLS connections, and sslmode={} requires it",
                info.sslmode
            )));
        }
        other => return Err(tls_error(format!("unexpected answer {other:#x} to the TLS request"))),
    }
    let name = tls::server_name(host).map_err(|e| tls_error(e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&config));
    let stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| if tls::is_refusal(&e) { tls_error(e.to_string()) } else { io_error(e) })?;
    Ok(Socket::Tls(Box::new(stream)))
}

/// Whether `buffer` holds a whole frame other than a notice or a parameter
/// change, which [`Connection::read_frame`] handles itself: a caller about
/// to wait for the server must not take one of those for a message to come.
fn holds_frame(buffer: &[u8]) -> bool {
    let mut at = 0;
    while let Some(header) = buffer.get(at..at + 5) {
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if buffer.len() <= at + len {
            return false;
        }
        if !matches!(header[0], b'N' | b'S') {
            return true;
        }
        at += len + 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::{Connection, holds_frame};
    use crate::pg::PgError;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// The port of a server that accepts one connection, reads its
    /// startup message and leaves the rest to `script`.
    async fn fake_server<F, Fut>(script: F) -> u16
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let startup_len = socket.read_u32().await.unwrap() as usize;
            socket.read_exact(&mut vec![0; startup_len - 4]).await.unwrap();
            script(socket).await;
        });
        port
    }

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut frame = vec![tag];
        frame.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        frame.extend_from_slice(body);
        frame
    }

    #[test]
    fn notices_and_parameter_changes_are_not_frames_to_hand_on() {
        let data = frame(b'd', b"wal");
        let notice = frame(b'N', b"Snotice\0\0");
        let parameter = frame(b'S', b"TimeZone\0UTC\0");
        assert!(holds_frame(&data));
        assert!(!holds_frame(&data[..data.len() - 1]), "a partial frame");
        assert!(!holds_frame(&notice));
        assert!(!holds_frame(&[notice.clone(), parameter.clone()].concat()));
        assert!(holds_frame(&[notice.clone(), parameter, data.clone()].concat()));
        assert!(!holds_frame(&[notice, data[..3].to_vec()].concat()));
        assert!(!holds_frame(&[]));
    }

    /// A server that announces a huge message before authentication is
    /// refused at once, not waited for with a gigabyte reserved.
    #[tokio::test]
    async fn a_huge_message_before_authentication_is_refused() {
        let port = fake_server(|mut socket| async move {
            socket.write_all(&[b'R', 0x10, 0, 0, 0]).await.unwrap();
            let _ = socket.read(&mut [0; 512]).await;
        })
        .await;
        let info = format!("postgresql://ferry@127.0.0.1:{port}/app?sslmode=disable&connect_timeout=5")
            .parse()
            .unwrap();
        match Connection::connect(&info, &[]).await {
            Err(error @ PgError::Protocol { .. }) => {
                assert!(error.to_string().contains("invalid length 268435456"), "{error}")
            }
            Err(other) => panic!("expected a protocol error, got {other}"),
            Ok(_) => panic!("a server that sent nothing valid was accepted"),
        }
    }

    /// A server that starts SCRAM and then says "ok" without its proof,
    /// as a man in the middle relaying the exchange would.
    #[tokio::test]
    async fn scram_without_the_servers_proof_is_refused() {
        let port = fake_server(|mut socket| async move {
            let mechanisms = b"SCRAM-SHA-256\0\0";
            let mut sasl = frame(b'R', &10u32.to_be_bytes());
            sasl.extend_from_slice(mechanisms);
            sasl[1..5].copy_from_slice(&(8 + mechanisms.len() as u32).to_be_bytes());
            socket.write_all(&sasl).await.unwrap();
            let _initial_response = socket.read(&mut [0; 512]).await.unwrap();
            socket.write_all(&frame(b'R', &0u32.to_be_bytes())).await.unwrap();
            let _ = socket.read(&mut [0; 512]).await;
        })
        .await;
        let info = format!("postgresql://ferry:secret@127.0.0.1:{port}/app?sslmode=disable").parse().unwrap();
        match Connection::connect(&info, &[]).await {
            Err(PgError::Auth { message, .. }) => assert!(message.contains("without proving"), "{message}"),
            Err(other) => panic!("expected an authentication error, got {other}"),
            Ok(_) => panic!("a server that proved nothing was accepted"),
        }
    }
}
