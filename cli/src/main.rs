//! `rosterdrop`: the support team's command line. Talks to the local stack by default (after
//! `make up`); set the usual AWS variables (`AWS_PROFILE`, `AWS_REGION`, ...) plus
//! `ROSTERDROP_BUCKET` and the table names to use a deployed stack.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use shared::config::Config;
use shared::local::{self, LocalAws};
use shared::model::{Job, JobState, Mode, Tenant};
use shared::report::Summary;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "rosterdrop", version, about = "Bulk user provisioning from roster files: submit files, check jobs, manage tenants")]
struct Cli {
    /// Log what happens (also RUST_LOG).
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage tenant configuration.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Upload a roster file for a tenant; with --wait, follow the job to its end and print the summary.
    Submit {
        file: PathBuf,
        #[arg(long)]
        tenant: String,
        /// add | upsert (default: upsert)
        #[arg(long)]
        mode: Option<String>,
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Recent jobs of a tenant, or one job in detail.
    Status {
        job: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Download a job's result files (result, failed rows, summary.json).
    Results {
        job: String,
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Local stack helpers (used by `make up`).
    Dev {
        #[command(subcommand)]
        command: DevCommand,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create or replace a tenant from a JSON file.
    Put {
        #[arg(long)]
        file: PathBuf,
    },
    /// Show a tenant's configuration.
    Get { id: String },
    /// List tenants.
    List {
        #[arg(long)]
        json: bool,
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

fn config() -> Result<Config> {
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
    Ok(Config::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.is_empty()).or_else(|| fallback(k)))?)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| if cli.verbose { "info".into() } else { "warn".into() });
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    match run(cli.command).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(command: Command) -> Result<ExitCode> {
    let config = config()?;
    let aws = LocalAws::connect(&config).await;
    let svc = aws.services(config.clone());
    match command {
        Command::Dev { command: DevCommand::Setup } => {
            let url = local::setup(&config, &aws, local::QUEUE)
                .await
                .context("setting up local resources (is the stack running? try `make up`)")?;
            println!(
                "bucket {}, tables {} and {}, queue {url}, sender {}",
                config.bucket, config.directory_table, config.jobs_table, config.default_sender
            );
        }
        Command::Dev { command: DevCommand::Runner { concurrency } } => {
            let url = local::setup(&config, &aws, local::QUEUE).await.context("setting up local resources (is the stack running?)")?;
            eprintln!("runner: delivering events from {url}");
            let stop = async {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
                tokio::select! { _ = term.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
            };
            local::run(svc, aws.sqs.clone(), url, concurrency, stop).await;
        }
        Command::Tenant { command: TenantCommand::Put { file } } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let tenant: Tenant = serde_json::from_str(&text).with_context(|| format!("{} is not a valid tenant file", file.display()))?;
            if let Err(problem) = tenant.validate() {
                bail!("{}: {problem}", file.display());
            }
            svc.directory.put_tenant(&tenant).await.context("saving the tenant (is the stack running? try `make up`)")?;
            println!("tenant {} saved", tenant.id);
        }
        Command::Tenant { command: TenantCommand::Get { id } } => {
            let tenant = svc
                .directory
                .tenant(&id)
                .await?
                .with_context(|| format!("tenant {id:?} does not exist; `rosterdrop tenant list` shows them"))?;
            println!("{}", serde_json::to_string_pretty(&tenant)?);
        }
        Command::Tenant { command: TenantCommand::List { json } } => {
            let tenants = svc.directory.list_tenants().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tenants)?);
            } else {
                for t in tenants {
                    println!("{:<24} admins: {}", t.id, t.admin_emails.join(", "));
                }
            }
        }
        Command::Submit { file, tenant, mode, wait, timeout, json } => {
            return submit(&svc, &config, file, tenant, mode, wait, timeout, json).await;
        }
        Command::Status { job, tenant, json } => status(&svc, job, tenant, json).await?,
        Command::Results { job, out } => {
            let job =
                svc.jobs.get(&job).await?.with_context(|| format!("job {job:?} not found; `rosterdrop status --tenant T` lists jobs"))?;
            let prefix = shared::keys::results_prefix(&job.tenant, &job.id);
            let keys = svc.store.list(&prefix).await?;
            if keys.is_empty() {
                bail!("job {} has no results yet (state {})", job.id, job.state.as_str());
            }
            std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
            for key in keys {
                let bytes = svc.store.get(&key).await?.with_context(|| format!("{key} vanished"))?;
                let path = out.join(key.trim_start_matches(&prefix));
                std::fs::write(&path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
                println!("{} ({} bytes)", path.display(), bytes.len());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::too_many_arguments)]
async fn submit(
    svc: &shared::Services,
    config: &Config,
    file: PathBuf,
    tenant: String,
    mode: Option<String>,
    wait: bool,
    timeout: u64,
    json: bool,
) -> Result<ExitCode> {
    let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let name = file.file_name().and_then(|n| n.to_str()).context("the file name is not valid UTF-8")?;
    if svc.directory.tenant(&tenant).await.context("looking up the tenant (is the stack running? try `make up`)")?.is_none() {
        bail!("tenant {tenant:?} does not exist; create it with `rosterdrop tenant put --file tenant.json`");
    }
    let key = match mode.as_deref() {
        None => format!("incoming/{tenant}/{name}"),
        Some(m) => {
            let m = Mode::parse(m).with_context(|| format!("unknown mode {m:?}; use one of: {}", Mode::NAMES.join(", ")))?;
            format!("incoming/{tenant}/{}/{name}", m.as_str())
        }
    };
    let started = chrono::Utc::now() - chrono::Duration::seconds(5);
    svc.store.put(&key, bytes, "application/octet-stream").await.context("uploading")?;
    eprintln!("uploaded s3://{}/{key}", config.bucket);
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let job = loop {
        let jobs = svc.jobs.recent(&tenant, 50).await?;
        let found = jobs.into_iter().find(|j| {
            j.source_key == key
                && chrono::DateTime::parse_from_rfc3339(&j.received_at).is_ok_and(|t| t >= started)
                && matches!(j.state, JobState::Completed | JobState::Rejected)
        });
        if let Some(j) = found {
            break j;
        }
        if Instant::now() > deadline {
            bail!("the job did not finish within {timeout}s; check `rosterdrop status --tenant {tenant}`");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let summary = read_summary(svc, &job).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    Ok(if job.state == JobState::Completed && summary.counts.failure == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

async fn read_summary(svc: &shared::Services, job: &Job) -> Result<Summary> {
    let key = format!("{}summary.json", shared::keys::results_prefix(&job.tenant, &job.id));
    let bytes = svc.store.get(&key).await?.with_context(|| format!("no summary at {key}"))?;
    Ok(serde_json::from_slice(&bytes)?)
}

fn print_summary(s: &Summary) {
    println!("job        {}", s.job_id);
    println!("file       {} ({}, mode {})", s.file_name, s.format.as_deref().unwrap_or("-"), s.mode);
    println!("state      {:?}", s.state);
    if let Some(r) = &s.reason {
        println!("rejected   {r}");
        return;
    }
    println!("rows       {}  succeeded {}  failed {}  skipped {}", s.rows, s.counts.success, s.counts.failure, s.counts.skipped);
    for (a, c) in &s.by_action {
        println!("  {a:<12} {} succeeded, {} failed, {} skipped", c.success, c.failure, c.skipped);
    }
    for w in &s.warnings {
        println!("warning    {w}");
    }
    println!("duration   {:.1}s", s.duration_ms as f64 / 1000.0);
    if let Some(k) = &s.result_key {
        println!("result     {k}");
    }
    if let Some(k) = &s.failed_rows_key {
        println!("failed     {k}");
    }
}

async fn status(svc: &shared::Services, job: Option<String>, tenant: Option<String>, json: bool) -> Result<()> {
    match (job, tenant) {
        (Some(id), _) => {
            let job = svc.jobs.get(&id).await?.with_context(|| format!("job {id:?} not found"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&job)?);
            } else {
                println!(
                    "job {} ({}) {:?}: {} rows, {} succeeded, {} failed, {} skipped; chunks {}/{}",
                    job.id,
                    job.file_name,
                    job.state,
                    job.total_rows,
                    job.succeeded,
                    job.failed,
                    job.skipped,
                    job.chunks_done(),
                    job.chunks_total()
                );
            }
        }
        (None, Some(t)) => {
            let jobs = svc.jobs.recent(&t, 20).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else {
                for j in jobs {
                    println!(
                        "{}  {:<10} {:<30} {:>7} rows {:>7} ok {:>7} failed  {}",
                        j.received_at,
                        j.state.as_str(),
                        j.file_name,
                        j.total_rows,
                        j.succeeded,
                        j.failed,
                        j.id
                    );
                }
            }
        }
        (None, None) => bail!("give a job id, or --tenant to list a tenant's recent jobs"),
    }
    Ok(())
}
