//! The provider's wire vocabulary: API paths, query and body field names,
//! chat ids, id forms, error codes and session states — everything the Wawp
//! client sends or reads and the simulator serves.
//!
//! Both [`provider::wawp`](crate::provider::wawp) and [`sim`](crate::sim)
//! import it, and neither imports the other: the simulator plays the
//! provider as documented (API.md), not as our client happens to call it,
//! and a change of vocabulary is made once, here, for both sides.

pub mod ids;
pub mod webhook;

/// A surface's posting paths under `$root` (`TEXT`, `IMAGE`, `VOICE`,
/// `VIDEO`: `$root/text` …), the table of them by kind (`STATUS`, which the
/// simulator routes by) and the path of one kind (`status`, which the
/// client posts to).
macro_rules! posting_paths {
    ($root:literal) => {
        pub const TEXT: &str = concat!($root, "/text");
        pub const IMAGE: &str = concat!($root, "/image");
        pub const VOICE: &str = concat!($root, "/voice");
        pub const VIDEO: &str = concat!($root, "/video");

        /// Every posting path with its kind, in [`Kind::ALL`]'s order.
        pub const STATUS: [(&str, Kind); 4] = [
            (TEXT, Kind::Text),
            (IMAGE, Kind::Image),
            (VOICE, Kind::Voice),
            (VIDEO, Kind::Video),
        ];

        /// The posting path of a kind.
        pub fn status(kind: Kind) -> &'static str {
            STATUS[kind as usize].0
        }
    };
}

/// Paths of the Wawp API, each with the public page it was taken from.
pub mod paths {
    use crate::model::Kind;

    /// `GET`, answers `{"id": "3EB0…"}`.
    /// Source: <https://api.wawp.net/en/docs/v2/status/new-message-id>.
    pub const NEW_MESSAGE_ID: &str = "/v2/status/new-message-id";
    // `POST /v2/status/{text,image,voice,video}`, JSON body as in API.md.
    // Source: <https://api.wawp.net/en/docs/v2/status/text> and the image,
    // voice and video pages of the "24 Hour Status" section of
    // <https://docs.wawp.net>.
    posting_paths!("/v2/status");
    /// `POST`, JSON body `{"id", "contacts"}`. Source: "Delete status" in the
    /// "24 Hour Status" section of <https://docs.wawp.net> (API.md).
    pub const DELETE: &str = "/v2/status/delete";
    /// `POST`, JSON body `{"chatId", "messageId", "downloadMedia"}`: one
    /// message by id. Source: <https://api.wawp.net/en/docs/v2/messages/get>
    /// (its example `messageId` is the serialized `true_<chat>_<id>` form).
    pub const GET_MESSAGE: &str = "/v2/messages/get";
    /// `GET`, query `chatId`, `limit`, `offset`, `downloadMedia`: a chat's
    /// messages. Source: <https://api.wawp.net/en/docs/v2/chats/messages>;
    /// the WAHA equivalent is `GET /api/{session}/chats/{chatId}/messages`
    /// (<https://waha.devlike.pro/docs/how-to/chats/>).
    pub const CHAT_MESSAGES: &str = "/v2/chats/messages";
    /// Session state (`status: "WORKING"` when usable). Source:
    /// <https://api.wawp.net/en/docs/v2/session/info>, which documents
    /// `POST`; <https://docs.wawp.net> lists it as `GET`. The client uses
    /// `POST`; the simulator answers both.
    pub const SESSION_INFO: &str = "/v2/session/info";
    /// `POST`, JSON body `{"url", "events", "is_active", "retries":
    /// {"delay", "attempts"}, "hmac"}`: adds the URL to the instance's
    /// webhooks, or updates it in place (paid tiers). Source:
    /// <https://api.wawp.net/en/docs/v2/webhook/set>.
    pub const WEBHOOK_SET: &str = "/v2/webhook/set";
}

