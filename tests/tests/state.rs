#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! State stays right across uploads: every upload of a key is its own job reading its own bytes.

use futures::StreamExt;
use shared::event::ObjectRef;
use shared::model::{JobState, UserStatus};
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
    assert_eq!(stack.svc.directory.licences_used("acme", None).await.unwrap(), 10);
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
        shared::route::dispatch(&stack.svc, obj).await.unwrap();
    }
    let second = stack.drop_file("acme", Some("replace"), "second.csv", list(&["c@acme.example.com"])).await;
    let upsert = stack.drop_file("acme", None, "extra.csv", list(&["d@acme.example.com"])).await;
    let mut later = stack.take_events().await;
    later.extend(pending.into_iter().filter(|o| o.key != first));
    for obj in later.iter().filter(|o| o.key == second || o.key == upsert) {
        shared::route::dispatch(&stack.svc, obj).await.unwrap();
    }
    let refused = stack.wait_job("acme", &second, Duration::from_secs(5)).await;
    assert_eq!(refused.state, JobState::Rejected);
    let reason = stack.summary(&refused).await.reason.unwrap();
    assert!(reason.starts_with("another replace file of this tenant (first.csv, job "), "{reason}");
    // Everything else runs to the end: the first replace, the upsert file beside it.
    for obj in later.iter().filter(|o| o.key != second && o.key != upsert) {
        shared::route::dispatch(&stack.svc, obj).await.unwrap();
    }
    stack.pump(1).await;
    assert_eq!(stack.wait_job("acme", &first, Duration::from_secs(5)).await.state, JobState::Completed);
    assert_eq!(stack.wait_job("acme", &upsert, Duration::from_secs(5)).await.state, JobState::Completed);
    // The first has ended: the same replace file dropped again now runs.
    let again = stack.drop_file("acme", Some("replace-force"), "second.csv", list(&["c@acme.example.com"])).await;
    assert_eq!(stack.wait_job("acme", &again, Duration::from_secs(30)).await.state, JobState::Completed);
    stack.shutdown().await;
}

/// Events of the bucket until `n` have arrived (S3 notifications reach the queue asynchronously).
async fn events(stack: &Stack, n: usize) -> Vec<ObjectRef> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    while got.len() < n {
        assert!(std::time::Instant::now() < deadline, "{} of {n} events: {got:?}", got.len());
        got.extend(stack.take_events().await);
    }
    got
}

/// Deliver events all at once, each `times` times (duplicates run alongside the original).
async fn deliver_at_once(stack: &Stack, objs: &[ObjectRef], times: usize) {
    let runs = objs.iter().flat_map(|o| std::iter::repeat_n(o, times)).map(|o| shared::route::dispatch(&stack.svc, o));
    for r in futures::future::join_all(runs).await {
        r.expect("handler succeeds");
    }
}

fn csv(rows: &[Vec<String>]) -> Vec<u8> {
    tests::rows_to_csv(rows)
}

fn action_rows(action: &str, emails: &[String]) -> Vec<Vec<String>> {
    let mut rows = vec![vec!["Action".to_string(), "Email".to_string()]];
    rows.extend(emails.iter().map(|e| vec![action.to_string(), e.clone()]));
    rows
}

async fn job_of(stack: &Stack, key: &str) -> shared::model::Job {
    stack.wait_job("acme", key, Duration::from_secs(30)).await
}

async fn active_users(stack: &Stack) -> u32 {
    stack.svc.directory.list_users("acme").await.unwrap().iter().filter(|(_, s)| *s == UserStatus::Active).count() as u32
}

