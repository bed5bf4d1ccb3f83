//! Holds: a file whose changes pass the tenant's thresholds (`model::Holds`) is read and
//! previewed with nothing applied, and waits as HELD for an admin. Approving releases the plan
//! ingest made (the conditional writes still decide each row); discarding, or the tenant's time
//! running out, ends it with nothing applied. Replace mode's safeguard is the remove threshold.
//!
//! The preview runs in ingest, from the operations it just wrote, and only when the file's upper
//! bounds (its Delete/Disable rows and replace mode's absent users; its update rows) could pass a
//! threshold against the tenant's active users, counted only as far as that question needs.

use crate::changes::ChangeCounts;
use crate::error::{Error, Result};
use crate::finalize::build::{self, Built, Flavour};
use crate::ingest::stream::Spill;
use crate::ingest::validate::RowValidator;
use crate::keys;
use crate::model::{EmailKind, Holds, Job, JobState, Mode, PHASES, RowOp, Status, Tenant};
use crate::report::{self, Summary};
use crate::services::Services;
use crate::wire::parse_jsonl;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use tracing::{info, warn};

/// Active users worth counting before previewing: a tenant with at least this many cannot see
/// either threshold passed by a file of these bounds. `None`: no hold is possible at all.
pub fn count_needed(h: &Holds, may_remove: u64, may_update: u64) -> Option<u64> {
    let need = |bound: u64, pct: u8| (pct > 0 && bound >= u64::from(h.min_users)).then(|| (bound * 100).div_ceil(u64::from(pct)));
    need(may_remove, h.remove_percent).max(need(may_update, h.update_percent))
}

/// Why a file that would make `would` changes among `active` users is held, if it is.
pub fn reason(h: &Holds, active: u64, would: &ChangeCounts) -> Option<String> {
    let passes = |n: u64, pct: u8| pct > 0 && n >= u64::from(h.min_users) && n * 100 > u64::from(pct) * active;
    let share = |n: u64| n * 100 / active.max(1);
    let removed = u64::from(would.deleted) + u64::from(would.disabled);
    let updated = u64::from(would.updated);
    let mut why = Vec::new();
    if passes(removed, h.remove_percent) {
        why.push(format!(
            "would delete or disable {removed} of {active} active users ({}%), more than this tenant's limit of {}%",
            share(removed),
            h.remove_percent
        ));
    }
    if passes(updated, h.update_percent) {
        why.push(format!(
            "would update {updated} of {active} active users ({}%), more than this tenant's limit of {}%",
            share(updated),
            h.update_percent
        ));
    }
    (!why.is_empty()).then(|| why.join(", and "))
}

/// Ingest, once the file is read: the tenant's active users when the file may be held (a
/// preview is needed), `None` when it cannot be. `active`: already known (replace mode listed them).
pub async fn may_hold(svc: &Services, tenant: &Tenant, mode: Mode, spill: &Spill, active: Option<u64>) -> Result<Option<u64>> {
    if matches!(mode, Mode::Validate | Mode::ReplaceForce) {
        return Ok(None); // a dry run already, or forced by whoever dropped it there
    }
    let Some(needed) = count_needed(&tenant.holds, spill.may_remove, spill.may_update) else { return Ok(None) };
    let active = match active {
        Some(a) => a,
        None => svc.directory.count_active_users(&tenant.id, needed).await?,
    };
    Ok((active < needed).then_some(active))
}

/// What a file would change, one outcome file per phase (each a sorted run, as finalize merges
/// them), predicted chunk by chunk from the operations ingest wrote, nothing written.
pub struct Preview {
    pub counts: ChangeCounts,
    pub files: Vec<PathBuf>,
}

pub async fn preview(
    svc: &Services,
    job: &Job,
    tenant: &Tenant,
    spill: &Spill,
    validator: &RowValidator,
    chunk_size: usize,
    dir: &Path,
) -> Result<Preview> {
    let mut out = Preview { counts: ChangeCounts::default(), files: Vec::new() };
    let local = |e: std::io::Error| Error::local("writing the preview", e);
    for phase in (0..PHASES).filter(|&p| spill.counts[p] > 0) {
        let path = dir.join(format!("preview-{phase}.jsonl"));
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).map_err(local)?);
        for body in spill.chunks(phase, chunk_size, validator).map_err(local)? {
            let ops: Vec<RowOp> = parse_jsonl("chunk", &body.map_err(local)?)?;
            for o in crate::apply::preview_ops(svc, job, tenant, ops).await? {
                if let (Status::Success, Some(c)) = (o.status, o.change) {
                    out.counts.add(c);
                }
                serde_json::to_writer(&mut file, &o).map_err(|e| local(std::io::Error::other(e)))?;
                file.write_all(b"\n").map_err(local)?;
            }
        }
        file.flush().map_err(local)?;
        out.files.push(path);
    }
    Ok(out)
}

/// Hold the job: its preview files (only the rows that would change, and who would be disabled)
/// stored with its summary, one email with them and how to approve or discard, then HELD.
/// The email goes before the state: an invocation retried after a crash finds it claimed.
#[allow(clippy::too_many_arguments)]
pub async fn hold(
    svc: &Services,
    job: &Job,
    tenant: &Tenant,
    why: &str,
    source: &Path,
    outcome_files: Vec<PathBuf>,
    preview: Preview,
    dir: &Path,
) -> Result<()> {
    let counts = preview.counts;
    let (_, stored) = store_preview(svc, job, tenant, JobState::Held, why, source, outcome_files, preview, dir, Flavour::Preview).await?;
    email_once(svc, job, tenant, &stored, |links| held_email(tenant, job, why, &counts, links)).await?;
    svc.jobs.transition(&job.id, JobState::Received, JobState::Held, Some(why)).await?;
    info!(job = %job.id, tenant = %tenant.id, reason = why, "job held for approval");
    Ok(())
}

