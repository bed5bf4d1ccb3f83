//! Scheduled (EventBridge, every minute): send the activation emails that are due, and publish
//! the age of the oldest open job.
//! Thin shell: config and SDK clients once per cold start, then the library's sweep.

use lambda_runtime::{Error, LambdaEvent, run, service_fn, tracing};
use shared::{Config, Services, invites, monitor};

// Ingest and finalize allocate per cell; mimalloc beats glibc malloc there (see `make bench`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();
    let svc = Services::aws(Config::from_env()?).await;
    let svc = &svc;
    run(service_fn(move |_: LambdaEvent<serde_json::Value>| async move {
        let now = chrono::Utc::now();
        let sent = invites::sweep(svc, now).await.inspect_err(|e| {
            tracing::error!(retryable = e.is_retryable(), error = %e, "invite sweep failed");
        })?;
        // The same schedule publishes the job-age metric its alarm watches (a stuck job pages).
        let resumed = monitor::finish_unsent_jobs(svc, now).await?;
        let stopped = monitor::fail_stuck_jobs(svc, now).await?;
        let age = monitor::oldest_open_job_age(svc, now).await?;
        println!("{}", monitor::emf_line(monitor::JOB_AGE_METRIC, age, now));
        Ok::<_, Error>(
            serde_json::json!({ "sent": sent, "resumed_jobs": resumed, "stopped_jobs": stopped, "oldest_open_job_age_seconds": age }),
        )
    }))
    .await
}
