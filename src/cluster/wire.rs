//! The messages on a partition's log: a gateway's batch of buys, one operator command, or
//! a tick. Each is one log entry; its position in the log is its order and the log's stamp
//! is its instant, so no message carries a time of its own.
//!
//! ```text
//! message  := magic "FSC2" | kind u8 | sender u64 | body | crc32 (of everything before it)
//! buys     := kind 1, count u16 (1..=BATCH_MAX), count × buy
//! buy      := request step (zigzag varint) | wait u8 (0 or 1) | user varint | key varint |
//!             sku varint (u32) | quantity varint (u32)
//! control  := kind 2, request u64 | op u8 | op's fields
//!             op 1 pay order u64 · 2 cancel order u64 · 3 restock sku u32 units u32 ·
//!             4 reduce sku u32 units u32 · 5 window sku u32 opens u64 closes u64 · 6 close sku u32
//! tick     := kind 3 (no body)
//!
//! replies  := magic "FSR2" | partition u16 | position u64 | count u32 | count × reply | crc32
//! reply    := request step (zigzag varint) | tag u8 | code u8 | x varint | y varint |
//!             sequence + 1 varint (0: none) | w varint (u32) | v varint (u32)
//! ```
//!
//! A partition's leader publishes `replies` to a gateway for each entry, outside the log;
//! `tag` says which answer it is, `code` which reason or error, and `x`, `y`, `w`, `v`
//! carry its numbers (an order's id, buyer, quantity and SKU).
//!
//! Fixed-width integers are little-endian. A varint is LEB128: seven bits a byte, low bits
//! first, at most ten bytes. A buy's request is written as its step from the previous
//! buy's (from 0 for the first), zigzagged so that a step back stays short. A gateway
//! numbers its requests in order, so a step is usually one byte and a buy about a quarter of
//! its fixed-width size: fewer bytes for the log to replicate, store and deliver.
//!
//! The checksum is the log's second line of defence: a
//! message damaged in a way the log did not notice is refused whole, never half applied.

use super::Answer;
use crate::catalog::SaleWindow;
use crate::core::{Applied, Command};
use crate::types::{ControlError, Intent, Order, OrderId, Outcome, RejectReason, SkuId, UserId};
use crate::varint;

/// The first four bytes of every message.
pub const MAGIC: [u8; 4] = *b"FSC2";
/// The most buys one message carries.
pub const BATCH_MAX: usize = 4096;
/// The most bytes one buy takes in a batch (every varint at its longest).
pub const BUY_MAX_LEN: usize = 10 + 1 + 10 + 10 + 5 + 5;
/// Bytes of a message before its body (magic, kind, sender).
const HEAD_LEN: usize = 13;
const CRC_LEN: usize = 4;

const KIND_BUYS: u8 = 1;
const KIND_CONTROL: u8 = 2;
const KIND_TICK: u8 = 3;

/// Why a message was refused; nothing of it is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than its kind needs, or longer.
    #[error("a message of {0} bytes does not fit its kind")]
    Length(usize),
    /// Does not start with the magic.
    #[error("not a flashsale log message (bad magic)")]
    Magic,
    /// The checksum does not match: damaged after it was written.
    #[error("checksum mismatch")]
    Checksum,
    /// A kind this version does not know.
    #[error("unknown message kind {0}")]
    Kind(u8),
    /// A batch of no buys, or of more than [`BATCH_MAX`].
    #[error("a batch of {0} buys (1 to 4096 allowed)")]
    Count(usize),
    /// A wait flag other than 0 or 1.
    #[error("wait flag {0} (0 or 1 allowed)")]
    Flag(u8),
    /// An operator command this version does not know.
    #[error("unknown operator command {0}")]
    Op(u8),
    /// A varint (in a batch of buys or of replies) that is cut off, longer than ten
    /// bytes, or too large for its field.
    #[error("a malformed number: cut off, longer than ten bytes, or too large for its field")]
    Number,
}

/// One buy in a gateway's batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Buy {
    /// The gateway's number for the request, echoed in its reply.
    pub request: u64,
    /// The intent.
    pub intent: Intent,
    /// Whether it waits for units rather than be rejected as sold out
    /// ([`Command::BuyOrWait`]).
    pub wait: bool,
}

