#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Undo against the local stack: a 10,000-row job undone puts the directory back as it was,
//! field by field, except what a later job changed since.

use shared::model::{JobState, UserFields, UserStatus};
use std::collections::BTreeMap;
use std::time::Duration;
use tests::{Stack, rows_to_csv};

const WAIT: Duration = Duration::from_secs(300);

/// Every user of the tenant as an admin sees it: status, profile, manual groups.
async fn users(stack: &Stack) -> BTreeMap<String, (UserStatus, UserFields, Vec<String>)> {
    let keys: Vec<String> = stack.svc.directory.list_users("acme").await.unwrap().into_iter().map(|(k, _)| k).collect();
    let mut out = BTreeMap::new();
    for batch in keys.chunks(500) {
        for (email, u) in stack.svc.directory.users("acme", batch).await.unwrap() {
            out.insert(email, (u.status, u.fields, u.manual_groups));
        }
    }
    out
}

#[tokio::test]
async fn undo_of_a_ten_thousand_row_replace_job_restores_the_directory_except_later_changes() {
    let stack = Stack::start().await;
    let mut tenant = stack.tenant("acme");
    tenant.holds = shared::model::Holds::off(); // what is proved here is undo, not the hold
    tenant.notify_started = false;
    stack.put_tenant(&tenant).await;
    let row = |cells: &[&str]| cells.iter().map(|c| c.to_string()).collect::<Vec<_>>();
    let mut seed = vec![row(&["Email", "Department", "Group"])];
    seed.extend((0..300).map(|i| row(&[&format!("u{i}@acme.example.com"), "Sales", "A;B"])));
    let key = stack.drop_file("acme", None, "seed.csv", rows_to_csv(&seed)).await;
    assert_eq!(stack.wait_job("acme", &key, WAIT).await.succeeded, 300);
    let before = users(&stack).await;

    // 40 deletes, then the whole list (replace mode, 10,000 rows): 100 updates, 150 unchanged,
    // 9,750 creates; the 10 active users absent from it disabled, their groups removed.
    let mut deletes = vec![row(&["Action", "Email"])];
    deletes.extend((250..290).map(|i| row(&["Delete", &format!("u{i}@acme.example.com")])));
    let key = stack.drop_file("acme", None, "leavers.csv", rows_to_csv(&deletes)).await;
    let leavers = stack.wait_job("acme", &key, WAIT).await;
    assert_eq!(stack.summary(&leavers).await.counts.changes.deleted, 40);
    let mut list = vec![row(&["Email", "Department", "Group"])];
    list.extend((0..100).map(|i| row(&[&format!("u{i}@acme.example.com"), "Support", "A;C"])));
    list.extend((100..250).map(|i| row(&[&format!("u{i}@acme.example.com"), "Sales", "A;B"])));
    list.extend((0..9_750).map(|i| row(&[&format!("n{i}@acme.example.com"), "New", "N"])));
    assert_eq!(list.len(), 1 + 10_000);
    let key = stack.drop_file("acme", Some("replace"), "everyone.csv", rows_to_csv(&list)).await;
    let job = stack.wait_job("acme", &key, WAIT).await;
    assert_eq!((job.state, job.failed), (JobState::Completed, 0));
    let s = stack.summary(&job).await;
    assert_eq!((s.counts.changes.created, s.counts.changes.updated, s.disabled_not_in_file), (9_750, 100, 10));
    let u299 = stack.svc.directory.user("acme", "u299@acme.example.com").await.unwrap().unwrap();
    assert_eq!((u299.status, u299.fields.groups.len()), (UserStatus::Disabled, 0), "disabled, groups removed");

    // A later job changes one user the job updated and one it created.
    let later = vec![row(&["Email", "Department"]), row(&["u0@acme.example.com", "Later"]), row(&["n0@acme.example.com", "Later"])];
    let later_key = stack.drop_file("acme", None, "later.csv", rows_to_csv(&later)).await;
    let later_job = stack.wait_job("acme", &later_key, WAIT).await;
    let after_later = users(&stack).await;

    // Undone from the S3 console alone.
    stack.drop_file("acme", Some("undo"), &job.id, Vec::new()).await;
    let undo_id = shared::undo::undo_job_id(&job.id);
    let deadline = std::time::Instant::now() + WAIT;
    let undo = loop {
        let undo = stack.svc.jobs.get(&undo_id).await.unwrap();
        if let Some(u) = undo.filter(|u| u.state.is_final()) {
            break u;
        }
        assert!(std::time::Instant::now() < deadline, "undo job {undo_id} did not finish");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(undo.state, JobState::Completed);
    let s = stack.summary(&undo).await;
    assert_eq!((s.rows, s.counts.skipped, s.counts.failure), (9_860, 2, 0), "every change put back but the 2 changed since");
    assert_eq!((s.counts.changes.deleted, s.counts.changes.created, s.counts.changes.updated), (9_749, 0, 109));
    // And the deletes before it, undone from the CLI's way in.
    let line = shared::holds::decide(&stack.svc, &leavers.id, Some("acme"), shared::holds::Verb::Undo, "test").await.unwrap().unwrap();
    assert!(line.contains("40 changes to put back"), "{line}");
    let undone = shared::undo::undo_job_id(&leavers.id);
    while !stack.svc.jobs.get(&undone).await.unwrap().is_some_and(|j| j.state.is_final()) {
        assert!(std::time::Instant::now() < deadline, "undo job {undone} did not finish");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let s2 = stack.summary(&stack.svc.jobs.get(&undone).await.unwrap().unwrap()).await;
    assert_eq!((s2.counts.changes.created, s2.counts.failure), (40, 0));

    let mut expected = before.clone();
    for email in ["u0@acme.example.com", "n0@acme.example.com"] {
        expected.insert(email.to_string(), after_later[email].clone());
    }
    let now = users(&stack).await;
    assert_eq!(now.len(), expected.len(), "created users removed, deleted ones back");
    for (email, want) in &expected {
        assert_eq!(now.get(email), Some(want), "{email}");
    }
    let result = tests::parse_csv(&stack.get(s.result_key.as_deref().unwrap()).await.unwrap());
    let changed_since: Vec<&Vec<String>> = result.iter().filter(|r| r[4] == "Skipped").collect();
    assert_eq!(changed_since.len(), 2);
    assert!(changed_since.iter().all(|r| r[5] == format!("changed since by job {}", later_job.id)), "{changed_since:?}");
    // Twice: one line, nothing changed.
    let again = shared::holds::decide(&stack.svc, &job.id, None, shared::holds::Verb::Undo, "test").await.unwrap().unwrap_err();
    assert!(again.contains("was undone already"), "{again}");
    stack.shutdown().await;
}
