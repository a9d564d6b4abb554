//! Keeping the token out of everything that leaves the client.
//!
//! Wawp takes the access token as a query parameter, so every request URL
//! carries it, and reqwest puts the URL into its errors. Transport errors
//! are stripped of their URL where they are read
//! ([`exchange_from_error`](super::classify::exchange_from_error)); every
//! string the client hands out (reasons, error messages, log fields) is
//! passed through [`redact`] by way of [`Redact`].

use super::classify::Exchange;
use crate::provider::contract::{Lookup, ProviderError, SendOutcome};
use crate::wire::field;

/// What replaces the token.
const REDACTED: &str = "[redacted]";

/// Removes the token from `s`: its literal occurrences and the value of any
/// `access_token=` parameter.
pub fn redact(s: &str, token: &str) -> String {
    let mut out = if token.is_empty() {
        s.to_string()
    } else {
        s.replace(token, REDACTED)
    };
    let key = format!("{}=", field::ACCESS_TOKEN);
    let mut from = 0;
    while let Some(pos) = out[from..].find(&key) {
        let start = from + pos + key.len();
        let end = out[start..]
            .find(['&', ' ', ')', '"', '\'', '#'])
            .map(|e| start + e)
            .unwrap_or(out.len());
        if &out[start..end] != REDACTED {
            out.replace_range(start..end, REDACTED);
        }
        from = start + REDACTED.len();
    }
    out
}

/// Replaces every `hmac.key` in `v` (WAHA's webhook configs carry the
/// signing keys of every app that registered one) with `[redacted]`.
pub fn hide_hmac_keys(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match x.get_mut("key") {
                    Some(key) if k == "hmac" && key.is_string() => *key = REDACTED.into(),
                    _ => hide_hmac_keys(x),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(hide_hmac_keys),
        _ => {}
    }
}

/// `ex` for a log line: a JSON body's `hmac.key`s hidden (a session's
/// info lists its webhooks with their keys).
pub(super) fn hide_hmac_keys_in(ex: Exchange) -> Exchange {
    match ex {
        Exchange::Response {
            status,
            retry_after,
            body: Ok(b),
        } if b.contains("hmac") => {
            let body = match serde_json::from_str::<serde_json::Value>(&b) {
                Ok(mut v) => {
                    hide_hmac_keys(&mut v);
                    v.to_string()
                }
                Err(_) => b,
            };
            Exchange::Response {
                status,
                retry_after,
                body: Ok(body),
            }
        }
        other => other,
    }
}

/// A value whose strings may quote the token: provider bodies and transport
/// errors end up in reasons, details and messages.
///
/// Classification works on the raw exchange (redacting a body first could
/// corrupt it); what it produces is redacted before it leaves the client.
pub(super) trait Redact {
    /// The same value with the token removed from every string.
    fn redacted(self, token: &str) -> Self;
}

impl Redact for SendOutcome {
    fn redacted(mut self, token: &str) -> Self {
        if let Some(reason) = self.reason_mut() {
            *reason = redact(reason, token);
        }
        self
    }
}

impl Redact for ProviderError {
    fn redacted(self, token: &str) -> Self {
        match self {
            ProviderError::InstanceDown(s) => ProviderError::InstanceDown(redact(&s, token)),
            ProviderError::Unavailable(s) => ProviderError::Unavailable(redact(&s, token)),
            ProviderError::Malformed(s) => ProviderError::Malformed(redact(&s, token)),
        }
    }
}

impl Redact for Lookup {
    fn redacted(self, token: &str) -> Self {
        match self {
            Lookup::Unavailable { reason } => Lookup::Unavailable {
                reason: redact(&reason, token),
            },
            other => other,
        }
    }
}

/// For the trace log, which shows whole exchanges.
impl Redact for Exchange {
    fn redacted(self, token: &str) -> Self {
        match self {
            Exchange::NotSent { detail } => Exchange::NotSent {
                detail: redact(&detail, token),
            },
            Exchange::Broken { detail } => Exchange::Broken {
                detail: redact(&detail, token),
            },
            Exchange::Response {
                status,
                retry_after,
                body,
            } => Exchange::Response {
                status,
                retry_after,
                body: body
                    .map(|b| redact(&b, token))
                    .map_err(|e| redact(&e, token)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_removes_literal_tokens_and_query_values() {
        let t = "s3cr3t-TOKEN";
        let s = "error sending request for url (http://h/v2?instance_id=1&access_token=s3cr3t-TOKEN&x=1)";
        let r = redact(s, t);
        assert!(!r.contains(t), "{r}");
        assert!(r.contains("access_token=[redacted]&x=1"), "{r}");
        let r = redact("http://h/?access_token=other-value", t);
        assert_eq!(r, "http://h/?access_token=[redacted]");
        assert_eq!(
            redact("token s3cr3t-TOKEN leaked", t),
            "token [redacted] leaked"
        );
    }

    #[test]
    fn logged_session_configs_hide_every_webhook_key() {
        let info = serde_json::json!({"name": "default", "config": {"webhooks": [
            {"url": "https://a", "hmac": {"key": "KEY-ONE"}},
            {"url": "https://b", "hmac": {"key": "KEY-TWO"}, "nested": {"hmac": {"key": "KEY-3"}}},
        ]}});
        let ex = Exchange::Response {
            status: 200,
            retry_after: None,
            body: Ok(info.to_string()),
        };
        let shown = format!("{:?}", hide_hmac_keys_in(ex));
        for k in ["KEY-ONE", "KEY-TWO", "KEY-3"] {
            assert!(!shown.contains(k), "{shown}");
        }
        assert!(shown.contains("https://b"), "the rest is kept: {shown}");
        let text = Exchange::Response {
            status: 400,
            retry_after: None,
            body: Ok("no hmac here, not JSON".into()),
        };
        assert_eq!(
            format!("{:?}", hide_hmac_keys_in(text.clone())),
            format!("{text:?}")
        );
    }
}
