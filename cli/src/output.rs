//! What the CLI prints, and how its failures map to exit codes.

use comfy_table::{Cell, Color, ContentArrangement, Table, presets};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use shared::ingest::Checked;
use shared::model::{Job, JobState, Outcome, Tenant};
use shared::report::Summary;
use std::fmt;
use std::path::Path;

/// An error with its exit code: 2 bad input, 3 stack or AWS unreachable.
#[derive(Debug)]
pub struct Fail {
    pub code: u8,
    pub msg: String,
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Fail {}

pub fn input(msg: impl Into<String>) -> anyhow::Error {
    Fail { code: 2, msg: msg.into() }.into()
}

/// An AWS call failed: say what and what to do.
pub fn unavailable(e: shared::Error, aws: bool) -> anyhow::Error {
    let hint = if aws {
        "check AWS_PROFILE/AWS_REGION and the ROSTERDROP_* resource names"
    } else {
        "is the local stack running? start it with `make up`"
    };
    let what = match &e {
        shared::Error::Transient { service, operation, .. } => format!("cannot reach {service} ({operation} failed)"),
        other => other.to_string(),
    };
    Fail { code: 3, msg: format!("{what}; {hint}") }.into()
}

pub fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<Fail>() {
        Some(f) => f.code,
        None if e.downcast_ref::<shared::Error>().is_some() => 3,
        None => 2,
    }
}

/// One line, whatever the error chain.
pub fn one_line(e: &anyhow::Error) -> String {
    shown(&format!("{e:#}").replace('\n', " ")).into_owned()
}

pub fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        std::io::ErrorKind::IsADirectory => "it is a directory".into(),
        _ => e.to_string(),
    }
}

pub fn print_json<T: Serialize + ?Sized>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Text from a dropped file, its key or a bounce, as printed to a terminal: a control character
/// (an escape sequence that recolours or retitles the terminal, a tab or line break that breaks a
/// table row) or a direction override (which shows text in another order than it has) written
/// out as `<U+001B>`, as the pipeline's own messages quote such characters.
pub fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    shared::wording::written_out(text, |c| c.is_control() || shared::wording::shows_as_nothing(c))
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_HORIZONTAL_ONLY).set_content_arrangement(ContentArrangement::Dynamic).set_header(header.iter().copied());
    // A terminal gives its width; piped or redirected, `COLUMNS` or 120, so long cells wrap
    // there too (a tenant of 67 roles printed lines of 4,366 characters).
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        let width = std::env::var("COLUMNS").ok().and_then(|c| c.parse::<u16>().ok()).filter(|w| *w >= 40).unwrap_or(120);
        t.set_width(width);
    }
    t
}

fn state_cell(state: JobState) -> Cell {
    let color = match state {
        JobState::Completed => Color::Green,
        JobState::Rejected | JobState::Failed => Color::Red,
        JobState::Received | JobState::Applying => Color::Yellow,
        JobState::Held | JobState::Scheduled => Color::Magenta,
        JobState::Discarded => Color::Grey,
    };
    Cell::new(state.as_str()).fg(color)
}

fn duration(job: &Job) -> String {
    let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok();
    match (parse(&job.received_at), job.completed_at.as_deref().and_then(parse)) {
        (Some(a), Some(b)) => format!("{:.1}s", (b - a).num_milliseconds() as f64 / 1000.0),
        _ => "-".into(),
    }
}

pub fn print_jobs(jobs: &[Job]) {
    let mut t = table(&["Started", "State", "File", "Rows", "OK", "Failed", "Duration", "Job"]);
    for j in jobs {
        t.add_row(vec![
            Cell::new(j.received_at.get(..19).unwrap_or(&j.received_at).replace('T', " ")),
            state_cell(j.state),
            Cell::new(shown(&j.file_name)),
            Cell::new(j.total_rows),
            Cell::new(j.succeeded),
            Cell::new(j.failed).fg(if j.failed > 0 { Color::Red } else { Color::Reset }),
            Cell::new(duration(j)),
            Cell::new(&j.id),
        ]);
    }
    println!("{t}");
}

pub fn print_job(job: &Job, summary: Option<&Summary>, failures: &[Outcome]) {
    println!("job        {}", job.id);
    println!("tenant     {}", job.tenant);
    println!("file       {}", shown(&job.source_key));
    println!("state      {}", job.state.as_str());
    if let Some(at) = &job.run_at {
        println!("runs at    {at}");
    }
    println!("started    {}", job.received_at);
    println!("chunks     {}/{}", job.chunks_done(), job.chunks_total());
    if let Some(s) = summary {
        // A held or scheduled job's counts are its preview's: nothing was applied yet.
        print_counts(s, matches!(job.state, JobState::Held | JobState::Scheduled));
    }
    if let Some(m) = &job.message {
        println!("message    {}", shown(m));
    }
    if !failures.is_empty() {
        println!("\nfirst failures:");
        let mut t = table(&["Row", "Column", "Problem and fix"]);
        for o in failures {
            t.add_row(vec![Cell::new(o.row), Cell::new(shown(o.column.as_deref().unwrap_or(""))), Cell::new(shown(&o.message))]);
        }
        println!("{t}");
    }
}

