//! Throwaway PostgreSQL clusters: `initdb` into a temporary folder,
//! `wal_level = logical`, reached only through a Unix socket in the same
//! folder (a free port number names it), started with `pg_ctl`. The
//! clusters trust whoever connects, so they listen on no TCP address: the
//! folder is the owner's alone, and another user of the machine cannot
//! reach the socket (over 127.0.0.1 anyone could log in as superuser). A [`Sandbox`] owns the folder and
//! every cluster in it; closing or dropping it stops the servers
//! (`pg_ctl stop -m fast`) and removes the folder, also on errors and panics.
//!
//! Only the PostgreSQL server binaries are needed. As root, the servers run
//! as the `postgres` user (PostgreSQL refuses to run as root).
//!
//! The commands run in their own process group, so a Ctrl-C in the terminal
//! reaches ferry (which then shuts down in order) and not the servers.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

/// The server user when running as root.
const SERVER_USER: &str = "postgres";
/// How long `pg_ctl` waits for a start or a stop.
const PG_CTL_TIMEOUT_SECONDS: &str = "60";
/// Attempts to start a server, each on a new free port (another process may
/// take the port between choosing it and the server binding it).
const START_ATTEMPTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found. Install them \
         (Debian/Ubuntu: apt-get install postgresql; Fedora: dnf install postgresql-server; \
         macOS: brew install postgresql) or set PG_BIN to the folder that holds them"
    )]
    BinariesNotFound,
    #[error("PG_BIN is set to {0}, but there is no initdb in that folder")]
    BadPgBin(PathBuf),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("{command} failed ({status}): {output}")]
    CommandFailed { command: String, status: String, output: String },
    #[error(
        "running as root, the servers must run as the `{SERVER_USER}` user, but handing {path} to it failed \
         (does the user exist? useradd --system {SERVER_USER}): {output}"
    )]
    NoServerUser { path: PathBuf, output: String },
    #[error("server {name} did not start after {START_ATTEMPTS} attempts; last error: {last}")]
    StartFailed { name: String, last: Box<ClusterError> },
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let context = context.into();
    move |source| ClusterError::Io { context, source }
}

/// Where the server binaries are: `PG_BIN`, `pg_config --bindir`, or the
/// newest `/usr/lib/postgresql/*/bin`.
pub fn find_pg_bin() -> Result<PathBuf, ClusterError> {
    if let Some(dir) = std::env::var_os("PG_BIN").map(PathBuf::from) {
        return if has_initdb(&dir) { Ok(dir) } else { Err(ClusterError::BadPgBin(dir)) };
    }
    pg_config_bindir().or_else(newest_debian_bindir).ok_or(ClusterError::BinariesNotFound)
}

fn has_initdb(dir: &Path) -> bool {
    dir.join("initdb").is_file()
}

fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    has_initdb(&dir).then_some(dir)
}

fn newest_debian_bindir() -> Option<PathBuf> {
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            has_initdb(&bin).then_some((version, bin))
        })
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, bin)| bin)
}

/// PostgreSQL refuses to run as root; as root, its commands run as the server user.
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// Gives `path` to the server user when running as root; nothing otherwise.
fn hand_to_server_user(path: &Path) -> Result<(), ClusterError> {
    if !running_as_root() {
        return Ok(());
    }
    let out = Command::new("chown")
        .arg(format!("{SERVER_USER}:{SERVER_USER}"))
        .arg(path)
        .output()
        .map_err(io_error("running chown"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ClusterError::NoServerUser { path: path.to_path_buf(), output: output_text(&out) })
    }
}

fn output_text(out: &Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    text.trim().to_string()
}

fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io_error("looking for a free port"))?;
    Ok(listener.local_addr().map_err(io_error("looking for a free port"))?.port())
}

/// The address of a running cluster in a [`Sandbox`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct ClusterAddr {
    pub name: String,
    pub port: u16,
    /// The folder holding the server's Unix socket.
    pub socket_dir: PathBuf,
}

