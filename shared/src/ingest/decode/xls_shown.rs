//! What the numbers of an XLS (BIFF8) workbook show: calamine keeps of each XLS number format only
//! whether it is a date, so `000123` arrived as `123`. The workbook stream's FORMAT and XF
//! records give each cell's format code, its cell records (NUMBER, RK, MULRK, FORMULA) the cells;
//! `numfmt` renders the value. Knows BIFF, not rosters.
//!
//! Bounded: at most `MAX_CELLS` number cells are looked at (past that, none: every number reads
//! plain, as before), each 16 bytes.

use super::numfmt::NumberFormat;
use std::collections::HashMap;

/// More number cells than 2,097,152 (32 MB here while a sheet is read) is no roster; the file
/// reads plain.
const MAX_CELLS: usize = 1 << 21;
/// A cell's format when it has none to render (General, a date, a format not shown exactly).
const PLAIN: u16 = u16::MAX;
/// As for XLSX (`workbook::CellFormats`): past this many distinct codes, or this length, plain.
const MAX_FORMATS: usize = 1024;
const MAX_CODE_BYTES: usize = 1024;

/// A number cell whose format renders: where, which format, and its value (a cell is shown only
/// if calamine read the same value there).
#[derive(Debug, Clone, Copy)]
struct Cell {
    row: u32,
    col: u16,
    format: u16,
    value: f64,
}

/// The formatted number cells of each sheet, in BoundSheet order (calamine's `sheet_names`).
#[derive(Debug, Default)]
pub struct XlsShown {
    sheets: Vec<Vec<Cell>>,
    formats: Vec<NumberFormat>,
    /// Each sheet's hidden rows and columns, in the same order.
    hidden: Vec<super::hidden::Lines>,
}

/// (type, data) of each whole record of a BIFF stream from `at` (the guard counts cells with it too).
pub(super) fn records(stream: &[u8], at: usize) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = stream.get(at..).unwrap_or_default();
    std::iter::from_fn(move || {
        let typ = u16::from_le_bytes([*rest.first()?, *rest.get(1)?]);
        let len = u16::from_le_bytes([*rest.get(2)?, *rest.get(3)?]) as usize;
        let data = rest.get(4..4 + len)?;
        rest = &rest[4 + len..];
        Some((typ, data))
    })
}

/// The records of the sheet whose substream starts at `at`, as calamine reads a sheet: after its
/// BOF, up to its EOF, the substreams nested in it (embedded charts) skipped.
pub(super) fn sheet_records(stream: &[u8], at: usize) -> impl Iterator<Item = (u16, &[u8])> {
    let mut all = records(stream, at);
    let (mut seen_bof, mut depth) = (false, 0usize);
    std::iter::from_fn(move || {
        loop {
            let (typ, d) = all.next()?;
            match typ {
                0x0809 if depth > 0 || seen_bof => depth += 1,
                0x0809 => seen_bof = true,
                0x000A if depth == 0 => return None,
                0x000A => depth -= 1,
                _ if depth == 0 => return Some((typ, d)),
                _ => {}
            }
        }
    })
}

