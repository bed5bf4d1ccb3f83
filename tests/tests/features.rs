#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! What the products our users come from do: modes, tenant rules, directory features.
//! End to end against the local stack, through real S3 events.

use aws_sdk_dynamodb::types::AttributeValue;
use mail_parser::{MessageParser, MimeHeaders};
use shared::model::{AttributeDef, AttributeKind, JobState, UserStatus};
use shared::ports::LicenceClaim;
use std::time::Duration;
use tests::{Stack, parse_csv, wait_mail};

fn col(result: &[Vec<String>], name: &str) -> usize {
    result[0].iter().position(|h| h == name).unwrap_or_else(|| panic!("no column {name}"))
}

/// (Status, Message) of each data row.
fn statuses(result: &[Vec<String>]) -> Vec<(String, String)> {
    let s = col(result, "Status");
    result[1..].iter().map(|r| (r[s].clone(), r[s + 1].clone())).collect()
}

async fn seed_users(stack: &Stack, tenant: &str, n: usize) {
    let mut rows: Vec<Vec<String>> = vec![vec!["Email".into(), "Department".into(), "Group".into()]];
    for i in 0..n {
        rows.push(vec![format!("u{i}@acme.example.com"), "Sales".into(), "Team A;All".into()]);
    }
    let refs: Vec<Vec<&str>> = rows.iter().map(|r| r.iter().map(String::as_str).collect()).collect();
    let refs: Vec<&[&str]> = refs.iter().map(|r| r.as_slice()).collect();
    let (_, s, _) = stack.run_csv(tenant, None, "seed.csv", &refs).await;
    assert_eq!(s.counts.success, n as u32, "seed");
}

/// The key of a user item, as the adapter writes it.
fn user_key_item(tenant: &str, email: &str) -> std::collections::HashMap<String, AttributeValue> {
    let (pk, sk) = shared::adapters::dynamo::user_key(tenant, email);
    [("pk".to_string(), AttributeValue::S(pk)), ("sk".to_string(), AttributeValue::S(sk))].into()
}

async fn set_manual_groups(stack: &Stack, tenant: &str, email: &str, groups: &[&str]) {
    stack
        .aws
        .dynamodb
        .update_item()
        .table_name(&stack.config.directory_table)
        .set_key(Some(user_key_item(tenant, email)))
        .update_expression("SET manual_groups = :g")
        .expression_attribute_values(":g", AttributeValue::L(groups.iter().map(|g| AttributeValue::S(g.to_string())).collect()))
        .send()
        .await
        .expect("set manual groups");
}

#[tokio::test]
async fn validate_mode_checks_against_current_state_and_writes_nothing() {
    let stack = Stack::start().await;
    stack.put_tenant(&stack.tenant("acme")).await;
    seed_users(&stack, "acme", 1).await;
    let (job, s, result) = stack
        .run_csv(
            "acme",
            Some("validate"),
            "check.csv",
            &[
                &["Type", "Action", "Email", "Org"],
                &["User", "Create", "u0@acme.example.com", ""],
                &["User", "Create", "new@acme.example.com", "Fresh Org"],
                &["User", "Update", "ghost@acme.example.com", ""],
                &["Org", "Create", "", "Fresh Org"],
                &["User", "", "bad-email", ""],
            ],
        )
        .await;
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(
        statuses(&result),
        vec![
            ("Failure".into(), "user already exists; use Update or Upsert to change it".into()),
            ("Created".into(), "user would be created (validation only: nothing was changed)".into()),
            ("Failure".into(), "user not found; use Create or Upsert to add it".into()),
            ("Created".into(), "organization \"Fresh Org\" would be created (validation only: nothing was changed)".into()),
            ("Failure".into(), "Email \"bad-email\" is not a valid email address: it has no @".into()),
        ]
    );
    assert_eq!((s.counts.success, s.counts.failure), (2, 3));
    assert!(stack.svc.directory.user("acme", "new@acme.example.com").await.unwrap().is_none(), "nothing written");
    assert!(!stack.svc.directory.org_exists("acme", "Fresh Org").await.unwrap(), "nothing written");
    let mails = wait_mail(&stack.admin_email(), 2, Duration::from_secs(10)).await;
    let subject = MessageParser::default().parse(mails.last().unwrap()).unwrap().subject().unwrap().to_string();
    assert!(subject.contains("validated, nothing applied: 2 would succeed, 3 would fail"), "{subject}");
    stack.shutdown().await;
}

