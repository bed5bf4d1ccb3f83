//! Domain types. No SDK type appears here.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A tenant's configuration, managed with `rosterdrop tenant put`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// Tenant id: the `<tenant>` segment of `incoming/<tenant>/`.
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    /// Who receives result emails.
    pub admin_emails: Vec<String>,
    /// Verified SES identity the emails come from; the deployment's default when absent.
    #[serde(default)]
    pub sender: Option<String>,
    /// Roles bulk upload may assign, exact and case-sensitive.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Roles bulk upload may never assign.
    #[serde(default)]
    pub admin_roles: Vec<String>,
    /// Reject files whose columns differ from `template_columns` instead of warning.
    #[serde(default)]
    pub strict_template: bool,
    /// The tenant's template columns (strict mode); the standard template when empty.
    #[serde(default)]
    pub template_columns: Vec<String>,
    /// Rows per chunk for this tenant's files.
    #[serde(default)]
    pub chunk_size: Option<usize>,
    /// Send a "processing started" email when a file is accepted.
    #[serde(default = "yes")]
    pub notify_started: bool,
    /// Custom profile attributes a file may set (extended profile fields).
    #[serde(default)]
    pub attributes: Vec<AttributeDef>,
    /// Product codes the `Products` column may grant; any code when empty.
    #[serde(default)]
    pub products: Vec<String>,
    /// Licence pool: active users this tenant may have; unlimited when absent. The default pool:
    /// users whose row names no `LicencePool`.
    #[serde(default)]
    pub licences: Option<u32>,
    /// Named licence pools ("Staff": 50), chosen by the `LicencePool` column; each counted apart.
    #[serde(default)]
    pub licence_pools: BTreeMap<String, u32>,
    /// Every user row must carry an `ExternalId`.
    #[serde(default)]
    pub external_id_required: bool,
    /// A header that means `ExternalId` for this tenant (its HR export's name, e.g. "Employee Id").
    #[serde(default)]
    pub external_id_column: Option<String>,
    /// When a file's changes wait for an admin's approval (`holds`).
    #[serde(default)]
    pub holds: Holds,
    /// Days a job can be undone (its before-states are kept that long); 30 when absent, at most 90.
    #[serde(default)]
    pub undo_days: Option<u32>,
    /// Branding of activation (invite) emails.
    #[serde(default)]
    pub branding: Branding,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Branding {
    /// Product name in the invite ("Welcome to {product_name}"); the tenant's name when absent.
    #[serde(default)]
    pub product_name: Option<String>,
    /// Accent colour, `#rrggbb`.
    #[serde(default)]
    pub colour: Option<String>,
    /// Activation link; `{email}` is replaced by the URL-encoded address.
    #[serde(default)]
    pub activation_url: Option<String>,
    /// Logo shown at the top of every email (https, 32 pixels high); the product name otherwise.
    #[serde(default)]
    pub logo_url: Option<String>,
}

/// Where an activation email stands: waiting, sent, and what the recipient's mail server said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InviteStatus {
    Pending,
    /// Claimed by a sweep that is sending it.
    Sending,
    Sent,
    /// The recipient's server accepted it (SES delivery event).
    Delivered,
    /// The address does not take mail (SES bounce event): fix the address and invite again.
    Bounced,
    /// The recipient marked it as spam (SES complaint event).
    Complained,
    /// Not sent: SES refused it for good, or the user left before it went out.
    Failed,
}

impl InviteStatus {
    pub const NAMES: &'static [&'static str] = &["pending", "sending", "sent", "delivered", "bounced", "complained", "failed"];
    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }
    pub fn parse(s: &str) -> Option<Self> {
        use InviteStatus::*;
        [Pending, Sending, Sent, Delivered, Bounced, Complained, Failed].into_iter().find(|v| v.as_str() == s.trim().to_lowercase())
    }
}

/// One invite as `rosterdrop invites` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InviteRecord {
    pub email: String,
    pub first_name: Option<String>,
    pub status: InviteStatus,
    pub job: String,
    /// When it was due, sent, or last heard of.
    pub at: String,
    /// Why it bounced or failed.
    pub reason: Option<String>,
}

/// An activation email waiting to be sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invite {
    pub tenant: String,
    pub email: String,
    pub first_name: Option<String>,
    /// RFC 3339, UTC.
    pub due_at: String,
    pub job: String,
    /// Sends tried and failed so far (the sweep retries with backoff, then gives up).
    #[serde(default)]
    pub attempts: u32,
}

fn yes() -> bool {
    true
}

/// A tenant's custom attribute: a column name and the type its values must have.
/// (No `deny_unknown_fields` here: serde does not support it together with `flatten`.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributeDef {
    pub name: String,
    #[serde(flatten)]
    pub kind: AttributeKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AttributeKind {
    Text,
    Number,
    /// ISO date (spreadsheet date cells arrive as ISO dates).
    Date,
    OneOf {
        values: Vec<String>,
    },
}

/// Mass-change thresholds: a file that would delete or disable, or update, more than its share of
/// the tenant's active users is held (nothing applied) until an admin approves or discards it.
/// Each share 0 turns that hold off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Holds {
    /// Percent of active users a file may delete or disable (replace mode's absent users included).
    pub remove_percent: u8,
    /// Percent of active users a file may update.
    pub update_percent: u8,
    /// Fewer changed users than this are never held, whatever the share (a small tenant's few).
    pub min_users: u32,
    /// Days a held file waits for approval; then it is discarded with an email.
    pub expire_days: u32,
}

/// Longest `ExternalId` (ids of HR and student systems are GUIDs or short numbers).
pub const MAX_EXTERNAL_ID_CHARS: usize = 128;

/// Longest licence pool name (it is stored on every user of the pool).
pub const MAX_POOL_NAME_CHARS: usize = 64;

