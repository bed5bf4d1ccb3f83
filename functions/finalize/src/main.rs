//! done/<job>.json: result files, summary, email.
//! Thin shell: config and SDK clients once per cold start, then every S3 record to the library.

use aws_lambda_events::s3::S3Event;
use lambda_runtime::{Diagnostic, LambdaEvent, run, service_fn, tracing};
use shared::{Config, Services, event};

// Ingest and finalize allocate per cell; mimalloc beats glibc malloc there (see `make bench`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    // JSON logs when the function's log format is JSON (set in infra/).
    tracing::init_default_subscriber();
    let svc = Services::aws(Config::from_env()?).await;
    let svc = &svc;
    run(service_fn(move |ev: LambdaEvent<S3Event>| async move {
        for obj in event::objects(&ev.payload) {
            // Only an error a retry may fix reaches the runtime (Lambda retries it, then the
            // dead-letter queue); the stage records the others itself. Every stage is idempotent.
            shared::finalize::handle(svc, &obj).await.map_err(|e| {
                tracing::error!(key = %obj.key, retryable = e.is_retryable(), error = %e, "finalize failed");
                Diagnostic { error_type: e.diagnostic_type().into(), error_message: e.to_string() }
            })?;
        }
        Ok::<(), Diagnostic>(())
    }))
    .await
}
