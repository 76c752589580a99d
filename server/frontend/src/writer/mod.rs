//! The write path for rows in Arrow. Every protocol builds them straight
//! from its request (gRPC in `strata-server`'s `grpc/write.rs`, line
//! protocol in `influx/rows.rs`, remote write in [`crate::prom`]'s
//! decoder), appending through one set of type rules ([`columns`]); the
//! tables it names are resolved here, created on write or given new
//! columns in one way ([`table_for_write`], [`add_columns`]). Each table's
//! rows are written here when its shard is open here, else forwarded to the
//! shard's leader as `WriteArrow` ([`crate::sql::remote::forward_batches`],
//! which routes a refused forward again while the shard moves). Tables are
//! written concurrently, so the local ones share a WAL group commit.

pub mod columns;
#[cfg(test)]
mod fake_router_tests;
mod tables;

pub use tables::{add_columns, table_for_write, WriteTable};

use std::time::Instant;

use arrow::record_batch::RecordBatch;
use strata_engine::{options::UpdateMode, Located};

use crate::{
    error::{Error, Result},
    sql::{remote, QueryEngine},
};

/// A table's columns as this instance knows them: the open table's, or the
/// catalog's for a table led elsewhere (its leader fits the rows to its
/// own by name).
pub fn columns_of(
    engine: &strata_engine::Engine,
    db: &str,
    table: &str,
) -> strata_engine::Result<(
    strata_engine::schema::TableSchema,
    arrow::datatypes::SchemaRef,
)> {
    let entry = match engine.locate(db, table) {
        Ok(Located::Local(t)) => {
            let meta = t.meta();
            return Ok((meta.schema().clone(), meta.arrow_schema.clone()));
        }
        Ok(Located::Remote(entry) | Located::Partitioned(entry)) => *entry,
        // Moving between shards: its definition is the catalog's, and the
        // write waits for the move (see `write_batches`).
        Err(strata_engine::Error::TableMoving { .. }) => engine.entry(db, table)?,
        Err(e) => return Err(e),
    };
    let arrow = entry.schema.arrow_schema();
    Ok((entry.schema, arrow))
}

/// How [`write_batches`] may reach a table whose shard is not open here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    /// Not at all: the write fails with `NotServedHere` (a request another
    /// instance forwarded here).
    Never,
    /// Only a partitioned table's partitions (which a client cannot route
    /// to), as [`Forward::Whole`]; for any other table the write fails with
    /// `NotServedHere` (a client that did not ask for proxy mode).
    Partitions,
    /// As one `WriteArrow` per table, written whole or refused whole. Rows
    /// that take more than `max_decoded` bytes of Arrow (the receiver
    /// refuses a payload that decodes to more than its
    /// `server.max_decoded_size`) are refused before anything is written.
    Whole,
    /// In `WriteArrow`s of at most half of `max_decoded` bytes each, for
    /// `OVERWRITE` tables whose rows carry their own timestamps, where a
    /// retry after a partial failure rewrites the same rows instead of
    /// duplicating them (the Prometheus tables). Other tables' rows go whole.
    Split,
}

/// A table's rows, checked and ready to write.
enum Ready {
    /// Fitted to a table open here.
    Local(std::sync::Arc<strata_engine::table::Table>, RecordBatch),
    /// For the leader of a table led elsewhere.
    Remote(Box<strata_engine::catalog::TableEntry>, RecordBatch),
}

/// Writes `(table, rows)` of database `db`; the tables must exist. Returns
/// the rows written. Rows are matched to each table's columns by name
/// ([`strata_engine::schema::fit_rows`]); everything that can be refused
/// here is refused before anything is written. Tables on shards open here
/// are written concurrently (one WAL group commit); the others are
/// forwarded to their leaders as `forward` allows, routed again while a
/// shard moves, until `deadline`. With [`Forward::Whole`] the forwards go
/// first, and the local tables are written only once every forward
/// succeeded (a refused forward leaves nothing of the request written
/// here); with [`Forward::Split`] everything runs at once. Every write
/// runs to its end, also when another fails: the first error is returned.
pub async fn write_batches(
    query: &QueryEngine,
    db: &str,
    tables: Vec<(String, RecordBatch)>,
    max_decoded: usize,
    forward: Forward,
    deadline: Instant,
) -> Result<u64> {
    loop {
        match write_once(query, db, tables.clone(), max_decoded, forward, deadline).await {
            // A table being handed to another shard (a split or a merge)
            // refused its rows before writing any, and nothing else was
            // written (a partial write is another error): once the catalog
            // moves it, the same request goes to its new shard. (A request
            // forwarded here is retried by the instance that forwarded it.)
            Err(e)
                if forward != Forward::Never
                    && e.kind() == strata_engine::ErrorKind::ShardMoving
                    && Instant::now() < deadline =>
            {
                tracing::debug!(error = %e, "a table is moving between shards; retrying the write");
                tokio::time::sleep(crate::route::MOVE_POLL).await;
            }
            other => return other,
        }
    }
}

