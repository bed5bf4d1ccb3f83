//! A chunk line read in one pass. `RowOp`'s JSON is flat (its `Target`, tagged by `type`, and
//! the user's fields all sit at the top level), which serde's derive reads through `flatten`:
//! every line buffered into an intermediate tree twice before it is read. Apply reads every line
//! of every chunk before its users (`make bench`: 6 ms of a 2,000-row chunk); this reads the same
//! JSON straight into its fields. Written lines stay serde's own (`RowOp`'s `Serialize`).

use crate::model::{Action, Restore, RowOp, Target, UserFields};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
enum Kind {
    User,
    Org,
}

/// Every key a `RowOp` line may have. A field `UserFields` or `Target` gains must be added here:
/// `every_field_of_a_row_survives_the_chunk_line` lists them all and fails to compile otherwise.
#[derive(Deserialize)]
pub struct RowLine {
    row: u32,
    action: Action,
    #[serde(rename = "type")]
    kind: Kind,
    #[serde(default)]
    created_in_file: Vec<String>,
    #[serde(default)]
    restore: Option<Restore>,
    /// User: its key; Org: its contact email.
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    parent: Option<String>,
    /// Both a user's and an organization's.
    #[serde(default)]
    phone: Option<String>,
    #[serde(default)]
    external_id: Option<String>,
    #[serde(default)]
    first_name: Option<String>,
    #[serde(default)]
    last_name: Option<String>,
    #[serde(default)]
    org: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    department: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    products: Vec<String>,
    #[serde(default)]
    associations: BTreeMap<String, String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(default)]
    user_type: Option<String>,
    #[serde(default)]
    invite: bool,
    #[serde(default)]
    invite_at: Option<String>,
    #[serde(default)]
    licence_pool: Option<String>,
    #[serde(default)]
    new_email: Option<String>,
    #[serde(default)]
    username: Option<String>,
}

impl TryFrom<RowLine> for RowOp {
    type Error = String;

    fn try_from(l: RowLine) -> Result<Self, String> {
        let target = match l.kind {
            Kind::User => Target::User {
                email: l.email.ok_or("missing field `email`")?,
                fields: UserFields {
                    first_name: l.first_name,
                    last_name: l.last_name,
                    phone: l.phone,
                    org: l.org,
                    role: l.role,
                    department: l.department,
                    groups: l.groups,
                    products: l.products,
                    associations: l.associations,
                    attributes: l.attributes,
                    user_type: l.user_type,
                    invite: l.invite,
                    invite_at: l.invite_at,
                    licence_pool: l.licence_pool,
                    external_id: l.external_id,
                    new_email: l.new_email,
                    username: l.username,
                },
            },
            Kind::Org => Target::Org {
                name: l.name.ok_or("missing field `name`")?,
                email: l.email,
                phone: l.phone,
                external_id: l.external_id,
                parent: l.parent,
            },
        };
        Ok(RowOp { row: l.row, action: l.action, target, created_in_file: l.created_in_file, restore: l.restore })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Image, Kept};

    fn line(op: &RowOp) -> RowOp {
        serde_json::from_slice(&serde_json::to_vec(op).unwrap()).unwrap()
    }

