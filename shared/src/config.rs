//! Configuration, read once from the environment at cold start into a typed struct.
//! A missing or malformed variable fails fast with its name.

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct Config {
    /// The one bucket: incoming/, staged/, chunks/, outcomes/, done/, results/.
    pub bucket: String,
    /// Users, organizations and tenant configuration.
    pub directory_table: String,
    /// Jobs and per-chunk completion records.
    pub jobs_table: String,
    /// Rows per chunk unless the tenant sets its own.
    pub chunk_size: usize,
    /// DynamoDB writes in flight at once inside one apply invocation.
    pub apply_concurrency: usize,
    /// Roster files larger than this are rejected before they are read.
    pub max_file_bytes: u64,
    /// Result files larger than this are linked (presigned URL) instead of attached.
    pub max_attachment_bytes: usize,
    /// How long presigned result links stay valid.
    pub link_ttl_secs: u64,
    /// Sender used when a tenant has none of its own (must be a verified SES identity).
    pub default_sender: String,
    /// The verified SES identity (a domain, or one address) every sender must belong to; the
    /// default sender's own address when unset.
    pub sender_identity: String,
    /// S3 path-style addressing (LocalStack and other S3-compatible endpoints need it).
    pub s3_force_path_style: bool,
    /// Maximum attempts of the SDK's standard retry (exponential backoff with jitter on throttling).
    pub sdk_max_attempts: u32,
    /// The EventBridge bus job events go to (the account's default bus unless set).
    pub event_bus: String,
    /// The SES configuration set invites are sent through (delivery tracking); none locally.
    pub ses_configuration_set: Option<String>,
    /// Activation emails sent per second at most (keep under the account's SES sending rate).
    pub invite_rate_per_sec: f64,
    /// Invites one sweep sends at most (bounded so a sweep fits in the function's timeout).
    pub invite_batch: usize,
    /// A job still open this long after it was received is stopped (FAILED) and its admins told
    /// what was and was not applied.
    pub job_deadline_secs: i64,
    /// Who hears about files no configured tenant can receive (an unknown tenant folder).
    pub default_admins: Vec<String>,
    /// The function's memory (Lambda sets `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`): ingest refuses a file
    /// it could only fail on by running out of memory. `None` (CLI, local runner): no such check.
    pub memory_mb: Option<u64>,
    /// After this long a claim (job email, invite) never marked done is taken over (`model::Lease`).
    pub lease: crate::model::Lease,
}

/// Rows per chunk, the template's `ChunkSize` default. A chunk pays fixed work (its S3 read and
/// write, the job's read and its count) beside its rows; 2,000 rows spread it (README Performance:
/// an unchanged re-upload at about 80% of a raw read of the same keys locally) and keep a chunk of
/// creates around a second of writes per invocation.
pub const DEFAULT_CHUNK_SIZE: usize = 2_000;

/// The most rows a configured chunk holds (the template's `ChunkSize` maximum, a tenant's
/// `chunk_size` too): an apply invocation holds its chunk's rows, their stored users and their
/// outcomes in memory, and a retry redoes the whole chunk. Only a phase of more than 5 million
/// rows has larger chunks (`ingest::chunk_rows`: at most 1,000 chunks a phase).
pub const MAX_CHUNK_SIZE: usize = 5_000;
/// The chunk sizes the functions accept (`ROSTERDROP_CHUNK_SIZE`, a tenant's `chunk_size`).
pub const CHUNK_SIZES: std::ops::RangeInclusive<usize> = 1..=MAX_CHUNK_SIZE;

/// The template's `MaxFileMegabytes` default (150), the same locally: /tmp and memory are sized for it.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 150_000_000;
/// Attachments above this are linked instead (SES takes 40 MB a message, base64 adds a third).
pub const DEFAULT_MAX_ATTACHMENT_BYTES: usize = 7_000_000;

pub const DEFAULT_BUCKET: &str = "rosterdrop-local";
pub const DEFAULT_DIRECTORY_TABLE: &str = "rosterdrop-directory";
pub const DEFAULT_JOBS_TABLE: &str = "rosterdrop-jobs";
pub const DEFAULT_SENDER: &str = "rosterdrop@example.com";

