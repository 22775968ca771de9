//! A running daemon's HTTP endpoints (`/metrics`, `/status`, ...) as tests
//! read them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferry::metrics::{State, StatusReport};
use ferry::status::http_get;

/// `[server] listen` on `port`, then `rest`.
pub fn with_server(port: u16, rest: &str) -> String {
    format!("[server]\nlisten = \"127.0.0.1:{port}\"\n\n{rest}")
}

/// A daemon's HTTP endpoints.
pub struct Endpoints {
    pub base: String,
}

impl Endpoints {
    pub fn on(port: u16) -> Endpoints {
        Endpoints { base: format!("http://127.0.0.1:{port}") }
    }

    /// The status code and body of `path`, waiting for the server to come up.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match http_get(&format!("{}{path}", self.base)).await {
                Ok(answer) => return answer,
                Err(error) => {
                    assert!(Instant::now() < deadline, "GET {path}: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    pub async fn metrics(&self) -> Samples {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "/metrics: {body}");
        Samples(body)
    }

    pub async fn status(&self) -> StatusReport {
        let (code, body) = self.get("/status").await;
        assert_eq!(code, 200, "/status: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not its JSON ({e}): {body}"))
    }

    /// Polls /metrics until `check` holds, and fails with the last scrape
    /// when it never does.
    pub async fn wait_for_metrics(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Samples) -> bool,
    ) -> Samples {
        let deadline = Instant::now() + timeout;
        loop {
            let samples = self.metrics().await;
            if check(&samples) {
                return samples;
            }
            assert!(Instant::now() < deadline, "never saw {what}; last scrape:\n{}", samples.ferry_lines());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn wait_for_state(&self, subscription: &str, state: State, timeout: Duration) -> StatusReport {
        let deadline = Instant::now() + timeout;
        loop {
            let report = self.status().await;
            if report.pipelines.iter().any(|p| p.subscription == subscription && p.state == state) {
                return report;
            }
            assert!(Instant::now() < deadline, "{subscription} never reached {state:?}: {report:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A scrape in the Prometheus text format.
pub struct Samples(pub String);

impl Samples {
    /// The value of the one sample of `name` with exactly these labels.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<&str, &str> = labels.iter().copied().collect();
        self.0.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (found, labels) = match series.split_once('{') {
                Some((found, rest)) => (found, parse_labels(rest.strip_suffix('}')?)),
                None => (series, BTreeMap::new()),
            };
            (found == name && labels == wanted).then(|| value.parse().ok())?
        })
    }

    /// The value, or NaN when the series is missing (so that every
    /// comparison with it fails).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(f64::NAN)
    }

    pub fn ferry_lines(&self) -> String {
        self.0.lines().filter(|l| l.starts_with("ferry_")).collect::<Vec<_>>().join("\n")
    }
}

/// `a="x",b="y"` (ferry's label values hold no quotes or commas).
fn parse_labels(text: &str) -> BTreeMap<&str, &str> {
    text.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k, v.trim_matches('"')))
        })
        .collect()
}
