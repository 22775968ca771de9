//! The target side: applies row changes to a target database with
//! statements prepared per table, and records the subscription's progress in
//! the same transaction as the changes it covers.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio_postgres::error::Severity;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, SimpleQueryMessage, Statement};

use crate::config::{OnError, Subscription};
use crate::fault;
use crate::pg::Lsn;
use crate::pg::catalog::{self, Column};
use crate::pg::conninfo::ConnInfo;
use crate::pg::error::describe_sql_error;
use crate::pg::names::{QualifiedName, quote_ident, quote_literal};
use crate::pg::pgoutput::{OldTuple, Relation, ReplicaIdentity, Tuple, Value};
use crate::route::filter::{Cell, EvalError};
use crate::route::renamed::{self, Fate};
use crate::route::{RouteError, TableRoute, change_note};
use crate::source::Change;
use crate::source::catalog::{self as source_catalog, CatalogError};
use crate::tablesync::TABLES_DDL;

mod batch;
mod copy;
mod in_flight;
mod inline;
mod param;
mod plan;

use batch::{BatchKind, TableBatch};
use copy::{COPY_AFTER_ROWS, InsertRun};
use in_flight::InFlight;
use param::{TextParam, key_text, key_tuple, key_value, param, resolved_cells};
use plan::RelationPlan;

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
    /// The source sent the key column, as NULL: no row on the target can
    /// have it (a source table without a primary key, replica identity
    /// FULL, and a nullable column the target's key is on).
    #[error(
        "{table}: {what} names a row whose key column {column} is NULL on the source, which the target's primary key cannot hold (the row's insert was refused); make that column NOT NULL or the source table's key"
    )]
    NullKey { table: QualifiedName, what: &'static str, column: String },
    #[error("a change arrived for {0}, which no table of this subscription maps")]
    Unmapped(QualifiedName),
    /// A table changed under the pipeline in a way it cannot follow.
    #[error("subscription {subscription}: {error}; then restart ferry (this pipeline stopped, others go on)")]
    Schema { subscription: String, error: RouteError },
    /// The source's catalog could not be read to follow a table's change.
    #[error(transparent)]
    Source(#[from] CatalogError),
    #[error("{table}: the row filter cannot be evaluated: {error}")]
    Filter { table: QualifiedName, error: String },
    /// A statement or COPY carrying many rows failed, so which row is not
    /// known: the pipeline applies the transactions again in source order,
    /// one statement per row, which names it (or applies them when the
    /// failure came from the batching itself).
    #[error("{source} (sent together with other rows)")]
    Batched { rows: usize, source: Box<ApplyError> },
    #[error(
        "{table}: an updated row now matches the filter, but the server did not send all its values (unchanged \
         TOAST) and the target has no copy of it; set REPLICA IDENTITY FULL on the source table so whole rows are sent"
    )]
    IncompleteRow { table: QualifiedName },
}

impl ApplyError {
    /// The SQLSTATE of a target error, when there is one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ApplyError::Target { source, .. } => source.code().map(|c| c.code()),
            ApplyError::Batched { source, .. } => source.sqlstate(),
            // What the target would answer: its key cannot hold a NULL.
            ApplyError::NullKey { .. } => Some("23502"),
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
                        || code == "55006" // the origin is still held by the previous session
                }
            },
            ApplyError::Batched { source, .. } => source.is_retryable(),
            _ => false,
        }
    }

    /// Whether the target failed or refused a change, as opposed to the
    /// config and the databases disagreeing.
    pub fn is_target_failure(&self) -> bool {
        match self {
            ApplyError::Target { .. } | ApplyError::MissingRow { .. } => true,
            ApplyError::Batched { source, .. } => source.is_target_failure(),
            _ => false,
        }
    }

    /// Whether a new target session may apply what this one could not. A
    /// session's statements keep the parameter types of the target columns
    /// as they were when it prepared them: a column widened or retyped on
    /// the target since then fails them with a data exception (class 22)
    /// or a type mismatch (42804), where statements prepared anew pass.
    pub fn may_pass_in_a_new_session(&self) -> bool {
        matches!(self, ApplyError::Target { .. })
            && self.sqlstate().is_some_and(|code| code.starts_with("22") || code == "42804")
    }

    /// Whether it came from a statement carrying many rows (see
    /// [`ApplyError::Batched`]).
    pub fn is_batched(&self) -> bool {
        matches!(self, ApplyError::Batched { .. })
    }
}

/// Wraps the error of a statement or COPY that carried `rows` rows.
fn batched(rows: usize) -> impl FnOnce(ApplyError) -> ApplyError {
    move |error| match error {
        error @ ApplyError::Batched { .. } => error,
        error => ApplyError::Batched { rows, source: Box::new(error) },
    }
}

pub(crate) fn target_error(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> ApplyError {
    let context = context.into();
    move |source| ApplyError::Target { context, source }
}

/// A target table as its catalog describes it.
#[derive(Debug, Clone)]
pub struct TargetTable {
    pub name: QualifiedName,
    pub columns: Vec<Column>,
    /// The column sets of its unique indexes (see [`catalog::unique_keys`]).
    pub unique_keys: Vec<Vec<String>>,
    /// Its `GENERATED ALWAYS AS IDENTITY` columns.
    pub generated_always: Vec<String>,
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
        let unique_keys = catalog::unique_keys(client, name)
            .await
            .map_err(target_error(format!("reading the unique indexes of {name}")))?;
        let generated_always = catalog::generated_always(client, name)
            .await
            .map_err(target_error(format!("reading the identity columns of {name}")))?;
        Ok(TargetTable { name: name.clone(), columns, unique_keys, generated_always })
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The primary key's columns, in table order.
    pub fn key_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| c.is_key)
    }
}

/// A statement sent but not yet answered; it resolves to its own check.
type SentStatement = Pin<Box<dyn Future<Output = (RowRef, Result<u64, tokio_postgres::Error>)> + Send>>;

/// A request sent whose answer is only read later.
type Pending<T> = Pin<Box<dyn Future<Output = Result<T, tokio_postgres::Error>> + Send>>;

/// Applies changes for one subscription over one target connection.
pub struct Applier {
    client: Arc<Client>,
    monitor: Client,
    subscription: Arc<str>,
    /// The source, to name column types when a table changes there.
    source: ConnInfo,
    /// The configured tables by source table name, as the latest Relation
    /// message of each describes it.
    routes: HashMap<QualifiedName, Arc<TableRoute>>,
    /// The source's WAL position once the catalogs behind `routes` had
    /// been read at start.
    routes_read_at: Lsn,
    plans: HashMap<u32, RelationPlan>,
    /// A target transaction is open but its BEGIN is not on the wire yet
    /// (see [`Applier::begin`]).
    begin_deferred: bool,
    /// The open target transaction's BEGIN, until its answer is read.
    begun: Option<Pending<()>>,
    /// Statements sent and not yet answered, oldest first. Their requests
    /// are on the wire in this order, which is the source's order.
    in_flight: InFlight<SentStatement>,
    /// Record changes the target refuses for good instead of stopping.
    dead_letters: bool,
    /// Apply one statement at a time, each in a savepoint, so a refused one
    /// can be set aside (used when replaying a batch that failed).
    careful: bool,
    /// The commit LSN of the source transaction being applied; zero while
    /// it streams in progress (see [`Applier::streaming_in_progress`]).
    source_lsn: Lsn,
    /// Dead letters written in the open target transaction.
    dead_letters_written: u64,
    /// Inserts into one table gathered for COPY.
    run: Option<InsertRun>,
    /// Statements for the next commit to run (see [`Applier::with_next_commit`]).
    next_commit: String,
    /// SQL statements prepared for [`inline`] so far, to name the next.
    inline_statements_prepared: u64,
    /// Relations whose changes were left out as unmapped (logged once).
    left_out: HashSet<u32>,
    /// The routes as they were when a streamed transaction started being
    /// applied while in progress (see [`Applier::begin_stream`]).
    routes_before_stream: Option<HashMap<QualifiedName, Arc<TableRoute>>>,
    /// Rows gathered per table, sent as one statement per table (see
    /// [`batch`]); all of them were gathered after what `run` holds.
    pending: Vec<TableBatch>,
    /// Apply the current source transaction in source order, one statement
    /// per row (no batches, no COPY), so that a failing row is named.
    in_order: bool,
    /// The table of the latest inserts in a row in this target
    /// transaction, and how many there were.
    consecutive: (u32, usize),
}

