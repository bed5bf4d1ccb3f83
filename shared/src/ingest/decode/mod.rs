//! Bytes -> a table of text cells. The format comes from the bytes, never from the file name.

use calamine::{Data, DataRef, Reader, Sheets};
use encoding_rs::{Encoding, UTF_8, WINDOWS_1252};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::io::{Cursor, Read, Seek, SeekFrom};

mod guards;
pub use guards::{MAX_ODS_DENSE_CELLS, MAX_SHARED_STRINGS, MAX_SHEET_COLUMNS, MAX_SHEET_ROWS, MAX_UNZIPPED_BYTES, MAX_XLS_DENSE_CELLS};
use guards::{check_declared_size, check_ole_container, check_zip_parts};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Format {
    Csv,
    Tsv,
    Xlsx,
    Xls,
    Ods,
}

impl Format {
    /// Delimited text in, CSV out; spreadsheets in, XLSX out.
    pub fn is_spreadsheet(self) -> bool {
        matches!(self, Format::Xlsx | Format::Xls | Format::Ods)
    }
    pub fn label(self) -> &'static str {
        match self {
            Format::Csv => "CSV",
            Format::Tsv => "TSV",
            Format::Xlsx => "XLSX",
            Format::Xls => "XLS",
            Format::Ods => "ODS",
        }
    }
}

/// A decoded roster: header row and data rows, each row with the number the user sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Table {
    pub format: Format,
    /// Text encoding of delimited files (`UTF-8`, `UTF-16LE`, `windows-1252`, ...).
    #[serde(default)]
    pub encoding: Option<String>,
    #[serde(default)]
    pub delimiter: Option<char>,
    #[serde(default)]
    pub sheet: Option<String>,
    /// Row number of the header as the user sees it (1 unless leading blank rows).
    pub header_row: u32,
    /// Added to row numbers to make them unique across the sheets of a workbook (0 for the first).
    #[serde(default)]
    pub row_offset: u32,
    /// The user type a sheet's name gives its rows (sheet "Students" -> "Student").
    #[serde(default)]
    pub user_type: Option<String>,
    pub headers: Vec<String>,
    pub rows: Vec<(u32, Vec<String>)>,
}

/// Why a file cannot be read as a roster at all.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FileError {
    #[error("the file is empty")]
    Empty,
    #[error("the file is not a CSV, TSV, XLSX, XLS or ODS roster ({0})")]
    UnknownFormat(String),
    #[error("the {format} file could not be read: {detail}. Save it again from your spreadsheet program and re-upload it")]
    Corrupt { format: &'static str, detail: String },
    #[error("the workbook has no sheet with data")]
    NoSheet,
    #[error(
        "the workbook expands to more than {limit_mb} MB when unzipped, so it is corrupt or built to exhaust memory; save it again from your spreadsheet program, or split it"
    )]
    TooBigUnzipped { limit_mb: u64 },
    #[error(
        "the {format} file's sheets span {} cells from their first to their last used cell, more than the {} an {format} file can have here; delete stray cells far below or right of the data (Ctrl+End in Excel goes to the last one), or save the file as XLSX",
        thousands(*cells),
        thousands(*limit)
    )]
    TooSpread { format: &'static str, cells: u64, limit: u64 },
    #[error(
        "the workbook's {part} says it holds {declared} {what}, but its size allows at most {allowed}: the file is damaged or built to exhaust memory. Save it again from your spreadsheet program and re-upload it"
    )]
    Implausible { part: &'static str, what: &'static str, declared: u64, allowed: u64 },
    #[error(
        "sheet \"{sheet}\" has a value in cell {cell}, outside the largest sheet a spreadsheet can have (1,048,576 rows by 16,384 columns, A1:XFD1048576): the file is damaged or was not made by a spreadsheet program. Save it again from Excel or LibreOffice and re-upload it"
    )]
    OutsideGrid { sheet: String, cell: String },
    #[error(
        "the {format} file's cells hold {mb} MB of text once repeated cells and spaces are expanded, more than the {limit_mb} MB an {format} file can have here: the file is damaged or built to exhaust memory. Save it again from your spreadsheet program, or save it as XLSX"
    )]
    TextTooLarge { format: &'static str, mb: u64, limit_mb: u64 },
    #[error(
        "sheet \"{sheet}\": cell {cell} has a value to the left of the header row, which starts in column {first}; move the value under a header or delete it"
    )]
    LeftOfHeader { sheet: String, cell: String, first: String },
}

/// Why reading stopped: the file, the visitor (its own reason), or the disk under the reader.
#[derive(Debug)]
pub enum ReadError<S> {
    File(FileError),
    Stopped(S),
    Io(std::io::Error),
}

impl<S> From<FileError> for ReadError<S> {
    fn from(e: FileError) -> Self {
        ReadError::File(e)
    }
}

