//! What a row changes on a stored user: the result file's `Changes` column ("First Name: Ann ->
//! Anne; Groups: +Staff -Students") and the kind of change its `Status` names. Pure: the stored
//! user comes from apply's batched read, the row from the chunk.

use crate::model::{Action, Change, RowOp, Target, User, UserFields, UserStatus};
use crate::ports::Write;
use crate::wording::bounded;
use serde::{Deserialize, Serialize};

/// A value as the Changes column quotes it: one cell holds every change of a row, so each value
/// is bounded (a spreadsheet cell holds 32,767 characters).
const MAX_VALUE_CHARS: usize = 200;
/// The whole Changes cell.
pub const MAX_CHANGES_CHARS: usize = 4_000;

/// The kind of change a successful write made (`None`: the row changed nothing a kind names,
/// such as an invite sent again).
pub fn kind(action: Action, write: &Write) -> Option<Change> {
    Some(match (write, action) {
        (Write::Created, _) => Change::Created,
        (Write::Deleted, _) => Change::Deleted,
        (Write::Unchanged, _) => Change::Unchanged,
        (Write::Updated, Action::Enable) => Change::Enabled,
        (Write::Updated, Action::Disable | Action::Reconcile) => Change::Disabled,
        (Write::Updated, Action::Invite) => return None,
        (Write::Updated, _) => Change::Updated,
        _ => return None,
    })
}

/// Every field `op` changes on `stored`, as the Changes column shows it; empty when the row
/// creates the user, changes nothing, or is not about a user.
pub fn describe(op: &RowOp, stored: Option<&User>, change: Change) -> String {
    let (Target::User { fields, .. }, Some(user)) = (&op.target, stored) else { return String::new() };
    let mut parts: Vec<String> = Vec::new();
    match change {
        Change::Created | Change::Unchanged | Change::Read => {}
        Change::Deleted => parts.push(status(user.status, "deleted")),
        Change::Disabled => {
            if user.status != UserStatus::Disabled {
                parts.push(status(user.status, "disabled"));
            }
            if op.action == Action::Reconcile {
                // Replace mode strips every group assignment and the department.
                let mut all = user.fields.groups.clone();
                all.extend(user.manual_groups.iter().cloned());
                list(&mut parts, "Groups", &[], &all);
                field(&mut parts, "Department", &user.fields.department, &None);
            }
        }
        Change::Enabled => {
            if user.status != UserStatus::Active {
                parts.push(status(user.status, "active"));
            }
        }
        Change::Updated if op.action == Action::Expire => {
            let gone: Vec<String> = if fields.products.is_empty() {
                user.fields.products.clone()
            } else {
                fields.products.iter().filter(|p| user.fields.products.contains(p)).cloned().collect()
            };
            list(&mut parts, "Products", &[], &gone);
        }
        Change::Updated => profile(&mut parts, fields, &user.fields),
    }
    bounded(&parts.join("; "), MAX_CHANGES_CHARS - 1)
}

fn profile(parts: &mut Vec<String>, row: &UserFields, s: &UserFields) {
    for (name, new, old) in [
        ("Type", &row.user_type, &s.user_type),
        ("First Name", &row.first_name, &s.first_name),
        ("Last Name", &row.last_name, &s.last_name),
        ("Phone", &row.phone, &s.phone),
        ("OrgName", &row.org, &s.org),
        ("RoleName", &row.role, &s.role),
        ("Department", &row.department, &s.department),
        ("LicencePool", &row.licence_pool, &s.licence_pool),
        ("ExternalId", &row.external_id, &s.external_id),
    ] {
        if new.is_some() && new != old {
            field(parts, name, old, new);
        }
    }
    if !row.groups.is_empty() && !crate::rules::same_groups(&row.groups, &s.groups) {
        let added: Vec<String> = row.groups.iter().filter(|g| !s.groups.contains(g)).cloned().collect();
        let removed: Vec<String> = s.groups.iter().filter(|g| !row.groups.contains(g)).cloned().collect();
        list(parts, "Groups", &added, &removed);
    }
    let granted: Vec<String> = row.products.iter().filter(|p| !s.products.contains(p)).cloned().collect();
    list(parts, "Products", &granted, &[]);
    for (k, v) in &row.associations {
        if s.associations.get(k) != Some(v) {
            field(parts, &crate::apply::association_column(k), &s.associations.get(k).cloned(), &Some(v.clone()));
        }
    }
    for (k, v) in &row.attributes {
        if s.attributes.get(k) != Some(v) {
            field(parts, k, &s.attributes.get(k).cloned(), &Some(v.clone()));
        }
    }
}

