//! The directory's write rules, free of any SDK: which conditional write a row starts with, and
//! what the old image a write returns means. The DynamoDB adapter turns each [`Attempt`] into one
//! conditional request; the decisions live here so they can be tested one by one.
//!
//! Three things are decided by the write itself, never by an earlier read:
//! - **Licences.** A licence is taken only by a write whose condition required the user to be
//!   absent or disabled, and given back only by one that required them to be active. Two files
//!   disabling one user: one condition holds, the other fails and sees `disabled`.
//! - **Order between uploads.** Every write carries its upload's order and requires the item's to
//!   be no newer: a retried or replayed row of an older upload is refused (`Superseded`).
//! - **Retries.** Every write stamps the item with its row's token; a write refused by its own
//!   earlier success reads what it did from the stamp (`lic` says whether it moved a licence).

use crate::model::{Action, UserStatus};
use crate::ports::{Licence, Write, Written};

/// What a write saw of its item before it (the old image a refused or successful write returns).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Seen {
    /// A tombstone: the item was deleted (it keeps the deleting upload's order).
    pub tombstone: bool,
    /// Users only.
    pub status: Option<UserStatus>,
    /// Token of the row that wrote the item last.
    pub last_write: Option<String>,
    pub created_by: Option<String>,
    /// Token of the write that last moved the item's licence (took or gave it back).
    pub licence_by: Option<String>,
    /// Order of the upload that wrote the item last.
    pub order: Option<String>,
    pub activated: bool,
    /// Users only: the named licence pool the user counts in (`None`: the default pool).
    #[serde(default)]
    pub pool: Option<String>,
    /// The key holds no user but the contact email of this organization: no user write applies.
    #[serde(default)]
    pub contact_of: Option<String>,
}

/// One conditional write. Each names what it requires of the item; all of them also require the
/// item's order to be no newer than the row's upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Put a new item where none lives (absent, or the tombstone of a delete). Takes a licence.
    Create,
    /// Set the row's fields; with `may_create`, also where none lives (then it takes a licence).
    Upsert { may_create: bool },
    /// Move a live user's status to `to` from the other one: takes (to active) or gives back
    /// (to disabled) a licence, and records that on the item. `strip_targeting`: replace mode's
    /// reconcile also removes group assignments and content targeting.
    Transition { to: UserStatus, strip_targeting: bool },
    /// A live user whose status is still `is`: stamp only, no licence moves.
    Keep { is: UserStatus },
    /// A live item: set the row's fields (Update, organization renames); `revoke`: Expire, which
    /// removes the row's products (all of them when it lists none) instead.
    Update { revoke: bool },
    /// A live user who has not activated: record the invitation.
    Invite,
    /// Replace a live item by a tombstone. For users, `active` says which status is required:
    /// `Some(true)` gives the licence back; organizations have none (`None`).
    Tombstone { active: Option<bool> },
}

/// How one conditional write ended, with the item as it was before it (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempted {
    /// The condition held and the write was made. `old` is reported for Upsert (whether it
    /// created); other writes may leave it `None`.
    /// The item as it was, in full, comes too (`None`: it did not exist): what an undo puts back.
    Written(Option<Seen>, Option<crate::model::Image>),
    Refused(Option<Seen>),
}

/// Whether `attempt`'s condition holds on `old` (the item of an `org` or a user): the conditions
/// the DynamoDB adapter writes as condition expressions, for the in-memory directory.
pub fn holds(attempt: Attempt, old: Option<&Seen>, order: &str) -> bool {
    let ordered = old.and_then(|o| o.order.as_deref()).is_none_or(|theirs| theirs <= order);
    if old.is_some_and(|o| o.contact_of.is_some()) {
        // An organization's contact email: every user write is refused (the create's "no live
        // item", the others' "a user").
        return false;
    }
    let live = old.filter(|o| !o.tombstone);
    let status = live.map(|o| o.status.unwrap_or_default());
    ordered
        && match attempt {
            Attempt::Create => live.is_none(),
            Attempt::Upsert { may_create } => may_create || live.is_some(),
            Attempt::Transition { to, .. } => status.is_some_and(|s| s != to),
            Attempt::Keep { is } => status == Some(is),
            Attempt::Update { .. } => live.is_some(),
            Attempt::Invite => live.is_some_and(|o| !o.activated),
            Attempt::Tombstone { active: None } => live.is_some(),
            Attempt::Tombstone { active: Some(want) } => status.is_some_and(|s| (s == UserStatus::Active) == want),
        }
}

