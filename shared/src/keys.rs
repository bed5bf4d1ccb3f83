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
    /// `incoming/<tenant>/scheduled/<YYYY-MM-DDTHH-MM>/[<mode>/]<file>`: the time (UTC) the
    /// file is to be applied at (`Err(segment)`: not such a time).
    pub at: Option<Result<chrono::DateTime<chrono::Utc>, String>>,
}

/// The folder that schedules a file: `incoming/<tenant>/scheduled/<YYYY-MM-DDTHH-MM>/`.
pub const SCHEDULED: &str = "scheduled";
/// How the time folder is written (UTC; a dash, not a colon, between hours and minutes: colons
/// are awkward in S3 keys and console paths).
pub const SCHEDULE_FORMAT: &str = "%Y-%m-%dT%H-%M";

/// A time folder, read strictly (`2026-12-24T06-30`).
pub fn parse_schedule(segment: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    if segment.len() != 16 {
        return None;
    }
    chrono::NaiveDateTime::parse_from_str(segment, SCHEDULE_FORMAT).ok().map(|t| t.and_utc())
}

/// Why a key under `incoming/` is not a roster drop.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyProblem {
    /// Not under `incoming/` at all (not ours to handle).
    NotIncoming,
    /// An S3 console "create folder" marker (a key ending in `/`): nothing to do.
    FolderMarker,
    /// A file directly under `incoming/`, with no tenant folder.
    NoTenant { file_name: String },
    /// The tenant folder is not a tenant id, even lower-cased (`Acme Corp`).
    BadTenant { segment: String, file_name: String },
    /// A valid tenant, but the file sits deeper than `incoming/<tenant>/[<mode>/]<file>`.
    TooDeep { tenant: String, folder: String, file_name: String },
}

/// Where files go, as advice in a message (`tenant` when known).
pub fn layout_advice(tenant: Option<&str>) -> String {
    let t = tenant.unwrap_or("<tenant>");
    format!(
        "drop roster files in incoming/{t}/ (upsert) or in a mode folder incoming/{t}/<mode>/ ({}), with no further folders",
        Mode::NAMES.join(", ")
    )
}

impl KeyProblem {
    /// The tenant the file was meant for, when the key names a valid one.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            KeyProblem::TooDeep { tenant, .. } => Some(tenant),
            _ => None,
        }
    }

    pub fn file_name(&self) -> &str {
        match self {
            KeyProblem::NoTenant { file_name } | KeyProblem::BadTenant { file_name, .. } | KeyProblem::TooDeep { file_name, .. } => {
                file_name
            }
            KeyProblem::NotIncoming | KeyProblem::FolderMarker => "",
        }
    }

    /// What the admins are told: where the file is, where it should be. Segments from the key
    /// are quoted in bounded prefixes.
    pub fn reason(&self) -> String {
        let q = crate::wording::quoted;
        match self {
            KeyProblem::NoTenant { file_name } => format!(
                "the file {} was dropped directly in incoming/, with no tenant folder, so nobody knows whose it is; nothing was applied. {}",
                q(file_name),
                layout_advice(None)
            ),
            KeyProblem::BadTenant { segment, .. } => format!(
                "the folder \"{}\" after incoming/ is not a tenant id (tenant ids are lower-case letters, digits, - and _); nothing was applied. {}",
                q(segment),
                layout_advice(None)
            ),
            KeyProblem::TooDeep { tenant, folder, .. } => format!(
                "the file was dropped in {}, deeper than the folders rosterdrop reads; nothing was applied. Move it: {}",
                q(folder),
                layout_advice(Some(tenant))
            ),
            KeyProblem::NotIncoming | KeyProblem::FolderMarker => String::new(),
        }
    }
}

