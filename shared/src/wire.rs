//! What the stages hand each other through the bucket, in one place: chunks and outcomes as JSON
//! lines (`RowOp`, `Outcome`, one per line), the staged input finalize reads back. Every stage and
//! the CLI read and write them through this module.

use crate::error::Result;
use serde::{Deserialize, Serialize};

/// What finalize needs from ingest: the input as read (to echo every row) and the warnings.
#[derive(Debug, Serialize, Deserialize)]
pub struct StagedInput {
    pub warnings: Vec<String>,
    pub ingested_at: String,
    /// Key of a copy of the file as ingest read it (`keys::staged_source`): finalize decodes it
    /// again, with the same decoder, rather than ingest writing a JSON copy of every row (which
    /// cost ingest ~10% of its time and more memory than the file itself).
    #[serde(default)]
    pub source: Option<String>,
    /// A OneRoster bundle as dropped (`keys::staged_bundle`): finalize cuts the failed-records
    /// bundle from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
}

pub fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| crate::error::Error::corrupt("json", e))
}

pub fn jsonl<T: Serialize>(items: &[T]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(items.len() * 128);
    for item in items {
        serde_json::to_writer(&mut out, item).map_err(|e| crate::error::Error::corrupt("jsonl", e))?;
        out.push(b'\n');
    }
    Ok(out)
}

pub fn parse_jsonl<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<Vec<T>> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).map_err(|e| crate::error::Error::corrupt(what, e)))
        .collect()
}
