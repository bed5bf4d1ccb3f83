#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Test harness for end-to-end tests against the local stack (LocalStack for S3, SQS and SES,
//! DynamoDB Local). Every test gets its own bucket, tables and queue, and its own in-process
//! runner delivering the bucket's real S3 event notifications to the real handlers, so tests run
//! in parallel without seeing each other.

use shared::config::Config;
use shared::local::{self, LocalAws};
use shared::model::{EmailKind, Job, JobState, Tenant};
use shared::report::Summary;
use shared::{Services, keys};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub mod capacity;
pub mod faults;

pub const SES_ENDPOINT: &str = "http://127.0.0.1:4566/_aws/ses";

pub struct Stack {
    pub config: Config,
    pub aws: LocalAws,
    pub svc: Services,
    pub tag: String,
    pub queue_url: String,
    stop: Option<oneshot::Sender<()>>,
    runner: Option<tokio::task::JoinHandle<()>>,
}

impl Stack {
    /// Fresh resources for one test, with a runner delivering events.
    pub async fn start() -> Stack {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Stack {
        Self::build(tweak, true, None).await
    }

    /// Resources but no runner: the test delivers events itself with `pump`.
    pub async fn start_manual() -> Stack {
        Self::build(|_| {}, false, None).await
    }

    /// As `start_manual`, with an SDK interceptor on the clients the handlers use.
    pub async fn start_manual_with(interceptor: aws_smithy_runtime_api::client::interceptors::SharedInterceptor) -> Stack {
        Self::build(|_| {}, false, Some(interceptor)).await
    }

    /// As `start_manual`, with the handlers' DynamoDB and S3 traffic passing through `faults`.
    pub async fn start_manual_faulty(faults: std::sync::Arc<faults::Faults>, tweak: impl FnOnce(&mut Config)) -> Stack {
        let mut stack = Self::build(tweak, false, None).await;
        // The local endpoints are plain HTTP: wrap a plain-HTTP smithy client, whatever the SDK
        // would pick by default.
        let wrap = |_default| faults::client(aws_smithy_http_client::Builder::new().build_http(), faults.clone());
        let aws = LocalAws::connect_custom(&stack.config, None, Some(&wrap)).await;
        stack.svc = aws.services(stack.config.clone());
        stack.aws = aws;
        stack
    }

    /// Everything configurable: config tweaks, an in-process runner or not, an SDK interceptor.
    pub async fn build(
        tweak: impl FnOnce(&mut Config),
        with_runner: bool,
        interceptor: Option<aws_smithy_runtime_api::client::interceptors::SharedInterceptor>,
    ) -> Stack {
        let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
        let mut config = Config::local();
        config.bucket = format!("rd-test-{tag}");
        config.directory_table = format!("rd-{tag}-directory");
        config.jobs_table = format!("rd-{tag}-jobs");
        config.chunk_size = 50;
        tweak(&mut config);
        let aws = LocalAws::connect_with(&config, interceptor).await;
        let queue = format!("rd-{tag}-events");
        let url = local::setup(&config, &aws, &queue).await.expect("local stack reachable (run `make up` first)");
        let svc = aws.services(config.clone());
        if !with_runner {
            return Stack { config, svc, aws, tag, queue_url: url, stop: None, runner: None };
        }
        let (tx, rx) = oneshot::channel::<()>();
        let runner = tokio::spawn(local::run(svc.clone(), aws.sqs.clone(), url.clone(), 8, async move {
            let _ = rx.await;
        }));
        Stack { config, svc, aws, tag, queue_url: url, stop: Some(tx), runner: Some(runner) }
    }

    /// Take the S3 events queued so far (received and deleted), in arrival order within each
    /// batch; empty when the queue stays empty for a second.
    pub async fn take_events(&self) -> Vec<shared::event::ObjectRef> {
        let mut events = Vec::new();
        loop {
            let out = self
                .aws
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .expect("receive");
            let messages = out.messages.unwrap_or_default();
            if messages.is_empty() {
                return events;
            }
            for m in messages {
                if let Some(ev) = shared::event::parse(m.body().unwrap_or_default()) {
                    events.extend(shared::event::objects(&ev));
                }
                let receipt = m.receipt_handle().unwrap_or_default();
                self.aws.sqs.delete_message().queue_url(&self.queue_url).receipt_handle(receipt).send().await.expect("delete");
            }
        }
    }

    /// Deliver the queued S3 events by hand, and those they cause, until none is left: each one
    /// `times` times, newest first (duplicated and out of order). Returns how many deliveries were made.
    pub async fn pump(&self, times: usize) -> usize {
        let mut deliveries = 0;
        loop {
            let events = self.take_events().await;
            if events.is_empty() {
                return deliveries;
            }
            for obj in events.iter().rev() {
                for _ in 0..times {
                    shared::route::dispatch(&self.svc, obj).await.expect("handler succeeds");
                    deliveries += 1;
                }
            }
        }
    }

    /// A tenant whose admin address is unique to this test (to find its mail at /_aws/ses). The
    /// "processing started" email is off so tests count only result emails, unless they turn it on.
    pub fn tenant(&self, id: &str) -> Tenant {
        let mut t = Tenant::new(id, vec![self.admin_email()]);
        t.name = Some(format!("Tenant {id}"));
        t.roles = vec!["Learner".into(), "Manager".into(), "Instructor".into()];
        t.admin_roles = vec!["Admin".into()];
        t.notify_started = false;
        t
    }

    /// Drop a CSV and wait for its job; returns the summary and the result file's rows.
    pub async fn run_csv(&self, tenant: &str, mode: Option<&str>, name: &str, rows: &[&[&str]]) -> (Job, Summary, Vec<Vec<String>>) {
        let key = self.drop_file(tenant, mode, name, csv_text(rows)).await;
        let job = self.wait_job(tenant, &key, Duration::from_secs(120)).await;
        let summary = self.summary(&job).await;
        let result = match &summary.result_key {
            Some(k) => parse_csv(&self.get(k).await.expect("result file")),
            None => Vec::new(),
        };
        (job, summary, result)
    }

    /// Every item of the directory table, attribute by attribute, with what differs between two
    /// runs of the same file replaced: write times by `<time>`, the job id by `<job>` (and the user ids
    /// made from it), TTLs by `<ttl>`.
    /// Two stacks given the same file must hold equal snapshots.
    pub async fn directory_snapshot(&self, job_id: &str) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>> {
        let mut out = std::collections::BTreeMap::new();
        let mut pages =
            self.aws.dynamodb.scan().table_name(&self.config.directory_table).consistent_read(true).into_paginator().items().send();
        let norm = |v: String| v.replace(job_id, "<job>");
        while let Some(item) = pages.next().await {
            let item = item.expect("scan");
            let key = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
            let pk = norm(format!("{} {}", key("pk"), key("sk")));
            let attrs = item
                .into_iter()
                .filter(|(k, _)| k != "pk" && k != "sk")
                .map(|(k, v)| {
                    let v = match k.as_str() {
                        "created_at" | "updated_at" | "at" | "invited_at" => "<time>".to_string(),
                        "ttl" => "<ttl>".to_string(),
                        // The upload's order: its event time.
                        "ord" => "<order>".to_string(),
                        // Made from the creating row's token, which names the job.
                        "user_id" => "<user id>".to_string(),
                        _ => norm(format!("{v:?}")),
                    };
                    (k, v)
                })
                .collect();
            out.insert(pk, attrs);
        }
        out
    }

    pub fn admin_email(&self) -> String {
        format!("admin-{}@example.com", self.tag)
    }

    pub async fn put_tenant(&self, tenant: &Tenant) {
        self.svc.directory.put_tenant(tenant).await.expect("put tenant");
    }

    /// Drop a file as a client admin would; returns its key.
    pub async fn drop_file(&self, tenant: &str, mode: Option<&str>, name: &str, bytes: Vec<u8>) -> String {
        let key = match mode {
            Some(m) => format!("incoming/{tenant}/{m}/{name}"),
            None => format!("incoming/{tenant}/{name}"),
        };
        self.svc.store.put(&key, bytes, "application/octet-stream").await.expect("upload");
        key
    }

    /// Wait until the job for `key` has ended. On a stack without a runner, the events that
    /// arrive meanwhile are delivered once each: see `settle`.
    pub async fn wait_job(&self, tenant: &str, key: &str, timeout: Duration) -> Job {
        if self.runner.is_none() {
            return self.settle(tenant, key, 1, timeout).await.0;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(j) = self.ended_job(tenant, key).await {
                return j;
            }
            if Instant::now() >= deadline {
                panic!("job for {key} did not finish within {timeout:?}: {:?}", self.job_of_key(tenant, key).await);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Deliver events (as `pump`, each `times` times) until the job for `key` has ended; returns
    /// it and the deliveries made. A quiet second does not mean the job is done: S3 notifications
    /// reach the queue asynchronously, and on a loaded machine LocalStack sends some late.
    pub async fn settle(&self, tenant: &str, key: &str, times: usize, timeout: Duration) -> (Job, usize) {
        let deadline = Instant::now() + timeout;
        let mut deliveries = 0;
        loop {
            if let Some(j) = self.ended_job(tenant, key).await {
                return (j, deliveries);
            }
            if Instant::now() >= deadline {
                panic!("job for {key} did not finish within {timeout:?}: {:?}", self.job_of_key(tenant, key).await);
            }
            deliveries += self.pump(times).await;
        }
    }

    /// The newest job for `key`, in whatever state (for a test's failure message).
    pub async fn job_of_key(&self, tenant: &str, key: &str) -> Option<Job> {
        self.svc.jobs.recent(tenant, 100).await.expect("list jobs").into_iter().find(|j| j.source_key == key)
    }

    /// The job for `key`, once it has ended and its answer is on its way. A job apply stopped is
    /// FAILED before its finalize runs and sends the email (or fails and sends the plain one).
    pub async fn ended_job(&self, tenant: &str, key: &str) -> Option<Job> {
        let jobs = self.svc.jobs.recent(tenant, 100).await.expect("list jobs");
        let job = jobs.into_iter().find(|j| j.source_key == key && j.state.is_final())?;
        if job.state != JobState::Failed {
            return Some(job);
        }
        for kind in [EmailKind::Result, EmailKind::Failure] {
            if self.svc.jobs.email_sent(&job.id, kind).await.expect("email claim") {
                return Some(job);
            }
        }
        None
    }

    pub async fn summary(&self, job: &Job) -> Summary {
        let key = format!("{}summary.json", keys::results_prefix(&job.tenant, &job.id));
        let bytes = self.svc.store.get(&key).await.expect("get").expect("summary.json exists");
        serde_json::from_slice(&bytes).expect("summary parses")
    }

    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.svc.store.get(key).await.expect("get object")
    }

    /// Raw MIME messages sent to this test's admin address.
    pub fn mail(&self) -> Vec<Vec<u8>> {
        mail_to(&self.admin_email())
    }

    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(r) = self.runner.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), r).await;
        }
    }
}

