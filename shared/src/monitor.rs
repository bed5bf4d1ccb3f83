//! Operational metrics, published as CloudWatch embedded metric format (EMF) log lines: Lambda
//! ships stdout to CloudWatch Logs, which turns these lines into metrics without an API call.

use crate::error::Result;
use crate::services::Services;

pub const NAMESPACE: &str = "rosterdrop";
pub const JOB_AGE_METRIC: &str = "OldestOpenJobAgeSeconds";

/// Age in seconds of the oldest job not yet COMPLETED or REJECTED (0 when none is open).
pub async fn oldest_open_job_age(svc: &Services, now: chrono::DateTime<chrono::Utc>) -> Result<i64> {
    Ok(match svc.jobs.oldest_open().await? {
        Some((_, received_at)) => age_secs(&received_at, now),
        None => 0,
    })
}

/// Seconds from an RFC 3339 time to `now` (0 when unreadable or in the future).
fn age_secs(received_at: &str, now: chrono::DateTime<chrono::Utc>) -> i64 {
    chrono::DateTime::parse_from_rfc3339(received_at).map(|t| (now - t.with_timezone(&chrono::Utc)).num_seconds().max(0)).unwrap_or(0)
}

/// Whether `at` (RFC 3339) is less than `secs` before `now`; an unreadable time is not.
fn within(at: &str, secs: i64, now: chrono::DateTime<chrono::Utc>) -> bool {
    chrono::DateTime::parse_from_rfc3339(at).is_ok_and(|t| now - t.to_utc() < chrono::Duration::seconds(secs))
}

/// One EMF line carrying a single metric.
pub fn emf_line(metric: &str, value: i64, now: chrono::DateTime<chrono::Utc>) -> String {
    serde_json::json!({
        "_aws": {
            "Timestamp": now.timestamp_millis(),
            "CloudWatchMetrics": [{ "Namespace": NAMESPACE, "Dimensions": [[]], "Metrics": [{ "Name": metric, "Unit": "Seconds" }] }]
        },
        metric: value
    })
    .to_string()
}

/// Finish jobs whose every chunk is applied but whose result email was claimed by an invocation
/// that ended before sending it (a crash, a timeout, SES failing past its retries): once the claim
/// is stale, finalize again; it takes the claim over and sends. Late, never silent. A FAILED job
/// still open owes its email the same way (a send that failed, a stop whose done marker was never
/// written): its result files and email, else the plain failure email. Returns how many jobs it
/// finished.
/// How long a job's owed email may wait on errors a retry may fix (SES holding mail back, a
/// result builder failing the same way each time): the job's deadline this many times (a day,
/// by default). Past it the job ends FAILED with the plain email, as one no retry can fix.
pub const GIVE_UP_DEADLINES: i64 = 8;

fn given_up(svc: &Services, age: i64) -> bool {
    age >= svc.config.job_deadline_secs.saturating_mul(GIVE_UP_DEADLINES)
}

pub async fn finish_unsent_jobs(svc: &Services, now: chrono::DateTime<chrono::Utc>) -> Result<usize> {
    use crate::model::JobState;
    let mut finished = 0;
    for (id, received_at) in svc.jobs.open_jobs(50).await? {
        let age = age_secs(&received_at, now);
        if age < svc.config.lease.secs {
            break; // oldest first: the rest are younger
        }
        let Some(job) = svc.jobs.get(&id).await? else { continue };
        if job.state == JobState::Failed {
            match tell_failed(svc, &job, given_up(svc, age)).await {
                Ok(true) => finished += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(job = %id, retryable = e.is_retryable(), error = %e, "telling a failed job's admins failed; the next sweep retries")
                }
            }
            continue;
        }
        if job.state != JobState::Applying || svc.store.size(&crate::keys::done(&id)).await?.is_none() {
            continue; // still applying: the deadline sweep watches it
        }
        tracing::warn!(job = %id, age_secs = age, "applied job still open; finalizing again");
        // One job that cannot be finalized must not stop the sweep (nor the deadline sweep after it).
        match crate::finalize::finalize_job(svc, &job, false).await {
            Ok(true) => finished += 1,
            Ok(false) => {}
            Err(e) if e.is_retryable() && !given_up(svc, age) => {
                tracing::error!(job = %id, error = %e, "finalizing again failed; the next sweep retries")
            }
            // As the finalize function does: no retry fixes it, so the job fails with its email.
            Err(e) => match crate::finalize::fail_job(svc, &job, &e).await {
                Ok(()) => finished += 1,
                Err(e) => tracing::error!(job = %id, error = %e, "failing a job that cannot be finalized failed; the next sweep retries"),
            },
        }
    }
    Ok(finished)
}

