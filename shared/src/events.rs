//! Job events for automation: every state a job enters is published once to the account's
//! EventBridge bus (source `rosterdrop`). One place sees every state change: `Publishing` wraps
//! the job store, so no stage can move a job without its event.
//!
//! Once: publishing is claimed on the job item first (`JobStore::claim_event`), so a duplicate
//! S3 event, a retried invocation or two racing ones publish a state's event once. A publish that
//! fails gives its claim back and fails the call, so the retry publishes it; a caller that finds
//! the job already in the state it asked for (its transition lost a race, or an earlier attempt
//! moved it and crashed before publishing) publishes too, and the claim keeps it to one.

use crate::error::Result;
use crate::keys;
use crate::model::{EmailKind, Job, JobState, Lease};
use crate::ports::{EventBus, JobStore, Plan, Recorded};
use async_trait::async_trait;
use std::sync::Arc;

/// The event's `source`.
pub const SOURCE: &str = "rosterdrop";

/// The event's `detail-type` for a state: "Job Received", "Job Completed", ...
pub fn detail_type(state: JobState) -> String {
    let s = state.as_str();
    format!("Job {}{}", &s[..1], s[1..].to_lowercase())
}

/// What automation gets: the job, its tenant and file, counts and where the results are. No
/// personal data beyond what the tenant's admins already get (the file's name).
pub fn detail(job: &Job, state: JobState) -> serde_json::Value {
    let prefix = keys::results_prefix(&job.tenant, &job.id);
    let mut d = serde_json::json!({
        "tenant": job.tenant,
        "job": job.id,
        "state": state.as_str(),
        "file": job.file_name,
        "source_key": job.source_key,
        "mode": job.mode.map(|m| m.as_str()).unwrap_or("upsert"),
        "received_at": job.received_at,
        "rows": job.total_rows,
    });
    if let Some(m) = job.message.as_deref().filter(|m| !m.is_empty()) {
        // Events carry no row data: an address a reason quotes is masked, as in logs.
        d["reason"] = crate::wording::bounded(&crate::address::mask_addresses(m), 1_000).into();
    }
    if let Some(at) = &job.run_at {
        d["run_at"] = at.clone().into();
    }
    if state.is_final() {
        d["counts"] = serde_json::json!({ "succeeded": job.succeeded, "failed": job.failed, "skipped": job.skipped });
        if state != JobState::Discarded {
            d["results_prefix"] = prefix.clone().into();
            d["summary_key"] = format!("{prefix}summary.json").into();
        }
    }
    d
}

/// The job store, publishing the event of every state a job enters.
pub struct Publishing {
    inner: Arc<dyn JobStore>,
    bus: Arc<dyn EventBus>,
}

impl Publishing {
    pub fn new(inner: Arc<dyn JobStore>, bus: Arc<dyn EventBus>) -> Self {
        Publishing { inner, bus }
    }

    /// Publish `state`'s event for the job if it is in that state and nobody has (see above).
    async fn entered(&self, id: &str, state: JobState) -> Result<()> {
        let Some(job) = self.inner.get(id).await? else { return Ok(()) };
        if job.state != state || !self.inner.claim_event(id, state).await? {
            return Ok(());
        }
        if let Err(e) = self.bus.publish(&detail_type(state), &detail(&job, state)).await {
            self.inner.release_event(id, state).await?;
            return Err(e);
        }
        tracing::info!(job = %id, state = state.as_str(), "job event published");
        Ok(())
    }
}

