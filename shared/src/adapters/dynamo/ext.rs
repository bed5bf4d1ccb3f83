//! Attribute helpers: typed reads, values, update expressions, and the SDK errors mapped to ours.

use crate::error::Error;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::AttributeValue as Av;
use std::collections::HashMap;

pub type Item = HashMap<String, Av>;

pub(super) fn s(v: impl Into<String>) -> Av {
    Av::S(v.into())
}
pub(super) fn n(v: impl ToString) -> Av {
    Av::N(v.to_string())
}

/// Typed reads from an item.
pub(super) trait ItemExt {
    fn str(&self, k: &str) -> Option<&str>;
    fn num<T: std::str::FromStr>(&self, k: &str) -> Option<T>;
}
impl ItemExt for Item {
    fn str(&self, k: &str) -> Option<&str> {
        self.get(k).and_then(|v| v.as_s().ok()).map(String::as_str)
    }
    fn num<T: std::str::FromStr>(&self, k: &str) -> Option<T> {
        self.get(k).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok())
    }
}

pub(super) fn ddb_err<E>(
    op: &'static str,
) -> impl FnOnce(aws_sdk_dynamodb::error::SdkError<E, aws_smithy_runtime_api::http::Response>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    move |e| crate::adapters::sdk_error("dynamodb", op, e)
}

pub(super) fn is_condition_failed<E: ProvideErrorMetadata, R>(e: &aws_sdk_dynamodb::error::SdkError<E, R>) -> bool {
    e.code() == Some("ConditionalCheckFailedException")
}

/// SET / ADD / DELETE / REMOVE clauses with placeholder names, so any attribute name is safe.
#[derive(Default)]
pub(super) struct UpdateExpr {
    pub(super) set: Vec<String>,
    pub(super) add: Vec<String>,
    pub(super) delete: Vec<String>,
    pub(super) remove: Vec<String>,
    pub(super) names: HashMap<String, String>,
    pub(super) values: HashMap<String, Av>,
}

impl UpdateExpr {
    pub(super) fn name(&mut self, attr: &str) -> String {
        let key = format!("#n{}", self.names.len());
        self.names.insert(key.clone(), attr.to_string());
        key
    }
    pub(super) fn value(&mut self, v: Av) -> String {
        let key = format!(":v{}", self.values.len());
        self.values.insert(key.clone(), v);
        key
    }
    pub(super) fn set(&mut self, attr: &str, v: Av) -> &mut Self {
        let (n, v) = (self.name(attr), self.value(v));
        self.set.push(format!("{n} = {v}"));
        self
    }
    pub(super) fn set_if_missing(&mut self, attr: &str, v: Av) -> &mut Self {
        let (n, v) = (self.name(attr), self.value(v));
        self.set.push(format!("{n} = if_not_exists({n}, {v})"));
        self
    }
    pub(super) fn add(&mut self, attr: &str, v: Av) -> &mut Self {
        let (n, v) = (self.name(attr), self.value(v));
        self.add.push(format!("{n} {v}"));
        self
    }
    pub(super) fn delete(&mut self, attr: &str, v: Av) -> &mut Self {
        let (n, v) = (self.name(attr), self.value(v));
        self.delete.push(format!("{n} {v}"));
        self
    }
    pub(super) fn remove(&mut self, attr: &str) -> &mut Self {
        let n = self.name(attr);
        self.remove.push(n);
        self
    }
    pub(super) fn expression(&self) -> String {
        let mut parts = Vec::new();
        for (kw, list) in [("SET", &self.set), ("ADD", &self.add), ("DELETE", &self.delete), ("REMOVE", &self.remove)] {
            if !list.is_empty() {
                parts.push(format!("{kw} {}", list.join(", ")));
            }
        }
        parts.join(" ")
    }
}