impl<S> From<std::io::Error> for ReadError<S> {
    fn from(e: std::io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// What a table is before its rows: its header and where it comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct TableHead {
    pub format: Format,
    pub encoding: Option<String>,
    pub delimiter: Option<char>,
    pub sheet: Option<String>,
    pub header_row: u32,
    pub row_offset: u32,
    pub user_type: Option<String>,
    pub headers: Vec<String>,
    /// The file has more than one table (a workbook with several data sheets): messages name the sheet.
    pub several: bool,
    /// Rows the table may have, when known cheaply (an XLSX sheet's declared dimension, a text
    /// file's line count): a size hint only, capped at `MAX_ROWS_HINT`.
    pub rows_hint: Option<u32>,
}

/// Largest size hint given: a sheet's maximum. A file with more rows grows the table as it goes;
/// a hostile one (a million blank lines) cannot make ingest reserve more than that.
pub const MAX_ROWS_HINT: u32 = 1 << 20;

/// Receives a file's tables as they are read: each header once, then its rows in order, each with
/// the number the user sees. Nothing else of the file is held, so ingest's memory does not grow
/// with the file (`decode_all` is the visitor that keeps everything).
pub trait TableVisitor {
    type Stop;
    fn table(&mut self, head: TableHead) -> Result<(), Self::Stop>;
    fn row<S: AsRef<str>>(&mut self, number: u32, cells: &[S]) -> Result<(), Self::Stop>;
}

const ZIP_MAGIC: &[u8] = b"PK\x03\x04";
const OLE_MAGIC: &[u8] = &[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];

/// A zipped (XLSX, ODS) or OLE (XLS) workbook, by its first bytes; anything else is read as text.
pub fn is_workbook(bytes: &[u8]) -> bool {
    bytes.starts_with(ZIP_MAGIC) || bytes.starts_with(OLE_MAGIC)
}

/// Sheet names that hold instructions rather than data (the template's own, and common ones).
pub fn is_instruction_sheet(name: &str) -> bool {
    let n: String = name.to_ascii_lowercase().chars().filter(|c| c.is_alphanumeric()).collect();
    matches!(n.as_str(), "readme" | "instructions" | "definitions" | "help" | "notes" | "howto" | "lists" | "lookups")
}

/// Row ids of sheet `k` of a workbook start at `k * SHEET_STRIDE` (a sheet has at most 1,048,576 rows).
pub const SHEET_STRIDE: u32 = 10_000_000;

/// User types a sheet name can give (plural or singular, any case).
pub const USER_TYPES: &[&str] =
    &["Student", "Instructor", "Teacher", "Parent", "Guardian", "Employee", "Learner", "Manager", "Staff", "User"];

/// The user type a sheet name stands for: "Students" -> "Student".
pub fn user_type_of(sheet: &str) -> Option<String> {
    let n = sheet.trim().to_lowercase();
    let singular = n.strip_suffix('s').unwrap_or(&n);
    USER_TYPES.iter().find(|t| t.to_lowercase() == n || t.to_lowercase() == singular).map(|t| t.to_string())
}

/// The first table of the file (the whole file for CSV/TSV; the first data sheet of a workbook).
pub fn decode(bytes: &[u8]) -> Result<Table, FileError> {
    decode_all(bytes)?.into_iter().next().ok_or(FileError::NoSheet)
}

/// Every table of the file, held in memory: one for CSV/TSV; each data sheet of a workbook,
/// instruction sheets ("Read Me", "Definitions", ...) and empty sheets left out. The same reader
/// as ingest's streaming one, so the CLI and finalize see exactly the rows ingest saw.
pub fn decode_all(bytes: &[u8]) -> Result<Vec<Table>, FileError> {
    let mut tables = Collect::default();
    match read(&mut Cursor::new(bytes), &mut tables) {
        Ok(()) => Ok(tables.0),
        Err(ReadError::File(e)) => Err(e),
        Err(ReadError::Io(e)) => Err(FileError::Corrupt { format: "roster", detail: e.to_string() }),
        Err(ReadError::Stopped(never)) => match never {},
    }
}

/// The visitor that keeps every table.
#[derive(Default)]
struct Collect(Vec<Table>);

impl TableVisitor for Collect {
    type Stop = std::convert::Infallible;
    fn table(&mut self, h: TableHead) -> Result<(), Self::Stop> {
        self.0.push(Table {
            format: h.format,
            encoding: h.encoding,
            delimiter: h.delimiter,
            sheet: h.sheet,
            header_row: h.header_row,
            row_offset: h.row_offset,
            user_type: h.user_type,
            headers: h.headers,
            rows: Vec::new(),
        });
        Ok(())
    }
    fn row<S: AsRef<str>>(&mut self, number: u32, cells: &[S]) -> Result<(), Self::Stop> {
        if let Some(t) = self.0.last_mut() {
            t.rows.push((number, cells.iter().map(|c| c.as_ref().to_string()).collect()));
        }
        Ok(())
    }
}

impl Table {
    pub fn head(&self, several: bool) -> TableHead {
        TableHead {
            format: self.format,
            encoding: self.encoding.clone(),
            delimiter: self.delimiter,
            sheet: self.sheet.clone(),
            header_row: self.header_row,
            row_offset: self.row_offset,
            user_type: self.user_type.clone(),
            headers: self.headers.clone(),
            several,
            rows_hint: Some(self.rows.len() as u32),
        }
    }
}

/// Feed tables already in memory to a visitor, as if they were being read.
pub fn replay<V: TableVisitor>(tables: &[Table], v: &mut V) -> Result<(), V::Stop> {
    for t in tables {
        v.table(t.head(tables.len() > 1))?;
        for (n, cells) in &t.rows {
            v.row(*n, cells)?;
        }
    }
    Ok(())
}

/// Read a roster from any seekable source (a file on disk for ingest), handing its tables to `v`
/// as they are read. Text is read in two passes (checks, then rows); a workbook sheet by sheet.
pub fn read<R: Read + Seek, V: TableVisitor>(r: &mut R, v: &mut V) -> Result<(), ReadError<V::Stop>> {
    let mut magic = [0u8; 8];
    let n = read_up_to(r, &mut magic)?;
    r.rewind()?;
    if is_workbook(&magic[..n]) { read_workbook(r, magic[..n].starts_with(OLE_MAGIC), v) } else { read_text(r, v, SCAN_BUFFER) }
}

fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Turns raw rows into a table: the first non-blank row is the header (its trailing blank cells
/// dropped; in a spreadsheet its leading blank columns too), blank rows between data rows are kept
/// (reported as skipped), blank rows after the last data row are dropped.
struct Shape {
    proto: TableHead,
    started: bool,
    /// Spreadsheets: columns left of the header's first cell are not part of the table.
    trim_lead: bool,
    lead: usize,
    /// Blank rows seen since the last data row: kept only if another data row follows.
    blank: Vec<u32>,
}

fn is_blank<S: AsRef<str>>(c: &S) -> bool {
    c.as_ref().trim().is_empty()
}

impl Shape {
    fn new(proto: TableHead, trim_lead: bool) -> Self {
        Shape { proto, started: false, trim_lead, lead: 0, blank: Vec::new() }
    }

    fn row<V: TableVisitor, S: AsRef<str>>(&mut self, v: &mut V, n: u32, cells: &[S]) -> Result<(), ReadError<V::Stop>> {
        let len = cells.iter().rposition(|c| !is_blank(c)).map_or(0, |i| i + 1);
        if !self.started {
            if len == 0 {
                return Ok(());
            }
            self.lead = if self.trim_lead { cells.iter().position(|c| !is_blank(c)).unwrap_or(0) } else { 0 };
            self.started = true;
            let headers = cells[self.lead..len].iter().map(|c| c.as_ref().to_string()).collect();
            return v.table(TableHead { header_row: n, headers, ..self.proto.clone() }).map_err(ReadError::Stopped);
        }
        if len == 0 {
            self.blank.push(n);
            return Ok(());
        }
        if let Some(col) = cells[..self.lead.min(len)].iter().position(|c| !is_blank(c)) {
            return Err(ReadError::File(FileError::LeftOfHeader {
                sheet: quoted(self.proto.sheet.as_deref().unwrap_or_default()),
                cell: format!("{}{n}", column_name(col)),
                first: column_name(self.lead),
            }));
        }
        for b in self.blank.drain(..) {
            v.row(b, &[] as &[&str]).map_err(ReadError::Stopped)?;
        }
        v.row(n, &cells[self.lead..len]).map_err(ReadError::Stopped)
    }

    fn started(&self) -> bool {
        self.started
    }
}

/// 1234567 -> "1,234,567": exact counts in messages (rounded ones said "1.0 million, more than 1.0 million").
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A name from the file as quoted in a message: at most 64 characters, then an ellipsis, so no
/// message outgrows what a cell, an email line or a log line holds.
pub fn quoted(name: &str) -> String {
    bounded(name, 64)
}

/// `text` cut to `max` characters, with an ellipsis when cut.
pub fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// Spreadsheet column letters: 0 -> A, 25 -> Z, 26 -> AA.
pub fn column_name(index: usize) -> String {
    let mut n = index + 1;
    let mut name = Vec::new();
    while n > 0 {
        name.push(b'A' + ((n - 1) % 26) as u8);
        n = (n - 1) / 26;
    }
    name.reverse();
    String::from_utf8(name).unwrap_or_default()
}

fn read_workbook<R: Read + Seek, V: TableVisitor>(r: &mut R, ole: bool, v: &mut V) -> Result<(), ReadError<V::Stop>> {
    let size = r.seek(SeekFrom::End(0))?;
    r.rewind()?;
    let guess = if ole { "XLS" } else { "XLSX" };
    if ole {
        guarded(guess, || check_ole_container(&mut *r, size))?;
        r.rewind()?;
    }
    let mut book = guarded(guess, || open_book(&mut *r, ole))?;
    let format = match &book {
        Sheets::Xls(_) => Format::Xls,
        Sheets::Xlsx(_) => Format::Xlsx,
        Sheets::Ods(_) => Format::Ods,
        Sheets::Xlsb(_) => {
            return Err(FileError::UnknownFormat("XLSB binary workbooks are not supported; save as XLSX".into()).into());
        }
    };
    let label = format.label();
    let corrupt = |e: &dyn std::fmt::Display| FileError::Corrupt { format: label, detail: e.to_string() };
    let names: Vec<String> = book.sheet_names().into_iter().filter(|n| !is_instruction_sheet(n)).collect();
    let proto = |name: &str, k: usize, several: bool| TableHead {
        format,
        encoding: None,
        delimiter: None,
        sheet: Some(name.to_string()),
        header_row: 0,
        row_offset: k as u32 * SHEET_STRIDE,
        user_type: user_type_of(name),
        headers: Vec::new(),
        several,
        rows_hint: None,
    };
    match &mut book {
        // XLSX streams its cells straight into rows; calamine's in-memory range would hold every
        // cell (about 14x the file size) before the first row could be validated.
        Sheets::Xlsx(x) => {
            // Which sheets hold data decides whether messages name the sheet; a sheet's first
            // non-blank cell is near its start, so this reads little. A workbook with one sheet
            // (besides instructions) needs no look: that sheet is read once, and is refused as
            // having no data if no row starts a table.
            let mut data_sheets = Vec::new();
            for name in &names {
                if names.len() == 1 {
                    data_sheets.push(name.clone());
                    break;
                }
                let mut cells = guarded(label, || x.worksheet_cells_reader(name).map_err(|e| corrupt(&e)))?;
                while let Some(cell) = guarded(label, || cells.next_cell().map_err(|e| corrupt(&e)))? {
                    if !cell_ref_text(cell.get_value()).trim().is_empty() {
                        data_sheets.push(name.clone());
                        break;
                    }
                }
            }
            if data_sheets.is_empty() {
                return Err(FileError::NoSheet.into());
            }
            let several = data_sheets.len() > 1;
            for (k, name) in data_sheets.iter().enumerate() {
                let mut cells = guarded(label, || x.worksheet_cells_reader(name).map_err(|e| corrupt(&e)))?;
                let dims = cells.dimensions();
                let declared = dims.end.0.saturating_sub(dims.start.0).min(MAX_ROWS_HINT);
                let mut shape = Shape::new(TableHead { rows_hint: Some(declared), ..proto(name, k, several) }, true);
                // The row's cells are reused from row to row (cleared, not reallocated).
                let mut row: Vec<Slot> = Vec::new();
                let mut width = 0;
                let mut at: Option<u32> = None;
                while let Some(cell) = guarded(label, || cells.next_cell().map_err(|e| corrupt(&e)))? {
                    let value = cell.get_value();
                    let text = cell_ref_text(value);
                    if text.is_empty() {
                        continue; // styled but empty cells do not widen the sheet (as in calamine's range)
                    }
                    let (r, c) = cell.get_position();
                    if r >= MAX_SHEET_ROWS || c >= MAX_SHEET_COLUMNS {
                        let cell = format!("{}{}", column_name(c as usize), r as u64 + 1);
                        return Err(FileError::OutsideGrid { sheet: quoted(name), cell }.into());
                    }
                    match at {
                        Some(a) if a == r => {}
                        Some(a) if a < r => {
                            shape.row(v, a + 1, &row[..width])?;
                            for gap in a + 1..r {
                                shape.row(v, gap + 1, &[] as &[&str])?;
                            }
                            row[..width].iter_mut().for_each(Slot::clear);
                            width = 0;
                            at = Some(r);
                        }
                        Some(a) => {
                            // Excel, LibreOffice and every library we know write rows in order; a
                            // file that does not is hand-made or damaged.
                            return Err(FileError::Corrupt {
                                format: label,
                                detail: format!("sheet \"{}\" stores row {} after row {}", quoted(name), r + 1, a + 1),
                            }
                            .into());
                        }
                        None => at = Some(r),
                    }
                    let c = c as usize;
                    if row.len() <= c {
                        row.resize(c + 1, Slot::default());
                    }
                    width = width.max(c + 1);
                    match *value {
                        DataRef::SharedString(s) => row[c].shared = Some(s),
                        _ => {
                            row[c].shared = None;
                            row[c].own.clear();
                            row[c].own.push_str(&text);
                        }
                    }
                }
                if let Some(a) = at {
                    shape.row(v, a + 1, &row[..width])?;
                }
                if !shape.started() {
                    return Err(FileError::NoSheet.into());
                }
            }
        }
        // XLS and ODS have no streaming reader in calamine; their files are small.
        _ => {
            let mut ranges = Vec::new();
            for name in &names {
                let range = guarded(label, || book.worksheet_range(name).map_err(|e| corrupt(&e)))?;
                if range.used_cells().any(|(_, _, c)| !cell_text(c).trim().is_empty()) {
                    ranges.push((name.clone(), range));
                }
            }
            let several = ranges.len() > 1;
            for (k, (name, range)) in ranges.iter().enumerate() {
                let Some((start_row, _)) = range.start() else { continue };
                let mut shape = Shape::new(proto(name, k, several), true);
                for (i, r) in range.rows().enumerate() {
                    let cells: Vec<String> = r.iter().map(cell_text).collect();
                    shape.row(v, start_row + i as u32 + 1, &cells)?;
                }
            }
            if ranges.is_empty() {
                return Err(FileError::NoSheet.into());
            }
            return Ok(());
        }
    }
    Ok(())
}

/// The workbook reader for the container: OLE is XLS; a zip is XLSX, else ODS (calamine's own
/// detection needs a reader it can clone, and ingest reads from a file).
fn open_book<R: Read + Seek>(r: &mut R, ole: bool) -> Result<Sheets<&mut R>, FileError> {
    use calamine::{Ods, Xls, Xlsx};
    if ole {
        return Xls::new(r).map(Sheets::Xls).map_err(|e| FileError::Corrupt { format: "XLS", detail: e.to_string() });
    }
    // The zip's directory (read from its end, cheaply) says which kind of workbook it is and
    // what it unzips to.
    let mut zip = zip::ZipArchive::new(&mut *r).map_err(|e| FileError::Corrupt { format: "XLSX", detail: e.to_string() })?;
    check_declared_size(&mut zip, MAX_UNZIPPED_BYTES)?;
    let names: Vec<String> = zip.file_names().filter_map(|n| n.ok().map(|n| n.into_owned())).collect();
    let has = |n: &str| names.iter().any(|x| x.eq_ignore_ascii_case(n));
    check_zip_parts(&mut zip, !has("xl/workbook.xml") && has("content.xml"))?;
    drop(zip);
    r.rewind().map_err(|e| FileError::Corrupt { format: "XLSX", detail: e.to_string() })?;
    if has("xl/workbook.bin") {
        return Err(FileError::UnknownFormat("XLSB binary workbooks are not supported; save as XLSX".into()));
    }
    if !has("xl/workbook.xml") && has("content.xml") {
        return Ods::new(r).map(Sheets::Ods).map_err(|e| FileError::Corrupt { format: "ODS", detail: e.to_string() });
    }
    Xlsx::new(r).map(Sheets::Xlsx).map_err(|e| FileError::Corrupt { format: "XLSX", detail: e.to_string() })
}

/// The spreadsheet readers parse hostile binary structures and a malformed file can make them
/// panic (fuzzing found an XLS whose sector table sent calamine out of bounds). For the user that
/// is a damaged file, not a failed upload retried until it lands in a dead-letter queue.
fn guarded<T>(format: &'static str, f: impl FnOnce() -> Result<T, FileError>) -> Result<T, FileError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(FileError::Corrupt { format, detail: "its internal structure is damaged".into() }))
}

/// Spreadsheet cell -> text as the user typed it: identifiers stay integers, dates become ISO dates,
/// formulas give their cached value.
pub fn cell_text(cell: &Data) -> String {
    match cell {
        Data::Empty => String::new(),
        Data::String(s) => s.clone(),
        Data::Int(i) => i.to_string(),
        Data::Float(f) => float_text(*f),
        Data::Bool(b) => if *b { "TRUE" } else { "FALSE" }.to_string(),
        Data::DateTime(dt) => match dt.as_datetime() {
            Some(d) if dt.is_datetime() => {
                if d.time() == chrono::NaiveTime::MIN {
                    d.date().to_string()
                } else {
                    d.format("%Y-%m-%d %H:%M:%S").to_string()
                }
            }
            _ => float_text(dt.as_f64()),
        },
        Data::DateTimeIso(s) | Data::DurationIso(s) => s.strip_suffix("T00:00:00").unwrap_or(s).to_string(),
        Data::Error(e) => format!("#{e:?}"),
    }
}

/// A cell of the XLSX row being read: a shared string borrowed from the workbook's table (most
/// cells of a file Excel saved; not copied), or text in a buffer kept from row to row.
#[derive(Default, Clone)]
struct Slot<'a> {
    shared: Option<&'a str>,
    own: String,
}

impl Slot<'_> {
    fn clear(&mut self) {
        self.shared = None;
        self.own.clear();
    }
}

