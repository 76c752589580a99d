//! One conformance suite that every [`Wal`] backend must pass.
//!
//! A backend's tests implement [`WalFactory`] and call [`run_all`]. The
//! cases share one region and work relative to the offsets they are given,
//! so they need no way to create fresh regions and hold for backends whose
//! offsets have gaps (Kafka).
//!
//! This module is test support: it asserts, and panics on failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{fence::EpochFence, Epoch, Wal, WalEntry, WalOffset};

/// Opens the region under test.
#[async_trait]
pub trait WalFactory: Send + Sync {
    /// Opens the region. Called again to simulate a process restart, after
    /// every handle returned earlier has been dropped.
    async fn open(&self) -> Arc<dyn Wal>;
}

/// Runs every case in order.
pub async fn run_all(factory: &dyn WalFactory) {
    append_and_read_in_order(factory).await;
    read_from_middle_and_past_end(factory).await;
    read_respects_max_bytes(factory).await;
    concurrent_appends_get_unique_offsets(factory).await;
    large_records_roundtrip(factory).await;
    reopen_preserves_records_and_next_offset(factory).await;
    truncate_hides_records_below_watermark(factory).await;
    fencing_drops_stale_epochs(factory).await;
}

fn payload(tag: &str, i: usize) -> Bytes {
    Bytes::from(format!("{tag}-{i}"))
}

/// Reads everything from `from` to the end of the log.
pub async fn read_all(wal: &dyn Wal, from: WalOffset) -> Vec<WalEntry> {
    let mut out: Vec<WalEntry> = Vec::new();
    let mut next = from;
    loop {
        let batch = wal.read(next, 64 * 1024).await.expect("read");
        let Some(last) = batch.last() else { break };
        next = last.offset.next();
        out.extend(batch);
    }
    out
}

async fn append_one(wal: &dyn Wal, p: Bytes) -> WalOffset {
    wal.append(Epoch(1), vec![p]).await.expect("append").offsets[0]
}

async fn append_and_read_in_order(factory: &dyn WalFactory) {
    let wal = factory.open().await;
    let base = wal.next_offset();
    let payloads: Vec<Bytes> = (0..3).map(|i| payload("order", i)).collect();
    let res = wal
        .append(Epoch(1), payloads.clone())
        .await
        .expect("append");
    assert_eq!(res.offsets.len(), 3, "one offset per record");
    assert!(
        res.offsets[0] >= base,
        "offsets start at or above next_offset"
    );
    assert!(
        res.offsets.windows(2).all(|w| w[0] < w[1]),
        "offsets increase"
    );
    assert!(
        wal.next_offset() > res.offsets[2],
        "next_offset is past the last record"
    );

    let entries = read_all(wal.as_ref(), base).await;
    assert_eq!(entries.len(), 3);
    for (i, entry) in entries.iter().enumerate() {
        assert_eq!(entry.offset, res.offsets[i]);
        assert_eq!(entry.epoch, Epoch(1));
        assert_eq!(entry.payload, payloads[i]);
    }
}

async fn read_from_middle_and_past_end(factory: &dyn WalFactory) {
    let wal = factory.open().await;
    let mut offsets = Vec::new();
    for i in 0..10 {
        offsets.push(append_one(wal.as_ref(), payload("mid", i)).await);
    }
    let entries = read_all(wal.as_ref(), offsets[6]).await;
    let got: Vec<_> = entries.iter().map(|e| e.payload.clone()).collect();
    let want: Vec<_> = (6..10).map(|i| payload("mid", i)).collect();
    assert_eq!(got, want, "reading from an offset starts exactly there");
    let past = wal
        .read(wal.next_offset(), 1024)
        .await
        .expect("read past end");
    assert!(past.is_empty(), "reading at the end returns nothing");
}

async fn read_respects_max_bytes(factory: &dyn WalFactory) {
    let wal = factory.open().await;
    let base = wal.next_offset();
    let big = Bytes::from(vec![7u8; 1000]);
    wal.append(Epoch(1), vec![big.clone(); 5])
        .await
        .expect("append");
    let first = wal.read(base, 10).await.expect("read");
    assert_eq!(first.len(), 1, "a small limit still returns one record");
    let some = wal.read(base, 2500).await.expect("read");
    assert!(
        (1..=3).contains(&some.len()),
        "about max_bytes of payload is returned, got {} records",
        some.len()
    );
    assert_eq!(read_all(wal.as_ref(), base).await.len(), 5);
}

