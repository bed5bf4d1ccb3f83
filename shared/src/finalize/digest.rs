//! What finalize keeps of a job's rows while it streams them: counts and the first few problems,
//! bounded whatever the file's size, for `summary.json` and the email.

use crate::model::{Outcome, Status};
use crate::report::Counts;
use std::collections::BTreeMap;

/// Failures listed in the email; the failed-rows file has them all.
pub const FIRST_FAILURES: usize = 10;
/// Warnings kept; more are counted.
pub const MAX_WARNINGS: usize = 20;
/// A message as the email quotes it.
pub const MAX_MESSAGE_CHARS: usize = 500;

use crate::wording::bounded;

#[derive(Debug, Default, Clone)]
pub struct Digest {
    pub rows: u32,
    pub counts: Counts,
    pub by_action: BTreeMap<String, Counts>,
    /// (row, message) of the first failures, messages cut to `MAX_MESSAGE_CHARS`.
    pub first_failures: Vec<(u32, String)>,
    /// Rows not applied because the job was stopped.
    pub not_applied: u32,
    pub warnings: Vec<String>,
    pub more_warnings: usize,
    /// Replace mode: users absent from the file that were disabled.
    pub disabled: u32,
    pub format: Option<String>,
}

impl Digest {
    pub fn add(&mut self, o: &Outcome) {
        self.rows += 1;
        self.counts.add_outcome(o);
        let action = o.action.map(|a| a.to_string()).unwrap_or_else(|| "(invalid Type or Action)".into());
        self.by_action.entry(action).or_default().add_outcome(o);
        if o.status == Status::Failure {
            if o.message == super::build::NOT_APPLIED {
                self.not_applied += 1;
            }
            if self.first_failures.len() < FIRST_FAILURES {
                self.first_failures.push((o.row, bounded(&o.message, MAX_MESSAGE_CHARS)));
            }
        }
    }

    pub fn disabled(&mut self, o: &Outcome) {
        if o.status == Status::Success {
            self.disabled += 1;
        }
    }

    pub fn warn(&mut self, w: String) {
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(bounded(&w, MAX_MESSAGE_CHARS));
        } else {
            self.more_warnings += 1;
        }
    }
}
