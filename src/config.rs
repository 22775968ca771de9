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

/// The slot (and managed publication) of the subscription `name`:
/// `ferry_<name>`, with `-` as `_` (slot names allow `[a-z0-9_]`).
pub fn slot_name(name: &str) -> String {
    format!("ferry_{}", name.replace('-', "_"))
}

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
    pub on_error: OnError,
    /// Also apply source transactions that another replicator (ferry or
    /// PostgreSQL's own) applied there, for chains A → B → C. Off by
    /// default, so that two services replicating to each other do not loop.
    pub forward_origins: bool,
    pub tables: Vec<TableMapping>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMapping {
    pub from: QualifiedName,
    pub to: QualifiedName,
    pub columns: ColumnSelection,
    /// Source column name → target column name.
    pub rename: BTreeMap<String, String>,
    /// The row filter as written (`where`); compiled against the source's
    /// column types when the pipeline starts.
    pub filter: Option<String>,
    pub operations: Operations,
}

impl TableMapping {
    /// `from` copied whole into `to`: every column, row and operation.
    pub fn new(from: QualifiedName, to: QualifiedName) -> Self {
        TableMapping {
            from,
            to,
            columns: ColumnSelection::All,
            rename: BTreeMap::new(),
            filter: None,
            operations: Operations::default(),
        }
    }

    /// The target name of a source column.
    pub fn target_column<'a>(&'a self, source: &'a str) -> &'a str {
        self.rename.get(source).map_or(source, String::as_str)
    }

    /// Whether the table's settings name a source column as one to carry:
    /// its `columns` list or its `rename`.
    pub fn names(&self, column: &str) -> bool {
        self.columns.lists(column) || self.rename.contains_key(column)
    }
}

/// Which source columns a table carries. Names are exact column names as in
/// the catalog (no case folding).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ColumnSelection {
    #[default]
    All,
    Only(Vec<String>),
    Except(Vec<String>),
}

impl ColumnSelection {
    /// Whether a source column is carried.
    pub fn includes(&self, column: &str) -> bool {
        match self {
            ColumnSelection::All => true,
            ColumnSelection::Only(list) => list.iter().any(|c| c == column),
            ColumnSelection::Except(list) => !list.iter().any(|c| c == column),
        }
    }

    /// Whether the selection lists `column` as one to carry (`Only`).
    pub fn lists(&self, column: &str) -> bool {
        matches!(self, ColumnSelection::Only(list) if list.iter().any(|c| c == column))
    }

    /// The columns the selection names, to check them against the source.
    pub fn named(&self) -> &[String] {
        match self {
            ColumnSelection::All => &[],
            ColumnSelection::Only(list) | ColumnSelection::Except(list) => list,
        }
    }
}

/// The kinds of change a table lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operations {
    pub insert: bool,
    pub update: bool,
    pub delete: bool,
    pub truncate: bool,
}

impl Default for Operations {
    fn default() -> Self {
        Operations { insert: true, update: true, delete: true, truncate: true }
    }
}

impl Operations {
    /// The kinds left out, for logs and the plan (`delete, truncate`).
    pub fn dropped(&self) -> Vec<&'static str> {
        [
            ("insert", self.insert),
            ("update", self.update),
            ("delete", self.delete),
            ("truncate", self.truncate),
        ]
        .into_iter()
        .filter(|(_, kept)| !kept)
        .map(|(name, _)| name)
        .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    #[default]
    Insert,
    Update,
    Delete,
    Truncate,
}

/// What a pipeline does with a change the target refuses for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Stop the pipeline with the error.
    #[default]
    Stop,
    /// Record the change in `ferry.dead_letters` on the target and go on.
    DeadLetter,
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
    #[serde(default)]
    on_error: OnError,
    #[serde(default)]
    forward_origins: bool,
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
    columns: Option<Spanned<Vec<String>>>,
    exclude: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    rename: BTreeMap<String, String>,
    #[serde(rename = "where")]
    filter: Option<Spanned<String>>,
    operations: Option<Spanned<Vec<Operation>>>,
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
        Config::parse(&read(path)?, path)
    }

    /// [`Config::load`] for `ferry drop`, which runs once a subscription is
    /// taken out of the config, so also after the last one: here a config
    /// without subscriptions is valid.
    pub fn load_for_drop(path: &Path) -> Result<Config, ConfigError> {
        Config::parse_with_env(&read(path)?, path, &|name| std::env::var(name), false)
    }

    /// Validates config text; `path` only names the file in diagnostics.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, path, &|name| std::env::var(name), true)
    }

    /// [`Config::parse`] with `env` in place of the process environment;
    /// `needs_subscriptions` refuses a config without any.
    fn parse_with_env(
        text: &str,
        path: &Path,
        env: &EnvLookup,
        needs_subscriptions: bool,
    ) -> Result<Config, ConfigError> {
        let mut checker = Checker { text, path, env, needs_subscriptions, diagnostics: Vec::new() };
        let raw: RawConfig = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(error) => {
                // Only the message, never toml's snippet of the line: the
                // line may be a URL with a password in it.
                checker.report(error.span().unwrap_or(0..0), without_value(error.message()));
                return Err(checker.into_error());
            }
        };
        let config = checker.check(raw);
        if checker.diagnostics.is_empty() { Ok(config) } else { Err(checker.into_error()) }
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })
}

