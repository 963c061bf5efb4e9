//! Returned files in Docker mode (`RunSpec::collect`): the same entries, in the same order,
//! under the same caps as the native walker ([`crate::sandbox::collect`]), whose rules are
//! applied here to a listing instead of to fds.
//!
//! `/work` is a tmpfs inside the container's mount namespace: the archive API cannot read it,
//! and it is gone when the container stops. So in collect mode the entry (pid 1 of the
//! container) keeps the container alive after the payload, and:
//!
//! ```text
//!  payload ends ─▶ entry: kill -KILL -1 (every other process), reap
//!  stderr: ... payload ... "kakoi-entry 2 exit <nonce>\n"
//!  stdout: ... payload ... "kakoi-entry 2 exit <nonce> <status>\n"
//!          "<type> <size> <dev> <path>\0" ... "=end <find status>\0"     (find -P, no link
//!                                                                      followed, depth-capped)
//!  kakoi:  Listing ─▶ collect::walk (rules, order, caps) ─▶ the files to read
//!          exec `tar -c --no-recursion --hard-dereference -T -` as uid 1000 ─▶ parse, check
//!          every member is a regular file of the listed size ─▶ fill the contents
//!          kill + remove the container
//! ```
//!
//! Nothing runs in the container while it is listed and read (the entry killed everything),
//! so the listing is the tree that is read. kakoi trusts neither: a member that is not a
//! regular file, not asked for, or not of the listed size is `unreadable`; the listing and the
//! archive are read under byte caps.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::io::Read as _;
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};

use base64::Engine as _;

use crate::result::OutputFile;
use crate::sandbox::collect::{self as walker, Content, Kind, Meta, Tree, reason};
use crate::spec::Collect;

/// Most bytes of listing kakoi reads (about 300k entries); the rest is dropped and the result
/// ends with a `limit` entry.
pub const LISTING_MAX: usize = 16 << 20;

/// Splits one output stream at the entry's end marker: the bytes before it are the payload's,
/// the bytes after it the entry's. The marker may arrive split across frames, and the payload's
/// last line need not end with a newline.
#[derive(Debug)]
pub struct Marker {
    needle: Vec<u8>,
    held: Vec<u8>,
    found: bool,
}

impl Marker {
    /// The marker of the run with this nonce.
    pub fn new(nonce: &str) -> Marker {
        Marker {
            needle: format!("kakoi-entry 2 exit {nonce}").into_bytes(),
            held: Vec::new(),
            found: false,
        }
    }

    /// The marker was seen.
    pub fn found(&self) -> bool {
        self.found
    }

    /// Feed stream bytes; returns `(payload bytes, bytes after the marker)`. Bytes that may be
    /// the start of the marker are held back until the next frame tells.
    pub fn feed(&mut self, bytes: &[u8]) -> (Vec<u8>, Vec<u8>) {
        if self.found {
            return (Vec::new(), bytes.to_vec());
        }
        let mut data = std::mem::take(&mut self.held);
        data.extend_from_slice(bytes);
        if let Some(at) = data
            .windows(self.needle.len())
            .position(|w| w == self.needle.as_slice())
        {
            self.found = true;
            let after = data[at + self.needle.len()..].to_vec();
            data.truncate(at);
            return (data, after);
        }
        // Keep the longest suffix that is a proper prefix of the marker.
        let longest = (1..self.needle.len().min(data.len() + 1))
            .rev()
            .find(|&n| data.ends_with(&self.needle[..n]))
            .unwrap_or(0);
        self.held = data.split_off(data.len() - longest);
        (data, Vec::new())
    }

    /// The stream ended: bytes still held back belong to the payload.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }
}

/// What the entry printed after the stdout marker: the payload's exit status, then the listing.
#[derive(Debug, Default)]
pub struct ListingStream {
    bytes: Vec<u8>,
    truncated: bool,
}

