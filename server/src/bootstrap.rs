//! Start-up shared by both roles (`strata standalone` and `strata server`):
//! the query runtime, binding the listeners, serving gRPC, HTTP and
//! PostgreSQL until a shutdown signal.

use std::{future::IntoFuture, time::Duration};

use strata_proto::storage::storage_service_server::StorageServiceServer;
use tokio::net::TcpListener;

use crate::{
    config::Config,
    error::{Error, Result},
    grpc::StorageServiceImpl,
    http,
    sql::QueryEngine,
};

pub(crate) fn startup(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Internal(format!("{what}: {e}"))
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

pub(crate) fn query_threads(config: &Config) -> usize {
    if config.query.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        config.query.threads
    }
}

/// The stack of each query runtime thread.
const QUERY_THREAD_STACK: usize = 16 << 20;

/// The runtime queries execute on, apart from network I/O.
pub(crate) fn query_runtime(config: &Config) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(query_threads(config))
        .thread_name("strata-query")
        // Planning recurses over the statement's tree: room for the
        // deepest one the nesting limits let through, in a debug build too.
        .thread_stack_size(QUERY_THREAD_STACK)
        .enable_all()
        .build()
        .map_err(startup("starting the query runtime"))
}

/// The listeners of one process: gRPC, HTTP and PostgreSQL.
pub(crate) struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
    pub pg: TcpListener,
}

/// Binds the gRPC, HTTP and PostgreSQL listeners named by the configuration.
pub(crate) async fn bind(config: &Config) -> Result<Listeners> {
    let grpc_listener = TcpListener::bind(config.server.grpc_addr)
        .await
        .map_err(|e| {
            Error::Internal(format!("binding gRPC to {}: {e}", config.server.grpc_addr))
        })?;
    let http_listener = TcpListener::bind(config.server.http_addr)
        .await
        .map_err(|e| {
            Error::Internal(format!("binding HTTP to {}: {e}", config.server.http_addr))
        })?;
    let pg = crate::pg::bind(config.server.pg_addr).await?;
    Ok(Listeners {
        grpc: grpc_listener,
        http: http_listener,
        pg,
    })
}

/// Serves gRPC, HTTP and PostgreSQL until a shutdown signal, then stops them.
pub(crate) async fn serve(
    config: &Config,
    query: QueryEngine,
    listeners: Listeners,
    role: &str,
    control: Option<
        strata_proto::meta::shard_control_server::ShardControlServer<
            crate::cluster::ShardControlService,
        >,
    >,
) -> Result<()> {
    let Listeners {
        grpc: grpc_listener,
        http: http_listener,
        pg: pg_listener,
    } = listeners;
    let grpc_addr = grpc_listener
        .local_addr()
        .map_err(startup("reading the gRPC address"))?;
    let http_addr = http_listener
        .local_addr()
        .map_err(startup("reading the HTTP address"))?;
    let pg_addr = pg_listener
        .local_addr()
        .map_err(startup("reading the PostgreSQL address"))?;
    // Standalone answers `Route` with its own address; listening on all
    // interfaces without an advertised address (as in a container) keeps
    // the listen address, which clients on this host can still reach.
    let advertise = config.server.advertised(grpc_addr).unwrap_or_else(|e| {
        if role == "standalone" {
            tracing::warn!("{e}; Route answers name {grpc_addr}");
        }
        (grpc_addr.ip().to_string(), grpc_addr.port())
    });
    let storage =
        StorageServiceImpl::new(query.clone(), advertise, config.server.auto_create_table)
            .with_max_decoded(config.server.max_decoded());
    let max_message = config.server.grpc_max_message();
    let service = StorageServiceServer::new(storage.clone())
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let control = control.map(|c| {
        c.max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message)
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut grpc_stop = stop_rx.clone();
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(service)
            .add_optional_service(control)
            .serve_with_incoming_shutdown(
                // Small responses must not wait for Nagle's algorithm: set
                // TCP_NODELAY on every accepted connection (tonic's own
                // setting applies only to listeners it creates).
                tokio_stream::StreamExt::map(
                    tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
                    |conn| {
                        if let Ok(stream) = &conn {
                            let _ = stream.set_nodelay(true);
                        }
                        conn
                    },
                ),
                async move {
                    let _ = grpc_stop.changed().await;
                },
            ),
    );
    let pg = tokio::spawn(crate::pg::serve(
        pg_listener,
        query.clone(),
        crate::pg::conn::PgLimits::new(
            config.server.pg_max_message_size,
            config.server.pg_max_connections,
        ),
        stop_rx.clone(),
    ));
    let mut http_stop = stop_rx.clone();
    let http = tokio::spawn(
        axum::serve(
            http_listener,
            http::router(query, storage, config.server.max_body()),
        )
        .with_graceful_shutdown(async move {
            let _ = http_stop.changed().await;
        })
        .into_future(),
    );
    tracing::info!(%grpc_addr, %http_addr, %pg_addr, data_dir = %config.server.data_dir.display(),
        "Strata {role} is serving");

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let _ = grpc.await;
        let _ = http.await;
        let _ = pg.await;
    })
    .await;
    Ok(())
}

