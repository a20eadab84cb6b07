//! Zeroing in place by 8-byte words, for the per-packet structs of the kernel programs.
//!
//! `Default` on a struct with byte arrays compiles, for the BPF target, to a call of a
//! byte-by-byte `memset`: a loop of one store per byte on every packet. Eight-byte volatile
//! stores are a handful of instructions (volatile, or LLVM recognises the loop as a memset and
//! calls that again), and writing into the caller's slot avoids a second zeroing when the value
//! would be moved out.

use core::mem::{align_of, size_of, MaybeUninit};

/// Types that are valid when all zero, 8-byte aligned, and a whole number of 8-byte words long.
///
/// # Safety
/// Implement only for such types (integers and arrays of integers, `repr(C)`, no padding
/// requirements beyond zero).
pub unsafe trait ZeroWords: Sized {
    /// Zeroes `slot` in place, word by word, and hands it out initialised.
    #[inline(always)]
    fn zero_in(slot: &mut MaybeUninit<Self>) -> &mut Self {
        const { assert!(align_of::<Self>() == 8 && size_of::<Self>().is_multiple_of(8)) };
        let words = slot.as_mut_ptr().cast::<u64>();
        let mut i = 0;
        while i < size_of::<Self>() / 8 {
            // SAFETY: aligned words, all inside `slot` (checked above).
            unsafe { words.add(i).write_volatile(0) };
            i += 1;
        }
        // SAFETY: every byte is written, and all-zero is valid (the trait's contract).
        unsafe { slot.assume_init_mut() }
    }
}
