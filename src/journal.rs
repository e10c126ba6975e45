//! The journal's on-disk format: an append-only file per shard of length-prefixed,
//! checksummed records, one per command the shard applied, in its order.
//!
//! This module is the format and its reader and writer; the engine journals through it when
//! built with [`EngineBuilder::journal`](crate::EngineBuilder::journal).
//!
//! # Format, version 1
//!
//! All integers little-endian.
//!
//! ```text
//! header (16 bytes):  magic "FLASHJNL" | version u32 = 1 | shard u16 | reserved u16 = 0
//! record:             length u32 | crc32 u32 | payload (length bytes)
//! payload:            sequence u64 | kind u8 | body
//! ```
//!
//! `crc32` is CRC-32 (IEEE, as zlib) of the payload. `sequence` is the shard's sequence
//! number of the command: the first record has the sequence the journal starts at, and
//! each next record the one after. Bodies by `kind`:
//!
//! | kind | command | body |
//! |---|---|---|
//! | 1 | `Buy` | user u64, client_key u64, sku u32, quantity u32, arrival_ns u64 |
//! | 2 | `BuyOrWait` | as `Buy` |
//! | 3 | `Pay` | order u64, at_ns u64 |
//! | 4 | `Cancel` | order u64, at_ns u64 |
//! | 5 | `Tick` | now_ns u64 |
//! | 6 | `Restock` | sku u32, units u32, at_ns u64 |
//! | 7 | `Reduce` | sku u32, units u32, at_ns u64 |
//! | 8 | `SetWindow` | sku u32, opens_at_ns u64, closes_at_ns u64, at_ns u64 |
//! | 9 | `CloseSale` | sku u32, at_ns u64 |
//!
//! # Reading: torn tails and corruption
//!
//! A crash mid-append leaves a *torn* last record: cut short, or written in full length
//! with bytes that do not match its checksum (a file extended before its data reached the
//! disk reads as zeros). [`scan`] reports the valid prefix and [`Tail::Torn`]; the writer
//! truncates the file there before appending. A record that fails its checksum or does not
//! decode *with more data after it*, or a sequence that skips or repeats, is corruption:
//! [`JournalError::Corrupt`] names the offset, and nothing after it is read.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::catalog::SaleWindow;
use crate::core::Command;
use crate::types::{Intent, OrderId, ShardId, SkuId, UserId};

/// The file's first 8 bytes.
pub const MAGIC: [u8; 8] = *b"FLASHJNL";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 16;
/// Record framing (length and checksum) in bytes.
const FRAME_LEN: usize = 8;
/// The largest payload: a `Buy` (8 + 1 + 8 + 8 + 4 + 4 + 8 bytes).
const PAYLOAD_MAX: usize = 41;

/// Why a journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file does not start with a version-1 journal header.
    #[error("{path}: not a flashsale journal (bad header)")]
    BadHeader {
        /// The file.
        path: PathBuf,
    },
    /// The journal is for another shard than the one asked for.
    #[error("{path}: journal of shard {found}, expected shard {expected}")]
    WrongShard {
        /// The file.
        path: PathBuf,
        /// The shard in its header.
        found: u16,
        /// The shard asked for.
        expected: u16,
    },
    /// A record before the tail is damaged, or the sequence skips or repeats; nothing from
    /// `offset` on was read.
    #[error("{path}: corrupt record at byte {offset}: {what}")]
    Corrupt {
        /// The file (empty when scanning bytes in memory).
        path: PathBuf,
        /// Byte offset of the record.
        offset: u64,
        /// What is wrong.
        what: &'static str,
    },
}

/// How a journal ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// The last record is whole.
    Clean,
    /// The last record was torn by a crash mid-append; the valid data ends at
    /// `valid_len` and the `torn_bytes` after it are to be discarded.
    Torn {
        /// Length of the valid prefix, bytes.
        valid_len: u64,
        /// Bytes after it.
        torn_bytes: u64,
    },
}

/// A journal read back: its header's shard, its records, and how it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    /// The shard the journal belongs to.
    pub shard: ShardId,
    /// Every valid record: `(sequence, command)`, in order.
    pub records: Vec<(u64, Command)>,
    /// Whether the last record was torn.
    pub tail: Tail,
}

