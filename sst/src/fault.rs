//! A fault-injecting [`ObjectStore`] wrapper, for tests of what the engine
//! does when the store's answers are wrong or ambiguous: a put that was
//! applied but answered with a timeout (the caller cannot tell it from a
//! put that never arrived), a request that fails before it reaches the
//! store, a delete that is refused.
//!
//! Rules match an operation and a path substring and fire a given number of
//! times; the first matching rule with firings left applies.

use std::{fmt, sync::Arc};

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::{
    path::Path, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use parking_lot::Mutex;

/// The operations a rule can match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Put,
    Get,
    Delete,
    List,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fails with a timeout-like error without touching the store.
    FailBefore,
    /// Applies the operation, then fails with a timeout-like error: the
    /// caller does not know that it succeeded.
    ApplyThenTimeout,
}

#[derive(Debug, Clone)]
struct Rule {
    op: Op,
    path_contains: String,
    fault: Fault,
    remaining: u32,
}

/// An [`ObjectStore`] that injects faults by rule.
#[derive(Debug)]
pub struct FaultStore {
    inner: Arc<dyn ObjectStore>,
    rules: Arc<Mutex<Vec<Rule>>>,
    fired: Arc<Mutex<Vec<(Op, String, Fault)>>>,
}

impl fmt::Display for FaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultStore({})", self.inner)
    }
}

fn injected(op: Op, path: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "FaultStore",
        source: format!("injected fault: {op:?} {path} timed out").into(),
    }
}

impl FaultStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            rules: Arc::new(Mutex::new(Vec::new())),
            fired: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// Adds a rule: the next `times` operations `op` on a path containing
    /// `path_contains` get `fault`.
    pub fn inject(&self, op: Op, path_contains: &str, fault: Fault, times: u32) {
        self.rules.lock().push(Rule {
            op,
            path_contains: path_contains.to_string(),
            fault,
            remaining: times,
        });
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.rules.lock().clear();
    }

    /// The faults fired so far: operation, path, fault.
    pub fn fired(&self) -> Vec<(Op, String, Fault)> {
        self.fired.lock().clone()
    }

    fn take(&self, op: Op, path: &Path) -> Option<Fault> {
        take(&self.rules, &self.fired, op, path)
    }
}

type Fired = Mutex<Vec<(Op, String, Fault)>>;

fn take(rules: &Mutex<Vec<Rule>>, fired: &Fired, op: Op, path: &Path) -> Option<Fault> {
    let p = path.as_ref();
    let mut rules = rules.lock();
    let rule = rules
        .iter_mut()
        .find(|r| r.op == op && r.remaining > 0 && p.contains(&r.path_contains))?;
    rule.remaining -= 1;
    let fault = rule.fault;
    fired.lock().push((op, p.to_string(), fault));
    Some(fault)
}

#[async_trait]
impl ObjectStore for FaultStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        match self.take(Op::Put, location) {
            Some(Fault::FailBefore) => Err(injected(Op::Put, location.as_ref())),
            Some(Fault::ApplyThenTimeout) => {
                self.inner.put_opts(location, payload, opts).await?;
                Err(injected(Op::Put, location.as_ref()))
            }
            None => self.inner.put_opts(location, payload, opts).await,
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        if self.take(Op::Put, location) == Some(Fault::FailBefore) {
            return Err(injected(Op::Put, location.as_ref()));
        }
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        match self.take(Op::Get, location) {
            Some(Fault::FailBefore) => Err(injected(Op::Get, location.as_ref())),
            Some(Fault::ApplyThenTimeout) => {
                self.inner.get_opts(location, options).await?;
                Err(injected(Op::Get, location.as_ref()))
            }
            None => self.inner.get_opts(location, options).await,
        }
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        use futures::StreamExt;
        let rules = self.rules.clone();
        let fired = self.fired.clone();
        let checked = locations
            .map(move |loc| {
                let loc = loc?;
                match take(&rules, &fired, Op::Delete, &loc) {
                    Some(Fault::FailBefore) => Err(injected(Op::Delete, loc.as_ref())),
                    _ => Ok(loc),
                }
            })
            .boxed();
        self.inner.delete_stream(checked)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        if let Some(p) = prefix {
            if self.take(Op::List, p) == Some(Fault::FailBefore) {
                let e = injected(Op::List, p.as_ref());
                return Box::pin(futures::stream::once(async move { Err(e) }));
            }
        }
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        if let Some(p) = prefix {
            if self.take(Op::List, p) == Some(Fault::FailBefore) {
                return Err(injected(Op::List, p.as_ref()));
            }
        }
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
