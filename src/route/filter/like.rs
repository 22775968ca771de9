//! `LIKE` and `ILIKE` patterns: `%` matches any run of characters, `_`
//! exactly one character (not byte), and `\` makes the next character
//! literal, as in PostgreSQL with its default escape. Matching works on the
//! UTF-8 bytes: literal characters compare byte by byte, which is exact
//! because UTF-8 never starts a character inside another.
//!
//! `ILIKE` folds ASCII letters only, which is what PostgreSQL does under the
//! "C" collation; [`super::Filter::to_sql`] adds `COLLATE "C"` so the server
//! folds the same way instead of by the column's locale.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    Byte(u8),
    /// `_`
    One,
    /// `%`
    Any,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Pattern {
    tokens: Vec<Token>,
    /// ILIKE: ASCII letters match either case.
    pub(super) fold: bool,
    /// As written, for rendering SQL.
    pub(super) source: String,
}

impl Pattern {
    pub(super) fn compile(source: &str, fold: bool) -> Result<Pattern, &'static str> {
        let mut tokens = Vec::with_capacity(source.len());
        let mut bytes = source.bytes();
        while let Some(byte) = bytes.next() {
            let token = match byte {
                b'%' if tokens.last() == Some(&Token::Any) => continue,
                b'%' => Token::Any,
                b'_' => Token::One,
                // Only the first byte of an escaped character is taken here;
                // the rest of it are not special and follow as literals.
                b'\\' => Token::Byte(
                    bytes.next().ok_or("a LIKE pattern must not end with the escape character \\")?,
                ),
                _ => Token::Byte(byte),
            };
            tokens.push(match token {
                Token::Byte(b) if fold => Token::Byte(b.to_ascii_lowercase()),
                other => other,
            });
        }
        Ok(Pattern { tokens, fold, source: source.to_owned() })
    }

    /// Wildcard matching that backtracks only to the last `%`, which is
    /// enough for patterns made of `%`, `_` and literals: linear space, and
    /// no recursion for hostile patterns to exhaust.
    pub(super) fn matches(&self, text: &[u8]) -> bool {
        let (mut p, mut t) = (0, 0);
        let mut retry: Option<(usize, usize)> = None;
        loop {
            let step = match self.tokens.get(p) {
                Some(Token::Any) => {
                    retry = Some((p + 1, t));
                    p += 1;
                    continue;
                }
                Some(Token::One) if t < text.len() => Some(char_len(text, t)),
                Some(&Token::Byte(b)) if t < text.len() && self.byte_eq(text[t], b) => Some(1),
                None if t == text.len() => return true,
                _ => None,
            };
            match (step, retry) {
                (Some(step), _) => {
                    p += 1;
                    t += step;
                }
                // Let the last `%` swallow one more character and try again.
                (None, Some((after_any, from))) if from < text.len() => {
                    let from = from + char_len(text, from);
                    retry = Some((after_any, from));
                    p = after_any;
                    t = from;
                }
                (None, _) => return false,
            }
        }
    }

    fn byte_eq(&self, text: u8, pattern: u8) -> bool {
        if self.fold { text.to_ascii_lowercase() == pattern } else { text == pattern }
    }
}

/// The length of the UTF-8 character starting at `at`; a stray byte counts
/// as one character so that invalid text cannot stall matching.
fn char_len(text: &[u8], at: usize) -> usize {
    let len = match text[at] {
        0xF0.. => 4,
        0xE0.. => 3,
        0xC0.. => 2,
        _ => 1,
    };
    len.min(text.len() - at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn like(text: &str, pattern: &str) -> bool {
        Pattern::compile(pattern, false).unwrap().matches(text.as_bytes())
    }

    fn ilike(text: &str, pattern: &str) -> bool {
        Pattern::compile(pattern, true).unwrap().matches(text.as_bytes())
    }

    #[test]
    fn percent_and_underscore_match_runs_and_single_characters() {
        assert!(like("hello", "h%o"));
        assert!(like("hello", "%"));
        assert!(like("", "%"));
        assert!(!like("", "_"));
        assert!(like("hello", "h_llo"));
        assert!(!like("hello", "h_lo"));
        assert!(like("abcabc", "%abc"));
        assert!(like("mississippi", "%iss%ppi"));
        assert!(!like("mississippi", "%iss%ppx"));
        assert!(like("aXbXc", "a%b%c"));
        assert!(!like("hello", "hello_"));
        assert!(!like("Hello", "hello"));
    }

    #[test]
    fn underscore_takes_a_whole_non_ascii_character() {
        assert!(like("ä", "_"));
        assert!(!like("ä", "__"));
        assert!(like("Zürich", "Z_rich"));
        assert!(like("日本語", "_本_"));
        assert!(like("ä", "%_"));
        assert!(!like("ä", "_%_"));
    }

    #[test]
    fn backslash_escapes_wildcards_and_itself() {
        assert!(like("100%", "100\\%"));
        assert!(!like("1000", "100\\%"));
        assert!(like("a_b", "a\\_b"));
        assert!(!like("axb", "a\\_b"));
        assert!(like("a\\b", "a\\\\b"));
        assert!(like("ä", "\\ä"));
        assert!(Pattern::compile("abc\\", false).is_err());
    }

    #[test]
    fn ilike_folds_ascii_letters_only() {
        assert!(ilike("HeLLo", "hello"));
        assert!(ilike("hello", "H%O"));
        assert!(!ilike("Ä", "ä"), "non-ASCII letters are not folded");
        assert!(ilike("Äb", "Ä_"));
    }
}
