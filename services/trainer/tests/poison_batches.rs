//! A batch message the trainer cannot train on (an empty batch, one whose
//! sizes disagree, one larger than `pipeline.batch_size`) is terminated: it leaves the work queue at once, is never
//! delivered again, and the good batch queued behind it is trained on. An
//! empty batch used to reach the step, give a loss of NaN and stop the
//! trainer ("Model diverged"), and the message came back at every restart.

use bytes::Bytes;
use inception_core::batch::Batch;
use inception_core::local_nats::LocalNats;
use inception_core::nats::Streams;
use inception_core::settings::StoreSettings;
use inception_core::shutdown::CancellationToken;
use inception_core::{keys, Settings, Store};
use inception_proto::pipeline::BatchReady;
use inception_proto::Message;
use inception_trainer::batches::{BatchSource, BatchSpec, Outcome};
use std::time::{Duration, Instant};

const DATASET: &str = "flowers";
const SIZE: u32 = 75;

/// A batch of `n` black images whose header declares `declared` images.
fn batch_object(n: usize, declared: usize) -> Vec<u8> {
    let mut bytes =
        Batch { image_size: SIZE, images: vec![0; n * (SIZE * SIZE * 3) as usize], labels: vec![1; n] }.to_bytes();
    if declared != n {
        let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
        let header = String::from_utf8(bytes[8..8 + header_len].to_vec()).expect("utf-8 header");
        let forged = header.replacen(&format!("[{n},"), &format!("[{declared},"), 1);
        assert_eq!(forged.len(), header.len(), "same length, so the offsets stay right");
        bytes[8..8 + header_len].copy_from_slice(forged.as_bytes());
    }
    bytes
}

async fn queue(store: &Store, streams: &Streams, name: &str, object: Vec<u8>) -> String {
    let key = keys::batch(DATASET, name, 1);
    store.put(&key, Bytes::from(object)).await.expect("batch object written");
    let ready = BatchReady { uri: key.clone(), ..Default::default() };
    let subject = streams.subjects.batches(DATASET);
    streams
        .publish_acked(&subject, Bytes::from(ready.encode_to_vec()), &key, &CancellationToken::new())
        .await
        .expect("queued");
    key
}

/// A nats-server with the batch queue, a store, and the trainer's consumer
/// with `ack_wait`.
struct Queue {
    _dir: tempfile::TempDir,
    _nats: LocalNats,
    streams: Streams,
    store: Store,
    consumer: Option<async_nats::jetstream::consumer::PullConsumer>,
}

impl Queue {
    async fn start(ack_wait: Duration) -> Queue {
        let dir = tempfile::tempdir().expect("temp dir");
        let nats = LocalNats::start(&dir.path().join("nats")).expect("nats-server");
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let streams = Streams::new(client, "inception");
        let stream = streams.batches(8).await.expect("batch stream");
        let consumer = streams.batch_consumer(&stream, DATASET, ack_wait).await.expect("consumer");
        let url = format!("file://{}", dir.path().join("store").display());
        let store =
            Store::open(&StoreSettings { url, ..Settings::defaults().expect("defaults").store }).expect("store");
        Queue { _dir: dir, _nats: nats, streams, store, consumer: Some(consumer) }
    }

    /// The trainer's view of the queue: batches of 2 images of 3 classes,
    /// delivered at most 3 times.
    fn source(&mut self) -> BatchSource {
        let spec = BatchSpec {
            dataset: DATASET.into(),
            image_size: SIZE,
            num_classes: 3,
            max_images: 2,
            towers: 1,
            max_deliveries: 3,
        };
        BatchSource::new(self.consumer.take().expect("one source per queue"), self.store.clone(), spec)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_batches_are_terminated_and_the_next_good_one_is_trained_on() {
    // A message left unsettled would be delivered again after a second.
    let mut queue_under_test = Queue::start(Duration::from_secs(1)).await;
    let source = queue_under_test.source();
    let (streams, store) = (&queue_under_test.streams, &queue_under_test.store);

    queue(store, streams, "empty", batch_object(0, 0)).await;
    queue(store, streams, "short", batch_object(1, 2)).await;
    queue(store, streams, "large", batch_object(3, 3)).await; // more than pipeline.batch_size
    let good = queue(store, streams, "good", batch_object(2, 2)).await;

    let shutdown = CancellationToken::new();
    let delivery = tokio::time::timeout(Duration::from_secs(30), source.next(&shutdown))
        .await
        .expect("a batch within 30 s")
        .expect("a batch");
    assert_eq!(delivery.key, good, "the empty, short and large batches are skipped");
    assert_eq!(delivery.batch.len(), 2);
    delivery.settle(Outcome::Trained, store).await;

    // Terminated messages leave the work queue (as the acknowledged one does).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut stream = streams.context.get_stream(streams.subjects.stream_name("BATCHES")).await.expect("stream");
        let left = stream.info().await.expect("stream info").state.messages;
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} messages still queued");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And none of them comes back after the acknowledgement wait.
    let again = tokio::time::timeout(Duration::from_secs(3), source.next(&shutdown)).await;
    assert!(again.is_err(), "nothing is delivered again");
}

/// Rule 2 of issue 16: a batch whose step fails every time (or kills the
/// trainer during it) is handed back, but only `max_deliveries` times: then
/// it is terminated, and the good batch behind it is trained on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_handed_back_too_often_is_terminated() {
    let mut queue_under_test = Queue::start(Duration::from_secs(30)).await;
    let source = queue_under_test.source();
    let (streams, store) = (&queue_under_test.streams, &queue_under_test.store);
    let poison = queue(store, streams, "poison", batch_object(2, 2)).await;
    let shutdown = CancellationToken::new();
    let next = || async {
        tokio::time::timeout(Duration::from_secs(30), source.next(&shutdown))
            .await
            .expect("a batch within 30 s")
            .expect("a batch")
    };
    for attempt in 1..=3 {
        let delivery = next().await;
        assert_eq!(delivery.key, poison, "delivery {attempt} is the failing batch again");
        delivery.settle(Outcome::StepFailed, store).await;
    }
    let good = queue(store, streams, "good", batch_object(2, 2)).await;
    let delivery = next().await;
    assert_eq!(delivery.key, good, "the fourth delivery of the failing batch is terminated, not trained on");
    delivery.settle(Outcome::Trained, store).await;
    let again = tokio::time::timeout(Duration::from_secs(3), source.next(&shutdown)).await;
    assert!(again.is_err(), "the failing batch never comes back");
}
