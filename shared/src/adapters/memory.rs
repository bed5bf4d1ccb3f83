//! In-memory implementations of every port, beside the AWS ones: the fast test tier runs the
//! stages on them (`make unit`, no network). They keep the contracts the ports document (the
//! directory evaluates `rules::holds` where DynamoDB evaluates condition expressions), not the
//! costs. Built for tests and behind the `memory` feature.

use crate::error::{Error, Result};
use crate::model::{Before, Change, EmailKind, Image, Invite, Job, JobState, Lease, Restore, Target, Tenant, User, UserFields, UserStatus};
use crate::ports::{
    ContactClaim, Directory, Invites, JobStore, Licence, LicenceClaim, Mailer, Moved, ObjectStore, Plan, Recorded, Restored, Stamp,
    UsersRead,
};
use crate::rules::{self, Attempt, Attempted, Seen};
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The size of the pieces `get_pieces` hands out: odd, so lines and characters straddle them.
const PIECE: usize = 1021;

/// (version id, body)
type Version = (String, Vec<u8>);

/// Objects by key, every version kept (the bucket is versioned).
#[derive(Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, Vec<Version>>>,
}

impl MemoryStore {
    /// Store a new version of `key`; its version id.
    pub fn put_version(&self, key: &str, body: Vec<u8>) -> String {
        let mut objects = lock(&self.objects);
        let versions = objects.entry(key.to_string()).or_default();
        let id = format!("v{}", versions.len() + 1);
        versions.push((id.clone(), body));
        id
    }
    /// Remove every version of `key` (a test's way to lose a write).
    pub fn remove(&self, key: &str) {
        lock(&self.objects).remove(key);
    }
    fn latest(&self, key: &str) -> Option<Vec<u8>> {
        lock(&self.objects).get(key).and_then(|v| v.last()).map(|(_, b)| b.clone())
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.latest(key))
    }
    async fn get_pieces(&self, key: &str) -> Result<Option<crate::ports::Pieces>> {
        // Small pieces, cut anywhere (mid-line, mid-character), as a network delivers them.
        Ok(self.latest(key).map(|body| {
            let pieces: Vec<Result<Vec<u8>>> = body.chunks(PIECE).map(|p| Ok(p.to_vec())).collect();
            crate::ports::Pieces { len: Some(body.len() as u64), stream: Box::pin(futures::stream::iter(pieces)) }
        }))
    }
    async fn size(&self, key: &str) -> Result<Option<u64>> {
        Ok(self.latest(key).map(|b| b.len() as u64))
    }
    async fn put(&self, key: &str, body: Vec<u8>, _content_type: &str) -> Result<()> {
        self.put_version(key, body);
        Ok(())
    }
    async fn download(&self, key: &str, version: Option<&str>, to: &std::path::Path) -> Result<Option<u64>> {
        let body = {
            let objects = lock(&self.objects);
            let Some(versions) = objects.get(key) else { return Ok(None) };
            match version {
                Some(v) => versions.iter().find(|(id, _)| id == v).map(|(_, b)| b.clone()),
                None => versions.last().map(|(_, b)| b.clone()),
            }
        };
        let Some(body) = body else { return Ok(None) };
        std::fs::write(to, &body).map_err(|e| Error::local("download", e))?;
        Ok(Some(body.len() as u64))
    }
    async fn put_file(&self, key: &str, from: &std::path::Path, _content_type: &str) -> Result<()> {
        let body = std::fs::read(from).map_err(|e| Error::local("upload", e))?;
        self.put_version(key, body);
        Ok(())
    }
    async fn put_if_absent(&self, key: &str, body: Vec<u8>, _content_type: &str) -> Result<bool> {
        let mut objects = lock(&self.objects);
        if objects.contains_key(key) {
            return Ok(false);
        }
        objects.insert(key.to_string(), vec![("v1".into(), body)]);
        Ok(true)
    }
    async fn copy(&self, from: &str, to: &str) -> Result<()> {
        let body = self.latest(from).ok_or_else(|| Error::Aws {
            service: "s3",
            operation: "CopyObject",
            message: format!("{from}: no such key"),
        })?;
        self.put_version(to, body);
        Ok(())
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(lock(&self.objects).keys().filter(|k| k.starts_with(prefix)).cloned().collect())
    }
    async fn presign_get(&self, key: &str, ttl: Duration) -> Result<String> {
        Ok(format!("memory://{key}?ttl={}", ttl.as_secs()))
    }
}

/// (from, to, MIME message)
pub type SentMail = (String, Vec<String>, Vec<u8>);

/// Messages sent, and sends made to fail on purpose.
#[derive(Default)]
pub struct MemoryMailer {
    pub sent: Mutex<Vec<SentMail>>,
    /// The next this-many sends fail as SES throttling does (a retry may succeed).
    pub throttle_next: Mutex<usize>,
    /// The next this-many sends fail as SES refusing a message does (for good).
    pub reject_next: Mutex<usize>,
    /// The next this-many sends fail as an SES account whose sending is paused does.
    pub pause_next: Mutex<usize>,
}

impl MemoryMailer {
    pub fn sent(&self) -> Vec<SentMail> {
        lock(&self.sent).clone()
    }
}

