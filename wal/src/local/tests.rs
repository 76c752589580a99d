#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{io::Write, sync::Arc};

use async_trait::async_trait;
use bytes::Bytes;

use super::*;
use crate::conformance::{self, read_all, WalFactory};

struct Factory {
    dir: PathBuf,
    options: LocalWalOptions,
}

#[async_trait]
impl WalFactory for Factory {
    async fn open(&self) -> Arc<dyn Wal> {
        Arc::new(
            LocalWal::open(&self.dir, self.options.clone())
                .await
                .expect("open"),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_wal_passes_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    conformance::run_all(&Factory {
        dir: dir.path().to_path_buf(),
        options: LocalWalOptions::default(),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_wal_passes_conformance_suite_with_tiny_segments() {
    let dir = tempfile::tempdir().unwrap();
    conformance::run_all(&Factory {
        dir: dir.path().to_path_buf(),
        options: LocalWalOptions {
            segment_size: 4096,
            max_batch_records: 16,
        },
    })
    .await;
}

fn last_segment(dir: &Path) -> PathBuf {
    let mut paths: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    paths.sort();
    paths.pop().unwrap()
}

#[tokio::test]
async fn torn_tail_is_truncated_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = LocalWal::open(dir.path(), LocalWalOptions::default())
            .await
            .unwrap();
        wal.append(
            Epoch(1),
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")],
        )
        .await
        .unwrap();
    }
    // Simulate a crash in the middle of writing a third record.
    let seg = last_segment(dir.path());
    let mut partial = Vec::new();
    format::encode(&mut partial, 2, 1, b"a record that never finished");
    partial.truncate(partial.len() - 5);
    fs::OpenOptions::new()
        .append(true)
        .open(&seg)
        .unwrap()
        .write_all(&partial)
        .unwrap();

    let wal = LocalWal::open(dir.path(), LocalWalOptions::default())
        .await
        .unwrap();
    assert_eq!(wal.next_offset(), WalOffset(2));
    let res = wal
        .append(Epoch(1), vec![Bytes::from_static(b"c")])
        .await
        .unwrap();
    assert_eq!(res.offsets, vec![WalOffset(2)]);
    let got: Vec<_> = read_all(&wal, WalOffset(0))
        .await
        .into_iter()
        .map(|e| e.payload)
        .collect();
    assert_eq!(
        got,
        vec![
            Bytes::from_static(b"a"),
            Bytes::from_static(b"b"),
            Bytes::from_static(b"c")
        ]
    );
}

#[tokio::test]
async fn corrupted_tail_record_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = LocalWal::open(dir.path(), LocalWalOptions::default())
            .await
            .unwrap();
        for p in [&b"one"[..], b"two", b"three"] {
            wal.append(Epoch(1), vec![Bytes::copy_from_slice(p)])
                .await
                .unwrap();
        }
    }
    let seg = last_segment(dir.path());
    let mut bytes = fs::read(&seg).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    fs::write(&seg, &bytes).unwrap();
    let wal = LocalWal::open(dir.path(), LocalWalOptions::default())
        .await
        .unwrap();
    assert_eq!(
        wal.next_offset(),
        WalOffset(2),
        "the bad record and anything after it are dropped"
    );
}

#[tokio::test]
async fn truncation_deletes_whole_segments_only() {
    let dir = tempfile::tempdir().unwrap();
    let options = LocalWalOptions {
        segment_size: 256,
        max_batch_records: 1,
    };
    let wal = LocalWal::open(dir.path(), options.clone()).await.unwrap();
    for i in 0..40u32 {
        wal.append(Epoch(1), vec![Bytes::from(vec![i as u8; 100])])
            .await
            .unwrap();
    }
    let count = |d: &Path| {
        fs::read_dir(d)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "log")
            })
            .count()
    };
    let before = count(dir.path());
    assert!(before > 5, "tiny segments roll often, got {before}");
    wal.truncate(WalOffset(30)).await.unwrap();
    let after = count(dir.path());
    assert!(after < before, "segments below the watermark are deleted");
    let entries = read_all(&wal, WalOffset(0)).await;
    assert_eq!(entries.first().unwrap().offset, WalOffset(30));
    assert_eq!(entries.len(), 10);
    drop(wal);
    let wal = LocalWal::open(dir.path(), options).await.unwrap();
    assert_eq!(read_all(&wal, WalOffset(0)).await.len(), 10);
    assert_eq!(wal.next_offset(), WalOffset(40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_offsets_are_consecutive() {
    let dir = tempfile::tempdir().unwrap();
    let wal = LocalWal::open(dir.path(), LocalWalOptions::default())
        .await
        .unwrap();
    let a = wal
        .append(Epoch(1), vec![Bytes::from_static(b"a"); 3])
        .await
        .unwrap();
    let b = wal
        .append(Epoch(1), vec![Bytes::from_static(b"b"); 2])
        .await
        .unwrap();
    assert_eq!(a.offsets, vec![WalOffset(0), WalOffset(1), WalOffset(2)]);
    assert_eq!(b.offsets, vec![WalOffset(3), WalOffset(4)]);
    assert_eq!(wal.next_offset(), WalOffset(5));
}

#[tokio::test]
async fn oversized_record_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wal = LocalWal::open(dir.path(), LocalWalOptions::default())
        .await
        .unwrap();
    let huge = Bytes::from(vec![0u8; format::MAX_PAYLOAD + 1]);
    let err = wal.append(Epoch(1), vec![huge]).await.unwrap_err();
    assert!(matches!(err, Error::RecordTooLarge { .. }), "{err}");
    assert!(!err.is_retryable());
}
