//! Reads of a partition's state, answered by the node that leads it: the messages a
//! gateway asks with ([`Query`]) and the answers ([`PartitionView`], [`OrderAnswer`],
//! [`PoolsAnswer`]).
//! Like the log's messages they carry a magic and a checksum, and every way one can be
//! wrong is a [`WireError`].
//!
//! A read is not an entry of the log: it is answered from the leader's state as of the
//! last entry it applied (the answer says which), so it sees every command whose answer
//! the leader had published, and nothing a read did is replayed.

use super::wire::WireError;
use crate::catalog::SaleWindow;
use crate::core::{LiveSale, OrderStatus, OrderView, SkuLevels};
use crate::types::{OrderId, SkuId, UserId};

/// A query's magic.
pub const QUERY_MAGIC: [u8; 4] = *b"FSQ1";
/// A partition view's magic.
pub const VIEW_MAGIC: [u8; 4] = *b"FSV1";
/// An order answer's magic.
pub const ORDER_MAGIC: [u8; 4] = *b"FSO1";
/// A pools answer's magic.
pub const POOLS_MAGIC: [u8; 4] = *b"FSP1";

const QUERY_LEN: usize = 4 + 1 + 8 + 4;
const VIEW_HEAD_LEN: usize = 4 + 2 + 8 + 8 + 4;
/// Bytes per SKU in a view.
pub const SALE_LEN: usize = 6 * 4 + 7 * 8 + 1;
/// The most SKUs a gateway asks of a partition at once ([`Query::SalesAt`]): an answer of
/// 324 KiB, well within NATS's default largest message (1 MiB; servers are sometimes set
/// lower, and large messages are the first a busy server's client falls behind on).
pub const SALES_AT_MAX: u32 = 4_096;
const ORDER_LEN: usize = 4 + 1 + 8 + 8 + 4 + 4 + 1 + 8 + 8 + 4;
const POOLS_HEAD_LEN: usize = 4 + 8 + 4;
/// Bytes per pool in a pools answer.
pub const POOL_LEN: usize = 4 + 8 + 1 + 8;

/// What a gateway asks a partition's leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// Every SKU of the partition: levels, window, closed early. A partition of more than
    /// [`SALES_AT_MAX`] SKUs answers with more than NATS's default largest message (1 MiB),
    /// which it cannot send: ask [`SalesAt`](Self::SalesAt).
    Sales,
    /// The partition's SKUs at positions `first..first + count` of its own list (the
    /// placement's local indices, which keep catalog order), as
    /// [`Sales`](Self::Sales) answers them: one SKU, or a page.
    SalesAt {
        /// The first SKU's local index.
        first: u32,
        /// How many SKUs from there (fewer at the end of the partition's list; at most
        /// [`SALES_AT_MAX`]: a leader answers a larger count with that many, so that no
        /// question, whoever asks it, gets an answer too large to send).
        count: u32,
    },
    /// One order and where it stands.
    Order(OrderId),
    /// The partition's whole confirmed-key filter ([`super::gate::KeyFilter`]), with the
    /// position it is at.
    Filter,
    /// The partition's pools (opening draws, one each first): buyers in, served or when.
    Pools,
}

/// A partition's sales as its leader had them after applying log entry `applied`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionView {
    /// The partition.
    pub partition: u16,
    /// The last log position applied.
    pub applied: u64,
    /// The partition's clock then (ns on the sale's clock).
    pub clock_ns: u64,
    /// Its SKUs, in the partition's order.
    pub sales: Vec<LiveSale>,
}

/// The answer to [`Query::Order`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderAnswer {
    /// The order, if the partition confirmed it.
    pub order: Option<OrderView>,
    /// The last log position applied when it was read.
    pub applied: u64,
}

/// A pool as its partition's leader has it (its policy is the catalog's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolView {
    /// The first SKU of the product.
    pub first_sku: SkuId,
    /// When it is (or was) served, ns on the sale's clock.
    pub serve_at_ns: u64,
    /// Whether it has been served.
    pub served: bool,
    /// Distinct buyers who got a ticket.
    pub tickets: u64,
}