async fn write_once(
    query: &QueryEngine,
    db: &str,
    tables: Vec<(String, RecordBatch)>,
    max_decoded: usize,
    forward: Forward,
    deadline: Instant,
) -> Result<u64> {
    let engine = query.engine();
    let router = query.router();
    let mut forward = if router.is_distributed() {
        forward
    } else {
        Forward::Never
    };
    let partitions_only = forward == Forward::Partitions;
    // A partitioned table's rows go to its partitions.
    let mut by_table = Vec::with_capacity(tables.len());
    for (table, batch) in tables {
        if batch.num_rows() == 0 {
            continue;
        }
        match engine.locate(db, &table)? {
            Located::Partitioned(parent) => {
                // Its partitions are wherever meta put them: a client
                // cannot route to them, so this instance forwards (the
                // forwards go first, see `Forward::Whole`).
                if forward == Forward::Partitions {
                    forward = Forward::Whole;
                }
                let parts = match crate::sql::partitioned::split_rows(engine, &parent, &batch) {
                    // A table created through another instance a moment
                    // ago: meta announced to this instance only the
                    // partitions it leads. Take meta's catalog once.
                    Err(strata_engine::Error::CatalogChanged(reason))
                        if router.is_distributed() =>
                    {
                        tracing::debug!(table = %table, %reason, "refreshing the catalog");
                        router.refresh_catalog().await?;
                        let Located::Partitioned(parent) = engine.locate(db, &table)? else {
                            return Err(strata_engine::Error::CatalogChanged(format!(
                                "table {table} is no longer partitioned"
                            ))
                            .into());
                        };
                        crate::sql::partitioned::split_rows(engine, &parent, &batch)?
                    }
                    other => other?,
                };
                for (part, rows) in parts {
                    by_table.push((part.name, rows, true));
                }
            }
            located => {
                // Straight to a partition: only rows that belong there.
                let entry = match &located {
                    Located::Local(t) => t.meta().entry.clone(),
                    Located::Remote(e) | Located::Partitioned(e) => (**e).clone(),
                };
                crate::sql::partitioned::check_partition_rows(engine, &entry, &batch)?;
                by_table.push((table, batch, false));
            }
        }
    }
    let mut ready = Vec::with_capacity(by_table.len());
    for (table, batch, of_partitioned) in by_table {
        match engine.locate(db, &table)? {
            Located::Partitioned(_) => {
                return Err(strata_engine::Error::Internal(format!(
                    "partition {table} is partitioned itself"
                ))
                .into())
            }
            Located::Local(t) => {
                let rows =
                    strata_engine::schema::fit_rows(&batch, &t.arrow_schema()).map_err(|e| {
                        strata_engine::Error::InvalidWrite {
                            table: table.clone(),
                            reason: e.to_string(),
                        }
                    })?;
                ready.push(Ready::Local(t, rows));
            }
            Located::Remote(entry) => {
                if forward == Forward::Never || (partitions_only && !of_partitioned) {
                    return Err(strata_engine::Error::NotServedHere {
                        table,
                        shard: entry.shard,
                    }
                    .into());
                }
                let whole =
                    forward == Forward::Whole || entry.options.update_mode != UpdateMode::Overwrite;
                // About what the leader decodes (it refuses more than its
                // `max_decoded_size`); the builders' capacity makes this
                // an overestimate.
                let bytes = batch.get_array_memory_size();
                if whole && bytes > max_decoded {
                    return Err(Error::TooLarge(format!(
                        "the rows for table {table} take {bytes} bytes in Arrow, more than one \
                         write forwarded to its leader may carry (server.max_decoded_size, \
                         {max_decoded} bytes); send fewer rows per request"
                    )));
                }
                ready.push(Ready::Remote(entry, batch));
            }
        }
    }
    // A request that reaches several tables (or partitions) is not atomic
    // across them: when an APPEND table's rows were written and another
    // part failed, a retry of the whole would write those rows again, so
    // the answer is a partial write (not retryable), whatever the error.
    let partial = |results: Vec<(bool, Result<u64>)>| -> Result<u64> {
        let appended: u64 = results
            .iter()
            .filter(|(append, _)| *append)
            .filter_map(|(_, r)| r.as_ref().ok())
            .sum();
        match all_of(results.into_iter().map(|(_, r)| r).collect()) {
            Err(e) if appended > 0 => Err(strata_engine::Error::PartialWrite {
                written: appended,
                tables: "some of its tables or partitions".to_string(),
                reason: e.to_string(),
            }
            .into()),
            other => other,
        }
    };
    let write = |r: Ready| async move {
        let append = match &r {
            Ready::Local(t, _) => t.meta().options().update_mode != UpdateMode::Overwrite,
            Ready::Remote(e, _) => e.options.update_mode != UpdateMode::Overwrite,
        };
        let result = async move {
            match r {
                Ready::Local(t, rows) => Ok::<u64, Error>(t.write(rows).await? as u64),
                Ready::Remote(entry, batch) => {
                    let parts = match (forward, entry.options.update_mode) {
                        (Forward::Split, UpdateMode::Overwrite) => split(&batch, max_decoded / 2),
                        _ => vec![batch],
                    };
                    let mut written = 0;
                    for part in parts {
                        written +=
                            remote::forward_batches(router.as_ref(), &entry, vec![part], deadline)
                                .await
                                .map_err(Error::from)?;
                    }
                    Ok(written)
                }
            }
        }
        .await;
        (append, result)
    };
    if forward == Forward::Whole {
        let (remote, local): (Vec<Ready>, Vec<Ready>) = ready
            .into_iter()
            .partition(|r| matches!(r, Ready::Remote(..)));
        let forwarded = futures::future::join_all(remote.into_iter().map(write)).await;
        let appended: u64 = forwarded
            .iter()
            .filter(|(append, _)| *append)
            .filter_map(|(_, r)| r.as_ref().ok())
            .sum();
        let forwarded_rows = partial(forwarded)?;
        let mut written = futures::future::join_all(local.into_iter().map(write)).await;
        // What was forwarded counts as written when a local write fails.
        written.push((false, Ok(forwarded_rows - appended)));
        written.push((true, Ok(appended)));
        return partial(written);
    }
    partial(futures::future::join_all(ready.into_iter().map(write)).await)
}

