#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! The `rosterdrop` binary run as a process: offline validation, bad input, exit codes, and the
//! template round trip against the local stack (template -> fill -> validate -> submit -> status -> results).

use assert_cmd::Command;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tests::Stack;

fn rosterdrop() -> Command {
    let mut cmd = Command::cargo_bin("rosterdrop").expect("binary built");
    cmd.env_remove("RUST_LOG").env_remove("COLUMNS").env("NO_COLOR", "1");
    cmd
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rosterdrop-cli-{}", uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn uuid_like() -> String {
    format!("{}-{:?}", std::process::id(), std::thread::current().id()).replace(['(', ')'], "")
}

fn stack_env(cmd: &mut Command, stack: &Stack) {
    cmd.env("ROSTERDROP_BUCKET", &stack.config.bucket)
        .env("ROSTERDROP_DIRECTORY_TABLE", &stack.config.directory_table)
        .env("ROSTERDROP_JOBS_TABLE", &stack.config.jobs_table);
}

/// Compare with a stored snapshot; `UPDATE_SNAPSHOTS=1` rewrites it.
fn snapshot(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots").join(name);
    if std::env::var("UPDATE_SNAPSHOTS").is_ok() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(actual, expected, "snapshot {name} differs (UPDATE_SNAPSHOTS=1 to accept)");
}

#[test]
fn validate_offline_lists_row_column_and_fix_and_exits_1() {
    let file = tmp("roster.csv");
    std::fs::write(
        &file,
        "Email,First Name,Action,Shoe\nann@x.example.com,Ann,,1\nbad@@x,Bob,,\nann@x.example.com,Ann2,,\ncy@x.example.com,Cy,Explode,\n",
    )
    .unwrap();
    let out = rosterdrop().arg("validate").arg(&file).assert().code(1).get_output().stdout.clone();
    let text = String::from_utf8(out).unwrap().replace(file.to_str().unwrap(), "roster.csv");
    snapshot("validate-offline.txt", &text);
}

/// Ids no job or tenant can have are bad input, exit 2, before anything is asked of the stack: a
/// 5,000-character job id or a 3,000-character tenant id reached DynamoDB, was refused there, and
/// was reported as "is the local stack running?" (exit 3). Endpoints point at a closed port here.
#[test]
fn ids_no_job_or_tenant_can_have_are_bad_input() {
    let long_job = "x".repeat(5_000);
    let long_tenant = "t".repeat(3_000);
    let cases: [&[&str]; 7] = [
        &["status", &long_job],
        &["results", "not-a-job"],
        &["approve", "123"],
        &["status", "--tenant", &long_tenant],
        &["tenant", "get", ""],
        &["invites", "--tenant", "acme/../x"],
        &["status", "--tenant", "acme", "--limit", "0"],
    ];
    for args in cases {
        let out = rosterdrop()
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
            .env("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:9")
            .args(args)
            .assert()
            .code(2)
            .get_output()
            .stderr
            .clone();
        let err = String::from_utf8(out).unwrap();
        assert!(!err.contains("make up") && (err.contains("is not a") || err.contains("not in 1..=1000")), "{args:?}: {err}");
    }
}

