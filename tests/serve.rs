//! `clipsteer serve` over real HTTP on loopback, with the fixture models: the event stream, the
//! page, bad inputs, load, cancellation, time limits and the WebSocket protocol.

mod serve_support;

use serve_support::*;
use std::process::Command;
use std::time::{Duration, Instant};

const QUICK: &str = r#"{"max_tokens":4,"top_k":20}"#;
/// Long enough that it cannot finish while a test watches it: each step scores 2500 candidates
/// and the prompt plus 60 tokens fills the fixture LM's whole context.
const SLOW: &str = r#"{"max_tokens":60,"top_k":2500}"#;

#[test]
fn describe_streams_the_same_events_as_the_cli() {
    let server = Server::start(&[]);
    let image = "images/photo_80x53.jpg";
    let reply = describe(&server, &fixture_bytes(image), Some(QUICK));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.content_type, "text/event-stream");
    let served = reply.events();

    let cli = Command::new(env!("CARGO_BIN_EXE_clipsteer"))
        .args([
            "describe",
            "--json",
            "--max-tokens",
            "4",
            "--top-k",
            "20",
            "--lm",
        ])
        .arg(fixture("gpt2-tiny"))
        .arg("--clip")
        .arg(fixture("clip-tiny-quickgelu"))
        .arg(fixture(image))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let expected: Vec<serde_json::Value> = String::from_utf8_lossy(&cli.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    assert_eq!(served.len(), 5, "4 steps and done: {served:?}");
    assert_eq!(served.len(), expected.len());
    for (got, want) in served.iter().zip(&expected) {
        let got = got.as_object().unwrap();
        let want = want.as_object().unwrap();
        let keys =
            |o: &serde_json::Map<String, serde_json::Value>| o.keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(got), keys(want), "same event shape");
        assert_eq!(got["image"], "upload.png", "the upload's file name");
        for (key, value) in want {
            if key != "image" && key != "seconds" {
                assert_eq!(&got[key], value, "{key}");
            }
        }
    }
    assert_eq!(served[0]["step"], 0);
    assert_eq!(served[4]["event"], "done");
    assert_eq!(served[4]["token_ids"].as_array().unwrap().len(), 4);
    assert_eq!(served[4]["text"], served[3]["text"]);
}