impl AsRef<str> for Slot<'_> {
    fn as_ref(&self) -> &str {
        self.shared.unwrap_or(&self.own)
    }
}

/// Same as `cell_text`, for the streaming reader's cells: text is borrowed, not copied.
fn cell_ref_text<'c>(cell: &'c DataRef<'_>) -> Cow<'c, str> {
    match cell {
        DataRef::String(s) => Cow::Borrowed(s),
        DataRef::SharedString(s) => Cow::Borrowed(s),
        other => Cow::Owned(cell_text(&Data::from(other.clone()))),
    }
}

fn float_text(f: f64) -> String {
    // Phone numbers and ids typed into a spreadsheet arrive as floats: 4155550100.0 -> "4155550100".
    if f.fract() == 0.0 && f.abs() < 1e15 { format!("{}", f as i64) } else { format!("{f}") }
}

/// Pass 1 reads the file in buffers of this size.
const SCAN_BUFFER: usize = 256 * 1024;
/// The start of a text file that format sniffing looks at (header line, binary and HTML checks).
const HEAD_BYTES: usize = 64 * 1024;

fn read_text<R: Read + Seek, V: TableVisitor>(r: &mut R, v: &mut V, buffer: usize) -> Result<(), ReadError<V::Stop>> {
    // The byte-order mark, and for the NUL message whether the text starts like UTF-16.
    let mut raw_head = [0u8; 4];
    let n = read_up_to(r, &mut raw_head)?;
    let raw_head = &raw_head[..n];
    if let Some((enc, bom_len)) = Encoding::for_bom(raw_head)
        && enc != UTF_8
    {
        // UTF-16 ("Unicode Text" from Excel) is rare and small: decoded in memory, then read as UTF-8.
        r.seek(SeekFrom::Start(bom_len as u64))?;
        let mut raw = Vec::new();
        r.read_to_end(&mut raw)?;
        let text = enc.decode_without_bom_handling(&raw).0.into_owned();
        drop(raw);
        return read_text_from(&mut Cursor::new(text.as_bytes()), 0, raw_head, Some(enc.name()), v, buffer);
    }
    let bom_len = if raw_head.starts_with(b"\xEF\xBB\xBF") { 3 } else { 0 };
    read_text_from(r, bom_len, raw_head, None, v, buffer)
}

