//! The replication connection against real servers: authentication
//! methods, TLS modes, and typed server errors.

mod support;

use ferry::pg::PgError;
use ferry::pg::conninfo::ConnInfo;
use ferry::pg::names::QualifiedName;
use ferry::pg::replication::{ReplicationClient, SlotKind, StartOptions};
use ferry::snapshot::{SnapshotError, SnapshotReader};
use support::{Cluster, ClusterOptions};

const PASSWORD: &str = "s3cr3t-p@ss/word";

/// A cluster that demands `method` for TCP connections, with a role
/// `ferry` (REPLICATION) whose password is stored for that method.
async fn cluster_with_auth(method: &str) -> Cluster {
    let cluster = Cluster::start_with(ClusterOptions {
        hba: Some(format!(
            "local all all trust\nhost all all 127.0.0.1/32 {method}\nhost replication all 127.0.0.1/32 {method}\n"
        )),
        conf: vec![format!(
            "password_encryption = '{}'",
            if method == "md5" { "md5" } else { "scram-sha-256" }
        )],
        ..Default::default()
    });
    let client = cluster.client("postgres").await;
    client
        .batch_execute(&format!("CREATE ROLE ferry LOGIN REPLICATION PASSWORD '{PASSWORD}'"))
        .await
        .unwrap();
    cluster
}

fn url_with_password(cluster: &Cluster, password: &str) -> ConnInfo {
    let encoded: String = password
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    format!("postgresql://ferry:{encoded}@127.0.0.1:{}/postgres?sslmode=disable", cluster.port)
        .parse()
        .unwrap()
}

async fn assert_password_login_works(method: &str) {
    let cluster = cluster_with_auth(method).await;
    let mut client = ReplicationClient::connect(&url_with_password(&cluster, PASSWORD)).await.unwrap();
    let system = client.identify_system().await.unwrap();
    assert_eq!(system.dbname.as_deref(), Some("postgres"));
    let method_used = client
        .simple_query("SELECT usename FROM pg_stat_activity WHERE pid = pg_backend_pid()")
        .await
        .unwrap();
    assert_eq!(method_used.first("usename"), Some("ferry"));

    let error = ReplicationClient::connect(&url_with_password(&cluster, "wrong")).await.err().unwrap();
    let text = format!("{error} {error:?}");
    assert!(matches!(error, PgError::Auth { .. }), "expected an authentication error, got {text}");
    assert!(text.contains("28P01"), "the SQLSTATE should be reported: {text}");
    assert!(!text.contains("wrong") && !text.contains(PASSWORD), "no password in errors: {text}");
}

#[tokio::test]
async fn authenticates_with_scram_sha_256() {
    assert_password_login_works("scram-sha-256").await;
}

#[tokio::test]
async fn authenticates_with_md5() {
    assert_password_login_works("md5").await;
}

#[tokio::test]
async fn authenticates_with_a_cleartext_password() {
    assert_password_login_works("password").await;
}

#[tokio::test]
async fn a_missing_password_is_a_clear_error() {
    let cluster = cluster_with_auth("scram-sha-256").await;
    let info: ConnInfo = cluster.conninfo("ferry", "postgres").parse().unwrap();
    let error = ReplicationClient::connect(&info).await.err().unwrap();
    assert!(error.to_string().contains("none is configured"), "{error}");
}

#[tokio::test]
async fn connects_over_a_unix_socket() {
    let cluster = Cluster::start();
    let info: ConnInfo = format!(
        "host={} port={} user=postgres dbname=postgres",
        cluster.socket_dir().display(),
        cluster.port
    )
    .parse()
    .unwrap();
    let mut client = ReplicationClient::connect(&info).await.unwrap();
    assert!(client.identify_system().await.unwrap().timeline >= 1);
}

async fn tls_cluster() -> (Cluster, tempfile::TempDir) {
    tls_cluster_with_hba(None).await
}

/// A TLS cluster with `hba` as its `pg_hba.conf` (trust for all if none),
/// and the folder holding its CA's certificate as `ca.pem`.
async fn tls_cluster_with_hba(hba: Option<String>) -> (Cluster, tempfile::TempDir) {
    tls_cluster_serving(support::certs::generate(&["localhost"]), hba).await
}