/// A previewed job's files, built as `flavour` from the file and its predicted outcomes, stored
/// under its results with its summary (`state`, `reason`): what its one email attaches.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn store_preview(
    svc: &Services,
    job: &Job,
    tenant: &Tenant,
    state: JobState,
    reason: &str,
    source: &Path,
    mut outcome_files: Vec<PathBuf>,
    preview: Preview,
    dir: &Path,
    flavour: Flavour,
) -> Result<(Summary, Vec<(Built, String)>)> {
    outcome_files.extend(preview.files);
    let (src, out_dir, name) = (source.to_path_buf(), dir.join("preview"), job.file_name.clone());
    let id_column = tenant.external_id_column.clone();
    std::fs::create_dir_all(&out_dir).map_err(|e| Error::local("preview directory", e))?;
    let built =
        tokio::task::spawn_blocking(move || build::build_as(&src, &outcome_files, &out_dir, &name, id_column.as_deref(), None, flavour))
            .await
            .map_err(|e| Error::local("building the preview", e))??;
    let prefix = keys::results_prefix(&job.tenant, &job.id);
    let mut summary = Summary::new(job, state);
    summary.reason = Some(reason.to_string());
    summary.rows = built.digest.rows;
    summary.counts = built.digest.counts.clone();
    summary.counts.changes = preview.counts;
    let mut stored = Vec::new();
    for (file, slot) in [
        (Some(&built.result), &mut summary.result_key),
        (built.failed.as_ref(), &mut summary.failed_rows_key),
        (built.disabled.as_ref(), &mut summary.disabled_users_key),
    ] {
        let Some(file) = file else { continue };
        let key = format!("{prefix}{}", file.name);
        svc.store.put_file(&key, &file.path, file.content_type).await?;
        *slot = Some(key.clone());
        stored.push((file.clone(), key));
    }
    svc.store.put(&format!("{prefix}summary.json"), report::pretty(&summary)?, "application/json").await?;
    Ok((summary, stored))
}

/// The job's one email about its preview (a hold or a schedule), with `files` attached or, past
/// the attachment limit, linked: `compose` gets the links and writes subject, text and HTML.
pub(crate) async fn email_once(
    svc: &Services,
    job: &Job,
    tenant: &Tenant,
    files: &[(Built, String)],
    compose: impl FnOnce(&[(String, String)]) -> (String, String, String),
) -> Result<()> {
    if svc.jobs.claim_email(&job.id, EmailKind::Held, svc.config.lease).await? {
        let sent = async {
            let (attachments, links) = crate::finalize::attach_or_link(svc, files).await?;
            let (subject, text, html) = compose(&links);
            report::send_to(svc, &report::sender(svc, tenant), &tenant.admin_emails, &subject, &text, &html, &attachments).await
        };
        report::unclaim_unsent(svc, &job.id, EmailKind::Held, sent.await).await?;
        svc.jobs.mark_email_sent(&job.id, EmailKind::Held).await?;
    }
    Ok(())
}

fn held_email(tenant: &Tenant, job: &Job, why: &str, would: &ChangeCounts, links: &[(String, String)]) -> (String, String, String) {
    let (t, id) = (&tenant.id, &job.id);
    let h = &tenant.holds;
    let until = chrono::DateTime::parse_from_rfc3339(&job.received_at)
        .map(|r| (r + chrono::Duration::days(i64::from(h.expire_days))).format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default();
    let file = crate::wording::file_label(&job.file_name);
    let subject = format!("[rosterdrop] {t}: {file} is HELD for approval, nothing applied");
    let mut text = format!(
        "Your file {file} was read and nothing in it was applied: it {why}.\n\n\
         If applied: {changes}.\n\n\
         The attached preview lists every row that would change, with its Changes{disabled}.\n\n\
         To apply it as it is: rosterdrop approve {id}\n  or, in the S3 console, upload an empty file named {id} to incoming/{t}/approve/\n\
         To discard it: rosterdrop discard {id}\n  or upload an empty file named {id} to incoming/{t}/discard/\n\n\
         Unless approved, it is discarded on {until} ({days} days after it arrived). Approving applies the file as read; \
         a user changed since then by another upload is reported, not overwritten.\n",
        changes = would.words(),
        disabled = if would.disabled > 0 { "; would-be-disabled.csv lists who would be disabled" } else { "" },
        days = h.expire_days,
    );
    for (name, url) in links {
        text += &crate::wording::link_line(name, url, id);
    }
    text += &format!("\nJob: {id}\n");
    let html = crate::layout::text_page(tenant, &subject, &text);
    (subject, text, html)
}

/// An admin's decision on a held job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Approve,
    Discard,
    /// Not a hold: undo a finished job (`undo`), from the same console folders.
    Undo,
    /// Not a hold: cancel a scheduled file (`schedule`).
    Cancel,
}

impl Verb {
    /// The folder under `incoming/<tenant>/` that carries the decision from the S3 console.
    pub fn parse(folder: &str) -> Option<Verb> {
        match folder.to_ascii_lowercase().as_str() {
            "approve" => Some(Verb::Approve),
            "discard" => Some(Verb::Discard),
            "undo" => Some(Verb::Undo),
            "cancel" => Some(Verb::Cancel),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Approve => "approve",
            Verb::Discard => "discard",
            Verb::Undo => "undo",
            Verb::Cancel => "cancel",
        }
    }
}

