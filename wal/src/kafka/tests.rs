//! The Kafka WAL against a real broker. The broker's address comes from
//! `STRATA_KAFKA_BROKERS` (`scripts/test-services env` sets it); without it
//! these tests fail, they do not skip.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;

use super::*;
use crate::conformance::{self, read_all, WalFactory};

pub(crate) fn brokers() -> String {
    std::env::var("STRATA_KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!("STRATA_KAFKA_BROKERS is not set: start a broker with `scripts/test-services start` and `eval \"$(scripts/test-services env)\"`")
    })
}

fn unique_topic(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("strata-test-{name}-{}-{nanos}", std::process::id())
}

struct Factory(KafkaWalOptions);

#[async_trait]
impl WalFactory for Factory {
    async fn open(&self) -> Arc<dyn Wal> {
        Arc::new(
            KafkaWal::open(self.0.clone())
                .await
                .expect("open Kafka WAL"),
        )
    }
}

fn options(topic: &str) -> KafkaWalOptions {
    let mut o = KafkaWalOptions::new(brokers(), unique_topic(topic));
    // Small chunks, so the 4 MiB record of the suite is split and rejoined.
    o.max_message_bytes = 256 * 1024;
    o.produce_timeout = Duration::from_secs(20);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_wal_passes_conformance_suite() {
    conformance::run_all(&Factory(options("conformance"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_chunk_groups_are_dropped() {
    let opts = options("torn");
    let wal = KafkaWal::open(opts.clone()).await.unwrap();
    // A record whose second chunk never arrives, as after a crash mid-append.
    wal.send_chunk(Epoch(1), b"first half", 0, 2)
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    let good = wal
        .append(Epoch(1), vec![Bytes::from_static(b"whole")])
        .await
        .unwrap();
    let entries = read_all(&wal, WalOffset(0)).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].offset, good.offsets[0]);
    assert_eq!(entries[0].payload, Bytes::from_static(b"whole"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_a_retryable_error() {
    let mut opts = KafkaWalOptions::new("127.0.0.1:1", unique_topic("down"));
    opts.request_timeout = Duration::from_millis(500);
    opts.extra
        .insert("socket.connection.setup.timeout.ms".into(), "1000".into());
    let err = KafkaWal::open(opts).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
}

#[test]
fn in_doubt_errors_are_retryable() {
    assert!(kafka_retryable(&KafkaError::MessageProduction(
        RDKafkaErrorCode::Unknown
    )));
    assert!(kafka_retryable(&KafkaError::MessageProduction(
        RDKafkaErrorCode::MessageTimedOut
    )));
    assert!(!kafka_retryable(&KafkaError::MessageProduction(
        RDKafkaErrorCode::MessageSizeTooLarge
    )));
}
