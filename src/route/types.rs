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
}

pub fn type_fit(source: &Column, target: &Column) -> TypeFit {
    if source.type_name == target.type_name {
        TypeFit::Same
    } else if source.category == target.category || source.category == STRING || target.category == STRING {
        TypeFit::MayFail
    } else {
        TypeFit::Incompatible
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
        Column {
            name: "c".into(),
            type_name: type_name.into(),
            type_oid: 0,
            type_modifier: -1,
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
}
