//! The kernel object embedded at build time, and the bridge from aya-log into `tracing`.

use aya::Ebpf;

/// The eBPF object `tracer/build.rs` built (empty when the build was not asked for it).
pub fn object_bytes() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"))
}

/// A copy of the kernel object with the filter subprogram holding `expr`'s translation,
/// 8-byte aligned as the object parser wants it.
pub(super) struct Patched(Vec<u64>, usize);

impl Patched {
    pub(super) fn bytes(&self) -> &[u8] {
        // SAFETY: `self.1` bytes of the initialised words, which outlive the borrow.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast::<u8>(), self.1) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<u8>(), self.1) }
    }
}

pub(super) fn with_expression(
    object: &[u8],
    expr: &crate::filter::Expression,
) -> Result<Patched, crate::filter::ebpf::PatchError> {
    let mut p = Patched(vec![0u64; object.len().div_ceil(8)], object.len());
    p.bytes_mut().copy_from_slice(object);
    let n = crate::filter::ebpf::patch_object(p.bytes_mut(), expr.program())?;
    tracing::debug!("filter expression {:?}: {n} eBPF instructions", expr.text());
    Ok(p)
}

/// Forwards aya-log records from the kernel programs into `tracing` (target `kernel`).
struct TracingLog;

impl log::Log for TracingLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        tracing::debug!(target: "kernel", "{}", record.args());
    }
    fn flush(&self) {}
}

/// Starts draining the kernel's log ring buffer on the tokio runtime (if one is running).
pub(super) fn start_kernel_log(ebpf: &mut Ebpf) {
    let logger = match aya_log::EbpfLogger::init_with_logger(ebpf, TracingLog) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("kernel log not available: {e}");
            return;
        }
    };
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        tracing::warn!("kernel log needs the async runtime; not started");
        return;
    };
    handle.spawn(async move {
        // SAFETY: the logger owns its ring buffer's fd, which stays open and the same for as
        // long as the AsyncFd owns the logger.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
        };
        let mut fd = match registered {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!("kernel log: {e}");
                return;
            }
        };
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}
