//! Undo a job: every item it created, updated, deleted, disabled or enabled is put back as it was
//! before, unless another job has written it since (that row is `Skipped: changed since by job
//! <id>`, never overwritten). The before-states are what the job's own writes returned, kept per
//! chunk under `undo/<job>/` (apply); an undo is itself a job (its own result file and email, its
//! own before-states), so it can be undone in turn.

use crate::error::{Error, Result};
use crate::keys;
use crate::model::{Action, DEFAULT_UNDO_DAYS, Job, JobState, Mode, PHASES, Restore, RowOp, Target, UndoEntry, upload_order};
use crate::ports::Plan;
use crate::services::Services;
use crate::wire::{StagedInput, jsonl, parse_jsonl, to_json};
use std::io::Write as _;
use tracing::info;

/// The id of the job that undoes `job`: one per job, so a second undo finds the first.
pub fn undo_job_id(job: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, format!("undo:{job}").as_bytes()).to_string()
}

/// Whether job `id` can be undone now: the job, or the one line saying why not.
pub async fn check(svc: &Services, id: &str, tenant: Option<&str>) -> Result<std::result::Result<Job, String>> {
    let Some(job) = svc.jobs.get(id).await? else {
        return Ok(Err(format!("no job {id}: check the id in its result email or `rosterdrop status`")));
    };
    if tenant.is_some_and(|t| !t.eq_ignore_ascii_case(&job.tenant)) {
        return Ok(Err(format!("job {id} belongs to another tenant; nothing changed")));
    }
    match job.state {
        JobState::Completed | JobState::Failed => {}
        JobState::Received | JobState::Applying | JobState::Held | JobState::Scheduled => {
            return Ok(Err(format!("job {id} is still {}; undo it once it has finished", job.state.as_str())));
        }
        JobState::Rejected | JobState::Discarded => return Ok(Err(format!("job {id} applied nothing; there is nothing to undo"))),
    }
    if job.mode == Some(Mode::Validate) {
        return Ok(Err(format!("job {id} was a validation and changed nothing; there is nothing to undo")));
    }
    let Some(t) = svc.directory.tenant(&job.tenant).await? else {
        return Ok(Err(format!("tenant {} is no longer configured", job.tenant)));
    };
    let days = t.undo_days.unwrap_or(DEFAULT_UNDO_DAYS);
    let finished = job.completed_at.as_deref().and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok());
    if finished.is_some_and(|f| f.to_utc() + chrono::Duration::days(i64::from(days)) < chrono::Utc::now()) {
        return Ok(Err(format!(
            "job {id} finished more than {days} days ago; its before-states are kept {days} days, so it cannot be undone"
        )));
    }
    if svc.store.list(&keys::undo_prefix(id)).await?.is_empty() {
        return Ok(Err(format!("job {id} changed nothing in the directory; there is nothing to undo")));
    }
    let uid = undo_job_id(id);
    if let Some(undo) = svc.jobs.get(&uid).await?.filter(|u| u.state != JobState::Received) {
        return Ok(Err(format!("job {id} was undone already by job {uid} ({})", undo.state.as_str())));
    }
    Ok(Ok(job))
}

/// Start undoing job `id`. `Ok(Ok(line))`: the undo job is running (its result email follows);
/// `Ok(Err(line))`: refused, nothing changed, the line says why. `tenant`: the job must be its.
pub async fn start(svc: &Services, id: &str, tenant: Option<&str>, by: &str) -> Result<std::result::Result<String, String>> {
    let id = id.trim();
    let job = match check(svc, id, tenant).await? {
        Ok(job) => job,
        Err(line) => return Ok(Err(line)),
    };
    let files = svc.store.list(&keys::undo_prefix(id)).await?;
    let uid = undo_job_id(id);
    let now = chrono::Utc::now();
    let stem = crate::finalize::build::stem(&job.file_name);
    let new = Job {
        order: upload_order(Some(now), None),
        message: Some(format!("undo of job {id}, asked by {by}")),
        ..Job::received(&uid, &job.tenant, format!("undo:{id}"), format!("undo-{stem}.csv"), Some(Mode::Undo), now.to_rfc3339())
    };
    let (undo, created) = svc.jobs.create_or_get(&new).await?;
    if !created && undo.state != JobState::Received {
        return Ok(Err(format!("job {id} was undone already by job {uid} ({})", undo.state.as_str())));
    }
    let rows = plan(svc, &undo, id, &files).await?;
    svc.jobs.transition(&uid, JobState::Received, JobState::Applying, None).await?;
    crate::ingest::release_first_phase(svc, &uid, &[0, files.len() as u32, 0, 0]).await?;
    info!(job = %id, undo = %uid, rows, by, "undo started");
    Ok(Ok(format!("undo of job {id} started as job {uid}: {rows} changes to put back; the result email follows")))
}

