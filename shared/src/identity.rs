//! Who a row is about when emails change: a row with an `ExternalId` is matched by it (its
//! Email may be the person's new address), a row with `NewEmail` moves the user named by Email,
//! and a row with a `Username` beside its Email moves the user known by that Username alone (a
//! student given an address) when no user has the Email yet. Decided per chunk from one batched
//! read of the ExternalIds and one of the Usernames; the writes' conditions stay the authority
//! (`Directory::claim_external_id`, `Directory::move_user`).

use crate::error::Result;
use crate::model::{Action, RowOp, Target, User};
use crate::services::Services;
use crate::wording::quoted;
use std::collections::HashMap;

/// What a chunk's rows need besides their write.
#[derive(Debug, Default)]
pub struct Identities {
    /// Row -> the email its user moves from (to the row's Email, its target now).
    pub moves: HashMap<u32, Moving>,
    /// Row -> the ExternalId it gives a user that has none (claimed before the write).
    pub claims: HashMap<u32, String>,
    /// Row -> (column, message): refused before any write.
    pub refused: HashMap<u32, (&'static str, String)>,
}

#[derive(Debug, Clone)]
pub struct Moving {
    pub from: String,
    /// The column that asked for the move (ExternalId, NewEmail or Username): messages name it.
    pub column: &'static str,
}

impl Moving {
    /// The user who moves as messages name them: their old email, or the Username they were
    /// known by (`user:kid1` is a key, no address).
    pub fn who(&self) -> String {
        match self.from.strip_prefix("user:") {
            Some(name) if self.column == "Username" => format!("the user known by Username \"{}\"", quoted(name)),
            _ => self.from.clone(),
        }
    }
}

/// Decide each user row's identity. NewEmail rows are retargeted at the new email (the old one
/// is in `moves`); `stored` gains the users the moves start from, under their new email, so the
/// licence, unchanged and Changes decisions see the person.
pub async fn plan(
    svc: &Services,
    tenant: &str,
    ops: &mut [RowOp],
    stored: &mut crate::ports::Users,
    read: crate::ports::Consistency,
) -> Result<Identities> {
    let mut out = Identities::default();
    let ids: Vec<String> = ops
        .iter()
        .filter_map(|op| match &op.target {
            Target::User { fields, .. } => fields.external_id.clone(),
            _ => None,
        })
        .collect();
    let holders = if ids.is_empty() { HashMap::new() } else { svc.directory.external_ids(tenant, &ids, read).await? };
    // Rows with a Username beside an Email whose user is not known to exist: (row, action, key).
    let mut by_username: Vec<(u32, Action, String)> = Vec::new();
    for op in ops.iter_mut() {
        let (row, action) = (op.row, op.action);
        let Target::User { email, fields } = &mut op.target else { continue };
        // Taken out: a row is its Email's alone unless its Username finds someone (below).
        let username = fields.username.take();
        if let Some(new) = fields.new_email.take() {
            let from = std::mem::replace(email, new);
            out.moves.insert(row, Moving { from, column: "NewEmail" });
            continue;
        }
        let Some(id) = fields.external_id.clone() else {
            if let Some(key) = username.filter(|_| matches!(action, Action::Create | Action::Upsert | Action::Update))
                && (action == Action::Create || !stored.contains_key(email.as_str()))
            {
                by_username.push((row, action, key));
            }
            continue;
        };
        match holders.get(&id) {
            Some(holder) if holder == email => {}
            Some(holder) if matches!(action, Action::Upsert | Action::Update) => {
                out.moves.insert(row, Moving { from: holder.clone(), column: "ExternalId" });
            }
            Some(holder) => {
                let verb = if action == Action::Create { "create a second user with it" } else { "act on another email" };
                let message = format!(
                    "ExternalId \"{}\" belongs to {holder}; a {action} row cannot {verb} (an Update or Upsert row with the new Email changes their email)",
                    quoted(&id)
                );
                out.refused.insert(row, ("ExternalId", message));
            }
            None => match stored.get(email.as_str()).and_then(|u| u.fields.external_id.as_deref()) {
                Some(theirs) if theirs != id => {
                    let message = format!(
                        "user {email} has ExternalId \"{}\"; a row cannot change a user's ExternalId (\"{}\" given)",
                        quoted(theirs),
                        quoted(&id)
                    );
                    out.refused.insert(row, ("ExternalId", message));
                }
                _ if matches!(action, Action::Create | Action::Upsert | Action::Update) => {
                    out.claims.insert(row, id);
                }
                _ => {}
            },
        }
    }
    // A student first created by Username and now given an email: moved to it, keeping their
    // account (id, licence, products, Parent), not left behind as a second user that replace
    // mode would disable. Only while no user has the Email: two accounts stay two.
    if !by_username.is_empty() {
        let mut keys: Vec<String> = by_username.iter().map(|(.., key)| key.clone()).collect();
        keys.sort_unstable();
        keys.dedup();
        let known = svc.directory.read_users(tenant, &keys, read).await?.live;
        for (row, action, key) in by_username {
            if !known.contains_key(&key) {
                continue;
            }
            let moving = Moving { from: key, column: "Username" };
            if action == Action::Create {
                let message = format!("{} exists already; an Update or Upsert row gives them this Email", moving.who());
                out.refused.insert(row, ("Username", message));
            } else {
                out.moves.insert(row, moving);
            }
        }
        stored.extend(known);
    }
    // The users moves start from (and their targets: a retried move finds the user there).
    let mut wanted: Vec<String> = Vec::new();
    for op in ops.iter() {
        if let (Some(m), Target::User { email, .. }) = (out.moves.get(&op.row), &op.target) {
            wanted.extend([m.from.clone(), email.clone()].into_iter().filter(|e| !stored.contains_key(e)));
        }
    }
    wanted.sort_unstable();
    wanted.dedup();
    if !wanted.is_empty() {
        stored.extend(svc.directory.users(tenant, &wanted).await?);
    }
    for op in ops.iter() {
        if let (Some(m), Target::User { email, .. }) = (out.moves.get(&op.row), &op.target)
            && !stored.contains_key(email)
            && let Some(user) = stored.get(&m.from).cloned()
        {
            stored.insert(email.clone(), Box::new(User { email: email.clone(), ..*user }));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::adapters::memory::InviteState;
    use crate::testkit::Kit;

    /// A file keyed by ExternalId after two people changed email: each row finds its person by
    /// the id, moves them to the new email with everything they had (id, group, product,
    /// licence, the pending invite), and the association naming the old email follows.
    #[tokio::test]
    async fn a_file_keyed_by_external_id_moves_people_to_their_new_emails_keeping_everything() {
        let mut kit = Kit::new(|t| {
            t.licences = Some(10);
            t.products = vec!["LMS".into()];
        })
        .await;
        let first = kit
            .run(
                "hr.csv",
                "ExternalId,Email,FirstName,Group,Products,InviteUser,ScheduledDate,Supervisor\n\
                 E1,boss@acme.example.com,Bo,Leads,LMS,,,\n\
                 E2,ann@acme.example.com,Ann,Teachers,LMS,TRUE,2030-01-01,boss@acme.example.com\n",
            )
            .await;
        assert_eq!(first.succeeded, 2);
        let dir = kit.svc.directory.clone();
        let before = dir.user("acme", "ann@acme.example.com").await.unwrap().unwrap();
        let moved = kit.run("hr2.csv", "ExternalId,Email,FirstName\nE1,chief@acme.example.com,Bo\nE2,ann.new@acme.example.com,Ann\n").await;
        let out = kit.outcomes(&moved).await;
        assert_eq!(out[0], ("Updated".into(), "email changed from boss@acme.example.com to chief@acme.example.com".into()));
        assert_eq!(out[1].1, "email changed from ann@acme.example.com to ann.new@acme.example.com");
        assert_eq!(kit.changes(&moved).await[1], "Email: \"ann@acme.example.com\" -> \"ann.new@acme.example.com\"");
        assert!(
            dir.user("acme", "ann@acme.example.com").await.unwrap().is_none()
                && dir.user("acme", "boss@acme.example.com").await.unwrap().is_none()
        );
        let ann = dir.user("acme", "ann.new@acme.example.com").await.unwrap().unwrap();
        assert_eq!(
            (ann.user_id.clone(), ann.status, &ann.fields.groups, &ann.fields.products),
            (before.user_id.clone(), before.status, &before.fields.groups, &before.fields.products)
        );
        assert_eq!(ann.fields.external_id.as_deref(), Some("E2"));
        assert_eq!(
            ann.fields.associations.get("supervisor").map(String::as_str),
            Some("chief@acme.example.com"),
            "the association follows"
        );
        assert_eq!(kit.user_ids(&moved).await[1], before.user_id.clone().unwrap());
        assert_eq!(dir.licences_used("acme", None).await.unwrap(), 2, "the licence moves with the person");
        assert_eq!(kit.mem.invites.of("acme", "ann.new@acme.example.com").map(|i| i.0), Some(InviteState::Pending));
        assert!(kit.mem.invites.of("acme", "ann@acme.example.com").is_none());
        assert_eq!(
            dir.external_ids("acme", &["E2".into()], crate::ports::Consistency::Strong).await.unwrap()["E2"],
            "ann.new@acme.example.com"
        );

        // The same file again changes nothing; then the hostile cases, each its own message.
        let again = kit.run("hr3.csv", "ExternalId,Email,FirstName\nE1,chief@acme.example.com,Bo\n").await;
        assert_eq!(kit.outcomes(&again).await[0].0, "Unchanged");
        let long = "x".repeat(crate::model::MAX_EXTERNAL_ID_CHARS + 1);
        let bad = kit
            .run(
                "bad.csv",
                &format!(
                    "Action,ExternalId,Email\n\
                     Upsert,E1,ann.new@acme.example.com\n\
                     Create,E2,someone@acme.example.com\n\
                     Upsert,E7,new1@acme.example.com\n\
                     Upsert,E7,new2@acme.example.com\n\
                     Upsert,{long},new3@acme.example.com\n"
                ),
            )
            .await;
        let out = kit.outcomes(&bad).await;
        assert_eq!(out[0].1, "ann.new@acme.example.com already belongs to another user; chief@acme.example.com keeps their email");
        assert!(out[1].1.starts_with("ExternalId \"E2\" belongs to ann.new@acme.example.com; a Create row cannot"), "{}", out[1].1);
        assert_eq!(out[2].0, "Created");
        assert_eq!(
            out[3].1,
            "duplicate ExternalId \"E7\": row 4 of this file already has it; only the first row is applied. Fix this row if it is another one, or delete it: dropped again as it is, it would change what the first row applied"
        );
        assert_eq!(out[4].1, format!("ExternalId is {} characters long; the limit is 128", long.len()));
        let other = kit.run("other.csv", "ExternalId,Email\nE9,ann.new@acme.example.com\n").await;
        let out = kit.outcomes(&other).await;
        assert!(out[0].1.starts_with("user ann.new@acme.example.com has ExternalId \"E2\""), "{}", out[0].1);
        assert_eq!(dir.user("acme", "chief@acme.example.com").await.unwrap().unwrap().fields.first_name.as_deref(), Some("Bo"));
        // A deleted person's ExternalId is free again.
        kit.run("gone.csv", "Action,Email\nDelete,new1@acme.example.com\n").await;
        let reused = kit.run("reuse.csv", "ExternalId,Email\nE7,other@acme.example.com\n").await;
        assert_eq!(kit.outcomes(&reused).await[0].0, "Created");
    }

    /// A student created by Username alone, later given an email by a row with both: the row
    /// wrote a second user under the email and left the first behind, which a replace file then
    /// disabled (id, licence, products and Parent lost with it). The row now moves the student to
    /// the email, and a replace file counts them as moving, not absent. With a user at both keys
    /// the row is the Email's, and the Username's account, named by no row, is absent.
    #[tokio::test]
    async fn a_username_beside_an_email_moves_the_student_known_by_it_to_the_email() {
        use crate::model::UserStatus;
        let mut kit = Kit::new(|t| {
            t.licences = Some(10);
            t.products = vec!["LMS".into()];
        })
        .await;
        let first = kit
            .run(
                "school.csv",
                "Email,Username,Parent,FirstName,Products\n\
                 mom@acme.example.com,,,Mom,\n\
                 ,Kid1,mom@acme.example.com,Kid,LMS\n\
                 ,kid2,mom@acme.example.com,Kay,\n\
                 kid3@acme.example.com,,,Three,\n\
                 ,kid3,mom@acme.example.com,Other,\n",
            )
            .await;
        assert_eq!(first.succeeded, 5, "{:?}", kit.outcomes(&first).await);
        let dir = kit.svc.directory.clone();
        let before = dir.user("acme", "user:kid1").await.unwrap().unwrap();
        // The nightly replace file, now with kid1's address.
        let sync = "Email,Username,Parent,FirstName\n\
                    mom@acme.example.com,,,Mom\n\
                    kid1@acme.example.com,Kid1,,Kid\n\
                    ,kid2,mom@acme.example.com,Kay\n\
                    kid3@acme.example.com,kid3,,Three\n";
        let moved = kit.run("replace/sync.csv", sync).await;
        let out = kit.outcomes(&moved).await;
        assert_eq!(out[1], ("Updated".into(), "the user known by Username \"kid1\" was given the email kid1@acme.example.com".into()));
        assert_eq!(kit.changes(&moved).await[1], "Email: (empty) -> \"kid1@acme.example.com\"");
        assert_eq!(kit.user_ids(&moved).await[1], before.user_id.clone().unwrap());
        assert_eq!(out[3].0, "Unchanged", "a user at the Email: that row is theirs");
        assert!(dir.user("acme", "user:kid1").await.unwrap().is_none(), "no second account left behind");
        let kid = dir.user("acme", "kid1@acme.example.com").await.unwrap().unwrap();
        assert_eq!(
            (kid.user_id.clone(), kid.status, &kid.fields.products, kid.fields.associations.get("parent").map(String::as_str)),
            (before.user_id.clone(), UserStatus::Active, &before.fields.products, Some("mom@acme.example.com"))
        );
        for key in ["mom@acme.example.com", "user:kid2", "kid3@acme.example.com"] {
            let user = dir.user("acme", key).await.unwrap().unwrap();
            assert_eq!(user.status, UserStatus::Active, "{key}: replace mode keeps every user the file names");
        }
        assert_eq!(dir.user("acme", "user:kid3").await.unwrap().unwrap().status, UserStatus::Disabled);
        assert_eq!(kit.summary(&moved).await.disabled_not_in_file, 1, "only user:kid3 was absent: {:?}", kit.outcomes(&moved).await);
        assert_eq!(dir.licences_used("acme", None).await.unwrap(), 4, "the licence moves with the student");

        // The same file again changes nothing.
        let again = kit.run("replace/sync2.csv", sync).await;
        assert!(kit.outcomes(&again).await.iter().all(|(status, _)| status == "Unchanged"), "{:?}", kit.outcomes(&again).await);
        // A Create row does not make a second account of a student known by the Username.
        let create = kit.run("create.csv", "Action,Email,Username\nCreate,kay@acme.example.com,KID2\n").await;
        assert_eq!(
            kit.outcomes(&create).await[0].1,
            "the user known by Username \"kid2\" exists already; an Update or Upsert row gives them this Email"
        );
        assert!(dir.user("acme", "kay@acme.example.com").await.unwrap().is_none());
        // Two rows about one Username could both write the student: the later fails.
        let twice = kit
            .run("twice.csv", "Email,Username,Parent\nz1@acme.example.com,kidz,\nz2@acme.example.com,KIDZ,\n,kidz,mom@acme.example.com\n")
            .await;
        let out = kit.outcomes(&twice).await;
        let dup = "duplicate Username \"kidz\": row 2 of this file already has it; only the first row is applied. Fix this row if it is another one, or delete it: dropped again as it is, it would change what the first row applied";
        assert_eq!((out[1].1.as_str(), out[2].1.as_str()), (dup, dup));
    }

    /// Without ExternalId, NewEmail moves the user named by Email; a new email that belongs to
    /// someone else fails naming it, and the file-level mistakes are caught before anything runs.
    #[tokio::test]
    async fn new_email_moves_the_user_named_by_email_unless_the_new_one_is_taken() {
        let mut kit = Kit::new(|_| {}).await;
        kit.run("users.csv", "Email,Department\na@acme.example.com,Sales\nb@acme.example.com,Ops\n").await;
        let job = kit
            .run(
                "moves.csv",
                "Action,Email,NewEmail,Department\n\
                 Update,a@acme.example.com,a2@acme.example.com,Support\n\
                 Update,b@acme.example.com,a2@acme.example.com,\n\
                 Create,c@acme.example.com,c2@acme.example.com,\n\
                 Update,b@acme.example.com,B@acme.example.com,\n\
                 Update,nobody@acme.example.com,n2@acme.example.com,\n",
            )
            .await;
        let out = kit.outcomes(&job).await;
        assert_eq!(out[0], ("Updated".into(), "email changed from a@acme.example.com to a2@acme.example.com".into()));
        assert_eq!(
            kit.changes(&job).await[0],
            "Email: \"a@acme.example.com\" -> \"a2@acme.example.com\"; Department: \"Sales\" -> \"Support\""
        );
        assert!(out[1].1.contains("duplicate") || out[1].1.contains("already belongs to another user"), "{}", out[1].1);
        assert_eq!(out[2].1, "NewEmail changes an existing user's email: use it with Update, Upsert or Invite, not Create");
        assert_eq!(out[4].1, "no user has the email nobody@acme.example.com any more; nothing to move");
        let dir = &kit.svc.directory;
        assert_eq!(dir.user("acme", "a2@acme.example.com").await.unwrap().unwrap().fields.department.as_deref(), Some("Support"));
        assert_eq!(dir.user("acme", "b@acme.example.com").await.unwrap().unwrap().fields.department.as_deref(), Some("Ops"));
        let taken = kit.run("taken.csv", "Email,NewEmail\nb@acme.example.com,a2@acme.example.com\n").await;
        assert_eq!(
            kit.outcomes(&taken).await[0].1,
            "a2@acme.example.com already belongs to another user; b@acme.example.com keeps their email"
        );
        let both = kit.run("both.csv", "Email,ExternalId,NewEmail\nb@acme.example.com,E1,b2@acme.example.com\n").await;
        assert!(kit.outcomes(&both).await[0].1.starts_with("a row with an ExternalId changes the email"));
    }

    /// A replace-mode file keyed by ExternalId names a person under their new email: they move,
    /// and are not disabled as absent; someone truly absent still is.
    #[tokio::test]
    async fn a_replace_file_keyed_by_external_id_moves_a_renamed_person_instead_of_disabling_them() {
        let mut kit = Kit::new(|_| {}).await;
        kit.run("hr.csv", "ExternalId,Email\nE1,ann@acme.example.com\nE2,bob@acme.example.com\nE3,cy@acme.example.com\n").await;
        let job = kit.run("replace/hr.csv", "ExternalId,Email\nE1,ann@new.example.com\nE2,bob@acme.example.com\n").await;
        let out = kit.outcomes(&job).await;
        assert_eq!(out[0].1, "email changed from ann@acme.example.com to ann@new.example.com");
        let summary = kit.summary(&job).await;
        assert_eq!(summary.disabled_not_in_file, 1, "only cy");
        let dir = &kit.svc.directory;
        assert_eq!(dir.user("acme", "ann@new.example.com").await.unwrap().unwrap().status, crate::model::UserStatus::Active);
        assert_eq!(dir.user("acme", "cy@acme.example.com").await.unwrap().unwrap().status, crate::model::UserStatus::Disabled);
    }

    /// A replace file's refused rows still name whom they meant: their users were disabled as
    /// absent when the Email was pasted with a display name, `mailto:` or a full stop, when a
    /// renamed person's row failed for another column, or when the addresses sat in a Login
    /// column; only someone truly absent is disabled.
    #[tokio::test]
    async fn a_replace_files_refused_rows_still_keep_the_users_they_name() {
        use crate::model::UserStatus::{Active, Disabled};
        let mut kit = Kit::new(|_| {}).await;
        let people = ["ann", "bob", "cat", "dan", "eve"];
        let mut all = String::from("ExternalId,Email\n");
        for (i, p) in people.iter().enumerate() {
            all += &format!("E{i},{p}@acme.example.com\n");
        }
        kit.run("all.csv", &all).await;
        let file = "ExternalId,Email,Role\n\
                    E0,ann@new.example.com,Teachr\n\
                    E1,\"Bob <bob@acme.example.com>\",Learner\n\
                    E2,mailto:cat@acme.example.com,Learner\n\
                    E3,dan@acme.example.com.,Learner\n";
        let job = kit.run("replace/hr.csv", file).await;
        assert_eq!(kit.outcomes(&job).await.iter().filter(|(s, _)| s == "Failure").count(), 4);
        assert_eq!(kit.summary(&job).await.disabled_not_in_file, 1, "only eve");
        let status = |users: &crate::ports::Users, p: &str| users[&format!("{p}@acme.example.com")].status;
        let emails: Vec<String> = people.iter().map(|p| format!("{p}@acme.example.com")).collect();
        let users = kit.svc.directory.users("acme", &emails).await.unwrap();
        assert_eq!(people.map(|p| status(&users, p)), [Active, Active, Active, Active, Disabled]);

        // Addresses under a Login header (read as Usernames, every row refused): still named.
        let job = kit.run("replace/logins.csv", "Login\nann@acme.example.com\nbob@acme.example.com\n").await;
        assert_eq!(kit.summary(&job).await.disabled_not_in_file, 2, "cat and dan, not ann or bob");
        let users = kit.svc.directory.users("acme", &emails).await.unwrap();
        assert_eq!(people.map(|p| status(&users, p)), [Active, Active, Disabled, Disabled, Disabled]);
    }

    /// A tenant may require ExternalId and name the column its HR export uses.
    #[tokio::test]
    async fn a_tenant_can_require_external_ids_under_its_own_column_name() {
        let mut kit = Kit::new(|t| {
            t.external_id_required = true;
            t.external_id_column = Some("Employee Number".into());
        })
        .await;
        let job = kit.run("hr.csv", "Email,Employee Number\na@acme.example.com,1001\nb@acme.example.com,\n").await;
        let out = kit.outcomes(&job).await;
        assert_eq!(out[0].0, "Created");
        assert_eq!(out[1].1, "Employee Number is empty; this tenant matches every user by it");
        let a = kit.svc.directory.user("acme", "a@acme.example.com").await.unwrap().unwrap();
        assert_eq!(a.fields.external_id.as_deref(), Some("1001"));
    }
}