impl Tenant {
    /// The named pool a `LicencePool` cell means (matched regardless of case), as configured.
    pub fn pool_named(&self, cell: &str) -> Option<&str> {
        let cell = cell.trim().to_lowercase();
        self.licence_pools.keys().find(|k| k.to_lowercase() == cell).map(String::as_str)
    }
    /// The pool a user's licence counts in: `Some(name)` for a configured named pool, `None` for the
    /// default pool (also for a pool no longer configured).
    pub fn pool_of<'a>(&self, name: Option<&'a str>) -> Option<&'a str> {
        name.filter(|n| self.licence_pools.contains_key(*n))
    }
    /// The limit of a pool; `None`: unlimited (and not counted).
    pub fn pool_limit(&self, pool: Option<&str>) -> Option<u32> {
        match pool {
            None => self.licences,
            Some(name) => self.licence_pools.get(name).copied(),
        }
    }
    /// The tenant's template carries an ExternalId column (required, or named for it).
    pub fn uses_external_ids(&self) -> bool {
        self.external_id_required || self.external_id_column.is_some()
    }
    /// The header the tenant's files give the ExternalId.
    pub fn external_id_header(&self) -> &str {
        self.external_id_column.as_deref().unwrap_or("ExternalId")
    }
    /// Some pool is limited: apply reads every user a row may license.
    pub fn has_pools(&self) -> bool {
        self.licences.is_some() || !self.licence_pools.is_empty()
    }
}

/// Before-states are deleted by the bucket's lifecycle after this many days (the longest a
/// tenant may keep them).
pub const MAX_UNDO_DAYS: u32 = 90;
pub const DEFAULT_UNDO_DAYS: u32 = 30;
/// A held file's staged parts expire after 14 days (the bucket's lifecycle): approval must come first.
pub const MAX_HOLD_DAYS: u32 = 13;

impl Default for Holds {
    fn default() -> Self {
        Holds { remove_percent: 10, update_percent: 75, min_users: 10, expire_days: 7 }
    }
}

impl Holds {
    /// Never hold (replace-force, tests that mass-change on purpose).
    pub fn off() -> Self {
        Holds { remove_percent: 0, update_percent: 0, ..Holds::default() }
    }
}

/// A claim (an email about to be sent, an invite being sent) not marked done after this long
/// belongs to an invocation that has ended (the finalize function's timeout is 15 minutes) and
/// may be taken over (`Config::lease`).
pub const CLAIM_LEASE_SECS: i64 = 20 * 60;

/// How long a claim holds. Every claim (job emails, invites) is stamped with `stamp(now)` and
/// taken over when older than `stale_before(now)`: one format, so the strings compare as times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub secs: i64,
}

impl Lease {
    pub fn stamp(now: chrono::DateTime<chrono::Utc>) -> String {
        now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }
    pub fn stale_before(self, now: chrono::DateTime<chrono::Utc>) -> String {
        Self::stamp(now - chrono::Duration::seconds(self.secs))
    }
}

/// The emails a job sends, each claimed once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailKind {
    /// "Processing started" (tenants that ask for it).
    Started,
    /// The result: summary, result file, failed rows (or the rejection).
    Result,
    /// A job stopped: what was and was not applied.
    Failure,
    /// A file held for approval: its preview and how to approve or discard it.
    Held,
}

impl EmailKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EmailKind::Started => "started",
            EmailKind::Result => "result",
            EmailKind::Failure => "failure",
            EmailKind::Held => "held",
        }
    }
}

impl Tenant {
    /// A tenant with defaults for everything but its id and admins.
    pub fn new(id: impl Into<String>, admin_emails: Vec<String>) -> Self {
        Tenant {
            id: id.into(),
            name: None,
            admin_emails,
            sender: None,
            roles: vec![],
            admin_roles: vec![],
            strict_template: false,
            template_columns: vec![],
            chunk_size: None,
            notify_started: true,
            attributes: vec![],
            products: vec![],
            licences: None,
            licence_pools: BTreeMap::new(),
            external_id_required: false,
            external_id_column: None,
            holds: Holds::default(),
            undo_days: None,
            branding: Branding::default(),
        }
    }

    /// For validating a file offline, without a tenant: any role, no attributes, no catalogue.
    pub fn offline() -> Self {
        let mut t = Tenant::new("offline", vec!["offline@example.com".into()]);
        t.roles = vec!["*".into()];
        t
    }

    /// A sender SES will send from: inside the deployment's verified identity (that address, or an
    /// address of that domain or one of its subdomains). Checked at `tenant put`, so a wrong
    /// sender is refused there instead of failing every email of the tenant later.
    pub fn validate_sender(&self, identity: &str) -> Result<(), String> {
        let Some(sender) = &self.sender else { return Ok(()) };
        if sender_within(sender, identity) {
            return Ok(());
        }
        Err(format!(
            "sender {sender:?} is outside the deployment's verified SES identity {identity:?}; use an address {}, or leave sender out to use the default",
            if identity.contains('@') { format!("equal to {identity}") } else { format!("@{identity} (or a subdomain)") }
        ))
    }

    /// The tenant's names and choices in one Unicode form (`nfc`), as rows are compared in it:
    /// a role typed with a combining accent in the tenant file matches the same role in a roster.
    pub fn in_nfc(mut self) -> Self {
        use crate::nfc::nfc_string;
        let all = |v: Vec<String>| v.into_iter().map(nfc_string).collect::<Vec<_>>();
        self.roles = all(self.roles);
        self.admin_roles = all(self.admin_roles);
        self.template_columns = all(self.template_columns);
        self.products = all(self.products);
        self.licence_pools = std::mem::take(&mut self.licence_pools).into_iter().map(|(k, v)| (nfc_string(k), v)).collect();
        self.external_id_column = self.external_id_column.map(nfc_string);
        for a in &mut self.attributes {
            a.name = nfc_string(std::mem::take(&mut a.name));
            if let AttributeKind::OneOf { values } = &mut a.kind {
                *values = all(std::mem::take(values));
            }
        }
        self
    }

