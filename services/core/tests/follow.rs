//! A `Follower` keeps hearing a subject when its consumer is deleted, when
//! nats-server is killed and restarted on its storage, and when the server
//! comes back without its state (the stream made again by a publisher), and
//! delivers no message twice because of it.

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use bytes::Bytes;
use futures::StreamExt;
use inception_core::follow::Follower;
use inception_core::local_nats::LocalNats;
use inception_core::nats::Streams;
use inception_core::shutdown::CancellationToken;
use std::time::Duration;

async fn next(follower: &mut Follower) -> String {
    match tokio::time::timeout(Duration::from_secs(30), follower.next()).await {
        Ok(Some(Ok(m))) => String::from_utf8_lossy(&m.payload).into_owned(),
        Ok(other) => panic!("not a message: {:?}", other.map(|r| r.map(|m| m.payload.clone()))),
        Err(_) => panic!("nothing within 30 s"),
    }
}

async fn publish(streams: &Streams, subject: &str, text: &str) {
    let stop = CancellationToken::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        streams.publish_acked(subject, Bytes::from(text.to_string()), text, &stop),
    )
    .await
    .expect("published within 30 s")
    .expect("acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_outlives_its_consumer_and_the_server() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut nats = LocalNats::start(&dir.path().join("nats")).expect("nats-server");
    let port = nats.port();
    let options = async_nats::ConnectOptions::new().retry_on_initial_connect();
    let client = options.connect(nats.url()).await.expect("connect");
    let streams = Streams::new(client, "inception");
    let stream = streams.shards().await.expect("stream");
    let subject = streams.subjects.shards("flowers", "train");
    let config = pull::Config {
        filter_subject: subject.clone(),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::None,
        inactive_threshold: Duration::from_secs(120),
        ..Default::default()
    };
    let mut follower = Follower::new(stream.clone(), config, "test follower");
    publish(&streams, &subject, "a").await;
    assert_eq!(next(&mut follower).await, "a");

    // An operator (or the inactivity threshold) deletes the consumer.
    let names: Vec<String> = stream.consumer_names().filter_map(|n| async { n.ok() }).collect().await;
    assert_eq!(names.len(), 1, "{names:?}");
    stream.delete_consumer(&names[0]).await.expect("delete consumer");
    publish(&streams, &subject, "b").await;
    assert_eq!(next(&mut follower).await, "b", "the new consumer starts after the last message");
    assert_eq!(follower.subscriptions(), 2);

    // nats-server killed and restarted on its file storage.
    nats.kill();
    nats = LocalNats::start_on(&dir.path().join("nats"), Some(port)).expect("restart");
    publish(&streams, &subject, "c").await;
    assert_eq!(next(&mut follower).await, "c");

    // A server that lost its state: the publisher makes the stream again.
    nats.kill();
    let _fresh = LocalNats::start_on(&dir.path().join("nats-empty"), Some(port)).expect("restart empty");
    let streams2 = streams.clone();
    tokio::time::timeout(Duration::from_secs(30), async move {
        while streams2.shards().await.is_err() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("stream made again");
    publish(&streams, &subject, "d").await;
    assert_eq!(next(&mut follower).await, "d");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), follower.next()).await.is_err(),
        "nothing delivered twice"
    );
}
