//! Stage 3: on `done/<job>.json`, merge outcomes in input order, write the result files and
//! `summary.json`, email the tenant's admins once, mark the job COMPLETED.

use crate::error::{Error, Result};
use crate::event::ObjectRef;
use crate::ingest::{StagedInput, decode::Table, parse_jsonl};
use crate::keys;
use crate::model::{JobState, Outcome, Status};
use crate::report::{self, Attachment, Summary, esc};
use crate::services::Services;
use std::collections::HashMap;
use std::time::Duration;
use tracing::{error, info};

pub async fn handle(svc: &Services, obj: &ObjectRef) -> Result<()> {
    let Some(job_id) = keys::parse_done(&obj.key) else {
        info!(key = %obj.key, "not a done marker; ignored");
        return Ok(());
    };
    let job = svc.jobs.get(&job_id).await?.ok_or_else(|| Error::corrupt(format!("job {job_id}"), "done marker of an unknown job"))?;
    if job.state.is_final() {
        info!(job = %job_id, state = job.state.as_str(), "job already finalized (duplicate or late event)");
        return Ok(());
    }
    finalize_job(svc, &job, false).await.map(drop)
}

/// What a row without an outcome says when its job had to be stopped.
pub const NOT_APPLIED: &str = "not applied: processing of this file stopped after repeated failures; upload this row again";

