//! [`GatewayClient`]: the gateway's base URL, one shared HTTP connection pool
//! and the timeouts every network wait is bounded by. The transports add their
//! methods to it: [`ws`](GatewayClient::ws), [`sse`](GatewayClient::sse),
//! [`poll`](GatewayClient::poll), [`publish`](GatewayClient::publish),
//! [`subscribe`](GatewayClient::subscribe).

use std::time::Duration;

use reqwest::Url;

use crate::error::{Error, Result};

/// The address the gateway listens on by default.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// Bounds on every network wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect and WebSocket handshake.
    pub connect: Duration,
    /// A whole plain request (publish), a response head (SSE), a WebSocket send.
    pub request: Duration,
    /// The longest silence tolerated on an open stream (WebSocket frame, SSE
    /// chunk; the gateway's SSE heartbeats arrive well within it).
    pub idle: Duration,
    /// Added to a long-poll's own `timeout` to bound the whole request.
    pub poll_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            request: Duration::from_secs(30),
            idle: Duration::from_secs(60),
            poll_grace: Duration::from_secs(10),
        }
    }
}

/// A handle on one gateway (or a load balancer in front of several). Cheap to clone.
#[derive(Debug, Clone)]
pub struct GatewayClient {
    base: Url,
    http: reqwest::Client,
    timeouts: Timeouts,
    publish_key: Option<String>,
}

impl GatewayClient {
    /// A client for the gateway at `base_url` (`http://host:port`, optionally
    /// with a path prefix) with default [`Timeouts`].
    pub fn new(base_url: &str) -> Result<Self> {
        Self::with_timeouts(base_url, Timeouts::default())
    }

    pub fn with_timeouts(base_url: &str, timeouts: Timeouts) -> Result<Self> {
        let mut base = Url::parse(base_url).map_err(|e| Error::Url(format!("{base_url}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(Error::Url(format!(
                "{base_url}: expected http://HOST[:PORT]"
            )));
        }
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        base.set_query(None);
        base.set_fragment(None);
        let http = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            base,
            http,
            timeouts,
            publish_key: None,
        })
    }

    /// Sends `Authorization: Bearer KEY` with every publish (gateway `--publish-key`).
    pub fn with_publish_key(mut self, key: impl Into<String>) -> Self {
        self.publish_key = Some(key.into());
        self
    }

    pub fn publish_key(&self) -> Option<&str> {
        self.publish_key.as_deref()
    }

    /// The base URL, always ending in `/`.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// The shared `reqwest` client (for requests this library does not wrap).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `path` (e.g. `"v1/publish"`) under the base URL.
    pub fn endpoint(&self, path: &str) -> Url {
        let mut u = self.base.clone();
        let p = format!("{}{}", self.base.path(), path.trim_start_matches('/'));
        u.set_path(&p);
        u
    }

    /// `path` under the base URL with one `channel=` query pair per channel.
    pub fn channel_url<S: AsRef<str>>(&self, path: &str, channels: &[S]) -> Url {
        let mut u = self.endpoint(path);
        if !channels.is_empty() {
            let mut q = u.query_pairs_mut();
            for c in channels {
                q.append_pair("channel", c.as_ref());
            }
        }
        u
    }

    /// The WebSocket URL: `ws://HOST/v1/ws?channel=..` (`wss` for `https`).
    pub fn ws_url<S: AsRef<str>>(&self, channels: &[S]) -> Url {
        let mut u = self.channel_url("v1/ws", channels);
        let scheme = if self.base.scheme() == "https" {
            "wss"
        } else {
            "ws"
        };
        // Switching between these "special" schemes always succeeds.
        let _ = u.set_scheme(scheme);
        u
    }
}

/// Reads a JSON answer: the value on 2xx, else the gateway's error.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
) -> Result<T> {
    let status = resp.status();
    let body = resp.bytes().await?;
    if !status.is_success() {
        return Err(Error::from_status(status.as_u16(), &body));
    }
    Ok(serde_json::from_slice(&body)?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls_are_built_under_the_base() {
        let c = GatewayClient::new("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            c.endpoint("v1/publish").as_str(),
            "http://127.0.0.1:8080/v1/publish"
        );
        assert_eq!(
            c.ws_url(&["files:alice", "a/b@c"]).as_str(),
            "ws://127.0.0.1:8080/v1/ws?channel=files%3Aalice&channel=a%2Fb%40c"
        );
        assert_eq!(c.ws_url::<&str>(&[]).as_str(), "ws://127.0.0.1:8080/v1/ws");
        let c = GatewayClient::new("https://gw.example/prefix?x=1").unwrap();
        assert_eq!(
            c.endpoint("/v1/sse").as_str(),
            "https://gw.example/prefix/v1/sse"
        );
        assert_eq!(
            c.ws_url(&["c"]).as_str(),
            "wss://gw.example/prefix/v1/ws?channel=c"
        );
        assert!(GatewayClient::new("ftp://x").is_err());
        assert!(GatewayClient::new("not a url").is_err());
    }
}
