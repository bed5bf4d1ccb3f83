//! Pending activation emails, in the jobs table.

use super::ext::*;
use super::*;
use crate::error::Result;
use crate::model::Lease;
use crate::model::{Invite, InviteRecord, InviteStatus};
use crate::ports::Invites;
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue as Av;

/// Invites live in the jobs table (`I#<tenant>#<email>`); pending ones are in `gsi1` under
/// `INVITES#<shard>` sorted by due time; once sent (or failed for good) they move to
/// `INVITED#<tenant>` sorted by email, where `rosterdrop invites` lists them with what the
/// recipient's server said.
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

    /// One try at moving a pending invite to the user's new address. `None`: cancelled for
    /// contention, to be tried again.
    async fn rename_once(&self, tenant: &str, from: &str, to: &str) -> Result<Option<bool>> {
        use aws_sdk_dynamodb::types::{Delete, Put, TransactWriteItem};
        let old_key = format!("I#{tenant}#{from}");
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(&old_key))
            .consistent_read(true)
            .send()
            .await
            .map_err(ddb_err("GetItem"))?;
        let Some(mut item) = out.item.filter(|i| i.str("status") == Some("pending")) else { return Ok(Some(false)) };
        let due = item.str("due_at").unwrap_or_default().to_string();
        item.insert("pk".into(), s(format!("I#{tenant}#{to}")));
        item.insert("email".into(), s(to));
        item.insert("gsi1pk".into(), s(Self::shard(to)));
        item.insert("gsi1sk".into(), s(format!("{due}#{tenant}#{to}")));
        // Only while still pending (a sweep sending it meanwhile keeps it where it is).
        let delete = Delete::builder()
            .table_name(&self.table)
            .key("pk", s(&old_key))
            .condition_expression("#st = :pending")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":pending", s("pending"))
            .build()
            .map_err(|e| crate::error::Error::corrupt("invite move", e))?;
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .build()
            .map_err(|e| crate::error::Error::corrupt("invite move", e))?;
        let res = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().delete(delete).build())
            .transact_items(TransactWriteItem::builder().put(put).build())
            .send()
            .await;
        match res {
            Ok(_) => Ok(Some(true)),
            // Read again: the invite may still be pending.
            Err(e) if cancelled_for_contention(&e) => Ok(None),
            // No longer pending: a sweep sent it meanwhile.
            Err(e) if cancellation(&e).is_some() => Ok(Some(false)),
            Err(e) => Err(ddb_err("TransactWriteItems")(e)),
        }
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
        // The 16 partitions at once: the sweep waits for the slowest, not for the sum.
        let pages = all_shards(|shard| async move {
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
            page.items().iter().map(Invite::try_from).collect::<Result<Vec<Invite>>>()
        })
        .await?;
        let mut out: Vec<Invite> = pages.into_iter().flatten().collect();
        out.sort_by(|a, b| a.due_at.cmp(&b.due_at));
        out.truncate(limit);
        Ok(out)
    }

    async fn claim(&self, i: &Invite, lease: Lease) -> Result<bool> {
        let now = chrono::Utc::now();
        // A claim older than the lease is a sender that died before sending: take it over.
        let stale = lease.stale_before(now);
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
            .expression_attribute_values(":now", s(Lease::stamp(now)))
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
            .update_expression("SET #st = :sent, sent_at = :now, gsi1pk = :done, gsi1sk = :email")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":sent", s("sent"))
            .expression_attribute_values(":done", s(format!("INVITED#{}", i.tenant)))
            .expression_attribute_values(":email", s(&i.email))
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
                .update_expression(
                    "SET #st = :failed, last_error = :reason, failed_at = :now, gsi1pk = :done, gsi1sk = :email ADD attempts :one",
                )
                .expression_attribute_values(":failed", s("failed"))
                .expression_attribute_values(":done", s(format!("INVITED#{}", i.tenant)))
                .expression_attribute_values(":email", s(&i.email)),
        };
        match req.send().await {
            Ok(_) => Ok(()),
            // Another job's invite replaced it meanwhile: nothing of this one to record.
            Err(e) if is_condition_failed(&e) => Ok(()),
            Err(e) => Err(ddb_err("UpdateItem")(e)),
        }
    }

    async fn rename(&self, tenant: &str, from: &str, to: &str) -> Result<bool> {
        for attempt in 0..CONTENDED_ATTEMPTS {
            match self.rename_once(tenant, from, to).await? {
                Some(moved) => return Ok(moved),
                None => contention_pause(attempt).await,
            }
        }
        Err(crate::error::Error::Transient { service: "dynamodb", operation: "TransactWriteItems", message: "invite contended".into() })
    }

    async fn record_delivery(&self, tenant: &str, email: &str, status: InviteStatus, reason: Option<&str>, at: &str) -> Result<bool> {
        let req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("I#{tenant}#{email}")))
            .update_expression("SET #st = :status, delivery_at = :at, last_error = :reason")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":status", s(status.as_str()))
            .expression_attribute_values(":at", s(at))
            .expression_attribute_values(":reason", s(reason.unwrap_or_default()))
            .expression_attribute_values(":sent", s(InviteStatus::Sent.as_str()));
        // A delivery follows only a send; a bounce or complaint may follow a delivery too.
        let req = if status == InviteStatus::Delivered {
            req.condition_expression("#st = :sent")
        } else {
            req.condition_expression("#st IN (:sent, :delivered, :bounced, :complained)")
                .expression_attribute_values(":delivered", s(InviteStatus::Delivered.as_str()))
                .expression_attribute_values(":bounced", s(InviteStatus::Bounced.as_str()))
                .expression_attribute_values(":complained", s(InviteStatus::Complained.as_str()))
        };
        match req.send().await {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(ddb_err("UpdateItem")(e)),
        }
    }

    async fn list(&self, tenant: &str) -> Result<Vec<InviteRecord>> {
        let record = |item: &Item| -> Option<InviteRecord> {
            let status = InviteStatus::parse(item.str("status")?)?;
            let at = item.str("delivery_at").or(item.str("sent_at")).or(item.str("due_at")).unwrap_or_default();
            Some(InviteRecord {
                email: item.str("email")?.to_string(),
                first_name: item.str("first_name").map(str::to_string),
                status,
                job: item.str("job").unwrap_or_default().to_string(),
                at: at.to_string(),
                reason: item.str("last_error").filter(|r| !r.is_empty()).map(str::to_string),
            })
        };
        let mut out = Vec::new();
        let mut sent = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(GSI)
            .key_condition_expression("gsi1pk = :p")
            .expression_attribute_values(":p", s(format!("INVITED#{tenant}")))
            .into_paginator()
            .items()
            .send();
        while let Some(item) = sent.next().await {
            out.extend(record(&item.map_err(ddb_err("Query"))?));
        }
        for shard in 0..USER_SHARDS {
            let mut pending = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(GSI)
                .key_condition_expression("gsi1pk = :p")
                .filter_expression("tenant = :t")
                .expression_attribute_values(":p", s(format!("INVITES#{shard}")))
                .expression_attribute_values(":t", s(tenant))
                .into_paginator()
                .items()
                .send();
            while let Some(item) = pending.next().await {
                out.extend(record(&item.map_err(ddb_err("Query"))?));
            }
        }
        out.sort_by(|a, b| a.email.cmp(&b.email));
        Ok(out)
    }
}
