//! The jobs port: job state machine, chunk counts, email claims, the replace lock.

use super::ext::*;
use super::*;
use crate::error::{Error, Result};
use crate::model::{EmailKind, Lease};
use crate::model::{Job, JobState, PHASES};
use crate::ports::{JobStore, Plan, Recorded};
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};

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

    /// Count chunk `seq` of `phase` once: one conditional write of the job item adds it to the
    /// phase's `seen{phase}` number set and to its `done{phase}` counter together, so a retried
    /// invocation never counts twice and no transaction is needed (chunks ending together queue on
    /// the item instead of cancelling each other). `below`: count only while `done{phase}` stays
    /// below it. `None`: already recorded; `Some(false)`: `below` refused it; `Some(true)`: counted.
    async fn count_chunk(&self, id: &str, phase: usize, seq: u32, below: Option<u32>) -> Result<Option<bool>> {
        let seen = format!("seen{phase}");
        let fresh = format!("attribute_exists(pk) AND NOT contains({seen}, :seq)");
        let req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("J#{id}")))
            // When it was counted: the release sweep leaves a job that moves alone.
            .update_expression(format!("ADD done{phase} :one, {seen} :seqs SET counted_at = :now"))
            .expression_attribute_values(":now", s(chrono::Utc::now().to_rfc3339()))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":seq", n(seq))
            .expression_attribute_values(":seqs", AttributeValue::Ns(vec![seq.to_string()]))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        let req = match below {
            Some(below) => {
                req.condition_expression(format!("{fresh} AND done{phase} < :below")).expression_attribute_values(":below", n(below))
            }
            None => req.condition_expression(fresh),
        };
        for attempt in 0..CONTENDED_ATTEMPTS {
            match req.clone().send().await {
                Ok(_) => return Ok(Some(true)),
                Err(e) if is_condition_failed(&e) => {
                    // The job as it was tells which condition failed.
                    let old = match e.into_service_error() {
                        UpdateItemError::ConditionalCheckFailedException(c) => c.item,
                        _ => None,
                    };
                    let Some(old) = old else { return Err(Error::corrupt(format!("job {id}"), "chunk of a job no longer stored")) };
                    return Ok(if chunk_seen(&old, phase, seq) { None } else { Some(false) });
                }
                // A transaction elsewhere on the job item: nothing was written; the SDK retried
                // it already, and it is sent again here rather than failing the chunk.
                Err(e) if e.code() == Some("TransactionConflictException") => contention_pause(attempt).await,
                Err(e) => return Err(ddb_err("UpdateItem")(e)),
            }
        }
        Err(Error::Transient { service: "dynamodb", operation: "UpdateItem", message: "job counter contended".into() })
    }

    /// One partition of the open-jobs index (OPEN, HELD, SCHEDULED), oldest first, up to
    /// `until` when given: (id, time).
    async fn index_partition(&self, partition: &str, until: Option<&str>, limit: usize) -> Result<Vec<(String, String)>> {
        let query = self.client.query().table_name(&self.table).index_name(OPEN_JOBS).expression_attribute_values(":p", s(partition));
        let query = match until {
            Some(until) => {
                query.key_condition_expression("gsi2pk = :p AND gsi2sk <= :until").expression_attribute_values(":until", s(until))
            }
            None => query.key_condition_expression("gsi2pk = :p"),
        };
        let out = query.limit(limit.clamp(1, 1000) as i32).send().await.map_err(ddb_err("Query"))?;
        Ok(out
            .items()
            .iter()
            .filter_map(|i| i.str("gsi2sk"))
            .filter_map(|sk| sk.split_once('#'))
            .map(|(at, id)| (id.to_string(), at.to_string()))
            .collect())
    }

    /// The job's one state change, conditional on `from`, with `set` written alongside. The
    /// open-jobs index follows: a final job leaves it, a held one moves to its HELD partition,
    /// a held or scheduled one released comes back OPEN, its age counted from then.
    async fn move_state(
        &self,
        id: &str,
        from: JobState,
        to: JobState,
        mut set: Vec<(&'static str, aws_sdk_dynamodb::types::AttributeValue)>,
    ) -> Result<bool> {
        let since = || s(format!("{}#{id}", chrono::Utc::now().to_rfc3339()));
        let mut remove = "";
        match (from, to) {
            // A job failing on its way stays open until its admins are told (`finish`, `close`).
            (JobState::Received | JobState::Applying, JobState::Failed) => {}
            (_, to) if to.is_final() => remove = " REMOVE gsi2pk, gsi2sk",
            (_, JobState::Held) => set.push(("gsi2pk", s("HELD"))),
            (JobState::Held | JobState::Scheduled, _) => set.extend([("gsi2pk", s("OPEN")), ("gsi2sk", since())]),
            _ => {}
        }
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("J#{id}")))
            .condition_expression("#state = :from")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":from", s(from.as_str()))
            .expression_attribute_values(":to", s(to.as_str()));
        let mut sets = vec!["#state = :to".to_string()];
        for (i, (name, value)) in set.into_iter().enumerate() {
            sets.push(format!("#a{i} = :a{i}"));
            req = req.expression_attribute_names(format!("#a{i}"), name).expression_attribute_values(format!(":a{i}"), value);
        }
        match req.update_expression(format!("SET {}{remove}", sets.join(", "))).send().await {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(ddb_err("UpdateItem")(e)),
        }
    }
}

