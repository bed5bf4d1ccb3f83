//! Stage 3: on `done/<job>.json`, merge outcomes in input order, write the result files and
//! `summary.json`, email the tenant's admins once, mark the job COMPLETED.
//!
//! Memory does not grow with the file: the staged source and the outcome files are downloaded to
//! scratch disk, the result files are written there row by row (`build`), and only bounded
//! digests (`digest`) are kept for the email. A failure a retry cannot fix (our own data
//! unreadable, a writer refusing) ends the job FAILED with a plain email instead of being retried
//! into the dead-letter queue.

pub mod build;
pub mod digest;
pub mod merge;
pub mod write;

pub use build::{NOT_APPLIED, NOT_CONFIRMED};

use crate::error::{Error, Result};
use crate::event::ObjectRef;
use crate::keys;
use crate::model::EmailKind;
use crate::model::{Job, JobState};
use crate::report::{self, Attachment, Summary, esc};
use crate::services::Services;
use crate::wire::StagedInput;
use build::Built;
#[cfg(test)]
use build::BuiltFiles;
use digest::Digest;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::{error, info};

pub async fn handle(svc: &Services, obj: &ObjectRef) -> Result<()> {
    let Some(job_id) = keys::parse_done(&obj.key) else {
        info!(key = %obj.key, "not a done marker; ignored");
        return Ok(());
    };
    let Some(job) = svc.jobs.get(&job_id).await? else {
        // Our own marker for no job: nothing a retry can fix, nobody to tell.
        error!(job = %job_id, "done marker of an unknown job; ignored");
        return Ok(());
    };
    // A job apply stopped (FAILED) hands its result email over with the done marker.
    let stopped = job.state == JobState::Failed && !svc.jobs.email_sent(&job_id, EmailKind::Result).await?;
    if job.state.is_final() && !stopped {
        info!(job = %job_id, state = job.state.as_str(), "job already finalized (duplicate or late event)");
        return Ok(());
    }
    match finalize_job(svc, &job, stopped).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_retryable() => Err(e),
        // Retrying cannot fix it: record it, tell the admins, and return so Lambda does not retry.
        Err(e) => fail_job(svc, &job, &e).await,
    }
}

/// Merge outcomes, write the result files and summary, email the admins once, record the final
/// state. `stopped`: the job is FAILED (see `monitor::fail_stuck_jobs`) and rows without an
/// outcome were not applied. `Ok(false)`: left open, another invocation holds the email claim
/// (nothing was rebuilt).
pub async fn finalize_job(svc: &Services, job: &Job, stopped: bool) -> Result<bool> {
    let job_id = job.id.clone();
    // A tenant removed mid-job (or held, or scheduled) is told through the default admins.
    let tenant = report::tenant_to_tell(svc, &job.tenant).await?;
    // The claim first: an invocation that cannot send does not rebuild what another is sending.
    let claimed = match &tenant {
        Some(_) => {
            if !svc.jobs.claim_email(&job_id, EmailKind::Result, svc.config.lease).await? {
                if svc.jobs.email_sent(&job_id, EmailKind::Result).await? {
                    // Sent by an invocation that ended before recording the final state: its
                    // summary has the counts.
                    let key = format!("{}summary.json", keys::results_prefix(&job.tenant, &job_id));
                    let counts = svc
                        .store
                        .get(&key)
                        .await?
                        .and_then(|b| serde_json::from_slice::<Summary>(&b).ok())
                        .map(|s| s.counts)
                        .unwrap_or_default();
                    let state = if stopped { JobState::Failed } else { JobState::Completed };
                    svc.jobs.finish(&job_id, state, counts.success, counts.failure, counts.skipped, None).await?;
                    return Ok(true);
                }
                // Another invocation holds the claim and has not sent yet (or crashed before it
                // could). The job stays open: its invocation finishes it, or the scheduled sweep
                // takes the claim over once it is stale (`monitor::finish_unsent_jobs`).
                info!(job = %job_id, "result email claimed by another invocation; leaving the job open");
                return Ok(false);
            }
            true
        }
        None => false,
    };

    let scratch = tempfile::Builder::new().prefix("rosterdrop-finalize-").tempdir().map_err(|e| Error::local("scratch directory", e))?;
    let (source, staged, outcome_files) = download_inputs(svc, &job_id, scratch.path()).await?;
    // A dry run writes nothing: its stopped rows were not applied, whatever part they were in.
    let dry = job.mode == Some(crate::model::Mode::Validate);
    let unconfirmed = match (stopped, dry) {
        (false, _) => None,
        (true, true) => Some(build::Unconfirmed::new()),
        (true, false) => Some(unconfirmed_rows(svc, &job_id).await?),
    };
    let warnings = staged.warnings;
    let dir = scratch.path().to_path_buf();
    let file_name = job.file_name.clone();
    let id_column = tenant.as_ref().and_then(|t| t.external_id_column.clone());
    let mut files = tokio::task::spawn_blocking(move || {
        build::build(&source, &outcome_files, &dir, &file_name, id_column.as_deref(), unconfirmed.as_ref())
    })
    .await
    // A panic in the builder is no scratch-disk trouble: retrying rebuilds the same panic.
    .map_err(|e| {
        if e.is_panic() { Error::Build { what: "the result files", message: e.to_string() } } else { Error::local("building results", e) }
    })??;
    if let (Some(key), Some(failed)) = (&staged.bundle, &files.failed) {
        let zip = scratch.path().join("bundle.zip");
        if svc.store.download(key, None, &zip).await?.is_some() {
            let stem = failed_records_stem(&job.file_name);
            let (failed, dir) = (failed.clone(), scratch.path().to_path_buf());
            let built = tokio::task::spawn_blocking(move || failed_records(&zip, &failed, &dir, &stem))
                .await
                .map_err(|e| Error::local("building the failed-records bundle", e))?;
            match built {
                Ok(b) => files.failed = Some(b),
                // Our own staged copy unreadable: the failed rows stay a workbook, still droppable.
                Err(e) => error!(job = %job_id, error = %e, "failed-records bundle not built; the failed rows go as a workbook"),
            }
        }
    }

    let final_state = if stopped { JobState::Failed } else { JobState::Completed };
    let mut summary = summary_of(job, final_state, &files.digest, warnings);
    if staged.bundle.is_some() {
        summary.format = Some("OneRoster".into()); // not the workbook it was read as
    }
    let prefix = keys::results_prefix(&job.tenant, &job_id);
    let mut uploaded = Vec::new();
    let files_and_slots =
        [(Some(&files.result), 0), (files.failed.as_ref(), 1), (files.disabled.as_ref(), 2), (files.problems.as_ref(), 3)];
    for (built, slot) in files_and_slots {
        let Some(built) = built else { continue };
        let key = format!("{prefix}{}", built.name);
        svc.store.put_file(&key, &built.path, built.content_type).await?;
        match slot {
            0 => summary.result_key = Some(key.clone()),
            1 => summary.failed_rows_key = Some(key.clone()),
            2 => summary.disabled_users_key = Some(key.clone()),
            _ => summary.problems_key = Some(key.clone()),
        }
        uploaded.push((built.clone(), key));
    }
    svc.store.put(&format!("{prefix}summary.json"), report::pretty(&summary)?, "application/json").await?;

    let mut note = None;
    match tenant {
        Some(tenant) if claimed => {
            let from = report::sender(svc, &tenant);
            let (attachments, links) = attach_or_link(svc, &uploaded).await?;
            let (subject, text, html) = result_email(&tenant, &summary, &files.digest, &links);
            let sent = report::send_to(svc, &from, &tenant.admin_emails, &subject, &text, &html, &attachments).await;
            // A send that may succeed again frees its claim: the retry (or the sweep) sends at once,
            // not a lease later. One SES refuses for good keeps it (`report::unclaim_unsent`).
            match report::unclaim_unsent(svc, &job_id, EmailKind::Result, sent).await {
                Ok(()) => {
                    svc.jobs.mark_email_sent(&job_id, EmailKind::Result).await?;
                    info!(job = %job_id, recipients = tenant.admin_emails.len(), "result email sent");
                }
                // Refused for good (a sandboxed account and an unverified admin, an address SES
                // will not take): every row has its outcome and the result files are written, so
                // the job ends in its own state, its message saying where the results are. It was
                // FAILED with "the result files could not be written", which was untrue. (No
                // address to send to at all stays FAILED: `report::recipients`.)
                Err(e @ Error::Aws { service: "sesv2", .. }) => {
                    error!(job = %job_id, error = %e, "SES refused the result email for good; the job ends without it");
                    // After what the job's message says already (why it stopped, who approved it);
                    // with more than 25 admins, a group before the refused one may have it.
                    let refused = format!(
                        "the result email could not be sent to every admin ({}); the result files are in {prefix}",
                        crate::address::mask_addresses(&e.to_string())
                    );
                    note = Some(match job.message.as_deref().filter(|m| !m.is_empty()) {
                        Some(before) => format!("{before}; {refused}"),
                        None => refused,
                    });
                }
                Err(e) => return Err(e),
            }
        }
        _ => error!(job = %job_id, tenant = %job.tenant, "tenant removed before finalize and no default admins; no email sent"),
    }
    let c = &summary.counts;
    svc.jobs.finish(&job_id, final_state, c.success, c.failure, c.skipped, note.as_deref()).await?;
    info!(job = %job_id, rows = summary.rows, succeeded = c.success, failed = c.failure, skipped = c.skipped, "job completed");
    Ok(true)
}

