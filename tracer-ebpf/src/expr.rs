//! The filter expression's subprogram: a placeholder of fixed size that userspace overwrites,
//! in the object's bytes before loading, with the eBPF translation of libpcap's program for the
//! expression (`tracer::filter::ebpf::patch_object`). Only called when `FILTER_EXPR` is set, so
//! without an expression the verifier never walks it and it is dropped as dead code.

use aya_ebpf::bindings::__sk_buff;

/// Takes the socket buffer; not 0 keeps the packet. The placeholder's body is `STUB_INSNS`
/// instructions that keep every packet; the translation fills exactly the function's size.
#[inline(never)]
pub(crate) fn pathtrace_filter_expr(skb: *mut __sk_buff) -> u32 {
    let verdict: u64;
    // SAFETY: moves of constants into R0; R1 is only read (and the translation reads the
    // socket buffer through it, as a subprogram's context argument).
    unsafe {
        core::arch::asm!(
            ".rept 4000",
            "r0 = 1",
            ".endr",
            in("r1") skb,
            lateout("r0") verdict,
            options(nomem, nostack, preserves_flags),
        );
    }
    verdict as u32
}
