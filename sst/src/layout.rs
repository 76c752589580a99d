//! Where things live in the object store.
//!
//! ```text
//! {cluster}/shards/{shard}/tables/{table_id}/sst/{sst_id}.parquet
//! {cluster}/shards/{shard}/tables/{table_id}/manifest/…
//! ```
//!
//! Paths are relative to the store's root (a directory in standalone mode, a
//! bucket and optional prefix on S3).

use object_store::path::Path;

use crate::{ShardId, SstId, TableId};

/// The directory of one table.
pub fn table_dir(cluster: &str, shard: ShardId, table: TableId) -> Path {
    Path::from(format!("{cluster}/shards/{shard}/tables/{table}"))
}

/// The directory holding a table's SSTs.
pub fn sst_dir(cluster: &str, shard: ShardId, table: TableId) -> Path {
    table_dir(cluster, shard, table).join("sst")
}

/// The path of one SST.
pub fn sst_path(cluster: &str, shard: ShardId, table: TableId, sst: SstId) -> Path {
    sst_dir(cluster, shard, table).join(format!("{sst}.parquet").as_str())
}

/// The directory holding a table's manifest.
pub fn manifest_dir(cluster: &str, shard: ShardId, table: TableId) -> Path {
    table_dir(cluster, shard, table).join("manifest")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_documented_layout() {
        assert_eq!(
            sst_path("c1", ShardId(3), TableId(7), SstId(42)).as_ref(),
            "c1/shards/3/tables/7/sst/42.parquet"
        );
        assert_eq!(
            manifest_dir("c1", ShardId(3), TableId(7)).as_ref(),
            "c1/shards/3/tables/7/manifest"
        );
    }
}
