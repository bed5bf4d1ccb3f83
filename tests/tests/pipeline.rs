#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! The pipeline end to end: files dropped in the bucket, real S3 event notifications through SQS,
//! the same handlers the Lambdas run, DynamoDB Local, and mail read back from LocalStack.

use mail_parser::{MessageParser, MimeHeaders};
use shared::model::{JobState, Status, UserStatus};
use std::time::{Duration, Instant};
use tests::{Stack, csv_text, parse_csv, parse_xlsx, rows_to_csv, sample_roster, wait_mail, xlsx_bytes};

const WAIT: Duration = Duration::from_secs(120);

fn status_of(rows: &[Vec<String>], email: &str) -> (String, String) {
    let header = &rows[0];
    let e = header.iter().position(|h| h == "Email").expect("Email column");
    let s = header.iter().position(|h| h == "Status").expect("Status column");
    let row = rows.iter().find(|r| r.get(e).map(String::as_str) == Some(email)).unwrap_or_else(|| panic!("{email} not in result"));
    (row[s].clone(), row[s + 1].clone())
}

#[tokio::test]
async fn csv_roster_creates_users_writes_results_and_emails_the_admins_once() {
    let stack = Stack::start().await;
    let tenant = stack.tenant("acme");
    stack.put_tenant(&tenant).await;
    let file = csv_text(&[
        &["Email", "First Name", "Last Name", "Org", "Role", "Shoe Size"],
        &["ann@acme.example.com", "Ann", "Lee", "", "Learner", "38"],
        &["bob@acme.example.com", "Bob", "=1+2", "", "Manager", ""],
        &["bad-email", "Cy", "Z", "", "Learner", ""],
        &["dee@acme.example.com", "Dee", "D", "", "learner", ""],
        &["ANN@acme.example.com", "Ann2", "Dup", "", "", ""],
        &["", "", "", "", "", ""],
        &["eve@acme.example.com", "Eve", "E", "", "Admin", ""],
        &["", "Nobody", "", "North", "", ""],
    ]);
    let key = stack.drop_file("acme", None, "Spring roster.csv", file).await;
    let job = stack.wait_job("acme", &key, WAIT).await;
    assert_eq!(job.state, JobState::Completed);

    let summary = stack.summary(&job).await;
    assert_eq!(summary.rows, 8);
    assert_eq!((summary.counts.success, summary.counts.failure, summary.counts.skipped), (2, 5, 1));
    assert_eq!(summary.warnings, vec!["column \"Shoe Size\" is not a roster column and was ignored"]);

    // Users landed; the invalid ones did not.
    let ann = stack.svc.directory.user("acme", "ann@acme.example.com").await.unwrap().expect("ann created");
    assert_eq!(ann.fields.first_name.as_deref(), Some("Ann"));
    assert_eq!(ann.status, UserStatus::Active);
    assert!(stack.svc.directory.user("acme", "dee@acme.example.com").await.unwrap().is_none());

    // Result file: every row, in input order, with Status, Message and Changes.
    let result = parse_csv(&stack.get(summary.result_key.as_deref().unwrap()).await.unwrap());
    assert_eq!(result[0], vec!["Email", "First Name", "Last Name", "Org", "Role", "Shoe Size", "Status", "Message", "Changes", "UserId"]);
    assert_eq!(result.len(), 9);
    assert_eq!(status_of(&result, "ann@acme.example.com"), ("Created".into(), "user created".into()));
    assert_eq!(result[2][2], "=\"=1+2\"", "formula neutralised in CSV: a formula of one string");
    assert_eq!(status_of(&result, "bad-email"), ("Failure".into(), "Email \"bad-email\" is not a valid email address: it has no @".into()));
    assert_eq!(status_of(&result, "dee@acme.example.com").1, "unknown role \"learner\"; did you mean \"Learner\"?");
    assert_eq!(
        status_of(&result, "ANN@acme.example.com").1,
        "duplicate email: row 2 of this file already has ann@acme.example.com; only the first row is applied. Fix this row if it is another one, or delete it: dropped again as it is, it would change what the first row applied"
    );
    assert_eq!(result[6][6..], ["Skipped".to_string(), "empty row".to_string(), String::new(), String::new()]);
    assert!(status_of(&result, "eve@acme.example.com").1.contains("admin role"));
    assert_eq!(
        result[8][6..],
        [
            "Failure".to_string(),
            "Email is empty; every user row needs an email address (or a Username and a Parent)".to_string(),
            String::new(),
            String::new()
        ]
    );

    // Failed rows only, same columns plus Message, ready to fix and upload again.
    let failed = parse_csv(&stack.get(summary.failed_rows_key.as_deref().unwrap()).await.unwrap());
    assert_eq!(failed[0], vec!["Email", "First Name", "Last Name", "Org", "Role", "Shoe Size", "Message"]);
    assert_eq!(failed.len(), 1 + 5);

    // Exactly one email, to the admins, with the result, the failed rows and the problems attached.
    let mails = wait_mail(&stack.admin_email(), 1, Duration::from_secs(10)).await;
    assert_eq!(mails.len(), 1);
    let msg = MessageParser::default().parse(&mails[0]).expect("MIME");
    let subject = msg.subject().unwrap().to_string();
    assert!(subject.contains("acme") && subject.contains("Spring roster.csv") && subject.contains("2 succeeded, 5 failed"), "{subject}");
    let names: Vec<&str> = msg.attachments().filter_map(|a| a.attachment_name()).collect();
    assert_eq!(names, vec!["Spring roster-result.csv", "Spring roster-failed-rows.csv", "Spring roster-problems.csv"]);
    let attached = msg.attachments().next().unwrap().contents().to_vec();
    assert_eq!(parse_csv(&attached), result, "attachment is the stored result");
    let html = msg.body_html(0).unwrap();
    assert!(html.contains("bad-email") && !html.contains("<script"), "first failures listed in HTML");
    stack.shutdown().await;
}

