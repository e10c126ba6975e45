//! What engine nodes and gateways share on NATS: the sale's names, its streams and
//! buckets, and its epoch.
//!
//! | what | name | holds |
//! |---|---|---|
//! | stream per partition | `FS_<sale>_<p>` on subject `fs.<sale>.in.<p>` | the partition's log: batches of buys, operator commands, ticks |
//! | core subject per gateway | `fs.<sale>.out.<gateway>` | replies, published by each partition's leader (not stored: the log can recompute them) |
//! | key-value bucket | `fs_<sale>_meta` | `epoch`: the sale clock's zero, Unix ns, set once by whoever comes first |
//! | key-value bucket | `fs_<sale>_lease` | `p<p>`: the partition's leader; entries expire after the lease time unless renewed |
//! | object store | `fs_<sale>_snap` | `p<p>`: the newest snapshot of each partition's replica |

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv, object_store, stream};

use crate::catalog::Catalog;

/// Something NATS refused or a sale that does not fit; the message says which step.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
pub struct NatsError {
    step: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl NatsError {
    pub(crate) fn at(
        step: impl Into<String>,
    ) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> Self {
        let step = step.into();
        move |source| Self { step, source }
    }

    pub(crate) fn new(step: impl Into<String>, why: impl Into<String>) -> Self {
        let why: String = why.into();
        Self {
            step: step.into(),
            source: why.into(),
        }
    }
}

/// Shorthand: maps any error into a [`NatsError`] at `step`.
pub(crate) fn at<E: std::error::Error + Send + Sync + 'static>(
    step: &str,
) -> impl FnOnce(E) -> NatsError + '_ {
    move |error| NatsError::at(step)(Box::new(error))
}

/// A sale on NATS: its name, how many partitions it has, and how many copies JetStream
/// keeps of everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleOnNats {
    name: String,
    partitions: u16,
    replicas: usize,
}

impl SaleOnNats {
    /// A sale named `name` (1 to 32 of `A-Z a-z 0-9 _ -`) over `partitions` partitions, its
    /// streams and buckets kept on `replicas` servers (3 for a cluster that survives the
    /// loss of one; 1 for a single server).
    ///
    /// # Errors
    /// A name that NATS would not take, no partitions, or replicas outside `1..=5`.
    pub fn new(name: &str, partitions: u16, replicas: usize) -> Result<Self, NatsError> {
        let valid = (1..=32).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(NatsError::new(
                "sale name",
                format!("{name:?}: 1 to 32 of A-Z a-z 0-9 _ -"),
            ));
        }
        if partitions == 0 {
            return Err(NatsError::new("partitions", "at least 1"));
        }
        if !(1..=5).contains(&replicas) {
            return Err(NatsError::new(
                "replicas",
                format!("{replicas}: JetStream keeps 1 to 5"),
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            partitions,
            replicas,
        })
    }

    /// The sale's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its partitions.
    pub fn partitions(&self) -> u16 {
        self.partitions
    }

    /// Its replication factor.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The stream holding partition `partition`'s log.
    pub fn stream(&self, partition: u16) -> String {
        format!("FS_{}_{partition}", self.name)
    }

    /// The subject gateways publish partition `partition`'s entries on.
    pub fn subject_in(&self, partition: u16) -> String {
        format!("fs.{}.in.{partition}", self.name)
    }

    /// The subject a gateway's replies come on.
    pub fn subject_out(&self, gateway: u64) -> String {
        format!("fs.{}.out.{gateway:016x}", self.name)
    }

    /// The subject partition `partition`'s leader answers reads on ([`super::view`]).
    pub fn subject_ask(&self, partition: u16) -> String {
        format!("fs.{}.ask.{partition}", self.name)
    }

    /// The subject every partition's gate updates ([`super::gate`]) are published on.
    pub fn subject_gate_all(&self) -> String {
        format!("fs.{}.gate.*", self.name)
    }

