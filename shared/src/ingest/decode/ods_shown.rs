//! What an ODS shows for its whole numbers: LibreOffice keeps each cell's shown text beside its
//! value (`office:value="123"` and `<text:p>000123</text:p>` under a `000000` style); calamine
//! reads the value only. The shown text is kept when it holds exactly the value's digits with
//! leading zeros or literals around them (`000123`, `(415) 555-0100`, `1,234`); anything that
//! shows other digits (rounded, scaled, a narrow column's `###`) reads as the value.

use super::guards::{MAX_SHEET_COLUMNS, MAX_SHEET_ROWS};
use quick_xml::events::{BytesStart, Event};

/// A shown text longer than this is not a number's.
const MAX_SHOWN_BYTES: usize = 256;

/// Per table (its `table:name`), the rows holding a cell whose shown text is kept.
#[derive(Debug, Default)]
pub(super) struct OdsShown {
    tables: Vec<(String, Vec<Span>)>,
    /// Per table, its ranges merged down (`table:number-rows-spanned`), at most
    /// `merges::MAX_MERGED_RANGES` in all; `too_many` past it.
    merged: Vec<(String, Vec<super::merges::Down>)>,
    pub(super) too_many_merged: bool,
    /// Per table, its hidden rows and columns (`table:visibility` collapse or filter).
    hidden: Vec<(String, super::hidden::Lines)>,
}

/// A row element: rows `first..first + count` (repeated), and its kept cells as
/// (first column, columns it repeats over, shown text).
#[derive(Debug)]
pub(super) struct Span {
    first: u64,
    count: u64,
    cells: Vec<(u64, u64, String)>,
}

impl OdsShown {
    /// The shown text of the cell at (`row`, `col`) of sheet `sheet`, positions counted as
    /// calamine counts them (repeats expanded).
    #[cfg(test)]
    fn get(&self, sheet: &str, row: u64, col: u64) -> Option<&str> {
        Self::at(self.table(sheet)?, row, col)
    }

    /// A sheet's kept cells, looked up once per sheet. calamine keeps the last table of a name.
    pub(super) fn table(&self, sheet: &str) -> Option<&[Span]> {
        self.tables.iter().rev().find(|(name, _)| name == sheet).map(|(_, spans)| spans.as_slice())
    }

    /// The shown text at (`row`, `col`) of a sheet's kept cells.
    pub(super) fn at(spans: &[Span], row: u64, col: u64) -> Option<&str> {
        let span = &spans[spans.partition_point(|s| s.first + s.count <= row)..].first().filter(|s| s.first <= row)?;
        let cells = &span.cells;
        let (start, _, text) = cells[cells.partition_point(|c| c.0 + c.1 <= col)..].first()?;
        (*start <= col).then_some(text.as_str())
    }

    /// A sheet's ranges merged down (the last table of the name, as calamine keeps).
    pub(super) fn merged(&self, sheet: &str) -> Vec<super::merges::Down> {
        self.merged.iter().rev().find(|(name, _)| name == sheet).map(|(_, d)| d.clone()).unwrap_or_default()
    }

    /// A sheet's hidden rows and columns (the last table of the name).
    pub(super) fn hidden(&self, sheet: &str) -> super::hidden::Lines {
        self.hidden.iter().rev().find(|(name, _)| name == sheet).map(|(_, h)| h.clone()).unwrap_or_default()
    }

