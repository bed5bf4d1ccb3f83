//! Capability traits the domain depends on. SDK adapters in `adapters/` implement them; unit
//! tests use in-memory fakes behind the same traits.

use crate::error::Result;
use crate::model::{
    Before, Change, EmailKind, Invite, InviteRecord, InviteStatus, Job, JobState, Lease, Restore, Target, Tenant, User, UserStatus,
};
use crate::rules::{Attempt, Attempted};
use async_trait::async_trait;
use std::time::Duration;

/// An object's body in pieces, in order (`ObjectStore::get_pieces`), and its length when the
/// store said it: a reader sizes what it builds from the body once instead of growing it.
pub struct Pieces {
    pub len: Option<u64>,
    pub stream: futures::stream::BoxStream<'static, Result<Vec<u8>>>,
}

#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// `None` when the object does not exist.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// The object's bytes in pieces as they arrive, `None` when it does not exist: a reader can
    /// act on the first lines of a chunk while the rest is still on the wire.
    async fn get_pieces(&self, key: &str) -> Result<Option<Pieces>>;
    async fn size(&self, key: &str) -> Result<Option<u64>>;
    async fn put(&self, key: &str, body: Vec<u8>, content_type: &str) -> Result<()>;
    /// Stream an object into a local file, never holding it in memory; its size, or `None` when
    /// the object (or that version of it) does not exist. `version`: the version an event named,
    /// so what is read is the upload the event is about, not a newer one under the same key.
    async fn download(&self, key: &str, version: Option<&str>, to: &std::path::Path) -> Result<Option<u64>>;
    /// Upload a local file, streamed from disk.
    async fn put_file(&self, key: &str, from: &std::path::Path, content_type: &str) -> Result<()>;
    /// Conditional create (`If-None-Match: *`): `true` when this call created it, `false` when it existed.
    async fn put_if_absent(&self, key: &str, body: Vec<u8>, content_type: &str) -> Result<bool>;
    async fn copy(&self, from: &str, to: &str) -> Result<()>;
    /// Keys under a prefix, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>>;
    async fn presign_get(&self, key: &str, ttl: Duration) -> Result<String>;
}

/// How a conditional directory write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Created,
    Updated,
    Deleted,
    /// The condition failed because the item exists.
    AlreadyExists,
    /// The condition failed because the item does not exist.
    NotFound,
    /// Nothing to write: the user already holds every value of the row (no write made).
    Unchanged,
    /// A later upload (this job) wrote the item: this row's older values are not applied.
    Superseded(String),
    /// The row would take a licence it was not given: the user was active (or present) when the
    /// file was read and changed while it was applied.
    Unlicensed,
    /// The email is the contact email of this organization: no user may have it.
    ContactOf(String),
}

/// How moving a user to a new email ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moved {
    /// Moved (now, or by an earlier attempt of the same row).
    Moved,
    /// No live user has the old email.
    Missing,
    /// The new email belongs to another user.
    Taken,
    /// The new email is this organization's contact email.
    ContactOf(String),
    /// A newer upload wrote the user (its job).
    Superseded(String),
}

/// Claiming an email as an organization's contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContactClaim {
    /// The organization holds it (now, or already).
    Claimed,
    /// A user of the tenant has it.
    User,
    /// Another organization holds it (its name).
    Org(String),
}

/// What a write did to the tenant's licence pool, decided by the write's own condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Licence {
    Unchanged,
    /// A user became active (created, or enabled).
    Took,
    /// An active user was disabled or deleted.
    Freed,
}

/// A directory write's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub write: Write,
    pub licence: Licence,
}

/// How putting an item back ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    /// Put back. `change`: what that did to the item as it was (`Created`: it lives again,
    /// `Deleted`: removed, `Updated`); `licence`: to the pool; `before`: the item it replaced.
    Done { change: Change, licence: Licence, before: Before },
    /// Another job wrote the item after the undone one: left as it is.
    ChangedSince(String),
    /// The item no longer exists at all.
    Gone,
}

/// Identifies the row that performs a write, stored on the item. A retried write that finds its
/// own stamp knows it already succeeded (exactly-once effect under at-least-once delivery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub job: String,
    pub row: u32,
    /// RFC 3339 time of the write.
    pub at: String,
    /// The upload's order (`model::upload_order`): an item a later upload wrote is left alone.
    pub order: String,
}

