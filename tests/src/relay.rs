//! A loopback TCP relay in front of gateway nodes, owned by a test: a client
//! (a browser, say) keeps one address while the test moves it from node to
//! node, holds its reconnects for a moment, and reads what it sent (to see
//! the `Last-Event-ID` of its requests).
//!
//! Every connection is relayed byte for byte to the target chosen when it
//! was accepted. While the relay is held, accepted connections wait (until
//! released or the relay drops) before they connect to their target. All
//! tasks end when the relay is dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// How much of what each client sends is kept for [`Relay::sent`]: room for
/// the heads of a few keep-alive requests.
const MAX_KEPT: usize = 16 * 1024;

/// Read buffer of one relayed direction.
const CHUNK: usize = 16 * 1024;

/// What the accept task and the connection tasks share.
struct Shared {
    /// Where newly accepted connections go.
    target: Mutex<SocketAddr>,
    /// `true` while connections may proceed to their target.
    open: watch::Sender<bool>,
    /// Accepted connections waiting for [`Relay::release`].
    waiting: AtomicUsize,
    /// The first [`MAX_KEPT`] bytes each client sent, in accept order.
    sent: Mutex<Vec<String>>,
    /// Every task, aborted on drop.
    tasks: Mutex<Vec<AbortHandle>>,
}

/// A running relay on `127.0.0.1:PORT`.
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Relay {
    /// Starts a relay to `target` on a free loopback port.
    pub async fn start(target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the relay")?;
        let addr = listener.local_addr().context("relay address")?;
        let (open, _) = watch::channel(true);
        let shared = Arc::new(Shared {
            target: Mutex::new(target),
            open,
            waiting: AtomicUsize::new(0),
            sent: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
        });

        let accept_shared = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let shared = accept_shared.clone();
                let task = tokio::spawn(relay_one(client, shared));
                lock(&accept_shared.tasks).push(task.abort_handle());
            }
        });
        lock(&shared.tasks).push(accept.abort_handle());
        Ok(Relay { addr, shared })
    }

    /// `127.0.0.1:PORT` of the relay.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends connections accepted from now on to `target`.
    pub fn set_target(&self, target: SocketAddr) {
        *lock(&self.shared.target) = target;
    }

    /// Makes connections accepted from now on wait for [`Relay::release`].
    pub fn hold(&self) {
        self.shared.open.send_replace(false);
    }

    /// Lets waiting and future connections through.
    pub fn release(&self) {
        self.shared.open.send_replace(true);
    }

    /// How many accepted connections are waiting for [`Relay::release`].
    pub fn waiting(&self) -> usize {
        self.shared.waiting.load(Ordering::SeqCst)
    }

    /// The first bytes (up to 16 KiB) each connection's client sent, in
    /// accept order: request heads, as text.
    pub fn sent(&self) -> Vec<String> {
        lock(&self.shared.sent).clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for task in lock(&self.shared.tasks).drain(..) {
            task.abort();
        }
    }
}

/// A poisoned lock only means another relay task panicked; the data is
/// still whole.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Relays one client connection until both directions have ended.
async fn relay_one(client: TcpStream, shared: Arc<Shared>) {
    let target = *lock(&shared.target);
    let mut open = shared.open.subscribe();
    shared.waiting.fetch_add(1, Ordering::SeqCst);
    let released = open.wait_for(|o| *o).await.is_ok();
    shared.waiting.fetch_sub(1, Ordering::SeqCst);
    if !released {
        return;
    }
    let Ok(upstream) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);

    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let index = {
        let mut sent = lock(&shared.sent);
        sent.push(String::new());
        sent.len() - 1
    };

    let to_upstream = async {
        let mut buf = vec![0u8; CHUNK];
        let mut kept = Vec::new();
        while let Ok(n) = client_read.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if kept.len() < MAX_KEPT {
                let take = n.min(MAX_KEPT - kept.len());
                kept.extend_from_slice(&buf[..take]);
                lock(&shared.sent)[index] = String::from_utf8_lossy(&kept).into_owned();
            }
            if upstream_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = upstream_write.shutdown().await;
    };
    let to_client = async {
        let _ = tokio::io::copy(&mut upstream_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::join!(to_upstream, to_client);
}