/// Encodes a command's record (framing included) onto `out`.
pub fn encode(sequence: u64, command: &Command, out: &mut Vec<u8>) {
    let mut payload = [0u8; PAYLOAD_MAX];
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        payload[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    put(&sequence.to_le_bytes());
    let buy = |put: &mut dyn FnMut(&[u8]), intent: &Intent, arrival_ns: u64| {
        put(&intent.user.0.to_le_bytes());
        put(&intent.client_key.to_le_bytes());
        put(&intent.sku.0.to_le_bytes());
        put(&intent.quantity.to_le_bytes());
        put(&arrival_ns.to_le_bytes());
    };
    match *command {
        Command::Buy { intent, arrival_ns } => {
            put(&[1]);
            buy(&mut put, &intent, arrival_ns);
        }
        Command::BuyOrWait { intent, arrival_ns } => {
            put(&[2]);
            buy(&mut put, &intent, arrival_ns);
        }
        Command::Pay { order, at_ns } => {
            put(&[3]);
            put(&order.0.to_le_bytes());
            put(&at_ns.to_le_bytes());
        }
        Command::Cancel { order, at_ns } => {
            put(&[4]);
            put(&order.0.to_le_bytes());
            put(&at_ns.to_le_bytes());
        }
        Command::Tick { now_ns } => {
            put(&[5]);
            put(&now_ns.to_le_bytes());
        }
        Command::Restock { sku, units, at_ns } => {
            put(&[6]);
            put(&sku.0.to_le_bytes());
            put(&units.to_le_bytes());
            put(&at_ns.to_le_bytes());
        }
        Command::Reduce { sku, units, at_ns } => {
            put(&[7]);
            put(&sku.0.to_le_bytes());
            put(&units.to_le_bytes());
            put(&at_ns.to_le_bytes());
        }
        Command::SetWindow { sku, window, at_ns } => {
            put(&[8]);
            put(&sku.0.to_le_bytes());
            put(&window.opens_at_ns.to_le_bytes());
            put(&window.closes_at_ns.to_le_bytes());
            put(&at_ns.to_le_bytes());
        }
        Command::CloseSale { sku, at_ns } => {
            put(&[9]);
            put(&sku.0.to_le_bytes());
            put(&at_ns.to_le_bytes());
        }
    }
    let payload = &payload[..at];
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Reads little-endian fields off a payload.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.0.split_first_chunk::<8>()?;
        self.0 = rest;
        Some(u64::from_le_bytes(*head))
    }

    fn u32(&mut self) -> Option<u32> {
        let (head, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_le_bytes(*head))
    }

    fn u8(&mut self) -> Option<u8> {
        let (&head, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(head)
    }
}

/// Decodes one payload; `None` if it is not a valid one.
fn decode(payload: &[u8]) -> Option<(u64, Command)> {
    let mut fields = Fields(payload);
    let sequence = fields.u64()?;
    let kind = fields.u8()?;
    let intent = |fields: &mut Fields<'_>| -> Option<(Intent, u64)> {
        let user = fields.u64()?;
        let client_key = fields.u64()?;
        let sku = fields.u32()?;
        let quantity = fields.u32()?;
        let arrival_ns = fields.u64()?;
        Some((
            Intent {
                user: UserId(user),
                client_key,
                sku: SkuId(sku),
                quantity,
            },
            arrival_ns,
        ))
    };
    let command = match kind {
        1 => {
            let (intent, arrival_ns) = intent(&mut fields)?;
            Command::Buy { intent, arrival_ns }
        }
        2 => {
            let (intent, arrival_ns) = intent(&mut fields)?;
            Command::BuyOrWait { intent, arrival_ns }
        }
        3 => Command::Pay {
            order: OrderId(fields.u64()?),
            at_ns: fields.u64()?,
        },
        4 => Command::Cancel {
            order: OrderId(fields.u64()?),
            at_ns: fields.u64()?,
        },
        5 => Command::Tick {
            now_ns: fields.u64()?,
        },
        6 => Command::Restock {
            sku: SkuId(fields.u32()?),
            units: fields.u32()?,
            at_ns: fields.u64()?,
        },
        7 => Command::Reduce {
            sku: SkuId(fields.u32()?),
            units: fields.u32()?,
            at_ns: fields.u64()?,
        },
        8 => Command::SetWindow {
            sku: SkuId(fields.u32()?),
            window: SaleWindow {
                opens_at_ns: fields.u64()?,
                closes_at_ns: fields.u64()?,
            },
            at_ns: fields.u64()?,
        },
        9 => Command::CloseSale {
            sku: SkuId(fields.u32()?),
            at_ns: fields.u64()?,
        },
        _ => return None,
    };
    // Trailing bytes make it invalid: one payload, one encoding.
    fields.0.is_empty().then_some((sequence, command))
}