/// A FAILED job's owed email: the result files with every row's fate when they can be written
/// (rows of chunks never counted were not applied), else the plain failure email; an error a
/// retry may fix is left to the next sweep until `given_up`. `Ok(false)`: another invocation
/// holds the claim.
async fn tell_failed(svc: &Services, job: &crate::model::Job, given_up: bool) -> Result<bool> {
    use crate::model::EmailKind;
    if svc.jobs.email_sent(&job.id, EmailKind::Failure).await? {
        svc.jobs.close(&job.id).await?; // told; only the close was lost
        return Ok(true);
    }
    match crate::finalize::finalize_job(svc, job, true).await {
        Ok(told) => Ok(told),
        // A throttle or an outage: the next sweep tries the result files again.
        Err(e) if e.is_retryable() && !given_up => Err(e),
        Err(e) => {
            crate::finalize::tell_unfinished(svc, job, &e, job.cut_short()).await?;
            Ok(true)
        }
    }
}

/// Resume releases cut off midway. Approving a held job, or starting a scheduled one, moves it to
/// APPLYING and then copies its first phase's chunks from staged/ to chunks/; a phase completed
/// by its last chunk releases the next the same way. An approval whose CLI was stopped between
/// the two (a retried console approval finds the job approved already) applied nothing until the
/// deadline failed the job: the approval was lost. Once a job has been open a lease and no chunk of
/// it was counted for a lease, the chunks of its current phase still only in staged/ are released,
/// and a job with every chunk counted but no done marker gets it. A chunk copied twice is recorded
/// once, but runs twice: a job still moving (a phase being released by its last chunk) is left
/// alone, and so is a job within a lease of its deadline (the deadline sweep may be failing it:
/// chunks released then could apply rows its email calls not applied). Returns how many chunks it
/// released.
pub async fn resume_releases(svc: &Services, now: chrono::DateTime<chrono::Utc>) -> Result<usize> {
    let lease = svc.config.lease.secs;
    let mut released = 0;
    for (id, since) in svc.jobs.open_jobs(50).await? {
        if within(&since, lease, now) {
            break; // oldest first: the rest are younger
        }
        if !within(&since, svc.config.job_deadline_secs - lease, now) {
            continue;
        }
        let Some(job) = svc.jobs.get(&id).await? else { continue };
        if job.state != crate::model::JobState::Applying || job.counted_at.as_deref().is_some_and(|t| within(t, lease, now)) {
            continue;
        }
        if svc.store.size(&crate::keys::done(&id)).await?.is_some() {
            continue;
        }
        // One job that cannot be released must not stop the sweep (nor the sweeps after it).
        match release_missing(svc, &job).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(job = %id, chunks = n, "a release was cut off midway; its chunks released again");
                released += n;
            }
            Err(e) => {
                tracing::error!(job = %id, retryable = e.is_retryable(), error = %e, "releasing a job again failed; the next sweep retries")
            }
        }
    }
    Ok(released)
}

/// The chunks of `job`'s current phase (its first not fully counted) that are staged but not in
/// chunks/: copied there. With every phase counted and every chunk's outcomes stored, the done
/// marker (`advance`); a chunk still without its outcomes is its own retry's to mend (`advance`
/// would wait for it here, in the one-minute function).
async fn release_missing(svc: &Services, job: &crate::model::Job) -> Result<usize> {
    use crate::keys;
    use std::collections::HashSet;
    let Some(plan) = job.phase_chunks else { return Ok(0) };
    let listed = |prefix: String| async move { svc.store.list(&prefix).await.map(|k| k.into_iter().collect::<HashSet<_>>()) };
    let Some(phase) = (0..crate::model::PHASES).find(|&p| job.phase_done[p] < plan[p]) else {
        let outcomes = listed(keys::outcomes_prefix(&job.id)).await?;
        let mut planned = (0..crate::model::PHASES).flat_map(|p| (0..plan[p]).map(move |s| (p, s)));
        if planned.all(|(p, s)| outcomes.contains(&keys::chunk_outcomes(&job.id, p, s))) {
            crate::apply::advance(svc, job, crate::model::PHASES - 1).await?;
        }
        return Ok(0);
    };
    // The phase's own keys, released first: a job whose chunks are all out lists nothing more.
    let released = listed(keys::phase_prefix(&job.id, phase, false)).await?;
    let missing: Vec<u32> = (0..plan[phase]).filter(|&seq| !released.contains(&keys::chunk(&job.id, phase, seq))).collect();
    if missing.is_empty() {
        return Ok(0);
    }
    let staged = listed(keys::phase_prefix(&job.id, phase, true)).await?;
    let mut copied = 0;
    for seq in missing {
        let from = keys::staged_chunk(&job.id, phase, seq);
        // A first phase ingest wrote straight to chunks/ has no staged copy: nothing to release.
        if staged.contains(&from) {
            svc.store.copy(&from, &keys::chunk(&job.id, phase, seq)).await?;
            copied += 1;
        }
    }
    Ok(copied)
}

