#![allow(clippy::unwrap_used)] // a tool: a failed unwrap is a clear failure
//! Writes the emails a tenant's admins get for the demo roster (processing started, the result
//! with its problems, a rejection), as HTML and text, by running the real stages over the
//! in-memory ports: `cargo run -p tests --example sample_emails -- DIR`. `scripts/render-emails.sh`
//! renders the HTML with headless Chromium into PNGs (docs/emails/).

use shared::Services;
use shared::event::ObjectRef;
use std::collections::HashSet;
use std::path::Path;

async fn run(svc: &Services, mem: &shared::adapters::memory::Memory, key: &str, body: Vec<u8>, at: i64) {
    let version = mem.store.put_version(key, body);
    let upload = ObjectRef {
        bucket: "memory".into(),
        key: key.into(),
        size: None,
        version_id: Some(version),
        sequencer: None,
        etag: None,
        event_time: chrono::DateTime::from_timestamp_millis(at),
    };
    shared::route::dispatch(svc, &upload).await.unwrap();
    let mut seen = HashSet::new();
    loop {
        let mut fresh = Vec::new();
        for prefix in [shared::keys::CHUNKS, shared::keys::DONE] {
            fresh.extend(svc.store.list(prefix).await.unwrap().into_iter().filter(|k| seen.insert(k.clone())));
        }
        if fresh.is_empty() {
            return;
        }
        for key in fresh {
            let obj = ObjectRef { key, version_id: None, event_time: None, ..upload.clone() };
            shared::route::dispatch(svc, &obj).await.unwrap();
        }
    }
}

#[tokio::main]
async fn main() {
    let out = std::env::args().nth(1).unwrap_or_else(|| "target/emails".into());
    std::fs::create_dir_all(&out).unwrap();
    let (svc, mem) = Services::memory(shared::Config::local());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut tenant: shared::model::Tenant = serde_json::from_slice(&std::fs::read(root.join("samples/demo-tenant.json")).unwrap()).unwrap();
    tenant.branding.product_name = Some("Demo Learning".into());
    tenant.branding.colour = Some("#0f766e".into());
    tenant.notify_started = true;
    svc.directory.put_tenant(&tenant).await.unwrap();
    let roster = std::fs::read(root.join("samples/demo-roster.xlsx")).unwrap();
    run(&svc, &mem, "incoming/demo/demo-roster.xlsx", roster, 1_800_000_000_000).await;
    run(&svc, &mem, "incoming/demo/contacts.csv", b"Name,Phone\nAnn,555\n".to_vec(), 1_800_000_000_001).await;
    for (i, (_, _, raw)) in mem.mailer.sent().into_iter().enumerate() {
        let msg = mail_parser::MessageParser::default().parse(&raw).unwrap();
        let name = ["started", "result", "rejected"].get(i).copied().unwrap_or("other");
        std::fs::write(format!("{out}/{name}.html"), msg.body_html(0).unwrap().as_bytes()).unwrap();
        std::fs::write(format!("{out}/{name}.txt"), msg.body_text(0).unwrap().as_bytes()).unwrap();
        println!("{out}/{name}.html: {}", msg.subject().unwrap_or_default());
    }
}
