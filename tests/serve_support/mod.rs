#![allow(dead_code)]
//! Shared by the `serve` tests: a server process on loopback with the fixture models, a small
//! HTTP toolkit over ureq and raw sockets, and hostile inputs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

pub fn fixture_bytes(path: &str) -> Vec<u8> {
    std::fs::read(fixture(path)).expect("fixture")
}

/// `clipsteer serve` on 127.0.0.1 and a free port, killed when dropped.
pub struct Server {
    child: Mutex<Child>,
    pub port: u16,
    log: Arc<Mutex<String>>,
}

/// `clipsteer serve` with the fixture models, with none of the CLIPSTEER_* variables of the
/// environment the tests run in.
pub fn serve_command(extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_clipsteer"));
    command.arg("serve");
    if !extra.contains(&"--port") {
        command.args(["--port", "0"]);
    }
    command
        .arg("--lm")
        .arg(fixture("gpt2-tiny"))
        .arg("--clip")
        .arg(fixture("clip-tiny-quickgelu"))
        .args(extra)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("CLIPSTEER_TOKEN")
        .env_remove("CLIPSTEER_ALLOWED_HOSTS")
        .env_remove("CLIPSTEER_ALLOWED_ORIGINS");
    command
}

/// Runs a command that must end by itself (a refused flag): one still running after `limit` is
/// killed and the test fails, instead of waiting on a server that started.
pub fn output_within(mut command: Command, limit: Duration) -> std::process::Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start clipsteer");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!(
                "still running after {limit:?}, so the mistake was not refused: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        Self::start_with_env(extra, &[])
    }

    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut command = serve_command(extra);
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start clipsteer serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&log);
        // Reads stderr to the end, so that the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut port_tx = Some(port_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on http://127.0.0.1:").nth(1) {
                    let port: u16 = rest.split('/').next().unwrap().parse().unwrap();
                    if let Some(tx) = port_tx.take() {
                        let _ = tx.send(port);
                    }
                }
                sink.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let port = port_rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("server did not start: {}", log.lock().unwrap()));
        Server {
            child: Mutex::new(child),
            port,
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log holds `needle`; false after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn is_running(&self) -> bool {
        matches!(self.child.lock().unwrap().try_wait(), Ok(None))
    }

    pub fn health(&self) -> serde_json::Value {
        let body = agent()
            .get(&self.url("/api/health"))
            .call()
            .expect("health")
            .into_string()
            .unwrap();
        serde_json::from_str(&body).unwrap()
    }

    /// A process's memory from /proc: (current RSS, peak RSS) in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} in /proc status"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(child) = self.child.get_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(120))
        .build()
}

/// What came back from the server.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub retry_after: Option<String>,
    pub body: String,
}

impl Reply {
    /// The `data:` payloads of an event stream, parsed.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
            .collect()
    }

    /// The message of a JSON error reply, checked to be exactly `{"error": "<one line>"}`.
    pub fn error(&self) -> String {
        assert_eq!(self.content_type, "application/json", "{self:?}");
        let value: serde_json::Value =
            serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"));
        let object = value.as_object().expect("an object");
        assert_eq!(object.len(), 1, "only the error key: {self:?}");
        let message = object["error"].as_str().expect("a string").to_string();
        assert!(
            !message.is_empty() && !message.contains('\n'),
            "{message:?}"
        );
        message
    }
}

pub const BOUNDARY: &str = "clipsteer-test-boundary-7f3a";