async fn concurrent_appends_get_unique_offsets(factory: &dyn WalFactory) {
    let wal = factory.open().await;
    let base = wal.next_offset();
    let tasks = 8;
    let per_task = 40;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let wal = wal.clone();
        handles.push(tokio::spawn(async move {
            let mut results = Vec::new();
            for i in 0..per_task {
                let payloads = vec![
                    payload(&format!("c{t}"), 2 * i),
                    payload(&format!("c{t}"), 2 * i + 1),
                ];
                let res = wal
                    .append(Epoch(1), payloads.clone())
                    .await
                    .expect("append");
                assert!(
                    res.offsets[0] < res.offsets[1],
                    "an append's records are in order"
                );
                results.push((res.offsets, payloads));
            }
            results
        }));
    }
    let mut expected = std::collections::BTreeMap::new();
    for h in handles {
        for (offsets, payloads) in h.await.expect("task") {
            for (o, p) in offsets.into_iter().zip(payloads) {
                let prev = expected.insert(o, p);
                assert!(prev.is_none(), "offset {o} given twice");
            }
        }
    }
    let entries = read_all(wal.as_ref(), base).await;
    assert_eq!(
        entries.len(),
        tasks * per_task * 2,
        "every record is read back"
    );
    for entry in entries {
        assert_eq!(
            Some(&entry.payload),
            expected.get(&entry.offset),
            "at {}",
            entry.offset
        );
    }
}

async fn large_records_roundtrip(factory: &dyn WalFactory) {
    let wal = factory.open().await;
    let base = wal.next_offset();
    let big: Vec<u8> = (0..(4 * 1024 * 1024)).map(|i| (i % 251) as u8).collect();
    let big = Bytes::from(big);
    wal.append(Epoch(1), vec![big.clone(), Bytes::from_static(b"after")])
        .await
        .expect("append large");
    let entries = read_all(wal.as_ref(), base).await;
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].payload, big, "a large record comes back whole");
    assert_eq!(entries[1].payload, Bytes::from_static(b"after"));
}

async fn reopen_preserves_records_and_next_offset(factory: &dyn WalFactory) {
    let (base, next) = {
        let wal = factory.open().await;
        let base = wal.next_offset();
        wal.append(Epoch(1), (0..5).map(|i| payload("reopen", i)).collect())
            .await
            .expect("append");
        (base, wal.next_offset())
    };
    let wal = factory.open().await;
    assert_eq!(wal.next_offset(), next, "next offset survives reopen");
    let entries = read_all(wal.as_ref(), base).await;
    let got: Vec<_> = entries.iter().map(|e| e.payload.clone()).collect();
    let want: Vec<_> = (0..5).map(|i| payload("reopen", i)).collect();
    assert_eq!(got, want);
    let res = append_one(wal.as_ref(), payload("reopen", 5)).await;
    assert!(res >= next, "appends continue after the last record");
}

async fn truncate_hides_records_below_watermark(factory: &dyn WalFactory) {
    let cut = {
        let wal = factory.open().await;
        let base = wal.next_offset();
        let mut offsets = Vec::new();
        for i in 0..10 {
            offsets.push(append_one(wal.as_ref(), payload("trunc", i)).await);
        }
        let cut = offsets[7];
        wal.truncate(cut).await.expect("truncate");
        assert_eq!(wal.low_watermark(), cut);
        wal.truncate(offsets[2])
            .await
            .expect("lower truncate is ignored");
        assert_eq!(wal.low_watermark(), cut, "the watermark never moves back");
        let entries = read_all(wal.as_ref(), base).await;
        assert_eq!(entries.first().map(|e| e.offset), Some(cut));
        assert_eq!(entries.len(), 3);
        cut
    };
    let wal = factory.open().await;
    assert_eq!(wal.low_watermark(), cut, "the watermark is persisted");
    let entries = read_all(wal.as_ref(), WalOffset(0)).await;
    assert_eq!(entries.first().map(|e| e.offset), Some(cut));
}

async fn fencing_drops_stale_epochs(factory: &dyn WalFactory) {
    let wal = factory.open().await;
    let base = wal.next_offset();
    wal.append(Epoch(10), vec![payload("fence", 0)])
        .await
        .expect("append");
    wal.append(Epoch(12), vec![payload("fence", 1)])
        .await
        .expect("append");
    // A stale leader's late write.
    wal.append(Epoch(10), vec![payload("fence", 2)])
        .await
        .expect("append");
    wal.append(Epoch(12), vec![payload("fence", 3)])
        .await
        .expect("append");
    let mut fence = EpochFence::new();
    let admitted: Vec<_> = read_all(wal.as_ref(), base)
        .await
        .into_iter()
        .filter(|e| fence.admit(e))
        .map(|e| e.payload)
        .collect();
    assert_eq!(
        admitted,
        vec![
            payload("fence", 0),
            payload("fence", 1),
            payload("fence", 3)
        ]
    );
    assert_eq!(fence.dropped(), 1);
}
