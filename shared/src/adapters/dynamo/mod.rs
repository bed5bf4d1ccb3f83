//! DynamoDB adapter: directory table (tenants, users, organizations) and jobs table.
//!
//! Keys are spread so no partition takes a write per row: a user is `U#<tenant>#<email>`, an
//! organization `O#<tenant>#<name>`. The `gsi1` index lists a tenant's users in 16 shards
//! (`T#<tenant>#<n>`) sorted by organization, so counting an organization's users or listing a
//! tenant's users never reads or writes one hot key.

mod codec;
mod directory;
mod ext;
mod invites;
mod jobs;
mod licences;
mod schema;

pub use codec::UserItem;
pub use directory::DynamoDirectory;
pub use ext::Item;
pub use invites::DynamoInvites;
pub use jobs::DynamoJobs;
pub use schema::ensure_tables;

pub const USER_SHARDS: u32 = 16;
pub const GSI: &str = "gsi1";
/// Jobs table: open (not yet COMPLETED or REJECTED) jobs, oldest first; sparse.
pub const OPEN_JOBS: &str = "gsi2";
/// Chunk markers expire after 30 days; the job item stays.
pub(super) const MARKER_TTL_SECS: i64 = 30 * 24 * 3600;

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
