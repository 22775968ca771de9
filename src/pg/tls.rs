//! TLS with libpq's `sslmode` meanings, on rustls, and ordinary SQL
//! connections that use it.
//!
//! rustls on its own only knows "check everything"; libpq's modes are weaker on
//! purpose and operators rely on them: `prefer`/`require` encrypt without
//! checking the certificate (servers with self-signed certificates),
//! `verify-ca` checks the chain but not the name (servers reached by an
//! address their certificate does not list), `verify-full` checks both. The
//! verifiers below give rustls those meanings. Every configuration uses the
//! ring provider explicitly, so nothing depends on a process-wide default
//! being installed first.

use std::error::Error as _;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Connection, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::VALUE_SETTINGS;
use super::cert_names::CertNames;
use super::conninfo::{ConnInfo, Endpoint, Host, SslMode, TargetSessionAttrs};

/// The ALPN protocol PostgreSQL 17+ expects; older servers ignore it.
const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Why a TLS configuration could not be built. Paths are named so the
/// operator knows which file to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} file {}: {error}", .path.display())]
    ReadFile { what: &'static str, path: PathBuf, error: std::io::Error },

    #[error("{what} file {} is not valid PEM: {error}", .path.display())]
    BadPem { what: &'static str, path: PathBuf, error: std::io::Error },

    #[error(
        "{what} file {} holds no certificate (expected PEM \"BEGIN CERTIFICATE\" blocks)",
        .path.display()
    )]
    NoCertificates { what: &'static str, path: PathBuf },

    #[error(
        "sslrootcert file {} holds no certificate usable as a trust anchor ({ignored} could not \
         be parsed)",
        .path.display()
    )]
    UnusableRoots { path: PathBuf, ignored: usize },

    #[error(
        "sslmode={mode} needs trusted root certificates, but the system store has none{detail}; \
         set sslrootcert to the CA's PEM file"
    )]
    NoSystemRoots { mode: SslMode, detail: String },

    #[error(
        "sslkey file {} holds no private key (expected PEM PKCS#8, PKCS#1 or SEC1)",
        .path.display()
    )]
    NoPrivateKey { path: PathBuf },

    #[error("sslcert is set but sslkey is not: a client certificate needs its private key")]
    CertWithoutKey,

    #[error("sslkey is set but sslcert is not: a private key needs its client certificate")]
    KeyWithoutCert,

    #[error(
        "client certificate {} with key {} was rejected: {error}",
        .cert.display(),
        .key.display()
    )]
    ClientAuth { cert: PathBuf, key: PathBuf, error: rustls::Error },

    #[error("cannot build the certificate verifier: {0}")]
    Verifier(rustls::client::VerifierBuilderError),

    #[error("cannot set up TLS: {0}")]
    Rustls(rustls::Error),

    #[error("{host:?} cannot be used as a TLS server name")]
    InvalidServerName { host: String },
}

