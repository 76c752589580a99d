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
                by: Epoch(6),
                ..
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
async fn interleaved_chunk_groups_keep_only_records_no_newer_writer_overtook() {
    let opts = options("interleaved");
    let wal = KafkaWal::open(opts.clone()).await.unwrap();
    // Two-chunk records of three writers, interleaved chunk by chunk: a
    // lower epoch between the chunks of a higher one leaves it whole; a
    // higher epoch between the chunks of a lower one means the lower
    // writer was refused that append, so its record is dropped.
    for (epoch, data, index) in [
        (2, "b1", 0),
        (1, "a1", 0),
        (2, "b2", 1),
        (1, "a2", 1),
        (3, "c1", 0),
        (3, "c2", 1),
    ] {
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
            (2, Bytes::from_static(b"b1b2")),
            (3, Bytes::from_static(b"c1c2"))
        ]
    );
}

/// The Kafka conformance case of issue 14: a newer writer's marker lands
/// between the chunks of one append. The append fails as fenced, naming the
/// records that landed wholly before the marker, and replay applies exactly
/// those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_record_between_the_chunks_of_one_append_fences_it() {
    let mut opts = options("chunk-fence");
    opts.max_message_bytes = 1024;
    let mut slow = opts.clone();
    slow.pause_between_chunks = Some(Duration::from_millis(500));
    let old = Arc::new(KafkaWal::open(slow).await.unwrap());
    old.append(Epoch(5), vec![Bytes::from_static(b"before")])
        .await
        .unwrap();
    let first = Bytes::from(vec![b'a'; 100]);
    let straddling = Bytes::from(vec![b'b'; 4 * 1024]);
    let last = Bytes::from_static(b"c");
    let append = {
        let old = old.clone();
        let payloads = vec![first.clone(), straddling, last];
        tokio::spawn(async move { old.append(Epoch(5), payloads).await })
    };
    // The old writer sends `first` at once, then a chunk of `straddling`
    // every 500 ms: the marker lands between those chunks.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let new = KafkaWal::open(opts.clone()).await.unwrap();
    let marker = new
        .append(Epoch(6), vec![Bytes::from_static(b"marker")])
        .await
        .unwrap();
    let err = append.await.unwrap().unwrap_err();
    let Error::Fenced {
        epoch,
        by,
        committed,
    } = &err
    else {
        panic!("expected a fenced append, got {err}");
    };
    assert_eq!((*epoch, *by), (Epoch(5), Epoch(6)));
    assert_eq!(
        committed.len(),
        1,
        "only `first` landed before the marker: {err:?}"
    );
    assert!(committed[0] < marker.offsets[0]);
    // Fenced for good.
    let again = old
        .append(Epoch(5), vec![Bytes::from_static(b"late")])
        .await
        .unwrap_err();
    assert!(matches!(again, Error::Fenced { .. }), "{again}");

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
            Bytes::from_static(b"before"),
            first,
            Bytes::from_static(b"marker")
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_that_lost_acknowledged_records_is_refused() {
    let opts = options("lost");
    let wal = KafkaWal::open(opts.clone()).await.unwrap();
    wal.append(Epoch(1), vec![Bytes::from_static(b"a"); 3])
        .await
        .unwrap();
    // As after the broker lost a topic the shard had truncated to 100: the
    // topic now ends below the shard's watermark.
    wal.commit_watermark(100).await.unwrap();
    drop(wal);
    let err = KafkaWal::open(opts.clone()).await.unwrap_err();
    assert!(matches!(err, Error::RecordsLost { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(crate::loss::regions().iter().any(|(t, _)| *t == opts.topic));
    // A reset topic cannot be accepted by moving the watermark.
    let mut accepting = opts.clone();
    accepting.accept_loss = true;
    let err = KafkaWal::open(accepting).await.unwrap_err();
    assert!(matches!(err, Error::RecordsLost { .. }), "{err}");
}

#[test]
fn lost_records_compares_the_topic_with_the_watermark() {
    assert_eq!(lost_records(0, 10, None), None);
    assert_eq!(lost_records(0, 10, Some(4)), None);
    assert_eq!(lost_records(4, 10, Some(4)), None);
    assert_eq!(lost_records(3, 10, Some(4)), None);
    assert!(lost_records(752, 2584, Some(1)).is_some_and(|d| d.contains("751 records")));
    assert_eq!(lost_records(5, 10, None), None);
    assert!(lost_records(0, 2, Some(4)).is_some());
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

#[test]
fn replicated_topics_wait_for_a_majority_of_at_least_two() {
    let mut o = KafkaWalOptions::new("b", "t");
    for (rf, want) in [(1, 1), (2, 2), (3, 2), (5, 3)] {
        o.replication_factor = rf;
        assert_eq!(o.min_insync_replicas(), want, "rf {rf}");
    }
    o.replication_factor = 3;
    o.min_insync = Some(3);
    assert_eq!(o.min_insync_replicas(), 3);
}

/// A read that ends inside a record's chunk group (its last chunks not
/// read yet) returns nothing above the group's first chunk: an old
/// writer's record between the new writer's chunks was returned, the
/// reader moved past the group's first chunk, and the next read dropped
/// the group's later chunks, losing an acknowledged record.
#[test]
fn a_read_ending_inside_a_chunk_group_returns_nothing_above_it() {
    let mut a = Assembler::default();
    a.push("t", 9, 3, 0, 1, b"before");
    // The new writer (epoch 3) starts a two-chunk record at 10; the old
    // writer's (epoch 2) record lands at 11; the read ends there.
    a.push("t", 10, 3, 0, 2, b"x1");
    a.push("t", 11, 2, 0, 1, b"old");
    let got: Vec<u64> = a.finish().iter().map(|e| e.offset.0).collect();
    assert_eq!(got, [9], "nothing at or above the pending group at 10");

    // Read again from 10, with the group complete: the record is whole.
    let mut a = Assembler::default();
    a.push("t", 10, 3, 0, 2, b"x1");
    a.push("t", 11, 2, 0, 1, b"old");
    a.push("t", 12, 3, 1, 2, b"x2");
    let got = a.finish();
    let x = got
        .iter()
        .find(|e| e.offset.0 == 10)
        .expect("the record at 10");
    assert_eq!(&x.payload[..], b"x1x2");
    assert_eq!(got.len(), 2);

    // A group overtaken by a newer writer holds nothing back: it is dropped.
    let mut a = Assembler::default();
    a.push("t", 20, 3, 0, 2, b"y1");
    a.push("t", 21, 4, 0, 1, b"fence");
    let got: Vec<u64> = a.finish().iter().map(|e| e.offset.0).collect();
    assert_eq!(got, [21]);
}