/// Whether `verb` may be done to job `id` now: the job, or the one line saying why not (nothing
/// is changed by asking). `tenant`: the job must be this tenant's.
pub async fn check(svc: &Services, id: &str, tenant: Option<&str>, verb: Verb) -> Result<std::result::Result<Job, String>> {
    let id = id.trim();
    if verb == Verb::Undo {
        return crate::undo::check(svc, id, tenant).await;
    }
    let Some(job) = svc.jobs.get(id).await? else {
        let email = if verb == Verb::Cancel { "scheduled" } else { "held" };
        return Ok(Err(format!("no job {id}: check the id in the {email} email or `rosterdrop status`")));
    };
    if tenant.is_some_and(|t| !t.eq_ignore_ascii_case(&job.tenant)) {
        return Ok(Err(format!("job {id} belongs to another tenant; nothing changed")));
    }
    if verb == Verb::Cancel {
        return Ok(match job.state {
            JobState::Scheduled => Ok(job),
            other => Err(format!("job {id} is {}, not scheduled; nothing changed", other.as_str())),
        });
    }
    Ok(match job.state {
        JobState::Held => Ok(job),
        JobState::Received => Err(format!("job {id} is still being read; it can be approved or discarded once it is HELD")),
        JobState::Discarded => Err(format!("job {id} was discarded already; nothing applied. Upload the file again to start over")),
        other => Err(format!(
            "job {id} is {}, not held: it was {} already; nothing changed",
            other.as_str(),
            if other == JobState::Rejected { "rejected" } else { "approved or never held" }
        )),
    })
}

/// Approve, discard or undo (`undo::start`) job `id`. `Ok(Ok(line))`: done; `Ok(Err(line))`:
/// refused, nothing changed, the line says why. `by` says who, for the job's message.
pub async fn decide(svc: &Services, id: &str, tenant: Option<&str>, verb: Verb, by: &str) -> Result<std::result::Result<String, String>> {
    let id = id.trim();
    if verb == Verb::Undo {
        return crate::undo::start(svc, id, tenant, by).await;
    }
    let job = match check(svc, id, tenant, verb).await? {
        Ok(job) => job,
        Err(line) => return Ok(Err(line)),
    };
    match verb {
        Verb::Approve => {
            if !svc.jobs.transition(id, JobState::Held, JobState::Applying, Some(&format!("approved by {by}"))).await? {
                return Ok(Err(format!("job {id} changed meanwhile; nothing done (see `rosterdrop status`)")));
            }
            let plan = job.phase_chunks.unwrap_or_default();
            crate::ingest::release_first_phase(svc, id, &plan).await?;
            info!(job = %id, by, "held job approved");
            Ok(Ok(format!("job {id} approved: {} is being applied; the result email follows", crate::wording::file_label(&job.file_name))))
        }
        Verb::Discard | Verb::Cancel | Verb::Undo => {
            let (done, why) = match verb {
                Verb::Cancel => ("cancelled", format!("cancelled by {by}; nothing was applied")),
                _ => ("discarded", format!("discarded by {by}; nothing was applied")),
            };
            if discard(svc, &job, &why).await? {
                Ok(Ok(format!("job {id} {done}: nothing in {} was applied", crate::wording::file_label(&job.file_name))))
            } else {
                Ok(Err(format!("job {id} changed meanwhile; nothing done (see `rosterdrop status`)")))
            }
        }
    }
}

/// HELD (or SCHEDULED) -> DISCARDED, one email saying so, then its summary. `false`: it was no
/// longer held. The email goes before the state moves, as the held email does: a send that fails
/// leaves the job held (its claim freed), so the expiry sweep or the admin's retry does it all
/// again. Moved first, a failed send left the job DISCARDED and nobody told, and nothing retried.
pub(crate) async fn discard(svc: &Services, job: &Job, why: &str) -> Result<bool> {
    if svc.jobs.get(&job.id).await?.is_none_or(|now| now.state != job.state) {
        return Ok(false);
    }
    let mut told = false;
    // A tenant removed, or whose settings no longer read, is told through the default admins.
    if let Some(tenant) = report::tenant_to_tell(svc, &job.tenant).await?
        && svc.jobs.claim_email(&job.id, EmailKind::Result, svc.config.lease).await?
    {
        // The subject says what the body says: a cancelled schedule was "discarded" in one.
        let done = if why.starts_with("cancelled") { "cancelled" } else { "discarded" };
        let file = crate::wording::file_label(&job.file_name);
        let subject = format!("[rosterdrop] {}: {file} was {done}, nothing was applied", tenant.id);
        let text = format!(
            "Your file {file} was {} and has been {why}.\n\nUpload it again to start over.\n\nJob: {}\n",
            if job.state == JobState::Scheduled { "scheduled" } else { "held for approval" },
            job.id
        );
        let html = crate::layout::text_page(&tenant, &subject, &text);
        let sent = report::send_to(svc, &report::sender(svc, &tenant), &tenant.admin_emails, &subject, &text, &html, &[]).await;
        report::unclaim_unsent(svc, &job.id, EmailKind::Result, sent).await?;
        told = true;
    }
    if !svc.jobs.transition(&job.id, job.state, JobState::Discarded, Some(why)).await? {
        return Ok(false);
    }
    if told {
        svc.jobs.mark_email_sent(&job.id, EmailKind::Result).await?;
    }
    let mut summary = Summary::new(job, JobState::Discarded);
    summary.reason = Some(why.to_string());
    let prefix = keys::results_prefix(&job.tenant, &job.id);
    svc.store.put(&format!("{prefix}summary.json"), report::pretty(&summary)?, "application/json").await?;
    info!(job = %job.id, why, "held job discarded");
    Ok(true)
}

