//! The bucket's key layout, in one place.

use crate::model::{Mode, is_valid_tenant_id};

pub const INCOMING: &str = "incoming/";
pub const STAGED: &str = "staged/";
pub const CHUNKS: &str = "chunks/";
pub const OUTCOMES: &str = "outcomes/";
pub const DONE: &str = "done/";
pub const RESULTS: &str = "results/";

/// A roster file's key, understood.
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingKey {
    pub tenant: String,
    /// `Ok(None)` = no mode segment (upsert); `Err(segment)` = a mode segment we do not know.
    pub mode: Result<Option<Mode>, String>,
    pub file_name: String,
}

/// Why a key under `incoming/` is not a roster drop.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyProblem {
    /// Not under `incoming/` at all (not ours to handle).
    NotIncoming,
    /// A folder marker or a file directly under `incoming/` (no tenant).
    NoTenant,
    /// The tenant segment is not a valid tenant id.
    BadTenant(String),
    /// More path segments than `incoming/<tenant>/<mode>/<file>`.
    TooDeep,
}

pub fn parse_incoming(key: &str) -> Result<IncomingKey, KeyProblem> {
    let rest = key.strip_prefix(INCOMING).ok_or(KeyProblem::NotIncoming)?;
    let parts: Vec<&str> = rest.split('/').collect();
    let (tenant, mode, file) = match parts.as_slice() {
        [tenant, file] => (*tenant, None, *file),
        [tenant, mode, file] => (*tenant, Some(*mode), *file),
        [_] => return Err(KeyProblem::NoTenant),
        _ => return Err(KeyProblem::TooDeep),
    };
    if tenant.is_empty() {
        return Err(KeyProblem::NoTenant);
    }
    if !is_valid_tenant_id(tenant) {
        return Err(KeyProblem::BadTenant(tenant.to_string()));
    }
    if file.is_empty() {
        // S3 console "create folder" markers end in '/': nothing to do.
        return Err(KeyProblem::NoTenant);
    }
    let mode = match mode {
        None => Ok(None),
        Some(m) => Mode::parse(m).map(Some).ok_or_else(|| m.to_string()),
    };
    Ok(IncomingKey { tenant: tenant.to_string(), mode, file_name: file.to_string() })
}

pub fn staged_input(job: &str) -> String {
    format!("{STAGED}{job}/input.json")
}
/// The roster exactly as ingest read it: finalize decodes it again to echo every row.
pub fn staged_source(job: &str) -> String {
    format!("{STAGED}{job}/source")
}
pub fn staged_chunk(job: &str, phase: usize, seq: u32) -> String {
    format!("{STAGED}{job}/{}", chunk_name(phase, seq))
}
pub fn chunk(job: &str, phase: usize, seq: u32) -> String {
    format!("{CHUNKS}{job}/{}", chunk_name(phase, seq))
}
fn chunk_name(phase: usize, seq: u32) -> String {
    format!("p{phase}-{seq:06}.jsonl")
}
pub fn outcomes_prefix(job: &str) -> String {
    format!("{OUTCOMES}{job}/")
}
pub fn ingest_outcomes(job: &str) -> String {
    format!("{OUTCOMES}{job}/ingest.jsonl")
}
pub fn chunk_outcomes(job: &str, phase: usize, seq: u32) -> String {
    format!("{OUTCOMES}{job}/{}", chunk_name(phase, seq))
}
pub fn done(job: &str) -> String {
    format!("{DONE}{job}.json")
}
pub fn results_prefix(tenant: &str, job: &str) -> String {
    format!("{RESULTS}{tenant}/{job}/")
}

/// `chunks/<job>/p<phase>-<seq>.jsonl` -> (job, phase, seq)
pub fn parse_chunk(key: &str) -> Option<(String, usize, u32)> {
    let rest = key.strip_prefix(CHUNKS)?;
    let (job, name) = rest.split_once('/')?;
    let name = name.strip_prefix('p')?.strip_suffix(".jsonl")?;
    let (phase, seq) = name.split_once('-')?;
    Some((job.to_string(), phase.parse().ok()?, seq.parse().ok()?))
}

/// `done/<job>.json` -> job
pub fn parse_done(key: &str) -> Option<String> {
    key.strip_prefix(DONE)?.strip_suffix(".json").filter(|j| !j.is_empty() && !j.contains('/')).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incoming_key_with_and_without_mode() {
        let k = parse_incoming("incoming/acme/roster.csv").unwrap();
        assert_eq!((k.tenant.as_str(), k.mode.clone(), k.file_name.as_str()), ("acme", Ok(None), "roster.csv"));
        let k = parse_incoming("incoming/acme/ADD/roster.xlsx").unwrap();
        assert_eq!(k.mode, Ok(Some(Mode::Add)));
        let k = parse_incoming("incoming/acme/merge/roster.xlsx").unwrap();
        assert_eq!(k.mode, Err("merge".to_string()));
    }

    #[test]
    fn keys_that_are_not_drops_are_told_apart() {
        assert_eq!(parse_incoming("results/acme/x"), Err(KeyProblem::NotIncoming));
        assert_eq!(parse_incoming("incoming/file.csv"), Err(KeyProblem::NoTenant));
        assert_eq!(parse_incoming("incoming/acme/"), Err(KeyProblem::NoTenant));
        assert_eq!(parse_incoming("incoming/Acme Corp/x.csv"), Err(KeyProblem::BadTenant("Acme Corp".into())));
        assert_eq!(parse_incoming("incoming/acme/add/x/y.csv"), Err(KeyProblem::TooDeep));
    }

    #[test]
    fn chunk_and_done_keys_round_trip() {
        assert_eq!(parse_chunk(&chunk("j1", 1, 42)), Some(("j1".into(), 1, 42)));
        assert_eq!(parse_done(&done("j1")), Some("j1".into()));
        assert_eq!(parse_done("done/"), None);
    }
}