#[async_trait]
impl Mailer for MemoryMailer {
    async fn send_raw(&self, from: &str, to: &[String], mime: Vec<u8>) -> Result<()> {
        if let Some(n) = Some(&mut *lock(&self.pause_next)).filter(|n| **n > 0) {
            *n -= 1;
            let message = "SendingPausedException: sending is paused for this account (on purpose)".to_string();
            return Err(Error::Transient { service: "sesv2", operation: "SendEmail", message });
        }
        for (counter, retryable) in [(&self.throttle_next, true), (&self.reject_next, false)] {
            let mut n = lock(counter);
            if *n > 0 {
                *n -= 1;
                let message = format!("{} on purpose", if retryable { "Throttling" } else { "MessageRejected" });
                return Err(if retryable {
                    Error::Transient { service: "sesv2", operation: "SendEmail", message }
                } else {
                    Error::Aws { service: "sesv2", operation: "SendEmail", message }
                });
            }
        }
        lock(&self.sent).push((from.to_string(), to.to_vec(), mime));
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    User(String),
    Org(String),
}

/// An item as the directory keeps it: what `rules` sees, and the user or organization it holds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Stored {
    seen: Seen,
    user: Option<User>,
    org: Option<String>,
    /// An organization's contact email and phone.
    #[serde(default)]
    org_email: Option<String>,
    #[serde(default)]
    org_phone: Option<String>,
    /// The tombstone of a user moved to another email: that email.
    #[serde(default)]
    moved_to: Option<String>,
}

impl Stored {
    /// What a write sees, with the user's pool as stored.
    fn seen(&self) -> Seen {
        Seen { pool: self.user.as_ref().and_then(|u| u.fields.licence_pool.clone()), ..self.seen.clone() }
    }
    fn image(&self) -> Image {
        Image(serde_json::to_value(self).unwrap_or_default())
    }
    /// A live active user: holds a licence.
    fn active(&self) -> bool {
        !self.seen.tombstone && self.user.as_ref().is_some_and(|u| u.status == UserStatus::Active)
    }
    fn live(&self) -> bool {
        !self.seen.tombstone
    }
}

#[derive(Default)]
struct DirState {
    tenants: BTreeMap<String, Tenant>,
    items: BTreeMap<(String, Key), Stored>,
    /// (tenant, pool) -> used.
    pools: HashMap<(String, Option<String>), i64>,
    claims: HashMap<String, (LicenceClaim, bool)>,
    /// (tenant, ExternalId) -> email.
    external: HashMap<(String, String), String>,
    /// Organizations' ids: (tenant, id) -> organization name.
    org_ids: HashMap<(String, String), String>,
}

/// Tenants, users and organizations; the licence pool with its claims.
#[derive(Default)]
pub struct MemoryDirectory {
    state: Mutex<DirState>,
    /// Conditional writes made (written or refused): what a row cost.
    pub writes: std::sync::atomic::AtomicUsize,
    /// The emails of each batched users' read (`read_users`), in order.
    pub reads: Mutex<Vec<Vec<String>>>,
    /// Runs once right after the next `users` read: another writer acting between a chunk's
    /// read and its writes.
    #[allow(clippy::type_complexity)]
    pub after_read: Mutex<Option<Box<dyn FnOnce(&MemoryDirectory) + Send>>>,
    /// Tenants whose settings read as a stored item that no longer parses (a newer version's).
    pub unreadable_tenants: Mutex<HashSet<String>>,
    /// Tenants whose next this-many reads fail as a throttled DynamoDB does.
    pub throttled_tenant_reads: Mutex<HashMap<String, usize>>,
}

impl MemoryDirectory {
    /// A tenant removed by hand (there is no command for it).
    pub fn remove_tenant(&self, id: &str) {
        lock(&self.state).tenants.remove(id);
    }

    /// Change a stored user as another upload's write would (its stamp and order).
    pub fn overwrite(&self, tenant: &str, email: &str, token: &str, order: &str, change: impl FnOnce(&mut User)) {
        let mut state = lock(&self.state);
        if let Some(stored) = state.items.get_mut(&(tenant.to_string(), Key::User(email.to_string()))) {
            if let Some(user) = stored.user.as_mut() {
                change(user);
                user.last_write = token.to_string();
            }
            stored.seen.last_write = Some(token.to_string());
            stored.seen.order = Some(order.to_string());
        }
    }

    /// Put a user in place as another system would (no stamp, no order): fixtures of unit tests.
    pub fn seed_user(&self, tenant: &str, email: &str, status: UserStatus) {
        let user = User {
            email: email.to_string(),
            status,
            fields: UserFields::default(),
            created_by: String::new(),
            last_write: String::new(),
            manual_groups: vec![],
            activated: false,
            user_id: None,
        };
        let seen = Seen { status: Some(status), ..Seen::default() };
        lock(&self.state).items.insert(
            (tenant.to_string(), Key::User(email.to_string())),
            Stored { seen, user: Some(user), org: None, org_email: None, org_phone: None, moved_to: None },
        );
    }
}

/// What a row sets on a user: given fields replace, products are granted (never revoked here).
fn merge(into: &mut UserFields, row: &UserFields) {
    for (to, from) in [
        (&mut into.first_name, &row.first_name),
        (&mut into.last_name, &row.last_name),
        (&mut into.phone, &row.phone),
        (&mut into.org, &row.org),
        (&mut into.role, &row.role),
        (&mut into.department, &row.department),
        (&mut into.user_type, &row.user_type),
        (&mut into.licence_pool, &row.licence_pool),
        (&mut into.external_id, &row.external_id),
    ] {
        if from.is_some() {
            to.clone_from(from);
        }
    }
    if !row.groups.is_empty() {
        into.groups.clone_from(&row.groups);
    }
    into.products.extend(row.products.iter().cloned());
    into.products.sort();
    into.products.dedup();
    into.associations.extend(row.associations.iter().map(|(k, v)| (k.clone(), v.clone())));
    into.attributes.extend(row.attributes.iter().map(|(k, v)| (k.clone(), v.clone())));
}

fn new_user(tenant: &str, email: &str, fields: &UserFields, token: &str) -> User {
    let mut user = User {
        email: email.to_string(),
        status: UserStatus::Active,
        fields: UserFields::default(),
        created_by: token.to_string(),
        last_write: token.to_string(),
        manual_groups: vec![],
        activated: false,
        user_id: Some(crate::model::new_user_id(tenant, email, token)),
    };
    merge(&mut user.fields, fields);
    user.fields.invite = false;
    user.fields.invite_at = None;
    user
}