const PROGRESS_DDL: &str = "CREATE TABLE IF NOT EXISTS ferry.progress (
    subscription text PRIMARY KEY,
    end_lsn pg_lsn NOT NULL,
    commit_time timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);";

/// Prepared once per session as an SQL prepared statement, not a protocol
/// one: it runs in every target transaction, and as `EXECUTE` it travels
/// in the one query that also commits (a protocol statement would cost
/// the target a reply of its own per transaction).
const RECORD_PROGRESS: &str = "PREPARE ferry_record_progress (text, pg_lsn, timestamptz) AS
    INSERT INTO ferry.progress (subscription, end_lsn, commit_time, updated_at)
    VALUES ($1, $2, $3, now())
    ON CONFLICT (subscription) DO UPDATE
    SET end_lsn = EXCLUDED.end_lsn, commit_time = EXCLUDED.commit_time, updated_at = now()";

const DEAD_LETTERS_DDL: &str = "CREATE TABLE IF NOT EXISTS ferry.dead_letters (
    id bigserial PRIMARY KEY,
    subscription text NOT NULL,
    source_lsn pg_lsn NOT NULL,
    table_name text NOT NULL,
    operation text NOT NULL,
    key text NOT NULL,
    sqlstate text,
    error text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);";

/// Creates ferry's own tables on the target, and makes this session's
/// commits asynchronous (the pipeline confirms a commit to the source only
/// once the target has flushed it) and its prepared statements planned
/// once: left to choose, the server plans a batch statement anew at every
/// execution, as it prices an `unnest` of a known array below the generic
/// plan, which is the same nested loop over the primary key (planning was
/// a sixth of the target backend's time at 2,000 transactions/s; the
/// setting came with PostgreSQL 12). Nor are its statements held to a time
/// limit set on the database or the role, as PostgreSQL's own apply worker
/// is not: a large COPY would be cut short, and a copy session waits in
/// its transaction while other tables copy. Pipelines sharing a target start
/// together, and `IF NOT EXISTS` alone races (the loser gets a unique
/// violation from the catalog), hence the lock. The schema is created only
/// when missing: `CREATE SCHEMA IF NOT EXISTS` needs `CREATE` on the
/// database even when the schema exists, and a least-privileged role may
/// only have a `ferry` schema made for it beforehand.
async fn prepare_session(client: &Client, dead_letters: bool) -> Result<(), ApplyError> {
    let schema_exists: bool = client
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'ferry')", &[])
        .await
        .map_err(target_error("looking up the ferry schema on the target"))?
        .get(0);
    let schema = if schema_exists { "" } else { "CREATE SCHEMA IF NOT EXISTS ferry;" };
    let dead_letters = if dead_letters { DEAD_LETTERS_DDL } else { "" };
    let sql = format!(
        "BEGIN; SET LOCAL client_min_messages = warning; SELECT pg_advisory_xact_lock(hashtext('ferry schema'));
         {schema} {PROGRESS_DDL} {TABLES_DDL} {dead_letters} COMMIT;
         SET synchronous_commit = off;
         SET statement_timeout = 0;
         SET idle_in_transaction_session_timeout = 0;
         SELECT set_config('plan_cache_mode', 'force_generic_plan', false)
         WHERE current_setting('server_version_num')::int >= 120000;"
    );
    client.batch_execute(&sql).await.map_err(target_error("creating ferry's tables on the target"))
}

/// Makes `client` a session that may write a subscription's tables on
/// the target: ferry's own tables exist, commits are asynchronous and
/// tagged with the replication origin `origin`.
pub async fn prepare_target_session(
    client: &Client,
    subscription: &str,
    origin: &str,
) -> Result<(), ApplyError> {
    prepare_session(client, false).await?;
    tag_with_origin(client, subscription, origin).await
}

/// How many times (100 ms apart) an origin held by another session is asked
/// for again before that is an error.
const ORIGIN_RELEASE_TRIES: usize = 50;

/// Tags every transaction this session commits with the replication
/// origin `origin`, so that a pipeline reading this database can tell
/// ferry's changes from the service's own and not send them back (no
/// loops when two services replicate to each other). The origin functions
/// are for superusers unless granted; without them ferry still applies,
/// untagged, and says what that means.
///
/// Either way the session is the only one of `origin` on the target: a
/// session ferry gave up on (its statement stuck on a lock past the stop's
/// grace) may still commit once the lock goes, and a new session reading
/// the progress before that would apply the same transactions again. An
/// origin is held by one session at a time; without one, an advisory lock
/// on its name stands in.
async fn tag_with_origin(client: &Client, subscription: &str, origin: &str) -> Result<(), ApplyError> {
    let name = quote_literal(origin);
    let sql = format!(
        "SELECT pg_replication_origin_create({name}) WHERE pg_replication_origin_oid({name}) IS NULL;
         SELECT pg_replication_origin_session_setup({name});"
    );
    match while_origin_in_use(client, &sql).await {
        Ok(()) => Ok(()),
        Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
            tracing::warn!(
                %subscription,
                "changes are applied without a replication origin ({}): a pipeline reading this target back \
                 would send them back; grant EXECUTE on pg_replication_origin_oid, pg_replication_origin_create \
                 and pg_replication_origin_session_setup to allow two-way replication",
                describe_sql_error(&error)
            );
            let lock = format!(
                "DO $$ BEGIN
                     IF NOT pg_try_advisory_lock(hashtextextended({name}, 0)) THEN
                         RAISE EXCEPTION 'another session of this subscription is still open on the target'
                             USING ERRCODE = 'object_in_use';
                     END IF;
                 END $$"
            );
            while_origin_in_use(client, &lock).await.map_err(target_error(format!(
                "taking the lock that stands in for replication origin {origin}"
            )))
        }
        Err(error) => Err(target_error(format!("setting up replication origin {origin}"))(error)),
    }
}

/// Drops the replication origins whose names start with `prefix`: those
/// of a copy's extra sessions, once the copy is committed and they are
/// closed. The target keeps one of its `max_replication_slots` entries for
/// every origin it has tracked until the origin is dropped, and a later
/// copy, or another subscription into the target, would find none free. A
/// failure is only logged: what was copied stands.
pub async fn drop_helper_origins(client: &Client, subscription: &str, prefix: &str) {
    let sql = format!(
        "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE starts_with(roname, {})",
        quote_literal(prefix)
    );
    if let Err(error) = while_origin_in_use(client, &sql).await {
        tracing::info!(
            %subscription,
            "the copy's replication origins ({prefix}...) stay on the target ({}); grant EXECUTE on \
             pg_replication_origin_drop(text) to have them dropped",
            describe_sql_error(&error)
        );
    }
}

/// Runs `sql` again while an origin it uses is held by a session that
/// just ended (a restart, a reload, a copy's session): the server lets go
/// of it a moment later.
async fn while_origin_in_use(client: &Client, sql: &str) -> Result<(), tokio_postgres::Error> {
    let mut result = client.batch_execute(sql).await;
    for _ in 0..ORIGIN_RELEASE_TRIES {
        match &result {
            Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                result = client.batch_execute(sql).await;
            }
            _ => break,
        }
    }
    result
}

/// The row a statement is about, to name it in errors and dead letters.
struct RowRef {
    op: Op,
    target: Arc<QualifiedName>,
    key_names: Arc<[String]>,
    key: Vec<Option<Bytes>>,
    /// A statement for many rows: how many (`key` is empty then).
    rows: Option<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Insert,
    Update,
    /// `expected`: whether a missing row deserves a warning.
    Delete {
        expected: bool,
    },
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete { .. } => "delete",
        }
    }
}

impl RowRef {
    fn key(&self) -> String {
        key_text(&self.key_names, self.key.iter().map(|v| v.as_deref()))
    }

