//! One chunk under chunks/<job>/: apply its rows to the directory. A chunk that never lands
//! leaves its job open until the deadline sweep stops it with an email.

shell::allocator!();

#[tokio::main]
async fn main() -> Result<(), shell::Error> {
    shell::run_s3_stage("apply", |svc, obj| async move { shared::apply::handle(svc, &obj).await }).await
}
