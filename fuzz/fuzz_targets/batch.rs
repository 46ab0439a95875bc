//! Record batch validation of the Produce path and the storage's batch walker (recovery scan)
//! on arbitrary bytes: no panic, and whatever validation accepts, storage can walk.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ringbroker_protocol::batch::{validate_produced, BatchHeader};
use ringbroker_storage::frame::BatchFrame;

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    let _ = BatchHeader::parse(data);
    let accepted = validate_produced(&bytes);
    let frame = BatchFrame::parse(data);
    if accepted.is_ok() {
        // A batch the broker would store must be one the recovery scan can walk.
        let frame = frame.expect("validated batch has a frame the storage can parse");
        assert_eq!(frame.total_bytes, data.len(), "validated batch length");
    }
});
