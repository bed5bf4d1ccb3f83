//! Roster dropped in incoming/<tenant>/: validate, plan, write chunks.

shell::allocator!();

#[tokio::main]
async fn main() -> Result<(), shell::Error> {
    shell::run_s3_stage("ingest", |svc, obj| async move { shared::ingest::handle(svc, &obj).await }).await
}