/// A table pasted from a spreadsheet (tab-separated, CRLF, a quoted cell with a tab inside) or as
/// CSV validates like a file; a paste without its header row, or nothing at all, is one line and
/// exit 2.
#[test]
fn validate_reads_a_pasted_table_from_standard_input() {
    let tsv = "Email\tFirst Name\tDepartment\r\nann@x.example.com\tAnn\t\"R&D\tLabs\"\r\nbad@@x\tBob\t\r\n";
    let out = rosterdrop().args(["validate", "-", "--json"]).write_stdin(tsv).assert().code(1).get_output().stdout.clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!((v["format"].as_str(), v["rows"].as_u64(), v["failed"].as_u64()), (Some("TSV"), Some(2), Some(1)), "{v}");
    assert!(v["file"].as_str().unwrap().starts_with("pasted-") && v["file"].as_str().unwrap().ends_with(".tsv"));
    let out =
        rosterdrop().args(["validate", "-", "--json"]).write_stdin("Email,First Name\nann@x.example.com,\"Ann, Jr\"\n").assert().code(0);
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!((v["format"].as_str(), v["valid"].as_u64()), (Some("CSV"), Some(1)));
    for (paste, says) in [
        ("ann@x.example.com\tAnn\r\n", "the first row holds an email address (column A), so it is a row of data, not the column names"),
        ("", "nothing was pasted"),
        (" \r\n\t\n", "nothing was pasted"),
    ] {
        let out = rosterdrop().args(["validate", "-"]).write_stdin(paste).assert().code(2).get_output().stderr.clone();
        let err = String::from_utf8(out).unwrap();
        assert!(err.contains(says) && err.trim().lines().count() == 1, "{paste:?}: {err}");
        // Asked for JSON, a failure is JSON on stdout too.
        let out = rosterdrop().args(["validate", "-", "--json"]).write_stdin(paste).assert().code(2).get_output().stdout.clone();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{paste:?}: {e}: {out:?}"));
        assert!(v["error"].as_str().is_some_and(|e| e.contains(says)) || v["rejected"].is_string(), "{v}");
    }
}

#[test]
fn validate_json_is_machine_readable() {
    let file = tmp("ok.csv");
    std::fs::write(&file, "Email\nann@x.example.com\n").unwrap();
    let out = rosterdrop().args(["validate", "--json"]).arg(&file).assert().code(0).get_output().stdout.clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!((v["rows"].as_u64(), v["failed"].as_u64(), v["offline"].as_bool()), (Some(1), Some(0), Some(true)));
}

#[test]
fn bad_input_gets_one_line_and_exit_2_never_a_panic() {
    let missing = rosterdrop().args(["validate", "/nonexistent/roster.csv"]).assert().code(2).get_output().clone();
    let err = String::from_utf8(missing.stderr).unwrap();
    assert_eq!(err, "error: cannot read /nonexistent/roster.csv: no such file\n");

    let rejected = tmp("nocol.csv");
    std::fs::write(&rejected, "Name\nAnn\n").unwrap();
    let out = rosterdrop().arg("validate").arg(&rejected).assert().code(2).get_output().clone();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("would be rejected: the required column Email is missing") && err.lines().count() == 1, "{err}");

    let bad_tenant = tmp("tenant.json");
    std::fs::write(&bad_tenant, r#"{"id": "Acme Corp", "admin_emails": ["a@acme.example.com"]}"#).unwrap();
    let out = rosterdrop()
        .args(["tenant", "put", "--file"])
        .arg(&bad_tenant)
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .assert()
        .code(2)
        .get_output()
        .clone();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("tenant id \"Acme Corp\" must be 1-64 characters"), "{err}");

    let out = rosterdrop().args(["submit", "x.csv"]).assert().code(2).get_output().clone();
    assert!(String::from_utf8(out.stderr).unwrap().contains("--tenant"), "clap names the missing argument");
}

/// Each allocation bomb of `tests/fixtures/bad/`, validated under a 512 MB address-space limit:
/// one line and exit 2, never `memory allocation of N bytes failed` (an abort no handler sees).
#[test]
fn decoding_bombs_are_refused_in_one_line_under_a_512_mb_address_space() {
    let bin = assert_cmd::cargo::cargo_bin("rosterdrop");
    let bad = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/bad");
    for (file, says) in [
        ("sst-count-bomb.xlsx", "shared-string table says it holds 100000000000000 strings"),
        ("far-column.xlsx", "cell AAAAAAA3, outside the largest sheet"),
        ("ods-dense-bomb.ods", "the ODS file's sheets span 82,001,920 cells"),
        ("ods-spaces-bomb.ods", "the ODS file's cells hold 3814 MB of text"),
        ("fuzz-ods-repeated-rows.ods", "the ODS file's sheets span 1,048,576 cells"),
        ("fuzz-xls-far-cells.xls", "the XLS file's sheets span 10,049,588 cells"),
        ("fuzz-xls-sector-chain-loop.xls", "container is damaged"),
    ] {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg("ulimit -v 524288 && exec \"$0\" validate \"$1\"")
            .arg(&bin)
            .arg(bad.join(file))
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{file}: {err}");
        assert!(err.contains(says) && err.lines().count() == 1, "{file}: {err}");
    }
}