/// The scheduled sweep: held jobs not approved within their tenant's `holds.expire_days` are
/// discarded, each with its email. Returns how many.
pub async fn discard_expired(svc: &Services, now: chrono::DateTime<chrono::Utc>) -> Result<usize> {
    let mut discarded = 0;
    for (id, received_at) in svc.jobs.held_jobs(50).await? {
        // One job that cannot be read must not keep every other tenant's from expiring.
        let job = match svc.jobs.get(&id).await {
            Ok(Some(job)) => job,
            Ok(None) => continue,
            Err(e) => {
                warn!(job = %id, error = %e, "a held job could not be read; the next sweep retries");
                continue;
            }
        };
        let days = match svc.directory.tenant(&job.tenant).await {
            Ok(Some(t)) => t.holds.expire_days,
            Ok(None) => Holds::default().expire_days,
            // A throttle is no reason to guess: the default days could discard a job days early.
            Err(e) if e.is_retryable() => {
                warn!(job = %id, error = %e, "tenant settings not read; the next sweep retries");
                continue;
            }
            Err(e) => {
                warn!(job = %id, tenant = %job.tenant, error = %e, "tenant settings unreadable; its held job expires after the default days");
                Holds::default().expire_days
            }
        };
        let Ok(received) = chrono::DateTime::parse_from_rfc3339(&received_at) else { continue };
        if received.to_utc() + chrono::Duration::days(i64::from(days)) > now {
            continue; // another tenant's older job may have a shorter time: look at all 50
        }
        let why = format!("not approved within {days} days, so discarded; nothing was applied");
        match discard(svc, &job, &why).await {
            Ok(true) => discarded += 1,
            Ok(false) => {}
            Err(e) => warn!(job = %id, error = %e, "discarding an expired held job failed; the next sweep retries"),
        }
    }
    Ok(discarded)
}

/// A decision dropped in the S3 console (`incoming/<tenant>/approve/<job id>`): applied once per
/// drop, its outcome emailed to the tenant's admins in one line.
///
/// A marker records how far the drop got, so a retry after a failure resumes instead of finding
/// the drop "handled" (the decision, or only its email, was lost): `claimed <time>` while deciding
/// (a duplicate event meanwhile is retried later; a claim older than `DECISION_LEASE` was cut off
/// and is taken over), `free` after the decision failed (the retry decides again), `decided` with
/// the outcome line once decided (the retry sends it), `sent` once told.
pub async fn from_console(svc: &Services, obj: &crate::event::ObjectRef, tenant: &Tenant, verb: Verb, file_name: &str) -> Result<()> {
    let marker = format!("{}control/{}", keys::STAGED, crate::ingest::job_id(obj));
    let id = Path::new(file_name).file_stem().and_then(|s| s.to_str()).unwrap_or(file_name).trim();
    let now = chrono::Utc::now();
    let claim = || format!("claimed {}", now.to_rfc3339()).into_bytes();
    let mut resumed = false;
    if !svc.store.put_if_absent(&marker, claim(), "text/plain").await? {
        let state = svc.store.get(&marker).await?.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        if let Some(line) = state.strip_prefix("decided\n") {
            return tell_decision(svc, obj, tenant, verb, id, &marker, line).await;
        }
        let claimed_at = state.strip_prefix("claimed ").and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        match claimed_at {
            Some(at) if now - at.to_utc() < DECISION_LEASE => {
                // Another invocation is deciding (or died doing so): look again later.
                return Err(crate::error::Error::Transient {
                    service: "holds",
                    operation: "console decision",
                    message: "the same drop is being decided; retried".into(),
                });
            }
            Some(_) => warn!(key = %obj.key, "a console decision was cut off midway; deciding again"),
            None if state == "free" => {}
            None => {
                info!(key = %obj.key, "decision already handled (duplicate event)");
                return Ok(());
            }
        }
        svc.store.put(&marker, claim(), "text/plain").await?;
        resumed = true;
    }
    let by = format!("a file dropped at {}", crate::wording::file_label(&obj.key));
    let decided = match decide(svc, id, Some(&tenant.id), verb, &by).await {
        Ok(decided) => decided,
        Err(e) => {
            svc.store.put(&marker, b"free".to_vec(), "text/plain").await?;
            return Err(e);
        }
    };
    // A discard or cancel that went through was told by the job's own email ("was discarded",
    // "was cancelled"): a second one confirming the drop said the same again.
    let told = matches!((&decided, verb), (Ok(_), Verb::Discard | Verb::Cancel));
    let line = match decided {
        Ok(line) => line,
        // A retry whose first try got the decision through before failing: the job is where the
        // decision put it.
        Err(_) if resumed && decided_already(svc, id, verb).await? => format!("job {id}: {} done", verb.as_str()),
        Err(line) => format!("{} refused: {line}", verb.as_str()),
    };
    info!(key = %obj.key, outcome = %line, "decision from the console");
    if told {
        return svc.store.put(&marker, format!("sent\n{line}").into_bytes(), "text/plain").await;
    }
    svc.store.put(&marker, format!("decided\n{line}").into_bytes(), "text/plain").await?;
    tell_decision(svc, obj, tenant, verb, id, &marker, &line).await
}

/// How long a console decision may take before its claim is taken over: deciding is a few
/// requests, and Lambda's retries come about one and three minutes after a failure.
const DECISION_LEASE: chrono::Duration = chrono::Duration::seconds(120);

/// Whether job `id` is where `verb` puts a held job.
async fn decided_already(svc: &Services, id: &str, verb: Verb) -> Result<bool> {
    let state = svc.jobs.get(id).await?.map(|j| j.state);
    Ok(match verb {
        Verb::Approve => matches!(state, Some(JobState::Applying | JobState::Completed | JobState::Failed)),
        Verb::Discard | Verb::Cancel => state == Some(JobState::Discarded),
        Verb::Undo => false,
    })
}

