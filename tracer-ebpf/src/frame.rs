//! [`Frame`]s over a socket buffer. Neither ever writes to the packet.
//!
//! [`LinearFrame`] reads the linear header area (`skb->data .. skb->data_end`) in place, which
//! costs a few instructions; [`SkbFrame`] reads through `bpf_skb_load_bytes`, a helper call that
//! also reaches the paged part.

use aya_ebpf::{helpers::generated::bpf_skb_load_bytes, programs::TcContext};
use tracer_common::parse::Frame;

/// Direct packet offsets above this are never tried (the verifier needs a bound on the offset
/// it adds to the packet pointer; headers we parse sit well below it).
const DIRECT_MAX_OFFSET: usize = 0x0fff;

/// The linear header area of the packet, read in place.
pub(crate) struct LinearFrame {
    data: usize,
    data_end: usize,
}

impl LinearFrame {
    #[inline(always)]
    pub(crate) fn new(ctx: &TcContext) -> Self {
        let skb = ctx.skb.skb;
        // Volatile: otherwise LLVM may hoist these 32-bit context loads into a calling function
        // and pass them in as arguments, widened in the callee, and the verifier rejects any
        // arithmetic on a packet pointer that is not 64-bit ("pointer arithmetic on pkt_end
        // prohibited").
        // SAFETY: `skb` is the program's context; the verifier rewrites these field accesses.
        unsafe {
            Self {
                data: core::ptr::read_volatile(&(*skb).data) as usize,
                data_end: core::ptr::read_volatile(&(*skb).data_end) as usize,
            }
        }
    }
}

impl LinearFrame {
    /// Bytes of the linear data.
    #[inline(always)]
    pub(crate) fn len(&self) -> usize {
        self.data_end - self.data
    }
}

impl Frame for LinearFrame {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if offset > DIRECT_MAX_OFFSET {
            return None;
        }
        let start = self.data + offset;
        if start + N > self.data_end {
            return None;
        }
        // SAFETY: `start .. start + N` lies inside the packet's linear data (checked above, and
        // by the verifier); the bytes are copied out, never written.
        Some(unsafe { (start as *const [u8; N]).read_unaligned() })
    }
}

/// The whole packet, linear and paged parts alike, through `bpf_skb_load_bytes`. (Reading the
/// linear part in place here as well made the verifier's state count explode on the IPv6
/// extension-header walk: every packet-pointer range is a state of its own.)
pub(crate) struct SkbFrame<'a>(pub &'a TcContext);

impl Frame for SkbFrame<'_> {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.0.load::<[u8; N]>(offset).ok()
    }

    #[inline(always)]
    fn read_into<const N: usize>(&self, offset: usize, out: &mut [u8; N]) -> bool {
        // SAFETY: the context's socket buffer, and `out`'s N writable bytes.
        let ret = unsafe {
            bpf_skb_load_bytes(
                self.0.skb.skb.cast(),
                offset as u32,
                out.as_mut_ptr().cast(),
                N as u32,
            )
        };
        ret == 0
    }
}