/// `validate` held every cell and operation of the file: 1.5 KB a row, 1.5 GB for a million
/// rows on a support laptop. It reads as the upload does, row by row: 400,000 rows (31 MB) are
/// checked under a 256 MB address space, a duplicate and a bad row among them named.
#[test]
fn validate_checks_a_large_file_row_by_row_in_little_memory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.csv");
    let mut text = String::from("Email,FirstName,LastName,Department,Group,Phone\n");
    for i in 0..400_000 {
        text += &format!("user{i}@example.com,First{i},Last{i},Dept {},Team {};All,+1 555 {i:07}\n", i % 50, i % 7);
    }
    text += "user7@example.com,Again,Dup,,,\nnot-an-address,Bad,Row,,,\n";
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 262144 && exec \"$0\" validate --json \"$1\"")
        .arg(assert_cmd::cargo::cargo_bin("rosterdrop"))
        .arg(&path)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((report["rows"].as_u64(), report["valid"].as_u64(), report["failed"].as_u64()), (Some(400_002), Some(400_000), Some(2)));
    let problems: Vec<&str> = report["problems"].as_array().unwrap().iter().map(|p| p["row"].as_str().unwrap()).collect();
    assert_eq!(problems, ["row 400002", "row 400003"]);
    // A pipe (`<(gunzip -c r.csv.gz)`, `/dev/stdin`) cannot be read twice: it is kept first.
    let small = dir.path().join("small.csv");
    std::fs::write(&small, "Email,FirstName\nann@example.com,Ann\nnope,Bob\n").unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("cat \"$1\" | \"$0\" validate --json /dev/stdin")
        .arg(assert_cmd::cargo::cargo_bin("rosterdrop"))
        .arg(&small)
        .output()
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!((report["valid"].as_u64(), report["failed"].as_u64()), (Some(1), Some(1)));
}

/// `rosterdrop validate big.csv | head -1` panicked on the broken pipe (exit 101, a panic
/// message on stderr); it now ends quietly, as a program killed by SIGPIPE (141).
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let file = tmp("many.csv");
    std::fs::write(&file, (0..3000).fold(String::from("Email\n"), |t, i| t + &format!("bad{i}\n"))).unwrap();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg("\"$0\" validate \"$1\" | head -1 >/dev/null; exit ${PIPESTATUS[0]}")
        .arg(assert_cmd::cargo::cargo_bin("rosterdrop"))
        .arg(&file)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(141), "{err}");
}

#[test]
fn no_stack_running_exits_3_with_what_to_do() {
    let out = rosterdrop()
        .args(["tenant", "list"])
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:9")
        .env("ROSTERDROP_SDK_MAX_ATTEMPTS", "1")
        .assert()
        .code(3)
        .get_output()
        .clone();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err, "error: cannot reach dynamodb (Query failed); is the local stack running? start it with `make up`\n");
}

/// Fill the template's data sheet with rows (by column name), keeping its other sheets.
fn fill_template(template: &Path, rows: &[Vec<(&str, &str)>]) -> Vec<u8> {
    use calamine::Reader;
    let mut book = calamine::open_workbook_auto(template).unwrap();
    let mut wb = rust_xlsxwriter::Workbook::new();
    for name in book.sheet_names() {
        let range = book.worksheet_range(&name).unwrap();
        let grid: Vec<Vec<String>> = range.rows().map(|r| r.iter().map(|c| c.to_string()).collect()).collect();
        let ws = wb.add_worksheet();
        ws.set_name(&name).unwrap();
        for (r, row) in grid.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                ws.write_string(r as u32, c as u16, v).unwrap();
            }
        }
        if name == "Roster" {
            let header = &grid[0];
            for (r, values) in rows.iter().enumerate() {
                for (col, v) in values {
                    let c = header.iter().position(|h| h == col).unwrap_or_else(|| panic!("template has no {col}"));
                    ws.write_string(r as u32 + 1, c as u16, *v).unwrap();
                }
            }
        }
    }
    wb.save_to_buffer().unwrap()
}

