//! Stage 1: a roster file lands in `incoming/<tenant>/[<mode>/]<file>`. Decode, validate, plan the
//! job and write its chunks. A structural problem rejects the whole file and applies nothing.

pub mod decode;
pub mod headers;
pub mod oneroster;
pub mod sheets;
pub mod stream;
pub mod validate;
pub mod view;

#[cfg(test)]
mod hostile_tests;

use crate::error::{Error, Result};
use crate::event::ObjectRef;
use crate::keys::{self, KeyProblem};
use crate::model::EmailKind;
use crate::model::{Action, Job, JobState, Mode, Outcome, PHASES, RowOp, Target, Tenant, UserFields, UserStatus, upload_order};
use crate::ports::Plan;
use crate::report;
use crate::services::Services;
use crate::wire::{StagedInput, to_json};
use decode::Table;
use std::path::Path;
use stream::{Chunks, Collected, Ingester, Spill, Stop, Stored};
use tracing::{info, warn};

/// A file read and validated in memory, before anything is written: the CLI's `validate`. Ingest
/// runs the same reader and validator, streaming (`stream::prepare_file`).
#[derive(Debug)]
pub struct Prepared {
    /// One table per CSV/TSV file; one per data sheet of a workbook.
    pub tables: Vec<Table>,
    pub warnings: Vec<String>,
    pub ops: Vec<RowOp>,
    /// Rows that failed validation (or were skipped).
    pub outcomes: Vec<Outcome>,
}

/// Decode, map headers and validate; `Err` is the reason the whole file is rejected.
pub fn prepare(bytes: &[u8], tenant: &Tenant, mode: Mode) -> Result<Prepared, String> {
    // A OneRoster bundle: references outside it are unknown here (no directory to ask).
    let bundle =
        match oneroster::read_zip(&mut std::io::Cursor::new(bytes), decode::archive::MAX_ARCHIVE_BYTES).map_err(|e| e.to_string())? {
            Some(bundle) => {
                let mode = bundle.mode(Some(mode))?;
                let translated = bundle.translate(&Default::default(), &Default::default(), tenant.external_id_header());
                Some((translated.to_xlsx()?, translated, mode))
            }
            None => None,
        };
    let (bytes, mode, verdicts, context, bundle_warnings) = match &bundle {
        Some((xlsx, t, m)) => (xlsx.as_slice(), *m, t.verdicts.clone(), t.context.clone(), t.warnings.clone()),
        None => (bytes, mode, Default::default(), Default::default(), Vec::new()),
    };
    let decode::Decoded { tables, hidden, warnings: read_warnings } = sheets::tables_and_hidden(bytes).map_err(|e| e.to_string())?;
    let tenant = rows_tenant(tenant, bundle.is_some());
    let mut ingester = Ingester::new(&tenant, mode, Collected::default()).with_verdicts(verdicts, context);
    ingester.warnings = bundle_warnings;
    ingester.warnings.extend(hidden.iter().map(|name| sheets::hidden_warning(name)));
    ingester.warnings.extend(read_warnings);
    let reason = |s: Stop| match s {
        Stop::Refused(reason) => reason,
        Stop::Io(e) => e.to_string(), // memory sinks do not fail
    };
    decode::replay(&tables, &mut ingester).map_err(reason)?;
    ingester.finish().map_err(reason)?;
    let Ingester { validator, warnings, sink: Collected { mut ops, outcomes }, .. } = ingester;
    for op in &mut ops {
        op.created_in_file = validator.created_in_file(op);
    }
    Ok(Prepared { tables, warnings, ops, outcomes })
}

/// What `rosterdrop validate` shows of a roster.
#[derive(Debug)]
pub struct Checked {
    /// The first table's format ("CSV", "XLSX"...).
    pub format: String,
    pub rows: usize,
    pub valid: usize,
    pub failed: usize,
    pub skipped: usize,
    pub warnings: Vec<String>,
    /// The first `MAX_PROBLEMS` failed rows, by row, each as a person reads it ("row 12 of sheet
    /// Students").
    pub problems: Vec<(String, Outcome)>,
}

/// Failed rows `check_file` keeps: a million failing rows (the wrong tenant) are counted, not held.
pub const MAX_PROBLEMS: usize = 10_000;

impl Checked {
    fn new(format: String, rows: usize, valid: usize, warnings: Vec<String>) -> Self {
        Checked { format, rows, valid, failed: 0, skipped: 0, warnings, problems: Vec::new() }
    }

    /// Count an outcome; keep the failure among the first rows.
    fn add(&mut self, outcome: Outcome, label: impl FnOnce(u32) -> String) {
        if outcome.status != crate::model::Status::Failure {
            self.skipped += 1;
            return;
        }
        self.failed += 1;
        self.problems.push((label(outcome.row), outcome));
        if self.problems.len() >= 2 * MAX_PROBLEMS {
            self.keep_first();
        }
    }

    fn keep_first(&mut self) {
        self.problems.sort_by_key(|(_, o)| o.row);
        self.problems.truncate(MAX_PROBLEMS);
    }
}

