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
        let (cells, are) = if self.filled == 1 {
            ("1 cell".to_string(), "is")
        } else {
            (format!("{} cells", crate::wording::thousands(self.filled)), "are")
        };
        Some(format!(
            "{cells}{on} {are} covered by merged cells (the first: {example}) and were read as the merged value the spreadsheet shows on their row; unmerge them if a row should be blank"
        ))
    }
}

/// What an XLSX's sheet parts hold besides their cells, by sheet name.
#[derive(Debug, Default)]
pub struct XlsxScan {
    /// Ranges merged down a column.
    pub merged: HashMap<String, Vec<Down>>,
    /// The places (row, column; in order) of formulas whose saved values are not the formulas'
    /// results: the workbook says it was never calculated (`fullCalcOnLoad`, which XlsxWriter,
    /// openpyxl and rust_xlsxwriter write; their formula cells hold 0 or nothing until a
    /// spreadsheet opens the file).
    pub uncalculated: HashMap<String, Vec<(u32, u32)>>,
    /// Rows and columns hidden (`hidden`).
    pub hidden: HashMap<String, super::hidden::Lines>,
    /// The total rows of the sheet's tables (Excel's "Format as Table" with Total Row on), as
    /// (first row, last row, 0-based; the table's name): a sum under the data, not a person.
    pub totals: HashMap<String, Vec<TotalRows>>,
}

/// A table's Total row (`totals`): its row and columns, 0-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotalRows {
    pub row: u32,
    pub columns: (u32, u32),
    pub table: String,
}

/// Tables of a sheet whose total rows are looked for: a sheet has one or a few.
const MAX_TABLES_A_SHEET: usize = 64;
/// How much of a `.rels` or table part is read: their elements come first.
const SMALL_PART: u64 = 1 << 20;

/// The Total rows of the tables the sheet part at `path` lists (its `.rels` part names them).
/// `parts`: the zip's entries by lower-case name; `seen`: table parts already read (each once).
fn table_totals<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    parts: &HashMap<String, usize>,
    seen: &mut std::collections::HashSet<usize>,
    path: &str,
) -> Vec<TotalRows> {
    let find = |name: &str| parts.get(&name.to_ascii_lowercase()).copied();
    let (dir, file) = path.rsplit_once('/').unwrap_or(("", path));
    let Some(rels) = find(&format!("{dir}/_rels/{file}.rels")) else { return Vec::new() };
    let mut targets = Vec::new();
    if let Ok(entry) = zip.by_index(rels) {
        let _ = elements(BufReader::new(entry.take(SMALL_PART)), &["Relationship"], |e| {
            if attr(e, "Type").is_some_and(|t| t.ends_with("/table"))
                && let Some(target) = attr(e, "Target")
            {
                targets.push(target);
            }
            targets.len() < MAX_TABLES_A_SHEET
        });
    }
    let mut totals = Vec::new();
    for target in targets {
        // `../tables/table1.xml` from the sheet's folder, or `/xl/tables/table1.xml`.
        let mut parts_of: Vec<&str> = if target.starts_with('/') { Vec::new() } else { dir.split('/').collect() };
        for piece in target.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if piece == ".." {
                parts_of.pop();
            } else {
                parts_of.push(piece);
            }
        }
        let Some(i) = find(&parts_of.join("/")) else { continue };
        if !seen.insert(i) {
            continue;
        }
        let Ok(entry) = zip.by_index(i) else { continue };
        let _ = elements(BufReader::new(entry.take(SMALL_PART)), &["table"], |e| {
            // Excel writes one Total row (`totalsRowCount="1"`), under a header and a row at least.
            let one = attr(e, "totalsRowCount").is_some_and(|n| n.trim() == "1");
            let name = attr(e, "displayName").or_else(|| attr(e, "name")).unwrap_or_default();
            if let (true, Some(((top, c0), (last, c1)))) = (one, attr(e, "ref").as_deref().and_then(range))
                && last >= top + 2
            {
                totals.push(TotalRows { row: last, columns: (c0, c1), table: name });
            }
            false
        });
    }
    totals
}