impl Stamp {
    pub fn token(&self) -> String {
        format!("{}#{}", self.job, self.row)
    }
    /// Whether `token` is this stamp's, without building it (asked of every row of a chunk).
    pub fn is_token(&self, token: &str) -> bool {
        is_row_token(&self.job, self.row, token)
    }
}

/// Whether `token` is the one row `row` of `job` writes (`Stamp::token`), without building it.
pub fn is_row_token(job: &str, row: u32, token: &str) -> bool {
    token.strip_prefix(job).and_then(|t| t.strip_prefix('#')) == Some(itoa::Buffer::new().format(row))
}

/// Users by email, each boxed: a chunk's map holds thousands and a `User` is about 500 bytes.
/// Unboxed, the map of a 2,000-row chunk was one 2 MB table, its memory taken from and given
/// back to the system (pages zeroed anew) on every chunk, and every insert and merge moved the
/// whole user (a profile of a chunk of unchanged rows showed both).
pub type Users = std::collections::HashMap<String, Box<User>>;

/// How a read of users sees the latest writes. What apply decides and writes from reads
/// `Strong`; a prediction (a held file's preview, a validate run) reads `Eventual`: half the
/// read units, and nothing is written from it (an approved plan's writes read again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    Strong,
    Eventual,
}

/// A chunk's users as read before its writes (`Directory::read_users`).
#[derive(Debug, Default, Clone)]
pub struct UsersRead {
    pub live: Users,
    /// Email -> order of the upload whose delete left the tombstone at that key.
    pub deleted: std::collections::HashMap<String, String>,
}

impl UsersRead {
    /// Add what another read of other keys found.
    pub fn merge(&mut self, other: UsersRead) {
        self.live.extend(other.live);
        self.deleted.extend(other.deleted);
    }
}

