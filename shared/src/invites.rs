//! Activation emails: recorded by apply when a row creates a user with `InviteUser` (or by the
//! `Invite` action), sent by a sweep when due: `functions/invites` on a schedule in AWS, the local
//! runner locally. Each invite is claimed before sending, so a retried sweep never sends twice,
//! and sending is paced so the SES sending rate is never exceeded.

use crate::error::Result;
use crate::model::{Invite, Tenant};
use crate::report::{self, esc};
use crate::services::Services;
use std::collections::HashMap;
use std::time::Duration;
use tracing::{info, warn};

/// Send the invites due at `now`; returns how many were sent.
pub async fn sweep(svc: &Services, now: chrono::DateTime<chrono::Utc>) -> Result<usize> {
    let due = svc.invites.due(&now.to_rfc3339(), svc.config.invite_batch).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let mut tenants: HashMap<String, Option<Tenant>> = HashMap::new();
    let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / svc.config.invite_rate_per_sec.max(0.01)));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = 0;
    for invite in due {
        if !svc.invites.claim(&invite).await? {
            continue; // another sweep has it
        }
        if !tenants.contains_key(&invite.tenant) {
            tenants.insert(invite.tenant.clone(), svc.directory.tenant(&invite.tenant).await?);
        }
        let Some(tenant) = tenants.get(&invite.tenant).and_then(Option::as_ref) else {
            warn!(tenant = %invite.tenant, "invite for a removed tenant dropped");
            svc.invites.mark_sent(&invite).await?;
            continue;
        };
        pace.tick().await;
        let from = report::sender(svc, tenant);
        let (subject, text, html) = invite_email(tenant, &invite);
        let mime = report::build_email(&from, std::slice::from_ref(&invite.email), &subject, &text, &html, &[])?;
        svc.mailer.send_raw(&from, std::slice::from_ref(&invite.email), mime).await?;
        svc.invites.mark_sent(&invite).await?;
        sent += 1;
    }
    info!(sent, "invites sent");
    Ok(sent)
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
        };
        let (subject, text, html) = invite_email(&t, &i);
        assert_eq!(subject, "Acme Learning: activate your account");
        assert!(text.contains("https://learn.acme.example/activate?u=ann%2Bx%40acme%2Ecom"), "{text}");
        assert!(html.contains("&lt;b&gt;Ann&lt;/b&gt;") && !html.contains("<b>Ann"), "{html}");
        assert!(html.contains("#ff0000"));
    }
}