/// The header of a journal for `shard`.
pub fn header(shard: ShardId) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&VERSION.to_le_bytes());
    header[12..14].copy_from_slice(&shard.0.to_le_bytes());
    header
}

/// Reads a whole journal held in memory (`path` only names it in errors).
///
/// # Errors
/// [`JournalError::BadHeader`] or [`JournalError::Corrupt`]; a torn last record is not an
/// error (see [`Tail`]).
pub fn scan(bytes: &[u8], path: &Path) -> Result<Scanned, JournalError> {
    let header = bytes
        .get(..HEADER_LEN)
        .filter(|header| {
            header[..8] == MAGIC
                && header[8..12] == VERSION.to_le_bytes()
                && header[14..16] == [0, 0]
        })
        .ok_or_else(|| JournalError::BadHeader {
            path: path.to_path_buf(),
        })?;
    let shard = ShardId(u16::from_le_bytes([header[12], header[13]]));
    let corrupt = |offset: usize, what| JournalError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        what,
    };
    let mut records: Vec<(u64, Command)> = Vec::new();
    let mut at = HEADER_LEN;
    let torn = |at: usize| Tail::Torn {
        valid_len: at as u64,
        torn_bytes: (bytes.len() - at) as u64,
    };
    while at < bytes.len() {
        let Some(frame) = bytes.get(at..at + FRAME_LEN) else {
            return Ok(Scanned {
                shard,
                records,
                tail: torn(at),
            });
        };
        let length = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        let checksum = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let end = at + FRAME_LEN + length;
        let Some(payload) = bytes.get(at + FRAME_LEN..end) else {
            // Cut short by the end of the file: torn, whatever the length says.
            return Ok(Scanned {
                shard,
                records,
                tail: torn(at),
            });
        };
        let decoded = (crc32fast::hash(payload) == checksum)
            .then(|| decode(payload))
            .flatten();
        let Some((sequence, command)) = decoded else {
            if end == bytes.len() {
                // The last record, whole in length but not in content.
                return Ok(Scanned {
                    shard,
                    records,
                    tail: torn(at),
                });
            }
            return Err(corrupt(at, "checksum or encoding does not match"));
        };
        if let Some(&(previous, _)) = records.last()
            && previous.checked_add(1) != Some(sequence)
        {
            return Err(corrupt(at, "sequence number skips or repeats"));
        }
        records.push((sequence, command));
        at = end;
    }
    Ok(Scanned {
        shard,
        records,
        tail: Tail::Clean,
    })
}

/// Reads a journal file.
///
/// # Errors
/// As [`scan`], plus [`JournalError::Io`].
pub fn read(path: &Path) -> Result<Scanned, JournalError> {
    let io = |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut file| file.read_to_end(&mut bytes))
        .map_err(io)?;
    scan(&bytes, path)
}

/// Appends records to a shard's journal file, one `write` and (when asked) one data sync
/// per [`commit`](Self::commit): the unit of group commit.
#[derive(Debug)]
pub struct JournalWriter {
    file: File,
    path: PathBuf,
    buffer: Vec<u8>,
    next_sequence: u64,
}

