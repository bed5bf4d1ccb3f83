//! Scheduled (EventBridge, every minute): send the activation emails that are due, finish jobs
//! whose result email was not sent, stop jobs past their deadline, publish the oldest open job's age.
//! Thin shell: config and SDK clients once per cold start, then the library's sweep.

use lambda_runtime::{Error, LambdaEvent, run, service_fn, tracing};
use shared::{Config, Services, monitor};

// Ingest and finalize allocate per cell; mimalloc beats glibc malloc there (see `make bench`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();
    let svc = Services::aws(Config::from_env()?).await;
    let svc = &svc;
    run(service_fn(move |_: LambdaEvent<serde_json::Value>| async move {
        // Each task runs on its own and reports its failure; none stops the others, and a
        // failure is not retried by Lambda (the next minute's run is the retry).
        let report = monitor::scheduled(svc, chrono::Utc::now()).await;
        Ok::<_, Error>(serde_json::to_value(&report)?)
    }))
    .await
}
