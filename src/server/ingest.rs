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
    if command.catalog.as_deref().is_some_and(|c| c != catalog)
        || command.schema.as_deref().is_some_and(|s| s != namespace)
    {
        return Err(Error::NotFound(format!("table {qualified} does not exist")));
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
        .map_err(|e| Error::InvalidRequest(format!("cannot decode the uploaded batches: {e}")))
}

/// Validates every row, then appends all batches in one commit stamped `ingested_at`; returns
/// the rows written.
pub async fn ingest(
    writer: &TableWriter,
    kind: TableKind,
    batches: &[RecordBatch],
    ingested_at: i64,
    limits: &crate::trades::Limits,
) -> Result<i64> {
    let mut rows = Vec::with_capacity(batches.len());
    let mut offset = 0;
    for batch in batches.iter().filter(|b| b.num_rows() > 0) {
        rows.push(crate::trades::normalize_with(
            batch,
            offset,
            ingested_at,
            Some(limits),
        )?);
        offset += batch.num_rows();
    }
    if rows.is_empty() {
        return Ok(0);
    }
    let outcome = writer.append(kind, &rows, Default::default()).await?;
    Ok(outcome.rows_added)
}
