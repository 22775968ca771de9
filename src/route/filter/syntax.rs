//! The filter's grammar, as a lexer and a recursive-descent parser into an
//! untyped tree that keeps each part's byte offset for error messages.
//!
//! ```text
//! or        := and (OR and)*
//! and       := not (AND not)*
//! not       := NOT not | is
//! is        := predicate (IS [NOT] (NULL | TRUE | FALSE | UNKNOWN))*
//! predicate := '(' or ')'
//!            | operand [ cmp operand
//!                      | [NOT] IN '(' operand (',' operand)* ')'
//!                      | [NOT] (LIKE | ILIKE) operand
//!                      | [NOT] BETWEEN operand AND operand ]
//! operand   := column | "Quoted" column | number | -number | 'string' | TRUE | FALSE | NULL
//! ```
//!
//! This is PostgreSQL's precedence: comparisons bind tighter than `IS`,
//! which binds tighter than `NOT`, then `AND`, then `OR`; comparisons do not
//! chain. There is no arithmetic, so an operand is always a single column
//! or value.

use super::{FilterError, FilterErrorKind};

/// Deeper nesting of parentheses and NOTs is refused rather than risking
/// the stack on a hostile or broken config.
const MAX_DEPTH: usize = 64;

/// Words that cannot name a column unless quoted.
const KEYWORDS: &[&str] =
    &["and", "or", "not", "in", "is", "null", "true", "false", "like", "ilike", "between"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub(super) fn holds(self, ordering: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            CmpOp::Eq => ordering == Equal,
            CmpOp::Ne => ordering != Equal,
            CmpOp::Lt => ordering == Less,
            CmpOp::Le => ordering != Greater,
            CmpOp::Gt => ordering == Greater,
            CmpOp::Ge => ordering != Less,
        }
    }

    pub(super) fn sql(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "<>",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }

    /// Whether the result depends on collation order, not only equality.
    pub(super) fn orders(self) -> bool {
        !matches!(self, CmpOp::Eq | CmpOp::Ne)
    }
}