fn print_counts(s: &Summary, preview: bool) {
    let c = &s.counts;
    if preview || s.mode == "validate" {
        println!("rows       {}  would succeed {}  would fail {}  skipped {}  (nothing applied)", s.rows, c.success, c.failure, c.skipped);
        return;
    }
    println!("rows       {}  succeeded {}  unchanged {}  failed {}  skipped {}", s.rows, c.success, c.unchanged, c.failure, c.skipped);
    for (a, c) in &s.by_action {
        println!("  {a:<12} {}, {} failed, {} skipped", c.succeeded(), c.failure, c.skipped);
    }
    if s.disabled_not_in_file > 0 {
        println!("disabled   {} users not in the replace file", s.disabled_not_in_file);
    }
    for w in &s.warnings {
        println!("warning    {}", shown(w));
    }
}

pub fn print_summary(s: &Summary) {
    println!("job        {}", s.job_id);
    println!("file       {} ({}, mode {})", shown(&s.file_name), s.format.as_deref().unwrap_or("-"), s.mode);
    println!("state      {}", s.state.as_str());
    if let Some(r) = &s.reason {
        println!("rejected   {}", shown(r));
        return;
    }
    print_counts(s, false);
    println!("duration   {:.1}s", s.duration_ms as f64 / 1000.0);
    for (label, key) in [("result", &s.result_key), ("failed", &s.failed_rows_key), ("disabled", &s.disabled_users_key)] {
        if let Some(k) = key {
            println!("{label:<10} {}", shown(k));
        }
    }
}

pub fn print_tenants(tenants: &[Tenant]) {
    let mut t = table(&["Tenant", "Name", "Admins", "Roles", "Licences"]);
    for x in tenants {
        t.add_row(vec![
            x.id.clone(),
            x.name.clone().unwrap_or_default(),
            x.admin_emails.join(", "),
            x.roles.join(", "),
            x.licences.map(|l| l.to_string()).unwrap_or_else(|| "unlimited".into()),
        ]);
    }
    println!("{t}");
}

#[derive(Serialize)]
pub struct Problem {
    pub row: String,
    pub column: Option<String>,
    pub message: String,
}

/// `rosterdrop validate`'s findings.
#[derive(Serialize)]
pub struct ValidationReport {
    pub file: String,
    pub format: String,
    pub rows: usize,
    pub valid: usize,
    pub failed: usize,
    pub skipped: usize,
    pub warnings: Vec<String>,
    pub problems: Vec<Problem>,
    /// Without a tenant, tenant rules (roles, attributes, products) were not checked.
    pub offline: bool,
}

impl ValidationReport {
    pub fn new(file: &Path, c: &Checked, offline: bool) -> Self {
        ValidationReport {
            file: file.display().to_string(),
            format: c.format.clone(),
            rows: c.rows,
            valid: c.valid,
            failed: c.failed,
            skipped: c.skipped,
            warnings: c.warnings.clone(),
            problems: c
                .problems
                .iter()
                .map(|(row, o)| Problem { row: row.clone(), column: o.column.clone(), message: o.message.clone() })
                .collect(),
            offline,
        }
    }

    pub fn print(&self) {
        if !self.problems.is_empty() {
            let mut t = table(&["Row", "Column", "Problem and fix"]);
            for p in &self.problems {
                t.add_row(vec![
                    Cell::new(shown(&p.row)),
                    Cell::new(shown(p.column.as_deref().unwrap_or(""))),
                    Cell::new(shown(&p.message)).fg(Color::Red),
                ]);
            }
            println!("{t}");
            if self.failed > self.problems.len() {
                println!(
                    "... and {} more rows that would fail (the first {} are listed)",
                    self.failed - self.problems.len(),
                    self.problems.len()
                );
            }
        }
        for w in &self.warnings {
            println!("warning: {}", shown(w));
        }
        let rows = if self.rows == 1 { "row" } else { "rows" };
        println!(
            "{}: {} {rows} ({}), {} valid, {} would fail, {} skipped",
            self.file, self.rows, self.format, self.valid, self.failed, self.skipped
        );
        if self.offline {
            println!("note: checked offline; add --tenant to check roles, attributes and products too");
        }
        println!(
            "note: checks against current data (already exists, not found) run on upload; the validate mode folder runs them without changing anything"
        );
    }
}

const PART: usize = 8 * 1024 * 1024;