/// Every message LocalStack recorded (SES v1 and our SES v2 provider), as JSON.
pub fn ses_messages() -> Vec<serde_json::Value> {
    // Every message of the stack's lifetime comes back, attachments included: far over ureq's
    // default 10 MB after a benchmark has mailed large result files.
    let body =
        ureq::get(SES_ENDPOINT).call().expect("GET /_aws/ses").body_mut().with_config().limit(1 << 30).read_to_string().expect("body");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    v["messages"].as_array().cloned().unwrap_or_default()
}

/// Raw MIME of the messages addressed to `to`.
pub fn mail_to(to: &str) -> Vec<Vec<u8>> {
    ses_messages()
        .into_iter()
        .filter(|m| {
            let dest = &m["Destination"]["ToAddresses"];
            dest.as_array().is_some_and(|a| a.iter().any(|x| x.as_str() == Some(to)))
                || m["RawData"].as_str().is_some_and(|raw| raw_recipients(raw).iter().any(|r| r == to))
        })
        .filter_map(|m| m["RawData"].as_str().map(|s| s.as_bytes().to_vec()))
        .collect()
}

/// The To: addresses of a raw MIME message (raw sends carry no Destination at /_aws/ses).
fn raw_recipients(raw: &str) -> Vec<String> {
    let Some(msg) = mail_parser::MessageParser::default().parse(raw.as_bytes()) else { return Vec::new() };
    msg.to().map(|a| a.iter().filter_map(|x| x.address().map(str::to_string)).collect()).unwrap_or_default()
}