/// After a write: the row's result, or the next write to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Done(Written),
    Try(Attempt),
}

fn done(write: Write, licence: Licence) -> Next {
    Next::Done(Written { write, licence })
}

/// How many attempts one row may take before the item is called too busy (each retry means
/// another writer changed it in between).
pub const MAX_ATTEMPTS: usize = 6;

/// The write a row starts with. `licensed`: the row holds a licence (always, for a tenant without
/// a pool). A row without one only ever writes what cannot take a licence.
pub fn first(action: Action, user: bool, licensed: bool) -> Next {
    use Action::*;
    Next::Try(match (action, user) {
        (Create, true) if !licensed => return done(Write::AlreadyExists, Licence::Unchanged),
        (Create, _) => Attempt::Create,
        (Upsert, true) => Attempt::Upsert { may_create: licensed },
        (Upsert, false) => Attempt::Upsert { may_create: true },
        (Update, _) => Attempt::Update { revoke: false },
        (Expire, _) => Attempt::Update { revoke: true },
        (Enable, true) if licensed => Attempt::Transition { to: UserStatus::Active, strip_targeting: false },
        (Enable, true) => Attempt::Keep { is: UserStatus::Active },
        (Disable, true) => Attempt::Transition { to: UserStatus::Disabled, strip_targeting: false },
        (Reconcile, true) => Attempt::Transition { to: UserStatus::Disabled, strip_targeting: true },
        (Invite, true) => Attempt::Invite,
        (Delete, true) => Attempt::Tombstone { active: Some(true) },
        (Delete, false) => Attempt::Tombstone { active: None },
        (Enable | Disable | Reconcile | Invite, false) => return done(Write::NotFound, Licence::Unchanged),
        // Restores are not conditional writes of a row's values (`Directory::restore`).
        (Restore, _) => return done(Write::NotFound, Licence::Unchanged),
    })
}

/// The write's condition held. `old`: the item before it (needed for Upsert only: whether it created).
pub fn succeeded(attempt: Attempt, user: bool, old: Option<&Seen>, token: &str) -> Written {
    let took = if user { Licence::Took } else { Licence::Unchanged };
    let (write, licence) = match attempt {
        Attempt::Create => (Write::Created, took),
        Attempt::Upsert { .. } => match old {
            None => (Write::Created, took),
            Some(o) if o.tombstone || o.created_by.as_deref() == Some(token) => (Write::Created, took),
            Some(_) => (Write::Updated, Licence::Unchanged),
        },
        Attempt::Transition { to: UserStatus::Active, .. } => (Write::Updated, Licence::Took),
        Attempt::Transition { to: UserStatus::Disabled, .. } => (Write::Updated, Licence::Freed),
        Attempt::Keep { .. } | Attempt::Update { .. } | Attempt::Invite => (Write::Updated, Licence::Unchanged),
        Attempt::Tombstone { active: Some(true) } => (Write::Deleted, Licence::Freed),
        Attempt::Tombstone { .. } => (Write::Deleted, Licence::Unchanged),
    };
    Written { write, licence }
}

