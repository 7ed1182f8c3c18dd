//! The Flight SQL service: statements and catalog metadata.
//!
//! Tickets are stateless: a statement's ticket carries its SQL, so any replica (or this one
//! after a restart) can serve it, and nothing is kept per client.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use arrow::datatypes::Schema;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::{SqlInfoData, XdbcTypeInfoData};
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::server::PeekableFlightDataStream;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetExportedKeys, CommandGetImportedKeys, CommandGetPrimaryKeys, CommandGetSqlInfo,
    CommandGetTableTypes, CommandGetTables, CommandGetXdbcTypeInfo, CommandPreparedStatementQuery,
    CommandStatementIngest, CommandStatementQuery, DoPutPreparedStatementResult, ProstMessageExt,
    SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest,
    HandshakeResponse, Ticket,
};
use futures::{Stream, TryStreamExt};
use prost::bytes::Bytes;
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use super::error::Error;
use super::prepared::{self, Handle};
use super::profile::Profile;
use super::query::{Query, QueryEngine};
use super::{ingest, keys};
use crate::auth::{Auth, Identity, Role};
use crate::candles::shape::Shape;
use crate::candles::Statement;
use crate::clock::Clock;
use crate::storage::{TableKind, TableWriter};

type DataStream = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send + 'static>>;

type HandshakeStream = Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>;

/// Flight SQL over our tables.
#[derive(Clone)]
pub struct OhlcvFlightSql {
    engine: QueryEngine,
    writer: TableWriter,
    auth: Arc<Auth>,
    clock: Arc<dyn Clock>,
    sql_info: Arc<SqlInfoData>,
    xdbc_types: Arc<XdbcTypeInfoData>,
    limits: crate::trades::Limits,
    /// Flight locations of the servers on this lake (`[cluster] endpoints`), named in the
    /// query endpoints so that clients spread their DoGets; a ticket is valid on any of them.
    locations: Arc<(Vec<String>, std::sync::atomic::AtomicUsize)>,
    /// Live subscriptions: `live_candles(...)` statements and DoExchange.
    push: crate::push::Hub,
}

impl OhlcvFlightSql {
    /// Names `locations` in every query's endpoint, rotated from one query to the next.
    pub fn with_locations(mut self, locations: Vec<String>) -> OhlcvFlightSql {
        self.locations = Arc::new((locations, std::sync::atomic::AtomicUsize::new(0)));
        self
    }

    fn spread(&self, mut info: Response<FlightInfo>) -> Response<FlightInfo> {
        let (locations, next) = &*self.locations;
        if locations.is_empty() {
            return info;
        }
        let start = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % locations.len();
        let rotated: Vec<arrow_flight::Location> = locations[start..]
            .iter()
            .chain(&locations[..start])
            .map(|uri| arrow_flight::Location { uri: uri.clone() })
            .collect();
        for endpoint in &mut info.get_mut().endpoint {
            endpoint.location = rotated.clone();
        }
        info
    }

    pub fn new(
        engine: QueryEngine,
        writer: TableWriter,
        auth: Arc<Auth>,
        clock: Arc<dyn Clock>,
        limits: crate::trades::Limits,
        push: crate::push::Hub,
    ) -> OhlcvFlightSql {
        OhlcvFlightSql {
            push,
            engine,
            writer,
            auth,
            clock,
            sql_info: Arc::new(super::sql_info::sql_info()),
            xdbc_types: Arc::new(super::types::xdbc_types()),
            limits,
            locations: Arc::new((Vec::new(), std::sync::atomic::AtomicUsize::new(0))),
        }
    }

