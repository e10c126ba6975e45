//! What is for sale: SKUs, their stock, limits and sale windows, validated once at start-up,
//! and the placement of SKUs on shards.

use rustc_hash::FxHashMap;

use crate::types::{GroupId, ShardId, SkuId};

/// When a SKU can be bought, on the engine clock: nanoseconds since the engine started (the
/// arrival stamp the producer puts on every intent). `opens_at_ns` is inclusive,
/// `closes_at_ns` exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SaleWindow {
    /// First instant (ns on the engine clock) at which the SKU sells.
    pub opens_at_ns: u64,
    /// First instant (ns on the engine clock) at which it no longer sells.
    pub closes_at_ns: u64,
}

impl SaleWindow {
    /// Open from the engine's start until `u64::MAX` ns (some 584 years).
    pub const ALWAYS: Self = Self {
        opens_at_ns: 0,
        closes_at_ns: u64::MAX,
    };

    /// Whether an intent stamped `arrival_ns` falls inside the window.
    pub const fn contains(&self, arrival_ns: u64) -> bool {
        arrival_ns >= self.opens_at_ns && arrival_ns < self.closes_at_ns
    }
}

impl Default for SaleWindow {
    fn default() -> Self {
        Self::ALWAYS
    }
}

/// How a product's units are shared out when more buyers want them than there are units.
///
/// Set per limit group ([`GroupSpec::policy`]) or per ungrouped SKU ([`SkuSpec::policy`]);
/// a grouped SKU follows its group. The two pooled policies hold every intent that
/// arrives before the sale opens or within `window_ns` after the earliest opening of the
/// product's SKUs in a *pool*, one ticket per buyer (a buyer's first intent; any further
/// press is answered [`RejectReason::AlreadyPooled`](crate::RejectReason::AlreadyPooled) at
/// once), and serve the pool when that window closes; later arrivals are served first
/// come. Intents that may be pooled are decided only then, so their outcome arrives then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Policy {
    /// Served in the order the shard applies intents (each producer's own order kept).
    #[default]
    FirstCome,
    /// The pool is shuffled with a deterministic generator seeded by `seed` (mixed with the
    /// product's id, so that two products drawn with one seed get different orders) and
    /// served in that order, each ticket decided as a first-come intent. The same seed and
    /// pool give the same draw, so a draw can be audited and replayed.
    OpeningDraw {
        /// How long after the opening the pool stays open, ns (0: only early arrivals).
        window_ns: u64,
        /// The draw's seed (reported with the sale).
        seed: u64,
    },
    /// The pool is served in arrival order, one unit at a time round-robin: every ticket
    /// gets one unit before any gets a second, until its quantity or the stock runs out. A
    /// ticket served fewer units than it asked for (but at least one) is confirmed for
    /// what it got; one served none is rejected as sold out.
    OneEachFirst {
        /// How long after the opening the pool stays open, ns (0: only early arrivals).
        window_ns: u64,
    },
}

impl Policy {
    /// The pool window, for the pooled policies.
    pub const fn window_ns(&self) -> Option<u64> {
        match *self {
            Self::FirstCome => None,
            Self::OpeningDraw { window_ns, .. } | Self::OneEachFirst { window_ns } => {
                Some(window_ns)
            }
        }
    }

    /// A stable snake_case name, for reports and the command line.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::FirstCome => "first-come",
            Self::OpeningDraw { .. } => "opening-draw",
            Self::OneEachFirst { .. } => "one-each-first",
        }
    }
}

/// The most tickets one pool holds by default (see [`CatalogBuilder::pool_capacity`]).
pub const POOL_CAPACITY_DEFAULT: u32 = 1 << 20;

/// Tickets served per slice of a pool by default (see [`CatalogBuilder::pool_slice`]).
pub const POOL_SLICE_DEFAULT: u32 = 256;

