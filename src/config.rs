//! The TOML configuration: schema, validation and secrets.
//!
//! Loading reports every problem at once, each with file, line and column,
//! and never echoes a value (a URL may hold a password).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::pg::conninfo::{ConnInfo, Secret};
use crate::pg::names::QualifiedName;

/// A validated configuration, ready to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub sources: BTreeMap<String, ConnInfo>,
    pub targets: BTreeMap<String, ConnInfo>,
    pub subscriptions: Vec<Subscription>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the HTTP endpoints (metrics, health, status).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { listen: default_listen() }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9187))
}

/// One source → one target, run as one pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub name: String,
    pub source: String,
    pub target: String,
    /// Copy existing rows before streaming.
    pub snapshot: bool,
    /// `ferry_<name>`, with `-` as `_` (slot names allow `[a-z0-9_]`).
    pub slot: String,
    /// The source publication; ferry creates and maintains it unless it was
    /// configured (then it must exist).
    pub publication: String,
    pub publication_managed: bool,
    pub tables: Vec<TableMapping>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMapping {
    pub from: QualifiedName,
    pub to: QualifiedName,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: ServerConfig,
    #[serde(default)]
    sources: BTreeMap<String, Spanned<RawDatabase>>,
    #[serde(default)]
    targets: BTreeMap<String, Spanned<RawDatabase>>,
    #[serde(default)]
    subscriptions: Vec<Spanned<RawSubscription>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: Spanned<String>,
    password_file: Option<Spanned<PathBuf>>,
    password_env: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubscription {
    name: Spanned<String>,
    source: Spanned<String>,
    target: Spanned<String>,
    #[serde(default = "yes")]
    snapshot: bool,
    publication: Option<Spanned<String>>,
    tables: Vec<Spanned<RawTable>>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    from: Spanned<String>,
    to: Option<Spanned<String>>,
}

/// One problem in a config file, located like a compiler diagnostic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.column, self.message)
    }
}

/// Everything wrong with a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}", diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid { diagnostics: Vec<Diagnostic> },
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Config::parse(&text, path)
    }

    /// Validates config text; `path` only names the file in diagnostics.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut checker = Checker { text, path, diagnostics: Vec::new() };
        let raw: RawConfig = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(error) => {
                // Only the message, never toml's snippet of the line: the
                // line may be a URL with a password in it.
                checker.report(error.span().unwrap_or(0..0), error.message().to_string());
                return Err(checker.into_error());
            }
        };
        let config = checker.check(raw);
        if checker.diagnostics.is_empty() { Ok(config) } else { Err(checker.into_error()) }
    }
}