/// Uncalculated formula cells a workbook may hold (8 bytes each kept): a generated million-row
/// sheet with four formula columns.
pub const MAX_UNCALCULATED: usize = 1 << 22;

/// Every sheet's `XlsxScan`, from an XLSX's parts: the workbook names its sheets and their parts,
/// each sheet part lists its merged ranges after its cells.
pub fn xlsx<R: Read + Seek>(zip: &mut zip::ZipArchive<R>) -> Result<XlsxScan, FileError> {
    xlsx_within(zip, MAX_MERGED_RANGES, MAX_UNCALCULATED)
}

/// `xlsx`, keeping at most `limit` ranges and `formulas` uncalculated formula cells.
pub fn xlsx_within<R: Read + Seek>(zip: &mut zip::ZipArchive<R>, limit: usize, formulas: usize) -> Result<XlsxScan, FileError> {
    let damaged = |e: &dyn std::fmt::Display| FileError::Corrupt { format: "XLSX", detail: e.to_string() };
    // Entries by lower-case name (the first of a name, as a search in order finds it).
    let mut parts: HashMap<String, usize> = HashMap::new();
    for i in 0..zip.len() {
        if let Some(Ok(name)) = zip.name_for_index(i) {
            parts.entry(name.to_ascii_lowercase()).or_insert(i);
        }
    }
    let index = |name: &str| parts.get(&name.to_ascii_lowercase()).copied();
    // Small parts, each read once: the sheets' names and where their parts are, and whether the
    // workbook was ever calculated.
    let part = |zip: &mut zip::ZipArchive<R>, name: &str, wanted: &[&str], each: &mut dyn FnMut(&BytesStart<'_>)| {
        let Some(i) = index(name) else { return Ok(()) };
        let entry = zip.by_index(i).map_err(|e| damaged(&e))?;
        elements(BufReader::new(entry), wanted, |e| {
            each(e);
            true
        })
        .map_err(|e| damaged(&e))
    };
    let (mut sheets, mut rels, mut never_calculated) = (Vec::new(), Vec::new(), false);
    // The relationship id is `r:id` (any prefix); `id` alone matches it, not `sheetId`.
    part(zip, "xl/workbook.xml", &["sheet", "calcPr"], &mut |e| match e.local_name().as_ref() {
        "calcPr" => never_calculated |= attr(e, "fullCalcOnLoad").is_some_and(|f| matches!(f.trim(), "1" | "true")),
        _ => sheets.push([attr(e, "name"), attr(e, "id")]),
    })?;
    part(zip, "xl/_rels/workbook.xml.rels", &["Relationship"], &mut |e| rels.push([attr(e, "Id"), attr(e, "Target")]))?;
    let mut scan = XlsxScan::default();
    // The tables' parts (`table_totals`), each read once.
    let mut tables_read = std::collections::HashSet::new();
    let (mut total, mut uncalculated, mut hidden_total) = (0usize, 0usize, 0usize);
    // Each part is read once, however many sheets name it (1,000 sheets naming one large part
    // would inflate it 1,000 times).
    let mut read = HashMap::<usize, String>::new();
    for [name, id] in sheets {
        let (Some(name), Some(id)) = (name, id) else { continue };
        let Some(target) = rels.iter().find(|[i, _]| i.as_deref() == Some(id.as_str())).and_then(|[_, t]| t.clone()) else { continue };
        let path = match target.strip_prefix('/') {
            Some(absolute) => absolute.to_string(),
            None => format!("xl/{target}"),
        };
        let Some(i) = index(&path) else { continue };
        if let Some(first) = read.get(&i) {
            // calamine reads the sheet of that name from the same part: the same ranges, each
            // copy counted (150 names of a part of a million ranges held 150 copies).
            if let Some(d) = scan.merged.get(first).cloned() {
                total += d.len();
                if total > limit {
                    return Err(FileError::TooManyMerged { limit });
                }
                scan.merged.insert(name.clone(), d);
            }
            if let Some(h) = scan.hidden.get(first).cloned() {
                scan.hidden.insert(name.clone(), h);
            }
            if let Some(t) = scan.totals.get(first).cloned() {
                scan.totals.insert(name.clone(), t);
            }
            if let Some(f) = scan.uncalculated.get(first).cloned() {
                uncalculated += f.len();
                if uncalculated > formulas {
                    return Err(FileError::TooManyUncalculated { limit: formulas });
                }
                scan.uncalculated.insert(name, f);
            }
            continue;
        }
        read.insert(i, name.clone());
        let totals = table_totals(zip, &parts, &mut tables_read, &path);
        if !totals.is_empty() {
            scan.totals.insert(name.clone(), totals);
        }
        let entry = zip.by_index(i).map_err(|e| damaged(&e))?;
        // A workbook not marked uncalculated may still hold formulas saved without a value.
        let mut valueless = (!never_calculated).then(|| ValuelessFormulas::new(formulas.saturating_sub(uncalculated)));
        let mut hidden = HiddenTags { total: hidden_total, ..HiddenTags::default() };
        let mut seen: Vec<&mut dyn Feed> = vec![&mut hidden];
        if let Some(v) = valueless.as_mut() {
            seen.push(v);
        }
        let entry = Tee { inner: entry, seen };
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
            scan.merged.insert(name.clone(), down);
        }
        hidden_total = hidden.total;
        if !hidden.lines.is_empty() {
            scan.hidden.insert(name.clone(), hidden.lines);
        }
        if let Some(v) = valueless.filter(|v| !v.found.is_empty()) {
            if v.overflowed() {
                return Err(FileError::TooManyUncalculated { limit: formulas });
            }
            let Some(mut places) = v.found.into_iter().collect::<Option<Vec<_>>>() else {
                return Err(FileError::FormulasWithoutValues { sheet: crate::wording::quoted(&name) });
            };
            uncalculated += places.len();
            places.sort_unstable();
            places.dedup();
            scan.uncalculated.insert(name.clone(), places);
        }
        if never_calculated {
            // A second pass, only over the parts of a workbook a program wrote.
            let entry = zip.by_index(i).map_err(|e| damaged(&e))?;
            let mut places = Vec::new();
            formula_cells(entry, |place| {
                places.push(place);
                uncalculated += 1;
                uncalculated <= formulas
            })
            .map_err(|e| damaged(&e))?;
            if uncalculated > formulas {
                return Err(FileError::TooManyUncalculated { limit: formulas });
            }
            places.sort_unstable();
            if !places.is_empty() {
                scan.uncalculated.insert(name, places);
            }
        }
    }
    Ok(scan)
}