/// One SKU as the catalog describes it. Build with [`SkuSpec::new`] and the setters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkuSpec {
    /// The SKU's id, unique in the catalog.
    pub id: SkuId,
    /// Product label (e.g. "Aurora trainer"); for reports only.
    pub product: String,
    /// Variant label (e.g. "EU 42 / black"); for reports only.
    pub variant: String,
    /// Units for sale at the start.
    pub stock: u32,
    /// Most units one buyer may hold of this SKU; at least 1.
    pub limit_per_buyer: u32,
    /// When it sells.
    pub window: SaleWindow,
    /// The limit group whose limit it also counts against, if any.
    pub group: Option<GroupId>,
    /// How scarce units are shared out (ungrouped SKUs only; a grouped SKU follows its
    /// group's policy).
    pub policy: Policy,
    /// How long a confirmed order holds its units awaiting payment, ns after the shard
    /// confirmed it; `None` (the default): until paid or cancelled.
    pub hold_ns: Option<u64>,
    /// How many intents may wait for a unit to come back once it is sold out (0, the
    /// default: no waitlist; an intent asking to wait is then decided like any other).
    pub waitlist: u32,
}

impl SkuSpec {
    /// A SKU with `stock` units, no per-buyer limit (`u32::MAX`), always on sale, no group.
    pub fn new(id: SkuId, stock: u32) -> Self {
        Self {
            id,
            product: String::new(),
            variant: String::new(),
            stock,
            limit_per_buyer: u32::MAX,
            window: SaleWindow::ALWAYS,
            group: None,
            policy: Policy::FirstCome,
            hold_ns: None,
            waitlist: 0,
        }
    }

    /// Sets the allocation policy (ungrouped SKUs; see [`Policy`]).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets the payment window: an unpaid order's units go back on sale `hold_ns` after it
    /// was confirmed (a deadline past the end of the engine clock, `u64::MAX` ns, is the
    /// clock's last instant but one).
    pub fn hold(mut self, hold_ns: u64) -> Self {
        self.hold_ns = Some(hold_ns);
        self
    }

    /// Sets the waitlist's capacity (intents).
    pub fn waitlist(mut self, capacity: u32) -> Self {
        self.waitlist = capacity;
        self
    }

    /// Sets the per-buyer limit for this SKU.
    pub fn limit(mut self, limit_per_buyer: u32) -> Self {
        self.limit_per_buyer = limit_per_buyer;
        self
    }

    /// Sets the sale window.
    pub fn window(mut self, window: SaleWindow) -> Self {
        self.window = window;
        self
    }

    /// Puts the SKU in a limit group.
    pub fn group(mut self, group: GroupId) -> Self {
        self.group = Some(group);
        self
    }

    /// Sets the product and variant labels.
    pub fn labels(mut self, product: impl Into<String>, variant: impl Into<String>) -> Self {
        self.product = product.into();
        self.variant = variant.into();
        self
    }
}

/// A limit group: the most units one buyer may hold across all SKUs in it, and how its
/// units are shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupSpec {
    /// The group's id, unique in the catalog.
    pub id: GroupId,
    /// Most units one buyer may hold across the group's SKUs; at least 1.
    pub limit_per_buyer: u32,
    /// The allocation policy of all the group's SKUs (one pool for the whole group).
    pub policy: Policy,
}

impl GroupSpec {
    /// A first-come group.
    pub const fn new(id: GroupId, limit_per_buyer: u32) -> Self {
        Self {
            id,
            limit_per_buyer,
            policy: Policy::FirstCome,
        }
    }

    /// Sets the group's allocation policy.
    pub const fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }
}

/// Why a catalog was refused. Every variant names the offending id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// A catalog needs at least one SKU.
    #[error("the catalog has no SKU")]
    Empty,
    /// Two SKUs share an id.
    #[error("SKU id {0:?} appears more than once")]
    DuplicateSku(SkuId),
    /// Two limit groups share an id.
    #[error("limit group id {0:?} appears more than once")]
    DuplicateGroup(GroupId),
    /// A SKU's per-buyer limit is 0, so nobody could buy it.
    #[error("SKU {0:?} has a per-buyer limit of 0")]
    ZeroLimit(SkuId),
    /// A group's per-buyer limit is 0, so nobody could buy from it.
    #[error("limit group {0:?} has a per-buyer limit of 0")]
    ZeroGroupLimit(GroupId),
    /// A SKU's window closes at or before it opens.
    #[error(
        "SKU {sku:?}: sale window closes ({closes_at_ns} ns) at or before it opens ({opens_at_ns} ns)"
    )]
    WindowInverted {
        /// The SKU.
        sku: SkuId,
        /// Its opening instant.
        opens_at_ns: u64,
        /// Its closing instant.
        closes_at_ns: u64,
    },
    /// A SKU in a limit group sets its own policy; the group's policy governs it.
    #[error("SKU {0:?} is in a limit group, so its policy is the group's; set it there")]
    PolicyOnGroupedSku(SkuId),
    /// A SKU's payment window is 0 ns, so no order could ever be paid.
    #[error("SKU {0:?} has a payment window (hold) of 0 ns")]
    ZeroHold(SkuId),
    /// The pool capacity is 0, so no pooled intent could ever be decided.
    #[error("the pool capacity must be at least 1")]
    ZeroPoolCapacity,
    /// The pool slice is 0, so a pool being served would never get anywhere.
    #[error("the pool slice must be at least 1")]
    ZeroPoolSlice,
    /// A SKU names a limit group the catalog does not define.
    #[error("SKU {sku:?} names limit group {group:?}, which is not in the catalog")]
    UnknownGroup {
        /// The SKU.
        sku: SkuId,
        /// The missing group.
        group: GroupId,
    },
}