/// Merge outcomes, write the result files and summary, email the admins once, record the final
/// state. `stopped`: the job is FAILED (see `monitor::fail_stuck_jobs`) and rows without an
/// outcome were not applied. `Ok(false)`: left open, another invocation holds the email claim.
pub async fn finalize_job(svc: &Services, job: &crate::model::Job, stopped: bool) -> Result<bool> {
    let job_id = job.id.clone();
    let staged_bytes = svc
        .store
        .get(&keys::staged_input(&job_id))
        .await?
        .ok_or_else(|| Error::corrupt(format!("job {job_id}"), "staged input missing"))?;
    let staged: StagedInput = serde_json::from_slice(&staged_bytes).map_err(|e| Error::corrupt("staged input", e))?;
    drop(staged_bytes);
    let warnings = staged.warnings.clone();
    let tables = staged.tables(svc).await?;

    let mut by_row: HashMap<u32, Outcome> = HashMap::new();
    let mut reconciled: Vec<Outcome> = Vec::new();
    for key in svc.store.list(&keys::outcomes_prefix(&job_id)).await? {
        let body = svc.store.get(&key).await?.unwrap_or_default();
        for o in parse_jsonl::<Outcome>("outcomes", &body)? {
            if o.user.is_some() {
                reconciled.push(o);
            } else {
                by_row.entry(o.row).or_insert(o);
            }
        }
    }
    reconciled.sort_by(|a, b| a.user.cmp(&b.user));
    // Every input row gets exactly one outcome; a missing one is a bug we report, never hide.
    let outcomes: Vec<Outcome> = tables
        .iter()
        .flat_map(|t| t.rows.iter().map(move |(n, _)| t.row_offset + n))
        .map(|row| {
            by_row.remove(&row).unwrap_or_else(|| {
                if stopped {
                    return Outcome::failure(row, None, NOT_APPLIED);
                }
                error!(job = %job_id, row, "row has no outcome");
                Outcome::failure(row, None, "not processed because of an internal error; upload this row again")
            })
        })
        .collect();

    let final_state = if stopped { JobState::Failed } else { JobState::Completed };
    let mut summary = Summary::new(job, final_state);
    summary.format = tables.first().map(|t| t.format.label().to_string());
    summary.warnings = warnings;
    summary.count(&outcomes);

    let files = result_files(&tables, &outcomes, &job.file_name)?;
    let prefix = keys::results_prefix(&job.tenant, &job_id);
    let result_key = format!("{prefix}{}", files.result.name);
    svc.store.put(&result_key, files.result.bytes.clone(), files.result.content_type).await?;
    summary.result_key = Some(result_key.clone());
    let mut failed_key = None;
    if let Some(failed) = &files.failed {
        let key = format!("{prefix}{}", failed.name);
        svc.store.put(&key, failed.bytes.clone(), failed.content_type).await?;
        failed_key = Some(key.clone());
        summary.failed_rows_key = Some(key);
    }
    let mut disabled_file = None;
    if !reconciled.is_empty() {
        summary.disabled_not_in_file = reconciled.iter().filter(|o| o.status == Status::Success).count() as u32;
        let rows: Vec<Vec<String>> =
            reconciled.iter().map(|o| vec![o.user.clone().unwrap_or_default(), o.status.to_string(), o.message.clone()]).collect();
        let bytes = csv_bytes(b',', &["Email".into(), "Status".into(), "Message".into()], &rows)?;
        let key = format!("{prefix}disabled-users.csv");
        svc.store.put(&key, bytes.clone(), CSV).await?;
        summary.disabled_users_key = Some(key.clone());
        disabled_file = Some((Attachment { name: "disabled-users.csv".into(), content_type: CSV, bytes }, key));
    }
    svc.store.put(&format!("{prefix}summary.json"), report::pretty(&summary)?, "application/json").await?;

    match svc.directory.tenant(&job.tenant).await? {
        Some(tenant) => {
            if svc.jobs.claim_email(&job_id, "result", svc.config.email_lease_secs).await? {
                let from = report::sender(svc, &tenant);
                let mut attachments = Vec::new();
                let mut links = Vec::new();
                let extra = disabled_file.as_ref().map(|(f, k)| (f, k));
                for (file, key) in
                    std::iter::once((&files.result, &result_key)).chain(files.failed.iter().zip(failed_key.iter())).chain(extra)
                {
                    if file.bytes.len() <= svc.config.max_attachment_bytes {
                        attachments.push(file.clone());
                    } else {
                        links.push((file.name.clone(), svc.store.presign_get(key, Duration::from_secs(svc.config.link_ttl_secs)).await?));
                    }
                }
                let (subject, text, html) = result_email(&tenant.id, &summary, &outcomes, &links);
                let mime = report::build_email(&from, &tenant.admin_emails, &subject, &text, &html, &attachments)?;
                svc.mailer.send_raw(&from, &tenant.admin_emails, mime).await?;
                svc.jobs.mark_email_sent(&job_id, "result").await?;
                info!(job = %job_id, recipients = tenant.admin_emails.len(), "result email sent");
            } else if !svc.jobs.email_sent(&job_id, "result").await? {
                // Another invocation holds the claim and has not sent yet (or crashed before it
                // could). The job stays open: its invocation finishes it, or the scheduled sweep
                // takes the claim over once it is stale (`monitor::finish_unsent_jobs`).
                info!(job = %job_id, "result email claimed by another invocation; leaving the job open");
                return Ok(false);
            }
        }
        None => {
            error!(job = %job_id, tenant = %job.tenant, "tenant removed before finalize; no email sent")
        }
    }
    let c = &summary.counts;
    svc.jobs.finish(&job_id, final_state, c.success, c.failure, c.skipped).await?;
    info!(job = %job_id, rows = summary.rows, succeeded = c.success, failed = c.failure, skipped = c.skipped, "job completed");
    Ok(true)
}

pub struct ResultFiles {
    pub result: Attachment,
    /// Only when some rows failed.
    pub failed: Option<Attachment>,
}

const CSV: &str = "text/csv; charset=utf-8";
const XLSX: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

