//! Hostile-input guards: every count or index a workbook declares is checked against what the
//! file's size allows before a reader allocates for it. A refusal is a `FileError` in the user's
//! terms. These know nothing about rosters.

use super::FileError;
use std::io::{Read, Seek};

/// What a zipped workbook (XLSX, ODS) may expand to. Real rosters compress 10-20x; zip bombs 1000x+.
pub const MAX_UNZIPPED_BYTES: u64 = 1 << 30;

/// Refuse a zip whose entries declare more than `limit` unzipped, from its directory alone. The
/// declared sizes are binding: the zip crate (from 9.0.1) fails any read that inflates an entry
/// past its declared size, so a zip bomb that lies about its sizes fails as a damaged file after
/// its declared bytes, and nothing is inflated twice (a separate measuring pass cost about a
/// tenth of reading an XLSX).
pub(super) fn check_declared_size<R: Read + Seek>(archive: &mut zip::ZipArchive<R>, limit: u64) -> Result<(), FileError> {
    let declared = (0..archive.len()).filter_map(|i| archive.by_index_raw(i).ok().map(|f| f.size())).fold(0, u64::saturating_add);
    if declared > limit {
        return Err(FileError::TooBigUnzipped { limit_mb: limit >> 20 });
    }
    Ok(())
}

/// An XLS is an OLE compound file: a FAT file system inside the file. calamine follows its sector
/// chains without checking for loops, so an 11 KB file whose chain loops makes it allocate until
/// memory runs out (found by fuzzing). The `cfb` crate validates the whole allocation table, loops
/// included, within the file's own size: a container it refuses is damaged. The workbook stream
/// (root-level `Workbook`, else `Book`, any case) is read here, bounded by the file size, and the
/// cells it makes calamine allocate are counted (`xls_dense_cells`).
///
/// calamine is then given a compound file holding that stream alone (`OleWorkbook::rebuilt`), not
/// the upload: it finds its stream by its own reading of the directory (the first entry of that
/// name ignoring case, at any depth, reachable from the tree or not; names decoded past their
/// length, byte-order marks dropped; a mini stream read from wherever the reader stands when the
/// header counts no mini FAT), so a guard predicting its choice could be shown one stream while
/// calamine read another (a `WORKBOOK`, or a Workbook in a storage, reached it unmeasured).
pub(super) fn check_ole_container<R: Read + Seek>(r: &mut R, size: u64) -> Result<OleWorkbook, FileError> {
    let corrupt = |e: std::io::Error| FileError::Corrupt { format: "XLS", detail: format!("its container is damaged ({e})") };
    match cfb::CompoundFile::open(&mut *r) {
        Ok(file) => read_container(file, size),
        Err(e) => {
            // SheetJS pads its allocation table past the file's end with end-of-chain marks, not
            // free ones: such an XLS was refused as damaged while Excel and LibreOffice open it.
            let mut bytes = Vec::new();
            r.rewind().and_then(|()| Read::take(&mut *r, size).read_to_end(&mut bytes)).map_err(corrupt)?;
            if !free_fat_padding(&mut bytes) {
                return Err(corrupt(e));
            }
            read_container(cfb::CompoundFile::open(std::io::Cursor::new(bytes)).map_err(|_| corrupt(e))?, size)
        }
    }
}

/// `check_ole_container` of an opened container.
fn read_container<F: Read + Seek>(mut file: cfb::CompoundFile<F>, size: u64) -> Result<OleWorkbook, FileError> {
    let corrupt = |e: std::io::Error| FileError::Corrupt { format: "XLS", detail: format!("its container is damaged ({e})") };
    // Names are unique ignoring case within a storage (the tree orders them so): one of each at most.
    let root: Vec<String> = file.read_root_storage().filter(|e| e.is_stream()).map(|e| e.name().to_string()).collect();
    // A password-protected XLSX (or ODS-less Office file) is an OLE container holding the
    // encrypted package: it was answered "it holds no workbook. Save it again".
    if root.iter().any(|n| n == "EncryptedPackage") {
        return Err(FileError::Encrypted);
    }
    let pick = ["Workbook", "Book"].into_iter().find_map(|want| Some((want, root.iter().find(|n| n.eq_ignore_ascii_case(want))?.clone())));
    // Every stream is walked too (calamine reads nothing else, but a damaged chain anywhere means
    // a damaged file), each bounded by the file size.
    let streams: Vec<std::path::PathBuf> = file.walk().filter(|e| e.is_stream()).map(|e| e.path().to_path_buf()).collect();
    let mut book = None;
    for path in streams {
        let stream = file.open_stream(&path).map_err(corrupt)?;
        let mut bounded = Read::take(stream, size + 1);
        match &pick {
            Some((name, found))
                if path.parent() == Some(std::path::Path::new("/")) && path.file_name().is_some_and(|n| n == found.as_str()) =>
            {
                let mut stream = Vec::new();
                bounded.read_to_end(&mut stream).map_err(corrupt)?;
                book = Some(OleWorkbook { name, stream });
            }
            _ => {
                std::io::copy(&mut bounded, &mut std::io::sink()).map_err(corrupt)?;
            }
        }
    }
    let book = book.ok_or_else(|| FileError::Corrupt { format: "XLS", detail: "it holds no workbook".into() })?;
    // A FILEPASS record in the globals: every record after it is encrypted, so its sizes and
    // positions are noise (a 5 KB file "spanned" 78 trillion cells).
    if super::xls_shown::records(&book.stream, 0).take_while(|(typ, _)| *typ != 0x000A).any(|(typ, _)| typ == 0x002F) {
        return Err(FileError::Encrypted);
    }
    let cells = xls_dense_cells(&book.stream);
    if cells > MAX_XLS_DENSE_CELLS {
        return Err(FileError::TooSpread { format: "XLS", cells, limit: MAX_XLS_DENSE_CELLS });
    }
    Ok(book)
}

