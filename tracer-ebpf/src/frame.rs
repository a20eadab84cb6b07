//! [`Frame`] over a socket buffer: every read goes through `bpf_skb_load_bytes`, which checks
//! bounds against the packet (linear and paged parts alike) and never writes to it.

use aya_ebpf::programs::TcContext;
use tracer_common::parse::Frame;

pub struct SkbFrame<'a>(pub &'a TcContext);

impl Frame for SkbFrame<'_> {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.0.load::<[u8; N]>(offset).ok()
    }
}