    /// The subject partition `partition`'s gate updates are published on.
    pub fn subject_gate(&self, partition: u16) -> String {
        format!("fs.{}.gate.{partition}", self.name)
    }

    /// The subject every gateway's replies come on, for a listener of all of them.
    pub fn subject_out_all(&self) -> String {
        format!("fs.{}.out.>", self.name)
    }

    fn bucket(&self, what: &str) -> String {
        format!("fs_{}_{what}", self.name.replace('-', "_"))
    }

    /// Deletes the sale's streams, buckets and snapshot store (what [`open`](Self::open)
    /// creates), for a throwaway sale such as a measurement's. Every node and gateway of
    /// the sale must have stopped first. What is already gone is skipped.
    ///
    /// # Errors
    /// NATS refused to delete something that exists (the step is named).
    pub async fn remove(&self, client: async_nats::Client) -> Result<(), NatsError> {
        let js = jetstream::new(client);
        for partition in 0..self.partitions {
            if js.get_stream(self.stream(partition)).await.is_ok() {
                js.delete_stream(self.stream(partition))
                    .await
                    .map_err(at("delete a partition stream"))?;
            }
        }
        for what in ["meta", "lease"] {
            if js.get_key_value(self.bucket(what)).await.is_ok() {
                js.delete_key_value(self.bucket(what))
                    .await
                    .map_err(at("delete a key-value bucket"))?;
            }
        }
        if js.get_object_store(self.bucket("snap")).await.is_ok() {
            js.delete_object_store(self.bucket("snap"))
                .await
                .map_err(at("delete the snapshot store"))?;
        }
        Ok(())
    }

    /// Creates what the sale needs where it is missing (streams, buckets) and returns them
    /// with the sale's epoch (set now by the first caller, read by every later one).
    /// `lease` is the lease bucket's entry lifetime, as [`NodeConfig::lease`](super::NodeConfig::lease).
    ///
    /// # Errors
    /// A lease outside [`NodeConfig::LEASE_MIN`](super::NodeConfig::LEASE_MIN) to
    /// [`NodeConfig::LEASE_MAX`](super::NodeConfig::LEASE_MAX), or NATS refused a step
    /// (which is named).
    pub async fn open(
        &self,
        client: async_nats::Client,
        lease: Duration,
    ) -> Result<Opened, NatsError> {
        super::node::check_lease(lease)?;
        let js = jetstream::new(client);
        let mut streams = Vec::with_capacity(usize::from(self.partitions));
        for partition in 0..self.partitions {
            let stream = js
                .get_or_create_stream(stream::Config {
                    name: self.stream(partition),
                    subjects: vec![self.subject_in(partition)],
                    storage: stream::StorageType::File,
                    num_replicas: self.replicas,
                    // Gateways retry a publish with its message id for this long.
                    duplicate_window: Duration::from_secs(120),
                    ..Default::default()
                })
                .await
                .map_err(at("create the partition streams"))?;
            streams.push(stream);
        }
        let bucket = |what: &str, max_age: Duration| kv::Config {
            bucket: self.bucket(what),
            history: 1,
            max_age,
            num_replicas: self.replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let meta = create_or_get_kv(&js, bucket("meta", Duration::ZERO)).await?;
        let leases = create_or_get_kv(&js, bucket("lease", lease)).await?;
        let snapshots = match js.get_object_store(self.bucket("snap")).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: self.bucket("snap"),
                    num_replicas: self.replicas,
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(at("create the snapshot store"))?,
        };
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64);
        // First writer wins; everyone reads what won.
        let _ = meta.create("epoch", now_ns.to_string().into()).await;
        let epoch = meta
            .get("epoch")
            .await
            .map_err(at("read the sale's epoch"))?
            .and_then(|bytes| std::str::from_utf8(&bytes).ok()?.parse::<u64>().ok())
            .ok_or_else(|| NatsError::new("read the sale's epoch", "missing or not a number"))?;
        Ok(Opened {
            js,
            streams,
            leases,
            snapshots,
            meta,
            epoch_unix_ns: epoch,
        })
    }
}

