//! Scheduled (EventBridge, every minute): send the activation emails that are due, finish jobs
//! whose result email was not sent, stop jobs past their deadline, publish the oldest open job's age.

shell::allocator!();

#[tokio::main]
async fn main() -> Result<(), shell::Error> {
    shell::run_scheduled(shared::monitor::scheduled).await
}
