//! Bytes -> a table of text cells. The format comes from the bytes, never from the file name.

use calamine::{Data, DataRef, Reader, Sheets};
use encoding_rs::{Encoding, UTF_8, WINDOWS_1252};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::io::Cursor;

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
}

/// What a zipped workbook (XLSX, ODS) may expand to. Real rosters compress 10-20x; zip bombs 1000x+.
pub const MAX_UNZIPPED_BYTES: u64 = 1 << 30;

/// Measure what a zip really expands to, entry by entry, streaming into a sink (declared sizes can
/// lie), stopping as soon as the limit is passed: memory stays flat whatever the archive holds.
fn check_unzipped_size(bytes: &[u8], limit: u64) -> Result<(), FileError> {
    let too_big = FileError::TooBigUnzipped { limit_mb: limit >> 20 };
    let Ok(mut archive) = zip::ZipArchive::new(Cursor::new(bytes)) else {
        return Ok(()); // not a readable zip: calamine will say it is corrupt
    };
    let declared: u64 = (0..archive.len()).filter_map(|i| archive.by_index_raw(i).ok().map(|f| f.size())).fold(0, u64::saturating_add);
    if declared > limit {
        return Err(too_big);
    }
    let mut total = 0u64;
    for i in 0..archive.len() {
        let Ok(entry) = archive.by_index(i) else { continue };
        let mut bounded = std::io::Read::take(entry, limit - total + 1);
        total += std::io::copy(&mut bounded, &mut std::io::sink()).unwrap_or(0);
        if total > limit {
            return Err(too_big);
        }
    }
    Ok(())
}

/// An XLS is an OLE compound file: a FAT file system inside the file. calamine follows its sector
/// chains without checking for loops, so an 11 KB file whose chain loops makes it allocate until
/// memory runs out (found by fuzzing). The `cfb` crate validates the whole allocation table, loops
/// included, within the file's own size: a container it refuses is damaged.
fn check_ole_container(bytes: &[u8]) -> Result<(), FileError> {
    let corrupt = |e: std::io::Error| FileError::Corrupt { format: "XLS", detail: format!("its container is damaged ({e})") };
    let mut file = cfb::CompoundFile::open(Cursor::new(bytes)).map_err(corrupt)?;
    // The streams calamine reads are walked too, each bounded by the file size.
    let streams: Vec<std::path::PathBuf> = file.walk().filter(|e| e.is_stream()).map(|e| e.path().to_path_buf()).collect();
    for path in streams {
        let stream = file.open_stream(&path).map_err(corrupt)?;
        let mut bounded = std::io::Read::take(stream, bytes.len() as u64 + 1);
        std::io::copy(&mut bounded, &mut std::io::sink()).map_err(corrupt)?;
    }
    Ok(())
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

/// Every table of the file: one for CSV/TSV; each data sheet of a workbook, instruction sheets
/// ("Read Me", "Definitions", ...) and empty sheets left out.
pub fn decode_all(bytes: &[u8]) -> Result<Vec<Table>, FileError> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(FileError::Empty);
    }
    if is_workbook(bytes) {
        return decode_workbook(bytes);
    }
    decode_text(bytes).map(|t| vec![t])
}

fn decode_workbook(bytes: &[u8]) -> Result<Vec<Table>, FileError> {
    let guess = if bytes.starts_with(OLE_MAGIC) { "XLS" } else { "XLSX" };
    // The spreadsheet readers parse hostile binary structures and a malformed file can make them
    // panic (fuzzing found an XLS whose sector table sent calamine out of bounds). For the user
    // that is a damaged file, not a failed upload retried until it lands in a dead-letter queue.
    std::panic::catch_unwind(|| read_workbook(bytes, guess))
        .unwrap_or_else(|_| Err(FileError::Corrupt { format: guess, detail: "its internal structure is damaged".into() }))
}