/// The sum of the rows written, or the first error.
fn all_of(results: Vec<Result<u64>>) -> Result<u64> {
    let mut written = 0;
    let mut first_error = None;
    for result in results {
        match result {
            Ok(n) => written += n,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(written),
    }
}

/// `batch` in slices of about `max_bytes` of row data each (at least one
/// row per slice).
fn split(batch: &RecordBatch, max_bytes: usize) -> Vec<RecordBatch> {
    let rows = batch.num_rows();
    let bytes = strata_engine::memtable::batch_bytes(batch).max(1);
    if bytes <= max_bytes || rows <= 1 {
        return vec![batch.clone()];
    }
    let per = (rows as u128 * max_bytes as u128 / bytes as u128).max(1) as usize;
    (0..rows)
        .step_by(per)
        .flat_map(|start| {
            let piece = batch.slice(start, per.min(rows - start));
            // Rows are not all the same size: a piece of larger ones is
            // split again.
            if piece.num_rows() > 1 && strata_engine::memtable::batch_bytes(&piece) > max_bytes {
                let half = piece.num_rows() / 2;
                let mut both = split(&piece.slice(0, half), max_bytes);
                both.extend(split(
                    &piece.slice(half, piece.num_rows() - half),
                    max_bytes,
                ));
                both
            } else {
                vec![piece]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use arrow::array::{Array, Int64Array};

    use super::*;

    #[test]
    fn split_keeps_every_row_in_order_within_the_bound() {
        let batch = RecordBatch::try_from_iter([(
            "n",
            Arc::new(Int64Array::from_iter_values(0..10_000)) as _,
        )])
        .unwrap();
        let whole = batch.get_array_memory_size();
        assert_eq!(split(&batch, whole).len(), 1);
        let parts = split(&batch, whole / 8);
        assert!(parts.len() >= 8, "{}", parts.len());
        let mut next = 0;
        for p in &parts {
            let col = p.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            for i in 0..col.len() {
                assert_eq!(col.value(i), next);
                next += 1;
            }
        }
        assert_eq!(next, 10_000);
    }

    /// Rows of uneven size: every piece is within the bound.
    #[test]
    fn split_bounds_pieces_of_uneven_rows() {
        let values: Vec<String> = (0..1_000)
            .map(|i| {
                if i < 100 {
                    "x".repeat(10_000)
                } else {
                    "y".to_string()
                }
            })
            .collect();
        let batch = RecordBatch::try_from_iter([(
            "s",
            Arc::new(arrow::array::StringArray::from(values)) as _,
        )])
        .unwrap();
        let max = strata_engine::memtable::batch_bytes(&batch) / 4;
        let parts = split(&batch, max);
        assert_eq!(parts.iter().map(|p| p.num_rows()).sum::<usize>(), 1_000);
        for p in &parts {
            assert!(
                strata_engine::memtable::batch_bytes(p) <= max,
                "a piece of {} rows is {} bytes, over {max}",
                p.num_rows(),
                strata_engine::memtable::batch_bytes(p)
            );
        }
    }
}