/// Stop jobs still open past the deadline (a chunk failed all its retries, an event was lost):
/// mark them FAILED and email the admins what was and was not applied. Never silence.
pub async fn fail_stuck_jobs(svc: &Services, now: chrono::DateTime<chrono::Utc>) -> Result<usize> {
    use crate::model::JobState;
    let mut stopped = 0;
    for (id, received_at) in svc.jobs.open_jobs(50).await? {
        let age = age_secs(&received_at, now);
        if age < svc.config.job_deadline_secs {
            break; // oldest first: the rest are younger
        }
        let Some(job) = svc.jobs.get(&id).await? else { continue };
        if job.state.is_final() {
            // FAILED: stopped already, its email owed (`finish_unsent_jobs`). Another final state:
            // the open-jobs index has not caught up; moved to FAILED it got a false email.
            continue;
        }
        if job.state == JobState::Applying && !given_up(svc, age) && svc.store.size(&crate::keys::done(&id)).await?.is_some() {
            // Every row applied; only its email is owed (SES refusing for hours: a day's quota
            // spent on invitations, a paused account). Stopped, it was called failed and told so;
            // `finish_unsent_jobs` sends its result once SES takes it, or fails it once given up.
            continue;
        }
        let staged = svc.store.size(&crate::keys::staged_input(&id)).await?.is_some();
        if job.state == JobState::Received && !staged {
            // Ingest never got through the file: nothing was applied.
            let reason = "the file could not be processed (ingest failed repeatedly); nothing was applied. Upload it again, and contact support if it happens again";
            // One job whose email fails must not stop the sweep (nor the jobs after it).
            let rejected = async {
                crate::report::reject(svc, &job, crate::report::tenant_to_tell(svc, &job.tenant).await?.as_ref(), reason, &[]).await
            };
            if let Err(e) = rejected.await {
                tracing::error!(job = %id, retryable = e.is_retryable(), error = %e, "rejecting a stuck job failed; the next sweep retries");
                continue;
            }
        } else {
            if !svc.jobs.transition(&id, job.state, JobState::Failed, Some("stopped after repeated failures")).await? {
                continue; // it moved on meanwhile
            }
            tracing::warn!(job = %id, age_secs = age, "job stopped after its deadline");
            // One job that cannot be finalized must not stop the others. A throttle or an outage
            // leaves it FAILED and open: `finish_unsent_jobs` tries its result again (the plain
            // email sent at once called rows "not applied" that a retry finds applied).
            let job = crate::model::Job { state: JobState::Failed, ..job };
            if let Err(e) = tell_failed(svc, &job, given_up(svc, age)).await {
                tracing::error!(job = %id, retryable = e.is_retryable(), error = %e, "finalizing a stopped job failed; the next sweep retries");
                continue;
            }
        }
        stopped += 1;
    }
    Ok(stopped)
}

/// What one run of the scheduled function did; a task that failed is named in `errors` and the
/// others still ran.
#[derive(Debug, Default, serde::Serialize)]
pub struct ScheduledReport {
    pub sent: usize,
    /// Chunks of releases cut off midway, released again.
    pub released_chunks: usize,
    pub resumed_jobs: usize,
    pub stopped_jobs: usize,
    /// Held jobs discarded because nobody approved them in time.
    pub expired_holds: usize,
    /// Scheduled files whose time came: released to apply.
    pub scheduled_started: usize,
    pub oldest_open_job_age_seconds: i64,
    pub errors: Vec<String>,
}