/// `prepare` of a file on disk as the upload reads it: row by row, its operations spilled to a
/// scratch directory as ingest spills them, so memory holds the file's keys and its problems,
/// not its rows (`prepare` holds every cell and operation: 1.5 KB a row, 1.5 GB for a million).
/// A OneRoster bundle, translated in memory by ingest as well, goes through `prepare`.
pub fn check_file(path: &Path, tenant: &Tenant, mode: Mode) -> Result<std::result::Result<Checked, String>> {
    let read = |e: std::io::Error| Error::local("reading the roster", e);
    let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(read)?);
    let bundle = oneroster::read_zip(&mut file, decode::archive::MAX_ARCHIVE_BYTES);
    if matches!(bundle, Ok(Some(_)) | Err(_)) {
        drop((bundle, file));
        let bytes = std::fs::read(path).map_err(read)?;
        return Ok(prepare(&bytes, tenant, mode).map(|p| {
            let tables: Vec<&Table> = p.tables.iter().collect();
            let format = p.tables.first().map(|t| t.format.label().to_string()).unwrap_or_default();
            let rows = p.tables.iter().map(|t| t.rows.len()).sum();
            let mut checked = Checked::new(format, rows, p.ops.len(), p.warnings.clone());
            for o in &p.outcomes {
                checked.add(o.clone(), |row| validate::row_label(row, &tables));
            }
            checked.keep_first();
            checked
        }));
    }
    drop(file);
    // A validate stopped with Ctrl-C left its spill (names and addresses) behind: swept here too.
    sweep_stale_scratch(&std::env::temp_dir(), STALE_SCRATCH);
    let scratch = tempfile::Builder::new().prefix(SCRATCH_PREFIX).tempdir().map_err(|e| Error::local("scratch directory", e))?;
    let ingested =
        match stream::prepare_file(path, scratch.path(), stream::SPILL_IN_MEMORY, tenant, mode, Default::default(), Default::default()) {
            Ok(i) => i,
            Err(Stop::Refused(reason)) => return Ok(Err(reason)),
            Err(Stop::Io(e)) => return Err(read(e)),
        };
    let format = ingested.format.map(|f| f.label().to_string()).unwrap_or_default();
    let valid = ingested.sink.counts.iter().sum::<u64>() as usize;
    let mut checked = Checked::new(format, ingested.rows as usize, valid, ingested.warnings.clone());
    let mut push = |line: &[u8]| -> Result<()> {
        if !line.iter().all(u8::is_ascii_whitespace) {
            let o: Outcome = serde_json::from_slice(line).map_err(|e| Error::corrupt("the spilled outcomes", e.to_string()))?;
            checked.add(o, |row| ingested.validator.row_label(row));
        }
        Ok(())
    };
    match ingested.sink.outcomes() {
        Stored::Memory(bytes) => bytes.split(|b| *b == b'\n').try_for_each(&mut push)?,
        Stored::File(spilled) => {
            use std::io::BufRead;
            for line in std::io::BufReader::new(std::fs::File::open(spilled).map_err(read)?).split(b'\n') {
                push(&line.map_err(read)?)?;
            }
        }
    }
    checked.keep_first();
    Ok(Ok(checked))
}

/// Deterministic job id: a redelivered event maps to the same job, while every upload, even of
/// the same name, is a new one. The bucket is versioned (in AWS and locally), and the version id
/// is what identifies an upload on both: LocalStack sends the same sequencer in every event, so a
/// sequencer is used only for an unversioned bucket.
pub fn job_id(obj: &ObjectRef) -> String {
    let name = match &obj.version_id {
        Some(version) => format!("{}/{}#{version}", obj.bucket, obj.key),
        None => format!("{}/{}##{}", obj.bucket, obj.key, obj.sequencer.as_deref().or(obj.etag.as_deref()).unwrap_or("")),
    };
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, name.as_bytes()).to_string()
}

/// Ingest one dropped file. An error a retry cannot fix (our own data unreadable, access denied)
/// rejects the file with an email instead of failing into the dead-letter queue; only retryable
/// errors are returned.
pub async fn handle(svc: &Services, obj: &ObjectRef) -> Result<()> {
    match ingest(svc, obj).await {
        Err(e) if !e.is_retryable() => give_up(svc, obj, &e).await,
        done => done,
    }
}

async fn give_up(svc: &Services, obj: &ObjectRef, cause: &Error) -> Result<()> {
    let error = crate::address::mask_addresses(&cause.to_string()).into_owned();
    tracing::error!(key = %obj.key, error, "ingest cannot process this file; rejecting it");
    let Some(job) = svc.jobs.get(&job_id(obj)).await? else { return Ok(()) };
    if job.state != JobState::Received {
        return Ok(()); // past ingest: what failed after the plan (the started email) is not the file's fault
    }
    let tenant = report::tenant_to_tell(svc, &job.tenant).await?;
    let reason = format!(
        "the file could not be processed ({cause}); nothing was applied. Upload it again, and contact support with job {} if it happens again",
        job.id
    );
    report::reject(svc, &job, tenant.as_ref(), &reason, &[]).await
}

