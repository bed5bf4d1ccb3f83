//! done/<job>.json: result files, summary, email.
//! Thin shell: config and SDK clients once per cold start, then every S3 record to the library.

use aws_lambda_events::s3::S3Event;
use lambda_runtime::{Error, LambdaEvent, run, service_fn, tracing};
use shared::{Config, Services, event};

// Ingest and finalize allocate per cell; mimalloc beats glibc malloc there (see `make bench`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Error> {
    // JSON logs when the function's log format is JSON (set in infra/).
    tracing::init_default_subscriber();
    let svc = Services::aws(Config::from_env()?).await;
    let svc = &svc;
    run(service_fn(move |ev: LambdaEvent<S3Event>| async move {
        for obj in event::objects(&ev.payload) {
            // An error fails the invocation so Lambda retries it (then the dead-letter queue);
            // every stage is idempotent, so a retry never applies anything twice.
            shared::finalize::handle(svc, &obj).await.inspect_err(|e| {
                tracing::error!(key = %obj.key, retryable = e.is_retryable(), error = %e, "finalize failed");
            })?;
        }
        Ok::<(), Error>(())
    }))
    .await
}
