//! A snapshot whose checksum holds but whose contents the fuzzer changed: restoring it is
//! refused with the check named (`SnapshotError::Mismatch`), or gives a core that agrees
//! with itself. The rest of the commands then run on it without a panic (the fuzz builds
//! keep debug assertions and overflow checks), its units conserved after every one, and a
//! snapshot of it at the end restores. Unchanged, a snapshot restores the core exactly: the
//! same answers to the rest of the commands.
//!
//! The simulator's catalog and commands (`tests/sim`): the seed picks the commands, `cut`
//! where the snapshot is taken among them, and each change is an offset into the payload,
//! how to change the byte there (flip a bit, set it, add to it) and by what. The harness
//! writes the checksum again over the changed payload.
#![no_main]

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../../tests/sim/mod.rs"]
mod sim;

use arbitrary::Arbitrary;
use flashsale::core::SnapshotError;
use flashsale::workload::Rng;
use flashsale::{Command, Intent, OrderId, Placement, ShardCore, ShardId};
use libfuzzer_sys::fuzz_target;

/// Commands per run, the snapshot taken after `cut % COMMANDS` of them.
const COMMANDS: usize = 300;
/// A snapshot's header: 36 bytes, ending with the payload's checksum.
const HEADER: usize = 36;

#[derive(Debug, Arbitrary)]
struct Input {
    seed: u64,
    cut: u16,
    changes: Vec<(u32, u8, u8)>,
}

/// The simulator's command stream, with the orders it has seen confirmed.
struct Commands {
    rng: Rng,
    now: u64,
    orders: Vec<OrderId>,
    last: Option<Intent>,
}

impl Commands {
    fn next(&mut self) -> Command {
        sim::next_command(&mut self.rng, &mut self.now, &self.orders, &mut self.last)
    }

    /// Applies `command` to `core`, noting the orders it confirmed; what it answered.
    fn apply(&mut self, core: &mut ShardCore, command: &Command) -> String {
        let summary = sim::applied_summary(core, command);
        self.orders.extend(sim::summary_orders(&summary));
        summary
    }
}

fuzz_target!(|input: Input| {
    let catalog = sim::catalog();
    let placement = Placement::new(&catalog, 1).expect("one shard");
    let mut commands = Commands {
        rng: Rng::new(input.seed),
        now: 0,
        orders: Vec::new(),
        last: None,
    };
    let mut original = ShardCore::whole(&catalog);
    for _ in 0..usize::from(input.cut) % COMMANDS {
        let command = commands.next();
        commands.apply(&mut original, &command);
    }
    let bytes = original.snapshot();
    let mut changed = bytes.clone();
    let payload = bytes.len() - HEADER;
    for &(offset, how, by) in &input.changes {
        let byte = &mut changed[HEADER + offset as usize % payload];
        *byte = match how % 3 {
            0 => *byte ^ 1 << (by % 8),
            1 => by,
            _ => byte.wrapping_add(by),
        };
    }
    let checksum = crc32fast::hash(&changed[HEADER..]);
    changed[HEADER - 4..HEADER].copy_from_slice(&checksum.to_le_bytes());
    let mut restored = match ShardCore::restore(&catalog, &placement, ShardId(0), None, &changed) {
        Ok(core) => core,
        Err(SnapshotError::Mismatch(_)) if changed != bytes => return,
        Err(error) => panic!("refused: {error}"),
    };
    let exact = changed == bytes;
    if exact {
        assert_eq!(restored.snapshot(), bytes, "restored exactly");
    }
    for _ in usize::from(input.cut) % COMMANDS..COMMANDS {
        let command = commands.next();
        let answer = commands.apply(&mut original, &command);
        let again = sim::applied_summary(&mut restored, &command);
        if exact {
            assert_eq!(again, answer, "{command:?}");
        }
        if let Err(failure) = sim::check_levels(&restored, &catalog) {
            panic!("after {command:?}: {failure}");
        }
    }
    if let Err(error) =
        ShardCore::restore(&catalog, &placement, ShardId(0), None, &restored.snapshot())
    {
        panic!("a snapshot of the restored core is refused: {error}");
    }
});