async fn tls_cluster_serving(
    certs: support::certs::TestCerts,
    hba: Option<String>,
) -> (Cluster, tempfile::TempDir) {
    let cluster = Cluster::start_with(ClusterOptions {
        hba,
        conf: vec![
            "ssl = on".into(),
            "ssl_cert_file = 'server.crt'".into(),
            "ssl_key_file = 'server.key'".into(),
        ],
        files: vec![
            ("server.crt".into(), certs.server_cert_pem.into_bytes()),
            ("server.key".into(), certs.server_key_pem.into_bytes()),
        ],
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), certs.ca_pem).unwrap();
    (cluster, dir)
}

async fn ssl_in_use(client: &mut ReplicationClient) -> String {
    let result =
        client.simple_query("SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()").await.unwrap();
    result.first("ssl").unwrap().to_string()
}

#[tokio::test]
async fn tls_verify_full_accepts_the_right_host_and_rejects_a_wrong_one() {
    let (cluster, dir) = tls_cluster().await;
    let ca = dir.path().join("ca.pem");
    let info = |host: &str, mode: &str| -> ConnInfo {
        format!(
            "host={host} port={} user=postgres dbname=postgres sslmode={mode} sslrootcert={}",
            cluster.port,
            ca.display()
        )
        .parse()
        .unwrap()
    };

    let mut client = ReplicationClient::connect(&info("localhost", "verify-full")).await.unwrap();
    assert_eq!(ssl_in_use(&mut client).await, "true");

    // The certificate names "localhost", not 127.0.0.1.
    let error = ReplicationClient::connect(&info("127.0.0.1", "verify-full")).await.err().unwrap();
    assert!(matches!(error, PgError::Tls { .. }), "{error}");
    let text = error.to_string();
    assert!(text.contains("127.0.0.1") && text.to_lowercase().contains("not valid for"), "{text}");

    // verify-ca checks the chain only; require checks nothing but encrypts.
    let mut client = ReplicationClient::connect(&info("127.0.0.1", "verify-ca")).await.unwrap();
    assert_eq!(ssl_in_use(&mut client).await, "true");
    let mut client = ReplicationClient::connect(&info("127.0.0.1", "require")).await.unwrap();
    assert_eq!(ssl_in_use(&mut client).await, "true");
    let mut client = ReplicationClient::connect(&info("localhost", "disable")).await.unwrap();
    assert_eq!(ssl_in_use(&mut client).await, "false");
}

#[tokio::test]
async fn tls_verify_ca_rejects_a_certificate_from_another_authority() {
    let (cluster, _dir) = tls_cluster().await;
    let other = tempfile::tempdir().unwrap();
    let other_ca = other.path().join("other-ca.pem");
    std::fs::write(&other_ca, support::certs::generate(&["localhost"]).ca_pem).unwrap();
    let info: ConnInfo = format!(
        "host=localhost port={} user=postgres dbname=postgres sslmode=verify-ca sslrootcert={}",
        cluster.port,
        other_ca.display()
    )
    .parse()
    .unwrap();
    let error = ReplicationClient::connect(&info).await.err().unwrap();
    assert!(matches!(error, PgError::Tls { .. }), "{error}");
}