/// Mark as free the allocation-table entries past the file's last sector that say "end of chain"
/// (MS-CFB 2.3 pads them as free; SheetJS writes end-of-chain). Nothing can reach those entries:
/// a chain that does is still refused by `cfb`. Whether anything changed.
fn free_fat_padding(bytes: &mut [u8]) -> bool {
    const END_OF_CHAIN: u32 = 0xFFFF_FFFE;
    const FREE: u32 = 0xFFFF_FFFF;
    let u32_at = |b: &[u8], i: usize| b.get(i..i + 4).map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]));
    let Some(shift) = bytes.get(0x1E..0x20).map(|b| u16::from_le_bytes([b[0], b[1]])) else { return false };
    if !matches!(shift, 9 | 12) || !bytes.starts_with(&[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1]) {
        return false;
    }
    let sector = 1usize << shift;
    let sectors = bytes.len().div_ceil(sector).saturating_sub(1);
    let per_sector = sector / 4;
    // The FAT's sectors: 109 in the header, then each DIFAT sector's, at most one per sector.
    // As many as the header declares, never more than the file has sectors.
    let wanted = (u32_at(bytes, 0x2C).unwrap_or(0) as usize).min(sectors);
    let mut fat: Vec<usize> = (0..109).filter_map(|i| u32_at(bytes, 0x4C + 4 * i)).map(|s| s as usize).take(wanted).collect();
    let mut next = u32_at(bytes, 0x44).unwrap_or(END_OF_CHAIN);
    while fat.len() < wanted && (next as usize) < sectors {
        let at = (next as usize + 1) * sector;
        let room = wanted - fat.len();
        fat.extend((0..per_sector - 1).filter_map(|i| u32_at(bytes, at + 4 * i)).map(|s| s as usize).take(room));
        next = u32_at(bytes, at + sector - 4).unwrap_or(END_OF_CHAIN);
    }
    let mut changed = false;
    for (k, &s) in fat.iter().enumerate() {
        if s >= sectors {
            return false;
        }
        for j in 0..per_sector {
            let (entry, at) = (k * per_sector + j, (s + 1) * sector + 4 * j);
            if entry >= sectors && u32_at(bytes, at) == Some(END_OF_CHAIN) {
                bytes[at..at + 4].copy_from_slice(&FREE.to_le_bytes());
                changed = true;
            }
        }
    }
    changed
}

/// An XLS's workbook stream, measured (`check_ole_container`).
pub(super) struct OleWorkbook {
    /// `Workbook` (BIFF8) or `Book` (BIFF5 and older).
    pub name: &'static str,
    pub stream: Vec<u8>,
}

impl OleWorkbook {
    /// A compound file holding the stream alone, at its root, written by the `cfb` crate: what
    /// calamine reads.
    pub fn rebuilt(self) -> Result<Vec<u8>, FileError> {
        use std::io::Write;
        let failed = |e: std::io::Error| FileError::Corrupt { format: "XLS", detail: format!("its workbook could not be read ({e})") };
        // Version 3 (512-byte sectors): calamine refuses a version 4 file without a mini stream.
        let mut file = cfb::CompoundFile::create_with_version(cfb::Version::V3, std::io::Cursor::new(Vec::new())).map_err(failed)?;
        file.create_stream(format!("/{}", self.name)).and_then(|mut s| s.write_all(&self.stream)).map_err(failed)?;
        file.flush().map_err(failed)?;
        Ok(file.into_inner().into_inner())
    }
}

/// What `xls_dense_cells` may count: 8 M cells is about 320 MB of calamine's ranges. A legacy
/// sheet full of real data, 65,536 rows of 60 columns, counts 7.9 M (its values and its declared
/// dimensions); the fuzzed 5.6 KB file counts 10 M.
pub const MAX_XLS_DENSE_CELLS: u64 = 8_000_000;

