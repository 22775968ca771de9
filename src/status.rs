//! `ferry status`: a running daemon's `/status` as a table, over a minimal
//! HTTP/1.0 client (plain `http://` only: the endpoints are meant for a
//! local or cluster-internal network).

use std::fmt::Write as _;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::metrics::{PipelineStatus, StatusReport};

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("{0}: expected http://HOST:PORT (https is not supported)")]
    BadUrl(String),
    /// The url is not repeated: the user info may hold a password.
    #[error(
        "the --url holds user info (user:password@), which ferry's endpoints do not take: expected http://HOST:PORT"
    )]
    UserInfo,
    #[error("cannot reach ferry at {url}: {source} (is `ferry run` running, with [server] listen there?)")]
    Connect { url: String, source: std::io::Error },
    #[error("no answer from {0} within {secs}s", secs = TIMEOUT.as_secs())]
    Timeout(String),
    #[error("{url} answered with something that is not HTTP")]
    NotHttp { url: String },
    #[error("{url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url} did not answer with ferry's status JSON: {source}")]
    Json { url: String, source: serde_json::Error },
}

/// GETs `url` (`http://host:port/path`) and returns the status code and
/// body.
pub async fn http_get(url: &str) -> Result<(u16, String), StatusError> {
    // No url of ferry's endpoints has an "@"; a mistyped one may have user
    // info, password and all, anywhere.
    if url.contains('@') {
        return Err(StatusError::UserInfo);
    }
    let rest = url.strip_prefix("http://").ok_or_else(|| StatusError::BadUrl(url.to_string()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(StatusError::BadUrl(url.to_string()));
    }
    let address = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let exchange = async {
        let mut stream = TcpStream::connect(&address)
            .await
            .map_err(|source| StatusError::Connect { url: url.to_string(), source })?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nAccept: */*\r\n\r\n");
        let io = |source| StatusError::Connect { url: url.to_string(), source };
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.map_err(io)?;
        Ok::<_, StatusError>(response)
    };
    let response = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| StatusError::Timeout(url.to_string()))??;
    let text = String::from_utf8_lossy(&response);
    let not_http = || StatusError::NotHttp { url: url.to_string() };
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(not_http)?;
    let status = head
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("HTTP/1."))
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(not_http)?;
    Ok((status, body.to_string()))
}

/// Fetches `/status` from the daemon at `base` (e.g. `http://127.0.0.1:9187`).
pub async fn fetch(base: &str) -> Result<StatusReport, StatusError> {
    let url = format!("{}/status", base.trim_end_matches('/'));
    let (status, body) = http_get(&url).await?;
    if status != 200 {
        return Err(StatusError::Status { url, status });
    }
    serde_json::from_str(&body).map_err(|source| StatusError::Json { url, source })
}

/// The report as a table, one pipeline a line, then each pipeline's error
/// (errors are long) and copy progress.
pub fn table(report: &StatusReport) -> String {
    let header =
        ["SUBSCRIPTION", "STATE", "LAST APPLIED", "LAST COMMIT", "LAG", "WAL BEHIND", "WAL RETAINED"];
    let rows: Vec<[String; 7]> = report.pipelines.iter().map(row).collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:width$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    for pipeline in &report.pipelines {
        for table in pipeline.snapshot.iter().flatten() {
            let _ = writeln!(
                out,
                "{}: copying {}: {} of ~{} rows",
                pipeline.subscription, table.table, table.rows_copied, table.rows_estimated
            );
        }
        if let Some(error) = &pipeline.error {
            let _ = writeln!(out, "{}: error: {error}", pipeline.subscription);
        }
    }
    if report.pipelines.is_empty() {
        out.push_str("(no pipelines)\n");
    }
    out
}

fn row(p: &PipelineStatus) -> [String; 7] {
    let dash = || "-".to_string();
    [
        p.subscription.clone(),
        p.state.as_str().to_string(),
        p.last_applied_lsn.clone().unwrap_or_else(dash),
        p.last_commit_time.as_deref().map_or_else(dash, short_time),
        seconds(p.lag_seconds),
        p.lag_bytes.map_or_else(dash, bytes),
        p.retained_wal_bytes.map_or_else(dash, bytes),
    ]
}

/// `2026-11-27T12:13:58.123456Z` to `2026-11-27 12:13:58Z`.
fn short_time(time: &str) -> String {
    match time.split_once('.') {
        Some((seconds, _)) => format!("{}Z", seconds.replacen('T', " ", 1)),
        None => time.replacen('T', " ", 1),
    }
}

fn seconds(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{}h{:02}m", (s / 3600.0) as u64, (s % 3600.0 / 60.0) as u64)
    }
}

fn bytes(b: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = b as f64;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{b} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{SnapshotTable, State};

    fn pipeline(name: &str, state: State) -> PipelineStatus {
        PipelineStatus {
            subscription: name.into(),
            source: "src".into(),
            target: "dst".into(),
            state,
            last_applied_lsn: None,
            last_commit_time: None,
            lag_seconds: 0.0,
            lag_bytes: None,
            retained_wal_bytes: None,
            snapshot: None,
            error: None,
        }
    }

    #[test]
    fn prints_one_aligned_line_per_pipeline_then_errors() {
        let mut a = pipeline("customers-to-orders", State::Streaming);
        a.last_applied_lsn = Some("0/16B3748".into());
        a.last_commit_time = Some("2026-11-27T12:13:58.123456Z".into());
        a.lag_seconds = 0.3;
        a.lag_bytes = Some(56);
        a.retained_wal_bytes = Some(3 * 1024 * 1024);
        let mut b = pipeline("audit", State::Retrying);
        b.lag_seconds = 125.0;
        b.error = Some("cannot connect to orders-db:5432: connection refused".into());
        let mut c = pipeline("big", State::Snapshot);
        c.snapshot =
            Some(vec![SnapshotTable { table: "public.events".into(), rows_copied: 10, rows_estimated: 99 }]);
        let shown = table(&StatusReport { pipelines: vec![a, b, c] });
        let expected = "\
SUBSCRIPTION         STATE      LAST APPLIED  LAST COMMIT           LAG    WAL BEHIND  WAL RETAINED
customers-to-orders  streaming  0/16B3748     2026-11-27 12:13:58Z  0.3s   56 B        3.0 MiB
audit                retrying   -             -                     2m05s  -           -
big                  snapshot   -             -                     0.0s   -           -
audit: error: cannot connect to orders-db:5432: connection refused
big: copying public.events: 10 of ~99 rows
";
        assert_eq!(shown, expected);
    }

    #[tokio::test]
    async fn urls_other_than_plain_http_are_refused() {
        assert!(matches!(http_get("https://localhost:9187/status").await, Err(StatusError::BadUrl(_))));
        assert!(matches!(http_get("http:///status").await, Err(StatusError::BadUrl(_))));
    }

    #[tokio::test]
    async fn a_url_with_a_password_is_refused_without_repeating_it() {
        for url in [
            "http://admin:S3CRET@localhost:9187",
            "https://admin:S3CRET@localhost:9187/status",
            "http:/admin:S3CRET@h",
        ] {
            let error = http_get(url).await.unwrap_err();
            assert!(matches!(error, StatusError::UserInfo), "{url}: {error}");
            assert!(!error.to_string().contains("S3CRET"), "{error}");
        }
    }
}