/// A multipart/form-data body: `(name, file name, bytes)` per field.
pub fn multipart(fields: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, file_name, bytes) in fields {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match file_name {
            Some(file) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

pub fn post(server: &Server, path: &str, body: &[u8], headers: &[(&str, &str)]) -> Reply {
    post_url(&server.url(path), body, headers)
}

/// A multipart POST to a full URL: what client threads use, which cannot borrow the server.
pub fn post_url(url: &str, body: &[u8], headers: &[(&str, &str)]) -> Reply {
    let mut request = agent().post(url).set(
        "Content-Type",
        &format!("multipart/form-data; boundary={BOUNDARY}"),
    );
    for (name, value) in headers {
        request = request.set(name, value);
    }
    reply(request.send_bytes(body))
}

pub fn get(server: &Server, path: &str) -> Reply {
    reply(agent().get(&server.url(path)).call())
}

pub fn reply(result: Result<ureq::Response, ureq::Error>) -> Reply {
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(e) => panic!("transport error: {e}"),
    };
    Reply {
        status: response.status(),
        content_type: response.content_type().to_string(),
        retry_after: response.header("Retry-After").map(str::to_string),
        body: response.into_string().expect("body"),
    }
}

/// POST /api/describe with an image and optional params.
pub fn describe(server: &Server, image: &[u8], params: Option<&str>) -> Reply {
    let mut fields: Vec<(&str, Option<&str>, &[u8])> = vec![("image", Some("upload.png"), image)];
    if let Some(params) = params {
        fields.push(("params", None, params.as_bytes()));
    }
    post(server, "/api/describe", &multipart(&fields), &[])
}

/// Opens a describe request on a raw socket and reads until the first event has arrived; the
/// caller may then drop the socket to leave mid-stream.
pub fn open_stream(server: &Server, image: &[u8], params: &str) -> TcpStream {
    let body = multipart(&[
        ("image", Some("slow.png"), image),
        ("params", None, params.as_bytes()),
    ]);
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "POST /api/describe HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
        server.port,
        body.len()
    )
    .unwrap();
    stream.write_all(&body).unwrap();
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("data: ") {
        let n = stream.read(&mut buffer).expect("read the stream");
        assert!(n > 0, "stream ended: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buffer[..n]);
    }
    assert!(
        String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    stream
}

/// Sends a request head (and part of a body) on a raw socket and reads the reply, which the
/// server must give without waiting for the rest of the body.
pub fn raw_exchange(server: &Server, head: &str, body_start: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let _ = stream.write_all(body_start);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// A PNG that claims `width`×`height` in its header but carries only a few bytes of pixels: a
/// decompression bomb's header, small on disk.
pub fn huge_header_png(width: u32, height: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = Vec::new();
    header.extend_from_slice(&width.to_be_bytes());
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    chunk(&mut png, b"IHDR", &header);
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    zlib.write_all(&vec![0u8; 64 * 1024]).unwrap();
    chunk(&mut png, b"IDAT", &zlib.finish().unwrap());
    chunk(&mut png, b"IEND", &[]);
    png
}

/// The first half of a real PNG: a valid header, then nothing.
pub fn truncated_png() -> Vec<u8> {
    let mut png = fixture_bytes("images/odd_47x61.png");
    png.truncate(png.len() / 2);
    png
}

/// A real PNG of `width`×`height` in one colour, encoded by the image crate.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_pixel(width, height, image::Rgb([200, 30, 90]));
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
    bytes.into_inner()
}

/// The status, headers and body of a reply read to its end from a raw socket.
pub fn read_reply(stream: &mut TcpStream) -> (u16, String, String) {
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_string(), body.to_string())
}

/// A WebSocket to `/describe` opened by hand on a raw socket, so that a test can write a frame
/// from one thread while it reads the server's answer on another.
pub fn raw_websocket(server: &Server) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET /describe HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.port
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream
            .read_exact(&mut byte)
            .expect("the handshake's answer");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
}

/// A client frame: FIN, `opcode`, and the payload masked with a zero key (which leaves it as is).
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80 | opcode, 0x80 | 127];
    frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// Reads server frames until a close frame; returns its code and reason.
pub fn read_close_frame(stream: &mut TcpStream) -> (u16, String) {
    loop {
        let mut head = [0u8; 2];
        stream
            .read_exact(&mut head)
            .expect("a frame from the server");
        let opcode = head[0] & 0x0f;
        let len = match head[1] & 0x7f {
            126 => {
                let mut n = [0u8; 2];
                stream.read_exact(&mut n).unwrap();
                u16::from_be_bytes(n) as usize
            }
            127 => {
                let mut n = [0u8; 8];
                stream.read_exact(&mut n).unwrap();
                u64::from_be_bytes(n) as usize
            }
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).unwrap();
        if opcode == 8 {
            assert!(payload.len() >= 2, "a close frame with a code");
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            return (code, String::from_utf8_lossy(&payload[2..]).into_owned());
        }
    }
}

/// A reverse proxy that serves the server under a path prefix, as nginx's
/// `location /clip/ { proxy_pass http://127.0.0.1:PORT/; }` does: it strips the prefix and
/// passes everything else, the Host header included, as it came. One request per connection.
pub struct PrefixProxy {
    pub port: u16,
}

impl PrefixProxy {
    pub fn start(upstream: u16, prefix: &'static str) -> PrefixProxy {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                std::thread::spawn(move || proxy_one(client, upstream, prefix));
            }
        });
        PrefixProxy { port }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

fn proxy_one(mut client: TcpStream, upstream: u16, prefix: &str) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read_exact(&mut byte).is_err() {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let (line, rest) = head.split_once("\r\n").unwrap();
    let mut parts = line.splitn(3, ' ');
    let (method, target, version) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let Some(stripped) = target.strip_prefix(prefix) else {
        let _ = client
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let mut server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
    write!(
        server,
        "{method} /{} {version}\r\n{rest}",
        stripped.trim_start_matches('/')
    )
    .unwrap();
    let mut from_server = server.try_clone().unwrap();
    let mut to_client = client.try_clone().unwrap();
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_server, &mut to_client);
    });
    let _ = std::io::copy(&mut client, &mut server);
    let _ = server.shutdown(std::net::Shutdown::Write);
    let _ = back.join();
}
