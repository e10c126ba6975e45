//! The sale's catalog as a TOML file (`flashsale serve --catalog sale.toml`): SKUs with
//! their labels, stock, limits, windows, policies, holds and waitlists, and limit groups.
//! A bad file is refused with one line naming the file, the entry and the field.
//!
//! Times are RFC 3339 instants (`"2026-12-01T20:00:00Z"`) or offsets from the sale's epoch
//! (`"+0s"`, `"+10m"`): the first start of `serve` on its data directory (so that a restart
//! keeps every window where it was), or the start of an in-memory run. Durations are
//! `"30s"`, `"10m"`, `"500ms"`. See `examples/sales/*.toml` for documented examples.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flashsale::{Catalog, CatalogError, GroupId, GroupSpec, Policy, SaleWindow, SkuId, SkuSpec};
use serde::Deserialize;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    pool_capacity: Option<u32>,
    #[serde(default)]
    pool_slice: Option<u32>,
    #[serde(default, rename = "group", deserialize_with = "tables")]
    groups: Vec<GroupEntry>,
    #[serde(default, rename = "sku", deserialize_with = "tables")]
    skus: Vec<SkuEntry>,
}

/// Entries that are tables of named fields. serde would also read an entry from an array
/// of its values in the order the struct declares them (`sku = [[101, "Stratos", "EU 42",
/// 600]]`), where a swapped stock and limit would pass unseen: that form is refused.
fn tables<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Table<T>(T);
    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Table<T> {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Fields<T>(std::marker::PhantomData<T>);
            impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Fields<T> {
                type Value = T;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str(
                        "a table of named fields (`[[sku]]` or `[[group]]`, then `id = ...`)",
                    )
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                    T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                }
            }
            deserializer
                .deserialize_map(Fields(std::marker::PhantomData))
                .map(Table)
        }
    }
    let entries: Vec<Table<T>> = Vec::deserialize(deserializer)?;
    Ok(entries.into_iter().map(|Table(entry)| entry).collect())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupEntry {
    id: u32,
    limit: u32,
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    window: Option<String>,
    #[serde(default)]
    seed: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SkuEntry {
    id: u32,
    #[serde(default)]
    product: String,
    #[serde(default)]
    variant: String,
    stock: u32,
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    group: Option<u32>,
    #[serde(default)]
    opens: Option<String>,
    #[serde(default)]
    closes: Option<String>,
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    window: Option<String>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    hold: Option<String>,
    #[serde(default)]
    waitlist: Option<u32>,
}

/// Why a catalog file was refused: one line naming the file, the entry and the field.
#[derive(Debug)]
pub struct CatalogFileError(pub String);

impl std::fmt::Display for CatalogFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Reads and checks a catalog file; `epoch` is the sale's epoch (offsets count from it; the
/// engine clock reads 0 there).
pub fn load(path: &Path, epoch: SystemTime) -> Result<Catalog, CatalogFileError> {
    let name = path.display().to_string();
    let text = crate::input::read_bounded_text(path, crate::input::DESCRIPTION_MAX)
        .map_err(|error| CatalogFileError(format!("{name}: cannot be read: {error}")))?;
    parse(&name, &text, epoch)
}

/// [`load`] on text already read; `name` names it in errors.
pub fn parse(name: &str, text: &str, epoch: SystemTime) -> Result<Catalog, CatalogFileError> {
    let file: File = toml::from_str(text).map_err(|error| {
        let at = error
            .span()
            .map(|span| entry_at(text, span.start))
            .unwrap_or_default();
        let message = error
            .message()
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_owned();
        CatalogFileError(format!("{name}: {at}{message}"))
    })?;
    let fail = |entry: String, field: &str, why: String| {
        CatalogFileError(format!("{name}: {entry}: field `{field}`: {why}"))
    };
    let mut builder = Catalog::builder();
    if let Some(capacity) = file.pool_capacity {
        builder = builder.pool_capacity(capacity);
    }
    if let Some(slice) = file.pool_slice {
        builder = builder.pool_slice(slice);
    }
    for (index, group) in file.groups.iter().enumerate() {
        let entry = format!("group[{index}] (id {})", group.id);
        let policy = policy(&group.policy, &group.window, group.seed)
            .map_err(|(field, why)| fail(entry.clone(), field, why))?;
        builder = builder.group_spec(GroupSpec::new(GroupId(group.id), group.limit).policy(policy));
    }
    for (index, sku) in file.skus.iter().enumerate() {
        let entry = format!("sku[{index}] (id {})", sku.id);
        let fail = |field: &str, why: String| fail(entry.clone(), field, why);
        let mut spec =
            SkuSpec::new(SkuId(sku.id), sku.stock).labels(sku.product.clone(), sku.variant.clone());
        if let Some(limit) = sku.limit {
            spec = spec.limit(limit);
        }
        if let Some(group) = sku.group {
            spec = spec.group(GroupId(group));
        }
        let opens_at_ns = match &sku.opens {
            Some(opens) => instant(opens, epoch).map_err(|why| fail("opens", why))?,
            None => 0,
        };
        let closes_at_ns = match &sku.closes {
            Some(closes) => match instant(closes, epoch).map_err(|why| fail("closes", why))? {
                // At or before the sale's start (an instant that has passed, for a new
                // sale): the window would be over before it opened.
                0 => {
                    return Err(fail(
                        "closes",
                        format!(
                            "{closes:?} is not after the sale's start ({}): the window would \
                             be over before it opened",
                            wall_time(epoch, 0)
                        ),
                    ));
                }
                ns => ns,
            },
            None => u64::MAX,
        };
        spec = spec.window(SaleWindow {
            opens_at_ns,
            closes_at_ns,
        });
        if sku.policy.is_some() || sku.window.is_some() || sku.seed.is_some() {
            let policy = policy(&sku.policy, &sku.window, sku.seed)
                .map_err(|(field, why)| fail(field, why))?;
            spec = spec.policy(policy);
        }
        if let Some(hold) = &sku.hold {
            spec = spec.hold(nanos(hold).map_err(|why| fail("hold", why))?);
        }
        if let Some(waitlist) = sku.waitlist {
            spec = spec.waitlist(waitlist);
        }
        builder = builder.sku(spec);
    }
    builder.build().map_err(|error| {
        let (entry, field) = blame(&file, &error);
        CatalogFileError(format!("{name}: {entry}: field `{field}`: {error}"))
    })
}

/// The entry and field a catalog error is about.
fn blame(file: &File, error: &CatalogError) -> (String, &'static str) {
    let sku = |id: SkuId, field| {
        let index = file.skus.iter().position(|sku| sku.id == id.0);
        (
            index.map_or_else(
                || format!("sku (id {})", id.0),
                |index| format!("sku[{index}] (id {})", id.0),
            ),
            field,
        )
    };
    let group = |id: GroupId, field| {
        let index = file.groups.iter().position(|group| group.id == id.0);
        (
            index.map_or_else(
                || format!("group (id {})", id.0),
                |index| format!("group[{index}] (id {})", id.0),
            ),
            field,
        )
    };
    match *error {
        CatalogError::Empty => ("the file".into(), "sku"),
        CatalogError::DuplicateSku(id) => {
            let index = file
                .skus
                .iter()
                .rposition(|sku| sku.id == id.0)
                .unwrap_or(0);
            (format!("sku[{index}] (id {})", id.0), "id")
        }
        CatalogError::DuplicateGroup(id) => {
            let index = file.groups.iter().rposition(|g| g.id == id.0).unwrap_or(0);
            (format!("group[{index}] (id {})", id.0), "id")
        }
        CatalogError::ZeroLimit(id) => sku(id, "limit"),
        CatalogError::ZeroGroupLimit(id) => group(id, "limit"),
        CatalogError::WindowInverted { sku: id, .. } => sku(id, "closes"),
        CatalogError::PolicyOnGroupedSku(id) => sku(id, "policy"),
        CatalogError::ZeroHold(id) => sku(id, "hold"),
        CatalogError::ZeroPoolCapacity => ("the file".into(), "pool_capacity"),
        CatalogError::ZeroPoolSlice => ("the file".into(), "pool_slice"),
        CatalogError::UnknownGroup { sku: id, .. } => sku(id, "group"),
    }
}

/// `"sku[2]: "`-style prefix for the entry holding byte `offset` (with its line).
fn entry_at(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let mut counts = [0usize; 2];
    let mut current = None;
    for header in before.lines().map(str::trim) {
        for (kind, name) in [(0, "[[sku]]"), (1, "[[group]]")] {
            if header == name {
                current = Some((kind, counts[kind]));
                counts[kind] += 1;
            }
        }
    }
    match current {
        Some((0, index)) => format!("line {line}: sku[{index}]: "),
        Some((_, index)) => format!("line {line}: group[{index}]: "),
        None => format!("line {line}: "),
    }
}

/// A policy from its fields.
fn policy(
    name: &Option<String>,
    window: &Option<String>,
    seed: Option<u64>,
) -> Result<Policy, (&'static str, String)> {
    let window_ns = || -> Result<u64, (&'static str, String)> {
        let window = window.as_ref().ok_or((
            "window",
            "a pooled policy needs its window (e.g. \"30s\")".into(),
        ))?;
        nanos(window).map_err(|why| ("window", why))
    };
    match name.as_deref().unwrap_or("first-come") {
        "first-come" => {
            if window.is_some() || seed.is_some() {
                return Err((
                    "policy",
                    "window and seed are for opening-draw or one-each-first".into(),
                ));
            }
            Ok(Policy::FirstCome)
        }
        "opening-draw" => Ok(Policy::OpeningDraw {
            window_ns: window_ns()?,
            seed: seed.unwrap_or(0),
        }),
        "one-each-first" => {
            if seed.is_some() {
                return Err(("seed", "only an opening-draw has a seed".into()));
            }
            Ok(Policy::OneEachFirst {
                window_ns: window_ns()?,
            })
        }
        other => Err((
            "policy",
            format!("{other:?} is not a policy (first-come, opening-draw, one-each-first)"),
        )),
    }
}

/// A duration in ns, from `"30s"`, `"10m"`, `"500ms"`.
fn nanos(text: &str) -> Result<u64, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|error| format!("{text:?} is not a duration like \"30s\" or \"10m\" ({error})"))?;
    u64::try_from(duration.as_nanos()).map_err(|_| format!("{text:?} is too long"))
}

