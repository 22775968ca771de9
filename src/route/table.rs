//! One table of a subscription, resolved against both databases: which
//! source columns travel, under which target names, which rows (the `where`
//! filter) and which kinds of change.

use tokio_postgres::Client;

use crate::apply::{ApplyError, TargetTable};
use crate::config::{ColumnSelection, TableMapping};
use crate::pg::catalog::Column;
use crate::pg::names::{QualifiedName, quote_ident, quote_ident_if_needed};
use crate::route::filter::{ColumnType, Filter};
use crate::route::renamed;
use crate::route::types::{TypeFit, type_fit};
use crate::source::catalog::{self as source_catalog, CatalogError};

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(
        "table {table}: column {column:?} is configured but the source table has no such column; add it there, \
         or remove it from the table's settings"
    )]
    UnknownColumn { table: QualifiedName, column: String },
    #[error(
        "table {table}: key column {column:?} must be carried (it identifies rows on the target); do not exclude it"
    )]
    KeyExcluded { table: QualifiedName, column: String },
    #[error(
        "table {}: column {:?} is replicated into column {:?}, which target table {} lacks; add it there \
         (ALTER TABLE {3} ADD COLUMN {} {type_name}), or {leave_out}",
        .pair.table, .pair.column, .pair.target_column, .pair.target, quote_ident_if_needed(&.pair.target_column)
    )]
    MissingTargetColumn { pair: Box<ColumnPair>, type_name: String, leave_out: String },
    #[error(
        "table {}: column {:?} was dropped (or renamed) on the source while replicated into column {:?} of {}; \
         {remedy}",
        .pair.table, .pair.column, .pair.target_column, .pair.target
    )]
    DroppedOnSource { pair: Box<ColumnPair>, remedy: String },
    #[error(
        "table {}: column {:?} is {source_type} on the source but {target_type} in target table {} (column {:?}), \
         and no {source_type} value is valid {target_type} input; change the target column's type \
         (ALTER TABLE {2} ALTER COLUMN {} TYPE {source_type}), or {leave_out}",
        .pair.table, .pair.column, .pair.target, .pair.target_column, quote_ident_if_needed(&.pair.target_column)
    )]
    IncompatibleType { pair: Box<ColumnPair>, source_type: String, target_type: String, leave_out: String },
    #[error(
        "table {}: column {:?} is {source_type} on the source but {target_type} in target table {} (column {:?}): \
         {loss}, so the replica would differ without an error; change the target column's type \
         (ALTER TABLE {2} ALTER COLUMN {} TYPE {source_type}), or {leave_out}",
        .pair.table, .pair.column, .pair.target, .pair.target_column, quote_ident_if_needed(&.pair.target_column)
    )]
    LossyType {
        pair: Box<ColumnPair>,
        source_type: String,
        target_type: String,
        loss: &'static str,
        leave_out: String,
    },
    #[error(
        "table {table}: columns {:?} and {:?} would both be replicated into column {target_column:?}; \
         rename or leave out one of them",
        .sources.0, .sources.1
    )]
    SameTargetColumn { table: QualifiedName, target_column: String, sources: Box<(String, String)> },
    #[error(
        "table {table}: column {column:?} of changes from before the start is left out of them, as no column \
         of the table now is surely it (columns were renamed, dropped or added again while ferry was \
         stopped), and {why}. To go past those changes: remove the table from the subscription and restart \
         ferry, which skips them; then empty the target table and add the table back, so that it is copied \
         anew"
    )]
    LeftOutNeeded { table: QualifiedName, column: String, why: &'static str },
    #[error(
        "table {table}: the filter reads column {column:?}, which changes from before the start lack: it was \
         added to the table since (while ferry was stopped or behind), and the filter cannot say which of \
         them to keep. To go past those changes: remove the table from the subscription and restart ferry, \
         which skips them; then empty the target table and add the table back, so that it is copied anew"
    )]
    AddedSinceNeeded { table: QualifiedName, column: String },
    #[error("table {table}: {error}")]
    Filter { table: QualifiedName, error: String },
    #[error(
        "table {table}: a row that comes into the `where` filter is inserted or updated by the columns \
         that identify it on the source ({}), and target table {target} has no unique index on exactly \
         those; create one (CREATE UNIQUE INDEX ON {target} ({})) or make them its primary key",
        .columns.join(", "), .columns.join(", ")
    )]
    NoUpsertKey { table: QualifiedName, target: Box<QualifiedName>, columns: Vec<String> },
    #[error(
        "table {table}: the filter reads column {column:?}, which is not carried and can be TOASTed: an update \
         that leaves it alone would not send it. Carry the column, or set REPLICA IDENTITY FULL on the source table"
    )]
    FilterNeedsUncarriedColumn { table: QualifiedName, column: String },
    #[error(
        "table {table}: target column {column:?} of {target} is GENERATED ALWAYS AS IDENTITY, which refuses \
         the updates ferry applies to it (only DEFAULT may be assigned); run ALTER TABLE {target} ALTER COLUMN \
         {} SET GENERATED BY DEFAULT on the target (its sequence stays), or leave the column out of the \
         table's `columns`", quote_ident(.column)
    )]
    GeneratedAlways { table: QualifiedName, target: Box<QualifiedName>, column: String },
}