/// One `BatchGetItem` of up to 100 `keys` (consistent unless `read` says otherwise), asked again
/// (with a growing pause) for the keys DynamoDB leaves unprocessed; `each` takes every item found.
pub(super) async fn batch_get(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    keys: Vec<Item>,
    read: crate::ports::Consistency,
    mut each: impl FnMut(Item) -> Result<(), Error>,
) -> Result<(), Error> {
    use aws_sdk_dynamodb::types::KeysAndAttributes;
    let consistent = read == crate::ports::Consistency::Strong;
    let mut pending = Some(KeysAndAttributes::builder().set_keys(Some(keys)).consistent_read(consistent).build().map_err(txn_err)?);
    let mut round = 0u64;
    while let Some(request) = pending.take() {
        if round > 100 {
            return Err(Error::Transient { service: "dynamodb", operation: "BatchGetItem", message: "keys left unprocessed".into() });
        }
        if round > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20 * round.min(50))).await;
        }
        round += 1;
        let out = client.batch_get_item().request_items(table, request).send().await.map_err(ddb_err("BatchGetItem"))?;
        for item in out.responses.unwrap_or_default().remove(table).unwrap_or_default() {
            each(item)?;
        }
        pending = out.unprocessed_keys.unwrap_or_default().remove(table).filter(|k| !k.keys.is_empty());
    }
    Ok(())
}

pub(super) fn txn_err(e: aws_sdk_dynamodb::error::BuildError) -> Error {
    Error::Build { what: "transaction", message: e.to_string() }
}

pub(super) type TxnError = aws_sdk_dynamodb::error::SdkError<
    aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError,
    aws_sdk_dynamodb::config::http::HttpResponse,
>;

/// A transaction DynamoDB cancelled for contention, not for a condition: another transaction on
/// one of its items (a licence pool is written by every chunk at once), throughput, or the
/// service's own trouble. Sent again, it may succeed; the SDK does not retry it by itself. A
/// condition or a validation error in any item is an answer, not contention.
pub(super) fn cancelled_for_contention(e: &TxnError) -> bool {
    cancellation_codes(e).is_some_and(|codes| contention_only(&codes))
}

/// Cancellation reasons (one per item, "None" for an item that was not the cause) that name only
/// contention.
fn contention_only(codes: &[String]) -> bool {
    let contention = |c: &str| {
        matches!(
            c,
            "TransactionConflict" | "ThrottlingError" | "ProvisionedThroughputExceeded" | "RequestLimitExceeded" | "InternalServerError"
        )
    };
    codes.iter().all(|c| c == "None" || contention(c)) && codes.iter().any(|c| contention(c))
}

/// How many times a transaction cancelled for contention is sent before the invocation gives up
/// (retryably), and the pause before attempt `attempt + 1`: growing, so that a crowd of chunks
/// finishing at once spreads out (about 15 s in all).
pub(super) const CONTENDED_ATTEMPTS: u64 = 100;
pub(super) async fn contention_pause(attempt: u64) {
    tokio::time::sleep(std::time::Duration::from_millis(5 + attempt * 3)).await;
}

/// Cancellation reasons of a failed transaction, when it was cancelled.
pub(super) fn cancellation_codes(e: &TxnError) -> Option<Vec<String>> {
    cancellation(e).map(|r| r.into_iter().map(|(code, _)| code).collect())
}

/// Cancellation reasons with the old image each item returned (when it asked for one).
pub(super) fn cancellation(e: &TxnError) -> Option<Vec<(String, Option<Item>)>> {
    match e.as_service_error()? {
        aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(tc) => {
            Some(tc.cancellation_reasons().iter().map(|r| (r.code().unwrap_or("None").to_string(), r.item.clone())).collect())
        }
        _ => None,
    }
}

pub(super) fn build_err(e: aws_sdk_dynamodb::error::BuildError) -> Error {
    Error::Build { what: "table definition", message: e.to_string() }
}

/// The key attributes of a directory item.
pub(super) fn key_item(key: &super::Key) -> Item {
    Item::from([("pk".to_string(), s(&key.0)), ("sk".to_string(), s(&key.1))])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(c: &[&str]) -> Vec<String> {
        c.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn only_a_cancellation_for_contention_alone_is_sent_again() {
        assert!(contention_only(&codes(&["None", "TransactionConflict"])));
        assert!(contention_only(&codes(&["ThrottlingError", "None"])));
        assert!(contention_only(&codes(&["ProvisionedThroughputExceeded"])));
        // A condition answered: the caller decides from it, whatever else collided.
        assert!(!contention_only(&codes(&["ConditionalCheckFailed", "TransactionConflict"])));
        assert!(!contention_only(&codes(&["None", "ConditionalCheckFailed"])));
        // Sent again, a malformed item fails again.
        assert!(!contention_only(&codes(&["ValidationError", "None"])));
        assert!(!contention_only(&codes(&["None", "None"])));
        assert!(!contention_only(&[]));
    }
}