    /// `statement` ready to run. A candle read seen before is not parsed again.
    async fn query(&self, statement: &Statement) -> Result<Query, Status> {
        if let Some(shape) = self.engine.reads().recognised(statement) {
            crate::metrics::metrics()
                .statements
                .with_label_values(&["candle_read"])
                .inc();
            return Ok(Query::Candles(shape));
        }
        let query = match statement {
            Statement::Sql(sql) => {
                let sql = std::str::from_utf8(sql)
                    .map_err(|_| Status::invalid_argument("statement is not UTF-8 SQL"))?;
                self.engine.query(sql, None).await?
            }
            Statement::Prepared(handle) => {
                let handle = Handle::decode_bytes(handle)?;
                let params = handle.params()?;
                self.engine.query(&handle.sql, params.as_deref()).await?
            }
        };
        let path = match &query {
            Query::Candles(shape) => {
                self.engine
                    .reads()
                    .remember(statement.clone(), Arc::clone(shape));
                "candle_read"
            }
            Query::Live(_) => "subscription",
            Query::Plan(_) => "plan",
        };
        crate::metrics::metrics()
            .statements
            .with_label_values(&[path])
            .inc();
        Ok(query)
    }

    /// Streams a statement's results batch by batch: results are never collected in memory
    /// here, and a client that goes away drops the stream, which stops the query. Direct
    /// candles are one batch, encoded once per cache generation (see `answers`).
    async fn stream_results(
        &self,
        statement: &Statement,
        query: Query,
        client_deadline: Option<std::time::Duration>,
        profile: Profile,
        user: &str,
    ) -> Result<Response<DataStream>, Status> {
        let df = match query {
            Query::Plan(df) => *df,
            // Held to the subscription limits, not to the statement timeout: it stays open.
            Query::Live(live) => {
                let subscription = self
                    .push
                    .subscribe(&live.spec, user)
                    .await
                    .map_err(Error::from)?;
                return Ok(Response::new(live_stream(
                    subscription,
                    Some(live.columns.clone()),
                    profile,
                )));
            }
            Query::Candles(shape) => {
                let data = self.candles(statement, &shape, profile).await?;
                let stream =
                    futures::stream::iter((0..data.len()).map(move |i| Ok(data[i].clone())));
                return Ok(Response::new(Box::pin(stream)));
            }
        };
        let schema = profile.schema(&Arc::new(df.schema().as_arrow().clone()));
        let typed = Arc::clone(&schema);
        // The request's span (see `telemetry`) ends with the response headers; the rows are
        // counted as they stream and logged in it when the stream ends.
        let span = tracing::Span::current();
        let rows = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&rows);
        let batches = df
            .execute_stream()
            .await
            .map_err(|e| Status::from(Error::from(e)))?
            .inspect_ok(move |b| {
                counted.fetch_add(b.num_rows(), std::sync::atomic::Ordering::Relaxed);
            })
            .map_err(Error::from)
            .and_then(move |b| futures::future::ready(profile.batch(b, &typed)))
            .map_err(|e| arrow_flight::error::FlightError::Tonic(Box::new(e.into())));
        let finished = futures::StreamExt::filter_map(
            futures::stream::once(async move {
                let rows = rows.load(std::sync::atomic::Ordering::Relaxed);
                tracing::info!(parent: &span, rows, "rows streamed");
            }),
            |()| async { None::<Result<FlightData, Status>> },
        );
        let stream = futures::StreamExt::chain(
            FlightDataEncoderBuilder::new()
                .with_schema(schema)
                .build(batches)
                .map_err(Status::from),
            finished,
        );
        let stream = super::deadline::limit(stream, self.engine.timeout(), client_deadline);
        Ok(Response::new(Box::pin(stream)))
    }

    /// The Flight messages answering a candle read, typed for `profile` (kept per cache
    /// generation by the read room when its answer depends on the tables alone).
    async fn candles(
        &self,
        statement: &Statement,
        shape: &Shape,
        profile: Profile,
    ) -> Result<Arc<[FlightData]>, Status> {
        let schema = profile.schema(&shape.schema);
        let encode = |batch| async move {
            let batch = profile.batch(batch, &schema)?;
            let data: Vec<FlightData> = FlightDataEncoderBuilder::new()
                .with_schema(schema)
                .build(futures::stream::once(async { Ok(batch) }))
                .try_collect()
                .await
                .map_err(|e| Error::Internal(format!("encoding an answer: {e}")))?;
            Ok::<_, Error>(data)
        };
        Ok(self
            .engine
            .reads()
            .answer(statement, shape, profile as u8, encode)
            .await?)
    }

    /// The tables this server exposes: (schema, table, Arrow schema).
    fn tables(&self) -> Result<Vec<(String, String, Arc<Schema>)>, Status> {
        let mut tables: Vec<(String, String, Arc<Schema>)> = TableKind::all()
            .map(|k| {
                let schema = k.arrow_schema().map_err(Error::from)?;
                Ok((self.engine.namespace().to_string(), k.name(), schema))
            })
            .collect::<Result<_, Status>>()?;
        for (name, schema) in super::system::tables() {
            tables.push(("system".into(), name.into(), schema));
        }
        Ok(tables)
    }
}