/// serde says "invalid type: string \"…\", expected a boolean", quoting the
/// value it found, and that value may be a password written in the wrong
/// place. Keeps the kind of value and what was expected; drops the value.
fn without_value(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let expected = rest.rfind(", expected ").map_or("", |i| &rest[i..]);
            let found = &rest[..rest.len() - expected.len()];
            let kind = found.split(['"', '`']).next().unwrap_or_default().trim_end();
            return format!("{prefix}{kind}{expected}");
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let expected = rest.find(", expected ").map_or("", |i| &rest[i..]);
        return format!("unknown variant{expected}");
    }
    message.to_string()
}

fn shared_slot_message(other: &str, subscription: &Subscription) -> String {
    if other == subscription.name {
        format!("subscription name {other:?} is used twice")
    } else {
        format!(
            "subscriptions {other:?} and {:?} would share the slot {}; rename one",
            subscription.name, subscription.slot
        )
    }
}

/// Why `later` may not run beside `earlier`, if it may not: one takes the
/// other's managed publication for its own, or both write one table of
/// the same target database in a way that empties it of the other's rows.
/// A managed publication is set to its own subscription's tables at every
/// start, taking away the other's. A copy starts only into an empty table
/// and empties it again after a crash, and a TRUNCATE from either source
/// empties it; without either, a table may take several subscriptions'
/// rows.
fn shared_writes(earlier: &Subscription, later: &Subscription, config: &Config) -> Option<String> {
    if same_database(&config.sources, &earlier.source, &later.source) {
        for (first, second) in [(earlier, later), (later, earlier)] {
            // Both managed, they would share a slot too, which is said already.
            let shared = !second.publication_managed && second.publication == first.publication;
            if first.publication_managed && shared {
                return Some(format!(
                    "subscription {:?} reads publication {}, which subscription {:?} manages (it sets the \
                     publication to its own tables at every start); give {:?} a publication of its own",
                    second.name, first.publication, first.name, second.name
                ));
            }
        }
    }
    if !same_database(&config.targets, &earlier.target, &later.target) {
        return None;
    }
    let copied = earlier.snapshot || later.snapshot;
    let to = later.tables.iter().find_map(|mine| {
        let theirs = earlier.tables.iter().find(|t| t.to == mine.to)?;
        (copied || mine.operations.truncate || theirs.operations.truncate).then_some(&mine.to)
    })?;
    Some(format!(
        "subscriptions {:?} and {:?} both write {to} on the same target database, which empties it of the \
         other's rows: a copy empties it after a crash, a TRUNCATE on either source empties it. To share \
         the table, set snapshot = false on both and leave \"truncate\" out of its `operations` in both",
        earlier.name, later.name
    ))
}

/// Subscriptions (their indexes) that hand a table's changes on in a
/// circle, if any: each one writes the table into the next one's source
/// database, where the next one reads it (and writes it on), forwarding
/// what was applied there (`forward_origins`). One that does not forward
/// breaks the circle, as does a table nothing reads on.
fn forwarding_circle(config: &Config) -> Option<Vec<usize>> {
    let subs = &config.subscriptions;
    // A table as one subscription reads it: (subscription, table) indexes.
    let tables: Vec<(usize, usize)> =
        subs.iter().enumerate().flat_map(|(i, sub)| (0..sub.tables.len()).map(move |t| (i, t))).collect();
    let feeds = |(i, t): (usize, usize), (j, u): (usize, usize)| {
        let (from, to) = (&subs[i], &subs[j]);
        let same = match (config.targets.get(&from.target), config.sources.get(&to.source)) {
            (Some(target), Some(source)) => target.same_database(source),
            _ => false,
        };
        to.forward_origins && same && to.tables[u].from == from.tables[t].to
    };
    // From each table, the paths its changes take, until one comes back.
    tables.iter().find_map(|&start| {
        let mut paths = vec![vec![start]];
        while let Some(path) = paths.pop() {
            let last = *path.last()?;
            for &next in tables.iter().filter(|&&next| feeds(last, next)) {
                if next == start {
                    let mut circle: Vec<usize> = path.iter().map(|&(i, _)| i).collect();
                    circle.dedup();
                    return Some(circle);
                }
                if !path.contains(&next) {
                    paths.push([path.as_slice(), &[next]].concat());
                }
            }
        }
        None
    })
}

/// Whether the databases named `a` and `b` in `databases` (a config's
/// sources or targets) are one.
pub(crate) fn same_database(databases: &BTreeMap<String, ConnInfo>, a: &str, b: &str) -> bool {
    a == b || matches!((databases.get(a), databases.get(b)), (Some(a), Some(b)) if a.same_database(b))
}

type EnvLookup = dyn Fn(&str) -> Result<String, std::env::VarError>;

