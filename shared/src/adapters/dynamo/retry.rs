//! A plain write that meets a transaction on its item is refused with
//! `TransactionConflictException`: nothing was written, and a moment later it may be. The SDK
//! retries throttling by itself but not this; items that transactions write (licence pools,
//! invites, identity claims) are also written plainly, and those writes meet them. Retried here,
//! with the SDK's backoff and attempts, instead of failing the whole invocation.

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::operation::{delete_item::DeleteItemError, put_item::PutItemError, update_item::UpdateItemError};
use aws_smithy_runtime_api::client::interceptors::context::InterceptorContext;
use aws_smithy_runtime_api::client::retries::classifiers::{ClassifyRetry, RetryAction};

/// The DynamoDB client configuration every stage uses: the SDK's, plus conflicts retried.
pub fn configure(builder: aws_sdk_dynamodb::config::Builder) -> aws_sdk_dynamodb::config::Builder {
    builder.retry_classifier(ConflictRetry)
}

#[derive(Debug)]
struct ConflictRetry;

impl ClassifyRetry for ConflictRetry {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        let Some(Err(error)) = ctx.output_or_error() else { return RetryAction::NoActionIndicated };
        let Some(error) = error.as_operation_error() else { return RetryAction::NoActionIndicated };
        let code = error
            .downcast_ref::<UpdateItemError>()
            .and_then(|e| e.code())
            .or_else(|| error.downcast_ref::<PutItemError>().and_then(|e| e.code()))
            .or_else(|| error.downcast_ref::<DeleteItemError>().and_then(|e| e.code()));
        if code == Some("TransactionConflictException") { RetryAction::transient_error() } else { RetryAction::NoActionIndicated }
    }

    fn name(&self) -> &'static str {
        "TransactionConflictException on a plain write"
    }
}
