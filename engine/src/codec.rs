//! The payload of a WAL record: one write to one table.
//!
//! ```text
//! +-----------+-------------+----------+---------------+-----------------------+
//! | magic 'S' | version u8  | kind u8  | table_id u64  | schema_version u32    |
//! +-----------+-------------+----------+---------------+-----------------------+
//! | Arrow IPC stream: the schema, then the rows (LZ4-compressed buffers)       |
//! +----------------------------------------------------------------------------+
//! ```
//!
//! A fence marker (kind 2) is the header alone, with the table id field
//! holding the writer's epoch: a new shard leader appends one before it
//! replays, so that every record of the leader it replaced is either before
//! the marker (and replayed) or after it (and refused; see
//! `strata_wal::kafka`). Replay skips markers.
//!
//! Integers are little-endian. The rows are column-wise Arrow, so decoding is
//! a memcpy-and-decompress rather than a per-row parse. The IPC stream carries
//! its own schema, so records written before a schema change still decode.
//! The WAL adds the CRC and the offset; see `strata_wal::local`.

use std::io::Cursor;

use arrow::{
    ipc::{reader::StreamReader, writer::IpcWriteOptions, writer::StreamWriter, CompressionType},
    record_batch::RecordBatch,
};
use bytes::Bytes;
use strata_sst::TableId;

use crate::{Error, Result};

const MAGIC: u8 = b'S';
const VERSION: u8 = 1;
const KIND_WRITE: u8 = 1;
const KIND_FENCE: u8 = 2;
const HEADER_LEN: usize = 3 + 8 + 4;

/// A decoded WAL payload.
#[derive(Debug)]
pub struct WriteRecord {
    pub table: TableId,
    pub schema_version: u32,
    pub batch: RecordBatch,
}

/// Encodes one write.
pub fn encode_write(table: TableId, schema_version: u32, batch: &RecordBatch) -> Result<Bytes> {
    let arrow_err = |source| Error::Arrow {
        op: "encoding a WAL record",
        source: Box::new(source),
    };
    let mut buf = Vec::with_capacity(HEADER_LEN + batch.get_array_memory_size() / 2 + 256);
    buf.push(MAGIC);
    buf.push(VERSION);
    buf.push(KIND_WRITE);
    buf.extend_from_slice(&table.0.to_le_bytes());
    buf.extend_from_slice(&schema_version.to_le_bytes());
    let options = IpcWriteOptions::default()
        .try_with_compression(Some(CompressionType::LZ4_FRAME))
        .map_err(arrow_err)?;
    let mut writer = StreamWriter::try_new_with_options(&mut buf, &batch.schema(), options)
        .map_err(arrow_err)?;
    writer.write(batch).map_err(arrow_err)?;
    writer.finish().map_err(arrow_err)?;
    drop(writer);
    Ok(Bytes::from(buf))
}

/// Encodes the fence marker a new leader of a shard appends before replay.
pub fn encode_fence(epoch: u64) -> Bytes {
    let mut buf = Vec::with_capacity(HEADER_LEN);
    buf.push(MAGIC);
    buf.push(VERSION);
    buf.push(KIND_FENCE);
    buf.extend_from_slice(&epoch.to_le_bytes());
    buf.extend_from_slice(&0u32.to_le_bytes());
    Bytes::from(buf)
}

/// Whether `payload` is a fence marker.
pub fn is_fence(payload: &[u8]) -> bool {
    payload.len() == HEADER_LEN
        && payload[0] == MAGIC
        && payload[1] == VERSION
        && payload[2] == KIND_FENCE
}

/// The most one LZ4 frame can expand to: about 255 times (a length byte
/// per 255 bytes of a match), with slack for tiny buffers.
fn max_decompressed(compressed: usize) -> u64 {
    (compressed as u64).saturating_mul(256).saturating_add(1024)
}

/// Checks the lengths an Arrow IPC stream declares before arrow-ipc reads
/// it: arrow allocates what the stream declares (metadata, body, the
/// decompressed size of each buffer) before reading it, so a few damaged
/// bytes could ask for exabytes and abort the process. Every message must
/// fit in the payload, and every compressed buffer must declare a size it
/// can expand to. Anything else wrong is left to arrow-ipc to refuse.
fn check_ipc_lengths(mut ipc: &[u8]) -> Result<()> {
    let damaged = |what: String| Err(Error::Codec(format!("damaged Arrow IPC stream: {what}")));
    loop {
        let Some((word, rest)) = ipc.split_first_chunk::<4>() else {
            return Ok(());
        };
        // A continuation marker, then the length (or, in the legacy
        // format, the length alone).
        let Some((word, rest)) = (if *word == [0xff; 4] {
            rest.split_first_chunk::<4>()
        } else {
            Some((word, rest))
        }) else {
            return Ok(());
        };
        let Ok(meta_len) = usize::try_from(i32::from_le_bytes(*word)) else {
            return Ok(());
        };
        if meta_len == 0 {
            return Ok(());
        }
        if meta_len > rest.len() {
            return damaged(format!(
                "a message of {meta_len} bytes in {} bytes",
                rest.len()
            ));
        }
        let (meta, rest) = rest.split_at(meta_len);
        let Ok(message) = arrow::ipc::root_as_message(meta) else {
            return Ok(());
        };
        let body_len = message.bodyLength();
        let Some(body_len) = usize::try_from(body_len).ok().filter(|&n| n <= rest.len()) else {
            return damaged(format!(
                "a body of {body_len} bytes in {} bytes",
                rest.len()
            ));
        };
        let (body, rest) = rest.split_at(body_len);
        ipc = rest;
        let batch = message
            .header_as_record_batch()
            .or_else(|| message.header_as_dictionary_batch().and_then(|d| d.data()));
        let Some(batch) = batch.filter(|b| b.compression().is_some()) else {
            continue;
        };
        for b in batch.buffers().into_iter().flatten() {
            let (Ok(offset), Ok(len)) = (usize::try_from(b.offset()), usize::try_from(b.length()))
            else {
                continue;
            };
            let Some(buf) = offset
                .checked_add(len)
                .and_then(|end| body.get(offset..end))
            else {
                continue;
            };
            let Some(prefix) = buf.first_chunk::<8>() else {
                continue;
            };
            let declared = i64::from_le_bytes(*prefix);
            if declared > 0 && declared as u64 > max_decompressed(buf.len() - 8) {
                return damaged(format!(
                    "a buffer of {} bytes declares {declared} bytes uncompressed",
                    buf.len()
                ));
            }
        }
    }
}

