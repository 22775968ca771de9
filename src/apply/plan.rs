//! How one source relation, as the server last described it, lands in its
//! target table: which columns, which key, and the prepared statements.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::{Client, Statement};

use super::batch::{self, BatchShape};
use super::{ApplyError, target_error};
use crate::pg::names::{QualifiedName, quote_ident};
use crate::pg::pgoutput::{Relation, ReplicaIdentity};
use crate::route::TableRoute;

pub struct RelationPlan {
    pub relation: Arc<Relation>,
    pub route: Arc<TableRoute>,
    pub target: Arc<QualifiedName>,
    /// (relation column index, target column name) for every carried column.
    pub columns: Vec<(usize, String)>,
    /// Relation column indexes of the row's key on the target.
    pub key: Vec<usize>,
    /// The key's target column names, to name the row in errors.
    pub key_names: Arc<[String]>,
    /// For each column of the route's source table, its index in the
    /// relation: the filter reads source columns by table position.
    pub filter_columns: Vec<Option<usize>>,
    pub insert: Statement,
    /// Insert or update by key, for rows that move into a filter (only
    /// prepared when the table has one: it needs a unique key on the target).
    pub upsert: Option<Statement>,
    pub delete: Statement,
    /// Update statements by the set of columns present (unchanged TOAST
    /// columns are left out of SET, so the target keeps its value).
    pub updates: HashMap<Vec<bool>, Statement>,
    /// How rows are batched, when the table allows it (see `batch`).
    pub batch: Option<BatchPlan>,
    /// Whether runs of inserts may go as COPY (see [`batch::TableTraits`]).
    pub copyable: bool,
    /// Whether a trigger may skip an update (see [`batch::TableTraits`]).
    pub skips_updates: bool,
    /// The SQL prepared statements for one row of each kind of batch, by
    /// name, once prepared (see `inline`); `None` when the target refused
    /// to prepare one, and that kind of row always goes as a parameter.
    pub inline: HashMap<batch::BatchKind, Option<String>>,
}

/// The batched statements of a table whose changes may be gathered.
pub struct BatchPlan {
    pub shape: BatchShape,
    pub insert: Statement,
    /// Update statements by the columns assigned (plan positions).
    pub updates: HashMap<Vec<usize>, Statement>,
    /// Plan positions of the key columns.
    pub key: Vec<usize>,
}

impl BatchPlan {
    /// The array delimiters of a batch's parameters, in order.
    pub fn delims(&self, kind: &batch::BatchKind) -> Vec<u8> {
        match kind {
            batch::BatchKind::Insert => self.shape.types.iter().map(|(_, d)| *d).collect(),
            batch::BatchKind::Update(set) => {
                set.iter().chain(&self.key).map(|&i| self.shape.types[i].1).collect()
            }
        }
    }
}

impl RelationPlan {
    /// Works out how a relation's rows land in the route's target table and
    /// prepares the statements for it.
    pub async fn build(
        client: &Client,
        relation: &Arc<Relation>,
        route: &Arc<TableRoute>,
    ) -> Result<RelationPlan, ApplyError> {
        let target = Arc::new(route.mapping.to.clone());
        let columns: Vec<(usize, String)> = relation
            .columns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| route.carried_as(&c.name).map(|t| (i, t.to_string())))
            .collect();
        let key = key_columns(relation, route)?;
        let key_names: Arc<[String]> = key.iter().map(|&k| target_name(&columns, k).to_string()).collect();
        let filter_columns = route
            .source_columns
            .iter()
            .map(|s| relation.columns.iter().position(|c| c.name == s.name))
            .collect();
        let statements = Statements { client, target: &target, columns: &columns, key_names: &key_names };
        let names: Vec<String> = columns.iter().map(|(_, n)| n.clone()).collect();
        let traits = batch::traits(client, &target).await?;
        let batch = match route.filter {
            // Filtered tables move rows in and out with upserts and
            // deletes, and may read the target's copy of a row: in order.
            Some(_) => None,
            None => match batch::shape(client, &target, &names, traits).await? {
                Some(shape) => Some(BatchPlan {
                    insert: batch::prepare_insert(client, &target, &names, &shape).await?,
                    shape,
                    updates: HashMap::new(),
                    key: key.iter().filter_map(|k| columns.iter().position(|(i, _)| i == k)).collect(),
                }),
                None => None,
            },
        };
        Ok(RelationPlan {
            batch,
            copyable: traits.copyable,
            skips_updates: traits.skips_updates,
            insert: statements.insert(false).await?,
            upsert: match route.filter {
                Some(_) => Some(statements.insert(true).await?),
                None => None,
            },
            delete: statements.delete().await?,
            relation: Arc::clone(relation),
            route: Arc::clone(route),
            target,
            columns,
            key,
            key_names,
            filter_columns,
            updates: HashMap::new(),
            inline: HashMap::new(),
        })
    }

    /// The update statement for this set of present columns, prepared on
    /// first use. With none to assign (every carried column but an
    /// unchanged key came as unchanged TOAST), a column the source left as
    /// it was is assigned itself: the update still happens, as on the
    /// source, for the target's triggers. A route that carries only the key
    /// has none such (and a `GENERATED ALWAYS` key cannot be assigned
    /// itself): its statement only finds the row, which must be there like
    /// any updated row.
    pub async fn update_statement(
        &mut self,
        client: &Client,
        present: &[bool],
    ) -> Result<Statement, ApplyError> {
        if let Some(statement) = self.updates.get(present) {
            return Ok(statement.clone());
        }
        let mut assignments: Vec<String> = self
            .columns
            .iter()
            .zip(present)
            .filter(|(_, present)| **present)
            .enumerate()
            .map(|(n, ((_, name), _))| format!("{} = ${}", quote_ident(name), n + 1))
            .collect();
        let key = key_condition(&self.key_names, assignments.len() + 1);
        if assignments.is_empty()
            && let Some((_, name)) = self.columns.iter().find(|(i, _)| !self.key.contains(i))
        {
            assignments.push(format!("{0} = {0}", quote_ident(name)));
        }
        let update = format!("UPDATE {} SET {} WHERE {key}", self.target, assignments.join(", "));
        let found = format!("SELECT FROM {} WHERE {key}", self.target);
        let sql = if assignments.is_empty() {
            found
        } else if self.skips_updates {
            // Counts the row as found by the statement's snapshot, taken
            // before the update, whether a trigger skipped it or not.
            format!("WITH updated AS ({update}) {found}")
        } else {
            update
        };
        let statement = client
            .prepare(&sql)
            .await
            .map_err(target_error(format!("preparing update of {}", self.target)))?;
        self.updates.insert(present.to_vec(), statement.clone());
        Ok(statement)
    }
}

