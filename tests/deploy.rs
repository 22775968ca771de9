//! The deployment files stay true to ferry: the Kubernetes manifests parse
//! and agree with each other, the config inside the ConfigMap passes
//! `ferry validate --offline`, and the dashboard and alerts query only
//! metrics ferry exports. No cluster and no container runtime needed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_norway::Value;

use ferry::config::{Subscription, TableMapping};
use ferry::metrics::Metrics;
use ferry::pg::names::QualifiedName;
use ferry::teardown::ForgottenSlot;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn kubernetes_dir() -> PathBuf {
    deploy_dir().join("kubernetes")
}

/// Every YAML document of a file.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::Deserializer::from_str(&text)
        .map(|document| {
            serde::Deserialize::deserialize(document)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()))
        })
        .collect()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

/// Every manifest of the base (kustomization.yaml excluded), by kind.
fn manifests() -> Vec<Value> {
    yaml_files(&kubernetes_dir())
        .iter()
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .flat_map(|p| documents(p))
        .collect()
}

fn manifest(kind: &str) -> Value {
    let mut found: Vec<Value> =
        manifests().into_iter().filter(|m| m["kind"].as_str() == Some(kind)).collect();
    assert_eq!(found.len(), 1, "expected one {kind}");
    found.remove(0)
}

/// The example of the Secret the Deployment mounts, kept out of the base.
fn example_secret() -> Value {
    let [secret] = documents(&kubernetes_dir().join("examples/secret.yaml")).try_into().unwrap();
    assert_eq!(secret["kind"].as_str(), Some("Secret"));
    secret
}

fn str_at<'a>(value: &'a Value, what: &str) -> &'a str {
    value.as_str().unwrap_or_else(|| panic!("{what} is not a string: {value:?}"))
}

#[test]
fn every_kubernetes_file_parses_as_yaml_with_a_kind() {
    let mut files = yaml_files(&kubernetes_dir());
    files.extend(yaml_files(&kubernetes_dir().join("examples")));
    assert!(files.len() >= 7, "{files:?}");
    for file in files {
        for document in documents(&file) {
            assert!(document["apiVersion"].is_string(), "{}: no apiVersion", file.display());
            assert!(document["kind"].is_string(), "{}: no kind", file.display());
        }
    }
}

#[test]
fn the_kustomization_lists_every_manifest_and_only_existing_files() {
    let [kustomization] = documents(&kubernetes_dir().join("kustomization.yaml")).try_into().unwrap();
    let resources: BTreeSet<String> = kustomization["resources"]
        .as_sequence()
        .expect("resources is a list")
        .iter()
        .map(|r| str_at(r, "a resource").to_string())
        .collect();
    for resource in &resources {
        assert!(
            kubernetes_dir().join(resource).is_file(),
            "kustomization.yaml lists {resource}, which is missing"
        );
    }
    let on_disk: BTreeSet<String> = yaml_files(&kubernetes_dir())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|name| name != "kustomization.yaml")
        .collect();
    assert_eq!(resources, on_disk, "every manifest of the base is listed, and nothing else");
    // Applied with the base, placeholder passwords would replace the real ones.
    assert!(manifests().iter().all(|m| m["kind"].as_str() != Some("Secret")), "the base carries no Secret");
}

/// `kubectl kustomize` builds the base into one stream holding every
/// manifest. kubectl is not a Debian package; on a machine without it the
/// build is left to the listing check above, and this says so.
#[test]
fn the_kustomization_builds() {
    let output = match Command::new("kubectl").arg("kustomize").arg(kubernetes_dir()).output() {
        Ok(output) => output,
        Err(error) => {
            eprintln!("kubectl is not available ({error}); the kustomize build was not run");
            return;
        }
    };
    assert!(output.status.success(), "kubectl kustomize failed: {}", String::from_utf8_lossy(&output.stderr));
    let built = String::from_utf8(output.stdout).unwrap();
    let kinds: BTreeSet<String> = serde_norway::Deserializer::from_str(&built)
        .map(|doc| {
            let value = <Value as serde::Deserialize>::deserialize(doc).expect("the build is YAML");
            str_at(&value["kind"], "a kind").to_string()
        })
        .collect();
    let expected: BTreeSet<String> =
        manifests().iter().map(|m| str_at(&m["kind"], "a kind").to_string()).collect();
    assert_eq!(kinds, expected, "the build holds every manifest of the base");
}