    pub fn validate(&self) -> Result<(), String> {
        if !is_valid_tenant_id(&self.id) {
            return Err(format!("tenant id {:?} must be 1-64 characters of lower-case letters, digits, '-' or '_'", self.id));
        }
        if self.admin_emails.is_empty() {
            return Err("admin_emails must list at least one address".into());
        }
        // One DynamoDB item holds a tenant (400 KB): a larger one was refused there, and the CLI
        // said the stack could not be reached.
        let size = serde_json::to_vec(self).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > MAX_TENANT_BYTES {
            return Err(format!(
                "the tenant's settings are {} KB, more than the {} KB a tenant can hold; shorten its lists (admin_emails, roles, products, attributes)",
                size / 1000,
                MAX_TENANT_BYTES / 1000
            ));
        }
        for e in self.admin_emails.iter().chain(self.sender.iter()) {
            // `Ann Admin <ann@x.com>` is a valid mailbox, but not an address: sent as one, its
            // `To:` header read `<Ann Admin <ann@x.com>>`, a name without an address.
            if e.contains(['<', '>']) || e.trim() != e {
                return Err(format!("{e:?}: give the address alone, without a name, angle brackets or spaces"));
            }
            if !email_address::EmailAddress::is_valid(e) {
                return Err(format!("{e:?} is not a valid email address"));
            }
            if let Err(why) = crate::address::deliverable(e) {
                return Err(format!("{e:?} {why}"));
            }
            // Result emails carry the tenant's roster: none goes to a domain made to look like another.
            if let Some(why) = crate::address::look_alike(e) {
                return Err(format!("{e:?} {why}"));
            }
        }
        // Addresses are one mailbox whatever their case: listed twice, each email went twice.
        let mut admins: Vec<String> = Vec::new();
        for e in &self.admin_emails {
            if admins.contains(&e.to_lowercase()) {
                return Err(format!("admin_emails lists {e:?} twice (addresses are the same whatever their case)"));
            }
            admins.push(e.to_lowercase());
        }
        // Names a file's cells must match: each one cell's value, at most a cell's text, and
        // one name once as cells are matched to it: roles exactly (`Staff` and `STAFF` are two),
        // products and choices whatever their ASCII case. A cell lists products with `;`.
        let exact = |n: &str| n.to_string();
        let ascii_case = |n: &str| n.to_ascii_lowercase();
        names_usable("roles", self.roles.iter(), exact)?;
        names_usable("admin_roles", self.admin_roles.iter(), exact)?;
        names_usable("products", self.products.iter(), ascii_case)?;
        if let Some(p) = self.products.iter().find(|p| p.contains(';')) {
            return Err(format!("product {p:?} has a ';': a cell lists several products with ';', so no cell can name it"));
        }
        // Columns are matched as headers are (`fields::norm`: case, spaces and marks aside).
        names_usable("template_columns", self.template_columns.iter(), crate::fields::norm)?;
        names_usable("attributes", self.attributes.iter().map(|a| &a.name), crate::fields::norm)?;
        for a in &self.attributes {
            if let AttributeKind::OneOf { values } = &a.kind {
                names_usable(&format!("attribute {:?}'s values", a.name), values.iter(), ascii_case)?;
            }
        }
        if let Some(size) = self.chunk_size
            && !crate::config::CHUNK_SIZES.contains(&size)
        {
            return Err(format!(
                "chunk_size must be between {} and {} (rows one apply invocation holds at once); it is {size}",
                crate::config::CHUNK_SIZES.start(),
                crate::config::CHUNK_SIZES.end()
            ));
        }
        if let Some(r) = self.roles.iter().find(|r| self.admin_roles.contains(r)) {
            return Err(format!("role {r:?} is listed both in roles and admin_roles"));
        }
        if let Some(c) = &self.branding.colour
            && !(c.len() == 7 && c.starts_with('#') && c[1..].chars().all(|x| x.is_ascii_hexdigit()))
        {
            return Err(format!("branding.colour {c:?} must look like #1a73e8"));
        }
        if let Some(u) = &self.branding.logo_url
            && !crate::layout::is_logo_url(u)
        {
            return Err(format!(
                "branding.logo_url {u:?} must be an https:// URL of at most 2,048 characters without quotes, spaces or brackets"
            ));
        }
        if self.holds.remove_percent > 100 || self.holds.update_percent > 100 {
            return Err("holds.remove_percent and holds.update_percent must be between 0 and 100".into());
        }
        if self.undo_days.is_some_and(|d| d == 0 || d > MAX_UNDO_DAYS) {
            return Err(format!("undo_days must be between 1 and {MAX_UNDO_DAYS}"));
        }
        if self.holds.expire_days == 0 || self.holds.expire_days > MAX_HOLD_DAYS {
            return Err(format!("holds.expire_days must be between 1 and {MAX_HOLD_DAYS} (a held file's parts are kept 14 days)"));
        }
        let mut pools: Vec<String> = Vec::new();
        for name in self.licence_pools.keys() {
            if name.trim().is_empty()
                || name.trim() != name
                || name.chars().count() > MAX_POOL_NAME_CHARS
                || name.chars().any(char::is_control)
            {
                return Err(format!(
                    "licence pool name {name:?} must be 1-{MAX_POOL_NAME_CHARS} characters without leading or trailing spaces"
                ));
            }
            if pools.contains(&name.to_lowercase()) {
                return Err(format!("licence pool names differ only in case: {name:?}"));
            }
            pools.push(name.to_lowercase());
        }
        if let Some(c) = &self.external_id_column {
            let taken = crate::fields::Field::from_header(c).is_some_and(|f| f != crate::fields::Field::ExternalId)
                || self.attributes.iter().any(|a| crate::fields::norm(&a.name) == crate::fields::norm(c));
            if c.trim().is_empty() || taken {
                return Err(format!("external_id_column {c:?} must be a header that is not a standard column or an attribute"));
            }
        }
        for a in &self.attributes {
            if a.name.trim().is_empty() {
                return Err("every attribute needs a name".into());
            }
            if crate::fields::Field::from_header(&a.name).is_some() {
                return Err(format!("attribute {:?} has the name of a standard column", a.name));
            }
            if let AttributeKind::OneOf { values } = &a.kind
                && values.is_empty()
            {
                return Err(format!("attribute {:?} is one_of but lists no values", a.name));
            }
        }
        Ok(())
    }
}

