//! Activation emails: recorded by apply when a row creates a user with `InviteUser` (or by the
//! `Invite` action), sent by a sweep when due: `functions/invites` on a schedule in AWS, the local
//! runner locally. Each invite is claimed before sending, so a retried sweep never sends twice,
//! and sending is paced so the SES sending rate is never exceeded.

use crate::address;
use crate::delivery;
use crate::error::{Error, Result};
use crate::model::{Invite, Tenant};
use crate::report::{self, esc};
use crate::services::Services;
use std::collections::HashMap;
use std::time::Duration;
use tracing::{error, info, warn};

/// Sends of one invite before it is marked failed for good.
pub const MAX_ATTEMPTS: u32 = 5;

/// When a failed send is tried again: 1, 4, 16, 64 minutes after the attempts so far.
pub fn backoff(attempts: u32) -> chrono::Duration {
    chrono::Duration::minutes(4i64.pow(attempts.saturating_sub(1).min(4)))
}

/// Send the invites due at `now`; returns how many were sent. Each invite stands alone: one that
/// cannot be sent is recorded on the invite (attempts, reason) and retried later with backoff, or
/// marked failed once retrying cannot help, and the sweep goes on with the others. Only the
/// query for due invites failing stops it.
pub async fn sweep(svc: &Services, now: chrono::DateTime<chrono::Utc>) -> Result<usize> {
    let due = svc.invites.due(&now.to_rfc3339(), svc.config.invite_batch).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let mut tenants: HashMap<String, Option<Tenant>> = HashMap::new();
    let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / svc.config.invite_rate_per_sec.max(0.01)));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut sent, mut failed, mut left) = (0, 0, 0);
    let mut due = due.into_iter();
    while let Some(invite) = due.next() {
        match send_one(svc, &mut tenants, &mut pace, &invite).await {
            Ok(true) => sent += 1,
            Ok(false) => {}
            Err(e) => {
                failed += 1;
                // SES holding mail back (throttling, a day's quota spent, a paused account) holds
                // every invite back: trying the rest spent an attempt of each (five, and an invite
                // fails for good) and the scheduled run's time, which the job sweeps after it need.
                let ses_holds_back = e.holds_mail_back();
                if let Err(e2) = record_failure(svc, &invite, &e, now).await {
                    // The claim stays: taken over once stale, so the invite is tried again.
                    error!(tenant = %invite.tenant, to = %address::masked(&invite.email), error = %e2, "recording a failed invite failed");
                }
                if ses_holds_back {
                    left = due.len();
                    warn!(left, "SES is holding mail back; the other invites wait for the next sweep");
                    break;
                }
            }
        }
    }
    info!(sent, failed, left, "invites sent");
    Ok(sent)
}

/// `Ok(false)`: not sent, nothing wrong (another sweep has it, or its tenant is gone).
async fn send_one(
    svc: &Services,
    tenants: &mut HashMap<String, Option<Tenant>>,
    pace: &mut tokio::time::Interval,
    invite: &Invite,
) -> Result<bool> {
    if !svc.invites.claim(invite, svc.config.lease).await? {
        return Ok(false); // another sweep has it
    }
    if !tenants.contains_key(&invite.tenant) {
        tenants.insert(invite.tenant.clone(), svc.directory.tenant(&invite.tenant).await?);
    }
    let Some(tenant) = tenants.get(&invite.tenant).and_then(Option::as_ref) else {
        warn!(tenant = %invite.tenant, "invite for a removed tenant dropped");
        svc.invites.mark_sent(invite).await?;
        return Ok(false);
    };
    // The invite follows the directory: a user deleted, disabled or activated since (or whose
    // creation was undone) gets no activation email; a user whose email changed before their
    // invite moved with them gets it at the new address.
    let mut email = invite.email.clone();
    let mut user = svc.directory.user(&invite.tenant, &email).await?;
    for _ in 0..MAX_MOVES {
        if user.is_some() {
            break;
        }
        let Some(next) = svc.directory.moved_to(&invite.tenant, &email).await? else { break };
        user = svc.directory.user(&invite.tenant, &next).await?;
        email = next;
    }
    // What is sent goes to the current address; what is marked is the invite as stored.
    let current = Invite { email, ..invite.clone() };
    match user {
        Some(u) if u.status == crate::model::UserStatus::Active && !u.activated => {}
        _ => {
            info!(tenant = %invite.tenant, to = %address::masked(&invite.email), "invite dropped: the user no longer exists, is disabled or has activated");
            svc.invites.record_failure(invite, "not sent: the user no longer exists, is disabled or has activated", None).await?;
            return Ok(false);
        }
    }
    let to = address::deliverable(&current.email)
        .map_err(|why| Error::Aws { service: "sesv2", operation: "SendEmail", message: format!("the address {why}") })?
        .into_owned();
    pace.tick().await;
    let from = report::sender(svc, tenant);
    let from = address::deliverable(&from).map_err(|why| Error::Build { what: "invite", message: format!("sender {why}") })?.into_owned();
    let (subject, text, html) = invite_email(tenant, &current);
    let mime = report::build_email(&from, std::slice::from_ref(&to), &subject, &text, &html, &[])?;
    // Tagged so SES's delivery, bounce and complaint events find the invite (`delivery`).
    let tags = [(delivery::KIND_TAG, delivery::INVITE), (delivery::TENANT_TAG, invite.tenant.as_str())];
    svc.mailer.send_tracked(&from, std::slice::from_ref(&to), mime, &tags).await?;
    svc.invites.mark_sent(invite).await?;
    Ok(true)
}

