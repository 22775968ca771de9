//! Whether a source column's values can land in a target column of another
//! type. One rule for `ferry validate`, for a pipeline's start and for a
//! column retyped on the source while a pipeline runs.
//!
//! Values cross as text: the target parses what the source printed with its
//! own column type's input function. So the same `format_type` on both sides
//! always works; so does anything into a string type, and a string into
//! anything may work (`'42'` is a valid integer, `'abc'` is not). Types of
//! one category (`pg_type.typcategory`: numbers, date/times, …) may work
//! (`integer` → `bigint` always, `bigint` → `integer` for small values only),
//! which only the data can tell. Types of two other categories cannot:
//! no `boolean` prints as a valid `integer`, no `timestamp` as a `uuid`.
//! Some pairs take every value but store it changed, without an error
//! (`timestamptz` into `timestamp` drops the offset, `numeric(12,4)` into
//! `numeric(12,2)` rounds): those are refused too, as a replica that
//! silently differs is worse than one that stops.

use crate::pg::catalog::Column;

/// `pg_type.typcategory` of the string types (`text`, `varchar`, `char`, …).
const STRING: char = 'S';

/// How well a source column's values fit a target column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeFit {
    /// The same type.
    Same,
    /// Some values may be refused by the target (worth a warning).
    MayFail,
    /// No value of the source type is valid input for the target type.
    Incompatible,
    /// Values are taken but stored changed, as the reason says.
    Lossy(&'static str),
}

pub fn type_fit(source: &Column, target: &Column) -> TypeFit {
    // Before the names: a domain of one name may be over other types on
    // the two sides.
    if let Some(loss) = loss(source, target) {
        TypeFit::Lossy(loss)
    } else if source.type_name == target.type_name {
        TypeFit::Same
    } else if source.category == target.category || source.category == STRING || target.category == STRING {
        TypeFit::MayFail
    } else {
        TypeFit::Incompatible
    }
}

/// `pg_type.typcategory` of array types.
const ARRAY: char = 'A';

/// Type oids of the built-in types whose pairs can lose what a value says.
mod oid {
    pub const CHAR: u32 = 18;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const INT8: u32 = 20;
    pub const JSON: u32 = 114;
    pub const JSONB: u32 = 3802;
    pub const NUMERIC: u32 = 1700;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMETZ: u32 = 1266;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
}

/// What a target column of another type (or a narrower modifier) would
/// silently change in every value, if anything. Domains and arrays count
/// as the types of their values (see [`Column::base_type`]).
fn loss(source: &Column, target: &Column) -> Option<&'static str> {
    use oid::*;
    if (source.category == ARRAY) != (target.category == ARRAY) {
        return None;
    }
    match (source.base_type.0, target.base_type.0) {
        (JSON, JSONB) => {
            Some("the target keeps neither key order, spacing nor all of a duplicated key's values")
        }
        (source, CHAR) if source != CHAR => Some("the target keeps the first byte only"),
        (TIMESTAMPTZ, TIMESTAMP | TIME) | (TIMETZ, TIME) => Some("the target ignores the time zone offset"),
        (TIMESTAMPTZ | TIMESTAMP, DATE) => Some("the target keeps the date only"),
        (TIMESTAMPTZ | TIMESTAMP, TIMETZ) | (TIMESTAMP, TIME) => {
            Some("the target keeps the time of day only")
        }
        (INT4 | INT8 | NUMERIC | FLOAT8, FLOAT4) | (INT8 | NUMERIC, FLOAT8) => {
            Some("the target rounds to fewer significant digits")
        }
        (INT2 | INT4 | INT8 | NUMERIC | FLOAT4 | FLOAT8, NUMERIC)
            if numeric_scale(target) < numeric_scale(source) =>
        {
            Some("the target rounds to fewer decimal places")
        }
        (INTERVAL, INTERVAL)
            if interval_fields(target) != INTERVAL_FULL_RANGE
                && interval_fields(target) != interval_fields(source) =>
        {
            Some("the target keeps fewer of the interval's fields")
        }
        _ if fewer_fractional_digits(source, target) => {
            Some("the target rounds to fewer fractional digits of a second")
        }
        _ => None,
    }
}