/// Wait until `n` messages reached `to` (mail is recorded synchronously, but the runner is not).
pub async fn wait_mail(to: &str, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    loop {
        let m = mail_to(to);
        if m.len() >= n || Instant::now() > deadline {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Parse a CSV result (BOM tolerated) into rows of cells, header included.
pub fn parse_csv(bytes: &[u8]) -> Vec<Vec<String>> {
    let text = String::from_utf8(bytes.to_vec()).expect("utf-8 result");
    let text = text.trim_start_matches('\u{feff}');
    csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.as_bytes())
        .records()
        .map(|r| r.expect("csv record").iter().map(str::to_string).collect())
        .collect()
}

/// Parse the first sheet of an XLSX result into rows of cells, header included.
pub fn parse_xlsx(bytes: &[u8]) -> Vec<Vec<String>> {
    use calamine::Reader;
    let mut wb = calamine::open_workbook_auto_from_rs(std::io::Cursor::new(bytes.to_vec())).expect("xlsx opens");
    let name = wb.sheet_names()[0].clone();
    let range = wb.worksheet_range(&name).expect("sheet");
    range.rows().map(|r| r.iter().map(shared::ingest::decode::cell_text).collect()).collect()
}

/// Build an XLSX workbook from rows (first row = header), all cells text unless they parse as numbers.
pub fn xlsx_bytes(sheet: &str, rows: &[Vec<String>]) -> Vec<u8> {
    xlsx_workbook(&[(sheet, rows.to_vec())])
}

/// A workbook of several sheets.
pub fn xlsx_workbook(sheets: &[(&str, Vec<Vec<String>>)]) -> Vec<u8> {
    let mut wb = rust_xlsxwriter::Workbook::new();
    for (sheet, rows) in sheets {
        write_sheet(&mut wb, sheet, rows);
    }
    wb.save_to_buffer().expect("xlsx")
}

/// Every sheet of an XLSX result: (name, rows with header).
pub fn parse_workbook(bytes: &[u8]) -> Vec<(String, Vec<Vec<String>>)> {
    use calamine::Reader;
    let mut wb = calamine::open_workbook_auto_from_rs(std::io::Cursor::new(bytes.to_vec())).expect("xlsx opens");
    let names = wb.sheet_names();
    names
        .into_iter()
        .map(|name| {
            let range = wb.worksheet_range(&name).expect("sheet");
            let rows = range.rows().map(|r| r.iter().map(shared::ingest::decode::cell_text).collect()).collect();
            (name, rows)
        })
        .collect()
}

fn write_sheet(wb: &mut rust_xlsxwriter::Workbook, sheet: &str, rows: &[Vec<String>]) {
    let ws = wb.add_worksheet();
    ws.set_name(sheet).expect("sheet name");
    for (r, row) in rows.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            match v.parse::<f64>() {
                Ok(n) if r > 0 && !v.starts_with('+') && !v.starts_with('0') => ws.write_number(r as u32, c as u16, n).map(|_| ()),
                _ => ws.write_string(r as u32, c as u16, v).map(|_| ()),
            }
            .expect("write cell");
        }
    }
}

