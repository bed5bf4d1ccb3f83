//! Which stage a bucket event belongs to, by its key's prefix: the Lambdas are wired to one
//! prefix each by the bucket's notifications; the local runner and the tests route with this.

use crate::error::Result;
use crate::event;
use crate::services::Services;

/// Route an object to its stage, as the per-prefix notifications do in AWS.
pub async fn dispatch(svc: &Services, obj: &event::ObjectRef) -> Result<()> {
    let key = obj.key.as_str();
    if key.starts_with(crate::keys::INCOMING) {
        crate::ingest::handle(svc, obj).await
    } else if key.starts_with(crate::keys::CHUNKS) {
        crate::apply::handle(svc, obj).await
    } else if key.starts_with(crate::keys::DONE) {
        crate::finalize::handle(svc, obj).await
    } else {
        Ok(())
    }
}