impl Config {
    /// Reads the Lambda environment. Every Lambda sets all required variables (infra/ checks it).
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let required = |k: &str| get(k).filter(|v| !v.trim().is_empty()).ok_or_else(|| Error::Config(format!("{k} is not set")));
        Ok(Config {
            bucket: required("ROSTERDROP_BUCKET")?,
            directory_table: required("ROSTERDROP_DIRECTORY_TABLE")?,
            jobs_table: required("ROSTERDROP_JOBS_TABLE")?,
            default_sender: required("ROSTERDROP_SENDER")?,
            sender_identity: get("ROSTERDROP_SENDER_IDENTITY")
                .filter(|v| !v.trim().is_empty())
                .or_else(|| get("ROSTERDROP_SENDER"))
                .unwrap_or_default(),
            chunk_size: within(parse(&get, "ROSTERDROP_CHUNK_SIZE", DEFAULT_CHUNK_SIZE)?, "ROSTERDROP_CHUNK_SIZE", CHUNK_SIZES)?,
            apply_concurrency: parse(&get, "ROSTERDROP_APPLY_CONCURRENCY", 16)?,
            max_file_bytes: parse(&get, "ROSTERDROP_MAX_FILE_BYTES", DEFAULT_MAX_FILE_BYTES)?,
            max_attachment_bytes: parse(&get, "ROSTERDROP_MAX_ATTACHMENT_BYTES", DEFAULT_MAX_ATTACHMENT_BYTES)?,
            link_ttl_secs: parse(&get, "ROSTERDROP_LINK_TTL_SECS", 7 * 24 * 3600)?,
            s3_force_path_style: parse(&get, "ROSTERDROP_S3_PATH_STYLE", false)?,
            sdk_max_attempts: parse(&get, "ROSTERDROP_SDK_MAX_ATTEMPTS", 8)?,
            event_bus: get("ROSTERDROP_EVENT_BUS").filter(|v| !v.trim().is_empty()).unwrap_or_else(|| "default".into()),
            ses_configuration_set: get("ROSTERDROP_SES_CONFIGURATION_SET").filter(|v| !v.trim().is_empty()),
            invite_rate_per_sec: parse(&get, "ROSTERDROP_INVITE_RATE", 10.0)?,
            invite_batch: parse(&get, "ROSTERDROP_INVITE_BATCH", 500)?,
            // Past two leases: the release sweep works between a job's first lease and its
            // deadline's last (`monitor::resume_releases`). At most a year.
            job_deadline_secs: within(
                parse(&get, "ROSTERDROP_JOB_DEADLINE_SECS", 3 * 3600)?,
                "ROSTERDROP_JOB_DEADLINE_SECS",
                (2 * crate::model::CLAIM_LEASE_SECS as usize + 1)..=366 * 24 * 3600,
            )? as i64,
            default_admins: get("ROSTERDROP_DEFAULT_ADMINS")
                .map(|v| v.split(',').map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect())
                .unwrap_or_default(),
            memory_mb: get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE").and_then(|v| v.trim().parse().ok()),
            lease: crate::model::Lease { secs: crate::model::CLAIM_LEASE_SECS },
        })
    }

    /// The fixed local defaults (README lists them); used by the CLI and tests against the local stack.
    pub fn local() -> Self {
        Config {
            bucket: DEFAULT_BUCKET.into(),
            directory_table: DEFAULT_DIRECTORY_TABLE.into(),
            jobs_table: DEFAULT_JOBS_TABLE.into(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            apply_concurrency: 16,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            max_attachment_bytes: DEFAULT_MAX_ATTACHMENT_BYTES,
            link_ttl_secs: 7 * 24 * 3600,
            default_sender: DEFAULT_SENDER.into(),
            sender_identity: DEFAULT_SENDER.into(),
            s3_force_path_style: true,
            sdk_max_attempts: 8,
            event_bus: "default".into(),
            ses_configuration_set: None,
            invite_rate_per_sec: 10.0,
            invite_batch: 500,
            job_deadline_secs: 3 * 3600,
            default_admins: vec![],
            memory_mb: None,
            lease: crate::model::Lease { secs: crate::model::CLAIM_LEASE_SECS },
        }
    }
}

fn parse<T: std::str::FromStr>(get: &impl Fn(&str) -> Option<String>, key: &str, default: T) -> Result<T> {
    match get(key).filter(|v| !v.trim().is_empty()) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| Error::Config(format!("{key}={v:?} is not a valid value"))),
    }
}

