//! The worker pool: N threads share the models read-only and take jobs from a queue whose
//! admission is bounded, so that a burst of requests is answered 429 instead of piling up.
//!
//! A job reports back in two phases. First, once a worker has decoded the image and computed its
//! target, a [`Start`]: either the stream of events, or an error the HTTP layer can still answer
//! with a status. Then, events, the same JSON as `describe --json`. A client that goes away drops
//! the receiving end; the worker notices at its next send and stops, freeing itself for the next
//! job.

use super::error::ApiError;
use axum::http::StatusCode;
use clipsteer::events::{error_json, step_json};
use clipsteer::image::{decode_image_bytes, DecodeLimits};
use clipsteer::pipeline::{DescribeModels, Describer};
use serde_json::Value;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

/// The models every worker shares. Only `&self` methods are called on them, so sharing needs no
/// lock.
pub struct Models {
    /// The LM and CLIP, their specs the names clients see (see [`super::public_model`]): never a
    /// path on the server.
    pub describe: Arc<DescribeModels>,
    /// The done event's `models` field.
    pub provenance: Value,
    /// The names the `settings` record gives the models.
    pub lm_identity: String,
    pub clip_identity: String,
}

pub struct Job {
    pub image: Vec<u8>,
    /// Shown as the `image` field of events (the uploaded file's name).
    pub image_name: Option<String>,
    /// The request's options over the shared models.
    pub describer: Describer,
    /// When the request's time limit runs out.
    pub deadline: Instant,
    /// The latest a worker may start the job: one reached later would spend the worker on a
    /// description it has too little time left to finish.
    pub start_by: Instant,
    pub start: oneshot::Sender<Start>,
    /// Held until the job ends: it is the job's place in the bounded queue.
    pub permit: OwnedSemaphorePermit,
}

pub enum Start {
    Events(mpsc::UnboundedReceiver<Value>),
    Rejected(ApiError),
}

/// Why a describe loop was stopped from outside.
#[derive(Debug)]
enum Abort {
    ClientGone,
    TimeLimit,
}

impl std::fmt::Display for Abort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Abort::ClientGone => write!(f, "the client disconnected"),
            Abort::TimeLimit => write!(f, "the request's time limit ran out"),
        }
    }
}

impl std::error::Error for Abort {}

/// A job in the queue. The worker that reaches it takes it out; a client that leaves first
/// takes it out too (see [`Withdraw`]), freeing its upload and its place at once.
type Slot = Arc<Mutex<Option<Job>>>;

/// Held by the request while its job waits; dropping it (the client left, or gave up waiting)
/// withdraws a job no worker has taken yet.
pub struct Withdraw(Slot);

impl Drop for Withdraw {
    fn drop(&mut self) {
        let withdrawn = match self.0.lock() {
            Ok(mut slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if withdrawn.is_some() {
            errln!("job withdrawn: the client left while it waited in the queue");
        }
    }
}

fn take(slot: &Slot) -> Option<Job> {
    match slot.lock() {
        Ok(mut slot) => slot.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    }
}

pub struct Pool {
    sender: mpsc::UnboundedSender<Slot>,
    admission: Arc<Semaphore>,
    pub workers: usize,
    pub queue: usize,
    running: Arc<AtomicUsize>,
    /// Mean seconds of recent jobs, in milliseconds, for Retry-After.
    recent_job_ms: Arc<AtomicU64>,
}

impl Pool {
    /// `workers` threads, each running the jobs' describers (which share the models).
    pub fn start(workers: usize, queue: usize, limits: DecodeLimits) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel::<Slot>();
        let receiver = Arc::new(Mutex::new(receiver));
        let running = Arc::new(AtomicUsize::new(0));
        let recent_job_ms = Arc::new(AtomicU64::new(2000));
        for index in 0..workers {
            let receiver = Arc::clone(&receiver);
            let running = Arc::clone(&running);
            let recent_job_ms = Arc::clone(&recent_job_ms);
            let spawned = std::thread::Builder::new()
                .name(format!("clipsteer-worker-{index}"))
                .spawn(move || loop {
                    // The lock is held only while waiting for the next job, never while working.
                    let slot = match receiver.lock() {
                        Ok(mut receiver) => receiver.blocking_recv(),
                        Err(poisoned) => poisoned.into_inner().blocking_recv(),
                    };
                    let Some(slot) = slot else { return };
                    let Some(job) = take(&slot) else { continue };
                    running.fetch_add(1, Ordering::SeqCst);
                    let started = Instant::now();
                    run_job(job, limits);
                    let ms = started.elapsed().as_millis() as u64;
                    let old = recent_job_ms.load(Ordering::Relaxed);
                    recent_job_ms.store((old * 3 + ms) / 4, Ordering::Relaxed);
                    running.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                errln!("warning: cannot start worker {index}: {e}");
            }
        }
        Self {
            sender,
            admission: Arc::new(Semaphore::new(workers + queue)),
            workers,
            queue,
            running,
            recent_job_ms,
        }
    }

    /// A place in the queue, or a 429 telling the client when to come back.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        Arc::clone(&self.admission)
            .try_acquire_owned()
            .map_err(|_| {
                let wait = self.retry_after_seconds();
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "the server is busy ({} running, {} waiting); retry in {wait} s",
                        self.workers, self.queue
                    ),
                )
                .retry_after(wait)
            })
    }

    /// About one job's time: the queue moves on by one when a job ends.
    pub fn retry_after_seconds(&self) -> u64 {
        let ms = self.recent_job_ms.load(Ordering::Relaxed);
        ms.div_ceil(1000).clamp(1, 60)
    }

    pub fn submit(&self, job: Job) -> Result<Withdraw, ApiError> {
        let slot: Slot = Arc::new(Mutex::new(Some(job)));
        self.sender
            .send(Arc::clone(&slot))
            .map_err(|_| ApiError::internal("the worker pool has stopped; restart the server"))?;
        Ok(Withdraw(slot))
    }

    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Jobs admitted and not yet finished, running or waiting.
    pub fn admitted(&self) -> usize {
        (self.workers + self.queue).saturating_sub(self.admission.available_permits())
    }
}