impl ListingStream {
    /// Append bytes (beyond [`LISTING_MAX`] they are dropped).
    pub fn push(&mut self, bytes: &[u8]) {
        let room = LISTING_MAX.saturating_sub(self.bytes.len());
        if bytes.len() > room {
            self.truncated = true;
        }
        self.bytes
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// The payload's exit status (`$?` of the entry: 128+N for signal N), once its line is in.
    pub fn status(&self) -> Option<i64> {
        let end = self.bytes.iter().position(|&b| b == b'\n')?;
        std::str::from_utf8(&self.bytes[..end])
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The listing is complete (its `=end` record arrived) or was cut at the cap.
    pub fn complete(&self) -> bool {
        if self.truncated {
            return true;
        }
        let Some(newline) = self.bytes.iter().position(|&b| b == b'\n') else {
            return false;
        };
        let records = &self.bytes[newline + 1..];
        let Some(body) = records.strip_suffix(b"\0") else {
            return false;
        };
        let last = body.iter().rposition(|&b| b == 0).map_or(0, |i| i + 1);
        body[last..].starts_with(b"=end ")
    }

    /// Parse the records.
    pub fn listing(&self) -> Listing {
        let mut listing = Listing {
            truncated: self.truncated,
            ..Listing::default()
        };
        let Some(newline) = self.bytes.iter().position(|&b| b == b'\n') else {
            return listing;
        };
        for record in self.bytes[newline + 1..].split(|&b| b == 0) {
            if record.is_empty() || record.starts_with(b"=end ") {
                continue;
            }
            listing.add(record);
        }
        listing
    }
}

/// The output directory as the entry listed it: a [`Tree`] for the shared walker.
#[derive(Debug, Default)]
pub struct Listing {
    root: Option<Option<Meta>>,
    /// Directory path (relative, `/`-separated, empty for the root) -> name -> `lstat`
    /// (`None`: find could not tell).
    children: HashMap<Vec<u8>, BTreeMap<OsString, Option<Meta>>>,
    truncated: bool,
}

impl Listing {
    /// Add one `"<type> <size> <device> <path>"` record; malformed ones are ignored.
    fn add(&mut self, record: &[u8]) {
        let mut fields = record.splitn(4, |&b| b == b' ');
        let (Some(kind), Some(size), Some(device), Some(path)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return;
        };
        let number = |field: &[u8]| std::str::from_utf8(field).ok()?.parse::<u64>().ok();
        let kind = match kind {
            b"d" => Some(Kind::Directory),
            b"f" => Some(Kind::Regular),
            b"l" => Some(Kind::Symlink),
            b"p" | b"s" | b"c" | b"b" | b"D" => Some(Kind::Other),
            // `?` (find's lstat failed), `U` (unknown type).
            _ => None,
        };
        let meta = match (kind, number(size), number(device)) {
            (Some(kind), Some(size), Some(device)) => Some(Meta {
                kind,
                size,
                device,
                inode: 0,
            }),
            _ => None,
        };
        if path.is_empty() {
            self.root = Some(meta);
            return;
        }
        let (parent, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(slash) => (&path[..slash], &path[slash + 1..]),
            None => (&path[..0], path),
        };
        if name.is_empty() || name == b"." || name == b".." {
            return;
        }
        self.children
            .entry(parent.to_vec())
            .or_default()
            .insert(OsString::from_vec(name.to_vec()), meta);
    }

    /// Apply the native rules to this listing. Regular files come back as
    /// [`Content::Deferred`]: read them with [`fill`].
    pub fn walk(&mut self, caps: &Collect) -> walker::Collected {
        let mut collected = walker::walk(self, caps);
        if self.truncated && collected.files.len() <= caps.max_files {
            // Entries past the listing cap were never seen: say so instead of pretending.
            let last = collected.files.last();
            if last.is_none_or(|f| f.skipped.as_deref() != Some(reason::LIMIT)) {
                collected
                    .files
                    .push(walker::skipped("...".into(), 0, reason::LIMIT));
            }
        }
        collected
    }
}

fn join(dir: &[u8], name: &OsStr) -> Vec<u8> {
    let mut path = dir.to_vec();
    if !path.is_empty() {
        path.push(b'/');
    }
    path.extend_from_slice(name.as_bytes());
    path
}

impl Tree for Listing {
    type Dir = Vec<u8>;

    fn root(&mut self) -> Result<Option<Meta>, &'static str> {
        match self.root {
            None => Ok(None),
            Some(None) => Err(reason::UNREADABLE),
            Some(Some(meta)) => Ok(Some(meta)),
        }
    }

    fn open_root(&mut self) -> Result<Vec<u8>, &'static str> {
        Ok(Vec::new())
    }

    fn names(&mut self, dir: &Vec<u8>) -> Option<Vec<OsString>> {
        Some(
            self.children
                .get(dir)
                .map(|c| c.keys().cloned().collect())
                .unwrap_or_default(),
        )
    }

    fn stat(&mut self, dir: &Vec<u8>, name: &OsStr) -> Option<Meta> {
        self.children.get(dir)?.get(name).copied().flatten()
    }

    fn open_dir(&mut self, dir: &Vec<u8>, name: &OsStr) -> Result<Vec<u8>, &'static str> {
        Ok(join(dir, name))
    }

    fn read(
        &mut self,
        _dir: &Vec<u8>,
        _name: &OsStr,
        _meta: &Meta,
    ) -> Result<Content, &'static str> {
        Ok(Content::Deferred)
    }
}

