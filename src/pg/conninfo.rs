//! Connection strings, in the two forms psql and libpq accept: a
//! `postgresql://` URL and `key=value` pairs.
//!
//! Operators paste the string they already use with psql into ferry's config, so
//! parsing follows libpq's rules (quoting, percent-decoding, host and port lists,
//! defaults) rather than inventing a dialect. Two things differ on purpose:
//!
//! * the `PG*` environment variables and `~/.postgresql` files are not consulted —
//!   a ferry config says everything about where it connects, so what runs in
//!   production is what was reviewed;
//! * errors never quote a password or anything that might be part of one. A
//!   mistyped password (an unencoded `@` or `/` in a URL, an unquoted space in
//!   `key=value` form) is the usual way a secret ends up in a log, so those
//!   mistakes get their own errors that say how to fix the string instead of
//!   echoing it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

/// The port used for a host that names none, as libpq does.
pub const DEFAULT_PORT: u16 = 5432;

/// The Unix socket directory used when no host is given (Debian/Ubuntu and the
/// official Docker images put the socket here).
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// The `sslrootcert` value that means "the system's trusted roots" (libpq 16+).
pub const SYSTEM_ROOTS: &str = "system";

/// Parameters accepted in either form; listed in the error for an unknown one.
const ACCEPTED: &str = "host, port, user, password, dbname, sslmode, sslrootcert, sslcert, \
                        sslkey, channel_binding, target_session_attrs, application_name, \
                        connect_timeout, options, replication";

/// libpq's other parameters (PostgreSQL 18's list): named as unsupported
/// rather than unknown, and never taken for the rest of a password.
const LIBPQ_ONLY: &[&str] = &[
    "hostaddr",
    "passfile",
    "require_auth",
    "client_encoding",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "gssencmode",
    "sslnegotiation",
    "sslcompression",
    "sslpassword",
    "sslcertmode",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "sslkeylogfile",
    "requirepeer",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "min_protocol_version",
    "max_protocol_version",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "service",
    "load_balance_hosts",
    "scram_client_key",
    "scram_server_key",
    "oauth_issuer",
    "oauth_client_id",
    "oauth_client_secret",
    "oauth_scope",
];

/// A password. Its `Debug` and `Display` print `***`, so a `ConnInfo` (or
/// anything holding one) can be logged or put in an error without leaking it;
/// the only way to the text is [`Secret::expose`], which is easy to grep for.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The password itself, for the one place that sends it to the server.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Secret {
    /// A password file's password: its first line, without the newline a
    /// text editor adds.
    pub fn read_file(path: &Path) -> std::io::Result<Secret> {
        Ok(Secret::new(std::fs::read_to_string(path)?.trim_end_matches(['\n', '\r'])))
    }
}

impl From<String> for Secret {
    fn from(secret: String) -> Self {
        Secret(secret)
    }
}

impl From<&str> for Secret {
    fn from(secret: &str) -> Self {
        Secret(secret.to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where a server listens: a TCP host name or address, or a directory holding
/// the server's Unix socket (libpq's rule: a host starting with `/` is a directory).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name or an IP address; IPv6 addresses are kept without brackets.
    Tcp(String),
    /// The socket directory; the socket is `{dir}/.s.PGSQL.{port}`.
    Unix(PathBuf),
}

impl Host {
    /// Reads one entry of a host list the way libpq does: empty means the
    /// default socket directory, a leading `/` means a socket directory,
    /// anything else is a TCP host (brackets around an IPv6 address are dropped).
    pub fn parse(text: &str) -> Host {
        if text.is_empty() {
            Host::Unix(PathBuf::from(DEFAULT_SOCKET_DIR))
        } else if text.starts_with('/') {
            Host::Unix(PathBuf::from(text))
        } else {
            let unbracketed = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text);
            Host::Tcp(unbracketed.to_string())
        }
    }

    /// The socket file for `port` when this is a Unix socket directory.
    pub fn socket_path(&self, port: u16) -> Option<PathBuf> {
        match self {
            Host::Tcp(_) => None,
            Host::Unix(dir) => Some(dir.join(format!(".s.PGSQL.{port}"))),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Tcp(name) if name.contains(':') => write!(f, "[{name}]"),
            Host::Tcp(name) => f.write_str(name),
            Host::Unix(dir) => write!(f, "{}", dir.display()),
        }
    }
}

/// One host with the port to use for it; what a connection attempt dials.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub host: Host,
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host.socket_path(self.port) {
            Some(socket) => write!(f, "{}", socket.display()),
            None => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// libpq's `sslmode`. `allow` is read as `Prefer`: both may end up unencrypted,
/// and ferry would rather try encryption first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// TLS if the server offers it, without verifying the certificate
    /// (unless `sslrootcert` is set, as for `Require`).
    #[default]
    Prefer,
    /// TLS or fail, without verifying the certificate (unless `sslrootcert` is
    /// set: then the chain is checked, as libpq does for compatibility).
    Require,
    /// TLS, certificate chain checked against the roots, host name not checked.
    VerifyCa,
    /// TLS, certificate chain and host name checked.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = ConnInfoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disable" => Ok(SslMode::Disable),
            "allow" | "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            _ => Err(ConnInfoError::InvalidValue {
                name: "sslmode",
                value: s.to_string(),
                expected: "disable, allow, prefer, require, verify-ca or verify-full",
            }),
        }
    }
}

/// libpq's `channel_binding`: whether SCRAM authentication binds itself to
/// the TLS connection (`SCRAM-SHA-256-PLUS` with `tls-server-end-point`),
/// which a man in the middle holding another certificate cannot relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ChannelBinding {
    /// Never bind.
    Disable,
    /// Bind when the server offers it over TLS.
    #[default]
    Prefer,
    /// Bind, or refuse the connection: no other authentication (password,
    /// md5, trust, SCRAM without binding) is accepted.
    Require,
}

impl ChannelBinding {
    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelBinding::Disable => "disable",
            ChannelBinding::Prefer => "prefer",
            ChannelBinding::Require => "require",
        }
    }
}

impl fmt::Display for ChannelBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ChannelBinding {
    type Err = ConnInfoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disable" => Ok(ChannelBinding::Disable),
            "prefer" => Ok(ChannelBinding::Prefer),
            "require" => Ok(ChannelBinding::Require),
            _ => Err(ConnInfoError::InvalidValue {
                name: "channel_binding",
                value: s.to_string(),
                expected: "disable, prefer or require",
            }),
        }
    }
}

/// libpq's `target_session_attrs`: which of several hosts will do, for a
/// list that survives a failover. ferry takes the kinds a replicator needs:
/// a source's slot lives on the primary, and a target must take writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TargetSessionAttrs {
    /// The first host that answers.
    #[default]
    Any,
    /// A host that takes writes: not a standby, not read-only by default.
    ReadWrite,
    /// A host that is not a standby.
    Primary,
}

impl TargetSessionAttrs {
    /// What a new session is asked, unless any host will do; it answers
    /// `in_recovery` and `read_only`.
    pub const QUESTION: &str = "SELECT pg_catalog.pg_is_in_recovery()::text AS in_recovery, \
                                pg_catalog.current_setting('transaction_read_only') AS read_only";

    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::Primary => "primary",
        }
    }

    /// Why a server that answered [`TargetSessionAttrs::QUESTION`] so
    /// does not do, if it does not.
    pub fn refusal(self, in_recovery: Option<&str>, read_only: Option<&str>) -> Option<String> {
        let standby = in_recovery != Some("false");
        let refused = match self {
            TargetSessionAttrs::Any => false,
            TargetSessionAttrs::ReadWrite => standby || read_only != Some("off"),
            TargetSessionAttrs::Primary => standby,
        };
        refused.then(|| {
            let what = if standby { "a standby" } else { "read-only" };
            format!("the server is {what}, and target_session_attrs={self} asks for another")
        })
    }
}