/// The cells calamine's XLS reader allocates before any row can be read. It turns each sheet into
/// dense ranges (every cell from the first used to the last, once for values and again for
/// formulas) and first reserves the cells the sheet's DIMENSIONS record declares, so a few bytes
/// at IV65536 cost hundreds of megabytes (fuzzing found a 5.6 KB file asking for 321 MB at once).
/// Counted from the workbook stream's records the way calamine reads them: each sheet the
/// globals name (BoundSheet), from its position to its end (EOF), nested substreams skipped.
pub(super) fn xls_dense_cells(stream: &[u8]) -> u64 {
    use super::xls_shown::{records, sheet_records};
    let u16_at = |d: &[u8], i: usize| d.get(i..i + 2).map_or(0, |b| u16::from_le_bytes([b[0], b[1]]) as u64);
    let u32_at = |d: &[u8], i: usize| d.get(i..i + 4).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64);
    /// Smallest and largest (row, column) seen.
    #[derive(Default)]
    struct Extent(Option<(u64, u64, u64, u64)>);
    impl Extent {
        fn add(&mut self, row: u64, col: u64) {
            let e = self.0.get_or_insert((row, row, col, col));
            *e = (e.0.min(row), e.1.max(row), e.2.min(col), e.3.max(col));
        }
        fn cells(&self) -> u64 {
            self.0.map_or(0, |(r0, r1, c0, c1)| (r1 - r0 + 1).saturating_mul(c1 - c0 + 1))
        }
    }
    let sheets: Vec<usize> = records(stream, 0)
        .take_while(|(typ, _)| *typ != 0x000A)
        .filter(|(typ, d)| *typ == 0x0085 && d.len() >= 4)
        .map(|(_, d)| u32_at(d, 0) as usize)
        .collect();
    let mut total = 0u64;
    for at in sheets {
        let (mut values, mut formulas, mut declared) = (Extent::default(), Extent::default(), 0u64);
        for (typ, d) in sheet_records(stream, at) {
            match typ {
                // DIMENSIONS: calamine reserves rows x columns.
                0x0200 => {
                    let (rf, rl, cf, cl) = match d.len() {
                        10 => (u16_at(d, 0), u16_at(d, 2), u16_at(d, 4), u16_at(d, 6)),
                        14 | 16 => (u32_at(d, 0), u32_at(d, 4), u16_at(d, 8), u16_at(d, 10)),
                        _ => continue,
                    };
                    let cf = if cf > 0xFF || cl < cf { 0 } else { cf };
                    if rl >= 1 && cl >= 1 {
                        // Wrapping as calamine's u32 arithmetic does, then counted whole.
                        let rows = (rl - 1).wrapping_sub(rf).wrapping_add(1) & 0xFFFF_FFFF;
                        let cols = (cl - 1).wrapping_sub(cf).wrapping_add(1) & 0xFFFF_FFFF;
                        declared = declared.saturating_add(rows.saturating_mul(cols));
                    }
                }
                // Value cells: NUMBER, LABEL, RSTRING, BOOLERR, RK, LABELSST.
                0x0203 | 0x0204 | 0x00D6 | 0x0205 | 0x027E | 0x00FD if d.len() >= 4 => values.add(u16_at(d, 0), u16_at(d, 2)),
                // FORMULA: a value and a formula.
                0x0006 if d.len() >= 4 => {
                    values.add(u16_at(d, 0), u16_at(d, 2));
                    formulas.add(u16_at(d, 0), u16_at(d, 2));
                }
                // MULRK: a run of columns in one row.
                0x00BD if d.len() >= 6 => {
                    values.add(u16_at(d, 0), u16_at(d, 2));
                    values.add(u16_at(d, 0), u16_at(d, d.len() - 2));
                }
                _ => {}
            }
        }
        total = total.saturating_add(declared).saturating_add(values.cells()).saturating_add(formulas.cells());
    }
    total
}

/// Excel's grid (LibreOffice's since 7.4): a cell reference outside it is refused before the
/// reader widens a row for it (one cell at column 300 million asked for 12.8 GB).
pub const MAX_SHEET_ROWS: u32 = 1_048_576;
/// Empty rows between data rows a workbook may have in all (each is a Skipped row of the result):
/// one full sheet's worth.
pub const MAX_EMPTY_ROWS: u64 = MAX_SHEET_ROWS as u64;
/// Empty rows in one run between two data rows: a stray value at A1048576 under a short roster
/// made a million of them, and a result of a million skipped rows; no roster has a hundred
/// thousand empty rows in a row.
pub const MAX_EMPTY_RUN: u64 = 100_000;
pub const MAX_SHEET_COLUMNS: u32 = 16_384;

/// The smallest shared string a part can hold, `<si/>`: a part of N bytes holds at most N / 5.
const MIN_SHARED_STRING_BYTES: u64 = 5;
/// More unique strings than 16 rows of 1,048,576 distinct values is no roster (calamine reserves
/// 24 bytes for each declared one before reading the first: 400 MB at this cap).
pub const MAX_SHARED_STRINGS: u64 = 1 << 24;
/// A part's root element is at its start; a part that hides it further is refused rather than
/// inflated in search of it.
const ROOT_SEARCH_BYTES: u64 = 1 << 20;

/// Checks of a zipped workbook's parts, before calamine opens it: the shared-string table's
/// declared count (XLSX: calamine reserves it up front, 2.4 PB for a 2 KB file), the dense extent
/// of an ODS's tables (calamine builds every table of the file as dense ranges on open).
pub(super) fn check_zip_parts<R: Read + Seek>(zip: &mut zip::ZipArchive<R>, ods: bool) -> Result<(), FileError> {
    let names: Vec<(usize, String)> =
        (0..zip.len()).filter_map(|i| zip.name_for_index(i).and_then(|n| n.ok()).map(|n| (i, n.to_ascii_lowercase()))).collect();
    let damaged = |format: &'static str, e: &dyn std::fmt::Display| FileError::Corrupt { format, detail: e.to_string() };
    if ods {
        // A password-protected ODS is a zip like any other whose manifest gives each encrypted
        // part its `encryption-data`: its content.xml read as "cannot decode UTF-8".
        if let Some((i, _)) = names.iter().find(|(_, n)| n == "meta-inf/manifest.xml") {
            // Read as far as it goes: a manifest that cannot be read says nothing (calamine does
            // not read it).
            let mut manifest = Vec::new();
            if let Ok(entry) = zip.by_index(*i) {
                let _ = entry.take(ROOT_SEARCH_BYTES).read_to_end(&mut manifest);
            }
            if content_encrypted(&manifest) {
                return Err(FileError::Encrypted);
            }
        }
        let Some((i, _)) = names.iter().find(|(_, n)| n == "content.xml") else { return Ok(()) };
        let entry = zip.by_index(*i).map_err(|e| damaged("ODS", &e))?;
        let cost = ods_cost(std::io::BufReader::new(entry)).map_err(|e| damaged("ODS", &e))?;
        if cost.cells > MAX_ODS_DENSE_CELLS {
            // Said in the cells the sheet spans: calamine holds each twice (as read, then dense).
            let (span, limit) = (cost.span.max(cost.cells - cost.span), MAX_ODS_DENSE_CELLS / 2);
            return Err(if cost.span > 2 * (cost.cells - cost.span) {
                FileError::TooSpread { format: "ODS", cells: span, limit }
            } else {
                FileError::OdsTooLarge { cells: span, limit }
            });
        }
        if cost.text_bytes > MAX_ODS_TEXT_BYTES {
            return Err(FileError::TextTooLarge { format: "ODS", mb: cost.text_bytes >> 20, limit_mb: MAX_ODS_TEXT_BYTES >> 20 });
        }
        return Ok(());
    }
    for (i, _) in names.iter().filter(|(_, n)| n.ends_with("sharedstrings.xml")) {
        let entry = zip.by_index(*i).map_err(|e| damaged("XLSX", &e))?;
        let size = entry.size();
        let declared = shared_string_count(std::io::BufReader::new(entry.take(ROOT_SEARCH_BYTES))).map_err(|e| damaged("XLSX", &e))?;
        let allowed = (size / MIN_SHARED_STRING_BYTES).min(MAX_SHARED_STRINGS);
        if let Some(declared) = declared.filter(|d| *d > allowed) {
            return Err(FileError::Implausible { part: "shared-string table", what: "strings", declared, allowed });
        }
    }
    Ok(())
}

