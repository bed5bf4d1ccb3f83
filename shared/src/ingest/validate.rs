//! Row validation and normalisation. Every data row ends as either a `RowOp` to apply or an
//! `Outcome` saying exactly what to fix (row, column, problem). Rows are checked one at a time as
//! they are read; what is kept across rows is a fingerprint per key (16 bytes a row), not the rows.

use super::decode::{Table, TableHead};
use super::headers::Mapping;
use super::sheets::{USER_TYPES, row_id, user_type_of};
use super::view::{RowView, TargetView, UserView, list_items};
use crate::fields::Field;
use crate::model::{Action, AttributeKind, EntityType, Mode, Outcome, RowOp, Target, Tenant, username_key};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::hash::BuildHasher;

/// Association columns and the attribute names they are stored under.
const ASSOCIATION_FIELDS: &[(Field, &str)] = &[
    (Field::Supervisor, "supervisor"),
    (Field::SupervisorManager, "supervisor_manager"),
    (Field::Parent, "parent"),
    (Field::Instructor, "instructor"),
];

/// The first row that used a key, and whether that row creates what the key names, in one word
/// (rows stay below 2³¹: a sheet's rows are numbered from `k * SHEET_STRIDE`).
#[derive(Debug, Clone, Copy)]
struct Seen(u32);

impl Seen {
    const CREATES: u32 = 1 << 31;
    fn new(row: u32, creates: bool) -> Self {
        Seen(row & !Self::CREATES | if creates { Self::CREATES } else { 0 })
    }
    fn row(self) -> u32 {
        self.0 & !Self::CREATES
    }
    fn creates(self) -> bool {
        self.0 & Self::CREATES != 0
    }
}

/// A key's fingerprint as two halves: 12-byte table entries with the row, not 16 (a u64 would pad).
type Fingerprint = [u32; 2];

/// Checks rows one by one and remembers, across the whole file, what later rows and the
/// `created_in_file` marks need: which keys were used first by which row.
///
/// Keys are remembered as 64-bit fingerprints (SipHash with a key drawn per file), which keeps a
/// million-row file at ~12 bytes a key instead of ~100 MB of strings. Two different keys share a
/// fingerprint with probability about n²/2⁶⁵ (3 in 100 million for a million rows, different on
/// every upload); if it happens, the later row fails as a duplicate and says so, nothing is lost.
///
/// Duplicates are found once the last row is read (`resolve`), not row by row: looking each key
/// up in a file-sized table as its row goes by was a cache miss a row, an eighth of ingest's
/// time. Each key is instead appended to one of 256 lists by its fingerprint's top bits (written
/// in sequence), and each list, a few thousand keys, is checked on its own in a table that stays
/// in cache. The operation of a duplicate row is then retracted from the sink (`OpSink::retract`).
pub struct RowValidator {
    tenant: Tenant,
    mode: Mode,
    keys: std::hash::RandomState,
    /// Keys of valid operations in row order, by the top 8 bits of their fingerprint.
    log: Vec<Vec<(Fingerprint, Seen)>>,
    /// After `resolve`, when marks are needed: each part's first row per key.
    seen: Vec<hashbrown::HashMap<Fingerprint, Seen>>,
    /// Replace mode: every user the file names, valid row or not (replace never disables them).
    named_users: hashbrown::HashSet<Fingerprint>,
    /// (row offset, sheet name) of each table so far, for "row 12 of sheet Students".
    sheets: Vec<(u32, Option<String>)>,
    /// The user type the current sheet's name gives its rows (sheet "Students" -> "Student").
    sheet_type: Option<String>,
    several: bool,
    /// Whether any operation can reference something the file creates (else marks are skipped).
    creates_org: bool,
    associations: bool,
    /// The first row of each ExternalId (by fingerprint): a later row with the same id fails.
    external_ids: hashbrown::HashMap<u64, u32>,
    /// Replace mode: the ExternalIds of every user row, valid or not (a row refused for a typo
    /// still names the person whose email it changes).
    named_ids: hashbrown::HashSet<u64>,
    /// The first row of each Username (by fingerprint), given alone or beside an Email: a later
    /// row with the same one fails (two rows about one student, which could both write them).
    usernames: hashbrown::HashMap<u64, u32>,
    /// Replace mode: Username key -> the Email beside it (fingerprints), from rows without an
    /// ExternalId or NewEmail. The user known by that Username moves to the Email when no user
    /// has it (`identity::plan`): not absent then; with a user at both, the Username's is.
    username_emails: hashbrown::HashMap<Fingerprint, Fingerprint>,
}

impl RowValidator {
    /// Whether the file names this ExternalId (replace mode: a person whose email the file
    /// changes is named by their id, not by their old email).
    pub fn names_external_id(&self, id: &str) -> bool {
        let key = self.keys.hash_one(("external id", id));
        self.external_ids.contains_key(&key) || self.named_ids.contains(&key)
    }
    pub fn names_any_external_id(&self) -> bool {
        !self.external_ids.is_empty() || !self.named_ids.is_empty()
    }
    /// Replace mode: whether the user at `key` (`user:<name>`) moves to the Email a row gives
    /// beside its Username, that is, whether no user the tenant has (`has`) is at that Email.
    pub fn username_moves(&self, key: &str, has: &hashbrown::HashSet<[u32; 2]>) -> bool {
        self.username_emails.get(&self.fingerprint(EntityType::User, key)).is_some_and(|email| !has.contains(email))
    }
    /// The fingerprints of a tenant's user keys, for `username_moves`.
    pub fn user_fingerprints<'k>(&self, keys: impl Iterator<Item = &'k str>) -> hashbrown::HashSet<[u32; 2]> {
        keys.map(|k| self.fingerprint(EntityType::User, k)).collect()
    }
    pub fn names_any_username_beside_email(&self) -> bool {
        !self.username_emails.is_empty()
    }
    pub fn mode(&self) -> Mode {
        self.mode
    }
    /// A row as a person reads it ("row 12", "row 12 of sheet Students").
    pub fn row_label(&self, id: u32) -> String {
        label(id, &self.sheets, self.several)
    }
}

/// A row whose key an earlier row of the file already has: its operation is not applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Duplicate {
    pub row: u32,
    /// The earlier row, as a person reads it ("row 2", "row 2 of sheet Staff").
    pub first: String,
}

const PARTS: usize = 256;

fn part_of(fp: Fingerprint) -> usize {
    (fp[1] >> 24) as usize
}

impl RowValidator {
    pub fn new(tenant: &Tenant, mode: Mode) -> Self {
        RowValidator {
            tenant: tenant.clone(),
            mode,
            keys: std::hash::RandomState::new(),
            log: vec![Vec::new(); PARTS],
            seen: Vec::new(),
            named_users: hashbrown::HashSet::new(),
            sheets: Vec::new(),
            sheet_type: None,
            several: false,
            creates_org: false,
            associations: false,
            external_ids: hashbrown::HashMap::new(),
            named_ids: hashbrown::HashSet::new(),
            usernames: hashbrown::HashMap::new(),
            username_emails: hashbrown::HashMap::new(),
        }
    }

    /// Room for `rows` keys at once, when the file says how many rows it may have: no regrowing
    /// (whose old and new lists briefly coexist).
    pub fn reserve(&mut self, rows: usize) {
        let per_part = rows / PARTS + rows / PARTS / 8 + 8;
        for part in &mut self.log {
            part.reserve(per_part.saturating_sub(part.len()));
        }
    }

    fn fingerprint(&self, entity: EntityType, key: &str) -> Fingerprint {
        let h = self.keys.hash_one((entity == EntityType::User, key));
        [h as u32, (h >> 32) as u32]
    }

    /// A new table (sheet) begins.
    pub fn start_table(&mut self, head: &TableHead) {
        self.sheets.push((row_id(head.index, 0), head.sheet.clone()));
        self.sheet_type = head.sheet.as_deref().and_then(user_type_of);
        self.several |= head.several;
    }