fn value(v: &Option<String>) -> String {
    match v {
        Some(v) if !v.is_empty() => format!("\"{}\"", bounded(v, MAX_VALUE_CHARS)),
        _ => "(empty)".into(),
    }
}

fn field(parts: &mut Vec<String>, name: &str, old: &Option<String>, new: &Option<String>) {
    if old.as_deref().unwrap_or("") != new.as_deref().unwrap_or("") {
        parts.push(format!("{name}: {} -> {}", value(old), value(new)));
    }
}

fn status(old: UserStatus, new: &str) -> String {
    format!("Status: {} -> {new}", old.as_str())
}

/// "Groups: +Staff +Teachers -Students".
fn list(parts: &mut Vec<String>, name: &str, added: &[String], removed: &[String]) {
    if added.is_empty() && removed.is_empty() {
        return;
    }
    let items = added
        .iter()
        .map(|a| format!("+{}", bounded(a, MAX_VALUE_CHARS)))
        .chain(removed.iter().map(|r| format!("-{}", bounded(r, MAX_VALUE_CHARS))));
    parts.push(format!("{name}: {}", items.collect::<Vec<_>>().join(" ")));
}

/// How many rows of a job made (or, in a dry run, would make) each kind of change.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeCounts {
    pub created: u32,
    pub updated: u32,
    pub unchanged: u32,
    pub deleted: u32,
    pub disabled: u32,
    pub enabled: u32,
}

impl ChangeCounts {
    pub fn add(&mut self, change: Change) {
        if change == Change::Read {
            return;
        }
        *match change {
            Change::Created => &mut self.created,
            Change::Updated => &mut self.updated,
            Change::Unchanged => &mut self.unchanged,
            Change::Deleted => &mut self.deleted,
            Change::Disabled => &mut self.disabled,
            Change::Enabled | Change::Read => &mut self.enabled,
        } += 1;
    }