// Multi-threaded: the CLI runs as a blocking child process while this test's runner delivers events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_round_trip_fill_validate_submit_status_results() {
    let stack = Stack::start().await;
    let tenant_file = tmp("tenant.toml");
    std::fs::write(
        &tenant_file,
        format!(
            r#"id = "roundtrip"
admin_emails = ["{}"]
roles = ["Learner", "Manager"]
admin_roles = ["Admin"]
products = ["LMS", "Video"]
notify_started = false

[[attributes]]
name = "Region"
type = "one_of"
values = ["EMEA", "APAC"]
"#,
            stack.admin_email()
        ),
    )
    .unwrap();
    let mut put = rosterdrop();
    stack_env(&mut put, &stack);
    put.args(["tenant", "put", "--file"]).arg(&tenant_file).assert().code(0).stdout("tenant roundtrip saved\n");
    // A sender SES could never send as is refused at once, not on every email of the tenant later.
    let outside = tmp("outside.json");
    std::fs::write(
        &outside,
        format!(r#"{{"id": "outside", "admin_emails": ["{}"], "sender": "hr@acme.example.com"}}"#, stack.admin_email()),
    )
    .unwrap();
    let mut put = rosterdrop();
    stack_env(&mut put, &stack);
    let out = put.args(["tenant", "put", "--file"]).arg(&outside).assert().code(2).get_output().clone();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("outside the deployment's verified SES identity \"rosterdrop@example.com\"") && err.lines().count() == 1, "{err}");

    let template = tmp("template.xlsx");
    let mut cmd = rosterdrop();
    stack_env(&mut cmd, &stack);
    cmd.args(["template", "--tenant", "roundtrip", "--out"]).arg(&template).assert().code(0);

    let filled = tmp("filled.xlsx");
    let rows: Vec<Vec<(&str, &str)>> = (0..5)
        .map(|i| {
            vec![
                ("Email", ["a@rt.example.com", "b@rt.example.com", "c@rt.example.com", "d@rt.example.com", "e@rt.example.com"][i]),
                ("FirstName", "Pat"),
                ("RoleName", if i % 2 == 0 { "Learner" } else { "Manager" }),
                ("Products", "LMS;Video"),
                ("Region", "EMEA"),
                ("InviteUser", "FALSE"),
            ]
        })
        .collect();
    std::fs::write(&filled, fill_template(&template, &rows)).unwrap();

    let mut cmd = rosterdrop();
    stack_env(&mut cmd, &stack);
    let out = cmd.args(["validate", "--tenant", "nosuch"]).arg(&filled).assert().code(2).get_output().stderr.clone();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "error: tenant \"nosuch\" does not exist; `rosterdrop tenant list` shows the tenants, `rosterdrop tenant put --file` creates one\n"
    );

    let mut cmd = rosterdrop();
    stack_env(&mut cmd, &stack);
    let out = cmd.args(["validate", "--tenant", "roundtrip"]).arg(&filled).assert().code(0).get_output().stdout.clone();
    assert!(String::from_utf8(out).unwrap().contains("5 rows (XLSX), 5 valid, 0 would fail"));

    let mut cmd = rosterdrop();
    stack_env(&mut cmd, &stack);
    let out = cmd.args(["submit", "--tenant", "roundtrip", "--wait", "--json"]).arg(&filled).assert().code(0).get_output().stdout.clone();
    let summary: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(summary["counts"]["success"], 5, "{summary}");
    let job = summary["job_id"].as_str().unwrap().to_string();
    assert_eq!(stack.svc.directory.user("roundtrip", "c@rt.example.com").await.unwrap().unwrap().fields.attributes["Region"], "EMEA");

    // Pasted from a spreadsheet straight into a submit.
    let mut cmd = rosterdrop();
    stack_env(&mut cmd, &stack);
    let paste = "Email\tFirstName\tRoleName\r\nf@rt.example.com\tFay\tLearner\r\n";
    let out = cmd
        .args(["submit", "-", "--tenant", "roundtrip", "--wait", "--json"])
        .write_stdin(paste)
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let pasted: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(pasted["counts"]["success"], 1, "{pasted}");
    assert!(pasted["file_name"].as_str().unwrap().ends_with(".tsv"), "{pasted}");
    assert_eq!(stack.svc.directory.user("roundtrip", "f@rt.example.com").await.unwrap().unwrap().fields.first_name.as_deref(), Some("Fay"));
    // A paste without its header row is refused before the upload, as `validate -` refuses it
    // (uploaded, it became a REJECTED job that quoted the person's row).
    let mut cmd = rosterdrop();
    stack_env(&mut cmd, &stack);
    let out = cmd.args(["submit", "-", "--tenant", "roundtrip"]).write_stdin("g@rt.example.com\tGus\tLearner\r\n").assert().code(2);
    let err = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(err.contains("the pasted table was not uploaded") && err.contains("column A") && !err.contains("uploaded s3://"), "{err}");

    let mut cmd = rosterdrop();
    stack_env(&mut cmd, &stack);
    let out = cmd.args(["status", "--tenant", "roundtrip", "--json"]).assert().code(0).get_output().stdout.clone();
    let jobs: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let listed = jobs.as_array().unwrap().iter().find(|j| j["id"] == job.as_str()).expect("the job is listed");
    assert_eq!(listed["state"], "COMPLETED");

    let mut cmd = rosterdrop();
    stack_env(&mut cmd, &stack);
    let out = cmd.args(["status", &job]).assert().code(0).get_output().stdout.clone();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("state      COMPLETED") && text.contains("rows       5  succeeded 5  unchanged 0  failed 0"), "{text}");

    let dir = tmp("results");
    let mut cmd = rosterdrop();
    stack_env(&mut cmd, &stack);
    cmd.args(["results", &job, "--out"]).arg(&dir).assert().code(0);
    assert!(dir.join("filled-result.xlsx").exists() && dir.join("summary.json").exists());
    assert!(!dir.join("filled-failed-rows.xlsx").exists(), "nothing failed");

    // Undo, the way support does it: one line, then the undo job runs (its own email).
    let run = |args: &[&str], code: i32| {
        let mut cmd = rosterdrop();
        stack_env(&mut cmd, &stack);
        let out = cmd.args(args).assert().code(code).get_output().clone();
        (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    let (out, _) = run(&["undo", &job], 0);
    assert!(out.starts_with(&format!("undo of job {job} started as job {}", shared::undo::undo_job_id(&job))), "{out}");
    // Bad input: one line each, exit 2, nothing changed.
    for (args, says) in [
        (vec!["undo", job.as_str()], "was undone already"),
        (vec!["undo", job.as_str(), "--tenant", "globex"], "belongs to another tenant"),
        (vec!["approve", "00000000-0000-4000-8000-000000000000"], "no job 00000000-0000-4000-8000-000000000000"),
        (vec!["discard", job.as_str()], "is COMPLETED, not held"),
    ] {
        let (_, err) = run(&args, 2);
        assert!(err.contains(says) && err.trim().lines().count() == 1, "{args:?}: {err}");
    }
    stack.shutdown().await;
}

/// Users that existed before the tenant had a licence pool are counted into it by the repair
/// command, so the pool holds exactly from then on.
#[tokio::test]
async fn recount_licences_sets_the_pool_to_the_active_users() {
    let stack = Stack::start().await;
    let mut tenant = stack.tenant("acme");
    stack.put_tenant(&tenant).await;
    stack
        .run_csv("acme", None, "early.csv", &[&["Email"], &["a@acme.example.com"], &["b@acme.example.com"], &["c@acme.example.com"]])
        .await;
    tenant.licences = Some(10);
    stack.put_tenant(&tenant).await;
    assert_eq!(stack.svc.directory.licences_used("acme", None).await.unwrap(), 0, "created before the pool: not counted");
    let mut cmd = rosterdrop();
    stack_env(&mut cmd, &stack);
    cmd.args(["tenant", "recount-licences", "acme"]).assert().code(0).stdout("tenant acme: licences used 0 -> 3 (active users)\n");
    assert_eq!(stack.svc.directory.licences_used("acme", None).await.unwrap(), 3);

    // While a file of the tenant is being applied its licences are in flight: refused, unless --force.
    let open = shared::model::Job::received("open-job", "acme", "incoming/acme/x.csv", "x.csv", None, chrono::Utc::now().to_rfc3339());
    stack.svc.jobs.create_or_get(&open).await.unwrap();
    let mut cmd = rosterdrop();
    stack_env(&mut cmd, &stack);
    let out = cmd.args(["tenant", "recount-licences", "acme"]).assert().code(2).get_output().clone();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("1 file(s) still being applied (open-job)") && err.contains("--force"), "{err}");
    let mut cmd = rosterdrop();
    stack_env(&mut cmd, &stack);
    cmd.args(["tenant", "recount-licences", "acme", "--force"]).assert().code(0);
    stack.shutdown().await;
}

