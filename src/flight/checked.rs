//! Flight requests whose Flight SQL command cannot be decoded (a malformed protobuf, SQL that
//! is not UTF-8) are the client's mistake, but arrow-flight's Flight SQL dispatch answers them
//! `Internal` before any of our code runs. This wrapper decodes the command first and answers
//! such requests `InvalidArgument`; everything else passes to the service unchanged.
//! (`DoPut` is not covered: its command arrives inside the stream the dispatch consumes.)

use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::{Any, Command};
use arrow_flight::{
    Action, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo, HandshakeRequest, PollInfo,
    SchemaResult, Ticket,
};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

/// `service`, with its commands and tickets decoded before it sees them.
pub struct CheckedCommands<T>(pub T);

/// `InvalidArgument` unless `bytes` decode as a Flight SQL command (or an unknown one).
pub fn check_command(bytes: &[u8], what: &str) -> Result<(), Status> {
    let any = Any::decode(bytes)
        .map_err(|e| Status::invalid_argument(format!("malformed {what}: {e}")))?;
    Command::try_from(any)
        .map(|_| ())
        .map_err(|e| Status::invalid_argument(format!("malformed {what}: {e}")))
}

#[tonic::async_trait]
impl<T: FlightService> FlightService for CheckedCommands<T> {
    type HandshakeStream = T::HandshakeStream;
    type ListFlightsStream = T::ListFlightsStream;
    type DoGetStream = T::DoGetStream;
    type DoPutStream = T::DoPutStream;
    type DoExchangeStream = T::DoExchangeStream;
    type DoActionStream = T::DoActionStream;
    type ListActionsStream = T::ListActionsStream;

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        self.0.handshake(request).await
    }

    async fn list_flights(
        &self,
        request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        self.0.list_flights(request).await
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        check_command(&request.get_ref().cmd, "command")?;
        self.0.get_flight_info(request).await
    }

    async fn poll_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        check_command(&request.get_ref().cmd, "command")?;
        self.0.poll_flight_info(request).await
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        check_command(&request.get_ref().cmd, "command")?;
        self.0.get_schema(request).await
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        check_command(&request.get_ref().ticket, "ticket")?;
        self.0.do_get(request).await
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        self.0.do_put(request).await
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        self.0.do_exchange(request).await
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        self.0.do_action(request).await
    }

    async fn list_actions(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        self.0.list_actions(request).await
    }
}
