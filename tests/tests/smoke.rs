#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! The local stack works through the real Rust SDK: S3, DynamoDB Local conditional writes, SES v2
//! raw sends read back from LocalStack's mailbox, and unverified senders refused.

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_sesv2::primitives::Blob;
use aws_sdk_sesv2::types::{Destination, EmailContent, RawMessage};
use mail_parser::{MessageParser, MimeHeaders};
use shared::config::Config;
use shared::local::LocalAws;
use tests::{Stack, mail_to};

#[tokio::test]
async fn s3_put_then_get_returns_the_same_bytes() {
    let stack = Stack::start().await;
    let s3 = &stack.aws.s3;
    let body = b"Email,FirstName\nann@x.com,Ann\n".to_vec();
    s3.put_object().bucket(&stack.config.bucket).key("smoke/a.csv").body(ByteStream::from(body.clone())).send().await.expect("put");
    let got =
        s3.get_object().bucket(&stack.config.bucket).key("smoke/a.csv").send().await.expect("get").body.collect().await.expect("body");
    assert_eq!(got.into_bytes().to_vec(), body);
    stack.shutdown().await;
}

/// The store's streamed read (apply reads chunks with it) hands over every byte, in order, and
/// says `None` for a missing key rather than failing.
#[tokio::test]
async fn store_pieces_of_a_large_object_join_to_its_bytes_and_a_missing_key_is_none() {
    use futures::StreamExt;
    let stack = Stack::start().await;
    let body: Vec<u8> = (0..60_000u32).flat_map(|i| format!("{{\"row\":{i},\"email\":\"é{i}@x.com\"}}\n").into_bytes()).collect();
    stack.svc.store.put("smoke/chunk.jsonl", body.clone(), "application/x-ndjson").await.unwrap();
    let mut pieces = stack.svc.store.get_pieces("smoke/chunk.jsonl").await.unwrap().expect("the object");
    let (mut got, mut count) = (Vec::new(), 0);
    assert_eq!(pieces.len, Some(body.len() as u64), "the store says the body's length");
    while let Some(piece) = pieces.stream.next().await {
        got.extend(piece.unwrap());
        count += 1;
    }
    assert_eq!(got.len(), body.len());
    assert!(got == body, "same bytes in the same order");
    assert!(count > 1, "a {} MB body arrives in pieces", body.len() / 1_000_000);
    assert!(stack.svc.store.get_pieces("smoke/missing.jsonl").await.unwrap().is_none());
    stack.shutdown().await;
}

#[tokio::test]
async fn dynamodb_conditional_put_succeeds_once_then_fails_with_conditional_check_failed() {
    let stack = Stack::start().await;
    let ddb = &stack.aws.dynamodb;
    let put = || {
        ddb.put_item()
            .table_name(&stack.config.jobs_table)
            .item("pk", AttributeValue::S("smoke#1".into()))
            .condition_expression("attribute_not_exists(pk)")
            .send()
    };
    put().await.expect("first conditional put succeeds");
    let err = put().await.expect_err("second conditional put must fail");
    let service = err.into_service_error();
    assert!(service.is_conditional_check_failed_exception(), "{service:?}");
    stack.shutdown().await;
}

fn raw_mime(from: &str, to: &str, subject: &str, attachment: &[u8]) -> Vec<u8> {
    mail_builder::MessageBuilder::new()
        .from(from)
        .to(to)
        .subject(subject)
        .text_body("hello")
        .attachment("text/csv", "result.csv", attachment)
        .write_to_vec()
        .expect("mime")
}