/// `submit --wait` on a file the tenant's holds stop: it says the job is HELD, why, and the
/// commands that decide it, and exits 4 at once. It waited out its timeout in silence (30
/// minutes by default), then said the stack could not be reached (exit 3).
// Multi-threaded: the CLI runs as a blocking child process while this test's runner delivers events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_stops_at_a_held_job_naming_what_decides_it() {
    let stack = Stack::start().await;
    let mut tenant = stack.tenant("acme");
    tenant.holds.min_users = 1;
    stack.put_tenant(&tenant).await;
    stack.run_csv("acme", None, "first.csv", &[&["Email"], &["a@acme.example.com"], &["b@acme.example.com"]]).await;
    // Without --wait, the job the upload starts is named (nothing was printed, with --json neither).
    let more = tmp("more.csv");
    std::fs::write(&more, "Email\nc@acme.example.com\n").unwrap();
    let mut cmd = rosterdrop();
    stack_env(&mut cmd, &stack);
    let out =
        cmd.env("ROSTERDROP_AWS", "0").args(["submit", "--tenant", "ACME", "--json"]).arg(&more).assert().code(0).get_output().clone();
    let said: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let job = stack.wait_job("acme", said["key"].as_str().unwrap(), std::time::Duration::from_secs(60)).await;
    assert_eq!(said["job"].as_str(), Some(job.id.as_str()), "{said}");
    let mut cmd = rosterdrop();
    stack_env(&mut cmd, &stack);
    let err = cmd.args(["status", &job.id, "--tenant", "globex"]).assert().code(2).get_output().stderr.clone();
    assert!(String::from_utf8(err).unwrap().contains("belongs to another tenant, not globex"));
    let file = tmp("leaver.csv");
    std::fs::write(&file, "Email,Action\na@acme.example.com,Delete\n").unwrap();
    let mut cmd = rosterdrop();
    stack_env(&mut cmd, &stack);
    let started = std::time::Instant::now();
    let out = cmd.args(["submit", "--tenant", "acme", "--wait", "--timeout", "60"]).arg(&file).assert().code(4).get_output().clone();
    assert!(started.elapsed() < std::time::Duration::from_secs(50), "stopped at HELD, not at the timeout");
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(said.contains("is HELD for approval (would delete or disable 1 of 3 active users"), "{said}");
    assert!(said.contains("`rosterdrop approve ") && said.contains("`rosterdrop discard "), "{said}");
    // Its status counts what would happen: nothing was applied.
    let job = stack.svc.jobs.recent("acme", 5).await.unwrap().into_iter().find(|j| j.state == shared::model::JobState::Held).unwrap();
    let mut cmd = rosterdrop();
    stack_env(&mut cmd, &stack);
    let status = String::from_utf8(cmd.args(["status", &job.id]).assert().code(0).get_output().stdout.clone()).unwrap();
    assert!(status.contains("would succeed 1  would fail 0  skipped 0  (nothing applied)") && !status.contains(" succeeded "), "{status}");
    stack.shutdown().await;
}