/// Each element named one of `wanted` (any namespace prefix), given to `each` until it says to stop.
fn elements<B: BufRead>(input: B, wanted: &[&str], mut each: impl FnMut(&BytesStart<'_>) -> bool) -> Result<(), quick_xml::Error> {
    let mut reader = quick_xml::Reader::from_reader(input);
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf)? {
            Event::Start(e) | Event::Empty(e) if wanted.contains(&e.local_name().as_ref()) && !each(&e) => return Ok(()),
            Event::Eof => return Ok(()),
            _ => {}
        }
        buf.clear();
    }
}

/// Each element `name` (any namespace prefix) of a part, found in its bytes, given to `each` with
/// its attributes and up to `lookback` bytes before it, until `each` says to stop. A sheet part is
/// most of an XLSX (477 MB for a million rows of ten columns): parsed as XML, a pass for its
/// merged ranges cost half as much again as reading the cells; searched as bytes it costs little
/// more than the inflating. A `<` never stands raw in XML text or attribute values, so `<mergeCell`
/// (or `<x:mergeCell`) found in the bytes is the element.
fn tags<R: Read>(mut input: R, name: &[u8], lookback: usize, mut each: impl FnMut(&[u8], &[u8]) -> bool) -> std::io::Result<()> {
    // An element is short (`<x:mergeCell ref="XFD1048575:XFD1048576"/>`); a longer one is skipped.
    const LONGEST: usize = 1024;
    let finder = memchr::memmem::Finder::new(name);
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 17);
    let mut chunk = vec![0u8; 1 << 16];
    // Where the next search starts in `buf` (bytes before it are kept only to look back at).
    let mut resume = 0;
    loop {
        let n = input.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        // Bytes up to `done` are searched; an element not ended yet is kept from its start.
        let mut done = resume;
        let mut waiting = None;
        while let Some(i) = finder.find(&buf[done..]) {
            let at = done + i;
            done = at + name.len();
            // `<` or a prefix's `:` right before the name, looked at first: a one-letter name
            // (`f`) is found in every word, and each would cost the look-back below.
            if at == 0 || !matches!(buf[at - 1], b'<' | b':') {
                continue;
            }
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
            let before = &buf[start.saturating_sub(lookback)..start];
            done += close + 1;
            if !each(element, before) {
                return Ok(());
            }
        }
        // Keep what a name cut at the chunk's end needs (its `<prefix:` and the bytes looked back
        // at too), never an element already given.
        let (from, again) = match waiting {
            // Searched again from its start, with what it looks back at.
            Some(start) => (start.saturating_sub(lookback), start),
            None => {
                let from = done.max(buf.len().saturating_sub(name.len() + 64 + lookback));
                (from, from)
            }
        };
        buf.drain(..from);
        resume = again - from;
    }
}