#[async_trait]
impl Directory for MemoryDirectory {
    async fn tenant(&self, id: &str) -> Result<Option<Tenant>> {
        if let Some(n) = lock(&self.throttled_tenant_reads).get_mut(id).filter(|n| **n > 0) {
            *n -= 1;
            return Err(Error::Transient { service: "dynamodb", operation: "GetItem", message: "ThrottlingException: on purpose".into() });
        }
        if lock(&self.unreadable_tenants).contains(id) {
            return Err(Error::corrupt(format!("tenant {id}"), "unknown field `a_setting_from_a_newer_version`"));
        }
        Ok(lock(&self.state).tenants.get(id).cloned())
    }
    async fn put_tenant(&self, tenant: &Tenant) -> Result<()> {
        lock(&self.state).tenants.insert(tenant.id.clone(), tenant.clone());
        Ok(())
    }
    async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        Ok(lock(&self.state).tenants.values().cloned().collect())
    }
    async fn user(&self, tenant: &str, email: &str) -> Result<Option<User>> {
        let key = (tenant.to_string(), Key::User(email.trim().to_lowercase()));
        Ok(lock(&self.state).items.get(&key).filter(|s| !s.seen.tombstone).and_then(|s| s.user.clone()))
    }

    async fn users(&self, tenant: &str, emails: &[String]) -> Result<crate::ports::Users> {
        Ok(self.read_users(tenant, emails, crate::ports::Consistency::Strong).await?.live)
    }

    /// Always as written: the memory directory has no replicas to lag.
    async fn read_users(&self, tenant: &str, emails: &[String], _read: crate::ports::Consistency) -> Result<UsersRead> {
        lock(&self.reads).push(emails.to_vec());
        let mut found = UsersRead::default();
        {
            let state = lock(&self.state);
            for email in emails {
                let key = (tenant.to_string(), Key::User(email.trim().to_lowercase()));
                match state.items.get(&key) {
                    Some(s) if s.seen.tombstone => found.deleted.extend(s.seen.order.clone().map(|o| (email.clone(), o))),
                    Some(s) => found.live.extend(s.user.clone().map(|u| (email.clone(), Box::new(u)))),
                    None => {}
                }
            }
        }
        let hook = lock(&self.after_read).take();
        if let Some(hook) = hook {
            hook(self);
        }
        Ok(found)
    }

    async fn write(&self, tenant: &str, target: &Target, attempt: Attempt, stamp: &Stamp) -> Result<Attempted> {
        self.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = stamp.token();
        let key = match target {
            Target::User { email, .. } => Key::User(email.clone()),
            Target::Org { name, .. } => Key::Org(name.to_lowercase()),
        };
        let mut state = lock(&self.state);
        let slot = (tenant.to_string(), key);
        let old = state.items.get(&slot).cloned();
        let old_seen = old.as_ref().map(Stored::seen);
        let image = old.as_ref().map(Stored::image);
        if !rules::holds(attempt, old_seen.as_ref(), &stamp.order) {
            return Ok(Attempted::Refused(old_seen));
        }
        let live = old.filter(|s| !s.seen.tombstone);
        let mut next = match (attempt, target) {
            (Attempt::Tombstone { active }, _) => Stored {
                seen: Seen { tombstone: true, licence_by: (active == Some(true)).then(|| token.clone()), ..Seen::default() },
                user: None,
                org: None,
                org_email: None,
                org_phone: None,
                moved_to: None,
            },
            (_, Target::User { email, fields }) => {
                let mut stored = live.unwrap_or_else(|| Stored {
                    seen: Seen { status: Some(UserStatus::Active), created_by: Some(token.clone()), ..Seen::default() },
                    user: Some(new_user(tenant, email, fields, &token)),
                    org: None,
                    org_email: None,
                    org_phone: None,
                    moved_to: None,
                });
                let user = stored.user.get_or_insert_with(|| new_user(tenant, email, fields, &token));
                match attempt {
                    Attempt::Create => stored.seen.licence_by = Some(token.clone()),
                    Attempt::Upsert { .. } => {
                        merge(&mut user.fields, fields);
                        user.user_id.get_or_insert_with(|| crate::model::new_user_id(tenant, email, &token));
                    }
                    Attempt::Update { revoke: false } => merge(&mut user.fields, fields),
                    Attempt::Update { revoke: true } if fields.products.is_empty() => user.fields.products.clear(),
                    Attempt::Update { revoke: true } => user.fields.products.retain(|p| !fields.products.contains(p)),
                    Attempt::Transition { to, strip_targeting } => {
                        user.status = to;
                        stored.seen.status = Some(to);
                        stored.seen.licence_by = Some(token.clone());
                        if strip_targeting {
                            user.fields.groups.clear();
                            user.manual_groups.clear();
                            user.fields.department = None;
                        }
                    }
                    Attempt::Keep { .. } | Attempt::Invite | Attempt::Tombstone { .. } => {}
                }
                stored
            }
            (_, Target::Org { name, .. }) => {
                let mut stored = live.unwrap_or_else(|| Stored {
                    seen: Seen { created_by: Some(token.clone()), ..Seen::default() },
                    user: None,
                    org: Some(name.clone()),
                    org_email: None,
                    org_phone: None,
                    moved_to: None,
                });
                stored.org = Some(name.clone());
                if let Target::Org { email: Some(e), .. } = target {
                    stored.org_email = Some(e.clone());
                }
                if let Target::Org { phone: Some(p), .. } = target {
                    stored.org_phone = Some(p.clone());
                }
                stored
            }
        };
        if let Some(user) = next.user.as_mut() {
            user.last_write.clone_from(&token);
        }
        next.seen.last_write = Some(token);
        next.seen.order = Some(stamp.order.clone());
        state.items.insert(slot, next);
        Ok(Attempted::Written(old_seen, image))
    }

    async fn restore(&self, tenant: &str, target: &Target, restore: &Restore, stamp: &Stamp) -> Result<Restored> {
        self.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = match target {
            Target::User { email, .. } => Key::User(email.clone()),
            Target::Org { name, .. } => Key::Org(name.to_lowercase()),
        };
        let mut state = lock(&self.state);
        let slot = (tenant.to_string(), key);
        let Some(current) = state.items.get(&slot).cloned() else { return Ok(Restored::Gone) };
        let token = stamp.token();
        let last = current.seen.last_write.clone().unwrap_or_default();
        if last == token {
            // Restored by an earlier attempt of this row.
            return Ok(Restored::Done { change: Change::Updated, licence: Licence::Unchanged, before: Before::Unknown });
        }
        if last != restore.kept.token {
            return Ok(Restored::ChangedSince(rules::job_of(&last).to_string()));
        }
        let mut next = match &restore.kept.before {
            Some(image) => serde_json::from_value::<Stored>(image.0.clone()).map_err(|e| Error::corrupt("before-image", e))?,
            None => Stored {
                seen: Seen { tombstone: true, ..Seen::default() },
                user: None,
                org: None,
                org_email: None,
                org_phone: None,
                moved_to: None,
            },
        };
        next.seen.last_write = Some(token.clone());
        next.seen.order = Some(stamp.order.clone());
        if let Some(user) = next.user.as_mut() {
            user.last_write.clone_from(&token);
        }
        let licence = match (current.active(), next.active()) {
            (false, true) => Licence::Took,
            (true, false) => Licence::Freed,
            _ => Licence::Unchanged,
        };
        let change = match (current.live(), next.live()) {
            (false, true) => Change::Created,
            (true, false) => Change::Deleted,
            _ => Change::Updated,
        };
        let pool = current.user.as_ref().and_then(|u| u.fields.licence_pool.clone());
        let before = Before::Was { image: Some(current.image()), active: current.active(), pool };
        state.items.insert(slot, next);
        Ok(Restored::Done { change, licence, before })
    }

    async fn org_exists(&self, tenant: &str, name: &str) -> Result<bool> {
        let key = (tenant.to_string(), Key::Org(name.to_lowercase()));
        Ok(lock(&self.state).items.get(&key).is_some_and(|s| !s.seen.tombstone))
    }
    async fn org_email(&self, tenant: &str, name: &str) -> Result<Option<String>> {
        let key = (tenant.to_string(), Key::Org(name.to_lowercase()));
        Ok(lock(&self.state).items.get(&key).filter(|s| !s.seen.tombstone).and_then(|s| s.org_email.clone()))
    }
    async fn claim_contact(&self, tenant: &str, email: &str, org: &str) -> Result<ContactClaim> {
        let mut state = lock(&self.state);
        let slot = (tenant.to_string(), Key::User(email.to_string()));
        match state.items.get(&slot) {
            Some(s) if s.seen.contact_of.as_deref().is_some_and(|o| o.to_lowercase() == org.to_lowercase()) => {}
            Some(s) if s.seen.contact_of.is_some() => return Ok(ContactClaim::Org(s.seen.contact_of.clone().unwrap_or_default())),
            Some(s) if !s.seen.tombstone => return Ok(ContactClaim::User),
            _ => {
                let seen = Seen { contact_of: Some(org.to_string()), ..Seen::default() };
                state.items.insert(slot, Stored { seen, user: None, org: None, org_email: None, org_phone: None, moved_to: None });
            }
        }
        Ok(ContactClaim::Claimed)
    }
    async fn release_contact(&self, tenant: &str, email: &str, org: &str) -> Result<()> {
        let mut state = lock(&self.state);
        let slot = (tenant.to_string(), Key::User(email.to_string()));
        if state.items.get(&slot).is_some_and(|s| s.seen.contact_of.as_deref().is_some_and(|o| o.to_lowercase() == org.to_lowercase())) {
            state.items.remove(&slot);
        }
        Ok(())
    }
    async fn external_ids(&self, tenant: &str, ids: &[String], _read: crate::ports::Consistency) -> Result<HashMap<String, String>> {
        let state = lock(&self.state);
        Ok(ids.iter().filter_map(|id| state.external.get(&(tenant.to_string(), id.clone())).map(|e| (id.clone(), e.clone()))).collect())
    }
    async fn org_ids(&self, tenant: &str, ids: &[String]) -> Result<HashMap<String, String>> {
        let state = lock(&self.state);
        Ok(ids.iter().filter_map(|id| state.org_ids.get(&(tenant.to_string(), id.clone())).map(|o| (id.clone(), o.clone()))).collect())
    }
    async fn put_org_id(&self, tenant: &str, id: &str, org: &str) -> Result<()> {
        lock(&self.state).org_ids.insert((tenant.to_string(), id.to_string()), org.to_string());
        Ok(())
    }
    async fn claim_external_id(&self, tenant: &str, id: &str, email: &str) -> Result<Option<String>> {
        let mut state = lock(&self.state);
        let holder = state.external.entry((tenant.to_string(), id.to_string())).or_insert_with(|| email.to_string());
        Ok((holder != email).then(|| holder.clone()))
    }
    async fn release_external_id(&self, tenant: &str, id: &str, email: &str) -> Result<()> {
        let mut state = lock(&self.state);
        let key = (tenant.to_string(), id.to_string());
        if state.external.get(&key).is_some_and(|e| e == email) {
            state.external.remove(&key);
        }
        Ok(())
    }
    async fn move_user(&self, tenant: &str, from: &str, to: &str, stamp: &Stamp) -> Result<Moved> {
        self.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = stamp.token();
        let mut state = lock(&self.state);
        let (from_slot, to_slot) = ((tenant.to_string(), Key::User(from.to_string())), (tenant.to_string(), Key::User(to.to_string())));
        let Some(current) = state.items.get(&from_slot).cloned() else { return Ok(Moved::Missing) };
        if current.seen.tombstone {
            let ours = current.seen.last_write.as_deref() == Some(token.as_str()) && current.moved_to.as_deref() == Some(to);
            return Ok(if ours { Moved::Moved } else { Moved::Missing });
        }
        let Some(mut user) = current.user.clone().filter(|_| current.seen.contact_of.is_none()) else { return Ok(Moved::Missing) };
        if current.seen.order.as_deref().is_some_and(|theirs| theirs > stamp.order.as_str()) {
            return Ok(Moved::Superseded(rules::job_of(current.seen.last_write.as_deref().unwrap_or_default()).to_string()));
        }
        match state.items.get(&to_slot) {
            Some(s) if s.seen.contact_of.is_some() => return Ok(Moved::ContactOf(s.seen.contact_of.clone().unwrap_or_default())),
            Some(s) if !s.seen.tombstone => return Ok(Moved::Taken),
            _ => {}
        }
        user.email = to.to_string();
        user.last_write.clone_from(&token);
        if let Some(id) = &user.fields.external_id {
            state.external.insert((tenant.to_string(), id.clone()), to.to_string());
        }
        let seen = Seen { last_write: Some(token.clone()), order: Some(stamp.order.clone()), ..current.seen.clone() };
        state.items.insert(to_slot, Stored { seen, user: Some(user), ..current });
        let seen = Seen { tombstone: true, last_write: Some(token), order: Some(stamp.order.clone()), ..Seen::default() };
        let gone = Stored { seen, user: None, org: None, org_email: None, org_phone: None, moved_to: Some(to.to_string()) };
        state.items.insert(from_slot, gone);
        Ok(Moved::Moved)
    }
    async fn moved_to(&self, tenant: &str, email: &str) -> Result<Option<String>> {
        let state = lock(&self.state);
        Ok(state
            .items
            .get(&(tenant.to_string(), Key::User(email.to_string())))
            .filter(|s| s.seen.tombstone)
            .and_then(|s| s.moved_to.clone()))
    }
    async fn repoint_associations(&self, tenant: &str, moves: &[(String, String)]) -> Result<u32> {
        let to: HashMap<&String, &String> = moves.iter().map(|(f, t)| (f, t)).collect();
        let mut state = lock(&self.state);
        let mut changed = 0;
        for ((t, _), stored) in state.items.iter_mut() {
            let Some(user) = stored.user.as_mut().filter(|_| t == tenant && !stored.seen.tombstone) else { continue };
            for value in user.fields.associations.values_mut() {
                if let Some(new) = to.get(value) {
                    *value = (*new).clone();
                    changed += 1;
                }
            }
        }
        Ok(changed)
    }
    async fn org_user_counts(&self, tenant: &str, names: &[String]) -> Result<HashMap<String, u64>> {
        let wanted: std::collections::HashSet<String> = names.iter().map(|n| n.to_lowercase()).collect();
        let state = lock(&self.state);
        let mut counts = HashMap::new();
        for org in state.items.iter().filter(|((t, _), _)| t == tenant).filter_map(|(_, s)| s.user.as_ref()?.fields.org.as_deref()) {
            let org = org.to_lowercase();
            if wanted.contains(&org) {
                *counts.entry(org).or_insert(0) += 1;
            }
        }
        Ok(counts)
    }
    async fn list_users(&self, tenant: &str) -> Result<Vec<(String, UserStatus)>> {
        let state = lock(&self.state);
        Ok(state
            .items
            .iter()
            .filter_map(|((t, k), s)| match (k, &s.user) {
                (Key::User(email), Some(u)) if t == tenant => Some((email.clone(), u.status)),
                _ => None,
            })
            .collect())
    }
    async fn count_active_users(&self, tenant: &str, at_most: u64) -> Result<u64> {
        let active = self.list_users(tenant).await?.into_iter().filter(|(_, s)| *s == UserStatus::Active).count() as u64;
        Ok(active.min(at_most.max(1)))
    }
    async fn reserve_licences(
        &self,
        tenant: &str,
        pool: Option<&str>,
        limit: u32,
        claim: &str,
        decision: LicenceClaim,
    ) -> Result<LicenceClaim> {
        let tenant = &(tenant.to_string(), pool.map(str::to_string));
        let mut state = lock(&self.state);
        if let Some((recorded, _)) = state.claims.get(claim) {
            return Ok(LicenceClaim { repeated: true, ..recorded.clone() });
        }
        let used = state.pools.get(tenant).copied().unwrap_or(0).max(0);
        let granted = (decision.takers.len() as u32).min(limit.saturating_sub(used as u32));
        state.pools.insert(tenant.clone(), used + granted as i64);
        let recorded = LicenceClaim { granted, ..decision };
        state.claims.insert(claim.to_string(), (recorded.clone(), false));
        Ok(recorded)
    }
    async fn settle_licences(&self, tenant: &str, pool: Option<&str>, claim: &str, returned: u32) -> Result<()> {
        let tenant = (tenant.to_string(), pool.map(str::to_string));
        let mut state = lock(&self.state);
        match state.claims.get_mut(claim) {
            Some((_, settled)) if !*settled => *settled = true,
            _ => return Ok(()),
        }
        let used = state.pools.entry(tenant).or_insert(0);
        *used = (*used - returned as i64).max(0);
        Ok(())
    }
    async fn licences_used(&self, tenant: &str, pool: Option<&str>) -> Result<u32> {
        Ok(lock(&self.state).pools.get(&(tenant.to_string(), pool.map(str::to_string))).copied().unwrap_or(0).max(0) as u32)
    }
    async fn set_licences_used(&self, tenant: &str, pool: Option<&str>, used: u32) -> Result<()> {
        lock(&self.state).pools.insert((tenant.to_string(), pool.map(str::to_string)), used as i64);
        Ok(())
    }
}

