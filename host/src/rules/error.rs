//! Why a rule file was refused: the file, the line and column, the rule, and the reason.

use std::fmt;
use std::path::{Path, PathBuf};

/// A line and column in a file, both counted from 1; the column counts characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// The line, from 1.
    pub line: usize,
    /// The column in characters, from 1.
    pub column: usize,
}

impl Position {
    /// The position of byte `offset` in `text` (clamped to the text's end).
    pub(crate) fn of_offset(text: &str, offset: usize) -> Self {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Position {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

/// One problem in the rule files, found at load: every error of a file set is reported, not
/// just the first, and none of them lets the set replace the running one.
///
/// Displayed as `rules/hall.toml:12:7: rule "hallway": unknown plugin "auto-of" (…)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// The rule file.
    pub file: PathBuf,
    /// Where in the file, when the problem has a place (an unreadable file has none).
    pub position: Option<Position>,
    /// The rule the problem is in, once its name is known.
    pub rule: Option<String>,
    /// What is wrong, and where it helps, what would be right.
    pub reason: String,
}

impl RuleError {
    pub fn new(
        file: &Path,
        position: Option<Position>,
        rule: Option<&str>,
        reason: impl Into<String>,
    ) -> Self {
        RuleError {
            file: file.to_owned(),
            position,
            rule: rule.map(str::to_owned),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(Position { line, column }) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        f.write_str(": ")?;
        if let Some(rule) = &self.rule {
            write!(f, "rule \"{rule}\": ")?;
        }
        f.write_str(&self.reason)
    }
}

impl std::error::Error for RuleError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_characters_from_one() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(
            Position::of_offset(text, 0),
            Position { line: 1, column: 1 }
        );
        // `=` on the second line: after `b`, `é` (two bytes) and a space.
        let eq = text.rfind('=').unwrap();
        assert_eq!(
            Position::of_offset(text, eq),
            Position { line: 2, column: 4 }
        );
        assert_eq!(
            Position::of_offset(text, 999),
            Position { line: 3, column: 1 }
        );
    }
}
