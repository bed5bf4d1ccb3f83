//! Items <-> domain types: what each item holds, and what a write reads back from an old image.

use super::ext::*;
use super::*;
use crate::error::{Error, Result};
use crate::model::Invite;
use crate::model::{Job, JobState, Mode, PHASES, User, UserFields, UserStatus};
use crate::ports::Stamp;
use crate::rules::Seen;
use aws_sdk_dynamodb::types::AttributeValue as Av;

/// The item a user row creates. Kept well under 1 KB so a create costs one write unit.
pub struct UserItem<'a> {
    pub tenant: &'a str,
    pub email: &'a str,
    pub fields: &'a UserFields,
    pub stamp: &'a Stamp,
}

impl From<UserItem<'_>> for Item {
    fn from(u: UserItem<'_>) -> Item {
        let mut item = key_item(&user_key(u.tenant, u.email));
        item.insert("kind".into(), s("user"));
        item.insert("tenant".into(), s(u.tenant));
        item.insert("email".into(), s(u.email));
        item.insert("status".into(), s(UserStatus::Active.as_str()));
        if let Some(org) = &u.fields.org {
            item.insert(ORG_KEY.into(), s(org.to_lowercase()));
        }
        item.insert("created_at".into(), s(&u.stamp.at));
        item.insert("updated_at".into(), s(&u.stamp.at));
        item.insert("created_by".into(), s(u.stamp.token()));
        item.insert("last_write".into(), s(u.stamp.token()));
        item.insert("user_id".into(), s(crate::model::new_user_id(u.tenant, u.email, &u.stamp.token())));
        for (k, v) in profile_attrs(u.fields) {
            item.insert(k, v);
        }
        if !u.fields.products.is_empty() {
            item.insert("products".into(), string_set(&u.fields.products));
        }
        item
    }
}

/// Custom attributes are stored as top-level attributes with this prefix.
pub(super) const ATTR_PREFIX: &str = "x_";

/// Profile attributes a row sets (blank cells are absent: an update leaves them alone).
/// Products are not here: they are granted with ADD, never overwritten.
pub(super) fn profile_attrs(f: &UserFields) -> Vec<(String, Av)> {
    let mut v: Vec<(String, Av)> = Vec::new();
    let mut opt = |k: &str, val: &Option<String>| {
        if let Some(x) = val {
            v.push((k.to_string(), s(x)));
        }
    };
    opt("first_name", &f.first_name);
    opt("last_name", &f.last_name);
    opt("phone", &f.phone);
    opt("org", &f.org);
    opt("role", &f.role);
    opt("department", &f.department);
    opt("user_type", &f.user_type);
    opt("pool", &f.licence_pool);
    opt("external_id", &f.external_id);
    if !f.groups.is_empty() {
        v.push(("groups".into(), Av::L(f.groups.iter().map(s).collect())));
    }
    for (k, e) in &f.associations {
        v.push((k.clone(), s(e)));
    }
    for (k, val) in &f.attributes {
        v.push((format!("{ATTR_PREFIX}{k}"), s(val)));
    }
    v
}

pub(super) fn string_set(items: &[String]) -> Av {
    Av::Ss(items.to_vec())
}

impl TryFrom<&Item> for User {
    type Error = Error;
    fn try_from(item: &Item) -> Result<Self> {
        User::try_from(item.clone())
    }
}