    /// Check one data row of the current table: the operation to apply (borrowed from the row),
    /// or the row's final outcome.
    // The row's view (the Ok side, a borrowed field per column, 272 bytes) is larger than an outcome (128): boxing
    // the outcome would add an allocation per failed row and save no copy.
    #[allow(clippy::result_large_err)]
    pub fn check<'c, S: AsRef<str>>(
        &mut self,
        head: &TableHead,
        mapping: &Mapping,
        n: u32,
        cells: &'c [S],
    ) -> Result<RowView<'c>, Outcome> {
        let row = row_id(head.index, n);
        // Our own result columns do not make a row: a result file dropped again keeps its empty
        // rows empty (their `Skipped, empty row` is ours, not the user's).
        if cells.iter().enumerate().all(|(i, c)| c.as_ref().trim().is_empty() || mapping.is_ours(i)) {
            return Err(Outcome::skipped(row, "empty row"));
        }
        // A generated workbook's formulas filled down past its data (`=IF(A2="","",...)`): rows
        // of nothing else were empty before they read as not calculated.
        let blank_or_formula = |c: &S| matches!(c.as_ref().trim(), "" | crate::ingest::decode::NOT_CALCULATED);
        if cells.iter().all(blank_or_formula) {
            return Err(Outcome::skipped(
                row,
                "only formulas the file never calculated: open the file in Excel or LibreOffice and save it if this row has data",
            ));
        }
        self.note_named(cells, mapping);
        let width = head.headers.len();
        if let Some(extra) = cells.iter().skip(width).position(|c| !c.as_ref().trim().is_empty()) {
            return Err(Outcome::failure(
                row,
                None,
                // By number and letter: a CSV is counted, a spreadsheet shows letters.
                format!(
                    "column {} ({}) has a value but no header; add a header or remove the value",
                    width + extra + 1,
                    crate::ingest::decode::column_name(width + extra)
                ),
            ));
        }
        let sheet_type = self.sheet_type.as_deref();
        let op = validate_row(row, cells, mapping, &self.tenant, self.mode, sheet_type).map_err(|(action, column, msg)| {
            let more =
                column.as_deref().map(|c| other_problems(c, cells, mapping, &self.tenant, self.mode, sheet_type)).unwrap_or_default();
            // `first. Also: second. Also: third`, a sentence's own end kept.
            let msg = more.into_iter().fold(msg, |all, next| {
                let join = if all.ends_with(['.', '?', '!']) { " " } else { ". " };
                format!("{all}{join}Also: {next}")
            });
            Outcome { column, ..Outcome::failure(row, action, msg) }
        })?;
        if let TargetView::User(UserView { external_id: Some(id), .. }) = &op.target {
            match self.external_ids.entry(self.keys.hash_one(("external id", *id))) {
                hashbrown::hash_map::Entry::Occupied(first) => {
                    let first = label(*first.get(), &self.sheets, self.several);
                    let message = format!(
                        "duplicate ExternalId \"{}\": {first} of this file already has it; {DUPLICATE}",
                        crate::wording::quoted(id)
                    );
                    return Err(Outcome { column: Some("ExternalId".into()), ..Outcome::failure(row, Some(op.action), message) });
                }
                hashbrown::hash_map::Entry::Vacant(slot) => {
                    slot.insert(row);
                }
            }
        }
        let username = match &op.target {
            TargetView::User(u) if u.key.starts_with("user:") => Some(&*u.key),
            TargetView::User(u) => u.username.as_deref(),
            TargetView::Org { .. } => None,
        };
        if let Some(key) = username {
            match self.usernames.entry(self.keys.hash_one(("username", key))) {
                hashbrown::hash_map::Entry::Occupied(first) => {
                    let first = label(*first.get(), &self.sheets, self.several);
                    let name = crate::wording::quoted(key.strip_prefix("user:").unwrap_or(key));
                    let message = format!("duplicate Username \"{name}\": {first} of this file already has it; {DUPLICATE}");
                    return Err(Outcome { column: Some("Username".into()), ..Outcome::failure(row, Some(op.action), message) });
                }
                hashbrown::hash_map::Entry::Vacant(slot) => {
                    slot.insert(row);
                }
            }
        }
        let (entity, key, creates) = match &op.target {
            TargetView::User(u) => {
                self.associations |= !u.associations.is_empty();
                (EntityType::User, Cow::Borrowed(&*u.key), matches!(op.action, Action::Create | Action::Upsert))
            }
            TargetView::Org { name, .. } => {
                let creates = matches!(op.action, Action::Create | Action::Upsert | Action::Update);
                self.creates_org |= creates;
                (EntityType::Org, Cow::Owned(name.to_lowercase()), creates)
            }
        };
        let fp = self.fingerprint(entity, &key);
        self.log[part_of(fp)].push((fp, Seen::new(row, creates)));
        Ok(op)
    }

    /// Replace mode keeps every user the file names, whether its row is valid or not: a row
    /// refused before validation (a OneRoster verdict) is noted here too.
    /// A row refused for its Email still names whom it meant: the address read out of what was
    /// pasted (`Ann <ann@x.com>`, `mailto:`, a zero-width space, a trailing full stop, a Login
    /// column of addresses), and its ExternalId; refused rows of a replace file disabled them.
    pub fn note_named<S: AsRef<str>>(&mut self, cells: &[S], mapping: &Mapping) {
        if !self.mode.is_replace() || !is_user_row(cells, mapping) {
            return;
        }
        let mut keys = Vec::new();
        match (cell(cells, mapping, Field::Email), cell(cells, mapping, Field::Username)) {
            (Some(raw), username) => {
                keys.extend(named_addresses(raw));
                // A Username beside the Email (no ExternalId or NewEmail to say whom the row
                // means): the user known by it moves to the Email, unless one is there already.
                let plain = cell(cells, mapping, Field::ExternalId).is_none() && cell(cells, mapping, Field::NewEmail).is_none();
                if let Some(username) = username.filter(|_| plain) {
                    let from = self.fingerprint(EntityType::User, &username_key(username));
                    let to = self.fingerprint(EntityType::User, &email_key(raw));
                    self.username_emails.entry(from).or_insert(to);
                }
            }
            (None, Some(username)) => {
                keys.push(username_key(username));
                keys.extend(named_addresses(username).into_iter().filter(|k| k.contains('@')));
            }
            (None, None) => {}
        }
        for key in keys {
            let fp = self.fingerprint(EntityType::User, &key);
            self.named_users.insert(fp);
        }
        if let Some(id) = cell(cells, mapping, Field::ExternalId) {
            self.named_ids.insert(self.keys.hash_one(("external id", id)));
        }
    }

    /// After the last row: the rows whose key an earlier row already has, in row order. Their
    /// operations were handed to the sink and must be retracted. Keeps, when marks will need it
    /// (`created_in_file`), the first row of every key.
    pub fn resolve(&mut self) -> Vec<Duplicate> {
        let keep = self.may_reference_own_creations();
        let mut dups = Vec::new();
        let mut scratch = hashbrown::HashMap::new();
        for part in std::mem::take(&mut self.log) {
            let mut first: hashbrown::HashMap<Fingerprint, Seen> =
                if keep { hashbrown::HashMap::with_capacity(part.len()) } else { std::mem::take(&mut scratch) };
            for (fp, seen) in part {
                match first.entry(fp) {
                    hashbrown::hash_map::Entry::Occupied(earlier) => dups.push((seen.row(), earlier.get().row())),
                    hashbrown::hash_map::Entry::Vacant(slot) => {
                        slot.insert(seen);
                    }
                }
            }
            if keep {
                self.seen.push(first);
            } else {
                first.clear();
                scratch = first;
            }
        }
        dups.sort_unstable();
        dups.into_iter().map(|(row, first)| Duplicate { row, first: label(first, &self.sheets, self.several) }).collect()
    }

    /// Whether the file names this user (replace mode).
    pub fn names_user(&self, key: &str) -> bool {
        self.named_users.contains(&self.fingerprint(EntityType::User, key))
    }

    /// Whether any operation of the file can reference something the file itself creates.
    pub fn may_reference_own_creations(&self) -> bool {
        self.creates_org || self.associations
    }

    /// The organizations and users a user row references that this same file creates: those need
    /// not exist before the file runs. Needs the whole file seen: asked after `resolve`.
    pub fn created_in_file(&self, op: &RowOp) -> Vec<String> {
        let Target::User { fields, .. } = &op.target else { return vec![] };
        if !self.may_reference_own_creations() {
            return vec![];
        }
        let creates = |entity, key: &str| {
            let fp = self.fingerprint(entity, key);
            self.seen.get(part_of(fp)).and_then(|part| part.get(&fp)).is_some_and(|s| s.creates())
        };
        let mut refs: Vec<String> = fields.org.iter().map(|o| o.to_lowercase()).filter(|o| creates(EntityType::Org, o)).collect();
        refs.extend(fields.associations.values().filter(|e| creates(EntityType::User, e)).cloned());
        refs.sort();
        refs.dedup();
        refs
    }
}

/// Tables already in memory, validated: the unit tests (ingest and the CLI go through `Ingester`).
#[cfg(test)]
pub type Validated = super::stream::Collected;

#[cfg(test)]
pub fn validate(table: &Table, mapping: &Mapping, tenant: &Tenant, mode: Mode) -> Validated {
    validate_sheets(&[(table, mapping)], tenant, mode).0
}

/// Validate every sheet of a file; keys are unique across sheets.
#[cfg(test)]
pub fn validate_sheets(sheets: &[(&Table, &Mapping)], tenant: &Tenant, mode: Mode) -> (Validated, RowValidator) {
    use super::stream::OpSink;
    let mut v = RowValidator::new(tenant, mode);
    let mut out = Validated::default();
    for (table, mapping) in sheets {
        let head = table.head(sheets.len() > 1);
        v.start_table(&head);
        for (n, cells) in &table.rows {
            match v.check(&head, mapping, *n, cells) {
                Ok(op) => out.op(&op),
                Err(o) => out.outcome(o),
            }
            .expect("memory sinks do not fail");
        }
    }
    out.retract(&v.resolve()).expect("memory sinks do not fail");
    for op in &mut out.ops {
        op.created_in_file = v.created_in_file(op);
    }
    (out, v)
}

/// The outcome of a duplicate row, from its retracted operation.
pub fn duplicate_outcome(op: &RowOp, first: &str) -> Outcome {
    let (what, column, key) = match &op.target {
        Target::User { email, .. } => ("email", "Email", email.clone()),
        Target::Org { name, .. } => ("organization", "OrgName", name.to_lowercase()),
    };
    let message = format!("duplicate {what}: {first} of this file already has {key}; {DUPLICATE}");
    Outcome { column: Some(column.into()), ..Outcome::failure(op.row, Some(op.action), message) }
}

/// How a row id reads to a person: "row 12", or "row 12 of sheet Students" in a workbook of several.
pub fn row_label(id: u32, tables: &[&Table]) -> String {
    let sheets: Vec<(u32, Option<String>)> = tables.iter().map(|t| (row_id(t.index, 0), t.sheet.clone())).collect();
    label(id, &sheets, tables.len() > 1)
}

fn label(id: u32, sheets: &[(u32, Option<String>)], several: bool) -> String {
    match sheets.iter().rev().find(|(offset, _)| id >= *offset) {
        Some((offset, sheet)) if several => format!("row {} of sheet {}", id - offset, sheet.as_deref().unwrap_or("?")),
        _ => format!("row {id}"),
    }
}

/// (action when known, the column at fault when there is one, problem and fix)
type RowError = (Option<Action>, Option<String>, String);

/// Columns whose value decides what a row is: checked again without them, a row would be read
/// as another kind of row, and its other problems would be another row's.
const DECIDING: [&str; 6] = ["Type", "Action", "Email", "Username", "OrgName", "NewEmail"];

/// Problems of a failing row after its first (in `column`), at most 3: the row checked again with
/// each failing cell left empty, for as long as each check fails in a cell not emptied yet. A
/// row with three problems took three drops of its failed-rows file to learn them, one a drop.
fn other_problems<S: AsRef<str>>(
    column: &str,
    cells: &[S],
    m: &Mapping,
    tenant: &Tenant,
    mode: Mode,
    sheet_type: Option<&str>,
) -> Vec<String> {
    let index = |name: &str| {
        m.fields()
            .find(|(f, _)| f.name() == name)
            .map(|(_, i)| i)
            .or_else(|| m.custom.iter().find(|(a, _)| tenant.attributes.get(*a).is_some_and(|d| d.name == name)).map(|(_, i)| *i))
            .or_else(|| m.their_status.filter(|_| name == "Status"))
    };
    let mut cells: Vec<&str> = cells.iter().map(AsRef::as_ref).collect();
    let (mut column, mut emptied, mut more) = (column.to_string(), Vec::new(), Vec::new());
    let mut names: Vec<String> = Vec::new();
    while more.len() < 3 && !DECIDING.contains(&column.as_str()) {
        let Some(i) = index(&column).filter(|i| !emptied.contains(i) && *i < cells.len()) else { break };
        emptied.push(i);
        cells[i] = "";
        names.push(column.clone());
        match validate_row(0, &cells, m, tenant, mode, sheet_type) {
            // Not a problem the emptying made (`ScheduledDate ... set InviteUser to Yes` once
            // InviteUser was emptied): one naming an emptied column ends the search.
            Err((_, Some(next), msg))
                if index(&next).is_some_and(|j| !emptied.contains(&j)) && !names.iter().any(|n| msg.contains(n.as_str())) =>
            {
                more.push(msg);
                column = next;
            }
            _ => break,
        }
    }
    more
}