struct Checker<'a> {
    text: &'a str,
    path: &'a Path,
    env: &'a EnvLookup,
    needs_subscriptions: bool,
    diagnostics: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn report(&mut self, span: Range<usize>, message: String) {
        let mut start = span.start.min(self.text.len());
        while !self.text.is_char_boundary(start) {
            start -= 1;
        }
        let before = &self.text[..start];
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
        let mut config = Config { server: raw.server, sources, targets, subscriptions: Vec::new() };
        let mut slots = BTreeMap::new();
        let mut spans = Vec::new();
        for sub in &raw.subscriptions {
            // References are checked against every defined name, so a
            // database with a bad url is reported once, not again as unknown
            // by each subscription that uses it.
            if let Some(subscription) = self.subscription(sub, &raw.sources, &raw.targets) {
                let span = sub.get_ref().name.span();
                if let Some(other) = slots.insert(subscription.slot.clone(), subscription.name.clone()) {
                    self.report(span.clone(), shared_slot_message(&other, &subscription));
                }
                for earlier in &config.subscriptions {
                    if let Some(message) = shared_writes(earlier, &subscription, &config) {
                        self.report(span.clone(), message);
                    }
                }
                config.subscriptions.push(subscription);
                spans.push(span);
            }
        }
        if let Some(circle) = forwarding_circle(&config) {
            let names: Vec<String> =
                circle.iter().map(|&i| format!("{:?}", config.subscriptions[i].name)).collect();
            self.report(
                spans[circle[0]].clone(),
                format!(
                    "subscriptions {} → {} forward what the one before applied (forward_origins = true) in a \
                     circle: a change would go round for ever; set forward_origins = false on one of them",
                    names.join(" → "),
                    names[0]
                ),
            );
        }
        if raw.subscriptions.is_empty() && self.needs_subscriptions {
            self.report(0..0, "no [[subscriptions]]: nothing to replicate".into());
        }
        config
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
        let what = format!("{kind} {name:?}");
        let info: ConnInfo = match raw.url.get_ref().parse() {
            Ok(info) => info,
            Err(error) => {
                self.report(raw.url.span(), format!("{what}: invalid url: {error}"));
                return None;
            }
        };
        let in_url = info.password.is_some().then(|| raw.url.span());
        let in_file = raw.password_file.as_ref().map(Spanned::span);
        let in_env = raw.password_env.as_ref().map(Spanned::span);
        let given: Vec<Range<usize>> = [in_url, in_file, in_env].into_iter().flatten().collect();
        if let [_, second, ..] = given.as_slice() {
            let message =
                format!("{what}: give the password one way only (in the url, password_file or password_env)");
            self.report(second.clone(), message);
            return None;
        }
        match (&raw.password_file, &raw.password_env) {
            (Some(file), _) => {
                let password = self.password_file(&what, file)?;
                Some(info.with_password_file(file.get_ref().clone(), password))
            }
            (None, Some(var)) => Some(info.with_password(self.password_env(&what, var)?)),
            (None, None) => Some(info),
        }
    }

    fn password_file(&mut self, what: &str, file: &Spanned<PathBuf>) -> Option<Secret> {
        match Secret::read_file(file.get_ref()) {
            Ok(password) => Some(password),
            Err(error) => {
                // A path that is neither absolute nor in a folder that
                // exists may be the password itself (`/` is common in
                // generated ones).
                let path = file.get_ref();
                let in_a_folder =
                    path.parent().is_some_and(|folder| !folder.as_os_str().is_empty() && folder.is_dir());
                let message = if path.is_absolute() || in_a_folder {
                    format!("{what}: cannot read password_file {}: {error}", path.display())
                } else {
                    format!(
                        "{what}: cannot read password_file (not repeated here, in case it is the password \
                         itself): {error}"
                    )
                };
                self.report(file.span(), message);
                None
            }
        }
    }

    fn password_env(&mut self, what: &str, var: &Spanned<String>) -> Option<Secret> {
        let name = var.get_ref();
        // Not `VarError`'s own message: it quotes a value that is not UTF-8.
        let problem = match (self.env)(name) {
            Ok(value) => return Some(Secret::new(value)),
            Err(std::env::VarError::NotPresent) => "is not set",
            Err(std::env::VarError::NotUnicode(_)) => "is not valid UTF-8",
        };
        let is_a_name = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        // A generated password can be letters and digits only: a name is
        // repeated only when written the usual way, in capitals, and with
        // words apart (`DB_PASSWORD`) or without digits (`PGPASSWORD`).
        let usual_name = !name.chars().any(|c| c.is_ascii_lowercase())
            && (name.contains('_') || !name.chars().any(|c| c.is_ascii_digit()));
        let message = match (is_a_name, usual_name) {
            (true, true) => format!("{what}: environment variable {name} {problem}"),
            (true, false) => format!(
                "{what}: the environment variable password_env names {problem} (the name is not repeated here, \
                 in case it is the password itself)"
            ),
            (false, _) => format!(
                "{what}: password_env must name an environment variable (letters, digits and _), not hold the password"
            ),
        };
        self.report(var.span(), message);
        None
    }

    fn subscription(
        &mut self,
        sub: &Spanned<RawSubscription>,
        sources: &BTreeMap<String, Spanned<RawDatabase>>,
        targets: &BTreeMap<String, Spanned<RawDatabase>>,
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
        let tables = self.tables(&raw.tables);
        let slot = slot_name(name);
        let (publication, publication_managed) = match &raw.publication {
            Some(p) => {
                ok &= self.check_publication_name(p);
                (p.get_ref().clone(), false)
            }
            None => (slot.clone(), true),
        };
        let tables = tables?;
        ok.then(|| Subscription {
            name: name.clone(),
            source: raw.source.get_ref().clone(),
            target: raw.target.get_ref().clone(),
            snapshot: raw.snapshot,
            slot,
            publication,
            publication_managed,
            on_error: raw.on_error,
            forward_origins: raw.forward_origins,
            tables,
        })
    }

    /// The table mappings, each source table once and each target table once.
    fn tables(&mut self, raw: &[Spanned<RawTable>]) -> Option<Vec<TableMapping>> {
        let mut ok = true;
        let mut tables = Vec::new();
        let mut seen_from = BTreeSet::new();
        let mut seen_to = BTreeSet::new();
        for table in raw {
            let Some(mapping) = self.table(table) else {
                ok = false;
                continue;
            };
            let raw = table.get_ref();
            if !seen_from.insert(mapping.from.clone()) {
                self.report(raw.from.span(), format!("table {} is listed twice", mapping.from));
                ok = false;
            }
            if !seen_to.insert(mapping.to.clone()) {
                let span = raw.to.as_ref().unwrap_or(&raw.from).span();
                self.report(span, format!("two tables map to {}", mapping.to));
                ok = false;
            }
            tables.push(mapping);
        }
        ok.then_some(tables)
    }

    fn check_publication_name(&mut self, name: &Spanned<String>) -> bool {
        let text = name.get_ref();
        let valid = !text.is_empty() && text.len() <= 63;
        if !valid {
            self.report(
                name.span(),
                format!("publication name {text:?} must be 1 to 63 bytes (PostgreSQL's limit for names)"),
            );
        }
        valid
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
            // A url written here instead of a name may hold a password.
            let message = if name.get_ref().contains([':', '@', '=', '/']) {
                format!(
                    "{kind} must name one of the [{kind}s] (defined: {list:?}), not hold a connection string \
                     (not repeated here: it may hold a password)"
                )
            } else {
                format!("unknown {kind} {:?} (defined: {list:?})", name.get_ref())
            };
            self.report(name.span(), message);
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
        let columns = match (&raw.columns, &raw.exclude) {
            (Some(_), Some(exclude)) => {
                self.report(exclude.span(), "give `columns` or `exclude`, not both".into());
                return None;
            }
            (Some(columns), None) => ColumnSelection::Only(columns.get_ref().clone()),
            (None, Some(exclude)) => ColumnSelection::Except(exclude.get_ref().clone()),
            (None, None) => ColumnSelection::All,
        };
        let operations = match &raw.operations {
            None => Operations::default(),
            Some(list) if list.get_ref().is_empty() => {
                self.report(list.span(), "`operations` is empty: the table would receive nothing".into());
                return None;
            }
            Some(list) => {
                let has = |op| list.get_ref().contains(&op);
                Operations {
                    insert: has(Operation::Insert),
                    update: has(Operation::Update),
                    delete: has(Operation::Delete),
                    truncate: has(Operation::Truncate),
                }
            }
        };
        if let Some(f) = &raw.filter
            && let Err(error) = crate::route::filter::Filter::check_syntax(f.get_ref())
        {
            self.report(f.span(), error.to_string());
            return None;
        }
        let mut renamed = BTreeSet::new();
        if let Some(twice) = raw.rename.values().find(|v| !renamed.insert(v.as_str())) {
            self.report(table.span(), format!("two columns are renamed to {twice:?}"));
            return None;
        }
        let filter = raw.filter.as_ref().map(|f| f.get_ref().clone());
        Some(TableMapping { from, to, columns, rename: raw.rename.clone(), filter, operations })
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

#[cfg(test)]
mod tests {
    use std::env::VarError;
    use std::io::Write;

    use super::*;

    const SECRET: &str = "hunter2-do-not-print";

    /// The environment the tests see: one variable, holding a password.
    fn env(name: &str) -> Result<String, VarError> {
        match name {
            "CUSTOMERS_PASSWORD" => Ok(format!("{SECRET}-env")),
            _ => Err(VarError::NotPresent),
        }
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, Path::new("ferry.toml"), &env, true)
    }

    /// Each diagnostic as `line:column: message`.
    fn diagnostics(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(config) => panic!("expected errors, got {config:?}"),
            Err(ConfigError::Invalid { diagnostics }) => {
                diagnostics.iter().map(|d| format!("{}:{}: {}", d.line, d.column, d.message)).collect()
            }
            Err(other) => panic!("expected diagnostics, got {other}"),
        }
    }

    /// A config with one subscription from `a` to `b`, then `rest`.
    fn with_databases(rest: &str) -> String {
        format!(
            "[sources.a]\nurl = \"postgresql://h/a\"\n\n[targets.b]\nurl = \"postgresql://h/b\"\n\n{rest}"
        )
    }

    const FULL: &str = r#"