/// Configuring a pool with `tenant put` for a tenant that already has users starts the count from
/// them: the pool holds exactly from its first file on, with no repair to remember.
#[tokio::test]
async fn tenant_put_counts_existing_users_into_a_new_pool() {
    let stack = Stack::start().await;
    stack.put_tenant(&stack.tenant("acme")).await;
    stack.run_csv("acme", None, "early.csv", &[&["Email"], &["a@acme.example.com"], &["b@acme.example.com"]]).await;
    let file = tmp("pool.json");
    let tenant = serde_json::json!({ "id": "acme", "admin_emails": [stack.admin_email()], "roles": ["Learner"], "licences": 10 });
    std::fs::write(&file, tenant.to_string()).unwrap();
    let mut put = rosterdrop();
    stack_env(&mut put, &stack);
    put.args(["tenant", "put", "--file"])
        .arg(&file)
        .assert()
        .code(0)
        .stdout("tenant acme saved\nlicences: 2 of 10 in use (counted from the tenant's active users)\n");
    assert_eq!(stack.svc.directory.licences_used("acme", None).await.unwrap(), 2);
    // Saving it again (the pool exists) leaves the count to the pipeline.
    let mut put = rosterdrop();
    stack_env(&mut put, &stack);
    put.args(["tenant", "put", "--file"]).arg(&file).assert().code(0).stdout("tenant acme saved\n");
    stack.shutdown().await;
}

