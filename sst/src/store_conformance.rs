//! One conformance suite for the object stores Strata runs on: what the
//! engine relies on (atomic puts, ranged reads, listing, deletes,
//! conditional create for manifest commits, multipart uploads for large
//! SSTs) must hold on the local filesystem and on S3 alike.
//!
//! This module is test support: it asserts, and panics on failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{
    path::Path, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart,
};

/// Runs every case under `prefix` (which should be unique to the run).
pub async fn run_all(store: Arc<dyn ObjectStore>, prefix: &str) {
    let p = |name: &str| Path::from(format!("{prefix}/{name}"));

    // Put, get, ranges, head.
    let data = Bytes::from(
        (0..10_000u32)
            .flat_map(|i| i.to_le_bytes())
            .collect::<Vec<u8>>(),
    );
    store
        .put(&p("a/one.bin"), PutPayload::from(data.clone()))
        .await
        .unwrap();
    let got = store
        .get(&p("a/one.bin"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got, data, "get returns what was put");
    assert_eq!(
        store.get_range(&p("a/one.bin"), 4..12).await.unwrap(),
        data.slice(4..12)
    );
    let ranges = store
        .get_ranges(&p("a/one.bin"), &[0..4, 39_996..40_000])
        .await
        .unwrap();
    assert_eq!(ranges, vec![data.slice(0..4), data.slice(39_996..40_000)]);
    assert_eq!(
        store.head(&p("a/one.bin")).await.unwrap().size,
        data.len() as u64
    );

    // Overwrite is atomic: readers see the old or the new object.
    store
        .put(&p("a/one.bin"), PutPayload::from_static(b"new"))
        .await
        .unwrap();
    assert_eq!(
        store
            .get(&p("a/one.bin"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        b"new"
    );

    // Missing objects are NotFound.
    match store.get(&p("a/missing.bin")).await {
        Err(object_store::Error::NotFound { .. }) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }

    // Conditional create: the second writer of a name is refused.
    let create = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    store
        .put_opts(
            &p("m/edit-1.json"),
            PutPayload::from_static(b"first"),
            create.clone(),
        )
        .await
        .unwrap();
    match store
        .put_opts(
            &p("m/edit-1.json"),
            PutPayload::from_static(b"second"),
            create,
        )
        .await
    {
        Err(object_store::Error::AlreadyExists { .. }) => {}
        other => panic!("a second create must fail with AlreadyExists, got {other:?}"),
    }
    assert_eq!(
        store
            .get(&p("m/edit-1.json"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        b"first"
    );

    // Multipart upload of a large object (several parts).
    let big: Vec<u8> = (0..(12 * 1024 * 1024)).map(|i| (i % 253) as u8).collect();
    let upload = store.put_multipart(&p("big/sst.parquet")).await.unwrap();
    let mut writer = WriteMultipart::new_with_chunk_size(upload, 5 * 1024 * 1024);
    for chunk in big.chunks(1024 * 1024) {
        writer.write(chunk);
    }
    writer.finish().await.unwrap();
    let back = store
        .get(&p("big/sst.parquet"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(back.len(), big.len());
    assert!(
        back.as_ref() == big.as_slice(),
        "multipart object reads back intact"
    );

    // Listing, recursive and by delimiter.
    store
        .put(&p("a/two.bin"), PutPayload::from_static(b"2"))
        .await
        .unwrap();
    store
        .put(&p("a/sub/three.bin"), PutPayload::from_static(b"3"))
        .await
        .unwrap();
    let mut all: Vec<String> = store
        .list(Some(&p("a")))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    all.sort();
    assert_eq!(
        all,
        vec![
            format!("{prefix}/a/one.bin"),
            format!("{prefix}/a/sub/three.bin"),
            format!("{prefix}/a/two.bin")
        ]
    );
    let shallow = store.list_with_delimiter(Some(&p("a"))).await.unwrap();
    assert_eq!(shallow.objects.len(), 2);
    assert_eq!(shallow.common_prefixes, vec![p("a/sub")]);

    // Deletes, including of missing objects, leave nothing behind.
    for name in [
        "a/one.bin",
        "a/two.bin",
        "a/sub/three.bin",
        "m/edit-1.json",
        "big/sst.parquet",
    ] {
        store.delete(&p(name)).await.unwrap();
    }
    let _ = store.delete(&p("a/missing.bin")).await;
    let left: Vec<_> = store
        .list(Some(&Path::from(prefix)))
        .try_collect()
        .await
        .unwrap();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[cfg(test)]
mod tests {
    use object_store::local::LocalFileSystem;

    use super::*;

    #[tokio::test]
    async fn local_filesystem_passes() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        run_all(store, "conformance").await;
    }
}
