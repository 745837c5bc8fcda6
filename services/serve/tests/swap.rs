//! Hot swaps: while clients keep sending, the promoted pointer moves to
//! another checkpoint; no request fails, and answers switch to the new step
//! (never back). A promotion announced on NATS is served at once, long
//! before the next poll of the pointer; an older one announced later is not.

mod support;

use inception_core::local_nats::LocalNats;
use inception_core::nats::{self, Streams};
use inception_core::shutdown::CancellationToken;
use inception_core::{keys, Store};
use inception_proto::pipeline::CheckpointPromoted;
use inception_proto::Message;
use inception_serve::Classified;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{
    photo, promote, put_checkpoint, ready_server, sample, scrape, settings, start, wait_ready, JsonResponse,
};

/// Sends photos one after another until `stop`; returns the step of every
/// answer, in order, and every failure.
async fn client_loop(url: String, client: usize, stop: Arc<AtomicBool>) -> (Vec<u64>, Vec<String>) {
    let http = reqwest::Client::new();
    let (mut steps, mut failures) = (Vec::new(), Vec::new());
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        match http.post(&url).body(photo((client + n) % 5, n % 3)).send().await {
            Ok(r) if r.status() == 200 => match r.json::<Classified>().await {
                Ok(answer) => steps.push(answer.step),
                Err(e) => failures.push(format!("unreadable answer: {e}")),
            },
            Ok(r) => failures.push(format!("{}: {}", r.status(), r.text().await.unwrap_or_default())),
            Err(e) => failures.push(e.to_string()),
        }
    }
    (steps, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_under_load_fails_no_request_and_switches_the_step() {
    let metrics = support::metrics_endpoint().await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.serve.batch_size = 4;
    s.serve.max_wait = Duration::from_millis(2);
    let server = ready_server(&s).await;
    put_checkpoint(&server.store, 20).await;
    let swaps_before = sample(&scrape(metrics).await, "inception_serve_swaps_total").unwrap_or(0.0);

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> =
        (0..4).map(|c| tokio::spawn(client_loop(server.url("/v1/classify"), c, Arc::clone(&stop)))).collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    promote(&server.store, 20).await;
    // Keep sending until every client has been answered by step 20 a while.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = reqwest::get(server.url("/readyz")).await.unwrap().text().await.unwrap();
        if ready.contains("serving step 20") || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);

    for (c, client) in clients.into_iter().enumerate() {
        let (steps, failures) = client.await.unwrap();
        assert!(failures.is_empty(), "client {c}: {failures:?}");
        assert_eq!(steps.first(), Some(&10), "client {c}: {steps:?}");
        assert_eq!(steps.last(), Some(&20), "client {c}: {steps:?}");
        let switched = steps.iter().position(|&s| s == 20).unwrap();
        assert!(steps[switched..].iter().all(|&s| s == 20), "client {c} went back: {steps:?}");
        assert!(steps.iter().all(|&s| s == 10 || s == 20));
    }
    let after = scrape(metrics).await;
    assert!(sample(&after, "inception_serve_swaps_total").unwrap_or(0.0) > swaps_before, "{after}");
    server.stop().await;
}

/// The step that answers one photo at `url`.
async fn served_step(url: String) -> u64 {
    let answer: Classified =
        reqwest::Client::new().post(url).body(photo(0, 0)).send().await.unwrap().json().await.unwrap();
    answer.step
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announced_promotion_is_served_before_the_next_poll() {
    let dir = tempfile::tempdir().unwrap();
    let nats_server = LocalNats::start(&dir.path().join("nats")).unwrap();
    let mut s = settings(dir.path());
    s.nats.url = nats_server.url();
    // The first poll reads the pointer at start; the next is an hour away.
    s.serve.poll_interval = Duration::from_secs(3600);
    let store = Store::open(&s.store).unwrap();
    put_checkpoint(&store, 10).await;
    promote(&store, 10).await;
    let server = start(&s).await;
    wait_ready(&server).await;

    let client = nats::connect(&s.nats, "test", &CancellationToken::new()).await.unwrap();
    let streams = Streams::new(client, &s.nats.subject_prefix);
    let stop = CancellationToken::new();
    let follower = {
        let (streams, hints, stop) = (streams.clone(), server.server.as_ref().unwrap().hints(), stop.clone());
        let which = s.serve.checkpoint;
        tokio::spawn(
            async move { inception_serve::follow_announcements(&streams, "default", which, hints, &stop).await },
        )
    };
    put_checkpoint(&store, 30).await;
    // The pointer stays at 10 (the poll would not read it for an hour
    // anyway): only the announcement tells of step 30.
    let announce = |metadata_uri: String| CheckpointPromoted {
        run: "default".into(),
        step: 30,
        uri: keys::checkpoint_weights("default", 30),
        metadata_uri,
        precision_at_1: 0.5,
        previous_step: 10,
    };
    streams.promotions().await.unwrap();
    let subject = streams.subjects.promotions("default");
    // One that points outside the run is ignored.
    let outside = announce("checkpoints/other/model.ckpt-30.json".into()).encode_to_vec();
    let token = CancellationToken::new();
    streams.publish_acked(&subject, outside.into(), "outside", &token).await.unwrap();
    let good = announce(keys::checkpoint_metadata("default", 30)).encode_to_vec();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut step, mut sent) = (0, 0);
    while Instant::now() < deadline && step != 30 {
        // Published again until heard: the consumer may start after the first.
        sent += 1;
        streams.publish_acked(&subject, good.clone().into(), &format!("good-{sent}"), &token).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        step = served_step(server.url("/v1/classify")).await;
    }
    assert_eq!(step, 30, "the announced promotion was not served");
    // An older announcement heard late (one still queued when a poll had
    // loaded a newer pointer target) does not swap the model back.
    let stale = announce(keys::checkpoint_metadata("default", 10)).encode_to_vec();
    streams.publish_acked(&subject, stale.into(), "stale", &token).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        served_step(server.url("/v1/classify")).await,
        30,
        "an older announced checkpoint replaced the served one"
    );
    stop.cancel();
    follower.await.unwrap().unwrap();
    server.stop().await;
}