/// The rows of a stopped job's parts that were released to apply but never recorded: each was
/// running, or about to, when the job stopped (a part that failed all its retries, others running
/// beside it), and its writes may have gone through; the part's outcomes, before-states and count
/// are written only once every row of it ran. A part that cannot be read (the stop's own cause,
/// perhaps) at all names no rows: apply refuses a part it cannot read before any write.
async fn unconfirmed_rows(svc: &Services, job_id: &str) -> Result<build::Unconfirmed> {
    #[derive(serde::Deserialize)]
    struct Row {
        row: u32,
    }
    let recorded: std::collections::HashSet<String> = svc.store.list(&keys::outcomes_prefix(job_id)).await?.into_iter().collect();
    let mut rows = build::Unconfirmed::new();
    for key in svc.store.list(&format!("{}{job_id}/", keys::CHUNKS)).await? {
        let Some((_, phase, seq)) = keys::parse_chunk(&key) else { continue };
        if recorded.contains(&keys::chunk_outcomes(job_id, phase, seq)) {
            continue;
        }
        let Some(body) = svc.store.get(&key).await? else { continue };
        rows.extend(body.split(|b| *b == b'\n').filter_map(|line| serde_json::from_slice::<Row>(line).ok()).map(|r| r.row));
    }
    Ok(rows)
}

/// The staged source and every outcome file, on local disk: outcome files of one phase are
/// appended in key order into one file (one sorted run), ingest's stay apart.
async fn download_inputs(svc: &Services, job_id: &str, dir: &Path) -> Result<(PathBuf, StagedInput, Vec<PathBuf>)> {
    let staged_bytes =
        svc.store.get(&keys::staged_input(job_id)).await?.ok_or_else(|| Error::corrupt(format!("job {job_id}"), "staged input missing"))?;
    let staged: StagedInput = serde_json::from_slice(&staged_bytes).map_err(|e| Error::corrupt("staged input", e))?;
    drop(staged_bytes);
    let source = dir.join("source");
    // Every job since the staged source exists has one; an older job's inline tables are not
    // read (there are no deployments from before it).
    let key = staged.source.clone().ok_or_else(|| Error::corrupt("staged input", "no staged source"))?;
    svc.store.download(&key, None, &source).await?.ok_or_else(|| Error::corrupt(key.clone(), "staged source missing"))?;
    let mut groups: Vec<(String, PathBuf)> = Vec::new();
    let tmp = dir.join("download");
    for key in svc.store.list(&keys::outcomes_prefix(job_id)).await? {
        let name = key.rsplit('/').next().unwrap_or_default();
        let group = name.split_once('-').map_or(name, |(p, _)| p).to_string();
        let path = match groups.iter().find(|(g, _)| *g == group) {
            Some((_, p)) => p.clone(),
            None => {
                let p = dir.join(format!("outcomes-{}", groups.len()));
                groups.push((group, p.clone()));
                p
            }
        };
        if svc.store.download(&key, None, &tmp).await?.is_none() {
            continue;
        }
        let append = || -> std::io::Result<()> {
            let mut out = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
            std::io::copy(&mut std::fs::File::open(&tmp)?, &mut out)?;
            Ok(())
        };
        append().map_err(|e| Error::local("outcome files", e))?;
    }
    Ok((source, staged, groups.into_iter().map(|(_, p)| p).collect()))
}

/// A OneRoster job's failed rows as a bundle (`oneroster::failed_bundle`), cut from the bundle
/// as dropped: `<name>-failed-records.zip`.
///
/// A failed-records bundle's own failures are named as the first's were: the suffix comes off
/// before the cut (cut first, a long name lost part of the suffix and grew at each drop).
fn failed_records_stem(file_name: &str) -> String {
    let name = Path::new(file_name).file_stem().and_then(|s| s.to_str()).unwrap_or("roster");
    build::clean_stem(name.trim_end_matches("-failed-records"))
}

