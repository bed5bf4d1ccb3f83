#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Faults do not lose, duplicate or half-apply anything: throttled DynamoDB calls, failing S3
//! writes, an invocation that crashes halfway through a chunk and is retried, a finalize that
//! crashes after sending its email.

use shared::model::JobState;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tests::faults::Faults;
use tests::{Stack, parse_csv, rows_to_csv, sample_roster, wait_mail};

const WAIT: Duration = Duration::from_secs(30);

/// Deliver queued events like Lambda's async invocation with retries: a failed invocation is run
/// again (up to 25 times: a burst of 60 failed writes that starts where an invocation makes one
/// write at a time, with 4 SDK attempts each, fails 15 invocations in a row). Returns how many
/// invocations failed and were retried.
async fn deliver(stack: &Stack) -> usize {
    let mut retried = 0;
    loop {
        let events = stack.take_events().await;
        if events.is_empty() {
            return retried;
        }
        for obj in events {
            let mut attempt = 0;
            while let Err(e) = shared::route::dispatch(&stack.svc, &obj).await {
                attempt += 1;
                retried += 1;
                assert!(attempt < 25, "{} kept failing: {e}", obj.key);
            }
        }
    }
}

/// Every chunk counts on its job's one item with a plain conditional write; one that meets a
/// transaction on that item is refused with TransactionConflictException. That is contention, not
/// a fault of the file: the SDK and then the count itself send it again, and the job completes
/// instead of stopping as a chunk no retry can apply.
#[tokio::test]
async fn chunks_whose_count_meets_a_transaction_count_again_and_the_job_completes() {
    let faults = Arc::new(Faults::default());
    let stack = Stack::start_manual_faulty(faults.clone(), |c| c.chunk_size = 2).await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let mut file = String::from("Email,Department\n");
    for i in 0..6 {
        file += &format!("c{i}@acme.example.com,Sales\n");
    }
    let key = stack.drop_file("acme", None, "crowd.csv", file.into_bytes()).await;
    // Counts (the job item's `ADD done1`) are refused six times in a row: more than the SDK's
    // attempts of one request.
    *faults.conflict_matching.lock().unwrap() = Some(("ADD done1".into(), 6));
    faults.enabled.store(true, Ordering::Relaxed);
    let retried = deliver(&stack).await;
    let job = stack.wait_job("acme", &key, WAIT).await;
    faults.enabled.store(false, Ordering::Relaxed);
    assert_eq!((job.state, job.succeeded, job.failed), (JobState::Completed, 6, 0), "{job:?}");
    assert_eq!(faults.injected(), 6, "every conflict was met");
    assert_eq!(retried, 0, "no invocation failed: the count was sent again in place");
    for i in 0..6 {
        assert!(stack.svc.directory.user("acme", &format!("c{i}@acme.example.com")).await.unwrap().is_some(), "c{i}");
    }
    let mails = wait_mail(&stack.admin_email(), 1, WAIT).await;
    assert_eq!(mails.len(), 1);
    stack.shutdown().await;
}

/// A plain write to the job item that meets a chunk's count transaction is refused with
/// TransactionConflictException; the SDK sends it again (our retry classifier) instead of failing
/// the invocation for Lambda to run it all again.
#[tokio::test]
async fn a_job_write_that_meets_a_transaction_is_sent_again_by_the_sdk() {
    let faults = Arc::new(Faults::default());
    let stack = Stack::start_manual_faulty(faults.clone(), |c| c.chunk_size = 2).await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let key = stack.drop_file("acme", None, "claim.csv", b"Email\nd1@acme.example.com\nd2@acme.example.com\n".to_vec()).await;
    // The result email's claim (an UpdateItem of the job item), twice: within the SDK's attempts.
    *faults.conflict_matching.lock().unwrap() = Some(("email_result".into(), 2));
    faults.enabled.store(true, Ordering::Relaxed);
    let retried = deliver(&stack).await;
    let job = stack.wait_job("acme", &key, WAIT).await;
    faults.enabled.store(false, Ordering::Relaxed);
    assert_eq!((job.state, job.succeeded), (JobState::Completed, 2), "{job:?}");
    assert_eq!(faults.injected(), 2, "both conflicts were met");
    assert_eq!(retried, 0, "no invocation failed: the SDK sent the claim again");
    assert_eq!(wait_mail(&stack.admin_email(), 1, WAIT).await.len(), 1);
    stack.shutdown().await;
}

