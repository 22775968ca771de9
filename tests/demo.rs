//! `ferry demo` end to end: the binary starts its own clusters, runs, checks
//! its copies and leaves nothing behind, whether the time runs out or it is
//! interrupted.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Far more than a demo of a few seconds needs, even on a busy machine.
const DEADLINE: Duration = Duration::from_secs(240);

/// A running `ferry demo`, its standard output arriving line by line.
struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Demo {
    fn start(args: &[&str]) -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("demo")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting ferry demo");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("[demo] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Demo { child, lines, stdout: Vec::new(), stderr }
    }

    /// Reads output until a line contains `needle`; returns that line.
    fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stdout.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!("ferry demo never printed {needle:?}; output:\n{}", self.stdout.join("\n"));
                }
            }
        }
    }

    /// Sends the demo `signal` (`INT`, `HUP`, ...).
    fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status();
        assert!(status.unwrap().success());
    }

    /// Waits for the exit (killing the demo past the deadline); returns the
    /// status, all of standard output and standard error.
    fn finish(mut self) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("ferry demo did not exit within {DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        self.stdout.extend(self.lines.iter());
        (status, self.stdout.join("\n"), self.stderr.join().unwrap())
    }
}

/// The temporary folder the demo says it uses.
fn temp_folder(stdout: &str) -> PathBuf {
    let line = stdout.lines().find(|l| l.contains("temporary folder")).expect("the demo names its folder");
    let path = line.split_whitespace().nth(2).expect("a path after 'temporary folder'");
    assert!(path.contains("ferry-demo-"), "unexpected folder {path}");
    PathBuf::from(path)
}

/// Processes whose command line mentions `path` (the servers name their data
/// folder in it).
fn processes_using(path: &Path) -> Vec<String> {
    let needle = path.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(&needle))
        .collect()
}

fn assert_consistent_and_cleaned_up(status: ExitStatus, stdout: &str, stderr: &str) {
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(status.code(), Some(0), "{context}");
    for direction in ["customers db → copy in orders db", "orders db → copy in customers db"] {
        let line = stdout.lines().find(|l| l.contains(direction)).unwrap_or_else(|| {
            panic!("no consistency check line for {direction}; {context}");
        });
        assert!(line.contains(" match ("), "{direction} does not match: {line}");
    }
    assert!(stdout.contains("Consistent: every copy equals its source."), "{context}");
    let folder = temp_folder(stdout);
    assert!(!folder.exists(), "{} was left behind", folder.display());
    let leftovers = processes_using(&folder);
    assert!(leftovers.is_empty(), "processes left behind: {leftovers:?}");
}

#[test]
fn runs_for_the_given_seconds_then_checks_both_copies_and_cleans_up() {
    let demo = Demo::start(&["--seconds", "8"]);
    let (status, stdout, stderr) = demo.finish();
    assert_consistent_and_cleaned_up(status, &stdout, &stderr);
    let status_lines = stdout.lines().filter(|l| l.starts_with("t=") && l.contains("last change:")).count();
    assert!(status_lines >= 2, "expected a status line every 2 seconds:\n{stdout}");
}

/// The clusters trust whoever connects: only their owner may reach them,
/// through the socket in the demo's folder, never over TCP.
fn assert_reachable_by_socket_only(service: &str) {
    let field = |name: &str| {
        let start = service.find(&format!("{name}=")).unwrap_or_else(|| panic!("no {name} in {service}"))
            + name.len()
            + 1;
        service[start..].split_whitespace().next().unwrap().trim_matches('\'').to_string()
    };
    let (folder, port) = (field("host"), field("port"));
    assert!(Path::new(&folder).join(format!(".s.PGSQL.{port}")).exists(), "no socket: {service}");
    let port: u16 = port.parse().unwrap();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "listening on TCP: {service}");
}

#[test]
fn ctrl_c_stops_the_workload_then_checks_both_copies_and_cleans_up() {
    let mut demo = Demo::start(&[]);
    let service = demo.wait_for_line("customers service");
    demo.wait_for_line("t=2s");
    assert_reachable_by_socket_only(&service);
    demo.signal("INT");
    let (status, stdout, stderr) = demo.finish();
    assert!(stdout.contains("Interrupted: stopping the workload."), "{stdout}");
    assert_consistent_and_cleaned_up(status, &stdout, &stderr);
}

/// A closed terminal (SIGHUP) stops the demo as Ctrl-C does. Before, it
/// killed the demo and left both servers running and the folder behind.
/// Writing to a terminal that is gone fails, so nothing more is printed:
/// the exit code still says whether the copies matched.
#[test]
fn a_closed_terminal_stops_it_as_ctrl_c_does() {
    let mut demo = Demo::start(&[]);
    demo.wait_for_line("t=2s");
    demo.signal("HUP");
    let (status, stdout, stderr) = demo.finish();
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(status.code(), Some(0), "{context}");
    assert!(!stdout.contains("Interrupted"), "printed after the hang-up: {context}");
    let folder = temp_folder(&stdout);
    assert!(!folder.exists(), "{} was left behind", folder.display());
    assert!(processes_using(&folder).is_empty(), "processes left behind");
}