/// Builds a [`Catalog`]; [`build`](Self::build) validates it.
#[derive(Debug, Clone)]
pub struct CatalogBuilder {
    skus: Vec<SkuSpec>,
    groups: Vec<GroupSpec>,
    pool_capacity: u32,
    pool_slice: u32,
}

impl Default for CatalogBuilder {
    fn default() -> Self {
        Self {
            skus: Vec::new(),
            groups: Vec::new(),
            pool_capacity: POOL_CAPACITY_DEFAULT,
            pool_slice: POOL_SLICE_DEFAULT,
        }
    }
}

impl CatalogBuilder {
    /// Adds a SKU.
    pub fn sku(mut self, sku: SkuSpec) -> Self {
        self.skus.push(sku);
        self
    }

    /// Adds many SKUs.
    pub fn skus(mut self, skus: impl IntoIterator<Item = SkuSpec>) -> Self {
        self.skus.extend(skus);
        self
    }

    /// Adds a limit group.
    pub fn group(mut self, id: GroupId, limit_per_buyer: u32) -> Self {
        self.groups.push(GroupSpec::new(id, limit_per_buyer));
        self
    }

    /// Adds a limit group described in full (e.g. with a policy).
    pub fn group_spec(mut self, group: GroupSpec) -> Self {
        self.groups.push(group);
        self
    }

    /// The most tickets (distinct buyers) one pool of a pooled [`Policy`] holds (default
    /// [`POOL_CAPACITY_DEFAULT`]); more are rejected as
    /// [`RejectReason::PoolFull`](crate::RejectReason::PoolFull). A ticket costs about 64
    /// bytes until the pool is served.
    pub fn pool_capacity(mut self, tickets: u32) -> Self {
        self.pool_capacity = tickets;
        self
    }

    /// How much of a pool one step serves (default [`POOL_SLICE_DEFAULT`]): a pool whose
    /// window closed is served in slices of this many steps (a step shuffles one ticket
    /// into place, checks one, or decides one), one slice per clock tick, so that the
    /// shard decides the buys of its other products between slices instead of waiting
    /// for the whole pool. The outcomes are the same whatever the slice: see
    /// [`Policy`] and the fairness documentation. A step takes 100-300 ns, so the default
    /// slice keeps another product's buys waiting well under a millisecond; on a cluster
    /// every slice is one more entry in the log, so a sale of huge pools there may take
    /// larger slices. `u32::MAX` serves every pool in one go.
    pub fn pool_slice(mut self, steps: u32) -> Self {
        self.pool_slice = steps;
        self
    }