/// The rustls configuration for `info.sslmode`, or `None` for `disable`.
///
/// * `prefer`, `require`: encryption only; any certificate is accepted, but the
///   handshake signatures are still checked (so the peer holds the key of the
///   certificate it sent). As in libpq, either with an `sslrootcert` file
///   checks the chain like `verify-ca`. Unlike libpq's `prefer`, a server
///   that offers TLS and fails the check is refused, not retried without
///   TLS: the failure is what a man in the middle would cause.
/// * `verify-ca`: chain checked against the `sslrootcert` file (required:
///   see [`crate::pg::conninfo::ConnInfoError::VerifyCaWithoutRoot`]), host name not checked.
/// * `verify-full`: chain and host name checked.
///
/// The checks follow libpq where it differs from the web's rules (see
/// [`LibpqVerifier`]): a self-signed certificate in the `sslrootcert` file
/// is trusted as it stands, and a host name may be the certificate's
/// common name.
///
/// Roots come from `sslrootcert` (a PEM file), or the system store when it is
/// unset or `system`. A client certificate is presented when `sslcert` and
/// `sslkey` are set.
pub fn client_config(info: &ConnInfo) -> Result<Option<Arc<ClientConfig>>, TlsError> {
    if info.sslmode == SslMode::Disable {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = verifier(info, &provider)?;
    let client_auth = client_auth(info)?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client_auth {
        Some((cert_path, key_path, certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(|error| TlsError::ClientAuth { cert: cert_path, key: key_path, error })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Some(Arc::new(config)))
}

/// The name a server's certificate is checked against: an IP address when
/// `host` is one (brackets allowed), a DNS name otherwise.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    ServerName::try_from(bare.to_string()).map_err(|_| TlsError::InvalidServerName { host: host.to_string() })
}

/// The `tls-server-end-point` channel binding data of a server certificate
/// (RFC 5929): the certificate's hash, by the hash function of its
/// signature, MD5 and SHA-1 raised to SHA-256. `None` for a signature
/// without a fixed hash (Ed25519, RSA-PSS), as for PostgreSQL's own client
/// built on some libraries: no channel binding then.
pub fn server_end_point(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    use sha2::{Digest, Sha256, Sha384, Sha512};
    use x509_cert::der::Decode;
    use x509_cert::der::oid::db::rfc5912::{
        ECDSA_WITH_SHA_256, ECDSA_WITH_SHA_384, ECDSA_WITH_SHA_512, MD_5_WITH_RSA_ENCRYPTION,
        SHA_1_WITH_RSA_ENCRYPTION, SHA_256_WITH_RSA_ENCRYPTION, SHA_384_WITH_RSA_ENCRYPTION,
        SHA_512_WITH_RSA_ENCRYPTION,
    };

    let parsed = x509_cert::Certificate::from_der(cert.as_ref()).ok()?;
    match parsed.signature_algorithm.oid {
        MD_5_WITH_RSA_ENCRYPTION
        | SHA_1_WITH_RSA_ENCRYPTION
        | SHA_256_WITH_RSA_ENCRYPTION
        | ECDSA_WITH_SHA_256 => Some(Sha256::digest(cert).to_vec()),
        SHA_384_WITH_RSA_ENCRYPTION | ECDSA_WITH_SHA_384 => Some(Sha384::digest(cert).to_vec()),
        SHA_512_WITH_RSA_ENCRYPTION | ECDSA_WITH_SHA_512 => Some(Sha512::digest(cert).to_vec()),
        _ => None,
    }
}

/// The certificate verifier for `info.sslmode` (not `disable`).
fn verifier(
    info: &ConnInfo,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
    let has_root_file = info.sslrootcert.is_some() && !info.uses_system_roots();
    let check_name = match info.sslmode {
        SslMode::Disable => return Ok(Arc::new(EncryptionOnly::new(provider))),
        SslMode::Prefer | SslMode::Require if !has_root_file => {
            return Ok(Arc::new(EncryptionOnly::new(provider)));
        }
        SslMode::Prefer | SslMode::Require | SslMode::VerifyCa => false,
        SslMode::VerifyFull => true,
    };
    let (roots, pinned) = load_roots(info)?;
    let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(TlsError::Verifier)?;
    Ok(Arc::new(LibpqVerifier { inner, pinned, check_name }))
}

/// The trusted roots, and the certificates of the `sslrootcert` file
/// (none for the system's roots).
fn load_roots(info: &ConnInfo) -> Result<(Arc<RootCertStore>, Vec<CertificateDer<'static>>), TlsError> {
    let mut roots = RootCertStore::empty();
    let mut pinned = Vec::new();
    match &info.sslrootcert {
        Some(path) if !info.uses_system_roots() => {
            let certs = read_certs("sslrootcert", path)?;
            pinned.clone_from(&certs);
            let (added, ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsError::UnusableRoots { path: path.clone(), ignored });
            }
        }
        _ => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let detail = found.errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
                return Err(TlsError::NoSystemRoots {
                    mode: info.sslmode,
                    detail: if detail.is_empty() { detail } else { format!(" ({detail})") },
                });
            }
        }
    }
    Ok((Arc::new(roots), pinned))
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::ReadFile { what, path: path.to_path_buf(), error })
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(what, path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::BadPem { what, path: path.to_path_buf(), error })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates { what, path: path.to_path_buf() });
    }
    Ok(certs)
}

