//! Ingest without holding the file: rows are validated as they are read, and each operation is
//! written at once to its phase's spill file (in memory while the spill is small, then on local
//! disk); chunks are cut from those files after the last row, when the plan is known. Memory stays
//! flat whatever the size of the file, apart from one 12-byte fingerprint per key (see
//! `RowValidator`).

use super::decode::{self, ReadError, TableHead, TableVisitor};
use super::headers::{Mapping, map_headers};
use super::oneroster::Verdict;
use super::validate::{Duplicate, RowValidator, duplicate_outcome};
use super::view::RowView;
use crate::fields::Field;
use crate::model::{Mode, Outcome, PHASES, RowOp, Status, Tenant, phase_of};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// Where validated rows go: memory for the CLI and tests, spill files for ingest.
pub trait OpSink {
    fn op(&mut self, op: &RowView<'_>) -> std::io::Result<()>;
    fn outcome(&mut self, outcome: Outcome) -> std::io::Result<()>;
    /// After the last row: the operations of these rows (sorted by row) are duplicates and must
    /// not be applied; each becomes its row's outcome (`validate::duplicate_outcome`).
    fn retract(&mut self, duplicates: &[Duplicate]) -> std::io::Result<()>;
}

/// Why ingest stopped reading a file.
#[derive(Debug)]
pub enum Stop {
    /// The whole file is refused; the reason is for the user.
    Refused(String),
    /// Local disk failed under ingest (not the file's fault).
    Io(std::io::Error),
}

impl<S: Into<Stop>> From<ReadError<S>> for Stop {
    fn from(e: ReadError<S>) -> Self {
        match e {
            ReadError::File(e) => Stop::Refused(e.to_string()),
            ReadError::Stopped(s) => s.into(),
            ReadError::Io(e) => Stop::Io(e),
        }
    }
}

/// Maps each table's header, validates each row and hands the result to the sink.
pub struct Ingester<'t, K> {
    tenant: &'t Tenant,
    pub validator: RowValidator,
    current: Option<(TableHead, Mapping)>,
    pub warnings: Vec<String>,
    /// Data rows read (blank rows between data rows included, as they get an outcome).
    pub rows: u32,
    /// The first table's format.
    pub format: Option<super::decode::Format>,
    pub sink: K,
    /// Outcomes decided before validation, by row id (a OneRoster bundle's own verdicts).
    pub verdicts: std::collections::HashMap<u32, Verdict>,
    /// Sheets whose rows are all decided before validation (a bundle's enrollments, roles and
    /// classes): their headers are not roster columns.
    pub context: std::collections::HashSet<String>,
}

impl<'t, K: OpSink> Ingester<'t, K> {
    pub fn new(tenant: &'t Tenant, mode: Mode, sink: K) -> Self {
        Ingester {
            tenant,
            validator: RowValidator::new(tenant, mode),
            current: None,
            warnings: Vec::new(),
            rows: 0,
            format: None,
            sink,
            verdicts: Default::default(),
            context: Default::default(),
        }
    }

    /// Outcomes decided before validation (a OneRoster bundle's verdicts), by row id.
    pub fn with_verdicts(mut self, verdicts: std::collections::HashMap<u32, Verdict>, context: std::collections::HashSet<String>) -> Self {
        self.verdicts = verdicts;
        self.context = context;
        self
    }

    /// After the last row: a file with headers and nothing under them is refused; duplicate
    /// rows are found and their operations retracted.
    pub fn finish(&mut self) -> Result<(), Stop> {
        if self.rows == 0 {
            return Err(Stop::Refused("the file has a header row but no data rows".into()));
        }
        let duplicates = self.validator.resolve();
        self.sink.retract(&duplicates).map_err(Stop::Io)
    }
}