/// The self-signed certificate of PostgreSQL's documentation (a CA
/// naming its host only as its common name) is trusted when it is the
/// `sslrootcert` itself, as libpq trusts it, and its common name counts
/// for verify-full; any other certificate as the root still fails.
#[tokio::test]
async fn a_self_signed_certificate_naming_the_host_as_its_common_name_verifies_as_in_libpq() {
    let (cluster, dir) =
        tls_cluster_serving(support::certs::self_signed_by_common_name("localhost"), None).await;
    let root = dir.path().join("ca.pem");
    let info = |host: &str, mode: &str, root: &std::path::Path| -> ConnInfo {
        format!(
            "host={host} port={} user=postgres dbname=postgres sslmode={mode} sslrootcert={}",
            cluster.port,
            root.display()
        )
        .parse()
        .unwrap()
    };

    for (host, mode) in [("localhost", "verify-full"), ("127.0.0.1", "verify-ca"), ("127.0.0.1", "require")] {
        let mut client = ReplicationClient::connect(&info(host, mode, &root))
            .await
            .unwrap_or_else(|error| panic!("{mode} to {host}: {error}"));
        assert_eq!(ssl_in_use(&mut client).await, "true");
    }
    let sql = ferry::pg::tls::connect_sql(&info("localhost", "verify-full", &root)).await.unwrap();
    assert!(sql.query_one("SELECT 1", &[]).await.is_ok());

    let error = ReplicationClient::connect(&info("127.0.0.1", "verify-full", &root)).await.err().unwrap();
    assert!(error.to_string().to_lowercase().contains("not valid for"), "{error}");
    let other = dir.path().join("other.pem");
    std::fs::write(&other, support::certs::self_signed_by_common_name("localhost").ca_pem).unwrap();
    for mode in ["verify-ca", "verify-full"] {
        let error = ReplicationClient::connect(&info("localhost", mode, &other)).await.err().unwrap();
        assert!(matches!(error, PgError::Tls { .. }), "{mode}: {error}");
    }
}

#[tokio::test]
async fn sslmode_require_fails_when_the_server_has_no_tls() {
    let cluster = Cluster::start();
    let info: ConnInfo =
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=require", cluster.port)
            .parse()
            .unwrap();
    let error = ReplicationClient::connect(&info).await.err().unwrap();
    assert!(error.to_string().contains("does not accept TLS"), "{error}");
    // prefer falls back to an unencrypted connection.
    let info: ConnInfo =
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=prefer", cluster.port)
            .parse()
            .unwrap();
    ReplicationClient::connect(&info).await.unwrap();
}

/// As libpq does, a host that fails TLS is passed over for the next one,
/// by the replication connection as by the SQL ones.
#[tokio::test]
async fn a_host_without_tls_is_passed_over_for_the_next_one() {
    let plain = Cluster::start();
    let (tls, _dir) = tls_cluster().await;
    let info: ConnInfo = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=postgres sslmode=require",
        plain.port, tls.port
    )
    .parse()
    .unwrap();
    let mut client = ReplicationClient::connect(&info).await.unwrap();
    assert_eq!(ssl_in_use(&mut client).await, "true");
    let sql = ferry::pg::tls::connect_sql(&info).await.unwrap();
    let row = sql.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap();
    assert!(row.get::<_, bool>(0));
}

/// `target_session_attrs=read-write` passes over a host that takes no
/// writes (as a former primary does after a failover) for the next one,
/// on the replication connection and the SQL ones alike; `any` takes the
/// first host that answers, and a list of read-only hosts says why none did.
#[tokio::test]
async fn target_session_attrs_read_write_passes_over_a_read_only_host() {
    let read_only = Cluster::start_with(ClusterOptions {
        conf: vec!["default_transaction_read_only = on".into()],
        ..Default::default()
    });
    let writable = Cluster::start();
    let info = |ports: [u16; 2], attrs: &str| -> ConnInfo {
        format!(
            "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=postgres target_session_attrs={attrs}",
            ports[0], ports[1]
        )
        .parse()
        .unwrap()
    };
    let port_of_sql = |client: tokio_postgres::Client| async move {
        let row = client.query_one("SELECT inet_server_port()", &[]).await.unwrap();
        row.get::<_, i32>(0) as u16
    };
    let both = [read_only.port, writable.port];

    let sql = ferry::pg::tls::connect_sql(&info(both, "read-write")).await.unwrap();
    assert_eq!(port_of_sql(sql).await, writable.port);
    let mut replication = ReplicationClient::connect(&info(both, "read-write")).await.unwrap();
    let port = replication.simple_query("SELECT inet_server_port()::text AS port").await.unwrap();
    assert_eq!(port.first("port"), Some(writable.port.to_string().as_str()));

    let sql = ferry::pg::tls::connect_sql(&info(both, "any")).await.unwrap();
    assert_eq!(port_of_sql(sql).await, read_only.port);
    let sql = ferry::pg::tls::connect_sql(&info(both, "primary")).await.unwrap();
    assert_eq!(port_of_sql(sql).await, read_only.port, "read-only, but no standby");

    let none = [read_only.port, read_only.port];
    let error = ferry::pg::tls::connect_sql(&info(none, "read-write")).await.err().unwrap().to_string();
    assert!(error.contains("tried 2 hosts") && error.contains("read-only"), "{error}");
    let error = ReplicationClient::connect(&info(none, "read-write")).await.err().unwrap().to_string();
    assert!(error.contains("read-only"), "{error}");
}

