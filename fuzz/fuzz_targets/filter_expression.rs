//! Any text as a filter expression: no panic in the syntax check, libpcap's compile or the
//! translation to eBPF; an expression the syntax check accepts and libpcap compiles either
//! translates, with every jump inside the body, every instruction on some path (the verifier
//! refuses unreachable ones) and the body laid out to the subprogram's size, or is refused for
//! one of the reasons the kernel side states (a loop, too large, socket metadata).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::filter::{
    ebpf::{fill, first_unreachable, translate, TranslateError},
    Expression,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(Some(expr)) = Expression::new(text) else {
        return;
    };
    match translate(expr.program()) {
        Ok(body) => {
            for (at, i) in body.iter().enumerate() {
                let class = i.code & 0x07;
                let op = i.code & 0xf0;
                if (class == 0x05 || class == 0x06) && op != 0x80 && op != 0x90 {
                    let to = at as i64 + 1 + i64::from(i.off);
                    assert!((0..body.len() as i64).contains(&to), "{text:?}: jump out of the body");
                }
            }
            assert_eq!(first_unreachable(&body), None, "{text:?}: unreachable code");
            if let Ok(filled) = fill(&body, 4000) {
                assert_eq!(filled.len(), 4000);
                assert_eq!(first_unreachable(&filled), None, "{text:?}: unreachable padding");
            }
        }
        Err(
            TranslateError::BackwardJump(_)
            | TranslateError::TooLarge { .. }
            | TranslateError::Metadata(_),
        ) => {}
        Err(e) => panic!("{text:?}: {e}"),
    }
});
