//! `rosterdrop`: the support team's command line.
//!
//! Talks to the local stack by default (after `make up`); with `--aws` it uses the standard AWS
//! configuration (`AWS_PROFILE`, `AWS_REGION`, ...) and the deployed resource names from
//! `ROSTERDROP_BUCKET`, `ROSTERDROP_DIRECTORY_TABLE`, `ROSTERDROP_JOBS_TABLE`.
//!
//! Exit codes: 0 done; 1 the file or job has failed rows; 2 bad input (file, tenant, arguments) or
//! a file rejected as a whole; 3 the stack or AWS cannot be reached.

mod output;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use output::{Fail, input, unavailable};
use shared::config::Config;
use shared::local::{self, LocalAws};
use shared::model::{Job, JobState, Mode, Tenant};
use shared::report::Summary;
use shared::{Services, ingest, keys, template};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "rosterdrop", version, about = "Bulk user provisioning from roster files: templates, validation, uploads, jobs, tenants")]
struct Cli {
    /// Use AWS (standard profile/region settings and ROSTERDROP_* resource names) instead of the local stack.
    /// `ROSTERDROP_AWS=0` (or false, no, off, empty) is the local stack.
    #[arg(long, global = true, env = "ROSTERDROP_AWS", action = clap::ArgAction::SetTrue, value_parser = clap::builder::FalseyValueParser::new())]
    aws: bool,
    /// Log what happens (also RUST_LOG).
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum TemplateFormat {
    Xlsx,
    Csv,
}

#[derive(Subcommand)]
enum Command {
    /// Write the upload template (XLSX with instructions, definitions and dropdowns, or a CSV header).
    Template {
        /// Include this tenant's roles, products and custom attribute columns.
        #[arg(long, value_parser = tenant_id)]
        tenant: Option<String>,
        #[arg(long, value_enum, default_value = "xlsx")]
        format: TemplateFormat,
        /// Where to write it (default: rosterdrop-template.xlsx or .csv).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check a roster exactly as the upload would, without uploading. Offline without --tenant
    /// (tenant rules such as roles are then not checked). Exits 1 when any row would fail.
    /// `-` reads a table pasted on standard input (tab-separated as a spreadsheet copies it, or
    /// CSV), its header row first.
    Validate {
        file: PathBuf,
        #[arg(long, value_parser = tenant_id)]
        tenant: Option<String>,
        /// add | upsert | validate | replace | replace-force
        #[arg(long)]
        mode: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Upload a roster for a tenant; with --wait, follow the job to its end and print the summary.
    /// `-` uploads a table pasted on standard input, as `validate -` reads it.
    Submit {
        file: PathBuf,
        #[arg(long, value_parser = tenant_id)]
        tenant: String,
        /// add | upsert | validate | replace | replace-force (default: upsert)
        #[arg(long)]
        mode: Option<String>,
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Recent jobs of a tenant, or one job in detail with its first failures.
    Status {
        #[arg(value_parser = job_id)]
        job: Option<String>,
        #[arg(long, value_parser = tenant_id)]
        tenant: Option<String>,
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: u16,
        #[arg(long)]
        json: bool,
    },
    /// Apply a HELD job as it was read (its email has the preview). Exits 2 when refused.
    Approve {
        #[arg(value_parser = job_id)]
        job: String,
        /// Refuse unless the job is this tenant's.
        #[arg(long, value_parser = tenant_id)]
        tenant: Option<String>,
    },
    /// Discard a HELD job: nothing in it is applied. Exits 2 when refused.
    Discard {
        #[arg(value_parser = job_id)]
        job: String,
        #[arg(long, value_parser = tenant_id)]
        tenant: Option<String>,
    },
    /// Undo a finished job: put back every user and organization it changed, unless changed
    /// since by another job. The undo is a job of its own (result email). Exits 2 when refused.
    Undo {
        #[arg(value_parser = job_id)]
        job: String,
        #[arg(long, value_parser = tenant_id)]
        tenant: Option<String>,
    },
    /// Cancel a SCHEDULED file before its time: nothing in it is applied. Exits 2 when refused.
    Cancel {
        #[arg(value_parser = job_id)]
        job: String,
        #[arg(long, value_parser = tenant_id)]
        tenant: Option<String>,
    },
    /// A tenant's activation emails and what became of them (pending, sent, delivered, bounced,
    /// complained, failed); --out writes a roster to invite them again (fill NewEmail to fix an
    /// address, then drop or submit it).
    Invites {
        #[arg(long, value_parser = tenant_id)]
        tenant: String,
        /// pending | sending | sent | delivered | bounced | complained | failed
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Download a job's result files (result, failed rows, summary.json).
    Results {
        #[arg(value_parser = job_id)]
        job: String,
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Manage tenant configuration.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Local stack helpers (used by `make up`).
    Dev {
        #[command(subcommand)]
        command: DevCommand,
    },
}

/// A tenant id as the CLI takes it: folders match whatever their case (`incoming/Acme/` is
/// `acme`'s), and so does the CLI; anything no tenant can be is refused here, exit 2 (a
/// 3,000-character id reached DynamoDB, was refused there and was reported as the stack being
/// unreachable).
fn tenant_id(s: &str) -> std::result::Result<String, String> {
    let id = s.trim().to_lowercase();
    if shared::model::is_valid_tenant_id(&id) {
        Ok(id)
    } else {
        Err(format!("{} is not a tenant id: 1-64 lower-case letters, digits, '-' or '_'", output::shown(&shared::wording::bounded(s, 64))))
    }
}

/// A job id (a UUID, as `rosterdrop status --tenant T` lists them), in its usual form.
fn job_id(s: &str) -> std::result::Result<String, String> {
    uuid::Uuid::parse_str(s.trim()).map(|u| u.hyphenated().to_string()).map_err(|_| {
        format!(
            "{} is not a job id (a job id looks like 6dbc62c7-e279-5e36-b4c2-27dee1ff6af9; `rosterdrop status --tenant T` lists them)",
            output::shown(&shared::wording::bounded(s, 64))
        )
    })
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create or replace a tenant from a JSON or TOML file.
    Put {
        #[arg(long)]
        file: PathBuf,
    },
    /// Show a tenant's configuration (JSON).
    Get {
        #[arg(value_parser = tenant_id)]
        id: String,
    },
    /// List tenants.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Set the licence pool's count to the tenant's active users (after users existed before the
    /// pool was configured, or were changed outside rosterdrop). Run it while no file of the
    /// tenant is being applied (refused while one is, unless --force).
    RecountLicences {
        #[arg(value_parser = tenant_id)]
        id: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum DevCommand {
    /// Create the bucket, tables, event queue and SES sender identity (idempotent).
    Setup,
    /// Deliver bucket events from the local queue to the handlers until stopped.
    Runner {
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    // Output piped into `head` (or a closed pager): print! panics on the broken pipe, which read as
    // a crash (exit 101 and a panic message). End quietly as a program killed by SIGPIPE does.
    let panicked = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info.payload().downcast_ref::<String>().map(String::as_str).or_else(|| info.payload().downcast_ref::<&str>().copied());
        if text.is_some_and(|t| t.starts_with("failed printing to stdout") && t.contains("Broken pipe")) {
            std::process::exit(141);
        }
        panicked(info);
    }));
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| if cli.verbose { "info".into() } else { "error".into() });
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let json = cli.command.json();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            let (line, code) = (output::one_line(&e), output::exit_code(&e));
            eprintln!("error: {line}");
            // A script asking for JSON gets JSON on failure too: it read nothing on stdout.
            if json {
                println!("{}", serde_json::json!({ "error": line, "exit_code": code }));
            }
            ExitCode::from(code)
        }
    }
}

impl Command {
    /// Whether the command was asked for JSON output.
    fn json(&self) -> bool {
        match self {
            Command::Validate { json, .. }
            | Command::Submit { json, .. }
            | Command::Status { json, .. }
            | Command::Invites { json, .. }
            | Command::Tenant { command: TenantCommand::List { json } } => *json,
            _ => false,
        }
    }
}

/// Where the CLI talks to: local stack clients (default) or AWS.
struct Target {
    config: Config,
    svc: Services,
    local: Option<LocalAws>,
    s3: aws_sdk_s3::Client,
}

async fn connect(aws: bool) -> Result<Target> {
    if aws {
        let config =
            Config::from_env().map_err(|e| input(format!("{e}; set it to the deployed stack's value (see `sam deploy` outputs)")))?;
        let sdk = shared::adapters::sdk_config(&config).await;
        let s3 = shared::adapters::s3_client(&sdk, &config);
        let svc = Services::from_sdk(config.clone(), &sdk);
        return Ok(Target { config, svc, local: None, s3 });
    }
    let defaults = Config::local();
    let fallback = |k: &str| -> Option<String> {
        Some(match k {
            "ROSTERDROP_BUCKET" => defaults.bucket.clone(),
            "ROSTERDROP_DIRECTORY_TABLE" => defaults.directory_table.clone(),
            "ROSTERDROP_JOBS_TABLE" => defaults.jobs_table.clone(),
            "ROSTERDROP_SENDER" => defaults.default_sender.clone(),
            "ROSTERDROP_S3_PATH_STYLE" => "true".into(),
            _ => return None,
        })
    };
    let config = Config::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.is_empty()).or_else(|| fallback(k)))
        .map_err(|e| input(e.to_string()))?;
    let local = LocalAws::connect(&config).await;
    let svc = local.services(config.clone());
    let s3 = local.s3.clone();
    Ok(Target { config, svc, local: Some(local), s3 })
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let aws = cli.aws;
    // Offline commands first: they need no connection.
    if let Command::Validate { file, tenant: None, mode, json } = &cli.command {
        return validate(file, &Tenant::offline(), mode.as_deref(), *json, true);
    }
    if let Command::Template { tenant: None, format, out } = &cli.command {
        return write_template(None, *format, out.as_deref());
    }
    let t = connect(aws).await?;
    let svc = &t.svc;
    let reach = |e: shared::Error| unavailable(e, aws);
    match cli.command {
        Command::Template { tenant: Some(id), format, out } => {
            let tenant = find_tenant(svc, &id, aws).await?;
            write_template(Some(&tenant), format, out.as_deref())
        }
        Command::Validate { file, tenant: Some(id), mode, json } => {
            let tenant = find_tenant(svc, &id, aws).await?;
            validate(&file, &tenant, mode.as_deref(), json, false)
        }
        Command::Validate { .. } | Command::Template { .. } => unreachable!("handled offline above"),
        Command::Submit { file, tenant, mode, wait, timeout, json } => {
            submit(&t, &file, &tenant, mode.as_deref(), wait, timeout, json, aws).await
        }
        Command::Status { job: Some(id), json, tenant, .. } => {
            let job = svc
                .jobs
                .get(&id)
                .await
                .map_err(reach)?
                .ok_or_else(|| input(format!("job {id:?} not found; `rosterdrop status --tenant T` lists a tenant's jobs")))?;
            // As approve and the other decisions do: --tenant is a check, not ignored.
            if let Some(t) = tenant.filter(|t| *t != job.tenant) {
                return Err(input(format!("job {id} belongs to another tenant, not {t}")));
            }
            let summary = read_summary(svc, &job).await;
            let failures = first_failures(svc, &job.id, 10).await.map_err(reach)?;
            if json {
                output::print_json(&serde_json::json!({ "job": job, "summary": summary, "first_failures": failures }))?;
            } else {
                output::print_job(&job, summary.as_ref(), &failures);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { job: None, tenant: Some(id), limit, json } => {
            find_tenant(svc, &id, aws).await?;
            let jobs = svc.jobs.recent(&id, usize::from(limit)).await.map_err(reach)?;
            if json {
                output::print_json(&jobs)?;
            } else if jobs.is_empty() {
                println!("no jobs for tenant {id} yet");
            } else {
                output::print_jobs(&jobs);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { job: None, tenant: None, .. } => Err(input("give a job id, or --tenant T to list a tenant's recent jobs")),
        Command::Approve { job, tenant } => decide(&t, &job, tenant.as_deref(), shared::holds::Verb::Approve, aws).await,
        Command::Discard { job, tenant } => decide(&t, &job, tenant.as_deref(), shared::holds::Verb::Discard, aws).await,
        Command::Undo { job, tenant } => decide(&t, &job, tenant.as_deref(), shared::holds::Verb::Undo, aws).await,
        Command::Cancel { job, tenant } => decide(&t, &job, tenant.as_deref(), shared::holds::Verb::Cancel, aws).await,
        Command::Invites { tenant, status, out, json } => {
            find_tenant(svc, &tenant, aws).await?;
            let wanted = status
                .as_deref()
                .map(|s| {
                    shared::model::InviteStatus::parse(s).ok_or_else(|| {
                        input(format!("unknown status {s:?}; use one of: {}", shared::model::InviteStatus::NAMES.join(", ")))
                    })
                })
                .transpose()?;
            let invites: Vec<_> =
                svc.invites.list(&tenant).await.map_err(reach)?.into_iter().filter(|i| wanted.is_none_or(|w| i.status == w)).collect();
            if let Some(path) = &out {
                std::fs::write(path, output::reinvite_roster(&invites))
                    .map_err(|e| input(format!("cannot write {}: {e}", path.display())))?;
                // An empty roster has nothing to submit: say so, not "then submit it".
                let next = if invites.is_empty() {
                    "no invite matches, nothing to submit".to_string()
                } else {
                    "fill NewEmail where the address was wrong, then submit it".to_string()
                };
                eprintln!("{} invites written to {} ({next})", invites.len(), path.display());
            }
            if json {
                output::print_json(&invites)?;
            } else if out.is_none() {
                output::print_invites(&invites);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Results { job, out } => {
            let job = svc.jobs.get(&job).await.map_err(reach)?.ok_or_else(|| input(format!("job {job:?} not found")))?;
            let prefix = keys::results_prefix(&job.tenant, &job.id);
            let objects = svc.store.list(&prefix).await.map_err(reach)?;
            if objects.is_empty() {
                return Err(input(format!("job {} has no results yet (state {})", job.id, job.state.as_str())));
            }
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))
                .map_err(|e| input(format!("{e:#}")))?;
            for key in objects {
                let bytes = svc.store.get(&key).await.map_err(reach)?.ok_or_else(|| input(format!("{key} vanished")))?;
                let path = out.join(key.trim_start_matches(&prefix));
                std::fs::write(&path, &bytes).map_err(|e| input(format!("cannot write {}: {e}", path.display())))?;
                println!("{} ({} bytes)", path.display(), bytes.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Tenant { command: TenantCommand::Put { file } } => {
            let tenant = read_tenant_file(&file)?;
            tenant.validate_sender(&svc.config.sender_identity).map_err(|problem| input(format!("{}: {problem}", file.display())))?;
            let before = svc.directory.tenant(&tenant.id).await.map_err(reach)?;
            svc.directory.put_tenant(&tenant).await.map_err(reach)?;
            println!("tenant {} saved", tenant.id);
            // A pool configured for a tenant that already has users starts from them, not from zero.
            let had = |pool: Option<&str>| before.as_ref().is_some_and(|b| b.pool_limit(pool).is_some());
            let new_pool = (tenant.licences.is_some() && !had(None)) || tenant.licence_pools.keys().any(|p| !had(Some(p)));
            if new_pool {
                for (pool, _, used) in shared::apply::recount_licences(svc, &tenant).await.map_err(reach)? {
                    let limit = tenant.pool_limit(pool.as_deref()).unwrap_or(0);
                    println!("licences{}: {used} of {limit} in use (counted from the tenant's active users)", pool_label(&pool));
                    if used > limit {
                        // Saved all the same (the users exist); what it means for the next file.
                        eprintln!(
                            "warning: licences{}: {} more in use than the limit allows; no file can give this pool's licences to new or enabled users until {} are freed (disable or delete users, or raise the limit)",
                            pool_label(&pool),
                            used - limit,
                            used - limit
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Tenant { command: TenantCommand::RecountLicences { id, force } } => {
            let tenant = find_tenant(svc, &id, aws).await?;
            let open: Vec<String> =
                svc.jobs.recent(&id, 100).await.map_err(reach)?.into_iter().filter(|j| !j.state.is_final()).map(|j| j.id).collect();
            if !open.is_empty() && !force {
                return Err(input(format!(
                    "tenant {id} has {} file(s) still being applied ({}); their licences are in flight, so a count now could be off. Run it again when they have finished, or pass --force",
                    open.len(),
                    open.join(", ")
                )));
            }
            for (pool, before, active) in shared::apply::recount_licences(svc, &tenant).await.map_err(reach)? {
                println!("tenant {id}: licences used{} {before} -> {active} (active users)", pool_label(&pool));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Tenant { command: TenantCommand::Get { id } } => {
            output::print_json(&find_tenant(svc, &id, aws).await?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Tenant { command: TenantCommand::List { json } } => {
            let tenants = svc.directory.list_tenants().await.map_err(reach)?;
            if json {
                output::print_json(&tenants)?
            } else {
                output::print_tenants(&tenants)
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dev { command } => {
            let local = t.local.as_ref().ok_or_else(|| input("dev commands run against the local stack only (drop --aws)"))?;
            match command {
                DevCommand::Setup => {
                    let url = local::setup(&t.config, local, local::QUEUE).await.map_err(reach)?;
                    println!(
                        "bucket {}, tables {} and {}, queue {url}, sender {}",
                        t.config.bucket, t.config.directory_table, t.config.jobs_table, t.config.default_sender
                    );
                }
                DevCommand::Runner { concurrency } => {
                    let url = local::setup(&t.config, local, local::QUEUE).await.map_err(reach)?;
                    eprintln!("runner: delivering events from {url}");
                    let stop = async {
                        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                            Ok(mut term) => tokio::select! { _ = term.recv() => {}, _ = tokio::signal::ctrl_c() => {} },
                            Err(_) => {
                                let _ = tokio::signal::ctrl_c().await;
                            }
                        }
                    };
                    local::run(t.svc.clone(), local.sqs.clone(), url, concurrency, stop).await;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn find_tenant(svc: &Services, id: &str, aws: bool) -> Result<Tenant> {
    svc.directory.tenant(id).await.map_err(|e| unavailable(e, aws))?.ok_or_else(|| {
        input(format!(
            "tenant {id:?} does not exist; `rosterdrop tenant list` shows the tenants, `rosterdrop tenant put --file` creates one"
        ))
    })
}

/// A roster file, or with `-` a table pasted on standard input: (its bytes, the name it goes by).
/// A paste is named `pasted-<UTC time>.tsv` when its header row has a tab (a spreadsheet's copy),
/// else `.csv`; it is read up to the deployment's file size limit, no further.
fn read_roster(path: &Path) -> Result<(Vec<u8>, String)> {
    if path.as_os_str() != "-" {
        return Ok((read_file(path)?, path.display().to_string()));
    }
    use std::io::{IsTerminal, Read};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("paste the table (its header row first), then press Ctrl-D");
    }
    let limit = shared::config::DEFAULT_MAX_FILE_BYTES;
    let mut bytes = Vec::new();
    stdin.lock().take(limit + 1).read_to_end(&mut bytes).map_err(|e| input(format!("cannot read standard input: {e}")))?;
    if bytes.len() as u64 > limit {
        return Err(input(format!("the pasted table is over {} MB; save it as a file and upload that", limit / 1_000_000)));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(input("nothing was pasted: give the table on standard input, its header row first"));
    }
    let header = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    let ext = if header.contains(&b'\t') { "tsv" } else { "csv" };
    Ok((bytes, format!("pasted-{}.{ext}", chrono::Utc::now().format("%Y%m%d-%H%M%S"))))
}

/// A pasted table kept in a scratch file, which the file checks read like any other.
fn scratch(bytes: &[u8]) -> Result<tempfile::NamedTempFile> {
    let cannot = |e: std::io::Error| input(format!("cannot keep the pasted table: {e}"));
    let file = tempfile::NamedTempFile::new().map_err(cannot)?;
    std::fs::write(file.path(), bytes).map_err(cannot)?;
    Ok(file)
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| input(format!("cannot read {}: {}", path.display(), output::io_reason(&e))))
}

/// A tenant file, JSON or TOML (by extension, or by trying JSON first), validated.
fn read_tenant_file(path: &Path) -> Result<Tenant> {
    let text = String::from_utf8(read_file(path)?).map_err(|_| input(format!("{} is not UTF-8 text", path.display())))?;
    let is_toml = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    let tenant: Tenant = if is_toml {
        toml::from_str(&text).map_err(|e| input(format!("{}: {}", path.display(), e.message())))?
    } else {
        serde_json::from_str(&text).map_err(|e| input(format!("{}: {e}", path.display())))?
    };
    let tenant = tenant.in_nfc();
    tenant.validate().map_err(|problem| input(format!("{}: {problem}", path.display())))?;
    Ok(tenant)
}

fn parse_mode(mode: Option<&str>) -> Result<Option<Mode>> {
    mode.map(|m| Mode::parse(m).ok_or_else(|| input(format!("unknown mode {m:?}; use one of: {}", Mode::NAMES.join(", "))))).transpose()
}

fn write_template(tenant: Option<&Tenant>, format: TemplateFormat, out: Option<&Path>) -> Result<ExitCode> {
    let (bytes, default) = match format {
        TemplateFormat::Xlsx => (template::xlsx(tenant)?, "rosterdrop-template.xlsx"),
        TemplateFormat::Csv => (template::csv(tenant), "rosterdrop-template.csv"),
    };
    let path = out.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(default));
    std::fs::write(&path, bytes).map_err(|e| input(format!("cannot write {}: {}", path.display(), output::io_reason(&e))))?;
    println!("{} written ({} columns)", path.display(), template::columns(tenant).len());
    Ok(ExitCode::SUCCESS)
}

/// The exact ingest validation (the Lambda's own code) run locally, row by row as the upload
/// reads the file (`ingest::check_file`): memory for its keys and problems, not its rows.
fn validate(file: &Path, tenant: &Tenant, mode: Option<&str>, json: bool, offline: bool) -> Result<ExitCode> {
    let mode = parse_mode(mode)?.unwrap_or(Mode::Upsert);
    // A paste, or a pipe (`<(gunzip -c r.csv.gz)`, which the reader cannot seek), is read from
    // a scratch file like any other.
    let mut pasted = None;
    let piped = file.as_os_str() != "-" && std::fs::metadata(file).is_ok_and(|m| !m.is_file() && !m.is_dir());
    let (path, name) = if file.as_os_str() == "-" || piped {
        let (bytes, name) = read_roster(file)?;
        (pasted.insert(scratch(&bytes)?).path().to_path_buf(), name)
    } else {
        use std::io::Read;
        let cannot = |e: std::io::Error| input(format!("cannot read {}: {}", file.display(), output::io_reason(&e)));
        std::fs::File::open(file).and_then(|mut f| f.read(&mut [0u8; 1])).map_err(cannot)?;
        (file.to_path_buf(), file.display().to_string())
    };
    let file = Path::new(&name);
    let checked = match ingest::check_file(&path, tenant, mode)? {
        Ok(c) => c,
        Err(reason) => {
            if json {
                output::print_json(&serde_json::json!({ "file": file.display().to_string(), "rejected": reason }))?;
                return Ok(ExitCode::from(2));
            }
            return Err(Fail { code: 2, msg: format!("{} would be rejected: {reason}", file.display()) }.into());
        }
    };
    drop(pasted);
    let report = output::ValidationReport::new(file, &checked, offline);
    if json {
        output::print_json(&report)?
    } else {
        report.print()
    }
    Ok(if report.failed > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

#[allow(clippy::too_many_arguments)]
async fn submit(
    t: &Target,
    file: &Path,
    tenant: &str,
    mode: Option<&str>,
    wait: bool,
    timeout: u64,
    json: bool,
    aws: bool,
) -> Result<ExitCode> {
    let svc = &t.svc;
    let (bytes, name) = read_roster(file)?;
    let name = Path::new(&name).file_name().and_then(|n| n.to_str()).ok_or_else(|| input("the file name is not valid UTF-8"))?;
    let found = find_tenant(svc, tenant, aws).await?;
    if file.as_os_str() == "-" {
        // A paste the upload would refuse as a whole (no header row) is refused here, as
        // `validate -` refuses it: uploaded, it became a REJECTED job quoting the pasted row.
        let mode = parse_mode(mode)?.unwrap_or(Mode::Upsert);
        if let Err(reason) = ingest::check_file(scratch(&bytes)?.path(), &found, mode)? {
            return Err(input(format!("the pasted table was not uploaded: {reason}")));
        }
    }
    let key = match parse_mode(mode)? {
        None => format!("incoming/{tenant}/{name}"),
        Some(m) => format!("incoming/{tenant}/{}/{name}", m.as_str()),
    };
    let started = chrono::Utc::now() - chrono::Duration::seconds(5);
    let version = output::upload(&t.s3, &t.config.bucket, &key, bytes).await.map_err(|e| unavailable(e, aws))?;
    eprintln!("uploaded s3://{}/{}", t.config.bucket, output::shown(&key));
    if !wait {
        // The job the upload starts is named by its key and version (`ingest::job_id`): said
        // here, so the upload can be followed (nothing was printed, with --json neither).
        let job = version.map(|v| {
            let obj = shared::event::ObjectRef {
                bucket: t.config.bucket.clone(),
                key: key.clone(),
                size: None,
                version_id: Some(v),
                sequencer: None,
                etag: None,
                event_time: None,
            };
            ingest::job_id(&obj)
        });
        if json {
            output::print_json(&serde_json::json!({ "key": key, "job": job }))?;
        } else if let Some(job) = &job {
            println!("job {job}: follow it with `rosterdrop status {job}`");
        } else {
            println!("follow it with `rosterdrop status --tenant {tenant}`");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let bar = output::job_bar();
    let job = loop {
        let jobs = svc.jobs.recent(tenant, 50).await.map_err(|e| unavailable(e, aws))?;
        let mine = jobs
            .into_iter()
            .find(|j| j.source_key == key && chrono::DateTime::parse_from_rfc3339(&j.received_at).is_ok_and(|at| at >= started));
        if let Some(j) = &mine {
            output::update_job_bar(&bar, j);
            if j.state.is_final() {
                bar.finish_and_clear();
                break mine.expect("just matched");
            }
            // Waiting on a person (approve, discard) or a time: nothing more happens while we
            // wait, which ran out the timeout in silence (30 minutes by default).
            if matches!(j.state, JobState::Held | JobState::Scheduled) {
                bar.finish_and_clear();
                return waiting(j, json);
            }
        }
        if Instant::now() > deadline {
            bar.abandon();
            return Err(Fail {
                code: 3,
                msg: format!("the job did not finish within {timeout}s; follow it with `rosterdrop status --tenant {tenant}`"),
            }
            .into());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let summary = read_summary(svc, &job).await.ok_or_else(|| input(format!("job {} finished without a summary", job.id)))?;
    if json {
        output::print_json(&summary)?
    } else {
        output::print_summary(&summary)
    }
    Ok(match job.state {
        JobState::Rejected => ExitCode::from(2),
        JobState::Failed => ExitCode::from(1),
        _ if summary.counts.failure > 0 => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    })
}

/// A job that waits for a decision or its time: what it waits for and what to run; exit 4.
fn waiting(job: &Job, json: bool) -> Result<ExitCode> {
    let next = match job.state {
        JobState::Held => format!("nothing was applied; `rosterdrop approve {0}` applies it, `rosterdrop discard {0}` discards it", job.id),
        _ => format!("it is applied then; `rosterdrop cancel {}` cancels it", job.id),
    };
    if json {
        output::print_json(&serde_json::json!({ "job": job, "next": next }))?;
    } else {
        let why = job.message.as_deref().map(|m| format!(" ({})", output::shown(m))).unwrap_or_default();
        let state = match (&job.state, &job.run_at) {
            (JobState::Scheduled, Some(at)) => format!("SCHEDULED for {at}"),
            (JobState::Held, _) => "HELD for approval".into(),
            (s, _) => s.as_str().into(),
        };
        println!("job {} is {state}{why}: {next}", job.id);
    }
    Ok(ExitCode::from(4))
}

async fn read_summary(svc: &Services, job: &Job) -> Option<Summary> {
    let key = format!("{}summary.json", keys::results_prefix(&job.tenant, &job.id));
    let bytes = svc.store.get(&key).await.ok()??;
    serde_json::from_slice(&bytes).ok()
}

/// The first failed rows of a job, from its outcome files.
async fn first_failures(svc: &Services, job: &str, n: usize) -> shared::Result<Vec<shared::model::Outcome>> {
    let mut failures = Vec::new();
    for key in svc.store.list(&keys::outcomes_prefix(job)).await? {
        let body = svc.store.get(&key).await?.unwrap_or_default();
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if let Ok(o) = serde_json::from_slice::<shared::model::Outcome>(line)
                && o.status == shared::model::Status::Failure
            {
                failures.push(o);
            }
        }
    }
    failures.sort_by_key(|o| o.row);
    failures.truncate(n);
    Ok(failures)
}

/// `approve` / `discard` / `undo`: checked here (a refusal is one line, exit 2, nothing changed),
/// then done the way the S3 console does it: an empty object at `incoming/<tenant>/<verb>/<job>`,
/// which the pipeline's own function acts on (the bucket lets only its functions write the
/// pipeline's prefixes). Waits for the job to move, then one line.
async fn decide(t: &Target, job: &str, tenant: Option<&str>, verb: shared::holds::Verb, aws: bool) -> Result<ExitCode> {
    use shared::holds::Verb;
    let svc = &t.svc;
    let reach = |e: shared::Error| unavailable(e, aws);
    let job = match shared::holds::check(svc, job, tenant, verb).await.map_err(reach)? {
        Ok(job) => job,
        Err(line) => return Err(input(line)),
    };
    let key = format!("incoming/{}/{}/{}", job.tenant, verb.as_str(), job.id);
    output::upload(&t.s3, &t.config.bucket, &key, Vec::new()).await.map_err(reach)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let line = match verb {
            Verb::Undo => {
                let uid = shared::undo::undo_job_id(&job.id);
                svc.jobs
                    .get(&uid)
                    .await
                    .map_err(reach)?
                    .filter(|u| u.state != JobState::Received)
                    .map(|u| format!("undo of job {} started as job {uid} ({}); the result email follows", job.id, u.state.as_str()))
            }
            _ => {
                let now = svc.jobs.get(&job.id).await.map_err(reach)?.map(|j| j.state).unwrap_or(job.state);
                match (verb, now) {
                    (_, s) if s == job.state => None,
                    (Verb::Discard, JobState::Discarded) => {
                        Some(format!("job {} discarded: nothing in {} was applied", job.id, output::shown(&job.file_name)))
                    }
                    (Verb::Cancel, JobState::Discarded) => {
                        Some(format!("job {} cancelled: nothing in {} was applied", job.id, output::shown(&job.file_name)))
                    }
                    (Verb::Approve, s) if s != JobState::Discarded => Some(format!(
                        "job {} approved: {} is being applied ({}); the result email follows",
                        job.id,
                        output::shown(&job.file_name),
                        s.as_str()
                    )),
                    (_, s) => {
                        return Err(input(format!("job {} became {} meanwhile; see `rosterdrop status {}`", job.id, s.as_str(), job.id)));
                    }
                }
            }
        };
        if let Some(line) = line {
            println!("{line}");
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() > deadline {
            return Err(Fail {
                code: 3,
                msg: format!("{key} was uploaded but has not taken effect within 120s; the admins get an email saying what happened"),
            }
            .into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How a pool is named in the CLI's output: nothing for the default pool.
fn pool_label(pool: &Option<String>) -> String {
    pool.as_ref().map(|p| format!(" in pool \"{p}\"")).unwrap_or_default()
}
