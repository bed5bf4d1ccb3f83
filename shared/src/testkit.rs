//! The fast test tier's harness: the stages over the in-memory ports, events delivered by hand
//! (the bucket's notifications are the keys the stages write). No network, no stack.

use crate::adapters::memory::Memory;
use crate::event::ObjectRef;
use crate::model::{Job, Tenant};
use crate::report::Summary;
use crate::{Config, Services, keys};
use std::collections::HashSet;

pub struct Kit {
    pub svc: Services,
    pub mem: Memory,
    /// Keys already delivered (as S3 would notify each once).
    delivered: HashSet<String>,
    uploads: u32,
}

impl Kit {
    /// Tenant `acme` (admin `admin@acme.example.com`, roles Learner and Manager, no "started"
    /// email), small chunks.
    pub async fn new(tweak: impl FnOnce(&mut Tenant)) -> Kit {
        let mut config = Config::local();
        config.chunk_size = 4;
        let (svc, mem) = Services::memory(config);
        let mut tenant = Tenant::new("acme", vec!["admin@acme.example.com".into()]);
        tenant.roles = vec!["Learner".into(), "Manager".into()];
        // Only the result email, unless a test asks for "processing started" too.
        tenant.notify_started = false;
        tweak(&mut tenant);
        svc.directory.put_tenant(&tenant).await.expect("tenant");
        Kit { svc, mem, delivered: HashSet::new(), uploads: 0 }
    }

    /// Upload a file to `incoming/acme/<name>` and deliver every event it causes until the
    /// pipeline is quiet; the job.
    pub async fn run(&mut self, name: &str, body: impl AsRef<[u8]>) -> Job {
        let obj = self.upload(name, body);
        self.deliver(&obj).await;
        self.settle().await;
        self.svc.jobs.get(&crate::ingest::job_id(&obj)).await.expect("get").expect("job")
    }

    /// Upload without delivering: the event, to deliver later.
    pub fn upload(&mut self, name: &str, body: impl AsRef<[u8]>) -> ObjectRef {
        let body = body.as_ref();
        let key = format!("incoming/acme/{name}");
        let version = self.mem.store.put_version(&key, body.to_vec());
        self.delivered.insert(key.clone());
        self.uploads += 1;
        // Uploads are ordered as S3 would order them: each a millisecond after the last.
        let at = chrono::DateTime::from_timestamp_millis(1_800_000_000_000 + i64::from(self.uploads)).expect("time");
        ObjectRef {
            bucket: "memory".into(),
            key,
            size: Some(body.len() as i64),
            version_id: Some(version),
            sequencer: None,
            etag: None,
            event_time: Some(at),
        }
    }

    pub async fn deliver(&self, obj: &ObjectRef) {
        crate::route::dispatch(&self.svc, obj).await.expect("handler succeeds");
    }

    /// Chunk events not delivered yet, without delivering them.
    pub async fn pending_chunks(&mut self) -> Vec<ObjectRef> {
        let keys = self.svc.store.list(keys::CHUNKS).await.expect("list");
        keys.into_iter().filter(|k| self.delivered.insert(k.clone())).map(|k| Self::obj(&k)).collect()
    }

    pub fn obj(key: &str) -> ObjectRef {
        ObjectRef { bucket: "memory".into(), key: key.into(), size: None, version_id: None, sequencer: None, etag: None, event_time: None }
    }

    /// Deliver chunk and done events until none is new.
    pub async fn settle(&mut self) {
        loop {
            let mut fresh = Vec::new();
            for prefix in [keys::CHUNKS, keys::DONE] {
                for key in self.svc.store.list(prefix).await.expect("list") {
                    if self.delivered.insert(key.clone()) {
                        fresh.push(key);
                    }
                }
            }
            if fresh.is_empty() {
                return;
            }
            for key in fresh {
                self.deliver(&Self::obj(&key)).await;
            }
        }
    }

    pub async fn summary(&self, job: &Job) -> Summary {
        let key = format!("{}summary.json", keys::results_prefix(&job.tenant, &job.id));
        serde_json::from_slice(&self.svc.store.get(&key).await.expect("get").expect("summary.json")).expect("summary")
    }

    /// The result file's rows (header first).
    pub async fn result(&self, job: &Job) -> Vec<Vec<String>> {
        let key = self.summary(job).await.result_key.expect("a result file");
        let bytes = self.svc.store.get(&key).await.expect("get").expect("result file");
        csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(bytes.as_slice())
            .records()
            .map(|r| r.expect("csv").iter().map(str::to_string).collect())
            .collect()
    }

    /// (Status, Message) of every row of the result file (a row may carry values right of the
    /// header, after our columns: found by the header).
    pub async fn outcomes(&self, job: &Job) -> Vec<(String, String)> {
        let result = self.result(job).await;
        let status = result[0].len() - 4;
        result[1..].iter().map(|r| (r[status].clone(), r[status + 1].clone())).collect()
    }
    /// The last email's subject and text part, decoded.
    pub fn last_mail(&self) -> String {
        let raw = self.mem.mailer.sent().last().expect("a mail").2.clone();
        let msg = mail_parser::MessageParser::default().parse(&raw).expect("mime");
        format!("{}\n{}", msg.subject().unwrap_or_default(), msg.body_text(0).unwrap_or_default())
    }

    /// The Changes column of every row of the result file.
    pub async fn changes(&self, job: &Job) -> Vec<String> {
        self.result(job).await[1..].iter().map(|r| r[r.len() - 2].clone()).collect()
    }
    /// The UserId column of every row of the result file.
    pub async fn user_ids(&self, job: &Job) -> Vec<String> {
        self.result(job).await[1..].iter().map(|r| r[r.len() - 1].clone()).collect()
    }
}
