//! One conformance suite for every [`KvStore`] backend. Keys live under a
//! prefix unique to the run, so the suite can share a real etcd.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use super::{Compare, KvStore, Op};
use crate::Error;

fn unique() -> String {
    format!(
        "/conformance/{}-{}/",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    )
}

pub async fn run_all(kv: &dyn KvStore) {
    let p = unique();
    let k = |s: &str| format!("{p}{s}").into_bytes();

    // Put, get, versions and revisions.
    assert!(kv.get(&k("a")).await.unwrap().is_none());
    let r1 = kv.put(&k("a"), b"1", 0).await.unwrap();
    let got = kv.get(&k("a")).await.unwrap().unwrap();
    assert_eq!(
        (got.value.as_slice(), got.version, got.mod_revision),
        (&b"1"[..], 1, r1)
    );
    let r2 = kv.put(&k("a"), b"2", 0).await.unwrap();
    assert!(r2 > r1, "revisions grow");
    let got = kv.get(&k("a")).await.unwrap().unwrap();
    assert_eq!((got.value.as_slice(), got.version), (&b"2"[..], 2));

    // Range by prefix, in key order; other prefixes excluded.
    kv.put(&k("b/2"), b"x", 0).await.unwrap();
    kv.put(&k("b/1"), b"y", 0).await.unwrap();
    kv.put(&k("c"), b"z", 0).await.unwrap();
    let keys: Vec<Vec<u8>> = kv
        .range(&k("b/"))
        .await
        .unwrap()
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, vec![k("b/1"), k("b/2")]);

    // Delete.
    assert!(kv.delete(&k("c")).await.unwrap());
    assert!(!kv.delete(&k("c")).await.unwrap());
    assert!(kv.get(&k("c")).await.unwrap().is_none());

    // Transactions: create-if-absent succeeds once.
    let create = |v: &str| {
        (
            vec![Compare::Absent(k("lock"))],
            vec![Op::put(k("lock"), v)],
        )
    };
    let (c, o) = create("first");
    assert!(kv.txn(c, o).await.unwrap().succeeded);
    let (c, o) = create("second");
    assert!(
        !kv.txn(c, o).await.unwrap().succeeded,
        "a second create fails"
    );
    assert_eq!(kv.get(&k("lock")).await.unwrap().unwrap().value, b"first");

    // Compare-and-swap on the revision: the stale writer loses.
    let rev = kv.get(&k("a")).await.unwrap().unwrap().mod_revision;
    let ok = kv
        .txn(
            vec![Compare::ModRevision(k("a"), rev)],
            vec![Op::put(k("a"), "3"), Op::delete(k("b/1"))],
        )
        .await
        .unwrap();
    assert!(ok.succeeded);
    assert!(
        kv.get(&k("b/1")).await.unwrap().is_none(),
        "all operations apply together"
    );
    let stale = kv
        .txn(
            vec![Compare::ModRevision(k("a"), rev)],
            vec![Op::put(k("a"), "4")],
        )
        .await
        .unwrap();
    assert!(!stale.succeeded);
    assert_eq!(kv.get(&k("a")).await.unwrap().unwrap().value, b"3");
    let by_value = kv
        .txn(
            vec![Compare::Value(k("a"), b"3".to_vec())],
            vec![Op::put(k("a"), "5")],
        )
        .await
        .unwrap();
    assert!(by_value.succeeded);

    // Leases: keys vanish on revoke and on expiry; keep-alive extends.
    let lease = kv.grant_lease(Duration::from_secs(1)).await.unwrap();
    kv.put(&k("leased"), b"v", lease).await.unwrap();
    assert_eq!(kv.get(&k("leased")).await.unwrap().unwrap().lease, lease);
    kv.revoke(lease).await.unwrap();
    assert!(
        kv.get(&k("leased")).await.unwrap().is_none(),
        "revoking deletes the lease's keys"
    );

    let lease = kv.grant_lease(Duration::from_secs(1)).await.unwrap();
    let created = kv
        .txn(
            vec![Compare::Absent(k("leader"))],
            vec![Op::Put {
                key: k("leader"),
                value: b"me".to_vec(),
                lease,
            }],
        )
        .await
        .unwrap();
    assert!(created.succeeded);
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        kv.keep_alive(lease).await.unwrap();
    }
    assert!(
        kv.get(&k("leader")).await.unwrap().is_some(),
        "kept alive past its TTL"
    );
    // Without keep-alive it expires (etcd may take up to a second more).
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    while kv.get(&k("leader")).await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the leased key never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    match kv.keep_alive(lease).await {
        Err(Error::LeaseExpired(_)) => {}
        other => panic!("keep-alive of an expired lease must fail, got {other:?}"),
    }
    match kv.put(&k("late"), b"v", lease).await {
        Err(Error::LeaseExpired(_)) => {}
        other => panic!("writing with an expired lease must fail, got {other:?}"),
    }

    for key in ["a", "b/2"] {
        kv.delete(&k(key)).await.unwrap();
    }
    kv.delete(&k("lock")).await.unwrap();
}