impl JournalWriter {
    /// Opens `path` for appending, creating it with a header for `shard` if it does not
    /// exist. An existing journal is read first: a torn tail is truncated away, and
    /// appends continue after its last sequence number.
    ///
    /// # Errors
    /// [`JournalError`]: unreadable, corrupt, or another shard's journal.
    pub fn open(path: &Path, shard: ShardId) -> Result<(Self, Scanned), JournalError> {
        let io = |source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        if bytes.is_empty() {
            file.write_all(&header(shard)).map_err(io)?;
            file.sync_all().map_err(io)?;
            bytes.extend_from_slice(&header(shard));
        }
        let scanned = scan(&bytes, path)?;
        if scanned.shard != shard {
            return Err(JournalError::WrongShard {
                path: path.to_path_buf(),
                found: scanned.shard.0,
                expected: shard.0,
            });
        }
        let end = match scanned.tail {
            Tail::Clean => bytes.len() as u64,
            Tail::Torn { valid_len, .. } => {
                file.set_len(valid_len).map_err(io)?;
                file.sync_all().map_err(io)?;
                valid_len
            }
        };
        file.seek(SeekFrom::Start(end)).map_err(io)?;
        let next_sequence = scanned.records.last().map_or(0, |&(last, _)| last + 1);
        Ok((
            Self {
                file,
                path: path.to_path_buf(),
                buffer: Vec::with_capacity(64 << 10),
                next_sequence,
            },
            scanned,
        ))
    }

    /// The sequence number the next appended command must carry.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Buffers a command's record. Commands must come in sequence order: the first with
    /// [`next_sequence`](Self::next_sequence), then one more each time.
    ///
    /// # Panics
    /// If `sequence` is not the next one (a bug in the caller, which would make the
    /// journal unreadable).
    pub fn append(&mut self, sequence: u64, command: &Command) {
        assert_eq!(
            sequence, self.next_sequence,
            "journal records must come in sequence order"
        );
        encode(sequence, command, &mut self.buffer);
        self.next_sequence += 1;
    }

    /// Bytes buffered since the last commit.
    pub fn pending_bytes(&self) -> usize {
        self.buffer.len()
    }

