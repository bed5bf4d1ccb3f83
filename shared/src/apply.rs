//! Stage 2: one invocation per chunk. Conditional writes with bounded concurrency, one outcome per
//! row, progress recorded once per chunk; whoever completes a phase releases the next, and whoever
//! completes the last writes `done/<job>.json` (If-None-Match: exactly one finalize).

use crate::chunk_read::read_chunk;
use crate::error::{Error, Result};
use crate::event::ObjectRef;
use crate::keys;
use crate::model::{
    Action, Before, Job, JobState, Kept, Mode, Outcome, PHASES, RowOp, Status, Target, Tenant, UndoEntry, User, UserStatus,
};
use crate::ports::{Consistency, Directory, Licence, LicenceClaim, Recorded, Restored, Stamp, UsersRead, Write, Written};
use crate::rules::{self, Attempted, Next};
use crate::services::Services;
use crate::wire::jsonl;
use futures::{FutureExt, StreamExt, stream};
use std::collections::HashMap;
use tokio::sync::Mutex;
use tracing::{info, warn};

/// Apply one chunk. An error a retry cannot fix (the chunk unreadable, the tenant removed
/// mid-job, access denied) stops the job at once: FAILED, and its email says which rows were
/// applied and which were not (`finalize::finalize_job` stopped). Only retryable errors are
/// returned for Lambda to retry.
pub async fn handle(svc: &Services, obj: &ObjectRef) -> Result<()> {
    match apply_chunk(svc, obj).await {
        Err(e) if !e.is_retryable() => stop_job(svc, obj, &e).await,
        done => done,
    }
}

async fn stop_job(svc: &Services, obj: &ObjectRef, cause: &Error) -> Result<()> {
    let Some((job_id, _, _)) = keys::parse_chunk(&obj.key) else { return Ok(()) };
    tracing::error!(job = %job_id, key = %obj.key, error = %cause, "a chunk cannot be applied; stopping its job");
    let Some(job) = svc.jobs.get(&job_id).await? else { return Ok(()) };
    let reason = format!("stopped: a part of the file could not be applied ({cause})");
    if job.state.is_final() || !svc.jobs.transition(&job_id, job.state, JobState::Failed, Some(&reason)).await? {
        return Ok(()); // already ended, or moved on meanwhile
    }
    // Later chunks of a FAILED job are refused, so the email stays true. The finalize function
    // writes it (results and email are its to write): the done marker hands it the stopped job.
    let body = serde_json::json!({ "job": job_id, "tenant": job.tenant, "stopped": true }).to_string().into_bytes();
    svc.store.put_if_absent(&keys::done(&job_id), body, "application/json").await.map(drop)
}

async fn apply_chunk(svc: &Services, obj: &ObjectRef) -> Result<()> {
    let Some((job_id, phase, seq)) = keys::parse_chunk(&obj.key) else {
        info!(key = %obj.key, "not a chunk; ignored");
        return Ok(());
    };
    if phase >= PHASES {
        return Err(Error::corrupt(obj.key.clone(), "phase out of range"));
    }
    // A chunk's fixed cost is its round trips in sequence (see `make bench`): the job (which
    // says whether the chunk was counted) and the chunk's first bytes are read together; then the
    // tenant beside the users, whose reads go out while the chunk is still arriving
    // (`chunk_read`); at the end the outcomes' PUT and the count go out together.
    let (job, pieces) = tokio::try_join!(svc.jobs.job_for_chunk(&job_id, phase, seq), svc.store.get_pieces(&obj.key))?;
    let (job, recorded) = job.ok_or_else(|| Error::corrupt(format!("job {job_id}"), "chunk of an unknown job"))?;
    let outcomes_key = keys::chunk_outcomes(&job_id, phase, seq);
    // Recorded, but its outcomes' PUT failed (it runs beside the count): applied again for them,
    // each row finding its own write. Only a recorded chunk pays this look, a listing: the role
    // may list `outcomes/` but not read it, and S3 answers a read of a missing key 403 then.
    let again = recorded && !svc.store.list(&outcomes_key).await?.contains(&outcomes_key);
    if recorded && !again {
        info!(job = %job_id, phase, seq, "chunk already applied (duplicate event)");
        return advance(svc, &job, phase).await;
    }
    if job.state == JobState::Held {
        // Chunks are released only on approval; one seen before it is not applied.
        warn!(job = %job_id, phase, seq, "chunk of a held job; not applied");
        return Ok(());
    }
    if job.state.is_final() {
        // A FAILED job's email already said which rows were not applied: keep it true.
        info!(job = %job_id, phase, seq, state = job.state.as_str(), "late chunk of a finished job; not applied");
        return Ok(());
    }
    if again {
        warn!(job = %job_id, phase, seq, "chunk recorded without its outcomes; applied again for them");
    }
    let pieces = pieces.ok_or_else(|| Error::corrupt(obj.key.clone(), "chunk vanished"))?;
    let (tenant, (ops, stored)) = tokio::try_join!(
        svc.directory.tenant(&job.tenant),
        read_chunk(svc, &job.tenant, pieces, consistency(&job, false), |op| read_before(op, false))
    )?;
    let tenant = tenant.ok_or_else(|| Error::corrupt(format!("tenant {}", job.tenant), "removed during a job"))?;
    let claim = format!("{job_id}#{phase}#{seq}");
    let (outcomes, undo, spent) = apply_read(svc, &job, &tenant, ops, &claim, Some(stored), None).await?;
    let failed = outcomes.iter().filter(|o| o.status != Status::Success).count();
    // Before-states, then the count: a recorded chunk always has them (an attempt after the
    // first knows none: it keeps the first's). The outcomes go beside them: `advance` writes the
    // done marker only once every chunk's outcomes are there, and a chunk recorded without its
    // outcomes is applied again (above).
    let (outcomes_body, undo_body) = (jsonl(&outcomes)?, (!undo.is_empty() && !again).then(|| jsonl(&undo)).transpose()?);
    let record = async {
        if again {
            return Ok(None);
        }
        if let Some(body) = undo_body {
            svc.store.put(&keys::chunk_undo(&job_id, phase, seq), body, "application/x-ndjson").await?;
        }
        let of = job.phase_chunks.map(|plan| plan[phase]);
        svc.jobs.record_chunk(&job_id, phase, seq, of).await.map(Some)
    };
    // Both run to their end: a count written beside a failed PUT is found by the retry above.
    let (put, counted, ()) =
        tokio::join!(svc.store.put(&outcomes_key, outcomes_body, "application/x-ndjson"), record, async { drop(spent) });
    let counted = counted?;
    put?;
    info!(job = %job_id, phase, seq, rows = outcomes.len(), failed, counted = ?counted, "chunk applied");
    match counted {
        Some(Recorded::Counted { last: false }) => Ok(()),
        _ => {
            let job = svc.jobs.get(&job_id).await?.ok_or_else(|| Error::corrupt(format!("job {job_id}"), "missing"))?;
            advance(svc, &job, phase).await
        }
    }
}

/// What one chunk's rows share.
struct Ctx<'a> {
    svc: &'a Services,
    tenant: &'a Tenant,
    /// Validate mode, or the preview of a file that may be held: read the directory, predict,
    /// write nothing.
    dry: bool,
    /// What a predicted outcome adds ("validation only: nothing was changed").
    dry_note: &'static str,
    now: String,
    job: &'a str,
    /// The upload's order: rows never overwrite what a later upload wrote.
    order: &'a str,
    /// Existence of organizations and users referenced by rows, looked up once per chunk.
    orgs: Mutex<HashMap<String, bool>>,
    users: Mutex<HashMap<String, bool>>,
    /// The chunk's users as stored before its writes, read in one batch: the licence hints and
    /// the unchanged rows are decided from it (the writes' conditions stay the authority).
    stored: crate::ports::Users,
    /// Users of each organization the chunk deletes (lowercased names), counted in one pass over
    /// the tenant's users before its rows run: counted per row, a file deleting 200 organizations
    /// read every user of the tenant 200 times. Deletions run in the last phase, after the job's
    /// user rows, so a count at the chunk's start is the count each row would see.
    org_users: HashMap<String, u64>,
    /// Users of the chunk a delete left behind, with its upload's order (`UsersRead::deleted`).
    deleted: HashMap<String, String>,
    /// Email changes and ExternalId claims the rows need (`identity`).
    identity: crate::identity::Identities,
    /// (from, to) of the users this chunk moved: associations follow them once it is done.
    moved: Mutex<Vec<(String, String)>>,
}

/// Apply every row of a chunk; rows run concurrently up to the configured bound. Transient errors
/// (after the SDK's own backoff retries) fail the invocation so it is retried as a whole: rows
/// already written recognise their own stamp and report the same outcome again.
pub async fn apply_ops(svc: &Services, job: &Job, tenant: &Tenant, ops: Vec<RowOp>, claim: &str) -> Result<Vec<Outcome>> {
    apply_read(svc, job, tenant, ops, claim, None, None).await.map(|(o, ..)| o)
}

/// What `ops` would do, writing nothing: the preview of a file that may be held (`holds`).
pub async fn preview_ops(svc: &Services, job: &Job, tenant: &Tenant, ops: Vec<RowOp>) -> Result<Vec<Outcome>> {
    apply_read(svc, job, tenant, ops, "preview", None, Some(PREVIEW_NOTE)).await.map(|(o, ..)| o)
}

const VALIDATE_NOTE: &str = "validation only: nothing was changed";
const PREVIEW_NOTE: &str = "preview: nothing was changed";

/// The users a chunk decides from: every row about an existing user (whether it is unchanged,
/// its Changes) and, with `all` (a tenant with a pool: licence hints; a dry run: predictions), the
/// creates too. A file of creates reads nothing.
fn users_to_read(ops: &[RowOp], all: bool) -> Vec<String> {
    let mut emails: Vec<String> = ops.iter().filter_map(|op| read_before(op, all).cloned()).collect();
    emails.sort_unstable();
    emails.dedup();
    emails
}

/// The email of the user `op` decides from, as `users_to_read` picks them.
pub(crate) fn read_before(op: &RowOp, all: bool) -> Option<&String> {
    match &op.target {
        Target::User { email, .. } if all || op.action != Action::Create => Some(email),
        _ => None,
    }
}

async fn read_users(svc: &Services, tenant: &str, emails: Vec<String>, read: Consistency) -> Result<UsersRead> {
    if emails.is_empty() { Ok(UsersRead::default()) } else { svc.directory.read_users(tenant, &emails, read).await }
}

/// How a job's rows read their users: a prediction (validate) reads what it may, eventually
/// consistent (`Consistency`).
fn consistency(job: &Job, dry: bool) -> Consistency {
    if dry || job.mode == Some(Mode::Validate) { Consistency::Eventual } else { Consistency::Strong }
}

