//! Who a user is across email changes: ExternalId items (`X#<tenant>#<id>` -> email), moving a
//! user to a new email in one transaction, and associations following the move.

use super::codec::*;
use super::ext::*;
use super::*;
use crate::error::{Error, Result};
use crate::ports::{Consistency, Moved, Stamp};
use aws_sdk_dynamodb::types::{AttributeValue as Av, Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem};
use std::collections::HashMap;

pub(super) fn external_key(tenant: &str, id: &str) -> Key {
    (format!("X#{tenant}#{id}"), SOLE.to_string())
}

/// An organization's id (a OneRoster sourcedId): its own key space, so no user's id can clash.
pub(super) fn org_id_key(tenant: &str, id: &str) -> Key {
    (format!("XO#{tenant}#{id}"), SOLE.to_string())
}

/// The kind of an ExternalId item.
const EXTERNAL: &str = "external_id";

/// The item saying whose ExternalId `id` is.
fn external_item(tenant: &str, id: &str, email: &str) -> Item {
    let mut item = key_item(&external_key(tenant, id));
    item.extend([
        ("kind".to_string(), s(EXTERNAL)),
        ("tenant".to_string(), s(tenant)),
        ("external_id".to_string(), s(id)),
        ("email".to_string(), s(email)),
    ]);
    item
}

impl DynamoDirectory {
    pub(super) async fn read_external_ids(&self, tenant: &str, ids: &[String], read: Consistency) -> Result<HashMap<String, String>> {
        self.read_ids(ids, |id| external_key(tenant, id), "email", read).await
    }

    /// Organizations' ids (`XO#<tenant>#<id>` -> the organization's name).
    pub(super) async fn read_org_ids(&self, tenant: &str, ids: &[String]) -> Result<HashMap<String, String>> {
        self.read_ids(ids, |id| org_id_key(tenant, id), "org", Consistency::Strong).await
    }

    /// Batched reads of id items (`read`: consistent unless a prediction's): id -> the value of
    /// `attr`. A chunk's batches go out together, as its users' do: one after another, 2,000 ids
    /// took 206 ms on DynamoDB Local.
    async fn read_ids(&self, ids: &[String], key: impl Fn(&str) -> Key, attr: &str, read: Consistency) -> Result<HashMap<String, String>> {
        let batches = ids.chunks(100).map(|batch| self.ids_batch(batch.iter().map(|id| key_item(&key(id))).collect(), attr, read));
        let mut found = HashMap::with_capacity(ids.len());
        for read in futures::future::try_join_all(batches).await? {
            found.extend(read);
        }
        Ok(found)
    }

    /// One `BatchGetItem` of id items: id -> the value of `attr`.
    async fn ids_batch(&self, keys: Vec<Item>, attr: &str, read: Consistency) -> Result<HashMap<String, String>> {
        let mut found = HashMap::with_capacity(keys.len());
        batch_get(&self.client, &self.table, keys, read, |item| {
            if let (Some(id), Some(value)) = (item.str("external_id"), item.str(attr)) {
                found.insert(id.to_string(), value.to_string());
            }
            Ok(())
        })
        .await?;
        Ok(found)
    }

    /// Record that organization id `id` names `org` (the latest name wins: an organization
    /// renamed in the feeding system is found under its new name).
    pub(super) async fn put_org_id(&self, tenant: &str, id: &str, org: &str) -> Result<()> {
        let mut item = key_item(&org_id_key(tenant, id));
        item.extend([
            ("kind".to_string(), s("org_id")),
            ("tenant".to_string(), s(tenant)),
            ("external_id".to_string(), s(id)),
            ("org".to_string(), s(org)),
        ]);
        self.client.put_item().table_name(&self.table).set_item(Some(item)).send().await.map_err(ddb_err("PutItem"))?;
        Ok(())
    }

    pub(super) async fn put_external_id(&self, tenant: &str, id: &str, email: &str) -> Result<Option<String>> {
        let refused =
            self.put_unless(external_item(tenant, id, email), "attribute_not_exists(pk) OR email = :me", &[(":me", s(email))]).await?;
        Ok(refused.err().map(|old| old.as_ref().and_then(|o| o.str("email")).unwrap_or("another user").to_string()))
    }

