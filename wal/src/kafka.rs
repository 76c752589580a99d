//! The Kafka WAL: one region is one single-partition topic.
//!
//! - **Writes** are produced with `acks=all` and idempotence, and an append
//!   returns only after the broker acknowledged every record. Appends are
//!   serialised, so the records of one append are contiguous in the topic.
//!   Idempotence can be turned off for brokers that mishandle it (tansu
//!   0.6.0 breaks when an idempotent session spans a broker restart); the
//!   producer then never re-sends on its own, so it still never duplicates.
//! - **Large records** are split into chunks below the broker's message limit
//!   and reassembled on read; a record's offset is the offset of its first
//!   chunk. A chunk group cut short by a crash is dropped on read, so a
//!   record is read whole or not at all.
//! - **Fencing**: every record carries the writer's epoch in a header;
//!   replay drops records older than an epoch it has seen
//!   ([`crate::fence`]). No transactions are needed. A writer also notices
//!   when it has been replaced: its appends are serialised, so its records
//!   follow one another, chunk after chunk. Every chunk's offset is checked:
//!   where one lands past a gap (also between two chunks of one record),
//!   the gap is read, and a record there with a higher epoch means another
//!   writer took the region over. The append then fails with
//!   [`Error::Fenced`], which names the leading records that landed wholly
//!   before the newer writer's first record: replay applies exactly those,
//!   and drops every later record of the old epoch, including one whose
//!   chunks straddle the newer record. A new writer appends a record before
//!   it replays (the engine's fence marker), so every record of the old
//!   writer is either before that marker, replayed and acknowledgeable, or
//!   not wholly before it, dropped and refused to its writer.
//! - **Lost records are noticed.** A broker must keep what it acknowledged;
//!   when the topic starts above the truncation watermark committed by the
//!   shard, or a new record gets an offset below one handed out before, the
//!   region lost records: opening fails with [`Error::RecordsLost`] unless
//!   the operator accepted the loss (`accept_loss`).
//! - **Truncation** commits the watermark as the committed offset of a
//!   consumer group dedicated to the topic; reads never go below it, also
//!   after a restart. Records are physically deleted (DeleteRecords) only
//!   when `delete_records` is on: brokers without it (tansu) keep them, and
//!   topics are created with infinite retention so that nothing else ever
//!   deletes WAL a shard still needs.
//!
//! Record headers: `strata-epoch` (u64 LE) and `strata-chunk` (index u32 LE,
//! count u32 LE).

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    config::ClientConfig,
    consumer::{BaseConsumer, CommitMode, Consumer},
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, Headers, Message, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer},
    Offset, TopicPartitionList,
};

use crate::{AppendResult, Epoch, Error, Result, Wal, WalEntry, WalOffset};

const EPOCH_HEADER: &str = "strata-epoch";
const CHUNK_HEADER: &str = "strata-chunk";

/// Options of one Kafka WAL region.
#[derive(Debug, Clone)]
pub struct KafkaWalOptions {
    /// `host:port,…`
    pub brokers: String,
    pub topic: String,
    pub replication_factor: i32,
    /// `min.insync.replicas` of new topics when `replication_factor > 1`;
    /// `None`: see [`KafkaWalOptions::min_insync_replicas`].
    pub min_insync: Option<i32>,
    /// Chunks are at most this large; keep it below the broker's
    /// `message.max.bytes`.
    pub max_message_bytes: usize,
    /// How long a produce may take before it fails (retryably).
    pub produce_timeout: Duration,
    /// How long the producer waits to batch records.
    pub linger: Duration,
    /// Timeout of metadata, offset and admin requests.
    pub request_timeout: Duration,
    /// Physically delete records below the watermark (DeleteRecords).
    pub delete_records: bool,
    /// Idempotent produce (on by default). When off, the producer never
    /// re-sends a record on its own (`message.send.max.retries=0`), so it
    /// cannot duplicate one either; a failed append is reported and the
    /// caller decides.
    pub idempotence: bool,
    /// Open a region whose broker lost records below what the shard had
    /// truncated (the operator's explicit acceptance of that loss): the
    /// watermark moves up to the broker's first record.
    pub accept_loss: bool,
    /// Extra librdkafka properties, for both producer and consumer.
    pub extra: BTreeMap<String, String>,
    /// Tests only: a pause after producing each chunk, so that another
    /// writer's record can land between the chunks of one append.
    #[doc(hidden)]
    pub pause_between_chunks: Option<Duration>,
}