#[async_trait]
pub trait Directory: Send + Sync {
    async fn tenant(&self, id: &str) -> Result<Option<Tenant>>;
    async fn put_tenant(&self, tenant: &Tenant) -> Result<()>;
    async fn list_tenants(&self) -> Result<Vec<Tenant>>;
    async fn user(&self, tenant: &str, email: &str) -> Result<Option<User>>;
    /// The users of `emails` that exist, read together (batched) and consistently: what apply
    /// decides a chunk's licences and unchanged rows from.
    async fn users(&self, tenant: &str, emails: &[String]) -> Result<Users>;
    /// `users`, and which of `emails` a delete left behind, with that delete's upload order: a
    /// row of an older upload can never write those (orders only grow), so it takes no licence.
    /// `read`: `Strong` for what apply decides, `Eventual` for a prediction (`Consistency`).
    async fn read_users(&self, tenant: &str, emails: &[String], _read: Consistency) -> Result<UsersRead> {
        Ok(UsersRead { live: self.users(tenant, emails).await?, deleted: Default::default() })
    }
    /// One conditional write of the item `target` names, as `rules` decided (the storage-neutral
    /// change: the adapter translates it and holds no rule of its own). The item is stamped with
    /// `stamp` (token, time, upload order).
    async fn write(&self, tenant: &str, target: &Target, attempt: Attempt, stamp: &Stamp) -> Result<Attempted>;
    /// Put back the item `target` names as `restore` says it was, only while it still carries
    /// the undone write's token; stamped with `stamp` so the restore is itself undoable.
    async fn restore(&self, tenant: &str, target: &Target, restore: &Restore, stamp: &Stamp) -> Result<Restored>;
    async fn org_exists(&self, tenant: &str, name: &str) -> Result<bool>;
    /// An organization's contact email as stored (`None`: none, or no such organization).
    async fn org_email(&self, tenant: &str, name: &str) -> Result<Option<String>>;
    /// Hold `email` as organization `org`'s contact, conditionally: on the key a user with that
    /// email would have, so a user's create and an organization's claim exclude each other.
    async fn claim_contact(&self, tenant: &str, email: &str, org: &str) -> Result<ContactClaim>;
    /// Let go of `email` if organization `org` holds it (nothing otherwise).
    async fn release_contact(&self, tenant: &str, email: &str, org: &str) -> Result<()>;
    /// The users `ids` (ExternalIds) belong to: id -> email (ids of nobody are absent).
    async fn external_ids(&self, tenant: &str, ids: &[String], read: Consistency) -> Result<std::collections::HashMap<String, String>>;
    /// Give ExternalId `id` to `email`, conditionally (no other user holds it). `Ok(None)`: it is
    /// `email`'s now (or was already); `Ok(Some(other))`: another user's.
    async fn claim_external_id(&self, tenant: &str, id: &str, email: &str) -> Result<Option<String>>;
    /// The organizations `ids` (organizations' ExternalIds) name: id -> organization name.
    async fn org_ids(&self, tenant: &str, ids: &[String]) -> Result<std::collections::HashMap<String, String>>;
    /// Record that organization id `id` names organization `org` (the latest write wins).
    async fn put_org_id(&self, tenant: &str, id: &str, org: &str) -> Result<()>;
    /// Let go of `id` if `email` holds it.
    async fn release_external_id(&self, tenant: &str, id: &str, email: &str) -> Result<()>;
    /// Move the user `from` to the key `to` in one transaction: the whole item (status, fields,
    /// groups, products, licence, id) under the new email, a tombstone naming `to` where it was,
    /// its ExternalId pointed at `to`. Conditional: `from` a live user not written by a newer
    /// upload, `to` free.
    async fn move_user(&self, tenant: &str, from: &str, to: &str, stamp: &Stamp) -> Result<Moved>;
    /// Where a user moved (the tombstone of a moved email names the new one).
    async fn moved_to(&self, tenant: &str, email: &str) -> Result<Option<String>>;
    /// Point every association (Supervisor, SupervisorManager, Parent, Instructor) naming a
    /// moved email at the new one; returns how many were changed. Reads the tenant's users.
    async fn repoint_associations(&self, tenant: &str, moves: &[(String, String)]) -> Result<u32>;
    /// How many users each of the organizations `names` has (names matched regardless of case and
    /// returned lowercased; one without users is absent), in one pass over the tenant's users: deleting an
    /// organization refuses one that still has users, and a chunk asks once for all its deletions.
    async fn org_user_counts(&self, tenant: &str, names: &[String]) -> Result<std::collections::HashMap<String, u64>>;
    /// Every user of a tenant: (key, status). Replace mode diffs the file against it.
    async fn list_users(&self, tenant: &str) -> Result<Vec<(String, UserStatus)>>;
    /// The tenant's active users, counted up to `at_most` (reading stops there): whether a file
    /// could pass a hold threshold needs no more.
    async fn count_active_users(&self, tenant: &str, at_most: u64) -> Result<u64>;
    /// Reserve licences of a pool of `limit` for one claim (a chunk): up to one per taker. Atomic
    /// across concurrent claims. The decision is recorded with the grant; a repeated claim gets the
    /// recorded decision back, not the one it passed. `pool`: `None` the tenant's default pool,
    /// `Some(name)` a named one; each is counted apart.
    async fn reserve_licences(
        &self,
        tenant: &str,
        pool: Option<&str>,
        limit: u32,
        claim: &str,
        decision: LicenceClaim,
    ) -> Result<LicenceClaim>;
    /// Give `returned` licences back for a claim, once (a repeated settle changes nothing), never
    /// taking the count below zero.
    async fn settle_licences(&self, tenant: &str, pool: Option<&str>, claim: &str, returned: u32) -> Result<()>;
    async fn licences_used(&self, tenant: &str, pool: Option<&str>) -> Result<u32>;
    /// Set the pool's count (the repair `rosterdrop tenant recount-licences` makes from the
    /// tenant's active users).
    async fn set_licences_used(&self, tenant: &str, pool: Option<&str>, used: u32) -> Result<()>;
}

/// A chunk's licence reservation: the rows that asked for a licence (in order) and how many the
/// pool granted (the first `granted` of them hold one). Recorded with the reservation because a
/// retried chunk cannot work it out again: after its first attempt, the users it created exist.
/// Whether a licence was then really taken or given back is decided by each row's write.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LicenceClaim {
    pub takers: Vec<u32>,
    #[serde(default)]
    pub granted: u32,
    /// The claim was recorded by an earlier attempt (a retry, or a duplicate running alongside).
    #[serde(skip)]
    pub repeated: bool,
}