impl fmt::Display for TargetSessionAttrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TargetSessionAttrs {
    type Err = ConnInfoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "any" => Ok(TargetSessionAttrs::Any),
            "read-write" => Ok(TargetSessionAttrs::ReadWrite),
            "primary" => Ok(TargetSessionAttrs::Primary),
            _ => Err(ConnInfoError::InvalidValue {
                name: "target_session_attrs",
                value: s.to_string(),
                expected: "any, read-write or primary (a replicator reads a primary and writes to a writable host)",
            }),
        }
    }
}

/// Why a connection string was rejected. No variant holds a password or text
/// that could be part of one, so the derived `Debug` is as safe as `Display`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnInfoError {
    #[error(
        "connection string: expected \"=\" after the parameter name starting at byte {position} \
         (write key=value pairs, or a postgresql:// URL)"
    )]
    MissingEquals { position: usize },

    #[error("connection string: \"=\" without a parameter name at byte {position}")]
    EmptyKey { position: usize },

    #[error(
        "connection string: the value of {key} starts with a quote that is never closed \
         (inside '...', write \\' for a quote and \\\\ for a backslash)"
    )]
    UnterminatedQuote { key: String },

    #[error(
        "connection string: the password looks like it contains a space or a quote; put it \
         in single quotes, password='...', and write \\' for a quote and \\\\ for a backslash"
    )]
    PasswordNeedsQuoting,

    #[error("connection URL: the password looks like it contains \"&\"; percent-encode it as %26")]
    PasswordNeedsEncoding,

    #[error("unknown connection parameter \"{name}\"; ferry accepts {ACCEPTED}")]
    UnknownParameter { name: String },

    #[error(
        "connection parameter \"{name}\" is libpq's, but ferry does not support it; ferry accepts {ACCEPTED}"
    )]
    UnsupportedParameter { name: &'static str },

    /// The text before an `=` is not a word: a URL with another scheme, or
    /// text before `postgresql://`, and it may hold a password.
    #[error(
        "connection string: neither key=value pairs nor a URL starting with postgresql:// or \
         postgres:// (the text is not repeated here: it may hold a password)"
    )]
    NotAParameterName,

    #[error("connection URL: query parameter #{index} has no \"=\" (write ?key=value&key=value)")]
    QueryMissingEquals { index: usize },

    #[error(
        "connection URL: bad percent-encoding in the {part}: \"%\" must be followed by two hex \
         digits (write a literal \"%\" as %25)"
    )]
    BadPercentEncoding { part: &'static str },

    #[error("connection URL: the {part} contains %00, which PostgreSQL cannot accept")]
    NulInValue { part: &'static str },

    #[error("connection URL: the {part} is not valid UTF-8 after percent-decoding")]
    NotUtf8 { part: &'static str },

    #[error(
        "connection URL: more than one \"@\" before the host; if the user name, password or \
         database name contains \"@\", percent-encode it as %40"
    )]
    UnencodedAt,

    #[error(
        "connection URL: \"@\" appears after the first \"/\"; if the user name or password \
         contains \"/\", percent-encode it as %2F (and \"@\" as %40, \"?\" as %3F); a database \
         name with \"@\" is written with %40 too"
    )]
    SlashInUserInfo,

    #[error("connection URL: an IPv6 address is missing its closing \"]\"")]
    UnclosedIpv6,

    #[error("connection URL: empty IPv6 address \"[]\"")]
    EmptyIpv6,

    #[error(
        "connection URL: unexpected {found:?} after IPv6 address [{address}] \
         (expected \":port\", \",\", \"/\" or \"?\")"
    )]
    AfterIpv6 { address: String, found: char },

    #[error(
        "connection URL: the port of host \"{host}\" is not a number from 1 to 65535 \
         (a \"/\" or \"?\" in a password must be percent-encoded as %2F or %3F)"
    )]
    BadUrlPort { host: String },

    #[error("invalid {name} \"{value}\": expected {expected}")]
    InvalidValue { name: &'static str, value: String, expected: &'static str },

    #[error("{ports} ports for {hosts} hosts: give one port for all hosts or one port per host")]
    PortCount { ports: usize, hosts: usize },

    #[error(
        "sslmode={mode} may not be used with sslrootcert=system: checking the system's roots \
         only protects a connection that also checks the host name (use sslmode=verify-full)"
    )]
    WeakSslModeWithSystemRoots { mode: SslMode },

    #[error(
        "sslmode=verify-ca needs sslrootcert, the file of the CA that signed the server's \
         certificate: verify-ca does not check the host name, so without a CA of your own any \
         certificate a public CA issued would pass (give sslrootcert, or use sslmode=verify-full)"
    )]
    VerifyCaWithoutRoot,

    #[error(
        "channel_binding=require needs TLS, and sslmode=disable turns it off (channel binding \
         ties authentication to the TLS connection)"
    )]
    ChannelBindingWithoutTls,
}

/// Where and how to connect to one PostgreSQL database, as written in a
/// connection string.
///
/// After parsing, `hosts` is never empty and `ports` has one entry per host;
/// code that builds a `ConnInfo` by hand may leave both empty and still get
/// libpq's defaults from [`ConnInfo::endpoints`]. `user` and `dbname` stay
/// `None` when not given; [`ConnInfo::user`] and [`ConnInfo::dbname`] resolve them.
///
/// TCP keepalives on every connection: a server that vanishes without
/// closing it shows as a broken connection within about a minute.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_RETRIES: u32 = 3;
/// How long sent data may stay unacknowledged before the connection counts
/// as broken.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);

/// How long connecting (TCP, TLS, authentication) may take when the
/// connection string sets no `connect_timeout`. libpq waits forever; a
/// daemon should rather say, and retry, than hang without a word on a host
/// that accepted the connection and never answers.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// `Debug` is derived but safe: the password is a [`Secret`] and prints `***`.
/// `Display` is a URL without the password, for logs and errors.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnInfo {
    pub hosts: Vec<Host>,
    pub ports: Vec<u16>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// Where `password` was read from, when from a file: read again at
    /// each connection (see [`ConnInfo::with_current_password`]).
    pub password_file: Option<PathBuf>,
    pub dbname: Option<String>,
    pub sslmode: SslMode,
    /// PEM file of trusted roots, or `system` for the system's store.
    pub sslrootcert: Option<PathBuf>,
    /// PEM client certificate (chain), for servers that authenticate by certificate.
    pub sslcert: Option<PathBuf>,
    /// PEM private key of `sslcert`.
    pub sslkey: Option<PathBuf>,
    pub channel_binding: ChannelBinding,
    pub target_session_attrs: TargetSessionAttrs,
    pub application_name: Option<String>,
    /// As written: `None` when not given, zero for "wait forever"; see
    /// [`ConnInfo::connect_limit`].
    pub connect_timeout: Option<Duration>,
    /// Command-line options sent to the server at startup (`-c name=value ...`).
    pub options: Option<String>,
}