impl KafkaWalOptions {
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic: topic.into(),
            replication_factor: 1,
            min_insync: None,
            max_message_bytes: 900 * 1024,
            produce_timeout: Duration::from_secs(30),
            linger: Duration::from_millis(1),
            request_timeout: Duration::from_secs(10),
            delete_records: false,
            idempotence: true,
            accept_loss: false,
            extra: BTreeMap::new(),
            pause_between_chunks: None,
        }
    }

    /// The `min.insync.replicas` a new topic gets when replicated: a
    /// majority of the replicas and at least 2 (3 replicas: 2), so an
    /// acknowledged record is on two brokers; `min_insync` overrides it.
    pub fn min_insync_replicas(&self) -> i32 {
        self.min_insync
            .unwrap_or_else(|| (self.replication_factor / 2 + 1).max(2))
            .min(self.replication_factor)
            .max(1)
    }

    fn client_config(&self) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.brokers).set(
            "socket.timeout.ms",
            self.request_timeout.as_millis().to_string(),
        );
        for (k, v) in &self.extra {
            cfg.set(k, v);
        }
        cfg
    }
}

/// Whether a Kafka error may pass if the operation is retried later.
pub fn kafka_retryable(e: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    let code = match e {
        KafkaError::AdminOp(code) => Some(*code),
        other => other.rdkafka_error_code(),
    };
    match code {
        Some(
            MessageTimedOut
            | BrokerTransportFailure
            | AllBrokersDown
            | NetworkException
            | RequestTimedOut
            | LeaderNotAvailable
            | NotLeaderForPartition
            | BrokerNotAvailable
            | QueueFull
            | NotEnoughReplicas
            | NotEnoughReplicasAfterAppend
            | OperationTimedOut
            | UnknownTopicOrPartition
            | CoordinatorNotAvailable
            | NotCoordinator
            | CoordinatorLoadInProgress
            | FencedLeaderEpoch
            | UnknownLeaderEpoch
            | KafkaStorageError
            // Brokers answer "unknown" while they recover (tansu after a
            // restart): the outcome is in doubt, not refused.
            | Unknown,
        ) => true,
        Some(_) => false,
        None => matches!(e, KafkaError::Canceled),
    }
}

fn kafka_err(op: &'static str) -> impl Fn(KafkaError) -> Error {
    move |source| Error::Kafka {
        op,
        retryable: kafka_retryable(&source),
        source,
    }
}

fn closed<T>(_: T) -> Error {
    Error::Closed
}

/// A WAL region on a Kafka topic.
pub struct KafkaWal {
    options: KafkaWalOptions,
    producer: Mutex<FutureProducer>,
    consumer: Arc<Mutex<BaseConsumer>>,
    admin: AdminClient<DefaultClientContext>,
    append_lock: tokio::sync::Mutex<()>,
    next: AtomicU64,
    low: AtomicU64,
    /// The epoch of the writer that fenced this one (0 while not fenced):
    /// once fenced, every append is refused.
    fenced_by: AtomicU64,
}

impl std::fmt::Debug for KafkaWal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KafkaWal({} @ {})",
            self.options.topic, self.options.brokers
        )
    }
}

fn producer(options: &KafkaWalOptions) -> Result<FutureProducer> {
    let mut cfg = options.client_config();
    if options.idempotence {
        cfg.set("enable.idempotence", "true");
    } else {
        cfg.set("enable.idempotence", "false")
            .set("message.send.max.retries", "0")
            .set("max.in.flight.requests.per.connection", "1");
    }
    cfg.set("acks", "all")
        .set("linger.ms", options.linger.as_millis().to_string())
        .set(
            "message.timeout.ms",
            options.produce_timeout.as_millis().to_string(),
        )
        .set(
            "message.max.bytes",
            (options.max_message_bytes + 64 * 1024).to_string(),
        )
        .set("compression.type", "none")
        .create()
        .map_err(kafka_err("creating the producer"))
}