/// Paths, headers and query names of WAHA's own API, which Wawp fronts and
/// self-hosting users run directly (`provider = "waha"`). Each path takes
/// the session name; [`waha::session_path`] fills it in.
///
/// Sources: WAHA's controllers in `devlikeapro/waha`
/// (`src/api/status.controller.ts`: `@Controller('api/:session/status')`
/// with `text`, `image`, `voice`, `video`, `delete`, `new-message-id`;
/// `src/api/chats.controller.ts`: `api/:session/chats/:chatId/messages` and
/// `…/messages/:messageId`; `src/api/sessions.controller.ts`:
/// `GET api/sessions/:session`) and <https://waha.devlike.pro/docs/how-to/status/>.
pub mod waha {
    use crate::model::Kind;

    // Posting paths, with `{session}` for the session name.
    posting_paths!("/api/{session}/status");
    /// `POST`, JSON body `{"id", "contacts"}`. NOWEB and GOWS only: WEBJS
    /// answers 501 "not implemented by engine".
    pub const DELETE: &str = "/api/{session}/status/delete";
    /// `GET`, answers `{"id": "…"}`. NOWEB and GOWS only (WEBJS: 501).
    pub const NEW_MESSAGE_ID: &str = "/api/{session}/status/new-message-id";
    /// `GET`: the chat's messages, newest first; query
    /// [`field::LIMIT`](super::field::LIMIT) (default [`DEFAULT_LIMIT`]),
    /// [`field::OFFSET`](super::field::OFFSET),
    /// [`field::DOWNLOAD_MEDIA`](super::field::DOWNLOAD_MEDIA) (default
    /// true) — Wawp's names too — and [`FILTER_FROM_ME`],
    /// [`FILTER_TIMESTAMP_GTE`], [`FILTER_TIMESTAMP_LTE`].
    pub const CHAT_MESSAGES: &str = "/api/{session}/chats/{chatId}/messages";
    /// WAHA's default page size of a chat listing (`GetChatMessagesQuery`).
    pub const DEFAULT_LIMIT: usize = 10;
    /// `GET`: one message by (serialized) id; 404 `Message not found`.
    pub const CHAT_MESSAGE: &str = "/api/{session}/chats/{chatId}/messages/{messageId}";
    /// `GET`: the session (`status` WORKING / SCAN_QR_CODE / FAILED …,
    /// `engine.engine`, `me`).
    pub const SESSION: &str = "/api/sessions/{session}";

    /// The API key header of every WAHA request (`WHATSAPP_API_KEY` on the
    /// server side). Sent as a header, the key never travels in a URL.
    pub const API_KEY_HEADER: &str = "X-Api-Key";
    /// The filters of a chat listing, WAHA's own query names.
    pub const FILTER_FROM_ME: &str = "filter.fromMe";
    pub const FILTER_TIMESTAMP_GTE: &str = "filter.timestamp.gte";
    pub const FILTER_TIMESTAMP_LTE: &str = "filter.timestamp.lte";

    /// `template` with `{session}` (and `{chatId}`, `{messageId}` when
    /// given) filled in, each percent-encoded as one path segment.
    pub fn session_path(
        template: &str,
        session: &str,
        chat_id: Option<&str>,
        message_id: Option<&str>,
    ) -> String {
        let mut p = template.replace("{session}", &segment(session));
        if let Some(c) = chat_id {
            p = p.replace("{chatId}", &segment(c));
        }
        if let Some(m) = message_id {
            p = p.replace("{messageId}", &segment(m));
        }
        p
    }

    /// Percent-encodes everything but RFC 3986 unreserved characters and
    /// `@` (kept readable: `status@broadcast`).
    fn segment(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'@') {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }
}

/// Names of query parameters and JSON request fields.
pub mod field {
    /// Query parameter of every request: the Wawp instance.
    pub const INSTANCE_ID: &str = "instance_id";
    /// Query parameter of every request: the secret token. Wawp takes it in
    /// the URL, which is why every URL that could reach a log is redacted.
    pub const ACCESS_TOKEN: &str = "access_token";
    /// The same token as a request header, which keeps it out of URLs. The
    /// simulator accepts either; the header wins when both are given.
    pub const ACCESS_TOKEN_HEADER: &str = "access-token";
    /// The chat of a message look-up or listing.
    pub const CHAT_ID: &str = "chatId";
    /// The (serialized) id of a message look-up.
    pub const MESSAGE_ID: &str = "messageId";
    /// Whether a look-up or listing downloads media (never: we compare URLs).
    /// Both APIs name it so, like the paging of a chat listing.
    pub const DOWNLOAD_MEDIA: &str = "downloadMedia";
    /// Paging of a chat listing.
    pub const LIMIT: &str = "limit";
    pub const OFFSET: &str = "offset";
    /// The message id in a status post (our pre-generated id) or a delete.
    pub const ID: &str = "id";
}