/// Delimited text from `start` on: UTF-8 (or, given `label`, already decoded to UTF-8), else
/// Windows-1252. `raw_head` is the file's first bytes as stored.
fn read_text_from<R: Read + Seek, V: TableVisitor>(
    r: &mut R,
    start: u64,
    raw_head: &[u8],
    label: Option<&'static str>,
    v: &mut V,
    buffer: usize,
) -> Result<(), ReadError<V::Stop>> {
    r.seek(SeekFrom::Start(start))?;
    let mut head = vec![0u8; HEAD_BYTES];
    let n = read_up_to(r, &mut head)?;
    head.truncate(n);
    // The header line decides the delimiter; quotes and delimiters are ASCII in every encoding read here.
    let delimiter = sniff_delimiter(&String::from_utf8_lossy(&head));

    // Pass 1: the whole file, without keeping it: emptiness, NUL bytes, UTF-8 validity, quotes.
    r.seek(SeekFrom::Start(start))?;
    let mut scan = Scan::new(delimiter);
    let mut buf = vec![0u8; buffer.max(1)];
    loop {
        let k = read_up_to(r, &mut buf)?;
        if k == 0 {
            break;
        }
        scan.feed(&buf[..k]);
    }
    drop(buf);
    if !scan.content {
        return Err(FileError::Empty.into());
    }
    let utf8 = label.is_some() || start == 3 || scan.utf8.valid();
    // A UTF-8 byte-order mark says UTF-8 even when some bytes are not: those become U+FFFD.
    let lossy = start == 3 && !scan.utf8.valid();
    let encoding = label.unwrap_or(if utf8 { UTF_8.name() } else { WINDOWS_1252.name() });
    let head_text: Cow<'_, str> = if utf8 { String::from_utf8_lossy(&head) } else { WINDOWS_1252.decode_without_bom_handling(&head).0 };
    if let Some(at) = scan.nul_at {
        let line = line_of(r, start, at)?;
        let utf16 = raw_head.len() > 3 && (raw_head[1] == 0 || raw_head[0] == 0);
        let hint = if utf16 { "; it looks like UTF-16 text without a byte-order mark: save it as CSV UTF-8" } else { "" };
        return Err(
            FileError::UnknownFormat(format!("it contains NUL bytes (first on line {line}), which a text roster never has{hint}")).into()
        );
    }
    if looks_binary(&head_text) {
        return Err(FileError::UnknownFormat("the content is binary, not text".into()).into());
    }
    if head_text.trim_start().starts_with('<') {
        return Err(FileError::UnknownFormat("it looks like HTML or XML; export the sheet as CSV or XLSX instead".into()).into());
    }
    let format = if delimiter == b'\t' { Format::Tsv } else { Format::Csv };
    if let Some(at) = scan.unclosed() {
        let line = line_of(r, start, at)?;
        return Err(FileError::Corrupt {
            format: format.label(),
            detail: format!(
                "a double quote opened on line {line} is never closed, so every row after it would be swallowed into one cell; close or remove that quote"
            ),
        }
        .into());
    }

    // Pass 2: records, each field decoded on its own (no decoded copy of the file exists).
    r.seek(SeekFrom::Start(start))?;
    let proto = TableHead {
        format,
        encoding: Some(encoding.to_string()),
        delimiter: Some(delimiter as char),
        sheet: None,
        header_row: 0,
        row_offset: 0,
        user_type: None,
        headers: Vec::new(),
        several: false,
        rows_hint: Some((scan.newlines + 1).min(MAX_ROWS_HINT as u64) as u32),
    };
    let mut shape = Shape::new(proto, false);
    let mut reader =
        csv::ReaderBuilder::new().has_headers(false).flexible(true).delimiter(delimiter).buffer_capacity(1 << 16).from_reader(r);
    let mut record = csv::ByteRecord::new();
    let mut number = 0u32;
    let corrupt = |e: csv::Error| FileError::Corrupt { format: format.label(), detail: e.to_string() };
    while reader.read_byte_record(&mut record).map_err(corrupt)? {
        number += 1;
        if utf8 && !lossy {
            // Pass 1 found the whole file valid: one check per record, fields borrowed as they are.
            match csv::StringRecord::from_byte_record(std::mem::take(&mut record)) {
                Ok(text) => {
                    let cells: Vec<&str> = text.iter().collect();
                    shape.row(v, number, &cells)?;
                    drop(cells);
                    record = text.into_byte_record();
                    continue;
                }
                Err(e) => record = e.into_byte_record(),
            }
        }
        let decoded: Vec<Cow<'_, str>> =
            record.iter().map(|f| if utf8 { String::from_utf8_lossy(f) } else { WINDOWS_1252.decode_without_bom_handling(f).0 }).collect();
        shape.row(v, number, &decoded)?;
    }
    if shape.started() { Ok(()) } else { Err(FileError::Empty.into()) }
}

/// The line (1-based) of byte `at` of the text starting at `start`: counted again only when a
/// message needs it.
fn line_of<R: Read + Seek>(r: &mut R, start: u64, at: u64) -> std::io::Result<usize> {
    r.seek(SeekFrom::Start(start))?;
    let mut lines = 1;
    let mut left = at;
    let mut buf = vec![0u8; 1 << 16];
    while left > 0 {
        let want = buf.len().min(left as usize);
        let k = read_up_to(r, &mut buf[..want])?;
        if k == 0 {
            break;
        }
        lines += memchr::memchr_iter(b'\n', &buf[..k]).count();
        left -= k as u64;
    }
    Ok(lines)
}

/// Pass 1 over delimited text, buffer by buffer: whether it has any content, where its first NUL
/// is, whether it is valid UTF-8, and where a quote opened that never closes (RFC 4180 quoting: a
/// quote opens a field only at its start; `""` inside a quoted field is an escaped quote).
struct Scan {
    delimiter: u8,
    offset: u64,
    content: bool,
    nul_at: Option<u64>,
    utf8: Utf8Check,
    quoted: bool,
    /// Inside a quoted field, the previous buffer ended on a quote: escaped or closing.
    quote_pending: bool,
    /// Last byte of the previous buffer (`None` at the start of the text: a field start).
    prev: Option<u8>,
    opened_at: u64,
    /// Line breaks: an upper bound of the records, to size the validator's key table once.
    newlines: u64,
}

impl Scan {
    fn new(delimiter: u8) -> Self {
        Scan {
            delimiter,
            offset: 0,
            content: false,
            nul_at: None,
            utf8: Utf8Check::default(),
            quoted: false,
            quote_pending: false,
            prev: None,
            opened_at: 0,
            newlines: 0,
        }
    }

