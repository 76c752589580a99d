//! The test broker alone, without Strata: a ledger of every record it
//! acknowledged (`acks=all`), checked after the broker is stopped with
//! SIGTERM and restarted, and again after it is killed with SIGKILL under
//! load and restarted. Every acknowledged record must be readable at the
//! offset it was acknowledged at, with the same payload, and the topic's low
//! watermark must not move. Strata's Kafka fault tests prove something only
//! if their broker passes this.
//!
//! Topics are created as Strata creates its WAL topics (one partition,
//! `retention.ms=-1`, `retention.bytes=-1`, `cleanup.policy=delete`) and
//! produced to as Strata does with idempotence off (see "The test broker"
//! in docs/operations/kafka-wal.md).

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    config::ClientConfig,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    producer::{FutureProducer, FutureRecord},
    Message, Offset, TopicPartitionList,
};
use strata_integration_tests::Services;

/// Concurrent topics (Strata has one per shard).
const TOPICS: usize = 4;
/// Records in flight per topic at a time (a group commit).
const BATCH: usize = 20;

/// (topic, offset) → payload of every acknowledged record.
type Ledger = BTreeMap<(String, i64), Vec<u8>>;

fn client_config(brokers: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers)
        .set("socket.timeout.ms", "10000");
    cfg
}

async fn create_topic(brokers: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers).create().unwrap();
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1))
        .set("retention.ms", "-1")
        .set("retention.bytes", "-1")
        .set("cleanup.policy", "delete");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin.create_topics([&new], &opts).await.unwrap() {
        r.unwrap_or_else(|(t, code)| panic!("creating {t}: {code:?}"));
    }
}

/// The producer settings of Strata's Kafka WAL with idempotence off.
fn producer(brokers: &str) -> FutureProducer {
    client_config(brokers)
        .set("enable.idempotence", "false")
        .set("message.send.max.retries", "0")
        .set("max.in.flight.requests.per.connection", "1")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("message.timeout.ms", "3000")
        .set("compression.type", "none")
        .create()
        .unwrap()
}

/// What the writers saw.
#[derive(Default)]
struct Record {
    ledger: Ledger,
    failed: usize,
}

/// Produces batches of [`BATCH`] records to `topic` until `stop` is set or
/// `limit` records were acknowledged; records each acknowledgement.
async fn write(
    producer: FutureProducer,
    topic: String,
    record: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
    limit: usize,
    mut next: u64,
) -> u64 {
    let mut acked = 0usize;
    while !stop.load(Ordering::Acquire) && acked < limit {
        let mut pending = Vec::with_capacity(BATCH);
        for _ in 0..BATCH {
            let payload = format!("{topic}/{next}/{}", "x".repeat((next % 97) as usize));
            next += 1;
            let key = next.to_le_bytes();
            let sent = producer.send_result(
                FutureRecord::to(&topic)
                    .partition(0)
                    .key(&key[..])
                    .payload(payload.as_bytes()),
            );
            match sent {
                Ok(f) => pending.push((payload, f)),
                Err(_) => record.lock().unwrap().failed += 1,
            }
        }
        for (payload, f) in pending {
            match f.await {
                Ok(Ok(delivery)) => {
                    acked += 1;
                    let mut r = record.lock().unwrap();
                    let previous = r
                        .ledger
                        .insert((topic.clone(), delivery.offset), payload.into_bytes());
                    assert!(
                        previous.is_none(),
                        "the broker acknowledged offset {} of {topic} twice",
                        delivery.offset
                    );
                }
                _ => record.lock().unwrap().failed += 1,
            }
        }
        if record.lock().unwrap().failed > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    next
}

/// Low and high watermark of partition 0, retrying while the broker starts.
fn watermarks(consumer: &BaseConsumer, topic: &str) -> (i64, i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match consumer.fetch_watermarks(topic, 0, Duration::from_secs(5)) {
            Ok(w) => return w,
            Err(e) if Instant::now() < deadline => {
                eprintln!("watermarks of {topic}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => panic!("watermarks of {topic}: {e}"),
        }
    }
}

/// The records of `topic` from offset 0 to its end. An out-of-range start
/// (records below it deleted) is an error, never a silent reset; a read that
/// makes no progress for 15 s ends with what it has (the caller reports
/// the rest as missing).
fn read_all(brokers: &str, topic: &str) -> BTreeMap<i64, Vec<u8>> {
    let consumer: BaseConsumer = client_config(brokers)
        .set("group.id", format!("ledger-{topic}"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "error")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(0))
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut out = BTreeMap::new();
    let mut progress = Instant::now();
    loop {
        if progress.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "reading {topic}: no progress for 15 s after {} records",
                out.len()
            );
            return out;
        }
        match consumer.poll(Duration::from_secs(1)) {
            None => continue,
            Some(Ok(m)) => {
                progress = Instant::now();
                out.insert(m.offset(), m.payload().unwrap_or_default().to_vec());
            }
            // The end the broker reports (its high watermark).
            Some(Err(KafkaError::PartitionEOF(_))) => return out,
            Some(Err(e)) => {
                eprintln!("reading {topic} from offset 0: {e}");
                return out;
            }
        }
    }
}

