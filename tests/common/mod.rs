//! Checks shared by the integration tests.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};

use flashsale::{
    Catalog, Completion, GroupId, Intent, OrderId, Outcome, Producer, RejectReason, ShardId, SkuId,
    SubmitError, Submitted, UserId,
};

/// An intent for `quantity` units of SKU `sku` by `user` with client key `key`.
pub fn intent(user: u64, key: u64, sku: u32, quantity: u32) -> Intent {
    Intent {
        user: UserId(user),
        client_key: key,
        sku: SkuId(sku),
        quantity,
    }
}

/// Submits `intent`, taking completions into `completions` while its lane is `Busy`, and
/// keeps an answer given at submit there too. Returns how often the producer pushed back.
/// Panics on any refusal other than `Busy`.
pub fn submit_one(
    producer: &mut Producer,
    intent: Intent,
    completions: &mut Vec<Completion>,
) -> u64 {
    submit_one_with(producer, intent, false, completions)
}

/// [`submit_one`], through `submit_or_wait` when `wait`.
pub fn submit_one_with(
    producer: &mut Producer,
    mut intent: Intent,
    wait: bool,
    completions: &mut Vec<Completion>,
) -> u64 {
    let mut busy = 0;
    loop {
        let result = if wait {
            producer.submit_or_wait(intent)
        } else {
            producer.submit(intent)
        };
        match result {
            Ok(Submitted::Queued(_)) => return busy,
            Ok(Submitted::Answered(outcome)) => {
                completions.push(Completion {
                    intent,
                    outcome,
                    ticket: flashsale::Ticket(u32::MAX),
                    waited: false,
                });
                return busy;
            }
            Err(SubmitError::Busy(back)) => {
                busy += 1;
                intent = back;
                if producer.poll(|completion| completions.push(completion)) == 0 {
                    producer.wait_for_arrivals();
                }
            }
            Err(refused) => panic!("refused: {refused:?}"),
        }
    }
}

