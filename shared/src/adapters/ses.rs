use crate::error::{Error, Result};
use crate::ports::Mailer;
use async_trait::async_trait;
use aws_sdk_sesv2::Client;
use aws_sdk_sesv2::primitives::Blob;
use aws_sdk_sesv2::types::{Destination, EmailContent, RawMessage};

pub struct SesMailer {
    client: Client,
}

impl SesMailer {
    pub fn new(client: Client) -> Self {
        SesMailer { client }
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
}
