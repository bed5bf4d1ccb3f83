//! Files applied at a chosen time: `incoming/<tenant>/scheduled/<YYYY-MM-DDTHH-MM>/[<mode>/]<file>`.
//! Ingest reads and validates the file at once (against the directory as it is then, nothing
//! written) and emails the result; its chunks wait in staged/ as SCHEDULED until the one-minute
//! schedule finds it due and releases them, once. `rosterdrop cancel` (or `.../cancel/<job>`)
//! discards it before then.

use crate::error::Result;
use crate::finalize::build::Flavour;
use crate::holds::{self, Preview};
use crate::model::{Job, JobState, Mode, Tenant, upload_order};
use crate::services::Services;
use chrono::{DateTime, Utc};
use std::path::{Path, PathBuf};
use tracing::{info, warn};

/// How far ahead a file may be scheduled: its staged parts are kept 14 days.
pub const MAX_DAYS_AHEAD: i64 = 13;

/// Why a file cannot be scheduled at `at` (malformed times are refused when the key is read).
pub fn refuse(at: DateTime<Utc>, now: DateTime<Utc>, mode: Mode, tenant: &str) -> Option<String> {
    let when = at.format("%Y-%m-%d %H:%M UTC");
    if mode == Mode::Validate {
        return Some(format!(
            "a validation runs at once and changes nothing, so it cannot be scheduled; drop the file in incoming/{tenant}/validate/"
        ));
    }
    if at < now - chrono::Duration::minutes(1) {
        return Some(format!(
            "the file is scheduled for {when}, which is in the past (it is now {}); nothing was applied. Drop it in a folder with a later time, or in incoming/{tenant}/ to apply it now",
            now.format("%Y-%m-%d %H:%M UTC")
        ));
    }
    if at > now + chrono::Duration::days(MAX_DAYS_AHEAD) {
        return Some(format!(
            "the file is scheduled for {when}, more than {MAX_DAYS_AHEAD} days ahead (a scheduled file's parts are kept 14 days); nothing was applied. Drop it again nearer the time"
        ));
    }
    None
}

/// The message for a `scheduled/` folder that is not a time.
pub fn bad_time(segment: &str, tenant: &str) -> String {
    format!(
        "the folder \"{}\" after scheduled/ is not a UTC time written YYYY-MM-DDTHH-MM (for example incoming/{tenant}/scheduled/2026-12-24T06-30/); nothing was applied",
        crate::wording::quoted(segment)
    )
}

/// Ingest, after the preview: the validation result files stored with the summary, one email
/// with them and how to cancel, then SCHEDULED (the email first: a retried ingest finds it claimed).
#[allow(clippy::too_many_arguments)]
pub async fn schedule(
    svc: &Services,
    job: &Job,
    tenant: &Tenant,
    at: DateTime<Utc>,
    source: &Path,
    outcome_files: Vec<PathBuf>,
    preview: Preview,
    dir: &Path,
) -> Result<()> {
    let when = at.format("%Y-%m-%d %H:%M UTC");
    let reason = format!("scheduled for {when}");
    let (summary, stored) =
        holds::store_preview(svc, job, tenant, JobState::Scheduled, &reason, source, outcome_files, preview, dir, Flavour::Validation)
            .await?;
    holds::email_once(svc, job, tenant, &stored, |links| {
        let c = &summary.counts;
        let (t, id) = (&tenant.id, &job.id);
        let file = crate::wording::file_label(&job.file_name);
        let subject = format!("[rosterdrop] {t}: {file} is SCHEDULED for {when}, validated, nothing applied yet");
        let mut text = format!(
            "Your file {file} ({rows}) will be applied at {when}. It was read and checked now, nothing applied yet:\n\n  \
             would succeed: {ok}\n  would fail:    {failed}\n  If applied now: {changes}\n\n\
             The attached validation lists every row with what it would do{fix}. At {when} each row is applied against the \
             directory as it is then.\n\n\
             To cancel it: rosterdrop cancel {id}\n  or, in the S3 console, upload an empty file named {id} to incoming/{t}/cancel/\n",
            rows = crate::layout::rows(summary.rows.into()),
            ok = c.success,
            failed = c.failure,
            changes = if c.changes.words().is_empty() { "nothing".into() } else { c.changes.words() },
            fix = if c.failure > 0 {
                "; the would-fail file holds the rows that would fail: fix them and drop them as a new file"
            } else {
                ""
            },
        );
        for (name, url) in links {
            text += &crate::wording::link_line(name, url, id);
        }
        text += &format!("\nJob: {id}\n");
        let html = crate::layout::text_page(tenant, &subject, &text);
        (subject, text, html)
    })
    .await?;
    let run_at = at.to_rfc3339();
    svc.jobs.schedule(&job.id, &run_at).await?;
    info!(job = %job.id, tenant = %tenant.id, run_at, "job scheduled");
    Ok(())
}

