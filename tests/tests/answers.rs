#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Every dropped file gets its answer: exactly one email and a final job state (COMPLETED,
//! REJECTED or FAILED) for files people and other tools really produce, hostile ones included.
//! Real S3 events, the runner, DynamoDB Local, mail read back from LocalStack.

use shared::model::{Job, JobState};
use std::time::Duration;
use tests::{Stack, mail_to, parse_workbook, wait_mail};

const WAIT: Duration = Duration::from_secs(120);

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(format!("{}/../tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The job reached `state`, and its admins got exactly one email whose subject says `says`.
async fn one_email(to: &str, job: &Job, state: JobState, says: &str) -> String {
    assert_eq!(job.state, state, "{job:?}");
    let mail = wait_mail(to, 1, Duration::from_secs(10)).await;
    // Bodies decoded: a long line of the raw message may be wrapped through the job id.
    let mine: Vec<mail_parser::Message> = mail
        .iter()
        .filter_map(|m| mail_parser::MessageParser::default().parse(m))
        .filter(|m| m.body_text(0).is_some_and(|t| t.contains(&job.id)))
        .collect();
    assert_eq!(mine.len(), 1, "exactly one email for job {} ({} in all to {to})", job.id, mail.len());
    let subject = mine[0].subject().unwrap_or_default().to_string();
    assert!(subject.contains(says), "{subject}");
    mine[0].body_text(0).unwrap_or_default().into_owned()
}

#[tokio::test]
async fn allocation_bombs_and_user_rows_without_email_are_rejected_with_one_email_each() {
    let stack = Stack::start().await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let admin = stack.admin_email();
    for (file, says) in [
        ("bad/sst-count-bomb.xlsx", "shared-string table says it holds 100000000000000 strings"),
        ("bad/far-column.xlsx", "outside the largest sheet a spreadsheet can have"),
        ("bad/ods-dense-bomb.ods", "the ODS file's sheets span 82,001,920 cells"),
        ("bad/ods-spaces-bomb.ods", "the ODS file's cells hold 3814 MB of text"),
        ("bad/user-rows-without-email-column.csv", "the required column Email is missing: row 2 is a user"),
    ] {
        let name = file.rsplit('/').next().unwrap();
        let key = stack.drop_file("acme", None, name, fixture(file)).await;
        let job = stack.wait_job("acme", &key, WAIT).await;
        let body = one_email(&admin, &job, JobState::Rejected, "was rejected").await;
        assert!(body.contains(says), "{file}: {body}");
        assert_eq!(stack.summary(&job).await.reason.as_deref().map(|r| r.contains(says)), Some(true));
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn workbooks_past_excels_limits_complete_with_their_result_files() {
    let stack = Stack::start().await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let admin = stack.admin_email();

    // A LibreOffice ODS whose sheet name is longer than a workbook's 31 characters.
    let key = stack.drop_file("acme", None, "spring.ods", fixture("real/long-sheet-name.ods")).await;
    let job = stack.wait_job("acme", &key, WAIT).await;
    one_email(&admin, &job, JobState::Completed, "1 succeeded, 1 failed").await;
    let summary = stack.summary(&job).await;
    let sheets = parse_workbook(&stack.get(summary.result_key.as_deref().unwrap()).await.unwrap());
    assert_eq!(sheets[0].0, "Students of the spring term at");
    assert_eq!(
        sheets[0].1[2][3..],
        ["Failure".to_string(), "unknown role \"learner\"; did you mean \"Learner\"?".to_string(), String::new(), String::new()]
    );
    assert!(
        summary.warnings.iter().any(|w| w.contains("is named \"Students of the spring term at\" in the result files")),
        "{:?}",
        summary.warnings
    );
    let failed = parse_workbook(&stack.get(summary.failed_rows_key.as_deref().unwrap()).await.unwrap());
    assert_eq!(failed[0].0, "Students of the spring term at");

    // A row 16,384 columns wide (Status, Message, Changes and UserId no longer fit) and a cell of 32,767 characters
    // whose message quotes it.
    let mut wb = rust_xlsxwriter::Workbook::new();
    let ws = wb.add_worksheet();
    ws.write_string(0, 0, "Email").unwrap();
    ws.write_string(0, 1, "First Name").unwrap();
    ws.write_string(1, 0, "wide@acme.example.com").unwrap();
    ws.write_string(2, 0, "x".repeat(32_767)).unwrap();
    for c in 2..16_384u16 {
        ws.write_string(0, c, format!("Extra {c}")).unwrap();
        ws.write_string(1, c, "v").unwrap();
    }
    let key = stack.drop_file("acme", None, "wide.xlsx", wb.save_to_buffer().unwrap()).await;
    let job = stack.wait_job("acme", &key, WAIT).await;
    one_email(&admin, &job, JobState::Completed, "1 succeeded, 1 failed").await;
    let summary = stack.summary(&job).await;
    assert!(summary.warnings.iter().any(|w| w.contains("has 16384 columns; a spreadsheet holds 16,384")), "{:?}", summary.warnings);
    let rows = &parse_workbook(&stack.get(summary.result_key.as_deref().unwrap()).await.unwrap())[0].1;
    assert_eq!(rows[0].len(), 16_384);
    assert_eq!(rows[0][16_380..], ["Status", "Message", "Changes", "UserId"].map(String::from));
    assert_eq!(rows[1][16_380], "Created");
    assert!(uuid::Uuid::parse_str(&rows[1][16_383]).is_ok(), "{}", rows[1][16_383]);
    assert_eq!(rows[2][0].chars().count(), 32_767, "a cell at Excel's limit is kept whole");
    assert!(rows[2][16_381].starts_with("Email \"xxxx") && rows[2][16_381].chars().count() < 300, "{}", &rows[2][16_381]);
    stack.shutdown().await;
}

/// An XLSX and an ODS LibreOffice saved (`fixtures/make/formatted-numbers.fods` converted with
/// `soffice --headless --convert-to xlsx` and `ods`) whose ids are numbers under `000000` and phones under
/// `\(000") "000\-0000`: stored as the sheet shows them, and the result and failed-rows files
/// echo them so, so a fixed failed row dropped again carries the same id.
#[tokio::test]
async fn formatted_workbook_numbers_are_stored_and_echoed_as_shown() {
    let stack = Stack::start().await;
    let admin = stack.admin_email();
    // The same sheet saved as XLSX, as ODS and as XLS, each for its own tenant.
    let files = [("acme", "real/formatted-numbers.xlsx"), ("odsco", "real/formatted-numbers.ods"), ("xlsco", "real/formatted-numbers.xls")];
    for (tenant, file) in files {
        stack.put_tenant(&stack.tenant(tenant)).await;
        let name = file.rsplit('/').next().unwrap();
        let key = stack.drop_file(tenant, None, name, fixture(file)).await;
        let job = stack.wait_job(tenant, &key, WAIT).await;
        one_email(&admin, &job, JobState::Completed, "1 succeeded, 1 failed").await;
        let ann = "ann@acme.example.com".to_string();
        let read = stack.svc.directory.read_users(tenant, std::slice::from_ref(&ann), shared::ports::Consistency::Strong).await.unwrap();
        let fields = &read.live[&ann].fields;
        assert_eq!((fields.external_id.as_deref(), fields.phone.as_deref()), (Some("000123"), Some("(415) 555-0100")), "{file}");
        let summary = stack.summary(&job).await;
        let result = &parse_workbook(&stack.get(summary.result_key.as_deref().unwrap()).await.unwrap())[0].1;
        assert_eq!(result[1][..5], ["ann@acme.example.com", "Ann", "Learner", "000123", "(415) 555-0100"].map(String::from), "{file}");
        let failed = &parse_workbook(&stack.get(summary.failed_rows_key.as_deref().unwrap()).await.unwrap())[0].1;
        assert_eq!(failed[1][..5], ["bob@acme.example.com", "Bob", "learner", "000124", "(415) 555-0101"].map(String::from), "{file}");
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn files_outside_the_layout_are_answered_and_folder_markers_stay_silent() {
    let ops = format!("ops-{}@example.com", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    let ops_for_config = ops.clone();
    let stack = Stack::start_with(move |c| c.default_admins = vec![ops_for_config]).await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let admin = stack.admin_email();
    let csv = tests::csv_text(&[&["Email", "Role"], &["ann@acme.example.com", "Learner"]]);
    let put = |key: &'static str| {
        let (store, body) = (stack.svc.store.clone(), csv.clone());
        async move { store.put(key, body, "text/csv").await.unwrap() }
    };

    // The tenant folder typed with capitals is the tenant.
    put("incoming/Acme/roster.csv").await;
    let job = stack.wait_job("acme", "incoming/Acme/roster.csv", WAIT).await;
    one_email(&admin, &job, JobState::Completed, "1 succeeded, 0 failed").await;

    // One folder too deep, for a known tenant: its admins are told where to drop it.
    put("incoming/acme/2026/spring/roster.csv").await;
    let job = stack.wait_job("acme", "incoming/acme/2026/spring/roster.csv", WAIT).await;
    let body = one_email(&admin, &job, JobState::Rejected, "was rejected").await;
    assert!(body.contains("incoming/acme/2026/spring/") && body.contains("drop roster files in incoming/acme/"), "{body}");

    // No tenant folder, and an unknown tenant: the default admins are told.
    put("incoming/roster.csv").await;
    let job = stack.wait_job(shared::ingest::NO_TENANT, "incoming/roster.csv", WAIT).await;
    let body = one_email(&ops, &job, JobState::Rejected, "was rejected").await;
    assert!(body.contains("directly in incoming/"), "{body}");
    put("incoming/globex/roster.csv").await;
    let job = stack.wait_job("globex", "incoming/globex/roster.csv", WAIT).await;
    let body = one_email(&ops, &job, JobState::Rejected, "was rejected").await;
    assert!(body.contains("tenant \"globex\" is not configured"), "{body}");

    // S3 console folder markers: no job, no email.
    stack.svc.store.put("incoming/acme/2027/", Vec::new(), "application/x-directory").await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(stack.svc.jobs.recent("acme", 100).await.unwrap().iter().all(|j| j.source_key != "incoming/acme/2027/"));
    assert_eq!(mail_to(&admin).len(), 2, "the two acme jobs' emails, nothing for the marker");
    stack.shutdown().await;
}

fn invite(tenant: &str, email: &str, job: &str) -> shared::model::Invite {
    shared::model::Invite {
        tenant: tenant.into(),
        email: email.into(),
        first_name: None,
        due_at: "2026-01-01T00:00:00+00:00".into(),
        job: job.into(),
        attempts: 0,
    }
}

/// One address SES refuses, one it cannot take at all (non-ASCII before the @, from before
/// validation refused them) and one transient SES failure among good invites: every good invite
/// is sent, the refused ones are recorded failed, the transient one is retried after its backoff,
/// and the monitor tasks of the same run still run when the sweep itself fails.
#[tokio::test]
async fn an_undeliverable_invite_never_stops_the_others_nor_the_monitor_tasks() {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    let faults = Arc::new(tests::faults::Faults::default());
    let stack = Stack::start_manual_faulty(faults.clone(), |c| {
        c.sdk_max_attempts = 1;
        c.invite_rate_per_sec = 100.0;
    })
    .await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let tag = &stack.tag;
    let good: Vec<String> = (0..4).map(|i| format!("good{i}-{tag}@acme.example.com")).collect();
    let (bounced, accented) = (format!("bounce-{tag}@acme.example.com"), format!("josé-{tag}@acme.example.com"));
    for email in good.iter().take(2).chain([&bounced, &accented]).chain(good.iter().skip(2)) {
        // The invitee exists (the sweep sends only to live, active users who have not activated).
        let op = shared::model::RowOp {
            row: 2,
            action: shared::model::Action::Create,
            target: shared::model::Target::User { email: email.clone(), fields: Default::default() },
            created_in_file: vec![],
            restore: None,
        };
        let stamp = shared::ports::Stamp { job: "job-1".into(), row: 2, at: "2026-01-01T00:00:00Z".into(), order: "0".into() };
        shared::apply::write_row(&*stack.svc.directory, "acme", &op, &stamp, true).await.unwrap();
        stack.svc.invites.schedule(&invite("acme", email, "job-1")).await.unwrap();
    }
    *faults.ses_reject_recipient.lock().unwrap() = Some(bounced.clone());
    faults.ses_fail.store(1, Ordering::Relaxed); // the first send of the run fails with a 500
    faults.enabled.store(true, Ordering::Relaxed);

    let now = chrono::Utc::now();
    let report = shared::monitor::scheduled(&stack.svc, now).await;
    assert_eq!(report.sent, 3, "{report:?}");
    assert!(report.errors.is_empty(), "{report:?}");
    let delivered: Vec<&String> = good.iter().filter(|g| !mail_to(g).is_empty()).collect();
    assert_eq!(delivered.len(), 3, "every good invite but the one SES failed transiently");
    assert!(mail_to(&bounced).is_empty() && mail_to(&accented).is_empty());

    // The refused ones left the due list; the transient one is due again after its backoff.
    let due = stack.svc.invites.due(&(now + chrono::Duration::minutes(2)).to_rfc3339(), 100).await.unwrap();
    let due: Vec<(&str, u32)> = due.iter().map(|i| (i.email.as_str(), i.attempts)).collect();
    let retried = good.iter().find(|g| mail_to(g).is_empty()).unwrap();
    assert_eq!(due, vec![(retried.as_str(), 1)]);
    assert!(stack.svc.invites.due(&now.to_rfc3339(), 100).await.unwrap().is_empty(), "not before its backoff");
    let report = shared::monitor::scheduled(&stack.svc, now + chrono::Duration::minutes(2)).await;
    assert_eq!((report.sent, mail_to(retried).len()), (1, 1));

    // The sweep's own query failing is one error; the stuck-job check of the same run still runs.
    let old = (now - chrono::Duration::hours(4)).to_rfc3339();
    let stuck = shared::model::Job::received("stuck-job", "acme", "incoming/acme/stuck.csv", "stuck.csv", None, old);
    stack.svc.jobs.create_or_get(&stuck).await.unwrap();
    *faults.fail_matching.lock().unwrap() = Some(("INVITES#".into(), 1000));
    let report = shared::monitor::scheduled(&stack.svc, now).await;
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert!(report.errors[0].starts_with("invite sweep:"), "{report:?}");
    assert_eq!(report.stopped_jobs, 1, "{report:?}");
    assert_eq!(stack.svc.jobs.get("stuck-job").await.unwrap().unwrap().state, JobState::Rejected);
    faults.enabled.store(false, Ordering::Relaxed);
    stack.shutdown().await;
}

/// A finalize that no retry can fix (here: an outcome file damaged after apply wrote it) ends the
/// job FAILED with one plain email saying what happened, instead of failing into the dead-letter
/// queue with the admins never told.
#[tokio::test]
async fn a_finalize_no_retry_can_fix_ends_the_job_failed_with_a_plain_email() {
    let stack = Stack::start_manual().await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let key = stack.drop_file("acme", None, "doomed.csv", tests::csv_text(&[&["Email"], &["ann@acme.example.com"]])).await;
    // Until the job ends, not until a quiet second: S3 notifications may reach the queue late.
    let deadline = std::time::Instant::now() + WAIT;
    while stack.ended_job("acme", &key).await.is_none() {
        assert!(std::time::Instant::now() < deadline, "the job did not end within {WAIT:?}");
        let events = stack.take_events().await;
        for obj in events {
            if let Some(job) = shared::keys::parse_done(&obj.key) {
                let outcomes = stack.svc.store.list(&shared::keys::outcomes_prefix(&job)).await.unwrap();
                assert!(!outcomes.is_empty());
                for k in outcomes {
                    stack.svc.store.put(&k, b"{\"row\":2,\"status\":\"Succ".to_vec(), "application/x-ndjson").await.unwrap();
                }
            }
            // Returns Ok: nothing for Lambda to retry.
            shared::route::dispatch(&stack.svc, &obj).await.unwrap();
        }
    }
    let job = stack.wait_job("acme", &key, Duration::from_secs(5)).await;
    let body = one_email(&stack.admin_email(), &job, JobState::Failed, "could not be finished").await;
    assert!(body.contains("result files could not be written") && body.contains(&job.id), "{body}");
    let summary = stack.summary(&job).await;
    assert!(summary.reason.as_deref().is_some_and(|r| r.contains("internal data outcomes")), "{summary:?}");
    stack.shutdown().await;
}

/// The fix-and-drop-again loop, CSV and XLSX: the failed-rows file, dropped again with only the
/// faulty cell fixed, stores exactly the values of the original file (CSV cells neutralised for
/// spreadsheets come back without their apostrophe; XLSX cells are typed text and need none).
#[tokio::test]
async fn the_failed_rows_file_dropped_again_with_the_fault_fixed_stores_the_original_values() {
    let stack = Stack::start().await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let header = ["Email", "Phone", "Department", "Last Name", "RoleName"];
    let values = ["+1-415-555-0100", "-", "@home"];
    for (kind, email) in [("csv", "csv-loop@acme.example.com"), ("xlsx", "xlsx-loop@acme.example.com")] {
        let row = vec![email.to_string(), values[0].into(), values[1].into(), values[2].into(), "learner".into()];
        let rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>(), row];
        let bytes = if kind == "csv" { tests::rows_to_csv(&rows) } else { tests::xlsx_bytes("Roster", &rows) };
        let key = stack.drop_file("acme", None, &format!("loop.{kind}"), bytes).await;
        let job = stack.wait_job("acme", &key, WAIT).await;
        let failed_key = stack.summary(&job).await.failed_rows_key.expect("a failed-rows file");
        let failed = stack.get(&failed_key).await.unwrap();
        // Fix the role only, the way a user would in the file they were sent.
        let again = if kind == "csv" {
            String::from_utf8(failed).unwrap().replace(",learner,", ",Learner,").into_bytes()
        } else {
            let mut rows = parse_workbook(&failed).remove(0).1;
            rows[1][4] = "Learner".into();
            tests::xlsx_bytes("Roster", &rows)
        };
        let key = stack.drop_file("acme", None, &format!("loop-fixed.{kind}"), again).await;
        let job = stack.wait_job("acme", &key, WAIT).await;
        assert_eq!((job.state, job.succeeded), (JobState::Completed, 1), "{kind}");
        let user = stack.svc.directory.user("acme", email).await.unwrap().expect("created");
        let f = &user.fields;
        assert_eq!(
            (f.phone.as_deref(), f.department.as_deref(), f.last_name.as_deref()),
            (Some(values[0]), Some(values[1]), Some(values[2])),
            "{kind}"
        );
    }
    stack.shutdown().await;
}

/// A chunk no retry can apply (here: damaged after ingest wrote it) stops its job at once,
/// FAILED with one email that says which rows were and were not applied, instead of three
/// attempts into the dead-letter queue and hours of silence until the deadline sweep.
#[tokio::test]
async fn a_chunk_no_retry_can_apply_stops_the_job_with_an_email_of_what_was_applied() {
    let stack = Stack::start_manual().await;
    let mut tenant = stack.tenant("acme");
    tenant.chunk_size = Some(1);
    stack.put_tenant(&tenant).await;
    let file = tests::csv_text(&[&["Email"], &["ann@acme.example.com"], &["bob@acme.example.com"]]);
    let key = stack.drop_file("acme", None, "half.csv", file).await;
    let mut damaged = false;
    // Until the job ends, not until a quiet second: S3 notifications may reach the queue late.
    let deadline = std::time::Instant::now() + WAIT;
    while stack.ended_job("acme", &key).await.is_none() {
        assert!(std::time::Instant::now() < deadline, "the job did not end within {WAIT:?}");
        let events = stack.take_events().await;
        for obj in events {
            // Once: the damaging write is itself an event for the same key.
            if obj.key.ends_with("p1-000001.jsonl") && !damaged {
                damaged = true;
                stack.svc.store.put(&obj.key, b"{\"row\":3,\"act".to_vec(), "application/x-ndjson").await.unwrap();
            }
            // Returns Ok: nothing for Lambda to retry.
            shared::route::dispatch(&stack.svc, &obj).await.unwrap();
        }
    }
    let job = stack.wait_job("acme", &key, Duration::from_secs(5)).await;
    // The good chunk may arrive before the damaged one or after it (chunks are uploaded in
    // parallel): the email says which, and agrees with the directory. After it, the good chunk
    // was handed to apply and not recorded when the job stopped: not confirmed (a chunk cut off
    // mid-way may have written rows), never called applied.
    let ann_applied = stack.svc.directory.user("acme", "ann@acme.example.com").await.unwrap().is_some();
    let says = if ann_applied { "1 applied, 1 not applied" } else { "0 applied, 1 not applied, 1 not confirmed" };
    let body = one_email(&stack.admin_email(), &job, JobState::Failed, says).await;
    assert!(body.contains("stopped"), "{body}");
    assert!(stack.svc.directory.user("acme", "bob@acme.example.com").await.unwrap().is_none(), "the damaged chunk applied nothing");
    stack.shutdown().await;
}

/// A tenant whose stored settings no longer parse (a field this deployment does not know, as a
/// newer CLI's `tenant put` may write): ingest failed, its rejection read the tenant again and
/// failed the same way, and the file went to the dead-letter queue with no email. The
/// deployment's default admins are now told.
#[tokio::test]
async fn a_file_for_a_tenant_whose_settings_cannot_be_read_is_answered_to_the_default_admins() {
    use aws_sdk_dynamodb::types::AttributeValue as Av;
    let ops = format!("ops-{}@example.com", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    let ops_for_config = ops.clone();
    let stack = Stack::start_with(move |c| c.default_admins = vec![ops_for_config]).await;
    let (pk, sk) = shared::adapters::dynamo::tenant_key("newer");
    let doc = r#"{"id":"newer","admin_emails":["admin@newer.example.com"],"a_setting_from_a_newer_version":true}"#;
    stack
        .aws
        .dynamodb
        .put_item()
        .table_name(&stack.config.directory_table)
        .item("pk", Av::S(pk))
        .item("sk", Av::S(sk))
        .item("kind", Av::S("tenant".into()))
        .item("doc", Av::S(doc.into()))
        .send()
        .await
        .unwrap();
    assert!(stack.svc.directory.tenant("newer").await.is_err(), "the settings do not parse");
    let csv = tests::csv_text(&[&["Email"], &["ann@newer.example.com"]]);
    stack.svc.store.put("incoming/newer/roster.csv", csv, "text/csv").await.unwrap();
    let job = stack.wait_job("newer", "incoming/newer/roster.csv", WAIT).await;
    let body = one_email(&ops, &job, JobState::Rejected, "was rejected").await;
    assert!(body.contains("could not be processed"), "{body}");
    assert!(mail_to("admin@newer.example.com").is_empty());
    stack.shutdown().await;
}
