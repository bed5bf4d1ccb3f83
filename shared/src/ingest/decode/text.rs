//! Delimited text (CSV, TSV, ...) in two passes: pass 1 checks the bytes (emptiness, NUL,
//! encoding, unclosed quotes) and sniffs the delimiter; pass 2 decodes records field by field.

use super::*;
use encoding_rs::{Encoding, UTF_8, WINDOWS_1252};
use std::io::{Read, Seek, SeekFrom};

/// Pass 1 reads the file in buffers of this size.
pub(super) const SCAN_BUFFER: usize = 256 * 1024;
/// The start of a text file that format sniffing looks at (header line, binary and HTML checks).
pub(super) const HEAD_BYTES: usize = 64 * 1024;

pub(super) fn read_text<R: Read + Seek, V: TableVisitor>(r: &mut R, v: &mut V, buffer: usize) -> Result<(), ReadError<V::Stop>> {
    // The byte-order mark, and for the NUL message whether the text starts like UTF-16.
    let mut raw_head = [0u8; 4];
    let n = read_up_to(r, &mut raw_head)?;
    let raw_head = &raw_head[..n];
    if let Some((enc, bom_len)) = Encoding::for_bom(raw_head)
        && enc != UTF_8
    {
        // UTF-16 ("Unicode Text" from Excel) is rare and small: decoded in memory, then read as UTF-8.
        r.seek(SeekFrom::Start(bom_len as u64))?;
        let mut raw = Vec::new();
        r.read_to_end(&mut raw)?;
        let text = enc.decode_without_bom_handling(&raw).0.into_owned();
        drop(raw);
        return read_text_from(&mut Cursor::new(text.as_bytes()), 0, raw_head, Some(enc), v, buffer);
    }
    let bom_len = if raw_head.starts_with(b"\xEF\xBB\xBF") { 3 } else { 0 };
    read_text_from(r, bom_len, raw_head, None, v, buffer)
}

/// Delimited text from `start` on: UTF-8 (or, given `label`, already decoded to UTF-8), else
/// Windows-1252. `raw_head` is the file's first bytes as stored.
pub(super) fn read_text_from<R: Read + Seek + ?Sized, V: TableVisitor>(
    r: &mut R,
    mut start: u64,
    raw_head: &[u8],
    label: Option<&'static Encoding>,
    v: &mut V,
    buffer: usize,
) -> Result<(), ReadError<V::Stop>> {
    let (bom, origin) = (start == 3, start);
    r.seek(SeekFrom::Start(start))?;
    let mut head = vec![0u8; HEAD_BYTES];
    let mut n = read_up_to(r, &mut head)?;
    head.truncate(n);
    // Excel's "sep=;" first line names the delimiter, and is no row of the table.
    let named = separator_line(&head);
    if let Some((_, len)) = named {
        start += len as u64;
        head.drain(..len);
        n -= len;
    }
    // The header line decides the delimiter; quotes and delimiters are ASCII in every encoding read here.
    let delimiter = named.map_or_else(|| sniff_delimiter(&String::from_utf8_lossy(&head), n < HEAD_BYTES), |(d, _)| d);

    // Pass 1: the whole file, without keeping it: emptiness, NUL bytes, UTF-8 validity, quotes.
    r.seek(SeekFrom::Start(start))?;
    let mut scan = Scan::new(delimiter, header_delimiters(&String::from_utf8_lossy(&head), delimiter));
    let mut buf = vec![0u8; buffer.max(1)];
    loop {
        let k = read_up_to(r, &mut buf)?;
        if k == 0 {
            break;
        }
        scan.feed(&buf[..k]);
    }
    scan.finish();
    drop(buf);
    if !scan.content {
        return Err(FileError::Empty.into());
    }
    let utf8 = label.is_some() || bom || scan.utf8.valid();
    // A UTF-8 byte-order mark says UTF-8 even when some bytes are not: those fields are read in
    // the legacy encoding (below).
    let lossy = bom && !scan.utf8.valid();
    // Text that is not UTF-8 is in the encoding of the system that saved it: Excel's plain "CSV"
    // is Windows-1252 in Western Europe and the Americas, 1250 in Poland, 1251 in Russia,
    // Shift_JIS in Japan. Read as Windows-1252, Иван was stored as Èâàí, without a word.
    // (A UTF-8 character cut off by the file's end is no other encoding: Windows-1252 reads it.)
    let legacy = if scan.utf8.invalid { legacy_encoding(r, start)? } else { WINDOWS_1252 };
    // Shift_JIS, GBK and Big5 put ASCII bytes inside their double-byte characters (ポ is 0x83
    // 0x7C, `|`): split as bytes, a pipe-delimited file broke ポール into two cells. Such text is
    // read decoded, as UTF-8; every check below runs on it, and the result names its encoding.
    if !utf8 && !legacy.is_single_byte() && label.is_none() {
        v.warning(not_utf8_warning(legacy));
        let mut decoded = Decoded::new(r, origin, legacy)?;
        return read_text_from::<dyn ReadSeek, V>(&mut decoded, 0, raw_head, Some(legacy), v, buffer);
    }
    let encoding = label.map_or(if utf8 { UTF_8.name() } else { legacy.name() }, Encoding::name);
    // Text a legacy encoding was decoded to (`Decoded`): its rows are checked for C1 controls too.
    let decoded_legacy = label.filter(|e| *e != encoding_rs::UTF_16LE && *e != encoding_rs::UTF_16BE);
    let head_text: Cow<'_, str> = if utf8 { String::from_utf8_lossy(&head) } else { legacy.decode_without_bom_handling(&head).0 };
    if let Some(at) = scan.nul_at {
        let line = line_of(r, start, at)?;
        let utf16 = raw_head.len() > 3 && (raw_head[1] == 0 || raw_head[0] == 0);
        let hint = if utf16 { "; it looks like UTF-16 text without a byte-order mark: save it as CSV UTF-8" } else { "" };
        return Err(
            FileError::UnknownFormat(format!("it contains NUL bytes (first on line {line}), which a text roster never has{hint}")).into()
        );
    }
    if looks_binary(&head_text) {
        return Err(FileError::UnknownFormat("the content is binary, not text".into()).into());
    }
    if head_text.trim_start().starts_with('<') {
        return Err(FileError::UnknownFormat("it looks like HTML or XML; export the sheet as CSV or XLSX instead".into()).into());
    }
    let format = if delimiter == b'\t' { Format::Tsv } else { Format::Csv };
    let spaced = spaced_header(&head_text, delimiter);
    if let Some(at) = scan.unclosed() {
        let line = line_of(r, start, at)?;
        return Err(FileError::Corrupt {
            format: format.label(),
            detail: format!(
                "a double quote opened on line {line} is never closed, so every row after it would be swallowed into one cell; close or remove that quote"
            ),
        }
        .into());
    }
    if let Some((opened, closed)) = scan.swallowed {
        let (line, last) = (line_of(r, start, opened)?, line_of(r, start, closed)?);
        return Err(FileError::Corrupt {
            format: format.label(),
            detail: format!(
                "a double quote opened on line {line} runs to line {last}, so the rows between would be read as one cell and not applied; \
                 a cell's quotes are probably unbalanced there (an opening quote without its closing one). Fix or remove that quote"
            ),
        }
        .into());
    }

    // Pass 2: records, each field decoded on its own (no decoded copy of the file exists).
    r.seek(SeekFrom::Start(start))?;
    let proto = TableHead {
        format,
        encoding: Some(encoding.to_string()),
        delimiter: Some(delimiter as char),
        sheet: None,
        header_row: 0,
        index: 0,
        headers: Vec::new(),
        several: false,
        rows_hint: Some((scan.newlines + 1).min(MAX_ROWS_HINT as u64) as u32),
    };
    if !utf8 && legacy != WINDOWS_1252 {
        v.warning(not_utf8_warning(legacy));
    }
    // Bytes the legacy encoding reads as control characters (U+0080-U+009F): a Mac or DOS file,
    // whose letters no guess reads right. The first row that has one is named.
    let mut controls_at: Option<u32> = None;
    let mut shape = Shape::new(proto, false);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter)
        .buffer_capacity(CSV_BUFFER)
        .from_reader(Recent::new(&mut *r));
    let mut record = csv::ByteRecord::new();
    let mut number = 0u32;
    // Rows as a spreadsheet numbers them: the CSV reader skips empty lines, which a spreadsheet
    // shows as empty rows (a record over several lines is one row). The lines read since the
    // previous record, less the record's own (its line breaks, and its LF), are empty lines.
    // `ended`: the line the previous record ended on. What ended each record is looked at in its
    // bytes (`Recent`): an LF is read with its record; the CSV reader ends a CRLF record at its
    // CR, its LF then read with the next record (`pending`); CR alone (a Mac file) counts no
    // line. Judged record by record: decided once from the first line ending, a CRLF header over
    // LF rows (a file edited on two systems) numbered every row one too far.
    let crlf = scan.crlf == Some(true);
    let (mut ended, mut previous_end) = (1u64, None::<u64>);
    let corrupt = |e: csv::Error| FileError::Corrupt { format: format.label(), detail: e.to_string() };
    while reader.read_byte_record(&mut record).map_err(corrupt)? {
        let end = reader.position();
        let recent = reader.get_ref();
        let pending = previous_end.map_or(0, |e| match (e.checked_sub(1).and_then(|i| recent.byte_at(i)), recent.byte_at(e)) {
            (Some(b'\r'), Some(b'\n')) => 1,
            (Some(_), Some(_)) => 0,
            // Out of reach (a record longer than `Recent` keeps): the file's first line ending.
            _ => u64::from(crlf),
        });
        let lf = u64::from(end.byte().checked_sub(1).and_then(|i| recent.byte_at(i)) == Some(b'\n'));
        let own = record.iter().map(|f| memchr::memchr_iter(b'\n', f).count() as u64).sum::<u64>() + lf + pending;
        let empty_lines = (end.line().saturating_sub(ended)).saturating_sub(own);
        (ended, previous_end) = (end.line(), Some(end.byte()));
        number = number.saturating_add(1).saturating_add(u32::try_from(empty_lines).unwrap_or(u32::MAX));
        if utf8 && !lossy {
            // Pass 1 found the whole file valid: one check per record, fields borrowed as they are.
            match csv::StringRecord::from_byte_record(std::mem::take(&mut record)) {
                Ok(text) => {
                    if decoded_legacy.is_some() && controls_at.is_none() && text.iter().any(|f| f.contains(is_c1_control)) {
                        controls_at = Some(number);
                    }
                    if text.iter().any(is_text_formula) || spaced && text.iter().any(opens_spaced_quote) {
                        let cells = shown_cells(text.iter().map(Cow::Borrowed).collect(), spaced, delimiter);
                        shape.row(v, number, &cells)?;
                    } else {
                        let cells: Vec<&str> = text.iter().collect();
                        shape.row(v, number, &cells)?;
                    }
                    record = text.into_byte_record();
                    continue;
                }
                Err(e) => record = e.into_byte_record(),
            }
        }
        // A file that is not UTF-8 throughout (one Windows-1252 cell pasted into a UTF-8 file, or
        // the reverse): each field as UTF-8 when it is, else in the legacy encoding, so no cell
        // turns into mojibake (`ZoÃ«`) or U+FFFD because another cell is not UTF-8.
        let decoded: Vec<Cow<'_, str>> =
            record.iter().map(|f| std::str::from_utf8(f).map_or_else(|_| legacy.decode_without_bom_handling(f).0, Cow::Borrowed)).collect();
        if controls_at.is_none() && decoded.iter().any(|c| matches!(c, Cow::Owned(c) if c.contains(is_c1_control))) {
            controls_at = Some(number);
        }
        shape.row(v, number, &shown_cells(decoded, spaced, delimiter))?;
    }
    if let Some(row) = controls_at {
        v.warning(format!(
            "row {row} has characters that are not letters as this file's text was read ({}): it may come from a Mac or DOS program; save the file from your spreadsheet as \"CSV UTF-8\" and upload it again",
            decoded_legacy.unwrap_or(legacy).name()
        ));
    }
    if shape.started() { Ok(()) } else { Err(FileError::Empty.into()) }
}