async fn ingest(svc: &Services, obj: &ObjectRef) -> Result<()> {
    let key = match keys::parse_incoming(&obj.key) {
        Ok(k) => k,
        Err(KeyProblem::NotIncoming | KeyProblem::FolderMarker) => {
            info!(key = %obj.key, "not a roster drop; ignored");
            return Ok(());
        }
        Err(problem) => return misplaced(svc, obj, &problem).await,
    };
    // An admin's decision on a held job, dropped from the S3 console: not a file of its own.
    if let Err(segment) = &key.mode
        && let Some(verb) = crate::holds::Verb::parse(segment)
        && let Some(tenant) = svc.directory.tenant(&key.tenant).await?
    {
        return crate::holds::from_console(svc, obj, &tenant, verb, &key.file_name).await;
    }
    let id = job_id(obj);
    let new = Job {
        order: upload_order(obj.event_time, obj.sequencer.as_deref()),
        ..Job::received(&id, &key.tenant, &obj.key, &key.file_name, key.mode.clone().ok().flatten(), chrono::Utc::now().to_rfc3339())
    };
    let (job, created) = svc.jobs.create_or_get(&new).await?;
    if job.state != JobState::Received {
        info!(job = %id, state = job.state.as_str(), "duplicate event for an ingested file; nothing to do");
        return Ok(());
    }
    info!(job = %id, tenant = %key.tenant, file = %key.file_name, retry = !created, "ingest started");

    let Some(tenant) = svc.directory.tenant(&key.tenant).await? else {
        let reason = format!(
            "tenant \"{}\" is not configured; nothing was applied. Ask support to set it up, or {}",
            key.tenant,
            keys::layout_advice(None)
        );
        return report::reject(svc, &job, None, &reason, &[]).await;
    };
    let mode = match &key.mode {
        Ok(m) => m.unwrap_or(Mode::Upsert),
        Err(segment) if segment.eq_ignore_ascii_case(keys::SCHEDULED) => {
            let msg = format!(
                "a scheduled file goes in a folder naming its time (UTC) under scheduled/: incoming/{}/scheduled/<YYYY-MM-DDTHH-MM>/, for example incoming/{}/scheduled/2026-12-24T06-30/; nothing was applied",
                tenant.id, tenant.id
            );
            return report::reject(svc, &job, Some(&tenant), &msg, &[]).await;
        }
        Err(segment) => {
            let msg = format!(
                "unknown mode folder \"{segment}\"; drop the file in incoming/{}/ (upsert) or in one of the mode folders: {}",
                tenant.id,
                Mode::NAMES.join(", ")
            );
            return report::reject(svc, &job, Some(&tenant), &msg, &[]).await;
        }
    };
    let at = match &key.at {
        None => None,
        Some(Err(segment)) => return report::reject(svc, &job, Some(&tenant), &crate::schedule::bad_time(segment, &tenant.id), &[]).await,
        Some(Ok(at)) => match crate::schedule::refuse(*at, chrono::Utc::now(), mode, &tenant.id) {
            Some(why) => return report::reject(svc, &job, Some(&tenant), &why, &[]).await,
            None => Some(*at),
        },
    };
    let size = match obj.size {
        Some(n) if n >= 0 => Some(n as u64),
        _ => svc.store.size(&obj.key).await?,
    };
    if let Some(size) = size.filter(|s| *s > svc.config.max_file_bytes) {
        let msg = format!(
            "the file is {} MB; the limit is {} MB. Split it into smaller files",
            size / 1_000_000,
            svc.config.max_file_bytes / 1_000_000
        );
        return report::reject(svc, &job, Some(&tenant), &msg, &[]).await;
    }
    // The file goes to local disk (Lambda's ephemeral storage), never whole into memory.
    sweep_stale_scratch(&std::env::temp_dir(), STALE_SCRATCH);
    let scratch = tempfile::Builder::new().prefix(SCRATCH_PREFIX).tempdir().map_err(|e| Error::local("scratch directory", e))?;
    let source = scratch.path().join("source");
    let Some(size) = svc.store.download(&obj.key, obj.version_id.as_deref(), &source).await? else {
        return report::reject(svc, &job, Some(&tenant), "the file was deleted before it could be read", &[]).await;
    };
    let spreadsheet = starts_like_workbook(&source).map_err(|e| Error::local("reading the roster", e))?;
    if let Some(reason) = svc.config.memory_mb.and_then(|mb| too_big_to_read(spreadsheet, size, mb)) {
        return report::reject(svc, &job, Some(&tenant), &reason, &[]).await;
    }
    // A OneRoster bundle is read whole (bounded) and becomes the workbook read from here on.
    let (mut mode, mut source, mut bundle) = (mode, source, None);
    let (mut verdicts, mut context) = Default::default();
    let mut bundle_warnings = Vec::new();
    // Only a zip can be a bundle: a CSV is not opened as one.
    let read =
        if spreadsheet { read_bundle(svc, &tenant, &source, key.mode.clone().ok().flatten()).await? } else { BundleRead::NotABundle };
    match read {
        BundleRead::NotABundle => {}
        BundleRead::Refused(reason) => return report::reject(svc, &job, Some(&tenant), &reason, &[]).await,
        BundleRead::Read { xlsx, mode: m, translated } => {
            let book = scratch.path().join("bundle.xlsx");
            std::fs::write(&book, xlsx).map_err(|e| Error::local("writing the bundle's workbook", e))?;
            bundle = Some(std::mem::replace(&mut source, book));
            mode = m;
            verdicts = translated.verdicts;
            context = translated.context;
            bundle_warnings = translated.warnings;
        }
    }
    let rows_tenant = rows_tenant(&tenant, bundle.is_some());
    let mut ingested = match stream::prepare_file(&source, scratch.path(), stream::SPILL_IN_MEMORY, &rows_tenant, mode, verdicts, context) {
        Ok(i) => i,
        Err(Stop::Refused(reason)) => return report::reject(svc, &job, Some(&tenant), &reason, &[]).await,
        Err(Stop::Io(e)) => return Err(Error::local("reading the roster", e)),
    };
    ingested.warnings.splice(0..0, bundle_warnings);
    if let Some(zip) = &bundle {
        // Finalize builds the failed-records bundle from the records as they came.
        svc.store.put_file(&keys::staged_bundle(&job.id), zip, "application/zip").await?;
    }
    let mut active = None;
    if mode.is_replace() {
        // Two "whole lists" must never interleave: one replace file of a tenant at a time.
        if let Some(holder) = svc.jobs.acquire_replace(&tenant.id, &job.id).await? {
            let other = svc.jobs.get(&holder).await?;
            if let Some(other) = other.as_ref().filter(|j| j.state == JobState::Held) {
                let reason = format!(
                    "another replace file of this tenant ({}, job {holder}) is HELD for approval; approve or discard it first (rosterdrop approve|discard {holder}), then upload this file again; nothing was applied",
                    crate::wording::quoted(&other.file_name)
                );
                return report::reject(svc, &job, Some(&tenant), &reason, &[]).await;
            }
            let other = other.map(|j| j.file_name).unwrap_or_default();
            let reason = format!(
                "another replace file of this tenant ({}, job {holder}) is still being applied, and two complete user lists cannot be applied at once; nothing was applied. Upload this file again when that job's result email has arrived",
                crate::wording::quoted(&other)
            );
            return report::reject(svc, &job, Some(&tenant), &reason, &[]).await;
        }
        let absent = absent_active_users(svc, &tenant, &ingested.validator).await?;
        active = Some(absent.0 as u64);
        for (i, email) in absent.1.into_iter().enumerate() {
            let op = RowOp {
                row: RECONCILE_ROW_BASE + i as u32,
                action: Action::Reconcile,
                target: Target::User { email, fields: UserFields::default() },
                created_in_file: vec![],
                restore: None,
            };
            ingested.sink.extra_op(&op).map_err(|e| Error::local("writing operations", e))?;
        }
        ingested.sink.flush().map_err(|e| Error::local("writing operations", e))?;
    }
    let held = crate::holds::may_hold(svc, &tenant, mode, &ingested.sink, active).await?;
    write_job(svc, &job, &tenant, mode, &ingested, &source, bundle.is_some(), held, at).await
}

