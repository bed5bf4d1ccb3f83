//! What users read: `summary.json`, result files and emails.

use crate::error::{Error, Result};
use crate::keys;
use crate::model::EmailKind;
use crate::model::{Job, JobState, Status, Tenant};
use crate::services::Services;
use mail_builder::MessageBuilder;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tracing::{error, info, warn};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub success: u32,
    pub failure: u32,
    pub skipped: u32,
    /// Of the successes, rows that changed nothing (`model::UNCHANGED`): nothing was written.
    #[serde(default)]
    pub unchanged: u32,
    /// Of the successes, each kind of change (a dry run: what would change).
    #[serde(default)]
    pub changes: crate::changes::ChangeCounts,
}

impl Counts {
    pub fn add(&mut self, status: Status) {
        match status {
            Status::Success => self.success += 1,
            Status::Failure => self.failure += 1,
            Status::Skipped => self.skipped += 1,
        }
    }
    pub fn total(&self) -> u32 {
        self.success + self.failure + self.skipped
    }
    /// Count one row's outcome.
    pub fn add_outcome(&mut self, o: &crate::model::Outcome) {
        self.add(o.status);
        if let (Status::Success, Some(change)) = (o.status, o.change) {
            self.changes.add(change);
            if change == crate::model::Change::Unchanged {
                self.unchanged += 1;
            }
        }
    }
    /// "12 succeeded" or "12 succeeded (10 unchanged)".
    pub fn succeeded(&self) -> String {
        use crate::layout::thousands;
        if self.unchanged > 0 {
            format!("{} succeeded ({} unchanged)", thousands(self.success.into()), thousands(self.unchanged.into()))
        } else {
            format!("{} succeeded", thousands(self.success.into()))
        }
    }
}

/// `results/<tenant>/<job>/summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub job_id: String,
    pub tenant: String,
    pub source_key: String,
    pub file_name: String,
    pub mode: String,
    pub state: JobState,
    /// Why the whole file was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    pub rows: u32,
    pub counts: Counts,
    pub by_action: BTreeMap<String, Counts>,
    pub warnings: Vec<String>,
    pub received_at: String,
    pub completed_at: String,
    pub duration_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_rows_key: Option<String>,
    /// Replace mode: active users absent from the file that were disabled.
    #[serde(default)]
    pub disabled_not_in_file: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_users_key: Option<String>,
    /// A CSV result's companion file of the problems (a workbook result has a Problems sheet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problems_key: Option<String>,
    /// The users this job created, by the result file's row: their immutable ids, for systems
    /// that key on them (the first 10,000; the result's UserId column has every one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub created_users: Vec<CreatedUser>,
    /// Created users beyond those listed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub created_users_not_listed: u32,
    /// The failures grouped by kind (message), most frequent first: what to fix, and where.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<crate::finalize::digest::Problem>,
    /// Failed rows of kinds past the 500 listed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rows_of_other_problems: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedUser {
    /// The row as the file numbers it (its sheet's row in a workbook of several sheets).
    pub row: u32,
    /// The sheet, in a workbook of several data sheets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sheet: Option<String>,
    pub user_id: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Summary {
    pub fn new(job: &Job, state: JobState) -> Self {
        let now = chrono::Utc::now();
        let started = chrono::DateTime::parse_from_rfc3339(&job.received_at).map(|t| t.with_timezone(&chrono::Utc)).unwrap_or(now);
        Summary {
            job_id: job.id.clone(),
            tenant: job.tenant.clone(),
            source_key: job.source_key.clone(),
            file_name: job.file_name.clone(),
            mode: job.mode.map(|m| m.as_str()).unwrap_or("upsert").to_string(),
            state,
            reason: None,
            format: None,
            rows: 0,
            counts: Counts::default(),
            by_action: BTreeMap::new(),
            warnings: Vec::new(),
            received_at: job.received_at.clone(),
            completed_at: now.to_rfc3339(),
            duration_ms: (now - started).num_milliseconds(),
            result_key: None,
            failed_rows_key: None,
            disabled_not_in_file: 0,
            disabled_users_key: None,
            problems_key: None,
            created_users: Vec::new(),
            created_users_not_listed: 0,
            problems: Vec::new(),
            rows_of_other_problems: 0,
        }
    }
}