fn u16_at(d: &[u8], i: usize) -> Option<u16> {
    d.get(i..i + 2).map(|b| u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(d: &[u8], i: usize) -> Option<u32> {
    d.get(i..i + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn f64_at(d: &[u8], i: usize) -> Option<f64> {
    d.get(i..i + 8).map(|b| f64::from_le_bytes(b.try_into().unwrap_or_default()))
}

/// An RK number (MS-XLS 2.5.217): 30 bits of an integer or of a double's high bits, maybe / 100.
fn rk(v: u32) -> f64 {
    let n = if v & 2 != 0 { f64::from((v as i32) >> 2) } else { f64::from_bits(u64::from(v & 0xFFFF_FFFC) << 32) };
    if v & 1 != 0 { n / 100.0 } else { n }
}

/// Excel's built-in number formats that are not dates (ECMA-376 18.8.30); an XLS names them by id
/// without writing their code.
fn builtin(id: u16) -> Option<&'static str> {
    Some(match id {
        1 => "0",
        2 => "0.00",
        3 => "#,##0",
        4 => "#,##0.00",
        9 => "0%",
        10 => "0.00%",
        37 => "#,##0 ;(#,##0)",
        38 => "#,##0 ;[Red](#,##0)",
        39 => "#,##0.00;(#,##0.00)",
        40 => "#,##0.00;[Red](#,##0.00)",
        _ => return None,
    })
}

/// Each sheet's hidden rows (ROW records with fDyZero) and columns (COLINFO with fHidden), by
/// the sheet's place among the BoundSheet records.
fn hidden_lines(stream: &[u8]) -> Vec<super::hidden::Lines> {
    use super::guards::MAX_SHEET_COLUMNS;
    let sheets: Vec<usize> = records(stream, 0)
        .take_while(|(typ, _)| *typ != 0x000A)
        .filter(|(typ, d)| *typ == 0x0085 && d.len() >= 4)
        .map(|(_, d)| u32_at(d, 0).map_or(usize::MAX, |p| p as usize))
        .collect();
    let mut total = 0usize;
    sheets
        .into_iter()
        .map(|at| {
            let mut lines = super::hidden::Lines::default();
            for (typ, d) in sheet_records(stream, at) {
                if total >= super::hidden::MAX_HIDDEN_RANGES {
                    break;
                }
                match (typ, u16_at(d, 0), u16_at(d, 2)) {
                    (0x0208, Some(row), _) if u16_at(d, 12).is_some_and(|g| g & 0x0020 != 0) => {
                        lines.rows.push((u32::from(row), u32::from(row)));
                        total += 1;
                    }
                    (0x007D, Some(first), Some(last)) if u16_at(d, 8).is_some_and(|g| g & 0x0001 != 0) && first <= last => {
                        lines.cols.push((u32::from(first), u32::from(last).min(MAX_SHEET_COLUMNS - 1)));
                        total += 1;
                    }
                    _ => {}
                }
            }
            lines
        })
        .collect()
}

/// A FORMAT record's (id, code): BIFF8's XLUnicodeString, Latin-1 or UTF-16LE, whole in the
/// record (a code cut by a CONTINUE record is left out: its numbers read plain). Custom ids only,
/// as calamine reads them.
fn format_record(d: &[u8]) -> Option<(u16, String)> {
    let id = u16_at(d, 0)?;
    if !matches!(id, 5..=8 | 23..=26 | 41..=44 | 63..=66 | 164..=382) {
        return None;
    }
    let chars = usize::from(u16_at(d, 2)?);
    let wide = d.get(4)? & 1 != 0;
    let bytes = d.get(5..5 + if wide { chars * 2 } else { chars })?;
    let code = if wide {
        char::decode_utf16(bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]))).collect::<Result<String, _>>().ok()?
    } else {
        bytes.iter().map(|&b| char::from(b)).collect()
    };
    Some((id, code))
}

impl XlsShown {
    /// Read the workbook stream. Not BIFF8 (BIFF5 and older write other records), or more
    /// formatted cells than `MAX_CELLS`: nothing, and every number reads plain.
    pub fn scan(stream: &[u8]) -> Self {
        let mut shown = Self::read(stream).unwrap_or_default();
        shown.hidden = hidden_lines(stream);
        shown
    }

    /// The hidden rows and columns of the sheet at place `sheet`.
    pub fn hidden(&self, sheet: usize) -> super::hidden::Lines {
        self.hidden.get(sheet).cloned().unwrap_or_default()
    }

