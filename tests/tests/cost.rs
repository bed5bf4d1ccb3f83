#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! What a row costs the directory: a roster uploaded again unchanged writes nothing.

use std::collections::BTreeMap;
use std::time::Duration;
use tests::{Stack, parse_csv, rows_to_csv};

const WAIT: Duration = Duration::from_secs(120);

/// Every user item's write stamp and time, as stored.
async fn stamps(stack: &Stack) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    let mut pages =
        stack.aws.dynamodb.scan().table_name(&stack.config.directory_table).consistent_read(true).into_paginator().items().send();
    while let Some(item) = pages.next().await {
        let item = item.unwrap();
        let s = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
        if s("pk").starts_with("U#") {
            out.insert(s("pk"), (s("last_write"), s("updated_at")));
        }
    }
    out
}

/// The nightly full sync: the same 120 users (three chunks) dropped again, as an upsert file and
/// as a replace file. No user item is written again (their stamps and times stay as they were),
/// every row reports `unchanged`, and the summary counts them apart.
#[tokio::test]
async fn a_roster_dropped_again_unchanged_writes_no_directory_item() {
    let stack = Stack::start().await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let mut rows = vec![vec!["Email".to_string(), "First Name".to_string(), "Department".to_string()]];
    rows.extend((0..120).map(|i| vec![format!("u{i}@acme.example.com"), format!("User {i}"), "Sales".to_string()]));
    let key = stack.drop_file("acme", None, "nightly.csv", rows_to_csv(&rows)).await;
    assert_eq!(stack.wait_job("acme", &key, WAIT).await.succeeded, 120);
    let before = stamps(&stack).await;
    assert_eq!(before.len(), 120);

    for (mode, name) in [(None, "nightly-2.csv"), (Some("replace"), "nightly-3.csv")] {
        let key = stack.drop_file("acme", mode, name, rows_to_csv(&rows)).await;
        let job = stack.wait_job("acme", &key, WAIT).await;
        let summary = stack.summary(&job).await;
        assert_eq!((summary.counts.success, summary.counts.unchanged, summary.counts.failure), (120, 120, 0), "{mode:?}");
        let result = parse_csv(&stack.get(summary.result_key.as_deref().unwrap()).await.unwrap());
        assert!(result[1..].iter().all(|r| r[r.len() - 2] == "Success" && r[r.len() - 1] == "unchanged"), "{mode:?}");
        assert_eq!(stamps(&stack).await, before, "{mode:?}: no user item written again");
    }
    stack.shutdown().await;
}