/// `apply_ops` with the rows that do not depend on the tenant's pool already read (`unpooled`).
async fn apply_read(
    svc: &Services,
    job: &Job,
    tenant: &Tenant,
    mut ops: Vec<RowOp>,
    claim: &str,
    unpooled: Option<UsersRead>,
    preview: Option<&'static str>,
) -> Result<(Vec<Outcome>, Vec<UndoEntry>, Spent)> {
    let dry_note = preview.or((job.mode == Some(Mode::Validate)).then_some(VALIDATE_NOTE));
    let all = tenant.has_pools() || dry_note.is_some();
    let read = consistency(job, dry_note.is_some());
    let stored = match unpooled {
        None => read_users(svc, &tenant.id, users_to_read(&ops, all), read).await?,
        Some(mut stored) if all => {
            let asked: std::collections::HashSet<String> = users_to_read(&ops, false).into_iter().collect();
            let rest = users_to_read(&ops, true).into_iter().filter(|e| !asked.contains(e)).collect();
            stored.merge(read_users(svc, &tenant.id, rest, read).await?);
            stored
        }
        Some(stored) => stored,
    };
    let UsersRead { live: mut stored, deleted } = stored;
    let identity = crate::identity::plan(svc, &tenant.id, &mut ops, &mut stored, read).await?;
    let deleting: Vec<String> = ops.iter().filter_map(deleted_org).collect();
    let org_users = if deleting.is_empty() { HashMap::new() } else { svc.directory.org_user_counts(&tenant.id, &deleting).await? };
    let ctx = Ctx {
        identity,
        org_users,
        deleted,
        moved: Mutex::new(Vec::new()),
        stored,
        svc,
        tenant,
        dry: dry_note.is_some(),
        dry_note: dry_note.unwrap_or(""),
        now: chrono::Utc::now().to_rfc3339(),
        job: &job.id,
        order: &job.order,
        orgs: Mutex::new(HashMap::new()),
        users: Mutex::new(HashMap::new()),
    };
    let concurrency = svc.config.apply_concurrency.max(1);
    // Licence pools: decide up front which rows take a licence, reserve them for the chunk at once
    // (one reservation per limited pool the chunk takes from).
    let pools = if tenant.has_pools() && !ctx.dry { Some(reserve(&ctx, &ops, claim).await?) } else { None };
    // A row that changes nothing needs no I/O once the organizations and people it names are
    // known to exist: decided here in one pass, not as a future (a nightly sync is mostly such
    // rows). Results go into room made once: grown, the rows' results (a few hundred bytes
    // each) were copied at each doubling, which led a profile of a chunk of unchanged rows.
    look_up_references(&ctx, &ops, concurrency).await?;
    let (mut results, mut failed) = (Vec::<Row>::with_capacity(ops.len()), None);
    // A row's future is 1.4 KB: boxed, the stream moves a pointer, not the future (moving 2,000
    // of them led a profile of a chunk of unchanged rows).
    type RowFuture<'f> = futures::future::BoxFuture<'f, Result<Row>>;
    let mut futures: Vec<RowFuture<'_>> = Vec::new();
    for op in &ops {
        let (refused, licensed) = match &pools {
            Some(p) => p.licence_of(op.row),
            None => (None, true),
        };
        match (refused, already_held(&ctx, op)) {
            (None, Some(stored)) => results.push(unchanged_row(&ctx, op, stored)),
            _ => futures.push(Box::pin(row_or_refusal(&ctx, op, refused, licensed))),
        }
    }
    // Every row runs to its end before an error is returned: none is cut off mid-write.
    let mut rows = stream::iter(futures).buffer_unordered(concurrency);
    while let Some(row) = rows.next().await {
        match row {
            Ok(row) => results.push(row),
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    drop(rows);
    if let Some(e) = failed {
        return Err(e);
    }
    let moved = std::mem::take(&mut *ctx.moved.lock().await);
    if !moved.is_empty() {
        // Supervisor, Parent... naming a moved email now name the new one (a retried chunk
        // repoints again: each update is conditional on the old value).
        let repointed = svc.directory.repoint_associations(&tenant.id, &moved).await?;
        info!(moves = moved.len(), repointed, "associations follow email changes");
    }
    if let Some(p) = pools {
        settle(&ctx, p, &ops, &results, claim).await?;
    }
    // What each changed item was before: kept per chunk for `undo`.
    let mut undo = Vec::new();
    let changed = |o: &Outcome| o.status == Status::Success && o.change.is_some_and(|c| c != crate::model::Change::Unchanged);
    // Only the rows that changed something (none, in a nightly sync of unchanged rows).
    let by_row: HashMap<u32, &Before> = results.iter().filter(|(o, ..)| !ctx.dry && changed(o)).map(|(o, _, b)| (o.row, b)).collect();
    for op in ops.iter().filter(|_| !by_row.is_empty()) {
        let Some(before) = by_row.get(&op.row) else { continue };
        let target = match &op.target {
            Target::User { email, .. } => Target::User { email: email.clone(), fields: crate::model::UserFields::default() },
            Target::Org { name, .. } => Target::org(name.clone()),
        };
        let token = Stamp { job: job.id.clone(), row: op.row, at: String::new(), order: String::new() }.token();
        undo.push(match before {
            Before::Was { image, active, pool } => {
                UndoEntry { target, kept: Kept { token, before: image.clone(), active: *active, pool: pool.clone(), unknown: false } }
            }
            Before::Unknown => UndoEntry { target, kept: Kept { token, before: None, active: false, pool: None, unknown: true } },
        });
    }
    let mut outcomes: Vec<Outcome> = results.into_iter().map(|(o, _, _)| o).collect();
    outcomes.sort_by_key(|o| (o.row, o.user.clone()));
    Ok((outcomes, undo, (ctx.stored, ops)))
}

/// What a chunk read and no longer needs: thousands of small allocations, freed while the
/// chunk's last writes are on the wire rather than before they are sent.
type Spent = (crate::ports::Users, Vec<RowOp>);

/// A row's outcome, its write, and what the write replaced.
type Row = (Outcome, Written, Before);

/// `refused`: the row asked its pool for a licence and got none (`Some(pool)`).
async fn row_or_refusal(ctx: &Ctx<'_>, op: &RowOp, refused: Option<&PoolKey>, licensed: bool) -> Result<Row> {
    if let Some(pool) = refused {
        let limit = ctx.tenant.pool_limit(pool.as_deref()).unwrap_or(0);
        let message = match pool {
            None => format!("no licence available (pool of {limit} exhausted)"),
            Some(name) => format!("no licence available in pool \"{}\" ({limit} exhausted)", crate::wording::quoted(name)),
        };
        let outcome =
            Outcome { column: pool.as_ref().map(|_| "LicencePool".to_string()), ..Outcome::failure(op.row, Some(op.action), message) };
        return Ok((outcome, Written { write: Write::NotFound, licence: Licence::Unchanged }, Before::Unknown));
    }
    apply_row(ctx, op, licensed).await
}

/// A licence pool: `None` the tenant's default pool, `Some(name)` a named one.
type PoolKey = Option<String>;

/// The claim of one chunk on one pool (the default pool keeps the chunk's own claim).
fn pool_claim(claim: &str, pool: &PoolKey) -> String {
    match pool {
        None => claim.to_string(),
        Some(name) => format!("{claim}#pool#{name}"),
    }
}

/// A chunk's licences: the pool each user row counts in after its write, and one reservation per
/// limited pool the chunk takes from.
#[derive(Debug, Default)]
struct Pools {
    after: HashMap<u32, PoolKey>,
    /// Rows that move an active user to another pool (they take there and give back where they were).
    movers: std::collections::HashSet<u32>,
    reserved: HashMap<PoolKey, Reservation>,
}

impl Pools {
    /// (the pool that refused the row a licence, whether the row holds one).
    fn licence_of(&self, row: u32) -> (Option<&PoolKey>, bool) {
        let Some(pool) = self.after.get(&row) else { return (None, false) };
        match self.reserved.get(pool) {
            Some(r) if r.refused.contains(&row) => (Some(pool), false),
            Some(r) => (None, r.takers.contains(&row)),
            // An unlimited pool: every row holds a licence.
            None => (None, true),
        }
    }
}

/// A chunk's share of the licence pool.
#[derive(Debug)]
struct Reservation {
    granted: u32,
    /// Rows that asked for a licence and hold one.
    takers: Vec<u32>,
    /// Rows that asked for a licence and did not get one.
    refused: Vec<u32>,
    /// The reservation was made by an earlier attempt of this chunk.
    repeated: bool,
}

impl Reservation {
    /// Licences to give back once the rows are written: what was granted and not taken, and
    /// what the writes freed. Each take and give-back was decided by the write's own condition.
    /// A retried row that a later upload overwrote cannot tell what its first attempt did: a
    /// licence it held counts as taken (the pool may then count one too many until
    /// `recount-licences`, never one too few).
    fn returned<'a>(&self, rows: impl Iterator<Item = (u32, &'a Written)>) -> u32 {
        let (mut took, mut freed) = (0u32, 0u32);
        for (row, w) in rows {
            match w.licence {
                Licence::Took => took += 1,
                Licence::Freed => freed += 1,
                Licence::Unchanged if self.repeated && matches!(w.write, Write::Superseded(_)) && self.takers.contains(&row) => took += 1,
                Licence::Unchanged => {}
            }
        }
        if took > self.granted {
            // Only rows holding a licence may take one (`rules::first`); never give back more than was counted.
            warn!(took, granted = self.granted, "more licences taken than granted");
        }
        self.granted.saturating_sub(took) + freed
    }
}

async fn reserve(ctx: &Ctx<'_>, ops: &[RowOp], claim: &str) -> Result<Pools> {
    let tenant = ctx.tenant;
    let mut pools = Pools::default();
    let mut wanted: std::collections::BTreeMap<PoolKey, Vec<u32>> = std::collections::BTreeMap::new();
    for op in ops {
        let Target::User { email, fields } = &op.target else { continue };
        let (row, action, user) = (op.row, op.action, ctx.stored.get(email));
        let stored_pool = user.and_then(|u| tenant.pool_of(u.fields.licence_pool.as_deref()));
        let pool: PoolKey = match action {
            Action::Restore => op.restore.as_ref().and_then(|r| tenant.pool_of(r.kept.pool.as_deref())).map(str::to_string),
            _ => tenant.pool_of(fields.licence_pool.as_deref()).or(stored_pool).map(str::to_string),
        };
        // An active user the row moves to another pool: a licence there, one given back here.
        let moves = match action {
            Action::Restore => op.restore.as_ref().is_some_and(|r| r.kept.active && !r.kept.unknown),
            _ => fields.licence_pool.is_some(),
        } && user.is_some_and(|u| u.status == UserStatus::Active)
            && pool.as_deref() != stored_pool;
        if moves && matches!(action, Action::Create | Action::Upsert | Action::Update | Action::Enable | Action::Restore) {
            pools.movers.insert(row);
        }
        pools.after.insert(row, pool.clone());
        let takers = wanted.entry(pool).or_default();
        if pools.movers.contains(&row) {
            takers.push(row);
            continue;
        }
        // A user this very row created on an earlier attempt still counts as its taker.
        let token = Stamp { job: ctx.job.to_string(), row, at: String::new(), order: String::new() }.token();
        let ours = user.is_some_and(|u| u.created_by == token);
        // A newer upload deleted the user: this row's write can only be refused (orders only
        // grow), so it takes no licence, whichever attempt of the chunk writes first.
        let gone_for_good = ctx.deleted.get(email).is_some_and(|order| order.as_str() > ctx.order);
        // A hint only: the write decides whether a licence is taken, and a row without one
        // never makes a user active.
        match action {
            Action::Create | Action::Upsert if (user.is_none() && !gone_for_good) || ours => takers.push(row),
            Action::Enable if user.is_some_and(|u| u.status == UserStatus::Disabled) => takers.push(row),
            // An undo bringing back an active user whom the directory holds inactive (or not at all).
            Action::Restore
                if op.restore.as_ref().is_some_and(|r| r.kept.active && !r.kept.unknown)
                    && user.is_none_or(|u| u.status != UserStatus::Active) =>
            {
                takers.push(row)
            }
            _ => {}
        }
    }
    for (pool, mut takers) in wanted {
        let Some(limit) = tenant.pool_limit(pool.as_deref()) else { continue };
        // The default pool is always claimed (its settle gives back what the chunk frees); a named
        // pool only when the chunk takes from it (`settle` claims it then if the chunk frees some).
        if takers.is_empty() && pool.is_some() {
            continue;
        }
        takers.sort_unstable();
        let reservation = claim_pool(ctx, &pool, limit, claim, takers).await?;
        pools.reserved.insert(pool, reservation);
    }
    if let (Some(limit), false) = (tenant.licences, pools.reserved.contains_key(&None)) {
        pools.reserved.insert(None, claim_pool(ctx, &None, limit, claim, vec![]).await?);
    }
    Ok(pools)
}

