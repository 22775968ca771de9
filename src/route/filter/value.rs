//! Column types, the domains values are compared in, and the values
//! themselves: parsed from PostgreSQL's text output without allocating, and
//! from filter literals (which may allocate, once, at load time).

use std::cmp::Ordering;

use super::datetime;

/// A column's type as far as filtering cares, from its `format_type()` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SqlType {
    SmallInt,
    Integer,
    BigInt,
    Numeric,
    Real,
    Double,
    Text,
    Varchar,
    /// `character(n)`: trailing spaces do not count in comparisons.
    BpChar,
    Bool,
    Date,
    Timestamp,
    TimestampTz,
    Time,
    Uuid,
    /// Anything else: only `IS [NOT] NULL` applies.
    Other,
}

/// What a comparison compares as. Two columns of different types can meet in
/// one domain (`integer` with `numeric` as numeric, `date` with `timestamp`
/// as timestamp), the way PostgreSQL's implicit casts do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Domain {
    Integer,
    Numeric,
    Float,
    Text,
    Bool,
    Date,
    Timestamp,
    TimestampTz,
    Time,
    Uuid,
}

impl SqlType {
    /// Classifies a `format_type()` name; the type modifier (`(10,2)`,
    /// `(3)`) does not change how values compare. Common aliases are
    /// accepted too, for callers that know types by their internal names.
    pub(super) fn classify(type_name: &str) -> SqlType {
        let base = strip_modifier(type_name);
        match base.trim() {
            "smallint" | "int2" => SqlType::SmallInt,
            "integer" | "int" | "int4" => SqlType::Integer,
            "bigint" | "int8" => SqlType::BigInt,
            "numeric" | "decimal" => SqlType::Numeric,
            "real" | "float4" => SqlType::Real,
            "double precision" | "float8" => SqlType::Double,
            "text" => SqlType::Text,
            "character varying" | "varchar" => SqlType::Varchar,
            "character" | "bpchar" | "char" => SqlType::BpChar,
            "boolean" | "bool" => SqlType::Bool,
            "date" => SqlType::Date,
            "timestamp without time zone" | "timestamp" => SqlType::Timestamp,
            "timestamp with time zone" | "timestamptz" => SqlType::TimestampTz,
            "time without time zone" | "time" => SqlType::Time,
            "uuid" => SqlType::Uuid,
            _ => SqlType::Other,
        }
    }

    /// The domain a column of this type compares in on its own.
    pub(super) fn domain(self) -> Option<Domain> {
        Some(match self {
            SqlType::SmallInt | SqlType::Integer | SqlType::BigInt => Domain::Integer,
            SqlType::Numeric => Domain::Numeric,
            SqlType::Real | SqlType::Double => Domain::Float,
            SqlType::Text | SqlType::Varchar | SqlType::BpChar => Domain::Text,
            SqlType::Bool => Domain::Bool,
            SqlType::Date => Domain::Date,
            SqlType::Timestamp => Domain::Timestamp,
            SqlType::TimestampTz => Domain::TimestampTz,
            SqlType::Time => Domain::Time,
            SqlType::Uuid => Domain::Uuid,
            SqlType::Other => return None,
        })
    }

    /// The range of an integer column's values.
    pub(super) fn int_range(self) -> (i64, i64) {
        match self {
            SqlType::SmallInt => (i16::MIN.into(), i16::MAX.into()),
            SqlType::Integer => (i32::MIN.into(), i32::MAX.into()),
            _ => (i64::MIN, i64::MAX),
        }
    }

