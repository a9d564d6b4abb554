//! The outbox's vocabulary: states, kinds, payloads, rows, and the validation
//! that turns a row written by someone else into either a sendable status or
//! a message naming the field at fault.

mod names;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub(crate) use names::namesake;
pub use names::{AttemptOutcome, Kind, State};

/// One row of `status_outbox`, as every backend returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxRow {
    pub id: Uuid,
    pub instance: String,
    /// Kept as text: rows written by upstream apps may carry a kind we reject.
    pub kind: String,
    /// Kept as the raw JSON text: it is validated, not trusted.
    pub payload: String,
    pub dedupe_key: Option<String>,
    pub message_id: Option<String>,
    pub state: State,
    pub priority: i32,
    pub not_before: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// When the latest claim was made: the earliest time the latest send
    /// can have reached the provider (bounds the reconciler's search).
    pub claimed_at: Option<DateTime<Utc>>,
    pub reconcile_attempts: i32,
    pub parked_at: Option<DateTime<Utc>>,
    pub provider_id: Option<String>,
    pub last_error: Option<String>,
    pub last_http_status: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub posted_at: Option<DateTime<Utc>>,
}

impl OutboxRow {
    /// The id the provider's events carry for this status: the id it
    /// answered with (`provider_id`, where it assigns its own), else the
    /// pre-generated one. Views are recorded under it.
    pub fn event_id(&self) -> Option<&str> {
        self.provider_id.as_deref().or(self.message_id.as_deref())
    }
}

/// One row of `status_attempts`: what happened on one try.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub status_id: Uuid,
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub outcome: String,
    pub http_status: Option<i32>,
    pub latency_ms: i64,
    pub error: Option<String>,
}

/// A file reference in a media status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediaFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    pub mimetype: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
}

/// A validated status body, ready to be sent. Field names follow API.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StatusBody {
    Text {
        text: String,
        #[serde(rename = "backgroundColor", skip_serializing_if = "Option::is_none")]
        background_color: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        font: Option<u8>,
        #[serde(rename = "linkPreview", skip_serializing_if = "Option::is_none")]
        link_preview: Option<bool>,
        #[serde(
            rename = "linkPreviewHighQuality",
            skip_serializing_if = "Option::is_none"
        )]
        link_preview_high_quality: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        contacts: Option<Vec<String>>,
    },
    Image {
        file: MediaFile,
        #[serde(skip_serializing_if = "Option::is_none")]
        caption: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        contacts: Option<Vec<String>>,
    },
    Voice {
        file: MediaFile,
        #[serde(rename = "backgroundColor", skip_serializing_if = "Option::is_none")]
        background_color: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        convert: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        contacts: Option<Vec<String>>,
    },
    Video {
        file: MediaFile,
        #[serde(skip_serializing_if = "Option::is_none")]
        caption: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        convert: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        contacts: Option<Vec<String>>,
    },
}

/// Longest text status WhatsApp accepts.
pub const MAX_TEXT_CHARS: usize = 700;
/// Longest caption WhatsApp accepts on a media status.
pub const MAX_CAPTION_CHARS: usize = 1024;

/// Prefix a backend puts on a payload column that was not UTF-8 text, so that
/// validation can name the problem instead of posting mangled text.
pub const NOT_UTF8_MARKER: &str = "\u{0}statusd:not-utf8\u{0}";

/// Why a row cannot be sent. The message names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ValidationError {
    pub field: String,
    pub problem: String,
}

