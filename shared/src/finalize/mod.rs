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

pub use build::NOT_APPLIED;

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
use tracing::{error, info, warn};

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
    let tenant = svc.directory.tenant(&job.tenant).await?;
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
                    svc.jobs.finish(&job_id, state, counts.success, counts.failure, counts.skipped).await?;
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
    let (source, warnings, outcome_files) = download_inputs(svc, &job_id, scratch.path()).await?;
    let dir = scratch.path().to_path_buf();
    let file_name = job.file_name.clone();
    let files = tokio::task::spawn_blocking(move || build::build(&source, &outcome_files, &dir, &file_name, stopped))
        .await
        .map_err(|e| Error::local("building results", e))??;

    let final_state = if stopped { JobState::Failed } else { JobState::Completed };
    let mut summary = summary_of(job, final_state, &files.digest, warnings);
    let prefix = keys::results_prefix(&job.tenant, &job_id);
    let mut uploaded = Vec::new();
    for (built, slot) in [(Some(&files.result), 0), (files.failed.as_ref(), 1), (files.disabled.as_ref(), 2)] {
        let Some(built) = built else { continue };
        let key = format!("{prefix}{}", built.name);
        svc.store.put_file(&key, &built.path, built.content_type).await?;
        match slot {
            0 => summary.result_key = Some(key.clone()),
            1 => summary.failed_rows_key = Some(key.clone()),
            _ => summary.disabled_users_key = Some(key.clone()),
        }
        uploaded.push((built.clone(), key));
    }
    svc.store.put(&format!("{prefix}summary.json"), report::pretty(&summary)?, "application/json").await?;

    match tenant {
        Some(tenant) if claimed => {
            let from = report::sender(svc, &tenant);
            let (attachments, links) = attach_or_link(svc, &uploaded).await?;
            let (subject, text, html) = result_email(&tenant.id, &summary, &files.digest, &links);
            report::send_to(svc, &from, &tenant.admin_emails, &subject, &text, &html, &attachments).await?;
            svc.jobs.mark_email_sent(&job_id, EmailKind::Result).await?;
            info!(job = %job_id, recipients = tenant.admin_emails.len(), "result email sent");
        }
        _ => error!(job = %job_id, tenant = %job.tenant, "tenant removed before finalize; no email sent"),
    }
    let c = &summary.counts;
    svc.jobs.finish(&job_id, final_state, c.success, c.failure, c.skipped).await?;
    info!(job = %job_id, rows = summary.rows, succeeded = c.success, failed = c.failure, skipped = c.skipped, "job completed");
    Ok(true)
}

/// The staged source and every outcome file, on local disk: outcome files of one phase are
/// appended in key order into one file (one sorted run), ingest's stay apart.
async fn download_inputs(svc: &Services, job_id: &str, dir: &Path) -> Result<(PathBuf, Vec<String>, Vec<PathBuf>)> {
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
    Ok((source, staged.warnings, groups.into_iter().map(|(_, p)| p).collect()))
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
    summary.created_users = d.created_ids.iter().map(|(row, id)| crate::report::CreatedUser { row: *row, user_id: id.clone() }).collect();
    summary.created_users_not_listed = d.more_created_ids;
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
    let reason = format!("the result files could not be written ({cause})");
    if !svc.jobs.transition(&job.id, JobState::Applying, JobState::Failed, Some(&reason)).await? {
        return Ok(()); // already final: another invocation got there
    }
    let mut summary = Summary::new(job, JobState::Failed);
    summary.reason = Some(reason.clone());
    svc.store
        .put(&format!("{}summary.json", keys::results_prefix(&job.tenant, &job.id)), report::pretty(&summary)?, "application/json")
        .await?;
    let Some(tenant) = svc.directory.tenant(&job.tenant).await? else { return Ok(()) };
    if !svc.jobs.claim_email(&job.id, EmailKind::Failure, svc.config.lease).await? {
        return Ok(());
    }
    let subject = format!("[rosterdrop] {}: {} could not be finished", tenant.id, job.file_name);
    let text = format!(
        "Your file {file} was processed, but its result files could not be written: {cause}.\n\n\
         Each row was applied or refused on its own as usual, so the changes the file asked for may be in place; \
         what could not be produced is the list of what happened to each row. Support can look up job {id}; \
         uploading the same file again in validate mode (incoming/{tenant}/validate/) shows each row's state without changing anything.\n\nJob: {id}\n",
        file = job.file_name,
        id = job.id,
        tenant = tenant.id
    );
    let html = format!("<p>{}</p>", esc(&text).replace("\n\n", "</p><p>"));
    let from = report::sender(svc, &tenant);
    if let Err(e) = report::send_to(svc, &from, &tenant.admin_emails, &subject, &text, &html, &[]).await {
        warn!(job = %job.id, error = %e, "the failure email could not be sent either");
        return Ok(());
    }
    svc.jobs.mark_email_sent(&job.id, EmailKind::Failure).await
}