    /// The type a literal compared with this column is cast to in SQL. It
    /// has no type modifier on purpose: `'12.345'::numeric(10,2)` would
    /// round and `'abcd'::varchar(3)` truncate, while ferry compares the
    /// literal as written.
    pub(super) fn cast_name(self, domain: Domain) -> &'static str {
        match domain {
            Domain::Integer => match self {
                SqlType::SmallInt => "smallint",
                SqlType::Integer => "integer",
                _ => "bigint",
            },
            Domain::Numeric => "numeric",
            Domain::Float if self == SqlType::Real => "real",
            Domain::Float => "double precision",
            Domain::Text if self == SqlType::BpChar => "bpchar",
            Domain::Text => "text",
            Domain::Bool => "boolean",
            Domain::Date => "date",
            Domain::Timestamp => "timestamp without time zone",
            Domain::TimestampTz => "timestamp with time zone",
            Domain::Time => "time without time zone",
            Domain::Uuid => "uuid",
        }
    }
}

/// `numeric(10,2)` → `numeric`, `timestamp(3) with time zone` →
/// `timestamp with time zone`.
fn strip_modifier(type_name: &str) -> String {
    let mut out = String::with_capacity(type_name.len());
    let mut depth = 0usize;
    for c in type_name.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Domain {
    /// For error messages.
    pub(super) fn name(self) -> &'static str {
        match self {
            Domain::Integer => "integer",
            Domain::Numeric => "numeric",
            Domain::Float => "floating-point",
            Domain::Text => "text",
            Domain::Bool => "boolean",
            Domain::Date => "date",
            Domain::Timestamp => "timestamp",
            Domain::TimestampTz => "timestamp with time zone",
            Domain::Time => "time",
            Domain::Uuid => "uuid",
        }
    }
}

/// The domain two columns compare in, if any.
pub(super) fn unify(a: Domain, b: Domain) -> Option<Domain> {
    use Domain::*;
    match (a, b) {
        _ if a == b => Some(a),
        (Integer | Numeric, Integer | Numeric) => Some(Numeric),
        (Date | Timestamp, Date | Timestamp) => Some(Timestamp),
        _ => None,
    }
}

/// A value ready to compare, borrowing from a row or from a filter literal.
#[derive(Clone, Copy, Debug)]
pub(super) enum Scalar<'a> {
    Int(i64),
    Num(Num<'a>),
    Float(f64),
    Text(&'a [u8]),
    Bool(bool),
    /// Days (dates) or microseconds (timestamps, times), with `i64::MIN`
    /// and `i64::MAX` for `-infinity` and `infinity` as PostgreSQL does.
    Instant(i64),
    Uuid(u128),
}

impl Scalar<'_> {
    /// Orders two values the way PostgreSQL's btree operators do.
    pub(super) fn compare(&self, other: &Scalar<'_>) -> Ordering {
        match (self, other) {
            (Scalar::Int(a), Scalar::Int(b)) => a.cmp(b),
            (Scalar::Num(a), Scalar::Num(b)) => a.compare(b),
            (Scalar::Float(a), Scalar::Float(b)) => compare_floats(*a, *b),
            (Scalar::Text(a), Scalar::Text(b)) => a.cmp(b),
            (Scalar::Bool(a), Scalar::Bool(b)) => a.cmp(b),
            (Scalar::Instant(a), Scalar::Instant(b)) => a.cmp(b),
            (Scalar::Uuid(a), Scalar::Uuid(b)) => a.cmp(b),
            // The checker puts both sides of a comparison in one domain, so
            // different kinds never meet; ranking them keeps this total
            // instead of panicking.
            _ => self.rank().cmp(&other.rank()),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Scalar::Int(_) => 0,
            Scalar::Num(_) => 1,
            Scalar::Float(_) => 2,
            Scalar::Text(_) => 3,
            Scalar::Bool(_) => 4,
            Scalar::Instant(_) => 5,
            Scalar::Uuid(_) => 6,
        }
    }
}