/// An operator command (its instant is the log's stamp).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Control {
    /// [`Command::Pay`].
    Pay(OrderId),
    /// [`Command::Cancel`].
    Cancel(OrderId),
    /// [`Command::Restock`].
    Restock {
        /// The SKU.
        sku: SkuId,
        /// Units added.
        units: u32,
    },
    /// [`Command::Reduce`].
    Reduce {
        /// The SKU.
        sku: SkuId,
        /// Units removed.
        units: u32,
    },
    /// [`Command::SetWindow`].
    SetWindow {
        /// The SKU.
        sku: SkuId,
        /// The new window.
        window: SaleWindow,
    },
    /// [`Command::CloseSale`].
    Close(SkuId),
}

impl Control {
    /// The command it is at instant `at_ns`.
    pub fn at(self, at_ns: u64) -> Command {
        match self {
            Self::Pay(order) => Command::Pay { order, at_ns },
            Self::Cancel(order) => Command::Cancel { order, at_ns },
            Self::Restock { sku, units } => Command::Restock { sku, units, at_ns },
            Self::Reduce { sku, units } => Command::Reduce { sku, units, at_ns },
            Self::SetWindow { sku, window } => Command::SetWindow { sku, window, at_ns },
            Self::Close(sku) => Command::CloseSale { sku, at_ns },
        }
    }
}

/// A decoded message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// Who wrote it: the gateway its replies go to (for a tick, the node that published
    /// it).
    pub sender: u64,
    /// What it says.
    pub body: Body<'a>,
}

/// What a message says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body<'a> {
    /// Buys, in the order the gateway received them.
    Buys(Buys<'a>),
    /// One operator command.
    Control {
        /// The gateway's number for the request.
        request: u64,
        /// The command.
        control: Control,
    },
    /// Time passed: whatever fell due by the message's instant runs.
    Tick,
}

/// The buys of a batch, checked whole when the message was decoded and read one at a
/// time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buys<'a> {
    records: &'a [u8],
    count: usize,
}

impl<'a> Buys<'a> {
    /// How many.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are none (never, for a decoded batch).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The buys, in order.
    pub fn iter(&self) -> BuysIter<'a> {
        BuysIter {
            rest: self.records,
            previous: 0,
            left: self.count,
        }
    }
}

/// The buys of a [`Buys`], in order.
#[derive(Debug, Clone)]
pub struct BuysIter<'a> {
    rest: &'a [u8],
    previous: u64,
    left: usize,
}

impl Iterator for BuysIter<'_> {
    type Item = Buy;

    fn next(&mut self) -> Option<Buy> {
        if self.left == 0 {
            return None;
        }
        // Checked when the message was decoded: every record reads.
        let buy = read_buy(&mut self.rest, self.previous).ok()?;
        self.previous = buy.request;
        self.left -= 1;
        Some(buy)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for BuysIter<'_> {}

/// Reads a LEB128 varint off the front of `bytes`.
fn read_varint(bytes: &mut &[u8]) -> Result<u64, WireError> {
    varint::read(bytes).ok_or(WireError::Number)
}

fn read_u32(bytes: &mut &[u8]) -> Result<u32, WireError> {
    u32::try_from(read_varint(bytes)?).map_err(|_| WireError::Number)
}

/// Reads a request written by [`varint::write_step`] after `previous`.
fn read_step(bytes: &mut &[u8], previous: u64) -> Result<u64, WireError> {
    varint::read_step(bytes, previous).ok_or(WireError::Number)
}

/// Reads one buy whose request steps from `previous`.
fn read_buy(bytes: &mut &[u8], previous: u64) -> Result<Buy, WireError> {
    let request = read_step(bytes, previous)?;
    let (&wait, rest) = bytes.split_first().ok_or(WireError::Number)?;
    *bytes = rest;
    if wait > 1 {
        return Err(WireError::Flag(wait));
    }
    Ok(Buy {
        request,
        intent: Intent {
            user: UserId(read_varint(bytes)?),
            client_key: read_varint(bytes)?,
            sku: SkuId(read_u32(bytes)?),
            quantity: read_u32(bytes)?,
        },
        wait: wait == 1,
    })
}

/// Reads fields off a slice whose length was checked first.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .expect("lengths are checked before fields are read");
        self.0 = rest;
        *head
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
}