impl KafkaWal {
    /// Opens the region: creates the topic if missing (one partition,
    /// infinite retention) and reads its end and persisted watermark.
    pub async fn open(options: KafkaWalOptions) -> Result<Self> {
        let admin: AdminClient<DefaultClientContext> = options
            .client_config()
            .create()
            .map_err(kafka_err("creating the admin client"))?;
        let topic = NewTopic::new(
            &options.topic,
            1,
            TopicReplication::Fixed(options.replication_factor),
        )
        .set("retention.ms", "-1")
        .set("retention.bytes", "-1")
        .set("cleanup.policy", "delete");
        let min_insync = options.min_insync_replicas().to_string();
        let topic = if options.replication_factor > 1 {
            // acks=all is only as strong as the in-sync set it waits for.
            topic.set("min.insync.replicas", &min_insync)
        } else {
            topic
        };
        let admin_opts = AdminOptions::new().operation_timeout(Some(options.request_timeout));
        let created = admin
            .create_topics([&topic], &admin_opts)
            .await
            .map_err(kafka_err("creating the topic"))?;
        for r in created {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(Error::Kafka {
                        op: "creating the topic",
                        retryable: false,
                        source: KafkaError::AdminOp(code),
                    })
                    .inspect_err(
                        |_| tracing::error!(topic = %name, ?code, "topic creation failed"),
                    )
                }
            }
        }
        let consumer: BaseConsumer = options
            .client_config()
            .set("group.id", format!("{}.strata-wal", options.topic))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            // A read below the broker's first record fails instead of
            // silently starting at the first record.
            .set("auto.offset.reset", "error")
            // Reads want what is there now, not to wait for more.
            .set("fetch.wait.max.ms", "20")
            .set(
                "fetch.max.bytes",
                (8 * options.max_message_bytes.max(1 << 20)).to_string(),
            )
            .set(
                "max.partition.fetch.bytes",
                (4 * options.max_message_bytes.max(1 << 20)).to_string(),
            )
            .create()
            .map_err(kafka_err("creating the consumer"))?;
        let producer = producer(&options)?;
        let wal = Self {
            producer: Mutex::new(producer),
            consumer: Arc::new(Mutex::new(consumer)),
            admin,
            append_lock: tokio::sync::Mutex::new(()),
            next: AtomicU64::new(0),
            low: AtomicU64::new(0),
            fenced_by: AtomicU64::new(0),
            options,
        };
        let (low, high, committed) = {
            let consumer = wal.consumer.clone();
            let topic = wal.options.topic.clone();
            let timeout = wal.options.request_timeout;
            tokio::task::spawn_blocking(move || -> Result<(i64, i64, Option<i64>)> {
                let c = consumer.lock();
                // Metadata for a new topic can take a moment to propagate.
                let mut attempt = 0;
                let (low, high) = loop {
                    match c.fetch_watermarks(&topic, 0, timeout) {
                        Ok(w) => break w,
                        Err(e) if attempt < 20 && kafka_retryable(&e) => {
                            attempt += 1;
                            std::thread::sleep(Duration::from_millis(250));
                        }
                        Err(e) => return Err(kafka_err("reading the topic's offsets")(e)),
                    }
                };
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&topic, 0);
                let committed = c
                    .committed_offsets(tpl, timeout)
                    .map_err(kafka_err("reading the truncation watermark"))?;
                let committed =
                    committed
                        .find_partition(&topic, 0)
                        .and_then(|p| match p.offset() {
                            Offset::Offset(o) => Some(o),
                            _ => None,
                        });
                Ok((low, high, committed))
            })
            .await
            .map_err(closed)??
        };
        let (low, high) = (low.max(0) as u64, high.max(0) as u64);
        let committed = committed.map(|c| c.max(0) as u64);
        let mut watermark = low.max(committed.unwrap_or(0));
        if let Some(detail) = lost_records(low, high, committed) {
            let topic = wal.options.topic.clone();
            if !wal.options.accept_loss || high < committed.unwrap_or(0) {
                tracing::error!(%topic, low, high, ?committed, %detail,
                    "the WAL lost acknowledged records; refusing to open it (see \"Lost WAL records\" in docs/operations/kafka-wal.md)");
                crate::loss::record(&topic, &detail);
                return Err(Error::RecordsLost { topic, detail });
            }
            tracing::error!(%topic, low, high, ?committed, %detail,
                "the WAL lost acknowledged records; opening it anyway because the operator accepted the loss");
            watermark = low;
            wal.commit_watermark(low).await?;
        }
        crate::loss::clear(&wal.options.topic);
        wal.next.store(high, Ordering::Release);
        wal.low.store(watermark, Ordering::Release);
        tracing::info!(topic = %wal.options.topic, low, high, ?committed, "opened Kafka WAL");
        Ok(wal)
    }

    pub fn topic(&self) -> &str {
        &self.options.topic
    }

    /// Persists `below` as the truncation watermark (the committed offset of
    /// the region's consumer group).
    async fn commit_watermark(&self, below: u64) -> Result<()> {
        let consumer = self.consumer.clone();
        let topic = self.options.topic.clone();
        tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, 0, Offset::Offset(below as i64))
                .map_err(kafka_err("committing the watermark"))?;
            consumer
                .lock()
                .commit(&tpl, CommitMode::Sync)
                .map_err(kafka_err("committing the watermark"))
        })
        .await
        .map_err(closed)?
    }

    /// Produces one chunk; returns its delivery future.
    fn send_chunk(
        &self,
        epoch: Epoch,
        chunk: &[u8],
        index: u32,
        count: u32,
    ) -> Result<rdkafka::producer::DeliveryFuture> {
        let mut chunk_header = [0u8; 8];
        chunk_header[..4].copy_from_slice(&index.to_le_bytes());
        chunk_header[4..].copy_from_slice(&count.to_le_bytes());
        let epoch_bytes = epoch.0.to_le_bytes();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: EPOCH_HEADER,
                value: Some(&epoch_bytes),
            })
            .insert(Header {
                key: CHUNK_HEADER,
                value: Some(&chunk_header),
            });
        let record: FutureRecord<'_, (), [u8]> = FutureRecord::to(&self.options.topic)
            .partition(0)
            .payload(chunk)
            .headers(headers);
        self.producer
            .lock()
            .send_result(record)
            .map_err(|(e, _)| kafka_err("producing")(e))
    }

    /// After a fatal error the idempotent producer cannot be used again.
    fn recover_producer(&self, e: &Error) {
        let fatal = self.producer.lock().client().fatal_error();
        if fatal.is_some()
            || matches!(
                e,
                Error::Kafka {
                    retryable: false,
                    ..
                }
            )
        {
            match producer(&self.options) {
                Ok(p) => {
                    tracing::warn!(topic = %self.options.topic, ?fatal, "recreated the Kafka producer");
                    *self.producer.lock() = p;
                }
                Err(e) => tracing::error!(error = %e, "recreating the Kafka producer failed"),
            }
        }
    }

    async fn produce_all(&self, epoch: Epoch, payloads: &[Bytes]) -> Result<Vec<WalOffset>> {
        let max = self.options.max_message_bytes.max(1);
        let mut pending = Vec::new();
        for payload in payloads {
            let chunks: Vec<&[u8]> = if payload.is_empty() {
                vec![&payload[..]]
            } else {
                payload.chunks(max).collect()
            };
            let count = u32::try_from(chunks.len()).map_err(|_| Error::RecordTooLarge {
                size: payload.len(),
                limit: max * u32::MAX as usize,
            })?;
            let mut futures = Vec::with_capacity(chunks.len());
            for (i, chunk) in chunks.into_iter().enumerate() {
                futures.push(self.send_chunk(epoch, chunk, i as u32, count)?);
                if let Some(pause) = self.options.pause_between_chunks {
                    tokio::time::sleep(pause).await;
                }
            }
            pending.push(futures);
        }
        let expected = self.next.load(Ordering::Acquire);
        // The offsets of the first and the last chunk of each record.
        let mut spans: Vec<(u64, u64)> = Vec::with_capacity(pending.len());
        // Offsets between our chunks: another writer's records.
        let mut gaps: Vec<(u64, u64)> = Vec::new();
        let mut want = expected;
        for futures in pending {
            let mut first = None;
            let mut last = 0;
            for f in futures {
                let delivered = f.await.map_err(|_| Error::Closed)?;
                let offset = delivered
                    .map(|d| d.offset)
                    .map_err(|(e, _)| kafka_err("producing")(e))?
                    .max(0) as u64;
                if offset < want {
                    // Offsets never go back on a broker that keeps what it
                    // acknowledged: the topic lost records (or was recreated).
                    return Err(Error::RecordsLost {
                        topic: self.options.topic.clone(),
                        detail: format!(
                            "the broker gave offset {offset} to a record appended after offset {}",
                            want.saturating_sub(1)
                        ),
                    });
                }
                if offset > want {
                    gaps.push((want, offset));
                }
                want = offset + 1;
                first.get_or_insert(offset);
                last = offset;
            }
            spans.push((first.unwrap_or(last), last));
        }
        if gaps.is_empty() {
            self.next.fetch_max(want, Ordering::AcqRel);
        } else {
            let checked = self.check_gaps(epoch, &gaps, &spans).await;
            // When the gaps could not be read, `next` stays below them, so
            // the next append reads them again before anything of this
            // writer is acknowledged past them.
            if matches!(checked, Ok(()) | Err(Error::Fenced { .. })) {
                self.next.fetch_max(want, Ordering::AcqRel);
            }
            checked?;
        }
        Ok(spans.iter().map(|(first, _)| WalOffset(*first)).collect())
    }

    /// Reads the records in each gap `[from, to)` between the chunks of one
    /// append (records another writer appended meanwhile). When one carries
    /// an epoch above `epoch`, another writer took the region over: the
    /// append fails with [`Error::Fenced`], naming the records that landed
    /// wholly before that writer's first record (replay applies those, and
    /// drops every later record of this epoch).
    async fn check_gaps(
        &self,
        epoch: Epoch,
        gaps: &[(u64, u64)],
        spans: &[(u64, u64)],
    ) -> Result<()> {
        let consumer = self.consumer.clone();
        let topic = self.options.topic.clone();
        let timeout = self.options.request_timeout;
        let gaps = gaps.to_vec();
        let newer = tokio::task::spawn_blocking(move || -> Result<Option<(u64, u64, u64)>> {
            let c = consumer.lock();
            for (from, to) in gaps {
                let epochs = scan_epochs_blocking(&c, &topic, from, to, timeout)?;
                let mut first_newer: Option<u64> = None;
                let mut highest = 0u64;
                for (offset, e) in epochs {
                    if e > epoch.0 {
                        first_newer.get_or_insert(offset);
                        highest = highest.max(e);
                    }
                }
                if let Some(at) = first_newer {
                    return Ok(Some((at, highest, to)));
                }
            }
            Ok(None)
        })
        .await
        .map_err(closed)??;
        let Some((at, by, _)) = newer else {
            tracing::debug!(topic = %self.options.topic, "WAL gaps hold only older records");
            return Ok(());
        };
        let committed: Vec<WalOffset> = spans
            .iter()
            .take_while(|(_, last)| *last < at)
            .map(|(first, _)| WalOffset(*first))
            .collect();
        tracing::warn!(topic = %self.options.topic, ours = %epoch.0, theirs = %by, at,
            committed = committed.len(), refused = spans.len() - committed.len(),
            "another writer took this WAL region over; refusing further appends");
        self.fenced_by.fetch_max(by, Ordering::AcqRel);
        Err(Error::Fenced {
            epoch,
            by: Epoch(by),
            committed,
        })
    }
}

