//! The ports a handler needs, built once per cold start.

use crate::adapters::{self, dynamo, s3, ses};
use crate::config::Config;
use crate::ports::{Directory, EventBus, Invites, JobStore, Mailer, ObjectStore};
use std::sync::Arc;

#[derive(Clone)]
pub struct Services {
    pub config: Config,
    pub store: Arc<dyn ObjectStore>,
    pub directory: Arc<dyn Directory>,
    pub jobs: Arc<dyn JobStore>,
    pub mailer: Arc<dyn Mailer>,
    pub invites: Arc<dyn Invites>,
    /// Job events (the job store publishes through it: `events::Publishing`).
    pub events: Arc<dyn EventBus>,
}

impl Services {
    /// AWS-backed services from the standard SDK configuration chain.
    pub async fn aws(config: Config) -> Self {
        let sdk = adapters::sdk_config(&config).await;
        Self::from_sdk(config, &sdk)
    }

    pub fn from_sdk(config: Config, sdk: &aws_config::SdkConfig) -> Self {
        let s3 = adapters::s3_client(sdk, &config);
        let events = aws_sdk_eventbridge::Client::new(sdk);
        let ddb = aws_sdk_dynamodb::Client::from_conf(dynamo::configure(aws_sdk_dynamodb::config::Builder::from(sdk)).build());
        Self::from_clients(config, s3, ddb, aws_sdk_sesv2::Client::new(sdk), events)
    }

    pub fn from_clients(
        config: Config,
        s3: aws_sdk_s3::Client,
        ddb: aws_sdk_dynamodb::Client,
        ses: aws_sdk_sesv2::Client,
        events: aws_sdk_eventbridge::Client,
    ) -> Self {
        let bus: Arc<dyn EventBus> = Arc::new(adapters::eventbridge::EventBridgeBus::new(events, config.event_bus.clone()));
        let jobs: Arc<dyn JobStore> = Arc::new(dynamo::DynamoJobs::new(ddb.clone(), config.jobs_table.clone()));
        Services {
            store: Arc::new(s3::S3Store::new(s3, config.bucket.clone())),
            directory: Arc::new(dynamo::DynamoDirectory::new(ddb.clone(), config.directory_table.clone())),
            jobs: Arc::new(crate::events::Publishing::new(jobs, bus.clone())),
            invites: Arc::new(dynamo::DynamoInvites::new(ddb, config.jobs_table.clone())),
            mailer: Arc::new(ses::SesMailer::new(ses, config.ses_configuration_set.clone())),
            events: bus,
            config,
        }
    }
}
