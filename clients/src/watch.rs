//! Watches a directory tree and turns what happens in it into [`FileUpdate`]s.
//!
//! [`WatchState`] is the bookkeeping, driven by `notify` events and free of
//! any network or clock of its own (tests feed it events and instants):
//!
//! - At start every regular file under the root is hashed and known at
//!   version 1; no update is produced for it.
//! - Each event only marks a path as *pending*. A pending path is settled when
//!   it has been quiet for `debounce`, or at the latest `max_delay` after its
//!   first event, so a burst of writes gives one update.
//! - Settling compares the disk with what is known, whatever the event kinds
//!   were: a file that appeared is `created`, one whose blocks differ is
//!   `modified` (unchanged content gives nothing), one that is gone is
//!   `deleted`. A file that vanishes between the event and the read is simply
//!   gone. A directory that appeared (or a rescan) is walked.
//! - Renames inside the tree (a `notify` rename with both paths) carry the
//!   file's record to its new path and give `renamed` with `from`; renaming a
//!   directory renames every file in it. A rename whose source was never
//!   known (the common "write a temp file, rename it over the target" save)
//!   settles as a change of the target. A file moved out of the tree is
//!   `deleted`; one moved in is `created`.
//! - Every path has a version: 1 for its first known state, +1 for each
//!   update about it (a deleted then re-created path goes on counting), so a
//!   consumer that sees a version jump knows it missed an update.
//!
//! Symbolic links are not followed and not reported; only regular files are.
//!
//! [`FileWatcher`] runs a `notify` watcher on a [`WatchState`] and yields the
//! updates asynchronously.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fs, io,
    path::{Component, Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use notify::{
    event::{AccessKind, AccessMode, ModifyKind, RenameMode},
    Event, EventKind, RecursiveMode, Watcher,
};
use serde::{Deserialize, Serialize};

use crate::blocks::{self, DEFAULT_BLOCK_SIZE, MAX_BLOCK_SIZE};

/// How the watcher hashes and debounces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchOptions {
    /// Block size in bytes (1 to [`MAX_BLOCK_SIZE`]).
    pub block_size: usize,
    /// A path is settled after this long without events...
    pub debounce: Duration,
    /// ...or at the latest this long after its first event.
    pub max_delay: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            block_size: DEFAULT_BLOCK_SIZE,
            debounce: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        }
    }
}

/// What happened to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateKind {
    Created,
    Modified,
    Deleted,
    Renamed,
}

impl UpdateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Modified => "modified",
            Self::Deleted => "deleted",
            Self::Renamed => "renamed",
        }
    }
}

/// One file-update event: the `data` the watcher publishes (see the README's
/// "File-update event schema").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileUpdate {
    /// Relative to the watched directory, `/`-separated.
    pub path: String,
    pub kind: UpdateKind,
    /// The previous path, for `renamed` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Size in bytes (0 when deleted).
    pub size: u64,
    pub version: u64,
    pub block_size: usize,
    /// BLAKE3 hash of every block, lowercase hex, in file order (empty when deleted).
    pub blocks: Vec<String>,
    /// Indexes into `blocks` whose hash differs from the previous update of
    /// this path (for `renamed`: of the `from` path); every index for a new
    /// file, none for a delete.
    pub changed: Vec<usize>,
}

#[derive(Debug, Clone)]
struct FileState {
    version: u64,
    size: u64,
    mtime: Option<SystemTime>,
    hashes: Vec<blake3::Hash>,
}

#[derive(Debug)]
struct Pending {
    first: Instant,
    last: Instant,
    /// A known file renamed to this path in the current window: (old path, its record).
    moved_from: Option<(String, FileState)>,
}

/// The watcher's bookkeeping; see the module docs.
#[derive(Debug)]
pub struct WatchState {
    root: PathBuf,
    opts: WatchOptions,
    files: HashMap<String, FileState>,
    /// The last version of paths that were deleted (or renamed away).
    tombstones: HashMap<String, u64>,
    pending: HashMap<String, Pending>,
}

/// Whether `key` is `prefix` or inside the directory `prefix` (`""` is the root).
fn under(key: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || key == prefix
        || (key.len() > prefix.len()
            && key.starts_with(prefix)
            && key.as_bytes()[prefix.len()] == b'/')
}

