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

    /// SES refusing to send for now, whatever the message: throttled, a day's quota spent
    /// (`holds_mail_back`), or the account itself not sending (`ses_not_sending`). A 500 is a
    /// blip of one call.
    pub fn holds_mail_back(&self) -> bool {
        self.ses_code_in(&["Throttling", "TooManyRequests", "LimitExceeded"]) || self.ses_not_sending()
    }

    /// The SES account not sending until someone acts (a review of its bounce rate, its MAIL FROM
    /// domain's DNS): retrying each minute only rebuilds what cannot be sent.
    pub fn ses_not_sending(&self) -> bool {
        self.ses_code_in(&["SendingPaused", "AccountSuspended", "MailFromDomainNotVerified"])
    }

    fn ses_code_in(&self, codes: &[&str]) -> bool {
        matches!(self, Error::Transient { service: "sesv2", message, .. } if codes.iter().any(|c| message.starts_with(c)))
    }

    pub fn local(what: &'static str, e: impl std::fmt::Display) -> Self {
        Error::Local { what, message: e.to_string() }
    }

    pub fn corrupt(what: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Error::Corrupt { what: what.into(), message: message.to_string() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_and_local_errors_are_retryable() {
        assert!(Error::Transient { service: "s3", operation: "GetObject", message: String::new() }.is_retryable());
        assert!(Error::Local { what: "scratch", message: String::new() }.is_retryable());
        assert!(!Error::Config("X".into()).is_retryable());
        assert!(!Error::Aws { service: "s3", operation: "GetObject", message: String::new() }.is_retryable());
    }
}
