//! Request path of the broker on arbitrary bytes: framing (size prefix bounded before any
//! allocation), header routing against the advertised versions, then the body decode of that
//! API with kafka-protocol, as `ringbroker_broker::api` does. Runs with the broker's guarded
//! allocator, as the broker does (hostile array counts reserve address space only).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: ringbroker_protocol::alloc::GuardedAlloc = ringbroker_protocol::alloc::GuardedAlloc;

/// A smaller frame limit than the broker's 100 MiB default keeps inputs meaningful; the check
/// is the same code.
const FRAME_BYTES_MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    ringbroker_protocol::request::decode_stream(
        data,
        FRAME_BYTES_MAX,
        ringbroker_broker::api::supported,
    );
});
