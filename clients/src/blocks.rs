//! Fixed-size block hashing and block diffs, as in rsync: a file is cut into
//! blocks of `block_size` bytes (the last one may be shorter), each block is
//! hashed with BLAKE3, and two versions of a file are compared block by block.

use std::{
    fs::File,
    io::{self, Read},
    path::Path,
};

/// The default block size, 64 KiB.
pub const DEFAULT_BLOCK_SIZE: usize = 64 * 1024;

/// The largest block size accepted (1 GiB).
pub const MAX_BLOCK_SIZE: usize = 1 << 30;

/// The block hashes of one version of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockHashes {
    /// File size in bytes.
    pub size: u64,
    pub block_size: usize,
    /// One hash per block, in file order; empty for an empty file.
    pub hashes: Vec<blake3::Hash>,
}

impl BlockHashes {
    /// The hashes as lowercase hex strings (64 characters each).
    pub fn hex(&self) -> Vec<String> {
        self.hashes.iter().map(|h| h.to_hex().to_string()).collect()
    }
}

/// Hashes everything `reader` yields in blocks of `block_size` bytes.
///
/// Blocks are cut at fixed offsets whatever sizes the reads come back in.
/// Panics if `block_size` is 0; sizes above [`MAX_BLOCK_SIZE`] are clamped.
pub fn hash_reader<R: Read>(mut reader: R, block_size: usize) -> io::Result<BlockHashes> {
    assert!(block_size > 0, "block size must be positive");
    let mut buf = vec![0u8; block_size.min(MAX_BLOCK_SIZE)];
    let mut hashes = Vec::new();
    let mut size = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match reader.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            break;
        }
        size += filled as u64;
        hashes.push(blake3::hash(&buf[..filled]));
        if filled < buf.len() {
            break;
        }
    }
    Ok(BlockHashes {
        size,
        block_size: buf.len(),
        hashes,
    })
}

/// Hashes a byte slice in blocks of `block_size`.
pub fn hash_bytes(data: &[u8], block_size: usize) -> BlockHashes {
    assert!(block_size > 0, "block size must be positive");
    BlockHashes {
        size: data.len() as u64,
        block_size,
        hashes: data.chunks(block_size).map(blake3::hash).collect(),
    }
}

/// Hashes the file at `path` in blocks of `block_size`.
pub fn hash_file(path: &Path, block_size: usize) -> io::Result<BlockHashes> {
    hash_reader(File::open(path)?, block_size)
}

/// The indexes of the blocks of `new` whose hash differs from the block at
/// the same index in `old`; every block when there is no `old`. Blocks past
/// the end of `new` (the file shrank) are not listed: they no longer exist.
pub fn changed_blocks(old: Option<&[blake3::Hash]>, new: &[blake3::Hash]) -> Vec<usize> {
    match old {
        None => (0..new.len()).collect(),
        Some(old) => new
            .iter()
            .enumerate()
            .filter(|(i, h)| old.get(*i) != Some(h))
            .map(|(i, _)| i)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Hands out at most `n` bytes per read, to show block cuts do not depend on reads.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(self.1).min(out.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn one_changed_block_of_three_is_the_only_one_listed() {
        let bs = 4;
        let old = hash_bytes(b"aaaabbbbcc", bs);
        assert_eq!((old.size, old.hashes.len()), (10, 3));
        let new = hash_bytes(b"aaaaXbbbcc", bs);
        assert_eq!(changed_blocks(Some(&old.hashes), &new.hashes), vec![1]);
        let new = hash_bytes(b"aaaabbbbcX", bs);
        assert_eq!(changed_blocks(Some(&old.hashes), &new.hashes), vec![2]);
        assert_eq!(
            changed_blocks(Some(&old.hashes), &old.hashes),
            Vec::<usize>::new()
        );
    }

    #[test]
    fn new_files_list_every_block_and_growth_lists_new_blocks() {
        let a = hash_bytes(b"aaaabbbbcc", 4);
        assert_eq!(changed_blocks(None, &a.hashes), vec![0, 1, 2]);
        // Appending changes the partial last block and adds one.
        let b = hash_bytes(b"aaaabbbbccccd", 4);
        assert_eq!(changed_blocks(Some(&a.hashes), &b.hashes), vec![2, 3]);
        // Shrinking lists nothing that is gone.
        let c = hash_bytes(b"aaaa", 4);
        assert_eq!(
            changed_blocks(Some(&a.hashes), &c.hashes),
            Vec::<usize>::new()
        );
        // An insertion at the start shifts every block (fixed-offset blocks, as in rsync's
        // per-block hashes without the rolling search).
        let d = hash_bytes(b"Xaaaabbbbcc", 4);
        assert_eq!(changed_blocks(Some(&a.hashes), &d.hashes), vec![0, 1, 2]);
    }

    #[test]
    fn reader_and_slice_hashing_agree_whatever_the_read_sizes() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for bs in [1, 3, 64, 1000, 4096, 10_000, 20_000] {
            let want = hash_bytes(&data, bs);
            for step in [1, 7, 4096, 100_000] {
                assert_eq!(
                    hash_reader(Trickle(&data, step), bs).unwrap(),
                    want,
                    "bs {bs} step {step}"
                );
            }
        }
        assert_eq!(hash_reader(&b""[..], 4).unwrap().hashes.len(), 0);
        let exact = hash_bytes(&[1u8; 8], 4);
        assert_eq!(exact.hashes.len(), 2, "no empty trailing block");
        assert_eq!(exact.hashes[0], blake3::hash(&[1u8; 4]));
    }

    #[test]
    fn files_hash_like_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello world, hello blocks").unwrap();
        let h = hash_file(&p, 5).unwrap();
        assert_eq!(h, hash_bytes(b"hello world, hello blocks", 5));
        assert_eq!(h.hex()[0], blake3::hash(b"hello").to_hex().to_string());
        assert_eq!(
            hash_file(&dir.path().join("missing"), 5)
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
    }
}
