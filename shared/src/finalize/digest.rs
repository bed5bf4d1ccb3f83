//! What finalize keeps of a job's rows while it streams them: counts and the first few problems,
//! bounded whatever the file's size, for `summary.json` and the email.

use crate::model::{Change, Outcome, Status};
use crate::report::Counts;
use std::collections::BTreeMap;

/// Failures listed in the email; the failed-rows file has them all.
pub const FIRST_FAILURES: usize = 10;
/// Warnings kept; more are counted.
pub const MAX_WARNINGS: usize = 20;
/// Kinds of problem kept (distinct messages); rows of more kinds are counted.
pub const MAX_PROBLEM_KINDS: usize = 500;
/// Rows named per kind of problem; the rest are counted ("and 9 more").
pub const ROWS_PER_PROBLEM: usize = 5;

/// One kind of problem: the same message (which names the value and the fix) on many rows.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    pub count: u32,
    /// The first rows, as a person reads them ("row 9", "row 3 of sheet Staff").
    pub rows: Vec<String>,
    /// Rows beyond those named.
    #[serde(default)]
    pub more_rows: u32,
    /// The rows of this kind name different values (`message` is the first row's).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub varied: bool,
}

/// What makes two messages the same kind of problem: the message with its quoted values, email
/// addresses and row numbers left out ("Email \"a@@x\" is not a valid email address" and
/// "Email \"b@@y\" is ..." are one kind; "unknown role \"learner\"" stays apart from messages
/// about other columns).
pub fn kind_of(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for word in message.split_inclusive(|c: char| c == '"' || c.is_whitespace()) {
        if quoted {
            // `\"` is a quote inside the value (`wording::quoted`), not its end; `\\"` is a
            // backslash, then the end: an odd run of backslashes escapes the quote.
            let escaped = word.strip_suffix('"').is_some_and(|w| (w.len() - w.trim_end_matches('\\').len()) % 2 == 1);
            if word.ends_with('"') && !escaped {
                quoted = false;
                out.push_str("\u{2026}\"");
            }
            continue;
        }
        if word.ends_with('"') && word.matches('"').count() == 1 {
            out.push_str(word);
            quoted = true;
        } else if word.contains('@')
            || word.trim_end_matches([',', ';', '.', ' ']).chars().all(|c| c.is_ascii_digit()) && !word.trim().is_empty()
        {
            out.push('\u{2026}');
            out.push_str(&word[word.trim_end().len()..]);
        } else {
            out.push_str(word);
        }
    }
    out
}

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
    /// Rows of a stopped job whose part was being applied: maybe applied.
    pub not_confirmed: u32,
    pub warnings: Vec<String>,
    pub more_warnings: usize,
    /// Replace mode: users absent from the file that were disabled.
    pub disabled: u32,
    pub format: Option<String>,
    /// (row, id) of the first `MAX_CREATED_IDS` users the job created, and how many more.
    pub created_ids: Vec<(u32, String)>,
    pub more_created_ids: u32,
    /// Failures grouped by message, in the order first seen (`problems` sorts them).
    groups: Vec<Problem>,
    group_of: std::collections::HashMap<String, usize>,
    /// Failed rows whose kind of problem was past `MAX_PROBLEM_KINDS`.
    pub rows_of_other_problems: u32,
    /// (first row id, sheet name) of each sheet of a workbook of several.
    pub sheets: Vec<(u32, String)>,
}