/// Longest text a profile cell may hold: keeps a user item well under DynamoDB's 1 KB write unit
/// for real data, and far from its 400 KB item limit for hostile data.
const MAX_TEXT: usize = 256;

/// More than `MAX_TEXT` characters (counted only when the bytes could be that many).
fn too_long(v: &str) -> bool {
    v.len() > MAX_TEXT && v.chars().count() > MAX_TEXT
}

/// A `Type` value that makes the row an organization.
pub fn is_org_type(t: &str) -> bool {
    ["org", "organization", "organisation"].iter().any(|w| w.eq_ignore_ascii_case(t.trim()))
}

/// A non-empty row that is not an organization: a user row, which needs Email or Username.
pub fn is_user_row<S: AsRef<str>>(cells: &[S], m: &Mapping) -> bool {
    // Our own result columns make no row (a result file's empty row says `Skipped, empty row`).
    let filled = cells.iter().enumerate().any(|(i, c)| !c.as_ref().trim().is_empty() && !m.is_ours(i));
    filled && !cell(cells, m, Field::Type).is_some_and(is_org_type)
}

/// The trimmed, non-empty value of a field (borrowed: a row allocates only what its operation keeps).
/// Invisible characters at either end go with the spaces: a cell of only a zero-width space is
/// blank, and `E100<U+200B>` pasted from a web page is the id E100.
fn cell<'c, S: AsRef<str>>(cells: &'c [S], m: &Mapping, f: Field) -> Option<&'c str> {
    m.column(f).and_then(|i| cells.get(i)).map(|v| trimmed(v.as_ref())).filter(|v| !v.is_empty())
}

/// `v` without spaces or invisible characters at either end.
fn trimmed(v: &str) -> &str {
    let v = v.trim();
    // Most cells have none: no second scan of their characters.
    if v.starts_with(crate::wording::shows_as_nothing) || v.ends_with(crate::wording::shows_as_nothing) {
        v.trim_matches(|c: char| c.is_whitespace() || crate::wording::shows_as_nothing(c))
    } else {
        v
    }
}

/// Excel's and LibreOffice's formula errors as a cell shows them.
fn is_formula_error(v: &str) -> bool {
    matches!(
        v,
        "#N/A"
            | "#REF!"
            | "#DIV/0!"
            | "#VALUE!"
            | "#NAME?"
            | "#NUM!"
            | "#NULL!"
            | "#SPILL!"
            | "#CALC!"
            | "#GETTING_DATA"
            | "#DATA!"
            | "Err:502"
            | "Err:504"
            | "Err:508"
            | "Err:511"
            | "Err:522"
    )
}

/// A number attribute's value: digits with an optional sign, a `.` for decimals, and commas only
/// between groups of three digits before it (`1,234,567.5`, as a spreadsheet shows thousands).
/// Every comma used to be dropped, so a decimal comma stored `2,50` as 250 and `1.234,5` as
/// 1.2345; more than 15 digits were kept as a double's nearest value, not the digits given.
fn roster_number(value: &str) -> std::result::Result<f64, &'static str> {
    const HOW: &str = "is not a number as a roster writes one: use a dot for decimals and no other separator (1234.5, or 1,234.5 with commas between thousands)";
    let digits = value.strip_prefix(['-', '+']).unwrap_or(value);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mut groups = whole.split(',');
    let first = groups.next().unwrap_or_default();
    let grouped = whole.contains(',') && (1..=3).contains(&first.len()) && groups.all(|g| g.len() == 3 && all_digits(g));
    let whole_ok = all_digits(first) && (grouped || !whole.contains(','));
    if whole.is_empty() && fraction.is_empty() || !whole_ok || !all_digits(fraction) || (digits.ends_with('.') && fraction.is_empty()) {
        return Err(HOW);
    }
    let significant = whole.replace(',', "") + fraction;
    let significant = significant.trim_start_matches('0').trim_end_matches('0');
    if significant.len() > 15 {
        return Err("has more than 15 digits, more than a number keeps: if it is an identifier, make the attribute a text one");
    }
    value.replace(',', "").parse::<f64>().map_err(|_| HOW)
}

/// A person's status as HR and student systems export it when they have left or are barred.
fn is_leaver_status(v: &str) -> bool {
    const LEAVER: &[&str] = &[
        "terminated",
        "inactive",
        "disabled",
        "deactivated",
        "deleted",
        "suspended",
        "leaver",
        "left",
        "withdrawn",
        "former",
        "removed",
        "retired",
        "resigned",
        "dismissed",
        "expired",
        "archived",
        "closed",
        "blocked",
        "locked",
        "separated",
        "ended",
    ];
    LEAVER.iter().any(|w| w.eq_ignore_ascii_case(v))
}

/// A duplicate row's fate and its fix: its failed row, dropped again as it is, would be applied
/// over the first row's values.
const DUPLICATE: &str = "only the first row is applied. Fix this row if it is another one, or delete it: dropped again as it is, it would change what the first row applied";

