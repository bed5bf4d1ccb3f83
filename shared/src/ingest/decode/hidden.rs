//! Rows and columns a sheet hides (by hand, by a filter, or folded in an outline). They are read
//! like any other: a file's rows are what it holds, and dropping them would change what a
//! replace file keeps. But the person who uploads it sees only what the spreadsheet shows, so a
//! sheet whose hidden rows or columns hold data says so (they were read without a word: last
//! term's rows filtered out of view were applied, a hidden column's stale values stored).

use std::collections::BTreeSet;

/// Hidden ranges a workbook may declare in all: one a row of a full sheet. Past it, the rest are
/// not recorded (the warning is already earned).
pub const MAX_HIDDEN_RANGES: usize = 1 << 20;

/// A sheet's hidden rows and columns as (first, last) ranges, 0-based, inclusive.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Lines {
    pub rows: Vec<(u32, u32)>,
    pub cols: Vec<(u32, u32)>,
}

impl Lines {
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.cols.is_empty()
    }
}

/// Counts the data a sheet's hidden rows and columns hold as its rows are read.
#[derive(Debug, Default)]
pub struct Hidden {
    lines: Lines,
    /// Rows with data that are hidden, and the first of them.
    rows: u64,
    first_row: Option<u32>,
    /// Hidden columns with data (at most the 16,384 a sheet has).
    cols: BTreeSet<u32>,
    header_seen: bool,
}

impl Hidden {
    pub fn new(lines: Lines) -> Self {
        let lines = Lines { rows: disjoint(lines.rows), cols: disjoint(lines.cols) };
        Hidden { lines, ..Hidden::default() }
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Row `row` (0-based) has data in columns `cols` (a row with none is not counted).
    pub fn row(&mut self, row: u32, cols: impl Iterator<Item = u32>) {
        let mut cols = cols.peekable();
        if cols.peek().is_none() {
            return;
        }
        // The sheet's first row with data is its header row: not a row applied.
        if !std::mem::replace(&mut self.header_seen, true) {
            return;
        }
        if covers(&self.lines.rows, row) {
            self.rows += 1;
            self.first_row = Some(self.first_row.map_or(row, |f| f.min(row)));
        }
        if !self.lines.cols.is_empty() {
            self.cols.extend(cols.filter(|&c| covers(&self.lines.cols, c)));
        }
    }

    /// What the user is told of the sheet (`sheet` named when the workbook has several).
    pub fn warnings(&self, sheet: Option<&str>) -> Vec<String> {
        let on = sheet.map(|s| format!(" of sheet \"{}\"", crate::wording::quoted(s))).unwrap_or_default();
        let mut said = Vec::new();
        if let Some(first) = self.first_row {
            let (rows, are) = match self.rows {
                1 => (format!("row {}", u64::from(first) + 1), "is"),
                n => (format!("{} rows (the first: row {})", crate::wording::thousands(n), u64::from(first) + 1), "are"),
            };
            said.push(format!(
                "{rows}{on} {are} hidden in the spreadsheet (hidden by hand or by a filter) and {} read like any other; delete {} from the file if {} should not be applied",
                if are == "is" { "was" } else { "were" },
                if are == "is" { "it" } else { "them" },
                if are == "is" { "it" } else { "they" },
            ));
        }
        if !self.cols.is_empty() {
            const NAMED: usize = 5;
            let mut names: Vec<String> = self.cols.iter().take(NAMED).map(|&c| super::column_name(c as usize)).collect();
            if self.cols.len() > NAMED {
                names.push(format!("{} more", self.cols.len() - NAMED));
            }
            let (cols, are) = if self.cols.len() == 1 { ("column", "is") } else { ("columns", "are") };
            said.push(format!(
                "{cols} {}{on} {are} hidden in the spreadsheet and {} read like any other; unhide {} to check {} values",
                names.join(", "),
                if are == "is" { "was" } else { "were" },
                if are == "is" { "it" } else { "them" },
                if are == "is" { "its" } else { "their" },
            ));
        }
        said
    }
}

/// Ranges sorted and merged where they overlap or touch (a writer's, or a hostile file's), so
/// one binary search answers `covers`.
fn disjoint(mut ranges: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    ranges.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges.into_iter().filter(|(f, l)| f <= l) {
        match out.last_mut() {
            Some(prev) if first <= prev.1.saturating_add(1) => prev.1 = prev.1.max(last),
            _ => out.push((first, last)),
        }
    }
    out
}

/// Whether disjoint sorted ranges cover `at`.
fn covers(ranges: &[(u32, u32)], at: u32) -> bool {
    let upto = ranges.partition_point(|&(first, _)| first <= at);
    upto > 0 && ranges[upto - 1].1 >= at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_columns_hidden_with_data_are_told_by_number_and_letter() {
        let mut h = Hidden::new(Lines { rows: vec![(0, 0), (9, 9), (3, 5), (14, 15)], cols: vec![(2, 2), (30, 40)] });
        for row in 0..12 {
            h.row(row, [0, 1, 2].into_iter());
        }
        // Hidden but blank: not a row of data (an ODS or XLS range gives every row).
        h.row(14, std::iter::empty());
        assert_eq!(
            h.warnings(Some("Roster")),
            [
                "4 rows (the first: row 4) of sheet \"Roster\" are hidden in the spreadsheet (hidden by hand or by a filter) and were read like any other; delete them from the file if they should not be applied",
                "column C of sheet \"Roster\" is hidden in the spreadsheet and was read like any other; unhide it to check its values",
            ]
        );
        // Hidden lines without data are not worth a word.
        let mut quiet = Hidden::new(Lines { rows: vec![(20, 30)], cols: vec![(5, 9)] });
        quiet.row(1, [0, 1].into_iter());
        assert!(quiet.warnings(None).is_empty());
        let mut one = Hidden::new(Lines { rows: vec![(1, 1)], cols: (0..7).map(|c| (c, c)).collect() });
        one.row(0, 0..1);
        one.row(1, 0..7);
        assert_eq!(
            one.warnings(None),
            [
                "row 2 is hidden in the spreadsheet (hidden by hand or by a filter) and was read like any other; delete it from the file if it should not be applied",
                "columns A, B, C, D, E, 2 more are hidden in the spreadsheet and were read like any other; unhide them to check their values",
            ]
        );
    }

    #[test]
    fn overlapping_ranges_cover_what_any_of_them_covers() {
        let ranges = disjoint(vec![(50, 50), (0, 100), (5, 6), (200, 201), (202, 203), (9, 3)]);
        assert_eq!(ranges, [(0, 100), (200, 203)]);
        assert!(covers(&ranges, 70));
        assert!(covers(&ranges, 203));
        assert!(!covers(&ranges, 150));
        assert!(covers(&ranges, 5));
        assert!(!covers(&ranges, 101));
        assert!(!covers(&[], 1));
    }
}
