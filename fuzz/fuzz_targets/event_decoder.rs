//! Any bytes given to the ring-buffer event decoder: no panic, and a decoded packet never carries
//! more bytes than an event can hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::collect::{decode, Event};
use tracer_common::event::CAPTURE_MAX;

fuzz_target!(|data: &[u8]| {
    if let Ok(Event::Packet(rec)) = decode(data) {
        assert!(rec.data.len() <= CAPTURE_MAX);
    }
});