    fn feed(&mut self, buf: &[u8]) {
        if self.nul_at.is_none()
            && let Some(i) = memchr::memchr(0, buf)
        {
            self.nul_at = Some(self.offset + i as u64);
        }
        if !self.content {
            self.content = buf.iter().any(|b| !b.is_ascii_whitespace());
        }
        self.utf8.feed(buf);
        self.newlines += memchr::memchr_iter(b'\n', buf).count() as u64;
        let mut i = 0;
        if self.quote_pending {
            self.quote_pending = false;
            if buf[0] == b'"' {
                i = 1; // "" : an escaped quote, still inside the field
            } else {
                self.quoted = false;
            }
        }
        while i < buf.len() {
            let Some(j) = memchr::memchr(b'"', &buf[i..]) else { break };
            let q = i + j;
            if self.quoted {
                if q + 1 == buf.len() {
                    self.quote_pending = true;
                    i = buf.len();
                } else if buf[q + 1] == b'"' {
                    i = q + 2;
                } else {
                    self.quoted = false;
                    i = q + 1;
                }
            } else {
                let before = if q == 0 { self.prev } else { Some(buf[q - 1]) };
                if before.is_none_or(|b| b == b'\n' || b == self.delimiter) {
                    self.quoted = true;
                    self.opened_at = self.offset + q as u64;
                }
                i = q + 1;
            }
        }
        self.prev = buf.last().copied();
        self.offset += buf.len() as u64;
    }

    /// Where the quote that never closes was opened.
    fn unclosed(&self) -> Option<u64> {
        (self.quoted && !self.quote_pending).then_some(self.opened_at)
    }
}

/// UTF-8 validity of a stream read in pieces: a character split between two buffers is carried over.
#[derive(Default)]
struct Utf8Check {
    invalid: bool,
    carry: Vec<u8>,
}

impl Utf8Check {
    fn feed(&mut self, mut buf: &[u8]) {
        if self.invalid {
            return;
        }
        if !self.carry.is_empty() {
            let take = buf.len().min(4 - self.carry.len());
            let mut joined = std::mem::take(&mut self.carry);
            let had = joined.len();
            joined.extend_from_slice(&buf[..take]);
            match std::str::from_utf8(&joined) {
                Ok(_) => buf = &buf[take..],
                Err(e) if e.valid_up_to() >= had => buf = &buf[e.valid_up_to() - had..],
                Err(e) if e.error_len().is_none() && take == buf.len() => {
                    self.carry = joined; // still incomplete: the buffer was tiny
                    return;
                }
                Err(_) => {
                    self.invalid = true;
                    return;
                }
            }
        }
        if let Err(e) = std::str::from_utf8(buf) {
            if e.error_len().is_none() {
                self.carry = buf[e.valid_up_to()..].to_vec();
            } else {
                self.invalid = true;
            }
        }
    }

    fn valid(&self) -> bool {
        !self.invalid && self.carry.is_empty()
    }
}

/// Many control characters: not a text roster, whatever its name says.
fn looks_binary(text: &str) -> bool {
    let sample: Vec<char> = text.chars().take(8192).collect();
    let control = sample.iter().filter(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')).count();
    control * 20 > sample.len().max(1)
}

/// The delimiter seen most often outside quotes on the first non-empty line (the header).
fn sniff_delimiter(text: &str) -> u8 {
    // The header record, from its first non-blank line to the first line break outside quotes: a
    // quoted header cell may hold a line break (fuzzing found a result file whose header did, read
    // back as one column because only its first line was looked at).
    let start: usize = text.split_inclusive('\n').take_while(|l| l.trim().is_empty()).map(str::len).sum();
    let mut counts = [(b',', 0usize), (b';', 0), (b'\t', 0), (b'|', 0)];
    let mut quoted = false;
    for b in text.as_bytes()[start..].iter().copied() {
        if b == b'"' {
            quoted = !quoted;
        } else if b == b'\n' && !quoted {
            break;
        } else if !quoted && let Some(c) = counts.iter_mut().find(|(d, _)| *d == b) {
            c.1 += 1;
        }
    }
    // Ties keep the earlier (more common) delimiter: max_by_key returns the last maximum, so reverse.
    counts.iter().rev().max_by_key(|(_, n)| *n).filter(|(_, n)| *n > 0).map(|(d, _)| *d).unwrap_or(b',')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cells(t: &Table) -> Vec<Vec<&str>> {
        t.rows.iter().map(|(_, r)| r.iter().map(String::as_str).collect()).collect()
    }

    #[test]
    fn csv_with_utf8_bom_and_crlf() {
        let t = decode(b"\xEF\xBB\xBFEmail,First Name\r\nann@x.com,Ann\r\n").unwrap();
        assert_eq!(t.format, Format::Csv);
        assert_eq!(t.headers, vec!["Email", "First Name"]);
        assert_eq!(cells(&t), vec![vec!["ann@x.com", "Ann"]]);
        assert_eq!(t.rows[0].0, 2);
    }

    #[test]
    fn semicolon_and_pipe_and_tab_are_sniffed() {
        assert_eq!(decode(b"Email;Org\na@x.com;A, Inc\n").unwrap().delimiter, Some(';'));
        assert_eq!(decode(b"Email|Org\na@x.com|A\n").unwrap().delimiter, Some('|'));
        let t = decode(b"Email\tOrg\na@x.com\tA\n").unwrap();
        assert_eq!((t.format, cells(&t)), (Format::Tsv, vec![vec!["a@x.com", "A"]]));
    }

    #[test]
    fn a_line_break_inside_a_quoted_header_cell_does_not_fool_the_sniffer() {
        let t = decode(b"\"First\nName\";Email;Role\nAnn;ann@x.com;Learner\n").unwrap();
        assert_eq!(t.delimiter, Some(';'));
        assert_eq!(t.headers, vec!["First\nName", "Email", "Role"]);
        assert_eq!(cells(&t), vec![vec!["Ann", "ann@x.com", "Learner"]]);
        let t = decode(b"\r\n\r\n  \r\nEmail|Role\r\nann@x.com|Learner\r\n").unwrap();
        assert_eq!(t.delimiter, Some('|'), "leading blank lines skipped, CRLF too");
    }

    #[test]
    fn quoted_delimiters_in_the_header_do_not_fool_the_sniffer() {
        let t = decode(b"\"Name, full\";Email;Org\nA;a@x.com;O\n").unwrap();
        assert_eq!(t.delimiter, Some(';'));
    }

    #[test]
    fn utf16le_unicode_text_from_excel() {
        let text = "Email\tFirstName\r\nzoe@x.com\tZo\u{eb}\r\n";
        let mut bytes = vec![0xFF, 0xFE];
        bytes.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
        let t = decode(&bytes).unwrap();
        assert_eq!(t.encoding.as_deref(), Some("UTF-16LE"));
        assert_eq!(cells(&t), vec![vec!["zoe@x.com", "Zoë"]]);
    }

    #[test]
    fn windows_1252_when_not_utf8() {
        let t = decode(b"Email,FirstName\nrene@x.com,Ren\xe9\n").unwrap();
        assert_eq!(t.encoding.as_deref(), Some("windows-1252"));
        assert_eq!(cells(&t)[0][1], "René");
    }

    #[test]
    fn an_unclosed_quote_is_refused_naming_its_line_instead_of_swallowing_rows() {
        let err = decode(b"Email,Name\na@x.com,\"Ann\nb@x.com,Bob\nc@x.com,Cy\n").unwrap_err();
        assert!(err.to_string().contains("a double quote opened on line 2 is never closed"), "{err}");
        // Quotes that close, escaped quotes and quotes inside unquoted fields are fine.
        let t = decode(b"Email,Name\na@x.com,\"Ann \"\"The Boss\"\", Jr\"\nb@x.com,O\"Neil\n").unwrap();
        assert_eq!(t.rows.len(), 2);
        assert_eq!(t.rows[0].1[1], "Ann \"The Boss\", Jr");
    }

    #[test]
    fn nul_bytes_and_html_are_refused_with_what_to_do() {
        let err = decode(b"Email,Name\na@x.com,An\0n\n").unwrap_err().to_string();
        assert!(err.contains("NUL bytes (first on line 2)"), "{err}");
        let utf16_no_bom: Vec<u8> = "Email\r\na@x.com\r\n".encode_utf16().flat_map(u16::to_le_bytes).collect();
        assert!(decode(&utf16_no_bom).unwrap_err().to_string().contains("UTF-16 text without a byte-order mark"));
        assert!(decode(b"<html><table><tr><td>Email</td></tr></table></html>").unwrap_err().to_string().contains("HTML or XML"));
    }

    /// The text reader with pass 1 reading `buffer` bytes at a time.
    fn read_with(bytes: &[u8], buffer: usize) -> Result<Vec<Table>, String> {
        let mut tables = Collect::default();
        match read_text(&mut Cursor::new(bytes), &mut tables, buffer) {
            Ok(()) => Ok(tables.0),
            Err(ReadError::File(e)) => Err(e.to_string()),
            Err(other) => Err(format!("{other:?}")),
        }
    }

    #[test]
    fn text_reads_the_same_whatever_the_buffer_boundaries_split() {
        let cases: Vec<Vec<u8>> = vec![
            "Email,Name\nzoë@x.com,\"Zoë \"\"Z\"\", 😀\"\nb@x.com,\"multi\nline\"\n".into(),
            "\u{feff}Email;Name\r\na@x.com;\"\"\"q\"\"\"\r\n".into(),
            b"Email,Name\nrene@x.com,Ren\xe9\n".to_vec(),
            b"\xEF\xBB\xBFEmail,Name\na@x.com,bad \xff byte\n".to_vec(),
            b"Email,Name\na@x.com,\"never closed\nb@x.com,B\n".to_vec(),
            b"Email,Name\na@x.com,\"closed at the very end\"".to_vec(),
            b"Email,Name\na@x.com,\"\"\"".to_vec(),
            b"Email,Name\na@x.com,x\"y\nb@x.com,\"\"\n".to_vec(),
            b"Email\n\na@x.com\0\n".to_vec(),
            b"Email,Name\na@x.com,\xe2\x82".to_vec(),
        ];
        for bytes in &cases {
            let whole = read_with(bytes, 1 << 20);
            for buffer in 1..=9 {
                assert_eq!(read_with(bytes, buffer), whole, "buffer {buffer}, input {:?}", String::from_utf8_lossy(bytes));
            }
        }
        let t = read_with(&cases[0], 1).unwrap();
        assert_eq!(t[0].rows[0].1, vec!["zoë@x.com", "Zoë \"Z\", 😀"]);
        assert_eq!(t[0].rows[1].1[1], "multi\nline");
        assert_eq!(read_with(&cases[2], 3).unwrap()[0].encoding.as_deref(), Some("windows-1252"));
        assert_eq!(read_with(&cases[3], 3).unwrap()[0].rows[0].1[1], "bad \u{fffd} byte");
        assert!(read_with(&cases[4], 2).unwrap_err().contains("opened on line 2 is never closed"));
        assert_eq!(read_with(&cases[5], 4).unwrap()[0].rows[0].1[1], "closed at the very end");
        assert!(read_with(&cases[8], 5).unwrap_err().contains("NUL bytes (first on line 3)"));
        assert_eq!(read_with(&cases[9], 2).unwrap()[0].encoding.as_deref(), Some("windows-1252"), "a cut-off UTF-8 character at the end");
    }

    #[test]
    fn binary_garbage_named_csv_is_refused() {
        let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
        assert!(matches!(decode(&garbage), Err(FileError::UnknownFormat(_))));
    }

    #[test]
    fn empty_and_whitespace_files_are_empty() {
        assert_eq!(decode(b""), Err(FileError::Empty));
        assert_eq!(decode(b"  \r\n\n"), Err(FileError::Empty));
    }

    #[test]
    fn trailing_empty_rows_and_columns_are_ignored() {
        let t = decode(b"Email,FirstName,,\na@x.com,A,,\n,,,\n\n").unwrap();
        assert_eq!(t.headers, vec!["Email", "FirstName"]);
        assert_eq!(cells(&t), vec![vec!["a@x.com", "A"]]);
    }

    #[test]
    fn truncated_zip_is_a_corrupt_spreadsheet() {
        let err = decode(b"PK\x03\x04\x14\x00\x00\x00garbage").unwrap_err();
        assert!(matches!(err, FileError::Corrupt { .. }), "{err:?}");
    }

    #[test]
    fn a_zip_bomb_is_refused_before_it_is_unpacked() {
        use std::io::Write;
        // An XLSX-shaped zip whose sheet inflates 64 MB of zeros from ~64 KB: over a 16 MB cap.
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        w.start_file("[Content_Types].xml", opts).unwrap();
        w.write_all(b"<Types/>").unwrap();
        w.start_file("xl/worksheets/sheet1.xml", opts).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            w.write_all(&zeros).unwrap();
        }
        let bytes = w.finish().unwrap().into_inner();
        assert!(bytes.len() < 1 << 20, "{}", bytes.len());
        let mut zip = zip::ZipArchive::new(Cursor::new(&bytes)).unwrap();
        assert_eq!(check_declared_size(&mut zip, 16 << 20), Err(FileError::TooBigUnzipped { limit_mb: 16 }));
        assert_eq!(check_declared_size(&mut zip, 128 << 20), Ok(()));
    }

    #[test]
    fn float_cells_that_are_identifiers_stay_integers() {
        assert_eq!(cell_text(&Data::Float(4155550100.0)), "4155550100");
        assert_eq!(cell_text(&Data::Float(2.5)), "2.5");
        assert_eq!(cell_text(&Data::Int(42)), "42");
    }

    #[test]
    fn instruction_sheets_are_recognised() {
        assert!(is_instruction_sheet("Read Me"));
        assert!(is_instruction_sheet("DEFINITIONS"));
        assert!(!is_instruction_sheet("Students"));
    }
}

