//! A client for the admin HTTP API as the tests call it (zero-to-production's
//! `TestApp` helpers): one request with the admin token, its answer read in
//! full. A call that needs more than a path, a token and a body (a custom
//! header, a raw socket) is written out where it is made.

use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::Value;

/// The admin server at `base`, called with a bearer token or none.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// One answer: its status code, headers and body.
#[derive(Debug)]
pub struct Reply {
    pub code: u16,
    pub headers: HeaderMap,
    pub text: String,
}

impl Reply {
    /// The body as JSON; fails the test, showing the body, when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// A header's value as text; fails the test when it is absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header: {:?}", self.headers))
            .to_str()
            .expect("a text header")
    }
}

impl Api {
    /// The admin server at `base` (`http://host:port`), called with `token`.
    pub fn new(base: &str, token: &str) -> Api {
        Api::with_client(reqwest::Client::new(), base, token)
    }

    /// [`Api::new`] over a client the caller already has.
    pub fn with_client(http: reqwest::Client, base: &str, token: &str) -> Api {
        Api {
            http,
            base: base.to_string(),
            token: Some(token.to_string()),
        }
    }

    /// The same server, called without an authorization header.
    pub fn anonymous(&self) -> Api {
        Api {
            token: None,
            ..self.clone()
        }
    }

    /// The same server, called with another bearer token.
    pub fn with_token(&self, token: &str) -> Api {
        Api {
            token: Some(token.to_string()),
            ..self.clone()
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.request(Method::GET, path)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(self.request(Method::DELETE, path)).await
    }

    /// A POST without a body (the row and instance actions).
    pub async fn post_empty(&self, path: &str) -> Reply {
        self.send(self.request(Method::POST, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(self.request(Method::POST, path).json(body)).await
    }

    /// A POST of `body` as it is, declared `application/json` (for bodies
    /// that are not JSON).
    pub async fn post_raw(&self, path: &str, body: &str) -> Reply {
        let r = self
            .request(Method::POST, path)
            .body(body.to_string())
            .header("content-type", "application/json");
        self.send(r).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.send(self.request(Method::PUT, path).json(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Reply {
        self.send(self.request(Method::PATCH, path).json(body))
            .await
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> Reply {
        let r = r.send().await.expect("the admin API answers");
        Reply {
            code: r.status().as_u16(),
            headers: r.headers().clone(),
            text: r.text().await.expect("the admin API's body"),
        }
    }
}
