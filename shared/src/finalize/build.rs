//! The result files of a job, built in one pass: the input is read again row by row with the
//! ingest reader, each row meets its outcome from the merged outcome files, and the row goes
//! straight to the result file (and the failed-rows file when it failed). What is kept is
//! bounded: counts, the first failures, warnings. Synchronous and local: finalize downloads
//! first and runs this on a blocking thread.

use super::digest::Digest;
use super::merge::Merge;
use super::write::{Kind, MAX_INPUT_COLUMNS, TableFile, unneutralise};
use crate::error::{Error, Result};
use crate::ingest::decode::{self, Format, ReadError, TableHead, TableVisitor};
use crate::model::{Outcome, Status};
use std::path::{Path, PathBuf};

/// What a row without an outcome says when its job had to be stopped.
pub const NOT_APPLIED: &str = "not applied: processing of this file stopped after repeated failures; upload this row again";
/// What a row says whose part of the file was handed to apply but never recorded when its job
/// stopped: its write may have gone through (a part's outcomes, before-states and count are
/// written only once every row of it ran), or the part never ran (its event lost); "not applied"
/// could be false.
pub const NOT_CONFIRMED: &str = "not confirmed: processing of this file stopped before this row's part of it was recorded as applied, so it may or may not have been applied; check the user, or upload the row again (a row already applied then reports Unchanged, or that the user exists or is not found)";

/// A stopped job's rows whose part was released to apply but never recorded (`NOT_CONFIRMED`).
pub type Unconfirmed = std::collections::HashSet<u32>;
/// What a row without an outcome says otherwise (a bug we report, never hide).
pub const NO_OUTCOME: &str = "not processed because of an internal error; upload this row again";

/// A finished file on local disk.
#[derive(Debug, Clone)]
pub struct Built {
    pub name: String,
    pub path: PathBuf,
    pub content_type: &'static str,
}

#[derive(Debug)]
pub struct BuiltFiles {
    pub result: Built,
    pub failed: Option<Built>,
    /// Replace mode: the users absent from the file and what happened to each.
    pub disabled: Option<Built>,
    /// A CSV result's companion: the failures grouped by kind (a workbook has them as its
    /// "Problems" sheet instead).
    pub problems: Option<Built>,
    pub digest: Digest,
}

/// A file name as result files use it: the upload's name without its extension, no path or
/// control characters, at most 100 characters and `MAX_STEM_BYTES` (result keys stay far inside
/// S3's 1,024 bytes, and the files built on local disk under it inside Linux's 255-byte names).
pub fn stem(file_name: &str) -> String {
    clean_stem(Path::new(file_name).file_stem().and_then(|s| s.to_str()).unwrap_or("roster"))
}

/// `stem` of a name already without its extension.
pub fn clean_stem(stem: &str) -> String {
    let mut bytes = 0;
    let clean: String = crate::wording::name_chars(stem)
        .take(100)
        .take_while(|c| {
            bytes += c.len_utf8();
            bytes <= MAX_STEM_BYTES
        })
        .collect();
    if clean.trim().is_empty() { "roster".into() } else { clean }
}

/// A stem's bytes: 100 Thai, CJK or emoji characters are 300 to 400, and the stem plus
/// "-would-be-disabled.xlsx" must fit a file name of 255 (it did not: the build failed, and the
/// job waited for an email that never came).
pub const MAX_STEM_BYTES: usize = 150;

/// Which files a build writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// A job's results: every row, the failed rows, the users replace mode disabled.
    Result,
    /// A held job's preview: only the rows that would change, and who would be disabled.
    Preview,
    /// A scheduled job's validation: every row with what it would do, the rows that would fail.
    Validation,
}

struct Builder<'a> {
    dir: &'a Path,
    stem: String,
    /// The job was stopped: rows without an outcome were not applied, or, these, not confirmed.
    stopped: Option<&'a Unconfirmed>,
    flavour: Flavour,
    merge: Merge,
    result: Option<TableFile>,
    failed: Option<TableFile>,
    disabled: Option<TableFile>,
    kind: Option<Kind>,
    /// The current table: its header, sheet name, row offset.
    head: Option<TableHead>,
    /// The input columns echoed (of those a spreadsheet holds): all but our own result columns.
    keep: Vec<usize>,
    /// Their header names, as echoed.
    echoed: Vec<String>,
    /// A delimited file we wrote (it has our Message column): its cells carry `neutralise`'s
    /// apostrophe, taken off before they are echoed (and escaped once again), as ingest takes it
    /// off before it reads them.
    unescape: bool,
    /// The tenant's name for its ExternalId column (`headers::is_result_column`).
    id_column: Option<String>,
    failed_started: bool,
    /// The user type the current sheet's name gives its rows (`Students`), when it has no Type
    /// column: the failed-rows file writes it as one, so it survives the sheet (saved as CSV by a
    /// spreadsheet, the sheet name was gone and the users were created without their type).
    sheet_type: Option<String>,
    digest: Digest,
}

