//! `POST /v1/classify` against a tiny promoted checkpoint: raw and
//! multipart bodies, top-k without the background, corrupt and oversized
//! images, the bearer token, readiness, and batching of concurrent requests.

mod support;

use inception_core::settings::Secret;
use inception_serve::Classified;
use support::{photo, ready_server, sample, scrape, settings, start, Form, JsonResponse, MultipartRequest, Part};

async fn post_raw(url: &str, body: Vec<u8>) -> reqwest::Response {
    reqwest::Client::new().post(url).body(body).send().await.unwrap()
}

async fn error_of(response: reqwest::Response) -> String {
    let body: serde_json::Value = response.json().await.unwrap();
    body["error"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_image_as_the_body_gets_its_top_k_without_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let server = ready_server(&settings(dir.path())).await;
    let response = post_raw(&server.url("/v1/classify"), photo(0, 0)).await;
    assert_eq!(response.status(), 200);
    let answer: Classified = response.json().await.unwrap();
    assert_eq!((answer.run.as_str(), answer.step), ("default", 10));
    assert_eq!(answer.checkpoint, "checkpoints/default/model.ckpt-10.json");
    assert_eq!(answer.results.len(), 1);
    let predictions = &answer.results[0].predictions;
    assert_eq!(predictions.len(), 5, "serve.top_k = 5 by default");
    let labels = support::labels();
    for p in predictions {
        assert!(p.index >= 1, "the background class is never returned: {predictions:?}");
        assert_eq!(p.label, labels[p.index as usize - 1]);
        assert!(p.probability > 0.0 && p.probability < 1.0);
    }
    assert!(predictions.windows(2).all(|w| w[0].probability >= w[1].probability), "most probable first");

    // More than there are labels: every label, still no background.
    let many: Classified = post_raw(&server.url("/v1/classify?top_k=50"), photo(1, 0)).await.json().await.unwrap();
    let mut indices: Vec<i64> = many.results[0].predictions.iter().map(|p| p.index).collect();
    indices.sort_unstable();
    assert_eq!(indices, [1, 2, 3, 4, 5]);
    let two: Classified = post_raw(&server.url("/v1/classify?top_k=2"), photo(1, 0)).await.json().await.unwrap();
    assert_eq!(two.results[0].predictions.len(), 2);
    let zero = post_raw(&server.url("/v1/classify?top_k=0"), photo(1, 0)).await;
    assert_eq!(zero.status(), 400);
    let empty = post_raw(&server.url("/v1/classify"), Vec::new()).await;
    assert_eq!(empty.status(), 400);
    assert!(error_of(empty).await.contains("empty body"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_images_as_multipart_are_answered_in_order_with_their_names() {
    let dir = tempfile::tempdir().unwrap();
    let server = ready_server(&settings(dir.path())).await;
    let form = (0..3).fold(Form::new(), |form, i| {
        form.part(format!("image{i}"), Part::bytes(photo(i, 1)).file_name(format!("photo-{i}.jpg")))
    });
    let response =
        reqwest::Client::new().post(server.url("/v1/classify?top_k=3")).multipart(form).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let answer: Classified = response.json().await.unwrap();
    assert_eq!(answer.results.len(), 3);
    for (i, result) in answer.results.iter().enumerate() {
        assert_eq!(result.image, i);
        assert_eq!(result.name.as_deref(), Some(format!("photo-{i}.jpg").as_str()));
        assert_eq!(result.predictions.len(), 3);
        assert!(result.predictions.iter().all(|p| p.index >= 1));
    }
    // The same image gives the same answer whichever way it comes.
    let raw: Classified = post_raw(&server.url("/v1/classify?top_k=3"), photo(1, 1)).await.json().await.unwrap();
    let (a, b) = (&raw.results[0].predictions, &answer.results[1].predictions);
    assert_eq!(a.iter().map(|p| p.index).collect::<Vec<_>>(), b.iter().map(|p| p.index).collect::<Vec<_>>());
    assert!((a[0].probability - b[0].probability).abs() < 1e-5);

    let no_parts = reqwest::Client::new().post(server.url("/v1/classify")).multipart(Form::new()).send().await.unwrap();
    assert_eq!(no_parts.status(), 400);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_image_gets_a_400_naming_it_and_concurrent_requests_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.serve.max_wait = std::time::Duration::from_millis(50);
    let server = ready_server(&s).await;
    let url = server.url("/v1/classify");
    let mut truncated = photo(2, 0);
    truncated.truncate(truncated.len() / 2);
    let good: Vec<_> = (0..6).map(|i| tokio::spawn(post_raw_owned(url.clone(), photo(i % 5, 2)))).collect();
    let bad_raw = tokio::spawn(post_raw_owned(url.clone(), b"this is not an image at all".to_vec()));
    let bad_jpeg = tokio::spawn(post_raw_owned(url.clone(), truncated.clone()));
    let form = Form::new()
        .part("a", Part::bytes(photo(0, 0)).file_name("fine.jpg"))
        .part("b", Part::bytes(truncated).file_name("broken.jpg"));
    let bad_part = reqwest::Client::new().post(&url).multipart(form).send().await.unwrap();
    for g in good {
        let (status, body) = g.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = bad_raw.await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("image 0") && body.contains("not a recognised image format"), "{body}");
    let (status, body) = bad_jpeg.await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("truncated JPEG"), "{body}");
    assert_eq!(bad_part.status(), 400);
    let body: serde_json::Value = bad_part.json().await.unwrap();
    assert_eq!(body["image"], 1, "{body}");
    assert!(body["error"].as_str().unwrap().contains("\"broken.jpg\""), "{body}");
    // And the server is none the worse for them.
    assert_eq!(post_raw(&url, photo(3, 0)).await.status(), 200);
    server.stop().await;
}

async fn post_raw_owned(url: String, body: Vec<u8>) -> (u16, String) {
    let response = post_raw(&url, body).await;
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_and_images_are_refused_with_413() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.serve.max_request_bytes = 64 << 10;
    s.serve.max_images_per_request = 2;
    s.pipeline.max_image_pixels = 16 * 16;
    let server = ready_server(&s).await;
    let url = server.url("/v1/classify");
    let huge = post_raw(&url, vec![0xff; 100 << 10]).await;
    assert_eq!(huge.status(), 413);
    let form = Form::new().part("a", Part::bytes(vec![0u8; 100 << 10]).file_name("big.jpg"));
    let huge_part = reqwest::Client::new().post(&url).multipart(form).send().await.unwrap();
    assert_eq!(huge_part.status(), 413);
    let three = (0..3).fold(Form::new(), |f, i| f.part(format!("p{i}"), Part::bytes(photo(i, 0)).file_name("x.jpg")));
    let too_many = reqwest::Client::new().post(&url).multipart(three).send().await.unwrap();
    assert_eq!(too_many.status(), 413);
    assert!(error_of(too_many).await.contains("serve.max_images_per_request"));
    // The demo photos are larger than 16 x 16 pixels.
    let big_image = post_raw(&url, photo(0, 0)).await;
    assert_eq!(big_image.status(), 413);
    let message = error_of(big_image).await;
    assert!(message.contains("above the limit of 256") && message.contains("pipeline.max_image_pixels"), "{message}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_token_is_required_when_set() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.serve.bearer_token = Secret::new("open-sesame");
    let server = ready_server(&s).await;
    let url = server.url("/v1/classify");
    let client = reqwest::Client::new();
    let without = client.post(&url).body(photo(0, 0)).send().await.unwrap();
    assert_eq!(without.status(), 401);
    assert_eq!(without.headers()["www-authenticate"], "Bearer");
    let wrong = client.post(&url).bearer_auth("open-sesame!").body(photo(0, 0)).send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let with = client.post(&url).bearer_auth("open-sesame").body(photo(0, 0)).send().await.unwrap();
    assert_eq!(with.status(), 200);
    // Probes need no token.
    assert_eq!(client.get(server.url("/readyz")).send().await.unwrap().status(), 200);
    assert_eq!(client.get(server.url("/healthz")).send().await.unwrap().status(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_a_checkpoint_is_promoted() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&settings(dir.path())).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let client = reqwest::Client::new();
    let ready = client.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let reason = ready.text().await.unwrap();
    assert!(reason.contains("checkpoints/default/promoted not found"), "{reason}");
    let refused = post_raw(&server.url("/v1/classify"), photo(0, 0)).await;
    assert_eq!(refused.status(), 503);
    assert!(error_of(refused).await.contains("promoted not found"));
    assert_eq!(client.get(server.url("/healthz")).send().await.unwrap().status(), 200, "alive all the same");

    // A pointer at a checkpoint that is not there: still not ready, and says why.
    support::promote(&server.store, 7).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let reason = client.get(server.url("/readyz")).send().await.unwrap().text().await.unwrap();
    assert!(reason.contains("model.ckpt-7.json"), "{reason}");

    support::put_checkpoint(&server.store, 12).await;
    support::promote(&server.store, 12).await;
    support::wait_ready(&server).await;
    let reason = client.get(server.url("/readyz")).send().await.unwrap().text().await.unwrap();
    assert!(reason.contains("serving step 12"), "{reason}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_forward_passes() {
    let metrics = support::metrics_endpoint().await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.serve.batch_size = 8;
    s.serve.max_wait = std::time::Duration::from_millis(300);
    let server = ready_server(&s).await;
    let before = scrape(metrics).await;
    let url = server.url("/v1/classify");
    let requests: Vec<_> = (0..8).map(|i| tokio::spawn(post_raw_owned(url.clone(), photo(i % 5, 0)))).collect();
    for r in requests {
        assert_eq!(r.await.unwrap().0, 200);
    }
    let after = scrape(metrics).await;
    let count = |t: &str, s: &str| sample(t, s).unwrap_or(0.0);
    let passes =
        count(&after, "inception_serve_batch_images_count") - count(&before, "inception_serve_batch_images_count");
    let single = count(&after, "inception_serve_batch_images_bucket{le=\"1\"}")
        - count(&before, "inception_serve_batch_images_bucket{le=\"1\"}");
    assert!((1.0..8.0).contains(&passes), "8 concurrent images in {passes} forward passes:\n{after}");
    assert!(passes > single, "no pass had more than one image:\n{after}");
    assert!(count(&after, "inception_serve_requests_total{outcome=\"ok\"}") >= 8.0, "{after}");
    assert!(after.contains("inception_serve_request_seconds_bucket{outcome=\"ok\",le=\"0.005\"}"), "{after}");
    // Other tests of this process serve other steps: the gauge is there.
    assert!(sample(&after, "inception_serve_step").is_some(), "{after}");
    server.stop().await;
}
