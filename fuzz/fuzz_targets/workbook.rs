//! Structure-aware: XLSX and ODS packages built from generated parts, so the fuzzer reaches every
//! number the readers trust (declared shared-string counts, cell references far outside the grid,
//! dimensions, row and column repeats, sheet names) instead of mutating zip bytes, which rarely
//! yields a well-formed part. Run with `-malloc_limit_mb`: an allocation bomb is a finding.
#![no_main]
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use shared::ingest::decode;
use std::io::Write;

#[derive(Arbitrary, Debug)]
enum Kind {
    Xlsx,
    Ods,
}

#[derive(Arbitrary, Debug)]
enum Value {
    Shared(u32),
    Inline(String),
    Number(f64),
    /// A whole number with the text a sheet shows for it (ODS keeps both).
    Shown(u32, String),
    Bool(bool),
    Empty,
}

#[derive(Arbitrary, Debug)]
struct Cell {
    /// Column index (any u32: far right of the grid too); `None` omits the reference.
    col: Option<u32>,
    /// ODS: number-columns-repeated.
    repeat: Option<u32>,
    /// XLSX: the `s` attribute (a style of `Book::formats`, or past their end).
    style: Option<u16>,
    value: Value,
}

#[derive(Arbitrary, Debug)]
struct Row {
    /// Row index (any u32); `None` omits it.
    row: Option<u32>,
    /// ODS: number-rows-repeated.
    repeat: Option<u32>,
    cells: Vec<Cell>,
}

#[derive(Arbitrary, Debug)]
struct Sheet {
    name: String,
    /// The `<dimension ref>` an XLSX sheet declares: (first row, first col, last row, last col).
    dimension: Option<(u32, u32, u32, u32)>,
    rows: Vec<Row>,
}

#[derive(Arbitrary, Debug)]
struct Book {
    kind: Kind,
    sheets: Vec<Sheet>,
    strings: Vec<String>,
    /// What `<sst uniqueCount>` declares (`None`: the true count).
    declared_strings: Option<u64>,
    /// XLSX number formats: a custom code, or a built-in id; one cell style each.
    formats: Vec<NumFmt>,
}

#[derive(Arbitrary, Debug)]
enum NumFmt {
    Code(String),
    /// Picked from codes a number format is made of, so the renderer's paths are reached.
    Parts(Vec<u8>),
    BuiltIn(u8),
}

impl NumFmt {
    fn code(&self) -> Option<String> {
        const PARTS: [&str; 24] = ["0", "#", "0", ".", ",", "%", ";", "\"x\"", "\\-", " ", "(", ")", "[Red]", "[>1]", "E+", "?", "/", "_", "*", "@", "$", "-", "\"", "\\"];
        match self {
            NumFmt::Code(c) => Some(c.clone()),
            NumFmt::Parts(p) => Some(p.iter().map(|&i| PARTS[usize::from(i) % PARTS.len()]).collect()),
            NumFmt::BuiltIn(_) => None,
        }
    }
}

fn col_name(mut n: u64) -> String {
    let mut s = Vec::new();
    n += 1;
    while n > 0 {
        s.push(b'A' + ((n - 1) % 26) as u8);
        n = (n - 1) / 26;
    }
    s.reverse();
    String::from_utf8(s).unwrap_or_default()
}

fn esc(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() || *c == '\t' || *c == '\n')
        .collect::<String>()
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn zip(parts: &[(&str, String)]) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, body) in parts {
        z.start_file(*name, opts).unwrap();
        z.write_all(body.as_bytes()).unwrap();
    }
    z.finish().unwrap().into_inner()
}

