//! Rendering a checked filter as a PostgreSQL condition with the same
//! meaning as [`super::eval`], for the initial copy (`COPY (SELECT … WHERE
//! …) TO STDOUT`). Everything that could let the server read it differently
//! is spelled out: identifiers are quoted, every literal is printed in a
//! canonical form and cast to its column's type without a type modifier (so
//! nothing is rounded or truncated), timestamps with time zone carry `+00`
//! (so the session's `TimeZone` does not matter), ordering comparisons of
//! text, comparisons of two text columns and every LIKE use `COLLATE "C"`
//! (byte order and ASCII-only case folding, like ferry), and every
//! operation is parenthesised.
//!
//! Equality of a text column with a literal keeps the column's collation,
//! so an index on the column still serves the copy. That is byte equality
//! for every deterministic collation; a column with a nondeterministic one
//! (ICU, `deterministic = false`) would compare differently on the server.

use super::check::{Const, Literal, Node, Value};
use super::datetime;
use super::syntax::Truth;
use super::value::{self, Domain};
use crate::pg::names::{quote_ident, quote_literal};

pub(super) fn render(node: &Node, names: &[String]) -> String {
    let mut out = String::new();
    Renderer { names, out: &mut out }.node(node);
    out
}

struct Renderer<'a> {
    names: &'a [String],
    out: &'a mut String,
}

impl Renderer<'_> {
    fn push(&mut self, text: &str) {
        self.out.push_str(text);
    }

    fn node(&mut self, node: &Node) {
        match node {
            Node::Const(Some(true)) => self.push("TRUE"),
            Node::Const(Some(false)) => self.push("FALSE"),
            Node::Const(None) => self.push("NULL::boolean"),
            Node::BoolColumn(column) => self.column(*column),
            Node::Not(inner) => {
                self.push("(NOT ");
                self.node(inner);
                self.push(")");
            }
            Node::And(items) => self.junction(items, " AND "),
            Node::Or(items) => self.junction(items, " OR "),
            Node::Compare { op, left, right, domain } => {
                self.push("(");
                self.value(left);
                self.push(&format!(" {} ", op.sql()));
                self.value(right);
                if *domain == Domain::Text && (op.orders() || both_columns(left, right)) {
                    self.push(" COLLATE \"C\"");
                }
                self.push(")");
            }
            Node::In { value, list, negated, .. } => self.in_list(value, list, *negated),
            Node::Like { column, pattern, fold, negated } => {
                self.push("(");
                self.column(*column);
                self.push(if *negated { " NOT" } else { "" });
                self.push(if *fold { " ILIKE " } else { " LIKE " });
                match pattern {
                    Some(pattern) => {
                        self.push(&quote_literal(&pattern.source));
                        self.push("::text COLLATE \"C\"");
                    }
                    None => self.push("NULL"),
                }
                self.push(")");
            }
            Node::IsNull { column, negated } => {
                self.push("(");
                self.column(*column);
                self.push(if *negated { " IS NOT NULL)" } else { " IS NULL)" });
            }
            Node::Is { node, test, negated } => {
                self.push("(");
                self.node(node);
                self.push(if *negated { " IS NOT " } else { " IS " });
                self.push(match test {
                    Truth::True => "TRUE)",
                    Truth::False => "FALSE)",
                    Truth::Null => "UNKNOWN)",
                });
            }
        }
    }

    fn junction(&mut self, items: &[Node], separator: &str) {
        self.push("(");
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.push(separator);
            }
            self.node(item);
        }
        self.push(")");
    }

    fn in_list(&mut self, value: &Value, list: &[Const], negated: bool) {
        self.push("(");
        self.value(value);
        self.push(if negated { " NOT IN (" } else { " IN (" });
        for (i, item) in list.iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.constant(item);
        }
        self.push("))");
    }

    fn column(&mut self, index: usize) {
        let quoted = quote_ident(&self.names[index]);
        self.push(&quoted);
    }

    fn value(&mut self, value: &Value) {
        match value {
            Value::Column { index, .. } => self.column(*index),
            Value::Const(c) => self.constant(c),
        }
    }

    fn constant(&mut self, constant: &Const) {
        match &constant.value {
            None => self.push("NULL"),
            Some(literal) => {
                let text = format!("{}::{}", quote_literal(&literal_text(literal)), constant.cast);
                self.push(&text);
            }
        }
    }
}

/// Two text columns may have different collations, which PostgreSQL
/// refuses to choose between even for `=`; "C" settles it, and for the
/// deterministic collations equality is byte equality anyway.
fn both_columns(left: &Value, right: &Value) -> bool {
    matches!((left, right), (Value::Column { .. }, Value::Column { .. }))
}

/// The canonical text of a literal, which the server reads back as
/// exactly the value ferry compares with.
fn literal_text(literal: &Literal) -> String {
    match literal {
        Literal::Int(n) => n.to_string(),
        Literal::Num(n) => n.to_text(),
        Literal::Real(f) => float_text(f64::from(*f), || format!("{f:?}")),
        Literal::Double(f) => float_text(*f, || format!("{f:?}")),
        Literal::Text(s) => s.clone(),
        Literal::Bool(b) => b.to_string(),
        Literal::Date(d) => datetime::format_date(*d),
        Literal::Timestamp(t) => datetime::format_timestamp(*t, false),
        Literal::TimestampTz(t) => datetime::format_timestamp(*t, true),
        Literal::Time(t) => datetime::format_time(*t),
        Literal::Uuid(u) => value::format_uuid(*u),
    }
}

/// Rust's shortest round-trip digits (`{:?}`) for finite values, at the
/// float's own precision so a `real` reads back as the same `real`.
fn float_text(value: f64, finite: impl FnOnce() -> String) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value == f64::INFINITY {
        "Infinity".into()
    } else if value == f64::NEG_INFINITY {
        "-Infinity".into()
    } else {
        finite()
    }
}
