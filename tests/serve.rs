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
            // The server names its models as clients see them, never by their paths.
            if !["image", "seconds", "models", "settings"].contains(&key.as_str()) {
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
    // Relative, so that the page also works under a proxy's path prefix.
    assert!(html.contains(r#"<script src="app.js""#));
    for remote in ["src=\"http", "href=\"http", "url(http", "//cdn"] {
        assert!(!html.contains(remote), "no CDN: {remote}");
    }
    let js = get(&server, "/app.js");
    assert_eq!(js.status, 200);
    assert_eq!(js.content_type, "text/javascript");
    assert!(js.body.contains(r#""api/describe""#));
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
            "exceeds the LM's context of 64 tokens; shorten the prompt or lower max_tokens",
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
    assert_eq!(not_multipart.status, 415);
    assert!(not_multipart.error().contains("takes multipart/form-data"));

    // Over the 1 MB limit, declared up front: refused before the body is read.
    let (status, body) = raw_exchange(
        &server,
        &format!(
            "POST /api/describe HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer s3cret\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
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
        &format!("POST /api/describe HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer s3cret\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nTransfer-Encoding: chunked\r\n\r\n"),
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
        format!("POST /api/describe HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
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

/// A GET on a raw socket with the given Host (and Origin), read to its end.
fn get_with_host(server: &Server, path: &str, host: &str, origin: Option<&str>) -> (u16, String) {
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    raw_exchange(
        server,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{origin}Connection: close\r\n\r\n"),
        b"",
    )
}

fn error_of(body: &str) -> String {
    let value: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(value.as_object().unwrap().len(), 1, "{body}");
    value["error"].as_str().unwrap().to_string()
}

#[test]
fn foreign_pages_and_host_names_are_refused() {
    let server = Server::start(&[
        "--allowed-hosts",
        "clip.example.org,.lab.example",
        "--allowed-origins",
        "https://app.example.org",
    ]);
    let port = server.port;
    let own = format!("http://127.0.0.1:{port}");
    let image = fixture_bytes("images/photo_80x53.jpg");
    let body = multipart(&[
        ("image", Some("x.jpg"), &image),
        ("params", None, QUICK.as_bytes()),
    ]);

    // A page elsewhere posting to the API (a form, or fetch in no-cors mode): refused before any
    // work, and the body is read so that the answer is heard.
    for origin in [
        "http://evil.example".to_string(),
        "null".to_string(),
        format!("http://localhost:{port}"),
        format!("http://127.0.0.1:{}", port.wrapping_add(1)),
        "https://app.example.org.evil.example".to_string(),
    ] {
        let refused = post(&server, "/api/describe", &body, &[("Origin", &origin)]);
        assert_eq!(refused.status, 403, "{origin}: {refused:?}");
        let message = refused.error();
        assert!(
            message.contains("refused") && message.contains("--allowed-origins"),
            "{message}"
        );
    }
    assert_eq!(server.health()["admitted"], 0);
    assert!(!server.log().contains("job done"), "no job ran");

    // The same on the WebSocket: browsers send Origin on every WebSocket handshake.
    let mut request = tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://127.0.0.1:{port}/describe"
    ))
    .unwrap();
    request
        .headers_mut()
        .insert("Origin", "http://evil.example".parse().unwrap());
    match tungstenite::connect(request) {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned();
            assert!(error_of(&body).contains("http://evil.example"), "{body}");
        }
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }

    // DNS rebinding: the attacker's name in Host, whatever the port and however it is dressed.
    for host in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
        format!("localhost.evil.example:{port}"),
        "clip.example.org.evil.example".to_string(),
        "notlab.example".to_string(),
    ] {
        for path in ["/", "/api/health", "/api/describe"] {
            let (status, body) = get_with_host(&server, path, &host, None);
            assert_eq!(status, 403, "{host} {path}: {body}");
            let message = error_of(&body);
            assert!(
                message.contains("does not answer to the host name")
                    && message.contains("--allowed-hosts"),
                "{message}"
            );
        }
    }
    let (status, answer) = raw_exchange(
        &server,
        "GET /api/health HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"",
    );
    assert_eq!(status, 400, "no Host: {answer}");

    // What the server does answer: its address and localhost on any port (a proxy may forward
    // its own), the names it was given, and its own page's origin.
    for host in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_string(),
        format!("localhost:{port}"),
        "clip.example.org".to_string(),
        "CLIP.example.org:443".to_string(),
        "gpu1.lab.example:8443".to_string(),
    ] {
        let (status, body) = get_with_host(&server, "/api/health", &host, None);
        assert_eq!(status, 200, "{host}: {body}");
    }
    let (status, _) = get_with_host(
        &server,
        "/api/health",
        &format!("localhost:{port}"),
        Some(&format!("http://localhost:{port}")),
    );
    assert_eq!(status, 200, "the page at localhost calling its own server");
    let mine = post(&server, "/api/describe", &body, &[("Origin", &own)]);
    assert_eq!(mine.status, 200, "{mine:?}");
    assert_eq!(mine.events().last().unwrap()["event"], "done");

    // An allowed origin gets CORS headers; its preflight is answered; others get none.
    let response = agent()
        .post(&server.url("/api/describe"))
        .set(
            "Content-Type",
            &format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .set("Origin", "https://app.example.org")
        .send_bytes(&body)
        .unwrap();
    assert_eq!(
        response.header("Access-Control-Allow-Origin"),
        Some("https://app.example.org")
    );
    assert!(response
        .into_string()
        .unwrap()
        .contains(r#""event":"done""#));
    let preflight = agent()
        .request("OPTIONS", &server.url("/api/describe"))
        .set("Origin", "https://app.example.org")
        .set("Access-Control-Request-Method", "POST")
        .set("Access-Control-Request-Headers", "authorization")
        .call()
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(
        preflight.header("Access-Control-Allow-Origin"),
        Some("https://app.example.org")
    );
    assert!(preflight
        .header("Access-Control-Allow-Headers")
        .unwrap()
        .contains("authorization"));
    let own_page = agent().get(&server.url("/api/health")).call().unwrap();
    assert_eq!(own_page.header("Access-Control-Allow-Origin"), None);
    let foreign_preflight = reply(
        agent()
            .request("OPTIONS", &server.url("/api/describe"))
            .set("Origin", "http://evil.example")
            .set("Access-Control-Request-Method", "POST")
            .call(),
    );
    assert_eq!(foreign_preflight.status, 403);

    // The allowlists also come from the environment, as Ollama's OLLAMA_ORIGINS does.
    let from_env = Server::start_with_env(
        &[],
        &[
            ("CLIPSTEER_ALLOWED_HOSTS", "env.example"),
            ("CLIPSTEER_ALLOWED_ORIGINS", "http://env-app.example:3000"),
        ],
    );
    assert_eq!(get_with_host(&from_env, "/", "env.example", None).0, 200);
    assert_eq!(
        get_with_host(
            &from_env,
            "/api/health",
            &format!("127.0.0.1:{}", from_env.port),
            Some("http://env-app.example:3000")
        )
        .0,
        200
    );
    assert_eq!(get_with_host(&from_env, "/", "evil.example", None).0, 403);
}

#[test]
fn clients_see_model_names_never_server_paths() {
    let root = env!("CARGO_MANIFEST_DIR");
    let server = Server::start(&["--token", "s3cret"]);
    // Health stays open (load balancers, the page's token prompt) and names no path.
    let health = get(&server, "/api/health");
    assert_eq!(health.status, 200);
    assert!(!health.body.contains(root), "{}", health.body);
    assert!(!health.body.contains("fixtures"), "{}", health.body);
    let health: serde_json::Value = serde_json::from_str(&health.body).unwrap();
    assert_eq!(health["lm"], "gpt2-tiny");
    assert_eq!(health["clip"], "clip-tiny-quickgelu");
    assert_eq!(health["auth"], true);

    let body = multipart(&[
        (
            "image",
            Some("x.jpg"),
            &fixture_bytes("images/photo_80x53.jpg"),
        ),
        ("params", None, QUICK.as_bytes()),
    ]);
    let reply = post(
        &server,
        "/api/describe",
        &body,
        &[("Authorization", "Bearer s3cret")],
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(!reply.body.contains(root), "{}", reply.body);
    let done = reply.events().pop().unwrap();
    assert_eq!(done["event"], "done");
    assert_eq!(
        done["models"],
        serde_json::json!({"lm": {"name": "gpt2-tiny"}, "encoder": {"name": "clip-tiny-quickgelu"}})
    );
    assert_eq!(done["settings"]["lm"], "gpt2-tiny");
    assert_eq!(done["settings"]["encoder"], "clip-tiny-quickgelu");
    assert_eq!(done["settings"]["options"].as_str().unwrap().len(), 16);

    // Names the operator chooses.
    let named = Server::start(&["--lm-name", "GPT-2 (tiny)", "--clip-name", "CLIP B/32"]);
    let health = named.health();
    assert_eq!(health["lm"], "GPT-2 (tiny)");
    assert_eq!(health["clip"], "CLIP B/32");
    let done = describe(
        &named,
        &fixture_bytes("images/photo_80x53.jpg"),
        Some(QUICK),
    )
    .events()
    .pop()
    .unwrap();
    assert_eq!(done["models"]["lm"]["name"], "GPT-2 (tiny)");
    assert_eq!(done["settings"]["encoder"], "CLIP B/32");
}

#[test]
fn stalled_uploads_hold_no_place_in_the_queue() {
    let server = Server::start(&["--workers", "1", "--queue", "1", "--upload-timeout", "3"]);
    let image = fixture_bytes("images/photo_80x53.jpg");
    let body = multipart(&[
        ("image", Some("x.jpg"), &image),
        ("params", None, QUICK.as_bytes()),
    ]);
    let head = format!(
        "POST /api/describe HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
        server.port,
        body.len()
    );
    // Nine send only their head; a tenth sends half its body and stops.
    let started = Instant::now();
    let mut stalled: Vec<std::net::TcpStream> = (0..10)
        .map(|i| {
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            std::io::Write::write_all(&mut stream, head.as_bytes()).unwrap();
            if i == 9 {
                std::io::Write::write_all(&mut stream, &body[..body.len() / 2]).unwrap();
            }
            stream
        })
        .collect();
    while server.health()["uploading"] != 10 {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{}",
            server.health()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let health = server.health();
    assert_eq!(health["admitted"], 0, "{health}");
    assert_eq!(health["running"], 0, "{health}");

    // A real client is served at once, on the server's one worker and one queue place.
    let real = describe(&server, &image, Some(QUICK));
    assert_eq!(real.status, 200, "{real:?}");
    assert_eq!(real.events().last().unwrap()["event"], "done");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "before any timeout"
    );

    // Each stalled upload is answered 408 at the upload timeout, long before --timeout (120 s).
    for stream in &mut stalled {
        let (status, _, body) = read_reply(stream);
        assert_eq!(status, 408, "{body}");
        assert!(
            error_of(&body).contains("the upload did not arrive within 3 s"),
            "{body}"
        );
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(2900) && waited < Duration::from_secs(8),
        "{waited:?}"
    );
    let health = server.health();
    assert_eq!(health["uploading"], 0, "{health}");
    assert_eq!(health["admitted"], 0, "{health}");
    assert_eq!(health["limits"]["upload_timeout_seconds"], 3.0);
}

#[test]
fn token_mistakes_and_the_bearer_scheme() {
    // An empty token would turn authentication off without a word; a space cannot be sent.
    for (args, env) in [
        (vec!["--token", ""], None),
        (vec![], Some("")),
        (vec!["--token", "two words"], None),
    ] {
        let mut command = serve_command(&args);
        if let Some(value) = env {
            command.env("CLIPSTEER_TOKEN", value);
        }
        let output = output_within(command, Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.starts_with("error: --token "), "{stderr}");
        assert!(!stderr.contains("listening"), "{stderr}");
    }

    let server = Server::start(&["--token", "s3cret"]);
    let image = fixture_bytes("images/photo_80x53.jpg");
    let body = multipart(&[
        ("image", Some("x.jpg"), &image),
        ("params", None, QUICK.as_bytes()),
    ]);
    // RFC 9110: the scheme is case-insensitive.
    for header in ["bearer s3cret", "BEARER s3cret", "Bearer   s3cret"] {
        let reply = post(
            &server,
            "/api/describe",
            &body,
            &[("Authorization", header)],
        );
        assert_eq!(reply.status, 200, "{header}: {reply:?}");
        assert_eq!(reply.events().last().unwrap()["event"], "done");
    }
    for header in [
        "Basic s3cret",
        "Bearer s3cre",
        "Bearer s3cret0",
        "Bearers3cret",
        "s3cret",
    ] {
        let reply = post(
            &server,
            "/api/describe",
            &body,
            &[("Authorization", header)],
        );
        assert_eq!(reply.status, 401, "{header}: {reply:?}");
    }
}

#[test]
fn websocket_mistakes_get_close_codes() {
    use tungstenite::protocol::frame::coding::CloseCode;
    use tungstenite::Message;
    let server = Server::start(&["--max-upload-mb", "1"]);

    // Over the limit, in one frame far beyond it and in one just beyond the image limit. The
    // frame is written from another thread, as a browser would, while the answer is read.
    for size in [3 << 20, (1 << 20) + 1000] {
        let mut socket = raw_websocket(&server);
        let mut writer = socket.try_clone().unwrap();
        let sending = std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut writer, &client_frame(2, &vec![7u8; size]));
        });
        let (code, reason) = read_close_frame(&mut socket);
        assert_eq!(code, 1009, "{size}: {reason}");
        assert!(reason.contains("over the upload limit of 1 MB"), "{reason}");
        drop(socket);
        sending.join().unwrap();
    }

    // A second image while the first is described.
    let url = format!("ws://127.0.0.1:{}/describe", server.port);
    let (mut socket, _) = tungstenite::connect(url.as_str()).unwrap();
    socket.send(Message::text(SLOW)).unwrap();
    let image = fixture_bytes("images/odd_47x61.png");
    socket.send(Message::binary(image.clone())).unwrap();
    assert!(matches!(socket.read().unwrap(), Message::Text(_)));
    socket.send(Message::binary(image.clone())).unwrap();
    let close = loop {
        match socket.read().unwrap() {
            Message::Close(frame) => break frame.unwrap(),
            Message::Text(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(close.code, CloseCode::Policy);
    assert!(
        close.reason.contains("one image per connection"),
        "{}",
        close.reason
    );
    // The client's close reply is read by the server: the connection ends cleanly, not reset.
    loop {
        match socket.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("expected a clean end, got {e}"),
        }
    }
    assert!(
        server.wait_for_log("job cancelled", Duration::from_secs(30)),
        "the first job stops: {}",
        server.log()
    );

    // Params after the image.
    let (mut socket, _) = tungstenite::connect(url.as_str()).unwrap();
    socket.send(Message::text(SLOW)).unwrap();
    socket.send(Message::binary(image)).unwrap();
    assert!(matches!(socket.read().unwrap(), Message::Text(_)));
    socket.send(Message::text(QUICK)).unwrap();
    let close = loop {
        if let Message::Close(frame) = socket.read().unwrap() {
            break frame.unwrap();
        }
    };
    assert_eq!(close.code, CloseCode::Policy);
    assert!(
        close.reason.contains("params must come before"),
        "{}",
        close.reason
    );
    assert!(server.is_running());
}

#[test]
fn the_page_works_under_a_proxy_path_prefix() {
    let server = Server::start(&[]);
    let proxy = PrefixProxy::start(server.port, "/clip/");
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .max_idle_connections(0)
        .build();
    let base = proxy.url("/clip/");
    let html = agent.get(&base).call().unwrap().into_string().unwrap();
    let references: Vec<&str> = html
        .split('"')
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0].ends_with("src=") || w[0].ends_with("href="))
        .map(|w| w[1])
        .filter(|r| !r.starts_with("data:"))
        .collect();
    assert_eq!(references, ["app.css", "app.js"], "{html}");
    for (reference, kind) in [("app.css", "text/css"), ("app.js", "text/javascript")] {
        let response = agent.get(&format!("{base}{reference}")).call().unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.content_type(), kind);
    }
    let js = agent
        .get(&format!("{base}app.js"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(!js.contains("fetch(\"/"), "no fetch from the server root");
    assert!(
        !js.contains("new WebSocket"),
        "the page needs no WebSocket URL"
    );

    // What the page's fetches become: relative to the page, with the browser's Origin, which is
    // the proxy's address (the proxy passes Host through, as proxy_set_header Host $http_host).
    let origin = proxy.url("");
    let health = agent
        .get(&format!("{base}api/health"))
        .set("Origin", &origin)
        .call()
        .unwrap();
    assert_eq!(health.status(), 200);
    let body = multipart(&[
        (
            "image",
            Some("x.jpg"),
            &fixture_bytes("images/photo_80x53.jpg"),
        ),
        ("params", None, QUICK.as_bytes()),
    ]);
    let described = reply(
        agent
            .post(&format!("{base}api/describe"))
            .set(
                "Content-Type",
                &format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .set("Origin", &origin)
            .send_bytes(&body),
    );
    assert_eq!(described.status, 200, "{described:?}");
    assert_eq!(described.events().last().unwrap()["event"], "done");
}

#[test]
fn serve_flag_mistakes_exit_2_with_the_real_cause() {
    let run = |args: &[&str]| {
        let output = output_within(serve_command(args), Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
        (output.status.code(), stderr)
    };
    for (args, needle) in [
        (
            &["--host", "999.1.1.1"][..],
            "--host 999.1.1.1 is not a valid IPv4 address",
        ),
        (
            &["--host", "192.0.2.1"][..],
            "--host 192.0.2.1 is not an address of this machine",
        ),
        (&["--workers", "0"][..], "--workers"),
        (&["--queue", "100001"][..], "--queue"),
        (&["--timeout", "0"][..], "--timeout"),
        (&["--upload-timeout", "nan"][..], "--upload-timeout"),
        (&["--max-upload-mb", "0"][..], "--max-upload-mb"),
        (
            &["--allowed-origins", "clip.example.org"][..],
            "is not an origin; give origins such as https://",
        ),
        (
            &["--allowed-hosts", "https://clip.example.org"][..],
            "is not a host name",
        ),
        (&["--lm-name", ""][..], "--lm-name"),
    ] {
        let (code, stderr) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("in use"), "{args:?}: {stderr}");
    }
    // A port in use is the machine's state, not a mistake in the command: exit 1.
    let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, stderr) = run(&["--port", &port]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot listen on 127.0.0.1:{port}: the port is in use"
        )),
        "{stderr}"
    );
}

#[test]
fn api_errors_name_the_requests_fields_and_want_multipart() {
    let server = Server::start(&[]);
    let image = fixture_bytes("images/photo_80x53.jpg");
    let too_long = describe(
        &server,
        &image,
        Some(r#"{"max_tokens":60,"prompt":"one two three four five six seven eight nine ten"}"#),
    );
    assert_eq!(too_long.status, 400);
    let message = too_long.error();
    assert!(message.contains("plus max_tokens (60)"), "{message}");
    assert!(!message.contains("--"), "no command-line flags: {message}");
    let blocked = describe(&server, &image, Some(r#"{"block":["image"]}"#));
    assert_eq!(blocked.status, 400);
    assert!(!blocked.error().contains("--"), "{}", blocked.error());

    for (content_type, body) in [
        ("application/json", r#"{"image":"aGVsbG8=","top_k":5}"#),
        ("application/x-www-form-urlencoded", "top_k=5"),
    ] {
        let reply = reply(
            agent()
                .post(&server.url("/api/describe"))
                .set("Content-Type", content_type)
                .send_string(body),
        );
        assert_eq!(reply.status, 415, "{content_type}: {reply:?}");
        let message = reply.error();
        assert!(
            message.contains(&format!("takes multipart/form-data, not {content_type}")),
            "{message}"
        );
        assert!(message.contains("curl -F image=@"), "{message}");
    }
}

#[test]
fn an_uploads_file_name_comes_back_without_its_controls() {
    let server = Server::start(&[]);
    let image = fixture_bytes("images/photo_80x53.jpg");
    let name = "dir/a\u{202E}gnp.exe";
    let body = multipart(&[
        ("image", Some(name), &image),
        ("params", None, QUICK.as_bytes()),
    ]);
    let reply = post(&server, "/api/describe", &body, &[]);
    assert_eq!(reply.status, 200, "{reply:?}");
    let events = reply.events();
    let done = events.last().unwrap();
    assert_eq!(done["event"], "done", "{events:?}");
    assert_eq!(done["image"], "a\\u{202e}gnp.exe");
}

#[test]
fn a_client_that_never_finishes_its_headers_is_let_go_and_others_are_served() {
    use std::io::{Read, Write};
    let server = Server::start(&[]);
    // Half a request head, as a slowloris client sends it, and a connection that sends nothing.
    let mut stalled = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stalled
        .write_all(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let started = Instant::now();
    assert_eq!(
        get(&server, "/api/health").status,
        200,
        "others are served meanwhile"
    );
    for stream in [&mut stalled, &mut silent] {
        stream
            .set_read_timeout(Some(Duration::from_secs(40)))
            .unwrap();
        let mut rest = Vec::new();
        // The server closes the connection: the read ends (with or without a 408 first).
        let ended = stream.read_to_end(&mut rest).is_ok();
        assert!(ended, "the server closed the connection");
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(8) && waited < Duration::from_secs(30),
        "the header read timeout (10 s) let them go: {waited:?}"
    );
}

#[test]
fn an_absolute_request_target_naming_another_host_is_refused() {
    let server = Server::start(&[]);
    let head = format!(
        "GET http://evil.example/api/health HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
        server.port
    );
    let (status, body) = raw_exchange(&server, &head, b"");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("request target"), "{body}");
    let own = format!(
        "GET http://127.0.0.1:{0}/api/health HTTP/1.1\r\nHost: 127.0.0.1:{0}\r\nConnection: close\r\n\r\n",
        server.port
    );
    assert_eq!(raw_exchange(&server, &own, b"").0, 200);
    // A trailing dot on the address is the same address, as browsers read it.
    let dotted = "GET /api/health HTTP/1.1\r\nHost: 127.0.0.1.\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_exchange(&server, dotted, b"").0, 200);
}

#[test]
fn a_websocket_client_that_closes_first_gets_the_close_answered() {
    let server = Server::start(&[]);
    let mut socket = raw_websocket(&server);
    std::io::Write::write_all(&mut socket, &client_frame(8, &1000u16.to_be_bytes())).unwrap();
    let (code, _) = read_close_frame(&mut socket);
    assert_eq!(code, 1000, "RFC 6455 §5.5.1: the close is answered");
}