#[tokio::test]
async fn throttling_failed_writes_and_a_crash_mid_chunk_still_apply_every_row_exactly_once() {
    let faults = Arc::new(Faults {
        dynamodb_throttle_every: 10,
        s3_put_fail_every: 7,
        burst_after_writes: 150,
        // Long enough that some write fails all 3 of its attempts although 16 are in flight: the
        // invocation then fails halfway through its chunk, as a crash would, and is retried.
        burst_len: 60,
        ..Default::default()
    });
    let stack = Stack::start_manual_faulty(faults.clone(), |c| {
        c.chunk_size = 50;
        c.sdk_max_attempts = 3;
    })
    .await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let (rows, ok) = sample_roster(296);
    let key = stack.drop_file("acme", None, "faulty.csv", rows_to_csv(&rows)).await;
    faults.enabled.store(true, Ordering::Relaxed);
    let retried = deliver(&stack).await;
    faults.enabled.store(false, Ordering::Relaxed);

    let job = stack.wait_job("acme", &key, Duration::from_secs(5)).await;
    assert_eq!(job.state, JobState::Completed);
    let s = stack.summary(&job).await;
    let expected_fail = ok.iter().filter(|g| !**g).count() as u32;
    assert_eq!((s.counts.success, s.counts.failure, s.counts.total()), (300 - expected_fail, expected_fail, 300), "counts add up");
    let result = parse_csv(&stack.get(s.result_key.as_deref().unwrap()).await.unwrap());
    for (row, good) in result[1..].iter().zip(&ok) {
        assert_eq!(row[10] == "Created", *good, "{row:?}");
        if *good {
            assert!(row[11].ends_with("created"), "a create retried after success reports success, not {:?}", row[11]);
        }
    }
    // Every user was written by its own row of this job, once.
    // The first row of an email is the one applied (later duplicates fail).
    let mut row_of: HashMap<String, usize> = HashMap::new();
    for (i, r) in rows[1..].iter().enumerate() {
        row_of.entry(r[2].to_lowercase()).or_insert(i + 2);
    }
    let users = stack.svc.directory.list_users("acme").await.unwrap();
    assert_eq!(users.len() as u32, 300 - expected_fail - 4, "users created (the 4 org rows are not users)");
    for (email, _) in &users {
        let u = stack.svc.directory.user("acme", email).await.unwrap().unwrap();
        assert_eq!(u.created_by, format!("{}#{}", job.id, row_of[email]), "{email}");
    }
    assert_eq!(wait_mail(&stack.admin_email(), 1, Duration::from_secs(5)).await.len(), 1, "one email");
    let injected = faults.injected();
    eprintln!("faults injected: {injected}; invocations retried after failing: {retried}");
    assert!(injected >= 40 && retried >= 1, "the faults really happened: {injected} injected, {retried} retried");
    stack.shutdown().await;
}

