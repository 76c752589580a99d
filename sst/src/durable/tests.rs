#![allow(clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;

use object_store::{ObjectStoreExt, WriteMultipart};

use super::*;

fn store() -> (tempfile::TempDir, DurableLocalStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = DurableLocalStore::with_sync_log(dir.path().join("store")).unwrap();
    (dir, store)
}

/// Whether `synced` is the sync of a staged upload of `dest` (`dest#N`).
fn is_staged_of(synced: &Synced, dest: &FsPath) -> bool {
    let Synced::File(p) = synced else {
        return false;
    };
    let name = p.file_name().unwrap().to_string_lossy().to_string();
    let dest_name = dest.file_name().unwrap().to_string_lossy().to_string();
    p.parent() == dest.parent()
        && name
            .strip_prefix(&format!("{dest_name}#"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

async fn read(store: &DurableLocalStore, location: &str) -> Vec<u8> {
    store
        .get(&Path::from(location))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec()
}

/// Names in a directory that are staged uploads (`name#N`).
fn staged_files(dir: &FsPath) -> Vec<String> {
    let mut out = Vec::new();
    for entry in walk(dir) {
        let name = entry.file_name().unwrap().to_string_lossy().to_string();
        if name.contains('#') {
            out.push(name);
        }
    }
    out
}

fn walk(dir: &FsPath) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn passes_the_store_conformance_suite() {
    let (_dir, store) = store();
    crate::store_conformance::run_all(Arc::new(store.clone()), "conformance").await;
    assert!(staged_files(store.root()).is_empty());
}

#[tokio::test]
async fn a_put_syncs_the_data_before_naming_it_then_every_new_directory() {
    let (_dir, store) = store();
    let root = store.root().to_path_buf();
    store
        .put(
            &Path::from("t/1/sst/a.parquet"),
            PutPayload::from_static(b"abc"),
        )
        .await
        .unwrap();
    let dest = root.join("t/1/sst/a.parquet");
    let log = store.take_sync_log();
    // The data is synced while it is still the hidden staged file, i.e.
    // before the name exists; then the file's directory, then each directory
    // created on the way, up to the root.
    assert!(
        is_staged_of(&log[0], &dest),
        "first sync is the staged data: {log:?}"
    );
    assert_eq!(
        log[1..],
        [
            Synced::Dir(root.join("t/1/sst")),
            Synced::Dir(root.join("t/1")),
            Synced::Dir(root.join("t")),
            Synced::Dir(root.clone()),
        ],
        "{log:?}"
    );
    assert_eq!(read(&store, "t/1/sst/a.parquet").await, b"abc");

    // Into a directory already known to be durable: the data and the
    // directory holding the new name, nothing more.
    store
        .put(
            &Path::from("t/1/sst/b.parquet"),
            PutPayload::from_static(b"de"),
        )
        .await
        .unwrap();
    let log = store.take_sync_log();
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(is_staged_of(&log[0], &root.join("t/1/sst/b.parquet")));
    assert_eq!(log[1], Synced::Dir(root.join("t/1/sst")));

    // A sibling directory: only its own entry in the (durable) parent.
    store
        .put(&Path::from("t/2/x"), PutPayload::from_static(b"x"))
        .await
        .unwrap();
    let log = store.take_sync_log();
    assert_eq!(
        log[1..],
        [Synced::Dir(root.join("t/2")), Synced::Dir(root.join("t"))],
        "{log:?}"
    );
    assert!(staged_files(&root).is_empty());
    assert_eq!(store.sync_counts().files, 3);
}

#[tokio::test]
async fn a_conditional_create_is_synced_and_refused_the_second_time() {
    let (_dir, store) = store();
    let root = store.root().to_path_buf();
    let create = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    let location = Path::from("m/edit-00000001.json");
    let put = store
        .put_opts(&location, PutPayload::from_static(b"first"), create.clone())
        .await
        .unwrap();
    assert_eq!(put.e_tag, store.head(&location).await.unwrap().e_tag);
    let log = store.take_sync_log();
    assert!(is_staged_of(&log[0], &root.join("m/edit-00000001.json")));
    assert_eq!(log[1], Synced::Dir(root.join("m")));

    match store
        .put_opts(&location, PutPayload::from_static(b"second"), create)
        .await
    {
        Err(object_store::Error::AlreadyExists { .. }) => {}
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(read(&store, "m/edit-00000001.json").await, b"first");
    assert!(
        staged_files(&root).is_empty(),
        "the refused data is removed"
    );
}

#[tokio::test]
async fn a_multipart_upload_is_synced_before_it_is_renamed_into_place() {
    let (_dir, store) = store();
    let root = store.root().to_path_buf();
    let big: Vec<u8> = (0..(11 * 1024 * 1024)).map(|i| (i % 251) as u8).collect();
    let upload = store
        .put_multipart(&Path::from("t/9/big.parquet"))
        .await
        .unwrap();
    let mut writer = WriteMultipart::new_with_chunk_size(upload, 5 * 1024 * 1024);
    for chunk in big.chunks(1024 * 1024) {
        writer.write(chunk);
    }
    // Nothing is visible before completion.
    assert!(store.head(&Path::from("t/9/big.parquet")).await.is_err());
    writer.finish().await.unwrap();
    let log = store.take_sync_log();
    assert!(
        is_staged_of(&log[0], &root.join("t/9/big.parquet")),
        "{log:?}"
    );
    assert_eq!(
        log[1..],
        [
            Synced::Dir(root.join("t/9")),
            Synced::Dir(root.join("t")),
            Synced::Dir(root.clone()),
        ]
    );
    assert!(read(&store, "t/9/big.parquet").await == big);
    assert!(staged_files(&root).is_empty());

    // An aborted upload leaves nothing.
    let mut upload = store.put_multipart(&Path::from("t/9/gone")).await.unwrap();
    upload
        .put_part(PutPayload::from_static(b"part"))
        .await
        .unwrap();
    upload.abort().await.unwrap();
    assert!(staged_files(&root).is_empty());
}

#[tokio::test]
async fn copy_rename_and_delete_sync_the_directories_they_change() {
    let (_dir, store) = store();
    let root = store.root().to_path_buf();
    store
        .put(&Path::from("a/x"), PutPayload::from_static(b"x"))
        .await
        .unwrap();
    store.take_sync_log();

    store
        .copy(&Path::from("a/x"), &Path::from("b/y"))
        .await
        .unwrap();
    assert_eq!(
        store.take_sync_log(),
        [
            Synced::File(root.join("b/y")),
            Synced::Dir(root.join("b")),
            Synced::Dir(root.clone()),
        ]
    );

    store
        .rename(&Path::from("b/y"), &Path::from("a/z"))
        .await
        .unwrap();
    assert_eq!(
        store.take_sync_log(),
        [
            Synced::File(root.join("a/z")),
            Synced::Dir(root.join("a")),
            Synced::Dir(root.join("b")),
        ]
    );

    store.delete(&Path::from("a/x")).await.unwrap();
    assert_eq!(store.take_sync_log(), [Synced::Dir(root.join("a"))]);
    assert_eq!(read(&store, "a/z").await, b"x");
}