#[cfg(test)]
mod fixture_tests {
    use super::guards::xls_dense_cells;
    use super::*;

    fn fixture(name: &str) -> String {
        format!("{}/../tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    fn read(name: &str) -> Table {
        decode(&std::fs::read(fixture(name)).expect("fixture")).expect("decodes")
    }

    #[test]
    fn xls_fixture_reads_with_phone_as_integer_text() {
        let t = read("roster.xls");
        assert_eq!(t.format, Format::Xls);
        assert_eq!(t.headers[2], "Email");
        assert_eq!(t.rows.len(), 4);
        assert_eq!(t.rows[1].1[5], "4155550100");
        assert_eq!(t.rows[1].0, 3);
    }

    /// The workbook stream of an XLS file.
    fn workbook_stream(xls: &[u8]) -> Vec<u8> {
        let mut file = cfb::CompoundFile::open(Cursor::new(xls)).unwrap();
        let mut stream = Vec::new();
        file.open_stream("/Workbook").unwrap().read_to_end(&mut stream).unwrap();
        stream
    }

    #[test]
    fn xls_cells_are_counted_as_calamine_would_allocate_them() {
        let rec = |typ: u16, data: &[u8]| [&typ.to_le_bytes()[..], &(data.len() as u16).to_le_bytes(), data].concat();
        let cell = |typ: u16, row: u16, col: u16| rec(typ, &[&row.to_le_bytes()[..], &col.to_le_bytes(), &[0; 8]].concat());
        let sheet = |body: Vec<Vec<u8>>| [vec![rec(0x0809, &[0; 16])], body, vec![rec(0x000A, &[])]].concat().concat();
        // Globals naming sheets at the given offsets, then the sheets.
        let book = |sheets: &[Vec<u8>], named: &[usize]| {
            let globals_len = 20 + 15 * named.len() + 4;
            let starts: Vec<usize> = sheets.iter().scan(globals_len, |at, s| Some(std::mem::replace(at, *at + s.len()))).collect();
            let mut out = rec(0x0809, &[0; 16]);
            for &i in named {
                out.extend(rec(0x0085, &[&(starts[i] as u32).to_le_bytes()[..], &[0, 0], &[3, 0], b"Sh1"].concat()));
            }
            out.extend(rec(0x000A, &[]));
            assert_eq!(out.len(), globals_len);
            out.extend(sheets.concat());
            out
        };
        // Two values: the dense range between them.
        let spread = sheet(vec![cell(0x0203, 1, 1), cell(0x00FD, 100, 10)]);
        assert_eq!(xls_dense_cells(&book(std::slice::from_ref(&spread), &[0])), 100 * 10);
        // A formula counts as a value and a formula; DIMENSIONS are reserved as declared (BIFF8:
        // rows first..last+1 as u32, columns as u16).
        let dims =
            rec(0x0200, &[&0u32.to_le_bytes()[..], &1000u32.to_le_bytes(), &0u16.to_le_bytes(), &20u16.to_le_bytes(), &[0, 0]].concat());
        let formula = sheet(vec![dims, cell(0x0006, 0, 0), cell(0x0006, 9, 9)]);
        assert_eq!(xls_dense_cells(&book(std::slice::from_ref(&formula), &[0])), 1000 * 20 + 100 + 100);
        // A far cell in an embedded chart (a nested substream) is not the sheet's.
        let chart = [rec(0x0809, &[0; 16]), cell(0x0203, 65535, 255), rec(0x000A, &[])].concat();
        let nested = sheet(vec![cell(0x0203, 0, 0), chart, cell(0x0203, 1, 1)]);
        assert_eq!(xls_dense_cells(&book(std::slice::from_ref(&nested), &[0])), 4);
        // The same far-flung sheet named twice is allocated twice, so it counts twice.
        let far = sheet(vec![cell(0x0203, 0, 0), cell(0x027E, 65535, 255)]);
        assert_eq!(xls_dense_cells(&book(std::slice::from_ref(&far), &[0])), 65536 * 256);
        assert_eq!(xls_dense_cells(&book(std::slice::from_ref(&far), &[0, 0])), 2 * 65536 * 256);
        // Truncated or nonsense streams count what is whole, without panicking.
        let whole = book(std::slice::from_ref(&far), &[0]);
        for cut in [0, 3, 10, whole.len() / 2, whole.len() - 1] {
            assert!(xls_dense_cells(&whole[..cut]) <= 65536 * 256);
        }
        // A real file counts its real cells.
        let real = xls_dense_cells(&workbook_stream(&std::fs::read(fixture("roster.xls")).unwrap()));
        assert!((10..1000).contains(&real), "{real}");
    }

    #[test]
    fn ods_fixture_reads_with_phone_as_integer_text() {
        let t = read("roster.ods");
        assert_eq!(t.format, Format::Ods);
        assert_eq!(t.rows.len(), 4);
        assert_eq!(t.rows[1].1[5], "4155550100");
        assert_eq!(t.sheet.as_deref(), Some("Roster"));
    }
}

#[cfg(test)]
mod spreadsheet_cell_tests {
    use super::*;
    use rust_xlsxwriter::{ExcelDateTime, Format as XFormat, Formula, Workbook};

