#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! OneRoster CSV bundles dropped as a district's student information system exports them, end to
//! end against the local stack: every user with its type, school and associations; delta bundles
//! updating and deleting; the replace safeguard holding a bulk bundle that drops a school; bad
//! bundles refused with nothing applied.

use aws_sdk_dynamodb::types::AttributeValue;
use shared::model::{Holds, JobState, UserStatus};
use std::io::{Cursor, Read, Write};
use std::time::Duration;
use tests::Stack;

/// The files of a fixture bundle (`tests/fixtures/oneroster/<name>/`) as (name, bytes).
fn fixture(name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/oneroster").join(name);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    files.sort();
    files
}

fn edit(files: &mut [(String, Vec<u8>)], name: &str, f: impl Fn(String) -> String) {
    let file = files.iter_mut().find(|(n, _)| n == name).unwrap();
    file.1 = f(String::from_utf8(file.1.clone()).unwrap()).into_bytes();
}

fn zip(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, bytes) in files {
        w.start_file(name.as_str(), zip::write::SimpleFileOptions::default()).unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn unzip(bytes: &[u8]) -> Vec<(String, String)> {
    let mut z = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
    (0..z.len())
        .map(|i| {
            let mut f = z.by_index(i).unwrap();
            let mut text = String::new();
            f.read_to_string(&mut text).unwrap();
            (f.name().unwrap().to_string(), text)
        })
        .collect()
}

async fn district(stack: &Stack, id: &str, holds: Holds) {
    let mut tenant = stack.tenant(id);
    tenant.holds = holds;
    stack.put_tenant(&tenant).await;
}

async fn drop_bundle(stack: &Stack, tenant: &str, mode: Option<&str>, name: &str, files: &[(String, Vec<u8>)]) -> shared::model::Job {
    let key = stack.drop_file(tenant, mode, name, zip(files)).await;
    stack.wait_job(tenant, &key, Duration::from_secs(120)).await
}

async fn user(stack: &Stack, tenant: &str, email: &str) -> shared::model::User {
    stack.svc.directory.user(tenant, email).await.unwrap().unwrap_or_else(|| panic!("{email} not in the directory"))
}

/// A raw attribute of an organization's item.
async fn org_attribute(stack: &Stack, tenant: &str, name: &str, attr: &str) -> Option<String> {
    let (pk, sk) = shared::adapters::dynamo::org_key(tenant, name);
    let item = stack
        .aws
        .dynamodb
        .get_item()
        .table_name(&stack.config.directory_table)
        .key("pk", AttributeValue::S(pk))
        .key("sk", AttributeValue::S(sk))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .unwrap_or_else(|| panic!("organization {name} not stored"));
    item.get(attr).and_then(|v| v.as_s().ok()).cloned()
}

#[tokio::test]
async fn a_1_1_district_bundle_creates_every_user_with_its_type_school_and_associations() {
    let stack = Stack::start().await;
    district(&stack, "riverbend", Holds::off()).await;
    let job = drop_bundle(&stack, "riverbend", None, "riverbend-oneroster.zip", &fixture("district-1.1")).await;
    assert_eq!(job.state, JobState::Completed);
    let summary = stack.summary(&job).await;
    assert_eq!((summary.mode.as_str(), summary.counts.success, summary.counts.failure), ("replace", 11, 0), "{summary:?}");
    assert!(summary.warnings.iter().any(|w| w.contains("academicsessions.csv ignored")), "{:?}", summary.warnings);

    let ava = user(&stack, "riverbend", "ava.lin@students.riverbend.example.org").await;
    assert_eq!(ava.fields.user_type.as_deref(), Some("Student"));
    assert_eq!(ava.fields.org.as_deref(), Some("Alder Elementary"));
    assert_eq!(ava.fields.external_id.as_deref(), Some("usr-st1"));
    assert_eq!(ava.fields.associations.get("parent").map(String::as_str), Some("pat.nguyen@home.example.net"));
    assert_eq!(ava.fields.associations.get("instructor").map(String::as_str), Some("mara.ortiz@riverbend.example.org"));
    // A student without email: its username, its guardian and its teacher.
    let sam = user(&stack, "riverbend", "user:sbrooks").await;
    assert_eq!(sam.fields.associations.get("parent").map(String::as_str), Some("lee.brooks@home.example.net"));
    assert_eq!(sam.fields.associations.get("instructor").map(String::as_str), Some("ken.walsh@riverbend.example.org"));
    assert_eq!(user(&stack, "riverbend", "ken.walsh@riverbend.example.org").await.fields.user_type.as_deref(), Some("Instructor"));
    assert_eq!(user(&stack, "riverbend", "pat.nguyen@home.example.net").await.fields.user_type.as_deref(), Some("Parent"));
    // Schools keep their district as parent, and their sourcedId.
    assert_eq!(org_attribute(&stack, "riverbend", "Birch Middle", "parent").await.as_deref(), Some("Riverbend Unified"));
    assert_eq!(org_attribute(&stack, "riverbend", "Birch Middle", "external_id").await.as_deref(), Some("org-s2"));

    // The result answers in the bundle's terms: a sheet per file, each record on its line.
    let result = tests::parse_workbook(&stack.get(summary.result_key.as_ref().unwrap()).await.unwrap());
    let users = &result.iter().find(|(name, _)| name == "users.csv").unwrap().1;
    let status = users[0].iter().position(|h| h == "Status").unwrap();
    assert_eq!(users.len(), 9, "header and eight records");
    assert_eq!(users[5][4], "usr-st1", "line 6 of users.csv is row 6 of its sheet");
    assert_eq!(users[5][status], "Created");
    let records = users[0].iter().position(|h| h == "OneRosterRecords").unwrap();
    assert_eq!(users[5][records], "users.csv line 6; enrollments.csv lines 2, 3");
    // Enrollments and classes have their rows too, each saying what it was read into.
    let sheets: Vec<&str> = result.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(sheets, ["orgs.csv", "users.csv", "classes.csv", "enrollments.csv"]);
    let enrollments = &result[3].1;
    assert_eq!(enrollments.len(), 7, "header and six records");
    assert_eq!(
        enrollments[2][1..3],
        ["Read".to_string(), "student \"usr-st1\" in class \"cls-1\": read with users.csv line 6".to_string()]
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn a_1_2_bundle_takes_roles_from_roles_csv_and_gives_each_student_the_primary_teacher() {
    let stack = Stack::start().await;
    district(&stack, "cedar", Holds::off()).await;
    let job = drop_bundle(&stack, "cedar", None, "cedar.zip", &fixture("district-1.2")).await;
    let summary = stack.summary(&job).await;
    assert_eq!((summary.counts.success, summary.counts.failure), (10, 0), "{summary:?}");
    let emma = user(&stack, "cedar", "emma.baker@students.cedar.example.edu").await;
    assert_eq!((emma.fields.user_type.as_deref(), emma.fields.org.as_deref()), (Some("Student"), Some("East Cedar School")));
    assert_eq!(emma.fields.associations.get("instructor").map(String::as_str), Some("ravi.patel@cedar.example.edu"));
    let tiago = user(&stack, "cedar", "user:tsilva").await;
    assert_eq!(tiago.fields.associations.get("parent").map(String::as_str), Some("joao.silva@family.example.com"));
    assert!(summary.warnings.iter().any(|w| w.contains("2 students have several teachers")), "{:?}", summary.warnings);
    stack.shutdown().await;
}

#[tokio::test]
async fn a_delta_bundle_updates_deletes_and_finds_schools_and_guardians_of_the_first_bundle() {
    let stack = Stack::start().await;
    district(&stack, "riverbend", Holds::off()).await;
    drop_bundle(&stack, "riverbend", None, "full.zip", &fixture("district-1.1")).await;

    // Tonight's changes: Ava's new family name, Omar and Sam leave (their records as a delta sends
    // them: sourcedId and status only), a new student at Birch with Lee Brooks as guardian.
    let delta = vec![
        (
            "manifest.csv".to_string(),
            b"propertyName,value\nmanifest.version,1.0\noneroster.version,1.1\nfile.users,delta\nfile.orgs,absent\nfile.enrollments,absent\nfile.classes,absent\n".to_vec(),
        ),
        (
            "users.csv".to_string(),
            concat!(
                "sourcedId,status,dateLastModified,enabledUser,orgSourcedIds,role,username,userIds,givenName,familyName,middleName,identifier,email,sms,phone,agentSourcedIds,grades,password\n",
                "usr-st1,active,2026-12-01,true,org-s1,student,alin,,Ava,Lin-Park,,S-3001,ava.lin@students.riverbend.example.org,,,usr-g1,03,\n",
                "usr-st3,tobedeleted,2026-12-01,,,,,,,,,,,,,,,\n",
                "usr-st4,tobedeleted,2026-12-01,,,,,,,,,,,,,,,\n",
                "usr-st5,active,2026-12-01,true,org-s2,student,zkhan,,Zara,Khan,,S-7003,zara.khan@students.riverbend.example.org,,,usr-g2,07,\n",
            )
            .as_bytes()
            .to_vec(),
        ),
    ];
    let job = drop_bundle(&stack, "riverbend", None, "tonight.zip", &delta).await;
    let summary = stack.summary(&job).await;
    assert_eq!((summary.mode.as_str(), summary.counts.success, summary.counts.failure), ("upsert", 4, 0), "{summary:?}");
    assert_eq!(summary.disabled_not_in_file, 0, "a delta disables nobody");
    assert!(
        stack.svc.directory.user("riverbend", "user:sbrooks").await.unwrap().is_none(),
        "a student known by username, deleted by sourcedId"
    );
    assert_eq!(user(&stack, "riverbend", "ava.lin@students.riverbend.example.org").await.fields.last_name.as_deref(), Some("Lin-Park"));
    assert!(stack.svc.directory.user("riverbend", "omar.haddad@students.riverbend.example.org").await.unwrap().is_none(), "deleted");
    let zara = user(&stack, "riverbend", "zara.khan@students.riverbend.example.org").await;
    assert_eq!(zara.fields.org.as_deref(), Some("Birch Middle"), "found by the sourcedId the first bundle recorded");
    assert_eq!(zara.fields.associations.get("parent").map(String::as_str), Some("lee.brooks@home.example.net"));
    assert_eq!(user(&stack, "riverbend", "user:jnguyen").await.status, UserStatus::Active, "the rest untouched");
    stack.shutdown().await;
}

#[tokio::test]
async fn a_bulk_bundle_that_drops_a_schools_students_is_held_by_the_safeguard() {
    let stack = Stack::start().await;
    district(&stack, "riverbend", Holds { min_users: 2, ..Holds::default() }).await;
    let first = drop_bundle(&stack, "riverbend", None, "monday.zip", &fixture("district-1.1")).await;
    assert_eq!(stack.summary(&first).await.counts.success, 11);
    let mut files = fixture("district-1.1");
    edit(&mut files, "users.csv", |t| t.lines().filter(|l| !l.contains(",org-s2,student,")).map(|l| format!("{l}\n")).collect());
    edit(&mut files, "enrollments.csv", |t| {
        t.lines().filter(|l| !l.contains("usr-st3") && !l.contains("usr-st4")).map(|l| format!("{l}\n")).collect()
    });
    let key = stack.drop_file("riverbend", None, "tuesday.zip", zip(&files)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let held = loop {
        let job = stack.svc.jobs.recent("riverbend", 10).await.unwrap().into_iter().find(|j| j.source_key == key);
        if let Some(job) = job.filter(|j| j.state == JobState::Held) {
            break job;
        }
        assert!(std::time::Instant::now() < deadline, "never held");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let why = held.message.unwrap();
    assert!(why.starts_with("would delete or disable 2 of 8 active users (25%)"), "{why}");
    assert_eq!(user(&stack, "riverbend", "user:sbrooks").await.status, UserStatus::Active, "nothing applied while held");
    stack.shutdown().await;
}

#[tokio::test]
async fn bad_bundles_are_refused_naming_the_problem_and_nothing_is_applied() {
    // 8 MB of function memory: a bundle's files may unzip to about 1 MB together.
    let stack = Stack::start_with(|c| c.memory_mb = Some(8)).await;
    district(&stack, "riverbend", Holds::off()).await;
    let without = |name: &'static str| move |f: &mut Vec<(String, Vec<u8>)>| f.retain(|(n, _)| n != name);
    type Change = Box<dyn Fn(&mut Vec<(String, Vec<u8>)>)>;
    let cases: Vec<(&str, Change, &str)> = vec![
        ("no-manifest.zip", Box::new(without("manifest.csv")), "OneRoster files but no manifest.csv"),
        ("missing-file.zip", Box::new(without("enrollments.csv")), "says enrollments.csv is bulk, but the bundle has no enrollments.csv"),
        (
            "version.zip",
            Box::new(|f: &mut Vec<(String, Vec<u8>)>| {
                edit(f, "manifest.csv", |t| t.replace("oneroster.version,1.1", "oneroster.version,2.0"))
            }),
            "reads OneRoster 1.1 and 1.2",
        ),
        (
            "nested.zip",
            Box::new(|f: &mut Vec<(String, Vec<u8>)>| f.push(("more.zip".into(), zip(&fixture("district-1.1"))))),
            "holds another archive",
        ),
        (
            "traversal.zip",
            Box::new(|f: &mut Vec<(String, Vec<u8>)>| f.push(("../../etc/users.csv".into(), b"a\n1\n".to_vec()))),
            "a path that leaves the bundle",
        ),
        (
            "oversize.zip",
            Box::new(|f: &mut Vec<(String, Vec<u8>)>| f.push(("demographics.csv".into(), vec![b'x'; 2 << 20]))),
            "unzips to 2 MB",
        ),
        (
            "not-a-bundle.zip",
            Box::new(|f: &mut Vec<(String, Vec<u8>)>| *f = vec![("notes.txt".into(), b"hello".to_vec())]),
            "neither a workbook",
        ),
    ];
    for (name, change, says) in cases {
        let mut files = fixture("district-1.1");
        change(&mut files);
        let job = drop_bundle(&stack, "riverbend", None, name, &files).await;
        assert_eq!(job.state, JobState::Rejected, "{name}");
        let reason = stack.summary(&job).await.reason.unwrap_or_default();
        assert!(reason.contains(says), "{name}: {reason}");
    }
    assert!(stack.svc.directory.list_users("riverbend").await.unwrap().is_empty(), "nothing applied from a refused bundle");

    // Record-level problems fail their rows, naming the file, line and id; the failed records come back as a bundle.
    let mut files = fixture("district-1.1");
    edit(&mut files, "users.csv", |t| {
        t.replace("usr-t2,,,true", "usr-t1,,,true").replace("org-s2,student,ohaddad", "org-s404,student,ohaddad")
    });
    let job = drop_bundle(&stack, "riverbend", None, "records.zip", &files).await;
    let summary = stack.summary(&job).await;
    assert_eq!((summary.counts.success, summary.counts.failure), (9, 2), "{summary:?}");
    let problems: Vec<&str> = summary.problems.iter().map(|p| p.message.as_str()).collect();
    assert!(problems.iter().any(|m| m.contains("duplicate sourcedId \"usr-t1\": users.csv line 2 already has it")), "{problems:?}");
    assert!(problems.iter().any(|m| m.contains("\"org-s404\" is in no file of this bundle")), "{problems:?}");
    let failed = stack.get(summary.failed_rows_key.as_ref().unwrap()).await.unwrap();
    let failed = unzip(&failed);
    let users = &failed.iter().find(|(n, _)| n == "users.csv").unwrap().1;
    assert_eq!(users.lines().count(), 3, "header and the two failed records: {users}");
    assert!(failed.iter().any(|(n, t)| n == "manifest.csv" && t.contains("file.users,delta")), "{failed:?}");
    stack.shutdown().await;
}