/// A numeric column's scale (negative from PostgreSQL 15: rounded to tens,
/// hundreds, …), or `i32::MAX` for an unconstrained one (any scale kept).
/// A float's text keeps every decimal place it has, as an unconstrained
/// numeric does; an integer has none.
fn numeric_scale(column: &Column) -> i32 {
    match column.base_type {
        (oid::INT2 | oid::INT4 | oid::INT8, _) => 0,
        // The low 11 bits of the modifier, sign-extended.
        (oid::NUMERIC, modifier) if modifier >= 4 => (((modifier - 4) & 0x7ff) ^ 1024) - 1024,
        _ => i32::MAX,
    }
}

/// The fields an interval column keeps, as the mask of its modifier
/// (`interval year`, `interval day to second`, …).
fn interval_fields(column: &Column) -> i32 {
    let modifier = column.base_type.1;
    if modifier < 0 { INTERVAL_FULL_RANGE } else { (modifier >> 16) & INTERVAL_FULL_RANGE }
}

/// An interval modifier's mask of every field: a plain `interval`.
const INTERVAL_FULL_RANGE: i32 = 0x7fff;

/// Whether `target` keeps fewer fractional digits of a second than
/// `source`, both being time, timestamp or interval columns (into any
/// other type, text say, nothing is rounded).
fn fewer_fractional_digits(source: &Column, target: &Column) -> bool {
    matches!((fractional_digits(source), fractional_digits(target)), (Some(s), Some(t)) if t < s)
}

/// The fractional digits of a second a time, timestamp or interval column
/// keeps (6 without a modifier), or `None` for any other type.
fn fractional_digits(column: &Column) -> Option<i32> {
    use oid::*;
    const ALL: i32 = 6;
    let (type_oid, modifier) = column.base_type;
    match type_oid {
        TIME | TIMETZ | TIMESTAMP | TIMESTAMPTZ => Some(if modifier < 0 { ALL } else { modifier }),
        INTERVAL => Some(match modifier & 0xffff {
            _ if modifier < 0 => ALL,
            0xffff => ALL,
            precision => precision,
        }),
        _ => None,
    }
}