impl ConnInfo {
    /// How long a connection may take to be ready: `connect_timeout` as
    /// written, none when it is zero, else [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn connect_limit(&self) -> Option<Duration> {
        match self.connect_timeout {
            None => Some(DEFAULT_CONNECT_TIMEOUT),
            Some(Duration::ZERO) => None,
            Some(limit) => Some(limit),
        }
    }

    /// The user to log in as: the configured one, else the operating-system
    /// user (`$USER`), else `postgres`.
    pub fn user(&self) -> &str {
        self.user.as_deref().unwrap_or_else(|| default_user())
    }

    /// The database to connect to: the configured one, else the user's name.
    pub fn dbname(&self) -> &str {
        self.dbname.as_deref().unwrap_or_else(|| self.user())
    }

    /// Replaces the password; ferry's config may keep the password apart from
    /// the connection string (a file, an environment variable).
    pub fn with_password(mut self, password: Secret) -> Self {
        self.password = Some(password);
        self
    }

    /// The password as `file` holds it, read again at each connection: a
    /// rotated Secret is taken up by the next connection, reload or not.
    pub fn with_password_file(self, file: PathBuf, password: Secret) -> Self {
        ConnInfo { password_file: Some(file), ..self.with_password(password) }
    }

    /// These settings with the password its file holds now (the one read
    /// before, should the file be unreadable for a moment: mid-rotation, a
    /// Kubernetes Secret's files are swapped by a symlink).
    pub fn with_current_password(&self) -> ConnInfo {
        let current = self.password_file.as_deref().and_then(|file| Secret::read_file(file).ok());
        match current {
            Some(password) => self.clone().with_password(password),
            None => self.clone(),
        }
    }

    /// Every host with its port, in the order connections are tried, with
    /// libpq's defaults filled in (no host: the default socket directory; no
    /// port: 5432; one port: the same for all hosts).
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let default_host = [Host::Unix(PathBuf::from(DEFAULT_SOCKET_DIR))];
        let hosts: &[Host] = if self.hosts.is_empty() { &default_host } else { &self.hosts };
        hosts
            .iter()
            .enumerate()
            .map(|(i, host)| Endpoint {
                host: host.clone(),
                port: self.ports.get(i).or_else(|| self.ports.first()).copied().unwrap_or(DEFAULT_PORT),
            })
            .collect()
    }

    /// Whether `other` names the same database on the same servers (as
    /// written: another spelling of a host is another host), whatever the
    /// role, password or options.
    pub fn same_database(&self, other: &ConnInfo) -> bool {
        self.endpoints() == other.endpoints() && self.dbname() == other.dbname()
    }

    /// Whether `sslrootcert` asks for the system's trusted roots.
    pub fn uses_system_roots(&self) -> bool {
        self.sslrootcert.as_deref() == Some(Path::new(SYSTEM_ROOTS))
    }

    /// A tokio-postgres configuration for ordinary SQL connections.
    ///
    /// `verify-ca` and `verify-full` become tokio-postgres' `Require`: TLS is
    /// mandatory, and the checking is done by the rustls configuration from
    /// [`super::tls::client_config`], which knows the difference. When every host
    /// is a Unix socket, TLS is disabled: PostgreSQL does not offer it there and
    /// libpq ignores `sslmode` for sockets.
    pub fn to_tokio_postgres(&self) -> tokio_postgres::Config {
        use tokio_postgres::config::SslMode as TpSslMode;

        let mut config = tokio_postgres::Config::new();
        let endpoints = self.endpoints();
        for endpoint in &endpoints {
            match &endpoint.host {
                Host::Tcp(name) => config.host(name),
                Host::Unix(dir) => config.host_path(dir),
            };
            config.port(endpoint.port);
        }
        config.user(self.user()).dbname(self.dbname());
        if let Some(password) = &self.password {
            config.password(password.expose());
        }
        if let Some(name) = &self.application_name {
            config.application_name(name);
        }
        if let Some(options) = &self.options {
            config.options(options);
        }
        if let Some(timeout) = self.connect_limit() {
            config.connect_timeout(timeout);
        }
        // Broken within a minute instead of the hours TCP's defaults take:
        // the pipeline then retries as for any lost connection.
        config
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(KEEPALIVE_INTERVAL)
            .keepalives_retries(KEEPALIVE_RETRIES)
            .tcp_user_timeout(TCP_USER_TIMEOUT);
        let all_unix = endpoints.iter().all(|e| matches!(e.host, Host::Unix(_)));
        config.channel_binding(match self.channel_binding {
            ChannelBinding::Disable => tokio_postgres::config::ChannelBinding::Disable,
            ChannelBinding::Prefer => tokio_postgres::config::ChannelBinding::Prefer,
            ChannelBinding::Require => tokio_postgres::config::ChannelBinding::Require,
        });
        config.ssl_mode(match self.sslmode {
            _ if all_unix => TpSslMode::Disable,
            SslMode::Disable => TpSslMode::Disable,
            SslMode::Prefer => TpSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => TpSslMode::Require,
        });
        config
    }
}

fn default_user() -> &'static str {
    static USER: OnceLock<String> = OnceLock::new();
    USER.get_or_init(|| {
        std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "postgres".to_string())
    })
}

/// A URL without the password, e.g.
/// `postgresql://ferry@db:5432/orders?sslmode=verify-full`, with defaults
/// resolved so a log line says exactly where ferry connects. It parses back to
/// the same `ConnInfo`, less the password.
impl fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "postgresql://{}@", encode(self.user()))?;
        for (i, endpoint) in self.endpoints().iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match &endpoint.host {
                Host::Tcp(name) if name.contains(':') => write!(f, "[{name}]")?,
                Host::Tcp(name) => f.write_str(&encode(name))?,
                Host::Unix(dir) => f.write_str(&encode(&dir.to_string_lossy()))?,
            }
            write!(f, ":{}", endpoint.port)?;
        }
        write!(f, "/{}?sslmode={}", encode(self.dbname()), self.sslmode)?;
        let paths =
            [("sslrootcert", &self.sslrootcert), ("sslcert", &self.sslcert), ("sslkey", &self.sslkey)];
        for (name, path) in paths {
            if let Some(path) = path {
                write!(f, "&{name}={}", encode(&path.to_string_lossy()))?;
            }
        }
        if self.channel_binding != ChannelBinding::default() {
            write!(f, "&channel_binding={}", self.channel_binding)?;
        }
        if self.target_session_attrs != TargetSessionAttrs::default() {
            write!(f, "&target_session_attrs={}", self.target_session_attrs)?;
        }
        if let Some(name) = &self.application_name {
            write!(f, "&application_name={}", encode(name))?;
        }
        if let Some(timeout) = self.connect_timeout {
            write!(f, "&connect_timeout={}", timeout.as_secs())?;
        }
        if let Some(options) = &self.options {
            write!(f, "&options={}", encode(options))?;
        }
        Ok(())
    }
}

impl FromStr for ConnInfo {
    type Err = ConnInfoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut draft = Draft::default();
        match url_rest(s) {
            Some(rest) => parse_url(rest, &mut draft)?,
            None => parse_key_values(s, &mut draft)?,
        }
        draft.finish()
    }
}

/// What the parameters said so far; later ones override earlier ones, as in libpq.
#[derive(Default)]
struct Draft {
    /// Host entries as written (decoded), before defaults.
    hosts: Option<Vec<String>>,
    /// Port entries; `None` is an empty entry (the default port).
    ports: Option<Vec<Option<u16>>>,
    user: Option<String>,
    password: Option<Secret>,
    dbname: Option<String>,
    sslmode: Option<SslMode>,
    sslrootcert: Option<PathBuf>,
    sslcert: Option<PathBuf>,
    sslkey: Option<PathBuf>,
    channel_binding: Option<ChannelBinding>,
    target_session_attrs: Option<TargetSessionAttrs>,
    application_name: Option<String>,
    connect_timeout: Option<Duration>,
    options: Option<String>,
}

