//! The decoding of client-controlled bytes never panics (what scripts/fuzz.sh fuzzes): inputs
//! that once crashed a handler, and random bytes and random protobuf-shaped messages.

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::ipc::writer::StreamWriter;
use arrow_flight::sql::{Any, CommandStatementQuery, ProstMessageExt};
use ohlcv_server::flight::checked::check_command;
use ohlcv_server::flight::prepared::Handle;
use proptest::prelude::*;
use prost::Message;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn decode(bytes: &[u8]) {
    let _ = check_command(bytes, "command");
    if let Ok(handle) = Handle::decode_bytes(bytes) {
        let _ = handle.params();
    }
}

/// A handle whose parameter batch has no row: it panicked the handler (RST_STREAM).
#[test]
fn zero_row_parameters() {
    let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
    let mut ipc = Vec::new();
    let mut writer = StreamWriter::try_new(&mut ipc, &schema).unwrap();
    writer
        .write(&RecordBatch::new_empty(schema.clone()))
        .unwrap();
    writer
        .write(
            &RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from(Vec::<i64>::new()))],
            )
            .unwrap(),
        )
        .unwrap();
    writer.finish().unwrap();
    drop(writer);
    let handle = Handle {
        sql: "select $1".into(),
        parameters: ipc,
    };
    assert!(handle.params().is_err());
    decode(&handle.to_bytes());
}

/// 89 bytes of parameters whose IPC header declares a huge message: the reader allocated it
/// (about 2 GB, 5 s) before failing.
#[test]
fn a_forged_message_length_allocates_nothing() {
    let mut parameters = vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
    parameters.extend(std::iter::repeat_n(0x41, 81));
    let handle = Handle {
        sql: "select $1".into(),
        parameters,
    };
    LARGEST.store(0, Ordering::SeqCst);
    assert!(handle.params().is_err());
    let largest = LARGEST.load(Ordering::SeqCst);
    assert!(largest < 1 << 20, "one allocation of {largest} bytes");
}

/// The largest single allocation since it was reset (this test binary's allocator).
static LARGEST: AtomicUsize = AtomicUsize::new(0);

struct Measured;

unsafe impl GlobalAlloc for Measured {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::SeqCst);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::SeqCst);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Measured = Measured;

/// A known command type whose body is not valid protobuf, or holds SQL that is not UTF-8.
#[test]
fn malformed_and_non_utf8_commands_are_errors() {
    let good = CommandStatementQuery {
        query: "select 1".into(),
        transaction_id: None,
    }
    .as_any()
    .encode_to_vec();
    assert!(check_command(&good, "command").is_ok());
    for value in [vec![0x0a, 0xff, 0xff], vec![0x0a, 0x02, 0xc3, 0x28]] {
        let any = Any {
            type_url: "type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery".into(),
            value: value.into(),
        };
        let err = check_command(&any.encode_to_vec(), "command").unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode(&bytes);
    }

    #[test]
    fn random_command_bodies_never_panic(
        kind in 0usize..6,
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let names = [
            "CommandStatementQuery",
            "CommandPreparedStatementQuery",
            "TicketStatementQuery",
            "CommandGetTables",
            "CommandStatementIngest",
            "CommandGetPrimaryKeys",
        ];
        let any = Any {
            type_url: format!("type.googleapis.com/arrow.flight.protocol.sql.{}", names[kind]),
            value: body.into(),
        };
        decode(&any.encode_to_vec());
    }

    #[test]
    fn random_parameter_streams_never_panic(
        sql in Just("select $1".to_string()),
        parameters in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let handle = Handle { sql, parameters };
        let _ = handle.params();
        decode(&handle.to_bytes());
    }
}