/// A long number in a spreadsheet's General form (`1.23457E+18`, `4.47911E+11`): what Excel
/// shows, and writes when it saves as CSV, for an id or phone number typed as a number. No
/// roster value is written this way; stored, every id of the column would be the same few digits.
fn is_shortened_number(v: &str) -> bool {
    // Every mapped cell of every row comes here: most start with a letter and need no search.
    if !v.as_bytes().first().is_some_and(|b| b.is_ascii_digit() || *b == b'-') {
        return false;
    }
    let Some((mantissa, exponent)) = v.split_once(['E', 'e']) else { return false };
    let mantissa = mantissa.strip_prefix('-').unwrap_or(mantissa);
    // A comma where the spreadsheet's language writes decimals with one (`1,23457E+18`).
    let (whole, fraction) = mantissa.split_once(['.', ',']).unwrap_or((mantissa, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let exponent = exponent.strip_prefix(['+', '-']).filter(|e| digits(e) && e.len() >= 2);
    whole.len() == 1 && digits(whole) && digits(fraction) && exponent.is_some()
}

/// What a number in a spreadsheet's short form kept (`is_shortened_number`): `1.23457E+18` holds
/// 6 of an id's 19 digits (General format shows 6 significant digits, and saves them so as CSV).
fn shortened_digits(v: &str) -> String {
    let (mantissa, exponent) = v.split_once(['E', 'e']).unwrap_or((v, ""));
    let kept = mantissa.bytes().filter(u8::is_ascii_digit).count();
    match exponent.strip_prefix('+').and_then(|e| e.parse::<usize>().ok()) {
        Some(e) if e + 1 > kept => format!("the file holds only the first {kept} of its {} digits", e + 1),
        _ => "the file holds it rounded, not as it was typed".into(),
    }
}

fn validate_row<'c, S: AsRef<str>>(
    row: u32,
    cells: &'c [S],
    m: &Mapping,
    tenant: &Tenant,
    mode: Mode,
    sheet_type: Option<&str>,
) -> Result<RowView<'c>, RowError> {
    let get = |f: Field| cell(cells, m, f);
    // A spreadsheet formula's error (a lookup that found nothing) is not a value: stored, every
    // user of the lookup would get "#N/A" as their department.
    let errors = m
        .fields()
        .filter(|(f, _)| !matches!(f, Field::Status | Field::Message | Field::Changes | Field::UserId | Field::OneRosterRecords))
        .map(|(f, col)| (f.name().to_string(), col));
    let custom = m.custom.iter().map(|(idx, col)| (tenant.attributes[*idx].name.clone(), *col));
    // The row's action as its Action cell says, for the summary's By action of a row failing
    // before its action is checked (it was counted under "invalid Type or Action").
    let declared = Action::parse(get(Field::Action).unwrap_or_default())
        .map(|a| if mode == Mode::Add && matches!(a, Action::Upsert) { Action::Create } else { a });
    for (name, col) in errors.chain(custom) {
        let value = cells.get(col).map(|c| c.as_ref().trim()).unwrap_or_default();
        if value == crate::ingest::decode::NOT_CALCULATED {
            return Err((
                declared,
                Some(name.clone()),
                format!(
                    "{name} is a formula the file never calculated (a program wrote the workbook without computing its formulas, so it holds no value for it): \
                     open the file in Excel or LibreOffice, save it, and upload it again"
                ),
            ));
        }
        if is_formula_error(value) {
            return Err((
                declared,
                Some(name.clone()),
                format!(
                    "{name} is {value}, a spreadsheet formula's error, not a value: fix the formula (or type the value) and upload the row again"
                ),
            ));
        }
        if is_shortened_number(value) {
            return Err((
                declared,
                Some(name.clone()),
                format!(
                    "{name} is {value}, a long number as a spreadsheet shows it: {}. \
                     Format the {name} column as Text, type the full values again and upload the row again",
                    shortened_digits(value)
                ),
            ));
        }
    }
    let mut user_type = sheet_type.map(str::to_string);
    let entity = match get(Field::Type) {
        None => EntityType::User,
        Some(t) if is_org_type(t) => EntityType::Org,
        Some(t) if ["user", "person"].iter().any(|w| w.eq_ignore_ascii_case(t)) => EntityType::User,
        Some(t) => match user_type_of(t) {
            Some(ut) => {
                user_type = Some(ut);
                EntityType::User
            }
            None => {
                return Err((None, Some("Type".into()), {
                    let t = crate::wording::quoted(t);
                    format!("Type \"{t}\" is not one of Org, {}", USER_TYPES.join(", "))
                }));
            }
        },
    };
    let raw_action = get(Field::Action).unwrap_or_default();
    let mut action = Action::parse(raw_action).ok_or_else(|| {
        (None, Some("Action".into()), {
            let raw_action = crate::wording::quoted(raw_action);
            format!("Action \"{raw_action}\" is not one of {} (blank means Upsert)", Action::NAMES.join(", "))
        })
    })?;
    if mode == Mode::Add {
        action = match action {
            Action::Upsert | Action::Create => Action::Create,
            other => {
                return Err((
                    Some(other),
                    Some("Action".into()),
                    format!("Action {other} is not allowed in add mode, which only creates; upload to the upsert folder instead"),
                ));
            }
        };
    }
    if mode.is_replace() && !matches!(action, Action::Upsert | Action::Create | Action::Update) {
        return Err((
            Some(action),
            Some("Action".into()),
            format!("Action {action} is not allowed in replace mode: the file lists the users to keep; leave users out to disable them"),
        ));
    }
    // An HR export's own Status saying the person left: ignored, the row would create or keep an
    // active user.
    // Only rows that keep an account active or make one (Expire only takes products away): an
    // explicit Disable, Delete or Enable says what to do, and organizations have no account.
    if entity == EntityType::User
        && matches!(action, Action::Create | Action::Update | Action::Upsert | Action::Invite | Action::Expire)
        && let Some(status) = m.their_status.and_then(|c| cells.get(c)).map(|c| c.as_ref().trim()).filter(|s| is_leaver_status(s))
    {
        let status = crate::wording::quoted(status);
        let how = if mode.is_replace() {
            "leave the row out of the file to disable the user"
        } else {
            "write Disable (or Delete) in the Action column to end the account"
        };
        return Err((
            Some(action),
            Some("Status".into()),
            format!(
                "Status is \"{status}\", but rosterdrop does not read a Status column, so this row would keep the user active: {how}, or clear the Status cell to keep them"
            ),
        ));
    }
    let fail_at = |column: &str, msg: String| (Some(action), Some(column.to_string()), msg);
    let too_long_at =
        |f: Field, v: &str| fail_at(f.name(), format!("{} is {} characters long; the limit is {MAX_TEXT}", f.name(), v.chars().count()));
    match entity {
        EntityType::Org => {
            let name = get(Field::OrgName)
                .ok_or_else(|| fail_at("OrgName", "OrgName is empty; an Org row needs the organization's name".into()))?;
            if too_long(name) {
                return Err(too_long_at(Field::OrgName, name));
            }
            if !matches!(action, Action::Create | Action::Update | Action::Upsert | Action::Delete) {
                return Err(fail_at(
                    "Action",
                    format!("Action {action} does not apply to organizations (use Create, Update, Upsert or Delete)"),
                ));
            }
            // Contact details: the email checked as a user's would be (no user may share it).
            let email = get(Field::Email).map(|raw| checked_email(raw).map_err(|m| fail_at("Email", m))).transpose()?;
            let phone = get(Field::Phone);
            let parent = get(Field::ParentOrg);
            for (field, value) in [(Field::Phone, phone), (Field::ParentOrg, parent)] {
                if let Some(v) = value.filter(|v| too_long(v)) {
                    return Err(too_long_at(field, v));
                }
            }
            if parent.is_some_and(|p| p.eq_ignore_ascii_case(name)) {
                return Err(fail_at("ParentOrg", "ParentOrg cannot be the organization itself".into()));
            }
            let external_id = get(Field::ExternalId);
            if let Some(id) = external_id {
                check_external_id(id).map_err(|m| fail_at("ExternalId", m))?;
            }
            Ok(RowView { row, action, target: TargetView::Org { name, email, phone, external_id, parent } })
        }
        EntityType::User => {
            let mut associations = BTreeMap::new();
            for (field, attr) in ASSOCIATION_FIELDS {
                if let Some(raw) = get(*field) {
                    let email = email_key(raw);
                    if !is_valid_email(&email) {
                        return Err(fail_at(field.name(), {
                            let (quoted, hint) = (crate::wording::quoted(raw), email_hint(raw));
                            format!("{} \"{quoted}\" is not a valid email address{hint}", field.name())
                        }));
                    }
                    associations.insert(attr.to_string(), email);
                }
            }
            let username = get(Field::Username);
            let key = match (get(Field::Email), username) {
                (Some(raw), _) => checked_email(raw).map_err(|m| fail_at("Email", m))?,
                (None, Some(username)) => {
                    // The guardian is needed to reach the user; ending an account needs none.
                    if !associations.contains_key("parent") && !matches!(action, Action::Delete | Action::Disable) {
                        return Err(fail_at("Parent", {
                            let username = crate::wording::quoted(username);
                            format!("Username \"{username}\" has no Email, so the row needs a Parent (the parent's email)")
                        }));
                    }
                    Cow::Owned(username_key(username))
                }
                (None, None) => {
                    return Err(fail_at(
                        "Email",
                        "Email is empty; every user row needs an email address (or a Username and a Parent)".into(),
                    ));
                }
            };
            if let Some((attr, _)) = associations.iter().find(|(_, e)| **e == key) {
                return Err(fail_at(&association_column(attr), format!("{} cannot be the user themself", attr.replace('_', " "))));
            }
            let role = get(Field::RoleName);
            if let Some(r) = role {
                check_role(r, tenant).map_err(|m| fail_at("RoleName", m))?;
            }
            // A list cell is held to the text limit like Groups: unbounded, 2,000 rows of 5,000
            // codes made a chunk apply could not hold in memory, and one cell of 2 million codes
            // took ingest's de-duplication past its timeout.
            if let Some(v) = get(Field::Products).filter(|v| too_long(v)) {
                return Err(too_long_at(Field::Products, v));
            }
            let mut products: Vec<String> = Vec::new();
            for p in get(Field::Products).into_iter().flat_map(list_items) {
                let p = check_product(p, tenant).map_err(|m| fail_at("Products", m))?;
                // Products are stored as a set, and DynamoDB refuses a set with a repeated member.
                if !products.contains(&p) {
                    products.push(p);
                }
            }
            let mut attributes = BTreeMap::new();
            for (idx, col) in &m.custom {
                let def = &tenant.attributes[*idx];
                if let Some(v) = cells.get(*col).map(|v| trimmed(v.as_ref())).filter(|v| !v.is_empty()) {
                    attributes.insert(def.name.clone(), check_attribute(&def.name, &def.kind, v).map_err(|m| fail_at(&def.name, m))?);
                }
            }
            let invite = match get(Field::InviteUser) {
                None => false,
                Some(v) => match v.to_ascii_lowercase().as_str() {
                    "true" | "yes" | "y" | "1" | "x" => true,
                    "false" | "no" | "n" | "0" => false,
                    _ => {
                        return Err(fail_at("InviteUser", {
                            let v = crate::wording::quoted(v);
                            format!("InviteUser \"{v}\" must be TRUE or FALSE")
                        }));
                    }
                },
            };
            let invite_at = get(Field::ScheduledDate).map(parse_when).transpose().map_err(|m| fail_at("ScheduledDate", m))?;
            // A date says when the activation email goes: without one asked for, it went unsent
            // and the row said nothing of it.
            if invite_at.is_some() && !invite && matches!(action, Action::Create | Action::Upsert | Action::Update) {
                return Err(fail_at(
                    "ScheduledDate",
                    "ScheduledDate says when to send the activation email, but the row asks for none: set InviteUser to Yes, or clear ScheduledDate".into(),
                ));
            }
            let licence_pool = get(Field::LicencePool).map(|p| check_pool(p, tenant)).transpose().map_err(|m| fail_at("LicencePool", m))?;
            let external_id = get(Field::ExternalId);
            if let Some(id) = external_id {
                check_external_id(id).map_err(|m| fail_at("ExternalId", m))?;
            } else if tenant.external_id_required {
                return Err(fail_at(
                    "ExternalId",
                    format!("{} is empty; this tenant matches every user by it", tenant.external_id_header()),
                ));
            }
            let new_email = match get(Field::NewEmail) {
                None => None,
                Some(_) if external_id.is_some() => {
                    return Err(fail_at(
                        "NewEmail",
                        "a row with an ExternalId changes the email by giving the new one in Email; leave NewEmail blank".into(),
                    ));
                }
                Some(_) if !matches!(action, Action::Update | Action::Upsert | Action::Invite) => {
                    return Err(fail_at(
                        "NewEmail",
                        format!("NewEmail changes an existing user's email: use it with Update, Upsert or Invite, not {action}"),
                    ));
                }
                Some(raw) => {
                    let email = checked_email(raw).map_err(|m| fail_at("NewEmail", m.replacen("Email", "NewEmail", 1)))?;
                    if email == key {
                        return Err(fail_at("NewEmail", "NewEmail is the same as Email; leave it blank or give the new address".into()));
                    }
                    Some(email.into_owned())
                }
            };
            // Beside an Email, the Username finds a student known by it alone: an Update or Upsert
            // row gives them the Email (`identity::plan`). ExternalId and NewEmail say whom the
            // row means themselves.
            let known_by = match (username, key.starts_with("user:"), external_id.is_some() || new_email.is_some()) {
                (Some(name), false, false) => Some(username_key(name)),
                _ => None,
            };
            if (invite || action == Action::Invite) && key.starts_with("user:") {
                return Err(fail_at("InviteUser", "a user without an Email cannot be sent an activation email".into()));
            }
            let user = UserView {
                first_name: get(Field::FirstName),
                last_name: get(Field::LastName),
                phone: get(Field::Phone),
                org: get(Field::OrgName),
                role,
                department: get(Field::Department),
                groups: get(Field::Group),
                products,
                associations,
                attributes,
                user_type,
                invite,
                invite_at,
                licence_pool,
                external_id,
                new_email,
                username: known_by,
                key,
            };
            for (f, v) in [
                (Field::FirstName, user.first_name),
                (Field::LastName, user.last_name),
                (Field::Phone, user.phone),
                (Field::OrgName, user.org),
                (Field::Department, user.department),
                (Field::Group, user.groups),
                (Field::Username, username),
            ] {
                if let Some(v) = v.filter(|v| too_long(v)) {
                    return Err(too_long_at(f, v));
                }
            }
            Ok(RowView { row, action, target: TargetView::User(user) })
        }
    }
}

/// An ExternalId as kept: at most `MAX_EXTERNAL_ID_CHARS`, no control characters (the cell is trimmed).
pub(crate) fn check_external_id(id: &str) -> std::result::Result<(), String> {
    let max = crate::model::MAX_EXTERNAL_ID_CHARS;
    if id.len() > max && id.chars().count() > max {
        return Err(format!("ExternalId is {} characters long; the limit is {max}", id.chars().count()));
    }
    if id.chars().any(char::is_control) {
        return Err(format!("ExternalId \"{}\" contains a control character", crate::wording::quoted(id)));
    }
    // Inside the id, an invisible character makes another id that looks the same.
    if id.chars().any(crate::wording::shows_as_nothing) {
        return Err(format!("ExternalId \"{}\" contains an invisible character; type the id again without it", crate::wording::quoted(id)));
    }
    Ok(())
}