    fn read(stream: &[u8]) -> Option<Self> {
        let mut globals = records(stream, 0);
        let (typ, bof) = globals.next()?;
        if typ != 0x0809 || u16_at(bof, 0)? != 0x0600 {
            return None;
        }
        let (mut codes, mut xfs, mut sheets) = (HashMap::new(), Vec::new(), Vec::new());
        for (typ, d) in globals {
            match typ {
                // A later FORMAT of an id replaces an earlier one, as in calamine; one not read
                // whole leaves the id without a code (its numbers read plain).
                0x041E => match (format_record(d), u16_at(d, 0)) {
                    (Some((id, code)), _) => {
                        codes.insert(id, code);
                    }
                    (None, Some(id)) => {
                        codes.remove(&id);
                    }
                    (None, None) => {}
                },
                // XF: its format id; the cells name their XF by its place among these.
                0x00E0 => xfs.push(u16_at(d, 2).unwrap_or(0)),
                // BoundSheet8: where the sheet's substream starts.
                0x0085 => sheets.push(u32_at(d, 0).map_or(usize::MAX, |p| p as usize)),
                0x000A => break,
                _ => {}
            }
        }
        // Each XF's format, parsed once per distinct id: `None` for General, dates (calamine
        // reads them) and anything `numfmt` does not show exactly.
        let mut formats = Vec::new();
        let mut by_id: HashMap<u16, Option<u16>> = HashMap::new();
        let by_xf: Vec<Option<u16>> = xfs
            .iter()
            .map(|&id| {
                *by_id.entry(id).or_insert_with(|| {
                    let code = codes.get(&id).map(String::as_str).or_else(|| builtin(id))?;
                    if code.len() > MAX_CODE_BYTES || formats.len() >= MAX_FORMATS {
                        return None;
                    }
                    let parsed = NumberFormat::parse(code)?;
                    formats.push(parsed);
                    Some((formats.len() - 1) as u16)
                })
            })
            .collect();
        let mut kept = 0usize;
        let mut shown = Vec::new();
        for at in sheets {
            let mut cells = Vec::new();
            // Every number cell, formatted or not: a later record of a cell replaces an earlier.
            let add = |cells: &mut Vec<Cell>, row: u16, col: u16, xf: u16, value: f64| {
                let format = by_xf.get(usize::from(xf)).copied().flatten().unwrap_or(PLAIN);
                cells.push(Cell { row: u32::from(row), col, format, value });
            };
            for (typ, d) in sheet_records(stream, at) {
                if kept + cells.len() > MAX_CELLS {
                    return None;
                }
                let head = || Some((u16_at(d, 0)?, u16_at(d, 2)?, u16_at(d, 4)?));
                match typ {
                    // NUMBER
                    0x0203 => {
                        if let (Some((row, col, xf)), Some(v)) = (head(), f64_at(d, 6)) {
                            add(&mut cells, row, col, xf, v);
                        }
                    }
                    // RK
                    0x027E => {
                        if let (Some((row, col, xf)), Some(v)) = (head(), u32_at(d, 6)) {
                            add(&mut cells, row, col, xf, rk(v));
                        }
                    }
                    // MULRK: (XF, RK) for each column from the first on, the last column at the end.
                    0x00BD if d.len() >= 6 => {
                        let (Some(row), Some(first)) = (u16_at(d, 0), u16_at(d, 2)) else { continue };
                        for (k, pair) in d[4..d.len() - 2].chunks_exact(6).enumerate() {
                            // Past column 65535 (calamine's u16 arithmetic wraps there): plain.
                            let (Some(xf), Some(v), Some(col)) =
                                (u16_at(pair, 0), u32_at(pair, 2), u16::try_from(k).ok().and_then(|k| first.checked_add(k)))
                            else {
                                continue;
                            };
                            add(&mut cells, row, col, xf, rk(v));
                        }
                    }
                    // FORMULA: a number result unless its last two bytes are 0xFFFF.
                    0x0006 => {
                        if let (Some((row, col, xf)), Some(0..=0xFFFE)) = (head(), u16_at(d, 12))
                            && let Some(v) = f64_at(d, 6)
                        {
                            add(&mut cells, row, col, xf, v);
                        }
                    }
                    _ => {}
                }
            }
            kept += cells.len();
            if kept > MAX_CELLS {
                return None;
            }
            // The last record of a cell wins, as in calamine's range.
            cells.sort_by_key(|c| (c.row, c.col));
            cells.reverse();
            cells.dedup_by_key(|c| (c.row, c.col));
            cells.reverse();
            cells.retain(|c| c.format != PLAIN);
            cells.shrink_to_fit();
            shown.push(cells);
        }
        Some(Self { sheets: shown, formats, hidden: Vec::new() })
    }

