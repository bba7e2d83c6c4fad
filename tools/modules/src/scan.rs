//! Finds, in one file's tokens, the paths that name other modules of the crate (`crate::`,
//! `super::` and `self::` paths, `use` trees included) and the test-only module files it
//! declares, leaving out test-only code.

use crate::lex::{Token, tokenize};

/// Deepest nesting of `use` groups and `cfg` predicates followed; deeper input is cut off
/// there rather than overflowing the stack.
const MAX_NESTING: usize = 64;

/// What one file refers to and declares.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FileScan {
    /// Paths the file names, made absolute (from the crate root, without `crate`): `crate::`
    /// paths as written, `super::` and `self::` paths resolved against the file's module.
    /// `use crate::{a::B, c}` gives `[a, B]` and `[c]`; a glob ends in `*`.
    pub references: Vec<Vec<String>>,
    /// Test-only module files the file declares (`#[cfg(test)] mod NAME;`): the path of each
    /// below the file's own module, through any inline modules (`mod a { mod NAME; }`: `[a, NAME]`).
    pub test_modules: Vec<Vec<String>>,
}

/// Scans the source of the file whose module is `module_path` (empty for the crate root).
pub fn scan(source: &str, module_path: &[String]) -> FileScan {
    let mut scanner = Scanner {
        tokens: tokenize(source),
        pos: 0,
        file_module: module_path,
        inline_modules: Vec::new(),
        brace_depth: 0,
        found: FileScan::default(),
    };
    scanner.run();
    scanner.found
}

/// An inline `mod name { ... }` being scanned, and the brace depth outside it.
struct InlineModule {
    name: String,
    brace_depth: usize,
}

struct Scanner<'a> {
    tokens: Vec<Token>,
    pos: usize,
    file_module: &'a [String],
    inline_modules: Vec<InlineModule>,
    brace_depth: usize,
    found: FileScan,
}

