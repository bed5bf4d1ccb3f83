//! The code map's "Architecture invariant" lines (docs/architecture.md), checked on the sources:
//! a change that breaks one fails the fast tier, not a later reader.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src readable").flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// (path relative to src/, text)
fn files() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    sources(&src, &mut paths);
    paths
        .into_iter()
        .map(|p| (p.strip_prefix(&src).unwrap_or(&p).to_string_lossy().replace('\\', "/"), std::fs::read_to_string(&p).unwrap_or_default()))
        .collect()
}

/// The crate modules a file's code names (`crate::x`), outside comments and its test modules.
fn uses(text: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut found: Vec<String> = code
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .flat_map(|l| l.match_indices("crate::").map(move |(at, _)| &l[at + 7..]))
        .map(|rest| rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect())
        .collect();
    found.sort();
    found.dedup();
    found
}

#[test]
fn only_adapters_and_the_wiring_see_sdk_types() {
    let wiring = ["services.rs", "local.rs"];
    for (path, text) in files() {
        if path.starts_with("adapters/") || wiring.contains(&path.as_str()) || path == "architecture_tests.rs" {
            continue;
        }
        assert!(!text.contains("aws_sdk_") && !text.contains("aws_config") && !text.contains("aws_smithy"), "{path} names an SDK type");
    }
}

#[test]
fn the_domain_modules_import_no_stage_adapter_or_wiring() {
    let domain =
        ["model.rs", "fields.rs", "address.rs", "rules.rs", "ports.rs", "keys.rs", "wire.rs", "wording.rs", "error.rs", "event.rs"];
    let outside = ["adapters", "ingest", "apply", "finalize", "invites", "monitor", "report", "local", "services", "route", "template"];
    for (path, text) in files().into_iter().filter(|(p, _)| domain.contains(&p.as_str())) {
        let bad: Vec<String> = uses(&text).into_iter().filter(|m| outside.contains(&m.as_str())).collect();
        assert!(bad.is_empty(), "{path} imports {bad:?}");
    }
}

#[test]
fn the_decoder_knows_nothing_of_rosters() {
    let roster = ["model", "fields", "ports", "rules", "ingest", "apply", "finalize", "services", "adapters"];
    for (path, text) in files().into_iter().filter(|(p, _)| p.starts_with("ingest/decode/")) {
        let bad: Vec<String> = uses(&text).into_iter().filter(|m| roster.contains(&m.as_str())).collect();
        assert!(bad.is_empty(), "{path} imports {bad:?}");
        assert!(!text.contains("super::super::"), "{path} reaches into ingest");
    }
}

#[test]
fn stages_reach_storage_only_through_ports() {
    for (path, text) in files() {
        let stage = ["apply.rs", "invites.rs", "monitor.rs", "report.rs"].contains(&path.as_str())
            || path.starts_with("ingest/")
            || path.starts_with("finalize/");
        if stage {
            let adapters: Vec<String> = uses(&text).into_iter().filter(|m| m == "adapters").collect();
            assert!(adapters.is_empty(), "{path} uses an adapter directly");
        }
    }
}
