//! `strata standalone`: every role in one process, with the WAL and SSTs on
//! local disk and the catalog inside the process.

use std::time::Duration;

use strata_engine::Engine;

pub use crate::bootstrap::shutdown_signal;
use crate::{
    bootstrap::{bind, query_runtime, query_threads, serve, startup},
    config::Config,
    error::Result,
    sql::QueryEngine,
    storage,
};

/// Runs standalone Strata until a shutdown signal.
pub async fn run(config: Config) -> Result<()> {
    std::fs::create_dir_all(&config.server.data_dir)
        .map_err(startup("creating the data directory"))?;
    let store = storage::open_object_store(&config)?;
    let wal = storage::open_wal(&config, strata_engine::STANDALONE_SHARD).await?;

    // Bind before the (possibly long) recovery so that a port conflict is
    // reported at once.
    let listeners = bind(&config).await?;

    // With a WAL on Kafka or SSTs on S3, another process (the next version
    // in a rolling update, a second copy started by mistake) can reach the
    // same data: open the shard fenced, under an epoch from the clock, so
    // that whichever process started last is the only one that can write.
    let shared = matches!(config.wal, crate::config::WalConfig::Kafka(_))
        || !matches!(
            config.object_store,
            crate::config::ObjectStoreConfig::Local { .. }
        );
    let epoch = shared.then(|| {
        strata_wal::Epoch(u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(1))
    });
    let engine = Engine::open_fenced(config.engine.clone(), store, wal, epoch).await?;
    let query_runtime = query_runtime(&config)?;
    let query = QueryEngine::new(
        engine.clone(),
        query_runtime.handle().clone(),
        query_threads(&config),
    )
    .with_limits(crate::sql::QueryLimits::new(&config.query));
    serve(&config, query, listeners, "standalone", None).await?;
    if let Err(e) = tokio::time::timeout(Duration::from_secs(60), engine.close())
        .await
        .unwrap_or(Ok(()))
    {
        tracing::warn!(error = %e, "flush on shutdown failed; the WAL still holds every acknowledged row");
    }
    query_runtime.shutdown_background();
    tracing::info!("stopped");
    Ok(())
}
