//! Adapters implementing the ports: AWS SDK ones (only this module sees SDK types) and, for the
//! fast test tier, in-memory ones (`memory`).

pub mod dynamo;
#[cfg(any(test, feature = "memory"))]
pub mod memory;
pub mod s3;
pub mod ses;

use crate::config::Config;
use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, SdkConfig};

/// SDK configuration from the standard chain (env, profile, IMDS/Lambda role; `AWS_ENDPOINT_URL*`
/// for local endpoints) with the standard retry mode: exponential backoff with jitter on throttling.
pub async fn sdk_config(config: &Config) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::standard().with_max_attempts(config.sdk_max_attempts))
        .load()
        .await
}

pub fn s3_client(sdk: &SdkConfig, config: &Config) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::from(sdk).force_path_style(config.s3_force_path_style).build();
    aws_sdk_s3::Client::from_conf(conf)
}