/// Result file: every input row in order, with Status and Message. Failed-rows file: the input's
/// columns plus Message, failed rows only, in the input's own shape so it can be fixed and dropped
/// again (Status/Message columns are ignored on upload). A workbook keeps its sheets.
/// `outcomes` is aligned with the rows of `tables`, in order.
pub fn result_files(tables: &[Table], outcomes: &[Outcome], file_name: &str) -> Result<ResultFiles> {
    let stem = std::path::Path::new(file_name).file_stem().and_then(|s| s.to_str()).unwrap_or("roster").to_string();
    let first = tables.first().ok_or_else(|| Error::Build { what: "result", message: "no table".into() })?;
    let mut outcomes = outcomes.iter();
    let mut result_sheets = Vec::new();
    let mut failed_sheets = Vec::new();
    for table in tables {
        let width = table.headers.len();
        let row_cells = |cells: &[String]| -> Vec<String> { (0..width).map(|i| cells.get(i).cloned().unwrap_or_default()).collect() };
        let mut result_rows = Vec::with_capacity(table.rows.len());
        let mut failed_rows = Vec::new();
        for ((_, cells), o) in table.rows.iter().zip(outcomes.by_ref()) {
            let mut r = row_cells(cells);
            r.push(o.status.to_string());
            r.push(o.message.clone());
            result_rows.push(r);
            if o.status == Status::Failure {
                let mut f = row_cells(cells);
                f.push(o.message.clone());
                failed_rows.push(f);
            }
        }
        let sheet = table.sheet.clone().unwrap_or_else(|| "Roster".into());
        let mut result_header = table.headers.clone();
        result_header.extend(["Status".to_string(), "Message".to_string()]);
        result_sheets.push((sheet.clone(), result_header, result_rows));
        if !failed_rows.is_empty() {
            let mut failed_header = table.headers.clone();
            failed_header.push("Message".to_string());
            failed_sheets.push((sheet, failed_header, failed_rows));
        }
    }

    if first.format.is_spreadsheet() {
        let result = Attachment { name: format!("{stem}-result.xlsx"), content_type: XLSX, bytes: xlsx(&result_sheets, true)? };
        let failed = (!failed_sheets.is_empty())
            .then(|| {
                xlsx(&failed_sheets, false).map(|bytes| Attachment { name: format!("{stem}-failed-rows.xlsx"), content_type: XLSX, bytes })
            })
            .transpose()?;
        Ok(ResultFiles { result, failed })
    } else {
        let delimiter = first.delimiter.map(|d| d as u8).unwrap_or(b',');
        let ext = if delimiter == b'\t' { "tsv" } else { "csv" };
        let (_, header, rows) = &result_sheets[0];
        let result = Attachment { name: format!("{stem}-result.csv"), content_type: CSV, bytes: csv_bytes(b',', header, rows)? };
        let failed = failed_sheets
            .first()
            .map(|(_, header, rows)| {
                csv_bytes(delimiter, header, rows).map(|bytes| Attachment {
                    name: format!("{stem}-failed-rows.{ext}"),
                    content_type: CSV,
                    bytes,
                })
            })
            .transpose()?;
        Ok(ResultFiles { result, failed })
    }
}

/// A cell a spreadsheet would run as a formula gets a leading apostrophe (OWASP CSV injection).
/// Plain signed numbers such as `+14155550100` are left alone: they are data, not formulas.
pub fn neutralise(cell: &str) -> std::borrow::Cow<'_, str> {
    let risky = cell.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let plain_number = cell.len() > 1
        && cell.starts_with(['+', '-'])
        && cell[1..].chars().all(|c| c.is_ascii_digit() || c == '.' || c == ' ')
        && cell[1..].chars().any(|c| c.is_ascii_digit());
    if risky && !plain_number { format!("'{cell}").into() } else { cell.into() }
}

fn csv_bytes(delimiter: u8, header: &[String], rows: &[Vec<String>]) -> Result<Vec<u8>> {
    // UTF-8 with BOM: Excel then opens accented names correctly.
    let mut w = csv::WriterBuilder::new().delimiter(delimiter).from_writer(b"\xEF\xBB\xBF".to_vec());
    let err = |e: csv::Error| Error::Build { what: "CSV result", message: e.to_string() };
    w.write_record(header.iter().map(|c| neutralise(c).into_owned())).map_err(err)?;
    for r in rows {
        w.write_record(r.iter().map(|c| neutralise(c).into_owned())).map_err(err)?;
    }
    w.into_inner().map_err(|e| Error::Build { what: "CSV result", message: e.to_string() })
}

type Sheet = (String, Vec<String>, Vec<Vec<String>>);

fn xlsx(sheets: &[Sheet], with_status: bool) -> Result<Vec<u8>> {
    use rust_xlsxwriter::Workbook;
    let mut wb = Workbook::new();
    for (name, header, rows) in sheets {
        xlsx_sheet(&mut wb, name, header, rows, with_status)?;
    }
    wb.save_to_buffer().map_err(|e| Error::Build { what: "XLSX result", message: e.to_string() })
}