/// The console decision's one-line email, then the marker saying it went.
async fn tell_decision(
    svc: &Services,
    obj: &crate::event::ObjectRef,
    tenant: &Tenant,
    verb: Verb,
    id: &str,
    marker: &str,
    line: &str,
) -> Result<()> {
    let subject = format!("[rosterdrop] {}: {} {}", tenant.id, verb.as_str(), crate::wording::bounded(id, 64));
    let text = format!("{line}.\n\n(From the file {}.)\n", crate::wording::file_label(&obj.key));
    let html = crate::layout::text_page(tenant, &subject, &text);
    report::send_to(svc, &report::sender(svc, tenant), &tenant.admin_emails, &subject, &text, &html, &[]).await?;
    svc.store.put(marker, format!("sent\n{line}").into_bytes(), "text/plain").await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::Kit;

    async fn seeded(n: usize) -> Kit {
        let mut kit = Kit::new(|_| {}).await;
        let body: String = (0..n).fold("Email,Department\n".into(), |b, i| b + &format!("u{i}@acme.example.com,Sales\n"));
        assert_eq!(kit.run("seed.csv", &body).await.state, JobState::Completed);
        kit
    }

    /// Deletes of 10 of 30 users (33%, more than 10%): the file is read and previewed, nothing
    /// applied, one email with the preview; approval applies exactly that plan.
    fn mass_delete() -> String {
        let mut body = String::from("Action,Email,Department\n");
        for i in 0..10 {
            body += &format!("Delete,u{i}@acme.example.com,\n");
        }
        body += "Update,u10@acme.example.com,Support\nUpdate,u11@acme.example.com,Sales\n";
        body
    }

    /// A held email or a rejection whose send fails (SES past its retries) is sent by the
    /// retried invocation. Before, the retry found the claim fresh, skipped the send, and the job
    /// ended HELD or REJECTED with no email.
    #[tokio::test]
    async fn a_held_or_rejected_email_whose_send_failed_is_sent_by_the_retry() {
        let mut kit = seeded(30).await;
        for (name, body, state) in
            [("cleanup.csv", mass_delete(), JobState::Held), ("nomail.csv", "Name\nAnn\n".into(), JobState::Rejected)]
        {
            let mails = kit.mem.mailer.sent().len();
            let obj = kit.upload(name, &body);
            *kit.mem.mailer.throttle_next.lock().unwrap() = 1;
            assert!(crate::route::dispatch(&kit.svc, &obj).await.is_err(), "{name}: the send failed, the invocation is retried");
            assert_eq!(kit.mem.mailer.sent().len(), mails);
            kit.deliver(&obj).await; // Lambda's retry
            assert_eq!(kit.mem.mailer.sent().len(), mails + 1, "{name}: sent by the retry");
            assert!(kit.last_mail().contains(name), "{name}");
            let job = kit.svc.jobs.get(&crate::ingest::job_id(&obj)).await.unwrap().unwrap();
            assert_eq!(job.state, state, "{name}");
        }
    }

    /// An approval dropped in the S3 console whose email failed: the retry found the drop
    /// "handled" and the admins never heard. The marker now records the decision, the retry
    /// sends its line (not a refusal: the job is approved), and a duplicate event sends nothing.
    #[tokio::test]
    async fn a_console_decision_whose_email_failed_is_told_by_the_retry_once() {
        let mut kit = seeded(30).await;
        let job = kit.run("cleanup.csv", &mass_delete()).await;
        assert_eq!(job.state, JobState::Held);
        let mails = kit.mem.mailer.sent().len();
        let obj = kit.upload(&format!("approve/{}", job.id), "");
        *kit.mem.mailer.throttle_next.lock().unwrap() = 1;
        assert!(crate::route::dispatch(&kit.svc, &obj).await.is_err(), "the send failed: retried");
        assert_eq!(kit.svc.jobs.get(&job.id).await.unwrap().unwrap().state, JobState::Applying, "decided once");
        kit.deliver(&obj).await; // Lambda's retry
        assert_eq!(kit.mem.mailer.sent().len(), mails + 1);
        let text = kit.last_mail();
        assert!(text.contains(&format!("job {} approved", job.id)), "{text}");
        kit.deliver(&obj).await; // a duplicate event
        assert_eq!(kit.mem.mailer.sent().len(), mails + 1, "told once");
        kit.settle().await;
        assert_eq!(kit.svc.jobs.get(&job.id).await.unwrap().unwrap().state, JobState::Completed);

        // A decision whose invocation died while deciding (its claim left behind): a retry while
        // the claim is young is retried later; once it is older than the lease, it decides.
        let mut kit = seeded(30).await;
        let held = kit.run("cleanup-2.csv", &mass_delete()).await;
        assert_eq!(held.state, JobState::Held);
        let mails = kit.mem.mailer.sent().len();
        let obj = kit.upload(&format!("discard/{}", held.id), "");
        let marker = format!("{}control/{}", keys::STAGED, crate::ingest::job_id(&obj));
        let claimed = |ago: i64| format!("claimed {}", (chrono::Utc::now() - chrono::Duration::seconds(ago)).to_rfc3339()).into_bytes();
        kit.svc.store.put(&marker, claimed(10), "text/plain").await.unwrap();
        let young = crate::route::dispatch(&kit.svc, &obj).await.unwrap_err();
        assert!(young.is_retryable(), "{young}");
        assert_eq!(kit.svc.jobs.get(&held.id).await.unwrap().unwrap().state, JobState::Held);
        kit.svc.store.put(&marker, claimed(180), "text/plain").await.unwrap();
        kit.deliver(&obj).await;
        assert_eq!(kit.svc.jobs.get(&held.id).await.unwrap().unwrap().state, JobState::Discarded);
        // One email: the discard's own says it was discarded, and by the file dropped (a second,
        // confirming the drop, said the same again).
        assert_eq!(kit.mem.mailer.sent().len(), mails + 1, "the discard's own email only");
        let text = kit.last_mail();
        assert!(text.contains("has been discarded by a file dropped at incoming/acme/discard/"), "{text}");
        kit.deliver(&obj).await; // a duplicate event
        assert_eq!(kit.mem.mailer.sent().len(), mails + 1, "told once");
    }

    /// A rejection SES refuses for good (not a throttle) keeps its claim: the job ends REJECTED at
    /// once rather than every retry sending, failing and leaving it open (the claim released on any
    /// failure did that, and the deadline sweep then failed on it every minute).
    #[tokio::test]
    async fn a_rejection_ses_refuses_for_good_ends_the_job_once() {
        let mut kit = Kit::new(|_| {}).await;
        let obj = kit.upload("nomail.csv", "Name\nAnn\n");
        *kit.mem.mailer.reject_next.lock().unwrap() = 5;
        crate::route::dispatch(&kit.svc, &obj).await.expect("answered, not retried");
        let job = kit.svc.jobs.get(&crate::ingest::job_id(&obj)).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Rejected);
        assert_eq!(*kit.mem.mailer.reject_next.lock().unwrap(), 4, "one send tried");
    }

    #[tokio::test]
    async fn a_mass_delete_is_held_with_its_preview_and_applied_exactly_on_approval() {
        let mut kit = seeded(30).await;
        let mails = kit.mem.mailer.sent().len();
        let job = kit.run("cleanup.csv", &mass_delete()).await;
        assert_eq!(job.state, JobState::Held);
        assert!(job.message.as_deref().unwrap().starts_with("would delete or disable 10 of 30 active users (33%)"), "{job:?}");
        let dir = kit.svc.directory.clone();
        assert!(dir.user("acme", "u0@acme.example.com").await.unwrap().is_some(), "nothing applied");
        assert_eq!(kit.mem.mailer.sent().len(), mails + 1, "one email");
        let text = kit.last_mail();
        assert!(text.contains("HELD for approval") && text.contains(&format!("rosterdrop approve {}", job.id)), "{text}");
        assert!(text.contains("incoming/acme/approve/"), "{text}");
        let raw = String::from_utf8_lossy(&kit.mem.mailer.sent().last().unwrap().2).to_string();
        assert!(raw.contains("filename=\"cleanup-preview.csv\""), "the preview is attached");
        // The preview: only the rows that would change, each with its Changes.
        let preview = kit.result(&job).await;
        assert_eq!(preview[0], ["Action", "Email", "Department", "Status", "Message", "Changes", "UserId"]);
        assert_eq!(preview.len(), 1 + 11, "10 deletes and 1 update; the unchanged row is left out");
        assert_eq!(preview[1][3..6], ["Deleted", "user would be deleted (preview: nothing was changed)", "Status: active -> deleted"]);
        assert_eq!(preview[11][5], "Department: \"Sales\" -> \"Support\"");
        let summary = kit.summary(&job).await;
        assert_eq!((summary.state, summary.counts.changes.deleted, summary.counts.changes.unchanged), (JobState::Held, 10, 1));

        let ok = decide(&kit.svc, &job.id, Some("acme"), Verb::Approve, "test").await.unwrap().unwrap();
        assert!(ok.starts_with(&format!("job {} approved", job.id)), "{ok}");
        kit.settle().await;
        let job = kit.svc.jobs.get(&job.id).await.unwrap().unwrap();
        assert_eq!((job.state, job.succeeded), (JobState::Completed, 12));
        assert!(dir.user("acme", "u0@acme.example.com").await.unwrap().is_none());
        assert_eq!(dir.user("acme", "u10@acme.example.com").await.unwrap().unwrap().fields.department.as_deref(), Some("Support"));
        assert_eq!(kit.outcomes(&job).await[0], ("Deleted".to_string(), "user deleted".to_string()));

        // Bad input: one clear line each, nothing changed.
        let again = decide(&kit.svc, &job.id, None, Verb::Approve, "test").await.unwrap().unwrap_err();
        assert!(again.contains("is COMPLETED, not held"), "{again}");
        let none = decide(&kit.svc, "no-such-job", None, Verb::Approve, "test").await.unwrap().unwrap_err();
        assert!(none.starts_with("no job no-such-job"), "{none}");
    }

    /// An approval cut off between the job's move to APPLYING and its chunks' release (the CLI
    /// stopped; a console approval's retry finds the job approved already), then a phase's
    /// release lost the same way: the scheduled sweep releases what is missing once the job has
    /// been open a lease, and the job completes as approved, with one result email. Before,
    /// nothing was applied until the deadline failed the job.
    #[tokio::test]
    async fn an_approval_or_a_phase_release_cut_off_midway_is_resumed_by_the_sweep() {
        use crate::monitor::resume_releases;
        let mut kit = seeded(30).await;
        let mut tenant = kit.svc.directory.tenant("acme").await.unwrap().unwrap();
        tenant.chunk_size = Some(3);
        kit.svc.directory.put_tenant(&tenant).await.unwrap();
        // An organization (its own phase, first), then the users' rows.
        let users = mass_delete().lines().skip(1).fold(String::new(), |b, line| b + &format!("User,{line},\n"));
        let body = format!("Type,Action,Email,Department,OrgName\nOrg,Create,,,North\n{users}");
        let job = kit.run("cleanup.csv", &body).await;
        assert_eq!(job.state, JobState::Held);
        let plan = job.phase_chunks.unwrap();
        let phases: Vec<usize> = (0..crate::model::PHASES).filter(|&p| plan[p] > 0).collect();
        assert_eq!(phases.len(), 2, "the organization, then the users: {plan:?}");
        let mails = kit.mem.mailer.sent().len();
        // Only the approval's first step: APPLYING, nothing released.
        assert!(kit.svc.jobs.transition(&job.id, JobState::Held, JobState::Applying, Some("approved by test")).await.unwrap());
        assert!(kit.pending_chunks().await.is_empty());
        let now = chrono::Utc::now();
        let later = now + chrono::Duration::seconds(kit.svc.config.lease.secs + 1);
        assert_eq!(resume_releases(&kit.svc, now).await.unwrap(), 0, "young: its release may still be under way");
        assert_eq!(resume_releases(&kit.svc, later).await.unwrap(), plan[phases[0]] as usize);
        assert_eq!(resume_releases(&kit.svc, later).await.unwrap(), 0, "released once");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await; // counted after the approval
        for chunk in kit.pending_chunks().await {
            kit.deliver(&chunk).await;
        }
        // The first phase's last chunk released the next; that release is lost.
        for seq in 0..plan[phases[1]] {
            let key = crate::keys::chunk(&job.id, phases[1], seq);
            assert!(kit.svc.store.size(&key).await.unwrap().is_some(), "{key}");
            kit.mem.store.remove(&key);
        }
        kit.settle().await;
        let stalled = kit.svc.jobs.get(&job.id).await.unwrap().unwrap();
        assert_eq!(stalled.state, JobState::Applying);
        // Left alone while its last count is younger than a lease (the release may be under way),
        // though the job was approved longer ago; released once it is not.
        let counted = chrono::DateTime::parse_from_rfc3339(stalled.counted_at.as_deref().unwrap()).unwrap().to_utc();
        let lease = chrono::Duration::seconds(kit.svc.config.lease.secs);
        assert_eq!(resume_releases(&kit.svc, counted + lease - chrono::Duration::milliseconds(5)).await.unwrap(), 0);
        assert_eq!(resume_releases(&kit.svc, counted + lease).await.unwrap(), plan[phases[1]] as usize);
        let later = counted + lease;
        kit.settle().await;
        let done = kit.svc.jobs.get(&job.id).await.unwrap().unwrap();
        assert_eq!((done.state, done.succeeded), (JobState::Completed, 13));
        assert!(kit.svc.directory.user("acme", "u0@acme.example.com").await.unwrap().is_none(), "applied as approved");
        assert!(kit.svc.directory.org_exists("acme", "North").await.unwrap());
        assert_eq!(kit.mem.mailer.sent().len(), mails + 1, "one result email");
        assert_eq!(resume_releases(&kit.svc, later).await.unwrap(), 0, "a finished job is left alone");
    }

    #[tokio::test]
    async fn approval_lets_the_conditional_writes_decide_a_user_changed_meanwhile() {
        let mut kit = seeded(30).await;
        let job = kit.run("cleanup.csv", &mass_delete()).await;
        assert_eq!(job.state, JobState::Held);
        // Another upload changes u0 after the preview: the held delete is older and is skipped.
        kit.run("later.csv", "Email,Department\nu0@acme.example.com,Finance\n").await;
        decide(&kit.svc, &job.id, None, Verb::Approve, "test").await.unwrap().unwrap();
        kit.settle().await;
        let job = kit.svc.jobs.get(&job.id).await.unwrap().unwrap();
        let out = kit.outcomes(&job).await;
        assert_eq!(out[0].0, "Skipped", "{out:?}");
        assert!(out[0].1.starts_with("changed by a newer upload"), "{out:?}");
        let u0 = kit.svc.directory.user("acme", "u0@acme.example.com").await.unwrap().unwrap();
        assert_eq!(u0.fields.department.as_deref(), Some("Finance"), "not overwritten blindly");
    }

    /// A tenant whose settings no longer read (a newer version's field) stopped the expiry sweep
    /// for every tenant at its held job, and its discard told nobody: it now expires after the
    /// default days and is told through the default admins, and a removed tenant's likewise. A
    /// read that is only throttled guesses nothing: the job of a tenant that holds files 13 days
    /// is not discarded after the default 7.
    #[tokio::test]
    async fn a_held_job_of_a_tenant_unreadable_or_removed_expires_and_is_told_to_the_default_admins() {
        let mut kit = seeded(30).await;
        let mut tenant = kit.svc.directory.tenant("acme").await.unwrap().unwrap();
        tenant.holds.expire_days = 13;
        kit.svc.directory.put_tenant(&tenant).await.unwrap();
        let job = kit.run("held.csv", &mass_delete()).await;
        let received = chrono::DateTime::parse_from_rfc3339(&job.received_at).unwrap().to_utc();
        kit.mem.directory.throttled_tenant_reads.lock().unwrap().insert("acme".into(), 1);
        assert_eq!(discard_expired(&kit.svc, received + chrono::Duration::days(8)).await.unwrap(), 0);
        assert_eq!(kit.svc.jobs.get(&job.id).await.unwrap().unwrap().state, JobState::Held, "13 days, not 7");
        assert_eq!(discard_expired(&kit.svc, received + chrono::Duration::days(8)).await.unwrap(), 0);
        assert_eq!(discard_expired(&kit.svc, received + chrono::Duration::days(14)).await.unwrap(), 1);
        for removed in [false, true] {
            let mut kit = seeded(30).await;
            kit.svc.config.default_admins = vec!["ops@example.com".into()];
            let job = kit.run("held.csv", &mass_delete()).await;
            assert_eq!(job.state, JobState::Held);
            if removed {
                kit.mem.directory.remove_tenant("acme");
            } else {
                kit.mem.directory.unreadable_tenants.lock().unwrap().insert("acme".into());
            }
            let received = chrono::DateTime::parse_from_rfc3339(&job.received_at).unwrap().to_utc();
            assert_eq!(discard_expired(&kit.svc, received + chrono::Duration::days(8)).await.unwrap(), 1, "removed {removed}");
            assert_eq!(kit.svc.jobs.get(&job.id).await.unwrap().unwrap().state, JobState::Discarded);
            let (_, to, _) = kit.mem.mailer.sent().last().unwrap().clone();
            assert_eq!(to, ["ops@example.com"]);
            assert!(kit.last_mail().contains("was discarded, nothing was applied"));
        }
    }

    #[tokio::test]
    async fn a_held_job_discarded_or_left_past_its_time_applies_nothing_and_says_so() {
        let mut kit = seeded(30).await;
        let first = kit.run("one.csv", &mass_delete()).await;
        let second = kit.run("two.csv", &mass_delete()).await;
        assert_eq!((first.state, second.state), (JobState::Held, JobState::Held));
        let other = decide(&kit.svc, &first.id, Some("globex"), Verb::Discard, "test").await.unwrap().unwrap_err();
        assert!(other.contains("belongs to another tenant"), "{other}");
        let line = decide(&kit.svc, &first.id, Some("acme"), Verb::Discard, "test").await.unwrap().unwrap();
        assert!(line.contains("discarded"), "{line}");
        assert!(kit.last_mail().contains("was discarded, nothing was applied"));
        let twice = decide(&kit.svc, &first.id, None, Verb::Approve, "test").await.unwrap().unwrap_err();
        assert!(twice.contains("was discarded already"), "{twice}");

        let received = chrono::DateTime::parse_from_rfc3339(&second.received_at).unwrap().to_utc();
        assert_eq!(discard_expired(&kit.svc, received + chrono::Duration::days(6)).await.unwrap(), 0, "not yet");
        // SES throttling when the time is up: the job stays held, untold, and the next sweep does
        // it all (before, it was DISCARDED at once and nobody was ever told).
        let mails = kit.mem.mailer.sent().len();
        *kit.mem.mailer.throttle_next.lock().unwrap() = 1;
        assert_eq!(discard_expired(&kit.svc, received + chrono::Duration::days(8)).await.unwrap(), 0);
        assert_eq!(kit.svc.jobs.get(&second.id).await.unwrap().unwrap().state, JobState::Held);
        assert_eq!(kit.mem.mailer.sent().len(), mails);
        assert_eq!(discard_expired(&kit.svc, received + chrono::Duration::days(8)).await.unwrap(), 1);
        assert_eq!(kit.mem.mailer.sent().len(), mails + 1);
        assert!(kit.last_mail().contains("not approved within 7 days"));
        assert_eq!(discard_expired(&kit.svc, received + chrono::Duration::days(9)).await.unwrap(), 0, "once");
        for id in [&first.id, &second.id] {
            assert_eq!(kit.svc.jobs.get(id).await.unwrap().unwrap().state, JobState::Discarded);
        }
        kit.settle().await;
        assert!(kit.svc.directory.user("acme", "u0@acme.example.com").await.unwrap().is_some(), "nothing applied");
    }

    #[tokio::test]
    async fn replace_mode_s_absent_users_count_as_removals_and_replace_force_is_never_held() {
        let mut kit = seeded(30).await;
        let list: String = (0..20).fold("Email,Department\n".into(), |b, i| b + &format!("u{i}@acme.example.com,Sales\n"));
        let job = kit.run("replace/all.csv", &list).await;
        assert_eq!(job.state, JobState::Held, "10 of 30 would be disabled");
        assert!(job.message.as_deref().unwrap().contains("would delete or disable 10 of 30"));
        let would = kit.svc.store.list(&keys::results_prefix("acme", &job.id)).await.unwrap();
        assert!(would.iter().any(|k| k.ends_with("would-be-disabled.csv")), "{would:?}");
        // A held replace file keeps the tenant's replace lock: another list waits for the decision.
        let blocked = kit.run("replace-force/all.csv", &list).await;
        assert_eq!(blocked.state, JobState::Rejected);
        assert!(
            kit.last_mail().contains("is HELD for approval; approve or discard it first (rosterdrop approve|discard"),
            "{}",
            kit.last_mail()
        );
        decide(&kit.svc, &job.id, None, Verb::Discard, "test").await.unwrap().unwrap();
        let forced = kit.run("replace-force/all-again.csv", &list).await;
        assert_eq!(forced.state, JobState::Completed);
    }

    #[tokio::test]
    async fn a_change_within_the_limits_is_previewed_and_applied_at_once() {
        let mut kit = seeded(150).await;
        let job = kit.run("some.csv", &mass_delete()).await;
        assert_eq!(job.state, JobState::Completed, "10 of 150 is under 10%");
        assert!(kit.svc.directory.user("acme", "u0@acme.example.com").await.unwrap().is_none());
    }

    fn would(updated: u32, deleted: u32, disabled: u32) -> ChangeCounts {
        ChangeCounts { updated, deleted, disabled, ..ChangeCounts::default() }
    }

    #[test]
    fn a_file_is_held_past_either_share_and_never_below_the_minimum() {
        let h = Holds::default(); // 10% removals, 75% updates, at least 10 users
        assert_eq!(reason(&h, 100, &would(0, 10, 0)), None, "10% is not more than 10%");
        assert!(reason(&h, 100, &would(0, 8, 3)).unwrap().starts_with("would delete or disable 11 of 100 active users (11%)"));
        assert_eq!(reason(&h, 20, &would(0, 9, 0)), None, "45%, but fewer than 10 users");
        assert!(reason(&h, 100, &would(76, 0, 0)).unwrap().contains("would update 76 of 100 active users (76%)"));
        let both = reason(&h, 100, &would(80, 20, 0)).unwrap();
        assert!(both.contains("delete or disable") && both.contains(", and would update"), "{both}");
        assert_eq!(reason(&Holds::off(), 100, &would(100, 100, 0)), None, "0 turns holds off");
        assert!(reason(&h, 0, &would(0, 10, 0)).is_some(), "an empty tenant: any removal of 10 is held, no division by zero");
    }

    #[test]
    fn counting_stops_where_no_threshold_can_be_passed() {
        let h = Holds::default();
        assert_eq!(count_needed(&h, 9, 9), None, "below the minimum: no preview");
        assert_eq!(count_needed(&h, 0, 0), None);
        // 10 removals pass 10% only among fewer than 100 active users; 75 updates among fewer than 100.
        assert_eq!(count_needed(&h, 10, 0), Some(100));
        assert_eq!(count_needed(&h, 10, 75), Some(100));
        assert_eq!(count_needed(&h, 0, 750), Some(1000));
        assert_eq!(count_needed(&Holds::off(), 1_000, 1_000), None);
        // The bound is exact: at `needed` active users the same counts are not held.
        for (rm, up) in [(10u32, 0u32), (37, 0), (0, 75), (0, 999)] {
            let active = count_needed(&h, rm.into(), up.into()).unwrap();
            assert_eq!(reason(&h, active, &would(up, rm, 0)), None, "{rm}/{up} at {active}");
            assert!(reason(&h, active - 1, &would(up, rm, 0)).is_some(), "{rm}/{up} at {}", active - 1);
        }
    }
}
