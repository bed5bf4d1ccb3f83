#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! What a row costs the directory: a roster uploaded again unchanged writes nothing.

use shared::model::{Action, RowOp, Target, Tenant, User, UserFields, UserStatus};
use shared::ports::{ContactClaim, Directory, LicenceClaim, Stamp};
use shared::rules::{Attempt, Attempted};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tests::{Stack, parse_csv, rows_to_csv};

const WAIT: Duration = Duration::from_secs(120);

/// A file creating 120 new users costs the directory table exactly 120 write units (one item
/// under 1 KB each, no index entry), measured by DynamoDB's consumed capacity over the whole job;
/// dropped again unchanged, it costs none, and its preview reads at half price.
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
        if name == "again.csv" {
            // The same roster again is a full sync of the tenant (120 updates of 120 active
            // users), which ingest previews for the update hold: the preview reads each user
            // eventually consistent (half a unit; 251.5 units in all when it read consistently),
            // apply consistently (one), then the tenant's and the count's few.
            assert!((120.0 * 1.5..=120.0 * 1.5 + 16.0).contains(&reads), "{name}: {reads} read units on the directory table");
        }
    }
    // Validate mode predicts and writes nothing: its reads are eventual, half a unit a user.
    let before = capacity.table_units(&table);
    let key = stack.drop_file("acme", Some("validate"), "check.csv", rows_to_csv(&rows)).await;
    stack.pump(1).await;
    stack.wait_job("acme", &key, WAIT).await;
    let (writes, reads) = capacity.table_units(&table);
    let (writes, reads) = (writes - before.0, reads - before.1);
    eprintln!("check.csv (validate): {writes} write units, {reads} read units on the directory table for 120 rows");
    assert_eq!(writes, 0.0, "validate writes no directory item");
    assert!(reads <= 120.0 * 0.5 + 5.0, "validate: {reads} read units on the directory table");
    stack.shutdown().await;
}

