//! What the `inception` command's subcommands share: reading the files a
//! user names without ever blocking on one or holding one that is too big
//! ([`input`]), and the glob patterns `inception records` expands
//! ([`glob`]).

/// A mistake in what was asked for, found after the arguments were parsed
/// (a weights file given where the metadata belongs): `inception` exits
/// with status 2, as for the mistakes clap finds.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// `--config` and `--set` as given at every level of the command line
/// (`inception --set a.b=1 records stats --set c.d=2 …`), outermost first:
/// the last `--config` wins, and every `--set` counts, later ones winning
/// over earlier ones for the same key.
pub fn merged_settings_flags(levels: &[&inception_core::cli::CommonArgs]) -> inception_core::cli::CommonArgs {
    inception_core::cli::CommonArgs {
        config: levels.iter().rev().find_map(|l| l.config.clone()),
        set: levels.iter().flat_map(|l| l.set.iter().cloned()).collect(),
    }
}

pub mod lineage;
pub mod report;

pub mod input {
    //! Files named on the command line are checked by their metadata before
    //! they are opened: a FIFO or a terminal would block the read, a device
    //! like /dev/zero never ends, and a file over the bound would be held
    //! in memory whole.

    use std::fs::{FileType, Metadata, OpenOptions};
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    use std::path::Path;

    /// Why a named file was not read.
    #[derive(Debug, thiserror::Error)]
    pub enum Refused {
        /// Not a regular file: reading it could block or never end.
        #[error("{path}: skipped: {kind}, not a regular file")]
        Special {
            /// The file as named.
            path: String,
            /// What it is instead ("a FIFO", "a character device", ...).
            kind: &'static str,
        },
        /// Larger than the bound: not read at all.
        #[error("{path}: skipped: {size} bytes, more than --max-file-bytes {max}")]
        TooLarge {
            /// The file as named.
            path: String,
            /// Its size (or what was read of it before it passed the bound).
            size: u64,
            /// The bound.
            max: u64,
        },
        /// The file cannot be looked at or read.
        #[error("{path}: cannot read it: {source}")]
        Io {
            /// The file as named.
            path: String,
            /// Why.
            source: std::io::Error,
        },
    }

    /// What a file that is not a regular file is, in words; `None` for a regular file.
    pub fn special_kind(file_type: FileType) -> Option<&'static str> {
        if file_type.is_file() {
            None
        } else if file_type.is_fifo() {
            Some("a FIFO")
        } else if file_type.is_char_device() {
            Some("a character device")
        } else if file_type.is_block_device() {
            Some("a block device")
        } else if file_type.is_socket() {
            Some("a socket")
        } else if file_type.is_dir() {
            Some("a folder")
        } else {
            Some("a special file")
        }
    }

    fn admit(path: &Path, meta: &Metadata, max: u64) -> Result<u64, Refused> {
        let name = || path.display().to_string();
        if let Some(kind) = special_kind(meta.file_type()) {
            return Err(Refused::Special { path: name(), kind });
        }
        if meta.len() > max {
            return Err(Refused::TooLarge { path: name(), size: meta.len(), max });
        }
        Ok(meta.len())
    }

    /// The size of `path` if it is a regular file (after following links) of
    /// at most `max` bytes; checked without opening it.
    pub fn check(path: &Path, max: u64) -> Result<u64, Refused> {
        let meta =
            std::fs::metadata(path).map_err(|source| Refused::Io { path: path.display().to_string(), source })?;
        admit(path, &meta, max)
    }

    /// The bytes of `path`, a regular file of at most `max` bytes. Checked
    /// before it is opened, opened without blocking, checked again on the
    /// open file (it may have been replaced in between), and never read
    /// past `max` (it may be growing).
    pub fn read(path: &Path, max: u64) -> Result<Vec<u8>, Refused> {
        let io = |source| Refused::Io { path: path.display().to_string(), source };
        check(path, max)?;
        let file = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(io)?;
        let size = admit(path, &file.metadata().map_err(io)?, max)?;
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        file.take(max.saturating_add(1)).read_to_end(&mut bytes).map_err(io)?;
        if bytes.len() as u64 > max {
            return Err(Refused::TooLarge { path: path.display().to_string(), size: bytes.len() as u64, max });
        }
        Ok(bytes)
    }
}

pub mod glob {
    //! Shell-style patterns (`*`, `?`, `[abc]`, `[a-z]`, `[!a]`) for the
    //! inputs that no shell expanded: quoted local paths and store keys.
    //! A wildcard never matches `/`, so a pattern names files of one folder.

    /// Whether `s` has a wildcard.
    pub fn has_wildcards(s: &str) -> bool {
        s.contains(['*', '?', '['])
    }

    /// Whether all of `text` matches `pattern`.
    pub fn matches(pattern: &str, text: &str) -> bool {
        let p: Vec<char> = pattern.chars().collect();
        let t: Vec<char> = text.chars().collect();
        match_from(&p, &t)
    }

    fn match_from(p: &[char], t: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            // `*`: the rest of the pattern from here or after each further character of this folder's name.
            Some('*') => (0..=t.len()).take_while(|&i| i == 0 || t[i - 1] != '/').any(|i| match_from(&p[1..], &t[i..])),
            Some('?') => t.first().is_some_and(|&c| c != '/') && match_from(&p[1..], &t[1..]),
            Some('[') => match (class(&p[1..]), t.first()) {
                (Some((matched, used)), Some(&c)) => c != '/' && matched(c) && match_from(&p[1 + used..], &t[1..]),
                // An unclosed `[` is an ordinary character.
                (None, Some('[')) => match_from(&p[1..], &t[1..]),
                _ => false,
            },
            Some(&c) => t.first() == Some(&c) && match_from(&p[1..], &t[1..]),
        }
    }

    type Class = Box<dyn Fn(char) -> bool>;

    /// The character class after a `[`: a test, and how many pattern
    /// characters it took with its `]`; `None` when it is not closed.
    fn class(p: &[char]) -> Option<(Class, usize)> {
        let negated = matches!(p.first(), Some('!' | '^'));
        let start = usize::from(negated);
        // A `]` first in the class is one of its characters.
        let end = p.iter().skip(start + 1).position(|&c| c == ']')? + start + 1;
        let members: Vec<char> = p[start..end].to_vec();
        let test = move |c: char| {
            let mut i = 0;
            let mut hit = false;
            while i < members.len() {
                if i + 2 < members.len() && members[i + 1] == '-' {
                    hit |= (members[i]..=members[i + 2]).contains(&c);
                    i += 3;
                } else {
                    hit |= members[i] == c;
                    i += 1;
                }
            }
            hit != negated
        };
        Some((Box::new(test), end + 1))
    }

    #[cfg(test)]
    mod tests {
        use super::matches;

        #[test]
        fn wildcards_match_within_one_folder() {
            assert!(matches("train-*", "train-00000-of-00002"));
            assert!(matches("d/train-*-of-*", "d/train-00001-of-00002"));
            assert!(!matches("d/*", "d/ingest/report.json"), "no match across /");
            assert!(matches("x?z", "xyz") && !matches("x?z", "xz"));
            assert!(
                matches("train-0000[01]-*", "train-00001-of-2") && !matches("train-0000[01]-*", "train-00002-of-2")
            );
            assert!(matches("[a-c]at", "bat") && !matches("[!a-c]at", "bat") && matches("[!a-c]at", "rat"));
            assert!(matches("[]]", "]") && matches("a[", "a["), "] first in a class; an unclosed [");
            assert!(!matches("train", "train-0") && matches("", ""));
        }
    }
}