/// A source column and the target column it is replicated into, which no
/// longer agree.
#[derive(Debug)]
pub struct ColumnPair {
    pub table: QualifiedName,
    pub column: String,
    pub target: QualifiedName,
    pub target_column: String,
}

impl ColumnPair {
    pub fn new(mapping: &TableMapping, column: &str) -> Box<ColumnPair> {
        Box::new(ColumnPair {
            table: mapping.from.clone(),
            column: column.to_string(),
            target: mapping.to.clone(),
            target_column: mapping.target_column(column).to_string(),
        })
    }
}

/// Why a table cannot be routed: its configuration does not fit the
/// tables, or a database could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Source(#[from] CatalogError),
    #[error(transparent)]
    Target(#[from] ApplyError),
}

/// A configured table with everything resolved.
#[derive(Debug)]
pub struct TableRoute {
    pub mapping: TableMapping,
    /// The target table's columns, in table order.
    pub target_columns: Vec<Column>,
    /// The source table's columns, in table order; the filter's column
    /// indexes point into this list.
    pub source_columns: Vec<Column>,
    pub filter: Option<Filter>,
    /// Whether the source sends whole old rows (REPLICA IDENTITY FULL),
    /// which the filter's columns were checked against.
    pub full_identity: bool,
}

impl TableRoute {
    /// Reads both tables' catalogs and resolves the mapping against them.
    pub async fn load(
        mapping: &TableMapping,
        source: &Client,
        target: &Client,
    ) -> Result<TableRoute, LoadError> {
        let source_table = source_catalog::source_table(source, &mapping.from).await?;
        let identity = source_table.identity;
        let target_table = TargetTable::load(target, &mapping.to).await?;
        let route = TableRoute::checked(
            mapping,
            source_table.columns,
            target_table.columns.clone(),
            identity.is_full(),
        )?;
        route.check_writes(identity.columns(), &target_table)?;
        Ok(route)
    }

    /// [`TableRoute::resolve`], and every carried column's type fits its
    /// target column's: what a pipeline needs to run.
    pub fn checked(
        mapping: &TableMapping,
        source_columns: Vec<Column>,
        target_columns: Vec<Column>,
        full_identity: bool,
    ) -> Result<TableRoute, RouteError> {
        let route = TableRoute::resolve(mapping, source_columns, target_columns, full_identity)?;
        let refused = route
            .type_differences()
            .find_map(|(source, target, fit)| route.refused_type(source, target, fit));
        match refused {
            Some(error) => Err(error),
            None => Ok(route),
        }
    }