impl ClusterAddr {
    /// A connection string for the superuser over the Unix socket, as a
    /// ferry config and psql take it.
    pub fn url(&self, dbname: &str) -> String {
        let folder = self.socket_dir.to_string_lossy().replace('\\', "\\\\").replace('\'', "\\'");
        format!("host='{folder}' port={} user={SERVER_USER} dbname={dbname}", self.port)
    }

    /// An ordinary SQL connection as the superuser over the Unix socket.
    pub async fn connect(&self, dbname: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut config = tokio_postgres::Config::new();
        config.host_path(&self.socket_dir).port(self.port).user(SERVER_USER).dbname(dbname);
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }
}

/// A running server; stopped by [`Sandbox`].
struct Cluster {
    addr: ClusterAddr,
    data: PathBuf,
}

/// A temporary folder with throwaway clusters in it. Dropping it stops them
/// and removes the folder; [`Sandbox::close`] does the same and reports
/// what went wrong.
pub struct Sandbox {
    bin: PathBuf,
    /// `None` once removed.
    dir: Option<TempDir>,
    clusters: Vec<Cluster>,
}

impl Sandbox {
    /// Finds the server binaries and creates the folder (in the system's
    /// temporary folder, named `{prefix}XXXXXX`).
    pub fn create(prefix: &str) -> Result<Sandbox, ClusterError> {
        let bin = find_pg_bin()?;
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .map_err(io_error("creating a temporary folder"))?;
        hand_to_server_user(dir.path())?;
        Ok(Sandbox { bin, dir: Some(dir), clusters: Vec::new() })
    }