pub fn csv_text(rows: &[&[&str]]) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.write_record(*r).expect("csv");
    }
    w.into_inner().expect("csv")
}

/// A realistic roster: organizations (listed last, to prove they are applied first), users with
/// about 6% of rows broken in the ways real files are. Returns the rows (header first) and, for
/// each data row, whether it should succeed. Deterministic.
pub fn sample_roster(users: usize) -> (Vec<Vec<String>>, Vec<bool>) {
    const FIRST: &[&str] =
        &["Ana", "Ben", "Chloé", "Dev", "Eitan", "Fatima", "Goran", "Hana", "Ivan", "Jun", "Kofi", "Lena", "Mateo", "Nia", "Omar", "Priya"];
    const LAST: &[&str] = &[
        "Lopez", "Okafor", "Martin", "Patel", "Cohen", "Haddad", "Novak", "Sato", "Petrov", "Kim", "Mensah", "Weber", "Rossi", "Diallo",
        "Aziz", "Rao",
    ];
    const ORGS: &[&str] = &["Riverside Campus", "Hilltop Campus", "Online Academy", "Head Office"];
    const ROLES: &[&str] = &["Learner", "Learner", "Learner", "Manager", "Instructor"];
    const DEPTS: &[&str] = &["Sales", "Support", "Engineering", "Finance"];
    let header = ["Type", "Action", "Email", "First Name", "Last Name", "Phone", "Org", "Role", "Department", "Group"];
    let mut rows = vec![header.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    let mut ok = Vec::new();
    let mut prev_email = String::new();
    for i in 0..users {
        let first = FIRST[i % FIRST.len()];
        let last = LAST[(i / FIRST.len()) % LAST.len()];
        let mut email = format!("{}.{}{}@example.com", first.to_lowercase().replace('é', "e"), last.to_lowercase(), i);
        let mut action = if i % 10 == 0 { "Create" } else { "" }.to_string();
        let mut role = ROLES[i % ROLES.len()].to_string();
        let mut org = ORGS[i % ORGS.len()].to_string();
        let mut good = true;
        if i % 97 == 5 {
            email = format!("{}.{}@@example", first.to_lowercase(), last.to_lowercase());
            good = false;
        } else if i % 89 == 7 {
            role = "learner".into();
            good = false;
        } else if i % 151 == 11 {
            role = "Admin".into();
            good = false;
        } else if i % 113 == 13 && !prev_email.is_empty() {
            email = prev_email.clone();
            good = false;
        } else if i % 131 == 17 {
            org = "Unknown Org".into();
            good = false;
        } else if i % 173 == 19 {
            action = "Promote".into();
            good = false;
        } else if i % 199 == 23 {
            email = String::new();
            good = false;
        }
        if good {
            prev_email = email.clone();
        }
        let phone = format!("415555{:04}", i % 10_000);
        let groups = format!("{};All Staff", DEPTS[i % DEPTS.len()]);
        rows.push(vec!["User".into(), action, email, first.into(), last.into(), phone, org, role, DEPTS[i % DEPTS.len()].into(), groups]);
        ok.push(good);
    }
    for org in ORGS {
        rows.push(vec![
            "Org".into(),
            "Upsert".into(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            org.to_string(),
            String::new(),
            String::new(),
            String::new(),
        ]);
        ok.push(true);
    }
    (rows, ok)
}

pub fn rows_to_csv(rows: &[Vec<String>]) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.write_record(r).expect("csv");
    }
    w.into_inner().expect("csv")
}