fn target_name(columns: &[(usize, String)], index: usize) -> &str {
    columns.iter().find(|(i, _)| *i == index).map_or("?", |(_, name)| name.as_str())
}

/// Builds and prepares the statements of one plan.
struct Statements<'a> {
    client: &'a Client,
    target: &'a QualifiedName,
    columns: &'a [(usize, String)],
    key_names: &'a [String],
}

impl Statements<'_> {
    async fn insert(&self, upsert: bool) -> Result<Statement, ApplyError> {
        let names: Vec<String> = self.columns.iter().map(|(_, n)| quote_ident(n)).collect();
        let placeholders: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
        let mut sql = format!(
            "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE VALUES ({})",
            self.target,
            names.join(", "),
            placeholders.join(", ")
        );
        if upsert {
            let keys: Vec<String> = self.key_names.iter().map(|k| quote_ident(k)).collect();
            let updates: Vec<String> = self
                .columns
                .iter()
                .filter(|(_, n)| !self.key_names.contains(n))
                .map(|(_, n)| format!("{0} = EXCLUDED.{0}", quote_ident(n)))
                .collect();
            let action = if updates.is_empty() {
                "DO NOTHING".to_string()
            } else {
                format!("DO UPDATE SET {}", updates.join(", "))
            };
            sql.push_str(&format!(" ON CONFLICT ({}) {action}", keys.join(", ")));
        }
        self.client
            .prepare(&sql)
            .await
            .map_err(target_error(format!("preparing insert into {}", self.target)))
    }

    async fn delete(&self) -> Result<Statement, ApplyError> {
        let sql = format!("DELETE FROM {} WHERE {}", self.target, key_condition(self.key_names, 1));
        self.client
            .prepare(&sql)
            .await
            .map_err(target_error(format!("preparing delete from {}", self.target)))
    }
}

/// The relation columns that identify a row on the target: the relation's
/// replica identity (its primary key or the index it names), or the
/// target's primary key when the identity is the whole row (comparing every
/// column would fail for types without equality, like json).
fn key_columns(relation: &Relation, route: &TableRoute) -> Result<Vec<usize>, ApplyError> {
    let source = &route.mapping.from;
    let carried = |i: usize| route.carried_as(&relation.columns[i].name);
    if relation.replica_identity == ReplicaIdentity::Full {
        return route
            .target_columns
            .iter()
            .filter(|c| c.is_key)
            .map(|target_key| {
                (0..relation.columns.len())
                    .find(|&i| carried(i) == Some(target_key.name.as_str()))
                    .ok_or_else(|| ApplyError::KeyNotSent {
                        source_table: source.clone(),
                        target: route.mapping.to.clone(),
                        column: target_key.name.clone(),
                    })
            })
            .collect();
    }
    let key: Vec<usize> =
        relation.columns.iter().enumerate().filter(|(_, c)| c.is_key).map(|(i, _)| i).collect();
    if key.is_empty() {
        return Err(ApplyError::NoKey { table: source.clone(), what: "a table description" });
    }
    if let Some(&missing) = key.iter().find(|&&i| carried(i).is_none()) {
        return Err(ApplyError::KeyColumnMissing {
            source_table: source.clone(),
            target: route.mapping.to.clone(),
            column: relation.columns[missing].name.clone(),
        });
    }
    Ok(key)
}

/// `"id" = $n AND "region" = $n+1 ...` over the key's target columns.
pub fn key_condition(key_names: &[String], first: usize) -> String {
    key_names
        .iter()
        .enumerate()
        .map(|(n, name)| format!("{} = ${}", quote_ident(name), first + n))
        .collect::<Vec<_>>()
        .join(" AND ")
}