    /// Read from `content.xml`, streamed: only the kept cells are held.
    pub(super) fn scan<B: std::io::BufRead>(input: B) -> Result<Self, String> {
        let mut xml = quick_xml::Reader::from_reader(input);
        let mut buf = Vec::new();
        let mut shown = OdsShown::default();
        let mut table: Option<(String, Vec<Span>)> = None;
        let (mut row, mut row_repeat, mut col) = (0u64, 1u64, 0u64);
        let mut kept: Vec<(u64, u64, String)> = Vec::new();
        let mut cell: Option<Cell> = None;
        let (mut down, mut merged_total) = (Vec::new(), 0usize);
        // Hidden rows and columns of the table being read, the columns declared so far, and the
        // ranges recorded in all.
        let (mut hidden, mut declared_cols, mut hidden_total) = (super::hidden::Lines::default(), 0u64, 0usize);
        let is_hidden = |e: &BytesStart<'_>| matches!(attr(e, "table:visibility").as_deref(), Some("collapse" | "filter"));
        // A cell spanning rows starts a range merged down at its place.
        let mut spanned = |e: &BytesStart<'_>, row: u64, col: u64, down: &mut Vec<super::merges::Down>, too_many: &mut bool| {
            let n = count(e, "table:number-rows-spanned");
            if n > 1 && row < u64::from(MAX_SHEET_ROWS) && col < u64::from(MAX_SHEET_COLUMNS) {
                if merged_total >= super::merges::MAX_MERGED_RANGES {
                    *too_many = true;
                    return;
                }
                merged_total += 1;
                // `count` reads an unreadable number as the largest: the range ends at the grid's end.
                let last = row.saturating_add(n - 1).min(u64::from(MAX_SHEET_ROWS) - 1);
                down.push(super::merges::Down { col: col as u32, first: row as u32, last: last as u32 });
            }
        };
        loop {
            buf.clear();
            let event = xml.read_event_into(&mut buf).map_err(|e| e.to_string())?;
            if let Some(c) = cell.as_mut() {
                match &event {
                    Event::Start(e) => {
                        c.depth += 1;
                        c.open(e, true);
                    }
                    Event::Empty(e) => c.open(e, false),
                    Event::Text(t) if c.annotation.is_none() => c.push(&t.xml10_content()),
                    // An entity (`&amp;`) in a number's text: not one this reads.
                    Event::GeneralRef(_) if c.annotation.is_none() => c.spoiled = true,
                    Event::End(_) if c.depth > 0 => {
                        if c.annotation == Some(c.depth) {
                            c.annotation = None;
                        }
                        c.depth -= 1;
                    }
                    Event::End(_) => {
                        let done = cell.take().unwrap_or_default();
                        let n = done.repeat.min(MAX_SHEET_COLUMNS as u64 - col);
                        if n > 0
                            && let Some(text) = done.kept()
                        {
                            kept.push((col, n, text));
                        }
                        col += n;
                    }
                    Event::Eof => return Err("its content ends inside a cell".into()),
                    _ => {}
                }
                continue;
            }
            match event {
                Event::Start(e) if e.name().as_ref() == "table:table" => {
                    let name = attr(&e, "table:name").unwrap_or_default();
                    table = Some((name, Vec::new()));
                    row = 0;
                    (hidden, declared_cols) = (super::hidden::Lines::default(), 0);
                }
                Event::Start(e) | Event::Empty(e) if e.name().as_ref() == "table:table-column" => {
                    let n = count(&e, "table:number-columns-repeated").min((MAX_SHEET_COLUMNS as u64).saturating_sub(declared_cols));
                    if n > 0 && is_hidden(&e) && hidden_total < super::hidden::MAX_HIDDEN_RANGES {
                        hidden.cols.push((declared_cols as u32, (declared_cols + n - 1) as u32));
                        hidden_total += 1;
                    }
                    declared_cols += n;
                }
                Event::End(e) if e.name().as_ref() == "table:table" => {
                    if let Some((name, _)) = &table {
                        shown.merged.push((name.clone(), std::mem::take(&mut down)));
                        shown.hidden.push((name.clone(), std::mem::take(&mut hidden)));
                    }
                    shown.tables.extend(table.take()); // kept when empty too: it hides an earlier table of its name
                }
                Event::Start(e) if e.name().as_ref() == "table:table-row" => {
                    (row_repeat, col) = (count(&e, "table:number-rows-repeated"), 0);
                    kept.clear();
                    let n = row_repeat.min((MAX_SHEET_ROWS as u64).saturating_sub(row));
                    if n > 0 && is_hidden(&e) && hidden_total < super::hidden::MAX_HIDDEN_RANGES {
                        hidden.rows.push((row as u32, (row + n - 1) as u32));
                        hidden_total += 1;
                    }
                }
                Event::End(e) if e.name().as_ref() == "table:table-row" => {
                    let n = row_repeat.min((MAX_SHEET_ROWS as u64).saturating_sub(row));
                    if let Some((_, spans)) = table.as_mut()
                        && n > 0
                        && !kept.is_empty()
                    {
                        spans.push(Span { first: row, count: n, cells: std::mem::take(&mut kept) });
                    }
                    row += n;
                }
                Event::Empty(e) if e.name().as_ref() == "table:table-row" => {
                    row += count(&e, "table:number-rows-repeated").min((MAX_SHEET_ROWS as u64).saturating_sub(row));
                }
                Event::Start(e) if matches!(e.name().as_ref(), "table:table-cell" | "table:covered-table-cell") => {
                    spanned(&e, row, col, &mut down, &mut shown.too_many_merged);
                    cell = Some(Cell::of(&e));
                }
                Event::Empty(e) if matches!(e.name().as_ref(), "table:table-cell" | "table:covered-table-cell") => {
                    spanned(&e, row, col, &mut down, &mut shown.too_many_merged);
                    col += count(&e, "table:number-columns-repeated").min(MAX_SHEET_COLUMNS as u64 - col);
                }
                Event::Eof => break,
                _ => {}
            }
        }
        Ok(shown)
    }
}