impl Scanner<'_> {
    fn at(&self, ahead: usize) -> Option<&Token> {
        self.tokens.get(self.pos + ahead)
    }

    fn is_punct(&self, ahead: usize, c: char) -> bool {
        self.at(ahead) == Some(&Token::Punct(c))
    }

    fn ident(&self, ahead: usize) -> Option<&str> {
        match self.at(ahead) {
            Some(Token::Ident(name)) => Some(name),
            _ => None,
        }
    }

    fn run(&mut self) {
        while self.pos < self.tokens.len() {
            self.step();
        }
    }

    fn step(&mut self) {
        if self.is_punct(0, '#') {
            self.attribute();
        } else if self.is_punct(0, '{') {
            self.brace_depth += 1;
            self.pos += 1;
        } else if self.is_punct(0, '}') {
            self.close_brace();
            self.pos += 1;
        } else if self.ident(0) == Some("mod") {
            self.module_declaration();
        } else if self.starts_path() {
            self.path();
        } else {
            self.pos += 1;
        }
    }

    fn close_brace(&mut self) {
        self.brace_depth = self.brace_depth.saturating_sub(1);
        if self
            .inline_modules
            .last()
            .is_some_and(|module| module.brace_depth == self.brace_depth)
        {
            self.inline_modules.pop();
        }
    }

    /// At `mod`: an inline module's block deepens the module path until its `}`.
    fn module_declaration(&mut self) {
        match self.ident(1) {
            Some(name) if self.is_punct(2, '{') => {
                let name = name.to_owned();
                self.inline_modules.push(InlineModule {
                    name,
                    brace_depth: self.brace_depth,
                });
                self.pos += 2;
            }
            _ => self.pos += 1,
        }
    }

    /// Whether a `crate::`, `$crate::`, `super::` or `self::` path starts here (and is not a
    /// visibility restriction, `pub(in crate::x)`).
    fn starts_path(&self) -> bool {
        let is_root = matches!(self.ident(0), Some("crate" | "super" | "self"));
        let previous = |back: usize| self.pos.checked_sub(back).and_then(|i| self.tokens.get(i));
        let in_visibility = previous(1) == Some(&Token::Ident("in".into()))
            && previous(2) == Some(&Token::Punct('('))
            && previous(3) == Some(&Token::Ident("pub".into()));
        is_root
            && self.at(1) == Some(&Token::PathSep)
            && previous(1) != Some(&Token::PathSep)
            && !in_visibility
    }

    fn path(&mut self) {
        let (leaves, end) = parse_use_tree(&self.tokens, self.pos, 0);
        self.pos = end.max(self.pos + 1);
        let current = self.current_module();
        let resolved = leaves.iter().filter_map(|leaf| resolve(leaf, &current));
        self.found
            .references
            .extend(resolved.filter(|path| !path.is_empty()));
    }

    fn current_module(&self) -> Vec<String> {
        let inline = self.inline_modules.iter().map(|module| &module.name);
        self.file_module.iter().chain(inline).cloned().collect()
    }

    /// At `#`: a `#[cfg(test)]` (or `#![cfg(test)]`) attribute makes what it applies to
    /// skipped; any other attribute is scanned like code (its strings are already dropped).
    fn attribute(&mut self) {
        let inner = self.is_punct(1, '!');
        let open = self.pos + if inner { 2 } else { 1 };
        if self.tokens.get(open) != Some(&Token::Punct('[')) {
            self.pos += 1;
            return;
        }
        let close = matching_close(&self.tokens, open);
        let contents = self.tokens.get(open + 1..close).unwrap_or_default();
        if !cfg_is_test_only(contents) {
            self.pos += 1;
            return;
        }
        self.pos = close + 1;
        if inner {
            self.skip_rest_of_block();
        } else {
            self.skip_test_item();
        }
    }

    /// Skips the item, field, statement or match arm after a test-only attribute.
    fn skip_test_item(&mut self) {
        self.skip_outer_attributes();
        self.skip_visibility();
        match self.ident(0) {
            Some("mod") => self.skip_test_module(),
            Some(word) if ITEM_KEYWORDS.contains(&word) => {
                let ends_with_semicolon = self.item_ends_with_semicolon();
                self.skip_item(ends_with_semicolon);
            }
            _ => self.skip_fragment(),
        }
    }

    fn skip_outer_attributes(&mut self) {
        while self.is_punct(0, '#') && self.is_punct(1, '[') {
            self.pos = matching_close(&self.tokens, self.pos + 1) + 1;
        }
    }

    fn skip_visibility(&mut self) {
        if self.ident(0) == Some("pub") {
            self.pos += 1;
            if self.is_punct(0, '(') {
                self.pos = matching_close(&self.tokens, self.pos) + 1;
            }
        }
    }

    /// At the `mod` of a test-only module: a block is skipped, a file is recorded.
    fn skip_test_module(&mut self) {
        let Some(name) = self.ident(1).map(str::to_owned) else {
            self.pos += 1;
            return;
        };
        if self.is_punct(2, ';') {
            let mut path: Vec<String> =
                self.inline_modules.iter().map(|m| m.name.clone()).collect();
            path.push(name);
            self.found.test_modules.push(path);
            self.pos += 3;
        } else if self.is_punct(2, '{') {
            self.pos = matching_close(&self.tokens, self.pos + 2) + 1;
        } else {
            self.pos += 1;
        }
    }

    /// Whether the item here ends at a `;` even after a `{...}` (`use a::{b};`,
    /// `const X: S = S {..};`) rather than at its block (`fn`, `impl`, `const fn`, ...).
    fn item_ends_with_semicolon(&self) -> bool {
        match self.ident(0) {
            Some("type" | "use" | "let") => true,
            Some("const" | "static") => {
                !matches!(self.ident(1), Some("fn" | "unsafe" | "async" | "extern"))
            }
            _ => false,
        }
    }

    /// Skips an item: to its `;`, or its block (then, if `ends_with_semicolon`, to the `;`).
    fn skip_item(&mut self, ends_with_semicolon: bool) {
        while let Some(token) = self.at(0) {
            match token {
                Token::Punct(';') => {
                    self.pos += 1;
                    return;
                }
                Token::Punct('(' | '[') => self.pos = matching_close(&self.tokens, self.pos) + 1,
                Token::Punct('{') => {
                    self.pos = matching_close(&self.tokens, self.pos) + 1;
                    if !ends_with_semicolon {
                        return;
                    }
                }
                Token::Punct(')' | ']' | '}') => return,
                _ => self.pos += 1,
            }
        }
    }

    /// Skips a field (`name: Type<A, B>,`), statement or match arm: to the `,` or `;` that
    /// ends it, through the block that ends it, or to the bracket closing what holds it.
    fn skip_fragment(&mut self) {
        let mut angle_depth = 0usize;
        while let Some(token) = self.at(0) {
            match token {
                Token::Punct(';') => {
                    self.pos += 1;
                    return;
                }
                Token::Punct(',') if angle_depth == 0 => {
                    self.pos += 1;
                    return;
                }
                Token::Punct('<') => {
                    angle_depth += 1;
                    self.pos += 1;
                }
                Token::Punct('>') => {
                    angle_depth = angle_depth.saturating_sub(1);
                    self.pos += 1;
                }
                Token::Punct('(' | '[') => self.pos = matching_close(&self.tokens, self.pos) + 1,
                Token::Punct('{') => {
                    self.pos = matching_close(&self.tokens, self.pos) + 1;
                    return;
                }
                Token::Punct(')' | ']' | '}') => return,
                _ => self.pos += 1,
            }
        }
    }

    /// After `#![cfg(test)]`: skips to the `}` closing the enclosing block (left for the main
    /// loop) or the end of the file.
    fn skip_rest_of_block(&mut self) {
        while let Some(token) = self.at(0) {
            match token {
                Token::Punct('(' | '[' | '{') => {
                    self.pos = matching_close(&self.tokens, self.pos) + 1
                }
                Token::Punct(')' | ']' | '}') => return,
                _ => self.pos += 1,
            }
        }
    }
}