/// What ingest knows once it has planned a job.
/// What recording a chunk found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// An earlier delivery of the chunk recorded it.
    Before,
    /// Counted now. `last: false` guarantees the phase is not complete yet; `true` means it may
    /// be, and the caller reads the job to find out.
    Counted { last: bool },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub phase_chunks: [u32; crate::model::PHASES],
    pub total_rows: u32,
    /// The mode the file is applied in when it is not its folder's (a OneRoster bundle's manifest
    /// decides): stored on the job, so its summary, events and emails say it.
    pub mode: Option<crate::model::Mode>,
}

#[async_trait]
pub trait JobStore: Send + Sync {
    /// Create the job if it is new; returns the stored job either way.
    async fn create_or_get(&self, job: &Job) -> Result<(Job, bool)>;
    async fn get(&self, id: &str) -> Result<Option<Job>>;
    async fn set_plan(&self, id: &str, plan: &Plan) -> Result<()>;
    /// Move from `from` to `to`; `false` if the job was not in `from`.
    async fn transition(&self, id: &str, from: JobState, to: JobState, message: Option<&str>) -> Result<bool>;
    /// Record a chunk as done and count it for its phase, once. Given `of`, the phase's chunk
    /// count, the same write tells whether this count may have completed the phase, so most
    /// chunks need no read of the job afterwards.
    async fn record_chunk(&self, id: &str, phase: usize, seq: u32, of: Option<u32>) -> Result<Recorded>;
    /// The job and whether chunk `seq` of `phase` is recorded, in one consistent read.
    async fn job_for_chunk(&self, id: &str, phase: usize, seq: u32) -> Result<Option<(Job, bool)>>;
    /// Claim the right to send the job's email: `true` for exactly one caller.
    /// Claim sending a job's email of `kind` once; a claim older than `lease_secs` that was never
    /// marked sent is taken over.
    async fn claim_email(&self, id: &str, kind: EmailKind, lease: Lease) -> Result<bool>;
    /// Record that the claimed email went out (a claim without this is taken over once stale).
    async fn mark_email_sent(&self, id: &str, kind: EmailKind) -> Result<()>;
    /// Drop an unsent claim: its send failed, and the retried invocation must find the email free
    /// (it found the claim fresh, skipped the send, and ended the job with no email).
    async fn release_email(&self, id: &str, kind: EmailKind) -> Result<()>;
    async fn email_sent(&self, id: &str, kind: EmailKind) -> Result<bool>;
    /// Record the final state (COMPLETED or FAILED) and the counts; `note`, when given, becomes
    /// the job's message (a result email SES refused for good).
    async fn finish(&self, id: &str, state: JobState, succeeded: u32, failed: u32, skipped: u32, note: Option<&str>) -> Result<()>;
    /// A FAILED job whose admins were told (its failure email sent, or nobody left to tell)
    /// leaves the open jobs. Until then it stays there (`transition` keeps it), so the sweep
    /// sends an email that a failed send left owed (`monitor::finish_unsent_jobs`).
    async fn close(&self, id: &str) -> Result<()>;
    /// The oldest open job: not yet COMPLETED, REJECTED or DISCARDED, or FAILED without its
    /// email: (id, received_at).
    async fn oldest_open(&self) -> Result<Option<(String, String)>>;
    /// Open jobs, oldest first: (id, since): received, or approved after a hold. Held jobs are
    /// not open (they wait for a person, not for the pipeline).
    async fn open_jobs(&self, limit: usize) -> Result<Vec<(String, String)>>;
    /// HELD jobs, oldest first: (id, received_at).
    async fn held_jobs(&self, limit: usize) -> Result<Vec<(String, String)>>;
    /// RECEIVED -> SCHEDULED, to be applied at `at` (RFC 3339). `false`: not RECEIVED.
    async fn schedule(&self, id: &str, at: &str) -> Result<bool>;
    /// SCHEDULED jobs due at `now`, earliest first: (id, run_at).
    async fn scheduled_due(&self, now: &str, limit: usize) -> Result<Vec<(String, String)>>;
    /// SCHEDULED -> APPLYING, exactly once, its rows ordered as an upload made now (`order`): a
    /// scheduled file is applied at its time, after the files dropped before that time.
    async fn start_scheduled(&self, id: &str, order: &str) -> Result<bool>;
    /// Take the tenant's replace lock for job `id`: `None` when this job holds it now (or already
    /// did), `Some(holder)` when another job that is still open holds it. A holder that ended
    /// (completed, rejected, failed) or vanished holds nothing, so the lock needs no release and
    /// a crash cannot leave it stuck.
    async fn acquire_replace(&self, tenant: &str, id: &str) -> Result<Option<String>>;
    /// Most recent jobs of a tenant, newest first.
    async fn recent(&self, tenant: &str, limit: usize) -> Result<Vec<Job>>;
    /// Claim publishing the event of the job entering `state`: `true` for exactly one caller.
    async fn claim_event(&self, id: &str, state: JobState) -> Result<bool>;
    /// Undo a claim whose event could not be published (a retry publishes it).
    async fn release_event(&self, id: &str, state: JobState) -> Result<()>;
}

