//! Fault injection for tests: an HTTP client wrapping the SDK's own that answers chosen requests
//! with real AWS error responses instead of sending them. The SDK's retry logic and the handlers'
//! idempotency then meet the faults exactly as they would meet AWS's.

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::{Response, StatusCode};
use aws_smithy_types::body::SdkBody;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// What to break. Counters are deterministic (every Nth call), so runs are repeatable.
#[derive(Debug, Default)]
pub struct Faults {
    /// Throttle one DynamoDB call in this many (0 = never).
    pub dynamodb_throttle_every: u64,
    /// Fail one S3 PUT (object write or copy) in this many with 503 SlowDown (0 = never).
    pub s3_put_fail_every: u64,
    /// After this many DynamoDB writes, fail the next `burst_len` ones with 500 (a burst longer than
    /// the SDK's retries makes the invocation fail halfway, as a crash would). 0 = never.
    pub burst_after_writes: u64,
    pub burst_len: u64,
    /// Send one DynamoDB write in this many, let it land, then answer 500 as if the response were
    /// lost on the way back: the SDK retries a write that already happened (0 = never).
    pub lose_response_every: u64,
    /// Fail this many SES v2 SendEmail requests with 500 (then let them through).
    pub ses_fail: AtomicU64,
    /// Refuse SES v2 sends to this address as AWS refuses an address it will not deliver to
    /// (400 BadRequestException, not retryable), every time.
    pub ses_reject_recipient: Mutex<Option<String>>,
    /// Fail DynamoDB requests whose body contains this text (e.g. the job completion update), `fail_matching_times` times.
    pub fail_matching: Mutex<Option<(String, u64)>>,
    /// Refuse DynamoDB writes whose body contains this text as AWS refuses one that meets another
    /// transaction on its item, this many times: a transaction is cancelled
    /// (TransactionCanceledException, reason TransactionConflict on its last item), a plain write
    /// gets TransactionConflictException.
    pub conflict_matching: Mutex<Option<(String, u64)>>,
    pub enabled: AtomicBool,
    // Counters (public so plans can be written with struct update syntax).
    pub calls: AtomicU64,
    pub writes: AtomicU64,
    pub puts: AtomicU64,
    pub lost: AtomicU64,
    /// Faults injected, for the report.
    pub injected: AtomicU64,
}

impl Faults {
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }
}

pub fn client(inner: SharedHttpClient, faults: Arc<Faults>) -> SharedHttpClient {
    SharedHttpClient::new(FaultyClient { inner, faults })
}

#[derive(Debug)]
struct FaultyClient {
    inner: SharedHttpClient,
    faults: Arc<Faults>,
}

impl HttpClient for FaultyClient {
    fn http_connector(&self, settings: &HttpConnectorSettings, components: &RuntimeComponents) -> SharedHttpConnector {
        SharedHttpConnector::new(FaultyConnector { inner: self.inner.http_connector(settings, components), faults: self.faults.clone() })
    }
}

#[derive(Debug)]
struct FaultyConnector {
    inner: SharedHttpConnector,
    faults: Arc<Faults>,
}

fn respond(status: u16, content_type: &str, body: &str) -> HttpConnectorFuture {
    let mut resp = Response::new(StatusCode::try_from(status).expect("status"), SdkBody::from(body.to_string()));
    resp.headers_mut().insert("content-type", content_type.to_string());
    HttpConnectorFuture::ready(Ok(resp))
}

/// AWS's answer to a transaction that met another one on its last item: one reason per item.
fn transaction_conflict(request: &str) -> String {
    let items = serde_json::from_str::<serde_json::Value>(request)
        .ok()
        .and_then(|v| v["TransactItems"].as_array().map(Vec::len))
        .unwrap_or(1)
        .max(1);
    let mut reasons = vec![serde_json::json!({"Code": "None"}); items - 1];
    reasons.push(serde_json::json!({"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"}));
    serde_json::json!({
        "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
        "Message": "Transaction cancelled, please refer cancellation reasons for specific reasons",
        "CancellationReasons": reasons,
    })
    .to_string()
}

