//! The local stand-in for AWS wiring: create the bucket, tables, queue and SES identity, and run
//! the bucket's notifications (delivered to SQS) through the same handlers the Lambdas run.

use crate::adapters::dynamo;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::event;
use crate::services::Services;
use aws_config::SdkConfig;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::types::{
    Event, FilterRule, FilterRuleName, NotificationConfiguration, NotificationConfigurationFilter, QueueConfiguration, S3KeyFilter,
};
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

pub const LOCAL_ENDPOINT: &str = "http://127.0.0.1:4566";
pub const LOCAL_DYNAMODB_ENDPOINT: &str = "http://127.0.0.1:8000";

/// Clients for the local stack: the standard `AWS_ENDPOINT_URL*`, region and credential
/// variables win; where they are unset, the fixed local endpoints and test credentials apply.
pub struct LocalAws {
    pub sdk: SdkConfig,
    pub s3: aws_sdk_s3::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub ses: aws_sdk_sesv2::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub events: aws_sdk_eventbridge::Client,
}

impl LocalAws {
    pub async fn connect(config: &Config) -> Self {
        Self::connect_with(config, None).await
    }

    /// As `connect`, with an SDK interceptor on every client (tests record the calls each
    /// handler makes with it).
    pub async fn connect_with(
        config: &Config,
        interceptor: Option<aws_smithy_runtime_api::client::interceptors::SharedInterceptor>,
    ) -> Self {
        Self::connect_custom(config, interceptor, None).await
    }

    /// As `connect_with`, and with the HTTP client wrapped (tests inject faults there).
    pub async fn connect_custom(
        config: &Config,
        interceptor: Option<aws_smithy_runtime_api::client::interceptors::SharedInterceptor>,
        wrap_http: Option<
            &dyn Fn(aws_smithy_runtime_api::client::http::SharedHttpClient) -> aws_smithy_runtime_api::client::http::SharedHttpClient,
        >,
    ) -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(config.sdk_max_attempts));
        let overridden = env("AWS_ENDPOINT_URL").is_none();
        if overridden {
            loader = loader.endpoint_url(LOCAL_ENDPOINT);
        }
        if env("AWS_REGION").is_none() && env("AWS_DEFAULT_REGION").is_none() {
            loader = loader.region(aws_config::Region::new("us-east-1"));
        }
        if env("AWS_ACCESS_KEY_ID").is_none() && env("AWS_PROFILE").is_none() {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new("test", "test", None, None, "rosterdrop-local"));
        }
        let sdk = loader.load().await;
        let mut ddb = crate::adapters::dynamo::configure(aws_sdk_dynamodb::config::Builder::from(&sdk)).interceptor(KeepAlive);
        if overridden && env("AWS_ENDPOINT_URL_DYNAMODB").is_none() {
            ddb = ddb.endpoint_url(LOCAL_DYNAMODB_ENDPOINT);
        }
        let mut s3 = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(config.s3_force_path_style).interceptor(KeepAlive);
        let mut ses = aws_sdk_sesv2::config::Builder::from(&sdk).interceptor(KeepAlive);
        let mut events = aws_sdk_eventbridge::config::Builder::from(&sdk).interceptor(KeepAlive);
        if let Some(wrap) = wrap_http {
            // The loader leaves the client unset when it is the default; the wrapper then picks one.
            let wrapped = wrap(sdk.http_client().unwrap_or_else(|| aws_smithy_runtime_api::client::http::SharedHttpClient::new(NoClient)));
            ddb = ddb.http_client(wrapped.clone());
            s3 = s3.http_client(wrapped.clone());
            events = events.http_client(wrapped.clone());
            ses = ses.http_client(wrapped);
        }
        if let Some(i) = interceptor {
            ddb.push_interceptor(i.clone());
            s3.push_interceptor(i.clone());
            events.push_interceptor(i.clone());
            ses.push_interceptor(i);
        }
        LocalAws {
            s3: aws_sdk_s3::Client::from_conf(s3.build()),
            dynamodb: aws_sdk_dynamodb::Client::from_conf(ddb.build()),
            ses: aws_sdk_sesv2::Client::from_conf(ses.build()),
            sqs: aws_sdk_sqs::Client::from_conf(aws_sdk_sqs::config::Builder::from(&sdk).interceptor(KeepAlive).build()),
            events: aws_sdk_eventbridge::Client::from_conf(events.build()),
            sdk,
        }
    }

    pub fn services(&self, config: Config) -> Services {
        Services::from_clients(config, self.s3.clone(), self.dynamodb.clone(), self.ses.clone(), self.events.clone())
    }
}

