//! DynamoDB adapter: directory table (tenants, users, organizations) and jobs table.
//!
//! Keys are spread so no partition takes a write per row: a user is `U#<tenant>#<email>`, an
//! organization `O#<tenant>#<name>`. The `gsi1` index lists a tenant's users in 16 shards
//! (`T#<tenant>#<n>`) sorted by organization, so counting an organization's users or listing a
//! tenant's users never reads or writes one hot key.

use crate::error::{Error, Result};
use crate::model::Invite;
use crate::model::{Action, Job, JobState, Mode, PHASES, RowOp, Target, Tenant, User, UserFields, UserStatus};
use crate::ports::{Directory, Invites, JobStore, LicenceClaim, Plan, Stamp, Written};
use crate::rules::{self, Attempt, Next, Seen};
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue as Av, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    Put, ReturnValue, ReturnValuesOnConditionCheckFailure, ScalarAttributeType, Select, TimeToLiveSpecification, TransactWriteItem, Update,
};
use std::collections::HashMap;

pub type Item = HashMap<String, Av>;

pub const USER_SHARDS: u32 = 16;
pub const GSI: &str = "gsi1";
/// Jobs table: open (not yet COMPLETED or REJECTED) jobs, oldest first; sparse.
pub const OPEN_JOBS: &str = "gsi2";
/// Chunk markers expire after 30 days; the job item stays.
const MARKER_TTL_SECS: i64 = 30 * 24 * 3600;

pub fn user_pk(tenant: &str, email: &str) -> String {
    format!("U#{tenant}#{email}")
}
pub fn org_pk(tenant: &str, name: &str) -> String {
    format!("O#{tenant}#{}", name.to_lowercase())
}
pub fn tenant_pk(tenant: &str) -> String {
    format!("T#{tenant}")
}
pub fn user_shard(tenant: &str, email: &str) -> String {
    // FNV-1a: stable across builds and platforms (std's hasher is not).
    let h = email.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    format!("T#{tenant}#{}", h % USER_SHARDS as u64)
}

fn s(v: impl Into<String>) -> Av {
    Av::S(v.into())
}
fn n(v: impl ToString) -> Av {
    Av::N(v.to_string())
}

/// Typed reads from an item.
trait ItemExt {
    fn str(&self, k: &str) -> Option<&str>;
    fn num<T: std::str::FromStr>(&self, k: &str) -> Option<T>;
}
impl ItemExt for Item {
    fn str(&self, k: &str) -> Option<&str> {
        self.get(k).and_then(|v| v.as_s().ok()).map(String::as_str)
    }
    fn num<T: std::str::FromStr>(&self, k: &str) -> Option<T> {
        self.get(k).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok())
    }
}

fn ddb_err<E>(op: &'static str) -> impl FnOnce(aws_sdk_dynamodb::error::SdkError<E, aws_smithy_runtime_api::http::Response>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    move |e| Error::from_sdk("dynamodb", op, e)
}

fn is_condition_failed<E: ProvideErrorMetadata, R>(e: &aws_sdk_dynamodb::error::SdkError<E, R>) -> bool {
    e.code() == Some("ConditionalCheckFailedException")
}

/// The item a user row creates. Kept well under 1 KB so a create costs one write unit.
pub struct UserItem<'a> {
    pub tenant: &'a str,
    pub email: &'a str,
    pub fields: &'a UserFields,
    pub stamp: &'a Stamp,
}

