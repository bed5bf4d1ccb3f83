//! Result files written as rows arrive, to local files, within every limit of their format by
//! construction: sheet names (31 UTF-16 units, no `[]:*?/\`, no leading or trailing apostrophe,
//! unique ignoring case), cells (32,767 characters, cut with a visible marker), rows (16,384
//! columns: Status, Message, Changes and UserId always fit). Workbooks use rust_xlsxwriter's constant-memory mode,
//! so memory does not grow with rows. Nothing here knows about jobs or AWS.

use crate::error::{Error, Result};
use rust_xlsxwriter::{Color, Format, Workbook, XlsxError};
use std::borrow::Cow;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// Excel's limits.
pub const MAX_SHEET_NAME_UNITS: usize = 31;
pub const MAX_CELL_UNITS: usize = 32_767;
pub const MAX_COLUMNS: usize = 16_384;
/// Input columns a result sheet keeps: Status, Message, Changes and UserId take the last four.
pub const MAX_INPUT_COLUMNS: usize = MAX_COLUMNS - 4;

/// A cell too long for a spreadsheet: the start of its value, then this marker with the length.
pub fn cut_marker(len_units: usize) -> String {
    format!(" …[cut: {len_units} characters, more than a spreadsheet cell holds]")
}

/// A value as a workbook cell can hold it: unchanged when it fits, else cut with the marker.
pub fn fit_cell(value: &str) -> Cow<'_, str> {
    let units: usize = value.chars().map(char::len_utf16).sum();
    if units <= MAX_CELL_UNITS {
        return Cow::Borrowed(value);
    }
    let marker = cut_marker(units);
    let room = MAX_CELL_UNITS - marker.chars().map(char::len_utf16).sum::<usize>();
    let (mut used, mut end) = (0, 0);
    for (i, c) in value.char_indices() {
        if used + c.len_utf16() > room {
            break;
        }
        used += c.len_utf16();
        end = i + c.len_utf8();
    }
    Cow::Owned(format!("{}{marker}", &value[..end]))
}

/// Sheet names as a workbook accepts them, unique within it (ignoring case, as Excel does).
#[derive(Default)]
pub struct SheetNames(Vec<String>);

impl SheetNames {
    /// `name` made valid: forbidden characters become `_`, apostrophes at the ends and control
    /// characters go, the rest is cut to 31 units; a clash gets ` (2)`, ` (3)`... within the limit.
    pub fn add(&mut self, name: &str) -> String {
        let cleaned: String = name
            .chars()
            .filter(|c| !c.is_control())
            .map(|c| if matches!(c, '[' | ']' | ':' | '*' | '?' | '/' | '\\') { '_' } else { c })
            .collect();
        // Apostrophes and spaces alternate in hostile names ("x' '"): trimmed together until neither ends it.
        let end = |c: char| c == '\'' || c.is_whitespace();
        let cleaned = cleaned.trim_matches(end);
        let base = if cleaned.is_empty() || cleaned.eq_ignore_ascii_case("history") {
            format!("Sheet{}", self.0.len() + 1)
        } else {
            cleaned.to_string()
        };
        let mut n = 1;
        loop {
            let suffix = if n == 1 { String::new() } else { format!(" ({n})") };
            let candidate = format!("{}{suffix}", cut_units(&base, MAX_SHEET_NAME_UNITS - suffix.len()).trim_end_matches(end));
            if !self.0.iter().any(|s| s.to_lowercase() == candidate.to_lowercase()) {
                self.0.push(candidate.clone());
                return candidate;
            }
            n += 1;
        }
    }
}

fn cut_units(s: &str, units: usize) -> &str {
    let mut used = 0;
    for (i, c) in s.char_indices() {
        if used + c.len_utf16() > units {
            return &s[..i];
        }
        used += c.len_utf16();
    }
    s
}

/// What makes a spreadsheet run a cell as a formula (OWASP CSV injection).
const FORMULA_START: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// Excel's longest string in a formula: a longer one cannot be written `="…"`.
const MAX_FORMULA_TEXT: usize = 255;

