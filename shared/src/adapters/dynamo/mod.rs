//! DynamoDB adapter: directory table (tenants, users, organizations) and jobs table.
//!
//! The directory table is keyed `pk` + `sk` and has no index, so a created user costs one write
//! unit (the item, under 1 KB) and nothing else. A user is `U#<tenant>#<shard>` / `<email>`: a
//! tenant's users spread over 16 partitions (FNV-1a of the email), listed by querying the 16.
//! Everything else is one item under its own `pk` with `sk = "-"`, except tenants, which share
//! the partition `T` (sorted by id) so they are listed with one query.

mod codec;
mod directory;
mod ext;
mod identity;
mod invites;
mod jobs;
mod licences;
mod retry;
mod schema;

pub use codec::UserItem;
pub use directory::DynamoDirectory;
pub use ext::Item;
pub use invites::DynamoInvites;
pub use jobs::DynamoJobs;
pub use retry::configure;
pub use schema::ensure_tables;

pub const USER_SHARDS: u32 = 16;
/// The jobs table's by-tenant index (and the invites' due index).
pub const GSI: &str = "gsi1";
/// What `gsi1` of the jobs table projects: every attribute a job listing and the due invites
/// read, and not the per-chunk counters (`done0..3`): counting a chunk then writes the job item
/// only, not its index entry (1 write unit saved per chunk, 2 inside the transaction).
pub const JOBS_GSI_ATTRIBUTES: &[&str] = &[
    "id",
    "tenant",
    "source_key",
    "file_name",
    "mode",
    "state",
    "received_at",
    "upload_order",
    "chunks0",
    "chunks1",
    "chunks2",
    "chunks3",
    "total_rows",
    "succeeded",
    "failed",
    "skipped",
    "message",
    "completed_at",
    "email",
    "first_name",
    "due_at",
    "job",
    "status",
    "attempts",
    "sent_at",
    "delivery_at",
    "last_error",
];
/// Jobs table: open (not yet COMPLETED or REJECTED) jobs, oldest first; sparse.
pub const OPEN_JOBS: &str = "gsi2";
/// Chunk markers expire after 30 days; the job item stays.
pub(super) const MARKER_TTL_SECS: i64 = 30 * 24 * 3600;

/// A directory item's key: (`pk`, `sk`).
pub type Key = (String, String);

/// The `sk` of items alone in their partition.
pub const SOLE: &str = "-";

pub fn user_key(tenant: &str, email: &str) -> Key {
    (format!("U#{tenant}#{}", user_shard(email)), email.to_string())
}
pub fn user_partition(tenant: &str, shard: u32) -> String {
    format!("U#{tenant}#{shard}")
}
pub fn org_key(tenant: &str, name: &str) -> Key {
    (format!("O#{tenant}#{}", name.to_lowercase()), SOLE.to_string())
}
pub fn tenant_key(tenant: &str) -> Key {
    ("T".to_string(), tenant.to_string())
}
/// `read` of every one of a tenant's user shards, all at once: a pass over the tenant's users
/// takes as long as its largest shard, not the sum of the 16 (each a paginated query).
pub(super) async fn all_shards<T, F: std::future::Future<Output = crate::error::Result<T>>>(
    read: impl Fn(u32) -> F,
) -> crate::error::Result<Vec<T>> {
    futures::future::try_join_all((0..USER_SHARDS).map(read)).await
}

/// The shard of a user's email: FNV-1a, stable across builds and platforms (std's hasher is not).
pub fn user_shard(email: &str) -> u32 {
    let h = email.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    (h % USER_SHARDS as u64) as u32
}