#[derive(Default)]
struct JobsState {
    jobs: BTreeMap<String, Job>,
    markers: HashSet<(String, usize, u32)>,
    /// (job, kind) -> (claimed at, sent)
    emails: HashMap<(String, &'static str), (String, bool)>,
    replace: HashMap<String, String>,
    /// Jobs approved after a hold: open since then.
    since: HashMap<String, String>,
    /// (job, state) whose event was claimed.
    events: HashSet<(String, JobState)>,
    /// FAILED jobs that left the open jobs (`close`, or failed while held or scheduled).
    closed: HashSet<String>,
}

/// Jobs, chunk markers, email claims and the replace lock.
#[derive(Default)]
pub struct MemoryJobs {
    state: Mutex<JobsState>,
}

#[async_trait]
impl JobStore for MemoryJobs {
    async fn claim_event(&self, id: &str, state: JobState) -> Result<bool> {
        let mut s = lock(&self.state);
        Ok(s.jobs.contains_key(id) && s.events.insert((id.to_string(), state)))
    }
    async fn release_event(&self, id: &str, state: JobState) -> Result<()> {
        lock(&self.state).events.remove(&(id.to_string(), state));
        Ok(())
    }
    async fn create_or_get(&self, job: &Job) -> Result<(Job, bool)> {
        let mut state = lock(&self.state);
        if let Some(existing) = state.jobs.get(&job.id) {
            return Ok((existing.clone(), false));
        }
        state.jobs.insert(job.id.clone(), job.clone());
        Ok((job.clone(), true))
    }
    async fn get(&self, id: &str) -> Result<Option<Job>> {
        Ok(lock(&self.state).jobs.get(id).cloned())
    }
    async fn set_plan(&self, id: &str, plan: &Plan) -> Result<()> {
        if let Some(job) = lock(&self.state).jobs.get_mut(id) {
            job.phase_chunks = Some(plan.phase_chunks);
            job.total_rows = plan.total_rows;
            if let Some(mode) = plan.mode {
                job.mode = Some(mode);
            }
        }
        Ok(())
    }
    async fn transition(&self, id: &str, from: JobState, to: JobState, message: Option<&str>) -> Result<bool> {
        let mut state = lock(&self.state);
        let moved = match state.jobs.get_mut(id) {
            Some(job) if job.state == from => {
                job.state = to;
                if let Some(m) = message {
                    job.message = Some(m.to_string());
                }
                true
            }
            _ => false,
        };
        if moved && matches!(from, JobState::Held | JobState::Scheduled) {
            state.since.insert(id.to_string(), chrono::Utc::now().to_rfc3339());
            if to == JobState::Failed {
                state.closed.insert(id.to_string());
            }
        }
        Ok(moved)
    }
    async fn record_chunk(&self, id: &str, phase: usize, seq: u32, of: Option<u32>) -> Result<Recorded> {
        let mut state = lock(&self.state);
        if !state.markers.insert((id.to_string(), phase, seq)) {
            return Ok(Recorded::Before);
        }
        let done = state.jobs.get_mut(id).map(|job| {
            job.counted_at = Some(chrono::Utc::now().to_rfc3339());
            job.phase_done[phase] += 1;
            job.phase_done[phase]
        });
        Ok(Recorded::Counted { last: !matches!((of, done), (Some(of), Some(done)) if done < of) })
    }
    async fn job_for_chunk(&self, id: &str, phase: usize, seq: u32) -> Result<Option<(Job, bool)>> {
        let state = lock(&self.state);
        Ok(state.jobs.get(id).map(|job| (job.clone(), state.markers.contains(&(id.to_string(), phase, seq)))))
    }
    async fn claim_email(&self, id: &str, kind: EmailKind, lease: Lease) -> Result<bool> {
        let now = chrono::Utc::now();
        let mut state = lock(&self.state);
        if !state.jobs.contains_key(id) {
            return Ok(false);
        }
        let slot = state.emails.entry((id.to_string(), kind.as_str())).or_insert_with(|| (String::new(), false));
        if slot.1 || (!slot.0.is_empty() && slot.0 >= lease.stale_before(now)) {
            return Ok(false);
        }
        slot.0 = Lease::stamp(now);
        Ok(true)
    }
    async fn mark_email_sent(&self, id: &str, kind: EmailKind) -> Result<()> {
        lock(&self.state).emails.entry((id.to_string(), kind.as_str())).or_insert_with(|| (String::new(), false)).1 = true;
        Ok(())
    }
    async fn release_email(&self, id: &str, kind: EmailKind) -> Result<()> {
        if let Some(slot) = lock(&self.state).emails.get_mut(&(id.to_string(), kind.as_str())).filter(|s| !s.1) {
            slot.0.clear();
        }
        Ok(())
    }
    async fn email_sent(&self, id: &str, kind: EmailKind) -> Result<bool> {
        Ok(lock(&self.state).emails.get(&(id.to_string(), kind.as_str())).is_some_and(|e| e.1))
    }
    async fn finish(&self, id: &str, state: JobState, succeeded: u32, failed: u32, skipped: u32, note: Option<&str>) -> Result<()> {
        if let Some(job) = lock(&self.state).jobs.get_mut(id) {
            (job.state, job.succeeded, job.failed, job.skipped) = (state, succeeded, failed, skipped);
            job.completed_at = Some(chrono::Utc::now().to_rfc3339());
            if let Some(note) = note {
                job.message = Some(note.to_string());
            }
        }
        Ok(())
    }
    async fn held_jobs(&self, limit: usize) -> Result<Vec<(String, String)>> {
        let state = lock(&self.state);
        let mut held: Vec<(String, String)> =
            state.jobs.values().filter(|j| j.state == JobState::Held).map(|j| (j.id.clone(), j.received_at.clone())).collect();
        held.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
        held.truncate(limit);
        Ok(held)
    }
    async fn schedule(&self, id: &str, at: &str) -> Result<bool> {
        let mut state = lock(&self.state);
        match state.jobs.get_mut(id) {
            Some(job) if job.state == JobState::Received => {
                job.state = JobState::Scheduled;
                job.run_at = Some(at.to_string());
                Ok(true)
            }
            _ => Ok(false),
        }
    }
    async fn scheduled_due(&self, now: &str, limit: usize) -> Result<Vec<(String, String)>> {
        let state = lock(&self.state);
        let mut due: Vec<(String, String)> = state
            .jobs
            .values()
            .filter(|j| j.state == JobState::Scheduled)
            .filter_map(|j| j.run_at.clone().filter(|at| at.as_str() <= now).map(|at| (j.id.clone(), at)))
            .collect();
        due.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
        due.truncate(limit);
        Ok(due)
    }
    async fn start_scheduled(&self, id: &str, order: &str) -> Result<bool> {
        let mut state = lock(&self.state);
        let started = match state.jobs.get_mut(id) {
            Some(job) if job.state == JobState::Scheduled => {
                job.state = JobState::Applying;
                job.order = order.to_string();
                true
            }
            _ => false,
        };
        if started {
            state.since.insert(id.to_string(), chrono::Utc::now().to_rfc3339());
        }
        Ok(started)
    }
    async fn close(&self, id: &str) -> Result<()> {
        lock(&self.state).closed.insert(id.to_string());
        Ok(())
    }
    async fn oldest_open(&self) -> Result<Option<(String, String)>> {
        Ok(self.open_jobs(1).await?.into_iter().next())
    }
    async fn open_jobs(&self, limit: usize) -> Result<Vec<(String, String)>> {
        let state = lock(&self.state);
        let since = |j: &Job| state.since.get(&j.id).cloned().unwrap_or_else(|| j.received_at.clone());
        let mut open: Vec<(String, String)> = state
            .jobs
            .values()
            .filter(|j| match j.state {
                JobState::Held | JobState::Scheduled => false,
                JobState::Failed => j.completed_at.is_none() && !state.closed.contains(&j.id),
                s => !s.is_final(),
            })
            .map(|j| (j.id.clone(), since(j)))
            .collect();
        open.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
        open.truncate(limit);
        Ok(open)
    }
    async fn acquire_replace(&self, tenant: &str, id: &str) -> Result<Option<String>> {
        let mut state = lock(&self.state);
        if let Some(holder) = state.replace.get(tenant).filter(|h| *h != id)
            && state.jobs.get(holder).is_some_and(|j| !j.state.is_final())
        {
            return Ok(Some(holder.clone()));
        }
        state.replace.insert(tenant.to_string(), id.to_string());
        Ok(None)
    }
    async fn recent(&self, tenant: &str, limit: usize) -> Result<Vec<Job>> {
        let state = lock(&self.state);
        let mut jobs: Vec<Job> = state.jobs.values().filter(|j| j.tenant == tenant).cloned().collect();
        jobs.sort_by(|a, b| (&b.received_at, &b.id).cmp(&(&a.received_at, &a.id)));
        jobs.truncate(limit);
        Ok(jobs)
    }
}

pub use crate::model::InviteStatus as InviteState;

/// (invite, state, claimed at, last error)
type InviteEntry = (Invite, InviteState, String, String);

/// Activation emails by (tenant, email), with their state and last error.
#[derive(Default)]
pub struct MemoryInvites {
    state: Mutex<BTreeMap<(String, String), InviteEntry>>,
}

impl MemoryInvites {
    /// (state, attempts, last error) of one invite.
    pub fn of(&self, tenant: &str, email: &str) -> Option<(InviteState, u32, String)> {
        lock(&self.state).get(&(tenant.to_string(), email.to_string())).map(|(i, st, _, err)| (*st, i.attempts, err.clone()))
    }
}

#[async_trait]
impl Invites for MemoryInvites {
    async fn rename(&self, tenant: &str, from: &str, to: &str) -> Result<bool> {
        let mut state = lock(&self.state);
        let key = (tenant.to_string(), from.to_string());
        if state.get(&key).is_none_or(|(_, st, ..)| *st != InviteState::Pending) {
            return Ok(false);
        }
        let (mut invite, st, claimed, err) = state.remove(&key).expect("checked");
        invite.email = to.to_string();
        state.insert((tenant.to_string(), to.to_string()), (invite, st, claimed, err));
        Ok(true)
    }
    async fn schedule(&self, invite: &Invite) -> Result<()> {
        let mut state = lock(&self.state);
        let key = (invite.tenant.clone(), invite.email.clone());
        if state.get(&key).is_some_and(|(i, ..)| i.job == invite.job) {
            return Ok(());
        }
        state.insert(key, (invite.clone(), InviteState::Pending, String::new(), String::new()));
        Ok(())
    }
    async fn due(&self, now: &str, limit: usize) -> Result<Vec<Invite>> {
        let state = lock(&self.state);
        let mut due: Vec<Invite> = state
            .values()
            .filter(|(i, st, ..)| matches!(st, InviteState::Pending | InviteState::Sending) && i.due_at.as_str() <= now)
            .map(|(i, ..)| i.clone())
            .collect();
        due.sort_by(|a, b| a.due_at.cmp(&b.due_at));
        due.truncate(limit);
        Ok(due)
    }
    async fn claim(&self, invite: &Invite, lease: Lease) -> Result<bool> {
        let now = chrono::Utc::now();
        let mut state = lock(&self.state);
        let Some((stored, st, claimed_at, _)) = state.get_mut(&(invite.tenant.clone(), invite.email.clone())) else { return Ok(false) };
        let free = *st == InviteState::Pending || (*st == InviteState::Sending && *claimed_at < lease.stale_before(now));
        if stored.job != invite.job || !free {
            return Ok(false);
        }
        (*st, *claimed_at) = (InviteState::Sending, Lease::stamp(now));
        Ok(true)
    }
    async fn mark_sent(&self, invite: &Invite) -> Result<()> {
        if let Some(entry) = lock(&self.state).get_mut(&(invite.tenant.clone(), invite.email.clone())) {
            entry.1 = InviteState::Sent;
        }
        Ok(())
    }
    async fn record_failure(&self, invite: &Invite, reason: &str, retry_at: Option<&str>) -> Result<()> {
        let mut state = lock(&self.state);
        let Some((stored, st, _, err)) = state.get_mut(&(invite.tenant.clone(), invite.email.clone())) else { return Ok(()) };
        if stored.job != invite.job {
            return Ok(());
        }
        stored.attempts += 1;
        *err = reason.to_string();
        match retry_at {
            Some(at) => (*st, stored.due_at) = (InviteState::Pending, at.to_string()),
            None => *st = InviteState::Failed,
        }
        Ok(())
    }
    async fn record_delivery(&self, tenant: &str, email: &str, status: InviteState, reason: Option<&str>, at: &str) -> Result<bool> {
        let mut state = lock(&self.state);
        let Some((stored, st, _, err)) = state.get_mut(&(tenant.to_string(), email.to_string())) else { return Ok(false) };
        if !matches!(*st, InviteState::Sent | InviteState::Delivered | InviteState::Bounced | InviteState::Complained) {
            return Ok(false);
        }
        if status == InviteState::Delivered && *st != InviteState::Sent {
            return Ok(true); // a bounce or complaint stays
        }
        *st = status;
        *err = reason.unwrap_or_default().to_string();
        stored.due_at = at.to_string();
        Ok(true)
    }
    async fn list(&self, tenant: &str) -> Result<Vec<crate::model::InviteRecord>> {
        let state = lock(&self.state);
        Ok(state
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|((_, email), (i, st, _, err))| crate::model::InviteRecord {
                email: email.clone(),
                first_name: i.first_name.clone(),
                status: *st,
                job: i.job.clone(),
                at: i.due_at.clone(),
                reason: (!err.is_empty()).then(|| err.clone()),
            })
            .collect())
    }
}

