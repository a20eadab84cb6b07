//! pathtrace's kernel programs.
//!
//! One classifier program per hook slot (`pathtrace_h0` .. `pathtrace_h23`): userspace attaches a
//! slot to one interface and direction and writes the slot's role into `HOOKS`. Every program only
//! reads the packet and always returns `TC_ACT_UNSPEC` (`TCX_NEXT`), so the packet goes on to the
//! next program or the kernel's default action exactly as if we were not there.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod drops;
#[cfg(target_arch = "bpf")]
mod expr;
#[cfg(target_arch = "bpf")]
mod frame;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod observe;

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};

    use crate::observe;

    macro_rules! hook_programs {
        ($($name:ident = $slot:literal),* $(,)?) => {
            $(
                #[classifier]
                pub(crate) fn $name(ctx: TcContext) -> i32 {
                    observe::observe(&ctx, $slot);
                    TC_ACT_UNSPEC
                }
            )*
            const _: () = assert!([$($slot),*].len() == tracer_common::MAX_HOOKS);
            // The loader asks for each slot's program by the name `tracer_common::names` gives it.
            $(const _: () = assert!(tracer_common::names::is_hook_program(stringify!($name), $slot));)*
        };
    }

    /// The filter expression alone: its verdict (1 keeps the packet) as the return code, for
    /// `BPF_PROG_TEST_RUN` (the tests hold it to tcpdump's verdicts). Never attached.
    #[classifier]
    pub(crate) fn pathtrace_filter_test(ctx: TcContext) -> i32 {
        i32::from(crate::expr::pathtrace_filter_expr(ctx.skb.skb) != 0)
    }
    const _: () = assert!(tracer_common::names::same(
        "pathtrace_filter_test",
        tracer_common::names::PROGRAM_FILTER_TEST
    ));

    hook_programs!(
        pathtrace_h0 = 0,
        pathtrace_h1 = 1,
        pathtrace_h2 = 2,
        pathtrace_h3 = 3,
        pathtrace_h4 = 4,
        pathtrace_h5 = 5,
        pathtrace_h6 = 6,
        pathtrace_h7 = 7,
        pathtrace_h8 = 8,
        pathtrace_h9 = 9,
        pathtrace_h10 = 10,
        pathtrace_h11 = 11,
        pathtrace_h12 = 12,
        pathtrace_h13 = 13,
        pathtrace_h14 = 14,
        pathtrace_h15 = 15,
        pathtrace_h16 = 16,
        pathtrace_h17 = 17,
        pathtrace_h18 = 18,
        pathtrace_h19 = 19,
        pathtrace_h20 = 20,
        pathtrace_h21 = 21,
        pathtrace_h22 = 22,
        pathtrace_h23 = 23,
    );
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // The verifier rejects any path that could reach here; this is never executed.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // Built for the host only so that `cargo clippy --workspace` covers this crate; the real
    // programs are built for bpfel-unknown-none by tracer/build.rs.
}