/// PostgreSQL orders NaN above every other float and equal to itself, and
/// `-0` equal to `0`.
fn compare_floats(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// Parses a column's text in `domain`. `ty` is the column's own type, which
/// matters for `real` (compare as 32-bit), `character(n)` (padding does not
/// count) and a `date` read as a timestamp. `None` means the text is not a
/// value of the type, which server output never is.
pub(super) fn parse_cell(text: &[u8], ty: SqlType, domain: Domain) -> Option<Scalar<'_>> {
    Some(match domain {
        Domain::Integer => Scalar::Int(std::str::from_utf8(text).ok()?.parse().ok()?),
        Domain::Numeric => Scalar::Num(Num::parse(text)?),
        Domain::Float => Scalar::Float(parse_float(std::str::from_utf8(text).ok()?, ty)?),
        Domain::Text if ty == SqlType::BpChar => Scalar::Text(trim_padding(text)),
        Domain::Text => Scalar::Text(text),
        Domain::Bool => Scalar::Bool(parse_bool(text)?),
        Domain::Date => Scalar::Instant(datetime::parse_date(text).ok()?),
        Domain::Timestamp if ty == SqlType::Date => {
            Scalar::Instant(datetime::date_to_timestamp(datetime::parse_date(text).ok()?)?)
        }
        Domain::Timestamp => Scalar::Instant(datetime::parse_timestamp(text, false).ok()?),
        Domain::TimestampTz => Scalar::Instant(datetime::parse_timestamp(text, true).ok()?),
        Domain::Time => Scalar::Instant(datetime::parse_time(text).ok()?),
        Domain::Uuid => Scalar::Uuid(parse_uuid(text)?),
    })
}

/// `character(n)` values compare without their trailing spaces.
pub(super) fn trim_padding(text: &[u8]) -> &[u8] {
    let end = text.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
    &text[..end]
}

/// A float as `real` (rounded to 32 bits, then widened exactly) or
/// `double precision`. Accepts `NaN`, `Infinity` and `-Infinity` as
/// PostgreSQL prints them.
pub(super) fn parse_float(text: &str, ty: SqlType) -> Option<f64> {
    if ty == SqlType::Real { text.parse::<f32>().ok().map(f64::from) } else { text.parse::<f64>().ok() }
}