impl From<UserItem<'_>> for Item {
    fn from(u: UserItem<'_>) -> Item {
        let mut item = Item::new();
        item.insert("pk".into(), s(user_pk(u.tenant, u.email)));
        item.insert("kind".into(), s("user"));
        item.insert("tenant".into(), s(u.tenant));
        item.insert("email".into(), s(u.email));
        item.insert("status".into(), s(UserStatus::Active.as_str()));
        item.insert("gsi1pk".into(), s(user_shard(u.tenant, u.email)));
        item.insert("gsi1sk".into(), s(u.fields.org.as_deref().map(str::to_lowercase).unwrap_or_else(|| "-".into())));
        item.insert("created_at".into(), s(&u.stamp.at));
        item.insert("updated_at".into(), s(&u.stamp.at));
        item.insert("created_by".into(), s(u.stamp.token()));
        item.insert("last_write".into(), s(u.stamp.token()));
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
const ATTR_PREFIX: &str = "x_";

/// Profile attributes a row sets (blank cells are absent: an update leaves them alone).
/// Products are not here: they are granted with ADD, never overwritten.
fn profile_attrs(f: &UserFields) -> Vec<(String, Av)> {
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

fn string_set(items: &[String]) -> Av {
    Av::Ss(items.to_vec())
}

/// SET / ADD / DELETE / REMOVE clauses with placeholder names, so any attribute name is safe.
#[derive(Default)]
struct UpdateExpr {
    set: Vec<String>,
    add: Vec<String>,
    delete: Vec<String>,
    remove: Vec<String>,
    names: HashMap<String, String>,
    values: HashMap<String, Av>,
}

impl UpdateExpr {
    fn name(&mut self, attr: &str) -> String {
        let key = format!("#n{}", self.names.len());
        self.names.insert(key.clone(), attr.to_string());
        key
    }
    fn value(&mut self, v: Av) -> String {
        let key = format!(":v{}", self.values.len());
        self.values.insert(key.clone(), v);
        key
    }
    fn set(&mut self, attr: &str, v: Av) -> &mut Self {
        let (n, v) = (self.name(attr), self.value(v));
        self.set.push(format!("{n} = {v}"));
        self
    }
    fn set_if_missing(&mut self, attr: &str, v: Av) -> &mut Self {
        let (n, v) = (self.name(attr), self.value(v));
        self.set.push(format!("{n} = if_not_exists({n}, {v})"));
        self
    }
    fn add(&mut self, attr: &str, v: Av) -> &mut Self {
        let (n, v) = (self.name(attr), self.value(v));
        self.add.push(format!("{n} {v}"));
        self
    }
    fn delete(&mut self, attr: &str, v: Av) -> &mut Self {
        let (n, v) = (self.name(attr), self.value(v));
        self.delete.push(format!("{n} {v}"));
        self
    }
    fn remove(&mut self, attr: &str) -> &mut Self {
        let n = self.name(attr);
        self.remove.push(n);
        self
    }
    fn expression(&self) -> String {
        let mut parts = Vec::new();
        for (kw, list) in [("SET", &self.set), ("ADD", &self.add), ("DELETE", &self.delete), ("REMOVE", &self.remove)] {
            if !list.is_empty() {
                parts.push(format!("{kw} {}", list.join(", ")));
            }
        }
        parts.join(" ")
    }
}

impl TryFrom<&Item> for User {
    type Error = Error;
    fn try_from(item: &Item) -> Result<Self> {
        let get = |k: &str| item.str(k).map(str::to_string);
        Ok(User {
            email: get("email").ok_or_else(|| Error::corrupt("user item", "no email"))?,
            status: UserStatus::parse(item.str("status").unwrap_or_default()),
            created_by: get("created_by").unwrap_or_default(),
            fields: UserFields {
                first_name: get("first_name"),
                last_name: get("last_name"),
                phone: get("phone"),
                org: get("org"),
                role: get("role"),
                department: get("department"),
                user_type: get("user_type"),
                invite: false,
                invite_at: None,
                groups: item
                    .get("groups")
                    .and_then(|g| g.as_l().ok())
                    .map(|l| l.iter().filter_map(|x| x.as_s().ok().cloned()).collect())
                    .unwrap_or_default(),
                products: {
                    let mut p = item.get("products").and_then(|p| p.as_ss().ok()).cloned().unwrap_or_default();
                    p.sort();
                    p
                },
                associations: crate::model::ASSOCIATIONS.iter().filter_map(|a| get(a).map(|e| (a.to_string(), e))).collect(),
                attributes: item
                    .iter()
                    .filter_map(|(k, v)| Some((k.strip_prefix(ATTR_PREFIX)?.to_string(), v.as_s().ok()?.clone())))
                    .collect(),
            },
            activated: item.contains_key("activated_at"),
            manual_groups: item
                .get("manual_groups")
                .and_then(|g| g.as_l().ok())
                .map(|l| l.iter().filter_map(|x| x.as_s().ok().cloned()).collect())
                .unwrap_or_default(),
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
            mode: item.str("mode").and_then(Mode::parse),
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

pub struct DynamoDirectory {
    client: Client,
    table: String,
}

impl DynamoDirectory {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoDirectory { client, table: table.into() }
    }

    async fn get_user(&self, tenant: &str, email: &str) -> Result<Option<User>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(user_pk(tenant, email)))
            .consistent_read(true)
            .send()
            .await
            .map_err(ddb_err("GetItem"))?;
        out.item.as_ref().filter(|i| i.str("kind") != Some(TOMBSTONE)).map(User::try_from).transpose()
    }

    /// One row, one or more conditional writes as `rules` directs (more than one only when the
    /// item is not as the row expected: a disable finding the user already disabled).
    async fn run_row(&self, tenant: &str, op: &RowOp, stamp: &Stamp, licensed: bool) -> Result<Written> {
        let user = matches!(op.target, Target::User { .. });
        let token = stamp.token();
        let mut next = rules::first(op.action, user, licensed);
        for _ in 0..rules::MAX_ATTEMPTS {
            let attempt = match next {
                Next::Done(written) => return Ok(written),
                Next::Try(attempt) => attempt,
            };
            next = match self.attempt(tenant, op, stamp, attempt).await? {
                Ok(old) => Next::Done(rules::succeeded(attempt, user, old.as_ref().map(seen).as_ref(), &token)),
                Err(old) => rules::refused(attempt, op.action, user, old.as_ref().map(seen).as_ref(), &token, &stamp.order),
            };
        }
        match next {
            Next::Done(written) => Ok(written),
            Next::Try(_) => Err(Error::Transient {
                service: "dynamodb",
                operation: "UpdateItem",
                message: "the item changed between every attempt to write it".into(),
            }),
        }
    }

    /// One conditional write: `Ok(old)` when its condition held (`old`: the item before, asked
    /// for by Upsert only), `Err(old)` when it failed, with the item as it was.
    async fn attempt(&self, tenant: &str, op: &RowOp, stamp: &Stamp, attempt: Attempt) -> Result<Written2> {
        let (pk, kind) = match &op.target {
            Target::User { email, .. } => (user_pk(tenant, email), "user"),
            Target::Org { name } => (org_pk(tenant, name), "org"),
        };
        let mut u = UpdateExpr::default();
        let ordered = {
            let (o, v) = (u.name("ord"), u.value(s(&stamp.order)));
            format!("(attribute_not_exists({o}) OR {o} <= {v})")
        };
        // Placeholders must all be used: the "live" condition is built only where it is asked for.
        let live = |u: &mut UpdateExpr| format!("{} = {}", u.name("kind"), u.value(s(kind)));
        match attempt {
            Attempt::Create => {
                let mut item = match &op.target {
                    Target::User { email, fields } => {
                        let mut item: Item = UserItem { tenant, email, fields, stamp }.into();
                        item.insert("lic".into(), s(stamp.token()));
                        item
                    }
                    Target::Org { name } => org_item(tenant, name, stamp),
                };
                item.insert("ord".into(), s(&stamp.order));
                let cond = format!("(attribute_not_exists(pk) OR {} = {}) AND {ordered}", u.name("kind"), u.value(s(TOMBSTONE)));
                self.put_if(item, cond, u).await
            }
            Attempt::Tombstone { active } => {
                let mut item = Item::from([
                    ("pk".to_string(), s(&pk)),
                    ("kind".to_string(), s(TOMBSTONE)),
                    ("tenant".to_string(), s(tenant)),
                    ("deleted_at".to_string(), s(&stamp.at)),
                    ("last_write".to_string(), s(stamp.token())),
                    ("ord".to_string(), s(&stamp.order)),
                    ("ttl".to_string(), n(chrono::Utc::now().timestamp() + MARKER_TTL_SECS)),
                ]);
                let mut cond = format!("{} AND {ordered}", live(&mut u));
                if let Some(active) = active {
                    let (st, a) = (u.name("status"), u.value(s(UserStatus::Active.as_str())));
                    cond += &if active { format!(" AND {st} = {a}") } else { format!(" AND NOT {st} = {a}") };
                    if active {
                        item.insert("lic".into(), s(stamp.token()));
                    }
                }
                self.put_if(item, cond, u).await
            }
            Attempt::Upsert { may_create } => {
                match &op.target {
                    Target::User { email, fields } => {
                        profile(&mut u, fields);
                        u.set_if_missing("created_at", s(&stamp.at))
                            .set_if_missing("created_by", s(stamp.token()))
                            .set_if_missing("status", s(UserStatus::Active.as_str()))
                            .set("kind", s("user"))
                            .set("tenant", s(tenant))
                            .set("email", s(email.as_str()))
                            .set("gsi1pk", s(user_shard(tenant, email)));
                        if fields.org.is_none() {
                            u.set_if_missing("gsi1sk", s("-"));
                        }
                    }
                    Target::Org { name } => {
                        u.set("name", s(name))
                            .set("kind", s("org"))
                            .set("tenant", s(tenant))
                            .set_if_missing("created_at", s(&stamp.at))
                            .set_if_missing("created_by", s(stamp.token()));
                    }
                }
                // Over a tombstone: the item lives again.
                u.remove("ttl").remove("deleted_at");
                let cond = if may_create { ordered } else { format!("{} AND {ordered}", live(&mut u)) };
                self.update_if(pk, u, cond, stamp, true).await
            }
            Attempt::Transition { to } => {
                let from = if to == UserStatus::Active { UserStatus::Disabled } else { UserStatus::Active };
                let cond = format!("{} AND {} = {} AND {ordered}", live(&mut u), u.name("status"), u.value(s(from.as_str())));
                u.set("status", s(to.as_str())).set("lic", s(stamp.token()));
                if op.action == Action::Reconcile {
                    // Replace mode: disabled, every group assignment and content targeting removed.
                    u.remove("groups").remove("manual_groups").remove("department");
                }
                self.update_if(pk, u, cond, stamp, false).await
            }
            Attempt::Keep { is } => {
                let cond = format!("{} AND {} = {} AND {ordered}", live(&mut u), u.name("status"), u.value(s(is.as_str())));
                self.update_if(pk, u, cond, stamp, false).await
            }
            Attempt::Update => {
                match (&op.target, op.action) {
                    (Target::User { fields, .. }, Action::Expire) if fields.products.is_empty() => {
                        u.remove("products");
                    }
                    (Target::User { fields, .. }, Action::Expire) => {
                        u.delete("products", string_set(&fields.products));
                    }
                    (Target::User { fields, .. }, _) => profile(&mut u, fields),
                    (Target::Org { name }, _) => {
                        u.set("name", s(name));
                    }
                }
                let cond = format!("{} AND {ordered}", live(&mut u));
                self.update_if(pk, u, cond, stamp, false).await
            }
            Attempt::Invite => {
                let cond = format!("{} AND attribute_not_exists({}) AND {ordered}", live(&mut u), u.name("activated_at"));
                u.set("invited_at", s(&stamp.at));
                self.update_if(pk, u, cond, stamp, false).await
            }
        }
    }

    /// Conditional put; the old image comes back when the condition fails.
    async fn put_if(&self, item: Item, cond: String, u: UpdateExpr) -> Result<Written2> {
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(cond)
            .set_expression_attribute_names(Some(u.names))
            .set_expression_attribute_values(Some(u.values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(_) => Ok(Ok(None)),
            Err(e) if is_condition_failed(&e) => Ok(Err(match e.into_service_error() {
                aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c) => c.item,
                _ => None,
            })),
            Err(e) => Err(ddb_err("PutItem")(e)),
        }
    }

    /// Conditional update stamped with the row (token, time, upload order); `old`: return the
    /// item as it was before a successful write too.
    async fn update_if(&self, pk: String, mut u: UpdateExpr, cond: String, stamp: &Stamp, old: bool) -> Result<Written2> {
        u.set("updated_at", s(&stamp.at)).set("last_write", s(stamp.token())).set("ord", s(&stamp.order));
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .update_expression(u.expression())
            .condition_expression(cond)
            .set_expression_attribute_names(Some(u.names))
            .set_expression_attribute_values(Some(u.values))
            .return_values(if old { ReturnValue::AllOld } else { ReturnValue::None })
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(out) => Ok(Ok(out.attributes.filter(|a| !a.is_empty()))),
            Err(e) if is_condition_failed(&e) => Ok(Err(match e.into_service_error() {
                aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c) => c.item,
                _ => None,
            })),
            Err(e) => Err(ddb_err("UpdateItem")(e)),
        }
    }
}

/// A conditional write's outcome: `Ok(old)` written, `Err(old)` refused (old images, if any).
type Written2 = std::result::Result<Option<Item>, Option<Item>>;

/// `kind` of an item a delete replaced: it keeps the deleting upload's order (and its stamp for
/// a retried delete) until it expires with the markers, so an older row cannot bring it back.
const TOMBSTONE: &str = "deleted";

/// What `rules` needs to know of an old image.
fn seen(item: &Item) -> Seen {
    Seen {
        tombstone: item.str("kind") == Some(TOMBSTONE),
        status: item.str("status").map(UserStatus::parse),
        last_write: item.str("last_write").map(str::to_string),
        created_by: item.str("created_by").map(str::to_string),
        licence_by: item.str("lic").map(str::to_string),
        order: item.str("ord").map(str::to_string),
        activated: item.contains_key("activated_at"),
    }
}

/// The row's profile: SET what the row gives, grant products with ADD (never revoke here).
fn profile(u: &mut UpdateExpr, fields: &UserFields) {
    for (k, v) in profile_attrs(fields) {
        u.set(&k, v);
    }
    if let Some(org) = &fields.org {
        u.set("gsi1sk", s(org.to_lowercase()));
    }
    if !fields.products.is_empty() {
        u.add("products", string_set(&fields.products));
    }
}

fn org_item(tenant: &str, name: &str, stamp: &Stamp) -> Item {
    Item::from([
        ("pk".to_string(), s(org_pk(tenant, name))),
        ("kind".to_string(), s("org")),
        ("tenant".to_string(), s(tenant)),
        ("name".to_string(), s(name)),
        ("created_at".to_string(), s(&stamp.at)),
        ("updated_at".to_string(), s(&stamp.at)),
        ("created_by".to_string(), s(stamp.token())),
        ("last_write".to_string(), s(stamp.token())),
    ])
}

#[async_trait]
impl Directory for DynamoDirectory {
    async fn tenant(&self, id: &str) -> Result<Option<Tenant>> {
        let out = self.client.get_item().table_name(&self.table).key("pk", s(tenant_pk(id))).send().await.map_err(ddb_err("GetItem"))?;
        out.item
            .as_ref()
            .and_then(|i| i.str("doc"))
            .map(|doc| serde_json::from_str(doc).map_err(|e| Error::corrupt(format!("tenant {id}"), e)))
            .transpose()
    }

    async fn put_tenant(&self, tenant: &Tenant) -> Result<()> {
        // Stored as one JSON document: tenant settings grow, and are always read whole.
        let doc = serde_json::to_string(tenant).map_err(|e| Error::corrupt("tenant", e))?;
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(tenant_pk(&tenant.id)))
            .item("kind", s("tenant"))
            .item("doc", s(doc))
            .item("gsi1pk", s("TENANTS"))
            .item("gsi1sk", s(&tenant.id))
            .send()
            .await
            .map_err(ddb_err("PutItem"))?;
        Ok(())
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(GSI)
            .key_condition_expression("gsi1pk = :p")
            .expression_attribute_values(":p", s("TENANTS"))
            .into_paginator()
            .items()
            .send();
        while let Some(item) = pages.next().await {
            let item = item.map_err(ddb_err("Query"))?;
            if let Some(id) = item.str("gsi1sk")
                && let Some(t) = self.tenant(id).await?
            {
                out.push(t);
            }
        }
        Ok(out)
    }

    async fn user(&self, tenant: &str, email: &str) -> Result<Option<User>> {
        self.get_user(tenant, &email.trim().to_lowercase()).await
    }

    async fn write_user(&self, tenant: &str, op: &RowOp, stamp: &Stamp, licensed: bool) -> Result<Written> {
        if !matches!(op.target, Target::User { .. }) {
            return Err(Error::corrupt("chunk", "org row sent to write_user"));
        }
        self.run_row(tenant, op, stamp, licensed).await
    }

    async fn write_org(&self, tenant: &str, op: &RowOp, stamp: &Stamp) -> Result<Written> {
        if !matches!(op.target, Target::Org { .. }) {
            return Err(Error::corrupt("chunk", "user row sent to write_org"));
        }
        if !matches!(op.action, Action::Create | Action::Update | Action::Upsert | Action::Delete) {
            return Err(Error::corrupt("chunk", format!("org action {} reached write_org", op.action)));
        }
        self.run_row(tenant, op, stamp, true).await
    }

    async fn list_users(&self, tenant: &str) -> Result<Vec<(String, UserStatus)>> {
        let prefix = format!("U#{tenant}#");
        let mut users = Vec::new();
        for shard in 0..USER_SHARDS {
            let mut pages = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(GSI)
                .key_condition_expression("gsi1pk = :p")
                .expression_attribute_values(":p", s(format!("T#{tenant}#{shard}")))
                .into_paginator()
                .items()
                .send();
            while let Some(item) = pages.next().await {
                let item = item.map_err(ddb_err("Query"))?;
                if let Some(key) = item.str("pk").and_then(|pk| pk.strip_prefix(&prefix)) {
                    users.push((key.to_string(), UserStatus::parse(item.str("status").unwrap_or_default())));
                }
            }
        }
        users.sort();
        Ok(users)
    }

    async fn reserve_licences(&self, tenant: &str, limit: u32, claim: &str, decision: LicenceClaim) -> Result<LicenceClaim> {
        self.pool_reserve(tenant, limit, claim, decision).await
    }

    async fn settle_licences(&self, tenant: &str, claim: &str, returned: u32) -> Result<()> {
        self.pool_settle(tenant, claim, returned).await
    }

    async fn licences_used(&self, tenant: &str) -> Result<u32> {
        Ok(self.pool_stored(tenant).await?.unwrap_or(0).max(0) as u32)
    }

    async fn set_licences_used(&self, tenant: &str, used: u32) -> Result<()> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(Self::pool_pk(tenant)))
            .update_expression("SET used = :n")
            .expression_attribute_values(":n", n(used))
            .send()
            .await
            .map_err(ddb_err("UpdateItem"))?;
        Ok(())
    }

    async fn org_exists(&self, tenant: &str, name: &str) -> Result<bool> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(org_pk(tenant, name)))
            .projection_expression("pk, kind")
            .consistent_read(true)
            .send()
            .await
            .map_err(ddb_err("GetItem"))?;
        Ok(out.item.is_some_and(|i| i.str("kind") != Some(TOMBSTONE)))
    }

    async fn count_org_users(&self, tenant: &str, name: &str) -> Result<u64> {
        let mut total = 0u64;
        for shard in 0..USER_SHARDS {
            let mut pages = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(GSI)
                .key_condition_expression("gsi1pk = :p AND gsi1sk = :o")
                .expression_attribute_values(":p", s(format!("T#{tenant}#{shard}")))
                .expression_attribute_values(":o", s(name.to_lowercase()))
                .select(Select::Count)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                total += page.map_err(ddb_err("Query"))?.count.max(0) as u64;
            }
        }
        Ok(total)
    }
}