#[tokio::test]
async fn each_action_reports_its_outcome_and_conditional_writes_hold() {
    let stack = Stack::start().await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let seed = csv_text(&[
        &["Type", "Action", "Email", "First Name", "Org"],
        &["Org", "Create", "", "", "North"],
        &["Org", "Create", "", "", "Empty Org"],
        &["Org", "Create", "", "", "West"],
        &["User", "Create", "w@acme.example.com", "W", "West"],
        &["User", "Create", "a@acme.example.com", "A", "North"],
        &["User", "Create", "b@acme.example.com", "B", ""],
        &["User", "Create", "c@acme.example.com", "C", ""],
        &["User", "Create", "d@acme.example.com", "D", ""],
    ]);
    let key = stack.drop_file("acme", None, "seed.csv", seed).await;
    let job = stack.wait_job("acme", &key, WAIT).await;
    assert_eq!(stack.summary(&job).await.counts.success, 8);

    let changes = csv_text(&[
        &["Type", "Action", "Email", "First Name", "Org"],
        &["User", "Create", "a@acme.example.com", "A2", ""],
        &["User", "Update", "b@acme.example.com", "Bea", ""],
        &["User", "Update", "zed@acme.example.com", "Z", ""],
        &["User", "Delete", "c@acme.example.com", "", ""],
        &["User", "Delete", "nobody@acme.example.com", "", ""],
        &["User", "Disable", "d@acme.example.com", "", ""],
        &["User", "Enable", "ghost@acme.example.com", "", ""],
        &["User", "", "new@acme.example.com", "New", "Ghost Org"],
        &["User", "", "up@acme.example.com", "Up", ""],
        &["Org", "Create", "", "", "North"],
        &["Org", "Delete", "", "", "Nowhere"],
        &["Org", "Delete", "", "", "West"],
        &["Org", "Delete", "", "", "Empty Org"],
    ]);
    let key = stack.drop_file("acme", None, "changes.csv", changes).await;
    let job = stack.wait_job("acme", &key, WAIT).await;
    let summary = stack.summary(&job).await;
    let result = parse_csv(&stack.get(summary.result_key.as_deref().unwrap()).await.unwrap());
    let msgs: Vec<(String, String)> = result[1..].iter().map(|r| (r[5].clone(), r[6].clone())).collect();
    let expect = [
        ("Failure", "user already exists; use Update or Upsert to change it"),
        ("Updated", "user updated"),
        ("Failure", "user not found; use Create or Upsert to add it"),
        ("Deleted", "user deleted"),
        ("Failure", "user not found; use Create or Upsert to add it"),
        ("Disabled", "user disabled"),
        ("Failure", "user not found; use Create or Upsert to add it"),
        ("Failure", "organization \"Ghost Org\" does not exist; create it first or add a Type=Org row for it to this file"),
        ("Created", "user created"),
        ("Failure", "organization \"North\" already exists; use Update or Upsert to change it"),
        ("Failure", "organization \"Nowhere\" not found; use Create or Upsert to add it"),
        ("Failure", "organization \"West\" still has 1 user; move or delete them first"),
        ("Deleted", "organization \"Empty Org\" deleted"),
    ];
    assert_eq!(msgs.len(), expect.len());
    for (i, (got, want)) in msgs.iter().zip(expect.iter()).enumerate() {
        assert_eq!((got.0.as_str(), got.1.as_str()), *want, "row {}", i + 2);
    }
    let dir = &stack.svc.directory;
    assert_eq!(
        dir.user("acme", "a@acme.example.com").await.unwrap().unwrap().fields.first_name.as_deref(),
        Some("A"),
        "create did not overwrite"
    );
    assert_eq!(dir.user("acme", "b@acme.example.com").await.unwrap().unwrap().fields.first_name.as_deref(), Some("Bea"));
    assert!(dir.user("acme", "c@acme.example.com").await.unwrap().is_none());
    assert_eq!(dir.user("acme", "d@acme.example.com").await.unwrap().unwrap().status, UserStatus::Disabled);
    assert!(dir.user("acme", "new@acme.example.com").await.unwrap().is_none());
    assert!(dir.org_exists("acme", "north").await.unwrap());
    assert!(dir.org_exists("acme", "West").await.unwrap(), "an organization with users is not deleted");
    assert!(!dir.org_exists("acme", "Empty Org").await.unwrap());
    stack.shutdown().await;
}