    #[test]
    fn xlsx_dates_become_iso_dates_formulas_give_cached_values_and_ids_stay_integers() {
        let mut wb = Workbook::new();
        let ws = wb.add_worksheet();
        for (c, h) in ["Email", "ScheduledDate", "Phone", "Score"].iter().enumerate() {
            ws.write_string(0, c as u16, *h).unwrap();
        }
        ws.write_string(1, 0, "ann@x.com").unwrap();
        let date = ExcelDateTime::from_ymd(2026, 3, 1).unwrap();
        ws.write_datetime_with_format(1, 1, &date, &XFormat::new().set_num_format("dd/mm/yyyy")).unwrap();
        ws.write_number(1, 2, 4155550100.0).unwrap();
        ws.write_formula(1, 3, Formula::new("=40+2").set_result("42")).unwrap();
        // Trailing empty rows and a formatted but empty column are ignored.
        ws.write_string(5, 0, "").unwrap();
        let t = decode(&wb.save_to_buffer().unwrap()).unwrap();
        assert_eq!(t.format, Format::Xlsx);
        assert_eq!(t.headers, vec!["Email", "ScheduledDate", "Phone", "Score"]);
        assert_eq!(t.rows, vec![(2, vec!["ann@x.com".to_string(), "2026-03-01".into(), "4155550100".into(), "42".into()])]);
    }

    #[test]
    fn shared_strings_and_inline_strings_read_the_same() {
        let fill = |ws: &mut rust_xlsxwriter::Worksheet| {
            for (c, h) in ["Email", "First Name", "Phone", "Groups"].iter().enumerate() {
                ws.write_string(0, c as u16, *h).unwrap();
            }
            ws.write_string(1, 0, "ann@x.com").unwrap();
            ws.write_string(1, 1, " Ann ").unwrap();
            ws.write_number(1, 2, 4155550100.0).unwrap();
            ws.write_string(1, 3, "a;b").unwrap();
            // The same text again (one shared string), an empty string, a gap row.
            ws.write_string(2, 0, "bob@x.com").unwrap();
            ws.write_string(2, 1, "").unwrap();
            ws.write_string(2, 3, "a;b").unwrap();
            ws.write_string(4, 2, "+44 20 7946 0000").unwrap();
        };
        let mut shared = Workbook::new();
        fill(shared.add_worksheet());
        let shared = shared.save_to_buffer().unwrap();
        let mut inline = Workbook::new();
        fill(inline.add_worksheet_with_constant_memory().unwrap());
        let inline = inline.save_to_buffer().unwrap();
        let part = |xlsx: &[u8], name: &str| {
            let mut zip = zip::ZipArchive::new(Cursor::new(xlsx)).unwrap();
            let mut text = String::new();
            zip.by_name(name).map(|mut f| f.read_to_string(&mut text).unwrap()).ok().map(|_| text)
        };
        assert!(part(&shared, "xl/sharedStrings.xml").is_some_and(|t| t.contains("ann@x.com")));
        assert!(part(&inline, "xl/worksheets/sheet1.xml").is_some_and(|t| t.contains("inlineStr")));
        let s = |v: &[&str]| v.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        let expected = vec![
            (2, s(&["ann@x.com", " Ann ", "4155550100", "a;b"])),
            (3, s(&["bob@x.com", "", "", "a;b"])),
            (4, vec![]),
            (5, s(&["", "", "+44 20 7946 0000"])),
        ];
        for xlsx in [&shared, &inline] {
            let t = decode(xlsx).unwrap();
            assert_eq!(t.headers, vec!["Email", "First Name", "Phone", "Groups"]);
            assert_eq!(t.rows, expected);
        }
    }

    #[test]
    fn a_sheet_starting_below_and_right_keeps_row_numbers_gaps_and_columns_as_a_range_would() {
        let mut wb = Workbook::new();
        let ws = wb.add_worksheet();
        ws.write_string(2, 1, "Email").unwrap();
        ws.write_string(2, 2, "Department").unwrap();
        ws.write_string(3, 1, "a@x.com").unwrap();
        ws.write_string(5, 2, "Sales").unwrap();
        ws.write_string(7, 1, "").unwrap(); // styled, empty: not a row
        let t = decode(&wb.save_to_buffer().unwrap()).unwrap();
        assert_eq!((t.header_row, t.headers.clone()), (3, vec!["Email".to_string(), "Department".into()]));
        assert_eq!(t.rows, vec![(4, vec!["a@x.com".to_string()]), (5, vec![]), (6, vec!["".to_string(), "Sales".into()])]);
    }

    /// Rewrite one part of a zip (an XLSX) with `edit`.
    pub(super) fn edit_part(xlsx: &[u8], part: &str, edit: impl Fn(String) -> String) -> Vec<u8> {
        use std::io::Write;
        let mut src = zip::ZipArchive::new(Cursor::new(xlsx)).unwrap();
        let mut out = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for i in 0..src.len() {
            let mut f = src.by_index(i).unwrap();
            let name = f.name().unwrap().to_string();
            let mut body = Vec::new();
            f.read_to_end(&mut body).unwrap();
            if name == part {
                body = edit(String::from_utf8(body).unwrap()).into_bytes();
            }
            out.start_file(name, zip::write::SimpleFileOptions::default()).unwrap();
            out.write_all(&body).unwrap();
        }
        out.finish().unwrap().into_inner()
    }

    /// Set the uncompressed size a zip declares for `part`, in its local header and its directory.
    fn declare_size(zip: &mut [u8], part: &str, size: u32) {
        let name = part.as_bytes();
        // (signature, offset of the size, offset of the name length, offset of the name)
        for (sig, at_size, at_len, at_name) in [(b"PK\x03\x04", 22, 26, 30), (b"PK\x01\x02", 24, 28, 46)] {
            let starts: Vec<usize> = zip.windows(4).enumerate().filter(|(_, w)| w == sig).map(|(i, _)| i).collect();
            for i in starts {
                let len = u16::from_le_bytes([zip[i + at_len], zip[i + at_len + 1]]) as usize;
                if zip.get(i + at_name..i + at_name + len) == Some(name) {
                    zip[i + at_size..i + at_size + 4].copy_from_slice(&size.to_le_bytes());
                }
            }
        }
    }

