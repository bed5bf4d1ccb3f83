//! The one error type of the library. Every variant says whether retrying can help, so the
//! Lambda shells can tell the runtime to retry (transient AWS trouble) or give up (bad input).

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required environment variable is missing or malformed (fails at cold start).
    #[error("configuration: {0}")]
    Config(String),
    /// An AWS call failed in a way that may succeed later (throttling, 5xx, timeouts, network).
    #[error("{service} {operation} failed (transient): {message}")]
    Transient { service: &'static str, operation: &'static str, message: String },
    /// An AWS call failed in a way retrying will not fix (access denied, validation).
    #[error("{service} {operation} failed: {message}")]
    Aws { service: &'static str, operation: &'static str, message: String },
    /// Internal data we wrote ourselves could not be read back (corruption or a bug).
    #[error("internal data {what}: {message}")]
    Corrupt { what: String, message: String },
    /// Writing a result file failed.
    #[error("building {what}: {message}")]
    Build { what: &'static str, message: String },
    /// Local scratch storage (Lambda's /tmp) failed: a fresh invocation may have a fresh disk.
    #[error("local storage, {what}: {message}")]
    Local { what: &'static str, message: String },
}

impl Error {
    /// Whether the same invocation may succeed when retried.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Transient { .. } | Error::Local { .. })
    }

    /// The error type the Lambda runtime reports (`Diagnostic::error_type`): whether a retry may
    /// help, then the kind, so alarms and the dead-letter queue's readers can tell them apart.
    pub fn diagnostic_type(&self) -> &'static str {
        match self {
            Error::Transient { .. } => "Retryable.Transient",
            Error::Local { .. } => "Retryable.LocalStorage",
            Error::Config(_) => "Fatal.Config",
            Error::Aws { .. } => "Fatal.Aws",
            Error::Corrupt { .. } => "Fatal.Corrupt",
            Error::Build { .. } => "Fatal.Build",
        }
    }

    pub fn local(what: &'static str, e: impl std::fmt::Display) -> Self {
        Error::Local { what, message: e.to_string() }
    }

    pub fn corrupt(what: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Error::Corrupt { what: what.into(), message: message.to_string() }
    }

    /// Classify an SDK error: throttling, server errors, timeouts and dispatch failures are transient.
    pub fn from_sdk<E>(
        service: &'static str,
        operation: &'static str,
        err: aws_sdk_s3::error::SdkError<E, aws_smithy_runtime_api::http::Response>,
    ) -> Self
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
    )
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_and_server_codes_are_retryable_others_not() {
        assert!(is_transient_code("ThrottlingException"));
        assert!(is_transient_code("ProvisionedThroughputExceededException"));
        assert!(is_transient_code("SlowDown"));
        assert!(!is_transient_code("AccessDenied"));
        assert!(!is_transient_code("ValidationException"));
        assert!(Error::Transient { service: "s3", operation: "GetObject", message: String::new() }.is_retryable());
        assert!(!Error::Config("X".into()).is_retryable());
    }
}
