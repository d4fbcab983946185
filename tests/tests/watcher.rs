//! `gateway-cli watch DIR --channel C` against a real gateway: creating,
//! changing one block of, renaming and deleting files in a temp dir each
//! reach a WebSocket subscriber as one file-update event (README "File-update
//! event schema") with the right kind, version, block hashes and `changed`.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use tests::cli::Watcher;
use tests::{unique_channel, within, Broker, GatewayOpts, Node, WsClient};

/// The block size the watcher is run with: small, so files of a few blocks
/// stay small.
const BLOCK: usize = 4096;

/// `n_blocks` full blocks, block `i` filled with one distinct byte, plus
/// `tail` bytes of a last, shorter block.
fn blocks_content(n_blocks: usize, tail: usize) -> Vec<u8> {
    let mut content = Vec::with_capacity(n_blocks * BLOCK + tail);
    for i in 0..n_blocks {
        content.extend(std::iter::repeat_n(b'a' + i as u8, BLOCK));
    }
    content.extend(std::iter::repeat_n(b'z', tail));
    content
}

/// The BLAKE3 hex hash of every `BLOCK`-sized block of `content`.
fn block_hashes(content: &[u8]) -> Vec<String> {
    content
        .chunks(BLOCK)
        .map(|block| blake3::hash(block).to_hex().to_string())
        .collect()
}

/// A node, a WebSocket subscriber on a fresh channel, and a watcher on a temp
/// dir publishing to it.
struct Setup {
    ws: WsClient,
    dir: tempfile::TempDir,
    // Fields drop in order: the watcher goes before the node it publishes to.
    _watcher: Watcher,
    _node: Node,
}

impl Setup {
    /// Starts everything; `prepare` fills the directory before the watcher
    /// starts (files it must know at version 1).
    async fn start(prepare: impl FnOnce(&Path) -> Result<()>) -> Result<Self> {
        let node = Node::start(Broker::Embedded, GatewayOpts::embedded()).await?;
        let channel = unique_channel("files:alice");
        let mut ws = WsClient::connect(&node.gateway.ws_url("/v1/ws")).await?;
        ws.subscribe(&channel, None).await?;

        let dir = tempfile::Builder::new().prefix("e2e-watch-").tempdir()?;
        prepare(dir.path())?;
        let block = BLOCK.to_string();
        let watcher = Watcher::start(
            &node.base_url(),
            dir.path(),
            &channel,
            &["--block-size", &block, "--debounce-ms", "100"],
        )
        .await?;
        Ok(Setup {
            ws,
            dir,
            _watcher: watcher,
            _node: node,
        })
    }

    /// The next file-update event, checked against `expected` field by field;
    /// also decodes it as `clients::FileUpdate`.
    async fn expect_update(&mut self, expected: Value) -> Result<Value> {
        let message = self
            .ws
            .recv_type("message")
            .await
            .with_context(|| format!("waiting for file-update {expected}"))?;
        ensure!(
            message["publisher"] == "gateway-cli"
                && message["id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("watch-")),
            "watcher events carry publisher gateway-cli and a watch-... id: {message}"
        );

        let data = &message["data"];
        ensure!(
            data == &expected,
            "expected file-update {expected}\n           got {data}"
        );
        serde_json::from_value::<clients::FileUpdate>(data.clone())
            .with_context(|| format!("clients::FileUpdate does not decode {data}"))?;
        Ok(message)
    }
}

#[tokio::test]
async fn watcher_publishes_create_single_block_change_and_delete_of_a_file() -> Result<()> {
    within(async {
        let mut setup = Setup::start(|_| Ok(())).await?;
        let file = setup.dir.path().join("report.bin");

        // Created: three blocks, all listed.
        let mut content = blocks_content(3, 0);
        std::fs::write(&file, &content)?;
        setup
            .expect_update(json!({
                "path": "report.bin", "kind": "created", "size": 3 * BLOCK, "version": 1,
                "block_size": BLOCK, "blocks": block_hashes(&content), "changed": [0, 1, 2],
            }))
            .await
            .context("after creating a 3-block file")?;

        // Modified in place: only the middle block differs.
        let middle = vec![b'M'; BLOCK];
        OpenOptions::new()
            .write(true)
            .open(&file)?
            .write_all_at(&middle, BLOCK as u64)?;
        content[BLOCK..2 * BLOCK].copy_from_slice(&middle);
        setup
            .expect_update(json!({
                "path": "report.bin", "kind": "modified", "size": 3 * BLOCK, "version": 2,
                "block_size": BLOCK, "blocks": block_hashes(&content), "changed": [1],
            }))
            .await
            .context("after rewriting block 1 of 3")?;

        // Deleted: no blocks, nothing changed.
        std::fs::remove_file(&file)?;
        setup
            .expect_update(json!({
                "path": "report.bin", "kind": "deleted", "size": 0, "version": 3,
                "block_size": BLOCK, "blocks": [], "changed": [],
            }))
            .await
            .context("after deleting the file")?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn watcher_knows_existing_files_at_version_1_and_publishes_only_their_changes() -> Result<()>
{
    within(async {
        // Two and a half blocks, on disk before the watcher starts.
        let mut content = blocks_content(2, BLOCK / 2);
        let initial = content.clone();
        let mut setup =
            Setup::start(|dir| Ok(std::fs::write(dir.join("notes.txt"), &initial)?)).await?;
        let file = setup.dir.path().join("notes.txt");

        // One byte of the short last block changes: the first event is about
        // that, at version 2 (nothing was published for the existing file).
        OpenOptions::new()
            .write(true)
            .open(&file)?
            .write_all_at(b"!", (2 * BLOCK + 10) as u64)?;
        content[2 * BLOCK + 10] = b'!';
        setup
            .expect_update(json!({
                "path": "notes.txt", "kind": "modified", "size": content.len(), "version": 2,
                "block_size": BLOCK, "blocks": block_hashes(&content), "changed": [2],
            }))
            .await
            .context("after changing the last block of a file known at start")?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn watcher_publishes_rename_with_from_and_continued_version() -> Result<()> {
    within(async {
        let mut setup = Setup::start(|_| Ok(())).await?;
        let dir = setup.dir.path().to_owned();
        let content = blocks_content(1, 100);

        std::fs::write(dir.join("draft.txt"), &content)?;
        setup
            .expect_update(json!({
                "path": "draft.txt", "kind": "created", "size": content.len(), "version": 1,
                "block_size": BLOCK, "blocks": block_hashes(&content), "changed": [0, 1],
            }))
            .await?;

        std::fs::rename(dir.join("draft.txt"), dir.join("final.txt"))?;
        setup
            .expect_update(json!({
                "path": "final.txt", "kind": "renamed", "from": "draft.txt", "size": content.len(),
                "version": 2, "block_size": BLOCK, "blocks": block_hashes(&content), "changed": [],
            }))
            .await
            .context("after renaming draft.txt to final.txt")?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn watcher_reports_files_created_in_new_subdirectories() -> Result<()> {
    within(async {
        let mut setup = Setup::start(|_| Ok(())).await?;
        let nested = setup.dir.path().join("reports").join("q3");
        std::fs::create_dir_all(&nested)?;
        let content = b"quarterly".to_vec();
        std::fs::write(nested.join("summary.txt"), &content)?;

        setup
            .expect_update(json!({
                "path": "reports/q3/summary.txt", "kind": "created", "size": content.len(),
                "version": 1, "block_size": BLOCK, "blocks": block_hashes(&content), "changed": [0],
            }))
            .await
            .context("after mkdir -p reports/q3 and writing a file in it")?;
        Ok(())
    })
    .await
}