fn not_utf8_warning(legacy: &'static Encoding) -> String {
    format!(
        "the file is not UTF-8 text: it was read as {}{}; if names look wrong in the result, save the file from your spreadsheet as \"CSV UTF-8\" and upload it again",
        legacy.name(),
        script_of(legacy).map(|s| format!(" ({s})")).unwrap_or_default()
    )
}

/// What the text reader reads from (a trait object: a decoded file is read by the same code).
pub(super) trait ReadSeek: Read + Seek {}
impl<T: Read + Seek + ?Sized> ReadSeek for T {}

/// Text in a legacy multi-byte encoding from `origin` on, read as UTF-8 line by line: a line that
/// is valid UTF-8 passes as it is (a file mixing the two keeps both, as each field does in the
/// byte reader), any other is decoded (CR and LF are never part of a character in these
/// encodings). A line longer than `LINE` is decoded as it streams; memory stays a few MB. A
/// seek decodes again from the start: the text reader seeks to its passes' start and to a line
/// an error names, a few times a file. (`encoding_rs_io` decodes as a stream too, but cannot
/// seek, nor pass UTF-8 lines through.)
struct Decoded<'r, R: ?Sized> {
    inner: &'r mut R,
    origin: u64,
    encoding: &'static Encoding,
    raw: Vec<u8>,
    /// The line being read, until its end or `LINE` bytes.
    line: Vec<u8>,
    /// The decoder of a line longer than `LINE`, until its end.
    long: Option<encoding_rs::Decoder>,
    out: Vec<u8>,
    /// The decoded bytes given so far of `out`, and whether the input has ended (all flushed).
    given: usize,
    ended: bool,
    /// Decoded bytes given so far: the position `Seek` reports.
    position: u64,
}

impl<'r, R: Read + Seek + ?Sized> Decoded<'r, R> {
    const RAW: usize = 1 << 16;
    const LINE: usize = 1 << 20;

    fn new(inner: &'r mut R, origin: u64, encoding: &'static Encoding) -> std::io::Result<Self> {
        inner.seek(SeekFrom::Start(origin))?;
        let raw = vec![0; Self::RAW];
        Ok(Decoded { inner, origin, encoding, raw, line: Vec::new(), long: None, out: Vec::new(), given: 0, ended: false, position: 0 })
    }

    /// The next buffer of raw bytes into `out`, as much of it as ends lines (or streams).
    fn fill(&mut self) -> std::io::Result<()> {
        self.out.clear();
        self.given = 0;
        let n = self.inner.read(&mut self.raw)?;
        let (encoding, out) = (self.encoding, &mut self.out);
        if n == 0 {
            self.ended = true;
            match self.long.take() {
                Some(mut decoder) => decode_into(&mut decoder, &[], true, out),
                None => line_into(encoding, &std::mem::take(&mut self.line), out),
            }
            return Ok(());
        }
        let mut rest = &self.raw[..n];
        while !rest.is_empty() {
            let cut = memchr::memchr2(b'\n', b'\r', rest).map_or(rest.len(), |i| i + 1);
            let (piece, after) = rest.split_at(cut);
            let ends = matches!(piece.last(), Some(b'\n' | b'\r'));
            if let Some(decoder) = &mut self.long {
                decode_into(decoder, piece, ends, out);
                if ends {
                    self.long = None;
                }
            } else {
                self.line.extend_from_slice(piece);
                if ends {
                    line_into(encoding, &self.line, out);
                    self.line.clear();
                } else if self.line.len() > Self::LINE {
                    let mut decoder = encoding.new_decoder_without_bom_handling();
                    decode_into(&mut decoder, &self.line, false, out);
                    self.line.clear();
                    self.long = Some(decoder);
                }
            }
            rest = after;
        }
        Ok(())
    }
}

/// A whole line: as it is when it is UTF-8, else decoded.
fn line_into(encoding: &'static Encoding, line: &[u8], out: &mut Vec<u8>) {
    match std::str::from_utf8(line) {
        Ok(text) => out.extend_from_slice(text.as_bytes()),
        Err(_) => out.extend_from_slice(encoding.decode_without_bom_handling(line).0.as_bytes()),
    }
}

/// Part of a long line through its decoder, room made for what it can write in its state.
fn decode_into(decoder: &mut encoding_rs::Decoder, src: &[u8], last: bool, out: &mut Vec<u8>) {
    let room = decoder.max_utf8_buffer_length(src.len()).unwrap_or(usize::MAX / 2 - out.len());
    let start = out.len();
    out.resize(start + room, 0);
    let (_, read, written, _) = decoder.decode_to_utf8(src, &mut out[start..], last);
    debug_assert_eq!(read, src.len(), "room for all of it");
    out.truncate(start + written);
}

impl<R: Read + Seek + ?Sized> Read for Decoded<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.given == self.out.len() && !self.ended {
            self.fill()?;
        }
        let n = buf.len().min(self.out.len() - self.given);
        buf[..n].copy_from_slice(&self.out[self.given..self.given + n]);
        self.given += n;
        self.position += n as u64;
        Ok(n)
    }
}

impl<R: Read + Seek + ?Sized> Seek for Decoded<'_, R> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let SeekFrom::Start(to) = to else {
            return Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "decoded text seeks from its start only"));
        };
        if to < self.position {
            self.inner.seek(SeekFrom::Start(self.origin))?;
            (self.given, self.ended, self.position, self.long) = (0, false, 0, None);
            self.out.clear();
            self.line.clear();
        }
        let skip = to - self.position;
        std::io::copy(&mut (&mut *self).take(skip), &mut std::io::sink())?;
        Ok(self.position)
    }
}

/// The CSV reader's buffer in pass 2.
const CSV_BUFFER: usize = 1 << 16;

/// A reader that keeps the last bytes it gave (more than the CSV reader reads ahead), by their
/// offset from its start: what ended a record is looked at once the CSV reader has passed it.
struct Recent<R> {
    inner: R,
    ring: Vec<u8>,
    total: u64,
}

impl<R> Recent<R> {
    const KEPT: usize = 4 * CSV_BUFFER;

    fn new(inner: R) -> Self {
        Recent { inner, ring: vec![0; Self::KEPT], total: 0 }
    }

    /// The byte at `at`, if it was read and is still kept.
    fn byte_at(&self, at: u64) -> Option<u8> {
        (at < self.total && self.total - at <= Self::KEPT as u64).then(|| self.ring[(at % Self::KEPT as u64) as usize])
    }
}

impl<R: Read> Read for Recent<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(out)?;
        // Only the last `KEPT` bytes of a read larger than the ring matter.
        let kept = &out[n.saturating_sub(Self::KEPT)..n];
        let from = self.total + (n - kept.len()) as u64;
        for (k, piece) in kept.chunks(Self::KEPT).enumerate() {
            let at = ((from + (k * Self::KEPT) as u64) % Self::KEPT as u64) as usize;
            let first = piece.len().min(Self::KEPT - at);
            self.ring[at..at + first].copy_from_slice(&piece[..first]);
            self.ring[..piece.len() - first].copy_from_slice(&piece[first..]);
        }
        self.total += n as u64;
        Ok(n)
    }
}

/// Bytes of a text that is not UTF-8 the encoding guess reads: enough for any roster's names.
const DETECT_BYTES: u64 = 16 << 20;