impl Builder<'_> {
    /// (result, failed rows, disabled users) file names of the flavour.
    fn names(&self) -> (&'static str, &'static str, &'static str) {
        match self.flavour {
            Flavour::Result => ("result", "failed-rows", "disabled-users"),
            Flavour::Preview => ("preview", "failed-rows", "would-be-disabled"),
            Flavour::Validation => ("validation", "would-fail", "would-be-disabled"),
        }
    }

    fn open(&mut self, suffix: &str, kind: Kind) -> Result<TableFile> {
        let ext = match kind {
            Kind::Xlsx => "xlsx",
            Kind::Csv(b'\t') => "tsv",
            Kind::Csv(_) => "csv",
        };
        TableFile::create(&self.dir.join(format!("{}-{suffix}.{ext}", self.stem)), kind)
    }

    /// Outcomes before `row` belong to no input row: replace mode's reconcile outcomes (they
    /// name a user) go to the disabled-users file; anything else is reported, never dropped silently.
    fn outcome_for(&mut self, row: u32) -> Result<Option<Outcome>> {
        let io = |e: std::io::Error| Error::corrupt("outcomes", e);
        while let Some(next) = self.merge.peek_row().filter(|r| *r < row) {
            let o = self.merge.pop().map_err(io)?;
            if let Some(o) = o {
                self.orphan(o)?;
            } else {
                tracing::debug!(next, "outcome stream ended");
            }
        }
        if self.merge.peek_row() != Some(row) {
            return Ok(None);
        }
        let found = self.merge.pop().map_err(io)?;
        // A row recorded twice keeps its first outcome (ingest's before apply's).
        while self.merge.peek_row() == Some(row) {
            self.merge.pop().map_err(io)?;
        }
        Ok(found)
    }

    fn orphan(&mut self, o: Outcome) -> Result<()> {
        let Some(user) = o.user.clone() else {
            tracing::error!(row = o.row, "outcome of no input row");
            return Ok(());
        };
        if self.disabled.is_none() {
            let mut f = self.open(self.names().2, Kind::Csv(b','))?;
            f.start("Disabled", &["Email", "Status", "Message", "Changes"], None)?;
            self.disabled = Some(f);
        }
        self.digest.disabled(&o);
        let status = o.status_word();
        self.disabled.as_mut().map(|f| f.row(&[&user, &status, &o.message, &o.changes])).transpose()?;
        Ok(())
    }
}