/// A read asked for an offset the broker no longer has.
fn out_of_range(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::OffsetOutOfRange | RDKafkaErrorCode::AutoOffsetReset)
    )
}

/// The epoch and chunk headers of one message: (epoch, index, count).
fn chunk_headers(message: &impl Message) -> (u64, u32, u32) {
    let mut epoch = 0u64;
    let mut index = 0u32;
    let mut count = 1u32;
    if let Some(headers) = message.headers() {
        for h in headers.iter() {
            match (h.key, h.value) {
                (EPOCH_HEADER, Some(v)) if v.len() == 8 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(v);
                    epoch = u64::from_le_bytes(b);
                }
                (CHUNK_HEADER, Some(v)) if v.len() == 8 => {
                    index = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
                    count = u32::from_le_bytes([v[4], v[5], v[6], v[7]]);
                }
                _ => {}
            }
        }
    }
    (epoch, index, count)
}

/// Unassigns the consumer when a read ends: an assigned consumer keeps
/// fetching ahead in the background (librdkafka prefetches until its queue
/// is full), load a broker pays for nothing between reads, and that a slow
/// broker (tansu, see docs/operations/kafka-wal.md) cannot afford.
struct Unassign<'a>(&'a BaseConsumer);

impl Drop for Unassign<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.unassign() {
            tracing::debug!(error = %e, "unassigning the WAL consumer failed");
        }
    }
}