/// A cell of a delimited file we write, made safe to open in a spreadsheet and to save back from
/// it unchanged. A value a spreadsheet would run as a formula, or would read as a number or date
/// and save back otherwise (`00123` as `123`, `+14155550100` without its plus, `2024-01-05` as
/// `1/5/2024`), is written as a formula of one string, `="00123"`: spreadsheets show the string
/// and save it back as it was, and ingest reads it as its string in every delimited file
/// (`decode::text`), whatever else the file's columns became. Before, such a cell had a leading
/// apostrophe, which spreadsheets keep as text: saved as XLSX, or without our Message column,
/// `'=1+2` was stored with its apostrophe, and ids lost their zeros.
/// A value too long for that form (or holding a line break) that would run as a formula gets a
/// leading apostrophe instead, as does a value that starts with apostrophes before such a
/// character, so that `unneutralise` can always take exactly one off again.
pub fn neutralise(cell: &str) -> Cow<'_, str> {
    let after_apostrophes = cell.trim_start_matches('\'');
    if after_apostrophes.len() < cell.len() && after_apostrophes.starts_with(FORMULA_START) {
        return format!("'{cell}").into();
    }
    let formula = cell.starts_with(FORMULA_START) && !plain_negative_number(cell);
    if !formula && !changed_by_spreadsheets(cell) {
        return cell.into();
    }
    // Excel counts a formula's string in UTF-16 units, as its cells.
    if cell.encode_utf16().count() <= MAX_FORMULA_TEXT && !cell.contains(['\n', '\r']) {
        format!("=\"{}\"", cell.replace('"', "\"\"")).into()
    } else if formula {
        format!("'{cell}").into()
    } else {
        cell.into()
    }
}

/// `-12` or `-1.5`: a number a spreadsheet keeps as it is, not a formula.
fn plain_negative_number(cell: &str) -> bool {
    cell.strip_prefix('-').is_some_and(canonical_number)
}

/// A number as spreadsheets write it back: no leading zero, no trailing zero after a point, at
/// most 15 digits.
fn canonical_number(n: &str) -> bool {
    let (whole, fraction) = n.split_once('.').unwrap_or((n, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let whole_ok = whole == "0" || (!whole.is_empty() && !whole.starts_with('0') && digits(whole));
    let fraction_ok = digits(fraction) && !fraction.ends_with('0') && !(n.contains('.') && fraction.is_empty());
    whole_ok && fraction_ok && whole.len() + fraction.len() <= 15
}

/// A value made only of what numbers, dates and times are written with (`00123`, `+1415…`,
/// `2024-01-05`, `1/5`, `12E3`, `1,000`), which a spreadsheet would read as a number or date and
/// write back in its own form unless it already is that form.
fn changed_by_spreadsheets(cell: &str) -> bool {
    // `(123)`: an accountant's negative number to a spreadsheet, saved back as -123.
    if let Some(inner) = cell.strip_prefix('(').and_then(|c| c.strip_suffix(')')) {
        return !inner.is_empty()
            && inner.bytes().all(|b| b.is_ascii_digit() || b".,".contains(&b))
            && inner.bytes().any(|b| b.is_ascii_digit());
    }
    cell.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '.' | '+' | '-'))
        && cell.bytes().any(|b| b.is_ascii_digit())
        && cell.bytes().all(|b| b.is_ascii_digit() || b"+-./:, eE".contains(&b))
        && !canonical_number(cell)
        && !plain_negative_number(cell)
}

/// The value `neutralise` was given, from a cell of a delimited file we wrote (its `="…"` form
/// is read as its string by the decoder already): one leading apostrophe off a value whose
/// apostrophes come before a character that runs a formula. Any other apostrophe is the value's
/// own (`'t Hooft`).
pub fn unneutralise(cell: &str) -> &str {
    match cell.strip_prefix('\'') {
        Some(rest) if rest.trim_start_matches('\'').starts_with(FORMULA_START) => rest,
        _ => cell,
    }
}

