//! Size buckets: what a sealed value's length may tell someone who reads the file without the
//! key.
//!
//! A body is stored padded with zero bytes to `padded_body_len` of its size before it is cut
//! into chunks and sealed; its true size lives in its sealed metadata, and the padding is cut
//! off after opening. The buckets step by one eighth of the power of two below the size (eight
//! sizes per octave from `BODY_PAD_MIN` up), so a sealed body tells its size to within 12.5 %
//! and costs at most 12.5 % more bytes (about 5 % on average for sizes spread evenly on a log
//! scale from 1 KiB to 16 MiB, `padding_costs_about_five_percent`). A document's sealed metadata is padded to a multiple of
//! `META_PAD_STEP` bytes the same way (postcard ignores the zero bytes after the value).
//!
//! Invariants: `padded_body_len(n) >= n`, it is monotonic, and equal sizes of one bucket give
//! equal padded sizes; an empty body stays empty (it has no chunk to hide).

/// The smallest padded body: every body up to this size looks the same.
pub const BODY_PAD_MIN: usize = 1024;

/// Sealed metadata is padded to a multiple of this many bytes.
pub const META_PAD_STEP: usize = 128;

/// The size a body of `len` bytes is stored at: `len` rounded up to a multiple of one eighth of
/// the largest power of two at or below it, and at least `BODY_PAD_MIN`. 0 stays 0.
pub fn padded_body_len(len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let len = len.max(BODY_PAD_MIN);
    let octave = usize::BITS - 1 - len.leading_zeros();
    let step = 1usize << octave.saturating_sub(3);
    len.div_ceil(step).saturating_mul(step)
}

/// Pads serialized metadata with zero bytes to a multiple of `META_PAD_STEP`.
pub fn pad_meta(mut plain: Vec<u8>) -> Vec<u8> {
    let padded = plain.len().div_ceil(META_PAD_STEP).max(1) * META_PAD_STEP;
    plain.resize(padded, 0);
    plain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_buckets_step_by_an_eighth_of_their_octave() {
        let check = |len: usize, expect: usize| assert_eq!(padded_body_len(len), expect, "{len}");
        check(0, 0);
        check(1, 1024);
        check(1024, 1024);
        check(1025, 1152);
        check(4096, 4096);
        check(4097, 4608);
        check(5000, 5120);
        check(65_537, 73_728);
        check(1_000_000, 1_048_576);
        let mut previous = 0;
        for len in (1..3_000_000).step_by(977) {
            let padded = padded_body_len(len);
            assert!(padded >= len && padded >= previous, "{len}");
            assert!(
                padded <= (len + len / 8).max(BODY_PAD_MIN),
                "{len}: {padded}"
            );
            previous = padded;
        }
        assert_eq!(padded_body_len(usize::MAX), usize::MAX, "saturates");
    }

    /// The storage cost, stated in the module doc: the mean of padded / plain over sizes spread
    /// evenly on a log scale from 1 KiB to 16 MiB.
    #[test]
    fn padding_costs_about_five_percent() {
        let (mut sum, mut n, mut worst) = (0.0, 0.0, 1.0f64);
        let mut len = 1024.0f64;
        while len < 16.0 * 1024.0 * 1024.0 {
            let ratio = padded_body_len(len as usize) as f64 / len.floor();
            sum += ratio;
            n += 1.0;
            worst = worst.max(ratio);
            len *= 1.001;
        }
        let mean = sum / n;
        assert!((1.04..1.06).contains(&mean), "mean overhead {mean}");
        assert!(worst <= 1.125, "worst {worst}");
    }

    #[test]
    fn padded_metadata_decodes_to_the_same_value() {
        let value = (7u64, "compte rendu".to_string(), vec![1u8, 2, 3]);
        let plain = postcard::to_stdvec(&value).expect("encode");
        let padded = pad_meta(plain.clone());
        assert_eq!(padded.len(), META_PAD_STEP);
        assert_eq!(&padded[..plain.len()], plain.as_slice());
        let back: (u64, String, Vec<u8>) = postcard::from_bytes(&padded).expect("decode");
        assert_eq!(back, value);
        assert_eq!(pad_meta(vec![1; META_PAD_STEP]).len(), META_PAD_STEP);
        assert_eq!(pad_meta(Vec::new()).len(), META_PAD_STEP);
    }
}