fn info_for(
    schema: &Schema,
    ticket: Vec<u8>,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(format!("cannot encode schema: {e}")))?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

/// The FlightInfo of a statement. The schema of `candles()` is encoded once, not per request.
fn query_info(
    query: &Query,
    ticket: Vec<u8>,
    descriptor: FlightDescriptor,
    profile: Profile,
) -> Result<Response<FlightInfo>, Status> {
    let schema = query.schema();
    if profile != Profile::Exact || !Arc::ptr_eq(&schema, &crate::candles::schema()) {
        return info_for(&profile.schema(&schema), ticket, descriptor);
    }
    static CANDLES: OnceLock<Result<FlightInfo, String>> = OnceLock::new();
    let template = CANDLES.get_or_init(|| {
        FlightInfo::new()
            .try_with_schema(&crate::candles::schema())
            .map_err(|e| e.to_string())
    });
    let info = template
        .clone()
        .map_err(|e| Status::internal(format!("cannot encode schema: {e}")))?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

/// A subscription as Flight data: `columns` of each batch (all when `None`), typed for
/// `profile`, ending with the status the server ended it with.
fn live_stream(
    subscription: crate::push::Subscription,
    columns: Option<Vec<usize>>,
    profile: Profile,
) -> DataStream {
    let full = crate::push::candle::schema();
    let schema = match &columns {
        Some(c) => Arc::new(full.project(c).unwrap_or_else(|_| full.as_ref().clone())),
        None => full,
    };
    let schema = profile.schema(&schema);
    let typed = Arc::clone(&schema);
    let batches = subscription
        .map_err(Error::from)
        .and_then(move |b| {
            let projected = match &columns {
                Some(c) => b.project(c).map_err(Error::from),
                None => Ok(b),
            };
            futures::future::ready(projected.and_then(|b| profile.batch(b, &typed)))
        })
        .map_err(|e| arrow_flight::error::FlightError::Tonic(Box::new(e.into())));
    Box::pin(
        FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(Status::from),
    )
}

fn one_batch<E>(
    schema: Arc<Schema>,
    batch: Result<arrow::array::RecordBatch, E>,
) -> Response<DataStream>
where
    E: Into<arrow_flight::error::FlightError> + Send + 'static,
{
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::once(
            async move { batch.map_err(Into::into) },
        ))
        .map_err(Status::from);
    Response::new(Box::pin(stream))
}