#[tokio::test]
async fn a_finalize_that_crashes_after_sending_the_email_sends_no_second_one() {
    let faults = Arc::new(Faults::default());
    let stack = Stack::start_manual_faulty(faults.clone(), |c| c.sdk_max_attempts = 3).await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let key = stack.drop_file("acme", None, "once.csv", b"Email\na@acme.example.com\nb@acme.example.com\n".to_vec()).await;
    // The job's completion update fails 4 times: more than one invocation's 3 attempts.
    *faults.fail_matching.lock().unwrap() = Some(("completed_at".into(), 4));
    faults.enabled.store(true, Ordering::Relaxed);
    let retried = deliver(&stack).await;
    assert!(retried >= 1, "finalize crashed and was retried");
    let job = stack.wait_job("acme", &key, Duration::from_secs(5)).await;
    assert_eq!(job.state, JobState::Completed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(tests::mail_to(&stack.admin_email()).len(), 1, "exactly one email despite the retried finalize");
    stack.shutdown().await;
}

#[tokio::test]
async fn a_job_stuck_past_its_deadline_fails_with_an_email_of_what_was_and_was_not_applied() {
    let stack = Stack::start_manual_faulty(Arc::new(Faults::default()), |c| c.chunk_size = 2).await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let emails = ["s1@acme.example.com", "s2@acme.example.com", "s3@acme.example.com", "s4@acme.example.com", "s5@acme.example.com"];
    let mut file = String::from("Email\n");
    for e in &emails {
        file += &format!("{e}\n");
    }
    let key = stack.drop_file("acme", None, "stuck.csv", file.into_bytes()).await;
    // Ingest and the first chunk run; the other two chunks keep failing (their events are lost here).
    // Until those three have arrived, not until a quiet second (S3 notifications may come late).
    let (mut late, mut first, deadline) = (Vec::new(), false, std::time::Instant::now() + WAIT);
    while !(first && late.len() >= 2) {
        assert!(std::time::Instant::now() < deadline, "events missing: first chunk {first}, {} others", late.len());
        for obj in stack.take_events().await {
            if obj.key.starts_with("incoming/") || obj.key.ends_with("p1-000000.jsonl") {
                first |= obj.key.ends_with("p1-000000.jsonl");
                shared::route::dispatch(&stack.svc, &obj).await.unwrap();
            } else {
                late.push(obj);
            }
        }
    }
    assert!(stack.take_events().await.is_empty(), "nothing else is sent");
    assert_eq!(late.len(), 2, "two chunks left behind");
    let now = chrono::Utc::now();
    assert_eq!(shared::monitor::fail_stuck_jobs(&stack.svc, now).await.unwrap(), 0, "not before its deadline");
    let later = now + chrono::Duration::hours(4);
    assert_eq!(shared::monitor::fail_stuck_jobs(&stack.svc, later).await.unwrap(), 1);

    let job = stack.wait_job("acme", &key, Duration::from_secs(5)).await;
    assert_eq!(job.state, JobState::Failed);
    let s = stack.summary(&job).await;
    assert_eq!((s.counts.success, s.counts.failure), (2, 3));
    let result = parse_csv(&stack.get(s.result_key.as_deref().unwrap()).await.unwrap());
    assert_eq!(result[1][1..4], ["Created".to_string(), "user created".to_string(), String::new()]);
    // Their parts were handed to apply and never recorded: whether their rows were written is not
    // known (a part that failed all its retries may have written some), so they say so.
    assert_eq!(result[3][1..], ["Failure".to_string(), shared::finalize::NOT_CONFIRMED.to_string(), String::new(), String::new()]);
    let failed = parse_csv(&stack.get(s.failed_rows_key.as_deref().unwrap()).await.unwrap());
    assert_eq!(failed.len(), 4, "the 3 rows not confirmed, ready to upload again");
    let mails = wait_mail(&stack.admin_email(), 1, Duration::from_secs(5)).await;
    let subject = mail_parser::MessageParser::default().parse(&mails[0]).unwrap().subject().unwrap().to_string();
    assert!(subject.ends_with("stuck.csv FAILED: 2 applied, 3 not confirmed, 0 failed"), "{subject}");

    // A late chunk cannot make the email untrue; a second check stops nothing more.
    for obj in &late {
        shared::route::dispatch(&stack.svc, obj).await.unwrap();
    }
    assert!(stack.svc.directory.user("acme", emails[4]).await.unwrap().is_none(), "late chunk not applied");
    assert_eq!(shared::monitor::fail_stuck_jobs(&stack.svc, later).await.unwrap(), 0);
    assert_eq!(tests::mail_to(&stack.admin_email()).len(), 1, "one email");
    stack.shutdown().await;
}

/// Every 7th DynamoDB write lands but its response is lost, so the SDK retries a write that already
/// happened; and in each job a burst of errors crashes an invocation halfway, so a new invocation
/// redoes writes that landed. Creates still say `created`, deletes `deleted` (the tombstone written
/// with the delete tells the retry it was its own), unknown users `not found`, licences come back
/// exactly once, and each job's email claim recognises itself (one email per job, not none).
#[tokio::test]
async fn writes_whose_responses_are_lost_report_what_they_did_not_what_the_retry_saw() {
    let faults = Arc::new(Faults { lose_response_every: 7, burst_after_writes: 25, burst_len: 60, ..Default::default() });
    let stack = Stack::start_manual_faulty(faults.clone(), |c| {
        c.chunk_size = 10;
        c.sdk_max_attempts = 4;
    })
    .await;
    let mut tenant = stack.tenant("acme");
    // Mass changes on purpose (what this test proves is not the hold): never held.
    tenant.holds = shared::model::Holds::off();
    tenant.licences = Some(100);
    tenant.notify_started = false;
    stack.put_tenant(&tenant).await;
    let emails: Vec<String> = (0..30).map(|i| format!("u{i:02}@acme.example.com")).collect();

    let run = |name: &'static str, body: String| {
        let (stack, faults) = (&stack, faults.clone());
        async move {
            let key = stack.drop_file("acme", None, name, body.into_bytes()).await;
            faults.writes.store(0, Ordering::Relaxed);
            faults.enabled.store(true, Ordering::Relaxed);
            let retried = deliver(stack).await;
            faults.enabled.store(false, Ordering::Relaxed);
            assert!(retried >= 1, "{name}: an invocation crashed and was retried");
            let job = stack.wait_job("acme", &key, Duration::from_secs(5)).await;
            assert_eq!(job.state, JobState::Completed);
            let s = stack.summary(&job).await;
            parse_csv(&stack.get(s.result_key.as_deref().unwrap()).await.unwrap())
        }
    };

    let created = run("create.csv", emails.iter().fold("Email,Action\n".to_string(), |acc, e| acc + e + ",Create\n")).await;
    let messages: Vec<&str> = created[1..].iter().map(|r| r[r.len() - 3].as_str()).collect();
    assert!(messages.iter().all(|m| *m == "user created"), "{messages:?}");
    assert_eq!(stack.svc.directory.licences_used("acme", None).await.unwrap(), 30);

    let mut deletes = emails.iter().fold("Email,Action\n".to_string(), |acc, e| acc + e + ",Delete\n");
    deletes += "ghost1@acme.example.com,Delete\nghost2@acme.example.com,Delete\n";
    let deleted = run("delete.csv", deletes).await;
    let messages: Vec<&str> = deleted[1..].iter().map(|r| r[r.len() - 3].as_str()).collect();
    assert!(messages[..30].iter().all(|m| *m == "user deleted"), "a delete retried after it succeeded says deleted: {messages:?}");
    assert!(messages[30..].iter().all(|m| m.starts_with("user not found")), "{messages:?}");
    assert!(stack.svc.directory.list_users("acme").await.unwrap().is_empty());
    assert_eq!(stack.svc.directory.licences_used("acme", None).await.unwrap(), 0, "every licence back, once");

    assert_eq!(wait_mail(&stack.admin_email(), 2, Duration::from_secs(5)).await.len(), 2, "one result email per job");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(tests::mail_to(&stack.admin_email()).len(), 2);
    let injected = faults.injected();
    eprintln!("responses lost after the write landed: {injected}");
    assert!(injected >= 30, "{injected}");
    stack.shutdown().await;
}