fn txn_err(e: aws_sdk_dynamodb::error::BuildError) -> Error {
    Error::Build { what: "transaction", message: e.to_string() }
}

type TxnError = aws_sdk_dynamodb::error::SdkError<
    aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError,
    aws_sdk_dynamodb::config::http::HttpResponse,
>;

/// A transaction cancelled because the condition of its first item failed (our transactions put
/// the item whose condition decides first).
fn first_condition_failed(e: &TxnError) -> bool {
    cancellation_codes(e).is_some_and(|c| c.first().map(String::as_str) == Some("ConditionalCheckFailed"))
}

/// Cancellation reasons of a failed transaction, when it was cancelled.
fn cancellation_codes(e: &TxnError) -> Option<Vec<String>> {
    cancellation(e).map(|r| r.into_iter().map(|(code, _)| code).collect())
}

/// Cancellation reasons with the old image each item returned (when it asked for one).
fn cancellation(e: &TxnError) -> Option<Vec<(String, Option<Item>)>> {
    match e.as_service_error()? {
        aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(tc) => {
            Some(tc.cancellation_reasons().iter().map(|r| (r.code().unwrap_or("None").to_string(), r.item.clone())).collect())
        }
        _ => None,
    }
}

impl DynamoDirectory {
    fn pool_pk(tenant: &str) -> String {
        format!("L#{tenant}")
    }
    fn claim_pk(claim: &str) -> String {
        format!("R#{claim}")
    }