/// The answer to [`Query::Pools`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolsAnswer {
    /// The last log position applied when it was read.
    pub applied: u64,
    /// The partition's pools, in its order.
    pub pools: Vec<PoolView>,
}

/// Appends the checksum of everything before it.
pub(super) fn seal(out: &mut Vec<u8>) {
    let crc = crc32fast::hash(out);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Checks length bounds, magic and checksum; returns the body between magic and checksum.
pub(super) fn open(bytes: &[u8], magic: [u8; 4], min: usize) -> Result<&[u8], WireError> {
    if bytes.len() < min {
        return Err(WireError::Length(bytes.len()));
    }
    if bytes[..4] != magic {
        return Err(WireError::Magic);
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err(WireError::Checksum);
    }
    Ok(&body[4..])
}

/// Reads little-endian fields in order; the caller checked the length.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        head.try_into().unwrap_or([0; N])
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
}

/// A query as bytes.
pub fn encode_query(query: Query) -> Vec<u8> {
    let mut out = Vec::with_capacity(QUERY_LEN);
    out.extend_from_slice(&QUERY_MAGIC);
    let (kind, value) = match query {
        Query::Sales => (1u8, 0u64),
        Query::Order(id) => (2, id.0),
        Query::Filter => (3, 0),
        Query::Pools => (4, 0),
        Query::SalesAt { first, count } => (5, u64::from(first) | u64::from(count) << 32),
    };
    out.push(kind);
    out.extend_from_slice(&value.to_le_bytes());
    seal(&mut out);
    out
}

/// A query from bytes.
///
/// # Errors
/// The [`WireError`] naming what is wrong.
pub fn decode_query(bytes: &[u8]) -> Result<Query, WireError> {
    if bytes.len() != QUERY_LEN {
        return Err(WireError::Length(bytes.len()));
    }
    let mut fields = Fields(open(bytes, QUERY_MAGIC, QUERY_LEN)?);
    let kind = fields.u8();
    let value = fields.u64();
    match kind {
        1 if value == 0 => Ok(Query::Sales),
        1 => Err(WireError::Length(bytes.len())),
        2 => Ok(Query::Order(OrderId(value))),
        3 if value == 0 => Ok(Query::Filter),
        3 => Err(WireError::Length(bytes.len())),
        4 if value == 0 => Ok(Query::Pools),
        4 => Err(WireError::Length(bytes.len())),
        5 => Ok(Query::SalesAt {
            first: value as u32,
            count: (value >> 32) as u32,
        }),
        other => Err(WireError::Kind(other)),
    }
}

/// A partition's view as bytes.
pub fn encode_view(view: &PartitionView) -> Vec<u8> {
    let mut out = Vec::with_capacity(VIEW_HEAD_LEN + view.sales.len() * SALE_LEN + 4);
    out.extend_from_slice(&VIEW_MAGIC);
    out.extend_from_slice(&view.partition.to_le_bytes());
    out.extend_from_slice(&view.applied.to_le_bytes());
    out.extend_from_slice(&view.clock_ns.to_le_bytes());
    out.extend_from_slice(&(view.sales.len() as u32).to_le_bytes());
    for sale in &view.sales {
        let levels = &sale.levels;
        for value in [
            levels.id.0,
            levels.stock,
            levels.available,
            levels.held,
            levels.sold,
            levels.waiting,
        ] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        for value in [
            levels.expired,
            levels.cancelled,
            levels.restocked,
            levels.reduced,
            levels.waitlist_filled,
            sale.window.opens_at_ns,
            sale.window.closes_at_ns,
        ] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.push(u8::from(sale.closed_early));
    }
    seal(&mut out);
    out
}