#[test]
fn the_deployment_runs_one_non_root_read_only_replica_with_probes() {
    let deployment = manifest("Deployment");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"].as_u64(), Some(1));
    assert_eq!(spec["strategy"]["type"].as_str(), Some("Recreate"));
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    let [container] = pod["containers"].as_sequence().unwrap().as_slice() else { panic!("one container") };
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"].as_str(), Some("/healthz"));
    assert_eq!(container["readinessProbe"]["httpGet"]["path"].as_str(), Some("/readyz"));
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"].as_str(), Some("metrics"), "{probe}");
    }
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());
    let args: Vec<&str> =
        container["args"].as_sequence().unwrap().iter().map(|a| str_at(a, "an arg")).collect();
    assert_eq!(&args[..3], ["run", "--config", "/etc/ferry/ferry.toml"]);

    // Mounts: the config, the passwords as files, and a writable /tmp.
    let volume = |mount_path: &str| -> Value {
        let mounts = container["volumeMounts"].as_sequence().unwrap();
        let mount = mounts
            .iter()
            .find(|m| m["mountPath"].as_str() == Some(mount_path))
            .unwrap_or_else(|| panic!("nothing mounted at {mount_path}"));
        let volumes = pod["volumes"].as_sequence().unwrap();
        volumes.iter().find(|v| v["name"] == mount["name"]).cloned().expect("the mount's volume")
    };
    assert_eq!(volume("/etc/ferry")["configMap"]["name"], manifest("ConfigMap")["metadata"]["name"]);
    assert_eq!(volume("/run/secrets/ferry")["secret"]["secretName"], example_secret()["metadata"]["name"]);
    assert!(volume("/tmp")["emptyDir"].is_mapping(), "/tmp is an emptyDir");
}

