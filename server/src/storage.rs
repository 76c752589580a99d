//! Opening the WAL and the object store that the configuration names.

use std::sync::Arc;

use object_store::ObjectStore;
use strata_sst::{
    disk_cache::DiskCacheStore,
    durable::DurableLocalStore,
    s3::{self, S3Options},
    ShardId,
};
use strata_wal::{
    kafka::{KafkaWal, KafkaWalOptions},
    local::{LocalWal, LocalWalOptions},
    Wal,
};

use crate::{
    config::{Config, ObjectStoreConfig, WalConfig},
    error::{Error, Result},
};

/// The object store, wrapped in the local-disk cache when one is configured.
pub fn open_object_store(config: &Config) -> Result<Arc<dyn ObjectStore>> {
    let mut store: Arc<dyn ObjectStore> = match &config.object_store {
        ObjectStoreConfig::Local { .. } => {
            // Durable: every SST and manifest edit is fsynced (file and
            // directories) before the put returns, so the WAL below a flush
            // is never truncated ahead of the data that replaces it.
            let root = config.store_root();
            Arc::new(DurableLocalStore::new(&root).map_err(|e| {
                Error::Internal(format!(
                    "opening the object store at {}: {e}",
                    root.display()
                ))
            })?)
        }
        ObjectStoreConfig::S3(c) => {
            let mut opts = S3Options::with_defaults();
            opts.bucket = c.bucket.clone();
            opts.prefix = c.prefix.clone();
            opts.endpoint = c.endpoint.clone();
            opts.region = c.region.clone();
            opts.access_key_id = c.access_key_id.clone();
            opts.secret_access_key = c.secret_access_key.clone();
            opts.virtual_hosted_style = c.virtual_hosted_style;
            opts.request_timeout = c.request_timeout;
            opts.max_retries = c.max_retries;
            opts.retry_timeout = c.retry_timeout;
            s3::open(&opts).map_err(Error::InvalidArgument)?
        }
    };
    if config.cache.disk_size > 0 {
        let dir = config.cache_dir();
        store = Arc::new(
            DiskCacheStore::open(store, &dir, config.cache.disk_size).map_err(|e| {
                Error::Internal(format!("opening the disk cache at {}: {e}", dir.display()))
            })?,
        );
    }
    Ok(store)
}

/// The Kafka topic of one shard.
pub fn kafka_topic(prefix: &str, cluster: &str, shard: ShardId) -> String {
    format!("{prefix}-{cluster}-shard-{shard}")
}

/// The WAL region of `shard`.
pub async fn open_wal(config: &Config, shard: ShardId) -> Result<Arc<dyn Wal>> {
    match &config.wal {
        WalConfig::Local { segment_size, .. } => {
            let dir = config.wal_dir().join(format!("shard-{shard}"));
            let wal = LocalWal::open(
                &dir,
                LocalWalOptions {
                    segment_size: *segment_size,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| Error::Internal(format!("opening the WAL at {}: {e}", dir.display())))?;
            Ok(Arc::new(wal))
        }
        WalConfig::Kafka(k) => {
            let brokers = k
                .brokers
                .clone()
                .or_else(|| {
                    std::env::var("STRATA_KAFKA_BROKERS")
                        .ok()
                        .filter(|b| !b.is_empty())
                })
                .ok_or_else(|| {
                    Error::InvalidArgument(
                        "no Kafka brokers: set wal.brokers or STRATA_KAFKA_BROKERS".into(),
                    )
                })?;
            let mut opts = KafkaWalOptions::new(
                brokers,
                kafka_topic(&k.topic_prefix, &config.engine.cluster, shard),
            );
            opts.replication_factor = k.replication_factor;
            opts.min_insync = k.min_insync_replicas;
            opts.max_message_bytes = k.max_message_bytes as usize;
            opts.produce_timeout = k.produce_timeout;
            opts.linger = k.linger;
            opts.delete_records = k.delete_records;
            opts.idempotence = k.idempotence;
            opts.accept_loss = k.accept_loss;
            opts.extra = k.properties.clone();
            let wal = KafkaWal::open(opts)
                .await
                .map_err(|e| Error::Internal(format!("opening the Kafka WAL: {e}")))?;
            Ok(Arc::new(wal))
        }
    }
}

/// The WAL regions of a cluster instance's shards, as the configuration
/// names them.
#[derive(Debug)]
pub struct ConfiguredWal(pub Config);

#[async_trait::async_trait]
impl crate::cluster::WalRegions for ConfiguredWal {
    async fn open(&self, shard: ShardId) -> strata_engine::Result<Arc<dyn Wal>> {
        open_wal(&self.0, shard)
            .await
            .map_err(|e| strata_engine::Error::Internal(e.to_string()))
    }

    fn loss_keys(&self, shard: ShardId) -> Vec<String> {
        match &self.0.wal {
            WalConfig::Kafka(k) => {
                vec![kafka_topic(&k.topic_prefix, &self.0.engine.cluster, shard)]
            }
            _ => Vec::new(),
        }
    }
}