impl HttpConnector for FaultyConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let f = &self.faults;
        if !f.enabled.load(Ordering::Relaxed) {
            return self.inner.call(request);
        }
        let target = request.headers().get("x-amz-target").unwrap_or_default().to_string();
        if let Some(op) = target.strip_prefix("DynamoDB_20120810.") {
            let n = f.calls.fetch_add(1, Ordering::Relaxed) + 1;
            let body = request.body().bytes().map(|b| String::from_utf8_lossy(b).to_string()).unwrap_or_default();
            let mut matching = f.fail_matching.lock().expect("lock");
            if let Some((needle, left)) = matching.as_mut()
                && *left > 0
                && body.contains(needle.as_str())
            {
                *left -= 1;
                f.injected.fetch_add(1, Ordering::Relaxed);
                return respond(
                    500,
                    "application/x-amz-json-1.0",
                    r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"injected"}"#,
                );
            }
            drop(matching);
            let mut conflicting = f.conflict_matching.lock().expect("lock");
            if let Some((needle, left)) = conflicting.as_mut()
                && *left > 0
                && matches!(op, "TransactWriteItems" | "PutItem" | "UpdateItem" | "DeleteItem")
                && body.contains(needle.as_str())
            {
                *left -= 1;
                f.injected.fetch_add(1, Ordering::Relaxed);
                let answer = match op {
                    "TransactWriteItems" => transaction_conflict(&body),
                    _ => r#"{"__type":"com.amazonaws.dynamodb.v20120810#TransactionConflictException","message":"Transaction is ongoing for the item"}"#.to_string(),
                };
                return respond(400, "application/x-amz-json-1.0", &answer);
            }
            drop(conflicting);
            if matches!(op, "PutItem" | "UpdateItem" | "DeleteItem" | "TransactWriteItems") && f.burst_after_writes > 0 {
                let w = f.writes.fetch_add(1, Ordering::Relaxed) + 1;
                if w > f.burst_after_writes && w <= f.burst_after_writes + f.burst_len {
                    f.injected.fetch_add(1, Ordering::Relaxed);
                    return respond(
                        500,
                        "application/x-amz-json-1.0",
                        r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"injected crash"}"#,
                    );
                }
            }
            if matches!(op, "PutItem" | "UpdateItem" | "DeleteItem" | "TransactWriteItems")
                && f.lose_response_every > 0
                && f.lost.fetch_add(1, Ordering::Relaxed) % f.lose_response_every == f.lose_response_every - 1
            {
                f.injected.fetch_add(1, Ordering::Relaxed);
                let sent = self.inner.call(request);
                return HttpConnectorFuture::new(async move {
                    let _ = sent.await;
                    respond(
                        500,
                        "application/x-amz-json-1.0",
                        r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"injected: response lost"}"#,
                    )
                    .await
                });
            }
            if f.dynamodb_throttle_every > 0 && n.is_multiple_of(f.dynamodb_throttle_every) {
                f.injected.fetch_add(1, Ordering::Relaxed);
                return respond(
                    400,
                    "application/x-amz-json-1.0",
                    r#"{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"Rate of requests exceeds the allowed throughput."}"#,
                );
            }
        } else if request.uri().contains("/v2/email/outbound-emails")
            && f.ses_reject_recipient.lock().expect("lock").as_ref().is_some_and(|to| {
                let body = request.body().bytes().map(|b| String::from_utf8_lossy(b).to_string()).unwrap_or_default();
                body.contains(&format!("\"{to}\""))
            })
        {
            f.injected.fetch_add(1, Ordering::Relaxed);
            return respond(400, "application/json", r#"{"__type":"BadRequestException","message":"Illegal address"}"#);
        } else if request.uri().contains("/v2/email/outbound-emails")
            && f.ses_fail.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok()
        {
            f.injected.fetch_add(1, Ordering::Relaxed);
            return respond(500, "application/json", r#"{"__type":"InternalFailure","message":"injected"}"#);
        } else if request.method() == "PUT" && f.s3_put_fail_every > 0 {
            let n = f.puts.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_multiple_of(f.s3_put_fail_every) {
                f.injected.fetch_add(1, Ordering::Relaxed);
                return respond(503, "application/xml", "<Error><Code>SlowDown</Code><Message>injected</Message></Error>");
            }
        }
        self.inner.call(request)
    }
}
