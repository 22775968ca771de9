//! A source table changing under a running pipeline. The server describes
//! a table anew (a Relation message) before the first change after DDL, so
//! the route is worked out again from that description and from the target
//! table as it is then: once per description, never per row.
//!
//! What a route carries must stay carried the same way. A carried column
//! dropped on the source, missing on the target, or retyped on the source
//! to a type its target column cannot take, stops the pipeline: carrying on
//! would leave the target column empty or fail row by row, and which one is
//! right is the operator's call (nothing is dropped silently). Anything
//! else is followed: a column added on the source is carried when the table
//! takes it and the target has it, and left out otherwise, as at start.

use std::collections::HashMap;

use super::RouteError;
use super::renamed;
use super::table::{ColumnPair, TableRoute, missing_target_column, settings_name};
use super::types::{TypeFit, may_fail_warning, type_fit};
use crate::config::ColumnSelection;
use crate::pg::catalog::{Column, TypeDescription};
use crate::pg::names::quote_ident_if_needed;
use crate::pg::pgoutput::{Relation, RelationColumn, ReplicaIdentity};

/// What a new description of a table changed, for one log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeNote {
    /// Something the table selects is not replicated, or may fail.
    pub warn: bool,
    pub text: String,
}

fn same_column(relation: &RelationColumn, column: &Column) -> bool {
    relation.name == column.name
        && relation.type_oid == column.type_oid
        && relation.type_modifier == column.type_modifier
}

impl TableRoute {
    /// Whether a Relation message describes the source table as this route
    /// knows it (same columns and types, and whether old rows come whole):
    /// then the route still holds and nothing needs reading again. The
    /// server describes every table anew after each reconnect; this is the
    /// usual answer then.
    pub fn describes(&self, relation: &Relation) -> bool {
        (relation.replica_identity == ReplicaIdentity::Full) == self.full_identity
            && relation.columns.len() == self.source_columns.len()
            && relation.columns.iter().zip(&self.source_columns).all(|(r, c)| same_column(r, c))
    }

    /// The column types of `relation` this route does not know (added or
    /// retyped columns), as (oid, modifier), to be looked up on the source.
    pub fn unknown_types(&self, relation: &Relation) -> Vec<(u32, i32)> {
        relation
            .columns
            .iter()
            .filter(|r| self.known(r).is_none())
            .map(|r| (r.type_oid, r.type_modifier))
            .collect()
    }

    fn known(&self, column: &RelationColumn) -> Option<&Column> {
        self.source_columns.iter().find(|c| same_column(column, c))
    }

    /// The source table's columns as `relation` describes them: the ones
    /// this route knows as it has them, the others with their types from
    /// `types` (which must name every type [`TableRoute::unknown_types`]
    /// listed).
    pub fn relation_columns(
        &self,
        relation: &Relation,
        types: &HashMap<(u32, i32), TypeDescription>,
    ) -> Vec<Column> {
        relation
            .columns
            .iter()
            .map(|r| match self.known(r) {
                Some(column) => column.clone(),
                None => {
                    let described = &types[&(r.type_oid, r.type_modifier)];
                    Column {
                        name: r.name.clone(),
                        type_name: described.type_name.clone(),
                        type_oid: r.type_oid,
                        type_modifier: r.type_modifier,
                        base_type: described.base_type,
                        category: described.category,
                        // Under REPLICA IDENTITY FULL every column is flagged.
                        is_key: r.is_key && relation.replica_identity != ReplicaIdentity::Full,
                        toastable: described.toastable,
                    }
                }
            })
            .collect()
    }

    /// The route for the source table as it is now (`source_columns`, from
    /// a Relation message) into the target table as it is now. Every column
    /// this route carries must still be carried the same way.
    pub fn follow(
        &self,
        source_columns: Vec<Column>,
        target_columns: Vec<Column>,
        full_identity: bool,
    ) -> Result<TableRoute, RouteError> {
        self.check_source(&source_columns)?;
        self.check_target(&target_columns)?;
        TableRoute::checked(&self.mapping, source_columns, target_columns, full_identity)
    }