fn read_workbook(bytes: &[u8], guess: &'static str) -> Result<Vec<Table>, FileError> {
    if bytes.starts_with(ZIP_MAGIC) {
        check_unzipped_size(bytes, MAX_UNZIPPED_BYTES)?;
    } else {
        check_ole_container(bytes)?;
    }
    let mut book = calamine::open_workbook_auto_from_rs(Cursor::new(bytes))
        .map_err(|e| FileError::Corrupt { format: guess, detail: e.to_string() })?;
    let format = match &book {
        Sheets::Xls(_) => Format::Xls,
        Sheets::Xlsx(_) => Format::Xlsx,
        Sheets::Ods(_) => Format::Ods,
        Sheets::Xlsb(_) => {
            return Err(FileError::UnknownFormat("XLSB binary workbooks are not supported; save as XLSX".into()));
        }
    };
    let label = format.label();
    let names = book.sheet_names();
    let mut tables = Vec::new();
    for name in names.iter().filter(|n| !is_instruction_sheet(n)) {
        let corrupt = |e: &dyn std::fmt::Display| FileError::Corrupt { format: label, detail: e.to_string() };
        let rows: Vec<(u32, Vec<String>)> = match &mut book {
            // XLSX streams its cells straight into rows; calamine's in-memory range would hold
            // every cell a second time (about 14x the file size) before the rows exist.
            Sheets::Xlsx(x) => {
                let mut cells = x.worksheet_cells_reader(name).map_err(|e| corrupt(&e))?;
                let mut grid = SparseRows::default();
                while let Some(cell) = cells.next_cell().map_err(|e| corrupt(&e))? {
                    grid.put(cell.get_position(), cell_ref_text(cell.get_value()));
                }
                grid.into_rows()
            }
            _ => {
                let range = book.worksheet_range(name).map_err(|e| corrupt(&e))?;
                let Some((start_row, _)) = range.start() else {
                    continue;
                };
                range.rows().enumerate().map(|(i, r)| (start_row + i as u32 + 1, r.iter().map(cell_text).collect())).collect()
            }
        };
        if let Some(table) = tabulate(format, rows.into_iter()) {
            let row_offset = tables.len() as u32 * SHEET_STRIDE;
            tables.push(Table { sheet: Some(name.clone()), user_type: user_type_of(name), row_offset, ..table });
        }
    }
    if tables.is_empty() { Err(FileError::NoSheet) } else { Ok(tables) }
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

/// Same as `cell_text`, for the streaming reader's borrowed cells.
fn cell_ref_text(cell: &DataRef<'_>) -> String {
    match cell {
        DataRef::String(s) => s.clone(),
        DataRef::SharedString(s) => s.to_string(),
        other => cell_text(&Data::from(other.clone())),
    }
}

/// Cells in sheet order -> rows as a range would give them: numbered as the user sees them, gaps
/// kept as empty rows, leading columns that are empty in every row dropped.
#[derive(Default)]
struct SparseRows {
    rows: Vec<(u32, Vec<String>)>,
    first_col: Option<u32>,
}

impl SparseRows {
    fn put(&mut self, (row, col): (u32, u32), text: String) {
        if text.is_empty() {
            return; // styled but empty cells do not widen the sheet (as in calamine's range)
        }
        let number = row + 1;
        let at = match self.rows.last() {
            Some((last, _)) if *last == number => self.rows.len() - 1,
            Some((last, _)) if *last < number => {
                let last = *last;
                self.rows.extend((last + 1..=number).map(|n| (n, Vec::new())));
                self.rows.len() - 1
            }
            // Rows out of order (a hand-made or damaged file): every row number exists already
            // or belongs before the first one.
            Some(_) => match self.rows.binary_search_by_key(&number, |(n, _)| *n) {
                Ok(i) => i,
                Err(i) => {
                    self.rows.insert(i, (number, Vec::new()));
                    i
                }
            },
            None => {
                self.rows.push((number, Vec::new()));
                0
            }
        };
        self.first_col = Some(self.first_col.map_or(col, |c| c.min(col)));
        let cells = &mut self.rows[at].1;
        let col = col as usize;
        if cells.len() <= col {
            cells.resize(col + 1, String::new());
        }
        cells[col] = text;
    }

    fn into_rows(mut self) -> Vec<(u32, Vec<String>)> {
        let skip = self.first_col.unwrap_or(0) as usize;
        if skip > 0 {
            for (_, cells) in &mut self.rows {
                cells.drain(..skip.min(cells.len()));
            }
        }
        self.rows
    }
}

fn float_text(f: f64) -> String {
    // Phone numbers and ids typed into a spreadsheet arrive as floats: 4155550100.0 -> "4155550100".
    if f.fract() == 0.0 && f.abs() < 1e15 { format!("{}", f as i64) } else { format!("{f}") }
}

fn decode_text(bytes: &[u8]) -> Result<Table, FileError> {
    let (text, encoding) = to_utf8(bytes);
    if let Some(pos) = text.find('\0') {
        let line = text[..pos].matches('\n').count() + 1;
        let utf16 = bytes.len() > 3 && (bytes[1] == 0 || bytes[0] == 0);
        let hint = if utf16 { "; it looks like UTF-16 text without a byte-order mark: save it as CSV UTF-8" } else { "" };
        return Err(FileError::UnknownFormat(format!("it contains NUL bytes (first on line {line}), which a text roster never has{hint}")));
    }
    if looks_binary(&text) {
        return Err(FileError::UnknownFormat("the content is binary, not text".into()));
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    if text.trim_start().starts_with('<') {
        return Err(FileError::UnknownFormat("it looks like HTML or XML; export the sheet as CSV or XLSX instead".into()));
    }
    let delimiter = sniff_delimiter(text);
    if let Some(line) = unclosed_quote(text, delimiter) {
        return Err(FileError::Corrupt {
            format: if delimiter == b'\t' { "TSV" } else { "CSV" },
            detail: format!(
                "a double quote opened on line {line} is never closed, so every row after it would be swallowed into one cell; close or remove that quote"
            ),
        });
    }
    let format = if delimiter == b'\t' { Format::Tsv } else { Format::Csv };
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).delimiter(delimiter).from_reader(text.as_bytes());
    let mut rows = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| FileError::Corrupt { format: format.label(), detail: e.to_string() })?;
        rows.push((i as u32 + 1, rec.iter().map(str::to_string).collect::<Vec<_>>()));
    }
    let table = tabulate(format, rows.into_iter()).ok_or(FileError::Empty)?;
    Ok(Table { encoding: Some(encoding.to_string()), delimiter: Some(delimiter as char), ..table })
}