/// Invite delivery tracking end to end: invites sent, SES-shaped events (files) through the
/// invites function's handler against DynamoDB, then `rosterdrop invites` lists each status and
/// writes a roster that, with the bounced address fixed, invites the person again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_lists_bounces_and_complaints_and_writes_a_roster_to_invite_again() {
    let stack = Stack::start().await;
    let mut tenant = stack.tenant("acme");
    tenant.notify_started = false;
    stack.put_tenant(&tenant).await;
    let rows: &[&[&str]] = &[
        &["Email", "FirstName", "InviteUser"],
        &["typo@acme.example.com", "Ty", "TRUE"],
        &["grumpy@acme.example.com", "Gu", "TRUE"],
        &["ok@acme.example.com", "Ok", "TRUE"],
        &["later@acme.example.com", "La", "FALSE"],
    ];
    stack.run_csv("acme", None, "invite.csv", rows).await;
    let now = chrono::Utc::now() + chrono::Duration::seconds(1);
    // The three invites go out: swept here, or by the stack's runner, which sweeps every 2 seconds
    // (due invites are read from an index a moment behind the writes).
    for _ in 0..100 {
        shared::invites::sweep(&stack.svc, now).await.unwrap();
        let list = stack.svc.invites.list("acme").await.unwrap();
        if list.len() == 3 && list.iter().all(|i| i.status == shared::model::InviteStatus::Sent) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let list = stack.svc.invites.list("acme").await.unwrap();
    assert!(list.len() == 3 && list.iter().all(|i| i.status == shared::model::InviteStatus::Sent), "{list:?}");
    for name in ["bounce.json", "complaint.json", "delivery.json", "not-an-invite.json"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/ses").join(name);
        let event: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        shared::monitor::on_event(&stack.svc, event, now).await.unwrap();
    }
    let run = |args: &[&str], code: i32| {
        let mut cmd = rosterdrop();
        stack_env(&mut cmd, &stack);
        let out = cmd.args(args).assert().code(code).get_output().clone();
        (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    // The listing reads an index, which DynamoDB updates a moment after each write.
    let expected = BTreeMap::from([
        ("grumpy@acme.example.com".to_string(), "complained".to_string()),
        ("ok@acme.example.com".to_string(), "delivered".to_string()),
        ("typo@acme.example.com".to_string(), "bounced".to_string()),
    ]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (json, _) = run(&["invites", "--tenant", "acme", "--json"], 0);
        let listed: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
        let status: BTreeMap<String, String> =
            listed.iter().map(|i| (i["email"].as_str().unwrap().to_string(), i["status"].as_str().unwrap().to_string())).collect();
        if status == expected {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status:?}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let (table, _) = run(&["invites", "--tenant", "acme", "--status", "bounced"], 0);
    assert!(table.contains("typo@acme.example.com") && table.contains("550 5.1.1 user unknown") && !table.contains("grumpy"), "{table}");
    let roster = tmp("reinvite.csv");
    let (_, err) = run(&["invites", "--tenant", "acme", "--status", "bounced", "--out", roster.to_str().unwrap()], 0);
    assert!(err.contains("1 invites written"), "{err}");
    let text = std::fs::read_to_string(&roster).unwrap();
    assert!(text.starts_with("Action,Email,NewEmail,FirstName,Status\nInvite,typo@acme.example.com,,Ty,bounced: Permanent"), "{text}");
    let (_, err) = run(&["invites", "--tenant", "acme", "--status", "lost"], 2);
    assert!(err.contains("unknown status \"lost\"") && err.trim().lines().count() == 1, "{err}");
    // The support loop: fix the address in the roster, submit it; the person is moved and invited.
    std::fs::write(&roster, text.replace("typo@acme.example.com,,", "typo@acme.example.com,ty@acme.example.com,")).unwrap();
    let (out, _) = run(&["submit", roster.to_str().unwrap(), "--tenant", "acme", "--wait", "--json"], 0);
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["counts"]["success"], 1, "{summary}");
    // The new invite is listed: pending, or already sent by the runner's sweep (the listing reads
    // an index, which DynamoDB updates a moment after the write).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (json, _) = run(&["invites", "--tenant", "acme", "--json"], 0);
        let listed: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
        let fixed = listed.iter().find(|i| i["email"] == "ty@acme.example.com").map(|i| i["status"].as_str().unwrap().to_string());
        if fixed.as_deref().is_some_and(|s| matches!(s, "pending" | "sending" | "sent")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the new invite is never listed: {json}; submit: {out}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    stack.shutdown().await;
}

/// `rosterdrop cancel JOB` cancels a scheduled file before its time, one line; cancelling it again
/// is refused in one line, exit 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_scheduled_file_before_its_time() {
    let stack = Stack::start().await;
    let mut tenant = stack.tenant("acme");
    tenant.notify_started = false;
    stack.put_tenant(&tenant).await;
    let time = (chrono::Utc::now() + chrono::Duration::hours(3)).format(shared::keys::SCHEDULE_FORMAT).to_string();
    let key = stack.drop_file("acme", Some(&format!("scheduled/{time}")), "later.csv", b"Email\nlater@acme.example.com\n".to_vec()).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let job = loop {
        let jobs = stack.svc.jobs.recent("acme", 10).await.unwrap();
        if let Some(j) = jobs.into_iter().find(|j| j.source_key == key && j.state == shared::model::JobState::Scheduled) {
            break j;
        }
        assert!(std::time::Instant::now() < deadline, "the file was not scheduled");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let run = |args: &[&str], code: i32| {
        let mut cmd = rosterdrop();
        stack_env(&mut cmd, &stack);
        let out = cmd.args(args).assert().code(code).get_output().clone();
        (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    let (out, _) = run(&["cancel", &job.id], 0);
    assert_eq!(out, format!("job {} cancelled: nothing in later.csv was applied\n", job.id));
    let (_, err) = run(&["cancel", &job.id], 2);
    assert!(err.trim().lines().count() == 1, "{err}");
    assert!(stack.svc.directory.user("acme", "later@acme.example.com").await.unwrap().is_none());
    stack.shutdown().await;
}