/// Asks every request to keep its connection open. LocalStack's gateway answers `Connection:
/// close` to a request that does not (its workaround for Python clients, localstack#6557), so
/// each S3, SQS, SES and EventBridge call opened a connection of its own and LocalStack accepted
/// and set it up again: a fifth of its CPU per S3 GET and PUT, measured. AWS keeps connections
/// open, as the Lambdas' clients expect; asked, LocalStack does too. (Not signed: a hop-by-hop
/// header, added after signing.)
#[derive(Debug)]
pub struct KeepAlive;

impl aws_smithy_runtime_api::client::interceptors::Intercept for KeepAlive {
    fn name(&self) -> &'static str {
        "keep-alive"
    }

    fn modify_before_transmit(
        &self,
        ctx: &mut aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut<'_>,
        _: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> std::result::Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        ctx.request_mut().headers_mut().insert("connection", "keep-alive");
        Ok(())
    }
}

/// Stand-in passed to an HTTP wrapper when the SDK config names no client (the wrapper must
/// provide its own; this one is never called).
#[derive(Debug)]
struct NoClient;

impl aws_smithy_runtime_api::client::http::HttpClient for NoClient {
    fn http_connector(
        &self,
        _: &aws_smithy_runtime_api::client::http::HttpConnectorSettings,
        _: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
    ) -> aws_smithy_runtime_api::client::http::SharedHttpConnector {
        aws_smithy_runtime_api::client::http::SharedHttpConnector::new(NoConnector)
    }
}

#[derive(Debug)]
struct NoConnector;

impl aws_smithy_runtime_api::client::http::HttpConnector for NoConnector {
    fn call(
        &self,
        _: aws_smithy_runtime_api::client::orchestrator::HttpRequest,
    ) -> aws_smithy_runtime_api::client::http::HttpConnectorFuture {
        aws_smithy_runtime_api::client::http::HttpConnectorFuture::ready(Err(
            aws_smithy_runtime_api::client::result::ConnectorError::other("no HTTP client configured".into(), None),
        ))
    }
}

pub const QUEUE: &str = "rosterdrop-local-events";
pub const DEAD_LETTER_QUEUE: &str = "rosterdrop-local-dead-letter";
/// Like Lambda's asynchronous invocation: the first attempt plus two retries.
pub const MAX_ATTEMPTS: u32 = 3;

/// Everything the pipeline needs, created if missing. Safe to run any number of times.
pub async fn setup(config: &Config, aws: &LocalAws, queue: &str) -> Result<String> {
    let s3 = &aws.s3;
    match s3.create_bucket().bucket(&config.bucket).send().await {
        Ok(_) => {}
        Err(e) if matches!(e.code(), Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")) => {}
        Err(e) => return Err(crate::adapters::sdk_error("s3", "CreateBucket", e)),
    }
    // Versioned like the deployed bucket: every upload has its own version id, which jobs rest on.
    s3.put_bucket_versioning()
        .bucket(&config.bucket)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder().status(aws_sdk_s3::types::BucketVersioningStatus::Enabled).build(),
        )
        .send()
        .await
        .map_err(|e| crate::adapters::sdk_error("s3", "PutBucketVersioning", e))?;
    dynamo::ensure_tables(&aws.dynamodb, &config.directory_table, &config.jobs_table).await?;

    let sqs = &aws.sqs;
    let queue_url = create_queue(sqs, queue).await?;
    create_queue(sqs, &format!("{queue}-dlq")).await?;
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| crate::adapters::sdk_error("sqs", "GetQueueAttributes", e))?
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .ok_or_else(|| Error::Config("queue has no ARN".into()))?;
    // One notification per stage prefix, as infra/ wires one per function in AWS.
    let mut notif = NotificationConfiguration::builder();
    for prefix in [crate::keys::INCOMING, crate::keys::CHUNKS, crate::keys::DONE] {
        let rule = FilterRule::builder().name(FilterRuleName::Prefix).value(prefix).build();
        notif = notif.queue_configurations(
            QueueConfiguration::builder()
                .id(format!("rosterdrop-{}", prefix.trim_end_matches('/')))
                .queue_arn(&arn)
                .events(Event::from("s3:ObjectCreated:*"))
                .filter(NotificationConfigurationFilter::builder().key(S3KeyFilter::builder().filter_rules(rule).build()).build())
                .build()
                .map_err(|e| Error::Build { what: "notification", message: e.to_string() })?,
        );
    }
    s3.put_bucket_notification_configuration()
        .bucket(&config.bucket)
        .notification_configuration(notif.build())
        .send()
        .await
        .map_err(|e| crate::adapters::sdk_error("s3", "PutBucketNotificationConfiguration", e))?;

    match aws.ses.create_email_identity().email_identity(&config.default_sender).send().await {
        Ok(_) => {}
        Err(e) if e.code() == Some("AlreadyExistsException") => {}
        Err(e) => return Err(crate::adapters::sdk_error("sesv2", "CreateEmailIdentity", e)),
    }
    info!(bucket = %config.bucket, queue = %queue_url, "local resources ready");
    Ok(queue_url)
}

