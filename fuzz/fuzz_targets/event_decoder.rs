//! Any bytes given to the ring-buffer event decoder: no panic, a decoded packet never carries
//! more bytes than an event can hold, and decoding without the packet bytes (the live path when
//! no capture is written) accepts and refuses exactly the same records, with the same metadata.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::collect::{decode, decode_with, Event};
use tracer_common::event::CAPTURE_MAX;

fuzz_target!(|data: &[u8]| {
    let whole = decode(data);
    let lean = decode_with(data, false);
    assert_eq!(whole.is_ok(), lean.is_ok());
    if let (Ok(Event::Packet(rec)), Ok(Event::Packet(lean))) = (&whole, &lean) {
        assert!(rec.data.len() <= CAPTURE_MAX);
        assert!(lean.data.is_empty());
        // Everything but the bytes agrees.
        let mut without_bytes = rec.clone();
        without_bytes.data = lean.data.clone();
        assert_eq!(&without_bytes, lean);
    }
});
