//! The `where` filter of a subscription table: a boolean SQL expression
//! over the source table's columns, such as
//! `country IN ('DE', 'AT') AND NOT deleted AND signup >= '2024-01-01'`.
//!
//! ferry parses, type-checks and evaluates it itself on every replicated
//! row, from the text form of the values that pgoutput sends, so filtering
//! works on every server version and needs nothing on the source. The same
//! filter renders as SQL ([`Filter::to_sql`]) for the initial copy, with the
//! same meaning.
//!
//! # Language
//!
//! Comparisons `= <> != < <= > >=`; `AND`, `OR`, `NOT` with SQL precedence;
//! `[NOT] IN (…)`; `IS [NOT] NULL`, `IS [NOT] TRUE | FALSE | UNKNOWN`;
//! `[NOT] LIKE` / `ILIKE` with `%`, `_` and `\` as escape; `[NOT] BETWEEN a
//! AND b`; parentheses. Operands are columns (unquoted names fold to lower
//! case, `"Quoted"` names are kept) and literals: integers, decimals
//! (negative too), `'strings'` (`''` for a quote), `TRUE`, `FALSE`, `NULL`.
//! A boolean column is a condition by itself (`NOT deleted`). Keywords
//! ignore case. There is no arithmetic and there are no functions.
//!
//! # Meaning
//!
//! - SQL's three-valued logic: a row passes only when the filter is TRUE;
//!   NULL (`country = NULL`, a NULL column) does not pass.
//! - Each comparison happens in the column's type, and literals are parsed
//!   as that type when the filter is loaded (`qty = 'abc'` for an integer
//!   is an error then, not a surprise later). Integer columns meet numbers
//!   with a fraction as `numeric` (`qty > 1.5`), `integer` meets `numeric`
//!   and `date` meets `timestamp` as PostgreSQL's implicit casts do.
//! - Text compares by the bytes of its UTF-8, which is by code point and
//!   **not by the column's collation**; `=`, `<>` and `LIKE` are exact,
//!   `ILIKE` folds ASCII letters only. `character(n)` ignores trailing
//!   spaces in comparisons (not in LIKE), as PostgreSQL does.
//! - `numeric` compares exactly, as decimals; `real` and `double precision`
//!   as floats of their own width. For both, NaN equals NaN and is greater
//!   than everything else, including infinity, as in PostgreSQL.
//! - Dates, timestamps and times compare as points in time, `infinity` and
//!   `-infinity` included; `timestamp with time zone` compares instants, so
//!   `+05:30` and `Z` mean what they say. Literals are ISO
//!   (`'2024-01-02'`, `'2024-01-02 03:04:05.678'`, `'2024-01-02T03:04:05Z'`);
//!   one for a `timestamp with time zone` without an offset is UTC. Values
//!   must arrive in the ISO `DateStyle` (the server default).
//! - `uuid` compares like its lower-case text.
//! - Columns of other types can only be tested with `IS [NOT] NULL`.
//! - A column whose unchanged TOAST value was not sent is not guessed:
//!   [`Filter::evaluate`] says so with [`EvalError::NeedsUnchangedColumn`]
//!   unless the rest of the row decides. Such a value is never NULL.

mod check;
mod datetime;
mod eval;
mod like;
mod sql;
mod syntax;
mod value;

#[cfg(test)]
mod tests;

use std::fmt;

/// A column of the source table as the filter sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnType {
    pub name: String,
    /// As `format_type(atttypid, atttypmod)` prints it: `integer`,
    /// `numeric(10,2)`, `character varying(20)`,
    /// `timestamp with time zone`, …
    pub type_name: String,
}

/// One column of a row as pgoutput delivers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cell<'a> {
    Null,
    /// An unchanged TOASTed value, which the server did not send.
    Unchanged,
    /// The value in PostgreSQL's text output form.
    Text(&'a [u8]),
}

/// A compiled filter: checked against the table's columns, cheap to
/// evaluate (no allocation per row) and to share between threads.
#[derive(Clone, Debug)]
pub struct Filter {
    expression: String,
    root: check::Node,
    columns_used: Vec<usize>,
    names: Vec<String>,
}

impl Filter {
    /// Checks only the syntax, which needs no column types: what the
    /// config can tell before any database is reached.
    pub fn check_syntax(expression: &str) -> Result<(), FilterError> {
        syntax::parse(expression).map(|_| ())
    }