/// Keywords that start an item a test-only attribute may apply to (`mod` is handled apart).
const ITEM_KEYWORDS: &[&str] = &[
    "fn",
    "impl",
    "struct",
    "enum",
    "union",
    "trait",
    "type",
    "const",
    "static",
    "use",
    "extern",
    "unsafe",
    "async",
    "macro_rules",
    "let",
];

/// The index of the bracket closing the one at `open` (any of `()[]{}`), or the number of
/// tokens if it is not closed.
fn matching_close(tokens: &[Token], open: usize) -> usize {
    let mut depth = 0usize;
    for (index, token) in tokens.iter().enumerate().skip(open) {
        match token {
            Token::Punct('(' | '[' | '{') => depth += 1,
            Token::Punct(')' | ']' | '}') => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return index;
                }
            }
            _ => {}
        }
    }
    tokens.len()
}

/// Reads a path from `pos` (`crate::a::B`, `super::{a, b::{C, D}}`, `crate::a::*`), returning
/// each path it names with the groups expanded, and the position after it.
fn parse_use_tree(tokens: &[Token], mut pos: usize, nesting: usize) -> (Vec<Vec<String>>, usize) {
    let mut segments = Vec::new();
    loop {
        match tokens.get(pos) {
            Some(Token::Ident(name)) => {
                segments.push(name.clone());
                pos += 1;
            }
            Some(Token::Punct('*')) => {
                segments.push("*".to_owned());
                return (vec![segments], pos + 1);
            }
            Some(Token::Punct('{')) if nesting < MAX_NESTING => {
                let (leaves, end) = parse_use_group(tokens, pos + 1, nesting + 1);
                let prefixed = leaves
                    .into_iter()
                    .map(|leaf| [segments.clone(), leaf].concat());
                return (prefixed.collect(), end);
            }
            _ => return (vec![segments], pos),
        }
        if tokens.get(pos) != Some(&Token::PathSep) {
            return (vec![segments], pos);
        }
        pos += 1;
    }
}

/// Reads the elements of a `{...}` use group from just after its `{` to just after its `}`.
fn parse_use_group(tokens: &[Token], mut pos: usize, nesting: usize) -> (Vec<Vec<String>>, usize) {
    let mut leaves = Vec::new();
    loop {
        match tokens.get(pos) {
            None => return (leaves, pos),
            Some(Token::Punct('}')) => return (leaves, pos + 1),
            Some(Token::Punct(',')) => pos += 1,
            Some(_) => {
                let (element, end) = parse_use_tree(tokens, pos, nesting);
                leaves.extend(element.into_iter().filter(|leaf| !leaf.is_empty()));
                pos = skip_to_group_separator(tokens, end);
            }
        }
    }
}

