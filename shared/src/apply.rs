//! Stage 2: one invocation per chunk. Conditional writes with bounded concurrency, one outcome per
//! row, progress recorded once per chunk; whoever completes a phase releases the next, and whoever
//! completes the last writes `done/<job>.json` (If-None-Match: exactly one finalize).

use crate::error::{Error, Result};
use crate::event::ObjectRef;
use crate::ingest::{jsonl, parse_jsonl};
use crate::keys;
use crate::model::{Action, Job, Outcome, PHASES, RowOp, Target};
use crate::ports::{Stamp, Write};
use crate::services::Services;
use futures::{StreamExt, stream};
use std::collections::HashMap;
use tokio::sync::Mutex;
use tracing::{info, warn};

pub async fn handle(svc: &Services, obj: &ObjectRef) -> Result<()> {
    let Some((job_id, phase, seq)) = keys::parse_chunk(&obj.key) else {
        info!(key = %obj.key, "not a chunk; ignored");
        return Ok(());
    };
    if phase >= PHASES {
        return Err(Error::corrupt(obj.key.clone(), "phase out of range"));
    }
    if svc.jobs.chunk_recorded(&job_id, phase, seq).await? {
        info!(job = %job_id, phase, seq, "chunk already applied (duplicate event)");
    } else {
        let job = svc.jobs.get(&job_id).await?.ok_or_else(|| Error::corrupt(format!("job {job_id}"), "chunk of an unknown job"))?;
        let body = svc.store.get(&obj.key).await?.ok_or_else(|| Error::corrupt(obj.key.clone(), "chunk vanished"))?;
        let ops: Vec<RowOp> = parse_jsonl("chunk", &body)?;
        let outcomes = apply_ops(svc, &job, ops).await?;
        let failed = outcomes.iter().filter(|o| o.status != crate::model::Status::Success).count();
        // Outcomes first, then the marker: a recorded chunk always has its outcomes.
        svc.store.put(&keys::chunk_outcomes(&job_id, phase, seq), jsonl(&outcomes)?, "application/x-ndjson").await?;
        let counted = svc.jobs.record_chunk(&job_id, phase, seq).await?;
        info!(job = %job_id, phase, seq, rows = outcomes.len(), failed, counted, "chunk applied");
    }
    advance(svc, &job_id, phase).await
}

/// Apply every row of a chunk; rows run concurrently up to the configured bound. Transient errors
/// (after the SDK's own backoff retries) fail the invocation so it is retried as a whole: rows
/// already written recognise their own stamp and report the same outcome again.
pub async fn apply_ops(svc: &Services, job: &Job, ops: Vec<RowOp>) -> Result<Vec<Outcome>> {
    let orgs: Mutex<HashMap<String, bool>> = Mutex::new(HashMap::new());
    let now = chrono::Utc::now().to_rfc3339();
    let results: Vec<Result<Outcome>> = stream::iter(ops)
        .map(|op| {
            let stamp = Stamp { job: job.id.clone(), row: op.row, at: now.clone() };
            let orgs = &orgs;
            async move { apply_row(svc, &job.tenant, &op, &stamp, orgs).await }
        })
        .buffer_unordered(svc.config.apply_concurrency.max(1))
        .collect()
        .await;
    let mut outcomes = results.into_iter().collect::<Result<Vec<_>>>()?;
    outcomes.sort_by_key(|o| o.row);
    Ok(outcomes)
}

async fn apply_row(svc: &Services, tenant: &str, op: &RowOp, stamp: &Stamp, orgs: &Mutex<HashMap<String, bool>>) -> Result<Outcome> {
    let row = op.row;
    let action = op.action;
    let result = match &op.target {
        Target::User { fields, .. } => {
            if let Some(org) = fields.org.as_deref().filter(|_| action != Action::Delete)
                && !org_exists(svc, tenant, org, orgs).await?
            {
                return Ok(Outcome::failure(
                    row,
                    Some(action),
                    format!("organization \"{org}\" does not exist; create it first or add a Type=Org row for it to this file"),
                ));
            }
            svc.directory.write_user(tenant, op, stamp).await
        }
        Target::Org { name } if action == Action::Delete => {
            let users = svc.directory.count_org_users(tenant, name).await?;
            if users > 0 {
                let noun = if users == 1 { "user" } else { "users" };
                return Ok(Outcome::failure(
                    row,
                    Some(action),
                    format!("organization \"{name}\" still has {users} {noun}; move or delete them first"),
                ));
            }
            svc.directory.delete_org(tenant, name).await
        }
        Target::Org { .. } => svc.directory.write_org(tenant, op, stamp).await,
    };
    let write = match result {
        Ok(w) => w,
        Err(e) if e.is_retryable() => return Err(e),
        // A permanent error on one row (e.g. a value DynamoDB refuses) fails that row only.
        Err(e) => {
            warn!(row, error = %e, "row write refused");
            return Ok(Outcome::failure(row, Some(action), format!("could not be saved: {e}")));
        }
    };
    Ok(message(op, write))
}

async fn org_exists(svc: &Services, tenant: &str, org: &str, cache: &Mutex<HashMap<String, bool>>) -> Result<bool> {
    let key = org.to_lowercase();
    if let Some(known) = cache.lock().await.get(&key) {
        return Ok(*known);
    }
    let exists = svc.directory.org_exists(tenant, org).await?;
    cache.lock().await.insert(key, exists);
    Ok(exists)
}

/// The human words for a write's result.
fn message(op: &RowOp, write: Write) -> Outcome {
    let (noun, what) = match &op.target {
        Target::User { .. } => ("user", String::new()),
        Target::Org { name } => ("organization", format!(" \"{name}\"")),
    };
    let (row, action) = (op.row, op.action);
    match write {
        Write::Created => Outcome::success(row, action, format!("{noun}{what} created")),
        Write::Updated => Outcome::success(
            row,
            action,
            match action {
                Action::Enable => format!("{noun} enabled"),
                Action::Disable => format!("{noun} disabled"),
                _ => format!("{noun}{what} updated"),
            },
        ),
        Write::Deleted => Outcome::success(row, action, format!("{noun}{what} deleted")),
        Write::AlreadyExists => {
            Outcome::failure(row, Some(action), format!("{noun}{what} already exists; use Update or Upsert to change it"))
        }
        Write::NotFound => Outcome::failure(row, Some(action), format!("{noun}{what} not found; use Create or Upsert to add it")),
    }
}

/// After a chunk of `phase` is recorded: if the phase is complete, release the next non-empty
/// phase, or write the done marker. Safe to run any number of times.
pub async fn advance(svc: &Services, job_id: &str, phase: usize) -> Result<()> {
    let job = svc.jobs.get(job_id).await?.ok_or_else(|| Error::corrupt(format!("job {job_id}"), "missing"))?;
    let Some(plan) = job.phase_chunks else {
        return Ok(());
    };
    if job.phase_done[phase] < plan[phase] {
        return Ok(());
    }
    match (phase + 1..PHASES).find(|&p| plan[p] > 0) {
        Some(next) => {
            info!(job = %job_id, phase = next, chunks = plan[next], "phase released");
            for seq in 0..plan[next] {
                svc.store.copy(&keys::staged_chunk(job_id, next, seq), &keys::chunk(job_id, next, seq)).await?;
            }
        }
        None => {
            let body = serde_json::json!({ "job": job_id, "tenant": job.tenant }).to_string().into_bytes();
            if svc.store.put_if_absent(&keys::done(job_id), body, "application/json").await? {
                info!(job = %job_id, "all chunks applied; finalize triggered");
            }
        }
    }
    Ok(())
}
