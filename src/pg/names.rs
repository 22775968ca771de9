//! SQL names: quoting for statements ferry writes, and parsing of the
//! qualified table names users write (`public."Order Lines"`).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// Quotes an identifier, always, so that mixed case, spaces, reserved
/// words and non-ASCII names survive (`"Order ""Lines"""`).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an identifier only when it must be, for people to read
/// (`customers`, `"Order Lines"`). It parses back to the same name.
pub fn quote_ident_if_needed(name: &str) -> Cow<'_, str> {
    let plain = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain { Cow::Borrowed(name) } else { Cow::Owned(quote_ident(name)) }
}

/// Quotes a string literal for SQL so that it means the same whatever
/// `standard_conforming_strings` is (off, `'a\'` would escape its quote): a
/// backslash switches to the `E''` form, where backslashes are always
/// escapes (`'it''s'`, `E'C:\\dir'`).
pub fn quote_literal(value: &str) -> String {
    if value.contains('\\') {
        format!("E'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", value.replace('\'', "''"))
    }
}

/// A table name with its schema, as stored in the catalog (unquoted,
/// case preserved).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

impl QualifiedName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        QualifiedName { schema: schema.into(), name: name.into() }
    }

    /// `public."Order Lines"`: quoted only where needed, for people to read.
    /// `Display` quotes every part, for SQL.
    pub fn readable(&self) -> String {
        format!("{}.{}", quote_ident_if_needed(&self.schema), quote_ident_if_needed(&self.name))
    }
}

/// Shown quoted, ready to paste into SQL.
impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid table name {text:?}: {reason}")]
pub struct NameError {
    pub text: String,
    pub reason: &'static str,
}

/// Parses `table`, `schema.table`, with SQL's rules: unquoted parts are
/// folded to lower case, quoted parts are taken as written (`""` is a
/// quote). A name without a schema is in `public`.
impl FromStr for QualifiedName {
    type Err = NameError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |reason| NameError { text: text.to_string(), reason };
        let parts = split_identifiers(text).map_err(error)?;
        match parts.as_slice() {
            [name] => Ok(QualifiedName::new("public", name.clone())),
            [schema, name] => Ok(QualifiedName::new(schema.clone(), name.clone())),
            _ => Err(error("expected SCHEMA.TABLE or TABLE")),
        }
    }
}

/// Splits a dotted list of SQL identifiers.
fn split_identifiers(text: &str) -> Result<Vec<String>, &'static str> {
    let mut parts = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => return Err("unterminated quoted identifier"),
                }
            }
            if part.is_empty() {
                return Err("empty quoted identifier");
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if !(c.is_alphanumeric() || c == '_' || c == '$') {
                    return Err("unquoted names may hold only letters, digits, _ and $; quote the others");
                }
                part.push(c.to_ascii_lowercase());
                chars.next();
            }
            if part.is_empty() {
                return Err("empty name");
            }
            if part.starts_with(|c: char| c.is_ascii_digit() || c == '$') {
                return Err("an unquoted name cannot start with a digit or $");
            }
        }
        parts.push(part);
        match chars.next() {
            None => return Ok(parts),
            Some('.') => continue,
            Some(_) => return Err("expected '.' after a quoted identifier"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> QualifiedName {
        text.parse().unwrap()
    }

    #[test]
    fn folds_unquoted_and_keeps_quoted_names() {
        assert_eq!(parse("Customers"), QualifiedName::new("public", "customers"));
        assert_eq!(parse("Sales.Orders"), QualifiedName::new("sales", "orders"));
        assert_eq!(parse("public.\"Order Lines\""), QualifiedName::new("public", "Order Lines"));
        assert_eq!(parse("\"a.b\".\"say \"\"hi\"\"\""), QualifiedName::new("a.b", "say \"hi\""));
        assert_eq!(parse("kunden.straße"), QualifiedName::new("kunden", "straße"));
    }

    #[test]
    fn prints_quoted() {
        assert_eq!(QualifiedName::new("public", "Order Lines").to_string(), "\"public\".\"Order Lines\"");
        assert_eq!(quote_ident("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"C:\dir's"), r"E'C:\\dir''s'");
    }

    #[test]
    fn readable_form_quotes_only_what_needs_it_and_parses_back() {
        for (name, shown) in [
            (QualifiedName::new("public", "customers"), "public.customers"),
            (QualifiedName::new("public", "Order Lines"), "public.\"Order Lines\""),
            (QualifiedName::new("sales_2", "_t$1"), "sales_2._t$1"),
            (QualifiedName::new("a.b", "1x"), "\"a.b\".\"1x\""),
            (QualifiedName::new("kunden", "straße"), "kunden.\"straße\""),
        ] {
            assert_eq!(name.readable(), shown);
            assert_eq!(parse(&name.readable()), name);
        }
    }

    #[test]
    fn rejects_malformed_names() {
        for bad in ["", "a.", ".a", "a.b.c", "\"open", "\"\"", "a b", "1abc", "\"x\"y", "a;drop"] {
            assert!(bad.parse::<QualifiedName>().is_err(), "{bad:?} should be rejected");
        }
    }
}
