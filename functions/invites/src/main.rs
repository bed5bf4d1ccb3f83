//! Scheduled (EventBridge, every minute): send the activation emails that are due.
//! Thin shell: config and SDK clients once per cold start, then the library's sweep.

use lambda_runtime::{Error, LambdaEvent, run, service_fn, tracing};
use shared::{Config, Services, invites};

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();
    let svc = Services::aws(Config::from_env()?).await;
    let svc = &svc;
    run(service_fn(move |_: LambdaEvent<serde_json::Value>| async move {
        let sent = invites::sweep(svc, chrono::Utc::now()).await.inspect_err(|e| {
            tracing::error!(retryable = e.is_retryable(), error = %e, "invite sweep failed");
        })?;
        Ok::<_, Error>(serde_json::json!({ "sent": sent }))
    }))
    .await
}
