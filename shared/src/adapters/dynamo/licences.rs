//! Licence pools: one counter item per tenant and pool, reserved and settled once per chunk.

use super::ext::*;
use super::*;
use crate::error::{Error, Result};
use crate::ports::LicenceClaim;
use aws_sdk_dynamodb::types::{AttributeValue as Av, Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update};

/// Which counter: the tenant's default pool (`L#<tenant>`, as before named pools existed) or a
/// named one (`L#<tenant>#<name>`; tenant ids hold no `#`).
pub(super) struct PoolId(String);

impl PoolId {
    pub(super) fn new(tenant: &str, pool: Option<&str>) -> Self {
        PoolId(match pool {
            None => format!("L#{tenant}"),
            Some(name) => format!("L#{tenant}#{name}"),
        })
    }
}

impl DynamoDirectory {
    pub(super) fn pool_key(pool: &PoolId) -> Item {
        key_item(&(pool.0.clone(), SOLE.to_string()))
    }
    pub(super) fn claim_key(claim: &str) -> Item {
        key_item(&(format!("R#{claim}"), SOLE.to_string()))
    }

    /// The pool's `used` as stored, which can be below zero (licences given back for users
    /// created before the pool was configured); `None` when never written.
    pub(super) async fn pool_stored(&self, tenant: &PoolId) -> Result<Option<i64>> {
        Ok(self.item(Self::pool_key(tenant)).await?.as_ref().and_then(|i| i.num::<i64>("used")))
    }

    /// One item, read consistently (the pool and its claims decide on the latest write).
    pub(super) async fn item(&self, key: Item) -> Result<Option<Item>> {
        let out = self.client.get_item().table_name(&self.table).set_key(Some(key)).consistent_read(true).send().await;
        Ok(out.map_err(ddb_err("GetItem"))?.item)
    }

    pub(super) async fn recorded_claim(&self, claim: &str) -> Result<Option<LicenceClaim>> {
        self.item(Self::claim_key(claim))
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
    pub(super) async fn pool_reserve(&self, tenant: &PoolId, limit: u32, claim: &str, decision: LicenceClaim) -> Result<LicenceClaim> {
        if let Some(recorded) = self.recorded_claim(claim).await? {
            return Ok(LicenceClaim { repeated: true, ..recorded });
        }
        let ttl = chrono::Utc::now().timestamp() + MARKER_TTL_SECS;
        let wanted = decision.takers.len() as u32;
        let doc = serde_json::to_string(&decision).map_err(|e| Error::corrupt("licence claim", e))?;
        // What the pool is believed to hold: unknown until a condition says otherwise.
        let mut seen: Option<i64> = None;
        for attempt in 0..CONTENDED_ATTEMPTS {
            let (granted, change) = match seen {
                None => (wanted.min(limit), PoolChange::AddWithin { limit }),
                // A count below zero (licences given back that were never counted) is repaired.
                Some(old) if old < 0 => (wanted.min(limit), PoolChange::Repair { old }),
                Some(old) => (wanted.min(limit.saturating_sub(old as u32)), PoolChange::AddWithin { limit }),
            };
            let record = Put::builder()
                .table_name(&self.table)
                .set_item(Some(Self::claim_key(claim)))
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
                        seen = Some(self.pool_seen(tenant, &reasons[1].1).await?);
                    }
                    // A transaction conflict: another chunk is changing the pool right now.
                    _ if cancelled_for_contention(&e) => contention_pause(attempt).await,
                    _ => return Err(ddb_err("TransactWriteItems")(e)),
                },
            }
        }
        Err(Error::Transient { service: "dynamodb", operation: "TransactWriteItems", message: "licence pool contended".into() })
    }

    /// Give `returned` licences back, once per claim, never taking the count below zero (a count
    /// that low was wrong already: users that existed before the pool; `recount-licences`).
    pub(super) async fn pool_settle(&self, tenant: &PoolId, claim: &str, returned: u32) -> Result<()> {
        let mut seen: Option<i64> = None;
        for attempt in 0..CONTENDED_ATTEMPTS {
            let mark = Update::builder()
                .table_name(&self.table)
                .set_key(Some(Self::claim_key(claim)))
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
                        seen = Some(self.pool_seen(tenant, &reasons[1].1).await?);
                    }
                    _ if cancelled_for_contention(&e) => contention_pause(attempt).await,
                    _ => return Err(ddb_err("TransactWriteItems")(e)),
                },
            }
        }
        Err(Error::Transient { service: "dynamodb", operation: "TransactWriteItems", message: "licence pool contended".into() })
    }

    /// The count a refused pool condition saw: from the old image it returned, else read.
    async fn pool_seen(&self, tenant: &PoolId, old: &Option<Item>) -> Result<i64> {
        Ok(match old {
            Some(item) => item.num::<i64>("used").unwrap_or(0),
            None => self.pool_stored(tenant).await?.unwrap_or(0),
        })
    }

    /// The pool item's part of a reserve or settle transaction; a refused condition returns the
    /// pool as it was.
    fn pool_update(&self, tenant: &PoolId, delta: i64, change: PoolChange) -> Result<Update> {
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(Self::pool_key(tenant)))
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