/// The configured name of the pool a `LicencePool` cell names.
fn check_pool(cell: &str, tenant: &Tenant) -> std::result::Result<String, String> {
    if let Some(name) = tenant.pool_named(cell) {
        return Ok(name.to_string());
    }
    let cell = crate::wording::quoted(cell);
    if tenant.licence_pools.is_empty() {
        return Err(format!("LicencePool \"{cell}\": this tenant has no named licence pools; leave the column blank"));
    }
    let names: Vec<&str> = tenant.licence_pools.keys().map(String::as_str).collect();
    Err(format!("unknown licence pool \"{cell}\"; this tenant's pools are {}", names.join(", ")))
}

/// An Email cell as a key: lower-cased, a valid address we can deliver to, its domain in one
/// spelling (`address::canonical`).
fn checked_email(raw: &str) -> std::result::Result<Cow<'_, str>, String> {
    let email = lowercase(raw);
    let valid = is_valid_email(&email);
    let sent = if valid { crate::address::deliverable(&email).map(|a| a.len()) } else { Ok(0) };
    let deliverable = sent.clone().map(drop);
    // `ａｎｎ＠example.com`: no @ to the reader, and letters outside ASCII to the mail service.
    if (!valid || deliverable == Err(crate::address::Undeliverable::LocalPart))
        && let Some(half) = crate::address::half_width(raw.trim()).filter(|h| checked_email(h).is_ok())
    {
        return Err(format!(
            "Email \"{}\" is typed in full-width characters; type it in half-width ones: \"{}\"",
            crate::wording::quoted(raw),
            crate::wording::quoted(&half)
        ));
    }
    if !valid {
        return Err(format!("Email \"{}\" is not a valid email address{}", crate::wording::quoted(raw), email_hint(raw)));
    }
    if let Err(why) = deliverable {
        return Err(format!("Email \"{}\" {why}", crate::wording::quoted(raw)));
    }
    // Mail servers take a path of at most 256 characters, its angle brackets included (RFC
    // 5321 4.5.3.1.3): a longer address is accepted here and bounces.
    if let Ok(len @ 255..) = sent {
        return Err(format!(
            "Email \"{}\" is {len} characters long as it is sent, and an address can have at most 254; no mail can be delivered to it",
            crate::wording::quoted(raw)
        ));
    }
    if let Some(why) = crate::address::look_alike(&email) {
        return Err(format!("Email \"{}\" {why}", crate::wording::quoted(raw)));
    }
    Ok(match email {
        Cow::Borrowed(e) => crate::address::canonical(e),
        // Lower-cased already: a second copy only when the domain changes spelling too.
        Cow::Owned(e) => match crate::address::canonical(&e) {
            Cow::Owned(canonical) => Cow::Owned(canonical),
            Cow::Borrowed(_) => Cow::Owned(e),
        },
    })
}

/// What to fix in an address that is not one, for the shapes people paste: `Ann Lee
/// <ann@x.com>` from a mail program, `mailto:` from a web page, two addresses in one cell, a
/// sentence's last full stop, a domain without its ending.
fn email_hint(raw: &str) -> String {
    let quoted = |s: &str| format!("\"{}\"", crate::wording::quoted(s));
    let raw = raw.trim();
    if let Some((_, inner)) = raw.rsplit_once('<')
        && let Some(inner) = inner.strip_suffix('>')
        && is_valid_email(&lowercase(inner.trim()))
    {
        return format!(": keep only the address, {}", quoted(inner.trim()));
    }
    if let Some(rest) = raw.get(..7).filter(|p| p.eq_ignore_ascii_case("mailto:")).map(|_| &raw[7..])
        && is_valid_email(&lowercase(rest.trim()))
    {
        return format!(": remove \"mailto:\" and keep {}", quoted(rest.trim()));
    }
    if raw.contains("@@") {
        return ": it has two @ in a row".into();
    }
    if raw.matches('@').count() > 1 {
        return ": the cell holds more than one address; give each person a row of their own".into();
    }
    if let Some(last) = raw.chars().last().filter(|c| matches!(c, '.' | ',' | ';' | ':'))
        && is_valid_email(&lowercase(&raw[..raw.len() - last.len_utf8()]))
    {
        return format!(": remove the \"{last}\" at its end");
    }
    // `lee@example,com`: a comma typed for the dot.
    if let Some((local, domain)) = raw.rsplit_once('@')
        && domain.contains(',')
        && !domain.contains('.')
    {
        let fixed = format!("{local}@{}", domain.replace(',', "."));
        if is_valid_email(&lowercase(&fixed)) {
            return format!(": it has a comma where a dot belongs; type {}", quoted(&fixed));
        }
    }
    match raw.rsplit_once('@') {
        None => ": it has no @".into(),
        Some((_, domain)) if !domain.is_empty() && !domain.contains('.') => {
            // Quoted: the email's digest groups messages by their words, not their values.
            format!(": the part after @ must be a whole domain, such as {}", quoted(&format!("{domain}.com")))
        }
        _ => String::new(),
    }
}

/// The keys an Email cell may mean: as given, and each address read out of it when it is not
/// one (`Ann Lee <ann@x.com>`, `mailto:ann@x.com`, `ann@x.com.`, an invisible character, several
/// addresses).
fn named_addresses(raw: &str) -> Vec<String> {
    let mut keys = vec![email_key(raw)];
    // A cell longer than a few addresses is no pasted address: read as given (each piece would
    // be compared with every other: a 150 MB cell of addresses, 10^13 comparisons).
    if is_valid_email(&keys[0]) || raw.len() > 512 {
        return keys;
    }
    let visible: String = raw.chars().filter(|c| !matches!(c, '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}')).collect();
    let pieces = visible.split(|c: char| c.is_whitespace() || matches!(c, ',' | ';'));
    for piece in pieces.map(|p| p.trim_matches(|c: char| matches!(c, '<' | '>' | '"' | '\'' | '(' | ')' | '[' | ']' | '.' | ':'))) {
        let piece = piece.get(..7).filter(|p| p.eq_ignore_ascii_case("mailto:")).map_or(piece, |_| &piece[7..]);
        let key = email_key(piece);
        if piece.contains('@') && is_valid_email(&key) && !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys
}

/// An email cell as the key `checked_email` gives, for cells only looked up (not validated).
fn email_key(raw: &str) -> String {
    crate::address::canonical(&lowercase(raw)).into_owned()
}

/// Lower-cased, borrowed when it already is (emails mostly are).
fn lowercase(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase() || !b.is_ascii()) { Cow::Owned(s.to_lowercase()) } else { Cow::Borrowed(s) }
}

fn association_column(attr: &str) -> String {
    ASSOCIATION_FIELDS.iter().find(|(_, a)| *a == attr).map(|(f, _)| f.name().to_string()).unwrap_or_else(|| attr.to_string())
}

/// ScheduledDate: `YYYY-MM-DD` (midnight UTC), `YYYY-MM-DD HH:MM[:SS]` (UTC) or RFC 3339.
fn parse_when(value: &str) -> Result<String, String> {
    use chrono::{NaiveDate, NaiveDateTime, TimeZone, Utc};
    let v = value.trim();
    let parsed = chrono::DateTime::parse_from_rfc3339(v)
        .map(|d| d.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"]
                .iter()
                .find_map(|f| NaiveDateTime::parse_from_str(v, f).ok())
                .map(|d| Utc.from_utc_datetime(&d))
        })
        .or_else(|| NaiveDate::parse_from_str(v, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0)).map(|d| Utc.from_utc_datetime(&d)));
    parsed.map(|d| d.to_rfc3339()).ok_or_else(|| {
        let value = crate::wording::quoted(value);
        format!("ScheduledDate \"{value}\" is not a date; write it as YYYY-MM-DD or YYYY-MM-DD HH:MM (UTC)")
    })
}

/// A real address check (RFC 5322 via `email_address`), plus a dot in the domain: rosters are for
/// people with internet mail, and `ann@localhost` is always a typo there.
pub fn is_valid_email(email: &str) -> bool {
    plainly_valid_email(email) || fully_valid_email(email)
}

/// The full check, for any address the fast path does not take.
fn fully_valid_email(email: &str) -> bool {
    email_address::EmailAddress::parse_with_options(
        email,
        email_address::Options::default().without_display_text().without_domain_literal(),
    )
    .is_ok()
        && email.rsplit_once('@').is_some_and(|(_, d)| d.contains('.') && !d.ends_with('.'))
}

/// The everyday address (`ann.lee+x@mail.example.org`, ASCII, dot-atom local part, letter-digit-
/// hyphen labels) accepted in one pass over its bytes: a strict subset of what `email_address`
/// accepts (a unit test checks the two agree), so anything else still gets the full RFC 5322 check.
/// It is ~5x cheaper, and every row has at least one address.
fn plainly_valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else { return false };
    let atext = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b);
    let dot_atoms = |s: &str, max: usize, label: &dyn Fn(&[u8]) -> bool| {
        !s.is_empty() && s.len() <= max && s.split('.').all(|part| !part.is_empty() && label(part.as_bytes()))
    };
    let local_ok = dot_atoms(local, 64, &|p| p.iter().all(|&b| atext(b)));
    let domain_ok = dot_atoms(domain, 254, &|p| {
        p.len() <= 63
            && p[0].is_ascii_alphanumeric()
            && p[p.len() - 1].is_ascii_alphanumeric()
            && p.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-')
    });
    local_ok && domain_ok && domain.contains('.')
}

/// Roles are exact and case-sensitive; admin roles are never assignable by file.
fn check_role(role: &str, tenant: &Tenant) -> Result<(), String> {
    if tenant.admin_roles.iter().any(|a| a.eq_ignore_ascii_case(role)) {
        return Err({
            let role = crate::wording::quoted(role);
            format!("role \"{role}\" is an admin role and cannot be assigned by bulk upload; ask an administrator to grant it")
        });
    }
    // "*" (the CLI's offline validation, where the tenant is unknown) accepts any role.
    if tenant.roles.iter().any(|r| r == role || r == "*") {
        return Ok(());
    }
    Err(match closest(role, &tenant.roles) {
        Some(r) => {
            let r = crate::wording::quoted(r);
            let role = crate::wording::quoted(role);
            format!("unknown role \"{role}\"; did you mean \"{r}\"?")
        }
        None if tenant.roles.is_empty() => {
            let role = crate::wording::quoted(role);
            format!("unknown role \"{role}\"; this tenant has no roles configured")
        }
        None => {
            let role = crate::wording::quoted(role);
            format!("unknown role \"{role}\"; valid roles are: {}", tenant.roles.join(", "))
        }
    })
}

fn closest<'a>(value: &str, options: &'a [String]) -> Option<&'a String> {
    options
        .iter()
        .map(|r| (strsim::jaro_winkler(&r.to_lowercase(), &value.to_lowercase()), r))
        .filter(|(score, _)| *score > 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, r)| r)
}