impl Draft {
    /// Applies one parameter. Empty values mean "not set", as for libpq.
    fn set(&mut self, key: &str, value: String) -> Result<(), ConnInfoError> {
        let text = Some(value.clone()).filter(|v| !v.is_empty());
        match key {
            "host" => self.hosts = text.map(|v| v.split(',').map(str::to_string).collect()),
            "port" => {
                self.ports = match text {
                    None => None,
                    Some(v) => Some(v.split(',').map(parse_port_entry).collect::<Result<_, _>>()?),
                }
            }
            "user" => self.user = text,
            "password" => self.password = text.map(Secret),
            "dbname" => self.dbname = text,
            "sslmode" => self.sslmode = text.map(|v| v.parse()).transpose()?,
            "sslrootcert" => self.sslrootcert = text.map(PathBuf::from),
            "sslcert" => self.sslcert = text.map(PathBuf::from),
            "sslkey" => self.sslkey = text.map(PathBuf::from),
            "channel_binding" => self.channel_binding = text.map(|v| v.parse()).transpose()?,
            "target_session_attrs" => self.target_session_attrs = text.map(|v| v.parse()).transpose()?,
            "application_name" => self.application_name = text,
            "options" => self.options = text,
            "connect_timeout" => self.connect_timeout = parse_connect_timeout(&value)?,
            // The replication client asks for replication itself; a psql
            // string copied with replication=database must still be usable.
            "replication" => {}
            _ => return Err(unknown_parameter(key)),
        }
        Ok(())
    }

    fn finish(self) -> Result<ConnInfo, ConnInfoError> {
        let hosts: Vec<Host> = match self.hosts {
            Some(list) => list.iter().map(|h| Host::parse(h)).collect(),
            None => vec![Host::parse("")],
        };
        let ports = match self.ports {
            None => vec![DEFAULT_PORT; hosts.len()],
            Some(list) if list.len() == 1 => vec![list[0].unwrap_or(DEFAULT_PORT); hosts.len()],
            Some(list) if list.len() == hosts.len() => {
                list.iter().map(|p| p.unwrap_or(DEFAULT_PORT)).collect()
            }
            Some(list) => {
                return Err(ConnInfoError::PortCount { ports: list.len(), hosts: hosts.len() });
            }
        };
        let system_roots = self.sslrootcert.as_deref() == Some(Path::new(SYSTEM_ROOTS));
        let sslmode = match self.sslmode {
            Some(mode) if system_roots && mode != SslMode::VerifyFull => {
                return Err(ConnInfoError::WeakSslModeWithSystemRoots { mode });
            }
            Some(SslMode::VerifyCa) if self.sslrootcert.is_none() => {
                return Err(ConnInfoError::VerifyCaWithoutRoot);
            }
            Some(mode) => mode,
            None if system_roots => SslMode::VerifyFull,
            None => SslMode::default(),
        };
        let channel_binding = self.channel_binding.unwrap_or_default();
        if channel_binding == ChannelBinding::Require && sslmode == SslMode::Disable {
            return Err(ConnInfoError::ChannelBindingWithoutTls);
        }
        Ok(ConnInfo {
            hosts,
            ports,
            user: self.user,
            password: self.password,
            password_file: None,
            dbname: self.dbname,
            sslmode,
            sslrootcert: self.sslrootcert,
            sslcert: self.sslcert,
            sslkey: self.sslkey,
            channel_binding,
            target_session_attrs: self.target_session_attrs.unwrap_or_default(),
            application_name: self.application_name,
            connect_timeout: self.connect_timeout,
            options: self.options,
        })
    }
}

fn parse_port_entry(entry: &str) -> Result<Option<u16>, ConnInfoError> {
    if entry.is_empty() {
        return Ok(None);
    }
    match entry.parse::<u16>() {
        Ok(port) if port > 0 => Ok(Some(port)),
        _ => Err(ConnInfoError::InvalidValue {
            name: "port",
            value: entry.to_string(),
            expected: "a number from 1 to 65535 (or a comma-separated list of them)",
        }),
    }
}

/// Why `key` is refused, naming it only when it is a word: anything else
/// may be part of a password.
fn unknown_parameter(key: &str) -> ConnInfoError {
    if let Some(name) = LIBPQ_ONLY.iter().find(|name| **name == key) {
        ConnInfoError::UnsupportedParameter { name }
    } else if is_word(key) {
        ConnInfoError::UnknownParameter { name: key.to_string() }
    } else {
        ConnInfoError::NotAParameterName
    }
}

