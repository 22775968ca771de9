//! The filter as a whole: compile, evaluate, render.

use proptest::prelude::*;

use super::*;

/// One column of each kind the filter knows, and one it does not.
const TABLE: &[(&str, &str)] = &[
    ("id", "integer"),
    ("qty", "smallint"),
    ("big", "bigint"),
    ("price", "numeric(10,2)"),
    ("score", "double precision"),
    ("ratio", "real"),
    ("name", "text"),
    ("code", "character varying(20)"),
    ("country", "character(2)"),
    ("deleted", "boolean"),
    ("signup", "date"),
    ("seen", "timestamp without time zone"),
    ("at", "timestamp with time zone"),
    ("opens", "time without time zone"),
    ("uid", "uuid"),
    ("doc", "jsonb"),
    ("Mixed Case", "text"),
];

fn columns() -> Vec<ColumnType> {
    TABLE.iter().map(|(name, ty)| ColumnType { name: (*name).into(), type_name: (*ty).into() }).collect()
}

fn index(name: &str) -> usize {
    TABLE.iter().position(|(n, _)| *n == name).unwrap()
}

fn compile(expression: &str) -> Filter {
    Filter::compile(expression, &columns()).unwrap_or_else(|e| panic!("{expression}: {e}"))
}

fn compile_error(expression: &str) -> FilterError {
    Filter::compile(expression, &columns()).expect_err(expression)
}