impl<K: OpSink> TableVisitor for Ingester<'_, K> {
    type Stop = Stop;

    fn skip_sheet(&self, name: &str) -> bool {
        super::sheets::is_instruction_sheet(name)
    }

    fn hidden_sheet(&mut self, name: &str) {
        self.warnings.push(super::sheets::hidden_warning(name));
    }

    fn warning(&mut self, warning: String) {
        self.warnings.push(warning);
    }

    fn table(&mut self, mut head: TableHead) -> Result<(), Stop> {
        self.format.get_or_insert(head.format);
        let ours = super::headers::has_our_message(&head.headers, self.tenant.external_id_column.as_deref());
        if ours && self.validator.mode().is_replace() {
            // A failed-rows file lists only the rows that failed: as the tenant's whole user list
            // it disabled everyone else. (A result file is no list to keep either.)
            return Err(Stop::Refused(format!(
                "this is a file rosterdrop wrote (it has our Message column): a failed-rows file lists only the rows that failed, so as a replace file it would disable every other user. Drop it into incoming/{}/ to apply its rows, and drop your complete list into replace/; nothing was applied",
                self.tenant.id
            )));
        }
        // A delimited file of ours (it has our Message column): its header names may carry
        // `neutralise`'s apostrophe like its cells (one too long for `="…"` that would run).
        if !head.format.is_spreadsheet() && ours {
            for h in &mut head.headers {
                *h = crate::finalize::write::unneutralise(h).to_string();
            }
        }
        if head.index >= super::sheets::MAX_DATA_SHEETS {
            let max = super::sheets::MAX_DATA_SHEETS;
            return Err(Stop::Refused(format!(
                "the workbook has more than {max} sheets with data, and a roster is read from at most {max}: move the rows onto fewer sheets, or split the workbook into several files"
            )));
        }
        if head.sheet.as_ref().is_some_and(|s| self.context.contains(s)) {
            self.validator.start_table(&head);
            self.current = Some((head, Mapping::default()));
            return Ok(());
        }
        let in_sheet = |msg: String| if head.several { format!("sheet \"{}\": {msg}", head.sheet.as_deref().unwrap_or("?")) } else { msg };
        let mapping = map_headers(&head.headers, self.tenant).map_err(|e| Stop::Refused(in_sheet(e)))?;
        self.warnings.extend(mapping.warnings.iter().map(|w| in_sheet(w.clone())));
        self.validator.start_table(&head);
        if let Some(rows) = head.rows_hint {
            self.validator.reserve(self.rows as usize + rows as usize);
        }
        self.current = Some((head, mapping));
        Ok(())
    }

    fn row<S: AsRef<str>>(&mut self, number: u32, cells: &[S]) -> Result<(), Stop> {
        // A cell over several lines matters only in delimited text (`swallowed_row`).
        let text = self.current.as_ref().is_some_and(|(head, _)| head.delimiter.is_some());
        let broken = text && cells.iter().any(|c| memchr::memchr(b'\n', c.as_ref().as_bytes()).is_some());
        // One Unicode form for what is compared and stored (`nfc`): most rows are already in it.
        match crate::nfc::cells(cells) {
            Some(normal) => self.row_in_nfc(number, &normal, broken),
            None => self.row_in_nfc(number, cells, broken),
        }
    }
}