/// Decodes and checks a message. Every way a message can be wrong is a [`WireError`];
/// none panics.
pub fn decode(bytes: &[u8]) -> Result<Message<'_>, WireError> {
    if bytes.len() < HEAD_LEN + CRC_LEN {
        return Err(WireError::Length(bytes.len()));
    }
    if bytes[..4] != MAGIC {
        return Err(WireError::Magic);
    }
    let (covered, crc) = bytes.split_at(bytes.len() - CRC_LEN);
    if crc32fast::hash(covered).to_le_bytes() != crc {
        return Err(WireError::Checksum);
    }
    let mut head = Fields(&covered[4..HEAD_LEN]);
    let kind = head.u8();
    let sender = head.u64();
    let body = &covered[HEAD_LEN..];
    let length = || WireError::Length(bytes.len());
    let body = match kind {
        KIND_BUYS => {
            let (count, records) = body.split_first_chunk::<2>().ok_or_else(length)?;
            let count = usize::from(u16::from_le_bytes(*count));
            if count == 0 || count > BATCH_MAX {
                return Err(WireError::Count(count));
            }
            let mut rest = records;
            let mut previous = 0;
            for _ in 0..count {
                previous = read_buy(&mut rest, previous)?.request;
            }
            if !rest.is_empty() {
                return Err(length());
            }
            Body::Buys(Buys { records, count })
        }
        KIND_CONTROL => {
            let (fixed, rest) = body.split_first_chunk::<9>().ok_or_else(length)?;
            let mut fields = Fields(fixed);
            let request = fields.u64();
            let op = fields.u8();
            let need = match op {
                1..=4 => 8,
                5 => 20,
                6 => 4,
                other => return Err(WireError::Op(other)),
            };
            if rest.len() != need {
                return Err(length());
            }
            let mut fields = Fields(rest);
            let control = match op {
                1 => Control::Pay(OrderId(fields.u64())),
                2 => Control::Cancel(OrderId(fields.u64())),
                3 => Control::Restock {
                    sku: SkuId(fields.u32()),
                    units: fields.u32(),
                },
                4 => Control::Reduce {
                    sku: SkuId(fields.u32()),
                    units: fields.u32(),
                },
                5 => Control::SetWindow {
                    sku: SkuId(fields.u32()),
                    window: SaleWindow {
                        opens_at_ns: fields.u64(),
                        closes_at_ns: fields.u64(),
                    },
                },
                _ => Control::Close(SkuId(fields.u32())),
            };
            Body::Control { request, control }
        }
        KIND_TICK if body.is_empty() => Body::Tick,
        KIND_TICK => return Err(length()),
        other => return Err(WireError::Kind(other)),
    };
    Ok(Message { sender, body })
}

/// Starts a message of `kind` from `sender` in `out` (cleared first).
fn begin(out: &mut Vec<u8>, kind: u8, sender: u64) {
    out.clear();
    out.extend_from_slice(&MAGIC);
    out.push(kind);
    out.extend_from_slice(&sender.to_le_bytes());
}