/// Evaluates on a row given as (column, text); other columns are NULL.
fn eval(expression: &str, values: &[(&str, &str)]) -> Result<bool, EvalError> {
    let cells: Vec<(usize, Cell<'_>)> =
        values.iter().map(|(n, v)| (index(n), Cell::Text(v.as_bytes()))).collect();
    eval_cells(expression, &cells)
}

fn eval_cells(expression: &str, cells: &[(usize, Cell<'_>)]) -> Result<bool, EvalError> {
    let mut row = vec![Cell::Null; TABLE.len()];
    for (i, cell) in cells {
        row[*i] = *cell;
    }
    compile(expression).evaluate_cells(&row)
}

fn passes(expression: &str, values: &[(&str, &str)]) -> bool {
    eval(expression, values).unwrap_or_else(|e| panic!("{expression}: {e}"))
}

#[test]
fn the_readme_example_selects_rows() {
    let filter = "country IN ('DE', 'AT') AND NOT deleted AND signup >= '2024-01-01'";
    assert!(passes(filter, &[("country", "DE"), ("deleted", "f"), ("signup", "2024-03-01")]));
    assert!(!passes(filter, &[("country", "FR"), ("deleted", "f"), ("signup", "2024-03-01")]));
    assert!(!passes(filter, &[("country", "AT"), ("deleted", "t"), ("signup", "2024-03-01")]));
    assert!(!passes(filter, &[("country", "AT"), ("deleted", "f"), ("signup", "2023-12-31")]));
    assert!(!passes(filter, &[("country", "AT"), ("signup", "2024-03-01")]), "NULL deleted is not a match");
}

#[test]
fn null_follows_three_valued_logic() {
    let null = &[][..];
    let t = &[("deleted", "t")][..];
    assert!(!passes("deleted", null));
    assert!(!passes("NOT deleted", null));
    assert!(passes("deleted IS NULL", null));
    assert!(passes("deleted IS UNKNOWN", null));
    assert!(passes("deleted IS NOT TRUE AND deleted IS NOT FALSE", null));
    assert!(passes("deleted OR TRUE", null), "NULL OR TRUE is TRUE");
    assert!(passes("NOT (deleted AND FALSE)", null), "NULL AND FALSE is FALSE");
    assert!(!passes("NOT (deleted OR FALSE)", null), "NULL OR FALSE is NULL");
    assert!(!passes("NOT (deleted AND TRUE)", null));
    assert!(passes("(deleted AND TRUE) IS NULL", null));
    assert!(passes("deleted IS TRUE AND deleted = TRUE AND deleted <> 'no'", t));
    assert!(!passes("id = NULL", &[("id", "1")]));
    assert!(!passes("NOT (id = NULL)", &[("id", "1")]));
    assert!(!passes("NULL", null));
    assert!(passes("NULL IS NULL", null));
}

#[test]
fn in_lists_with_null_are_null_unless_they_match() {
    assert!(passes("id IN (1, NULL)", &[("id", "1")]));
    assert!(!passes("id IN (1, NULL)", &[("id", "2")]));
    assert!(!passes("NOT (id IN (1, NULL))", &[("id", "2")]));
    assert!(!passes("id NOT IN (1, NULL)", &[("id", "2")]));
    assert!(passes("id NOT IN (1, 3)", &[("id", "2")]));
    assert!(!passes("id NOT IN (1, 3)", &[]));
    assert!(passes("code IN ('a', 'ü')", &[("code", "ü")]));
}

#[test]
fn integers_compare_with_every_operator() {
    let row = &[("id", "5")][..];
    for (expression, expected) in [
        ("id = 5", true),
        ("id <> 5", false),
        ("id != 4", true),
        ("id < 6", true),
        ("id <= 5", true),
        ("id > 5", false),
        ("id >= 5", true),
        ("5 = id", true),
        ("6 > id", true),
        ("id = '5'", true),
        ("id = -5", false),
        ("id BETWEEN 5 AND 5", true),
        ("id BETWEEN 6 AND 4", false),
        ("id NOT BETWEEN 1 AND 4", true),
        ("id > 4.5", true),
        ("id < 5.0001", true),
        ("id = 5.0", true),
        ("id < 1e3", true),
        ("id < 99999999999999999999", true),
    ] {
        assert_eq!(passes(expression, row), expected, "{expression}");
    }
    assert!(passes("qty < 100000 AND qty > -100000", &[("qty", "-32768")]), "beyond smallint");
    assert!(passes("big = -9223372036854775808", &[("big", "-9223372036854775808")]));
    assert!(passes("id < big AND qty = id", &[("id", "1"), ("qty", "1"), ("big", "2")]));
    assert!(passes("id < price", &[("id", "1"), ("price", "1.01")]), "integer meets numeric");
}

#[test]
fn numerics_compare_exactly_with_nan_above_infinity() {
    assert!(passes("price = 0.1", &[("price", "0.10")]));
    assert!(passes("price > 0.1", &[("price", "0.1000000000000000000000001")]));
    assert!(passes("price < -99999999999999999999.5", &[("price", "-99999999999999999999.51")]));
    assert!(passes("price > 'Infinity' AND price = 'NaN'", &[("price", "NaN")]));
    assert!(passes("price < 'Infinity'", &[("price", "99999999")]));
    assert!(passes("price = '-inf' AND price < -1e100", &[("price", "-Infinity")]));
    assert!(passes("price = 1.5e2", &[("price", "150.00")]));
}

#[test]
fn floats_order_nan_last_and_reals_at_their_own_precision() {
    assert!(passes("score > 'Infinity' AND score = 'NaN'", &[("score", "NaN")]));
    assert!(passes("score = 0", &[("score", "-0")]));
    assert!(passes("score < 1e300 AND score > 1e299", &[("score", "5e+299")]));
    assert!(passes("ratio = 0.1", &[("ratio", "0.1")]), "0.1 as a real equals the real 0.1");
    assert!(!passes("score = 0.1", &[("score", "0.1000000000000001")]));
    assert!(passes("ratio < score", &[("ratio", "1.5"), ("score", "2")]));
    assert!(passes("score = '-Infinity'", &[("score", "-Infinity")]));
}

#[test]
fn text_compares_by_code_point_and_character_ignores_padding() {
    assert!(passes("name < 'a'", &[("name", "Z")]), "upper case sorts first by byte");
    assert!(passes("name > 'z'", &[("name", "é")]), "non-ASCII after ASCII");
    assert!(passes("name = 'Zürich' AND name <> 'zürich'", &[("name", "Zürich")]));
    assert!(passes("name >= 'ab' AND name < 'abc'", &[("name", "ab")]));
    assert!(passes("country = 'DE'", &[("country", "DE")]));
    assert!(
        passes("country = 'D ' AND country = 'D'", &[("country", "D ")]),
        "char(n) padding does not count"
    );
    assert!(passes("country < 'D!'", &[("country", "D ")]), "padding is not a space either");
    assert!(passes("code = name", &[("code", "x"), ("name", "x")]));
    assert!(
        passes("country = code", &[("country", "ab"), ("code", "ab ")]),
        "character meets varchar as character"
    );
    assert!(!passes("country = name", &[("country", "ab"), ("name", "ab ")]), "character meets text as text");
    assert!(passes("country < name", &[("country", "ab"), ("name", "ab ")]));
    assert!(passes("name = 'it''s'", &[("name", "it's")]));
    assert!(passes("\"Mixed Case\" = 'x'", &[("Mixed Case", "x")]));
}

#[test]
fn like_matches_wildcards_escapes_and_characters() {
    assert!(passes("name LIKE 'Zü%'", &[("name", "Zürich")]));
    assert!(passes("name LIKE 'Z_rich'", &[("name", "Zürich")]));
    assert!(!passes("name LIKE 'z%'", &[("name", "Zürich")]));
    assert!(passes("name ILIKE 'z%H'", &[("name", "Zürich")]));
    assert!(!passes("name ILIKE 'ZÜRICH'", &[("name", "Zürich")]), "ILIKE folds ASCII only");
    assert!(passes("name LIKE '100\\%'", &[("name", "100%")]));
    assert!(!passes("name LIKE '100\\%'", &[("name", "1000")]));
    assert!(passes("name NOT LIKE 'a\\_b'", &[("name", "axb")]));
    assert!(passes("name NOT ILIKE 'A%'", &[("name", "b")]));
    assert!(!passes("name NOT LIKE '%'", &[]), "NULL NOT LIKE is NULL");
    assert!(!passes("name LIKE NULL", &[("name", "x")]));
    assert!(passes("country LIKE 'D_'", &[("country", "D ")]), "LIKE sees char(n) padding");
    assert!(!passes("country LIKE 'D'", &[("country", "D ")]));
}

#[test]
fn dates_and_timestamps_compare_as_time_with_infinities() {
    assert!(passes("signup >= '2024-01-01'", &[("signup", "2024-01-01")]));
    assert!(passes("signup > '9999-12-31'", &[("signup", "10000-01-01")]), "not as text");
    assert!(passes("signup > '2024-01-01' AND signup = 'infinity'", &[("signup", "infinity")]));
    assert!(passes("signup < '0001-01-01 BC' AND signup = '-infinity'", &[("signup", "-infinity")]));
    assert!(passes("signup < '0001-01-01'", &[("signup", "0044-03-15 BC")]));
    assert!(passes("seen < '2024-01-02T00:00:00'", &[("seen", "2024-01-01 23:59:59.999999")]));
    assert!(passes("seen BETWEEN '2024-01-01' AND '2024-01-02'", &[("seen", "2024-01-01 12:00:00")]));
    assert!(passes("signup < seen", &[("signup", "2024-01-01"), ("seen", "2024-01-01 00:00:00.000001")]));
    assert!(passes("signup = seen", &[("signup", "infinity"), ("seen", "infinity")]));
}

#[test]
fn timestamps_with_time_zone_compare_as_instants() {
    let row = &[("at", "2024-01-01 21:34:05+00")][..];
    assert!(passes("at = '2024-01-02 03:04:05+05:30'", row));
    assert!(passes("at = '2024-01-01T21:34:05Z'", row));
    assert!(passes("at = '2024-01-01 21:34:05'", row), "no offset in a literal means UTC");
    assert!(passes("at > '2024-01-01 22:00:00+01'", row));
    assert!(
        passes("at > '2024-01-01 16:00:00-05' AND at < '2024-01-01 17:00:00-05'", row),
        "21:00 and 22:00 UTC"
    );
    assert!(passes("at > '1800-01-01 00:00:00+00'", &[("at", "1800-01-01 00:19:33+00:19:32")]));
    assert!(passes("at >= 'infinity'", &[("at", "infinity")]));
}

#[test]
fn times_and_uuids_compare_as_values() {
    assert!(passes("opens < '09:00' AND opens >= '08:30:00.5'", &[("opens", "08:30:00.5")]));
    assert!(passes("opens = '24:00:00'", &[("opens", "24:00:00")]));
    let uid = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
    assert!(passes("uid = 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'", &[("uid", uid)]));
    assert!(passes("uid > '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a10}'", &[("uid", uid)]));
    assert!(passes("uid < 'b0000000-0000-0000-0000-000000000000'", &[("uid", uid)]));
}

#[test]
fn other_types_can_be_tested_for_null_only() {
    assert!(passes("doc IS NULL", &[]));
    assert!(passes("doc IS NOT NULL", &[("doc", "{}")]));
    let e = compile_error("doc = '{}'");
    assert_eq!(
        e.to_string(),
        "where: column \"doc\" has type jsonb, which a filter can only test with IS [NOT] NULL (at 1:1)"
    );
}

#[test]
fn unsent_columns_are_asked_for_only_when_they_matter() {
    let (name, qty) = (index("name"), index("qty"));
    let unsent = (name, Cell::Unchanged);
    let q = |v: &'static str| (qty, Cell::Text(v.as_bytes()));
    assert_eq!(eval_cells("name = 'x' AND qty = 1", &[unsent, q("2")]), Ok(false));
    assert_eq!(
        eval_cells("name = 'x' AND qty = 1", &[unsent, q("1")]),
        Err(EvalError::NeedsUnchangedColumn(name))
    );
    assert_eq!(eval_cells("name = 'x' OR qty = 1", &[unsent, q("1")]), Ok(true));
    assert_eq!(
        eval_cells("name = 'x' OR qty = 1", &[unsent, q("2")]),
        Err(EvalError::NeedsUnchangedColumn(name))
    );
    assert_eq!(eval_cells("NOT (name LIKE 'x%')", &[unsent]), Err(EvalError::NeedsUnchangedColumn(name)));
    assert_eq!(eval_cells("name IS NULL", &[unsent]), Ok(false), "unchanged TOAST is never NULL");
    assert_eq!(eval_cells("name IS NOT NULL", &[unsent]), Ok(true));
    assert_eq!(eval_cells("name = NULL", &[unsent]), Ok(false), "NULL decides without the value");
    assert_eq!(eval_cells("name IN ('a') IS TRUE", &[unsent]), Err(EvalError::NeedsUnchangedColumn(name)));
    assert_eq!(
        eval_cells("deleted", &[(index("deleted"), Cell::Unchanged)]),
        Err(EvalError::NeedsUnchangedColumn(index("deleted")))
    );
    assert_eq!(
        eval_cells("deleted", &[(index("deleted"), Cell::Unchanged)]).unwrap_err().to_string(),
        "the filter needs column 9, whose unchanged value was not sent"
    );
}

#[test]
fn values_that_do_not_parse_are_errors_not_panics() {
    for (expression, column, text, expected) in [
        ("id = 1", "id", "abc", "integer"),
        ("price = 1", "price", "1e5", "numeric"),
        ("score = 1", "score", "", "floating-point"),
        ("deleted", "deleted", "maybe", "boolean"),
        ("signup = '2024-01-01'", "signup", "01/01/2024", "date"),
        ("at = '2024-01-01'", "at", "2024-01-01 00:00:00 CET", "timestamp with time zone"),
        ("uid = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", "uid", "nope", "uuid"),
    ] {
        let got = eval(expression, &[(column, text)]);
        assert_eq!(got, Err(EvalError::InvalidValue { column: index(column), expected }), "{expression}");
    }
    let invalid_utf8 = [(index("name"), Cell::Text(&[0xff, 0xfe][..]))];
    assert_eq!(eval_cells("name LIKE '_%'", &invalid_utf8), Ok(true));
    assert_eq!(eval_cells("name > 'a'", &invalid_utf8), Ok(true));
}

#[test]
fn columns_used_are_sorted_and_unique() {
    let filter = compile("signup > '2024-01-01' AND (id = 1 OR id BETWEEN qty AND 5) AND doc IS NULL");
    assert_eq!(filter.columns_used(), &[index("id"), index("qty"), index("signup"), index("doc")]);
    assert_eq!(compile("TRUE").columns_used(), &[] as &[usize]);
    assert_eq!(compile("deleted").expression(), "deleted");
}

#[test]
fn evaluate_takes_a_closure_or_a_dyn_fn() {
    let filter = compile("id = 7");
    let text = b"7".to_vec();
    let row = |i: usize| if i == 0 { Cell::Text(&text) } else { Cell::Null };
    assert_eq!(filter.evaluate(row), Ok(true));
    let dynamic: &dyn Fn(usize) -> Cell<'static> = &|_| Cell::Text(b"8");
    assert_eq!(filter.evaluate(dynamic), Ok(false));
    assert_eq!(
        filter.evaluate_cells(&[]),
        Err(EvalError::NeedsUnchangedColumn(0)),
        "a short row did not send the rest"
    );
}

/// (expression, 1-based column, message) for every kind of load-time error.
#[test]
fn errors_name_the_problem_and_where_it_is() {
    let cases = [
        ("contry = 'DE'", 1, "column \"contry\" does not exist (at 1:1); columns: id, qty, big, price"),
        ("id = 1 AND \"Name\" = 'x'", 12, "column \"Name\" does not exist"),
        (
            "signup >= 'yesterday'",
            11,
            "'yesterday' is not a valid value for column \"signup\" of type date: expected a date as YYYY-MM-DD",
        ),
        ("signup = '2023-02-29'", 10, "date field out of range"),
        (
            "id = 'abc'",
            6,
            "'abc' is not a valid value for column \"id\" of type integer: expected a whole number",
        ),
        ("qty = '70000'", 7, "out of range for the column's type"),
        ("id = 'five' OR qty = 1", 6, "of type integer"),
        ("price = 'lots'", 9, "of type numeric(10,2): not a number"),
        ("score = 1e999", 9, "out of range"),
        ("ratio = 1e39", 9, "out of range"),
        ("score = 'x'", 9, "expected a number"),
        ("deleted = 'maybe'", 11, "expected true or false"),
        ("deleted = 1", 11, "quoted strings"),
        ("id = TRUE", 6, "TRUE and FALSE compare with boolean columns only"),
        ("name = 5", 8, "values of this type are written as quoted strings"),
        ("seen = '2024-01-01 00:00:00+02'", 8, "a timestamp without time zone takes no offset"),
        ("at = '2024-01-01 00:00:00 Europe/Berlin'", 6, "expected a timestamp"),
        ("seen < '2024-01-01 00:00:00.1234567'", 8, "more than 6 fractional digits"),
        ("opens = '25:00'", 9, "time field out of range"),
        ("uid = 'xyz'", 7, "expected a UUID"),
        ("id = name", 4, "cannot compare column \"id\" (integer) with column \"name\" (text)"),
        (
            "signup < at",
            8,
            "cannot compare column \"signup\" (date) with column \"at\" (timestamp with time zone)",
        ),
        ("id = score", 4, "cannot compare"),
        ("id LIKE '1%'", 1, "LIKE and ILIKE need a text column, but column \"id\" has type integer"),
        ("uid ILIKE 'a%'", 1, "has type uuid"),
        (
            "name LIKE 'abc\\'",
            11,
            "invalid LIKE pattern: a LIKE pattern must not end with the escape character",
        ),
        ("name LIKE code", 11, "the pattern of LIKE must be a quoted string"),
        ("'x' LIKE 'x'", 1, "the left side of LIKE must be a column"),
        ("1 = 1", 3, "a comparison needs a column on at least one side"),
        ("1 IN (1)", 1, "the left side of IN must be a column"),
        ("id IN (1, qty)", 11, "an IN list holds values, not columns"),
        ("id IN (1, 'x')", 11, "'x' is not a valid value"),
        ("qty", 1, "column \"qty\" (smallint) is not a condition; use a boolean column or a comparison"),
        ("NOT qty", 5, "is not a condition"),
        ("qty IS TRUE", 1, "is not a condition"),
        ("'t'", 1, "the value 't' is not a condition"),
        ("deleted AND\n  5", 3, "the value 5 is not a condition"),
        ("doc < 1", 1, "only test with IS [NOT] NULL"),
        ("id = 1 AND doc IN ('x')", 12, "only test with IS [NOT] NULL"),
        ("id BETWEEN 1 AND 'x'", 18, "'x' is not a valid value"),
        (
            "id = 1 AND",
            11,
            "syntax error: expected a column name or a value, found the end of the expression",
        ),
    ];
    for (expression, column, message) in cases {
        let e = compile_error(expression);
        let text = e.to_string();
        assert!(text.starts_with("where: "), "{expression}: {text}");
        assert!(text.contains(message), "{expression}: {text}");
        assert_eq!(e.column, column, "{expression}: {text}");
    }
    let e = compile_error("contry = 'DE'");
    assert_eq!(
        e.to_string(),
        "where: column \"contry\" does not exist (at 1:1); columns: id, qty, big, price, score, ratio, name, code, country, \
         deleted, signup, seen, at, opens, uid, doc, Mixed Case"
    );
    assert_eq!(compile_error("deleted AND\n  5").line, 2);
}

#[test]
fn sql_spells_out_types_quotes_and_collation() {
    let cases = [
        (
            "country IN ('DE', 'AT') AND NOT deleted AND signup >= '2024-01-01'",
            "((\"country\" IN ('DE'::bpchar, 'AT'::bpchar)) AND (NOT \"deleted\") AND (\"signup\" >= '2024-01-01'::date))",
        ),
        (
            "name < 'b' OR name = 'it''s'",
            "((\"name\" < 'b'::text COLLATE \"C\") OR (\"name\" = 'it''s'::text))",
        ),
        (
            "code BETWEEN 'a' AND 'b'",
            "((\"code\" >= 'a'::text COLLATE \"C\") AND (\"code\" <= 'b'::text COLLATE \"C\"))",
        ),
        ("name > code", "(\"name\" > \"code\" COLLATE \"C\")"),
        ("name = code", "(\"name\" = \"code\" COLLATE \"C\")"),
        ("price > 12.345", "(\"price\" > '12.345'::numeric)"),
        ("price = 'NaN'", "(\"price\" = 'NaN'::numeric)"),
        ("qty > 1.5 OR qty < 100000", "((\"qty\" > '1.5'::numeric) OR (\"qty\" < '100000'::numeric))"),
        ("qty IN (1, 2.5)", "(\"qty\" IN ('1'::numeric, '2.5'::numeric))"),
        ("id NOT IN (1, NULL)", "(\"id\" NOT IN ('1'::integer, NULL))"),
        ("big = 1e3", "(\"big\" = '1000'::bigint)"),
        (
            "ratio = 0.1 AND score <> 'inf'",
            "((\"ratio\" = '0.1'::real) AND (\"score\" <> 'Infinity'::double precision))",
        ),
        ("at > '2024-01-02 03:04:05+05:30'", "(\"at\" > '2024-01-01 21:34:05+00'::timestamp with time zone)"),
        (
            "seen <= '2024-01-02T03:04:05.5'",
            "(\"seen\" <= '2024-01-02 03:04:05.5'::timestamp without time zone)",
        ),
        ("signup < '-infinity'", "(\"signup\" < '-infinity'::date)"),
        ("opens = '8:30'", "(\"opens\" = '08:30:00'::time without time zone)"),
        (
            "uid = '{A0EEBC999C0B4EF8BB6D6BB9BD380A11}'",
            "(\"uid\" = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid)",
        ),
        ("deleted = 'yes' IS NOT FALSE", "((\"deleted\" = 'true'::boolean) IS NOT FALSE)"),
        (
            "name LIKE 'a\\%' AND name NOT ILIKE 'x'",
            "((\"name\" LIKE E'a\\\\%'::text COLLATE \"C\") AND (\"name\" NOT ILIKE 'x'::text COLLATE \"C\"))",
        ),
        (
            "\"Mixed Case\" IS NOT NULL AND doc IS NULL",
            "((\"Mixed Case\" IS NOT NULL) AND (\"doc\" IS NULL))",
        ),
        ("NULL OR FALSE OR id = NULL", "(NULL::boolean OR FALSE OR (\"id\" = NULL))"),
        ("(id = 1) IS UNKNOWN", "((\"id\" = '1'::integer) IS UNKNOWN)"),
        ("country = 'D  '", "(\"country\" = 'D'::bpchar)"),
    ];
    for (expression, sql) in cases {
        assert_eq!(compile(expression).to_sql(), sql, "{expression}");
    }
}

/// Comparison trees over three integer columns, for checking evaluation
/// against plain Rust.
#[derive(Clone, Debug)]
enum Tree {
    Compare(usize, &'static str, Operand),
    Between(usize, i64, i64, bool),
    In(usize, Vec<Option<i64>>, bool),
    IsNull(usize, bool),
    Not(Box<Tree>),
    And(Box<Tree>, Box<Tree>),
    Or(Box<Tree>, Box<Tree>),
}

#[derive(Clone, Debug)]
enum Operand {
    Literal(i64),
    Column(usize),
    Null,
}

const INT_COLUMNS: [&str; 3] = ["a", "b", "c"];
const INT_TYPES: [&str; 3] = ["bigint", "integer", "smallint"];

fn literal() -> impl Strategy<Value = i64> {
    prop_oneof![8 => -5i64..5, 1 => any::<i64>(), 1 => Just(i64::MIN), 1 => Just(40_000)]
}

fn tree() -> impl Strategy<Value = Tree> {
    let column = 0usize..3;
    let op = prop_oneof![Just("="), Just("<>"), Just("!="), Just("<"), Just("<="), Just(">"), Just(">=")];
    let operand = prop_oneof![4 => literal().prop_map(Operand::Literal), 2 => (0usize..3).prop_map(Operand::Column), 1 => Just(Operand::Null)];
    let leaf = prop_oneof![
        4 => (column.clone(), op, operand).prop_map(|(c, o, r)| Tree::Compare(c, o, r)),
        1 => (column.clone(), literal(), literal(), any::<bool>()).prop_map(|(c, l, h, n)| Tree::Between(c, l, h, n)),
        1 => (column.clone(), prop::collection::vec(prop::option::weighted(0.9, literal()), 1..4), any::<bool>())
            .prop_map(|(c, l, n)| Tree::In(c, l, n)),
        1 => (column, any::<bool>()).prop_map(|(c, n)| Tree::IsNull(c, n)),
    ];
    leaf.prop_recursive(4, 24, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|t| Tree::Not(Box::new(t))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Tree::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner).prop_map(|(a, b)| Tree::Or(Box::new(a), Box::new(b))),
        ]
    })
}

fn render(tree: &Tree) -> String {
    let not = |negated: bool| if negated { "NOT " } else { "" };
    match tree {
        Tree::Compare(c, op, Operand::Literal(n)) => format!("{} {op} {n}", INT_COLUMNS[*c]),
        Tree::Compare(c, op, Operand::Column(d)) => format!("{} {op} {}", INT_COLUMNS[*c], INT_COLUMNS[*d]),
        Tree::Compare(c, op, Operand::Null) => format!("{} {op} NULL", INT_COLUMNS[*c]),
        Tree::Between(c, low, high, negated) => {
            format!("{} {}BETWEEN {low} AND {high}", INT_COLUMNS[*c], not(*negated))
        }
        Tree::In(c, list, negated) => {
            let items: Vec<String> =
                list.iter().map(|v| v.map_or("NULL".into(), |n| n.to_string())).collect();
            format!("{} {}IN ({})", INT_COLUMNS[*c], not(*negated), items.join(", "))
        }
        Tree::IsNull(c, negated) => format!("{} IS {}NULL", INT_COLUMNS[*c], not(*negated)),
        Tree::Not(t) => format!("NOT ({})", render(t)),
        Tree::And(a, b) => format!("({}) AND ({})", render(a), render(b)),
        Tree::Or(a, b) => format!("({}) OR ({})", render(a), render(b)),
    }
}

/// SQL semantics written out directly, with `Option<bool>` as the
/// three-valued boolean.
fn direct(tree: &Tree, row: &[Option<i64>]) -> Option<bool> {
    let cmp = |op: &str, a: i64, b: i64| match op {
        "=" => a == b,
        "<>" | "!=" => a != b,
        "<" => a < b,
        "<=" => a <= b,
        ">" => a > b,
        _ => a >= b,
    };
    let not = |v: Option<bool>, negated: bool| v.map(|b| b != negated);
    match tree {
        Tree::Compare(c, op, rhs) => {
            let rhs = match rhs {
                Operand::Literal(n) => Some(*n),
                Operand::Column(d) => row[*d],
                Operand::Null => None,
            };
            Some(cmp(op, row[*c]?, rhs?))
        }
        Tree::Between(c, low, high, negated) => not(row[*c].map(|v| *low <= v && v <= *high), *negated),
        Tree::In(c, list, negated) => {
            let v = row[*c]?;
            let found = if list.contains(&Some(v)) {
                Some(true)
            } else if list.contains(&None) {
                None
            } else {
                Some(false)
            };
            not(found, *negated)
        }
        Tree::IsNull(c, negated) => Some(row[*c].is_none() != *negated),
        Tree::Not(t) => direct(t, row).map(|b| !b),
        Tree::And(a, b) => match (direct(a, row), direct(b, row)) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        },
        Tree::Or(a, b) => match (direct(a, row), direct(b, row)) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        },
    }
}

