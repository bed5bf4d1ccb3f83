//! Workbooks (XLSX, XLS, ODS) through calamine, sheet by sheet; XLSX cells streamed into rows.

use super::hidden::Hidden;
use super::merges::{self, Filler, XlsxScan};
use super::numfmt::NumberFormat;
use super::ods_shown::{self, OdsShown};
use super::xls_shown::XlsShown;
use super::*;
use calamine::{Data, DataRef, Reader, Sheets};
use std::borrow::Cow;
use std::io::{Read, Seek, SeekFrom};

pub(super) fn read_workbook<R: Read + Seek, V: TableVisitor>(r: &mut R, ole: bool, v: &mut V) -> Result<(), ReadError<V::Stop>> {
    let size = r.seek(SeekFrom::End(0))?;
    r.rewind()?;
    if !ole {
        return match super::ods_indent::unindented(&mut *r)? {
            Some(clean) => read_book(&mut std::io::Cursor::new(clean), false, None, v),
            None => read_book(r, false, None, v),
        };
    }
    // calamine reads the measured workbook stream alone, in a container made for it
    // (`check_ole_container`), never the upload's own directory.
    let book = guarded("XLS", || check_ole_container(&mut *r, size))?;
    // What its numbers show; a defect here costs the numbers their format, not the file.
    let shown = std::panic::catch_unwind(|| XlsShown::scan(&book.stream)).ok();
    let clean = guarded("XLS", || book.rebuilt())?;
    read_book(&mut std::io::Cursor::new(clean), true, shown, v)
}