    /// Parses `expression` and checks it against `columns` (the source
    /// table's columns, in the order rows will give them).
    pub fn compile(expression: &str, columns: &[ColumnType]) -> Result<Filter, FilterError> {
        let ast = syntax::parse(expression)?;
        let checked = check::check(expression, &ast, columns)?;
        Ok(Filter {
            expression: expression.to_owned(),
            root: checked.root,
            columns_used: checked.used,
            names: columns.iter().map(|c| c.name.clone()).collect(),
        })
    }

    /// Whether a row passes. `row(i)` gives the cell of column `i`, in the
    /// order of the columns the filter was compiled with; it is called only
    /// for columns in [`Filter::columns_used`], and may be called more than
    /// once for one column.
    ///
    /// `Err(NeedsUnchangedColumn(i))` means the answer depends on a column
    /// the server did not send (unchanged TOAST): the caller fetches the
    /// unsent columns among [`Filter::columns_used`] (from the target) and
    /// asks again.
    pub fn evaluate<'r>(&self, row: impl Fn(usize) -> Cell<'r>) -> Result<bool, EvalError> {
        match eval::eval(&self.root, &row)? {
            eval::Tv::True => Ok(true),
            eval::Tv::False | eval::Tv::Null => Ok(false),
            eval::Tv::Unsent(column) => Err(EvalError::NeedsUnchangedColumn(column)),
        }
    }

    /// [`Filter::evaluate`] for a row held as a slice; a column past its end
    /// counts as not sent.
    pub fn evaluate_cells(&self, row: &[Cell<'_>]) -> Result<bool, EvalError> {
        self.evaluate(|i| row.get(i).copied().unwrap_or(Cell::Unchanged))
    }

    /// The columns the filter reads, as indexes into the compile-time
    /// columns, sorted and without repeats.
    pub fn columns_used(&self) -> &[usize] {
        &self.columns_used
    }

    /// An equivalent PostgreSQL condition for `WHERE`, for the initial copy.
    pub fn to_sql(&self) -> String {
        sql::render(&self.root, &self.names)
    }

    /// The expression as written in the config.
    pub fn expression(&self) -> &str {
        &self.expression
    }
}

/// Why a filter does not compile, and where in the expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterError {
    pub kind: FilterErrorKind,
    /// Byte offset in the expression.
    pub offset: usize,
    /// 1-based line and character column of `offset`, for people.
    pub line: usize,
    pub column: usize,
}

impl FilterError {
    fn new(expression: &str, offset: usize, kind: FilterErrorKind) -> FilterError {
        let before = expression.get(..offset).unwrap_or(expression);
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        FilterError {
            kind,
            offset,
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "where: {} (at {}:{})", self.kind, self.line, self.column)?;
        if let FilterErrorKind::UnknownColumn { columns, .. } = &self.kind {
            write!(f, "; columns: {}", columns.join(", "))?;
        }
        Ok(())
    }
}

impl std::error::Error for FilterError {}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterErrorKind {
    #[error("syntax error: expected {expected}, found {found}")]
    Syntax { expected: String, found: String },
    #[error("expression nested too deeply (more than {limit} levels of parentheses or NOT)")]
    TooDeep { limit: usize },
    #[error("column \"{name}\" does not exist")]
    UnknownColumn { name: String, columns: Vec<String> },
    #[error("column \"{column}\" has type {type_name}, which a filter can only test with IS [NOT] NULL")]
    UnsupportedType { column: String, type_name: String },
    #[error("{literal} is not a valid value for column \"{column}\" of type {type_name}: {reason}")]
    InvalidLiteral { literal: String, column: String, type_name: String, reason: String },
    #[error("cannot compare {left} with {right}")]
    Incompatible { left: String, right: String },
    #[error("{what} is not a condition; use a boolean column or a comparison")]
    NotBoolean { what: String },
    #[error("LIKE and ILIKE need a text column, but column \"{column}\" has type {type_name}")]
    LikeNeedsText { column: String, type_name: String },
    #[error("invalid LIKE pattern: {reason}")]
    InvalidPattern { reason: String },
    /// A column or value where the grammar allows it but the filter cannot
    /// use it (`1 = 2`, `x IN (y)`, `x LIKE y`).
    #[error("{0}")]
    Misplaced(String),
}

/// Why a row could not be judged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// The answer depends on this column, whose unchanged TOAST value was
    /// not sent; look it up (on the target) and evaluate again.
    #[error("the filter needs column {0}, whose unchanged value was not sent")]
    NeedsUnchangedColumn(usize),
    /// A value that is not valid text of its type: not something the server
    /// sends (the value itself is left out of the message on purpose).
    #[error("column {column} holds text that is not a valid {expected} value")]
    InvalidValue { column: usize, expected: &'static str },
}