fn int_row() -> impl Strategy<Value = Vec<Option<i64>>> {
    let value =
        |range: std::ops::Range<i64>| prop::option::weighted(0.85, prop_oneof![4 => -5i64..5, 1 => range]);
    (
        value(i64::MIN..i64::MAX),
        value(i32::MIN.into()..i32::MAX.into()),
        value(i16::MIN.into()..i16::MAX.into()),
    )
        .prop_map(|(a, b, c)| vec![a, b, c])
}

/// Pieces of the grammar, so random strings get past the lexer often.
fn token_soup() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("id"),
        Just("name"),
        Just("deleted"),
        Just("signup"),
        Just("doc"),
        Just("\"Mixed Case\""),
        Just("nope"),
        Just("AND"),
        Just("OR"),
        Just("NOT"),
        Just("IN"),
        Just("IS"),
        Just("NULL"),
        Just("TRUE"),
        Just("LIKE"),
        Just("ILIKE"),
        Just("BETWEEN"),
        Just("UNKNOWN"),
        Just("("),
        Just(")"),
        Just(","),
        Just("="),
        Just("<>"),
        Just("<"),
        Just(">="),
        Just("-"),
        Just("1"),
        Just("-2.5"),
        Just("1e5"),
        Just("'x'"),
        Just("'2024-01-01'"),
        Just("'%\\'"),
        Just("'"),
        Just("\""),
        Just("ü"),
    ];
    prop::collection::vec(piece, 0..16).prop_map(|pieces| pieces.join(" "))
}