/// [`check_ipc_lengths`] for Arrow IPC streams from elsewhere (a client's
/// `WriteArrow` rows): refuses declared lengths the bytes cannot hold before
/// arrow-ipc allocates them.
pub fn check_ipc_stream(ipc: &[u8]) -> Result<()> {
    check_ipc_lengths(ipc)
}

/// Decodes one write payload.
pub fn decode(payload: &[u8]) -> Result<WriteRecord> {
    if payload.len() < HEADER_LEN {
        return Err(Error::Codec(format!(
            "payload of {} bytes is too short",
            payload.len()
        )));
    }
    if payload[0] != MAGIC || payload[1] != VERSION {
        return Err(Error::Codec(format!(
            "unknown payload format (magic {:#x}, version {})",
            payload[0], payload[1]
        )));
    }
    if payload[2] != KIND_WRITE {
        return Err(Error::Codec(format!("unknown payload kind {}", payload[2])));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&payload[3..11]);
    let mut version = [0u8; 4];
    version.copy_from_slice(&payload[11..15]);
    // arrow-ipc trusts the stream it reads: a damaged schema or batch can
    // make it panic (an unknown type is `unimplemented!`), where replay needs
    // an error. The bytes are checked by the WAL's CRC, but a Kafka topic
    // can be written by anyone who reaches the broker.
    let ipc = &payload[HEADER_LEN..];
    check_ipc_lengths(ipc)?;
    let read = std::panic::catch_unwind(|| -> Result<Vec<RecordBatch>> {
        let arrow_err = |source| Error::Arrow {
            op: "decoding a WAL record",
            source: Box::new(source),
        };
        let reader = StreamReader::try_new(Cursor::new(ipc), None).map_err(arrow_err)?;
        let mut batches = Vec::with_capacity(1);
        for batch in reader {
            batches.push(batch.map_err(arrow_err)?);
        }
        Ok(batches)
    });
    let mut batches = match read {
        Ok(batches) => batches?,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            return Err(Error::Codec(format!(
                "the record's Arrow IPC stream is damaged: {what}"
            )));
        }
    };
    if batches.len() != 1 {
        return Err(Error::Codec(format!(
            "a write record holds one batch, found {}",
            batches.len()
        )));
    }
    let batch = batches
        .pop()
        .ok_or_else(|| Error::Codec("empty record".into()))?;
    Ok(WriteRecord {
        table: TableId(u64::from_le_bytes(id)),
        schema_version: u32::from_le_bytes(version),
        batch,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use arrow::{
        array::{Float64Array, StringArray},
        datatypes::{DataType, Field, Schema},
    };

    use super::*;

    #[test]
    fn roundtrip_and_reject_garbage() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("h", DataType::Utf8, true),
            Field::new("v", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(Float64Array::from(vec![1.0, 2.0])),
            ],
        )
        .unwrap();
        let bytes = encode_write(TableId(42), 3, &batch).unwrap();
        let rec = decode(&bytes).unwrap();
        assert_eq!((rec.table, rec.schema_version), (TableId(42), 3));
        assert_eq!(rec.batch, batch);
        assert!(decode(b"xx").is_err());
        assert!(!is_fence(&bytes));
        let fence = encode_fence(7);
        assert!(is_fence(&fence));
        assert!(decode(&fence).is_err());
        assert!(decode(&bytes[..bytes.len() - 4]).is_err());
    }

    /// Found by fuzzing (`fuzz/corpus/wal_payload/crash-unknown-arrow-type`):
    /// an unknown Arrow type id in the IPC schema made arrow-ipc panic
    /// (`unimplemented!`); decoding answers an error.
    #[test]
    fn damaged_ipc_schema_is_an_error() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fuzz/corpus/wal_payload/crash-unknown-arrow-type"
        );
        let bytes = std::fs::read(path).unwrap();
        let err = decode(&bytes).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
    }
}