/// The most elongated image accepted, as long side : short side.
pub const MAX_ASPECT_RATIO: u32 = 100;

/// Refuses images too elongated to preprocess: CLIP's resize scales the short side to the model's
/// size, so an 8192×1 image would become a 1.8-million-pixel-long strip (over a gigabyte) before
/// the crop. Real photos and panoramas are far below the bound.
pub fn check_proportions(width: u32, height: u32) -> Result<(), String> {
    let (short, long) = (width.min(height), width.max(height));
    if short == 0 || long / short >= MAX_ASPECT_RATIO {
        return Err(format!(
            "the image is {width}×{height}, elongated {MAX_ASPECT_RATIO}:1 or more; crop it to a less extreme shape"
        ));
    }
    Ok(())
}

fn run_job(job: Job, limits: DecodeLimits) {
    let Job {
        image,
        image_name,
        describer,
        deadline,
        start_by,
        start,
        permit,
    } = job;
    // Dropped at the end of this function, whatever happens: the queue place is given back.
    let _permit = permit;
    if start.is_closed() {
        errln!("job skipped: the client disconnected while it waited in the queue");
        return;
    }
    if Instant::now() >= start_by {
        let _ = start.send(Start::Rejected(queue_timeout(2)));
        return;
    }
    let mut start = Some(start);
    let mut events: Option<mpsc::UnboundedSender<Value>> = None;
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        run_started(
            &describer,
            &image,
            image_name.as_deref(),
            deadline,
            limits,
            &mut start,
            &mut events,
        )
    }));
    if outcome.is_err() {
        // The panic message went to stderr through the default hook; the client gets a status
        // or an event, and the worker lives on.
        let message = "internal error while describing the image; the server log has details";
        if let Some(start) = start.take() {
            let _ = start.send(Start::Rejected(ApiError::internal(message)));
        } else if let Some(events) = events {
            let _ = events.send(error_json(image_name.as_deref(), message));
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_started(
    describer: &Describer,
    image: &[u8],
    image_name: Option<&str>,
    deadline: Instant,
    limits: DecodeLimits,
    start: &mut Option<oneshot::Sender<Start>>,
    events_out: &mut Option<mpsc::UnboundedSender<Value>>,
) {
    let reject = |start: &mut Option<oneshot::Sender<Start>>, error: ApiError| {
        if let Some(start) = start.take() {
            let _ = start.send(Start::Rejected(error));
        }
    };
    let decoded = match decode_image_bytes(image, limits) {
        Ok(decoded) => decoded,
        Err(e) => {
            let message = format!("the image field: {}", clipsteer::error_line(&e));
            return reject(start, ApiError::bad_request(message));
        }
    };
    if let Err(message) = check_proportions(decoded.width(), decoded.height()) {
        return reject(start, ApiError::bad_request(message));
    }
    // The target the CLI builds: the describer's, for every face.
    let target = match describer.target(Some(&decoded)) {
        Ok(target) => target,
        Err(e) => {
            let message = clipsteer::error_line(&e);
            errln!("error: embedding an upload: {message}");
            return reject(
                start,
                ApiError::internal(format!("cannot embed the image: {message}")),
            );
        }
    };
    drop(decoded);
    let (sender, receiver) = mpsc::unbounded_channel();
    *events_out = Some(sender.clone());
    match start.take() {
        Some(start) => {
            if start.send(Start::Events(receiver)).is_err() {
                return; // the client left while the image was embedded
            }
        }
        None => return,
    }
    let started = Instant::now();
    let result = describer.describe_target(target.as_deref(), |event| {
        if Instant::now() >= deadline {
            return Err(Abort::TimeLimit.into());
        }
        sender
            .send(step_json(image_name, event))
            .map_err(|_| Abort::ClientGone.into())
    });
    let seconds = started.elapsed().as_secs_f64();
    let last = match result {
        Ok(result) => {
            errln!(
                "job done: {} tokens in {seconds:.1} s, similarity {:.4}",
                result.token_ids.len(),
                result.similarity
            );
            describer.done_event(image_name, &result, seconds)
        }
        Err(e) => match e.downcast_ref::<Abort>() {
            Some(Abort::ClientGone) => {
                errln!("job cancelled after {seconds:.1} s: the client disconnected");
                return;
            }
            Some(Abort::TimeLimit) => error_json(
                image_name,
                &format!(
                    "the request's time limit ran out after {seconds:.1} s of describing; ask for fewer max_tokens or a smaller top_k"
                ),
            ),
            None => error_json(image_name, &clipsteer::error_line(&e)),
        },
    };
    let _ = sender.send(last);
}

/// The answer to a request that waited too long for a worker.
pub fn queue_timeout(retry_after: u64) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the request waited in the queue until too little of its time limit was left; retry when the server is less busy").retry_after(retry_after)
}

/// How long is left before `deadline` (zero when past).
pub fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}