/// Appends the checksum.
fn seal(out: &mut Vec<u8>) {
    let crc = crc32fast::hash(out);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Builds a batch of buys in place, one buy at a time, for a gateway that gathers them as
/// they arrive.
#[derive(Debug, Clone)]
pub struct BatchWriter {
    bytes: Vec<u8>,
    count: usize,
    /// The last buy's request, which the next one's steps from.
    previous: u64,
}

impl BatchWriter {
    /// An empty batch from gateway `sender`.
    pub fn new(sender: u64) -> Self {
        let mut bytes = Vec::with_capacity(HEAD_LEN + 2 + 64 * BUY_MAX_LEN + CRC_LEN);
        begin(&mut bytes, KIND_BUYS, sender);
        bytes.extend_from_slice(&[0, 0]);
        Self {
            bytes,
            count: 0,
            previous: 0,
        }
    }

    /// Buys so far.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no buy was added yet.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether the batch holds [`BATCH_MAX`] buys.
    pub fn is_full(&self) -> bool {
        self.count == BATCH_MAX
    }

    /// Adds a buy.
    ///
    /// # Panics
    /// If the batch is full (check [`is_full`](Self::is_full)).
    pub fn push(&mut self, buy: &Buy) {
        assert!(!self.is_full(), "a batch holds at most {BATCH_MAX} buys");
        let intent = &buy.intent;
        varint::write_step(&mut self.bytes, self.previous, buy.request);
        self.previous = buy.request;
        self.bytes.push(u8::from(buy.wait));
        varint::write(&mut self.bytes, intent.user.0);
        varint::write(&mut self.bytes, intent.client_key);
        varint::write(&mut self.bytes, u64::from(intent.sku.0));
        varint::write(&mut self.bytes, u64::from(intent.quantity));
        self.count += 1;
    }

    /// The message's bytes; the writer is left empty, for the next batch.
    ///
    /// # Panics
    /// If no buy was added (an empty batch is not a message).
    pub fn finish(&mut self) -> Vec<u8> {
        assert!(self.count > 0, "an empty batch is not a message");
        let count = (self.count as u16).to_le_bytes();
        self.bytes[HEAD_LEN..HEAD_LEN + 2].copy_from_slice(&count);
        let sender = u64::from_le_bytes(self.bytes[5..HEAD_LEN].try_into().expect("8 bytes"));
        seal(&mut self.bytes);
        let mut next = Self::new(sender);
        // The next batch is likely as large: one allocation rather than a doubling series.
        next.bytes.reserve(self.bytes.len());
        std::mem::swap(self, &mut next);
        next.bytes
    }
}

/// An operator command's message.
pub fn encode_control(sender: u64, request: u64, control: &Control) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEAD_LEN + 9 + 20 + CRC_LEN);
    begin(&mut out, KIND_CONTROL, sender);
    out.extend_from_slice(&request.to_le_bytes());
    match *control {
        Control::Pay(order) => {
            out.push(1);
            out.extend_from_slice(&order.0.to_le_bytes());
        }
        Control::Cancel(order) => {
            out.push(2);
            out.extend_from_slice(&order.0.to_le_bytes());
        }
        Control::Restock { sku, units } => {
            out.push(3);
            out.extend_from_slice(&sku.0.to_le_bytes());
            out.extend_from_slice(&units.to_le_bytes());
        }
        Control::Reduce { sku, units } => {
            out.push(4);
            out.extend_from_slice(&sku.0.to_le_bytes());
            out.extend_from_slice(&units.to_le_bytes());
        }
        Control::SetWindow { sku, window } => {
            out.push(5);
            out.extend_from_slice(&sku.0.to_le_bytes());
            out.extend_from_slice(&window.opens_at_ns.to_le_bytes());
            out.extend_from_slice(&window.closes_at_ns.to_le_bytes());
        }
        Control::Close(sku) => {
            out.push(6);
            out.extend_from_slice(&sku.0.to_le_bytes());
        }
    }
    seal(&mut out);
    out
}

/// A tick's message.
pub fn encode_tick(sender: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEAD_LEN + CRC_LEN);
    begin(&mut out, KIND_TICK, sender);
    seal(&mut out);
    out
}

/// The first four bytes of a batch of replies.
pub const REPLIES_MAGIC: [u8; 4] = *b"FSR2";
/// Bytes of a batch of replies before its records (magic, partition, position, count).
const REPLIES_HEAD_LEN: usize = 18;

/// Replies to one gateway from one log entry: what a partition's leader publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replies {
    /// The partition.
    pub partition: u16,
    /// The log position of the entry that produced them.
    pub position: u64,
    /// `(request, answer)`, in the order they were decided.
    pub answers: Vec<(u64, Answer)>,
}

/// Encodes replies (to one gateway) onto `out`, cleared first.
pub fn encode_replies(
    partition: u16,
    position: u64,
    answers: impl ExactSizeIterator<Item = (u64, Answer)>,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(&REPLIES_MAGIC);
    out.extend_from_slice(&partition.to_le_bytes());
    out.extend_from_slice(&position.to_le_bytes());
    out.extend_from_slice(&(answers.len() as u32).to_le_bytes());
    // As a batch of buys: the request as a zigzag step from the previous one, the rest
    // as varints (the sequence plus one, so that "none", u64::MAX, takes one byte).
    let mut previous = 0u64;
    for (request, answer) in answers {
        let record = AnswerRecord::of(&answer);
        varint::write_step(out, previous, request);
        previous = request;
        out.push(record.tag);
        out.push(record.code);
        varint::write(out, record.x);
        varint::write(out, record.y);
        varint::write(out, record.z.wrapping_add(1));
        varint::write(out, u64::from(record.w));
        varint::write(out, u64::from(record.v));
    }
    seal(out);
}

