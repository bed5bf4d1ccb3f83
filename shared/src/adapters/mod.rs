//! Adapters implementing the ports: AWS SDK ones (only this module sees SDK types) and, for the
//! fast test tier, in-memory ones (`memory`).

pub mod dynamo;
pub mod eventbridge;
#[cfg(any(test, feature = "memory"))]
pub mod memory;
pub mod s3;
pub mod ses;

use crate::config::Config;
use crate::error::Error;
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

/// Classify an SDK error: throttling, server errors, timeouts and dispatch failures are transient.
pub fn sdk_error<E>(
    service: &'static str,
    operation: &'static str,
    err: aws_sdk_s3::error::SdkError<E, aws_smithy_runtime_api::http::Response>,
) -> Error
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    use aws_sdk_s3::error::SdkError;
    let transient = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => true,
        // A 5xx is the service's own trouble whatever its code (SES answers InternalFailure).
        SdkError::ServiceError(se) => se.raw().status().is_server_error() || is_transient_code(se.err().code().unwrap_or_default()),
        _ => false,
    };
    let meta = err.as_service_error().map(|e| (e.code().map(str::to_string), e.message().map(str::to_string)));
    let message = match meta {
        Some((Some(code), msg)) => format!("{code}: {}", msg.unwrap_or_default()),
        _ => format!("{}", aws_smithy_types::error::display::DisplayErrorContext(&err)),
    };
    if transient { Error::Transient { service, operation, message } } else { Error::Aws { service, operation, message } }
}

fn is_transient_code(code: &str) -> bool {
    matches!(
        code,
        "ThrottlingException"
            | "Throttling"
            | "ProvisionedThroughputExceededException"
            | "RequestLimitExceeded"
            | "TransactionConflictException"
            | "InternalServerError"
            | "InternalError"
            | "InternalFailure"
            | "ServiceUnavailable"
            | "SlowDown"
            | "RequestTimeout"
            | "TooManyRequestsException"
            // SES's account states: sending resumes once the account is (review of a bounce
            // rate, a day's quota, a MAIL FROM domain's DNS). Permanent, every job then ended
            // FAILED with nobody told, and nothing sent them once SES took mail again.
            | "SendingPausedException"
            | "AccountSuspendedException"
            | "MailFromDomainNotVerifiedException"
            | "LimitExceededException"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_and_server_codes_are_transient_others_not() {
        assert!(is_transient_code("ThrottlingException"));
        assert!(is_transient_code("ProvisionedThroughputExceededException"));
        assert!(is_transient_code("SlowDown"));
        // SES account states pass: a job's email waits for them, it does not fail the job.
        for code in ["SendingPausedException", "AccountSuspendedException", "MailFromDomainNotVerifiedException", "LimitExceededException"]
        {
            assert!(is_transient_code(code), "{code}");
        }
        assert!(!is_transient_code("MessageRejected"), "a message SES refuses stays refused");
        assert!(!is_transient_code("AccessDenied"));
        assert!(!is_transient_code("ValidationException"));
    }
}
