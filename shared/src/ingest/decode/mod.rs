//! Bytes -> a table of text cells. The format comes from the bytes, never from the file name.

use crate::wording::{quoted, thousands};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::io::{Cursor, Read, Seek};

pub mod archive;
mod guards;
mod hidden;
mod merges;
mod numfmt;
mod ods_indent;
mod ods_shown;
mod text;
mod workbook;
mod xls_shown;
pub use guards::{
    MAX_EMPTY_ROWS, MAX_EMPTY_RUN, MAX_ODS_DENSE_CELLS, MAX_SHARED_STRINGS, MAX_SHEET_COLUMNS, MAX_SHEET_ROWS, MAX_UNZIPPED_BYTES,
    MAX_XLS_DENSE_CELLS,
};
use guards::{check_declared_size, check_ole_container, check_zip_parts};
use text::*;
pub use workbook::cell_text;
use workbook::*;

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
    /// Position among the file's tables (0 for the first, and for text files).
    #[serde(default)]
    pub index: u32,
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
        "the workbook is protected with a password, so it cannot be read: open it, remove the password (in Excel: File > Info > Protect Workbook > Encrypt with Password, then clear it; in LibreOffice: File > Save As with \"Save with password\" unticked), save it and upload it again"
    )]
    Encrypted,
    #[error(
        "the workbook's sheets are all hidden ({sheets}), and hidden sheets are not read: unhide the roster sheet in your spreadsheet and upload the file again"
    )]
    OnlyHidden { sheets: String },
    #[error(
        "the workbook's only sheets ({sheets}) are not read: sheets named Read Me, Instructions, Definitions, Help, Notes, Lists, Lookups or Problems hold instructions, not rows. Rename the sheet that holds the roster (for example to Roster) and upload the file again"
    )]
    OnlyInstructions { sheets: String },
    #[error(
        "the {format} file's sheets have more than {} empty rows between rows of data (the first value after them is in cell {cell}): delete the empty rows, and any stray cell far below the data (Ctrl+End in Excel goes to the last one)",
        thousands(*limit)
    )]
    TooManyEmptyRows { format: &'static str, limit: u64, cell: String },
    #[error(
        "the workbook has more than {} ranges of cells merged down a column, more than a roster has: unmerge the cells (select all, then Merge & Center off) and save it again",
        thousands(*limit as u64)
    )]
    TooManyMerged { limit: usize },
    #[error(
        "the workbook holds more than {} formulas that were never calculated (a program wrote it without computing them): open it in Excel or LibreOffice, save it, and upload it again",
        thousands(*limit as u64)
    )]
    TooManyUncalculated { limit: usize },
    #[error(
        "sheet \"{sheet}\" has formulas saved without their results (the program that wrote it did not calculate them): open it in Excel or LibreOffice, save it, and upload it again"
    )]
    FormulasWithoutValues { sheet: String },
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
        "the ODS file's sheets hold {} cells, more than the {} an ODS file can have here (an ODS is read whole; XLSX and CSV files are read row by row): save it as XLSX or CSV, or split it",
        thousands(*cells),
        thousands(*limit)
    )]
    OdsTooLarge { cells: u64, limit: u64 },
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
    /// A zip of files (not a workbook): what is wrong with it, after "the zip file".
    #[error("the zip file {0}")]
    Archive(String),
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
    /// Position among the file's tables read (0 for the first, and for text files).
    pub index: u32,
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
    /// Sheets of a workbook to leave out, by name (before anything of them is read).
    fn skip_sheet(&self, _name: &str) -> bool {
        false
    }
    /// A hidden sheet of a workbook, not read (its rows are not what the spreadsheet shows).
    fn hidden_sheet(&mut self, _name: &str) {}
    /// What the reader did that the file's user should know (cells read from the merged range
    /// that covers them).
    fn warning(&mut self, _warning: String) {}
    fn table(&mut self, head: TableHead) -> Result<(), Self::Stop>;
    fn row<S: AsRef<str>>(&mut self, number: u32, cells: &[S]) -> Result<(), Self::Stop>;
}

/// What a formula cell reads as when its workbook was never calculated (`merges::XlsxScan`):
/// its saved value (0 or nothing) is not the formula's result. Validation fails a row whose
/// roster value it is; the result files show it where the formula was.
pub const NOT_CALCULATED: &str = "#NOT-CALCULATED!";

/// A zip read as a roster that is no workbook: only bundles (read before the table reader) are.
pub const NOT_A_WORKBOOK: &str = "is neither a workbook (XLSX, ODS) nor a OneRoster CSV bundle (a zip with manifest.csv): drop the CSV, XLSX, XLS or ODS file itself, or a OneRoster bundle";

const ZIP_MAGIC: &[u8] = b"PK\x03\x04";
const OLE_MAGIC: &[u8] = &[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];