impl TableVisitor for Builder<'_> {
    type Stop = Error;

    fn skip_sheet(&self, name: &str) -> bool {
        crate::ingest::sheets::is_instruction_sheet(name)
    }

    fn table(&mut self, head: TableHead) -> Result<()> {
        let kind = *self.kind.get_or_insert(if head.format.is_spreadsheet() {
            Kind::Xlsx
        } else {
            Kind::Csv(head.delimiter.map(|d| d as u8).filter(u8::is_ascii).unwrap_or(b','))
        });
        if self.result.is_none() {
            // The result is always comma-separated; the failed-rows file keeps the input's delimiter.
            let result_kind = if let Kind::Csv(_) = kind { Kind::Csv(b',') } else { kind };
            self.result = Some(self.open(self.names().0, result_kind)?);
        }
        let width = match kind {
            Kind::Xlsx => head.headers.len().min(MAX_INPUT_COLUMNS),
            Kind::Csv(_) => head.headers.len(),
        };
        let sheet = head.sheet.clone().unwrap_or_else(|| "Roster".into());
        if width < head.headers.len() {
            self.digest.warn(format!(
                "sheet \"{}\" has {} columns; a spreadsheet holds 16,384, so the result files keep its first {MAX_INPUT_COLUMNS} and add Status, Message, Changes and UserId",
                crate::wording::quoted(&sheet),
                head.headers.len()
            ));
        }
        use crate::ingest::headers::{has_our_message, is_result_column};
        let id_column = self.id_column.as_deref();
        let keep: Vec<usize> = (0..width).filter(|&i| !is_result_column(&head.headers, i, id_column)).collect();
        self.unescape = kind != Kind::Xlsx && has_our_message(&head.headers, id_column);
        let name = |i: &usize| if self.unescape { unneutralise(&head.headers[*i]) } else { head.headers[*i].as_str() };
        self.echoed = keep.iter().map(name).map(str::to_string).collect();
        let mut header: Vec<&str> = self.echoed.iter().map(String::as_str).collect();
        header.extend(["Status", "Message", "Changes", "UserId"]);
        let used = self.result.as_mut().map(|f| f.start(&sheet, &header, Some(keep.len()))).transpose()?.unwrap_or_default();
        if used != sheet && kind == Kind::Xlsx {
            self.digest.warn(format!(
                "sheet \"{}\" is named \"{used}\" in the result files (a spreadsheet's sheet names have at most 31 characters, none of []:*?/\\, and are unique)",
                crate::wording::quoted(&sheet)
            ));
        }
        self.digest.sheets.push((crate::ingest::sheets::row_id(head.index, 0), sheet.clone()));
        let typed = head.headers.iter().any(|h| crate::fields::Field::from_header(h.trim()) == Some(crate::fields::Field::Type));
        // "User" is no type a Type cell keeps (a Type of User reads as a plain user).
        self.sheet_type = head.sheet.as_deref().and_then(crate::ingest::sheets::user_type_of).filter(|t| !typed && t != "User");
        self.keep = keep;
        self.failed_started = false;
        self.head = Some(head);
        Ok(())
    }

    fn row<S: AsRef<str>>(&mut self, number: u32, cells: &[S]) -> Result<()> {
        let Some(head) = &self.head else { return Ok(()) };
        let (id, headers) = (crate::ingest::sheets::row_id(head.index, number), head.headers.len());
        let outcome = match self.outcome_for(id)? {
            Some(o) => o,
            None => match self.stopped {
                Some(unconfirmed) if unconfirmed.contains(&id) => Outcome::failure(id, None, NOT_CONFIRMED),
                Some(_) => Outcome::failure(id, None, NOT_APPLIED),
                None => {
                    tracing::error!(row = id, "row has no outcome");
                    Outcome::failure(id, None, NO_OUTCOME)
                }
            },
        };
        self.digest.add(&outcome);
        let cell = |i: &usize| cells.get(*i).map_or("", |c| c.as_ref());
        let unescape = self.unescape;
        let mut line: Vec<&str> = self.keep.iter().map(cell).map(|c| if unescape { unneutralise(c) } else { c }).collect();
        // Values right of the last header (the row fails for them): echoed after our columns,
        // under no header, so the failed-rows file dropped again fails the same way instead of
        // losing them.
        let extra: Vec<&str> = cells.iter().skip(headers).map(|c| c.as_ref()).map(|c| if unescape { unneutralise(c) } else { c }).collect();
        let width = line.len();
        let status = outcome.status_word();
        line.push(&status);
        line.push(&outcome.message);
        line.push(&outcome.changes);
        line.push(outcome.user_id.as_deref().unwrap_or(""));
        line.extend(&extra);
        let changes = outcome.status == Status::Success
            && outcome.change.is_some_and(|c| !matches!(c, crate::model::Change::Unchanged | crate::model::Change::Read));
        if self.flavour != Flavour::Preview || changes {
            self.result.as_mut().map(|f| f.row(&line)).transpose()?;
        }
        line.truncate(width + 2); // Changes and UserId: the failed-rows file is for fixing and uploading again
        line.extend(&extra);
        if outcome.status == Status::Failure && self.flavour != Flavour::Preview {
            if self.failed.is_none() {
                let kind = self.kind.unwrap_or(Kind::Csv(b','));
                self.failed = Some(self.open("failed-rows", kind)?);
            }
            let Some(head) = &self.head else { return Ok(()) };
            if !self.failed_started {
                let mut header: Vec<&str> = self.echoed.iter().map(String::as_str).collect();
                if self.sheet_type.is_some() {
                    header.push("Type");
                }
                header.push("Message");
                let sheet = head.sheet.clone().unwrap_or_else(|| "Roster".into());
                self.failed.as_mut().map(|f| f.start(&sheet, &header, None)).transpose()?;
                self.failed_started = true;
            }
            line.remove(width); // Status
            if let Some(t) = &self.sheet_type {
                line.insert(width, t);
            }
            self.failed.as_mut().map(|f| f.row(&line)).transpose()?;
        }
        Ok(())
    }
}