/// A key under `incoming/`, understood. The tenant folder matches case-insensitively (`Acme` is
/// `acme`), since the S3 console makes it easy to type either.
pub fn parse_incoming(key: &str) -> Result<IncomingKey, KeyProblem> {
    let rest = key.strip_prefix(INCOMING).ok_or(KeyProblem::NotIncoming)?;
    if rest.is_empty() || rest.ends_with('/') {
        return Err(KeyProblem::FolderMarker);
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let file_name = parts.last().copied().unwrap_or_default().to_string();
    let [tenant, ..] = parts.as_slice() else { return Err(KeyProblem::FolderMarker) };
    if parts.len() == 1 {
        return Err(KeyProblem::NoTenant { file_name });
    }
    let lower = tenant.to_ascii_lowercase();
    if !is_valid_tenant_id(&lower) {
        return Err(KeyProblem::BadTenant { segment: tenant.to_string(), file_name });
    }
    let (mode, at) = match parts.as_slice() {
        [_, _] => (None, None),
        [_, folder, time, _] if folder.eq_ignore_ascii_case(SCHEDULED) => (None, Some(*time)),
        [_, folder, time, mode, _] if folder.eq_ignore_ascii_case(SCHEDULED) => (Some(*mode), Some(*time)),
        [_, mode, _] => (Some(*mode), None),
        _ => {
            let folder = format!("{INCOMING}{}/", parts[..parts.len() - 1].join("/"));
            return Err(KeyProblem::TooDeep { tenant: lower, folder, file_name });
        }
    };
    let mode = match mode {
        None => Ok(None),
        Some(m) => Mode::parse(m).map(Some).ok_or_else(|| m.to_string()),
    };
    let at = at.map(|t| parse_schedule(t).ok_or_else(|| t.to_string()));
    Ok(IncomingKey { tenant: lower, mode, file_name, at })
}

pub fn staged_input(job: &str) -> String {
    format!("{STAGED}{job}/input.json")
}
/// The roster exactly as ingest read it: finalize decodes it again to echo every row.
pub fn staged_source(job: &str) -> String {
    format!("{STAGED}{job}/source")
}
/// A OneRoster bundle as dropped: finalize cuts the failed-records bundle from it.
pub fn staged_bundle(job: &str) -> String {
    format!("{STAGED}{job}/bundle.zip")
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
/// The keys of one phase's chunks: released (`chunks/`) or waiting (`staged/`).
pub fn phase_prefix(job: &str, phase: usize, staged: bool) -> String {
    format!("{}{job}/p{phase}-", if staged { STAGED } else { CHUNKS })
}
pub fn outcomes_prefix(job: &str) -> String {
    format!("{OUTCOMES}{job}/")
}
pub fn ingest_outcomes(job: &str) -> String {
    format!("{OUTCOMES}{job}/ingest.jsonl")
}
/// What a job's changed items were before it, one file per chunk (`undo`).
pub const UNDO: &str = "undo/";
pub fn undo_prefix(job: &str) -> String {
    format!("{UNDO}{job}/")
}
pub fn chunk_undo(job: &str, phase: usize, seq: u32) -> String {
    format!("{UNDO}{job}/{}", chunk_name(phase, seq))
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
    fn a_scheduled_folder_names_a_utc_minute_and_may_hold_a_mode() {
        let k = parse_incoming("incoming/acme/scheduled/2026-12-24T06-30/roster.csv").unwrap();
        assert_eq!(k.at, Some(Ok(chrono::DateTime::parse_from_rfc3339("2026-12-24T06:30:00Z").unwrap().to_utc())));
        assert_eq!(k.mode, Ok(None));
        let k = parse_incoming("incoming/acme/Scheduled/2026-12-24T06-30/replace/roster.csv").unwrap();
        assert_eq!((k.mode, k.file_name.as_str()), (Ok(Some(Mode::Replace)), "roster.csv"));
        // Hostile or mistyped times are kept as written, for the message.
        for bad in [
            "2026-12-24T06:30",
            "2026-13-01T00-00",
            "2026-12-24T25-00",
            "2026-12-24",
            "2026-12-24T06-30-00",
            "tomorrow",
            "２０２６-12-24T06-30",
        ] {
            let k = parse_incoming(&format!("incoming/acme/scheduled/{bad}/r.csv")).unwrap();
            assert_eq!(k.at, Some(Err(bad.to_string())), "{bad}");
        }
        assert!(matches!(parse_incoming("incoming/acme/scheduled/2026-12-24T06-30/add/x/r.csv"), Err(KeyProblem::TooDeep { .. })));
        assert_eq!(parse_incoming("incoming/acme/roster.csv").unwrap().at, None);
    }

    #[test]
    fn keys_that_are_not_drops_are_told_apart() {
        assert_eq!(parse_incoming("results/acme/x"), Err(KeyProblem::NotIncoming));
        assert_eq!(parse_incoming("incoming/file.csv"), Err(KeyProblem::NoTenant { file_name: "file.csv".into() }));
        for marker in ["incoming/", "incoming/acme/", "incoming/acme/add/", "incoming/acme/2026/q1/"] {
            assert_eq!(parse_incoming(marker), Err(KeyProblem::FolderMarker), "{marker}");
        }
        assert_eq!(
            parse_incoming("incoming/Acme Corp/x.csv"),
            Err(KeyProblem::BadTenant { segment: "Acme Corp".into(), file_name: "x.csv".into() })
        );
        assert_eq!(
            parse_incoming("incoming/acme/add/x/y.csv"),
            Err(KeyProblem::TooDeep { tenant: "acme".into(), folder: "incoming/acme/add/x/".into(), file_name: "y.csv".into() })
        );
    }

    #[test]
    fn the_tenant_folder_matches_whatever_its_case() {
        let k = parse_incoming("incoming/Acme/roster.csv").unwrap();
        assert_eq!((k.tenant.as_str(), k.file_name.as_str()), ("acme", "roster.csv"));
        let k = parse_incoming("incoming/ACME/Add/roster.csv").unwrap();
        assert_eq!((k.tenant.as_str(), k.mode), ("acme", Ok(Some(Mode::Add))));
    }

    #[test]
    fn a_misplaced_file_is_told_where_to_go() {
        let deep = parse_incoming("incoming/acme/2026/spring/roster.csv").unwrap_err();
        assert_eq!(deep.tenant(), Some("acme"));
        let reason = deep.reason();
        assert!(reason.contains("incoming/acme/2026/spring/") && reason.contains("incoming/acme/<mode>/"), "{reason}");
        let none = parse_incoming("incoming/roster.csv").unwrap_err();
        assert!(none.reason().contains("directly in incoming/"), "{}", none.reason());
        let long = parse_incoming(&format!("incoming/{}/r.csv", "X ".repeat(400))).unwrap_err();
        assert!(long.reason().len() < 600, "a key segment is quoted in a bounded prefix: {}", long.reason());
    }

    #[test]
    fn chunk_and_done_keys_round_trip() {
        assert_eq!(parse_chunk(&chunk("j1", 1, 42)), Some(("j1".into(), 1, 42)));
        assert_eq!(parse_done(&done("j1")), Some("j1".into()));
        assert_eq!(parse_done("done/"), None);
    }
}