/// The scheduled sweep: every SCHEDULED job due at `now` starts, once (its rows ordered as an
/// upload made now), and its first phase is released. Returns how many started.
pub async fn release_due(svc: &Services, now: DateTime<Utc>) -> Result<usize> {
    let mut started = 0;
    for (id, _) in svc.jobs.scheduled_due(&now.to_rfc3339(), 50).await? {
        if !svc.jobs.start_scheduled(&id, &upload_order(Some(now), None)).await? {
            continue; // another sweep started it, or it was cancelled meanwhile
        }
        let Some(job) = svc.jobs.get(&id).await? else { continue };
        if let Err(e) = crate::ingest::release_first_phase(svc, &id, &job.phase_chunks.unwrap_or_default()).await {
            // Started without (all) its chunks: `monitor::resume_releases` releases them later.
            warn!(job = %id, error = %e, "a due scheduled job could not be released");
            continue;
        }
        info!(job = %id, "scheduled job started");
        started += 1;
    }
    Ok(started)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::holds::{Verb, decide};
    use crate::keys;
    use crate::testkit::Kit;

    /// A time folder `days` ahead, and the time it names.
    fn folder(days: i64) -> (String, DateTime<Utc>) {
        let name = (Utc::now() + chrono::Duration::days(days)).format(keys::SCHEDULE_FORMAT).to_string();
        let at = keys::parse_schedule(&name).unwrap();
        (name, at)
    }

    #[tokio::test]
    async fn a_scheduled_file_is_validated_at_once_and_applied_at_its_time_exactly_once() {
        let mut kit = Kit::new(|_| {}).await;
        let (time, at) = folder(2);
        let job =
            kit.run(&format!("scheduled/{time}/r.csv"), "Email,Role\nnew@acme.example.com,Learner\nbad@acme.example.com,Nope\n").await;
        assert_eq!((job.state, job.run_at.as_deref()), (JobState::Scheduled, Some(at.to_rfc3339().as_str())));
        assert!(kit.svc.directory.user("acme", "new@acme.example.com").await.unwrap().is_none(), "nothing applied yet");
        let mail = kit.last_mail();
        assert!(
            mail.contains("is SCHEDULED for")
                && mail.contains("would fail:    1")
                && mail.contains(&format!("rosterdrop cancel {}", job.id)),
            "{mail}"
        );
        let validation = kit.result(&job).await;
        assert_eq!(validation[1][2], "Created", "{validation:?}");
        assert_eq!(validation[2][2], "Failure");

        let mails = kit.mem.mailer.sent().len();
        assert_eq!(release_due(&kit.svc, at - chrono::Duration::minutes(1)).await.unwrap(), 0, "not before its time");
        kit.settle().await;
        assert!(kit.svc.directory.user("acme", "new@acme.example.com").await.unwrap().is_none());
        assert_eq!(release_due(&kit.svc, at).await.unwrap(), 1);
        kit.settle().await;
        assert_eq!(release_due(&kit.svc, at + chrono::Duration::minutes(1)).await.unwrap(), 0, "once");
        let job = kit.svc.jobs.get(&job.id).await.unwrap().unwrap();
        assert_eq!((job.state, job.succeeded, job.failed), (JobState::Completed, 1, 1));
        assert!(kit.svc.directory.user("acme", "new@acme.example.com").await.unwrap().is_some());
        assert_eq!(kit.mem.mailer.sent().len(), mails + 1, "one result email");
    }

    #[tokio::test]
    async fn a_cancelled_file_applies_nothing_and_cannot_be_cancelled_twice() {
        let mut kit = Kit::new(|_| {}).await;
        let (time, at) = folder(1);
        let job = kit.run(&format!("scheduled/{time}/r.csv"), "Email\nnew@acme.example.com\n").await;
        assert!(decide(&kit.svc, &job.id, Some("acme"), Verb::Cancel, "test").await.unwrap().unwrap().contains("cancelled"));
        assert!(kit.last_mail().contains("was scheduled and has been cancelled by test"));
        assert_eq!(release_due(&kit.svc, at).await.unwrap(), 0);
        kit.settle().await;
        assert!(kit.svc.directory.user("acme", "new@acme.example.com").await.unwrap().is_none());
        let again = decide(&kit.svc, &job.id, None, Verb::Cancel, "test").await.unwrap().unwrap_err();
        assert!(again.contains("is DISCARDED, not scheduled"), "{again}");
    }

    #[tokio::test]
    async fn times_that_are_malformed_past_too_far_or_missing_are_refused_naming_the_folder() {
        let mut kit = Kit::new(|_| {}).await;
        let (past, _) = folder(-1);
        let (far, _) = folder(20);
        let (soon, _) = folder(1);
        for (name, says) in [
            ("scheduled/2026-12-24T06:30/r.csv".to_string(), "after scheduled/ is not a UTC time written YYYY-MM-DDTHH-MM"),
            ("scheduled/tomorrow/r.csv".to_string(), "\"tomorrow\" after scheduled/ is not a UTC time"),
            (format!("scheduled/{past}/r.csv"), "which is in the past"),
            (format!("scheduled/{far}/r.csv"), "more than 13 days ahead"),
            (format!("scheduled/{soon}/validate/r.csv"), "cannot be scheduled"),
            ("scheduled/r.csv".to_string(), "goes in a folder naming its time"),
        ] {
            let job = kit.run(&name, "Email\nnew@acme.example.com\n").await;
            assert_eq!(job.state, JobState::Rejected, "{name}");
            let reason = kit.summary(&job).await.reason.unwrap();
            assert!(reason.contains(says), "{name}: {reason}");
        }
        assert!(kit.svc.directory.user("acme", "new@acme.example.com").await.unwrap().is_none());
    }
}