/// Whether an ODS manifest gives `content.xml` its `encryption-data` (only the sheets matter: a
/// password-protected macro library encrypts its own parts, not the workbook's).
fn content_encrypted(manifest: &[u8]) -> bool {
    let Some(at) = memchr::memmem::find(manifest, b"\"content.xml\"").or_else(|| memchr::memmem::find(manifest, b"'content.xml'")) else {
        return false;
    };
    let rest = &manifest[at..];
    let Some(end) = memchr::memchr(b'>', rest) else { return false };
    if rest[..end].ends_with(b"/") {
        return false; // `<manifest:file-entry .../>`: nothing inside it
    }
    let inside = memchr::memmem::find(&rest[end..], b"file-entry>").map_or(&rest[end..], |close| &rest[end..end + close]);
    memchr::memmem::find(inside, b"encryption-data").is_some()
}

/// The `uniqueCount` the `<sst>` root declares, as calamine reads it (`None` if absent or not a
/// number, which calamine ignores too); an overflowing number counts as the largest.
fn shared_string_count<B: std::io::BufRead>(input: B) -> Result<Option<u64>, String> {
    use quick_xml::events::Event;
    let mut xml = quick_xml::Reader::from_reader(input);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match xml.read_event_into(&mut buf).map_err(|e| e.to_string())? {
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == "sst" => {
                let Some(a) = e.attributes().flatten().find(|a| a.key.local_name().as_ref() == "uniqueCount") else {
                    return Ok(None);
                };
                let v: &str = a.value.as_ref();
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Ok(None);
                }
                return Ok(Some(v.parse().unwrap_or(u64::MAX)));
            }
            Event::Start(_) | Event::Empty(_) => return Err("its shared-string table has an unexpected root element".into()),
            Event::Eof => return Err("its shared-string table has no root element near its start".into()),
            _ => {}
        }
    }
}

/// What `ods_cost` may count: cells calamine holds (each a value and a formula, read then rebuilt
/// dense: about 250 bytes a cell once the reader's rows are kept, as the CLI keeps them). A sheet of
/// 25,000 rows by 20 filled columns counts 1 M.
pub const MAX_ODS_DENSE_CELLS: u64 = 1_000_000;
/// What `ods_cost` may count of cell text: every repeated cell is a copy of its text, and
/// `<text:s text:c="N"/>` is N spaces, so a few bytes can ask for gigabytes.
pub const MAX_ODS_TEXT_BYTES: u64 = 128 << 20;

/// What calamine's ODS reader will hold, counted from `content.xml` without keeping anything.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OdsCost {
    /// What calamine holds: the cells pushed as read, and the dense ranges.
    pub cells: u64,
    /// Of those, the dense ranges: each table's span from its first to its last used cell.
    pub span: u64,
    pub text_bytes: u64,
}