impl ValidationError {
    fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        ValidationError {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl StatusBody {
    pub fn kind(&self) -> Kind {
        namesake!(self, StatusBody => Kind: Text, Image, Voice, Video)
    }

    /// Validates a row's `kind` and `payload` columns, as written by anyone.
    pub fn parse(kind: &str, payload: &str) -> Result<StatusBody, ValidationError> {
        let kind: Kind = kind
            .parse()
            .map_err(|e: String| ValidationError::new("kind", e))?;
        if payload.starts_with(NOT_UTF8_MARKER) {
            return Err(ValidationError::new("payload", "is not valid UTF-8 text"));
        }
        let value: Value = serde_json::from_str(payload)
            .map_err(|e| ValidationError::new("payload", format!("not valid JSON: {e}")))?;
        // PostgreSQL's jsonb and text refuse NUL; SQLite stores it. Refused
        // here too, so that both backends post the same rows.
        if let Some(field) = nul_in(&value, "payload") {
            return Err(ValidationError::new(
                field,
                "must not contain a NUL character",
            ));
        }
        let obj = value
            .as_object()
            .ok_or_else(|| ValidationError::new("payload", "must be a JSON object"))?;
        let contacts = contacts(obj)?;
        let body = match kind {
            Kind::Text => {
                let text = req_str(obj, "text")?;
                if text.trim().is_empty() {
                    return Err(ValidationError::new("payload.text", "must not be empty"));
                }
                let n = text.chars().count();
                if n > MAX_TEXT_CHARS {
                    return Err(ValidationError::new(
                        "payload.text",
                        format!("is {n} characters, the limit is {MAX_TEXT_CHARS}"),
                    ));
                }
                let font = match obj.get("font") {
                    None | Some(Value::Null) => None,
                    Some(v) => match v.as_u64() {
                        Some(f) if f <= 5 => Some(f as u8),
                        _ => {
                            return Err(ValidationError::new(
                                "payload.font",
                                "must be an integer from 0 to 5",
                            ))
                        }
                    },
                };
                StatusBody::Text {
                    text,
                    background_color: color(obj)?,
                    font,
                    link_preview: opt_bool(obj, "linkPreview")?,
                    link_preview_high_quality: opt_bool(obj, "linkPreviewHighQuality")?,
                    contacts,
                }
            }
            Kind::Image => StatusBody::Image {
                file: file(obj, &["image/"])?,
                caption: caption(obj)?,
                contacts,
            },
            Kind::Voice => StatusBody::Voice {
                file: file(obj, &["audio/"])?,
                background_color: color(obj)?,
                convert: opt_bool(obj, "convert")?,
                contacts,
            },
            Kind::Video => StatusBody::Video {
                file: file(obj, &["video/"])?,
                caption: caption(obj)?,
                convert: opt_bool(obj, "convert")?,
                contacts,
            },
        };
        Ok(body)
    }

    /// The JSON the provider expects (API.md), without the `kind` tag.
    pub fn to_provider_json(&self) -> serde_json::Map<String, Value> {
        let mut v = match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        v.remove("kind");
        v
    }

    /// A stable fingerprint of what a viewer sees: kind plus content. Used to
    /// find a status among the instance's recent statuses when the provider
    /// assigned its own id, and by the simulator to count duplicates.
    pub fn fingerprint(&self) -> String {
        let (kind, parts): (Kind, Vec<&str>) = match self {
            StatusBody::Text { text, .. } => (Kind::Text, vec![text]),
            StatusBody::Image { file, caption, .. } | StatusBody::Video { file, caption, .. } => (
                self.kind(),
                vec![
                    file.url.as_deref().or(file.data.as_deref()).unwrap_or(""),
                    caption.as_deref().unwrap_or(""),
                ],
            ),
            StatusBody::Voice { file, .. } => (
                Kind::Voice,
                vec![file.url.as_deref().or(file.data.as_deref()).unwrap_or("")],
            ),
        };
        fingerprint_of(kind, &parts)
    }
}

/// Fingerprint of a kind and its content parts (shared with the provider's
/// listing, which reports content in the same pieces).
pub fn fingerprint_of(kind: Kind, parts: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(kind.as_str().as_bytes());
    for p in parts {
        h.update([0u8]);
        h.update(p.as_bytes());
    }
    let out = h.finalize();
    out.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The path of the first string (or key) holding a NUL character.
fn nul_in(v: &Value, path: &str) -> Option<String> {
    match v {
        Value::String(s) if s.contains('\0') => Some(path.to_string()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, x)| nul_in(x, &format!("{path}[{i}]"))),
        Value::Object(m) => m.iter().find_map(|(k, x)| {
            let p = format!("{path}.{}", k.replace('\0', "\\0"));
            if k.contains('\0') {
                Some(p)
            } else {
                nul_in(x, &p)
            }
        }),
        _ => None,
    }
}

type Obj = serde_json::Map<String, Value>;

fn req_str(obj: &Obj, key: &str) -> Result<String, ValidationError> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) => Err(ValidationError::new(
            format!("payload.{key}"),
            "is required",
        )),
        Some(_) => Err(ValidationError::new(
            format!("payload.{key}"),
            "must be a string",
        )),
    }
}