fn xlsx_sheet(wb: &mut rust_xlsxwriter::Workbook, sheet: &str, header: &[String], rows: &[Vec<String>], with_status: bool) -> Result<()> {
    use rust_xlsxwriter::{Color, Format};
    let err = |e: rust_xlsxwriter::XlsxError| Error::Build { what: "XLSX result", message: e.to_string() };
    let ws = wb.add_worksheet();
    ws.set_name(sheet).map_err(err)?;
    let bold = Format::new().set_bold().set_background_color(Color::RGB(0xD9E1F2));
    let failed = Format::new().set_background_color(Color::RGB(0xFFC7CE)).set_font_color(Color::RGB(0x9C0006));
    let plain = Format::new();
    for (c, h) in header.iter().enumerate() {
        ws.write_string_with_format(0, c as u16, h, &bold).map_err(err)?;
        ws.set_column_width(c as u16, (h.len() as f64 + 4.0).max(12.0)).map_err(err)?;
    }
    let status_col = header.len().saturating_sub(2);
    for (r, row) in rows.iter().enumerate() {
        let is_failed = with_status && row.get(status_col).map(String::as_str) == Some("Failure");
        let fmt = if is_failed { &failed } else { &plain };
        for (c, v) in row.iter().enumerate() {
            // Strings are stored as strings: Excel never evaluates them, so no formula injection.
            ws.write_string_with_format(r as u32 + 1, c as u16, v, fmt).map_err(err)?;
        }
    }
    ws.set_freeze_panes(1, 0).map_err(err)?;
    if !header.is_empty() {
        ws.autofilter(0, 0, rows.len() as u32, header.len() as u16 - 1).map_err(err)?;
    }
    Ok(())
}

