//! done/<job>.json: result files, summary, email.

shell::allocator!();

#[tokio::main]
async fn main() -> Result<(), shell::Error> {
    shell::run_s3_stage("finalize", |svc, obj| async move { shared::finalize::handle(svc, &obj).await }).await
}