    /// The route for a description from before the catalogs were read at
    /// start (a resumed pipeline reads older WAL), checked as at start but
    /// for the columns added since: the table's `columns`, `exclude` and
    /// `rename` may name those (the older changes just lack them), but its
    /// filter cannot read them, and stops with the way past. The route
    /// keeps this one's settings, for the descriptions after the addition.
    pub fn for_older(
        &self,
        source_columns: Vec<Column>,
        target_columns: Vec<Column>,
        full_identity: bool,
    ) -> Result<TableRoute, RouteError> {
        let lacks = |name: &str| !source_columns.iter().any(|c| settings_name(c, &source_columns) == name);
        let read_by_filter =
            self.filter.iter().flat_map(|f| f.columns_used()).map(|&i| &self.source_columns[i].name);
        if let Some(column) = read_by_filter.into_iter().find(|name| lacks(name)) {
            return Err(RouteError::AddedSinceNeeded {
                table: self.mapping.from.clone(),
                column: column.clone(),
            });
        }
        let mut mapping = self.mapping.clone();
        if let ColumnSelection::Only(list) | ColumnSelection::Except(list) = &mut mapping.columns {
            list.retain(|name| !lacks(name));
        }
        mapping.rename.retain(|name, _| !lacks(name));
        let mut route = TableRoute::checked(&mapping, source_columns, target_columns, full_identity)?;
        route.mapping = self.mapping.clone();
        Ok(route)
    }

    /// Every carried column is still in the source table.
    fn check_source(&self, source_columns: &[Column]) -> Result<(), RouteError> {
        match self.carried().find(|(source, _)| !source_columns.iter().any(|c| c.name == *source)) {
            Some((column, target_column)) => Err(RouteError::DroppedOnSource {
                pair: ColumnPair::new(&self.mapping, column),
                remedy: self.drop_remedy(column, target_column),
            }),
            None => Ok(()),
        }
    }

    /// Every carried column still has its column in the target table.
    pub fn check_target(&self, target_columns: &[Column]) -> Result<(), RouteError> {
        let gone = self.carried().find(|(_, target)| !target_columns.iter().any(|c| c.name == *target));
        match gone.and_then(|(source, _)| self.source_columns.iter().find(|c| c.name == source)) {
            Some(column) => Err(missing_target_column(&self.mapping, column)),
            None => Ok(()),
        }
    }

    /// What to do about a carried column dropped on the source. A column
    /// the config names must leave the config (it would not load any more);
    /// otherwise the target column must stop expecting values by name.
    fn drop_remedy(&self, column: &str, target_column: &str) -> String {
        let listed = self.mapping.columns.lists(column);
        let renamed = self.mapping.rename.contains_key(column);
        let settings = match (listed, renamed) {
            (true, true) => "`columns` and `rename`",
            (true, false) => "`columns`",
            (false, true) => "`rename`",
            (false, false) => {
                return format!(
                    "drop column {target_column:?} of {} too, or rename it there to keep its values",
                    self.mapping.to
                );
            }
        };
        format!("remove {column:?} from the table's {settings}")
    }
}

/// What changed from `old` to `new` in one line, or nothing when no column
/// did (a new description may only change the replica identity).
pub fn change_note(old: &TableRoute, new: &TableRoute) -> Option<ChangeNote> {
    let mut warn = false;
    let mut notes = Vec::new();
    for column in &new.source_columns {
        let name = quote_ident_if_needed(&column.name);
        let before = old.source_columns.iter().find(|c| c.name == column.name);
        let carried = new.carried_as(&column.name);
        let was_carried = before.is_some() && old.carried_as(&column.name).is_some();
        let retyped = before.filter(|b| b.type_name != column.type_name);
        if before.is_none() || (was_carried != carried.is_some()) {
            let (note, unwanted) = carried_note(new, column, carried);
            warn |= unwanted;
            let what = if before.is_none() { "added" } else { "now" };
            notes.push(format!("{name} {what}: {note}"));
        }
        if let Some(before) = retyped {
            notes.push(format!("{name} is now {} (was {})", column.type_name, before.type_name));
            if let Some(target) = carried.and_then(|t| new.target_columns.iter().find(|c| c.name == t))
                && type_fit(column, target) == TypeFit::MayFail
            {
                warn = true;
                notes.push(may_fail_warning(column, target));
            }
        }
    }
    for column in old.source_columns.iter().filter(|c| !new.source_columns.iter().any(|n| n.name == c.name)) {
        let was = if old.carried_as(&column.name).is_some() { "was" } else { "was not" };
        notes.push(format!("{} dropped (it {was} replicated)", quote_ident_if_needed(&column.name)));
    }
    (!notes.is_empty()).then(|| ChangeNote { warn, text: notes.join("; ") })
}

