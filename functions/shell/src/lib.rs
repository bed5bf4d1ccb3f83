//! The shared start-up of the Lambdas, so each `main.rs` says only which stage it runs: the
//! allocator, JSON logs (the function's log format, set in infra/), config read once from the
//! environment (failing fast with the variable's name), SDK clients once per cold start, and each
//! error reported to the runtime labelled retryable or fatal (`Error::diagnostic_type`).

use aws_lambda_events::s3::S3Event;
use lambda_runtime::{Diagnostic, LambdaEvent, service_fn, tracing};
use shared::event::ObjectRef;
use shared::{Config, Services};
use std::future::Future;

pub use lambda_runtime::Error;
#[doc(hidden)]
pub use mimalloc;

/// mimalloc as the global allocator: ingest and finalize allocate per cell, where it beats glibc
/// malloc (see `make bench`).
#[macro_export]
macro_rules! allocator {
    () => {
        #[global_allocator]
        static GLOBAL: $crate::mimalloc::MiMalloc = $crate::mimalloc::MiMalloc;
    };
}

/// Logs, config and clients, once per cold start; kept for the process's life.
async fn services() -> Result<&'static Services, Error> {
    tracing::init_default_subscriber();
    Ok(Box::leak(Box::new(Services::aws(Config::from_env()?).await)))
}

/// Run a stage on every object of each S3 event. Only an error the stage returns reaches the
/// runtime (Lambda retries it, then the dead-letter queue); the stages record the others
/// themselves. Every stage is idempotent.
pub async fn run_s3_stage<F, Fut>(stage: &'static str, handle: F) -> Result<(), Error>
where
    F: Fn(&'static Services, ObjectRef) -> Fut,
    Fut: Future<Output = shared::Result<()>>,
{
    let svc = services().await?;
    let handle = &handle;
    lambda_runtime::run(service_fn(move |ev: LambdaEvent<S3Event>| async move {
        for obj in shared::event::objects(&ev.payload) {
            let key = obj.key.clone();
            handle(svc, obj).await.map_err(|e| {
                tracing::error!(stage, key = %key, retryable = e.is_retryable(), error = %e, "stage failed");
                Diagnostic { error_type: e.diagnostic_type().into(), error_message: e.to_string() }
            })?;
        }
        Ok::<(), Diagnostic>(())
    }))
    .await
}

/// Run a function that gets EventBridge events (the schedule, and events other services publish):
/// `handle` reads the event; an error it returns reaches the runtime, labelled, so EventBridge's
/// retry policy retries it.
pub async fn run_events<F, Fut>(handle: F) -> Result<(), Error>
where
    F: Fn(&'static Services, serde_json::Value, chrono::DateTime<chrono::Utc>) -> Fut,
    Fut: Future<Output = shared::Result<serde_json::Value>>,
{
    let svc = services().await?;
    let handle = &handle;
    lambda_runtime::run(service_fn(move |ev: LambdaEvent<serde_json::Value>| async move {
        handle(svc, ev.payload, chrono::Utc::now()).await.map_err(|e| {
            tracing::error!(retryable = e.is_retryable(), error = %e, "event not handled");
            Diagnostic { error_type: e.diagnostic_type().into(), error_message: e.to_string() }
        })
    }))
    .await
}
