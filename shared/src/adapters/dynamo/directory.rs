//! The directory port: tenants, users and organizations, one conditional write per `rules::Attempt`.

use super::codec::*;
use super::ext::*;
use super::licences::PoolId;
use super::*;
use crate::error::{Error, Result};
use crate::model::{Before, Change, Restore, Target, Tenant, User, UserStatus};
use crate::ports::{Consistency, ContactClaim, Directory, Licence, LicenceClaim, Moved, Restored, Stamp, UsersRead};
use crate::rules::{Attempt, Attempted};
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{ReturnValue, ReturnValuesOnConditionCheckFailure, Select};
use std::collections::HashMap;

pub struct DynamoDirectory {
    pub(super) client: Client,
    pub(super) table: String,
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
            .set_key(Some(key_item(&user_key(tenant, email))))
            .consistent_read(true)
            .send()
            .await
            .map_err(ddb_err("GetItem"))?;
        out.item.filter(is_user).map(User::try_from).transpose()
    }

    /// A query of one of a tenant's 16 user partitions.
    fn users_query(&self, tenant: &str, shard: u32) -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder {
        let query = self.client.query().table_name(&self.table).key_condition_expression("pk = :p");
        query.expression_attribute_values(":p", s(user_partition(tenant, shard)))
    }

    /// Up to 100 users in one `BatchGetItem` (consistent unless `read` is a prediction's); keys it
    /// could not serve are asked again.
    async fn users_batch(&self, tenant: &str, batch: &[String], read: Consistency) -> Result<UsersRead> {
        let keys: Vec<Item> = batch.iter().map(|e| key_item(&user_key(tenant, e))).collect();
        let mut found = UsersRead::default();
        // Room for every key at once: grown instead, the users read so far moved at each step.
        found.live.reserve(batch.len());
        batch_get(&self.client, &self.table, keys, read, |item| {
            if is_user(&item) {
                let user = User::try_from(item)?;
                found.live.insert(user.email.clone(), Box::new(user));
            } else if let (Some(TOMBSTONE), Some(email), Some(order)) = (item.str("kind"), item.str("sk"), item.str("ord")) {
                found.deleted.insert(email.to_string(), order.to_string());
            }
            Ok(())
        })
        .await?;
        Ok(found)
    }

    /// One conditional write: `Ok(old)` when its condition held (`old`: the item before, asked
    /// for by Upsert only), `Err(old)` when it failed, with the item as it was.
    async fn attempt(&self, tenant: &str, target: &Target, stamp: &Stamp, attempt: Attempt) -> Result<WriteResult> {
        let (key, kind) = match target {
            Target::User { email, .. } => (user_key(tenant, email), "user"),
            Target::Org { name, .. } => (org_key(tenant, name), "org"),
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
                let mut item = match target {
                    Target::User { email, fields } => {
                        let mut item: Item = UserItem { tenant, email, fields, stamp }.into();
                        item.insert("lic".into(), s(stamp.token()));
                        item
                    }
                    Target::Org { name, email, phone, external_id, parent } => {
                        let mut item = org_item(tenant, name, stamp);
                        item.extend(email.iter().map(|e| ("contact_email".to_string(), s(e))));
                        item.extend(phone.iter().map(|p| ("phone".to_string(), s(p))));
                        item.extend(external_id.iter().map(|p| ("external_id".to_string(), s(p))));
                        item.extend(parent.iter().map(|p| ("parent".to_string(), s(p))));
                        item
                    }
                };
                item.insert("ord".into(), s(&stamp.order));
                let cond = format!("(attribute_not_exists(pk) OR {} = {}) AND {ordered}", u.name("kind"), u.value(s(TOMBSTONE)));
                self.put_if(item, cond, u).await
            }
            Attempt::Tombstone { active } => {
                let mut item = key_item(&key);
                item.extend([
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
                match target {
                    Target::User { email, fields } => {
                        profile(&mut u, fields);
                        u.set_if_missing("created_at", s(&stamp.at))
                            .set_if_missing("created_by", s(stamp.token()))
                            // Given once: kept by every later write (and by a user from before ids, given now).
                            .set_if_missing("user_id", s(crate::model::new_user_id(tenant, email, &stamp.token())))
                            .set_if_missing("status", s(UserStatus::Active.as_str()))
                            .set("kind", s("user"))
                            .set("tenant", s(tenant))
                            .set("email", s(email.as_str()));
                    }
                    Target::Org { name, .. } => {
                        org_contact(&mut u, target);
                        u.set("name", s(name))
                            .set("kind", s("org"))
                            .set("tenant", s(tenant))
                            .set_if_missing("created_at", s(&stamp.at))
                            .set_if_missing("created_by", s(stamp.token()));
                    }
                }
                // Over a tombstone: the item lives again.
                u.remove("ttl").remove("deleted_at");
                let cond = if may_create {
                    // Never over an organization's contact email.
                    format!("NOT ({} = {}) AND {ordered}", u.name("kind"), u.value(s(CONTACT)))
                } else {
                    format!("{} AND {ordered}", live(&mut u))
                };
                self.update_if(&key, u, cond, stamp).await
            }
            Attempt::Transition { to, strip_targeting } => {
                let from = if to == UserStatus::Active { UserStatus::Disabled } else { UserStatus::Active };
                let cond = format!("{} AND {} = {} AND {ordered}", live(&mut u), u.name("status"), u.value(s(from.as_str())));
                u.set("status", s(to.as_str())).set("lic", s(stamp.token()));
                if strip_targeting {
                    // Replace mode: disabled, every group assignment and content targeting removed.
                    u.remove("groups").remove("manual_groups").remove("department");
                }
                self.update_if(&key, u, cond, stamp).await
            }
            Attempt::Keep { is } => {
                let cond = format!("{} AND {} = {} AND {ordered}", live(&mut u), u.name("status"), u.value(s(is.as_str())));
                self.update_if(&key, u, cond, stamp).await
            }
            Attempt::Update { revoke } => {
                match (target, revoke) {
                    (Target::User { fields, .. }, true) if fields.products.is_empty() => {
                        u.remove("products");
                    }
                    (Target::User { fields, .. }, true) => {
                        u.delete("products", string_set(&fields.products));
                    }
                    (Target::User { fields, .. }, false) => profile(&mut u, fields),
                    (Target::Org { name, .. }, _) => {
                        org_contact(&mut u, target);
                        u.set("name", s(name));
                    }
                }
                let cond = format!("{} AND {ordered}", live(&mut u));
                self.update_if(&key, u, cond, stamp).await
            }
            Attempt::Invite => {
                let cond = format!("{} AND attribute_not_exists({}) AND {ordered}", live(&mut u), u.name("activated_at"));
                u.set("invited_at", s(&stamp.at));
                self.update_if(&key, u, cond, stamp).await
            }
        }
    }

    /// Conditional put; the old image comes back either way.
    async fn put_if(&self, item: Item, cond: String, u: UpdateExpr) -> Result<WriteResult> {
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(cond)
            .set_expression_attribute_names(Some(u.names))
            .set_expression_attribute_values(Some(u.values))
            .return_values(ReturnValue::AllOld)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(out) => Ok(Ok(out.attributes.filter(|a| !a.is_empty()))),
            Err(e) if is_condition_failed(&e) => Ok(Err(match e.into_service_error() {
                aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c) => c.item,
                _ => None,
            })),
            Err(e) => Err(ddb_err("PutItem")(e)),
        }
    }

    /// Conditional update stamped with the row (token, time, upload order); the item as it was
    /// comes back either way.
    async fn update_if(&self, key: &Key, mut u: UpdateExpr, cond: String, stamp: &Stamp) -> Result<WriteResult> {
        u.set("updated_at", s(&stamp.at)).set("last_write", s(stamp.token())).set("ord", s(&stamp.order));
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_item(key)))
            .update_expression(u.expression())
            .condition_expression(cond)
            .set_expression_attribute_names(Some(u.names))
            .set_expression_attribute_values(Some(u.values))
            // The item before, in full, whatever the write: returned at no cost, kept for undo.
            .return_values(ReturnValue::AllOld)
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
type WriteResult = std::result::Result<Option<Item>, Option<Item>>;

