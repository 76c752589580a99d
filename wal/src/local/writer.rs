//! The group-commit writer thread of the local WAL.

use std::{
    fs::File,
    io::Write,
    sync::{atomic::Ordering, Arc},
};

use tokio::sync::mpsc;

use super::{
    create_segment, format, segment_path, AppendRequest, LocalWalOptions, Segment, Shared,
};
use crate::{AppendResult, Error, WalOffset};

pub(super) struct WriterState {
    pub shared: Arc<Shared>,
    pub file: File,
    pub size: u64,
    pub next: u64,
    pub options: LocalWalOptions,
}

/// Runs until every sender is dropped.
pub(super) fn run(mut state: WriterState, mut receiver: mpsc::Receiver<AppendRequest>) {
    let mut buf = Vec::with_capacity(1024 * 1024);
    while let Some(first) = receiver.blocking_recv() {
        let mut batch = vec![first];
        let mut records: usize = batch[0].payloads.len();
        while records < state.options.max_batch_records {
            match receiver.try_recv() {
                Ok(req) => {
                    records += req.payloads.len();
                    batch.push(req);
                }
                Err(_) => break,
            }
        }
        commit(&mut state, &mut buf, batch);
    }
    let _ = state.file.sync_data();
}

fn commit(state: &mut WriterState, buf: &mut Vec<u8>, batch: Vec<AppendRequest>) {
    if let Some(reason) = state.shared.poisoned.lock().clone() {
        for req in batch {
            let _ = req.reply.send(Err(Error::Poisoned {
                reason: reason.clone(),
            }));
        }
        return;
    }
    if state.size >= state.options.segment_size {
        if let Err(e) = roll(state) {
            let reason = e.to_string();
            *state.shared.poisoned.lock() = Some(reason.clone());
            for req in batch {
                let _ = req.reply.send(Err(Error::Poisoned {
                    reason: reason.clone(),
                }));
            }
            return;
        }
    }

    buf.clear();
    let start = state.next;
    let mut next = start;
    let mut ranges = Vec::with_capacity(batch.len());
    for req in &batch {
        let first = next;
        for payload in &req.payloads {
            format::encode(buf, next, req.epoch.0, payload);
            next += 1;
        }
        ranges.push((first, next));
    }

    let result = state
        .file
        .write_all(buf)
        .and_then(|()| state.file.sync_data());
    match result {
        Ok(()) => {
            state.size += buf.len() as u64;
            state.next = next;
            state.shared.committed.store(next, Ordering::Release);
            for (req, (first, end)) in batch.into_iter().zip(ranges) {
                let _ = req.reply.send(Ok(AppendResult {
                    offsets: (first..end).map(WalOffset).collect(),
                }));
            }
        }
        Err(e) => {
            // The file's contents past `size` are unknown, and after a failed
            // fsync the page cache may have dropped dirty pages: refuse
            // further writes until the region is reopened and rescanned.
            let _ = state.file.set_len(state.size);
            let reason = format!("write or fsync failed: {e}");
            tracing::error!(%reason, "local WAL poisoned");
            *state.shared.poisoned.lock() = Some(reason);
            for req in batch {
                let _ = req.reply.send(Err(Error::Io {
                    op: "appending to",
                    path: state.shared.dir.clone(),
                    source: std::io::Error::new(e.kind(), e.to_string()),
                }));
            }
        }
    }
}

fn roll(state: &mut WriterState) -> crate::Result<()> {
    let dir = state.shared.dir.clone();
    state.file.sync_all().map_err(|source| Error::Io {
        op: "syncing segment in",
        path: dir.clone(),
        source,
    })?;
    let path = segment_path(&dir, state.next);
    let file = create_segment(&dir, &path)?;
    state.shared.segments.write().push(Segment {
        first: state.next,
        path,
    });
    state.file = file;
    state.size = 0;
    Ok(())
}
