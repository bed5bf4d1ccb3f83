//! Row validation and normalisation. Every data row ends as either a `RowOp` to apply or an
//! `Outcome` saying exactly what to fix (row, column, problem).

use super::decode::Table;
use super::headers::{Field, Mapping};
use crate::model::{Action, EntityType, Mode, Outcome, RowOp, Target, Tenant, UserFields};
use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct Validated {
    pub ops: Vec<RowOp>,
    /// Rows that failed validation or were skipped: final outcomes, never applied.
    pub outcomes: Vec<Outcome>,
}

pub fn validate(table: &Table, mapping: &Mapping, tenant: &Tenant, mode: Mode) -> Validated {
    let mut out = Validated::default();
    // key -> first row that used it ("the first wins, later ones fail naming the first row")
    let mut seen: HashMap<(EntityType, String), u32> = HashMap::new();
    let width = table.headers.len();
    for (row, cells) in &table.rows {
        let row = *row;
        if cells.iter().all(|c| c.trim().is_empty()) {
            out.outcomes.push(Outcome::skipped(row, "empty row"));
            continue;
        }
        if let Some(extra) = cells.iter().skip(width).position(|c| !c.trim().is_empty()) {
            out.outcomes.push(Outcome::failure(
                row,
                None,
                format!("column {} has a value but no header; add a header or remove the value", width + extra + 1),
            ));
            continue;
        }
        match validate_row(row, cells, mapping, tenant, mode) {
            Err((action, msg)) => out.outcomes.push(Outcome::failure(row, action, msg)),
            Ok(op) => {
                let key = match &op.target {
                    Target::User { email, .. } => (EntityType::User, email.clone()),
                    Target::Org { name } => (EntityType::Org, name.to_lowercase()),
                };
                if let Some(first) = seen.get(&key) {
                    let what = if key.0 == EntityType::User { "email" } else { "organization" };
                    out.outcomes.push(Outcome::failure(
                        row,
                        Some(op.action),
                        format!("duplicate {what}: row {first} of this file already has {}; only the first row is applied", key.1),
                    ));
                } else {
                    seen.insert(key, row);
                    out.ops.push(op);
                }
            }
        }
    }
    out
}

type RowError = (Option<Action>, String);