/// Two files disabling the same 20 users, their 8 chunks applied at the same moment: each user's
/// licence comes back once (the disable whose condition saw `active`), not twice. With 10 other
/// users active, a double give-back would show as 0 (clamped), not 10.
#[tokio::test]
async fn two_files_disabling_the_same_users_at_once_give_each_licence_back_once() {
    let stack = Stack::start_manual().await;
    let mut tenant = stack.tenant("acme");
    // Mass changes on purpose (what this test proves is not the hold): never held.
    tenant.holds = shared::model::Holds::off();
    tenant.licences = Some(100);
    tenant.chunk_size = Some(5);
    stack.put_tenant(&tenant).await;
    let users: Vec<String> = (0..30).map(|i| format!("u{i}@acme.example.com")).collect();
    let key = stack.drop_file("acme", None, "people.csv", csv(&action_rows("Create", &users))).await;
    stack.pump(1).await;
    assert_eq!(job_of(&stack, &key).await.succeeded, 30);
    assert_eq!(stack.svc.directory.licences_used("acme", None).await.unwrap(), 30);

    let a = stack.drop_file("acme", None, "disable-a.csv", csv(&action_rows("Disable", &users[..20]))).await;
    let b = stack.drop_file("acme", None, "disable-b.csv", csv(&action_rows("Disable", &users[..20]))).await;
    deliver_at_once(&stack, &events(&stack, 2).await, 1).await;
    let chunks = events(&stack, 8).await;
    assert_eq!(chunks.len(), 8, "4 chunks of 5 rows per file");
    deliver_at_once(&stack, &chunks, 1).await;
    stack.pump(1).await;
    let (a, b) = (job_of(&stack, &a).await, job_of(&stack, &b).await);
    // Rows of the older file that reach a user after the newer file did are skipped (the newer
    // upload wins); the others disable, or find the user disabled already. None fails.
    assert_eq!((a.succeeded + a.skipped, b.succeeded + b.skipped, a.failed + b.failed), (20, 20, 0), "{a:?} {b:?}");
    eprintln!("two disables: older file {} applied, {} skipped; newer {} applied", a.succeeded, a.skipped, b.succeeded);
    assert_eq!(stack.svc.directory.licences_used("acme", None).await.unwrap(), 10, "20 licences back, each once");
    assert_eq!(active_users(&stack).await, 10);
}

/// 40 chunks of four files run at once, each delivered twice (80 invocations): creates beyond
/// the pool, disables, deletes and enables of existing users. Whatever the interleaving, the
/// pool ends exactly at the tenant's active users and never above its limit.
#[tokio::test]
async fn forty_concurrent_chunks_taking_and_giving_licences_end_exactly_at_the_active_users() {
    let stack = Stack::start_manual().await;
    let mut tenant = stack.tenant("acme");
    // Mass changes on purpose (what this test proves is not the hold): never held.
    tenant.holds = shared::model::Holds::off();
    tenant.chunk_size = Some(5);
    stack.put_tenant(&tenant).await;
    let old: Vec<String> = (0..100).map(|i| format!("old{i}@acme.example.com")).collect();
    let new: Vec<String> = (0..100).map(|i| format!("new{i}@acme.example.com")).collect();
    let key = stack.drop_file("acme", None, "old.csv", csv(&action_rows("Create", &old))).await;
    assert_eq!(job_of(&stack, &key).await.succeeded, 100);
    let key2 = stack.drop_file("acme", None, "off.csv", csv(&action_rows("Disable", &old[75..]))).await;
    assert_eq!(job_of(&stack, &key2).await.succeeded, 25);
    // The pool arrives after the users, as `tenant put` configures it: counted from them.
    tenant.licences = Some(110);
    stack.put_tenant(&tenant).await;
    assert_eq!(shared::apply::recount_licences(&stack.svc, &tenant).await.unwrap(), [(None, 0, 75)]);

    let files = [
        ("create.csv", action_rows("Create", &new)),
        ("disable.csv", action_rows("Disable", &old[..50])),
        ("delete.csv", action_rows("Delete", &old[50..75])),
        ("enable.csv", action_rows("Enable", &old[75..])),
    ];
    let mut keys = Vec::new();
    for (name, rows) in &files {
        keys.push(stack.drop_file("acme", None, name, csv(rows)).await);
    }
    deliver_at_once(&stack, &events(&stack, 4).await, 1).await;
    let chunks = events(&stack, 40).await;
    assert_eq!(chunks.len(), 40);
    deliver_at_once(&stack, &chunks, 2).await;
    stack.pump(1).await;
    let mut jobs = Vec::new();
    for key in &keys {
        jobs.push(job_of(&stack, key).await);
    }
    let used = stack.svc.directory.licences_used("acme", None).await.unwrap();
    let active = active_users(&stack).await;
    eprintln!(
        "forty chunks: create {}/{} refused {}, disable {}, delete {}, enable {}/{}; pool {used}, active {active}",
        jobs[0].succeeded, 100, jobs[0].failed, jobs[1].succeeded, jobs[2].succeeded, jobs[3].succeeded, 25
    );
    assert_eq!(used, active, "the pool counts exactly the active users");
    assert!(used <= 110, "never above the limit: {used}");
    assert_eq!((jobs[1].succeeded, jobs[2].succeeded), (50, 25), "disables and deletes need no licence");
    // Every create and enable either got a licence or was refused for want of one.
    assert_eq!(jobs[0].succeeded + jobs[0].failed, 100);
    assert_eq!(jobs[3].succeeded + jobs[3].failed, 25);
    // 75 active before; the 50 disabled and 25 deleted leave none of them.
    assert_eq!(active, jobs[0].succeeded + jobs[3].succeeded);
    assert!(jobs[0].failed + jobs[3].failed > 0, "the pool was exhausted at some point: {jobs:?}");
}

