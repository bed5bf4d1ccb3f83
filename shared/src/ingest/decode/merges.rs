//! Merged cells. A range merged down a column (`Sales` across rows 2 to 6 of Department) shows its
//! value on every row it covers, but the file stores it in the top cell alone: read cell by cell,
//! rows 3 to 6 had no department, created without one and nobody told. A covered cell of a row
//! with data reads as the top cell's value. Only down the range's first column: a range merged
//! across columns (`Ann Smith` over First and Last Name) is one value, not one per column.

use super::FileError;
use quick_xml::events::{BytesStart, Event};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Seek};

/// Merged ranges a workbook may declare in all (every sheet). Real rosters have a handful; a
/// part of 1 GB could declare 40 million, 640 MB once read.
pub const MAX_MERGED_RANGES: usize = 1 << 20;

/// A range merged over more than one row: its first column, first and last row (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Down {
    pub col: u32,
    pub first: u32,
    pub last: u32,
}

impl Down {
    /// `D2:D6` as the spreadsheet names it.
    fn name(&self) -> String {
        let col = super::column_name(self.col as usize);
        format!("{col}{}:{col}{}", u64::from(self.first) + 1, u64::from(self.last) + 1)
    }
}

/// The ranges of one sheet merged down, from (first row, first column, last row, last column).
pub fn downward(ranges: impl IntoIterator<Item = ((u32, u32), (u32, u32))>) -> Vec<Down> {
    ranges.into_iter().filter(|((r0, _), (r1, _))| r1 > r0).map(|((first, col), (last, _))| Down { col, first, last }).collect()
}

/// Fills the covered cells of each row from the top cell of its range, row by row in order.
#[derive(Debug, Default)]
pub struct Filler {
    /// By first row.
    ranges: Vec<Down>,
    next: usize,
    /// Ranges the rows are in, with their top cell's value.
    open: Vec<(Down, String)>,
    /// Cells filled so far, and the first range that filled one.
    pub filled: u64,
    pub example: Option<String>,
}

impl Filler {
    pub fn new(mut ranges: Vec<Down>) -> Self {
        ranges.sort_by_key(|d| (d.first, d.col));
        Filler { ranges, ..Filler::default() }
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Row `row` (0-based) has data: the values of its covered cells that are blank, by column.
    /// `value_at` is the row's text in a column. Rows come in order; rows without data are not
    /// given (a range running past the data adds no row).
    pub fn fills<'v>(&mut self, row: u32, value_at: impl Fn(u32) -> Option<&'v str>) -> Vec<(u32, String)> {
        self.open.retain(|(d, _)| d.last >= row);
        let mut fills = Vec::new();
        for (d, top) in &self.open {
            if d.first < row && value_at(d.col).is_none_or(|v| v.trim().is_empty()) {
                fills.push((d.col, top.clone()));
                self.filled += 1;
                self.example.get_or_insert_with(|| d.name());
            }
        }
        while let Some(d) = self.ranges.get(self.next).filter(|d| d.first <= row).copied() {
            self.next += 1;
            // A range whose top row had no data fills nothing.
            if d.first == row
                && let Some(top) = value_at(d.col).filter(|v| !v.trim().is_empty())
            {
                self.open.push((d, top.to_string()));
            }
        }
        fills
    }

    /// The warning for a sheet whose cells were filled.
    pub fn warning(&self, sheet: Option<&str>) -> Option<String> {
        let example = self.example.as_deref()?;
        let on = sheet.map(|s| format!(" on sheet \"{}\"", crate::wording::quoted(s))).unwrap_or_default();
        let cells = if self.filled == 1 { "1 cell".to_string() } else { format!("{} cells", crate::wording::thousands(self.filled)) };
        Some(format!(
            "{cells}{on} are covered by merged cells (the first: {example}) and were read as the merged value the spreadsheet shows on their row; unmerge them if a row should be blank"
        ))
    }
}

/// Every sheet's ranges merged down, by sheet name, from an XLSX's parts: the workbook names its
/// sheets and their parts, each sheet part lists its merged ranges after its cells.
pub fn xlsx<R: Read + Seek>(zip: &mut zip::ZipArchive<R>) -> Result<HashMap<String, Vec<Down>>, FileError> {
    xlsx_within(zip, MAX_MERGED_RANGES)
}