/// An item read is taken apart, not copied, in one pass over its attributes: a chunk decodes
/// thousands of them while its other reads are still on the wire (a lookup per known name
/// cost more than the pass).
impl TryFrom<Item> for User {
    type Error = Error;
    fn try_from(item: Item) -> Result<Self> {
        let (mut email, mut status, mut created_by, mut last_write, mut user_id) = (None, None, None, None, None);
        let (mut fields, mut manual_groups, mut activated) = (UserFields::default(), Vec::new(), false);
        let strings = |l: Vec<Av>| l.into_iter().filter_map(|x| if let Av::S(s) = x { Some(s) } else { None }).collect();
        for (k, v) in item {
            let v = match (k.as_str(), v) {
                ("groups", Av::L(l)) => {
                    fields.groups = strings(l);
                    continue;
                }
                ("manual_groups", Av::L(l)) => {
                    manual_groups = strings(l);
                    continue;
                }
                ("products", Av::Ss(p)) => {
                    fields.products = p;
                    continue;
                }
                ("activated_at", _) => {
                    activated = true;
                    continue;
                }
                (_, Av::S(v)) => v,
                _ => continue,
            };
            let slot = match k.as_str() {
                "email" => &mut email,
                "status" => &mut status,
                "created_by" => &mut created_by,
                "last_write" => &mut last_write,
                "user_id" => &mut user_id,
                "first_name" => &mut fields.first_name,
                "last_name" => &mut fields.last_name,
                "phone" => &mut fields.phone,
                "org" => &mut fields.org,
                "role" => &mut fields.role,
                "department" => &mut fields.department,
                "user_type" => &mut fields.user_type,
                "pool" => &mut fields.licence_pool,
                "external_id" => &mut fields.external_id,
                a if crate::model::ASSOCIATIONS.contains(&a) => {
                    fields.associations.insert(k, v);
                    continue;
                }
                a => {
                    if let Some(name) = a.strip_prefix(ATTR_PREFIX) {
                        fields.attributes.insert(name.to_string(), v);
                    }
                    continue;
                }
            };
            *slot = Some(v);
        }
        fields.products.sort();
        Ok(User {
            email: email.ok_or_else(|| Error::corrupt("user item", "no email"))?,
            status: UserStatus::parse(status.as_deref().unwrap_or_default()),
            created_by: created_by.unwrap_or_default(),
            last_write: last_write.unwrap_or_default(),
            user_id,
            fields,
            activated,
            manual_groups,
        })
    }
}

impl TryFrom<&Item> for Job {
    type Error = Error;
    fn try_from(item: &Item) -> Result<Self> {
        let req = |k: &str| item.str(k).map(str::to_string).ok_or_else(|| Error::corrupt("job item", format!("missing {k}")));
        let state = req("state")?;
        let plan: Option<[u32; PHASES]> =
            (0..PHASES).map(|p| item.num::<u32>(&format!("chunks{p}"))).collect::<Option<Vec<_>>>().and_then(|v| v.try_into().ok());
        Ok(Job {
            id: req("id")?,
            tenant: req("tenant")?,
            source_key: req("source_key")?,
            file_name: req("file_name")?,
            mode: item.str("mode").and_then(Mode::parse_stored),
            state: JobState::parse(&state).ok_or_else(|| Error::corrupt("job item", format!("state {state}")))?,
            // Jobs stored before uploads were ordered: their receipt time stands in.
            order: match item.str("upload_order") {
                Some(o) => o.to_string(),
                None => {
                    crate::model::upload_order(chrono::DateTime::parse_from_rfc3339(&req("received_at")?).ok().map(|t| t.to_utc()), None)
                }
            },
            received_at: req("received_at")?,
            phase_chunks: plan,
            phase_done: std::array::from_fn(|p| item.num(&format!("done{p}")).unwrap_or(0)),
            total_rows: item.num("total_rows").unwrap_or(0),
            succeeded: item.num("succeeded").unwrap_or(0),
            failed: item.num("failed").unwrap_or(0),
            skipped: item.num("skipped").unwrap_or(0),
            message: item.str("message").map(str::to_string),
            completed_at: item.str("completed_at").map(str::to_string),
            run_at: item.str("run_at").map(str::to_string),
            counted_at: item.str("counted_at").map(str::to_string),
        })
    }
}