/// A partition's view from bytes.
///
/// # Errors
/// The [`WireError`] naming what is wrong ([`WireError::Count`] for a count that does not
/// match the length, [`WireError::Flag`] for a closed flag other than 0 or 1).
pub fn decode_view(bytes: &[u8]) -> Result<PartitionView, WireError> {
    let mut fields = Fields(open(bytes, VIEW_MAGIC, VIEW_HEAD_LEN + 4)?);
    let partition = fields.u16();
    let applied = fields.u64();
    let clock_ns = fields.u64();
    let count = fields.u32() as usize;
    if fields.0.len() != count.saturating_mul(SALE_LEN) {
        return Err(WireError::Count(count));
    }
    let mut sales = Vec::with_capacity(count);
    for _ in 0..count {
        let id = SkuId(fields.u32());
        let (stock, available, held, sold, waiting) = (
            fields.u32(),
            fields.u32(),
            fields.u32(),
            fields.u32(),
            fields.u32(),
        );
        let (expired, cancelled, restocked, reduced, waitlist_filled) = (
            fields.u64(),
            fields.u64(),
            fields.u64(),
            fields.u64(),
            fields.u64(),
        );
        let window = SaleWindow {
            opens_at_ns: fields.u64(),
            closes_at_ns: fields.u64(),
        };
        let closed_early = match fields.u8() {
            0 => false,
            1 => true,
            other => return Err(WireError::Flag(other)),
        };
        sales.push(LiveSale {
            levels: SkuLevels {
                id,
                stock,
                available,
                held,
                sold,
                expired,
                cancelled,
                restocked,
                reduced,
                waiting,
                waitlist_filled,
            },
            window,
            closed_early,
        });
    }
    Ok(PartitionView {
        partition,
        applied,
        clock_ns,
        sales,
    })
}

const NO_DEADLINE: u64 = u64::MAX;

/// An order answer as bytes.
pub fn encode_order(answer: &OrderAnswer) -> Vec<u8> {
    let mut out = Vec::with_capacity(ORDER_LEN);
    out.extend_from_slice(&ORDER_MAGIC);
    let (found, view) = match answer.order {
        Some(view) => (1u8, view),
        None => (
            0,
            OrderView {
                id: OrderId(0),
                user: UserId(0),
                sku: SkuId(0),
                quantity: 0,
                status: OrderStatus::Cancelled,
            },
        ),
    };
    out.push(found);
    out.extend_from_slice(&view.id.0.to_le_bytes());
    out.extend_from_slice(&view.user.0.to_le_bytes());
    out.extend_from_slice(&view.sku.0.to_le_bytes());
    out.extend_from_slice(&view.quantity.to_le_bytes());
    let (status, pay_by) = match view.status {
        OrderStatus::Held { pay_by_ns } => (0u8, pay_by_ns.unwrap_or(NO_DEADLINE)),
        OrderStatus::Paid => (1, NO_DEADLINE),
        OrderStatus::Cancelled => (2, NO_DEADLINE),
        OrderStatus::Expired => (3, NO_DEADLINE),
    };
    out.push(status);
    out.extend_from_slice(&pay_by.to_le_bytes());
    out.extend_from_slice(&answer.applied.to_le_bytes());
    seal(&mut out);
    out
}

/// An order answer from bytes.
///
/// # Errors
/// The [`WireError`] naming what is wrong.
pub fn decode_order(bytes: &[u8]) -> Result<OrderAnswer, WireError> {
    if bytes.len() != ORDER_LEN {
        return Err(WireError::Length(bytes.len()));
    }
    let mut fields = Fields(open(bytes, ORDER_MAGIC, ORDER_LEN)?);
    let found = fields.u8();
    let id = OrderId(fields.u64());
    let user = UserId(fields.u64());
    let sku = SkuId(fields.u32());
    let quantity = fields.u32();
    let status = fields.u8();
    let pay_by = fields.u64();
    let applied = fields.u64();
    let status = match status {
        0 => OrderStatus::Held {
            pay_by_ns: (pay_by != NO_DEADLINE).then_some(pay_by),
        },
        1 => OrderStatus::Paid,
        2 => OrderStatus::Cancelled,
        3 => OrderStatus::Expired,
        other => return Err(WireError::Flag(other)),
    };
    let order = match found {
        0 => None,
        1 => Some(OrderView {
            id,
            user,
            sku,
            quantity,
            status,
        }),
        other => return Err(WireError::Flag(other)),
    };
    Ok(OrderAnswer { order, applied })
}

