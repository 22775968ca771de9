//! Throwaway PostgreSQL clusters for tests: `initdb` into a temporary
//! folder, `wal_level = logical`, a free port, started with `pg_ctl` and
//! stopped and removed when dropped (also when the test panics). As root the
//! server runs as the `postgres` user, since PostgreSQL refuses root.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod certs;
pub mod daemon;
pub mod endpoints;
pub mod tail;
pub mod types;
pub mod validate;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use tempfile::TempDir;

/// Where the server binaries are (see `ferry::demo::cluster::find_pg_bin`).
pub fn pg_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| ferry::demo::cluster::find_pg_bin().unwrap_or_else(|e| panic!("{e}")))
}

use ferry::demo::cluster::running_as_root;

/// A server binary's command, run as `postgres` when we are root.
fn pg_command(program: &str) -> Command {
    let path = pg_bin().join(program);
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

/// Runs a server binary and insists that it succeeds.
fn run_pg(program: &str, args: &[&str]) -> Output {
    let out = pg_command(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs SQL on a test database and fails the test with the server's
/// message when it errors.
/// The server process reading the slot named like `slot` (SQL LIKE):
/// its walsender.
pub async fn walsender_of(client: &tokio_postgres::Client, slot: &str) -> i32 {
    let row = client
        .query_one("SELECT active_pid FROM pg_replication_slots WHERE slot_name LIKE $1", &[&slot])
        .await
        .unwrap();
    row.get(0)
}

/// Sends `signal` (`STOP`, `CONT`, ...) to process `pid`, as `kill` does.
pub fn send_signal(signal: &str, pid: i32) {
    let sent = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
    assert!(sent.unwrap().success(), "kill -{signal} {pid}");
}

pub async fn exec(client: &tokio_postgres::Client, sql: &str) {
    if let Err(e) = client.batch_execute(sql).await {
        panic!("{sql}: {}", e.as_db_error().map_or(e.to_string(), |d| d.message().to_string()));
    }
}

/// The replication origins a database tracks, by name.
pub async fn origins(client: &tokio_postgres::Client) -> Vec<String> {
    let rows = client.query("SELECT roname::text FROM pg_replication_origin ORDER BY 1", &[]).await.unwrap();
    rows.iter().map(|row| row.get(0)).collect()
}

/// How a cluster is set up before it starts.
#[derive(Default, Clone)]
pub struct ClusterOptions {
    /// `pg_hba.conf` lines replacing the default (trust for everything).
    pub hba: Option<String>,
    /// Extra `postgresql.conf` lines.
    pub conf: Vec<String>,
    /// Files to put into the data folder before start (e.g. TLS keys), as
    /// (name, contents); they are made readable by the server only.
    pub files: Vec<(String, Vec<u8>)>,
}

pub struct Cluster {
    pub port: u16,
    dir: TempDir,
}

impl Cluster {
    pub fn start() -> Cluster {
        Cluster::start_with(ClusterOptions::default())
    }

    pub fn start_with(options: ClusterOptions) -> Cluster {
        let dir = tempfile::Builder::new().prefix("ferry-pg-").tempdir().unwrap();
        if running_as_root() {
            let status = Command::new("chown").arg("postgres:postgres").arg(dir.path()).status().unwrap();
            assert!(status.success(), "chown of the cluster folder failed");
        }
        let data = dir.path().join("data");
        let data_str = data.to_str().unwrap();
        run_pg(
            "initdb",
            &["-D", data_str, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync", "--locale=C.UTF-8"],
        );
        let port = free_port();
        let mut conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             wal_level = logical\nmax_replication_slots = 20\nmax_wal_senders = 20\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             shared_buffers = 32MB\nlogical_decoding_work_mem = 64kB\nmax_connections = 50\n\
             wal_sender_timeout = 60s\n",
            dir.path().display()
        );
        for line in &options.conf {
            conf.push_str(line);
            conf.push('\n');
        }
        append(&data.join("postgresql.conf"), &conf);
        if let Some(hba) = &options.hba {
            write_as_server(&data.join("pg_hba.conf"), hba.as_bytes());
        }
        for (name, contents) in &options.files {
            write_as_server(&data.join(name), contents);
        }
        let cluster = Cluster { port, dir };
        cluster.pg_ctl_start();
        cluster
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The folder holding the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    fn pg_ctl_start(&self) {
        let data = self.data_dir();
        let log = self.dir.path().join("server.log");
        run_pg(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap(), "-w", "-t", "60", "start"],
        );
    }

    /// Stops the server (fast shutdown) and starts it again.
    pub fn restart(&self) {
        self.stop();
        self.pg_ctl_start();
    }

    /// Stops the server (fast shutdown): clients see their connections end.
    pub fn stop(&self) {
        run_pg("pg_ctl", &["-D", self.data_dir().to_str().unwrap(), "-m", "fast", "-w", "stop"]);
    }

    /// Stops the server as a crash would (immediate shutdown: no
    /// checkpoint, connections cut); the next start runs crash recovery.
    pub fn crash(&self) {
        run_pg("pg_ctl", &["-D", self.data_dir().to_str().unwrap(), "-m", "immediate", "-w", "stop"]);
    }

    /// Starts a stopped server again on the same port.
    pub fn start_again(&self) {
        self.pg_ctl_start();
    }

    /// A key=value connection string over TCP as `user`.
    pub fn conninfo(&self, user: &str, dbname: &str) -> String {
        format!("host=127.0.0.1 port={} user={user} dbname={dbname}", self.port)
    }

    /// A URL for the superuser over TCP.
    pub fn url(&self, dbname: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{dbname}?sslmode=disable", self.port)
    }

    /// An ordinary SQL client (superuser, Unix socket), for setting up data
    /// and reading it back.
    pub async fn client(&self, dbname: &str) -> tokio_postgres::Client {
        let mut config = tokio_postgres::Config::new();
        config.host_path(self.socket_dir()).port(self.port).user("postgres").dbname(dbname);
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test cluster on port {}: {e}", self.port));
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// The server's log, for test failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Immediate: nothing in a throwaway cluster is worth a checkpoint.
        let data = self.data_dir();
        let _ = pg_command("pg_ctl")
            .args(["-D", data.to_str().unwrap(), "-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// Writes a file the server can read and nobody else can (TLS keys must be
/// private or the server refuses them).
fn write_as_server(path: &Path, contents: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    if running_as_root() {
        let status = Command::new("chown").arg("postgres:postgres").arg(path).status().unwrap();
        assert!(status.success());
    }
}
