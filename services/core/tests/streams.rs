//! Stream set-up right after connecting survives a nats-server that is
//! restarting at that moment: `Streams::ensure` waits for JetStream instead
//! of failing (a service starting then would otherwise exit).

use inception_core::local_nats::LocalNats;
use inception_core::nats::Streams;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_made_once_a_restarting_server_is_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("nats");
    let mut nats = LocalNats::start(&store).expect("nats-server");
    let port = nats.port();
    // Requests give up after 300 ms, so the outage outlasts several of them.
    let client = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_millis(300)))
        .connect(nats.url())
        .await
        .expect("connect");
    let streams = Streams::new(client, "inception");
    nats.kill();
    // Back in 1.5 s, on the same port and storage.
    let restart = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        LocalNats::start_on(&store, Some(port)).expect("restart nats-server")
    });
    let started = Instant::now();
    let made = tokio::time::timeout(Duration::from_secs(40), streams.batches(4)).await.expect("within 40 s");
    let _server = restart.join().expect("restart thread");
    let stream = made.expect("the stream once the server is back");
    assert!(started.elapsed() >= Duration::from_secs(1), "it did wait for the server");
    assert_eq!(stream.cached_info().config.max_messages, 4);
}

/// Rule 5 of issue 16: every stream is bounded, even one made earlier without
/// bounds, so that a flood of announcements cannot grow it without limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcement_streams_are_bounded_even_when_made_without_bounds() {
    use async_nats::jetstream::stream;
    use inception_core::nats::StreamBounds;
    let dir = tempfile::tempdir().expect("temp dir");
    let nats = LocalNats::start(&dir.path().join("nats")).expect("nats-server");
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let context = async_nats::jetstream::new(client.clone());
    // As an older version made it: no bounds at all.
    context
        .create_stream(stream::Config {
            name: "INCEPTION_SHARDS".into(),
            subjects: vec!["inception.shards.>".into()],
            ..Default::default()
        })
        .await
        .expect("unbounded stream");
    let bounds = StreamBounds { max_messages: 5, max_bytes: 1 << 20, max_age: Duration::ZERO, max_message_bytes: 2048 };
    let streams = Streams::new(client, "inception").with_bounds(bounds);
    let mut shards = streams.shards().await.expect("shards stream");
    let config = shards.info().await.expect("info").config.clone();
    assert_eq!((config.max_messages, config.max_message_size), (5, 2048), "bounded: {config:?}");
    assert_eq!(config.discard, stream::DiscardPolicy::Old);

    // A flood keeps only the newest five.
    for i in 0..20u32 {
        context.publish("inception.shards.flowers.train", i.to_string().into()).await.unwrap().await.unwrap();
    }
    let state = shards.info().await.expect("info").state.clone();
    assert_eq!(state.messages, 5, "{state:?}");
    assert_eq!(state.last_sequence, 20);
    // A message over max_message_bytes is refused by the server.
    let oversized = context.publish("inception.shards.flowers.train", vec![b'x'; 4096].into()).await.unwrap().await;
    assert!(oversized.is_err(), "an oversized announcement is refused");
    // The other streams are bounded from the start.
    for stream in [streams.checkpoints().await.unwrap(), streams.evals().await.unwrap()] {
        let c = &stream.cached_info().config;
        assert_eq!((c.max_messages, c.max_bytes, c.max_message_size), (5, 1 << 20, 2048), "{}", c.name);
    }
    assert_eq!(streams.batches(3).await.unwrap().cached_info().config.max_message_size, 2048);
}

/// JetStream reserves each stream's `max_bytes` from its storage, which is
/// 75 % of the free disk by default: on a machine short of disk a bounded
/// stream is refused ("insufficient storage resources"), which stopped the
/// trainer and the evaluator at start-up. Every stream is still made, then
/// without a byte bound, and keeps its other bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_made_on_a_server_without_room_for_their_byte_bounds() {
    use inception_core::nats::StreamBounds;
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = dir.path().join("nats.conf");
    // Room for one stream of 40 MB, not for a second.
    std::fs::write(&conf, "jetstream { max_file_store: 64MB }\n").expect("config");
    let nats = LocalNats::start_with_config(&dir.path().join("nats"), &conf).expect("nats-server");
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let bounds =
        StreamBounds { max_messages: 7, max_bytes: 40 << 20, max_age: Duration::ZERO, max_message_bytes: 4096 };
    let streams = Streams::new(client.clone(), "inception").with_bounds(bounds);
    let started = Instant::now();
    let made = [
        streams.shards().await.expect("shards"),
        streams.checkpoints().await.expect("checkpoints, without room for its reservation"),
        streams.evals().await.expect("evals"),
        streams.promotions().await.expect("promotions"),
    ];
    assert!(started.elapsed() < Duration::from_secs(10), "refusals for want of room are not retried");
    let configs: Vec<_> = made.iter().map(|s| s.cached_info().config.clone()).collect();
    assert_eq!(configs[0].max_bytes, 40 << 20, "the first one fits");
    for c in &configs[1..] {
        assert_eq!(c.max_bytes, -1, "{}: made without a byte bound", c.name);
    }
    for c in &configs {
        assert_eq!((c.max_messages, c.max_message_size), (7, 4096), "{}: still bounded", c.name);
    }
    assert_eq!(streams.batches(3).await.expect("batches").cached_info().config.max_messages, 3);
    // A service started again finds them as they are.
    let again = Streams::new(client, "inception").with_bounds(bounds);
    assert_eq!(again.evals().await.expect("evals again").cached_info().config.max_messages, 7);
}