fn failed_records(zip: &Path, failed_rows: &Built, dir: &Path, stem: &str) -> std::result::Result<Built, String> {
    use crate::ingest::{decode, oneroster};
    let mut file = std::io::BufReader::new(std::fs::File::open(zip).map_err(|e| e.to_string())?);
    let bundle = oneroster::read_zip(&mut file, decode::archive::MAX_ARCHIVE_BYTES)
        .map_err(|e| e.to_string())?
        .ok_or("the staged bundle is not a zip of files")?;
    let rows = decode::decode_all(&std::fs::read(&failed_rows.path).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let bytes = oneroster::failed_bundle(&bundle, &rows)?;
    let name = format!("{stem}-failed-records.zip");
    let path = dir.join(&name);
    std::fs::write(&path, bytes).map_err(|e| e.to_string())?;
    Ok(Built { name, path, content_type: "application/zip" })
}

fn summary_of(job: &Job, state: JobState, d: &Digest, mut warnings: Vec<String>) -> Summary {
    let mut summary = Summary::new(job, state);
    summary.format = d.format.clone();
    warnings.extend(d.warnings.iter().cloned());
    if d.more_warnings > 0 {
        warnings.push(format!("and {} more warnings", d.more_warnings));
    }
    summary.warnings = warnings;
    summary.rows = d.rows;
    summary.counts = d.counts.clone();
    summary.by_action = d.by_action.clone();
    summary.disabled_not_in_file = d.disabled;
    summary.created_users = d
        .created_ids
        .iter()
        .map(|(row, id)| {
            let (sheet, row) = d.place(*row);
            crate::report::CreatedUser { row, sheet, user_id: id.clone() }
        })
        .collect();
    summary.created_users_not_listed = d.more_created_ids;
    summary.problems = d.problems();
    summary.rows_of_other_problems = d.rows_of_other_problems;
    summary
}

/// Attachments while together they stay within the configured size (far below SES's 40 MB
/// message once base64-encoded); past it, a link valid for the configured time.
pub(crate) async fn attach_or_link(svc: &Services, files: &[(Built, String)]) -> Result<(Vec<Attachment>, Vec<(String, String)>)> {
    let (mut attachments, mut links, mut total) = (Vec::new(), Vec::new(), 0usize);
    for (built, key) in files {
        let size = std::fs::metadata(&built.path).map_err(|e| Error::local("result file", e))?.len() as usize;
        if total + size <= svc.config.max_attachment_bytes {
            total += size;
            let bytes = std::fs::read(&built.path).map_err(|e| Error::local("result file", e))?;
            attachments.push(Attachment { name: built.name.clone(), content_type: built.content_type, bytes });
        } else {
            links.push((built.name.clone(), svc.store.presign_get(key, Duration::from_secs(svc.config.link_ttl_secs)).await?));
        }
    }
    Ok((attachments, links))
}

/// A job that cannot be finished, whatever the retries: FAILED with the reason, `summary.json`
/// saying so, and one plain email to the admins saying what happened and what was applied.
pub async fn fail_job(svc: &Services, job: &Job, cause: &Error) -> Result<()> {
    error!(job = %job.id, error = %cause, "finalize cannot finish this job; marking it FAILED");
    let moved = svc.jobs.transition(&job.id, JobState::Applying, JobState::Failed, Some(&unfinished(cause, false))).await?;
    if !moved && job.state != JobState::Failed {
        return Ok(()); // another invocation got there, and tells
    }
    // A job apply stopped (FAILED already) whose result files cannot be written: the plain email,
    // saying rows were not applied only when a chunk was never counted.
    tell_unfinished(svc, job, cause, !moved && job.cut_short()).await
}

/// Why a job has no result files: its state's message and its summary's reason.
fn unfinished(cause: &Error, stopped: bool) -> String {
    let stopped = if stopped { "stopped after repeated failures, and " } else { "" };
    format!("{stopped}the result files could not be written ({cause})")
}

/// A FAILED job whose result files cannot be written (`fail_job`; with `stopped`, the deadline
/// sweep's last try, rows of chunks never applied among them): `summary.json` saying why, and one
/// plain email to the admins. Nothing when the result email went out: it said everything (finalize
/// can fail after sending it, recording the final state).
pub async fn tell_unfinished(svc: &Services, job: &Job, cause: &Error, stopped: bool) -> Result<()> {
    if svc.jobs.email_sent(&job.id, EmailKind::Result).await? {
        return svc.jobs.close(&job.id).await;
    }
    let reason = unfinished(cause, stopped);
    // A summary stored before the failure keeps what it found (the result files' keys, the counts).
    let key = format!("{}summary.json", keys::results_prefix(&job.tenant, &job.id));
    let stored = svc.store.get(&key).await?.and_then(|b| serde_json::from_slice::<Summary>(&b).ok());
    let mut summary = stored.unwrap_or_else(|| Summary::new(job, JobState::Failed));
    summary.state = JobState::Failed;
    summary.reason = Some(reason.clone());
    svc.store.put(&key, report::pretty(&summary)?, "application/json").await?;
    let Some(tenant) = report::tenant_to_tell(svc, &job.tenant).await? else {
        error!(job = %job.id, tenant = %job.tenant, "tenant removed; nobody to tell that the job failed");
        return svc.jobs.close(&job.id).await;
    };
    if !svc.jobs.claim_email(&job.id, EmailKind::Failure, svc.config.lease).await? {
        // Sent (then only the close may be missing), or another invocation is sending it.
        if svc.jobs.email_sent(&job.id, EmailKind::Failure).await? {
            svc.jobs.close(&job.id).await?;
        }
        return Ok(());
    }
    let file = crate::wording::file_label(&job.file_name);
    let subject = format!("[rosterdrop] {}: {file} could not be finished", tenant.id);
    let text = if stopped {
        format!(
            "Your file {file} was stopped after repeated failures: some of its rows were applied, others were not, \
             and the list of which could not be written: {cause}.\n\n\
             Upload the file again: rows already applied are found unchanged and the others are applied. \
             Uploading it in validate mode first (incoming/{tenant}/validate/) shows each row's state without changing anything. \
             Support can look up job {id}.\n\nJob: {id}\n",
            id = job.id,
            tenant = tenant.id
        )
    } else {
        format!(
            "Your file {file} was processed, but its result files could not be written: {cause}.\n\n\
             Each row was applied or refused on its own as usual, so the changes the file asked for may be in place; \
             what could not be produced is the list of what happened to each row. Support can look up job {id}; \
             uploading the same file again in validate mode (incoming/{tenant}/validate/) shows each row's state without changing anything.\n\nJob: {id}\n",
            id = job.id,
            tenant = tenant.id
        )
    };
    let html = format!("<p>{}</p>", esc(&text).replace("\n\n", "</p><p>"));
    let from = report::sender(svc, &tenant);
    let sent = report::send_to(svc, &from, &tenant.admin_emails, &subject, &text, &html, &[]).await;
    if let Err(e) = &sent
        && !e.is_retryable()
    {
        // SES refuses it for good (a sandbox, a bad sender): nobody can be told; trying every
        // minute would keep the job among the open jobs for ever, in the sweeps' way.
        error!(job = %job.id, error = %e, "the failure email was refused; the job is closed untold");
        return svc.jobs.close(&job.id).await;
    }
    // A send that may succeed again frees its claim and the job stays open: the sweep tries again
    // (`monitor::finish_unsent_jobs`).
    report::unclaim_unsent(svc, &job.id, EmailKind::Failure, sent).await?;
    svc.jobs.mark_email_sent(&job.id, EmailKind::Failure).await?;
    svc.jobs.close(&job.id).await
}

/// The result email: a headline that says the outcome in words, the counts as a bar, the
/// problems grouped by kind (most frequent first, each with its count, its fix and its rows), the
/// changes, warnings and files; HTML in the tenant's branding, and a text part that reads alone.
pub fn result_email(tenant: &crate::model::Tenant, s: &Summary, d: &Digest, links: &[(String, String)]) -> (String, String, String) {
    use crate::layout::{self, Segment, thousands};
    let c = &s.counts;
    let dry = s.mode == "validate";
    let stopped = s.state == JobState::Failed;
    let (not_applied, not_confirmed) = (u64::from(d.not_applied), u64::from(d.not_confirmed));
    let (ok, bad, skipped) = (u64::from(c.success), u64::from(c.failure) - not_applied - not_confirmed, u64::from(c.skipped));
    let tid = &tenant.id;
    // Rows of parts never recorded when the job stopped: neither applied nor not, for sure.
    let unsure = match (not_applied, not_confirmed) {
        (_, 0) => format!("{} not applied", thousands(not_applied)),
        (0, n) => format!("{} not confirmed", thousands(n)),
        (a, n) => format!("{} not applied, {} not confirmed", thousands(a), thousands(n)),
    };
    let file = crate::wording::file_label(&s.file_name);
    let subject = if stopped {
        format!("[rosterdrop] {tid}: {file} FAILED: {} applied, {unsure}, {} failed", thousands(ok), thousands(bad))
    } else if dry {
        format!(
            "[rosterdrop] {tid}: {file} validated, nothing applied: {} would succeed, {} would fail",
            thousands(ok),
            thousands(c.failure.into())
        )
    } else {
        format!(
            "[rosterdrop] {tid}: {file}: {}, {} failed, {} skipped",
            c.succeeded(),
            thousands(c.failure.into()),
            thousands(c.skipped.into())
        )
    };
    let (applied, applied_word) = if dry { ("would apply", "would apply") } else { ("applied", "applied") };
    let headline = if stopped {
        format!("Stopped: {} applied, {unsure}, {} need fixing", thousands(ok), thousands(bad))
    } else if bad == 0 && skipped == 0 && ok > 0 {
        format!("All {} {applied_word}", layout::rows(ok))
    } else if bad == 0 {
        format!("{} {applied}, {} skipped", thousands(ok), thousands(skipped))
    } else if skipped == 0 {
        format!("{} {applied}, {} need fixing", thousands(ok), thousands(bad))
    } else {
        format!("{} {applied}, {} need fixing, {} skipped", thousands(ok), thousands(bad), thousands(skipped))
    };
    let segments = [
        Segment { label: applied, count: ok, colour: layout::GREEN },
        Segment { label: "need fixing", count: bad, colour: layout::RED },
        Segment { label: "not applied", count: not_applied, colour: layout::AMBER },
        Segment { label: "not confirmed", count: not_confirmed, colour: layout::AMBER },
        Segment { label: "skipped", count: skipped, colour: layout::GREY },
    ];
    let changes = c.changes.words();
    let changes_label = if dry { "If applied" } else { "Changes" };
    let what = if stopped && not_confirmed > 0 {
        "was stopped after repeated failures. The rows marked as applied were; the rows \"not applied\" were not; the rows \"not confirmed\" were handed to be applied but not recorded as applied when it stopped, so they may or may not have been (rosterdrop undo cannot put back those that were). The failed-rows file holds them, ready to upload again."
    } else if stopped {
        "was stopped after repeated failures. The rows marked as applied were; the rows \"not applied\" were not: the failed-rows file holds them, ready to upload again."
    } else if dry {
        "was validated: a dry run, nothing was changed."
    } else {
        "has been processed."
    };
    // What is attached: not what is linked below instead (too large), which "Attached" listed
    // too; and the problems file, attached but never named.
    let linked =
        |key: &Option<String>| key.as_deref().and_then(|k| k.rsplit('/').next()).is_some_and(|n| links.iter().any(|(l, _)| l == n));
    let files: Vec<&str> = [
        (&s.result_key, "the result (every row with its Status and Message)"),
        (&s.failed_rows_key, "the failed rows, to fix and upload again"),
        (&s.problems_key, "the problems, each kind once with its rows"),
        (&s.disabled_users_key, "disabled-users.csv"),
    ]
    .into_iter()
    .filter(|(key, _)| key.is_some() && !linked(key))
    .map(|(_, what)| what)
    .collect();

    // The plain-text part.
    let mut text = format!(
        "{headline}\n\nYour file {} ({}, mode {}) {what}\n\n  {}\n",
        file,
        layout::rows(s.rows.into()),
        s.mode,
        layout::bar_text(&segments)
    );
    if c.unchanged > 0 {
        text +=
            &format!("  of the {applied}: {} unchanged (already as the file says; nothing was written)\n", thousands(c.unchanged.into()));
    }
    if !changes.is_empty() {
        text += &format!("  {changes_label}: {changes}\n");
    }
    if s.disabled_not_in_file > 0 {
        text +=
            &format!("\nReplace mode disabled {} active users absent from the file (see disabled-users.csv).\n", s.disabled_not_in_file);
    }
    if !s.problems.is_empty() || s.rows_of_other_problems > 0 {
        text += "\nWhat to fix:\n";
        text += &layout::problems_text(&s.problems, s.rows_of_other_problems);
        text += &format!(
            "\nThe failed-rows file holds only the rows that failed, with a Message column: fix them and upload that file again into incoming/{}/ (not replace/: it is not your whole list).\n",
            tenant.id
        );
    }
    if !s.warnings.is_empty() {
        text += "\nWarnings:\n";
        for w in &s.warnings {
            text += &format!("  - {w}\n");
        }
    }
    text += "\nBy action:\n";
    for (a, n) in &s.by_action {
        // In validate mode nothing succeeded yet: it would (the text part said "3 succeeded").
        let done = if dry { format!("{} would succeed", thousands(n.success.into())) } else { n.succeeded() };
        let failed = if dry { "would fail" } else { "failed" };
        text += &format!("  {a:<12} {done}, {} {failed}, {} skipped\n", thousands(n.failure.into()), thousands(n.skipped.into()));
    }
    if !files.is_empty() {
        text += &format!("\nAttached: {}.\n", files.join("; "));
    }
    for (name, url) in links {
        text += &crate::wording::link_line(name, url, &s.job_id);
    }
    text += &format!("\nJob: {}\n", s.job_id);

    // The HTML part.
    let mut body =
        layout::para(&format!("Your file <b>{}</b> ({}, mode {}) {}", esc(&file), layout::rows(s.rows.into()), esc(&s.mode), esc(what)));
    body += &layout::bar(&segments);
    if c.unchanged > 0 || !changes.is_empty() {
        let mut line = String::new();
        if !changes.is_empty() {
            line += &format!("{changes_label}: {}.", esc(&changes));
        }
        if c.unchanged > 0 {
            line += &format!(" {} rows were already as the file says: nothing was written for them.", thousands(c.unchanged.into()));
        }
        body += &layout::para(line.trim());
    }
    if s.disabled_not_in_file > 0 {
        body += &layout::para(&format!(
            "Replace mode disabled <b>{}</b> active users absent from the file (see disabled-users.csv).",
            thousands(s.disabled_not_in_file.into())
        ));
    }
    if !s.problems.is_empty() || s.rows_of_other_problems > 0 {
        body += &layout::section("What to fix");
        body += &layout::problems_html(&s.problems, s.rows_of_other_problems);
        body += &layout::para(&format!(
            "The failed-rows file holds only the rows that failed, each with its message: fix them and upload that file again into incoming/{}/ (not replace/: it is not your whole list).",
            esc(&tenant.id)
        ));
    }
    if !s.warnings.is_empty() {
        body += &layout::section("Warnings");
        for w in &s.warnings {
            body += &layout::para(&esc(w));
        }
    }
    if s.by_action.len() > 1 {
        body += &layout::section("By action");
        let rows: Vec<(&str, String)> = s
            .by_action
            .iter()
            .map(|(a, n)| {
                let text = format!(
                    "{} {applied}, {} need fixing, {} skipped",
                    thousands(n.success.into()),
                    thousands(n.failure.into()),
                    thousands(n.skipped.into())
                );
                (a.as_str(), esc(&text))
            })
            .collect();
        body += &layout::facts(&rows);
    }
    if !files.is_empty() {
        body += &layout::para(&format!("Attached: {}.", esc(&files.join("; "))));
    }
    for (name, url) in links {
        body += &layout::para(&format!(
            "{} is too large to attach: <a href=\"{}\">download it</a> (the link works for a limited time; once it has expired, <code>rosterdrop results {}</code> downloads it).",
            esc(name),
            esc(url),
            esc(&s.job_id)
        ));
    }
    let footer = format!("Sent by rosterdrop for {}. Job {}.", esc(&tenant.id), esc(&s.job_id));
    let brand = layout::Brand::of(Some(tenant));
    let html = layout::page(&brand, &format!("{file} - {}", layout::bar_text(&segments)), &headline, &body, &footer);
    (subject, text, html)
}

#[cfg(test)]
mod tests {
    use super::build::build;
    use super::*;
    use crate::model::{Action, Outcome};
    use crate::testkit::Kit;

    /// Rows refused by validation, refused by the directory and applied, over several chunks and
    /// phases: the result holds every input row once, in file order, each with one outcome; the
    /// failed-rows file holds exactly the failures; one email goes out.
    #[tokio::test]
    async fn every_row_gets_exactly_one_outcome_in_file_order_and_one_email() {
        let mut kit = Kit::new(|_| {}).await;
        let mut body = String::from("Type,Action,Email,OrgName,Role\nOrg,Create,,North,\n");
        for i in 0..10 {
            let role = if i % 3 == 0 { "Pilot" } else { "Learner" };
            body += &format!("User,Create,u{i}@acme.example.com,North,{role}\n");
        }
        body += "User,Update,ghost@acme.example.com,,Learner\nUser,Create,not-an-email,,Learner\n";
        let job = kit.run("mixed.csv", &body).await;
        assert_eq!(job.state, JobState::Completed);
        let result = kit.result(&job).await;
        assert_eq!(result.len(), 1 + 13, "header and every row");
        assert_eq!(result[1][2], "", "the organization row first, as in the file");
        for (i, row) in result[2..12].iter().enumerate() {
            assert_eq!(row[2], format!("u{i}@acme.example.com"), "file order");
        }
        let out = kit.outcomes(&job).await;
        let failed: Vec<usize> = out.iter().enumerate().filter(|(_, (s, _))| s == "Failure").map(|(i, _)| i).collect();
        assert_eq!(failed, vec![1, 4, 7, 10, 11, 12], "{out:?}");
        assert!(out.iter().all(|(s, m)| (s == "Created" || s == "Failure") && !m.is_empty()), "{out:?}");
        let summary = kit.summary(&job).await;
        assert_eq!((summary.counts.success, summary.counts.failure), (7, 6));
        let failed_rows = kit.svc.store.get(summary.failed_rows_key.as_deref().unwrap()).await.unwrap().unwrap();
        assert_eq!(String::from_utf8(failed_rows).unwrap().lines().count(), 1 + 6);
        assert_eq!(kit.mem.mailer.sent().len(), 1);
        // Finalize delivered again: no second email, the same result.
        kit.deliver(&crate::event::ObjectRef {
            bucket: "memory".into(),
            key: keys::done(&job.id),
            size: None,
            version_id: None,
            sequencer: None,
            etag: None,
            event_time: None,
        })
        .await;
        assert_eq!(kit.mem.mailer.sent().len(), 1);
    }

    /// `created_users` named rows by their internal id: row 3 of a second sheet was 10000003.
    /// They are now the sheet's row, with the sheet named when the workbook has several.
    #[tokio::test]
    async fn created_users_are_listed_by_sheet_and_row_as_the_file_numbers_them() {
        let mut wb = rust_xlsxwriter::Workbook::new();
        for (sheet, email) in [("Staff", "a@acme.example.com"), ("Contractors", "b@acme.example.com")] {
            let ws = wb.add_worksheet();
            ws.set_name(sheet).unwrap();
            ws.write_string(0, 0, "Email").unwrap();
            ws.write_string(2, 0, email).unwrap();
        }
        let mut kit = Kit::new(|_| {}).await;
        let job = kit.run("two.xlsx", wb.save_to_buffer().unwrap()).await;
        let listed: Vec<(Option<String>, u32)> = kit.summary(&job).await.created_users.into_iter().map(|c| (c.sheet, c.row)).collect();
        assert_eq!(listed, [(Some("Staff".to_string()), 3), (Some("Contractors".to_string()), 3)]);
        let job = kit.run("one.csv", "Email\nc@acme.example.com\n").await;
        let listed: Vec<(Option<String>, u32)> = kit.summary(&job).await.created_users.into_iter().map(|c| (c.sheet, c.row)).collect();
        assert_eq!(listed, [(None, 2)]);
    }

    /// A value right of the last header fails its row; the result and failed-rows files dropped
    /// it, so the failed row dropped again was applied and the value was gone. Both files now
    /// echo it after their own columns, and the failed-rows file fails the same way again.
    #[tokio::test]
    async fn a_value_without_a_header_survives_the_failed_rows_loop() {
        let mut kit = Kit::new(|_| {}).await;
        let job = kit.run("extra.csv", "Email,FirstName\na@acme.example.com,Ann,=extra data\nb@acme.example.com,Bob\n").await;
        let result = kit.result(&job).await;
        assert_eq!(
            result[1],
            [
                "a@acme.example.com",
                "Ann",
                "Failure",
                "column 3 (C) has a value but no header; add a header or remove the value",
                "",
                "",
                "=\"=extra data\""
            ]
        );
        let summary = kit.summary(&job).await;
        let failed = kit.svc.store.get(summary.failed_rows_key.as_deref().unwrap()).await.unwrap().unwrap();
        let text = String::from_utf8(failed.clone()).unwrap();
        assert_eq!(
            text.lines().nth(1),
            Some(
                "a@acme.example.com,Ann,column 3 (C) has a value but no header; add a header or remove the value,\"=\"\"=extra data\"\"\""
            )
        );
        let again = kit.run("extra-failed-rows.csv", failed).await;
        let row = &kit.result(&again).await[1];
        assert_eq!(
            row,
            &[
                "a@acme.example.com",
                "Ann",
                "Failure",
                "column 4 (D) has a value but no header; add a header or remove the value",
                "",
                "",
                "=\"=extra data\""
            ]
        );
    }

    /// The result email for a file with several kinds of problem: a headline in words, the
    /// problems grouped by kind, most frequent first, with counts and rows ("and N more"), the
    /// same grouping in summary.json and in the CSV result's problems file; everything from the
    /// file escaped; a tenant without branding gets its name and the default colour, one with
    /// branding its logo and colour.
    /// A tenant item whose only admin address SES cannot deliver to (a non-ASCII mailbox, saved
    /// before `tenant put` checked it): the result email went to nobody and the job was marked
    /// told. It goes to the deployment's default admins; with none, the job ends FAILED with the
    /// reason in its summary (and an error log), not COMPLETED as if someone had been told.
    #[tokio::test]
    async fn a_tenant_with_no_deliverable_admin_is_answered_to_the_default_admins_or_ends_failed() {
        let undeliverable = |t: &mut crate::model::Tenant| t.admin_emails = vec!["zoë@acme.example.com".into()];
        let mut kit = Kit::new(undeliverable).await;
        kit.svc.config.default_admins = vec!["ops@rosterdrop.example.com".into()];
        let job = kit.run("roster.csv", "Email,Role\nann@acme.example.com,Learner\n").await;
        assert_eq!(job.state, JobState::Completed);
        let sent = kit.mem.mailer.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].1, vec!["ops@rosterdrop.example.com".to_string()], "the default admins are told");

        let mut kit = Kit::new(undeliverable).await;
        let obj = kit.upload("roster.csv", "Email,Role\nann@acme.example.com,Learner\n");
        kit.deliver(&obj).await;
        let chunks = kit.pending_chunks().await;
        for chunk in &chunks {
            kit.deliver(chunk).await;
        }
        let done = Kit::obj(&keys::done(&crate::ingest::job_id(&obj)));
        kit.deliver(&done).await;
        assert!(kit.mem.mailer.sent().is_empty());
        let job = kit.svc.jobs.get(&crate::ingest::job_id(&obj)).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Failed, "not COMPLETED as if told");
        let reason = kit.summary(&job).await.reason.unwrap_or_default();
        assert!(reason.contains("no admin address to send to"), "{reason}");
        // A rejected file: REJECTED with its own reason, not left RECEIVED for the sweeps.
        let rejected = kit.run("no-email.csv", "Name\nann\n").await;
        assert_eq!(rejected.state, JobState::Rejected);
        let reason = kit.summary(&rejected).await.reason.unwrap_or_default();
        assert!(reason.starts_with("the required column Email is missing"), "{reason}");
        assert!(kit.mem.mailer.sent().is_empty());
    }

    /// An HR export with its own Status and User ID columns: they were taken for our result
    /// columns, ignored without a word and dropped from the result and failed-rows files, so a
    /// leaver marked `Terminated` was created active. Now they are echoed, the leaver's row fails,
    /// and its failed-rows file dropped again (Status now the column before our Message) fails the
    /// same way with its values intact.
    #[tokio::test]
    async fn an_exports_own_status_and_user_id_columns_are_echoed_and_a_leaver_is_not_created() {
        let mut kit = Kit::new(|_| {}).await;
        let body = "Email,Role,User ID,Status\nann@acme.example.com,Learner,E-1,Terminated\nbob@acme.example.com,Learner,E-2,Active\n";
        let job = kit.run("hr.csv", body).await;
        let result = kit.result(&job).await;
        assert_eq!(result[0], ["Email", "Role", "User ID", "Status", "Status", "Message", "Changes", "UserId"]);
        assert_eq!(result[1][..5], ["ann@acme.example.com", "Learner", "E-1", "Terminated", "Failure"]);
        assert!(result[1][5].starts_with("Status is \"Terminated\", but rosterdrop does not read a Status column"), "{}", result[1][5]);
        assert_eq!(result[2][..5], ["bob@acme.example.com", "Learner", "E-2", "Active", "Created"]);
        assert!(kit.last_mail().contains("column \"Status\" is not a roster column"), "{}", kit.last_mail());
        let summary = kit.summary(&job).await;
        let failed = kit.svc.store.get(summary.failed_rows_key.as_deref().unwrap()).await.unwrap().unwrap();
        let failed = String::from_utf8(failed).unwrap();
        assert!(failed.contains("Email,Role,User ID,Status,Message\nann@acme.example.com,Learner,E-1,Terminated,"), "{failed}");
        let again = kit.run("hr-failed-rows.csv", failed.trim_start_matches('\u{feff}')).await;
        let out = kit.outcomes(&again).await;
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, "Failure");
        assert!(out[0].1.starts_with("Status is \"Terminated\""), "{out:?}");
        assert_eq!(kit.result(&again).await[1][..4], ["ann@acme.example.com", "Learner", "E-1", "Terminated"]);
    }

    /// Through the pipeline as deployed: ingest reads the merged Department on every row it
    /// covers, the email says so, and the result file (finalize reads the source again) shows
    /// the value on each row, so the result and failed-rows files dropped again read the same.
    #[tokio::test]
    async fn a_workbook_with_merged_cells_is_applied_and_echoed_as_it_shows() {
        let mut kit = Kit::new(|_| {}).await;
        let xlsx = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/real/merged-cells.xlsx")).unwrap();
        let job = kit.run("teams.xlsx", &xlsx).await;
        assert_eq!(job.state, JobState::Completed);
        let emails: Vec<String> = ["ann", "bob", "cat", "dan", "eve"].iter().map(|n| format!("{n}@acme.example.com")).collect();
        let users = kit.svc.directory.users("acme", &emails).await.unwrap();
        let dept: Vec<Option<&str>> = emails.iter().map(|e| users.get(e).and_then(|u| u.fields.department.as_deref())).collect();
        assert_eq!(dept, [Some("Sales"), Some("Sales"), Some("Sales"), Some("Ops"), Some("Ops")]);
        assert!(kit.last_mail().contains("3 cells are covered by merged cells (the first: B2:B4)"), "{}", kit.last_mail());
        let key = kit.summary(&job).await.result_key.unwrap();
        let result = crate::ingest::sheets::tables(&kit.svc.store.get(&key).await.unwrap().unwrap()).unwrap();
        let echoed: Vec<&str> = result[0].rows.iter().map(|(_, r)| r[1].as_str()).collect();
        assert_eq!(echoed, ["Sales", "Sales", "Sales", "Ops", "Ops"]);
    }

    /// A failed-rows file lists only the rows that failed: dropped into replace/ it disabled
    /// every other user. A file of ours is refused there, saying where it goes, and the email
    /// that sends it says so too.
    #[tokio::test]
    async fn a_file_of_ours_dropped_into_replace_is_refused_not_taken_for_the_whole_list() {
        let mut kit = Kit::new(|_| {}).await;
        let first = kit
            .run("all.csv", "Email,Role\nann@acme.example.com,Learner\nbob@acme.example.com,Learner\ncy@acme.example.com,Teachr\n")
            .await;
        assert!(kit.last_mail().contains("upload that file again into incoming/acme/ (not replace/"), "{}", kit.last_mail());
        let key = kit.summary(&first).await.failed_rows_key.unwrap();
        let failed = String::from_utf8(kit.svc.store.get(&key).await.unwrap().unwrap()).unwrap().replace("Teachr", "Learner");
        let job = kit.run("replace/all-failed-rows.csv", failed.trim_start_matches('\u{feff}')).await;
        assert_eq!(job.state, JobState::Rejected);
        let reason = kit.summary(&job).await.reason.unwrap();
        assert!(reason.starts_with("this is a file rosterdrop wrote"), "{reason}");
        assert!(reason.contains("Drop it into incoming/acme/ to apply its rows"), "{reason}");
        let users = kit.svc.directory.users("acme", &["ann@acme.example.com".to_string()]).await.unwrap();
        assert_eq!(users["ann@acme.example.com"].status, crate::model::UserStatus::Active);
        // Into the tenant's folder, as the email says: applied.
        let job = kit.run("all-failed-rows.csv", failed.trim_start_matches('\u{feff}')).await;
        assert_eq!(kit.outcomes(&job).await, [("Created".to_string(), "user created".to_string())]);
    }

    /// A result file dropped again: its empty rows stay empty rows (our `Skipped, empty row`
    /// made them rows that failed for a missing Email), and a file's own `Message` column that
    /// is not where we write ours is echoed, its values kept as they are.
    #[tokio::test]
    async fn a_result_file_dropped_again_keeps_its_empty_rows_empty_and_an_exports_message_is_its_own() {
        let mut kit = Kit::new(|_| {}).await;
        let job = kit.run("r.csv", "Email,Role\nann@acme.example.com,Learner\n,\nbob@acme.example.com,Learner\n").await;
        let key = kit.summary(&job).await.result_key.unwrap();
        let result = String::from_utf8(kit.svc.store.get(&key).await.unwrap().unwrap()).unwrap();
        let again = kit.run("r-result.csv", result.trim_start_matches('\u{feff}')).await;
        let out: Vec<String> = kit.outcomes(&again).await.into_iter().map(|(s, _)| s).collect();
        assert_eq!(out, ["Unchanged", "Skipped", "Unchanged"]);
        // A file of organizations only: its empty row is no user row asking for an Email column.
        let orgs = kit.run("o.csv", "Type,OrgName\nOrg,North\n,\nOrg,South\n").await;
        let key = kit.summary(&orgs).await.result_key.unwrap();
        let result = String::from_utf8(kit.svc.store.get(&key).await.unwrap().unwrap()).unwrap();
        let again = kit.run("o-result.csv", result.trim_start_matches('\u{feff}')).await;
        assert_eq!(again.state, JobState::Completed, "{:?}", kit.summary(&again).await.reason);
        // The export's Message is not ours: its cells keep their apostrophes, so `'t Hart` is
        // stored as typed; and an apostrophe before a letter is no escape of ours, so none is
        // added or taken off (a result file dropped again with our Message column keeps it too).
        let job = kit.run("msg.csv", "Email,Message,LastName,Role\ncy@acme.example.com,Welcome back,'t Hart,Learner\n").await;
        let result = kit.result(&job).await;
        assert_eq!(result[0], ["Email", "Message", "LastName", "Role", "Status", "Message", "Changes", "UserId"]);
        assert_eq!(result[1][..5], ["cy@acme.example.com", "Welcome back", "'t Hart", "Learner", "Created"], "written as it is");
        let users = kit.svc.directory.users("acme", &["cy@acme.example.com".to_string()]).await.unwrap();
        assert_eq!(users["cy@acme.example.com"].fields.last_name.as_deref(), Some("'t Hart"));
        let key = kit.summary(&job).await.result_key.unwrap();
        let text = String::from_utf8(kit.svc.store.get(&key).await.unwrap().unwrap()).unwrap();
        let again = kit.run("msg-result.csv", text.trim_start_matches('\u{feff}')).await;
        assert_eq!(kit.outcomes(&again).await, [("Unchanged".to_string(), "unchanged".to_string())]);
    }

    /// Text copied on a Mac, from a PDF or a web page can carry `é` as `e` and a combining
    /// accent: the same letter to a person. Rows are compared and stored in one form (NFC), so
    /// the role, the attribute column and its choice match, a re-read file is unchanged and one
    /// ExternalId stays one; the result echoes the cells as the file has them.
    #[tokio::test]
    async fn accents_typed_as_combining_characters_match_the_same_letters_composed() {
        use crate::model::{AttributeDef, AttributeKind};
        let mut kit = Kit::new(|t| {
            t.roles = vec!["\u{c9}l\u{e8}ve".into()];
            let values = vec!["\u{ce}le-de-France".into()];
            t.attributes = vec![AttributeDef { name: "R\u{e9}gion".into(), kind: AttributeKind::OneOf { values } }];
        })
        .await;
        let composed =
            "Email,FirstName,RoleName,R\u{e9}gion,ExternalId\nann@acme.example.com,Jos\u{e9},\u{c9}l\u{e8}ve,\u{ce}le-de-France,\u{c9}1\n";
        let decomposed = "Email,FirstName,RoleName,Re\u{301}gion,ExternalId\nann@acme.example.com,Jose\u{301},E\u{301}le\u{300}ve,I\u{302}le-de-France,E\u{301}1\n";
        let first = kit.run("decomposed.csv", decomposed).await;
        assert_eq!(kit.outcomes(&first).await, [("Created".to_string(), "user created".to_string())]);
        let users = kit.svc.directory.users("acme", &["ann@acme.example.com".to_string()]).await.unwrap();
        let ann = &users["ann@acme.example.com"];
        assert_eq!(ann.fields.first_name.as_deref(), Some("Jos\u{e9}"), "stored composed");
        assert_eq!(ann.fields.attributes.get("R\u{e9}gion").map(String::as_str), Some("\u{ce}le-de-France"));
        assert_eq!(kit.result(&first).await[1][1], "Jose\u{301}", "the result echoes the file as it came");
        let again = kit.run("again.csv", composed).await;
        assert_eq!(kit.outcomes(&again).await[0].0, "Unchanged");
        // One id, however its accent is typed.
        let both = format!("{decomposed}bob@acme.example.com,Bob,\u{c9}l\u{e8}ve,,\u{c9}1\n");
        let job = kit.run("both.csv", both).await;
        let out = kit.outcomes(&job).await;
        assert_eq!(out[0].0, "Unchanged");
        assert!(out[1].0 == "Failure" && out[1].1.contains("duplicate ExternalId"), "{out:?}");
    }

    /// Exports joined with `cat a.csv b.csv` repeat the header row. The same columns: that row
    /// is skipped and both parts applied. Other columns: refused, since the rows below would be
    /// read under the first header (Bob's first and last names swapped without a word).
    #[tokio::test]
    async fn files_joined_together_skip_their_repeated_header_or_are_refused_when_its_columns_differ() {
        let mut kit = Kit::new(|_| {}).await;
        let same =
            "Email,FirstName,LastName\nann@acme.example.com,Ann,Lee\nEmail Address , First Name,LastName\nbob@acme.example.com,Bob,Ray\n";
        let job = kit.run("same.csv", same).await;
        let out = kit.outcomes(&job).await;
        assert_eq!(out.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(), ["Created", "Skipped", "Created"]);
        assert!(out[1].1.contains("header row again"), "{out:?}");
        let swapped = "Email,FirstName,LastName\ncy@acme.example.com,Cy,Young\nEmail,LastName,FirstName\ndee@acme.example.com,Dunn,Dee\n";
        let job = kit.run("swapped.csv", swapped).await;
        assert_eq!(job.state, JobState::Rejected);
        let reason = kit.summary(&job).await.reason.unwrap();
        assert!(reason.contains("row 3 is a second header row") && reason.contains("\"LastName\", \"FirstName\""), "{reason}");
        let users = kit.svc.directory.users("acme", &["dee@acme.example.com".to_string()]).await.unwrap();
        assert!(users.is_empty(), "nothing applied");
        // A second table below the first, its Email column elsewhere: its rows failed one by one
        // for an Email of "FirstName", "Cy"; the file is refused at its header instead.
        let tables =
            "Email,FirstName,LastName\nfay@acme.example.com,Fay,Wu\n\nTeachers,,\nFirstName,LastName,Email\nCy,Doe,cy@acme.example.com\n";
        let job = kit.run("tables.csv", tables).await;
        assert_eq!(job.state, JobState::Rejected);
        let reason = kit.summary(&job).await.reason.unwrap();
        assert!(reason.contains("row 5 is a second header row") && reason.contains("\"FirstName\", \"LastName\", \"Email\""), "{reason}");
        // A user whose cells merely look like words is no header: only the key column decides.
        let job = kit.run("words.csv", "Email,FirstName\neve@acme.example.com,Email\n").await;
        assert_eq!(kit.outcomes(&job).await[0].0, "Created");
        // Two header words in a row ("no address: write to the parent") fail that row alone.
        let job = kit.run("words2.csv", "Email,FirstName,Contact\nParent,Sam,Email\ngus@acme.example.com,Gus,\n").await;
        let out = kit.outcomes(&job).await;
        assert_eq!((out[0].0.as_str(), out[1].0.as_str()), ("Failure", "Created"), "{out:?}");
    }

    /// A stray quote in a narrow file, or one whose rows leave their empty cells out, swallowed
    /// the rows up to the next quote into one cell: they were not applied, and nothing said so
    /// (in replace mode their users were disabled). An address typed over two lines, as Excel
    /// writes it, is a cell like any other.
    #[tokio::test]
    async fn rows_swallowed_by_a_stray_quote_refuse_the_file_and_an_address_over_two_lines_does_not() {
        let mut kit = Kit::new(|_| {}).await;
        let narrow =
            "Email,FirstName\nann@acme.example.com,\"Ann\nbob@acme.example.com,Bob\ncy@acme.example.com,Cy\"\ndee@acme.example.com,Dee\n";
        let ragged = "Email,FirstName,LastName,Department,Phone\nann@acme.example.com,Ann,\"Lee\nbob@acme.example.com,Bob,Ray\ncy@acme.example.com,Cy,Young\"\ndee@acme.example.com,Dee,Dunn\n";
        for (name, file, column) in [("narrow.csv", narrow, "FirstName"), ("ragged.csv", ragged, "LastName")] {
            let job = kit.run(name, file).await;
            assert_eq!(job.state, JobState::Rejected, "{name}");
            let reason = kit.summary(&job).await.reason.unwrap();
            assert!(reason.contains(&format!("row 2: its \"{column}\" cell runs over several lines")), "{reason}");
            assert!(reason.contains("line 2 of it reads as a row of its own (\"bob@acme.example.com,Bob"), "{reason}");
        }
        let address = "Email,FirstName,Address\r\nann@acme.example.com,Ann,\"12 Main St\nSpringfield, IL, 62701\"\r\nbob@acme.example.com,Bob,\"Notes:\nann@acme.example.com\"\r\ncy@acme.example.com,Cy,\"Emergency contact:\njane.doe@example.com, 555-0100\"\r\n";
        let job = kit.run("address.csv", address).await;
        assert_eq!((job.state, job.succeeded), (JobState::Completed, 3), "{:?}", kit.summary(&job).await.reason);
    }

    /// The tenant removed by hand while its file was being applied: finalize sent no email at
    /// all ("tenant removed before finalize") and closed the job; the default admins get it.
    /// A dropped file's name is shown in the email as one visible line: its direction override
    /// (which turned the subject's counts around and faked the extension of an attachment), its
    /// line breaks (a `Bcc:`-looking line in the text part) and control characters written out;
    /// a 300-character name cut in its middle; `.csv` gave hidden attachments (`.csv-result.csv`);
    /// `=?utf-8?b?…?=` was decoded by mail readers as an encoded word.
    #[tokio::test]
    async fn a_hostile_file_name_shows_as_one_visible_line_in_subject_body_and_attachments() {
        use mail_parser::MimeHeaders;
        let long = format!("{}.csv", "x".repeat(300));
        let names =
            ["report\u{202E}vsc.exe.csv", "a\r\nBcc: evil@example.com\u{1b}[31m.csv", ".csv", "=?utf-8?b?SGFja2Vk?=.csv", long.as_str()];
        for name in names {
            let mut kit = Kit::new(|_| {}).await;
            kit.run(name, "Email,Role\nann@acme.example.com,Learner\n").await;
            let (_, _, raw) = kit.mem.mailer.sent().last().unwrap().clone();
            let msg = mail_parser::MessageParser::default().parse(&raw).unwrap();
            let subject = msg.subject().unwrap().to_string();
            let text = msg.body_text(0).unwrap().to_string();
            let html = msg.body_html(0).unwrap().to_string();
            let shown = |c: char| !crate::wording::hidden_in_name(c);
            assert!(subject.chars().all(shown) && subject.chars().count() < 200, "{name:?}: {subject:?}");
            assert!(!text.lines().any(|l| l.starts_with("Bcc:")), "{name:?}: {text}");
            for part in [&text, &html] {
                assert!(part.chars().all(|c| shown(c) || matches!(c, '\n' | '\r' | '\t')), "{name:?}: {part:?}");
            }
            for a in msg.attachments() {
                let file = a.attachment_name().unwrap_or_default();
                assert!(!file.starts_with('.') && !file.contains("Hacked") && file.chars().all(shown), "{name:?}: {file:?}");
            }
        }
    }

    /// SES refusing the result email for good (a sandboxed account and an unverified admin): the
    /// rows are applied and the result files written, so the job is COMPLETED, its message
    /// saying the email was not sent and where the results are. It was FAILED with "the result
    /// files could not be written", untrue, and its failure email refused in turn.
    #[tokio::test]
    async fn a_result_email_ses_refuses_for_good_leaves_the_job_completed_saying_so() {
        let mut kit = Kit::new(|_| {}).await;
        *kit.mem.mailer.reject_next.lock().unwrap() = 1;
        let job = kit.run("refused.csv", "Email,Role\nann@acme.example.com,Learner\n").await;
        assert_eq!((job.state, job.succeeded), (JobState::Completed, 1));
        let message = job.message.clone().unwrap_or_default();
        assert!(
            message.starts_with("the result email could not be sent to every admin (") && message.contains("MessageRejected"),
            "{message}"
        );
        assert!(message.ends_with(&format!("the result files are in results/acme/{}/", job.id)), "{message}");
        assert!(kit.summary(&job).await.result_key.is_some(), "the result files are there");
        assert!(kit.mem.mailer.sent().is_empty(), "no second email tried");
        assert!(!kit.svc.jobs.email_sent(&job.id, EmailKind::Result).await.unwrap());
    }

    #[tokio::test]
    async fn a_job_whose_tenant_was_removed_meanwhile_is_told_to_the_default_admins() {
        let mut kit = Kit::new(|_| {}).await;
        kit.svc.config.default_admins = vec!["ops@example.com".into()];
        let obj = kit.upload("gone.csv", "Email\na@acme.example.com\n");
        kit.deliver(&obj).await;
        for chunk in kit.pending_chunks().await {
            kit.deliver(&chunk).await;
        }
        kit.mem.directory.remove_tenant("acme");
        kit.settle().await;
        let job = kit.svc.jobs.get(&crate::ingest::job_id(&obj)).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Completed);
        let sent = kit.mem.mailer.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].1, ["ops@example.com"]);
        assert!(String::from_utf8_lossy(&sent[0].2).contains("gone.csv"));
    }

    /// A job stopped (a part it cannot read) after another part's rows were written but before
    /// that part was recorded (its outcomes are written once all its rows ran: a part cut off by
    /// a timeout, or running beside the stop). Its rows were called "not applied", and the email
    /// said they were not, while the directory had them. They are "not confirmed" now; rows of a
    /// part that was never read stay "not applied".
    #[tokio::test]
    async fn rows_of_a_part_cut_off_when_its_job_stopped_are_not_confirmed_rather_than_not_applied() {
        let mut kit = Kit::new(|t| t.chunk_size = Some(2)).await;
        let file = "Email\na@acme.example.com\nb@acme.example.com\nc@acme.example.com\nd@acme.example.com\ne@acme.example.com\n";
        let obj = kit.upload("cut.csv", file);
        kit.deliver(&obj).await;
        let id = crate::ingest::job_id(&obj);
        let chunks = kit.pending_chunks().await;
        assert_eq!(chunks.len(), 3);
        kit.deliver(&chunks[0]).await;
        kit.deliver(&chunks[1]).await;
        // Its rows written, its record not: as a part cut off between its writes and its outcomes.
        let outcomes = kit.svc.store.list(&keys::outcomes_prefix(&id)).await.unwrap();
        let second = outcomes.iter().find(|k| k.ends_with("-000001.jsonl")).expect("the second part's outcomes").clone();
        kit.mem.store.remove(&second);
        kit.svc.store.put(&chunks[2].key, b"not a chunk".to_vec(), "application/x-ndjson").await.unwrap();
        kit.deliver(&chunks[2]).await; // stops the job
        kit.settle().await;
        let job = kit.svc.jobs.get(&id).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Failed);
        let out = kit.outcomes(&job).await;
        let statuses: Vec<&str> = out
            .iter()
            .map(|(s, m)| {
                if m.starts_with("not confirmed") {
                    "?"
                } else if m.starts_with("not applied") {
                    "-"
                } else {
                    s.as_str()
                }
            })
            .collect();
        assert_eq!(statuses, ["Created", "Created", "?", "?", "-"], "{out:?}");
        let written = kit.svc.directory.users("acme", &["c@acme.example.com".to_string(), "d@acme.example.com".to_string()]).await.unwrap();
        assert_eq!(written.len(), 2, "the rows called not confirmed were in fact written");
        let mail = kit.last_mail();
        assert!(mail.contains("Stopped: 2 applied, 1 not applied, 2 not confirmed, 0 need fixing"), "{mail}");
        assert!(mail.contains("cut.csv FAILED: 2 applied, 1 not applied, 2 not confirmed, 0 failed"), "the subject: {mail}");
        assert!(mail.contains("may or may not have been"), "{mail}");

        // A dry run writes nothing: stopped the same way, its rows were not applied.
        let obj = kit.upload("dry.csv", file);
        let obj = crate::event::ObjectRef { key: "incoming/acme/validate/dry.csv".into(), ..obj };
        kit.mem.store.put_version(&obj.key, file.as_bytes().to_vec());
        kit.deliver(&obj).await;
        let id = crate::ingest::job_id(&obj);
        let chunks = kit.pending_chunks().await;
        kit.deliver(&chunks[0]).await;
        kit.svc.store.put(&chunks[2].key, b"not a chunk".to_vec(), "application/x-ndjson").await.unwrap();
        kit.deliver(&chunks[2]).await;
        kit.settle().await;
        let job = kit.svc.jobs.get(&id).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Failed);
        assert!(kit.outcomes(&job).await.iter().all(|(_, m)| !m.starts_with("not confirmed")), "nothing is written by a dry run");
    }

    #[tokio::test]
    async fn the_result_email_groups_problems_by_kind_most_frequent_first() {
        let mut kit = Kit::new(|_| {}).await;
        let mut body = String::from("Email,RoleName\n");
        for i in 0..8 {
            body += &format!("r{i}@acme.example.com,learner\n"); // 8 x unknown role
        }
        for i in 0..3 {
            body += &format!("bad{i}@@x,Learner\n"); // 3 x invalid email (each its own message)
        }
        body += "ok1@acme.example.com,Learner\nok2@acme.example.com,Learner\n";
        body += "esc@acme.example.com,<b>Boss</b>\n";
        let job = kit.run("mixed.csv", &body).await;
        let summary = kit.summary(&job).await;
        assert_eq!((summary.counts.success, summary.counts.failure), (2, 12));
        let first = &summary.problems[0];
        assert_eq!(first.count, 8);
        assert!(first.message.contains("\"learner\"") && first.message.contains("did you mean \"Learner\""), "{first:?}");
        assert_eq!((first.rows.len(), first.more_rows), (5, 3));
        assert_eq!(first.rows[0], "row 2");
        assert!(summary.problems.windows(2).all(|w| w[0].count >= w[1].count), "most frequent first");
        // The CSV result's companion file has the same grouping.
        let problems_csv = kit.svc.store.get(summary.problems_key.as_deref().expect("a problems file")).await.unwrap().unwrap();
        let problems_csv = String::from_utf8(problems_csv).unwrap();
        assert!(problems_csv.contains("Rows,Problem and fix,Column,Where") && problems_csv.contains("8,"), "{problems_csv}");
        assert!(problems_csv.contains("rows 2, 3, 4, 5, 6 and 3 more"), "{problems_csv}");

        let (_, _, raw) = kit.mem.mailer.sent().last().unwrap().clone();
        let msg = mail_parser::MessageParser::default().parse(&raw).unwrap();
        let text = msg.body_text(0).unwrap().replace("\r\n", "\n");
        let html = msg.body_html(0).unwrap().to_string();
        assert!(text.starts_with("2 applied, 12 need fixing\n"), "{text}");
        let learner = text.lines().position(|l| l.contains("8 rows:")).expect("the biggest kind");
        let email = text
            .lines()
            .position(|l| l.contains("3 rows:") && l.contains("bad0@@x") && l.contains("(and the same with other values)"))
            .expect("the invalid emails, one kind");
        assert!(learner < email, "most frequent first:\n{text}");
        assert!(text.contains("- rows 2, 3, 4, 5, 6 and 3 more"), "{text}");
        assert_eq!(msg.attachments().count(), 3, "result, failed rows, problems");
        assert!(text.contains("Attached: the result (every row with its Status and Message); the failed rows, to fix and upload again; the problems, each kind once with its rows."), "{text}");
        assert!(html.contains(">2 applied, 12 need fixing</h1>") && html.contains("What to fix"), "{html}");
        assert!(html.contains("&lt;b&gt;Boss&lt;/b&gt;") && !html.contains("<b>Boss</b>"), "escaped");
        assert!(
            html.contains(crate::layout::DEFAULT_COLOUR) && html.contains(">acme</span>"),
            "no branding: the tenant's id, default colour"
        );
        assert!(!html.contains("<img"), "no images without a logo");

        // Branded.
        let mut tenant = kit.svc.directory.tenant("acme").await.unwrap().unwrap();
        tenant.branding.product_name = Some("Acme Learning".into());
        tenant.branding.colour = Some("#7b1fa2".into());
        tenant.branding.logo_url = Some("https://cdn.acme.example/logo.png".into());
        kit.svc.directory.put_tenant(&tenant).await.unwrap();
        kit.run("ok.csv", "Email\nfine@acme.example.com\n").await;
        let (_, _, raw) = kit.mem.mailer.sent().last().unwrap().clone();
        let msg = mail_parser::MessageParser::default().parse(&raw).unwrap();
        let html = msg.body_html(0).unwrap().to_string();
        assert!(
            html.contains("#7b1fa2") && html.contains("<img src=\"https://cdn.acme.example/logo.png\" alt=\"Acme Learning\""),
            "{html}"
        );
        assert!(html.contains(">All 1 row applied</h1>"), "{html}");
        assert!(msg.body_text(0).unwrap().replace("\r\n", "\n").starts_with("All 1 row applied\n"));
    }

    fn outcomes_file(dir: &Path, outcomes: &[Outcome]) -> PathBuf {
        let path = dir.join("outcomes");
        let mut body = Vec::new();
        for o in outcomes {
            serde_json::to_writer(&mut body, o).unwrap();
            body.push(b'\n');
        }
        std::fs::write(&path, body).unwrap();
        path
    }

    /// A sheet named for its users' type (`Students`) without a Type column: its failed-rows
    /// workbook writes the type as a Type column, so the rows keep it when a spreadsheet saves
    /// that workbook as CSV (the sheet name gone, the users were created without their type,
    /// and nothing said so). Dropped again as it is, sheet and column agree.
    #[test]
    fn a_sheet_s_user_type_survives_its_failed_rows_saved_as_csv() {
        let mut book = rust_xlsxwriter::Workbook::new();
        let ws = book.add_worksheet();
        ws.set_name("Students").unwrap();
        for (r, row) in [["Email", "RoleName"], ["a@x.example.com", "learner"], ["b@x.example.com", "Learner"]].iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                ws.write_string(r as u32, c as u16, *v).unwrap();
            }
        }
        let input = book.save_to_buffer().unwrap();
        let outcomes = vec![Outcome::failure(2, Some(Action::Upsert), "unknown role"), Outcome::success(3, Action::Upsert, "user created")];
        let (_dir, files) = built(&input, "school.xlsx", &outcomes);
        let failed = std::fs::read(files.failed.expect("a row failed").path).unwrap();
        let table = crate::ingest::decode::decode_all(&failed).unwrap().remove(0);
        assert_eq!(table.headers, ["Email", "RoleName", "Type", "Message"]);
        assert_eq!(table.rows[0].1, ["a@x.example.com", "learner", "Student", "unknown role"]);
        let mut tenant = crate::model::Tenant::new("acme", vec!["a@acme.example.com".into()]);
        tenant.roles = vec!["Learner".into()];
        let user_type = |bytes: &[u8]| {
            let p = crate::ingest::prepare(bytes, &tenant, crate::model::Mode::Upsert).unwrap();
            match &p.ops[0].target {
                crate::model::Target::User { fields, .. } => fields.user_type.clone(),
                other => panic!("{other:?}"),
            }
        };
        // Saved as CSV by a spreadsheet (the sheet name gone), the role fixed.
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(&table.headers).unwrap();
        w.write_record(["a@x.example.com", "Learner", "Student", "unknown role"]).unwrap();
        assert_eq!(user_type(&w.into_inner().unwrap()), Some("Student".to_string()));
        assert_eq!(user_type(&input).as_deref(), Some("Student"), "as the original read it");
    }

    fn built(input: &[u8], name: &str, outcomes: &[Outcome]) -> (tempfile::TempDir, BuiltFiles) {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        std::fs::write(&source, input).unwrap();
        let o = outcomes_file(dir.path(), outcomes);
        let files = build(&source, &[o], dir.path(), name, None, None).unwrap();
        (dir, files)
    }

    /// A file named in Thai, CJK or emoji (100 characters are 300 to 400 bytes) gets its result
    /// files, named after the whole characters of its name's first 150 bytes. Before, the build
    /// failed on Linux's 255-byte file names, and the job never got its email.
    #[test]
    fn a_long_name_in_any_script_gets_its_result_files() {
        let input = b"Email,RoleName\na@x.example.com,learner\nb@x.example.com,Learner\n";
        let outcomes = vec![Outcome::failure(2, Some(Action::Upsert), "unknown role"), Outcome::success(3, Action::Upsert, "user created")];
        let names = [
            format!("{} ภาคเรียนที่ 2.csv", "รายชื่อนักเรียนโรงเรียน".repeat(5)),
            format!("{}.csv", "生徒名簿".repeat(40)),
            format!("{}.csv", "🧑\u{200d}🎓".repeat(40)),
        ];
        for name in names {
            let (_dir, files) = built(input, &name, &outcomes);
            let failed = files.failed.expect("a row failed");
            for built in [&files.result, &failed] {
                let file = built.path.file_name().unwrap().to_str().unwrap();
                assert!(file.len() <= 255 && built.path.exists(), "{file}");
                let stem = build::stem(&name);
                assert!(name.starts_with(&stem) && stem.len() <= build::MAX_STEM_BYTES && stem.len() > 100, "{stem}");
                assert!(built.name.starts_with(&stem), "{}", built.name);
            }
        }
    }

    /// The failed-records bundle of a failed-records bundle has the first's name, however long
    /// the name (46 CJK characters: 138 bytes, the suffix past the 150-byte cut).
    #[test]
    fn failed_records_bundles_keep_their_name_through_the_loop() {
        for first in [format!("{}.zip", "名".repeat(46)), "roster.zip".to_string(), format!("{}.zip", "r".repeat(140))] {
            let stem = failed_records_stem(&first);
            let again = format!("{stem}-failed-records.zip");
            assert_eq!(failed_records_stem(&again), stem, "{first}");
            assert!(again.len() <= 255);
        }
    }

    /// A workbook result ends with a "Problems" sheet (the failures grouped by kind); a result
    /// workbook dropped again is read without it.
    #[test]
    fn a_workbook_result_ends_with_a_problems_sheet_that_a_second_drop_ignores() {
        let mut book = rust_xlsxwriter::Workbook::new();
        let ws = book.add_worksheet().set_name("Staff").unwrap();
        for (r, row) in
            [["Email", "RoleName"], ["a@x.example.com", "learner"], ["b@x.example.com", "learner"], ["c@x.example.com", "Learner"]]
                .iter()
                .enumerate()
        {
            for (c, v) in row.iter().enumerate() {
                ws.write_string(r as u32, c as u16, *v).unwrap();
            }
        }
        let input = book.save_to_buffer().unwrap();
        let bad =
            |row| Outcome { column: Some("RoleName".into()), ..Outcome::failure(row, Some(Action::Upsert), "unknown role \"learner\"") };
        let outcomes = vec![bad(2), bad(3), Outcome::success(4, Action::Upsert, "user created")];
        let (_dir, files) = built(&input, "staff.xlsx", &outcomes);
        assert!(files.problems.is_none(), "a workbook has the sheet, not a file");
        let bytes = std::fs::read(&files.result.path).unwrap();
        let all = crate::ingest::decode::decode_all(&bytes).unwrap();
        let names: Vec<Option<String>> = all.iter().map(|t| t.sheet.clone()).collect();
        assert_eq!(names, [Some("Staff".to_string()), Some("Problems".to_string())]);
        let problems = &all[1];
        assert_eq!(problems.headers, ["Rows", "Problem and fix", "Column", "Where"]);
        assert_eq!(problems.rows[0].1, ["2", "unknown role \"learner\"", "RoleName", "rows 2, 3"]);
        let again = crate::ingest::sheets::tables(&bytes).unwrap();
        assert_eq!(again.iter().map(|t| t.sheet.clone()).collect::<Vec<_>>(), [Some("Staff".to_string())], "dropped again: rows only");
    }

    #[test]
    fn csv_result_keeps_input_order_and_failed_rows_keep_the_input_delimiter() {
        let outcomes = vec![
            Outcome::success(2, Action::Upsert, "user created"),
            Outcome::failure(3, Some(Action::Upsert), "Email \"bad\" is not a valid email address"),
        ];
        let (_dir, files) = built(b"Email;FirstName\na@x.com;=cmd\nbad;B\n", "spring.csv", &outcomes);
        let text = std::fs::read_to_string(&files.result.path).unwrap();
        assert_eq!(files.result.name, "spring-result.csv");
        assert_eq!(
            text.trim_start_matches('\u{feff}').lines().collect::<Vec<_>>(),
            vec![
                "Email,FirstName,Status,Message,Changes,UserId",
                "a@x.com,\"=\"\"=cmd\"\"\",Success,user created,,",
                "bad,B,Failure,\"Email \"\"bad\"\" is not a valid email address\",,"
            ]
        );
        let failed = files.failed.unwrap();
        assert_eq!(failed.name, "spring-failed-rows.csv");
        let text = std::fs::read_to_string(&failed.path).unwrap();
        assert!(text.contains("Email;FirstName;Message\nbad;B;"), "{text}");
        assert_eq!((files.digest.counts.success, files.digest.counts.failure, files.digest.rows), (1, 1, 2));
    }

    #[test]
    fn no_failed_rows_file_when_nothing_failed_and_a_row_without_outcome_is_reported_not_dropped() {
        let (_dir, files) = built(b"Email\na@x.com\n", "r.csv", &[Outcome::success(2, Action::Create, "user created")]);
        assert!(files.failed.is_none());
        let (_dir, files) = built(b"Email\na@x.com\nb@x.com\n", "r.csv", &[Outcome::success(2, Action::Create, "user created")]);
        assert_eq!(files.digest.first_failures, vec![(3, build::NO_OUTCOME.to_string())]);
    }
}