fn opt_bool(obj: &Obj, key: &str) -> Result<Option<bool>, ValidationError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ValidationError::new(
            format!("payload.{key}"),
            "must be true or false",
        )),
    }
}

fn color(obj: &Obj) -> Result<Option<String>, ValidationError> {
    match obj.get("backgroundColor") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s))
            if s.len() == 7
                && s.starts_with('#')
                && s[1..].chars().all(|c| c.is_ascii_hexdigit()) =>
        {
            Ok(Some(s.clone()))
        }
        Some(_) => Err(ValidationError::new(
            "payload.backgroundColor",
            "must be a colour like #RRGGBB",
        )),
    }
}

fn caption(obj: &Obj) -> Result<Option<String>, ValidationError> {
    match obj.get("caption") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let n = s.chars().count();
            if n > MAX_CAPTION_CHARS {
                Err(ValidationError::new(
                    "payload.caption",
                    format!("is {n} characters, the limit is {MAX_CAPTION_CHARS}"),
                ))
            } else {
                Ok(Some(s.clone()))
            }
        }
        Some(_) => Err(ValidationError::new("payload.caption", "must be a string")),
    }
}

fn contacts(obj: &Obj) -> Result<Option<Vec<String>>, ValidationError> {
    match obj.get("contacts") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) if !s.is_empty() => Ok(s.clone()),
                _ => Err(ValidationError::new(
                    format!("payload.contacts[{i}]"),
                    "must be a non-empty string (a phone number or chat id)",
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(ValidationError::new(
            "payload.contacts",
            "must be a list of recipients, or absent for all contacts",
        )),
    }
}