/// A tenant's list of names a cell must match: none empty, padded or over a cell's text limit,
/// none twice as `key` compares them (attributes `Site` beside `site` made a template whose own
/// columns were refused as "two columns are the attribute").
fn names_usable<'a>(what: &str, names: impl Iterator<Item = &'a String>, key: impl Fn(&str) -> String) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for n in names {
        if n.trim().is_empty() || n.trim() != n || n.chars().count() > MAX_NAME_CHARS || n.chars().any(char::is_control) {
            return Err(format!(
                "{what}: {:?} must be 1-{MAX_NAME_CHARS} characters without leading or trailing spaces or line breaks",
                crate::wording::bounded(n, 64)
            ));
        }
        if !seen.insert(key(n)) {
            // `key` says how files match the names: exactly (roles), or whatever their case.
            return Err(format!("{what} lists {n:?} twice, as files match its names"));
        }
    }
    Ok(())
}

/// The most a tenant's settings may take, as JSON (a DynamoDB item holds 400 KB).
const MAX_TENANT_BYTES: usize = 300_000;

/// The longest name a tenant may give a role, product, attribute or choice: a cell's text limit.
const MAX_NAME_CHARS: usize = 256;

/// Tenant ids become S3 key segments and DynamoDB key parts: keep them boring.
/// Whether SES sends as `sender` under the verified `identity` (an address, or a domain whose
/// subdomains it covers too).
pub fn sender_within(sender: &str, identity: &str) -> bool {
    let (sender, identity) = (sender.trim().to_ascii_lowercase(), identity.trim().to_ascii_lowercase());
    if identity.contains('@') {
        return sender == identity;
    }
    let Some((_, domain)) = sender.rsplit_once('@') else { return false };
    domain == identity || domain.ends_with(&format!(".{identity}"))
}

pub fn is_valid_tenant_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Upload mode: the path segment after the tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// New users only.
    Add,
    /// Create or update (the default).
    Upsert,
    /// Dry run: same checks (including existing state), full result file, nothing written.
    Validate,
    /// The file is the tenant's whole user list: upsert it, disable active users absent from it.
    Replace,
    /// Replace, never held for approval.
    ReplaceForce,
    /// Not a folder: a job putting back what another job changed (`undo`).
    Undo,
}

impl Mode {
    pub const NAMES: &'static [&'static str] = &["add", "upsert", "validate", "replace", "replace-force"];

    pub fn parse(s: &str) -> Option<Mode> {
        match s.to_ascii_lowercase().as_str() {
            "add" => Some(Mode::Add),
            "upsert" => Some(Mode::Upsert),
            "validate" => Some(Mode::Validate),
            "replace" => Some(Mode::Replace),
            "replace-force" => Some(Mode::ReplaceForce),
            _ => None,
        }
    }

    /// A mode as stored on a job: the folder modes and `undo`.
    pub fn parse_stored(s: &str) -> Option<Mode> {
        if s == "undo" { Some(Mode::Undo) } else { Mode::parse(s) }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Add => "add",
            Mode::Upsert => "upsert",
            Mode::Validate => "validate",
            Mode::Replace => "replace",
            Mode::ReplaceForce => "replace-force",
            Mode::Undo => "undo",
        }
    }

    pub fn is_replace(self) -> bool {
        matches!(self, Mode::Replace | Mode::ReplaceForce)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntityType {
    User,
    Org,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum Action {
    Create,
    Update,
    Upsert,
    Delete,
    Enable,
    Disable,
    /// Remove product access (the listed products, or all).
    Expire,
    /// Send the activation email again to a user who has not activated.
    Invite,
    /// Not in files: replace mode disabling a user absent from the file.
    Reconcile,
    /// Not in files: an undo job putting an item back as it was before another job wrote it.
    Restore,
}

impl Action {
    pub const NAMES: &'static [&'static str] = &["Create", "Update", "Upsert", "Delete", "Enable", "Disable", "Expire", "Invite"];

    /// Case-insensitive, without allocating (it runs once per row).
    pub fn parse(s: &str) -> Option<Action> {
        const WORDS: &[(&str, Action)] = &[
            ("", Action::Upsert),
            ("upsert", Action::Upsert),
            ("create", Action::Create),
            ("add", Action::Create),
            ("new", Action::Create),
            ("update", Action::Update),
            ("modify", Action::Update),
            ("edit", Action::Update),
            ("delete", Action::Delete),
            ("remove", Action::Delete),
            ("enable", Action::Enable),
            ("activate", Action::Enable),
            ("disable", Action::Disable),
            ("deactivate", Action::Disable),
            ("suspend", Action::Disable),
            ("expire", Action::Expire),
            ("revoke", Action::Expire),
            ("invite", Action::Invite),
            ("reinvite", Action::Invite),
            ("re-invite", Action::Invite),
            ("resend", Action::Invite),
        ];
        WORDS.iter().find(|(w, _)| w.eq_ignore_ascii_case(s)).map(|(_, a)| *a)
    }
}

impl Action {
    /// The name the chunk line's JSON uses (serde's variant name).
    pub fn variant(self) -> &'static str {
        match self {
            Action::Create => "Create",
            Action::Update => "Update",
            Action::Upsert => "Upsert",
            Action::Delete => "Delete",
            Action::Enable => "Enable",
            Action::Disable => "Disable",
            Action::Expire => "Expire",
            Action::Invite => "Invite",
            Action::Reconcile => "Reconcile",
            Action::Restore => "Restore",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Reconcile => "Disable (not in file)",
            other => other.variant(),
        })
    }
}

/// Profile fields of a user row. `None` = the cell was blank: an update leaves the stored value alone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserFields {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub phone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub org: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub department: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub groups: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub products: Vec<String>,
    /// Associations by email (normalised), e.g. `supervisor` -> `boss@x.com`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub associations: BTreeMap<String, String>,
    /// Tenant custom attributes, values normalised to their type.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub attributes: BTreeMap<String, String>,
    /// Student, Parent, Instructor...: from the Type column or the workbook sheet's name.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub user_type: Option<String>,
    /// Send the activation email if this row creates the user.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub invite: bool,
    /// When to send it (RFC 3339, UTC); now when absent.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub invite_at: Option<String>,
    /// The named licence pool the user's licence comes from; the default pool when absent.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub licence_pool: Option<String>,
    /// The feeding system's id of the person (`ExternalId`): unique in the tenant.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub external_id: Option<String>,
    /// A row's instruction, never stored: move the user to this email (`NewEmail`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub new_email: Option<String>,
    /// A row's instruction, never stored: the key (`user:<name>`) of the Username given beside
    /// an Email. A user known by it alone (a student without email) moves to the Email
    /// (`identity::plan`), rather than being left behind as a second account.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub username: Option<String>,
}