proptest! {
    #[test]
    fn parsing_never_panics(expression in "\\PC{0,64}") {
        let _ = Filter::compile(&expression, &columns());
    }

    #[test]
    fn compiling_and_evaluating_grammar_soup_never_panics(expression in token_soup(), value in "\\PC{0,12}") {
        if let Ok(filter) = Filter::compile(&expression, &columns()) {
            let _ = filter.to_sql();
            let _ = filter.evaluate(|_| Cell::Text(value.as_bytes()));
            let _ = filter.evaluate(|_| Cell::Unchanged);
        }
    }

    #[test]
    fn integer_comparisons_agree_with_plain_rust(tree in tree(), row in int_row()) {
        let columns: Vec<ColumnType> = INT_COLUMNS.iter().zip(INT_TYPES)
            .map(|(name, ty)| ColumnType { name: (*name).into(), type_name: ty.into() })
            .collect();
        let expression = render(&tree);
        let filter = Filter::compile(&expression, &columns).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let texts: Vec<Option<String>> = row.iter().map(|v| v.map(|n| n.to_string())).collect();
        let got = filter.evaluate(|i| texts[i].as_deref().map_or(Cell::Null, |t| Cell::Text(t.as_bytes())));
        prop_assert_eq!(got, Ok(direct(&tree, &row) == Some(true)), "{}", expression);
    }
}
