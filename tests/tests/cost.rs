#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! What a row costs the directory: a roster uploaded again unchanged writes nothing.

use std::collections::BTreeMap;
use std::time::Duration;
use tests::{Stack, parse_csv, rows_to_csv};

const WAIT: Duration = Duration::from_secs(120);

/// A file creating 120 new users costs the directory table exactly 120 write units (one item
/// under 1 KB each, no index entry), measured by DynamoDB's consumed capacity over the whole job;
/// dropped again unchanged, it costs none.
#[tokio::test]
async fn a_created_user_costs_one_write_unit_and_an_unchanged_one_none() {
    let capacity = tests::capacity::Capacity::default();
    let stack = Stack::start_manual_with(aws_smithy_runtime_api::client::interceptors::SharedInterceptor::new(capacity.clone())).await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let mut rows = vec![vec!["Email", "First Name", "Last Name", "Department", "Phone", "Group"].into_iter().map(String::from).collect()];
    rows.extend((0..120).map(|i| {
        vec![
            format!("person.{i}@acme.example.com"),
            format!("First{i}"),
            format!("Last{i}"),
            "Sales".into(),
            format!("+1 415 555 {i:04}"),
            "Team A;Team B".into(),
        ]
    }));
    let table = stack.config.directory_table.clone();
    for (name, expected) in [("new.csv", 120.0), ("again.csv", 0.0)] {
        let before = capacity.table_units(&table);
        let key = stack.drop_file("acme", None, name, rows_to_csv(&rows)).await;
        stack.pump(1).await;
        let job = stack.wait_job("acme", &key, WAIT).await;
        assert_eq!(job.succeeded, 120, "{name}");
        let (writes, reads) = capacity.table_units(&table);
        let (writes, reads) = (writes - before.0, reads - before.1);
        eprintln!("{name}: {writes} write units, {reads} read units on the directory table for 120 rows");
        assert_eq!(writes, expected, "{name}: write units on the directory table");
    }
    stack.shutdown().await;
}

/// Every user item's write stamp and time, as stored.
async fn stamps(stack: &Stack) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    let mut pages =
        stack.aws.dynamodb.scan().table_name(&stack.config.directory_table).consistent_read(true).into_paginator().items().send();
    while let Some(item) = pages.next().await {
        let item = item.unwrap();
        let s = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
        if s("pk").starts_with("U#") {
            out.insert(format!("{} {}", s("pk"), s("sk")), (s("last_write"), s("updated_at")));
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

/// Users live in 16 partitions per tenant; replace mode lists them by querying each. With users
/// in every partition, a replace file naming half of them disables exactly the other half.
#[tokio::test]
async fn replace_mode_finds_absent_users_in_every_partition() {
    let stack = Stack::start().await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let users: Vec<String> = (0..96).map(|i| format!("member{i}@acme.example.com")).collect();
    let shards: std::collections::BTreeSet<u32> = users.iter().map(|u| shared::adapters::dynamo::user_shard(u)).collect();
    assert_eq!(shards.len(), shared::adapters::dynamo::USER_SHARDS as usize, "users in every partition");
    let mut rows = vec![vec!["Email".to_string()]];
    rows.extend(users.iter().map(|u| vec![u.clone()]));
    let key = stack.drop_file("acme", None, "all.csv", rows_to_csv(&rows)).await;
    assert_eq!(stack.wait_job("acme", &key, WAIT).await.succeeded, 96);
    let kept: Vec<Vec<String>> = rows.iter().take(1 + 48).cloned().collect();
    // The safeguard asks for confirmation past 20% of users disabled: the tenant allows half.
    let mut tenant = stack.tenant("acme");
    tenant.replace_threshold_percent = Some(60);
    stack.put_tenant(&tenant).await;
    let key = stack.drop_file("acme", Some("replace"), "half.csv", rows_to_csv(&kept)).await;
    let job = stack.wait_job("acme", &key, WAIT).await;
    assert_eq!(stack.summary(&job).await.disabled_not_in_file, 48, "{job:?}");
    let listed = stack.svc.directory.list_users("acme").await.unwrap();
    let disabled: Vec<&String> = listed.iter().filter(|(_, s)| *s == shared::model::UserStatus::Disabled).map(|(u, _)| u).collect();
    assert_eq!(disabled.len(), 48);
    assert!(disabled.iter().all(|u| users[48..].contains(u)), "exactly the users absent from the file");
    stack.shutdown().await;
}
