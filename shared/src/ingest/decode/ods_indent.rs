//! ODS written indented: LibreOffice with "Size optimization for ODF format" off, and SheetJS by
//! default, put line breaks and spaces between a row's cells. They mean nothing (ODF keeps a
//! cell's text in its `text:p`), but calamine reads a row's children as cells only and refused
//! the whole file ("Expecting 'table-cell', found 'Text(...)'"), which saving again from the same
//! program wrote the same way. Such a workbook is rewritten without that whitespace before it is
//! read; every other ODS is read as it is.

use super::FileError;
use super::guards::{MAX_UNZIPPED_BYTES, check_declared_size, check_zip_parts};
use quick_xml::events::Event;
use std::io::{BufRead, BufReader, Cursor, Read, Seek, Write};

/// The longest run of text between two elements read here: a cell's text (Excel's largest is
/// 32,767 characters) or indentation. Longer, the file is left to the reader (and its guards):
/// the XML reader holds a run whole, so gigabytes of spaces would be one allocation.
const MAX_RUN: usize = 8 << 20;
/// How far into `content.xml` the first row is looked for (its styles come first).
const MAX_SEARCH: u64 = 64 << 20;

/// The ODS `r` holds, rewritten without the whitespace between its elements, if it is indented;
/// `None` for anything else (an XLSX, a compact ODS, a zip its reader will refuse anyway). Looks
/// only as far as the first row's first child; a rewrite holds the zip, recompressed, in memory.
pub(super) fn unindented<R: Read + Seek>(r: &mut R) -> Result<Option<Vec<u8>>, FileError> {
    let damaged = |e: &dyn std::fmt::Display| FileError::Corrupt { format: "ODS", detail: e.to_string() };
    let found = (|| {
        let mut zip = zip::ZipArchive::new(&mut *r).ok()?;
        if zip.index_for_name("xl/workbook.xml").is_some() {
            return None;
        }
        let at = zip.index_for_name("content.xml")?;
        let content = zip.by_index(at).ok()?.take(MAX_SEARCH);
        first_row_indented(Runs::new(BufReader::new(content))).then_some(at)
    })();
    r.rewind().map_err(|e| damaged(&e))?;
    let Some(content) = found else { return Ok(None) };
    let mut zip = zip::ZipArchive::new(&mut *r).map_err(|e| damaged(&e))?;
    // The file's guards first, on the file as it came (they run again on the rewrite): nothing is
    // inflated in full before its declared size and the cells it asks for are known.
    check_declared_size(&mut zip, MAX_UNZIPPED_BYTES)?;
    check_zip_parts(&mut zip, true)?;
    let mut out = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for i in 0..zip.len() {
        if i == content {
            let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
            out.start_file("content.xml", options).map_err(|e| damaged(&e))?;
            strip(Runs::new(BufReader::new(zip.by_index(i).map_err(|e| damaged(&e))?)), &mut out).map_err(|e| damaged(&e))?;
        } else {
            // As it was, compressed bytes and all (`mimetype` stays first and stored).
            out.raw_copy_file(zip.by_index_raw(i).map_err(|e| damaged(&e))?).map_err(|e| damaged(&e))?;
        }
    }
    let bytes = out.finish().map_err(|e| damaged(&e))?.into_inner();
    drop(zip);
    r.rewind().map_err(|e| damaged(&e))?;
    Ok(Some(bytes))
}

/// A reader that fails on a run of more than `MAX_RUN` bytes without a `<` (the XML reader
/// would hold it whole).
struct Runs<B> {
    inner: B,
    run: usize,
}

impl<B: BufRead> Runs<B> {
    fn new(inner: B) -> Self {
        Runs { inner, run: 0 }
    }
}

impl<B: BufRead> Read for Runs<B> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<B: BufRead> BufRead for Runs<B> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.run > MAX_RUN {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "a run of text longer than 8 MB"));
        }
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        // The bytes consumed are still the inner buffer's first ones until it consumes them.
        if let Ok(seen) = self.inner.fill_buf() {
            let seen = &seen[..n.min(seen.len())];
            self.run = match memchr::memrchr(b'<', seen) {
                Some(at) => seen.len() - at - 1,
                None => self.run.saturating_add(seen.len()),
            };
        }
        self.inner.consume(n);
    }
}