#[async_trait]
impl Directory for DynamoDirectory {
    async fn tenant(&self, id: &str) -> Result<Option<Tenant>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_item(&tenant_key(id))))
            .send()
            .await
            .map_err(ddb_err("GetItem"))?;
        out.item
            .as_ref()
            .and_then(|i| i.str("doc"))
            // Names and choices in the form rows are compared in, whatever wrote the item.
            .map(|doc| serde_json::from_str(doc).map(Tenant::in_nfc).map_err(|e| Error::corrupt(format!("tenant {id}"), e)))
            .transpose()
    }

    async fn put_tenant(&self, tenant: &Tenant) -> Result<()> {
        // Stored as one JSON document: tenant settings grow, and are always read whole.
        let doc = serde_json::to_string(tenant).map_err(|e| Error::corrupt("tenant", e))?;
        let mut item = key_item(&tenant_key(&tenant.id));
        item.extend([("kind".to_string(), s("tenant")), ("doc".to_string(), s(doc))]);
        self.client.put_item().table_name(&self.table).set_item(Some(item)).send().await.map_err(ddb_err("PutItem"))?;
        Ok(())
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :p")
            .expression_attribute_values(":p", s(tenant_key("").0))
            .into_paginator()
            .items()
            .send();
        while let Some(item) = pages.next().await {
            let item = item.map_err(ddb_err("Query"))?;
            if let Some(doc) = item.str("doc") {
                out.push(serde_json::from_str(doc).map(Tenant::in_nfc).map_err(|e| Error::corrupt("tenant", e))?);
            }
        }
        Ok(out)
    }

    async fn user(&self, tenant: &str, email: &str) -> Result<Option<User>> {
        self.get_user(tenant, &email.trim().to_lowercase()).await
    }

    async fn users(&self, tenant: &str, emails: &[String]) -> Result<crate::ports::Users> {
        Ok(self.read_users(tenant, emails, Consistency::Strong).await?.live)
    }

    async fn read_users(&self, tenant: &str, emails: &[String], read: Consistency) -> Result<UsersRead> {
        // BatchGetItem takes 100 keys a request; a chunk's requests go out together.
        let batches = emails.chunks(100).map(|batch| self.users_batch(tenant, batch, read));
        let mut found = UsersRead::default();
        for read in futures::future::try_join_all(batches).await? {
            found.merge(read);
        }
        Ok(found)
    }

    async fn write(&self, tenant: &str, target: &Target, attempt: Attempt, stamp: &Stamp) -> Result<Attempted> {
        Ok(match self.attempt(tenant, target, stamp, attempt).await? {
            Ok(old) => Attempted::Written(old.as_ref().map(seen), old.as_ref().map(image)),
            Err(old) => Attempted::Refused(old.as_ref().map(seen)),
        })
    }

    async fn restore(&self, tenant: &str, target: &Target, restore: &Restore, stamp: &Stamp) -> Result<Restored> {
        let key = match target {
            Target::User { email, .. } => user_key(tenant, email),
            Target::Org { name, .. } => org_key(tenant, name),
        };
        let mut item = match &restore.kept.before {
            Some(before) => from_image(before)?,
            // It did not exist: a tombstone, so an older upload cannot bring it back either.
            None => {
                let mut item = key_item(&key);
                item.extend([
                    ("kind".to_string(), s(TOMBSTONE)),
                    ("tenant".to_string(), s(tenant)),
                    ("deleted_at".to_string(), s(&stamp.at)),
                    ("ttl".to_string(), n(chrono::Utc::now().timestamp() + MARKER_TTL_SECS)),
                ]);
                item
            }
        };
        let token = stamp.token();
        item.extend(key_item(&key));
        item.insert("last_write".into(), s(&token));
        item.insert("ord".into(), s(&stamp.order));
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item.clone()))
            .condition_expression("last_write = :undone")
            .expression_attribute_values(":undone", s(&restore.kept.token))
            .return_values(ReturnValue::AllOld)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let current = match res {
            Ok(out) => out.attributes.filter(|a| !a.is_empty()),
            Err(e) if is_condition_failed(&e) => {
                let old = match e.into_service_error() {
                    aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c) => c.item,
                    _ => None,
                };
                return Ok(match old.as_ref().and_then(|o| o.str("last_write")) {
                    // Put back by an earlier attempt of this row.
                    Some(last) if last == token => {
                        Restored::Done { change: Change::Updated, licence: Licence::Unchanged, before: Before::Unknown }
                    }
                    Some(last) => Restored::ChangedSince(crate::rules::job_of(last).to_string()),
                    None => Restored::Gone,
                });
            }
            Err(e) => return Err(ddb_err("PutItem")(e)),
        };
        let live = |i: &Item| i.str("kind") != Some(TOMBSTONE);
        let was_active = current.as_ref().is_some_and(active);
        let licence = match (was_active, active(&item)) {
            (false, true) => Licence::Took,
            (true, false) => Licence::Freed,
            _ => Licence::Unchanged,
        };
        let change = match (current.as_ref().is_some_and(live), live(&item)) {
            (false, true) => Change::Created,
            (true, false) => Change::Deleted,
            _ => Change::Updated,
        };
        Ok(Restored::Done {
            change,
            licence,
            before: Before::Was {
                image: current.as_ref().map(image),
                active: was_active,
                pool: current.as_ref().and_then(|i| i.str("pool")).map(str::to_string),
            },
        })
    }

    async fn list_users(&self, tenant: &str) -> Result<Vec<(String, UserStatus)>> {
        let shard = |shard: u32| async move {
            let mut pages = self
                .users_query(tenant, shard)
                .projection_expression("sk, #st, kind")
                .expression_attribute_names("#st", "status")
                .into_paginator()
                .items()
                .send();
            let mut users = Vec::new();
            while let Some(item) = pages.next().await {
                let item = item.map_err(ddb_err("Query"))?;
                if is_user(&item)
                    && let Some(key) = item.str("sk")
                {
                    users.push((key.to_string(), UserStatus::parse(item.str("status").unwrap_or_default())));
                }
            }
            Ok::<_, Error>(users)
        };
        let mut users: Vec<(String, UserStatus)> = all_shards(shard).await?.into_iter().flatten().collect();
        users.sort();
        Ok(users)
    }

    async fn count_active_users(&self, tenant: &str, at_most: u64) -> Result<u64> {
        // In rounds over the 16 partitions at once, until the count reaches `at_most` (the count
        // then rules a hold out). Each round asks every partition still open for its share of
        // what is missing, scaled by how many of its items were not active users (`page_limit`).
        // Pages that doubled instead read about twice the bound once DynamoDB's 1 MB cut the
        // first pages short (the bench's nightly sync: 0.19 read units a row for the check where
        // 0.09 suffice).
        let mut open: Vec<CountCursor> = (0..USER_SHARDS).map(|shard| CountCursor { shard, ..CountCursor::default() }).collect();
        let mut count = 0u64;
        while count < at_most && !open.is_empty() {
            let need = (at_most - count).div_ceil(open.len() as u64) + 1;
            let pages = open.iter().map(|c| {
                self.users_query(tenant, c.shard)
                    .filter_expression("#st = :active AND (attribute_not_exists(kind) OR kind <> :gone)")
                    .expression_attribute_names("#st", "status")
                    .expression_attribute_values(":active", s(UserStatus::Active.as_str()))
                    .expression_attribute_values(":gone", s(TOMBSTONE))
                    .select(Select::Count)
                    .limit(page_limit(need, (c.evaluated, c.active), c.last))
                    .set_exclusive_start_key(c.start.clone())
                    .send()
            });
            let pages = futures::future::try_join_all(pages).await.map_err(ddb_err("Query"))?;
            for (cursor, page) in open.iter_mut().zip(pages) {
                let (evaluated, active) = (page.scanned_count().max(0) as u64, page.count().max(0) as u64);
                (count, cursor.active, cursor.evaluated) = (count + active, cursor.active + active, cursor.evaluated + evaluated);
                (cursor.last, cursor.start) = ((evaluated, active), page.last_evaluated_key);
            }
            open.retain(|c| c.start.is_some());
        }
        Ok(count)
    }

    async fn reserve_licences(
        &self,
        tenant: &str,
        pool: Option<&str>,
        limit: u32,
        claim: &str,
        decision: LicenceClaim,
    ) -> Result<LicenceClaim> {
        self.pool_reserve(&PoolId::new(tenant, pool), limit, claim, decision).await
    }

    async fn settle_licences(&self, tenant: &str, pool: Option<&str>, claim: &str, returned: u32) -> Result<()> {
        self.pool_settle(&PoolId::new(tenant, pool), claim, returned).await
    }

    async fn licences_used(&self, tenant: &str, pool: Option<&str>) -> Result<u32> {
        Ok(self.pool_stored(&PoolId::new(tenant, pool)).await?.unwrap_or(0).max(0) as u32)
    }

    async fn set_licences_used(&self, tenant: &str, pool: Option<&str>, used: u32) -> Result<()> {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::pool_key(&PoolId::new(tenant, pool))))
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
            .set_key(Some(key_item(&org_key(tenant, name))))
            .projection_expression("pk, kind")
            .consistent_read(true)
            .send()
            .await
            .map_err(ddb_err("GetItem"))?;
        Ok(out.item.is_some_and(|i| i.str("kind") != Some(TOMBSTONE)))
    }

    async fn org_email(&self, tenant: &str, name: &str) -> Result<Option<String>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_item(&org_key(tenant, name))))
            .consistent_read(true)
            .send()
            .await
            .map_err(ddb_err("GetItem"))?;
        Ok(out.item.filter(|i| i.str("kind") == Some("org")).and_then(|i| i.str("contact_email").map(str::to_string)))
    }

    async fn claim_contact(&self, tenant: &str, email: &str, org: &str) -> Result<ContactClaim> {
        let mut item = key_item(&user_key(tenant, email));
        item.extend([
            ("kind".to_string(), s(CONTACT)),
            ("tenant".to_string(), s(tenant)),
            ("contact_email".to_string(), s(email)),
            ("contact_of".to_string(), s(org)),
            ("contact_key".to_string(), s(org.to_lowercase())),
        ]);
        let cond = "attribute_not_exists(pk) OR kind = :gone OR (kind = :contact AND contact_key = :me)";
        let values = [(":gone", s(TOMBSTONE)), (":contact", s(CONTACT)), (":me", s(org.to_lowercase()))];
        Ok(match self.put_unless(item, cond, &values).await? {
            Ok(()) => ContactClaim::Claimed,
            Err(old) => match old.as_ref().filter(|o| o.str("kind") == Some(CONTACT)).and_then(|o| o.str("contact_of")) {
                Some(other) => ContactClaim::Org(other.to_string()),
                None => ContactClaim::User,
            },
        })
    }

    async fn release_contact(&self, tenant: &str, email: &str, org: &str) -> Result<()> {
        let values = [(":contact", s(CONTACT)), (":me", s(org.to_lowercase()))];
        self.delete_when(key_item(&user_key(tenant, email)), "kind = :contact AND contact_key = :me", &values).await
    }

    async fn external_ids(&self, tenant: &str, ids: &[String], read: Consistency) -> Result<HashMap<String, String>> {
        self.read_external_ids(tenant, ids, read).await
    }

    async fn org_ids(&self, tenant: &str, ids: &[String]) -> Result<HashMap<String, String>> {
        self.read_org_ids(tenant, ids).await
    }

    async fn put_org_id(&self, tenant: &str, id: &str, org: &str) -> Result<()> {
        self.put_org_id(tenant, id, org).await
    }

    async fn claim_external_id(&self, tenant: &str, id: &str, email: &str) -> Result<Option<String>> {
        self.put_external_id(tenant, id, email).await
    }

    async fn release_external_id(&self, tenant: &str, id: &str, email: &str) -> Result<()> {
        self.delete_external_id(tenant, id, email).await
    }

    async fn move_user(&self, tenant: &str, from: &str, to: &str, stamp: &Stamp) -> Result<Moved> {
        self.move_user_once(tenant, from, to, stamp).await
    }

    async fn moved_to(&self, tenant: &str, email: &str) -> Result<Option<String>> {
        self.moved_to_of(tenant, email).await
    }

    async fn repoint_associations(&self, tenant: &str, moves: &[(String, String)]) -> Result<u32> {
        self.repoint(tenant, moves).await
    }

    async fn org_user_counts(&self, tenant: &str, names: &[String]) -> Result<HashMap<String, u64>> {
        // Reads the tenant's users (organizations' deletions only): no index to keep. Each user's
        // organization comes back (names past 100 do not fit a filter's `IN`) and is counted here.
        let wanted: std::collections::HashSet<String> = names.iter().map(|n| n.to_lowercase()).collect();
        let wanted = &wanted;
        let shard = |shard: u32| async move {
            let mut pages = self
                .users_query(tenant, shard)
                .filter_expression("kind = :user AND attribute_exists(#org)")
                .projection_expression("#org")
                .expression_attribute_names("#org", ORG_KEY)
                .expression_attribute_values(":user", s("user"))
                .into_paginator()
                .items()
                .send();
            let mut counts = HashMap::<String, u64>::new();
            while let Some(item) = pages.next().await {
                if let Some(org) = item.map_err(ddb_err("Query"))?.str(ORG_KEY).filter(|org| wanted.contains(*org)) {
                    *counts.entry(org.to_string()).or_default() += 1;
                }
            }
            Ok::<_, Error>(counts)
        };
        let mut counts = HashMap::new();
        for shard in all_shards(shard).await? {
            for (org, n) in shard {
                *counts.entry(org).or_default() += n;
            }
        }
        Ok(counts)
    }
}