fn csv_cell(c: &str) -> Cow<'_, [u8]> {
    match neutralise(c) {
        Cow::Borrowed(b) => Cow::Borrowed(b.as_bytes()),
        Cow::Owned(o) => Cow::Owned(o.into_bytes()),
    }
}

/// What a result file is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// Delimited text with this delimiter, UTF-8 with a BOM (Excel then reads accents right).
    Csv(u8),
    Xlsx,
}

impl Kind {
    pub fn content_type(self) -> &'static str {
        match self {
            Kind::Csv(_) => "text/csv; charset=utf-8",
            Kind::Xlsx => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        }
    }
}

/// One result file being written, sheet by sheet and row by row.
pub struct TableFile {
    pub path: PathBuf,
    pub kind: Kind,
    out: Out,
}

enum Out {
    Csv(Box<csv::Writer<BufWriter<File>>>),
    Xlsx { book: Box<Workbook>, sheet: Option<Sheet>, names: SheetNames },
}

/// The sheet being written: its index, rows written (header included), width, and the column
/// whose `Failure` makes a row red.
struct Sheet {
    index: usize,
    rows: u32,
    width: u16,
    status_col: Option<u16>,
}

fn build_err(what: &'static str) -> impl Fn(XlsxError) -> Error {
    move |e| Error::Build { what, message: e.to_string() }
}

fn csv_err(e: csv::Error) -> Error {
    Error::Build { what: "CSV result", message: e.to_string() }
}

impl TableFile {
    pub fn create(path: &Path, kind: Kind) -> Result<TableFile> {
        let out = match kind {
            Kind::Csv(delimiter) => {
                use std::io::Write;
                let mut file = BufWriter::new(File::create(path).map_err(|e| Error::local("result file", e))?);
                file.write_all(b"\xEF\xBB\xBF").map_err(|e| Error::local("result file", e))?;
                Out::Csv(Box::new(csv::WriterBuilder::new().delimiter(delimiter).flexible(true).from_writer(file)))
            }
            Kind::Xlsx => Out::Xlsx { book: Box::new(Workbook::new()), sheet: None, names: SheetNames::default() },
        };
        Ok(TableFile { path: path.to_path_buf(), kind, out })
    }

    /// Start a sheet (workbooks; a CSV has one table and ignores further headers' names) with its
    /// header row. Returns the sheet name used. `status_col`: rows whose cell there is `Failure`
    /// are shown red.
    pub fn start(&mut self, name: &str, header: &[&str], status_col: Option<usize>) -> Result<String> {
        match &mut self.out {
            Out::Csv(w) => {
                w.write_record(header.iter().map(|c| csv_cell(c))).map_err(csv_err)?;
                Ok(name.to_string())
            }
            Out::Xlsx { book, sheet, names } => {
                finish_sheet(book, sheet.take())?;
                let err = build_err("XLSX result");
                let safe = names.add(name);
                let ws = book.add_worksheet_with_constant_memory().map_err(&err)?;
                ws.set_name(&safe).map_err(&err)?;
                let index = book.worksheets().len() - 1;
                let ws = book.worksheet_from_index(index).map_err(&err)?;
                let bold = Format::new().set_bold().set_background_color(Color::RGB(0xD9E1F2));
                let width = header.len().min(MAX_COLUMNS);
                for (c, h) in header.iter().take(width).enumerate() {
                    let h = fit_cell(h);
                    ws.set_column_width(c as u16, (h.chars().count().min(60) as f64 + 4.0).max(12.0)).map_err(&err)?;
                    ws.write_string_with_format(0, c as u16, h.as_ref(), &bold).map_err(&err)?;
                }
                ws.set_freeze_panes(1, 0).map_err(&err)?;
                *sheet =
                    Some(Sheet { index, rows: 1, width: width as u16, status_col: status_col.filter(|c| *c < width).map(|c| c as u16) });
                Ok(safe)
            }
        }
    }

