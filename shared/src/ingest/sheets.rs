//! Roster rules about workbook sheets, kept out of the decoder (which reads any sheet of any
//! workbook): which sheets hold instructions rather than rows, what user type a sheet's name
//! gives its rows, and how rows of several sheets get distinct ids.

use super::decode::{FileError, Table};

/// Sheet names that hold instructions rather than data (the template's own, and common ones).
pub fn is_instruction_sheet(name: &str) -> bool {
    let n: String = name.to_ascii_lowercase().chars().filter(|c| c.is_alphanumeric()).collect();
    // "Problems": the sheet our result workbooks end with, so a result dropped again reads as its rows.
    // "Export Summary": the sheet Apple Numbers puts first in an XLSX it exports (its tables' names).
    matches!(
        n.as_str(),
        "readme" | "instructions" | "definitions" | "help" | "notes" | "howto" | "lists" | "lookups" | "problems" | "exportsummary"
    )
}

/// Row ids of sheet `k` of a workbook start at `k * SHEET_STRIDE` (a sheet has at most 1,048,576 rows).
pub const SHEET_STRIDE: u32 = 10_000_000;

/// The data sheets a workbook may have: sheet 100's ids would start at replace mode's
/// reconcile rows (`ingest::RECONCILE_ROW_BASE`), sheet 215's reach the bit the validator uses as
/// a flag, and sheet 430's wrap.
pub const MAX_DATA_SHEETS: u32 = 100;

/// The id of row `number` of the file's table `index`: distinct across the sheets of a workbook,
/// and the row number itself for a text file or the first sheet.
pub fn row_id(index: u32, number: u32) -> u32 {
    index * SHEET_STRIDE + number
}

/// User types a sheet name can give (plural or singular, any case).
pub const USER_TYPES: &[&str] =
    &["Student", "Instructor", "Teacher", "Parent", "Guardian", "Employee", "Learner", "Manager", "Staff", "User"];

/// The user type a sheet name stands for: "Students" -> "Student".
pub fn user_type_of(sheet: &str) -> Option<String> {
    let n = sheet.trim().to_lowercase();
    let singular = n.strip_suffix('s').unwrap_or(&n);
    USER_TYPES.iter().find(|t| t.to_lowercase() == n || t.to_lowercase() == singular).map(|t| t.to_string())
}

/// Every table of a roster held in memory, instruction sheets left out: what ingest reads.
pub fn tables(bytes: &[u8]) -> Result<Vec<Table>, FileError> {
    super::decode::decode_all_with(bytes, is_instruction_sheet)
}

/// As `tables`, with the hidden sheets left unread and the reader's warnings.
pub fn tables_and_hidden(bytes: &[u8]) -> Result<super::decode::Decoded, FileError> {
    super::decode::decode_with_hidden(bytes, is_instruction_sheet)
}

/// What the result says of a hidden sheet: not read.
pub fn hidden_warning(name: &str) -> String {
    format!(
        "sheet \"{}\" is hidden and was not read; unhide it in your spreadsheet if its rows belong in the roster",
        crate::wording::quoted(name)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_xlsxwriter::Workbook;

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
        let t = tables(&wb.save_to_buffer().unwrap()).unwrap().remove(0);
        assert_eq!(t.sheet.as_deref(), Some("Users"));
        assert_eq!(t.headers, vec!["Email"]);
    }

    /// Apple Numbers exports an XLSX whose first sheet says what it did: that sheet made the
    /// workbook's first data sheet, refused for having no Email column.
    #[test]
    fn a_numbers_export_is_read_from_its_table_not_its_export_summary() {
        let mut wb = Workbook::new();
        let summary = wb.add_worksheet();
        summary.set_name("Export Summary").unwrap();
        summary.write_string(0, 0, "This document was exported from Numbers. Each table was converted to an Excel worksheet.").unwrap();
        for (c, h) in ["Numbers Sheet Name", "Numbers Table Name", "Excel Worksheet Name"].into_iter().enumerate() {
            summary.write_string(2, c as u16, h).unwrap();
        }
        for (c, v) in ["Sheet 1", "Table 1", "Sheet 1 - Table 1"].into_iter().enumerate() {
            summary.write_string(3, c as u16, v).unwrap();
        }
        let data = wb.add_worksheet();
        data.set_name("Sheet 1 - Table 1").unwrap();
        data.write_string(0, 0, "Email").unwrap();
        data.write_string(1, 0, "ann@x.com").unwrap();
        let read = tables(&wb.save_to_buffer().unwrap()).unwrap();
        let names: Vec<Option<&str>> = read.iter().map(|t| t.sheet.as_deref()).collect();
        assert_eq!(names, vec![Some("Sheet 1 - Table 1")]);
        assert_eq!(read[0].rows, vec![(2, vec!["ann@x.com".to_string()])]);
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
        let tables = tables(&wb.save_to_buffer().unwrap()).unwrap();
        let summary: Vec<(Option<&str>, Option<String>, u32)> =
            tables.iter().map(|t| (t.sheet.as_deref(), t.sheet.as_deref().and_then(user_type_of), row_id(t.index, 0))).collect();
        let expected =
            vec![(Some("Students"), Some("Student".to_string()), 0), (Some("Parents"), Some("Parent".to_string()), SHEET_STRIDE)];
        assert_eq!(summary, expected, "instruction and empty sheets left out");
    }

    /// A roster kept in a sheet called `Notes` (or `Lists`, `Help`): "the workbook has no sheet
    /// with data", while it had one. The refusal names the sheet and the fix.
    #[test]
    fn a_roster_in_a_sheet_named_like_instructions_is_named_in_the_refusal() {
        let mut wb = Workbook::new();
        let ws = wb.add_worksheet();
        ws.set_name("Notes").unwrap();
        ws.write_string(0, 0, "Email").unwrap();
        ws.write_string(1, 0, "ann@x.com").unwrap();
        let err = tables(&wb.save_to_buffer().unwrap()).unwrap_err().to_string();
        assert!(err.starts_with("the workbook's only sheets (\"Notes\") are not read"), "{err}");
        assert!(err.contains("Rename the sheet that holds the roster"), "{err}");
    }

    #[test]
    fn instruction_sheets_are_told_apart_by_name() {
        assert!(is_instruction_sheet("Read Me"));
        assert!(is_instruction_sheet("DEFINITIONS"));
        assert!(is_instruction_sheet("Export Summary"), "Apple Numbers' first sheet");
        assert!(!is_instruction_sheet("Students"));
    }

    #[test]
    fn a_sheet_name_gives_a_user_type_in_the_singular() {
        assert_eq!(user_type_of("Students").as_deref(), Some("Student"));
        assert_eq!(user_type_of("parent").as_deref(), Some("Parent"));
        assert_eq!(user_type_of("sheet1"), None);
        assert_eq!(row_id(1, 2), SHEET_STRIDE + 2);
    }
}
