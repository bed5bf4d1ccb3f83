use crate::error::{Error, Result};
use crate::ports::Mailer;
use async_trait::async_trait;
use aws_sdk_sesv2::Client;
use aws_sdk_sesv2::primitives::Blob;
use aws_sdk_sesv2::types::{Destination, EmailContent, RawMessage};

pub struct SesMailer {
    client: Client,
    /// The configuration set whose event destination reports deliveries, bounces and complaints.
    configuration_set: Option<String>,
}

impl SesMailer {
    pub fn new(client: Client, configuration_set: Option<String>) -> Self {
        SesMailer { client, configuration_set }
    }
}

#[async_trait]
impl Mailer for SesMailer {
    async fn send_raw(&self, from: &str, to: &[String], mime: Vec<u8>) -> Result<()> {
        let raw = RawMessage::builder()
            .data(Blob::new(mime))
            .build()
            .map_err(|e| Error::Build { what: "raw message", message: e.to_string() })?;
        self.client
            .send_email()
            .from_email_address(from)
            .destination(Destination::builder().set_to_addresses(Some(to.to_vec())).build())
            .content(EmailContent::builder().raw(raw).build())
            .send()
            .await
            .map_err(|e| crate::adapters::sdk_error("sesv2", "SendEmail", e))?;
        Ok(())
    }

    async fn send_tracked(&self, from: &str, to: &[String], mime: Vec<u8>, tags: &[(&str, &str)]) -> Result<()> {
        let Some(set) = &self.configuration_set else { return self.send_raw(from, to, mime).await };
        let raw = RawMessage::builder()
            .data(Blob::new(mime))
            .build()
            .map_err(|e| Error::Build { what: "raw message", message: e.to_string() })?;
        let mut req = self
            .client
            .send_email()
            .from_email_address(from)
            .destination(Destination::builder().set_to_addresses(Some(to.to_vec())).build())
            .content(EmailContent::builder().raw(raw).build())
            .configuration_set_name(set);
        for (name, value) in tags {
            let tag = aws_sdk_sesv2::types::MessageTag::builder()
                .name(*name)
                .value(*value)
                .build()
                .map_err(|e| Error::Build { what: "message tag", message: e.to_string() })?;
            req = req.email_tags(tag);
        }
        req.send().await.map_err(|e| crate::adapters::sdk_error("sesv2", "SendEmail", e))?;
        Ok(())
    }
}
