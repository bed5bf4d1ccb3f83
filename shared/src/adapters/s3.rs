use crate::error::{Error, Result};
use crate::ports::ObjectStore;
use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use futures::TryStreamExt;
use std::time::Duration;

pub struct S3Store {
    client: Client,
    bucket: String,
}

impl S3Store {
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        S3Store { client, bucket: bucket.into() }
    }

    async fn put_body(&self, key: &str, body: ByteStream, content_type: &str) -> Result<()> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(body)
            .send()
            .await
            .map_err(|e| crate::adapters::sdk_error("s3", "PutObject", e))?;
        Ok(())
    }
}

fn is_missing(code: Option<&str>) -> bool {
    matches!(code, Some("NoSuchKey" | "NotFound" | "404"))
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self.get_pieces(key).await? {
            Some(pieces) => pieces.stream.try_concat().await.map(Some),
            None => Ok(None),
        }
    }

    async fn get_pieces(&self, key: &str) -> Result<Option<crate::ports::Pieces>> {
        match self.client.get_object().bucket(&self.bucket).key(key).send().await {
            Ok(out) => Ok(Some(crate::ports::Pieces {
                len: out.content_length.and_then(|n| u64::try_from(n).ok()),
                stream: Box::pin(futures::stream::unfold(out.body, |mut body| async move {
                    let piece = body.next().await?;
                    let piece = piece.map(Vec::from).map_err(|e| Error::Transient {
                        service: "s3",
                        operation: "GetObject",
                        message: e.to_string(),
                    });
                    Some((piece, body))
                })),
            })),
            Err(e) if is_missing(e.code()) => Ok(None),
            Err(e) => Err(crate::adapters::sdk_error("s3", "GetObject", e)),
        }
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        match self.client.head_object().bucket(&self.bucket).key(key).send().await {
            Ok(out) => Ok(out.content_length.map(|n| n.max(0) as u64)),
            Err(e) if is_missing(e.code()) || e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(None),
            Err(e) => Err(crate::adapters::sdk_error("s3", "HeadObject", e)),
        }
    }

    async fn download(&self, key: &str, version: Option<&str>, to: &std::path::Path) -> Result<Option<u64>> {
        let request = self.client.get_object().bucket(&self.bucket).key(key).set_version_id(version.map(str::to_string));
        let out = match request.send().await {
            Ok(out) => out,
            Err(e) if is_missing(e.code()) || e.code() == Some("NoSuchVersion") => return Ok(None),
            Err(e) => return Err(crate::adapters::sdk_error("s3", "GetObject", e)),
        };
        let mut file = tokio::fs::File::create(to).await.map_err(|e| Error::local("download", e))?;
        // A body cut off mid-stream is the network's fault: transient, the invocation is retried.
        let copied = tokio::io::copy(&mut out.body.into_async_read(), &mut file).await.map_err(|e| Error::Transient {
            service: "s3",
            operation: "GetObject",
            message: e.to_string(),
        })?;
        tokio::io::AsyncWriteExt::flush(&mut file).await.map_err(|e| Error::local("download", e))?;
        Ok(Some(copied))
    }

    async fn put_file(&self, key: &str, from: &std::path::Path, content_type: &str) -> Result<()> {
        // From a path, not an open file: the SDK re-reads it if the PUT is retried.
        let body = ByteStream::from_path(from).await.map_err(|e| Error::local("upload", e))?;
        self.put_body(key, body, content_type).await
    }

    async fn put(&self, key: &str, body: Vec<u8>, content_type: &str) -> Result<()> {
        self.put_body(key, ByteStream::from(body), content_type).await
    }

    async fn put_if_absent(&self, key: &str, body: Vec<u8>, content_type: &str) -> Result<bool> {
        let res = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .if_none_match("*")
            .body(ByteStream::from(body))
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            // 412: it exists; 409: a concurrent conditional write is winning.
            Err(e) if matches!(e.code(), Some("PreconditionFailed" | "ConditionalRequestConflict")) => Ok(false),
            Err(e) => Err(crate::adapters::sdk_error("s3", "PutObject", e)),
        }
    }

    async fn copy(&self, from: &str, to: &str) -> Result<()> {
        let source = format!("{}/{}", self.bucket, percent_encoding::utf8_percent_encode(from, percent_encoding::NON_ALPHANUMERIC));
        self.client
            .copy_object()
            .bucket(&self.bucket)
            .key(to)
            .copy_source(source)
            .send()
            .await
            .map_err(|e| crate::adapters::sdk_error("s3", "CopyObject", e))?;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut pages = self.client.list_objects_v2().bucket(&self.bucket).prefix(prefix).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| crate::adapters::sdk_error("s3", "ListObjectsV2", e))?;
            keys.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_string)));
        }
        keys.sort();
        Ok(keys)
    }

    async fn presign_get(&self, key: &str, ttl: Duration) -> Result<String> {
        let conf = PresigningConfig::expires_in(ttl).map_err(|e| Error::Config(format!("presign ttl: {e}")))?;
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(conf)
            .await
            .map_err(|e| crate::adapters::sdk_error("s3", "GetObject(presign)", e))?;
        Ok(req.uri().to_string())
    }
}