impl<K: OpSink> Ingester<'_, K> {
    /// A row in NFC; `broken`: a cell of it has a line break.
    fn row_in_nfc<S: AsRef<str>>(&mut self, number: u32, cells: &[S], broken: bool) -> Result<(), Stop> {
        let Some((head, mapping)) = &self.current else { return Ok(()) };
        let id = super::sheets::row_id(head.index, number);
        if let Some(v) = self.verdicts.get(&id) {
            self.rows += 1;
            // A refused user is still named (replace mode keeps them); a left-out one is not.
            if v.status == Status::Failure {
                self.validator.note_named(cells, mapping);
            }
            let outcome = Outcome {
                row: id,
                status: v.status,
                column: v.column.clone(),
                change: v.change,
                ..Outcome::failure(id, None, v.message.clone())
            };
            return self.sink.outcome(outcome).map_err(Stop::Io);
        }
        if head.sheet.as_ref().is_some_and(|s| self.context.contains(s)) {
            // A record of a file read into other rows has its verdict; a blank line has none.
            self.rows += 1;
            return self.sink.outcome(Outcome::skipped(id, "empty row")).map_err(Stop::Io);
        }
        // Files joined together (`cat a.csv b.csv`) repeat the header row: the same columns are
        // a row to skip; others would have the rows below read under the first header's columns
        // (first and last names swapped without a word).
        if let Some(repeated) = repeated_header(cells, mapping, &head.headers) {
            self.rows += 1;
            if repeated {
                return self.sink.outcome(Outcome::skipped(id, "the header row again (files joined together?)")).map_err(Stop::Io);
            }
            let listed: Vec<&str> = cells.iter().map(|c| c.as_ref().trim()).filter(|c| !c.is_empty()).collect();
            // Right under the header: one header over two rows (`Name` merged over the first and
            // last names' columns), not a second table; splitting the file would not help.
            let msg = if number == head.header_row + 1 {
                let first: Vec<&str> = head.headers.iter().map(|h| h.trim()).filter(|h| !h.is_empty()).collect();
                format!(
                    "rows {} and {number} both hold column names ({}; then {}): a header over two rows is not read. Keep the names in one row: unmerge the cells, give every column its name in row {number} (Email included), and delete row {}",
                    head.header_row,
                    super::headers::header_list(&first),
                    super::headers::header_list(&listed),
                    head.header_row
                )
            } else {
                format!(
                    "row {number} is a second header row with other columns ({}) than the first ({}): the rows below it would be read under the first header's columns. Split the file where it starts, or put its columns in the first header's order",
                    super::headers::header_list(&listed),
                    super::headers::header_list(&head.headers)
                )
            };
            return Err(Stop::Refused(if head.several {
                format!("sheet \"{}\": {msg}", head.sheet.as_deref().map(crate::wording::quoted).unwrap_or_default())
            } else {
                msg
            }));
        }
        // Rows a stray quote swallowed into one cell of a narrow or ragged file (pass 1 finds
        // those of a wide one): not applied, and in replace mode their users disabled.
        if let Some(delimiter) = head.delimiter.filter(|_| broken)
            && let Some((column, line, text)) = swallowed_row(cells, mapping, delimiter)
        {
            let header = head.headers.get(column).map(|h| h.trim()).filter(|h| !h.is_empty());
            return Err(Stop::Refused(format!(
                "row {number}: its {} cell runs over several lines, and line {line} of it reads as a row of its own (\"{}\"): a double quote is probably unbalanced there (an opening quote without its closing one), so the rows it covers would not be applied. Fix or remove that quote",
                header.map_or_else(|| format!("column {}", column + 1), |h| format!("\"{}\"", crate::wording::quoted(h))),
                crate::wording::quoted(text)
            )));
        }
        // A file of organizations needs no Email column; the first user row in one without
        // Email or Username rejects the file (each of its rows would fail "Email is empty").
        if !mapping.has(Field::Email) && !mapping.has(Field::Username) && super::validate::is_user_row(cells, mapping) {
            let msg = format!(
                "the required column Email is missing: row {number} is a user, and users are identified by Email (or Username, for users without email). The header row has: {}. Add an Email column, or use the template",
                super::headers::header_list(&head.headers)
            );
            return Err(Stop::Refused(if head.several {
                format!("sheet \"{}\": {msg}", head.sheet.as_deref().map(crate::wording::quoted).unwrap_or_default())
            } else {
                msg
            }));
        }
        self.rows += 1;
        // A CSV file we wrote (our Message column) may have a value too long for `="…"`
        // neutralised with a leading apostrophe: taken off, so the loop stores the original.
        if !head.format.is_spreadsheet() && mapping.has(Field::Message) {
            let ours: Vec<&str> = cells.iter().map(|c| crate::finalize::write::unneutralise(c.as_ref())).collect();
            return match self.validator.check(head, mapping, number, &ours) {
                Ok(op) => self.sink.op(&op),
                Err(outcome) => self.sink.outcome(outcome),
            }
            .map_err(Stop::Io);
        }
        match self.validator.check(head, mapping, number, cells) {
            Ok(op) => self.sink.op(&op),
            Err(outcome) => self.sink.outcome(outcome),
        }
        .map_err(Stop::Io)
    }
}

