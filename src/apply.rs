//! The target side: applies row changes to a target database with
//! statements prepared per table, and records the subscription's progress in
//! the same transaction as the changes it covers.

use std::collections::{HashMap, VecDeque};
use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{BufMut, Bytes, BytesMut};
use tokio_postgres::types::{Format, IsNull, ToSql, Type};
use tokio_postgres::{Client, Statement};

use crate::config::TableMapping;
use crate::pg::Lsn;
use crate::pg::catalog::{self, Column};
use crate::pg::error::describe_sql_error;
use crate::pg::names::{QualifiedName, quote_ident};
use crate::pg::pgoutput::{OldTuple, Relation, ReplicaIdentity, Tuple, Value};
use crate::source::Change;

/// Errors of the target side. They name the subscription and table and
/// carry the SQLSTATE; never row values.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("target: {context}: {}", describe_sql_error(source))]
    Target { context: String, source: tokio_postgres::Error },
    #[error("target table {table} does not exist")]
    MissingTable { table: QualifiedName },
    #[error("target table {table} has no primary key; ferry needs one to apply updates and deletes")]
    NoPrimaryKey { table: QualifiedName },
    #[error("source table {source_table} does not send key column {column} of target table {target}")]
    KeyNotSent { source_table: QualifiedName, target: QualifiedName, column: String },
    #[error("key column {column} of source table {source_table} is missing in target table {target}")]
    KeyColumnMissing { source_table: QualifiedName, target: QualifiedName, column: String },
    #[error("update of {table} found no row with key {key} on the target")]
    MissingRow { table: QualifiedName, key: String },
    #[error(
        "{table}: {what} arrived without the row's key; set REPLICA IDENTITY on the source table (DEFAULT with a primary key, USING INDEX, or FULL)"
    )]
    NoKey { table: QualifiedName, what: &'static str },
    #[error("a change arrived for {0}, which no table of this subscription maps")]
    Unmapped(QualifiedName),
}

impl ApplyError {
    /// The SQLSTATE of a target error, when there is one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ApplyError::Target { source, .. } => source.code().map(|c| c.code()),
            _ => None,
        }
    }

    /// Whether trying again later may succeed: the connection broke, the
    /// server is shutting down or short of resources, or the transaction
    /// lost a serialization race or a deadlock.
    pub fn is_retryable(&self) -> bool {
        match self {
            ApplyError::Target { source, .. } => match source.code() {
                None => true, // no SQLSTATE: the connection itself failed
                Some(code) => {
                    let code = code.code();
                    code.starts_with("08")
                        || code.starts_with("53")
                        || code.starts_with("57P")
                        || code == "40001"
                        || code == "40P01"
                        || code == "55P03" // lock not available
                }
            },
            _ => false,
        }
    }
}