/// Decodes a batch of replies; every way it can be wrong is a [`WireError`].
pub fn decode_replies(bytes: &[u8]) -> Result<Replies, WireError> {
    if bytes.len() < REPLIES_HEAD_LEN + CRC_LEN {
        return Err(WireError::Length(bytes.len()));
    }
    if bytes[..4] != REPLIES_MAGIC {
        return Err(WireError::Magic);
    }
    let (covered, crc) = bytes.split_at(bytes.len() - CRC_LEN);
    if crc32fast::hash(covered).to_le_bytes() != crc {
        return Err(WireError::Checksum);
    }
    let mut head = Fields(&covered[4..REPLIES_HEAD_LEN]);
    let partition = u16::from_le_bytes(head.take());
    let position = head.u64();
    let count = head.u32() as usize;
    let mut rest = &covered[REPLIES_HEAD_LEN..];
    // Each record takes at least 8 bytes: no count can claim more than the bytes hold.
    if count > rest.len() / 8 {
        return Err(WireError::Length(bytes.len()));
    }
    let mut answers = Vec::with_capacity(count);
    let mut previous = 0u64;
    for _ in 0..count {
        let request = read_step(&mut rest, previous)?;
        previous = request;
        let [tag, code] = *rest.split_first_chunk::<2>().ok_or(WireError::Number)?.0;
        rest = &rest[2..];
        let record = AnswerRecord {
            tag,
            code,
            x: read_varint(&mut rest)?,
            y: read_varint(&mut rest)?,
            z: read_varint(&mut rest)?.wrapping_sub(1),
            w: read_u32(&mut rest)?,
            v: read_u32(&mut rest)?,
        };
        answers.push((request, record.answer()?));
    }
    if !rest.is_empty() {
        return Err(WireError::Length(bytes.len()));
    }
    Ok(Replies {
        partition,
        position,
        answers,
    })
}

/// An answer as fixed fields: `tag` says which answer, `code` which reason or error.
struct AnswerRecord {
    tag: u8,
    code: u8,
    x: u64,
    y: u64,
    z: u64,
    w: u32,
    v: u32,
}

const NO_SEQUENCE: u64 = u64::MAX;

impl AnswerRecord {
    fn blank(tag: u8) -> Self {
        Self {
            tag,
            code: 0,
            x: 0,
            y: 0,
            z: 0,
            w: 0,
            v: 0,
        }
    }

    fn outcome(tag: u8, outcome: &Outcome) -> Self {
        match *outcome {
            Outcome::Confirmed(order) => Self {
                tag,
                code: 0,
                x: order.id.0,
                y: order.user.0,
                z: order.sequence,
                w: order.quantity,
                v: order.sku.0,
            },
            Outcome::Rejected { reason, sequence } => Self {
                tag: tag + 1,
                code: reason.index() as u8,
                x: match reason {
                    RejectReason::Duplicate(order) => order.0,
                    _ => 0,
                },
                y: 0,
                z: sequence.unwrap_or(NO_SEQUENCE),
                w: 0,
                v: 0,
            },
        }
    }

    fn of(answer: &Answer) -> Self {
        match *answer {
            Answer::Applied(Applied::Decided(outcome)) => Self::outcome(1, &outcome),
            Answer::Applied(Applied::Waiting { sequence }) => Self {
                z: sequence,
                ..Self::blank(3)
            },
            Answer::Applied(Applied::Done { sequence }) => Self {
                z: sequence,
                ..Self::blank(4)
            },
            Answer::Applied(Applied::Refused { error, sequence }) => {
                let mut record = Self {
                    z: sequence,
                    ..Self::blank(5)
                };
                record.code = match error {
                    ControlError::UnknownOrder(order) => {
                        record.x = order.0;
                        1
                    }
                    ControlError::AlreadyPaid => 2,
                    ControlError::Cancelled => 3,
                    ControlError::HoldExpired => 4,
                    ControlError::UnknownSku(sku) => {
                        record.v = sku.0;
                        5
                    }
                    ControlError::NotEnoughAvailable { available } => {
                        record.w = available;
                        6
                    }
                    ControlError::StockOverflow => 7,
                    ControlError::WindowInverted => 8,
                    ControlError::ShutDown => 9,
                    ControlError::ShardFailed => 10,
                };
                record
            }
            Answer::Screened(reason) => Self {
                code: reason.index() as u8,
                x: match reason {
                    RejectReason::Duplicate(order) => order.0,
                    _ => 0,
                },
                ..Self::blank(6)
            },
            Answer::Deferred(outcome) => Self::outcome(7, &outcome),
        }
    }