/// Most archive bytes [`fill`] needs for these files: their sizes, a header and a GNU
/// long-name record per member, padding, and tar's end-of-archive record.
pub fn archive_cap(files: &[OutputFile], deferred: &[(usize, String)]) -> usize {
    let content: u64 = deferred.iter().map(|(i, _)| files[*i].size + 512).sum();
    let names: usize = deferred.iter().map(|(_, p)| p.len() + 1536).sum();
    usize::try_from(content)
        .unwrap_or(usize::MAX)
        .saturating_add(names)
        .saturating_add(20 << 10)
}

/// Fill the deferred entries of `collected` from `archive` (a tar the container's `tar -c`
/// wrote, possibly cut short). A member counts only if it was asked for, is a regular file,
/// and has exactly the listed size; every deferred entry left without content becomes
/// `unreadable`.
pub fn fill(collected: &mut walker::Collected, archive: &[u8]) {
    let wanted: HashMap<&str, usize> = collected
        .deferred
        .iter()
        .map(|(index, path)| (path.as_str(), *index))
        .collect();
    let mut contents: HashMap<usize, Vec<u8>> = HashMap::new();
    let mut tar = tar::Archive::new(archive);
    if let Ok(entries) = tar.entries() {
        for entry in entries {
            let Ok(mut entry) = entry else {
                break;
            };
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let raw = entry.path_bytes().into_owned();
            let Ok(path) = std::str::from_utf8(&raw) else {
                continue;
            };
            let path = path.strip_prefix("./").unwrap_or(path);
            let Some(&index) = wanted.get(path) else {
                continue;
            };
            let size = collected.files[index].size;
            if entry.size() != size || contents.contains_key(&index) {
                continue;
            }
            let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            if (&mut entry).take(size).read_to_end(&mut bytes).is_ok() && bytes.len() as u64 == size
            {
                contents.insert(index, bytes);
            }
        }
    }
    for (index, _) in std::mem::take(&mut collected.deferred) {
        let file = &mut collected.files[index];
        match contents.remove(&index) {
            Some(bytes) => {
                file.base64 = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
            }
            None => file.skipped = Some(reason::UNREADABLE.into()),
        }
    }
}

/// The deferred entries become `unreadable` (the archive could not be read at all).
pub fn give_up(collected: &mut walker::Collected) {
    for (index, _) in std::mem::take(&mut collected.deferred) {
        collected.files[index].skipped = Some(reason::UNREADABLE.into());
    }
}