/// The `ref` of each `<mergeCell>` of a sheet part (`tags`).
fn merge_refs<R: Read>(input: R, mut each: impl FnMut(&str) -> bool) -> std::io::Result<()> {
    tags(input, b"mergeCell", 0, |attrs, _| attribute(attrs, b"ref").is_none_or(&mut each))
}

/// The place of each formula of a sheet part: the `r` of the cell (`<c r="B2">`) its `<f>` is in.
fn formula_cells<R: Read>(input: R, mut each: impl FnMut((u32, u32)) -> bool) -> std::io::Result<()> {
    // A cell's start tag is short and its `<f>` comes first inside it.
    tags(input, b"f", 256, |_, before| {
        let Some(c) = cell_start(before) else { return true };
        cell_place(&before[c..]).is_none_or(&mut each)
    })
}

/// Where the last cell start tag in `before` opens (`<c` or `<prefix:c`, then a space or the
/// tag's end): the index of its `c`.
fn cell_start(before: &[u8]) -> Option<usize> {
    let opens = |i: usize| {
        if i == 0 || !matches!(before[i - 1], b'<' | b':') {
            return false;
        }
        let prefix =
            before[..i].iter().rev().take(64).position(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':')));
        let lt = prefix.and_then(|k| i.checked_sub(k + 1)).filter(|&lt| before[lt] == b'<');
        lt.is_some_and(|lt| lt + 1 == i || before[i - 1] == b':')
            && before.get(i + 1).is_some_and(|b| b.is_ascii_whitespace() || *b == b'>')
    };
    memchr::memmem::rfind_iter(before, b"c").find(|&i| opens(i))
}

/// The place a cell's start tag names (`r="B2"`), from its `c` on.
fn cell_place(tag: &[u8]) -> Option<(u32, u32)> {
    let attrs = &tag[1..];
    let attrs = &attrs[..memchr::memchr(b'>', attrs).unwrap_or(attrs.len())];
    attribute(attrs, b"r").and_then(cell)
}

/// Formula cells saved with no value at all (`<c r="C2"><f>UPPER(D2)</f></c>`): what ExcelJS and
/// SheetJS write for a formula the program gave no result, in a workbook not marked uncalculated.
/// calamine reads such a cell as empty, so a Department computed by a formula arrived as none and
/// nobody was told. Spreadsheets always save a value (`<v></v>` for an empty text result).
///
/// Fed a sheet part's bytes as the merge pass reads them (`Tee`: the part is inflated once), it
/// looks at each cell's end tag: a formula element right before it means no value followed.
pub(super) struct ValuelessFormulas {
    buf: Vec<u8>,
    /// Where the next search starts in `buf`.
    from: usize,
    /// Their places; `None` for one whose cell names no place within reach.
    pub found: Vec<Option<(u32, u32)>>,
    /// At most this many are kept.
    limit: usize,
}

/// How far back a cell's start tag is looked for from its end: a formula is at most 8,192
/// characters, a few times that once escaped.
const CELL_REACH: usize = 1 << 16;

impl ValuelessFormulas {
    pub(super) fn new(limit: usize) -> Self {
        Self { buf: Vec::new(), from: 0, found: Vec::new(), limit }
    }