    /// The pool's `used` as stored, which can be below zero (licences given back for users
    /// created before the pool was configured); `None` when never written.
    async fn pool_stored(&self, tenant: &str) -> Result<Option<i64>> {
        Ok(self.item(Self::pool_pk(tenant)).await?.as_ref().and_then(|i| i.num::<i64>("used")))
    }

    /// One item, read consistently (the pool and its claims decide on the latest write).
    async fn item(&self, pk: String) -> Result<Option<Item>> {
        let out = self.client.get_item().table_name(&self.table).key("pk", s(pk)).consistent_read(true).send().await;
        Ok(out.map_err(ddb_err("GetItem"))?.item)
    }

    async fn recorded_claim(&self, claim: &str) -> Result<Option<LicenceClaim>> {
        self.item(Self::claim_pk(claim))
            .await?
            .as_ref()
            .map(|i| {
                let decision: LicenceClaim =
                    serde_json::from_str(i.str("decision").unwrap_or("{}")).map_err(|e| Error::corrupt("licence claim", e))?;
                Ok(LicenceClaim { granted: i.num("granted").unwrap_or(0), ..decision })
            })
            .transpose()
    }
}

/// Licence pool: one counter item per tenant (`used`), written twice per chunk (reserve, settle),
/// never once per row. Both are one transaction with the chunk's claim item, so a retried chunk
/// gets back exactly what it was granted and gives back once. Both change the count with an
/// atomic conditional `ADD`; the condition keeps it within 0..=limit, and a refused condition
/// returns the count it saw, from which the next try is computed (no read first).
impl DynamoDirectory {
    pub async fn pool_reserve(&self, tenant: &str, limit: u32, claim: &str, decision: LicenceClaim) -> Result<LicenceClaim> {
        if let Some(recorded) = self.recorded_claim(claim).await? {
            return Ok(LicenceClaim { repeated: true, ..recorded });
        }
        let ttl = chrono::Utc::now().timestamp() + MARKER_TTL_SECS;
        let wanted = decision.takers.len() as u32;
        let doc = serde_json::to_string(&decision).map_err(|e| Error::corrupt("licence claim", e))?;
        // What the pool is believed to hold: unknown until a condition says otherwise.
        let mut seen: Option<i64> = None;
        for attempt in 0..100u64 {
            let (granted, change) = match seen {
                None => (wanted.min(limit), PoolChange::AddWithin { limit }),
                // A count below zero (licences given back that were never counted) is repaired.
                Some(old) if old < 0 => (wanted.min(limit), PoolChange::Repair { old }),
                Some(old) => (wanted.min(limit.saturating_sub(old as u32)), PoolChange::AddWithin { limit }),
            };
            let record = Put::builder()
                .table_name(&self.table)
                .item("pk", s(Self::claim_pk(claim)))
                .item("granted", n(granted))
                .item("decision", s(&doc))
                .item("ttl", n(ttl))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map_err(txn_err)?;
            let mut txn = self.client.transact_write_items().transact_items(TransactWriteItem::builder().put(record).build());
            if granted > 0 || matches!(change, PoolChange::Repair { .. }) {
                txn = txn.transact_items(TransactWriteItem::builder().update(self.pool_update(tenant, granted as i64, change)?).build());
            }
            match txn.send().await {
                Ok(_) => return Ok(LicenceClaim { granted, ..decision }),
                Err(e) => match cancellation(&e) {
                    // The claim was recorded meanwhile (a concurrent duplicate of the same chunk).
                    Some(reasons) if reasons.first().is_some_and(|(code, _)| code == "ConditionalCheckFailed") => {
                        let recorded = self.recorded_claim(claim).await?.ok_or_else(|| Error::corrupt("licence claim", "vanished"))?;
                        return Ok(LicenceClaim { repeated: true, ..recorded });
                    }
                    // The pool was not as assumed: the refusal says what it holds.
                    Some(reasons) if reasons.get(1).is_some_and(|(code, _)| code == "ConditionalCheckFailed") => {
                        seen = Some(match &reasons[1].1 {
                            Some(item) => item.num::<i64>("used").unwrap_or(0),
                            None => self.pool_stored(tenant).await?.unwrap_or(0),
                        });
                    }
                    // A transaction conflict: another chunk is changing the pool right now.
                    Some(_) => tokio::time::sleep(std::time::Duration::from_millis(5 + attempt * 3)).await,
                    None => return Err(ddb_err("TransactWriteItems")(e)),
                },
            }
        }
        Err(Error::Transient { service: "dynamodb", operation: "TransactWriteItems", message: "licence pool contended".into() })
    }

