//! A tokenizer for Rust source that keeps what paths are made of (identifiers, `::`,
//! punctuation) and drops everything that may only look like a path: comments (nested block
//! comments and doc comments included) and the contents of string, raw string, byte string
//! and char literals. Lifetimes (`'a`) are told apart from char literals (`'a'`).

/// One token of Rust source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// An identifier or keyword (`crate`, `super`, `mod`, ...); a raw identifier without `r#`.
    Ident(String),
    /// `::`.
    PathSep,
    /// `->` or `=>` (kept whole so that their `>` is not taken for a closing angle bracket).
    Arrow,
    /// Any other punctuation character, one at a time.
    Punct(char),
    /// A string, char or number literal; its contents are dropped.
    Literal,
    /// A lifetime or loop label.
    Lifetime,
}

/// Splits `source` into tokens. Never fails: unterminated comments and literals run to the
/// end of the source.
pub fn tokenize(source: &str) -> Vec<Token> {
    let mut lexer = Lexer {
        chars: source.chars().collect(),
        pos: 0,
        tokens: Vec::new(),
    };
    lexer.run();
    lexer.tokens
}

struct Lexer {
    chars: Vec<char>,
    pos: usize,
    tokens: Vec<Token>,
}

impl Lexer {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos + ahead).copied()
    }

    fn run(&mut self) {
        while let Some(c) = self.peek(0) {
            match (c, self.peek(1)) {
                (c, _) if c.is_whitespace() => self.pos += 1,
                ('/', Some('/')) => self.skip_line_comment(),
                ('/', Some('*')) => self.skip_block_comment(),
                ('"', _) => {
                    self.pos += 1;
                    self.skip_quoted('"');
                }
                ('\'', _) => self.char_or_lifetime(),
                (':', Some(':')) => self.push_wide(Token::PathSep),
                ('-' | '=', Some('>')) => self.push_wide(Token::Arrow),
                (c, _) if is_ident_start(c) => self.word(),
                (c, _) if c.is_ascii_digit() => self.number(),
                (c, _) => {
                    self.pos += 1;
                    self.tokens.push(Token::Punct(c));
                }
            }
        }
    }

    /// Pushes a two-character token.
    fn push_wide(&mut self, token: Token) {
        self.pos += 2;
        self.tokens.push(token);
    }

    fn skip_line_comment(&mut self) {
        while let Some(c) = self.peek(0) {
            if c == '\n' {
                return;
            }
            self.pos += 1;
        }
    }

    /// Skips a `/* ... */` comment, which nests in Rust.
    fn skip_block_comment(&mut self) {
        self.pos += 2;
        let mut depth = 1usize;
        while depth > 0 {
            match (self.peek(0), self.peek(1)) {
                (None, _) => return,
                (Some('/'), Some('*')) => {
                    depth += 1;
                    self.pos += 2;
                }
                (Some('*'), Some('/')) => {
                    depth -= 1;
                    self.pos += 2;
                }
                _ => self.pos += 1,
            }
        }
    }

    /// Skips the rest of a quoted literal whose opening `quote` is already consumed, honouring
    /// backslash escapes, and pushes it as a literal.
    fn skip_quoted(&mut self, quote: char) {
        while let Some(c) = self.peek(0) {
            if c == '\\' {
                self.pos += 2;
                continue;
            }
            self.pos += 1;
            if c == quote {
                break;
            }
        }
        self.tokens.push(Token::Literal);
    }

    /// At a `'`: a char literal (`'x'`, `'\n'`, `'\u{1F600}'`, `'"'`) or a lifetime (`'a`).
    fn char_or_lifetime(&mut self) {
        match (self.peek(1), self.peek(2)) {
            (Some('\\'), _) => {
                self.pos += 1;
                self.skip_quoted('\'');
            }
            (Some(_), Some('\'')) => {
                self.pos += 3;
                self.tokens.push(Token::Literal);
            }
            _ => {
                self.pos += 1;
                self.take_ident_chars();
                self.tokens.push(Token::Lifetime);
            }
        }
    }

    fn take_ident_chars(&mut self) -> String {
        let start = self.pos;
        while self.peek(0).is_some_and(is_ident_continue) {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    /// An identifier, or the prefix of a raw string (`r"`, `r#"`, `br"`, `cr#"`), byte or C
    /// string (`b"`, `c"`), byte char (`b'x'`) or raw identifier (`r#type`).
    fn word(&mut self) {
        let word = self.take_ident_chars();
        match (word.as_str(), self.peek(0)) {
            ("r" | "br" | "cr", Some('"' | '#')) if self.raw_string_follows() => {
                self.skip_raw_string()
            }
            ("r", Some('#')) => {
                self.pos += 1;
                let name = self.take_ident_chars();
                self.tokens.push(Token::Ident(name));
            }
            ("b" | "c", Some('"')) => {
                self.pos += 1;
                self.skip_quoted('"');
            }
            ("b", Some('\'')) => {
                self.pos += 1;
                self.skip_quoted('\'');
            }
            _ => self.tokens.push(Token::Ident(word)),
        }
    }

    /// Whether the source at the current position is `#`s then `"` (a raw string's opening).
    fn raw_string_follows(&self) -> bool {
        let hashes = self.count_hashes(self.pos);
        self.chars.get(self.pos + hashes) == Some(&'"')
    }

    fn count_hashes(&self, from: usize) -> usize {
        self.chars
            .get(from..)
            .unwrap_or_default()
            .iter()
            .take_while(|&&c| c == '#')
            .count()
    }

    /// Skips a raw string from its opening hashes: it ends at a `"` followed by as many `#`s.
    fn skip_raw_string(&mut self) {
        let hashes = self.count_hashes(self.pos);
        self.pos += hashes + 1;
        while let Some(c) = self.peek(0) {
            self.pos += 1;
            if c == '"' && self.count_hashes(self.pos) >= hashes {
                self.pos += hashes;
                break;
            }
        }
        self.tokens.push(Token::Literal);
    }

    /// A number literal, suffix included (`0x1F`, `10_000u32`); a `.` is left as punctuation.
    fn number(&mut self) {
        self.take_ident_chars();
        self.tokens.push(Token::Literal);
    }
}

fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

fn is_ident_continue(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idents(source: &str) -> Vec<String> {
        tokenize(source)
            .into_iter()
            .filter_map(|token| match token {
                Token::Ident(name) => Some(name),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn comments_are_dropped_including_nested_block_comments() {
        let source = "a // crate::x\n/// [y](crate::y)\n//! crate::z\nb /* c /* d */ e */ f";
        assert_eq!(idents(source), ["a", "b", "f"]);
    }

    #[test]
    fn string_contents_are_dropped() {
        let source =
            r###"a "crate::x \" crate::y" b r"c" d r#"e " f"# g br##"h"# i"## j b"k" l c"m""###;
        assert_eq!(idents(source), ["a", "b", "d", "g", "j", "l"]);
    }

    #[test]
    fn char_literals_are_dropped_and_lifetimes_kept_apart() {
        let source = r#"fn f<'a>(x: &'a str) { let q = '"'; let e = '\''; let b = b'x'; let u = '\u{1F600}'; 'outer: loop {} g }"#;
        let tokens = tokenize(source);
        assert_eq!(tokens.iter().filter(|t| **t == Token::Lifetime).count(), 3);
        assert_eq!(
            idents(source),
            [
                "fn", "f", "x", "str", "let", "q", "let", "e", "let", "b", "let", "u", "loop", "g"
            ]
        );
    }

    #[test]
    fn raw_identifiers_and_path_separators() {
        assert_eq!(
            tokenize("r#type::x"),
            [
                Token::Ident("type".into()),
                Token::PathSep,
                Token::Ident("x".into())
            ]
        );
    }

    #[test]
    fn unterminated_input_does_not_panic() {
        for source in ["\"abc", "/* abc", "'", "r#\"abc", "b'", "r#", "'\\"] {
            tokenize(source);
        }
    }
}
