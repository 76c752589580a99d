//! Encoding rows as `ArrowPayload`: Arrow IPC streams, optionally
//! zstd-compressed, with types that every HoraeDB SDK can read. Query
//! results are sent this way, and instances forward writes this way
//! (`WriteArrow`); [`crate::decode_payload_checked`] reads them back.

use std::sync::Arc;

use arrow::error::ArrowError;
use arrow::{
    array::{ArrayRef, RecordBatch},
    compute::cast,
    datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit},
    ipc::writer::StreamWriter,
};
use strata_proto::storage::{arrow_payload::Compression, ArrowPayload};

type Result<T> = std::result::Result<T, ArrowError>;

/// Payloads above this size are zstd-compressed.
const COMPRESS_ABOVE: usize = 64 * 1024;

/// The wire type of a result column: view, large and dictionary types become
/// their plain forms and timestamps become milliseconds, which is what
/// HoraeDB's SDKs decode.
fn wire_type(t: &DataType) -> DataType {
    match t {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        DataType::Dictionary(_, value) => wire_type(value),
        DataType::Timestamp(unit, tz) if *unit != TimeUnit::Millisecond => {
            DataType::Timestamp(TimeUnit::Millisecond, tz.clone())
        }
        other => other.clone(),
    }
}

/// The schema results are sent with.
pub fn wire_schema(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), wire_type(f.data_type()), f.is_nullable()))
            .collect::<Vec<_>>(),
    ))
}

/// Converts a batch to the wire schema.
pub fn to_wire(batch: &RecordBatch, wire: &SchemaRef) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .zip(wire.fields())
        .map(|(col, field)| {
            if col.data_type() == field.data_type() {
                Ok(col.clone())
            } else {
                cast(col, field.data_type()).map_err(|e| {
                    ArrowError::CastError(format!("converting column {}: {e}", field.name()))
                })
            }
        })
        .collect::<Result<_>>()?;
    RecordBatch::try_new(wire.clone(), columns)
}

/// Encodes batches as one IPC stream in one payload.
pub fn encode(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<ArrowPayload> {
    let wire = wire_schema(schema);
    let mut buf = Vec::new();
    {
        let mut writer = StreamWriter::try_new(&mut buf, &wire)?;
        for batch in batches {
            writer.write(&to_wire(batch, &wire)?)?;
        }
        writer.finish()?;
    }
    if buf.len() > COMPRESS_ABOVE {
        let compressed =
            zstd::bulk::compress(&buf, 1).map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
        return Ok(ArrowPayload {
            record_batches: vec![compressed],
            compression: Compression::Zstd as i32,
        });
    }
    Ok(ArrowPayload {
        record_batches: vec![buf],
        compression: Compression::None as i32,
    })
}
