//! A validated row as it leaves validation: borrowed from the row's cells, not yet a `RowOp`.
//!
//! Ingest writes each operation as a JSON chunk line the moment its row is checked. Building the
//! owned `RowOp` first cost ~10 allocations a row (one per kept value) only to serialize and drop
//! them; the view keeps the cells' text where it lies, and `write_json` writes the exact line
//! `serde_json` writes for the equivalent `RowOp` (a test and the `rows` fuzz target hold the two
//! to byte equality), so apply reads it as before. The CLI and tests take `to_op`.

use crate::model::{Action, RowOp, Target, UserFields};
use std::borrow::Cow;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct RowView<'c> {
    pub row: u32,
    pub action: Action,
    pub target: TargetView<'c>,
}

#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // one per row, on the stack, never boxed (a box is an allocation a row)
pub enum TargetView<'c> {
    User(UserView<'c>),
    Org { name: &'c str, email: Option<Cow<'c, str>>, phone: Option<&'c str>, external_id: Option<&'c str>, parent: Option<&'c str> },
}

/// `UserFields` with each value borrowed from its (trimmed) cell where it is kept as written.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UserView<'c> {
    /// Normalised email (lower-cased: borrowed when it already was), or `user:<username>`.
    pub key: Cow<'c, str>,
    pub first_name: Option<&'c str>,
    pub last_name: Option<&'c str>,
    pub phone: Option<&'c str>,
    pub org: Option<&'c str>,
    pub role: Option<&'c str>,
    pub department: Option<&'c str>,
    /// The Groups cell as written: `;`-separated, each name trimmed, empty names dropped.
    pub groups: Option<&'c str>,
    pub products: Vec<String>,
    pub associations: BTreeMap<String, String>,
    pub attributes: BTreeMap<String, String>,
    pub user_type: Option<String>,
    pub invite: bool,
    pub invite_at: Option<String>,
    /// The named pool as the tenant configures it (the cell may differ in case).
    pub licence_pool: Option<String>,
    pub external_id: Option<&'c str>,
    pub new_email: Option<String>,
    /// Beside an Email: the Username's key (`user:<name>`), as `UserFields::username`.
    pub username: Option<String>,
}

/// The names in a `;`-separated cell (Groups, Products), each trimmed, empty ones dropped. A line
/// break separates too: a spreadsheet's cell of one name a line (Alt+Enter) was one group named
/// "Math\nScience".
pub fn list_items(cell: &str) -> impl Iterator<Item = &str> {
    cell.split([';', '\n', '\r']).map(str::trim).filter(|s| !s.is_empty())
}

/// A Groups cell's names, each once whatever its case, as first written: `Chess;Chess;chess` was
/// stored as three groups, and a later `Chess` showed only `-chess` as its change. (Cells are
/// in NFC already: `Équipe` typed both ways is one name.)
pub fn unique_items(cell: &str) -> impl Iterator<Item = &str> {
    let mut seen: Vec<String> = Vec::new();
    list_items(cell).filter(move |item| {
        let key = item.to_lowercase();
        if seen.contains(&key) {
            return false;
        }
        seen.push(key);
        true
    })
}