impl Digest {
    pub fn add(&mut self, o: &Outcome) {
        // A OneRoster record read into other rows: its own row in the result, not a row applied.
        if o.change == Some(crate::model::Change::Read) {
            return;
        }
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
            } else if o.message == super::build::NOT_CONFIRMED {
                self.not_confirmed += 1;
            } else {
                self.group(o);
            }
            if self.first_failures.len() < FIRST_FAILURES {
                self.first_failures.push((o.row, bounded(&o.message, MAX_MESSAGE_CHARS)));
            }
        }
    }

    fn group(&mut self, o: &Outcome) {
        let message = bounded(&o.message, MAX_MESSAGE_CHARS);
        let kind = format!("{}\u{0}{}", o.column.as_deref().unwrap_or_default(), kind_of(&message));
        let label = self.row_label(o.row);
        let index = match self.group_of.get(&kind) {
            Some(i) => {
                let g = &mut self.groups[*i];
                g.varied |= g.message != message;
                *i
            }
            None if self.groups.len() < MAX_PROBLEM_KINDS => {
                let p = Problem { message, column: o.column.clone(), count: 0, rows: vec![], more_rows: 0, varied: false };
                self.groups.push(p);
                self.group_of.insert(kind, self.groups.len() - 1);
                self.groups.len() - 1
            }
            None => {
                self.rows_of_other_problems += 1;
                return;
            }
        };
        let g = &mut self.groups[index];
        g.count += 1;
        if g.rows.len() < ROWS_PER_PROBLEM {
            g.rows.push(label);
        } else {
            g.more_rows += 1;
        }
    }

    /// The kinds of problem, most frequent first (then in file order).
    pub fn problems(&self) -> Vec<Problem> {
        let mut p = self.groups.clone();
        p.sort_by_key(|g| std::cmp::Reverse(g.count)); // stable: ties keep file order
        p
    }

    /// A row id as the file numbers it: (its sheet when the file has several, its row there).
    /// The id itself is `sheet index * 10,000,000 + row`, which no person reads.
    pub fn place(&self, id: u32) -> (Option<String>, u32) {
        match self.sheets.iter().rev().find(|(offset, _)| id >= *offset) {
            Some((offset, sheet)) if self.sheets.len() > 1 => (Some(sheet.clone()), id - offset),
            _ => (None, id % crate::ingest::sheets::SHEET_STRIDE),
        }
    }

    /// A row id as a person reads it.
    pub fn row_label(&self, id: u32) -> String {
        match self.sheets.iter().rev().find(|(offset, _)| id >= *offset) {
            Some((offset, sheet)) if self.sheets.len() > 1 => format!("row {} of sheet {sheet}", id - offset),
            _ => format!("row {}", id % crate::ingest::sheets::SHEET_STRIDE),
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

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Whatever the messages (quotes, addresses, digits, any Unicode): grouping never panics,
        /// stays within its bounds, loses no failed row (listed or counted), and the email's HTML
        /// of the groups carries no markup from them.
        #[test]
        fn any_failure_messages_are_grouped_within_bounds_and_escaped(
            messages in proptest::collection::vec("(<zz)?[\\PC\"@<>&0-9 ]{0,40}", 1..300)
        ) {
            let mut d = Digest::default();
            for (i, m) in messages.iter().enumerate() {
                d.add(&Outcome::failure(i as u32 + 2, Some(Action::Upsert), m.as_str()));
            }
            let p = d.problems();
            proptest::prop_assert!(p.len() <= MAX_PROBLEM_KINDS);
            let counted: u64 = p.iter().map(|g| u64::from(g.count)).sum::<u64>() + u64::from(d.rows_of_other_problems);
            proptest::prop_assert_eq!(counted, messages.len() as u64);
            for g in &p {
                proptest::prop_assert!(g.rows.len() <= ROWS_PER_PROBLEM);
                proptest::prop_assert_eq!(g.rows.len() as u32 + g.more_rows, g.count);
            }
            let html = crate::layout::problems_html(&p, d.rows_of_other_problems);
            // "<zz" opens no tag of ours: it can only come from a message, unescaped.
            proptest::prop_assert!(!html.contains("<zz"));
            for g in p.iter().take(crate::layout::PROBLEMS_SHOWN) {
                proptest::prop_assert!(html.contains(&crate::report::esc(&g.message)));
            }
        }
    }

    /// Messages that differ only in the value they quote, an address or a row number are one
    /// kind of problem; a message about another thing is another kind.
    #[test]
    fn messages_differing_only_in_their_values_are_one_kind_of_problem() {
        let k = |m: &str| kind_of(m);
        assert_eq!(k("Email \"a@@x\" is not a valid email address"), k("Email \"b @ y\" is not a valid email address"));
        assert_eq!(
            k(
                "duplicate email: row 14 of this file already has a@x.com; only the first row is applied. Fix this row if it is another one, or delete it: dropped again as it is, it would change what the first row applied"
            ),
            k(
                "duplicate email: row 9 of this file already has b@y.com; only the first row is applied. Fix this row if it is another one, or delete it: dropped again as it is, it would change what the first row applied"
            )
        );
        assert_ne!(k("unknown role \"x\"; did you mean \"X\"?"), k("Email \"x\" is not a valid email address"));
        // A value with quotes of its own, as `wording::quoted` writes it, is one value.
        let role = |v: &str| format!("unknown role \"{}\"; did you mean \"Learner\"?", crate::wording::quoted(v));
        assert_eq!(k(&role("\"quoted\" & 'single'")), k(&role("plain")));
        assert_eq!(k(&role("\"")), k(&role("a \"b\" c")));
        assert_eq!(k(&role("HR\\")), k(&role("plain")), "a trailing backslash ends nothing early");
        assert_eq!(k("no quotes at all"), "no quotes at all");
        assert_eq!(k("an \"unclosed quote"), k("an \"other unclosed"), "no panic on odd quoting");
        let mut d = Digest::default();
        for (row, m) in [(2, "Email \"a@@x\" is not valid"), (3, "Email \"b@@x\" is not valid"), (4, "RoleName \"Admin\" is an admin role")]
        {
            d.add(&Outcome::failure(row, Some(Action::Upsert), m));
        }
        let p = d.problems();
        assert_eq!((p.len(), p[0].count, p[0].varied, p[1].varied), (2, 2, true, false));
        assert_eq!(p[0].message, "Email \"a@@x\" is not valid", "the first row's message stands for the kind");
    }
}
