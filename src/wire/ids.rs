//! Message ids in the provider's shape.
//!
//! WhatsApp web clients (and the provider's `new-message-id`) produce ids
//! like `3EB0` followed by uppercase hex. When `id_source = "local"` the id
//! assigner makes them here instead of asking the provider, and the
//! simulator makes its own ids here too, so they must be
//! indistinguishable in shape and as unguessable as the provider's: a
//! collision would merge two statuses into one (the second would be taken for
//! a re-send of the first), so the bits come from the operating system's
//! CSPRNG.

use rand::rngs::OsRng;
use rand::{RngCore, TryRngCore};

/// The prefix WhatsApp web ids carry.
pub const PREFIX: &str = "3EB0";
/// Random bytes after the prefix: 10 bytes = 20 hex digits = 80 bits, so a
/// generated id is 24 characters long. 80 bits make a collision among a
/// billion ids about one in a million-million.
const RANDOM_BYTES: usize = 10;
/// Hex digits after the prefix seen in the wild.
const MIN_HEX: usize = 16;
const MAX_HEX: usize = 32;

/// A fresh id: `3EB0` + 20 uppercase hex digits.
///
/// The bytes come from [`OsRng`] (`getrandom`: the kernel's CSPRNG). Should
/// the OS source ever fail, this falls back to [`rand::rng()`], the
/// thread-local ChaCha12 generator that `rand` seeds from the same OS source
/// — still a CSPRNG — rather than panicking inside the id assigner.
pub fn local_message_id() -> String {
    let mut bytes = [0u8; RANDOM_BYTES];
    if OsRng.try_fill_bytes(&mut bytes).is_err() {
        rand::rng().fill_bytes(&mut bytes);
    }
    let mut id = String::with_capacity(PREFIX.len() + 2 * RANDOM_BYTES);
    id.push_str(PREFIX);
    for b in bytes {
        id.push_str(&format!("{b:02X}"));
    }
    id
}

/// A fresh id in an engine's shape: `3EB0` + `hex_digits` uppercase hex
/// digits (Baileys' current generator and whatsmeow's: 18; Baileys'
/// legacy one: 36), from the same CSPRNG as [`local_message_id`].
pub fn engine_message_id(hex_digits: usize) -> String {
    let mut bytes = vec![0u8; hex_digits.div_ceil(2)];
    if OsRng.try_fill_bytes(&mut bytes).is_err() {
        rand::rng().fill_bytes(&mut bytes);
    }
    let mut id = String::with_capacity(PREFIX.len() + 2 * bytes.len());
    id.push_str(PREFIX);
    for b in bytes {
        id.push_str(&format!("{b:02X}"));
    }
    id.truncate(PREFIX.len() + hex_digits);
    id
}

/// Whether `id` has the shape of a WhatsApp web id: `3EB0` then 16 to 32
/// uppercase hex digits.
pub fn is_well_formed(id: &str) -> bool {
    match id.strip_prefix(PREFIX) {
        Some(rest) => {
            (MIN_HEX..=MAX_HEX).contains(&rest.len())
                && rest
                    .bytes()
                    .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn hundred_thousand_ids_are_unique_and_well_formed() {
        let mut seen = HashSet::with_capacity(100_000);
        for _ in 0..100_000 {
            let id = local_message_id();
            assert_eq!(id.len(), 24, "{id}");
            assert!(is_well_formed(&id), "{id}");
            assert!(seen.insert(id.clone()), "duplicate id {id}");
        }
    }

    #[test]
    fn engine_ids_have_the_asked_length() {
        for n in [16, 18, 20, 36] {
            let id = engine_message_id(n);
            assert_eq!(id.len(), 4 + n, "{id}");
            assert!(id.starts_with(PREFIX));
            assert!(id[4..]
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c)));
        }
        assert_ne!(engine_message_id(18), engine_message_id(18));
    }

    #[test]
    fn shape_check_rejects_near_misses() {
        assert!(is_well_formed("3EB0796F91D8B2A4E053AC100F0A4D1E"));
        assert!(is_well_formed("3EB00123456789ABCDEF"));
        assert!(!is_well_formed("3EB00123456789ABCDE")); // 15 hex digits
        assert!(!is_well_formed(&format!("3EB0{}", "A".repeat(33))));
        assert!(!is_well_formed("3eb00123456789abcdef0000"));
        assert!(!is_well_formed("3EB00123456789abcdef0000"));
        assert!(!is_well_formed("4EB00123456789ABCDEF0000"));
        assert!(!is_well_formed("3EB00123456789ABCDEG0000"));
        assert!(!is_well_formed(""));
    }
}