/// Checks the ledger against what the broker now serves.
fn verify(brokers: &str, topics: &[String], ledger: &Ledger, when: &str) {
    let probe: BaseConsumer = client_config(brokers).create().unwrap();
    let mut found = 0usize;
    let mut problems = Vec::new();
    for topic in topics {
        let (low, high) = watermarks(&probe, topic);
        eprintln!("  {topic}: low {low}, high {high}");
        if low != 0 {
            problems.push(format!("{topic}: low watermark moved to {low}"));
        }
        let served = if high > 0 {
            read_all(brokers, topic)
        } else {
            BTreeMap::new()
        };
        for ((t, offset), payload) in ledger.range((topic.clone(), i64::MIN)..) {
            if t != topic {
                break;
            }
            match served.get(offset) {
                Some(p) if p == payload => found += 1,
                Some(p) => problems.push(format!(
                    "{topic}@{offset}: payload {:?}, acknowledged {:?}",
                    String::from_utf8_lossy(p),
                    String::from_utf8_lossy(payload)
                )),
                None => problems.push(format!("{topic}@{offset}: missing (high {high})")),
            }
        }
    }
    eprintln!(
        "broker ledger {when}: {} records acknowledged, {found} found intact",
        ledger.len()
    );
    assert!(
        problems.is_empty(),
        "{when}: {} of {} acknowledged records lost or changed, e.g. {:?}",
        ledger.len() - found,
        ledger.len(),
        &problems[..problems.len().min(8)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_keeps_every_acknowledged_record_across_sigterm_and_kill9() {
    let services = Services::private();
    let brokers = services.var("STRATA_KAFKA_BROKERS").unwrap();
    let unique = std::process::id();
    let topics: Vec<String> = (0..TOPICS)
        .map(|i| format!("ledger-{unique}-{i}"))
        .collect();
    for t in &topics {
        create_topic(&brokers, t).await;
    }
    let producer = producer(&brokers);
    let record = Arc::new(Mutex::new(Record::default()));
    let mut next: Vec<u64> = vec![0; TOPICS];

    // 1. A quiet stop: write, SIGTERM, restart.
    let never = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = topics
        .iter()
        .zip(&next)
        .map(|(t, n)| {
            tokio::spawn(write(
                producer.clone(),
                t.clone(),
                record.clone(),
                never.clone(),
                300,
                *n,
            ))
        })
        .collect();
    for (i, w) in writers.into_iter().enumerate() {
        next[i] = w.await.unwrap();
    }
    assert_eq!(
        record.lock().unwrap().failed,
        0,
        "writes failed with the broker up"
    );
    let ledger = record.lock().unwrap().ledger.clone();
    verify(&brokers, &topics, &ledger, "before any restart");
    services.stop_broker();
    services.start_broker();
    verify(&brokers, &topics, &ledger, "after SIGTERM and restart");

    // 2. kill -9 while writes are in flight, restart, write on.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = topics
        .iter()
        .zip(&next)
        .map(|(t, n)| {
            tokio::spawn(write(
                producer.clone(),
                t.clone(),
                record.clone(),
                stop.clone(),
                usize::MAX,
                *n,
            ))
        })
        .collect();
    let grown = |by: usize, within: Duration| {
        let record = record.clone();
        async move {
            let from = record.lock().unwrap().ledger.len();
            let started = Instant::now();
            while record.lock().unwrap().ledger.len() < from + by {
                assert!(
                    started.elapsed() < within,
                    "writes did not make progress ({} acknowledged)",
                    record.lock().unwrap().ledger.len()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    grown(400, Duration::from_secs(60)).await;
    services.kill_broker();
    let at_kill = record.lock().unwrap().ledger.len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    services.start_broker();
    grown(400, Duration::from_secs(60)).await;
    stop.store(true, Ordering::Release);
    for w in writers {
        w.await.unwrap();
    }
    let (ledger, failed) = {
        let r = record.lock().unwrap();
        (r.ledger.clone(), r.failed)
    };
    eprintln!(
        "broker ledger: {at_kill} acknowledged before the kill -9, {} in all, {failed} sends failed",
        ledger.len()
    );
    verify(&brokers, &topics, &ledger, "after kill -9 and restart");

    // 3. Once more, a kill -9 of a quiet broker.
    services.kill_broker();
    services.start_broker();
    verify(&brokers, &topics, &ledger, "after a second kill -9");
}

/// A WAL read below the broker's first record fails with `RecordsLost`; it
/// does not start silently at the first record the broker still has.
/// tansu answers such a fetch from its first record, with no
/// OFFSET_OUT_OF_RANGE, so `auto.offset.reset=error` alone never fired:
/// here its retention job (which runs when the broker starts) deletes a
/// topic's records behind the WAL's back, leaving its watermarks as they
/// were, and the read from offset 0 must notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_read_below_the_brokers_first_record_is_refused_not_skipped() {
    use strata_wal::{kafka::KafkaWal, Epoch, Error as WalError, Wal, WalOffset};
    let services = Services::private();
    let brokers = services.var("STRATA_KAFKA_BROKERS").unwrap();
    let topic = format!("expired-{}", std::process::id());
    // The topic exists before the WAL opens it, with a retention of 1 s.
    let admin: AdminClient<DefaultClientContext> = client_config(&brokers).create().unwrap();
    let new = NewTopic::new(&topic, 1, TopicReplication::Fixed(1))
        .set("retention.ms", "1000")
        .set("cleanup.policy", "delete");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin.create_topics([&new], &opts).await.unwrap() {
        r.unwrap();
    }
    let mut options = strata_wal::kafka::KafkaWalOptions::new(brokers.clone(), topic.clone());
    options.idempotence = false;
    let wal = KafkaWal::open(options.clone()).await.unwrap();
    wal.append(Epoch(1), vec![prost::bytes::Bytes::from_static(b"old"); 5])
        .await
        .unwrap();
    drop(wal);
    tokio::time::sleep(Duration::from_secs(3)).await;
    services.stop_broker();
    services.start_broker();

    let wal = KafkaWal::open(options).await.unwrap();
    wal.append(Epoch(2), vec![prost::bytes::Bytes::from_static(b"new"); 2])
        .await
        .unwrap();
    match wal.read(WalOffset(0), 1 << 20).await {
        Err(e @ WalError::RecordsLost { .. }) => {
            assert!(e.to_string().contains("records are gone"), "{e}");
        }
        Ok(entries) => panic!(
            "the read from 0 answered {} records starting at offset {:?}; the expired ones were skipped silently",
            entries.len(),
            entries.first().map(|e| e.offset)
        ),
        Err(e) => panic!("unexpected error: {e}"),
    }
}