    /// Give `returned` licences back, once per claim, never taking the count below zero (a count
    /// that low was wrong already: users that existed before the pool; `recount-licences`).
    async fn pool_settle(&self, tenant: &str, claim: &str, returned: u32) -> Result<()> {
        let mut seen: Option<i64> = None;
        for attempt in 0..100u64 {
            let mark = Update::builder()
                .table_name(&self.table)
                .key("pk", s(Self::claim_pk(claim)))
                .update_expression("SET settled = :t")
                .condition_expression("attribute_exists(pk) AND attribute_not_exists(settled)")
                .expression_attribute_values(":t", Av::Bool(true))
                .build()
                .map_err(txn_err)?;
            let mut txn = self.client.transact_write_items().transact_items(TransactWriteItem::builder().update(mark).build());
            if returned > 0 {
                let change = match seen {
                    Some(old) if old < returned as i64 => PoolChange::Clamp { old },
                    _ => PoolChange::SubtractAbove,
                };
                txn =
                    txn.transact_items(TransactWriteItem::builder().update(self.pool_update(tenant, -(returned as i64), change)?).build());
            }
            match txn.send().await {
                Ok(_) => return Ok(()),
                Err(e) => match cancellation(&e) {
                    // Settled already (a retried chunk, or a duplicate).
                    Some(reasons) if reasons.first().is_some_and(|(code, _)| code == "ConditionalCheckFailed") => return Ok(()),
                    Some(reasons) if reasons.get(1).is_some_and(|(code, _)| code == "ConditionalCheckFailed") => {
                        seen = Some(match &reasons[1].1 {
                            Some(item) => item.num::<i64>("used").unwrap_or(0),
                            None => self.pool_stored(tenant).await?.unwrap_or(0),
                        });
                    }
                    Some(_) => tokio::time::sleep(std::time::Duration::from_millis(5 + attempt * 3)).await,
                    None => return Err(ddb_err("TransactWriteItems")(e)),
                },
            }
        }
        Err(Error::Transient { service: "dynamodb", operation: "TransactWriteItems", message: "licence pool contended".into() })
    }

