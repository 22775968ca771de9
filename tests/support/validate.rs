//! `ferry validate` run as the binary, as a user runs it.

use std::process::Output;

/// The result of `ferry validate --config <config> <args>`.
pub struct Validated {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Validated {
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    pub fn assert_mentions(&self, expected: &str) {
        assert!(self.output().contains(expected), "expected {expected:?} in:\n{}", self.output());
    }
}

pub async fn validate(config: &str, args: &[&str]) -> Validated {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, config).unwrap();
    let Output { status, stdout, stderr } = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("validate")
        .arg("--config")
        .arg(&path)
        .args(args)
        .output()
        .await
        .expect("running ferry validate");
    Validated {
        code: status.code(),
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    }
}