/// The tenant to tell about its job, for a plain email (a rejection, a failure). A tenant whose
/// stored settings cannot be read (a field this deployment does not know, a hand edit), or that
/// was removed during the job, would leave the answer unsent and the sweeps stuck on its jobs:
/// the deployment's default admins are told instead (`None` without them). A read that may
/// succeed on a retry is returned as the error it is.
pub async fn tenant_to_tell(svc: &Services, id: &str) -> Result<Option<Tenant>> {
    let why = match svc.directory.tenant(id).await {
        Ok(Some(tenant)) => return Ok(Some(tenant)),
        Err(e) if e.is_retryable() => return Err(e),
        Err(e) => {
            error!(tenant = %id, error = %e, "tenant settings unreadable; telling the default admins");
            "(tenant settings unreadable)"
        }
        Ok(None) => "(no such tenant)",
    };
    let admins = svc.config.default_admins.clone();
    Ok((!admins.is_empty()).then(|| Tenant { name: Some(why.into()), ..Tenant::new(id.to_string(), admins) }))
}

/// Reject a whole file: nothing applied, `summary.json` with the reason, one email to the admins.
pub async fn reject(svc: &Services, job: &Job, tenant: Option<&Tenant>, reason: &str, attachments: &[Attachment]) -> Result<()> {
    warn!(job = %job.id, tenant = %job.tenant, reason = %crate::address::mask_addresses(reason), "file rejected");
    let mut summary = Summary::new(job, JobState::Rejected);
    summary.reason = Some(reason.to_string());
    let key = format!("{}summary.json", keys::results_prefix(&job.tenant, &job.id));
    svc.store.put(&key, pretty(&summary)?, "application/json").await?;
    // A file for no configured tenant goes to the deployment's default admins, if any.
    let fallback;
    let tenant = match tenant {
        Some(t) => Some(t),
        None if !svc.config.default_admins.is_empty() => {
            fallback =
                Tenant { name: Some("(no such tenant)".into()), ..Tenant::new(job.tenant.clone(), svc.config.default_admins.clone()) };
            Some(&fallback)
        }
        None => {
            // Only a local or hand-made deployment gets here: the template requires default admins.
            error!(job = %job.id, reason, "file rejected and nobody told: no such tenant and ROSTERDROP_DEFAULT_ADMINS is empty");
            None
        }
    };
    // Nobody SES can deliver to (`recipients`): the rejection is recorded with its own reason
    // and logged; failing the send instead left the job RECEIVED, retried by every sweep, and
    // its retry recorded a generic reason.
    let tenant = tenant.filter(|t| match recipients(svc, &t.admin_emails) {
        Ok(_) => true,
        Err(e) => {
            error!(job = %job.id, error = %e, "file rejected and nobody told");
            false
        }
    });
    if let Some(tenant) = tenant
        && svc.jobs.claim_email(&job.id, EmailKind::Result, svc.config.lease).await?
    {
        let file = crate::wording::file_label(&job.file_name);
        let subject = format!("[rosterdrop] {}: {file} was rejected, nothing was applied", tenant.id);
        let text = format!(
            "Your file {file} was not processed.\n\nReason: {reason}\n\nNothing in it was applied. Fix the file and upload it again.\n\nJob: {id}\n",
            id = job.id
        );
        let body = crate::layout::para(&format!("Your file <b>{}</b> was not processed.", esc(&file)))
            + &crate::layout::section("What to fix")
            + &crate::layout::para(&esc(reason))
            + &crate::layout::para("Nothing in it was applied. Fix the file and upload it again.");
        let footer = format!("Sent by rosterdrop for {}. Job {}.", esc(&tenant.id), esc(&job.id));
        let headline = format!("{file} was rejected: nothing was applied");
        let html = crate::layout::page(&crate::layout::Brand::of(Some(tenant)), reason, &headline, &body, &footer);
        let sent = send_to(svc, &sender(svc, tenant), &tenant.admin_emails, &subject, &text, &html, attachments).await;
        unclaim_unsent(svc, &job.id, EmailKind::Result, sent).await?;
        svc.jobs.mark_email_sent(&job.id, EmailKind::Result).await?;
        info!(job = %job.id, recipients = tenant.admin_emails.len(), "rejection email sent");
    }
    svc.jobs.transition(&job.id, JobState::Received, JobState::Rejected, Some(reason)).await?;
    Ok(())
}