    /// The pool item's part of a reserve or settle transaction; a refused condition returns the
    /// pool as it was.
    fn pool_update(&self, tenant: &str, delta: i64, change: PoolChange) -> Result<Update> {
        let update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(Self::pool_pk(tenant)))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        let update = match change {
            // Never above the limit: the count before may be at most limit - delta.
            PoolChange::AddWithin { limit } => update
                .update_expression("ADD used :d")
                .condition_expression("attribute_not_exists(used) OR (used >= :zero AND used <= :room)")
                .expression_attribute_values(":zero", n(0))
                .expression_attribute_values(":room", n(limit as i64 - delta)),
            // Never below zero: the count before must hold what comes back.
            PoolChange::SubtractAbove => update
                .update_expression("ADD used :d")
                .condition_expression("used >= :back")
                .expression_attribute_values(":back", n(-delta)),
            PoolChange::Repair { old } | PoolChange::Clamp { old } => {
                let value = if matches!(change, PoolChange::Repair { .. }) { delta } else { 0 };
                // A pool never written reads as zero.
                let cond = if old == 0 { "attribute_not_exists(used) OR used = :old" } else { "used = :old" };
                return update
                    .update_expression("SET used = :d")
                    .condition_expression(cond)
                    .expression_attribute_values(":old", n(old))
                    .expression_attribute_values(":d", n(value))
                    .build()
                    .map_err(txn_err);
            }
        };
        update.expression_attribute_values(":d", n(delta)).build().map_err(txn_err)
    }
}

/// How a reserve or settle changes the pool's count.
#[derive(Debug, Clone, Copy)]
enum PoolChange {
    /// `ADD` a grant while the count stays within the limit.
    AddWithin { limit: u32 },
    /// `ADD` a negative give-back while the count stays at zero or above.
    SubtractAbove,
    /// The count was below zero: set it to the grant.
    Repair { old: i64 },
    /// The count holds less than comes back: set it to zero.
    Clamp { old: i64 },
}

/// A job reaching a final state leaves the open-jobs index.
fn closing(to: JobState) -> &'static str {
    if to.is_final() { " REMOVE gsi2pk, gsi2sk" } else { "" }
}

pub struct DynamoJobs {
    client: Client,
    table: String,
}

impl DynamoJobs {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoJobs { client, table: table.into() }
    }
    /// The job's item, read consistently (the job's state machine depends on the latest write).
    async fn job_item(&self, id: &str) -> Result<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(format!("J#{id}")))
            .consistent_read(true)
            .send()
            .await
            .map_err(ddb_err("GetItem"))?;
        Ok(out.item)
    }

    fn marker_pk(id: &str, phase: usize, seq: u32) -> String {
        format!("C#{id}#{phase}#{seq}")
    }
}

#[async_trait]
impl JobStore for DynamoJobs {
    async fn acquire_replace(&self, tenant: &str, id: &str) -> Result<Option<String>> {
        use aws_sdk_dynamodb::operation::put_item::PutItemError;
        let pk = format!("X#{tenant}#replace");
        // `None`: take a free lock (or keep ours); `Some(h)`: take it over from `h`, which ended.
        let mut from: Option<String> = None;
        for _ in 0..5 {
            let req = self.client.put_item().table_name(&self.table).item("pk", s(&pk)).item("holder", s(id));
            let req = match &from {
                None => req.condition_expression("attribute_not_exists(pk) OR holder = :me").expression_attribute_values(":me", s(id)),
                Some(old) => req.condition_expression("holder = :old").expression_attribute_values(":old", s(old)),
            };
            let res = req.return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld).send().await;
            // The holder comes back with the failed condition: no second read.
            let holder = match res {
                Ok(_) => return Ok(None),
                Err(e) if is_condition_failed(&e) => match e.as_service_error() {
                    Some(PutItemError::ConditionalCheckFailedException(c)) => c.item().and_then(|i| i.str("holder")).map(str::to_string),
                    _ => None,
                },
                Err(e) => return Err(ddb_err("PutItem")(e)),
            };
            let Some(holder) = holder else {
                from = None; // released meanwhile
                continue;
            };
            if self.get(&holder).await?.is_some_and(|j| !j.state.is_final()) {
                return Ok(Some(holder));
            }
            from = Some(holder);
        }
        Err(Error::Transient { service: "dynamodb", operation: "PutItem", message: "replace lock contended".into() })
    }

    async fn create_or_get(&self, job: &Job) -> Result<(Job, bool)> {
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(Item::from(job)))
            .condition_expression("attribute_not_exists(pk)")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(_) => Ok((job.clone(), true)),
            Err(e) if is_condition_failed(&e) => match self.get(&job.id).await? {
                Some(existing) => Ok((existing, false)),
                None => Err(Error::Transient { service: "dynamodb", operation: "PutItem", message: "job vanished after conflict".into() }),
            },
            Err(e) => Err(ddb_err("PutItem")(e)),
        }
    }

    async fn get(&self, id: &str) -> Result<Option<Job>> {
        self.job_item(id).await?.as_ref().map(Job::try_from).transpose()
    }

    async fn set_plan(&self, id: &str, plan: &Plan) -> Result<()> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("J#{id}")))
            .update_expression(format!(
                "SET {}, total_rows = :t",
                (0..PHASES).map(|p| format!("chunks{p} = :c{p}")).collect::<Vec<_>>().join(", ")
            ))
            .expression_attribute_values(":t", n(plan.total_rows));
        for p in 0..PHASES {
            req = req.expression_attribute_values(format!(":c{p}"), n(plan.phase_chunks[p]));
        }
        req.send().await.map_err(ddb_err("UpdateItem"))?;
        Ok(())
    }

    async fn transition(&self, id: &str, from: JobState, to: JobState, message: Option<&str>) -> Result<bool> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("J#{id}")))
            .condition_expression("#state = :from")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":from", s(from.as_str()))
            .expression_attribute_values(":to", s(to.as_str()));
        req = match message {
            Some(m) => {
                req.update_expression(format!("SET #state = :to, message = :m{}", closing(to))).expression_attribute_values(":m", s(m))
            }
            None => req.update_expression(format!("SET #state = :to{}", closing(to))),
        };
        match req.send().await {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(ddb_err("UpdateItem")(e)),
        }
    }

    async fn record_chunk(&self, id: &str, phase: usize, seq: u32) -> Result<bool> {
        // Marker and counter in one transaction: a chunk is counted exactly once, even when its
        // invocation is retried after crashing between the two writes.
        let ttl = chrono::Utc::now().timestamp() + MARKER_TTL_SECS;
        let put = Put::builder()
            .table_name(&self.table)
            .item("pk", s(Self::marker_pk(id, phase, seq)))
            .item("ttl", n(ttl))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(|e| Error::Build { what: "transaction", message: e.to_string() })?;
        let update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(format!("J#{id}")))
            .update_expression(format!("ADD done{phase} :one"))
            .expression_attribute_values(":one", n(1))
            .build()
            .map_err(|e| Error::Build { what: "transaction", message: e.to_string() })?;
        let res = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(put).build())
            .transact_items(TransactWriteItem::builder().update(update).build())
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if first_condition_failed(&e) => Ok(false),
            Err(e) => Err(ddb_err("TransactWriteItems")(e)),
        }
    }

    async fn chunk_recorded(&self, id: &str, phase: usize, seq: u32) -> Result<bool> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(Self::marker_pk(id, phase, seq)))
            .consistent_read(true)
            .send()
            .await
            .map_err(ddb_err("GetItem"))?;
        Ok(out.item.is_some())
    }

    async fn claim_email(&self, id: &str, kind: &str, lease_secs: i64) -> Result<bool> {
        let now = chrono::Utc::now();
        let stamp = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("J#{id}")))
            // The claim is "<time> <token>", the token unique to this call: when the response is
            // lost and the SDK retries, the retry recognises its own claim. A claim never marked
            // sent and older than the lease (its invocation has ended) is taken over: the email
            // is then sent late rather than never.
            .update_expression("SET #k = :claim")
            .condition_expression(
                "attribute_exists(pk) AND attribute_not_exists(#sent) AND (attribute_not_exists(#k) OR #k = :claim OR #k < :stale)",
            )
            .expression_attribute_names("#k", format!("email_{kind}"))
            .expression_attribute_names("#sent", format!("email_{kind}_sent"))
            .expression_attribute_values(":claim", s(format!("{} {}", stamp(now), uuid::Uuid::new_v4())))
            .expression_attribute_values(":stale", s(stamp(now - chrono::Duration::seconds(lease_secs))))
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(ddb_err("UpdateItem")(e)),
        }
    }

    async fn mark_email_sent(&self, id: &str, kind: &str) -> Result<()> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("J#{id}")))
            .update_expression("SET #sent = :now")
            .expression_attribute_names("#sent", format!("email_{kind}_sent"))
            .expression_attribute_values(":now", s(chrono::Utc::now().to_rfc3339()))
            .send()
            .await
            .map_err(ddb_err("UpdateItem"))?;
        Ok(())
    }

    async fn email_sent(&self, id: &str, kind: &str) -> Result<bool> {
        Ok(self.job_item(id).await?.is_some_and(|i| i.contains_key(&format!("email_{kind}_sent"))))
    }

    async fn finish(&self, id: &str, state: JobState, succeeded: u32, failed: u32, skipped: u32) -> Result<()> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("J#{id}")))
            .update_expression("SET #state = :c, succeeded = :s, failed = :f, skipped = :k, completed_at = :now REMOVE gsi2pk, gsi2sk")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":c", s(state.as_str()))
            .expression_attribute_values(":s", n(succeeded))
            .expression_attribute_values(":f", n(failed))
            .expression_attribute_values(":k", n(skipped))
            .expression_attribute_values(":now", s(chrono::Utc::now().to_rfc3339()))
            .send()
            .await
            .map_err(ddb_err("UpdateItem"))?;
        Ok(())
    }

    async fn oldest_open(&self) -> Result<Option<(String, String)>> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(OPEN_JOBS)
            .key_condition_expression("gsi2pk = :p")
            .expression_attribute_values(":p", s("OPEN"))
            .limit(1)
            .send()
            .await
            .map_err(ddb_err("Query"))?;
        Ok(out
            .items()
            .first()
            .and_then(|i| i.str("gsi2sk"))
            .and_then(|sk| sk.split_once('#'))
            .map(|(at, id)| (id.to_string(), at.to_string())))
    }

    async fn open_jobs(&self, limit: usize) -> Result<Vec<(String, String)>> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(OPEN_JOBS)
            .key_condition_expression("gsi2pk = :p")
            .expression_attribute_values(":p", s("OPEN"))
            .limit(limit.clamp(1, 1000) as i32)
            .send()
            .await
            .map_err(ddb_err("Query"))?;
        Ok(out
            .items()
            .iter()
            .filter_map(|i| i.str("gsi2sk"))
            .filter_map(|sk| sk.split_once('#'))
            .map(|(at, id)| (id.to_string(), at.to_string()))
            .collect())
    }

    async fn recent(&self, tenant: &str, limit: usize) -> Result<Vec<Job>> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(GSI)
            .key_condition_expression("gsi1pk = :p")
            .expression_attribute_values(":p", s(format!("JOBS#{tenant}")))
            .scan_index_forward(false)
            .limit(limit.min(1000) as i32)
            .send()
            .await
            .map_err(ddb_err("Query"))?;
        out.items().iter().map(Job::try_from).collect()
    }
}

