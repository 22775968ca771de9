//! `ferry validate`: checks a config against its databases before anything
//! runs, and shows what each subscription would do.
//!
//! Offline, only the config file is checked ([`Config::load`] does that) and
//! the plan is printed. Online, every source and target is connected to, all
//! at once, and then, for each table of each subscription:
//!
//! - the source table exists and has a primary key or another usable replica
//!   identity, and a configured publication exists (errors otherwise);
//! - the target table exists and has a primary key, and every column of that
//!   key exists in the source table (errors otherwise);
//! - a target table the start would copy into is empty (an error otherwise);
//! - columns on both sides have types that fit (see below);
//! - source columns the target lacks are listed: they are not replicated.
//!
//! **Types.** Values cross as text: the target parses what the source
//! printed with its own column type's input function. The rule
//! ([`crate::route::type_fit`], the one a running pipeline applies to a
//! column retyped on the source): the same `format_type` on both sides is
//! fine; types of two different categories neither of which is a string
//! type (`boolean` → `integer`) are an error, since no value fits; anything
//! else is a warning naming both types, because many such pairs work
//! (`integer` → `bigint`, `character varying(20)` → `text`) while others
//! fail for some values only (`text` → `integer`, `bigint` → `integer`),
//! which only the data can tell.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use futures_util::future::join_all;
use tokio_postgres::Client;

use crate::apply::{ApplyError, TargetTable, target_error};
use crate::config::{Config, Subscription, TableMapping};
use crate::pg::catalog::Column;
use crate::pg::conninfo::ConnInfo;
use crate::pg::names::{QualifiedName, quote_ident_if_needed};
use crate::pg::tls;
use crate::route::{TableRoute, TypeFit, may_fail_warning};
use crate::snapshot::{self, SnapshotError};
use crate::source::catalog::{self, CatalogError, Identity, SourceTable};
use crate::teardown;

/// How long a database may take to accept a connection when its url sets no
/// `connect_timeout` (or 0): validation should answer, not hang on a lost host.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// `ferry run` would fail.
    Error,
    /// `ferry run` may work, or fail on some rows.
    Warning,
}

/// One finding about a database, a subscription or one of its tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    /// What it is about: `source customers`, `subscription s, table public.t`.
    pub subject: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{severity}: {}: {}", self.subject, self.message)
    }
}

/// The problems found about one subject.
struct Findings {
    subject: String,
    problems: Vec<Problem>,
}

impl Findings {
    fn new(subject: String) -> Findings {
        Findings { subject, problems: Vec::new() }
    }

    fn error(&mut self, message: impl ToString) {
        self.push(Severity::Error, message.to_string());
    }

    fn warning(&mut self, message: impl ToString) {
        self.push(Severity::Warning, message.to_string());
    }

    fn push(&mut self, severity: Severity, message: String) {
        self.problems.push(Problem { severity, subject: self.subject.clone(), message });
    }
}

/// What validation found: the plan, and the problems in the order found.
/// `Display` prints it for the operator.
#[derive(Debug)]
pub struct Report {
    subscriptions: Vec<SubscriptionPlan>,
    problems: Vec<Problem>,
    /// No database was contacted.
    offline: bool,
}

#[derive(Debug)]
struct SubscriptionPlan {
    subscription: Subscription,
    /// One per table, in config order; `None` where the columns are unknown
    /// (offline, or one side could not be read).
    columns: Vec<Option<ColumnPlan>>,
}

/// Which source columns reach the target, in source table order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ColumnPlan {
    /// Carried columns, `source→target` where renamed.
    replicated: Vec<String>,
    not_in_target: Vec<String>,
    /// The row filter and the kinds of change left out.
    filter: Option<String>,
    dropped_operations: Vec<&'static str>,
}

impl Report {
    /// Errors and warnings, in the order found.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    pub fn has_errors(&self) -> bool {
        self.count(Severity::Error) > 0
    }

    fn count(&self, severity: Severity) -> usize {
        self.problems.iter().filter(|p| p.severity == severity).count()
    }
}

