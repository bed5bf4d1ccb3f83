#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Nobody gets past their tenant, no file can escalate roles, inject email headers or formulas, and
//! logs never carry raw personal data.

use mail_parser::{MessageParser, MimeHeaders};
use shared::model::JobState;
use std::time::Duration;
use tests::{Stack, parse_csv, wait_mail};

#[tokio::test]
async fn rows_only_ever_touch_the_tenant_named_by_the_object_key() {
    let stack = Stack::start().await;
    stack.put_tenant(&stack.tenant("alpha")).await;
    stack.put_tenant(&stack.tenant("beta")).await;
    stack
        .run_csv(
            "beta",
            None,
            "b.csv",
            &[
                &["Type", "Email", "First Name", "OrgName"],
                &["Org", "", "", "Beta HQ"],
                &["User", "victim@beta.example.com", "Vic", ""],
                &["User", "victim2@beta.example.com", "Val", ""],
            ],
        )
        .await;
    // A file dropped for alpha naming beta's user and organization, and trying a path-like tenant.
    let (_, s, result) = stack
        .run_csv(
            "alpha",
            None,
            "attack.csv",
            &[
                &["Type", "Action", "Email", "First Name", "OrgName"],
                &["User", "Update", "victim@beta.example.com", "Pwned", ""],
                &["User", "Delete", "victim2@beta.example.com", "", ""],
                &["User", "Create", "spy@alpha.example.com", "Spy", "Beta HQ"],
                &["Org", "Delete", "", "", "Beta HQ"],
            ],
        )
        .await;
    let msgs: Vec<&str> = result[1..].iter().map(|r| r[6].as_str()).collect();
    assert_eq!(
        msgs,
        vec![
            "user not found; use Create or Upsert to add it",
            "user not found; use Create or Upsert to add it",
            "organization \"Beta HQ\" does not exist; create it first or add a Type=Org row for it to this file",
            "organization \"Beta HQ\" not found; use Create or Upsert to add it",
        ]
    );
    assert_eq!(s.counts.success, 0);
    let victim = stack.svc.directory.user("beta", "victim@beta.example.com").await.unwrap().expect("beta's user untouched");
    assert_eq!(victim.fields.first_name.as_deref(), Some("Vic"));
    assert!(stack.svc.directory.user("beta", "victim2@beta.example.com").await.unwrap().is_some(), "beta's user not deleted");
    assert!(stack.svc.directory.org_exists("beta", "Beta HQ").await.unwrap());

    // Keys that do not name a valid tenant touch no tenant: they are rejected as nobody's and
    // reported to the default admins (`incoming/Beta/` is beta's own folder, typed with a capital).
    for key in ["incoming/../beta/x.csv", "incoming/beta%2Fx/y.csv", "incoming/x.csv"] {
        stack.svc.store.put(key, b"Email\nnew@beta.example.com\n".to_vec(), "text/csv").await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stack.svc.jobs.recent("beta", 10).await.unwrap().len(), 1, "only beta's own file made a job");
    let nobodys = stack.svc.jobs.recent(shared::ingest::NO_TENANT, 10).await.unwrap();
    assert_eq!(nobodys.len(), 3, "each is answered as nobody's file");
    assert!(nobodys.iter().all(|j| j.state == shared::model::JobState::Rejected), "{nobodys:?}");
    assert!(stack.svc.directory.user("beta", "new@beta.example.com").await.unwrap().is_none());
    stack.shutdown().await;
}

#[tokio::test]
async fn admin_roles_cannot_be_granted_by_create_upsert_or_update() {
    let stack = Stack::start().await;
    stack.put_tenant(&stack.tenant("acme")).await;
    stack.run_csv("acme", None, "seed.csv", &[&["Email", "RoleName"], &["u@acme.example.com", "Learner"]]).await;
    let (_, s, result) = stack
        .run_csv(
            "acme",
            None,
            "escalate.csv",
            &[
                &["Action", "Email", "RoleName"],
                &["Update", "u@acme.example.com", "Admin"],
                &["", "v@acme.example.com", "admin"],
                &["Create", "w@acme.example.com", "ADMIN"],
            ],
        )
        .await;
    assert_eq!(s.counts.failure, 3);
    assert!(result[1..].iter().all(|r| r[4].contains("is an admin role and cannot be assigned by bulk upload")), "{result:?}");
    assert_eq!(stack.svc.directory.user("acme", "u@acme.example.com").await.unwrap().unwrap().fields.role.as_deref(), Some("Learner"));
    assert!(stack.svc.directory.user("acme", "v@acme.example.com").await.unwrap().is_none());
    stack.shutdown().await;
}