/// The undo job's input: one restore per kept before-state, each chunk of the job becoming one
/// chunk of the undo (staged), and a CSV naming each item (its "file", for the result).
async fn plan(svc: &Services, undo: &Job, undone: &str, files: &[String]) -> Result<u32> {
    let scratch = tempfile::Builder::new().prefix("rosterdrop-undo-").tempdir().map_err(|e| Error::local("scratch directory", e))?;
    let source = scratch.path().join("source.csv");
    let local = |e: std::io::Error| Error::local("undo source", e);
    let mut csv = csv::Writer::from_writer(std::io::BufWriter::new(std::fs::File::create(&source).map_err(local)?));
    csv.write_record(["Type", "Email", "OrgName", "Undoes"]).map_err(|e| local(e.into()))?;
    let mut row = 1u32;
    for (seq, key) in files.iter().enumerate() {
        let body = svc.store.get(key).await?.ok_or_else(|| Error::corrupt(key.clone(), "before-states vanished"))?;
        let entries: Vec<UndoEntry> = parse_jsonl("before-states", &body)?;
        let mut ops = Vec::with_capacity(entries.len());
        for e in entries {
            row += 1;
            let (kind, email, org) = match &e.target {
                Target::User { email, .. } => ("User", email.as_str(), ""),
                Target::Org { name, .. } => ("Org", "", name.as_str()),
            };
            csv.write_record([kind, email, org, undone]).map_err(|e| local(e.into()))?;
            let restore = Restore { undoes: undone.to_string(), kept: e.kept };
            ops.push(RowOp { row, action: Action::Restore, target: e.target, created_in_file: vec![], restore: Some(restore) });
        }
        svc.store.put(&keys::staged_chunk(&undo.id, 1, seq as u32), jsonl(&ops)?, "application/x-ndjson").await?;
    }
    csv.into_inner().map_err(|e| local(e.into_error()))?.flush().map_err(local)?;
    let total = row - 1;
    let mut phase_chunks = [0u32; PHASES];
    phase_chunks[1] = files.len() as u32;
    svc.jobs.set_plan(&undo.id, &Plan { phase_chunks, total_rows: total, mode: None }).await?;
    svc.store.put_file(&keys::staged_source(&undo.id), &source, "text/csv").await?;
    let staged = StagedInput {
        warnings: vec![],
        ingested_at: chrono::Utc::now().to_rfc3339(),
        source: Some(keys::staged_source(&undo.id)),
        bundle: None,
    };
    svc.store.put(&keys::staged_input(&undo.id), to_json(&staged)?, "application/json").await?;
    svc.store.put(&keys::ingest_outcomes(&undo.id), Vec::new(), "application/x-ndjson").await?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::holds::{Verb, decide};
    use crate::model::{Holds, User, UserStatus};
    use crate::testkit::Kit;
    use std::collections::BTreeMap;

    /// Every user as an admin sees it (not the write bookkeeping).
    async fn users(kit: &Kit) -> BTreeMap<String, (UserStatus, crate::model::UserFields, Vec<String>)> {
        let mut out = BTreeMap::new();
        for (email, _) in kit.svc.directory.list_users("acme").await.unwrap() {
            if let Some(User { status, fields, manual_groups, .. }) = kit.svc.directory.user("acme", &email).await.unwrap() {
                out.insert(email, (status, fields, manual_groups));
            }
        }
        out
    }

    async fn undo(kit: &mut Kit, id: &str) -> Job {
        let line = decide(&kit.svc, id, Some("acme"), Verb::Undo, "test").await.unwrap().unwrap();
        assert!(line.starts_with(&format!("undo of job {id} started as job {}", undo_job_id(id))), "{line}");
        kit.settle().await;
        kit.svc.jobs.get(&undo_job_id(id)).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn undo_puts_back_every_change_except_what_a_later_job_changed_and_can_itself_be_undone() {
        let mut kit = Kit::new(|t| t.holds = Holds::off()).await;
        let seed: String = (0..6).fold("Email,Department,Group\n".into(), |b, i| b + &format!("u{i}@acme.example.com,Sales,A;B\n"));
        kit.run("seed.csv", &seed).await;
        let before = users(&kit).await;
        let job = kit
            .run(
                "changes.csv",
                "Action,Email,Department,Group\n\
                 Delete,u0@acme.example.com,,\n\
                 Update,u1@acme.example.com,Support,A;C\n\
                 Disable,u2@acme.example.com,,\n\
                 ,u3@acme.example.com,Sales,A;B\n\
                 Create,n0@acme.example.com,New,\n\
                 Create,n1@acme.example.com,New,\n",
            )
            .await;
        assert_eq!(job.state, JobState::Completed);
        let applied = users(&kit).await;
        let later = kit.run("later.csv", "Email,Department\nn1@acme.example.com,Later\n").await;

        let undone = undo(&mut kit, &job.id).await;
        assert_eq!((undone.state, undone.mode), (JobState::Completed, Some(Mode::Undo)));
        let out = kit.outcomes(&undone).await;
        let skipped = format!("changed since by job {}", later.id);
        assert_eq!(
            out,
            [
                ("Created", format!("user u0@acme.example.com restored: job {} had deleted it", job.id)),
                ("Updated", format!("user u1@acme.example.com restored to its state before job {}", job.id)),
                ("Updated", format!("user u2@acme.example.com restored to its state before job {}", job.id)),
                ("Deleted", format!("user n0@acme.example.com removed: job {} had created it", job.id)),
                ("Skipped", skipped),
            ]
            .map(|(s, m)| (s.to_string(), m))
        );
        let mut expected = before.clone();
        expected.insert("n1@acme.example.com".into(), users(&kit).await["n1@acme.example.com"].clone());
        assert_eq!(users(&kit).await, expected, "all but the later change put back, field by field");
        assert_eq!(users(&kit).await["n1@acme.example.com"].1.department.as_deref(), Some("Later"));

        // Twice: one line, nothing changed.
        let again = decide(&kit.svc, &job.id, None, Verb::Undo, "test").await.unwrap().unwrap_err();
        assert!(again.contains("was undone already by job"), "{again}");

        // The undo undone: the job's changes are back (but for the row the undo left alone).
        let redo = undo(&mut kit, &undone.id).await;
        assert_eq!(redo.state, JobState::Completed);
        let mut expected = applied.clone();
        expected.insert("n1@acme.example.com".into(), users(&kit).await["n1@acme.example.com"].clone());
        assert_eq!(users(&kit).await, expected);
    }

    /// Licences and pending invites follow the restored state: undoing creates gives their
    /// licences back and their invites are never sent; undoing that undo takes them again.
    #[tokio::test]
    async fn licences_and_pending_invites_follow_an_undo() {
        let mut kit = Kit::new(|t| t.licences = Some(10)).await;
        let body: String = (0..5).fold("Email,InviteUser\n".into(), |b, i| b + &format!("i{i}@acme.example.com,TRUE\n"));
        let job = kit.run("invited.csv", &body).await;
        assert_eq!(kit.svc.directory.licences_used("acme", None).await.unwrap(), 5);
        let undone = undo(&mut kit, &job.id).await;
        assert_eq!(kit.summary(&undone).await.counts.changes.deleted, 5);
        assert_eq!(kit.svc.directory.licences_used("acme", None).await.unwrap(), 0, "the licences came back");
        let mails = kit.mem.mailer.sent().len();
        crate::invites::sweep(&kit.svc, chrono::Utc::now() + chrono::Duration::minutes(5)).await.unwrap();
        assert_eq!(kit.mem.mailer.sent().len(), mails, "no invite to a user whose creation was undone");
        undo(&mut kit, &undone.id).await;
        assert_eq!(kit.svc.directory.licences_used("acme", None).await.unwrap(), 5, "taken again");
        assert_eq!(users(&kit).await.len(), 5);
    }

    #[tokio::test]
    async fn undo_refuses_unknown_foreign_running_and_unchanging_jobs_in_one_line() {
        let mut kit = Kit::new(|_| {}).await;
        let v = kit.run("validate/check.csv", "Email\na@acme.example.com\n").await;
        let nothing = kit.run("same.csv", "Email\n").await;
        let running = kit.upload("slow.csv", "Email\nb@acme.example.com\n");
        kit.deliver(&running).await; // read, chunks not applied yet
        let running = kit.svc.jobs.get(&crate::ingest::job_id(&running)).await.unwrap().unwrap();
        for (id, tenant, says) in [
            ("nope", None, "no job nope"),
            (v.id.as_str(), Some("globex"), "belongs to another tenant"),
            (v.id.as_str(), None, "was a validation and changed nothing"),
            (nothing.id.as_str(), None, "applied nothing"),
            (running.id.as_str(), None, "is still APPLYING"),
        ] {
            let line = decide(&kit.svc, id, tenant, Verb::Undo, "test").await.unwrap().unwrap_err();
            assert!(line.contains(says), "{id}: {line}");
        }
        assert!(kit.svc.jobs.get(&undo_job_id(&v.id)).await.unwrap().is_none(), "no undo job made");
    }
}