/// `channel_binding=require` binds SCRAM to the TLS connection on the
/// replication connection and the SQL ones alike (the server checks the
/// binding data against its certificate, so a wrong hash fails), and
/// refuses a server that authenticates any other way.
#[tokio::test]
async fn channel_binding_require_binds_scram_to_tls_and_refuses_anything_else() {
    let hba = "local all all trust\n\
               hostssl all md5user 127.0.0.1/32 md5\n\
               hostssl replication md5user 127.0.0.1/32 md5\n\
               hostssl all all 127.0.0.1/32 scram-sha-256\n\
               hostssl replication all 127.0.0.1/32 scram-sha-256\n";
    let (cluster, _dir) = tls_cluster_with_hba(Some(hba.into())).await;
    let admin = cluster.client("postgres").await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE ferry LOGIN REPLICATION PASSWORD '{PASSWORD}';
             SET password_encryption = 'md5';
             CREATE ROLE md5user LOGIN REPLICATION PASSWORD '{PASSWORD}';"
        ))
        .await
        .unwrap();
    let info = |user: &str, binding: &str| -> ConnInfo {
        format!(
            "host=127.0.0.1 port={} user={user} password='{PASSWORD}' dbname=postgres sslmode=require \
             channel_binding={binding}",
            cluster.port
        )
        .parse()
        .unwrap()
    };

    let mut client = ReplicationClient::connect(&info("ferry", "require")).await.unwrap();
    assert!(client.identify_system().await.unwrap().timeline >= 1);
    ferry::pg::tls::connect_sql(&info("ferry", "require")).await.unwrap();

    for error in [
        ReplicationClient::connect(&info("md5user", "require")).await.err().unwrap().to_string(),
        ferry::pg::tls::connect_sql(&info("md5user", "require")).await.err().unwrap().to_string(),
    ] {
        assert!(error.contains("channel binding") || error.contains("channel_binding"), "{error}");
        assert!(!error.contains(PASSWORD), "no password in errors: {error}");
    }
    // Without the requirement, md5 is still accepted.
    ReplicationClient::connect(&info("md5user", "prefer")).await.unwrap();
    ferry::pg::tls::connect_sql(&info("md5user", "prefer")).await.unwrap();
}

#[tokio::test]
async fn a_slot_in_use_is_a_typed_error_with_its_sqlstate() {
    let cluster = Cluster::start();
    let client = cluster.client("postgres").await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION p FOR TABLE t")
        .await
        .unwrap();
    let info: ConnInfo = cluster.url("postgres").parse().unwrap();
    let mut first = ReplicationClient::connect(&info).await.unwrap();
    let slot = first.create_slot("busy", SlotKind::Permanent, false).await.unwrap();
    assert_eq!(slot.snapshot_name, None);
    let options = StartOptions {
        publications: vec!["p".into()],
        protocol_version: None,
        messages: true,
        streaming: true,
    };
    let _stream = first.start("busy", slot.consistent_point, &options).await.unwrap();

    let second = ReplicationClient::connect(&info).await.unwrap();
    let error = second.start("busy", slot.consistent_point, &options).await.err().unwrap();
    assert_eq!(error.sqlstate(), Some("55006"), "{error}");
    assert!(error.to_string().contains("busy"), "{error}");
}