/// The names for `tar -T - --null`, relative to the output directory, each `./`-prefixed so
/// none reads as an option.
pub fn tar_names(deferred: &[(usize, String)]) -> Vec<u8> {
    let mut names = Vec::new();
    for (_, path) in deferred {
        names.extend_from_slice(b"./");
        names.extend_from_slice(path.as_bytes());
        names.push(0);
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(file: &OutputFile) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(file.base64.as_ref().expect("content"))
            .unwrap()
    }

    #[test]
    fn marker_splits_across_frames_and_without_a_newline() {
        let mut m = Marker::new("ab12");
        let (a, b) = m.feed(b"hello kakoi-entry 2 ex");
        assert_eq!((a.as_slice(), b.as_slice()), (&b"hello "[..], &b""[..]));
        let (a, b) = m.feed(b"it ab12 0\nrest");
        assert_eq!((a.as_slice(), b.as_slice()), (&b""[..], &b" 0\nrest"[..]));
        assert!(m.found());
        assert_eq!(m.feed(b"more").1, b"more");
        // A near miss is the payload's.
        let mut m = Marker::new("ab12");
        let (a, _) = m.feed(b"kakoi-entry 2 exit ab13 x");
        assert_eq!(a, b"kakoi-entry 2 exit ab13 x");
        let (a, _) = m.feed(b"kakoi-ent");
        assert!(a.is_empty());
        assert_eq!(m.finish(), b"kakoi-ent");
        assert!(!m.found());
    }

    fn stream(records: &[&[u8]]) -> ListingStream {
        let mut s = ListingStream::default();
        s.push(b" 0\n");
        for r in records {
            s.push(r);
            s.push(b"\0");
        }
        s
    }

    #[test]
    fn listing_completes_on_its_end_record() {
        let mut s = ListingStream::default();
        s.push(b" 3");
        assert_eq!(s.status(), None);
        s.push(b"\nd 60 5 \0f 1 5 a\0");
        assert_eq!(s.status(), Some(3));
        assert!(!s.complete());
        s.push(b"=end 0\0");
        assert!(s.complete());
        // A file named "=end x" is a record with a type first: not the end.
        let s = stream(&[b"d 60 5 ", b"f 1 5 =end x"]);
        assert!(!s.complete());
    }

    #[test]
    fn the_native_rules_apply_to_a_listing() {
        let s = stream(&[
            b"d 100 5 ",
            b"f 3 5 b.txt",
            b"l 11 5 passwd",
            b"p 0 5 fifo",
            b"s 0 5 sock",
            b"f 1099511627776 5 sparse",
            b"d 60 5 sub",
            b"f 1 5 sub/x",
            b"d 60 9 mnt",
            b"f 1 5 bad\xffname",
            b"f 2 5 a.txt",
            b"? 0 5 gone",
            b"=end 1",
        ]);
        assert!(s.complete());
        let mut listing = s.listing();
        let collected = listing.walk(&Collect::default());
        let got: Vec<(&str, Option<&str>)> = collected
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.skipped.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("a.txt", None),
                ("b.txt", None),
                ("bad\u{fffd}name", Some(reason::NOT_UTF8)),
                ("fifo", Some(reason::NOT_REGULAR)),
                ("gone", Some(reason::UNREADABLE)),
                ("passwd", Some(reason::SYMLINK)),
                ("sock", Some(reason::NOT_REGULAR)),
                ("sparse", Some(reason::TOO_LARGE)),
                ("mnt", Some(reason::OTHER_MOUNT)),
                ("sub/x", None),
            ]
        );
        let deferred: Vec<&str> = collected.deferred.iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(deferred, ["a.txt", "b.txt", "sub/x"]);
        assert_eq!(
            tar_names(&collected.deferred),
            b"./a.txt\0./b.txt\0./sub/x\0"
        );
    }

    #[test]
    fn root_records_missing_symlinked_or_a_file() {
        assert!(
            stream(&[b"=end 1"])
                .listing()
                .walk(&Collect::default())
                .files
                .is_empty()
        );
        for (record, why) in [
            (&b"l 0 0 "[..], reason::SYMLINK),
            (b"f 0 0 ", reason::NOT_REGULAR),
        ] {
            let files = stream(&[record, b"=end 0"])
                .listing()
                .walk(&Collect::default())
                .files;
            assert_eq!(files.len(), 1);
            assert_eq!(
                (files[0].path.as_str(), files[0].skipped.as_deref()),
                (".", Some(why))
            );
        }
    }

    fn archive(members: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, body) in members {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            if *kind == tar::EntryType::Symlink {
                header.set_size(0);
                header.set_link_name("/etc/shadow").unwrap();
                builder.append_data(&mut header, path, &[][..]).unwrap();
            } else {
                builder.append_data(&mut header, path, *body).unwrap();
            }
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn fill_takes_only_regular_members_of_the_listed_size() {
        let mut listing = stream(&[
            b"d 100 5 ",
            b"f 3 5 a",
            b"f 3 5 b",
            b"f 3 5 c",
            b"f 3 5 d",
            b"=end 0",
        ])
        .listing();
        let mut collected = listing.walk(&Collect::default());
        let tar = archive(&[
            ("./a", tar::EntryType::Regular, b"aaa"),
            ("./b", tar::EntryType::Symlink, b""),
            ("./c", tar::EntryType::Regular, b"cccc"),
            ("./x", tar::EntryType::Regular, b"xxx"),
        ]);
        fill(&mut collected, &tar);
        let files = &collected.files;
        assert_eq!(content(&files[0]), b"aaa");
        for f in &files[1..] {
            assert_eq!(f.skipped.as_deref(), Some(reason::UNREADABLE), "{f:?}");
            assert!(f.base64.is_none());
        }
        assert!(collected.deferred.is_empty());
        // A cut archive: what is complete counts.
        let mut collected = listing.walk(&Collect::default());
        fill(&mut collected, &tar[..700]);
        assert_eq!(content(&collected.files[0]), b"aaa");
        assert!(archive_cap(&collected.files, &[(0, "a".into())]) > 3 + 1024);
    }

    #[test]
    fn a_truncated_listing_ends_with_a_limit_entry() {
        let mut s = ListingStream::default();
        s.push(b" 0\nd 1 5 \0f 1 5 a\0");
        s.push(&vec![b'x'; LISTING_MAX]);
        assert!(s.complete());
        let files = s.listing().walk(&Collect::default()).files;
        assert_eq!(
            files.last().unwrap().skipped.as_deref(),
            Some(reason::LIMIT)
        );
    }
}