#[async_trait]
impl JobStore for Publishing {
    async fn create_or_get(&self, job: &Job) -> Result<(Job, bool)> {
        let (stored, created) = self.inner.create_or_get(job).await?;
        // Also for a duplicate: the first delivery may have crashed before publishing.
        if stored.state == JobState::Received {
            self.entered(&stored.id, JobState::Received).await?;
        }
        Ok((stored, created))
    }
    async fn get(&self, id: &str) -> Result<Option<Job>> {
        self.inner.get(id).await
    }
    async fn set_plan(&self, id: &str, plan: &Plan) -> Result<()> {
        self.inner.set_plan(id, plan).await
    }
    async fn transition(&self, id: &str, from: JobState, to: JobState, message: Option<&str>) -> Result<bool> {
        let moved = self.inner.transition(id, from, to, message).await?;
        self.entered(id, to).await?;
        Ok(moved)
    }
    async fn record_chunk(&self, id: &str, phase: usize, seq: u32, of: Option<u32>) -> Result<Recorded> {
        self.inner.record_chunk(id, phase, seq, of).await
    }
    async fn job_for_chunk(&self, id: &str, phase: usize, seq: u32) -> Result<Option<(Job, bool)>> {
        self.inner.job_for_chunk(id, phase, seq).await
    }
    async fn claim_email(&self, id: &str, kind: EmailKind, lease: Lease) -> Result<bool> {
        self.inner.claim_email(id, kind, lease).await
    }
    async fn mark_email_sent(&self, id: &str, kind: EmailKind) -> Result<()> {
        self.inner.mark_email_sent(id, kind).await
    }
    async fn release_email(&self, id: &str, kind: EmailKind) -> Result<()> {
        self.inner.release_email(id, kind).await
    }
    async fn email_sent(&self, id: &str, kind: EmailKind) -> Result<bool> {
        self.inner.email_sent(id, kind).await
    }
    async fn finish(&self, id: &str, state: JobState, succeeded: u32, failed: u32, skipped: u32, note: Option<&str>) -> Result<()> {
        self.inner.finish(id, state, succeeded, failed, skipped, note).await?;
        self.entered(id, state).await
    }
    async fn close(&self, id: &str) -> Result<()> {
        self.inner.close(id).await
    }
    async fn oldest_open(&self) -> Result<Option<(String, String)>> {
        self.inner.oldest_open().await
    }
    async fn open_jobs(&self, limit: usize) -> Result<Vec<(String, String)>> {
        self.inner.open_jobs(limit).await
    }
    async fn held_jobs(&self, limit: usize) -> Result<Vec<(String, String)>> {
        self.inner.held_jobs(limit).await
    }
    async fn schedule(&self, id: &str, at: &str) -> Result<bool> {
        let moved = self.inner.schedule(id, at).await?;
        self.entered(id, JobState::Scheduled).await?;
        Ok(moved)
    }
    async fn scheduled_due(&self, now: &str, limit: usize) -> Result<Vec<(String, String)>> {
        self.inner.scheduled_due(now, limit).await
    }
    async fn start_scheduled(&self, id: &str, order: &str) -> Result<bool> {
        let moved = self.inner.start_scheduled(id, order).await?;
        self.entered(id, JobState::Applying).await?;
        Ok(moved)
    }
    async fn acquire_replace(&self, tenant: &str, id: &str) -> Result<Option<String>> {
        self.inner.acquire_replace(tenant, id).await
    }
    async fn recent(&self, tenant: &str, limit: usize) -> Result<Vec<Job>> {
        self.inner.recent(tenant, limit).await
    }
    async fn claim_event(&self, id: &str, state: JobState) -> Result<bool> {
        self.inner.claim_event(id, state).await
    }
    async fn release_event(&self, id: &str, state: JobState) -> Result<()> {
        self.inner.release_event(id, state).await
    }
}

#[cfg(test)]
mod tests {
    use crate::testkit::Kit;

    fn states(kit: &Kit, job: &str) -> Vec<String> {
        kit.mem.events.published().into_iter().filter(|(_, d)| d["job"] == job).map(|(t, _)| t).collect()
    }