#[tokio::test]
async fn file_names_and_cells_cannot_inject_headers_or_html_into_emails() {
    let stack = Stack::start().await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let name = "evil\r\nBcc: thief@evil.example.com\r\nSubject: hi.csv";
    let key = stack.drop_file("acme", None, name, b"Email,First Name\n<script>alert(1)</script>,<b>x</b>\n".to_vec()).await;
    let job = stack.wait_job("acme", &key, Duration::from_secs(60)).await;
    assert_eq!(job.state, JobState::Completed);
    let mails = wait_mail(&stack.admin_email(), 1, Duration::from_secs(10)).await;
    let raw = String::from_utf8_lossy(&mails[0]).to_string();
    let head = raw.split("\r\n\r\n").next().unwrap();
    assert!(!head.lines().any(|l| l.to_ascii_lowercase().starts_with("bcc:")), "{head}");
    assert_eq!(head.lines().filter(|l| l.starts_with("Subject:")).count(), 1, "{head}");
    assert!(tests::mail_to("thief@evil.example.com").is_empty());
    let msg = MessageParser::default().parse(&mails[0]).unwrap();
    let html = msg.body_html(0).unwrap();
    assert!(!html.contains("<script>") && html.contains("&lt;script&gt;"), "{html}");
    assert!(msg.attachments().all(|a| !a.attachment_name().unwrap_or_default().contains('\n')));
    stack.shutdown().await;
}

#[tokio::test]
async fn result_files_never_contain_live_formulas() {
    let stack = Stack::start().await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let evil = ["=HYPERLINK(\"http://evil.example.com\",\"x\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A2)", "\t=1", "\r=1"];
    let mut rows: Vec<Vec<String>> = vec![vec!["Email".into(), "First Name".into(), "Last Name".into(), "Department".into()]];
    for (i, e) in evil.iter().enumerate() {
        rows.push(vec![format!("f{i}@acme.example.com"), e.to_string(), e.to_string(), e.to_string()]);
    }
    rows.push(vec!["=cmd@evil".into(), "=1".into(), "=2".into(), "=3".into()]);
    // CSV in: CSV out, every dangerous cell a formula of one string constant (`="=1"`: a
    // spreadsheet shows the text `=1` and has nothing to run; every quote inside doubled, so
    // none ends the string early) or, where that form cannot hold it, prefixed with an apostrophe.
    let one_string =
        |c: &str| c.len() >= 3 && c.starts_with("=\"") && c.ends_with('"') && !c[2..c.len() - 1].replace("\"\"", "").contains('"');
    let key = stack.drop_file("acme", None, "f.csv", tests::rows_to_csv(&rows)).await;
    let job = stack.wait_job("acme", &key, Duration::from_secs(60)).await;
    let s = stack.summary(&job).await;
    for file in [s.result_key.as_deref().unwrap(), s.failed_rows_key.as_deref().unwrap()] {
        let cells = parse_csv(&stack.get(file).await.unwrap());
        for cell in cells.iter().flatten() {
            assert!(!cell.starts_with(['=', '+', '-', '@', '\t', '\r']) || one_string(cell), "{file}: live cell {cell:?}");
        }
        let flat: Vec<&String> = cells.iter().flatten().collect();
        if Some(file) == s.failed_rows_key.as_deref() {
            assert!(flat.iter().any(|c| c.as_str() == "=\"=cmd@evil\""), "{flat:?}");
            continue;
        }
        assert!(flat.iter().any(|c| c.as_str() == "=\"=HYPERLINK(\"\"http://evil.example.com\"\",\"\"x\"\")\""), "{flat:?}");
        assert!(flat.iter().any(|c| c.as_str() == "'\r=1"), "a line break cannot be in `=\"…\"`: {flat:?}");
    }
    // Spreadsheet in: XLSX out, all cells stored as text, no formula anywhere.
    let key = stack.drop_file("acme", None, "f.xlsx", tests::xlsx_bytes("Roster", &rows)).await;
    let job = stack.wait_job("acme", &key, Duration::from_secs(60)).await;
    let s = stack.summary(&job).await;
    use calamine::Reader;
    let bytes = stack.get(s.result_key.as_deref().unwrap()).await.unwrap();
    let mut wb = calamine::open_workbook_auto_from_rs(std::io::Cursor::new(bytes)).unwrap();
    let sheet = wb.sheet_names()[0].clone();
    let formulas = wb.worksheet_formula(&sheet).unwrap();
    assert!(formulas.cells().all(|(_, _, f)| f.is_empty()), "no formula cells in the result workbook");
    let values = wb.worksheet_range(&sheet).unwrap();
    assert!(values.cells().any(|(_, _, v)| matches!(v, calamine::Data::String(s) if s.starts_with("=HYPERLINK"))), "kept as text");
    stack.shutdown().await;
}