/// Reserve up to one licence of `pool` per taker. A retried chunk gets its first attempt's
/// reservation back (its own writes hide the original state).
async fn claim_pool(ctx: &Ctx<'_>, pool: &PoolKey, limit: u32, claim: &str, takers: Vec<u32>) -> Result<Reservation> {
    let decision = LicenceClaim { takers, ..Default::default() };
    let claimed = ctx.svc.directory.reserve_licences(&ctx.tenant.id, pool.as_deref(), limit, &pool_claim(claim, pool), decision).await?;
    let LicenceClaim { mut takers, granted, repeated } = claimed;
    let refused = takers.split_off((granted as usize).min(takers.len()));
    Ok(Reservation { granted, takers, refused, repeated })
}

/// Give back, per pool, what was reserved and not taken and what the writes freed. A licence
/// freed counts in the pool the user was in when written (the write's old image says); a move
/// takes in the new pool and frees in the old one.
async fn settle(ctx: &Ctx<'_>, mut pools: Pools, ops: &[RowOp], results: &[Row], claim: &str) -> Result<()> {
    let tenant = ctx.tenant;
    let emails: HashMap<u32, &str> = ops
        .iter()
        .filter_map(|op| match &op.target {
            Target::User { email, .. } => Some((op.row, email.as_str())),
            _ => None,
        })
        .collect();
    let mut per_pool: HashMap<PoolKey, Vec<(u32, Written)>> = HashMap::new();
    for (o, w, before) in results {
        let Some(after) = pools.after.get(&o.row).cloned() else { continue };
        let (was_active, before_pool) = match before {
            Before::Was { active, pool, .. } => (*active, tenant.pool_of(pool.as_deref()).map(str::to_string)),
            Before::Unknown => {
                let stored = emails.get(&o.row).and_then(|e| ctx.stored.get(*e));
                (false, stored.and_then(|u| tenant.pool_of(u.fields.licence_pool.as_deref())).map(str::to_string))
            }
        };
        let moved = pools.movers.contains(&o.row) && was_active && w.licence == Licence::Unchanged && before_pool != after;
        match w.licence {
            _ if moved && matches!(w.write, Write::Updated) => {
                per_pool.entry(after).or_default().push((o.row, Written { write: Write::Updated, licence: Licence::Took }));
                per_pool.entry(before_pool).or_default().push((o.row, Written { write: Write::Updated, licence: Licence::Freed }));
            }
            Licence::Freed => per_pool.entry(before_pool).or_default().push((o.row, w.clone())),
            _ => per_pool.entry(after).or_default().push((o.row, w.clone())),
        }
    }
    let mut touched: Vec<PoolKey> = pools.reserved.keys().cloned().collect();
    touched.extend(per_pool.keys().filter(|p| !pools.reserved.contains_key(*p)).cloned());
    for pool in touched {
        let Some(limit) = tenant.pool_limit(pool.as_deref()) else { continue };
        let rows = per_pool.remove(&pool).unwrap_or_default();
        let reservation = match pools.reserved.remove(&pool) {
            Some(r) => r,
            None if rows.iter().any(|(_, w)| w.licence == Licence::Freed) => claim_pool(ctx, &pool, limit, claim, vec![]).await?,
            None => continue,
        };
        let returned = reservation.returned(rows.iter().map(|(row, w)| (*row, w)));
        ctx.svc.directory.settle_licences(&tenant.id, pool.as_deref(), &pool_claim(claim, &pool), returned).await?;
    }
    Ok(())
}

/// Set a tenant's pool count to its active users: the repair for a count that drifted (users
/// that existed before the pool, or changed outside rosterdrop). Returns (before, after).
pub async fn recount_licences(svc: &Services, tenant: &Tenant) -> Result<Vec<(PoolKey, u32, u32)>> {
    let active: Vec<String> = svc
        .directory
        .list_users(&tenant.id)
        .await?
        .into_iter()
        .filter(|(_, status)| *status == UserStatus::Active)
        .map(|(e, _)| e)
        .collect();
    let mut counts: HashMap<PoolKey, u32> = HashMap::new();
    if tenant.licence_pools.is_empty() {
        counts.insert(None, active.len() as u32);
    } else {
        // Which pool each active user counts in: read in batches of 100 (a repair, run by hand).
        for batch in active.chunks(1_000) {
            for user in svc.directory.users(&tenant.id, batch).await?.values().filter(|u| u.status == UserStatus::Active) {
                *counts.entry(tenant.pool_of(user.fields.licence_pool.as_deref()).map(str::to_string)).or_default() += 1;
            }
        }
    }
    let mut pools: Vec<PoolKey> = std::iter::once(None).chain(tenant.licence_pools.keys().cloned().map(Some)).collect();
    pools.retain(|p| tenant.pool_limit(p.as_deref()).is_some());
    let mut out = Vec::new();
    for pool in pools {
        let before = svc.directory.licences_used(&tenant.id, pool.as_deref()).await?;
        let after = counts.get(&pool).copied().unwrap_or(0);
        svc.directory.set_licences_used(&tenant.id, pool.as_deref(), after).await?;
        out.push((pool, before, after));
    }
    Ok(out)
}

async fn apply_row(ctx: &Ctx<'_>, op: &RowOp, licensed: bool) -> Result<Row> {
    let (row, action) = (op.row, op.action);
    let tenant = ctx.tenant.id.as_str();
    let nothing = || Written { write: Write::NotFound, licence: Licence::Unchanged };
    let fail = |msg: String| Ok((Outcome::failure(row, Some(action), msg), nothing(), Before::Unknown));
    let fail_in = |column: &str, msg: String| {
        Ok((Outcome { column: Some(column.to_string()), ..Outcome::failure(row, Some(action), msg) }, nothing(), Before::Unknown))
    };
    if action == Action::Restore {
        let stamp = Stamp { job: ctx.job.to_string(), row, at: ctx.now.clone(), order: ctx.order.to_string() };
        return restore_row(ctx, op, &stamp).await;
    }
    if let Some((column, message)) = ctx.identity.refused.get(&row) {
        return fail_in(column, message.clone());
    }
    if let Some((org, people)) = named(ctx, op) {
        if let Some(org) = org
            && !org_found(ctx, org).await?
        {
            return fail_in("OrgName", {
                let org = crate::wording::quoted(org);
                format!("organization \"{org}\" does not exist; create it first or add a Type=Org row for it to this file")
            });
        }
        for (kind, email) in people {
            if !person_found(ctx, email).await? {
                let label = kind.replace('_', " ");
                return fail_in(
                    &association_column(kind),
                    format!("{label} {email} does not exist; add them to this file or create them first"),
                );
            }
        }
    }
    let stamp = Stamp { job: ctx.job.to_string(), row, at: ctx.now.clone(), order: ctx.order.to_string() };
    let unchanged = |write| (Written { write, licence: Licence::Unchanged }, Before::Unknown);
    let moving = ctx.identity.moves.get(&row);
    if let (Some(m), Target::User { email: to, .. }, false) = (moving, &op.target, ctx.dry) {
        // Who stays as they were: a user known by a Username has no email to keep.
        let stays =
            if m.column == "Username" { format!("{} is left as they were", m.who()) } else { format!("{} keeps their email", m.from) };
        let skipped = |msg: String| Ok((Outcome { action: Some(action), ..Outcome::skipped(row, msg) }, nothing(), Before::Unknown));
        match ctx.svc.directory.move_user(tenant, &m.from, to, &stamp).await? {
            crate::ports::Moved::Moved => {
                ctx.moved.lock().await.push((m.from.clone(), to.clone()));
                ctx.svc.invites.rename(tenant, &m.from, to).await?;
            }
            crate::ports::Moved::Missing => {
                let gone = if m.column == "Username" {
                    format!("{} is not in the directory any more", m.who())
                } else {
                    format!("no user has the email {} any more", m.from)
                };
                return fail_in(m.column, format!("{gone}; nothing to move"));
            }
            crate::ports::Moved::Taken => {
                return fail_in(m.column, format!("{to} already belongs to another user; {stays}"));
            }
            crate::ports::Moved::ContactOf(org) => {
                return fail_in(
                    m.column,
                    format!("{to} is the contact email of organization \"{}\"; {stays}", crate::wording::quoted(&org)),
                );
            }
            crate::ports::Moved::Superseded(job) => return skipped(format!("changed by a newer upload (job {job})")),
        }
    }
    let claimed = match (ctx.identity.claims.get(&row), &op.target, ctx.dry) {
        (Some(id), Target::User { email, .. }, false) => match ctx.svc.directory.claim_external_id(tenant, id, email).await? {
            None => Some((id, email)),
            Some(other) => {
                return fail_in("ExternalId", format!("ExternalId \"{}\" already belongs to {other}", crate::wording::quoted(id)));
            }
        },
        _ => None,
    };
    // An organization's id is recorded before its write (the latest name wins), so a later
    // file's references find it; a failed write leaves it naming an organization that is not there,
    // which a user row referencing it is refused for, as for any missing organization.
    if let (Target::Org { name, external_id: Some(id), .. }, false, false) = (&op.target, ctx.dry, action == Action::Delete) {
        ctx.svc.directory.put_org_id(tenant, id, name).await?;
    }
    let held = holds_already(ctx, op);
    if let (Some(stored), None) = (held, moving) {
        return Ok(unchanged_row(ctx, op, stored));
    }
    let result = match &op.target {
        // Nothing to change: no write at all (a nightly full sync is mostly such rows).
        Target::User { .. } if held.is_some() => Ok(unchanged(Write::Unchanged)),
        Target::Org { name, .. } if action == Action::Delete => {
            let users = ctx.org_users.get(&name.to_lowercase()).copied().unwrap_or(0);
            if users > 0 {
                let noun = if users == 1 { "user" } else { "users" };
                return fail(format!("organization \"{name}\" still has {users} {noun}; move or delete them first"));
            }
            if ctx.dry {
                predict_org(ctx, op).await.map(unchanged)
            } else {
                let contact = ctx.svc.directory.org_email(tenant, name).await?;
                let written = write_row_keeping(&*ctx.svc.directory, tenant, op, &stamp, true).await;
                if let (Ok((w, _)), Some(email)) = (&written, contact)
                    && w.write == Write::Deleted
                {
                    // The email is free for a user again.
                    ctx.svc.directory.release_contact(tenant, &email, name).await?;
                }
                written
            }
        }
        Target::Org { .. } if ctx.dry => predict_org(ctx, op).await.map(unchanged),
        Target::User { email, .. } if ctx.dry => Ok(unchanged(predict_user(ctx, email, action))),
        Target::Org { name, email: Some(email), .. } => match write_org_with_contact(ctx, op, name, email, &stamp).await? {
            Ok(written) => Ok(written),
            Err(message) => return fail_in("Email", message),
        },
        Target::Org { .. } => write_row_keeping(&*ctx.svc.directory, tenant, op, &stamp, true).await,
        Target::User { .. } => write_row_keeping(&*ctx.svc.directory, tenant, op, &stamp, licensed).await,
    };
    let (written, before) = match result {
        Ok(w) => w,
        Err(e) if e.is_retryable() => return Err(e),
        // A permanent error on one row (e.g. a value DynamoDB refuses) fails that row only.
        Err(e) => {
            warn!(row, error = %e, "row write refused");
            return fail(format!("could not be saved: {e}"));
        }
    };
    let mut outcome = message(op, &written.write, ctx.dry.then_some(ctx.dry_note));
    if let Some(change) = outcome.change {
        let stored = match &op.target {
            Target::User { email, .. } => ctx.stored.get(email).map(Box::as_ref),
            Target::Org { .. } => None,
        };
        outcome.changes = crate::changes::describe(op, stored, change);
    }
    if let (Some((id, email)), false) = (claimed, matches!(written.write, Write::Created | Write::Updated | Write::Unchanged)) {
        // The id was claimed for a user this row did not write: let it go again.
        ctx.svc.directory.release_external_id(tenant, id, email).await?;
    }
    if let (Write::Deleted, Target::User { email, .. }, false) = (&written.write, &op.target, ctx.dry)
        && let Some(id) = ctx.stored.get(email).and_then(|u| u.fields.external_id.as_deref())
    {
        // A deleted person's id is free for someone else (a predicted delete frees nothing).
        ctx.svc.directory.release_external_id(tenant, id, email).await?;
    }
    if let (Some(m), Target::User { email: to, .. }, Status::Success) = (moving, &op.target, outcome.status) {
        let (verb, given) = if ctx.dry { ("would change", "would be given") } else { ("changed", "was given") };
        let username = m.column == "Username";
        outcome.message =
            if username { format!("{} {given} the email {to}", m.who()) } else { format!("email {verb} from {} to {to}", m.from) };
        if ctx.dry {
            outcome.message += &format!(" ({})", ctx.dry_note);
        }
        outcome.change = Some(crate::model::Change::Updated);
        let email_change = if username { format!("Email: (empty) -> \"{to}\"") } else { format!("Email: \"{}\" -> \"{to}\"", m.from) };
        outcome.changes = if outcome.changes.is_empty() { email_change } else { format!("{email_change}; {}", outcome.changes) };
    }
    if let Target::User { email, fields } = &op.target {
        if action == Action::Reconcile {
            outcome.user = Some(email.clone());
        }
        // The id the write gave a user it created, or the one the user holds.
        outcome.user_id = match (&written.write, ctx.dry) {
            (Write::Created, false) => Some(crate::model::new_user_id(tenant, email, &stamp.token())),
            _ => ctx.stored.get(email).and_then(|u| u.user_id.clone()),
        };
        if outcome.status == Status::Success {
            outcome.message += &invite(ctx, op, email, fields, &written.write).await?;
            outcome.message += &still_disabled(ctx, op, email);
        }
    }
    Ok((outcome, written, before))
}