    /// Turns a statement's answer into the applier's verdict.
    fn check(
        &self,
        subscription: &str,
        result: Result<u64, tokio_postgres::Error>,
    ) -> Result<(), ApplyError> {
        if let Some(rows) = self.rows {
            let error = match (result, self.op) {
                (Err(source), op) => ApplyError::Target {
                    context: format!("{} of {rows} rows of {}", op.name(), self.target),
                    source,
                },
                (Ok(n), Op::Update) if n < rows as u64 => ApplyError::MissingRow {
                    table: (*self.target).clone(),
                    key: format!("one of {rows} keys updated together"),
                },
                (Ok(_), _) => return Ok(()),
            };
            return Err(batched(rows)(error));
        }
        match (result, self.op) {
            (Err(source), op) => Err(ApplyError::Target {
                context: format!("{} {}, key {}", op.name(), self.target, self.key()),
                source,
            }),
            (Ok(0), Op::Update) => {
                Err(ApplyError::MissingRow { table: (*self.target).clone(), key: self.key() })
            }
            (Ok(0), Op::Delete { expected: true }) => {
                // The row is already gone: the end state is the one the
                // source has, so this is logged, not fatal.
                tracing::warn!(%subscription, table = %self.target, key = %self.key(), "delete found no row on the target");
                Ok(())
            }
            (Ok(_), _) => Ok(()),
        }
    }
}

/// Whether the target refuses this for good: bad data (class 22), a
/// violated constraint (class 23), or an update of a row it does not have
/// (with dead letters, typically one whose insert was set aside). Anything
/// else is retried or stops.
fn refused_for_good(error: &ApplyError) -> bool {
    match error {
        ApplyError::MissingRow { .. } => true,
        ApplyError::Batched { source, .. } => refused_for_good(source),
        _ => error.sqlstate().is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
    }
}