/// The plan from the config alone.
pub fn offline(config: &Config) -> Report {
    let subscriptions = config
        .subscriptions
        .iter()
        .map(|s| SubscriptionPlan { subscription: s.clone(), columns: vec![None; s.tables.len()] })
        .collect();
    Report { subscriptions, problems: Vec::new(), offline: true }
}

/// The plan, checked against every source and target.
pub async fn online(config: &Config) -> Report {
    let mut report = offline(config);
    report.offline = false;
    let ((sources, source_problems), (targets, target_problems)) =
        tokio::join!(connect_all(&config.sources, "source"), connect_all(&config.targets, "target"));
    report.problems.extend(source_problems);
    report.problems.extend(target_problems);
    report.problems.extend(check_sources(&sources).await);
    let checks = config
        .subscriptions
        .iter()
        .map(|sub| check_subscription(sub, sources.get(&sub.source), targets.get(&sub.target)));
    for (plan, (columns, problems)) in report.subscriptions.iter_mut().zip(join_all(checks).await) {
        plan.columns = columns;
        report.problems.extend(problems);
    }
    for (source, client) in &sources {
        let mut findings = Findings::new(format!("source {source}"));
        let slots: Vec<&str> =
            config.subscriptions.iter().filter(|s| s.source == *source).map(|s| s.slot.as_str()).collect();
        if let Err(error) = catalog::check_slot_room(client, &slots).await {
            findings.error(error);
        }
        for forgotten in teardown::forgotten_slots_on(config, source, client).await.unwrap_or_default() {
            findings.warning(forgotten);
        }
        report.problems.extend(findings.problems);
    }
    report
}

/// Connects to every database of one kind at once. The ones that cannot be
/// reached are problems, named by the config's name and the url without its
/// password.
async fn connect_all(
    databases: &BTreeMap<String, ConnInfo>,
    kind: &str,
) -> (BTreeMap<String, Client>, Vec<Problem>) {
    let attempts = join_all(databases.iter().map(|(name, info)| async move { (name, connect(info).await) }));
    let mut clients = BTreeMap::new();
    let mut problems = Vec::new();
    for (name, result) in attempts.await {
        match result {
            Ok(client) => {
                clients.insert(name.clone(), client);
            }
            Err(error) => {
                let mut database = Findings::new(format!("{kind} {name}"));
                database.error(error);
                problems.extend(database.problems);
            }
        }
    }
    (clients, problems)
}

async fn connect(info: &ConnInfo) -> Result<Client, tls::SqlConnectError> {
    // Not even `connect_timeout=0` waits for ever here.
    let limit = info.connect_timeout.filter(|t| !t.is_zero()).unwrap_or(CONNECT_TIMEOUT);
    let info = ConnInfo { connect_timeout: Some(limit), ..info.clone() };
    tls::connect_sql(&info).await
}

/// What every source needs whatever its tables: logical WAL, and a role
/// that may read a slot.
async fn check_sources(sources: &BTreeMap<String, Client>) -> Vec<Problem> {
    let checks = sources.iter().map(|(name, client)| async move {
        let mut findings = Findings::new(format!("source {name}"));
        if let Err(error) = catalog::check_wal_level(client).await {
            findings.error(error);
        }
        if let Err(error) = catalog::check_replication_role(client).await {
            findings.error(error);
        }
        findings.problems
    });
    join_all(checks).await.into_iter().flatten().collect()
}

/// Checks a subscription's publication and tables on whichever of its
/// databases could be reached.
async fn check_subscription(
    sub: &Subscription,
    source: Option<&Client>,
    target: Option<&Client>,
) -> (Vec<Option<ColumnPlan>>, Vec<Problem>) {
    let mut findings = Findings::new(format!("subscription {}", sub.name));
    if let Some(source) = source
        && let Err(error) = catalog::check_publication(source, sub).await
    {
        findings.error(error);
    }
    if let (Some(source), Some(target)) = (source, target)
        && sub.publication_managed
    {
        check_published_copies(sub, source, target).await.unwrap_or_else(|e| findings.error(e));
    }
    let copies = match target {
        Some(target) if sub.snapshot => {
            tables_to_copy(sub, source, target).await.map_err(|e| findings.error(e)).unwrap_or_default()
        }
        _ => HashSet::new(),
    };
    let mut problems = findings.problems;
    let mut columns = Vec::new();
    for table in &sub.tables {
        let mut findings =
            Findings::new(format!("subscription {}, table {}", sub.name, table.from.readable()));
        let plan = check_table(table, sub.snapshot, source, target, &mut findings).await;
        if let Some(target) = target
            && plan.is_some()
            && copies.contains(&table.from.to_string())
        {
            check_empty(target, &table.to, &mut findings).await;
        }
        columns.push(plan);
        problems.extend(findings.problems);
    }
    (columns, problems)
}