#[test]
fn the_metrics_port_is_the_same_everywhere() {
    let config = configmap_toml();
    let listen: std::net::SocketAddr =
        config["server"]["listen"].as_str().expect("[server] listen").parse().expect("an address");
    assert!(listen.ip().is_unspecified(), "ferry must listen on every interface of the pod, not {listen}");
    let deployment = manifest("Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let port = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some("metrics"))
        .expect("a container port named metrics");
    assert_eq!(port["containerPort"].as_u64(), Some(u64::from(listen.port())));
    let service = manifest("Service");
    let service_port = service["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some("metrics"))
        .cloned()
        .expect("a Service port named metrics");
    assert_eq!(service_port["targetPort"].as_str(), Some("metrics"));
    let monitor = manifest("ServiceMonitor");
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!((endpoint["port"].as_str(), endpoint["path"].as_str()), (Some("metrics"), Some("/metrics")));
    assert_eq!(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"]);
}

fn configmap_text() -> String {
    let configmap = manifest("ConfigMap");
    str_at(&configmap["data"]["ferry.toml"], "data.ferry.toml").to_string()
}

fn configmap_toml() -> toml::Table {
    configmap_text().parse().expect("the ConfigMap's ferry.toml is TOML")
}

#[test]
fn the_configmap_config_passes_ferry_validate_offline_with_the_secret_files() {
    // The Secret's keys become files under /run/secrets/ferry; put them in
    // a folder of our own and point the config there.
    let secret = example_secret();
    let dir = tempfile::tempdir().unwrap();
    let keys = secret["stringData"].as_mapping().expect("the Secret has stringData");
    for (key, value) in keys {
        std::fs::write(dir.path().join(str_at(key, "a key")), str_at(value, "a password")).unwrap();
    }
    let text = configmap_text();
    assert!(text.contains("password_file = \"/run/secrets/ferry/"), "passwords come from the mounted Secret");
    assert!(!text.contains("password_env"), "passwords come from files");
    let text = text.replace("/run/secrets/ferry/", &format!("{}/", dir.path().display()));
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["validate", "--offline", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "ferry validate --offline rejects the ConfigMap's ferry.toml:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // And no password is written into the ConfigMap itself.
    for database in ["sources", "targets"] {
        for (name, db) in configmap_toml()[database].as_table().unwrap() {
            let url = db["url"].as_str().unwrap();
            let info: ferry::pg::conninfo::ConnInfo = url.parse().unwrap();
            assert!(info.password.is_none(), "{database}.{name}: a password in the url");
        }
    }
}

/// The names of every sample ferry's registry exports (histograms with
/// their `_bucket`, `_sum` and `_count`), from a live registry with a
/// pipeline registered.
fn exported_names() -> BTreeSet<String> {
    let metrics = Metrics::new();
    metrics.pipeline(&Subscription {
        name: "s".into(),
        source: "a".into(),
        target: "b".into(),
        snapshot: true,
        slot: "ferry_s".into(),
        publication: "ferry_s".into(),
        publication_managed: true,
        on_error: Default::default(),
        forward_origins: false,
        tables: vec![TableMapping::new(QualifiedName::new("public", "t"), QualifiedName::new("public", "t"))],
    });
    // Series that exist only while there is something to show.
    let forgotten = ForgottenSlot { source: "a".into(), slot: "ferry_gone".into(), retained_bytes: 1 };
    metrics.forgotten_slots([&forgotten].into_iter());
    metrics
        .render()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// The metric names a PromQL expression selects: identifiers that are not
/// functions or aggregations, label names (in `{…}`, `by (…)`, `without (…)`, `on (…)`,
/// `ignoring (…)`, `group_left (…)`, `group_right (…)`), keywords, numbers,
/// durations, strings or Grafana variables.
fn promql_metric_names(expr: &str) -> Vec<String> {
    const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];
    // Aggregations may be followed by `by (…)` instead of their argument.
    const AGGREGATIONS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    let skip_to = |i: &mut usize, close: char| {
        while *i < chars.len() && chars[*i] != close {
            *i += 1;
        }
        *i += 1;
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i += 1;
            skip_to(&mut i, c);
        } else if c == '{' {
            skip_to(&mut i, '}');
        } else if c == '[' {
            skip_to(&mut i, ']');
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c == '$' {
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let call = chars.get(next) == Some(&'(');
            if LABEL_LISTS.contains(&word.as_str()) {
                if call {
                    i = next + 1;
                    skip_to(&mut i, ')');
                }
            } else if !call
                && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
                && !AGGREGATIONS.contains(&word.as_str())
            {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn the_promql_scanner_finds_metric_names_only() {
    let expr = r#"sum by (subscription, le) (rate(ferry_x_bucket{job=~"$job",a="b c"}[$__rate_interval])) / on (s) group_left (t) y_total > 10 * 1024 and bool absent(z)"#;
    assert_eq!(promql_metric_names(expr), ["ferry_x_bucket", "y_total", "z"]);
}

/// (where, expression) for every query of the dashboard and every rule.
fn expressions() -> Vec<(String, String)> {
    let mut found = Vec::new();
    let path = deploy_dir().join("grafana/ferry-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let mut panels: Vec<&serde_json::Value> =
        dashboard["panels"].as_array().expect("panels").iter().collect();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("every target has an expr");
            found.push((format!("dashboard panel {:?}", panel["title"]), expr.to_string()));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        let Some(query) = variable["query"]["query"].as_str() else { continue };
        // label_values(SELECTOR, LABEL): the selector is the expression.
        let selector = query
            .strip_prefix("label_values(")
            .and_then(|rest| rest.rsplit_once(','))
            .map_or(query, |(selector, _)| selector);
        found.push((format!("dashboard variable {:?}", variable["name"]), selector.to_string()));
    }
    let rules = manifest("PrometheusRule");
    for group in rules["spec"]["groups"].as_sequence().expect("rule groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().or(rule["record"].as_str()).unwrap_or("?");
            found.push((format!("rule {name}"), str_at(&rule["expr"], "expr").to_string()));
        }
    }
    found
}

#[test]
fn the_dashboard_and_alerts_query_only_metrics_ferry_exports() {
    // kube-state-metrics' restart count: ferry's own series go stale while it
    // restarts.
    const EXTERNAL_METRICS: &[&str] = &["kube_pod_container_status_restarts_total"];
    let exported = exported_names();
    assert!(exported.contains("ferry_apply_batch_duration_seconds_bucket"), "{exported:?}");
    let expressions = expressions();
    assert!(expressions.len() >= 10, "{expressions:?}");
    let mut used = BTreeSet::new();
    for (place, expr) in &expressions {
        let names = promql_metric_names(expr);
        assert!(!names.is_empty(), "{place}: no metric in {expr}");
        for name in names {
            let external = EXTERNAL_METRICS.contains(&name.as_str());
            assert!(
                exported.contains(&name) || external,
                "{place} queries {name}, which ferry does not export: {expr}"
            );
            used.insert(name);
        }
    }
    // The alerts the issue asks for are there.
    let rules: Vec<&String> =
        expressions.iter().filter(|(p, _)| p.starts_with("rule")).map(|(_, e)| e).collect();
    for metric in [
        "ferry_replication_lag_seconds",
        "ferry_pipeline_up",
        "ferry_source_slot_retained_wal_bytes",
        "ferry_errors_total",
    ] {
        assert!(rules.iter().any(|e| e.contains(metric)), "no alert on {metric}");
    }
    // The dashboard shows lag, throughput and errors.
    for metric in [
        "ferry_replication_lag_seconds",
        "ferry_transactions_applied_total",
        "ferry_events_total",
        "ferry_errors_total",
    ] {
        assert!(used.contains(metric), "the dashboard does not show {metric}");
    }
}

#[test]
fn the_readme_documents_every_exported_metric() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    for (name, _) in ferry::metrics::METRICS {
        let documented = readme.contains(&format!("| `{name}`")) || readme.contains(&format!("| `{name}{{"));
        assert!(documented, "README.md's table of metrics does not list {name}");
    }
}

#[test]
fn the_dockerfile_builds_in_stages_and_runs_as_a_non_root_user() {
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    let stages = text.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(stages >= 2, "a multi-stage build");
    let user = text.lines().rfind(|l| l.starts_with("USER ")).expect("a USER line");
    assert!(!user.contains("root") && !user.contains(" 0"), "{user}");
    assert!(text.contains("\"run\", \"--config\", \"/etc/ferry/ferry.toml\""));
}