fn within(v: usize, key: &str, range: std::ops::RangeInclusive<usize>) -> Result<usize> {
    if range.contains(&v) { Ok(v) } else { Err(Error::Config(format!("{key}={v} is out of range: {} to {}", range.start(), range.end()))) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn missing_variable_is_named() {
        let err = Config::from_lookup(env(&[("ROSTERDROP_BUCKET", "b")])).unwrap_err();
        assert_eq!(err.to_string(), "configuration: ROSTERDROP_DIRECTORY_TABLE is not set");
    }

    #[test]
    fn malformed_number_is_named_with_its_value() {
        let err = Config::from_lookup(env(&[
            ("ROSTERDROP_BUCKET", "b"),
            ("ROSTERDROP_DIRECTORY_TABLE", "d"),
            ("ROSTERDROP_JOBS_TABLE", "j"),
            ("ROSTERDROP_SENDER", "s@example.com"),
            ("ROSTERDROP_CHUNK_SIZE", "lots"),
        ]))
        .unwrap_err();
        assert_eq!(err.to_string(), "configuration: ROSTERDROP_CHUNK_SIZE=\"lots\" is not a valid value");
    }

    /// The template's `ChunkSize` parameter offers what the functions accept.
    #[test]
    fn the_template_chunk_size_bounds_are_the_functions_own() {
        let template = include_str!("../../infra/template.yaml");
        let block: Vec<&str> = template.lines().skip_while(|l| l.trim() != "ChunkSize:").take(6).collect();
        let value = |key: &str| block.iter().find_map(|l| l.trim().strip_prefix(key)).map(str::trim);
        assert_eq!(value("Default:"), Some(DEFAULT_CHUNK_SIZE.to_string().as_str()), "{block:?}");
        assert_eq!(value("MinValue:"), Some("1"), "{block:?}");
        assert_eq!(value("MaxValue:"), Some(MAX_CHUNK_SIZE.to_string().as_str()), "{block:?}");
    }

    #[test]
    fn a_chunk_size_past_what_one_invocation_holds_is_refused_by_name() {
        let base = [
            ("ROSTERDROP_BUCKET", "b"),
            ("ROSTERDROP_DIRECTORY_TABLE", "d"),
            ("ROSTERDROP_JOBS_TABLE", "j"),
            ("ROSTERDROP_SENDER", "s@x.com"),
        ];
        let with = |size: &'static str| Config::from_lookup(env(&[base.as_slice(), &[("ROSTERDROP_CHUNK_SIZE", size)]].concat()));
        assert_eq!(with("5000").unwrap().chunk_size, MAX_CHUNK_SIZE);
        // The job deadline leaves the release sweep a window (two leases: 2,400 s).
        let deadline =
            |secs: &'static str| Config::from_lookup(env(&[base.as_slice(), &[("ROSTERDROP_JOB_DEADLINE_SECS", secs)]].concat()));
        assert_eq!(deadline("2401").unwrap().job_deadline_secs, 2401);
        for secs in ["2400", "-5", "99999999999"] {
            let err = deadline(secs).map(|_| ()).unwrap_err().to_string();
            assert!(err.starts_with("configuration: ROSTERDROP_JOB_DEADLINE_SECS=") && err.contains(secs), "{err}");
        }
        for (size, shown) in [("5001", "5001"), ("0", "0"), ("18446744073709551615", "18446744073709551615")] {
            let err = with(size).unwrap_err().to_string();
            assert_eq!(err, format!("configuration: ROSTERDROP_CHUNK_SIZE={shown} is out of range: 1 to 5000"));
        }
    }

    #[test]
    fn defaults_apply_when_optional_variables_are_absent() {
        let c = Config::from_lookup(env(&[
            ("ROSTERDROP_BUCKET", "b"),
            ("ROSTERDROP_DIRECTORY_TABLE", "d"),
            ("ROSTERDROP_JOBS_TABLE", "j"),
            ("ROSTERDROP_SENDER", "s@example.com"),
        ]))
        .unwrap();
        assert_eq!(c.chunk_size, DEFAULT_CHUNK_SIZE);
        assert!(!c.s3_force_path_style);
    }
}