#[tokio::test]
async fn users_referencing_an_org_created_further_down_the_same_file_succeed() {
    let stack = Stack::start_with(|c| c.chunk_size = 2).await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let file = csv_text(&[
        &["Type", "Email", "Org"],
        &["User", "u1@acme.example.com", "Late Org"],
        &["User", "u2@acme.example.com", "Late Org"],
        &["User", "u3@acme.example.com", "Late Org"],
        &["Org", "", "Late Org"],
    ]);
    let key = stack.drop_file("acme", None, "late.csv", file).await;
    let job = stack.wait_job("acme", &key, WAIT).await;
    let s = stack.summary(&job).await;
    assert_eq!((s.counts.success, s.counts.failure), (4, 0), "{s:?}");
    assert_eq!(job.phase_chunks, Some([1, 2, 0, 0]));
    stack.shutdown().await;
}

/// One file per input flavour; every one must decode to the same users.
#[tokio::test]
async fn every_supported_format_and_encoding_is_read() {
    let stack = Stack::start().await;
    let utf16 = {
        let text = "Email\tFirst Name\r\nzoe@x.example.com\tZo\u{eb}\r\n";
        let mut b = vec![0xFF, 0xFE];
        b.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
        b
    };
    let xlsx = xlsx_bytes(
        "People",
        &[vec!["Email".into(), "First Name".into(), "Phone".into()], vec!["zoe@x.example.com".into(), "Zoë".into(), "4155550100".into()]],
    );
    let fixture = |n: &str| std::fs::read(format!("{}/fixtures/{n}", env!("CARGO_MANIFEST_DIR"))).expect("fixture");
    let cases: Vec<(&str, &str, Vec<u8>, &str, &str)> = vec![
        ("csv", "a.csv", b"Email,First Name\nzoe@x.example.com,Zo\xc3\xab\n".to_vec(), "zoe@x.example.com", "Zoë"),
        ("tsv", "a.tsv", b"Email\tFirst Name\nzoe@x.example.com\tZo\xc3\xab\n".to_vec(), "zoe@x.example.com", "Zoë"),
        ("semicolon", "a.csv", b"Email;First Name;Org\nzoe@x.example.com;Zo\xc3\xab;\n".to_vec(), "zoe@x.example.com", "Zoë"),
        ("bom", "a.csv", b"\xEF\xBB\xBFEmail,First Name\nzoe@x.example.com,Zo\xc3\xab\n".to_vec(), "zoe@x.example.com", "Zoë"),
        ("utf16", "a.txt", utf16, "zoe@x.example.com", "Zoë"),
        ("cp1252", "a.csv", b"Email,First Name\nzoe@x.example.com,Zo\xeb\n".to_vec(), "zoe@x.example.com", "Zoë"),
        ("xlsx", "a.xlsx", xlsx, "zoe@x.example.com", "Zoë"),
        // Fixtures also hold an Org row and a user in it, and an invalid row.
        ("xls", "roster.xls", fixture("roster.xls"), "ana@riverside.example.com", "Ana"),
        ("ods", "roster.ods", fixture("roster.ods"), "ana@riverside.example.com", "Ana"),
    ];
    let mut keys = Vec::new();
    for (tenant, name, bytes, _, _) in &cases {
        stack.put_tenant(&stack.tenant(tenant)).await;
        keys.push(stack.drop_file(tenant, None, name, bytes.clone()).await);
    }
    for ((tenant, _, _, email, first), key) in cases.iter().zip(&keys) {
        let job = stack.wait_job(tenant, key, WAIT).await;
        assert_eq!(job.state, JobState::Completed, "{tenant}: {:?}", job.message);
        let user = stack.svc.directory.user(tenant, email).await.unwrap().unwrap_or_else(|| panic!("{tenant}: user missing"));
        assert_eq!(user.fields.first_name.as_deref(), Some(*first), "{tenant}");
        if matches!(*tenant, "xls" | "ods") {
            let s = stack.summary(&job).await;
            assert_eq!((s.counts.success, s.counts.failure), (3, 1), "{tenant}: {s:?}");
            assert_eq!(user.fields.phone.as_deref(), Some("4155550100"), "{tenant}: phone stays an identifier");
            assert_eq!(user.fields.org.as_deref(), Some("Riverside"));
            assert!(s.result_key.as_deref().unwrap().ends_with("roster-result.xlsx"), "{tenant}: spreadsheet in, XLSX out");
        }
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn spreadsheet_result_is_an_xlsx_with_every_row_and_a_failed_rows_workbook() {
    let stack = Stack::start().await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let (rows, ok) = sample_roster(120);
    let key = stack.drop_file("acme", None, "roster.xlsx", xlsx_bytes("Roster", &rows)).await;
    let job = stack.wait_job("acme", &key, WAIT).await;
    let s = stack.summary(&job).await;
    let expected_fail = ok.iter().filter(|g| !**g).count() as u32;
    assert_eq!((s.counts.success, s.counts.failure), (ok.len() as u32 - expected_fail, expected_fail));
    let result = parse_xlsx(&stack.get(s.result_key.as_deref().unwrap()).await.unwrap());
    assert_eq!(result.len(), rows.len());
    for (i, (row, good)) in result[1..].iter().zip(&ok).enumerate() {
        assert_eq!(row[10] == "Created", *good, "row {}: {:?}", i + 2, row);
        assert_eq!(row[2], rows[i + 1][2], "input order kept");
    }
    let failed = parse_xlsx(&stack.get(s.failed_rows_key.as_deref().unwrap()).await.unwrap());
    assert_eq!(failed.len() as u32, 1 + expected_fail);
    assert_eq!(failed[0].last().map(String::as_str), Some("Message"));
    stack.shutdown().await;
}

#[tokio::test]
async fn structural_errors_reject_the_whole_file_apply_nothing_and_say_why() {
    let stack = Stack::start_with(|c| c.max_file_bytes = 2_000).await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let big = {
        let mut v = b"Email,First Name\n".to_vec();
        for i in 0..200 {
            v.extend(format!("user{i}@acme.example.com,U\n").as_bytes());
        }
        v
    };
    let garbage: Vec<u8> = (0..3000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let cases: Vec<(Option<&str>, &str, Vec<u8>, &str)> = vec![
        (
            None,
            "nocol.csv",
            b"Name,Phone\nAnn,1\n".to_vec(),
            "the required column Email is missing (the header row has: \"Name\", \"Phone\")",
        ),
        (None, "header.csv", b"Email,First Name\n".to_vec(), "the file has a header row but no data rows"),
        (None, "empty.csv", Vec::new(), "the file is empty"),
        (None, "garbage.csv", garbage[..1500].to_vec(), "not a CSV, TSV, XLSX, XLS or ODS roster"),
        (None, "broken.xlsx", b"PK\x03\x04\x14\x00broken".to_vec(), "the XLSX file could not be read"),
        (Some("merge"), "mode.csv", b"Email\na@acme.example.com\n".to_vec(), "unknown mode folder \"merge\""),
        (None, "big.csv", big, "the limit is"),
    ];
    let mut keys = Vec::new();
    for (mode, name, bytes, _) in &cases {
        keys.push(stack.drop_file("acme", *mode, name, bytes.clone()).await);
    }
    for ((_, name, _, reason), key) in cases.iter().zip(&keys) {
        let job = stack.wait_job("acme", key, WAIT).await;
        assert_eq!(job.state, JobState::Rejected, "{name}");
        let s = stack.summary(&job).await;
        assert!(s.reason.as_deref().unwrap_or_default().contains(reason), "{name}: {:?}", s.reason);
        assert!(s.result_key.is_none(), "{name}: no result file for a rejected file");
        let chunks = stack.svc.store.list(&format!("chunks/{}/", job.id)).await.unwrap();
        assert!(chunks.is_empty(), "{name}: nothing applied");
    }
    assert!(stack.svc.directory.user("acme", "a@acme.example.com").await.unwrap().is_none());
    assert!(stack.svc.directory.user("acme", "user1@acme.example.com").await.unwrap().is_none());
    let mails = wait_mail(&stack.admin_email(), cases.len(), Duration::from_secs(10)).await;
    assert_eq!(mails.len(), cases.len(), "one rejection email per file");
    assert!(mails.iter().all(|m| MessageParser::default().parse(m).unwrap().subject().unwrap().contains("rejected, nothing was applied")));

    // Unknown tenant: rejected with a summary, nobody to email (no default admins here).
    let key = stack.drop_file("nosuch", None, "a.csv", b"Email\na@x.example.com\n".to_vec()).await;
    let job = stack.wait_job("nosuch", &key, WAIT).await;
    assert_eq!(job.state, JobState::Rejected);
    assert!(stack.summary(&job).await.reason.unwrap().contains("tenant \"nosuch\" is not configured"));
    stack.shutdown().await;
}

#[tokio::test]
async fn a_file_for_an_unconfigured_tenant_is_reported_to_the_deployment_default_admins() {
    let ops = format!("ops-{}@example.com", uuid::Uuid::new_v4().simple());
    let stack = Stack::start_with(|c| c.default_admins = vec![ops.clone()]).await;
    let key = stack.drop_file("newcorp", None, "first.csv", b"Email\na@newcorp.example.com\n".to_vec()).await;
    let job = stack.wait_job("newcorp", &key, WAIT).await;
    assert_eq!(job.state, JobState::Rejected);
    let mails = wait_mail(&ops, 1, Duration::from_secs(10)).await;
    assert_eq!(mails.len(), 1);
    let subject = MessageParser::default().parse(&mails[0]).unwrap().subject().unwrap().to_string();
    assert_eq!(subject, "[rosterdrop] newcorp: first.csv was rejected, nothing was applied");
    stack.shutdown().await;
}

/// A tenant with 60 admins: each gets the result email once, in messages of 25. In groups of
/// 50, named in the envelope and again in `To:`, SES (LocalStack's, as it counts) refused 26 or
/// more admins, and the job ended FAILED saying its result files could not be written.
#[tokio::test]
async fn every_admin_of_a_tenant_with_sixty_gets_the_result_email_once() {
    let stack = Stack::start().await;
    let mut tenant = stack.tenant("crowd");
    let admins: Vec<String> = (0..60).map(|i| format!("admin{i}-{}", stack.admin_email())).collect();
    tenant.admin_emails = admins.clone();
    stack.put_tenant(&tenant).await;
    let key = stack.drop_file("crowd", None, "crowd.csv", csv_text(&[&["Email", "RoleName"], &["ann@crowd.example.com", "Learner"]])).await;
    let job = stack.wait_job("crowd", &key, WAIT).await;
    assert_eq!((job.state, job.message.as_deref()), (JobState::Completed, None));
    for admin in [&admins[0], &admins[24], &admins[25], &admins[59]] {
        assert_eq!(wait_mail(admin, 1, Duration::from_secs(10)).await.len(), 1, "{admin}");
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn ten_thousand_rows_end_to_end_every_row_accounted_for_and_one_email() {
    let stack = Stack::start_with(|c| c.chunk_size = 500).await;
    stack.put_tenant(&stack.tenant("big")).await;
    let (rows, ok) = sample_roster(9_996);
    assert_eq!(ok.len(), 10_000);
    let started = Instant::now();
    let key = stack.drop_file("big", None, "ten-thousand.csv", rows_to_csv(&rows)).await;
    let job = stack.wait_job("big", &key, Duration::from_secs(600)).await;
    let elapsed = started.elapsed();
    let s = stack.summary(&job).await;
    let expected_fail = ok.iter().filter(|g| !**g).count() as u32;
    assert_eq!(s.rows, 10_000);
    assert_eq!(s.counts.total(), 10_000, "counts add up");
    assert_eq!((s.counts.success, s.counts.failure, s.counts.skipped), (10_000 - expected_fail, expected_fail, 0));
    let result = parse_csv(&stack.get(s.result_key.as_deref().unwrap()).await.unwrap());
    assert_eq!(result.len(), 10_001);
    for (row, good) in result[1..].iter().zip(&ok) {
        assert_eq!(row[10] == "Created", *good, "{row:?}");
    }
    let mails = wait_mail(&stack.admin_email(), 1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(tests::mail_to(&stack.admin_email()).len(), 1, "exactly one email");
    assert_eq!(mails.len(), 1);
    eprintln!("10,000 rows end to end in {:.1}s ({} chunks)", elapsed.as_secs_f64(), job.chunks_total());
    stack.shutdown().await;
}

#[tokio::test]
async fn every_event_delivered_twice_and_out_of_order_changes_nothing_and_sends_one_email() {
    let stack = Stack::start_manual().await;
    let mut config_tenant = stack.tenant("acme");
    config_tenant.chunk_size = Some(10);
    stack.put_tenant(&config_tenant).await;
    let (rows, ok) = sample_roster(56);
    let key = stack.drop_file("acme", None, "twice.csv", rows_to_csv(&rows)).await;
    let (job, deliveries) = stack.settle("acme", &key, 2, Duration::from_secs(30)).await;
    let jobs = stack.svc.jobs.recent("acme", 10).await.unwrap();
    assert_eq!(jobs.len(), 1, "one job despite the duplicate ingest event");
    let s = stack.summary(&job).await;
    let expected_fail = ok.iter().filter(|g| !**g).count() as u32;
    assert_eq!((s.counts.success, s.counts.failure, s.counts.total()), (60 - expected_fail, expected_fail, 60));
    // ingest + 6 user chunks + 1 org chunk + done, each twice (phase releases may add more).
    assert!(deliveries >= 2 * 9, "{deliveries}");
    let mails = wait_mail(&stack.admin_email(), 1, Duration::from_secs(5)).await;
    assert_eq!(mails.len(), 1, "exactly one email");
    // Created users report "user created" (not "already exists") although every chunk ran twice.
    let result = parse_csv(&stack.get(s.result_key.as_deref().unwrap()).await.unwrap());
    let applied: Vec<&Vec<String>> = result[1..].iter().filter(|r| r[10] != "Failure").collect();
    assert_eq!(applied.len() as u32, 60 - expected_fail);
    assert!(applied.iter().all(|r| r[10] == "Created" && r[11].ends_with("created")), "{result:?}");

    // The same file delivered once to a fresh stack leaves the same directory, field by field.
    let single = Stack::start_manual().await;
    single.put_tenant(&config_tenant).await;
    let single_key = single.drop_file("acme", None, "twice.csv", rows_to_csv(&rows)).await;
    let single_job = single.wait_job("acme", &single_key, Duration::from_secs(30)).await;
    let (twice_dir, once_dir) = (stack.directory_snapshot(&job.id).await, single.directory_snapshot(&single_job.id).await);
    assert!(twice_dir.len() > 40, "{} items", twice_dir.len());
    assert_eq!(twice_dir, once_dir, "directory after duplicate delivery == after single delivery");
    let single_result = parse_csv(&single.get(single.summary(&single_job).await.result_key.as_deref().unwrap()).await.unwrap());
    // The same outcomes; the user ids differ only as the two jobs' ids do (each stack's own job).
    let without_ids = |rows: &[Vec<String>]| rows.iter().map(|r| r[..r.len() - 1].to_vec()).collect::<Vec<_>>();
    assert_eq!(without_ids(&result), without_ids(&single_result), "every row's outcome recorded once, the same");
    let ids = |rows: &[Vec<String>]| rows[1..].iter().filter(|r| !r[r.len() - 1].is_empty()).count();
    assert_eq!(ids(&result), ids(&single_result));
    single.shutdown().await;
    stack.shutdown().await;
}

#[tokio::test]
async fn add_mode_fails_existing_users_and_refuses_other_actions() {
    let stack = Stack::start().await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let key = stack.drop_file("acme", None, "first.csv", b"Email\nold@acme.example.com\n".to_vec()).await;
    stack.wait_job("acme", &key, WAIT).await;
    let file = b"Action,Email\n,old@acme.example.com\n,new@acme.example.com\nDelete,old@acme.example.com\n".to_vec();
    let key = stack.drop_file("acme", Some("add"), "add.csv", file).await;
    let job = stack.wait_job("acme", &key, WAIT).await;
    let result = parse_csv(&stack.get(stack.summary(&job).await.result_key.as_deref().unwrap()).await.unwrap());
    assert_eq!(
        result[1][2..],
        ["Failure".to_string(), "user already exists; use Update or Upsert to change it".to_string(), String::new(), String::new()]
    );
    assert_eq!(result[2][2], "Created");
    assert!(result[3][3].contains("not allowed in add mode"));
    assert_eq!(Status::Success.to_string(), "Success");
    stack.shutdown().await;
}

#[tokio::test]
async fn results_over_the_attachment_limit_are_linked_not_attached() {
    let stack = Stack::start_with(|c| c.max_attachment_bytes = 200).await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let (rows, _) = sample_roster(40);
    let key = stack.drop_file("acme", None, "linked.csv", rows_to_csv(&rows)).await;
    let job = stack.wait_job("acme", &key, WAIT).await;
    let s = stack.summary(&job).await;
    let mails = wait_mail(&stack.admin_email(), 1, Duration::from_secs(10)).await;
    assert_eq!(mails.len(), 1);
    let msg = MessageParser::default().parse(&mails[0]).expect("MIME");
    assert_eq!(msg.attachments().count(), 0, "nothing attached over the limit");
    let text = msg.body_text(0).unwrap().to_string();
    assert!(text.contains("linked-result.csv is too large to attach"), "{text}");
    assert!(!text.contains("Attached:"), "nothing is said to be attached: {text}");
    // And the way to it once the link has expired (it may, before its time: see wording::link_line).
    assert!(text.replace("\r\n", "\n").contains(&format!("Once the link has expired: rosterdrop results {}", job.id)), "{text}");
    // The link downloads the stored result.
    let url = text.lines().find(|l| l.starts_with("http") && l.contains("linked-result.csv")).expect("link");
    let mut resp = ureq::get(url).call().expect("presigned GET");
    let body = resp.body_mut().read_to_vec().expect("body");
    assert_eq!(body, stack.get(s.result_key.as_deref().unwrap()).await.unwrap());
    stack.shutdown().await;
}

#[tokio::test]
async fn a_file_larger_than_the_function_can_hold_is_refused_with_the_limit_not_by_running_out_of_memory() {
    // A 1 MB function (as Lambda would report it) holds about 445 KB of CSV.
    let stack = Stack::start_with(|c| c.memory_mb = Some(1)).await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let (rows, _) = sample_roster(10_000);
    let key = stack.drop_file("acme", None, "big.csv", rows_to_csv(&rows)).await;
    let job = stack.wait_job("acme", &key, WAIT).await;
    assert_eq!(job.state, JobState::Rejected);
    let reason = stack.summary(&job).await.reason.unwrap();
    assert!(reason.contains("as a CSV or TSV file this service reads up to 0 MB at once. Split it"), "{reason}");
    assert!(stack.svc.directory.list_users("acme").await.unwrap().is_empty(), "nothing applied");
    assert_eq!(wait_mail(&stack.admin_email(), 1, Duration::from_secs(5)).await.len(), 1, "the admins are told");
    stack.shutdown().await;
}