/// BOM first (UTF-8, UTF-16LE/BE as Excel's "Unicode Text"), then strict UTF-8, else Windows-1252.
/// UTF-8 input is borrowed, not copied: the common case costs no second copy of the file.
fn to_utf8(bytes: &[u8]) -> (Cow<'_, str>, &'static str) {
    if let Some((enc, bom_len)) = Encoding::for_bom(bytes) {
        let (text, _) = enc.decode_without_bom_handling(&bytes[bom_len..]);
        return (text, enc.name());
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => (Cow::Borrowed(s), UTF_8.name()),
        Err(_) => (WINDOWS_1252.decode_without_bom_handling(bytes).0, WINDOWS_1252.name()),
    }
}

/// Many control characters: not a text roster, whatever its name says.
fn looks_binary(text: &str) -> bool {
    let sample: Vec<char> = text.chars().take(8192).collect();
    let control = sample.iter().filter(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')).count();
    control * 20 > sample.len().max(1)
}

/// The line of a quote that opens a quoted field and is never closed (RFC 4180 quoting: a quote
/// opens a field only at its start; `""` inside a quoted field is an escaped quote).
fn unclosed_quote(text: &str, delimiter: u8) -> Option<usize> {
    let (mut quoted, mut at_field_start, mut line, mut opened_on) = (false, true, 1usize, 0usize);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                } else {
                    quoted = false;
                }
            } else if c == '\n' {
                line += 1;
            }
            continue;
        }
        match c {
            '"' if at_field_start => {
                quoted = true;
                opened_on = line;
            }
            '\n' => {
                line += 1;
                at_field_start = true;
                continue;
            }
            c if c as u32 == delimiter as u32 => {
                at_field_start = true;
                continue;
            }
            _ => {}
        }
        at_field_start = false;
    }
    quoted.then_some(opened_on)
}

/// The delimiter seen most often outside quotes on the first non-empty line (the header).
fn sniff_delimiter(text: &str) -> u8 {
    let header = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let mut counts = [(b',', 0usize), (b';', 0), (b'\t', 0), (b'|', 0)];
    let mut quoted = false;
    for b in header.bytes() {
        if b == b'"' {
            quoted = !quoted;
        } else if !quoted && let Some(c) = counts.iter_mut().find(|(d, _)| *d == b) {
            c.1 += 1;
        }
    }
    // Ties keep the earlier (more common) delimiter: max_by_key returns the last maximum, so reverse.
    counts.iter().rev().max_by_key(|(_, n)| *n).filter(|(_, n)| *n > 0).map(|(d, _)| *d).unwrap_or(b',')
}

/// Rows -> table: the first non-empty row is the header; trailing empty rows and empty trailing
/// header columns are dropped. `None` when there is no header at all.
fn tabulate(format: Format, rows: impl Iterator<Item = (u32, Vec<String>)>) -> Option<Table> {
    let mut rows = rows.skip_while(|(_, r)| r.iter().all(|c| c.trim().is_empty()));
    let (header_row, mut headers) = rows.next()?;
    while headers.last().is_some_and(|h| h.trim().is_empty()) {
        headers.pop();
    }
    let mut data: Vec<(u32, Vec<String>)> = rows
        .map(|(n, mut r)| {
            while r.last().is_some_and(|c| c.trim().is_empty()) {
                r.pop();
            }
            (n, r)
        })
        .collect();
    while data.last().is_some_and(|(_, r)| r.is_empty()) {
        data.pop();
    }
    Some(Table { format, encoding: None, delimiter: None, sheet: None, header_row, row_offset: 0, user_type: None, headers, rows: data })
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
        assert_eq!(check_unzipped_size(&bytes, 16 << 20), Err(FileError::TooBigUnzipped { limit_mb: 16 }));
        assert_eq!(check_unzipped_size(&bytes, 128 << 20), Ok(()));
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
    use super::*;

    fn read(name: &str) -> Table {
        let path = format!("{}/../tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        decode(&std::fs::read(&path).expect("fixture")).expect("decodes")
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

    #[test]
    fn cells_out_of_row_order_land_in_their_own_rows() {
        let mut g = SparseRows::default();
        for (pos, v) in [((0, 0), "Email"), ((2, 0), "c@x.com"), ((1, 0), "b@x.com"), ((0, 1), "Name")] {
            g.put(pos, v.to_string());
        }
        let rows = g.into_rows();
        assert_eq!(
            rows,
            vec![(1, vec!["Email".to_string(), "Name".into()]), (2, vec!["b@x.com".to_string()]), (3, vec!["c@x.com".to_string()])]
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
}