fn target_error(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> ApplyError {
    let context = context.into();
    move |source| ApplyError::Target { context, source }
}

/// A value in PostgreSQL's text form, sent as a text-format parameter so
/// the target parses it with the column type's own input function: exactly
/// what the source printed, whatever the type.
#[derive(Debug)]
pub struct TextParam(pub Option<Bytes>);

impl ToSql for TextParam {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match &self.0 {
            Some(bytes) => {
                out.put_slice(bytes);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }

    tokio_postgres::types::to_sql_checked!();
}

/// A target table as its catalog describes it.
#[derive(Debug, Clone)]
pub struct TargetTable {
    pub name: QualifiedName,
    pub columns: Vec<Column>,
}

impl TargetTable {
    /// Reads a table's columns and primary key from the target's catalog.
    pub async fn load(client: &Client, name: &QualifiedName) -> Result<TargetTable, ApplyError> {
        let columns = catalog::table_columns(client, name)
            .await
            .map_err(target_error(format!("reading the columns of {name}")))?;
        if columns.is_empty() {
            return Err(ApplyError::MissingTable { table: name.clone() });
        }
        if !columns.iter().any(|c| c.is_key) {
            return Err(ApplyError::NoPrimaryKey { table: name.clone() });
        }
        Ok(TargetTable { name: name.clone(), columns })
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The primary key's columns, in table order.
    pub fn key_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| c.is_key)
    }
}

/// How one source relation (as last described by the server) lands in its
/// target table.
struct RelationPlan {
    relation: Arc<Relation>,
    target: Arc<QualifiedName>,
    /// (source column index, target column name) for every column the
    /// target has.
    columns: Vec<(usize, String)>,
    /// Source column indexes of the row's key on the target.
    key: Vec<usize>,
    /// The key columns' names, and their positions among `columns`, to
    /// name the row in errors.
    key_names: Arc<[String]>,
    key_positions: Arc<[usize]>,
    insert: Statement,
    delete: Statement,
    /// Update statements by the set of columns present (unchanged TOAST
    /// columns are left out of SET, so the target keeps its value).
    updates: HashMap<Vec<bool>, Statement>,
}

/// A statement sent but not yet answered; it resolves to its own check.
type InFlight = Pin<Box<dyn Future<Output = Result<(), ApplyError>> + Send>>;

/// How many statements may be sent ahead of their answers. Pipelining them
/// turns one round trip per row into one per this many rows.
const MAX_IN_FLIGHT: usize = 2048;

/// Applies changes for one subscription over one target connection.
pub struct Applier {
    client: Arc<Client>,
    subscription: Arc<str>,
    /// Target tables by source table name.
    tables: HashMap<QualifiedName, TargetTable>,
    plans: HashMap<u32, RelationPlan>,
    /// Statements sent and not yet answered, oldest first. Their requests
    /// are on the wire in this order, which is the source's order.
    in_flight: VecDeque<InFlight>,
}

const PROGRESS_DDL: &str = "CREATE SCHEMA IF NOT EXISTS ferry;
CREATE TABLE IF NOT EXISTS ferry.progress (
    subscription text PRIMARY KEY,
    end_lsn pg_lsn NOT NULL,
    commit_time timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);";

impl Applier {
    /// Prepares the target: the progress table, and the description of
    /// every mapped table.
    pub async fn new(
        client: Client,
        subscription: &str,
        mappings: &[TableMapping],
    ) -> Result<Applier, ApplyError> {
        client.batch_execute(PROGRESS_DDL).await.map_err(target_error("creating ferry.progress"))?;
        let mut tables = HashMap::new();
        for mapping in mappings {
            tables.insert(mapping.from.clone(), TargetTable::load(&client, &mapping.to).await?);
        }
        Ok(Applier {
            client: Arc::new(client),
            subscription: subscription.into(),
            tables,
            plans: HashMap::new(),
            in_flight: VecDeque::new(),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The target table that `source` maps to.
    pub fn target_table(&self, source: &QualifiedName) -> Option<&TargetTable> {
        self.tables.get(source)
    }

    /// The end LSN of the last source transaction applied, as recorded.
    pub async fn progress(&mut self) -> Result<Option<Lsn>, ApplyError> {
        let row = self
            .client
            .query_opt(
                "SELECT end_lsn::text FROM ferry.progress WHERE subscription = $1",
                &[&&*self.subscription],
            )
            .await
            .map_err(target_error("reading progress"))?;
        Ok(row.and_then(|r| r.get::<_, String>(0).parse().ok()))
    }

    pub async fn begin(&mut self) -> Result<(), ApplyError> {
        self.client.batch_execute("BEGIN").await.map_err(target_error("BEGIN"))
    }

    /// Records `end_lsn` as applied and commits: the changes and the
    /// progress become durable together or not at all.
    pub async fn commit(&mut self, end_lsn: Lsn, commit_time: i64) -> Result<(), ApplyError> {
        self.record_progress(end_lsn, commit_time).await?;
        self.client.batch_execute("COMMIT").await.map_err(target_error("COMMIT"))
    }

    /// Writes the progress row inside the current transaction, after every
    /// statement sent before it has succeeded.
    pub async fn record_progress(&mut self, end_lsn: Lsn, commit_time: i64) -> Result<(), ApplyError> {
        self.settle().await?;
        let lsn = end_lsn.to_string();
        let time = crate::pg::timestamp::to_rfc3339(commit_time);
        self.client
            .execute(
                "INSERT INTO ferry.progress (subscription, end_lsn, commit_time, updated_at)
                 VALUES ($1, $2::text::pg_lsn, $3::text::timestamptz, now())
                 ON CONFLICT (subscription) DO UPDATE
                 SET end_lsn = EXCLUDED.end_lsn, commit_time = EXCLUDED.commit_time, updated_at = now()",
                &[&&*self.subscription, &lsn, &time],
            )
            .await
            .map_err(target_error("recording progress"))?;
        Ok(())
    }

    /// Abandons the current transaction and whatever is still in flight.
    pub async fn rollback(&mut self) {
        self.in_flight.clear();
        let _ = self.client.batch_execute("ROLLBACK").await;
    }

    /// Waits for every statement in flight; the first failure wins.
    async fn settle(&mut self) -> Result<(), ApplyError> {
        while let Some(statement) = self.in_flight.pop_front() {
            if let Err(error) = statement.await {
                self.in_flight.clear();
                return Err(error);
            }
        }
        Ok(())
    }

    /// Sends a statement now (its first poll puts the request on the wire)
    /// and keeps its answer for later, so rows are applied without waiting
    /// for each other.
    async fn send(
        &mut self,
        statement: impl Future<Output = Result<(), ApplyError>> + Send + 'static,
    ) -> Result<(), ApplyError> {
        if let Some(pending) = start(Box::pin(statement))? {
            self.in_flight.push_back(pending);
        }
        if self.in_flight.len() > MAX_IN_FLIGHT
            && let Some(oldest) = self.in_flight.pop_front()
            && let Err(error) = oldest.await
        {
            self.in_flight.clear();
            return Err(error);
        }
        Ok(())
    }

    /// Applies one change inside the current transaction. Its outcome may
    /// only be known at the next commit.
    pub async fn apply(&mut self, change: &Change) -> Result<(), ApplyError> {
        match change {
            Change::Insert { relation, new } => self.insert(relation, new).await,
            Change::Update { relation, old, new } => self.update(relation, old.as_ref(), new).await,
            Change::Delete { relation, old } => self.delete(relation, old).await,
            Change::Truncate { relations, restart_identity, .. } => {
                self.truncate(relations, *restart_identity).await
            }
            // Messages are for consumers like `ferry tail`; a database has
            // nowhere to put them.
            Change::Message(_) => Ok(()),
        }
    }

    async fn insert(&mut self, relation: &Arc<Relation>, new: &Tuple) -> Result<(), ApplyError> {
        self.ensure_plan(relation).await?;
        let plan = &self.plans[&relation.oid];
        let params: Vec<TextParam> = plan.columns.iter().map(|(i, _)| param(new, *i)).collect();
        let (client, statement, target) =
            (Arc::clone(&self.client), plan.insert.clone(), Arc::clone(&plan.target));
        let key_names = Arc::clone(&plan.key_names);
        let key_positions = Arc::clone(&plan.key_positions);
        self.send(async move {
            if let Err(error) = client.execute_raw(&statement, params.iter()).await {
                // Only now, on the error path, is the key spelled out.
                let key = key_text(&key_names, key_positions.iter().map(|&p| params[p].0.as_deref()));
                return Err(target_error(format!("insert into {target}, key {key}"))(error));
            }
            Ok(())
        })
        .await
    }

    async fn update(
        &mut self,
        relation: &Arc<Relation>,
        old: Option<&OldTuple>,
        new: &Tuple,
    ) -> Result<(), ApplyError> {
        self.ensure_plan(relation).await?;
        let plan = self.plans.get_mut(&relation.oid).expect("ensured above");
        let present: Vec<bool> =
            plan.columns.iter().map(|(i, _)| !matches!(new.0.get(*i), Some(Value::UnchangedToast))).collect();
        if !plan.updates.contains_key(&present) {
            self.settle().await?;
            let plan = self.plans.get_mut(&relation.oid).expect("ensured above");
            let statement = prepare_update(&self.client, plan, &present).await?;
            plan.updates.insert(present.clone(), statement);
        }
        let plan = &self.plans[&relation.oid];
        let key_tuple = key_tuple(old, new);
        let mut params: Vec<TextParam> = plan
            .columns
            .iter()
            .zip(&present)
            .filter(|(_, present)| **present)
            .map(|((i, _), _)| param(new, *i))
            .collect();
        for &k in &plan.key {
            params.push(key_param(plan, key_tuple, new, k, "an update")?);
        }
        let key = describe_key(plan, key_tuple);
        let (client, statement, target) =
            (Arc::clone(&self.client), plan.updates[&present].clone(), Arc::clone(&plan.target));
        self.send(async move {
            let updated = client
                .execute_raw(&statement, params)
                .await
                .map_err(target_error(format!("update of {target}")))?;
            if updated == 0 {
                return Err(ApplyError::MissingRow { table: (*target).clone(), key });
            }
            Ok(())
        })
        .await
    }

    async fn delete(&mut self, relation: &Arc<Relation>, old: &OldTuple) -> Result<(), ApplyError> {
        self.ensure_plan(relation).await?;
        let plan = &self.plans[&relation.oid];
        let tuple = old.tuple();
        let params = plan
            .key
            .iter()
            .map(|&k| key_param(plan, tuple, tuple, k, "a delete"))
            .collect::<Result<Vec<_>, _>>()?;
        let key = describe_key(plan, tuple);
        let subscription = Arc::clone(&self.subscription);
        let (client, statement, target) =
            (Arc::clone(&self.client), plan.delete.clone(), Arc::clone(&plan.target));
        self.send(async move {
            let deleted = client
                .execute_raw(&statement, params)
                .await
                .map_err(target_error(format!("delete from {target}")))?;
            if deleted == 0 {
                // The row is already gone: the end state is the one the
                // source has, so this is logged, not fatal.
                tracing::warn!(%subscription, table = %target, %key, "delete found no row on the target");
            }
            Ok(())
        })
        .await
    }

    async fn truncate(
        &mut self,
        relations: &[Arc<Relation>],
        restart_identity: bool,
    ) -> Result<(), ApplyError> {
        let targets: Vec<String> = relations
            .iter()
            .filter_map(|r| self.tables.get(&QualifiedName::new(r.namespace.clone(), r.name.clone())))
            .map(|t| t.name.to_string())
            .collect();
        if targets.is_empty() {
            return Ok(());
        }
        self.settle().await?;
        // Only the tables the source names: cascading on the target could
        // empty tables ferry does not own.
        let restart = if restart_identity { " RESTART IDENTITY" } else { "" };
        let sql = format!("TRUNCATE ONLY {}{restart}", targets.join(", "));
        self.client
            .batch_execute(&sql)
            .await
            .map_err(target_error(format!("truncate of {}", targets.join(", "))))
    }

    /// Makes sure the plan for a relation matches its latest description
    /// (the server describes relations anew after a reconnect or a schema
    /// change).
    async fn ensure_plan(&mut self, relation: &Arc<Relation>) -> Result<(), ApplyError> {
        let current = self
            .plans
            .get(&relation.oid)
            .is_some_and(|p| Arc::ptr_eq(&p.relation, relation) || *p.relation == **relation);
        if !current {
            self.settle().await?;
            let source = QualifiedName::new(relation.namespace.clone(), relation.name.clone());
            let table = self.tables.get(&source).ok_or_else(|| ApplyError::Unmapped(source.clone()))?;
            let plan = build_plan(&self.client, &self.subscription, relation, &source, table).await?;
            self.plans.insert(relation.oid, plan);
        }
        Ok(())
    }
}

/// Works out how a relation's rows land in `table` and prepares the
/// statements for it.
async fn build_plan(
    client: &Client,
    subscription: &str,
    relation: &Arc<Relation>,
    source: &QualifiedName,
    table: &TargetTable,
) -> Result<RelationPlan, ApplyError> {
    let mut columns = Vec::new();
    for (i, column) in relation.columns.iter().enumerate() {
        if table.column(&column.name).is_some() {
            columns.push((i, column.name.clone()));
        } else {
            tracing::warn!(
                subscription = %subscription,
                table = %source,
                column = %column.name,
                "source column has no counterpart in {} and is not replicated",
                table.name
            );
        }
    }
    let key = key_columns(relation, source, table)?;
    let names: Vec<String> = columns.iter().map(|(_, n)| quote_ident(n)).collect();
    let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
    let insert_sql =
        format!("INSERT INTO {} ({}) VALUES ({})", table.name, names.join(", "), placeholders.join(", "));
    let delete_sql = format!("DELETE FROM {} WHERE {}", table.name, key_condition(relation, &key, 1));
    let insert = client
        .prepare(&insert_sql)
        .await
        .map_err(target_error(format!("preparing insert into {}", table.name)))?;
    let delete = client
        .prepare(&delete_sql)
        .await
        .map_err(target_error(format!("preparing delete from {}", table.name)))?;
    let key_names = key.iter().map(|&k| relation.columns[k].name.clone()).collect();
    let key_positions = key.iter().filter_map(|&k| columns.iter().position(|(i, _)| *i == k)).collect();
    Ok(RelationPlan {
        relation: Arc::clone(relation),
        target: Arc::new(table.name.clone()),
        columns,
        key,
        key_names,
        key_positions,
        insert,
        delete,
        updates: HashMap::new(),
    })
}

/// Polls a statement once, which sends its request; returns it when its
/// answer is still to come.
fn start(mut statement: InFlight) -> Result<Option<InFlight>, ApplyError> {
    let mut context = Context::from_waker(Waker::noop());
    match statement.as_mut().poll(&mut context) {
        Poll::Ready(result) => result.map(|()| None),
        Poll::Pending => Ok(Some(statement)),
    }
}

/// The source columns that identify a row on the target: the relation's
/// replica identity (its primary key or the index it names), or the
/// target's primary key when the identity is the full row (comparing
/// every column would fail for types without equality, like json).
fn key_columns(
    relation: &Relation,
    source: &QualifiedName,
    table: &TargetTable,
) -> Result<Vec<usize>, ApplyError> {
    if relation.replica_identity == ReplicaIdentity::Full {
        return table
            .key_columns()
            .map(|target_key| {
                relation.columns.iter().position(|c| c.name == target_key.name).ok_or_else(|| {
                    ApplyError::KeyNotSent {
                        source_table: source.clone(),
                        target: table.name.clone(),
                        column: target_key.name.clone(),
                    }
                })
            })
            .collect();
    }
    let key: Vec<usize> =
        relation.columns.iter().enumerate().filter(|(_, c)| c.is_key).map(|(i, _)| i).collect();
    if key.is_empty() {
        return Err(ApplyError::NoKey { table: source.clone(), what: "a table description" });
    }
    if let Some(&missing) = key.iter().find(|&&i| table.column(&relation.columns[i].name).is_none()) {
        return Err(ApplyError::KeyColumnMissing {
            source_table: source.clone(),
            target: table.name.clone(),
            column: relation.columns[missing].name.clone(),
        });
    }
    Ok(key)
}

/// `"id" = $n AND "region" = $n+1 ...` for the key columns.
fn key_condition(relation: &Relation, key: &[usize], first: usize) -> String {
    key.iter()
        .enumerate()
        .map(|(n, &i)| format!("{} = ${}", quote_ident(&relation.columns[i].name), first + n))
        .collect::<Vec<_>>()
        .join(" AND ")
}

async fn prepare_update(
    client: &Client,
    plan: &RelationPlan,
    present: &[bool],
) -> Result<Statement, ApplyError> {
    let assignments: Vec<String> = plan
        .columns
        .iter()
        .zip(present)
        .filter(|(_, present)| **present)
        .enumerate()
        .map(|(n, ((_, name), _))| format!("{} = ${}", quote_ident(name), n + 1))
        .collect();
    let set_count = assignments.len();
    let sql = format!(
        "UPDATE {} SET {} WHERE {}",
        plan.target,
        assignments.join(", "),
        key_condition(&plan.relation, &plan.key, set_count + 1)
    );
    client.prepare(&sql).await.map_err(target_error(format!("preparing update of {}", plan.target)))
}

fn param(tuple: &Tuple, index: usize) -> TextParam {
    match tuple.0.get(index) {
        Some(Value::Text(bytes) | Value::Binary(bytes)) => TextParam(Some(bytes.clone())),
        _ => TextParam(None),
    }
}

/// The tuple that identifies the row before the change: the old key or old
/// row when the server sent one, else the new row (the key did not change).
fn key_tuple<'a>(old: Option<&'a OldTuple>, new: &'a Tuple) -> &'a Tuple {
    match old {
        Some(OldTuple::Key(t) | OldTuple::Full(t)) => t,
        None => new,
    }
}

/// A key value, from `tuple`, falling back to `fallback` when the server
/// left it out (unchanged TOAST in an old row).
fn key_param(
    plan: &RelationPlan,
    tuple: &Tuple,
    fallback: &Tuple,
    index: usize,
    what: &'static str,
) -> Result<TextParam, ApplyError> {
    let value = match tuple.0.get(index) {
        Some(Value::UnchangedToast) => fallback.0.get(index),
        other => other,
    };
    match value {
        Some(Value::Text(bytes) | Value::Binary(bytes)) => Ok(TextParam(Some(bytes.clone()))),
        _ => Err(ApplyError::NoKey { table: (*plan.target).clone(), what }),
    }
}

/// The row's key as PostgreSQL shows it in errors, `(id, region)=(7, eu)`:
/// what an operator needs to find the row, and no other column's value.
fn describe_key(plan: &RelationPlan, tuple: &Tuple) -> String {
    key_text(
        &plan.key_names,
        plan.key.iter().map(|&i| match tuple.0.get(i) {
            Some(Value::Text(b) | Value::Binary(b)) => Some(&b[..]),
            _ => None,
        }),
    )
}

fn key_text<'a>(names: &[String], values: impl Iterator<Item = Option<&'a [u8]>>) -> String {
    let values: Vec<String> = values
        .map(|v| v.map_or_else(|| "NULL".to_string(), |b| String::from_utf8_lossy(b).into_owned()))
        .collect();
    format!("({})=({})", names.join(", "), values.join(", "))
}
