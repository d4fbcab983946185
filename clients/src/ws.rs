//! WebSocket transport: `GET /v1/ws?channel=..`, JSON text frames both ways.
//!
//! ```no_run
//! # async fn demo() -> clients::Result<()> {
//! use clients::{GatewayClient, ServerFrame};
//! let gw = GatewayClient::new("http://127.0.0.1:8080")?;
//! let mut ws = gw.ws(&["files:alice"]).await?;
//! ws.ping().await?;
//! while let Some(frame) = ws.recv().await? {
//!     if let ServerFrame::Message(env) = frame {
//!         println!("{} {}", env.offset, env.data);
//!     }
//! }
//! # Ok(()) }
//! ```

use std::time::Duration;

use futures::{
    stream::{SplitSink, SplitStream},
    SinkExt, StreamExt,
};
use tokio::net::TcpStream;
use tokio_tungstenite::{tungstenite::Message, MaybeTlsStream, WebSocketStream};

use crate::{
    client::{GatewayClient, Timeouts},
    error::{Error, Result},
    protocol::{ClientOp, Position, ServerFrame},
};

type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An open WebSocket to the gateway.
pub struct WsClient {
    inner: Stream,
    timeouts: Timeouts,
}

/// The sending half of a [`WsClient`] (see [`WsClient::split`]).
pub struct WsSender {
    inner: SplitSink<Stream, Message>,
    timeout: Duration,
}

/// The receiving half of a [`WsClient`] (see [`WsClient::split`]).
pub struct WsReceiver {
    inner: SplitStream<Stream>,
    idle: Duration,
}

impl GatewayClient {
    /// Opens `ws://HOST/v1/ws?channel=..` with the given channels (may be empty;
    /// subscribe later with [`WsClient::subscribe`]). A refused upgrade
    /// (e.g. `bad_channel`) is an [`Error::Gateway`] with the HTTP status.
    pub async fn ws<S: AsRef<str>>(&self, channels: &[S]) -> Result<WsClient> {
        WsClient::connect(self.ws_url(channels).as_str(), self.timeouts().clone()).await
    }
}

impl WsClient {
    /// Opens a WebSocket to any `ws://` URL; the handshake is bounded by `timeouts.connect`.
    pub async fn connect(url: &str, timeouts: Timeouts) -> Result<Self> {
        let fut = tokio_tungstenite::connect_async(url);
        let (inner, _resp) = tokio::time::timeout(timeouts.connect, fut)
            .await
            .map_err(|_| Error::timeout("opening the WebSocket", timeouts.connect))??;
        if let MaybeTlsStream::Plain(s) = inner.get_ref() {
            let _ = s.set_nodelay(true);
        }
        Ok(Self { inner, timeouts })
    }

    /// Sends one operation.
    pub async fn send(&mut self, op: &ClientOp) -> Result<()> {
        self.send_text(&op.to_json()).await
    }

    /// Sends one raw text frame (for malformed-input tests and ops this library lacks).
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        send_text(&mut self.inner, text, self.timeouts.request).await
    }

    /// `{"op":"subscribe","channel":..,"since":..}`.
    pub async fn subscribe(&mut self, channel: &str, since: Option<&Position>) -> Result<()> {
        self.send(&ClientOp::subscribe(channel, since.cloned()))
            .await
    }

    /// `{"op":"unsubscribe","channel":..}`.
    pub async fn unsubscribe(&mut self, channel: &str) -> Result<()> {
        self.send(&ClientOp::unsubscribe(channel)).await
    }

    /// `{"op":"ping"}`; the gateway answers [`ServerFrame::Pong`].
    pub async fn ping(&mut self) -> Result<()> {
        self.send(&ClientOp::Ping).await
    }

    /// The next frame, waiting at most `timeouts.idle`. `Ok(None)`: the
    /// connection was closed.
    pub async fn recv(&mut self) -> Result<Option<ServerFrame>> {
        self.recv_timeout(self.timeouts.idle).await
    }

    /// The next frame, waiting at most `wait`.
    pub async fn recv_timeout(&mut self, wait: Duration) -> Result<Option<ServerFrame>> {
        match recv_text(&mut self.inner, wait).await? {
            Some(text) => Ok(Some(ServerFrame::parse(&text)?)),
            None => Ok(None),
        }
    }

    /// The next text frame undecoded, waiting at most `wait`.
    pub async fn recv_text(&mut self, wait: Duration) -> Result<Option<String>> {
        recv_text(&mut self.inner, wait).await
    }

    /// Sends a close frame and waits (bounded) for the gateway to close.
    pub async fn close(mut self) -> Result<()> {
        let wait = self.timeouts.request;
        let fut = async {
            self.inner.close(None).await?;
            while let Some(m) = self.inner.next().await {
                m?;
            }
            Ok::<_, Error>(())
        };
        match tokio::time::timeout(wait, fut).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(Error::WebSocket(e)))
                if matches!(*e, tokio_tungstenite::tungstenite::Error::ConnectionClosed) =>
            {
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::timeout("closing the WebSocket", wait)),
        }
    }

    /// Splits into a sender and a receiver that can be used from two tasks.
    pub fn split(self) -> (WsSender, WsReceiver) {
        let (sink, stream) = self.inner.split();
        (
            WsSender {
                inner: sink,
                timeout: self.timeouts.request,
            },
            WsReceiver {
                inner: stream,
                idle: self.timeouts.idle,
            },
        )
    }
}

impl WsSender {
    pub async fn send(&mut self, op: &ClientOp) -> Result<()> {
        self.send_text(&op.to_json()).await
    }

    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        send_text(&mut self.inner, text, self.timeout).await
    }

    /// Sends a close frame (bounded).
    pub async fn close(&mut self) -> Result<()> {
        tokio::time::timeout(self.timeout, self.inner.close())
            .await
            .map_err(|_| Error::timeout("closing the WebSocket", self.timeout))??;
        Ok(())
    }
}

impl WsReceiver {
    /// The next frame, waiting at most the idle timeout; `Ok(None)` when closed.
    pub async fn recv(&mut self) -> Result<Option<ServerFrame>> {
        self.recv_timeout(self.idle).await
    }

    pub async fn recv_timeout(&mut self, wait: Duration) -> Result<Option<ServerFrame>> {
        match recv_text(&mut self.inner, wait).await? {
            Some(text) => Ok(Some(ServerFrame::parse(&text)?)),
            None => Ok(None),
        }
    }

    pub async fn recv_text(&mut self, wait: Duration) -> Result<Option<String>> {
        recv_text(&mut self.inner, wait).await
    }
}

async fn send_text<S>(sink: &mut S, text: &str, wait: Duration) -> Result<()>
where
    S: futures::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    tokio::time::timeout(wait, sink.send(Message::text(text)))
        .await
        .map_err(|_| Error::timeout("sending a WebSocket frame", wait))??;
    Ok(())
}

/// The next text frame; control frames are skipped (pings are answered by
/// tungstenite), a close frame or the end of the stream is `None`.
async fn recv_text<S>(stream: &mut S, wait: Duration) -> Result<Option<String>>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .map_err(|_| Error::timeout("waiting for a WebSocket frame", wait))?;
        match next {
            None => return Ok(None),
            Some(Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed)) => return Ok(None),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Message::Text(t))) => return Ok(Some(t.as_str().to_owned())),
            Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Ok(Message::Binary(_))) => {
                return Err(Error::Protocol("unexpected binary WebSocket frame".into()))
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
        }
    }
}