/// Whether a row is the header row again: `None` when its key cell (Email, else Username) is no
/// header of that column, nor, beside a cell that is (a second table's header with its Email
/// elsewhere), of another; else whether every cell names the column the first header has there.
fn repeated_header<S: AsRef<str>>(cells: &[S], mapping: &Mapping, headers: &[String]) -> Option<bool> {
    let key = [Field::Email, Field::Username].into_iter().find(|f| mapping.has(*f))?;
    let cell = cells.get(mapping.column(key)?)?.as_ref();
    // Every user row has an address here: no header has an @, nor is it long (one search, no
    // lookup a row).
    if cell.contains('@') || cell.len() > 64 {
        return None;
    }
    let header = |c: &str| (c.len() <= 64).then(|| Field::from_header(c.trim())).flatten();
    match header(cell) {
        Some(f) if f == key => {}
        // `FirstName,LastName,Email` under `Email,FirstName,LastName`: a second table below the
        // first, its rows failing one by one for an Email of "FirstName", "Cy", "Di". Three
        // header names at least: `Parent,Sam,Email` ("write to the parent") is a row's words.
        Some(_)
            if cells.iter().any(|c| header(c.as_ref()) == Some(key))
                && cells.iter().filter(|c| header(c.as_ref()).is_some()).count() >= 3 => {}
        _ => return None,
    }
    let norm = crate::fields::norm;
    // The same column, however it is written: `Email Address` repeats `Email`.
    let same = |h: &str, c: &str| norm(h) == norm(c) || Field::from_header(c).is_some_and(|f| Field::from_header(h) == Some(f));
    Some(cells.iter().enumerate().all(|(i, c)| {
        let c = c.as_ref().trim();
        c.is_empty() || headers.get(i).is_some_and(|h| same(h.trim(), c))
    }))
}

/// A cell of delimited text whose later lines read as rows: split at the delimiter, each has an
/// address where the header has Email. Two such lines at least: rows swallowed are two (one
/// whole, and the one the closing quote ends in), while a note may well have one line such as
/// `jane@example.com, 555-0100`. The cell's column, its first such line (1-based within the
/// cell) and that line. Only cells with a line break are looked at (most have none).
fn swallowed_row<'c, S: AsRef<str>>(cells: &'c [S], mapping: &Mapping, delimiter: char) -> Option<(usize, usize, &'c str)> {
    let key = mapping.column(Field::Email)?;
    let row_like = |line: &str| {
        let mut fields = line.split(delimiter);
        let Some(key_field) = fields.by_ref().nth(key) else { return false };
        (key > 0 || fields.next().is_some()) && email_address::EmailAddress::is_valid(key_field.trim())
    };
    cells.iter().enumerate().filter(|(_, c)| c.as_ref().contains('\n')).find_map(|(i, c)| {
        let mut rows = c.as_ref().split('\n').map(|l| l.trim_end_matches('\r')).enumerate().skip(1).filter(|(_, l)| row_like(l));
        let (k, first) = rows.next()?;
        rows.next().map(|_| (i, k + 1, first))
    })
}

/// Everything in memory.
#[derive(Debug, Default)]
pub struct Collected {
    pub ops: Vec<RowOp>,
    pub outcomes: Vec<Outcome>,
}

impl OpSink for Collected {
    fn op(&mut self, op: &RowView<'_>) -> std::io::Result<()> {
        self.ops.push(op.to_op());
        Ok(())
    }
    fn outcome(&mut self, outcome: Outcome) -> std::io::Result<()> {
        self.outcomes.push(outcome);
        Ok(())
    }
    fn retract(&mut self, duplicates: &[Duplicate]) -> std::io::Result<()> {
        if duplicates.is_empty() {
            return Ok(());
        }
        let mut dups = duplicates.iter().peekable();
        let ops = std::mem::take(&mut self.ops);
        for op in ops {
            match dups.next_if(|d| d.row == op.row) {
                Some(d) => self.outcomes.push(duplicate_outcome(&op, &d.first)),
                None => self.ops.push(op),
            }
        }
        Ok(())
    }
}

/// Operations as JSON lines (the chunk format), one file per phase, and outcomes in another.
/// Lines are written straight into each file's own buffer (no intermediate copy of the line).
/// A small roster never touches disk: every file stays in memory until together they pass
/// `memory_budget`, then all go to disk in the scratch directory and memory stays flat from there on.
pub struct Spill {
    /// The phases' files, then the outcomes (`OUTCOMES`).
    files: Vec<Buffered>,
    memory_budget: usize,
    held: usize,
    pub counts: [u64; PHASES],
    pub outcome_count: u64,
    /// Upper bounds of the users the file may delete or disable, and may update (`holds`).
    pub may_remove: u64,
    pub may_update: u64,
}

