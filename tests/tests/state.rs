#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! State stays right across uploads: every upload of a key is its own job reading its own bytes.

use shared::model::JobState;
use std::time::Duration;
use tests::{Stack, csv_text};

const WAIT: Duration = Duration::from_secs(120);

/// LocalStack sends the same sequencer in every S3 event, and the job id used to rest on it: a
/// second upload of `roster.csv` was "a duplicate event" and never read. The bucket is versioned
/// and jobs rest on the version id: two uploads are two jobs, each reading its own version.
#[tokio::test]
async fn two_uploads_of_one_key_are_two_jobs_each_of_its_own_file() {
    let stack = Stack::start().await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let first = csv_text(&[&["Email", "First Name"], &["one@acme.example.com", "One"]]);
    let second = csv_text(&[&["Email", "First Name"], &["two@acme.example.com", "Two"], &["three@acme.example.com", "Three"]]);
    // Back to back: the second lands before the first is read.
    let key = stack.drop_file("acme", None, "roster.csv", first.clone()).await;
    stack.drop_file("acme", None, "roster.csv", second.clone()).await;
    let jobs = wait_jobs(&stack, &key, 2).await;
    let mut rows: Vec<u32> = jobs.iter().map(|j| j.succeeded).collect();
    rows.sort();
    assert_eq!(rows, vec![1, 2], "each job read its own version: {jobs:?}");
    // Later, after both finished: a third upload is a third job.
    stack.drop_file("acme", None, "roster.csv", first).await;
    let jobs = wait_jobs(&stack, &key, 3).await;
    assert!(jobs.iter().all(|j| j.state == JobState::Completed), "{jobs:?}");
    for email in ["one@acme.example.com", "two@acme.example.com", "three@acme.example.com"] {
        assert!(stack.svc.directory.user("acme", email).await.unwrap().is_some(), "{email}");
    }
    stack.shutdown().await;
}

async fn wait_jobs(stack: &Stack, key: &str, n: usize) -> Vec<shared::model::Job> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let jobs: Vec<_> = stack.svc.jobs.recent("acme", 100).await.unwrap().into_iter().filter(|j| j.source_key == key).collect();
        if jobs.len() >= n && jobs.iter().all(|j| j.state.is_final()) {
            return jobs;
        }
        assert!(std::time::Instant::now() < deadline, "{n} jobs for {key}: {jobs:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The measured wedge: users created before the tenant had a pool, then disabled, gave back
/// licences never taken, and the stored count went below zero; the reservation compared with the
/// clamped count, never matched, and every create of the tenant retried into the dead-letter
/// queue. Now the count is repaired by the next reservation and the pool holds exactly.
#[tokio::test]
async fn a_licence_count_below_zero_never_wedges_creates() {
    let stack = Stack::start().await;
    let mut tenant = stack.tenant("acme");
    stack.put_tenant(&tenant).await;
    let users: Vec<String> = (0..5).map(|i| format!("early{i}@acme.example.com")).collect();
    let mut rows: Vec<Vec<String>> = vec![vec!["Email".into()]];
    rows.extend(users.iter().map(|u| vec![u.clone()]));
    let key = stack.drop_file("acme", None, "early.csv", tests::rows_to_csv(&rows)).await;
    assert_eq!(stack.wait_job("acme", &key, WAIT).await.succeeded, 5);
    tenant.licences = Some(10);
    stack.put_tenant(&tenant).await;
    let mut rows: Vec<Vec<String>> = vec![vec!["Action".into(), "Email".into()]];
    rows.extend(users.iter().map(|u| vec!["Disable".into(), u.clone()]));
    let key = stack.drop_file("acme", None, "disable.csv", tests::rows_to_csv(&rows)).await;
    assert_eq!(stack.wait_job("acme", &key, WAIT).await.succeeded, 5);
    let mut rows: Vec<Vec<String>> = vec![vec!["Action".into(), "Email".into()]];
    rows.extend((0..12).map(|i| vec!["Create".into(), format!("new{i}@acme.example.com")]));
    let key = stack.drop_file("acme", None, "twelve.csv", tests::rows_to_csv(&rows)).await;
    let job = stack.wait_job("acme", &key, WAIT).await;
    assert_eq!((job.state, job.succeeded, job.failed), (JobState::Completed, 10, 2), "{job:?}");
    assert_eq!(stack.svc.directory.licences_used("acme").await.unwrap(), 10);
    stack.shutdown().await;
}

/// Two replace files of one tenant at once: the second is refused with a message saying why and
/// what to do, never interleaved with the first; once the first has ended, a replace runs again.
/// Files of other modes are not held: each row's conditional write decides, as always.
#[tokio::test]
async fn a_second_replace_file_while_one_is_applied_is_refused_and_runs_after_it() {
    let stack = Stack::start_manual().await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let list = |emails: &[&str]| {
        let mut rows: Vec<&[&str]> = vec![&["Email"]];
        let cells: Vec<[&str; 1]> = emails.iter().map(|e| [*e]).collect();
        rows.extend(cells.iter().map(|c| c.as_slice()));
        csv_text(&rows)
    };
    let first = stack.drop_file("acme", Some("replace"), "first.csv", list(&["a@acme.example.com", "b@acme.example.com"])).await;
    // Ingest the first only: its chunks wait, so the job is being applied.
    let pending: Vec<_> = stack.take_events().await;
    for obj in pending.iter().filter(|o| o.key == first) {
        shared::local::dispatch(&stack.svc, obj).await.unwrap();
    }
    let second = stack.drop_file("acme", Some("replace"), "second.csv", list(&["c@acme.example.com"])).await;
    let upsert = stack.drop_file("acme", None, "extra.csv", list(&["d@acme.example.com"])).await;
    let mut later = stack.take_events().await;
    later.extend(pending.into_iter().filter(|o| o.key != first));
    for obj in later.iter().filter(|o| o.key == second || o.key == upsert) {
        shared::local::dispatch(&stack.svc, obj).await.unwrap();
    }
    let refused = stack.wait_job("acme", &second, Duration::from_secs(5)).await;
    assert_eq!(refused.state, JobState::Rejected);
    let reason = stack.summary(&refused).await.reason.unwrap();
    assert!(reason.starts_with("another replace file of this tenant (first.csv, job "), "{reason}");
    // Everything else runs to the end: the first replace, the upsert file beside it.
    for obj in later.iter().filter(|o| o.key != second && o.key != upsert) {
        shared::local::dispatch(&stack.svc, obj).await.unwrap();
    }
    stack.pump(1).await;
    assert_eq!(stack.wait_job("acme", &first, Duration::from_secs(5)).await.state, JobState::Completed);
    assert_eq!(stack.wait_job("acme", &upsert, Duration::from_secs(5)).await.state, JobState::Completed);
    // The first has ended: the same replace file dropped again now runs.
    let again = stack.drop_file("acme", Some("replace-force"), "second.csv", list(&["c@acme.example.com"])).await;
    stack.pump(1).await;
    let jobs = stack.svc.jobs.recent("acme", 20).await.unwrap();
    let done = jobs.iter().find(|j| j.source_key == again && j.state == JobState::Completed);
    assert!(done.is_some(), "{jobs:?}");
    stack.shutdown().await;
}
