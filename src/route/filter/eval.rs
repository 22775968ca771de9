//! Evaluation of a checked filter on one row, in SQL's three-valued logic
//! plus a fourth value for "depends on a column that was not sent". Nothing
//! here allocates: column text is parsed in place and literals were parsed
//! when the filter was compiled.

use std::cmp::Ordering;

use super::check::{Const, Node, Value};
use super::like::Pattern;
use super::syntax::{CmpOp, Truth};
use super::value::{self, Domain, Scalar};
use super::{Cell, EvalError};

/// A condition's value on one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tv {
    True,
    False,
    /// SQL NULL (unknown).
    Null,
    /// Would be known if this column's unchanged TOAST value had been sent.
    Unsent(usize),
}

impl Tv {
    fn of(value: bool) -> Tv {
        if value { Tv::True } else { Tv::False }
    }

    fn not(self) -> Tv {
        match self {
            Tv::True => Tv::False,
            Tv::False => Tv::True,
            other => other,
        }
    }

    fn negate_if(self, negated: bool) -> Tv {
        if negated { self.not() } else { self }
    }

    /// Combines two values that are not the deciding one (FALSE for AND,
    /// TRUE for OR): an unsent column keeps the answer open, else NULL
    /// wins over the neutral value.
    fn undecided(self, other: Tv, neutral: Tv) -> Tv {
        match (self, other) {
            (Tv::Unsent(c), _) | (_, Tv::Unsent(c)) => Tv::Unsent(c),
            (Tv::Null, _) | (_, Tv::Null) => Tv::Null,
            _ => neutral,
        }
    }
}

type Evaluation = Result<Tv, EvalError>;

pub(super) fn eval<'r, F: Fn(usize) -> Cell<'r>>(node: &Node, row: &F) -> Evaluation {
    Ok(match node {
        Node::Const(value) => value.map_or(Tv::Null, Tv::of),
        Node::BoolColumn(column) => bool_column(*column, row)?,
        Node::Not(inner) => eval(inner, row)?.not(),
        Node::And(items) => junction(items, Tv::False, Tv::True, row)?,
        Node::Or(items) => junction(items, Tv::True, Tv::False, row)?,
        Node::Compare { op, left, right, domain } => compare(*op, left, right, *domain, row)?,
        Node::In { value, list, domain, negated } => in_list(value, list, *domain, row)?.negate_if(*negated),
        Node::Like { column, pattern, negated, .. } => {
            like(*column, pattern.as_ref(), row).negate_if(*negated)
        }
        Node::IsNull { column, negated } => is_null(row(*column)).negate_if(*negated),
        Node::Is { node, test, negated } => is(eval(node, row)?, *test, *negated),
    })
}

/// AND (`decides` FALSE) or OR (`decides` TRUE), stopping at the first
/// item that decides; an unsent column does not stop it, since a later
/// item may still decide without it.
fn junction<'r, F: Fn(usize) -> Cell<'r>>(items: &[Node], decides: Tv, neutral: Tv, row: &F) -> Evaluation {
    let mut result = neutral;
    for item in items {
        let value = eval(item, row)?;
        if value == decides {
            return Ok(decides);
        }
        result = result.undecided(value, neutral);
    }
    Ok(result)
}

fn bool_column<'r, F: Fn(usize) -> Cell<'r>>(column: usize, row: &F) -> Evaluation {
    match row(column) {
        Cell::Null => Ok(Tv::Null),
        Cell::Unchanged => Ok(Tv::Unsent(column)),
        Cell::Text(text) => value::parse_bool(text)
            .map(Tv::of)
            .ok_or(EvalError::InvalidValue { column, expected: Domain::Bool.name() }),
    }
}

/// A value of an operand, or why there is none.
enum Got<'a> {
    Null,
    Unsent(usize),
    Value(Scalar<'a>),
}

fn fetch<'a, 'r: 'a, F: Fn(usize) -> Cell<'r>>(
    value: &'a Value,
    domain: Domain,
    row: &F,
) -> Result<Got<'a>, EvalError> {
    match value {
        Value::Const(Const { value, .. }) => Ok(value.as_ref().map_or(Got::Null, |v| Got::Value(v.scalar()))),
        Value::Column { index, ty } => match row(*index) {
            Cell::Null => Ok(Got::Null),
            Cell::Unchanged => Ok(Got::Unsent(*index)),
            Cell::Text(text) => value::parse_cell(text, *ty, domain)
                .map(Got::Value)
                .ok_or(EvalError::InvalidValue { column: *index, expected: domain.name() }),
        },
    }
}

fn compare<'r, F: Fn(usize) -> Cell<'r>>(
    op: CmpOp,
    left: &Value,
    right: &Value,
    domain: Domain,
    row: &F,
) -> Evaluation {
    Ok(match (fetch(left, domain, row)?, fetch(right, domain, row)?) {
        // NULL on either side decides, whatever the unsent side holds.
        (Got::Null, _) | (_, Got::Null) => Tv::Null,
        (Got::Unsent(c), _) | (_, Got::Unsent(c)) => Tv::Unsent(c),
        (Got::Value(a), Got::Value(b)) => Tv::of(op.holds(a.compare(&b))),
    })
}

/// `x IN (a, b)` is `x = a OR x = b`: TRUE on a match, else NULL if the
/// list holds a NULL, else FALSE.
fn in_list<'r, F: Fn(usize) -> Cell<'r>>(
    value: &Value,
    list: &[Const],
    domain: Domain,
    row: &F,
) -> Evaluation {
    let needle = match fetch(value, domain, row)? {
        Got::Null => return Ok(Tv::Null),
        Got::Unsent(c) => return Ok(Tv::Unsent(c)),
        Got::Value(v) => v,
    };
    let mut saw_null = false;
    for item in list {
        match &item.value {
            None => saw_null = true,
            Some(v) if needle.compare(&v.scalar()) == Ordering::Equal => return Ok(Tv::True),
            Some(_) => {}
        }
    }
    Ok(if saw_null { Tv::Null } else { Tv::False })
}

fn like<'r, F: Fn(usize) -> Cell<'r>>(column: usize, pattern: Option<&Pattern>, row: &F) -> Tv {
    match (row(column), pattern) {
        (Cell::Null, _) | (_, None) => Tv::Null,
        (Cell::Unchanged, _) => Tv::Unsent(column),
        // `character(n)` keeps its padding here, as PostgreSQL's LIKE does.
        (Cell::Text(text), Some(pattern)) => Tv::of(pattern.matches(text)),
    }
}

/// An unchanged TOAST value is never NULL: only stored values are TOASTed.
fn is_null(cell: Cell<'_>) -> Tv {
    Tv::of(matches!(cell, Cell::Null))
}

fn is(value: Tv, test: Truth, negated: bool) -> Tv {
    let holds = match (value, test) {
        (Tv::Unsent(c), _) => return Tv::Unsent(c),
        (Tv::True, Truth::True) | (Tv::False, Truth::False) | (Tv::Null, Truth::Null) => true,
        _ => false,
    };
    Tv::of(holds != negated)
}
