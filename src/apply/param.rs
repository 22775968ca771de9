//! Values on their way to the target: text-format parameters, and the
//! helpers that pick keys and name rows in errors.

use std::error::Error as StdError;

use bytes::{BufMut, Bytes, BytesMut};
use tokio_postgres::types::{Format, IsNull, ToSql, Type};

use crate::pg::pgoutput::{OldTuple, Tuple, Value};
use crate::route::filter::Cell;

/// A value in PostgreSQL's text form, sent as a text-format parameter so
/// the target parses it with the column type's own input function: exactly
/// what the source printed, whatever the type.
#[derive(Debug, Clone)]
pub struct TextParam(pub Option<Bytes>);

impl ToSql for TextParam {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match &self.0 {
            Some(bytes) => {
                out.put_slice(bytes);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }

    tokio_postgres::types::to_sql_checked!();
}

/// A value given as text, for tests.
#[cfg(test)]
pub fn text(s: &str) -> TextParam {
    TextParam(Some(Bytes::copy_from_slice(s.as_bytes())))
}

/// The value of column `index`; unchanged TOAST has no value to send.
pub fn param(tuple: &Tuple, index: usize) -> TextParam {
    match tuple.0.get(index) {
        Some(Value::Text(bytes) | Value::Binary(bytes)) => TextParam(Some(bytes.clone())),
        _ => TextParam(None),
    }
}

/// The tuple that identifies the row before the change: the old key or old
/// row when the server sent one, else the new row (the key did not change).
pub fn key_tuple<'a>(old: Option<&'a OldTuple>, new: &'a Tuple) -> &'a Tuple {
    old.map_or(new, OldTuple::tuple)
}

/// A key value from `tuple`, falling back to `fallback` when the server
/// left it out (unchanged TOAST in an old row). `None` when neither has it.
pub fn key_value(tuple: &Tuple, fallback: &Tuple, index: usize) -> Option<Bytes> {
    let value = match tuple.0.get(index) {
        Some(Value::UnchangedToast) => fallback.0.get(index),
        other => other,
    };
    match value {
        Some(Value::Text(bytes) | Value::Binary(bytes)) => Some(bytes.clone()),
        _ => None,
    }
}

/// A row's key as PostgreSQL shows it in errors, `(id, region)=(7, eu)`:
/// what an operator needs to find the row, and no other column's value.
pub fn key_text<'a>(names: &[String], values: impl Iterator<Item = Option<&'a [u8]>>) -> String {
    let values: Vec<String> = values
        .map(|v| v.map_or_else(|| "NULL".to_string(), |b| String::from_utf8_lossy(b).into_owned()))
        .collect();
    format!("({})=({})", names.join(", "), values.join(", "))
}

/// The new row as the filter sees it: values the server left out
/// (unchanged TOAST) taken from the old row when it sent a whole one.
pub fn resolved_cells<'a>(new: &'a Tuple, old: Option<&'a OldTuple>) -> Vec<Cell<'a>> {
    let full_old = match old {
        Some(OldTuple::Full(tuple)) => Some(tuple),
        _ => None,
    };
    new.0
        .iter()
        .enumerate()
        .map(|(i, value)| match value {
            Value::UnchangedToast => full_old.and_then(|t| t.0.get(i)).map_or(Cell::Unchanged, cell),
            other => cell(other),
        })
        .collect()
}

pub fn cell(value: &Value) -> Cell<'_> {
    match value {
        Value::Null => Cell::Null,
        Value::UnchangedToast => Cell::Unchanged,
        Value::Text(bytes) | Value::Binary(bytes) => Cell::Text(bytes),
    }
}