/// The write's condition failed; `old` is the item as it was (`None`: absent).
pub fn refused(attempt: Attempt, user: bool, old: Option<&Seen>, token: &str, order: &str) -> Next {
    let Some(o) = old else { return absent(attempt) };
    if let Some(org) = &o.contact_of {
        return done(Write::ContactOf(org.clone()), Licence::Unchanged);
    }
    if o.last_write.as_deref() == Some(token) {
        return Next::Done(own(attempt, user, o, token));
    }
    if o.order.as_deref().is_some_and(|theirs| theirs > order) {
        let job = o.last_write.as_deref().map(job_of).unwrap_or_default();
        return done(Write::Superseded(job.to_string()), Licence::Unchanged);
    }
    if o.tombstone {
        return absent(attempt);
    }
    let status = o.status.unwrap_or_default();
    match attempt {
        Attempt::Create => done(Write::AlreadyExists, Licence::Unchanged),
        // Replace mode's reconcile (the only transition that strips targeting): "already disabled".
        Attempt::Transition { to, strip_targeting: true } if status == to => done(Write::NotFound, Licence::Unchanged),
        Attempt::Transition { to, .. } if status == to => Next::Try(Attempt::Keep { is: to }),
        Attempt::Keep { is: UserStatus::Active } if status != UserStatus::Active => done(Write::Unlicensed, Licence::Unchanged),
        Attempt::Keep { is: UserStatus::Disabled } if status != UserStatus::Disabled => {
            Next::Try(Attempt::Transition { to: UserStatus::Disabled, strip_targeting: false })
        }
        Attempt::Invite if o.activated => done(Write::AlreadyExists, Licence::Unchanged),
        Attempt::Tombstone { active: Some(want) } if (status == UserStatus::Active) != want => {
            Next::Try(Attempt::Tombstone { active: Some(!want) })
        }
        // The item changed between the write and its refusal: try the same write again.
        other => Next::Try(other),
    }
}

/// No live item: absent, or deleted.
fn absent(attempt: Attempt) -> Next {
    match attempt {
        // Only the order can refuse these where nothing lives; it moved on: try again.
        Attempt::Create | Attempt::Upsert { may_create: true } => Next::Try(attempt),
        // The user existed when the file was read and held no licence for this row.
        Attempt::Upsert { may_create: false } => done(Write::Unlicensed, Licence::Unchanged),
        // Reconcile: "already disabled or removed".
        _ => done(Write::NotFound, Licence::Unchanged),
    }
}

/// The item carries this row's own stamp: an earlier attempt of this row succeeded.
fn own(attempt: Attempt, user: bool, o: &Seen, token: &str) -> Written {
    let moved = o.licence_by.as_deref() == Some(token);
    let (write, licence) = match attempt {
        Attempt::Create | Attempt::Upsert { .. } if o.created_by.as_deref() == Some(token) => {
            (Write::Created, if user { Licence::Took } else { Licence::Unchanged })
        }
        Attempt::Create | Attempt::Upsert { .. } => (Write::Updated, Licence::Unchanged),
        Attempt::Tombstone { .. } => (Write::Deleted, if moved { Licence::Freed } else { Licence::Unchanged }),
        _ if moved && o.status == Some(UserStatus::Active) => (Write::Updated, Licence::Took),
        _ if moved => (Write::Updated, Licence::Freed),
        _ => (Write::Updated, Licence::Unchanged),
    };
    Written { write, licence }
}

/// Whether a row that sets `row` on an existing user would change nothing of `stored`: every
/// field it gives equals the stored one, its groups are the stored groups, its products are
/// granted already, its associations and attributes hold the same values. Such a row is not
/// written at all (no write unit) and reports `unchanged`.
pub fn unchanged(row: &crate::model::UserFields, stored: &crate::model::User) -> bool {
    let s = &stored.fields;
    let same = |given: &Option<String>, have: &Option<String>| given.is_none() || given == have;
    same(&row.first_name, &s.first_name)
        && same(&row.last_name, &s.last_name)
        && same(&row.phone, &s.phone)
        && same(&row.org, &s.org)
        && same(&row.role, &s.role)
        && same(&row.department, &s.department)
        && same(&row.user_type, &s.user_type)
        && same(&row.licence_pool, &s.licence_pool)
        && same(&row.external_id, &s.external_id)
        && row.new_email.is_none()
        && (row.groups.is_empty() || same_groups(&row.groups, &s.groups))
        && row.products.iter().all(|p| s.products.contains(p))
        && row.associations.iter().all(|(k, v)| s.associations.get(k) == Some(v))
        && row.attributes.iter().all(|(k, v)| s.attributes.get(k) == Some(v))
}