/// Where job events go: the account's EventBridge bus, for automation to listen to.
#[async_trait]
pub trait EventBus: Send + Sync {
    async fn publish(&self, detail_type: &str, detail: &serde_json::Value) -> Result<()>;
}

#[async_trait]
pub trait Mailer: Send + Sync {
    /// Send a complete MIME message.
    async fn send_raw(&self, from: &str, to: &[String], mime: Vec<u8>) -> Result<()>;
    /// Send one whose delivery is tracked: through the deployment's SES configuration set, with
    /// `tags` (name, value) that come back on its delivery, bounce and complaint events.
    async fn send_tracked(&self, from: &str, to: &[String], mime: Vec<u8>, tags: &[(&str, &str)]) -> Result<()> {
        let _ = tags;
        self.send_raw(from, to, mime).await
    }
}

/// Activation emails waiting to be sent.
#[async_trait]
pub trait Invites: Send + Sync {
    /// Record an invite. A repeat of the same job's invite for the same user changes nothing (a
    /// retried chunk never re-arms an invite already sent); another job's invite replaces it.
    async fn schedule(&self, invite: &Invite) -> Result<()>;
    /// Invites due at `now`, oldest first, at most `limit`.
    async fn due(&self, now: &str, limit: usize) -> Result<Vec<Invite>>;
    /// Claim an invite for sending: `true` for exactly one caller while it is pending (a claim
    /// older than `lease` belongs to a sender that died, and is taken over).
    async fn claim(&self, invite: &Invite, lease: Lease) -> Result<bool>;
    async fn mark_sent(&self, invite: &Invite) -> Result<()>;
    /// A send failed: count the attempt and keep the reason; `retry_at` makes the invite due again
    /// then, `None` marks it failed for good (it leaves the due list).
    async fn record_failure(&self, invite: &Invite, reason: &str, retry_at: Option<&str>) -> Result<()>;
    /// A user's email changed: their pending invite (not being sent) moves to the new address,
    /// in one transaction. `true` when one moved.
    async fn rename(&self, tenant: &str, from: &str, to: &str) -> Result<bool>;
    /// What the recipient's mail server said of a sent invite (`Delivered`, `Bounced`,
    /// `Complained`), with the reason. A delivery never overwrites a bounce or complaint.
    /// `false`: no sent invite to that address.
    async fn record_delivery(&self, tenant: &str, email: &str, status: InviteStatus, reason: Option<&str>, at: &str) -> Result<bool>;
    /// A tenant's invites, pending and sent, by email.
    async fn list(&self, tenant: &str) -> Result<Vec<InviteRecord>>;
}

#[cfg(test)]
mod tests {
    use super::Stamp;
    use proptest::prelude::*;

    proptest! {
        /// `is_token` says exactly what comparing with the built token says.
        #[test]
        fn is_token_is_comparing_with_the_token(job in "[a-z0-9#]{0,6}", row in 0u32..200, other in "[a-z0-9#]{0,6}", n in 0u32..200) {
            let stamp = Stamp { job: job.clone(), row, at: String::new(), order: String::new() };
            for token in [stamp.token(), format!("{other}#{n}"), format!("{job}#0{row}"), format!("{job}{row}"), other.clone()] {
                prop_assert_eq!(stamp.is_token(&token), token == stamp.token(), "{}", token);
            }
        }
    }
}