[server]
listen = "0.0.0.0:9999"

[sources.customers]
url = "postgresql://ferry@customers-db:5432/customers?sslmode=verify-full"
password_env = "CUSTOMERS_PASSWORD"

[targets.orders]
url = "host=orders-db dbname=orders user=ferry"

[[subscriptions]]
name = "customers-to-orders"
source = "customers"
target = "orders"

[[subscriptions.tables]]
from = "public.customers"
to = "replica.customers"

[[subscriptions.tables]]
from = 'public."Order Lines"'

[[subscriptions]]
name = "audit"
source = "customers"
target = "orders"
snapshot = false
publication = "audit_pub"
tables = [{ from = "Audit" }]
"#;

    #[test]
    fn a_full_config_parses_with_its_defaults() {
        let config = parse(FULL).unwrap();
        assert_eq!(config.server.listen, "0.0.0.0:9999".parse().unwrap());
        assert_eq!(config.sources["customers"].password, Some(Secret::new(format!("{SECRET}-env"))));
        assert_eq!(config.targets["orders"].dbname(), "orders");
        let [first, second] = config.subscriptions.as_slice() else { panic!("two subscriptions") };
        assert_eq!(first.slot, "ferry_customers_to_orders");
        assert_eq!(first.publication, "ferry_customers_to_orders");
        assert!(first.publication_managed);
        assert!(first.snapshot);
        assert_eq!(
            first.tables,
            [
                TableMapping::new(
                    QualifiedName::new("public", "customers"),
                    QualifiedName::new("replica", "customers")
                ),
                TableMapping::new(
                    QualifiedName::new("public", "Order Lines"),
                    QualifiedName::new("public", "Order Lines")
                ),
            ]
        );
        assert_eq!((second.publication.as_str(), second.publication_managed), ("audit_pub", false));
        assert!(!second.snapshot);
        assert_eq!(second.tables[0].to, QualifiedName::new("public", "audit"));
    }

    #[test]
    fn server_section_is_optional() {
        let config = parse(&with_databases(
            "[[subscriptions]]\nname = \"s\"\nsource = \"a\"\ntarget = \"b\"\ntables = [{ from = \"t\" }]\n",
        ))
        .unwrap();
        assert_eq!(config.server.listen, default_listen());
    }

    #[test]
    fn unknown_keys_are_rejected_where_they_are() {
        let text = "[sources.a]\nurl = \"postgresql://h/a\"\npasswd = \"x\"\n";
        assert_eq!(
            diagnostics(text),
            ["3:1: unknown field `passwd`, expected one of `url`, `password_file`, `password_env`"]
        );
        let text = with_databases(
            "[[subscriptions]]\nname = \"s\"\nsource = \"a\"\ntarget = \"b\"\n\n\
             [[subscriptions.tables]]\nfrom = \"t\"\n    colums = [\"id\"]\n",
        );
        assert_eq!(
            diagnostics(&text),
            ["14:5: unknown field `colums`, expected one of `from`, `to`, `columns`, `exclude`, `rename`, \
                 `where`, `operations`"]
        );
        let text = "[sourcs.a]\nurl = \"postgresql://h/a\"\n";
        let found = diagnostics(text);
        assert_eq!(found.len(), 1);
        assert!(found[0].starts_with("1:2: unknown field `sourcs`"), "{found:?}");
    }

    #[test]
    fn reports_every_problem_at_once() {
        let text = with_databases(
            "[[subscriptions]]\nname = \"s\"\nsource = \"nope\"\ntarget = \"missing\"\n\n\
             [[subscriptions.tables]]\nfrom = \"public.a b\"\n",
        );
        assert_eq!(
            diagnostics(&text),
            [
                r#"9:10: unknown source "nope" (defined: ["a"])"#,
                r#"10:10: unknown target "missing" (defined: ["b"])"#,
                r#"13:8: invalid table name "public.a b": unquoted names may hold only letters, digits, _ and $; quote the others"#,
            ]
        );
        let shown = parse(&text).unwrap_err().to_string();
        assert_eq!(shown.lines().count(), 3);
        assert!(shown.lines().all(|l| l.starts_with("ferry.toml:")), "{shown}");
    }

    #[test]
    fn a_bad_url_is_one_problem_not_also_an_unknown_source() {
        let text = "[sources.a]\nurl = \"postgresql://h/a?sslmode=sometimes\"\n\n[targets.b]\nurl = \"postgresql://h/b\"\n\n\
                    [[subscriptions]]\nname = \"s\"\nsource = \"a\"\ntarget = \"b\"\ntables = [{ from = \"t\" }]\n";
        assert_eq!(
            diagnostics(text),
            [
                r#"2:7: source "a": invalid url: invalid sslmode "sometimes": expected disable, allow, prefer, require, verify-ca or verify-full"#
            ]
        );
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let text = with_databases(
            "[[subscriptions]]\nname = \"s\"\nsource = \"a\"\ntarget = \"b\"\n\
             tables = [{ from = \"straße\", to = \"ü b\" }]\n",
        );
        // "straße" is 7 bytes: byte columns would say 36.
        let found = diagnostics(&text);
        assert_eq!(found.len(), 1);
        assert!(found[0].starts_with("11:35: invalid table name \"ü b\""), "{found:?}");
    }

    #[test]
    fn two_subscriptions_cannot_share_a_slot() {
        let sub = |name: &str, table: &str| {
            format!(
                "[[subscriptions]]\nname = \"{name}\"\nsource = \"a\"\ntarget = \"b\"\ntables = [{{ from = \"{table}\" }}]\n\n"
            )
        };
        let text = with_databases(&(sub("a-b", "t") + &sub("a_b", "u")));
        assert_eq!(
            diagnostics(&text),
            [r#"14:8: subscriptions "a-b" and "a_b" would share the slot ferry_a_b; rename one"#]
        );
        let text = with_databases(&(sub("same", "t") + &sub("same", "u")));
        assert_eq!(diagnostics(&text), [r#"14:8: subscription name "same" is used twice"#]);
    }

    /// Sources `a` and `a2` and targets `b` and `b2`, each pair one
    /// database under two names, and `c`, another target database.
    fn with_aliased_databases(rest: &str) -> String {
        format!(
            "[sources.a]\nurl = \"postgresql://h/a\"\n[sources.a2]\nurl = \"postgresql://other@h/a\"\n\
             [targets.b]\nurl = \"postgresql://h/b\"\n[targets.b2]\nurl = \"host=h dbname=b\"\n\
             [targets.c]\nurl = \"postgresql://h/c\"\n\n{rest}"
        )
    }

    fn subscription(name: &str, source: &str, target: &str, extra: &str) -> String {
        format!(
            "[[subscriptions]]\nname = \"{name}\"\nsource = \"{source}\"\ntarget = \"{target}\"\n{extra}\n\n"
        )
    }

    #[test]
    fn two_subscriptions_cannot_write_one_target_table() {
        let first = subscription("eu", "a", "b", r#"tables = [{ from = "orders" }]"#);
        let both_write = r#"19:8: subscriptions "eu" and "us" both write "public"."orders" on the same target database, which empties it of the other's rows: a copy empties it after a crash, a TRUNCATE on either source empties it. To share the table, set snapshot = false on both and leave "truncate" out of its `operations` in both"#;
        for (target, to) in [("b", "orders"), ("b2", "public.orders")] {
            let second = subscription(
                "us",
                "a2",
                target,
                &format!(r#"tables = [{{ from = "us_orders", to = "{to}" }}]"#),
            );
            assert_eq!(
                diagnostics(&with_aliased_databases(&(first.clone() + &second))),
                [both_write],
                "{target}"
            );
        }
        // Another target database, or another table of the same one.
        for (target, from) in [("c", "orders"), ("b", "customers")] {
            let second = subscription("us", "a2", target, &format!(r#"tables = [{{ from = "{from}" }}]"#));
            parse(&with_aliased_databases(&(first.clone() + &second))).unwrap();
        }
        // Neither copying nor truncating it, both may write it; either
        // one doing so is refused.
        let sharing = |name: &str, snapshot: bool, operations: &str| {
            let tables = format!(r#"tables = [{{ from = "orders", operations = [{operations}] }}]"#);
            subscription(name, "a", "b", &format!("snapshot = {snapshot}\n{tables}"))
        };
        let no_truncate = r#""insert", "update", "delete""#;
        let text = sharing("eu", false, no_truncate) + &sharing("us", false, no_truncate);
        parse(&with_aliased_databases(&text)).unwrap();
        for (snapshot, operations) in [(true, no_truncate), (false, r#""insert", "truncate""#)] {
            let text = sharing("eu", false, no_truncate) + &sharing("us", snapshot, operations);
            assert_eq!(diagnostics(&with_aliased_databases(&text)).len(), 1, "{snapshot} {operations}");
        }
    }

    #[test]
    fn subscriptions_forwarding_each_others_changes_in_a_circle_are_refused() {
        let databases = "[sources.a]\nurl = \"postgresql://h/a\"\n[sources.b]\nurl = \"postgresql://h/b\"\n\
                         [targets.a]\nurl = \"host=h dbname=a\"\n[targets.b]\nurl = \"postgresql://h/b\"\n\n";
        let config = |back_forwards: bool, back_table: &str| {
            let there =
                subscription("there", "a", "b", "forward_origins = true\ntables = [{ from = \"t\" }]");
            let extra =
                format!("forward_origins = {back_forwards}\ntables = [{{ from = \"{back_table}\" }}]");
            format!("{databases}{there}{}", subscription("back", "b", "a", &extra))
        };
        assert_eq!(
            diagnostics(&config(true, "t")),
            [
                r#"11:8: subscriptions "there" → "back" → "there" forward what the one before applied (forward_origins = true) in a circle: a change would go round for ever; set forward_origins = false on one of them"#
            ]
        );
        // One that does not forward breaks the circle; so does a table
        // that does not come back.
        parse(&config(false, "t")).unwrap();
        parse(&config(true, "u")).unwrap();
        // A table that comes back under another name and goes on to one
        // nothing reads: t → t → x → z ends.
        let there = subscription(
            "there",
            "a",
            "b",
            "forward_origins = true\ntables = [{ from = \"t\" }, { from = \"x\", to = \"z\" }]",
        );
        let back =
            subscription("back", "b", "a", "forward_origins = true\ntables = [{ from = \"t\", to = \"x\" }]");
        parse(&format!("{databases}{there}{back}")).unwrap();
    }

    #[test]
    fn a_managed_publication_is_not_read_by_another_subscription_of_its_source() {
        let managed = subscription("x", "a", "b", r#"tables = [{ from = "t" }]"#);
        let reads = |source: &str| {
            subscription("y", source, "c", "publication = \"ferry_x\"\ntables = [{ from = \"u\" }]")
        };
        let refused = r#"subscription "y" reads publication ferry_x, which subscription "x" manages (it sets the publication to its own tables at every start); give "y" a publication of its own"#;
        for (text, line) in [(managed.clone() + &reads("a2"), 19), (reads("a") + &managed, 20)] {
            assert_eq!(diagnostics(&with_aliased_databases(&text)), [format!("{line}:8: {refused}")]);
        }
        // On another source database the name is another publication.
        let text = format!(
            "[sources.a]\nurl = \"postgresql://h/a\"\n[sources.d]\nurl = \"postgresql://h/d\"\n\
             [targets.b]\nurl = \"postgresql://h/b\"\n[targets.c]\nurl = \"postgresql://h/c\"\n\n{}{}",
            managed,
            reads("d")
        );
        parse(&text).unwrap();
    }

    #[test]
    fn a_connection_string_where_a_name_belongs_is_not_repeated() {
        let text = with_databases(&subscription(
            "s",
            &format!("postgresql://u:{SECRET}@h/a"),
            "b",
            r#"tables = [{ from = "t" }]"#,
        ));
        let found = diagnostics(&text);
        assert_eq!(found.len(), 1);
        assert!(found[0].contains(r#"source must name one of the [sources] (defined: ["a"])"#), "{found:?}");
        assert!(!found[0].contains(SECRET), "{found:?}");
        let text = with_databases(&subscription("s", "a", "bb", r#"tables = [{ from = "t" }]"#));
        assert_eq!(diagnostics(&text), [r#"10:10: unknown target "bb" (defined: ["b"])"#]);
    }

    #[test]
    fn tables_are_listed_once_on_each_side() {
        let text = with_databases(
            "[[subscriptions]]\nname = \"s\"\nsource = \"a\"\ntarget = \"b\"\n\
             tables = [{ from = \"t\" }, { from = \"public.t\", to = \"u\" }, { from = \"v\", to = \"T\" }]\n",
        );
        assert_eq!(
            diagnostics(&text),
            [r#"11:36: table "public"."t" is listed twice"#, r#"11:79: two tables map to "public"."t""#,]
        );
    }

    #[test]
    fn names_are_checked() {
        let text = with_databases(
            "[[subscriptions]]\nname = \"Customers\"\nsource = \"a\"\ntarget = \"b\"\npublication = \"\"\ntables = []\n",
        );
        assert_eq!(
            diagnostics(&text),
            [
                r#"8:8: subscription name "Customers" must be 1 to 57 characters of a-z, 0-9, - and _ (it names the slot)"#,
                r#"7:1: subscription "Customers" has no [[subscriptions.tables]]"#,
                r#"11:15: publication name "" must be 1 to 63 bytes (PostgreSQL's limit for names)"#,
            ]
        );
        assert_eq!(diagnostics(""), ["1:1: no [[subscriptions]]: nothing to replicate"]);
    }

    fn one_database(database: &str) -> String {
        format!(
            "{database}\n[targets.b]\nurl = \"postgresql://h/b\"\n\n\
             [[subscriptions]]\nname = \"s\"\nsource = \"a\"\ntarget = \"b\"\ntables = [{{ from = \"t\" }}]\n"
        )
    }

    #[test]
    fn password_from_a_file_without_its_newline() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "{SECRET} with spaces").unwrap();
        let text = one_database(&format!(
            "[sources.a]\nurl = \"postgresql://ferry@h/a\"\npassword_file = '{}'\n",
            file.path().display()
        ));
        let config = parse(&text).unwrap();
        assert_eq!(
            config.sources["a"].password.as_ref().map(Secret::expose),
            Some(&*format!("{SECRET} with spaces"))
        );
    }

    #[test]
    fn an_unreadable_password_file_is_named() {
        let text = one_database(
            "[sources.a]\nurl = \"postgresql://h/a\"\npassword_file = '/nonexistent/ferry-pw'\n",
        );
        let found = diagnostics(&text);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].starts_with(r#"3:17: source "a": cannot read password_file /nonexistent/ferry-pw: "#),
            "{found:?}"
        );
    }

    #[test]
    fn a_password_file_without_a_folder_is_not_repeated() {
        let text =
            one_database(&format!("[sources.a]\nurl = \"postgresql://h/a\"\npassword_file = '{SECRET}'\n"));
        let found = diagnostics(&text);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].starts_with(r#"3:17: source "a": cannot read password_file (not repeated here, in case it is the password itself): "#),
            "{found:?}"
        );
        assert!(!found[0].contains(SECRET), "{found:?}");
    }

    #[test]
    fn a_relative_password_file_in_no_folder_that_exists_is_not_repeated() {
        let pasted = "kX9/f+Qa2vLm";
        let text =
            one_database(&format!("[sources.a]\nurl = \"postgresql://h/a\"\npassword_file = '{pasted}'\n"));
        let found = diagnostics(&text);
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("not repeated here") && !found[0].contains(pasted), "{found:?}");
    }

    #[test]
    fn password_from_the_environment() {
        let text =
            one_database("[sources.a]\nurl = \"postgresql://h/a\"\npassword_env = \"CUSTOMERS_PASSWORD\"\n");
        let config = parse(&text).unwrap();
        assert_eq!(config.sources["a"].password, Some(Secret::new(format!("{SECRET}-env"))));
    }

    #[test]
    fn a_missing_environment_variable_is_named() {
        let text =
            one_database("[sources.a]\nurl = \"postgresql://h/a\"\npassword_env = \"ORDERS_PASSWORD\"\n");
        assert_eq!(
            diagnostics(&text),
            [r#"3:16: source "a": environment variable ORDERS_PASSWORD is not set"#]
        );
    }

    #[test]
    fn the_password_is_given_one_way_only() {
        let one_way_only = "give the password one way only (in the url, password_file or password_env)";
        let text = one_database(
            "[sources.a]\nurl = \"postgresql://h/a\"\npassword_file = \"/run/pw\"\npassword_env = \"CUSTOMERS_PASSWORD\"\n",
        );
        assert_eq!(diagnostics(&text), [format!("4:16: source \"a\": {one_way_only}")]);
        let text = one_database(&format!(
            "[sources.a]\nurl = \"postgresql://u:{SECRET}@h/a\"\npassword_env = \"CUSTOMERS_PASSWORD\"\n"
        ));
        assert_eq!(diagnostics(&text), [format!("3:16: source \"a\": {one_way_only}")]);
    }

    /// Display and Debug of whatever `text` gives, which must not contain
    /// the secret.
    fn assert_no_secret(text: &str) {
        let shown = match parse(text) {
            Ok(config) => format!("{config:?}"),
            Err(error) => format!("{error}\n{error:?}"),
        };
        assert!(!shown.contains(SECRET), "the password leaked:\n{shown}");
    }

    #[test]
    fn passwords_never_appear_in_errors_or_debug_output() {
        let url = format!("postgresql://ferry:{SECRET}@h/a");
        // A syntax error on the line of the url.
        assert_no_secret(&format!("[sources.a]\nurl = \"{url}\" oops\n"));
        // A password where another kind of value belongs, or under a wrong key.
        assert_no_secret(&format!("[sources.a]\nurl = \"{url}\"\nsnapshot = \"{SECRET}\"\n"));
        assert_no_secret(&with_databases(&format!(
            "[[subscriptions]]\nname = \"s\"\nsource = \"a\"\ntarget = \"b\"\nsnapshot = \"{SECRET}\"\ntables = []\n"
        )));
        assert_no_secret(&format!("[sources.a]\nurl = \"postgresql://h/a\"\npassword = \"{SECRET}\"\n"));
        assert_no_secret(&format!(
            "[sources.a]\nurl = \"postgresql://h/a\"\npassword_env = [\"{SECRET}\"]\n"
        ));
        // Urls with a password and something else wrong.
        for bad in ["?sslmode=sometimes", "?bogus=1", "&x"] {
            assert_no_secret(&one_database(&format!("[sources.a]\nurl = \"{url}{bad}\"\n")));
        }
        assert_no_secret(&one_database(&format!(
            "[sources.a]\nurl = \"postgresql://u:{SECRET}@h:99999/a\"\n"
        )));
        assert_no_secret(&one_database(&format!("[sources.a]\nurl = \"host=h password={SECRET} port=x\"\n")));
        // Passwords given twice, and valid configs holding passwords.
        assert_no_secret(&one_database(&format!(
            "[sources.a]\nurl = \"{url}\"\npassword_env = \"CUSTOMERS_PASSWORD\"\n"
        )));
        assert_no_secret(&one_database(&format!("[sources.a]\nurl = \"{url}\"\n")));
        assert_no_secret(FULL);
    }

    #[test]
    fn serde_messages_lose_the_value_they_quote() {
        assert_eq!(
            without_value(r#"invalid type: string "p@ss, expected \"x\"", expected a boolean"#),
            "invalid type: string, expected a boolean"
        );
        assert_eq!(
            without_value("invalid value: integer `70000`, expected u16"),
            "invalid value: integer, expected u16"
        );
        assert_eq!(
            without_value("invalid type: map, expected a string"),
            "invalid type: map, expected a string"
        );
        assert_eq!(without_value("unknown field `x`, expected `url`"), "unknown field `x`, expected `url`");
    }
}

#[cfg(test)]
mod mistakes_tests {
    use super::*;

    const SECRET: &str = "hunter2-do-not-print";

    fn shown(text: &str) -> String {
        match Config::parse_with_env(
            text,
            Path::new("ferry.toml"),
            &|_| Err(std::env::VarError::NotPresent),
            true,
        ) {
            Ok(config) => format!("{config:?}"),
            Err(error) => format!("{error}\n{error:?}"),
        }
    }

    fn config(database: &str, subscription: &str, table: &str) -> String {
        format!(
            "[sources.a]\n{database}\n[targets.b]\nurl = \"postgresql://h/b\"\n\n\
             [[subscriptions]]\nname = \"s\"\nsource = \"a\"\ntarget = \"b\"\n{subscription}\n\
             [[subscriptions.tables]]\nfrom = \"t\"\n{table}\n"
        )
    }

    /// serde's "unknown variant `…`" quotes the value, as "invalid type"
    /// does; `without_value` only strips the latter.
    #[test]
    fn a_password_in_an_enum_field_is_not_echoed() {
        let url = format!("url = \"postgresql://u:{SECRET}@h/a\"");
        let text = config(&url, &format!("on_error = \"{SECRET}\""), "");
        assert!(!shown(&text).contains(SECRET), "the password leaked:\n{}", shown(&text));
        let text = config(&url, "", &format!("operations = [\"{SECRET}\"]"));
        assert!(!shown(&text).contains(SECRET), "the password leaked:\n{}", shown(&text));
    }

    /// The password itself written into password_env (the easy mistake:
    /// `password_env = "s3cr3t-pa55"`) is quoted back in the error.
    #[test]
    fn a_password_written_as_password_env_is_not_echoed() {
        for password in [SECRET, "Tr0ub4dor3xK9", "K9X2Q7ZT"] {
            let text = config(&format!("url = \"postgresql://h/a\"\npassword_env = \"{password}\""), "", "");
            assert!(!shown(&text).contains(password), "the password leaked:\n{}", shown(&text));
        }
        let text = config("url = \"postgresql://h/a\"\npassword_env = \"FERRY_TEST_UNSET_VARIABLE\"", "", "");
        assert!(shown(&text).contains("FERRY_TEST_UNSET_VARIABLE is not set"), "{}", shown(&text));
    }

    /// A `where` that cannot parse is a config error with file, line and
    /// column (README: "every error names file, line and column"), caught
    /// by `validate --offline` and by a SIGHUP reload, not only when the
    /// pipeline starts.
    #[test]
    fn a_where_filter_that_does_not_parse_is_a_located_config_error() {
        for filter in ["status = = (", ""] {
            let text = config("url = \"postgresql://h/a\"", "", &format!("where = \"{filter}\""));
            match Config::parse(&text, Path::new("ferry.toml")) {
                Err(ConfigError::Invalid { diagnostics }) => {
                    assert_eq!(diagnostics[0].line, 13, "{diagnostics:?}");
                }
                other => panic!("where = {filter:?} was accepted: {other:?}"),
            }
        }
    }

    /// Two source columns renamed onto one target column can never be
    /// applied; the config alone shows it.
    #[test]
    fn two_columns_renamed_to_one_name_are_a_config_error() {
        let text = config("url = \"postgresql://h/a\"", "", "rename = { a = \"x\", b = \"x\" }");
        assert!(Config::parse(&text, Path::new("ferry.toml")).is_err(), "accepted");
    }
}