    pub fn row(&mut self, cells: &[&str]) -> Result<()> {
        match &mut self.out {
            Out::Csv(w) => w.write_record(cells.iter().map(|c| csv_cell(c))).map_err(csv_err),
            Out::Xlsx { book, sheet, .. } => {
                let err = build_err("XLSX result");
                let Some(s) = sheet.as_mut() else {
                    return Err(Error::Build { what: "XLSX result", message: "a row before its sheet".into() });
                };
                if s.rows as usize >= crate::ingest::decode::MAX_SHEET_ROWS as usize {
                    return Err(Error::Build { what: "XLSX result", message: "more rows than a sheet holds".into() });
                }
                let ws = book.worksheet_from_index(s.index).map_err(&err)?;
                // Failed rows are shown red by one conditional format over the sheet (`finish_sheet`),
                // not a format per cell: plain cells write several times faster.
                for (c, v) in cells.iter().take(MAX_COLUMNS).enumerate() {
                    if v.is_empty() {
                        continue;
                    }
                    // Strings are stored as strings: Excel never evaluates them, so no formula injection.
                    ws.write_string(s.rows, c as u16, fit_cell(v).as_ref()).map_err(&err)?;
                }
                s.rows += 1;
                Ok(())
            }
        }
    }

    /// Write everything out; the file at `path` is complete after this.
    pub fn finish(self) -> Result<PathBuf> {
        match self.out {
            Out::Csv(w) => {
                let file = w.into_inner().map_err(|e| Error::local("result file", e.error()))?;
                file.into_inner().map_err(|e| Error::local("result file", e.error()))?;
            }
            Out::Xlsx { mut book, sheet, .. } => {
                finish_sheet(&mut book, sheet)?;
                if book.worksheets().is_empty() {
                    book.add_worksheet();
                }
                book.save(&self.path).map_err(build_err("XLSX result"))?;
            }
        }
        Ok(self.path)
    }
}