fn file(obj: &Obj, mime_prefixes: &[&str]) -> Result<MediaFile, ValidationError> {
    let f = match obj.get("file") {
        Some(Value::Object(f)) => f,
        None | Some(Value::Null) => {
            return Err(ValidationError::new("payload.file", "is required"))
        }
        Some(_) => {
            return Err(ValidationError::new(
                "payload.file",
                "must be an object with url (or data) and mimetype",
            ))
        }
    };
    let get = |k: &str| -> Result<Option<String>, ValidationError> {
        match f.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ValidationError::new(
                format!("payload.file.{k}"),
                "must be a string",
            )),
        }
    };
    let url = get("url")?;
    let data = get("data")?;
    match (&url, &data) {
        (None, None) => {
            return Err(ValidationError::new(
                "payload.file.url",
                "is required (or payload.file.data with base64 content)",
            ))
        }
        (Some(u), _) => {
            let ok = u
                .strip_prefix("https://")
                .map(|rest| {
                    !rest.is_empty() && !rest.starts_with('/') && !u.contains(char::is_whitespace)
                })
                .unwrap_or(false);
            if !ok {
                return Err(ValidationError::new(
                    "payload.file.url",
                    "must be an https:// URL",
                ));
            }
        }
        (None, Some(d)) if d.is_empty() => {
            return Err(ValidationError::new(
                "payload.file.data",
                "must not be empty",
            ))
        }
        _ => {}
    }
    let mimetype = get("mimetype")?
        .ok_or_else(|| ValidationError::new("payload.file.mimetype", "is required"))?;
    if !mime_prefixes.iter().any(|p| mimetype.starts_with(p)) {
        return Err(ValidationError::new(
            "payload.file.mimetype",
            format!("`{mimetype}` is not {}*", mime_prefixes.join("* or ")),
        ));
    }
    Ok(MediaFile {
        url,
        data,
        mimetype,
        filename: get("filename")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_status_round_trips_to_provider_fields() {
        let b = StatusBody::parse(
            "text",
            r##"{"text":"hi","backgroundColor":"#112233","font":2,"linkPreview":true}"##,
        )
        .unwrap();
        let j = b.to_provider_json();
        assert_eq!(j["text"], "hi");
        assert_eq!(j["backgroundColor"], "#112233");
        assert_eq!(j["font"], 2);
        assert!(!j.contains_key("kind"));
    }

    #[test]
    fn every_bad_field_is_named() {
        let cases = [
            ("gif", r#"{"text":"x"}"#, "kind"),
            ("text", "{not json", "payload"),
            ("text", "[]", "payload"),
            ("text", "{}", "payload.text"),
            ("text", r#"{"text":"   "}"#, "payload.text"),
            ("text", r#"{"text":5}"#, "payload.text"),
            ("text", r#"{"text":"a","font":9}"#, "payload.font"),
            ("text", r#"{"text":"a\u0000b"}"#, "payload.text"),
            (
                "image",
                r#"{"file":{"url":"https://x/a.jpg","mimetype":"image/jpeg"},"caption":"\u0000"}"#,
                "payload.caption",
            ),
            (
                "text",
                r#"{"text":"a","contacts":["1","2\u0000"]}"#,
                "payload.contacts[1]",
            ),
            (
                "text",
                r#"{"text":"a","backgroundColor":"red"}"#,
                "payload.backgroundColor",
            ),
            (
                "text",
                r#"{"text":"a","contacts":"all"}"#,
                "payload.contacts",
            ),
            (
                "text",
                r#"{"text":"a","contacts":[1]}"#,
                "payload.contacts[0]",
            ),
            ("image", r#"{"caption":"x"}"#, "payload.file"),
            (
                "image",
                r#"{"file":{"url":"http://x/a.jpg","mimetype":"image/jpeg"}}"#,
                "payload.file.url",
            ),
            (
                "image",
                r#"{"file":{"url":"https://x/a.jpg"}}"#,
                "payload.file.mimetype",
            ),
            (
                "image",
                r#"{"file":{"url":"https://x/a.jpg","mimetype":"video/mp4"}}"#,
                "payload.file.mimetype",
            ),
            (
                "voice",
                r#"{"file":{"mimetype":"audio/ogg"}}"#,
                "payload.file.url",
            ),
        ];
        for (kind, payload, field) in cases {
            let e = StatusBody::parse(kind, payload).unwrap_err();
            assert_eq!(e.field, field, "{kind} {payload}: {e}");
        }
        let long = "x".repeat(MAX_CAPTION_CHARS + 1);
        let p = serde_json::json!({"file":{"url":"https://x/a.mp4","mimetype":"video/mp4"},"caption":long});
        let e = StatusBody::parse("video", &p.to_string()).unwrap_err();
        assert_eq!(e.field, "payload.caption");
        assert!(e.to_string().contains("1025 characters"));
    }

    #[test]
    fn fingerprint_depends_on_content_only() {
        let a = StatusBody::parse("text", r#"{"text":"a","font":1}"#).unwrap();
        let b = StatusBody::parse("text", r#"{"text":"a","font":2}"#).unwrap();
        let c = StatusBody::parse("text", r#"{"text":"b"}"#).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn states_parse_and_print() {
        for s in State::ALL {
            assert_eq!(s.as_str().parse::<State>().unwrap(), s);
        }
        assert!("done"
            .parse::<State>()
            .unwrap_err()
            .contains("pending_upload"));
    }

    #[test]
    fn state_sets_partition_every_state() {
        for s in State::ALL {
            assert_ne!(
                State::LIVE.contains(&s),
                State::TERMINAL.contains(&s),
                "{s}"
            );
            assert_eq!(s.is_terminal(), State::TERMINAL.contains(&s), "{s}");
        }
        assert_eq!(State::LIVE.len() + State::TERMINAL.len(), State::ALL.len());
        assert!(State::IDLE.iter().all(|s| State::LIVE.contains(s)));
        assert!(!State::IDLE.contains(&State::Uploading));
        assert!(State::RETRYABLE.iter().all(|s| s.is_terminal()));
    }
}