/// The job of a file dropped outside `incoming/<tenant>/[<mode>/]<file>`: it is rejected, and
/// the tenant's admins (when the key names a configured tenant) or the deployment's default
/// admins are told where to drop it. Its job is keyed like any other, so a redelivery is one job.
pub const NO_TENANT: &str = "(none)";

async fn misplaced(svc: &Services, obj: &ObjectRef, problem: &KeyProblem) -> Result<()> {
    let id = job_id(obj);
    let tenant_id = problem.tenant().unwrap_or(NO_TENANT);
    let new = Job::received(&id, tenant_id, &obj.key, problem.file_name(), None, chrono::Utc::now().to_rfc3339());
    let (job, _) = svc.jobs.create_or_get(&new).await?;
    if job.state != JobState::Received {
        info!(job = %id, state = job.state.as_str(), "duplicate event for a misplaced file; nothing to do");
        return Ok(());
    }
    warn!(job = %id, ?problem, "roster dropped outside incoming/<tenant>/[<mode>/]<file>");
    let tenant = match problem.tenant() {
        Some(t) => svc.directory.tenant(t).await?,
        None => None,
    };
    report::reject(svc, &job, tenant.as_ref(), &problem.reason(), &[]).await
}

const SCRATCH_PREFIX: &str = "rosterdrop-ingest-";
/// Older than the ingest timeout (15 min): no invocation is still using it.
const STALE_SCRATCH: std::time::Duration = std::time::Duration::from_secs(20 * 60);

/// An invocation that crashed or timed out left its scratch directory behind, and a warm Lambda
/// keeps `/tmp`: remove those (best effort) before they fill it. Young ones may belong to a
/// concurrent ingest (the local runner runs several in one process).
fn sweep_stale_scratch(base: &Path, older_than: std::time::Duration) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for entry in entries.flatten() {
        let stale = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age > older_than);
        if stale && entry.file_name().to_string_lossy().starts_with(SCRATCH_PREFIX) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

enum BundleRead {
    NotABundle,
    Refused(String),
    Read { xlsx: Vec<u8>, mode: Mode, translated: oneroster::Translated },
}

/// A zip that is a OneRoster bundle, read within the memory the function has (its tables are
/// held whole), translated with the users it references looked up among the tenant's ExternalIds.
async fn read_bundle(svc: &Services, tenant: &Tenant, path: &Path, folder: Option<Mode>) -> Result<BundleRead> {
    let local = |e: std::io::Error| Error::local("reading the bundle", e);
    let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(local)?);
    let limit =
        svc.config.memory_mb.map_or(decode::archive::MAX_ARCHIVE_BYTES, |mb| mb * 1024 * 1024 / 100 * 85 / BUNDLE_PEAK_PER_UNZIPPED_BYTE);
    let bundle = match oneroster::read_zip(&mut file, limit) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(BundleRead::NotABundle),
        Err(oneroster::NotRead::NoBundle(why)) => return Ok(BundleRead::Refused(why)),
        Err(oneroster::NotRead::Refused(why)) => return Ok(BundleRead::Refused(format!("{why}; nothing was applied"))),
    };
    let mode = match bundle.mode(folder) {
        Ok(m) => m,
        Err(why) => return Ok(BundleRead::Refused(format!("{why}; nothing was applied"))),
    };
    // Ids longer than an ExternalId may be are in no directory (and would not fit its keys).
    let outside: Vec<String> = bundle.outside_users().into_iter().filter(|id| validate::check_external_id(id).is_ok()).collect();
    let known = if outside.is_empty() {
        Default::default()
    } else {
        svc.directory.external_ids(&tenant.id, &outside, crate::ports::Consistency::Strong).await?
    };
    let outside: Vec<String> = bundle.outside_orgs().into_iter().filter(|id| validate::check_external_id(id).is_ok()).collect();
    let known_orgs = if outside.is_empty() { Default::default() } else { svc.directory.org_ids(&tenant.id, &outside).await? };
    let translated = bundle.translate(&known, &known_orgs, tenant.external_id_header());
    match translated.to_xlsx() {
        Ok(xlsx) => Ok(BundleRead::Read { xlsx, mode, translated }),
        Err(e) => Ok(BundleRead::Refused(format!("the bundle could not be read as a roster ({e}); nothing was applied"))),
    }
}