/// Skips what follows a use group element (`as name`) up to the next `,` or `}`.
fn skip_to_group_separator(tokens: &[Token], mut pos: usize) -> usize {
    while let Some(token) = tokens.get(pos) {
        match token {
            Token::Punct(',' | '}') => return pos,
            Token::Punct('(' | '[' | '{') => pos = matching_close(tokens, pos) + 1,
            _ => pos += 1,
        }
    }
    pos
}

/// Makes `path` (starting with `crate`, `super` or `self`) absolute, as seen from the module
/// `current`; `None` for other paths and for a `super` above the crate root.
fn resolve(path: &[String], current: &[String]) -> Option<Vec<String>> {
    let (first, rest) = path.split_first()?;
    let mut absolute = match first.as_str() {
        "crate" => Vec::new(),
        "self" => current.to_vec(),
        "super" => {
            let mut parent = current.to_vec();
            parent.pop()?;
            parent
        }
        _ => return None,
    };
    let mut leading = true;
    for segment in rest {
        match segment.as_str() {
            "super" if leading => {
                absolute.pop()?;
            }
            // `self` leading (`self::super`) or ending a use group (`a::{self, B}`).
            "self" => {}
            _ => {
                leading = false;
                absolute.push(segment.clone());
            }
        }
    }
    Some(absolute)
}

/// Whether an attribute's contents are `cfg(P)` with `P` test-only.
fn cfg_is_test_only(attribute: &[Token]) -> bool {
    match attribute {
        [
            Token::Ident(cfg),
            Token::Punct('('),
            predicate @ ..,
            Token::Punct(')'),
        ] if cfg == "cfg" => predicate_is_test_only(predicate, 0),
        _ => false,
    }
}

/// `test`, or `all(..)` / `any(..)` with a test-only predicate among them: `any(test,
/// feature = "testing")` is test-support code, counted as test-only. `not(..)` never is.
fn predicate_is_test_only(predicate: &[Token], nesting: usize) -> bool {
    match predicate {
        [Token::Ident(name)] => name == "test",
        [
            Token::Ident(operator),
            Token::Punct('('),
            arguments @ ..,
            Token::Punct(')'),
        ] if (operator == "all" || operator == "any") && nesting < MAX_NESTING => {
            split_arguments(arguments)
                .into_iter()
                .any(|argument| predicate_is_test_only(argument, nesting + 1))
        }
        _ => false,
    }
}

