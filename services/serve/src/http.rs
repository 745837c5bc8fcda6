//! The HTTP API: `POST /v1/classify` (a raw image body, or several images
//! as multipart/form-data), `/healthz` and `/readyz`.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use inception_core::settings::Secret;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

use crate::batcher::{Batcher, Coming, Job, Refused};
use crate::follow::Slot;
use crate::model::{ImageError, Prediction, ServedModel};

/// What the handlers share.
pub(crate) struct AppState {
    pub(crate) slot: Slot,
    pub(crate) batcher: Batcher,
    pub(crate) token: Secret,
    pub(crate) top_k: usize,
    pub(crate) max_images: usize,
    pub(crate) max_pixels: u64,
    pub(crate) run: String,
}

/// The routes, with the request-size limit.
pub(crate) fn router(state: Arc<AppState>, max_request_bytes: usize) -> Router {
    Router::new()
        .route("/v1/classify", post(classify))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(max_request_bytes))
        .with_state(state)
}

/// A refused request: its status and a message that names the problem.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    /// The image it is about (0-based), when one is.
    image: Option<usize>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), image: None }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<usize>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody { error: &self.message, image: self.image });
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The answer to `POST /v1/classify`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Classified {
    /// The run whose checkpoint answered.
    pub run: String,
    /// The global step of that checkpoint.
    pub step: u64,
    /// The store key of its metadata.
    pub checkpoint: String,
    /// One entry per image, in the request's order.
    pub results: Vec<ImageResult>,
}

/// The top-k of one image.
#[derive(Debug, Serialize, Deserialize)]
pub struct ImageResult {
    /// The image's position in the request (0-based).
    pub image: usize,
    /// Its multipart file name (or field name); absent for a raw body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its labels, most probable first.
    pub predictions: Vec<PredictionOut>,
}

/// One label of an image's top-k, as the JSON has it.
#[derive(Debug, Serialize, Deserialize)]
pub struct PredictionOut {
    /// The label's name.
    pub label: String,
    /// Its output index (1-based; 0, the background, is never returned).
    pub index: i64,
    /// Its probability.
    pub probability: f64,
}

impl From<Prediction> for PredictionOut {
    fn from(p: Prediction) -> Self {
        Self { label: p.label, index: p.index, probability: p.probability }
    }
}

#[derive(Debug, Deserialize)]
struct Params {
    top_k: Option<usize>,
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.slot.current() {
        Some(model) => {
            (StatusCode::OK, format!("ready: serving step {} ({})\n", model.step, model.key)).into_response()
        }
        None => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", state.slot.reason())).into_response(),
    }
}

/// Times and counts every request by its outcome.
async fn classify(State(state): State<Arc<AppState>>, headers: HeaderMap, request: Request) -> Response {
    let started = Instant::now();
    let response = match answer(&state, &headers, request).await {
        Ok(body) => Json(body).into_response(),
        Err(e) => {
            tracing::debug!(status = %e.status, "refused: {}", e.message);
            e.into_response()
        }
    };
    let outcome = outcome(response.status());
    metrics::counter!("inception_serve_requests_total", "outcome" => outcome).increment(1);
    metrics::histogram!("inception_serve_request_seconds", "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The `outcome` label of a response's status.
fn outcome(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200 => "ok",
        401 => "unauthorized",
        413 => "too_large",
        503 => "unavailable",
        400..=499 => "bad_request",
        _ => "error",
    }
}

async fn answer(state: &AppState, headers: &HeaderMap, request: Request) -> Result<Classified, ApiError> {
    if !authorized(headers, &state.token) {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "a valid \"Authorization: Bearer <token>\" is required"));
    }
    let top_k = top_k(state, &request)?;
    // Taken once: every image of the request is answered by this model.
    let Some(model) = state.slot.current() else {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}", state.slot.reason())));
    };
    let images = read_images(state, headers, request).await?;
    let count = images.len();
    let names: Vec<Option<String>> = images.iter().map(|(name, _)| name.clone()).collect();
    // Tells the batch worker that these images are on their way.
    let mut coming = state.batcher.coming(count);
    let pixels = preprocess(Arc::clone(&model), images, state.max_pixels).await?;
    let replies = submit(state, &model, pixels, top_k.min(model.labelled_outputs()), &mut coming)?;
    drop(coming);
    let mut results = Vec::with_capacity(count);
    for (image, (reply, name)) in replies.into_iter().zip(names).enumerate() {
        let predictions = match reply.await {
            Ok(Ok(predictions)) => predictions,
            Ok(Err(message)) => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)),
            Err(_) => return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down")),
        };
        results.push(ImageResult { image, name, predictions: predictions.into_iter().map(Into::into).collect() });
    }
    Ok(Classified { run: state.run.clone(), step: model.step, checkpoint: model.key.clone(), results })
}

/// `?top_k=N`, 1 or more; the setting's default without it.
fn top_k(state: &AppState, request: &Request) -> Result<usize, ApiError> {
    let params = Query::<Params>::try_from_uri(request.uri())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("query: {}", e.body_text())))?;
    match params.top_k {
        None => Ok(state.top_k),
        Some(0) => Err(ApiError::new(StatusCode::BAD_REQUEST, "top_k must be at least 1")),
        Some(k) => Ok(k),
    }
}