/// `xlsx`, keeping at most `limit` ranges.
pub fn xlsx_within<R: Read + Seek>(zip: &mut zip::ZipArchive<R>, limit: usize) -> Result<HashMap<String, Vec<Down>>, FileError> {
    let damaged = |e: &dyn std::fmt::Display| FileError::Corrupt { format: "XLSX", detail: e.to_string() };
    let index = |zip: &zip::ZipArchive<R>, name: &str| {
        (0..zip.len()).find(|&i| zip.name_for_index(i).and_then(|n| n.ok()).is_some_and(|n| n.eq_ignore_ascii_case(name)))
    };
    // Small parts: the sheets' names and where their parts are.
    let pairs = |zip: &mut zip::ZipArchive<R>, name: &str, wanted: &str, keys: [&str; 2]| -> Result<Vec<[Option<String>; 2]>, FileError> {
        let Some(i) = index(zip, name) else { return Ok(Vec::new()) };
        let entry = zip.by_index(i).map_err(|e| damaged(&e))?;
        let mut found = Vec::new();
        elements(BufReader::new(entry), wanted, |e| {
            found.push(keys.map(|k| attr(e, k)));
            true
        })
        .map_err(|e| damaged(&e))?;
        Ok(found)
    };
    // The relationship id is `r:id` (any prefix); `id` alone matches it, not `sheetId`.
    let sheets = pairs(zip, "xl/workbook.xml", "sheet", ["name", "id"])?;
    let rels = pairs(zip, "xl/_rels/workbook.xml.rels", "Relationship", ["Id", "Target"])?;
    let mut merged = HashMap::new();
    let mut total = 0usize;
    for [name, id] in sheets {
        let (Some(name), Some(id)) = (name, id) else { continue };
        let Some(target) = rels.iter().find(|[i, _]| i.as_deref() == Some(id.as_str())).and_then(|[_, t]| t.clone()) else { continue };
        let path = match target.strip_prefix('/') {
            Some(absolute) => absolute.to_string(),
            None => format!("xl/{target}"),
        };
        let Some(i) = index(zip, &path) else { continue };
        let entry = zip.by_index(i).map_err(|e| damaged(&e))?;
        // Only ranges merged down are kept (12 bytes each), and only so many.
        let mut down = Vec::new();
        merge_refs(entry, |r| {
            if let Some(d) = range(r).and_then(|r| downward([r]).pop()) {
                down.push(d);
                total += 1;
            }
            total <= limit
        })
        .map_err(|e| damaged(&e))?;
        if total > limit {
            return Err(FileError::TooManyMerged { limit });
        }
        if !down.is_empty() {
            merged.insert(name, down);
        }
    }
    Ok(merged)
}

/// Each element named `wanted` (any namespace prefix), given to `each` until it says to stop.
fn elements<B: BufRead>(input: B, wanted: &str, mut each: impl FnMut(&BytesStart<'_>) -> bool) -> Result<(), quick_xml::Error> {
    let mut reader = quick_xml::Reader::from_reader(input);
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf)? {
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == wanted && !each(&e) => return Ok(()),
            Event::Eof => return Ok(()),
            _ => {}
        }
        buf.clear();
    }
}

/// The `ref` of each `<mergeCell>` element (any namespace prefix) of a sheet part, given to `each`
/// until it says to stop. A sheet part is most of an XLSX (477 MB for a million rows of ten
/// columns): parsed as XML, this pass cost half as much again as reading the cells; searched as
/// bytes it costs little more than the inflating. A `<` never stands raw in XML text or attribute
/// values, so `<mergeCell` (or `<x:mergeCell`) found in the bytes is the element.
fn merge_refs<R: Read>(mut input: R, mut each: impl FnMut(&str) -> bool) -> std::io::Result<()> {
    const NAME: &[u8] = b"mergeCell";
    // An element is short (`<x:mergeCell ref="XFD1048575:XFD1048576"/>`); a longer one is skipped.
    const LONGEST: usize = 1024;
    let finder = memchr::memmem::Finder::new(NAME);
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 17);
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let n = input.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        // Bytes up to `done` are searched; an element not ended yet is kept from its start.
        let mut done = 0;
        let mut waiting = None;
        while let Some(i) = finder.find(&buf[done..]) {
            let at = done + i;
            done = at + NAME.len();
            // `<` then an optional `prefix:` right before the name, and the name ends there.
            let prefix =
                buf[..at].iter().rev().take(64).position(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':')));
            let start = prefix.map(|k| at - k - 1).filter(|&st| buf[st] == b'<' && (st + 1 == at || buf[at - 1] == b':'));
            let ends_name = buf.get(done).map(|b| b.is_ascii_whitespace() || matches!(b, b'/' | b'>'));
            let Some(start) = start.filter(|_| ends_name != Some(false)) else { continue };
            let Some(close) = memchr::memchr(b'>', &buf[done..(done + LONGEST).min(buf.len())]) else {
                if buf.len() - start < LONGEST {
                    waiting = Some(start); // its end arrives with the next bytes
                    break;
                }
                continue;
            };
            let element = &buf[done..done + close];
            done += close + 1;
            if let Some(r) = ref_attribute(element)
                && !each(r)
            {
                return Ok(());
            }
        }
        // Keep what a name cut at the chunk's end needs (its `<prefix:` too), never an element
        // already given.
        let from = waiting.unwrap_or_else(|| done.max(buf.len().saturating_sub(NAME.len() + 64)));
        buf.drain(..from);
    }
}

