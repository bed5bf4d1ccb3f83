#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! `make up` (scripts/stack.sh up) is idempotent: a second start while running starts nothing new.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn pids() -> Vec<(String, String)> {
    let dir = root().join(".local/pids");
    let mut v: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("pid dir exists while the stack runs")
        .filter_map(|e| e.ok())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read_to_string(e.path()).unwrap_or_default().trim().to_string()))
        .collect();
    v.sort();
    v
}

fn alive(pid: &str) -> bool {
    PathBuf::from(format!("/proc/{pid}")).exists()
}

#[test]
fn second_up_while_running_starts_no_duplicates() {
    let before = pids();
    assert!(before.iter().any(|(f, _)| f.starts_with("localstack")), "stack must be running: {before:?}");
    assert!(before.iter().any(|(f, _)| f.starts_with("dynamodb")), "stack must be running: {before:?}");
    let out = Command::new("bash").arg(root().join("scripts/stack.sh")).arg("up").current_dir(root()).output().expect("run stack.sh");
    assert!(out.status.success(), "second up failed: {}", String::from_utf8_lossy(&out.stderr));
    let after = pids();
    assert_eq!(before, after, "pid files changed: a second instance was started");
    for (_, pid) in &after {
        assert!(alive(pid), "pid {pid} not alive");
    }
    // Exactly one LocalStack gateway listening process of ours.
    let ps = Command::new("ps").args(["-eo", "args"]).output().expect("ps");
    let n = String::from_utf8_lossy(&ps.stdout).lines().filter(|l| l.contains("localstack.runtime.main") && !l.contains("grep")).count();
    assert_eq!(n, 1, "expected one LocalStack process");
}