/// Whether the first `table:table-row` starts with whitespace before its first cell.
fn first_row_indented<B: BufRead>(input: Runs<B>) -> bool {
    let mut xml = quick_xml::Reader::from_reader(input);
    let mut buf = Vec::new();
    let mut in_row = false;
    loop {
        buf.clear();
        match xml.read_event_into(&mut buf) {
            Ok(Event::Start(e)) if e.name().as_ref() == "table:table-row" => in_row = true,
            Ok(Event::Text(t)) if in_row => return t.bytes().all(|b| b.is_ascii_whitespace()),
            Ok(Event::Eof) | Err(_) => return false,
            Ok(_) if in_row => return false,
            Ok(_) => {}
        }
    }
}

/// `content.xml` without whitespace-only text outside `text:` elements (inside a paragraph,
/// spaces are the cell's own and kept).
fn strip<B: BufRead, W: Write>(input: B, out: W) -> Result<(), quick_xml::Error> {
    let mut xml = quick_xml::Reader::from_reader(input);
    let mut writer = quick_xml::Writer::new(out);
    let mut buf = Vec::new();
    let mut in_text = 0usize;
    let is_text = |name: &str| name.starts_with("text:");
    loop {
        buf.clear();
        let event = xml.read_event_into(&mut buf)?;
        match &event {
            Event::Eof => return Ok(()),
            Event::Start(e) if is_text(e.name().as_ref()) => in_text += 1,
            Event::End(e) if is_text(e.name().as_ref()) => in_text = in_text.saturating_sub(1),
            Event::Text(t) if in_text == 0 && t.bytes().all(|b| b.is_ascii_whitespace()) => continue,
            _ => {}
        }
        writer.write_event(event).map_err(quick_xml::Error::from)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ods(content: &str) -> Vec<u8> {
        let mimetype: &[u8] = b"application/vnd.oasis.opendocument.spreadsheet";
        crate::ingest::decode::archive::tests::zip_of(&[("mimetype", mimetype), ("content.xml", content.as_bytes())])
    }

    fn content_of(zip: Vec<u8>) -> String {
        let mut z = zip::ZipArchive::new(Cursor::new(zip)).unwrap();
        assert_eq!(z.by_index(0).unwrap().name().unwrap(), "mimetype", "mimetype stays first");
        let mut s = String::new();
        z.by_name("content.xml").unwrap().read_to_string(&mut s).unwrap();
        s
    }

    #[test]
    fn only_indented_content_is_rewritten_and_a_cells_own_spaces_are_kept() {
        let indented = "<office:document-content><table:table>\n  <table:table-row>\n    <table:table-cell>\n      \
                        <text:p>  two  <text:span> </text:span></text:p>\n    </table:table-cell>\n  </table:table-row>\n\
                        </table:table></office:document-content>";
        let out = unindented(&mut Cursor::new(ods(indented))).unwrap().expect("rewritten");
        assert_eq!(
            content_of(out),
            "<office:document-content><table:table><table:table-row><table:table-cell>\
             <text:p>  two  <text:span> </text:span></text:p></table:table-cell></table:table-row>\
             </table:table></office:document-content>"
        );
        let compact = "<office:document-content><table:table><table:table-row><table:table-cell/></table:table-row></table:table></office:document-content>";
        assert!(unindented(&mut Cursor::new(ods(compact))).unwrap().is_none());
        assert!(unindented(&mut Cursor::new(b"not a zip".to_vec())).unwrap().is_none());
    }

    /// Gigabytes of spaces compress a thousandfold, and the XML reader holds a run of text whole:
    /// a run past `MAX_RUN` stops the look (before the first row) or the rewrite (after it), so
    /// no allocation follows the run's length.
    #[test]
    fn a_run_of_spaces_is_never_held_whole() {
        let spaces = " ".repeat(MAX_RUN + (1 << 20));
        let before = format!(
            "<office:document-content>{spaces}<table:table>\n<table:table-row>\n<table:table-cell/></table:table-row></table:table></office:document-content>"
        );
        assert!(unindented(&mut Cursor::new(ods(&before))).unwrap().is_none(), "not judged indented");
        let after = format!(
            "<office:document-content><table:table>\n<table:table-row>\n<table:table-cell/>{spaces}</table:table-row></table:table></office:document-content>"
        );
        let err = unindented(&mut Cursor::new(ods(&after))).unwrap_err();
        assert!(err.to_string().contains("a run of text longer than 8 MB"), "{err}");
    }
}
