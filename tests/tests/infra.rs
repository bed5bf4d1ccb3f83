#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! The SAM template is right without an AWS account: cfn-lint is clean, the transformed functions get
//! every variable the code reads, and each role allows exactly the calls its function's code makes
//! (recorded by an SDK interceptor while a scenario runs through the real handlers).

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsInput;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::{Intercept, SharedInterceptor};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use shared::model::JobState;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use tests::Stack;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn tool(name: &str) -> PathBuf {
    let p = root().join(".local/infra-venv/bin").join(name);
    assert!(p.exists(), "{} missing: run `make test` (it installs the infra tools) or scripts/infra-tools.sh", p.display());
    p
}

#[test]
fn cfn_lint_passes_with_no_errors_or_warnings() {
    let out = Command::new(tool("cfn-lint")).arg("infra/template.yaml").current_dir(root()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.trim().is_empty(), "cfn-lint:\n{text}");
}

/// `infra/transform.py` (the SAM transform, offline) with `args`, its JSON output parsed.
fn transform<T: serde::de::DeserializeOwned>(args: &[&str]) -> T {
    let out = Command::new(tool("python"))
        .arg("infra/transform.py")
        .args(args)
        .current_dir(root())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert!(out.status.success(), "transform failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Per function: environment variable names and allowed IAM actions, after the SAM transform.
fn transformed() -> BTreeMap<String, serde_json::Value> {
    transform(&[])
}

#[test]
fn every_function_gets_every_variable_the_code_reads_and_runs_on_arm64_al2023() {
    let source = std::fs::read_to_string(root().join("shared/src/config.rs")).unwrap();
    let read: BTreeSet<String> = source
        .split('"')
        .filter(|s| s.starts_with("ROSTERDROP_") && s.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .map(str::to_string)
        .collect();
    assert!(read.len() >= 10, "{read:?}");
    let functions = transformed();
    assert_eq!(
        functions.keys().cloned().collect::<Vec<_>>(),
        vec!["ApplyFunction", "FinalizeFunction", "IngestFunction", "InvitesFunction"]
    );
    for (name, f) in &functions {
        let env: BTreeSet<String> = f["env"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
        let missing: Vec<&String> = read.difference(&env).collect();
        assert!(missing.is_empty(), "{name} does not set {missing:?}");
        assert_eq!(f["runtime"], "provided.al2023");
        assert_eq!(f["architectures"], serde_json::json!(["arm64"]));
        assert_eq!(
            f["managed_policies"],
            serde_json::json!(["arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"]),
            "{name}: logs only"
        );
    }
}

tokio::task_local! {
    /// Which function's code is running (the test sets it around each handler call).
    static FUNCTION: &'static str;
}

/// Records, per function, the (service, operation) of every SDK call.
#[derive(Debug, Clone, Default)]
struct Recorder(Arc<Mutex<Calls>>);

/// function -> (service, operation)
type Calls = BTreeMap<String, BTreeSet<(String, String)>>;

impl Intercept for Recorder {
    fn name(&self) -> &'static str {
        "call-recorder"
    }
    // A client interceptor sees the operation's metadata from serialization on (not in
    // `read_before_execution`, which runs before the operation's configuration is applied).
    fn read_before_serialization(
        &self,
        ctx: &BeforeSerializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let (Ok(function), Some(meta)) = (FUNCTION.try_with(|f| *f), cfg.load::<Metadata>()) {
            let mut calls = self.0.lock().unwrap();
            let calls = calls.entry(function.to_string()).or_default();
            // IAM authorises each item of a transaction as its own action.
            if let Some(txn) = ctx.input().downcast_ref::<TransactWriteItemsInput>() {
                for item in txn.transact_items() {
                    let op = match item {
                        i if i.put().is_some() => "PutItem",
                        i if i.update().is_some() => "UpdateItem",
                        i if i.delete().is_some() => "DeleteItem",
                        _ => "ConditionCheckItem",
                    };
                    calls.insert(("dynamodb".into(), op.into()));
                }
            } else if ctx
                .input()
                .downcast_ref::<aws_sdk_s3::operation::get_object::GetObjectInput>()
                .is_some_and(|g| g.version_id().is_some())
            {
                // Reading a given version is its own IAM action.
                calls.insert(("s3".into(), "GetObjectVersion".into()));
            } else {
                if let Some(list) = ctx.input().downcast_ref::<aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Input>() {
                    // A role may list only under the prefixes its `s3:prefix` condition names.
                    calls.insert((LISTED.into(), list.prefix().unwrap_or_default().to_string()));
                }
                calls.insert((meta.service().to_string(), meta.name().to_string()));
            }
        }
        Ok(())
    }
}

/// The service name under which the recorder keeps the prefixes a function lists.
const LISTED: &str = "listed prefix";

/// Whether an IAM `StringLike` pattern (`*` any run of characters, here only at its end) matches.
fn like(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(start) if !start.contains('*') => value.starts_with(start),
        _ => pattern == value,
    }
}

/// The IAM actions an SDK operation needs.
fn iam_actions(service: &str, op: &str) -> Vec<String> {
    let s = match service.to_ascii_lowercase().as_str() {
        "s3" => "s3",
        "dynamodb" => "dynamodb",
        "sesv2" | "ses" => "ses",
        "eventbridge" | "events" => "events",
        other => panic!("unexpected service {other}"),
    };
    let ops: &[&str] = match (s, op) {
        ("s3", "HeadObject") => &["GetObject"],
        ("s3", "CopyObject") => &["GetObject", "PutObject"],
        ("s3", "ListObjectsV2") => &["ListBucket"],
        (_, op) => return vec![format!("{s}:{op}")],
    };
    ops.iter().map(|o| format!("{s}:{o}")).collect()
}

fn function_of(key: &str) -> &'static str {
    if key.starts_with("incoming/") {
        "IngestFunction"
    } else if key.starts_with("chunks/") {
        "ApplyFunction"
    } else {
        "FinalizeFunction"
    }
}

/// Run the queued events (and those they cause) under `prefix` through the handlers, each inside
/// its function's scope; events elsewhere are dropped, as if lost.
async fn pump_only(stack: &Stack, prefix: &str) {
    loop {
        let events = stack.take_events().await;
        if events.is_empty() {
            return;
        }
        for obj in events.into_iter().filter(|o| o.key.starts_with(prefix)) {
            FUNCTION.scope(function_of(&obj.key), shared::route::dispatch(&stack.svc, &obj)).await.unwrap();
        }
    }
}

async fn pump(stack: &Stack) {
    pump_only(stack, "").await;
}

#[tokio::test]
async fn each_role_allows_exactly_the_calls_its_function_makes() {
    let recorder = Recorder::default();
    let stack = Stack::start_manual_with(SharedInterceptor::new(recorder.clone())).await;
    let mut tenant = stack.tenant("acme");
    tenant.notify_started = true;
    tenant.licences = Some(100);
    stack.put_tenant(&tenant).await;
    let files: &[(Option<&str>, &str, &str)] = &[
        // Orgs, users with an invite, an invalid row; then updates, deletes, an org delete.
        (
            None,
            "a.csv",
            "Type,Action,Email,OrgName,InviteUser\nOrg,Create,,North,\nUser,Create,a@acme.example.com,North,TRUE\nUser,,b@acme.example.com,,\nUser,,bad,,\n",
        ),
        (None, "b.csv", "Type,Action,Email,OrgName\nUser,Delete,b@acme.example.com,\nOrg,Delete,,North\nUser,Update,a@acme.example.com,\n"),
        // Identity: an organization's contact email, an ExternalId, an email change carrying a
        // pending invite, the organization deleted (its email let go), a user with an id deleted.
        (
            None,
            "e.csv",
            "Type,Action,Email,OrgName,ExternalId,InviteUser,ScheduledDate,Supervisor\nOrg,Create,desk@acme.example.com,West,,,,\nUser,Create,x@acme.example.com,,X1,TRUE,2030-01-01,\nUser,Create,y@acme.example.com,,Y1,,,x@acme.example.com\n",
        ),
        (
            None,
            "f.csv",
            "Type,Action,Email,OrgName,ExternalId\nUser,Update,x2@acme.example.com,,X1\nOrg,Delete,,West,\nUser,Delete,y@acme.example.com,,\n",
        ),
        // Replace (lists the tenant's users), and a rejected file.
        (Some("replace-force"), "c.csv", "Email\na@acme.example.com\n"),
        (None, "d.csv", "Name\nx\n"),
    ];
    for (mode, name, body) in files {
        stack.drop_file("acme", *mode, name, body.as_bytes().to_vec()).await;
        pump(&stack).await;
    }
    // Holds: a file deleting every user of a tenant of 12 is previewed and held; one approved from
    // the S3 console (ingest), one left until the scheduled function discards it.
    let seed: String = (0..12).fold("Email\n".into(), |b, i| b + &format!("h{i}@acme.example.com\n"));
    let wipe: String = (0..12).fold("Action,Email\n".into(), |b, i| b + &format!("Delete,h{i}@acme.example.com\n"));
    for (name, body) in [("seed.csv", &seed), ("wipe.csv", &wipe), ("wipe-again.csv", &wipe)] {
        stack.drop_file("acme", None, name, body.as_bytes().to_vec()).await;
        pump(&stack).await;
    }
    let held: Vec<_> = stack.svc.jobs.recent("acme", 50).await.unwrap().into_iter().filter(|j| j.state == JobState::Held).collect();
    assert_eq!(held.len(), 2, "{held:?}");
    stack.drop_file("acme", Some("approve"), &held[0].id, Vec::new()).await;
    pump(&stack).await;
    let much_later = chrono::Utc::now() + chrono::Duration::days(8);
    assert_eq!(FUNCTION.scope("InvitesFunction", shared::holds::discard_expired(&stack.svc, much_later)).await.unwrap(), 1);
    // The approved deletes undone from the console: ingest plans them, apply puts them back.
    stack.drop_file("acme", Some("undo"), &held[0].id, Vec::new()).await;
    pump(&stack).await;
    let undo = stack.svc.jobs.get(&shared::undo::undo_job_id(&held[0].id)).await.unwrap().expect("undo job");
    assert_eq!(undo.state, JobState::Completed);
    assert!(stack.svc.directory.user("acme", "h0@acme.example.com").await.unwrap().is_some(), "restored");
    // A scheduled file: read and validated by ingest, released at its time by the scheduled function.
    let time = (chrono::Utc::now() + chrono::Duration::hours(2)).format(shared::keys::SCHEDULE_FORMAT).to_string();
    stack.drop_file("acme", Some(&format!("scheduled/{time}")), "later.csv", b"Email\nlater@acme.example.com\n".to_vec()).await;
    pump(&stack).await;
    let at = shared::keys::parse_schedule(&time).unwrap();
    assert_eq!(FUNCTION.scope("InvitesFunction", shared::schedule::release_due(&stack.svc, at)).await.unwrap(), 1);
    pump(&stack).await;
    assert!(stack.svc.directory.user("acme", "later@acme.example.com").await.unwrap().is_some());
    // The scheduled function's sweep sends the invite recorded above.
    FUNCTION.scope("InvitesFunction", shared::invites::sweep(&stack.svc, chrono::Utc::now())).await.unwrap();
    FUNCTION.scope("InvitesFunction", shared::monitor::oldest_open_job_age(&stack.svc, chrono::Utc::now())).await.unwrap();
    // A chunk that cannot be read stops its job: apply marks it FAILED (its event) and hands the
    // email to finalize with the done marker.
    stack.drop_file("acme", None, "broken.csv", b"Email\nz@acme.example.com\n".to_vec()).await;
    pump_only(&stack, "incoming/").await;
    let job = stack.svc.jobs.recent("acme", 50).await.unwrap().into_iter().find(|j| j.file_name == "broken.csv").expect("job");
    let broken = stack.svc.store.list(shared::keys::CHUNKS).await.unwrap().into_iter().find(|k| k.contains(&job.id)).expect("a chunk");
    stack.svc.store.put(&broken, b"not a chunk".to_vec(), "application/x-ndjson").await.unwrap();
    pump(&stack).await;
    let job = stack.svc.jobs.get(&job.id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert!(stack.svc.jobs.email_sent(&job.id, shared::model::EmailKind::Result).await.unwrap(), "finalize sent its email");
    // A job whose chunks never run: the scheduled function stops it past the deadline.
    stack.drop_file("acme", None, "stuck.csv", b"Email\ns@acme.example.com\n".to_vec()).await;
    pump_only(&stack, "incoming/").await;
    let later = chrono::Utc::now() + chrono::Duration::hours(4);
    // (Not applied, so not the unsent-email sweep's: it reads and leaves it.)
    assert_eq!(FUNCTION.scope("InvitesFunction", shared::monitor::finish_unsent_jobs(&stack.svc, later)).await.unwrap(), 0);
    // The release sweep, a lease after it was read, finds its one chunk gone (lost here on
    // purpose) and looks for a staged copy: ingest wrote it straight to chunks/, there is none.
    let stuck = stack.svc.jobs.recent("acme", 50).await.unwrap().into_iter().find(|j| j.file_name == "stuck.csv").expect("job");
    let phase = stuck.phase_chunks.expect("planned").iter().position(|&n| n > 0).expect("a phase");
    let chunk = shared::keys::chunk(&stuck.id, phase, 0);
    stack.aws.s3.delete_object().bucket(&stack.config.bucket).key(&chunk).send().await.unwrap();
    let quiet = chrono::Utc::now() + chrono::Duration::seconds(stack.svc.config.lease.secs + 60);
    assert_eq!(FUNCTION.scope("InvitesFunction", shared::monitor::resume_releases(&stack.svc, quiet)).await.unwrap(), 0);
    assert_eq!(FUNCTION.scope("InvitesFunction", shared::monitor::fail_stuck_jobs(&stack.svc, later)).await.unwrap(), 1);

    let recorded = recorder.0.lock().unwrap().clone();
    let template = transformed();
    for (function, spec) in &template {
        let (listed, calls): (BTreeSet<_>, BTreeSet<_>) =
            recorded.get(function).cloned().unwrap_or_default().into_iter().partition(|(s, _)| s == LISTED);
        let needed: BTreeSet<String> = calls.iter().flat_map(|(s, o)| iam_actions(s, o)).collect();
        let patterns: Vec<&str> = spec["list_prefixes"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
        for (_, prefix) in &listed {
            assert!(patterns.iter().any(|p| like(p, prefix)), "{function} lists {prefix:?}, outside its s3:prefix {patterns:?}");
        }
        for pattern in &patterns {
            assert!(listed.iter().any(|(_, p)| like(pattern, p)), "{function} may list {pattern:?} but never does (lists: {listed:?})");
        }
        let allowed: BTreeSet<String> = spec["actions"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
        let missing: Vec<_> = needed.difference(&allowed).collect();
        let unused: Vec<_> = allowed.difference(&needed).collect();
        assert!(missing.is_empty(), "{function} calls {missing:?} without permission (calls: {calls:?})");
        assert!(unused.is_empty(), "{function} is allowed {unused:?} but never calls them (calls: {calls:?})");
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn open_jobs_index_holds_a_job_until_it_completes_is_rejected_or_its_failure_is_told() {
    use shared::model::{Job, JobState};
    let stack = Stack::start_manual().await;
    let job = |id: &str, at: &str| Job::received(id, "acme", format!("incoming/acme/{id}.csv"), format!("{id}.csv"), None, at);
    let jobs = &stack.svc.jobs;
    assert_eq!(jobs.oldest_open().await.unwrap(), None);
    jobs.create_or_get(&job("old", "2026-11-21T08:00:00+00:00")).await.unwrap();
    jobs.create_or_get(&job("new", "2026-11-21T09:00:00+00:00")).await.unwrap();
    assert_eq!(jobs.oldest_open().await.unwrap(), Some(("old".into(), "2026-11-21T08:00:00+00:00".into())));
    let now = chrono::DateTime::parse_from_rfc3339("2026-11-21T10:00:00Z").unwrap().with_timezone(&chrono::Utc);
    assert_eq!(shared::monitor::oldest_open_job_age(&stack.svc, now).await.unwrap(), 7200);
    jobs.finish("old", JobState::Completed, 1, 0, 0, Some("the result email could not be sent")).await.unwrap();
    assert_eq!(jobs.oldest_open().await.unwrap().map(|(id, _)| id), Some("new".into()));
    let old = jobs.get("old").await.unwrap().unwrap();
    assert_eq!((old.state, old.message.as_deref()), (JobState::Completed, Some("the result email could not be sent")), "the note kept");
    assert!(jobs.transition("new", JobState::Received, JobState::Rejected, Some("bad file")).await.unwrap());
    assert_eq!(jobs.oldest_open().await.unwrap(), None);
    assert_eq!(shared::monitor::oldest_open_job_age(&stack.svc, now).await.unwrap(), 0);
    // A job failing on its way stays open until its admins are told (its email may be owed).
    jobs.create_or_get(&job("stopped", "2026-11-21T09:30:00+00:00")).await.unwrap();
    assert!(jobs.transition("stopped", JobState::Received, JobState::Failed, Some("stopped")).await.unwrap());
    assert_eq!(jobs.oldest_open().await.unwrap().map(|(id, _)| id), Some("stopped".into()));
    jobs.close("stopped").await.unwrap();
    assert_eq!(jobs.oldest_open().await.unwrap(), None);
    jobs.close("no-such-job").await.unwrap();
    stack.shutdown().await;
}

/// The optional SFTP drop: off unless asked for; each user's logical home is their tenant's
/// incoming/ folder; the role may only put objects under incoming/ and list it, the session policy
/// narrows both to the user's own tenant; the first user and its key are optional parameters.
#[test]
fn sftp_drop_is_optional_and_lands_each_user_in_their_tenants_incoming_folder_with_put_only() {
    let v: serde_json::Value = transform(&["--sftp"]);
    let r = &v["resources"];
    let server = &r["SftpServer"];
    assert_eq!((server["Type"].as_str(), server["Condition"].as_str()), (Some("AWS::Transfer::Server"), Some("HasSftp")));
    assert_eq!(server["Properties"]["Protocols"], serde_json::json!(["SFTP"]));
    assert_eq!(server["Properties"]["IdentityProviderType"], "SERVICE_MANAGED");
    assert_eq!(server["Properties"]["Domain"], "S3");
    assert_eq!(v["conditions"]["HasSftp"], serde_json::json!({"Fn::Equals": [{"Ref": "SftpEnabled"}, "true"]}));
    // The role: put under incoming/ and list it, nothing else, assumable by Transfer of this account only.
    let role = &r["SftpUserRole"]["Properties"];
    let trust = &role["AssumeRolePolicyDocument"]["Statement"][0];
    assert_eq!(trust["Principal"]["Service"], "transfer.amazonaws.com");
    assert!(trust["Condition"]["StringEquals"]["aws:SourceAccount"].is_object());
    let statements = role["Policies"][0]["PolicyDocument"]["Statement"].as_array().unwrap();
    let actions: BTreeSet<&str> = statements.iter().flat_map(|s| s["Action"].as_array().unwrap()).map(|a| a.as_str().unwrap()).collect();
    assert_eq!(actions, BTreeSet::from(["s3:PutObject", "s3:ListBucket"]));
    let put = statements.iter().find(|s| s["Action"][0] == "s3:PutObject").unwrap();
    assert!(put["Resource"]["Fn::Sub"].as_str().unwrap().ends_with("/incoming/*"));
    let list = statements.iter().find(|s| s["Action"][0] == "s3:ListBucket").unwrap();
    assert_eq!(list["Condition"]["StringLike"]["s3:prefix"], serde_json::json!(["incoming/*"]));
    // The user: named after the tenant, home is that tenant's incoming/ folder, session policy of its own.
    let user = &r["SftpUser"];
    assert_eq!(user["Condition"], "HasSftpUser");
    let p = &user["Properties"];
    assert_eq!(p["HomeDirectoryType"], "LOGICAL");
    assert_eq!(p["HomeDirectoryMappings"][0]["Entry"], "/");
    assert!(p["HomeDirectoryMappings"][0]["Target"]["Fn::Sub"].as_str().unwrap().ends_with("/incoming/${SftpTenant}"));
    let session = p["Policy"]["Fn::Sub"].as_str().unwrap().replace("${!", "${");
    let session: serde_json::Value =
        serde_json::from_str(&session.replace("${AWS::Partition}", "aws")).expect("the session policy is JSON");
    let own = session["Statement"][0]["Resource"].as_str().unwrap();
    assert!(own.ends_with("/incoming/${transfer:UserName}/*"), "{own}");
    assert_eq!(session["Statement"][0]["Action"], serde_json::json!(["s3:PutObject"]));
    assert!(p["SshPublicKeys"]["Fn::If"][0] == "HasSftpKey", "keys optional");
    assert_eq!(v["outputs"]["SftpEndpoint"]["Condition"], "HasSftp");
}

/// Whether an EventBridge pattern (lists of accepted values, nested objects) matches an event.
fn matches(pattern: &serde_json::Value, event: &serde_json::Value) -> bool {
    pattern.as_object().unwrap().iter().all(|(k, want)| match want {
        serde_json::Value::Array(values) => match &event[k] {
            serde_json::Value::Array(have) => have.iter().any(|h| values.contains(h)),
            have => values.contains(have),
        },
        nested => matches(nested, &event[k]),
    })
}

/// Invite delivery tracking as deployed: invites go through a configuration set whose delivery,
/// bounce and complaint events go to the default bus, and a rule there invokes the invites
/// function with exactly the events that are about invites (the SES-shaped fixtures the unit
/// tests feed the handler).
#[test]
fn ses_delivery_events_of_invites_reach_the_invites_function() {
    let r: BTreeMap<String, serde_json::Value> = transform(&["--rules"]);
    let destination = r.values().find(|v| v["Type"] == "AWS::SES::ConfigurationSetEventDestination").expect("an event destination");
    let d = &destination["Properties"]["EventDestination"];
    assert_eq!(d["MatchingEventTypes"], serde_json::json!(["DELIVERY", "BOUNCE", "COMPLAINT"]));
    assert!(d["EventBridgeDestination"]["EventBusArn"]["Fn::Sub"].as_str().unwrap().ends_with("event-bus/default"));
    let rule = r
        .values()
        .find(|v| v["Type"] == "AWS::Events::Rule" && v["Properties"]["EventPattern"]["source"] == serde_json::json!(["aws.ses"]))
        .expect("a rule for SES events");
    assert_eq!(rule["Properties"]["Targets"][0]["Arn"]["Fn::GetAtt"][0], "InvitesFunction");
    let pattern = &rule["Properties"]["EventPattern"];
    let fixture = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(root().join("tests/fixtures/ses").join(name)).unwrap()).unwrap()
    };
    for name in ["bounce.json", "complaint.json", "delivery.json"] {
        assert!(matches(pattern, &fixture(name)), "{name} reaches the function");
    }
    assert!(!matches(pattern, &fixture("not-an-invite.json")), "other mail does not");
}

/// The bucket's policy and lifecycle, after the SAM transform.
fn bucket() -> serde_json::Value {
    transform(&["--bucket"])
}

#[test]
fn only_the_functions_write_the_pipelines_prefixes_and_rosters_and_results_expire() {
    let b = bucket();
    // Every internal prefix is denied to all but the four function roles; incoming/ stays open
    // to whoever IAM lets drop files.
    let deny = b["statements"].as_array().unwrap().iter().find(|s| s["Sid"] == "PipelinePrefixesFunctionsOnly").expect("statement");
    assert_eq!((&deny["Effect"], &deny["Principal"]), (&serde_json::json!("Deny"), &serde_json::json!("*")));
    let actions: BTreeSet<&str> = deny["Action"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(actions, BTreeSet::from(["s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion"]));
    let prefixes: BTreeSet<String> = deny["Resource"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["Fn::Sub"].as_str().unwrap().trim_start_matches("${Bucket.Arn}/").trim_end_matches('*').to_string())
        .collect();
    let internal =
        [shared::keys::STAGED, shared::keys::CHUNKS, shared::keys::OUTCOMES, shared::keys::DONE, shared::keys::RESULTS, shared::keys::UNDO];
    assert_eq!(prefixes, internal.iter().map(|p| p.to_string()).collect::<BTreeSet<_>>());
    assert!(!prefixes.contains(shared::keys::INCOMING));
    let exempt: BTreeSet<&str> = deny["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["Fn::GetAtt"][0].as_str().unwrap())
        .collect();
    assert_eq!(exempt, BTreeSet::from(["IngestFunctionRole", "ApplyFunctionRole", "FinalizeFunctionRole", "InvitesFunctionRole"]));
    // Rosters and results (personal data) expire after the retention parameter, 90 days unless set.
    for prefix in [shared::keys::INCOMING, shared::keys::RESULTS] {
        let rule = b["lifecycle"].as_array().unwrap().iter().find(|r| r["Prefix"] == prefix).unwrap_or_else(|| panic!("{prefix}"));
        assert_eq!(rule["ExpirationInDays"], serde_json::json!({"Ref": "RetentionDays"}), "{prefix}");
        assert_eq!(rule["Status"], "Enabled");
    }
    assert_eq!(b["parameters"]["RetentionDays"]["Default"], 90);
    // Before-states for undo are kept as long as the longest a tenant may ask for.
    let undo = b["lifecycle"].as_array().unwrap().iter().find(|r| r["Prefix"] == shared::keys::UNDO).expect("undo/ expires");
    assert_eq!(undo["ExpirationInDays"], serde_json::json!(shared::model::MAX_UNDO_DAYS));
}

/// A file dropped for no configured tenant, or outside the layout, is answered by email to the
/// default admins: a deployment cannot be created without one, and only addresses SES takes
/// (7-bit ASCII) pass.
#[test]
fn a_deployment_names_who_hears_of_files_for_no_tenant() {
    let p = &bucket()["parameters"]["DefaultAdminEmails"];
    assert!(p.get("Default").is_none(), "a default lets a deployment answer nobody: {p}");
    // CloudFormation matches the whole value.
    let pattern = regex_lite::Regex::new(p["AllowedPattern"].as_str().unwrap()).unwrap();
    for ok in ["ops@example.com", "ops@example.com,it@example.org", "ops@example.com, it@example.org", "o.p+s@sub.example.co.uk"] {
        assert!(pattern.is_match(ok), "{ok}");
    }
    for bad in
        ["", " ", "ops", "ops@localhost", "ops@example.com,", ",ops@example.com", "ann@exämple.com", "änn@example.com", "a b@example.com"]
    {
        assert!(!pattern.is_match(bad), "{bad:?}");
    }
}

/// The tables as deployed are the tables the code and the local stack use: the directory keyed
/// `pk` + `sk` with no index (a created user is one write unit), and the jobs index projecting
/// exactly what the code reads from it (not the per-chunk counters).
#[test]
fn deployed_tables_match_the_code() {
    let tables: BTreeMap<String, serde_json::Value> = transform(&["--tables"]);
    let props = |name: &str| tables[name].clone();
    let directory = props("DirectoryTable");
    let keys: Vec<(String, String)> = directory["KeySchema"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["AttributeName"].as_str().unwrap().to_string(), k["KeyType"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(keys, vec![("pk".to_string(), "HASH".to_string()), ("sk".to_string(), "RANGE".to_string())]);
    assert!(directory.get("GlobalSecondaryIndexes").is_none(), "no index on the directory table");
    let jobs = props("JobsTable");
    let gsi1 = jobs["GlobalSecondaryIndexes"].as_array().unwrap().iter().find(|i| i["IndexName"] == "gsi1").unwrap().clone();
    let projected: Vec<&str> = gsi1["Projection"]["NonKeyAttributes"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(gsi1["Projection"]["ProjectionType"], "INCLUDE");
    assert_eq!(projected, shared::adapters::dynamo::JOBS_GSI_ATTRIBUTES);
}