/// The tenant a file's rows are read for: a strict template is the tenant's spreadsheet, while a
/// bundle's sheets are ours, made from a standard (the upload and `rosterdrop validate` alike).
fn rows_tenant(tenant: &Tenant, bundle: bool) -> std::borrow::Cow<'_, Tenant> {
    if bundle && tenant.strict_template {
        std::borrow::Cow::Owned(Tenant { strict_template: false, ..tenant.clone() })
    } else {
        std::borrow::Cow::Borrowed(tenant)
    }
}

fn starts_like_workbook(path: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut magic = Vec::with_capacity(8);
    std::fs::File::open(path)?.take(8).read_to_end(&mut magic)?;
    Ok(decode::is_workbook(&magic))
}

/// Peak memory of ingesting a file, per byte of file. Ingest streams, so what grows with the
/// file is a 16-byte fingerprint per row, plus, for XLSX, calamine's shared-string table; `make
/// bench` measures the peaks (README "Performance"); these add headroom.
pub const TEXT_PEAK_PER_FILE_BYTE: u64 = 2;
/// A OneRoster bundle is read whole (its files reference each other): ingest's peak was 15x its
/// unzipped size for 100,000 students, 24x for 20,000 (`make bench`, "OneRoster bundles"), so
/// 1,769 MB of memory reads bundles of 75 MB unzipped, about 360,000 students.
pub const BUNDLE_PEAK_PER_UNZIPPED_BYTE: u64 = 20;
pub const SPREADSHEET_PEAK_PER_FILE_BYTE: u64 = 8;

/// A file this function could only fail on by running out of memory (and be retried into the
/// dead-letter queue) is refused at once, saying how large a file of its kind can be.
pub fn too_big_to_read(spreadsheet: bool, size: u64, memory_mb: u64) -> Option<String> {
    let budget = memory_mb * 1024 * 1024 / 100 * 85; // the runtime and the SDK need the rest
    let (factor, kind) =
        if spreadsheet { (SPREADSHEET_PEAK_PER_FILE_BYTE, "a spreadsheet") } else { (TEXT_PEAK_PER_FILE_BYTE, "a CSV or TSV file") };
    let limit = budget / factor;
    (size > limit).then(|| {
        let csv_limit = budget / TEXT_PEAK_PER_FILE_BYTE;
        let advice = if spreadsheet { format!(", or save it as CSV (up to {} MB)", csv_limit / 1_000_000) } else { String::new() };
        format!(
            "the file is {} MB; as {kind} this service reads up to {} MB at once. Split it into smaller files{advice}",
            size.div_ceil(1_000_000),
            limit / 1_000_000
        )
    })
}

/// Reconcile operations (replace mode) are not input rows; they are numbered from here so every
/// operation of a job keeps a distinct number (idempotency stamps use it).
pub const RECONCILE_ROW_BASE: u32 = 1_000_000_000;

/// (active users, the active users absent from the file), for replace mode. The scope is the
/// whole tenant: a replace file lists every user the tenant keeps.
async fn absent_active_users(svc: &Services, tenant: &Tenant, file: &validate::RowValidator) -> Result<(usize, Vec<String>)> {
    let users = svc.directory.list_users(&tenant.id).await?;
    // A student known by Username alone whom a row gives an Email no user has: moving, not absent.
    let has = if file.names_any_username_beside_email() {
        file.user_fingerprints(users.iter().map(|(k, _)| k.as_str()))
    } else {
        hashbrown::HashSet::new()
    };
    let active: Vec<String> = users.into_iter().filter(|(_, status)| *status == UserStatus::Active).map(|(k, _)| k).collect();
    let total = active.len();
    // Sorted: reconcile rows are numbered in this order, so disabled-users.csv (written as
    // finalize streams them) lists users alphabetically.
    let mut absent: Vec<String> = active.into_iter().filter(|k| !file.names_user(k) && !file.username_moves(k, &has)).collect();
    if file.names_any_external_id() && !absent.is_empty() {
        // A user the file names by ExternalId under a new email is moving, not absent: only the
        // absent are read, to see their ids.
        let mut moving = std::collections::HashSet::new();
        for batch in absent.chunks(1_000) {
            let users = svc.directory.users(&tenant.id, batch).await?;
            moving.extend(
                users
                    .into_iter()
                    .filter(|(_, u)| u.fields.external_id.as_deref().is_some_and(|id| file.names_external_id(id)))
                    .map(|(e, _)| e),
            );
        }
        absent.retain(|e| !moving.contains(e));
    }
    absent.sort_unstable();
    Ok((total, absent))
}