    /// Validates and builds the catalog.
    ///
    /// # Errors
    /// The first [`CatalogError`] found, checking groups first, then SKUs in order.
    pub fn build(self) -> Result<Catalog, CatalogError> {
        if self.skus.is_empty() {
            return Err(CatalogError::Empty);
        }
        if self.pool_capacity == 0 {
            return Err(CatalogError::ZeroPoolCapacity);
        }
        if self.pool_slice == 0 {
            return Err(CatalogError::ZeroPoolSlice);
        }
        let mut group_index = FxHashMap::default();
        for (index, group) in self.groups.iter().enumerate() {
            if group.limit_per_buyer == 0 {
                return Err(CatalogError::ZeroGroupLimit(group.id));
            }
            if group_index.insert(group.id, index as u32).is_some() {
                return Err(CatalogError::DuplicateGroup(group.id));
            }
        }
        let mut sku_index: FxHashMap<SkuId, u32> = FxHashMap::default();
        sku_index.reserve(self.skus.len());
        for (index, sku) in self.skus.iter().enumerate() {
            if sku.limit_per_buyer == 0 {
                return Err(CatalogError::ZeroLimit(sku.id));
            }
            if sku.window.closes_at_ns <= sku.window.opens_at_ns {
                return Err(CatalogError::WindowInverted {
                    sku: sku.id,
                    opens_at_ns: sku.window.opens_at_ns,
                    closes_at_ns: sku.window.closes_at_ns,
                });
            }
            if let Some(group) = sku.group
                && !group_index.contains_key(&group)
            {
                return Err(CatalogError::UnknownGroup { sku: sku.id, group });
            }
            if sku.hold_ns == Some(0) {
                return Err(CatalogError::ZeroHold(sku.id));
            }
            if sku.group.is_some() && sku.policy != Policy::FirstCome {
                return Err(CatalogError::PolicyOnGroupedSku(sku.id));
            }
            if sku_index.insert(sku.id, index as u32).is_some() {
                return Err(CatalogError::DuplicateSku(sku.id));
            }
        }
        Ok(Catalog {
            sku_index: SkuIndex::new(sku_index),
            skus: self.skus,
            groups: self.groups,
            group_index,
            pool_capacity: self.pool_capacity,
            pool_slice: self.pool_slice,
        })
    }
}

/// A SKU id's catalog index, looked up by every producer for every intent.
///
/// Catalogs whose ids are small and dense (the usual `1..=N`, or any ids below
/// `4 * count + 1024`) get a table indexed by the id itself: a bounds check and one load,
/// with no hashing and no probing. Any other set of ids keeps a hash map.
#[derive(Debug, Clone)]
enum SkuIndex {
    /// `table[id]` is the index, or [`SkuIndex::ABSENT`].
    Dense(Box<[u32]>),
    Hashed(FxHashMap<SkuId, u32>),
}

impl SkuIndex {
    const ABSENT: u32 = u32::MAX;

    fn new(map: FxHashMap<SkuId, u32>) -> Self {
        let bound = 4 * map.len() as u64 + 1024;
        match map.keys().map(|id| u64::from(id.0)).max() {
            Some(max) if max < bound => {
                let mut table = vec![Self::ABSENT; max as usize + 1].into_boxed_slice();
                for (id, &index) in &map {
                    table[id.0 as usize] = index;
                }
                Self::Dense(table)
            }
            _ => Self::Hashed(map),
        }
    }

    #[inline]
    fn get(&self, sku: SkuId) -> Option<usize> {
        match self {
            Self::Dense(table) => match table.get(sku.0 as usize) {
                Some(&index) if index != Self::ABSENT => Some(index as usize),
                _ => None,
            },
            Self::Hashed(map) => map.get(&sku).map(|&index| index as usize),
        }
    }
}

/// A validated catalog. Immutable; the engine shares it between producers and shards.
#[derive(Debug, Clone)]
pub struct Catalog {
    skus: Vec<SkuSpec>,
    groups: Vec<GroupSpec>,
    sku_index: SkuIndex,
    group_index: FxHashMap<GroupId, u32>,
    pool_capacity: u32,
    pool_slice: u32,
}

impl Catalog {
    /// A 64-bit fingerprint of everything in the catalog that decides outcomes: each SKU's
    /// id, stock, limit, window, group, policy, hold and waitlist, each group's limit and
    /// policy, and the pool capacity and slice. Labels (product and variant names) are left out: a
    /// renamed product sells the same. A journal directory records it (see
    /// [`JournalConfig`](crate::JournalConfig)), so that a journal is never replayed under
    /// another catalog.
    pub fn fingerprint(&self) -> u64 {
        // FNV-1a over a fixed little-endian encoding: stable across builds and platforms.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |value: u64| {
            for byte in value.to_le_bytes() {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        };
        fn policy(eat: &mut impl FnMut(u64), policy: Policy) {
            match policy {
                Policy::FirstCome => eat(0),
                Policy::OpeningDraw { window_ns, seed } => {
                    eat(1);
                    eat(window_ns);
                    eat(seed);
                }
                Policy::OneEachFirst { window_ns } => {
                    eat(2);
                    eat(window_ns);
                }
            }
        }
        eat(u64::from(self.pool_capacity));
        eat(u64::from(self.pool_slice));
        eat(self.skus.len() as u64);
        for sku in &self.skus {
            eat(u64::from(sku.id.0));
            eat(u64::from(sku.stock));
            eat(u64::from(sku.limit_per_buyer));
            eat(sku.window.opens_at_ns);
            eat(sku.window.closes_at_ns);
            eat(sku.group.map_or(u64::MAX, |group| u64::from(group.0)));
            policy(&mut eat, sku.policy);
            eat(sku.hold_ns.map_or(u64::MAX, |hold| hold));
            eat(u64::from(sku.waitlist));
        }
        eat(self.groups.len() as u64);
        for group in &self.groups {
            eat(u64::from(group.id.0));
            eat(u64::from(group.limit_per_buyer));
            policy(&mut eat, group.policy);
        }
        hash
    }

