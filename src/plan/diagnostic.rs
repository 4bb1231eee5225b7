//! Problems found in a plan, each with the place in the file it is about
//! and a hint, printed the way compilers do (`FILE:LINE:COLUMN: error: …`)
//! so editors can jump to them.

use std::fmt;
use std::path::PathBuf;

/// One problem in a plan file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The plan file, as the user named it.
    pub file: PathBuf,
    /// 1-based line and column (in characters); `None` when the problem is
    /// about the file as a whole (it cannot be read).
    pub position: Option<(usize, usize)>,
    pub message: String,
    /// What to do about it.
    pub hint: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => write!(f, "{}:{line}:{column}: ", self.file.display())?,
            None => write!(f, "{}: ", self.file.display())?,
        }
        write!(f, "error: {}\n  hint: {}", self.message, self.hint)
    }
}

/// Every problem found in one plan, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }
}

impl fmt::Display for Diagnostics {
    /// One problem after the other, each on its own lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Turns byte offsets (what the KDL parser reports) into line and column.
pub(crate) struct LineIndex<'a> {
    text: &'a str,
    /// Byte offset at which each line starts.
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub fn new(text: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { text, starts }
    }

    /// 1-based line and column (counted in characters) of a byte offset.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset) - 1;
        let start = self.starts[line];
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line + 1, column + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_characters() {
        let idx = LineIndex::new("ab\n// é x\nsource\n");
        assert_eq!(idx.position(0), (1, 1));
        assert_eq!(idx.position(1), (1, 2));
        assert_eq!(idx.position(3), (2, 1));
        // "x" is the 6th character but the 7th byte of line 2.
        assert_eq!(idx.position(3 + 6), (2, 6));
        assert_eq!(idx.position(11), (3, 1));
        assert_eq!(idx.position(1000), (4, 1));
    }

    #[test]
    fn display_like_a_compiler() {
        let d = Diagnostic {
            file: "plan.kdl".into(),
            position: Some((3, 5)),
            message: "unknown node `sourse`".into(),
            hint: "did you mean `source`?".into(),
        };
        assert_eq!(
            d.to_string(),
            "plan.kdl:3:5: error: unknown node `sourse`\n  hint: did you mean `source`?"
        );
    }
}