    /// More than `limit` found.
    pub(super) fn overflowed(&self) -> bool {
        self.found.len() > self.limit
    }

    fn feed(&mut self, data: &[u8]) {
        if self.overflowed() {
            return;
        }
        self.buf.extend_from_slice(data);
        let finder = memchr::memmem::Finder::new(b"c>");
        let mut at = self.from;
        while let Some(i) = finder.find(&self.buf[at..]) {
            let c = at + i;
            at = c + 2;
            if let Some(end) = end_tag_start(&self.buf, c)
                && let Some(formula) = formula_right_before(&self.buf[..end])
            {
                // The cell's start tag stands right before its formula (`<c r="C2" s="1"><f>`):
                // only that tag is looked at, so a hostile run of `<f/></c>` costs no search back.
                let lo = formula.saturating_sub(1024);
                let place = memchr::memrchr(b'<', &self.buf[lo..formula])
                    .map(|k| lo + k)
                    .and_then(|lt| cell_start(&self.buf[lt..formula]).map(|k| lt + k))
                    .and_then(|c| cell_place(&self.buf[c..formula]));
                self.found.push(place);
                if self.overflowed() {
                    return;
                }
            }
        }
        // A `c` at the very end may meet its `>` in the next bytes.
        self.from = at.max(self.buf.len().saturating_sub(1));
        if self.buf.len() > 2 * CELL_REACH {
            let cut = self.buf.len() - CELL_REACH;
            self.buf.drain(..cut);
            self.from -= cut;
        }
    }
}

/// `</c>` or `</prefix:c>` whose `c` is at `c`: where its `<` is.
fn end_tag_start(buf: &[u8], c: usize) -> Option<usize> {
    match c.checked_sub(1).map(|i| buf[i])? {
        b'/' => c.checked_sub(2).filter(|&lt| buf[lt] == b'<'),
        b':' => {
            let prefix =
                buf[..c - 1].iter().rev().take(64).position(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')))?;
            let slash = (c - 1).checked_sub(prefix + 1)?;
            (prefix > 0 && buf[slash] == b'/' && slash > 0 && buf[slash - 1] == b'<').then(|| slash - 1)
        }
        _ => None,
    }
}

/// Where the formula element ending `before` (blanks aside) starts: `</f>`, `</prefix:f>` or an
/// empty `<f .../>` (a shared formula's other cells).
fn formula_right_before(before: &[u8]) -> Option<usize> {
    let before = before.trim_ascii_end();
    let tag = memchr::memrchr(b'<', before)?;
    let element = &before[tag + 1..];
    let name_of = |e: &[u8]| {
        let end = e.iter().position(|b| b.is_ascii_whitespace() || matches!(b, b'/' | b'>')).unwrap_or(e.len());
        let name = &e[..end];
        name.rsplit(|&b| b == b':').next() == Some(b"f".as_slice())
    };
    let is_formula = match element.strip_prefix(b"/") {
        // An end tag: its element started earlier (the formula's text holds no `<`).
        Some(name) => name.strip_suffix(b">").is_some_and(name_of),
        None => element.ends_with(b"/>") && name_of(element),
    };
    if !is_formula {
        return None;
    }
    if element.first() != Some(&b'/') {
        return Some(tag);
    }
    // The start tag of the formula: the `<` before its text.
    memchr::memrchr(b'<', &before[..tag])
}

/// A scanner of a part's bytes, given them as they are read (`Tee`).
pub(super) trait Feed {
    fn feed(&mut self, data: &[u8]);
}

impl Feed for ValuelessFormulas {
    fn feed(&mut self, data: &[u8]) {
        ValuelessFormulas::feed(self, data);
    }
}

/// A reader that shows each of `seen` every byte it reads.
pub(super) struct Tee<'s, R> {
    pub inner: R,
    pub seen: Vec<&'s mut dyn Feed>,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(out)?;
        for seen in &mut self.seen {
            seen.feed(&out[..n]);
        }
        Ok(n)
    }
}

