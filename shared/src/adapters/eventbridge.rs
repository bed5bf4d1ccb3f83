//! Job events on an EventBridge bus.

use crate::error::{Error, Result};
use crate::ports::EventBus;
use async_trait::async_trait;
use aws_sdk_eventbridge::Client;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;

pub struct EventBridgeBus {
    client: Client,
    bus: String,
}

impl EventBridgeBus {
    pub fn new(client: Client, bus: impl Into<String>) -> Self {
        EventBridgeBus { client, bus: bus.into() }
    }
}

#[async_trait]
impl EventBus for EventBridgeBus {
    async fn publish(&self, detail_type: &str, detail: &serde_json::Value) -> Result<()> {
        let entry = PutEventsRequestEntry::builder()
            .event_bus_name(&self.bus)
            .source(crate::events::SOURCE)
            .detail_type(detail_type)
            .detail(detail.to_string())
            .build();
        let out = self.client.put_events().entries(entry).send().await.map_err(|e| crate::adapters::sdk_error("events", "PutEvents", e))?;
        // PutEvents answers 200 with per-entry failures (throttling, an internal error): retry.
        if out.failed_entry_count() > 0 {
            let why = out.entries().iter().filter_map(|e| e.error_message()).collect::<Vec<_>>().join("; ");
            return Err(Error::Transient { service: "events", operation: "PutEvents", message: why });
        }
        Ok(())
    }
}