/// What a spill keeps in memory before it goes to disk: the operations of about 15,000 rows.
/// At most this is held (twice while duplicates are taken out of it), whatever the file.
pub const SPILL_IN_MEMORY: usize = 4 << 20;

const OUTCOMES: usize = PHASES;

/// A spill file's lines: those not yet written to its file on disk, or all of them while in memory.
struct Buffered {
    path: PathBuf,
    file: Option<File>,
    pending: Vec<u8>,
}

/// Where a spill file's lines are, for uploading them whole.
pub enum Stored<'a> {
    Memory(&'a [u8]),
    File(&'a Path),
}

impl Buffered {
    /// Write to disk in blocks of this size.
    const SIZE: usize = 1 << 16;

    fn spill_to_disk(&mut self) -> std::io::Result<()> {
        let mut file = File::create(&self.path)?;
        file.write_all(&self.pending)?;
        self.file = Some(file);
        self.pending = Vec::with_capacity(Self::SIZE + 1024);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if let Some(file) = &mut self.file {
            file.write_all(&self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }

    /// Every line, once flushed.
    fn lines(&self) -> std::io::Result<Box<dyn BufRead + Send + '_>> {
        Ok(match self.file {
            Some(_) => Box::new(BufReader::with_capacity(Self::SIZE, File::open(&self.path)?)),
            None => Box::new(&self.pending[..]),
        })
    }
}

impl Spill {
    pub fn create(dir: &Path, memory_budget: usize) -> Self {
        let name = |i: usize| if i == OUTCOMES { "outcomes.jsonl".to_string() } else { format!("phase-{i}.jsonl") };
        let files = (0..=OUTCOMES).map(|i| Buffered { path: dir.join(name(i)), file: None, pending: Vec::new() }).collect();
        Spill { files, memory_budget, held: 0, counts: [0; PHASES], outcome_count: 0, may_remove: 0, may_update: 0 }
    }

    /// Count an operation into the bounds a hold is decided from.
    fn bound(&mut self, action: crate::model::Action, user: bool) {
        use crate::model::Action::*;
        match action {
            Delete | Disable | Reconcile if user => self.may_remove += 1,
            Upsert | Update | Enable | Expire if user => self.may_update += 1,
            _ => {}
        }
    }

    /// Whether the spill went to disk (it outgrew its memory budget).
    pub fn on_disk(&self) -> bool {
        self.files[0].file.is_some()
    }

    /// A phase's operations cut into chunk bodies of `size` lines (the spill must be flushed).
    pub fn chunks<'a>(&'a self, phase: usize, size: usize, validator: &'a RowValidator) -> std::io::Result<Chunks<'a>> {
        Ok(Chunks::new(self.files[phase].lines()?, size, validator))
    }

    /// The outcomes, whole (the spill must be flushed).
    pub fn outcomes(&self) -> Stored<'_> {
        let f = &self.files[OUTCOMES];
        if f.file.is_some() { Stored::File(&f.path) } else { Stored::Memory(&f.pending) }
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.files.iter_mut().try_for_each(Buffered::flush)
    }

    /// After a line of `len` bytes (newline included) went into file `i`.
    fn line_done(&mut self, i: usize, len: usize) -> std::io::Result<()> {
        if self.on_disk() {
            return if self.files[i].pending.len() >= Buffered::SIZE { self.files[i].flush() } else { Ok(()) };
        }
        self.held += len;
        if self.held > self.memory_budget {
            self.files.iter_mut().try_for_each(Buffered::spill_to_disk)?;
        }
        Ok(())
    }

    /// Append one line to file `i`.
    fn line(&mut self, i: usize, write: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> std::io::Result<()> {
        let out = &mut self.files[i].pending;
        if out.capacity() == 0 {
            // In memory, a file may take the whole budget. Reserved address space is not memory
            // until written, and a buffer that never moves is written once (growing by doubling
            // would copy it and touch twice the pages).
            out.reserve(self.memory_budget + Buffered::SIZE);
        }
        let start = out.len();
        write(out)?;
        out.push(b'\n');
        let len = out.len() - start;
        self.line_done(i, len)
    }

    /// An operation made outside the file's rows (replace mode's reconcile).
    pub fn extra_op(&mut self, op: &RowOp) -> std::io::Result<()> {
        self.bound(op.action, matches!(op.target, crate::model::Target::User { .. }));
        let phase = phase_of(op);
        self.line(phase, |out| serde_json::to_writer(out, op).map_err(std::io::Error::other))?;
        self.counts[phase] += 1;
        Ok(())
    }
}

impl OpSink for Spill {
    fn op(&mut self, op: &RowView<'_>) -> std::io::Result<()> {
        self.bound(op.action, matches!(op.target, crate::ingest::view::TargetView::User(_)));
        let phase = op.phase();
        self.line(phase, |out| {
            op.write_json(out);
            Ok(())
        })?;
        self.counts[phase] += 1;
        Ok(())
    }
    fn outcome(&mut self, outcome: Outcome) -> std::io::Result<()> {
        self.line(OUTCOMES, |out| serde_json::to_writer(out, &outcome).map_err(std::io::Error::other))?;
        self.outcome_count += 1;
        Ok(())
    }

    /// Rare (a file naming someone twice): each phase file holding a duplicate is copied without
    /// its line, and the line's operation becomes the row's outcome.
    fn retract(&mut self, duplicates: &[Duplicate]) -> std::io::Result<()> {
        if duplicates.is_empty() {
            return Ok(());
        }
        self.flush()?;
        let mut left: std::collections::BTreeMap<u32, &str> = duplicates.iter().map(|d| (d.row, d.first.as_str())).collect();
        for phase in 0..PHASES {
            if left.is_empty() {
                break;
            }
            if self.counts[phase] == 0 {
                continue;
            }
            let file = &self.files[phase];
            let removed = if file.file.is_some() {
                let kept = file.path.with_extension("kept");
                let mut writer = std::io::BufWriter::with_capacity(Buffered::SIZE, File::create(&kept)?);
                let removed = without_duplicates(file.lines()?, &mut writer, &mut left)?;
                writer.flush()?;
                drop(writer);
                if removed.is_empty() {
                    std::fs::remove_file(&kept)?
                } else {
                    std::fs::rename(&kept, &file.path)?
                }
                removed
            } else {
                let mut kept = Vec::with_capacity(file.pending.len());
                let removed = without_duplicates(&file.pending[..], &mut kept, &mut left)?;
                if !removed.is_empty() {
                    self.files[phase].pending = kept;
                }
                removed
            };
            self.counts[phase] -= removed.len() as u64;
            for outcome in removed {
                self.outcome(outcome)?;
            }
        }
        if let Some((row, _)) = left.first_key_value() {
            return Err(std::io::Error::other(format!("row {row} was found a duplicate but its operation was not spilled")));
        }
        self.flush()
    }
}

/// Copy `lines` to `kept` without the lines of the rows in `left` (taken out of it as found):
/// the outcomes of those rows.
fn without_duplicates(
    mut lines: impl BufRead,
    kept: &mut impl Write,
    left: &mut std::collections::BTreeMap<u32, &str>,
) -> std::io::Result<Vec<Outcome>> {
    let mut removed = Vec::new();
    let mut line = Vec::new();
    while lines.read_until(b'\n', &mut line)? > 0 {
        match row_of_line(&line).and_then(|row| left.remove(&row)) {
            Some(first) => removed.push(duplicate_outcome(&serde_json::from_slice(&line).map_err(std::io::Error::other)?, first)),
            None => kept.write_all(&line)?,
        }
        line.clear();
    }
    Ok(removed)
}

/// The row number a chunk line starts with (`{"row":123,...`), without parsing the line.
fn row_of_line(line: &[u8]) -> Option<u32> {
    let rest = line.strip_prefix(b"{\"row\":")?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Read and validate a roster file from disk into spill files under `scratch`.
/// The spill stays in memory up to `memory_budget` bytes (`SPILL_IN_MEMORY`).
pub fn prepare_file<'t>(
    source: &Path,
    scratch: &Path,
    memory_budget: usize,
    tenant: &'t Tenant,
    mode: Mode,
    verdicts: std::collections::HashMap<u32, Verdict>,
    context: std::collections::HashSet<String>,
) -> Result<Ingester<'t, Spill>, Stop> {
    let mut ingester = Ingester::new(tenant, mode, Spill::create(scratch, memory_budget)).with_verdicts(verdicts, context);
    let mut file = BufReader::with_capacity(1 << 16, File::open(source).map_err(Stop::Io)?);
    decode::read(&mut file, &mut ingester)?;
    ingester.finish()?;
    ingester.sink.flush().map_err(Stop::Io)?;
    Ok(ingester)
}

/// Chunk bodies cut from a phase's spill file, `size` lines each, read as they are asked for.
/// With `marks`, user operations get the references to what the file creates (`created_in_file`),
/// known only once every row was read; other lines are copied as written.
pub struct Chunks<'a> {
    reader: Box<dyn BufRead + Send + 'a>,
    size: usize,
    marks: Option<&'a RowValidator>,
    line: Vec<u8>,
}