/// Association columns and the attribute each is stored as.
pub const ASSOCIATIONS: &[&str] = &["supervisor", "supervisor_manager", "parent", "instructor"];

/// The message of a row that changed nothing (its user held every value already): counted apart
/// from created and updated rows.
pub const UNCHANGED: &str = "unchanged";

/// Whether a user holds a licence (active) or not (disabled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UserStatus {
    #[default]
    Active,
    Disabled,
}

impl UserStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Active => "active",
            UserStatus::Disabled => "disabled",
        }
    }
    /// A stored value; anything but `disabled` is active (items written before statuses existed).
    pub fn parse(s: &str) -> Self {
        if s == "disabled" { UserStatus::Disabled } else { UserStatus::Active }
    }
}

impl fmt::Display for UserStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user as stored in the directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub email: String,
    pub status: UserStatus,
    pub fields: UserFields,
    /// `<job>#<row>` that created the user.
    pub created_by: String,
    /// `<job>#<row>` that wrote the user last.
    #[serde(default)]
    pub last_write: String,
    /// Group memberships added outside bulk upload (replace mode keeps them for users in the file).
    pub manual_groups: Vec<String>,
    /// The user activated their account (set by the product, not by rosterdrop).
    pub activated: bool,
    /// Immutable id given at creation (`new_user_id`); `None` for a user created before ids
    /// existed, until its next write.
    #[serde(default)]
    pub user_id: Option<String>,
}

/// A user's id, made once by the write that creates the user: the same for a retried create (it
/// comes from the row's token), different for a user deleted and created again.
pub fn new_user_id(tenant: &str, email: &str, token: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, format!("rosterdrop:user:{tenant}:{email}:{token}").as_bytes()).to_string()
}

/// One validated, normalised row, ready to apply. Travels in chunk files as JSON lines (read
/// in one pass: `row_line`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "crate::row_line::RowLine")]
pub struct RowOp {
    /// Row number as the user sees it in the file (header is row 1).
    pub row: u32,
    pub action: Action,
    #[serde(flatten)]
    pub target: Target,
    /// Organizations and association targets this file itself creates (existence not checked
    /// against the directory in a dry run, where nothing is created).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub created_in_file: Vec<String>,
    /// `Restore` operations only: what to put back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<Restore>,
}

/// An item as it was before a write: opaque to the stages, put back by the directory that read
/// it (undo). `None` where it is kept means the item did not exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Image(pub serde_json::Value);

/// What a row's write replaced, for undo.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Before {
    /// Not known: the row found its own earlier write (a retried chunk), or wrote nothing.
    #[default]
    Unknown,
    /// The item before the write (`None`: it did not exist); `active`: an active user; `pool`:
    /// the named licence pool it counted in (`None`: the default pool).
    Was { image: Option<Image>, active: bool, pool: Option<String> },
}

/// What one write of a job replaced: kept per chunk (`UndoEntry`), put back by an undo (`Restore`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    /// The token (`<job>#<row>`) the write left on the item: restored only while it is still
    /// there, so a later change is never overwritten.
    pub token: String,
    /// The item before that write; `None`: it did not exist.
    pub before: Option<Image>,
    /// `before` is an active user (restoring it takes a licence).
    #[serde(default)]
    pub active: bool,
    /// The named licence pool `before` counted in (restoring it takes a licence there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The write's before-state was not kept (its chunk was retried after writing).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unknown: bool,
}

/// What an undo puts back for one item another job wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restore {
    /// The job being undone.
    pub undoes: String,
    #[serde(flatten)]
    pub kept: Kept,
}

/// One item a job changed, kept per chunk for `undo` (`undo/<job>/`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UndoEntry {
    #[serde(flatten)]
    pub target: Target,
    #[serde(flatten)]
    pub kept: Kept,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
#[allow(clippy::large_enum_variant)] // built once per row and moved, never copied in bulk
pub enum Target {
    User {
        /// The user's key. Normalised email (trimmed, lower-cased), or `user:<username>` for users
        /// identified by username (students without email).
        email: String,
        #[serde(flatten)]
        fields: UserFields,
    },
    Org {
        name: String,
        /// The organization's contact email (normalised like a user's): no user of the tenant may
        /// have it, and no other organization.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        email: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        phone: Option<String>,
        /// The feeding system's id of the organization (a OneRoster sourcedId): resolves
        /// references from later files (`Directory::org_ids`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        external_id: Option<String>,
        /// The parent organization's name, kept as a field.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent: Option<String>,
    },
}

impl Target {
    /// An organization row without contact details.
    pub fn org(name: impl Into<String>) -> Self {
        Target::Org { name: name.into(), email: None, phone: None, external_id: None, parent: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Status {
    Success,
    Failure,
    Skipped,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Success => "Success",
            Status::Failure => "Failure",
            Status::Skipped => "Skipped",
        })
    }
}

/// What happened to one input row. Exactly one per row ends up in the result file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub row: u32,
    pub status: Status,
    pub message: String,
    /// The action the row asked for, when it could be read (counts by action in the summary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// The user concerned, for outcomes of no input row (replace mode disabling absent users).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The column at fault, when the problem is in one cell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// What a successful row did (or, in a dry run, would do): the result's Status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<Change>,
    /// The fields it changed (`changes::describe`): the result's Changes column.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub changes: String,
    /// The user's immutable id: the result's UserId column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// What a successful row did to the stored user or organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Created,
    Updated,
    Unchanged,
    Deleted,
    Disabled,
    Enabled,
    /// Not a write: a OneRoster record (an enrollment, a role, a class) read into the rows it
    /// names. Shown on its own row of the result, not counted as a row.
    Read,
}

impl Change {
    /// The word the result file's Status column shows.
    pub fn word(self) -> &'static str {
        match self {
            Change::Created => "Created",
            Change::Updated => "Updated",
            Change::Unchanged => "Unchanged",
            Change::Deleted => "Deleted",
            Change::Disabled => "Disabled",
            Change::Enabled => "Enabled",
            Change::Read => "Read",
        }
    }
}

