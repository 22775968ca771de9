//! Type checking: resolves column names against the source table, puts each
//! comparison into one [`Domain`], and parses every literal as the type it
//! is compared with, so that everything that can be wrong with a filter is
//! reported when the config loads, with its position.

use super::like::Pattern;
use super::syntax::{Ast, CmpOp, Operand, OperandKind, Truth};
use super::value::{self, Domain, NumBuf, Scalar, SqlType};
use super::{ColumnType, FilterError, FilterErrorKind, datetime};

/// A checked condition, ready to evaluate and to render as SQL.
#[derive(Clone, Debug)]
pub(super) enum Node {
    /// `TRUE`, `FALSE` or `NULL` standing alone.
    Const(Option<bool>),
    BoolColumn(usize),
    Not(Box<Node>),
    And(Vec<Node>),
    Or(Vec<Node>),
    Compare {
        op: CmpOp,
        left: Value,
        right: Value,
        domain: Domain,
    },
    In {
        value: Value,
        list: Vec<Const>,
        domain: Domain,
        negated: bool,
    },
    Like {
        column: usize,
        pattern: Option<Pattern>,
        fold: bool,
        negated: bool,
    },
    IsNull {
        column: usize,
        negated: bool,
    },
    Is {
        node: Box<Node>,
        test: Truth,
        negated: bool,
    },
}

#[derive(Clone, Debug)]
pub(super) enum Value {
    /// A column, parsed as `ty` in the comparison's domain.
    Column {
        index: usize,
        ty: SqlType,
    },
    Const(Const),
}

/// A literal of the type it is compared with.
#[derive(Clone, Debug)]
pub(super) struct Const {
    /// `None` is SQL NULL.
    pub(super) value: Option<Literal>,
    /// The type the literal is cast to in SQL.
    pub(super) cast: &'static str,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Literal {
    Int(i64),
    Num(NumBuf),
    Real(f32),
    Double(f64),
    Text(String),
    Bool(bool),
    Date(i64),
    Timestamp(i64),
    TimestampTz(i64),
    Time(i64),
    Uuid(u128),
}

impl Literal {
    pub(super) fn scalar(&self) -> Scalar<'_> {
        match self {
            Literal::Int(n) => Scalar::Int(*n),
            Literal::Num(n) => Scalar::Num(n.view()),
            Literal::Real(f) => Scalar::Float(f64::from(*f)),
            Literal::Double(f) => Scalar::Float(*f),
            Literal::Text(s) => Scalar::Text(s.as_bytes()),
            Literal::Bool(b) => Scalar::Bool(*b),
            Literal::Date(t) | Literal::Timestamp(t) | Literal::TimestampTz(t) | Literal::Time(t) => {
                Scalar::Instant(*t)
            }
            Literal::Uuid(u) => Scalar::Uuid(*u),
        }
    }
}

/// The checked tree and the columns it reads, sorted.
pub(super) struct Checked {
    pub(super) root: Node,
    pub(super) used: Vec<usize>,
}

pub(super) fn check(src: &str, ast: &Ast, columns: &[ColumnType]) -> Result<Checked, FilterError> {
    let types = columns.iter().map(|c| SqlType::classify(&c.type_name)).collect();
    let mut checker = Checker { src, columns, types, used: Vec::new() };
    let root = checker.condition(ast)?;
    let mut used = checker.used;
    used.sort_unstable();
    used.dedup();
    Ok(Checked { root, used })
}

struct Checker<'a> {
    src: &'a str,
    columns: &'a [ColumnType],
    types: Vec<SqlType>,
    used: Vec<usize>,
}

type Checking<T> = Result<T, FilterError>;