/// The rows and columns a sheet part hides: `<row r="5" hidden="1">`, `<col min="3" max="4"
/// hidden="1">` (any prefix, attributes in any order). Found by the word `hidden` in the bytes
/// and the tag around it, as the merge pass reads the part. Each byte is looked at a bounded
/// number of times whatever the file (where a tag opened is carried from match to match).
#[derive(Default)]
pub(super) struct HiddenTags {
    buf: Vec<u8>,
    from: usize,
    /// Bytes before this were looked at for `<` and `>`; `open`: the last `<` among them when
    /// no `>` came after it (a tag not ended there).
    scanned: usize,
    open: Option<usize>,
    pub lines: super::hidden::Lines,
    /// Ranges recorded so far in the whole workbook (`hidden::MAX_HIDDEN_RANGES` at most).
    pub total: usize,
}

/// A row or column tag is short; a longer one is skipped.
const TAG_REACH: usize = 4096;

impl Feed for HiddenTags {
    fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        let finder = memchr::memmem::Finder::new(b"hidden");
        let mut at = self.from;
        let mut waiting = None;
        while let Some(i) = finder.find(&self.buf[at..]) {
            let h = at + i;
            at = h + 6;
            // Inside a tag: a `<` before it with no `>` between (text may hold the word).
            if self.scanned < h {
                let region = &self.buf[self.scanned..h];
                match (memchr::memrchr(b'<', region), memchr::memrchr(b'>', region)) {
                    (Some(lt), gt) if gt.is_none_or(|gt| gt < lt) => self.open = Some(self.scanned + lt),
                    (_, Some(_)) => self.open = None,
                    (_, None) => {}
                }
                self.scanned = h;
            }
            let Some(lt) = self.open.filter(|&lt| h - lt <= TAG_REACH) else { continue };
            let Some(gt) = memchr::memchr(b'>', &self.buf[h..(h + TAG_REACH).min(self.buf.len())]).map(|k| h + k) else {
                if self.buf.len() - h < TAG_REACH {
                    waiting = Some(h); // the tag ends in the next bytes
                    break;
                }
                at = h + TAG_REACH; // an over-long tag: skipped whole
                continue;
            };
            at = gt + 1;
            (self.scanned, self.open) = (gt + 1, None);
            if self.total < super::hidden::MAX_HIDDEN_RANGES
                && let Some(range) = hidden_line(&self.buf[lt + 1..gt])
            {
                range.push_to(&mut self.lines);
                self.total += 1;
            }
        }
        self.from = waiting.unwrap_or(at.max(self.buf.len().saturating_sub(5)));
        if self.from > 2 * TAG_REACH {
            let cut = self.from - TAG_REACH;
            self.buf.drain(..cut);
            self.from -= cut;
            // A `<` cut off is out of any later match's reach.
            self.open = self.open.and_then(|p| p.checked_sub(cut));
            match self.scanned.checked_sub(cut) {
                Some(s) => self.scanned = s,
                None => (self.scanned, self.open) = (0, None),
            }
        }
    }
}

/// A hidden row or columns.
enum HiddenLine {
    Row(u32),
    Cols(u32, u32),
}

impl HiddenLine {
    fn push_to(self, lines: &mut super::hidden::Lines) {
        match self {
            HiddenLine::Row(r) => lines.rows.push((r, r)),
            HiddenLine::Cols(a, b) => lines.cols.push((a, b)),
        }
    }
}

/// What a tag (its bytes between `<` and `>`) hides, if it is a hidden row or column.
fn hidden_line(tag: &[u8]) -> Option<HiddenLine> {
    let name_end = tag.iter().position(|b| b.is_ascii_whitespace()).unwrap_or(tag.len());
    let local = tag[..name_end].rsplit(|&b| b == b':').next()?;
    let attrs = &tag[name_end..];
    if !matches!(attribute(attrs, b"hidden")?.trim(), "1" | "true") {
        return None;
    }
    let number = |key: &[u8]| attribute(attrs, key).and_then(|v| v.trim().parse::<u32>().ok()).filter(|&n| n >= 1);
    match local {
        b"row" => number(b"r").filter(|&r| r <= super::guards::MAX_SHEET_ROWS).map(|r| HiddenLine::Row(r - 1)),
        b"col" => {
            let (min, max) = (number(b"min")?, number(b"max")?.min(super::guards::MAX_SHEET_COLUMNS));
            (min <= max).then(|| HiddenLine::Cols(min - 1, max - 1))
        }
        _ => None,
    }
}