/// The value of `ref="..."` (or `x:ref`, single quotes) among an element's attributes.
fn ref_attribute(attrs: &[u8]) -> Option<&str> {
    let mut rest = attrs;
    while let Some(i) = memchr::memmem::find(rest, b"ref") {
        let before = i.checked_sub(1).map(|j| rest[j]);
        let after = &rest[i + 3..];
        rest = after;
        if !before.is_some_and(|b| b.is_ascii_whitespace() || b == b':') {
            continue;
        }
        let after = after.trim_ascii_start().strip_prefix(b"=")?.trim_ascii_start();
        let quote = *after.first().filter(|q| matches!(q, b'"' | b'\''))?;
        let value = &after[1..];
        let end = memchr::memchr(quote, value)?;
        return std::str::from_utf8(&value[..end]).ok();
    }
    None
}

/// The value of attribute `key` (any namespace prefix).
fn attr(e: &BytesStart<'_>, key: &str) -> Option<String> {
    e.attributes()
        .filter_map(Result::ok)
        .find(|a| {
            let k = a.key.as_ref();
            k == key || k.rsplit_once(':').is_some_and(|(_, local)| local == key)
        })
        .and_then(|a| a.normalized_value(quick_xml::XmlVersion::Implicit1_0).ok().map(|v| v.into_owned()))
}

/// `D2:D6` -> ((1, 3), (5, 3)): (row, column) of its corners, 0-based; a single cell is no range.
fn range(r: &str) -> Option<((u32, u32), (u32, u32))> {
    let (a, b) = r.split_once(':')?;
    let (a, b) = (cell(a)?, cell(b)?);
    Some(((a.0.min(b.0), a.1.min(b.1)), (a.0.max(b.0), a.1.max(b.1))))
}