impl Checker<'_> {
    fn error(&self, at: usize, kind: FilterErrorKind) -> FilterError {
        FilterError::new(self.src, at, kind)
    }

    fn misplaced(&self, at: usize, what: &str) -> FilterError {
        self.error(at, FilterErrorKind::Misplaced(what.into()))
    }

    fn describe(&self, index: usize) -> String {
        format!("column \"{}\" ({})", self.columns[index].name, self.columns[index].type_name)
    }

    fn condition(&mut self, ast: &Ast) -> Checking<Node> {
        match ast {
            Ast::Or(items) => Ok(Node::Or(self.conditions(items)?)),
            Ast::And(items) => Ok(Node::And(self.conditions(items)?)),
            Ast::Not(inner) => Ok(Node::Not(Box::new(self.condition(inner)?))),
            Ast::Compare { op, left, right, at } => self.compare(*op, left, right, *at),
            Ast::In { value, list, negated, .. } => self.in_list(value, list, *negated),
            Ast::Like { value, pattern, negated, fold, .. } => self.like(value, pattern, *negated, *fold),
            Ast::Between { value, low, high, negated, at } => self.between(value, low, high, *negated, *at),
            Ast::Is { expr, test, negated, .. } => self.is(expr, *test, *negated),
            Ast::Operand(operand) => self.bare(operand),
        }
    }

    fn conditions(&mut self, items: &[Ast]) -> Checking<Vec<Node>> {
        items.iter().map(|item| self.condition(item)).collect()
    }

    /// A column or value used as a condition on its own.
    fn bare(&mut self, operand: &Operand) -> Checking<Node> {
        let what = match &operand.kind {
            OperandKind::Bool(b) => return Ok(Node::Const(Some(*b))),
            OperandKind::Null => return Ok(Node::Const(None)),
            OperandKind::Column(name) => {
                let index = self.column(name, operand.at)?;
                if self.types[index] == SqlType::Bool {
                    return Ok(Node::BoolColumn(index));
                }
                self.describe(index)
            }
            _ => format!("the value {}", operand.text),
        };
        Err(self.error(operand.at, FilterErrorKind::NotBoolean { what }))
    }

    /// `x IS NULL` tests a column of any type; `IS TRUE` and friends, and
    /// `IS NULL` of anything else, test a condition.
    fn is(&mut self, expr: &Ast, test: Truth, negated: bool) -> Checking<Node> {
        if let (Ast::Operand(Operand { kind: OperandKind::Column(name), at, .. }), Truth::Null) = (expr, test)
        {
            let column = self.column(name, *at)?;
            return Ok(Node::IsNull { column, negated });
        }
        Ok(Node::Is { node: Box::new(self.condition(expr)?), test, negated })
    }

    fn column(&mut self, name: &str, at: usize) -> Checking<usize> {
        let Some(index) = self.columns.iter().position(|c| c.name == name) else {
            let columns = self.columns.iter().map(|c| c.name.clone()).collect();
            return Err(self.error(at, FilterErrorKind::UnknownColumn { name: name.into(), columns }));
        };
        self.used.push(index);
        Ok(index)
    }

    /// A column that can be compared, and the domain it compares in.
    fn comparable(&mut self, name: &str, at: usize) -> Checking<(usize, Domain)> {
        let index = self.column(name, at)?;
        match self.types[index].domain() {
            Some(domain) => Ok((index, domain)),
            None => Err(self.error(
                at,
                FilterErrorKind::UnsupportedType {
                    column: self.columns[index].name.clone(),
                    type_name: self.columns[index].type_name.clone(),
                },
            )),
        }
    }

    fn column_value(&self, index: usize) -> Value {
        Value::Column { index, ty: self.types[index] }
    }

    fn compare(&mut self, op: CmpOp, left: &Operand, right: &Operand, at: usize) -> Checking<Node> {
        let (left, right, domain) = match (&left.kind, &right.kind) {
            (OperandKind::Column(a), OperandKind::Column(b)) => {
                let (a, a_domain) = self.comparable(a, left.at)?;
                let (b, b_domain) = self.comparable(b, right.at)?;
                let Some(domain) = value::unify(a_domain, b_domain) else {
                    let kind =
                        FilterErrorKind::Incompatible { left: self.describe(a), right: self.describe(b) };
                    return Err(self.error(at, kind));
                };
                let (a_ty, b_ty) = text_pairing(self.types[a], self.types[b]);
                (Value::Column { index: a, ty: a_ty }, Value::Column { index: b, ty: b_ty }, domain)
            }
            (OperandKind::Column(name), _) => {
                let (index, domain) = self.comparable(name, left.at)?;
                let (value, domain) = self.literal(right, index, domain)?;
                (self.column_value(index), Value::Const(value), domain)
            }
            (_, OperandKind::Column(name)) => {
                let (index, domain) = self.comparable(name, right.at)?;
                let (value, domain) = self.literal(left, index, domain)?;
                (Value::Const(value), self.column_value(index), domain)
            }
            _ => return Err(self.misplaced(at, "a comparison needs a column on at least one side")),
        };
        Ok(Node::Compare { op, left, right, domain })
    }

    /// `x BETWEEN a AND b` is `x >= a AND x <= b`, NULLs included.
    fn between(
        &mut self,
        value: &Operand,
        low: &Operand,
        high: &Operand,
        negated: bool,
        at: usize,
    ) -> Checking<Node> {
        let both = Node::And(vec![
            self.compare(CmpOp::Ge, value, low, at)?,
            self.compare(CmpOp::Le, value, high, at)?,
        ]);
        Ok(if negated { Node::Not(Box::new(both)) } else { both })
    }

    fn in_list(&mut self, value: &Operand, list: &[Operand], negated: bool) -> Checking<Node> {
        let OperandKind::Column(name) = &value.kind else {
            return Err(self.misplaced(value.at, "the left side of IN must be a column"));
        };
        let (index, mut domain) = self.comparable(name, value.at)?;
        if let Some(item) = list.iter().find(|item| matches!(item.kind, OperandKind::Column(_))) {
            return Err(self.misplaced(item.at, "an IN list holds values, not columns"));
        }
        let mut typed = self.literals(list, index, domain)?;
        // One value too big for the integer type, or with a fraction, makes
        // the whole list numeric, as PostgreSQL resolves it.
        if typed.iter().any(|(_, d)| *d != domain) {
            domain = Domain::Numeric;
            typed = self.literals(list, index, domain)?;
        }
        let list = typed.into_iter().map(|(c, _)| c).collect();
        Ok(Node::In { value: self.column_value(index), list, domain, negated })
    }

    fn literals(&self, list: &[Operand], column: usize, domain: Domain) -> Checking<Vec<(Const, Domain)>> {
        list.iter().map(|item| self.literal(item, column, domain)).collect()
    }

    fn like(&mut self, value: &Operand, pattern: &Operand, negated: bool, fold: bool) -> Checking<Node> {
        let OperandKind::Column(name) = &value.kind else {
            return Err(self.misplaced(value.at, "the left side of LIKE must be a column"));
        };
        let column = self.column(name, value.at)?;
        if self.types[column].domain() != Some(Domain::Text) {
            let c = &self.columns[column];
            let kind =
                FilterErrorKind::LikeNeedsText { column: c.name.clone(), type_name: c.type_name.clone() };
            return Err(self.error(value.at, kind));
        }
        let pattern = match &pattern.kind {
            OperandKind::Null => None,
            OperandKind::Str(text) => Some(Pattern::compile(text, fold).map_err(|reason| {
                self.error(pattern.at, FilterErrorKind::InvalidPattern { reason: reason.into() })
            })?),
            _ => return Err(self.misplaced(pattern.at, "the pattern of LIKE must be a quoted string")),
        };
        Ok(Node::Like { column, pattern, fold, negated })
    }

    /// A literal compared with `column` in `domain`. A number compared with
    /// an integer column that does not fit its type, or has a fraction,
    /// moves the comparison to numeric (`qty > 1.5` is not an error, and
    /// not `qty > 1`), which the returned domain says.
    fn literal(&self, literal: &Operand, column: usize, domain: Domain) -> Checking<(Const, Domain)> {
        let ty = self.types[column];
        let (value, domain) = match (&literal.kind, domain) {
            (OperandKind::Null, _) => (None, domain),
            (OperandKind::Number(text), Domain::Integer) => {
                let number = NumBuf::parse(text).map_err(|reason| self.invalid(literal, column, reason))?;
                let (low, high) = ty.int_range();
                match number.as_integer() {
                    Some(n) if (low..=high).contains(&n) => (Some(Literal::Int(n)), domain),
                    _ => (Some(Literal::Num(number)), Domain::Numeric),
                }
            }
            _ => (Some(self.typed(literal, column, domain)?), domain),
        };
        Ok((Const { value, cast: ty.cast_name(domain) }, domain))
    }

    fn invalid(&self, literal: &Operand, column: usize, reason: &str) -> FilterError {
        let c = &self.columns[column];
        let kind = FilterErrorKind::InvalidLiteral {
            literal: literal.text.clone(),
            column: c.name.clone(),
            type_name: c.type_name.clone(),
            reason: reason.into(),
        };
        self.error(literal.at, kind)
    }

    /// Parses a literal as a value of `domain`, the same way the column's
    /// own values are parsed.
    fn typed(&self, literal: &Operand, column: usize, domain: Domain) -> Checking<Literal> {
        let ty = self.types[column];
        let fail = |reason: &str| self.invalid(literal, column, reason);
        let text = match (&literal.kind, domain) {
            (OperandKind::Bool(b), Domain::Bool) => return Ok(Literal::Bool(*b)),
            (OperandKind::Str(s), _) => s.as_str(),
            (OperandKind::Number(n), Domain::Numeric | Domain::Float) => n.as_str(),
            (OperandKind::Number(_), _) => {
                return Err(fail("values of this type are written as quoted strings"));
            }
            (OperandKind::Bool(_), _) => {
                return Err(fail("TRUE and FALSE compare with boolean columns only"));
            }
            (OperandKind::Null | OperandKind::Column(_), _) => return Err(fail("expected a value")),
        };
        let bytes = text.as_bytes();
        match domain {
            Domain::Integer => integer_literal(text, ty).map(Literal::Int).map_err(fail),
            Domain::Numeric => NumBuf::parse(text).map(Literal::Num).map_err(fail),
            Domain::Float if ty == SqlType::Real => {
                float_literal(text, ty).map(|f| Literal::Real(f as f32)).map_err(fail)
            }
            Domain::Float => float_literal(text, ty).map(Literal::Double).map_err(fail),
            Domain::Text if ty == SqlType::BpChar => Ok(Literal::Text(text.trim_end_matches(' ').into())),
            Domain::Text => Ok(Literal::Text(text.into())),
            Domain::Bool => {
                value::parse_bool(bytes).map(Literal::Bool).ok_or_else(|| fail("expected true or false"))
            }
            Domain::Date => datetime::parse_date(bytes).map(Literal::Date).map_err(fail),
            Domain::Timestamp => {
                datetime::parse_timestamp(bytes, false).map(Literal::Timestamp).map_err(fail)
            }
            Domain::TimestampTz => {
                datetime::parse_timestamp(bytes, true).map(Literal::TimestampTz).map_err(fail)
            }
            Domain::Time => datetime::parse_time(bytes.trim_ascii()).map(Literal::Time).map_err(fail),
            Domain::Uuid => value::parse_uuid(bytes.trim_ascii())
                .map(Literal::Uuid)
                .ok_or_else(|| fail("expected a UUID")),
        }
    }
}

