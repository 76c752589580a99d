//! The meta client: fails over between meta processes and maps meta's
//! answers to the engine's errors.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use strata_meta::secret::{AttachSecret, ClusterSecret};
use strata_proto::meta::{meta_service_client::MetaServiceClient, MetaHeader};
use tonic::{
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
};

/// How often an instance heartbeats.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// A client of the meta service that fails over between meta processes.
#[derive(Debug)]
pub struct MetaClient {
    channels: Vec<(String, Channel)>,
    /// Attaches the cluster secret to every call.
    secret: AttachSecret,
    /// The index of the meta process that answered last.
    current: AtomicU64,
}

pub(super) type EngineResult<T> = strata_engine::Result<T>;

/// A meta client whose calls carry the cluster secret.
pub(super) type MetaRpc = MetaServiceClient<InterceptedService<Channel, AttachSecret>>;

pub(super) fn unavailable(what: impl std::fmt::Display) -> strata_engine::Error {
    strata_engine::Error::MetaUnavailable(format!("meta unavailable: {what}"))
}

impl MetaClient {
    /// `endpoints` are meta gRPC addresses (`host:port`); `secret` goes
    /// with every call.
    pub fn new(endpoints: &[String], secret: Option<&ClusterSecret>) -> Result<Self, String> {
        if endpoints.is_empty() {
            return Err("no meta endpoints given".to_string());
        }
        let mut channels = Vec::new();
        for e in endpoints {
            let url = if e.contains("://") {
                e.clone()
            } else {
                format!("http://{e}")
            };
            let ch = Endpoint::from_shared(url)
                .map_err(|err| format!("meta endpoint {e}: {err}"))?
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(5))
                .connect_lazy();
            channels.push((e.clone(), ch));
        }
        Ok(Self {
            channels,
            secret: AttachSecret::new(secret),
            current: AtomicU64::new(0),
        })
    }

    /// Calls `f` on each meta process in turn, starting with the last one
    /// that answered, until one answers without a transport error or a 503.
    pub(super) async fn call<T, F, Fut>(&self, f: F) -> EngineResult<T>
    where
        F: Fn(MetaRpc) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
        T: HasHeader,
    {
        let n = self.channels.len();
        let start = self.current.load(Ordering::Relaxed) as usize;
        let mut last = String::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let (name, ch) = &self.channels[idx];
            match f(MetaServiceClient::with_interceptor(
                ch.clone(),
                self.secret.clone(),
            ))
            .await
            {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    match resp.header() {
                        Some(h) if h.code == 503 => {
                            last = format!("{name}: {}", h.error);
                        }
                        _ => {
                            self.current.store(idx as u64, Ordering::Relaxed);
                            return Ok(resp);
                        }
                    }
                }
                Err(status) => last = format!("{name}: {}", status.message()),
            }
        }
        Err(unavailable(last))
    }
}

pub(super) trait HasHeader {
    fn header(&self) -> Option<&MetaHeader>;
}

macro_rules! has_header {
    ($($t:ty),*) => {$(
        impl HasHeader for $t {
            fn header(&self) -> Option<&MetaHeader> {
                self.header.as_ref()
            }
        }
    )*};
}

has_header!(
    strata_proto::meta::HeartbeatResponse,
    strata_proto::meta::ShardLockResponse,
    strata_proto::meta::DdlResponse,
    strata_proto::meta::TableResponse,
    strata_proto::meta::CatalogResponse,
    strata_proto::meta::MetaRouteResponse
);

/// Checks a meta answer's header; maps 404/409 to the engine's errors.
pub(super) fn check(
    header: Option<&MetaHeader>,
    not_found: impl FnOnce() -> strata_engine::Error,
    exists: impl FnOnce() -> strata_engine::Error,
) -> EngineResult<()> {
    match header.map_or(500, |h| h.code) {
        200 => Ok(()),
        404 => Err(not_found()),
        409 => Err(exists()),
        400 => Err(strata_engine::Error::Unsupported(
            header.map(|h| h.error.clone()).unwrap_or_default(),
        )),
        503 => Err(unavailable(header.map(|h| h.error.as_str()).unwrap_or(""))),
        _ => Err(strata_engine::Error::Catalog(
            header.map(|h| h.error.clone()).unwrap_or_default(),
        )),
    }
}

/// Whether meta answered that a newer process took this node id over.
pub(super) fn is_superseded(header: Option<&MetaHeader>) -> bool {
    header.is_some_and(|h| h.code == 409 && h.error.starts_with("superseded"))
}

/// Checks an answer that has no expected 404 or 409.
pub(super) fn check_ok(header: Option<&MetaHeader>) -> EngineResult<()> {
    check(
        header,
        || strata_engine::Error::Catalog("unexpected 404 from meta".into()),
        || strata_engine::Error::Catalog("unexpected 409 from meta".into()),
    )
}