/// The (offset, epoch) of every message in `[from, to)`, chunks included.
fn scan_epochs_blocking(
    consumer: &BaseConsumer,
    topic: &str,
    from: u64,
    to: u64,
    timeout: Duration,
) -> Result<Vec<(u64, u64)>> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(from as i64))
        .map_err(kafka_err("assigning the partition"))?;
    consumer
        .assign(&tpl)
        .map_err(kafka_err("assigning the partition"))?;
    let _unassign = Unassign(consumer);
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + timeout * 3;
    loop {
        if std::time::Instant::now() > deadline {
            return Err(Error::Kafka {
                op: "reading a gap between appended records",
                retryable: true,
                source: KafkaError::Canceled,
            });
        }
        let Some(polled) = consumer.poll(timeout) else {
            continue;
        };
        let message = match polled {
            Ok(m) => m,
            Err(KafkaError::PartitionEOF(_)) => break,
            Err(e) => return Err(kafka_err("reading a gap between appended records")(e)),
        };
        let offset = message.offset().max(0) as u64;
        if offset >= to {
            break;
        }
        if offset >= from {
            out.push((offset, chunk_headers(&message).0));
        }
        if offset + 1 >= to {
            break;
        }
    }
    Ok(out)
}

/// Why a region with first offset `low`, end `high` and committed
/// truncation watermark `committed` no longer holds records it acknowledged,
/// or `None` when it holds them all. Topics keep records forever (infinite
/// retention; DeleteRecords only below the watermark), so a first record
/// above the watermark, or an end below it, means the broker lost records.
pub fn lost_records(low: u64, high: u64, committed: Option<u64>) -> Option<String> {
    match committed {
        Some(c) if high < c => Some(format!(
            "the topic ends at offset {high}, below the truncation watermark {c}: it was recreated or lost its records"
        )),
        Some(c) if low > c => Some(format!(
            "the topic starts at offset {low}, above the truncation watermark {c}: {} records are gone",
            low - c
        )),
        // No watermark (never truncated, or the broker expired the group's
        // offsets): nothing to compare with here; the tables' flushed
        // offsets are checked by the engine.
        _ => None,
    }
}