/// The older upload's chunk arrives after a newer upload changed the same users (a retry, or a
/// dead-letter replay): its rows for those users are skipped, naming the newer job, and the
/// newer values stay; a user the newer upload deleted stays deleted; rows nobody newer touched
/// apply as usual.
#[tokio::test]
async fn a_chunk_applied_after_a_newer_upload_changed_its_users_leaves_the_newer_values() {
    let stack = Stack::start_manual().await;
    let mut tenant = stack.tenant("acme");
    tenant.licences = Some(100);
    stack.put_tenant(&tenant).await;
    let users: Vec<String> = (1..=5).map(|i| format!("u{i}@acme.example.com")).collect();
    let dept = |d: &str| {
        let mut rows = vec![vec!["Email".to_string(), "Department".to_string()]];
        rows.extend(users.iter().map(|u| vec![u.clone(), d.to_string()]));
        rows
    };
    let key = stack.drop_file("acme", None, "base.csv", csv(&dept("Base"))).await;
    stack.pump(1).await;
    assert_eq!(job_of(&stack, &key).await.succeeded, 5);

    // The older upload is read and chunked, but its chunk waits.
    let old_key = stack.drop_file("acme", None, "old.csv", csv(&dept("Old"))).await;
    deliver_at_once(&stack, &events(&stack, 1).await, 1).await;
    let old_chunks = events(&stack, 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut rows = vec![vec!["Action".to_string(), "Email".to_string(), "Department".to_string()]];
    rows.extend(users[..3].iter().map(|u| vec!["Update".to_string(), u.clone(), "New".to_string()]));
    rows.push(vec!["Delete".to_string(), users[3].clone(), String::new()]);
    let new_key = stack.drop_file("acme", None, "new.csv", csv(&rows)).await;
    stack.pump(1).await;
    let new_job = job_of(&stack, &new_key).await;
    assert_eq!(new_job.succeeded, 4);

    // Now the older chunk, twice (its retry finds its own stamp where it wrote).
    deliver_at_once(&stack, &old_chunks, 2).await;
    stack.pump(1).await;
    let old_job = job_of(&stack, &old_key).await;
    assert_eq!((old_job.state, old_job.succeeded, old_job.skipped, old_job.failed), (JobState::Completed, 1, 4, 0), "{old_job:?}");
    let result = tests::parse_csv(&stack.get(stack.summary(&old_job).await.result_key.as_deref().unwrap()).await.unwrap());
    let skipped = format!("changed by a newer upload (job {})", new_job.id);
    for row in &result[1..5] {
        assert_eq!(&row[row.len() - 4..row.len() - 2], ["Skipped".to_string(), skipped.clone()], "{result:?}");
    }
    let n = result[5].len();
    assert_eq!(result[5][n - 4..n - 1], ["Updated".to_string(), "user updated".to_string(), "Department: \"Base\" -> \"Old\"".to_string()]);
    let dir = &stack.svc.directory;
    for u in &users[..3] {
        assert_eq!(dir.user("acme", u).await.unwrap().unwrap().fields.department.as_deref(), Some("New"), "{u}");
    }
    assert!(dir.user("acme", &users[3]).await.unwrap().is_none(), "deleted by the newer upload, not brought back");
    assert_eq!(dir.user("acme", &users[4]).await.unwrap().unwrap().fields.department.as_deref(), Some("Old"));
    assert_eq!(dir.licences_used("acme", None).await.unwrap(), 4, "five created, one deleted");
    // The deleted user's row reserved nothing: the count above does not depend on which of the
    // two attempts settled first.
    let (job, phase, seq) = shared::keys::parse_chunk(&old_chunks[0].key).unwrap();
    let claim = format!("{job}#{phase}#{seq}");
    let recorded = dir.reserve_licences("acme", None, 100, &claim, Default::default()).await.unwrap();
    assert_eq!((recorded.repeated, recorded.granted, recorded.takers.len()), (true, 0, 0), "{recorded:?}");
}

/// A chunk learns from its own counting write whether it may have completed its phase, so only
/// that chunk reads the job afterwards. Twenty chunks recorded at once, each twice: every chunk
/// is counted once, and exactly one is told it may be the last.
#[tokio::test]
async fn of_chunks_recorded_at_once_exactly_one_is_told_it_may_complete_the_phase() {
    use shared::ports::{Plan, Recorded};
    let stack = Stack::start().await;
    let job = shared::model::Job::received("rec-job", "acme", "incoming/acme/r.csv", "r.csv", None, "2026-12-01T00:00:00Z");
    stack.svc.jobs.create_or_get(&job).await.unwrap();
    stack.svc.jobs.set_plan(&job.id, &Plan { phase_chunks: [0, 20, 0, 0], total_rows: 20, mode: None }).await.unwrap();
    let jobs = &stack.svc.jobs;
    assert_eq!(jobs.get("rec-job").await.unwrap().unwrap().counted_at, None);
    let before = chrono::Utc::now();
    let tries = (0..40u32).map(|i| async move { jobs.record_chunk("rec-job", 1, i % 20, Some(20)).await.unwrap() });
    let results = futures::future::join_all(tries).await;
    let count = |r: Recorded| results.iter().filter(|x| **x == r).count();
    assert_eq!(count(Recorded::Before), 20, "{results:?}");
    assert_eq!(count(Recorded::Counted { last: true }), 1, "{results:?}");
    assert_eq!(count(Recorded::Counted { last: false }), 19, "{results:?}");
    let counted = jobs.get("rec-job").await.unwrap().unwrap();
    assert_eq!(counted.phase_done, [0, 20, 0, 0]);
    // When a chunk was last counted: the release sweep leaves a job that moves alone.
    let at = chrono::DateTime::parse_from_rfc3339(counted.counted_at.as_deref().expect("counted_at")).unwrap();
    assert!(at >= before - chrono::Duration::seconds(1) && at <= chrono::Utc::now(), "{at}");
    // Without the phase's size the caller is always told to look.
    assert_eq!(jobs.record_chunk("rec-job", 2, 0, None).await.unwrap(), Recorded::Counted { last: true });
    // A phase of one chunk: that chunk completes it.
    assert_eq!(jobs.record_chunk("rec-job", 3, 0, Some(1)).await.unwrap(), Recorded::Counted { last: true });
    // The job's one read tells a chunk whether it was counted.
    let recorded = |phase, seq| async move { jobs.job_for_chunk("rec-job", phase, seq).await.unwrap().unwrap().1 };
    assert!(recorded(1, 7).await && recorded(1, 19).await && recorded(2, 0).await);
    assert!(!recorded(1, 20).await && !recorded(2, 1).await && !recorded(0, 7).await);
    assert!(jobs.job_for_chunk("no-such-job", 1, 0).await.unwrap().is_none());
    stack.shutdown().await;
}

/// Counted chunks are a set on the job's item, written whole by every count. At the most chunks
/// a phase is cut into (`MAX_CHUNKS_PER_PHASE`), in every phase, the item stays far below
/// DynamoDB's 400 KB and a count costs a few write units.
#[tokio::test]
async fn a_job_counting_the_most_chunks_in_every_phase_keeps_a_small_item() {
    use shared::ingest::MAX_CHUNKS_PER_PHASE;
    use shared::model::PHASES;
    let stack = Stack::start().await;
    let job = shared::model::Job::received("big-job", "acme", "incoming/acme/b.csv", "b.csv", None, "2026-12-01T00:00:00Z");
    stack.svc.jobs.create_or_get(&job).await.unwrap();
    let most = MAX_CHUNKS_PER_PHASE as u32;
    let jobs = &stack.svc.jobs;
    let counts = (0..PHASES).flat_map(|p| (0..most).map(move |seq| (p, seq)));
    futures::stream::iter(counts)
        .map(|(p, seq)| async move { jobs.record_chunk("big-job", p, seq, Some(most)).await.unwrap() })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let (stored, recorded) = jobs.job_for_chunk("big-job", PHASES - 1, most - 1).await.unwrap().unwrap();
    assert!(recorded);
    assert_eq!(stored.phase_done, [most; PHASES]);
    // What writing the item once more costs, as DynamoDB reports it: one unit per kilobyte.
    let out = stack
        .aws
        .dynamodb
        .update_item()
        .table_name(&stack.config.jobs_table)
        .key("pk", aws_sdk_dynamodb::types::AttributeValue::S("J#big-job".into()))
        .update_expression("SET probe = :p")
        .expression_attribute_values(":p", aws_sdk_dynamodb::types::AttributeValue::S("x".into()))
        .return_consumed_capacity(aws_sdk_dynamodb::types::ReturnConsumedCapacity::Total)
        .send()
        .await
        .unwrap();
    let units = out.consumed_capacity.and_then(|c| c.capacity_units).unwrap();
    assert!(units <= 16.0, "a count of the fullest job costs {units} write units");
    stack.shutdown().await;
}

/// A chunk's ExternalIds are read in batches of 100 sent together (they went one after another):
/// every holder of 1,750 claimed ids among 2,000 is found, and none of the 250 nobody claimed.
#[tokio::test]
async fn a_whole_chunk_of_external_ids_is_read_with_every_holder_found() {
    let stack = Stack::start().await;
    let ids: Vec<String> = (0..2000).map(|i| format!("sis-{i:06}")).collect();
    let holder = |i: usize| format!("u{i}@acme.example.com");
    futures::stream::iter(ids.iter().enumerate().filter(|(i, _)| i % 8 != 0))
        .map(|(i, id)| {
            let svc = &stack.svc;
            async move { assert_eq!(svc.directory.claim_external_id("acme", id, &holder(i)).await.unwrap(), None) }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let found = stack.svc.directory.external_ids("acme", &ids, shared::ports::Consistency::Strong).await.unwrap();
    assert_eq!(found.len(), 1750);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(found.get(id), (i % 8 != 0).then(|| holder(i)).as_ref(), "{id}");
    }
    stack.shutdown().await;
}

/// Against DynamoDB: an email claim whose send failed is dropped, so the next invocation claims
/// it; a sent email's claim is never dropped, so it is never sent twice.
#[tokio::test]
async fn an_unsent_email_claim_is_released_and_a_sent_one_is_not() {
    use shared::model::{EmailKind, Job};
    let stack = Stack::start_manual().await;
    let jobs = &stack.svc.jobs;
    let lease = stack.config.lease;
    let job = Job::received("release-test", "acme", "incoming/acme/r.csv", "r.csv", None, chrono::Utc::now().to_rfc3339());
    jobs.create_or_get(&job).await.unwrap();
    assert!(jobs.claim_email(&job.id, EmailKind::Result, lease).await.unwrap());
    assert!(!jobs.claim_email(&job.id, EmailKind::Result, lease).await.unwrap(), "held while fresh");
    jobs.release_email(&job.id, EmailKind::Result).await.unwrap();
    assert!(jobs.claim_email(&job.id, EmailKind::Result, lease).await.unwrap(), "free again once released");
    jobs.mark_email_sent(&job.id, EmailKind::Result).await.unwrap();
    jobs.release_email(&job.id, EmailKind::Result).await.unwrap();
    assert!(!jobs.claim_email(&job.id, EmailKind::Result, lease).await.unwrap(), "a sent email stays claimed");
    assert!(jobs.email_sent(&job.id, EmailKind::Result).await.unwrap());
    // No such job: nothing to release, no error.
    jobs.release_email("no-such-job", EmailKind::Held).await.unwrap();
    stack.shutdown().await;
}