/// The preview an admin reads before applying: a validate run names each field a row would
/// change (groups as added and removed), and the Status tells each kind of change apart; the email
/// counts them. Nothing is written.
#[tokio::test]
async fn a_validate_run_shows_each_field_a_rename_a_group_move_and_a_delete_would_change() {
    let stack = Stack::start().await;
    stack.put_tenant(&stack.tenant("acme")).await;
    seed_users(&stack, "acme", 5).await;
    let (_, s, result) = stack
        .run_csv(
            "acme",
            Some("validate"),
            "preview.csv",
            &[
                &["Action", "Email", "First Name", "Department", "Group"],
                &["", "u0@acme.example.com", "Zoe", "", ""],
                &["", "u1@acme.example.com", "", "Support", "Team B;All"],
                &["Delete", "u2@acme.example.com", "", "", ""],
                &["", "u3@acme.example.com", "", "Sales", "Team A;All"],
                &["Disable", "u4@acme.example.com", "", "", ""],
                &["", "new@acme.example.com", "Nia", "", ""],
            ],
        )
        .await;
    let c = col(&result, "Changes");
    let got: Vec<(String, String)> = result[1..].iter().map(|r| (r[c - 2].clone(), r[c].clone())).collect();
    let want = [
        ("Updated", "First Name: (empty) -> \"Zoe\""),
        ("Updated", "Department: \"Sales\" -> \"Support\"; Groups: +Team B -Team A"),
        ("Deleted", "Status: active -> deleted"),
        ("Unchanged", ""),
        ("Disabled", "Status: active -> disabled"),
        ("Created", ""),
    ];
    assert_eq!(got, want.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>());
    let ch = &s.counts.changes;
    assert_eq!((ch.created, ch.updated, ch.unchanged, ch.deleted, ch.disabled), (1, 2, 1, 1, 1));
    let u0 = stack.svc.directory.user("acme", "u0@acme.example.com").await.unwrap().unwrap();
    assert_eq!(u0.fields.first_name, None, "nothing written");
    assert!(stack.svc.directory.user("acme", "u2@acme.example.com").await.unwrap().is_some(), "nothing deleted");
    let mails = wait_mail(&stack.admin_email(), 3, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(mails.last().unwrap()).to_string();
    assert!(text.contains("If applied: 1 created, 2 updated, 1 unchanged, 1 deleted, 1 disabled"), "{text}");
    stack.shutdown().await;
}

#[tokio::test]
async fn replace_mode_disables_absent_users_and_strips_their_groups_but_keeps_manual_groups_of_present_users() {
    let stack = Stack::start().await;
    stack.put_tenant(&stack.tenant("acme")).await;
    seed_users(&stack, "acme", 10).await;
    set_manual_groups(&stack, "acme", "u0@acme.example.com", &["Chess Club"]).await;
    set_manual_groups(&stack, "acme", "u9@acme.example.com", &["Chess Club"]).await;
    // u5 is already disabled: not active, so neither counted by the safeguard nor disabled again.
    stack.run_csv("acme", None, "off.csv", &[&["Action", "Email"], &["Disable", "u5@acme.example.com"]]).await;
    // u9 is left out (1 of 9 active = 11%, under the 20% default); u0 changes group; a new user joins.
    let mut rows: Vec<Vec<String>> = vec![vec!["Email".into(), "Group".into()]];
    for i in (0..9).filter(|i| *i != 5) {
        rows.push(vec![format!("u{i}@acme.example.com"), if i == 0 { "Team B".into() } else { "Team A;All".into() }]);
    }
    rows.push(vec!["new@acme.example.com".into(), "Team B".into()]);
    let refs: Vec<Vec<&str>> = rows.iter().map(|r| r.iter().map(String::as_str).collect()).collect();
    let refs: Vec<&[&str]> = refs.iter().map(|r| r.as_slice()).collect();
    let (job, s, result) = stack.run_csv("acme", Some("replace"), "everyone.csv", &refs).await;
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(s.counts.success, 9);
    assert_eq!(s.disabled_not_in_file, 1);
    assert_eq!(result.len(), 10, "the result lists the file's rows only");

    let dir = &stack.svc.directory;
    let gone = dir.user("acme", "u9@acme.example.com").await.unwrap().unwrap();
    assert_eq!(gone.status, UserStatus::Disabled);
    assert!(gone.fields.groups.is_empty() && gone.manual_groups.is_empty() && gone.fields.department.is_none(), "{gone:?}");
    let kept = dir.user("acme", "u0@acme.example.com").await.unwrap().unwrap();
    assert_eq!(
        (kept.status.as_str(), kept.fields.groups.clone()),
        ("active", vec!["Team B".to_string()]),
        "targeting moved to the new group"
    );
    assert_eq!(kept.manual_groups, vec!["Chess Club"], "manual groups of users in the file are left alone");
    assert_eq!(dir.user("acme", "new@acme.example.com").await.unwrap().unwrap().status, UserStatus::Active);

    let disabled = parse_csv(&stack.get(s.disabled_users_key.as_deref().unwrap()).await.unwrap());
    assert_eq!(disabled.len(), 2, "header + u9 only: {disabled:?}");
    assert_eq!(disabled[1][0], "u9@acme.example.com");
    let mails = wait_mail(&stack.admin_email(), 2, Duration::from_secs(10)).await;
    let msg = MessageParser::default().parse(mails.last().unwrap()).unwrap();
    assert!(msg.attachments().any(|a| a.attachment_name() == Some("disabled-users.csv")));
    stack.shutdown().await;
}

/// Replace mode's safeguard is the remove threshold: a list leaving out half the tenant is held,
/// nothing applied, and the email attaches the preview and who would be disabled; approved from
/// the S3 console alone, it applies.
#[tokio::test]
async fn a_replace_file_disabling_half_the_tenant_is_held_until_approved_from_the_console() {
    let stack = Stack::start().await;
    let mut tenant = stack.tenant("acme");
    tenant.holds.min_users = 5;
    stack.put_tenant(&tenant).await;
    seed_users(&stack, "acme", 10).await;
    let rows: &[&[&str]] = &[
        &["Email"],
        &["u0@acme.example.com"],
        &["u1@acme.example.com"],
        &["u2@acme.example.com"],
        &["u3@acme.example.com"],
        &["u4@acme.example.com"],
        &["newcomer@acme.example.com"],
    ];
    let key = stack.drop_file("acme", Some("replace"), "half.csv", tests::csv_text(rows)).await;
    let job = wait_state(&stack, &key, JobState::Held).await;
    let reason = job.message.clone().unwrap();
    assert!(reason.starts_with("would delete or disable 5 of 10 active users (50%), more than this tenant's limit of 10%"), "{reason}");
    assert!(stack.svc.directory.user("acme", "newcomer@acme.example.com").await.unwrap().is_none(), "nothing applied");
    assert_eq!(stack.svc.directory.user("acme", "u9@acme.example.com").await.unwrap().unwrap().status, UserStatus::Active);
    let mails = wait_mail(&stack.admin_email(), 2, Duration::from_secs(10)).await;
    let msg = MessageParser::default().parse(mails.last().unwrap()).unwrap();
    assert!(msg.subject().unwrap().contains("half.csv is HELD for approval"), "{:?}", msg.subject());
    let would = msg.attachments().find(|a| a.attachment_name() == Some("would-be-disabled.csv")).expect("who would be disabled");
    let listed = parse_csv(would.contents());
    assert_eq!(listed.len(), 6, "header + the 5 users who would be disabled");
    assert_eq!(listed[1][1..], ["Disabled".to_string(), "user u5@acme.example.com would be disabled, with its groups and targeting removed: not in the replace file (preview: nothing was changed)".to_string(), "Status: active -> disabled; Groups: -Team A -All; Department: \"Sales\" -> (empty)".to_string()]);
    let preview = msg.attachments().find(|a| a.attachment_name() == Some("half-preview.csv")).expect("preview attached");
    assert_eq!(
        parse_csv(preview.contents())[1..].iter().map(|r| r[1].as_str()).collect::<Vec<_>>(),
        ["Created"],
        "only the rows that change"
    );

    // Approved from the console: an empty file named after the job in incoming/acme/approve/.
    stack.drop_file("acme", Some("approve"), &job.id, Vec::new()).await;
    let job = wait_state(&stack, &key, JobState::Completed).await;
    assert_eq!(job.message.as_deref(), Some(format!("approved by a file dropped at incoming/acme/approve/{}", job.id).as_str()));
    assert_eq!(stack.summary(&job).await.disabled_not_in_file, 5);
    assert_eq!(stack.svc.directory.user("acme", "u9@acme.example.com").await.unwrap().unwrap().status, UserStatus::Disabled);
    assert!(stack.svc.directory.user("acme", "newcomer@acme.example.com").await.unwrap().is_some());
    stack.shutdown().await;
}

/// An approval cut off after the job turned APPLYING (the CLI stopped before releasing a chunk):
/// nothing runs until the one-minute schedule's release sweep, a lease later, copies the staged
/// chunks; the job then completes as approved, with one result email. Before, the deadline
/// failed it and nothing was applied.
#[tokio::test]
async fn an_approval_cut_off_midway_is_applied_by_the_release_sweep() {
    let stack = Stack::start().await;
    stack.put_tenant(&stack.tenant("acme")).await;
    seed_users(&stack, "acme", 30).await;
    // 12 of 30 deleted (40%, and past the hold's 10 users): held.
    let mut rows: Vec<Vec<String>> = vec![vec!["Action".into(), "Email".into()]];
    rows.extend((0..12).map(|i| vec!["Delete".into(), format!("u{i}@acme.example.com")]));
    let key = stack.drop_file("acme", None, "cut.csv", tests::rows_to_csv(&rows)).await;
    let held = wait_state(&stack, &key, JobState::Held).await;
    let mails = wait_mail(&stack.admin_email(), 2, Duration::from_secs(10)).await.len();
    // The approval's first step only.
    assert!(stack.svc.jobs.transition(&held.id, JobState::Held, JobState::Applying, Some("approved by test")).await.unwrap());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(stack.svc.directory.user("acme", "u0@acme.example.com").await.unwrap().is_some(), "nothing released");
    let now = chrono::Utc::now();
    assert_eq!(shared::monitor::resume_releases(&stack.svc, now).await.unwrap(), 0, "young: left alone");
    let later = now + chrono::Duration::seconds(stack.svc.config.lease.secs + 1);
    let plan = held.phase_chunks.expect("planned");
    assert_eq!(shared::monitor::resume_releases(&stack.svc, later).await.unwrap(), plan.iter().sum::<u32>() as usize);
    let done = wait_state(&stack, &key, JobState::Completed).await;
    assert_eq!(done.succeeded, 12);
    for i in 0..13 {
        let user = stack.svc.directory.user("acme", &format!("u{i}@acme.example.com")).await.unwrap();
        assert_eq!(user.is_none(), i < 12, "u{i}");
    }
    assert_eq!(wait_mail(&stack.admin_email(), mails + 1, Duration::from_secs(10)).await.len(), mails + 1, "one result email");
    stack.shutdown().await;
}

/// The job of `key` once it reaches `state`.
async fn wait_state(stack: &Stack, key: &str, state: JobState) -> shared::model::Job {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let job = stack.svc.jobs.recent("acme", 100).await.unwrap().into_iter().find(|j| j.source_key == key);
        if let Some(job) = job.filter(|j| j.state == state) {
            return job;
        }
        assert!(std::time::Instant::now() < deadline, "job for {key} never reached {}", state.as_str());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The case: an upsert file deleting 15% of a tenant's 100 users is held, applies
/// nothing, and emails the preview; `approve` applies exactly that plan, field by field. A second
/// such file is discarded: nothing of it applied. Bad input gets one line and changes nothing.
#[tokio::test]
async fn a_file_deleting_fifteen_percent_is_held_and_approve_applies_exactly_that_plan() {
    let stack = Stack::start().await;
    stack.put_tenant(&stack.tenant("acme")).await;
    seed_users(&stack, "acme", 100).await;
    let mut rows: Vec<Vec<String>> = vec![vec!["Action".into(), "Email".into(), "Department".into()]];
    rows.extend((0..15).map(|i| vec!["Delete".into(), format!("u{i}@acme.example.com"), String::new()]));
    rows.extend((15..20).map(|i| vec![String::new(), format!("u{i}@acme.example.com"), "Support".into()]));
    let file = tests::rows_to_csv(&rows);
    let key = stack.drop_file("acme", None, "cleanup.csv", file.clone()).await;
    let held = wait_state(&stack, &key, JobState::Held).await;
    assert!(held.message.as_deref().unwrap().starts_with("would delete or disable 15 of 100 active users (15%)"));
    let s = stack.summary(&held).await;
    assert_eq!((s.state, s.counts.changes.deleted, s.counts.changes.updated), (JobState::Held, 15, 5));
    let before = stack.directory_snapshot(&held.id).await;
    assert!(stack.svc.directory.user("acme", "u0@acme.example.com").await.unwrap().is_some(), "nothing applied");

    // Bad input: unknown job, another tenant, a job still being read, twice; one line, nothing changed.
    let decide = |id: String, tenant: Option<&'static str>, verb| {
        let svc = &stack.svc;
        async move { shared::holds::decide(svc, &id, tenant, verb, "test").await.unwrap() }
    };
    use shared::holds::Verb::{Approve, Discard};
    assert!(decide("nope".into(), None, Approve).await.unwrap_err().starts_with("no job nope"));
    assert!(decide(held.id.clone(), Some("globex"), Approve).await.unwrap_err().contains("belongs to another tenant"));
    assert_eq!(stack.directory_snapshot(&held.id).await, before, "refusals change nothing");

    assert!(decide(held.id.clone(), Some("acme"), Approve).await.unwrap().contains("approved"));
    let done = wait_state(&stack, &key, JobState::Completed).await;
    assert!(decide(held.id.clone(), None, Approve).await.unwrap_err().contains("not held"), "twice");
    let s = stack.summary(&done).await;
    assert_eq!((s.counts.changes.deleted, s.counts.changes.updated, s.counts.failure), (15, 5, 0));
    for i in 0..20 {
        let user = stack.svc.directory.user("acme", &format!("u{i}@acme.example.com")).await.unwrap();
        match i {
            0..15 => assert!(user.is_none(), "u{i} deleted"),
            _ => assert_eq!(user.unwrap().fields.department.as_deref(), Some("Support"), "u{i} updated"),
        }
    }
    let untouched = stack.svc.directory.user("acme", "u50@acme.example.com").await.unwrap().unwrap();
    assert_eq!((untouched.fields.department.as_deref(), untouched.status), (Some("Sales"), UserStatus::Active));

    // The same kind of file again (15 of the 85 left is 17%), discarded: nothing applied.
    let mut rows: Vec<Vec<String>> = vec![vec!["Action".into(), "Email".into()]];
    rows.extend((20..35).map(|i| vec!["Delete".into(), format!("u{i}@acme.example.com")]));
    let key = stack.drop_file("acme", None, "more.csv", tests::rows_to_csv(&rows)).await;
    let held = wait_state(&stack, &key, JobState::Held).await;
    assert!(decide(held.id.clone(), None, Discard).await.unwrap().contains("discarded"));
    wait_state(&stack, &key, JobState::Discarded).await;
    assert!(stack.svc.directory.user("acme", "u20@acme.example.com").await.unwrap().is_some(), "nothing applied");
    stack.shutdown().await;
}

#[tokio::test]
async fn licence_pool_of_ten_gives_exactly_ten_of_fifteen_creates_across_concurrent_chunks() {
    let stack = Stack::start().await;
    let mut tenant = stack.tenant("acme");
    tenant.licences = Some(10);
    tenant.chunk_size = Some(5);
    stack.put_tenant(&tenant).await;
    let mut rows: Vec<Vec<String>> = vec![vec!["Action".into(), "Email".into()]];
    for i in 0..15 {
        rows.push(vec!["Create".into(), format!("l{i}@acme.example.com")]);
    }
    let refs: Vec<Vec<&str>> = rows.iter().map(|r| r.iter().map(String::as_str).collect()).collect();
    let refs: Vec<&[&str]> = refs.iter().map(|r| r.as_slice()).collect();
    let (job, s, result) = stack.run_csv("acme", None, "fifteen.csv", &refs).await;
    assert_eq!(job.phase_chunks.unwrap()[1], 3, "three chunks");
    assert_eq!((s.counts.success, s.counts.failure), (10, 5));
    let refusals = statuses(&result).iter().filter(|(_, m)| m == "no licence available (pool of 10 exhausted)").count();
    assert_eq!(refusals, 5);
    assert_eq!(stack.svc.directory.licences_used("acme", None).await.unwrap(), 10);
    let users = stack.svc.directory.list_users("acme").await.unwrap();
    assert_eq!(users.len(), 10, "never more users than licences");

    // Deleting and disabling return licences.
    let created: Vec<String> = users.iter().map(|(k, _)| k.clone()).collect();
    let (_, s, _) =
        stack.run_csv("acme", None, "free.csv", &[&["Action", "Email"], &["Delete", &created[0]], &["Disable", &created[1]]]).await;
    assert_eq!(s.counts.success, 2);
    assert_eq!(stack.svc.directory.licences_used("acme", None).await.unwrap(), 8);
    stack.shutdown().await;
}

/// Two named pools and the default one, filled by the same file's interleaved rows across
/// concurrent chunks: each stops at exactly its own limit, and each refusal names its pool.
#[tokio::test]
async fn two_named_pools_exhaust_independently_across_concurrent_chunks() {
    let stack = Stack::start().await;
    let mut tenant = stack.tenant("acme");
    tenant.licences = Some(3);
    tenant.licence_pools = [("Staff".to_string(), 4), ("Students".to_string(), 7)].into();
    tenant.chunk_size = Some(4);
    stack.put_tenant(&tenant).await;
    let mut rows: Vec<Vec<String>> = vec![vec!["Action".into(), "Email".into(), "Licence Pool".into()]];
    for i in 0..10 {
        for pool in ["Staff", "Students", ""] {
            rows.push(vec!["Create".into(), format!("{}{i}@acme.example.com", pool.to_lowercase()), pool.into()]);
        }
    }
    let refs: Vec<Vec<&str>> = rows.iter().map(|r| r.iter().map(String::as_str).collect()).collect();
    let refs: Vec<&[&str]> = refs.iter().map(|r| r.as_slice()).collect();
    let (job, s, result) = stack.run_csv("acme", None, "pools.csv", &refs).await;
    assert!(job.phase_chunks.unwrap()[1] >= 7, "several chunks");
    assert_eq!((s.counts.success, s.counts.failure), (14, 16));
    let refused = |m: &str| statuses(&result).iter().filter(|(_, msg)| msg == m).count();
    assert_eq!(refused("no licence available in pool \"Staff\" (4 exhausted)"), 6);
    assert_eq!(refused("no licence available in pool \"Students\" (7 exhausted)"), 3);
    assert_eq!(refused("no licence available (pool of 3 exhausted)"), 7);
    let dir = &stack.svc.directory;
    assert_eq!(dir.licences_used("acme", Some("Staff")).await.unwrap(), 4);
    assert_eq!(dir.licences_used("acme", Some("Students")).await.unwrap(), 7);
    assert_eq!(dir.licences_used("acme", None).await.unwrap(), 3);
    let users = dir.list_users("acme").await.unwrap();
    let in_pool = |prefix: &str| users.iter().filter(|(e, _)| e.starts_with(prefix)).count();
    assert_eq!((in_pool("staff"), in_pool("students"), users.len()), (4, 7, 14), "never more users than each pool's licences");
    // A Staff user moved to Students, which is full: refused, nothing moves.
    let staff = users.iter().find(|(e, _)| e.starts_with("staff")).unwrap().0.clone();
    let (_, s, _) = stack.run_csv("acme", None, "move.csv", &[&["Email", "LicencePool"], &[&staff, "Students"]]).await;
    assert_eq!(s.counts.failure, 1);
    assert_eq!(dir.user("acme", &staff).await.unwrap().unwrap().fields.licence_pool.as_deref(), Some("Staff"));
    // Deleting a student frees a Students licence; the move then succeeds and frees one of Staff.
    let student = users.iter().find(|(e, _)| e.starts_with("students")).unwrap().0.clone();
    stack.run_csv("acme", None, "free.csv", &[&["Action", "Email"], &["Delete", &student]]).await;
    let (_, s, _) = stack.run_csv("acme", None, "move-again.csv", &[&["Email", "LicencePool"], &[&staff, "Students"]]).await;
    assert_eq!(s.counts.success, 1);
    assert_eq!(dir.licences_used("acme", Some("Staff")).await.unwrap(), 3);
    assert_eq!(dir.licences_used("acme", Some("Students")).await.unwrap(), 7);
    stack.shutdown().await;
}

/// Organizations carry contact details; a contact email and a user's email exclude each other
/// through DynamoDB's conditions (an organization's claim sits on the key the user would have),
/// in both orders, and a replace-mode file neither lists nor disables the contact.
#[tokio::test]
async fn a_user_email_an_organization_already_uses_fails_and_the_other_way_round() {
    let stack = Stack::start().await;
    let mut tenant = stack.tenant("acme");
    tenant.holds = shared::model::Holds::off();
    stack.put_tenant(&tenant).await;
    stack.run_csv("acme", None, "users.csv", &[&["Email"], &["ann@acme.example.com"]]).await;
    let (_, _, result) = stack
        .run_csv(
            "acme",
            None,
            "orgs.csv",
            &[
                &["Type", "OrgName", "Email", "Phone"],
                &["Org", "North", "office@north.example.com", "+44 20 7946 0000"],
                &["Org", "South", "ANN@acme.example.com", ""],
                &["User", "", "office@north.example.com", ""],
            ],
        )
        .await;
    let out = statuses(&result);
    assert_eq!(out[0].0, "Created");
    assert_eq!(out[1].1, "ann@acme.example.com is the email of a user of this tenant; an organization cannot have a user's email");
    assert_eq!(out[2].1, "this email is the contact email of organization \"North\"; a user cannot have an organization's email");
    let snapshot = stack.directory_snapshot("-").await;
    let north = snapshot.iter().find(|(k, _)| k.starts_with("O#acme#north")).map(|(_, v)| v).expect("North stored");
    assert!(north["contact_email"].contains("office@north.example.com") && north["phone"].contains("+44 20 7946 0000"), "{north:?}");
    let dir = &stack.svc.directory;
    assert_eq!(dir.list_users("acme").await.unwrap().len(), 1, "the contact is not a user");
    // A replace-mode file keeping only Ann: the contact is no user to disable.
    let (_, s, _) = stack.run_csv("acme", Some("replace"), "keep.csv", &[&["Email"], &["ann@acme.example.com"]]).await;
    assert_eq!(s.disabled_not_in_file, 0);
    // Deleting the organization frees its email.
    stack.run_csv("acme", None, "gone.csv", &[&["Type", "Action", "OrgName"], &["Org", "Delete", "North"]]).await;
    let (_, s, _) = stack.run_csv("acme", None, "again.csv", &[&["Email"], &["office@north.example.com"]]).await;
    assert_eq!(s.counts.success, 1);
    stack.shutdown().await;
}

/// Against DynamoDB: a file keyed by ExternalId finds people whose emails changed and moves
/// each in one transaction, keeping their id, groups, products, licence and pending invite, with
/// the association naming the old email following; a duplicate ExternalId in the directory and
/// a taken new email fail naming the other; the same file again changes nothing.
#[tokio::test]
async fn a_file_keyed_by_external_id_updates_the_right_users_after_their_emails_changed() {
    let stack = Stack::start().await;
    let mut tenant = stack.tenant("acme");
    tenant.licences = Some(5);
    tenant.products = vec!["LMS".into()];
    tenant.holds = shared::model::Holds::off();
    stack.put_tenant(&tenant).await;
    let (_, s, _) = stack
        .run_csv(
            "acme",
            None,
            "hr.csv",
            &[
                &["IdentityIDUser", "Email", "Group", "Products", "InviteUser", "ScheduledDate", "Supervisor"],
                &["E1", "boss@acme.example.com", "Leads", "LMS", "", "", ""],
                &["E2", "ann@acme.example.com", "Teachers", "LMS", "TRUE", "2030-01-01", "boss@acme.example.com"],
                &["E3", "cy@acme.example.com", "", "", "", "", ""],
            ],
        )
        .await;
    assert_eq!(s.counts.success, 3, "{s:?}");
    let dir = &stack.svc.directory;
    let ann = dir.user("acme", "ann@acme.example.com").await.unwrap().unwrap();
    let (_, s, result) = stack
        .run_csv(
            "acme",
            None,
            "hr2.csv",
            &[
                &["IdentityIDUser", "Email"],
                &["E1", "chief@acme.example.com"],
                &["E2", "ann@new.example.com"],
                &["E3", "chief@acme.example.com"],
            ],
        )
        .await;
    let out = statuses(&result);
    assert_eq!(out[0].1, "email changed from boss@acme.example.com to chief@acme.example.com");
    assert_eq!(out[1].1, "email changed from ann@acme.example.com to ann@new.example.com");
    assert!(out[2].1.starts_with("duplicate email"), "{out:?}");
    assert_eq!(s.counts.success, 2);
    let moved = dir.user("acme", "ann@new.example.com").await.unwrap().unwrap();
    assert_eq!(
        (moved.user_id.clone(), &moved.fields.groups, &moved.fields.products),
        (ann.user_id.clone(), &ann.fields.groups, &ann.fields.products)
    );
    assert_eq!(moved.fields.associations.get("supervisor").map(String::as_str), Some("chief@acme.example.com"));
    assert!(dir.user("acme", "ann@acme.example.com").await.unwrap().is_none());
    assert_eq!(dir.moved_to("acme", "ann@acme.example.com").await.unwrap().as_deref(), Some("ann@new.example.com"));
    assert_eq!(dir.licences_used("acme", None).await.unwrap(), 3, "the licences moved with the people");
    let ids = dir.external_ids("acme", &["E1".into(), "E2".into()], shared::ports::Consistency::Strong).await.unwrap();
    assert_eq!((ids["E1"].as_str(), ids["E2"].as_str()), ("chief@acme.example.com", "ann@new.example.com"));
    let list = dir.list_users("acme").await.unwrap();
    assert_eq!(list.len(), 3, "{list:?}");
    // The pending invite moved in the jobs table (read from an index a moment behind the writes).
    let mut due = Vec::new();
    for _ in 0..50 {
        due = stack.svc.invites.due("2031-01-01T00:00:00Z", 100).await.unwrap().into_iter().map(|i| i.email).collect();
        if due == ["ann@new.example.com"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(due, ["ann@new.example.com"]);

    // Taken new email, ExternalId of someone else, ExternalId change: each names the other.
    let (_, _, result) = stack
        .run_csv(
            "acme",
            None,
            "bad.csv",
            &[
                &["Action", "IdentityIDUser", "Email"],
                &["Upsert", "E3", "ann@new.example.com"],
                &["Create", "E1", "new@acme.example.com"],
                &["Upsert", "E9", "chief@acme.example.com"],
            ],
        )
        .await;
    let out = statuses(&result);
    assert_eq!(out[0].1, "ann@new.example.com already belongs to another user; cy@acme.example.com keeps their email");
    assert!(out[1].1.starts_with("ExternalId \"E1\" belongs to chief@acme.example.com"), "{out:?}");
    assert!(out[2].1.starts_with("user chief@acme.example.com has ExternalId \"E1\""), "{out:?}");
    // The same roster again: unchanged, nothing moves.
    let (_, s, _) = stack
        .run_csv(
            "acme",
            None,
            "hr3.csv",
            &[&["IdentityIDUser", "Email"], &["E1", "chief@acme.example.com"], &["E2", "ann@new.example.com"]],
        )
        .await;
    assert_eq!(s.counts.changes.unchanged, 2, "{:?}", s.counts);
    stack.shutdown().await;
}

#[tokio::test]
async fn custom_attributes_products_and_targeting_moves_are_stored() {
    let stack = Stack::start().await;
    let mut tenant = stack.tenant("acme");
    tenant.products = vec!["LMS".into(), "Video".into(), "Chat".into()];
    tenant.attributes = vec![
        AttributeDef { name: "Employee Id".into(), kind: AttributeKind::Number },
        AttributeDef { name: "Region".into(), kind: AttributeKind::OneOf { values: vec!["EMEA".into(), "APAC".into()] } },
    ];
    stack.put_tenant(&tenant).await;
    let (_, s, result) = stack
        .run_csv(
            "acme",
            None,
            "attrs.csv",
            &[
                &["Email", "Department", "Group", "Products", "Employee Id", "Region", "Shoe Size"],
                &["a@acme.example.com", "Sales", "North;Leads", "lms;video", "1001", "emea", "42"],
                &["b@acme.example.com", "", "", "Chess", "", "", ""],
                &["c@acme.example.com", "", "", "", "abc", "", ""],
            ],
        )
        .await;
    assert_eq!((s.counts.success, s.counts.failure), (1, 2), "{result:?}");
    assert_eq!(s.warnings, vec!["column \"Shoe Size\" is not a roster column and was ignored"]);
    let a = stack.svc.directory.user("acme", "a@acme.example.com").await.unwrap().unwrap();
    assert_eq!(a.fields.products, vec!["LMS", "Video"]);
    assert_eq!(a.fields.attributes.get("Employee Id").map(String::as_str), Some("1001"));
    assert_eq!(a.fields.attributes.get("Region").map(String::as_str), Some("EMEA"));

    // A move of department and groups replaces the targeting; products are granted on top; Expire removes.
    stack
        .run_csv(
            "acme",
            None,
            "move.csv",
            &[&["Email", "Department", "Group", "Products"], &["a@acme.example.com", "Support", "South", "Chat"]],
        )
        .await;
    let a = stack.svc.directory.user("acme", "a@acme.example.com").await.unwrap().unwrap();
    assert_eq!((a.fields.department.as_deref(), a.fields.groups.clone()), (Some("Support"), vec!["South".to_string()]));
    assert_eq!(a.fields.products, vec!["Chat", "LMS", "Video"]);
    stack.run_csv("acme", None, "expire.csv", &[&["Action", "Email", "Products"], &["Expire", "a@acme.example.com", "Video"]]).await;
    assert_eq!(stack.svc.directory.user("acme", "a@acme.example.com").await.unwrap().unwrap().fields.products, vec!["Chat", "LMS"]);
    let (_, s, _) = stack.run_csv("acme", None, "expire-all.csv", &[&["Action", "Email"], &["Expire", "a@acme.example.com"]]).await;
    assert_eq!(s.counts.success, 1);
    assert!(stack.svc.directory.user("acme", "a@acme.example.com").await.unwrap().unwrap().fields.products.is_empty());
    stack.shutdown().await;
}

/// A student known by Username alone, given an email by the nightly replace file: moved to it in
/// DynamoDB with their id, licence and Parent, no second account, nobody disabled.
#[tokio::test]
async fn a_student_known_by_username_given_an_email_keeps_their_account() {
    let stack = Stack::start().await;
    let mut tenant = stack.tenant("acme");
    tenant.licences = Some(5);
    tenant.holds = shared::model::Holds::off();
    stack.put_tenant(&tenant).await;
    let (_, s, _) = stack
        .run_csv(
            "acme",
            None,
            "school.csv",
            &[&["Email", "Username", "Parent"], &["mom@acme.example.com", "", ""], &["", "kid1", "mom@acme.example.com"]],
        )
        .await;
    assert_eq!(s.counts.success, 2);
    let dir = &stack.svc.directory;
    let before = dir.user("acme", "user:kid1").await.unwrap().unwrap();
    let (_, s, result) = stack
        .run_csv(
            "acme",
            Some("replace"),
            "sync.csv",
            &[&["Email", "Username"], &["mom@acme.example.com", ""], &["kid1@acme.example.com", "Kid1"]],
        )
        .await;
    assert_eq!(statuses(&result)[1].1, "the user known by Username \"kid1\" was given the email kid1@acme.example.com");
    assert_eq!((s.counts.success, s.counts.failure, s.counts.unchanged), (2, 0, 1));
    let kid = dir.user("acme", "kid1@acme.example.com").await.unwrap().unwrap();
    assert_eq!(
        (kid.user_id.clone(), kid.status, kid.fields.associations.get("parent").map(String::as_str)),
        (before.user_id.clone(), shared::model::UserStatus::Active, Some("mom@acme.example.com"))
    );
    assert!(dir.user("acme", "user:kid1").await.unwrap().is_none());
    let list = dir.list_users("acme").await.unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(dir.licences_used("acme", None).await.unwrap(), 2);
}

#[tokio::test]
async fn associations_to_users_created_later_in_the_file_succeed_and_missing_ones_fail_by_email() {
    let stack = Stack::start_with(|c| c.chunk_size = 2).await;
    stack.put_tenant(&stack.tenant("school")).await;
    let (_, s, result) = stack
        .run_csv(
            "school",
            None,
            "family.csv",
            &[
                &["Email", "Username", "Supervisor", "Parent", "Instructor"],
                &["", "kid1", "", "mom@school.example.com", "teach@school.example.com"],
                &["pupil@school.example.com", "", "", "nobody@school.example.com", ""],
                &["", "kid2", "", "", ""],
                &["aide@school.example.com", "", "teach@school.example.com", "", ""],
                &["mom@school.example.com", "", "", "", ""],
                &["teach@school.example.com", "", "", "", ""],
            ],
        )
        .await;
    let st = statuses(&result);
    assert_eq!(st[0].0, "Created", "{st:?}");
    assert_eq!(st[1].1, "parent nobody@school.example.com does not exist; add them to this file or create them first");
    assert_eq!(st[2].1, "Username \"kid2\" has no Email, so the row needs a Parent (the parent's email)");
    assert_eq!(st[3].0, "Created");
    assert_eq!((s.counts.success, s.counts.failure), (4, 2));
    let kid = stack.svc.directory.user("school", "user:kid1").await.unwrap().expect("kid1 keyed by username");
    assert_eq!(kid.fields.associations.get("parent").map(String::as_str), Some("mom@school.example.com"));
    assert_eq!(kid.fields.associations.get("instructor").map(String::as_str), Some("teach@school.example.com"));
    stack.shutdown().await;
}

#[tokio::test]
async fn processing_started_email_then_result_email_when_the_tenant_wants_it() {
    let stack = Stack::start().await;
    let mut tenant = stack.tenant("acme");
    tenant.notify_started = true;
    stack.put_tenant(&tenant).await;
    stack.run_csv("acme", None, "hello.csv", &[&["Email"], &["a@acme.example.com"], &["nope"]]).await;
    let mails = wait_mail(&stack.admin_email(), 2, Duration::from_secs(10)).await;
    let subjects: Vec<String> = mails.iter().map(|m| MessageParser::default().parse(m).unwrap().subject().unwrap().to_string()).collect();
    assert_eq!(subjects.len(), 2, "{subjects:?}");
    assert!(subjects.iter().any(|s| s == "[rosterdrop] acme: hello.csv received, processing 2 rows"), "{subjects:?}");
    assert!(subjects.iter().any(|s| s.contains("1 succeeded, 1 failed")), "{subjects:?}");
    stack.shutdown().await;
}

#[tokio::test]
async fn unknown_mode_folder_is_rejected_naming_the_valid_modes() {
    let stack = Stack::start().await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let (job, s, _) = stack.run_csv("acme", Some("merge"), "m.csv", &[&["Email"], &["a@acme.example.com"]]).await;
    assert_eq!(job.state, JobState::Rejected);
    assert!(s.reason.unwrap().ends_with("add, upsert, validate, replace, replace-force"));
    stack.shutdown().await;
}

fn strings(rows: &[&[&str]]) -> Vec<Vec<String>> {
    rows.iter().map(|r| r.iter().map(|c| c.to_string()).collect()).collect()
}

#[tokio::test]
async fn multi_sheet_workbook_reads_each_user_type_sheet_and_the_result_keeps_the_sheets() {
    let stack = Stack::start().await;
    stack.put_tenant(&stack.tenant("school")).await;
    let book = tests::xlsx_workbook(&[
        ("Read Me", strings(&[&["Fill one sheet per kind of user."], &["Parents first or last: it does not matter."]])),
        (
            "Students",
            strings(&[
                &["Username", "First Name", "Parent"],
                &["kid1", "Kim", "mom@school.example.com"],
                &["kid2", "Lee", "nobody@school.example.com"],
            ]),
        ),
        ("Parents", strings(&[&["Email", "First Name"], &["mom@school.example.com", "Mona"], &["dad@school.example.com", "Dan"]])),
        ("Instructors", strings(&[&["Email", "First Name"], &["teach@school.example.com", "Tia"], &["MOM@school.example.com", "Dup"]])),
    ]);
    let key = stack.drop_file("school", None, "school.xlsx", book).await;
    let job = stack.wait_job("school", &key, Duration::from_secs(120)).await;
    let s = stack.summary(&job).await;
    assert_eq!((s.rows, s.counts.success, s.counts.failure), (6, 4, 2), "{s:?}");
    let dir = &stack.svc.directory;
    assert_eq!(dir.user("school", "user:kid1").await.unwrap().unwrap().fields.user_type.as_deref(), Some("Student"));
    assert_eq!(dir.user("school", "mom@school.example.com").await.unwrap().unwrap().fields.user_type.as_deref(), Some("Parent"));
    assert_eq!(dir.user("school", "teach@school.example.com").await.unwrap().unwrap().fields.user_type.as_deref(), Some("Instructor"));

    let result = tests::parse_workbook(&stack.get(s.result_key.as_deref().unwrap()).await.unwrap());
    let names: Vec<&str> = result.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        vec!["Students", "Parents", "Instructors", "Problems"],
        "instruction sheet left out, data sheets kept, problems last"
    );
    let instructors = &result[2].1;
    assert_eq!(
        instructors[2][2..],
        [
            "Failure".to_string(),
            "duplicate email: row 2 of sheet Parents of this file already has mom@school.example.com; only the first row is applied. Fix this row if it is another one, or delete it: dropped again as it is, it would change what the first row applied"
                .to_string(),
            String::new(),
            String::new()
        ]
    );
    assert_eq!(result[0].1[2][3], "Failure");
    let failed = tests::parse_workbook(&stack.get(s.failed_rows_key.as_deref().unwrap()).await.unwrap());
    assert_eq!(failed.iter().map(|(n, r)| (n.as_str(), r.len())).collect::<Vec<_>>(), vec![("Students", 2), ("Instructors", 2)]);
    stack.shutdown().await;
}

#[tokio::test]
async fn invites_go_to_created_users_once_never_to_updated_ones_and_invite_re_sends() {
    let stack = Stack::start().await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let t = &stack.tag;
    let (new, old, done) = (format!("new-{t}@acme.example.com"), format!("old-{t}@acme.example.com"), format!("done-{t}@acme.example.com"));
    stack.run_csv("acme", None, "seed.csv", &[&["Email"], &[&old], &[&done]]).await;
    stack
        .aws
        .dynamodb
        .update_item()
        .table_name(&stack.config.directory_table)
        .set_key(Some(user_key_item("acme", &done)))
        .update_expression("SET activated_at = :t")
        .expression_attribute_values(":t", AttributeValue::S("2026-01-01T00:00:00Z".into()))
        .send()
        .await
        .unwrap();
    let (_, _, result) = stack
        .run_csv("acme", None, "invite.csv", &[&["Email", "First Name", "InviteUser"], &[&new, "Nia", "TRUE"], &[&old, "Olu", "TRUE"]])
        .await;
    let st = statuses(&result);
    assert_eq!(st[0].1, "user created; activation email will be sent shortly");
    assert_eq!(st[1].1, "user updated; no activation email: invites go to new users only (use Action Invite to send one again)");
    let mails = wait_mail(&new, 1, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 1);
    let msg = MessageParser::default().parse(&mails[0]).unwrap();
    assert_eq!(msg.subject(), Some("Tenant acme: activate your account"));
    assert!(msg.body_text(0).unwrap().contains("Hello Nia,"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(tests::mail_to(&new).len(), 1, "sent once, although the runner sweeps every 2 s");
    assert!(tests::mail_to(&old).is_empty(), "never to users only updated");

    let (_, _, result) = stack
        .run_csv(
            "acme",
            None,
            "again.csv",
            &[&["Action", "Email"], &["Invite", &old], &["Invite", &done], &["Invite", "ghost@acme.example.com"]],
        )
        .await;
    let st = statuses(&result);
    assert_eq!(st[0], ("Success".into(), "user invited again; activation email will be sent shortly".into()));
    assert_eq!(st[1], ("Failure".into(), "user has already activated their account; no invite sent".into()));
    assert_eq!(st[2].1, "user not found; use Create or Upsert to add it");
    assert_eq!(wait_mail(&old, 1, Duration::from_secs(20)).await.len(), 1);
    stack.shutdown().await;
}

#[tokio::test]
async fn a_scheduled_invite_is_sent_once_when_due_and_not_before() {
    let stack = Stack::start_manual().await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let user = format!("later-{}@acme.example.com", stack.tag);
    let key = stack
        .drop_file(
            "acme",
            None,
            "later.csv",
            tests::csv_text(&[&["Email", "InviteUser", "ScheduledDate"], &[&user, "yes", "2099-01-01 09:00"]]),
        )
        .await;
    stack.pump(1).await;
    let job = stack.wait_job("acme", &key, Duration::from_secs(5)).await;
    let result = parse_csv(&stack.get(stack.summary(&job).await.result_key.as_deref().unwrap()).await.unwrap());
    assert_eq!(statuses(&result)[0].1, "user created; activation email scheduled for 2099-01-01T09:00:00+00:00");
    let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&chrono::Utc);
    assert_eq!(shared::invites::sweep(&stack.svc, chrono::Utc::now()).await.unwrap(), 0, "not due now");
    assert_eq!(shared::invites::sweep(&stack.svc, at("2099-01-01T08:59:59Z")).await.unwrap(), 0, "not a second before");
    assert_eq!(shared::invites::sweep(&stack.svc, at("2099-01-01T09:00:01Z")).await.unwrap(), 1, "sent when due");
    assert_eq!(shared::invites::sweep(&stack.svc, at("2099-01-02T00:00:00Z")).await.unwrap(), 0, "sent once");
    assert_eq!(tests::mail_to(&user).len(), 1);
    stack.shutdown().await;
}

#[tokio::test]
async fn invite_sending_is_paced_to_the_configured_rate() {
    let stack = Stack::start_manual().await;
    let mut config = stack.config.clone();
    config.invite_rate_per_sec = 20.0;
    let svc = stack.aws.services(config);
    stack.put_tenant(&stack.tenant("acme")).await;
    let mut rows: Vec<Vec<String>> = vec![vec!["Email".into(), "InviteUser".into()]];
    for i in 0..10 {
        rows.push(vec![format!("r{i}-{}@acme.example.com", stack.tag), "true".into()]);
    }
    let key = stack.drop_file("acme", None, "rate.csv", tests::rows_to_csv(&rows)).await;
    stack.wait_job("acme", &key, Duration::from_secs(30)).await;
    let started = std::time::Instant::now();
    assert_eq!(shared::invites::sweep(&svc, chrono::Utc::now()).await.unwrap(), 10);
    // 10 sends at 20 per second cannot take less than 9 intervals of 50 ms.
    assert!(started.elapsed() >= Duration::from_millis(450), "{:?}", started.elapsed());
    stack.shutdown().await;
}

#[tokio::test]
async fn licence_reservations_never_exceed_the_pool_under_forty_concurrent_claims() {
    let stack = Stack::start_manual().await;
    let claims: Vec<_> = (0..40)
        .map(|i| {
            let dir = stack.svc.directory.clone();
            let want = LicenceClaim { takers: (0..1 + (i % 2)).collect(), ..Default::default() };
            tokio::spawn(async move { dir.reserve_licences("acme", None, 10, &format!("job#1#{i}"), want).await.unwrap().granted })
        })
        .collect();
    let mut granted = 0;
    for c in claims {
        granted += c.await.unwrap();
    }
    assert_eq!(granted, 10, "exactly the pool, no more, no less");
    assert_eq!(stack.svc.directory.licences_used("acme", None).await.unwrap(), 10);
    // A repeated claim gets its recorded grant back and takes nothing more; a settle happens once.
    // (Its recorded decision, not the one passed again: one taker.)
    let retry = LicenceClaim { takers: vec![1, 2, 3], ..Default::default() };
    let recorded = stack.svc.directory.reserve_licences("acme", None, 10, "job#1#0", retry).await.unwrap();
    assert_eq!((recorded.takers.len(), recorded.repeated), (1, true));
    let again = recorded.granted;
    assert!(again <= 1);
    stack.svc.directory.settle_licences("acme", None, "job#1#0", again).await.unwrap();
    stack.svc.directory.settle_licences("acme", None, "job#1#0", again).await.unwrap();
    assert_eq!(stack.svc.directory.licences_used("acme", None).await.unwrap(), 10 - again);
    stack.shutdown().await;
}

/// On the local stack (`make up`), the runner does what the one-minute schedule does in AWS: a
/// file scheduled for now is applied without anyone calling the schedule. It stayed SCHEDULED.
#[tokio::test]
async fn the_local_runner_applies_a_file_scheduled_for_now() {
    let stack = Stack::start().await;
    stack.put_tenant(&stack.tenant("acme")).await;
    // This minute, with time to spare: a folder time more than a minute past is refused.
    use chrono::Timelike;
    let second = chrono::Utc::now().second();
    if second >= 45 {
        tokio::time::sleep(Duration::from_secs(u64::from(61 - second))).await;
    }
    let time = chrono::Utc::now().format(shared::keys::SCHEDULE_FORMAT).to_string();
    let key = stack.drop_file("acme", Some(&format!("scheduled/{time}")), "now.csv", b"Email\nnow@acme.example.com\n".to_vec()).await;
    let done = wait_state(&stack, &key, JobState::Completed).await;
    assert_eq!(done.succeeded, 1);
    assert!(stack.svc.directory.user("acme", "now@acme.example.com").await.unwrap().is_some());
    stack.shutdown().await;
}

/// A file dropped in `scheduled/<time>/` is validated at once (the admins get the validation) and
/// applied by the one-minute schedule at its time, not before and once.
#[tokio::test]
async fn a_scheduled_file_is_applied_by_the_schedule_at_its_time_and_once() {
    let stack = Stack::start().await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let time = (chrono::Utc::now() + chrono::Duration::hours(30)).format(shared::keys::SCHEDULE_FORMAT).to_string();
    let at = shared::keys::parse_schedule(&time).unwrap();
    let key = stack.drop_file("acme", Some(&format!("scheduled/{time}")), "later.csv", b"Email\nlater@acme.example.com\n".to_vec()).await;
    let job = wait_state(&stack, &key, JobState::Scheduled).await;
    let mails = wait_mail(&stack.admin_email(), 1, Duration::from_secs(10)).await;
    let msg = MessageParser::default().parse(mails.last().unwrap()).unwrap();
    assert!(msg.subject().unwrap().contains("later.csv is SCHEDULED for"), "{:?}", msg.subject());
    let report = shared::monitor::scheduled(&stack.svc, at - chrono::Duration::minutes(1)).await;
    assert_eq!(report.scheduled_started, 0, "not before its time");
    assert!(stack.svc.directory.user("acme", "later@acme.example.com").await.unwrap().is_none());
    assert_eq!(shared::monitor::scheduled(&stack.svc, at).await.scheduled_started, 1);
    // (The schedule's next run only after the job ended: run 30 hours ahead of the real clock
    // while it applies, the deadline sweep would see it open for 30 hours.)
    let done = wait_state(&stack, &key, JobState::Completed).await;
    assert_eq!(shared::monitor::scheduled(&stack.svc, at + chrono::Duration::minutes(1)).await.scheduled_started, 0, "once");
    assert_eq!((done.id, done.succeeded), (job.id, 1));
    assert!(stack.svc.directory.user("acme", "later@acme.example.com").await.unwrap().is_some());
    stack.shutdown().await;
}