    /// The folder everything lives in.
    pub fn path(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new(""), TempDir::path)
    }

    /// The folder of the server binaries in use.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Creates a cluster in the subfolder `name` and starts it.
    pub fn start_cluster(&mut self, name: &str) -> Result<ClusterAddr, ClusterError> {
        let cluster = self.create_and_start(name)?;
        let addr = cluster.addr.clone();
        self.clusters.push(cluster);
        Ok(addr)
    }

    /// Like [`Sandbox::start_cluster`] for several clusters at once, in
    /// parallel (`initdb` is the slow part). On error, the clusters that did
    /// start are kept, to be stopped with the rest.
    pub fn start_clusters(&mut self, names: &[&str]) -> Result<Vec<ClusterAddr>, ClusterError> {
        let started: Vec<Result<Cluster, ClusterError>> = std::thread::scope(|scope| {
            let this = &*self;
            let threads: Vec<_> =
                names.iter().map(|name| scope.spawn(move || this.create_and_start(name))).collect();
            threads.into_iter().map(|t| t.join().expect("a cluster start thread panicked")).collect()
        });
        let mut addrs = Vec::new();
        let mut first_error = None;
        for result in started {
            match result {
                Ok(cluster) => {
                    addrs.push(cluster.addr.clone());
                    self.clusters.push(cluster);
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(addrs), Err)
    }

    fn create_and_start(&self, name: &str) -> Result<Cluster, ClusterError> {
        let root = self.path().join(name);
        std::fs::create_dir(&root).map_err(io_error(format!("creating {}", root.display())))?;
        hand_to_server_user(&root)?;
        let data = root.join("data");
        self.init_data_dir(&data, &root)?;
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            let addr = ClusterAddr { name: name.to_string(), port: free_port()?, socket_dir: root.clone() };
            match self.pg_ctl_start(&data, &root, addr.port) {
                Ok(()) => return Ok(Cluster { addr, data }),
                Err(error) => {
                    let _ = self.pg_ctl_stop(&data); // in case it came up after all
                    last = Some(error);
                }
            }
        }
        let last = Box::new(last.expect("at least one attempt"));
        Err(ClusterError::StartFailed { name: name.to_string(), last })
    }

    /// `initdb` with trust authentication, then the settings logical
    /// replication needs, tuned for a throwaway cluster.
    fn init_data_dir(&self, data: &Path, socket_dir: &Path) -> Result<(), ClusterError> {
        let mut initdb = self.server_command("initdb");
        initdb.arg("-D").arg(data);
        initdb.args(["-U", SERVER_USER, "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"]);
        run(initdb, "initdb")?;
        let settings = format!(
            "\n# ferry throwaway cluster\nlisten_addresses = ''\nunix_socket_directories = '{}'\n\
             wal_level = logical\nmax_replication_slots = 10\nmax_wal_senders = 10\n\
             fsync = off\nfull_page_writes = off\nshared_buffers = 32MB\nmax_connections = 30\n",
            socket_dir.display()
        );
        append(&data.join("postgresql.conf"), &settings)
    }

    fn pg_ctl_start(&self, data: &Path, root: &Path, port: u16) -> Result<(), ClusterError> {
        let log = root.join("server.log");
        let mut pg_ctl = self.server_command("pg_ctl");
        pg_ctl.arg("-D").arg(data).arg("-l").arg(&log).arg("-o").arg(format!("-p {port}"));
        pg_ctl.args(["-w", "-t", PG_CTL_TIMEOUT_SECONDS, "start"]);
        run(pg_ctl, "pg_ctl start").map_err(|error| with_server_log(error, &log))
    }

    fn pg_ctl_stop(&self, data: &Path) -> Result<(), ClusterError> {
        let mut pg_ctl = self.server_command("pg_ctl");
        pg_ctl.arg("-D").arg(data).args(["-m", "fast", "-w", "-t", PG_CTL_TIMEOUT_SECONDS, "stop"]);
        run(pg_ctl, "pg_ctl stop")
    }

    /// A server binary's command: as the server user when we are root, and
    /// in its own process group so that a Ctrl-C in the terminal does not
    /// reach it.
    fn server_command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut command = if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", SERVER_USER, "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        command.process_group(0);
        command
    }

    /// Stops every server (fast shutdown) and removes the folder. Reports
    /// the first problem, after trying everything.
    pub fn close(mut self) -> Result<(), ClusterError> {
        self.tear_down()
    }

    fn tear_down(&mut self) -> Result<(), ClusterError> {
        let mut first_error = None;
        for cluster in std::mem::take(&mut self.clusters).into_iter().rev() {
            if let Err(error) = self.pg_ctl_stop(&cluster.data) {
                first_error.get_or_insert(error);
            }
        }
        if let Some(dir) = self.dir.take() {
            let path = dir.path().display().to_string();
            if let Err(error) = dir.close() {
                first_error
                    .get_or_insert(ClusterError::Io { context: format!("removing {path}"), source: error });
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Err(error) = self.tear_down() {
            eprintln!("cleaning up the throwaway clusters: {error}");
        }
    }
}

/// Runs a command and insists that it succeeds.
fn run(mut command: Command, what: &str) -> Result<(), ClusterError> {
    let out = command.output().map_err(io_error(format!("running {what}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(ClusterError::CommandFailed {
        command: what.to_string(),
        status: out.status.to_string(),
        output: output_text(&out),
    })
}

/// Adds the end of the server log, which says why, to a failed start.
fn with_server_log(error: ClusterError, log: &Path) -> ClusterError {
    let ClusterError::CommandFailed { command, status, output } = error else { return error };
    let server_log = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = server_log.lines().collect();
    let tail = lines[lines.len().saturating_sub(5)..].join("\n");
    ClusterError::CommandFailed { command, status, output: format!("{output}\nserver log:\n{tail}") }
}

fn append(path: &Path, text: &str) -> Result<(), ClusterError> {
    use std::io::Write;
    let context = || format!("appending to {}", path.display());
    let mut file = std::fs::OpenOptions::new().append(true).open(path).map_err(|e| io_error(context())(e))?;
    file.write_all(text.as_bytes()).map_err(|e| io_error(context())(e))
}