/// Invites live in the jobs table (`I#<tenant>#<email>`); pending ones are in `gsi1` under
/// `INVITES#<shard>` sorted by due time, and leave the index once sent (sparse index).
pub struct DynamoInvites {
    client: Client,
    table: String,
}

impl DynamoInvites {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoInvites { client, table: table.into() }
    }
    fn pk(i: &Invite) -> String {
        format!("I#{}#{}", i.tenant, i.email)
    }
    fn shard(email: &str) -> String {
        let h = email.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
        format!("INVITES#{}", h % USER_SHARDS as u64)
    }
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

#[async_trait]
impl Invites for DynamoInvites {
    async fn schedule(&self, i: &Invite) -> Result<()> {
        let mut req = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(Self::pk(i)))
            .item("tenant", s(&i.tenant))
            .item("email", s(&i.email))
            .item("due_at", s(&i.due_at))
            .item("job", s(&i.job))
            .item("status", s("pending"))
            .item("gsi1pk", s(Self::shard(&i.email)))
            .item("gsi1sk", s(format!("{}#{}#{}", i.due_at, i.tenant, i.email)))
            .condition_expression("attribute_not_exists(pk) OR job <> :job")
            .expression_attribute_values(":job", s(&i.job));
        if let Some(f) = &i.first_name {
            req = req.item("first_name", s(f));
        }
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Ok(()),
            Err(e) => Err(ddb_err("PutItem")(e)),
        }
    }

    async fn due(&self, now: &str, limit: usize) -> Result<Vec<Invite>> {
        let mut out = Vec::new();
        for shard in 0..USER_SHARDS {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(GSI)
                .key_condition_expression("gsi1pk = :p AND gsi1sk < :bound")
                .expression_attribute_values(":p", s(format!("INVITES#{shard}")))
                .expression_attribute_values(":bound", s(format!("{now}~")))
                .limit(limit.clamp(1, 1000) as i32)
                .send()
                .await
                .map_err(ddb_err("Query"))?;
            for item in page.items() {
                out.push(Invite::try_from(item)?);
            }
        }
        out.sort_by(|a, b| a.due_at.cmp(&b.due_at));
        out.truncate(limit);
        Ok(out)
    }

    async fn claim(&self, i: &Invite) -> Result<bool> {
        let now = chrono::Utc::now();
        // A claim older than the lease is a sender that died before sending: take it over.
        let stale = (now - chrono::Duration::minutes(10)).to_rfc3339();
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(Self::pk(i)))
            .update_expression("SET #st = :sending, claimed_at = :now")
            .condition_expression("job = :job AND (#st = :pending OR (#st = :sending AND claimed_at < :stale))")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":sending", s("sending"))
            .expression_attribute_values(":pending", s("pending"))
            .expression_attribute_values(":now", s(now.to_rfc3339()))
            .expression_attribute_values(":stale", s(stale))
            .expression_attribute_values(":job", s(&i.job))
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(ddb_err("UpdateItem")(e)),
        }
    }

    async fn mark_sent(&self, i: &Invite) -> Result<()> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(Self::pk(i)))
            .update_expression("SET #st = :sent, sent_at = :now REMOVE gsi1pk, gsi1sk")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":sent", s("sent"))
            .expression_attribute_values(":now", s(chrono::Utc::now().to_rfc3339()))
            .send()
            .await
            .map_err(ddb_err("UpdateItem"))?;
        Ok(())
    }

    async fn record_failure(&self, i: &Invite, reason: &str, retry_at: Option<&str>) -> Result<()> {
        let req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(Self::pk(i)))
            .condition_expression("job = :job")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":job", s(&i.job))
            .expression_attribute_values(":one", Av::N("1".into()))
            .expression_attribute_values(":reason", s(reason))
            .expression_attribute_values(":now", s(chrono::Utc::now().to_rfc3339()));
        let req = match retry_at {
            Some(at) => req
                .update_expression(
                    "SET #st = :pending, due_at = :at, gsi1sk = :sk, last_error = :reason, failed_at = :now ADD attempts :one",
                )
                .expression_attribute_values(":pending", s("pending"))
                .expression_attribute_values(":at", s(at))
                .expression_attribute_values(":sk", s(format!("{at}#{}#{}", i.tenant, i.email))),
            None => req
                .update_expression("SET #st = :failed, last_error = :reason, failed_at = :now ADD attempts :one REMOVE gsi1pk, gsi1sk")
                .expression_attribute_values(":failed", s("failed")),
        };
        match req.send().await {
            Ok(_) => Ok(()),
            // Another job's invite replaced it meanwhile: nothing of this one to record.
            Err(e) if is_condition_failed(&e) => Ok(()),
            Err(e) => Err(ddb_err("UpdateItem")(e)),
        }
    }
}