/// The chat that holds one's own statuses (WhatsApp's status broadcast list).
pub const STATUS_CHAT: &str = "status@broadcast";

/// Error code meaning "rejected before processing: nothing was posted".
///
/// Neither Wawp nor WAHA documents such a code, so this is our convention:
/// a 5xx is taken as *not processed* only when its JSON body carries
/// `"code": "NOT_PROCESSED"` (or `"error": "NOT_PROCESSED"`). The simulator
/// emits it for its `error_5xx_before` fault. Against the real provider no
/// 5xx carries it, so every real 5xx stays `InDoubt` — the safe reading.
pub const NOT_PROCESSED: &str = "NOT_PROCESSED";

/// `status` of a session that can send (session info).
pub const SESSION_WORKING: &str = "WORKING";
/// `status` of a session waiting for its QR code to be scanned: logged out.
pub const SESSION_SCAN_QR_CODE: &str = "SCAN_QR_CODE";
/// `status` of a session that stopped on an error (WAHA's `WAHASessionStatus`).
pub const SESSION_FAILED: &str = "FAILED";
/// The `message` of WAHA's 404 for a message look-up that found nothing
/// (`chats.controller.ts`: `throw new NotFoundException('Message not found')`).
pub const MESSAGE_NOT_FOUND: &str = "Message not found";

/// The serialized id WAHA-style APIs use for a message of ours in the status
/// chat: `true_status@broadcast_<id>`.
pub fn serialized_status_id(message_id: &str) -> String {
    format!("true_{STATUS_CHAT}_{message_id}")
}

/// The bare message id of a serialized one (`true_<chat>_<id>` → `<id>`);
/// a bare id is returned unchanged.
pub fn bare_message_id(id: &str) -> &str {
    if id.starts_with("true_") || id.starts_with("false_") {
        let mut parts = id.splitn(3, '_');
        let _from_me = parts.next();
        let _chat = parts.next();
        if let Some(rest) = parts.next() {
            // A group message may carry a trailing `_<participant>`.
            return rest.split('_').next().unwrap_or(rest);
        }
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;

    #[test]
    fn serialized_ids_round_trip() {
        let id = "3EB0AAAABBBBCCCCDDDD0000";
        assert_eq!(bare_message_id(&serialized_status_id(id)), id);
        assert_eq!(bare_message_id(id), id);
        assert_eq!(bare_message_id("false_123@g.us_ABC_999@c.us"), "ABC");
    }

    /// The simulator routes by the table, the client posts by the function:
    /// they must name the same path for every kind.
    #[test]
    fn the_posting_table_and_function_agree() {
        for (path, kind) in paths::STATUS {
            assert_eq!(paths::status(kind), path);
        }
        assert_eq!(paths::STATUS.map(|(_, kind)| kind), Kind::ALL);
        for (path, kind) in waha::STATUS {
            assert_eq!(waha::status(kind), path);
        }
        assert_eq!(waha::STATUS.map(|(_, kind)| kind), Kind::ALL);
    }

    #[test]
    fn waha_paths_fill_in_and_encode_their_segments() {
        assert_eq!(
            waha::session_path(waha::TEXT, "default", None, None),
            "/api/default/status/text"
        );
        assert_eq!(
            waha::session_path(
                waha::CHAT_MESSAGE,
                "my shop/1",
                Some(STATUS_CHAT),
                Some("true_status@broadcast_3EB0AB")
            ),
            "/api/my%20shop%2F1/chats/status@broadcast/messages/true_status@broadcast_3EB0AB"
        );
    }
}