    /// Writes the buffered records and, if `sync`, waits until the disk holds them
    /// (`fdatasync`). Returns whether anything was written.
    ///
    /// # Errors
    /// [`JournalError::Io`]; the buffered records are kept, to retry.
    pub fn commit(&mut self, sync: bool) -> Result<bool, JournalError> {
        if self.buffer.is_empty() {
            return Ok(false);
        }
        let io = |source| JournalError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(&self.buffer).map_err(io)?;
        self.buffer.clear();
        if sync {
            self.file.sync_data().map_err(io)?;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<Command> {
        let intent = Intent {
            user: UserId(u64::MAX - 3),
            client_key: 77,
            sku: SkuId(9),
            quantity: 2,
        };
        vec![
            Command::Buy {
                intent,
                arrival_ns: 1,
            },
            Command::BuyOrWait {
                intent,
                arrival_ns: 2,
            },
            Command::Pay {
                order: OrderId::new(ShardId(3), 5),
                at_ns: 3,
            },
            Command::Cancel {
                order: OrderId(u64::MAX),
                at_ns: 4,
            },
            Command::Tick { now_ns: 5 },
            Command::Restock {
                sku: SkuId(1),
                units: 10,
                at_ns: 6,
            },
            Command::Reduce {
                sku: SkuId(2),
                units: 3,
                at_ns: 7,
            },
            Command::SetWindow {
                sku: SkuId(4),
                window: SaleWindow {
                    opens_at_ns: 8,
                    closes_at_ns: 9,
                },
                at_ns: 10,
            },
            Command::CloseSale {
                sku: SkuId(5),
                at_ns: 11,
            },
        ]
    }

    fn journal(commands: &[Command], first: u64) -> Vec<u8> {
        let mut bytes = header(ShardId(3)).to_vec();
        for (offset, command) in commands.iter().enumerate() {
            encode(first + offset as u64, command, &mut bytes);
        }
        bytes
    }

    #[test]
    fn every_command_round_trips() {
        let commands = every_kind();
        let bytes = journal(&commands, 40);
        let scanned = scan(&bytes, Path::new("")).unwrap();
        assert_eq!(scanned.shard, ShardId(3));
        assert_eq!(scanned.tail, Tail::Clean);
        let expected: Vec<(u64, Command)> = (40..).zip(commands).collect();
        assert_eq!(scanned.records, expected);
    }

    #[test]
    fn a_cut_anywhere_in_the_last_record_is_a_torn_tail() {
        let commands = every_kind();
        let whole = journal(&commands, 0);
        let before_last = journal(&commands[..commands.len() - 1], 0).len();
        for cut in before_last + 1..whole.len() {
            let scanned = scan(&whole[..cut], Path::new("")).unwrap();
            assert_eq!(scanned.records.len(), commands.len() - 1, "cut at {cut}");
            assert_eq!(
                scanned.tail,
                Tail::Torn {
                    valid_len: before_last as u64,
                    torn_bytes: (cut - before_last) as u64
                }
            );
        }
        // A last record of the right length but zeros (extended, never written): torn.
        let mut zeroed = whole.clone();
        zeroed[before_last + FRAME_LEN..].fill(0);
        let scanned = scan(&zeroed, Path::new("")).unwrap();
        assert!(matches!(scanned.tail, Tail::Torn { .. }));
    }

    #[test]
    fn damage_before_the_tail_is_an_error_naming_the_offset() {
        let commands = every_kind();
        let bytes = journal(&commands, 0);
        let second = journal(&commands[..1], 0).len();
        for position in second..second + FRAME_LEN + 9 {
            let mut damaged = bytes.clone();
            damaged[position] ^= 0x40;
            match scan(&damaged, Path::new("j")) {
                Err(JournalError::Corrupt { offset, .. }) => {
                    assert_eq!(offset, second as u64, "flip at {position}");
                }
                // A flipped length can make the record run to (or past) the end: torn.
                Ok(scanned) => {
                    assert_eq!(scanned.records.len(), 1, "flip at {position}");
                    assert!(matches!(scanned.tail, Tail::Torn { .. }));
                }
                Err(other) => panic!("{other}"),
            }
        }
        // A sequence that skips is corruption too.
        let mut skipping = journal(&commands[..1], 0);
        encode(5, &commands[1], &mut skipping);
        encode(6, &commands[2], &mut skipping);
        assert!(matches!(
            scan(&skipping, Path::new("j")),
            Err(JournalError::Corrupt { .. })
        ));
        assert!(matches!(
            scan(b"NOTAJOURNAL-----", Path::new("j")),
            Err(JournalError::BadHeader { .. })
        ));
    }

    #[test]
    #[cfg_attr(miri, ignore = "file syncs; the format itself is covered above")]
    fn the_writer_truncates_a_torn_tail_and_appends_after_it() {
        let dir = std::env::temp_dir().join(format!("flashsale-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("shard-00003.fsj");
        let _ = std::fs::remove_file(&path);
        let commands = every_kind();
        let (mut writer, scanned) = JournalWriter::open(&path, ShardId(3)).unwrap();
        assert!(scanned.records.is_empty());
        for (sequence, command) in commands.iter().enumerate() {
            writer.append(sequence as u64, command);
        }
        assert!(writer.commit(true).unwrap());
        drop(writer);
        // A crash mid-append: half a record at the end.
        let mut half = Vec::new();
        encode(commands.len() as u64, &commands[0], &mut half);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&half[..half.len() / 2]).unwrap();
        drop(file);
        let (mut writer, scanned) = JournalWriter::open(&path, ShardId(3)).unwrap();
        assert_eq!(scanned.records.len(), commands.len());
        assert!(matches!(scanned.tail, Tail::Torn { .. }));
        assert_eq!(writer.next_sequence(), commands.len() as u64);
        writer.append(commands.len() as u64, &commands[4]);
        writer.commit(true).unwrap();
        let reread = read(&path).unwrap();
        assert_eq!(reread.tail, Tail::Clean);
        assert_eq!(reread.records.len(), commands.len() + 1);
        assert!(matches!(
            JournalWriter::open(&path, ShardId(4)),
            Err(JournalError::WrongShard { found: 3, .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