/// Create the directory and jobs tables if missing (local stack and tests; infra/ does it in AWS).
pub async fn ensure_tables(client: &Client, directory: &str, jobs: &str) -> Result<()> {
    for table in [directory, jobs] {
        let index = |name: &str, pk: &str, sk: &str, projection: Projection| {
            GlobalSecondaryIndex::builder()
                .index_name(name)
                .key_schema(KeySchemaElement::builder().attribute_name(pk).key_type(KeyType::Hash).build().map_err(build_err)?)
                .key_schema(KeySchemaElement::builder().attribute_name(sk).key_type(KeyType::Range).build().map_err(build_err)?)
                .projection(projection)
                .build()
                .map_err(build_err)
        };
        // Users: keys + status (org user counts, replace mode's diff). Jobs: whole items for `status`.
        let gsi = if table == jobs {
            index(GSI, "gsi1pk", "gsi1sk", Projection::builder().projection_type(ProjectionType::All).build())?
        } else {
            index(
                GSI,
                "gsi1pk",
                "gsi1sk",
                Projection::builder().projection_type(ProjectionType::Include).non_key_attributes("status").build(),
            )?
        };
        let attr = |name: &str| {
            AttributeDefinition::builder().attribute_name(name).attribute_type(ScalarAttributeType::S).build().map_err(build_err)
        };
        let res = client
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("pk")?)
            .attribute_definitions(attr("gsi1pk")?)
            .attribute_definitions(attr("gsi1sk")?)
            .key_schema(KeySchemaElement::builder().attribute_name("pk").key_type(KeyType::Hash).build().map_err(build_err)?)
            .global_secondary_indexes(gsi);
        // Jobs: a sparse index of open jobs, oldest first (the job-age alarm).
        let res = if table == jobs {
            res.attribute_definitions(attr("gsi2pk")?).attribute_definitions(attr("gsi2sk")?).global_secondary_indexes(index(
                OPEN_JOBS,
                "gsi2pk",
                "gsi2sk",
                Projection::builder().projection_type(ProjectionType::KeysOnly).build(),
            )?)
        } else {
            res
        };
        let res = res.send().await;
        match res {
            Ok(_) => {
                if table == jobs {
                    client
                        .update_time_to_live()
                        .table_name(table)
                        .time_to_live_specification(
                            TimeToLiveSpecification::builder().attribute_name("ttl").enabled(true).build().map_err(build_err)?,
                        )
                        .send()
                        .await
                        .map_err(ddb_err("UpdateTimeToLive"))?;
                }
            }
            Err(e) if e.code() == Some("ResourceInUseException") => {}
            Err(e) => return Err(ddb_err("CreateTable")(e)),
        }
    }
    Ok(())
}

fn build_err(e: aws_sdk_dynamodb::error::BuildError) -> Error {
    Error::Build { what: "table definition", message: e.to_string() }
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
        assert_eq!(item.str("pk"), Some("U#acme#ann@x.com"));
        assert_eq!(item.str("gsi1sk"), Some("north"));
        assert!(item.str("gsi1pk").unwrap().starts_with("T#acme#"));
        assert_eq!(item.str("last_write"), Some("job1#7"));
        // Rough item size: attribute names + values, well under the 1 KB of one write unit.
        let size: usize = item.iter().map(|(k, v)| k.len() + v.as_s().map(|s| s.len()).unwrap_or(16)).sum();
        assert!(size < 400, "{size}");
        let back = User::try_from(&item).unwrap();
        assert_eq!(back.fields, fields);
        assert_eq!(back.status, crate::model::UserStatus::Active);
    }

    #[test]
    fn shards_spread_users_and_are_stable() {
        let shards: std::collections::HashSet<String> = (0..200).map(|i| user_shard("acme", &format!("u{i}@x.com"))).collect();
        assert_eq!(shards.len(), USER_SHARDS as usize);
        assert_eq!(user_shard("acme", "ann@x.com"), user_shard("acme", "ann@x.com"));
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
