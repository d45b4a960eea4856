//! The tansu broker and the Kafka helpers, end to end with librdkafka:
//! create a topic, produce, consume in a group, commit, read the offsets
//! back. Needs the tansu binary (`scripts/kafka.sh`, run by setup).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nubo_test_support::kafka::{self, Broker};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

const RECORDS: usize = 1000;
const PARTITIONS: i32 = 3;

#[test]
fn produce_consume_commit_round_trip() {
    let t = Instant::now();
    let broker = Broker::start();
    eprintln!("broker up in {:?}", t.elapsed());
    let bs = broker.bootstrap();
    let t = Instant::now();
    kafka::create_topic(&bs, "orders", PARTITIONS);
    eprintln!("topic created in {:?}", t.elapsed());

    let keys: Vec<String> = (0..RECORDS).map(|i| format!("k{i}")).collect();
    let values: Vec<String> = (0..RECORDS).map(|i| format!("order {i}")).collect();
    let records: Vec<kafka::Record> = (0..RECORDS)
        .map(|i| {
            (
                i as i32 % PARTITIONS,
                Some(keys[i].as_bytes()),
                values[i].as_bytes(),
            )
        })
        .collect();
    let t = Instant::now();
    kafka::produce(&bs, "orders", &records);
    eprintln!("{RECORDS} records produced in {:?}", t.elapsed());
    let t = Instant::now();
    let high = kafka::high_watermarks(&bs, "orders");
    eprintln!("high watermarks read in {:?}", t.elapsed());
    assert_eq!(high, vec![334, 333, 333], "records per partition");
    assert_eq!(
        kafka::committed(&bs, "g1", "orders"),
        vec![-1; PARTITIONS as usize],
        "nothing committed yet"
    );

    let t = Instant::now();
    let consumer: BaseConsumer = kafka::group_config(&bs, "g1").create().unwrap();
    consumer.subscribe(&["orders"]).unwrap();
    let mut seen = vec![Vec::new(); PARTITIONS as usize];
    let mut first = None;
    let mut n = 0;
    while n < RECORDS {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "consumed only {n} of {RECORDS} records in 60 s\n{}",
            broker.logs()
        );
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.unwrap_or_else(|e| panic!("consuming: {e}"));
        first.get_or_insert_with(|| t.elapsed());
        let i: usize = std::str::from_utf8(m.payload().unwrap())
            .unwrap()
            .strip_prefix("order ")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(m.key(), Some(keys[i].as_bytes()));
        assert_eq!(m.partition(), i as i32 % PARTITIONS, "record {i}");
        seen[m.partition() as usize].push((m.offset(), i));
        n += 1;
    }
    eprintln!(
        "{RECORDS} records consumed in {:?} (first after {:?}: the group join)",
        t.elapsed(),
        first.unwrap()
    );
    // Each partition in order, offsets 0.., in the order produced.
    for (p, got) in seen.iter().enumerate() {
        let want: Vec<(i64, usize)> = (p..RECORDS)
            .step_by(PARTITIONS as usize)
            .enumerate()
            .map(|(o, i)| (o as i64, i))
            .collect();
        assert_eq!(got, &want, "partition {p}");
    }

    consumer.commit_consumer_state(CommitMode::Sync).unwrap();
    let t = Instant::now();
    let committed = kafka::committed(&bs, "g1", "orders");
    eprintln!("committed offsets read in {:?}", t.elapsed());
    assert_eq!(committed, high, "committed = high watermarks");
    assert_eq!(committed.iter().sum::<i64>(), RECORDS as i64);
    // Another group has committed nothing.
    assert_eq!(kafka::committed(&bs, "g2", "orders"), vec![-1; 3]);
}

#[test]
fn restart_keeps_the_port_and_loses_the_data() {
    let mut broker = Broker::start();
    let bs = broker.bootstrap();
    kafka::create_topic(&bs, "t", 1);
    kafka::produce(&bs, "t", &[(0, None, b"x")]);
    assert_eq!(kafka::high_watermarks(&bs, "t"), vec![1]);

    broker.stop();
    assert!(
        std::net::TcpStream::connect(&bs).is_err(),
        "nothing listens once stopped"
    );
    let t = Instant::now();
    broker.restart();
    eprintln!("broker restarted in {:?}", t.elapsed());
    assert_eq!(broker.bootstrap(), bs);
    // Memory storage: the topic is gone; it can be created again.
    kafka::create_topic(&bs, "t", 2);
    assert_eq!(kafka::high_watermarks(&bs, "t"), vec![0, 0]);
}

/// tansu 0.6's ListOffsets, as the module doc describes it; when this
/// fails, tansu changed: update the doc (and `high_watermarks`).
#[test]
fn tansu_list_offsets_quirks() {
    let broker = Broker::start();
    let bs = broker.bootstrap();
    kafka::create_topic(&bs, "q", 1);
    let c: BaseConsumer = kafka::config(&bs).set("group.id", "q").create().unwrap();
    let listed = || c.fetch_watermarks("q", 0, Duration::from_secs(10)).unwrap();
    // One produce call: one batch of 10 records, offsets 0..=9.
    let recs: Vec<kafka::Record> = (0..10).map(|_| (0, None, &b"r"[..])).collect();
    kafka::produce(&bs, "q", &recs);
    assert_eq!(
        listed(),
        (0, 1),
        "latest = the last batch's base offset + 1"
    );
    assert_eq!(kafka::high_watermarks(&bs, "q"), vec![10], "corrected");
    // A batch of one record: right again.
    kafka::produce(&bs, "q", &[(0, None, b"s")]);
    assert_eq!(listed(), (0, 11));
    assert_eq!(kafka::high_watermarks(&bs, "q"), vec![11]);
    // By timestamp: the earliest offset, whatever the timestamp (Kafka
    // gives the first record at or after it, or the end).
    let mut tpl = TopicPartitionList::new();
    let future = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 3_600_000;
    tpl.add_partition_offset("q", 0, Offset::Offset(future))
        .unwrap();
    let got = c.offsets_for_times(tpl, Duration::from_secs(10)).unwrap();
    assert_eq!(
        got.find_partition("q", 0).unwrap().offset(),
        Offset::Offset(0)
    );
}