    /// Checks the mapping against the two tables' columns and compiles the
    /// filter. `full_identity` says whether the source sends whole old rows.
    pub fn resolve(
        mapping: &TableMapping,
        source_columns: Vec<Column>,
        target_columns: Vec<Column>,
        full_identity: bool,
    ) -> Result<TableRoute, RouteError> {
        let table = &mapping.from;
        let filter = match &mapping.filter {
            None => None,
            Some(text) => {
                // A left-out column keeps its own name here, so that a
                // filter reading it is told apart from one naming no column.
                let types: Vec<ColumnType> = source_columns
                    .iter()
                    .map(|c| ColumnType {
                        name: settings_name(c, &source_columns).to_string(),
                        type_name: c.type_name.clone(),
                    })
                    .collect();
                let filter = Filter::compile(text, &types)
                    .map_err(|e| RouteError::Filter { table: table.clone(), error: e.to_string() })?;
                Some(filter)
            }
        };
        check_left_out(mapping, &source_columns, filter.as_ref())?;
        let has_source =
            |name: &str| source_columns.iter().any(|c| settings_name(c, &source_columns) == name);
        for name in mapping.columns.named().iter().chain(mapping.rename.keys()) {
            if !has_source(name) {
                return Err(RouteError::UnknownColumn { table: table.clone(), column: name.clone() });
            }
        }
        for key in source_columns.iter().filter(|c| c.is_key) {
            if !mapping.columns.includes(&key.name) {
                return Err(RouteError::KeyExcluded { table: table.clone(), column: key.name.clone() });
            }
        }
        // Columns the user chose explicitly, or renamed, must land somewhere.
        for column in source_columns.iter().filter(|c| mapping.columns.includes(&c.name)) {
            let target_column = mapping.target_column(&column.name);
            let must_exist = mapping.names(&column.name) || column.is_key;
            if must_exist && !target_columns.iter().any(|c| c.name == target_column) {
                return Err(missing_target_column(mapping, column));
            }
        }
        let mut targets: std::collections::BTreeMap<&str, &str> = std::collections::BTreeMap::new();
        for column in source_columns.iter().filter(|c| mapping.columns.includes(&c.name)) {
            if let Some(first) = targets.insert(mapping.target_column(&column.name), &column.name) {
                return Err(RouteError::SameTargetColumn {
                    table: table.clone(),
                    target_column: mapping.target_column(&column.name).to_string(),
                    sources: Box::new((first.to_string(), column.name.clone())),
                });
            }
        }
        let route =
            TableRoute { mapping: mapping.clone(), target_columns, source_columns, filter, full_identity };
        route.check_filter_columns()?;
        Ok(route)
    }

    /// Checks that the target table takes the writes this route makes:
    /// see [`TableRoute::check_upsert_key`] and
    /// [`TableRoute::check_assignable`]. `identity` is the source's replica
    /// identity.
    pub fn check_writes(&self, identity: &[String], target: &TargetTable) -> Result<(), RouteError> {
        self.check_upsert_key(identity, &target.unique_keys)?;
        self.check_assignable(identity, target)
    }

