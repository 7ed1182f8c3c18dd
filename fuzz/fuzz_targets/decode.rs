//! What a client controls byte for byte: Flight SQL commands and tickets (decoded before the
//! dispatch) and prepared-statement handles with their bound parameters (decoded by us).
//! None of it may panic; every failure must be an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ohlcv_server::flight::checked::check_command;
use ohlcv_server::flight::prepared::Handle;

fuzz_target!(|data: &[u8]| {
    let _ = check_command(data, "command");
    if let Ok(handle) = Handle::decode_bytes(data) {
        let _ = handle.params();
    }
});