/// What an upsert or update of a disabled user says: it stays disabled (a file never enables
/// anyone unasked), and an admin who put the user back in the file expects them active.
fn still_disabled(ctx: &Ctx<'_>, op: &RowOp, email: &str) -> String {
    let disabled = ctx.stored.get(email).is_some_and(|u| u.status == crate::model::UserStatus::Disabled);
    if disabled && matches!(op.action, Action::Upsert | Action::Update) {
        format!(
            "; the user is disabled and stays so: to enable them, upload a row with Action Enable into incoming/{}/ (replace/ takes no Enable)",
            ctx.tenant.id
        )
    } else {
        String::new()
    }
}

/// An undo's row: put the item back as it was before the undone job wrote it, unless another
/// job wrote it since.
async fn restore_row(ctx: &Ctx<'_>, op: &RowOp, stamp: &Stamp) -> Result<Row> {
    let none = || Written { write: Write::NotFound, licence: Licence::Unchanged };
    let Some(r) = &op.restore else { return Err(Error::corrupt("chunk", "a restore without its state")) };
    let noun = match &op.target {
        Target::User { email, .. } => format!("user {email}"),
        Target::Org { name, .. } => format!("organization \"{name}\""),
    };
    let skipped = |msg: String| Outcome { action: Some(Action::Restore), ..Outcome::skipped(op.row, msg) };
    if r.kept.unknown {
        let msg =
            format!("its state before job {} was not kept (that job's part was retried after writing); check {noun} by hand", r.undoes);
        return Ok((skipped(msg), none(), Before::Unknown));
    }
    Ok(match ctx.svc.directory.restore(&ctx.tenant.id, &op.target, r, stamp).await? {
        Restored::Done { change, licence, before } => {
            let (msg, write) = match change {
                crate::model::Change::Created => (format!("{noun} restored: job {} had deleted it", r.undoes), Write::Created),
                crate::model::Change::Deleted => (format!("{noun} removed: job {} had created it", r.undoes), Write::Deleted),
                _ => (format!("{noun} restored to its state before job {}", r.undoes), Write::Updated),
            };
            let outcome = Outcome { change: Some(change), ..Outcome::success(op.row, Action::Restore, msg) };
            (outcome, Written { write, licence }, before)
        }
        Restored::ChangedSince(job) => (skipped(format!("changed since by job {job}")), none(), Before::Unknown),
        Restored::Gone => (skipped("changed since: it no longer exists".into()), none(), Before::Unknown),
    })
}

/// An organization row with a contact email: the email is claimed first (on the key a user with
/// it would have: a user's create and this claim exclude each other), then the organization is
/// written; a claim its write did not use is let go, and so is the email it had before.
/// `Err(message)`: the email is taken.
async fn write_org_with_contact(
    ctx: &Ctx<'_>,
    op: &RowOp,
    name: &str,
    email: &str,
    stamp: &Stamp,
) -> Result<std::result::Result<(Written, Before), String>> {
    let (dir, tenant) = (&*ctx.svc.directory, ctx.tenant.id.as_str());
    let before = dir.org_email(tenant, name).await?;
    match dir.claim_contact(tenant, email, name).await? {
        crate::ports::ContactClaim::Claimed => {}
        crate::ports::ContactClaim::User => {
            return Ok(Err(format!("{email} is the email of a user of this tenant; an organization cannot have a user's email")));
        }
        crate::ports::ContactClaim::Org(other) => {
            let other = crate::wording::quoted(&other);
            return Ok(Err(format!("{email} is already the contact email of organization \"{other}\"")));
        }
    }
    let written = write_row_keeping(dir, tenant, op, stamp, true).await;
    let applied = matches!(&written, Ok((w, _)) if matches!(w.write, Write::Created | Write::Updated));
    if applied {
        if let Some(old) = before.filter(|old| old != email) {
            dir.release_contact(tenant, &old, name).await?;
        }
    } else if before.as_deref() != Some(email) {
        dir.release_contact(tenant, email, name).await?;
    }
    written.map(Ok)
}

/// One row's conditional writes, as `rules` directs: usually one; more only when the item is not
/// as the row expected (a disable finding the user disabled already). `licensed`: the row holds a
/// licence of the tenant's pool (always, without a pool); without one, no write can make a user active.
pub async fn write_row(dir: &dyn Directory, tenant: &str, op: &RowOp, stamp: &Stamp, licensed: bool) -> Result<Written> {
    write_row_keeping(dir, tenant, op, stamp, licensed).await.map(|(w, _)| w)
}

/// `write_row`, keeping what the write replaced (for undo).
async fn write_row_keeping(dir: &dyn Directory, tenant: &str, op: &RowOp, stamp: &Stamp, licensed: bool) -> Result<(Written, Before)> {
    let user = matches!(op.target, Target::User { .. });
    let mut before = Before::Unknown;
    if !user && !matches!(op.action, Action::Create | Action::Update | Action::Upsert | Action::Delete) {
        return Err(Error::corrupt("chunk", format!("organization row with action {}", op.action)));
    }
    let token = stamp.token();
    let mut next = rules::first(op.action, user, licensed);
    for _ in 0..rules::MAX_ATTEMPTS {
        let attempt = match next {
            Next::Done(written) => return Ok((written, before)),
            Next::Try(attempt) => attempt,
        };
        next = match dir.write(tenant, &op.target, attempt, stamp).await? {
            Attempted::Written(old, image) => {
                let active = old.as_ref().is_some_and(|o| user && !o.tombstone && o.status.unwrap_or_default() == UserStatus::Active);
                let pool = old.as_ref().and_then(|o| o.pool.clone());
                before = Before::Was { image, active, pool };
                Next::Done(rules::succeeded(attempt, user, old.as_ref(), &token))
            }
            Attempted::Refused(old) => rules::refused(attempt, user, old.as_ref(), &token, &stamp.order),
        };
    }
    match next {
        Next::Done(written) => Ok((written, before)),
        Next::Try(_) => Err(Error::Transient {
            service: "directory",
            operation: "conditional write",
            message: "the item changed between every attempt to write it".into(),
        }),
    }
}

/// Record the activation email a row asks for; returns what to add to the row's message.
/// Only users this row created are invited ("never to users only updated"), or the Invite action.
async fn invite(ctx: &Ctx<'_>, op: &RowOp, email: &str, fields: &crate::model::UserFields, write: &Write) -> Result<String> {
    match invite_wanted(op, fields, write) {
        Err(note) => return Ok(note.to_string()),
        Ok(false) => return Ok(String::new()),
        Ok(true) => {}
    }
    let due_at = fields.invite_at.clone().filter(|at| *at > ctx.now).unwrap_or_else(|| ctx.now.clone());
    let when = if due_at > ctx.now { format!("scheduled for {due_at}") } else { "will be sent shortly".to_string() };
    if ctx.dry {
        return Ok(format!("; activation email would be {when}"));
    }
    let invite = crate::model::Invite {
        tenant: ctx.tenant.id.clone(),
        email: email.to_string(),
        first_name: fields.first_name.clone(),
        due_at,
        job: ctx.job.to_string(),
        attempts: 0,
    };
    ctx.svc.invites.schedule(&invite).await?;
    Ok(format!("; activation email {when}"))
}

/// Whether a row's user gets an activation email; `Err(note)`: not, and what the row says of it.
fn invite_wanted(op: &RowOp, fields: &crate::model::UserFields, write: &Write) -> std::result::Result<bool, &'static str> {
    match (op.action, write) {
        (Action::Invite, Write::Updated) => Ok(true),
        (_, Write::Created) => Ok(fields.invite),
        (_, Write::Updated | Write::Unchanged) if fields.invite => {
            Err("; no activation email: invites go to new users only (use Action Invite to send one again)")
        }
        _ => Ok(false),
    }
}

/// The stored user when `op` would change nothing of it: no write at all. (A user this very row
/// wrote on an earlier attempt goes to the write, which reads its stamp and reports what that
/// attempt did.) The read was consistent: a change made after it is ordered after this row.
fn holds_already<'c>(ctx: &'c Ctx<'_>, op: &RowOp) -> Option<&'c User> {
    let Target::User { email, fields } = &op.target else { return None };
    if !matches!(op.action, Action::Upsert | Action::Update) {
        return None;
    }
    let mine = |token: &str| crate::ports::is_row_token(ctx.job, op.row, token);
    ctx.stored
        .get(email)
        .map(Box::as_ref)
        .filter(|stored| !mine(&stored.last_write) && !mine(&stored.created_by) && rules::unchanged(fields, stored))
}

/// `holds_already`, for a row `apply_row` would decide without I/O: nothing refused, moved or
/// claimed, and every organization and person it names known to exist (`look_up_references`).
fn already_held<'c>(ctx: &'c Ctx<'_>, op: &RowOp) -> Option<&'c User> {
    let row = op.row;
    if ctx.identity.refused.contains_key(&row) || ctx.identity.moves.contains_key(&row) || ctx.identity.claims.contains_key(&row) {
        return None;
    }
    let known = |cache: &Mutex<HashMap<String, bool>>, key: &str| cache.try_lock().is_ok_and(|c| c.get(key) == Some(&true));
    if let Some((org, mut people)) = named(ctx, op)
        && (org.is_some_and(|org| !known(&ctx.orgs, &org.to_lowercase())) || people.any(|(_, e)| !known(&ctx.users, e)))
    {
        return None;
    }
    holds_already(ctx, op)
}

