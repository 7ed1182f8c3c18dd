//! Bulk ingest (`CommandStatementIngest`, what ADBC's `adbc_ingest` sends) into
//! `market.trades`, with the validation of `load`: one bad row refuses the whole request, and
//! nothing is written.

use arrow::array::RecordBatch;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::sql::server::PeekableFlightDataStream;
use arrow_flight::sql::{CommandStatementIngest, TableExistsOption};
use futures::TryStreamExt;

use super::error::{Error, Result};
use crate::storage::{TableKind, TableWriter};

/// The table an ingest command names; only `trades` takes rows from clients.
pub fn target(
    command: &CommandStatementIngest,
    catalog: &str,
    namespace: &str,
) -> Result<TableKind> {
    let qualified = format!(
        "{}{}{}",
        command
            .catalog
            .as_deref()
            .map_or(String::new(), |c| format!("{c}.")),
        command
            .schema
            .as_deref()
            .map_or(String::new(), |s| format!("{s}.")),
        command.table
    );
    if let Some(other) = command.catalog.as_deref().filter(|c| *c != catalog) {
        return Err(Error::NotFound(format!(
            "catalog '{other}' does not exist (asked for table {qualified}): this server's \
             catalog is '{catalog}'; ingest into {catalog}.{namespace}.trades, or leave the \
             catalog unset"
        )));
    }
    if let Some(other) = command.schema.as_deref().filter(|s| *s != namespace) {
        return Err(Error::NotFound(format!(
            "schema '{other}' does not exist (asked for table {qualified}); ingest goes into \
             {namespace}.trades"
        )));
    }
    if command.temporary {
        return Err(Error::InvalidRequest(
            "temporary tables are not supported".into(),
        ));
    }
    match command.table.as_str() {
        "trades" => {}
        t if TableKind::all().any(|k| k.name() == t) => {
            return Err(Error::PermissionDenied(format!(
                "{namespace}.{t} is built by the server from trades; ingest into {namespace}.trades"
            )))
        }
        _ => {
            return Err(Error::NotFound(format!(
                "table {qualified} does not exist; ingest goes into {namespace}.trades"
            )))
        }
    }
    if let Some(options) = &command.table_definition_options {
        match TableExistsOption::try_from(options.if_exists) {
            Ok(TableExistsOption::Append) => {}
            Ok(TableExistsOption::Fail) | Ok(TableExistsOption::Unspecified) => {
                return Err(Error::AlreadyExists(format!(
                    "{namespace}.trades exists; ingest with mode 'append'"
                )))
            }
            Ok(TableExistsOption::Replace) => {
                return Err(Error::InvalidRequest(format!(
                    "{namespace}.trades is append-only; it cannot be replaced"
                )))
            }
            Err(_) => {
                return Err(Error::InvalidRequest(format!(
                    "unknown if_exists option {}",
                    options.if_exists
                )))
            }
        }
        // The table always exists, so `if_not_exist` never applies.
    }
    Ok(TableKind::Trades)
}

/// Decodes the record batches of a DoPut.
pub async fn collect(stream: PeekableFlightDataStream) -> Result<Vec<RecordBatch>> {
    FlightRecordBatchStream::new_from_flight_data(stream.map_err(Into::into))
        .try_collect()
        .await
        .map_err(decode_error)
}

fn decode_error(e: arrow_flight::error::FlightError) -> Error {
    Error::InvalidRequest(format!("cannot decode the uploaded batches: {e}"))
}

/// Rows validated and held before they are written as files: bounds an ingest's memory.
const CHUNK_ROWS: usize = 250_000;

/// Ingests a DoPut as it arrives: each batch is validated, and every [`CHUNK_ROWS`] rows are
/// written as files while the next chunk is received and validated (so at most two chunks
/// are held, whatever the upload's size, and the client is not stalled while a chunk is
/// sorted and encoded). One commit at the end makes every row visible at once; a bad row
/// (named by its position in the upload) or a broken stream discards the files written so
/// far and commits nothing.
pub async fn ingest_stream(
    writer: &TableWriter,
    kind: TableKind,
    stream: PeekableFlightDataStream,
    ingested_at: i64,
    limits: &crate::trades::Limits,
) -> Result<i64> {
    let mut upload = Upload {
        batches: FlightRecordBatchStream::new_from_flight_data(stream.map_err(Into::into)),
        offset: 0,
        bytes: 0,
        ingested_at,
        limits,
    };
    let mut staged = writer.stage(kind).await?;
    let read = async {
        let mut chunk = upload.next_chunk().await?;
        while !chunk.is_empty() {
            let (next, written) =
                tokio::join!(upload.next_chunk(), writer.stage_rows(&mut staged, &chunk));
            // A bad row further on names its position: it is the more useful error.
            chunk = next?;
            written?;
        }
        Ok::<_, Error>(())
    }
    .await;
    if let Err(e) = read {
        writer.discard_staged(staged).await;
        return Err(e);
    }
    if staged.rows() == 0 {
        return Ok(0);
    }
    let added = writer.commit_staged(staged).await?.rows_added;
    let m = crate::metrics::metrics();
    m.ingest_rows.inc_by(added.max(0) as u64);
    m.ingest_bytes.inc_by(upload.bytes as u64);
    Ok(added)
}

/// The batches of one DoPut, validated as they are decoded.
struct Upload<'a, S> {
    batches: S,
    /// Rows before the next batch, to name a bad row by its position in the upload.
    offset: usize,
    bytes: usize,
    ingested_at: i64,
    limits: &'a crate::trades::Limits,
}

impl<S> Upload<'_, S>
where
    S: futures::Stream<Item = std::result::Result<RecordBatch, arrow_flight::error::FlightError>>
        + Unpin,
{
    /// The next [`CHUNK_ROWS`] or more validated rows; empty at the end of the upload.
    async fn next_chunk(&mut self) -> Result<Vec<RecordBatch>> {
        let mut chunk = Vec::new();
        let mut rows = 0;
        while rows < CHUNK_ROWS {
            let Some(batch) = self.batches.try_next().await.map_err(decode_error)? else {
                break;
            };
            if batch.num_rows() == 0 {
                continue;
            }
            chunk.push(crate::trades::normalize_with(
                &batch,
                self.offset,
                self.ingested_at,
                Some(self.limits),
            )?);
            self.offset += batch.num_rows();
            self.bytes += batch.get_array_memory_size();
            rows += batch.num_rows();
        }
        Ok(chunk)
    }
}
