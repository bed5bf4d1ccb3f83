//! What the stages hand each other through the bucket, in one place: chunks and outcomes as JSON
//! lines (`RowOp`, `Outcome`, one per line), the staged input finalize reads back. Every stage and
//! the CLI read and write them through this module.

use crate::error::Result;
use serde::{Deserialize, Serialize};

/// What finalize needs from ingest: the input as read (to echo every row) and the warnings.
#[derive(Debug, Serialize, Deserialize)]
pub struct StagedInput {
    pub warnings: Vec<String>,
    pub ingested_at: String,
    /// Key of a copy of the file as ingest read it (`keys::staged_source`): finalize decodes it
    /// again, with the same decoder, rather than ingest writing a JSON copy of every row (which
    /// cost ingest ~10% of its time and more memory than the file itself).
    #[serde(default)]
    pub source: Option<String>,
    /// A OneRoster bundle as dropped (`keys::staged_bundle`): finalize cuts the failed-records
    /// bundle from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
}

pub fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| crate::error::Error::corrupt("json", e))
}

pub fn jsonl<T: Serialize>(items: &[T]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(items.len() * 128);
    for item in items {
        serde_json::to_writer(&mut out, item).map_err(|e| crate::error::Error::corrupt("jsonl", e))?;
        out.push(b'\n');
    }
    Ok(out)
}

pub fn parse_jsonl<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<Vec<T>> {
    bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| parse_line(what, l)).collect()
}

/// One JSON line (`what` names the file in the error).
pub fn parse_line<T: for<'de> Deserialize<'de>>(what: &str, line: &[u8]) -> Result<T> {
    serde_json::from_slice(line).map_err(|e| crate::error::Error::corrupt(what, e))
}

/// JSON lines cut from pieces as they arrive (`ObjectStore::get_pieces`): each complete line is
/// handed over once, blank lines skipped, as `parse_jsonl` reads them. Holds at most the one
/// line a piece ended inside.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    pub fn push(&mut self, piece: &[u8], mut line: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let Some(end) = memchr::memrchr(b'\n', piece) else {
            self.partial.extend_from_slice(piece);
            return Ok(());
        };
        let (complete, rest) = piece.split_at(end + 1);
        let mut lines = complete[..end].split(|b| *b == b'\n');
        if !self.partial.is_empty() {
            // The piece's first line ends the one the last piece ended inside.
            self.partial.extend_from_slice(lines.next().unwrap_or_default());
            line(&self.partial)?;
            self.partial.clear();
        }
        for l in lines.filter(|l| !l.is_empty()) {
            line(l)?;
        }
        self.partial.extend_from_slice(rest);
        Ok(())
    }

    /// Bytes of a line begun and not yet ended.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    /// The last line, when the body does not end with a newline.
    pub fn finish(self, mut line: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        if self.partial.is_empty() { Ok(()) } else { line(&self.partial) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split(body: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let (mut lines, mut splitter, mut at) = (Vec::new(), LineSplitter::default(), 0);
        let mut keep = |l: &[u8]| {
            lines.push(l.to_vec());
            Ok(())
        };
        for &cut in cuts.iter().chain([&body.len()]) {
            let cut = cut.clamp(at, body.len());
            splitter.push(&body[at..cut], &mut keep).unwrap();
            at = cut;
        }
        splitter.finish(&mut keep).unwrap();
        lines
    }

    proptest! {
        /// However a body is cut into pieces, the lines are those of the whole body.
        #[test]
        fn lines_cut_anywhere_come_out_whole_and_once(body in "([a-zé{}\"]{0,12}\n?){0,40}", mut cuts in prop::collection::vec(0usize..600, 0..12)) {
            cuts.sort_unstable();
            let whole: Vec<Vec<u8>> = body.as_bytes().split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect();
            prop_assert_eq!(split(body.as_bytes(), &cuts), whole);
        }
    }

    #[test]
    fn a_piece_without_a_newline_is_held_until_its_line_ends() {
        assert_eq!(split(b"{\"a\":1}\n{\"b\"", &[3, 9, 10]), [b"{\"a\":1}".to_vec(), b"{\"b\"".to_vec()]);
        assert_eq!(split(b"\n\nab\n\n", &[1, 3]), [b"ab".to_vec()]);
        assert!(split(b"", &[]).is_empty());
    }
}
