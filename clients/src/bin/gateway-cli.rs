//! `gateway-cli`: subscribe to, publish to, and feed file-update events into
//! the notification gateway.

use std::{
    io::{self, Write},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use clients::{
    protocol::is_valid_channel,
    watch::{FileWatcher, WatchOptions},
    FileUpdate, GatewayClient, MultiPosition, PublishRequest, PublishResult, SubscribeOptions,
    SubscriptionEvent, Transport,
};

#[derive(Parser)]
#[command(
    name = "gateway-cli",
    version,
    about = "Client for the notification gateway"
)]
struct Cli {
    /// The gateway's base URL.
    #[arg(long, global = true, env = "GATEWAY_URL", default_value = clients::DEFAULT_URL)]
    url: String,
    /// API key for publishing (sent as `Authorization: Bearer KEY`).
    #[arg(
        long,
        global = true,
        env = "GATEWAY_PUBLISH_KEY",
        hide_env_values = true
    )]
    publish_key: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print every message of the channels, one JSON envelope per line on stdout
    /// (`subscribed` frames and notices go to stderr). Resumes on reconnect.
    Subscribe {
        /// ws, sse or poll.
        #[arg(long, short, default_value = "ws")]
        transport: Transport,
        /// A channel (repeat for several).
        #[arg(long = "channel", short, required = true)]
        channels: Vec<String>,
        /// Start after this position: EPOCH:OFFSET per channel, comma-joined in channel order.
        #[arg(long)]
        since: Option<String>,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Consecutive failed reconnects before giving up.
        #[arg(long, default_value_t = 5)]
        retries: u32,
    },
    /// Publish one message and print the gateway's JSON answer.
    Publish {
        /// The channel to publish to.
        #[arg(long, short)]
        channel: String,
        /// The message data as JSON (`-` reads it from stdin).
        data: String,
        /// Idempotency id.
        #[arg(long)]
        id: Option<String>,
        /// The publisher name carried by the envelope.
        #[arg(long)]
        publisher: Option<String>,
    },
    /// Watch a directory recursively and publish a file-update event for each
    /// create, modify, delete and rename (one line per event on stderr).
    Watch {
        /// The directory to watch (recursively).
        dir: PathBuf,
        /// The channel to publish the events to.
        #[arg(long, short)]
        channel: String,
        /// Block size in bytes for the block hashes.
        #[arg(long, default_value_t = clients::blocks::DEFAULT_BLOCK_SIZE)]
        block_size: usize,
        /// Quiet time before a path's events are settled, milliseconds.
        #[arg(long, default_value_t = 100)]
        debounce_ms: u64,
        /// Longest a busy path waits before it is settled anyway, milliseconds.
        #[arg(long, default_value_t = 1000)]
        max_delay_ms: u64,
        /// The `publisher` field of the published messages.
        #[arg(long, default_value = "gateway-cli")]
        publisher: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut client = GatewayClient::new(&cli.url)?;
    if let Some(key) = cli.publish_key {
        client = client.with_publish_key(key);
    }
    match cli.cmd {
        Cmd::Subscribe {
            transport,
            channels,
            since,
            count,
            retries,
        } => subscribe(&client, transport, channels, since, count, retries).await,
        Cmd::Publish {
            channel,
            data,
            id,
            publisher,
        } => {
            let data = if data == "-" {
                io::read_to_string(io::stdin())?
            } else {
                data
            };
            let data: serde_json::Value =
                serde_json::from_str(&data).context("DATA_JSON is not valid JSON")?;
            let req = PublishRequest {
                channel,
                data,
                id,
                publisher,
            };
            let answer = client.publish(&req).await?;
            println!("{}", serde_json::to_string(&answer)?);
            Ok(())
        }
        Cmd::Watch {
            dir,
            channel,
            block_size,
            debounce_ms,
            max_delay_ms,
            publisher,
        } => {
            if block_size == 0 || block_size > clients::blocks::MAX_BLOCK_SIZE {
                bail!(
                    "--block-size must be 1 to {}",
                    clients::blocks::MAX_BLOCK_SIZE
                );
            }
            let opts = WatchOptions {
                block_size,
                debounce: Duration::from_millis(debounce_ms),
                max_delay: Duration::from_millis(max_delay_ms.max(debounce_ms)),
            };
            watch(&client, dir, channel, opts, publisher).await
        }
    }
}