    /// `value` at (`row`, `col`) of the `sheet`th sheet as its format shows it; `None` when it is
    /// General or not shown exactly, or the stream holds another value there.
    pub fn render(&self, sheet: usize, row: u32, col: u32, value: f64) -> Option<String> {
        let cells = self.sheets.get(sheet)?;
        let col = u16::try_from(col).ok()?;
        let cell = cells.binary_search_by_key(&(row, col), |c| (c.row, c.col)).ok().map(|i| cells[i])?;
        if cell.value != value {
            return None;
        }
        let format = self.formats.get(usize::from(cell.format))?;
        // A defect in the renderer costs the cell its shown form, not the file.
        std::panic::catch_unwind(|| format.render(value)).ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(typ: u16, data: &[u8]) -> Vec<u8> {
        [&typ.to_le_bytes()[..], &(data.len() as u16).to_le_bytes(), data].concat()
    }
    fn bof(version: u16) -> Vec<u8> {
        rec(0x0809, &[&version.to_le_bytes()[..], &[0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]].concat())
    }
    fn format(id: u16, code: &str, wide: bool) -> Vec<u8> {
        let chars: Vec<u8> = if wide { code.encode_utf16().flat_map(u16::to_le_bytes).collect() } else { code.bytes().collect() };
        rec(0x041E, &[&id.to_le_bytes()[..], &(code.chars().count() as u16).to_le_bytes(), &[u8::from(wide)], &chars].concat())
    }
    fn xf(id: u16) -> Vec<u8> {
        rec(0x00E0, &[&[0, 0][..], &id.to_le_bytes(), &[0; 16]].concat())
    }
    fn cell(row: u16, col: u16, xf: u16) -> Vec<u8> {
        [row.to_le_bytes(), col.to_le_bytes(), xf.to_le_bytes()].concat()
    }
    fn number(row: u16, col: u16, xf: u16, v: f64) -> Vec<u8> {
        rec(0x0203, &[cell(row, col, xf), v.to_le_bytes().to_vec()].concat())
    }
    fn rk_int(v: i32) -> u32 {
        ((v << 2) | 2) as u32
    }
    fn mulrk(row: u16, first: u16, cells: &[(u16, u32)]) -> Vec<u8> {
        let mut d = [row.to_le_bytes(), first.to_le_bytes()].concat();
        for (xf, v) in cells {
            d.extend(xf.to_le_bytes());
            d.extend(v.to_le_bytes());
        }
        d.extend((first + cells.len() as u16 - 1).to_le_bytes());
        rec(0x00BD, &d)
    }
    fn formula(row: u16, col: u16, xf: u16, result: [u8; 8]) -> Vec<u8> {
        rec(0x0006, &[cell(row, col, xf), result.to_vec(), vec![0; 8]].concat())
    }
    const EOF: [u8; 4] = [0x0A, 0, 0, 0];

    /// A workbook stream: globals (BIFF8 unless `version`), then one sheet of `sheet` records.
    fn book(version: u16, globals: &[Vec<u8>], sheet: &[Vec<u8>]) -> Vec<u8> {
        let head: Vec<u8> = std::iter::once(bof(version)).chain(globals.iter().cloned()).collect::<Vec<_>>().concat();
        let at = head.len() + 13 + EOF.len(); // BoundSheet8: a 4-byte header, 9 bytes of data
        let bound = rec(0x0085, &[&(at as u32).to_le_bytes()[..], &[0, 0, 1, 0], b"S"].concat());
        [head, bound, EOF.to_vec(), bof(version), sheet.concat(), EOF.to_vec()].concat()
    }

    fn globals() -> Vec<Vec<u8>> {
        // XF 0 General, 1 a custom 000000, 2 built-in #,##0, 3 a UTF-16 custom code, 4 a date.
        vec![
            format(164, "000000", false),
            format(165, "\"№\"0", true),
            format(166, "yyyy-mm-dd", false),
            xf(0),
            xf(164),
            xf(3),
            xf(165),
            xf(166),
        ]
    }

    #[test]
    fn each_cell_record_kind_is_shown_under_its_format() {
        let mut string_result = [0u8; 8];
        string_result[6..].copy_from_slice(&[0xFF, 0xFF]);
        let sheet = [
            number(0, 0, 1, 123.0),
            rec(0x027E, &[cell(1, 0, 1), rk_int(124).to_le_bytes().to_vec()].concat()),
            mulrk(2, 0, &[(1, rk_int(125)), (2, rk_int(1_234_567)), (3, rk_int(7)), (0, rk_int(8))]),
            formula(3, 0, 1, 126f64.to_le_bytes()),
            formula(4, 0, 1, string_result),
            number(5, 0, 4, 45000.0),
            // An embedded chart's records are not the sheet's.
            bof(0x0600),
            number(6, 0, 1, 9.0),
            EOF.to_vec(),
            number(7, 0, 1, 0.5),
        ];
        let shown = XlsShown::scan(&book(0x0600, &globals(), &sheet));
        let at = |row: u32, col: u32, v: f64| shown.render(0, row, col, v);
        assert_eq!(at(0, 0, 123.0).as_deref(), Some("000123"));
        assert_eq!(at(1, 0, 124.0).as_deref(), Some("000124"));
        assert_eq!(at(2, 0, 125.0).as_deref(), Some("000125"));
        assert_eq!(at(2, 1, 1_234_567.0).as_deref(), Some("1,234,567"));
        assert_eq!(at(2, 2, 7.0).as_deref(), Some("№7"), "a UTF-16 code");
        assert_eq!(at(2, 3, 8.0), None, "General: plain");
        assert_eq!(at(3, 0, 126.0).as_deref(), Some("000126"), "a formula's number");
        assert_eq!(at(4, 0, 0.0), None, "a formula's text");
        assert_eq!(at(5, 0, 45000.0), None, "a date is calamine's");
        assert_eq!(at(6, 0, 9.0), None, "the chart's record");
        assert_eq!(at(7, 0, 0.5).as_deref(), Some("000001"), "rounded as Excel shows it");
        assert_eq!(at(0, 0, 5.0), None, "another value at that place: plain");
        assert_eq!(shown.render(1, 0, 0, 123.0), None, "no such sheet");
    }

    #[test]
    fn hostile_streams_read_plain_and_never_panic() {
        let one = [number(0, 0, 1, 123.0)];
        // BIFF5 writes its strings otherwise: not read.
        assert_eq!(XlsShown::scan(&book(0x0500, &globals(), &one)).render(0, 0, 0, 123.0), None);
        // A code longer than its record, an XF past the table, a sheet past the stream's end.
        let mut cut = format(164, "000000", false);
        cut.truncate(cut.len() - 2);
        cut[2] -= 2;
        assert_eq!(XlsShown::scan(&book(0x0600, &[cut, xf(0), xf(164)], &one)).render(0, 0, 0, 123.0), None);
        assert_eq!(XlsShown::scan(&book(0x0600, &globals(), &[number(0, 0, 900, 123.0)])).render(0, 0, 0, 123.0), None);
        let far = [bof(0x0600), rec(0x0085, &[u32::MAX.to_le_bytes(), [0, 0, 1, 0]].concat()), EOF.to_vec()].concat();
        assert_eq!(XlsShown::scan(&far).render(0, 0, 0, 1.0), None);
        // Records cut short, empty and odd-length MULRKs, a stream cut anywhere.
        let odd = book(0x0600, &globals(), &[rec(0x00BD, &[0, 0, 0]), rec(0x00BD, &[0; 9]), rec(0x0203, &[0; 5]), rec(0x0006, &[0; 13])]);
        assert_eq!(XlsShown::scan(&odd).render(0, 0, 0, 0.0), None);
        let whole = book(0x0600, &globals(), &one);
        for cut in 0..whole.len() {
            let _ = XlsShown::scan(&whole[..cut]).render(0, 0, 0, 123.0);
        }
        // The last record of a cell wins, as in calamine's range.
        let twice = XlsShown::scan(&book(0x0600, &globals(), &[number(0, 0, 0, 123.0), number(0, 0, 1, 123.0)]));
        assert_eq!(twice.render(0, 0, 0, 123.0).as_deref(), Some("000123"));
        let twice = XlsShown::scan(&book(0x0600, &globals(), &[number(0, 0, 1, 123.0), number(0, 0, 0, 123.0)]));
        assert_eq!(twice.render(0, 0, 0, 123.0), None);
    }

    /// Past `MAX_CELLS` number cells nothing is kept (32 MB at most), and the file reads plain.
    #[test]
    fn more_formatted_cells_than_the_cap_read_plain() {
        let run: Vec<(u16, u32)> = vec![(1, rk_int(1)); 1000];
        let rows = MAX_CELLS / run.len() + 1;
        let sheet: Vec<Vec<u8>> = (0..rows).map(|r| mulrk(r as u16, 0, &run)).collect();
        assert_eq!(XlsShown::scan(&book(0x0600, &globals(), &sheet)).render(0, 0, 0, 1.0), None);
        let fewer: Vec<Vec<u8>> = sheet[..rows - 2].to_vec();
        assert_eq!(XlsShown::scan(&book(0x0600, &globals(), &fewer)).render(0, 0, 0, 1.0).as_deref(), Some("000001"));
    }
}