/// A record being reassembled from its chunks.
struct ChunkGroup {
    first: u64,
    count: u32,
    data: BytesMut,
    seen: u32,
    /// A record of a higher epoch landed between this group's chunks: its
    /// writer was refused the append (see [`KafkaWal::check_gaps`]), so the
    /// record is dropped.
    overtaken: bool,
}

/// Reads whole records starting at `from` until `max_bytes` or `high`.
fn read_blocking(
    consumer: &BaseConsumer,
    topic: &str,
    from: u64,
    high: u64,
    max_bytes: usize,
    timeout: Duration,
) -> Result<Vec<WalEntry>> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(from as i64))
        .map_err(kafka_err("assigning the partition"))?;
    consumer
        .assign(&tpl)
        .map_err(kafka_err("assigning the partition"))?;
    let _unassign = Unassign(consumer);

    let mut assembler = Assembler::default();
    let deadline = std::time::Instant::now() + timeout * 3;
    let mut first_polled = true;
    loop {
        if std::time::Instant::now() > deadline {
            return Err(Error::Kafka {
                op: "reading",
                retryable: true,
                source: KafkaError::Canceled,
            });
        }
        let Some(polled) = consumer.poll(timeout) else {
            continue;
        };
        let message = match polled {
            Ok(m) => m,
            Err(KafkaError::PartitionEOF(_)) => break,
            Err(e) if out_of_range(&e) => {
                let detail = format!("reading from offset {from}: {e}");
                tracing::error!(topic, %detail, "the WAL lost acknowledged records");
                crate::loss::record(topic, &detail);
                return Err(Error::RecordsLost {
                    topic: topic.to_string(),
                    detail,
                });
            }
            Err(e) => return Err(kafka_err("reading")(e)),
        };
        let offset = message.offset().max(0) as u64;
        // Only the first message answers "where does the broker start":
        // later ones follow it (a read that starts on a later chunk of a
        // record drops that chunk, and the next message is above `from`).
        let first = std::mem::replace(&mut first_polled, false);
        if first && offset > from {
            // The broker answered from a later offset than asked for: the
            // records in between are gone. A Kafka broker answers
            // OFFSET_OUT_OF_RANGE (above), but some brokers (tansu) serve
            // a read below their first record from that record, silently.
            let detail = format!(
                "reading from offset {from}, the broker's first record is at {offset}: {} records are gone",
                offset - from
            );
            tracing::error!(topic, %detail, "the WAL lost acknowledged records");
            crate::loss::record(topic, &detail);
            return Err(Error::RecordsLost {
                topic: topic.to_string(),
                detail,
            });
        }
        let (epoch, index, count) = chunk_headers(&message);
        let data = message.payload().unwrap_or_default();
        assembler.push(topic, offset, epoch, index, count, data);
        if offset + 1 >= high {
            break;
        }
        if assembler.bytes >= max_bytes && assembler.groups.is_empty() && !assembler.out.is_empty()
        {
            break;
        }
    }
    Ok(assembler.finish())
}