/// The source tables (as text) a start copies with `snapshot = true`, as
/// `pipeline::set_up` and `tablesync::TableStates` decide, read without
/// writing anything: those the target records no copy of, or no
/// unfinished copy into the same table (which is emptied first), where the
/// subscription has progress; without progress, all but such unfinished
/// ones. A target written before ferry recorded its tables has the
/// publication's tables taken as copied (none known without the source).
async fn tables_to_copy(
    sub: &Subscription,
    source: Option<&Client>,
    target: &Client,
) -> Result<HashSet<String>, String> {
    let sources = sub.tables.iter().map(|t| t.from.to_string());
    let (recorded, resumed) = recorded_and_resumed(sub, target).await?;
    if resumed && !recorded {
        let Some(source) = source else { return Ok(HashSet::new()) };
        let published =
            catalog::published_tables(source, &sub.publication).await.map_err(|e| e.to_string())?;
        let published: HashSet<String> = published.iter().map(ToString::to_string).collect();
        return Ok(sources.filter(|s| !published.contains(s)).collect());
    }
    if !recorded {
        return Ok(sources.collect());
    }
    let standing = standing_tables(sub, target).await?;
    Ok(sources.filter(|s| !standing.get(s).is_some_and(|&unfinished| resumed || unfinished)).collect())
}

/// The start's check that ferry's publication still holds every table the
/// target has a copy of (one dropped and created again left it), read
/// without writing: copies recorded, not unfinished, not of a table since
/// taken out or mapped elsewhere.
async fn check_published_copies(sub: &Subscription, source: &Client, target: &Client) -> Result<(), String> {
    let listed = catalog::published_tables(source, &sub.publication).await.map_err(|e| e.to_string())?;
    if listed.is_empty() || !recorded_and_resumed(sub, target).await?.0 {
        return Ok(()); // not made yet: the start makes it with every table
    }
    let standing = standing_tables(sub, target).await?;
    let copied: Vec<&QualifiedName> =
        sub.tables.iter().map(|t| &t.from).filter(|t| standing.get(&t.to_string()) == Some(&false)).collect();
    catalog::check_published_copies(&sub.publication, &listed, &copied).map_err(|e| e.to_string())
}

fn read_tables_error(error: tokio_postgres::Error) -> String {
    target_error("reading which tables were copied")(error).to_string()
}

/// Whether the target records anything of the subscription's tables, and
/// whether it has the subscription's progress (a target without ferry's
/// tables has neither).
async fn recorded_and_resumed(sub: &Subscription, target: &Client) -> Result<(bool, bool), String> {
    let row = target
        .query_one(
            "SELECT to_regclass('ferry.tables') IS NOT NULL, to_regclass('ferry.progress') IS NOT NULL",
            &[],
        )
        .await
        .map_err(read_tables_error)?;
    let exists = |sql: &'static str, present: bool| async move {
        Ok::<_, String>(
            present
                && target.query_one(sql, &[&sub.name]).await.map_err(read_tables_error)?.get::<_, bool>(0),
        )
    };
    let recorded =
        exists("SELECT EXISTS (SELECT 1 FROM ferry.tables WHERE subscription = $1)", row.get(0)).await?;
    let resumed =
        exists("SELECT EXISTS (SELECT 1 FROM ferry.progress WHERE subscription = $1)", row.get(1)).await?;
    Ok((recorded, resumed))
}