/// The invariants, on every outcome of a run: no oversell (and units conserved),
/// no undersell (replaying each shard's decisions in sequence order), limits per SKU and
/// group, one order per key (a Duplicate names it), gate answers only for sold-out SKUs.
pub fn check_invariants(catalog: &Catalog, all: &[Completion], report: &flashsale::Report) {
    // Invariant 1 (no oversell) and conservation, from the orders and from the report.
    let mut held: HashMap<SkuId, u64> = HashMap::new();
    let mut by_user_sku: HashMap<(UserId, SkuId), u32> = HashMap::new();
    let mut by_user_group: HashMap<(UserId, GroupId), u32> = HashMap::new();
    // Keys are scoped to a product: the SKU's limit group, or the SKU (as u64::MAX - id).
    let product = |sku: SkuId| {
        catalog
            .sku(sku)
            .and_then(|spec| spec.group)
            .map_or(u64::MAX - u64::from(sku.0), |group| u64::from(group.0))
    };
    let mut order_of_key: HashMap<(UserId, u64, u64), OrderId> = HashMap::new();
    let mut order_ids = HashSet::new();
    for completion in all {
        if let Outcome::Confirmed(order) = completion.outcome {
            assert_eq!(order.quantity, completion.intent.quantity);
            *held.entry(order.sku).or_default() += u64::from(order.quantity);
            *by_user_sku.entry((order.user, order.sku)).or_default() += order.quantity;
            if let Some(group) = catalog.sku(order.sku).unwrap().group {
                *by_user_group.entry((order.user, group)).or_default() += order.quantity;
            }
            assert!(order_ids.insert(order.id), "order ids are unique");
            // Invariant 5: at most one order per (user, key, product).
            let previous = order_of_key.insert(
                (order.user, completion.intent.client_key, product(order.sku)),
                order.id,
            );
            assert!(previous.is_none(), "two orders for one key");
        }
    }
    for (spec, sku_report) in catalog.skus().iter().zip(&report.skus) {
        let sold = held.get(&spec.id).copied().unwrap_or(0);
        assert!(sold <= u64::from(spec.stock), "oversold {:?}", spec.id);
        assert_eq!(u64::from(sku_report.held), sold);
        assert_eq!(sku_report.held + sku_report.available, spec.stock);
    }
    // Invariant 4: limits, per SKU and per group.
    for (&(_, sku), &units) in &by_user_sku {
        assert!(units <= catalog.sku(sku).unwrap().limit_per_buyer);
    }
    for (&(_, group), &units) in &by_user_group {
        assert!(units <= catalog.group(group).unwrap().limit_per_buyer);
    }
    // Invariant 5: a Duplicate names the order its key already has.
    for completion in all {
        if let Some(RejectReason::Duplicate(id)) = completion.outcome.reason() {
            let key = (
                completion.intent.user,
                completion.intent.client_key,
                product(completion.intent.sku),
            );
            assert_eq!(order_of_key.get(&key), Some(&id));
        }
    }
    // Invariant 2 (no undersell): replay each shard's decisions in sequence order and check
    // that every stock rejection saw too few units at that moment.
    let mut shard_decisions: HashMap<ShardId, Vec<(u64, Completion)>> = HashMap::new();
    for completion in all {
        if let Some(sequence) = completion.outcome.sequence() {
            let index = catalog.index_of(completion.intent.sku).unwrap();
            let (shard, _) = report_placement(catalog, report).route(index);
            shard_decisions
                .entry(shard)
                .or_default()
                .push((sequence, *completion));
        }
    }
    let mut available: HashMap<SkuId, u32> =
        catalog.skus().iter().map(|s| (s.id, s.stock)).collect();
    for decisions in shard_decisions.values_mut() {
        decisions.sort_by_key(|(sequence, _)| *sequence);
        for (expected, (sequence, _)) in decisions.iter().enumerate() {
            assert_eq!(*sequence, expected as u64, "sequence numbers are dense");
        }
        for (_, completion) in decisions.iter() {
            let left = available.get_mut(&completion.intent.sku).unwrap();
            match completion.outcome {
                Outcome::Confirmed(order) => *left -= order.quantity,
                Outcome::Rejected {
                    reason: RejectReason::SoldOut,
                    ..
                } => assert_eq!(*left, 0),
                Outcome::Rejected {
                    reason: RejectReason::InsufficientStock,
                    ..
                } => assert!(*left > 0 && *left < completion.intent.quantity),
                Outcome::Rejected { .. } => {}
            }
        }
    }
    // Gate answers (no sequence) are only given for SKUs that really sold out.
    for completion in all {
        if completion.outcome.reason() == Some(RejectReason::SoldOut)
            && completion.outcome.sequence().is_none()
        {
            assert_eq!(available[&completion.intent.sku], 0);
        }
    }
}

fn report_placement(catalog: &Catalog, report: &flashsale::Report) -> flashsale::Placement {
    flashsale::Placement::new(catalog, report.shards).unwrap()
}

/// A small tmpfs mounted at `dir` (made if missing) for as long as this lives, so that a
/// test meets a real full disk; unmounted on drop, also when the test fails. `None` where
/// it cannot be mounted (it needs root on Linux): the caller says it skipped.
pub struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    /// Mounts a tmpfs of `size` (as `mount -o size=` reads it, e.g. `20k`) at `dir`.
    pub fn mount(dir: &std::path::Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).ok()?;
        let mounted = cfg!(target_os = "linux")
            && std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
        mounted.then(|| Self(dir.to_owned()))
    }

    /// Gives the mounted disk `size` (the files on it stay).
    pub fn resize(&self, size: &str) {
        let resized = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|status| status.success());
        assert!(resized, "remounting {} with size {size}", self.0.display());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Whether `/dev/shm` is a tmpfs mount, as the kernel's mount table says.
pub fn dev_shm_is_tmpfs() -> bool {
    std::fs::read_to_string("/proc/mounts").is_ok_and(|mounts| {
        mounts.lines().any(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            fields.get(1) == Some(&"/dev/shm") && fields.get(2) == Some(&"tmpfs")
        })
    })
}