impl crate::Services {
    /// Services over in-memory ports, with the stores returned for a test to look into.
    pub fn memory(config: crate::Config) -> (Self, Memory) {
        let m = Memory::default();
        let svc = crate::Services {
            config,
            store: m.store.clone(),
            directory: m.directory.clone(),
            jobs: std::sync::Arc::new(crate::events::Publishing::new(m.jobs.clone(), m.events.clone())),
            mailer: m.mailer.clone(),
            invites: m.invites.clone(),
            events: m.events.clone(),
        };
        (svc, m)
    }
}

/// Job events as published, in order: (detail type, detail).
#[derive(Default)]
pub struct MemoryEvents {
    published: Mutex<Vec<(String, serde_json::Value)>>,
    /// Publishes to refuse before the next one goes through (a bus that is down).
    pub fail_next: Mutex<u32>,
}

impl MemoryEvents {
    pub fn published(&self) -> Vec<(String, serde_json::Value)> {
        lock(&self.published).clone()
    }
}

#[async_trait]
impl crate::ports::EventBus for MemoryEvents {
    async fn publish(&self, detail_type: &str, detail: &serde_json::Value) -> Result<()> {
        {
            let mut fail = lock(&self.fail_next);
            if *fail > 0 {
                *fail -= 1;
                return Err(Error::Transient { service: "events", operation: "PutEvents", message: "down on purpose".into() });
            }
        }
        lock(&self.published).push((detail_type.to_string(), detail.clone()));
        Ok(())
    }
}

