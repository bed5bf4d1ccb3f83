//! EventBridge: every minute (the schedule) send the activation emails that are due, finish jobs
//! whose result email was not sent, stop jobs past their deadline, publish the oldest open job's
//! age; and, as SES reports them, record invites delivered, bounced or complained about.

shell::allocator!();

#[tokio::main]
async fn main() -> Result<(), shell::Error> {
    shell::run_events(shared::monitor::on_event).await
}