/// Store the plan, the staged input and the chunks, then release the first phase, or, when the
/// file may be held (`may_hold`: the tenant's active users) or is scheduled (`at`), preview it
/// first: hold it if its changes pass the tenant's thresholds, else schedule it.
#[allow(clippy::too_many_arguments)]
async fn write_job(
    svc: &Services,
    job: &Job,
    tenant: &Tenant,
    mode: Mode,
    ingested: &Ingester<'_, Spill>,
    source: &Path,
    bundle: bool,
    may_hold: Option<u64>,
    at: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<()> {
    let id = &job.id;
    let spill = &ingested.sink;
    let chunk_size = chunk_rows(tenant.chunk_size.unwrap_or(svc.config.chunk_size), &spill.counts);
    let phase_chunks: [u32; PHASES] = std::array::from_fn(|i| spill.counts[i].div_ceil(chunk_size as u64) as u32);
    let total_rows = ingested.rows;
    let invalid = spill.outcome_count;
    // The plan is stored before any chunk exists, so whoever completes the last chunk knows it.
    svc.jobs.set_plan(id, &Plan { phase_chunks, total_rows, mode: bundle.then_some(mode) }).await?;

    // The bytes read, not the key they came from: the file may be replaced under the same name.
    svc.store.put_file(&keys::staged_source(id), source, "application/octet-stream").await?;
    let staged = StagedInput {
        warnings: ingested.warnings.clone(),
        ingested_at: chrono::Utc::now().to_rfc3339(),
        source: Some(keys::staged_source(id)),
        bundle: bundle.then(|| keys::staged_bundle(id)),
    };
    svc.store.put(&keys::staged_input(id), to_json(&staged)?, "application/json").await?;
    match spill.outcomes() {
        Stored::Memory(lines) => svc.store.put(&keys::ingest_outcomes(id), lines.to_vec(), "application/x-ndjson").await?,
        Stored::File(path) => svc.store.put_file(&keys::ingest_outcomes(id), path, "application/x-ndjson").await?,
    }

    // Later phases wait in staged/ until the phase before them completes; the first non-empty
    // phase goes straight to chunks/ (written last, once everything it may need exists). A file
    // that may be held keeps every phase staged until it is previewed (and approved).
    let previewed = may_hold.is_some() || at.is_some();
    let first = (0..PHASES).find(|&i| phase_chunks[i] > 0).filter(|_| !previewed);
    let chunks = |phase: usize| spill.chunks(phase, chunk_size, &ingested.validator).map_err(|e| Error::local("reading operations", e));
    for phase in (0..PHASES).filter(|p| Some(*p) != first && phase_chunks[*p] > 0) {
        upload_chunks(svc, |seq| keys::staged_chunk(id, phase, seq), chunks(phase)?).await?;
    }
    if previewed {
        let dir = source.parent().unwrap_or(Path::new("."));
        let preview = crate::holds::preview(svc, job, tenant, spill, &ingested.validator, chunk_size, dir).await?;
        let ingest_outcomes = match spill.outcomes() {
            Stored::File(path) => path.to_path_buf(),
            Stored::Memory(lines) => {
                let path = dir.join("ingest-outcomes.jsonl");
                std::fs::write(&path, lines).map_err(|e| Error::local("writing outcomes", e))?;
                path
            }
        };
        // A scheduled file that passes the holds is held: approving it applies it at once.
        if let Some(why) = may_hold.and_then(|active| crate::holds::reason(&tenant.holds, active, &preview.counts)) {
            return crate::holds::hold(svc, job, tenant, &why, source, vec![ingest_outcomes], preview, dir).await;
        }
        if let Some(at) = at {
            return crate::schedule::schedule(svc, job, tenant, at, source, vec![ingest_outcomes], preview, dir).await;
        }
        info!(job = %id, would = %preview.counts.words(), "previewed; within the tenant's holds");
    }
    // Told before the first chunk exists: a small file's result email followed within seconds
    // and often arrived first ("processing started" after "all rows applied").
    tell_started(svc, job, tenant, mode, total_rows, invalid as usize).await;
    if previewed {
        release_first_phase(svc, id, &phase_chunks).await?;
    } else if let Some(phase) = first {
        upload_chunks(svc, |seq| keys::chunk(id, phase, seq), chunks(phase)?).await?;
    } else {
        // Every row failed validation: nothing to apply, straight to finalize.
        svc.store.put_if_absent(&keys::done(id), b"{}".to_vec(), "application/json").await?;
    }
    svc.jobs.transition(id, JobState::Received, JobState::Applying, None).await?;
    info!(job = %id, rows = total_rows, invalid, chunks = ?phase_chunks, "ingest planned");
    Ok(())
}

/// The "processing started" email, once per job (claimed). A courtesy: a failure to send it is
/// logged and the job goes on, since failing ingest here would reject a good file (or, retried
/// within the claim's lease, skip the email anyway).
async fn tell_started(svc: &Services, job: &Job, tenant: &Tenant, mode: Mode, rows: u32, invalid: usize) {
    if !tenant.notify_started {
        return;
    }
    let sent = async {
        if svc.jobs.claim_email(&job.id, EmailKind::Started, svc.config.lease).await? {
            report::started_email(svc, job, tenant, mode, rows, invalid).await?;
        }
        Ok::<_, Error>(())
    };
    if let Err(e) = sent.await {
        let error = crate::address::mask_addresses(&e.to_string()).into_owned();
        warn!(job = %job.id, error, "the processing-started email was not sent; the job goes on");
    }
}

/// Release a planned job whose chunks all wait in staged/: its first non-empty phase to chunks/
/// (apply starts), or the done marker when there is nothing to apply. Safe to repeat: a chunk
/// applied twice is recorded once.
pub async fn release_first_phase(svc: &Services, id: &str, plan: &[u32; PHASES]) -> Result<()> {
    match (0..PHASES).find(|&p| plan[p] > 0) {
        Some(phase) => {
            for seq in 0..plan[phase] {
                svc.store.copy(&keys::staged_chunk(id, phase, seq), &keys::chunk(id, phase, seq)).await?;
            }
        }
        None => {
            svc.store.put_if_absent(&keys::done(id), b"{}".to_vec(), "application/json").await?;
        }
    }
    Ok(())
}

/// Chunk uploads in flight at once: a million-row file has 2,000 chunks, and one PUT after another
/// would make ingest wait on S3 latency 2,000 times. Bodies are cut from the spill file as uploads
/// start, so at most this many exist at once.
const UPLOADS_IN_FLIGHT: usize = 16;

async fn upload_chunks(svc: &Services, key: impl Fn(u32) -> String + Send, bodies: Chunks<'_>) -> Result<()> {
    use futures::{StreamExt, TryStreamExt};
    // Boxed: an unboxed `.map(|..| async move ..)` stream is not provably Send for every lifetime
    // (rustc "FnOnce is not general enough"), and the runner spawns ingest on tokio.
    type Upload<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>>;
    let uploads = bodies.enumerate().map(|(seq, body)| -> Upload<'_> {
        let key = key(seq as u32);
        Box::pin(async move {
            let body = body.map_err(|e| Error::local("reading operations", e))?;
            svc.store.put(&key, body, "application/x-ndjson").await
        })
    });
    futures::stream::iter(uploads).buffer_unordered(UPLOADS_IN_FLIGHT).try_collect::<Vec<()>>().await.map(drop)
}