/// A pools answer as bytes.
pub fn encode_pools(answer: &PoolsAnswer) -> Vec<u8> {
    let mut out = Vec::with_capacity(POOLS_HEAD_LEN + answer.pools.len() * POOL_LEN + 4);
    out.extend_from_slice(&POOLS_MAGIC);
    out.extend_from_slice(&answer.applied.to_le_bytes());
    out.extend_from_slice(&(answer.pools.len() as u32).to_le_bytes());
    for pool in &answer.pools {
        out.extend_from_slice(&pool.first_sku.0.to_le_bytes());
        out.extend_from_slice(&pool.serve_at_ns.to_le_bytes());
        out.push(u8::from(pool.served));
        out.extend_from_slice(&pool.tickets.to_le_bytes());
    }
    seal(&mut out);
    out
}

/// A pools answer from bytes.
///
/// # Errors
/// The [`WireError`] naming what is wrong ([`WireError::Count`] for a count that does not
/// match the length, [`WireError::Flag`] for a served flag other than 0 or 1).
pub fn decode_pools(bytes: &[u8]) -> Result<PoolsAnswer, WireError> {
    let mut fields = Fields(open(bytes, POOLS_MAGIC, POOLS_HEAD_LEN + 4)?);
    let applied = fields.u64();
    let count = fields.u32() as usize;
    if fields.0.len() != count.saturating_mul(POOL_LEN) {
        return Err(WireError::Count(count));
    }
    let mut pools = Vec::with_capacity(count);
    for _ in 0..count {
        let first_sku = SkuId(fields.u32());
        let serve_at_ns = fields.u64();
        let served = match fields.u8() {
            0 => false,
            1 => true,
            other => return Err(WireError::Flag(other)),
        };
        let tickets = fields.u64();
        pools.push(PoolView {
            first_sku,
            serve_at_ns,
            served,
            tickets,
        });
    }
    Ok(PoolsAnswer { applied, pools })
}

impl super::Replica {
    /// The partition's sales now, as a view.
    pub fn view(&self, partition: u16) -> PartitionView {
        self.view_at(partition, 0, u32::MAX)
    }

    /// The partition's SKUs at local indices `first..first + count`, as a view.
    pub fn view_at(&self, partition: u16, first: u32, count: u32) -> PartitionView {
        let core = self.core();
        PartitionView {
            partition,
            applied: self.applied(),
            clock_ns: self.clock_ns(),
            sales: core
                .levels_in(first as usize, count as usize)
                .filter_map(|levels| core.live_sale(levels.id))
                .collect(),
        }
    }

    /// Answers a query from the replica's state.
    pub fn answer(&self, partition: u16, query: Query) -> Vec<u8> {
        match query {
            Query::Sales => encode_view(&self.view(partition)),
            Query::SalesAt { first, count } => {
                encode_view(&self.view_at(partition, first, count.min(SALES_AT_MAX)))
            }
            Query::Order(id) => encode_order(&OrderAnswer {
                order: self.core().order(id),
                applied: self.applied(),
            }),
            Query::Filter => self.filter().encode(partition, self.applied()),
            Query::Pools => encode_pools(&PoolsAnswer {
                applied: self.applied(),
                pools: self
                    .core()
                    .pools()
                    .map(|pool| PoolView {
                        first_sku: pool.first_sku,
                        serve_at_ns: pool.serve_at_ns,
                        served: pool.served,
                        tickets: pool.tickets,
                    })
                    .collect(),
            }),
        }
    }
}