/// What `IS [NOT] …` tests for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Truth {
    True,
    False,
    /// `NULL` or `UNKNOWN`.
    Null,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum OperandKind {
    /// A column name, already folded to lower case unless it was quoted.
    Column(String),
    /// A number as written, sign included.
    Number(String),
    Str(String),
    Bool(bool),
    Null,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) struct Operand {
    pub(super) kind: OperandKind,
    /// Byte offset in the expression.
    pub(super) at: usize,
    /// As written, for messages.
    pub(super) text: String,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Ast {
    Or(Vec<Ast>),
    And(Vec<Ast>),
    Not(Box<Ast>),
    Compare {
        op: CmpOp,
        left: Operand,
        right: Operand,
        at: usize,
    },
    In {
        value: Operand,
        list: Vec<Operand>,
        negated: bool,
        at: usize,
    },
    Like {
        value: Operand,
        pattern: Operand,
        negated: bool,
        fold: bool,
        at: usize,
    },
    Between {
        value: Operand,
        low: Operand,
        high: Operand,
        negated: bool,
        at: usize,
    },
    Is {
        expr: Box<Ast>,
        test: Truth,
        negated: bool,
        at: usize,
    },
    /// A column or value standing alone as a condition (`NOT deleted`).
    Operand(Operand),
}

pub(super) fn parse(src: &str) -> Result<Ast, FilterError> {
    let mut parser = Parser { src, tokens: lex(src)?, next: 0, depth: 0 };
    if parser.peek().kind == Tok::End {
        return Err(parser.expected("a condition"));
    }
    let ast = parser.or()?;
    if parser.peek().kind != Tok::End {
        return Err(parser.expected("AND, OR or the end of the expression"));
    }
    Ok(ast)
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Word { name: String, quoted: bool },
    Str(String),
    Number(String),
    Cmp(CmpOp),
    Minus,
    Open,
    Close,
    Comma,
    End,
}

#[derive(Clone, Debug)]
struct Token {
    kind: Tok,
    start: usize,
    end: usize,
}

fn syntax_error(src: &str, at: usize, expected: &str, found: String) -> FilterError {
    FilterError::new(src, at, FilterErrorKind::Syntax { expected: expected.into(), found })
}

fn lex(src: &str) -> Result<Vec<Token>, FilterError> {
    let mut tokens = Vec::new();
    let mut lexer = Lexer { src, at: 0 };
    loop {
        lexer.skip_space();
        let start = lexer.at;
        let kind = lexer.token()?;
        let end = kind == Tok::End;
        tokens.push(Token { kind, start, end: lexer.at });
        if end {
            return Ok(tokens);
        }
    }
}

struct Lexer<'s> {
    src: &'s str,
    at: usize,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.src[self.at..].chars().next()
    }

    fn peek_second(&self) -> Option<char> {
        self.src[self.at..].chars().nth(1)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at += c.len_utf8();
        Some(c)
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    fn token(&mut self) -> Result<Tok, FilterError> {
        let start = self.at;
        let Some(c) = self.bump() else { return Ok(Tok::End) };
        Ok(match c {
            '(' => Tok::Open,
            ')' => Tok::Close,
            ',' => Tok::Comma,
            '-' => Tok::Minus,
            '=' => Tok::Cmp(CmpOp::Eq),
            '<' => Tok::Cmp(self.after_angle(&[('=', CmpOp::Le), ('>', CmpOp::Ne)], CmpOp::Lt)),
            '>' => Tok::Cmp(self.after_angle(&[('=', CmpOp::Ge)], CmpOp::Gt)),
            '!' if self.peek() == Some('=') => {
                self.bump();
                Tok::Cmp(CmpOp::Ne)
            }
            '\'' => Tok::Str(self.quoted('\'', start, "a closing ' for this string")?),
            '"' => self.quoted_identifier(start)?,
            '0'..='9' => self.number(start)?,
            '.' if self.peek().is_some_and(|c| c.is_ascii_digit()) => self.number(start)?,
            c if starts_identifier(c) => self.identifier(start),
            other => {
                let expected = "a column, a value, an operator or a parenthesis";
                return Err(syntax_error(self.src, start, expected, format!("`{other}`")));
            }
        })
    }

    fn after_angle(&mut self, pairs: &[(char, CmpOp)], alone: CmpOp) -> CmpOp {
        for &(second, op) in pairs {
            if self.peek() == Some(second) {
                self.bump();
                return op;
            }
        }
        alone
    }

    /// The body of a quoted string or identifier, where a doubled quote
    /// stands for one.
    fn quoted(&mut self, quote: char, start: usize, expected: &str) -> Result<String, FilterError> {
        let mut out = String::new();
        loop {
            match self.bump() {
                Some(c) if c == quote && self.peek() == Some(quote) => {
                    self.bump();
                    out.push(quote);
                }
                Some(c) if c == quote => return Ok(out),
                // PostgreSQL text cannot hold NUL, so no value could match.
                Some('\0') => {
                    return Err(syntax_error(
                        self.src,
                        self.at - 1,
                        "a character other than NUL",
                        "NUL".into(),
                    ));
                }
                Some(c) => out.push(c),
                None => {
                    return Err(syntax_error(self.src, start, expected, "the end of the expression".into()));
                }
            }
        }
    }

    fn quoted_identifier(&mut self, start: usize) -> Result<Tok, FilterError> {
        let name = self.quoted('"', start, "a closing \" for this column name")?;
        if name.is_empty() {
            return Err(syntax_error(self.src, start, "a column name between the quotes", "\"\"".into()));
        }
        Ok(Tok::Word { name, quoted: true })
    }

    /// `12`, `1.5`, `.5`, `1e-3`; the caller has taken the first character.
    fn number(&mut self, start: usize) -> Result<Tok, FilterError> {
        let leading_dot = self.src[start..].starts_with('.');
        self.digits();
        if !leading_dot && self.peek() == Some('.') {
            self.bump();
            self.digits();
        }
        let exponent_follows = match (self.peek(), self.peek_second()) {
            (Some('e' | 'E'), Some(c)) => c.is_ascii_digit() || matches!(c, '+' | '-'),
            _ => false,
        };
        if exponent_follows {
            self.bump();
            if matches!(self.peek(), Some('+' | '-')) {
                self.bump();
            }
            if !self.digits() {
                return Err(syntax_error(self.src, self.at, "digits of the exponent", self.describe_here()));
            }
        }
        if self.peek().is_some_and(continues_identifier) {
            return Err(syntax_error(
                self.src,
                self.at,
                "a space or operator after the number",
                self.describe_here(),
            ));
        }
        Ok(Tok::Number(self.src[start..self.at].to_owned()))
    }

    fn digits(&mut self) -> bool {
        let start = self.at;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.bump();
        }
        self.at > start
    }

    fn describe_here(&self) -> String {
        self.peek().map_or_else(|| "the end of the expression".into(), |c| format!("`{c}`"))
    }

    /// An unquoted name folds ASCII letters to lower case, as PostgreSQL does.
    fn identifier(&mut self, start: usize) -> Tok {
        while self.peek().is_some_and(continues_identifier) {
            self.bump();
        }
        Tok::Word { name: self.src[start..self.at].to_ascii_lowercase(), quoted: false }
    }
}