async fn create_queue(sqs: &aws_sdk_sqs::Client, name: &str) -> Result<String> {
    let out = sqs
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::VisibilityTimeout, "60")
        .send()
        .await
        .map_err(|e| crate::adapters::sdk_error("sqs", "CreateQueue", e))?;
    out.queue_url.ok_or_else(|| Error::Config(format!("queue {name} has no URL")))
}

/// Receive bucket events from SQS and run them through the handlers, several at once (like
/// concurrent Lambda invocations). A failed event is retried after a short delay, up to
/// `MAX_ATTEMPTS`, then moved to the dead-letter queue. Runs until `stop` resolves.
pub async fn run(
    svc: Services,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    concurrency: usize,
    stop: impl std::future::Future<Output = ()>,
) {
    let svc = Arc::new(svc);
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let dlq_url = format!("{queue_url}-dlq");
    tokio::pin!(stop);
    // What EventBridge's one-minute schedule runs in AWS (invites, unsent emails, stuck jobs,
    // scheduled files, expired holds), every couple of seconds here.
    let mut sweeper: Option<tokio::task::JoinHandle<()>> = None;
    let mut last_sweep = std::time::Instant::now() - Duration::from_secs(60);
    loop {
        if last_sweep.elapsed() >= Duration::from_secs(2) && sweeper.as_ref().is_none_or(|h| h.is_finished()) {
            last_sweep = std::time::Instant::now();
            let svc = svc.clone();
            // The schedule's own tasks, each failure logged by them and retried at the next run
            // (a part of them only, a file dropped in scheduled/ stayed SCHEDULED here).
            sweeper = Some(tokio::spawn(async move {
                crate::monitor::tasks(&svc, chrono::Utc::now(), false).await;
            }));
        }
        let receive = sqs
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send();
        let out = tokio::select! {
            _ = &mut stop => break,
            out = receive => out,
        };
        let messages = match out {
            Ok(o) => o.messages.unwrap_or_default(),
            Err(e) => {
                warn!(error = %aws_smithy_types::error::display::DisplayErrorContext(&e), "receive failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        for m in messages {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let (svc, sqs, queue_url, dlq_url) = (svc.clone(), sqs.clone(), queue_url.clone(), dlq_url.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let body = m.body.clone().unwrap_or_default();
                let attempts: u32 = m
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                let result = match event::parse(&body) {
                    None => Ok(()),
                    Some(ev) => {
                        let mut r = Ok(());
                        for obj in event::objects(&ev) {
                            if let Err(e) = crate::route::dispatch(&svc, &obj).await {
                                error!(key = %obj.key, attempts, retryable = e.is_retryable(), error = %e, "handler failed");
                                r = Err(e);
                                break;
                            }
                        }
                        r
                    }
                };
                let receipt = m.receipt_handle.unwrap_or_default();
                if result.is_err() && attempts < MAX_ATTEMPTS {
                    let _ =
                        sqs.change_message_visibility().queue_url(&queue_url).receipt_handle(&receipt).visibility_timeout(1).send().await;
                    return;
                }
                if result.is_err() {
                    let _ = sqs.send_message().queue_url(&dlq_url).message_body(&body).send().await;
                }
                let _ = sqs.delete_message().queue_url(&queue_url).receipt_handle(&receipt).send().await;
            });
        }
    }
    // Let in-flight events and the sweep finish.
    let _ = permits.acquire_many(concurrency.max(1) as u32).await;
    if let Some(h) = sweeper {
        let _ = h.await;
    }
}