type ClientAuth = (PathBuf, PathBuf, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn client_auth(info: &ConnInfo) -> Result<Option<ClientAuth>, TlsError> {
    let (cert_path, key_path) = match (&info.sslcert, &info.sslkey) {
        (None, None) => return Ok(None),
        (Some(_), None) => return Err(TlsError::CertWithoutKey),
        (None, Some(_)) => return Err(TlsError::KeyWithoutCert),
        (Some(cert), Some(key)) => (cert, key),
    };
    let certs = read_certs("sslcert", cert_path)?;
    let pem = read_file("sslkey", key_path)?;
    let key = rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|error| TlsError::BadPem { what: "sslkey", path: key_path.clone(), error })?
        .ok_or_else(|| TlsError::NoPrivateKey { path: key_path.clone() })?;
    Ok(Some((cert_path.clone(), key_path.clone(), certs, key)))
}

/// `prefer`/`require`: accepts any certificate, as libpq does, but checks the
/// handshake signatures with the provider's algorithms, so the connection is
/// encrypted to whoever holds the key of the certificate presented.
#[derive(Debug)]
struct EncryptionOnly {
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl EncryptionOnly {
    fn new(provider: &CryptoProvider) -> Self {
        EncryptionOnly { algorithms: provider.signature_verification_algorithms }
    }
}

impl ServerCertVerifier for EncryptionOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `verify-ca` and `verify-full` (and `prefer`/`require` with a root
/// file), with libpq's rules where they differ from the web's, which
/// `WebPkiServerVerifier` follows:
///
/// * A certificate that is itself in the `sslrootcert` file is trusted as
///   it stands, though it says it is a CA: the self-signed server
///   certificate of PostgreSQL's documentation (`openssl req -x509`) is.
///   Its validity dates are still checked.
/// * Without a DNS or IP name among its subject alternative names, a
///   certificate is checked against its subject's common name.
///
/// `WebPkiServerVerifier` checks the name after the chain, so a name error
/// from it means the chain (issuer, validity, key usage) already passed.
#[derive(Debug)]
struct LibpqVerifier {
    inner: Arc<WebPkiServerVerifier>,
    /// The certificates of the `sslrootcert` file (empty with the system's).
    pinned: Vec<CertificateDer<'static>>,
    /// `verify-full`: the host name is checked too.
    check_name: bool,
}

impl ServerCertVerifier for LibpqVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Ok(verified) => return Ok(verified),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(_) if self.pinned.iter().any(|root| root.as_ref() == end_entity.as_ref()) => {
                within_validity(end_entity, now)?;
            }
            Err(error) => return Err(error),
        }
        let names = CertNames::read(end_entity);
        if !self.check_name || names.include(server_name) {
            return Ok(ServerCertVerified::assertion());
        }
        Err(CertificateError::NotValidForNameContext {
            expected: server_name.to_owned(),
            presented: names.listed(),
        }
        .into())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Checks that `now` lies within a trusted certificate's validity dates.
fn within_validity(cert: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
    use x509_cert::der::Decode;
    let parsed =
        x509_cert::Certificate::from_der(cert.as_ref()).map_err(|_| CertificateError::BadEncoding)?;
    let validity = &parsed.tbs_certificate.validity;
    let now = now.as_secs();
    if now < validity.not_before.to_unix_duration().as_secs() {
        return Err(CertificateError::NotValidYet.into());
    }
    if now > validity.not_after.to_unix_duration().as_secs() {
        return Err(CertificateError::Expired.into());
    }
    Ok(())
}

/// Why an ordinary SQL connection could not be opened. `target` is the
/// connection string without its password ([`ConnInfo`]'s `Display`).
#[derive(Debug, thiserror::Error)]
pub enum SqlConnectError {
    /// TLS could not be configured; no host was contacted.
    #[error("cannot connect to {target}: {error}")]
    Tls { target: String, error: TlsError },

    /// Every host tried failed; `attempts` is in the order tried and never
    /// empty. An authentication failure ends the search early, as in libpq.
    #[error("cannot connect to {target}: {}", Attempts(.attempts))]
    Failed { target: String, attempts: Vec<Attempt> },
}

impl SqlConnectError {
    /// The SQLSTATE the server answered with on the last attempt, if it answered.
    pub fn sqlstate(&self) -> Option<&SqlState> {
        match self {
            SqlConnectError::Failed { attempts, .. } => match &attempts.last()?.failure {
                AttemptFailure::Server { code, .. } => Some(code),
                _ => None,
            },
            SqlConnectError::Tls { .. } => None,
        }
    }