/// PostgreSQL's boolean input: `t`/`f` from the server, and in literals any
/// prefix of `true`, `false`, `yes`, `no`, `on`/`off` (two letters at
/// least) and `1`/`0`, in any case.
pub(super) fn parse_bool(text: &[u8]) -> Option<bool> {
    match text {
        b"t" => return Some(true),
        b"f" => return Some(false),
        _ => {}
    }
    let word = text.trim_ascii().to_ascii_lowercase();
    let prefix_of = |full: &str, min: usize| word.len() >= min && full.as_bytes().starts_with(&word);
    if prefix_of("true", 1) || prefix_of("yes", 1) || prefix_of("on", 2) || word == b"1" {
        Some(true)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || word == b"0" {
        Some(false)
    } else {
        None
    }
}

/// A UUID in any form PostgreSQL reads: 32 hex digits, optionally in
/// braces, with a hyphen allowed after any group of four. Ordering the
/// number orders the canonical (lower-case) text.
pub(super) fn parse_uuid(text: &[u8]) -> Option<u128> {
    let inner = match text {
        [b'{', inner @ .., b'}'] => inner,
        _ => text,
    };
    let (mut value, mut digits, mut after_hyphen) = (0u128, 0u32, false);
    for &b in inner {
        if b == b'-' {
            if after_hyphen || digits == 0 || digits % 4 != 0 || digits == 32 {
                return None;
            }
            after_hyphen = true;
            continue;
        }
        let digit = (b as char).to_digit(16)?;
        if digits == 32 {
            return None;
        }
        value = value << 4 | u128::from(digit);
        digits += 1;
        after_hyphen = false;
    }
    (digits == 32 && !after_hyphen).then_some(value)
}

pub(super) fn format_uuid(value: u128) -> String {
    let hex = format!("{value:032x}");
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// A `numeric` value viewed in place: digits before the point without
/// leading zeros, after it without trailing zeros, so that comparing is
/// comparing lengths and bytes. Zero has no sign.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Num<'a> {
    NegInf,
    Finite {
        neg: bool,
        int: &'a [u8],
        frac: &'a [u8],
    },
    PosInf,
    /// PostgreSQL sorts NaN above `Infinity` and equal to itself.
    NaN,
}

impl<'a> Num<'a> {
    /// Parses the server's output form: `-12.50`, `NaN`, `Infinity`,
    /// `-Infinity` (no exponent, which the server never prints).
    pub(super) fn parse(text: &'a [u8]) -> Option<Num<'a>> {
        match text {
            b"NaN" => return Some(Num::NaN),
            b"Infinity" => return Some(Num::PosInf),
            b"-Infinity" => return Some(Num::NegInf),
            _ => {}
        }
        let (neg, digits) = match text.split_first() {
            Some((b'-', rest)) => (true, rest),
            Some((b'+', rest)) => (false, rest),
            _ => (false, text),
        };
        let (int, frac) = match digits.iter().position(|&b| b == b'.') {
            Some(dot) => (&digits[..dot], &digits[dot + 1..]),
            None => (digits, &[][..]),
        };
        if (int.is_empty() && frac.is_empty()) || !int.iter().chain(frac).all(u8::is_ascii_digit) {
            return None;
        }
        Some(Num::finite(neg, int, frac))
    }

    fn finite(neg: bool, int: &'a [u8], frac: &'a [u8]) -> Num<'a> {
        let (int, frac) = trim_zeros(int, frac);
        Num::Finite { neg: neg && !(int.is_empty() && frac.is_empty()), int, frac }
    }

    fn rank(&self) -> u8 {
        match self {
            Num::NegInf => 0,
            Num::Finite { .. } => 1,
            Num::PosInf => 2,
            Num::NaN => 3,
        }
    }

    pub(super) fn compare(&self, other: &Num<'_>) -> Ordering {
        match (self, other) {
            (Num::Finite { neg: an, int: ai, frac: af }, Num::Finite { neg: bn, int: bi, frac: bf }) => {
                let sign = |neg: bool, int: &[u8], frac: &[u8]| match (neg, int.is_empty() && frac.is_empty())
                {
                    (_, true) => 0i8,
                    (true, false) => -1,
                    (false, false) => 1,
                };
                let by_sign = sign(*an, ai, af).cmp(&sign(*bn, bi, bf));
                // Magnitude: more integer digits is bigger; then digit by
                // digit, where a shorter fraction is a prefix and smaller.
                let magnitude = ai.len().cmp(&bi.len()).then(ai.cmp(bi)).then(af.cmp(bf));
                by_sign.then(if *an { magnitude.reverse() } else { magnitude })
            }
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

/// Drops leading zeros of the integer digits and trailing zeros of the
/// fraction, which do not change the value.
fn trim_zeros<'a>(int: &'a [u8], frac: &'a [u8]) -> (&'a [u8], &'a [u8]) {
    let int = &int[int.iter().position(|&b| b != b'0').unwrap_or(int.len())..];
    let frac = &frac[..frac.iter().rposition(|&b| b != b'0').map_or(0, |i| i + 1)];
    (int, frac)
}

/// A `numeric` literal, normalised at load time from any form PostgreSQL
/// accepts (`1e3`, `.5`, `+2`, `inf`) into the form [`Num`] views.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum NumBuf {
    NegInf,
    Finite { neg: bool, int: String, frac: String },
    PosInf,
    NaN,
}

/// PostgreSQL refuses exponents beyond this in `numeric` input.
const MAX_EXPONENT: i64 = 1000;

impl NumBuf {
    pub(super) fn parse(text: &str) -> Result<NumBuf, &'static str> {
        let text = text.trim();
        match text.to_ascii_lowercase().as_str() {
            "nan" => return Ok(NumBuf::NaN),
            "infinity" | "+infinity" | "inf" | "+inf" => return Ok(NumBuf::PosInf),
            "-infinity" | "-inf" => return Ok(NumBuf::NegInf),
            _ => {}
        }
        let (mantissa, exponent) = match text.find(['e', 'E']) {
            Some(e) => (&text[..e], text[e + 1..].parse::<i64>().map_err(|_| "bad exponent")?),
            None => (text, 0),
        };
        if exponent.abs() > MAX_EXPONENT {
            return Err("exponent out of range");
        }
        let Some(Num::Finite { neg, int, frac }) = Num::parse(mantissa.as_bytes()) else {
            return Err("not a number");
        };
        Ok(shift_point(neg, int, frac, exponent))
    }

    pub(super) fn view(&self) -> Num<'_> {
        match self {
            NumBuf::NegInf => Num::NegInf,
            NumBuf::Finite { neg, int, frac } => {
                Num::Finite { neg: *neg, int: int.as_bytes(), frac: frac.as_bytes() }
            }
            NumBuf::PosInf => Num::PosInf,
            NumBuf::NaN => Num::NaN,
        }
    }

    /// The plain decimal form, which PostgreSQL reads back exactly.
    pub(super) fn to_text(&self) -> String {
        match self {
            NumBuf::NegInf => "-Infinity".into(),
            NumBuf::PosInf => "Infinity".into(),
            NumBuf::NaN => "NaN".into(),
            NumBuf::Finite { neg, int, frac } => {
                let sign = if *neg { "-" } else { "" };
                let int = if int.is_empty() { "0" } else { int };
                if frac.is_empty() { format!("{sign}{int}") } else { format!("{sign}{int}.{frac}") }
            }
        }
    }

    /// The value as an `i64`, when it is a whole number that fits.
    pub(super) fn as_integer(&self) -> Option<i64> {
        match self {
            NumBuf::Finite { neg, int, frac } if frac.is_empty() => {
                let sign = if *neg { "-" } else { "" };
                format!("{sign}{}", if int.is_empty() { "0" } else { int }).parse().ok()
            }
            _ => None,
        }
    }
}