    /// "3 created, 10 updated, 200 unchanged, 1 deleted": the kinds that occurred.
    pub fn words(&self) -> String {
        let parts: Vec<String> = [
            (self.created, "created"),
            (self.updated, "updated"),
            (self.unchanged, "unchanged"),
            (self.deleted, "deleted"),
            (self.disabled, "disabled"),
            (self.enabled, "enabled"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, w)| format!("{n} {w}"))
        .collect();
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn stored() -> User {
        User {
            email: "ann@acme.example.com".into(),
            status: UserStatus::Active,
            fields: UserFields {
                first_name: Some("Ann".into()),
                last_name: Some("Lee".into()),
                groups: vec!["Staff".into(), "Students".into()],
                products: vec!["lms".into()],
                department: Some("Math".into()),
                associations: BTreeMap::from([("supervisor".into(), "boss@acme.example.com".into())]),
                ..UserFields::default()
            },
            created_by: "j#2".into(),
            last_write: "j#2".into(),
            manual_groups: vec!["Club".into()],
            activated: false,
            user_id: None,
        }
    }

    fn op(action: Action, fields: UserFields) -> RowOp {
        RowOp {
            row: 2,
            action,
            target: Target::User { email: "ann@acme.example.com".into(), fields },
            created_in_file: vec![],
            restore: None,
        }
    }

    #[test]
    fn an_update_names_each_field_it_changes_with_old_and_new_values_and_groups_as_added_and_removed() {
        let row = UserFields {
            first_name: Some("Anne".into()),
            last_name: Some("Lee".into()),
            phone: Some("+1 555 0100".into()),
            groups: vec!["Staff".into(), "Teachers".into()],
            products: vec!["lms".into(), "video".into()],
            associations: BTreeMap::from([("supervisor".into(), "chief@acme.example.com".into())]),
            ..UserFields::default()
        };
        assert_eq!(
            describe(&op(Action::Upsert, row), Some(&stored()), Change::Updated),
            "First Name: \"Ann\" -> \"Anne\"; Phone: (empty) -> \"+1 555 0100\"; Groups: +Teachers -Students; Products: +video; \
             Supervisor: \"boss@acme.example.com\" -> \"chief@acme.example.com\""
        );
    }

    #[test]
    fn status_changes_and_replace_mode_s_group_removal_are_shown() {
        let u = stored();
        assert_eq!(describe(&op(Action::Disable, UserFields::default()), Some(&u), Change::Disabled), "Status: active -> disabled");
        assert_eq!(describe(&op(Action::Delete, UserFields::default()), Some(&u), Change::Deleted), "Status: active -> deleted");
        assert_eq!(
            describe(&op(Action::Reconcile, UserFields::default()), Some(&u), Change::Disabled),
            "Status: active -> disabled; Groups: -Staff -Students -Club; Department: \"Math\" -> (empty)"
        );
        let off = User { status: UserStatus::Disabled, ..stored() };
        assert_eq!(describe(&op(Action::Enable, UserFields::default()), Some(&off), Change::Enabled), "Status: disabled -> active");
        assert_eq!(describe(&op(Action::Disable, UserFields::default()), Some(&off), Change::Disabled), "", "already disabled");
        let strip = op(Action::Expire, UserFields { products: vec!["lms".into(), "none".into()], ..UserFields::default() });
        assert_eq!(describe(&strip, Some(&u), Change::Updated), "Products: -lms");
    }

    #[test]
    fn a_created_or_unchanged_row_and_an_unknown_user_have_no_changes() {
        let row = UserFields { first_name: Some("Zed".into()), ..UserFields::default() };
        assert_eq!(describe(&op(Action::Upsert, row.clone()), None, Change::Created), "");
        assert_eq!(describe(&op(Action::Upsert, row), Some(&stored()), Change::Unchanged), "");
    }

    /// Hostile values: a cell of 32,767 characters in every field stays a bounded Changes cell.
    #[test]
    fn huge_values_keep_the_changes_cell_within_a_spreadsheet_cell() {
        let big = "x".repeat(32_767);
        let row = UserFields {
            first_name: Some(big.clone()),
            last_name: Some(big.clone()),
            department: Some(big.clone()),
            groups: (0..500).map(|i| format!("{big}{i}")).collect(),
            attributes: (0..50).map(|i| (format!("a{i}"), big.clone())).collect(),
            ..UserFields::default()
        };
        let text = describe(&op(Action::Update, row), Some(&stored()), Change::Updated);
        assert!(text.chars().count() <= MAX_CHANGES_CHARS, "{}", text.len());
        assert!(text.starts_with("First Name: \"Ann\" -> \"xxx"));
    }

    #[test]
    fn kinds_follow_the_write_and_the_action() {
        assert_eq!(kind(Action::Upsert, &Write::Created), Some(Change::Created));
        assert_eq!(kind(Action::Reconcile, &Write::Updated), Some(Change::Disabled));
        assert_eq!(kind(Action::Enable, &Write::Updated), Some(Change::Enabled));
        assert_eq!(kind(Action::Invite, &Write::Updated), None);
        assert_eq!(kind(Action::Create, &Write::AlreadyExists), None);
        let mut c = ChangeCounts::default();
        c.add(Change::Created);
        c.add(Change::Unchanged);
        c.add(Change::Unchanged);
        assert_eq!(c.words(), "1 created, 2 unchanged");
    }
}