impl From<&Job> for Item {
    fn from(j: &Job) -> Item {
        let mut item = Item::new();
        item.insert("pk".into(), s(format!("J#{}", j.id)));
        item.insert("id".into(), s(&j.id));
        item.insert("tenant".into(), s(&j.tenant));
        item.insert("source_key".into(), s(&j.source_key));
        item.insert("file_name".into(), s(&j.file_name));
        if let Some(m) = j.mode {
            item.insert("mode".into(), s(m.as_str()));
        }
        item.insert("state".into(), s(j.state.as_str()));
        item.insert("received_at".into(), s(&j.received_at));
        item.insert("upload_order".into(), s(&j.order));
        // The by-tenant index lists a tenant's jobs newest first for `rosterdrop status`.
        item.insert("gsi1pk".into(), s(format!("JOBS#{}", j.tenant)));
        item.insert("gsi1sk".into(), s(format!("{}#{}", j.received_at, j.id)));
        if !j.state.is_final() {
            item.insert("gsi2pk".into(), s("OPEN"));
            item.insert("gsi2sk".into(), s(format!("{}#{}", j.received_at, j.id)));
        }
        for p in 0..PHASES {
            item.insert(format!("done{p}"), n(j.phase_done[p]));
        }
        item
    }
}

/// `kind` of an item a delete replaced: it keeps the deleting upload's order (and its stamp for
/// a retried delete) until it expires with the markers, so an older row cannot bring it back.
pub(super) const TOMBSTONE: &str = "deleted";
/// The `kind` of an item under a user's key holding an organization's contact email.
pub(super) const CONTACT: &str = "contact";

/// An item under a user's key that is a user (not a tombstone, not an organization's contact).
pub(super) fn is_user(item: &Item) -> bool {
    item.str("kind").is_none_or(|k| k == "user")
}

/// What `rules` needs to know of an old image.
pub(super) fn seen(item: &Item) -> Seen {
    Seen {
        tombstone: item.str("kind") == Some(TOMBSTONE),
        status: item.str("status").map(UserStatus::parse),
        last_write: item.str("last_write").map(str::to_string),
        created_by: item.str("created_by").map(str::to_string),
        licence_by: item.str("lic").map(str::to_string),
        order: item.str("ord").map(str::to_string),
        activated: item.contains_key("activated_at"),
        pool: item.str("pool").map(str::to_string),
        contact_of: item.str("kind").filter(|k| *k == CONTACT).and(item.str("contact_of")).map(str::to_string),
    }
}

/// The row's profile: SET what the row gives, grant products with ADD (never revoke here).
pub(super) fn profile(u: &mut UpdateExpr, fields: &UserFields) {
    for (k, v) in profile_attrs(fields) {
        u.set(&k, v);
    }
    if let Some(org) = &fields.org {
        u.set(ORG_KEY, s(org.to_lowercase()));
    }
    if !fields.products.is_empty() {
        u.add("products", string_set(&fields.products));
    }
}

/// A user's organization as compared when counting an organization's users (lower-case).
pub(super) const ORG_KEY: &str = "org_key";

pub(super) fn org_item(tenant: &str, name: &str, stamp: &Stamp) -> Item {
    let mut item = key_item(&org_key(tenant, name));
    item.extend([
        ("kind".to_string(), s("org")),
        ("tenant".to_string(), s(tenant)),
        ("name".to_string(), s(name)),
        ("created_at".to_string(), s(&stamp.at)),
        ("updated_at".to_string(), s(&stamp.at)),
        ("created_by".to_string(), s(stamp.token())),
        ("last_write".to_string(), s(stamp.token())),
    ]);
    item
}