    /// Whether TLS itself failed: it could not be set up (a root or key file
    /// missing or bad), or the last host's handshake was refused (see
    /// [`is_refusal`]). Either needs a person, as on the replication
    /// connection.
    pub fn is_tls_refusal(&self) -> bool {
        match self {
            SqlConnectError::Tls { .. } => true,
            SqlConnectError::Failed { attempts, .. } => match &attempts.last().map(|a| &a.failure) {
                Some(AttemptFailure::Connect(error)) => {
                    std::iter::successors(error.source(), |e| (*e).source())
                        .filter_map(|e| e.downcast_ref::<std::io::Error>())
                        .any(is_refusal)
                }
                _ => false,
            },
        }
    }
}

/// Whether a TLS handshake failed because rustls refused it (a
/// certificate, a protocol version), which needs a person, rather than
/// because the connection broke half way (a server restarting), which a
/// retry gets past.
pub fn is_refusal(error: &std::io::Error) -> bool {
    error.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
}

/// One host tried by [`connect_sql`] and how it failed.
#[derive(Debug)]
pub struct Attempt {
    pub endpoint: Endpoint,
    pub failure: AttemptFailure,
}

#[derive(Debug)]
pub enum AttemptFailure {
    /// The server answered with an error (authentication, unknown database,
    /// too many connections, starting up, ...).
    Server { code: SqlState, message: String, detail: Option<String>, hint: Option<String> },
    /// The host could not be reached, or the TLS handshake failed.
    Connect(tokio_postgres::Error),
    /// `connect_timeout` passed before the connection was ready.
    Timeout(Duration),
    /// The server is not of the kind `target_session_attrs` asks for.
    SessionAttrs(String),
}

impl fmt::Display for AttemptFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptFailure::Server { code, message, hint, .. } => {
                write!(f, "server error {}: {message}", code.code())?;
                if let Some(hint) = hint {
                    write!(f, " (hint: {hint})")?;
                }
                Ok(())
            }
            AttemptFailure::Connect(error) => {
                // tokio-postgres puts the useful part ("Connection refused",
                // the certificate problem) in the source chain.
                write!(f, "{error}")?;
                let mut source = error.source();
                while let Some(cause) = source {
                    write!(f, ": {cause}")?;
                    source = cause.source();
                }
                Ok(())
            }
            AttemptFailure::Timeout(after) => {
                write!(f, "no connection after {}s (connect_timeout)", after.as_secs())
            }
            AttemptFailure::SessionAttrs(refusal) => f.write_str(refusal),
        }
    }
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.endpoint, self.failure)
    }
}

struct Attempts<'a>(&'a [Attempt]);

impl fmt::Display for Attempts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.len() > 1 {
            write!(f, "tried {} hosts: ", self.0.len())?;
        }
        for (i, attempt) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{attempt}")?;
        }
        Ok(())
    }
}

/// Opens an ordinary SQL connection (not a replication one) with TLS per
/// `sslmode`, trying the hosts in order like libpq. The connection task is
/// spawned on the current runtime; if it ends with an error, that is logged
/// (with the redacted target) and the client's calls fail.
pub async fn connect_sql(info: &ConnInfo) -> Result<Client, SqlConnectError> {
    let info = &info.with_current_password();
    let target = info.to_string();
    let tls = client_config(info).map_err(|error| SqlConnectError::Tls { target: target.clone(), error })?;
    let mut attempts = Vec::new();
    for endpoint in info.endpoints() {
        match connect_endpoint(info, &endpoint, tls.as_ref(), &target).await {
            Ok(client) => return Ok(client),
            Err(failure) => {
                let authentication_failed = matches!(
                    &failure,
                    AttemptFailure::Server { code, .. } if code.code().starts_with("28")
                );
                attempts.push(Attempt { endpoint, failure });
                if authentication_failed {
                    break;
                }
            }
        }
    }
    Err(SqlConnectError::Failed { target, attempts })
}