/// The warning for a pair that [`TypeFit::MayFail`].
pub fn may_fail_warning(source: &Column, target: &Column) -> String {
    format!(
        "column {}: source type {}, target type {}; values cross as text, so every value must also be valid {} input",
        crate::pg::names::quote_ident_if_needed(&source.name),
        source.type_name,
        target.type_name,
        target.type_name
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(type_name: &str, category: char) -> Column {
        typed(type_name, category, 0, -1)
    }

    fn typed(type_name: &str, category: char, type_oid: u32, type_modifier: i32) -> Column {
        Column {
            name: "c".into(),
            type_name: type_name.into(),
            type_oid,
            type_modifier,
            base_type: (type_oid, type_modifier),
            category,
            is_key: false,
            toastable: false,
        }
    }

    /// A column of a domain (or an array, `category` 'A') whose values
    /// have type `base`.
    fn over(type_name: &str, category: char, base: &Column) -> Column {
        Column { base_type: base.base_type, ..typed(type_name, category, 90_000, -1) }
    }

    #[test]
    fn domains_and_arrays_lose_what_their_values_would() {
        let lossy = |a: &Column, b: &Column| matches!(type_fit(a, b), TypeFit::Lossy(_));
        let numeric = |name, scale: i32| typed(name, 'N', oid::NUMERIC, ((12 << 16) | (scale & 0x7ff)) + 4);
        let (n12_4, n12_2) = (numeric("numeric(12,4)", 4), numeric("numeric(12,2)", 2));
        assert!(lossy(&n12_4, &over("money2", 'N', &n12_2)));
        assert!(!lossy(&over("money2", 'N', &n12_2), &n12_4));
        assert!(lossy(&over("numeric(12,4)[]", 'A', &n12_4), &over("numeric(12,2)[]", 'A', &n12_2)));
        let tz = typed("timestamp with time zone", 'D', oid::TIMESTAMPTZ, -1);
        let ts = typed("timestamp without time zone", 'D', oid::TIMESTAMP, -1);
        assert!(lossy(&over("timestamptz[]", 'A', &tz), &over("timestamp[]", 'A', &ts)));
        assert!(lossy(&tz, &over("local_time", 'D', &ts)));
        let cents = |base: &Column| over("cents", 'N', base);
        assert!(lossy(&cents(&n12_4), &cents(&n12_2)), "one name, other types underneath");
        assert_eq!(type_fit(&cents(&n12_2), &cents(&n12_2)), TypeFit::Same);
        assert_eq!(
            type_fit(&over("numeric(12,4)[]", 'A', &n12_4), &n12_2),
            TypeFit::Incompatible,
            "an array into a scalar is another matter"
        );
    }

    #[test]
    fn integers_into_a_negative_scale_json_into_jsonb_and_anything_into_char_are_lossy() {
        let lossy = |a: &Column, b: &Column| matches!(type_fit(a, b), TypeFit::Lossy(_));
        let hundreds = typed("numeric(5,-2)", 'N', oid::NUMERIC, ((5 << 16) | (-2 & 0x7ff)) + 4);
        for (name, oid) in [("smallint", oid::INT2), ("integer", oid::INT4), ("bigint", oid::INT8)] {
            assert!(lossy(&typed(name, 'N', oid, -1), &hundreds), "{name}");
        }
        assert!(lossy(&typed("json", 'U', oid::JSON, -1), &typed("jsonb", 'U', oid::JSONB, -1)));
        assert!(!lossy(&typed("jsonb", 'U', oid::JSONB, -1), &typed("json", 'U', oid::JSON, -1)));
        assert!(lossy(&typed("text", 'S', 25, -1), &typed("\"char\"", 'Z', oid::CHAR, -1)));
    }

    #[test]
    fn same_types_fit_strings_may_and_other_categories_do_not() {
        let fit = |a: (&str, char), b: (&str, char)| type_fit(&column(a.0, a.1), &column(b.0, b.1));
        assert_eq!(fit(("integer", 'N'), ("integer", 'N')), TypeFit::Same);
        assert_eq!(fit(("integer", 'N'), ("bigint", 'N')), TypeFit::MayFail);
        assert_eq!(fit(("boolean", 'B'), ("text", 'S')), TypeFit::MayFail);
        assert_eq!(fit(("text", 'S'), ("integer", 'N')), TypeFit::MayFail);
        assert_eq!(fit(("boolean", 'B'), ("integer", 'N')), TypeFit::Incompatible);
        assert_eq!(fit(("timestamp without time zone", 'D'), ("uuid", 'U')), TypeFit::Incompatible);
    }

    #[test]
    fn pairs_that_store_values_changed_are_lossy() {
        let numeric = |name, modifier| typed(name, 'N', oid::NUMERIC, modifier);
        let (n12_4, n12_2) =
            (numeric("numeric(12,4)", (12 << 16 | 4) + 4), numeric("numeric(12,2)", (12 << 16 | 2) + 4));
        let lossy = |a: &Column, b: &Column| matches!(type_fit(a, b), TypeFit::Lossy(_));
        let tz = typed("timestamp with time zone", 'D', oid::TIMESTAMPTZ, -1);
        assert!(lossy(&tz, &typed("timestamp without time zone", 'D', oid::TIMESTAMP, -1)));
        assert!(lossy(&tz, &typed("date", 'D', oid::DATE, -1)));
        assert!(lossy(&n12_4, &n12_2));
        assert!(lossy(&numeric("numeric", -1), &n12_2));
        assert!(!lossy(&n12_2, &n12_4));
        assert!(!lossy(&n12_2, &numeric("numeric", -1)));
        assert!(lossy(
            &typed("bigint", 'N', oid::INT8, -1),
            &typed("double precision", 'N', oid::FLOAT8, -1)
        ));
        assert!(!lossy(
            &typed("integer", 'N', oid::INT4, -1),
            &typed("double precision", 'N', oid::FLOAT8, -1)
        ));
        assert!(lossy(&tz, &typed("timestamp(0) with time zone", 'D', oid::TIMESTAMPTZ, 0)));
        assert!(!lossy(&typed("timestamp(0) with time zone", 'D', oid::TIMESTAMPTZ, 0), &tz));
        assert!(lossy(
            &typed("time with time zone", 'D', oid::TIMETZ, -1),
            &typed("time", 'D', oid::TIME, -1)
        ));
    }

    #[test]
    fn fractional_digits_count_whatever_the_time_type() {
        let lossy = |a: &Column, b: &Column| matches!(type_fit(a, b), TypeFit::Lossy(_));
        let tz = |modifier| {
            typed(&format!("timestamp({modifier}) with time zone"), 'D', oid::TIMESTAMPTZ, modifier)
        };
        let ts = |modifier| typed(&format!("timestamp({modifier})"), 'D', oid::TIMESTAMP, modifier);
        // Without a modifier, microseconds: the (6) an ORM writes loses nothing.
        assert!(!lossy(&tz(-1), &tz(6)));
        assert!(!lossy(&ts(-1), &ts(6)));
        assert!(!lossy(&typed("time", 'D', oid::TIME, -1), &typed("time(6)", 'D', oid::TIME, 6)));
        assert!(lossy(&tz(-1), &tz(5)));
        assert!(lossy(&ts(6), &tz(0)), "another time type rounds as well");
        assert!(!lossy(&ts(3), &tz(3)));
        let text = typed("text", 'S', 25, -1);
        assert_eq!(type_fit(&tz(-1), &text), TypeFit::MayFail, "text keeps every digit");
        let interval = typed("interval", 'T', oid::INTERVAL, -1);
        assert_eq!(type_fit(&interval, &text), TypeFit::MayFail);
    }

    #[test]
    fn intervals_lose_fields_or_fractional_digits() {
        let lossy = |a: &Column, b: &Column| matches!(type_fit(a, b), TypeFit::Lossy(_));
        let interval =
            |name, range: i32, precision: i32| typed(name, 'T', oid::INTERVAL, (range << 16) | precision);
        let plain = typed("interval", 'T', oid::INTERVAL, -1);
        const MONTH: i32 = 1 << 1;
        const YEAR: i32 = 1 << 2;
        const SECOND: i32 = 1 << 12;
        assert!(!lossy(&plain, &interval("interval(6)", INTERVAL_FULL_RANGE, 6)));
        assert!(lossy(&plain, &interval("interval(0)", INTERVAL_FULL_RANGE, 0)));
        assert!(lossy(
            &interval("interval second(3)", SECOND, 3),
            &interval("interval(0)", INTERVAL_FULL_RANGE, 0)
        ));
        assert!(lossy(&interval("interval month", MONTH, 0xffff), &interval("interval year", YEAR, 0xffff)));
        assert!(lossy(&plain, &interval("interval year", YEAR, 0xffff)));
        assert!(!lossy(&interval("interval year", YEAR, 0xffff), &plain));
    }

    #[test]
    fn decimal_places_count_for_floats_and_negative_scales() {
        let lossy = |a: &Column, b: &Column| matches!(type_fit(a, b), TypeFit::Lossy(_));
        let numeric = |name, precision: i32, scale: i32| {
            typed(name, 'N', oid::NUMERIC, ((precision << 16) | (scale & 0x7ff)) + 4)
        };
        let float8 = typed("double precision", 'N', oid::FLOAT8, -1);
        assert!(lossy(&float8, &numeric("numeric(10,2)", 10, 2)));
        assert!(!lossy(&float8, &typed("numeric", 'N', oid::NUMERIC, -1)));
        assert!(!lossy(&typed("integer", 'N', oid::INT4, -1), &numeric("numeric(10,2)", 10, 2)));
        assert!(lossy(&numeric("numeric(10,2)", 10, 2), &numeric("numeric(5,-2)", 5, -2)));
        assert!(!lossy(&numeric("numeric(5,-2)", 5, -2), &numeric("numeric(10,2)", 10, 2)));
        assert_eq!(
            type_fit(&typed("integer", 'N', oid::INT4, -1), &typed("bigint", 'N', oid::INT8, -1)),
            TypeFit::MayFail
        );
    }
}
