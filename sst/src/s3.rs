//! Opening an S3-compatible object store.
//!
//! Settings come from [`S3Options`]; what is not set there falls back to
//! the standard AWS environment variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL`) and `STRATA_S3_BUCKET`. Path-style addressing is the
//! default, which MinIO, s3s and most S3-compatible stores need; AWS accepts
//! it too. Requests retry with backoff and time out.

use std::{sync::Arc, time::Duration};

use object_store::{
    aws::AmazonS3Builder, prefix::PrefixStore, ClientOptions, ObjectStore, RetryConfig,
};

/// Where and how to reach the bucket.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    pub bucket: Option<String>,
    /// A key prefix under which everything is stored.
    pub prefix: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Virtual-hosted-style URLs (`bucket.host`) instead of path style.
    pub virtual_hosted_style: bool,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_retries: usize,
    pub retry_timeout: Duration,
}

impl S3Options {
    pub fn with_defaults() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_retries: 10,
            retry_timeout: Duration::from_secs(120),
            ..Default::default()
        }
    }
}

fn env(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

/// Opens the store, or says which setting is missing or wrong.
pub fn open(opts: &S3Options) -> Result<Arc<dyn ObjectStore>, String> {
    let bucket = opts
        .bucket
        .clone()
        .or_else(|| env(&["STRATA_S3_BUCKET"]))
        .ok_or("no S3 bucket: set object_store.bucket or STRATA_S3_BUCKET")?;
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(&bucket);
    let endpoint = opts
        .endpoint
        .clone()
        .or_else(|| env(&["AWS_ENDPOINT_URL", "AWS_ENDPOINT"]));
    if let Some(endpoint) = &endpoint {
        builder = builder
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"));
    }
    let region = opts
        .region
        .clone()
        .or_else(|| env(&["AWS_REGION", "AWS_DEFAULT_REGION"]))
        .unwrap_or_else(|| "us-east-1".to_string());
    builder = builder
        .with_region(region)
        .with_virtual_hosted_style_request(opts.virtual_hosted_style)
        .with_client_options(
            ClientOptions::new()
                .with_timeout(opts.request_timeout)
                .with_connect_timeout(opts.connect_timeout)
                .with_allow_http(
                    endpoint
                        .as_deref()
                        .is_some_and(|e| e.starts_with("http://")),
                ),
        )
        .with_retry(RetryConfig {
            max_retries: opts.max_retries,
            retry_timeout: opts.retry_timeout,
            ..Default::default()
        });
    if let Some(k) = &opts.access_key_id {
        builder = builder.with_access_key_id(k);
    }
    if let Some(s) = &opts.secret_access_key {
        builder = builder.with_secret_access_key(s);
    }
    let store = builder
        .build()
        .map_err(|e| format!("S3 configuration: {e}"))?;
    Ok(match opts.prefix.as_deref().filter(|p| !p.is_empty()) {
        Some(prefix) => Arc::new(PrefixStore::new(store, prefix)),
        None => Arc::new(store),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// The conformance suite against a real S3-compatible server, reached
    /// through the environment `scripts/test-services env` prints.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn s3_passes_object_store_conformance() {
        if std::env::var("AWS_ENDPOINT_URL").is_err() {
            panic!("AWS_ENDPOINT_URL is not set: start an S3 server with `scripts/test-services start` and `eval \"$(scripts/test-services env)\"`");
        }
        let store = open(&S3Options::with_defaults()).unwrap();
        let prefix = format!(
            "conformance-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        crate::store_conformance::run_all(store, &prefix).await;
    }
}
