//! The sampling decision of aggregate mode: a function of the packet's NAT-invariant
//! fingerprint alone, so that every hook decides the same for the same packet (a sampled packet
//! is sampled at every hook it crosses, and its hop chain is whole) and userspace can tell from
//! a fingerprint whether the kernel sampled it.
//!
//! The high 32 bits decide (the drop program's `TRACED` set is indexed by the low bits, so the
//! two stay independent).

/// The threshold of [`sampled`] for "1 in `n`": `u32::MAX / n` (`n == 0` is taken as 1).
pub const fn sample_below(n: u32) -> u32 {
    if n <= 1 {
        u32::MAX
    } else {
        u32::MAX / n
    }
}

/// Whether a packet with `fingerprint` is sampled at threshold `below` (see [`sample_below`]).
#[inline(always)]
pub const fn sampled(fingerprint: u64, below: u32) -> bool {
    ((fingerprint >> 32) as u32) <= below
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::Fingerprint;

    #[test]
    fn one_in_n_of_well_mixed_fingerprints() {
        for n in [1u32, 2, 16, 64, 1000] {
            let below = sample_below(n);
            let total = 200_000u32;
            let hits = (0..total)
                .filter(|i| sampled(Fingerprint::new().word(*i).finish(), below))
                .count() as f64;
            let want = f64::from(total) / f64::from(n);
            assert!(
                (hits - want).abs() <= want * 0.1 + 3.0,
                "1/{n}: {hits} of {total}, want about {want}"
            );
        }
    }

    #[test]
    fn one_in_one_takes_every_packet() {
        assert_eq!(sample_below(0), u32::MAX);
        assert!(sampled(u64::MAX, sample_below(1)));
        assert!(!sampled(u64::MAX, sample_below(2)));
        assert!(sampled(0x0000_0001_ffff_ffff, sample_below(2)));
    }
}