/// The cell being read.
#[derive(Default)]
struct Cell {
    repeat: u64,
    /// A whole number ≥ 0 of a `float` or `currency` cell.
    value: Option<f64>,
    text: String,
    paragraphs: u32,
    depth: usize,
    /// The depth of the `office:annotation` being skipped (a comment, not the cell's text).
    annotation: Option<usize>,
    spoiled: bool,
}

impl Cell {
    fn of(e: &BytesStart<'_>) -> Self {
        let typed = matches!(attr(e, "office:value-type").as_deref(), Some("float" | "currency"));
        let value = attr(e, "office:value").and_then(|v| v.trim().parse::<f64>().ok());
        let whole = value.filter(|v| typed && v.is_finite() && *v >= 0.0 && v.fract() == 0.0 && *v < 1e15);
        Cell { repeat: count(e, "table:number-columns-repeated"), value: whole, ..Cell::default() }
    }

    /// An element starts inside the cell (`start`: it has content, which ends at its `End`).
    fn open(&mut self, e: &BytesStart<'_>, start: bool) {
        if self.annotation.is_some() || self.value.is_none() {
            return;
        }
        match e.name().as_ref() {
            "office:annotation" if start => self.annotation = Some(self.depth),
            "office:annotation" => {}
            "text:p" => {
                if self.paragraphs > 0 {
                    self.push("\n");
                }
                self.paragraphs += 1;
            }
            "text:s" => self.push(&" ".repeat(usize::try_from(count(e, "text:c")).unwrap_or(usize::MAX).min(MAX_SHOWN_BYTES + 1))),
            "text:tab" => self.push("\t"),
            "text:line-break" => self.push("\n"),
            _ => {}
        }
    }

    fn push(&mut self, text: &str) {
        if self.value.is_none() || self.spoiled {
            return;
        }
        if self.text.len() + text.len() > MAX_SHOWN_BYTES {
            self.spoiled = true;
            return;
        }
        self.text.push_str(text);
    }

    /// The shown text, if it is the value's digits with leading zeros or literals around them.
    fn kept(self) -> Option<String> {
        let value = self.value.filter(|_| !self.spoiled)?;
        let plain = format!("{}", value as i64);
        (same_digits(&self.text, &plain) && self.text != plain && !self.text.chars().any(char::is_control)).then_some(self.text)
    }
}

/// `shown` holds exactly the digits of the whole number `plain`, leading zeros aside, with no
/// `.` or `,` between digits (`1.5` or a scaled `0.001` is not 15 or 1; `1,234` reads plain too,
/// as the same text is a decimal in another locale) and at least one digit (0 is not a blank or
/// an accounting `-`).
pub(super) fn same_digits(shown: &str, plain: &str) -> bool {
    let digits: String = shown.chars().filter(char::is_ascii_digit).collect();
    let b = shown.as_bytes();
    let separated =
        (1..b.len().saturating_sub(1)).any(|i| matches!(b[i], b'.' | b',') && b[i - 1].is_ascii_digit() && b[i + 1].is_ascii_digit());
    !separated
        && !digits.is_empty()
        && !plain.is_empty()
        && plain.bytes().all(|b| b.is_ascii_digit())
        && digits.trim_start_matches('0') == plain.trim_start_matches('0')
}

fn attr(e: &BytesStart<'_>, name: &str) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.as_ref() == name)
        .and_then(|a| quick_xml::escape::unescape(&a.value).ok().map(|v| v.into_owned()))
}

