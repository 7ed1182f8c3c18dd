"""Plain pyarrow.flight and flightsql-dbapi (SQLAlchemy) against a running ohlcv-server
(driven by tests/adbc.rs).

usage: flight_clients.py HOST PORT EXPECTED_1M_BARS
The server has user rita (reader, password rita-pw).
"""

import sys

import pyarrow.flight as flight
import sqlalchemy
from flightsql import flightsql_pb2
from google.protobuf import any_pb2

host, port, expected = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

# pyarrow.flight: basic-auth handshake, then a Flight SQL statement by hand.
client = flight.FlightClient(f"grpc+tcp://{host}:{port}")
try:
    client.get_flight_info(flight.FlightDescriptor.for_command(b"x"))
    raise AssertionError("a call without a token must fail")
except flight.FlightUnauthenticatedError:
    pass
header = client.authenticate_basic_token("rita", "rita-pw")
options = flight.FlightCallOptions(headers=[header])
command = any_pb2.Any()
command.Pack(flightsql_pb2.CommandStatementQuery(query="select count(*) as n from ohlcv_1m"))
info = client.get_flight_info(flight.FlightDescriptor.for_command(command.SerializeToString()), options)
table = client.do_get(info.endpoints[0].ticket, options).read_all()
assert table.column("n")[0].as_py() == expected, table

# flightsql-dbapi through SQLAlchemy.
engine = sqlalchemy.create_engine(f"datafusion://rita:rita-pw@{host}:{port}?insecure=true")
with engine.connect() as conn:
    rows = conn.execute(
        sqlalchemy.text("select symbol, count(*) as n from ohlcv_1m group by symbol")
    ).fetchall()
    assert [tuple(r) for r in rows] == [("BTC-USD", expected)], rows
    names = sqlalchemy.inspect(conn).get_table_names()
    assert "ohlcv_1m" in names, names
    # What Superset's database browser asks, through the same dialect.
    inspector = sqlalchemy.inspect(conn)
    schemas = inspector.get_schema_names()
    assert {"market", "system"} <= set(schemas), schemas
    market = inspector.get_table_names(schema="market")
    assert {"trades", "ohlcv_1m", "ohlcv_1d"} <= set(market), market
    assert "jobs" in inspector.get_table_names(schema="system")
    columns = inspector.get_columns("ohlcv_1m", schema="market")
    assert [c["name"] for c in columns][:4] == ["exchange", "symbol", "window_start", "window_end"], columns
    assert str(columns[2]["type"]).upper().startswith("TIMESTAMP"), columns[2]
    candles = conn.execute(
        sqlalchemy.text(
            "select window_start, close from candles('kraken', 'BTC-USD', '15m', "
            "'2024-01-01T00:00:00Z', '2024-01-01T02:00:00Z')"
        )
    ).fetchall()
    assert len(candles) == expected // 15, candles
    assert str(candles[0][0]).startswith("2024-01-01 00:00:00"), candles[0]

print(f"flight: {expected} 1m bars via pyarrow.flight and SQLAlchemy")