fn validate_row(row: u32, cells: &[String], m: &Mapping, tenant: &Tenant, mode: Mode) -> Result<RowOp, RowError> {
    let get =
        |f: Field| -> Option<String> { m.column(f).and_then(|i| cells.get(i)).map(|v| v.trim().to_string()).filter(|v| !v.is_empty()) };
    let _ = row;
    let entity = match get(Field::Type) {
        None => EntityType::User,
        Some(t) => match t.to_ascii_lowercase().as_str() {
            "user" | "person" | "student" | "learner" | "employee" => EntityType::User,
            "org" | "organization" | "organisation" => EntityType::Org,
            _ => return Err((None, format!("Type \"{t}\" is not one of User, Org"))),
        },
    };
    let raw_action = get(Field::Action).unwrap_or_default();
    let mut action = Action::parse(&raw_action)
        .ok_or_else(|| (None, format!("Action \"{raw_action}\" is not one of {} (blank means Upsert)", Action::NAMES.join(", "))))?;
    if mode == Mode::Add {
        action = match action {
            Action::Upsert | Action::Create => Action::Create,
            other => {
                return Err((
                    Some(other),
                    format!("Action {other} is not allowed in add mode, which only creates; upload to the upsert folder instead"),
                ));
            }
        };
    }
    let fail = |msg: String| (Some(action), msg);
    match entity {
        EntityType::Org => {
            let name = get(Field::OrgName).ok_or_else(|| fail("OrgName is empty; an Org row needs the organization's name".into()))?;
            if !matches!(action, Action::Create | Action::Update | Action::Upsert | Action::Delete) {
                return Err(fail(format!("Action {action} does not apply to organizations (use Create, Update, Upsert or Delete)")));
            }
            Ok(RowOp { row, action, target: Target::Org { name } })
        }
        EntityType::User => {
            let raw = get(Field::Email).ok_or_else(|| fail("Email is empty; every user row needs an email address".into()))?;
            let email = raw.to_lowercase();
            if !is_valid_email(&email) {
                return Err(fail(format!("Email \"{raw}\" is not a valid email address")));
            }
            let role = get(Field::RoleName);
            if let Some(r) = &role {
                check_role(r, tenant).map_err(fail)?;
            }
            let groups = get(Field::Group)
                .map(|g| g.split(';').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
                .unwrap_or_default();
            let fields = UserFields {
                first_name: get(Field::FirstName),
                last_name: get(Field::LastName),
                phone: get(Field::Phone),
                org: get(Field::OrgName),
                role,
                department: get(Field::Department),
                groups,
            };
            Ok(RowOp { row, action, target: Target::User { email, fields } })
        }
    }
}

/// A real address check (RFC 5322 via `email_address`), plus a dot in the domain: rosters are for
/// people with internet mail, and `ann@localhost` is always a typo there.
fn is_valid_email(email: &str) -> bool {
    email_address::EmailAddress::parse_with_options(
        email,
        email_address::Options::default().without_display_text().without_domain_literal(),
    )
    .is_ok()
        && email.rsplit_once('@').is_some_and(|(_, d)| d.contains('.') && !d.ends_with('.'))
}

/// Roles are exact and case-sensitive; admin roles are never assignable by file.
fn check_role(role: &str, tenant: &Tenant) -> Result<(), String> {
    if tenant.admin_roles.iter().any(|a| a.eq_ignore_ascii_case(role)) {
        return Err(format!("role \"{role}\" is an admin role and cannot be assigned by bulk upload; ask an administrator to grant it"));
    }
    if tenant.roles.iter().any(|r| r == role) {
        return Ok(());
    }
    let near = tenant
        .roles
        .iter()
        .map(|r| (strsim::jaro_winkler(&r.to_lowercase(), &role.to_lowercase()), r))
        .filter(|(score, _)| *score > 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    Err(match near {
        Some((_, r)) => format!("unknown role \"{role}\"; did you mean \"{r}\"?"),
        None if tenant.roles.is_empty() => {
            format!("unknown role \"{role}\"; this tenant has no roles configured")
        }
        None => format!("unknown role \"{role}\"; valid roles are: {}", tenant.roles.join(", ")),
    })
}

#[cfg(test)]
mod tests {
    use super::super::decode::decode;
    use super::super::headers::map_headers;
    use super::*;
    use crate::model::Status;

    fn tenant() -> Tenant {
        Tenant {
            id: "acme".into(),
            name: None,
            admin_emails: vec!["a@acme.com".into()],
            sender: None,
            roles: vec!["Learner".into(), "Manager".into()],
            admin_roles: vec!["Admin".into()],
            strict_template: false,
            template_columns: vec![],
            chunk_size: None,
        }
    }

    fn run(csv: &str, mode: Mode) -> Validated {
        let t = decode(csv.as_bytes()).unwrap();
        let m = map_headers(&t.headers, &tenant()).unwrap();
        validate(&t, &m, &tenant(), mode)
    }

    fn message(v: &Validated, row: u32) -> String {
        v.outcomes.iter().find(|o| o.row == row).map(|o| o.message.clone()).unwrap_or_else(|| panic!("no outcome for row {row}: {v:?}"))
    }

    #[test]
    fn values_are_trimmed_and_emails_lower_cased() {
        let v = run("Email,First Name,Group\n  Ann@X.COM , Ann ,a; b;;\n", Mode::Upsert);
        let Target::User { email, fields } = &v.ops[0].target else { panic!() };
        assert_eq!(email, "ann@x.com");
        assert_eq!(fields.first_name.as_deref(), Some("Ann"));
        assert_eq!(fields.groups, vec!["a", "b"]);
        assert_eq!(v.ops[0].action, Action::Upsert);
    }

    #[test]
    fn invalid_email_names_the_value() {
        let v = run("Email\nann@@x.com\nbob@localhost\n", Mode::Upsert);
        assert_eq!(message(&v, 2), "Email \"ann@@x.com\" is not a valid email address");
        assert_eq!(message(&v, 3), "Email \"bob@localhost\" is not a valid email address");
        assert!(v.ops.is_empty());
    }

    #[test]
    fn duplicates_fail_naming_the_first_row() {
        let v = run("Email\na@x.com\nb@x.com\nA@X.com\n", Mode::Upsert);
        assert_eq!(v.ops.len(), 2);
        assert_eq!(message(&v, 4), "duplicate email: row 2 of this file already has a@x.com; only the first row is applied");
    }

    #[test]
    fn roles_are_exact_with_a_suggestion_and_admin_roles_refused() {
        let v = run("Email,Role\na@x.com,learner\nb@x.com,Admin\nc@x.com,Pilot\nd@x.com,Learner\n", Mode::Upsert);
        assert_eq!(message(&v, 2), "unknown role \"learner\"; did you mean \"Learner\"?");
        assert!(message(&v, 3).contains("admin role"));
        assert_eq!(message(&v, 4), "unknown role \"Pilot\"; valid roles are: Learner, Manager");
        assert_eq!(v.ops.len(), 1);
    }

    #[test]
    fn type_and_action_are_case_insensitive_enums() {
        let v = run(
            "Type,Action,Email,OrgName\nORG,create,,North\nuser,DELETE,a@x.com,\nrobot,,b@x.com,\nUser,Explode,c@x.com,\n",
            Mode::Upsert,
        );
        assert_eq!(v.ops.len(), 2);
        assert_eq!(v.ops[0].target, Target::Org { name: "North".into() });
        assert_eq!(v.ops[1].action, Action::Delete);
        assert_eq!(message(&v, 4), "Type \"robot\" is not one of User, Org");
        assert!(message(&v, 5).starts_with("Action \"Explode\" is not one of Create, Update"));
    }

    #[test]
    fn add_mode_turns_upserts_into_creates_and_refuses_other_actions() {
        let v = run("Action,Email\n,a@x.com\nDelete,b@x.com\n", Mode::Add);
        assert_eq!(v.ops[0].action, Action::Create);
        assert!(message(&v, 3).contains("not allowed in add mode"));
    }

    #[test]
    fn empty_rows_in_the_middle_are_skipped_not_lost() {
        let v = run("Email,FirstName\na@x.com,A\n,\nb@x.com,B\n", Mode::Upsert);
        assert_eq!(v.ops.len(), 2);
        assert_eq!(v.outcomes.len(), 1);
        assert_eq!((v.outcomes[0].row, v.outcomes[0].status), (3, Status::Skipped));
    }

    #[test]
    fn a_value_beyond_the_header_fails_its_row() {
        let v = run("Email,FirstName\na@x.com,A,surprise\n", Mode::Upsert);
        assert_eq!(message(&v, 2), "column 3 has a value but no header; add a header or remove the value");
    }
}
