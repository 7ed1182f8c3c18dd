//! Stateless prepared statements: the handle is the SQL plus the bound parameters (Arrow IPC),
//! so nothing is kept on the server between calls; binding parameters returns a new handle
//! (`DoPutPreparedStatementResult`), as Flight SQL allows.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::ipc::reader::StreamDecoder;
use arrow::ipc::writer::StreamWriter;
use datafusion::scalar::ScalarValue;
use prost::Message;

use super::error::{Error, Result};

/// What a prepared statement handle carries.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Handle {
    #[prost(string, tag = "1")]
    pub sql: String,
    /// One-row Arrow IPC stream of the bound parameters; empty when none are bound.
    #[prost(bytes = "vec", tag = "2")]
    pub parameters: Vec<u8>,
}

impl Handle {
    pub fn new(sql: String) -> Handle {
        Handle {
            sql,
            parameters: Vec::new(),
        }
    }

    pub fn decode_bytes(bytes: &[u8]) -> Result<Handle> {
        Handle::decode(bytes)
            .map_err(|e| Error::InvalidRequest(format!("malformed prepared statement handle: {e}")))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    /// Binds `batches` (what the client sent with DoPut): exactly one row of values.
    pub fn bind(self, batches: &[RecordBatch]) -> Result<Handle> {
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        if rows != 1 {
            return Err(Error::InvalidRequest(format!(
                "a query binds exactly one row of parameters, got {rows}"
            )));
        }
        let batch = batches
            .iter()
            .find(|b| b.num_rows() == 1)
            .expect("one row exists");
        let mut bytes = Vec::new();
        let mut writer = StreamWriter::try_new(&mut bytes, &batch.schema())?;
        writer.write(batch)?;
        writer.finish()?;
        drop(writer);
        Ok(Handle {
            parameters: bytes,
            ..self
        })
    }

    /// The bound values, positionally (`$1`, `$2`, ... or `?`), or `None` when unbound.
    pub fn params(&self) -> Result<Option<Vec<ScalarValue>>> {
        if self.parameters.is_empty() {
            return Ok(None);
        }
        // The handle comes back from the client: it may be forged, so nothing in it is trusted.
        let forged = |why: String| {
            Error::InvalidRequest(format!("malformed prepared statement handle: {why}"))
        };
        // A push decoder: it holds only the bytes that arrived, where a reader would first
        // allocate whatever length a forged header declares (2 GB and 5 s for 89 bytes, found by
        // tests/fuzz_regressions.rs).
        let mut decoder = StreamDecoder::new();
        let mut buffer = Buffer::from(self.parameters.as_slice());
        let mut batches: Vec<RecordBatch> = Vec::new();
        while !buffer.is_empty() {
            if let Some(batch) = decoder
                .decode(&mut buffer)
                .map_err(|e| forged(e.to_string()))?
            {
                batches.push(batch);
            }
        }
        decoder.finish().map_err(|e| forged(e.to_string()))?;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let Some(batch) = batches
            .iter()
            .find(|b| b.num_rows() == 1)
            .filter(|_| rows == 1)
        else {
            return Err(forged(format!("{rows} rows of parameters, not one")));
        };
        let values = batch
            .columns()
            .iter()
            .map(|column| ScalarValue::try_from_array(column, 0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| forged(e.to_string()))?;
        Ok(Some(values))
    }
}

/// The parameter schema of a statement: `$1`, `$2`, ... in order, typed where DataFusion could
/// infer the type from the context (else `Null`, meaning any). `named` adds placeholders the
/// plan does not show (table function arguments).
pub fn parameter_schema(
    mut types: HashMap<String, Option<DataType>>,
    named: impl IntoIterator<Item = String>,
) -> Schema {
    for name in named {
        types.entry(name).or_insert(None);
    }
    let mut named: Vec<(String, DataType)> = types
        .into_iter()
        .map(|(name, ty)| (name, ty.unwrap_or(DataType::Null)))
        .collect();
    named.sort_by_key(|(name, _)| {
        name.trim_start_matches('$')
            .parse::<usize>()
            .unwrap_or(usize::MAX)
    });
    Schema::new(
        named
            .into_iter()
            .map(|(name, ty)| Arc::new(Field::new(name, ty, true)))
            .collect::<Vec<_>>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    #[test]
    fn handles_round_trip_with_their_parameters() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Utf8, true),
            Field::new("b", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["BTC-USD"])),
                Arc::new(Int64Array::from(vec![7])),
            ],
        )
        .unwrap();
        let h = Handle::new("select $1, $2".into()).bind(&[batch]).unwrap();
        let back = Handle::decode_bytes(&h.to_bytes()).unwrap();
        assert_eq!(back, h);
        let values = back.params().unwrap().unwrap();
        assert_eq!(values[0], ScalarValue::Utf8(Some("BTC-USD".into())));
        assert_eq!(values[1], ScalarValue::Int64(Some(7)));
        assert!(Handle::decode_bytes(b"\xff\xff").is_err());
    }

    #[test]
    fn forged_parameters_are_refused_not_trusted() {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
        let empty = RecordBatch::new_empty(Arc::clone(&schema));
        let mut bytes = Vec::new();
        let mut writer = StreamWriter::try_new(&mut bytes, &schema).unwrap();
        writer.write(&empty).unwrap();
        writer.finish().unwrap();
        drop(writer);
        for parameters in [bytes, b"garbage".to_vec()] {
            let forged = Handle {
                sql: "select $1".into(),
                parameters,
            };
            let err = forged.params().unwrap_err();
            assert!(matches!(err, Error::InvalidRequest(_)), "{err}");
        }
    }
}