impl RowView<'_> {
    /// The phase the operation runs in (as `model::phase_of`).
    pub fn phase(&self) -> usize {
        crate::model::phase(matches!(self.target, TargetView::Org { .. }), self.action)
    }

    pub fn to_op(&self) -> RowOp {
        let target = match &self.target {
            TargetView::Org { name, email, phone, external_id, parent } => Target::Org {
                name: name.to_string(),
                email: email.as_ref().map(|e| e.to_string()),
                phone: phone.map(str::to_string),
                external_id: external_id.map(str::to_string),
                parent: parent.map(str::to_string),
            },
            TargetView::User(u) => {
                let owned = |v: Option<&str>| v.map(str::to_string);
                Target::User {
                    email: u.key.to_string(),
                    fields: UserFields {
                        first_name: owned(u.first_name),
                        last_name: owned(u.last_name),
                        phone: owned(u.phone),
                        org: owned(u.org),
                        role: owned(u.role),
                        department: owned(u.department),
                        groups: u.groups.map(|g| unique_items(g).map(str::to_string).collect()).unwrap_or_default(),
                        products: u.products.clone(),
                        associations: u.associations.clone(),
                        attributes: u.attributes.clone(),
                        user_type: u.user_type.clone(),
                        invite: u.invite,
                        invite_at: u.invite_at.clone(),
                        licence_pool: u.licence_pool.clone(),
                        external_id: owned(u.external_id),
                        new_email: u.new_email.clone(),
                        username: u.username.clone(),
                    },
                }
            }
        };
        RowOp { row: self.row, action: self.action, target, created_in_file: vec![], restore: None }
    }

    /// Append the operation's chunk line (without the newline): byte for byte what
    /// `serde_json::to_writer(out, &self.to_op())` writes.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"row\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.row).as_bytes());
        out.extend_from_slice(b",\"action\":\"");
        out.extend_from_slice(self.action.variant().as_bytes());
        match &self.target {
            TargetView::Org { name, email, phone, external_id, parent } => {
                out.extend_from_slice(b"\",\"type\":\"Org\",\"name\":");
                string(out, name);
                for (key, value) in [
                    (&b",\"email\":"[..], email.as_deref()),
                    (b",\"phone\":", *phone),
                    (b",\"external_id\":", *external_id),
                    (b",\"parent\":", *parent),
                ] {
                    if let Some(v) = value {
                        out.extend_from_slice(key);
                        string(out, v);
                    }
                }
            }
            TargetView::User(u) => {
                out.extend_from_slice(b"\",\"type\":\"User\",\"email\":");
                string(out, &u.key);
                let mut field = |name: &str, value: Option<&str>| {
                    if let Some(v) = value {
                        out.push(b',');
                        out.extend_from_slice(name.as_bytes());
                        string(out, v);
                    }
                };
                field("\"first_name\":", u.first_name);
                field("\"last_name\":", u.last_name);
                field("\"phone\":", u.phone);
                field("\"org\":", u.org);
                field("\"role\":", u.role);
                field("\"department\":", u.department);
                if let Some(mut names) = u.groups.map(unique_items).map(Iterator::peekable)
                    && names.peek().is_some()
                {
                    out.extend_from_slice(b",\"groups\":");
                    list(out, names);
                }
                if !u.products.is_empty() {
                    out.extend_from_slice(b",\"products\":");
                    list(out, u.products.iter().map(String::as_str));
                }
                for (name, map) in [("\"associations\":", &u.associations), ("\"attributes\":", &u.attributes)] {
                    if !map.is_empty() {
                        out.push(b',');
                        out.extend_from_slice(name.as_bytes());
                        out.push(b'{');
                        for (i, (k, v)) in map.iter().enumerate() {
                            if i > 0 {
                                out.push(b',');
                            }
                            string(out, k);
                            out.push(b':');
                            string(out, v);
                        }
                        out.push(b'}');
                    }
                }
                if let Some(t) = &u.user_type {
                    out.extend_from_slice(b",\"user_type\":");
                    string(out, t);
                }
                if u.invite {
                    out.extend_from_slice(b",\"invite\":true");
                }
                if let Some(at) = &u.invite_at {
                    out.extend_from_slice(b",\"invite_at\":");
                    string(out, at);
                }
                if let Some(pool) = &u.licence_pool {
                    out.extend_from_slice(b",\"licence_pool\":");
                    string(out, pool);
                }
                if let Some(id) = u.external_id {
                    out.extend_from_slice(b",\"external_id\":");
                    string(out, id);
                }
                if let Some(email) = &u.new_email {
                    out.extend_from_slice(b",\"new_email\":");
                    string(out, email);
                }
                if let Some(username) = &u.username {
                    out.extend_from_slice(b",\"username\":");
                    string(out, username);
                }
            }
        }
        out.push(b'}');
    }
}

fn list<'a>(out: &mut Vec<u8>, items: impl Iterator<Item = &'a str>) {
    out.push(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, item);
    }
    out.push(b']');
}