/// The outcome of a row whose user holds its values already (`holds_already`).
fn unchanged_row(ctx: &Ctx<'_>, op: &RowOp, stored: &User) -> Row {
    let mut outcome = message(op, &Write::Unchanged, ctx.dry.then_some(ctx.dry_note));
    if let Some(change) = outcome.change {
        outcome.changes = crate::changes::describe(op, Some(stored), change);
    }
    outcome.user_id.clone_from(&stored.user_id);
    if let (Status::Success, Target::User { email, fields }) = (outcome.status, &op.target) {
        if let Err(note) = invite_wanted(op, fields, &Write::Unchanged) {
            outcome.message += note;
        }
        outcome.message += &still_disabled(ctx, op, email);
    }
    (outcome, Written { write: Write::Unchanged, licence: Licence::Unchanged }, Before::Unknown)
}

/// Whether the organizations and people the chunk's user rows name exist, each looked up once
/// before the rows (the first row naming one would look it up): a row that changes nothing is
/// then decided without I/O.
async fn look_up_references(ctx: &Ctx<'_>, ops: &[RowOp], concurrency: usize) -> Result<()> {
    let (mut orgs, mut people) = (std::collections::BTreeMap::new(), std::collections::BTreeSet::new());
    for (org, named_people) in ops.iter().filter_map(|op| named(ctx, op)) {
        if let Some(org) = org {
            orgs.entry(org.to_lowercase()).or_insert(org);
        }
        people.extend(named_people.map(|(_, e)| e));
    }
    // Collected before the first await: an iterator of closures held across it is not Send.
    let mut lookups: Vec<futures::future::BoxFuture<'_, Result<bool>>> = Vec::with_capacity(orgs.len() + people.len());
    lookups.extend(orgs.into_values().map(|org| org_found(ctx, org).boxed()));
    lookups.extend(people.into_iter().map(|e| person_found(ctx, e).boxed()));
    let mut lookups = stream::iter(lookups).buffer_unordered(concurrency);
    while let Some(found) = lookups.next().await {
        found?;
    }
    Ok(())
}

/// The organization a row deletes (its users are counted before the chunk's rows run).
fn deleted_org(op: &RowOp) -> Option<String> {
    match &op.target {
        Target::Org { name, .. } if op.action == Action::Delete => Some(name.clone()),
        _ => None,
    }
}

/// What a user row names that must exist before it is applied: its organization (`None` when it
/// names none, or, in a dry run, one its file creates: organizations of the file exist by now,
/// their phase ran first, except in a dry run) and the (association, email) of the people it
/// names that its file does not create (those may be in a chunk running at the same time: not
/// checked). `None` for a row that names nothing to check.
fn named<'o>(ctx: &Ctx<'_>, op: &'o RowOp) -> Option<(Option<&'o String>, impl Iterator<Item = (&'o String, &'o String)>)> {
    let Target::User { fields, .. } = &op.target else { return None };
    if matches!(op.action, Action::Delete | Action::Reconcile | Action::Restore) {
        return None;
    }
    let org = fields.org.as_ref().filter(|org| !(ctx.dry && op.created_in_file.contains(&org.to_lowercase())));
    Some((org, fields.associations.iter().filter(|(_, e)| !op.created_in_file.contains(e))))
}

/// Whether the organization exists, looked up once per chunk.
async fn org_found(ctx: &Ctx<'_>, org: &str) -> Result<bool> {
    exists(&ctx.orgs, org.to_lowercase(), ctx.svc.directory.org_exists(&ctx.tenant.id, org)).await
}

/// Whether the person exists, looked up once per chunk.
async fn person_found(ctx: &Ctx<'_>, email: &str) -> Result<bool> {
    exists(&ctx.users, email.to_string(), async { Ok(ctx.svc.directory.user(&ctx.tenant.id, email).await?.is_some()) }).await
}

/// "supervisor_manager" -> "SupervisorManager": the column a user wrote.
pub(crate) fn association_column(attr: &str) -> String {
    attr.split('_').map(|w| w[..1].to_uppercase() + &w[1..]).collect()
}

async fn exists(
    cache: &Mutex<HashMap<String, bool>>,
    key: String,
    lookup: impl std::future::Future<Output = Result<bool>>,
) -> Result<bool> {
    if let Some(known) = cache.lock().await.get(&key) {
        return Ok(*known);
    }
    let found = lookup.await?;
    cache.lock().await.insert(key, found);
    Ok(found)
}

/// Validate mode: what the write would do, from the directory as the chunk read it.
fn predict_user(ctx: &Ctx<'_>, email: &str, action: Action) -> Write {
    match (action, ctx.stored.get(email)) {
        (Action::Create, Some(_)) => Write::AlreadyExists,
        (Action::Create | Action::Upsert, None) => Write::Created,
        (Action::Delete, Some(_)) => Write::Deleted,
        (_, Some(_)) => Write::Updated,
        (_, None) => Write::NotFound,
    }
}

async fn predict_org(ctx: &Ctx<'_>, op: &RowOp) -> Result<Write> {
    let Target::Org { name, .. } = &op.target else { return Err(Error::corrupt("chunk", "not an org")) };
    let found = ctx.svc.directory.org_exists(&ctx.tenant.id, name).await?;
    Ok(match (op.action, found) {
        (Action::Create, true) => Write::AlreadyExists,
        (Action::Create | Action::Upsert, false) => Write::Created,
        (Action::Delete, true) => Write::Deleted,
        (_, true) => Write::Updated,
        (_, false) => Write::NotFound,
    })
}

/// The human words for a write's result.
fn message(op: &RowOp, write: &Write, dry: Option<&str>) -> Outcome {
    let (noun, what) = match &op.target {
        Target::User { email, .. } if op.action == Action::Reconcile => ("user", format!(" {email}")),
        Target::User { .. } => ("user", String::new()),
        Target::Org { name, .. } => ("organization", format!(" \"{name}\"")),
    };
    let mut outcome = message_of(op, write, dry, noun, &what);
    if outcome.status == Status::Success {
        outcome.change = crate::changes::kind(op.action, write);
    }
    outcome
}

fn message_of(op: &RowOp, write: &Write, dry: Option<&str>, noun: &str, what: &str) -> Outcome {
    let (row, action) = (op.row, op.action);
    let done = |verb: &str| match dry {
        Some(note) => format!("{noun}{what} would be {verb} ({note})"),
        None => format!("{noun}{what} {verb}"),
    };
    match write {
        Write::Created => Outcome::success(row, action, done("created")),
        Write::Updated => Outcome::success(
            row,
            action,
            match action {
                Action::Enable => done("enabled"),
                Action::Disable => done("disabled"),
                Action::Reconcile => done("disabled, with its groups and targeting removed: not in the replace file"),
                Action::Expire => done("stripped of the listed products"),
                Action::Invite => format!("{noun} invited again"),
                _ => done("updated"),
            },
        ),
        Write::Deleted => Outcome::success(row, action, done("deleted")),
        Write::AlreadyExists if action == Action::Invite => {
            Outcome::failure(row, Some(action), "user has already activated their account; no invite sent")
        }
        Write::AlreadyExists => {
            Outcome::failure(row, Some(action), format!("{noun}{what} already exists; use Update or Upsert to change it"))
        }
        Write::NotFound if action == Action::Reconcile => {
            Outcome::success(row, action, format!("{noun}{what} was already disabled or removed"))
        }
        Write::NotFound => Outcome::failure(row, Some(action), format!("{noun}{what} not found; use Create or Upsert to add it")),
        Write::Unchanged => Outcome::success(row, action, crate::model::UNCHANGED),
        Write::Superseded(job) => {
            Outcome { action: Some(action), ..Outcome::skipped(row, format!("changed by a newer upload (job {job})")) }
        }
        Write::Unlicensed => Outcome::failure(
            row,
            Some(action),
            if action == Action::Enable {
                "the user was disabled by another upload while this file was applied, and this row held no licence to enable them; upload the row again"
            } else {
                "the user was deleted by another upload while this file was applied, and this row held no licence to create them again; upload the row again"
            },
        ),
        Write::ContactOf(org) => Outcome {
            column: Some("Email".into()),
            ..Outcome::failure(
                row,
                Some(action),
                format!(
                    "this email is the contact email of organization \"{}\"; a user cannot have an organization's email",
                    crate::wording::quoted(org)
                ),
            )
        },
    }
}

/// After a chunk of `phase` is recorded: if the phase is complete, release the next non-empty
/// phase, or write the done marker. Safe to run any number of times.
pub async fn advance(svc: &Services, job: &Job, phase: usize) -> Result<()> {
    let job_id = job.id.as_str();
    let Some(plan) = job.phase_chunks.filter(|_| !job.state.is_final()) else { return Ok(()) };
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
            outcomes_within(svc, job_id, &plan, OUTCOMES_WAIT).await?;
            let body = serde_json::json!({ "job": job_id, "tenant": job.tenant }).to_string().into_bytes();
            if svc.store.put_if_absent(&keys::done(job_id), body, "application/json").await? {
                info!(job = %job_id, "all chunks applied; finalize triggered");
            }
        }
    }
    Ok(())
}