/// An opened container's sheets into rows: `ole`, a rebuilt XLS with what its numbers show.
fn read_book<R: Read + Seek, V: TableVisitor>(r: &mut R, ole: bool, xls: Option<XlsShown>, v: &mut V) -> Result<(), ReadError<V::Stop>> {
    let guess = if ole { "XLS" } else { "XLSX" };
    let (mut book, shown, mut scan) = guarded(guess, || open_book(&mut *r, ole))?;
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
    // Hidden sheets are not read: last term's copy or a lookup table kept out of sight would be
    // applied as roster rows nobody sees. Chart, dialog and macro sheets hold no cells.
    let (mut names, mut hidden, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
    for sheet in book.sheets_metadata() {
        if sheet.typ != calamine::SheetType::WorkSheet {
            continue;
        }
        if v.skip_sheet(&sheet.name) {
            skipped.push(format!("\"{}\"", quoted(&sheet.name)));
            continue;
        }
        if sheet.visible != calamine::SheetVisible::Visible {
            v.hidden_sheet(&sheet.name);
            hidden.push(format!("\"{}\"", quoted(&sheet.name)));
            continue;
        }
        names.push(sheet.name.clone());
    }
    if names.is_empty() && !hidden.is_empty() {
        return Err(FileError::OnlyHidden { sheets: hidden.join(", ") }.into());
    }
    if names.is_empty() && !skipped.is_empty() {
        // A roster in a sheet called `Notes` or `Lists`: "no sheet with data" said nothing of it.
        return Err(FileError::OnlyInstructions { sheets: skipped.join(", ") }.into());
    }
    let proto = |name: &str, k: usize, several: bool| TableHead {
        format,
        encoding: None,
        delimiter: None,
        sheet: Some(name.to_string()),
        header_row: 0,
        index: k as u32,
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
            let mut formats: Option<CellFormats> = None;
            let mut empty_rows = 0u64;
            for (k, name) in data_sheets.iter().enumerate() {
                let mut cells = guarded(label, || x.worksheet_cells_reader(name).map_err(|e| corrupt(&e)))?;
                let formats = formats.get_or_insert_with(|| CellFormats::of(cells.styles()));
                let dims = cells.dimensions();
                let declared = dims.end.0.saturating_sub(dims.start.0).min(MAX_ROWS_HINT);
                let mut shape = Shape::new(TableHead { rows_hint: Some(declared), ..proto(name, k, several) }, true);
                let mut filler = Filler::new(scan.merged.remove(name).unwrap_or_default());
                let mut hidden = Hidden::new(scan.hidden.remove(name).unwrap_or_default());
                let mut totals = Totals::new(scan.totals.remove(name).unwrap_or_default());
                // Formula cells of a workbook never calculated, in the order cells come.
                let uncalculated = scan.uncalculated.remove(name).unwrap_or_default();
                let mut next_formula = 0;
                // The row's cells are reused from row to row (cleared, not reallocated).
                let mut row: Vec<Slot> = Vec::new();
                let mut width = 0;
                let mut at: Option<u32> = None;
                while let Some((cell, style)) = guarded(label, || cells.next_cell_with_style_id().map_err(|e| corrupt(&e)))? {
                    let value = cell.get_value();
                    let number = match *value {
                        DataRef::Float(f) => Some(f),
                        DataRef::Int(i) => Some(i as f64),
                        _ => None,
                    };
                    let (r, c) = cell.get_position();
                    while uncalculated.get(next_formula).is_some_and(|&p| p < (r, c)) {
                        next_formula += 1;
                    }
                    let text = if uncalculated.get(next_formula) == Some(&(r, c)) {
                        Cow::Borrowed(NOT_CALCULATED)
                    } else {
                        match number.and_then(|n| formats.render(style, n)) {
                            Some(shown) => Cow::Owned(shown),
                            None => cell_ref_text(value),
                        }
                    };
                    if text.is_empty() {
                        continue; // styled but empty cells do not widen the sheet (as in calamine's range)
                    }
                    if r >= MAX_SHEET_ROWS || c >= MAX_SHEET_COLUMNS {
                        let cell = format!("{}{}", column_name(c as usize), r as u64 + 1);
                        return Err(FileError::OutsideGrid { sheet: quoted(name), cell }.into());
                    }
                    match at {
                        Some(a) if a == r => {}
                        Some(a) if a < r => {
                            if !filler.is_empty() {
                                fill_slots(&mut filler, a, &mut row, &mut width);
                            }
                            if !hidden.is_empty() {
                                hidden.row(a, with_data(&row[..width]));
                            }
                            totals.row(v, &mut shape, a, &row[..width])?;
                            // Each empty row between two data rows is a row of the result (Skipped):
                            // 3 cells a sheet a million rows apart made 20 KB read as 52 million rows.
                            // A stray value far below the data is one long gap; a file with a blank
                            // line after each row has many short ones.
                            let gap = u64::from(r - a - 1);
                            empty_rows += gap;
                            if empty_rows > MAX_EMPTY_ROWS || gap > MAX_EMPTY_RUN {
                                let sheet = if several { format!(" of sheet \"{}\"", quoted(name)) } else { String::new() };
                                let cell = format!("{}{}{sheet}", column_name(c as usize), r as u64 + 1);
                                let limit = if gap > MAX_EMPTY_RUN { MAX_EMPTY_RUN } else { MAX_EMPTY_ROWS };
                                return Err(FileError::TooManyEmptyRows { format: label, limit, cell }.into());
                            }
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
                    if !filler.is_empty() {
                        fill_slots(&mut filler, a, &mut row, &mut width);
                    }
                    if !hidden.is_empty() {
                        hidden.row(a, with_data(&row[..width]));
                    }
                    totals.row(v, &mut shape, a, &row[..width])?;
                }
                if !shape.started() {
                    return Err(FileError::NoSheet.into());
                }
                if let Some(warning) = filler.warning(several.then_some(name.as_str())) {
                    v.warning(warning);
                }
                for warning in hidden.warnings(several.then_some(name.as_str())) {
                    v.warning(warning);
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
            let all_names = book.sheet_names();
            for (k, (name, range)) in ranges.iter().enumerate() {
                let Some((start_row, start_col)) = range.start() else { continue };
                let mut shape = Shape::new(proto(name, k, several), true);
                let kept = shown.as_ref().and_then(|s| s.table(name));
                // Ranges merged down (XLS from calamine, ODS from `ods_shown`), in sheet positions.
                let down = match &book {
                    Sheets::Xls(x) => {
                        merges::downward(x.merge_cells_by_sheet_name(name).unwrap_or_default().iter().map(|d| (d.start, d.end)))
                    }
                    _ => shown.as_ref().map(|s| s.merged(name)).unwrap_or_default(),
                };
                let mut filler = Filler::new(down);
                // calamine keeps the last sheet of a name; the XLS formats go by the sheet's place.
                let xls_sheet = xls.as_ref().zip(all_names.iter().rposition(|n| n == name));
                let mut hidden = Hidden::new(match &book {
                    Sheets::Xls(_) => xls_sheet.map(|(x, i)| x.hidden(i)).unwrap_or_default(),
                    _ => shown.as_ref().map(|s| s.hidden(name)).unwrap_or_default(),
                });
                for (i, r) in range.rows().enumerate() {
                    let row = u64::from(start_row) + i as u64;
                    // A number reads as the sheet shows it (`000123`): an XLS cell under its
                    // format, an ODS whole number as its shown text. The ODS text is taken only if
                    // its digits are this cell's value's, the XLS format only if the record at
                    // that place holds this value: a file whose structure calamine counts
                    // differently cannot move digits between cells.
                    let shown_at = |j: usize, c: &Data| {
                        let col = u64::from(start_col) + j as u64;
                        match (c, kept, xls_sheet) {
                            (Data::Float(f), Some(kept), _) => OdsShown::at(kept, row, col)
                                .filter(|text| ods_shown::same_digits(text, &float_text(*f)))
                                .map(str::to_string),
                            (&Data::Float(value), _, Some((xls, sheet))) => {
                                xls.render(sheet, u32::try_from(row).ok()?, u32::try_from(col).ok()?, value)
                            }
                            (&Data::Int(i), _, Some((xls, sheet))) => {
                                xls.render(sheet, u32::try_from(row).ok()?, u32::try_from(col).ok()?, i as f64)
                            }
                            _ => None,
                        }
                    };
                    let mut cells: Vec<String> =
                        r.iter().enumerate().map(|(j, c)| shown_at(j, c).unwrap_or_else(|| cell_text(c))).collect();
                    let at = start_row + i as u32;
                    if !filler.is_empty() && cells.iter().any(|c| !c.trim().is_empty()) {
                        let fills =
                            filler.fills(at, |col| col.checked_sub(start_col).and_then(|j| cells.get(j as usize)).map(String::as_str));
                        for (col, value) in fills {
                            // A range left of the used cells cannot cover one of them.
                            if let Some(cell) = col.checked_sub(start_col).and_then(|j| cells.get_mut(j as usize)) {
                                *cell = value;
                            }
                        }
                    }
                    if !hidden.is_empty() {
                        hidden.row(at, with_data(&cells).map(|j| start_col + j));
                    }
                    shape.row(v, at + 1, &cells)?;
                }
                if let Some(warning) = filler.warning(several.then_some(name.as_str())) {
                    v.warning(warning);
                }
                for warning in hidden.warnings(several.then_some(name.as_str())) {
                    v.warning(warning);
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

/// The total rows of a sheet's tables (`merges::TotalRows`): a sum under the data, read as a
/// person it failed as `Email "Total" is not a valid email address`. Given to the reader as the
/// blank rows they are to a roster (skipped), each table named once in a warning.
struct Totals {
    rows: Vec<merges::TotalRows>,
    named: Vec<bool>,
}

impl Totals {
    fn new(rows: Vec<merges::TotalRows>) -> Self {
        let named = vec![false; rows.len()];
        Totals { rows, named }
    }

    /// Row `r` (0-based) to `shape`, the cells of any table's Total row on it left out (the rest
    /// of the row is read: a small table beside the roster ends on a person's row).
    fn row<V: TableVisitor, S: AsRef<str>>(&mut self, v: &mut V, shape: &mut Shape, r: u32, cells: &[S]) -> Result<(), ReadError<V::Stop>> {
        if !self.rows.iter().any(|t| t.row == r) {
            return shape.row(v, r + 1, cells);
        }
        let mut kept: Vec<&str> = cells.iter().map(AsRef::as_ref).collect();
        for (k, t) in self.rows.iter().enumerate().filter(|(_, t)| t.row == r) {
            let (c0, c1) = (t.columns.0 as usize, t.columns.1 as usize);
            if let Some(span) = kept.get_mut(c0..=c1.min(cells.len().saturating_sub(1))) {
                span.fill("");
            }
            if !std::mem::replace(&mut self.named[k], true) {
                v.warning(format!(
                    "row {} is the Total row of table \"{}\" and was not read (turn the table's Total Row off if that row is a person)",
                    r + 1,
                    quoted(&t.table)
                ));
            }
        }
        shape.row(v, r + 1, &kept)
    }
}

/// The columns (0-based, from the row's first cell) of a row's cells that hold something.
fn with_data<S: AsRef<str>>(cells: &[S]) -> impl Iterator<Item = u32> + '_ {
    cells.iter().enumerate().filter(|(_, c)| !c.as_ref().trim().is_empty()).map(|(j, _)| j as u32)
}

/// The covered cells of XLSX row `row` (which has data) filled from their merged range's top cell.
fn fill_slots(filler: &mut Filler, row: u32, slots: &mut Vec<Slot<'_>>, width: &mut usize) {
    // A row of only spaces is blank, as XLS and ODS rows are read: nothing is filled into it.
    if slots[..*width].iter().all(|s| s.as_ref().trim().is_empty()) {
        return;
    }
    let fills = filler.fills(row, |c| slots.get(c as usize).filter(|_| (c as usize) < *width).map(AsRef::as_ref));
    for (col, value) in fills {
        let c = col as usize;
        if slots.len() <= c {
            slots.resize(c + 1, Slot::default());
        }
        *width = (*width).max(c + 1);
        slots[c].shared = None;
        slots[c].own.clear();
        slots[c].own.push_str(&value);
    }
}

/// The number format of each XLSX style, understood once per distinct format code: a number
/// reads as the spreadsheet shows it (`000123`, `12.5%`), as its own "save as CSV" writes it.
struct CellFormats {
    by_style: Vec<Option<usize>>,
    formats: Vec<NumberFormat>,
}

impl CellFormats {
    /// Excel allows about 250 custom number formats a workbook; past this many distinct codes,
    /// or past this length (no renderable code is longer), numbers keep their plain rendering.
    const MAX_FORMATS: usize = 1024;
    const MAX_CODE_BYTES: usize = 1024;

    fn of(styles: &[calamine::Style]) -> Self {
        let mut seen: std::collections::HashMap<&str, Option<usize>> = std::collections::HashMap::new();
        let mut formats = Vec::new();
        let by_style = styles
            .iter()
            .map(|style| {
                let code = style.number_format.as_ref().map(|f| f.format_code.as_str())?;
                if code.len() > Self::MAX_CODE_BYTES {
                    return None;
                }
                if let Some(known) = seen.get(code) {
                    return *known;
                }
                let parsed = (seen.len() < Self::MAX_FORMATS).then(|| NumberFormat::parse(code)).flatten().map(|f| {
                    formats.push(f);
                    formats.len() - 1
                });
                seen.insert(code, parsed);
                parsed
            })
            .collect();
        Self { by_style, formats }
    }

    /// `value` as style `style` shows it; `None` when its format is General or not shown exactly.
    fn render(&self, style: usize, value: f64) -> Option<String> {
        let format = &self.formats[(*self.by_style.get(style)?)?];
        // A defect in the renderer costs the cell its shown form, not the file.
        std::panic::catch_unwind(|| format.render(value)).ok().flatten()
    }
}

/// The workbook reader for the container: OLE is XLS; a zip is XLSX, else ODS (calamine's own
/// detection needs a reader it can clone, and ingest reads from a file). An ODS comes with what
/// its whole numbers show, read once its parts passed the guards.
pub(super) fn open_book<R: Read + Seek>(r: &mut R, ole: bool) -> Result<(Sheets<&mut R>, Option<OdsShown>, XlsxScan), FileError> {
    use calamine::{Ods, Xls, Xlsx};
    if ole {
        return Xls::new(r)
            .map(|x| (Sheets::Xls(x), None, XlsxScan::default()))
            .map_err(|e| FileError::Corrupt { format: "XLS", detail: e.to_string() });
    }
    // The zip's directory (read from its end, cheaply) says which kind of workbook it is and
    // what it unzips to.
    let mut zip = zip::ZipArchive::new(&mut *r).map_err(|e| FileError::Corrupt { format: "XLSX", detail: e.to_string() })?;
    check_declared_size(&mut zip, MAX_UNZIPPED_BYTES)?;
    let names: Vec<String> = zip.file_names().filter_map(|n| n.ok().map(|n| n.into_owned())).collect();
    let has = |n: &str| names.iter().any(|x| x.eq_ignore_ascii_case(n));
    let ods = !has("xl/workbook.xml") && has("content.xml");
    check_zip_parts(&mut zip, ods)?;
    let damaged = |e: &dyn std::fmt::Display| FileError::Corrupt { format: "ODS", detail: e.to_string() };
    let (shown, merged) = if ods {
        let named = |i: &usize| zip.name_for_index(*i).and_then(|n| n.ok()).is_some_and(|n| n.eq_ignore_ascii_case("content.xml"));
        let at = (0..zip.len()).find(named).ok_or_else(|| damaged(&"no content.xml"))?;
        let shown = OdsShown::scan(std::io::BufReader::new(zip.by_index(at).map_err(|e| damaged(&e))?)).map_err(|e| damaged(&e))?;
        if shown.too_many_merged {
            return Err(FileError::TooManyMerged { limit: merges::MAX_MERGED_RANGES });
        }
        (Some(shown), XlsxScan::default())
    } else {
        (None, merges::xlsx(&mut zip)?)
    };
    drop(zip);
    r.rewind().map_err(|e| FileError::Corrupt { format: "XLSX", detail: e.to_string() })?;
    if has("xl/workbook.bin") {
        return Err(FileError::UnknownFormat("XLSB binary workbooks are not supported; save as XLSX".into()));
    }
    if !has("xl/workbook.xml") && has("content.xml") {
        return Ods::new(r)
            .map(|o| (Sheets::Ods(o), shown, merged))
            .map_err(|e| FileError::Corrupt { format: "ODS", detail: e.to_string() });
    }
    Xlsx::new(r).map(|x| (Sheets::Xlsx(x), None, merged)).map_err(|e| FileError::Corrupt { format: "XLSX", detail: e.to_string() })
}

/// The spreadsheet readers parse hostile binary structures and a malformed file can make them
/// panic (fuzzing found an XLS whose sector table sent calamine out of bounds). For the user that
/// is a damaged file, not a failed upload retried until it lands in a dead-letter queue.
pub(super) fn guarded<T>(format: &'static str, f: impl FnOnce() -> Result<T, FileError>) -> Result<T, FileError> {
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
            // A time of day alone is a serial under 1: read as a date it was 1899-12-31 09:30,
            // a ScheduledDate long past (sent at once).
            Some(d) if dt.is_datetime() && (0.0..1.0).contains(&dt.as_f64()) => d.time().format("%H:%M:%S").to_string(),
            Some(d) if dt.is_datetime() => {
                if d.time() == chrono::NaiveTime::MIN {
                    d.date().to_string()
                } else {
                    d.format("%Y-%m-%d %H:%M:%S").to_string()
                }
            }
            _ => float_text(dt.as_f64()),
        },
        Data::DateTimeIso(s) => s.strip_suffix("T00:00:00").unwrap_or(s).to_string(),
        // An ODS time (`PT09H30M00S`) as a spreadsheet shows it.
        Data::DurationIso(s) => iso_time(s).unwrap_or_else(|| s.clone()),
        // As the spreadsheet shows it (`#N/A`, `#DIV/0!`), not the reader's name for it (`#NA`).
        Data::Error(e) => e.to_string(),
    }
}

/// A cell of the XLSX row being read: a shared string borrowed from the workbook's table (most
/// cells of a file Excel saved; not copied), or text in a buffer kept from row to row.
#[derive(Default, Clone)]
pub(super) struct Slot<'a> {
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

/// `PT09H30M00S` -> `09:30:00` (hours past 24 kept, as `[h]:mm:ss` shows a duration); any other
/// form is left as written.
fn iso_time(s: &str) -> Option<String> {
    let rest = s.strip_prefix("PT")?;
    let (h, rest) = rest.split_once('H')?;
    let (m, rest) = rest.split_once('M')?;
    let sec = rest.strip_suffix('S')?;
    let number =
        |t: &str| (!t.is_empty() && t.len() <= 9 && t.bytes().all(|b| b.is_ascii_digit())).then(|| t.parse::<u64>().ok()).flatten();
    let (h, m) = (number(h)?, number(m)?);
    let (whole, fraction) = sec.split_once('.').unwrap_or((sec, ""));
    let whole = number(whole)?;
    if m > 59 || whole > 59 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let fraction = fraction.trim_end_matches('0');
    Some(if fraction.is_empty() { format!("{h:02}:{m:02}:{whole:02}") } else { format!("{h:02}:{m:02}:{whole:02}.{fraction}") })
}

/// Same as `cell_text`, for the streaming reader's cells: text is borrowed, not copied.
pub(super) fn cell_ref_text<'c>(cell: &'c DataRef<'_>) -> Cow<'c, str> {
    match cell {
        DataRef::String(s) => Cow::Borrowed(s),
        DataRef::SharedString(s) => Cow::Borrowed(s),
        other => Cow::Owned(cell_text(&Data::from(other.clone()))),
    }
}

pub(super) fn float_text(f: f64) -> String {
    // Phone numbers and ids typed into a spreadsheet arrive as floats: 4155550100.0 -> "4155550100".
    if !digits_kept(f) {
        scientific(f)
    } else if f.fract() == 0.0 {
        format!("{}", f as i64)
    } else {
        // As a spreadsheet shows it in General form and writes it to CSV: 15 significant digits
        // (0.1 + 0.2 is 0.3 there, not the double's 0.30000000000000004).
        let fifteen: f64 = format!("{f:.14e}").parse().unwrap_or(f);
        format!("{fifteen}")
    }
}

/// Whether a number's digits can be the ones typed. A spreadsheet keeps 15 significant digits:
/// `1234567890123456789` typed into a cell is stored as 1.23456789012346E+18, and written out in
/// full it would read as the made-up id `1234567890123460000`. A 16-digit number a program wrote
/// (up to 2^53, which a double holds exactly) keeps its digits, and one whose last digit is not the
/// 0 a spreadsheet leaves was not cut; past 2^53 a double holds no 16th digit at all.
pub(super) fn digits_kept(f: f64) -> bool {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    let a = f.abs();
    !a.is_finite() || a < 1e15 || (a < EXACT && a.fract() == 0.0 && a % 10.0 != 0.0)
}

/// A long number as a spreadsheet shows it in General format (`1.23456789012346E+18`): plainly
/// not the digits typed, which validation tells the user to re-enter as text.
fn scientific(f: f64) -> String {
    // The 15 significant digits a spreadsheet keeps, no more (the double holds 17, two made up).
    let fifteen = format!("{f:.14E}"); // "1.23456789012346E18"
    let (mantissa, exponent) = fifteen.split_once('E').unwrap_or((&fifteen, "0"));
    let mantissa = if mantissa.contains('.') { mantissa.trim_end_matches('0').trim_end_matches('.') } else { mantissa };
    let (sign, digits) = exponent.strip_prefix('-').map_or(("+", exponent), |d| ("-", d));
    format!("{mantissa}E{sign}{digits:0>2}")
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

    /// LibreOffice writes its literals escaped and quoted: `\(000") "000\-0000`.
    #[test]
    fn libreoffice_xlsx_numbers_read_as_the_sheet_shows_them() {
        let t = read("real/formatted-numbers.xlsx");
        assert_eq!(t.headers, vec!["Email", "First Name", "Role", "ExternalId", "Phone"]);
        assert_eq!(t.rows[0].1[3..], ["000123".to_string(), "(415) 555-0100".into()]);
        assert_eq!(t.rows[1].1[3..], ["000124".to_string(), "(415) 555-0101".into()]);
    }

    /// LibreOffice's ODS of the same sheet, and one whose table starts at B3 (calamine's range
    /// starts there; the shown texts are found by absolute position).
    #[test]
    fn libreoffice_ods_whole_numbers_read_as_the_sheet_shows_them() {
        for name in ["real/formatted-numbers.ods", "real/formatted-numbers-offset.ods"] {
            let t = read(name);
            assert_eq!(t.headers, vec!["Email", "First Name", "Role", "ExternalId", "Phone"], "{name}");
            assert_eq!(t.rows[0].1[3..], ["000123".to_string(), "(415) 555-0100".into()], "{name}");
            assert_eq!(t.rows[1].1[3..], ["000124".to_string(), "(415) 555-0101".into()], "{name}");
        }
    }

    /// LibreOffice's XLS (BIFF8) of the same sheets: calamine gives the values, the workbook
    /// stream's FORMAT and XF records the formats (`xls_shown`). Before, `123` and `4155550100`.
    #[test]
    fn libreoffice_xls_numbers_read_as_the_sheet_shows_them() {
        for name in ["real/formatted-numbers.xls", "real/formatted-numbers-offset.xls"] {
            let t = read(name);
            assert_eq!(t.format, Format::Xls, "{name}");
            assert_eq!(t.headers, vec!["Email", "First Name", "Role", "ExternalId", "Phone"], "{name}");
            assert_eq!(t.rows[0].1[3..], ["000123".to_string(), "(415) 555-0100".into()], "{name}");
            assert_eq!(t.rows[1].1[3..], ["000124".to_string(), "(415) 555-0101".into()], "{name}");
        }
    }

    /// Two sheets: the notes before the roster hold 123 plain where the roster's ids are, and a
    /// 7 shown 000007. Each sheet's numbers take that sheet's formats (by the sheet's place).
    #[test]
    fn each_xls_sheet_s_numbers_take_their_own_sheet_s_formats() {
        let tables = decode_all(&std::fs::read(fixture("real/formatted-numbers-sheets.xls")).unwrap()).unwrap();
        let sheet = |name: &str| tables.iter().find(|t| t.sheet.as_deref() == Some(name)).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(sheet("Notes").rows[0].1[3..], ["123".to_string(), "000007".into()]);
        assert_eq!(sheet("Roster").rows[0].1[3..], ["000123".to_string(), "(415) 555-0100".into()]);
    }

    /// Structures calamine counts differently from a plain reading (a row repeated 0 times before
    /// the data): a shown text lands only on a cell whose value has its digits.
    #[test]
    fn ods_shown_text_never_moves_to_another_value() {
        use std::io::Write;
        let num = |v: &str, shown: &str| {
            format!(r#"<table:table-cell office:value-type="float" office:value="{v}"><text:p>{shown}</text:p></table:table-cell>"#)
        };
        let content = format!(
            r#"<?xml version="1.0"?><office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0"><office:body><office:spreadsheet><table:table table:name="S"><table:table-row table:number-rows-repeated="0"><table:table-cell/></table:table-row><table:table-row>{}</table:table-row><table:table-row>{}</table:table-row></table:table></office:spreadsheet></office:body></office:document-content>"#,
            num("5", "5"),
            num("123", "000123")
        );
        let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        z.start_file("mimetype", stored).unwrap();
        z.write_all(b"application/vnd.oasis.opendocument.spreadsheet").unwrap();
        z.start_file("content.xml", stored).unwrap();
        z.write_all(content.as_bytes()).unwrap();
        z.start_file("META-INF/manifest.xml", stored).unwrap();
        z.write_all(br#"<?xml version="1.0"?><manifest:manifest xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0"><manifest:file-entry manifest:full-path="/" manifest:media-type="application/vnd.oasis.opendocument.spreadsheet"/></manifest:manifest>"#).unwrap();
        let tables = decode_all(&z.finish().unwrap().into_inner()).unwrap();
        let cells: Vec<&String> = tables.iter().flat_map(|t| t.headers.iter().chain(t.rows.iter().flat_map(|(_, r)| r))).collect();
        assert!(cells.iter().all(|c| ["5", "123", "000123"].contains(&c.as_str())), "{cells:?}");
        assert!(cells.iter().any(|c| c.as_str() == "5"), "5 keeps its own digits: {cells:?}");
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
        // As a spreadsheet saves it: calculated (rust_xlsxwriter marks its files never calculated).
        let saved = edit_part(&wb.save_to_buffer().unwrap(), "xl/workbook.xml", |x| x.replace(r#" fullCalcOnLoad="1""#, ""));
        let t = decode(&saved).unwrap();
        assert_eq!(t.format, Format::Xlsx);
        assert_eq!(t.headers, vec!["Email", "ScheduledDate", "Phone", "Score"]);
        assert_eq!(t.rows, vec![(2, vec!["ann@x.com".to_string(), "2026-03-01".into(), "4155550100".into(), "42".into()])]);
    }

    /// A workbook a program wrote with formulas it never calculated (XlsxWriter, openpyxl and
    /// rust_xlsxwriter mark it `fullCalcOnLoad`): its formula cells hold 0 or nothing until a
    /// spreadsheet opens it, and read so they were stored as a department of "0" or none. Each
    /// reads as `#NOT-CALCULATED!`, which validation refuses saying what to do; the same file
    /// saved by LibreOffice reads its results.
    #[test]
    fn formulas_of_a_workbook_never_calculated_read_as_not_calculated_not_as_their_placeholder() {
        let fixture = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/real/formula-cells.xlsx")).unwrap();
        let rows = |t: Table| t.rows.into_iter().map(|(_, r)| r).collect::<Vec<_>>();
        let ann = |d: &str, c: &str| vec!["ann@acme.example.com".to_string(), d.into(), c.into()];
        let bob = |c: &str| vec!["bob@acme.example.com".to_string(), "Ops".into(), c.into()];
        assert_eq!(rows(decode(&fixture).unwrap()), [ann("SALES", "42"), bob("43")], "saved by LibreOffice: calculated");
        let never = edit_part(&fixture, "xl/workbook.xml", |x| x.replace("<calcPr ", r#"<calcPr fullCalcOnLoad="1" "#));
        assert_eq!(rows(decode(&never).unwrap()), [ann(NOT_CALCULATED, NOT_CALCULATED), bob(NOT_CALCULATED)]);
        // openpyxl's shape: a formula and no value at all, in a cell without a value type.
        let openpyxl = edit_part(&never, "xl/worksheets/sheet1.xml", |x| {
            x.replace(r#"<v>SALES</v>"#, "")
                .replace(r#"<c r="C3" s="0" t="n"><f aca="false">C2+1</f><v>43</v></c>"#, r#"<c r="C3"><f>C2+1</f><v></v></c>"#)
        });
        assert_eq!(rows(decode(&openpyxl).unwrap()), [ann(NOT_CALCULATED, NOT_CALCULATED), bob(NOT_CALCULATED)]);
        // rust_xlsxwriter, as a roster generator would use it.
        let mut wb = Workbook::new();
        let ws = wb.add_worksheet();
        ws.write_string(0, 0, "Email").unwrap();
        ws.write_string(0, 1, "Department").unwrap();
        ws.write_string(1, 0, "ann@x.com").unwrap();
        ws.write_formula(1, 1, Formula::new(r#"=UPPER("sales")"#)).unwrap();
        assert_eq!(rows(decode(&wb.save_to_buffer().unwrap()).unwrap()), [vec!["ann@x.com".to_string(), NOT_CALCULATED.into()]]);
        // Bounded: past the limit (4,194,304 in use) the file is refused.
        let within = |xlsx: &[u8], n| merges::xlsx_within(&mut zip::ZipArchive::new(Cursor::new(xlsx)).unwrap(), 10, n);
        assert_eq!(within(&never, 3).unwrap().uncalculated["Staff"], [(1, 1), (1, 2), (2, 2)]);
        assert_eq!(within(&never, 2).unwrap_err().to_string(), FileError::TooManyUncalculated { limit: 2 }.to_string());
    }

    /// What Excel shows (and writes when it saves as CSV) is what is read: an employee number
    /// typed as 000123 in a `000000` column is stored as the number 123 with that format.
    #[test]
    fn xlsx_numbers_read_as_their_number_format_shows_them() {
        let mut wb = Workbook::new();
        let ws = wb.add_worksheet();
        let cells: [(&str, f64, &str, &str); 9] = [
            ("EmployeeId", 123.0, "000000", "000123"),
            ("Zip", 2134.0, "00000", "02134"),
            ("Phone", 4155550100.0, "(000) 000-0000", "(415) 555-0100"),
            ("Share", 0.125, "0.0%", "12.5%"),
            ("Budget", 1234.5, "#,##0.00", "1,234.50"),
            ("Code", 42.0, "\"EMP-\"0000", "EMP-0042"),
            // General, text and formats not shown exactly keep the value as typed.
            ("Plain", 2.5, "General", "2.5"),
            ("Text", 7.0, "@", "7"),
            ("Sci", 1234.0, "0.00E+00", "1234"),
        ];
        for (c, (header, value, code, _)) in cells.iter().enumerate() {
            ws.write_string(0, c as u16, *header).unwrap();
            ws.write_number_with_format(1, c as u16, *value, &XFormat::new().set_num_format(*code)).unwrap();
        }
        let t = decode(&wb.save_to_buffer().unwrap()).unwrap();
        let expected: Vec<String> = cells.iter().map(|c| c.3.to_string()).collect();
        assert_eq!(t.rows, vec![(2, expected)]);
    }

    /// An id typed into a number cell keeps 15 digits: written out in full (under General or a
    /// `0` format alike) it was a made-up id; it reads as a spreadsheet shows it in General, which
    /// validation refuses by name. A 16-digit id a program wrote, its last digit not a 0, is exact.
    /// A sum the spreadsheet shows as 0.3 was read as the double's 0.30000000000000004.
    #[test]
    fn fractions_read_with_the_15_digits_a_spreadsheet_shows() {
        assert_eq!(float_text(0.1 + 0.2), "0.3");
        assert_eq!(float_text(1.005), "1.005");
        assert_eq!(float_text(-2.5), "-2.5");
        assert_eq!(float_text(123456.789012345), "123456.789012345");
        assert_eq!(float_text(1.0 / 3.0), "0.333333333333333");
        assert_eq!(float_text(4155550100.0), "4155550100");
    }

    #[test]
    fn xlsx_numbers_past_15_digits_read_in_spreadsheet_form_not_as_made_up_digits() {
        let mut wb = Workbook::new();
        let ws = wb.add_worksheet();
        ws.write_string(0, 0, "Id").unwrap();
        ws.write_string(0, 1, "Phone").unwrap();
        ws.write_number(1, 0, 1234567890123456789.0).unwrap();
        ws.write_number_with_format(1, 1, 1234567890123450.0, &XFormat::new().set_num_format("0")).unwrap();
        ws.write_number(2, 0, 999_999_999_999_999.0).unwrap();
        ws.write_number(2, 1, -1e300).unwrap();
        ws.write_number(3, 0, 1234567890123456.0).unwrap();
        ws.write_number_with_format(3, 1, 9_007_199_254_740_993.0, &XFormat::new().set_num_format("0")).unwrap();
        let t = decode(&wb.save_to_buffer().unwrap()).unwrap();
        assert_eq!(t.rows[0].1, vec!["1.23456789012346E+18".to_string(), "1.23456789012345E+15".into()]);
        assert_eq!(t.rows[1].1, vec!["999999999999999".to_string(), "-1E+300".into()], "15 digits are exact");
        assert_eq!(t.rows[2].1, vec!["1234567890123456".to_string(), "9.00719925474099E+15".into()], "past 2^53 nothing is exact");
    }

    /// A workbook whose styles declare a huge format code, or thousands of distinct ones, reads
    /// its numbers plainly past the bounds instead of building a renderer for each.
    #[test]
    fn xlsx_hostile_number_formats_fall_back_to_the_plain_value() {
        let mut wb = Workbook::new();
        let ws = wb.add_worksheet();
        ws.write_string(0, 0, "Id").unwrap();
        ws.write_number_with_format(1, 0, 5.0, &XFormat::new().set_num_format("0".repeat(5_000))).unwrap();
        for r in 2..1_200u32 {
            ws.write_number_with_format(r, 0, f64::from(r), &XFormat::new().set_num_format(format!("\"{r}-\"0000"))).unwrap();
        }
        let t = decode(&wb.save_to_buffer().unwrap()).unwrap();
        assert_eq!(t.rows[0].1, vec!["5".to_string()], "a 5,000-digit code is not rendered");
        assert_eq!(t.rows[1].1, vec!["2-0002".to_string()]);
        // Distinct codes past the bound: the plain value.
        let last = &t.rows.last().unwrap().1[0];
        assert_eq!(last, "1199");
        let rendered = t.rows.iter().filter(|(_, r)| r[0].contains('-')).count();
        assert!((1_000..=CellFormats::MAX_FORMATS).contains(&rendered), "{rendered}");
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

    /// Merged ranges are bounded: a part declaring more than a roster could (each `<mergeCell>`
    /// kept is 12 bytes; 40 million fit in the unzipped limit) is refused, and a range down a
    /// whole column fills only the rows with data.
    #[test]
    fn merged_ranges_are_bounded_and_a_range_down_a_whole_column_adds_no_rows() {
        let mut wb = Workbook::new();
        let ws = wb.add_worksheet();
        for (r, row) in [["Email", "Department"], ["a@x.com", "Sales"], ["b@x.com", ""], ["c@x.com", ""]].iter().enumerate() {
            for (c, v) in row.iter().enumerate().filter(|(_, v)| !v.is_empty()) {
                ws.write_string(r as u32, c as u16, *v).unwrap();
            }
        }
        let plain = wb.save_to_buffer().unwrap();
        let with = |merges: String| {
            edit_part(&plain, "xl/worksheets/sheet1.xml", |xml| {
                xml.replace("</sheetData>", &format!("</sheetData><mergeCells>{merges}</mergeCells>"))
            })
        };
        let whole = decode(&with(r#"<mergeCell ref="B2:B1048576"/><mergeCell ref="nonsense"/><mergeCell/>"#.into())).unwrap();
        let dept: Vec<&str> = whole.rows.iter().map(|(_, r)| r[1].as_str()).collect();
        assert_eq!(dept, ["Sales", "Sales", "Sales"], "{:?}", whole.rows);
        // The bound, at 10 here (1,048,576 in use: 12 MB).
        let within = |xlsx: Vec<u8>| merges::xlsx_within(&mut zip::ZipArchive::new(Cursor::new(xlsx)).unwrap(), 10, 10).map(|s| s.merged);
        let many = within(with(r#"<mergeCell ref="C2:C3"/>"#.repeat(11))).unwrap_err();
        assert_eq!(many.to_string(), FileError::TooManyMerged { limit: 10 }.to_string());
        assert_eq!(within(with(r#"<mergeCell ref="C2:C3"/>"#.repeat(10))).unwrap()["Sheet1"].len(), 10);
        // Sheets naming one part share its ranges, each copy counted against the bound.
        let shared = edit_part(&with(r#"<mergeCell ref="C2:C3"/>"#.repeat(4)), "xl/workbook.xml", |x| {
            let one = r#"<sheet name="Sheet1" sheetId="1" r:id="rId1"/>"#;
            assert!(x.contains(one), "{x}");
            x.replace(one, &format!("{one}{}{}", one.replace("Sheet1", "Two"), one.replace("Sheet1", "Three")))
        });
        assert_eq!(within(shared.clone()).unwrap_err().to_string(), FileError::TooManyMerged { limit: 10 }.to_string(), "12 kept > 10");
        let ok = merges::xlsx_within(&mut zip::ZipArchive::new(Cursor::new(shared)).unwrap(), 12, 10).unwrap().merged;
        assert_eq!((ok["Sheet1"].len(), ok["Two"].len(), ok["Three"].len()), (4, 4, 4));
        // Across columns only, any number: none is kept.
        assert!(within(with(r#"<mergeCell ref="C2:D2"/>"#.repeat(100))).unwrap().is_empty());
        let err = FileError::TooManyMerged { limit: merges::MAX_MERGED_RANGES }.to_string();
        assert!(err.contains("more than 1,048,576 ranges of cells merged down a column"), "{err}");
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
        // Instructions left out (the roster rule), what remains is blank.
        assert_eq!(decode_all_with(&one.save_to_buffer().unwrap(), |n| n == "Instructions"), Err(FileError::NoSheet));

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
        assert_eq!((tables[0].sheet.as_deref(), tables[0].index), (Some("Sheet3"), 0));
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