/// Product codes: any when the tenant lists none, else one of its catalogue (case-insensitive).
fn check_product(code: &str, tenant: &Tenant) -> Result<String, String> {
    if tenant.products.is_empty() {
        return Ok(code.to_string());
    }
    match tenant.products.iter().find(|p| p.eq_ignore_ascii_case(code)) {
        Some(p) => Ok(p.clone()),
        None => Err({
            let code = crate::wording::quoted(code);
            format!("unknown product \"{code}\"; valid products are: {}", tenant.products.join(", "))
        }),
    }
}

/// A custom attribute value, normalised to its type.
fn check_attribute(name: &str, kind: &AttributeKind, value: &str) -> Result<String, String> {
    match kind {
        AttributeKind::Text if too_long(value) => Err(format!("{name} is longer than {MAX_TEXT} characters")),
        AttributeKind::Text => Ok(value.to_string()),
        AttributeKind::Number => match roster_number(value) {
            Ok(n) => Ok(if n.fract() == 0.0 && n.abs() < 1e15 { format!("{}", n as i64) } else { n.to_string() }),
            Err(why) => Err({
                let value = crate::wording::quoted(value);
                format!("{name} \"{value}\" {why}")
            }),
        },
        AttributeKind::Date => {
            let day = value.split([' ', 'T']).next().unwrap_or(value);
            chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").map(|d| d.to_string()).map_err(|_| {
                let value = crate::wording::quoted(value);
                format!("{name} \"{value}\" is not a date; write it as YYYY-MM-DD (for example 2026-09-01)")
            })
        }
        AttributeKind::OneOf { values } => match values.iter().find(|v| v.eq_ignore_ascii_case(value)) {
            Some(v) => Ok(v.clone()),
            None => Err(match closest(value, values) {
                Some(v) => {
                    let v = crate::wording::quoted(v);
                    let value = crate::wording::quoted(value);
                    format!("{name} \"{value}\" is not allowed; did you mean \"{v}\"?")
                }
                None => {
                    let value = crate::wording::quoted(value);
                    format!("{name} \"{value}\" is not allowed; use one of: {}", values.join(", "))
                }
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::super::decode::decode;
    use super::super::headers::map_headers;
    use super::*;
    use crate::model::{AttributeDef, Status, UserFields};

    fn tenant() -> Tenant {
        let mut t = Tenant::new("acme", vec!["a@acme.com".into()]);
        t.roles = vec!["Learner".into(), "Manager".into()];
        t.admin_roles = vec!["Admin".into()];
        t.products = vec!["LMS".into(), "Video".into()];
        t.attributes = vec![
            AttributeDef { name: "Employee Id".into(), kind: AttributeKind::Number },
            AttributeDef { name: "Start Date".into(), kind: AttributeKind::Date },
            AttributeDef {
                name: "Region".into(),
                kind: AttributeKind::OneOf { values: vec!["EMEA".into(), "APAC".into(), "Americas".into()] },
            },
        ];
        t
    }

    fn run(csv: &str, mode: Mode) -> Validated {
        let t = decode(csv.as_bytes()).unwrap();
        let m = map_headers(&t.headers, &tenant()).unwrap();
        validate(&t, &m, &tenant(), mode)
    }

    fn message(v: &Validated, row: u32) -> String {
        v.outcomes.iter().find(|o| o.row == row).map(|o| o.message.clone()).unwrap_or_else(|| panic!("no outcome for row {row}: {v:?}"))
    }

    fn fields(v: &Validated, i: usize) -> &UserFields {
        match &v.ops[i].target {
            Target::User { fields, .. } => fields,
            other => panic!("not a user: {other:?}"),
        }
    }

    #[test]
    fn values_are_trimmed_and_emails_lower_cased() {
        let v = run("Email,First Name,Group\n  Ann@X.COM , Ann ,a; b;;\n", Mode::Upsert);
        let Target::User { email, fields } = &v.ops[0].target else { panic!() };
        assert_eq!(email, "ann@x.com");
        assert_eq!(fields.first_name.as_deref(), Some("Ann"));
        assert_eq!(fields.groups, vec!["a", "b"]);
        assert_eq!(v.ops[0].action, Action::Upsert);
    }

    /// Groups and products typed one a line in a cell (Alt+Enter in Excel) are separate names,
    /// as with `;`: the cell was one group whose name held the line breaks.
    #[test]
    fn names_on_separate_lines_of_a_cell_are_separate_groups() {
        let v = run("Email,Group\nann@x.com,\"Math\r\nScience\nArt; Music\n\"\n", Mode::Upsert);
        assert!(v.outcomes.is_empty(), "{v:?}");
        assert_eq!(fields(&v, 0).groups, vec!["Math", "Science", "Art", "Music"]);
    }

    /// A failed lookup's `#N/A` was stored as the department (and echoed as if fine).
    #[test]
    fn a_formula_error_fails_its_row_naming_the_column() {
        let v = run("Email,Department,Group\na@x.com,#N/A,g\nb@x.com,Sales, #REF! \nc@x.com,Sales,g\n#VALUE!,Sales,g\n", Mode::Upsert);
        assert_eq!(v.ops.len(), 1);
        assert!(message(&v, 2).starts_with("Department is #N/A, a spreadsheet formula's error"), "{}", message(&v, 2));
        assert!(message(&v, 3).starts_with("Group is #REF!"), "{}", message(&v, 3));
        assert!(message(&v, 5).starts_with("Email is #VALUE!"), "{}", message(&v, 5));
    }

    /// A formula a program wrote without calculating it has no value: the row fails saying how to
    /// get one; in a column we do not read it changes nothing.
    #[test]
    fn a_formula_never_calculated_fails_its_row_only_in_a_roster_column() {
        let nc = crate::ingest::decode::NOT_CALCULATED;
        let v = run(&format!("Email,Department,Notes\na@x.com,{nc},\nb@x.com,Ops,{nc}\n"), Mode::Upsert);
        assert!(message(&v, 2).starts_with("Department is a formula the file never calculated"), "{}", message(&v, 2));
        assert!(message(&v, 2).contains("open the file in Excel or LibreOffice, save it"), "{}", message(&v, 2));
        assert_eq!(v.ops.len(), 1);
    }

    /// Excel shows (and saves as CSV) an 18-digit id typed as a number as `1.23457E+18`: stored,
    /// every id of the column would have been that string, the digits gone.
    #[test]
    fn a_long_number_in_spreadsheet_form_fails_its_row_saying_to_type_it_as_text() {
        let csv = "Email,ExternalId,Phone,Group\n\
                   a@x.com,1.23457E+18,,g\n\
                   b@x.com,7,4.47911E+11,g\n\
                   c@x.com,1.2345678901234568E+18,,g\n\
                   d@x.com,7E2,,2E+1x\n\
                   e@x.com,E+18,,g.E+10\n";
        let v = run(csv, Mode::Upsert);
        let m = message(&v, 2);
        assert!(
            m.starts_with(
                "ExternalId is 1.23457E+18, a long number as a spreadsheet shows it: the file holds only the first 6 of its 19 digits."
            ),
            "{m}"
        );
        assert!(m.contains("Format the ExternalId column as Text"), "{m}");
        // Counted under its own action (blank: Upsert), not "(invalid Type or Action)".
        assert_eq!(v.outcomes.iter().find(|o| o.row == 2).and_then(|o| o.action), Some(Action::Upsert));
        assert!(message(&v, 3).starts_with("Phone is 4.47911E+11"), "{}", message(&v, 3));
        assert!(
            message(&v, 4).contains(
                "1.2345678901234568E+18, a long number as a spreadsheet shows it: the file holds only the first 17 of its 19 digits."
            ),
            "{}",
            message(&v, 4)
        );
        assert_eq!(shortened_digits("-2.5e-07"), "the file holds it rounded, not as it was typed");
        assert_eq!(shortened_digits("9.99E+01"), "the file holds it rounded, not as it was typed");
        // Values that only look alike are values.
        assert_eq!(v.ops.len(), 2, "rows 5 and 6 are kept");
        for s in ["1E+15", "-2.5e-07", "9.99E+100", "1,23457E+18"] {
            assert!(is_shortened_number(s), "{s}");
        }
        for s in ["7E2", "E+18", "1.E+18", "12.3E+18", "1.2E+", "1.2E+1", "1e5x", "Room 1E+10", "1;5E+10"] {
            assert!(!is_shortened_number(s), "{s}");
        }
    }

    /// Addresses as people paste them get a message saying what to change, not only that the
    /// value is wrong.
    #[test]
    fn a_pasted_address_says_what_to_change() {
        let csv = "Email,Supervisor\n\
                   \"Ann Lee <Ann@X.com>\",\n\
                   mailto:bob@x.com,\n\
                   cat@x.com.,\n\
                   \"dan@x.com; dee@x.com\",\n\
                   eve.x.com,\n\
                   fay@x.com,\"Boss <boss@x.com>\"\n\
                   \"a b@x.com\",\n";
        let v = run(csv, Mode::Upsert);
        assert_eq!(message(&v, 2), "Email \"Ann Lee <Ann@X.com>\" is not a valid email address: keep only the address, \"Ann@X.com\"");
        assert_eq!(message(&v, 3), "Email \"mailto:bob@x.com\" is not a valid email address: remove \"mailto:\" and keep \"bob@x.com\"");
        assert_eq!(message(&v, 4), "Email \"cat@x.com.\" is not a valid email address: remove the \".\" at its end");
        assert!(
            message(&v, 5).ends_with("the cell holds more than one address; give each person a row of their own"),
            "{}",
            message(&v, 5)
        );
        assert_eq!(message(&v, 6), "Email \"eve.x.com\" is not a valid email address: it has no @");
        assert_eq!(message(&v, 7), "Supervisor \"Boss <boss@x.com>\" is not a valid email address: keep only the address, \"boss@x.com\"");
        assert_eq!(message(&v, 8), "Email \"a b@x.com\" is not a valid email address", "no guess when none fits");
        assert!(v.ops.is_empty());
    }

    /// `lee@example,com` was told to type "example,com.com"; an address of 255 characters or more
    /// passed, and its invitation and mail bounced (no server takes it).
    #[test]
    fn a_comma_for_a_dot_and_an_address_too_long_to_deliver_are_named() {
        let long =
            |n: usize| format!("{}@{}.com", "a".repeat(64), ["b".repeat(60), "c".repeat(60), "d".repeat(60), "e".repeat(n)].join("."));
        let (ok, over) = (long(2), long(3));
        assert_eq!((ok.len(), over.len()), (254, 255));
        let v = run(&format!("Email\n\"lee@example,com\"\n{ok}\n{over}\n"), Mode::Upsert);
        assert_eq!(
            message(&v, 2),
            "Email \"lee@example,com\" is not a valid email address: it has a comma where a dot belongs; type \"lee@example.com\""
        );
        assert_eq!(v.ops.len(), 1, "254 characters pass");
        let too_long = message(&v, 4);
        assert!(
            too_long
                .ends_with("\" is 255 characters long as it is sent, and an address can have at most 254; no mail can be delivered to it"),
            "{too_long}"
        );
    }

    /// Zero-width characters pasted with a value: at its ends they are trimmed as spaces (a
    /// cell of only one is blank); inside an ExternalId they made a second id that looks the same.
    #[test]
    fn invisible_characters_around_values_are_trimmed_and_inside_an_id_refused() {
        let v =
            run("Email,ExternalId,First Name\na@x.com,E100\u{200B},\u{200B}\nb@x.com,E1\u{200B}01,Bob\nc@x.com,E100,Cy\n", Mode::Upsert);
        assert_eq!(fields(&v, 0).external_id.as_deref(), Some("E100"));
        assert_eq!(fields(&v, 0).first_name, None, "only an invisible character: blank");
        assert_eq!(message(&v, 3), "ExternalId \"E1<U+200B>01\" contains an invisible character; type the id again without it");
        assert!(message(&v, 4).starts_with("duplicate ExternalId \"E100\""), "{}", message(&v, 4));
        // A narrow no-break space is a visible space (a French export's `123 456`): kept.
        let v = run("Email,ExternalId\na@x.com,123\u{202F}456\n", Mode::Upsert);
        assert_eq!(fields(&v, 0).external_id.as_deref(), Some("123\u{202F}456"));
        // A long cell is read as given, not searched for addresses.
        assert_eq!(named_addresses(&"a@x.com ".repeat(100)).len(), 1);
        assert_eq!(named_addresses("Ann <Ann@X.com>"), ["ann <ann@x.com>", "ann@x.com"]);
    }

    /// A generated workbook's formulas filled down past its data read as not calculated: rows of
    /// only those are skipped, not failed for a missing Email.
    #[test]
    fn a_row_of_only_uncalculated_formulas_is_skipped() {
        let nc = crate::ingest::decode::NOT_CALCULATED;
        let v = run(&format!("Email,Department,Group\na@x.com,Ops,\n{nc},{nc},\n,{nc},{nc}\n"), Mode::Upsert);
        assert_eq!(v.ops.len(), 1);
        let skipped: Vec<_> = v.outcomes.iter().filter(|o| o.status == Status::Skipped).map(|o| o.row).collect();
        assert_eq!(skipped, [3, 4]);
        assert!(message(&v, 3).starts_with("only formulas the file never calculated"), "{}", message(&v, 3));
    }

    /// A ScheduledDate without an invitation was ignored without a word.
    #[test]
    fn a_scheduled_date_without_an_invitation_fails_saying_so() {
        let v = run(
            "Email,InviteUser,ScheduledDate,Action\na@x.com,,2026-09-01,\nb@x.com,No,2026-09-01,\nc@x.com,Yes,2026-09-01,\nd@x.com,,2026-09-01,Invite\ne@x.com,,2026-09-01,Disable\n",
            Mode::Upsert,
        );
        assert!(
            message(&v, 2).starts_with("ScheduledDate says when to send the activation email, but the row asks for none"),
            "{}",
            message(&v, 2)
        );
        assert!(message(&v, 3).contains("set InviteUser to Yes, or clear ScheduledDate"));
        assert_eq!(v.ops.len(), 3, "c, d and the Disable (a leaver is not kept for a stray date)");
    }

    /// A number attribute is read as written or refused: a decimal comma (`2,50`, `1.234,5`)
    /// was dropped and stored 250 and 1.2345, and digits past 15 were a double's guess.
    #[test]
    fn number_attributes_are_read_as_written_or_refused_by_name() {
        let ok = [("1234", 1234.0), ("1,234,567.5", 1_234_567.5), ("-0.25", -0.25), ("+7", 7.0), (".5", 0.5), ("007", 7.0)];
        for (v, n) in ok {
            assert_eq!(roster_number(v), Ok(n), "{v}");
        }
        for v in ["2,50", "1.234,5", "1,5", "12,34,567", "1 234", "1.2.3", "", "-", "1.", "1e5", "0x10", "1,234.5,6", ",123"] {
            assert!(roster_number(v).unwrap_err().starts_with("is not a number as a roster writes one"), "{v}");
        }
        assert!(roster_number("12345678901234567890").unwrap_err().starts_with("has more than 15 digits"));
        assert_eq!(roster_number("123456789012345000"), Ok(123456789012345000.0), "trailing zeros are no digits lost");
        let v = run("Email,Employee Id\na@x.com,\"2,50\"\nb@x.com,\"1,234\"\n", Mode::Upsert);
        assert!(message(&v, 2).starts_with("Employee Id \"2,50\" is not a number as a roster writes one: use a dot"), "{}", message(&v, 2));
        assert_eq!(fields(&v, 0).attributes["Employee Id"], "1234");
    }

    /// An HR export's Status column is not read: a row whose Status says the person left fails
    /// (created or kept active, the leaver would have kept their access), unless its Action ends
    /// the account anyway; other values and blanks pass.
    #[test]
    fn a_row_whose_own_status_column_says_the_person_left_fails_instead_of_keeping_them_active() {
        let csv = "Type,Email,OrgName,Status,Action\n\
                   ,a@x.com,,Terminated,\n\
                   ,b@x.com,,Active,\n\
                   ,c@x.com,,,\n\
                   ,d@x.com,,INACTIVE,Disable\n\
                   ,e@x.com,,On leave,\n\
                   ,f@x.com,,Left,Expire\n\
                   ,g@x.com,,Disabled,Enable\n\
                   Org,,North,Closed,\n";
        let v = run(csv, Mode::Upsert);
        let m = message(&v, 2);
        assert!(m.starts_with("Status is \"Terminated\", but rosterdrop does not read a Status column"), "{m}");
        assert!(m.contains("write Disable (or Delete) in the Action column"), "{m}");
        assert!(message(&v, 7).starts_with("Status is \"Left\""), "Expire keeps the account: {}", message(&v, 7));
        assert_eq!(v.ops.len(), 6, "b, c, d (a Disable), e, g (an Enable) and the organization are read");
        assert_eq!(v.outcomes.len(), 2, "a and f fail");
        let v = run("Email,Status\na@x.com,Left\n", Mode::Replace);
        assert!(message(&v, 2).contains("leave the row out of the file to disable the user"), "{}", message(&v, 2));
        // Our own result file's Status (before our Message and Changes) is ours: not checked.
        let v = run("Email,Status,Message,Changes\na@x.com,Disabled,user disabled,\n", Mode::Upsert);
        assert_eq!(v.ops.len(), 1);
    }

    #[test]
    fn invalid_email_names_the_value() {
        let v = run("Email\nann@@x.com\nbob@localhost\n", Mode::Upsert);
        assert_eq!(message(&v, 2), "Email \"ann@@x.com\" is not a valid email address: it has two @ in a row");
        assert_eq!(
            message(&v, 3),
            "Email \"bob@localhost\" is not a valid email address: the part after @ must be a whole domain, such as \"localhost.com\""
        );
        assert!(v.ops.is_empty());
    }

    /// Two spellings of one mailbox (an international domain and its punycode, full-width
    /// letters) made two users and two invites.
    #[test]
    fn one_mailbox_spelt_two_ways_is_a_duplicate() {
        let v = run("Email\nann@bücher.example\nANN@xn--bcher-kva.example\nbob@ｘ.com\nbob@x.com\n", Mode::Upsert);
        let keys: Vec<&str> = v
            .ops
            .iter()
            .map(|op| match &op.target {
                Target::User { email, .. } => email.as_str(),
                _ => "",
            })
            .collect();
        assert_eq!(keys, ["ann@bücher.example", "bob@x.com"]);
        assert!(message(&v, 3).starts_with("duplicate email: row 2"), "{}", message(&v, 3));
        assert!(message(&v, 5).starts_with("duplicate email: row 4"), "{}", message(&v, 5));
    }

    #[test]
    fn duplicates_fail_naming_the_first_row() {
        let v = run("Email\na@x.com\nb@x.com\nA@X.com\n", Mode::Upsert);
        assert_eq!(v.ops.len(), 2);
        assert_eq!(
            message(&v, 4),
            "duplicate email: row 2 of this file already has a@x.com; only the first row is applied. Fix this row if it is another one, or delete it: dropped again as it is, it would change what the first row applied"
        );
    }

    #[test]
    fn an_organization_keeps_its_id_and_parent_and_bad_ones_fail_the_row() {
        let long_id = "x".repeat(129);
        let v = run(
            &format!("Type,OrgName,ExternalId,ParentOrg\nOrg,North,org-1,District\nOrg,South,,south\nOrg,East,{long_id},\n"),
            Mode::Upsert,
        );
        match &v.ops[0].target {
            Target::Org { external_id, parent, .. } => {
                assert_eq!((external_id.as_deref(), parent.as_deref()), (Some("org-1"), Some("District")))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(message(&v, 3), "ParentOrg cannot be the organization itself");
        assert!(message(&v, 4).contains("128"), "{}", message(&v, 4));
    }

    #[test]
    fn a_user_known_by_username_is_deleted_or_disabled_without_naming_a_parent() {
        let v = run("Email,Username,Action\n,kid1,Delete\n,kid2,Disable\n,kid3,Update\n", Mode::Upsert);
        assert_eq!(v.ops.iter().map(|o| o.row).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(message(&v, 4), "Username \"kid3\" has no Email, so the row needs a Parent (the parent's email)");
    }

    #[test]
    fn roles_are_exact_with_a_suggestion_and_admin_roles_refused() {
        let v = run("Email,Role\na@x.com,learner\nb@x.com,Admin\nc@x.com,Pilot\nd@x.com,Learner\n", Mode::Upsert);
        assert_eq!(message(&v, 2), "unknown role \"learner\"; did you mean \"Learner\"?");
        assert!(message(&v, 3).contains("admin role"));
        assert_eq!(message(&v, 4), "unknown role \"Pilot\"; valid roles are: Learner, Manager");
        assert_eq!(v.ops.len(), 1);
    }

    #[test]
    fn type_and_action_are_case_insensitive_enums() {
        let v = run(
            "Type,Action,Email,OrgName\nORG,create,,North\nuser,DELETE,a@x.com,\nrobot,,b@x.com,\nUser,Explode,c@x.com,\n",
            Mode::Upsert,
        );
        assert_eq!(v.ops.len(), 2);
        assert_eq!(v.ops[0].target, Target::org("North"));
        assert_eq!(v.ops[1].action, Action::Delete);
        assert!(message(&v, 4).starts_with("Type \"robot\" is not one of Org, Student"));
        assert_eq!(message(&v, 4).matches("User").count(), 1, "each type named once");
        assert!(message(&v, 5).starts_with("Action \"Explode\" is not one of Create, Update"));
    }

    #[test]
    fn add_mode_turns_upserts_into_creates_and_refuses_other_actions() {
        let v = run("Action,Email\n,a@x.com\nDelete,b@x.com\n", Mode::Add);
        assert_eq!(v.ops[0].action, Action::Create);
        assert!(message(&v, 3).contains("not allowed in add mode"));
    }

    #[test]
    fn replace_mode_refuses_deletes_and_remembers_every_named_user() {
        let v = run("Action,Email,Role\n,a@x.com,Learner\nDelete,b@x.com,\n,c@x.com,Pilot\n", Mode::Replace);
        assert_eq!(v.ops.len(), 1);
        assert!(message(&v, 3).contains("not allowed in replace mode"));
        // c's row fails, but c is in the file: replace must not disable c.
        let t = decode(b"Action,Email,Role\n,a@x.com,Learner\nDelete,b@x.com,\n,c@x.com,Pilot\n").unwrap();
        let m = map_headers(&t.headers, &tenant()).unwrap();
        let (_, seen) = validate_sheets(&[(&t, &m)], &tenant(), Mode::Replace);
        assert!(seen.names_user("c@x.com") && seen.names_user("b@x.com") && !seen.names_user("z@x.com"));
    }

    #[test]
    fn empty_rows_in_the_middle_are_skipped_not_lost() {
        let v = run("Email,FirstName\na@x.com,A\n,\nb@x.com,B\n", Mode::Upsert);
        assert_eq!(v.ops.len(), 2);
        assert_eq!(v.outcomes.len(), 1);
        assert_eq!((v.outcomes[0].row, v.outcomes[0].status), (3, Status::Skipped));
    }

    /// A row with several problems names them all (up to 4), the first one's column its column:
    /// one a drop, a row with three took three drops of its failed-rows file to learn them. A
    /// problem in a column that decides what the row is (Type) is named alone.
    #[test]
    fn a_row_with_several_problems_names_each_of_them() {
        let v = run(
            "Email,RoleName,Products,Region,Start Date,Type\n\
             a@x.com,learner,Vidoe,Mars,2026-02-30,\n\
             b@x.com,learner,LMS,EMEA,2026-02-01,\n\
             c@x.com,learner,Vidoe,Mars,2026-02-30,Robot\n",
            Mode::Upsert,
        );
        let all = message(&v, 2);
        assert!(all.starts_with("unknown role \"learner\"; did you mean \"Learner\"?"), "{all}");
        for also in ["Also: unknown product \"Vidoe\"", "Also: Region", "Also: Start Date"] {
            assert!(all.contains(also), "{also}: {all}");
        }
        assert_eq!(v.outcomes.iter().find(|o| o.row == 2).and_then(|o| o.column.as_deref()), Some("RoleName"));
        assert!(!message(&v, 3).contains("Also"), "one problem, one message: {}", message(&v, 3));
        assert!(message(&v, 4).starts_with("Type \"Robot\" is not one of") && !message(&v, 4).contains("Also"), "{}", message(&v, 4));
        // A problem the emptying itself made is not named: ScheduledDate asks for InviteUser.
        let v = run("Email,InviteUser,ScheduledDate\na@x.com,Ja,2026-09-01\n", Mode::Upsert);
        assert!(message(&v, 2).starts_with("InviteUser") && !message(&v, 2).contains("Also"), "{}", message(&v, 2));
    }

    #[test]
    fn a_value_beyond_the_header_fails_its_row() {
        let v = run("Email,FirstName\na@x.com,A,surprise\n", Mode::Upsert);
        assert_eq!(message(&v, 2), "column 3 (C) has a value but no header; add a header or remove the value");
    }

    #[test]
    fn username_rows_need_a_parent_and_are_keyed_by_username() {
        let v = run("Email,Username,Parent\n,Kid1,mom@x.com\n,Kid2,\n", Mode::Upsert);
        let Target::User { email, fields } = &v.ops[0].target else { panic!() };
        assert_eq!(email, "user:kid1");
        assert_eq!(fields.associations.get("parent").map(String::as_str), Some("mom@x.com"));
        assert_eq!(message(&v, 3), "Username \"Kid2\" has no Email, so the row needs a Parent (the parent's email)");
    }

    #[test]
    fn associations_are_emails_and_targets_created_in_the_file_are_marked() {
        let v = run(
            "Email,Supervisor,Instructor,Org\na@x.com,Boss@X.com,,North\nboss@x.com,,,\nc@x.com,not-an-email,,\nd@x.com,d@x.com,,\n",
            Mode::Upsert,
        );
        assert_eq!(fields(&v, 0).associations.get("supervisor").map(String::as_str), Some("boss@x.com"));
        assert_eq!(v.ops[0].created_in_file, vec!["boss@x.com".to_string()], "North is not created by the file");
        assert_eq!(message(&v, 4), "Supervisor \"not-an-email\" is not a valid email address: it has no @");
        assert_eq!(message(&v, 5), "supervisor cannot be the user themself");
    }

    #[test]
    fn products_are_checked_against_the_catalogue_and_expire_parses() {
        let v = run("Action,Email,Products\n,a@x.com,lms; video;LMS\nExpire,b@x.com,\n,c@x.com,Chess\n", Mode::Upsert);
        assert_eq!(fields(&v, 0).products, vec!["LMS", "Video"], "named twice, granted once (a set refuses repeats)");
        assert_eq!(v.ops[1].action, Action::Expire);
        assert_eq!(message(&v, 4), "unknown product \"Chess\"; valid products are: LMS, Video");
    }

    #[test]
    fn invite_flags_and_scheduled_dates_are_parsed() {
        let v = run(
            "Email,Username,Parent,InviteUser,ScheduledDate\na@x.com,,,Yes,2026-09-01\nb@x.com,,,maybe,\nc@x.com,,,TRUE,next week\n,kid,p@x.com,true,\n",
            Mode::Upsert,
        );
        assert!(fields(&v, 0).invite);
        assert_eq!(fields(&v, 0).invite_at.as_deref(), Some("2026-09-01T00:00:00+00:00"));
        assert_eq!(message(&v, 3), "InviteUser \"maybe\" must be TRUE or FALSE");
        assert!(message(&v, 4).starts_with("ScheduledDate \"next week\" is not a date"));
        assert_eq!(message(&v, 5), "a user without an Email cannot be sent an activation email");
    }

    #[test]
    fn custom_attributes_are_typed_and_normalised() {
        let v = run(
            "Email,Employee Id,start_date,REGION\na@x.com,\"1,234\",2026-09-01,emea\nb@x.com,12x,,\nc@x.com,,01/09/2026,\nd@x.com,,,Mars\ne@x.com,,,Emea-West\n",
            Mode::Upsert,
        );
        let a = &fields(&v, 0).attributes;
        assert_eq!(a.get("Employee Id").map(String::as_str), Some("1234"));
        assert_eq!(a.get("Start Date").map(String::as_str), Some("2026-09-01"));
        assert_eq!(a.get("Region").map(String::as_str), Some("EMEA"));
        assert!(message(&v, 3).starts_with("Employee Id \"12x\" is not a number as a roster writes one"), "{}", message(&v, 3));
        assert!(message(&v, 4).contains("write it as YYYY-MM-DD"));
        assert_eq!(message(&v, 5), "Region \"Mars\" is not allowed; use one of: EMEA, APAC, Americas");
        assert_eq!(message(&v, 6), "Region \"Emea-West\" is not allowed; did you mean \"EMEA\"?");
    }
}

#[cfg(test)]
mod email_tests {
    use super::{fully_valid_email as full, is_valid_email, plainly_valid_email};

    #[test]
    fn the_fast_path_accepts_only_what_the_full_check_accepts() {
        // Every string over an alphabet of the characters that matter, up to 6 long, plus long
        // parts at the length limits: the fast path never says yes where the full check says no.
        let alphabet = ['a', '0', '.', '@', '-', '+', '"', '<', 'é'];
        let mut accepted = 0;
        let mut strings = vec![String::new()];
        for _ in 0..6 {
            strings = strings.iter().flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}"))).collect();
            for s in &strings {
                if plainly_valid_email(s) {
                    assert!(full(s), "fast path accepted {s:?}");
                    accepted += 1;
                }
            }
        }
        assert!(accepted > 100, "the fast path must carry the common case ({accepted})");
        // The length limits: local part 64, label 63, domain 254.
        let domain = |last: usize| format!("{0}.{0}.{0}.{1}", "b".repeat(63), "c".repeat(last));
        for e in [
            format!("{}@x.com", "a".repeat(64)),
            format!("{}@x.com", "a".repeat(65)),
            format!("a@{}.com", "b".repeat(63)),
            format!("a@{}.com", "b".repeat(64)),
            format!("a@{}", domain(62)),
            format!("a@{}", domain(63)),
        ] {
            assert_eq!(plainly_valid_email(&e), full(&e), "{} bytes", e.len());
        }
    }

    #[test]
    fn addresses_off_the_fast_path_still_get_the_full_check() {
        for (e, ok) in [
            ("ann.lee+x@mail.example.org", true),
            ("josé@example.com", true),
            ("\"ann lee\"@example.com", true),
            ("ann@-x.com", false),
            ("ann..lee@x.com", false),
            ("ann@x", false),
            ("Ann <ann@x.com>", false),
            ("ann@[10.0.0.1]", false),
        ] {
            assert_eq!(is_valid_email(e), ok, "{e}");
        }
    }
}

#[cfg(test)]
mod seen_tests {
    use super::Seen;

    #[test]
    fn a_seen_key_keeps_its_row_and_whether_it_creates_in_one_word() {
        for (row, creates) in [(2, true), (2, false), (9 * super::super::sheets::SHEET_STRIDE + 1_048_576, true), (0, false)] {
            let s = Seen::new(row, creates);
            assert_eq!((s.row(), s.creates()), (row, creates));
        }
        assert_eq!(std::mem::size_of::<([u32; 2], Seen)>(), 12);
    }
}