/// An instant on the engine clock (ns since `epoch`), from an RFC 3339 time or `+offset`.
pub fn instant(text: &str, epoch: SystemTime) -> Result<u64, String> {
    if let Some(offset) = text.strip_prefix('+') {
        return nanos(offset);
    }
    let at = humantime::parse_rfc3339_weak(text).map_err(|_| {
        format!("{text:?} is neither an RFC 3339 time (\"2026-12-01T20:00:00Z\") nor an offset (\"+10m\")")
    })?;
    // Before the epoch: the clock's 0.
    let since = at.duration_since(epoch).unwrap_or(Duration::ZERO);
    u64::try_from(since.as_nanos()).map_err(|_| format!("{text:?} is too far ahead"))
}

/// The wall-clock time of an engine-clock instant, RFC 3339 (for answers).
pub fn wall_time(epoch: SystemTime, ns: u64) -> String {
    humantime::format_rfc3339_millis(epoch + Duration::from_nanos(ns)).to_string()
}

/// Seconds since the Unix epoch, for the epoch file.
pub fn unix_nanos(time: SystemTime) -> u128 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_a_table_of_named_fields_not_an_array_of_values() {
        let inline = parse(
            "inline",
            "sku = [{ id = 101, stock = 600, limit = 1 }]\n",
            UNIX_EPOCH,
        )
        .expect("an inline table is a table");
        assert_eq!(inline.skus().len(), 1);
        assert_eq!(inline.skus()[0].stock, 600);
        for (text, entry) in [
            ("sku = [[101, \"Stratos\", \"EU 42\", 600, 1]]\n", "sku"),
            ("group = [[1, 2]]\n[[sku]]\nid = 1\nstock = 5\n", "group"),
        ] {
            let CatalogFileError(error) = parse("positional", text, UNIX_EPOCH).expect_err(entry);
            assert!(
                error.contains("invalid type: sequence, expected a table of named fields"),
                "{entry}: {error}"
            );
        }
    }
}
