//! Any bytes given to the capture reader: no panic, no unbounded allocation, one-line errors, and
//! every replayed packet belongs to a hook of the replayed topology.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match tracer::capture::parse_capture(data) {
        Ok(cap) => {
            assert!(cap.sections >= 1);
            for rec in &cap.records {
                assert!(
                    cap.topology.hook(rec.slot).is_some(),
                    "packet of slot {} has no hook",
                    rec.slot
                );
            }
        }
        Err(e) => assert!(!e.to_string().contains('\n'), "multi-line error: {e}"),
    }
});
