#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Job events on LocalStack's EventBridge, received the way a customer would: a rule on the
//! default bus with an SQS target.

use aws_sdk_sqs::types::QueueAttributeName;
use std::collections::BTreeMap;
use std::time::Duration;
use tests::{Stack, csv_text};

/// A queue receiving, through a rule on the default bus, the events of one tenant.
async fn subscribe(stack: &Stack, tenant: &str) -> String {
    let sqs = &stack.aws.sqs;
    let url = sqs.create_queue().queue_name(format!("events-{tenant}")).send().await.unwrap().queue_url.unwrap();
    let attrs = sqs.get_queue_attributes().queue_url(&url).attribute_names(QueueAttributeName::QueueArn).send().await.unwrap();
    let arn = attrs.attributes.unwrap()[&QueueAttributeName::QueueArn].clone();
    let events = &stack.aws.events;
    let pattern = serde_json::json!({ "source": ["rosterdrop"], "detail": { "tenant": [tenant] } });
    events.put_rule().name(format!("rosterdrop-{tenant}")).event_pattern(pattern.to_string()).send().await.unwrap();
    let target = aws_sdk_eventbridge::types::Target::builder().id("queue").arn(arn).build().unwrap();
    events.put_targets().rule(format!("rosterdrop-{tenant}")).targets(target).send().await.unwrap();
    url
}

/// Every event the queue holds after `settle` without a new one.
async fn drain(stack: &Stack, url: &str, settle: Duration) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut quiet_since = std::time::Instant::now();
    while quiet_since.elapsed() < settle {
        let got = stack.aws.sqs.receive_message().queue_url(url).max_number_of_messages(10).wait_time_seconds(1).send().await.unwrap();
        for m in got.messages() {
            out.push(serde_json::from_str(m.body().unwrap()).unwrap());
            stack.aws.sqs.delete_message().queue_url(url).receipt_handle(m.receipt_handle().unwrap()).send().await.unwrap();
            quiet_since = std::time::Instant::now();
        }
    }
    out
}

fn by_state(events: &[serde_json::Value], job: &str) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for e in events.iter().filter(|e| e["detail"]["job"] == job) {
        *n.entry(e["detail-type"].as_str().unwrap().to_string()).or_default() += 1;
    }
    n
}

/// A completed job and a rejected file: exactly one event per state each job entered, from
/// source `rosterdrop`, with tenant, job, file, counts and result keys; every S3 event of the
/// job delivered again publishes nothing more.
#[tokio::test]
async fn a_rule_with_an_sqs_target_receives_exactly_one_event_per_state_change() {
    let stack = Stack::start().await;
    let tenant_id = format!("ev-{}", stack.tag.to_lowercase().replace(|c: char| !c.is_ascii_alphanumeric(), ""));
    let mut tenant = stack.tenant(&tenant_id);
    tenant.notify_started = false;
    stack.put_tenant(&tenant).await;
    let url = subscribe(&stack, &tenant_id).await;

    let (job, summary, _) = stack.run_csv(&tenant_id, None, "roster.csv", &[&["Email"], &["ann@acme.example.com"], &["bad"]]).await;
    assert_eq!((summary.counts.success, summary.counts.failure), (1, 1));
    let key = stack.drop_file(&tenant_id, None, "bad.csv", csv_text(&[&["Name"], &["x"]])).await;
    let rejected = stack.wait_job(&tenant_id, &key, Duration::from_secs(60)).await;
    let events = drain(&stack, &url, Duration::from_secs(3)).await;
    let once = |states: &[&str]| states.iter().map(|s| (s.to_string(), 1)).collect::<BTreeMap<_, _>>();
    assert_eq!(by_state(&events, &job.id), once(&["Job Applying", "Job Completed", "Job Received"]), "{events:#?}");
    assert_eq!(by_state(&events, &rejected.id), once(&["Job Received", "Job Rejected"]));
    let done = events.iter().find(|e| e["detail"]["job"] == job.id.as_str() && e["detail-type"] == "Job Completed").unwrap();
    assert_eq!(done["source"], "rosterdrop");
    let d = &done["detail"];
    assert_eq!(
        (d["tenant"].as_str(), d["file"].as_str(), d["state"].as_str()),
        (Some(tenant_id.as_str()), Some("roster.csv"), Some("COMPLETED"))
    );
    assert_eq!((d["counts"]["succeeded"].as_u64(), d["counts"]["failed"].as_u64()), (Some(1), Some(1)));
    assert_eq!(d["summary_key"], format!("results/{tenant_id}/{}/summary.json", job.id));

    // S3 delivers at least once: the upload, every chunk and the done marker again.
    let mut again = vec![job.source_key.clone()];
    for prefix in [format!("chunks/{}/", job.id), format!("done/{}", job.id)] {
        again.extend(stack.svc.store.list(&prefix).await.unwrap());
    }
    for key in again {
        // The version the first delivery named: the same upload, not a new one.
        let head = stack.aws.s3.head_object().bucket(&stack.config.bucket).key(&key).send().await.unwrap();
        let obj = shared::event::ObjectRef {
            bucket: stack.config.bucket.clone(),
            key,
            size: None,
            version_id: head.version_id.clone(),
            sequencer: None,
            etag: None,
            event_time: None,
        };
        let _ = shared::route::dispatch(&stack.svc, &obj).await;
    }
    let more = drain(&stack, &url, Duration::from_secs(3)).await;
    assert!(more.is_empty(), "events delivered twice published again: {more:#?}");
    stack.shutdown().await;
}