fn finish_sheet(book: &mut Workbook, sheet: Option<Sheet>) -> Result<()> {
    let err = build_err("XLSX result");
    if let Some(s) = sheet.filter(|s| s.width > 0) {
        let ws = book.worksheet_from_index(s.index).map_err(&err)?;
        ws.autofilter(0, 0, s.rows.saturating_sub(1), s.width - 1).map_err(&err)?;
        if let Some(c) = s.status_col.filter(|_| s.rows > 1) {
            let red = Format::new().set_background_color(Color::RGB(0xFFC7CE)).set_font_color(Color::RGB(0x9C0006));
            let rule = format!("=${}2=\"Failure\"", crate::ingest::decode::column_name(c as usize));
            let cf = rust_xlsxwriter::ConditionalFormatFormula::new().set_rule(rule.as_str()).set_format(red);
            ws.add_conditional_format(1, 0, s.rows - 1, s.width - 1, &cf).map_err(&err)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod neutralise_tests {
    use super::*;

    /// What each value becomes in a CSV cell we write, and reads back as.
    #[test]
    fn values_a_spreadsheet_would_run_or_reshape_are_written_as_one_string() {
        for (value, written) in [
            ("=1+2", "=\"=1+2\""),
            ("000777", "=\"000777\""),
            ("+14155550101", "=\"+14155550101\""),
            ("2024-01-05", "=\"2024-01-05\""),
            ("(123)", "=\"(123)\""),
            ("a \"quote\"", "a \"quote\""),
            ("=\"x\"", "=\"=\"\"x\"\"\""),
            ("-12", "-12"),
            ("12", "12"),
            ("'t Hooft", "'t Hooft"),
            ("'=x", "''=x"),
            ("=a\nb", "'=a\nb"),
            ("E-1", "E-1"),
        ] {
            assert_eq!(neutralise(value), written, "{value:?}");
        }
        // Excel takes 255 UTF-16 units in a formula's string: 150 emoji are 300.
        let emoji = format!("={}", "😀".repeat(150));
        assert_eq!(neutralise(&emoji), format!("'{emoji}"));
        assert_eq!(unneutralise(&neutralise(&emoji)), emoji);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::decode::decode_all;
    use proptest::prelude::*;

    #[test]
    fn sheet_names_are_made_valid_and_unique_within_31_units() {
        // Found by the property test below: cutting at 31 units left "' '" at the end, trimmed once.
        let name = SheetNames::default().add("_2$B3{4(mFIo_<.W}O1=Qiv(V3'Yr' 'tail");
        assert!(!name.ends_with('\'') && !name.ends_with(' '), "{name:?}");
        assert_eq!(SheetNames::default().add(" ' 'x' ' "), "x");
        let mut n = SheetNames::default();
        assert_eq!(n.add("Roster"), "Roster");
        assert_eq!(n.add("roster"), "roster (2)", "unique ignoring case, as Excel compares");
        assert_eq!(n.add("a/b:c*d?e[f]g\\h"), "a_b_c_d_e_f_g_h");
        assert_eq!(n.add("'quoted'"), "quoted");
        assert_eq!(n.add(""), "Sheet5");
        assert_eq!(n.add("History"), "Sheet6", "Excel reserves History");
        let long = "Students of the spring term, Riverside campus";
        let a = n.add(long);
        let b = n.add(long);
        assert_eq!(a, "Students of the spring term, Ri");
        assert_eq!(b, "Students of the spring term (2)");
        for name in [&a, &b] {
            assert!(name.encode_utf16().count() <= MAX_SHEET_NAME_UNITS);
        }
        // Characters outside the BMP count two units each.
        let emoji = n.add(&"😀".repeat(20));
        assert_eq!(emoji.encode_utf16().count(), 30);
    }

    #[test]
    fn a_cell_too_long_for_a_spreadsheet_is_cut_with_a_visible_marker() {
        assert_eq!(fit_cell("short"), "short");
        let exact = "x".repeat(MAX_CELL_UNITS);
        assert_eq!(fit_cell(&exact).len(), MAX_CELL_UNITS, "a cell at the limit is kept whole");
        let long = "é".repeat(40_000);
        let cut = fit_cell(&long);
        assert_eq!(cut.encode_utf16().count(), MAX_CELL_UNITS);
        assert!(cut.ends_with(&cut_marker(40_000)), "the marker says how long it was");
        let surrogates = "😀".repeat(20_000);
        assert!(fit_cell(&surrogates).encode_utf16().count() <= MAX_CELL_UNITS, "never half a surrogate pair");
    }

    /// (sheet name, header, rows)
    type Sheet = (String, Vec<String>, Vec<Vec<String>>);

    fn write(kind: Kind, sheets: &[Sheet]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let mut f = TableFile::create(&dir.path().join("out"), kind).unwrap();
        for (name, header, rows) in sheets {
            f.start(name, &header.iter().map(String::as_str).collect::<Vec<_>>(), None).unwrap();
            for r in rows {
                f.row(&r.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
            }
        }
        std::fs::read(f.finish().unwrap()).unwrap()
    }

    fn trimmed(row: &[String]) -> Vec<String> {
        let len = row.iter().rposition(|c| !c.trim().is_empty()).map_or(0, |i| i + 1);
        row[..len].to_vec()
    }

    #[test]
    fn a_row_wider_than_a_workbook_keeps_16384_columns() {
        let header: Vec<String> = (0..MAX_COLUMNS + 10).map(|i| format!("C{i}")).collect();
        let row: Vec<String> = (0..MAX_COLUMNS + 10).map(|i| format!("v{i}")).collect();
        let bytes = write(Kind::Xlsx, &[("Roster".into(), header, vec![row])]);
        let t = &decode_all(&bytes).unwrap()[0];
        assert_eq!((t.headers.len(), t.rows[0].1.len()), (MAX_COLUMNS, MAX_COLUMNS));
        assert_eq!(t.rows[0].1[MAX_COLUMNS - 1], format!("v{}", MAX_COLUMNS - 1));
    }

    #[test]
    fn failed_rows_of_a_result_workbook_are_red_through_one_conditional_format() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = TableFile::create(&dir.path().join("out"), Kind::Xlsx).unwrap();
        f.start("Roster", &["Email", "Status", "Message"], Some(1)).unwrap();
        f.row(&["a@x.com", "Success", "user created"]).unwrap();
        f.row(&["bad", "Failure", "not an email"]).unwrap();
        let bytes = std::fs::read(f.finish().unwrap()).unwrap();
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        let mut sheet = String::new();
        std::io::Read::read_to_string(&mut zip.by_name("xl/worksheets/sheet1.xml").unwrap(), &mut sheet).unwrap();
        assert!(sheet.contains(r#"<conditionalFormatting sqref="A2:C3">"#), "{sheet}");
        assert!(sheet.contains(r#"<formula>$B2="Failure"</formula>"#), "{sheet}");
        let mut styles = String::new();
        std::io::Read::read_to_string(&mut zip.by_name("xl/styles.xml").unwrap(), &mut styles).unwrap();
        assert!(styles.contains("FFFFC7CE"), "the red fill is a differential format: {styles}");
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => "[ -~éü漢😀\t\n]{0,12}",
            1 => "[=+\\-@][ -~]{0,8}",
            1 => (prop::char::range('a', 'e'), 32_700usize..33_000).prop_map(|(c, n)| c.to_string().repeat(n)),
        ]
    }

    fn sheet() -> impl Strategy<Value = Sheet> {
        (1usize..5).prop_flat_map(|width| {
            (
                "[ -~]{0,40}".prop_filter("not an instruction sheet", |n| !crate::ingest::sheets::is_instruction_sheet(n)),
                prop::collection::vec("[A-Za-z][A-Za-z ]{0,10}", width),
                prop::collection::vec((("[a-z][a-z0-9@.]{0,10}"), prop::collection::vec(text(), width - 1)), 0..6),
            )
                .prop_map(|(name, header, rows)| {
                    let rows = rows.into_iter().map(|(first, rest)| std::iter::once(first).chain(rest).collect()).collect();
                    (name, header, rows)
                })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Whatever the table, the workbook reads back as the same rows: sheet names made valid,
        /// cells too long for a cell cut and marked, nothing else changed.
        #[test]
        fn any_table_reads_back_from_a_result_workbook(sheets in prop::collection::vec(sheet(), 1..3)) {
            let bytes = write(Kind::Xlsx, &sheets);
            let tables = decode_all(&bytes).unwrap();
            prop_assert_eq!(tables.len(), sheets.len());
            let mut names = SheetNames::default();
            for ((name, header, rows), t) in sheets.iter().zip(&tables) {
                prop_assert_eq!(t.sheet.clone(), Some(names.add(name)));
                prop_assert_eq!(&t.headers, header);
                let expected: Vec<Vec<String>> = rows.iter().map(|r| trimmed(&r.iter().map(|c| fit_cell(c).into_owned()).collect::<Vec<_>>())).collect();
                let got: Vec<Vec<String>> = t.rows.iter().map(|(_, r)| trimmed(r)).collect();
                prop_assert_eq!(got, expected);
            }
        }

        /// A CSV result holds every value whole; formulas are neutralised, nothing else changes.
        #[test]
        fn any_table_reads_back_from_a_result_csv(s in sheet()) {
            let bytes = write(Kind::Csv(b','), std::slice::from_ref(&s));
            let t = &decode_all(&bytes).unwrap()[0];
            let (_, header, rows) = &s;
            prop_assert_eq!(&t.headers, header);
            // A cell written `="…"` reads back as itself; one with the apostrophe, with it.
            let shown = |c: &String| match neutralise(c) { n if n.starts_with("=\"") => c.clone(), n => n.into_owned() };
            let expected: Vec<Vec<String>> = rows.iter().map(|r| trimmed(&r.iter().map(shown).collect::<Vec<_>>())).collect();
            let got: Vec<Vec<String>> = t.rows.iter().map(|(_, r)| trimmed(r)).collect();
            prop_assert_eq!(got, expected);
        }
    }
}