/// The configured tables (as text) whose row in `ferry.tables` still
/// stands as a start reads it (not taken out since, copied into the table
/// they map to now), each with whether its copy is unfinished. Columns an
/// older ferry's `ferry.tables` lacks are read as absent; the table must
/// exist.
async fn standing_tables(sub: &Subscription, target: &Client) -> Result<HashMap<String, bool>, String> {
    let (sources, targets): (Vec<String>, Vec<String>) =
        sub.tables.iter().map(|t| (t.from.to_string(), t.to.to_string())).unzip();
    let rows = target
        .query(
            "SELECT u.s, (j ->> 'copying') IS NOT DISTINCT FROM 'true'
             FROM unnest($2::text[], $3::text[]) AS u (s, t)
             JOIN ferry.tables f ON f.subscription = $1 AND f.source_table = u.s, to_jsonb(f) j
             WHERE (j ->> 'removed') IS DISTINCT FROM 'true' AND coalesce(j ->> 'target_table', u.t) = u.t",
            &[&sub.name, &sources, &targets],
        )
        .await
        .map_err(read_tables_error)?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// A table the start copies into must be empty: the copy refuses one
/// holding rows.
async fn check_empty(target: &Client, table: &QualifiedName, findings: &mut Findings) {
    match snapshot::is_empty(target, table).await {
        Ok(true) => {}
        Ok(false) => findings.error(SnapshotError::TargetNotEmpty(table.clone())),
        Err(error) => findings.error(error),
    }
}

/// Checks both sides of one table mapping; the column plan when both could
/// be read.
async fn check_table(
    table: &TableMapping,
    snapshot: bool,
    source: Option<&Client>,
    target: Option<&Client>,
    findings: &mut Findings,
) -> Option<ColumnPlan> {
    let source_table = match source {
        Some(client) => read_source(client, &table.from, findings).await,
        None => None,
    };
    let target_table = match target {
        Some(client) => TargetTable::load(client, &table.to).await.map_err(|e| findings.error(e)).ok(),
        None => None,
    };
    if let Some(client) = target
        && target_table.is_some()
    {
        check_target_privileges(client, table, snapshot, findings).await;
    }
    let source_table = source_table?;
    Some(compare(table, source_table.columns, &target_table?, &source_table.identity, findings))
}

/// The target table privileges the table's writes need (README: Least
/// privilege): SELECT always (the copy's check that the table is empty, a
/// filter's reads); INSERT and DELETE for the copy (which deletes what an
/// unfinished one left) and for a filter's updates (rows move in and out);
/// each replicated operation's own. Column grants count for SELECT, INSERT
/// and UPDATE.
async fn check_target_privileges(
    client: &Client,
    table: &TableMapping,
    snapshot: bool,
    findings: &mut Findings,
) {
    let ops = &table.operations;
    let moves = ops.update && table.filter.is_some();
    let needed: Vec<&str> = [
        ("SELECT", true),
        ("INSERT", ops.insert || snapshot || moves),
        ("UPDATE", ops.update),
        ("DELETE", ops.delete || snapshot || moves),
        ("TRUNCATE", ops.truncate),
    ]
    .into_iter()
    .filter_map(|(privilege, needed)| needed.then_some(privilege))
    .collect();
    let missing = client
        .query_one(
            "SELECT coalesce(string_agg(p, ', '), '') FROM unnest($2::text[]) AS p
             WHERE NOT CASE WHEN p IN ('SELECT', 'INSERT', 'UPDATE') THEN has_any_column_privilege($1, p)
                            ELSE has_table_privilege($1, p) END",
            &[&table.to.to_string(), &needed],
        )
        .await
        .map(|row| row.get::<_, String>(0));
    match missing {
        Ok(missing) if missing.is_empty() => {}
        Ok(missing) => findings.error(format!(
            "ferry's target role lacks {missing} on {} (README: Least privilege)",
            table.to.readable()
        )),
        Err(error) => findings.error(target_error(format!("reading the privileges on {}", table.to))(error)),
    }
}

/// The source table as its changes will describe it, when it exists. An
/// unusable replica identity is reported, and the columns are still
/// compared.
async fn read_source(client: &Client, table: &QualifiedName, findings: &mut Findings) -> Option<SourceTable> {
    match catalog::check_table(client, table).await {
        Ok(()) => {}
        Err(error @ CatalogError::NoReplicaIdentity(_)) => findings.error(error),
        Err(error) => {
            findings.error(error);
            return None;
        }
    }
    catalog::source_table(client, table).await.map_err(|e| findings.error(e)).ok()
}

/// Resolves the table's shape against both tables: configuration that does
/// not fit is an error, as is a target key column nothing fills and a type
/// no source value fits; a type some values may not fit is a warning (the
/// rule: [`crate::route::type_fit`]).
fn compare(
    table: &TableMapping,
    source: Vec<Column>,
    target: &TargetTable,
    identity: &Identity,
    findings: &mut Findings,
) -> ColumnPlan {
    let route = match TableRoute::resolve(table, source, target.columns.clone(), identity.is_full()) {
        Ok(route) => route,
        Err(error) => {
            findings.error(error);
            return ColumnPlan::default();
        }
    };
    if let Err(error) = route.check_writes(identity.columns(), target) {
        findings.error(error);
    }
    for key in target.key_columns() {
        if !route.carried().any(|(_, t)| t == key.name) {
            findings.error(ApplyError::KeyNotSent {
                source_table: table.from.clone(),
                target: table.to.clone(),
                column: key.name.clone(),
            });
        }
    }
    for (source, target, fit) in route.type_differences() {
        match route.refused_type(source, target, fit) {
            Some(error) => findings.error(error),
            None if fit == TypeFit::MayFail => findings.warning(may_fail_warning(source, target)),
            None => {}
        }
    }
    if let Some(warning) = route.move_in_warning() {
        findings.warning(warning);
    }
    let replicated = route
        .carried()
        .map(|(source_name, target_name)| {
            if source_name == target_name {
                quote_ident_if_needed(source_name).into_owned()
            } else {
                format!("{}→{}", quote_ident_if_needed(source_name), quote_ident_if_needed(target_name))
            }
        })
        .collect();
    ColumnPlan {
        replicated,
        not_in_target: route.dropped_for_lack_of_target().map(str::to_string).collect(),
        filter: table.filter.clone(),
        dropped_operations: table.operations.dropped(),
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for plan in &self.subscriptions {
            write!(f, "{plan}")?;
        }
        for problem in &self.problems {
            writeln!(f, "{problem}")?;
        }
        writeln!(f, "{}", self.summary())
    }
}

impl Report {
    /// `ok: 1 subscription, 2 tables`, or `failed: 3 errors, 1 warning (…)`.
    fn summary(&self) -> String {
        let tables: usize = self.subscriptions.iter().map(|p| p.subscription.tables.len()).sum();
        let scope =
            format!("{}, {}", counted(self.subscriptions.len(), "subscription"), counted(tables, "table"));
        let (errors, warnings) = (self.count(Severity::Error), self.count(Severity::Warning));
        if errors > 0 {
            return format!(
                "failed: {}, {} ({scope})",
                counted(errors, "error"),
                counted(warnings, "warning")
            );
        }
        let mut line = format!("ok: {scope}");
        if warnings > 0 {
            line.push_str(&format!(", {}", counted(warnings, "warning")));
        }
        if self.offline {
            line.push_str(" (offline: no database contacted)");
        }
        line
    }
}

fn counted(n: usize, thing: &str) -> String {
    if n == 1 { format!("1 {thing}") } else { format!("{n} {thing}s") }
}

impl fmt::Display for SubscriptionPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sub = &self.subscription;
        let publication = if sub.publication_managed { "managed" } else { "configured" };
        let snapshot = if sub.snapshot { "on" } else { "off" };
        writeln!(
            f,
            "subscription {}: source {} → target {}, slot {}, publication {} ({publication}), snapshot {snapshot}",
            sub.name, sub.source, sub.target, sub.slot, sub.publication
        )?;
        for (table, columns) in sub.tables.iter().zip(&self.columns) {
            write!(f, "  {} → {}", table.from.readable(), table.to.readable())?;
            match columns {
                Some(columns) => writeln!(f, "  {columns}")?,
                None => writeln!(f)?,
            }
        }
        Ok(())
    }
}