#[tonic::async_trait]
impl FlightSqlService for OhlcvFlightSql {
    type FlightService = OhlcvFlightSql;

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let profile = Profile::of(request.metadata())?;
        let sql = Bytes::from(query.query);
        let planned = self.query(&Statement::Sql(sql.clone())).await?;
        let ticket = TicketStatementQuery {
            statement_handle: sql,
        };
        query_info(
            &planned,
            ticket.as_any().encode_to_vec(),
            request.into_inner(),
            profile,
        )
        .map(|info| self.spread(info))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let profile = Profile::of(request.metadata())?;
        let statement = Statement::Sql(ticket.statement_handle);
        let query = self.query(&statement).await?;
        let deadline = super::deadline::client_deadline(request.metadata());
        let user = Identity::of(&request)?.user;
        self.stream_results(&statement, query, deadline, profile, &user)
            .await
    }

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<HandshakeStream>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if !self.auth.enabled() {
            let empty = HandshakeResponse::default();
            return Ok(Response::new(Box::pin(futures::stream::iter([Ok(empty)]))));
        }
        // argon2 is deliberately slow: verify off the async workers.
        let auth = Arc::clone(&self.auth);
        let header = header.map(str::to_owned);
        let address = request.remote_addr().map(|a| a.ip());
        let token = tokio::task::spawn_blocking(move || auth.login(header.as_deref(), address))
            .await
            .map_err(|e| Status::internal(format!("login task failed: {e}")))??;
        let bearer = format!("Bearer {token}");
        let body = HandshakeResponse {
            protocol_version: 0,
            payload: token.into_bytes().into(),
        };
        let mut response: Response<HandshakeStream> =
            Response::new(Box::pin(futures::stream::iter([Ok(body)])));
        response.metadata_mut().insert(
            "authorization",
            bearer
                .parse()
                .map_err(|_| Status::internal("token is not a header value"))?,
        );
        Ok(response)
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let profile = Profile::of(request.metadata())?;
        let (df, placeholders) = self.engine.prepare(&query.query).await?;
        let dataset = profile.schema(&Arc::new(df.schema().as_arrow().clone()));
        let parameters = df
            .logical_plan()
            .get_parameter_types()
            .map_err(Error::from)?;
        let options = arrow::ipc::writer::IpcWriteOptions::default();
        let ipc = |schema: &Schema| -> Result<_, Status> {
            let message = arrow_flight::SchemaAsIpc::new(schema, &options);
            let arrow_flight::IpcMessage(bytes) = message.try_into().map_err(Error::from)?;
            Ok(bytes)
        };
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: Handle::new(query.query).to_bytes().into(),
            dataset_schema: ipc(&dataset)?,
            parameter_schema: ipc(&prepared::parameter_schema(parameters, placeholders))?,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        // Stateless handles: nothing to free, but a garbled one is still the client's error.
        Handle::decode_bytes(&query.prepared_statement_handle)?;
        Ok(())
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let handle = Handle::decode_bytes(&query.prepared_statement_handle)?;
        let batches = ingest::collect(request.into_inner()).await?;
        let bound = handle.bind(&batches)?;
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(bound.to_bytes().into()),
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let profile = Profile::of(request.metadata())?;
        let planned = self
            .query(&Statement::Prepared(
                query.prepared_statement_handle.clone(),
            ))
            .await?;
        query_info(
            &planned,
            query.as_any().encode_to_vec(),
            request.into_inner(),
            profile,
        )
        .map(|info| self.spread(info))
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let profile = Profile::of(request.metadata())?;
        let statement = Statement::Prepared(query.prepared_statement_handle);
        let query = self.query(&statement).await?;
        let deadline = super::deadline::client_deadline(request.metadata());
        let user = Identity::of(&request)?.user;
        self.stream_results(&statement, query, deadline, profile, &user)
            .await
    }

    /// A live subscription: the first message's descriptor command is the JSON subscription
    /// (see `push::spec`); the response is the candles as they stand, then every change.
    /// Later messages from the client are not read.
    async fn do_exchange_fallback(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<<Self as FlightService>::DoExchangeStream>, Status> {
        let user = Identity::of(&request)?.user;
        let profile = Profile::of(request.metadata())?;
        let mut messages = request.into_inner();
        let first = messages
            .message()
            .await?
            .ok_or_else(|| Error::InvalidRequest("DoExchange: no message".into()))?;
        let command = first
            .flight_descriptor
            .map(|d| d.cmd)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                Error::InvalidRequest(
                    "DoExchange: the first message's descriptor carries the subscription \
                     (a JSON command)"
                        .into(),
                )
            })?;
        let spec = crate::push::Spec::from_json(&command).map_err(Error::from)?;
        let subscription = self
            .push
            .subscribe(&spec, &user)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(live_stream(subscription, None, profile)))
    }

    /// A DoPut without a command (an empty upload) is the client's mistake, not a missing
    /// feature: the crate's default answers `Unimplemented`.
    async fn do_put_error_callback(
        &self,
        _request: Request<PeekableFlightDataStream>,
        error: arrow_flight::sql::server::DoPutError,
    ) -> Result<Response<<Self as FlightService>::DoPutStream>, Status> {
        Err(Error::InvalidRequest(format!("DoPut: {error}")).into())
    }

    async fn do_put_statement_ingest(
        &self,
        command: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Identity::of(&request)?.require(Role::Writer, "ingest")?;
        let target = ingest::target(
            &command,
            self.engine.catalog_name(),
            self.engine.namespace(),
        )?;
        if let Some(builder) = self.writer.builder_elsewhere().await {
            return Err(Error::from(crate::storage::Error::ReadReplica { builder }).into());
        }
        let now = self.clock.now_us();
        Ok(ingest::ingest_stream(
            &self.writer,
            target,
            request.into_inner(),
            now,
            &self.limits,
        )
        .await?)
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        info_for(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        builder.append(self.engine.catalog_name());
        Ok(one_batch(builder.schema(), builder.build()))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        info_for(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        builder.append(self.engine.catalog_name(), self.engine.namespace());
        builder.append(self.engine.catalog_name(), "system");
        Ok(one_batch(builder.schema(), builder.build()))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        info_for(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        // Columns are described in the types this client's results come in.
        let profile = Profile::of(request.metadata())?;
        let mut builder = query.into_builder();
        for (schema_name, name, schema) in self.tables()? {
            let schema = profile.schema(&schema);
            let kind = if schema_name == "system" {
                "SYSTEM TABLE"
            } else {
                "TABLE"
            };
            builder
                .append(self.engine.catalog_name(), schema_name, name, kind, &schema)
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        Ok(one_batch(builder.schema(), builder.build()))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        info_for(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        builder.append("TABLE");
        builder.append("SYSTEM TABLE");
        Ok(one_batch(builder.schema(), builder.build()))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.sql_info).schema();
        info_for(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let builder = query.into_builder(&self.sql_info);
        Ok(one_batch(builder.schema(), builder.build()))
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let ticket = query.as_any().encode_to_vec();
        info_for(&keys::primary_keys_schema(), ticket, request.into_inner())
    }

    async fn do_get_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let batch = keys::primary_keys(
            self.engine.catalog_name(),
            self.engine.namespace(),
            query.catalog.as_deref(),
            query.db_schema.as_deref(),
            &query.table,
        );
        Ok(one_batch(keys::primary_keys_schema(), batch))
    }

    async fn get_flight_info_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let ticket = query.as_any().encode_to_vec();
        info_for(&keys::foreign_keys_schema(), ticket, request.into_inner())
    }

    async fn do_get_exported_keys(
        &self,
        _query: CommandGetExportedKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Ok(one_batch(
            keys::foreign_keys_schema(),
            keys::no_foreign_keys(),
        ))
    }

    async fn get_flight_info_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let ticket = query.as_any().encode_to_vec();
        info_for(&keys::foreign_keys_schema(), ticket, request.into_inner())
    }

    async fn do_get_imported_keys(
        &self,
        _query: CommandGetImportedKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Ok(one_batch(
            keys::foreign_keys_schema(),
            keys::no_foreign_keys(),
        ))
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder(&self.xdbc_types).schema();
        info_for(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let builder = query.into_builder(&self.xdbc_types);
        Ok(one_batch(builder.schema(), builder.build()))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