/// PostgreSQL compares `character(n)` with `character varying` as
/// `character` (padding ignored on both sides), but with `text` as text
/// (padding dropped from the `character` side only).
fn text_pairing(a: SqlType, b: SqlType) -> (SqlType, SqlType) {
    match (a, b) {
        (SqlType::BpChar, SqlType::Varchar) | (SqlType::Varchar, SqlType::BpChar) => {
            (SqlType::BpChar, SqlType::BpChar)
        }
        _ => (a, b),
    }
}

fn integer_literal(text: &str, ty: SqlType) -> Result<i64, &'static str> {
    let n: i64 = text.trim().parse().map_err(|_| "expected a whole number")?;
    let (low, high) = ty.int_range();
    if (low..=high).contains(&n) { Ok(n) } else { Err("out of range for the column's type") }
}

/// A float literal, refusing what PostgreSQL refuses: values that overflow
/// to infinity or underflow to zero without being written that way.
fn float_literal(text: &str, ty: SqlType) -> Result<f64, &'static str> {
    let text = text.trim();
    let value = value::parse_float(text, ty).ok_or("expected a number")?;
    let lower = text.to_ascii_lowercase();
    if value.is_infinite() && !lower.contains("inf") {
        return Err("out of range for the column's type");
    }
    let mantissa = lower.split('e').next().unwrap_or("");
    if value == 0.0 && mantissa.bytes().any(|b| (b'1'..=b'9').contains(&b)) {
        return Err("out of range for the column's type");
    }
    Ok(value)
}