impl<'a> Chunks<'a> {
    fn new(reader: Box<dyn BufRead + Send + 'a>, size: usize, validator: &'a RowValidator) -> Self {
        let marks = validator.may_reference_own_creations().then_some(validator);
        Chunks { reader, size: size.max(1), marks, line: Vec::new() }
    }

    fn next_body(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut body = Vec::with_capacity(self.size * 256);
        let mut lines = 0;
        if self.marks.is_none() {
            // Nothing to change: whole runs of lines are copied from the read buffer.
            while lines < self.size {
                let buf = self.reader.fill_buf()?;
                if buf.is_empty() {
                    break;
                }
                let mut end = buf.len();
                for pos in memchr::memchr_iter(b'\n', buf) {
                    lines += 1;
                    if lines == self.size {
                        end = pos + 1;
                        break;
                    }
                }
                body.extend_from_slice(&buf[..end]);
                self.reader.consume(end);
            }
            return Ok((!body.is_empty()).then_some(body));
        }
        while lines < self.size {
            self.line.clear();
            if self.reader.read_until(b'\n', &mut self.line)? == 0 {
                break;
            }
            lines += 1;
            let Some(v) = self.marks else {
                body.extend_from_slice(&self.line);
                continue;
            };
            let mut op: RowOp = serde_json::from_slice(&self.line).map_err(std::io::Error::other)?;
            op.created_in_file = v.created_in_file(&op);
            if op.created_in_file.is_empty() {
                body.extend_from_slice(&self.line);
            } else {
                serde_json::to_writer(&mut body, &op).map_err(std::io::Error::other)?;
                body.push(b'\n');
            }
        }
        Ok((lines > 0).then_some(body))
    }
}

