//! The proof-of-work score of a legacy IOTA message or block (TIP-12), computed at the edge so
//! that a spammer's junk never costs a node a verification:
//!
//! ```text
//! pow_digest <- BLAKE2b-256(serialized message without its 8-byte nonce)
//! pow_hash   <- Curl-P-81(b1t6(pow_digest) || b1t6(nonce) || 000)
//! score      <- 3^trailing_zero_trits(pow_hash) / size(message)
//! ```

use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};

/// Curl-P's state: three 243-trit blocks.
const STATE: usize = 729;
const HASH: usize = 243;
const ROUNDS: usize = 81;
const TRUTH_TABLE: [i8; 11] = [1, 0, -1, 2, 1, -1, 0, 2, -1, 1, 0];

/// The trits of one 243-trit input block hashed by Curl-P-81 (one absorb, one squeeze).
pub fn curl_p81(input: &[i8; HASH]) -> [i8; HASH] {
    let mut state = [0i8; STATE];
    state[..HASH].copy_from_slice(input);
    let mut scratch = [0i8; STATE];
    for _ in 0..ROUNDS {
        scratch.copy_from_slice(&state);
        let mut index = 0usize;
        for s in state.iter_mut() {
            let prev = index;
            index = if index < 365 { index + 364 } else { index - 365 };
            *s = TRUTH_TABLE[(scratch[prev] + (scratch[index] << 2) + 5) as usize];
        }
    }
    let mut out = [0i8; HASH];
    out.copy_from_slice(&state[..HASH]);
    out
}

/// TIP-5's b1t6: each byte, read as a signed number, as two balanced trytes of three trits each.
fn b1t6(bytes: &[u8], out: &mut Vec<i8>) {
    for &b in bytes {
        let v = i16::from(b as i8);
        let low = (v + 13).rem_euclid(27) - 13;
        let high = (v - low) / 27;
        for tryte in [low, high] {
            let mut t = tryte;
            for _ in 0..3 {
                let trit = ((t + 1).rem_euclid(3)) - 1;
                out.push(trit as i8);
                t = (t - trit) / 3;
            }
        }
    }
}

/// The Curl input of a message: b1t6 of its digest and nonce, and three zero trits.
fn curl_input(message: &[u8]) -> Option<[i8; HASH]> {
    let (body, nonce) = message.split_at_checked(message.len().checked_sub(8)?)?;
    let digest = Blake2b::<U32>::digest(body);
    let mut trits = Vec::with_capacity(HASH);
    b1t6(&digest, &mut trits);
    b1t6(nonce, &mut trits);
    trits.extend_from_slice(&[0, 0, 0]);
    trits.try_into().ok()
}

/// The trailing zero trits of the message's PoW hash.
pub fn trailing_zeros(message: &[u8]) -> Option<usize> {
    let hash = curl_p81(&curl_input(message)?);
    Some(hash.iter().rev().take_while(|t| **t == 0).count())
}

/// The message's PoW score; `None` for a message shorter than its nonce.
pub fn score(message: &[u8]) -> Option<f64> {
    let zeros = trailing_zeros(message)?;
    Some(3f64.powi(zeros as i32) / message.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trytes as IOTA writes them: 9 is 0, A..M are 1..13, N..Z are -13..-1.
    fn trytes(trits: &[i8]) -> String {
        trits
            .chunks(3)
            .map(|t| {
                let v = t[0] + 3 * t[1] + 9 * t[2];
                match v {
                    0 => '9',
                    1..=13 => (b'A' + v as u8 - 1) as char,
                    _ => (b'N' + (v + 13) as u8) as char,
                }
            })
            .collect()
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn the_tip_12_example() {
        let message = hex("48656c6c6f2c20576f726c64215ee6aaaaaaaaaaaa");
        let digest = Blake2b::<U32>::digest(&message[..13]);
        assert_eq!(digest.as_slice(), hex("511bc81dde11180838c562c82bb35f3223f46061ebde4a955c27b3f489cf1e03"));
        let input = curl_input(&message).unwrap();
        assert_eq!(trytes(&input), "9C9AYYBATZQAXAH9BBVYQDYYPBDXNDWBHAO9ODPDFZTZTCAWKCLADXO9PWEYCAC9MCAZVXVXVXVXVXVX9");
        assert_eq!(
            trytes(&curl_p81(&input)),
            "DJCAGKILZPLXNXWFTNXFLCHRFVUHHMTPFIOFKQXMGIKITSEVWECMQOKCFXDIIHK9YVHGQICAIVEVDJ999"
        );
        assert_eq!(trailing_zeros(&message), Some(9));
        assert!((score(&message).unwrap() - 937.2857142857143).abs() < 1e-9);
        assert_eq!(score(&[1, 2, 3]), None, "shorter than a nonce");
    }
}
