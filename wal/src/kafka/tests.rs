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
async fn a_replaced_writer_is_fenced_and_its_late_records_are_dropped() {
    let opts = options("fenced");
    let old = KafkaWal::open(opts.clone()).await.unwrap();
    old.append(Epoch(5), vec![Bytes::from_static(b"old-1")])
        .await
        .unwrap();
    // A new leader opens the region and writes its marker first.
    let new = KafkaWal::open(opts.clone()).await.unwrap();
    new.append(Epoch(6), vec![Bytes::from_static(b"marker")])
        .await
        .unwrap();
    // The old leader does not know yet: its next append must not be
    // acknowledged.
    let err = old
        .append(Epoch(5), vec![Bytes::from_static(b"old-2")])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Fenced {
                epoch: Epoch(5),
                by: Epoch(6)
            }
        ),
        "{err}"
    );
    assert!(!err.is_retryable());
    // And stays fenced.
    let again = old
        .append(Epoch(5), vec![Bytes::from_static(b"old-3")])
        .await
        .unwrap_err();
    assert!(matches!(again, Error::Fenced { .. }), "{again}");
    new.append(Epoch(6), vec![Bytes::from_static(b"new-1")])
        .await
        .unwrap();
    // Replay admits the old writer's record before the marker and drops the
    // one after it.
    let mut fence = crate::fence::EpochFence::new();
    let replayed: Vec<Bytes> = read_all(&new, WalOffset(0))
        .await
        .into_iter()
        .filter(|e| fence.admit(e))
        .map(|e| e.payload)
        .collect();
    assert_eq!(
        replayed,
        vec![
            Bytes::from_static(b"old-1"),
            Bytes::from_static(b"marker"),
            Bytes::from_static(b"new-1")
        ]
    );
    assert_eq!(fence.dropped(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_of_older_records_does_not_fence() {
    let opts = options("older-gap");
    let wal = KafkaWal::open(opts.clone()).await.unwrap();
    wal.append(Epoch(7), vec![Bytes::from_static(b"a")])
        .await
        .unwrap();
    // A stale writer (lower epoch) slips a record in; this writer goes on.
    let stale = KafkaWal::open(opts.clone()).await.unwrap();
    stale
        .append(Epoch(3), vec![Bytes::from_static(b"stale")])
        .await
        .unwrap();
    wal.append(Epoch(7), vec![Bytes::from_static(b"b")])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_chunk_groups_of_two_writers_are_both_reassembled() {
    let opts = options("interleaved");
    let wal = KafkaWal::open(opts.clone()).await.unwrap();
    // Two writers' two-chunk records, interleaved chunk by chunk.
    for (epoch, data, index) in [(1, "a1", 0), (2, "b1", 0), (1, "a2", 1), (2, "b2", 1)] {
        wal.send_chunk(Epoch(epoch), data.as_bytes(), index, 2)
            .unwrap()
            .await
            .unwrap()
            .unwrap();
    }
    let entries = read_all(&wal, WalOffset(0)).await;
    let got: Vec<(u64, Bytes)> = entries
        .iter()
        .map(|e| (e.epoch.0, e.payload.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, Bytes::from_static(b"a1a2")),
            (2, Bytes::from_static(b"b1b2"))
        ]
    );
    assert!(entries[0].offset < entries[1].offset);
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