    /// The most tickets one pool holds (see [`CatalogBuilder::pool_capacity`]).
    pub fn pool_capacity(&self) -> u32 {
        self.pool_capacity
    }

    /// Steps per slice of a pool being served (see [`CatalogBuilder::pool_slice`]).
    pub fn pool_slice(&self) -> u32 {
        self.pool_slice
    }

    /// The policy that governs a SKU: its group's, or its own.
    pub fn policy_of(&self, sku: &SkuSpec) -> Policy {
        sku.group
            .and_then(|group| self.group(group))
            .map_or(sku.policy, |group| group.policy)
    }

    /// Starts a catalog.
    pub fn builder() -> CatalogBuilder {
        CatalogBuilder::default()
    }

    /// The SKUs, in the order they were added (their *catalog index*).
    pub fn skus(&self) -> &[SkuSpec] {
        &self.skus
    }

    /// The limit groups, in the order they were added.
    pub fn groups(&self) -> &[GroupSpec] {
        &self.groups
    }

    /// The catalog index of a SKU id.
    #[inline]
    pub fn index_of(&self, sku: SkuId) -> Option<usize> {
        self.sku_index.get(sku)
    }

    /// The catalog indices of a page of SKUs: the first `limit` after `after` (from the
    /// first SKU when `None`), fewer at the end of the catalog.
    ///
    /// # Errors
    /// `after` itself, when it is not in the catalog.
    pub fn page(
        &self,
        after: Option<SkuId>,
        limit: usize,
    ) -> Result<std::ops::Range<usize>, SkuId> {
        let from = match after {
            None => 0,
            Some(sku) => self.index_of(sku).ok_or(sku)? + 1,
        };
        Ok(from..from.saturating_add(limit).min(self.skus.len()))
    }

    /// The rule every intent passes before anything decides it, wherever it is decided
    /// (the producer's screen, and the baselines it is compared with): a quantity in
    /// `1..=max_quantity` (else [`InvalidQuantity`](crate::RejectReason::InvalidQuantity))
    /// of a SKU in the catalog (else [`UnknownSku`](crate::RejectReason::UnknownSku)).
    /// Returns the SKU's catalog index.
    ///
    /// # Errors
    /// The reason the intent is malformed.
    #[inline]
    pub fn admit(
        &self,
        intent: &crate::Intent,
        max_quantity: u32,
    ) -> Result<usize, crate::RejectReason> {
        if intent.quantity == 0 || intent.quantity > max_quantity {
            return Err(crate::RejectReason::InvalidQuantity);
        }
        self.index_of(intent.sku)
            .ok_or(crate::RejectReason::UnknownSku)
    }

    /// The SKU with this id.
    pub fn sku(&self, sku: SkuId) -> Option<&SkuSpec> {
        self.index_of(sku).map(|index| &self.skus[index])
    }

    /// The limit group with this id.
    pub fn group(&self, group: GroupId) -> Option<&GroupSpec> {
        self.group_index
            .get(&group)
            .map(|&index| &self.groups[index as usize])
    }

    pub(crate) fn group_index_of(&self, group: GroupId) -> Option<usize> {
        self.group_index.get(&group).map(|&index| index as usize)
    }

    /// The total units for sale at the start.
    pub fn total_stock(&self) -> u64 {
        self.skus.iter().map(|sku| u64::from(sku.stock)).sum()
    }
}

