//! What finalize keeps of a job's rows while it streams them: counts and the first few problems,
//! bounded whatever the file's size, for `summary.json` and the email.

use crate::model::{Change, Outcome, Status};
use crate::report::Counts;
use std::collections::BTreeMap;

/// Failures listed in the email; the failed-rows file has them all.
pub const FIRST_FAILURES: usize = 10;
/// Warnings kept; more are counted.
pub const MAX_WARNINGS: usize = 20;
/// Created users whose ids `summary.json` lists; the result file's UserId column has them all.
pub const MAX_CREATED_IDS: usize = 10_000;
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
    /// (row, id) of the first `MAX_CREATED_IDS` users the job created, and how many more.
    pub created_ids: Vec<(u32, String)>,
    pub more_created_ids: u32,
}

impl Digest {
    pub fn add(&mut self, o: &Outcome) {
        self.rows += 1;
        self.counts.add_outcome(o);
        let action = o.action.map(|a| a.to_string()).unwrap_or_else(|| "(invalid Type or Action)".into());
        self.by_action.entry(action).or_default().add_outcome(o);
        if let (Some(Change::Created), Some(id)) = (o.change, &o.user_id) {
            if self.created_ids.len() < MAX_CREATED_IDS {
                self.created_ids.push((o.row, id.clone()));
            } else {
                self.more_created_ids += 1;
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Action;

    /// However many users a file creates, the digest keeps a bounded list of their ids.
    #[test]
    fn created_ids_are_listed_up_to_the_bound_and_the_rest_counted() {
        let mut d = Digest::default();
        let extra = 5;
        for row in 0..(MAX_CREATED_IDS + extra) as u32 {
            let created = Outcome {
                change: Some(Change::Created),
                user_id: Some(format!("id-{row}")),
                ..Outcome::success(row, Action::Create, "created")
            };
            d.add(&created);
        }
        d.add(&Outcome {
            change: Some(Change::Unchanged),
            user_id: Some("old".into()),
            ..Outcome::success(0, Action::Upsert, "unchanged")
        });
        assert_eq!(d.created_ids.len(), MAX_CREATED_IDS);
        assert_eq!(d.more_created_ids, extra as u32);
        assert_eq!(d.created_ids[7], (7, "id-7".to_string()));
    }
}
