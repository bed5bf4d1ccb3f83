//! What the stages hand each other through the bucket, in one place: chunks and outcomes as JSON
//! lines (`RowOp`, `Outcome`, one per line; a chunk's outcomes packed in an LZ4 frame), the staged
//! input finalize reads back. Every stage and the CLI read and write them through this module.

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

/// `jsonl` packed in an LZ4 frame, as apply writes a chunk's outcomes: a third of the bytes (2,000
/// unchanged rows: 283 KB of lines, 87 KB packed, in about 0.2 ms), so the chunk's last PUT ends
/// sooner and finalize downloads less. The frame declares its unpacked size and carries a
/// checksum of its content: a reader tells a damaged or cut-off frame from a whole one
/// (`unpack_into`).
pub fn packed_jsonl<T: Serialize>(items: &[T]) -> Result<Vec<u8>> {
    use std::io::Write;
    let lines = jsonl(items)?;
    let info = lz4_flex::frame::FrameInfo::new().content_size(Some(lines.len() as u64)).content_checksum(true);
    let mut frame = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::with_capacity(lines.len() / 2));
    let broken = |e: &dyn std::fmt::Display| crate::error::Error::corrupt("jsonl", e);
    frame.write_all(&lines).map_err(|e| broken(&e))?;
    frame.finish().map_err(|e| broken(&e))
}

/// The most bytes one outcome file unpacks to. Apply writes a chunk's outcomes, a few hundred
/// bytes a row: far below this; a file past it is damaged, not big.
pub const MAX_UNPACKED: u64 = 1 << 30;

/// Copy an outcome file to `out` as JSON lines, unpacking it if apply packed it (`packed_jsonl`;
/// an LZ4 frame starts with its magic number, JSON lines with `{`). A damaged frame (its checksum),
/// a cut-off one (fewer bytes than it declares), or one declaring more than `MAX_UNPACKED` is
/// `InvalidData`. Returns the bytes written.
pub fn unpack_into(from: impl std::io::BufRead, out: &mut impl std::io::Write) -> std::io::Result<u64> {
    unpack_within(from, out, MAX_UNPACKED)
}

fn unpack_within(mut from: impl std::io::BufRead, out: &mut impl std::io::Write, limit: u64) -> std::io::Result<u64> {
    const MAGIC: [u8; 4] = [0x04, 0x22, 0x4D, 0x18];
    let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
    let head = from.fill_buf()?;
    if !head.starts_with(&MAGIC) {
        return std::io::copy(&mut from, out);
    }
    // The frame's descriptor: FLG, BD, then the content size when FLG's bit 3 says so.
    let declared = match head.get(4..14) {
        Some(d) if d[0] & 0x08 != 0 => u64::from_le_bytes(d[2..10].try_into().unwrap_or_default()),
        _ => return Err(invalid("a packed outcome file without its size".into())),
    };
    if declared > limit {
        return Err(invalid(format!("a packed outcome file declaring {declared} bytes, past {limit}")));
    }
    let mut lines = std::io::Read::take(lz4_flex::frame::FrameDecoder::new(from), declared + 1);
    let n = std::io::copy(&mut lines, out).map_err(|e| invalid(format!("a damaged packed outcome file: {e}")))?;
    if n != declared {
        return Err(invalid(format!("a packed outcome file cut off: {n} of its {declared} bytes")));
    }
    Ok(n)
}

/// `unpack_into` a buffer: an outcome file as JSON lines.
pub fn unpack(body: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len());
    unpack_into(body, &mut out).map_err(|e| crate::error::Error::corrupt("outcomes", e))?;
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

    proptest! {
        /// Packed outcomes unpack to exactly the lines `jsonl` writes; lines never packed pass
        /// through as they are.
        #[test]
        fn packed_outcomes_unpack_to_the_lines_jsonl_writes(messages in prop::collection::vec("[a-zé\"{}\\\n ]{0,40}", 0..60)) {
            let outcomes: Vec<crate::model::Outcome> = messages.iter().enumerate()
                .map(|(i, m)| crate::model::Outcome::failure(i as u32 + 2, None, m.clone())).collect();
            let lines = jsonl(&outcomes).unwrap();
            let packed = packed_jsonl(&outcomes).unwrap();
            prop_assert_eq!(unpack(&packed).unwrap(), lines.clone());
            prop_assert_eq!(unpack(&lines).unwrap(), lines.clone());
            prop_assert_eq!(parse_jsonl::<crate::model::Outcome>("outcomes", &unpack(&packed).unwrap()).unwrap(), outcomes);
        }
    }

    #[test]
    fn a_chunk_of_unchanged_rows_packs_to_a_third_of_its_lines() {
        let outcomes: Vec<crate::model::Outcome> = (0..2000u32)
            .map(|row| crate::model::Outcome {
                user_id: Some(crate::model::new_user_id("acme", &format!("u{row}@acme.example.com"), "job#2")),
                change: Some(crate::model::Change::Unchanged),
                ..crate::model::Outcome::success(row + 2, crate::model::Action::Upsert, "unchanged")
            })
            .collect();
        let (lines, packed) = (jsonl(&outcomes).unwrap(), packed_jsonl(&outcomes).unwrap());
        assert!(packed.len() * 5 < lines.len() * 2, "{} bytes packed of {}", packed.len(), lines.len());
    }

    #[test]
    fn a_damaged_or_oversized_frame_is_invalid_data_never_half_read() {
        let outcomes = vec![crate::model::Outcome::failure(2, None, "x".repeat(5000))];
        let packed = packed_jsonl(&outcomes).unwrap();
        // Cut anywhere: refused, or (cut within the end mark and checksum) every line, never part.
        let lines = jsonl(&outcomes).unwrap();
        for cut in 5..packed.len() {
            let mut out = Vec::new();
            match unpack_within(&packed[..cut], &mut out, MAX_UNPACKED) {
                Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "cut at {cut}: {e}"),
                Ok(_) => assert!(out == lines && cut + 8 >= packed.len(), "cut at {cut}: {} bytes", out.len()),
            }
        }
        // Any byte of the content changed: the checksum refuses it.
        for at in 19..packed.len() - 8 {
            let mut flipped = packed.clone();
            flipped[at] ^= 0x55;
            assert!(unpack(&flipped).is_err_and(|e| e.to_string().starts_with("internal data outcomes")), "byte {at}");
        }
        let err = unpack_within(&packed[..], &mut Vec::new(), 4000).unwrap_err();
        assert!(err.kind() == std::io::ErrorKind::InvalidData && err.to_string().contains("past 4000"), "{err}");
        assert_eq!(unpack_within(&packed[..], &mut Vec::new(), 6000).unwrap(), jsonl(&outcomes).unwrap().len() as u64);
    }

    #[test]
    fn a_piece_without_a_newline_is_held_until_its_line_ends() {
        assert_eq!(split(b"{\"a\":1}\n{\"b\"", &[3, 9, 10]), [b"{\"a\":1}".to_vec(), b"{\"b\"".to_vec()]);
        assert_eq!(split(b"\n\nab\n\n", &[1, 3]), [b"ab".to_vec()]);
        assert!(split(b"", &[]).is_empty());
    }
}