/// Whether the request carries the bearer token (when one is set).
fn authorized(headers: &HeaderMap, token: &Secret) -> bool {
    if !token.is_set() {
        return true;
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    given.is_some_and(|given| same_bytes(given.as_bytes(), token.expose().as_bytes()))
}

/// Compares in time that depends on the lengths only, not on where the
/// first difference is (no timing oracle for the token).
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The request's images with their names: each part of a multipart body,
/// or the whole body.
async fn read_images(
    state: &AppState,
    headers: &HeaderMap,
    request: Request,
) -> Result<Vec<(Option<String>, Bytes)>, ApiError> {
    let multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("multipart/form-data"));
    let images = if multipart {
        read_parts(state, request).await?
    } else {
        let body = Bytes::from_request(request, &())
            .await
            .map_err(|e| ApiError::new(e.status(), format!("request body: {}", e.body_text())))?;
        vec![(None, body)]
    };
    if images.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "no image: the multipart body has no part"));
    }
    if images.len() == 1 && images[0].1.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "empty body: send an image (or multipart parts)"));
    }
    Ok(images)
}

async fn read_parts(state: &AppState, request: Request) -> Result<Vec<(Option<String>, Bytes)>, ApiError> {
    let mut parts = Multipart::from_request(request, &())
        .await
        .map_err(|e| ApiError::new(e.status(), format!("multipart body: {}", e.body_text())))?;
    let mut images = Vec::new();
    loop {
        let field = parts
            .next_field()
            .await
            .map_err(|e| ApiError::new(e.status(), format!("multipart body: {}", e.body_text())))?;
        let Some(field) = field else { break };
        if images.len() == state.max_images {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("more than {} images in one request (serve.max_images_per_request)", state.max_images),
            ));
        }
        let name = field.file_name().or(field.name()).map(str::to_string);
        let bytes = field.bytes().await.map_err(|e| {
            let what = name.as_deref().unwrap_or("a part");
            ApiError::new(e.status(), format!("multipart body: {what}: {}", e.body_text()))
        })?;
        images.push((name, bytes));
    }
    Ok(images)
}

/// Decodes and resizes every image off the async threads; the first bad
/// one refuses the request, naming it.
async fn preprocess(
    model: Arc<ServedModel>,
    images: Vec<(Option<String>, Bytes)>,
    max_pixels: u64,
) -> Result<Vec<Vec<u8>>, ApiError> {
    tokio::task::spawn_blocking(move || {
        images
            .iter()
            .enumerate()
            .map(|(i, (name, bytes))| {
                model.preprocess(bytes, max_pixels).map_err(|e| {
                    let status = match e {
                        ImageError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                        ImageError::Unreadable(_) => StatusCode::BAD_REQUEST,
                    };
                    let named = name.as_ref().map(|n| format!(" ({n:?})")).unwrap_or_default();
                    ApiError { status, message: format!("image {i}{named}: {e}"), image: Some(i) }
                })
            })
            .collect()
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("preprocessing failed: {e}")))?
}

/// Queues every image for a forward pass on `model`.
fn submit(
    state: &AppState,
    model: &Arc<ServedModel>,
    pixels: Vec<Vec<u8>>,
    top_k: usize,
    coming: &mut Coming,
) -> Result<Vec<oneshot::Receiver<crate::batcher::Reply>>, ApiError> {
    let mut replies = Vec::with_capacity(pixels.len());
    for pixels in pixels {
        let (reply, answer) = oneshot::channel();
        let job = Job { model: Arc::clone(model), pixels, top_k: top_k.max(1), reply };
        state.batcher.submit(job, coming).map_err(|refused| match refused {
            Refused::Full => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded: too many images wait for the model (serve.queue_images); try again",
            ),
            Refused::Stopped => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
        })?;
        replies.push(answer);
    }
    Ok(replies)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_compared_whole() {
        let token = Secret::new("s3cret");
        let with = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, value.parse().unwrap());
            h
        };
        assert!(authorized(&with("Bearer s3cret"), &token));
        assert!(!authorized(&with("Bearer s3cre"), &token));
        assert!(!authorized(&with("Bearer s3cret2"), &token));
        assert!(!authorized(&with("Basic s3cret"), &token));
        assert!(!authorized(&HeaderMap::new(), &token));
        assert!(authorized(&HeaderMap::new(), &Secret::default()), "no token set: open");
    }

    #[test]
    fn outcomes_by_status() {
        assert_eq!(outcome(StatusCode::OK), "ok");
        assert_eq!(outcome(StatusCode::BAD_REQUEST), "bad_request");
        assert_eq!(outcome(StatusCode::PAYLOAD_TOO_LARGE), "too_large");
        assert_eq!(outcome(StatusCode::UNAUTHORIZED), "unauthorized");
        assert_eq!(outcome(StatusCode::SERVICE_UNAVAILABLE), "unavailable");
        assert_eq!(outcome(StatusCode::INTERNAL_SERVER_ERROR), "error");
    }
}