/// The value of attribute `key` (`ref="..."`, `x:ref`, single quotes) among an element's attributes.
fn attribute<'a>(attrs: &'a [u8], key: &[u8]) -> Option<&'a str> {
    let mut rest = attrs;
    while let Some(i) = memchr::memmem::find(rest, key) {
        let before = i.checked_sub(1).map(|j| rest[j]);
        let after = &rest[i + key.len()..];
        rest = after;
        if !before.is_some_and(|b| b.is_ascii_whitespace() || b == b':') {
            continue;
        }
        // The word inside another attribute's value (`a="x ref"`): not this attribute.
        let Some(after) = after.trim_ascii_start().strip_prefix(b"=") else { continue };
        let after = after.trim_ascii_start();
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
        // Formula cells by their cell's place, a prefix or none, the start tag looked back at
        // across reads; `<font>` and a cell without `r` are not taken.
        let sheet = concat!(
            r#"<sheetData><row r="2"><c r="A2" t="s"><v>0</v></c><c r="B2" s="3" t="str"><f>UPPER(A2)</f><v></v></c>"#,
            r#"<x:c t="n" x:r="C2"><x:f t="shared" si="0"/><x:v>0</x:v></x:c><c><f>1+1</f></c><font/><c r="AB10"><f>"a&lt;f>"</f></c></row></sheetData>"#
        );
        for step in [1, 5, 64, 1 << 16] {
            let mut found = Vec::new();
            formula_cells(Trickle(sheet.as_bytes(), step), |p| {
                found.push(p);
                true
            })
            .unwrap();
            assert_eq!(found, [(1, 1), (1, 2), (9, 27)], "reads of {step} bytes");
        }
        assert_eq!(attribute(br#" a="x ref" ref="B2:B3""#, b"ref"), Some("B2:B3"), "a word in another value");
        let long = format!(r#"<mergeCell a="{}" ref="A1:A2"/><mergeCell ref="B1:B2"/>"#, "x".repeat(5000));
        let mut found = Vec::new();
        merge_refs(long.as_bytes(), |r| {
            found.push(r.to_string());
            true
        })
        .unwrap();
        assert_eq!(found, ["B1:B2"]);
    }

    /// Formula cells saved with no value, whatever their prefix, shape (an empty shared `<f/>`,
    /// blanks before the end tag, a formula longer than a read) and wherever the reads cut them;
    /// a formula with a value, even an empty text one, and text that only mentions one are not.
    #[test]
    fn formulas_without_a_value_are_found_wherever_reads_cut_them() {
        let long = format!("<c r=\"H2\"><f>{}</f></c>", "A1&amp;".repeat(3000));
        let xml = [
            r#"<worksheet><sheetData><row r="2"><c r="A2"><f>B2</f></c><c r="B2"><f>1+1</f><v>2</v></c>"#,
            r#"<x:c r="C2" s="1"><x:f>LOWER(A2)</x:f></x:c><c r="D2"><f t="shared" si="0"/></c>"#,
            r#"<c r="E2" t="str"><f>""</f><v></v></c><c r="F2"><f>A2</f>"#,
            "\n  </c>",
            r#"<c r="G2" t="inlineStr"><is><t>f&gt;&lt;/f&gt;&lt;/c&gt; c&gt;</t></is></c>"#,
            &long,
            r#"<c r="I2"><f>SUM(A1:A2)</f><v>3</v></c><c><f>A1</f></c></row></sheetData></worksheet>"#,
        ]
        .concat();
        struct Trickle<'a>(&'a [u8], usize);
        impl Read for Trickle<'_> {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                let n = self.1.min(self.0.len()).min(out.len());
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        for step in [1, 2, 3, 7, 64, 1000, 1 << 16] {
            let mut seen = ValuelessFormulas::new(100);
            let mut tee = Tee { inner: Trickle(xml.as_bytes(), step), seen: vec![&mut seen] };
            std::io::copy(&mut tee, &mut std::io::sink()).unwrap();
            // (row, column), 0-based; the last cell names no place.
            assert_eq!(seen.found, [Some((1, 0)), Some((1, 2)), Some((1, 3)), Some((1, 5)), Some((1, 7)), None], "reads of {step} bytes");
        }
        let mut few = ValuelessFormulas::new(2);
        few.feed(xml.as_bytes());
        assert!(few.overflowed());
        // A hostile run of formulas in no cell: each is found without a search back for a cell
        // (a review found 64 KB searched for each), none with a place.
        let run = "<f/></c>".repeat(100_000);
        let mut hostile = ValuelessFormulas::new(1 << 20);
        for piece in run.as_bytes().chunks(1 << 16) {
            hostile.feed(piece);
        }
        assert_eq!(hostile.found.len(), 100_000);
        assert!(hostile.found.iter().all(Option::is_none));
    }

    /// Hidden rows and columns, whatever the attribute order, prefix and quotes, wherever the
    /// reads cut them; `hidden="false"` (LibreOffice writes it on every row), the word in a
    /// cell's text and other elements' `hidden` are not.
    #[test]
    fn hidden_rows_and_columns_are_found_wherever_reads_cut_them() {
        let xml = concat!(
            r#"<worksheet><cols><col min="3" max="4" hidden="1" width="9"/><x:col hidden='true' max="7" min="7"/><col min="8" max="8" hidden="false"/>"#,
            r#"<col min="9" max="99999" hidden="1"/></cols><sheetData><row r="1" hidden="false"><c r="A1" t="inlineStr"><is><t>row r="9" hidden="1"</t></is></c></row>"#,
            r#"<row spans="1:4" hidden="1" r="5"><c r="A5"><v>1</v></c></row><x:row hidden="true" r="6"/><row hidden="1"/><sheetView hidden="1" r="8"/>"#,
            r#"</sheetData></worksheet>"#
        );
        struct Trickle<'a>(&'a [u8], usize);
        impl Read for Trickle<'_> {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                let n = self.1.min(self.0.len()).min(out.len());
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        for step in [1, 2, 5, 64, 1 << 16] {
            let mut hidden = HiddenTags::default();
            let mut tee = Tee { inner: Trickle(xml.as_bytes(), step), seen: vec![&mut hidden] };
            std::io::copy(&mut tee, &mut std::io::sink()).unwrap();
            assert_eq!(hidden.lines.rows, [(4, 4), (5, 5)], "reads of {step} bytes");
            assert_eq!(hidden.lines.cols, [(2, 3), (6, 6), (8, 16_383)], "reads of {step} bytes");
        }
        // The word over and over in a tag that never ends, or in text with no tag: nothing, and
        // each byte looked at a bounded number of times (where a tag opened is carried along).
        for hostile in [
            format!("<x {}", "hidden ".repeat(200_000)),
            "hidden=\"1\" ".repeat(200_000),
            format!("<row r=\"1\" {}>", "hidden=\"1\" ".repeat(1000)),
        ] {
            let mut hidden = HiddenTags::default();
            for piece in hostile.as_bytes().chunks(1 << 16) {
                hidden.feed(piece);
            }
            assert!(hidden.lines.is_empty());
        }
    }

    #[test]
    fn elements_stop_when_told_and_take_any_prefix() {
        let xml = format!("<worksheet><mergeCells>{}</mergeCells></worksheet>", "<mergeCell ref=\"A1:A2\"/>".repeat(50));
        let mut seen = 0;
        elements(xml.as_bytes(), &["mergeCell"], |_| {
            seen += 1;
            seen < 11
        })
        .unwrap();
        assert_eq!(seen, 11);
        let prefixed = "<x:worksheet><x:mergeCells><x:mergeCell x:ref=\"B2:B3\"/></x:mergeCells></x:worksheet>";
        let mut found = Vec::new();
        elements(prefixed.as_bytes(), &["mergeCell"], |e| {
            found.push(attr(e, "ref"));
            true
        })
        .unwrap();
        assert_eq!(found, [Some("B2:B3".to_string())]);
    }
}