/// The in-memory ports behind a `Services::memory`.
#[derive(Default, Clone)]
pub struct Memory {
    pub store: std::sync::Arc<MemoryStore>,
    pub directory: std::sync::Arc<MemoryDirectory>,
    pub jobs: std::sync::Arc<MemoryJobs>,
    pub mailer: std::sync::Arc<MemoryMailer>,
    pub invites: std::sync::Arc<MemoryInvites>,
    pub events: std::sync::Arc<MemoryEvents>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-memory store counts chunks the way the DynamoDB adapter does: once each, and only
    /// the chunk that may complete its phase is told to look.
    #[tokio::test]
    async fn recording_a_chunk_counts_once_and_flags_only_the_one_that_may_complete_the_phase() {
        let jobs = MemoryJobs::default();
        let job = Job::received("j", "acme", "incoming/acme/r.csv", "r.csv", None, "2026-12-01T00:00:00Z");
        jobs.create_or_get(&job).await.unwrap();
        assert_eq!(jobs.record_chunk("j", 1, 0, Some(3)).await.unwrap(), Recorded::Counted { last: false });
        assert_eq!(jobs.record_chunk("j", 1, 0, Some(3)).await.unwrap(), Recorded::Before);
        assert_eq!(jobs.record_chunk("j", 1, 2, Some(3)).await.unwrap(), Recorded::Counted { last: false });
        assert_eq!(jobs.record_chunk("j", 1, 1, Some(3)).await.unwrap(), Recorded::Counted { last: true });
        assert_eq!(jobs.record_chunk("j", 2, 0, None).await.unwrap(), Recorded::Counted { last: true });
        assert_eq!(jobs.get("j").await.unwrap().unwrap().phase_done, [0, 3, 1, 0]);
    }
}