impl Iterator for Chunks<'_> {
    type Item = std::io::Result<Vec<u8>>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_body().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::prepare;

    fn tenant() -> Tenant {
        let mut t = Tenant::new("acme", vec!["a@acme.com".into()]);
        t.roles = vec!["Learner".into()];
        t
    }

    /// Ingest's path: the file on disk, spill files, chunks cut of `size` lines.
    fn streamed(bytes: &[u8], size: usize) -> (Vec<Vec<RowOp>>, Vec<Outcome>, Vec<String>, u32) {
        let on_disk = streamed_within(bytes, size, 0);
        assert_eq!(streamed_within(bytes, size, 200), on_disk, "a spill going to disk after a few lines gives what it gives on disk");
        assert_eq!(streamed_within(bytes, size, SPILL_IN_MEMORY), on_disk, "the spill in memory gives what it gives on disk");
        on_disk
    }

    /// Ingest's path with a spill of `memory_budget` bytes in memory (0: straight to disk; the
    /// files tested with are larger than any budget below `SPILL_IN_MEMORY`).
    fn streamed_within(bytes: &[u8], size: usize, memory_budget: usize) -> (Vec<Vec<RowOp>>, Vec<Outcome>, Vec<String>, u32) {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        std::fs::write(&source, bytes).unwrap();
        let t = tenant();
        let ing = prepare_file(&source, dir.path(), memory_budget, &t, Mode::Upsert, Default::default(), Default::default())
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(ing.sink.on_disk(), memory_budget < SPILL_IN_MEMORY);
        let spilled: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(spilled.iter().any(|f| f.ends_with(".jsonl")), ing.sink.on_disk(), "{spilled:?}");
        assert!(!spilled.iter().any(|f| f.ends_with(".kept")), "{spilled:?}");
        let mut phases = Vec::new();
        for phase in 0..PHASES {
            let mut ops = Vec::new();
            for body in ing.sink.chunks(phase, size, &ing.validator).unwrap() {
                let body = body.unwrap();
                let lines = crate::wire::parse_jsonl::<RowOp>("chunk", &body).unwrap();
                assert!(!lines.is_empty() && lines.len() <= size);
                ops.extend(lines);
            }
            assert_eq!(ops.len() as u64, ing.sink.counts[phase]);
            phases.push(ops);
        }
        let outcomes = match ing.sink.outcomes() {
            Stored::Memory(lines) => lines.to_vec(),
            Stored::File(path) => std::fs::read(path).unwrap(),
        };
        let outcomes = crate::wire::parse_jsonl("outcomes", &outcomes).unwrap();
        (phases, outcomes, ing.warnings.clone(), ing.rows)
    }

    #[test]
    fn streaming_from_disk_gives_exactly_the_operations_and_outcomes_of_the_in_memory_path() {
        let csv = "Type,Action,Email,OrgName,Supervisor,Mystery\n\
                   Org,Create,,North,,\n\
                   User,,ann@x.com,North,boss@x.com,?\n\
                   User,,boss@x.com,South,,\n\
                   User,,ANN@x.com,,,\n\
                   ,,,,,\n\
                   User,,bad@@x.com,,,\n\
                   Org,Delete,,West,,\n\
                   User,,cy@x.com,,ann@x.com,\n\
                   Org,Update,,NORTH,,\n";
        let mem = prepare(csv.as_bytes(), &tenant(), Mode::Upsert).unwrap();
        let (phases, outcomes, warnings, rows) = streamed(csv.as_bytes(), 2);
        let mut expected: Vec<Vec<RowOp>> = vec![Vec::new(); PHASES];
        for op in &mem.ops {
            expected[phase_of(op)].push(op.clone());
        }
        assert_eq!(phases, expected);
        let by_row = |mut o: Vec<Outcome>| {
            o.sort_by_key(|o| o.row);
            o
        };
        assert_eq!(by_row(outcomes.clone()), by_row(mem.outcomes.clone()));
        assert_eq!((warnings, rows), (mem.warnings.clone(), 9));
        // The marks need the whole file: boss is created after ann's row names him.
        let ann = phases[1].iter().find(|o| o.row == 3).unwrap();
        assert_eq!(ann.created_in_file, vec!["boss@x.com".to_string(), "north".into()]);
        assert_eq!(outcomes.len(), 4, "two duplicates, blank row, bad email: {outcomes:?}");
        // Duplicates are found after the last row and retracted from the spill files.
        let dup = |row: u32| outcomes.iter().find(|o| o.row == row).map(|o| (o.column.clone(), o.message.clone()));
        assert_eq!(
            dup(5),
            Some((Some("Email".into()), "duplicate email: row 3 of this file already has ann@x.com; only the first row is applied. Fix this row if it is another one, or delete it: dropped again as it is, it would change what the first row applied".into()))
        );
        assert_eq!(
            dup(10),
            Some((
                Some("OrgName".into()),
                "duplicate organization: row 2 of this file already has north; only the first row is applied. Fix this row if it is another one, or delete it: dropped again as it is, it would change what the first row applied".into()
            ))
        );
    }

    #[test]
    fn a_chunk_line_row_is_read_from_its_start() {
        assert_eq!(row_of_line(b"{\"row\":123,\"action\":\"Create\"}\n"), Some(123));
        assert_eq!(row_of_line(b"{\"row\":99999999999,\"action\":\"Create\"}"), None);
        assert_eq!(row_of_line(b"{\"action\":\"Create\",\"row\":1}"), None);
    }

    #[test]
    fn a_file_refused_while_streaming_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        let t = tenant();
        for (bytes, reason) in [
            (&b"Email,E-mail\na@x.com,b@x.com\n"[..], "both mean Email"),
            (b"Email\n\n\n", "a header row but no data rows"),
            (b"Email,Name\na@x.com,\"open\n", "never closed"),
        ] {
            std::fs::write(&source, bytes).unwrap();
            match prepare_file(&source, dir.path(), SPILL_IN_MEMORY, &t, Mode::Upsert, Default::default(), Default::default()) {
                Err(Stop::Refused(r)) => assert!(r.contains(reason), "{r}"),
                other => panic!("expected a refusal, got {:?}", other.map(|i| i.rows)),
            }
        }
    }
}