/// The most chunks one phase of a job is cut into. Each phase's counted chunks are a set on the
/// job's item (`JobStore::record_chunk`), written whole by every count: bounded, the item stays a
/// few kilobytes (DynamoDB takes 400 KB) and a count a few write units, whatever the file.
pub const MAX_CHUNKS_PER_PHASE: u64 = 1000;

/// Rows per chunk: the tenant's (or the default) chunk size, at most `config::MAX_CHUNK_SIZE` (a
/// tenant stored without `tenant put`'s check is held to it too), raised for a file whose largest
/// phase would otherwise be cut into more than `MAX_CHUNKS_PER_PHASE` chunks.
pub fn chunk_rows(configured: usize, phase_rows: &[u64; PHASES]) -> usize {
    let largest = phase_rows.iter().copied().max().unwrap_or(0);
    let floor = usize::try_from(largest.div_ceil(MAX_CHUNKS_PER_PHASE)).unwrap_or(usize::MAX);
    configured.min(crate::config::MAX_CHUNK_SIZE).max(floor).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `validate` of a file whose every row fails (the wrong tenant's roles) counts them all and
    /// keeps the first `MAX_PROBLEMS`, whatever order they come in (duplicates come last).
    #[test]
    fn a_check_keeps_the_first_failures_and_counts_the_rest() {
        let mut checked = Checked::new("CSV".into(), 30_002, 0, Vec::new());
        for row in (2..30_002u32).rev() {
            checked.add(Outcome::failure(row, None, "unknown role"), |r| format!("row {r}"));
        }
        checked.add(Outcome::skipped(30_002, "empty row"), |r| format!("row {r}"));
        checked.keep_first();
        assert_eq!((checked.failed, checked.skipped, checked.problems.len()), (30_000, 1, MAX_PROBLEMS));
        assert_eq!((checked.problems[0].0.as_str(), checked.problems[MAX_PROBLEMS - 1].1.row), ("row 2", 10_001));
    }

    #[test]
    fn a_phase_is_cut_into_at_most_a_thousand_chunks_whatever_the_chunk_size() {
        // The default stands for files up to 2 million rows a phase.
        assert_eq!(chunk_rows(2000, &[0, 1_000_000, 0, 0]), 2000);
        assert_eq!(chunk_rows(2000, &[0, 2_000_000, 0, 0]), 2000);
        // A tiny chunk size (a tenant's setting) on a big file: chunks grow instead.
        for (size, rows) in [(1, 1_000_000u64), (1, 1_000_001), (2000, 21_000_000), (7, 999_999), (0, 0), (0, 5)] {
            let rows_each = chunk_rows(size, &[3, rows, 0, 17]);
            assert!(rows_each >= size.max(1), "{size} {rows}: {rows_each}");
            assert!(rows.div_ceil(rows_each as u64) <= MAX_CHUNKS_PER_PHASE, "{size} {rows}: {rows_each}");
        }
        assert_eq!(chunk_rows(1, &[0, 1_000_001, 0, 0]), 1001);
        // A chunk size past what an invocation holds (a tenant item written by hand): the maximum.
        assert_eq!(chunk_rows(usize::MAX, &[0, 20_000, 0, 0]), crate::config::MAX_CHUNK_SIZE);
        assert_eq!(chunk_rows(1_000_000, &[0, 6_000_000, 0, 0]), 6000, "only a phase past 5 million rows has larger chunks");
    }

    /// A small file's result email followed "processing started" within seconds and often
    /// arrived first: the started email now goes before the first chunk exists. And it is a
    /// courtesy: SES failing to send it does not fail ingest (which rejected or retried nothing).
    #[tokio::test]
    async fn the_started_email_goes_before_any_chunk_exists_and_its_failure_stops_nothing() {
        use crate::ports::Mailer;
        use std::sync::{Arc, Mutex};
        struct Watching {
            inner: Arc<dyn Mailer>,
            store: Arc<dyn crate::ports::ObjectStore>,
            chunks_at_send: Mutex<Vec<usize>>,
        }
        #[async_trait::async_trait]
        impl Mailer for Watching {
            async fn send_raw(&self, from: &str, to: &[String], mime: Vec<u8>) -> Result<()> {
                let chunks = self.store.list(keys::CHUNKS).await?.len();
                self.inner.send_raw(from, to, mime).await?;
                self.chunks_at_send.lock().unwrap().push(chunks);
                Ok(())
            }
        }
        let mut kit = crate::testkit::Kit::new(|t| t.notify_started = true).await;
        let watch = Arc::new(Watching { inner: kit.svc.mailer.clone(), store: kit.svc.store.clone(), chunks_at_send: Mutex::default() });
        kit.svc.mailer = watch.clone();
        let job = kit.run("small.csv", "Email\nann@acme.example.com\n").await;
        assert_eq!(job.state, JobState::Completed);
        let sent = watch.chunks_at_send.lock().unwrap().clone();
        assert_eq!(sent.len(), 2, "started, then the result");
        assert_eq!(sent[0], 0, "no chunk existed when the started email went");
        assert!(sent[1] > 0);
        let subjects: Vec<String> = kit
            .mem
            .mailer
            .sent()
            .iter()
            .map(|(_, _, m)| mail_parser::MessageParser::default().parse(m).unwrap().subject().unwrap_or_default().to_string())
            .collect();
        assert!(subjects[0].contains("received, processing 1 row"), "{subjects:?}");
        assert!(!subjects[0].contains("1 rows"), "{subjects:?}");

        // SES throttles the started email: the file is applied and answered all the same.
        *kit.mem.mailer.throttle_next.lock().unwrap() = 1;
        let job = kit.run("throttled.csv", "Email\nbob@acme.example.com\n").await;
        assert_eq!((job.state, job.succeeded), (JobState::Completed, 1));
        assert_eq!(kit.mem.mailer.sent().len(), 3, "only the result email of the second file");
        // SES refuses it for good: the same, and the file is not rejected.
        *kit.mem.mailer.reject_next.lock().unwrap() = 1;
        let job = kit.run("refused.csv", "Email\ncy@acme.example.com\n").await;
        assert_eq!((job.state, job.succeeded), (JobState::Completed, 1));
    }

    /// A tenant set to chunks of one row drops 2,003 users: cut into 668 chunks of 3 (not 2,003
    /// of 1), every row applied and the job complete.
    #[tokio::test]
    async fn a_chunk_size_of_one_on_a_large_file_still_cuts_at_most_a_thousand_chunks() {
        let mut kit = crate::testkit::Kit::new(|t| t.chunk_size = Some(1)).await;
        let mut file = String::from("Email\n");
        for i in 0..2003 {
            file += &format!("u{i}@acme.example.com\n");
        }
        let job = kit.run("many.csv", file).await;
        assert_eq!((job.state, job.succeeded, job.failed), (JobState::Completed, 2003, 0), "{job:?}");
        let plan = job.phase_chunks.expect("planned");
        assert_eq!(plan.iter().sum::<u32>(), 668, "{plan:?}");
        assert_eq!(job.phase_done, plan);
        assert_eq!(kit.svc.store.list(keys::CHUNKS).await.unwrap().iter().filter(|k| k.contains(&job.id)).count(), 668);
    }

    fn obj(seq: &str) -> ObjectRef {
        ObjectRef {
            bucket: "b".into(),
            key: "incoming/acme/a.csv".into(),
            size: None,
            version_id: None,
            sequencer: Some(seq.into()),
            etag: None,
            event_time: None,
        }
    }

    #[test]
    fn a_file_that_would_exhaust_the_functions_memory_is_refused_with_the_limit_for_its_kind() {
        // 128 MB function: ~57 MB of CSV, ~14 MB of spreadsheet.
        assert_eq!(
            too_big_to_read(false, 60_000_000, 128).unwrap(),
            "the file is 60 MB; as a CSV or TSV file this service reads up to 57 MB at once. Split it into smaller files"
        );
        assert_eq!(
            too_big_to_read(true, 15_000_000, 128).unwrap(),
            "the file is 15 MB; as a spreadsheet this service reads up to 14 MB at once. Split it into smaller files, or save it as CSV (up to 57 MB)"
        );
        assert_eq!(too_big_to_read(false, 150_000_000, 3008), None);
        assert_eq!(too_big_to_read(true, 150_000_000, 3008), None);
    }

    #[test]
    fn scratch_left_by_a_crashed_ingest_is_swept_but_a_running_ones_is_not() {
        let base = tempfile::tempdir().unwrap();
        let (old, young, other) =
            (base.path().join("rosterdrop-ingest-old"), base.path().join("rosterdrop-ingest-young"), base.path().join("keep-me"));
        for d in [&old, &young, &other] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("source"), b"x").unwrap();
        }
        let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for d in [&old, &other] {
            std::fs::File::open(d).unwrap().set_modified(an_hour_ago).unwrap();
        }
        sweep_stale_scratch(base.path(), STALE_SCRATCH);
        assert!(!old.exists() && young.exists() && other.exists());
    }

    #[test]
    fn redelivered_event_maps_to_the_same_job_and_a_new_upload_to_a_new_one() {
        assert_eq!(job_id(&obj("01")), job_id(&obj("01")));
        assert_ne!(job_id(&obj("01")), job_id(&obj("02")));
        // Versioned: the version decides, whatever the sequencer (LocalStack repeats one).
        let v = |version: &str, seq: &str| ObjectRef { version_id: Some(version.into()), ..obj(seq) };
        assert_eq!(job_id(&v("a", "01")), job_id(&v("a", "01")));
        assert_ne!(job_id(&v("a", "01")), job_id(&v("b", "01")), "two uploads, one sequencer");
        assert_eq!(job_id(&v("a", "01")), job_id(&v("a", "02")), "one upload whatever the sequencer says");
    }
}