/// Why SKUs could not be spread over the requested number of shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// At least one shard is needed.
    #[error("the shard count must be at least 1")]
    ZeroShards,
    /// Shard ids are 16-bit.
    #[error("{0} shards requested; at most 65,536 are supported")]
    TooManyShards(usize),
    /// Each limit group, and each SKU outside any group, goes whole to one shard; there are
    /// fewer such units than shards, so some shards would have nothing to decide.
    #[error(
        "{shards} shards requested but the catalog has only {units} placement units (limit groups plus ungrouped SKUs)"
    )]
    MoreShardsThanUnits {
        /// Shards requested.
        shards: usize,
        /// Limit groups plus SKUs outside any group.
        units: usize,
    },
}

/// Which shard owns which SKU. A limit group and all its SKUs go to one shard, so that the
/// group's per-buyer counts have a single writer; units (groups and ungrouped SKUs) are dealt
/// round-robin in catalog order of their first SKU. Deterministic for a catalog and a shard
/// count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Per catalog index: the owning shard.
    shard_of: Vec<ShardId>,
    /// Per catalog index: the index among its shard's SKUs.
    local_of: Vec<u32>,
    /// Per shard: the catalog indexes of its SKUs, in catalog order.
    skus_of: Vec<Vec<u32>>,
}

impl Placement {
    /// Spreads `catalog` over `shards` shards.
    ///
    /// # Errors
    /// See [`PlacementError`].
    pub fn new(catalog: &Catalog, shards: usize) -> Result<Self, PlacementError> {
        if shards == 0 {
            return Err(PlacementError::ZeroShards);
        }
        if shards > usize::from(u16::MAX) + 1 {
            return Err(PlacementError::TooManyShards(shards));
        }
        // Units of placement (a limit group with SKUs, or an ungrouped SKU), counted before
        // anything per shard is allocated.
        let mut group_used = vec![false; catalog.groups().len()];
        let mut units = 0usize;
        for sku in catalog.skus() {
            match sku.group.and_then(|group| catalog.group_index_of(group)) {
                Some(group) => {
                    units += usize::from(!std::mem::replace(&mut group_used[group], true))
                }
                None => units += 1,
            }
        }
        if units < shards {
            return Err(PlacementError::MoreShardsThanUnits { shards, units });
        }
        let mut shard_of_group: Vec<Option<ShardId>> = vec![None; catalog.groups().len()];
        let mut shard_of = Vec::with_capacity(catalog.skus().len());
        let mut local_of = Vec::with_capacity(catalog.skus().len());
        let mut skus_of: Vec<Vec<u32>> = vec![Vec::new(); shards];
        let mut units = 0usize;
        for (index, sku) in catalog.skus().iter().enumerate() {
            let mut next_unit = || {
                let shard = ShardId((units % shards) as u16);
                units += 1;
                shard
            };
            let shard = match sku.group.and_then(|group| catalog.group_index_of(group)) {
                Some(group) => *shard_of_group[group].get_or_insert_with(next_unit),
                None => next_unit(),
            };
            let list = &mut skus_of[usize::from(shard.0)];
            local_of.push(list.len() as u32);
            list.push(index as u32);
            shard_of.push(shard);
        }
        Ok(Self {
            shard_of,
            local_of,
            skus_of,
        })
    }

    /// The number of shards.
    pub fn shards(&self) -> usize {
        self.skus_of.len()
    }

    /// The shard owning the SKU at a catalog index, and the SKU's index on that shard.
    #[inline]
    pub fn route(&self, catalog_index: usize) -> (ShardId, u32) {
        (self.shard_of[catalog_index], self.local_of[catalog_index])
    }

