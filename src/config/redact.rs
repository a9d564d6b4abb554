//! Database URLs made safe to print: one function for every place a URL is
//! shown (`config check`, `config show`, `migrate`, connection errors).

/// What a secret that is set is shown as.
pub(crate) const REDACTED: &str = "[redacted]";

/// Query parameters whose values are secrets (`password`, `sslpassword`,
/// `passfile`, `sslkey`, `token`, …): matched by part of the name, since
/// drivers add their own.
fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "pass",
        "pwd",
        "secret",
        "token",
        "key",
        "auth",
        "credential",
    ]
    .iter()
    .any(|s| name.contains(s))
}

/// A database URL safe to print: the user-info password and every secret
/// query parameter replaced by `[redacted]`. Parsed with `url`, so every
/// place the URL syntax allows a password is covered; a URL that does not
/// parse is not printed beyond its scheme. The one function every printed
/// database URL goes through.
pub fn redact_url(raw: &str) -> String {
    // `url` percent-encodes brackets; put a plain marker in, then swap it.
    const MARK: &str = "STATUSDREDACTEDMARK";
    let scheme = raw.split_once(':').map(|(s, _)| s).unwrap_or("");
    let Ok(mut url) = url::Url::parse(raw) else {
        // sqlx's SQLite URLs are a path with options, no credentials: a
        // path with spaces is legal there and worth showing.
        if scheme == "sqlite" {
            return raw.to_string();
        }
        return format!("{scheme}:[unparsable URL, redacted]");
    };
    let mut changed = false;
    if url.password().is_some() {
        changed = url.set_password(Some(MARK)).is_ok();
    }
    if url.query_pairs().any(|(k, _)| is_secret_param(&k)) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_secret_param(&k) {
                    MARK.to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
        changed = true;
    }
    if changed {
        url.as_str().replace(MARK, REDACTED)
    } else {
        raw.to_string()
    }
}

/// `text` (a driver's error, say) with the database URL and every secret
/// in it — raw and percent-decoded — replaced, for errors that may quote
/// the URL or a part of it.
pub fn redact_url_secrets_in(text: &str, raw_url: &str) -> String {
    let mut out = text.replace(raw_url, &redact_url(raw_url));
    let Ok(url) = url::Url::parse(raw_url) else {
        return out;
    };
    let mut secrets: Vec<String> = Vec::new();
    if let Some(p) = url.password() {
        secrets.push(p.to_string());
        if let Ok(decoded) = percent_encoding::percent_decode_str(p).decode_utf8() {
            secrets.push(decoded.into_owned());
        }
    }
    for (k, v) in url.query_pairs() {
        if is_secret_param(&k) {
            secrets.push(v.into_owned());
        }
    }
    if let Some(q) = url.query() {
        for pair in q.split('&') {
            if let Some((k, v)) = pair.split_once('=') {
                if is_secret_param(k) {
                    secrets.push(v.to_string());
                }
            }
        }
    }
    // Longest first, so that a secret containing another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(s.as_str(), REDACTED);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_database_passwords() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:[redacted]@h:5432/db"
        );
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }

    #[test]
    fn redacts_every_password_form_of_a_database_url() {
        let shown = redact_url(
            "postgresql://u:p%40ss@h/db?sslmode=require&Password=q1&sslpassword=q2&passfile=/x",
        );
        assert_eq!(
            shown,
            "postgresql://u:[redacted]@h/db?sslmode=require&Password=[redacted]\
             &sslpassword=[redacted]&passfile=[redacted]"
        );
        // Unparsable: nothing past the scheme, except SQLite paths, which
        // carry no credentials.
        assert_eq!(
            redact_url("postgres://u:pw@h:port/db"),
            "postgres:[unparsable URL, redacted]"
        );
        assert_eq!(redact_url("sqlite://my db.db"), "sqlite://my db.db");
        // Driver messages quoting a part of the URL are scrubbed too.
        let url = "postgres://u:p%40ss@h/db?password=q1";
        assert_eq!(
            redact_url_secrets_in("bad password p@ss or p%40ss, q1 at host h", url),
            "bad password [redacted] or [redacted], [redacted] at host h"
        );
    }
}