/// SES fails past the SDK's retries while finalize sends the result email. The invocation fails
/// and frees its claim: Lambda's retry sends. When every retry fails, the job stays open rather
/// than COMPLETED without an email; the scheduled sweep finalizes again a lease later and the
/// admins get exactly one email, late but never silently dropped.
#[tokio::test]
async fn a_result_email_that_failed_to_send_is_sent_by_the_retry_or_late_by_the_sweep_never_dropped() {
    let faults = Arc::new(Faults::default());
    let stack = Stack::start_manual_faulty(faults.clone(), |c| {
        c.sdk_max_attempts = 2;
        c.lease = shared::model::Lease { secs: 6 };
    })
    .await;
    let mut tenant = stack.tenant("acme");
    tenant.notify_started = false;
    stack.put_tenant(&tenant).await;
    // The first try's send fails (both SDK attempts): it frees its claim, and Lambda's retry sends.
    let key = stack.drop_file("acme", None, "retried.csv", b"Email\na@acme.example.com\n".to_vec()).await;
    faults.ses_fail.store(2, Ordering::Relaxed);
    faults.enabled.store(true, Ordering::Relaxed);
    let retried = deliver(&stack).await;
    faults.enabled.store(false, Ordering::Relaxed);
    assert!(retried >= 1, "finalize failed and was retried");
    assert_eq!(stack.wait_job("acme", &key, Duration::from_secs(5)).await.state, JobState::Completed);
    assert_eq!(wait_mail(&stack.admin_email(), 1, Duration::from_secs(5)).await.len(), 1, "sent by the retry");

    // Every one of Lambda's three tries fails to send: the job stays open, and the sweep sends
    // once the job has been open a lease.
    let key = stack.drop_file("acme", None, "late.csv", b"Email\nb@acme.example.com\n".to_vec()).await;
    faults.ses_fail.store(6, Ordering::Relaxed);
    faults.enabled.store(true, Ordering::Relaxed);
    loop {
        let events = stack.take_events().await;
        if events.is_empty() {
            break;
        }
        for obj in events {
            let tries = if obj.key.starts_with("done/") { 3 } else { 25 };
            for _ in 0..tries {
                if shared::route::dispatch(&stack.svc, &obj).await.is_ok() {
                    break;
                }
            }
        }
    }
    faults.enabled.store(false, Ordering::Relaxed);
    let open = stack.svc.jobs.recent("acme", 10).await.unwrap().into_iter().find(|j| j.source_key == key).unwrap();
    assert_eq!(open.state, JobState::Applying, "not COMPLETED while its email is unsent");
    assert_eq!(tests::mail_to(&stack.admin_email()).len(), 1, "only the first file's");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(shared::monitor::finish_unsent_jobs(&stack.svc, chrono::Utc::now()).await.unwrap(), 1);
    let job = stack.wait_job("acme", &key, Duration::from_secs(5)).await;
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(wait_mail(&stack.admin_email(), 2, Duration::from_secs(5)).await.len(), 2);
    assert_eq!(shared::monitor::finish_unsent_jobs(&stack.svc, chrono::Utc::now()).await.unwrap(), 0, "a finished job is left alone");
    assert_eq!(tests::mail_to(&stack.admin_email()).len(), 2, "exactly one email a file");
    stack.shutdown().await;
}