/// Moves the decimal point of `int.frac` by `exponent` places.
fn shift_point(neg: bool, int: &[u8], frac: &[u8], exponent: i64) -> NumBuf {
    let digits: Vec<u8> = int.iter().chain(frac).copied().collect();
    let point = int.len() as i64 + exponent;
    let (int, frac) = if point <= 0 {
        (Vec::new(), [vec![b'0'; point.unsigned_abs() as usize], digits].concat())
    } else if point as usize >= digits.len() {
        ([digits.clone(), vec![b'0'; point as usize - digits.len()]].concat(), Vec::new())
    } else {
        (digits[..point as usize].to_vec(), digits[point as usize..].to_vec())
    };
    let (int, frac) = trim_zeros(&int, &frac);
    // Only ASCII digits get here, so these are valid UTF-8.
    NumBuf::Finite {
        neg: neg && !(int.is_empty() && frac.is_empty()),
        int: String::from_utf8_lossy(int).into_owned(),
        frac: String::from_utf8_lossy(frac).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(text: &str) -> Num<'_> {
        Num::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn type_names_are_classified_without_their_modifiers() {
        assert_eq!(SqlType::classify("numeric(10,2)"), SqlType::Numeric);
        assert_eq!(SqlType::classify("character varying(20)"), SqlType::Varchar);
        assert_eq!(SqlType::classify("character(3)"), SqlType::BpChar);
        assert_eq!(SqlType::classify("timestamp(3) with time zone"), SqlType::TimestampTz);
        assert_eq!(SqlType::classify("time(6) without time zone"), SqlType::Time);
        assert_eq!(SqlType::classify("integer[]"), SqlType::Other);
        assert_eq!(SqlType::classify("jsonb"), SqlType::Other);
        assert_eq!(SqlType::classify("time with time zone"), SqlType::Other);
        assert_eq!(SqlType::classify("public.citext"), SqlType::Other);
    }

    #[test]
    fn numerics_compare_exactly_with_nan_greatest() {
        let ordered = [
            "-Infinity",
            "-10",
            "-9.99",
            "-0.001",
            "0",
            "0.001",
            "0.1",
            "0.10000001",
            "1",
            "9.5",
            "10",
            "Infinity",
            "NaN",
        ];
        for (i, a) in ordered.iter().enumerate() {
            for (j, b) in ordered.iter().enumerate() {
                assert_eq!(num(a).compare(&num(b)), i.cmp(&j), "{a} vs {b}");
            }
        }
        assert_eq!(num("-0.00").compare(&num("0")), Ordering::Equal);
        assert_eq!(num("007.500").compare(&num("7.5")), Ordering::Equal);
        assert_eq!(num("NaN").compare(&num("NaN")), Ordering::Equal);
        assert!(Num::parse(b"1e5").is_none() && Num::parse(b".").is_none() && Num::parse(b"").is_none());
    }

    #[test]
    fn numeric_literals_normalise_every_input_form() {
        let text = |s: &str| NumBuf::parse(s).unwrap().to_text();
        assert_eq!(text("1e3"), "1000");
        assert_eq!(text("1.5E-3"), "0.0015");
        assert_eq!(text(" -0012.3400 "), "-12.34");
        assert_eq!(text(".5"), "0.5");
        assert_eq!(text("-0"), "0");
        assert_eq!(text("123.456e1"), "1234.56");
        assert_eq!(text("inf"), "Infinity");
        assert_eq!(text("nan"), "NaN");
        assert!(
            NumBuf::parse("1e1001").is_err() && NumBuf::parse("abc").is_err() && NumBuf::parse("1e").is_err()
        );
        assert_eq!(NumBuf::parse("12e2").unwrap().as_integer(), Some(1200));
        assert_eq!(NumBuf::parse("1.5").unwrap().as_integer(), None);
    }

    #[test]
    fn floats_order_nan_last_and_negative_zero_as_zero() {
        assert_eq!(compare_floats(f64::NAN, f64::INFINITY), Ordering::Greater);
        assert_eq!(compare_floats(f64::NAN, f64::NAN), Ordering::Equal);
        assert_eq!(compare_floats(-0.0, 0.0), Ordering::Equal);
        assert_eq!(parse_float("-Infinity", SqlType::Double), Some(f64::NEG_INFINITY));
        assert_eq!(parse_float("1e+300", SqlType::Double), Some(1e300));
        // A real is compared at its own precision: 0.1 as real is not 0.1.
        assert_eq!(parse_float("0.1", SqlType::Real), Some(f64::from(0.1f32)));
    }

    #[test]
    fn booleans_read_every_spelling_postgres_accepts() {
        for yes in ["t", "TRUE", "tr", "y", "Yes", "on", "1", " true "] {
            assert_eq!(parse_bool(yes.as_bytes()), Some(true), "{yes}");
        }
        for no in ["f", "false", "FA", "n", "no", "off", "of", "0"] {
            assert_eq!(parse_bool(no.as_bytes()), Some(false), "{no}");
        }
        for neither in ["o", "", "truee", "2", "yess"] {
            assert_eq!(parse_bool(neither.as_bytes()), None, "{neither}");
        }
    }

    #[test]
    fn uuids_read_every_form_and_print_canonically() {
        let canonical = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        let value = parse_uuid(canonical.as_bytes()).unwrap();
        for form in [
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "{a0eebc999c0b4ef8bb6d6bb9bd380a11}",
            "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
        ] {
            assert_eq!(parse_uuid(form.as_bytes()), Some(value), "{form}");
        }
        assert_eq!(format_uuid(value), canonical);
        for bad in [
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
            "a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11",
            "-a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "g0eebc999c0b4ef8bb6d6bb9bd380a11",
        ] {
            assert_eq!(parse_uuid(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn padding_of_character_columns_does_not_count() {
        assert_eq!(trim_padding(b"ab  "), b"ab");
        assert_eq!(trim_padding(b"   "), b"");
        assert_eq!(trim_padding(b" a"), b" a");
    }
}