impl Outcome {
    pub fn success(row: u32, action: Action, message: impl Into<String>) -> Self {
        Outcome { row, status: Status::Success, message: message.into(), action: Some(action), ..Outcome::blank(row) }
    }
    pub fn failure(row: u32, action: Option<Action>, message: impl Into<String>) -> Self {
        Outcome { row, status: Status::Failure, message: message.into(), action, ..Outcome::blank(row) }
    }
    pub fn skipped(row: u32, message: impl Into<String>) -> Self {
        Outcome { row, status: Status::Skipped, message: message.into(), ..Outcome::blank(row) }
    }
    fn blank(row: u32) -> Self {
        Outcome {
            row,
            status: Status::Skipped,
            message: String::new(),
            action: None,
            user: None,
            column: None,
            change: None,
            changes: String::new(),
            user_id: None,
        }
    }
    /// The word the result file's Status column shows: the change a success made, else the status.
    pub fn status_word(&self) -> String {
        match (self.status, self.change) {
            (Status::Success, Some(c)) => c.word().to_string(),
            (s, _) => s.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    /// Ingest has claimed the file and is reading it.
    Received,
    /// Chunks are out; apply is running.
    Applying,
    /// Result written, email sent.
    Completed,
    /// The whole file was refused (structural error); nothing applied.
    Rejected,
    /// Stopped after repeated failures past the deadline; the email says what was applied.
    Failed,
    /// Read and previewed, nothing applied: its changes pass the tenant's `holds` and wait for an
    /// admin to approve (then APPLYING) or discard it.
    Held,
    /// A held job discarded by an admin or left unapproved past the tenant's time, or a scheduled
    /// one cancelled; nothing applied.
    Discarded,
    /// Read and validated, nothing applied: its chunks wait for its time (`Job::run_at`), when the
    /// one-minute schedule releases them.
    Scheduled,
}

impl JobState {
    /// COMPLETED, REJECTED, FAILED or DISCARDED: nothing more happens to the job.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Completed | JobState::Rejected | JobState::Failed | JobState::Discarded)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Received => "RECEIVED",
            JobState::Applying => "APPLYING",
            JobState::Completed => "COMPLETED",
            JobState::Rejected => "REJECTED",
            JobState::Failed => "FAILED",
            JobState::Held => "HELD",
            JobState::Discarded => "DISCARDED",
            JobState::Scheduled => "SCHEDULED",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "RECEIVED" => JobState::Received,
            "APPLYING" => JobState::Applying,
            "COMPLETED" => JobState::Completed,
            "REJECTED" => JobState::Rejected,
            "FAILED" => JobState::Failed,
            "HELD" => JobState::Held,
            "DISCARDED" => JobState::Discarded,
            "SCHEDULED" => JobState::Scheduled,
            _ => return None,
        })
    }
}

/// Apply happens in phases so that rows creating organizations land before the user rows that
/// reference them, and organization deletions after the users moved out of them.
pub const PHASES: usize = 4;

/// Phase 2 is replace mode's reconcile (disable users absent from the file).
pub fn phase_of(op: &RowOp) -> usize {
    phase(matches!(op.target, Target::Org { .. }), op.action)
}

/// The phase of an operation on an organization (`org`) or a user.
pub fn phase(org: bool, action: Action) -> usize {
    match (org, action) {
        (true, Action::Delete) => 3,
        (true, _) => 0,
        (false, Action::Reconcile) => 2,
        (false, _) => 1,
    }
}

/// The key of a user identified by username instead of email.
pub fn username_key(username: &str) -> String {
    format!("user:{}", username.trim().to_lowercase())
}

/// A job as stored in the jobs table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub tenant: String,
    pub source_key: String,
    pub file_name: String,
    pub mode: Option<Mode>,
    pub state: JobState,
    /// RFC 3339.
    pub received_at: String,
    /// Where this upload stands among all uploads (`upload_order`): a directory item written by
    /// a later upload is never overwritten by this job's rows.
    pub order: String,
    /// Chunks per phase, known once ingest has planned the job.
    pub phase_chunks: Option<[u32; PHASES]>,
    /// Chunks completed per phase.
    pub phase_done: [u32; PHASES],
    pub total_rows: u32,
    /// Summary counts once completed.
    pub succeeded: u32,
    pub failed: u32,
    pub skipped: u32,
    pub message: Option<String>,
    pub completed_at: Option<String>,
    /// A scheduled file: when it is applied (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<String>,
    /// When a chunk was last counted (RFC 3339): a job that has not moved for a lease may have
    /// had a release cut off (`monitor::resume_releases`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counted_at: Option<String>,
}

impl Job {
    /// A job just received: nothing planned, nothing counted.
    pub fn received(
        id: impl Into<String>,
        tenant: impl Into<String>,
        source_key: impl Into<String>,
        file_name: impl Into<String>,
        mode: Option<Mode>,
        received_at: impl Into<String>,
    ) -> Self {
        let received_at = received_at.into();
        Job {
            id: id.into(),
            tenant: tenant.into(),
            source_key: source_key.into(),
            file_name: file_name.into(),
            mode,
            state: JobState::Received,
            order: upload_order(chrono::DateTime::parse_from_rfc3339(&received_at).ok().map(|t| t.to_utc()), None),
            received_at,
            phase_chunks: None,
            phase_done: [0; PHASES],
            total_rows: 0,
            succeeded: 0,
            failed: 0,
            skipped: 0,
            message: None,
            completed_at: None,
            run_at: None,
            counted_at: None,
        }
    }

    pub fn chunks_total(&self) -> u32 {
        self.phase_chunks.map(|p| p.iter().sum()).unwrap_or(0)
    }
    pub fn chunks_done(&self) -> u32 {
        self.phase_done.iter().sum()
    }
    /// Whether some chunk was never counted (or nothing was planned): rows of it were not applied.
    pub fn cut_short(&self) -> bool {
        !self.phase_chunks.is_some_and(|plan| plan.iter().zip(&self.phase_done).all(|(planned, done)| done >= planned))
    }
}