/// A zipped (XLSX, ODS) or OLE (XLS) workbook, by its first bytes; anything else is read as text.
pub fn is_workbook(bytes: &[u8]) -> bool {
    bytes.starts_with(ZIP_MAGIC) || bytes.starts_with(OLE_MAGIC)
}

/// The first table of the file (the whole file for CSV/TSV; the first sheet with data of a workbook).
pub fn decode(bytes: &[u8]) -> Result<Table, FileError> {
    decode_all(bytes)?.into_iter().next().ok_or(FileError::NoSheet)
}

/// Every table of the file, held in memory: one for CSV/TSV; each sheet with data of a workbook.
pub fn decode_all(bytes: &[u8]) -> Result<Vec<Table>, FileError> {
    decode_all_with(bytes, |_| false)
}

/// As `decode_all`, leaving out the sheets `skip` names. The same reader as the streaming one.
pub fn decode_all_with(bytes: &[u8], skip: fn(&str) -> bool) -> Result<Vec<Table>, FileError> {
    decode_with_hidden(bytes, skip).map(|d| d.tables)
}

/// A file's tables, with the names of the hidden sheets left unread and the reader's warnings
/// (`TableVisitor::warning`).
pub struct Decoded {
    pub tables: Vec<Table>,
    pub hidden: Vec<String>,
    pub warnings: Vec<String>,
}

/// As `decode_all_with`, with what else the reader saw (`Decoded`).
pub fn decode_with_hidden(bytes: &[u8], skip: fn(&str) -> bool) -> Result<Decoded, FileError> {
    let mut tables = Collect { tables: Vec::new(), skip, hidden: Vec::new(), warnings: Vec::new() };
    match read(&mut Cursor::new(bytes), &mut tables) {
        Ok(()) => Ok(Decoded { tables: tables.tables, hidden: tables.hidden, warnings: tables.warnings }),
        Err(ReadError::File(e)) => Err(e),
        Err(ReadError::Io(e)) => Err(FileError::Corrupt { format: "roster", detail: e.to_string() }),
        Err(ReadError::Stopped(never)) => match never {},
    }
}

/// The visitor that keeps every table.
struct Collect {
    tables: Vec<Table>,
    skip: fn(&str) -> bool,
    hidden: Vec<String>,
    warnings: Vec<String>,
}

impl TableVisitor for Collect {
    type Stop = std::convert::Infallible;
    fn skip_sheet(&self, name: &str) -> bool {
        (self.skip)(name)
    }
    fn hidden_sheet(&mut self, name: &str) {
        self.hidden.push(name.to_string());
    }
    fn warning(&mut self, warning: String) {
        self.warnings.push(warning);
    }
    fn table(&mut self, h: TableHead) -> Result<(), Self::Stop> {
        self.tables.push(Table {
            format: h.format,
            encoding: h.encoding,
            delimiter: h.delimiter,
            sheet: h.sheet,
            header_row: h.header_row,
            index: h.index,
            headers: h.headers,
            rows: Vec::new(),
        });
        Ok(())
    }
    fn row<S: AsRef<str>>(&mut self, number: u32, cells: &[S]) -> Result<(), Self::Stop> {
        if let Some(t) = self.tables.last_mut() {
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
            index: self.index,
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
    if let Some(kind) = not_a_roster(&magic[..n]) {
        return Err(FileError::UnknownFormat(kind.into()).into());
    }
    if magic[..n].starts_with(ZIP_MAGIC) && matches!(archive::zip_kind(r), Ok(archive::ZipKind::Files(_))) {
        return Err(FileError::Archive(NOT_A_WORKBOOK.into()).into());
    }
    r.rewind()?;
    if is_workbook(&magic[..n]) { read_workbook(r, magic[..n].starts_with(OLE_MAGIC), v) } else { read_text(r, v, SCAN_BUFFER) }
}

/// Files people drop for a roster that are none, known by their first bytes: told what they are
/// (a gzip was "it contains NUL bytes"; a PDF "the required column Email is missing (the header
/// row has: "%PDF-1.4")").
fn not_a_roster(magic: &[u8]) -> Option<&'static str> {
    const COMPRESSED: &str =
        "it is a compressed archive (gzip, bzip2, xz, zstd, 7z or RAR): extract the roster file from it and upload that";
    let kinds: [(&[u8], &'static str); 8] = [
        (b"%PDF-", "it is a PDF document: export the roster from the spreadsheet it was printed from as CSV or XLSX, and upload that"),
        (b"\x1F\x8B", COMPRESSED),
        (b"BZh", COMPRESSED),
        (b"\xFD7zXZ\x00", COMPRESSED),
        (b"\x28\xB5\x2F\xFD", COMPRESSED),
        (b"7z\xBC\xAF\x27\x1C", COMPRESSED),
        (b"Rar!\x1A\x07", COMPRESSED),
        (b"bplist00", "it is an Apple property list, not a roster: export the roster as CSV or XLSX"),
    ];
    kinds.iter().find(|(m, _)| magic.starts_with(m)).map(|(_, kind)| *kind)
}

fn read_up_to<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
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