    fn reason(&self) -> Result<RejectReason, WireError> {
        match RejectReason::ALL.get(usize::from(self.code)) {
            Some(RejectReason::Duplicate(_)) => Ok(RejectReason::Duplicate(OrderId(self.x))),
            Some(reason) => Ok(*reason),
            None => Err(WireError::Op(self.code)),
        }
    }

    fn sequence(&self) -> Option<u64> {
        (self.z != NO_SEQUENCE).then_some(self.z)
    }

    fn decided(&self, confirmed: bool) -> Result<Outcome, WireError> {
        Ok(if confirmed {
            Outcome::Confirmed(Order {
                id: OrderId(self.x),
                user: UserId(self.y),
                sku: SkuId(self.v),
                quantity: self.w,
                sequence: self.z,
            })
        } else {
            Outcome::Rejected {
                reason: self.reason()?,
                sequence: self.sequence(),
            }
        })
    }

    fn answer(&self) -> Result<Answer, WireError> {
        Ok(match self.tag {
            1 | 2 => Answer::Applied(Applied::Decided(self.decided(self.tag == 1)?)),
            3 => Answer::Applied(Applied::Waiting { sequence: self.z }),
            4 => Answer::Applied(Applied::Done { sequence: self.z }),
            5 => Answer::Applied(Applied::Refused {
                error: match self.code {
                    1 => ControlError::UnknownOrder(OrderId(self.x)),
                    2 => ControlError::AlreadyPaid,
                    3 => ControlError::Cancelled,
                    4 => ControlError::HoldExpired,
                    5 => ControlError::UnknownSku(SkuId(self.v)),
                    6 => ControlError::NotEnoughAvailable { available: self.w },
                    7 => ControlError::StockOverflow,
                    8 => ControlError::WindowInverted,
                    9 => ControlError::ShutDown,
                    10 => ControlError::ShardFailed,
                    other => return Err(WireError::Op(other)),
                },
                sequence: self.z,
            }),
            6 => Answer::Screened(self.reason()?),
            7 | 8 => Answer::Deferred(self.decided(self.tag == 7)?),
            other => return Err(WireError::Kind(other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buy(request: u64, wait: bool) -> Buy {
        Buy {
            request,
            intent: Intent {
                user: UserId(request * 7),
                client_key: request ^ 0xdead_beef,
                sku: SkuId(request as u32 % 5),
                quantity: 1 + request as u32 % 3,
            },
            wait,
        }
    }

    #[test]
    fn a_batch_reads_back_as_written() {
        let mut writer = BatchWriter::new(42);
        let buys: Vec<Buy> = (0..100)
            .map(|request| buy(request, request % 3 == 0))
            .collect();
        for one in &buys {
            writer.push(one);
        }
        let bytes = writer.finish();
        assert!(writer.is_empty());
        // Steps of one, small users, SKUs and quantities, 32-bit keys: 11 bytes a buy or
        // less, a third of the fixed-width 33.
        assert!(
            bytes.len() <= HEAD_LEN + 2 + 100 * 11 + CRC_LEN,
            "{}",
            bytes.len()
        );
        let message = decode(&bytes).unwrap();
        assert_eq!(message.sender, 42);
        let Body::Buys(read) = message.body else {
            panic!("not a batch: {message:?}");
        };
        assert_eq!(read.iter().collect::<Vec<_>>(), buys);
    }

    #[test]
    fn extreme_values_and_requests_out_of_order_read_back_as_written() {
        let extreme = |request: u64, wait: bool| Buy {
            request,
            intent: Intent {
                user: UserId(u64::MAX - request),
                client_key: request.rotate_left(37),
                sku: SkuId(u32::MAX),
                quantity: u32::MAX,
            },
            wait,
        };
        // Steps forward, back, by the most a u64 can wrap, and of zero.
        let requests = [u64::MAX, 0, 1, u64::MAX / 2, 5, 5, 4, u64::MAX - 1, 2];
        let buys: Vec<Buy> = requests
            .iter()
            .enumerate()
            .map(|(index, &request)| extreme(request, index % 2 == 0))
            .collect();
        let mut writer = BatchWriter::new(u64::MAX);
        for one in &buys {
            writer.push(one);
        }
        let bytes = writer.finish();
        assert!(bytes.len() <= HEAD_LEN + 2 + buys.len() * BUY_MAX_LEN + CRC_LEN);
        let Body::Buys(read) = decode(&bytes).unwrap().body else {
            panic!("not a batch");
        };
        assert_eq!(read.len(), buys.len());
        assert_eq!(read.iter().len(), buys.len());
        assert_eq!(read.iter().collect::<Vec<_>>(), buys);
    }

    #[test]
    fn controls_and_ticks_read_back_as_written() {
        let controls = [
            Control::Pay(OrderId(9)),
            Control::Cancel(OrderId(u64::MAX)),
            Control::Restock {
                sku: SkuId(3),
                units: 7,
            },
            Control::Reduce {
                sku: SkuId(4),
                units: 1,
            },
            Control::SetWindow {
                sku: SkuId(5),
                window: SaleWindow {
                    opens_at_ns: 10,
                    closes_at_ns: 20,
                },
            },
            Control::Close(SkuId(6)),
        ];
        for (request, control) in controls.iter().enumerate() {
            let bytes = encode_control(7, request as u64, control);
            assert_eq!(
                decode(&bytes).unwrap(),
                Message {
                    sender: 7,
                    body: Body::Control {
                        request: request as u64,
                        control: *control
                    }
                }
            );
        }
        assert_eq!(
            decode(&encode_tick(3)).unwrap(),
            Message {
                sender: 3,
                body: Body::Tick
            }
        );
    }

    #[test]
    #[cfg_attr(miri, ignore = "thousands of checksummed decodes: minutes under Miri")]
    fn every_answer_reads_back_as_written() {
        let order = Order {
            id: OrderId(77),
            user: UserId(5),
            sku: SkuId(3),
            quantity: 2,
            sequence: 12,
        };
        let mut answers = vec![
            Answer::Applied(Applied::Decided(Outcome::Confirmed(order))),
            Answer::Applied(Applied::Waiting { sequence: 4 }),
            Answer::Applied(Applied::Done { sequence: 5 }),
            Answer::Deferred(Outcome::Confirmed(order)),
        ];
        for reason in RejectReason::ALL {
            let reason = match reason {
                RejectReason::Duplicate(_) => RejectReason::Duplicate(OrderId(9)),
                other => other,
            };
            answers.push(Answer::Screened(reason));
            for sequence in [None, Some(3)] {
                let outcome = Outcome::Rejected { reason, sequence };
                answers.push(Answer::Applied(Applied::Decided(outcome)));
                answers.push(Answer::Deferred(outcome));
            }
        }
        for error in [
            ControlError::UnknownOrder(OrderId(8)),
            ControlError::AlreadyPaid,
            ControlError::Cancelled,
            ControlError::HoldExpired,
            ControlError::UnknownSku(SkuId(4)),
            ControlError::NotEnoughAvailable { available: 6 },
            ControlError::StockOverflow,
            ControlError::WindowInverted,
            ControlError::ShutDown,
            ControlError::ShardFailed,
        ] {
            answers.push(Answer::Applied(Applied::Refused { error, sequence: 1 }));
        }
        // Every field at its largest (a sequence of u64::MAX - 1 is the largest that is
        // not "none").
        let largest = Order {
            id: OrderId(u64::MAX),
            user: UserId(u64::MAX),
            sku: SkuId(u32::MAX),
            quantity: u32::MAX,
            sequence: u64::MAX - 1,
        };
        answers.push(Answer::Deferred(Outcome::Confirmed(largest)));
        answers.push(Answer::Applied(Applied::Refused {
            error: ControlError::NotEnoughAvailable {
                available: u32::MAX,
            },
            sequence: u64::MAX - 1,
        }));
        let mut bytes = Vec::new();
        // Requests in order, then one far back and one far ahead.
        let numbered = answers.iter().enumerate().map(|(i, answer)| {
            let request = match answers.len() - i {
                1 => u64::MAX,
                2 => 1,
                _ => i as u64,
            };
            (request, *answer)
        });
        encode_replies(3, 99, numbered.clone(), &mut bytes);
        let replies = decode_replies(&bytes).unwrap();
        assert_eq!((replies.partition, replies.position), (3, 99));
        assert_eq!(replies.answers, numbered.collect::<Vec<_>>());
        for cut in 0..bytes.len() {
            assert!(decode_replies(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for bit in (0..bytes.len() * 8).step_by(13) {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_replies(&damaged).is_err(), "bit {bit}");
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "thousands of checksummed decodes: minutes under Miri")]
    fn every_cut_and_every_flipped_bit_is_refused_by_name() {
        let mut writer = BatchWriter::new(1);
        writer.push(&buy(1, false));
        writer.push(&buy(2, true));
        let messages = [
            writer.finish(),
            encode_control(1, 2, &Control::Close(SkuId(1))),
            encode_tick(1),
        ];
        for message in &messages {
            for cut in 0..message.len() {
                assert!(decode(&message[..cut]).is_err(), "cut at {cut}");
            }
            for bit in 0..message.len() * 8 {
                let mut damaged = message.clone();
                damaged[bit / 8] ^= 1 << (bit % 8);
                assert!(decode(&damaged).is_err(), "bit {bit}");
            }
        }
    }

    #[test]
    fn well_sealed_nonsense_is_refused_by_name() {
        let sealed = |kind: u8, body: &[u8]| {
            let mut out = Vec::new();
            begin(&mut out, kind, 1);
            out.extend_from_slice(body);
            seal(&mut out);
            out
        };
        assert_eq!(decode(&sealed(9, &[])), Err(WireError::Kind(9)));
        assert_eq!(
            decode(&sealed(KIND_BUYS, &[0, 0])),
            Err(WireError::Count(0))
        );
        assert_eq!(
            decode(&sealed(KIND_BUYS, &[0x01, 0x10])),
            Err(WireError::Count(4097))
        );
        // One buy: step 0, wait flag 2, then four one-byte varints.
        assert_eq!(
            decode(&sealed(KIND_BUYS, &[1, 0, 0, 2, 0, 0, 0, 0])),
            Err(WireError::Flag(2))
        );
        // A varint of eleven bytes; one whose tenth byte carries more than the top bit; a
        // SKU past u32; a record cut short; a byte left over after the last record.
        let mut eleven = vec![1, 0];
        eleven.extend_from_slice(&[0x80; 10]);
        eleven.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        assert_eq!(decode(&sealed(KIND_BUYS, &eleven)), Err(WireError::Number));
        let mut tenth = vec![1, 0];
        tenth.extend_from_slice(&[0xff; 9]);
        tenth.extend_from_slice(&[2, 0, 0, 0, 0, 0]);
        assert_eq!(decode(&sealed(KIND_BUYS, &tenth)), Err(WireError::Number));
        assert_eq!(
            decode(&sealed(
                KIND_BUYS,
                &[1, 0, 0, 0, 0, 0, 0x80, 0x80, 0x80, 0x80, 0x10, 0]
            )),
            Err(WireError::Number)
        );
        assert_eq!(
            decode(&sealed(KIND_BUYS, &[1, 0, 0, 0, 0, 0, 0])),
            Err(WireError::Number)
        );
        assert!(matches!(
            decode(&sealed(KIND_BUYS, &[1, 0, 0, 0, 0, 0, 0, 0, 0])),
            Err(WireError::Length(_))
        ));
        let mut bad_op = vec![0; 8];
        bad_op.push(7);
        assert_eq!(
            decode(&sealed(KIND_CONTROL, &bad_op)),
            Err(WireError::Op(7))
        );
        assert!(matches!(
            decode(&sealed(KIND_TICK, &[0])),
            Err(WireError::Length(_))
        ));
        let mut wrong_magic = encode_tick(1);
        wrong_magic[0] = b'X';
        assert_eq!(decode(&wrong_magic), Err(WireError::Magic));
    }
}