/// A repeat count as calamine reads it (absent: 1; unreadable: the largest).
fn count(e: &BytesStart<'_>, name: &str) -> u64 {
    attr(e, name).map_or(1, |v| v.trim().parse::<u64>().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(tables: &str) -> OdsShown {
        let xml = format!(
            r#"<?xml version="1.0"?><office:document-content xmlns:office="o" xmlns:table="t" xmlns:text="x"><office:body><office:spreadsheet>{tables}</office:spreadsheet></office:body></office:document-content>"#
        );
        OdsShown::scan(xml.as_bytes()).unwrap()
    }

    fn num(v: &str, shown: &str) -> String {
        format!(r#"<table:table-cell office:value-type="float" office:value="{v}"><text:p>{shown}</text:p></table:table-cell>"#)
    }

    #[test]
    fn leading_zeros_and_literals_around_the_same_digits_are_kept() {
        let s = scan(&format!(
            r#"<table:table table:name="R"><table:table-row>{}{}{}{}{}{}</table:table-row></table:table>"#,
            num("123", "000123"),
            num("4155550100", "(415) 555-0100"),
            num("1234", "1,234"),
            num("42", "42"),
            num("12.5", "13"),
            num("0", "000"),
        ));
        assert_eq!(s.get("R", 0, 0), Some("000123"));
        assert_eq!(s.get("R", 0, 1), Some("(415) 555-0100"));
        assert_eq!(s.get("R", 0, 2), None, "1,234 is a decimal elsewhere: plain");
        assert_eq!(s.get("R", 0, 3), None, "shown as the value: nothing to keep");
        assert_eq!(s.get("R", 0, 4), None, "not a whole number");
        assert_eq!(s.get("R", 0, 5), Some("000"));
        assert_eq!(s.get("Other", 0, 0), None);
    }

    #[test]
    fn other_digits_a_narrow_column_or_a_percentage_read_as_the_value() {
        let s = scan(&format!(
            r#"<table:table table:name="R"><table:table-row>{}{}{}<table:table-cell office:value-type="percentage" office:value="5"><text:p>500%</text:p></table:table-cell>{}</table:table-row></table:table>"#,
            num("123", "124"),
            num("1234567", "###"),
            num("5", "5.00"),
            num("-5", "-005"),
        ));
        for c in 0..5 {
            assert_eq!(s.get("R", 0, c), None, "column {c}");
        }
    }

    #[test]
    fn digits_must_be_the_values() {
        assert!(same_digits("000123", "123") && same_digits("(415) 555-0100", "4155550100") && same_digits("000", "0"));
        assert!(!same_digits("000124", "123") && !same_digits("x", "12"));
        assert!(
            !same_digits("1.5", "15") && !same_digits("0.001", "1") && !same_digits("1.234", "1234") && !same_digits("1,234", "1234"),
            "a decimal mark is not a literal"
        );
        assert!(!same_digits("", "0") && !same_digits(" - ", "0") && !same_digits("N/A", "0"), "0 shows a digit");
        assert!(!same_digits("12", "-12") && !same_digits("125", "12.5"), "plain must be a whole number's digits");
    }

    #[test]
    fn positions_count_repeated_rows_and_cells_as_calamine_does() {
        let s = scan(&format!(
            r#"<table:table table:name="A"><table:table-row table:number-rows-repeated="3"><table:table-cell table:number-columns-repeated="2"/></table:table-row><table:table-row/>
               <table:table-row><table:covered-table-cell/><table:table-cell table:number-columns-repeated="4"/>{}<table:table-cell table:number-columns-repeated="2" office:value-type="float" office:value="7"><text:p>007</text:p></table:table-cell></table:table-row></table:table>
               <table:table table:name="B"><table:table-row table:number-rows-repeated="2">{}</table:table-row></table:table>"#,
            num("5", "05"),
            num("9", "#9"),
        ));
        assert_eq!(s.get("A", 4, 5), Some("05"));
        assert_eq!((s.get("A", 4, 6), s.get("A", 4, 7), s.get("A", 4, 8)), (Some("007"), Some("007"), None));
        assert_eq!((s.get("A", 3, 5), s.get("A", 5, 5)), (None, None));
        assert_eq!((s.get("B", 0, 0), s.get("B", 1, 0), s.get("B", 2, 0)), (Some("#9"), Some("#9"), None));
    }

    #[test]
    fn the_last_table_of_a_name_is_the_sheet_as_calamine_keeps_it() {
        let s = scan(&format!(
            r#"<table:table table:name="S"><table:table-row>{}</table:table-row></table:table><table:table table:name="S"><table:table-row>{}</table:table-row></table:table>"#,
            num("123", "000123"),
            num("77", "77"),
        ));
        assert_eq!(s.get("S", 0, 0), None);
    }

    #[test]
    fn comments_spaces_and_hostile_text_are_bounded() {
        let s = scan(&format!(
            r#"<table:table table:name="R"><table:table-row><table:table-cell office:value-type="float" office:value="12"><office:annotation><text:p>note 99</text:p></office:annotation><text:p>0<text:s text:c="2"/>12</text:p></table:table-cell>{}<table:table-cell office:value-type="float" office:value="1"><text:p>0<text:s text:c="99999999999"/>1</text:p></table:table-cell>{}</table:table-row></table:table>"#,
            num("1", &format!("{}1", "0".repeat(300))),
            num("3", "&amp;3"),
        ));
        assert_eq!(s.get("R", 0, 0), Some("0  12"), "the comment is not the cell's text");
        assert_eq!(s.get("R", 0, 1), None, "longer than any number's text");
        assert_eq!(s.get("R", 0, 2), None, "a huge run of spaces is not expanded");
        assert_eq!(s.get("R", 0, 3), None);
        // A huge repeat is cut at the grid, as calamine cuts it.
        let s = scan(&format!(
            r#"<table:table table:name="R"><table:table-row table:number-rows-repeated="99999999999">{}</table:table-row><table:table-row>{}</table:table-row></table:table>"#,
            num("1", "01"),
            num("2", "02")
        ));
        assert_eq!(s.get("R", MAX_SHEET_ROWS as u64 - 1, 0), Some("01"));
        assert_eq!(s.get("R", MAX_SHEET_ROWS as u64, 0), None);
    }
}