/// What an instance of a cluster does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Leads and follows the shards meta assigns it.
    #[default]
    Data,
    /// Holds no shard: answers queries by reading tables' SSTs from the
    /// object store, and only the rows not flushed yet from their leaders.
    Compute,
}

/// Runs an instance in cluster mode until a shutdown signal: registers with
/// meta, serves the shards meta assigns (none for a compute instance), and
/// answers gRPC and HTTP.
pub async fn run_cluster(
    mut config: Config,
    meta_endpoints: Vec<String>,
    role: Role,
) -> Result<()> {
    use crate::cluster::{Cluster, MetaCatalog, MetaClient, ShardControlService};
    use crate::storage;
    use std::sync::Arc;
    use strata_engine::Engine;
    if config.engine.cluster == strata_engine::EngineConfig::default().cluster {
        // Never share topics and object-store paths with a standalone
        // process on the same Kafka and S3.
        config.engine.cluster = "cluster".to_string();
    }
    if role == Role::Data && !matches!(config.wal, crate::config::WalConfig::Kafka(_)) {
        return Err(Error::InvalidArgument(
            "cluster mode needs the Kafka WAL (wal.kind = \"kafka\"): a shard's WAL must be readable by whichever instance opens it".into(),
        ));
    }
    if matches!(
        config.object_store,
        crate::config::ObjectStoreConfig::Local { .. }
    ) {
        tracing::warn!(
            "cluster mode with a local object store: every instance must share the directory"
        );
    }
    std::fs::create_dir_all(&config.server.data_dir)
        .map_err(|e| Error::Internal(format!("creating the data directory: {e}")))?;
    let store = storage::open_object_store(&config)?;
    let listeners = bind(&config).await?;
    let grpc_addr = listeners
        .grpc
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let http_addr = listeners
        .http
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let (host, port) = config
        .server
        .advertised(grpc_addr)
        .map_err(Error::InvalidArgument)?;
    let secret = config.server.cluster_secret.clone();
    if secret.is_none() {
        tracing::error!(
            "no cluster secret is configured (server.cluster_secret or $STRATA_CLUSTER_SECRET): \
             this instance refuses every control RPC from meta (shard events, table drops) and \
             learns of changes only from its heartbeats; a meta that has a secret refuses this \
             instance. Set the same secret on meta and every instance"
        );
    }
    let meta = Arc::new(
        MetaClient::new(&meta_endpoints, secret.as_ref()).map_err(Error::InvalidArgument)?,
    );
    let engine = Engine::open_cluster(
        config.engine.clone(),
        store,
        Arc::new(MetaCatalog::new(meta.clone())),
    )?;
    let cluster = Cluster::new(
        format!("{host}:{port}"),
        format!("{host}:{}", http_addr.port()),
        meta,
        engine.clone(),
        Arc::new(storage::ConfiguredWal(config.clone())),
        role == Role::Compute,
    );
    // Ready once meta knows us and the catalog is loaded.
    cluster.wait_for_meta().await;
    if role == Role::Compute && !cluster.compute_endpoints().contains(&cluster.node_id) {
        // A meta older than compute instances took this one for a data
        // instance and may give it shards it will never open.
        return Err(Error::InvalidArgument(
            "meta does not list this instance as a compute instance: it is older than              `--role compute`; upgrade meta first"
                .into(),
        ));
    }
    let heartbeats = tokio::spawn(cluster.clone().run());
    let query_runtime = query_runtime(&config)?;
    let query = QueryEngine::with_router(
        engine.clone(),
        query_runtime.handle().clone(),
        query_threads(&config),
        cluster.clone(),
    )
    .with_limits(crate::sql::QueryLimits::new(&config.query))
    .reading_followers(config.query.read_preference == crate::config::ReadPreference::Follower)
    .offloading_reads(config.query.offload_reads && role == Role::Data);
    let control = strata_proto::meta::shard_control_server::ShardControlServer::new(
        ShardControlService::new(cluster.clone(), secret),
    );
    let what = match role {
        Role::Data => "server",
        Role::Compute => "compute server",
    };
    serve(&config, query, listeners, what, Some(control)).await?;
    heartbeats.abort();
    cluster.hand_back_all().await;
    if let Err(e) = engine.close().await {
        tracing::warn!(error = %e, "closing the engine failed; the WAL holds every acknowledged row");
    }
    query_runtime.shutdown_background();
    tracing::info!("stopped");
    Ok(())
}
