//! Keeping the token out of everything that leaves the client.
//!
//! Wawp takes the access token as a query parameter, so every request URL
//! carries it, and reqwest puts the URL into its errors. Transport errors
//! are stripped of their URL where they are read
//! ([`exchange_from_error`](super::classify::exchange_from_error)); every
//! string the client hands out (reasons, error messages, log fields) is
//! passed through [`redact`] by way of [`Redact`].

use super::classify::Exchange;
use crate::provider::{Lookup, ProviderError, SendOutcome};
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

    mod secrets {
        use chrono::Utc;
        use serde_json::json;

        use crate::config::{InstanceConfig, ProviderSettings};
        use crate::model::{Kind, StatusBody};
        use crate::provider::{OutgoingStatus, Provider, StatusQuery, WawpClient};
        use crate::sim::{SimConfig, Simulator};
        use std::io::Write;
        use std::sync::{Arc, Mutex, OnceLock};
        use tracing_subscriber::util::SubscriberInitExt as _;

        const TOKEN: &str = "tok-SECRET-4f9a2c77e1";
        const OTHER_TOKEN: &str = "tok-OTHER-0b3d9e55a8";

        #[derive(Clone)]
        struct Capture(Arc<Mutex<Vec<u8>>>);

        impl Write for Capture {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }

        /// Everything logged at any level by anyone (reqwest's `log` records
        /// included, through the log bridge `try_init` installs). Global,
        /// because hyper and reqwest log from their own tasks.
        fn capture() -> (Capture, Option<tracing::subscriber::DefaultGuard>) {
            static GLOBAL: OnceLock<Option<Capture>> = OnceLock::new();
            let global = GLOBAL.get_or_init(|| {
                let cap = Capture(Arc::new(Mutex::new(Vec::new())));
                subscriber(&cap).try_init().ok().map(|_| cap)
            });
            match global {
                Some(cap) => (cap.clone(), None),
                // Another test installed a global subscriber first: capture
                // this thread (the test runs on a current-thread runtime).
                None => {
                    let cap = Capture(Arc::new(Mutex::new(Vec::new())));
                    let guard = tracing::subscriber::set_default(subscriber(&cap));
                    (cap, Some(guard))
                }
            }
        }

        /// Every level, no colours, written into `cap`.
        fn subscriber(cap: &Capture) -> impl tracing::Subscriber + Send + Sync {
            let w = cap.clone();
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .with_writer(move || w.clone())
                .finish()
        }

        fn client(base: &str, token: &str, supplied_id: bool) -> WawpClient {
            let inst: InstanceConfig = serde_json::from_value(json!({
                "base_url": base,
                "instance_id": "inst-1",
                "access_token": token,
                "supplied_id": supplied_id,
            }))
            .expect("instance config");
            let settings: ProviderSettings = serde_json::from_value(json!({
                "connect_timeout_ms": 300,
                "request_timeout_ms": 300,
            }))
            .expect("provider settings");
            WawpClient::new("main", &inst, &settings).expect("client")
        }

        #[tokio::test(flavor = "current_thread")]
        async fn the_token_never_leaves_the_module() {
            let (cap, _guard) = capture();
            let mut cfg = SimConfig {
                hang_ms: 1_000,
                seed: Some(7),
                ..SimConfig::default()
            };
            cfg.tokens.insert("inst-1".into(), TOKEN.into());
            let sim = Simulator::start("127.0.0.1:0".parse().unwrap(), cfg.clone())
                .await
                .unwrap();
            let good = client(&sim.base_url(), TOKEN, true);
            let wrong = client(&sim.base_url(), OTHER_TOKEN, true);
            let refused = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let port = l.local_addr().unwrap().port();
                drop(l);
                client(&format!("http://127.0.0.1:{port}"), TOKEN, true)
            };
            let mut seen: Vec<String> = vec![format!("{good:?}"), format!("{wrong:?}")];
            let faults: [fn(&mut SimConfig); 8] = [
                |_| {},
                |c| c.lost_response = 1.0,
                |c| c.error_5xx_before = 1.0,
                |c| c.error_5xx_after = 1.0,
                |c| c.hang = 1.0,
                |c| c.hang_after_commit = 1.0,
                |c| c.rate_limited_429 = 1.0,
                |c| c.malformed_body = 1.0,
            ];
            let mut labels = Vec::new();
            for (i, set) in faults.iter().enumerate() {
                let mut c = cfg.clone();
                set(&mut c);
                sim.set_config(c).unwrap();
                let body =
                    StatusBody::parse("text", &json!({ "text": format!("s{i}") }).to_string())
                        .unwrap();
                let id = crate::wire::ids::local_message_id();
                let status = OutgoingStatus {
                    message_id: &id,
                    body: &body,
                };
                let out = good.send_status(&status).await;
                labels.push(out.label());
                seen.push(format!("{out:?}"));
                seen.push(format!("{:?}", good.new_message_id().await));
                let q = StatusQuery {
                    message_id: &id,
                    kind: Kind::Text,
                    fingerprint: &body.fingerprint(),
                    sent_after: Utc::now() - chrono::Duration::minutes(1),
                };
                seen.push(format!("{:?}", good.find_status(&q).await));
                for other in [&wrong, &refused] {
                    seen.push(format!("{:?}", other.send_status(&status).await));
                    seen.push(format!("{:?}", other.find_status(&q).await));
                }
            }
            sim.set_config(cfg.clone()).unwrap();
            for r in [
                good.probe().await,
                wrong.probe().await,
                refused.probe().await,
            ] {
                if let Err(e) = r {
                    seen.push(e.to_string());
                    seen.push(format!("{e:?}"));
                }
            }
            seen.push(format!(
                "{:?}",
                good.delete_status("3EB0000000000000000000FF").await
            ));
            seen.push(format!("{:?}", wrong.new_message_id().await));
            seen.push(format!("{:?}", refused.new_message_id().await));
            sim.shutdown().await;

            // Every class was exercised, so the check below covers them all.
            assert_eq!(
                labels,
                [
                    "posted",
                    "in_doubt",
                    "retryable",
                    "in_doubt",
                    "in_doubt",
                    "in_doubt",
                    "retryable",
                    "in_doubt"
                ]
            );
            let all = seen.join("\n");
            assert!(
                all.contains("instance_down") || all.contains("InstanceDown"),
                "{all}"
            );
            assert!(all.contains("request not sent"), "{all}");
            for t in [TOKEN, OTHER_TOKEN] {
                assert!(!all.contains(t), "token in an outcome or error:\n{all}");
            }
            let logs = String::from_utf8_lossy(&cap.0.lock().unwrap_or_else(|e| e.into_inner()))
                .to_string();
            assert!(
                logs.contains("provider call"),
                "capture is not working:\n{logs}"
            );
            assert!(
                logs.contains("provider exchange"),
                "trace level not captured:\n{logs}"
            );
            assert!(
                logs.contains("hyper_util"),
                "library logs not captured:\n{logs}"
            );
            for t in [TOKEN, OTHER_TOKEN] {
                assert!(!logs.contains(t), "token in the logs:\n{logs}");
            }
        }
    }
}