impl TryFrom<&Item> for Invite {
    type Error = Error;
    fn try_from(item: &Item) -> Result<Self> {
        let req = |k: &str| item.str(k).map(str::to_string).ok_or_else(|| Error::corrupt("invite item", format!("missing {k}")));
        Ok(Invite {
            tenant: req("tenant")?,
            email: req("email")?,
            first_name: item.str("first_name").map(str::to_string),
            due_at: req("due_at")?,
            job: req("job")?,
            attempts: item.get("attempts").and_then(|v| v.as_n().ok()).and_then(|n| n.parse().ok()).unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp() -> Stamp {
        Stamp { job: "job1".into(), row: 7, at: "2026-11-21T10:00:00Z".into(), order: String::new() }
    }

    #[test]
    fn user_item_is_keyed_by_tenant_and_email_and_stays_small() {
        let fields = UserFields {
            first_name: Some("Ann".into()),
            org: Some("North".into()),
            groups: vec!["a".into(), "b".into()],
            ..Default::default()
        };
        let item: Item = UserItem { tenant: "acme", email: "ann@x.com", fields: &fields, stamp: &stamp() }.into();
        assert!(item.str("pk").unwrap().starts_with("U#acme#"));
        assert_eq!(item.str("sk"), Some("ann@x.com"));
        assert_eq!(item.str(ORG_KEY), Some("north"));
        assert!(!item.keys().any(|k| k.starts_with("gsi")), "no index entry: one write unit");
        assert_eq!(item.str("last_write"), Some("job1#7"));
        // Rough item size: attribute names + values, well under the 1 KB of one write unit.
        let size: usize = item.iter().map(|(k, v)| k.len() + v.as_s().map(|s| s.len()).unwrap_or(16)).sum();
        assert!(size < 400, "{size}");
        let back = User::try_from(&item).unwrap();
        assert_eq!(back.fields, fields);
        assert_eq!(back.status, crate::model::UserStatus::Active);
    }

    #[test]
    fn a_user_item_with_every_field_reads_back_as_written() {
        let fields = UserFields {
            first_name: Some("Ann".into()),
            last_name: Some("Okafor".into()),
            phone: Some("+14155550100".into()),
            org: Some("North".into()),
            role: Some("Learner".into()),
            department: Some("Sales".into()),
            user_type: Some("Staff".into()),
            licence_pool: Some("gold".into()),
            external_id: Some("E-1".into()),
            groups: vec!["b".into(), "a".into()],
            products: vec!["lms".into(), "crm".into()],
            associations: [("supervisor".to_string(), "boss@x.com".to_string())].into_iter().collect(),
            attributes: [("shoe_size".to_string(), "42".to_string()), ("x_nested".to_string(), "1".to_string())].into_iter().collect(),
            ..Default::default()
        };
        let mut item: Item = UserItem { tenant: "acme", email: "ann@x.com", fields: &fields, stamp: &stamp() }.into();
        item.insert("manual_groups".into(), Av::L(vec![s("kept")]));
        item.insert("activated_at".into(), s("2026-11-22T10:00:00Z"));
        item.insert("ord".into(), s("0001"));
        let back = User::try_from(item).unwrap();
        let mut expected = fields.clone();
        expected.products.sort();
        assert_eq!(back.fields, expected);
        assert_eq!((back.email.as_str(), back.created_by.as_str(), back.last_write.as_str()), ("ann@x.com", "job1#7", "job1#7"));
        assert_eq!((back.manual_groups, back.activated, back.user_id.is_some()), (vec!["kept".to_string()], true, true));
    }

    #[test]
    fn shards_spread_users_and_are_stable() {
        let shards: std::collections::HashSet<u32> = (0..200).map(|i| user_shard(&format!("u{i}@x.com"))).collect();
        assert_eq!(shards.len(), USER_SHARDS as usize);
        assert_eq!(user_key("acme", "ann@x.com"), user_key("acme", "ann@x.com"));
    }

    #[test]
    fn job_item_round_trips() {
        let job = Job::received("j1", "acme", "incoming/acme/a.csv", "a.csv", Some(Mode::Add), "2026-11-21T10:00:00Z");
        let item = Item::from(&job);
        assert_eq!(Job::try_from(&item).unwrap(), job);
        let mut broken = item.clone();
        broken.insert("state".into(), s("EXPLODED"));
        assert!(Job::try_from(&broken).is_err());
    }
}

/// An item in DynamoDB's own JSON (`{"S": ...}`, `{"L": [...]}`): what an undo keeps and puts back
/// attribute for attribute, whatever the item holds.
pub(super) fn image(item: &Item) -> crate::model::Image {
    crate::model::Image(serde_json::Value::Object(item.iter().map(|(k, v)| (k.clone(), av_json(v))).collect()))
}

fn av_json(v: &Av) -> serde_json::Value {
    use serde_json::json;
    match v {
        Av::S(s) => json!({ "S": s }),
        Av::N(n) => json!({ "N": n }),
        Av::Bool(b) => json!({ "BOOL": b }),
        Av::Null(_) => json!({ "NULL": true }),
        Av::L(l) => json!({ "L": l.iter().map(av_json).collect::<Vec<_>>() }),
        Av::M(m) => json!({ "M": m.iter().map(|(k, v)| (k.clone(), av_json(v))).collect::<serde_json::Map<_, _>>() }),
        Av::Ss(ss) => json!({ "SS": ss }),
        Av::Ns(ns) => json!({ "NS": ns }),
        Av::B(b) => json!({ "B": b.as_ref() }),
        Av::Bs(bs) => json!({ "BS": bs.iter().map(|b| b.as_ref().to_vec()).collect::<Vec<_>>() }),
        _ => json!({ "NULL": true }),
    }
}

/// The item an `image` was made of.
pub(super) fn from_image(image: &crate::model::Image) -> Result<Item> {
    let serde_json::Value::Object(map) = &image.0 else { return Err(Error::corrupt("before-image", "not an object")) };
    map.iter().map(|(k, v)| Ok((k.clone(), json_av(v)?))).collect()
}

fn json_av(v: &serde_json::Value) -> Result<Av> {
    use serde_json::Value as J;
    let bad = || Error::corrupt("before-image", format!("attribute {v}"));
    let J::Object(o) = v else { return Err(bad()) };
    let (kind, inner) = o.iter().next().ok_or_else(bad)?;
    let strings = |x: &J| -> Result<Vec<String>> {
        x.as_array().ok_or_else(bad)?.iter().map(|s| s.as_str().map(str::to_string).ok_or_else(bad)).collect()
    };
    let bytes = |x: &J| -> Result<Vec<u8>> {
        x.as_array().ok_or_else(bad)?.iter().map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()).ok_or_else(bad)).collect()
    };
    Ok(match (kind.as_str(), inner) {
        ("S", J::String(s)) => Av::S(s.clone()),
        ("N", J::String(n)) => Av::N(n.clone()),
        ("BOOL", J::Bool(b)) => Av::Bool(*b),
        ("NULL", _) => Av::Null(true),
        ("L", J::Array(l)) => Av::L(l.iter().map(json_av).collect::<Result<_>>()?),
        ("M", J::Object(m)) => Av::M(m.iter().map(|(k, v)| Ok((k.clone(), json_av(v)?))).collect::<Result<_>>()?),
        ("SS", x) => Av::Ss(strings(x)?),
        ("NS", x) => Av::Ns(strings(x)?),
        ("B", x) => Av::B(aws_sdk_dynamodb::primitives::Blob::new(bytes(x)?)),
        ("BS", J::Array(l)) => Av::Bs(l.iter().map(|b| Ok(aws_sdk_dynamodb::primitives::Blob::new(bytes(b)?))).collect::<Result<_>>()?),
        _ => return Err(bad()),
    })
}

/// An active user, live (what holds a licence).
pub(super) fn active(item: &Item) -> bool {
    item.str("kind") == Some("user") && item.str("status") == Some(UserStatus::Active.as_str())
}

#[cfg(test)]
mod image_tests {
    use super::*;

    #[test]
    fn every_attribute_kind_survives_an_image_round_trip() {
        let item: Item = [
            ("s".to_string(), Av::S("ä \"q\"".into())),
            ("n".to_string(), Av::N("12.5".into())),
            ("b".to_string(), Av::Bool(true)),
            ("z".to_string(), Av::Null(true)),
            ("l".to_string(), Av::L(vec![Av::S("a".into()), Av::N("1".into())])),
            ("m".to_string(), Av::M([("k".to_string(), Av::Ss(vec!["x".into(), "y".into()]))].into())),
            ("ns".to_string(), Av::Ns(vec!["1".into(), "2".into()])),
            ("bin".to_string(), Av::B(aws_sdk_dynamodb::primitives::Blob::new(vec![0u8, 255]))),
        ]
        .into();
        assert_eq!(from_image(&image(&item)).unwrap(), item);
        assert!(
            from_image(&crate::model::Image(serde_json::json!({ "x": { "Q": 1 } }))).is_err(),
            "an unknown kind is an error, not a panic"
        );
        assert!(from_image(&crate::model::Image(serde_json::json!([1]))).is_err());
    }
}