/// The order of an upload: the S3 event's time (when S3 finished storing the object, in
/// milliseconds), then its sequencer, which orders the uploads of one key within a millisecond
/// (S3's rule: left-pad the shorter sequencer with zeros, then compare). Fixed width, so
/// comparing the strings compares the uploads; DynamoDB conditions compare them the same way.
pub fn upload_order(event_time: Option<chrono::DateTime<chrono::Utc>>, sequencer: Option<&str>) -> String {
    let time = event_time.unwrap_or_else(chrono::Utc::now).format("%Y-%m-%dT%H:%M:%S%.3fZ");
    let seq: String = sequencer.unwrap_or("").chars().filter(char::is_ascii_hexdigit).map(|c| c.to_ascii_uppercase()).collect();
    format!("{time}#{seq:0>32}")
}

/// Mask an email for logs: `al***@ex***.com`. Never log the raw address.
pub fn mask_email(email: &str) -> String {
    let (local, domain) = email.split_once('@').unwrap_or((email, ""));
    let keep = |s: &str, n: usize| s.chars().take(n).collect::<String>();
    let (host, tld) = domain.rsplit_once('.').unwrap_or((domain, ""));
    if domain.is_empty() {
        return format!("{}***", keep(local, 1));
    }
    format!("{}***@{}***.{}", keep(local, 2), keep(host, 2), tld)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sender_must_be_inside_the_verified_identity() {
        assert!(sender_within("news@Acme.example.com", "acme.example.com"));
        assert!(sender_within("news@mail.acme.example.com", "acme.example.com"), "subdomains of a verified domain");
        assert!(!sender_within("news@evilacme.example.com", "acme.example.com"));
        assert!(!sender_within("news@example.com", "acme.example.com"));
        assert!(sender_within("rosterdrop@example.com", "rosterdrop@example.com"));
        assert!(!sender_within("other@example.com", "rosterdrop@example.com"), "an address identity is that address only");
        let mut t = Tenant::new("acme", vec!["a@acme.example.com".into()]);
        assert_eq!(t.validate_sender("example.com"), Ok(()), "no sender: the default");
        t.sender = Some("hr@acme.example.com".into());
        let err = t.validate_sender("rosterdrop@example.com").unwrap_err();
        assert!(err.contains("outside the deployment's verified SES identity \"rosterdrop@example.com\""), "{err}");
    }

    #[test]
    fn mask_email_keeps_only_a_hint() {
        assert_eq!(mask_email("alice.smith@example.com"), "al***@ex***.com");
        assert!(!mask_email("bob@corp.io").contains("bob"));
        assert_eq!(mask_email("nope"), "n***");
    }

    #[test]
    fn actions_parse_case_insensitively_with_blank_meaning_upsert() {
        assert_eq!(Action::parse(""), Some(Action::Upsert));
        assert_eq!(Action::parse("CREATE"), Some(Action::Create));
        assert_eq!(Action::parse("Disable"), Some(Action::Disable));
        assert_eq!(Action::parse("frobnicate"), None);
    }

    #[test]
    fn org_creates_come_before_users_and_org_deletes_after() {
        let org = |a| RowOp { row: 2, action: a, target: Target::org("x"), created_in_file: vec![], restore: None };
        let user = RowOp {
            row: 3,
            action: Action::Create,
            target: Target::User { email: "a@b.c".into(), fields: UserFields::default() },
            created_in_file: vec![],
            restore: None,
        };
        assert!(phase_of(&org(Action::Create)) < phase_of(&user));
        assert!(phase_of(&user) < phase_of(&org(Action::Delete)));
    }

    #[test]
    fn row_op_round_trips_through_json() {
        let op = RowOp {
            row: 7,
            action: Action::Update,
            target: Target::User {
                email: "a@b.co".into(),
                fields: UserFields { first_name: Some("A".into()), groups: vec!["g1".into()], ..Default::default() },
            },
            created_in_file: vec!["org".into()],
            restore: None,
        };
        let s = serde_json::to_string(&op).unwrap();
        assert_eq!(serde_json::from_str::<RowOp>(&s).unwrap(), op);
    }

    #[test]
    fn tenant_with_typed_attributes_round_trips_through_json() {
        let json = r#"{"id":"acme","admin_emails":["a@acme.com"],"licences":10,
            "attributes":[{"name":"Region","type":"one_of","values":["EMEA","APAC"]},{"name":"Employee Id","type":"number"}]}"#;
        let t: Tenant = serde_json::from_str(json).unwrap();
        assert_eq!(t.attributes[0].kind, AttributeKind::OneOf { values: vec!["EMEA".into(), "APAC".into()] });
        assert!(t.notify_started, "on by default");
        assert_eq!(serde_json::from_str::<Tenant>(&serde_json::to_string(&t).unwrap()).unwrap(), t);
        assert!(serde_json::from_str::<Tenant>(r#"{"id":"a","admin_emails":[],"colour":"red"}"#).is_err(), "unknown settings refused");
    }

    /// A tenant file written on a Mac can hold `Élève` with a combining accent: saved in the
    /// form rows are compared in, so a roster's `Élève` matches it whichever way it was typed.
    #[test]
    fn a_tenants_names_and_choices_are_kept_in_one_unicode_form() {
        let json = r#"{"id":"acme","admin_emails":["a@acme.com"],"roles":["E\u0301le\u0300ve"],"products":["Vide\u0301o"],
            "licence_pools":{"E\u0301quipe":5},"external_id_column":"Matricule e\u0301le\u0300ve",
            "attributes":[{"name":"Re\u0301gion","type":"one_of","values":["I\u0302le-de-France"]}]}"#;
        let t = serde_json::from_str::<Tenant>(json).unwrap().in_nfc();
        assert_eq!(t.roles, ["\u{c9}l\u{e8}ve"]);
        assert_eq!(t.products, ["Vid\u{e9}o"]);
        assert_eq!(t.licence_pools.keys().collect::<Vec<_>>(), ["\u{c9}quipe"]);
        assert_eq!(t.external_id_column.as_deref(), Some("Matricule \u{e9}l\u{e8}ve"));
        assert_eq!(t.attributes[0].name, "R\u{e9}gion");
        assert_eq!(t.attributes[0].kind, AttributeKind::OneOf { values: vec!["\u{ce}le-de-France".into()] });
        // Headers are matched in that form too.
        assert_eq!(crate::fields::norm("Re\u{301}gion"), crate::fields::norm("R\u{e9}gion"));
    }

    #[test]
    fn tenant_validation_names_the_problem() {
        let mut t = Tenant::new("Acme!", vec!["a@acme.com".into()]);
        assert!(t.validate().unwrap_err().contains("tenant id"));
        t.id = "acme".into();
        assert!(t.validate().is_ok());
        t.admin_emails = vec!["not-an-email".into()];
        assert!(t.validate().unwrap_err().contains("not a valid email"));
        // Result emails carry the roster: an admin address on a look-alike domain is refused.
        t.admin_emails = vec!["it@ex\u{430}mple.com".into()];
        assert_eq!(
            t.validate().unwrap_err(),
            "\"it@ex\u{430}mple.com\" has a domain that mixes Latin and Cyrillic letters (\"\u{430}\" is Cyrillic), as an address made to look like another does; type the address again"
        );
        t.admin_emails = vec!["it@bücher.de".into()];
        assert!(t.validate().is_ok());
    }

    #[test]
    fn a_tenant_chunk_size_must_fit_one_apply_invocation() {
        let mut t = Tenant::new("acme", vec!["a@acme.com".into()]);
        for ok in [1, 2000, crate::config::MAX_CHUNK_SIZE] {
            t.chunk_size = Some(ok);
            assert!(t.validate().is_ok(), "{ok}");
        }
        for bad in [0, crate::config::MAX_CHUNK_SIZE + 1, usize::MAX] {
            t.chunk_size = Some(bad);
            let err = t.validate().unwrap_err();
            assert!(err.starts_with("chunk_size must be between 1 and 5000") && err.ends_with(&format!("it is {bad}")), "{err}");
        }
    }

    #[test]
    fn licence_pool_names_must_be_short_trimmed_and_distinct_regardless_of_case() {
        let mut t = Tenant::new("acme", vec!["a@acme.com".into()]);
        for bad in ["", " Staff", "Staff ", "a\u{0}b", &"x".repeat(MAX_POOL_NAME_CHARS + 1)] {
            t.licence_pools = [(bad.to_string(), 1)].into();
            assert!(t.validate().unwrap_err().contains("licence pool name"), "{bad:?}");
        }
        t.licence_pools = [("Staff".to_string(), 1), ("STAFF".to_string(), 2)].into();
        assert!(t.validate().unwrap_err().contains("differ only in case"));
        t.licence_pools = [("Staff".to_string(), 1), ("Élèves".to_string(), 2)].into();
        assert!(t.validate().is_ok());
        assert_eq!(t.pool_named(" élèves "), Some("Élèves"));
        assert_eq!(t.pool_named("Teachers"), None);
        assert_eq!((t.pool_limit(None), t.pool_limit(Some("Staff"))), (None, Some(1)));
        assert_eq!(t.pool_of(Some("Removed")), None, "a pool no longer configured counts as the default");
    }

    /// Configurations `tenant put` saved that could never work: an admin written with a name
    /// (`To: <Ann Admin <a@x.com>>`), one listed twice in other cases (two emails each), a
    /// product with `;` (no cell can name it), attributes or template columns the same but for
    /// case (the template's own columns refused), an empty or 40,000-character role.
    #[test]
    fn tenant_validation_refuses_names_no_file_can_match() {
        let base = || {
            let mut t = Tenant::new("acme", vec!["a@acme.example.com".into()]);
            t.roles = vec!["Learner".into(), "Teacher".into()];
            t.products = vec!["LMS".into()];
            t
        };
        assert!(base().validate().is_ok());
        type Change = Box<dyn Fn(&mut Tenant)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|t| t.admin_emails = vec!["Ann Admin <ann@acme.example.com>".into()]), "give the address alone"),
            (Box::new(|t| t.admin_emails.push("A@ACME.example.com".into())), "lists \"A@ACME.example.com\" twice"),
            (Box::new(|t| t.products.push("LMS;Video".into())), "has a ';'"),
            (Box::new(|t| t.products.push("lms".into())), "products lists \"lms\" twice"),
            (Box::new(|t| t.roles.push("Learner".into())), "roles lists \"Learner\" twice"),
            (Box::new(|t| t.roles.push(String::new())), "roles: \"\" must be 1-256 characters"),
            (Box::new(|t| t.roles.push("x".repeat(40_000))), "must be 1-256 characters"),
            (
                Box::new(|t| {
                    t.attributes =
                        ["Site", "site"].iter().map(|n| AttributeDef { name: n.to_string(), kind: AttributeKind::Text }).collect()
                }),
                "attributes lists \"site\" twice",
            ),
            (Box::new(|t| t.template_columns = vec!["Email".into(), "email".into()]), "template_columns lists \"email\" twice"),
            (
                Box::new(|t| {
                    let values = vec!["EMEA".into(), "emea".into()];
                    t.attributes = vec![AttributeDef { name: "Region".into(), kind: AttributeKind::OneOf { values } }];
                }),
                "attribute \"Region\"'s values lists \"emea\" twice",
            ),
        ];
        for (change, says) in cases {
            let mut t = base();
            change(&mut t);
            let err = t.validate().unwrap_err();
            assert!(err.contains(says), "{says}: {err}");
        }
        let mut t = base();
        t.admin_emails = (0..20_000).map(|i| format!("admin{i}@acme.example.com")).collect();
        assert!(t.validate().unwrap_err().contains("more than the 300 KB a tenant can hold"));
        let mut t = base();
        t.roles = vec!["Grade 1".into(), "Grade-1".into(), "Élève".into(), "Staff".into(), "STAFF".into()];
        t.products = vec!["Maths, Year 7".into(), "Élève".into(), "élève".into()];
        assert!(t.validate().is_ok(), "roles match exactly, products whatever their ASCII case: {:?}", t.validate());
        let mut t = base();
        t.sender = Some("a@acme.example.com".into());
        assert!(t.validate().is_ok(), "the sender may be an admin");
        t.admin_emails.push("A@acme.example.com".into());
        assert!(t.validate().unwrap_err().contains("twice"));
    }
}