/// Build the result files of `source` (the file as ingest read it) with the outcomes in
/// `outcome_files`, into `dir`. `stopped`: rows without an outcome were not applied, or, those in
/// the set, not confirmed.
/// `id_column`: the tenant's name for its ExternalId column.
pub fn build(
    source: &Path,
    outcome_files: &[PathBuf],
    dir: &Path,
    file_name: &str,
    id_column: Option<&str>,
    stopped: Option<&Unconfirmed>,
) -> Result<BuiltFiles> {
    build_as(source, outcome_files, dir, file_name, id_column, stopped, Flavour::Result)
}

/// `build`, writing the files of `flavour`.
pub fn build_as(
    source: &Path,
    outcome_files: &[PathBuf],
    dir: &Path,
    file_name: &str,
    id_column: Option<&str>,
    stopped: Option<&Unconfirmed>,
    flavour: Flavour,
) -> Result<BuiltFiles> {
    let merge = Merge::open(outcome_files).map_err(|e| Error::corrupt("outcomes", e))?;
    let mut b = Builder {
        dir,
        stem: stem(file_name),
        stopped,
        flavour,
        merge,
        result: None,
        failed: None,
        disabled: None,
        kind: None,
        head: None,
        keep: Vec::new(),
        echoed: Vec::new(),
        unescape: false,
        id_column: id_column.map(str::to_string),
        failed_started: false,
        sheet_type: None,
        digest: Digest::default(),
    };
    let mut file = std::fs::File::open(source).map_err(|e| Error::local("staged source", e))?;
    match decode::read(&mut file, &mut b) {
        Ok(()) => {}
        Err(ReadError::Stopped(e)) => return Err(e),
        Err(ReadError::File(e)) => return Err(Error::corrupt("staged source", e)),
        Err(ReadError::Io(e)) => return Err(Error::local("staged source", e)),
    }
    // What is left after the last row: reconcile outcomes (and anything without a row).
    while let Some(o) = b.merge.pop().map_err(|e| Error::corrupt("outcomes", e))? {
        b.orphan(o)?;
    }
    b.digest.format = b.head.as_ref().map(|h| h.format).or(Some(Format::Csv)).map(|f| f.label().to_string());
    let done = |f: TableFile, suffix: &str, stem: &str| -> Result<Built> {
        let kind = f.kind;
        let path = f.finish()?;
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("csv").to_string();
        Ok(Built { name: format!("{stem}-{suffix}.{ext}"), path, content_type: kind.content_type() })
    };
    let mut result = b.result.take().ok_or_else(|| Error::corrupt("staged source", "no table"))?;
    let stem = b.stem.clone();
    // What to fix, and where: the failures grouped by kind, most frequent first.
    let problems = b.digest.problems();
    let mut problems_file = None;
    if !problems.is_empty() && b.flavour != Flavour::Preview {
        let header = ["Rows", "Problem and fix", "Column", "Where"];
        let out = match result.kind {
            Kind::Xlsx => &mut result,
            Kind::Csv(_) => problems_file.insert(b.open("problems", Kind::Csv(b','))?),
        };
        out.start("Problems", &header, None)?;
        for p in &problems {
            let message = if p.varied { format!("{} (and the same with other values)", p.message) } else { p.message.clone() };
            out.row(&[&p.count.to_string(), &message, p.column.as_deref().unwrap_or(""), &crate::layout::where_text(p)])?;
        }
        if b.digest.rows_of_other_problems > 0 {
            let other = b.digest.rows_of_other_problems.to_string();
            out.row(&[&other, "other kinds of problem (see the failed-rows file)", "", ""])?;
        }
    }
    let (result_name, _, disabled_name) = b.names();
    Ok(BuiltFiles {
        result: done(result, result_name, &stem)?,
        failed: b.failed.take().map(|f| done(f, b.names().1, &stem)).transpose()?,
        disabled: b
            .disabled
            .take()
            .map(|f| {
                done(f, disabled_name, "").map(|mut d| {
                    d.name = format!("{disabled_name}.csv");
                    d
                })
            })
            .transpose()?,
        problems: problems_file.map(|f| done(f, "problems", &stem)).transpose()?,
        digest: b.digest,
    })
}