/// A claimed email's send, `sent`: when it failed in a way a retry may fix, the claim is dropped
/// (best effort) before the error goes back, so the retried invocation sends it; a crash before
/// this leaves the claim to its lease. A send SES refuses for good keeps its claim: released, every
/// retry and the deadline sweep would try again, fail again and keep the job open for ever.
/// The price: a send whose response was lost after SES took it, or an email to more than 25
/// admins cut off after its first group, goes again (a second email rather than none).
pub async fn unclaim_unsent<T>(svc: &Services, job: &str, kind: EmailKind, sent: Result<T>) -> Result<T> {
    // An account that is not sending keeps the claim: the sweep tries again once it is stale (a
    // lease), not every minute with a whole finalize rebuilt for nothing.
    if sent.as_ref().is_err_and(|e| e.is_retryable() && !e.ses_not_sending())
        && let Err(e) = svc.jobs.release_email(job, kind).await
    {
        warn!(job, error = %e, "an unsent email's claim could not be dropped; it is taken over once stale");
    }
    sent
}

/// "We have your file": sent once when a job is accepted (tenant setting, on by default).
pub async fn started_email(svc: &Services, job: &Job, tenant: &Tenant, mode: crate::model::Mode, rows: u32, invalid: usize) -> Result<()> {
    let dry = mode == crate::model::Mode::Validate;
    let what = if dry { "validating (nothing will be changed)" } else { "processing" };
    use crate::layout;
    let label = crate::wording::file_label(&job.file_name);
    // "1 row", "2,000 rows": "processing 1 rows" and unseparated thousands before.
    let (count, failed) = (layout::rows(rows.into()), layout::rows(invalid as u64));
    let subject = format!("[rosterdrop] {}: {label} received, {what} {count}", tenant.id);
    let text = format!(
        "We received {label} ({count}, mode {mode}) and are {what} it.\n{failed} already failed the checks; the result email will list them with what to fix.\n\nJob: {id}\n",
        mode = mode.as_str(),
        id = job.id
    );
    let headline = if dry { format!("Validating {count}") } else { format!("Processing {count}") };
    let mut body = layout::para(&format!("We received <b>{}</b> ({count}, mode {}) and are {what} it.", esc(&label), mode.as_str()));
    body += &layout::bar(&[
        layout::Segment { label: "passed the checks", count: u64::from(rows).saturating_sub(invalid as u64), colour: layout::GREEN },
        layout::Segment { label: "already failed the checks", count: invalid as u64, colour: layout::RED },
    ]);
    body += &layout::para("The result email follows when it is done, with what to fix and where.");
    let footer = format!("Sent by rosterdrop for {}. Job {}.", esc(&tenant.id), esc(&job.id));
    let html = layout::page(&layout::Brand::of(Some(tenant)), &format!("{label} received"), &headline, &body, &footer);
    let from = sender(svc, tenant);
    if recipients(svc, &tenant.admin_emails).is_err() {
        // Nobody to tell that it started: the job goes on (its result email fails loudly).
        warn!(job = %job.id, "no admin address to send the processing-started email to");
        return Ok(());
    }
    send_to(svc, &from, &tenant.admin_emails, &subject, &text, &html, &[]).await?;
    svc.jobs.mark_email_sent(&job.id, EmailKind::Started).await?;
    info!(job = %job.id, "processing-started email sent");
    Ok(())
}

/// SES accepts at most 50 recipients a message. Each message names its group twice, as its
/// envelope (`Destination`) and in its `To:` header, and an SES that counts both (LocalStack's
/// does) refused 26 admins or more: groups of 25 stay within 50 either way.
pub const MAX_RECIPIENTS: usize = 25;

/// One email to every address of `to`, in messages of at most `MAX_RECIPIENTS`.
pub async fn send_to(
    svc: &Services,
    from: &str,
    to: &[String],
    subject: &str,
    text: &str,
    html: &str,
    attachments: &[Attachment],
) -> Result<()> {
    // Addresses as SES takes them (international domains as punycode); tenant validation
    // refuses the undeliverable ones, so one here (an older tenant item) is skipped, not fatal.
    let from = crate::address::deliverable(from).map_err(|e| Error::Build { what: "email", message: format!("sender {e}") })?;
    let to = recipients(svc, to)?;
    let from = from.as_ref();
    for group in to.chunks(MAX_RECIPIENTS) {
        let mime = build_email(from, group, subject, text, html, attachments)?;
        svc.mailer.send_raw(from, group, mime).await?;
    }
    Ok(())
}