/// Subject, text body and HTML body of the result email.
pub fn result_email(tenant: &str, s: &Summary, outcomes: &[Outcome], links: &[(String, String)]) -> (String, String, String) {
    let c = &s.counts;
    let dry = s.mode == "validate";
    let stopped = s.state == JobState::Failed;
    let not_applied = outcomes.iter().filter(|o| o.message == NOT_APPLIED).count();
    let subject = if stopped {
        format!(
            "[rosterdrop] {tenant}: {} FAILED: {} applied, {not_applied} not applied, {} failed",
            s.file_name,
            c.success,
            c.failure as usize - not_applied
        )
    } else if dry {
        format!("[rosterdrop] {tenant}: {} validated, nothing applied: {} would succeed, {} would fail", s.file_name, c.success, c.failure)
    } else {
        format!("[rosterdrop] {tenant}: {}: {} succeeded, {} failed, {} skipped", s.file_name, c.success, c.failure, c.skipped)
    };
    let failures: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == Status::Failure).take(10).collect();
    let done = if stopped {
        "stopped after repeated failures. The rows marked Success were applied; the rows marked \"not applied\" were not: the failed-rows file holds them, ready to upload again"
    } else if dry {
        "validated (a dry run: nothing was changed)"
    } else {
        "processed"
    };
    let mut text = format!("Your file {} ({} rows, mode {}) has been {done}.\n\n", s.file_name, s.rows, s.mode);
    text += &format!("  Succeeded: {}\n  Failed:    {}\n  Skipped:   {}\n\n", c.success, c.failure, c.skipped);
    text += "By action:\n";
    for (a, n) in &s.by_action {
        text += &format!("  {a:<12} {} succeeded, {} failed, {} skipped\n", n.success, n.failure, n.skipped);
    }
    if s.disabled_not_in_file > 0 {
        text +=
            &format!("\nReplace mode disabled {} active users absent from the file (see disabled-users.csv).\n", s.disabled_not_in_file);
    }
    if !s.warnings.is_empty() {
        text += "\nWarnings:\n";
        for w in &s.warnings {
            text += &format!("  - {w}\n");
        }
    }
    if !failures.is_empty() {
        text += "\nFirst failures:\n";
        for o in &failures {
            text += &format!("  row {}: {}\n", o.row, o.message);
        }
        text += "\nThe failed-rows file holds only the rows that failed, with a Message column: fix them and upload that file again.\n";
    }
    for (name, url) in links {
        text += &format!("\n{name} is too large to attach; download it (link valid for a limited time):\n{url}\n");
    }
    text += &format!("\nJob: {}\n", s.job_id);

    let mut html = format!("<p>Your file <b>{}</b> ({} rows, mode {}) has been {done}.</p>", esc(&s.file_name), s.rows, esc(&s.mode));
    if s.disabled_not_in_file > 0 {
        html += &format!(
            "<p>Replace mode disabled <b>{}</b> active users absent from the file (see disabled-users.csv).</p>",
            s.disabled_not_in_file
        );
    }
    html +=
        "<table border=\"1\" cellpadding=\"4\" cellspacing=\"0\"><tr><th>Action</th><th>Succeeded</th><th>Failed</th><th>Skipped</th></tr>";
    for (a, n) in &s.by_action {
        html += &format!("<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", esc(a), n.success, n.failure, n.skipped);
    }
    html += &format!("<tr><th>Total</th><th>{}</th><th>{}</th><th>{}</th></tr></table>", c.success, c.failure, c.skipped);
    if !s.warnings.is_empty() {
        html += "<p><b>Warnings</b></p><ul>";
        for w in &s.warnings {
            html += &format!("<li>{}</li>", esc(w));
        }
        html += "</ul>";
    }
    if !failures.is_empty() {
        html += "<p><b>First failures</b></p><ul>";
        for o in &failures {
            html += &format!("<li>row {}: {}</li>", o.row, esc(&o.message));
        }
        html += "</ul><p>The failed-rows file holds only the rows that failed: fix them and upload that file again.</p>";
    }
    for (name, url) in links {
        html += &format!("<p>{} is too large to attach: <a href=\"{}\">download it</a>.</p>", esc(name), esc(url));
    }
    html += &format!("<p style=\"color:#666\">Job: {}</p>", esc(&s.job_id));
    (subject, text, html)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::decode::decode;
    use crate::model::Action;

    #[test]
    fn formulas_are_neutralised_but_phone_numbers_are_not() {
        assert_eq!(neutralise("=HYPERLINK(\"http://x\")"), "'=HYPERLINK(\"http://x\")");
        assert_eq!(neutralise("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(neutralise("-2+3"), "'-2+3");
        assert_eq!(neutralise("+1 415 555 0100"), "+1 415 555 0100");
        assert_eq!(neutralise("Ann"), "Ann");
    }

    #[test]
    fn csv_result_keeps_input_order_and_failed_rows_keep_the_input_delimiter() {
        let table = decode(b"Email;FirstName\na@x.com;=cmd\nbad;B\n").unwrap();
        let outcomes = vec![
            Outcome::success(2, Action::Upsert, "user created"),
            Outcome::failure(3, Some(Action::Upsert), "Email \"bad\" is not a valid email address"),
        ];
        let files = result_files(std::slice::from_ref(&table), &outcomes, "spring.csv").unwrap();
        let text = String::from_utf8(files.result.bytes).unwrap();
        assert_eq!(
            text.trim_start_matches('\u{feff}').lines().collect::<Vec<_>>(),
            vec![
                "Email,FirstName,Status,Message",
                "a@x.com,'=cmd,Success,user created",
                "bad,B,Failure,\"Email \"\"bad\"\" is not a valid email address\""
            ]
        );
        let failed = files.failed.unwrap();
        assert_eq!(failed.name, "spring-failed-rows.csv");
        let text = String::from_utf8(failed.bytes).unwrap();
        assert!(text.contains("Email;FirstName;Message\nbad;B;"), "{text}");
    }

    #[test]
    fn no_failed_rows_file_when_nothing_failed() {
        let table = decode(b"Email\na@x.com\n").unwrap();
        let files = result_files(std::slice::from_ref(&table), &[Outcome::success(2, Action::Create, "user created")], "r.csv").unwrap();
        assert!(files.failed.is_none());
    }
}