fn xlsx(book: &Book) -> Vec<u8> {
    let ns = r#"xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships""#;
    let mut parts = vec![
        ("[Content_Types].xml", r#"<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="xml" ContentType="application/xml"/><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/></Types>"#.to_string()),
        ("_rels/.rels", r#"<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>"#.to_string()),
    ];
    let sheets: Vec<&Sheet> = book.sheets.iter().take(4).collect();
    let mut wb = format!(r#"<?xml version="1.0"?><workbook {ns}><sheets>"#);
    let mut rels = String::from(r#"<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">"#);
    let mut bodies = Vec::new();
    for (i, s) in sheets.iter().enumerate() {
        wb += &format!(r#"<sheet name="{}" sheetId="{}" r:id="rId{}"/>"#, esc(&s.name), i + 1, i + 1);
        rels += &format!(r#"<Relationship Id="rId{}" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet{}.xml"/>"#, i + 1, i + 1);
        let mut x = format!(r#"<?xml version="1.0"?><worksheet {ns}>"#);
        if let Some((r0, c0, r1, c1)) = s.dimension {
            x += &format!(r#"<dimension ref="{}{}:{}{}"/>"#, col_name(c0 as u64), r0 as u64 + 1, col_name(c1 as u64), r1 as u64 + 1);
        }
        x += "<sheetData>";
        for (ri, row) in s.rows.iter().take(64).enumerate() {
            let r = row.row.map_or(ri as u64, u64::from);
            x += &format!(r#"<row r="{}">"#, r + 1);
            for (ci, cell) in row.cells.iter().take(64).enumerate() {
                let at = cell.col.map(|c| format!(r#" r="{}{}""#, col_name(c as u64), r + 1)).unwrap_or_else(|| format!(r#" r="{}{}""#, col_name(ci as u64), r + 1));
                let at = match cell.style {
                    Some(s) => format!(r#"{at} s="{s}""#),
                    None => at,
                };
                x += &match &cell.value {
                    Value::Shared(i) => format!(r#"<c{at} t="s"><v>{i}</v></c>"#),
                    Value::Inline(s) => format!(r#"<c{at} t="inlineStr"><is><t>{}</t></is></c>"#, esc(s)),
                    Value::Number(n) => format!(r#"<c{at}><v>{n}</v></c>"#),
                    Value::Shown(n, _) => format!(r#"<c{at}><v>{n}</v></c>"#),
                    Value::Bool(b) => format!(r#"<c{at} t="b"><v>{}</v></c>"#, u8::from(*b)),
                    Value::Empty => format!("<c{at}/>"),
                };
            }
            x += "</row>";
        }
        x += "</sheetData></worksheet>";
        bodies.push((format!("xl/worksheets/sheet{}.xml", i + 1), x));
    }
    wb += "</sheets></workbook>";
    rels += "</Relationships>";
    let strings: Vec<&String> = book.strings.iter().take(64).collect();
    let declared = book.declared_strings.unwrap_or(strings.len() as u64);
    let mut sst = format!(r#"<?xml version="1.0"?><sst {ns} count="{declared}" uniqueCount="{declared}">"#);
    for s in strings {
        sst += &format!("<si><t>{}</t></si>", esc(s));
    }
    sst += "</sst>";
    // Styles: a cell format per number format (style 0 stays General).
    let formats: Vec<&NumFmt> = book.formats.iter().take(64).collect();
    let mut fmts = String::new();
    let mut xfs = String::from(r#"<xf numFmtId="0"/>"#);
    for (i, f) in formats.iter().enumerate() {
        let id = match (f.code(), f) {
            (Some(code), _) => {
                fmts += &format!(r#"<numFmt numFmtId="{}" formatCode="{}"/>"#, 164 + i, esc(&code));
                164 + i
            }
            (None, NumFmt::BuiltIn(id)) => usize::from(*id),
            (None, _) => 0,
        };
        xfs += &format!(r#"<xf numFmtId="{id}" applyNumberFormat="1"/>"#);
    }
    let styles = format!(
        r#"<?xml version="1.0"?><styleSheet {ns}><numFmts count="{}">{fmts}</numFmts><cellXfs count="{}">{xfs}</cellXfs></styleSheet>"#,
        formats.len(),
        formats.len() + 1
    );
    parts.push(("xl/styles.xml", styles));
    parts.push(("xl/workbook.xml", wb));
    parts.push(("xl/_rels/workbook.xml.rels", rels));
    parts.push(("xl/sharedStrings.xml", sst));
    let bodies: Vec<(&str, String)> = bodies.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    parts.extend(bodies);
    zip(&parts)
}

fn ods(book: &Book) -> Vec<u8> {
    let mut c = String::from(
        r#"<?xml version="1.0"?><office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" office:version="1.2"><office:body><office:spreadsheet>"#,
    );
    for s in book.sheets.iter().take(4) {
        c += &format!(r#"<table:table table:name="{}">"#, esc(&s.name));
        for row in s.rows.iter().take(64) {
            match row.repeat {
                Some(n) => c += &format!(r#"<table:table-row table:number-rows-repeated="{n}">"#),
                None => c += "<table:table-row>",
            }
            for cell in row.cells.iter().take(64) {
                let rep = cell.repeat.map(|n| format!(r#" table:number-columns-repeated="{n}""#)).unwrap_or_default();
                c += &match &cell.value {
                    Value::Inline(s) => format!(r#"<table:table-cell{rep} office:value-type="string"><text:p>{}</text:p></table:table-cell>"#, esc(s)),
                    Value::Shared(i) => format!(r#"<table:table-cell{rep} office:value-type="float" office:value="{i}"><text:p>{i}</text:p></table:table-cell>"#),
                    Value::Number(n) => format!(r#"<table:table-cell{rep} office:value-type="float" office:value="{n}"/>"#),
                    Value::Shown(n, shown) => {
                        format!(r#"<table:table-cell{rep} office:value-type="float" office:value="{n}"><text:p>{}</text:p></table:table-cell>"#, esc(shown))
                    }
                    Value::Bool(b) => format!(r#"<table:table-cell{rep} office:value-type="boolean" office:boolean-value="{b}"/>"#),
                    Value::Empty => format!("<table:table-cell{rep}/>"),
                };
            }
            c += "</table:table-row>";
        }
        c += "</table:table>";
    }
    c += "</office:spreadsheet></office:body></office:document-content>";
    zip(&[
        ("mimetype", "application/vnd.oasis.opendocument.spreadsheet".into()),
        ("content.xml", c),
        ("META-INF/manifest.xml", r#"<?xml version="1.0"?><manifest:manifest xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0"><manifest:file-entry manifest:full-path="/" manifest:media-type="application/vnd.oasis.opendocument.spreadsheet"/><manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml"/></manifest:manifest>"#.into()),
    ])
}

fuzz_target!(init: std::panic::set_hook(Box::new(|info| eprintln!("panic (recovered unless the run aborts): {info}"))), |book: Book| {
    let bytes = match book.kind {
        Kind::Xlsx => xlsx(&book),
        Kind::Ods => ods(&book),
    };
    // Turning a finding into a fixture: `ROSTERDROP_DUMP=file.xlsx <binary> <artifact>` writes
    // the workbook the artifact stands for.
    if let Ok(path) = std::env::var("ROSTERDROP_DUMP") {
        std::fs::write(path, &bytes).unwrap();
    }
    if let Ok(tables) = decode::decode_all(&bytes) {
        for t in &tables {
            assert!(t.rows.windows(2).all(|w| w[0].0 < w[1].0), "row numbers increase");
            assert!(t.headers.len() <= decode::MAX_SHEET_COLUMNS as usize, "no row wider than the grid");
            assert!(t.rows.iter().all(|(_, r)| r.len() <= decode::MAX_SHEET_COLUMNS as usize));
        }
    }
});