/// Upload with a progress bar: multipart in 8 MiB parts for large files, one PUT otherwise.
/// The version S3 gave it (the bucket is versioned): with the key, it names the job.
pub async fn upload(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, bytes: Vec<u8>) -> shared::Result<Option<String>> {
    use aws_sdk_s3::primitives::ByteStream;
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    let bar = ProgressBar::new(bytes.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("uploading {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if bytes.len() <= PART {
        let n = bytes.len() as u64;
        let out = s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| shared::adapters::sdk_error("s3", "PutObject", e))?;
        bar.inc(n);
        bar.finish_and_clear();
        return Ok(out.version_id);
    }
    let upload = s3
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| shared::adapters::sdk_error("s3", "CreateMultipartUpload", e))?;
    let id = upload.upload_id().unwrap_or_default().to_string();
    let mut parts = Vec::new();
    for (i, chunk) in bytes.chunks(PART).enumerate() {
        let n = i as i32 + 1;
        let out = s3
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(&id)
            .part_number(n)
            .body(ByteStream::from(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| shared::adapters::sdk_error("s3", "UploadPart", e))?;
        parts.push(CompletedPart::builder().part_number(n).set_e_tag(out.e_tag).build());
        bar.inc(chunk.len() as u64);
    }
    let done = s3
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(&id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
        .map_err(|e| shared::adapters::sdk_error("s3", "CompleteMultipartUpload", e))?;
    bar.finish_and_clear();
    Ok(done.version_id)
}

pub fn job_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg:<10} {bar:30} {pos}/{len} rows {elapsed}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("waiting");
    bar
}

/// Rows applied so far, estimated from completed chunks (progress is recorded per chunk, never
/// per row, to keep the job item off the hot path).
pub fn update_job_bar(bar: &ProgressBar, job: &Job) {
    let (done, total) = (job.chunks_done() as u64, job.chunks_total() as u64);
    let rows = job.total_rows as u64;
    bar.set_length(rows);
    bar.set_position((rows * done).checked_div(total).unwrap_or(0));
    bar.set_message(job.state.as_str().to_lowercase());
}

/// A tenant's invites as a table: email, status, when, why.
pub fn print_invites(invites: &[shared::model::InviteRecord]) {
    if invites.is_empty() {
        println!("no invites");
        return;
    }
    let mut t = table(&["Email", "Status", "When", "Why"]);
    for i in invites {
        let colour = match i.status {
            shared::model::InviteStatus::Bounced | shared::model::InviteStatus::Complained | shared::model::InviteStatus::Failed => {
                Color::Red
            }
            shared::model::InviteStatus::Delivered => Color::Green,
            _ => Color::Reset,
        };
        t.add_row(vec![
            Cell::new(shown(&i.email)),
            Cell::new(i.status.as_str()).fg(colour),
            Cell::new(i.at.get(..19).unwrap_or(&i.at).replace('T', " ")),
            Cell::new(shown(i.reason.as_deref().unwrap_or_default())),
        ]);
    }
    println!("{t}");
}

/// A roster that invites these users again: `Action` Invite, the address, an empty `NewEmail` to
/// fill where the address was wrong, the first name, and what happened (`Status`, which a dropped
/// file ignores).
pub fn reinvite_roster(invites: &[shared::model::InviteRecord]) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let header = ["Action", "Email", "NewEmail", "FirstName", "Status"];
    let _ = w.write_record(header);
    for i in invites {
        let what = match &i.reason {
            Some(why) => format!("{}: {why}", i.status.as_str()),
            None => i.status.as_str().to_string(),
        };
        let _ = w.write_record(["Invite", i.email.as_str(), "", i.first_name.as_deref().unwrap_or_default(), what.as_str()]);
    }
    w.into_inner().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_name_s_escape_sequences_and_direction_overrides_reach_the_terminal_written_out() {
        // A key may hold any character: ESC ] 0 ; retitles the terminal, ESC [ 2 J clears it, and
        // U+202E shows "roster\u{202E}vsc.exe" as "rosterexe.csv".
        let name = "roster\u{1b}]0;owned\u{7}\u{1b}[2J\t\u{202E}vsc.exe";
        assert_eq!(shown(name), "roster<U+001B>]0;owned<U+0007><U+001B>[2J<U+0009><U+202E>vsc.exe");
        assert!(matches!(shown("Grüße, 名簿.xlsx"), std::borrow::Cow::Borrowed("Grüße, 名簿.xlsx")));
        let mut t = table(&["File"]);
        t.add_row(vec![Cell::new(shown(name))]);
        let printed = t.to_string();
        assert!(!printed.contains(['\u{1b}', '\u{7}', '\t', '\u{202E}']), "{printed:?}");
        let e = anyhow::anyhow!("cannot read \u{1b}[31mred\nline");
        assert_eq!(one_line(&e), "cannot read <U+001B>[31mred line");
    }
}