    /// The catalog indexes of a shard's SKUs (its local index is the position here).
    pub fn skus_of(&self, shard: ShardId) -> &[u32] {
        &self.skus_of[usize::from(shard.0)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sku(id: u32) -> SkuSpec {
        SkuSpec::new(SkuId(id), 10).limit(2)
    }

    #[test]
    fn a_page_starts_after_its_sku_and_stops_at_the_catalogs_end() {
        let catalog = Catalog::builder()
            .skus([9, 4, 7, 2, 5].map(sku))
            .build()
            .unwrap();
        assert_eq!(catalog.page(None, 2), Ok(0..2));
        assert_eq!(catalog.page(Some(SkuId(4)), 2), Ok(2..4));
        assert_eq!(catalog.page(Some(SkuId(2)), 1_000), Ok(4..5));
        assert_eq!(catalog.page(Some(SkuId(5)), 10), Ok(5..5));
        assert_eq!(catalog.page(Some(SkuId(9)), usize::MAX), Ok(1..5));
        assert_eq!(catalog.page(None, 0), Ok(0..0));
        assert_eq!(catalog.page(Some(SkuId(3)), 2), Err(SkuId(3)));
    }

    #[test]
    fn sku_ids_are_found_by_table_or_by_hash_alike() {
        // Dense ids (a table), ids with a gap past the table's bound (a hash map), and the
        // largest id there is.
        for (ids, dense) in [
            (vec![3, 1, 2, 7], true),
            (vec![5, 1030], true),
            (vec![5, 1033], false),
            (vec![0, u32::MAX], false),
        ] {
            let catalog = Catalog::builder()
                .skus(ids.iter().map(|&id| sku(id)))
                .build()
                .unwrap();
            assert_eq!(
                matches!(catalog.sku_index, SkuIndex::Dense(_)),
                dense,
                "{ids:?}"
            );
            for (index, &id) in ids.iter().enumerate() {
                assert_eq!(catalog.index_of(SkuId(id)), Some(index), "{ids:?}");
            }
            for absent in [4, 6, 8, 1029, 1031, 1034, 70_000, u32::MAX - 1] {
                if !ids.contains(&absent) {
                    assert_eq!(catalog.index_of(SkuId(absent)), None, "{absent} in {ids:?}");
                }
            }
        }
    }

    #[test]
    fn every_catalog_error_is_named() {
        assert_eq!(Catalog::builder().build().unwrap_err(), CatalogError::Empty);
        assert_eq!(
            Catalog::builder()
                .sku(sku(1))
                .sku(sku(1))
                .build()
                .unwrap_err(),
            CatalogError::DuplicateSku(SkuId(1))
        );
        assert_eq!(
            Catalog::builder().sku(sku(1).limit(0)).build().unwrap_err(),
            CatalogError::ZeroLimit(SkuId(1))
        );
        assert_eq!(
            Catalog::builder()
                .group(GroupId(1), 2)
                .group(GroupId(1), 3)
                .sku(sku(1))
                .build()
                .unwrap_err(),
            CatalogError::DuplicateGroup(GroupId(1))
        );
        assert_eq!(
            Catalog::builder()
                .group(GroupId(4), 0)
                .sku(sku(1))
                .build()
                .unwrap_err(),
            CatalogError::ZeroGroupLimit(GroupId(4))
        );
        let inverted = SaleWindow {
            opens_at_ns: 10,
            closes_at_ns: 10,
        };
        assert_eq!(
            Catalog::builder()
                .sku(sku(3).window(inverted))
                .build()
                .unwrap_err(),
            CatalogError::WindowInverted {
                sku: SkuId(3),
                opens_at_ns: 10,
                closes_at_ns: 10
            }
        );
        assert_eq!(
            Catalog::builder()
                .sku(sku(5).group(GroupId(9)))
                .build()
                .unwrap_err(),
            CatalogError::UnknownGroup {
                sku: SkuId(5),
                group: GroupId(9)
            }
        );
    }

    #[test]
    fn groups_stay_on_one_shard_and_units_deal_round_robin() {
        let catalog = Catalog::builder()
            .group(GroupId(1), 2)
            .sku(sku(10).group(GroupId(1)))
            .sku(sku(11))
            .sku(sku(12).group(GroupId(1)))
            .sku(sku(13))
            .build()
            .unwrap();
        let placement = Placement::new(&catalog, 3).unwrap();
        assert_eq!(placement.route(0).0, placement.route(2).0);
        let shards: Vec<u16> = (0..4).map(|i| placement.route(i).0.0).collect();
        assert_eq!(shards, vec![0, 1, 0, 2]);
        assert_eq!(placement.skus_of(ShardId(0)), &[0, 2]);
        assert_eq!(placement.route(2), (ShardId(0), 1));
        assert_eq!(
            Placement::new(&catalog, 4).unwrap_err(),
            PlacementError::MoreShardsThanUnits {
                shards: 4,
                units: 3
            }
        );
        assert_eq!(
            Placement::new(&catalog, 0).unwrap_err(),
            PlacementError::ZeroShards
        );
    }
}