/// How long the chunk that completes a job waits for other chunks' outcomes still being put.
const OUTCOMES_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Finalize reads every chunk's outcomes, and a chunk puts them while its count is written: the
/// last chunk may be counted before another's PUT has landed. Wait up to `wait` for them (a PUT
/// in flight lands within its own timeout); if one is still missing, fail retryably: its chunk's
/// retry applies it again and puts them, and its `advance` then writes the done marker.
async fn outcomes_within(svc: &Services, job_id: &str, plan: &[u32; PHASES], wait: std::time::Duration) -> Result<()> {
    let start = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(25);
    loop {
        let listed: std::collections::HashSet<String> = svc.store.list(&keys::outcomes_prefix(job_id)).await?.into_iter().collect();
        let missing = (0..PHASES)
            .flat_map(|p| (0..plan[p]).map(move |s| (p, s)))
            .filter(|&(p, s)| !listed.contains(&keys::chunk_outcomes(job_id, p, s)))
            .count();
        if missing == 0 {
            return Ok(());
        }
        if start.elapsed() >= wait {
            return Err(Error::Transient {
                service: "s3",
                operation: "ListObjectsV2",
                message: format!("{missing} recorded chunk(s) of job {job_id} have no outcomes yet"),
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UserStatus::{Active, Disabled};
    use crate::testkit::Kit;
    use crate::wire::parse_jsonl;

    fn rows(outcomes: &[(String, String)]) -> Vec<(&str, &str)> {
        outcomes.iter().map(|(s, m)| (s.as_str(), m.as_str())).collect()
    }

    /// A prediction changes nothing: a validate run and the preview of a held file deleting
    /// users who hold an ExternalId leave their ids claimed (the real delete frees them).
    #[tokio::test]
    async fn predicting_deletes_leaves_the_users_external_ids_claimed() {
        let mut kit = Kit::new(|t| t.holds.remove_percent = 10).await;
        let file = |action: &str| {
            let mut body = "Action,ExternalId,Email\n".to_string();
            for i in 0..20 {
                body += &format!("{action},E{i},p{i}@acme.example.com\n");
            }
            body
        };
        let job = kit.run("seed.csv", file("Create")).await;
        assert_eq!(kit.summary(&job).await.counts.success, 20);
        let (dir, ids): (_, Vec<String>) = (kit.svc.directory.clone(), (0..20).map(|i| format!("E{i}")).collect());
        let held = || async { dir.external_ids("acme", &ids, Consistency::Strong).await.unwrap().len() };
        assert_eq!(held().await, 20);
        let job = kit.run("validate/check.csv", file("Delete")).await;
        assert_eq!(kit.summary(&job).await.counts.success, 20, "every delete predicted");
        // Its email's By action says what would happen, not that it happened.
        let (_, _, raw) = kit.mem.mailer.sent().last().unwrap().clone();
        let text = mail_parser::MessageParser::default().parse(&raw).unwrap().body_text(0).unwrap().to_string();
        assert!(text.contains("Delete       20 would succeed, 0 would fail, 0 skipped") && !text.contains("20 succeeded"), "{text}");
        assert_eq!(held().await, 20, "a validate run freed ids");
        let job = kit.run("purge.csv", file("Delete")).await;
        assert_eq!(job.state, crate::model::JobState::Held, "20 of 20 users: past the remove threshold");
        assert_eq!(held().await, 20, "the preview of a held file freed ids");
    }

    /// Every action against the state it meets, and the words its outcome uses: the fast tier's
    /// version of what the end-to-end tests prove on the stack.
    #[tokio::test]
    async fn every_action_writes_and_words_its_outcome() {
        let mut kit = Kit::new(|_| {}).await;
        for user in ["old@acme.example.com", "upd@acme.example.com", "dis@acme.example.com"] {
            kit.mem.directory.seed_user("acme", user, Active);
        }
        kit.mem.directory.seed_user("acme", "off@acme.example.com", Disabled);
        let job = kit
            .run(
                "actions.csv",
                "Action,Email,First Name\n\
                 Create,new@acme.example.com,Ann\n\
                 Create,old@acme.example.com,Ann\n\
                 Update,ghost@acme.example.com,Ann\n\
                 Update,upd@acme.example.com,Bob\n\
                 Upsert,up@acme.example.com,Cy\n\
                 Disable,dis@acme.example.com,\n\
                 Disable,old2@acme.example.com,\n\
                 Enable,off@acme.example.com,\n\
                 Delete,new2@acme.example.com,\n",
            )
            .await;
        let out = kit.outcomes(&job).await;
        assert_eq!(
            rows(&out),
            vec![
                ("Created", "user created"),
                ("Failure", "user already exists; use Update or Upsert to change it"),
                ("Failure", "user not found; use Create or Upsert to add it"),
                ("Updated", "user updated"),
                ("Created", "user created"),
                ("Disabled", "user disabled"),
                ("Failure", "user not found; use Create or Upsert to add it"),
                ("Enabled", "user enabled"),
                ("Failure", "user not found; use Create or Upsert to add it"),
            ]
        );
        let dir = &kit.svc.directory;
        assert_eq!(dir.user("acme", "upd@acme.example.com").await.unwrap().unwrap().fields.first_name.as_deref(), Some("Bob"));
        assert_eq!(dir.user("acme", "dis@acme.example.com").await.unwrap().unwrap().status, Disabled);
        assert_eq!(dir.user("acme", "off@acme.example.com").await.unwrap().unwrap().status, Active);
        assert_eq!(dir.user("acme", "up@acme.example.com").await.unwrap().unwrap().fields.first_name.as_deref(), Some("Cy"));
    }

    /// Organizations' deletions run after the file's user rows and count users once per chunk, as
    /// they stand then: a file moving an organization's last users out may delete it, and one
    /// still holding users (stored under another case of its name) is refused with their number.
    #[tokio::test]
    async fn a_file_emptying_an_organization_may_delete_it_and_one_still_used_is_refused() {
        let mut kit = Kit::new(|_| {}).await;
        kit.run(
            "seed.csv",
            "Type,Action,Email,OrgName\n\
             Org,Create,,North\n\
             Org,Create,,South\n\
             Org,Create,,East\n\
             User,Create,a@acme.example.com,north\n\
             User,Create,b@acme.example.com,North\n\
             User,Create,c@acme.example.com,SOUTH\n\
             User,Create,d@acme.example.com,South\n",
        )
        .await;
        let job = kit
            .run(
                "restructure.csv",
                "Type,Action,Email,OrgName\n\
                 Org,Delete,,North\n\
                 Org,Delete,,South\n\
                 Org,Delete,,East\n\
                 User,Update,a@acme.example.com,East\n\
                 User,Update,b@acme.example.com,East\n",
            )
            .await;
        assert_eq!(
            rows(&kit.outcomes(&job).await),
            vec![
                ("Deleted", "organization \"North\" deleted"),
                ("Failure", "organization \"South\" still has 2 users; move or delete them first"),
                ("Failure", "organization \"East\" still has 2 users; move or delete them first"),
                ("Updated", "user updated"),
                ("Updated", "user updated"),
            ]
        );
        let dir = &kit.svc.directory;
        assert!(!dir.org_exists("acme", "North").await.unwrap());
        assert!(dir.org_exists("acme", "South").await.unwrap() && dir.org_exists("acme", "East").await.unwrap());
    }

    /// The other actions: Expire revokes products, Invite re-invites a user who has not
    /// activated, organizations are created and (once empty) deleted, and a replace file disables
    /// the active users it does not name, with their targeting removed.
    #[tokio::test]
    async fn expire_invite_organizations_and_replace_write_and_word_their_outcomes() {
        let mut kit = Kit::new(|t| t.products = vec!["lms".into(), "video".into()]).await;
        kit.run(
            "seed.csv",
            "Type,Action,Email,OrgName,Products,Group\n\
             Org,Create,,North,,\n\
             User,Create,a@acme.example.com,,lms;video,Team\n\
             User,Create,b@acme.example.com,,,Team\n",
        )
        .await;
        let job = kit
            .run(
                "more.csv",
                "Type,Action,Email,OrgName,Products\n\
                 User,Expire,a@acme.example.com,,video\n\
                 User,Invite,b@acme.example.com,,\n\
                 Org,Delete,,North,\n\
                 Org,Delete,,South,\n",
            )
            .await;
        let out = kit.outcomes(&job).await;
        assert_eq!(
            rows(&out),
            vec![
                ("Updated", "user stripped of the listed products"),
                ("Success", "user invited again; activation email will be sent shortly"),
                ("Deleted", "organization \"North\" deleted"),
                ("Failure", "organization \"South\" not found; use Create or Upsert to add it"),
            ]
        );
        let dir = kit.svc.directory.clone();
        assert_eq!(dir.user("acme", "a@acme.example.com").await.unwrap().unwrap().fields.products, vec!["lms".to_string()]);
        assert!(!dir.org_exists("acme", "North").await.unwrap());

        let replace = kit.upload("replace/all.csv", "Email\na@acme.example.com\n");
        let mut tenant = dir.tenant("acme").await.unwrap().unwrap();
        tenant.holds.remove_percent = 60;
        dir.put_tenant(&tenant).await.unwrap();
        kit.deliver(&replace).await;
        kit.settle().await;
        let b = dir.user("acme", "b@acme.example.com").await.unwrap().unwrap();
        assert_eq!(b.status, Disabled, "not in the replace file");
        assert!(b.fields.groups.is_empty(), "its targeting removed");
        assert_eq!(dir.user("acme", "a@acme.example.com").await.unwrap().unwrap().status, Active);
    }

    /// A chunk delivered again after it was applied changes nothing and reports what it did the
    /// first time: "created", not "already exists".
    #[tokio::test]
    async fn a_chunk_delivered_twice_reports_its_first_outcomes() {
        let mut kit = Kit::new(|t| t.chunk_size = Some(10)).await;
        let obj = kit.upload("twice.csv", "Email\na@acme.example.com\nb@acme.example.com\n");
        kit.deliver(&obj).await;
        let chunks = kit.pending_chunks().await;
        assert_eq!(chunks.len(), 1);
        let job_id = crate::ingest::job_id(&obj);
        // The rows are written, then the invocation "crashes" before recording the chunk: the
        // retry finds its own stamps.
        let job = kit.svc.jobs.get(&job_id).await.unwrap().unwrap();
        let tenant = kit.svc.directory.tenant("acme").await.unwrap().unwrap();
        let ops: Vec<RowOp> = parse_jsonl("chunk", &kit.svc.store.get(&chunks[0].key).await.unwrap().unwrap()).unwrap();
        let first = apply_ops(&kit.svc, &job, &tenant, ops.clone(), "claim").await.unwrap();
        let again = apply_ops(&kit.svc, &job, &tenant, ops, "claim").await.unwrap();
        assert_eq!(first, again);
        assert!(again.iter().all(|o| o.status == Status::Success && o.message == "user created"), "{again:?}");
        kit.deliver(&chunks[0]).await;
        kit.settle().await;
        let job = kit.svc.jobs.get(&job_id).await.unwrap().unwrap();
        assert_eq!((job.state, job.succeeded), (JobState::Completed, 2));
    }

    /// An organization's contact email and a user's email exclude each other in both orders: a
    /// user row with an organization's email fails naming it, an organization row with a user's
    /// or another organization's email fails naming that; changing or deleting the organization
    /// frees its old email for a user. The contact item is no user: not listed, not counted.
    #[tokio::test]
    async fn an_organization_email_and_a_user_email_exclude_each_other() {
        let mut kit = Kit::new(|_| {}).await;
        kit.run("user.csv", "Email\nann@a.example.com\n").await;
        let file = "Type,OrgName,Email,Phone\n\
                    Org,North,Contact@North.example.com,+1 555 0100\n\
                    Org,South,ann@a.example.com,\n\
                    Org,East,contact@north.example.com,\n\
                    User,,contact@north.example.com,\n";
        let job = kit.run("orgs.csv", file).await;
        let out = kit.outcomes(&job).await;
        assert_eq!(out[0].0, "Created", "{out:?}");
        assert_eq!(out[1].1, "ann@a.example.com is the email of a user of this tenant; an organization cannot have a user's email");
        assert_eq!(out[2].1, "contact@north.example.com is already the contact email of organization \"North\"");
        assert_eq!(out[3].1, "this email is the contact email of organization \"North\"; a user cannot have an organization's email");
        let dir = &kit.svc.directory;
        assert_eq!(dir.org_email("acme", "north").await.unwrap().as_deref(), Some("contact@north.example.com"));
        assert!(!dir.org_exists("acme", "South").await.unwrap() && !dir.org_exists("acme", "East").await.unwrap());
        assert_eq!(dir.list_users("acme").await.unwrap().len(), 1, "the contact is not a user");
        assert!(dir.user("acme", "contact@north.example.com").await.unwrap().is_none());

        // A new email frees the old one; deleting the organization frees the new one.
        let moved = kit.run("move.csv", "Type,OrgName,Email\nOrg,North,desk@north.example.com\n").await;
        assert_eq!(kit.outcomes(&moved).await[0].0, "Updated");
        let user = kit.run("user2.csv", "Email\ncontact@north.example.com\ndesk@north.example.com\n").await;
        let out = kit.outcomes(&user).await;
        assert_eq!(out[0].0, "Created");
        assert!(out[1].1.contains("contact email of organization \"North\""), "{out:?}");
        kit.run("gone.csv", "Type,Action,OrgName\nOrg,Delete,North\n").await;
        let user = kit.run("user3.csv", "Email\ndesk@north.example.com\n").await;
        assert_eq!(kit.outcomes(&user).await[0].0, "Created");
    }

    /// Named pools beside the default one: each grants up to its own limit and names itself when
    /// exhausted; a disable gives back to the user's pool; a row moving an active user takes a
    /// licence in the new pool and gives one back in the old; an unknown pool fails its row naming
    /// the pools; the cell is matched regardless of case.
    #[tokio::test]
    async fn named_pools_are_counted_apart_and_a_move_between_them_counts_in_both() {
        let mut kit = Kit::new(|t| {
            t.licences = Some(1);
            t.licence_pools = [("Staff".to_string(), 2), ("Students".to_string(), 3)].into();
        })
        .await;
        let used = |kit: &Kit, pool: Option<&'static str>| {
            let dir = kit.svc.directory.clone();
            async move { dir.licences_used("acme", pool).await.unwrap() }
        };
        let mut file = String::from("Email,LicencePool\n");
        for i in 0..3 {
            file.push_str(&format!("s{i}@a.example.com,Staff\n"));
        }
        for i in 0..4 {
            file.push_str(&format!("p{i}@a.example.com,students\n"));
        }
        file.push_str("d0@a.example.com,\nd1@a.example.com,\nx@a.example.com,Teachers\n");
        let job = kit.run("pools.csv", &file).await;
        let out = kit.outcomes(&job).await;
        let msgs: Vec<&str> = out.iter().map(|(_, m)| m.as_str()).collect();
        assert_eq!(msgs.iter().filter(|m| **m == "no licence available in pool \"Staff\" (2 exhausted)").count(), 1, "{msgs:?}");
        assert_eq!(msgs.iter().filter(|m| **m == "no licence available in pool \"Students\" (3 exhausted)").count(), 1, "{msgs:?}");
        assert_eq!(msgs.iter().filter(|m| **m == "no licence available (pool of 1 exhausted)").count(), 1, "{msgs:?}");
        assert!(msgs[9].contains("unknown licence pool \"Teachers\"; this tenant's pools are Staff, Students"), "{msgs:?}");
        assert_eq!((used(&kit, Some("Staff")).await, used(&kit, Some("Students")).await, used(&kit, None).await), (2, 3, 1));
        let staff: Vec<String> =
            kit.svc.directory.list_users("acme").await.unwrap().into_iter().map(|(e, _)| e).filter(|e| e.starts_with('s')).collect();
        let stored = kit.svc.directory.user("acme", &staff[0]).await.unwrap().unwrap();
        assert_eq!(stored.fields.licence_pool.as_deref(), Some("Staff"));

        // A disable gives back to the user's own pool.
        kit.run("off.csv", &format!("Action,Email\nDisable,{}\n", staff[0])).await;
        assert_eq!((used(&kit, Some("Staff")).await, used(&kit, Some("Students")).await), (1, 3));
        // A student moved to Staff: Staff takes one, Students gets one back.
        let student = kit.svc.directory.list_users("acme").await.unwrap().into_iter().map(|(e, _)| e).find(|e| e.starts_with('p')).unwrap();
        let moved = kit.run("move.csv", &format!("Email,LicencePool\n{student},Staff\n")).await;
        assert_eq!(kit.outcomes(&moved).await[0].0, "Updated");
        assert!(kit.changes(&moved).await[0].contains("LicencePool: \"Students\" -> \"Staff\""), "{:?}", kit.changes(&moved).await);
        assert_eq!((used(&kit, Some("Staff")).await, used(&kit, Some("Students")).await), (2, 2));
        // Staff is full: the next move is refused and changes nothing.
        let other = kit
            .svc
            .directory
            .list_users("acme")
            .await
            .unwrap()
            .into_iter()
            .map(|(e, _)| e)
            .find(|e| e.starts_with('p') && *e != student)
            .unwrap();
        let refused = kit.run("move2.csv", &format!("Email,LicencePool\n{other},Staff\n")).await;
        assert_eq!(kit.outcomes(&refused).await[0].1, "no licence available in pool \"Staff\" (2 exhausted)");
        assert_eq!(kit.svc.directory.user("acme", &other).await.unwrap().unwrap().fields.licence_pool.as_deref(), Some("Students"));
        assert_eq!((used(&kit, Some("Staff")).await, used(&kit, Some("Students")).await), (2, 2));
        // The counts equal the active users of each pool.
        let recount = recount_licences(&kit.svc, &kit.svc.directory.tenant("acme").await.unwrap().unwrap()).await.unwrap();
        assert_eq!(recount, [(None, 1, 1), (Some("Staff".to_string()), 2, 2), (Some("Students".to_string()), 2, 2)]);
    }

    /// A pool of 3: of 5 creates 3 succeed and 2 are refused; disabling one gives one back, and
    /// disabling it again gives nothing; the pool always equals the active users.
    #[tokio::test]
    async fn the_pool_grants_up_to_its_limit_and_takes_back_once() {
        let mut kit = Kit::new(|t| t.licences = Some(3)).await;
        let job =
            kit.run("five.csv", "Email\nu1@a.example.com\nu2@a.example.com\nu3@a.example.com\nu4@a.example.com\nu5@a.example.com\n").await;
        let out = kit.outcomes(&job).await;
        assert_eq!(out.iter().filter(|(s, _)| s == "Created").count(), 3);
        assert_eq!(out.iter().filter(|(_, m)| m == "no licence available (pool of 3 exhausted)").count(), 2, "{out:?}");
        assert_eq!(kit.svc.directory.licences_used("acme", None).await.unwrap(), 3);
        kit.run("off.csv", "Action,Email\nDisable,u1@a.example.com\n").await;
        kit.run("off-again.csv", "Action,Email\nDisable,u1@a.example.com\n").await;
        assert_eq!(kit.svc.directory.licences_used("acme", None).await.unwrap(), 2, "one give-back for two disables");
        let job = kit.run("more.csv", "Action,Email\nCreate,u6@a.example.com\nCreate,u7@a.example.com\n").await;
        assert_eq!((job.succeeded, job.failed), (1, 1));
        assert_eq!(kit.svc.directory.licences_used("acme", None).await.unwrap(), 3);
    }

    /// The same roster uploaded again writes nothing: every row reports `unchanged` and no
    /// conditional write is made; a row with one changed value is written, and counted apart.
    /// A user gets an id when created and keeps it: shown in the UserId column by every later
    /// upload (updated or unchanged), the same when the create is retried; a user deleted and
    /// created again is a new account with a new id.
    #[tokio::test]
    async fn a_user_keeps_the_id_it_was_created_with() {
        let mut kit = Kit::new(|_| {}).await;
        let first = kit.run("new.csv", "Email,Department\na@acme.example.com,Sales\nb@acme.example.com,Sales\n").await;
        let ids = kit.user_ids(&first).await;
        assert!(ids.iter().all(|id| uuid::Uuid::parse_str(id).is_ok()) && ids[0] != ids[1], "{ids:?}");
        let stored = kit.svc.directory.user("acme", "a@acme.example.com").await.unwrap().unwrap();
        assert_eq!(stored.user_id.as_deref(), Some(ids[0].as_str()));
        let listed = kit.summary(&first).await.created_users;
        assert_eq!(listed.iter().map(|c| (c.row, c.user_id.as_str())).collect::<Vec<_>>(), [(2, ids[0].as_str()), (3, ids[1].as_str())]);
        let changed = kit.run("changed.csv", "Email,Department\na@acme.example.com,Support\nb@acme.example.com,Sales\n").await;
        assert_eq!(kit.outcomes(&changed).await.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(), ["Updated", "Unchanged"]);
        assert_eq!(kit.user_ids(&changed).await, ids, "updated and unchanged rows show the same ids");
        assert!(kit.summary(&changed).await.created_users.is_empty(), "summary.json lists only the users a job created");
        kit.run("gone.csv", "Action,Email\nDelete,a@acme.example.com\n").await;
        let again = kit.run("again.csv", "Email\na@acme.example.com\n").await;
        let new_id = &kit.user_ids(&again).await[0];
        assert!(!new_id.is_empty() && *new_id != ids[0], "a new account, a new id");
        let failed = kit.run("bad.csv", "Action,Email\nCreate,b@acme.example.com\n").await;
        // A Create row reads nothing (a file of creates costs no read): its failure names no id.
        assert_eq!(kit.user_ids(&failed).await, [String::new()]);
    }

    /// A disabled user put back in a file (a replace file that disabled them, fixed) stays
    /// disabled, as files never enable anyone unasked: the row said `unchanged` and nothing
    /// more. It says so, and how to enable them.
    #[tokio::test]
    async fn an_upsert_of_a_disabled_user_says_they_stay_disabled_and_how_to_enable_them() {
        let mut kit = Kit::new(|_| {}).await;
        kit.run("a.csv", "Email,Department\nann@acme.example.com,Sales\nbob@acme.example.com,Ops\n").await;
        kit.run("off.csv", "Email,Action\nann@acme.example.com,Disable\n").await;
        let job = kit
            .run("again.csv", "Email,Department\nann@acme.example.com,Sales\nbob@acme.example.com,Ops\nann2@acme.example.com,Ops\n")
            .await;
        let out = kit.outcomes(&job).await;
        assert!(out[0].1.ends_with("; the user is disabled and stays so: to enable them, upload a row with Action Enable into incoming/acme/ (replace/ takes no Enable)"), "{out:?}");
        assert!(!out[1].1.contains("disabled"), "{out:?}");
        let job = kit.run("moved.csv", "Email,Department\nann@acme.example.com,Ops\n").await;
        let out = kit.outcomes(&job).await;
        assert_eq!(out[0].0, "Updated");
        assert!(out[0].1.contains("the user is disabled and stays so"), "{out:?}");
    }

    /// Groups in another order are the same groups: no write, `Unchanged`.
    #[tokio::test]
    async fn groups_in_another_order_are_unchanged() {
        let mut kit = Kit::new(|_| {}).await;
        kit.run("a.csv", "Email,Group\nann@acme.example.com,a;b\n").await;
        let job = kit.run("b.csv", "Email,Group\nann@acme.example.com,b; a\n").await;
        assert_eq!(kit.outcomes(&job).await[0].0, "Unchanged");
        let job = kit.run("c.csv", "Email,Group\nann@acme.example.com,b;c\n").await;
        assert_eq!(kit.changes(&job).await[0], "Groups: +c -a");
    }

    #[tokio::test]
    async fn a_roster_uploaded_again_writes_nothing_and_says_unchanged() {
        let mut kit = Kit::new(|t| t.licences = Some(100)).await;
        let roster = "Email,First Name,Department,Products\n\
                      a@acme.example.com,Ann,Sales,\n\
                      b@acme.example.com,Bob,Sales,\n\
                      c@acme.example.com,Cy,Support,\n";
        kit.run("nightly.csv", roster).await;
        let directory = kit.mem.directory.clone();
        let writes = || directory.writes.load(std::sync::atomic::Ordering::Relaxed);
        let before = writes();
        let again = kit.run("nightly-2.csv", roster).await;
        assert_eq!(writes(), before, "no directory write for unchanged rows");
        assert!(kit.outcomes(&again).await.iter().all(|(s, m)| s == "Unchanged" && m == crate::model::UNCHANGED));
        let summary = kit.summary(&again).await;
        assert_eq!((summary.counts.success, summary.counts.unchanged), (3, 3));
        let mail = String::from_utf8_lossy(&kit.mem.mailer.sent().last().unwrap().2).to_string();
        assert!(mail.contains("3 succeeded (3 unchanged)"), "the subject counts them apart");

        let changed = roster.replace("Cy,Support", "Cy,Sales");
        let third = kit.run("nightly-3.csv", &changed).await;
        assert_eq!(writes(), before + 1, "one write, for the one changed row");
        let out = kit.outcomes(&third).await;
        assert_eq!(out[2], ("Updated".to_string(), "user updated".to_string()));
        assert_eq!(kit.changes(&third).await[2], "Department: \"Support\" -> \"Sales\"");
        assert_eq!(kit.summary(&third).await.counts.unchanged, 2);
        assert_eq!(kit.svc.directory.licences_used("acme", None).await.unwrap(), 3, "unchanged rows take no licence");
    }

    /// A row that changes nothing is decided without I/O, and still answers for what it names:
    /// an organization or a person gone since is refused as for any row, an invite asked of an
    /// existing user says why none is sent, and whatever it names that exists is looked up once.
    #[tokio::test]
    async fn an_unchanged_row_is_still_refused_for_an_organization_or_person_gone_since() {
        let mut kit = Kit::new(|_| {}).await;
        kit.run(
            "seed.csv",
            "Type,Email,OrgName,Supervisor,FirstName\n\
             Org,,North,,\n\
             User,boss@acme.example.com,North,,Boss\n\
             User,a@acme.example.com,North,boss@acme.example.com,Ann\n\
             User,b@acme.example.com,North,,Bob\n\
             User,c@acme.example.com,,boss@acme.example.com,Cy\n\
             User,d@acme.example.com,,,Di\n",
        )
        .await;
        let dir = kit.mem.directory.clone();
        // Another system left b in an organization and c under a person that do not exist.
        let old = "2000-01-01T00:00:00.000Z#0";
        dir.overwrite("acme", "b@acme.example.com", "other#1", old, |u| u.fields.org = Some("Gone".into()));
        dir.overwrite("acme", "c@acme.example.com", "other#2", old, |u| {
            u.fields.associations.insert("supervisor".into(), "ghost@acme.example.com".into());
        });
        let writes = || dir.writes.load(std::sync::atomic::Ordering::Relaxed);
        let before = writes();
        let job = kit
            .run(
                "again.csv",
                "Email,OrgName,Supervisor,InviteUser,FirstName\n\
                 boss@acme.example.com,North,,,Boss\n\
                 a@acme.example.com,North,boss@acme.example.com,,Ann\n\
                 b@acme.example.com,Gone,,,Bob\n\
                 c@acme.example.com,,ghost@acme.example.com,,Cy\n\
                 d@acme.example.com,,,yes,Di\n",
            )
            .await;
        assert_eq!(writes(), before, "nothing written");
        let out = kit.outcomes(&job).await;
        let unchanged = crate::model::UNCHANGED;
        assert_eq!(
            rows(&out),
            vec![
                ("Unchanged", unchanged),
                ("Unchanged", unchanged),
                ("Failure", "organization \"Gone\" does not exist; create it first or add a Type=Org row for it to this file"),
                ("Failure", "supervisor ghost@acme.example.com does not exist; add them to this file or create them first"),
                ("Unchanged", "unchanged; no activation email: invites go to new users only (use Action Invite to send one again)"),
            ]
        );
        let ids = kit.user_ids(&job).await;
        let stored = dir.user("acme", "a@acme.example.com").await.unwrap().unwrap();
        assert_eq!(ids[1], stored.user_id.unwrap(), "an unchanged row names its user's id");
        assert_eq!(kit.summary(&job).await.counts.unchanged, 3);
    }

    /// Another upload changes two users between apply's read of the chunk and its writes: the
    /// row that the read said changes nothing writes nothing (the other upload's value stays),
    /// and the row that would change its user is refused by its write's condition (the newer
    /// upload wins). Neither change is lost.
    #[tokio::test]
    async fn a_change_made_between_apply_s_read_and_its_write_is_not_lost() {
        let mut kit = Kit::new(|t| t.chunk_size = Some(10)).await;
        kit.run("base.csv", "Email,Department\na@acme.example.com,Sales\nb@acme.example.com,Sales\n").await;
        *kit.mem.directory.after_read.lock().unwrap() = Some(Box::new(|dir: &crate::adapters::memory::MemoryDirectory| {
            for email in ["a@acme.example.com", "b@acme.example.com"] {
                dir.overwrite("acme", email, "newer-job#2", "9999-12-31T00:00:00.000Z#0", |u| u.fields.department = Some("Finance".into()));
            }
        }));
        let job = kit.run("sync.csv", "Email,Department\na@acme.example.com,Sales\nb@acme.example.com,Support\n").await;
        let out = kit.outcomes(&job).await;
        assert_eq!(out[0], ("Unchanged".to_string(), crate::model::UNCHANGED.to_string()), "as read: nothing to write");
        assert_eq!(out[1], ("Skipped".to_string(), "changed by a newer upload (job newer-job)".to_string()));
        let dir = &kit.svc.directory;
        for email in ["a@acme.example.com", "b@acme.example.com"] {
            assert_eq!(dir.user("acme", email).await.unwrap().unwrap().fields.department.as_deref(), Some("Finance"), "{email}");
        }
    }

    /// Rows of an older upload applied after a newer one changed the same user are skipped,
    /// naming the newer job; its other rows apply.
    #[tokio::test]
    async fn an_older_upload_applied_late_is_skipped_where_a_newer_one_wrote() {
        let mut kit = Kit::new(|t| t.chunk_size = Some(10)).await;
        let old = kit.upload("old.csv", "Email,Department\na@acme.example.com,Old\nb@acme.example.com,Old\n");
        kit.deliver(&old).await;
        let waiting = kit.pending_chunks().await;
        let newer = kit.run("new.csv", "Email,Department\na@acme.example.com,New\n").await;
        for chunk in &waiting {
            kit.deliver(chunk).await;
        }
        kit.settle().await;
        let job = kit.svc.jobs.get(&crate::ingest::job_id(&old)).await.unwrap().unwrap();
        let out = kit.outcomes(&job).await;
        assert_eq!(out[0], ("Skipped".to_string(), format!("changed by a newer upload (job {})", newer.id)));
        assert_eq!(out[1], ("Created".to_string(), "user created".to_string()));
        let dir = &kit.svc.directory;
        assert_eq!(dir.user("acme", "a@acme.example.com").await.unwrap().unwrap().fields.department.as_deref(), Some("New"));
        assert_eq!(dir.user("acme", "b@acme.example.com").await.unwrap().unwrap().fields.department.as_deref(), Some("Old"));
    }

    /// A user a newer upload deleted is no taker for an older chunk applied late: its write can
    /// only be refused, so the chunk reserves no licence for it and the pool is right whichever
    /// attempt of a chunk delivered twice settles first (a repeated attempt cannot tell a refused
    /// write from one whose licence a newer upload took away again).
    #[tokio::test]
    async fn an_older_chunk_reserves_no_licence_for_a_user_a_newer_upload_deleted() {
        let mut kit = Kit::new(|t| {
            t.chunk_size = Some(10);
            t.licences = Some(10);
        })
        .await;
        kit.run("base.csv", "Email\na@acme.example.com\n").await;
        let old = kit.upload("old.csv", "Email,Department\na@acme.example.com,Old\nb@acme.example.com,Old\n");
        kit.deliver(&old).await;
        let waiting = kit.pending_chunks().await;
        kit.run("new.csv", "Action,Email\nDelete,a@acme.example.com\n").await;
        for chunk in &waiting {
            kit.deliver(chunk).await;
        }
        kit.settle().await;
        let dir = &kit.svc.directory;
        assert!(dir.user("acme", "a@acme.example.com").await.unwrap().is_none());
        assert_eq!(dir.licences_used("acme", None).await.unwrap(), 1, "b only");
        let (job, phase, seq) = keys::parse_chunk(&waiting[0].key).unwrap();
        let claim = format!("{job}#{phase}#{seq}");
        let recorded = dir.reserve_licences("acme", None, 10, &claim, LicenceClaim::default()).await.unwrap();
        assert!(recorded.repeated);
        assert_eq!((recorded.granted, recorded.takers), (1, vec![3]), "b (row 3) alone takes a licence");
    }

    /// The outcomes' PUT runs beside the count. A chunk recorded whose PUT failed is applied
    /// again by its retry, for its outcomes alone; meanwhile the chunk that completes the job
    /// waits for them before it writes the done marker, so finalize reads every row's outcome.
    #[tokio::test]
    async fn a_chunk_recorded_without_its_outcomes_is_applied_again_before_the_job_is_finalized() {
        let mut kit = Kit::new(|_| {}).await;
        let rows: String = (0..8).map(|i| format!("u{i}@acme.example.com,N{i}\n")).collect();
        let obj = kit.upload("two.csv", format!("Email,First Name\n{rows}"));
        kit.deliver(&obj).await;
        let chunks = kit.pending_chunks().await;
        assert_eq!(chunks.len(), 2);
        kit.deliver(&chunks[0]).await;
        let (job, phase, seq) = keys::parse_chunk(&chunks[0].key).unwrap();
        let lost = keys::chunk_outcomes(&job, phase, seq);
        kit.mem.store.remove(&lost);
        let writes = kit.mem.directory.writes.load(std::sync::atomic::Ordering::Relaxed);
        // The last chunk is counted while the first's outcomes are missing; the first's retry
        // arrives a little later.
        let svc = &kit.svc;
        let (last, retry) = tokio::join!(crate::route::dispatch(svc, &chunks[1]), async {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            assert!(svc.store.get(&keys::done(&job)).await.unwrap().is_none(), "no done marker while outcomes are missing");
            crate::route::dispatch(svc, &chunks[0]).await
        });
        last.unwrap();
        retry.unwrap();
        assert!(kit.svc.store.get(&lost).await.unwrap().is_some());
        // Chunk 1 wrote four users; the retry's four writes were refused by their own stamps.
        assert_eq!(kit.mem.directory.writes.load(std::sync::atomic::Ordering::Relaxed) - writes, 4 + 4);
        kit.settle().await;
        let job = kit.svc.jobs.get(&job).await.unwrap().unwrap();
        assert_eq!((job.state, job.succeeded, job.failed), (JobState::Completed, 8, 0));
        assert!(kit.outcomes(&job).await.iter().all(|(s, m)| s == "Created" && m == "user created"));
        assert_eq!(kit.mem.directory.list_users("acme").await.unwrap().len(), 8);
    }

    #[tokio::test]
    async fn outcomes_still_missing_after_the_wait_fail_the_invocation_retryably() {
        let kit = Kit::new(|_| {}).await;
        let mut plan = [0; PHASES];
        plan[1] = 2;
        kit.svc.store.put(&keys::chunk_outcomes("j", 1, 0), b"{}\n".to_vec(), "application/x-ndjson").await.unwrap();
        let err = outcomes_within(&kit.svc, "j", &plan, std::time::Duration::ZERO).await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains("1 recorded chunk(s) of job j have no outcomes yet"), "{err}");
        kit.svc.store.put(&keys::chunk_outcomes("j", 1, 1), b"{}\n".to_vec(), "application/x-ndjson").await.unwrap();
        outcomes_within(&kit.svc, "j", &plan, std::time::Duration::ZERO).await.unwrap();
    }

    fn w(write: Write, licence: Licence) -> Written {
        Written { write, licence }
    }

    #[test]
    fn the_settle_gives_back_what_was_granted_and_not_taken_plus_what_writes_freed() {
        let r = Reservation { granted: 3, takers: vec![1, 2, 3], refused: vec![4], repeated: false };
        let rows = [
            (1, w(Write::Created, Licence::Took)),
            // An upsert that found the user created meanwhile took nothing.
            (2, w(Write::Updated, Licence::Unchanged)),
            (3, w(Write::AlreadyExists, Licence::Unchanged)),
            (4, w(Write::NotFound, Licence::Unchanged)),
            (5, w(Write::Updated, Licence::Freed)),
            // A disable that found the user disabled already gave nothing back.
            (6, w(Write::Updated, Licence::Unchanged)),
        ];
        assert_eq!(r.returned(rows.iter().map(|(row, w)| (*row, w))), 2 + 1);
    }

    #[test]
    fn a_retried_row_overwritten_by_a_newer_upload_keeps_its_licence_counted() {
        let superseded = w(Write::Superseded("newer".into()), Licence::Unchanged);
        let first = Reservation { granted: 1, takers: vec![1], refused: vec![], repeated: false };
        assert_eq!(first.returned([(1, &superseded)].into_iter()), 1, "first attempt: it wrote nothing, the licence comes back");
        let retry = Reservation { repeated: true, ..first };
        assert_eq!(retry.returned([(1, &superseded)].into_iter()), 0, "retry: its first attempt may have taken it");
    }
}
