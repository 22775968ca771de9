//! Runs `ferry run` as a child process with a config file, and helpers to
//! compare source and target tables.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub struct Daemon {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    /// Reads the child's stderr into `logs` until it closes.
    reader: Option<std::thread::JoinHandle<()>>,
    config_path: std::path::PathBuf,
    _dir: TempDir,
}

/// Tests run many daemons at once: unless a test picks the HTTP address,
/// each gets a port of its own from the kernel.
fn with_own_port(config: &str) -> String {
    if config.contains("[server]") {
        config.to_string()
    } else {
        format!("[server]\nlisten = \"127.0.0.1:0\"\n\n{config}")
    }
}

impl Daemon {
    /// Starts `ferry run` with `config` (TOML text).
    pub fn start(config: &str) -> Daemon {
        Daemon::start_with_env(config, &[])
    }

    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        std::fs::write(&path, with_own_port(config)).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
        command.arg("run").arg("--config").arg(&path).stdout(Stdio::null()).stderr(Stdio::piped());
        command.env("RUST_LOG", "info,ferry=debug");
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("starting ferry run");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&logs);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[ferry {}] {line}", std::process::id());
                sink.lock().unwrap().push(line);
            }
        });
        Daemon { child, logs, reader: Some(reader), config_path: path, _dir: dir }
    }

    /// The config file it runs with.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    /// Replaces its config file with `config` and sends SIGHUP.
    pub fn reload(&self, config: &str) {
        std::fs::write(&self.config_path, with_own_port(config)).unwrap();
        let status = Command::new("kill").arg("-HUP").arg(self.child.id().to_string()).status();
        assert!(status.unwrap().success());
    }

    /// Everything logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits until a log line contains `needle`.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.logs.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            assert!(Instant::now() < deadline, "ferry never logged {needle:?}; logs:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `needle` was logged `count` times in all.
    pub async fn wait_for_count(&self, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.logs().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "ferry never logged {needle:?} {count} times; logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends `signal` (e.g. "TERM") and waits for the exit; returns the exit
    /// code and how long the exit took.
    pub fn signal_and_wait(mut self, signal: &str) -> (Option<i32>, Duration) {
        let started = Instant::now();
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status();
        assert!(status.unwrap().success());
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.read_to_the_end();
                return (status.code(), started.elapsed());
            }
            assert!(started.elapsed() < Duration::from_secs(60), "ferry did not exit after SIG{signal}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to exit by itself and returns its exit code.
    pub async fn wait_for_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.read_to_the_end();
                return status.code();
            }
            assert!(Instant::now() < deadline, "ferry did not exit; logs:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Once the process has exited: waits until its last log lines are in
    /// `logs` (its stderr is read on another thread, which can lag behind).
    fn read_to_the_end(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.join().expect("the log reader does not panic");
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A subscription config for one source and one target database, with
/// `tables` as (from, to) and `extra` lines for the subscription.
pub fn config(source: &str, target: &str, name: &str, tables: &[(&str, &str)], extra: &str) -> String {
    let mut text = format!(
        "[sources.src]\nurl = \"{source}\"\n\n[targets.dst]\nurl = \"{target}\"\n\n\
         [[subscriptions]]\nname = \"{name}\"\nsource = \"src\"\ntarget = \"dst\"\n{extra}\n"
    );
    for (from, to) in tables {
        text.push_str(&format!("\n[[subscriptions.tables]]\nfrom = '{from}'\nto = '{to}'\n"));
    }
    text
}

/// A checksum of a table's contents in key order, over `columns`, each
/// value in its text form.
pub async fn checksum(
    client: &tokio_postgres::Client,
    table: &str,
    columns: &str,
    key: &str,
) -> (i64, String) {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY {key})), '') FROM (SELECT {columns} FROM {table}) t"
            ),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("checksum of {table}: {e}"));
    (row.get(0), row.get(1))
}

/// Waits until the target's copy of a table equals the source's, and fails
/// with both checksums if it never does.
pub async fn wait_for_same(
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    source_table: &str,
    target_table: &str,
    columns: &str,
    key: &str,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let expected = checksum(source, source_table, columns, key).await;
        let actual = checksum(target, target_table, columns, key).await;
        if expected == actual {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{target_table} never matched {source_table}: source (rows, md5) {expected:?}, target {actual:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