/// calamine builds every `table:table` of `content.xml` when it opens the file: its rows (each
/// cell pushed as many times as it repeats, up to 16,384 a row; empty cells only when a non-empty
/// one follows), then a dense range from the first non-empty cell to the last with repeated rows
/// expanded, for values and again for formulas; each copy of a cell is a copy of its text, spaces
/// of `text:s text:c` expanded. Counted the way calamine reads them; a cell counts as non-empty if
/// it has a value type, a formula or any text (a little more than calamine counts).
pub(super) fn ods_cost<B: std::io::BufRead>(input: B) -> Result<OdsCost, String> {
    use quick_xml::events::{BytesStart, Event};
    const MAX_ROWS: u64 = MAX_SHEET_ROWS as u64;
    const MAX_COLS: u64 = MAX_SHEET_COLUMNS as u64;
    #[derive(Default)]
    struct Table {
        pushed: u64,
        rows: u64,
        text: u64,
        /// (first, last) non-empty row, in expanded rows; (first, last) non-empty column.
        span: Option<(u64, u64, u64, u64)>,
    }
    impl Table {
        fn dense(&self) -> u64 {
            self.span.map_or(0, |(r0, r1, c0, c1)| (r1 - r0 + 1).saturating_mul(c1 - c0 + 1))
        }
        fn cells(&self) -> u64 {
            self.pushed.saturating_add(self.dense())
        }
    }
    /// The row being read.
    #[derive(Default)]
    struct Row {
        repeat: u64,
        cols: u64,
        empty_run: u64,
        span: Option<(u64, u64)>,
        text: u64,
    }
    impl Row {
        fn cell(&mut self, repeats: u64, filled: bool, text: u64, t: &mut Table) {
            if !filled {
                self.empty_run = repeats.min(MAX_COLS - self.cols);
                return;
            }
            let gap = self.empty_run.min(MAX_COLS - self.cols);
            self.cols += gap;
            t.pushed = t.pushed.saturating_add(gap);
            self.empty_run = 0;
            let n = repeats.min(MAX_COLS - self.cols);
            if n > 0 {
                let span = self.span.get_or_insert((self.cols, self.cols + n - 1));
                span.1 = self.cols + n - 1;
            }
            self.cols += n;
            t.pushed = t.pushed.saturating_add(n);
            self.text = self.text.saturating_add(text.saturating_mul(n));
        }
    }
    let attr = |e: &BytesStart<'_>, name: &str| e.attributes().flatten().find(|a| a.key.as_ref() == name).map(|a| a.value.into_owned());
    let count = |e: &BytesStart<'_>, name: &str, absent: u64| attr(e, name).map_or(absent, |v| v.trim().parse::<u64>().unwrap_or(u64::MAX));
    // A cell's (non-empty, bytes of its value attributes), as it starts.
    let opened = |e: &BytesStart<'_>| {
        let mut bytes = 0u64;
        let mut filled = false;
        for a in e.attributes().flatten() {
            match a.key.as_ref() {
                "office:value-type" | "calcext:value-type" => filled = true,
                "table:formula" | "office:value" | "office:string-value" | "office:date-value" | "office:time-value" => {
                    filled |= a.key.as_ref() == "table:formula";
                    bytes = bytes.saturating_add(a.value.len() as u64);
                }
                _ => {}
            }
        }
        (filled, bytes)
    };
    let mut xml = quick_xml::Reader::from_reader(input);
    let mut buf = Vec::new();
    let mut cost = OdsCost::default();
    let mut table: Option<Table> = None;
    let mut row = Row::default();
    // The cell being read, while inside it: (repeat count, non-empty so far, text bytes, depth).
    let mut cell: Option<(u64, bool, u64, usize)> = None;
    loop {
        buf.clear();
        let event = xml.read_event_into(&mut buf).map_err(|e| e.to_string())?;
        if let Some((repeats, filled, text, depth)) = cell.as_mut() {
            // Spaces, tabs, line breaks and paragraphs after the first add characters.
            let so_far = *text;
            let added = |e: &BytesStart<'_>| match e.name().as_ref() {
                "text:s" => Some(count(e, "text:c", 1)),
                "text:tab" | "text:line-break" => Some(1),
                // A line break between paragraphs.
                "text:p" => Some(u64::from(so_far > 0)),
                _ => None,
            };
            match &event {
                Event::Start(e) | Event::Empty(e) => {
                    if let Some(n) = added(e) {
                        *filled |= e.name().as_ref() != "text:p";
                        *text = text.saturating_add(n);
                    }
                    *depth += usize::from(matches!(event, Event::Start(_)));
                }
                Event::Text(t) if !t.is_empty() => {
                    *filled = true;
                    *text = text.saturating_add(t.len() as u64);
                }
                Event::End(_) if *depth > 0 => *depth -= 1,
                Event::End(_) => {
                    let (repeats, filled, text) = (*repeats, *filled, *text);
                    cell = None;
                    if let Some(t) = table.as_mut() {
                        row.cell(repeats, filled, text, t);
                    }
                }
                Event::Eof => return Err("its content ends inside a cell".into()),
                _ => {}
            }
            continue;
        }
        match event {
            Event::Start(e) if e.name().as_ref() == "table:table" => table = Some(Table::default()),
            Event::End(e) if e.name().as_ref() == "table:table" => {
                if let Some(t) = table.take() {
                    cost.cells = cost.cells.saturating_add(t.cells());
                    cost.span = cost.span.saturating_add(t.dense());
                    cost.text_bytes = cost.text_bytes.saturating_add(t.text);
                }
            }
            Event::Start(e) if e.name().as_ref() == "table:table-row" => {
                row = Row { repeat: count(&e, "table:number-rows-repeated", 1), ..Row::default() };
            }
            Event::End(e) if e.name().as_ref() == "table:table-row" => {
                if let Some(t) = table.as_mut() {
                    let n = row.repeat.min(MAX_ROWS.saturating_sub(t.rows));
                    if let Some((c0, c1)) = row.span {
                        let (r0, r1) = (t.rows, t.rows + n.max(1) - 1);
                        let s = t.span.get_or_insert((r0, r1, c0, c1));
                        *s = (s.0, r1, s.2.min(c0), s.3.max(c1));
                    }
                    // The row's text once as read, then once per row of the dense range.
                    t.text = t.text.saturating_add(row.text.saturating_mul(n.saturating_add(1)));
                    t.rows = t.rows.saturating_add(n);
                }
            }
            // A self-closing row is a row to calamine (it expands empty elements): repeated, it
            // spreads the dense range as far as any other row.
            Event::Empty(e) if e.name().as_ref() == "table:table-row" => {
                if let Some(t) = table.as_mut() {
                    let n = count(&e, "table:number-rows-repeated", 1).min(MAX_ROWS.saturating_sub(t.rows));
                    t.rows = t.rows.saturating_add(n);
                }
            }
            Event::Start(e) if matches!(e.name().as_ref(), "table:table-cell" | "table:covered-table-cell") => {
                let (filled, bytes) = opened(&e);
                cell = Some((count(&e, "table:number-columns-repeated", 1), filled, bytes, 0));
            }
            Event::Empty(e) if matches!(e.name().as_ref(), "table:table-cell" | "table:covered-table-cell") => {
                if let Some(t) = table.as_mut() {
                    let (filled, bytes) = opened(&e);
                    row.cell(count(&e, "table:number-columns-repeated", 1), filled, bytes, t);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if let Some(t) = table {
        cost.cells = cost.cells.saturating_add(t.cells());
        cost.span = cost.span.saturating_add(t.dense());
        cost.text_bytes = cost.text_bytes.saturating_add(t.text);
    }
    Ok(cost)
}

#[cfg(test)]
mod tests {
    use super::*;

    mod ole {
        use crate::ingest::decode::guards::{OleWorkbook, check_ole_container, content_encrypted};
        use crate::ingest::decode::{FileError, Table, decode};
        use std::io::Read;
        use std::io::{Cursor, Write};

        fn fixture(name: &str) -> Vec<u8> {
            std::fs::read(format!("{}/../tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
        }

        /// A real file's workbook stream.
        fn workbook(name: &str) -> Vec<u8> {
            let mut file = cfb::CompoundFile::open(Cursor::new(fixture(name))).unwrap();
            let mut stream = Vec::new();
            file.open_stream("/Workbook").unwrap().read_to_end(&mut stream).unwrap();
            stream
        }

        /// A compound file holding `streams` (path, body), storages made as needed.
        fn container(streams: &[(&str, Vec<u8>)]) -> Vec<u8> {
            let mut file = cfb::CompoundFile::create_with_version(cfb::Version::V3, Cursor::new(Vec::new())).unwrap();
            for (path, body) in streams {
                if let Some(parent) = std::path::Path::new(path).parent().filter(|p| *p != std::path::Path::new("/")) {
                    file.create_storage_all(parent).unwrap();
                }
                file.create_stream(path).unwrap().write_all(body).unwrap();
            }
            file.flush().unwrap();
            file.into_inner().into_inner()
        }

        fn check(bytes: &[u8]) -> Result<OleWorkbook, FileError> {
            check_ole_container(&mut Cursor::new(bytes), bytes.len() as u64)
        }

        /// The roster fixture's workbook, its sheet declaring all of IV65536 (16.7 M cells).
        fn spread() -> Vec<u8> {
            let mut stream = workbook("roster.xls");
            let dims = stream.windows(4).position(|w| w == [0x00, 0x02, 0x0E, 0x00]).expect("a DIMENSIONS record");
            stream[dims + 4..dims + 18].copy_from_slice(&[0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0]);
            stream
        }

        fn rows(t: &Table) -> Vec<Vec<String>> {
            t.rows.iter().map(|(_, r)| r.clone()).collect()
        }

        /// A password-protected XLSX is an OLE container with the encrypted package; it was
        /// answered "it holds no workbook. Save it again from your spreadsheet program".
        #[test]
        fn a_password_protected_workbook_is_named_as_such() {
            let encrypted = container(&[("/EncryptionInfo", vec![4, 0, 4, 0]), ("/EncryptedPackage", vec![0; 64])]);
            assert!(matches!(check(&encrypted), Err(FileError::Encrypted)));
            assert!(decode(&encrypted).unwrap_err().to_string().contains("protected with a password"));
        }

        /// LibreOffice's password-protected files (`make/password_protected.py`): the XLS (a
        /// FILEPASS record, every record after it encrypted) was answered as spanning 78 trillion
        /// cells, the ODS (a zip whose manifest lists encrypted parts) as not UTF-8.
        #[test]
        fn password_protected_xls_and_ods_are_named_as_such() {
            for name in ["bad/password-protected.xls", "bad/password-protected.ods"] {
                assert_eq!(decode(&fixture(name)).unwrap_err(), FileError::Encrypted, "{name}");
            }
            // The same workbook unprotected reads as ever.
            assert!(decode(&fixture("roster.ods")).is_ok());
            // Only content.xml's encryption counts (a macro library may have a password).
            let entry = |path: &str, inside: &str| {
                format!(r#"<manifest:file-entry manifest:full-path="{path}" manifest:media-type="text/xml">{inside}</manifest:file-entry>"#)
            };
            let data = r#"<manifest:encryption-data manifest:checksum-type="SHA1/1K"/>"#;
            let macros = format!("{}{}", entry("content.xml", ""), entry("Basic/Lib/Module1.xml", data));
            assert!(!content_encrypted(macros.as_bytes()));
            assert!(content_encrypted(entry("content.xml", data).as_bytes()));
            assert!(!content_encrypted(br#"<manifest:file-entry manifest:full-path="content.xml"/><manifest:encryption-data/>"#));
        }

        #[test]
        fn the_root_workbook_is_measured_whatever_its_case() {
            let ok = check(&fixture("roster.xls")).unwrap();
            assert_eq!((ok.name, ok.stream), ("Workbook", workbook("roster.xls")));
            for name in ["/Workbook", "/WORKBOOK", "/workbook"] {
                let err = check(&container(&[(name, spread())])).map(|_| ()).unwrap_err();
                assert!(matches!(err, FileError::TooSpread { format: "XLS", .. }), "{name}: {err:?}");
            }
            // Before, only "/Workbook" and "/Book" were measured: calamine read a WORKBOOK unmeasured.
            let fine = check(&container(&[("/WORKBOOK", workbook("roster.xls"))])).unwrap();
            assert_eq!((fine.name, fine.stream), ("Workbook", workbook("roster.xls")));
            // BIFF5's Book when there is no Workbook; a file with both (Excel 5/95 and 97) is 97's.
            assert_eq!(check(&container(&[("/Book", b"old".to_vec())])).unwrap().name, "Book");
            let both = check(&container(&[("/Book", b"old".to_vec()), ("/Workbook", workbook("roster.xls"))])).unwrap();
            assert_eq!(both.name, "Workbook");
        }

        /// calamine finds its stream by name at any depth, reachable or not; it is given the
        /// measured root stream alone, so another Workbook (an embedded object's, a decoy) is
        /// never what it reads. A file whose only Workbook is in a storage has none.
        #[test]
        fn calamine_reads_the_measured_stream_and_nothing_else() {
            let embedded = container(&[("/MBD0001/Workbook", spread()), ("/Workbook", workbook("roster.xls"))]);
            let t = decode(&embedded).unwrap();
            assert_eq!(rows(&t), rows(&decode(&fixture("roster.xls")).unwrap()), "the root's workbook, read as the real file");
            let nested = container(&[("/Sub/Workbook", spread())]);
            let err = check(&nested).map(|_| ()).unwrap_err();
            assert!(matches!(&err, FileError::Corrupt { format: "XLS", detail } if detail.contains("no workbook")), "{err:?}");
            // The rebuilt container holds the stream alone and reads as the original.
            let rebuilt = check(&fixture("real/formatted-numbers.xls")).unwrap().rebuilt().unwrap();
            let again = check(&rebuilt).unwrap();
            assert_eq!((again.name, again.stream), ("Workbook", workbook("real/formatted-numbers.xls")));
        }
    }

    fn sst(root: &str) -> Result<Option<u64>, String> {
        shared_string_count(root.as_bytes())
    }

    #[test]
    fn the_shared_string_count_is_read_as_calamine_reads_it() {
        let decl = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>"#;
        assert_eq!(sst(&format!(r#"{decl}<sst xmlns="x" count="9" uniqueCount="3"><si><t>a</t></si></sst>"#)), Ok(Some(3)));
        assert_eq!(sst(&format!(r#"{decl}<x:sst xmlns:x="x" uniqueCount="7"/>"#)), Ok(Some(7)), "a prefixed root");
        assert_eq!(sst(r#"<sst count="3"/>"#), Ok(None), "no uniqueCount: calamine reserves nothing");
        assert_eq!(sst(r#"<sst uniqueCount="-1"/>"#), Ok(None), "not a number: calamine ignores it");
        assert_eq!(
            sst(r#"<sst uniqueCount="99999999999999999999999"/>"#),
            Ok(Some(u64::MAX)),
            "an overflowing count counts as the largest"
        );
        assert!(sst(r#"<worksheet/>"#).is_err());
        assert!(sst("").is_err());
        // A root hidden past the searched prefix is refused, not searched for.
        let hidden = format!("{decl}<!--{}--><sst uniqueCount=\"1\"/>", "x".repeat(100));
        assert!(shared_string_count(std::io::Read::take(hidden.as_bytes(), 80)).is_err());
    }

    fn ods(rows: &str) -> u64 {
        ods_full(rows).cells
    }

    fn ods_full(rows: &str) -> OdsCost {
        let xml = format!(
            r#"<office:document-content><office:body><office:spreadsheet><table:table table:name="S">{rows}</table:table></office:spreadsheet></office:body></office:document-content>"#
        );
        ods_cost(xml.as_bytes()).unwrap()
    }
    const V: &str = r#"<table:table-cell office:value-type="string"><text:p>x</text:p></table:table-cell>"#;
    const E: &str = "<table:table-cell/>";

    #[test]
    fn ods_cells_are_counted_as_calamine_allocates_them() {
        // 2 rows x 2 values: pushed 4, dense 4.
        assert_eq!(ods(&format!("<table:table-row>{V}{V}</table:table-row><table:table-row>{V}{V}</table:table-row>")), 8);
        // Trailing empty cells and rows cost nothing; an empty run before a value is pushed.
        assert_eq!(ods(&format!("<table:table-row>{V}{E}{E}</table:table-row><table:table-row>{E}</table:table-row>")), 2);
        assert_eq!(ods(&format!(r#"<table:table-row><table:table-cell table:number-columns-repeated="9"/>{V}</table:table-row>"#)), 10 + 1);
        // A value row repeated: pushed once, expanded in the dense range.
        let repeated = format!(r#"<table:table-row table:number-rows-repeated="1000">{V}{V}</table:table-row>"#);
        assert_eq!(ods(&repeated), 2 + 2000);
        // Empty rows between two values are part of the dense range.
        let far = format!(
            r#"<table:table-row>{V}</table:table-row><table:table-row table:number-rows-repeated="999"><table:table-cell table:number-columns-repeated="3"/></table:table-row><table:table-row><table:table-cell table:number-columns-repeated="2"/>{V}</table:table-row>"#
        );
        assert_eq!(ods(&far), 1 + 3 + 1001 * 3);
        // The same gap as one self-closing row: the 999 rows still count (they once did not, so a
        // repeat of a million between two values passed the guard and calamine built ~100M cells).
        let self_closing = format!(
            r#"<table:table-row>{V}</table:table-row><table:table-row table:number-rows-repeated="999"/><table:table-row><table:table-cell table:number-columns-repeated="2"/>{V}</table:table-row>"#
        );
        assert_eq!(ods(&self_closing), 1 + 3 + 1001 * 3);
        let bomb = format!(
            r#"<table:table-row><table:table-cell table:number-columns-repeated="99"/>{V}</table:table-row><table:table-row table:number-rows-repeated="999999"/><table:table-row>{V}</table:table-row>"#
        );
        assert!(ods(&bomb) > 100 * 1_000_000, "{}", ods(&bomb));
        // A row's columns stop at 16,384 as calamine's do.
        let wide = r#"<table:table-row><table:table-cell table:number-columns-repeated="4000000000" office:value-type="float" office:value="1"/></table:table-row>"#;
        assert_eq!(ods(wide), 2 * 16_384);
        // Text, spaces and formulas make a cell non-empty; markup inside a cell is not a cell.
        let inner = r#"<table:table-row><table:table-cell><text:p><text:s/></text:p></table:table-cell><table:table-cell table:formula="of:=1"/><table:table-cell><text:p><text:span>y</text:span></text:p></table:table-cell></table:table-row>"#;
        assert_eq!(ods(inner), 3 + 3);
    }

    /// An ODS of `rows` (a table's XML inside `office:spreadsheet`).
    fn ods_file(rows: &str) -> Vec<u8> {
        let content = format!(
            r#"<?xml version="1.0"?><office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0"><office:body><office:spreadsheet><table:table table:name="S">{rows}</table:table></office:spreadsheet></office:body></office:document-content>"#
        );
        let mimetype: &[u8] = b"application/vnd.oasis.opendocument.spreadsheet";
        crate::ingest::decode::archive::tests::zip_of(&[("mimetype", mimetype), ("content.xml", content.as_bytes())])
    }

    /// The bomb above as a file: refused by the guard before calamine builds its range.
    #[test]
    fn a_self_closing_repeated_row_cannot_spread_an_ods_past_the_guard() {
        let rows = format!(
            r#"<table:table-row><table:table-cell table:number-columns-repeated="99"/>{V}</table:table-row><table:table-row table:number-rows-repeated="999999"/><table:table-row>{V}</table:table-row>"#
        );
        let err = crate::ingest::decode::decode(&ods_file(&rows)).unwrap_err();
        assert!(matches!(err, FileError::TooSpread { format: "ODS", .. }), "{err:?}");
        assert!(err.to_string().contains("span 100,000,100 cells"), "{err}");
    }

    /// 24,000 rows of 21 filled columns were refused as spanning 1,008,042 cells (each counted as
    /// read and again dense) and told to delete stray cells they did not have. They are named as
    /// what they are: too many cells for an ODS, which XLSX or CSV would carry.
    #[test]
    fn a_large_ods_without_stray_cells_is_named_as_large_not_spread() {
        let row = r#"<table:table-row><table:table-cell table:number-columns-repeated="21" office:value-type="string"><text:p>x</text:p></table:table-cell></table:table-row>"#;
        let err = crate::ingest::decode::decode(&ods_file(&row.repeat(24_000))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the ODS file's sheets hold 504,000 cells, more than the 500,000 an ODS file can have here (an ODS is read whole; XLSX and CSV files are read row by row): save it as XLSX or CSV, or split it"
        );
        let fits = crate::ingest::decode::decode(&ods_file(&row.repeat(23_000)));
        assert!(
            !matches!(fits, Err(FileError::OdsTooLarge { .. } | FileError::TooSpread { .. })),
            "483,000 cells pass the guard: {fits:?}"
        );
    }

    #[test]
    fn ods_text_counts_every_copy_and_every_expanded_space() {
        // "x" in one cell: once as read, once in the dense range.
        assert_eq!(ods_full(&format!("<table:table-row>{V}</table:table-row>")).text_bytes, 2);
        // Repeated across 3 columns and down 10 rows: 3 copies read, 30 more dense.
        let rep = r#"<table:table-row table:number-rows-repeated="10"><table:table-cell table:number-columns-repeated="3" office:value-type="string"><text:p>abcd</text:p></table:table-cell></table:table-row>"#;
        assert_eq!(ods_full(rep).text_bytes, 4 * 3 * 11);
        // Two billion spaces in one cell.
        let spaces = r#"<table:table-row><table:table-cell office:value-type="string"><text:p>a<text:s text:c="2000000000"/></text:p></table:table-cell></table:table-row>"#;
        assert_eq!(ods_full(spaces).text_bytes, 2 * 2_000_000_001);
        // A value attribute is copied with its cell.
        let value = r#"<table:table-row><table:table-cell table:number-columns-repeated="5" office:value-type="float" office:value="12345"/></table:table-row>"#;
        assert_eq!(ods_full(value).text_bytes, 5 * 5 * 2);
    }

    #[test]
    fn every_table_of_an_ods_counts_and_the_real_fixture_counts_its_cells() {
        let one = format!("<table:table-row>{V}{V}</table:table-row>");
        let xml = format!("<r><table:table>{one}</table:table><table:table>{one}{one}</table:table></r>");
        assert_eq!(ods_cost(xml.as_bytes()).unwrap().cells, 4 + 8);
        let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/roster.ods")).unwrap();
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        let content = std::io::BufReader::new(zip.by_name("content.xml").unwrap());
        let table =
            crate::ingest::decode::decode(&std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/roster.ods")).unwrap())
                .unwrap();
        let cells = (table.rows.len() as u64 + 1) * table.headers.len() as u64;
        assert_eq!(ods_cost(content).unwrap().cells, 2 * cells, "pushed once, dense once");
        assert!(ods_cost("<table:table><table:table-row><table:table-cell>".as_bytes()).is_err(), "cut inside a cell");
    }
}