async fn create_or_get_kv(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, NatsError> {
    match js.get_key_value(config.bucket.clone()).await {
        Ok(store) => Ok(store),
        Err(_) => js
            .create_key_value(config)
            .await
            .map_err(at("create a key-value bucket")),
    }
}

/// A sale's streams and buckets, opened.
#[derive(Clone)]
pub struct Opened {
    pub(crate) js: jetstream::Context,
    pub(crate) streams: Vec<stream::Stream>,
    pub(crate) leases: kv::Store,
    pub(crate) snapshots: object_store::ObjectStore,
    meta: kv::Store,
    epoch_unix_ns: u64,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("streams", &self.streams.len())
            .field("epoch_unix_ns", &self.epoch_unix_ns)
            .finish_non_exhaustive()
    }
}

/// How long [`Opened::check_shape`] tries the sale's meta bucket again while it does not
/// answer.
const SHAPE_PATIENCE: Duration = Duration::from_secs(30);

impl Opened {
    /// Checks that this process runs the sale as every other one does: the same catalog
    /// (by [`Catalog::fingerprint`]), the same partitions, the same largest quantity and
    /// the same [`PROTOCOL`](super::PROTOCOL) (the version of the cluster's messages).
    /// The first process to check records its shape in the sale's meta bucket; every later
    /// one must match it. A node with another catalog or placement would decide the log's
    /// entries differently from its peers, and a gateway that places a SKU on another
    /// partition would have two partitions sell its stock: either could oversell.
    /// [`run_node`](super::run_node), [`follow`](super::follow) and
    /// [`Gateway::connect_opened`](super::Gateway::connect_opened) check it (once the
    /// catalog is placed over the partitions) before they start. A sale keeps its shape
    /// until it is [removed](SaleOnNats::remove). A process of another protocol (another
    /// flashsale build, whose messages the others may not read) is refused the same way.
    ///
    /// # Errors
    /// [`NatsError`] naming the shape recorded and this one, or the meta bucket did not
    /// answer for 30 s.
    pub async fn check_shape(&self, catalog: &Catalog, max_quantity: u32) -> Result<(), NatsError> {
        let step = "check the sale's shape";
        let ours = format!(
            "catalog {:016x}, {} partitions, largest quantity {max_quantity}, protocol {}",
            catalog.fingerprint(),
            self.streams.len(),
            super::PROTOCOL
        );
        // First writer wins; everyone compares with what won. The bucket may be electing
        // its leader (a server just died): its reads are tried again for a while.
        let deadline = tokio::time::Instant::now() + SHAPE_PATIENCE;
        let recorded = loop {
            let _ = self.meta.create("shape", ours.clone().into()).await;
            match self.meta.get("shape").await {
                Ok(Some(recorded)) => break recorded,
                Ok(None) | Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Ok(None) => return Err(NatsError::new(step, "no shape recorded")),
                Err(error) => return Err(at(step)(error)),
            }
        };
        let recorded = String::from_utf8_lossy(&recorded);
        if recorded != ours {
            return Err(NatsError::new(
                step,
                format!(
                    "the sale runs with {recorded}; this process has {ours} (every node and \
                     gateway of a sale needs the same catalog, partitions, largest quantity \
                     and protocol, the version of the cluster's messages, for the sale's \
                     whole life: to start it again with another, remove it first)"
                ),
            ));
        }
        Ok(())
    }