/// Subject, text body and HTML body of the result email.
pub fn result_email(tenant: &str, s: &Summary, d: &Digest, links: &[(String, String)]) -> (String, String, String) {
    let c = &s.counts;
    let dry = s.mode == "validate";
    let stopped = s.state == JobState::Failed;
    let not_applied = d.not_applied;
    let subject = if stopped {
        format!(
            "[rosterdrop] {tenant}: {} FAILED: {} applied, {not_applied} not applied, {} failed",
            s.file_name,
            c.success,
            c.failure - not_applied
        )
    } else if dry {
        format!("[rosterdrop] {tenant}: {} validated, nothing applied: {} would succeed, {} would fail", s.file_name, c.success, c.failure)
    } else {
        format!("[rosterdrop] {tenant}: {}: {}, {} failed, {} skipped", s.file_name, c.succeeded(), c.failure, c.skipped)
    };
    let failures = &d.first_failures;
    let done = if stopped {
        "stopped after repeated failures. The rows marked Success were applied; the rows marked \"not applied\" were not: the failed-rows file holds them, ready to upload again"
    } else if dry {
        "validated (a dry run: nothing was changed)"
    } else {
        "processed"
    };
    let mut text = format!("Your file {} ({} rows, mode {}) has been {done}.\n\n", s.file_name, s.rows, s.mode);
    text += &format!("  Succeeded: {}\n", c.success);
    if c.unchanged > 0 {
        text += &format!("    of which unchanged: {} (already as the file says; nothing was written)\n", c.unchanged);
    }
    let changes = c.changes.words();
    let changes_label = if dry { "If applied" } else { "Changes" };
    if !changes.is_empty() {
        text += &format!("    {changes_label}: {changes}\n");
    }
    text += &format!("  Failed:    {}\n  Skipped:   {}\n\n", c.failure, c.skipped);
    text += "By action:\n";
    for (a, n) in &s.by_action {
        text += &format!("  {a:<12} {}, {} failed, {} skipped\n", n.succeeded(), n.failure, n.skipped);
    }
    if s.disabled_not_in_file > 0 {
        text +=
            &format!("\nReplace mode disabled {} active users absent from the file (see disabled-users.csv).\n", s.disabled_not_in_file);
    }
    if !s.warnings.is_empty() {
        text += "\nWarnings:\n";
        for w in &s.warnings {
            text += &format!("  - {w}\n");
        }
    }
    if !failures.is_empty() {
        text += "\nFirst failures:\n";
        for (row, message) in failures {
            text += &format!("  row {row}: {message}\n");
        }
        text += "\nThe failed-rows file holds only the rows that failed, with a Message column: fix them and upload that file again.\n";
    }
    for (name, url) in links {
        text += &format!("\n{name} is too large to attach; download it (link valid for a limited time):\n{url}\n");
    }
    text += &format!("\nJob: {}\n", s.job_id);

    let mut html = format!("<p>Your file <b>{}</b> ({} rows, mode {}) has been {done}.</p>", esc(&s.file_name), s.rows, esc(&s.mode));
    if !changes.is_empty() {
        html += &format!("<p>{changes_label}: {}.</p>", esc(&changes));
    }
    if s.disabled_not_in_file > 0 {
        html += &format!(
            "<p>Replace mode disabled <b>{}</b> active users absent from the file (see disabled-users.csv).</p>",
            s.disabled_not_in_file
        );
    }
    html += "<table border=\"1\" cellpadding=\"4\" cellspacing=\"0\"><tr><th>Action</th><th>Succeeded</th><th>of which unchanged</th><th>Failed</th><th>Skipped</th></tr>";
    for (a, n) in &s.by_action {
        html += &format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(a),
            n.success,
            n.unchanged,
            n.failure,
            n.skipped
        );
    }
    html += &format!(
        "<tr><th>Total</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></table>",
        c.success, c.unchanged, c.failure, c.skipped
    );
    if !s.warnings.is_empty() {
        html += "<p><b>Warnings</b></p><ul>";
        for w in &s.warnings {
            html += &format!("<li>{}</li>", esc(w));
        }
        html += "</ul>";
    }
    if !failures.is_empty() {
        html += "<p><b>First failures</b></p><ul>";
        for (row, message) in failures {
            html += &format!("<li>row {row}: {}</li>", esc(message));
        }
        html += "</ul><p>The failed-rows file holds only the rows that failed: fix them and upload that file again.</p>";
    }
    for (name, url) in links {
        html += &format!("<p>{} is too large to attach: <a href=\"{}\">download it</a>.</p>", esc(name), esc(url));
    }
    html += &format!("<p style=\"color:#666\">Job: {}</p>", esc(&s.job_id));
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

    fn built(input: &[u8], name: &str, outcomes: &[Outcome]) -> (tempfile::TempDir, BuiltFiles) {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        std::fs::write(&source, input).unwrap();
        let o = outcomes_file(dir.path(), outcomes);
        let files = build(&source, &[o], dir.path(), name, false).unwrap();
        (dir, files)
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
                "a@x.com,'=cmd,Success,user created,,",
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
