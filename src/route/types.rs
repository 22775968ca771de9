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
    if source.type_name == target.type_name {
        TypeFit::Same
    } else if let Some(loss) = loss(source, target) {
        TypeFit::Lossy(loss)
    } else if source.category == target.category || source.category == STRING || target.category == STRING {
        TypeFit::MayFail
    } else {
        TypeFit::Incompatible
    }
}

/// Type oids of the built-in types whose pairs can lose what a value says.
mod oid {
    pub const INT4: u32 = 23;
    pub const INT8: u32 = 20;
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
/// silently change in every value, if anything.
fn loss(source: &Column, target: &Column) -> Option<&'static str> {
    use oid::*;
    let narrower = || {
        target.type_modifier >= 0 && (source.type_modifier < 0 || target.type_modifier < source.type_modifier)
    };
    match (source.type_oid, target.type_oid) {
        (TIMESTAMPTZ, TIMESTAMP | TIME) => Some("the target ignores the time zone offset"),
        (TIMESTAMPTZ | TIMESTAMP, DATE) => Some("the target keeps the date only"),
        (TIMESTAMPTZ | TIMESTAMP, TIMETZ) | (TIMESTAMP, TIME) => {
            Some("the target keeps the time of day only")
        }
        (INT4 | INT8 | NUMERIC | FLOAT8, FLOAT4) | (INT8 | NUMERIC, FLOAT8) => {
            Some("the target rounds to fewer significant digits")
        }
        (NUMERIC, NUMERIC) if numeric_scale(target) < numeric_scale(source) => {
            Some("the target rounds to fewer decimal places")
        }
        (TIME | TIMETZ | TIMESTAMP | TIMESTAMPTZ | INTERVAL, _)
            if source.type_oid == target.type_oid && narrower() =>
        {
            Some("the target rounds to fewer fractional digits of a second")
        }
        _ => None,
    }
}

/// A numeric column's scale, or `u32::MAX` for an unconstrained one (any
/// scale kept).
fn numeric_scale(column: &Column) -> u32 {
    if column.type_modifier < 4 { u32::MAX } else { ((column.type_modifier - 4) & 0xffff) as u32 }
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
            category,
            is_key: false,
            toastable: false,
        }
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
        assert_eq!(
            type_fit(&typed("integer", 'N', oid::INT4, -1), &typed("bigint", 'N', oid::INT8, -1)),
            TypeFit::MayFail
        );
    }
}