async fn connect_endpoint(
    info: &ConnInfo,
    endpoint: &Endpoint,
    tls: Option<&Arc<ClientConfig>>,
    target: &str,
) -> Result<Client, AttemptFailure> {
    let single = ConnInfo { hosts: vec![endpoint.host.clone()], ports: vec![endpoint.port], ..info.clone() };
    let config = single.to_tokio_postgres();
    let connecting = async {
        let connected = match (&endpoint.host, tls) {
            // PostgreSQL offers no TLS on Unix sockets.
            (Host::Tcp(_), Some(tls)) => {
                let (client, connection) =
                    config.connect(MakeRustlsConnect::new(ClientConfig::clone(tls))).await?;
                spawn_connection(connection, target, endpoint);
                client
            }
            _ => {
                let (client, connection) = config.connect(NoTls).await?;
                spawn_connection(connection, target, endpoint);
                client
            }
        };
        let settings: String =
            VALUE_SETTINGS.iter().map(|(name, value)| format!("SET {name} = '{value}';")).collect();
        connected.batch_execute(&settings).await?;
        match session_attrs_refusal(info, &connected).await? {
            None => Ok(connected),
            Some(refusal) => Err(AttemptFailure::SessionAttrs(refusal)),
        }
    };
    match info.connect_limit() {
        // tokio-postgres' own timeout covers only the TCP connect; libpq's
        // covers the whole startup, TLS and authentication included.
        Some(after) => {
            tokio::time::timeout(after, connecting).await.unwrap_or(Err(AttemptFailure::Timeout(after)))
        }
        None => connecting.await,
    }
}

/// Why the server of `client` is not of the kind `target_session_attrs`
/// asks for, if it is not.
async fn session_attrs_refusal(
    info: &ConnInfo,
    client: &Client,
) -> Result<Option<String>, tokio_postgres::Error> {
    if info.target_session_attrs == TargetSessionAttrs::Any {
        return Ok(None);
    }
    let answer = client.simple_query(TargetSessionAttrs::QUESTION).await?;
    let row = answer.iter().find_map(|message| match message {
        tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    });
    let column = |name| row.and_then(|row| row.get(name));
    Ok(info.target_session_attrs.refusal(column("in_recovery"), column("read_only")))
}

impl From<tokio_postgres::Error> for AttemptFailure {
    fn from(error: tokio_postgres::Error) -> Self {
        match error.as_db_error() {
            Some(db) => AttemptFailure::Server {
                code: db.code().clone(),
                message: db.message().to_string(),
                detail: db.detail().map(str::to_string),
                hint: db.hint().map(str::to_string),
            },
            None => AttemptFailure::Connect(error),
        }
    }
}