/// `key` (under `from`) moved to under `to`.
fn rebase(key: &str, from: &str, to: &str) -> String {
    format!("{to}{}", &key[from.len()..])
}

impl WatchState {
    /// Canonicalizes `root` (which must be a directory) and hashes every file under it.
    pub fn new(root: &Path, opts: WatchOptions) -> io::Result<Self> {
        if opts.block_size == 0 || opts.block_size > MAX_BLOCK_SIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("block size must be 1 to {MAX_BLOCK_SIZE} bytes"),
            ));
        }
        let root = fs::canonicalize(root)?;
        if !fs::metadata(&root)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a directory", root.display()),
            ));
        }
        let mut state = Self {
            root,
            opts,
            files: HashMap::new(),
            tombstones: HashMap::new(),
            pending: HashMap::new(),
        };
        let mut found = Vec::new();
        state.walk(&state.root.clone(), &mut found);
        for (key, meta) in found {
            match blocks::hash_file(&state.abs(&key), state.opts.block_size) {
                Ok(h) => {
                    let mtime = meta.modified().ok();
                    let rec = FileState {
                        version: 1,
                        size: h.size,
                        mtime,
                        hashes: h.hashes,
                    };
                    state.files.insert(key, rec);
                }
                Err(e) => tracing::warn!(path = %key, "not tracked: {e}"),
            }
        }
        Ok(state)
    }

    /// The canonical root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn options(&self) -> &WatchOptions {
        &self.opts
    }

    /// How many files are known.
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// The current version of a known file.
    pub fn version(&self, path: &str) -> Option<u64> {
        self.files.get(path).map(|f| f.version)
    }

    /// Paths with events not yet settled.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Takes one `notify` event into account (nothing is read from disk yet).
    pub fn handle_event(&mut self, ev: &Event, now: Instant) {
        if ev.need_rescan() {
            self.mark(String::new(), now);
            return;
        }
        match ev.kind {
            // Opening or reading a file (our own hashing, too) changes nothing.
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
            EventKind::Access(_) => return,
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) if ev.paths.len() == 2 => {
                match (self.rel(&ev.paths[0]), self.rel(&ev.paths[1])) {
                    (Some(from), Some(to)) => self.rename(from, to, now),
                    (Some(p), None) | (None, Some(p)) => self.mark(p, now),
                    (None, None) => {}
                }
                return;
            }
            _ => {}
        }
        for p in &ev.paths {
            if let Some(key) = self.rel(p) {
                self.mark(key, now);
            }
        }
    }

    /// Marks the whole tree for a walk (after lost events).
    pub fn rescan(&mut self, now: Instant) {
        self.mark(String::new(), now);
    }

    /// When the next pending path settles.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| self.deadline(p)).min()
    }

    /// Settles every pending path whose deadline is at or before `now`.
    pub fn flush_due(&mut self, now: Instant) -> Vec<FileUpdate> {
        let mut due: Vec<(Instant, String)> = self
            .pending
            .iter()
            .filter(|(_, p)| self.deadline(p) <= now)
            .map(|(k, p)| (p.first, k.clone()))
            .collect();
        due.sort();
        let mut out = Vec::new();
        for (_, key) in due {
            if let Some(p) = self.pending.remove(&key) {
                self.settle(key, p, &mut out);
            }
        }
        out
    }

    /// Settles every pending path now.
    pub fn flush_all(&mut self) -> Vec<FileUpdate> {
        let mut out = Vec::new();
        while !self.pending.is_empty() {
            let Some(key) = self
                .pending
                .iter()
                .min_by(|a, b| (a.1.first, a.0).cmp(&(b.1.first, b.0)))
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(p) = self.pending.remove(&key) {
                self.settle(key, p, &mut out);
            }
        }
        out
    }

    fn deadline(&self, p: &Pending) -> Instant {
        (p.last + self.opts.debounce).min(p.first + self.opts.max_delay)
    }

    /// `path` relative to the root with `/` separators; `None` outside the root.
    fn rel(&self, path: &Path) -> Option<String> {
        let rest = path.strip_prefix(&self.root).ok()?;
        let mut parts = Vec::new();
        for c in rest.components() {
            match c {
                Component::Normal(s) => parts.push(s.to_string_lossy()),
                _ => return None,
            }
        }
        Some(parts.join("/"))
    }

    fn abs(&self, key: &str) -> PathBuf {
        if key.is_empty() {
            self.root.clone()
        } else {
            self.root.join(key)
        }
    }

    fn mark(&mut self, key: String, now: Instant) {
        self.pending
            .entry(key)
            .and_modify(|p| p.last = now)
            .or_insert(Pending {
                first: now,
                last: now,
                moved_from: None,
            });
    }

    fn rename(&mut self, from: String, to: String, now: Instant) {
        if from == to || from.is_empty() || to.is_empty() || under(&to, &from) {
            self.mark(from, now);
            self.mark(to, now);
            return;
        }
        // Pending paths under `from` move along with what they carry.
        let mut moved: HashMap<String, Pending> = HashMap::new();
        let keys: Vec<String> = self
            .pending
            .keys()
            .filter(|k| under(k, &from))
            .cloned()
            .collect();
        for k in keys {
            if let Some(p) = self.pending.remove(&k) {
                moved.insert(rebase(&k, &from, &to), p);
            }
        }
        // So do the known files.
        let mut keys: Vec<String> = self
            .files
            .keys()
            .filter(|k| under(k, &from))
            .cloned()
            .collect();
        keys.sort();
        let mut overwritten = Vec::new();
        for k in keys {
            let Some(rec) = self.files.remove(&k) else {
                continue;
            };
            let entry = moved.entry(rebase(&k, &from, &to)).or_insert(Pending {
                first: now,
                last: now,
                moved_from: None,
            });
            if entry.moved_from.is_some() {
                // `k` had itself been replaced by a rename in this window: its own
                // content is gone.
                overwritten.push((k, rec));
            } else {
                entry.moved_from = Some((k, rec));
            }
        }
        for (nk, mut p) in moved {
            p.last = now;
            if let Some(old) = self.pending.remove(&nk) {
                p.first = p.first.min(old.first);
                if let Some(gone) = old.moved_from {
                    // Something renamed onto `nk` earlier is now overwritten.
                    overwritten.push(gone);
                }
            }
            self.pending.insert(nk, p);
        }
        // An overwritten record settles as a delete of its own path.
        for (k, rec) in overwritten {
            self.files.insert(k.clone(), rec);
            self.mark(k, now);
        }
        self.mark(to, now);
    }

    fn settle(&mut self, key: String, p: Pending, out: &mut Vec<FileUpdate>) {
        match fs::symlink_metadata(self.abs(&key)) {
            Ok(m) if m.is_file() => self.settle_file(&key, &m, p.moved_from, false, out),
            Ok(m) if m.is_dir() => {
                if let Some(gone) = p.moved_from {
                    self.emit_deleted(gone, out);
                }
                self.settle_dir(&key, out);
            }
            Ok(_) => self.settle_missing(&key, p.moved_from, out),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                self.settle_missing(&key, p.moved_from, out)
            }
            Err(e) => {
                tracing::warn!(path = %key, "cannot stat: {e}");
                if let Some((_, rec)) = p.moved_from {
                    self.files.insert(key, rec);
                }
            }
        }
    }

    /// `key` is a regular file with metadata `meta`. With `quick`, a known file
    /// whose size and mtime are unchanged is not re-read.
    fn settle_file(
        &mut self,
        key: &str,
        meta: &fs::Metadata,
        moved_from: Option<(String, FileState)>,
        quick: bool,
        out: &mut Vec<FileUpdate>,
    ) {
        let mtime = meta.modified().ok();
        if quick && moved_from.is_none() {
            if let Some(f) = self.files.get(key) {
                if f.size == meta.len() && f.mtime.is_some() && f.mtime == mtime {
                    return;
                }
            }
        }
        let bs = self.opts.block_size;
        let h = match blocks::hash_file(&self.abs(key), bs) {
            Ok(h) => h,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return self.settle_missing(key, moved_from, out);
            }
            Err(e) => {
                tracing::warn!(path = %key, "cannot read: {e}");
                if let Some((_, rec)) = moved_from {
                    self.files.insert(key.to_owned(), rec);
                }
                return;
            }
        };
        let prev = self.files.get(key);
        let prev_version = prev
            .map(|f| f.version)
            .or_else(|| self.tombstones.get(key).copied())
            .unwrap_or(0);
        let (kind, from, version, changed) = match (moved_from, prev) {
            (Some((orig, rec)), _) => {
                let changed = blocks::changed_blocks(Some(&rec.hashes), &h.hashes);
                let v = prev_version.max(rec.version) + 1;
                if !self.files.contains_key(&orig) {
                    self.tombstones.insert(orig.clone(), rec.version);
                }
                (UpdateKind::Renamed, Some(orig), v, changed)
            }
            (None, Some(prev)) => {
                if prev.size == h.size && prev.hashes == h.hashes {
                    if let Some(f) = self.files.get_mut(key) {
                        f.mtime = mtime;
                    }
                    return;
                }
                let changed = blocks::changed_blocks(Some(&prev.hashes), &h.hashes);
                (UpdateKind::Modified, None, prev.version + 1, changed)
            }
            (None, None) => (
                UpdateKind::Created,
                None,
                prev_version + 1,
                (0..h.hashes.len()).collect(),
            ),
        };
        self.tombstones.remove(key);
        out.push(FileUpdate {
            path: key.to_owned(),
            kind,
            from,
            size: h.size,
            version,
            block_size: bs,
            blocks: h.hex(),
            changed,
        });
        self.files.insert(
            key.to_owned(),
            FileState {
                version,
                size: h.size,
                mtime,
                hashes: h.hashes,
            },
        );
    }

    /// Nothing (or no regular file) is at `key`: every known file at or under it is deleted.
    fn settle_missing(
        &mut self,
        key: &str,
        moved_from: Option<(String, FileState)>,
        out: &mut Vec<FileUpdate>,
    ) {
        if let Some(gone) = moved_from {
            self.emit_deleted(gone, out);
        }
        let mut keys: Vec<String> = self
            .files
            .keys()
            .filter(|k| under(k, key))
            .cloned()
            .collect();
        keys.sort();
        for k in keys {
            if let Some(rec) = self.files.remove(&k) {
                self.emit_deleted((k, rec), out);
            }
        }
    }

    /// `key` is a directory: reconcile everything under it, except paths that
    /// have events of their own still pending.
    fn settle_dir(&mut self, key: &str, out: &mut Vec<FileUpdate>) {
        let mut found = Vec::new();
        self.walk(&self.abs(key), &mut found);
        found.sort_by(|a, b| a.0.cmp(&b.0));
        let present: HashSet<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
        let mut gone: Vec<String> = self
            .files
            .keys()
            .filter(|k| {
                under(k, key) && !present.contains(k.as_str()) && !self.pending.contains_key(*k)
            })
            .cloned()
            .collect();
        gone.sort();
        for k in gone {
            if let Some(rec) = self.files.remove(&k) {
                self.emit_deleted((k, rec), out);
            }
        }
        for (k, meta) in &found {
            if !self.pending.contains_key(k) {
                self.settle_file(k, meta, None, true, out);
            }
        }
    }

    fn emit_deleted(&mut self, (path, rec): (String, FileState), out: &mut Vec<FileUpdate>) {
        let version = rec.version + 1;
        if !self.files.contains_key(&path) {
            self.tombstones.insert(path.clone(), version);
        }
        out.push(FileUpdate {
            path,
            kind: UpdateKind::Deleted,
            from: None,
            size: 0,
            version,
            block_size: self.opts.block_size,
            blocks: Vec::new(),
            changed: Vec::new(),
        });
    }

    /// Every regular file under `dir` (symlinks not followed), as (key, metadata).
    fn walk(&self, dir: &Path, found: &mut Vec<(String, fs::Metadata)>) {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(dir = %dir.display(), "cannot list: {e}");
                }
                return;
            }
        };
        for entry in entries.flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            let path = entry.path();
            if ft.is_dir() {
                self.walk(&path, found);
            } else if ft.is_file() {
                if let (Some(key), Ok(meta)) = (self.rel(&path), entry.metadata()) {
                    found.push((key, meta));
                }
            }
        }
    }
}