    /// The sale clock's zero, ns since the Unix epoch (the catalog's offsets count from it).
    pub fn epoch(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.epoch_unix_ns)
    }

    /// The position of each partition's last log entry now (0: none yet), in partition
    /// order: where a [`follow`](super::follow)er that started now is current.
    ///
    /// # Errors
    /// A stream's leader did not answer.
    pub async fn log_ends(&self) -> Result<Vec<u64>, NatsError> {
        let mut ends = Vec::with_capacity(self.streams.len());
        for stream in &self.streams {
            let mut stream = stream.clone();
            let info = stream.info().await.map_err(at("read a log's end"))?;
            ends.push(info.state.last_sequence);
        }
        Ok(ends)
    }

    /// An instant on the sale's clock from a Unix-epoch one (0 before the epoch).
    pub(crate) fn sale_ns(&self, unix_ns: i128) -> u64 {
        u64::try_from(unix_ns.saturating_sub(i128::from(self.epoch_unix_ns))).unwrap_or(0)
    }

    /// Now, on the sale's clock.
    pub(crate) fn now_ns(&self) -> u64 {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as i128);
        self.sale_ns(unix)
    }
}

/// How long [`check_jetstream`] gives servers that are still starting JetStream, in
/// `flashsale`'s commands: a booting server answers within a second or two.
pub const JETSTREAM_WITHIN: Duration = Duration::from_secs(10);

/// Waits (up to `within`) until the servers `client` is connected to answer JetStream's
/// API, and refuses by name servers that never do: a server started without JetStream
/// (`nats-server` without `-js`, or no `jetstream` block in its configuration) has no
/// responder for it, which an opening would otherwise retry until its own deadline. A
/// JetStream that answers with an error (a cluster still electing its leaders) or slowly
/// counts as there: the opening's own retries wait for it.
///
/// # Errors
/// No server answered JetStream's API within `within`.
pub async fn check_jetstream(
    client: &async_nats::Client,
    within: Duration,
) -> Result<(), NatsError> {
    let js = jetstream::new(client.clone());
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match js.query_account().await {
            Err(error)
                if matches!(
                    error.kind(),
                    async_nats::jetstream::context::AccountErrorKind::JetStreamUnavailable
                ) =>
            {
                if tokio::time::Instant::now() >= deadline {
                    return Err(NatsError::new(
                        "check JetStream",
                        format!(
                            "no server answered JetStream's API for {} s: JetStream is not \
                             enabled on these NATS servers (start nats-server with -js, or \
                             give its configuration a jetstream block)",
                            within.as_secs()
                        ),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // Servers with JetStream, but not for this connection's account: no wait
            // changes that.
            Err(error)
                if matches!(
                    error.kind(),
                    async_nats::jetstream::context::AccountErrorKind::JetStream(refused)
                        if refused.error_code()
                            == async_nats::jetstream::ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT
                ) =>
            {
                return Err(NatsError::new(
                    "check JetStream",
                    format!(
                        "{error}: JetStream is not enabled for the account this connection \
                         uses (give the account jetstream limits in the servers' configuration)"
                    ),
                ));
            }
            _ => return Ok(()),
        }
    }
}

/// Connects to a NATS cluster given as comma-separated URLs (any one that answers will do;
/// the client learns the rest and moves to another when one dies).
///
/// # Errors
/// No URL, or none answered.
pub async fn connect(urls: &str, name: &str) -> Result<async_nats::Client, NatsError> {
    let urls: Vec<&str> = urls
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect();
    if urls.is_empty() {
        return Err(NatsError::new("connect", "no NATS URL given"));
    }
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5));
    // Credentials in a URL (`nats://user:password@host`, or `nats://token@host`), which
    // the client does not take from the address itself: the first URL that has some.
    if let Some(address) = urls
        .iter()
        .filter_map(|url| url.parse::<async_nats::ServerAddr>().ok())
        .find(async_nats::ServerAddr::has_user_pass)
    {
        let decoded = |text: &str| {
            percent_encoding::percent_decode_str(text)
                .decode_utf8_lossy()
                .into_owned()
        };
        let user = decoded(address.username().unwrap_or_default());
        options = match address.password() {
            Some(password) => options.user_and_password(user, decoded(password)),
            None => options.token(user),
        };
    }
    options.connect(urls).await.map_err(at("connect to NATS"))
}