/// A prediction reads at half price: a validate run of a file keyed by ExternalId reads each
/// user and each id's claim eventually consistent, half a unit each where a consistent read of
/// those small items takes one.
#[tokio::test]
async fn a_validate_run_reads_users_and_their_ids_eventually_consistent() {
    let capacity = tests::capacity::Capacity::default();
    let stack = Stack::start_manual_with(aws_smithy_runtime_api::client::interceptors::SharedInterceptor::new(capacity.clone())).await;
    let mut tenant = stack.tenant("acme");
    tenant.holds = shared::model::Holds::off();
    stack.put_tenant(&tenant).await;
    let mut rows = vec![["ExternalId", "Email", "Department"].map(String::from).to_vec()];
    rows.extend((0..60).map(|i| vec![format!("E{i}"), format!("p{i}@acme.example.com"), "Sales".to_string()]));
    let key = stack.drop_file("acme", None, "seed.csv", rows_to_csv(&rows)).await;
    stack.pump(1).await;
    assert_eq!(stack.wait_job("acme", &key, WAIT).await.succeeded, 60);
    let table = stack.config.directory_table.clone();
    let before = capacity.table_units(&table);
    let key = stack.drop_file("acme", Some("validate"), "check.csv", rows_to_csv(&rows)).await;
    stack.pump(1).await;
    let job = stack.wait_job("acme", &key, WAIT).await;
    assert_eq!(stack.summary(&job).await.counts.unchanged, 60, "every row predicted unchanged");
    let (writes, reads) = capacity.table_units(&table);
    let (writes, reads) = (writes - before.0, reads - before.1);
    eprintln!("validate of 60 rows keyed by ExternalId: {writes} write units, {reads} read units on the directory table");
    assert_eq!(writes, 0.0, "validate writes no directory item");
    assert!(reads <= 60.0 * 0.5 * 2.0 + 5.0, "{reads} read units: users and ids read consistently?");
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
        assert!(result[1..].iter().all(|r| r[r.len() - 4] == "Unchanged" && r[r.len() - 3] == "unchanged"), "{mode:?}");
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
    tenant.holds.remove_percent = 60;
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

/// Counts the queries of a tenant's user partitions (`U#<tenant>#<shard>`): one pass over the
/// tenant's users is a query (a page) per partition.
#[derive(Debug, Clone, Default)]
struct UserQueries(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl aws_smithy_runtime_api::client::interceptors::Intercept for UserQueries {
    fn name(&self) -> &'static str {
        "user-partition-queries"
    }
    fn read_before_transmit(
        &self,
        ctx: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<'_>,
        _: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let req = ctx.request();
        let body = req.body().bytes().unwrap_or_default();
        if req.headers().get("x-amz-target") == Some("DynamoDB_20120810.Query") && body.windows(8).any(|w| w == b"\"U#acme#") {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }
}

impl UserQueries {
    fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// `rows` dropped as a file for tenant `acme` and run to its end: the job and the user-partition
/// queries it made.
async fn run_counting(stack: &Stack, queries: &UserQueries, name: &str, rows: Vec<Vec<String>>) -> (shared::model::Job, usize) {
    let before = queries.count();
    let key = stack.drop_file("acme", None, name, rows_to_csv(&rows)).await;
    stack.pump(1).await;
    let job = stack.wait_job("acme", &key, WAIT).await;
    (job, queries.count() - before)
}

/// Deleting an organization refuses one that still has users, which needs the tenant's users
/// read (no index is kept for it). A file deleting 40 organizations reads them once, as a file
/// deleting one does, not 40 times: counted per row, a big tenant's restructuring file read
/// every user of the tenant once per organization it deleted.
#[tokio::test]
async fn deleting_many_organizations_reads_the_tenant_s_users_once() {
    let queries = UserQueries::default();
    let stack = Stack::start_manual_with(aws_smithy_runtime_api::client::interceptors::SharedInterceptor::new(queries.clone())).await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let header = ["Type", "Action", "Email", "First Name", "Org"].map(String::from).to_vec();
    let mut seed = vec![header.clone(), ["Org", "Create", "", "", "Busy"].map(String::from).to_vec()];
    seed.extend((0..40).map(|i| ["Org".into(), "Create".into(), String::new(), String::new(), format!("Empty {i}")].to_vec()));
    // Users in every partition, seven of them in Busy (named in another case: names match so).
    seed.extend((0..200).map(|i| {
        let org = match i % 30 {
            0 => "busy",
            _ => "",
        };
        ["User".into(), "Create".into(), format!("member{i}@acme.example.com"), format!("M{i}"), org.to_string()].to_vec()
    }));
    let shards: std::collections::BTreeSet<u32> =
        (0..200).map(|i| shared::adapters::dynamo::user_shard(&format!("member{i}@acme.example.com"))).collect();
    assert_eq!(shards.len(), shared::adapters::dynamo::USER_SHARDS as usize, "users in every partition");
    let run = |name: &'static str, rows: Vec<Vec<String>>| run_counting(&stack, &queries, name, rows);
    let (job, _) = run("seed.csv", seed).await;
    assert_eq!((job.succeeded, job.failed), (241, 0), "{job:?}");

    let delete = |names: &mut dyn Iterator<Item = String>| {
        let mut rows = vec![header.clone()];
        rows.extend(names.map(|n| ["Org".into(), "Delete".into(), String::new(), String::new(), n].to_vec()));
        rows
    };
    let (one, one_pass) = run("delete-one.csv", delete(&mut std::iter::once("Empty 0".to_string()))).await;
    assert_eq!((one.succeeded, one.failed), (1, 0), "{one:?}");
    let partitions = shared::adapters::dynamo::USER_SHARDS as usize;
    assert!(one_pass >= partitions, "one deletion reads every partition: {one_pass} queries");

    let mut names = (1..40).map(|i| format!("Empty {i}")).chain(std::iter::once("Busy".to_string()));
    let (many, many_passes) = run("delete-forty.csv", delete(&mut names)).await;
    eprintln!("user-partition queries: {one_pass} for 1 organization deleted, {many_passes} for 40");
    assert_eq!(many_passes, one_pass, "40 deletions in one chunk read the tenant's users once");
    assert_eq!((many.succeeded, many.failed), (39, 1), "{many:?}");
    let summary = stack.summary(&many).await;
    let result = parse_csv(&stack.get(summary.result_key.as_deref().unwrap()).await.unwrap());
    let busy = result.iter().find(|r| r.iter().any(|c| c == "Busy")).unwrap();
    assert!(busy.contains(&"organization \"Busy\" still has 7 users; move or delete them first".to_string()), "{busy:?}");
    for i in 0..40 {
        assert!(!stack.svc.directory.org_exists("acme", &format!("Empty {i}")).await.unwrap(), "Empty {i} deleted");
    }
    assert!(stack.svc.directory.org_exists("acme", "Busy").await.unwrap());
    let counts = stack.svc.directory.org_user_counts("acme", &["BUSY".to_string(), "Empty 1".to_string()]).await.unwrap();
    assert_eq!(counts, HashMap::from([("busy".to_string(), 7)]), "names matched regardless of case");
    stack.shutdown().await;
}

/// The hold check counts a tenant's active users over its 16 partitions at once: exactly while
/// the count stays under the bound it is asked for, and, past a small bound, from a few small
/// pages (each partition's share of the bound) instead of every user of the tenant.
#[tokio::test]
async fn active_users_are_counted_exactly_under_the_bound_and_a_few_past_it() {
    let queries = UserQueries::default();
    let stack = Stack::start_manual_with(aws_smithy_runtime_api::client::interceptors::SharedInterceptor::new(queries.clone())).await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let header = vec!["Action".to_string(), "Email".to_string()];
    let emails: Vec<String> = (0..400).map(|i| format!("member{i}@acme.example.com")).collect();
    for (name, action, n) in [("seed.csv", "Create", 400), ("leavers.csv", "Disable", 40)] {
        let mut rows = vec![header.clone()];
        rows.extend(emails.iter().take(n).map(|e| vec![action.to_string(), e.clone()]));
        let key = stack.drop_file("acme", None, name, rows_to_csv(&rows)).await;
        stack.pump(1).await;
        assert_eq!(stack.wait_job("acme", &key, WAIT).await.succeeded, n as u32, "{name}");
    }
    let dir = &stack.svc.directory;
    assert_eq!(dir.count_active_users("acme", 10_000).await.unwrap(), 360, "every active user, none disabled");
    assert_eq!(dir.count_active_users("acme", 360).await.unwrap(), 360);
    let before = queries.count();
    let past = dir.count_active_users("acme", 20).await.unwrap();
    let asked = queries.count() - before;
    eprintln!("past a bound of 20: counted {past} active users in {asked} queries");
    assert!((20..360).contains(&past), "stopped once past the bound: {past}");
    assert!(asked <= 3 * shared::adapters::dynamo::USER_SHARDS as usize, "{asked} queries");
    // A bound the first pages fall short of (one user in ten disabled, partitions uneven): the
    // next pages ask for what is missing, not twice as much again (which read all 360 here).
    let before = queries.count();
    let near = dir.count_active_users("acme", 300).await.unwrap();
    let asked = queries.count() - before;
    eprintln!("past a bound of 300: counted {near} active users in {asked} queries");
    assert!((300..=300 + 3 * 16).contains(&near), "stopped a few users a partition past the bound: {near}");
    assert!(asked <= 3 * shared::adapters::dynamo::USER_SHARDS as usize, "{asked} queries");
    stack.shutdown().await;
}

/// Associations follow the emails a chunk changes: every user naming a moved email names the new
/// one, found in one pass over the tenant's users for all the chunk's moves (the 16 partitions
/// once), not one pass per 25 moves.
#[tokio::test]
async fn a_chunk_s_email_changes_repoint_associations_in_one_pass_over_the_tenant() {
    let queries = UserQueries::default();
    let stack = Stack::start_manual_with(aws_smithy_runtime_api::client::interceptors::SharedInterceptor::new(queries.clone())).await;
    // No hold check: its count of active users would query the partitions too. The 60 moves in
    // one chunk (the tests' default is 50 rows).
    let mut tenant = stack.tenant("acme");
    (tenant.holds.remove_percent, tenant.holds.update_percent, tenant.chunk_size) = (0, 0, Some(100));
    stack.put_tenant(&tenant).await;
    let run = |name: &'static str, rows: Vec<Vec<String>>| run_counting(&stack, &queries, name, rows);
    let mut seed = vec![["Email", "Supervisor", "Parent"].map(String::from).to_vec()];
    seed.extend((0..60).map(|i| vec![format!("boss{i}@acme.example.com"), String::new(), String::new()]));
    // Staff name a boss as supervisor, and the first ten the next boss as parent too.
    seed.extend((0..60).map(|i| {
        let parent = if i < 10 { format!("boss{}@acme.example.com", i + 1) } else { String::new() };
        vec![format!("staff{i}@acme.example.com"), format!("boss{i}@acme.example.com"), parent]
    }));
    let (job, _) = run("seed.csv", seed).await;
    assert_eq!((job.succeeded, job.failed), (120, 0), "{job:?}");

    let mut moves = vec![["Action", "Email", "NewEmail"].map(String::from).to_vec()];
    moves.extend((0..60).map(|i| vec!["Update".into(), format!("boss{i}@acme.example.com"), format!("chief{i}@acme.example.com")]));
    let (job, asked) = run("moves.csv", moves).await;
    assert_eq!((job.succeeded, job.failed), (60, 0), "{job:?}");
    eprintln!("user-partition queries for 60 email changes in one chunk: {asked}");
    assert_eq!(asked, shared::adapters::dynamo::USER_SHARDS as usize, "one query per partition, one pass");
    for i in 0..60 {
        let staff = stack.svc.directory.user("acme", &format!("staff{i}@acme.example.com")).await.unwrap().unwrap();
        let named = |a: &str| staff.fields.associations.get(a).cloned();
        assert_eq!(named("supervisor"), Some(format!("chief{i}@acme.example.com")), "staff{i}");
        let parent = (i < 10).then(|| format!("chief{}@acme.example.com", i + 1));
        assert_eq!(named("parent"), parent, "staff{i}");
    }
    stack.shutdown().await;
}

/// The directory as deployed, with another upload writing right after a chunk's batched read:
/// the timing of a real race, every read and write a real DynamoDB call.
struct RacingDirectory {
    inner: std::sync::Arc<dyn Directory>,
    /// Runs once, after the next `users` read.
    race: tokio::sync::Mutex<Option<Vec<(RowOp, Stamp)>>>,
}

#[async_trait::async_trait]
impl Directory for RacingDirectory {
    async fn tenant(&self, id: &str) -> shared::Result<Option<Tenant>> {
        self.inner.tenant(id).await
    }
    async fn put_tenant(&self, tenant: &Tenant) -> shared::Result<()> {
        self.inner.put_tenant(tenant).await
    }
    async fn list_tenants(&self) -> shared::Result<Vec<Tenant>> {
        self.inner.list_tenants().await
    }
    async fn user(&self, tenant: &str, email: &str) -> shared::Result<Option<User>> {
        self.inner.user(tenant, email).await
    }
    async fn users(&self, tenant: &str, emails: &[String]) -> shared::Result<shared::ports::Users> {
        let read = self.inner.users(tenant, emails).await?;
        if let Some(rows) = self.race.lock().await.take() {
            for (op, stamp) in rows {
                shared::apply::write_row(&*self.inner, tenant, &op, &stamp, true).await?;
            }
        }
        Ok(read)
    }
    async fn write(&self, tenant: &str, target: &Target, attempt: Attempt, stamp: &Stamp) -> shared::Result<Attempted> {
        self.inner.write(tenant, target, attempt, stamp).await
    }
    async fn org_exists(&self, tenant: &str, name: &str) -> shared::Result<bool> {
        self.inner.org_exists(tenant, name).await
    }
    async fn org_email(&self, tenant: &str, name: &str) -> shared::Result<Option<String>> {
        self.inner.org_email(tenant, name).await
    }
    async fn claim_contact(&self, tenant: &str, email: &str, org: &str) -> shared::Result<ContactClaim> {
        self.inner.claim_contact(tenant, email, org).await
    }
    async fn release_contact(&self, tenant: &str, email: &str, org: &str) -> shared::Result<()> {
        self.inner.release_contact(tenant, email, org).await
    }
    async fn external_ids(
        &self,
        tenant: &str,
        ids: &[String],
        read: shared::ports::Consistency,
    ) -> shared::Result<std::collections::HashMap<String, String>> {
        self.inner.external_ids(tenant, ids, read).await
    }
    async fn org_ids(&self, tenant: &str, ids: &[String]) -> shared::Result<std::collections::HashMap<String, String>> {
        self.inner.org_ids(tenant, ids).await
    }
    async fn put_org_id(&self, tenant: &str, id: &str, org: &str) -> shared::Result<()> {
        self.inner.put_org_id(tenant, id, org).await
    }
    async fn claim_external_id(&self, tenant: &str, id: &str, email: &str) -> shared::Result<Option<String>> {
        self.inner.claim_external_id(tenant, id, email).await
    }
    async fn release_external_id(&self, tenant: &str, id: &str, email: &str) -> shared::Result<()> {
        self.inner.release_external_id(tenant, id, email).await
    }
    async fn move_user(&self, tenant: &str, from: &str, to: &str, stamp: &Stamp) -> shared::Result<shared::ports::Moved> {
        self.inner.move_user(tenant, from, to, stamp).await
    }
    async fn moved_to(&self, tenant: &str, email: &str) -> shared::Result<Option<String>> {
        self.inner.moved_to(tenant, email).await
    }
    async fn repoint_associations(&self, tenant: &str, moves: &[(String, String)]) -> shared::Result<u32> {
        self.inner.repoint_associations(tenant, moves).await
    }
    async fn org_user_counts(&self, tenant: &str, names: &[String]) -> shared::Result<HashMap<String, u64>> {
        self.inner.org_user_counts(tenant, names).await
    }
    async fn list_users(&self, tenant: &str) -> shared::Result<Vec<(String, UserStatus)>> {
        self.inner.list_users(tenant).await
    }
    async fn count_active_users(&self, tenant: &str, at_most: u64) -> shared::Result<u64> {
        self.inner.count_active_users(tenant, at_most).await
    }
    async fn restore(
        &self,
        tenant: &str,
        target: &Target,
        restore: &shared::model::Restore,
        stamp: &Stamp,
    ) -> shared::Result<shared::ports::Restored> {
        self.inner.restore(tenant, target, restore, stamp).await
    }
    async fn reserve_licences(
        &self,
        tenant: &str,
        pool: Option<&str>,
        limit: u32,
        claim: &str,
        decision: LicenceClaim,
    ) -> shared::Result<LicenceClaim> {
        self.inner.reserve_licences(tenant, pool, limit, claim, decision).await
    }
    async fn settle_licences(&self, tenant: &str, pool: Option<&str>, claim: &str, returned: u32) -> shared::Result<()> {
        self.inner.settle_licences(tenant, pool, claim, returned).await
    }
    async fn licences_used(&self, tenant: &str, pool: Option<&str>) -> shared::Result<u32> {
        self.inner.licences_used(tenant, pool).await
    }
    async fn set_licences_used(&self, tenant: &str, pool: Option<&str>, used: u32) -> shared::Result<()> {
        self.inner.set_licences_used(tenant, pool, used).await
    }
}

/// Against DynamoDB Local: a newer upload changes two users between a chunk's read and its
/// writes. The row the read called unchanged writes nothing, so the newer value stays; the row
/// that would change its user is refused by its write's condition and skipped, naming the newer
/// upload. Neither change is lost.
#[tokio::test]
async fn a_change_made_between_apply_s_read_and_its_write_is_not_lost() {
    let mut stack = Stack::start_manual().await;
    stack.put_tenant(&stack.tenant("acme")).await;
    let key = stack.drop_file("acme", None, "base.csv", rows_to_csv(&dept_rows(&["Sales", "Sales"]))).await;
    stack.pump(1).await;
    assert_eq!(stack.wait_job("acme", &key, WAIT).await.succeeded, 2);

    let newer = |i: usize| {
        let email = format!("racer{i}@acme.example.com");
        let fields = UserFields { department: Some("Finance".into()), ..UserFields::default() };
        let op = RowOp {
            row: 2 + i as u32,
            action: Action::Update,
            target: Target::User { email, fields },
            created_in_file: vec![],
            restore: None,
        };
        (
            op,
            Stamp {
                job: "newer-job".into(),
                row: 2 + i as u32,
                at: chrono::Utc::now().to_rfc3339(),
                order: "9999-12-31T00:00:00.000Z#0".into(),
            },
        )
    };
    let racing = RacingDirectory { inner: stack.svc.directory.clone(), race: tokio::sync::Mutex::new(Some(vec![newer(0), newer(1)])) };
    stack.svc.directory = std::sync::Arc::new(racing);
    let key = stack.drop_file("acme", None, "sync.csv", rows_to_csv(&dept_rows(&["Sales", "Support"]))).await;
    stack.pump(1).await;
    let job = stack.wait_job("acme", &key, WAIT).await;
    let result = parse_csv(&stack.get(stack.summary(&job).await.result_key.as_deref().unwrap()).await.unwrap());
    let outcome = |r: &Vec<String>| (r[r.len() - 4].clone(), r[r.len() - 3].clone());
    assert_eq!(outcome(&result[1]), ("Unchanged".to_string(), "unchanged".to_string()), "as read: nothing to write");
    assert_eq!(outcome(&result[2]), ("Skipped".to_string(), "changed by a newer upload (job newer-job)".to_string()));
    for i in 0..2 {
        let user = stack.svc.directory.user("acme", &format!("racer{i}@acme.example.com")).await.unwrap().unwrap();
        assert_eq!(user.fields.department.as_deref(), Some("Finance"), "the newer upload's value stays");
    }
    stack.shutdown().await;
}

fn dept_rows(departments: &[&str]) -> Vec<Vec<String>> {
    let mut rows = vec![vec!["Email".to_string(), "Department".to_string()]];
    rows.extend(departments.iter().enumerate().map(|(i, d)| vec![format!("racer{i}@acme.example.com"), d.to_string()]));
    rows
}