impl Applier {
    /// Prepares the target (the progress table) for the subscription's
    /// tables. `monitor` is a second connection to the same target, for
    /// asking how far its WAL is flushed at any moment: the applying
    /// connection may be inside a COPY or an aborted transaction. `source`
    /// is only contacted when a table changes there, and `routes` were
    /// resolved against catalogs read before the source's WAL reached
    /// `routes_read_at` (see [`Applier::route_for`]).
    pub async fn new(
        client: Client,
        monitor: Client,
        subscription: &Subscription,
        source: ConnInfo,
        routes: Vec<TableRoute>,
        routes_read_at: Lsn,
    ) -> Result<Applier, ApplyError> {
        let dead_letters = subscription.on_error == OnError::DeadLetter;
        prepare_session(&client, dead_letters).await?;
        tag_with_origin(&client, &subscription.name, &subscription.slot).await?;
        client
            .batch_execute(RECORD_PROGRESS)
            .await
            .map_err(target_error("preparing the progress statement"))?;
        let routes = routes.into_iter().map(|r| (r.mapping.from.clone(), Arc::new(r))).collect();
        Ok(Applier {
            client: Arc::new(client),
            monitor,
            subscription: subscription.name.as_str().into(),
            source,
            routes,
            routes_read_at,
            plans: HashMap::new(),
            begin_deferred: false,
            begun: None,
            in_flight: InFlight::default(),
            dead_letters,
            careful: false,
            source_lsn: Lsn::ZERO,
            dead_letters_written: 0,
            run: None,
            next_commit: String::new(),
            inline_statements_prepared: 0,
            left_out: HashSet::new(),
            routes_before_stream: None,
            pending: Vec::new(),
            in_order: false,
            consecutive: (0, 0),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The configured table for a source table.
    pub fn route(&self, source: &QualifiedName) -> Option<&TableRoute> {
        self.routes.get(source).map(|r| &**r)
    }

    /// Takes a table out of what this applier writes (it is being copied
    /// elsewhere), returning its route.
    pub fn take_route(&mut self, source: &QualifiedName) -> Result<TableRoute, ApplyError> {
        let route = self.routes.remove(source).ok_or_else(|| ApplyError::Unmapped(source.clone()))?;
        self.plans.retain(|_, plan| !Arc::ptr_eq(&plan.route, &route));
        // Nothing else holds it before streaming starts.
        Arc::try_unwrap(route).map_err(|route| ApplyError::Unmapped(route.mapping.from.clone()))
    }

    /// Adds a table to what this applier writes.
    pub fn add_route(&mut self, route: TableRoute) {
        self.routes.insert(route.mapping.from.clone(), Arc::new(route));
    }

    /// A streamed transaction starts being applied while in progress. A
    /// table description inside it may change a route (a column it adds is
    /// carried from then on); should it not commit, that change must end
    /// with it (see [`Applier::end_stream`]).
    pub fn begin_stream(&mut self) {
        self.routes_before_stream = Some(self.routes.clone());
    }

    /// The streamed transaction applied while in progress ends: committed,
    /// its route changes stand; discarded, the routes it changed are put
    /// back and the plans built on them dropped, to be built again at their
    /// table's next change.
    pub fn end_stream(&mut self, committed: bool) {
        let Some(before) = self.routes_before_stream.take() else { return };
        if committed {
            return;
        }
        for (table, route) in before {
            if let Some(current) = self.routes.get_mut(&table)
                && !Arc::ptr_eq(current, &route)
            {
                let changed = std::mem::replace(current, route);
                self.plans.retain(|_, plan| !Arc::ptr_eq(&plan.route, &changed));
            }
        }
    }

    /// Has `sql` run inside the next commit, after the progress row.
    pub fn with_next_commit(&mut self, sql: String) {
        self.next_commit.push_str(&sql);
    }

    /// Makes everything committed on the target so far durable: progress
    /// read at start may come from an asynchronous commit the target has
    /// not flushed yet, and the source must not hear of it before it is
    /// durable. A synchronous commit that writes WAL (the progress row,
    /// rewritten as it is) flushes all WAL before it. Waiting for the flush
    /// position to pass the insert position instead never ends while
    /// another session holds WAL that nothing flushes: a transaction left
    /// open after a write, on an otherwise quiet target.
    pub async fn make_progress_durable(&mut self) -> Result<(), ApplyError> {
        let sql = format!(
            "BEGIN; SET LOCAL synchronous_commit = local;
             UPDATE ferry.progress SET end_lsn = end_lsn WHERE subscription = {}; COMMIT",
            quote_literal(&self.subscription)
        );
        self.client.batch_execute(&sql).await.map_err(target_error("flushing the progress recorded"))
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

    /// Opens a target transaction. Its BEGIN waits to go out with the
    /// first statement after it, in the same write, and the server reads
    /// both at once; nor does ferry wait for its answer, which arrives
    /// ahead of the answers to the statements after it and is read with
    /// theirs (see [`Applier::settle_in_flight`]): a round trip less per
    /// target transaction. A run's COPY, a TRUNCATE and the commit read it
    /// first.
    pub fn begin(&mut self) {
        self.begin_deferred = true;
    }

    /// Opens a target transaction with its BEGIN on the wire at once, for
    /// a caller that writes through [`Applier::client`] itself. (A new
    /// pipeline's snapshot copy goes before the BEGIN's answer is read, at
    /// the commit; the tables are marked as being copied until then, so a
    /// failure there means copying them again.)
    pub fn begin_now(&mut self) -> Result<(), ApplyError> {
        self.begin();
        self.send_begin()
    }

    /// Puts a deferred BEGIN on the wire (see [`Applier::begin`]).
    fn send_begin(&mut self) -> Result<(), ApplyError> {
        if !std::mem::take(&mut self.begin_deferred) {
            return Ok(());
        }
        let client = Arc::clone(&self.client);
        let begin: Pending<()> = Box::pin(async move { client.batch_execute("BEGIN").await });
        match start(begin) {
            Ok(answer) => answer.map_err(target_error("BEGIN")),
            Err(pending) => {
                self.begun = Some(pending);
                Ok(())
            }
        }
    }

    /// Records `end_lsn` as applied and commits: the changes and the
    /// progress become durable together or not at all. The commit is
    /// asynchronous (`synchronous_commit = off`, as PostgreSQL's own apply
    /// worker does): the source may hear of it only once the target's WAL
    /// is flushed past it (see [`Applier::wal_positions`]).
    pub async fn commit(&mut self, end_lsn: Lsn, commit_time: i64) -> Result<(), ApplyError> {
        // A long run of inserts goes to COPY; a stream of small
        // transactions of inserts, committed one by one, is no such run.
        self.consecutive = (0, 0);
        let progress = format!(
            "EXECUTE ferry_record_progress({subscription}, {lsn}, {time}); {extra}",
            subscription = quote_literal(&self.subscription),
            lsn = quote_literal(&end_lsn.to_string()),
            time = quote_literal(&crate::pg::timestamp::to_rfc3339(commit_time)),
            extra = std::mem::take(&mut self.next_commit),
        );
        if self.commit_in_one_query(&progress).await? {
            return Ok(());
        }
        self.settle().await?;
        // Were the progress row refused, the server would skip the COMMIT
        // and the transaction would stay open and aborted, for the caller
        // to roll back.
        self.client
            .batch_execute(&format!("{progress} COMMIT"))
            .await
            .map_err(target_error("recording progress and committing"))
    }

    /// Sends the whole target transaction, ending with `progress`, as one
    /// query (see [`inline`]) when nothing of it is on the wire yet and it
    /// is small. The statements of one query without BEGIN run as one
    /// transaction, committed at its end, rolled back whole at an error.
    /// `false` when it does not qualify, or failed: the caller then sends
    /// it as usual, which names any failure.
    async fn commit_in_one_query(&mut self, progress: &str) -> Result<bool, ApplyError> {
        let copying = self.run.as_ref().is_some_and(InsertRun::copying);
        if !self.begin_deferred || !self.in_flight.is_empty() || self.careful || copying {
            return Ok(false);
        }
        if !inline::fits(self.gathered().map(|(_, _, row)| row)) {
            return Ok(false);
        }
        let Some(mut sql) = self.inline_statements().await? else { return Ok(false) };
        sql.push_str(progress);
        match self.client.batch_execute(&sql).await {
            Ok(()) => {
                self.begin_deferred = false;
                self.run = None;
                self.pending.clear();
                Ok(true)
            }
            Err(error) if refused_in_session(&error) => {
                tracing::debug!(
                    subscription = %self.subscription,
                    "a target transaction sent as one query failed ({}); sending it statement by statement",
                    describe_sql_error(&error)
                );
                Ok(false)
            }
            Err(error) => Err(target_error("applying a transaction")(error)),
        }
    }

    /// The rows gathered and not yet sent, with their table and kind of
    /// batch, in the order [`Applier::flush_batches`] sends them: the run
    /// of inserts, then the batches.
    fn gathered(&self) -> impl Iterator<Item = (u32, &BatchKind, &[TextParam])> {
        static INSERT: BatchKind = BatchKind::Insert;
        let held =
            self.run.iter().flat_map(|run| run.held.iter().map(|(_, row)| (run.oid, &INSERT, &row[..])));
        let batched = self
            .pending
            .iter()
            .flat_map(|batch| batch.rows().iter().map(|row| (batch.oid, &batch.kind, &row[..])));
        held.chain(batched)
    }

    /// An `EXECUTE` for every row gathered, preparing the statements a
    /// table needs on first use. `None` when a row cannot go this way.
    async fn inline_statements(&mut self) -> Result<Option<String>, ApplyError> {
        let mut kinds: Vec<(u32, BatchKind)> =
            self.gathered().map(|(oid, kind, _)| (oid, kind.clone())).collect();
        kinds.dedup();
        for (oid, kind) in &kinds {
            if !self.inline_prepared(*oid, kind).await? {
                return Ok(None);
            }
        }
        let mut sql = String::new();
        for (oid, kind, row) in self.gathered() {
            let name = self.plans[&oid].inline[kind].as_deref().expect("prepared above");
            if !inline::push_execute(&mut sql, name, row) {
                return Ok(None);
            }
        }
        Ok(Some(sql))
    }

    /// Prepares the SQL statement for one row of a `kind` batch of `oid`
    /// unless it is; `false` when the target refused it (the table's rows
    /// then always go as parameters). Nothing is open on the wire here.
    async fn inline_prepared(&mut self, oid: u32, kind: &BatchKind) -> Result<bool, ApplyError> {
        if let Some(name) = self.plans[&oid].inline.get(kind) {
            return Ok(name.is_some());
        }
        self.inline_statements_prepared += 1;
        let name = format!("ferry_row_{}", self.inline_statements_prepared);
        let plan = &self.plans[&oid];
        let prepared = match inline::prepare_sql(&name, plan, kind) {
            None => None,
            Some(sql) => match self.client.batch_execute(&sql).await {
                Ok(()) => Some(name),
                Err(error) if refused_in_session(&error) => {
                    tracing::debug!(subscription = %self.subscription, table = %plan.target, "rows go as parameters: {}", describe_sql_error(&error));
                    None
                }
                Err(error) => {
                    return Err(target_error(format!("preparing a statement for {}", plan.target))(error));
                }
            },
        };
        let plan = self.plans.get_mut(&oid).expect("looked up above");
        Ok(plan.inline.entry(kind.clone()).or_insert(prepared).is_some())
    }

    /// Drops the SQL statements of a plan replaced by a new one (the
    /// protocol-level ones close when dropped).
    async fn deallocate_inline(&mut self, plan: &RelationPlan) -> Result<(), ApplyError> {
        let names: Vec<&str> = plan.inline.values().flatten().map(String::as_str).collect();
        if names.is_empty() {
            return Ok(());
        }
        let sql: String = names.iter().map(|name| format!("DEALLOCATE {name};")).collect();
        self.client
            .batch_execute(&sql)
            .await
            .map_err(target_error(format!("dropping statements for {}", plan.target)))
    }

    /// The target's WAL insert and flush positions, read together on the
    /// second connection: every commit that returned before lies below
    /// the first, and commits below the second survive a crash of the
    /// target.
    pub async fn wal_positions(&self) -> Result<(Lsn, Lsn), ApplyError> {
        let messages = self
            .monitor
            .simple_query("SELECT pg_current_wal_insert_lsn()::text, pg_current_wal_flush_lsn()::text")
            .await
            .map_err(target_error("reading the WAL positions"))?;
        Ok((lsn_column(&messages, 0), lsn_column(&messages, 1)))
    }

    /// How many dead letters the last commit made durable (and resets it).
    pub fn take_dead_letters(&mut self) -> u64 {
        std::mem::take(&mut self.dead_letters_written)
    }

    /// Abandons the current transaction and whatever is still in flight.
    pub async fn rollback(&mut self) {
        self.begin_deferred = false;
        self.begun = None;
        self.in_flight.clear();
        self.next_commit.clear();
        self.run = None;
        self.pending.clear();
        self.consecutive = (0, 0);
        self.dead_letters_written = 0;
        let _ = self.client.batch_execute("ROLLBACK").await;
    }

    /// Sends what is gathered and waits for every statement in flight; the
    /// first failure wins.
    async fn settle(&mut self) -> Result<(), ApplyError> {
        self.flush_batches().await?;
        self.settle_in_flight().await
    }

    async fn settle_in_flight(&mut self) -> Result<(), ApplyError> {
        self.send_begin()?;
        if let Some(begin) = self.begun.take()
            && let Err(error) = begin.await
        {
            self.in_flight.clear();
            return Err(target_error("BEGIN")(error));
        }
        while let Some(statement) = self.in_flight.pop_front() {
            let (row, result) = statement.await;
            if let Err(error) = row.check(&self.subscription, result) {
                self.in_flight.clear();
                return Err(error);
            }
        }
        Ok(())
    }

    /// Marks the start of a source transaction: its commit LSN (for dead
    /// letters), whether it is applied carefully (one statement at a time,
    /// refused rows set aside) and whether in order (one statement per row,
    /// pipelined, so that a refused row is named).
    pub fn begin_source_transaction(&mut self, commit_lsn: Lsn, careful: bool, in_order: bool) {
        self.source_lsn = commit_lsn;
        self.careful = careful;
        self.in_order = in_order;
    }

    /// Whether rows may be gathered per table (see [`batch`]).
    fn batching(&self) -> bool {
        !self.careful && !self.in_order
    }

    /// Whether an error is one a replay in careful mode would set aside.
    pub fn would_dead_letter(&self, error: &ApplyError) -> bool {
        self.dead_letters && !self.careful && refused_for_good(error)
    }

    /// Sends a statement after the inserts gathered before it.
    async fn send(
        &mut self,
        row: RowRef,
        statement: Statement,
        params: Vec<TextParam>,
    ) -> Result<(), ApplyError> {
        self.flush_batches().await?;
        self.send_now(row, statement, params).await
    }

    /// Sends everything gathered: the run of inserts, then the batches.
    async fn flush_batches(&mut self) -> Result<(), ApplyError> {
        self.finish_run().await?;
        for batch in std::mem::take(&mut self.pending) {
            self.send_batch(batch).await?;
        }
        Ok(())
    }

    /// Sends one table's batch as one statement (after the run of inserts,
    /// which was gathered first).
    async fn send_batch(&mut self, batch: TableBatch) -> Result<(), ApplyError> {
        self.finish_run().await?;
        let plan = &self.plans[&batch.oid];
        let statements = plan.batch.as_ref().expect("only batched tables gather batches");
        let (statement, op) = match &batch.kind {
            BatchKind::Insert => (statements.insert.clone(), Op::Insert),
            BatchKind::Update(set) => (statements.updates[set].clone(), Op::Update),
        };
        let params = batch.encode(&statements.delims(&batch.kind));
        let mut row = row_ref(plan, op, Vec::new());
        row.rows = Some(batch.len());
        self.send_now(row, statement, params).await
    }

    /// Adds a row to its table's batch. A change of another kind sends the
    /// table's batch first (the order within a table is kept); a full batch
    /// is sent; a long run of inserts into one table turns into a COPY.
    async fn batch_row(
        &mut self,
        oid: u32,
        kind: BatchKind,
        key: Option<Vec<Option<Bytes>>>,
        row: Vec<TextParam>,
    ) -> Result<(), ApplyError> {
        let insert = kind == BatchKind::Insert;
        if let Some(run) = self.run.as_mut().filter(|run| run.oid == oid) {
            if insert && run.copying() {
                let rows = run.rows();
                return run.push_copied(&row).await.map_err(batched(rows));
            }
            self.finish_run().await?;
        }
        if let Some(at) = self.pending.iter().position(|b| b.oid == oid && b.kind != kind) {
            let earlier = self.pending.remove(at);
            self.send_batch(earlier).await?;
        }
        let at = match self.pending.iter().position(|b| b.oid == oid) {
            Some(at) => at,
            None => {
                self.pending.push(TableBatch::new(oid, kind));
                self.pending.len() - 1
            }
        };
        let batch = &mut self.pending[at];
        match key {
            Some(key) => batch.push_update(key, row),
            None => batch.push(row),
        }
        if insert && self.consecutive.1 >= COPY_AFTER_ROWS && self.run.is_none() {
            // Nothing but inserts into this table for a while: COPY them
            // (it waits for its own answer, so read the earlier ones first).
            let batch = self.pending.remove(at);
            let rows = batch.len();
            self.settle_in_flight().await?;
            let plan = &self.plans[&oid];
            let columns = plan.columns.iter().map(|(_, name)| name.clone()).collect();
            let run = InsertRun::copy_now(
                oid,
                plan.insert.clone(),
                Arc::clone(&plan.target),
                columns,
                &self.client,
                batch.into_rows(),
            )
            .await
            .map_err(batched(rows))?;
            self.run = Some(run);
        } else if batch.full() {
            let batch = self.pending.remove(at);
            self.send_batch(batch).await?;
        }
        Ok(())
    }

    /// Ends the run of gathered inserts: a long one finishes its COPY, a
    /// short one goes out as pipelined INSERTs.
    async fn finish_run(&mut self) -> Result<(), ApplyError> {
        let Some(mut run) = self.run.take() else { return Ok(()) };
        let rows = run.rows();
        run.finish_copy().await.map_err(batched(rows))?;
        for (row, params) in run.held {
            self.send_now(row, run.insert.clone(), params).await?;
        }
        Ok(())
    }

    /// Adds an insert to the run for its table, starting a new run when the
    /// table changes.
    async fn gather_insert(
        &mut self,
        relation: &Arc<Relation>,
        row: RowRef,
        params: Vec<TextParam>,
    ) -> Result<(), ApplyError> {
        if !self.pending.is_empty() {
            // Batches gathered after the run: they go before this row.
            self.flush_batches().await?;
        }
        if self.run.as_ref().is_some_and(|run| run.oid != relation.oid) {
            self.finish_run().await?;
        }
        let bytes = copy::bytes_of(&params);
        if InsertRun::starts_copy_next(self.run.as_ref(), bytes) {
            // COPY waits for its own answer: read the earlier ones first
            // (which also puts a deferred BEGIN on the wire, ahead of it).
            self.settle_in_flight().await?;
        }
        let plan = &self.plans[&relation.oid];
        let run = self.run.get_or_insert_with(|| {
            let columns = plan.columns.iter().map(|(_, name)| name.clone()).collect();
            InsertRun::new(relation.oid, plan.insert.clone(), Arc::clone(&plan.target), columns)
        });
        let rows = run.rows() + 1;
        run.push(&self.client, row, params, bytes).await.map_err(batched(rows))
    }

    /// Sends a statement now (its first poll puts the request on the wire)
    /// and keeps its answer for later, so rows are applied without waiting
    /// for each other. In careful mode it runs alone inside a savepoint.
    async fn send_now(
        &mut self,
        row: RowRef,
        statement: Statement,
        params: Vec<TextParam>,
    ) -> Result<(), ApplyError> {
        self.send_begin()?;
        let bytes = copy::bytes_of(&params);
        let client = Arc::clone(&self.client);
        let execution: SentStatement = Box::pin(async move {
            let result = client.execute_raw(&statement, params).await;
            (row, result)
        });
        if self.careful {
            return self.execute_carefully(execution).await;
        }
        match start(execution) {
            Ok((row, result)) => row.check(&self.subscription, result)?,
            Err(pending) => self.in_flight.push(bytes, pending),
        }
        while self.in_flight.is_over_limit()
            && let Some(oldest) = self.in_flight.pop_front()
        {
            let (row, result) = oldest.await;
            if let Err(error) = row.check(&self.subscription, result) {
                self.in_flight.clear();
                return Err(error);
            }
        }
        Ok(())
    }

    /// Runs one statement in a savepoint; a change the target refuses for
    /// good is rolled back to the savepoint and recorded as a dead letter.
    async fn execute_carefully(&mut self, execution: SentStatement) -> Result<(), ApplyError> {
        self.client.batch_execute("SAVEPOINT ferry_row").await.map_err(target_error("SAVEPOINT"))?;
        let (row, result) = execution.await;
        let error = match row.check(&self.subscription, result) {
            Ok(()) => {
                return self
                    .client
                    .batch_execute("RELEASE SAVEPOINT ferry_row")
                    .await
                    .map_err(target_error("RELEASE SAVEPOINT"));
            }
            Err(error) if refused_for_good(&error) => error,
            Err(error) => return Err(error),
        };
        // Rolling back keeps the savepoint: released too, so that dead
        // letters do not nest a sub-transaction each.
        self.client
            .batch_execute("ROLLBACK TO SAVEPOINT ferry_row; RELEASE SAVEPOINT ferry_row")
            .await
            .map_err(target_error("ROLLBACK TO SAVEPOINT"))?;
        self.dead_letter(&row.target.to_string(), row.op.name(), &row.key(), &error).await
    }

    /// Records a change refused for good (`error`) in ferry.dead_letters,
    /// inside the target transaction: it may be the first thing of it to
    /// reach the target (a NULL key is refused before anything is sent),
    /// and committed on its own it would stay, then come again, were the
    /// transaction rolled back and replayed.
    async fn dead_letter(
        &mut self,
        table: &str,
        op: &str,
        key: &str,
        error: &ApplyError,
    ) -> Result<(), ApplyError> {
        self.send_begin()?;
        let lsn = self.source_lsn.to_string();
        let sqlstate = error.sqlstate().map(str::to_string);
        let message = match error {
            ApplyError::Target { source, .. } => describe_sql_error(source),
            other => other.to_string(),
        };
        self.client
            .execute(
                "INSERT INTO ferry.dead_letters (subscription, source_lsn, table_name, operation, key, sqlstate, error)
                 VALUES ($1, $2::text::pg_lsn, $3, $4, $5, $6, $7)",
                &[&&*self.subscription, &lsn, &table, &op, &key, &sqlstate, &message],
            )
            .await
            .map_err(target_error("recording a dead letter"))?;
        self.dead_letters_written += 1;
        fault::point(fault::AFTER_DEAD_LETTER);
        tracing::warn!(subscription = %self.subscription, %table, %key, source_lsn = %lsn, sqlstate, "change refused by the target, kept in ferry.dead_letters: {message}");
        Ok(())
    }

    /// Applies one change inside the current transaction, shaped by its
    /// table's configuration. Its outcome may only be known at the next
    /// commit (statements are pipelined).
    pub async fn apply(&mut self, change: &Change) -> Result<(), ApplyError> {
        match self.apply_shaped(change).await {
            // An update or delete of a row with a NULL key never reaches
            // the target (the row's insert was refused there): set aside
            // like what the target refuses, before anything of it is sent.
            Err(ApplyError::NullKey { table, what, column }) if self.careful && self.dead_letters => {
                let (target, key) =
                    (table.to_string(), key_text(std::slice::from_ref(&column), [None].into_iter()));
                let op = if matches!(change, Change::Delete { .. }) { "delete" } else { "update" };
                self.dead_letter(&target, op, &key, &ApplyError::NullKey { table, what, column }).await
            }
            other => other,
        }
    }

    async fn apply_shaped(&mut self, change: &Change) -> Result<(), ApplyError> {
        if let Change::Insert { relation, .. }
        | Change::Update { relation, .. }
        | Change::Delete { relation, .. } = change
            && !self.is_mapped(relation)
        {
            return Ok(());
        }
        self.consecutive = match (change, self.consecutive) {
            (Change::Insert { relation, .. }, (oid, n)) if relation.oid == oid => (oid, n + 1),
            (Change::Insert { relation, .. }, _) => (relation.oid, 1),
            _ => (0, 0),
        };
        match change {
            Change::Insert { relation, new } => {
                let plan = self.plan(relation).await?;
                if plan.route.mapping.operations.insert
                    && self.matches(relation, &resolved_cells(new, None), None, new).await?.matched
                {
                    self.insert(relation, new, false).await?;
                }
            }
            Change::Update { relation, old, new } => {
                let plan = self.plan(relation).await?;
                if !plan.route.mapping.operations.update {
                    return Ok(());
                }
                if plan.route.filter.is_some() {
                    self.filtered_update(relation, old.as_ref(), new).await?;
                } else {
                    self.update(relation, old.as_ref(), new).await?;
                }
            }
            Change::Delete { relation, old } => {
                let plan = self.plan(relation).await?;
                if plan.route.mapping.operations.delete {
                    // With a filter the row may never have been copied.
                    let expected = plan.route.filter.is_none();
                    self.delete(relation, old.tuple(), expected).await?;
                }
            }
            Change::Truncate { relations, restart_identity, .. } => {
                self.truncate(relations, *restart_identity).await?;
            }
            // Messages are for consumers like `ferry tail`; a database has
            // nowhere to put them.
            Change::Message(_) => {}
        }
        Ok(())
    }

    /// Whether a relation's changes have a table to go to. Changes of a
    /// table taken out of the subscription still arrive while the WAL
    /// written before the publication changed is read (it is decoded with
    /// the publication as it was): they are left out, and the log says so
    /// once.
    fn is_mapped(&mut self, relation: &Relation) -> bool {
        if self.plans.contains_key(&relation.oid) {
            return true;
        }
        let mapped = self.routes.keys().any(|t| t.schema == relation.namespace && t.name == relation.name);
        if !mapped && self.left_out.insert(relation.oid) {
            let table = QualifiedName::new(relation.namespace.clone(), relation.name.clone());
            tracing::info!(subscription = %self.subscription, %table, "leaving out changes of a table this subscription no longer maps");
        }
        mapped
    }

    /// The plan for a relation, rebuilt whenever the server describes the
    /// relation anew (after a reconnect or a schema change).
    async fn plan(&mut self, relation: &Arc<Relation>) -> Result<&RelationPlan, ApplyError> {
        let current = self
            .plans
            .get(&relation.oid)
            .is_some_and(|p| Arc::ptr_eq(&p.relation, relation) || p.relation.describes_as(relation));
        if !current {
            self.settle().await?;
            let described = self.under_current_names(relation).await?;
            let route = self.route_for(&described).await?;
            let mut plan = RelationPlan::build(&self.client, &described, &route).await?;
            // The changes that follow carry the server's own description.
            plan.relation = Arc::clone(relation);
            if let Some(replaced) = self.plans.insert(relation.oid, plan) {
                self.deallocate_inline(&replaced).await?;
            }
        }
        Ok(&self.plans[&relation.oid])
    }

    /// Whether the source transaction being applied is streamed while in
    /// progress: it has no commit LSN yet.
    fn streaming_in_progress(&self) -> bool {
        self.source_lsn == Lsn::ZERO
    }

    /// Whether `relation` comes from WAL written before the catalogs were
    /// read at start (a resumed pipeline reads older WAL first), which may
    /// hold several descriptions of a table changed more than once while
    /// ferry was stopped. A description in a transaction streamed while in
    /// progress counts as one from before the start only while the table
    /// has no plan.
    fn described_before_start(&self, relation: &Relation) -> bool {
        if self.streaming_in_progress() {
            return !self.plans.contains_key(&relation.oid);
        }
        self.source_lsn < self.routes_read_at
    }

    /// `relation` under its columns' current names. A description from
    /// before the start may name columns that the source table no longer
    /// has, renamed while ferry was stopped, or name them out of the
    /// table's order, swapped or dropped and added again: where the table's
    /// attributes show which columns those are now (see [`renamed`]), their
    /// values go where the columns' current names do. Where they leave it
    /// open, the log says so, and the columns are left out as ones the
    /// target lacks.
    async fn under_current_names(&self, relation: &Arc<Relation>) -> Result<Arc<Relation>, ApplyError> {
        let table = QualifiedName::new(relation.namespace.clone(), relation.name.clone());
        // A transaction streamed while in progress may have changed the
        // table itself, which the catalogs do not show until it commits:
        // its description is taken as it is.
        let suspect = !self.streaming_in_progress()
            && self.described_before_start(relation)
            && self.routes.get(&table).is_some_and(|route| !names_in_order(relation, route));
        if !suspect {
            return Ok(Arc::clone(relation));
        }
        let attributes = source_catalog::attributes(&self.source, relation.oid).await?;
        let attributes: Vec<Option<&str>> = attributes.iter().map(Option::as_deref).collect();
        let described: Vec<&str> = relation.columns.iter().map(|c| c.name.as_str()).collect();
        let fates = renamed::current_names(&described, &attributes);
        let subscription = &*self.subscription;
        let mut under_current = (**relation).clone();
        for (column, fate) in under_current.columns.iter_mut().zip(fates) {
            match fate {
                Fate::Now(now) if now != column.name => {
                    tracing::info!(%subscription, %table, "column {:?} of changes from before the start is column {now:?} now (renamed while ferry was stopped)", column.name);
                    column.name = now;
                }
                Fate::Now(_) => {}
                Fate::Dropped | Fate::Open => {
                    if fate == Fate::Open {
                        tracing::warn!(%subscription, %table, "column {:?} of changes from before the start may be another column now, or none: columns were renamed, or dropped and added again, while ferry was stopped, and the table's dropped columns leave open which; its values in those changes are not replicated", column.name);
                    }
                    // Its name may be another column's now.
                    if attributes.contains(&Some(column.name.as_str())) {
                        column.name = renamed::left_out(&column.name);
                    }
                }
            }
        }
        Ok(Arc::new(under_current))
    }

    /// The route for a relation as the server now describes it. When its
    /// columns or their types differ from what the route knows, the table
    /// changed on the source (while the pipeline ran, or before the WAL
    /// being read): the new types are named on the source and the target
    /// table is read again — once per description, not per row — and the
    /// route is worked out anew, following the change or refusing it (see
    /// [`TableRoute::follow`]). The log says what changed.
    async fn route_for(&mut self, relation: &Relation) -> Result<Arc<TableRoute>, ApplyError> {
        let source = QualifiedName::new(relation.namespace.clone(), relation.name.clone());
        let route = Arc::clone(self.routes.get(&source).ok_or_else(|| ApplyError::Unmapped(source.clone()))?);
        if route.describes(relation) {
            return Ok(route);
        }
        let types = source_catalog::describe_types(&self.source, &route.unknown_types(relation)).await?;
        let source_columns = route.relation_columns(relation, &types);
        let target = TargetTable::load(&self.client, &route.mapping.to).await?;
        let full_identity = relation.replica_identity == ReplicaIdentity::Full;
        // A description from before the catalogs were read at start (a
        // resumed pipeline reads older WAL) may lack what was added since:
        // it is checked as at start, not compared. Any later one describes
        // a change made while the route was in use.
        // One in a transaction streamed while in progress may be either,
        // and is checked as at start, without leaving out what it lacks.
        let while_running = !self.described_before_start(relation);
        let identity: Vec<String> =
            relation.columns.iter().filter(|c| c.is_key).map(|c| c.name.clone()).collect();
        let target_columns = target.columns.clone();
        let followed = if while_running {
            route.follow(source_columns, target_columns, full_identity)
        } else if self.streaming_in_progress() {
            TableRoute::checked(&route.mapping, source_columns, target_columns, full_identity)
        } else {
            route.for_older(source_columns, target_columns, full_identity)
        }
        .and_then(|followed| followed.check_writes(&identity, &target).map(|()| followed))
        .map_err(|error| self.schema_error(error))?;
        if let Some(note) = change_note(&route, &followed) {
            let what =
                if while_running { "changed on the source" } else { "differs from its catalog at start" };
            let (subscription, table) = (&*self.subscription, &source);
            if note.warn {
                tracing::warn!(%subscription, %table, "table {what}: {}", note.text);
            } else {
                tracing::info!(%subscription, %table, "table {what}: {}", note.text);
            }
        }
        let followed = Arc::new(followed);
        self.routes.insert(source, Arc::clone(&followed));
        Ok(followed)
    }

    fn schema_error(&self, error: RouteError) -> ApplyError {
        ApplyError::Schema { subscription: self.subscription.to_string(), error }
    }

    /// Names the column behind a target error about a column that does not
    /// exist (SQLSTATE 42703): a column a route fills was dropped on the
    /// target while the pipeline ran. Any other error is returned as is.
    pub async fn explain(&mut self, error: ApplyError) -> ApplyError {
        if error.sqlstate() != Some("42703") {
            return error;
        }
        // The failed transaction may still be open; the catalog is read
        // outside it.
        self.rollback().await;
        for route in self.routes.values() {
            if let Ok(target) = TargetTable::load(&self.client, &route.mapping.to).await
                && let Err(missing) = route.check_target(&target.columns)
            {
                return self.schema_error(missing);
            }
        }
        error
    }

    /// Whether a row (its cells in relation order) passes the table's filter.
    /// A filter column the server did not send (unchanged TOAST) is read
    /// from the target's copy of the row, found by its old key when an
    /// update changed it.
    async fn matches(
        &mut self,
        relation: &Arc<Relation>,
        cells: &[Cell<'_>],
        old: Option<&OldTuple>,
        new: &Tuple,
    ) -> Result<FilterAnswer, ApplyError> {
        let plan = &self.plans[&relation.oid];
        let Some(filter) = &plan.route.filter else {
            return Ok(FilterAnswer { matched: true, on_target: false });
        };
        let lookup =
            |i: usize| plan.filter_columns[i].and_then(|r| cells.get(r).copied()).unwrap_or(Cell::Null);
        match filter.evaluate(lookup) {
            Ok(matched) => Ok(FilterAnswer { matched, on_target: false }),
            Err(EvalError::NeedsUnchangedColumn(_)) => {
                let matched = self.matches_on_target(relation, cells, old, new).await?;
                Ok(FilterAnswer { matched, on_target: true })
            }
            Err(error) => {
                Err(ApplyError::Filter { table: plan.route.mapping.from.clone(), error: error.to_string() })
            }
        }
    }

    /// Evaluates the filter with the values the server left out read from
    /// the target's copy of the row. No copy means the row did not match
    /// before; its unsent values are then unknown, which is an error rather
    /// than a guess.
    async fn matches_on_target(
        &mut self,
        relation: &Arc<Relation>,
        cells: &[Cell<'_>],
        old: Option<&OldTuple>,
        new: &Tuple,
    ) -> Result<bool, ApplyError> {
        let key = key_values(&self.plans[&relation.oid], key_tuple(old, new), new, "an update")?;
        let stored = self.target_copy(relation, key).await?;
        let plan = &self.plans[&relation.oid];
        let mut merged = cells.to_vec();
        for (position, (index, _)) in plan.columns.iter().enumerate() {
            if matches!(merged.get(*index), Some(Cell::Unchanged)) {
                merged[*index] = stored[position].as_deref().map_or(Cell::Null, |s| Cell::Text(s.as_bytes()));
            }
        }
        let filter = plan.route.filter.as_ref().expect("only called with a filter");
        let lookup =
            |i: usize| plan.filter_columns[i].and_then(|r| merged.get(r).copied()).unwrap_or(Cell::Null);
        filter
            .evaluate(lookup)
            .map_err(|e| ApplyError::Filter { table: plan.route.mapping.from.clone(), error: e.to_string() })
    }

    /// Inserts a row; `upsert` overwrites a row with the same key (a row
    /// moving into a filter may or may not be on the target already).
    async fn insert(
        &mut self,
        relation: &Arc<Relation>,
        new: &Tuple,
        upsert: bool,
    ) -> Result<(), ApplyError> {
        let plan = &self.plans[&relation.oid];
        let params: Vec<TextParam> = plan.columns.iter().map(|(i, _)| param(new, *i)).collect();
        if !upsert && self.batching() && plan.batch.is_some() {
            return self.batch_row(relation.oid, BatchKind::Insert, None, params).await;
        }
        let row = row_ref(plan, Op::Insert, plan.key.iter().map(|&k| key_value(new, new, k)).collect());
        if !upsert && !self.careful && !self.in_order && plan.copyable {
            return self.gather_insert(relation, row, params).await;
        }
        let statement = if upsert {
            plan.upsert.clone().expect("prepared for filtered tables")
        } else {
            plan.insert.clone()
        };
        self.send(row, statement, params).await
    }

    /// Updates the row the old key (or the unchanged new key) names, leaving
    /// unchanged TOAST columns as they are on the target.
    async fn update(
        &mut self,
        relation: &Arc<Relation>,
        old: Option<&OldTuple>,
        new: &Tuple,
    ) -> Result<(), ApplyError> {
        let plan = &self.plans[&relation.oid];
        let present: Vec<bool> =
            plan.columns.iter().map(|(i, _)| !matches!(new.0.get(*i), Some(Value::UnchangedToast))).collect();
        if self.batching() && plan.batch.as_ref().is_some_and(|b| b.shape.updates) {
            let key = key_values(plan, key_tuple(old, new), new, "an update")?;
            let same_key = plan.key.iter().zip(&key).all(|(&k, v)| key_value(new, new, k) == *v);
            let statements = plan.batch.as_ref().expect("checked above");
            let set: Vec<usize> =
                (0..present.len()).filter(|i| present[*i] && !statements.key.contains(i)).collect();
            if same_key && !set.is_empty() {
                if !statements.updates.contains_key(&set) {
                    self.settle().await?;
                    let plan = self.plans.get_mut(&relation.oid).expect("planned by apply");
                    let names: Vec<String> = plan.columns.iter().map(|(_, n)| n.clone()).collect();
                    let statements = plan.batch.as_mut().expect("checked above");
                    let statement = batch::prepare_update(
                        &self.client,
                        &plan.target,
                        &names,
                        &statements.shape,
                        &set,
                        &statements.key,
                    )
                    .await?;
                    statements.updates.insert(set.clone(), statement);
                }
                let plan = &self.plans[&relation.oid];
                let mut row: Vec<TextParam> = set.iter().map(|&i| param(new, plan.columns[i].0)).collect();
                row.extend(key.iter().cloned().map(TextParam));
                return self.batch_row(relation.oid, BatchKind::Update(set), Some(key), row).await;
            }
        }
        let present = without_unchanged_key(plan, key_tuple(old, new), new, present);
        if !plan.updates.contains_key(&present) {
            // Waiting for a new statement's preparation behind unread
            // answers could stall the connection: read them first.
            self.settle().await?;
        }
        let plan = self.plans.get_mut(&relation.oid).expect("planned by apply");
        let statement = plan.update_statement(&self.client, &present).await?;
        let plan = &self.plans[&relation.oid];
        let identity = key_tuple(old, new);
        let mut params: Vec<TextParam> = plan
            .columns
            .iter()
            .zip(&present)
            .filter(|(_, present)| **present)
            .map(|((i, _), _)| param(new, *i))
            .collect();
        let key = key_values(plan, identity, new, "an update")?;
        params.extend(key.iter().cloned().map(TextParam));
        let row = row_ref(plan, Op::Update, key);
        self.send(row, statement, params).await
    }

    /// The target's copy of the row with `key` (the carried columns as
    /// text), which must be there: without it the values the server left
    /// out (unchanged TOAST) are unknown, which is an error rather than a
    /// guess.
    async fn target_copy(
        &mut self,
        relation: &Arc<Relation>,
        key: Vec<Option<Bytes>>,
    ) -> Result<Vec<Option<String>>, ApplyError> {
        self.settle().await?;
        let plan = &self.plans[&relation.oid];
        let names: Vec<String> =
            plan.columns.iter().map(|(_, n)| format!("{}::text", quote_ident(n))).collect();
        let sql = format!(
            "SELECT {} FROM {} WHERE {}",
            names.join(", "),
            plan.target,
            plan::key_condition(&plan.key_names, 1)
        );
        let key: Vec<TextParam> = key.into_iter().map(TextParam).collect();
        let row = self
            .client
            .query_opt(&sql, &key.iter().map(|p| p as &(dyn ToSql + Sync)).collect::<Vec<_>>())
            .await
            .map_err(target_error(format!("reading the target's copy of a row of {}", plan.target)))?;
        let Some(row) = row else {
            return Err(ApplyError::IncompleteRow { table: plan.route.mapping.from.clone() });
        };
        Ok((0..plan.columns.len()).map(|i| row.get(i)).collect())
    }

    /// An update under a row filter: the row lands on the target when its
    /// new values match, and leaves it when they do not — whether or not it
    /// matched before, which replica identity default does not tell.
    async fn filtered_update(
        &mut self,
        relation: &Arc<Relation>,
        old: Option<&OldTuple>,
        new: &Tuple,
    ) -> Result<(), ApplyError> {
        let cells = resolved_cells(new, old);
        let FilterAnswer { matched, on_target } = self.matches(relation, &cells, old, new).await?;
        let plan = &self.plans[&relation.oid];
        let key_changed = old.is_some_and(|o| {
            plan.key.iter().any(|&k| key_value(o.tuple(), new, k) != key_value(new, new, k))
        });
        let complete = plan.columns.iter().all(|(i, _)| !matches!(cells.get(*i), Some(Cell::Unchanged)));
        if !matched {
            if key_changed && let Some(old) = old {
                self.delete(relation, old.tuple(), false).await?;
            }
            return self.delete(relation, new, false).await;
        }
        if !complete {
            // Some values were not sent: the row must already be there,
            // under its old key if that changed; update it in place. A row
            // that only now matches is not there, and its unsent values are
            // unknown (unless the filter found it there already).
            if !on_target {
                let identity = key_values(plan, key_tuple(old, new), new, "an update")?;
                self.target_copy(relation, identity).await?;
            }
            return self.update(relation, old, new).await;
        }
        if key_changed && let Some(old) = old {
            self.delete(relation, old.tuple(), false).await?;
        }
        let row = Tuple(
            cells
                .iter()
                .map(|c| match c {
                    Cell::Text(b) => Value::Text(Bytes::copy_from_slice(b)),
                    _ => Value::Null,
                })
                .collect(),
        );
        self.insert(relation, &row, true).await
    }

    /// Deletes the row `identity` names. `expected` says whether a missing
    /// row is worth a warning (without a filter it should be there).
    async fn delete(
        &mut self,
        relation: &Arc<Relation>,
        identity: &Tuple,
        expected: bool,
    ) -> Result<(), ApplyError> {
        let plan = &self.plans[&relation.oid];
        let key = key_values(plan, identity, identity, "a delete")?;
        let params = key.iter().cloned().map(TextParam).collect();
        let statement = plan.delete.clone();
        let row = row_ref(plan, Op::Delete { expected }, key);
        self.send(row, statement, params).await
    }

    async fn truncate(
        &mut self,
        relations: &[Arc<Relation>],
        restart_identity: bool,
    ) -> Result<(), ApplyError> {
        let targets: Vec<String> = relations
            .iter()
            .filter_map(|r| self.routes.get(&QualifiedName::new(r.namespace.clone(), r.name.clone())))
            .filter(|route| route.mapping.operations.truncate)
            .map(|route| route.mapping.to.to_string())
            .collect();
        if targets.is_empty() {
            return Ok(());
        }
        self.settle().await?;
        // Only the tables the source names: cascading on the target could
        // empty tables ferry does not own, and so could an inheritance
        // child's. A partitioned table's partitions are its rows, and
        // PostgreSQL refuses ONLY for it.
        let mut named = Vec::with_capacity(targets.len());
        for target in &targets {
            let partitioned: bool = self
                .client
                .query_one("SELECT relkind = 'p' FROM pg_class WHERE oid = $1::text::regclass", &[target])
                .await
                .map_err(target_error(format!("looking up {target} before a truncate")))?
                .get(0);
            named.push(if partitioned { target.clone() } else { format!("ONLY {target}") });
        }
        let restart = if restart_identity { " RESTART IDENTITY" } else { "" };
        let sql = format!("TRUNCATE {}{restart}", named.join(", "));
        self.client
            .batch_execute(&sql)
            .await
            .map_err(target_error(format!("truncate of {}", targets.join(", "))))
    }
}

/// Polls a request once, which puts it on the wire; gives it back when its
/// answer is still to come.
fn start<F: Future + ?Sized>(mut request: Pin<Box<F>>) -> Result<F::Output, Pin<Box<F>>> {
    let mut context = Context::from_waker(Waker::noop());
    match request.as_mut().poll(&mut context) {
        Poll::Ready(answer) => Ok(answer),
        Poll::Pending => Err(request),
    }
}

/// The LSN in column `column` of the first row of a simple query's answer
/// (0/0 if none).
fn lsn_column(messages: &[SimpleQueryMessage], column: usize) -> Lsn {
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(column)?.parse().ok(),
            _ => None,
        })
        .unwrap_or(Lsn::ZERO)
}

/// Whether the server refused a statement and the session goes on (an
/// ERROR, not a FATAL one or a broken connection).
fn refused_in_session(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_some_and(|e| e.parsed_severity() == Some(Severity::Error))
}

/// The columns an in-place update assigns: those the source sent, less a key
/// that did not change (a `GENERATED ALWAYS` identity key can only be set to
/// DEFAULT). None may be left: see [`RelationPlan::update_statement`].
fn without_unchanged_key(
    plan: &RelationPlan,
    identity: &Tuple,
    new: &Tuple,
    mut present: Vec<bool>,
) -> Vec<bool> {
    let key_changed = plan.key.iter().any(|&k| key_value(identity, new, k) != key_value(new, new, k));
    let is_key = |i: &usize| plan.key.contains(i);
    if !key_changed {
        for ((i, _), sent) in plan.columns.iter().zip(present.iter_mut()) {
            *sent &= !is_key(i);
        }
    }
    present
}

/// Whether a row passes its table's filter, and whether finding out read
/// the target's copy of the row (which is then known to be there).
#[derive(Debug, Clone, Copy)]
struct FilterAnswer {
    matched: bool,
    on_target: bool,
}

fn row_ref(plan: &RelationPlan, op: Op, key: Vec<Option<Bytes>>) -> RowRef {
    RowRef { op, target: Arc::clone(&plan.target), key_names: Arc::clone(&plan.key_names), key, rows: None }
}

/// The row's key values, from `tuple` or, where the server left one out,
/// `fallback`; every key column must have one.
fn key_values(
    plan: &RelationPlan,
    tuple: &Tuple,
    fallback: &Tuple,
    what: &'static str,
) -> Result<Vec<Option<Bytes>>, ApplyError> {
    plan.key
        .iter()
        .zip(plan.key_names.iter())
        .map(|(&k, name)| {
            key_value(tuple, fallback, k).map(Some).ok_or_else(|| {
                let sent_null = matches!(tuple.0.get(k), Some(Value::Null))
                    && plan.relation.columns.get(k).is_some_and(|c| c.is_key);
                if sent_null {
                    ApplyError::NullKey { table: (*plan.target).clone(), what, column: name.clone() }
                } else {
                    ApplyError::NoKey { table: (*plan.target).clone(), what }
                }
            })
        })
        .collect()
}

/// Whether every column `relation` names is one the route knows, in the
/// route's order: then the description names the columns as they are now.
fn names_in_order(relation: &Relation, route: &TableRoute) -> bool {
    let places: Option<Vec<usize>> =
        relation.columns.iter().map(|r| route.source_columns.iter().position(|c| c.name == r.name)).collect();
    places.is_some_and(|places| places.is_sorted())
}