/// `columns: id, name, email (3 of 4; not in target: ssn)`
impl fmt::Display for ColumnPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names =
            |list: &[String]| list.iter().map(|n| quote_ident_if_needed(n)).collect::<Vec<_>>().join(", ");
        let replicated =
            if self.replicated.is_empty() { "none".to_string() } else { self.replicated.join(", ") };
        write!(f, "columns: {replicated}")?;
        if !self.not_in_target.is_empty() {
            let total = self.replicated.len() + self.not_in_target.len();
            write!(
                f,
                " ({} of {total}; not in target: {})",
                self.replicated.len(),
                names(&self.not_in_target)
            )?;
        }
        if let Some(filter) = &self.filter {
            write!(f, "  where: {filter}")?;
        }
        if !self.dropped_operations.is_empty() {
            write!(f, "  not replicating: {}", self.dropped_operations.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn column(name: &str, type_name: &str, is_key: bool) -> Column {
        let category = match type_name {
            "text" => 'S',
            "boolean" => 'B',
            _ => 'N',
        };
        Column {
            name: name.into(),
            type_name: type_name.into(),
            type_oid: 0,
            type_modifier: -1,
            base_type: (0, -1),
            category,
            is_key,
            toastable: false,
        }
    }

    fn mapping() -> TableMapping {
        TableMapping::new(
            QualifiedName::new("public", "customers"),
            QualifiedName::new("replica", "customers"),
        )
    }

    fn messages(findings: &Findings) -> Vec<String> {
        findings.problems.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn offline_plan_shows_each_subscription_and_table() {
        let text = r#"
            [sources.customers]
            url = "postgresql://ferry:secret@db/customers"
            [targets.orders]
            url = "postgresql://ferry@db/orders"
            [[subscriptions]]
            name = "customers-to-orders"
            source = "customers"
            target = "orders"
            tables = [{ from = "public.customers", to = "replica.customers" }, { from = 'public."Order Lines"' }]
            [[subscriptions]]
            name = "audit"
            source = "customers"
            target = "orders"
            publication = "audit_pub"
            snapshot = false
            tables = [{ from = "audit" }]
        "#;
        let config = Config::parse(text, Path::new("ferry.toml")).unwrap();
        let report = offline(&config);
        assert!(!report.has_errors());
        assert_eq!(
            report.to_string(),
            "subscription customers-to-orders: source customers → target orders, slot ferry_customers_to_orders, \
             publication ferry_customers_to_orders (managed), snapshot on\n  \
             public.customers → replica.customers\n  \
             public.\"Order Lines\" → public.\"Order Lines\"\n\
             subscription audit: source customers → target orders, slot ferry_audit, publication audit_pub \
             (configured), snapshot off\n  \
             public.audit → public.audit\n\
             ok: 2 subscriptions, 3 tables (offline: no database contacted)\n"
        );
    }

    /// The source identifies rows by `id`.
    fn by_id() -> Identity {
        Identity::Columns(vec!["id".into()])
    }

    /// The target table `replica.customers` with `columns`, its primary
    /// key its one unique index.
    fn target_table(columns: Vec<Column>) -> TargetTable {
        let mut key: Vec<String> = columns.iter().filter(|c| c.is_key).map(|c| c.name.clone()).collect();
        key.sort();
        TargetTable { name: mapping().to, columns, unique_keys: vec![key], generated_always: Vec::new() }
    }

    #[test]
    fn compare_lists_what_is_replicated_and_what_is_not() {
        let source = [
            column("id", "integer", true),
            column("name", "text", false),
            column("email", "text", false),
            column("ssn", "text", false),
        ];
        let target = target_table(vec![
            column("id", "integer", true),
            column("name", "text", false),
            column("email", "text", false),
        ]);
        let mut findings = Findings::new("subscription s, table public.customers".into());
        let plan = compare(&mapping(), source.to_vec(), &target, &by_id(), &mut findings);
        assert!(findings.problems.is_empty());
        assert_eq!(plan.to_string(), "columns: id, name, email (3 of 4; not in target: ssn)");
    }

    #[test]
    fn compare_reports_missing_key_columns_and_type_differences() {
        let source = [column("id", "integer", true), column("Total", "text", false)];
        let target = target_table(vec![
            column("region", "text", true),
            column("id", "bigint", true),
            column("Total", "numeric(12,2)", false),
        ]);
        let mut findings = Findings::new("subscription s, table public.customers".into());
        let plan = compare(&mapping(), source.to_vec(), &target, &by_id(), &mut findings);
        assert_eq!(
            messages(&findings),
            [
                "error: subscription s, table public.customers: source table \"public\".\"customers\" does not \
                 send key column region of target table \"replica\".\"customers\"",
                "warning: subscription s, table public.customers: column id: source type integer, target type \
                 bigint; values cross as text, so every value must also be valid bigint input",
                "warning: subscription s, table public.customers: column \"Total\": source type text, target \
                 type numeric(12,2); values cross as text, so every value must also be valid numeric(12,2) input",
            ]
        );
        assert_eq!(plan.to_string(), "columns: id, \"Total\"");
    }

    #[test]
    fn a_generated_always_column_is_refused_where_it_would_be_updated() {
        let source = [column("id", "integer", true), column("number", "bigint", false)];
        let check_keyed = |mapping: &TableMapping, generated: &str, identity: &Identity| {
            let mut target = target_table(source.to_vec());
            target.generated_always = vec![generated.into()];
            let mut findings = Findings::new("subscription s, table public.customers".into());
            compare(mapping, source.to_vec(), &target, identity, &mut findings);
            messages(&findings)
        };
        let check = |mapping: &TableMapping, generated: &str| check_keyed(mapping, generated, &by_id());
        let found = check(&mapping(), "number");
        assert!(found.len() == 1 && found[0].contains("SET GENERATED BY DEFAULT"), "{found:?}");
        // An unchanged key is not assigned; nor is anything without updates.
        assert!(check(&mapping(), "id").is_empty());
        let mut insert_only = mapping();
        insert_only.operations.update = false;
        assert!(check(&insert_only, "number").is_empty());
        // The key an update leaves out is the source's replica identity,
        // not the target's primary key; under FULL it is that key.
        let by_number = Identity::Columns(vec!["number".into()]);
        assert!(check_keyed(&mapping(), "number", &by_number).is_empty());
        assert_eq!(check_keyed(&mapping(), "id", &by_number).len(), 1);
        assert!(check_keyed(&mapping(), "id", &Identity::Full).is_empty());
        assert_eq!(check_keyed(&mapping(), "number", &Identity::Full).len(), 1);
    }

    #[test]
    fn a_type_no_value_fits_is_an_error() {
        let source = [column("id", "integer", true), column("active", "boolean", false)];
        let target = target_table(vec![column("id", "integer", true), column("active", "integer", false)]);
        let mut findings = Findings::new("subscription s, table public.customers".into());
        compare(&mapping(), source.to_vec(), &target, &by_id(), &mut findings);
        let found = messages(&findings);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("error: subscription s, table public.customers: table"), "{found:?}");
        assert!(
            found[0].contains("\"active\" is boolean on the source but integer in target table"),
            "{found:?}"
        );
    }

    #[test]
    fn the_plan_shows_renames_filters_and_operations_left_out() {
        let source = [
            column("id", "integer", true),
            column("email", "text", false),
            column("ssn", "text", false),
            column("country", "text", false),
        ];
        let target = target_table(vec![
            column("id", "integer", true),
            column("contact_email", "text", false),
            column("country", "text", false),
        ]);
        let mut shaped = mapping();
        shaped.columns = crate::config::ColumnSelection::Except(vec!["ssn".into()]);
        shaped.rename.insert("email".into(), "contact_email".into());
        shaped.filter = Some("country = 'DE'".into());
        shaped.operations.delete = false;
        let mut findings = Findings::new("subscription s, table public.customers".into());
        let plan = compare(&shaped, source.to_vec(), &target, &by_id(), &mut findings);
        assert!(findings.problems.is_empty(), "{:?}", messages(&findings));
        assert_eq!(
            plan.to_string(),
            "columns: id, email→contact_email, country  where: country = 'DE'  not replicating: delete"
        );
    }

    /// `ferry run` upserts a row coming into the filter `ON CONFLICT` over
    /// the source key's target columns, which a target keyed otherwise
    /// cannot take: an error here too, not at the first change.
    #[test]
    fn a_filter_needs_a_unique_index_on_the_source_key_in_the_target() {
        let source = [column("id", "integer", true), column("region", "text", false)];
        let mut shaped = mapping();
        shaped.filter = Some("region = 'eu'".into());
        let wider_key = target_table(vec![column("id", "integer", true), column("region", "text", true)]);
        let mut findings = Findings::new("subscription s, table public.customers".into());
        compare(&shaped, source.to_vec(), &wider_key, &by_id(), &mut findings);
        let found = messages(&findings);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("has no unique index on exactly those; create one (CREATE UNIQUE INDEX ON \"replica\".\"customers\" (\"id\"))"),
            "{found:?}"
        );
        // A unique index on the source's key will do; so does a source
        // sending whole rows (the upsert then goes by the target's key).
        let mut indexed = wider_key.clone();
        indexed.unique_keys.push(vec!["id".into()]);
        for (target, identity) in [(&indexed, by_id()), (&wider_key, Identity::Full)] {
            let mut findings = Findings::new("subscription s, table public.customers".into());
            compare(&shaped, source.to_vec(), target, &identity, &mut findings);
            assert!(findings.problems.is_empty(), "{:?}", messages(&findings));
        }
        // The source's key is its replica identity, which an index may
        // name instead of the primary key.
        let by_region = Identity::Columns(vec!["region".into()]);
        let region_key = target_table(vec![column("id", "integer", false), column("region", "text", true)]);
        let mut findings = Findings::new("subscription s, table public.customers".into());
        compare(&shaped, source.to_vec(), &region_key, &by_region, &mut findings);
        assert!(findings.problems.is_empty(), "{:?}", messages(&findings));
        let mut findings = Findings::new("subscription s, table public.customers".into());
        compare(&shaped, source.to_vec(), &wider_key, &by_region, &mut findings);
        assert_eq!(messages(&findings).len(), 1, "{:?}", messages(&findings));
        // Without a filter nothing is upserted.
        let mut findings = Findings::new("subscription s, table public.customers".into());
        compare(&mapping(), source.to_vec(), &wider_key, &by_id(), &mut findings);
        assert!(findings.problems.is_empty(), "{:?}", messages(&findings));
    }

    #[test]
    fn a_filter_on_an_unknown_column_is_an_error_with_its_position() {
        let source = [column("id", "integer", true), column("country", "text", false)];
        let target = target_table(source.to_vec());
        let mut shaped = mapping();
        shaped.filter = Some("contry = 'DE'".into());
        let mut findings = Findings::new("subscription s, table public.customers".into());
        compare(&shaped, source.to_vec(), &target, &by_id(), &mut findings);
        let found = messages(&findings);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("contry") && found[0].contains("1:1"), "{found:?}");
    }

    #[test]
    fn a_table_sharing_no_column_replicates_none() {
        let plan = ColumnPlan { not_in_target: vec!["a".into(), "b".into()], ..ColumnPlan::default() };
        assert_eq!(plan.to_string(), "columns: none (0 of 2; not in target: a, b)");
    }

    #[test]
    fn summary_counts_errors_and_warnings() {
        let problem = |severity| Problem { severity, subject: "source a".into(), message: "m".into() };
        let mut report =
            Report { subscriptions: Vec::new(), problems: vec![problem(Severity::Warning)], offline: false };
        assert_eq!(report.summary(), "ok: 0 subscriptions, 0 tables, 1 warning");
        assert!(!report.has_errors());
        report.problems.push(problem(Severity::Error));
        report.problems.push(problem(Severity::Error));
        assert_eq!(report.summary(), "failed: 2 errors, 1 warning (0 subscriptions, 0 tables)");
        assert!(report.has_errors());
        assert_eq!(report.problems[1].to_string(), "error: source a: m");
    }
}