fn starts_identifier(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn continues_identifier(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

struct Parser<'s> {
    src: &'s str,
    tokens: Vec<Token>,
    next: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> &Token {
        // The lexer always ends the list with `End`, which is never consumed.
        &self.tokens[self.next.min(self.tokens.len() - 1)]
    }

    fn advance(&mut self) -> Token {
        let token = self.peek().clone();
        if token.kind != Tok::End {
            self.next += 1;
        }
        token
    }

    fn is_keyword(&self, keyword: &str) -> bool {
        self.keyword_at(self.next, keyword)
    }

    fn keyword_at(&self, index: usize, keyword: &str) -> bool {
        matches!(self.tokens.get(index), Some(Token { kind: Tok::Word { name, quoted: false }, .. }) if name == keyword)
    }

    fn eat_keyword(&mut self, keyword: &str) -> bool {
        let hit = self.is_keyword(keyword);
        if hit {
            self.next += 1;
        }
        hit
    }

    fn expected(&self, what: &str) -> FilterError {
        let token = self.peek();
        let found = match token.kind {
            Tok::End => "the end of the expression".to_owned(),
            _ => format!("`{}`", shorten(&self.src[token.start..token.end])),
        };
        syntax_error(self.src, token.start, what, found)
    }

    fn expect(&mut self, kind: Tok, what: &str) -> Result<(), FilterError> {
        if self.peek().kind != kind {
            return Err(self.expected(what));
        }
        self.advance();
        Ok(())
    }

    /// Guards recursion through parentheses and NOT.
    fn nested<T>(
        &mut self,
        parse: impl FnOnce(&mut Self) -> Result<T, FilterError>,
    ) -> Result<T, FilterError> {
        if self.depth == MAX_DEPTH {
            let at = self.peek().start;
            return Err(FilterError::new(self.src, at, FilterErrorKind::TooDeep { limit: MAX_DEPTH }));
        }
        self.depth += 1;
        let result = parse(self);
        self.depth -= 1;
        result
    }

    fn or(&mut self) -> Result<Ast, FilterError> {
        let mut items = vec![self.and()?];
        while self.eat_keyword("or") {
            items.push(self.and()?);
        }
        Ok(if items.len() == 1 { items.remove(0) } else { Ast::Or(items) })
    }

    fn and(&mut self) -> Result<Ast, FilterError> {
        let mut items = vec![self.not()?];
        while self.eat_keyword("and") {
            items.push(self.not()?);
        }
        Ok(if items.len() == 1 { items.remove(0) } else { Ast::And(items) })
    }

    fn not(&mut self) -> Result<Ast, FilterError> {
        if self.eat_keyword("not") {
            return self.nested(|p| Ok(Ast::Not(Box::new(p.not()?))));
        }
        self.is()
    }

    fn is(&mut self) -> Result<Ast, FilterError> {
        let mut expr = self.predicate()?;
        while self.is_keyword("is") {
            let at = self.advance().start;
            let negated = self.eat_keyword("not");
            let test = if self.eat_keyword("null") || self.eat_keyword("unknown") {
                Truth::Null
            } else if self.eat_keyword("true") {
                Truth::True
            } else if self.eat_keyword("false") {
                Truth::False
            } else {
                return Err(self.expected("NULL, TRUE, FALSE or UNKNOWN after IS"));
            };
            expr = Ast::Is { expr: Box::new(expr), test, negated, at };
        }
        Ok(expr)
    }

    fn predicate(&mut self) -> Result<Ast, FilterError> {
        if self.peek().kind == Tok::Open {
            self.advance();
            let inner = self.nested(|p| p.or())?;
            self.expect(Tok::Close, "AND, OR or `)`")?;
            return Ok(inner);
        }
        let value = self.operand()?;
        let at = self.peek().start;
        if let Tok::Cmp(op) = self.peek().kind {
            self.advance();
            return Ok(Ast::Compare { op, left: value, right: self.operand()?, at });
        }
        let negated = self.is_keyword("not") && self.negatable_follows();
        if negated {
            self.advance();
        }
        if self.eat_keyword("in") {
            Ok(Ast::In { value, list: self.list()?, negated, at })
        } else if self.is_keyword("like") || self.is_keyword("ilike") {
            let fold = self.is_keyword("ilike");
            self.advance();
            Ok(Ast::Like { value, pattern: self.operand()?, negated, fold, at })
        } else if self.eat_keyword("between") {
            let low = self.operand()?;
            if !self.eat_keyword("and") {
                return Err(self.expected("AND between the bounds of BETWEEN"));
            }
            Ok(Ast::Between { value, low, high: self.operand()?, negated, at })
        } else if self.is_keyword("not") {
            Err(self
                .expected("a comparison; NOT after a value must be followed by IN, LIKE, ILIKE or BETWEEN"))
        } else {
            Ok(Ast::Operand(value))
        }
    }

    fn negatable_follows(&self) -> bool {
        ["in", "like", "ilike", "between"].iter().any(|k| self.keyword_at(self.next + 1, k))
    }

    fn list(&mut self) -> Result<Vec<Operand>, FilterError> {
        self.expect(Tok::Open, "`(` to start the IN list")?;
        let mut items = vec![self.operand()?];
        while self.peek().kind == Tok::Comma {
            self.advance();
            items.push(self.operand()?);
        }
        self.expect(Tok::Close, "`,` or `)` in the IN list")?;
        Ok(items)
    }

    fn operand(&mut self) -> Result<Operand, FilterError> {
        const WHAT: &str = "a column name or a value";
        let token = self.peek().clone();
        let kind = match &token.kind {
            Tok::Word { name, quoted: false } if KEYWORDS.contains(&name.as_str()) => match name.as_str() {
                "true" => OperandKind::Bool(true),
                "false" => OperandKind::Bool(false),
                "null" => OperandKind::Null,
                _ => return Err(self.expected(WHAT)),
            },
            Tok::Word { name, .. } => OperandKind::Column(name.clone()),
            Tok::Str(s) => OperandKind::Str(s.clone()),
            Tok::Number(n) => OperandKind::Number(n.clone()),
            Tok::Minus => return self.negative_number(token.start),
            _ => return Err(self.expected(WHAT)),
        };
        self.advance();
        Ok(Operand { kind, at: token.start, text: self.src[token.start..token.end].to_owned() })
    }

    fn negative_number(&mut self, at: usize) -> Result<Operand, FilterError> {
        self.advance();
        let token = self.peek().clone();
        let Tok::Number(digits) = &token.kind else { return Err(self.expected("a number after `-`")) };
        self.advance();
        Ok(Operand {
            kind: OperandKind::Number(format!("-{digits}")),
            at,
            text: self.src[at..token.end].to_owned(),
        })
    }
}

/// Long tokens (a runaway string) are cut in messages.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str) -> OperandKind {
        OperandKind::Column(name.into())
    }

    /// The tree as a compact string, to state precedence plainly.
    fn shape(ast: &Ast) -> String {
        let operand = |o: &Operand| match &o.kind {
            OperandKind::Column(c) => c.clone(),
            OperandKind::Number(n) => n.clone(),
            OperandKind::Str(s) => format!("'{s}'"),
            OperandKind::Bool(b) => b.to_string(),
            OperandKind::Null => "null".into(),
        };
        let join = |items: &[Ast], sep: &str| items.iter().map(shape).collect::<Vec<_>>().join(sep);
        let not = |negated: bool| if negated { "not " } else { "" };
        match ast {
            Ast::Or(items) => format!("({})", join(items, " or ")),
            Ast::And(items) => format!("({})", join(items, " and ")),
            Ast::Not(inner) => format!("(not {})", shape(inner)),
            Ast::Compare { op, left, right, .. } => {
                format!("({} {} {})", operand(left), op.sql(), operand(right))
            }
            Ast::In { value, list, negated, .. } => {
                let list: Vec<_> = list.iter().map(operand).collect();
                format!("({} {}in {})", operand(value), not(*negated), list.join(","))
            }
            Ast::Like { value, pattern, negated, fold, .. } => {
                let op = if *fold { "ilike" } else { "like" };
                format!("({} {}{op} {})", operand(value), not(*negated), operand(pattern))
            }
            Ast::Between { value, low, high, negated, .. } => {
                format!("({} {}between {} {})", operand(value), not(*negated), operand(low), operand(high))
            }
            Ast::Is { expr, test, negated, .. } => format!("({} is {}{test:?})", shape(expr), not(*negated)),
            Ast::Operand(o) => operand(o),
        }
    }

    fn parsed(src: &str) -> String {
        shape(&parse(src).unwrap_or_else(|e| panic!("{src}: {e}")))
    }

    fn error(src: &str) -> FilterError {
        parse(src).expect_err(src)
    }

    #[test]
    fn and_binds_tighter_than_or_and_not_tighter_than_and() {
        assert_eq!(parsed("a OR b AND c"), "(a or (b and c))");
        assert_eq!(parsed("a AND b OR c AND d"), "((a and b) or (c and d))");
        assert_eq!(parsed("NOT a AND b"), "((not a) and b)");
        assert_eq!(parsed("NOT (a OR b)"), "(not (a or b))");
        assert_eq!(parsed("a OR b OR c"), "(a or b or c)");
        assert_eq!(parsed("NOT NOT a"), "(not (not a))");
    }

    #[test]
    fn is_binds_looser_than_comparison_and_tighter_than_not() {
        assert_eq!(parsed("a = 1 IS TRUE"), "((a = 1) is True)");
        assert_eq!(parsed("NOT a IS NULL"), "(not (a is Null))");
        assert_eq!(parsed("a IS NOT NULL IS FALSE"), "((a is not Null) is False)");
        assert_eq!(parsed("(a < 1) IS UNKNOWN"), "((a < 1) is Null)");
    }

    #[test]
    fn every_predicate_form_parses() {
        assert_eq!(
            parsed("country IN ('DE', 'AT') AND NOT deleted AND signup >= '2024-01-01'"),
            "((country in 'DE','AT') and (not deleted) and (signup >= '2024-01-01'))"
        );
        assert_eq!(parsed("a NOT IN (1, -2.5, NULL)"), "(a not in 1,-2.5,null)");
        assert_eq!(parsed("a LIKE 'x%' OR a NOT ILIKE '_y'"), "((a like 'x%') or (a not ilike '_y'))");
        assert_eq!(parsed("a BETWEEN 1 AND 10 AND b"), "((a between 1 10) and b)");
        assert_eq!(parsed("a NOT BETWEEN -1 AND 1"), "(a not between -1 1)");
        assert_eq!(
            parsed("a <> 1 AND a != 2 AND a <= 3 AND a >= 4 AND a < 5 AND a > 6 AND a = 7"),
            "((a <> 1) and (a <> 2) and (a <= 3) and (a >= 4) and (a < 5) and (a > 6) and (a = 7))"
        );
        assert_eq!(parsed("flag = TRUE OR flag = false"), "((flag = true) or (flag = false))");
    }

    #[test]
    fn keywords_ignore_case_and_names_fold_unless_quoted() {
        assert_eq!(
            parsed("Country in ('x') oR \"MixedCase\" Is nOt NuLl"),
            "((country in 'x') or (MixedCase is not Null))"
        );
        let Ast::Operand(o) = parse("\"a \"\"b\"\"\"").unwrap() else { panic!() };
        assert_eq!(o.kind, column("a \"b\""));
        let Ast::Operand(o) = parse("\"select\"").unwrap() else { panic!() };
        assert_eq!(o.kind, column("select"));
        let Ast::Operand(o) = parse("Straße_1$").unwrap() else { panic!() };
        assert_eq!(o.kind, column("straße_1$"), "only ASCII letters fold");
    }

    #[test]
    fn literals_keep_their_text() {
        let Ast::Compare { right, .. } = parse("a = 'it''s'").unwrap() else { panic!() };
        assert_eq!(right.kind, OperandKind::Str("it's".into()));
        let Ast::Compare { right, .. } = parse("a = - 12.50e3").unwrap() else { panic!() };
        assert_eq!(right.kind, OperandKind::Number("-12.50e3".into()));
        assert_eq!((right.at, right.text.as_str()), (4, "- 12.50e3"));
        let Ast::Compare { right, .. } = parse("a = .5").unwrap() else { panic!() };
        assert_eq!(right.kind, OperandKind::Number(".5".into()));
        let Ast::Compare { right, .. } = parse("a = '日本'").unwrap() else { panic!() };
        assert_eq!(right.kind, OperandKind::Str("日本".into()));
    }

    #[test]
    fn syntax_errors_say_where_and_what_was_expected() {
        let cases = [
            ("", 0, "expected a condition, found the end of the expression"),
            ("a = ", 4, "expected a column name or a value, found the end of the expression"),
            ("a = 1 b", 6, "expected AND, OR or the end of the expression, found `b`"),
            ("(a = 1", 6, "expected AND, OR or `)`, found the end of the expression"),
            ("a = 'open", 4, "expected a closing ' for this string"),
            ("\"open = 1", 0, "expected a closing \" for this column name"),
            ("\"\" = 1", 0, "expected a column name between the quotes"),
            ("a = 1 # 2", 6, "found `#`"),
            ("a IS 5", 5, "expected NULL, TRUE, FALSE or UNKNOWN after IS, found `5`"),
            ("a IN 1", 5, "expected `(` to start the IN list, found `1`"),
            ("a IN (1 2)", 8, "expected `,` or `)` in the IN list, found `2`"),
            ("a BETWEEN 1 OR 2", 12, "expected AND between the bounds of BETWEEN, found `OR`"),
            ("a NOT = 1", 2, "NOT after a value must be followed by IN, LIKE, ILIKE or BETWEEN"),
            ("a = 1 < 2", 6, "found `<`"),
            ("and = 1", 0, "expected a column name or a value, found `and`"),
            ("a = 12abc", 6, "expected a space or operator after the number, found `a`"),
            ("a = 1e+", 7, "expected digits of the exponent"),
            ("a = - b", 6, "expected a number after `-`, found `b`"),
            ("a = 1 AND", 9, "expected a column name or a value, found the end"),
            ("a ! 1", 2, "found `!`"),
        ];
        for (src, at, message) in cases {
            let e = error(src);
            assert_eq!(e.offset, at, "{src}: {e}");
            assert!(e.to_string().contains(message), "{src}: {e}");
        }
    }

    #[test]
    fn positions_count_lines_and_characters() {
        let e = error("a = 1 AND\n  ü = = 2");
        assert_eq!((e.line, e.column), (2, 7));
        assert!(e.to_string().ends_with("(at 2:7)"), "{e}");
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let deep = format!("{}a{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(matches!(error(&deep).kind, FilterErrorKind::TooDeep { .. }));
        let nots = format!("{}a", "NOT ".repeat(10_000));
        assert!(matches!(error(&nots).kind, FilterErrorKind::TooDeep { .. }));
        let fine = format!("{}a{}", "(".repeat(MAX_DEPTH - 1), ")".repeat(MAX_DEPTH - 1));
        assert!(parse(&fine).is_ok());
    }

    #[test]
    fn long_or_chains_stay_flat() {
        let chain = (0..5000).map(|i| format!("a = {i}")).collect::<Vec<_>>().join(" OR ");
        let Ast::Or(items) = parse(&chain).unwrap() else { panic!() };
        assert_eq!(items.len(), 5000);
    }
}