/// A JSON string. Roster text almost never needs escaping: a word-at-a-time scan decides, and
/// the rare value that does is escaped by `serde_json` itself.
fn string(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        serde_json::to_writer(&mut *out, s).expect("a string serializes into memory");
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Whether JSON needs an escape in `s`: a control character, `"` or `\`. Eight bytes at a time
/// (the classic "has a byte less than n / equal to c" word tricks, exact for the yes/no answer);
/// a byte-wise loop was a tenth of ingest's time.
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES * 0x80;
    let less_than = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGH != 0;
    let has = |x: u64, c: u8| less_than(x ^ (ONES * c as u64), 1);
    let mut words = s.chunks_exact(8);
    for w in &mut words {
        let x = u64::from_ne_bytes(w.try_into().expect("8 bytes"));
        if less_than(x, 0x20) || has(x, b'"') || has(x, b'\\') {
            return true;
        }
    }
    words.remainder().iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same_as_serde(view: &RowView<'_>) {
        let mut ours = Vec::new();
        view.write_json(&mut ours);
        let theirs = serde_json::to_vec(&view.to_op()).unwrap();
        assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&theirs));
        assert_eq!(serde_json::from_slice::<RowOp>(&ours).unwrap(), view.to_op());
    }

    #[test]
    fn the_word_scan_finds_every_byte_that_needs_an_escape_wherever_it_is() {
        for len in 0..20 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut s = vec![b'a'; len];
                    s[at] = b;
                    let expected = b < 0x20 || b == b'"' || b == b'\\';
                    assert_eq!(needs_escape(&s), expected, "byte {b:#x} at {at} of {len}");
                }
            }
            // Bytes around the special ones (0x1f/0x20, 0x21/0x22/0x23, 0x5b/0x5c/0x5d, 0x7f-0xff)
            // next to each other never add up to a false "no".
            let s: Vec<u8> = (0..len).map(|i| [0x20, 0x21, 0x23, 0x5b, 0x5d, 0x7f, 0x80, 0xff][i % 8]).collect();
            assert!(!needs_escape(&s), "{s:?}");
        }
    }

    #[test]
    fn chunk_lines_are_byte_for_byte_what_serde_writes() {
        let awkward = "quote \" backslash \\ tab \t newline \n bell \u{7} del \u{7f} é 😀 \u{2028}";
        let mut full = UserView {
            key: Cow::Borrowed("ann@x.com"),
            first_name: Some("Ann"),
            last_name: Some(awkward),
            phone: Some("+1 415"),
            org: Some("North"),
            role: Some("Learner"),
            department: Some("Dept \"7\""),
            groups: Some(" a ; ;b;\u{1}c ;"),
            products: vec!["LMS".into(), "Video".into()],
            associations: [("parent".to_string(), "mom@x.com".to_string()), ("instructor".into(), "t@x.com".into())].into(),
            attributes: [("Region".to_string(), "EMEA".to_string()), ("Note".into(), awkward.into())].into(),
            user_type: Some("Student".into()),
            invite: true,
            invite_at: Some("2026-09-01T00:00:00+00:00".into()),
            licence_pool: Some(awkward.into()),
            external_id: Some(awkward),
            new_email: Some("new@x.com".into()),
            username: Some("user:kid1".into()),
        };
        for action in [Action::Create, Action::Update, Action::Upsert, Action::Delete, Action::Expire, Action::Invite] {
            same_as_serde(&RowView { row: 4_000_000_001, action, target: TargetView::User(full.clone()) });
        }
        // Every field absent, one at a time present.
        let bare = UserView { key: Cow::Owned("user:kid".into()), ..Default::default() };
        same_as_serde(&RowView { row: 2, action: Action::Upsert, target: TargetView::User(bare.clone()) });
        full.groups = Some(" ; ;");
        same_as_serde(&RowView { row: 2, action: Action::Upsert, target: TargetView::User(full.clone()) });
        // A group named twice, in any case, is one group, as first written.
        full.groups = Some("Chess;Chess;chess\nGo; CHESS");
        let twice = RowView { row: 2, action: Action::Upsert, target: TargetView::User(full) };
        same_as_serde(&twice);
        match twice.to_op().target {
            Target::User { fields, .. } => assert_eq!(fields.groups, ["Chess", "Go"]),
            other => panic!("{other:?}"),
        }
        for (name, v) in [("first", "x"), ("groups", "g")] {
            let mut u = bare.clone();
            if name == "first" {
                u.first_name = Some(v)
            } else {
                u.groups = Some(v)
            }
            same_as_serde(&RowView { row: 9, action: Action::Disable, target: TargetView::User(u) });
        }
        for name in ["North", awkward, ""] {
            for action in [Action::Create, Action::Delete] {
                same_as_serde(&RowView {
                    row: 3,
                    action,
                    target: TargetView::Org { name, email: None, phone: None, external_id: None, parent: None },
                });
                let email = Some(Cow::Borrowed(awkward));
                same_as_serde(&RowView {
                    row: 3,
                    action,
                    target: TargetView::Org { name, email, phone: Some(awkward), external_id: Some(awkward), parent: Some(awkward) },
                });
                same_as_serde(&RowView {
                    row: 3,
                    action,
                    target: TargetView::Org { name, email: None, phone: Some("+1"), external_id: None, parent: Some("North") },
                });
            }
        }
    }
}
