//! Proof of work stand-in: find a nonce whose SHA-256 over (data || nonce) starts with `bits` zero
//! bits. Not IOTA's Curl-P, but real CPU work of a tunable size, which is what a busy node needs.

use sha2::{Digest, Sha256};

pub fn meets_target(data: &[u8], nonce: u64, bits: u32) -> bool {
    let hash = Sha256::new().chain_update(data).chain_update(nonce.to_le_bytes()).finalize();
    leading_zero_bits(&hash) >= bits
}

/// Mines a nonce; expected work is 2^bits hashes.
pub fn mine(data: &[u8], bits: u32) -> u64 {
    let prefix = Sha256::new().chain_update(data);
    (1u64..)
        .find(|n| leading_zero_bits(&prefix.clone().chain_update(n.to_le_bytes()).finalize()) >= bits)
        .expect("a nonce exists below u64::MAX")
}

fn leading_zero_bits(hash: &[u8]) -> u32 {
    let mut bits = 0;
    for b in hash {
        if *b == 0 {
            bits += 8;
        } else {
            return bits + b.leading_zeros();
        }
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mined_nonce_meets_target() {
        let n = mine(b"message", 12);
        assert!(meets_target(b"message", n, 12));
        assert_eq!(leading_zero_bits(&[0, 0x10]), 11);
    }
}