struct Checker<'a> {
    text: &'a str,
    path: &'a Path,
    diagnostics: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn report(&mut self, span: Range<usize>, message: String) {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        self.diagnostics.push(Diagnostic { file: self.path.to_path_buf(), line, column, message });
    }

    fn into_error(self) -> ConfigError {
        ConfigError::Invalid { diagnostics: self.diagnostics }
    }

    fn check(&mut self, raw: RawConfig) -> Config {
        let sources = self.databases(&raw.sources, "source");
        let targets = self.databases(&raw.targets, "target");
        let mut subscriptions = Vec::new();
        let mut slots = BTreeMap::new();
        for sub in &raw.subscriptions {
            if let Some(subscription) = self.subscription(sub, &sources, &targets) {
                if let Some(other) = slots.insert(subscription.slot.clone(), subscription.name.clone()) {
                    self.report(
                        sub.get_ref().name.span(),
                        format!(
                            "subscriptions {other:?} and {:?} would share the slot {}; rename one",
                            subscription.name, subscription.slot
                        ),
                    );
                }
                subscriptions.push(subscription);
            }
        }
        if raw.subscriptions.is_empty() {
            self.report(0..0, "no [[subscriptions]]: nothing to replicate".into());
        }
        Config { server: raw.server, sources, targets, subscriptions }
    }

    fn databases(
        &mut self,
        raw: &BTreeMap<String, Spanned<RawDatabase>>,
        kind: &str,
    ) -> BTreeMap<String, ConnInfo> {
        let mut out = BTreeMap::new();
        for (name, db) in raw {
            if let Some(info) = self.database(name, db, kind) {
                out.insert(name.clone(), info);
            }
        }
        out
    }

    fn database(&mut self, name: &str, db: &Spanned<RawDatabase>, kind: &str) -> Option<ConnInfo> {
        let raw = db.get_ref();
        let info: ConnInfo = match raw.url.get_ref().parse() {
            Ok(info) => info,
            Err(error) => {
                self.report(raw.url.span(), format!("{kind} {name:?}: invalid url: {error}"));
                return None;
            }
        };
        let given = [info.password.is_some(), raw.password_file.is_some(), raw.password_env.is_some()];
        if given.iter().filter(|g| **g).count() > 1 {
            self.report(
                db.span(),
                format!("{kind} {name:?}: give the password one way only (in the url, password_file or password_env)"),
            );
            return None;
        }
        if let Some(file) = &raw.password_file {
            return match std::fs::read_to_string(file.get_ref()) {
                Ok(text) => Some(info.with_password(Secret::new(text.trim_end_matches(['\n', '\r'])))),
                Err(error) => {
                    let path = file.get_ref().display();
                    self.report(
                        file.span(),
                        format!("{kind} {name:?}: cannot read password_file {path}: {error}"),
                    );
                    None
                }
            };
        }
        if let Some(var) = &raw.password_env {
            return match std::env::var(var.get_ref()) {
                Ok(value) => Some(info.with_password(Secret::new(value))),
                Err(_) => {
                    let var_name = var.get_ref();
                    self.report(
                        var.span(),
                        format!("{kind} {name:?}: environment variable {var_name} is not set"),
                    );
                    None
                }
            };
        }
        Some(info)
    }

    fn subscription(
        &mut self,
        sub: &Spanned<RawSubscription>,
        sources: &BTreeMap<String, ConnInfo>,
        targets: &BTreeMap<String, ConnInfo>,
    ) -> Option<Subscription> {
        let raw = sub.get_ref();
        let name = raw.name.get_ref();
        let mut ok = self.check_subscription_name(&raw.name);
        ok &= self.check_reference(&raw.source, sources, "source");
        ok &= self.check_reference(&raw.target, targets, "target");
        if raw.tables.is_empty() {
            self.report(sub.span(), format!("subscription {name:?} has no [[subscriptions.tables]]"));
            ok = false;
        }
        let mut tables = Vec::new();
        let mut seen_from = BTreeSet::new();
        let mut seen_to = BTreeSet::new();
        for table in &raw.tables {
            let Some(mapping) = self.table(table) else {
                ok = false;
                continue;
            };
            if !seen_from.insert(mapping.from.clone()) {
                self.report(table.get_ref().from.span(), format!("table {} is listed twice", mapping.from));
                ok = false;
            }
            if !seen_to.insert(mapping.to.clone()) {
                self.report(table.span(), format!("two tables map to {}", mapping.to));
                ok = false;
            }
            tables.push(mapping);
        }
        let slot = format!("ferry_{}", name.replace('-', "_"));
        let (publication, publication_managed) = match &raw.publication {
            Some(p) => (p.get_ref().clone(), false),
            None => (slot.clone(), true),
        };
        ok.then(|| Subscription {
            name: name.clone(),
            source: raw.source.get_ref().clone(),
            target: raw.target.get_ref().clone(),
            snapshot: raw.snapshot,
            slot,
            publication,
            publication_managed,
            tables,
        })
    }

    fn check_subscription_name(&mut self, name: &Spanned<String>) -> bool {
        let text = name.get_ref();
        let valid = !text.is_empty()
            && text.len() <= 57 // the slot name, with "ferry_", fits in 63 bytes
            && text.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !valid {
            self.report(
                name.span(),
                format!("subscription name {text:?} must be 1 to 57 characters of a-z, 0-9, - and _ (it names the slot)"),
            );
        }
        valid
    }

    fn check_reference<T>(
        &mut self,
        name: &Spanned<String>,
        known: &BTreeMap<String, T>,
        kind: &str,
    ) -> bool {
        let found = known.contains_key(name.get_ref());
        if !found {
            let list: Vec<&String> = known.keys().collect();
            self.report(name.span(), format!("unknown {kind} {:?} (defined: {list:?})", name.get_ref()));
        }
        found
    }

    fn table(&mut self, table: &Spanned<RawTable>) -> Option<TableMapping> {
        let raw = table.get_ref();
        let from = self.table_name(&raw.from)?;
        let to = match &raw.to {
            Some(to) => self.table_name(to)?,
            None => from.clone(),
        };
        Some(TableMapping { from, to })
    }

    fn table_name(&mut self, name: &Spanned<String>) -> Option<QualifiedName> {
        match name.get_ref().parse() {
            Ok(parsed) => Some(parsed),
            Err(error) => {
                self.report(name.span(), error.to_string());
                None
            }
        }
    }
}