/// An organization row's details: set what the row gives (a blank cell leaves the stored value).
fn org_contact(u: &mut UpdateExpr, target: &Target) {
    let Target::Org { email, phone, external_id, parent, .. } = target else { return };
    for (attr, value) in [("contact_email", email), ("phone", phone), ("external_id", external_id), ("parent", parent)] {
        if let Some(v) = value {
            u.set(attr, s(v));
        }
    }
}

/// Where a partition's count of active users stands (`count_active_users`).
#[derive(Default)]
struct CountCursor {
    shard: u32,
    start: Option<Item>,
    /// Items read so far (`ScannedCount`: disabled users and tombstones too), and of them
    /// active users; the same for the last page alone.
    evaluated: u64,
    active: u64,
    last: (u64, u64),
}

/// How many items a partition's next page of the count reads to find `need` active users:
/// `need` at first, then `need` times the items read per active user found, so far or in the
/// last page, whichever is more. A run of inactive items thus grows the pages geometrically
/// (a page that found none asks `need` times its own size plus one) instead of creeping on by
/// the partition's earlier ratio.
fn page_limit(need: u64, (evaluated, active): (u64, u64), (last_evaluated, last_active): (u64, u64)) -> i32 {
    let per_active = |evaluated: u64, active: u64| (u128::from(evaluated) + 1, u128::from(active) + 1);
    let ((e, a), (le, la)) = (per_active(evaluated, active), per_active(last_evaluated, last_active));
    // The larger of e/a and le/la, compared without division.
    let (e, a) = if e * la >= le * a { (e, a) } else { (le, la) };
    i32::try_from((u128::from(need) * e / a).max(1)).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::page_limit;

    #[test]
    fn a_count_page_asks_for_what_is_missing_scaled_by_the_partition_s_inactive_items() {
        assert_eq!(page_limit(20, (0, 0), (0, 0)), 20, "first page: the partition's share");
        assert_eq!(page_limit(20, (99, 99), (99, 99)), 20, "every user active: no more than needed");
        assert_eq!(page_limit(20, (99, 9), (99, 9)), 200, "one in ten active: ten times as many");
        assert_eq!(page_limit(20, (14, 0), (14, 0)), 300, "none active yet: the share for every item read");
        // 1,000 active users, then a page of 2 that found none: the next asks 2 x 3, then 2 x 7...
        assert_eq!(page_limit(2, (1_002, 1_000), (2, 0)), 6, "a run of inactive items: pages grow");
        assert_eq!(page_limit(2, (1_008, 1_000), (6, 0)), 14);
        assert_eq!(page_limit(u64::MAX, (u64::MAX - 1, 0), (0, 0)), i32::MAX, "bounded");
        assert_eq!(page_limit(0, (0, 0), (0, 0)), 1);
    }
}
