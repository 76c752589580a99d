//! The write path for rows already in Arrow (remote write builds them
//! straight from the request): each table's rows are written here when
//! its shard is open here, else forwarded to the shard's leader as
//! `WriteArrow` ([`crate::sql::remote::forward_batches`], which routes a
//! refused forward again while the shard moves). Tables are written
//! concurrently, so the local ones share a WAL group commit.
//!
//! This is the start of RFC 0005's one `Writer`: gRPC `Write` and line
//! protocol still go through `StorageServiceImpl::write_request`.

use std::time::Instant;

use arrow::record_batch::RecordBatch;
use strata_engine::Located;

use crate::{
    error::{Error, Result},
    sql::{remote, QueryEngine},
};

/// Writes `(table, rows)` of database `db`; the tables must exist. Returns
/// the rows written. Rows are matched to each table's columns by name
/// ([`strata_engine::schema::fit_rows`]). A forward carries at most half of
/// `max_decoded` bytes of Arrow (the receiver refuses a payload that
/// decodes to more than its `server.max_decoded_size`): larger rows go in
/// several forwards, each written whole or refused whole. Only for
/// `OVERWRITE` tables, where a retry after a partial failure rewrites the
/// same rows instead of duplicating them (the Prometheus tables).
pub(crate) async fn write_batches(
    query: &QueryEngine,
    db: &str,
    tables: Vec<(String, RecordBatch)>,
    max_decoded: usize,
) -> Result<u64> {
    let deadline = Instant::now() + remote::MOVE_WAIT;
    let writes = tables.into_iter().map(|(table, batch)| async move {
        if batch.num_rows() == 0 {
            return Ok::<u64, Error>(0);
        }
        match query.engine().locate(db, &table)? {
            Located::Local(t) => {
                let rows =
                    strata_engine::schema::fit_rows(&batch, &t.arrow_schema()).map_err(|e| {
                        strata_engine::Error::InvalidWrite {
                            table: table.clone(),
                            reason: e.to_string(),
                        }
                    })?;
                Ok(t.write(rows).await? as u64)
            }
            Located::Remote(entry) => match query.cluster() {
                Some(cluster) => {
                    let mut written = 0;
                    for part in split(&batch, max_decoded / 2) {
                        written += remote::forward_batches(cluster, &entry, vec![part], deadline)
                            .await
                            .map_err(Error::from)?;
                    }
                    Ok(written)
                }
                None => Err(strata_engine::Error::NotServedHere {
                    table,
                    shard: entry.shard,
                }
                .into()),
            },
        }
    });
    Ok(futures::future::try_join_all(writes)
        .await?
        .into_iter()
        .sum())
}

/// `batch` in slices of about `max_bytes` of Arrow memory each (at least
/// one row per slice).
fn split(batch: &RecordBatch, max_bytes: usize) -> Vec<RecordBatch> {
    let rows = batch.num_rows();
    let bytes = batch.get_array_memory_size().max(1);
    if bytes <= max_bytes || rows <= 1 {
        return vec![batch.clone()];
    }
    let per = (rows as u128 * max_bytes as u128 / bytes as u128).max(1) as usize;
    (0..rows)
        .step_by(per)
        .map(|start| batch.slice(start, per.min(rows - start)))
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
}