async fn subscribe(
    client: &GatewayClient,
    transport: Transport,
    channels: Vec<String>,
    since: Option<String>,
    count: Option<u64>,
    retries: u32,
) -> anyhow::Result<()> {
    let mut opts = SubscribeOptions::new(transport, channels.iter().cloned()).max_retries(retries);
    if let Some(s) = since {
        opts.since = Some(
            MultiPosition::parse_for(&s, channels.len())
                .with_context(|| format!("--since {s:?}"))?,
        );
    }
    let mut sub = client.subscribe(opts)?;
    let mut stop = std::pin::pin!(tokio::signal::ctrl_c());
    let mut seen = 0u64;
    while count.is_none_or(|c| seen < c) {
        let ev = tokio::select! {
            ev = sub.next() => ev?,
            _ = &mut stop => break,
        };
        match ev {
            SubscriptionEvent::Message(env) => {
                seen += 1;
                let line = serde_json::to_string(&env)?;
                let mut out = io::stdout().lock();
                if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
                    if e.kind() == io::ErrorKind::BrokenPipe {
                        return Ok(());
                    }
                    return Err(e.into());
                }
            }
            SubscriptionEvent::Subscribed(s) => {
                let frame = clients::ServerFrame::Subscribed(s);
                eprintln!("{}", serde_json::to_string(&frame)?);
            }
            SubscriptionEvent::NotRecovered { cursor } => {
                eprintln!(
                    "{}",
                    serde_json::json!({"recovered": false, "cursor": cursor})
                );
            }
        }
    }
    if let Some(pos) = sub.position() {
        eprintln!("position {pos}");
    }
    sub.close().await;
    Ok(())
}

/// Publish attempts per event before it is given up (transient errors only).
const PUBLISH_ATTEMPTS: u32 = 4;

async fn watch(
    client: &GatewayClient,
    dir: PathBuf,
    channel: String,
    opts: WatchOptions,
    publisher: String,
) -> anyhow::Result<()> {
    if !is_valid_channel(&channel) {
        bail!("{channel:?} is not a valid channel name (1 to 255 of A-Z a-z 0-9 _ - . : @ /)");
    }
    let mut watcher =
        FileWatcher::start(&dir, opts).with_context(|| format!("watching {}", dir.display()))?;
    eprintln!(
        "watching {} ({} files known) -> {} at {}",
        watcher.state().root().display(),
        watcher.state().file_count(),
        channel,
        client.base_url()
    );
    let session = session_id();
    let mut seq = 0u64;
    let mut stop = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let update = tokio::select! {
            u = watcher.next() => match u {
                Some(u) => u,
                None => bail!("the watcher stopped"),
            },
            _ = &mut stop => return Ok(()),
        };
        seq += 1;
        let req = PublishRequest::new(channel.clone(), serde_json::to_value(&update)?)
            .with_id(format!("watch-{session}-{seq}"))
            .with_publisher(publisher.clone());
        match publish_with_retries(client, &req).await {
            Ok(r) => eprintln!("{}", describe(&update, &r)),
            // Refusals that every later event would meet too end the watcher.
            Err(e) if is_fatal_for_watch(&e) => return Err(e.into()),
            Err(e) => eprintln!(
                "error: dropped {} {} version {}: {e}",
                update.kind.as_str(),
                update.path,
                update.version
            ),
        }
    }
}

/// Whether a publish error means the watcher's configuration is wrong (channel,
/// key, URL), as opposed to this one event being refused (e.g. too large).
fn is_fatal_for_watch(e: &clients::Error) -> bool {
    match e {
        clients::Error::Gateway(g) => matches!(
            g.code.as_str(),
            "bad_channel" | "unauthorized" | "not_found" | "method_not_allowed" | "no_channel"
        ),
        clients::Error::Status { status, .. } => matches!(status, 401 | 403 | 404 | 405),
        clients::Error::Url(_) => true,
        _ => false,
    }
}

async fn publish_with_retries(
    client: &GatewayClient,
    req: &PublishRequest,
) -> clients::Result<PublishResult> {
    let mut wait = Duration::from_millis(250);
    let mut attempt = 1;
    loop {
        match client.publish(req).await {
            Ok(r) => return Ok(r),
            Err(e) if e.is_retryable() && attempt < PUBLISH_ATTEMPTS => {
                tracing::warn!(attempt, "publish failed, retrying: {e}");
                tokio::time::sleep(wait).await;
                wait *= 2;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

fn describe(u: &FileUpdate, r: &PublishResult) -> String {
    let from = u
        .from
        .as_deref()
        .map(|f| format!(" from {f}"))
        .unwrap_or_default();
    format!(
        "published {} {}{from} version {} size {} changed {}/{} -> {}:{}{}",
        u.kind.as_str(),
        u.path,
        u.version,
        u.size,
        u.changed.len(),
        u.blocks.len(),
        r.epoch,
        r.offset,
        if r.duplicate { " (duplicate)" } else { "" }
    )
}

/// A short id for this watcher run, so idempotency ids never repeat across runs.
fn session_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = blake3::Hasher::new();
    h.update(&nanos.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&fastrand::u64(..).to_le_bytes());
    h.finalize().to_hex()[..12].to_owned()
}
