//! The provider's webhook vocabulary (WAHA, and Wawp which fronts it):
//! header names, event names and the signature, shared by the receiver
//! ([`crate::webhooks`]) and the simulator's emitter.
//!
//! Source: WAHA's "Events" page (<https://waha.devlike.pro/docs/how-to/events/>)
//! and its session config (`config.webhooks[].hmac.key`): WAHA signs the raw
//! body with HMAC-SHA512 under the session's key, hex-encoded in
//! `X-Webhook-Hmac`, names the algorithm in `X-Webhook-Hmac-Algorithm`, and
//! sends `X-Webhook-Request-Id` (one per delivery attempt) and
//! `X-Webhook-Timestamp` (the event's time, Unix milliseconds). The body is
//! `{id, timestamp, event, session, me, payload, engine, environment}`.

use hmac::{Hmac, Mac};
use sha2::Sha512;

/// Hex HMAC-SHA512 of the raw body.
pub const HMAC: &str = "x-webhook-hmac";
/// `sha512`.
pub const HMAC_ALGORITHM: &str = "x-webhook-hmac-algorithm";
pub const ALGORITHM_SHA512: &str = "sha512";
/// One per delivery attempt (retries get new ones): not a dedupe key.
pub const REQUEST_ID: &str = "x-webhook-request-id";
/// Unix milliseconds of the event.
pub const TIMESTAMP: &str = "x-webhook-timestamp";

/// A message was received (on some engines also one's own).
pub const EVENT_MESSAGE: &str = "message";
/// Every message created, one's own included.
pub const EVENT_MESSAGE_ANY: &str = "message.any";
/// A message's ack changed; for a status, `participant` is the viewer.
pub const EVENT_MESSAGE_ACK: &str = "message.ack";

/// Ack levels (`payload.ack`, named by `payload.ackName`).
pub const ACK_DEVICE: i32 = 2;
pub const ACK_READ: i32 = 3;
pub const ACK_PLAYED: i32 = 4;

/// Hex HMAC-SHA512 of `body` under `key`, as the provider puts it in
/// [`HMAC`].
pub fn sign(key: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length: `new_from_slice` cannot fail.
    let mut mac = <Hmac<Sha512>>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `signature` (hex, either case) is the HMAC-SHA512 of `body`
/// under `key`. The comparison is constant-time (`Mac::verify_slice`); a
/// signature that is not hex, or of the wrong length, is refused.
pub fn verify(key: &[u8], body: &[u8], signature: &str) -> bool {
    let Ok(given) = hex::decode(signature.trim()) else {
        return false;
    };
    let mut mac = <Hmac<Sha512>>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2: key "Jefe".
    #[test]
    fn sign_matches_rfc_4231() {
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
        );
    }

    #[test]
    fn verify_refuses_a_wrong_key_a_changed_body_and_junk() {
        let sig = sign(b"k", b"{}");
        assert!(verify(b"k", b"{}", &sig));
        assert!(verify(b"k", b"{}", &sig.to_uppercase()));
        assert!(!verify(b"other", b"{}", &sig));
        assert!(!verify(b"k", b"{ }", &sig));
        assert!(!verify(b"k", b"{}", &sig[..64]));
        assert!(!verify(b"k", b"{}", "not hex"));
    }
}