/// Whether and where a column is replicated (`replicated into x`, `not
/// replicated (why)`); `true` when the table selects it but the target has
/// nowhere to put it.
fn carried_note(route: &TableRoute, column: &Column, carried: Option<&str>) -> (String, bool) {
    match carried {
        Some(target) => (format!("replicated into {}", quote_ident_if_needed(target)), false),
        None if renamed::was_left_out(&column.name).is_some() => ("not replicated".into(), false),
        None if !route.mapping.columns.includes(&column.name) => {
            ("not replicated (the table's columns leave it out)".into(), false)
        }
        None => (
            format!(
                "not replicated (target table {} has no column {}; added there, it is filled from the next start or \
                 change of the source table's columns on)",
                route.mapping.to,
                quote_ident_if_needed(route.mapping.target_column(&column.name))
            ),
            true,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ColumnSelection, TableMapping};
    use crate::pg::names::QualifiedName;

    fn column(name: &str, type_name: &str, type_oid: u32, category: char) -> Column {
        Column {
            name: name.into(),
            type_name: type_name.into(),
            type_oid,
            type_modifier: -1,
            base_type: (type_oid, -1),
            category,
            is_key: name == "id",
            toastable: false,
        }
    }

    fn id() -> Column {
        column("id", "integer", 23, 'N')
    }

    fn qty() -> Column {
        column("qty", "integer", 23, 'N')
    }

    fn route(columns: ColumnSelection, source: Vec<Column>, target: Vec<Column>) -> TableRoute {
        let mut mapping =
            TableMapping::new(QualifiedName::new("public", "items"), QualifiedName::new("replica", "items"));
        mapping.columns = columns;
        TableRoute::checked(&mapping, source, target, false).unwrap()
    }

    fn relation(columns: &[&Column]) -> Relation {
        Relation {
            xid: None,
            oid: 1,
            namespace: "public".into(),
            name: "items".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: columns
                .iter()
                .map(|c| RelationColumn {
                    is_key: c.is_key,
                    name: c.name.clone(),
                    type_oid: c.type_oid,
                    type_modifier: c.type_modifier,
                })
                .collect(),
        }
    }

    /// A binary `money` value is a count of the source currency's smallest
    /// unit, which a target in another `lc_monetary` would read rescaled.
    #[test]
    fn money_is_copied_as_text() {
        let price = column("price", "money", 790, 'N');
        assert!(route(ColumnSelection::All, vec![id(), qty()], vec![id(), qty()]).binary_copy_safe());
        assert!(
            !route(ColumnSelection::All, vec![id(), price.clone()], vec![id(), price]).binary_copy_safe()
        );
    }

    #[test]
    fn a_relation_like_the_catalog_needs_nothing_looked_up() {
        let route = route(ColumnSelection::All, vec![id(), qty()], vec![id(), qty()]);
        assert!(route.describes(&relation(&[&id(), &qty()])));
        let note = column("note", "text", 25, 'S');
        let added = relation(&[&id(), &qty(), &note]);
        assert!(!route.describes(&added));
        assert_eq!(route.unknown_types(&added), [(25, -1)]);
        let types = HashMap::from([(
            (25, -1),
            TypeDescription { type_name: "text".into(), category: 'S', toastable: true, base_type: (25, -1) },
        )]);
        let columns = route.relation_columns(&added, &types);
        assert_eq!(columns[2], Column { toastable: true, is_key: false, ..note });
        // Whole old rows start or stop coming: what the filter may read
        // changes, so the route is worked out again.
        let full = Relation { replica_identity: ReplicaIdentity::Full, ..relation(&[&id(), &qty()]) };
        assert!(!route.describes(&full));
    }

    #[test]
    fn an_added_column_is_carried_when_the_target_has_it_and_the_table_takes_all() {
        let note = column("note", "text", 25, 'S');
        let old = route(ColumnSelection::All, vec![id(), qty()], vec![id(), qty(), note.clone()]);
        let new =
            old.follow(vec![id(), qty(), note.clone()], vec![id(), qty(), note.clone()], false).unwrap();
        assert_eq!(new.carried_as("note"), Some("note"));
        let text = change_note(&old, &new).unwrap();
        assert_eq!(text, ChangeNote { warn: false, text: "note added: replicated into note".into() });

        let lacking = old.follow(vec![id(), qty(), note.clone()], vec![id(), qty()], false).unwrap();
        assert_eq!(lacking.carried_as("note"), None);
        let text = change_note(&old, &lacking).unwrap();
        assert!(
            text.warn && text.text.contains("target table \"replica\".\"items\" has no column note"),
            "{text:?}"
        );

        let listed = ColumnSelection::Only(vec!["id".into(), "qty".into()]);
        let old = route(listed, vec![id(), qty()], vec![id(), qty(), note.clone()]);
        let new = old.follow(vec![id(), qty(), note.clone()], vec![id(), qty(), note], false).unwrap();
        let text = change_note(&old, &new).unwrap();
        assert_eq!(text.text, "note added: not replicated (the table's columns leave it out)");
        assert!(!text.warn);
    }

    #[test]
    fn a_carried_column_dropped_on_either_side_or_retyped_beyond_fit_is_refused() {
        let old = route(ColumnSelection::All, vec![id(), qty()], vec![id(), qty()]);
        let dropped = old.follow(vec![id()], vec![id(), qty()], false).unwrap_err().to_string();
        assert!(dropped.contains("column \"qty\" was dropped (or renamed) on the source"), "{dropped}");
        assert!(dropped.contains("drop column \"qty\" of \"replica\".\"items\" too"), "{dropped}");

        let missing = old.follow(vec![id(), qty()], vec![id()], false).unwrap_err().to_string();
        assert!(missing.contains("ALTER TABLE \"replica\".\"items\" ADD COLUMN qty integer"), "{missing}");
        assert!(missing.contains("add \"qty\" to the table's `exclude`"), "{missing}");

        let flag = column("qty", "boolean", 16, 'B');
        let retyped = old.follow(vec![id(), flag], vec![id(), qty()], false).unwrap_err().to_string();
        assert!(
            retyped.contains("\"qty\" is boolean on the source but integer in target table"),
            "{retyped}"
        );
        let alter = "ALTER TABLE \"replica\".\"items\" ALTER COLUMN qty TYPE boolean";
        assert!(retyped.contains(alter), "{retyped}");

        let wider = column("qty", "bigint", 20, 'N');
        let new = old.follow(vec![id(), wider], vec![id(), qty()], false).unwrap();
        let note = change_note(&old, &new).unwrap();
        assert!(note.warn && note.text.starts_with("qty is now bigint (was integer)"), "{note:?}");
    }

    #[test]
    fn a_column_named_in_the_config_must_leave_it_when_dropped() {
        let listed = ColumnSelection::Only(vec!["id".into(), "qty".into()]);
        let old = route(listed, vec![id(), qty()], vec![id(), qty()]);
        let dropped = old.follow(vec![id()], vec![id(), qty()], false).unwrap_err().to_string();
        assert!(dropped.contains("remove \"qty\" from the table's `columns`"), "{dropped}");
    }

    #[test]
    fn a_column_left_out_of_old_changes_stops_the_route_only_where_it_is_needed() {
        let name = column("name", "text", 25, 'S');
        let left = |c: &Column| Column { name: renamed::left_out(&c.name), ..c.clone() };
        let mut mapping =
            TableMapping::new(QualifiedName::new("public", "items"), QualifiedName::new("replica", "items"));
        let target = vec![id(), name.clone(), qty()];
        let refused = |mapping: &TableMapping, source: Vec<Column>| {
            TableRoute::checked(mapping, source, target.clone(), false).err().map(|e| e.to_string())
        };
        let name_left_out = || vec![id(), left(&name), qty()];

        // Not needed: left out, and the rest goes on (an except list may name it).
        let route = TableRoute::checked(&mapping, name_left_out(), target.clone(), false).unwrap();
        assert_eq!(route.carried_as(&renamed::left_out("name")), None);
        assert_eq!(route.carried_as("qty"), Some("qty"));
        mapping.columns = ColumnSelection::Except(vec!["name".into()]);
        assert_eq!(refused(&mapping, name_left_out()), None);

        // Needed: the error names the column, why, and the way past it.
        let says = |error: Option<String>, why: &str| {
            let error = error.expect("refused");
            assert!(error.contains("column \"name\" of changes from before the start"), "{error}");
            assert!(error.contains(why) && error.contains("empty the target table"), "{error}");
        };
        mapping.columns = ColumnSelection::Only(vec!["id".into(), "name".into()]);
        says(refused(&mapping, name_left_out()), "the table's settings name it");
        mapping.columns = ColumnSelection::All;
        mapping.rename.insert("name".into(), "label".into());
        says(refused(&mapping, name_left_out()), "the table's settings name it");
        mapping.rename.clear();
        mapping.filter = Some("name <> 'x'".into());
        says(refused(&mapping, name_left_out()), "the table's filter reads it");
        mapping.filter = None;
        let key = refused(&mapping, vec![left(&id()), name.clone(), qty()]).expect("refused");
        assert!(key.contains("column \"id\"") && key.contains("a key column"), "{key}");

        // Dropped while another column took its name: the settings and the
        // filter mean the column that has the name now.
        let taken = || vec![id(), left(&name), name.clone(), qty()];
        mapping.columns = ColumnSelection::Only(vec!["id".into(), "name".into()]);
        mapping.filter = Some("name <> 'x'".into());
        let route = TableRoute::checked(&mapping, taken(), target.clone(), false).unwrap();
        assert_eq!(route.carried_as("name"), Some("name"));
        assert_eq!(route.filter.as_ref().map(|f| f.columns_used().to_vec()), Some(vec![2]));
    }

    #[test]
    fn changes_from_before_a_column_was_added_lack_it_unless_the_filter_reads_it() {
        let name = column("name", "text", 25, 'S');
        let all = vec![id(), name.clone(), qty()];
        let mut mapping =
            TableMapping::new(QualifiedName::new("public", "items"), QualifiedName::new("replica", "items"));
        let older = |mapping: &TableMapping| {
            let now = TableRoute::checked(mapping, all.clone(), all.clone(), false).unwrap();
            now.for_older(vec![id(), qty()], all.clone(), false).map(|route| (now, route))
        };
        for columns in [
            ColumnSelection::Only(vec!["id".into(), "name".into(), "qty".into()]),
            ColumnSelection::Except(vec!["name".into()]),
        ] {
            mapping.columns = columns;
            let (now, route) = older(&mapping).unwrap();
            assert_eq!(route.carried().collect::<Vec<_>>(), [("id", "id"), ("qty", "qty")]);
            assert_eq!(route.mapping.columns, now.mapping.columns, "the settings stay for later changes");
        }
        mapping.columns = ColumnSelection::All;
        mapping.rename.insert("name".into(), "name".into());
        older(&mapping).unwrap();
        mapping.filter = Some("name <> 'x'".into());
        let error = older(&mapping).map(|_| ()).unwrap_err().to_string();
        assert!(
            error.contains("the filter reads column \"name\", which changes from before the start lack"),
            "{error}"
        );
        assert!(error.contains("empty the target table and add the table back"), "{error}");
    }
}