#[test]
fn health_and_the_embedded_page() {
    let server = Server::start(&["--workers", "3", "--queue", "5"]);
    let health = server.health();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["workers"], 3);
    assert_eq!(health["queue"], 5);
    assert_eq!(health["running"], 0);
    assert_eq!(health["auth"], false);
    assert_eq!(health["limits"]["max_upload_bytes"], 20 << 20);

    let response = agent().get(&server.url("/")).call().unwrap();
    assert!(response.content_type().starts_with("text/html"));
    let policy = response
        .header("Content-Security-Policy")
        .unwrap()
        .to_string();
    assert!(policy.contains("default-src 'self'"), "{policy}");
    let html = response.into_string().unwrap();
    assert!(html.contains(r#"<script src="/app.js""#));
    for remote in ["src=\"http", "href=\"http", "url(http", "//cdn"] {
        assert!(!html.contains(remote), "no CDN: {remote}");
    }
    let js = get(&server, "/app.js");
    assert_eq!(js.status, 200);
    assert_eq!(js.content_type, "text/javascript");
    assert!(js.body.contains("/api/describe"));
    let css = get(&server, "/app.css");
    assert_eq!(css.content_type, "text/css");
    assert!(css.body.contains("@media (max-width"));
}

#[test]
fn bad_inputs_get_a_clear_4xx_and_the_server_keeps_serving() {
    let server = Server::start(&["--token", "s3cret", "--max-upload-mb", "1"]);
    let auth = [("Authorization", "Bearer s3cret")];
    let image = fixture_bytes("images/photo_80x53.jpg");
    let with_image = |bytes: &[u8], params: Option<&str>| {
        let mut fields: Vec<(&str, Option<&str>, &[u8])> = vec![("image", Some("x.png"), bytes)];
        if let Some(params) = params {
            fields.push(("params", None, params.as_bytes()));
        }
        post(&server, "/api/describe", &multipart(&fields), &auth)
    };
    let cases: Vec<(&str, Reply, u16, &str)> = vec![
        (
            "no token",
            post(
                &server,
                "/api/describe",
                &multipart(&[("image", Some("x.png"), &image)]),
                &[],
            ),
            401,
            "Authorization: Bearer",
        ),
        (
            "wrong token",
            post(
                &server,
                "/api/describe",
                &multipart(&[("image", Some("x.png"), &image)]),
                &[("Authorization", "Bearer guess")],
            ),
            401,
            "wrong token",
        ),
        (
            "text file as the image",
            with_image(b"name,age\nBob,3\n", None),
            400,
            "not an image clipsteer can read",
        ),
        (
            "truncated PNG",
            with_image(&truncated_png(), None),
            400,
            "cannot decode image",
        ),
        (
            "30000x30000 PNG",
            with_image(&huge_header_png(30_000, 30_000), None),
            400,
            "image exceeds the decode limits (8192×8192 pixels",
        ),
        (
            "an 8192x1 strip, whose resize for CLIP would take gigabytes",
            with_image(&png(8192, 1), None),
            400,
            "the image is 8192×1, elongated 100:1 or more",
        ),
        (
            "unknown param",
            with_image(&image, Some(r#"{"topk":5}"#)),
            400,
            "unknown parameter 'topk'",
        ),
        (
            "wrongly typed param",
            with_image(&image, Some(r#"{"max_tokens":"lots"}"#)),
            400,
            "params.max_tokens must be an integer from 1 to 64, got \"lots\"",
        ),
        (
            "params not JSON",
            with_image(&image, Some("top_k=5")),
            400,
            "params is not valid JSON",
        ),
        (
            "a prompt longer than the LM's context",
            with_image(
                &image,
                Some(
                    r#"{"prompt":"x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x"}"#,
                ),
            ),
            400,
            "exceeds the LM's context",
        ),
        (
            "no image field",
            post(
                &server,
                "/api/describe",
                &multipart(&[("params", None, b"{}")]),
                &auth,
            ),
            400,
            "no 'image' field",
        ),
        (
            "unknown form field",
            post(
                &server,
                "/api/describe",
                &multipart(&[("photo", Some("x.png"), &image)]),
                &auth,
            ),
            400,
            "unknown form field 'photo'",
        ),
        (
            "an empty image",
            with_image(b"", None),
            400,
            "'image' field is empty",
        ),
        (
            "no such path",
            get(&server, "/api/nothing"),
            404,
            "no such page: GET /api/nothing",
        ),
        (
            "wrong method",
            get(&server, "/api/describe"),
            405,
            "GET is not allowed on /api/describe; use POST",
        ),
    ];
    for (what, reply, status, needle) in &cases {
        assert_eq!(reply.status, *status, "{what}: {reply:?}");
        let message = reply.error();
        assert!(message.contains(needle), "{what}: {message}");
    }
    let not_multipart = reply(
        agent()
            .post(&server.url("/api/describe"))
            .set("Authorization", "Bearer s3cret")
            .send_string("hello"),
    );
    assert_eq!(not_multipart.status, 400);
    assert!(not_multipart.error().contains("send multipart/form-data"));

    // Over the 1 MB limit, declared up front: refused before the body is read.
    let (status, body) = raw_exchange(
        &server,
        &format!(
            "POST /api/describe HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
            5 << 20
        ),
        b"--",
    );
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("over the limit of 1 MB"), "{body}");
    // Over the limit without a declared length: cut off while streaming.
    let big = multipart(&[("image", Some("big.png"), &vec![7u8; 3 << 20])]);
    let mut chunked = Vec::new();
    for piece in big.chunks(64 * 1024) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (status, body) = raw_exchange(
        &server,
        &format!("POST /api/describe HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nTransfer-Encoding: chunked\r\n\r\n"),
        &chunked,
    );
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("over the limit of 1 MB"), "{body}");

    // The WebSocket needs the token too.
    let request = tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://127.0.0.1:{}/describe",
        server.port
    ))
    .unwrap();
    match tungstenite::connect(request) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }

    assert!(server.is_running());
    let good = with_image(&image, Some(QUICK));
    assert_eq!(good.status, 200, "{good:?}");
    assert_eq!(good.events().last().unwrap()["event"], "done");
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

#[test]
fn fifty_concurrent_clients_each_complete_or_get_429() {
    let server = Server::start(&["--workers", "2", "--queue", "4"]);
    let image = fixture_bytes("images/large_1200x900.png");
    let (rss_before, _) = server.memory_kib();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(50));
    let clients: Vec<_> = (0..50)
        .map(|_| {
            let barrier = std::sync::Arc::clone(&barrier);
            let image = image.clone();
            let url = server.url("/api/describe");
            std::thread::spawn(move || {
                let body = multipart(&[
                    ("image", Some("many.png"), &image),
                    ("params", None, QUICK.as_bytes()),
                ]);
                barrier.wait();
                post_url(&url, &body, &[])
            })
        })
        .collect();
    let replies: Vec<Reply> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let mut completed = 0;
    let mut refused = 0;
    for reply in &replies {
        match reply.status {
            200 => {
                let events = reply.events();
                assert_eq!(events.len(), 5, "{reply:?}");
                assert_eq!(events[4]["event"], "done");
                completed += 1;
            }
            429 => {
                let seconds: u64 = reply.retry_after.as_deref().unwrap().parse().unwrap();
                assert!((1..=60).contains(&seconds));
                assert!(reply.error().contains("the server is busy"));
                refused += 1;
            }
            other => panic!("status {other}: {reply:?}"),
        }
    }
    assert_eq!(completed + refused, 50);
    // The first 6 to arrive (2 running, 4 waiting) are always admitted.
    assert!(completed >= 6, "{completed} completed");
    assert!(server.is_running());
    // A job's slot is released when its worker returns, just after its last event is sent: a
    // client can read "done" a moment before that.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while server.health()["admitted"] != 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(server.health()["admitted"], 0);
    let (rss_after, peak) = server.memory_kib();
    eprintln!("server RSS: {rss_before} KiB before, {rss_after} KiB after, peak {peak} KiB; {completed} completed, {refused} refused");
    // Tiny models: memory is the runtime plus at most 6 jobs' uploads and activations.
    assert!(peak < 300 * 1024, "peak RSS {peak} KiB");
    assert!(
        rss_after < rss_before + 150 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
}

#[test]
fn a_client_that_disconnects_cancels_its_job() {
    let server = Server::start(&["--workers", "1", "--queue", "1"]);
    let image = fixture_bytes("images/odd_47x61.png");
    let running = open_stream(&server, &image, SLOW);
    assert_eq!(server.health()["running"], 1);

    // A second client waits in the queue, then leaves: its place is freed without any work.
    let mut waiting = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let body = multipart(&[
        ("image", Some("w.png"), &image),
        ("params", None, QUICK.as_bytes()),
    ]);
    std::io::Write::write_all(
        &mut waiting,
        format!("POST /api/describe HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
    )
    .unwrap();
    std::io::Write::write_all(&mut waiting, &body).unwrap();
    let start = Instant::now();
    while server.health()["admitted"] != 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "second job not queued"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let busy = describe(&server, &image, Some(QUICK));
    assert_eq!(
        busy.status, 429,
        "one running and one waiting fill the server"
    );
    drop(waiting);
    assert!(
        server.wait_for_log("job withdrawn", Duration::from_secs(10)),
        "{}",
        server.log()
    );
    assert_eq!(server.health()["admitted"], 1);

    // The running client leaves mid-stream: the worker stops at its next step.
    drop(running);
    assert!(
        server.wait_for_log("job cancelled", Duration::from_secs(30)),
        "{}",
        server.log()
    );
    assert_eq!(server.health()["running"], 0);
    let next = describe(&server, &image, Some(QUICK));
    assert_eq!(
        next.status, 200,
        "the freed worker takes the next job: {next:?}"
    );
    assert_eq!(next.events().last().unwrap()["event"], "done");
}

#[test]
fn the_time_limit_ends_long_jobs_and_long_waits() {
    // Two long requests at once on one worker: one runs into the time limit mid-description; the
    // other waits until too little of its limit is left to start, and is answered 503.
    let server = Server::start(&["--workers", "1", "--queue", "1", "--timeout", "2"]);
    let image = fixture_bytes("images/odd_47x61.png");
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let start = Instant::now();
    let requests: Vec<_> = (0..2)
        .map(|_| {
            let url = server.url("/api/describe");
            let image = image.clone();
            let barrier = std::sync::Arc::clone(&barrier);
            std::thread::spawn(move || {
                let body = multipart(&[
                    ("image", Some("s.png"), &image),
                    ("params", None, SLOW.as_bytes()),
                ]);
                barrier.wait();
                post_url(&url, &body, &[])
            })
        })
        .collect();
    let mut replies: Vec<Reply> = requests.into_iter().map(|r| r.join().unwrap()).collect();
    assert!(start.elapsed() < Duration::from_secs(30));
    replies.sort_by_key(|r| r.status);
    let (ran, waited) = (&replies[0], &replies[1]);

    assert_eq!(ran.status, 200, "{ran:?}");
    let events = ran.events();
    let last = events.last().unwrap();
    assert_eq!(last["event"], "error", "{last}");
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("time limit ran out"),
        "{last}"
    );
    assert!(events.len() < 61, "stopped before max_tokens");

    assert_eq!(waited.status, 503, "{waited:?}");
    assert!(waited
        .error()
        .contains("too little of its time limit was left"));
    assert!(waited.retry_after.is_some());
}

#[test]
fn websocket_sends_the_growing_text() {
    use tungstenite::protocol::frame::coding::CloseCode;
    use tungstenite::Message;
    let server = Server::start(&[]);
    let url = format!("ws://127.0.0.1:{}/describe", server.port);
    let (mut socket, _) = tungstenite::connect(url.as_str()).unwrap();
    socket
        .send(Message::text(r#"{"max_tokens":3,"top_k":10}"#))
        .unwrap();
    socket
        .send(Message::binary(fixture_bytes("images/photo_80x53.jpg")))
        .unwrap();
    let mut texts = Vec::new();
    let close = loop {
        match socket.read().unwrap() {
            Message::Text(text) => texts.push(text.to_string()),
            Message::Close(frame) => break frame.unwrap(),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(close.code, CloseCode::Normal);
    assert_eq!(texts.len(), 3, "{texts:?}");
    assert!(texts[0].starts_with("An image of "));
    for pair in texts.windows(2) {
        assert!(
            pair[1].starts_with(&pair[0]) && pair[1].len() > pair[0].len(),
            "{pair:?}"
        );
    }

    let (mut socket, _) = tungstenite::connect(url.as_str()).unwrap();
    socket
        .send(Message::binary(b"not a picture".to_vec()))
        .unwrap();
    let close = loop {
        if let Message::Close(frame) = socket.read().unwrap() {
            break frame.unwrap();
        }
    };
    assert_eq!(close.code, CloseCode::Unsupported);
    assert!(close.reason.contains("not an image"), "{}", close.reason);
}