#[tokio::test]
async fn creates_a_slot_with_an_exported_snapshot_and_drops_it() {
    let cluster = Cluster::start();
    let info: ConnInfo = cluster.url("postgres").parse().unwrap();
    let mut repl = ReplicationClient::connect(&info).await.unwrap();
    let slot = repl.create_slot("with_snapshot", SlotKind::Permanent, true).await.unwrap();
    let snapshot = slot.snapshot_name.expect("an exported snapshot");

    // The snapshot is usable from an ordinary session while the
    // replication connection stays idle.
    let client = cluster.client("postgres").await;
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{snapshot}'; COMMIT"
        ))
        .await
        .unwrap();

    repl.drop_slot("with_snapshot", true).await.unwrap();
    let left: i64 = client.query_one("SELECT count(*) FROM pg_replication_slots", &[]).await.unwrap().get(0);
    assert_eq!(left, 0);
    let error = repl.drop_slot("with_snapshot", false).await.err().unwrap();
    assert_eq!(error.sqlstate(), Some("42704"), "{error}");
}

/// A table rewritten (`ALTER TABLE ... TYPE`) or truncated after a snapshot
/// was exported reads as empty under it: the snapshot reader says so when
/// it takes the tables, instead of letting the copy find nothing.
#[tokio::test]
async fn a_snapshot_reader_refuses_tables_rewritten_since_the_snapshot() {
    let cluster = Cluster::start();
    let info: ConnInfo = cluster.url("postgres").parse().unwrap();
    let client = cluster.client("postgres").await;
    for table in ["kept", "rewritten", "truncated"] {
        client
            .batch_execute(&format!("CREATE TABLE {table} (id int); INSERT INTO {table} VALUES (1)"))
            .await
            .unwrap();
    }
    let mut repl = ReplicationClient::connect(&info).await.unwrap();
    let slot = repl.create_slot("rewrites", SlotKind::Permanent, true).await.unwrap();
    let snapshot = slot.snapshot_name.expect("an exported snapshot");
    client
        .batch_execute("ALTER TABLE rewritten ALTER COLUMN id TYPE bigint; TRUNCATE truncated")
        .await
        .unwrap();

    let name = |table: &str| -> QualifiedName { table.parse().unwrap() };
    let mut reader = SnapshotReader::open(&info, &snapshot).await.unwrap();
    reader.hold_unchanged(&[&name("kept")]).await.unwrap();
    for table in ["rewritten", "truncated"] {
        let mut reader = SnapshotReader::open(&info, &snapshot).await.unwrap();
        let error = reader.hold_unchanged(&[&name("kept"), &name(table)]).await.unwrap_err();
        assert!(matches!(&error, SnapshotError::ChangedSinceSnapshot(t) if t == table), "{error}");
    }
}

/// A connection cut during the TLS handshake (a server restarting) is a
/// lost connection, which a pipeline retries; a handshake the answer fails
/// (here not TLS at all) is a TLS error, which needs a person. Before, both
/// were TLS errors and a cut handshake stopped the pipeline for good; the
/// SQL connections (target, catalog) retried both.
#[tokio::test]
async fn a_handshake_cut_short_is_a_lost_connection_not_a_tls_error() {
    use ferry::pg::tls;
    use ferry::pipeline::PipelineError;
    for (reply, retryable) in [(&b""[..], true), (&b"HTTP/1.1 400 Bad Request\r\n\r\n"[..], false)] {
        let (info, server) = answering_tls_with(reply).await;
        let error = ReplicationClient::connect(&info).await.err().unwrap();
        server.await.unwrap();
        assert_eq!(matches!(error, PgError::Io { .. }), retryable, "{error}");
        assert_eq!(PipelineError::Pg(error).is_retryable(), retryable);

        let (info, server) = answering_tls_with(reply).await;
        let error = tls::connect_sql(&info).await.err().unwrap();
        server.await.unwrap();
        assert_eq!(error.is_tls_refusal(), !retryable, "{error}");
        assert_eq!(PipelineError::ConnectTarget(error).is_retryable(), retryable);
    }
}

/// A server for one connection that says yes to TLS, then answers the
/// client's hello with `reply` and hangs up; and a url to reach it.
async fn answering_tls_with(reply: &'static [u8]) -> (ConnInfo, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 8];
        socket.read_exact(&mut request).await.unwrap();
        socket.write_all(b"S").await.unwrap();
        let mut hello = [0u8; 5];
        socket.read_exact(&mut hello).await.unwrap();
        socket.write_all(reply).await.unwrap();
    });
    let info = format!("postgresql://ferry@127.0.0.1:{port}/postgres?sslmode=require").parse().unwrap();
    (info, server)
}
