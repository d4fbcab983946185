//! A WebSocket client for `GET /v1/ws`: JSON text frames out, JSON text
//! frames in, every receive bounded by [`STEP_TIMEOUT`].

use anyhow::{anyhow, bail, Context, Result};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::wait::STEP_TIMEOUT;

/// One open WebSocket connection to a node.
pub struct WsClient {
    /// The socket; protocol pings are answered while reading.
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The URL it was opened with, for failure messages.
    url: String,
}

impl WsClient {
    /// Opens `url` (`ws://127.0.0.1:PORT/v1/ws?...`).
    pub async fn connect(url: &str) -> Result<Self> {
        let connecting = tokio_tungstenite::connect_async(url);
        let (stream, _response) = tokio::time::timeout(STEP_TIMEOUT, connecting)
            .await
            .map_err(|_| anyhow!("WebSocket connect to {url} took over {STEP_TIMEOUT:?}"))?
            .with_context(|| format!("WebSocket connect to {url}"))?;
        Ok(WsClient {
            stream,
            url: url.to_owned(),
        })
    }

    /// Sends one JSON text frame.
    pub async fn send(&mut self, frame: &Value) -> Result<()> {
        self.send_text(&frame.to_string()).await
    }

    /// Sends one raw text frame (for malformed input).
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        let sending = self.stream.send(Message::text(text));
        tokio::time::timeout(STEP_TIMEOUT, sending)
            .await
            .map_err(|_| anyhow!("sending to {} took over {STEP_TIMEOUT:?}", self.url))?
            .with_context(|| format!("sending {text:?} to {}", self.url))
    }

    /// The next JSON text frame; a close, a binary frame or silence past
    /// [`STEP_TIMEOUT`] is an error.
    pub async fn recv(&mut self) -> Result<Value> {
        loop {
            let next = tokio::time::timeout(STEP_TIMEOUT, self.stream.next())
                .await
                .map_err(|_| anyhow!("no frame from {} within {STEP_TIMEOUT:?}", self.url))?;
            let message = match next {
                Some(message) => message.with_context(|| format!("reading from {}", self.url))?,
                None => bail!("{} closed the stream", self.url),
            };
            match message {
                Message::Text(text) => {
                    return serde_json::from_str(text.as_str())
                        .with_context(|| format!("non-JSON text frame {:?}", text.as_str()));
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                Message::Close(frame) => bail!("{} sent close {frame:?}", self.url),
                other => bail!("unexpected frame from {}: {other:?}", self.url),
            }
        }
    }

    /// The next frame, which must have `"type": kind`.
    pub async fn recv_type(&mut self, kind: &str) -> Result<Value> {
        let frame = self.recv().await?;
        if frame["type"] != kind {
            bail!("expected a {kind:?} frame, got {frame}");
        }
        Ok(frame)
    }

    /// Subscribes to `channel` (from `since`, if given) and returns the
    /// `subscribed` frame, which must be the next frame and name `channel`.
    pub async fn subscribe(&mut self, channel: &str, since: Option<&str>) -> Result<Value> {
        let mut op = json!({ "op": "subscribe", "channel": channel });
        if let Some(since) = since {
            op["since"] = json!(since);
        }
        self.send(&op).await?;

        let frame = self
            .recv_type("subscribed")
            .await
            .with_context(|| format!("answer to {op}"))?;
        if frame["channel"] != channel {
            bail!("subscribed frame names another channel: {frame} (sent {op})");
        }
        Ok(frame)
    }

    /// The next `n` frames, each of which must be a `message`.
    pub async fn recv_messages(&mut self, n: usize) -> Result<Vec<Value>> {
        let mut messages = Vec::with_capacity(n);
        for _ in 0..n {
            messages.push(self.recv_type("message").await.with_context(|| {
                format!(
                    "message {} of {n} (got so far {messages:?})",
                    messages.len() + 1
                )
            })?);
        }
        Ok(messages)
    }

    /// `{"op":"ping"}` must be answered by `{"type":"pong"}`.
    pub async fn ping(&mut self) -> Result<()> {
        self.send(&json!({ "op": "ping" })).await?;
        self.recv_type("pong").await.map(drop)
    }

    /// Reads until the gateway closes the connection, skipping `reconnect`
    /// advice frames (returned alongside); any other frame is an error.
    /// Returns the close code (`None` when the stream ended without a close
    /// frame) and the advice frames seen.
    pub async fn expect_close(&mut self) -> Result<(Option<u16>, Vec<Value>)> {
        let mut advice = Vec::new();
        loop {
            let next = tokio::time::timeout(STEP_TIMEOUT, self.stream.next())
                .await
                .map_err(|_| anyhow!("{} did not close within {STEP_TIMEOUT:?}", self.url))?;
            match next {
                None | Some(Err(_)) => return Ok((None, advice)),
                Some(Ok(Message::Close(frame))) => {
                    return Ok((frame.map(|f| u16::from(f.code)), advice));
                }
                Some(Ok(Message::Text(text))) => {
                    let frame: Value = serde_json::from_str(text.as_str())
                        .with_context(|| format!("non-JSON text frame {:?}", text.as_str()))?;
                    if frame["type"] != "reconnect" {
                        bail!("expected a close (or reconnect advice), got {frame}");
                    }
                    advice.push(frame);
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Closes the connection with a normal close frame (bounded).
    pub async fn close(mut self) -> Result<()> {
        let closing = self.stream.close(None);
        tokio::time::timeout(STEP_TIMEOUT, closing)
            .await
            .map_err(|_| anyhow!("closing {} took over {STEP_TIMEOUT:?}", self.url))?
            .or_else(|e| match e {
                tokio_tungstenite::tungstenite::Error::ConnectionClosed => Ok(()),
                other => Err(other),
            })
            .with_context(|| format!("closing {}", self.url))
    }
}
