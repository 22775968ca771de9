//! Runs `ferry tail` as a child process and reads its JSON lines.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

pub struct TailProcess {
    child: Child,
    lines: mpsc::Receiver<Value>,
    stderr: mpsc::Receiver<String>,
}

impl TailProcess {
    /// Starts `ferry tail` with `args` and waits until it streams.
    pub fn start(args: &[&str]) -> TailProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("tail")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting ferry tail");
        let (line_tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                if line_tx.send(value).is_err() {
                    break;
                }
            }
        });
        let (err_tx, stderr) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                eprintln!("[ferry] {line}");
                if err_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut tail = TailProcess { child, lines, stderr };
        tail.wait_for_log("streaming changes");
        tail
    }

    /// Waits until a log line contains `needle`, and returns it.
    pub fn wait_for_log(&mut self, needle: &str) -> String {
        loop {
            match self.stderr.recv_timeout(Duration::from_secs(180)) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(_) => panic!("ferry tail never logged {needle:?}; exit: {:?}", self.child.try_wait()),
            }
        }
    }

    /// The next `n` JSON lines; fails the test if they do not come.
    pub fn take(&self, n: usize) -> Vec<Value> {
        (0..n)
            .map(|i| {
                self.lines
                    .recv_timeout(Duration::from_secs(120))
                    .unwrap_or_else(|_| panic!("ferry tail printed only {i} of {n} expected lines"))
            })
            .collect()
    }

    /// The next line.
    pub fn next(&self) -> Value {
        self.take(1).remove(0)
    }

    /// Sends SIGINT and returns whether the process exited successfully.
    pub fn interrupt(mut self) -> bool {
        let status = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        panic!("ferry tail did not stop within 30 s of SIGINT");
    }
}

impl Drop for TailProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
