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