/// Why a watcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("watch: {0}")]
    Notify(#[from] notify::Error),
}

/// A running watcher: `notify` events in, [`FileUpdate`]s out.
pub struct FileWatcher {
    state: WatchState,
    rx: tokio::sync::mpsc::Receiver<notify::Result<Event>>,
    ready: VecDeque<FileUpdate>,
    _watcher: notify::RecommendedWatcher,
}

impl FileWatcher {
    /// Starts watching `root` recursively, then scans it (so nothing that
    /// happens during the scan is missed). Call within a Tokio runtime.
    pub fn start(root: &Path, opts: WatchOptions) -> Result<Self, WatchError> {
        let canonical = fs::canonicalize(root)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        let mut watcher = notify::RecommendedWatcher::new(
            move |res| {
                // Runs on notify's own thread; waits when the consumer lags.
                let _ = tx.blocking_send(res);
            },
            notify::Config::default().with_follow_symlinks(false),
        )?;
        watcher.watch(&canonical, RecursiveMode::Recursive)?;
        let state = WatchState::new(&canonical, opts)?;
        Ok(Self {
            state,
            rx,
            ready: VecDeque::new(),
            _watcher: watcher,
        })
    }

    pub fn state(&self) -> &WatchState {
        &self.state
    }

    /// The next update; `None` once the watcher has stopped.
    pub async fn next(&mut self) -> Option<FileUpdate> {
        loop {
            if let Some(u) = self.ready.pop_front() {
                return Some(u);
            }
            let deadline = self.state.next_deadline();
            let wake = tokio::time::Instant::from_std(
                deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)),
            );
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(Ok(ev)) => self.state.handle_event(&ev, Instant::now()),
                    Some(Err(e)) => {
                        tracing::warn!("watch error: {e}");
                        self.state.rescan(Instant::now());
                    }
                    None => {
                        let rest = self.state.flush_all();
                        if rest.is_empty() {
                            return None;
                        }
                        self.ready.extend(rest);
                    }
                },
                _ = tokio::time::sleep_until(wake), if deadline.is_some() => {
                    let ups = self.state.flush_due(Instant::now());
                    self.ready.extend(ups);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use notify::event::{CreateKind, DataChange, RemoveKind};

    use super::*;

    const BS: usize = 4;

    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        state: WatchState,
        now: Instant,
    }

    impl Fixture {
        fn new(files: &[(&str, &[u8])]) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let root = fs::canonicalize(dir.path()).unwrap();
            for (p, data) in files {
                write(&root, p, data);
            }
            let opts = WatchOptions {
                block_size: BS,
                ..WatchOptions::default()
            };
            let state = WatchState::new(&root, opts).unwrap();
            Self {
                _dir: dir,
                root,
                state,
                now: Instant::now(),
            }
        }

        fn event(&mut self, kind: EventKind, paths: &[&str]) {
            let mut ev = Event::new(kind);
            for p in paths {
                ev = ev.add_path(self.root.join(p));
            }
            self.state.handle_event(&ev, self.now);
        }

        fn modified(&mut self, p: &str) {
            self.event(EventKind::Modify(ModifyKind::Data(DataChange::Any)), &[p]);
        }

        fn renamed(&mut self, from: &str, to: &str) {
            self.event(
                EventKind::Modify(ModifyKind::Name(RenameMode::From)),
                &[from],
            );
            self.event(EventKind::Modify(ModifyKind::Name(RenameMode::To)), &[to]);
            self.event(
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                &[from, to],
            );
        }

        /// Lets the debounce window pass and settles.
        fn settle(&mut self) -> Vec<FileUpdate> {
            self.now += Duration::from_secs(5);
            self.state.flush_due(self.now)
        }
    }

    fn write(root: &Path, p: &str, data: &[u8]) {
        let path = root.join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }

    fn kinds(ups: &[FileUpdate]) -> Vec<(UpdateKind, &str, u64)> {
        ups.iter()
            .map(|u| (u.kind, u.path.as_str(), u.version))
            .collect()
    }

    #[test]
    fn existing_files_are_known_silently() {
        let mut f = Fixture::new(&[("a.txt", b"aaaabbbbcc"), ("sub/dir/b.bin", b"x")]);
        assert_eq!(f.state.file_count(), 2);
        assert_eq!(f.state.version("sub/dir/b.bin"), Some(1));
        assert!(f.settle().is_empty());
        // A touch (metadata only, same content) gives nothing either.
        f.event(
            EventKind::Modify(ModifyKind::Metadata(notify::event::MetadataKind::Any)),
            &["a.txt"],
        );
        assert!(f.settle().is_empty());
    }

    #[test]
    fn changing_one_block_of_three_lists_only_that_block() {
        let mut f = Fixture::new(&[("a.txt", b"aaaabbbbcc")]);
        write(&f.root, "a.txt", b"aaaaBbbbcc");
        f.modified("a.txt");
        let ups = f.settle();
        assert_eq!(kinds(&ups), vec![(UpdateKind::Modified, "a.txt", 2)]);
        let u = &ups[0];
        assert_eq!((u.size, u.block_size, u.blocks.len()), (10, BS, 3));
        assert_eq!(u.changed, vec![1]);
        assert_eq!(u.blocks[1], blake3::hash(b"Bbbb").to_hex().to_string());
        assert_eq!(u.blocks[0], blake3::hash(b"aaaa").to_hex().to_string());
    }

    #[test]
    fn created_modified_deleted_and_recreated_with_versions() {
        let mut f = Fixture::new(&[]);
        write(&f.root, "n/new.txt", b"12345");
        f.event(EventKind::Create(CreateKind::File), &["n/new.txt"]);
        let ups = f.settle();
        assert_eq!(kinds(&ups), vec![(UpdateKind::Created, "n/new.txt", 1)]);
        assert_eq!(ups[0].changed, vec![0, 1]);

        write(&f.root, "n/new.txt", b"1234567");
        f.modified("n/new.txt");
        let ups = f.settle();
        assert_eq!(kinds(&ups), vec![(UpdateKind::Modified, "n/new.txt", 2)]);
        assert_eq!(ups[0].changed, vec![1]);

        fs::remove_file(f.root.join("n/new.txt")).unwrap();
        f.event(EventKind::Remove(RemoveKind::File), &["n/new.txt"]);
        let ups = f.settle();
        assert_eq!(kinds(&ups), vec![(UpdateKind::Deleted, "n/new.txt", 3)]);
        assert!(ups[0].blocks.is_empty() && ups[0].changed.is_empty() && ups[0].size == 0);

        write(&f.root, "n/new.txt", b"z");
        f.event(EventKind::Create(CreateKind::File), &["n/new.txt"]);
        assert_eq!(
            kinds(&f.settle()),
            vec![(UpdateKind::Created, "n/new.txt", 4)]
        );
    }

    #[test]
    fn bursts_are_debounced_but_bounded() {
        let mut f = Fixture::new(&[("a", b"0")]);
        let start = f.now;
        for i in 0..5u8 {
            write(&f.root, "a", &[b'1' + i]);
            f.modified("a");
            f.now += Duration::from_millis(50);
            assert!(f.state.flush_due(f.now).is_empty(), "still bursting");
        }
        // Quiet for the debounce window: one update for the whole burst.
        f.now += Duration::from_millis(100);
        let ups = f.state.flush_due(f.now);
        assert_eq!(kinds(&ups), vec![(UpdateKind::Modified, "a", 2)]);

        // A path that never goes quiet is still settled after max_delay.
        f.now = start + Duration::from_secs(10);
        let t0 = f.now;
        let mut published = 0;
        for i in 0..40u8 {
            write(&f.root, "a", &[b'a' + (i % 26), i]);
            f.modified("a");
            f.now += Duration::from_millis(50);
            published += f.state.flush_due(f.now).len();
        }
        assert!(f.now - t0 >= Duration::from_secs(2));
        assert!(published >= 1, "max_delay bounds the debounce");
    }

    #[test]
    fn events_for_files_that_vanished_give_nothing_or_a_delete() {
        let mut f = Fixture::new(&[("keep", b"k")]);
        // Created and removed within one window: never known, nothing to say.
        f.event(EventKind::Create(CreateKind::File), &["tmp"]);
        f.modified("tmp");
        assert!(f.settle().is_empty());
        // A known file whose event arrives after it is gone.
        fs::remove_file(f.root.join("keep")).unwrap();
        f.modified("keep");
        assert_eq!(kinds(&f.settle()), vec![(UpdateKind::Deleted, "keep", 2)]);
    }

    #[test]
    fn renames_carry_the_record_and_diff_against_the_old_path() {
        let mut f = Fixture::new(&[("old.txt", b"aaaabbbb")]);
        fs::rename(f.root.join("old.txt"), f.root.join("new.txt")).unwrap();
        f.renamed("old.txt", "new.txt");
        let ups = f.settle();
        assert_eq!(kinds(&ups), vec![(UpdateKind::Renamed, "new.txt", 2)]);
        assert_eq!(ups[0].from.as_deref(), Some("old.txt"));
        assert!(ups[0].changed.is_empty());
        assert_eq!(f.state.version("old.txt"), None);
        // The old path's counter goes on if it is used again.
        write(&f.root, "old.txt", b"q");
        f.event(EventKind::Create(CreateKind::File), &["old.txt"]);
        assert_eq!(
            kinds(&f.settle()),
            vec![(UpdateKind::Created, "old.txt", 2)]
        );
    }

    #[test]
    fn atomic_save_through_a_temp_file_is_a_modification() {
        let mut f = Fixture::new(&[("doc", b"aaaabbbbcccc")]);
        write(&f.root, ".doc.swp", b"aaaabbbbCCCC");
        f.event(EventKind::Create(CreateKind::File), &[".doc.swp"]);
        f.modified(".doc.swp");
        fs::rename(f.root.join(".doc.swp"), f.root.join("doc")).unwrap();
        f.renamed(".doc.swp", "doc");
        let ups = f.settle();
        assert_eq!(kinds(&ups), vec![(UpdateKind::Modified, "doc", 2)]);
        assert_eq!(ups[0].changed, vec![2]);
    }

    #[test]
    fn renaming_over_a_known_file_replaces_it() {
        let mut f = Fixture::new(&[("a", b"aaaa"), ("b", b"bbbb")]);
        fs::rename(f.root.join("a"), f.root.join("b")).unwrap();
        f.renamed("a", "b");
        let ups = f.settle();
        assert_eq!(kinds(&ups), vec![(UpdateKind::Renamed, "b", 2)]);
        assert_eq!(ups[0].from.as_deref(), Some("a"));
        assert_eq!(f.state.file_count(), 1);
    }

    #[test]
    fn directory_renames_rename_every_file() {
        let mut f = Fixture::new(&[("d/x", b"1"), ("d/e/y", b"2"), ("dd", b"3")]);
        fs::rename(f.root.join("d"), f.root.join("z")).unwrap();
        f.renamed("d", "z");
        let mut ups = f.settle();
        ups.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(
            kinds(&ups),
            vec![
                (UpdateKind::Renamed, "z/e/y", 2),
                (UpdateKind::Renamed, "z/x", 2)
            ]
        );
        assert_eq!(ups[0].from.as_deref(), Some("d/e/y"));
        assert_eq!(
            f.state.version("dd"),
            Some(1),
            "a sibling sharing the prefix is untouched"
        );
    }

    #[test]
    fn moves_in_and_out_of_the_tree_are_creates_and_deletes() {
        let mut f = Fixture::new(&[("out", b"o")]);
        let outside = tempfile::tempdir().unwrap();
        fs::rename(f.root.join("out"), outside.path().join("out")).unwrap();
        f.event(
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            &["out"],
        );
        assert_eq!(kinds(&f.settle()), vec![(UpdateKind::Deleted, "out", 2)]);

        fs::write(outside.path().join("in"), b"i").unwrap();
        fs::rename(outside.path().join("in"), f.root.join("in")).unwrap();
        f.event(EventKind::Modify(ModifyKind::Name(RenameMode::To)), &["in"]);
        assert_eq!(kinds(&f.settle()), vec![(UpdateKind::Created, "in", 1)]);
    }

    #[test]
    fn new_and_deleted_directories_are_walked() {
        let mut f = Fixture::new(&[("gone/a", b"a"), ("gone/b/c", b"c")]);
        write(&f.root, "fresh/one", b"1");
        write(&f.root, "fresh/deep/two", b"2");
        f.event(EventKind::Create(CreateKind::Folder), &["fresh"]);
        let mut ups = f.settle();
        ups.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(
            kinds(&ups),
            vec![
                (UpdateKind::Created, "fresh/deep/two", 1),
                (UpdateKind::Created, "fresh/one", 1)
            ]
        );
        fs::remove_dir_all(f.root.join("gone")).unwrap();
        f.event(EventKind::Remove(RemoveKind::Folder), &["gone"]);
        let ups = f.settle();
        assert_eq!(
            kinds(&ups),
            vec![
                (UpdateKind::Deleted, "gone/a", 2),
                (UpdateKind::Deleted, "gone/b/c", 2)
            ]
        );
    }

    #[test]
    fn a_rescan_finds_what_events_missed() {
        let mut f = Fixture::new(&[("a", b"aaaa"), ("b", b"bbbb")]);
        write(&f.root, "a", b"aaaaA");
        fs::remove_file(f.root.join("b")).unwrap();
        write(&f.root, "c", b"c");
        f.state.rescan(f.now);
        let mut ups = f.settle();
        ups.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(
            kinds(&ups),
            vec![
                (UpdateKind::Modified, "a", 2),
                (UpdateKind::Deleted, "b", 2),
                (UpdateKind::Created, "c", 1)
            ]
        );
        assert_eq!(ups[0].changed, vec![1]);
    }

    #[test]
    fn own_reads_and_paths_outside_are_ignored() {
        let mut f = Fixture::new(&[("a", b"a")]);
        f.event(EventKind::Access(AccessKind::Open(AccessMode::Any)), &["a"]);
        f.event(
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            &["a"],
        );
        let ev = Event::new(EventKind::Create(CreateKind::File)).add_path("/somewhere/else".into());
        f.state.handle_event(&ev, f.now);
        assert_eq!(f.state.pending_count(), 0);
    }

    #[test]
    fn symlinks_are_not_reported() {
        let mut f = Fixture::new(&[("real", b"r")]);
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(f.root.join("real"), f.root.join("link")).unwrap();
            f.event(EventKind::Create(CreateKind::File), &["link"]);
            assert!(f.settle().is_empty());
        }
        assert_eq!(f.state.file_count(), 1);
    }

    #[test]
    fn updates_serialize_to_the_documented_schema() {
        let u = FileUpdate {
            path: "docs/a.txt".into(),
            kind: UpdateKind::Renamed,
            from: Some("a.txt".into()),
            size: 5,
            version: 3,
            block_size: 4,
            blocks: vec!["ab".into(), "cd".into()],
            changed: vec![1],
        };
        let v = serde_json::to_value(&u).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"path":"docs/a.txt","kind":"renamed","from":"a.txt","size":5,
                "version":3,"block_size":4,"blocks":["ab","cd"],"changed":[1]})
        );
        let back: FileUpdate = serde_json::from_value(v).unwrap();
        assert_eq!(back, u);
        let mut d = u.clone();
        d.kind = UpdateKind::Deleted;
        d.from = None;
        assert!(serde_json::to_value(&d).unwrap().get("from").is_none());
    }

    async fn next(w: &mut FileWatcher) -> FileUpdate {
        tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .unwrap()
            .unwrap()
    }

    /// The real `notify` watcher on a real directory, end to end (no network).
    #[tokio::test]
    async fn file_watcher_reports_real_changes() {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        fs::write(root.join("existing"), b"aaaabbbbcccc").unwrap();
        let opts = WatchOptions {
            block_size: BS,
            // Generous, so a loaded machine cannot split one write into two updates.
            debounce: Duration::from_millis(300),
            max_delay: Duration::from_secs(3),
        };
        let mut w = FileWatcher::start(&root, opts).unwrap();
        assert_eq!(w.state().file_count(), 1);

        fs::write(root.join("existing"), b"aaaaBBBBcccc").unwrap();
        let u = next(&mut w).await;
        assert_eq!(
            (u.kind, u.path.as_str(), u.version, u.changed.clone()),
            (UpdateKind::Modified, "existing", 2, vec![1])
        );

        fs::create_dir(root.join("sub")).unwrap();
        fs::write(root.join("sub/new"), b"hello").unwrap();
        let u = next(&mut w).await;
        assert_eq!(
            (u.kind, u.path.as_str(), u.version),
            (UpdateKind::Created, "sub/new", 1)
        );
        assert_eq!(u.changed, vec![0, 1]);

        fs::rename(root.join("sub/new"), root.join("sub/renamed")).unwrap();
        let u = next(&mut w).await;
        assert_eq!(
            (u.kind, u.path.as_str(), u.from.as_deref()),
            (UpdateKind::Renamed, "sub/renamed", Some("sub/new"))
        );
        assert_eq!(u.version, 2);

        fs::remove_file(root.join("sub/renamed")).unwrap();
        let u = next(&mut w).await;
        assert_eq!(
            (u.kind, u.path.as_str(), u.version),
            (UpdateKind::Deleted, "sub/renamed", 3)
        );
    }
}