/// Splits a comma-separated list at its top-level commas.
fn split_arguments(tokens: &[Token]) -> Vec<&[Token]> {
    let mut arguments = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    while let Some(token) = tokens.get(pos) {
        match token {
            Token::Punct('(' | '[' | '{') => pos = matching_close(tokens, pos) + 1,
            Token::Punct(',') => {
                arguments.push(&tokens[start..pos]);
                pos += 1;
                start = pos;
            }
            _ => pos += 1,
        }
    }
    arguments.push(tokens.get(start..).unwrap_or_default());
    arguments
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(path: &str) -> Vec<String> {
        path.split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The references of `source` scanned as module `module_path`, as `a::B` strings.
    fn references_in(module_path: &str, source: &str) -> Vec<String> {
        scan(source, &module(module_path))
            .references
            .iter()
            .map(|path| path.join("::"))
            .collect()
    }

    #[test]
    fn use_groups_nested_and_multi_line() {
        let source = "use crate::{\n    config::Config,\n    connector::{mqtt::{Link, Topic}, ConnectorState},\n    time,\n    store::{self, State as S},\n};";
        assert_eq!(
            references_in("service", source),
            [
                "config::Config",
                "connector::mqtt::Link",
                "connector::mqtt::Topic",
                "connector::ConnectorState",
                "time",
                "store",
                "store::State"
            ]
        );
    }

    #[test]
    fn visibility_and_globs() {
        let source = "pub use crate::a::A;\npub(crate) use crate::b::*;\npub(in crate::c) struct S;\nuse self::inner::X;";
        assert_eq!(references_in("m", source), ["a::A", "b::*", "m::inner::X"]);
    }

    #[test]
    fn inline_paths_in_types_expressions_and_attributes() {
        let source = r#"
            #[derive(crate::derive::Thing)]
            #[serde(default = "crate::defaults::port")]
            struct S { field: Vec<crate::event::Event> }
            fn f() -> crate::error::Result<()> {
                let x = crate::time::now();
                let y: <crate::t::T as Trait>::Out = $crate::macros::m!(crate::z::Z {});
                Ok(())
            }
        "#;
        assert_eq!(
            references_in("m", source),
            [
                "derive::Thing",
                "event::Event",
                "error::Result",
                "time::now",
                "t::T",
                "macros::m",
                "z::Z"
            ]
        );
    }

    #[test]
    fn comments_strings_and_char_literals_name_nothing() {
        let source = r####"
            //! See [the config](crate::config).
            /// Uses [`crate::a::A`].
            // crate::b::B
            /* crate::c::C /* crate::d::D */ crate::e::E */
            fn f<'a>(s: &'a str) -> &'a str {
                let _ = "crate::f::F";
                let _ = r#"crate::g::G " still"#;
                let _ = br"crate::h::H";
                let _ = ('"', b'\'', '\\');
                crate::real::Real::get(s)
            }
        "####;
        assert_eq!(references_in("m", source), ["real::Real::get"]);
    }

    #[test]
    fn cfg_test_blocks_are_skipped() {
        let source = r#"
            use crate::kept::A;
            #[cfg(test)]
            mod tests {
                use crate::fixture::F;
                fn braces() { let s = "}"; let c = '}'; /* } */ }
                mod nested { use crate::fixture::G; }
            }
            #[cfg(any(test, feature = "testing"))]
            #[allow(dead_code)]
            pub(crate) fn helper() -> crate::support::S { todo!() }
            #[cfg(all(unix, test))]
            use crate::unix_test::U;
            #[cfg(not(test))]
            use crate::production::P;
            #[cfg(feature = "x")]
            use crate::feature::X;
            struct S {
                #[cfg(test)]
                probe: std::collections::HashMap<String, crate::probe::P>,
                kept: crate::field::F,
            }
            fn g() { crate::after::After::new(); }
        "#;
        assert_eq!(
            references_in("m", source),
            [
                "kept::A",
                "production::P",
                "feature::X",
                "field::F",
                "after::After::new"
            ]
        );
    }

    #[test]
    fn cfg_test_module_files_are_recorded() {
        let source = "#[cfg(test)]\nmod tests;\n#[cfg(test)] pub mod support;\nmod real;\nmod outer {\n    #[cfg(test)]\n    mod inner_tests;\n}\n";
        let found = scan(source, &module("m"));
        assert_eq!(
            found.test_modules,
            [
                module("tests"),
                module("support"),
                module("outer::inner_tests")
            ]
        );
    }

    #[test]
    fn inner_cfg_test_attribute_skips_the_file() {
        let source = "#![cfg(test)]\nuse crate::fixture::F;\nfn f() { crate::other::g(); }";
        assert!(references_in("m", source).is_empty());
    }

    #[test]
    fn super_paths_resolve_against_the_module() {
        let source = "use super::sibling::S;\nuse super::super::top::T;\nuse super::{a::A, b};\nfn f() { super::super::super::root::X; super::super::super::super::beyond::Y; }";
        assert_eq!(
            references_in("connector::mqtt::link", source),
            [
                "connector::mqtt::sibling::S",
                "connector::top::T",
                "connector::mqtt::a::A",
                "connector::mqtt::b",
                "root::X"
            ]
        );
        assert_eq!(
            references_in("config", "use super::status::Status;"),
            ["status::Status"]
        );
    }

    #[test]
    fn inline_modules_deepen_super() {
        let source = "mod inner {\n    use super::super::other::O;\n    mod deeper { use super::x::X; }\n}\nuse super::after::A;";
        assert_eq!(
            references_in("m", source),
            ["other::O", "m::inner::x::X", "after::A"]
        );
    }

    #[test]
    fn odd_input_does_not_panic() {
        for source in [
            "crate::",
            "use crate::{",
            "use crate::{a::{b, ",
            "#[cfg(test)]",
            "#[cfg(test)] mod",
            "#[cfg(",
            "#[cfg(all(test",
            "}}}} crate::a::B",
            "use super::",
            "#![cfg(test)] }",
            "mod a {",
            "use crate::{a as}",
        ] {
            scan(source, &module("m"));
        }
        let deep = format!("use crate::{}a", "{".repeat(10_000));
        scan(&deep, &module("m"));
    }
}