    /// A job publishes each state it enters once, in order, with what automation needs; every
    /// event of the job delivered again (S3's at-least-once) publishes nothing more.
    #[tokio::test]
    async fn each_state_a_job_enters_is_published_once_even_when_its_events_come_twice() {
        let mut kit = Kit::new(|_| {}).await;
        let obj = kit.upload("roster.csv", "Email,RoleName\nann@acme.example.com,Learner\nbob@acme.example.com,Nope\n");
        kit.deliver(&obj).await;
        kit.settle().await;
        let job = crate::ingest::job_id(&obj);
        assert_eq!(states(&kit, &job), ["Job Received", "Job Applying", "Job Completed"]);
        // Every event again: the upload, each chunk, the done marker.
        kit.deliver(&obj).await;
        for key in
            kit.svc.store.list(crate::keys::CHUNKS).await.unwrap().into_iter().chain(kit.svc.store.list(crate::keys::DONE).await.unwrap())
        {
            kit.deliver(&crate::event::ObjectRef { key, ..obj.clone() }).await;
        }
        assert_eq!(states(&kit, &job), ["Job Received", "Job Applying", "Job Completed"], "once each");
        let (_, done) = kit.mem.events.published().into_iter().find(|(t, d)| t == "Job Completed" && d["job"] == job.as_str()).unwrap();
        assert_eq!(
            (done["tenant"].as_str(), done["file"].as_str(), done["state"].as_str()),
            (Some("acme"), Some("roster.csv"), Some("COMPLETED"))
        );
        assert_eq!((done["counts"]["succeeded"].as_u64(), done["counts"]["failed"].as_u64()), (Some(1), Some(1)));
        assert_eq!(done["summary_key"], format!("results/acme/{job}/summary.json"));
        assert!(!done.to_string().contains("ann@acme"), "no personal data: {done}");
    }

    /// A rejected file, and a bus that is down: the publish fails, the stage fails so it is
    /// retried, and the retry publishes the event, once.
    #[tokio::test]
    async fn an_event_the_bus_refused_is_published_by_the_retry() {
        let mut kit = Kit::new(|_| {}).await;
        *kit.mem.events.fail_next.lock().unwrap() = 1;
        let obj = kit.upload("bad.csv", "Name\nx\n");
        assert!(crate::route::dispatch(&kit.svc, &obj).await.is_err(), "the bus was down: the invocation fails");
        kit.deliver(&obj).await;
        let job = crate::ingest::job_id(&obj);
        assert_eq!(states(&kit, &job), ["Job Received", "Job Rejected"]);
        let (_, rejected) = kit.mem.events.published().into_iter().find(|(t, _)| t == "Job Rejected").unwrap();
        assert!(rejected["reason"].as_str().unwrap().contains("Email"), "{rejected}");
        // A file without its header row: its first person's row is not quoted in the reason.
        let obj = kit.upload("no-header.csv", "ann@acme.example.com,Ann,Learner\nbob@acme.example.com,Bob,Learner\n");
        kit.deliver(&obj).await;
        let (_, rejected) = kit.mem.events.published().into_iter().rfind(|(t, _)| t == "Job Rejected").unwrap();
        let reason = rejected["reason"].as_str().unwrap();
        assert!(reason.contains("first row holds an email address (column A)") && !reason.contains("ann"), "{reason}");
    }

    /// Held, approved, completed; and a held job discarded.
    #[tokio::test]
    async fn a_held_job_publishes_held_then_applying_on_approval() {
        let mut kit = Kit::new(|_| {}).await;
        let seed: String = (0..20).fold("Email\n".into(), |b, i| b + &format!("u{i}@acme.example.com\n"));
        kit.run("seed.csv", &seed).await;
        let wipe: String = (0..20).fold("Action,Email\n".into(), |b, i| b + &format!("Delete,u{i}@acme.example.com\n"));
        let held = kit.run("wipe.csv", &wipe).await;
        assert_eq!(states(&kit, &held.id), ["Job Received", "Job Held"]);
        crate::holds::decide(&kit.svc, &held.id, None, crate::holds::Verb::Approve, "support").await.unwrap().expect("approved");
        kit.settle().await;
        assert_eq!(states(&kit, &held.id), ["Job Received", "Job Held", "Job Applying", "Job Completed"]);
    }
}