#[tokio::test]
async fn sesv2_raw_send_with_attachment_is_readable_from_the_local_mailbox() {
    let config = Config::local();
    let aws = LocalAws::connect(&config).await;
    let sender = "smoke-sender@example.com";
    let _ = aws.ses.create_email_identity().email_identity(sender).send().await;
    let to = format!("smoke-{}@example.com", uuid::Uuid::new_v4().simple());
    let attachment = b"Email,Status\nann@x.com,Success\n";
    let mime = raw_mime(sender, &to, "Smoke: roster result", attachment);
    aws.ses
        .send_email()
        .from_email_address(sender)
        .destination(Destination::builder().to_addresses(&to).build())
        .content(EmailContent::builder().raw(RawMessage::builder().data(Blob::new(mime)).build().expect("raw")).build())
        .send()
        .await
        .expect("send from a verified identity");

    let mails = mail_to(&to);
    assert_eq!(mails.len(), 1, "exactly one message for {to}");
    let msg = MessageParser::default().parse(&mails[0]).expect("MIME parses");
    assert_eq!(msg.subject(), Some("Smoke: roster result"));
    assert_eq!(msg.to().and_then(|a| a.first()).and_then(|a| a.address()), Some(to.as_str()));
    let att = msg.attachments().next().expect("one attachment");
    assert_eq!(att.attachment_name(), Some("result.csv"));
    assert_eq!(att.contents(), attachment);
}

#[tokio::test]
async fn sesv2_send_from_an_unverified_address_is_rejected() {
    let aws = LocalAws::connect(&Config::local()).await;
    let sender = format!("nobody-{}@unverified.example.org", uuid::Uuid::new_v4().simple());
    let mime = raw_mime(&sender, "someone@example.com", "should not send", b"x");
    let err = aws
        .ses
        .send_email()
        .from_email_address(&sender)
        .destination(Destination::builder().to_addresses("someone@example.com").build())
        .content(EmailContent::builder().raw(RawMessage::builder().data(Blob::new(mime)).build().expect("raw")).build())
        .send()
        .await
        .expect_err("unverified sender must be refused");
    let service = err.into_service_error();
    assert!(service.is_message_rejected(), "expected MessageRejected, got {service:?}");
}

/// What each response said of its connection: `Connection` header values, in order.
#[derive(Debug, Default, Clone)]
struct ConnectionHeaders(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl aws_smithy_runtime_api::client::interceptors::Intercept for ConnectionHeaders {
    fn name(&self) -> &'static str {
        "connection-headers"
    }
    fn read_after_transmit(
        &self,
        ctx: &aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextRef<'_>,
        _: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let said = ctx.response().headers().get("connection").unwrap_or("(none)").to_ascii_lowercase();
        self.0.lock().unwrap().push(said);
        Ok(())
    }
}

/// LocalStack closes every connection whose request does not ask to keep it (each call would
/// then connect again, which AWS never makes a client do): the local clients ask, and S3, SES and
/// EventBridge keep their connections open; the SDK's default client, asking nothing, is told to
/// close (the reason `local::KeepAlive` exists: if this changes, it can go).
#[tokio::test]
async fn local_clients_keep_their_connections_to_localstack_open() {
    let config = Config::local();
    let seen = ConnectionHeaders::default();
    let aws =
        LocalAws::connect_with(&config, Some(aws_smithy_runtime_api::client::interceptors::SharedInterceptor::new(seen.clone()))).await;
    aws.s3.list_buckets().send().await.expect("list buckets");
    aws.s3.list_buckets().send().await.expect("list buckets again");
    // Whether the identity existed already or not: an answer either way.
    let _ = aws.ses.create_email_identity().email_identity("smoke-sender@example.com").send().await;
    aws.events.list_event_buses().send().await.expect("list buses");
    let kept = std::mem::take(&mut *seen.0.lock().unwrap());
    assert_eq!(kept.len(), 4, "{kept:?}");
    assert!(kept.iter().all(|c| c != "close"), "a local client was told to close its connection: {kept:?}");

    let plain =
        aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&aws.sdk).force_path_style(true).interceptor(seen.clone()).build());
    plain.list_buckets().send().await.expect("list buckets, asking nothing");
    assert_eq!(*seen.0.lock().unwrap(), ["close"], "LocalStack keeps a connection the request did not ask to keep");
}