/// Whole records from a run of messages: chunk groups joined, torn and
/// overtaken ones dropped.
#[derive(Default)]
struct Assembler {
    out: Vec<WalEntry>,
    bytes: usize,
    // The chunk groups being assembled, one per writer epoch: the chunks of
    // two writers interleave while a new writer fences an old one.
    groups: BTreeMap<u64, ChunkGroup>,
}

impl Assembler {
    fn push(&mut self, topic: &str, offset: u64, epoch: u64, index: u32, count: u32, data: &[u8]) {
        let groups = &mut self.groups;
        for (_, g) in groups.range_mut(..epoch) {
            g.overtaken = true;
        }
        if index == 0 {
            let fresh = ChunkGroup {
                first: offset,
                count,
                data: BytesMut::from(data),
                seen: 1,
                overtaken: false,
            };
            if groups.insert(epoch, fresh).is_some() {
                tracing::warn!(
                    topic,
                    offset,
                    "dropping an incomplete WAL record (torn chunk group)"
                );
            }
        } else {
            match groups.get_mut(&epoch) {
                Some(g) if g.seen == index && g.count == count => {
                    g.data.extend_from_slice(data);
                    g.seen += 1;
                }
                _ => {
                    // A chunk whose group started below `from`, or a torn group.
                    groups.remove(&epoch);
                }
            }
        }
        if groups.get(&epoch).is_some_and(|g| g.seen == g.count) {
            if let Some(g) = groups.remove(&epoch).filter(|g| {
                if g.overtaken {
                    tracing::warn!(
                        topic,
                        offset = g.first,
                        epoch,
                        "dropping a WAL record overtaken by a newer writer between its chunks"
                    );
                }
                !g.overtaken
            }) {
                self.bytes += g.data.len();
                self.out.push(WalEntry {
                    offset: WalOffset(g.first),
                    epoch: Epoch(epoch),
                    payload: g.data.freeze(),
                });
            }
        }
    }

