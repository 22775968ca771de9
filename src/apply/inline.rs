//! A small target transaction sent as one query: an `EXECUTE` per row and
//! the progress row travel in one simple-query message, which the target
//! runs as one implicit transaction and answers with one reply.
//!
//! Live, a source transaction is a few rows. Sent as protocol statements,
//! each ends with a Sync that the target answers on its own, and the commit
//! waits for those answers: two round trips or more per transaction, each a
//! wake-up of ferry and of the target backend, where PostgreSQL's own apply
//! worker has one. On a busy machine those wake-ups are most of the latency
//! ferry adds.
//!
//! Values travel as string literals to SQL prepared statements, so the
//! target reads each with its column type's input function, exactly as it
//! reads a text-format parameter. An update must fail when its row is
//! missing before the COMMIT behind it runs: its statement counts the rows
//! it changed and, when there are none, casts a text to `int`, which fails.
//! Any error rolls the whole transaction back, and the applier sends it
//! again statement by statement, which names the failure as usual.

use super::batch::BatchKind;
use super::param::TextParam;
use super::plan::RelationPlan;
use crate::pg::names::quote_ident;

/// Target transactions of at most this many rows go as one query; larger
/// ones are sent as batches, which cost the target less per row...
const INLINE_ROWS: usize = 32;
/// ... and of at most this many bytes of values: every value is copied
/// into the query, which is one message (the server refuses one over 1 GB).
const INLINE_BYTES: usize = 64 * 1024;

/// Whether `rows` are few and small enough to go as one query.
pub fn fits<'a>(rows: impl Iterator<Item = &'a [TextParam]>) -> bool {
    let (mut count, mut bytes) = (0, 0);
    for row in rows {
        count += 1;
        bytes += row.iter().map(|param| param.0.as_ref().map_or(0, |value| value.len())).sum::<usize>();
        if count > INLINE_ROWS || bytes > INLINE_BYTES {
            return false;
        }
    }
    true
}

/// `PREPARE name (types) AS ...` for one row of a batch of `kind` of
/// `plan`'s table, with the batch's parameter order: the carried columns
/// for an insert; the assigned columns, then the key, for an update. Each
/// parameter has its column's type, so that a value is read as the column
/// reads it (left to infer, `composite_key = $1` would take a `record`).
/// `None` when a column's type is not known.
pub fn prepare_sql(name: &str, plan: &RelationPlan, kind: &BatchKind) -> Option<String> {
    let target = &plan.target;
    let column = |i: usize| quote_ident(&plan.columns[i].1);
    let type_of = |i: usize| {
        let columns = &plan.route.target_columns;
        columns.iter().find(|c| c.name == plan.columns[i].1).map(|c| c.type_name.as_str())
    };
    let (parameters, statement): (Vec<usize>, String) = match kind {
        BatchKind::Insert => {
            let names: Vec<String> = (0..plan.columns.len()).map(column).collect();
            let values: Vec<String> = (1..=names.len()).map(|n| format!("${n}")).collect();
            let statement = format!(
                "INSERT INTO {target} ({}) OVERRIDING SYSTEM VALUE VALUES ({})",
                names.join(", "),
                values.join(", ")
            );
            ((0..plan.columns.len()).collect(), statement)
        }
        BatchKind::Update(set) => {
            let key = plan.batch.as_ref().map_or(&[][..], |b| &b.key[..]);
            let assignments: Vec<String> =
                set.iter().enumerate().map(|(n, &i)| format!("{} = ${}", column(i), n + 1)).collect();
            let condition: Vec<String> = key
                .iter()
                .enumerate()
                .map(|(n, &i)| format!("{} = ${}", column(i), set.len() + n + 1))
                .collect();
            // The cast's operand depends on the count, so the planner
            // cannot fold it into an error at PREPARE.
            let statement = format!(
                "WITH changed AS (UPDATE {target} SET {} WHERE {} RETURNING 1)
                 SELECT CASE WHEN count(*) > 0 THEN 0
                        ELSE ('ferry: no row to update, rows changed: ' || count(*))::int END
                 FROM changed",
                assignments.join(", "),
                condition.join(" AND ")
            );
            (set.iter().chain(key).copied().collect(), statement)
        }
    };
    let types: Option<Vec<&str>> = parameters.into_iter().map(type_of).collect();
    Some(format!("PREPARE {name} ({}) AS {statement}", types?.join(", ")))
}

/// Appends `EXECUTE name(values);`. `false` when a value is not UTF-8 text
/// (a query is a string; such a row goes as a parameter instead).
pub fn push_execute(sql: &mut String, name: &str, params: &[TextParam]) -> bool {
    sql.push_str("EXECUTE ");
    sql.push_str(name);
    sql.push('(');
    for (i, param) in params.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        match &param.0 {
            None => sql.push_str("NULL"),
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => push_literal(sql, text),
                Err(_) => return false,
            },
        }
    }
    sql.push_str(");");
    true
}

/// An escape string literal, `E'...'`: read the same whatever
/// `standard_conforming_strings` says, with only `\` and `'` escaped.
fn push_literal(sql: &mut String, text: &str) {
    sql.push_str("E'");
    for c in text.chars() {
        match c {
            '\\' => sql.push_str("\\\\"),
            '\'' => sql.push_str("''"),
            c => sql.push(c),
        }
    }
    sql.push('\'');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::param::text;

    #[test]
    fn values_become_escape_literals_and_null() {
        let mut sql = String::new();
        assert!(push_execute(&mut sql, "ferry_i1", &[text("it's"), TextParam(None), text("a\\b")]));
        assert_eq!(sql, "EXECUTE ferry_i1(E'it''s', NULL, E'a\\\\b');");
    }

    #[test]
    fn few_small_rows_fit_and_more_or_larger_do_not() {
        let row = [text("1"), TextParam(None), text("abc")];
        assert!(fits(std::iter::repeat_n(&row[..], INLINE_ROWS)));
        assert!(!fits(std::iter::repeat_n(&row[..], INLINE_ROWS + 1)));
        let large = [text(&"x".repeat(INLINE_BYTES + 1))];
        assert!(!fits(std::iter::once(&large[..])));
    }

    #[test]
    fn a_value_that_is_not_utf8_is_refused() {
        let mut sql = String::new();
        assert!(!push_execute(&mut sql, "ferry_i1", &[TextParam(Some(bytes::Bytes::from_static(b"\xff")))]));
    }
}