/// Whether `key` can be a parameter name: anything else may be part of a
/// password, and is never repeated.
fn is_word(key: &str) -> bool {
    !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// libpq's reading: whole seconds; zero or negative waits forever (kept as
/// zero); 1 means 2.
fn parse_connect_timeout(value: &str) -> Result<Option<Duration>, ConnInfoError> {
    if value.is_empty() {
        return Ok(None);
    }
    let seconds: i64 = value.trim().parse().map_err(|_| ConnInfoError::InvalidValue {
        name: "connect_timeout",
        value: value.to_string(),
        expected: "a whole number of seconds (0 waits forever)",
    })?;
    Ok(Some(if seconds > 0 { Duration::from_secs(seconds.max(2) as u64) } else { Duration::ZERO }))
}

/// The text after `postgresql://` or `postgres://`, if `s` is a URL.
fn url_rest(s: &str) -> Option<&str> {
    ["postgresql://", "postgres://"].iter().find_map(|prefix| {
        s.get(..prefix.len()).filter(|head| head.eq_ignore_ascii_case(prefix)).map(|_| &s[prefix.len()..])
    })
}

/// `[user[:password]@][host[:port][,...]][/dbname][?key=value&...]`
fn parse_url(rest: &str, draft: &mut Draft) -> Result<(), ConnInfoError> {
    // libpq ends the user info at the first "@" seen before any "/". A password
    // with a raw "@" or "/" would otherwise be read as a host or a port and end
    // up in an error message, so both mistakes are caught here first.
    let (before_query, query) = match rest.find('?') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let authority_end = before_query.find('/').unwrap_or(before_query.len());
    let authority = &before_query[..authority_end];
    let path = &before_query[authority_end..];

    let host_part = match authority.find('@') {
        Some(at) => {
            let (userinfo, hosts) = (&authority[..at], &authority[at + 1..]);
            if hosts.contains('@') || path.contains('@') {
                return Err(ConnInfoError::UnencodedAt);
            }
            let (user, password) = match userinfo.split_once(':') {
                Some((user, password)) => (user, Some(password)),
                None => (userinfo, None),
            };
            draft.set("user", decode(user, "user name")?)?;
            if let Some(password) = password {
                draft.password = Some(decode(password, "password")?).filter(|p| !p.is_empty()).map(Secret);
            }
            hosts
        }
        None if path.contains('@') => return Err(ConnInfoError::SlashInUserInfo),
        None => authority,
    };

    parse_url_hosts(host_part, draft)?;

    if let Some(dbname) = path.strip_prefix('/') {
        draft.set("dbname", decode(dbname, "database name")?)?;
    }

    if let Some(query) = query {
        let mut after_password = false;
        for (i, pair) in query.split('&').enumerate() {
            if pair.is_empty() {
                continue;
            }
            let Some((key, value)) = pair.split_once('=') else {
                return Err(if after_password {
                    ConnInfoError::PasswordNeedsEncoding
                } else {
                    ConnInfoError::QueryMissingEquals { index: i + 1 }
                });
            };
            let key = decode(key, "query parameter name")?;
            let value = decode(value, "query parameter value")?;
            let result = match (key.as_str(), value.as_str()) {
                // libpq's JDBC compatibility: ssl=true means sslmode=require.
                ("ssl", "true") => draft.set("sslmode", "require".to_string()),
                _ => draft.set(&key, value),
            };
            match result {
                Err(ConnInfoError::UnknownParameter { .. }) if after_password => {
                    return Err(ConnInfoError::PasswordNeedsEncoding);
                }
                other => other?,
            }
            after_password = key == "password";
        }
    }
    Ok(())
}

/// `host[:port],[ipv6]:port,...`; empty entries are the default host.
fn parse_url_hosts(text: &str, draft: &mut Draft) -> Result<(), ConnInfoError> {
    if text.is_empty() {
        return Ok(());
    }
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    let mut rest = text;
    loop {
        let (host, after) = if let Some(inside) = rest.strip_prefix('[') {
            let close = inside.find(']').ok_or(ConnInfoError::UnclosedIpv6)?;
            let address = &inside[..close];
            if address.is_empty() {
                return Err(ConnInfoError::EmptyIpv6);
            }
            let after = &inside[close + 1..];
            if let Some(found) = after.chars().next().filter(|c| !matches!(c, ':' | ',')) {
                return Err(ConnInfoError::AfterIpv6 { address: address.to_string(), found });
            }
            (decode(address, "host")?, after)
        } else {
            let end = rest.find([':', ',']).unwrap_or(rest.len());
            (decode(&rest[..end], "host")?, &rest[end..])
        };
        let (port, after) = match after.strip_prefix(':') {
            Some(port_and_more) => {
                let end = port_and_more.find(',').unwrap_or(port_and_more.len());
                let port = decode(&port_and_more[..end], "port")
                    .ok()
                    .and_then(|p| parse_port_entry(&p).ok())
                    .ok_or_else(|| ConnInfoError::BadUrlPort { host: host.clone() })?;
                (port, &port_and_more[end..])
            }
            None => (None, after),
        };
        hosts.push(host);
        ports.push(port);
        match after.strip_prefix(',') {
            Some(next) => rest = next,
            None => break,
        }
    }
    draft.hosts = Some(hosts);
    draft.ports = ports.iter().any(Option::is_some).then_some(ports);
    Ok(())
}

/// libpq's `key=value` form: pairs separated by whitespace, spaces allowed
/// around `=`, values optionally in single quotes, backslash escaping the next
/// character in either kind of value.
fn parse_key_values(s: &str, draft: &mut Draft) -> Result<(), ConnInfoError> {
    let mut chars = s.char_indices().peekable();
    let skip_space = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    // Whether the previous value was an unquoted password: if what follows it
    // is not a known parameter, the password probably had a space in it, and
    // the "parameter name" we are looking at is the rest of the password.
    let mut after_unquoted_password = false;
    loop {
        skip_space(&mut chars);
        let Some(&(start, _)) = chars.peek() else {
            return Ok(());
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        skip_space(&mut chars);
        if chars.next_if(|(_, c)| *c == '=').is_none() {
            return Err(if after_unquoted_password {
                ConnInfoError::PasswordNeedsQuoting
            } else {
                ConnInfoError::MissingEquals { position: start }
            });
        }
        if key.is_empty() {
            return Err(if after_unquoted_password {
                ConnInfoError::PasswordNeedsQuoting
            } else {
                ConnInfoError::EmptyKey { position: start }
            });
        }
        // Refused before its value is read, so that no error names it.
        if !is_word(&key) {
            return Err(if after_unquoted_password {
                ConnInfoError::PasswordNeedsQuoting
            } else {
                ConnInfoError::NotAParameterName
            });
        }
        skip_space(&mut chars);
        let mut value = String::new();
        let quoted = chars.next_if(|(_, c)| *c == '\'').is_some();
        if quoted {
            loop {
                match chars.next() {
                    None => {
                        return Err(if key == "password" || after_unquoted_password {
                            ConnInfoError::PasswordNeedsQuoting
                        } else {
                            ConnInfoError::UnterminatedQuote { key }
                        });
                    }
                    Some((_, '\\')) => match chars.next() {
                        Some((_, c)) => value.push(c),
                        None => {
                            return Err(if key == "password" || after_unquoted_password {
                                ConnInfoError::PasswordNeedsQuoting
                            } else {
                                ConnInfoError::UnterminatedQuote { key }
                            });
                        }
                    },
                    Some((_, '\'')) => break,
                    Some((_, c)) => value.push(c),
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    // As in libpq, a backslash at the very end is dropped.
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        match draft.set(&key, value) {
            Err(ConnInfoError::UnknownParameter { .. }) if after_unquoted_password => {
                return Err(ConnInfoError::PasswordNeedsQuoting);
            }
            other => other?,
        }
        after_unquoted_password = key == "password" && !quoted;
    }
}

/// Percent-decodes one URL component. `part` names it in errors; the text is
/// never quoted, since it may be (part of) a password.
fn decode(text: &str, part: &'static str) -> Result<String, ConnInfoError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .filter(|_| bytes[i + 1].is_ascii_hexdigit() && bytes[i + 2].is_ascii_hexdigit())
                .ok_or(ConnInfoError::BadPercentEncoding { part })?;
            if hex == 0 {
                return Err(ConnInfoError::NulInValue { part });
            }
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ConnInfoError::NotUtf8 { part })
}

/// Percent-encodes everything but RFC 3986's unreserved characters, which is
/// safe in every part of the URL.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ConnInfo {
        s.parse().unwrap_or_else(|e| panic!("{s:?} should parse, got: {e}"))
    }

    fn parse_err(s: &str) -> ConnInfoError {
        match s.parse::<ConnInfo>() {
            Ok(info) => panic!("{s:?} should be rejected, got {info:?}"),
            Err(e) => e,
        }
    }

    fn tcp(name: &str) -> Host {
        Host::Tcp(name.to_string())
    }

    /// The password must not show in any rendering of a value or an error.
    fn assert_hidden(password: &str, rendered: &[String]) {
        for text in rendered {
            assert!(!text.contains(password), "{text:?} leaks the password {password:?}");
        }
    }

    #[test]
    fn url_with_everything() {
        let info = parse(
            "postgresql://ferry:s3cret@db.internal:6432/orders?sslmode=verify-full\
             &sslrootcert=/etc/ferry/ca.pem&application_name=ferry-orders&connect_timeout=10\
             &options=-c%20statement_timeout%3D0",
        );
        assert_eq!(info.hosts, vec![tcp("db.internal")]);
        assert_eq!(info.ports, vec![6432]);
        assert_eq!(info.user(), "ferry");
        assert_eq!(info.password.as_ref().map(Secret::expose), Some("s3cret"));
        assert_eq!(info.dbname(), "orders");
        assert_eq!(info.sslmode, SslMode::VerifyFull);
        assert_eq!(info.sslrootcert, Some(PathBuf::from("/etc/ferry/ca.pem")));
        assert_eq!(info.application_name.as_deref(), Some("ferry-orders"));
        assert_eq!(info.connect_timeout, Some(Duration::from_secs(10)));
        assert_eq!(info.options.as_deref(), Some("-c statement_timeout=0"));
    }

    #[test]
    fn both_url_schemes_are_accepted() {
        assert_eq!(parse("postgres://u@h/d"), parse("postgresql://u@h/d"),);
        assert_eq!(parse("POSTGRESQL://u@h/d").hosts, vec![tcp("h")]);
    }

    #[test]
    fn percent_encoded_password_with_at_and_slash() {
        let info = parse("postgresql://ferry:p%40ss%2Fw%3Ard%25@db/orders");
        assert_eq!(info.password.as_ref().unwrap().expose(), "p@ss/w:rd%");
        assert_eq!(info.hosts, vec![tcp("db")]);
        assert_eq!(info.dbname(), "orders");
    }

    #[test]
    fn percent_decoding_applies_to_user_host_dbname_and_query() {
        let info = parse("postgresql://us%65r@%2Fvar%2Flib%2Fpostgresql/my%20db?application_name=a%26b");
        assert_eq!(info.user(), "user");
        assert_eq!(info.hosts, vec![Host::Unix("/var/lib/postgresql".into())]);
        assert_eq!(info.dbname(), "my db");
        assert_eq!(info.application_name.as_deref(), Some("a&b"));
    }

    #[test]
    fn password_may_contain_a_colon_raw() {
        let info = parse("postgresql://u:a:b@h/d");
        assert_eq!(info.user(), "u");
        assert_eq!(info.password.unwrap().expose(), "a:b");
    }

    #[test]
    fn multiple_hosts_with_ports_each() {
        let info = parse("postgresql://u@h1:5432,h2:5433,h3/d");
        assert_eq!(info.hosts, vec![tcp("h1"), tcp("h2"), tcp("h3")]);
        assert_eq!(info.ports, vec![5432, 5433, 5432]);
        let shown: Vec<String> = info.endpoints().iter().map(|e| e.to_string()).collect();
        assert_eq!(shown, ["h1:5432", "h2:5433", "h3:5432"]);
    }

    #[test]
    fn multiple_hosts_without_ports_use_the_default() {
        let info = parse("postgresql://h1,h2/d");
        assert_eq!(info.ports, vec![5432, 5432]);
    }

    #[test]
    fn ipv6_hosts() {
        let info = parse("postgresql://u@[::1]:5433,[2001:db8::7]/d");
        assert_eq!(info.hosts, vec![tcp("::1"), tcp("2001:db8::7")]);
        assert_eq!(info.ports, vec![5433, 5432]);
        assert_eq!(info.endpoints()[0].to_string(), "[::1]:5433");
        assert_eq!(parse("postgresql://[fe80::1]").hosts, vec![tcp("fe80::1")]);
    }

    #[test]
    fn malformed_ipv6_is_rejected() {
        assert_eq!(parse_err("postgresql://[::1/d"), ConnInfoError::UnclosedIpv6);
        assert_eq!(parse_err("postgresql://[]:5432/d"), ConnInfoError::EmptyIpv6);
        assert!(matches!(parse_err("postgresql://[::1]x/d"), ConnInfoError::AfterIpv6 { found: 'x', .. }));
    }

    #[test]
    fn host_in_query_parameter_selects_a_unix_socket() {
        let info = parse("postgresql:///orders?host=/var/run/postgresql&port=5433");
        assert_eq!(info.hosts, vec![Host::Unix("/var/run/postgresql".into())]);
        assert_eq!(
            info.endpoints()[0].host.socket_path(5433),
            Some(PathBuf::from("/var/run/postgresql/.s.PGSQL.5433"))
        );
        assert_eq!(info.endpoints()[0].to_string(), "/var/run/postgresql/.s.PGSQL.5433");
        assert_eq!(info.dbname(), "orders");
    }

    #[test]
    fn query_parameters_override_the_url() {
        let info = parse("postgresql://a@h1:1/d1?user=b&dbname=d2&host=h2,h3&port=7");
        assert_eq!(info.user(), "b");
        assert_eq!(info.dbname(), "d2");
        assert_eq!(info.hosts, vec![tcp("h2"), tcp("h3")]);
        assert_eq!(info.ports, vec![7, 7]);
    }

    #[test]
    fn password_in_query_parameter() {
        let info = parse("postgresql://u@h/d?password=p%26q");
        assert_eq!(info.password.unwrap().expose(), "p&q");
    }

    #[test]
    fn replication_parameter_is_ignored_and_ssl_true_means_require() {
        let info = parse("postgresql://u@h/d?replication=database&ssl=true");
        assert_eq!(info.sslmode, SslMode::Require);
        let info = parse("host=h replication=true");
        assert_eq!(info, parse("host=h"));
    }

    #[test]
    fn unknown_parameters_are_rejected_by_name() {
        let err = parse_err("postgresql://u@h/d?sslmod=require");
        assert_eq!(err, ConnInfoError::UnknownParameter { name: "sslmod".into() });
        assert!(err.to_string().contains("\"sslmod\""));
        assert!(err.to_string().contains("sslmode"), "lists what is accepted");
        let err = parse_err("host=h hostaddr=10.0.0.1");
        assert_eq!(err, ConnInfoError::UnsupportedParameter { name: "hostaddr" });
        assert!(err.to_string().contains("\"hostaddr\" is libpq's"), "{err}");
    }

    /// A libpq parameter ferry lacks, after an unquoted password, is named
    /// as such: it is no sign of a password with a space in it.
    #[test]
    fn a_libpq_parameter_after_a_password_is_named() {
        let err = parse_err("host=h user=u password=S3CRET keepalives=1");
        assert_eq!(err, ConnInfoError::UnsupportedParameter { name: "keepalives" });
        let err = parse_err("postgresql://u@h/d?password=S3CRET&gssencmode=disable");
        assert_eq!(err, ConnInfoError::UnsupportedParameter { name: "gssencmode" });
    }

    /// A URL of another scheme (SQLAlchemy's), or with text before its
    /// scheme, reads as key=value pairs whose first "key" holds the
    /// password: it must not be repeated.
    #[test]
    fn a_url_of_another_scheme_is_refused_without_repeating_it() {
        for url in [
            "postgresql+psycopg2://ferry:S3CRET@db/orders?sslmode=require",
            " postgresql://ferry:S3CRET@db/orders?sslmode=require",
            "ferry:S3CRET@db/orders?sslmode=require",
            "postgresql+psycopg2://u:S3CRET@h/d?options='-c x",
        ] {
            let err = parse_err(url);
            assert_eq!(err, ConnInfoError::NotAParameterName, "{url}");
            assert!(!err.to_string().contains("S3CRET"), "{err}");
            assert!(!format!("{err:?}").contains("S3CRET"), "{err:?}");
        }
    }

    #[test]
    fn url_defaults_match_libpq() {
        let info = parse("postgresql://");
        assert_eq!(info.hosts, vec![Host::Unix(DEFAULT_SOCKET_DIR.into())]);
        assert_eq!(info.ports, vec![DEFAULT_PORT]);
        assert_eq!(info.user, None);
        assert_eq!(info.user(), default_user());
        assert_eq!(info.dbname(), info.user());
        assert_eq!(info.sslmode, SslMode::Prefer);
        assert_eq!(info.password, None);

        let info = parse("postgresql://:5433/d");
        assert_eq!(info.hosts, vec![Host::Unix(DEFAULT_SOCKET_DIR.into())]);
        assert_eq!(info.ports, vec![5433]);
    }

    #[test]
    fn empty_string_means_all_defaults() {
        assert_eq!(parse(""), parse("postgresql://"));
        assert_eq!(parse("   "), parse("postgresql://"));
    }

    #[test]
    fn default_user_comes_from_the_environment() {
        let expected =
            std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "postgres".into());
        assert_eq!(default_user(), expected);
    }

    #[test]
    fn key_value_form() {
        let info = parse(
            "host=db port=6432 user=ferry password=s3cret dbname=orders sslmode=verify-ca \
             sslrootcert=/ca.pem sslcert=/c.pem sslkey=/k.pem application_name=f \
             connect_timeout=5 options='-c work_mem=64MB'",
        );
        assert_eq!(info.hosts, vec![tcp("db")]);
        assert_eq!(info.ports, vec![6432]);
        assert_eq!(info.user(), "ferry");
        assert_eq!(info.password.as_ref().unwrap().expose(), "s3cret");
        assert_eq!(info.dbname(), "orders");
        assert_eq!(info.sslmode, SslMode::VerifyCa);
        assert_eq!(info.sslrootcert, Some("/ca.pem".into()));
        assert_eq!(info.sslcert, Some("/c.pem".into()));
        assert_eq!(info.sslkey, Some("/k.pem".into()));
        assert_eq!(info.application_name.as_deref(), Some("f"));
        assert_eq!(info.connect_timeout, Some(Duration::from_secs(5)));
        assert_eq!(info.options.as_deref(), Some("-c work_mem=64MB"));
    }

    #[test]
    fn key_value_quoting_and_escapes() {
        let info = parse(r"host=localhost port=5432 password='a b\'c'");
        assert_eq!(info.password.unwrap().expose(), "a b'c");

        let info = parse(r"password='back\\slash' user='' dbname = 'my db'");
        assert_eq!(info.password.as_ref().unwrap().expose(), r"back\slash");
        assert_eq!(info.user, None, "an empty value means not set");
        assert_eq!(info.dbname(), "my db");

        let info = parse(r"password=un\ quoted\'s host=h");
        assert_eq!(info.password.unwrap().expose(), "un quoted's");

        let info = parse("password='' host=h");
        assert_eq!(info.password, None);

        let info = parse("\tpassword = 'x=y z'\n  host=h  ");
        assert_eq!(info.password.unwrap().expose(), "x=y z");
    }

    #[test]
    fn key_value_spaces_after_equals_are_skipped_like_libpq() {
        // libpq skips blanks after "=", so the value of host is "port=5432".
        let info = parse("host= port=5432");
        assert_eq!(info.hosts, vec![tcp("port=5432")]);
    }

    #[test]
    fn key_value_host_lists_and_unix_sockets() {
        let info = parse("host=/tmp,h2,[::1] port=5433,5434,");
        assert_eq!(info.hosts, vec![Host::Unix("/tmp".into()), tcp("h2"), tcp("::1")]);
        assert_eq!(info.ports, vec![5433, 5434, 5432]);
        assert_eq!(info.endpoints()[0].to_string(), "/tmp/.s.PGSQL.5433",);
    }

    #[test]
    fn port_count_must_be_one_or_one_per_host() {
        assert_eq!(parse_err("host=a,b,c port=1,2"), ConnInfoError::PortCount { ports: 2, hosts: 3 });
        assert_eq!(parse("host=a,b,c port=7").ports, vec![7, 7, 7]);
        assert!(matches!(
            parse_err("postgresql://u@h/d?host=a,b,c&port=1,2"),
            ConnInfoError::PortCount { .. }
        ));
    }

    #[test]
    fn invalid_values_are_named() {
        let err = parse_err("host=h port=543x");
        assert!(err.to_string().contains("port \"543x\""), "{err}");
        assert!(matches!(parse_err("port=0"), ConnInfoError::InvalidValue { name: "port", .. }));
        assert!(matches!(parse_err("port=70000"), ConnInfoError::InvalidValue { name: "port", .. }));
        let err = parse_err("sslmode=verify");
        assert!(err.to_string().contains("verify-full"), "{err}");
        assert!(matches!(
            parse_err("connect_timeout=soon"),
            ConnInfoError::InvalidValue { name: "connect_timeout", .. }
        ));
        assert!(matches!(parse_err("postgresql://u@h:abc/d"), ConnInfoError::BadUrlPort { .. }));
    }

    #[test]
    fn sslmode_spellings() {
        for (text, mode) in [
            ("disable", SslMode::Disable),
            ("allow", SslMode::Prefer),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            assert_eq!(text.parse::<SslMode>().unwrap(), mode);
        }
        assert_eq!(SslMode::VerifyCa.to_string(), "verify-ca");
    }

    #[test]
    fn connect_timeout_follows_libpq() {
        assert_eq!(parse("connect_timeout=0").connect_limit(), None);
        assert_eq!(parse("connect_timeout=-3").connect_limit(), None);
        assert_eq!(parse("connect_timeout=1").connect_limit(), Some(Duration::from_secs(2)));
        assert_eq!(parse("connect_timeout=45").connect_limit(), Some(Duration::from_secs(45)));
        assert_eq!(parse("host=db").connect_limit(), Some(DEFAULT_CONNECT_TIMEOUT));
    }

    #[test]
    fn sslrootcert_system_needs_verify_full() {
        let info = parse("host=h sslrootcert=system");
        assert_eq!(info.sslmode, SslMode::VerifyFull);
        assert!(info.uses_system_roots());
        assert_eq!(
            parse_err("host=h sslrootcert=system sslmode=require"),
            ConnInfoError::WeakSslModeWithSystemRoots { mode: SslMode::Require }
        );
    }

    #[test]
    fn verify_ca_needs_a_root_file() {
        assert_eq!(parse_err("host=h sslmode=verify-ca"), ConnInfoError::VerifyCaWithoutRoot);
        assert_eq!(parse("host=h sslmode=verify-ca sslrootcert=/ca.pem").sslmode, SslMode::VerifyCa);
        assert_eq!(parse("host=h sslmode=verify-full").sslmode, SslMode::VerifyFull);
    }

    #[test]
    fn channel_binding_is_prefer_unless_set_and_require_needs_tls() {
        assert_eq!(parse("host=h").channel_binding, ChannelBinding::Prefer);
        assert_eq!(parse("host=h channel_binding=require").channel_binding, ChannelBinding::Require);
        assert_eq!(
            parse("postgresql://h/d?channel_binding=disable").channel_binding,
            ChannelBinding::Disable
        );
        assert_eq!(
            parse_err("host=h sslmode=disable channel_binding=require"),
            ConnInfoError::ChannelBindingWithoutTls
        );
        assert!(matches!(
            parse_err("host=h channel_binding=yes"),
            ConnInfoError::InvalidValue { name: "channel_binding", .. }
        ));
    }

    #[test]
    fn target_session_attrs_takes_the_kinds_a_replicator_needs() {
        assert_eq!(parse("host=h").target_session_attrs, TargetSessionAttrs::Any);
        let info = parse("postgresql://h1,h2/d?target_session_attrs=read-write");
        assert_eq!(info.target_session_attrs, TargetSessionAttrs::ReadWrite);
        assert_eq!(
            parse(&info.to_string()).target_session_attrs,
            TargetSessionAttrs::ReadWrite,
            "shown: {info}"
        );
        assert_eq!(
            parse("host=h target_session_attrs=primary").target_session_attrs,
            TargetSessionAttrs::Primary
        );
        assert!(matches!(
            parse_err("host=h target_session_attrs=standby"),
            ConnInfoError::InvalidValue { name: "target_session_attrs", .. }
        ));

        let refusal = |attrs: TargetSessionAttrs, in_recovery, read_only| {
            attrs.refusal(Some(in_recovery), Some(read_only))
        };
        assert_eq!(refusal(TargetSessionAttrs::Any, "true", "on"), None);
        assert_eq!(refusal(TargetSessionAttrs::ReadWrite, "false", "off"), None);
        let read_only = refusal(TargetSessionAttrs::ReadWrite, "false", "on").unwrap();
        assert!(read_only.contains("read-only") && read_only.contains("read-write"), "{read_only}");
        assert!(refusal(TargetSessionAttrs::ReadWrite, "true", "on").unwrap().contains("standby"));
        assert_eq!(refusal(TargetSessionAttrs::Primary, "false", "on"), None);
        assert!(refusal(TargetSessionAttrs::Primary, "true", "on").is_some());
        assert!(TargetSessionAttrs::Primary.refusal(None, None).is_some(), "no answer: not taken");
    }

    #[test]
    fn malformed_key_value_strings() {
        assert_eq!(parse_err("host=h mydb"), ConnInfoError::MissingEquals { position: 7 });
        assert_eq!(parse_err("host=h =x"), ConnInfoError::EmptyKey { position: 7 });
        assert_eq!(
            parse_err("host=h application_name='x"),
            ConnInfoError::UnterminatedQuote { key: "application_name".into() }
        );
    }

    #[test]
    fn bad_percent_encoding_is_rejected() {
        assert_eq!(
            parse_err("postgresql://u:p%zz@h/d"),
            ConnInfoError::BadPercentEncoding { part: "password" }
        );
        assert_eq!(
            parse_err("postgresql://u@h/d%2"),
            ConnInfoError::BadPercentEncoding { part: "database name" }
        );
        assert_eq!(parse_err("postgresql://u@h/d%00"), ConnInfoError::NulInValue { part: "database name" });
        assert_eq!(parse_err("postgresql://u@h/%ff"), ConnInfoError::NotUtf8 { part: "database name" });
        assert!(matches!(parse_err("postgresql://u@h/d?a"), ConnInfoError::QueryMissingEquals { index: 1 }));
    }

    #[test]
    fn display_is_a_url_without_the_password() {
        let info = parse("postgresql://ferry:hunter2@db:5432/orders?sslmode=verify-full");
        assert_eq!(info.to_string(), "postgresql://ferry@db:5432/orders?sslmode=verify-full");
        let info = parse(
            "host=/var/run/postgresql,::1 user='a b' password=x dbname=d \
             sslrootcert=/ca.pem application_name=app connect_timeout=9 options='-c x=1'",
        );
        assert_eq!(
            info.to_string(),
            "postgresql://a%20b@%2Fvar%2Frun%2Fpostgresql:5432,[::1]:5432/d?sslmode=prefer\
             &sslrootcert=%2Fca.pem&application_name=app&connect_timeout=9&options=-c%20x%3D1"
        );
    }

    #[test]
    fn display_parses_back_to_the_same_target() {
        for text in [
            "postgresql://ferry:pw@db:6432,[::1]:5/orders?sslmode=require",
            "host=/tmp,h port=1,2 user=u dbname='x/y?z' sslmode=verify-ca sslrootcert=/r.pem \
             sslcert=/c sslkey=/k application_name='a&b' connect_timeout=3 options='-c a=b'",
            "host=h channel_binding=require",
            "",
        ] {
            let info = parse(text);
            let again = parse(&info.to_string());
            let expected = ConnInfo {
                password: None,
                user: Some(info.user().to_string()),
                dbname: Some(info.dbname().to_string()),
                ..info
            };
            assert_eq!(again, expected, "{text}");
        }
    }

    #[test]
    fn with_password_replaces_the_password() {
        let info = parse("postgresql://u:old@h/d").with_password(Secret::new("new"));
        assert_eq!(info.password.unwrap().expose(), "new");
    }

    #[test]
    fn debug_and_display_never_show_the_password() {
        let password = "Tr0ub4dor&3";
        let info = parse("postgresql://u:Tr0ub4dor%263@h/d");
        assert_eq!(info.password.as_ref().unwrap().expose(), password);
        let secret = info.password.clone().unwrap();
        assert_hidden(
            password,
            &[
                format!("{info:?}"),
                format!("{info:#?}"),
                info.to_string(),
                format!("{secret:?}"),
                secret.to_string(),
                format!("{:?}", info.to_tokio_postgres()),
            ],
        );
        assert!(format!("{info:?}").contains("***"));
    }

    #[test]
    fn errors_never_show_the_password() {
        // Each case is a realistic way of mistyping a string whose password is
        // "hunter2"; whatever the error, it must not quote it (or part of it).
        let cases = [
            // Raw "@" and "/" in a URL password.
            "postgresql://u:hun@ter2@h/d",
            "postgresql://u:hun/ter2@h/d",
            "postgresql://u:hunter2/x@h/d",
            // Raw "?" in a URL password: the password text would be a port.
            "postgresql://u:hunter2?x@h/d",
            // Raw "&" in a password given as a query parameter.
            "postgresql://h/d?password=hun&ter2",
            "postgresql://h/d?password=hun&ter2=x",
            // Bad percent-encoding in the password.
            "postgresql://u:hunter2%@h/d",
            "postgresql://u:hunter2%00@h/d",
            // Unquoted spaces in a key=value password.
            "host=h password=hun ter2",
            "host=h password=hun ter2=x",
            "host=h password=hun =ter2",
            // An unterminated quote.
            "host=h password='hunter2",
            "host=h password='hunter2\\",
            // A valid password with an unrelated error after it.
            "password=hunter2 port=x",
            "password=hunter2 sslmode=x",
            "password=hunter2 bogus=1",
            "postgresql://u:hunter2@h:x/d",
            "postgresql://u:hunter2@[::1/d",
            "postgresql://u:hunter2@h/d?sslmode=x",
        ];
        for case in cases {
            let err = parse_err(case);
            assert_hidden("hunter2", &[err.to_string(), format!("{err:?}")]);
            assert_hidden("ter2", &[err.to_string(), format!("{err:?}")]);
        }
    }

    /// A URL password with both a raw "@" and a raw "/" (`hu@n/ter2`) is
    /// read without error as host `n` and database `ter2@h/d`, so the
    /// password's tail shows up in every log line and error that names the
    /// connection (`Display`).
    #[test]
    fn a_password_with_a_raw_at_and_slash_is_refused() {
        let result = "postgresql://u:hu@n/ter2@h/d".parse::<ConnInfo>();
        match result {
            Err(err) => assert_hidden("ter2", &[err.to_string(), format!("{err:?}")]),
            Ok(info) => panic!("accepted, and shown as {info}"),
        }
    }

    #[test]
    fn password_mistakes_get_a_hint() {
        assert_eq!(parse_err("postgresql://u:hun@ter2@h/d"), ConnInfoError::UnencodedAt);
        assert_eq!(parse_err("postgresql://u:hun/ter2@h/d"), ConnInfoError::SlashInUserInfo);
        assert_eq!(parse_err("host=h password=hun ter2"), ConnInfoError::PasswordNeedsQuoting);
        assert_eq!(parse_err("postgresql://h/d?password=hun&ter2"), ConnInfoError::PasswordNeedsEncoding);
    }

    #[test]
    fn tokio_postgres_config_carries_everything() {
        use tokio_postgres::config::{Host as TpHost, SslMode as TpSslMode};

        let info = parse(
            "postgresql://u:pw@h1:1,h2:2/d?sslmode=verify-full&application_name=a\
             &connect_timeout=4&options=-c%20x%3D1",
        );
        let config = info.to_tokio_postgres();
        assert_eq!(config.get_hosts(), &[TpHost::Tcp("h1".into()), TpHost::Tcp("h2".into())]);
        assert_eq!(config.get_ports(), &[1, 2]);
        assert_eq!(config.get_user(), Some("u"));
        assert_eq!(config.get_password(), Some(&b"pw"[..]));
        assert_eq!(config.get_dbname(), Some("d"));
        assert_eq!(config.get_application_name(), Some("a"));
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(4)));
        assert_eq!(config.get_options(), Some("-c x=1"));
        assert_eq!(config.get_ssl_mode(), TpSslMode::Require);

        let config = parse("host=/run/pg sslmode=require").to_tokio_postgres();
        assert_eq!(config.get_hosts(), &[TpHost::Unix("/run/pg".into())]);
        assert_eq!(config.get_ssl_mode(), TpSslMode::Disable);
        assert_eq!(config.get_user(), Some(default_user()));
        assert_eq!(config.get_dbname(), Some(default_user()));

        let config = ConnInfo::default().to_tokio_postgres();
        assert_eq!(config.get_hosts(), &[TpHost::Unix(DEFAULT_SOCKET_DIR.into())]);
        assert_eq!(config.get_ports(), &[DEFAULT_PORT]);
    }
}