    /// The records read, in offset order. A group still being assembled
    /// (its last chunks not read yet: the read stopped at the end it saw)
    /// holds back every record above its first chunk: the next read starts
    /// at the offset after the last record returned, and a read starting
    /// above the group's first chunk drops its later chunks as a group
    /// begun before it; that lost the record (an acknowledged one, of the
    /// new writer, when an old writer's record lands between its chunks).
    fn finish(mut self) -> Vec<WalEntry> {
        if let Some(pending) = self
            .groups
            .values()
            .filter(|g| !g.overtaken)
            .map(|g| g.first)
            .min()
        {
            self.out.retain(|e| e.offset.0 < pending);
        }
        self.out.sort_by_key(|e| e.offset);
        self.out
    }
}

#[async_trait]
impl Wal for KafkaWal {
    async fn append(&self, epoch: Epoch, payloads: Vec<Bytes>) -> Result<AppendResult> {
        let _serial = self.append_lock.lock().await;
        let by = self.fenced_by.load(Ordering::Acquire);
        if by > epoch.0 {
            return Err(Error::Fenced {
                epoch,
                by: Epoch(by),
                committed: Vec::new(),
            });
        }
        match self.produce_all(epoch, &payloads).await {
            Ok(offsets) => Ok(AppendResult { offsets }),
            Err(e) => {
                self.recover_producer(&e);
                Err(e)
            }
        }
    }

    async fn read(&self, from: WalOffset, max_bytes: usize) -> Result<Vec<WalEntry>> {
        let from = from.0.max(self.low.load(Ordering::Acquire));
        let consumer = self.consumer.clone();
        let topic = self.options.topic.clone();
        let timeout = self.options.request_timeout;
        tokio::task::spawn_blocking(move || {
            let c = consumer.lock();
            let (_, high) = c
                .fetch_watermarks(&topic, 0, timeout)
                .map_err(kafka_err("reading the topic's offsets"))?;
            let high = high.max(0) as u64;
            if from >= high {
                return Ok(Vec::new());
            }
            read_blocking(&c, &topic, from, high, max_bytes, timeout)
        })
        .await
        .map_err(closed)?
    }

    async fn truncate(&self, below: WalOffset) -> Result<()> {
        let below = below.0.min(self.next.load(Ordering::Acquire));
        if below <= self.low.load(Ordering::Acquire) {
            return Ok(());
        }
        self.commit_watermark(below).await?;
        self.low.fetch_max(below, Ordering::AcqRel);
        if self.options.delete_records {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&self.options.topic, 0, Offset::Offset(below as i64))
                .map_err(kafka_err("deleting records"))?;
            let opts = AdminOptions::new().operation_timeout(Some(self.options.request_timeout));
            if let Err(e) = self.admin.delete_records(&tpl, &opts).await {
                // The watermark already hides the records; space is reclaimed later.
                tracing::warn!(topic = %self.options.topic, error = %e, "DeleteRecords failed");
            }
        }
        Ok(())
    }

    fn next_offset(&self) -> WalOffset {
        WalOffset(self.next.load(Ordering::Acquire))
    }

    fn low_watermark(&self) -> WalOffset {
        WalOffset(self.low.load(Ordering::Acquire))
    }

    async fn end_offset(&self) -> Result<WalOffset> {
        let consumer = self.consumer.clone();
        let topic = self.options.topic.clone();
        let timeout = self.options.request_timeout;
        tokio::task::spawn_blocking(move || {
            let (_, high) = consumer
                .lock()
                .fetch_watermarks(&topic, 0, timeout)
                .map_err(kafka_err("reading the topic's offsets"))?;
            Ok(WalOffset(high.max(0) as u64))
        })
        .await
        .map_err(closed)?
    }
}

#[cfg(test)]
mod tests;
