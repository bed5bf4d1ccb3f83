#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Logs of a full job (ingest, apply, finalize, invites; successes, failures, a rejection) never
//! contain a raw email address or a name from the file.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tests::Stack;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_job_logs_no_raw_email_or_name() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter("debug,aws=warn,hyper=warn,h2=warn,rustls=warn")
        .with_writer(move || writer.clone())
        .init();

    let stack = Stack::start().await;
    let mut tenant = stack.tenant("acme");
    tenant.notify_started = true;
    tenant.licences = Some(3);
    stack.put_tenant(&tenant).await;
    let secret_emails =
        ["zelda.quintero@acme.example.com", "yusuf.oyelaran@acme.example.com", "xiomara.p@acme.example.com", "wanjiru.k@acme.example.com"];
    let file = format!(
        "Email,First Name,Last Name,RoleName,InviteUser,Supervisor\n{},Zelda,Quintero,Learner,TRUE,\n{},Yusuf,Oyelaran,Admin,,\n{},Xiomara,Pennywhistle,Learner,,{}\n{},Wanjiru,Kamau,Learner,,nobody.there@acme.example.com\nnot-an-email@@x,Bogdan,Ilyushin,,,\n",
        secret_emails[0], secret_emails[1], secret_emails[2], secret_emails[0], secret_emails[3]
    );
    let mail_before = tests::mail_to(secret_emails[0]).len();
    let key = stack.drop_file("acme", None, "people.csv", file.into_bytes()).await;
    stack.wait_job("acme", &key, Duration::from_secs(60)).await;
    let key = stack.drop_file("acme", None, "broken.csv", b"Name\nVeronika Szabo\n".to_vec()).await;
    stack.wait_job("acme", &key, Duration::from_secs(60)).await;
    // The addresses are fixed, so a stack that ran this test before holds their mail already:
    // wait for one more than it had.
    tests::wait_mail(secret_emails[0], mail_before + 1, Duration::from_secs(20)).await;
    stack.shutdown().await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("job completed") && logs.contains("file rejected") && logs.contains("invites sent"),
        "the job was logged:\n{logs}"
    );
    for secret in secret_emails.iter().chain(&["nobody.there@acme.example.com", "not-an-email@@x"]) {
        assert!(!logs.contains(secret), "raw email {secret} in logs");
    }
    for name in
        ["Zelda", "Quintero", "Yusuf", "Oyelaran", "Xiomara", "Pennywhistle", "Wanjiru", "Kamau", "Bogdan", "Ilyushin", "Veronika", "Szabo"]
    {
        assert!(!logs.contains(name), "name {name} in logs");
    }
}