/// The encoding of text that is not UTF-8, from the lines of its first `DETECT_BYTES` that are
/// not UTF-8 (a UTF-8 file with one pasted cell is judged by that cell's line alone; a pass of
/// its own, so the guess is the same whatever pass 1's buffers): `chardetng`'s guess, except
/// that Windows-1252 stays when the guess reads every byte those lines have as it does (`René`
/// alone guesses Windows-1250, whose é is the same byte: the same text, and no warning).
fn legacy_encoding<R: Read + Seek + ?Sized>(r: &mut R, start: u64) -> std::io::Result<&'static Encoding> {
    use std::io::BufRead;
    r.seek(SeekFrom::Start(start))?;
    let mut lines = std::io::BufReader::with_capacity(1 << 16, r.take(DETECT_BYTES));
    let mut detector = chardetng::EncodingDetector::new();
    let mut high = [false; 128];
    // Bytes ≥ 0x80, and those in runs of three or more (words of nothing else).
    let (mut highs, mut in_words) = (0u64, 0u64);
    let mut mac = MacOrWindows::default();
    let mut line = Vec::new();
    while lines.read_until(b'\n', &mut line)? > 0 {
        if std::str::from_utf8(&line).is_err() {
            mac.weigh(&line);
            let mut run = 0u64;
            for &b in &line {
                if b >= 0x80 {
                    high[usize::from(b - 0x80)] = true;
                    run += 1;
                } else {
                    in_words += if run >= 3 { run } else { 0 };
                    highs += run;
                    run = 0;
                }
            }
            (highs, in_words) = (highs + run, in_words + if run >= 3 { run } else { 0 });
            detector.feed(&line, false);
        }
        line.clear();
    }
    detector.feed(&[], true);
    let guess = detector.guess(None, false);
    let same_as_1252 = guess.is_single_byte()
        && (0x80u8..=0xff)
            .filter(|b| high[usize::from(b - 0x80)])
            .all(|b| guess.decode_without_bom_handling(&[b]).0 == WINDOWS_1252.decode_without_bom_handling(&[b]).0);
    // A guess from a few words (a one-row file: `Иван`) falls back to Windows-1252, read as
    // `Èâàí`, without a word. Western names have an accent here and there (`René`, `Müller`), not
    // words made of accented letters alone; Cyrillic words in Windows-1251 are just that (its
    // letters are 0xC0-0xFF, Ё and ё 0xA8 and 0xB8). Read so, the result names the encoding.
    let cyrillic_letters = (0x80u8..=0xff).filter(|b| high[usize::from(b - 0x80)]).all(|b| b >= 0xC0 || b == 0xA8 || b == 0xB8);
    let words_of_high_letters = highs > 0 && in_words * 4 >= highs * 3 && cyrillic_letters;
    Ok(match (same_as_1252 || guess == WINDOWS_1252, words_of_high_letters) {
        (true, true) => encoding_rs::WINDOWS_1251,
        (true, false) if mac.is_mac() => encoding_rs::MACINTOSH,
        (true, false) => WINDOWS_1252,
        (false, _) => guess,
    })
}

/// Excel for Mac's "CSV" is Mac Roman: its lowercase accented letters are 0x87-0x9F, where
/// Windows-1252 has quotes, dashes and a few capitals, so `Müller` read as Windows-1252 is `MŸller`
/// and `José` is `JosŽ`; chardetng guesses Windows-1252 for both. Each byte ≥ 0x80 is weighed in
/// its word as either encoding reads it: a lowercase letter beside lowercase letters counts for
/// it; a capital after a lowercase letter, or a mark inside a word, against it (an apostrophe
/// inside a word, `O’Brien`, `don’t`, is neither). Mac Roman only when Windows-1252 reads
/// something no name has (`JosŽ`, a control character) and Mac Roman nothing of the kind: its
/// `ñ` and `í` are Windows-1252's dash and apostrophe, which `Mary–Jane` and `Ng’ang’a` have.
#[derive(Default)]
struct MacOrWindows {
    mac: i64,
    windows: i64,
    /// Capitals after a lowercase letter, control characters: as each reads the bytes.
    mac_impossible: u64,
    windows_impossible: u64,
}

impl MacOrWindows {
    fn weigh(&mut self, line: &[u8]) {
        for (i, &b) in line.iter().enumerate() {
            if b < 0x80 {
                continue;
            }
            let before = i.checked_sub(1).map(|j| line[j]);
            let after = line.get(i + 1).copied();
            let (mac, windows) = (decoded(encoding_rs::MACINTOSH, b), decoded(WINDOWS_1252, b));
            self.mac += fit(mac, before, after);
            self.windows += fit(windows, before, after);
            self.mac_impossible += u64::from(impossible(mac, before));
            self.windows_impossible += u64::from(impossible(windows, before));
        }
    }

    /// Clearly Mac Roman: Windows-1252 reads what no name has, Mac Roman does not, and two words or
    /// more read better so.
    fn is_mac(&self) -> bool {
        self.windows_impossible > 0 && self.mac_impossible == 0 && self.mac >= self.windows + 2
    }
}

/// A capital right after a lowercase letter (`JosŽ`), or a control character.
fn impossible(c: char, before: Option<u8>) -> bool {
    c.is_control() || (c.is_uppercase() && before.is_some_and(|b| b.is_ascii_lowercase()))
}

/// Byte `b` ≥ 0x80 as Mac Roman or Windows-1252 reads it (tables made once).
fn decoded(e: &'static Encoding, b: u8) -> char {
    static TABLES: std::sync::OnceLock<[[char; 128]; 2]> = std::sync::OnceLock::new();
    let tables = TABLES.get_or_init(|| {
        [encoding_rs::MACINTOSH, WINDOWS_1252]
            .map(|e| std::array::from_fn(|i| e.decode_without_bom_handling(&[0x80 + i as u8]).0.chars().next().unwrap_or('\u{FFFD}')))
    });
    tables[usize::from(e != encoding_rs::MACINTOSH)][usize::from(b.wrapping_sub(0x80) & 0x7F)]
}

/// How well `c` fits between the bytes `before` and `after` in a name.
fn fit(c: char, before: Option<u8>, after: Option<u8>) -> i64 {
    let lower = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase());
    let letter = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphabetic());
    if c.is_alphabetic() {
        match (c.is_lowercase(), lower(before) || lower(after)) {
            (true, true) => 1,
            (false, _) if lower(before) => -1,
            _ => 0,
        }
    } else if letter(before) && letter(after) && !matches!(c, '\u{2019}' | '\u{2018}' | '\'') {
        -1
    } else {
        0
    }
}

/// `="00123"`: exports write an id or phone number as a formula of one string so that Excel
/// keeps its leading zeros or plus sign, and a spreadsheet shows the string. Stored as written,
/// the id `="00123"` became the user's for good (ids never change).
fn is_text_formula(field: &str) -> bool {
    field.len() >= 3 && field.starts_with("=\"") && field.ends_with('"') && {
        // One string: every quote inside is doubled (`="a""b"`), none ends it early (`="a"&"b"`).
        let inner = &field.as_bytes()[2..field.len() - 1];
        let mut run = 0usize;
        inner.iter().all(|&b| {
            if b == b'"' {
                run += 1;
                true
            } else {
                std::mem::take(&mut run).is_multiple_of(2)
            }
        }) && run.is_multiple_of(2)
    }
}

/// The string a text formula shows (`="00123"` is `00123`), any other field as it is.
fn formula_text(field: Cow<'_, str>) -> Cow<'_, str> {
    if !is_text_formula(&field) {
        return field;
    }
    match field {
        Cow::Borrowed(f) if !f[2..f.len() - 1].contains('"') => Cow::Borrowed(&f[2..f.len() - 1]),
        other => Cow::Owned(other[2..other.len() - 1].replace("\"\"", "\"")),
    }
}

/// A record's fields as a spreadsheet shows them: a value quoted after a spaced file's space whole
/// again, a text formula as its string.
fn shown_cells(cells: Vec<Cow<'_, str>>, spaced: bool, delimiter: u8) -> Vec<Cow<'_, str>> {
    let cells = if spaced { join_spaced_quotes(cells, delimiter as char) } else { cells };
    cells.into_iter().map(formula_text).collect()
}

/// A header written with a space after each delimiter (`Email, FirstName, LastName`), as people
/// and some scripts write CSV: its rows quote a value after that space (`ann@x.com, "Lee, Jr"`),
/// where CSV sees no quoting (a quote opens a field only at its first byte) and splits the value
/// at its comma, moving every later value one column right without a word.
fn spaced_header(head: &str, delimiter: u8) -> bool {
    // The first line, whatever ends it (a CR alone in old Mac files).
    let Some(line) = head.split(['\n', '\r']).find(|l| !l.trim().is_empty()) else { return false };
    // Trailing empty headers (a row of delimiters past the last column) say nothing.
    let fields: Vec<&str> = line.split(delimiter as char).skip(1).collect();
    let named = fields.iter().rposition(|f| !f.trim().is_empty()).map_or(0, |last| last + 1);
    named > 0 && fields[..named].iter().all(|f| f.starts_with(' ') && !f.trim().is_empty())
}

/// A field that is a space, then a quote: a quoted value of a spaced file.
fn opens_spaced_quote(field: &str) -> bool {
    field.starts_with(' ') && field.trim_start().starts_with('"')
}

/// The fields of a spaced file's record with each quoted value whole again: the fields CSV cut
/// it into joined at the delimiter, its quotes taken off (`""` is `"`). A quote that does not
/// close at a field's end (text after it, or the record ends first) leaves the fields as they
/// were, and those after it too. Every character is looked at once, whatever the record holds.
fn join_spaced_quotes<'a>(cells: Vec<Cow<'a, str>>, delimiter: char) -> Vec<Cow<'a, str>> {
    let mut out: Vec<Cow<'a, str>> = Vec::with_capacity(cells.len());
    let mut cells = cells.into_iter();
    while let Some(cell) = cells.next() {
        if !opens_spaced_quote(&cell) {
            out.push(cell);
            continue;
        }
        // The value so far, and the fields it took (to give back if it never closes).
        let (mut value, mut taken) = (String::new(), vec![cell]);
        let closed = loop {
            let field = taken.last().map(|f| f.as_ref()).unwrap_or_default();
            let text = if taken.len() == 1 { &field.trim_start()[1..] } else { field };
            match unquote_field(text, &mut value) {
                Some(true) => break true,
                Some(false) => break false,
                None => match cells.next() {
                    Some(next) => {
                        value.push(delimiter);
                        taken.push(next);
                    }
                    None => break false,
                },
            }
        };
        if closed {
            out.push(Cow::Owned(value));
        } else {
            out.extend(taken);
            out.extend(cells.by_ref());
        }
    }
    out
}