#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;

    fn sale(id: u32, closed_early: bool) -> LiveSale {
        LiveSale {
            levels: SkuLevels {
                id: SkuId(id),
                stock: 10,
                available: 3,
                held: 4,
                sold: 3,
                expired: 1,
                cancelled: 2,
                restocked: 5,
                reduced: 6,
                waiting: 7,
                waitlist_filled: 8,
            },
            window: SaleWindow {
                opens_at_ns: 11,
                closes_at_ns: u64::MAX,
            },
            closed_early,
        }
    }

    fn pool(sku: u32, served: bool) -> PoolView {
        PoolView {
            first_sku: SkuId(sku),
            serve_at_ns: u64::MAX - 1,
            served,
            tickets: 629_000,
        }
    }

    #[test]
    fn every_message_comes_back_as_it_went() {
        for query in [
            Query::Sales,
            Query::Order(OrderId(u64::MAX - 3)),
            Query::Filter,
            Query::Pools,
            Query::SalesAt { first: 0, count: 1 },
            Query::SalesAt {
                first: u32::MAX - 1,
                count: SALES_AT_MAX,
            },
        ] {
            assert_eq!(decode_query(&encode_query(query)), Ok(query));
        }
        let view = PartitionView {
            partition: 3,
            applied: 99,
            clock_ns: 1234,
            sales: vec![sale(1, false), sale(2, true)],
        };
        assert_eq!(decode_view(&encode_view(&view)), Ok(view));
        let pools = PoolsAnswer {
            applied: 12,
            pools: vec![pool(1, false), pool(9, true)],
        };
        assert_eq!(decode_pools(&encode_pools(&pools)), Ok(pools));
        let none = PoolsAnswer {
            applied: 0,
            pools: Vec::new(),
        };
        assert_eq!(decode_pools(&encode_pools(&none)), Ok(none));
        for status in [
            OrderStatus::Held { pay_by_ns: None },
            OrderStatus::Held {
                pay_by_ns: Some(77),
            },
            OrderStatus::Paid,
            OrderStatus::Cancelled,
            OrderStatus::Expired,
        ] {
            let answer = OrderAnswer {
                order: Some(OrderView {
                    id: OrderId(5),
                    user: UserId(6),
                    sku: SkuId(7),
                    quantity: 2,
                    status,
                }),
                applied: 8,
            };
            assert_eq!(decode_order(&encode_order(&answer)), Ok(answer));
        }
        let none = OrderAnswer {
            order: None,
            applied: 1,
        };
        assert_eq!(decode_order(&encode_order(&none)), Ok(none));
    }

    /// Every flipped bit and every cut of `bytes` is an error of `decode`.
    fn every_flip_and_cut_is_refused<T: std::fmt::Debug>(
        bytes: &[u8],
        decode: impl Fn(&[u8]) -> Result<T, WireError>,
    ) {
        for index in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.to_vec();
                damaged[index] ^= 1 << bit;
                assert!(decode(&damaged).is_err(), "byte {index} bit {bit}");
            }
        }
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn damage_is_named_never_read() {
        let view = encode_view(&PartitionView {
            partition: 0,
            applied: 1,
            clock_ns: 2,
            sales: vec![sale(1, false)],
        });
        every_flip_and_cut_is_refused(&view, decode_view);
        let pools = encode_pools(&PoolsAnswer {
            applied: 3,
            pools: vec![pool(4, true)],
        });
        every_flip_and_cut_is_refused(&pools, decode_pools);
        // A served flag other than 0 or 1, checksum intact, is named.
        let mut flag = pools[..pools.len() - 4].to_vec();
        flag[POOLS_HEAD_LEN + 12] = 2;
        let crc = crc32fast::hash(&flag);
        flag.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_pools(&flag), Err(WireError::Flag(2)));
        let query = encode_query(Query::Order(OrderId(9)));
        assert_eq!(decode_query(&query[..5]), Err(WireError::Length(5)));
        let mut bad = query.clone();
        bad[0] = b'X';
        assert_eq!(decode_query(&bad), Err(WireError::Magic));
        let mut bad = query;
        bad[6] ^= 1;
        assert_eq!(decode_query(&bad), Err(WireError::Checksum));
        // A count that does not match the length is named as such, checksum intact.
        let mut short = encode_view(&PartitionView {
            partition: 0,
            applied: 1,
            clock_ns: 2,
            sales: vec![sale(1, false)],
        });
        short.truncate(short.len() - 4);
        short[22] = 2;
        let crc = crc32fast::hash(&short);
        short.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_view(&short), Err(WireError::Count(2)));
    }
}