    #[test]
    fn a_zip_bomb_lying_about_its_sizes_is_refused_as_damaged_once_past_what_it_declared() {
        let mut wb = Workbook::new();
        let ws = wb.add_worksheet();
        ws.write_string(0, 0, "Email").unwrap();
        ws.write_string(1, 0, "a@x.com").unwrap();
        let honest = wb.save_to_buffer().unwrap();
        let sheet = "xl/worksheets/sheet1.xml";
        let declared = zip::ZipArchive::new(Cursor::new(&honest)).unwrap().by_name(sheet).unwrap().size() as u32;
        assert_eq!(decode(&honest).unwrap().rows, vec![(2, vec!["a@x.com".to_string()])]);
        // 32 MB of blanks inside the sheet's data, declared as the sheet's honest size.
        let mut bomb = edit_part(&honest, sheet, |xml| xml.replacen("<sheetData>", &format!("<sheetData>{}", " ".repeat(32 << 20)), 1));
        declare_size(&mut bomb, sheet, declared);
        let err = decode(&bomb).unwrap_err();
        assert!(matches!(&err, FileError::Corrupt { format: "XLSX", detail } if detail.contains("declared")), "{err:?}");
    }

    #[test]
    fn rows_stored_out_of_order_are_refused_naming_them_instead_of_being_misread() {
        let mut wb = Workbook::new();
        let ws = wb.add_worksheet();
        for (r, v) in ["Email", "a@x.com", "b@x.com"].iter().enumerate() {
            ws.write_string(r as u32, 0, *v).unwrap();
        }
        let bytes = wb.save_to_buffer().unwrap();
        assert_eq!(decode(&bytes).unwrap().rows.len(), 2);
        let swapped = edit_part(&bytes, "xl/worksheets/sheet1.xml", |xml| {
            let row = |n: u32| {
                let start = xml.find(&format!("<row r=\"{n}\"")).unwrap();
                let end = start + xml[start..].find("</row>").unwrap() + "</row>".len();
                (start, end)
            };
            let ((s2, e2), (s3, e3)) = (row(2), row(3));
            format!("{}{}{}{}{}", &xml[..s2], &xml[s3..e3], &xml[e2..s3], &xml[s2..e2], &xml[e3..])
        });
        let err = decode(&swapped).unwrap_err().to_string();
        assert!(err.contains("sheet \"Sheet1\" stores row 2 after row 3"), "{err}");
    }

    #[test]
    fn a_value_left_of_the_header_is_refused_naming_its_cell() {
        let mut wb = Workbook::new();
        let ws = wb.add_worksheet();
        ws.write_string(0, 1, "Email").unwrap();
        ws.write_string(1, 1, "a@x.com").unwrap();
        ws.write_string(2, 0, "stray").unwrap();
        let err = decode(&wb.save_to_buffer().unwrap()).unwrap_err().to_string();
        assert_eq!(
            err,
            "sheet \"Sheet1\": cell A3 has a value to the left of the header row, which starts in column B; move the value under a header or delete it"
        );
        assert_eq!(
            (column_name(0), column_name(25), column_name(26), column_name(701)),
            ("A".into(), "Z".into(), "AA".into(), "ZZ".into())
        );
    }

    #[test]
    fn every_data_sheet_is_read_with_the_user_type_its_name_gives() {
        let mut wb = Workbook::new();
        for (name, email) in [("Instructions", "how to fill"), ("Students", "kid@x.com"), ("Parents", "mom@x.com"), ("Empty", "")] {
            let ws = wb.add_worksheet();
            ws.set_name(name).unwrap();
            if !email.is_empty() {
                ws.write_string(0, 0, "Email").unwrap();
                ws.write_string(1, 0, email).unwrap();
            }
        }
        let tables = decode_all(&wb.save_to_buffer().unwrap()).unwrap();
        let summary: Vec<(Option<&str>, Option<&str>, u32)> =
            tables.iter().map(|t| (t.sheet.as_deref(), t.user_type.as_deref(), t.row_offset)).collect();
        assert_eq!(summary, vec![(Some("Students"), Some("Student"), 0), (Some("Parents"), Some("Parent"), SHEET_STRIDE)]);
        assert_eq!(user_type_of("sheet1"), None);
    }

    #[test]
    fn instruction_sheets_before_the_data_sheet_are_skipped() {
        let mut wb = Workbook::new();
        let readme = wb.add_worksheet();
        readme.set_name("Read Me").unwrap();
        readme.write_string(0, 0, "How to fill this template").unwrap();
        let data = wb.add_worksheet();
        data.set_name("Users").unwrap();
        data.write_string(0, 0, "Email").unwrap();
        data.write_string(1, 0, "ann@x.com").unwrap();
        let t = decode(&wb.save_to_buffer().unwrap()).unwrap();
        assert_eq!(t.sheet.as_deref(), Some("Users"));
        assert_eq!(t.headers, vec!["Email"]);
    }

    #[test]
    fn a_workbook_whose_sheets_hold_only_blanks_has_no_sheet_with_data_whether_one_sheet_or_several() {
        let blank = |ws: &mut rust_xlsxwriter::Worksheet| {
            ws.write_string(0, 0, "  ").unwrap();
            ws.write_string(3, 2, "").unwrap(); // styled, empty
        };
        let mut one = Workbook::new();
        let readme = one.add_worksheet();
        readme.set_name("Instructions").unwrap();
        readme.write_string(0, 0, "Email goes in column A").unwrap();
        blank(one.add_worksheet());
        assert_eq!(decode_all(&one.save_to_buffer().unwrap()), Err(FileError::NoSheet));

        let mut two = Workbook::new();
        blank(two.add_worksheet());
        blank(two.add_worksheet());
        assert_eq!(decode_all(&two.save_to_buffer().unwrap()), Err(FileError::NoSheet));
        // Blank sheets beside a data sheet: the data sheet alone, as the first table.
        let data = two.add_worksheet();
        data.write_string(0, 0, "Email").unwrap();
        data.write_string(1, 0, "ann@x.com").unwrap();
        let tables = decode_all(&two.save_to_buffer().unwrap()).unwrap();
        assert_eq!(tables.len(), 1);
        assert_eq!((tables[0].sheet.as_deref(), tables[0].row_offset), (Some("Sheet3"), 0));
    }
}

#[cfg(test)]
mod grid_tests {
    use super::*;
    use rust_xlsxwriter::Workbook;

    /// A real workbook whose second row also holds `cell` (an `<c r=...>` element) at its end.
    fn with_cell(reference: &str) -> Vec<u8> {
        let mut wb = Workbook::new();
        let ws = wb.add_worksheet();
        ws.set_name("Roster").unwrap();
        ws.write_string(0, 0, "Email").unwrap();
        ws.write_string(1, 0, "ann@x.com").unwrap();
        super::spreadsheet_cell_tests::edit_part(&wb.save_to_buffer().unwrap(), "xl/worksheets/sheet1.xml", |mut body| {
            let at = body.rfind("</row>").unwrap();
            body.insert_str(at, &format!(r#"<c r="{reference}" t="inlineStr"><is><t>far</t></is></c>"#));
            body
        })
    }

    #[test]
    fn the_last_cell_of_excels_grid_is_read_and_one_past_it_is_refused_naming_it() {
        let t = decode(&with_cell("XFD2")).unwrap();
        assert_eq!((t.headers.len(), t.rows[0].1.len()), (1, 16_384), "the last column is read");
        assert_eq!(t.rows[0].1[16_383], "far");
        for (reference, named) in [("XFE2", "XFE2"), ("A1048577", "A1048577"), ("ZZZZZZ2", "ZZZZZZ2")] {
            let err = decode(&with_cell(reference)).unwrap_err();
            assert_eq!(err, FileError::OutsideGrid { sheet: "Roster".into(), cell: named.into() }, "{reference}");
            assert!(err.to_string().contains("1,048,576 rows by 16,384 columns"), "{err}");
        }
    }

    #[test]
    fn names_from_the_file_are_quoted_in_a_bounded_prefix() {
        assert_eq!(quoted("Roster"), "Roster");
        let long = "é".repeat(1000);
        let q = quoted(&long);
        assert_eq!(q.chars().count(), 65);
        assert!(q.ends_with('…'));
    }
}