/// Reads `text` (inside a quoted value) onto `value`: `Some(true)` when its closing quote ends the
/// field (spaces after it allowed), `Some(false)` when text follows that quote, `None` when the
/// field ends still inside the quotes.
fn unquote_field(text: &str, value: &mut String) -> Option<bool> {
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if c != '"' {
            value.push(c);
        } else if chars.peek().is_some_and(|(_, n)| *n == '"') {
            chars.next();
            value.push('"');
        } else {
            return Some(text[at + 1..].trim().is_empty());
        }
    }
    None
}

/// C1 control characters: no roster text has them; a legacy encoding gives them for bytes it
/// does not define (Windows-1252's 0x81, 0x8D, 0x8F, 0x90, 0x9D: Mac Roman's è is 0x8F).
fn is_c1_control(c: char) -> bool {
    ('\u{80}'..='\u{9f}').contains(&c)
}

/// What a legacy encoding writes, for the warning that names it.
fn script_of(e: &'static Encoding) -> Option<&'static str> {
    Some(match e.name() {
        "windows-1250" | "ISO-8859-2" => "Central European",
        "windows-1251" | "KOI8-R" | "KOI8-U" | "IBM866" | "ISO-8859-5" | "x-mac-cyrillic" => "Cyrillic",
        "windows-1253" | "ISO-8859-7" => "Greek",
        "windows-1254" => "Turkish",
        "windows-1255" | "ISO-8859-8" | "ISO-8859-8-I" => "Hebrew",
        "windows-1256" | "ISO-8859-6" => "Arabic",
        "windows-1257" | "ISO-8859-4" | "ISO-8859-13" => "Baltic",
        "windows-1258" => "Vietnamese",
        "macintosh" => "Mac OS Roman, as Excel for Mac saves a CSV",
        "windows-874" => "Thai",
        "Shift_JIS" | "EUC-JP" | "ISO-2022-JP" => "Japanese",
        "GBK" | "gb18030" => "Chinese, simplified",
        "Big5" => "Chinese, traditional",
        "EUC-KR" => "Korean",
        _ => return None,
    })
}

/// The line (1-based) of byte `at` of the text starting at `start`: counted again only when a
/// message needs it. A line ends at LF, CRLF or a CR alone (old Mac files).
pub(super) fn line_of<R: Read + Seek + ?Sized>(r: &mut R, start: u64, at: u64) -> std::io::Result<usize> {
    r.seek(SeekFrom::Start(start))?;
    let (mut lines, mut after_cr) = (1, false);
    let mut left = at;
    let mut buf = vec![0u8; 1 << 16];
    while left > 0 {
        let want = buf.len().min(left as usize);
        let k = read_up_to(r, &mut buf[..want])?;
        if k == 0 {
            break;
        }
        for i in memchr::memchr2_iter(b'\n', b'\r', &buf[..k]) {
            let crlf = buf[i] == b'\n' && if i == 0 { after_cr } else { buf[i - 1] == b'\r' };
            lines += usize::from(!crlf);
        }
        after_cr = buf[k - 1] == b'\r';
        left -= k as u64;
    }
    Ok(lines)
}

/// Excel's `sep=;` first line (written by some exports so Excel splits the file right): the
/// delimiter it names and the line's length with its break.
fn separator_line(head: &[u8]) -> Option<(u8, usize)> {
    let rest = head.strip_prefix(b"sep=")?;
    let (&delimiter, after) = rest.split_first()?;
    let eol = match after {
        [b'\r', b'\n', ..] => 2,
        [b'\n' | b'\r', ..] => 1,
        _ => return None,
    };
    (delimiter.is_ascii_punctuation() || delimiter == b'\t').then_some((delimiter, 5 + eol))
}

/// The delimiters of the header record (the first non-blank one) outside quotes.
fn header_delimiters(text: &str, delimiter: u8) -> usize {
    let (mut count, mut quoted, mut blank) = (0, false, true);
    for b in text.bytes() {
        match b {
            b'"' => quoted = !quoted,
            b'\n' | b'\r' if !quoted && !blank => break,
            _ if b == delimiter && !quoted => count += 1,
            _ => {}
        }
        blank &= b.is_ascii_whitespace();
    }
    count
}

/// Pass 1 over delimited text, buffer by buffer: whether it has any content, where its first NUL
/// is, whether it is valid UTF-8, where a quote opened that never closes (RFC 4180 quoting: a
/// quote opens a field only at its start; `""` inside a quoted field is an escaped quote), and
/// where a quoted field swallowed rows: one that spans line breaks and either closes where no
/// field ends (`"Sales` ... `,"R&D"`: the second quote closed the first) or holds, on two lines
/// after a break, as many delimiters as the header (whole records read as one cell).
pub(super) struct Scan {
    delimiter: u8,
    /// The header's delimiters (its columns less one): a line holding as many is a record.
    record_delimiters: usize,
    offset: u64,
    content: bool,
    nul_at: Option<u64>,
    utf8: Utf8Check,
    quoted: bool,
    /// Inside a quoted field, the previous buffer ended on a quote: escaped or closing.
    quote_pending: bool,
    /// Last byte of the previous buffer (`None` at the start of the text: a field start).
    prev: Option<u8>,
    opened_at: u64,
    /// The quoted field being read has a line break; a line after one held a record.
    broken: bool,
    /// Lines after a break that held as many delimiters as the header (records, or an address).
    record_lines: usize,
    /// Delimiters on the quoted field's current line.
    line_delimiters: usize,
    /// A quoted field with a line break just closed: the next byte must end the field.
    closed_broken: bool,
    /// The first quoted field that swallowed rows: where it opened and closed.
    swallowed: Option<(u64, u64)>,
    /// Line breaks: an upper bound of the records, to size the validator's key table once.
    newlines: u64,
    /// Whether the file's first line break is CRLF (`None` before one is seen).
    crlf: Option<bool>,
}

impl Scan {
    fn new(delimiter: u8, record_delimiters: usize) -> Self {
        Scan {
            delimiter,
            record_delimiters,
            offset: 0,
            content: false,
            nul_at: None,
            utf8: Utf8Check::default(),
            quoted: false,
            quote_pending: false,
            prev: None,
            opened_at: 0,
            broken: false,
            record_lines: 0,
            line_delimiters: 0,
            closed_broken: false,
            swallowed: None,
            newlines: 0,
            crlf: None,
        }
    }

    fn feed(&mut self, buf: &[u8]) {
        if buf.is_empty() {
            return;
        }
        if self.nul_at.is_none()
            && let Some(i) = memchr::memchr(0, buf)
        {
            self.nul_at = Some(self.offset + i as u64);
        }
        if !self.content {
            self.content = buf.iter().any(|b| !b.is_ascii_whitespace());
        }
        self.utf8.feed(buf);
        self.newlines += memchr::memchr_iter(b'\n', buf).count() as u64;
        if self.crlf.is_none()
            && let Some(i) = memchr::memchr(b'\n', buf)
        {
            self.crlf = Some(if i == 0 { self.prev == Some(b'\r') } else { buf[i - 1] == b'\r' });
        }
        let mut i = 0;
        if self.quote_pending {
            self.quote_pending = false;
            if buf[0] == b'"' {
                i = 1; // "" : an escaped quote, still inside the field
            } else {
                self.close(self.offset - 1);
            }
        }
        while i < buf.len() {
            if std::mem::take(&mut self.closed_broken) && !matches!(buf[i], b'\n' | b'\r') && buf[i] != self.delimiter {
                self.swallowed.get_or_insert((self.opened_at, self.offset + i as u64 - 1));
            }
            if self.quoted {
                let delimiters = |from: usize, to: usize| buf[from..to].iter().filter(|&&b| b == self.delimiter).count();
                let Some(j) = memchr::memchr3(b'"', b'\n', b'\r', &buf[i..]) else {
                    self.line_delimiters += delimiters(i, buf.len());
                    break;
                };
                let q = i + j;
                self.line_delimiters += delimiters(i, q);
                if buf[q] != b'"' {
                    self.line_break();
                    i = q + 1;
                } else if q + 1 == buf.len() {
                    self.quote_pending = true;
                    i = buf.len();
                } else if buf[q + 1] == b'"' {
                    i = q + 2;
                } else {
                    self.close(self.offset + q as u64);
                    i = q + 1;
                }
            } else {
                let Some(j) = memchr::memchr(b'"', &buf[i..]) else { break };
                let q = i + j;
                let before = if q == 0 { self.prev } else { Some(buf[q - 1]) };
                // CR alone ends a line too (old Mac files), as the CSV reader reads it.
                if before.is_none_or(|b| b == b'\n' || b == b'\r' || b == self.delimiter) {
                    (self.quoted, self.broken, self.record_lines, self.line_delimiters) = (true, false, 0, 0);
                    self.opened_at = self.offset + q as u64;
                }
                i = q + 1;
            }
        }
        self.prev = buf.last().copied();
        self.offset += buf.len() as u64;
    }

    /// A line break inside the quoted field: the line it ends, if after a break, may be a record.
    fn line_break(&mut self) {
        self.record_lines += usize::from(self.looks_like_a_record());
        (self.broken, self.line_delimiters) = (true, 0);
    }

    fn looks_like_a_record(&self) -> bool {
        self.broken && self.record_delimiters >= 2 && self.line_delimiters >= self.record_delimiters
    }

    /// The quoted field's closing quote, at `at`.
    fn close(&mut self, at: u64) {
        // One such line may be an address (`12 Main St` / `Springfield, IL, 62701`, as Excel
        // writes a cell typed with Alt+Enter); rows swallowed are two at least (one whole, and
        // the one the quote closes in). Fewer, in a narrow or ragged file: `stream` looks at
        // each cell's lines for a row's address.
        if self.record_lines + usize::from(self.looks_like_a_record()) >= 2 {
            self.swallowed.get_or_insert((self.opened_at, at));
        }
        self.quoted = false;
        self.closed_broken = self.broken;
    }

    /// The end of the text: a quote pending on the last byte closed its field there.
    fn finish(&mut self) {
        if std::mem::take(&mut self.quote_pending) {
            self.close(self.offset - 1);
        }
    }

    /// Where the quote that never closes was opened.
    fn unclosed(&self) -> Option<u64> {
        (self.quoted && !self.quote_pending).then_some(self.opened_at)
    }
}

/// UTF-8 validity of a stream read in pieces: a character split between two buffers is carried over.
#[derive(Default)]
pub(super) struct Utf8Check {
    invalid: bool,
    carry: Vec<u8>,
}

impl Utf8Check {
    fn feed(&mut self, mut buf: &[u8]) {
        if self.invalid {
            return;
        }
        if !self.carry.is_empty() {
            let take = buf.len().min(4 - self.carry.len());
            let mut joined = std::mem::take(&mut self.carry);
            let had = joined.len();
            joined.extend_from_slice(&buf[..take]);
            match std::str::from_utf8(&joined) {
                Ok(_) => buf = &buf[take..],
                Err(e) if e.valid_up_to() >= had => buf = &buf[e.valid_up_to() - had..],
                Err(e) if e.error_len().is_none() && take == buf.len() => {
                    self.carry = joined; // still incomplete: the buffer was tiny
                    return;
                }
                Err(_) => {
                    self.invalid = true;
                    return;
                }
            }
        }
        if let Err(e) = std::str::from_utf8(buf) {
            if e.error_len().is_none() {
                self.carry = buf[e.valid_up_to()..].to_vec();
            } else {
                self.invalid = true;
            }
        }
    }

    fn valid(&self) -> bool {
        !self.invalid && self.carry.is_empty()
    }
}

/// Many control characters: not a text roster, whatever its name says.
pub(super) fn looks_binary(text: &str) -> bool {
    let sample: Vec<char> = text.chars().take(8192).collect();
    let control = sample.iter().filter(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')).count();
    control * 20 > sample.len().max(1)
}

/// The delimiter seen most often outside quotes in the header record (from its first non-blank
/// line). A tie (`Name, First;Name, Last;Email`: two of each) goes to the one that splits the
/// records after it (up to 20, within `text`) into as many fields as the header most often, then
/// to the more common delimiter; a header without any reads as `,`. `whole`: `text` is the whole
/// file (else a record it cuts at its end does not vote).
pub(super) fn sniff_delimiter(text: &str, whole: bool) -> u8 {
    const CANDIDATES: [u8; 4] = [b',', b';', b'\t', b'|'];
    // Records, not lines: a quoted header cell may hold a line break (fuzzing found a result file
    // whose header did, read back as one column because only its first line was looked at).
    let start: usize = text.split_inclusive('\n').take_while(|l| l.trim().is_empty()).map(str::len).sum();
    let mut records: Vec<[usize; 4]> = Vec::new();
    let (mut counts, mut quoted, mut blank) = ([0usize; 4], false, true);
    for b in text.as_bytes()[start..].iter().copied() {
        if records.len() > 20 {
            break;
        }
        match b {
            b'"' => quoted = !quoted,
            // A CR alone ends a record too (old Mac files: Excel for Mac's "CSV (Macintosh)").
            b'\n' | b'\r' if !quoted => {
                if !blank {
                    records.push(counts);
                }
                (counts, blank) = ([0; 4], true);
                continue;
            }
            _ if !quoted => {
                if let Some(i) = CANDIDATES.iter().position(|&d| d == b) {
                    counts[i] += 1;
                }
            }
            _ => {}
        }
        if !b.is_ascii_whitespace() {
            blank = false;
        }
    }
    if !blank && records.len() <= 20 && (whole || records.is_empty()) {
        records.push(counts); // the file's last record, without its line break
    }
    let Some((header, rest)) = records.split_first() else { return b',' };
    let most = header.iter().copied().max().unwrap_or(0);
    if most == 0 {
        return b',';
    }
    let agreeing = |i: usize| rest.iter().filter(|r| r[i] == header[i]).count();
    // Among the header's most frequent, the most agreeing; ties keep the earlier (more common).
    let mut best: Option<(usize, usize)> = None;
    for i in (0..CANDIDATES.len()).filter(|&i| header[i] == most) {
        let score = agreeing(i);
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((i, score));
        }
    }
    best.map_or(b',', |(i, _)| CANDIDATES[i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use calamine::Data;

    fn cells(t: &Table) -> Vec<Vec<&str>> {
        t.rows.iter().map(|(_, r)| r.iter().map(String::as_str).collect()).collect()
    }

    /// A bad row on line 5 after two empty lines was "row 3": the CSV reader skips empty lines,
    /// which a spreadsheet shows as rows. A record over several lines is still one row.
    #[test]
    fn rows_are_numbered_as_a_spreadsheet_shows_them_empty_lines_included() {
        for eol in ["\n", "\r\n"] {
            let text = ["", "", "Email,Note", &format!("a@x.com,\"two{eol}lines\""), "", "", "b@x.com,x", "c@x.com,y", ""].join(eol);
            let t = decode(text.as_bytes()).unwrap();
            let numbers: Vec<u32> = t.rows.iter().map(|(n, _)| *n).collect();
            assert_eq!(numbers, [4, 7, 8], "{eol:?}");
            let unterminated = text.trim_end();
            assert_eq!(decode(unterminated.as_bytes()).unwrap().rows.last().unwrap().0, 8, "{eol:?}: the last line without its break");
        }
    }

    /// Line endings mixed in one file (a CRLF header over LF rows: edited on two systems, or
    /// joined from two exports): rows were numbered one too far, the whole file's numbering
    /// decided from its first line ending. Each record is now judged by what ended it, wherever
    /// the reads cut the file, and a record too long to look back over keeps the file's way.
    #[test]
    fn rows_are_numbered_as_shown_whatever_mix_of_line_endings() {
        let cases: [(&str, &[u32]); 5] = [
            ("Email,Note\r\na@x.com,1\nb@x.com,2\n\nc@x.com,3\n", &[2, 3, 5]),
            ("Email,Note\na@x.com,1\r\nb@x.com,2\r\n\r\nc@x.com,3\r\n", &[2, 3, 5]),
            ("Email,Note\r\na@x.com,\"two\nlines\"\r\n\nb@x.com,2\nc@x.com,3", &[2, 4, 5]),
            ("\r\n\nEmail,Note\na@x.com,1\r\n\r\n\nb@x.com,2\r\n", &[4, 7]),
            ("Email,Note\ra@x.com,1\rb@x.com,2\r", &[2, 3]),
        ];
        for (text, expected) in cases {
            for buffer in [1, 2, 3, 7, 1 << 16] {
                let t = read_with(text.as_bytes(), buffer).unwrap().remove(0);
                let numbers: Vec<u32> = t.rows.iter().map(|(n, _)| *n).collect();
                assert_eq!(numbers, expected, "{text:?}, pass-1 reads of {buffer}");
            }
        }
        // A CRLF cut between the CSV reader's reads (its CR the last byte of its first 64 KB).
        let straddle = format!("Email,Note\r\na@x.com,{}\r\nb@x.com,2\nc@x.com,3\r\n", "x".repeat(65_536 - 21));
        assert_eq!(straddle.find('\r').map(|_| straddle[12..].find('\r').unwrap() + 12), Some(65_535));
        let numbers: Vec<u32> = decode(straddle.as_bytes()).unwrap().rows.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [2, 3, 4]);
        let long = "x".repeat(600_000);
        for eol in ["\n", "\r\n"] {
            let text = format!("Email,Note{eol}a@x.com,{long}{eol}{eol}b@x.com,2{eol}");
            let numbers: Vec<u32> = decode(text.as_bytes()).unwrap().rows.iter().map(|(n, _)| *n).collect();
            assert_eq!(numbers, [2, 4], "{eol:?} after a record longer than the bytes kept");
        }
    }

    /// The bytes `Recent` keeps are the last ones read, at their offsets, whatever the reads.
    #[test]
    fn recent_bytes_are_kept_at_their_offsets() {
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        for step in [1usize, 1000, 65_536, 300_000] {
            let mut recent = Recent::new(&data[..]);
            let mut out = vec![0u8; step];
            while recent.read(&mut out).unwrap() > 0 {}
            let kept = Recent::<&[u8]>::KEPT as u64;
            for at in [0u64, 1, 400_000, 700_000 - kept, 699_999] {
                let expected = (at >= 700_000 - kept).then(|| data[at as usize]);
                assert_eq!(recent.byte_at(at), expected, "reads of {step}, byte {at}");
            }
            assert_eq!(recent.byte_at(700_000), None);
        }
    }

    /// `sep=;` on the first line (some exports write it for Excel): the delimiter, not the header.
    #[test]
    fn an_excel_separator_line_names_the_delimiter_and_is_not_the_header() {
        let t = decode(b"\xEF\xBB\xBFsep=;\r\nEmail;FirstName\r\nzoe@x.com;Zo\xc3\xab\r\n").unwrap();
        assert_eq!((t.delimiter, t.headers.clone()), (Some(';'), vec!["Email".to_string(), "FirstName".to_string()]));
        assert_eq!(t.rows, vec![(2, vec!["zoe@x.com".to_string(), "Zoë".to_string()])]);
        let t = decode(b"sep=,\nEmail,Name;Org\na@x.com,A;B\n").unwrap();
        assert_eq!(t.delimiter, Some(','), "named, not sniffed");
        assert_eq!(decode(b"sep=\nEmail\na@x.com\n").unwrap().headers, vec!["sep="], "no delimiter named: an ordinary line");
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
    fn a_line_break_inside_a_quoted_header_cell_does_not_fool_the_sniffer() {
        let t = decode(b"\"First\nName\";Email;Role\nAnn;ann@x.com;Learner\n").unwrap();
        assert_eq!(t.delimiter, Some(';'));
        assert_eq!(t.headers, vec!["First\nName", "Email", "Role"]);
        assert_eq!(cells(&t), vec![vec!["Ann", "ann@x.com", "Learner"]]);
        let t = decode(b"\r\n\r\n  \r\nEmail|Role\r\nann@x.com|Learner\r\n").unwrap();
        assert_eq!(t.delimiter, Some('|'), "leading blank lines skipped, CRLF too");
    }

    /// A header with as many commas as semicolons (European headers hold commas): the records
    /// after it decide. Before, the tie went to `,` and the Email column was not found.
    #[test]
    fn a_tie_in_the_header_goes_to_the_delimiter_the_records_agree_with() {
        let t = decode(b"Name, First;Name, Last;Email\nAnn;Lee;ann@x.com\nBob;Ray;bob@x.com\n").unwrap();
        assert_eq!(t.delimiter, Some(';'));
        assert_eq!(t.headers, vec!["Name, First", "Name, Last", "Email"]);
        assert_eq!(cells(&t), vec![vec!["Ann", "Lee", "ann@x.com"], vec!["Bob", "Ray", "bob@x.com"]]);
        // The same tie with comma-separated records stays `,`; a header alone keeps the more common.
        assert_eq!(decode(b"a;b,c;d,e\n1,2,3\n").unwrap().delimiter, Some(','));
        assert_eq!(sniff_delimiter("a;b,c\n", true), b',');
        assert_eq!(sniff_delimiter("a|b\tc\n1\t2\t3\n", true), b'\t');
        // No delimiter at all: one column, read with `,`.
        assert_eq!(sniff_delimiter("Email\nann@x.com\n", true), b',');
        assert_eq!(sniff_delimiter("", true), b',');
        assert_eq!(sniff_delimiter("\n\n  \n", true), b',');
        // A record the sample cuts does not vote (its delimiters are not all there); the file's
        // own last record, without its line break, does.
        assert_eq!(sniff_delimiter("a;b,c\n1;2,3,4,5", false), b',');
        assert_eq!(sniff_delimiter("a;b,c\n1;2", true), b';');
        assert_eq!(sniff_delimiter("a;b,c\n1;2", false), b',');
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

    /// One Windows-1252 cell in a UTF-8 file made every cell Windows-1252 (`ZoÃ«` stored), and
    /// with a UTF-8 byte-order mark the Windows-1252 cell lost its letter to U+FFFD.
    #[test]
    fn each_field_is_read_as_utf8_when_it_is_whatever_the_other_cells() {
        let mut mixed = "Email,FirstName\nzoe@x.com,Zoë\nbob@x.com,José\n".as_bytes().to_vec();
        mixed.extend(b"ren@x.com,Ren\xe9\n");
        assert_eq!(cells(&decode(&mixed).unwrap()).iter().map(|r| r[1]).collect::<Vec<_>>(), ["Zoë", "José", "René"]);
        let mut bom = b"\xEF\xBB\xBF".to_vec();
        bom.extend(&mixed);
        assert_eq!(cells(&decode(&bom).unwrap()).iter().map(|r| r[1]).collect::<Vec<_>>(), ["Zoë", "José", "René"]);
    }

    /// Excel's plain "CSV" is in the system's code page: Windows-1251 in Russia, 1250 in Poland,
    /// Shift_JIS in Japan. Read as Windows-1252, `Иван` was stored as `Èâàí` without a word; each
    /// is read in its encoding now, and the result says which.
    #[test]
    fn text_in_a_legacy_encoding_is_read_in_that_encoding_and_the_result_says_which() {
        let cases: [(&'static Encoding, &str, &str); 4] = [
            (encoding_rs::WINDOWS_1251, "Иван Петров", "windows-1251 (Cyrillic)"),
            (encoding_rs::WINDOWS_1250, "Łukasz Żółć", "windows-1250 (Central European)"),
            (encoding_rs::SHIFT_JIS, "田中太郎", "Shift_JIS (Japanese)"),
            (encoding_rs::WINDOWS_1254, "Şükrü Çağlar Işık", "windows-1254 (Turkish)"),
        ];
        for (enc, name, said) in cases {
            let text = format!("Email;Name\r\nx@example.com;{name}\r\ny@example.com;Ann\r\n");
            let bytes = enc.encode(&text).0.into_owned();
            let (tables, warnings) = read_with_warnings(&bytes, 1 << 20).unwrap();
            assert_eq!(tables[0].rows[0].1[1], name, "{}", enc.name());
            assert_eq!(tables[0].encoding.as_deref(), Some(enc.name()));
            assert!(warnings.len() == 1 && warnings[0].contains(said) && warnings[0].contains("CSV UTF-8"), "{warnings:?}");
            // Whatever pass 1's read boundaries (the guess reads the file again on its own).
            for buffer in [1, 2, 3, 7] {
                assert_eq!(read_with_warnings(&bytes, buffer).unwrap(), (tables.clone(), warnings.clone()), "{} {buffer}", enc.name());
            }
        }
        // A file of a few Cyrillic words: too little for the guess, which fell back to
        // Windows-1252 (`Èâàí`, no warning). Words of high letters alone are no Western text.
        for text in ["Email,Имя\na@x.com,Иван\n", "Email,Name\na@x.com,Пётр\n"] {
            let bytes = encoding_rs::WINDOWS_1251.encode(text).0.into_owned();
            let (tables, warnings) = read_with_warnings(&bytes, 1 << 20).unwrap();
            assert_eq!(tables[0].rows[0].1[1], text.lines().nth(1).unwrap().split(',').nth(1).unwrap(), "{text:?}");
            assert!(warnings.len() == 1 && warnings[0].contains("windows-1251 (Cyrillic)"), "{warnings:?}");
        }
        // Western European text is Windows-1252, as before, and says nothing.
        let bytes =
            encoding_rs::WINDOWS_1252.encode("Email,Name\nx@example.com,Françoise Lefèvre\ny@example.com,Zoë Müller\n").0.into_owned();
        let (tables, warnings) = read_with_warnings(&bytes, 1 << 20).unwrap();
        assert_eq!(tables[0].rows[0].1[1], "Françoise Lefèvre");
        assert!(warnings.is_empty(), "{warnings:?}");
        for western in ["Email,Name\na@x.com,René\n", "Email,Name\na@x.com,Größe Ærø Çà\n", "Email,Name\na@x.com,José Núñez\n"] {
            let bytes = encoding_rs::WINDOWS_1252.encode(western).0.into_owned();
            let (tables, warnings) = read_with_warnings(&bytes, 1 << 20).unwrap();
            assert_eq!(tables[0].rows[0].1[1], western.lines().nth(1).unwrap().split(',').nth(1).unwrap());
            assert!(warnings.is_empty(), "{western:?}: {warnings:?}");
        }
        // Pipe-delimited Shift_JIS, GBK and Big5: the second byte of a double-byte character may
        // be 0x7C, `|` in ASCII (ポ is 0x83 0x7C), and was read as the delimiter: ポール split
        // into two cells, the row one cell too long. The file is read as decoded text.
        let pipes: [(&'static Encoding, &str); 3] =
            [(encoding_rs::SHIFT_JIS, "ポール|田中 ポ"), (encoding_rs::GBK, "张億|王瑋"), (encoding_rs::BIG5, "許尚|陳四")];
        for (enc, names) in pipes {
            let (first, last) = names.split_once('|').unwrap();
            let text = format!("Email|FirstName|LastName\r\nx@example.com|{first}|{last}\r\ny@example.com|\"{first}\n{last}\"|{last}\r\n");
            let bytes = enc.encode(&text).0.into_owned();
            assert!(bytes.windows(2).any(|w| w[0] >= 0x80 && w[1] == b'|'), "{}: no trail byte 0x7C in the case", enc.name());
            let (tables, warnings) = read_with_warnings(&bytes, 1 << 20).unwrap();
            let t = &tables[0];
            assert_eq!((t.encoding.as_deref(), t.delimiter), (Some(enc.name()), Some('|')));
            assert_eq!(t.headers.len(), 3, "{}", enc.name());
            let rows: Vec<(u32, Vec<&str>)> = t.rows.iter().map(|(n, r)| (*n, r.iter().map(String::as_str).collect())).collect();
            let two = format!("{first}\n{last}");
            assert_eq!(rows, [(2, vec!["x@example.com", first, last]), (3, vec!["y@example.com", two.as_str(), last])], "{}", enc.name());
            assert!(warnings.len() == 1 && warnings[0].contains(enc.name()) && warnings[0].contains("CSV UTF-8"), "{warnings:?}");
            for buffer in [1, 2, 3, 7] {
                assert_eq!(read_with_warnings(&bytes, buffer).unwrap(), (tables.clone(), warnings.clone()), "{} {buffer}", enc.name());
            }
        }
        // Mac Roman (Excel for Mac's "CSV (Macintosh)"): chardetng guesses Windows-1252, which
        // stored `Zoë Müller` as `Zo‘ MŸller` and `José Núñez` as `JosŽ Nœ–ez` without a word
        // (only an è, a control character there, was named). Its letters decide it now.
        let mac = encoding_rs::MACINTOSH.encode("Email,Name\rx@example.com,Zoë Müller\ry@example.com,José Núñez\rz@x.com,Lefèvre\r").0;
        let (tables, warnings) = read_with_warnings(&mac, 1 << 20).unwrap();
        let names: Vec<&str> = tables[0].rows.iter().map(|(_, r)| r[1].as_str()).collect();
        assert_eq!(names, ["Zoë Müller", "José Núñez", "Lefèvre"]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("read as macintosh (Mac OS Roman") && warnings[0].contains("CSV UTF-8"), "{warnings:?}");
        // Windows-1252 with the quotes and dashes Mac Roman would read as letters stays so.
        for western in [
            "Email,Name\na@x.com,Seán O’Brien\nb@x.com,Zoë Müller\nc@x.com,Šimon “Jr” Dvořák’s\n",
            "Email,Name\na@x.com,Mary–Jane Ng’ang’a\nb@x.com,Wanjiru Ng’ang’a\nc@x.com,Parents’ council\n",
            "Email,Name\na@x.com,Ann Smith–Jones\n",
            "Email,Department\na@x.com,Children’s Services\nb@x.com,Children’s Services\n",
            "Email,Name\na@x.com,Robert “Bob” Smith\nb@x.com,can’t\n",
        ] {
            let bytes = WINDOWS_1252.encode(western).0;
            let (tables, _) = read_with_warnings(&bytes, 1 << 20).unwrap();
            assert_eq!(tables[0].encoding.as_deref(), Some("windows-1252"), "{western}");
            assert_eq!(tables[0].rows[0].1[1], western.lines().nth(1).unwrap().split(',').nth(1).unwrap());
        }
        // One Mac letter alone (`Lef\x8fvre`) is Mac Roman as well: Windows-1252 has no letter there.
        let (tables, _) = read_with_warnings(b"Email,Name\rx@example.com,Ann\ry@example.com,Lef\x8fvre\r", 1 << 20).unwrap();
        assert_eq!(tables[0].rows[1].1[1], "Lefèvre");
    }

    /// Exports write ids and phone numbers as `="00123"` so that Excel keeps the zeros: read as
    /// the string it shows, as Excel reads it, not stored with its `=` and quotes.
    #[test]
    fn a_text_formula_reads_as_the_string_it_shows() {
        let file =
            "Email,ExternalId,Phone,Name\n=\"ann@x.com\",=\"00123\",\"=\"\"+14155550100\"\"\",\"=\"\"Ann \"\"\"\"The Boss\"\"\"\"\"\"\"\n";
        let t = decode(file.as_bytes()).unwrap();
        assert_eq!(t.rows[0].1, ["ann@x.com", "00123", "+14155550100", "Ann \"The Boss\""]);
        // Anything else that starts with `=` stays as written: a formula is no string.
        let other = "Email,A,B,C\nbob@x.com,\"=\"\"a\"\"&\"\"b\"\"\",=1+2,=\"x\n";
        assert_eq!(decode(other.as_bytes()).unwrap().rows[0].1, ["bob@x.com", "=\"a\"&\"b\"", "=1+2", "=\"x"]);
        // In a file that is not UTF-8 too.
        let legacy = b"Email,Id\ncy@x.com,=\"007\"\ndee@x.com,Ren\xe9\n";
        assert_eq!(decode(legacy).unwrap().rows[0].1, ["cy@x.com", "007"]);
        assert!(!is_text_formula("=\"") && is_text_formula("=\"\"") && !is_text_formula("=\"a\"b\"") && is_text_formula("=\"a\"\"b\""));
    }

    /// `Email, FirstName, LastName`: a space after each comma, and values quoted after it. CSV
    /// quoting starts only at a field's first byte, so `"Lee, Jr"` was cut in two and every later
    /// value moved one column right (Department `Jr"`, Phone `Sales`), without a word.
    #[test]
    fn a_value_quoted_after_the_space_of_a_spaced_file_stays_whole() {
        let file = "Email, FirstName, LastName, Department, Phone\nann@x.com, Ann, \"Lee, Jr\", Sales, 555\nbob@x.com, \"Bob \"\"B\"\"\", Ray, \"R&D\", 556\n";
        let t = decode(file.as_bytes()).unwrap();
        assert_eq!(t.rows[0].1, ["ann@x.com", " Ann", "Lee, Jr", " Sales", " 555"]);
        assert_eq!(t.rows[1].1, ["bob@x.com", "Bob \"B\"", " Ray", "R&D", " 556"]);
        // Not closed in its record: the fields as they were.
        let open = "Email, Name, Note\nann@x.com, \"Ann, x\n";
        assert_eq!(decode(open.as_bytes()).unwrap().rows[0].1, ["ann@x.com", " \"Ann", " x"]);
        // CR-only line endings, and a trailing empty header, keep it a spaced file.
        let cr = "Email, Name, Dept,\rann@x.com, \"Lee, Jr\", Sales,\rbob@x.com, , HR,\r";
        assert_eq!(decode(cr.as_bytes()).unwrap().rows[0].1, ["ann@x.com", "Lee, Jr", " Sales"]);
        // A file without the spaces reads as CSV always did: a quote inside a field is a character.
        let plain = "Email,Name,Dept\nann@x.com, \"Ann, Lee\",Sales\n";
        assert_eq!(decode(plain.as_bytes()).unwrap().rows[0].1, ["ann@x.com", " \"Ann", " Lee\"", "Sales"]);
        // Text after a closing quote: not a quoted value, the fields as they were.
        let after = "Email, Name, Dept\nann@x.com, \"Ann\" x, Sales\n";
        assert_eq!(decode(after.as_bytes()).unwrap().rows[0].1, ["ann@x.com", " \"Ann\" x", " Sales"]);
        // Hostile: 200,000 quotes that never close, on one line (joining again from each would
        // be 2x10^10 steps: this test would not end).
        let many = format!("Email, A\nann@x.com{}\n", ", \"x".repeat(200_000));
        assert_eq!(decode(many.as_bytes()).unwrap().rows[0].1.len(), 200_001);
        // In a file that is not UTF-8 too.
        let legacy = b"Email; Name; Dept\nren@x.com; \"Ren\xe9; Jr\"; Sales\n";
        assert_eq!(decode(legacy).unwrap().rows[0].1, ["ren@x.com", "René; Jr", " Sales"]);
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

    /// A stray quote that a later quote closes swallowed the rows between into one cell: the
    /// file read as 2 rows, valid, where it has 4 (and a replace file would disable the others).
    #[test]
    fn a_quote_that_swallows_rows_is_refused_naming_its_lines() {
        let closed_mid_field = b"Email,FirstName,LastName,Department\nann@x.com,Ann,Lee,\"Sales\nbob@x.com,Bob,Ray,Support\ncy@x.com,Cy,Young,\"R&D\"\ndee@x.com,Dee,Dunn,HR\n";
        let err = decode(closed_mid_field).unwrap_err().to_string();
        assert!(err.contains("a double quote opened on line 2 runs to line 4"), "{err}");
        // Closed where a field ends, but the lines it holds are records (as many delimiters as the header).
        let closed_at_line_end =
            b"Email,FirstName,LastName,Department\nann@x.com,Ann,Lee,\"Sales\nbob@x.com,Bob,Ray,Support\ncy@x.com,Cy,Young,TV 55\"\n";
        let err = decode(closed_at_line_end).unwrap_err().to_string();
        assert!(err.contains("opened on line 2 runs to line 4"), "{err}");
        // The same closed on the file's very last byte (review: the pending quote was never closed).
        for buffer in [1, 3, 1 << 20] {
            let err = read_with(&closed_at_line_end[..closed_at_line_end.len() - 1], buffer).unwrap_err();
            assert!(err.contains("opened on line 2 runs to line 4"), "buffer {buffer}: {err}");
        }
        // A cell over several lines that holds no record is read as it is.
        let address = b"Email,FirstName,Address,Department\nann@x.com,Ann,\"12 Main St,\nSpringfield, IL\",HR\nbob@x.com,Bob,,\n";
        let t = decode(address).unwrap();
        assert_eq!(cells(&t), vec![vec!["ann@x.com", "Ann", "12 Main St,\nSpringfield, IL", "HR"], vec!["bob@x.com", "Bob"]]);
        // An address typed with Alt+Enter, as Excel writes it: one line of as many commas as the
        // header is no swallowed row (a narrow file's swallowed rows are found by their addresses:
        // `stream`).
        let excel = b"Email,FirstName,Address\r\nann@x.com,Ann,\"12 Main St\nSpringfield, IL, 62701\"\r\nbob@x.com,Bob,1 Elm St\r\n";
        assert_eq!(decode(excel).unwrap().rows[0].1[2], "12 Main St\nSpringfield, IL, 62701");
        // Two columns: only a quote closed mid-field tells (a line of one comma may be an address).
        assert!(decode(b"Email,Name\na@x.com,\"Ann\nb@x.com,Bob\"s\n").is_err());
        assert_eq!(decode(b"Email,Name\na@x.com,\"Ann,\nLee\"\n").unwrap().rows.len(), 1);
    }

    /// The delimiter is the header's: in a file whose lines end with CR alone, the whole file
    /// was one "header", its rows' commas (addresses) or semicolons (group lists) outvoting the
    /// tabs or commas, and the file was refused as having no Email column.
    #[test]
    fn cr_line_endings_end_the_header_for_the_delimiter_too() {
        let tabs = "Email\tFirstName\tAddress\ra@x.com\tAnn\t1 Main St, Springfield, IL, 62701\rb@x.com\tBob\t2 Elm St, Salem, OR, 97301\r";
        let t = decode(tabs.as_bytes()).unwrap();
        assert_eq!((t.delimiter, t.headers.len(), t.rows.len()), (Some('\t'), 3, 2));
        let groups = "Email,FirstName,Group\rann@x.com,Ann,Staff;Math;Chess;Y9;Band\rbob@x.com,Bob,Staff;Math;Chess;Y9;Band\r";
        let t = decode(groups.as_bytes()).unwrap();
        assert_eq!((t.delimiter, t.headers.len()), (Some(','), 3));
        assert_eq!(t.rows[1].1, ["bob@x.com", "Bob", "Staff;Math;Chess;Y9;Band"]);
        // CRLF files are read as before.
        assert_eq!(decode(b"Email;Name\r\na@x.com;Ann, Lee\r\n").unwrap().delimiter, Some(';'));
    }

    /// Old Mac files end lines with CR alone: a quote opening a field after one is seen, and
    /// lines are counted as the CSV reader reads them.
    #[test]
    fn cr_line_endings_are_lines_for_the_quote_checks() {
        let err = decode(b"Email,FirstName\ra@x.com,Ann\r\"b@x.com,Bob\rc@x.com,Cy\rd@x.com,Dee\r").unwrap_err().to_string();
        assert!(err.contains("a double quote opened on line 3 is never closed"), "{err}");
        let err = decode(b"Email,FirstName\r\na@x.com,Ann\r\nb@x.com,\"Bob\r\n\r\nc@x.com,Cy\r\n").unwrap_err().to_string();
        assert!(err.contains("opened on line 3 is never closed"), "CRLF counts once: {err}");
        let t = decode(b"Email,FirstName\ra@x.com,Ann\rb@x.com,\"Bob\"\r").unwrap();
        assert_eq!(cells(&t), vec![vec!["a@x.com", "Ann"], vec!["b@x.com", "Bob"]]);
    }

    #[test]
    fn nul_bytes_and_html_are_refused_with_what_to_do() {
        let err = decode(b"Email,Name\na@x.com,An\0n\n").unwrap_err().to_string();
        assert!(err.contains("NUL bytes (first on line 2)"), "{err}");
        let utf16_no_bom: Vec<u8> = "Email\r\na@x.com\r\n".encode_utf16().flat_map(u16::to_le_bytes).collect();
        assert!(decode(&utf16_no_bom).unwrap_err().to_string().contains("UTF-16 text without a byte-order mark"));
        assert!(decode(b"<html><table><tr><td>Email</td></tr></table></html>").unwrap_err().to_string().contains("HTML or XML"));
    }

    /// As `read_with`, with the reader's warnings.
    fn read_with_warnings(bytes: &[u8], buffer: usize) -> Result<(Vec<Table>, Vec<String>), String> {
        let mut tables = Collect { tables: Vec::new(), skip: |_| false, hidden: Vec::new(), warnings: Vec::new() };
        match read_text(&mut Cursor::new(bytes), &mut tables, buffer) {
            Ok(()) => Ok((tables.tables, tables.warnings)),
            Err(ReadError::File(e)) => Err(e.to_string()),
            Err(other) => Err(format!("{other:?}")),
        }
    }

    /// The decoding reader gives what decoding the whole file gives, characters cut by its
    /// buffers included, and reads the same again after any seek; an error names the line it is
    /// on in the decoded text.
    #[test]
    fn decoded_text_reads_and_seeks_as_the_whole_file_decoded() {
        let text: String = (0..6000).map(|i| format!("u{i}@example.com|ポール{i}|田中\n")).collect();
        let bytes = [b"sep=|\n".as_slice(), &encoding_rs::SHIFT_JIS.encode(&text).0].concat();
        let mut file = Cursor::new(bytes.clone());
        let mut decoded = Decoded::new(&mut file, 6, encoding_rs::SHIFT_JIS).unwrap();
        let mut all = String::new();
        decoded.read_to_string(&mut all).unwrap();
        assert_eq!(all, text);
        for at in [0, 1, 70_000, 3, 140_001, text.len() as u64, 9] {
            assert_eq!(decoded.seek(SeekFrom::Start(at)).unwrap(), at);
            let mut rest = Vec::new();
            decoded.read_to_end(&mut rest).unwrap();
            assert_eq!(rest, &text.as_bytes()[at as usize..], "from {at}");
        }
        assert!(decoded.seek(SeekFrom::End(0)).is_err(), "seeks from the start only");
        // A line longer than `Decoded::LINE` streams through the decoder: a character cut by the
        // raw buffers, and one byte that decodes to three (half-width ｱ) after a cut lead byte.
        let long = [b"a".as_slice(), &[0x83, 0x7C].repeat(600_000), &[0xB1; 70_000], b"\nb|\x83\x7C\n"].concat();
        let mut file = Cursor::new(long.clone());
        let mut all = String::new();
        Decoded::new(&mut file, 0, encoding_rs::SHIFT_JIS).unwrap().read_to_string(&mut all).unwrap();
        assert!(all == encoding_rs::SHIFT_JIS.decode_without_bom_handling(&long).0, "the long line decodes as the whole file does");
        let tables = read_with(&bytes, 1 << 20).unwrap();
        assert_eq!((tables[0].rows.len(), tables[0].rows[5998].1[1].as_str()), (5999, "ポール5999"));
        // An error names its line as the file has it.
        let broken = encoding_rs::SHIFT_JIS.encode("Email|Name\na@x.com|ポール\nb@x.com|\"ポ\nc@x.com|ポ\n").0.into_owned();
        let err = read_with(&broken, 1 << 20).unwrap_err();
        assert!(err.contains("a double quote opened on line 3 is never closed"), "{err}");
    }

    /// A UTF-8 file with a few lines pasted from a Shift_JIS one: each line is read in what it
    /// is, as each field is in a file of UTF-8 and Windows-1252 (read wholly as Shift_JIS, Zoë
    /// became Zoﾃｫ, and the UTF-8 ポ's last byte took the `|` after it). A byte Shift_JIS reads
    /// as a control character is named, as in single-byte encodings.
    #[test]
    fn a_file_mixing_utf8_and_shift_jis_lines_keeps_both() {
        let sjis = |s: &str| encoding_rs::SHIFT_JIS.encode(s).0.into_owned();
        let bytes = [
            "Email|Name|Dept\na@x.com|Zoë|ポール\nb@x.com|ポ|x\n".as_bytes(),
            &sjis("c@x.com|田中ポ|営業部\nd@x.com|鈴木花子|ポータル開発\ne@x.com|佐藤|総務\n"),
            b"f@x.com|\x80|x\n",
        ]
        .concat();
        let (tables, warnings) = read_with_warnings(&bytes, 1 << 20).unwrap();
        let rows: Vec<Vec<&str>> = tables[0].rows.iter().map(|(_, r)| r.iter().map(String::as_str).collect()).collect();
        assert_eq!(
            rows,
            [
                vec!["a@x.com", "Zoë", "ポール"],
                vec!["b@x.com", "ポ", "x"],
                vec!["c@x.com", "田中ポ", "営業部"],
                vec!["d@x.com", "鈴木花子", "ポータル開発"],
                vec!["e@x.com", "佐藤", "総務"],
                vec!["f@x.com", "\u{80}", "x"],
            ]
        );
        assert_eq!(tables[0].encoding.as_deref(), Some("Shift_JIS"));
        assert!(
            warnings.iter().any(|w| w.starts_with("row 7 has characters that are not letters") && w.contains("Shift_JIS")),
            "{warnings:?}"
        );
    }

    /// The text reader with pass 1 reading `buffer` bytes at a time.
    fn read_with(bytes: &[u8], buffer: usize) -> Result<Vec<Table>, String> {
        let mut tables = Collect { tables: Vec::new(), skip: |_| false, hidden: Vec::new(), warnings: Vec::new() };
        match read_text(&mut Cursor::new(bytes), &mut tables, buffer) {
            Ok(()) => Ok(tables.tables),
            Err(ReadError::File(e)) => Err(e.to_string()),
            Err(other) => Err(format!("{other:?}")),
        }
    }

    #[test]
    fn text_reads_the_same_whatever_the_buffer_boundaries_split() {
        let cases: Vec<Vec<u8>> = vec![
            "Email,Name\nzoë@x.com,\"Zoë \"\"Z\"\", 😀\"\nb@x.com,\"multi\nline\"\n".into(),
            "\u{feff}Email;Name\r\na@x.com;\"\"\"q\"\"\"\r\n".into(),
            b"Email,Name\nrene@x.com,Ren\xe9\n".to_vec(),
            b"\xEF\xBB\xBFEmail,Name\na@x.com,bad \xff byte\n".to_vec(),
            b"Email,Name\na@x.com,\"never closed\nb@x.com,B\n".to_vec(),
            b"Email,Name\na@x.com,\"closed at the very end\"".to_vec(),
            b"Email,Name\na@x.com,\"\"\"".to_vec(),
            b"Email,Name\na@x.com,x\"y\nb@x.com,\"\"\n".to_vec(),
            b"Email\n\na@x.com\0\n".to_vec(),
            b"Email,Name\na@x.com,\xe2\x82".to_vec(),
            b"Email,A,B\na@x.com,\"x\nb@x.com,1,2\nc,\"\"q\"\n".to_vec(),
            b"Email,A\ra@x.com,\"x\rb@x.com,y\"z\r".to_vec(),
            b"Email,A,B\na@x.com,\"x\ny,z\"\n".to_vec(),
        ];
        for bytes in &cases {
            let whole = read_with(bytes, 1 << 20);
            for buffer in 1..=9 {
                assert_eq!(read_with(bytes, buffer), whole, "buffer {buffer}, input {:?}", String::from_utf8_lossy(bytes));
            }
        }
        let t = read_with(&cases[0], 1).unwrap();
        assert_eq!(t[0].rows[0].1, vec!["zoë@x.com", "Zoë \"Z\", 😀"]);
        assert_eq!(t[0].rows[1].1[1], "multi\nline");
        assert_eq!(read_with(&cases[2], 3).unwrap()[0].encoding.as_deref(), Some("windows-1252"));
        assert_eq!(read_with(&cases[3], 3).unwrap()[0].rows[0].1[1], "bad \u{ff} byte", "the one non-UTF-8 field read as Windows-1252");
        assert!(read_with(&cases[4], 2).unwrap_err().contains("opened on line 2 is never closed"));
        assert_eq!(read_with(&cases[5], 4).unwrap()[0].rows[0].1[1], "closed at the very end");
        assert!(read_with(&cases[8], 5).unwrap_err().contains("NUL bytes (first on line 3)"));
        assert_eq!(read_with(&cases[9], 2).unwrap()[0].encoding.as_deref(), Some("windows-1252"), "a cut-off UTF-8 character at the end");
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
        let mut zip = zip::ZipArchive::new(Cursor::new(&bytes)).unwrap();
        assert_eq!(check_declared_size(&mut zip, 16 << 20), Err(FileError::TooBigUnzipped { limit_mb: 16 }));
        assert_eq!(check_declared_size(&mut zip, 128 << 20), Ok(()));
    }

    #[test]
    fn float_cells_that_are_identifiers_stay_integers() {
        assert_eq!(cell_text(&Data::Float(4155550100.0)), "4155550100");
        assert_eq!(cell_text(&Data::Float(2.5)), "2.5");
        assert_eq!(cell_text(&Data::Int(42)), "42");
    }

    /// An error cell (a Department filled by a failed VLOOKUP) is echoed and stored as the
    /// spreadsheet shows it; it was `#NA`, `#Div0`, `#Ref`.
    #[test]
    fn error_cells_read_as_the_spreadsheet_shows_them() {
        use calamine::CellErrorType as E;
        let shown: Vec<String> = [E::NA, E::Div0, E::Ref, E::Value, E::Name].iter().map(|e| cell_text(&Data::Error(e.clone()))).collect();
        assert_eq!(shown, ["#N/A", "#DIV/0!", "#REF!", "#VALUE!", "#NAME?"]);
    }
}