/// The addresses of `to` SES can deliver to (international domains as punycode); when none is,
/// the deployment's default admins: a tenant item whose every admin address is undeliverable
/// (saved before `tenant put` checked them, or edited by hand) would have had its emails "sent"
/// to nobody, its jobs closed as told. With no default admins either, nobody can be told: an
/// error, not an email marked sent.
pub fn recipients(svc: &Services, to: &[String]) -> Result<Vec<String>> {
    let deliverable = |list: &[String]| -> Vec<String> {
        list.iter()
            .filter_map(|a| match crate::address::deliverable(a) {
                Ok(a) => Some(a.into_owned()),
                Err(e) => {
                    warn!(to = %crate::address::masked(a), error = %e, "undeliverable admin address skipped");
                    None
                }
            })
            .collect()
    };
    let to = deliverable(to);
    if !to.is_empty() {
        return Ok(to);
    }
    let defaults = deliverable(&svc.config.default_admins);
    if defaults.is_empty() {
        return Err(Error::Build {
            what: "email",
            message: "no admin address to send to: the tenant's admin_emails and ROSTERDROP_DEFAULT_ADMINS hold none SES can deliver to"
                .into(),
        });
    }
    warn!(admins = defaults.len(), "no deliverable tenant admin address; sending to the deployment's default admins");
    Ok(defaults)
}

/// The tenant's sender while SES can send as it (inside the verified identity), else the
/// deployment's default: a tenant saved before `tenant put` checked it still gets its emails.
pub fn sender(svc: &Services, tenant: &Tenant) -> String {
    match &tenant.sender {
        Some(s) if crate::model::sender_within(s, &svc.config.sender_identity) => s.clone(),
        _ => svc.config.default_sender.clone(),
    }
}

pub fn pretty<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(|e| Error::corrupt("summary", e))
}

pub fn esc(s: &str) -> String {
    html_escape::encode_text(s).into_owned()
}

/// A file name safe for a MIME header: no control characters (no header injection), no paths,
/// nothing that shows as nothing (a direction override fakes the extension), no leading dot (a
/// hidden file once saved), and no `=?` (mail readers decoded `=?utf-8?b?SGFja2Vk?=.csv`, written
/// as it is in `filename="…"`, as the encoded word `Hacked`).
pub fn safe_file_name(name: &str) -> String {
    let cleaned = crate::wording::name_chars(name).collect::<String>().replace("=?", "=_?");
    if cleaned.trim().is_empty() { "roster".into() } else { cleaned }
}

/// A file sent with an email; result files are built as attachments directly.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub name: String,
    pub content_type: &'static str,
    pub bytes: Vec<u8>,
}

/// A complete MIME message (text + HTML alternatives, attachments), built by `mail-builder`, which
/// encodes every header value (RFC 2047) so nothing from a file can inject a header.
pub fn build_email(from: &str, to: &[String], subject: &str, text: &str, html: &str, attachments: &[Attachment]) -> Result<Vec<u8>> {
    let subject: String = subject.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let mut msg = MessageBuilder::new()
        .from(from.to_string())
        .to(to.iter().map(|s| s.as_str()).collect::<Vec<_>>())
        .subject(subject)
        .text_body(text.to_string())
        .html_body(html.to_string());
    for a in attachments {
        msg = msg.attachment(a.content_type, safe_file_name(&a.name), a.bytes.as_slice());
    }
    msg.write_to_vec().map_err(|e| Error::Build { what: "email", message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_injection_through_subject_or_file_name_is_neutralised() {
        let mime = build_email(
            "from@x.com",
            &["a@x.com".into()],
            "roster\r\nBcc: evil@x.com",
            "t",
            "<p>h</p>",
            &[Attachment { name: "r.csv\r\nBcc: evil@x.com".into(), content_type: "text/csv", bytes: b"a,b".to_vec() }],
        )
        .unwrap();
        let text = String::from_utf8_lossy(&mime);
        assert!(!text.lines().any(|l| l.starts_with("Bcc:")), "{text}");
    }

    #[test]
    fn html_escape_escapes_markup() {
        assert_eq!(esc("<script>&"), "&lt;script&gt;&amp;");
    }
}