    #[test]
    fn every_field_of_a_row_survives_the_chunk_line() {
        // Every field named (no `..`): a new one does not compile until it is added here and to `RowLine`.
        let fields = UserFields {
            first_name: Some("Ann".into()),
            last_name: Some("Lee".into()),
            phone: Some("+1 555 0100".into()),
            org: Some("North".into()),
            role: Some("Learner".into()),
            department: Some("Sales".into()),
            groups: vec!["A".into(), "B".into()],
            products: vec!["lms".into()],
            associations: BTreeMap::from([("supervisor".into(), "boss@x.com".into())]),
            attributes: BTreeMap::from([("Shoe Size".into(), "9".into())]),
            user_type: Some("Student".into()),
            invite: true,
            invite_at: Some("2026-12-24T09:00:00Z".into()),
            licence_pool: Some("north".into()),
            external_id: Some("ext-1".into()),
            new_email: Some("ann2@x.com".into()),
            username: Some("user:ann".into()),
        };
        let restore = Restore {
            undoes: "j".into(),
            kept: Kept { token: "j#2".into(), before: Some(Image(serde_json::json!({"a": 1}))), active: true, pool: None, unknown: false },
        };
        let user = RowOp {
            row: 7,
            action: Action::Upsert,
            target: Target::User { email: "ann@x.com".into(), fields },
            created_in_file: vec!["North".into()],
            restore: Some(restore),
        };
        assert_eq!(line(&user), user);
        let org = RowOp {
            row: 3,
            action: Action::Create,
            target: Target::Org {
                name: "North".into(),
                email: Some("north@x.com".into()),
                phone: Some("+1".into()),
                external_id: Some("o-1".into()),
                parent: Some("District".into()),
            },
            created_in_file: vec![],
            restore: None,
        };
        assert_eq!(line(&org), org);
        let bare = RowOp { row: 2, action: Action::Delete, target: Target::org("South"), created_in_file: vec![], restore: None };
        assert_eq!(line(&bare), bare);
    }

    fn text() -> impl proptest::strategy::Strategy<Value = String> {
        // Quotes, backslashes, control characters, non-ASCII: what JSON escapes.
        proptest::string::string_regex("(?s).{0,12}").unwrap()
    }

    fn maybe() -> impl proptest::strategy::Strategy<Value = Option<String>> {
        proptest::option::of(text())
    }

    fn user_fields() -> impl proptest::strategy::Strategy<Value = UserFields> {
        use proptest::collection::{btree_map, vec};
        use proptest::prelude::*;
        let names = (maybe(), maybe(), maybe(), maybe(), maybe(), maybe());
        let lists = (vec(text(), 0..3), vec(text(), 0..3), btree_map(text(), text(), 0..3), btree_map(text(), text(), 0..3));
        let rest = (maybe(), any::<bool>(), maybe(), maybe(), maybe(), maybe(), maybe());
        (names, lists, rest).prop_map(
            |(
                (first_name, last_name, phone, org, role, department),
                (groups, products, associations, attributes),
                (user_type, invite, invite_at, licence_pool, external_id, new_email, username),
            )| UserFields {
                first_name,
                last_name,
                phone,
                org,
                role,
                department,
                groups,
                products,
                associations,
                attributes,
                user_type,
                invite,
                invite_at,
                licence_pool,
                external_id,
                new_email,
                username,
            },
        )
    }

    proptest::proptest! {
        /// Any values, escaped any way JSON escapes them, read back as written.
        #[test]
        fn any_row_reads_back_as_it_was_written(
            row in proptest::prelude::any::<u32>(),
            email in text(),
            fields in user_fields(),
            org in (text(), maybe(), maybe(), maybe(), maybe()),
            created_in_file in proptest::collection::vec(text(), 0..3),
        ) {
            let user = RowOp { row, action: Action::Update, target: Target::User { email, fields }, created_in_file, restore: None };
            proptest::prop_assert_eq!(line(&user), user);
            let (name, email, phone, external_id, parent) = org;
            let org = RowOp { row, action: Action::Upsert, target: Target::Org { name, email, phone, external_id, parent }, created_in_file: vec![], restore: None };
            proptest::prop_assert_eq!(line(&org), org);
        }
    }

    #[test]
    fn a_line_missing_its_key_or_type_is_refused_saying_which() {
        let err = |s: &str| serde_json::from_str::<RowOp>(s).unwrap_err().to_string();
        assert!(err(r#"{"row":2,"action":"Create","type":"User"}"#).contains("missing field `email`"));
        assert!(err(r#"{"row":2,"action":"Create","type":"Org"}"#).contains("missing field `name`"));
        assert!(err(r#"{"row":2,"action":"Create","email":"a@x.com"}"#).contains("missing field `type`"));
        assert!(err(r#"{"row":2,"action":"Create","type":"Group","name":"x"}"#).contains("unknown variant `Group`"));
    }
}