/// The same groups in any order: `b;a` for stored `a;b` wrote the user again, reported it
/// updated with no change to show, and counted towards the update hold.
pub fn same_groups(row: &[String], stored: &[String]) -> bool {
    row.iter().all(|g| stored.contains(g)) && stored.iter().all(|g| row.contains(g))
}

/// The job of a row token (`<job>#<row>`; job ids contain `#` themselves).
pub fn job_of(token: &str) -> &str {
    token.rsplit_once('#').map_or(token, |(job, _)| job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Licence::*;
    use UserStatus::*;

    const ME: &str = "b/incoming/acme/a.csv#v1#7";
    const NOW: &str = "2026-12-01T10:00:00.000Z#00000000000000000000000000000000";
    const LATER: &str = "2026-12-01T10:00:05.000Z#00000000000000000000000000000000";
    const EARLIER: &str = "2026-12-01T09:00:00.000Z#00000000000000000000000000000000";

    fn user(status: UserStatus) -> Seen {
        Seen { status: Some(status), last_write: Some("b/other.csv#v9#2".into()), order: Some(EARLIER.into()), ..Seen::default() }
    }
    fn w(write: Write, licence: Licence) -> Next {
        Next::Done(Written { write, licence })
    }

    #[test]
    fn a_row_without_a_licence_never_starts_a_write_that_takes_one() {
        assert_eq!(first(Action::Create, true, false), w(Write::AlreadyExists, Unchanged));
        assert_eq!(first(Action::Upsert, true, false), Next::Try(Attempt::Upsert { may_create: false }));
        assert_eq!(first(Action::Enable, true, false), Next::Try(Attempt::Keep { is: Active }));
        assert_eq!(first(Action::Enable, true, true), Next::Try(Attempt::Transition { to: Active, strip_targeting: false }));
        assert_eq!(first(Action::Create, true, true), Next::Try(Attempt::Create));
    }

    #[test]
    fn only_a_write_whose_condition_required_the_old_status_moves_a_licence() {
        assert_eq!(succeeded(Attempt::Transition { to: Disabled, strip_targeting: false }, true, None, ME).licence, Freed);
        assert_eq!(succeeded(Attempt::Transition { to: Active, strip_targeting: false }, true, None, ME).licence, Took);
        assert_eq!(succeeded(Attempt::Keep { is: Disabled }, true, None, ME).licence, Unchanged);
        assert_eq!(succeeded(Attempt::Tombstone { active: Some(true) }, true, None, ME).licence, Freed);
        assert_eq!(succeeded(Attempt::Tombstone { active: Some(false) }, true, None, ME).licence, Unchanged);
        assert_eq!(succeeded(Attempt::Create, false, None, ME).licence, Unchanged, "organizations hold no licence");
    }

    #[test]
    fn the_second_of_two_disables_sees_disabled_and_gives_nothing_back() {
        let next = refused(Attempt::Transition { to: Disabled, strip_targeting: false }, true, Some(&user(Disabled)), ME, NOW);
        assert_eq!(next, Next::Try(Attempt::Keep { is: Disabled }));
        assert_eq!(succeeded(Attempt::Keep { is: Disabled }, true, None, ME), Written { write: Write::Updated, licence: Unchanged });
    }

    #[test]
    fn an_upsert_creates_only_where_nothing_lived_or_its_own_earlier_attempt_created() {
        assert_eq!(succeeded(Attempt::Upsert { may_create: true }, true, None, ME).write, Write::Created);
        let tomb = Seen { tombstone: true, ..Seen::default() };
        assert_eq!(succeeded(Attempt::Upsert { may_create: true }, true, Some(&tomb), ME).licence, Took);
        assert_eq!(succeeded(Attempt::Upsert { may_create: true }, true, Some(&user(Active)), ME).write, Write::Updated);
        let mine = Seen { created_by: Some(ME.into()), ..user(Active) };
        assert_eq!(succeeded(Attempt::Upsert { may_create: true }, true, Some(&mine), ME).licence, Took);
    }

    #[test]
    fn a_retry_reads_what_its_first_attempt_did_from_the_stamp() {
        let disabled_by_me = Seen { last_write: Some(ME.into()), licence_by: Some(ME.into()), ..user(Disabled) };
        assert_eq!(
            refused(Attempt::Transition { to: Disabled, strip_targeting: false }, true, Some(&disabled_by_me), ME, NOW),
            w(Write::Updated, Freed)
        );
        let kept_by_me = Seen { last_write: Some(ME.into()), ..user(Disabled) };
        assert_eq!(
            refused(Attempt::Transition { to: Disabled, strip_targeting: false }, true, Some(&kept_by_me), ME, NOW),
            w(Write::Updated, Unchanged)
        );
        let enabled_by_me = Seen { last_write: Some(ME.into()), licence_by: Some(ME.into()), ..user(Active) };
        assert_eq!(
            refused(Attempt::Transition { to: Active, strip_targeting: false }, true, Some(&enabled_by_me), ME, NOW),
            w(Write::Updated, Took)
        );
        let created = Seen { last_write: Some(ME.into()), created_by: Some(ME.into()), ..user(Active) };
        assert_eq!(refused(Attempt::Create, true, Some(&created), ME, NOW), w(Write::Created, Took));
        let deleted = Seen { tombstone: true, last_write: Some(ME.into()), licence_by: Some(ME.into()), ..Seen::default() };
        assert_eq!(refused(Attempt::Tombstone { active: Some(true) }, true, Some(&deleted), ME, NOW), w(Write::Deleted, Freed));
    }

    #[test]
    fn a_newer_upload_wins_and_names_its_job() {
        let newer = Seen { order: Some(LATER.into()), ..user(Active) };
        let job = "b/other.csv#v9".to_string();
        for attempt in [
            Attempt::Update { revoke: false },
            Attempt::Create,
            Attempt::Transition { to: Disabled, strip_targeting: false },
            Attempt::Tombstone { active: Some(true) },
        ] {
            assert_eq!(refused(attempt, true, Some(&newer), ME, NOW), w(Write::Superseded(job.clone()), Unchanged), "{attempt:?}");
        }
        // A tombstone keeps its upload's order: an older create does not bring the user back.
        let deleted_later = Seen { tombstone: true, ..newer };
        assert_eq!(refused(Attempt::Create, true, Some(&deleted_later), ME, NOW), w(Write::Superseded(job), Unchanged));
    }

    #[test]
    fn a_user_disabled_meanwhile_is_not_enabled_without_a_licence() {
        assert_eq!(refused(Attempt::Keep { is: Active }, true, Some(&user(Disabled)), ME, NOW), w(Write::Unlicensed, Unchanged));
        let gone = Seen { tombstone: true, ..user(Active) };
        assert_eq!(refused(Attempt::Upsert { may_create: false }, true, Some(&gone), ME, NOW), w(Write::Unlicensed, Unchanged));
        assert_eq!(refused(Attempt::Upsert { may_create: false }, true, None, ME, NOW), w(Write::Unlicensed, Unchanged));
    }

    #[test]
    fn a_delete_follows_the_status_it_finds() {
        let next = refused(Attempt::Tombstone { active: Some(true) }, true, Some(&user(Disabled)), ME, NOW);
        assert_eq!(next, Next::Try(Attempt::Tombstone { active: Some(false) }));
        let next = refused(Attempt::Tombstone { active: Some(false) }, true, Some(&user(Active)), ME, NOW);
        assert_eq!(next, Next::Try(Attempt::Tombstone { active: Some(true) }));
        assert_eq!(refused(Attempt::Tombstone { active: Some(true) }, true, None, ME, NOW), w(Write::NotFound, Unchanged));
    }

    #[test]
    fn reconcile_of_a_user_already_disabled_changes_nothing() {
        let next = refused(Attempt::Transition { to: Disabled, strip_targeting: true }, true, Some(&user(Disabled)), ME, NOW);
        assert_eq!(next, w(Write::NotFound, Unchanged));
    }

    #[test]
    fn invites_go_only_to_users_who_have_not_activated() {
        let activated = Seen { activated: true, ..user(Active) };
        assert_eq!(refused(Attempt::Invite, true, Some(&activated), ME, NOW), w(Write::AlreadyExists, Unchanged));
        assert_eq!(refused(Attempt::Invite, true, None, ME, NOW), w(Write::NotFound, Unchanged));
    }

    #[test]
    fn conditions_hold_only_on_the_state_each_write_requires() {
        let tomb = Seen { tombstone: true, ..Seen::default() };
        assert!(holds(Attempt::Create, None, NOW) && holds(Attempt::Create, Some(&tomb), NOW));
        assert!(!holds(Attempt::Create, Some(&user(Active)), NOW));
        assert!(holds(Attempt::Transition { to: Disabled, strip_targeting: false }, Some(&user(Active)), NOW));
        assert!(!holds(Attempt::Transition { to: Disabled, strip_targeting: false }, Some(&user(Disabled)), NOW));
        assert!(!holds(Attempt::Update { revoke: false }, Some(&tomb), NOW), "a tombstone is not a live item");
        assert!(!holds(Attempt::Upsert { may_create: false }, None, NOW));
        let newer = Seen { order: Some(LATER.into()), ..user(Active) };
        assert!(!holds(Attempt::Update { revoke: false }, Some(&newer), NOW), "never over a newer upload");
        assert!(holds(Attempt::Update { revoke: false }, Some(&newer), LATER), "the same upload passes");
    }

    #[test]
    fn a_row_is_unchanged_only_when_every_value_it_gives_is_stored_already() {
        use crate::model::{User, UserFields};
        let stored = User {
            email: "a@x.com".into(),
            status: Active,
            fields: UserFields {
                first_name: Some("Ann".into()),
                groups: vec!["A".into(), "B".into()],
                products: vec!["lms".into(), "video".into()],
                attributes: [("Region".to_string(), "EMEA".to_string())].into(),
                ..UserFields::default()
            },
            created_by: String::new(),
            last_write: String::new(),
            manual_groups: vec![],
            activated: false,
            user_id: None,
        };
        let row = |f: UserFields| unchanged(&f, &stored);
        assert!(row(UserFields::default()), "a row giving nothing changes nothing");
        assert!(row(UserFields { first_name: Some("Ann".into()), products: vec!["lms".into()], ..Default::default() }));
        assert!(!row(UserFields { first_name: Some("Anne".into()), ..Default::default() }));
        assert!(!row(UserFields { last_name: Some("Lee".into()), ..Default::default() }), "a value not stored yet");
        assert!(!row(UserFields { groups: vec!["A".into()], ..Default::default() }), "groups are replaced as a whole");
        assert!(!row(UserFields { products: vec!["chat".into()], ..Default::default() }), "a product not granted yet");
        assert!(!row(UserFields { attributes: [("Region".to_string(), "APAC".to_string())].into(), ..Default::default() }));
        assert!(row(UserFields { invite: true, ..Default::default() }), "an invite is not a stored value");
    }

    #[test]
    fn job_of_a_token_keeps_the_hashes_of_the_job_id() {
        assert_eq!(job_of("bucket/incoming/acme/a.csv#3Lg9#12"), "bucket/incoming/acme/a.csv#3Lg9");
    }
}