    /// An update (and the upsert of a table with a filter) assigns every
    /// carried column but an unchanged key (the target columns of the
    /// source's replica identity; under FULL, the target's primary key),
    /// and PostgreSQL lets a `GENERATED ALWAYS` identity column be assigned
    /// only DEFAULT. Left out of the assignment, a value the source changed
    /// would be lost without a trace, so such a column is refused at once.
    fn check_assignable(&self, identity: &[String], target: &TargetTable) -> Result<(), RouteError> {
        if !self.mapping.operations.update && self.filter.is_none() {
            return Ok(());
        }
        let key: Vec<&str> = if self.full_identity {
            target.key_columns().map(|c| c.name.as_str()).collect()
        } else {
            identity.iter().filter_map(|c| self.carried_as(c)).collect()
        };
        let refused = self
            .carried()
            .map(|(_, column)| column)
            .find(|column| target.generated_always.iter().any(|c| c == column) && !key.contains(column));
        match refused {
            Some(column) => Err(RouteError::GeneratedAlways {
                table: self.mapping.from.clone(),
                target: Box::new(self.mapping.to.clone()),
                column: column.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// A table with a filter inserts or updates a row that comes into it
    /// with `ON CONFLICT` over the target columns of the source columns
    /// that identify it (`identity`, its replica identity; under FULL the
    /// target's primary key itself), which needs a unique index on
    /// exactly those columns, checked at once (`unique_keys`: the
    /// target's, each sorted).
    fn check_upsert_key(&self, identity: &[String], unique_keys: &[Vec<String>]) -> Result<(), RouteError> {
        if self.filter.is_none() || self.full_identity {
            return Ok(());
        }
        let mut key: Vec<String> =
            identity.iter().filter_map(|c| self.carried_as(c).map(str::to_string)).collect();
        key.sort();
        if unique_keys.contains(&key) {
            return Ok(());
        }
        Err(RouteError::NoUpsertKey {
            table: self.mapping.from.clone(),
            target: Box::new(self.mapping.to.clone()),
            columns: key.iter().map(|c| quote_ident(c)).collect(),
        })
    }

    /// `ferry validate`'s warning for a filtered table whose updates may
    /// move a row into the filter without all its values: the carried
    /// columns an update may leave out (unchanged TOAST values, which only
    /// REPLICA IDENTITY FULL resends) cannot be filled in for a row the
    /// target lacks, and the pipeline stops at such an update. Values over
    /// about 2 kB are stored so; most tables never hold one.
    pub fn move_in_warning(&self) -> Option<String> {
        if self.filter.is_none() || !self.mapping.operations.update || self.full_identity {
            return None;
        }
        let toastable: Vec<_> = self
            .carried()
            .filter_map(|(source, _)| self.source_columns.iter().find(|c| c.name == source))
            .filter(|c| c.toastable)
            .map(|c| quote_ident_if_needed(&c.name))
            .collect();
        (!toastable.is_empty()).then(|| {
            format!(
                "an update moving a row into the `where` filter stops the pipeline if {} holds a value over \
                 about 2 kB that the update leaves unchanged (the server does not resend it, and the target \
                 lacks the row); ALTER TABLE {} REPLICA IDENTITY FULL on the source makes it resend every value",
                toastable.join(" or "),
                self.mapping.from
            )
        })
    }

    /// A filter column that is not carried cannot be looked up on the
    /// target when an update leaves it out, so it must never be left out.
    fn check_filter_columns(&self) -> Result<(), RouteError> {
        let Some(filter) = &self.filter else { return Ok(()) };
        for &index in filter.columns_used() {
            let column = &self.source_columns[index];
            if column.toastable && !self.full_identity && self.carried_as(&column.name).is_none() {
                return Err(RouteError::FilterNeedsUncarriedColumn {
                    table: self.mapping.from.clone(),
                    column: column.name.clone(),
                });
            }
        }
        Ok(())
    }

    /// Carried columns whose types differ, as (source, target, how well
    /// they fit), in source order.
    pub fn type_differences(&self) -> impl Iterator<Item = (&Column, &Column, TypeFit)> {
        self.carried().filter_map(|(source, target)| {
            let source = self.source_columns.iter().find(|c| c.name == source)?;
            let target = self.target_columns.iter().find(|c| c.name == target)?;
            let fit = type_fit(source, target);
            (fit != TypeFit::Same).then_some((source, target, fit))
        })
    }

    /// The error for a carried column whose values cannot land in `target`
    /// (`fit` is incompatible) or would land changed (lossy); `None` when
    /// they may land as they are.
    pub fn refused_type(&self, source: &Column, target: &Column, fit: TypeFit) -> Option<RouteError> {
        let pair = ColumnPair::new(&self.mapping, &source.name);
        let (source_type, target_type) = (source.type_name.clone(), target.type_name.clone());
        let leave_out = leave_out(&self.mapping, &source.name);
        match fit {
            TypeFit::Incompatible => {
                Some(RouteError::IncompatibleType { pair, source_type, target_type, leave_out })
            }
            TypeFit::Lossy(loss) => {
                Some(RouteError::LossyType { pair, source_type, target_type, loss, leave_out })
            }
            TypeFit::Same | TypeFit::MayFail => None,
        }
    }

    /// The target column a source column lands in, if it is carried.
    pub fn carried_as(&self, source_column: &str) -> Option<&str> {
        if !self.mapping.columns.includes(source_column) {
            return None;
        }
        let target = self.mapping.target_column(source_column);
        self.target_columns.iter().find(|c| c.name == target).map(|c| c.name.as_str())
    }

    /// The carried source columns (source name, target name), in source order.
    pub fn carried(&self) -> impl Iterator<Item = (&str, &str)> {
        self.source_columns.iter().filter_map(|c| self.carried_as(&c.name).map(|t| (c.name.as_str(), t)))
    }

    /// Whether the copy may move rows in COPY's binary format, which spares
    /// both servers turning values into text and back: only when every
    /// carried column has the same built-in type on both sides (a binary
    /// value is read as exactly the type it was written as, and user types'
    /// oids differ between databases).
    pub fn binary_copy_safe(&self) -> bool {
        /// The first oid a database gives its own objects.
        const FIRST_NORMAL_OID: u32 = 16384;
        /// Built-in types whose binary value means something else in
        /// another database, or nothing: the object references (`regclass`
        /// and the other `reg*` types, and their arrays), sent as raw oids;
        /// `money` and `money[]`, an integer of the smallest unit of each
        /// server's `lc_monetary` currency (as text, servers that differ
        /// there refuse each other's values instead of rescaling them); and
        /// `aclitem`, which has no binary form.
        const NOT_PORTABLE: [u32; 26] = [
            24, 790, 791, 1008, 1033, 1034, 2202, 2203, 2204, 2205, 2206, 2207, 2208, 2209, 2210, 2211, 3734,
            3735, 3769, 3770, 4089, 4090, 4096, 4097, 4191, 4192,
        ];
        self.carried().all(|(source, target)| {
            let source = self.source_columns.iter().find(|c| c.name == source);
            let target = self.target_columns.iter().find(|c| c.name == target);
            matches!((source, target), (Some(s), Some(t))
                if s.type_oid == t.type_oid && s.type_oid < FIRST_NORMAL_OID && !NOT_PORTABLE.contains(&s.type_oid))
        })
    }

    /// Source columns that are neither carried nor excluded on purpose:
    /// the target lacks them (logged, so nobody wonders where they went).
    pub fn dropped_for_lack_of_target(&self) -> impl Iterator<Item = &str> {
        self.source_columns
            .iter()
            .filter(|c| self.mapping.columns.includes(&c.name) && self.carried_as(&c.name).is_none())
            .map(|c| c.name.as_str())
    }
}

/// The name the table's settings and filter know a column of the
/// description by. A column left out of changes from before the start (see
/// [`renamed::left_out`]) goes by its own, unless another column of the
/// description has that name now (dropped, and another renamed to it): the
/// settings mean that one.
pub(super) fn settings_name<'c>(column: &'c Column, source_columns: &[Column]) -> &'c str {
    match renamed::was_left_out(&column.name) {
        Some(own) if !source_columns.iter().any(|c| c.name == own) => own,
        _ => &column.name,
    }
}

/// Refuses a column left out of changes from before the start (see
/// [`renamed::left_out`]) that the route cannot do without: the key, a
/// column the table's settings name, or one its filter reads.
fn check_left_out(
    mapping: &TableMapping,
    source_columns: &[Column],
    filter: Option<&Filter>,
) -> Result<(), RouteError> {
    for (index, column) in source_columns.iter().enumerate() {
        let Some(own) = renamed::was_left_out(&column.name) else { continue };
        let name = settings_name(column, source_columns);
        let why = if column.is_key {
            "it identifies rows on the target (a key column)"
        } else if mapping.names(name) {
            "the table's settings name it"
        } else if filter.is_some_and(|f| f.columns_used().contains(&index)) {
            "the table's filter reads it"
        } else {
            continue;
        };
        return Err(RouteError::LeftOutNeeded { table: mapping.from.clone(), column: own.to_string(), why });
    }
    Ok(())
}

/// The error for a carried source column whose target column is missing.
pub(super) fn missing_target_column(mapping: &TableMapping, column: &Column) -> RouteError {
    RouteError::MissingTargetColumn {
        pair: ColumnPair::new(mapping, &column.name),
        type_name: column.type_name.clone(),
        leave_out: leave_out(mapping, &column.name),
    }
}

/// How to stop carrying a source column, in the config's words.
pub(super) fn leave_out(mapping: &TableMapping, column: &str) -> String {
    match &mapping.columns {
        ColumnSelection::Only(_) => format!("remove {column:?} from the table's `columns`"),
        ColumnSelection::All | ColumnSelection::Except(_) => {
            format!("leave it out of the subscription (add {column:?} to the table's `exclude`)")
        }
    }
}