/// `D2` -> (1, 3).
fn cell(c: &str) -> Option<(u32, u32)> {
    let c = c.trim().replace('$', "");
    let split = c.find(|ch: char| ch.is_ascii_digit())?;
    let (letters, digits) = c.split_at(split);
    if letters.is_empty() || letters.len() > 3 || !letters.bytes().all(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    let col = letters.bytes().fold(0u32, |n, b| n * 26 + u32::from(b.to_ascii_uppercase() - b'A' + 1)) - 1;
    let row: u32 = digits.parse().ok()?;
    ((1..=super::guards::MAX_SHEET_ROWS).contains(&row) && col < super::guards::MAX_SHEET_COLUMNS).then(|| (row - 1, col))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_read_as_spreadsheets_write_them() {
        assert_eq!(range("D2:D6"), Some(((1, 3), (5, 3))));
        assert_eq!(range("$B$3:C10"), Some(((2, 1), (9, 2))));
        assert_eq!(range("AA1:A1"), Some(((0, 0), (0, 26))), "corners in any order");
        assert_eq!(range("XFD1048576:XFD1048576"), Some(((1_048_575, 16_383), (1_048_575, 16_383))));
        for bad in ["D2", "D0:D2", "XFE1:XFE2", "D1048577:D1048578", "1:2", "D2:", "ÄÖ1:A2", "ABCD1:A2"] {
            assert_eq!(range(bad), None, "{bad}");
        }
    }

    /// Covered cells of rows with data read as the top cell; a range across columns fills only
    /// its first column; a range whose top is blank, or the part of a range past the data, fills
    /// nothing; a covered cell holding a value keeps it.
    #[test]
    fn covered_cells_of_rows_with_data_read_as_their_top_cell() {
        let rows: Vec<Vec<&str>> = vec![
            vec!["Email", "Dept", "Group"],
            vec!["a@x.com", "Sales", "G1"],
            vec!["b@x.com", "", ""],
            vec!["c@x.com", "", "kept"],
            vec!["d@x.com", "", ""],
        ];
        let mut f = Filler::new(downward([((1, 1), (4, 1)), ((1, 2), (2, 2)), ((2, 0), (3, 0)), ((3, 2), (4, 2))]));
        let mut out = Vec::new();
        for (r, cells) in rows.iter().enumerate() {
            out.push(f.fills(r as u32, |c| cells.get(c as usize).copied()));
        }
        assert_eq!(out[0], []);
        assert_eq!(out[1], []);
        assert_eq!(out[2], [(1, "Sales".to_string()), (2, "G1".into())]);
        assert_eq!(out[3], [(1, "Sales".to_string())], "a covered cell with a value keeps it");
        assert_eq!(out[4], [(1, "Sales".to_string()), (2, "kept".into())]);
        assert_eq!(f.filled, 5);
        assert_eq!(f.example.as_deref(), Some("B2:B5"));
        let w = f.warning(Some("Staff")).unwrap();
        assert!(w.starts_with("5 cells on sheet \"Staff\" are covered by merged cells (the first: B2:B5)"), "{w}");
        // Across columns only: nothing to fill.
        assert!(downward([((1, 1), (1, 5))]).is_empty());
    }

    /// Every `<mergeCell>` of a part, whatever its prefix, quotes and attribute order, wherever
    /// the reads cut it; text that only mentions one, `mergeCells` and over-long elements are not.
    #[test]
    fn merge_refs_are_found_in_the_bytes_wherever_reads_cut_them() {
        let xml = concat!(
            r#"<worksheet><sheetData><row r="1"><c r="A1" t="inlineStr"><is><t>mergeCell ref="Z1:Z9" &lt;mergeCell ref="Y1:Y9"/&gt;</t></is></c></row></sheetData>"#,
            r#"<mergeCells count="4"><mergeCell ref="B2:B4"/><x:mergeCell  ref = 'C2:C3' /><mergeCell a="1" ref="D2:D5"></mergeCell>"#,
            r#"<mergeCell ref="E2:E3"/><mergeCellX ref="F1:F2"/><mergeCell href="G1:G2" ref="H1:H2"/></mergeCells></worksheet>"#
        );
        /// A reader giving `n` bytes at a time.
        struct Trickle<'a>(&'a [u8], usize);
        impl Read for Trickle<'_> {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                let n = self.1.min(self.0.len()).min(out.len());
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        for step in [1, 2, 3, 7, 64, 1 << 16] {
            let mut found = Vec::new();
            merge_refs(Trickle(xml.as_bytes(), step), |r| {
                found.push(r.to_string());
                true
            })
            .unwrap();
            assert_eq!(found, ["B2:B4", "C2:C3", "D2:D5", "E2:E3", "H1:H2"], "reads of {step} bytes");
        }
        let long = format!(r#"<mergeCell a="{}" ref="A1:A2"/><mergeCell ref="B1:B2"/>"#, "x".repeat(5000));
        let mut found = Vec::new();
        merge_refs(long.as_bytes(), |r| {
            found.push(r.to_string());
            true
        })
        .unwrap();
        assert_eq!(found, ["B1:B2"]);
    }

    #[test]
    fn elements_stop_when_told_and_take_any_prefix() {
        let xml = format!("<worksheet><mergeCells>{}</mergeCells></worksheet>", "<mergeCell ref=\"A1:A2\"/>".repeat(50));
        let mut seen = 0;
        elements(xml.as_bytes(), "mergeCell", |_| {
            seen += 1;
            seen < 11
        })
        .unwrap();
        assert_eq!(seen, 11);
        let prefixed = "<x:worksheet><x:mergeCells><x:mergeCell x:ref=\"B2:B3\"/></x:mergeCells></x:worksheet>";
        let mut found = Vec::new();
        elements(prefixed.as_bytes(), "mergeCell", |e| {
            found.push(attr(e, "ref"));
            true
        })
        .unwrap();
        assert_eq!(found, [Some("B2:B3".to_string())]);
    }
}