/// Email changes followed from an invite's address to the user's current one.
const MAX_MOVES: usize = 5;

/// A failed send: due again after a backoff while retrying may help, else failed for good.
async fn record_failure(svc: &Services, invite: &Invite, e: &Error, now: chrono::DateTime<chrono::Utc>) -> Result<()> {
    let attempts = invite.attempts + 1;
    let reason = crate::wording::bounded(&e.to_string(), 500);
    if e.is_retryable() && attempts < MAX_ATTEMPTS {
        let at = (now + backoff(attempts)).to_rfc3339();
        warn!(tenant = %invite.tenant, to = %address::masked(&invite.email), attempts, retry_at = %at, error = %e, "invite not sent; retrying later");
        svc.invites.record_failure(invite, &reason, Some(&at)).await
    } else {
        error!(tenant = %invite.tenant, to = %address::masked(&invite.email), attempts, error = %e, "invite failed for good");
        svc.invites.record_failure(invite, &reason, None).await
    }
}

/// Subject, text and HTML of a tenant-branded activation email.
pub fn invite_email(tenant: &Tenant, invite: &Invite) -> (String, String, String) {
    let product = tenant.branding.product_name.clone().or_else(|| tenant.name.clone()).unwrap_or_else(|| tenant.id.clone());
    let colour = tenant.branding.colour.clone().unwrap_or_else(|| "#1a73e8".into());
    let encoded = percent_encoding::utf8_percent_encode(&invite.email, percent_encoding::NON_ALPHANUMERIC).to_string();
    let link = tenant.branding.activation_url.as_deref().map(|u| u.replace("{email}", &encoded));
    let hello = invite.first_name.as_deref().map(|n| format!("Hello {n},")).unwrap_or_else(|| "Hello,".into());
    let subject = format!("{product}: activate your account");
    let mut text = format!("{hello}\n\nAn account has been created for you on {product}.\n");
    let mut html = format!(
        "<div style=\"font-family:sans-serif\"><h2 style=\"color:{colour}\">{}</h2><p>{}</p><p>An account has been created for you on {}.</p>",
        esc(&product),
        esc(&hello),
        esc(&product)
    );
    match &link {
        Some(l) => {
            text += &format!("Activate it here: {l}\n");
            html += &format!(
                "<p><a href=\"{}\" style=\"background:{colour};color:#fff;padding:8px 16px;text-decoration:none\">Activate my account</a></p>",
                esc(l)
            );
        }
        None => {
            text += "Sign in with this email address to activate it.\n";
            html += "<p>Sign in with this email address to activate it.</p>";
        }
    }
    html += "</div>";
    (subject, text, html)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::memory::InviteState;
    use crate::testkit::Kit;

    /// A create asking for an invite schedules one; a send that may succeed later (throttled)
    /// counts the attempt and backs off; the next sweep after the backoff sends it, once. A send
    /// SES refuses for good is failed for good, with its reason.
    #[tokio::test]
    async fn a_failed_send_is_retried_after_its_backoff_and_sent_once() {
        let mut kit = Kit::new(|_| {}).await;
        kit.run("invite.csv", "Email,First Name,InviteUser\nann@acme.example.com,Ann,Yes\nbob@acme.example.com,Bob,\n").await;
        let emails_before = kit.mem.mailer.sent().len();
        *kit.mem.mailer.throttle_next.lock().unwrap() = 1;
        let now = chrono::Utc::now() + chrono::Duration::seconds(1);
        assert_eq!(sweep(&kit.svc, now).await.unwrap(), 0);
        let (state, attempts, error) = kit.mem.invites.of("acme", "ann@acme.example.com").unwrap();
        assert_eq!((state, attempts), (InviteState::Pending, 1));
        assert!(error.contains("Throttling on purpose"), "{error}");
        assert!(kit.mem.invites.of("acme", "bob@acme.example.com").is_none(), "no invite asked for");
        assert_eq!(sweep(&kit.svc, now).await.unwrap(), 0, "not due again before its backoff");
        let later = now + backoff(1) + chrono::Duration::seconds(1);
        assert_eq!(sweep(&kit.svc, later).await.unwrap(), 1);
        assert_eq!(sweep(&kit.svc, later).await.unwrap(), 0, "sent once");
        assert_eq!(kit.mem.invites.of("acme", "ann@acme.example.com").unwrap().0, InviteState::Sent);
        let sent = kit.mem.mailer.sent();
        assert_eq!(sent.len(), emails_before + 1);
        assert_eq!(sent.last().unwrap().1, vec!["ann@acme.example.com".to_string()]);

        kit.run("again.csv", "Email,First Name,InviteUser\ncy@acme.example.com,Cy,Yes\n").await;
        *kit.mem.mailer.reject_next.lock().unwrap() = 1;
        assert_eq!(sweep(&kit.svc, later).await.unwrap(), 0);
        let (state, attempts, error) = kit.mem.invites.of("acme", "cy@acme.example.com").unwrap();
        assert_eq!((state, attempts), (InviteState::Failed, 1), "{error}");
        assert_eq!(sweep(&kit.svc, later + chrono::Duration::days(1)).await.unwrap(), 0, "failed for good: never tried again");
    }

    /// A user moved to a new email before their pending invite could move with them (the
    /// invite still names the old address): the sweep follows the move and sends it to the new
    /// address, once.
    #[tokio::test]
    async fn an_invite_left_at_an_old_email_follows_the_user_to_the_new_one() {
        let mut kit = Kit::new(|_| {}).await;
        kit.run("invite.csv", "Email,First Name,InviteUser\nann@acme.example.com,Ann,Yes\n").await;
        let stamp = crate::ports::Stamp { job: "other".into(), row: 2, at: "2027-01-01T00:00:00Z".into(), order: "9999".into() };
        let moved = kit.svc.directory.move_user("acme", "ann@acme.example.com", "ann@new.example.com", &stamp).await.unwrap();
        assert_eq!(moved, crate::ports::Moved::Moved);
        let now = chrono::Utc::now() + chrono::Duration::seconds(1);
        assert_eq!(sweep(&kit.svc, now).await.unwrap(), 1);
        assert_eq!(kit.mem.mailer.sent().last().unwrap().1, vec!["ann@new.example.com".to_string()]);
        assert_eq!(kit.mem.invites.of("acme", "ann@acme.example.com").unwrap().0, InviteState::Sent);
        assert_eq!(sweep(&kit.svc, now).await.unwrap(), 0, "sent once");
    }

    /// SES throttling (or a day's quota spent on a big onboarding) refused every send of the
    /// sweep: each invite spent an attempt (five, and it fails for good) and the scheduled run
    /// spent its time on them. The sweep now stops at the first such refusal; the rest wait,
    /// their attempts untouched. A refusal for one address (MessageRejected) stops nothing.
    #[tokio::test]
    async fn ses_holding_mail_back_stops_the_sweep_without_spending_the_other_invites_attempts() {
        let mut kit = Kit::new(|_| {}).await;
        kit.run("invite.csv", "Email,InviteUser\na@acme.example.com,Yes\nb@acme.example.com,Yes\nc@acme.example.com,Yes\n").await;
        let now = chrono::Utc::now() + chrono::Duration::seconds(1);
        *kit.mem.mailer.throttle_next.lock().unwrap() = 3;
        assert_eq!(sweep(&kit.svc, now).await.unwrap(), 0);
        let attempts: Vec<u32> =
            ["a", "b", "c"].iter().map(|u| kit.mem.invites.of("acme", &format!("{u}@acme.example.com")).unwrap().1).collect();
        assert_eq!(attempts.iter().sum::<u32>(), 1, "one attempt spent, not three: {attempts:?}");
        *kit.mem.mailer.throttle_next.lock().unwrap() = 0;
        assert_eq!(sweep(&kit.svc, now).await.unwrap(), 2, "the two left are sent at the next sweep");
        // One address refused for good: the sweep goes on to the others.
        kit.run("more.csv", "Email,InviteUser\nd@acme.example.com,Yes\ne@acme.example.com,Yes\n").await;
        *kit.mem.mailer.reject_next.lock().unwrap() = 1;
        assert_eq!(sweep(&kit.svc, now).await.unwrap(), 1);
    }

    #[test]
    fn retries_back_off_1_4_16_64_minutes() {
        let minutes: Vec<i64> = (1..MAX_ATTEMPTS).map(|a| backoff(a).num_minutes()).collect();
        assert_eq!(minutes, vec![1, 4, 16, 64]);
    }

    #[test]
    fn invite_email_is_branded_and_escapes_names() {
        let mut t = Tenant::new("acme", vec!["a@acme.com".into()]);
        t.branding.product_name = Some("Acme Learning".into());
        t.branding.colour = Some("#ff0000".into());
        t.branding.activation_url = Some("https://learn.acme.example/activate?u={email}".into());
        let i = Invite {
            tenant: "acme".into(),
            email: "ann+x@acme.com".into(),
            first_name: Some("<b>Ann</b>".into()),
            due_at: String::new(),
            job: "j".into(),
            attempts: 0,
        };
        let (subject, text, html) = invite_email(&t, &i);
        assert_eq!(subject, "Acme Learning: activate your account");
        assert!(text.contains("https://learn.acme.example/activate?u=ann%2Bx%40acme%2Ecom"), "{text}");
        assert!(html.contains("&lt;b&gt;Ann&lt;/b&gt;") && !html.contains("<b>Ann"), "{html}");
        assert!(html.contains("#ff0000"));
    }
}