/// The scheduled run: the invite sweep and each monitor task, each on its own, so one failing
/// (DynamoDB throttled, a job that cannot be finalized) never stops the others. Each failure is
/// logged and reported; the job-age metric is published whatever else happened.
/// The invites function's events: SES's reports about invites (`delivery`), else the schedule.
pub async fn on_event(svc: &Services, event: serde_json::Value, now: chrono::DateTime<chrono::Utc>) -> crate::Result<serde_json::Value> {
    if event["source"] == "aws.ses" {
        let recorded = crate::delivery::record(svc, &event).await?;
        return Ok(serde_json::json!({ "recorded": recorded }));
    }
    serde_json::to_value(scheduled(svc, now).await).map_err(|e| crate::Error::corrupt("scheduled report", e))
}

pub async fn scheduled(svc: &Services, now: chrono::DateTime<chrono::Utc>) -> ScheduledReport {
    tasks(svc, now, true).await
}

/// Every task of the schedule; `metric`: emit the job-age metric too (the local runner, every
/// 2 s, does not).
pub async fn tasks(svc: &Services, now: chrono::DateTime<chrono::Utc>, metric: bool) -> ScheduledReport {
    let mut report = ScheduledReport::default();
    let note = |task: &str, e: crate::Error| {
        tracing::error!(task, retryable = e.is_retryable(), error = %e, "scheduled task failed; the next run retries");
        format!("{task}: {e}")
    };
    let mut errors = Vec::new();
    // The jobs' tasks first, the invitations last: a sweep of 500 invitations against a slow SES
    // could take the run's time, and scheduled files started late, stuck jobs went unstopped.
    match resume_releases(svc, now).await {
        Ok(n) => report.released_chunks = n,
        Err(e) => errors.push(note("releases cut off", e)),
    }
    match finish_unsent_jobs(svc, now).await {
        Ok(n) => report.resumed_jobs = n,
        Err(e) => errors.push(note("unsent result emails", e)),
    }
    match fail_stuck_jobs(svc, now).await {
        Ok(n) => report.stopped_jobs = n,
        Err(e) => errors.push(note("stuck jobs", e)),
    }
    match crate::schedule::release_due(svc, now).await {
        Ok(n) => report.scheduled_started = n,
        Err(e) => errors.push(note("scheduled files", e)),
    }
    match crate::holds::discard_expired(svc, now).await {
        Ok(n) => report.expired_holds = n,
        Err(e) => errors.push(note("expired holds", e)),
    }
    if metric {
        match oldest_open_job_age(svc, now).await {
            Ok(age) => {
                report.oldest_open_job_age_seconds = age;
                println!("{}", emf_line(JOB_AGE_METRIC, age, now));
            }
            Err(e) => errors.push(note("job age metric", e)),
        }
    }
    match crate::invites::sweep(svc, now).await {
        Ok(n) => report.sent = n,
        Err(e) => errors.push(note("invite sweep", e)),
    }
    report.errors = errors;
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::JobState;
    use crate::testkit::Kit;

    /// A job whose chunk never arrives is stopped once past its deadline: FAILED, and its admins
    /// told what was and was not applied; a younger one is left alone; the age metric sees it.
    #[tokio::test]
    async fn a_job_past_its_deadline_is_stopped_with_an_email_and_a_young_one_is_not() {
        let mut kit = Kit::new(|t| t.chunk_size = Some(2)).await;
        let obj = kit.upload("stuck.csv", "Email\na@acme.example.com\nb@acme.example.com\nc@acme.example.com\n");
        kit.deliver(&obj).await;
        let chunks = kit.pending_chunks().await;
        kit.deliver(&chunks[0]).await; // the second chunk is lost
        let id = crate::ingest::job_id(&obj);
        let now = chrono::Utc::now();
        assert_eq!(fail_stuck_jobs(&kit.svc, now).await.unwrap(), 0, "young: left alone");
        assert!(oldest_open_job_age(&kit.svc, now).await.unwrap() < 60);
        let later = now + chrono::Duration::seconds(kit.svc.config.job_deadline_secs + 1);
        assert!(oldest_open_job_age(&kit.svc, later).await.unwrap() > kit.svc.config.job_deadline_secs);
        assert_eq!(fail_stuck_jobs(&kit.svc, later).await.unwrap(), 1);
        let job = kit.svc.jobs.get(&id).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Failed);
        let sent = kit.mem.mailer.sent();
        assert_eq!(sent.len(), 1);
        let mime = String::from_utf8_lossy(&sent[0].2).to_string();
        assert!(mime.contains("stuck.csv"), "the email names the file");
        assert_eq!(fail_stuck_jobs(&kit.svc, later).await.unwrap(), 0, "stopped once");
        assert_eq!(oldest_open_job_age(&kit.svc, later).await.unwrap(), 0, "no job open any more");
    }

    /// Apply stopped a job (a chunk it cannot read), and SES refused the result email past its
    /// retries: the job was FAILED, out of the open jobs, and nothing ever sent its email. It now
    /// stays open until told; the sweep a lease later sends the result email, once. The same when
    /// the stop's done marker was never written (its invocation died after the state change).
    #[tokio::test]
    async fn a_stopped_job_whose_email_failed_or_whose_done_marker_was_lost_is_told_by_the_sweep() {
        for lose_the_marker in [false, true] {
            let mut kit = Kit::new(|t| t.chunk_size = Some(2)).await;
            let obj = kit.upload("stopped.csv", "Email\na@acme.example.com\nb@acme.example.com\nc@acme.example.com\n");
            kit.deliver(&obj).await;
            let id = crate::ingest::job_id(&obj);
            let chunks = kit.pending_chunks().await;
            kit.svc.store.put(&chunks[1].key, b"not a chunk".to_vec(), "application/x-ndjson").await.unwrap();
            kit.deliver(&chunks[0]).await;
            kit.deliver(&chunks[1]).await; // stops the job: FAILED, done marker
            assert_eq!(kit.svc.jobs.get(&id).await.unwrap().unwrap().state, JobState::Failed);
            let done = kit.svc.store.list(crate::keys::DONE).await.unwrap();
            assert_eq!(done.len(), 1);
            if lose_the_marker {
                kit.mem.store.remove(&done[0]);
            } else {
                *kit.mem.mailer.throttle_next.lock().unwrap() = 3;
                let obj = Kit::obj(&done[0]);
                for _ in 0..3 {
                    assert!(crate::route::dispatch(&kit.svc, &obj).await.is_err(), "each try fails to send");
                }
            }
            assert!(kit.mem.mailer.sent().is_empty());
            let now = chrono::Utc::now();
            assert!(kit.svc.jobs.open_jobs(50).await.unwrap().iter().any(|(j, _)| *j == id), "still open: its email is owed");
            assert_eq!(finish_unsent_jobs(&kit.svc, now).await.unwrap(), 0, "young: left to its own retries");
            let later = now + chrono::Duration::seconds(kit.svc.config.lease.secs + 1);
            assert!(oldest_open_job_age(&kit.svc, later).await.unwrap() > kit.svc.config.lease.secs, "the age metric sees it");
            // SES still throttling at the sweep: tried again at the next, not told "could not be written".
            *kit.mem.mailer.throttle_next.lock().unwrap() = 1;
            assert_eq!(finish_unsent_jobs(&kit.svc, later).await.unwrap(), 0);
            assert!(kit.mem.mailer.sent().is_empty());
            assert!(kit.svc.jobs.open_jobs(50).await.unwrap().iter().any(|(j, _)| *j == id), "still owed");
            assert_eq!(finish_unsent_jobs(&kit.svc, later).await.unwrap(), 1);
            let sent = kit.mem.mailer.sent();
            assert_eq!(sent.len(), 1, "told once");
            assert!(String::from_utf8_lossy(&sent[0].2).contains("stopped.csv"));
            let job = kit.svc.jobs.get(&id).await.unwrap().unwrap();
            assert_eq!(job.state, JobState::Failed);
            assert_eq!((job.succeeded, job.failed), (2, 1), "a and b applied, c not");
            assert!(kit.svc.jobs.open_jobs(50).await.unwrap().is_empty(), "told: no longer open");
            assert_eq!(finish_unsent_jobs(&kit.svc, later).await.unwrap(), 0);
            assert_eq!(fail_stuck_jobs(&kit.svc, later + chrono::Duration::seconds(kit.svc.config.job_deadline_secs)).await.unwrap(), 0);
            assert_eq!(kit.mem.mailer.sent().len(), 1);
        }
    }

    /// Every row applied, but SES refuses the result email for hours (a day's quota spent on
    /// invitations, a paused account): the deadline sweep marked the job FAILED, "stopped after
    /// repeated failures", and its plain email called its rows not applied. It now stays open,
    /// and the sweep sends its real result once SES takes mail; a job that did stop is told only
    /// once its result can be written.
    #[tokio::test]
    async fn an_applied_job_whose_email_ses_refuses_for_hours_is_not_stopped_but_told_its_result() {
        let mut kit = Kit::new(|_| {}).await;
        let obj = kit.upload("paused.csv", "Email\na@acme.example.com\nb@acme.example.com\n");
        kit.deliver(&obj).await;
        let id = crate::ingest::job_id(&obj);
        for chunk in kit.pending_chunks().await {
            kit.deliver(&chunk).await;
        }
        *kit.mem.mailer.throttle_next.lock().unwrap() = 1000;
        let done = Kit::obj(&crate::keys::done(&id));
        assert!(crate::route::dispatch(&kit.svc, &done).await.is_err(), "the result email is refused");
        let later = chrono::Utc::now() + chrono::Duration::seconds(kit.svc.config.job_deadline_secs + 1);
        assert_eq!(finish_unsent_jobs(&kit.svc, later).await.unwrap(), 0, "still refused");
        assert_eq!(fail_stuck_jobs(&kit.svc, later).await.unwrap(), 0, "applied: not stopped");
        assert_eq!(kit.svc.jobs.get(&id).await.unwrap().unwrap().state, JobState::Applying);
        assert!(kit.mem.mailer.sent().is_empty());
        *kit.mem.mailer.throttle_next.lock().unwrap() = 0;
        assert_eq!(finish_unsent_jobs(&kit.svc, later).await.unwrap(), 1);
        let job = kit.svc.jobs.get(&id).await.unwrap().unwrap();
        assert_eq!((job.state, job.succeeded), (JobState::Completed, 2));
        let sent = kit.mem.mailer.sent();
        assert_eq!(sent.len(), 1);
        assert!(String::from_utf8_lossy(&sent[0].2).contains("All 2 rows applied"), "the result, not a failure");

        // An account whose sending is paused keeps the email's claim: the sweep tries again once
        // it is stale (a lease), not each minute with the whole result rebuilt for nothing.
        let obj = kit.upload("paused-account.csv", "Email\ne@acme.example.com\n");
        kit.deliver(&obj).await;
        let paused = crate::ingest::job_id(&obj);
        for chunk in kit.pending_chunks().await {
            kit.deliver(&chunk).await;
        }
        *kit.mem.mailer.pause_next.lock().unwrap() = 1;
        assert!(crate::route::dispatch(&kit.svc, &Kit::obj(&crate::keys::done(&paused))).await.is_err());
        let soon = chrono::Utc::now() + chrono::Duration::seconds(kit.svc.config.lease.secs - 60);
        assert!(!kit.svc.jobs.claim_email(&paused, crate::model::EmailKind::Result, kit.svc.config.lease).await.unwrap(), "claim kept");
        assert_eq!(finish_unsent_jobs(&kit.svc, soon).await.unwrap(), 0);
        let mails = kit.mem.mailer.sent().len();

        // Not for ever: SES refusing for a day (or a builder failing the same way each time),
        // the job ends FAILED, its plain email owed; sent once SES takes mail.
        let obj = kit.upload("day.csv", "Email\nd@acme.example.com\n");
        kit.deliver(&obj).await;
        let id = crate::ingest::job_id(&obj);
        for chunk in kit.pending_chunks().await {
            kit.deliver(&chunk).await;
        }
        *kit.mem.mailer.throttle_next.lock().unwrap() = 1000;
        assert!(crate::route::dispatch(&kit.svc, &Kit::obj(&crate::keys::done(&id))).await.is_err());
        let day = chrono::Utc::now() + chrono::Duration::seconds(kit.svc.config.job_deadline_secs * GIVE_UP_DEADLINES - 60);
        finish_unsent_jobs(&kit.svc, day).await.unwrap();
        assert_eq!(kit.svc.jobs.get(&id).await.unwrap().unwrap().state, JobState::Applying, "not yet given up");
        let past = day + chrono::Duration::seconds(120);
        finish_unsent_jobs(&kit.svc, past).await.unwrap();
        assert_eq!(kit.svc.jobs.get(&id).await.unwrap().unwrap().state, JobState::Failed, "given up");
        assert!(kit.svc.jobs.open_jobs(50).await.unwrap().iter().any(|(j, _)| *j == id), "its email still owed");
        *kit.mem.mailer.throttle_next.lock().unwrap() = 0;
        assert_eq!(finish_unsent_jobs(&kit.svc, past).await.unwrap(), 1);
        assert_eq!(kit.mem.mailer.sent().len(), mails + 1);
        assert!(!kit.svc.jobs.open_jobs(50).await.unwrap().iter().any(|(j, _)| *j == id), "told");

        // A job that is stuck (a chunk lost) is stopped; SES throttling then, its plain "could
        // not be finished" email is not sent in haste: the next sweep writes its result files.
        let obj = kit.upload("stuck.csv", "Email\nc@acme.example.com\n");
        kit.deliver(&obj).await;
        let id = crate::ingest::job_id(&obj);
        let _lost = kit.pending_chunks().await;
        let later = chrono::Utc::now() + chrono::Duration::seconds(kit.svc.config.job_deadline_secs + 1);
        let before = kit.mem.mailer.sent().len();
        *kit.mem.mailer.throttle_next.lock().unwrap() = 1;
        assert_eq!(fail_stuck_jobs(&kit.svc, later).await.unwrap(), 0, "stopped, its email owed");
        assert_eq!(kit.svc.jobs.get(&id).await.unwrap().unwrap().state, JobState::Failed);
        assert_eq!(kit.mem.mailer.sent().len(), before, "nothing sent in haste");
        assert_eq!(finish_unsent_jobs(&kit.svc, later).await.unwrap(), 1);
        let sent = kit.mem.mailer.sent();
        let mime = String::from_utf8_lossy(&sent[before].2).to_string();
        assert!(mime.contains("stuck.csv") && !mime.contains("could not be finished"), "the result files, not the plain email");
    }

    /// Every chunk counted, but the done marker the last count writes was lost (its invocation
    /// ran out of retries): the release sweep writes it once the job has been quiet a lease, and
    /// the job completes with its email; a job within a lease of its deadline is left to the
    /// deadline sweep.
    #[tokio::test]
    async fn a_lost_done_marker_is_written_by_the_release_sweep_but_not_near_the_deadline() {
        let mut kit = Kit::new(|t| t.chunk_size = Some(2)).await;
        let obj = kit.upload("lost.csv", "Email\na@acme.example.com\nb@acme.example.com\nc@acme.example.com\n");
        kit.deliver(&obj).await;
        let id = crate::ingest::job_id(&obj);
        for chunk in kit.pending_chunks().await {
            kit.deliver(&chunk).await;
        }
        let done = crate::keys::done(&id);
        assert!(kit.svc.store.size(&done).await.unwrap().is_some());
        kit.mem.store.remove(&done);
        let job = kit.svc.jobs.get(&id).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Applying);
        let at = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap().to_utc();
        let (received, counted) = (at(&job.received_at), at(job.counted_at.as_deref().unwrap()));
        let (lease, deadline) = (kit.svc.config.lease.secs, kit.svc.config.job_deadline_secs);
        let near_deadline = received + chrono::Duration::seconds(deadline - lease + 1);
        assert_eq!(resume_releases(&kit.svc, near_deadline).await.unwrap(), 0);
        assert!(kit.svc.store.size(&done).await.unwrap().is_none(), "the deadline sweep's job now");
        assert_eq!(resume_releases(&kit.svc, counted + chrono::Duration::seconds(lease)).await.unwrap(), 0, "no chunk to release");
        assert!(kit.svc.store.size(&done).await.unwrap().is_some(), "the done marker written");
        kit.settle().await;
        assert_eq!(kit.svc.jobs.get(&id).await.unwrap().unwrap().state, JobState::Completed);
        assert_eq!(kit.mem.mailer.sent().len(), 1, "one result email");
    }

    /// A stuck job whose result files cannot be built either (here its staged copy of the file
    /// is unreadable): the deadline still ends it with an email, the plain "could not be
    /// finished" one. Before, the sweep logged the error and the admins heard nothing.
    #[tokio::test]
    async fn a_stuck_job_whose_results_cannot_be_built_still_gets_an_email() {
        let mut kit = Kit::new(|t| t.chunk_size = Some(1)).await;
        let obj = kit.upload("broken.csv", "Email\na@acme.example.com\nb@acme.example.com\n");
        kit.deliver(&obj).await;
        let chunks = kit.pending_chunks().await;
        kit.deliver(&chunks[0]).await; // the second chunk is lost
        let id = crate::ingest::job_id(&obj);
        kit.svc.store.put(&crate::keys::staged_source(&id), b"PK\x03\x04 not a workbook".to_vec(), "text/csv").await.unwrap();
        let later = chrono::Utc::now() + chrono::Duration::seconds(kit.svc.config.job_deadline_secs + 1);
        fail_stuck_jobs(&kit.svc, later).await.unwrap();
        assert_eq!(kit.svc.jobs.get(&id).await.unwrap().unwrap().state, JobState::Failed);
        let sent = kit.mem.mailer.sent();
        assert_eq!(sent.len(), 1, "one email");
        let mime = String::from_utf8_lossy(&sent[0].2).to_string();
        assert!(mime.contains("could not be finished") && mime.contains("stopped after repeated failures"), "{mime}");
        assert!(kit.svc.jobs.email_sent(&id, crate::model::EmailKind::Failure).await.unwrap());
        let key = format!("{}summary.json", crate::keys::results_prefix("acme", &id));
        let summary: crate::report::Summary = serde_json::from_slice(&kit.svc.store.get(&key).await.unwrap().unwrap()).unwrap();
        assert_eq!(summary.state, JobState::Failed);
        assert!(summary.reason.unwrap().starts_with("stopped after repeated failures"));
        // Told once: a second try finds the failure email sent.
        let job = kit.svc.jobs.get(&id).await.unwrap().unwrap();
        crate::finalize::tell_unfinished(&kit.svc, &job, &crate::Error::corrupt("x", "y"), true).await.unwrap();
        assert_eq!(kit.mem.mailer.sent().len(), 1, "told once");
    }

    /// Finalize can fail after its result email went out (recording the final state): the plain
    /// "could not be finished" email then stays unsent, and the stored summary keeps its files.
    #[tokio::test]
    async fn no_failure_email_follows_a_result_email_already_sent() {
        let mut kit = Kit::new(|_| {}).await;
        let job = kit.run("fine.csv", "Email\na@acme.example.com\n").await;
        let id = job.id.clone();
        assert_eq!(kit.mem.mailer.sent().len(), 1, "the result email");
        crate::finalize::tell_unfinished(&kit.svc, &job, &crate::Error::corrupt("x", "y"), true).await.unwrap();
        assert_eq!(kit.mem.mailer.sent().len(), 1, "no second email");
        let key = format!("{}summary.json", crate::keys::results_prefix("acme", &id));
        let summary: crate::report::Summary = serde_json::from_slice(&kit.svc.store.get(&key).await.unwrap().unwrap()).unwrap();
        assert_eq!(summary.state, JobState::Completed, "summary untouched");
    }

    /// Every chunk applied but the result email never sent (its claim went stale): the sweep
    /// finalizes again and the email goes out, late rather than never.
    #[tokio::test]
    async fn an_applied_job_whose_email_claim_went_stale_is_finished_by_the_sweep() {
        let mut kit = Kit::new(|_| {}).await;
        let obj = kit.upload("quiet.csv", "Email\na@acme.example.com\n");
        kit.deliver(&obj).await;
        for chunk in kit.pending_chunks().await {
            kit.deliver(&chunk).await;
        }
        let id = crate::ingest::job_id(&obj);
        // Finalize's invocation claimed the email and died before sending it.
        assert!(kit.svc.jobs.claim_email(&id, crate::model::EmailKind::Result, kit.svc.config.lease).await.unwrap());
        let later = chrono::Utc::now() + chrono::Duration::seconds(kit.svc.config.lease.secs + 1);
        assert_eq!(finish_unsent_jobs(&kit.svc, chrono::Utc::now()).await.unwrap(), 0, "claim still fresh");
        assert_eq!(kit.mem.mailer.sent().len(), 0);
        // The claim is stale once the lease has passed; claims age by the clock, in milliseconds.
        kit.svc.config.lease.secs = 0;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        assert_eq!(finish_unsent_jobs(&kit.svc, later).await.unwrap(), 1);
        assert_eq!(kit.mem.mailer.sent().len(), 1);
        assert_eq!(kit.svc.jobs.get(&id).await.unwrap().unwrap().state, JobState::Completed);
    }

    #[test]
    fn emf_line_names_namespace_metric_and_value() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-21T10:00:00Z").unwrap().with_timezone(&chrono::Utc);
        let v: serde_json::Value = serde_json::from_str(&emf_line(JOB_AGE_METRIC, 42, now)).unwrap();
        assert_eq!(v["_aws"]["CloudWatchMetrics"][0]["Namespace"], "rosterdrop");
        assert_eq!(v["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"], JOB_AGE_METRIC);
        assert_eq!(v["_aws"]["Timestamp"], 1_795_255_200_000i64);
        assert_eq!(v[JOB_AGE_METRIC], 42);
    }
}