/// Whether the job item records chunk `seq` of `phase` as counted (`count_chunk`). Numbers are
/// compared as numbers: DynamoDB answers with its own spelling of them.
fn chunk_seen(item: &Item, phase: usize, seq: u32) -> bool {
    let set = item.get(&format!("seen{phase}")).and_then(|v| v.as_ns().ok());
    set.is_some_and(|set| set.iter().any(|n| n.parse::<u32>() == Ok(seq)))
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
                "SET {}, total_rows = :t{}",
                (0..PHASES).map(|p| format!("chunks{p} = :c{p}")).collect::<Vec<_>>().join(", "),
                if plan.mode.is_some() { ", #mode = :m" } else { "" }
            ))
            .expression_attribute_values(":t", n(plan.total_rows));
        if let Some(mode) = plan.mode {
            req = req.expression_attribute_names("#mode", "mode").expression_attribute_values(":m", s(mode.as_str()));
        }
        for p in 0..PHASES {
            req = req.expression_attribute_values(format!(":c{p}"), n(plan.phase_chunks[p]));
        }
        req.send().await.map_err(ddb_err("UpdateItem"))?;
        Ok(())
    }

    async fn transition(&self, id: &str, from: JobState, to: JobState, message: Option<&str>) -> Result<bool> {
        self.move_state(id, from, to, message.map(|m| ("message", s(m))).into_iter().collect()).await
    }

    async fn record_chunk(&self, id: &str, phase: usize, seq: u32, of: Option<u32>) -> Result<Recorded> {
        // A chunk is counted exactly once, even when its invocation is retried after crashing
        // before or after the write. While the count stays below the phase's last chunk, the
        // counter's condition holds and says so; the chunk that may complete the phase fails it,
        // counts without it, and reads the job.
        let open = of.filter(|&n| n >= 2).map(|n| n - 1);
        match self.count_chunk(id, phase, seq, open).await? {
            Some(true) => Ok(Recorded::Counted { last: open.is_none() }),
            Some(false) => match self.count_chunk(id, phase, seq, None).await? {
                Some(_) => Ok(Recorded::Counted { last: true }),
                None => Ok(Recorded::Before),
            },
            None => Ok(Recorded::Before),
        }
    }

    async fn job_for_chunk(&self, id: &str, phase: usize, seq: u32) -> Result<Option<(Job, bool)>> {
        let Some(item) = self.job_item(id).await? else { return Ok(None) };
        Ok(Some((Job::try_from(&item)?, chunk_seen(&item, phase, seq))))
    }

    async fn claim_email(&self, id: &str, kind: EmailKind, lease: Lease) -> Result<bool> {
        let (now, kind) = (chrono::Utc::now(), kind.as_str());
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
            .expression_attribute_values(":claim", s(format!("{} {}", Lease::stamp(now), uuid::Uuid::new_v4())))
            .expression_attribute_values(":stale", s(lease.stale_before(now)))
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(ddb_err("UpdateItem")(e)),
        }
    }

    async fn mark_email_sent(&self, id: &str, kind: EmailKind) -> Result<()> {
        let kind = kind.as_str();
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

    async fn release_email(&self, id: &str, kind: EmailKind) -> Result<()> {
        let kind = kind.as_str();
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("J#{id}")))
            .update_expression("REMOVE #k")
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(#sent)")
            .expression_attribute_names("#k", format!("email_{kind}"))
            .expression_attribute_names("#sent", format!("email_{kind}_sent"))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Ok(()), // sent after all, or no such job
            Err(e) => Err(ddb_err("UpdateItem")(e)),
        }
    }

    async fn email_sent(&self, id: &str, kind: EmailKind) -> Result<bool> {
        let kind = kind.as_str();
        Ok(self.job_item(id).await?.is_some_and(|i| i.contains_key(&format!("email_{kind}_sent"))))
    }

    async fn finish(&self, id: &str, state: JobState, succeeded: u32, failed: u32, skipped: u32, note: Option<&str>) -> Result<()> {
        let set_note = if note.is_some() { ", message = :note" } else { "" };
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("J#{id}")))
            .update_expression(format!(
                "SET #state = :c, succeeded = :s, failed = :f, skipped = :k, completed_at = :now{set_note} REMOVE gsi2pk, gsi2sk"
            ))
            .set_expression_attribute_values(note.map(|n| std::collections::HashMap::from([(":note".to_string(), s(n))])))
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

    async fn close(&self, id: &str) -> Result<()> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("J#{id}")))
            .update_expression("REMOVE gsi2pk, gsi2sk")
            .condition_expression("#state = :failed")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":failed", s(JobState::Failed.as_str()))
            .send()
            .await
            .map(drop)
            .or_else(|e| if is_condition_failed(&e) { Ok(()) } else { Err(ddb_err("UpdateItem")(e)) })
    }

    async fn oldest_open(&self) -> Result<Option<(String, String)>> {
        Ok(self.index_partition("OPEN", None, 1).await?.into_iter().next())
    }

    async fn open_jobs(&self, limit: usize) -> Result<Vec<(String, String)>> {
        self.index_partition("OPEN", None, limit).await
    }

    async fn held_jobs(&self, limit: usize) -> Result<Vec<(String, String)>> {
        self.index_partition("HELD", None, limit).await
    }

    async fn schedule(&self, id: &str, at: &str) -> Result<bool> {
        // Its own partition of the index, sorted by the time it runs at.
        let index = vec![("run_at", s(at)), ("gsi2pk", s("SCHEDULED")), ("gsi2sk", s(format!("{at}#{id}")))];
        self.move_state(id, JobState::Received, JobState::Scheduled, index).await
    }

    async fn scheduled_due(&self, now: &str, limit: usize) -> Result<Vec<(String, String)>> {
        // Every id sorts after "#", so a job due at `now` is included.
        self.index_partition("SCHEDULED", Some(&format!("{now}#~")), limit).await
    }

    async fn start_scheduled(&self, id: &str, order: &str) -> Result<bool> {
        self.move_state(id, JobState::Scheduled, JobState::Applying, vec![("upload_order", s(order))]).await
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
        // The index leaves out the chunk counters: an open job is read whole for its progress.
        let mut jobs = Vec::new();
        for item in out.items() {
            let job = Job::try_from(item)?;
            jobs.push(if job.state.is_final() { job } else { self.get(&job.id).await?.unwrap_or(job) });
        }
        Ok(jobs)
    }

    async fn claim_event(&self, id: &str, state: JobState) -> Result<bool> {
        // A token of this claim: when the response to a claim that landed is lost, the SDK's
        // retry is refused by the claim itself, and the old image says it was ours.
        let attr = format!("event_{}", state.as_str());
        let token = format!("{}#{}", chrono::Utc::now().to_rfc3339(), uuid::Uuid::new_v4());
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("J#{id}")))
            .update_expression("SET #ev = :token")
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(#ev)")
            .expression_attribute_names("#ev", &attr)
            .expression_attribute_values(":token", s(&token))
            .return_values_on_condition_check_failure(aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(match e.into_service_error() {
                aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c) => {
                    c.item.as_ref().and_then(|i| i.str(&attr)) == Some(token.as_str())
                }
                _ => false,
            }),
            Err(e) => Err(ddb_err("UpdateItem")(e)),
        }
    }

    async fn release_event(&self, id: &str, state: JobState) -> Result<()> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("J#{id}")))
            .update_expression("REMOVE #ev")
            .expression_attribute_names("#ev", format!("event_{}", state.as_str()))
            .send()
            .await
            .map_err(ddb_err("UpdateItem"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_is_seen_only_in_its_own_phase_s_number_set() {
        let item = Item::from([
            ("seen1".to_string(), AttributeValue::Ns(vec!["0".into(), "12".into(), "007".into()])),
            ("seen2".to_string(), AttributeValue::S("3".into())),
        ]);
        assert!(chunk_seen(&item, 1, 0) && chunk_seen(&item, 1, 12) && chunk_seen(&item, 1, 7), "as numbers");
        assert!(!chunk_seen(&item, 1, 1) && !chunk_seen(&item, 0, 12), "another chunk, another phase");
        assert!(!chunk_seen(&item, 2, 3), "a set, not a string");
    }
}