    pub(super) async fn delete_external_id(&self, tenant: &str, id: &str, email: &str) -> Result<()> {
        self.delete_when(key_item(&external_key(tenant, id)), "email = :me", &[(":me", s(email))]).await
    }

    /// A put conditional on `cond`: `Err(old)` when refused, with the item as it was.
    pub(super) async fn put_unless(&self, item: Item, cond: &str, values: &[(&str, Av)]) -> Result<std::result::Result<(), Option<Item>>> {
        let mut req = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(cond)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        for (name, value) in values {
            req = req.expression_attribute_values(*name, value.clone());
        }
        match req.send().await {
            Ok(_) => Ok(Ok(())),
            Err(e) if is_condition_failed(&e) => Ok(Err(match e.into_service_error() {
                aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c) => c.item,
                _ => None,
            })),
            Err(e) => Err(ddb_err("PutItem")(e)),
        }
    }

    /// Delete an item while `cond` holds; nothing when it does not.
    pub(super) async fn delete_when(&self, key: Item, cond: &str, values: &[(&str, Av)]) -> Result<()> {
        let mut req = self.client.delete_item().table_name(&self.table).set_key(Some(key)).condition_expression(cond);
        for (name, value) in values {
            req = req.expression_attribute_values(*name, value.clone());
        }
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Ok(()),
            Err(e) => Err(ddb_err("DeleteItem")(e)),
        }
    }

    async fn get(&self, key: &Key) -> Result<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_item(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(ddb_err("GetItem"))?;
        Ok(out.item)
    }

    /// One transaction: the tombstone where the user was (only while the item is as read), the
    /// whole item under the new key (only where no live user or contact is), the ExternalId
    /// pointed at the new email. A user changed between the read and the transaction is read again.
    pub(super) async fn move_user_once(&self, tenant: &str, from: &str, to: &str, stamp: &Stamp) -> Result<Moved> {
        let token = stamp.token();
        for _ in 0..crate::rules::MAX_ATTEMPTS {
            let Some(item) = self.get(&user_key(tenant, from)).await? else { return Ok(Moved::Missing) };
            match item.str("kind") {
                Some(TOMBSTONE) if item.str("last_write") == Some(token.as_str()) && item.str("moved_to") == Some(to) => {
                    return Ok(Moved::Moved); // an earlier attempt of this row
                }
                Some("user") | None => {}
                _ => return Ok(Moved::Missing),
            }
            if item.str("ord").is_some_and(|theirs| theirs > stamp.order.as_str()) {
                let job = item.str("last_write").map(crate::rules::job_of).unwrap_or_default();
                return Ok(Moved::Superseded(job.to_string()));
            }
            let mut moved = item.clone();
            let (pk, sk) = user_key(tenant, to);
            moved.extend([
                ("pk".to_string(), s(pk)),
                ("sk".to_string(), s(sk)),
                ("email".to_string(), s(to)),
                ("last_write".to_string(), s(&token)),
                ("updated_at".to_string(), s(&stamp.at)),
                ("ord".to_string(), s(&stamp.order)),
            ]);
            let mut tombstone = key_item(&user_key(tenant, from));
            tombstone.extend([
                ("kind".to_string(), s(TOMBSTONE)),
                ("tenant".to_string(), s(tenant)),
                ("deleted_at".to_string(), s(&stamp.at)),
                ("moved_to".to_string(), s(to)),
                ("last_write".to_string(), s(&token)),
                ("ord".to_string(), s(&stamp.order)),
                ("ttl".to_string(), n(chrono::Utc::now().timestamp() + MARKER_TTL_SECS)),
            ]);
            let leave = Put::builder().table_name(&self.table).set_item(Some(tombstone)).expression_attribute_values(":user", s("user"));
            // Only while the item is as read (a user from before stamps has no last_write).
            let leave = match item.str("last_write") {
                Some(seen) => leave
                    .condition_expression("(attribute_not_exists(kind) OR kind = :user) AND last_write = :seen")
                    .expression_attribute_values(":seen", s(seen)),
                None => leave.condition_expression("(attribute_not_exists(kind) OR kind = :user) AND attribute_not_exists(last_write)"),
            }
            .build()
            .map_err(txn_err)?;
            let arrive = Put::builder()
                .table_name(&self.table)
                .set_item(Some(moved))
                .condition_expression("attribute_not_exists(pk) OR kind = :gone")
                .expression_attribute_values(":gone", s(TOMBSTONE))
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                .build()
                .map_err(txn_err)?;
            let mut txn = self
                .client
                .transact_write_items()
                .transact_items(TransactWriteItem::builder().put(leave).build())
                .transact_items(TransactWriteItem::builder().put(arrive).build());
            if let Some(id) = item.str("external_id") {
                let point = Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(external_item(tenant, id, to)))
                    .condition_expression("attribute_not_exists(pk) OR email = :from")
                    .expression_attribute_values(":from", s(from))
                    .build()
                    .map_err(txn_err)?;
                txn = txn.transact_items(TransactWriteItem::builder().put(point).build());
            }
            match txn.send().await {
                Ok(_) => return Ok(Moved::Moved),
                Err(e) => match cancellation(&e) {
                    Some(reasons) if reasons.get(1).is_some_and(|(code, _)| code == "ConditionalCheckFailed") => {
                        let old = reasons[1].1.as_ref();
                        return Ok(match old.filter(|o| o.str("kind") == Some(CONTACT)).and_then(|o| o.str("contact_of")) {
                            Some(org) => Moved::ContactOf(org.to_string()),
                            None => Moved::Taken,
                        });
                    }
                    // The user changed since the read, or a conflicting transaction: read again.
                    Some(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                    None => return Err(ddb_err("TransactWriteItems")(e)),
                },
            }
        }
        Err(Error::Transient {
            service: "dynamodb",
            operation: "TransactWriteItems",
            message: "the user changed during every attempt to move it".into(),
        })
    }

    pub(super) async fn moved_to_of(&self, tenant: &str, email: &str) -> Result<Option<String>> {
        let item = self.get(&user_key(tenant, email)).await?;
        Ok(item.filter(|i| i.str("kind") == Some(TOMBSTONE)).and_then(|i| i.str("moved_to").map(str::to_string)))
    }

    /// One pass over the tenant's users for every move of the chunk, the 16 partitions at once:
    /// the users naming anyone come back and are matched here (asked per 25 moves, an `IN` list's
    /// share of an expression, a chunk of 2,000 email changes read the tenant's users 80 times).
    /// Each match is set to the new email while it still names the old one.
    pub(super) async fn repoint(&self, tenant: &str, moves: &[(String, String)]) -> Result<u32> {
        let to: HashMap<&str, &str> = moves.iter().map(|(f, t)| (f.as_str(), t.as_str())).collect();
        let names = crate::model::ASSOCIATIONS;
        let filter = (0..names.len()).map(|a| format!("attribute_exists(#a{a})")).collect::<Vec<_>>().join(" OR ");
        let projection = (0..names.len()).map(|a| format!("#a{a}")).chain(["pk".into(), "sk".into()]).collect::<Vec<_>>().join(", ");
        let (to, filter, projection) = (&to, &filter, &projection);
        let changed = all_shards(|shard| async move {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :p")
                .expression_attribute_values(":p", s(user_partition(tenant, shard)))
                .filter_expression(filter)
                .projection_expression(projection);
            for (a, name) in names.iter().enumerate() {
                query = query.expression_attribute_names(format!("#a{a}"), *name);
            }
            let mut pages = query.into_paginator().items().send();
            let mut changed = 0u32;
            while let Some(item) = pages.next().await {
                let item = item.map_err(ddb_err("Query"))?;
                for name in names {
                    let Some((from, new)) = item.str(name).and_then(|v| to.get_key_value(v)) else { continue };
                    let res = self
                        .client
                        .update_item()
                        .table_name(&self.table)
                        .key("pk", item.get("pk").cloned().unwrap_or(Av::Null(true)))
                        .key("sk", item.get("sk").cloned().unwrap_or(Av::Null(true)))
                        .update_expression("SET #a = :to")
                        .condition_expression("#a = :from AND kind = :user")
                        .expression_attribute_names("#a", *name)
                        .expression_attribute_values(":to", s(*new))
                        .expression_attribute_values(":from", s(*from))
                        .expression_attribute_values(":user", s("user"))
                        .send()
                        .await;
                    match res {
                        Ok(_) => changed += 1,
                        Err(e) if is_condition_failed(&e) => {}
                        Err(e) => return Err(ddb_err("UpdateItem")(e)),
                    }
                }
            }
            Ok(changed)
        })
        .await?;
        Ok(changed.into_iter().sum())
    }
}