fn spawn_connection<S, T>(connection: Connection<S, T>, target: &str, endpoint: &Endpoint)
where
    Connection<S, T>: Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let server = target.to_string();
    let endpoint = endpoint.to_string();
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%server, %endpoint, %error, "PostgreSQL connection ended with an error");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    };
    use std::io::Write as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A CA and a server certificate it issued for localhost and 127.0.0.1.
    struct Pki {
        ca_pem: String,
        server_cert: CertificateDer<'static>,
        server_key: KeyPair,
    }

    fn pki(ca_name: &str) -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, ca_name);
        ca_params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let mut server_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        server_params.distinguished_name.push(DnType::CommonName, "localhost");
        let server_cert = server_params.signed_by(&server_key, &ca).unwrap();
        Pki { ca_pem: ca.pem(), server_cert: server_cert.der().clone(), server_key }
    }

    fn pem_file(contents: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(contents.as_bytes()).unwrap();
        file
    }

    fn info(sslmode: SslMode, rootcert: Option<&Path>) -> ConnInfo {
        ConnInfo {
            hosts: vec![Host::Tcp("localhost".into())],
            sslmode,
            sslrootcert: rootcert.map(Path::to_path_buf),
            ..ConnInfo::default()
        }
    }

    fn ring() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn check(
        verifier: &Arc<dyn ServerCertVerifier>,
        cert: &CertificateDer<'static>,
        host: &str,
    ) -> Result<ServerCertVerified, rustls::Error> {
        verifier.verify_server_cert(cert, &[], &server_name(host).unwrap(), &[], UnixTime::now())
    }

    #[test]
    fn verify_full_accepts_the_right_name_and_rejects_a_wrong_one() {
        let pki = pki("ferry test CA");
        let roots = pem_file(&pki.ca_pem);
        let verifier = verifier(&info(SslMode::VerifyFull, Some(roots.path())), &ring()).unwrap();
        check(&verifier, &pki.server_cert, "localhost").unwrap();
        check(&verifier, &pki.server_cert, "127.0.0.1").unwrap();

        let err = check(&verifier, &pki.server_cert, "db.example.com").unwrap_err();
        assert!(err.to_string().contains("db.example.com"), "the error should name the host: {err}");
        assert!(check(&verifier, &pki.server_cert, "10.1.2.3").is_err());
    }

    #[test]
    fn verify_full_rejects_a_certificate_from_another_ca() {
        let ours = pki("ours");
        let theirs = pki("theirs");
        let roots = pem_file(&ours.ca_pem);
        let verifier = verifier(&info(SslMode::VerifyFull, Some(roots.path())), &ring()).unwrap();
        let err = check(&verifier, &theirs.server_cert, "localhost").unwrap_err();
        assert!(matches!(err, rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)));
    }

    #[test]
    fn verify_ca_ignores_the_name_but_not_the_issuer() {
        let ours = pki("ours");
        let theirs = pki("theirs");
        let roots = pem_file(&ours.ca_pem);
        let verifier = verifier(&info(SslMode::VerifyCa, Some(roots.path())), &ring()).unwrap();
        check(&verifier, &ours.server_cert, "localhost").unwrap();
        check(&verifier, &ours.server_cert, "db.example.com").unwrap();
        check(&verifier, &ours.server_cert, "10.1.2.3").unwrap();

        // Another CA's certificate fails on the chain, whatever the name.
        for host in ["localhost", "db.example.com"] {
            let err = check(&verifier, &theirs.server_cert, host).unwrap_err();
            assert!(
                matches!(err, rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)),
                "{host}: {err}"
            );
        }
    }

    #[test]
    fn prefer_and_require_accept_any_certificate() {
        let theirs = pki("theirs");
        for mode in [SslMode::Prefer, SslMode::Require] {
            let verifier = verifier(&info(mode, None), &ring()).unwrap();
            check(&verifier, &theirs.server_cert, "db.example.com").unwrap();
        }
    }

    #[test]
    fn prefer_and_require_with_a_root_file_check_the_chain_like_libpq() {
        let ours = pki("ours");
        let theirs = pki("theirs");
        let roots = pem_file(&ours.ca_pem);
        for mode in [SslMode::Prefer, SslMode::Require] {
            let verifier = verifier(&info(mode, Some(roots.path())), &ring()).unwrap();
            check(&verifier, &ours.server_cert, "db.example.com").unwrap();
            assert!(check(&verifier, &theirs.server_cert, "localhost").is_err(), "{mode:?}");
        }
    }

    #[test]
    fn disable_has_no_tls_config() {
        assert!(client_config(&info(SslMode::Disable, None)).unwrap().is_none());
    }

    #[test]
    fn configs_offer_the_postgresql_alpn() {
        let config = client_config(&info(SslMode::Require, None)).unwrap().unwrap();
        assert_eq!(config.alpn_protocols, vec![b"postgresql".to_vec()]);
    }

    #[test]
    fn unreadable_or_empty_root_files_are_named() {
        let missing = Path::new("/nonexistent/ferry/root.crt");
        let err = client_config(&info(SslMode::VerifyFull, Some(missing))).unwrap_err();
        assert!(matches!(err, TlsError::ReadFile { .. }));
        assert!(err.to_string().contains("/nonexistent/ferry/root.crt"), "{err}");

        let empty = pem_file("");
        let err = client_config(&info(SslMode::VerifyCa, Some(empty.path()))).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificates { .. }));
        assert!(err.to_string().contains(&empty.path().display().to_string()), "{err}");

        let garbage = pem_file("-----BEGIN CERTIFICATE-----\nnot base64!\n");
        let err = client_config(&info(SslMode::VerifyCa, Some(garbage.path()))).unwrap_err();
        assert!(err.to_string().contains(&garbage.path().display().to_string()), "{err}");
    }

    #[test]
    fn client_certificates_need_both_files() {
        let pki = pki("ours");
        let cert = pem_file(
            &rcgen::CertificateParams::new(vec!["ferry".to_string()])
                .unwrap()
                .self_signed(&pki.server_key)
                .unwrap()
                .pem(),
        );
        let key = pem_file(&pki.server_key.serialize_pem());

        let mut with_cert = info(SslMode::Require, None);
        with_cert.sslcert = Some(cert.path().to_path_buf());
        assert!(matches!(client_config(&with_cert).unwrap_err(), TlsError::CertWithoutKey));

        let mut with_key = info(SslMode::Require, None);
        with_key.sslkey = Some(key.path().to_path_buf());
        assert!(matches!(client_config(&with_key).unwrap_err(), TlsError::KeyWithoutCert));

        let mut both = with_cert.clone();
        both.sslkey = Some(key.path().to_path_buf());
        let config = client_config(&both).unwrap().unwrap();
        assert!(config.client_auth_cert_resolver.has_certs());

        let mut key_is_a_cert = with_cert;
        key_is_a_cert.sslkey = Some(cert.path().to_path_buf());
        assert!(matches!(client_config(&key_is_a_cert).unwrap_err(), TlsError::NoPrivateKey { .. }));
    }

    #[test]
    fn server_names_for_dns_names_and_addresses() {
        assert!(matches!(server_name("db.internal").unwrap(), ServerName::DnsName(_)));
        assert!(matches!(server_name("127.0.0.1").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(server_name("::1").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(server_name("[2001:db8::1]").unwrap(), ServerName::IpAddress(_)));
        let err = server_name("not a host!").unwrap_err();
        assert!(err.to_string().contains("not a host!"));
    }

    /// Runs a real handshake over an in-memory pipe against a rustls server
    /// holding `pki`'s server certificate, with the client config for `info`.
    async fn handshake(pki: &Pki, info: &ConnInfo, host: &str) -> Result<(), std::io::Error> {
        let server_config = rustls::ServerConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![pki.server_cert.clone()],
                PrivateKeyDer::try_from(pki.server_key.serialize_der()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        let connector = tokio_rustls::TlsConnector::from(client_config(info).unwrap().unwrap());
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let mut stream = acceptor.accept(server_io).await?;
            stream.write_all(b"S").await?;
            stream.flush().await?;
            Ok::<_, std::io::Error>(())
        });
        let mut stream = connector.connect(server_name(host).unwrap(), client_io).await?;
        let mut byte = [0u8];
        stream.read_exact(&mut byte).await?;
        assert_eq!(&byte, b"S");
        server.await.unwrap()
    }

    #[tokio::test]
    async fn handshakes_follow_the_sslmode() {
        let ours = pki("ours");
        let theirs = pki("theirs");
        let roots = pem_file(&ours.ca_pem);
        let full = info(SslMode::VerifyFull, Some(roots.path()));
        let ca = info(SslMode::VerifyCa, Some(roots.path()));
        let require = info(SslMode::Require, None);

        handshake(&ours, &full, "localhost").await.unwrap();
        handshake(&ours, &full, "127.0.0.1").await.unwrap();
        let err = handshake(&ours, &full, "db.example.com").await.unwrap_err();
        assert!(err.to_string().contains("db.example.com"), "{err}");
        handshake(&ours, &ca, "db.example.com").await.unwrap();
        assert!(handshake(&theirs, &ca, "localhost").await.is_err());
        handshake(&theirs, &require, "db.example.com").await.unwrap();
    }

    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn unreachable_hosts_are_all_reported_without_the_password() {
        let (a, b) = (closed_port(), closed_port());
        let info: ConnInfo =
            format!("postgresql://ferry:hunter2@127.0.0.1:{a},127.0.0.1:{b}/orders?sslmode=disable")
                .parse()
                .unwrap();
        let err = connect_sql(&info).await.unwrap_err();
        let SqlConnectError::Failed { attempts, .. } = &err else {
            panic!("expected Failed, got {err:?}");
        };
        assert_eq!(attempts.len(), 2);
        assert!(matches!(attempts[0].failure, AttemptFailure::Connect(_)));
        let text = err.to_string();
        assert!(text.contains(&info.to_string()), "{text}");
        assert!(text.contains(&format!("127.0.0.1:{a}")), "{text}");
        assert!(text.contains(&format!("127.0.0.1:{b}")), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!format!("{err:?}").contains("hunter2"));
        assert_eq!(err.sqlstate(), None);
    }

    #[tokio::test]
    async fn missing_socket_directory_is_an_attempt_failure() {
        let info: ConnInfo = "host=/nonexistent/ferry port=5999".parse().unwrap();
        let err = connect_sql(&info).await.unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ferry/.s.PGSQL.5999"), "{err}");
    }

    #[tokio::test]
    async fn tls_setup_errors_name_the_target_not_the_password() {
        let info: ConnInfo =
            "host=db user=u password=hunter2 sslmode=verify-full sslrootcert=/nonexistent/ca.pem"
                .parse()
                .unwrap();
        let err = connect_sql(&info).await.unwrap_err();
        assert!(matches!(err, SqlConnectError::Tls { .. }));
        let text = err.to_string();
        assert!(text.contains("postgresql://u@db:5432/"), "{text}");
        assert!(text.contains("/nonexistent/ca.pem"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    /// A server that refuses every startup with an authentication error, so
    /// the SQLSTATE path can be tested without PostgreSQL.
    async fn refusing_server() -> (u16, tokio::task::JoinHandle<usize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut served = 0;
            while let Ok(Ok((mut socket, _))) =
                tokio::time::timeout(Duration::from_millis(500), listener.accept()).await
            {
                let mut length = [0u8; 4];
                socket.read_exact(&mut length).await.unwrap();
                let mut startup = vec![0u8; u32::from_be_bytes(length) as usize - 4];
                socket.read_exact(&mut startup).await.unwrap();
                let mut fields = Vec::new();
                for (tag, value) in [
                    (b'S', "FATAL"),
                    (b'V', "FATAL"),
                    (b'C', "28P01"),
                    (b'M', "password authentication failed for user \"ferry\""),
                ] {
                    fields.push(tag);
                    fields.extend_from_slice(value.as_bytes());
                    fields.push(0);
                }
                fields.push(0);
                let mut message = vec![b'E'];
                message.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
                message.extend_from_slice(&fields);
                socket.write_all(&message).await.unwrap();
                served += 1;
            }
            served
        });
        (port, task)
    }

    #[tokio::test]
    async fn authentication_failure_reports_sqlstate_and_stops_the_host_search() {
        let (port, server) = refusing_server().await;
        let other = closed_port();
        let info: ConnInfo =
            format!("postgresql://ferry:hunter2@127.0.0.1:{port},127.0.0.1:{other}/orders?sslmode=disable")
                .parse()
                .unwrap();
        let err = connect_sql(&info).await.unwrap_err();
        assert_eq!(err.sqlstate(), Some(&SqlState::INVALID_PASSWORD));
        let SqlConnectError::Failed { attempts, .. } = &err else {
            panic!("expected Failed, got {err:?}");
        };
        assert_eq!(attempts.len(), 1, "the second host is not tried");
        let text = err.to_string();
        assert!(text.contains("28P01"), "{text}");
        assert!(text.contains("password authentication failed"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(server.await.unwrap(), 1);
    }

    #[tokio::test]
    async fn connect_timeout_covers_the_whole_startup() {
        // A server that accepts and then says nothing.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _silent = tokio::spawn(async move {
            let (_socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let info = ConnInfo {
            hosts: vec![Host::Tcp("127.0.0.1".into())],
            ports: vec![port],
            sslmode: SslMode::Disable,
            connect_timeout: Some(Duration::from_millis(200)),
            ..ConnInfo::default()
        };
        let err = connect_sql(&info).await.unwrap_err();
        let SqlConnectError::Failed { attempts, .. } = &err else {
            panic!("expected Failed, got {err:?}");
        };
        assert!(matches!(attempts[0].failure, AttemptFailure::Timeout(_)));
        assert!(err.to_string().contains("connect_timeout"), "{err}");
    }
}
